//! A passed-through RETR or TOP served from the edge cache once the server's UIDL and size
//! match the cached copy; DELEs remembered until the QUIT commits them (the rules are in
//! [`super::super::edge_cache`]).

use super::*;

impl Session {
    /// A passed-through command with the edge cache on: RETR, TOP and DELE of a message
    /// first ask the server its UIDL (and, for RETR and TOP, size); see [`edge_cache`].
    pub(super) fn through_cache(&mut self, line: &[u8], cmd: &Command<'_>) {
        let fetch = match cmd.verb {
            Verb::Retr => edge_cache::message_number(cmd.rest).map(|n| (n, None)),
            Verb::Top => edge_cache::top_arguments(cmd.rest).map(|(n, lines)| (n, Some(lines))),
            _ => None,
        };
        if let Some((n, top)) = fetch {
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
