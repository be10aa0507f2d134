//! One AF_XDP socket bound to one RX queue of the interface, with its own UMEM.
//!
//! A socket only sees frames from the queue it is bound to, so the dataplane opens one
//! per RX queue. Each has a private UMEM (no shared-UMEM bookkeeping): half of its frames
//! feed the fill ring for RX, the other half are the TX pool.

use std::{ffi::CString, num::NonZeroU32, os::fd::BorrowedFd, ptr::NonNull};

use rustix::mm;
use thiserror::Error;
use xdpilone::{
    DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, xdp::XdpDesc,
};

/// Frames per UMEM: half RX (fill ring), half TX.
const FRAME_COUNT: u32 = 4096;
/// AF_XDP chunk size in aligned mode: a power of two, at least 2048.
const FRAME_SIZE: u32 = 2048;
/// Largest frame (link-layer header included) one chunk carries.
pub const MAX_FRAME: usize = FRAME_SIZE as usize;
const RING_SIZE: u32 = FRAME_COUNT / 2;

/// Why an AF_XDP socket could not be set up.
#[derive(Debug, Error)]
pub enum XskError {
    #[error("interface {0:?}: {1}")]
    Interface(String, String),
    #[error("AF_XDP {step} on queue {queue}: {errno}")]
    Setup {
        step: &'static str,
        queue: u32,
        errno: String,
    },
    #[error("mmap of the UMEM area failed: {0}")]
    Mmap(std::io::Error),
}

/// An anonymous, page-aligned memory area for a UMEM, unmapped on drop.
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

impl Area {
    fn new(len: usize) -> Result<Self, XskError> {
        // SAFETY: anonymous private mapping with no address hint.
        let ptr = unsafe {
            mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                mm::ProtFlags::READ | mm::ProtFlags::WRITE,
                mm::MapFlags::PRIVATE | mm::MapFlags::POPULATE,
            )
        }
        .map_err(|e| XskError::Mmap(e.into()))?;
        let ptr = NonNull::new(ptr.cast()).ok_or(XskError::Mmap(std::io::Error::other("null")))?;
        Ok(Self { ptr, len })
    }

    fn as_slice_ptr(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }

    /// The bytes at `[offset, offset + len)`, clamped to the area.
    fn bytes(&self, offset: u64, len: u32) -> &[u8] {
        let start = (offset as usize).min(self.len);
        let end = start.saturating_add(len as usize).min(self.len);
        // SAFETY: in-bounds range of our own mapping; the kernel does not write a frame
        // while it sits in the RX ring's consumer part, which is when this is read.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), end - start) }
    }

    fn bytes_mut(&mut self, offset: u64, len: usize) -> &mut [u8] {
        let start = (offset as usize).min(self.len);
        let end = start.saturating_add(len).min(self.len);
        // SAFETY: in-bounds range of our own mapping; TX frames are owned by us until
        // they are handed to the TX ring.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), end - start) }
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; the socket using it is gone
        // (fields of `XskQueue` drop before `area`).
        let _ = unsafe { mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Frames moved through one socket, for the operator counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct XskStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// TX attempts that found no free frame (the peer is not draining).
    pub tx_ring_full: u64,
    /// Frames the kernel dropped because the fill ring was empty (`XDP_STATISTICS`
    /// `rx_fill_ring_empty_descs`, Linux >= 5.9; 0 when the kernel cannot say).
    pub fill_ring_empty: u64,
}

/// An AF_XDP socket on one RX queue.
pub struct XskQueue {
    queue_id: u32,
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    tx_free: Vec<u64>,
    /// RX frames read in this batch, on their way back to the fill ring.
    recycled: Vec<u64>,
    tx_pending_kick: bool,
    stats: XskStats,
    _umem: Umem,
    area: Area,
}

// SAFETY: a queue owns its UMEM, its memory area and every ring over them exclusively
// (all made in `open`, none handed out); moving it to the worker thread that then uses
// it alone moves all of them together, so nothing is ever touched from two threads.
unsafe impl Send for XskQueue {}

impl XskQueue {
    /// Opens and binds a socket on `ifname` queue `queue_id` and fills its fill ring.
    pub fn open(ifname: &str, queue_id: u32) -> Result<Self, XskError> {
        let setup = |step: &'static str| {
            move |errno: xdpilone::Errno| XskError::Setup {
                step,
                queue: queue_id,
                errno: errno.to_string(),
            }
        };
        let area = Area::new((FRAME_COUNT * FRAME_SIZE) as usize)?;
        let config = UmemConfig {
            fill_size: RING_SIZE,
            complete_size: RING_SIZE,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: the area is page aligned, FRAME_COUNT * FRAME_SIZE long and outlives the
        // UMEM (dropped after it).
        let umem = unsafe { Umem::new(config, area.as_slice_ptr()) }.map_err(setup("umem"))?;

        let name = CString::new(ifname)
            .map_err(|_| XskError::Interface(ifname.into(), "name contains NUL".into()))?;
        let mut info = IfInfo::invalid();
        info.from_name(&name)
            .map_err(|e| XskError::Interface(ifname.into(), e.to_string()))?;
        info.set_queue(queue_id);

        let socket = Socket::with_shared(&info, &umem).map_err(setup("socket"))?;
        let mut device = umem
            .fq_cq(&socket)
            .map_err(setup("fill/completion rings"))?;
        let rxtx = umem
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: NonZeroU32::new(RING_SIZE),
                    tx_size: NonZeroU32::new(RING_SIZE),
                    bind_flags: SocketConfig::XDP_BIND_NEED_WAKEUP,
                },
            )
            .map_err(setup("rx/tx rings"))?;
        let rx = rxtx.map_rx().map_err(setup("rx ring mmap"))?;
        let tx = rxtx.map_tx().map_err(setup("tx ring mmap"))?;
        umem.bind(&rxtx).map_err(setup("bind"))?;

        let frame_addr = |i: u32| u64::from(i) * u64::from(FRAME_SIZE);
        let mut fill = device.fill(RING_SIZE);
        fill.insert((0..RING_SIZE).map(frame_addr));
        fill.commit();
        drop(fill);
        let tx_free = (RING_SIZE..FRAME_COUNT).map(frame_addr).collect();

        Ok(Self {
            queue_id,
            rx,
            tx,
            device,
            tx_free,
            recycled: Vec::with_capacity(RING_SIZE as usize),
            tx_pending_kick: false,
            stats: XskStats::default(),
            _umem: umem,
            area,
        })
    }

    /// The RX queue this socket is bound to (its XSKMAP index).
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    /// The socket's descriptor, for the XSKMAP and for `poll(2)`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the RX ring owns the socket fd for as long as `self` lives.
        unsafe { BorrowedFd::borrow_raw(self.rx.as_raw_fd()) }
    }

    /// The socket's counters. Asks the kernel for its `XDP_STATISTICS` (one `getsockopt`),
    /// so call it for a snapshot, not per packet.
    pub fn stats(&self) -> XskStats {
        let kernel = self.device.statistics_v2().unwrap_or_default();
        XskStats {
            fill_ring_empty: kernel.rx_fill_ring_empty_descs,
            ..self.stats
        }
    }

    /// Hands up to `budget` received frames to `on_frame` and returns them to the fill
    /// ring. Returns how many were received.
    pub fn receive(&mut self, budget: u32, mut on_frame: impl FnMut(&[u8])) -> u32 {
        let mut batch = self.rx.receive(budget);
        let mut count = 0;
        while let Some(desc) = batch.read() {
            on_frame(self.area.bytes(desc.addr, desc.len));
            self.recycled
                .push(desc.addr - desc.addr % u64::from(FRAME_SIZE));
            count += 1;
        }
        batch.release();
        drop(batch);
        self.refill();
        if self.device.needs_wakeup() {
            self.device.wake();
        }
        self.stats.rx_frames += u64::from(count);
        count
    }

    /// Gives the frames read from the RX ring back to the fill ring.
    ///
    /// The ring has room for every RX frame, but a reservation is sized from a cached
    /// view of the kernel's consumer and may come up short: what does not fit now stays
    /// in `recycled` for the next pass instead of being lost (a lost frame is a fill
    /// ring that slowly runs dry).
    fn refill(&mut self) {
        while !self.recycled.is_empty() {
            let mut fill = self.device.fill(self.recycled.len() as u32);
            let inserted = fill.insert(self.recycled.iter().copied()) as usize;
            fill.commit();
            drop(fill);
            self.recycled.drain(..inserted);
            if inserted == 0 {
                break;
            }
        }
    }

    /// Queues one frame made of `header` then `payload` for transmission. Without a free
    /// TX frame it is dropped (and counted); TCP will retransmit.
    pub fn transmit(&mut self, header: &[u8], payload: &[u8]) {
        self.reap_completions();
        let len = header.len() + payload.len();
        if len > FRAME_SIZE as usize {
            return;
        }
        let Some(addr) = self.tx_free.pop() else {
            self.stats.tx_ring_full += 1;
            return;
        };
        let frame = self.area.bytes_mut(addr, len);
        frame[..header.len()].copy_from_slice(header);
        frame[header.len()..].copy_from_slice(payload);
        let mut batch = self.tx.transmit(1);
        let sent = batch.insert_once(XdpDesc {
            addr,
            len: len as u32,
            options: 0,
        });
        batch.commit();
        drop(batch);
        if !sent {
            self.tx_free.push(addr);
            self.stats.tx_ring_full += 1;
            return;
        }
        self.tx_pending_kick = true;
        self.stats.tx_frames += 1;
    }

    /// Wakes the kernel to send what `transmit` queued (copy mode needs the kick).
    pub fn flush(&mut self) {
        if self.tx_pending_kick {
            self.tx.wake();
            self.tx_pending_kick = false;
        }
        self.reap_completions();
    }

    fn reap_completions(&mut self) {
        let mut done = self.device.complete(RING_SIZE);
        while let Some(addr) = done.read() {
            self.tx_free.push(addr);
        }
        done.release();
    }
}
