//! RFC 5961 checks on segments of established connections, before smoltcp sees them.
//!
//! smoltcp 0.14 closes a socket on any in-window RST, exact or not, so a blind attacker
//! who guesses a sequence number inside the window could reset another subscriber's
//! session. Here an RST counts only at exactly the next expected sequence number; an
//! in-window one gets a challenge ACK (the real peer answers it with an exact RST), and
//! so does any SYN on a synchronized connection. A segment whose ACK field acknowledges
//! data we never sent, or data older than the peer's largest window, is dropped with a
//! challenge ACK. Out-of-window data is left to smoltcp, which drops it and ACKs.
//!
//! smoltcp does not expose its sequence variables, so [`SeqTrack`] follows them from the
//! segments it sends (our last ACK is its RCV.NXT, up to the ACK delay) and from the ACKs
//! it accepts.

use std::time::{Duration, Instant};

use super::frame::TcpMeta;

/// What the dataplane knows of one connection's sequence space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqTrack {
    /// Our SYN-ACK went out: the fields below mean something.
    pub known: bool,
    /// The ACK number of our last segment.
    pub rcv_nxt: u32,
    /// Our advertised window, in bytes.
    pub rcv_wnd: u32,
    /// Our window scale shift (from our SYN-ACK).
    pub rcv_shift: u8,
    /// One past the last sequence number we sent.
    pub snd_nxt: u32,
    /// The highest ACK the client sent that we accepted.
    pub snd_una: u32,
    /// The client's window scale shift (from its SYN).
    pub peer_shift: u8,
}

/// An outgoing segment, as far as the tracker is concerned.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub seq: u32,
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub window: u16,
    pub payload_len: u32,
    pub window_shift: Option<u8>,
}

impl SeqTrack {
    /// Follows a segment smoltcp sent on this connection.
    pub fn sent(&mut self, s: &Sent) {
        if s.syn {
            self.rcv_shift = s.window_shift.unwrap_or(0);
            self.snd_una = s.seq;
            self.snd_nxt = s.seq;
            self.known = true;
        }
        let end = s
            .seq
            .wrapping_add(s.payload_len + u32::from(s.syn) + u32::from(s.fin));
        if seq_lt(self.snd_nxt, end) {
            self.snd_nxt = end;
        }
        if let Some(ack) = s.ack {
            self.rcv_nxt = ack;
            // A SYN's window is never scaled (RFC 7323 2.2).
            let shift = if s.syn { 0 } else { self.rcv_shift };
            self.rcv_wnd = u32::from(s.window) << shift;
        }
    }

    /// Follows an ACK the client sent that passed [`check`].
    pub fn received(&mut self, seg: &TcpMeta) {
        if seg.has_ack && seq_lt(self.snd_una, seg.ack) {
            self.snd_una = seg.ack;
        }
    }
}

/// What to do with a segment of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to smoltcp.
    Pass,
    /// Drop it and send a challenge ACK (rate limited).
    ChallengeAck,
}

/// Checks a client segment of a synchronized connection (`synchronized`: past the
/// handshake, so a SYN cannot be a retransmission of the first one).
pub fn check(track: &SeqTrack, synchronized: bool, seg: &TcpMeta) -> Verdict {
    if !track.known || !synchronized {
        return Verdict::Pass;
    }
    if seg.rst {
        // RFC 5961 3.2: only the exact next sequence number resets; in the window,
        // challenge; outside it, smoltcp drops it (an ACK would only help a prober).
        let in_window = seq_lt(track.rcv_nxt, seg.seq)
            && seq_lt(seg.seq, track.rcv_nxt.wrapping_add(track.rcv_wnd.max(1)));
        return if in_window {
            Verdict::ChallengeAck
        } else {
            Verdict::Pass
        };
    }
    if seg.syn {
        // RFC 5961 4.2: whatever its sequence number.
        return Verdict::ChallengeAck;
    }
    if seg.has_ack {
        // RFC 5961 5.2: SND.UNA - MAX.SND.WND <= SEG.ACK <= SND.NXT.
        let max_wnd = 65535u32 << track.peer_shift.min(14);
        let oldest = track.snd_una.wrapping_sub(max_wnd);
        if seq_lt(track.snd_nxt, seg.ack) || seq_lt(seg.ack, oldest) {
            return Verdict::ChallengeAck;
        }
    }
    Verdict::Pass
}

/// `a` before `b` in sequence space (RFC 1982 serial arithmetic).
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// RFC 5961 7: at most `per_second` challenge ACKs in total, so they cannot be used to
/// flood or to probe at line rate.
#[derive(Debug)]
pub struct ChallengeLimit {
    per_second: u32,
    window_start: Instant,
    sent: u32,
}

impl ChallengeLimit {
    pub fn new(per_second: u32, now: Instant) -> Self {
        Self {
            per_second,
            window_start: now,
            sent: 0,
        }
    }

    /// Whether one more challenge ACK may go out now.
    pub fn allow(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.sent = 0;
        }
        if self.sent >= self.per_second {
            return false;
        }
        self.sent += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn established() -> SeqTrack {
        let mut t = SeqTrack {
            peer_shift: 7,
            ..SeqTrack::default()
        };
        // SYN-ACK: ISN 5000, acking the client's ISN 999 + 1, window 16384.
        t.sent(&Sent {
            seq: 5000,
            ack: Some(1000),
            syn: true,
            window: 16384,
            ..Sent::default()
        });
        // Greeting: 20 bytes.
        t.sent(&Sent {
            seq: 5001,
            ack: Some(1000),
            window: 16384,
            payload_len: 20,
            ..Sent::default()
        });
        t
    }

    fn seg(seq: u32, ack: Option<u32>) -> TcpMeta {
        TcpMeta {
            seq,
            ack: ack.unwrap_or(0),
            has_ack: ack.is_some(),
            ..TcpMeta::default()
        }
    }

    #[test]
    fn follows_what_smoltcp_sends() {
        let t = established();
        assert_eq!((t.rcv_nxt, t.rcv_wnd, t.snd_nxt), (1000, 16384, 5021));
    }

    #[test]
    fn only_an_exact_rst_passes() {
        let t = established();
        let rst = |seq| TcpMeta {
            rst: true,
            ..seg(seq, None)
        };
        assert_eq!(check(&t, true, &rst(1000)), Verdict::Pass);
        assert_eq!(check(&t, true, &rst(1001)), Verdict::ChallengeAck);
        assert_eq!(check(&t, true, &rst(1000 + 16383)), Verdict::ChallengeAck);
        // Out of the window: smoltcp drops it.
        assert_eq!(check(&t, true, &rst(1000 + 16384)), Verdict::Pass);
        // During the handshake smoltcp decides.
        assert_eq!(check(&t, false, &rst(1001)), Verdict::Pass);
    }

    #[test]
    fn a_syn_on_an_established_connection_is_challenged() {
        let t = established();
        let syn = TcpMeta {
            syn: true,
            ..seg(77, None)
        };
        assert_eq!(check(&t, true, &syn), Verdict::ChallengeAck);
        assert_eq!(check(&t, false, &syn), Verdict::Pass);
    }

    #[test]
    fn acks_of_unsent_or_ancient_data_are_challenged() {
        let mut t = established();
        assert_eq!(check(&t, true, &seg(1000, Some(5021))), Verdict::Pass);
        assert_eq!(
            check(&t, true, &seg(1000, Some(5022))),
            Verdict::ChallengeAck
        );
        t.received(&seg(1000, Some(5021)));
        assert_eq!(t.snd_una, 5021);
        let ancient = 5021u32.wrapping_sub((65535 << 7) + 1);
        assert_eq!(
            check(&t, true, &seg(1000, Some(ancient))),
            Verdict::ChallengeAck
        );
        assert_eq!(check(&t, true, &seg(1000, Some(5000))), Verdict::Pass);
    }

    #[test]
    fn challenge_acks_are_rate_limited() {
        let start = Instant::now();
        let mut limit = ChallengeLimit::new(2, start);
        assert!(limit.allow(start) && limit.allow(start));
        assert!(!limit.allow(start));
        assert!(limit.allow(start + Duration::from_secs(1)));
    }
}
