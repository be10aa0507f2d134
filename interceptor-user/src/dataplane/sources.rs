//! Per-subscriber limits on new connections.
//!
//! `--max-conns` bounds the whole table, so without these one subscriber could take every
//! slot (with open connections, with half-open ones, or with SYNs faster than the
//! handshake timeout frees them) and lock everyone else out. A SYN over any of them is
//! refused with an RST and counted by reason.
//!
//! Bounded: a source has an entry only while it has a connection or its SYN budget is
//! still refilling (entries are created only for accepted SYNs and swept every second),
//! so there are at most `--max-conns` plus the sources of the last few seconds.

use std::{net::IpAddr, time::Instant};

use hashbrown::HashMap;

/// The per-source limits (`0` switches one off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimits {
    /// Connections open at once, half-open ones included.
    pub max_conns: u32,
    /// Connections whose handshake has not completed.
    pub max_half_open: u32,
    /// New connections per second (a bucket of this many, refilled continuously).
    pub syn_rate: u32,
}

/// Why a SYN was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Conns,
    HalfOpen,
    Rate,
}

#[derive(Debug)]
struct Source {
    conns: u32,
    half_open: u32,
    tokens: f64,
    refilled: Instant,
}

/// Connection counts and SYN budgets by client address.
#[derive(Debug)]
pub struct Sources {
    limits: SourceLimits,
    table: HashMap<IpAddr, Source>,
}

impl Sources {
    pub fn new(limits: SourceLimits) -> Self {
        Self {
            limits,
            table: HashMap::new(),
        }
    }

    /// Decides on a SYN from `ip`; an accepted one counts as a half-open connection.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let limits = self.limits;
        let rate = f64::from(limits.syn_rate);
        if let Some(source) = self.table.get_mut(&ip) {
            if limits.syn_rate > 0 {
                let elapsed = now.duration_since(source.refilled).as_secs_f64();
                source.tokens = (source.tokens + elapsed * rate).min(rate);
                source.refilled = now;
                if source.tokens < 1.0 {
                    return Err(Refusal::Rate);
                }
            }
            if limits.max_conns > 0 && source.conns >= limits.max_conns {
                return Err(Refusal::Conns);
            }
            if limits.max_half_open > 0 && source.half_open >= limits.max_half_open {
                return Err(Refusal::HalfOpen);
            }
            source.tokens -= 1.0;
            source.conns += 1;
            source.half_open += 1;
            return Ok(());
        }
        // A first SYN always fits (every limit is at least 1 when set).
        self.table.insert(
            ip,
            Source {
                conns: 1,
                half_open: 1,
                tokens: rate - 1.0,
                refilled: now,
            },
        );
        Ok(())
    }

    /// The handshake of one of `ip`'s connections completed.
    pub fn established(&mut self, ip: IpAddr) {
        if let Some(source) = self.table.get_mut(&ip) {
            source.half_open = source.half_open.saturating_sub(1);
        }
    }

    /// One of `ip`'s connections ended (`half_open`: before its handshake completed).
    pub fn closed(&mut self, ip: IpAddr, half_open: bool) {
        if let Some(source) = self.table.get_mut(&ip) {
            source.conns = source.conns.saturating_sub(1);
            if half_open {
                source.half_open = source.half_open.saturating_sub(1);
            }
        }
    }

    /// Forgets sources without connections whose SYN budget is full again.
    pub fn sweep(&mut self, now: Instant) {
        let rate = f64::from(self.limits.syn_rate);
        self.table.retain(|_, s| {
            let refilled = s.tokens + now.duration_since(s.refilled).as_secs_f64() * rate;
            s.conns > 0 || (rate > 0.0 && refilled < rate)
        });
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 8));

    fn sources(max_conns: u32, max_half_open: u32, syn_rate: u32) -> Sources {
        Sources::new(SourceLimits {
            max_conns,
            max_half_open,
            syn_rate,
        })
    }

    #[test]
    fn half_open_connections_are_capped_per_source() {
        let now = Instant::now();
        let mut s = sources(10, 2, 0);
        assert_eq!(s.admit(A, now), Ok(()));
        assert_eq!(s.admit(A, now), Ok(()));
        assert_eq!(s.admit(A, now), Err(Refusal::HalfOpen));
        assert_eq!(s.admit(B, now), Ok(()), "another source is not affected");
        s.established(A);
        assert_eq!(s.admit(A, now), Ok(()));
    }

    #[test]
    fn open_connections_are_capped_per_source() {
        let now = Instant::now();
        let mut s = sources(2, 0, 0);
        for _ in 0..2 {
            s.admit(A, now).unwrap();
            s.established(A);
        }
        assert_eq!(s.admit(A, now), Err(Refusal::Conns));
        s.closed(A, false);
        assert_eq!(s.admit(A, now), Ok(()));
    }

    #[test]
    fn syns_per_second_are_capped_per_source() {
        let now = Instant::now();
        let mut s = sources(0, 0, 3);
        for _ in 0..3 {
            s.admit(A, now).unwrap();
        }
        assert_eq!(s.admit(A, now), Err(Refusal::Rate));
        assert_eq!(s.admit(A, now + Duration::from_millis(400)), Ok(()));
        assert_eq!(
            s.admit(A, now + Duration::from_millis(400)),
            Err(Refusal::Rate)
        );
    }

    #[test]
    fn idle_sources_are_forgotten() {
        let now = Instant::now();
        let mut s = sources(4, 4, 2);
        s.admit(A, now).unwrap();
        s.sweep(now + Duration::from_secs(5));
        assert_eq!(s.tracked(), 1, "it still has a connection");
        s.closed(A, true);
        s.sweep(now);
        assert_eq!(s.tracked(), 1, "its budget is still refilling");
        s.sweep(now + Duration::from_secs(5));
        assert_eq!(s.tracked(), 0);
        let mut no_rate = sources(4, 4, 0);
        no_rate.admit(A, now).unwrap();
        no_rate.closed(A, true);
        no_rate.sweep(now);
        assert_eq!(no_rate.tracked(), 0);
    }
}
