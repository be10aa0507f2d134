//! The contract between the dataplane and the POP3 logic.
//!
//! The dataplane terminates TCP and owns sockets; the POP3 side ([`Pop3Engine`]) owns
//! every decision. They meet here, sans-IO in the style of quinn-proto: the dataplane
//! feeds [`Event`]s with the current time and carries out the [`Action`]s that come back.
//! No socket, clock or thread appears on the engine side, so every transition can be
//! unit-tested with a fake clock.

use std::{net::SocketAddr, time::Instant};

/// Identifies one intercepted client connection for its whole life.
pub type ConnId = u64;

/// What the engine knows about a connection when it opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The subscriber's address and port, as seen on the wire.
    pub client: SocketAddr,
    /// The address and port the client dialled: the real mail server.
    pub server: SocketAddr,
}

/// Something that happened to a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Bytes from the client, in order.
    ClientData(&'a [u8]),
    /// The client closed or reset its side; the connection is gone for the client.
    ClientClosed,
    /// The upstream TCP connection asked for with [`Action::ConnectUpstream`] is up.
    UpstreamConnected,
    /// Bytes from the mail server, in order.
    UpstreamData(&'a [u8]),
    /// The mail server closed its side.
    UpstreamClosed,
    /// The upstream connection could not be made (refused, unreachable, timed out) or broke.
    UpstreamFailed,
    /// The answer to [`Action::CacheRead`]: the cached message, or `None` when the
    /// edge holds no sound copy with that UIDL and size.
    Cached(Option<&'a [u8]>),
}

/// Something the engine wants done for a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes to the client.
    ToClient(Vec<u8>),
    /// Open a TCP connection to the connection's [`ConnInfo::server`].
    ConnectUpstream,
    /// Send these bytes to the mail server (after `ConnectUpstream`).
    ToUpstream(Vec<u8>),
    /// Close the upstream connection (after flushing what was sent).
    CloseUpstream,
    /// Close the client connection (after flushing what was sent).
    CloseClient,
    /// Look up the edge's copy of `user`'s message `uidl` of `size` bytes at the
    /// connection's server; answer with [`Event::Cached`].
    CacheRead {
        /// The username as the client sent it.
        user: Vec<u8>,
        /// The message's unique-id, as the server gave it in this session.
        uidl: Vec<u8>,
        /// The message's size, as the server gave it in this session.
        size: u64,
    },
    /// The server committed these deletions: forget the edge's copies (`None`: all of
    /// `user`'s cache).
    CacheForget {
        /// The username as the client sent it.
        user: Vec<u8>,
        /// The unique-ids of the deleted messages.
        uidls: Option<Vec<Vec<u8>>>,
    },
}

/// An action addressed to one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// The connection the action is for.
    pub conn: ConnId,
    /// What to do.
    pub action: Action,
}

/// The POP3 side of the interceptor, driven by the dataplane.
///
/// Implementations keep per-connection state keyed by [`ConnId`] and any state shared
/// across connections (the attenuation engine's user table). Actions are appended to
/// `out` in the order they must be carried out.
pub trait Pop3Engine {
    /// A client connection was accepted.
    fn open(&mut self, conn: ConnId, info: ConnInfo, now: Instant, out: &mut Vec<Output>);

    /// Something happened on `conn`. Events for unknown or finished connections are ignored.
    fn handle(&mut self, conn: ConnId, event: Event<'_>, now: Instant, out: &mut Vec<Output>);

    /// The connection's resources were released by the dataplane; forget it.
    fn close(&mut self, conn: ConnId, now: Instant);

    /// The earliest time [`Pop3Engine::on_timeout`] must run, if any.
    fn next_timeout(&self) -> Option<Instant>;

    /// Run the timers that are due at `now` (autologout, table expiry, garbage collection).
    fn on_timeout(&mut self, now: Instant, out: &mut Vec<Output>);
}
