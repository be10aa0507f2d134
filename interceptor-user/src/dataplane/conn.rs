//! The dataplane's table of intercepted connections.

use std::{collections::VecDeque, net::SocketAddr, time::Instant};

use hashbrown::HashMap;
use pop3_engine::session::ConnId;

use super::{frame::ReplyHeader, rfc5961::SeqTrack, stacks::SockRef};
use crate::upstream::UpstreamLink;

/// A client connection and what is in flight on it.
pub struct Conn {
    pub sock: SockRef,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// The engine has been told the connection is open.
    pub opened: bool,
    /// The engine has been told the client is gone.
    pub client_closed: bool,
    /// Close the client side once `to_client` is flushed.
    pub close_after_flush: bool,
    /// Bytes for the client that did not fit the TCP send buffer yet.
    pub to_client: VecDeque<u8>,
    pub upstream: Option<UpstreamLink>,
    /// Server bytes handed to the engine whose credit is not returned yet.
    pub upstream_credit_owed: usize,
    /// Since when we wait for the server to say something (sent to it, no answer yet).
    pub upstream_waiting_since: Option<Instant>,
    pub created: Instant,
    pub last_activity: Instant,
    /// Since when either side has sent FIN (or the client's FIN is waiting for the
    /// server's answer): the FIN timer runs from here, whatever else arrives.
    pub closing_since: Option<Instant>,
    /// Link-layer header and queue for every packet to this client, fixed at the SYN.
    pub reply: (ReplyHeader, usize),
    /// The sequence space, for the RFC 5961 checks.
    pub seq: SeqTrack,
    /// The client's MSS when smoltcp was told a larger one (segmentation offload, see
    /// [`super::gso`]): longer segments leave for the kernel to cut.
    pub gso_mss: Option<u16>,
}

/// Connections by id, by socket and by flow. Bounded by the caller (`max_conns`).
#[derive(Default)]
pub struct ConnTable {
    conns: HashMap<ConnId, Conn>,
    by_flow: HashMap<(SocketAddr, SocketAddr), ConnId>,
    /// Every connection once, in the order [`Self::next_round`] visits them (ids of
    /// removed ones are dropped when their turn comes).
    rounds: VecDeque<ConnId>,
    next_id: ConnId,
}

impl ConnTable {
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn by_flow(&self, client: SocketAddr, server: SocketAddr) -> Option<ConnId> {
        self.by_flow.get(&(client, server)).copied()
    }

    pub fn insert(
        &mut self,
        sock: SockRef,
        client: SocketAddr,
        server: SocketAddr,
        reply: (ReplyHeader, usize),
        now: Instant,
    ) -> ConnId {
        self.next_id += 1;
        let id = self.next_id;
        self.conns.insert(
            id,
            Conn {
                sock,
                client,
                server,
                opened: false,
                client_closed: false,
                close_after_flush: false,
                to_client: VecDeque::new(),
                upstream: None,
                upstream_credit_owed: 0,
                upstream_waiting_since: None,
                created: now,
                last_activity: now,
                closing_since: None,
                reply,
                seq: SeqTrack::default(),
                gso_mss: None,
            },
        );
        self.by_flow.insert((client, server), id);
        self.rounds.push_back(id);
        // Removed ids wait for their turn: bound them when many connections end at once.
        if self.rounds.len() > 2 * self.conns.len() + 64 {
            let conns = &self.conns;
            self.rounds.retain(|id| conns.contains_key(id));
        }
        id
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(&id)
    }

    pub fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let conn = self.conns.remove(&id)?;
        self.by_flow.remove(&(conn.client, conn.server));
        Some(conn)
    }

    pub fn ids(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// The next `n` connections in turn (every connection comes round once per
    /// `len()` visits), so that looking at all of them can be spread over many passes.
    pub fn next_round(&mut self, n: usize, mut visit: impl FnMut(ConnId)) {
        let mut visited = 0;
        for _ in 0..self.rounds.len() {
            if visited == n {
                break;
            }
            let Some(id) = self.rounds.pop_front() else {
                break;
            };
            if self.conns.contains_key(&id) {
                self.rounds.push_back(id);
                visit(id);
                visited += 1;
            }
        }
    }
}
