//! Flows spread over many small smoltcp interfaces.
//!
//! smoltcp scans an interface's whole socket set for every packet it takes in, every
//! egress pass and every timer query, so one interface holding ten thousand connections
//! makes each packet cost ten thousand steps. Here each flow belongs, by a keyed hash of
//! `(client, server)`, to one of a fixed number of [`Stack`]s sized for
//! [`CONNS_PER_STACK`] connections each; a packet touches only its own stack, and only
//! the stacks touched since their last pass (or whose timers are due) are polled.
//! The hash key is random per process, so subscribers cannot aim their flows at one
//! stack.

use std::{hash::BuildHasher, net::SocketAddr};

use smoltcp::{
    iface::SocketHandle,
    socket::tcp,
    time::{Duration, Instant},
};

use super::stack::{BufferPool, Stack};

/// Connections one interface is sized for: a packet's scan stays this short on average.
pub const CONNS_PER_STACK: usize = 64;

/// A socket: its stack and its handle there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRef {
    stack: usize,
    handle: SocketHandle,
}

/// One stack and what is known about its timers.
struct Slot {
    stack: Stack,
    /// Touched (a packet in, a socket used) since its last egress pass.
    touched: bool,
    /// When its timers (retransmission, delayed ACK, keep-alive) are due next, as of its
    /// last egress pass; `None` when nothing is pending.
    due: Option<Instant>,
}

/// The interfaces of one dataplane.
pub struct Stacks {
    slots: Vec<Slot>,
    hasher: hashbrown::DefaultHashBuilder,
    buffers: BufferPool,
}

impl Stacks {
    /// Enough stacks for `max_conns` connections, each seeded from `seed()` (initial
    /// sequence numbers come from these seeds).
    pub fn new<E>(
        max_conns: usize,
        mtu: usize,
        now: Instant,
        mut seed: impl FnMut() -> Result<u64, E>,
    ) -> Result<Self, E> {
        let count = max_conns.div_ceil(CONNS_PER_STACK).max(1);
        let slots = (0..count)
            .map(|_| {
                Ok(Slot {
                    stack: Stack::new(mtu, seed()?, now),
                    touched: false,
                    due: None,
                })
            })
            .collect::<Result<_, E>>()?;
        Ok(Self {
            slots,
            hasher: Default::default(),
            buffers: BufferPool::default(),
        })
    }

    fn index(&self, client: SocketAddr, server: SocketAddr) -> usize {
        (self.hasher.hash_one((client, server)) % self.slots.len() as u64) as usize
    }

    fn slot(&mut self, index: usize) -> &mut Slot {
        let slot = &mut self.slots[index];
        slot.touched = true;
        slot
    }

    /// Adds a socket listening on exactly `server` in the flow's stack, for the SYN about
    /// to be processed.
    pub fn listen(&mut self, client: SocketAddr, server: SocketAddr) -> SockRef {
        let stack = self.index(client, server);
        self.slots[stack].touched = true;
        let handle = self.slots[stack].stack.listen(server, &mut self.buffers);
        SockRef { stack, handle }
    }

    /// Processes one IP packet of the flow `(client, server)`.
    pub fn ingress(
        &mut self,
        now: Instant,
        client: SocketAddr,
        server: SocketAddr,
        ip_packet: &[u8],
    ) {
        let index = self.index(client, server);
        self.slot(index).stack.ingress(now, ip_packet);
    }

    /// The socket, to change it: its stack is polled on the next egress pass.
    pub fn socket(&mut self, sock: SockRef) -> &mut tcp::Socket<'static> {
        self.slot(sock.stack).stack.socket(sock.handle)
    }

    /// The socket, to look at its state: no egress pass for this.
    pub fn peek(&self, sock: SockRef) -> &tcp::Socket<'static> {
        self.slots[sock.stack].stack.peek(sock.handle)
    }

    pub fn remove(&mut self, sock: SockRef) {
        self.slots[sock.stack].touched = true;
        self.slots[sock.stack]
            .stack
            .remove(sock.handle, &mut self.buffers);
    }

    /// Lets the stacks that were touched, or whose timers are due, send what their
    /// sockets have queued; hands every packet to `send`, in order per stack.
    pub fn egress(&mut self, now: Instant, mut send: impl FnMut(&mut [u8])) {
        for slot in &mut self.slots {
            if !(slot.touched || slot.due.is_some_and(|due| due <= now)) {
                continue;
            }
            slot.stack.egress(now);
            slot.stack.drain_tx(&mut send);
            slot.touched = false;
            slot.due = slot.stack.poll_delay(now).map(|delay| now + delay);
        }
    }

    /// How long until some stack must be polled: zero when one was touched since its
    /// last pass.
    pub fn poll_delay(&self, now: Instant) -> Option<Duration> {
        self.slots
            .iter()
            .filter_map(|slot| {
                if slot.touched {
                    Some(Duration::ZERO)
                } else {
                    slot.due.map(|due| due - now.min(due))
                }
            })
            .min()
    }
}
