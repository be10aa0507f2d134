//! The userspace TCP stack: a smoltcp `Interface` that terminates intercepted flows while
//! answering as the mail server's address.
//!
//! `Medium::Ip` with `any_ip`: the dataplane strips the link-layer header before a packet
//! gets here and puts a mirrored one back on the way out, so smoltcp never ARPs (an ARP
//! reply would go to the kernel, not to us). A listening socket is created for the exact
//! destination of each SYN just before the SYN is processed.
//!
//! smoltcp scans its socket set linearly for every packet, so one `Stack` should hold a
//! few hundred connections; more connections mean more `Stack` shards chosen by flow hash.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::{
    iface::{Config, Interface, SocketHandle, SocketSet},
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
pub const RX_BUFFER: usize = 16 * 1024;
pub const TX_BUFFER: usize = 64 * 1024;

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
        // Frames from a veth peer carry CHECKSUM_PARTIAL TCP checksums: never verify on
        // RX, always compute on TX.
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
    sockets: SocketSet<'static>,
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
            device,
        }
    }

    /// Adds a socket listening on exactly `server`, for the SYN about to be processed.
    pub fn listen(&mut self, server: SocketAddr) -> SocketHandle {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
        );
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
        self.sockets.add(socket)
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

    /// Lets smoltcp send what its sockets have queued (data, ACKs, retransmissions).
    pub fn egress(&mut self, now: Instant) {
        self.iface
            .poll_egress(now, &mut self.device, &mut self.sockets);
    }

    /// Hands every packet smoltcp produced to `send`, in order.
    pub fn drain_tx(&mut self, mut send: impl FnMut(&[u8])) {
        for packet in self.device.tx.drain(..) {
            send(&packet);
            self.device.spare.push(packet);
        }
        // Keep a small pool, not every buffer a burst ever needed.
        self.device.spare.truncate(256);
    }

    pub fn socket(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    pub fn remove(&mut self, handle: SocketHandle) {
        self.sockets.remove(handle);
    }

    /// How long until smoltcp has timers to run (retransmissions, delayed ACKs).
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        self.iface.poll_delay(now, &self.sockets)
    }
}

/// The client end of an outgoing IP packet: its destination address and TCP port.
pub fn packet_client(ip_packet: &[u8]) -> Option<SocketAddr> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let packet = SlicedPacket::from_ip(ip_packet).ok()?;
    let addr = match packet.net? {
        NetSlice::Ipv4(ip) => IpAddr::V4(ip.header().destination_addr()),
        NetSlice::Ipv6(ip) => IpAddr::V6(ip.header().destination_addr()),
        NetSlice::Arp(_) => return None,
    };
    match packet.transport? {
        TransportSlice::Tcp(tcp) => Some(SocketAddr::new(addr, tcp.destination_port())),
        _ => None,
    }
}
