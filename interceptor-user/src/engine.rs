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

impl Engine {
    /// The engine `settings.mode` asks for. The attenuation engine's verifier salt is
    /// drawn from the OS here; without randomness the daemon does not start.
    pub fn new(settings: &Settings) -> Result<Self, getrandom::Error> {
        Ok(match settings.mode {
            EngineMode::Attenuate => {
                let mut keys = [0u64; 4];
                for key in &mut keys {
                    *key = getrandom::u64()?;
                }
                Engine::Attenuate(Box::new(AttenuationEngine::new(
                    settings.engine.clone(),
                    Salt::new(keys),
                    Instant::now(),
                )))
            }
            EngineMode::Relay => Engine::Relay(RelayEngine::new()),
        })
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
