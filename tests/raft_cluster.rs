//! The scenario of `examples/raft_cluster.rs`: three nodes, each on its own walrus-async
//! directory; a write committed on a majority, the leader killed, a new one elected, a write
//! with one node down, the old leader restarted from its directory and caught up (snapshots
//! are taken and logs purged meanwhile, so it catches up through a snapshot the leader sends,
//! and its store is purged past its end). Every node ends with the same data.
#![cfg(feature = "raft")]

#[allow(dead_code)]
#[path = "../examples/raft_cluster.rs"]
mod cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_fail_over_and_the_old_leader_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = cluster::run(dir.path(), |s| eprintln!("{s}"))
        .await
        .unwrap();
    assert_ne!(outcome.first_leader, outcome.second_leader);
    let mut want: std::collections::BTreeMap<String, String> = [
        ("colour".to_string(), "green".to_string()),
        ("size".to_string(), "large".to_string()),
    ]
    .into();
    want.extend((0..20).map(|i| (format!("n{i}"), i.to_string())));
    assert_eq!(outcome.data.len(), 3, "every node reported");
    for (id, data) in &outcome.data {
        assert_eq!(data, &want, "node {id}");
    }
    // Logs were purged under real openraft, the restarted node's too.
    for (id, purged) in &outcome.purged {
        assert!(
            purged.is_some_and(|p| p >= 5),
            "node {id} purged {purged:?}"
        );
    }
}
