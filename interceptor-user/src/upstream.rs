//! Connections to the real mail servers, driven by the dataplane's own loop.
//!
//! The sockets sit in an epoll set (mio) whose descriptor the dataplane's `poll(2)` watches
//! beside its frame queues, so a server's answer is read, handed to the engine and sent
//! to the client in one pass of one thread. (On a tokio thread every relayed round trip
//! cost two cross-thread wake-ups; a POP3 check is five round trips.)
//!
//! The dataplane asks for a connection with [`Upstream::connect`] and talks to it through
//! the [`UpstreamLink`] it keeps in its connection; what happens on the connection comes
//! back as [`UpstreamEvent`]s from [`Upstream::poll`]. Reading from the server is paced by
//! credit the dataplane returns once the bytes reached the client's TCP buffer, so a fast
//! server cannot fill our memory while a slow client drains a large RETR.

use std::{
    cell::RefCell,
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    io::{self, Read, Write},
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    rc::Rc,
    time::{Duration, Instant},
};

use hashbrown::HashMap;
use mio::{Events, Interest, Poll, Registry, Token, net::TcpStream};
use pop3_engine::session::ConnId;

/// Bytes read from a server that may be on their way to a client at once.
pub const CREDIT: usize = 256 * 1024;
/// Largest single read from a server.
const READ_CHUNK: usize = 16 * 1024;
/// Readiness events taken from the kernel per call.
const EVENTS_PER_POLL: usize = 256;

/// What happened on an upstream connection.
#[derive(Debug)]
pub enum UpstreamEvent {
    Connected(ConnId),
    Data(ConnId, Vec<u8>),
    Closed(ConnId),
    Failed(ConnId),
}

/// The upstream connections of one dataplane thread.
pub struct Upstream {
    poll: Poll,
    readiness: Events,
    links: Rc<RefCell<Links>>,
}

/// The dataplane's handle on one upstream connection. Dropping it closes the connection
/// (after what was sent is written), as closing a socket would.
pub struct UpstreamLink {
    id: ConnId,
    links: Rc<RefCell<Links>>,
}

impl UpstreamLink {
    pub fn send(&self, bytes: Vec<u8>) {
        self.links.borrow_mut().send(self.id, bytes);
    }

    /// Bytes sent and not yet written to the server: the dataplane stops reading the
    /// client while this is large.
    pub fn queued(&self) -> usize {
        self.links
            .borrow()
            .open
            .get(&self.id)
            .map_or(0, |link| link.unsent.len())
    }

    /// Writes what was sent, then closes the connection; no more events come for it.
    pub fn close(&self) {
        self.links.borrow_mut().close(self.id);
    }

    /// Lets the connection read `bytes` more from the server.
    pub fn return_credit(&self, bytes: usize) {
        self.links.borrow_mut().return_credit(self.id, bytes);
    }
}

impl Drop for UpstreamLink {
    fn drop(&mut self) {
        self.close();
    }
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> io::Result<Self> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        Ok(Self {
            poll,
            readiness: Events::with_capacity(EVENTS_PER_POLL),
            links: Rc::new(RefCell::new(Links {
                registry,
                connect_timeout,
                open: HashMap::new(),
                deadlines: BinaryHeap::new(),
                resume: Vec::new(),
                events: VecDeque::new(),
                read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            })),
        })
    }

    /// Starts connecting to `server` for `conn`; `Connected` or `Failed` follows.
    pub fn connect(&self, conn: ConnId, server: SocketAddr) -> UpstreamLink {
        self.links.borrow_mut().connect(conn, server);
        UpstreamLink {
            id: conn,
            links: self.links.clone(),
        }
    }

    /// Whether [`Self::poll`] has something to report without waiting for the kernel.
    pub fn has_work(&self) -> bool {
        let links = self.links.borrow();
        !links.events.is_empty() || !links.resume.is_empty()
    }

    /// When [`Self::poll`] must run at the latest: a connect or a final flush times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.links
            .borrow()
            .deadlines
            .peek()
            .map(|Reverse((at, _, _))| *at)
    }

    /// Does the I/O that is due and appends what happened to `events`. `ready` says
    /// whether `poll(2)` found the epoll descriptor readable: only then are the kernel's
    /// readiness events fetched.
    pub fn poll(&mut self, ready: bool, now: Instant, events: &mut Vec<UpstreamEvent>) {
        let mut links = self.links.borrow_mut();
        if ready {
            match self.poll.poll(&mut self.readiness, Some(Duration::ZERO)) {
                Ok(()) => {
                    for event in self.readiness.iter() {
                        links.on_readiness(event.token().0 as ConnId, event);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => tracing::warn!(%err, "epoll_wait on the upstream sockets failed"),
            }
        }
        for id in std::mem::take(&mut links.resume) {
            links.read(id);
        }
        links.expire(now);
        events.extend(links.events.drain(..));
    }
}

impl AsFd for Upstream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the epoll descriptor lives as long as `self.poll`, which outlives the
        // borrow.
        unsafe { BorrowedFd::borrow_raw(self.poll.as_raw_fd()) }
    }
}

/// What a deadline in [`Links::deadlines`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Connecting,
    Closing,
}

struct Links {
    registry: Registry,
    connect_timeout: Duration,
    open: HashMap<ConnId, Link>,
    /// Connects and final flushes that must end by a time. Entries of links that moved
    /// on are skipped when they come up.
    deadlines: BinaryHeap<Reverse<(Instant, ConnId, Phase)>>,
    /// Links given credit back while the kernel has bytes for them: no new readiness
    /// event comes for those (edge-triggered), so they are read on the next poll.
    resume: Vec<ConnId>,
    events: VecDeque<UpstreamEvent>,
    read_buf: Box<[u8]>,
}

struct Link {
    stream: TcpStream,
    connected: bool,
    /// The dataplane let go: write what is left, then close.
    closing: bool,
    /// Sent by the engine, not yet taken by the kernel.
    unsent: VecDeque<u8>,
    credit: usize,
    /// The last read did not drain the socket (it stopped for credit).
    readable: bool,
    /// EOF or an error was reported: nothing more is read or written.
    ended: bool,
}

impl Links {
    fn connect(&mut self, id: ConnId, server: SocketAddr) {
        let registered = TcpStream::connect(server).and_then(|mut stream| {
            self.registry.register(
                &mut stream,
                Token(id as usize),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        let stream = match registered {
            Ok(stream) => stream,
            Err(err) => {
                tracing::info!(conn = id, %server, %err, "upstream connect failed");
                self.events.push_back(UpstreamEvent::Failed(id));
                return;
            }
        };
        self.deadlines.push(Reverse((
            Instant::now() + self.connect_timeout,
            id,
            Phase::Connecting,
        )));
        self.open.insert(
            id,
            Link {
                stream,
                connected: false,
                closing: false,
                unsent: VecDeque::new(),
                credit: CREDIT,
                readable: false,
                ended: false,
            },
        );
    }

    fn send(&mut self, id: ConnId, bytes: Vec<u8>) {
        let Some(link) = self.open.get_mut(&id) else {
            return;
        };
        if link.ended || link.closing {
            return;
        }
        link.unsent.extend(bytes);
        self.flush(id);
    }

    fn close(&mut self, id: ConnId) {
        let Some(link) = self.open.get_mut(&id) else {
            return;
        };
        if link.closing {
            return;
        }
        link.closing = true;
        if !link.ended && !link.unsent.is_empty() {
            // A server that stops reading (or never answers the connect) cannot keep
            // the link forever.
            self.deadlines.push(Reverse((
                Instant::now() + self.connect_timeout,
                id,
                Phase::Closing,
            )));
        } else {
            self.finish(id);
        }
    }

    fn return_credit(&mut self, id: ConnId, bytes: usize) {
        let Some(link) = self.open.get_mut(&id) else {
            return;
        };
        link.credit = (link.credit + bytes).min(CREDIT);
        if link.readable && !link.ended {
            self.resume.push(id);
        }
    }

    fn on_readiness(&mut self, id: ConnId, event: &mio::event::Event) {
        let Some(link) = self.open.get_mut(&id) else {
            return;
        };
        if !link.connected && (event.is_writable() || event.is_error()) {
            match connect_result(&link.stream) {
                Ok(true) => {
                    link.connected = true;
                    let _ = link.stream.set_nodelay(true);
                    if !link.closing {
                        self.events.push_back(UpstreamEvent::Connected(id));
                    }
                }
                // A spurious wake-up: the handshake is still running.
                Ok(false) => return,
                Err(err) => {
                    tracing::info!(conn = id, %err, "upstream connect failed");
                    self.fail(id);
                    return;
                }
            }
        }
        if event.is_writable() {
            self.flush(id);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            if let Some(link) = self.open.get_mut(&id) {
                link.readable = true;
            }
            self.read(id);
        }
    }

    /// Writes what the kernel takes; a closing link is finished once all is written.
    fn flush(&mut self, id: ConnId) {
        let Some(link) = self.open.get_mut(&id) else {
            return;
        };
        if link.ended || !link.connected {
            return;
        }
        while !link.unsent.is_empty() {
            let (front, _) = link.unsent.as_slices();
            match link.stream.write(front) {
                Ok(n) => {
                    link.unsent.drain(..n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    tracing::info!(conn = id, %err, "upstream write failed");
                    return self.fail(id);
                }
            }
        }
        if link.closing {
            self.finish(id);
        }
    }

    /// Reads while there is credit and the kernel has bytes.
    fn read(&mut self, id: ConnId) {
        let Some(link) = self.open.get_mut(&id) else {
            return;
        };
        if link.ended || link.closing || !link.connected {
            return;
        }
        while link.credit > 0 {
            let want = link.credit.min(READ_CHUNK);
            match link.stream.read(&mut self.read_buf[..want]) {
                Ok(0) => {
                    link.ended = true;
                    link.readable = false;
                    self.events.push_back(UpstreamEvent::Closed(id));
                    return;
                }
                Ok(n) => {
                    link.credit -= n;
                    self.events
                        .push_back(UpstreamEvent::Data(id, self.read_buf[..n].to_vec()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    link.readable = false;
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    tracing::info!(conn = id, %err, "upstream read failed");
                    return self.fail(id);
                }
            }
        }
    }

    /// Fails connects and final flushes that ran out of time.
    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, id, phase))) = self.deadlines.peek().copied() {
            if at > now {
                return;
            }
            self.deadlines.pop();
            let Some(link) = self.open.get(&id) else {
                continue;
            };
            match phase {
                Phase::Connecting if !link.connected => {
                    tracing::info!(conn = id, "upstream connect timed out");
                    self.fail(id);
                }
                Phase::Closing if link.closing => self.finish(id),
                _ => {}
            }
        }
    }

    /// Reports the failure unless the dataplane already let go of the link.
    fn fail(&mut self, id: ConnId) {
        let Some(link) = self.open.get_mut(&id) else {
            return;
        };
        if link.closing {
            return self.finish(id);
        }
        link.ended = true;
        link.readable = false;
        link.unsent.clear();
        let _ = self.registry.deregister(&mut link.stream);
        self.events.push_back(UpstreamEvent::Failed(id));
    }

    /// Closes the link (and forgets it). `close(2)` alone sends the FIN after what is
    /// still queued, and takes the socket out of the epoll set: the descriptor is never
    /// shared. Two syscalls fewer per relayed session than shutdown and deregister first.
    fn finish(&mut self, id: ConnId) {
        drop(self.open.remove(&id));
        // Events of this link not yet taken are no one's any more.
        self.events.retain(|event| event_conn(event) != id);
    }
}

/// `Ok(true)` once a non-blocking connect completed, `Ok(false)` while it is running.
fn connect_result(stream: &TcpStream) -> io::Result<bool> {
    if let Some(err) = stream.take_error()? {
        return Err(err);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(err) => Err(err),
    }
}

fn event_conn(event: &UpstreamEvent) -> ConnId {
    match event {
        UpstreamEvent::Connected(id)
        | UpstreamEvent::Data(id, _)
        | UpstreamEvent::Closed(id)
        | UpstreamEvent::Failed(id) => *id,
    }
}

#[cfg(test)]
mod tests;
