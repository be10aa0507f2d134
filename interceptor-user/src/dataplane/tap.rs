//! The TC dataplane's frame source and sink: a TAP device owned by the daemon, to which
//! the TC classifier redirects the chosen skbs, and an `AF_PACKET` socket on the
//! subscriber interface for the replies.
//!
//! The frames read from the TAP look exactly like those an AF_XDP socket delivers (the
//! classifier rewrote the MACs to the router's view, and the TAP writes a tag the NIC
//! took into the skb's metadata back into the frame), so the replies go out with the
//! same mirrored Ethernet and VLAN header. Replies leave through `AF_PACKET` on the
//! interface itself rather than a redirect program on the TAP: it needs no second
//! program, and the kernel's qdisc and offloads see them as any locally sent frame.
//! The TAP is not persistent: it disappears with the daemon's descriptors.
//!
//! With several workers the TAP has one queue each (`IFF_MULTI_QUEUE`): the kernel picks
//! the queue of a redirected frame by its flow hash, so every frame of one connection
//! reaches the same worker, and each worker sends its replies through a socket of its own.
//!
//! The reply socket takes a `virtio_net_hdr` in front of every frame (`PACKET_VNET_HDR`):
//! a segment longer than the client's MSS goes out whole and the kernel cuts it (GSO, see
//! [`super::gso`]). A pass's small replies leave together, in one `sendmmsg` at its end.

use std::{
    ffi::CStr,
    io,
    ops::Range,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use thiserror::Error;

use super::{gso::VnetHeader, xsk::XskStats};

/// Largest frame read from the TAP (a TAP without offloads hands over segmented
/// frames, so anything near the MTU fits many times over).
const MAX_FRAME: usize = 64 * 1024;
/// Name pattern of the TAP; the kernel fills in the number.
const TAP_NAME: &CStr = c"pop3i%d";
/// Replies up to this long wait for the pass's `sendmmsg`; a longer one (a GSO frame) is
/// sent at once rather than copied.
const BATCHED_FRAME: usize = 2048;
/// Frames and bytes of one `sendmmsg`.
const BATCH_FRAMES: usize = 64;
const BATCH_BYTES: usize = BATCH_FRAMES * BATCHED_FRAME;

/// Why the TAP or the reply socket could not be set up.
#[derive(Debug, Error)]
#[error("{step}: {err}")]
pub struct TapError {
    step: &'static str,
    err: io::Error,
}

fn last_error(step: &'static str) -> TapError {
    TapError {
        step,
        err: io::Error::last_os_error(),
    }
}

/// One queue of the TAP device and the reply socket of one worker.
pub struct TapQueue {
    tap: OwnedFd,
    reply: OwnedFd,
    ifindex: u32,
    buffer: Vec<u8>,
    replies: ReplyBatch,
    stats: XskStats,
}

/// Small frames waiting to leave together: a syscall per pass instead of one per frame.
#[derive(Debug)]
struct ReplyBatch {
    /// Never grows past [`BATCH_BYTES`].
    bytes: Vec<u8>,
    frames: Vec<Range<usize>>,
}

impl ReplyBatch {
    fn new() -> Self {
        Self {
            bytes: Vec::with_capacity(BATCH_BYTES),
            frames: Vec::with_capacity(BATCH_FRAMES),
        }
    }

    /// Whether a frame of `len` bytes fits beside those waiting.
    fn has_room(&self, len: usize) -> bool {
        self.frames.len() < BATCH_FRAMES && self.bytes.len() + len <= BATCH_BYTES
    }

    /// Queues the frame made of `parts`; the caller checked [`Self::has_room`] (`send`
    /// hands the kernel at most [`BATCH_FRAMES`] messages).
    fn push(&mut self, parts: [&[u8]; 3]) {
        assert!(
            self.has_room(parts.iter().map(|p| p.len()).sum()),
            "a reply batch is full"
        );
        let start = self.bytes.len();
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        self.frames.push(start..self.bytes.len());
    }

    /// Sends the waiting frames on `socket`, in order; returns how many went and how many
    /// the kernel refused (each refusal skips that frame and goes on with the next).
    fn send(&mut self, socket: BorrowedFd<'_>) -> (u64, u64) {
        let count = self.frames.len();
        if count == 0 {
            return (0, 0);
        }
        // SAFETY: all-zero iovecs and mmsghdrs are valid (null, empty).
        let mut iov: [libc::iovec; BATCH_FRAMES] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH_FRAMES] = unsafe { std::mem::zeroed() };
        for ((frame, iov), msg) in self.frames.iter().zip(&mut iov).zip(&mut msgs) {
            *iov = libc::iovec {
                iov_base: self.bytes[frame.clone()].as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            };
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
        }
        let (mut sent, mut refused, mut next) = (0, 0, 0);
        while next < count {
            // SAFETY: `msgs[next..count]` point at iovecs over `self.bytes`, all alive and
            // unchanged across the call.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    msgs[next..].as_mut_ptr(),
                    (count - next) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            match usize::try_from(n) {
                Ok(n) if n > 0 => {
                    sent += n as u64;
                    next += n;
                }
                _ => {
                    refused += 1;
                    next += 1;
                }
            }
        }
        self.bytes.clear();
        self.frames.clear();
        (sent, refused)
    }
}

/// Opens a queue of the TAP named `name` (a pattern: a new device), returns it and the
/// device's name.
fn open_tap_queue(name: &[u8]) -> Result<(OwnedFd, String), TapError> {
    // SAFETY: plain open(2) of a constant path.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_error("opening /dev/net/tun"));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let tap = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr = ifreq(name);
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq.
    if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(last_error("creating the TAP device (TUNSETIFF)"));
    }
    let name: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok((tap, String::from_utf8_lossy(&name).into_owned()))
}

impl TapQueue {
    /// Creates the TAP with `count` queues (up, no ARP, no IPv6, so the kernel sends
    /// nothing into it) and for each a packet socket bound to `ifindex`, the subscriber
    /// interface.
    pub fn open(ifindex: u32, mtu: usize, count: usize) -> Result<Vec<Self>, TapError> {
        let (first, name) = open_tap_queue(TAP_NAME.to_bytes())?;
        let mut taps = vec![first];
        for _ in 1..count {
            taps.push(open_tap_queue(name.as_bytes())?.0);
        }
        // Best effort: without it the kernel may send router solicitations into the TAP,
        // which the dataplane counts as malformed and drops.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        // SAFETY: a datagram socket for the interface ioctls, closed when dropped.
        let control =
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if control < 0 {
            return Err(last_error("socket for the TAP's settings"));
        }
        // SAFETY: just created, owned here.
        let control = unsafe { OwnedFd::from_raw_fd(control) };
        let mut ifr = ifreq(name.as_bytes());
        ifr.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        // SAFETY: SIOCSIFMTU reads one ifreq.
        if unsafe { libc::ioctl(control.as_raw_fd(), libc::SIOCSIFMTU, &mut ifr) } < 0 {
            return Err(last_error("setting the TAP's MTU"));
        }
        let mut ifr = ifreq(name.as_bytes());
        ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_NOARP) as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads one ifreq.
        if unsafe { libc::ioctl(control.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr) } < 0 {
            return Err(last_error("bringing the TAP up"));
        }
        let ifindex_tap = crate::ebpf::interface_index(&name).ok_or_else(|| TapError {
            step: "looking up the TAP's index",
            err: io::Error::from(io::ErrorKind::NotFound),
        })?;
        tracing::debug!(tap = %name, ifindex = ifindex_tap, queues = count, "TAP device up");
        taps.into_iter()
            .map(|tap| {
                Ok(Self {
                    tap,
                    reply: reply_socket(ifindex)?,
                    ifindex: ifindex_tap,
                    buffer: vec![0; MAX_FRAME],
                    replies: ReplyBatch::new(),
                    stats: XskStats::default(),
                })
            })
            .collect()
    }

    /// The TAP's interface index, for the classifier's redirect.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Frames read and sent, and replies the kernel refused (full queue: TCP retransmits).
    pub fn stats(&self) -> XskStats {
        self.stats
    }

    /// Hands up to `budget` frames read from the TAP to `on_frame`; returns how many.
    pub fn receive(&mut self, budget: u32, mut on_frame: impl FnMut(&[u8])) -> u32 {
        let mut count = 0;
        while count < budget {
            // SAFETY: reads into a live buffer of the length passed.
            let n = unsafe {
                libc::read(
                    self.tap.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.len(),
                )
            };
            let Ok(n) = usize::try_from(n) else {
                // EAGAIN: drained. Anything else would repeat; the next poll retries.
                break;
            };
            on_frame(&self.buffer[..n]);
            count += 1;
        }
        self.stats.rx_frames += u64::from(count);
        count
    }

    /// Sends one frame made of `header` then `payload` out of the subscriber interface,
    /// with the offload `vnet` asks of the kernel: a small one at the next
    /// [`Self::flush`], a long one at once (after those waiting). The kernel may refuse
    /// a frame (counted); TCP will retransmit.
    pub fn transmit(&mut self, header: &[u8], payload: &[u8], vnet: VnetHeader) {
        let vnet = vnet.to_bytes();
        let len = vnet.len() + header.len() + payload.len();
        if len <= BATCHED_FRAME {
            if !self.replies.has_room(len) {
                self.flush();
            }
            self.replies.push([&vnet, header, payload]);
            return;
        }
        self.flush();
        let iov = [
            libc::iovec {
                iov_base: vnet.as_ptr() as *mut libc::c_void,
                iov_len: vnet.len(),
            },
            libc::iovec {
                iov_base: header.as_ptr() as *mut libc::c_void,
                iov_len: header.len(),
            },
            libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            },
        ];
        // SAFETY: an all-zero msghdr is valid; it points at `iov`, alive across the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len();
        // SAFETY: the socket is bound to the interface; msg and its buffers are live.
        let sent = unsafe { libc::sendmsg(self.reply.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if sent < 0 {
            self.stats.tx_ring_full += 1;
        } else {
            self.stats.tx_frames += 1;
        }
    }

    /// Sends the small frames waiting.
    pub fn flush(&mut self) {
        let (sent, refused) = self.replies.send(self.reply.as_fd());
        self.stats.tx_frames += sent;
        self.stats.tx_ring_full += refused;
    }
}

impl TapQueue {
    /// The TAP's descriptor, for the dataplane's poll set.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.tap.as_fd()
    }
}

/// An `AF_PACKET` socket that only sends (protocol 0: it receives nothing), bound to the
/// subscriber interface, every frame behind a `virtio_net_hdr`.
fn reply_socket(ifindex: u32) -> Result<OwnedFd, TapError> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_error("opening the AF_PACKET reply socket"));
    }
    // SAFETY: just created, owned here.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is a live sockaddr_ll of the size passed.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if bound < 0 {
        return Err(last_error("binding the AF_PACKET reply socket"));
    }
    if !set_int(&socket, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1) {
        return Err(last_error("asking for virtio_net_hdr on the reply socket"));
    }
    // Frames stay charged to the socket until the NIC has sent them, and a refused one
    // waits for smoltcp's retransmission (a second at least): the default send buffer
    // holds three 64 KB frames, this one 64. Best effort: without CAP_NET_ADMIN the
    // kernel caps SO_SNDBUF at wmem_max.
    if !set_int(&socket, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SEND_BUFFER) {
        set_int(&socket, libc::SOL_SOCKET, libc::SO_SNDBUF, SEND_BUFFER);
    }
    Ok(socket)
}

/// Send buffer of a reply socket, in bytes.
const SEND_BUFFER: libc::c_int = 4 << 20;

/// `setsockopt` of one int; whether the kernel took it.
fn set_int(socket: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: the option reads one int from a live local.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    set == 0
}

/// An `ifreq` naming `name` (truncated to what fits).
fn ifreq(name: &[u8]) -> libc::ifreq {
    // SAFETY: an all-zero ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr
        .ifr_name
        .iter_mut()
        .zip(name.iter().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    ifr
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    #[test]
    fn a_batch_leaves_in_order_in_one_call_and_a_refusal_loses_only_its_frames() {
        let (tx, rx) = UnixDatagram::pair().unwrap();
        let mut batch = ReplyBatch::new();
        let frames: [[&[u8]; 3]; 3] = [
            [b"v1", b"h1", b"one"],
            [b"", b"h2", b""],
            [b"v3", b"", b"3"],
        ];
        for parts in frames {
            assert!(batch.has_room(parts.iter().map(|p| p.len()).sum()));
            batch.push(parts);
        }
        assert_eq!(batch.send(tx.as_fd()), (3, 0));
        let mut buf = [0u8; 64];
        for expected in [&b"v1h1one"[..], b"h2", b"v33"] {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], expected);
        }
        assert_eq!(batch.send(tx.as_fd()), (0, 0), "nothing left to send");
        drop(rx);
        batch.push([b"a", b"b", b"c"]);
        batch.push([b"d", b"e", b"f"]);
        assert_eq!(batch.send(tx.as_fd()), (0, 2), "no receiver: both refused");
    }

    #[test]
    fn a_batch_is_bounded_in_frames_and_bytes() {
        let mut batch = ReplyBatch::new();
        let frame = [0u8; BATCHED_FRAME];
        for _ in 0..BATCH_FRAMES {
            assert!(batch.has_room(frame.len()));
            batch.push([&frame, b"", b""]);
        }
        assert!(!batch.has_room(1), "full in frames");
        assert_eq!(batch.bytes.capacity(), BATCH_BYTES, "never grew");
        let mut batch = ReplyBatch::new();
        batch.push([&frame[..10], b"", b""]);
        assert!(!batch.has_room(BATCH_BYTES - 9), "full in bytes");
        assert!(batch.has_room(BATCH_BYTES - 10));
    }
}
