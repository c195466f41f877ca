//! The generated gRPC client: appends, a batch, then subscribes as a consumer, reads what it
//! appended and acknowledges it.
//!
//! Run against `walrus serve` (`cargo run --release --features cli --bin walrus -- serve
//! ./data --grpc 127.0.0.1:50051`):
//! `cargo run --example grpc_client --features grpc -- http://127.0.0.1:50051`
//!
//! Without an address it serves a log in a temporary directory itself, so it runs alone:
//! `cargo run --example grpc_client --features grpc`. With `WALRUS_TOKEN` set it sends that
//! bearer token (`walrus serve --token-file`).

use walrus_async::grpc::{WalClient, pb};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let (endpoint, own) = match std::env::args().nth(1) {
        Some(addr) => (addr, None),
        None => {
            // A server of our own on an ephemeral port.
            let wal = walrus_async::Walrus::open(temp.path()).await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(walrus_async::grpc::service(wal.clone()))
                    .serve_with_incoming(
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true)),
                    ),
            );
            println!("serving a log in {} on {addr}", temp.path().display());
            (format!("http://{addr}"), Some(wal))
        }
    };

    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
        .connect()
        .await?;
    let token = std::env::var("WALRUS_TOKEN").ok();
    let mut client = WalClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Some(t) = &token {
            let value = format!("Bearer {t}").parse().map_err(|_| {
                tonic::Status::invalid_argument("WALRUS_TOKEN is not a valid header")
            })?;
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    });

    let topic = "greetings".to_string();
    let first = client
        .append(pb::AppendRequest {
            topic: topic.clone(),
            data: "hello".into(),
        })
        .await?
        .into_inner()
        .offset;
    let batch = client
        .append_batch(pb::AppendBatchRequest {
            topic: topic.clone(),
            entries: vec!["bonjour".into(), "hallo".into(), "hola".into()],
        })
        .await?
        .into_inner();
    println!(
        "appended offset {first} and, atomically, offsets {}..{}",
        batch.first, batch.end
    );

    // A consumer from where we started appending; its checkpoint is kept by the server.
    let mut entries = client
        .subscribe(pb::SubscribeRequest {
            topic: topic.clone(),
            consumer: "example".into(),
            from: Some(first),
        })
        .await?
        .into_inner();
    while let Some(entry) = entries.message().await? {
        println!(
            "  {} @{} ms: {}",
            entry.offset,
            entry.timestamp_ms,
            String::from_utf8_lossy(&entry.data)
        );
        if entry.offset + 1 == batch.end {
            // Everything up to here is processed: the consumer resumes after it next time.
            client
                .ack(pb::AckRequest {
                    topic: topic.clone(),
                    consumer: "example".into(),
                    offset: entry.offset,
                })
                .await?;
            break;
        }
    }
    drop(entries);

    for t in client
        .topics(pb::TopicsRequest::default())
        .await?
        .into_inner()
        .topics
    {
        println!(
            "topic {}: offsets {}..{}, {} entries, consumers {:?}",
            t.name,
            t.oldest_offset,
            t.next_offset,
            t.entries,
            t.consumers
                .iter()
                .map(|c| format!("{} (lag {})", c.consumer, c.lag))
                .collect::<Vec<_>>()
        );
    }
    if let Some(wal) = own {
        wal.close().await?;
    }
    Ok(())
}
