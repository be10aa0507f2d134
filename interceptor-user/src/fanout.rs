//! Fan-out of new-mail notifications to every edge, over a NATS broker.
//!
//! A mail server notifies one edge (the one its URL names) but cannot know which edge a
//! subscriber is behind. With `--notify-nats URL --notify-subject S` the edge that takes a
//! notification over HTTP applies it and publishes it on S; every edge subscribes to S and
//! applies what it receives. What came from the broker is never published again, and the
//! connection is made with NATS's `no_echo`, so an edge does not receive its own messages:
//! no loops, and nothing applied twice.
//!
//! A message is the JSON `{"server": "IP" | "IP:PORT", "user": "...", "sent": UNIX_SECONDS}`
//! (the server as the receiving edge resolved it: the address the notification came from,
//! or the one it named), with a header `Pop3-Notify-Mac` holding the base64 HMAC-SHA256 of
//! the payload under the notification secret, which every edge of a fan-out shares. The
//! broker and whoever can publish on it are untrusted: a message over [`MAX_MESSAGE`]
//! bytes, without the right MAC, malformed, or sent more than [`MAX_AGE`] away from now
//! is rejected and counted; accepted ones share the endpoint's `--notify-rate` and its
//! bounded queue into the dataplane.
//!
//! Broker down: HTTP notifications still apply locally (publishing is skipped and counted
//! as dropped), and the client reconnects by itself; the outage is logged and counted.
//! While it lasts, the engine is told notifications may be missed: every view taken
//! before the broker is back is trusted for the time rule's n only, so no delivery told
//! during the outage waits for the longer `--notify-interval`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures_util::StreamExt as _;
use governor::DefaultDirectRateLimiter;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::{notify::Notification, waker::Waker};

/// Largest message accepted from the broker (ours are under 400 bytes).
pub const MAX_MESSAGE: usize = 1024;
/// A message sent further than this from now (either way: clocks differ) is rejected,
/// so a recorded message cannot be replayed for long.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// The header carrying the MAC.
pub const MAC_HEADER: &str = "Pop3-Notify-Mac";
/// Notifications waiting to be published; past it they are dropped (and counted).
const PUBLISH_QUEUE: usize = 1024;

/// Where to fan out.
#[derive(Clone, Debug)]
pub struct FanoutConfig {
    /// The broker, e.g. `nats://203.0.113.5:4222` (credentials may be in the URL).
    pub url: String,
    /// The subject every edge publishes on and subscribes to.
    pub subject: String,
}

/// What the fan-out did, for metrics.
#[derive(Debug, Default)]
pub struct FanoutStats {
    /// 1 while connected to the broker.
    pub connected: AtomicU64,
    /// Connections to the broker lost.
    pub disconnects: AtomicU64,
    /// Notifications published.
    pub published: AtomicU64,
    /// Notifications not published: broker down, or the publish queue full.
    pub publish_dropped: AtomicU64,
    /// Messages received and handed to the engine.
    pub received: AtomicU64,
    /// Messages received and refused: too large, wrong MAC, malformed, too old.
    pub rejected: AtomicU64,
    /// Valid messages received but not applied: over the rate, or the queue full.
    pub receive_dropped: AtomicU64,
}

impl FanoutStats {
    /// Whether the broker is connected now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed) == 1
    }

    /// Each event counter with its count, named as in the metrics' `event` label.
    pub fn events(&self) -> Vec<(&'static str, u64)> {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("disconnect", read(&self.disconnects)),
            ("published", read(&self.published)),
            ("publish_dropped", read(&self.publish_dropped)),
            ("received", read(&self.received)),
            ("rejected", read(&self.rejected)),
            ("receive_dropped", read(&self.receive_dropped)),
        ]
    }
}

/// The publishing side, held by the HTTP endpoint.
pub struct Publisher {
    queue: tokio::sync::mpsc::Sender<Notification>,
    stats: Arc<FanoutStats>,
}

impl Publisher {
    /// Queues a notification taken over HTTP for publishing; never waits.
    pub fn offer(&self, notification: &Notification) {
        if self.queue.try_send(notification.clone()).is_err() {
            self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where received notifications go: the endpoint's queue into the dataplane, its rate.
pub struct Sink {
    /// The dataplane's bounded queue.
    pub sender: mpsc::SyncSender<Notification>,
    /// Wakes the dataplane.
    pub waker: Arc<Waker>,
    /// The endpoint's request rate, shared.
    pub limiter: Arc<DefaultDirectRateLimiter>,
}

/// Starts the broker client on `runtime` (in the background: a broker down at start-up
/// is retried like a lost one).
pub fn start(
    config: FanoutConfig,
    secret: &[u8],
    sink: Sink,
    runtime: &tokio::runtime::Handle,
) -> (Publisher, Arc<FanoutStats>) {
    let stats = Arc::new(FanoutStats::default());
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let (queue, pending) = tokio::sync::mpsc::channel(PUBLISH_QUEUE);
    runtime.spawn(serve(config, key, sink, pending, stats.clone()));
    (
        Publisher {
            queue,
            stats: stats.clone(),
        },
        stats,
    )
}

async fn serve(
    config: FanoutConfig,
    key: hmac::Key,
    sink: Sink,
    mut pending: tokio::sync::mpsc::Receiver<Notification>,
    stats: Arc<FanoutStats>,
) {
    let events = stats.clone();
    let client = async_nats::ConnectOptions::new()
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let stats = events.clone();
            async move { on_event(&stats, event) }
        })
        .connect(config.url.as_str())
        .await;
    let client = match client {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(%err, "NATS fan-out off: the broker URL is unusable");
            return;
        }
    };
    let subscriber = match client.subscribe(config.subject.clone()).await {
        Ok(subscriber) => subscriber,
        Err(err) => {
            tracing::error!(%err, subject = %config.subject, "NATS fan-out off: cannot subscribe");
            return;
        }
    };
    let publish = {
        let (client, key, stats) = (client.clone(), key.clone(), stats.clone());
        async move {
            while let Some(notification) = pending.recv().await {
                publish_one(&client, &config.subject, &key, &stats, &notification).await;
            }
        }
    };
    let receive = async move {
        let mut subscriber = subscriber;
        while let Some(message) = subscriber.next().await {
            receive_one(&key, &sink, &stats, &message, SystemTime::now());
        }
    };
    tokio::join!(publish, receive);
}

fn on_event(stats: &FanoutStats, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            stats.connected.store(1, Ordering::Relaxed);
            tracing::info!("NATS broker connected");
        }
        async_nats::Event::Disconnected => {
            stats.connected.store(0, Ordering::Relaxed);
            stats.disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "NATS broker lost: notifications apply on this edge only until it is back"
            );
        }
        other => tracing::warn!(event = %other, "NATS"),
    }
}

async fn publish_one(
    client: &async_nats::Client,
    subject: &str,
    key: &hmac::Key,
    stats: &FanoutStats,
    notification: &Notification,
) {
    let count = |c: &AtomicU64| {
        c.fetch_add(1, Ordering::Relaxed);
    };
    // Buffering for a broker that is down would publish stale news in a burst later.
    if client.connection_state() != async_nats::connection::State::Connected {
        count(&stats.publish_dropped);
        return;
    }
    let Some(payload) = encode(notification, SystemTime::now()) else {
        count(&stats.publish_dropped);
        return;
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(MAC_HEADER, sign(key, &payload).as_str());
    match client
        .publish_with_headers(subject.to_owned(), headers, payload.into())
        .await
    {
        Ok(()) => {
            count(&stats.published);
        }
        Err(err) => {
            count(&stats.publish_dropped);
            tracing::debug!(%err, "NATS publish failed");
        }
    }
}

fn receive_one(
    key: &hmac::Key,
    sink: &Sink,
    stats: &FanoutStats,
    message: &async_nats::Message,
    now: SystemTime,
) {
    let count = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
    let mac = message
        .headers
        .as_ref()
        .and_then(|h| h.get(MAC_HEADER))
        .map(|v| v.as_str());
    let Some(notification) = verify(key, &message.payload, mac, now) else {
        count(&stats.rejected);
        return;
    };
    if sink.limiter.check().is_err() || sink.sender.try_send(notification).is_err() {
        count(&stats.receive_dropped);
        return;
    }
    count(&stats.received);
    sink.waker.wake();
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    server: String,
    user: String,
    sent: u64,
}

/// The payload of a notification, sent at `now`.
fn encode(notification: &Notification, now: SystemTime) -> Option<Vec<u8>> {
    let server = match notification.port {
        Some(port) => SocketAddr::new(notification.server, port).to_string(),
        None => notification.server.to_string(),
    };
    let wire = Wire {
        server,
        user: String::from_utf8(notification.user.clone()).ok()?,
        sent: now.duration_since(UNIX_EPOCH).ok()?.as_secs(),
    };
    let payload = serde_json::to_vec(&wire).ok()?;
    (payload.len() <= MAX_MESSAGE).then_some(payload)
}

fn sign(key: &hmac::Key, payload: &[u8]) -> String {
    STANDARD.encode(hmac::sign(key, payload).as_ref())
}

/// The notification in a message from the broker, if it is one of ours, fresh at `now`.
fn verify(
    key: &hmac::Key,
    payload: &[u8],
    mac: Option<&str>,
    now: SystemTime,
) -> Option<Notification> {
    if payload.len() > MAX_MESSAGE {
        return None;
    }
    let tag = STANDARD.decode(mac?.trim()).ok()?;
    hmac::verify(key, payload, &tag).ok()?;
    let wire: Wire = serde_json::from_slice(payload).ok()?;
    let sent = UNIX_EPOCH + Duration::from_secs(wire.sent);
    let age = now.duration_since(sent).unwrap_or_else(|e| e.duration());
    if age > MAX_AGE {
        return None;
    }
    let server = crate::notify::named_server(&wire.server)?;
    crate::notify::notification(wire.user, server)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &[u8]) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, secret)
    }

    fn alice() -> Notification {
        Notification {
            server: "203.0.113.2".parse().unwrap(),
            port: Some(110),
            user: b"alice".to_vec(),
        }
    }

    #[test]
    fn a_signed_message_comes_back_as_sent() {
        let now = SystemTime::now();
        let payload = encode(&alice(), now).unwrap();
        let mac = sign(&key(b"s3cret"), &payload);
        assert_eq!(
            verify(&key(b"s3cret"), &payload, Some(&mac), now),
            Some(alice())
        );
        let no_port = Notification {
            port: None,
            ..alice()
        };
        let payload = encode(&no_port, now).unwrap();
        let mac = sign(&key(b"s3cret"), &payload);
        assert_eq!(
            verify(&key(b"s3cret"), &payload, Some(&mac), now),
            Some(no_port)
        );
    }

    #[test]
    fn the_broker_cannot_forge_alter_or_replay() {
        let now = SystemTime::now();
        let payload = encode(&alice(), now).unwrap();
        let mac = sign(&key(b"s3cret"), &payload);
        let k = key(b"s3cret");
        assert_eq!(verify(&k, &payload, None, now), None, "no MAC");
        let forged = sign(&key(b"guess"), &payload);
        assert_eq!(verify(&k, &payload, Some(&forged), now), None, "wrong key");
        let altered = String::from_utf8(payload.clone())
            .unwrap()
            .replace("alice", "bobby");
        assert_eq!(verify(&k, altered.as_bytes(), Some(&mac), now), None);
        let later = now + MAX_AGE + Duration::from_secs(2);
        assert_eq!(verify(&k, &payload, Some(&mac), later), None, "replayed");
        let earlier = now - MAX_AGE - Duration::from_secs(2);
        assert_eq!(verify(&k, &payload, Some(&mac), earlier), None, "future");
        assert_eq!(verify(&k, &payload, Some("!!"), now), None, "not base64");
    }

    #[test]
    fn a_signed_message_must_still_be_a_notification() {
        let k = key(b"s3cret");
        let now = SystemTime::now();
        let sent = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let big = format!(
            r#"{{"server":"203.0.113.2","user":"{}","sent":{sent}}}"#,
            "a".repeat(MAX_MESSAGE)
        );
        for body in [
            big,
            format!(r#"{{"server":"mail.example","user":"a","sent":{sent}}}"#),
            format!(r#"{{"server":"203.0.113.2","user":"a\r\nb","sent":{sent}}}"#),
            format!(r#"{{"server":"203.0.113.2","user":"","sent":{sent}}}"#),
            format!(r#"{{"server":"203.0.113.2","user":"a","sent":{sent},"x":1}}"#),
            r#"{"server":"203.0.113.2","user":"a"}"#.to_owned(),
            "[]".to_owned(),
        ] {
            let mac = sign(&k, body.as_bytes());
            assert_eq!(verify(&k, body.as_bytes(), Some(&mac), now), None, "{body}");
        }
    }
}
