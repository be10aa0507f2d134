//! Fixtures for the privileged end-to-end tests of pop3-interceptor.
//!
//! - [`Topology`]: client, router and mail-server network namespaces joined by veths
//!   (198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32 only), removed on drop.
//! - [`Dovecot`]: a real Dovecot in the server namespace with its own config folder,
//!   passwd-file users, Maildir storage, a self-signed certificate and readable logs.
//! - [`clients`]: curl, Python poplib, fetchmail, openssl and raw TCP sessions run from
//!   the client namespace.
//! - [`Interceptor`]: the daemon under test, attached to the router's `rc0`.
//! - [`raw`]: crafted Ethernet frames sent and read on an `AF_PACKET` socket.
//! - [`Env`]: the three together (`Env::relay()`, `Env::attenuating(interval)`, ...) with
//!   the client sessions most tests share; [`prometheus`] reads the daemon's metrics.
//!
//! Everything is bounded in time, started processes are killed by pid, and a new run removes
//! what a killed run left behind. The tests must run as root, one at a time:
//! `cargo test -p pop3-interceptor-e2e -- --test-threads=1` (or `cargo xtask test`).

pub mod clients;
pub mod dovecot;
pub mod env;
pub mod interceptor;
pub mod prometheus;
pub mod raw;
pub mod topology;
pub mod util;

pub use clients::{
    FetchmailOptions, FetchmailResult, PopTranscript, PoplibOptions, RawReply, RawSession,
};
pub use dovecot::{Dovecot, DovecotOptions, LoginRecord};
pub use env::Env;
pub use interceptor::{Interceptor, InterceptorOptions};
pub use topology::{Node, Topology, TopologyOptions};
pub use util::{ChildGuard, CmdOutput, TempDir};
