//! `walrus serve` as an operator runs it: the binary on 127.0.0.1 with ephemeral ports and a
//! token file, real HTTP and gRPC clients, SIGTERM (open streams end, exit 0 after the log is
//! closed), and a restart on the same directory that resumes every consumer without loss or
//! duplicate.
#![cfg(feature = "cli")]

#[path = "common/clients.rs"]
mod clients;

use std::process::Stdio;
use std::time::Duration;

use clients::{Http, grpc};
use tokio::io::{AsyncBufReadExt, BufReader};
use walrus_async::grpc::pb;

/// A running `walrus serve`.
struct Server {
    child: tokio::process::Child,
    http: String,
    grpc: String,
    log: tokio::task::JoinHandle<Vec<String>>,
}

/// Starts `walrus serve DIR` with both services on ephemeral ports; returns once it is ready.
async fn start(dir: &std::path::Path, token_file: &std::path::Path) -> Server {
    start_with(dir, token_file, &[]).await
}

async fn start_with(dir: &std::path::Path, token_file: &std::path::Path, extra: &[&str]) -> Server {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_walrus"))
        .args(["serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .args(extra)
        .arg("--token-file")
        .arg(token_file)
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut http, mut grpc) = (None, None);
    let ready = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let addr = || line.split("addr=").nth(1).unwrap().trim().to_owned();
            if line.contains("serving HTTP") {
                http = Some(addr());
            } else if line.contains("serving gRPC") {
                grpc = Some(addr());
            } else if line.contains(" ready ") {
                return;
            }
        }
        panic!("walrus serve exited before it was ready");
    };
    tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("ready within 60 s");
    // The rest of its log, for the shutdown's checks.
    let log = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            rest.push(l);
        }
        rest
    });
    Server {
        child,
        http: http.unwrap(),
        grpc: grpc.unwrap(),
        log,
    }
}

impl Server {
    /// SIGTERM; the exit status and what it logged meanwhile.
    async fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("exits within 60 s of SIGTERM")
            .unwrap();
        (status, self.log.await.unwrap())
    }
}

#[tokio::test]
async fn serve_restart_resumes_every_consumer_without_loss_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();

    let server = start(&data, &token_file).await;
    let http = Http::new(&server.http, Some("s3cret"));
    let mut g = grpc(&server.grpc, Some("s3cret")).await;
    // Without the token: 401, and UNAUTHENTICATED.
    let (s, v) = Http::new(&server.http, None)
        .call("POST", "/topics/orders", "x")
        .await;
    assert_eq!((s, &v["error"]), (401, &"unauthorized".into()));
    let (s, _) = Http::new(&server.http, None)
        .call("GET", "/healthz", "")
        .await;
    assert_eq!(s, 200, "health needs no token");
    let denied = grpc(&server.grpc, None)
        .await
        .append(pb::AppendRequest {
            topic: "orders".into(),
            data: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);

    for i in 0..5 {
        assert_eq!(http.append("orders", format!("h{i}")).await, i);
    }
    for i in 5..10 {
        let r = g
            .append(pb::AppendRequest {
                topic: "orders".into(),
                data: format!("g{i}").into(),
            })
            .await
            .unwrap();
        assert_eq!(r.into_inner().offset, i);
    }
    // Two consumers, one on each protocol, each acknowledging part of what it got.
    let mut sse = http
        .events("/topics/orders/stream?consumer=billing", None)
        .await
        .unwrap();
    for want in 0..10 {
        assert_eq!(sse.next().await.unwrap().0, want);
    }
    let (s, v) = http
        .call(
            "POST",
            "/topics/orders/consumers/billing/ack",
            r#"{"offset": 6}"#,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut sub = g
        .subscribe(pb::SubscribeRequest {
            topic: "orders".into(),
            consumer: "audit".into(),
            from: None,
        })
        .await
        .unwrap()
        .into_inner();
    for want in 0..10 {
        assert_eq!(sub.message().await.unwrap().unwrap().offset, want);
    }
    g.ack(pb::AckRequest {
        topic: "orders".into(),
        consumer: "audit".into(),
        offset: 9,
    })
    .await
    .unwrap();

    // SIGTERM: both open streams end, the log closes, exit 0.
    let (status, log) = server.terminate().await;
    let (event, _, v) = sse.next_any().await.expect("told why");
    assert_eq!(
        (event.as_str(), &v["error"]),
        ("error", &"shutting_down".into())
    );
    assert!(
        sse.next_any().await.is_none(),
        "then the event stream ended"
    );
    let ended = sub.message().await.unwrap_err();
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(status.success(), "{status:?}: {log:?}");
    assert!(log.iter().any(|l| l.contains("log closed")), "{log:?}");

    // Restarted on the same directory: offsets go on, consumers resume after what they
    // acknowledged, and nothing is delivered twice or lost.
    let server = start(&data, &token_file).await;
    let http = Http::new(&server.http, Some("s3cret"));
    let mut g = grpc(&server.grpc, Some("s3cret")).await;
    assert_eq!(http.append("orders", "after").await, 10);
    let mut sse = http
        .events("/topics/orders/stream?consumer=billing", None)
        .await
        .unwrap();
    for want in 7..=10 {
        let (id, v) = sse.next().await.unwrap();
        assert_eq!(id, want);
        let expect = match want {
            10 => "after".to_owned(),
            n => format!("g{n}"),
        };
        assert_eq!(v["data"], expect.as_str());
    }
    let mut sub = g
        .subscribe(pb::SubscribeRequest {
            topic: "orders".into(),
            consumer: "audit".into(),
            from: None,
        })
        .await
        .unwrap()
        .into_inner();
    let e = sub.message().await.unwrap().unwrap();
    assert_eq!((e.offset, &e.data[..]), (10, &b"after"[..]));
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status:?}: {log:?}");
}

/// Neither a client that stopped reading a large stream nor an open health watch can hold
/// the shutdown: the watch sees NOT_SERVING and ends, the stalled stream is cut at the drain
/// timeout, the log is closed, exit 0.
#[tokio::test]
async fn serve_shuts_down_despite_a_stalled_reader_and_a_health_watch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "\u{feff}t0k3n\n").unwrap();
    let server = start_with(&data, &token_file, &["--drain-timeout-secs", "2"]).await;
    let http = Http::new(&server.http, Some("t0k3n"));
    // 32 MiB of backlog, more than the socket buffers hold.
    let item = format!("\"{}\"", "x".repeat(64 << 10));
    for _ in 0..8 {
        let batch = format!("[{}]", vec![item.as_str(); 64].join(","));
        let (s, v) = http.call("POST", "/topics/big/batch", batch).await;
        assert_eq!(s, 200, "{v}");
    }
    let mut stalled = http
        .events("/topics/big/stream?consumer=stalled", None)
        .await
        .unwrap();
    assert_eq!(stalled.next().await.unwrap().0, 0);
    // Health, without the token.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "walrus.v1.Wal".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    assert_eq!(watch.message().await.unwrap().unwrap().status, serving);

    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status:?}: {log:?}");
    assert!(log.iter().any(|l| l.contains("log closed")), "{log:?}");
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let mut seen = Vec::new();
    while let Ok(Some(m)) = watch.message().await {
        seen.push(m.status);
    }
    assert!(seen.contains(&not_serving), "{seen:?}");
    drop(stalled);
}

#[tokio::test]
async fn serve_refuses_bad_arguments_with_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: Vec<std::ffi::OsString>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_walrus"))
            .arg("serve")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(vec![dir.path().into()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to serve"));
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "  \n").unwrap();
    let out = run(vec![
        dir.path().join("d").into(),
        "--http".into(),
        "127.0.0.1:0".into(),
        "--token-file".into(),
        empty.into(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must hold one token"));
    // A port already taken fails at once (exit 1), before serving anything.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = run(vec![
        dir.path().join("d").into(),
        "--http".into(),
        taken.local_addr().unwrap().to_string().into(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listening on"));
}
