//! Connections to the real mail servers: the only async edge of the daemon.
//!
//! The dataplane thread asks for a connection with [`Upstream::connect`] and talks to it
//! through an [`UpstreamLink`]; what happens on the connection comes back as
//! [`UpstreamEvent`]s on a channel, with an eventfd poke so the dataplane's `poll(2)`
//! wakes up. Reading from the server is paced by credit the dataplane returns once the
//! bytes reached the client's TCP buffer, so a fast server cannot fill our memory while a
//! slow client drains a large RETR.
//!
//! The runtime's blocking threads also read the edge cache's files
//! ([`Upstream::read_cache`]): a large message read from disk must not stall every other
//! connection on the dataplane thread.

use std::{
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

use pop3_engine::session::ConnId;
use rustix::event::{EventfdFlags, eventfd};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, tcp::OwnedReadHalf},
    sync::{Semaphore, mpsc as tokio_mpsc},
};

/// Bytes read from a server that may be on their way to a client at once.
pub const CREDIT: usize = 256 * 1024;
/// Largest single read from a server.
const READ_CHUNK: usize = 16 * 1024;
/// Blocking threads of the runtime: edge-cache reads at once (each holds one message in
/// memory), and name lookups.
const BLOCKING_THREADS: usize = 4;

/// What happened on an upstream connection, or the answer to an edge-cache read.
#[derive(Debug)]
pub enum UpstreamEvent {
    Connected(ConnId),
    Data(ConnId, Vec<u8>),
    Closed(ConnId),
    Failed(ConnId),
    /// The message [`Upstream::read_cache`] read, if sound.
    Cached(ConnId, Option<Vec<u8>>),
}

enum Command {
    Send(Vec<u8>),
    Close,
}

/// An eventfd the upstream side writes to wake the dataplane's `poll(2)`.
pub struct Waker(OwnedFd);

impl Waker {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self(eventfd(
            0,
            EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC,
        )?))
    }

    pub fn wake(&self) {
        // A full counter (EAGAIN) still leaves the fd readable, which is all a wake-up
        // needs.
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Clears pending wake-ups after `poll(2)` reported the fd readable.
    pub fn reset(&self) {
        let mut value = [0u8; 8];
        // EAGAIN when nothing is pending is fine.
        let _ = rustix::io::read(&self.0, &mut value);
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Opens upstream connections on a small tokio runtime.
pub struct Upstream {
    runtime: tokio::runtime::Runtime,
    events: mpsc::Sender<UpstreamEvent>,
    waker: Arc<Waker>,
    connect_timeout: Duration,
}

/// The dataplane's handle on one upstream connection. Dropping it closes the connection.
pub struct UpstreamLink {
    commands: tokio_mpsc::UnboundedSender<Command>,
    credit: Arc<Semaphore>,
    /// Bytes handed to `send` and not yet written to the server's socket.
    queued: Arc<AtomicUsize>,
}

impl UpstreamLink {
    pub fn send(&self, bytes: Vec<u8>) {
        self.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        // A closed receiver means the connection already ended; its event is on the way.
        let _ = self.commands.send(Command::Send(bytes));
    }

    /// Bytes sent and not yet written to the server: the dataplane stops reading the
    /// client while this is large.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Flushes what was sent, then closes the connection.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }

    /// Lets the connection read `bytes` more from the server.
    pub fn return_credit(&self, bytes: usize) {
        self.credit.add_permits(bytes);
    }
}

impl Upstream {
    /// Starts the runtime. Events arrive on the returned receiver; `waker` is poked after
    /// each one.
    pub fn new(
        connect_timeout: Duration,
        waker: Arc<Waker>,
    ) -> std::io::Result<(Self, mpsc::Receiver<UpstreamEvent>)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(BLOCKING_THREADS)
            .thread_name("upstream")
            .enable_io()
            .enable_time()
            .build()?;
        let (events, receiver) = mpsc::channel();
        Ok((
            Self {
                runtime,
                events,
                waker,
                connect_timeout,
            },
            receiver,
        ))
    }

    /// The runtime, for other I/O of the daemon (the notification endpoint).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    /// Runs `read` (an edge-cache read: blocking file I/O) on a blocking thread; its
    /// answer comes back as [`UpstreamEvent::Cached`] for `conn`.
    pub fn read_cache(
        &self,
        conn: ConnId,
        read: impl FnOnce() -> Option<Vec<u8>> + Send + 'static,
    ) {
        let notifier = Notifier {
            conn,
            events: self.events.clone(),
            waker: self.waker.clone(),
        };
        self.runtime.spawn_blocking(move || {
            let message = read();
            notifier.send(|conn| UpstreamEvent::Cached(conn, message));
        });
    }

    /// Starts connecting to `server` for `conn`.
    pub fn connect(&self, conn: ConnId, server: SocketAddr) -> UpstreamLink {
        let (commands, command_rx) = tokio_mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(CREDIT));
        let queued = Arc::new(AtomicUsize::new(0));
        let notifier = Notifier {
            conn,
            events: self.events.clone(),
            waker: self.waker.clone(),
        };
        self.runtime.spawn(run_link(
            server,
            self.connect_timeout,
            command_rx,
            credit.clone(),
            queued.clone(),
            notifier,
        ));
        UpstreamLink {
            commands,
            credit,
            queued,
        }
    }
}

/// Sends events for one connection and wakes the dataplane.
#[derive(Clone)]
struct Notifier {
    conn: ConnId,
    events: mpsc::Sender<UpstreamEvent>,
    waker: Arc<Waker>,
}

impl Notifier {
    fn send(&self, event: impl FnOnce(ConnId) -> UpstreamEvent) {
        if self.events.send(event(self.conn)).is_ok() {
            self.waker.wake();
        }
    }
}

async fn run_link(
    server: SocketAddr,
    connect_timeout: Duration,
    mut commands: tokio_mpsc::UnboundedReceiver<Command>,
    credit: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    notifier: Notifier,
) {
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(server)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::info!(conn = notifier.conn, %server, %err, "upstream connect failed");
            return notifier.send(UpstreamEvent::Failed);
        }
        Err(_) => {
            tracing::info!(conn = notifier.conn, %server, "upstream connect timed out");
            return notifier.send(UpstreamEvent::Failed);
        }
    };
    let _ = stream.set_nodelay(true);
    notifier.send(UpstreamEvent::Connected);
    let (reader, mut writer) = stream.into_split();
    let reading = tokio::spawn(read_loop(reader, credit, notifier.clone()));
    while let Some(command) = commands.recv().await {
        match command {
            Command::Send(bytes) => {
                if let Err(err) = writer.write_all(&bytes).await {
                    tracing::info!(conn = notifier.conn, %err, "upstream write failed");
                    notifier.send(UpstreamEvent::Failed);
                    break;
                }
                queued.fetch_sub(bytes.len(), Ordering::Relaxed);
            }
            Command::Close => break,
        }
    }
    // The engine is done with this server (or the link was dropped): stop reading and
    // close our side.
    reading.abort();
    let _ = writer.shutdown().await;
}

async fn read_loop(mut reader: OwnedReadHalf, credit: Arc<Semaphore>, notifier: Notifier) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        // Hold READ_CHUNK of credit while reading, keep what the read used.
        let Ok(permit) = credit.acquire_many(READ_CHUNK as u32).await else {
            return;
        };
        match reader.read(&mut buf).await {
            Ok(0) => return notifier.send(UpstreamEvent::Closed),
            Ok(n) => {
                permit.forget();
                credit.add_permits(READ_CHUNK - n);
                let data = buf[..n].to_vec();
                notifier.send(|conn| UpstreamEvent::Data(conn, data));
            }
            Err(err) => {
                tracing::info!(conn = notifier.conn, %err, "upstream read failed");
                return notifier.send(UpstreamEvent::Failed);
            }
        }
    }
}
