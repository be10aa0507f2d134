//! pop3-interceptor: the daemon that attaches to an edge router's subscriber-facing
//! interface and terminates POP3 flows in userspace.
//!
//! - [`ebpf`]: loads and attaches the XDP program, pins its maps.
//! - [`dataplane`]: AF_XDP sockets, the smoltcp stack, the connection table.
//! - [`cache`]: the edge cache of users' mail (`--cache-dir`); [`prefetch`] fills it
//!   in quiet hours.
//! - [`upstream`]: connections to the real mail servers (tokio).
//! - [`settings`]: the config file and flags; [`engine`]: the engine `--mode` picks.
//! - [`metrics`]: the Prometheus endpoint of `run --metrics ADDR`.
//! - [`run`]: puts them together for `pop3-interceptor run`.
//!
//! The POP3 decisions themselves live in the sans-IO `pop3-engine` crate.

pub mod bounded_listener;
pub mod btf_text;
pub mod cache;
pub mod choice;
pub mod cli;
pub mod dataplane;
pub mod detach;
pub mod ebpf;
pub mod engine;
pub mod fanout;
pub mod flow_maps;
pub mod metrics;
pub mod mirror;
pub mod notify;
pub mod prefetch;
pub mod run;
pub mod settings;
pub mod signals;
pub mod status;
pub mod upstream;
pub mod waker;
