//! 200 concurrent clients on one server: 100 producers (half HTTP, half gRPC) and 100
//! streaming consumers (half Server-Sent Events, half gRPC `Subscribe`) on shared topics.
//! Every acknowledged append reaches every consumer of its topic once, in offset order, with
//! its payload.
#![cfg(all(feature = "http", feature = "grpc"))]

#[path = "common/clients.rs"]
mod clients;
mod common;

use std::collections::BTreeMap;

use clients::{Http, grpc};
use walrus_async::grpc::pb;

const TOPICS: usize = 10;
const PRODUCERS: usize = 100;
const CONSUMERS: usize = 100;
const APPENDS_EACH: usize = 100;
/// Every topic gets this many entries: its producers' appends.
const PER_TOPIC: usize = PRODUCERS / TOPICS * APPENDS_EACH;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_every_acknowledged_entry_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http_listener.local_addr().unwrap();
    tokio::spawn(axum::serve(http_listener, walrus_async::http::router(wal.clone())).into_future());
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc_listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(walrus_async::grpc::service(wal.clone()))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            ),
    );
    let http = Http::new(http_addr, None);
    let g = grpc(grpc_addr, None).await;

    // Consumers first, so most of them tail while the producers append.
    let mut consumers = tokio::task::JoinSet::new();
    for c in 0..CONSUMERS {
        let topic = format!("t{}", c % TOPICS);
        let name = format!("c{c}");
        if c % 2 == 0 {
            let http = http.clone();
            consumers.spawn(async move {
                let path = format!("/topics/{topic}/stream?consumer={name}");
                let mut s = http.events(&path, None).await.unwrap();
                let mut got = Vec::with_capacity(PER_TOPIC);
                while got.len() < PER_TOPIC {
                    let (offset, v) = s.next().await.expect("the stream goes on");
                    got.push((offset, v["data"].as_str().unwrap().as_bytes().to_vec()));
                    if got.len() % 50 == 0 {
                        let path = format!("/topics/{topic}/consumers/{name}/ack");
                        let (st, v) = http
                            .call("POST", &path, format!(r#"{{"offset": {offset}}}"#))
                            .await;
                        assert_eq!(st, 200, "{v}");
                    }
                }
                (topic, got)
            });
        } else {
            let mut g = g.clone();
            consumers.spawn(async move {
                let req = pb::SubscribeRequest {
                    topic: topic.clone(),
                    consumer: name.clone(),
                    from: None,
                };
                let mut s = g.subscribe(req).await.unwrap().into_inner();
                let mut got = Vec::with_capacity(PER_TOPIC);
                while got.len() < PER_TOPIC {
                    let e = s.message().await.unwrap().expect("the stream goes on");
                    got.push((e.offset, e.data.to_vec()));
                    if got.len() % 50 == 0 {
                        let ack = pb::AckRequest {
                            topic: topic.clone(),
                            consumer: name.clone(),
                            offset: e.offset,
                        };
                        g.ack(ack).await.unwrap();
                    }
                }
                (topic, got)
            });
        }
    }

    let mut producers = tokio::task::JoinSet::new();
    for p in 0..PRODUCERS {
        let topic = format!("t{}", p % TOPICS);
        let http = http.clone();
        let mut g = g.clone();
        producers.spawn(async move {
            let mut acked = Vec::with_capacity(APPENDS_EACH);
            for i in 0..APPENDS_EACH {
                let data = format!("p{p}-{i}");
                let offset = if p % 2 == 0 {
                    http.append(&topic, data.clone()).await
                } else {
                    let req = pb::AppendRequest {
                        topic: topic.clone(),
                        data: data.clone().into(),
                    };
                    g.append(req).await.unwrap().into_inner().offset
                };
                acked.push((offset, data.into_bytes()));
            }
            (topic, acked)
        });
    }

    // What the producers were told, per topic, in offset order.
    let mut appended: BTreeMap<String, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    while let Some(r) = producers.join_next().await {
        let (topic, acked) = r.unwrap();
        let t = appended.entry(topic).or_default();
        for (offset, data) in acked {
            assert!(
                t.insert(offset, data).is_none(),
                "offset {offset} given twice"
            );
        }
    }
    for t in appended.values() {
        assert_eq!(t.len(), PER_TOPIC);
    }
    let mut delivered = 0;
    while let Some(r) = consumers.join_next().await {
        let (topic, got) = r.unwrap();
        let want: Vec<(u64, Vec<u8>)> = appended[&topic]
            .iter()
            .map(|(o, d)| (*o, d.clone()))
            .collect();
        assert_eq!(got, want, "consumer of {topic}: every entry once, in order");
        delivered += got.len();
    }
    assert_eq!(delivered, CONSUMERS * PER_TOPIC);
    wal.close().await.unwrap();
}
