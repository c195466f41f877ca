//! `walrus serve`: the HTTP router and the gRPC service on one log, until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use axum::serve::ListenerExt as _;
use tokio::sync::watch;
use tracing::{info, warn};
use walrus_async::{FsyncSchedule, Walrus};

use crate::{Failure, Outcome, Target, key};

/// What `walrus serve` was asked for.
pub(crate) struct Serve {
    pub(crate) target: Target,
    pub(crate) http: Option<SocketAddr>,
    pub(crate) grpc: Option<SocketAddr>,
    pub(crate) token_file: Option<std::path::PathBuf>,
    pub(crate) fsync_ms: u64,
    pub(crate) drain_timeout: std::time::Duration,
}

/// Resolves once `stop` says so: the one signal every part of the shutdown waits on.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn read_token(path: &Path) -> Result<String, Failure> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("reading the token file {}: {e}", path.display())))?;
    let token = token.trim_start_matches('\u{feff}').trim();
    // What an `Authorization` header and gRPC metadata can carry as they are.
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Failure::Usage(format!(
            "the token file {} must hold one token of visible ASCII characters (no spaces)",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

/// Small answers go out at once instead of waiting for the peer's delayed ACK (Nagle).
fn no_delay(s: &mut tokio::net::TcpStream) {
    if let Err(e) = s.set_nodelay(true) {
        warn!(error = %e, "TCP_NODELAY not set");
    }
}

/// SIGTERM and Ctrl-C, listened for from the start (a signal before the first wait is kept,
/// not left to the default action that would kill the process without closing the log).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

pub(crate) fn run(args: Serve) -> Outcome {
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    if args.http.is_none() && args.grpc.is_none() {
        return Err(Failure::Usage(
            "nothing to serve: give --http ADDR, --grpc ADDR or both".into(),
        ));
    }
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    // The Prometheus text of `GET /metrics`.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Failure::Failed(format!("installing the metrics recorder: {e}")))?;
    let rt = crate::runtime()?;
    rt.block_on(async move {
        let fsync = match args.fsync_ms {
            0 => FsyncSchedule::SyncEach,
            ms => FsyncSchedule::Milliseconds(ms),
        };
        let mut b = Walrus::builder().data_dir(&args.target.dir).fsync(fsync);
        if let Some(k) = key(&args.target) {
            b = b.key(k);
        }
        let mut signals = Signals::new()?;
        let wal = b.open().await?;
        // Bound before anything is served, so a taken port fails the command at once.
        let bind = |addr: Option<SocketAddr>| async move {
            match addr {
                None => Ok(None),
                Some(addr) => tokio::net::TcpListener::bind(addr)
                    .await
                    .map(Some)
                    .map_err(|e| Failure::Failed(format!("listening on {addr}: {e}"))),
            }
        };
        let listeners = match (bind(args.http).await, bind(args.grpc).await) {
            (Ok(h), Ok(g)) => (h, g),
            (Err(e), _) | (_, Err(e)) => {
                wal.close().await?;
                return Err(e);
            }
        };
        let (http, grpc) = listeners;
        let (stop, stop_rx) = watch::channel(false);
        let mut servers = tokio::task::JoinSet::new();
        if let Some(listener) = http {
            let addr = listener.local_addr()?;
            let mut options = walrus_async::http::Options::default()
                .shutdown(stopped(stop_rx.clone()))
                .metrics(move || metrics.render());
            if let Some(t) = &token {
                options = options.token(t.clone());
            }
            let app = walrus_async::http::router_with(wal.clone(), options);
            let serving = axum::serve(listener.tap_io(no_delay), app).with_graceful_shutdown(stopped(stop_rx.clone()));
            info!(%addr, "serving HTTP");
            servers.spawn(async move { serving.await.map_err(|e| format!("HTTP server: {e}")) });
        }
        let mut health = None;
        if let Some(listener) = grpc {
            let addr = listener.local_addr()?;
            let mut options =
                walrus_async::grpc::Options::default().shutdown(stopped(stop_rx.clone()));
            if let Some(t) = &token {
                options = options.token(t.clone());
            }
            let (reporter, health_service) = walrus_async::grpc::health().await;
            health = Some(reporter);
            let serving = tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(walrus_async::grpc::service_with(wal.clone(), options))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stopped(stop_rx.clone()),
                );
            info!(%addr, "serving gRPC");
            servers.spawn(async move { serving.await.map_err(|e| format!("gRPC server: {e}")) });
        }
        info!(dir = %args.target.dir.display(), auth = token.is_some(), "ready");

        // Until a signal, or a server failing on its own.
        let failed = tokio::select! {
            s = signals.next() => {
                info!(signal = s, "shutting down: no new connections, open streams end");
                None
            }
            Some(r) = servers.join_next() => Some(match r {
                Ok(Ok(())) => "a server stopped on its own".to_owned(),
                Ok(Err(e)) => e,
                Err(e) => format!("a server task failed: {e}"),
            }),
        };
        if let Some(mut reporter) = health {
            for name in ["walrus.v1.Wal", ""] {
                reporter
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
                // Ends open `Health.Watch` calls (after they saw NOT_SERVING), which the
                // graceful shutdown would otherwise wait for.
                reporter.clear_service_status(name).await;
            }
        }
        stop.send_replace(true);
        // Requests in flight finish; a client that stops reading cannot hold the shutdown
        // past the drain timeout, nor past a second signal.
        let drained = async {
            let mut errors = Vec::new();
            while let Some(r) = servers.join_next().await {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => errors.push(e),
                    Err(e) => errors.push(format!("a server task failed: {e}")),
                }
            }
            errors
        };
        let errors = tokio::select! {
            errors = drained => errors,
            _ = tokio::time::sleep(args.drain_timeout) => {
                warn!(timeout = ?args.drain_timeout, "connections still open after the drain timeout: closing the log");
                Vec::new()
            }
            s = signals.next() => {
                warn!(signal = s, "second signal: closing the log without waiting for open connections");
                Vec::new()
            }
        };
        wal.close().await?;
        info!("log closed");
        match failed.into_iter().chain(errors).next() {
            None => Ok(ExitCode::SUCCESS),
            Some(e) => Err(Failure::Failed(e)),
        }
    })
}
