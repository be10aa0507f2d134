//! Crafted Ethernet frames from a namespace: an `AF_PACKET` socket on one interface that
//! sends whatever bytes a test builds and reads back what arrives, bounded in time.
//!
//! The attack tests need frames no kernel TCP stack would send (bad checksums, malformed
//! IPv4 options, spoofed sources, QinQ tags, RSTs with chosen sequence numbers). Spoofed
//! sources must come from 198.51.100.0/24 (the client's network) and destinations stay
//! inside the topology's networks or loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use crate::topology::{HOST_IFACE, Node, ROUTER_CLIENT_IFACE, Topology, in_netns};

/// `ETH_P_ALL` in network byte order, as `socket(2)` and `sockaddr_ll` want it.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// An `AF_PACKET` socket bound to one interface of a namespace.
pub struct RawLink {
    fd: OwnedFd,
    ifindex: i32,
    /// The interface's own MAC.
    pub mac: [u8; 6],
}

impl RawLink {
    /// A raw socket on the client's `eth0`.
    pub fn client(topo: &Topology) -> Result<Self> {
        Self::open(topo, Node::Client, HOST_IFACE)
    }

    pub fn open(topo: &Topology, node: Node, iface: &str) -> Result<Self> {
        let mac = iface_mac(topo, node, iface)?;
        let name = std::ffi::CString::new(iface)?;
        let (fd, ifindex) = in_netns(topo.ns(node), move || -> Result<(OwnedFd, i32)> {
            // SAFETY: plain socket(2); the fd is owned below.
            let raw =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL_BE)) };
            if raw < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            // SAFETY: a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            if ifindex == 0 {
                bail!("no interface {name:?}");
            }
            // SAFETY: zeroed sockaddr_ll is valid; filled below.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL_BE;
            sll.sll_ifindex = ifindex;
            // SAFETY: a valid sockaddr_ll of the stated size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc != 0 {
                bail!("bind AF_PACKET: {}", std::io::Error::last_os_error());
            }
            let on: libc::c_int = 1;
            // SAFETY: an int option of the stated size.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_AUXDATA,
                    (&raw const on).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            if rc != 0 {
                bail!("PACKET_AUXDATA: {}", std::io::Error::last_os_error());
            }
            // Room for the answers to a burst of crafted frames (root may exceed rmem_max).
            let size: libc::c_int = 8 << 20;
            // SAFETY: an int option of the stated size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&raw const size).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            Ok((fd, ifindex))
        })??;
        Ok(Self { fd, ifindex, mac })
    }

    /// Sends one frame as it is.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: zeroed sockaddr_ll is valid; filled below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: buffer and address are valid for the given lengths.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            bail!("sendto: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads arriving frames (never our own outgoing ones) until `pick` returns `Some` or
    /// `timeout` passes.
    pub fn recv_until<T>(
        &self,
        timeout: Duration,
        mut pick: impl FnMut(&[u8]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = left.as_millis().clamp(1, 1000) as i32;
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, millis) } <= 0 {
                continue;
            }
            let Some(frame) = self.read_frame(&mut buf) else {
                continue;
            };
            if let Some(found) = pick(&frame) {
                return Some(found);
            }
        }
    }

    /// Throws away every frame queued on the socket (a full receive buffer drops what
    /// arrives next).
    pub fn drain(&self) {
        let mut buf = vec![0u8; 65536];
        // SAFETY: a valid buffer of the given length.
        while unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        } >= 0
        {}
    }

    /// One arriving frame (not our own outgoing ones), with the VLAN tag the kernel took
    /// off into metadata put back in front (the receive path always strips the outer tag).
    fn read_frame(&self, buf: &mut [u8]) -> Option<Vec<u8>> {
        // SAFETY: zeroed sockaddr_ll, iovec, msghdr and control buffer are valid; filled below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: see above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut sll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: every pointer in `msg` is valid for its length.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 12 || sll.sll_pkttype == libc::PACKET_OUTGOING {
            return None;
        }
        let bytes = &buf[..n as usize];
        // SAFETY: walking the control messages recvmsg wrote, within msg_controllen.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: a control message header inside the buffer.
            let c = unsafe { &*cmsg };
            if c.cmsg_level == libc::SOL_PACKET && c.cmsg_type == libc::PACKET_AUXDATA {
                // SAFETY: PACKET_AUXDATA carries a tpacket_auxdata (possibly unaligned).
                let aux: libc::tpacket_auxdata =
                    unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                    let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                        aux.tp_vlan_tpid
                    } else {
                        0x8100
                    };
                    let mut frame = bytes[..12].to_vec();
                    frame.extend_from_slice(&tpid.to_be_bytes());
                    frame.extend_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                    frame.extend_from_slice(&bytes[12..]);
                    return Some(frame);
                }
            }
            // SAFETY: as above.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        Some(bytes.to_vec())
    }

    /// Waits for a TCP segment from `from` to `to`.
    pub fn recv_tcp(&self, from: SocketAddrV4, to: SocketAddrV4, timeout: Duration) -> Option<Seg> {
        self.recv_until(timeout, |f| {
            Seg::parse(f).filter(|s| s.src == from && s.dst == to)
        })
    }
}

/// The MAC of `iface` in `node`.
pub fn iface_mac(topo: &Topology, node: Node, iface: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{iface}/address");
    let out = topo
        .exec(node, &["cat", &path])?
        .check(&format!("cat {path}"))?;
    parse_mac(out.stdout_str().trim())
}

pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("not a MAC: {text:?}");
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("not a MAC: {text:?}"))?;
    }
    Ok(mac)
}

pub fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The router's client-facing MAC: the destination of every frame a subscriber sends.
pub fn router_mac(topo: &Topology) -> Result<[u8; 6]> {
    iface_mac(topo, Node::Router, ROUTER_CLIENT_IFACE)
}

/// TCP flags of a crafted segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

impl Flags {
    pub const SYN: Flags = Flags {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
        psh: false,
    };
    pub const ACK: Flags = Flags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
        psh: false,
    };
    pub const RST: Flags = Flags {
        syn: false,
        ack: false,
        fin: false,
        rst: true,
        psh: false,
    };
    pub const PSH_ACK: Flags = Flags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
        psh: true,
    };
    pub const FIN_ACK: Flags = Flags {
        syn: false,
        ack: true,
        fin: true,
        rst: false,
        psh: false,
    };
}

/// An IPv4 TCP segment, crafted or received, with the link-layer details tests care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seg {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// VLAN ids, outer first.
    pub vlans: Vec<u16>,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub flags: Flags,
    pub window: u16,
    pub payload: Vec<u8>,
}

impl Seg {
    /// A SYN from `src` (sent with `src_mac`) to `dst` (at `dst_mac`).
    pub fn syn(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: SocketAddrV4,
        dst: SocketAddrV4,
        seq: u32,
    ) -> Self {
        Self {
            src_mac,
            dst_mac,
            vlans: Vec::new(),
            src,
            dst,
            seq,
            ack: 0,
            flags: Flags::SYN,
            window: 64240,
            payload: Vec::new(),
        }
    }

    /// The same flow, other sequence numbers, flags and payload.
    pub fn next(&self, seq: u32, ack: u32, flags: Flags, payload: &[u8]) -> Self {
        Self {
            seq,
            ack,
            flags,
            payload: payload.to_vec(),
            ..self.clone()
        }
    }

    /// The Ethernet frame, with correct checksums.
    pub fn frame(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let tcp = |ip: etherparse::PacketBuilderStep<etherparse::IpHeaders>| {
            let mut t = ip.tcp(self.src.port(), self.dst.port(), self.seq, self.window);
            if self.flags.syn {
                t = t.syn();
            }
            if self.flags.fin {
                t = t.fin();
            }
            if self.flags.rst {
                t = t.rst();
            }
            if self.flags.psh {
                t = t.psh();
            }
            if self.flags.ack {
                t = t.ack(self.ack);
            }
            t
        };
        let (s, d) = (self.src.ip().octets(), self.dst.ip().octets());
        let builder = match self.vlans.as_slice() {
            [] => tcp(eth.ipv4(s, d, 64)),
            [id] => tcp(eth.single_vlan((*id).try_into().unwrap()).ipv4(s, d, 64)),
            [outer, inner, ..] => tcp(eth
                .double_vlan((*outer).try_into().unwrap(), (*inner).try_into().unwrap())
                .ipv4(s, d, 64)),
        };
        let mut out = Vec::with_capacity(builder.size(self.payload.len()));
        builder.write(&mut out, &self.payload).expect("a frame");
        out
    }

    /// Parses an Ethernet frame holding an IPv4 TCP segment.
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let p = SlicedPacket::from_ethernet(frame).ok()?;
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            return None;
        };
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            return None;
        };
        let vlans = p
            .link_exts
            .iter()
            .filter_map(|e| match e {
                etherparse::LinkExtSlice::Vlan(v) => Some(v.vlan_identifier().value()),
                _ => None,
            })
            .collect();
        Some(Self {
            dst_mac: frame[..6].try_into().ok()?,
            src_mac: frame[6..12].try_into().ok()?,
            vlans,
            src: SocketAddrV4::new(ip.header().source_addr(), tcp.source_port()),
            dst: SocketAddrV4::new(ip.header().destination_addr(), tcp.destination_port()),
            seq: tcp.sequence_number(),
            ack: tcp.acknowledgment_number(),
            flags: Flags {
                syn: tcp.syn(),
                ack: tcp.ack(),
                fin: tcp.fin(),
                rst: tcp.rst(),
                psh: tcp.psh(),
            },
            window: tcp.window_size(),
            payload: tcp.payload().to_vec(),
        })
    }

    pub fn is_syn_ack(&self) -> bool {
        self.flags.syn && self.flags.ack && !self.flags.rst
    }
}

/// A made-up subscriber address in the client's network (198.51.100.0/24); `host` must
/// not be a topology address (1 or 2).
pub fn subscriber(host: u8) -> Ipv4Addr {
    assert!(host > 2, "198.51.100.1 and .2 belong to the topology");
    Ipv4Addr::new(198, 51, 100, host)
}

/// Tells the router that `ip` lives at `mac` on its client-facing interface, as ARP would
/// for a real subscriber (crafted sources have no stack to answer ARP).
pub fn add_neighbour(topo: &Topology, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
    topo.exec(
        Node::Router,
        &[
            "ip",
            "neigh",
            "replace",
            &ip.to_string(),
            "lladdr",
            &mac_text(mac),
            "dev",
            ROUTER_CLIENT_IFACE,
            "nud",
            "permanent",
        ],
    )?
    .check("ip neigh replace")?;
    Ok(())
}

/// A client connection made of crafted frames: the handshake done, sequence numbers kept.
pub struct RawConn<'a> {
    pub link: &'a RawLink,
    /// The SYN this connection began with (addresses, MACs, tags).
    pub base: Seg,
    /// Our next sequence number.
    pub snd_nxt: u32,
    /// The next sequence number we expect from the server.
    pub rcv_nxt: u32,
}

impl<'a> RawConn<'a> {
    /// Sends `syn` and completes the handshake; `None` without a SYN-ACK within `timeout`.
    pub fn connect(link: &'a RawLink, syn: Seg, timeout: Duration) -> Result<Option<Self>> {
        link.send(&syn.frame())?;
        let Some(reply) = link.recv_tcp(syn.dst, syn.src, timeout) else {
            return Ok(None);
        };
        if !reply.is_syn_ack() || reply.ack != syn.seq.wrapping_add(1) {
            bail!("expected a SYN-ACK for {}, got {reply:?}", syn.seq);
        }
        let conn = Self {
            link,
            snd_nxt: syn.seq.wrapping_add(1),
            rcv_nxt: reply.seq.wrapping_add(1),
            base: syn,
        };
        conn.send(Flags::ACK, &[])?;
        Ok(Some(conn))
    }

    /// Sends a segment at our current sequence numbers (they do not move: see `send_data`).
    pub fn send(&self, flags: Flags, payload: &[u8]) -> Result<()> {
        self.send_at(self.snd_nxt, flags, payload)
    }

    pub fn send_at(&self, seq: u32, flags: Flags, payload: &[u8]) -> Result<()> {
        self.link
            .send(&self.base.next(seq, self.rcv_nxt, flags, payload).frame())
    }

    /// Sends `data` and moves our sequence number past it.
    pub fn send_data(&mut self, data: &[u8]) -> Result<()> {
        self.send(Flags::PSH_ACK, data)?;
        self.snd_nxt = self.snd_nxt.wrapping_add(data.len() as u32);
        Ok(())
    }

    /// Waits for the next segment from the server.
    pub fn recv(&self, timeout: Duration) -> Option<Seg> {
        self.link.recv_tcp(self.base.dst, self.base.src, timeout)
    }

    /// Reads server data (ACKing it) until it contains `needle`; the bytes read.
    pub fn read_until(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(seg) = self.recv(left) else {
                bail!(
                    "no {needle:?} within {timeout:?}; got {:?}",
                    String::from_utf8_lossy(&got)
                );
            };
            if seg.flags.rst {
                bail!("reset while waiting for {needle:?}");
            }
            if seg.seq == self.rcv_nxt && !seg.payload.is_empty() {
                got.extend_from_slice(&seg.payload);
                self.rcv_nxt = self.rcv_nxt.wrapping_add(seg.payload.len() as u32);
                self.send(Flags::ACK, &[])?;
            }
        }
        Ok(String::from_utf8_lossy(&got).into_owned())
    }
}

/// How long a test waits for an answer that must come.
pub const ANSWER: Duration = Duration::from_secs(3);
/// How long a test listens for an answer that must not come.
pub const SILENCE: Duration = Duration::from_millis(1500);

/// The POP3 port of `ip`.
pub fn pop3(ip: Ipv4Addr) -> SocketAddrV4 {
    SocketAddrV4::new(ip, 110)
}

/// Crafted frames from made-up subscriber `host` (198.51.100.`host`), known to the router
/// as a neighbour at the client's MAC.
pub struct Attacker {
    pub link: RawLink,
    pub router_mac: [u8; 6],
    pub ip: Ipv4Addr,
    next_port: u16,
}

impl Attacker {
    pub fn new(topo: &Topology, host: u8) -> Self {
        let link = RawLink::client(topo).unwrap();
        let ip = subscriber(host);
        add_neighbour(topo, ip.into(), link.mac).unwrap();
        Self {
            router_mac: router_mac(topo).unwrap(),
            link,
            ip,
            next_port: 40000,
        }
    }

    /// A SYN from a fresh port of this subscriber to `dst`.
    pub fn syn(&mut self, dst: SocketAddrV4) -> Seg {
        self.next_port += 1;
        let src = SocketAddrV4::new(self.ip, self.next_port);
        Seg::syn(
            self.link.mac,
            self.router_mac,
            src,
            dst,
            1_000_000 + u32::from(self.next_port),
        )
    }

    /// Sends `frame` (built from `syn`) and says whether a SYN-ACK for `syn`'s flow came.
    pub fn syn_acked(&self, syn: &Seg, frame: &[u8], wait: Duration) -> bool {
        self.link.send(frame).unwrap();
        self.link
            .recv_tcp(syn.dst, syn.src, wait)
            .is_some_and(|s| s.is_syn_ack())
    }
}
