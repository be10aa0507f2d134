//! A TCP listener for the daemon's HTTP endpoints that bounds its connections: at most
//! `max` open at once (further ones wait in the kernel's backlog) and each one closed
//! `lifetime` after it was accepted. axum's server bounds neither (with no timer, hyper
//! waits for a request head as long as the client takes), so without this a few silent
//! clients could hold descriptors for ever and keep everyone else out.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};

/// See the module docs.
pub struct BoundedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    lifetime: Duration,
}

impl BoundedListener {
    pub fn new(inner: TcpListener, max: usize, lifetime: Duration) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            lifetime,
        }
    }
}

impl Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (BoundedStream, SocketAddr) {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, peer) = Listener::accept(&mut self.inner).await;
        let stream = BoundedStream {
            stream,
            deadline: Box::pin(tokio::time::sleep(self.lifetime)),
            _slot: slot,
        };
        (stream, peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The client's address of a connection accepted by a [`BoundedListener`], for axum's
/// `ConnectInfo` (which knows it only for a plain `TcpListener`).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, BoundedListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, BoundedListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// An accepted connection: fails every read and write once its lifetime is over, which
/// makes the server drop it (and its slot).
pub struct BoundedStream {
    stream: TcpStream,
    deadline: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl BoundedStream {
    /// `Err(TimedOut)` once the deadline passed; otherwise it wakes `cx` when it does.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::ErrorKind::TimedOut.into()),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpStream,
        time::Instant,
    };

    use super::*;

    #[test]
    fn silent_clients_are_dropped_and_the_next_one_is_served() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let bounded = BoundedListener::new(listener, 2, Duration::from_millis(500));
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
        std::thread::spawn(move || runtime.block_on(axum::serve(bounded, app).into_future()));

        let started = Instant::now();
        let mut silent: Vec<_> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // Both slots are taken: this one waits until a silent client's lifetime is over.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.0 200") && answer.ends_with("hi"),
            "{answer}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "it waited for a slot"
        );
        for s in &mut silent {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut rest = Vec::new();
            // Closed by the server: end of stream (or a reset), not a read timeout.
            match s.read_to_end(&mut rest) {
                Ok(_) => {}
                Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
            }
        }
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
