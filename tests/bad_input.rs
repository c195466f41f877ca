//! Rows of the README's bad-input table not covered by the area tests: names that look like
//! paths, hostile instance keys, reads past the end, calls on a closed log, and a segment file
//! replaced by one of another log.

mod common;

use std::path::Path;

use walrus_async::{Error, Walrus};

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn topic_names_that_look_like_paths_or_are_not_ascii_are_just_names() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("wal");
    let wal = common::small(&dir).open().await.unwrap();
    let names = ["../x", "/etc/passwd", "a/b", "日本語", "é", ".", ".."];
    for (i, n) in names.iter().enumerate() {
        assert_eq!(wal.append(n, format!("v{i}")).await.unwrap(), 0, "{n}");
    }
    for bad in ["", "a\0b"] {
        assert!(
            matches!(wal.append(bad, "x").await, Err(Error::InvalidTopic { .. })),
            "{bad:?}"
        );
    }
    let long = "x".repeat(256);
    assert!(matches!(
        wal.append(&long, "x").await,
        Err(Error::InvalidTopic { .. })
    ));
    assert!(matches!(wal.append(&"x".repeat(255), "x").await, Ok(0)));
    wal.close().await.unwrap();
    // Names never become paths: nothing was created outside the data directory, and inside it
    // only the log's own files.
    assert_eq!(
        tree(outer.path())
            .iter()
            .filter(|p| !p.starts_with("wal"))
            .count(),
        0
    );
    for p in tree(&dir) {
        assert!(
            p.ends_with(".seg") || ["LOCK", "LOG_ID", "checkpoints"].contains(&p.as_str()),
            "unexpected file {p}"
        );
    }
    let wal = common::small(&dir).open().await.unwrap();
    for (i, n) in names.iter().enumerate() {
        let e = common::all_entries(&wal, n).await;
        assert_eq!(e, vec![(0, format!("v{i}").into_bytes())], "{n}");
    }
    wal.close().await.unwrap();
}

#[tokio::test]
async fn instance_keys_stay_inside_the_data_dir_and_long_ones_are_rejected() {
    let outer = tempfile::tempdir().unwrap();
    let data = outer.path().join("data");
    let keys = ["..", "/", "", "../../etc", "a/../../b", "\0", "ключ"];
    let open = |k: &str| Walrus::builder().data_dir(&data).key(k).open();
    for (i, k) in keys.iter().enumerate() {
        let wal = open(k).await.unwrap();
        wal.append("t", format!("k{i}")).await.unwrap();
        wal.close().await.unwrap();
    }
    // Each key is its own namespace directory directly inside the data dir; the empty key means
    // no key (the data dir itself).
    let top: Vec<String> = tree(outer.path())
        .into_iter()
        .filter(|p| !p.contains('/'))
        .collect();
    assert_eq!(top, vec!["data"]);
    let namespaces: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    // Exactly the documented encoding: `ns-`, then bytes outside [A-Za-z0-9_-] as %XX.
    let encode = |k: &str| {
        let mut s = String::from("ns-");
        for b in k.bytes() {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                s.push(b as char);
            } else {
                s.push_str(&format!("%{b:02X}"));
            }
        }
        s
    };
    let mut want: Vec<String> = keys
        .iter()
        .filter(|k| !k.is_empty())
        .map(|k| encode(k))
        .collect();
    want.sort();
    let mut ns: Vec<String> = namespaces
        .iter()
        .filter(|n| n.starts_with("ns-"))
        .cloned()
        .collect();
    ns.sort();
    assert_eq!(ns, want);
    for n in &ns {
        assert!(
            data.join(n).is_dir(),
            "{n} is a directory inside the data dir"
        );
    }
    assert!(namespaces.iter().any(|n| n == "LOG_ID"), "{namespaces:?}");
    for (i, k) in keys.iter().enumerate() {
        let wal = open(k).await.unwrap();
        assert_eq!(
            common::all_entries(&wal, "t").await,
            vec![(0, format!("k{i}").into_bytes())],
            "key {k:?}"
        );
        wal.close().await.unwrap();
    }
    let err = open(&"k".repeat(300)).await.unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), namespaces.len());
}

#[tokio::test]
async fn reads_past_the_end_and_of_unknown_topics_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append("t", "only").await.unwrap();
    assert!(wal.read_at("t", 1, 1 << 20).await.unwrap().is_empty());
    assert!(
        wal.read_at("t", u64::MAX, 1 << 20)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(wal.read_at("nope", 0, 1 << 20).await.unwrap().is_empty());
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 0);
    assert!(wal.read_next("t", true).await.unwrap().is_none());
    assert!(wal.read_next("nope", true).await.unwrap().is_none());
    assert!(wal.batch_read("t", 1 << 20, true).await.unwrap().is_empty());
    wal.close().await.unwrap();
}

#[tokio::test]
async fn subscribe_and_other_calls_on_a_closed_log_are_closed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append("t", "x").await.unwrap();
    wal.close().await.unwrap();
    assert!(matches!(wal.subscribe("t"), Err(Error::Closed)));
    assert!(matches!(wal.subscribe_as("t", "c"), Err(Error::Closed)));
    assert!(matches!(
        wal.read_next("t", false).await,
        Err(Error::Closed)
    ));
    assert!(matches!(wal.read_at("t", 0, 10).await, Err(Error::Closed)));
    assert!(matches!(wal.sync().await, Err(Error::Closed)));
    // Closing twice is fine, and stats stay readable.
    wal.close().await.unwrap();
    assert_eq!(wal.stats().appends, 1);
}

#[tokio::test]
async fn a_segment_of_another_log_copied_in_is_ignored_and_left_alone() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for (d, tag) in [(a.path(), "A"), (b.path(), "B")] {
        let w = common::small(d).open().await.unwrap();
        for i in 0..10 {
            w.append("t", format!("{tag}{i}")).await.unwrap();
        }
        w.append("only-in-b", tag).await.unwrap();
        w.close().await.unwrap();
    }
    // B's newest segment, under a name that sorts after all of A's.
    let theirs = common::segments(b.path()).pop().unwrap();
    let planted = a.path().join("99999999999999.seg");
    std::fs::copy(&theirs, &planted).unwrap();

    let wal = common::small(a.path()).open().await.unwrap();
    let want: Vec<(u64, Vec<u8>)> = (0..10).map(|i| (i, format!("A{i}").into_bytes())).collect();
    assert_eq!(common::all_entries(&wal, "t").await, want);
    assert_eq!(
        common::all_entries(&wal, "only-in-b").await,
        vec![(0, b"A".to_vec())]
    );
    assert!(
        wal.stats().checksum_failures >= 1,
        "the foreign file is reported"
    );
    assert_eq!(wal.append("t", "next").await.unwrap(), 10);
    wal.close().await.unwrap();
    assert_eq!(
        std::fs::read(&planted).unwrap(),
        std::fs::read(&theirs).unwrap(),
        "a file of another log is never modified or deleted"
    );
}

#[tokio::test]
async fn a_lost_log_id_file_is_taken_back_from_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    for i in 0..5 {
        wal.append("t", format!("e{i}")).await.unwrap();
    }
    wal.close().await.unwrap();
    std::fs::remove_file(dir.path().join("LOG_ID")).unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(common::all_entries(&wal, "t").await.len(), 5);
    assert_eq!(wal.append("t", "more").await.unwrap(), 5);
    wal.close().await.unwrap();
    // A damaged one too.
    std::fs::write(dir.path().join("LOG_ID"), b"garbage").unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(common::all_entries(&wal, "t").await.len(), 6);
    wal.close().await.unwrap();
}

#[tokio::test]
async fn a_lost_log_id_with_a_foreign_segment_is_refused_not_guessed() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for (d, tag) in [(a.path(), "A"), (b.path(), "B")] {
        let w = common::small(d).open().await.unwrap();
        w.append("t", tag).await.unwrap();
        w.close().await.unwrap();
    }
    let theirs = common::segments(b.path()).pop().unwrap();
    let planted = a.path().join("99999999999999.seg");
    std::fs::copy(&theirs, &planted).unwrap();
    std::fs::remove_file(a.path().join("LOG_ID")).unwrap();
    // Two logs' segments and nothing to say which one this is: a typed error, nothing touched.
    let err = common::small(a.path()).open().await.unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { path, position: 0, .. } if path.ends_with("LOG_ID")),
        "{err}"
    );
    assert!(planted.exists());
    // Once the foreign file is moved away, the log's own id is taken back and its data is there.
    std::fs::remove_file(&planted).unwrap();
    let wal = common::small(a.path()).open().await.unwrap();
    assert_eq!(
        common::all_entries(&wal, "t").await,
        vec![(0, b"A".to_vec())]
    );
    wal.close().await.unwrap();
}
