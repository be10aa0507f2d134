//! The prefetch's worker: one task on the daemon's tokio runtime (its operator I/O)
//! that runs the prefetch sessions one after the other, rate limited, writes each
//! message into the cache's `tmp/` (synced) and hands it to the operator thread,
//! which renames it into place.

use std::{
    collections::HashSet,
    net::SocketAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
        mpsc,
    },
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::{net::TcpStream, sync::mpsc as tokio_mpsc};

use super::{
    config::Config,
    pop3::{Client, Pop3Error},
};
use crate::{
    cache::store::{Staged, Stager, UserId},
    waker::Waker,
};

/// Prefetch sessions waiting for the worker, at most.
pub const QUEUE: usize = 64;

/// The lull as the operator thread last judged it: bit 0 for scheduled runs, bit 1 for
/// runs a notification asked for. A run stops between two messages once its bit is off.
pub type Gate = Arc<AtomicU8>;
pub const SCHEDULED_OPEN: u8 = 1;
pub const DEMAND_OPEN: u8 = 2;

/// One user to prefetch.
#[derive(Debug)]
pub struct Job {
    pub id: UserId,
    pub server: SocketAddr,
    /// The username as the client sends it (printable, without the separator).
    pub user: Vec<u8>,
    /// UIDLs the edge holds already.
    pub cached: HashSet<Vec<u8>>,
    /// Bytes the user's cache may still take.
    pub room: u64,
    /// Asked for by a new-mail notification.
    pub demand: bool,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The new messages that fit are staged.
    Done,
    /// Stopped early, not for the server's fault: the lull ended or the server is slow.
    Deferred(&'static str),
    /// The server is down, refused the master login, or answered wrongly.
    Failed(Pop3Error),
}

/// What the worker hands the operator thread.
#[derive(Debug)]
pub enum Report {
    Staged(Staged),
    Finished {
        id: UserId,
        server: SocketAddr,
        outcome: Outcome,
    },
}

/// The operator thread's handle on the worker.
pub struct Worker {
    jobs: tokio_mpsc::Sender<Job>,
    reports: mpsc::Receiver<Report>,
}

impl Worker {
    /// Starts the worker on `runtime`; `waker` is poked after each report.
    pub fn start(
        config: Arc<Config>,
        runtime: &tokio::runtime::Handle,
        stager: Stager,
        gate: Gate,
        waker: Arc<Waker>,
    ) -> Self {
        let (jobs, mut queue) = tokio_mpsc::channel::<Job>(QUEUE);
        let (reports, receiver) = mpsc::channel();
        let messages = RateLimiter::direct(Quota::per_second(config.messages_per_second));
        let bytes = RateLimiter::direct(Quota::per_second(config.bytes_per_second));
        let limits = Limiters { messages, bytes };
        runtime.spawn(async move {
            while let Some(job) = queue.recv().await {
                let (id, server) = (job.id, job.server);
                let report = |r: Report| {
                    if reports.send(r).is_ok() {
                        waker.wake();
                    }
                };
                let outcome = match run(&config, &stager, &gate, &limits, job, &report).await {
                    Ok(None) => Outcome::Done,
                    Ok(Some(why)) => Outcome::Deferred(why),
                    Err(Pop3Error::Slow(_)) => Outcome::Deferred("the mail server is slow"),
                    Err(error) => Outcome::Failed(error),
                };
                report(Report::Finished {
                    id,
                    server,
                    outcome,
                });
            }
        });
        Self {
            jobs,
            reports: receiver,
        }
    }

    /// Queues `job`; false when the queue is full.
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.try_send(job).is_ok()
    }

    /// Reports that arrived since the last call.
    pub fn reports(&self) -> impl Iterator<Item = Report> + '_ {
        self.reports.try_iter()
    }
}

struct Limiters {
    messages: DefaultDirectRateLimiter,
    bytes: DefaultDirectRateLimiter,
}

impl Limiters {
    /// Waits until one more message of `size` bytes may be fetched.
    async fn admit(&self, size: u64, burst: NonZeroU32) {
        self.messages.until_ready().await;
        let mut left = size;
        while left > 0 {
            let n = u32::try_from(left).unwrap_or(u32::MAX).min(burst.get());
            let n = NonZeroU32::new(n).expect("left > 0");
            // n is at most the burst, so this always ends in time.
            let _ = self.bytes.until_n_ready(n).await;
            left -= u64::from(n.get());
        }
    }
}

/// One prefetch session: `Ok(Some(why))` when it stopped early for a reason that is
/// not the server's fault.
async fn run(
    config: &Config,
    stager: &Stager,
    gate: &Gate,
    limits: &Limiters,
    job: Job,
    report: &impl Fn(Report),
) -> Result<Option<&'static str>, Pop3Error> {
    let open = if job.demand {
        DEMAND_OPEN
    } else {
        SCHEDULED_OPEN
    };
    let stream = tokio::time::timeout(config.timeout, TcpStream::connect(job.server))
        .await
        .map_err(|_| Pop3Error::Timeout)??;
    let _ = stream.set_nodelay(true);
    let mut client = Client::greet(stream, config.timeout, config.max_latency).await?;
    let mut login = job.user.clone();
    login.extend_from_slice(config.separator.as_bytes());
    login.extend_from_slice(config.master_user.as_bytes());
    client.login(&login, &config.master_password).await?;
    let mut room = job.room;
    let mut stopped = None;
    for message in client.listing().await? {
        if job.cached.contains(&message.uidl) || message.size > room {
            continue;
        }
        if gate.load(Ordering::Relaxed) & open == 0 {
            stopped = Some("the lull ended");
            break;
        }
        limits.admit(message.size, config.bytes_per_second).await;
        let body = client.retr(message.number, message.size).await?;
        match stager.stage(job.id, &message.uidl, &body) {
            Ok(staged) => {
                room -= message.size;
                report(Report::Staged(staged));
            }
            Err(err) => {
                tracing::warn!(server = %job.server, %err, "prefetch: a message not cached")
            }
        }
    }
    // Nothing was deleted: QUIT commits nothing. A failed QUIT loses nothing either.
    if let Err(err) = client.quit().await {
        tracing::debug!(server = %job.server, %err, "prefetch: QUIT");
    }
    Ok(stopped)
}
