//! Where frames come from and go to: AF_XDP sockets (the XDP dataplane) or the TAP
//! device and its reply socket (the TC dataplane). The dataplane loop is the same for
//! both; only this edge differs.

use std::os::fd::BorrowedFd;

use super::{
    gso::VnetHeader,
    tap::TapQueue,
    xsk::{XskQueue, XskStats},
};

/// Which frame source the dataplane opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameSource {
    /// One AF_XDP socket per RX queue, fed by the XDP program.
    AfXdp,
    /// A TAP device fed by the TC classifier; replies through `AF_PACKET`.
    Tap,
}

/// One source and sink of frames.
// A few of these per daemon, built once: their size does not matter, and a box would
// only add a pointer to chase on the hot path.
#[allow(clippy::large_enum_variant)]
pub enum FrameQueue {
    Xsk(XskQueue),
    Tap(TapQueue),
}

impl FrameQueue {
    /// Hands up to `budget` received frames to `on_frame`; returns how many. `polled`:
    /// whether `poll(2)` reported the queue's descriptor. A TAP is read only then: reading
    /// an empty one is a syscall for nothing, two a pass with the one that drains it. An
    /// AF_XDP ring is read every pass: that costs no syscall, and it refills the fill ring
    /// with what an earlier pass could not give back.
    pub fn receive(&mut self, budget: u32, polled: bool, on_frame: impl FnMut(&[u8])) -> u32 {
        match self {
            FrameQueue::Xsk(q) => q.receive(budget, on_frame),
            FrameQueue::Tap(q) if polled => q.receive(budget, on_frame),
            FrameQueue::Tap(_) => 0,
        }
    }

    /// Queues (or sends) one frame made of `header` then `payload`; `vnet` is the offload
    /// asked of the kernel, which only the TAP's reply socket has (AF_XDP's stacks never
    /// write a segment that would need it).
    pub fn transmit(&mut self, header: &[u8], payload: &[u8], vnet: VnetHeader) {
        match self {
            FrameQueue::Xsk(q) => q.transmit(header, payload),
            FrameQueue::Tap(q) => q.transmit(header, payload, vnet),
        }
    }

    /// Pushes out what `transmit` queued.
    pub fn flush(&mut self) {
        match self {
            FrameQueue::Xsk(q) => q.flush(),
            FrameQueue::Tap(q) => q.flush(),
        }
    }

    /// The counters; for AF_XDP one syscall, so take a snapshot, not per packet.
    /// The descriptor that becomes readable when frames wait, for the poll set.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            FrameQueue::Xsk(q) => q.fd(),
            FrameQueue::Tap(q) => q.fd(),
        }
    }

    pub fn stats(&self) -> XskStats {
        match self {
            FrameQueue::Xsk(q) => q.stats(),
            FrameQueue::Tap(q) => q.stats(),
        }
    }
}
