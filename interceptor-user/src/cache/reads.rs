//! Edge-cache reads off the dataplane thread: a large message read from disk must not
//! stall every other connection. They run on the operator runtime's blocking threads
//! (bounded by the runtime) and come back through a channel, with the dataplane's
//! [`Waker`] poked. A connection has at most one read in flight (its engine session waits
//! for the answer), so the queue is bounded by the connection limit.

use std::sync::{Arc, mpsc};

use pop3_engine::session::ConnId;

use crate::waker::Waker;

/// A finished read: the connection that asked, and the message if it was sound.
pub type ReadDone = (ConnId, Option<Vec<u8>>);

/// The edge-cache reads of one dataplane thread.
pub struct CacheReads {
    runtime: tokio::runtime::Handle,
    done_tx: mpsc::Sender<ReadDone>,
    done_rx: mpsc::Receiver<ReadDone>,
    waker: Arc<Waker>,
}

impl CacheReads {
    pub fn new(runtime: tokio::runtime::Handle, waker: Arc<Waker>) -> Self {
        let (done_tx, done_rx) = mpsc::channel();
        Self {
            runtime,
            done_tx,
            done_rx,
            waker,
        }
    }

    /// Runs `read` (blocking file I/O) on a blocking thread; its answer comes back from
    /// [`Self::finished`] for `conn`.
    pub fn start(&self, conn: ConnId, read: impl FnOnce() -> Option<Vec<u8>> + Send + 'static) {
        let (done, waker) = (self.done_tx.clone(), self.waker.clone());
        self.runtime.spawn_blocking(move || {
            if done.send((conn, read())).is_ok() {
                waker.wake();
            }
        });
    }

    /// The reads finished since the last call.
    pub fn finished(&self) -> Vec<ReadDone> {
        self.done_rx.try_iter().collect()
    }
}
