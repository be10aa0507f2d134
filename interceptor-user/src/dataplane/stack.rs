//! The userspace TCP stack: a smoltcp `Interface` that terminates intercepted flows while
//! answering as the mail server's address.
//!
//! `Medium::Ip` with `any_ip`: the dataplane strips the link-layer header before a packet
//! gets here and puts a mirrored one back on the way out, so smoltcp never ARPs (an ARP
//! reply would go to the kernel, not to us). A listening socket is created for the exact
//! destination of each SYN just before the SYN is processed.
//!
//! smoltcp scans its socket set linearly for every packet, so the cost of a packet grows
//! with the connections of its `Stack`: [`super::stacks`] spreads flows over many.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ptr::NonNull,
};

use hashbrown::HashMap;
use rustix::mm;

use super::rfc5961::Sent;
use smoltcp::{
    iface::{Config, Interface, PollResult, SocketHandle, SocketSet},
    phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium, RxToken, TxToken},
    socket::tcp,
    time::{Duration, Instant},
    wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint},
};

/// The stack's own addresses. They never appear on the wire (every socket is bound to the
/// original destination); smoltcp's `any_ip` only needs a default route through an
/// address of its own.
const OWN_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
const OWN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);

/// Per-connection buffer sizes: clients send little, the server's answers can be large.
/// The TX side holds four 64 KB segments (TC's segmentation offload), so the next is
/// ready while the client acknowledges the last; a check session touches a page of it.
pub const RX_BUFFER: usize = 16 * 1024;
pub const TX_BUFFER: usize = 256 * 1024;
/// Segments one socket may send per pass (smoltcp emits one per egress call).
const EGRESS_ROUNDS: usize = 8;

/// The two buffers of one socket in one anonymous mapping of their own. The kernel maps
/// zero pages lazily, so a half-open connection (buffers untouched) costs no buffer
/// memory at all, and `munmap` gives the pages back the moment the socket goes: after a
/// SYN flood the daemon shrinks again. (From the heap, every buffer's first page is
/// touched by the allocator's header and freed memory stays with the process.)
struct Buffers {
    ptr: NonNull<u8>,
}

impl Buffers {
    const LEN: usize = RX_BUFFER + TX_BUFFER;

    fn new() -> Option<Self> {
        // SAFETY: anonymous private mapping with no address hint.
        let ptr = unsafe {
            mm::mmap_anonymous(
                std::ptr::null_mut(),
                Self::LEN,
                mm::ProtFlags::READ | mm::ProtFlags::WRITE,
                mm::MapFlags::PRIVATE,
            )
        }
        .ok()?;
        NonNull::new(ptr.cast()).map(|ptr| Self { ptr })
    }

    /// The RX and TX halves.
    ///
    /// SAFETY: the slices must not outlive `self`; [`Stack`] drops a socket (which holds
    /// them) before its `Buffers`.
    unsafe fn halves(&self) -> (&'static mut [u8], &'static mut [u8]) {
        // SAFETY: the mapping is LEN bytes, readable and writable, and these are the only
        // references into it.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), Self::LEN) };
        all.split_at_mut(RX_BUFFER)
    }
}

impl Buffers {
    /// Zeroes the RX half: what a client sent (a password) does not outlive its
    /// connection. A 16 KB memset of pages already mapped costs far less than handing
    /// them back (`MADV_DONTNEED`: a syscall, a TLB flush on every core, and page faults
    /// on the next connection's first bytes).
    fn wipe_rx(&mut self) {
        // SAFETY: the RX half of our own mapping, referenced by no socket any more. The
        // pointer escapes into the pool, so the writes are not dead stores to elide.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), 0, RX_BUFFER) };
    }
}

/// Buffers of sockets that are gone, for the next connections: a fresh mapping per
/// connection (mmap, page faults, munmap) cost about a tenth of an attenuated check's
/// CPU. Bounded, so after a burst the rest are unmapped.
#[derive(Default)]
pub struct BufferPool {
    spare: Vec<Buffers>,
}

/// Most buffers kept for reuse: at most 17 MB, their RX halves (1 MB) mapped and the TX
/// halves as far as their connections used them (a RETR leaves all of it touched).
const POOLED_BUFFERS: usize = 64;

impl BufferPool {
    fn take(&mut self) -> Option<Buffers> {
        self.spare.pop().or_else(Buffers::new)
    }

    fn give(&mut self, mut buffers: Buffers) {
        if self.spare.len() < POOLED_BUFFERS {
            buffers.wipe_rx();
            self.spare.push(buffers);
        }
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: our own mapping of LEN bytes, unmapped once.
        let _ = unsafe { mm::munmap(self.ptr.as_ptr().cast(), Self::LEN) };
    }
}

/// Packets between the dataplane and smoltcp, one ingress packet at a time.
struct PacketQueue {
    rx: Option<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    mtu: usize,
}

struct PacketRx(Vec<u8>);
struct PacketTx<'a>(&'a mut PacketQueue);

impl RxToken for PacketRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for PacketTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.0.spare.pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        let result = f(&mut buf);
        self.0.tx.push(buf);
        result
    }
}

impl Device for PacketQueue {
    type RxToken<'a> = PacketRx;
    type TxToken<'a> = PacketTx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(PacketRx, PacketTx<'_>)> {
        let packet = self.rx.take()?;
        Some((PacketRx(packet), PacketTx(self)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<PacketTx<'_>> {
        Some(PacketTx(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // `frame::parse` already checked both checksums (and accepts a veth peer's
        // CHECKSUM_PARTIAL form, which smoltcp would reject): never verify again on RX,
        // always compute on TX.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

/// One smoltcp interface and its sockets.
pub struct Stack {
    iface: Interface,
    // Declared before `buffers`: sockets borrow them and must go first.
    sockets: SocketSet<'static>,
    buffers: HashMap<SocketHandle, Buffers>,
    device: PacketQueue,
}

impl Stack {
    /// A stack for IP packets of at most `mtu` bytes.
    pub fn new(mtu: usize, random_seed: u64, now: Instant) -> Self {
        let mut device = PacketQueue {
            rx: None,
            tx: Vec::new(),
            spare: Vec::new(),
            mtu,
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = random_seed;
        let mut iface = Interface::new(config, &mut device, now);
        iface.update_ip_addrs(|addrs| {
            // Capacity is IFACE_MAX_ADDR_COUNT (>= 2).
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(OWN_V4), 32));
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(OWN_V6), 128));
        });
        let routes = iface.routes_mut();
        let _ = routes.add_default_ipv4_route(OWN_V4);
        let _ = routes.add_default_ipv6_route(OWN_V6);
        iface.set_any_ip(true);
        Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            buffers: HashMap::new(),
            device,
        }
    }

    /// Adds a socket listening on exactly `server`, for the SYN about to be processed.
    pub fn listen(&mut self, server: SocketAddr, pool: &mut BufferPool) -> SocketHandle {
        let buffers = pool.take();
        let mut socket = match &buffers {
            Some(buffers) => {
                // SAFETY: the socket is dropped before `buffers` (see `remove`).
                let (rx, tx) = unsafe { buffers.halves() };
                tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx))
            }
            None => tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
                tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
            ),
        };
        // POP3 is a lock-step protocol: coalescing small writes only adds latency.
        socket.set_nagle_enabled(false);
        socket.set_keep_alive(Some(Duration::from_secs(60)));
        let endpoint = IpListenEndpoint {
            addr: Some(server.ip().into()),
            port: server.port(),
        };
        socket
            .listen(endpoint)
            .expect("a fresh socket listens on a non-zero port");
        let handle = self.sockets.add(socket);
        if let Some(buffers) = buffers {
            self.buffers.insert(handle, buffers);
        }
        handle
    }

    /// Processes one IP packet from a client.
    pub fn ingress(&mut self, now: Instant, ip_packet: &[u8]) {
        let mut buf = self.device.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(ip_packet);
        self.device.rx = Some(buf);
        self.iface
            .poll_ingress_single(now, &mut self.device, &mut self.sockets);
        if let Some(unused) = self.device.rx.take() {
            self.device.spare.push(unused);
        }
    }

    /// Lets smoltcp send what its sockets have queued (data, ACKs, retransmissions): it
    /// emits at most one segment per socket per call, so call again while it sends, a few
    /// times at most (the rest waits for the next pass).
    pub fn egress(&mut self, now: Instant) {
        for _ in 0..EGRESS_ROUNDS {
            let sent = self
                .iface
                .poll_egress(now, &mut self.device, &mut self.sockets);
            if sent == PollResult::None {
                break;
            }
        }
    }

    /// Hands every packet smoltcp produced to `send` (which may still change it), in order.
    pub fn drain_tx(&mut self, mut send: impl FnMut(&mut [u8])) {
        for mut packet in self.device.tx.drain(..) {
            send(&mut packet);
            self.device.spare.push(packet);
        }
        // Keep a small pool, not every buffer a burst ever needed.
        self.device.spare.truncate(256);
    }

    pub fn socket(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    pub fn peek(&self, handle: SocketHandle) -> &tcp::Socket<'static> {
        self.sockets.get::<tcp::Socket>(handle)
    }

    pub fn remove(&mut self, handle: SocketHandle, pool: &mut BufferPool) {
        drop(self.sockets.remove(handle));
        if let Some(buffers) = self.buffers.remove(&handle) {
            pool.give(buffers);
        }
    }

    /// How long until smoltcp has timers to run (retransmissions, delayed ACKs).
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        self.iface.poll_delay(now, &self.sockets)
    }
}

/// Source and destination of an IP packet (none for ARP).
pub(super) fn addresses(net: etherparse::NetSlice<'_>) -> Option<(IpAddr, IpAddr)> {
    use etherparse::NetSlice;
    Some(match net {
        NetSlice::Ipv4(ip) => (
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
        ),
        NetSlice::Ipv6(ip) => (
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
        ),
        NetSlice::Arp(_) => return None,
    })
}

/// An outgoing packet's flow, `(client, server)`, and what the RFC 5961 tracker needs.
pub fn packet_meta(ip_packet: &[u8]) -> Option<(SocketAddr, SocketAddr, Sent)> {
    use etherparse::{SlicedPacket, TransportSlice};
    let packet = SlicedPacket::from_ip(ip_packet).ok()?;
    let (src, dst) = addresses(packet.net?)?;
    let TransportSlice::Tcp(tcp) = packet.transport? else {
        return None;
    };
    let sent = Sent {
        seq: tcp.sequence_number(),
        ack: tcp.ack().then(|| tcp.acknowledgment_number()),
        syn: tcp.syn(),
        fin: tcp.fin(),
        window: tcp.window_size(),
        payload_len: tcp.payload().len() as u32,
        window_shift: if tcp.syn() {
            super::frame::window_shift(tcp.options_iterator())
        } else {
            None
        },
    };
    Some((
        SocketAddr::new(dst, tcp.destination_port()),
        SocketAddr::new(src, tcp.source_port()),
        sent,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pooled_buffer_comes_back_with_nothing_a_client_sent() {
        let mut pool = BufferPool::default();
        let buffers = pool.take().expect("a mapping");
        let at = buffers.ptr;
        // SAFETY: no socket holds these halves; they end before `buffers` goes back.
        let (rx, _) = unsafe { buffers.halves() };
        rx[..13].copy_from_slice(b"PASS secret\r\n");
        rx[RX_BUFFER - 1] = 0xff;
        pool.give(buffers);
        let again = pool.take().expect("pooled");
        assert_eq!(again.ptr, at, "the same mapping, reused");
        // SAFETY: as above.
        let (rx, _) = unsafe { again.halves() };
        assert!(rx.iter().all(|&b| b == 0));
    }
}
