//! A passed-through RETR or TOP served from the edge cache once the server's UIDL and size
//! match the cached copy; DELEs remembered until the QUIT commits them (the rules are in
//! [`super::super::edge_cache`]).

use std::time::Instant;

use super::{Session, Step};
use crate::{
    attenuation::{
        Shared,
        edge_cache::{self, Numbering},
    },
    codec::{Command, Expect, Verb},
    session::Action,
};

impl Session {
    /// A passed-through command with the edge cache on: RETR, TOP and DELE of a message
    /// first learn the server's UIDL (and, for RETR and TOP, size) of it, from the
    /// session's listing (asked at the first RETR or TOP) or from the server; see
    /// [`edge_cache`].
    pub(super) fn through_cache(&mut self, line: &[u8], cmd: &Command<'_>) {
        let fetch = match cmd.verb {
            Verb::Retr => edge_cache::message_number(cmd.rest).map(|n| (n, None)),
            Verb::Top => edge_cache::top_arguments(cmd.rest).map(|(n, lines)| (n, Some(lines))),
            _ => None,
        };
        if let Some((n, top)) = fetch {
            if matches!(self.numbering, Numbering::Unknown) {
                self.numbering = Numbering::asking();
                self.steps.extend([
                    Step::CacheList { uidl: true },
                    Step::CacheList { uidl: false },
                ]);
            }
            return self.steps.extend([
                Step::CacheId {
                    n: n.to_vec(),
                    dele: false,
                },
                Step::CacheSize { n: n.to_vec() },
                Step::FromCache {
                    line: line.to_vec(),
                    top,
                },
            ]);
        }
        let n = edge_cache::message_number(cmd.rest).map(<[u8]>::to_vec);
        match (cmd.verb, n) {
            (Verb::Dele, Some(n)) => self.steps.push_back(Step::CacheId { n, dele: true }),
            (Verb::Rset, _) => self.cache_deleted.clear(),
            _ => {}
        }
        self.steps.push_back(Step::Relay {
            line: line.to_vec(),
            expect: cmd.expect(),
        });
    }

    /// The front step, a `UIDL n` or `LIST n`, answered from the session's complete
    /// listing without asking the server; `false` when there is none.
    pub(super) fn answer_from_listing(&mut self) -> bool {
        let (n, dele) = match self.steps.front() {
            Some(Step::CacheId { n, dele }) => (n, Some(*dele)),
            Some(Step::CacheSize { n }) => (n, None),
            _ => return false,
        };
        let Some(found) = self.numbering.message(n) else {
            return false;
        };
        let n = n.clone();
        match dele {
            Some(dele) => {
                let uidl = found.map(|(uidl, _)| uidl.to_vec());
                self.learn_uidl(&n, uidl.as_deref(), dele);
            }
            None => self.lookup.size = found.map(|(_, size)| size),
        }
        self.steps.pop_front();
        true
    }

    /// The server's unique-id of message `n` (`None`: it named none): remembered for a
    /// DELE (`dele`), looked up for a RETR or TOP unless this session deleted `n`.
    pub(super) fn learn_uidl(&mut self, n: &[u8], uidl: Option<&[u8]>, dele: bool) {
        if dele {
            self.cache_deleted.push(n, uidl);
        } else if !self.cache_deleted.has(n) {
            self.lookup.uidl = uidl.map(<[u8]>::to_vec);
        }
    }

    /// The username the edge cache files this session's mail under, as the client
    /// sent it.
    pub(super) fn cache_user(&self) -> Vec<u8> {
        self.user.as_deref().unwrap_or_default().to_vec()
    }

    /// The daemon's answer to [`Action::CacheRead`]: the RETR or TOP in flight is answered
    /// from the edge, or relayed to the server.
    pub fn cached(
        &mut self,
        message: Option<&[u8]>,
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if !(self.in_flight && matches!(self.steps.front(), Some(Step::FromCache { .. }))) {
            return;
        }
        self.in_flight = false;
        let Some(Step::FromCache { line, top }) = self.steps.pop_front() else {
            unreachable!("checked above");
        };
        match message {
            Some(message) => out.push(Action::ToClient(edge_cache::fetch_answer(message, top))),
            None => {
                self.steps.push_front(Step::Relay {
                    line,
                    expect: Expect::MultiOnOk,
                });
            }
        }
        self.pump(sh, now, out);
    }
}
