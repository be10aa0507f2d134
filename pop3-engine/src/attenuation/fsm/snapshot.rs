//! What a passed-through session learns of the maildrop (the held QUIT's STAT, LIST and
//! UIDL), recorded as the user's view once the QUIT succeeds; and the UIDL check that a
//! snapshot's numbering still holds before a message is fetched.

use std::{sync::Arc, time::Instant};

use super::{Observed, Session, Step};
use crate::{
    attenuation::{
        Shared,
        maildrop::{MAX_MAILDROP, Maildrop},
        table::UserKey,
    },
    codec::trim_eol,
    gate::SERVER_UNAVAILABLE,
    session::Action,
};

impl Session {
    /// The held QUIT's STAT answer: `+OK 0 ...` proves the maildrop empty; otherwise a
    /// snapshot is taken with LIST and UIDL, when the server offers UIDL and this
    /// session deleted nothing.
    pub(super) fn record_stat(&mut self, line: &[u8], ok: bool, sh: &mut Shared, now: Instant) {
        let count = trim_eol(line).split(|&b| b == b' ').nth(1);
        let listing = ok && !self.deleted && sh.caps(self.server()).is_some_and(|c| c.uidl);
        self.observed = match count {
            _ if !ok => None,
            Some(b"0") => Some(Observed::Empty),
            _ if listing => Some(Observed::Listing {
                stat: line.to_vec(),
                list: Vec::new(),
                uidl: Vec::new(),
            }),
            _ => None,
        };
        if matches!(self.observed, Some(Observed::Listing { .. })) {
            self.steps.insert(1, Step::Snapshot { uidl: false });
            self.steps.insert(2, Step::Snapshot { uidl: true });
        } else if self.observed.is_none()
            && let Some(key) = &self.entry
        {
            // What the user had seen is no longer what the server holds.
            sh.table.clear_view(key, now);
        }
    }

    /// Keeps part of a LIST or UIDL answer (`uidl`), bounded by [`MAX_MAILDROP`]: a
    /// larger maildrop gets no snapshot.
    pub(super) fn collect(&mut self, uidl: bool, bytes: &[u8]) {
        if let Some(Observed::Listing {
            stat,
            list,
            uidl: ids,
        }) = &mut self.observed
        {
            let target = if uidl { ids } else { list };
            if stat.len() + target.len() + bytes.len() > MAX_MAILDROP {
                self.observed = None;
            } else {
                target.extend_from_slice(bytes);
            }
        }
    }

    /// The QUIT succeeded: what the session saw becomes the user's view, as of its login.
    pub(super) fn record_view(
        &mut self,
        key: &Arc<UserKey>,
        login: Instant,
        sh: &mut Shared,
        now: Instant,
    ) {
        let maildrop = match self.observed.take() {
            Some(Observed::Empty) => Some(None),
            Some(Observed::Listing { stat, list, uidl }) => {
                Maildrop::new(&stat, &list, &uidl).map(Some)
            }
            None => None,
        };
        match maildrop {
            Some(view) => {
                sh.table.set_view(key, now, login, view);
            }
            None => sh.table.clear_view(key, now),
        }
    }

    /// The server's UIDL before a message command arrived whole: relay the command only
    /// if every message the client was shown still has its number.
    pub(super) fn verified(
        &mut self,
        sh: &mut Shared,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let now_listed = match self.observed.take() {
            Some(Observed::Listing { uidl, .. }) => uidl,
            _ => Vec::new(),
        };
        let same = self
            .shown
            .as_ref()
            .is_some_and(|m| m.still_numbered(&now_listed));
        if same {
            return true;
        }
        tracing::info!(server = %self.server(), "maildrop renumbered since the snapshot");
        if let Some(key) = &self.entry {
            sh.table.clear_view(key, now);
        }
        out.push(Action::ToClient(SERVER_UNAVAILABLE.to_vec()));
        self.finish(sh, now, out, true);
        false
    }
}
