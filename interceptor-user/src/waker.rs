//! How the daemon's other threads (notifications, metrics scrapes, NATS) get the
//! dataplane's attention: an eventfd in its `poll(2)` set.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::{EventfdFlags, eventfd};

/// An eventfd another thread writes to wake the dataplane's `poll(2)`.
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
