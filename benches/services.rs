//! Appends over HTTP and gRPC against the in-process `Walrus::append`, in one run.
//!
//! `cargo bench --bench services --features http,grpc` (about 2 min) or `-- --quick` (each
//! configuration once, briefly; what CI runs).
//!
//! * One log per fsync schedule (`SyncEach`: each append durable before it is answered;
//!   `NoFsync`: what the protocols themselves cost) in `BENCH_DIR` (default the temp dir).
//! * `c` clients append 100-byte entries in a closed loop (each waits for its answer before
//!   the next) for a fixed time: in process, through the axum router over HTTP/1.1 (a pooled
//!   hyper client, one connection per client), and through the tonic service over one HTTP/2
//!   channel shared by the clients (as a tonic application does).
//! * Server, clients and the log share one 2-worker Tokio runtime on this machine: the
//!   protocol figures include the clients' own CPU, as on one box.
//! * Modes run interleaved (A B C, C B A, …); each figure is the median of the runs, with its
//!   ratio to the in-process median of the same configuration.
//! * Every run then reads its topic back and checks that every answered offset holds the entry
//!   sent, and nothing else is there; the process exits non-zero if not (never on timings).
//! * Results print as a table and go to `target/bench/services.jsonl`.

use std::collections::HashSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use walrus_async::grpc::{WalClient, pb};
use walrus_async::{FsyncSchedule, Walrus};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    InProcess,
    Http,
    Grpc,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::InProcess => "in-process",
            Mode::Http => "HTTP",
            Mode::Grpc => "gRPC",
        }
    }
}

/// A log with both services on ephemeral ports.
struct Served {
    wal: Walrus,
    http: Client<HttpConnector, Full<Bytes>>,
    http_base: String,
    grpc: WalClient<tonic::transport::Channel>,
}

async fn serve(dir: &std::path::Path, fsync: FsyncSchedule) -> Served {
    let wal = Walrus::builder()
        .data_dir(dir)
        .fsync(fsync)
        .open()
        .await
        .expect("open");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr: SocketAddr = l.local_addr().unwrap();
    tokio::spawn(
        axum::serve(
            l.tap_io(|s| {
                let _ = s.set_nodelay(true);
            }),
            walrus_async::http::router(wal.clone()),
        )
        .into_future(),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(walrus_async::grpc::service(wal.clone()))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
            ),
    );
    let grpc = WalClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap();
    Served {
        wal,
        http: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build_http(),
        http_base: format!("http://{http_addr}"),
        grpc,
    }
}

/// `clients` closed-loop appenders on `topic` for `time`: the (offset, entry) answered.
async fn run(
    s: &Served,
    mode: Mode,
    topic: &str,
    clients: usize,
    time: Duration,
) -> Vec<(u64, u64)> {
    let deadline = Instant::now() + time;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients as u64 {
        let (wal, http, mut grpc) = (s.wal.clone(), s.http.clone(), s.grpc.clone());
        let url = format!("{}/topics/{topic}", s.http_base);
        let topic = topic.to_owned();
        tasks.spawn(async move {
            let mut got = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                // Each entry says who sent it: client and sequence, padded to 100 bytes.
                let id = (c << 32) | i;
                let mut data = vec![b'.'; 100];
                data[..8].copy_from_slice(&id.to_le_bytes());
                let data = Bytes::from(data);
                let offset = match mode {
                    Mode::InProcess => wal.append(&topic, data).await.expect("append"),
                    Mode::Http => {
                        let req = hyper::Request::post(&url).body(Full::new(data)).unwrap();
                        let res = http.request(req).await.expect("HTTP request");
                        assert_eq!(res.status(), 200);
                        let body = res.into_body().collect().await.unwrap().to_bytes();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        v["offset"].as_u64().unwrap()
                    }
                    Mode::Grpc => {
                        let req = pb::AppendRequest {
                            topic: topic.clone(),
                            data,
                        };
                        grpc.append(req)
                            .await
                            .expect("gRPC append")
                            .into_inner()
                            .offset
                    }
                };
                got.push((offset, id));
                i += 1;
            }
            got
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

/// Every answered offset holds its entry, and the topic holds nothing else.
async fn verify(wal: &Walrus, topic: &str, answered: &[(u64, u64)]) -> Result<(), String> {
    let mut seen = HashSet::new();
    let mut offset = 0;
    let mut read = Vec::new();
    loop {
        let got = wal
            .read_at(topic, offset, 4 << 20)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = got.last() else { break };
        offset = last.offset + 1;
        read.extend(got.into_iter().map(|e| {
            (
                e.offset,
                u64::from_le_bytes(e.data[..8].try_into().unwrap()),
            )
        }));
    }
    if read.len() != answered.len() {
        return Err(format!(
            "{} entries answered, {} in the topic",
            answered.len(),
            read.len()
        ));
    }
    let read: std::collections::HashMap<u64, u64> = read.into_iter().collect();
    for (offset, id) in answered {
        if !seen.insert(*offset) || read.get(offset) != Some(id) {
            return Err(format!(
                "offset {offset} does not hold the entry it was answered for"
            ));
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (runs, time) = if quick {
        (1, Duration::from_millis(150))
    } else {
        (5, Duration::from_secs(2))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir_in(
        std::env::var_os("BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir),
    )
    .unwrap();
    let json_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/services.jsonl");
    std::fs::create_dir_all(json_path.parent().unwrap()).unwrap();
    let mut json = std::fs::File::create(&json_path).unwrap();
    let mut failed = false;
    println!(
        "{:<10} {:>7} {:<11} {:>12} {:>9}",
        "fsync", "clients", "mode", "appends/s", "vs in-proc"
    );
    for (sched_name, fsync) in [
        ("SyncEach", FsyncSchedule::SyncEach),
        ("NoFsync", FsyncSchedule::NoFsync),
    ] {
        let dir = root.path().join(sched_name);
        let served = rt.block_on(serve(&dir, fsync));
        for clients in [1usize, 16, 64] {
            let modes = [Mode::InProcess, Mode::Http, Mode::Grpc];
            let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
            for r in 0..runs {
                // Alternate the order so no mode always runs after the same one.
                let order: Vec<usize> = if r % 2 == 0 {
                    vec![0, 1, 2]
                } else {
                    vec![2, 1, 0]
                };
                for m in order {
                    let topic = format!("c{clients}-r{r}-{}", modes[m].name());
                    let started = Instant::now();
                    let answered = rt.block_on(run(&served, modes[m], &topic, clients, time));
                    let rate = answered.len() as f64 / started.elapsed().as_secs_f64();
                    if let Err(e) = rt.block_on(verify(&served.wal, &topic, &answered)) {
                        eprintln!(
                            "VERIFY FAILED {sched_name} {clients} {}: {e}",
                            modes[m].name()
                        );
                        failed = true;
                    }
                    rates[m].push(rate);
                }
            }
            let base = median(&mut rates[0].clone());
            for (m, mode) in modes.iter().enumerate() {
                let med = median(&mut rates[m]);
                println!(
                    "{:<10} {:>7} {:<11} {:>12.0} {:>9.2}x",
                    sched_name,
                    clients,
                    mode.name(),
                    med,
                    med / base
                );
                writeln!(
                    json,
                    "{}",
                    serde_json::json!({
                        "fsync": sched_name, "clients": clients, "mode": mode.name(),
                        "appends_per_s": med, "ratio_to_in_process": med / base,
                        "runs": rates[m],
                    })
                )
                .unwrap();
            }
        }
        rt.block_on(served.wal.close()).unwrap();
    }
    println!("results: {}", json_path.display());
    if failed {
        std::process::exit(1);
    }
}
