//! The edge's copy of users' mail on disk: one Maildir per (mail server, user).
//!
//! Maildir is the mail world's crash-safe format: a message is written whole into
//! `tmp/`, synced, then renamed into `new/`, so a crash leaves either nothing or a
//! complete file. Usernames and UIDLs come from the network and are never used as
//! path components: a user's folder is named by a SHA-256 of (server, username), so no
//! username is written to disk at all, and a message's file name carries its UIDL
//! hex-encoded, its size and a SHA-256 of its bytes. A read checks the file against the
//! UIDL and size the server lists now and against that digest; a file that fails is
//! deleted, never served. The store is bounded per user and in total; the least
//! recently used users are evicted first, and a folder's modification time carries
//! that order across a restart.
//!
//! A message is kept as the server's RETR body with dot-stuffing removed (CRLF line
//! ends, as POP3 sizes count them), so its length is the size LIST reports.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Write},
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::SystemTime,
};

use ring::digest::{SHA256, digest};

/// RFC 1939: a unique-id is 1 to 70 characters in 0x21..=0x7E.
const MAX_UIDL: usize = 70;

/// How much the store may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of mail kept for one user.
    pub per_user: u64,
    /// Most bytes of mail kept in all.
    pub total: u64,
}

/// One (mail server, user): the SHA-256 of both, which also names the user's folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UserId([u8; 32]);

impl UserId {
    /// The id of `user` (the username exactly as the client sent it) at `server`.
    pub fn new(server: SocketAddr, user: &[u8]) -> Self {
        let mut input = server.to_string().into_bytes();
        input.push(0);
        input.extend_from_slice(user);
        let mut id = [0; 32];
        id.copy_from_slice(digest(&SHA256, &input).as_ref());
        Self(id)
    }

    fn folder(&self) -> String {
        hex(&self.0)
    }

    fn from_folder(name: &str) -> Option<Self> {
        let bytes = unhex(name)?;
        Some(Self(bytes.try_into().ok()?))
    }
}

/// Why a message was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("the UIDL is not 1 to 70 printable characters")]
    BadUidl,
    #[error("the message does not fit in the cache's limits")]
    TooLarge,
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Message {
    size: u64,
    digest: [u8; 32],
}

impl Message {
    fn file_name(&self, uidl: &[u8]) -> String {
        format!("{},S={},H={}", hex(uidl), self.size, hex(&self.digest))
    }

    fn parse(name: &str) -> Option<(Vec<u8>, Self)> {
        let mut parts = name.split(',');
        let uidl = unhex(parts.next()?).filter(|uidl| valid_uidl(uidl))?;
        let size = parts.next()?.strip_prefix("S=")?.parse().ok()?;
        let digest = unhex(parts.next()?.strip_prefix("H=")?)?.try_into().ok()?;
        parts
            .next()
            .is_none()
            .then_some((uidl, Self { size, digest }))
    }
}

#[derive(Debug, Default)]
struct UserCache {
    messages: BTreeMap<Vec<u8>, Message>,
    bytes: u64,
    last_used: u64,
}

/// What the store holds and what it threw away, for the operator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub users: usize,
    pub messages: usize,
    pub bytes: u64,
    /// Users evicted to make room.
    pub evictions: u64,
    /// Messages whose file failed its check on read (and were deleted).
    pub corrupt: u64,
}

/// A copy [`Store::find`] found, to be read without holding the store.
#[derive(Debug)]
pub struct Found {
    id: UserId,
    uidl: Vec<u8>,
    path: PathBuf,
    message: Message,
}

impl Found {
    /// The file's bytes, if they are exactly what was stored (length and digest).
    pub fn read(&self) -> Option<Vec<u8>> {
        let bytes = fs::read(&self.path).ok()?;
        let sound = bytes.len() as u64 == self.message.size
            && digest(&SHA256, &bytes).as_ref() == self.message.digest;
        sound.then_some(bytes)
    }
}

/// Writes messages into a store's folder (into a user's `tmp/`, synced) on a thread
/// other than the one that owns the [`Store`], so the slow part of a write never runs
/// there; [`Store::commit`] renames them into place.
#[derive(Clone, Debug)]
pub struct Stager {
    root: PathBuf,
    limits: Limits,
}

/// A message written and synced into its user's `tmp/`, waiting for
/// [`Store::commit`]. Dropped uncommitted, its file is deleted.
#[derive(Debug)]
pub struct Staged {
    id: UserId,
    uidl: Vec<u8>,
    entry: Message,
    tmp: Option<PathBuf>,
}

impl Staged {
    /// Whose message it is.
    pub fn user(&self) -> UserId {
        self.id
    }

    /// The message's size in bytes.
    pub fn size(&self) -> u64 {
        self.entry.size
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

impl Stager {
    /// Writes `message` (the RETR body, dot-stuffing removed) for `uidl` of `id`
    /// into the user's `tmp/` and syncs it.
    pub fn stage(&self, id: UserId, uidl: &[u8], message: &[u8]) -> Result<Staged, PutError> {
        if !valid_uidl(uidl) {
            return Err(PutError::BadUidl);
        }
        let size = message.len() as u64;
        if size > self.limits.per_user || size > self.limits.total {
            return Err(PutError::TooLarge);
        }
        let mut sum = [0; 32];
        sum.copy_from_slice(digest(&SHA256, message).as_ref());
        let entry = Message { size, digest: sum };
        let dir = self.root.join(id.folder());
        private_dir(&dir)?;
        private_dir(&dir.join("tmp"))?;
        let tmp = dir.join("tmp").join(entry.file_name(uidl));
        let staged = Staged {
            id,
            uidl: uidl.to_vec(),
            entry,
            tmp: Some(tmp.clone()),
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(message)?;
        file.sync_all()?;
        Ok(staged)
    }
}

/// The cache folder and what is in it.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    limits: Limits,
    users: HashMap<UserId, UserCache>,
    bytes: u64,
    /// Logical clock of uses, for the LRU order.
    clock: u64,
    evictions: u64,
    corrupt: u64,
}

impl Store {
    /// Opens (or creates, 0700) the cache folder and indexes what a previous run left:
    /// unfinished writes in `tmp/` and files whose names this store did not write are
    /// deleted; the limits are enforced on what remains.
    pub fn open(root: &Path, limits: Limits) -> io::Result<Self> {
        private_dir(root)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(root)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(UserId::from_folder) else {
                continue;
            };
            let modified = entry
                .metadata()?
                .modified()
                .unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((modified, id));
        }
        found.sort_by_key(|(modified, _)| *modified);
        let mut store = Self {
            root: root.to_path_buf(),
            limits,
            users: HashMap::new(),
            bytes: 0,
            clock: 0,
            evictions: 0,
            corrupt: 0,
        };
        for (_, id) in found {
            store.load_user(id)?;
        }
        while store.bytes > limits.total {
            store.evict_oldest(None);
        }
        Ok(store)
    }

    fn load_user(&mut self, id: UserId) -> io::Result<()> {
        let dir = self.root.join(id.folder());
        let _ = fs::remove_dir_all(dir.join("tmp"));
        self.clock += 1;
        let mut user = UserCache {
            last_used: self.clock,
            ..UserCache::default()
        };
        if let Ok(files) = fs::read_dir(dir.join("new")) {
            for file in files {
                let file = file?;
                let parsed = file.file_name().to_str().and_then(Message::parse);
                match parsed {
                    Some((uidl, message)) if user.bytes + message.size <= self.limits.per_user => {
                        user.bytes += message.size;
                        user.messages.insert(uidl, message);
                    }
                    _ => fs::remove_file(file.path())?,
                }
            }
        }
        if user.messages.is_empty() {
            return fs::remove_dir_all(&dir);
        }
        self.bytes += user.bytes;
        self.users.insert(id, user);
        Ok(())
    }

    /// Stores `message` (the RETR body, dot-stuffing removed) as `uidl` of `id`,
    /// replacing a copy under the same UIDL. Other users are evicted, least recently
    /// used first, to make room in the total.
    pub fn put(&mut self, id: UserId, uidl: &[u8], message: &[u8]) -> Result<(), PutError> {
        let staged = self.stager().stage(id, uidl, message)?;
        self.commit(staged)
    }

    /// How much the store may hold.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A handle that writes messages into this store's folder from another thread;
    /// [`Store::commit`] then takes them in.
    pub fn stager(&self) -> Stager {
        Stager {
            root: self.root.clone(),
            limits: self.limits,
        }
    }

    /// Takes a staged message in: renames it from `tmp/` into `new/` (a metadata
    /// operation, no data is written), replacing a copy under the same UIDL and
    /// evicting other users, least recently used first, to make room in the total.
    pub fn commit(&mut self, mut staged: Staged) -> Result<(), PutError> {
        let (id, size) = (staged.id, staged.entry.size);
        self.unindex(id, &staged.uidl);
        let held = self.users.get(&id).map_or(0, |user| user.bytes);
        if held + size > self.limits.per_user {
            return Err(PutError::TooLarge);
        }
        while self.bytes + size > self.limits.total {
            if !self.users.keys().any(|other| *other != id) {
                return Err(PutError::TooLarge);
            }
            self.evict_oldest(Some(id));
        }
        let dir = self.root.join(id.folder());
        private_dir(&dir.join("new"))?;
        private_dir(&dir.join("cur"))?;
        let name = staged.entry.file_name(&staged.uidl);
        let tmp = staged.tmp.take().expect("a staged message has its file");
        if let Err(err) = fs::rename(&tmp, dir.join("new").join(&name)) {
            let _ = fs::remove_file(tmp);
            return Err(err.into());
        }
        self.clock += 1;
        let user = self.users.entry(id).or_default();
        user.last_used = self.clock;
        user.bytes += size;
        user.messages
            .insert(std::mem::take(&mut staged.uidl), staged.entry.clone());
        self.bytes += size;
        touch(&dir);
        Ok(())
    }

    /// The cached message `uidl` of `id`, if it was stored with the server's `size`:
    /// what to read (with [`Found::read`], no store needed) and then [`Store::settle`].
    pub fn find(&self, id: UserId, uidl: &[u8], size: u64) -> Option<Found> {
        let message = self.users.get(&id)?.messages.get(uidl)?.clone();
        let path = self
            .root
            .join(id.folder())
            .join("new")
            .join(message.file_name(uidl));
        (message.size == size).then(|| Found {
            id,
            uidl: uidl.to_vec(),
            path,
            message,
        })
    }

    /// What reading `found` showed: a sound copy counts as a use (the LRU order); a
    /// failed one is deleted, unless the copy was replaced meanwhile.
    pub fn settle(&mut self, found: &Found, sound: bool) {
        let Found { id, uidl, .. } = found;
        let current = self.users.get(id).and_then(|user| user.messages.get(uidl));
        if current != Some(&found.message) {
            return;
        }
        if !sound {
            self.corrupt += 1;
            return self.remove(*id, uidl);
        }
        self.clock += 1;
        if let Some(user) = self.users.get_mut(id) {
            user.last_used = self.clock;
        }
        touch(&self.root.join(id.folder()));
    }

    /// The size `uidl` of `id` was cached with, if it is (no file is read).
    pub fn size_of(&self, id: UserId, uidl: &[u8]) -> Option<u64> {
        let user = self.users.get(&id)?;
        user.messages.get(uidl).map(|message| message.size)
    }

    /// The UIDLs and sizes cached for `id`.
    pub fn listing(&self, id: UserId) -> Vec<(Vec<u8>, u64)> {
        self.users.get(&id).map_or_else(Vec::new, |user| {
            let messages = user.messages.iter();
            messages.map(|(uidl, m)| (uidl.clone(), m.size)).collect()
        })
    }

    /// Messages and bytes cached for `id`.
    pub fn usage(&self, id: UserId) -> (usize, u64) {
        self.users
            .get(&id)
            .map_or((0, 0), |user| (user.messages.len(), user.bytes))
    }

    /// Forgets and deletes message `uidl` of `id`.
    pub fn remove(&mut self, id: UserId, uidl: &[u8]) {
        self.unindex(id, uidl);
        if self
            .users
            .get(&id)
            .is_some_and(|user| user.messages.is_empty())
        {
            self.users.remove(&id);
            let _ = fs::remove_dir_all(self.root.join(id.folder()));
        }
    }

    /// Forgets and deletes message `uidl` of `id`, keeping the user's folder (a
    /// staged message may be waiting in its `tmp/`).
    fn unindex(&mut self, id: UserId, uidl: &[u8]) {
        let Some(user) = self.users.get_mut(&id) else {
            return;
        };
        let Some(message) = user.messages.remove(uidl) else {
            return;
        };
        user.bytes -= message.size;
        self.bytes -= message.size;
        let dir = self.root.join(id.folder());
        let _ = fs::remove_file(dir.join("new").join(message.file_name(uidl)));
    }

    /// Forgets and deletes everything cached for `id` (its copy is out of sync).
    pub fn drop_user(&mut self, id: UserId) {
        if let Some(user) = self.users.remove(&id) {
            self.bytes -= user.bytes;
            let _ = fs::remove_dir_all(self.root.join(id.folder()));
        }
    }

    /// Evicts the least recently used user other than `keep`.
    fn evict_oldest(&mut self, keep: Option<UserId>) {
        let oldest = self
            .users
            .iter()
            .filter(|(id, _)| Some(**id) != keep)
            .min_by_key(|(_, user)| user.last_used)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.drop_user(id);
            self.evictions += 1;
        }
    }

    /// What the store holds now and has thrown away so far.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            users: self.users.len(),
            messages: self.users.values().map(|user| user.messages.len()).sum(),
            bytes: self.bytes,
            evictions: self.evictions,
            corrupt: self.corrupt,
        }
    }
}

fn valid_uidl(uidl: &[u8]) -> bool {
    (1..=MAX_UIDL).contains(&uidl.len()) && uidl.iter().all(|b| (0x21..=0x7e).contains(b))
}

fn private_dir(path: &Path) -> io::Result<()> {
    match DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Marks a user's folder used now: its modification time is the LRU order after a
/// restart. Best effort: a failure only makes the order after a restart less exact.
fn touch(dir: &Path) {
    if let Ok(file) = File::open(dir) {
        let _ = file.set_modified(SystemTime::now());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2)
        || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests;
