//! New-mail notifications from mail servers: the ear of the patent's demand rule.
//!
//! A mail server that says when mail arrives lets the edge attenuate a user's checks
//! until then, instead of for a fixed n. Two forms are accepted, on either path and with
//! PUT or POST:
//!
//! - Dovecot's `push_notification` plugin, `ox` driver: `PUT /preliminary/http-notify/v1/notify`
//!   with a JSON body holding `user` and `event` (only `messageNew` ends an attenuation);
//! - anything else (Dovecot's `lua` driver, an MTA hook): `POST /notify` with `{"user": ...}`.
//!
//! A notification names its mail server by the address it comes from (a mail server
//! notifies from its own address, and applies to every intercepted port there), unless
//! the body says `"server": "IP"` or `"IP:PORT"` (a server behind NAT, a relay host).
//!
//! Every request must carry the shared secret, as `Authorization: Bearer SECRET` or as
//! the password of basic auth (what a URL `http://user:SECRET@edge/...` in Dovecot's
//! config sends); without it: 401 and nothing changes. Bodies are bounded
//! ([`MAX_BODY`]), so are the request rate, the requests in progress and the open
//! connections ([`MAX_CONNECTIONS`], each closed [`CONNECTION_LIFETIME`] after it was
//! accepted, so silent clients cannot hold the endpoint: [`BoundedListener`]). Accepted
//! notifications go to the dataplane thread, which owns the engine, through a bounded
//! channel, and wake it: they apply at once, not at the next tick. With
//! `--notify-nats`, each accepted notification is also published to the other edges
//! ([`crate::fanout`]).

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode, header},
    routing::put,
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tower::limit::ConcurrencyLimitLayer;

use pop3_engine::secret::Secret;

use crate::{
    bounded_listener::{BoundedListener, PeerAddr},
    fanout::{self, FanoutConfig, FanoutStats, Publisher, Sink},
    waker::Waker,
};

/// Largest request body accepted (Dovecot's notifications are a few hundred bytes).
pub const MAX_BODY: usize = 16 * 1024;
/// Most requests in progress at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// Most connections open at once (one request each is the usual case); further ones wait
/// in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = MAX_IN_FLIGHT;
/// How long a connection may stay open: a notification takes milliseconds.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);
/// Most accepted notifications waiting for the dataplane; past it: 503.
pub const QUEUE: usize = 4096;

/// What the endpoint needs.
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The shared secret every request must carry.
    pub secret: Secret,
    /// Most requests per second (over that: 429); notifications from the broker count too.
    pub rate: NonZeroU32,
    /// Fan-out to other edges over NATS (`None`: this edge only).
    pub fanout: Option<FanoutConfig>,
}

/// A mail server said new mail arrived for a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The mail server's address.
    pub server: IpAddr,
    /// Its POP3 port, when the notification names one.
    pub port: Option<u16>,
    /// The username, exactly as the server wrote it.
    pub user: Vec<u8>,
}

/// What became of requests, for metrics.
#[derive(Debug, Default)]
pub struct NotifyStats {
    /// Accepted and handed to the engine.
    pub accepted: AtomicU64,
    /// Valid but not about new mail (another event).
    pub ignored: AtomicU64,
    /// Without the right secret.
    pub unauthorized: AtomicU64,
    /// Not a notification: bad JSON, no user, bad server field.
    pub malformed: AtomicU64,
    /// Over the request rate.
    pub rate_limited: AtomicU64,
    /// The dataplane's queue was full.
    pub queue_full: AtomicU64,
    /// What the NATS fan-out did (`None` without one).
    pub fanout: Option<Arc<FanoutStats>>,
}

impl NotifyStats {
    /// Each outcome with its count, named as in the metrics' `outcome` label.
    pub fn outcomes(&self) -> Vec<(&'static str, u64)> {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("accepted", read(&self.accepted)),
            ("ignored", read(&self.ignored)),
            ("unauthorized", read(&self.unauthorized)),
            ("malformed", read(&self.malformed)),
            ("rate_limited", read(&self.rate_limited)),
            ("queue_full", read(&self.queue_full)),
        ]
    }
}

/// The running endpoint: notifications come out of [`Notifications::drain`].
pub struct Notifications {
    receiver: mpsc::Receiver<Notification>,
    stats: Arc<NotifyStats>,
    local: SocketAddr,
}

struct Endpoint {
    secret: Secret,
    limiter: Arc<DefaultDirectRateLimiter>,
    sender: mpsc::SyncSender<Notification>,
    waker: Arc<Waker>,
    stats: Arc<NotifyStats>,
    fanout: Option<Publisher>,
}

/// The body: Dovecot's ox driver sends more fields; only these matter.
#[derive(Deserialize)]
struct Body {
    user: String,
    event: Option<String>,
    server: Option<String>,
}

impl Notifications {
    /// Binds `config.listen` (so a busy address fails at start-up) and serves on
    /// `runtime`; `waker` wakes the dataplane when a notification is queued.
    pub fn start(
        config: NotifyConfig,
        runtime: &tokio::runtime::Handle,
        waker: Arc<Waker>,
    ) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(config.listen).map_err(|e| {
            std::io::Error::new(e.kind(), format!("binding {}: {e}", config.listen))
        })?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let limiter = Arc::new(RateLimiter::direct(Quota::per_second(config.rate)));
        let (publisher, fanout_stats) = match config.fanout {
            Some(fanout) => {
                let sink = Sink {
                    sender: sender.clone(),
                    waker: waker.clone(),
                    limiter: limiter.clone(),
                };
                let (publisher, stats) =
                    fanout::start(fanout, config.secret.expose(), sink, runtime);
                (Some(publisher), Some(stats))
            }
            None => (None, None),
        };
        let stats = Arc::new(NotifyStats {
            fanout: fanout_stats,
            ..NotifyStats::default()
        });
        let endpoint = Arc::new(Endpoint {
            secret: config.secret,
            limiter,
            sender,
            waker,
            stats: stats.clone(),
            fanout: publisher,
        });
        let app = Router::new()
            .route(
                "/preliminary/http-notify/v1/notify",
                put(notify).post(notify),
            )
            .route("/notify", put(notify).post(notify))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .layer(ConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
            .with_state(endpoint);
        let _entered = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let listener = BoundedListener::new(listener, MAX_CONNECTIONS, CONNECTION_LIFETIME);
        runtime.spawn(async move {
            let service = app.into_make_service_with_connect_info::<PeerAddr>();
            if let Err(err) = axum::serve(listener, service).await {
                tracing::error!(%err, "notification endpoint stopped");
            }
        });
        tracing::info!("accepting new-mail notifications at http://{local}/notify");
        Ok(Self {
            receiver,
            stats,
            local,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What became of requests so far.
    pub fn stats(&self) -> &NotifyStats {
        &self.stats
    }

    /// Hands every queued notification to `apply`.
    pub fn drain(&self, mut apply: impl FnMut(Notification)) {
        while let Ok(notification) = self.receiver.try_recv() {
            apply(notification);
        }
    }
}

async fn notify(
    State(endpoint): State<Arc<Endpoint>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let stats = &endpoint.stats;
    let count = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
    // The secret first: requests without it must not use up the genuine server's rate.
    if !authorized(&headers, endpoint.secret.expose()) {
        count(&stats.unauthorized);
        return StatusCode::UNAUTHORIZED;
    }
    if endpoint.limiter.check().is_err() {
        count(&stats.rate_limited);
        return StatusCode::TOO_MANY_REQUESTS;
    }
    let Some(notification) = parse(&body, peer.ip()) else {
        count(&stats.malformed);
        return StatusCode::BAD_REQUEST;
    };
    let Some(notification) = notification else {
        count(&stats.ignored);
        return StatusCode::NO_CONTENT;
    };
    if let Some(publisher) = &endpoint.fanout {
        publisher.offer(&notification);
    }
    match endpoint.sender.try_send(notification) {
        Ok(()) => {
            count(&stats.accepted);
            endpoint.waker.wake();
            StatusCode::NO_CONTENT
        }
        Err(_) => {
            count(&stats.queue_full);
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// Whether the request carries the secret: `Bearer SECRET`, or basic auth with it as
/// the password. Compared in constant time.
fn authorized(headers: &HeaderMap, secret: &[u8]) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let offered: Vec<u8> = if let Some(token) = value.strip_prefix("Bearer ") {
        token.trim().as_bytes().to_vec()
    } else if let Some(basic) = value.strip_prefix("Basic ") {
        let Ok(decoded) = STANDARD.decode(basic.trim()) else {
            return false;
        };
        match decoded.iter().position(|&b| b == b':') {
            Some(colon) => decoded[colon + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    offered.ct_eq(secret).into()
}

/// The notification in a body: `None` when malformed, `Some(None)` when valid but not
/// about new mail.
fn parse(body: &[u8], peer: IpAddr) -> Option<Option<Notification>> {
    let body: Body = serde_json::from_slice(body).ok()?;
    let server = match body.server.as_deref() {
        None => (peer, None),
        Some(text) => named_server(text)?,
    };
    let notification = notification(body.user, server)?;
    let new_mail = body
        .event
        .as_deref()
        .is_none_or(|e| e.eq_ignore_ascii_case("messageNew"));
    Some(new_mail.then_some(notification))
}

/// A server named as `IP` or `IP:PORT`.
pub(crate) fn named_server(text: &str) -> Option<(IpAddr, Option<u16>)> {
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some((addr.ip(), Some(addr.port()))),
        Err(_) => Some((text.parse::<IpAddr>().ok()?, None)),
    }
}

/// A notification for `user` of `server`, unless the name cannot be a POP3 username.
pub(crate) fn notification(
    user: String,
    (server, port): (IpAddr, Option<u16>),
) -> Option<Notification> {
    if user.is_empty() || user.contains(['\r', '\n', '\0']) {
        return None;
    }
    Some(Notification {
        server,
        port,
        user: user.into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 2));

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_secret_opens_the_door() {
        assert!(authorized(&with_auth("Bearer s3cret"), b"s3cret"));
        let basic = format!("Basic {}", STANDARD.encode("dovecot:s3cret"));
        assert!(authorized(&with_auth(&basic), b"s3cret"));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer ",
            "s3cret",
            "Basic !!!",
            &format!("Basic {}", STANDARD.encode("s3cret")),
            &format!("Basic {}", STANDARD.encode("dovecot:wrong")),
        ] {
            assert!(!authorized(&with_auth(wrong), b"s3cret"), "{wrong}");
        }
        assert!(!authorized(&HeaderMap::new(), b"s3cret"));
    }

    #[test]
    fn reads_dovecots_ox_body_and_a_plain_one() {
        let ox =
            br#"{"user":"alice","event":"messageNew","folder":"INBOX","imap-uid":7,"unseen":1}"#;
        assert_eq!(
            parse(ox, PEER),
            Some(Some(Notification {
                server: PEER,
                port: None,
                user: b"alice".to_vec()
            }))
        );
        let named = br#"{"user":"bob","server":"203.0.113.9:1110"}"#;
        let n = parse(named, PEER).unwrap().unwrap();
        assert_eq!(
            (n.server.to_string(), n.port),
            ("203.0.113.9".into(), Some(1110))
        );
        assert_eq!(
            parse(br#"{"user":"bob","event":"messageRead"}"#, PEER),
            Some(None),
            "not new mail"
        );
        for bad in [
            &b"not json"[..],
            br#"{"event":"messageNew"}"#,
            br#"{"user":""}"#,
            br#"{"user":"a\nb"}"#,
            br#"{"user":"a","server":"mail.example"}"#,
            br#"["user"]"#,
        ] {
            assert_eq!(parse(bad, PEER), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
