#![warn(missing_docs)]
//! The POP3 side of pop3-interceptor, sans-IO.
//!
//! Nothing here touches a socket, a clock or a thread: the dataplane feeds events with
//! the current time and carries out the actions that come back (see [`session`]). This
//! keeps every protocol decision testable without a network.
//!
//! - [`session`]: the contract with the dataplane ([`session::Pop3Engine`]).
//! - [`codec`]: POP3 framing (command lines, responses, multi-line bodies).
//! - [`gate`]: what a subscriber may send to a server that trusts the router; the
//!   pass-through shared by the relay and the attenuation engine.
//! - [`relay`]: the transparent relay, byte for byte.
//! - [`attenuation`]: the patent's state machine and user table.

pub mod attenuation;
pub mod codec;
pub mod gate;
pub mod relay;
pub mod sasl;
pub mod secret;
pub mod session;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
