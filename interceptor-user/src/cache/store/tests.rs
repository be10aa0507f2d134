use std::{
    os::unix::fs::PermissionsExt,
    sync::atomic::{AtomicU32, Ordering},
};

use super::*;

const SERVER: &str = "203.0.113.10:110";
const LIMITS: Limits = Limits {
    per_user: 1000,
    total: 2000,
};

/// A fresh cache folder path under the system's temporary directory, deleted on drop.
struct Folder(PathBuf);

impl Folder {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "cache-store-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let parent = std::env::temp_dir().join(name);
        fs::create_dir_all(&parent).unwrap();
        Self(parent.join("cache"))
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.0.parent().unwrap());
    }
}

/// A read the way the daemon does it: find, read, settle.
fn get(store: &mut Store, id: UserId, uidl: &[u8], size: u64) -> Option<Vec<u8>> {
    let found = store.find(id, uidl, size)?;
    let bytes = found.read();
    store.settle(&found, bytes.is_some());
    bytes
}

fn user(name: &str) -> UserId {
    UserId::new(SERVER.parse().unwrap(), name.as_bytes())
}

fn files(root: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path.clone());
            }
            all.push(path);
        }
    }
    all
}

fn file_of(root: &Path, uidl: &[u8]) -> PathBuf {
    files(root)
        .into_iter()
        .find(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            name.starts_with(&format!("{},", hex(uidl)))
        })
        .unwrap()
}

#[test]
fn stores_reads_and_keeps_across_a_restart() {
    let folder = Folder::new();
    let mut store = Store::open(&folder.0, LIMITS).unwrap();
    let body = b"Subject: hi\r\n\r\n.dot line\r\n";
    let size = body.len() as u64;
    store.put(user("alice"), b"00000001abc", body).unwrap();
    assert_eq!(store.size_of(user("alice"), b"00000001abc"), Some(size));
    assert_eq!(
        get(&mut store, user("alice"), b"00000001abc", size).unwrap(),
        body
    );
    // Another size from the server: not this message, not served (and kept).
    assert_eq!(get(&mut store, user("alice"), b"00000001abc", 3), None);
    assert_eq!(get(&mut store, user("bob"), b"00000001abc", size), None);
    drop(store);

    let mut store = Store::open(&folder.0, LIMITS).unwrap();
    assert_eq!(
        get(&mut store, user("alice"), b"00000001abc", size).unwrap(),
        body
    );
    assert_eq!(store.stats().messages, 1);
    assert_eq!(store.stats().bytes, size);
}

#[test]
fn folders_and_files_are_private_and_never_named_from_the_network() {
    let folder = Folder::new();
    let mut store = Store::open(&folder.0, LIMITS).unwrap();
    let hostile = "../../etc/passwd\0/..";
    store.put(user(hostile), b"../x/..", b"m\r\n").unwrap();
    store.put(user("bob"), b"1", b"n\r\n").unwrap();
    for path in files(&folder.0) {
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, expected, "{path:?}");
        let name = path.strip_prefix(&folder.0).unwrap().to_str().unwrap();
        assert!(!name.contains("passwd") && !name.contains(".."), "{name}");
        assert!(!name.contains("bob"), "{name}");
    }
    let root_mode = fs::metadata(&folder.0).unwrap().permissions().mode() & 0o777;
    assert_eq!(root_mode, 0o700);
    for bad in [&b"has space"[..], &[b'a'; 71], b"", b"tab\t"] {
        assert!(matches!(
            store.put(user("bob"), bad, b"x"),
            Err(PutError::BadUidl)
        ));
    }
}

#[test]
fn a_corrupted_file_is_deleted_not_served() {
    let folder = Folder::new();
    let mut store = Store::open(&folder.0, LIMITS).unwrap();
    store.put(user("alice"), b"u1", b"hello\r\n").unwrap();
    store.put(user("alice"), b"u2", b"world\r\n").unwrap();
    let victim = file_of(&folder.0, b"u1");
    // Same size, one byte changed: only the digest tells.
    fs::write(&victim, b"hellO\r\n").unwrap();
    assert_eq!(get(&mut store, user("alice"), b"u1", 7), None);
    assert!(!victim.exists());
    assert_eq!(store.stats().corrupt, 1);
    assert_eq!(
        get(&mut store, user("alice"), b"u2", 7).unwrap(),
        b"world\r\n"
    );
    // A file gone under the store fails its check too.
    store.put(user("alice"), b"u3", b"three\r\n").unwrap();
    fs::remove_file(file_of(&folder.0, b"u3")).unwrap();
    assert_eq!(get(&mut store, user("alice"), b"u3", 7), None);
    assert_eq!(store.size_of(user("alice"), b"u3"), None);
}

#[test]
fn bounded_per_user_and_in_total_evicting_the_least_recently_used() {
    let folder = Folder::new();
    let mut store = Store::open(&folder.0, LIMITS).unwrap();
    let msg = vec![b'x'; 600];
    store.put(user("a"), b"1", &msg).unwrap();
    assert!(matches!(
        store.put(user("a"), b"2", &msg),
        Err(PutError::TooLarge)
    ));
    store.put(user("b"), b"1", &msg).unwrap();
    store.put(user("c"), b"1", &msg).unwrap();
    // a is used again: b is now the least recently used.
    assert!(get(&mut store, user("a"), b"1", 600).is_some());
    store.put(user("d"), b"1", &msg).unwrap();
    assert_eq!(store.stats().evictions, 1);
    assert_eq!(store.size_of(user("b"), b"1"), None);
    for name in ["a", "c", "d"] {
        assert_eq!(store.size_of(user(name), b"1"), Some(600), "{name}");
    }
    assert!(store.stats().bytes <= LIMITS.total);
    assert!(matches!(
        store.put(user("e"), b"1", &[b'x'; 3000]),
        Err(PutError::TooLarge)
    ));

    // A smaller total after a restart evicts down to it.
    drop(store);
    let smaller = Limits {
        per_user: 1000,
        total: 1300,
    };
    let store = Store::open(&folder.0, smaller).unwrap();
    assert_eq!(store.stats().users, 2);
    assert!(store.stats().bytes <= smaller.total);
}

#[test]
fn remove_and_drop_user_delete_the_files() {
    let folder = Folder::new();
    let mut store = Store::open(&folder.0, LIMITS).unwrap();
    store.put(user("a"), b"1", b"one\r\n").unwrap();
    store.put(user("a"), b"2", b"two\r\n").unwrap();
    store.remove(user("a"), b"1");
    assert_eq!(store.listing(user("a")), vec![(b"2".to_vec(), 5)]);
    store.drop_user(user("a"));
    assert_eq!(files(&folder.0), Vec::<PathBuf>::new());
    assert_eq!(store.stats(), StoreStats::default());
}

#[test]
fn leftovers_and_foreign_files_are_cleaned_on_open() {
    let folder = Folder::new();
    let mut store = Store::open(&folder.0, LIMITS).unwrap();
    store.put(user("a"), b"1", b"one\r\n").unwrap();
    drop(store);
    let dir = folder.0.join(user("a").folder());
    fs::write(dir.join("tmp").join("half-written"), b"ha").unwrap();
    fs::write(dir.join("new").join("not-ours"), b"x").unwrap();
    let store = Store::open(&folder.0, LIMITS).unwrap();
    assert!(!dir.join("tmp").exists());
    assert!(!dir.join("new").join("not-ours").exists());
    assert_eq!(store.listing(user("a")), vec![(b"1".to_vec(), 5)]);
}

#[test]
fn a_message_staged_on_another_thread_is_taken_in_by_a_rename_or_deleted() {
    let folder = Folder::new();
    let mut store = Store::open(&folder.0, LIMITS).unwrap();
    let stager = store.stager();
    let alice = user("alice");
    let tmp_files = |dir: &Path| fs::read_dir(dir.join("tmp")).map_or(0, |d| d.count());
    let dir = folder.0.join(alice.folder());

    let staged = std::thread::spawn(move || stager.stage(alice, b"u1", b"one\r\n").unwrap())
        .join()
        .unwrap();
    assert_eq!(
        get(&mut store, alice, b"u1", 5),
        None,
        "not before the commit"
    );
    assert_eq!(tmp_files(&dir), 1);
    store.commit(staged).unwrap();
    assert_eq!(get(&mut store, alice, b"u1", 5).unwrap(), b"one\r\n");
    assert_eq!(tmp_files(&dir), 0);

    // Replacing the user's only message keeps the folder the new copy waits in.
    let staged = store.stager().stage(alice, b"u1", b"uno\r\n").unwrap();
    store.commit(staged).unwrap();
    assert_eq!(get(&mut store, alice, b"u1", 5).unwrap(), b"uno\r\n");
    assert_eq!(store.stats().bytes, 5);

    // Dropped uncommitted (the operator thread never took it), the file goes.
    drop(store.stager().stage(alice, b"u2", b"two\r\n").unwrap());
    assert_eq!(tmp_files(&dir), 0);

    // The user's cache dropped while a message was staged: the commit fails cleanly.
    let staged = store.stager().stage(alice, b"u3", b"three\r\n").unwrap();
    store.drop_user(alice);
    assert!(matches!(store.commit(staged), Err(PutError::Io(_))));
    assert_eq!(store.stats().bytes, 0);
    assert_eq!(store.listing(alice), []);

    // Too large for the user is refused before anything is written.
    let big = vec![b'x'; LIMITS.per_user as usize + 1];
    assert!(matches!(
        store.stager().stage(alice, b"u4", &big),
        Err(PutError::TooLarge)
    ));
}
