//! How the daemon's other threads (notifications, metrics scrapes, NATS) get the
//! dataplane's attention: an eventfd in its `poll(2)` set.

use std::{
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
};

use rustix::event::{EventfdFlags, eventfd};

/// An eventfd another thread writes to wake the dataplane's `poll(2)`.
pub struct Waker {
    fd: OwnedFd,
    /// A wake-up is written and not yet reset: the next ones need no syscall (the operator
    /// thread wakes a worker for every scrape, the workers wake it every 2 ms when busy).
    pending: AtomicBool,
}

impl Waker {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            fd: eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?,
            pending: AtomicBool::new(false),
        })
    }

    pub fn wake(&self) {
        if self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        // A full counter (EAGAIN) still leaves the fd readable, which is all a wake-up
        // needs.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Clears pending wake-ups; the caller then looks at everything the wakers published.
    /// The flag is cleared after the read: a wake-up skipped in between published its work
    /// before, and the caller sees it.
    pub fn reset(&self) {
        let mut value = [0u8; 8];
        // EAGAIN when nothing is pending is fine.
        let _ = rustix::io::read(&self.fd, &mut value);
        self.pending.swap(false, Ordering::AcqRel);
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(waker: &Waker) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            waker,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&zero)).unwrap() == 1
    }

    #[test]
    fn wake_ups_until_a_reset_are_one_write_and_the_next_one_wakes_again() {
        let waker = Waker::new().unwrap();
        assert!(!readable(&waker));
        for _ in 0..3 {
            waker.wake();
        }
        let mut value = [0u8; 8];
        rustix::io::read(&waker.fd, &mut value).unwrap();
        assert_eq!(u64::from_ne_bytes(value), 1, "one write for three wake-ups");
        waker.reset();
        assert!(!readable(&waker));
        waker.wake();
        assert!(readable(&waker), "after a reset a wake-up is written again");
    }
}
