//! A fake dataplane for unit tests: one connection, a fake clock, actions collected.
//!
//! Public only with the `testing` feature, for the fuzz targets; [`model`] holds the
//! model mail server that the property tests and the engine fuzz target share, and
//! [`alloc`] the counting allocator of the measurement binaries.

pub mod alloc;
pub mod model;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::session::{Action, ConnId, ConnInfo, Event, Output, Pop3Engine};

/// The subscriber and mail server every test connection uses (TEST-NET ranges).
pub fn info() -> ConnInfo {
    ConnInfo {
        client: "198.51.100.7:40000".parse::<SocketAddr>().unwrap(),
        server: "203.0.113.5:110".parse::<SocketAddr>().unwrap(),
    }
}

/// Drives an engine the way the dataplane does, with time under the test's control.
pub struct Harness<E> {
    /// The engine under test.
    pub engine: E,
    /// The fake clock.
    pub now: Instant,
}

impl<E: Pop3Engine> Harness<E> {
    /// A harness around `engine`, its clock at the real now.
    pub fn new(engine: E) -> Self {
        Self {
            engine,
            now: Instant::now(),
        }
    }

    /// Opens connection `conn` and returns its first actions.
    pub fn open(&mut self, conn: ConnId) -> Vec<Action> {
        let mut out = Vec::new();
        self.engine.open(conn, info(), self.now, &mut out);
        actions_of(conn, out)
    }

    /// Feeds `event` for `conn` and returns its actions.
    pub fn event(&mut self, conn: ConnId, event: Event<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        self.engine.handle(conn, event, self.now, &mut out);
        actions_of(conn, out)
    }

    /// Feeds client bytes.
    pub fn client(&mut self, conn: ConnId, bytes: &[u8]) -> Vec<Action> {
        self.event(conn, Event::ClientData(bytes))
    }

    /// Feeds server bytes.
    pub fn server(&mut self, conn: ConnId, bytes: &[u8]) -> Vec<Action> {
        self.event(conn, Event::UpstreamData(bytes))
    }

    /// Moves the clock and runs whatever timers became due.
    pub fn advance(&mut self, by: Duration) -> Vec<Output> {
        self.now += by;
        let mut out = Vec::new();
        if self.engine.next_timeout().is_some_and(|t| t <= self.now) {
            self.engine.on_timeout(self.now, &mut out);
        }
        out
    }
}

fn actions_of(conn: ConnId, out: Vec<Output>) -> Vec<Action> {
    assert!(
        out.iter().all(|o| o.conn == conn),
        "action for another connection: {out:?}"
    );
    out.into_iter().map(|o| o.action).collect()
}

/// Shorthand for `Action::ToClient`.
pub fn to_client(bytes: &[u8]) -> Action {
    Action::ToClient(bytes.to_vec())
}

/// Shorthand for `Action::ToUpstream`.
pub fn to_upstream(bytes: &[u8]) -> Action {
    Action::ToUpstream(bytes.to_vec())
}
