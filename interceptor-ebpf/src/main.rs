//! The two programs for the subscriber-facing interface, over one set of rules and maps
//! ([`classify`]): an XDP program that redirects chosen frames into AF_XDP sockets
//! ([`xdp`]) and a TC classifier that redirects chosen skbs to the daemon's TAP device
//! ([`tc`]). The daemon attaches one of them.
//!
//! TCP segments to an intercepted port (and, when configured, to a mail-server prefix)
//! are taken over. A flow is taken over only from its SYN on: segments of a connection
//! that existed before the daemon attached keep going to the kernel, so attaching never
//! breaks a live session. A SYN's flow goes into `HALF_OPEN` (LRU); the daemon moves it
//! to `FLOWS` once the handshake completes, so a SYN flood can only evict other half-open
//! flows, never a live session. A SYN is taken over only if the kernel's FIB routes its
//! source back out of this interface (both programs run before rp_filter), and its
//! Ethernet header is rewritten to the router's own view (FIB + neighbour table) before
//! the daemon sees it. Destinations in `EXCLUDED_V4`/`EXCLUDED_V6` (loopback, the router
//! itself...) are never taken over. Every miss, every malformed or truncated frame and
//! every frame the daemon has no reader for goes to the kernel: these programs never
//! drop, and a dead daemon means traffic flows to the server as if we were not there
//! (fail-open).
#![no_std]
#![no_main]

mod classify;
mod maps;
mod tc;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
