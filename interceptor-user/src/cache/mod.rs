//! The patent's edge cache: users' mail copied to the edge, served from there.
//!
//! - [`store`]: the Maildirs on disk, bounded, checked on every read.

pub mod store;
