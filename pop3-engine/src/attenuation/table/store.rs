//! Where the user table's entries live: slots in fixed-size chunks, addressed by `u32`
//! and linked in the order they expire (the patent's timer list).
//!
//! A chunk is allocated when the slots in use fill the last one, and freed slots are
//! reused: the table never copies every entry to grow, and never holds more than one
//! chunk of unused slots. The expiry order is a doubly linked list through the slots,
//! 8 bytes an entry: every expiry is "last use + the table's lifetime", so a touched
//! entry goes to the newest end, and the walk back from there that keeps the list in
//! order takes no step unless the clock passed in stepped back.

use super::{Entry, UserKey};

/// Slots per chunk, at most: 640 KB of 160-byte slots.
const CHUNK: usize = 4096;
/// No slot: the end of the expiry list.
const NIL: u32 = u32::MAX;

/// An entry with its key and its place in the expiry order.
#[derive(Debug)]
pub(super) struct Node {
    pub key: UserKey,
    pub entry: Entry,
    /// The neighbours expiring before and after this one.
    sooner: u32,
    later: u32,
}

/// The slots, their free list and the expiry order.
#[derive(Debug)]
pub(super) struct Store {
    pub(super) chunks: Vec<Box<[Option<Node>]>>,
    /// Slots per chunk: [`CHUNK`], or the table's capacity when smaller.
    chunk_len: usize,
    /// Slots freed since they were first used, reused first.
    free: Vec<u32>,
    /// Slots ever used (the free ones included): the next new slot.
    used: u32,
    /// The ends of the expiry list.
    soonest: u32,
    latest: u32,
}

impl Store {
    /// A store for at most `capacity` entries (`u32::MAX - 1` at most: the indices are
    /// `u32`, and one is [`NIL`]).
    pub fn new(capacity: usize) -> Self {
        Self {
            chunks: Vec::new(),
            chunk_len: capacity.clamp(1, CHUNK),
            free: Vec::new(),
            used: 0,
            soonest: NIL,
            latest: NIL,
        }
    }

    /// The node in slot `i`. Panics for a free slot: indices come from this store.
    pub fn node(&self, i: u32) -> &Node {
        self.slot(i).as_ref().expect("an index of an entry")
    }

    /// The node in slot `i`, to change; its expiry is changed with [`Store::set_expiry`].
    pub fn node_mut(&mut self, i: u32) -> &mut Node {
        self.slot_mut(i).as_mut().expect("an index of an entry")
    }

    /// Stores `entry` under `key` in the expiry order and returns its slot.
    pub fn insert(&mut self, key: UserKey, entry: Entry) -> u32 {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                assert!(self.used < NIL, "at most u32::MAX - 1 entries");
                if self.used as usize == self.chunks.len() * self.chunk_len {
                    self.chunks.push(
                        std::iter::repeat_with(|| None)
                            .take(self.chunk_len)
                            .collect(),
                    );
                }
                self.used += 1;
                self.used - 1
            }
        };
        *self.slot_mut(i) = Some(Node {
            key,
            entry,
            sooner: NIL,
            later: NIL,
        });
        self.link(i);
        i
    }

    /// Takes the node out of slot `i`, which becomes free.
    pub fn remove(&mut self, i: u32) -> Node {
        self.unlink(i);
        self.free.push(i);
        self.slot_mut(i).take().expect("an index of an entry")
    }

    /// Sets the expiry of slot `i` and moves it to its place in the order.
    pub fn set_expiry(&mut self, i: u32, expires: super::Stamp) {
        self.unlink(i);
        self.node_mut(i).entry.expires = expires;
        self.link(i);
    }

    /// The slots in expiry order, soonest first.
    pub fn by_expiry(&self) -> impl Iterator<Item = (u32, &Node)> {
        let some = |i: u32| (i != NIL).then_some(i);
        std::iter::successors(some(self.soonest), move |&i| some(self.node(i).later))
            .map(|i| (i, self.node(i)))
    }

    /// Every node, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Node> {
        self.chunks.iter().flat_map(|c| c.iter().flatten())
    }

    fn slot(&self, i: u32) -> &Option<Node> {
        let i = i as usize;
        &self.chunks[i / self.chunk_len][i % self.chunk_len]
    }

    fn slot_mut(&mut self, i: u32) -> &mut Option<Node> {
        let i = i as usize;
        &mut self.chunks[i / self.chunk_len][i % self.chunk_len]
    }

    /// Puts an unlinked slot after the last one that expires no later (entries that
    /// expire together stay in the order they were touched).
    fn link(&mut self, i: u32) {
        let expires = self.node(i).entry.expires;
        let mut sooner = self.latest;
        while sooner != NIL && self.node(sooner).entry.expires > expires {
            sooner = self.node(sooner).sooner;
        }
        let later = match sooner {
            NIL => std::mem::replace(&mut self.soonest, i),
            s => std::mem::replace(&mut self.node_mut(s).later, i),
        };
        match later {
            NIL => self.latest = i,
            l => self.node_mut(l).sooner = i,
        }
        let node = self.node_mut(i);
        (node.sooner, node.later) = (sooner, later);
    }

    fn unlink(&mut self, i: u32) {
        let Node { sooner, later, .. } = *self.node(i);
        match sooner {
            NIL => self.soonest = later,
            s => self.node_mut(s).later = later,
        }
        match later {
            NIL => self.latest = sooner,
            l => self.node_mut(l).sooner = sooner,
        }
    }
}
