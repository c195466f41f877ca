//! The gRPC service (feature `grpc`) over a real loopback connection, with the generated
//! client: every method, every status, the token, health, and a stream released when its
//! client goes away.
#![cfg(feature = "grpc")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use walrus_async::Walrus;
use walrus_async::grpc::{Options, WalClient, pb, service_with};

/// Serves `wal` (and health) on 127.0.0.1 with an ephemeral port until `wal`'s test ends.
async fn serve(wal: &Walrus, options: Options) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = walrus_async::grpc::health().await;
    let server = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(service_with(wal.clone(), options))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        );
    tokio::spawn(server);
    addr
}

async fn client(addr: SocketAddr) -> WalClient<Channel> {
    WalClient::connect(format!("http://{addr}")).await.unwrap()
}

fn append(topic: &str, data: impl Into<bytes::Bytes>) -> pb::AppendRequest {
    pb::AppendRequest {
        topic: topic.into(),
        data: data.into(),
    }
}

fn subscribe(topic: &str, consumer: &str, from: Option<u64>) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        topic: topic.into(),
        consumer: consumer.into(),
        from,
    }
}

/// The code of an error reply (panics on success).
fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("expected an error").code()
}

async fn next(s: &mut tonic::Streaming<pb::Entry>) -> pb::Entry {
    tokio::time::timeout(Duration::from_secs(30), s.message())
        .await
        .expect("an entry within 30 s")
        .unwrap()
        .expect("the stream goes on")
}

#[tokio::test]
async fn append_batch_read_subscribe_ack_and_topics() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let addr = serve(&wal, Options::default()).await;
    let mut c = client(addr).await;

    let r = c.append(append("orders", "first")).await.unwrap();
    assert_eq!(r.into_inner().offset, 0);
    let r = c
        .append_batch(pb::AppendBatchRequest {
            topic: "orders".into(),
            entries: vec!["b".into(), "c".into(), vec![0xffu8].into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.first, r.end), (1, 4));
    // Appended means readable, through the library too.
    assert_eq!(
        wal.read_at("orders", 3, 0).await.unwrap()[0].data,
        [0xff][..]
    );
    let got = c
        .read(pb::ReadRequest {
            topic: "orders".into(),
            from: 1,
            max_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let offsets: Vec<u64> = got.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [1, 2, 3]);
    assert_eq!(got[0].data, "b");
    assert!(got[0].timestamp_ms > 0);

    // A consumer's stream, then what is appended while it listens.
    let mut s = c
        .subscribe(subscribe("orders", "billing", None))
        .await
        .unwrap()
        .into_inner();
    for want in 0..4 {
        assert_eq!(next(&mut s).await.offset, want);
    }
    c.append(append("orders", "late")).await.unwrap();
    let e = next(&mut s).await;
    assert_eq!((e.offset, &e.data[..]), (4, &b"late"[..]));
    c.ack(pb::AckRequest {
        topic: "orders".into(),
        consumer: "billing".into(),
        offset: 2,
    })
    .await
    .unwrap();
    assert_eq!(wal.consumer_lag("orders", "billing"), Some(2));

    let topics = c
        .topics(pb::TopicsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topics.topics.len(), 1);
    let t = &topics.topics[0];
    assert_eq!(
        (t.name.as_str(), t.oldest_offset, t.next_offset, t.entries),
        ("orders", 0, 5, 5)
    );
    assert_eq!(t.consumers.len(), 1);
    assert_eq!(
        (t.consumers[0].consumer.as_str(), t.consumers[0].lag),
        ("billing", 2)
    );

    // Reset (once the stream is gone) and removal.
    drop(s);
    let reset = pb::ResetConsumerRequest {
        topic: "orders".into(),
        consumer: "billing".into(),
        to: Some(pb::reset_consumer_request::To::Earliest(true)),
    };
    let at = until_released(|| {
        let mut c = c.clone();
        let reset = reset.clone();
        async move { c.reset_consumer(reset).await }
    })
    .await;
    assert_eq!(at.into_inner().offset, 0);
    c.remove_consumer(pb::RemoveConsumerRequest {
        topic: "orders".into(),
        consumer: "billing".into(),
    })
    .await
    .unwrap();
    assert_eq!(wal.consumer_lag("orders", "billing"), None);
    wal.close().await.unwrap();
}

/// Calls `f` until it is not refused as busy (a stream's release is asynchronous: the server
/// learns of the client's cancellation from the connection), 10 s at most.
async fn until_released<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let attempt = async {
        loop {
            match f().await {
                Ok(v) => return v,
                Err(s) if s.code() == Code::Aborted => tokio::task::yield_now().await,
                Err(s) => panic!("{s:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .expect("released within 10 s")
}

#[tokio::test]
async fn a_subscriber_that_goes_away_releases_its_consumer_and_resumes_where_it_acked() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append_batch("t", ["a", "b", "c"]).await.unwrap();
    let addr = serve(&wal, Options::default()).await;
    let mut c = client(addr).await;

    let mut s = c
        .subscribe(subscribe("t", "c1", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut s).await.offset, 0);
    assert_eq!(next(&mut s).await.offset, 1);
    c.ack(pb::AckRequest {
        topic: "t".into(),
        consumer: "c1".into(),
        offset: 0,
    })
    .await
    .unwrap();
    // A second subscriber of the same consumer while the first lives: ABORTED.
    let busy = c.subscribe(subscribe("t", "c1", None)).await.unwrap_err();
    assert_eq!(busy.code(), Code::Aborted, "{busy:?}");
    // The first goes away: the consumer is free, and resumes after what was acknowledged.
    drop(s);
    let mut s = until_released(|| {
        let mut c = c.clone();
        async move { c.subscribe(subscribe("t", "c1", None)).await }
    })
    .await
    .into_inner();
    assert_eq!(next(&mut s).await.offset, 1);
    drop(s);
    // `from` starts elsewhere, without moving the checkpoint.
    let mut s = until_released(|| {
        let mut c = c.clone();
        async move { c.subscribe(subscribe("t", "c1", Some(2))).await }
    })
    .await
    .into_inner();
    assert_eq!(next(&mut s).await.offset, 2);
    assert_eq!(wal.consumer_lag("t", "c1"), Some(2));
    drop(s);
    wal.close().await.unwrap();
}

#[tokio::test]
async fn every_error_has_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path())
        .max_entry_bytes(64)
        .max_batch_entries(8)
        .max_batch_bytes(1024)
        .segment_bytes(64 << 10)
        .retention_bytes(1)
        .open()
        .await
        .unwrap();
    let addr = serve(&wal, Options::default()).await;
    let mut c = client(addr).await;

    let long = "x".repeat(300);
    assert_eq!(
        code(c.append(append(&long, "x")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.subscribe(subscribe("t", &"y".repeat(300), None))
                .await
                .map(|_| ())
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.append(append("t", vec![1u8; 65])).await),
        Code::ResourceExhausted
    );
    let batch = |n: usize, size: usize| pb::AppendBatchRequest {
        topic: "t".into(),
        entries: vec![vec![1u8; size].into(); n],
    };
    assert_eq!(
        code(c.append_batch(batch(9, 1)).await),
        Code::ResourceExhausted
    );
    // Larger than any message the service takes: refused by the transport before the method
    // runs, as RESOURCE_EXHAUSTED too (tonic alone says OUT_OF_RANGE).
    let huge = c
        .append(append("t", vec![1u8; 64 << 10]))
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::ResourceExhausted, "{huge:?}");
    assert_eq!(wal.topic_info("t"), None, "nothing was appended");

    let read = |topic: &str, from| pb::ReadRequest {
        topic: topic.into(),
        from,
        max_bytes: 0,
    };
    assert_eq!(code(c.read(read("none", 0)).await), Code::NotFound);
    let reset = pb::ResetConsumerRequest {
        topic: "none".into(),
        consumer: "c".into(),
        to: Some(pb::reset_consumer_request::To::Latest(true)),
    };
    assert_eq!(code(c.reset_consumer(reset).await), Code::NotFound);
    let ack = pb::AckRequest {
        topic: "t".into(),
        consumer: "c".into(),
        offset: 0,
    };
    assert_eq!(code(c.ack(ack.clone()).await), Code::FailedPrecondition);
    let bad_name = pb::AckRequest {
        consumer: "\0".into(),
        ..ack.clone()
    };
    assert_eq!(code(c.ack(bad_name).await), Code::InvalidArgument);

    // Entries deleted by retention: OUT_OF_RANGE with the oldest offset.
    for _ in 0..3000 {
        wal.append("t", vec![7u8; 64]).await.unwrap();
    }
    wal.reclaim().await.unwrap();
    let oldest = wal.topic_info("t").unwrap().oldest_offset;
    assert!(oldest > 0);
    let gone = c.read(read("t", 0)).await.unwrap_err();
    assert_eq!(gone.code(), Code::OutOfRange);
    assert_eq!(
        gone.metadata()
            .get("walrus-oldest")
            .unwrap()
            .to_str()
            .unwrap(),
        oldest.to_string()
    );
    let reset = pb::ResetConsumerRequest {
        topic: "t".into(),
        consumer: "c".into(),
        to: None,
    };
    assert_eq!(code(c.reset_consumer(reset).await), Code::InvalidArgument);
    // An acknowledgement of an offset the stream never delivered.
    let mut s = c
        .subscribe(subscribe("t", "c", Some(oldest)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut s).await.offset, oldest);
    let ack = pb::AckRequest {
        offset: oldest + 10_000,
        ..ack
    };
    assert_eq!(code(c.ack(ack).await), Code::InvalidArgument);

    // Closed: UNAVAILABLE, and the open stream ends.
    wal.close().await.unwrap();
    assert_eq!(code(c.append(append("t", "x")).await), Code::Unavailable);
    assert_eq!(
        code(c.topics(pb::TopicsRequest::default()).await),
        Code::Unavailable
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(_)) = s.message().await {}
    });
    ended.await.expect("the stream ends once the log is closed");
}

#[tokio::test]
async fn a_token_guards_every_method_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let addr = serve(&wal, Options::default().token("s3cret")).await;
    let mut c = client(addr).await;
    let denied = c.append(append("t", "x")).await.unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    let denied = c.subscribe(subscribe("t", "", None)).await.unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(append("t", "x"));
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        c.append(req).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // Checked before the message is read: a large one without the token is refused as
    // unauthenticated, not decoded.
    let big = c.append(append("t", vec![0u8; 8 << 20])).await.unwrap_err();
    assert_eq!(big.code(), Code::Unauthenticated, "{big:?}");
    assert_eq!(wal.topic_info("t"), None);

    // With the token, through an interceptor as a real client would.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut authed = WalClient::with_interceptor(channel.clone(), |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("authorization", "bearer s3cret".parse().unwrap());
        Ok(r)
    });
    assert_eq!(
        authed
            .append(append("t", "x"))
            .await
            .unwrap()
            .into_inner()
            .offset,
        0
    );

    // Health needs no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "walrus.v1.Wal".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    wal.close().await.unwrap();
}

#[tokio::test]
async fn topics_come_a_page_at_a_time_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    for t in ["d", "b", "a", "e", "c"] {
        wal.append(t, "x").await.unwrap();
    }
    let addr = serve(&wal, Options::default()).await;
    let mut c = client(addr).await;
    let mut after = String::new();
    let mut pages = Vec::new();
    loop {
        let r = c
            .topics(pb::TopicsRequest {
                after: after.clone(),
                limit: 2,
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(r.topics.iter().map(|t| t.name.clone()).collect::<Vec<_>>());
        match r.next_after {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(pages, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    let all = c
        .topics(pb::TopicsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((all.topics.len(), all.next_after), (5, None));
    wal.close().await.unwrap();
}

/// A consumer that acknowledges each entry before it reads the next, with a backlog far
/// larger than the transport's buffers: acknowledgements are served while the stream waits
/// for the client to take more (they used to queue behind it, and both sides waited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_each_entry_through_a_large_backlog_does_not_stall() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path())
        .segment_bytes(8 << 20)
        .open()
        .await
        .unwrap();
    const N: u64 = 1024;
    let payload = vec![7u8; 16 << 10]; // 16 MiB in all
    for chunk in 0..N / 64 {
        let range = wal
            .append_batch("t", (0..64).map(|_| payload.clone()))
            .await
            .unwrap();
        assert_eq!(range.start, chunk * 64);
    }
    let addr = serve(&wal, Options::default()).await;
    let mut c = client(addr).await;
    let mut s = c
        .subscribe(subscribe("t", "slow", None))
        .await
        .unwrap()
        .into_inner();
    let all = async {
        for want in 0..N {
            let e = s.message().await.unwrap().expect("the stream goes on");
            assert_eq!(e.offset, want);
            c.ack(pb::AckRequest {
                topic: "t".into(),
                consumer: "slow".into(),
                offset: e.offset,
            })
            .await
            .unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("every entry read and acknowledged");
    assert_eq!(wal.consumer_lag("t", "slow"), Some(0));
    drop(s);
    wal.close().await.unwrap();
}
