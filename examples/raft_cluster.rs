//! Three Raft nodes in one process, each with its own walrus-async directory as its log
//! storage (`walrus_async::raft::LogStore`), replicating a small key-value store over an
//! in-process network.
//!
//! Run: `cargo run --release --example raft_cluster --features raft [-- DIR]`
//! (the nodes' directories go under DIR, default a temporary directory).
//!
//! It commits a write on a majority, kills the leader, waits for a new one to be elected,
//! writes through it with one node down, restarts the old leader from its directory and
//! waits for it to catch up; then every node holds the same data.
//! `tests/raft_cluster.rs` runs this same scenario and checks the data on every node.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use walrus_async::{FsyncSchedule, Walrus};

/// A write to the key-value store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Set {
    pub key: String,
    pub value: String,
}

/// What a write returns: the value it replaced.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Replaced(pub Option<String>);

openraft::declare_raft_types!(
    /// The cluster's types: writes are `Set`, answers `Replaced`, nodes numbered `u64`.
    pub TypeConfig:
        D = Set,
        R = Replaced,
);

type Raft = openraft::Raft<TypeConfig>;

// ------------------------------------------------------------------------------------------
// The state machine: in memory, with its snapshots in a file next to the node's log. After a
// restart it starts from its last snapshot, and openraft re-applies the log after it (up to
// the committed index the log store kept, then what the leader sends).

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct KvState {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    data: BTreeMap<String, String>,
}

/// The last snapshot built or installed: what it covers, and the state as JSON.
type Stored = Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>;

/// The key-value state machine of one node.
#[derive(Clone, Default)]
pub struct Kv {
    state: Arc<Mutex<KvState>>,
    snapshot: Arc<Mutex<Stored>>,
    /// Where snapshots are kept (`None`: in memory only).
    file: Option<PathBuf>,
}

/// A snapshot as its file holds it.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

impl Kv {
    /// A state machine keeping its snapshots in `file`, starting from the one there.
    pub fn open(file: PathBuf) -> Result<Kv, Box<dyn std::error::Error>> {
        let kv = Kv {
            file: Some(file.clone()),
            ..Kv::default()
        };
        match std::fs::read(&file) {
            Ok(bytes) => {
                let f: SnapshotFile = serde_json::from_slice(&bytes)?;
                *kv.state.lock().unwrap() = serde_json::from_slice(&f.data)?;
                *kv.snapshot.lock().unwrap() = Some((f.meta, f.data));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(kv)
    }

    /// Keeps `meta`/`data` as the current snapshot, durably when it has a file: written
    /// aside, synced, renamed over the old one.
    fn keep(&self, meta: &SnapshotMeta<u64, BasicNode>, data: &[u8]) -> std::io::Result<()> {
        if let Some(file) = &self.file {
            use std::io::Write;
            let json = serde_json::to_vec(&SnapshotFile {
                meta: meta.clone(),
                data: data.to_vec(),
            })?;
            let tmp = file.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, file)?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        *self.snapshot.lock().unwrap() = Some((meta.clone(), data.to_vec()));
        Ok(())
    }

    /// A copy of the data.
    pub fn data(&self) -> BTreeMap<String, String> {
        self.state.lock().unwrap().data.clone()
    }
}

fn sm_error(e: impl std::error::Error + 'static) -> StorageError<u64> {
    openraft::StorageIOError::write_state_machine(&e).into()
}

impl RaftSnapshotBuilder<TypeConfig> for Kv {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let state = self.state.lock().unwrap().clone();
        let bytes = serde_json::to_vec(&state).map_err(sm_error)?;
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!("{:?}", state.last_applied),
        };
        self.keep(&meta, &bytes).map_err(sm_error)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for Kv {
    type SnapshotBuilder = Kv;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let s = self.state.lock().unwrap();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Replaced>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut s = self.state.lock().unwrap();
        let mut out = Vec::new();
        for e in entries {
            s.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Replaced(None)),
                EntryPayload::Normal(Set { key, value }) => {
                    out.push(Replaced(s.data.insert(key, value)));
                }
                EntryPayload::Membership(m) => {
                    s.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Replaced(None));
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        let state: KvState = serde_json::from_slice(&bytes).map_err(sm_error)?;
        // Durable before it counts: openraft purges the log up to it next.
        self.keep(meta, &bytes).map_err(sm_error)?;
        *self.state.lock().unwrap() = state;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(self
            .snapshot
            .lock()
            .unwrap()
            .clone()
            .map(|(meta, bytes)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            }))
    }
}

// ------------------------------------------------------------------------------------------
// The network: calls go straight to the target node's `Raft`, or fail as unreachable when it
// is down (the way openraft's own test router does it).

/// The nodes that are up.
#[derive(Clone, Default)]
pub struct Router {
    nodes: Arc<Mutex<BTreeMap<u64, Raft>>>,
}

impl Router {
    fn get(&self, id: u64) -> Result<Raft, Unreachable> {
        self.nodes
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or_else(|| Unreachable::new(&std::io::Error::other(format!("node {id} is down"))))
    }
}

/// A connection to one node.
pub struct Conn {
    router: Router,
    target: u64,
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Conn {
        Conn {
            router: self.clone(),
            target,
        }
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let raft = self.router.get(self.target)?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let raft = self.router.get(self.target)?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let raft = self.router.get(self.target)?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

// ------------------------------------------------------------------------------------------
// Nodes and the scenario.

/// A running node: its Raft, its state machine and its log.
pub struct Node {
    pub id: u64,
    pub raft: Raft,
    pub kv: Kv,
    wal: Walrus,
}

/// Starts node `id` on the log in `dir` (created, or reopened after a restart).
pub async fn start_node(
    id: u64,
    dir: &Path,
    router: &Router,
) -> Result<Node, Box<dyn std::error::Error>> {
    let wal = Walrus::builder()
        .data_dir(dir.join("log"))
        .fsync(FsyncSchedule::SyncEach)
        .open()
        .await?;
    let store = walrus_async::raft::LogStore::<TypeConfig>::open(wal.clone(), "kv").await?;
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        // Snapshots often and logs purged right after them, so a node that was down catches
        // up by a snapshot the leader sends (and its log store is purged past its end).
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    }
    .validate()?;
    let kv = Kv::open(dir.join("snapshot.json"))?;
    let raft = Raft::new(id, Arc::new(config), router.clone(), store, kv.clone()).await?;
    router.nodes.lock().unwrap().insert(id, raft.clone());
    Ok(Node { id, raft, kv, wal })
}

impl Node {
    /// Takes the node down: unreachable, Raft stopped, log closed (its directory can be
    /// opened again).
    pub async fn stop(self, router: &Router) -> Result<(), Box<dyn std::error::Error>> {
        router.nodes.lock().unwrap().remove(&self.id);
        self.raft
            .shutdown()
            .await
            .map_err(|e| format!("shutdown: {e}"))?;
        drop(self.raft);
        self.wal.close().await?;
        Ok(())
    }
}

/// Waits until some node of `nodes` other than `not` leads, and returns its position.
async fn leader(nodes: &[Node], not: Option<u64>) -> Result<usize, Box<dyn std::error::Error>> {
    let want = |m: &openraft::RaftMetrics<u64, BasicNode>| {
        m.current_leader.is_some_and(|l| Some(l) != not)
    };
    let m = nodes[0]
        .raft
        .wait(Some(Duration::from_secs(30)))
        .metrics(want, "a leader")
        .await?;
    let id = m.current_leader.ok_or("no leader")?;
    nodes
        .iter()
        .position(|n| n.id == id)
        .ok_or_else(|| format!("the leader {id} is not among the running nodes").into())
}

/// Writes `key = value` through the leader among `nodes`; follows a leader change (an
/// election under load moves leadership: the old leader answers with where to go).
async fn write(nodes: &[Node], key: &str, value: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let mut at = leader(nodes, None).await?;
    for _ in 0..10 {
        let res = nodes[at]
            .raft
            .client_write(Set {
                key: key.into(),
                value: value.into(),
            })
            .await;
        let e = match res {
            Ok(r) => return Ok(r.log_id.index),
            Err(e) => e,
        };
        let Some(forward) = e.forward_to_leader() else {
            return Err(e.into());
        };
        at = match forward
            .leader_id
            .and_then(|id| nodes.iter().position(|n| n.id == id))
        {
            Some(i) => i,
            // No leader known yet: wait for one (other than the one that refused).
            None => leader(nodes, Some(nodes[at].id)).await?,
        };
    }
    Err(format!("{key}: no leader took the write").into())
}

/// What the scenario saw: each node's data at the end, and who led before and after.
pub struct Outcome {
    pub first_leader: u64,
    pub second_leader: u64,
    pub data: BTreeMap<u64, BTreeMap<String, String>>,
    /// Each node's last purged log index (its log store purged after snapshots).
    pub purged: BTreeMap<u64, Option<u64>>,
}

/// The scenario of the module docs, with the nodes' directories under `root`; `say` reports
/// each step.
pub async fn run(root: &Path, say: impl Fn(String)) -> Result<Outcome, Box<dyn std::error::Error>> {
    let dir = |id: u64| -> PathBuf { root.join(format!("node-{id}")) };
    let router = Router::default();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_node(id, &dir(id), &router).await?);
    }
    let members: BTreeMap<u64, BasicNode> = (1..=3).map(|id| (id, BasicNode::default())).collect();
    nodes[0].raft.initialize(members).await?;
    let l = leader(&nodes, None).await?;
    let first_leader = nodes[l].id;
    say(format!("node {first_leader} leads"));

    for (k, v) in [("colour", "blue"), ("size", "large")] {
        let index = write(&nodes, k, v).await?;
        say(format!(
            "{k} = {v} committed on a majority at log index {index}"
        ));
    }
    for i in 0..10 {
        write(&nodes, &format!("n{i}"), &i.to_string()).await?;
    }
    say("10 more writes (snapshots are taken and logs purged meanwhile)".into());

    let old = nodes.remove(l);
    say(format!("killing the leader, node {}", old.id));
    old.stop(&router).await?;
    let l = leader(&nodes, Some(first_leader)).await?;
    let second_leader = nodes[l].id;
    say(format!("node {second_leader} was elected"));
    let mut index = write(&nodes, "colour", "green").await?;
    say(format!(
        "colour = green committed at index {index} with node {first_leader} down"
    ));
    for i in 10..20 {
        index = write(&nodes, &format!("n{i}"), &i.to_string()).await?;
    }
    say(format!("10 more writes, up to index {index}"));

    say(format!(
        "restarting node {first_leader} from {}",
        dir(first_leader).display()
    ));
    let back = start_node(first_leader, &dir(first_leader), &router).await?;
    back.raft
        .wait(Some(Duration::from_secs(30)))
        .applied_index_at_least(Some(index), "caught up")
        .await?;
    say(format!("node {first_leader} caught up to index {index}"));
    nodes.push(back);
    // Every node has applied everything.
    for n in &nodes {
        n.raft
            .wait(Some(Duration::from_secs(30)))
            .applied_index_at_least(Some(index), "applied")
            .await?;
    }
    let data = nodes.iter().map(|n| (n.id, n.kv.data())).collect();
    let purged = nodes
        .iter()
        .map(|n| (n.id, n.raft.metrics().borrow().purged.map(|p| p.index)))
        .collect();
    for n in nodes {
        n.stop(&router).await?;
    }
    Ok(Outcome {
        first_leader,
        second_leader,
        data,
        purged,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    let outcome = run(&root, |s| println!("{s}")).await?;
    for (id, data) in &outcome.data {
        println!(
            "node {id}: {} keys, colour = {}, log purged up to index {:?}",
            data.len(),
            data.get("colour").map_or("?", String::as_str),
            outcome.purged[id]
        );
    }
    Ok(())
}
