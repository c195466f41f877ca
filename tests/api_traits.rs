//! The trait bounds API.md promises, checked at compile time (and so by this test running).

use walrus_async::{Entry, Error, FsyncSchedule, IoBackend, ReadConsistency, Stats, Walrus};

fn handle<T: Clone + Send + Sync + 'static>() {}
fn value<T: Clone + std::fmt::Debug + PartialEq + Eq>() {}
fn flag<T: Clone + Copy + std::fmt::Debug + PartialEq + Eq>() {}
fn error<T: std::error::Error + Send + Sync + 'static + Into<std::io::Error>>() {}

#[test]
fn public_types_have_the_promised_traits() {
    handle::<Walrus>();
    value::<Entry>();
    flag::<ReadConsistency>();
    flag::<FsyncSchedule>();
    flag::<IoBackend>();
    error::<Error>();
    let s = Stats::default();
    let _ = format!("{:?}", s.clone());
    assert_eq!(ReadConsistency::default(), ReadConsistency::StrictlyAtOnce);
    assert_eq!(FsyncSchedule::default(), FsyncSchedule::Milliseconds(200));
    assert_eq!(IoBackend::default(), IoBackend::Auto);
}
