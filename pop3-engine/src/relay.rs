//! The transparent relay: every byte passes unchanged in both directions.
//!
//! Each connection goes through the [`Gate`], which reads both streams: to refuse what a
//! subscriber must not say to a server that trusts the router, to match pipelined
//! responses to their commands, and to see when the session stops being POP3 (after
//! `+OK` to STLS the stream is TLS). Its memory bound is the gate's, about 17 KB.

use std::time::Instant;

use hashbrown::HashMap;

use crate::{
    gate::Gate,
    session::{Action, ConnId, ConnInfo, Event, Output, Pop3Engine},
};

/// The transparent relay as a [`Pop3Engine`]: no attenuation, no local answers.
#[derive(Debug, Default)]
pub struct RelayEngine {
    conns: HashMap<ConnId, Gate>,
}

impl RelayEngine {
    /// An engine with no connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of connections not yet released with [`Pop3Engine::close`].
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

impl Pop3Engine for RelayEngine {
    fn open(&mut self, conn: ConnId, _info: ConnInfo, _now: Instant, out: &mut Vec<Output>) {
        self.conns.insert(conn, Gate::before_greeting());
        out.push(Output {
            conn,
            action: Action::ConnectUpstream,
        });
    }

    fn handle(&mut self, conn: ConnId, event: Event<'_>, _now: Instant, out: &mut Vec<Output>) {
        let Some(gate) = self.conns.get_mut(&conn).filter(|g| !g.is_closed()) else {
            return;
        };
        let mut actions = Vec::new();
        match event {
            Event::ClientData(data) => gate.client_data(data, &mut actions),
            Event::UpstreamConnected => gate.upstream_connected(&mut actions),
            Event::UpstreamData(data) => gate.server_data(data, &mut actions),
            Event::ClientClosed => gate.client_closed(&mut actions),
            Event::UpstreamClosed => gate.close(&mut actions),
            Event::UpstreamFailed => gate.upstream_failed(&mut actions),
            // The relay asks the cache nothing.
            Event::Cached(_) => {}
        }
        out.extend(actions.into_iter().map(|action| Output { conn, action }));
    }

    fn close(&mut self, conn: ConnId, _now: Instant) {
        self.conns.remove(&conn);
    }

    fn next_timeout(&self) -> Option<Instant> {
        // The mail server runs its own autologout timer; the relay has none.
        None
    }

    fn on_timeout(&mut self, _now: Instant, _out: &mut Vec<Output>) {}
}
