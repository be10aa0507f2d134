//! The simulated mail client: one session the way a client runs it.

use std::collections::VecDeque;

use super::{Waiting, name};

/// A mail client's session: USER, PASS, STAT, then (keeping mail) UIDL and RETR of the
/// new ones, or RETR and DELE of every message, then QUIT.
pub struct Client {
    user: u32,
    keep: bool,
    pub seen_uid: u32,
    pub input: Vec<u8>,
    pub closed: bool,
    step: Step,
    /// Numbers of the messages still to fetch.
    todo: VecDeque<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Greeting,
    User,
    Pass,
    Stat,
    Uidl,
    Retr(usize),
    Dele(usize),
    Quit,
    Done,
}

impl Client {
    pub fn new(user: u32, keep: bool, seen_uid: u32) -> Self {
        Self {
            user,
            keep,
            seen_uid,
            input: Vec::new(),
            closed: false,
            step: Step::Greeting,
            todo: VecDeque::new(),
        }
    }

    /// The next command once the answer to the last one is complete; `None` when the
    /// session is over (or stuck).
    pub fn next(
        &mut self,
        delays: &mut Vec<(u64, f32)>,
        waiting: &mut VecDeque<Waiting>,
        ms: u64,
    ) -> Option<Vec<u8>> {
        let multiline = matches!(self.step, Step::Uidl | Step::Retr(_));
        let (ok, body) = take_response(&mut self.input, multiline)?;
        let line = |s: &str| Some(format!("{s}\r\n").into_bytes());
        self.step = match (self.step, ok) {
            (Step::Greeting, true) => Step::User,
            (Step::User, true) => Step::Pass,
            (Step::Pass, true) => Step::Stat,
            (Step::Stat, true) => {
                let n: usize = parse_stat(&body);
                if self.keep && n > 0 {
                    Step::Uidl
                } else {
                    self.todo = (1..=n).collect();
                    self.fetch_or_quit()
                }
            }
            (Step::Uidl, true) => {
                self.todo = uidl_lines(&body)
                    .filter(|(_, uid)| *uid > self.seen_uid)
                    .map(|(n, _)| n)
                    .collect();
                self.fetch_or_quit()
            }
            (Step::Retr(n), true) => {
                if let Some(uid) = body_uid(&body) {
                    self.seen_uid = self.seen_uid.max(uid);
                    if let Some(i) = waiting.iter().position(|w| w.uid == uid) {
                        let w = waiting.remove(i).expect("found");
                        let since = w.first_check.unwrap_or(ms);
                        delays.push((since, ms.saturating_sub(since) as f32 / 1000.0));
                    }
                }
                if self.keep {
                    self.fetch_or_quit()
                } else {
                    Step::Dele(n)
                }
            }
            (Step::Dele(_), _) => self.fetch_or_quit(),
            (Step::Quit, _) => Step::Done,
            // A refused login (LOGIN-DELAY) or a failed command: the client gives up.
            (Step::Done, _) => return None,
            _ => Step::Quit,
        };
        match self.step {
            Step::User => line(&format!("USER {}", name(self.user))),
            Step::Pass => line("PASS pw"),
            Step::Stat => line("STAT"),
            Step::Uidl => line("UIDL"),
            Step::Retr(n) => line(&format!("RETR {n}")),
            Step::Dele(n) => line(&format!("DELE {n}")),
            Step::Quit => line("QUIT"),
            Step::Greeting | Step::Done => None,
        }
    }

    fn fetch_or_quit(&mut self) -> Step {
        self.todo.pop_front().map_or(Step::Quit, Step::Retr)
    }
}

/// Takes one complete response off `input`: whether it is `+OK`, and its text.
fn take_response(input: &mut Vec<u8>, multiline: bool) -> Option<(bool, Vec<u8>)> {
    let eol = input.windows(2).position(|w| w == b"\r\n")? + 2;
    let ok = input.starts_with(b"+OK");
    let end = if multiline && ok {
        let rest = &input[eol - 2..];
        eol - 2 + rest.windows(5).position(|w| w == b"\r\n.\r\n")? + 5
    } else {
        eol
    };
    Some((ok, input.drain(..end).collect()))
}

fn parse_stat(line: &[u8]) -> usize {
    String::from_utf8_lossy(line)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn uidl_lines(body: &[u8]) -> impl Iterator<Item = (usize, u32)> + '_ {
    body.split(|&b| b == b'\n').skip(1).filter_map(|l| {
        let l = std::str::from_utf8(l).ok()?.trim();
        let (n, uid) = l.split_once(' ')?;
        Some((n.parse().ok()?, uid.trim_start_matches('u').parse().ok()?))
    })
}

fn body_uid(body: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.find("X-Uid: ")? + "X-Uid: ".len();
    text[at..].split_whitespace().next()?.parse().ok()
}
