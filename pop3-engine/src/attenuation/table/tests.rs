use super::*;

fn verifier() -> Verifier {
    super::super::Salt::new([1, 2, 3, 4]).verifier("203.0.113.5:110".parse().unwrap(), b"u", b"p")
}

fn key(user: &str) -> UserKey {
    UserKey {
        server: "203.0.113.5:110".parse().unwrap(),
        user: user.into(),
    }
}

#[test]
fn collects_only_expired_entries_not_in_session() {
    let t0 = Instant::now();
    let mut table = UserTable::new(10, Duration::from_secs(60), 1 << 20, t0);
    let a = table.entry(key("a"), t0, verifier()).unwrap();
    let b = table
        .entry(key("b"), t0 + Duration::from_secs(30), verifier())
        .unwrap();
    table.update(&a, t0, |e| e.sessions = 1);
    assert_eq!(
        table.collect(t0 + Duration::from_secs(61)),
        0,
        "a is in session"
    );
    table.update(&a, t0 + Duration::from_secs(61), |e| e.sessions = 0);
    assert_eq!(table.collect(t0 + Duration::from_secs(91)), 1);
    assert!(table.get(&b).is_none());
    assert!(table.get(&a).is_some());
    assert_eq!(table.collect(t0 + Duration::from_secs(121)), 1);
    assert!(table.is_empty());
    assert!(table.timers.is_empty());
}

#[test]
fn a_full_table_evicts_the_oldest_entry_not_in_session() {
    let t0 = Instant::now();
    let mut table = UserTable::new(2, Duration::from_secs(60), 1 << 20, t0);
    let a = table.entry(key("a"), t0, verifier()).unwrap();
    table.update(&a, t0, |e| e.sessions = 1);
    table
        .entry(key("b"), t0 + Duration::from_secs(1), verifier())
        .unwrap();
    table
        .entry(key("c"), t0 + Duration::from_secs(2), verifier())
        .unwrap();
    assert_eq!(table.len(), 2);
    assert!(table.get(&key("b")).is_none());
    let c = Arc::new(key("c"));
    table.update(&c, t0, |e| e.sessions = 1);
    assert!(
        table.entry(key("d"), t0, verifier()).is_none(),
        "all in session: no room"
    );
}

#[test]
fn usernames_behave_like_bytes_inline_or_boxed() {
    use std::hash::BuildHasher;
    let hasher = std::hash::RandomState::new();
    for s in [
        "",
        "a",
        "alice",
        "x".repeat(22).as_str(),
        "y".repeat(23).as_str(),
    ] {
        let n = UserName::from(s);
        assert_eq!(&*n, s.as_bytes());
        assert_eq!(format!("{n:?} {n}"), format!("{s:?} {s}"));
        assert_eq!(hasher.hash_one(&n), hasher.hash_one(s.as_bytes()));
    }
    // Not text: kept exactly, printed escaped, never equal to a lossy look-alike.
    let raw = UserName::from(&b"\xe9\x1b[2J\\"[..]);
    assert_eq!(raw.to_string(), "\\xe9\\x1b[2J\\\\");
    assert_ne!(raw, UserName::from("\u{fffd}\u{1b}[2J\\"));
    let (short, long) = (UserName::from("b"), UserName::from("a".repeat(30).as_str()));
    assert_eq!(short.cmp(&long), "b".cmp(&"a".repeat(30)));
    assert!(matches!(
        UserName::from("x".repeat(22).as_str()).0,
        Name::Inline { .. }
    ));
    assert!(matches!(
        UserName::from("x".repeat(23).as_str()).0,
        Name::Boxed(_)
    ));
}

#[test]
fn entry_and_key_sizes_match_the_docs() {
    assert_eq!(std::mem::size_of::<Entry>(), 96);
    assert_eq!(std::mem::size_of::<UserKey>(), 56);
}
