//! Dropping append futures at any point never corrupts the log.

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_appends_are_written_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path())
        .queue_capacity(8)
        .open()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for p in 0..32u32 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..40u32 {
                let data = format!("p{p}-i{i}-").repeat(1 + (i as usize % 20));
                let fut = async {
                    if i % 5 == 0 {
                        wal.append_batch("t", [data.clone(), data.clone()])
                            .await
                            .map(|r| r.start)
                    } else {
                        wal.append("t", data.clone()).await
                    }
                };
                // Give up on every third append after a zero or tiny timeout: the future is
                // dropped wherever it stands (queued, waiting for room, or waiting for I/O).
                if i % 3 == 0 {
                    let _ = tokio::time::timeout(Duration::from_micros(u64::from(i % 4) * 50), fut)
                        .await;
                } else {
                    acked.push((fut.await.unwrap(), data));
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    wal.close().await.unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let all = common::all_entries(&wal, "t").await;
    // Dense, and every entry is one of the payloads some producer made, whole.
    for (i, (o, data)) in all.iter().enumerate() {
        assert_eq!(*o, i as u64);
        let s = std::str::from_utf8(data).unwrap();
        let unit_end = s.match_indices('-').nth(1).expect("a producer's unit").0;
        let unit = &s[..=unit_end];
        assert_eq!(s, unit.repeat(s.len() / unit.len()), "entry {o} is whole");
    }
    // Every acknowledged append is there with its data.
    for (o, data) in acked {
        assert_eq!(all[o as usize].1, data.as_bytes());
    }
    assert_eq!(wal.stats().checksum_failures, 0);
}
