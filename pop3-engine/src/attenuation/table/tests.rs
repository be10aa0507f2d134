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
    assert_eq!(table.store.by_expiry().count(), 0);
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
fn entry_and_key_sizes_match_the_docs() {
    assert_eq!(std::mem::size_of::<Entry>(), 96);
    assert_eq!(std::mem::size_of::<UserKey>(), 56);
    assert_eq!(std::mem::size_of::<store::Node>(), 160);
}

#[test]
fn slots_keep_the_expiry_order_across_chunks_reuse_and_a_clock_that_steps_back() {
    let t0 = Instant::now();
    let lifetime = Duration::from_secs(60);
    // Capacity 3: chunks of three slots, so ten users span four chunks.
    let mut table = UserTable::new(3, lifetime, 1 << 20, t0);
    table.capacity = 10;
    let at = |s: u64| t0 + Duration::from_secs(s);
    let keys: Vec<_> = (0..10)
        .map(|n| table.entry(key(&n.to_string()), at(n), verifier()).unwrap())
        .collect();
    // Touched at 5 s, then with a clock 3 s behind: each lands in its place, after
    // the entries that expire at the same time.
    table.update(&keys[0], at(5), |_| ());
    table.update(&keys[9], at(2), |_| ());
    let order = |table: &UserTable| -> Vec<String> {
        let by_expiry: Vec<_> = table
            .store
            .by_expiry()
            .map(|(_, n)| (n.entry.expires, n.key.user.to_string()))
            .collect();
        assert!(by_expiry.is_sorted_by_key(|(t, _)| *t));
        by_expiry.into_iter().map(|(_, u)| u).collect()
    };
    assert_eq!(
        order(&table),
        ["1", "2", "9", "3", "4", "5", "0", "6", "7", "8"]
    );
    assert_eq!(table.collect(at(62)), 3, "1, 2 and 9 expire by 62 s");
    assert_eq!(table.take_removed().len(), 3);
    // The three freed slots are used again before a new chunk.
    let chunks = table.store.chunks.len();
    for n in 10..13 {
        table
            .entry(key(&n.to_string()), at(70), verifier())
            .unwrap();
    }
    assert_eq!(table.store.chunks.len(), chunks);
    assert_eq!(
        order(&table),
        ["3", "4", "5", "0", "6", "7", "8", "10", "11", "12"]
    );
    for n in 0..13 {
        assert_eq!(
            table.get(&key(&n.to_string())).is_some(),
            ![1, 2, 9].contains(&n)
        );
    }
}
