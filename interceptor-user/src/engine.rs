//! The POP3 engine chosen with `--mode`, behind one type so the dataplane stays generic.

use std::time::Instant;

use pop3_engine::{
    attenuation::{AttenuationEngine, Salt},
    relay::RelayEngine,
    session::{ConnId, ConnInfo, Event, Output, Pop3Engine},
};

use crate::settings::{EngineMode, Settings};

/// Either engine of `pop3-engine`.
pub enum Engine {
    Attenuate(Box<AttenuationEngine>),
    Relay(RelayEngine),
}

/// Users per shard of the table below which it stays in one shard (a small
/// `--table-size` keeps its exact bound and eviction order).
const USERS_PER_SHARD: usize = 256;
/// Most shards of the user table.
const MAX_SHARDS: usize = 64;

impl Engine {
    /// The engine `settings.mode` asks for, one per dataplane worker: attenuation engines
    /// over one user table in shards, so a user learnt by one worker is known to all. The
    /// verifier salt is drawn from the OS here; without randomness the daemon does not
    /// start.
    pub fn for_workers(settings: &Settings, workers: usize) -> Result<Vec<Self>, getrandom::Error> {
        let workers = workers.max(1);
        if settings.mode == EngineMode::Relay {
            return Ok((0..workers)
                .map(|_| Engine::Relay(RelayEngine::new()))
                .collect());
        }
        let mut keys = [0u64; 4];
        for key in &mut keys {
            *key = getrandom::u64()?;
        }
        let salt = Salt::new(keys);
        let config = &settings.engine;
        // One worker never waits for another: one shard. Several: enough shards that two
        // workers seldom want the same one.
        let shards = if workers > 1 {
            (config.table_size / USERS_PER_SHARD).clamp(1, MAX_SHARDS)
        } else {
            1
        };
        let table = AttenuationEngine::table_for(config, salt, Instant::now(), shards);
        Ok((0..workers)
            .map(|_| {
                Engine::Attenuate(Box::new(AttenuationEngine::with_table(
                    config.clone(),
                    salt,
                    table.clone(),
                )))
            })
            .collect())
    }

    /// The attenuation engine, when that is the one running.
    pub fn attenuation(&self) -> Option<&AttenuationEngine> {
        match self {
            Engine::Attenuate(engine) => Some(engine),
            Engine::Relay(_) => None,
        }
    }

    pub fn attenuation_mut(&mut self) -> Option<&mut AttenuationEngine> {
        match self {
            Engine::Attenuate(engine) => Some(engine),
            Engine::Relay(_) => None,
        }
    }

    fn inner(&mut self) -> &mut dyn Pop3Engine {
        match self {
            Engine::Attenuate(engine) => engine.as_mut(),
            Engine::Relay(engine) => engine,
        }
    }
}

impl Pop3Engine for Engine {
    fn open(&mut self, conn: ConnId, info: ConnInfo, now: Instant, out: &mut Vec<Output>) {
        self.inner().open(conn, info, now, out);
    }

    fn handle(&mut self, conn: ConnId, event: Event<'_>, now: Instant, out: &mut Vec<Output>) {
        self.inner().handle(conn, event, now, out);
    }

    fn close(&mut self, conn: ConnId, now: Instant) {
        self.inner().close(conn, now);
    }

    fn next_timeout(&self) -> Option<Instant> {
        match self {
            Engine::Attenuate(engine) => engine.next_timeout(),
            Engine::Relay(engine) => engine.next_timeout(),
        }
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.inner().on_timeout(now, out);
    }
}
