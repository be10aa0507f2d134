//! The upstream links against real loopback sockets.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use super::{CREDIT, Upstream, UpstreamEvent};

const TIMEOUT: Duration = Duration::from_secs(5);

fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Polls until `done` says the collected events are enough, or panics after a while.
fn poll_until(
    upstream: &mut Upstream,
    events: &mut Vec<UpstreamEvent>,
    mut done: impl FnMut(&[UpstreamEvent]) -> bool,
) {
    let until = Instant::now() + TIMEOUT;
    while !done(events) {
        assert!(Instant::now() < until, "events so far: {events:?}");
        std::thread::sleep(Duration::from_millis(2));
        upstream.poll(true, Instant::now(), events);
    }
}

fn data_len(events: &[UpstreamEvent]) -> usize {
    events
        .iter()
        .map(|event| match event {
            UpstreamEvent::Data(_, data) => data.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn carries_bytes_both_ways() {
    let (listener, addr) = listener();
    let mut upstream = Upstream::new(TIMEOUT).unwrap();
    let link = upstream.connect(7, addr);
    // Sent before the connect completes: written once it does.
    link.send(b"USER a\r\n".to_vec());
    let (mut server, _) = listener.accept().unwrap();
    let mut events = Vec::new();
    poll_until(&mut upstream, &mut events, |e| !e.is_empty());
    assert!(matches!(events[0], UpstreamEvent::Connected(7)));
    let mut got = [0u8; 8];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"USER a\r\n");
    server.write_all(b"+OK\r\n").unwrap();
    events.clear();
    poll_until(&mut upstream, &mut events, |e| data_len(e) == 5);
    assert!(matches!(&events[0], UpstreamEvent::Data(7, data) if data == b"+OK\r\n"));
    drop(server);
    poll_until(&mut upstream, &mut events, |e| {
        e.iter().any(|e| matches!(e, UpstreamEvent::Closed(7)))
    });
}

#[test]
fn a_refused_connect_fails() {
    let (listener, addr) = listener();
    drop(listener);
    let mut upstream = Upstream::new(TIMEOUT).unwrap();
    let _link = upstream.connect(3, addr);
    let mut events = Vec::new();
    poll_until(&mut upstream, &mut events, |e| !e.is_empty());
    assert!(
        matches!(events[..], [UpstreamEvent::Failed(3)]),
        "{events:?}"
    );
}

#[test]
fn reads_no_more_than_the_credit() {
    let (listener, addr) = listener();
    let mut upstream = Upstream::new(TIMEOUT).unwrap();
    let link = upstream.connect(1, addr);
    let (mut server, _) = listener.accept().unwrap();
    let writer = std::thread::spawn(move || {
        // More than the credit and the kernel's buffers together; ends when the link
        // closes.
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..64 {
            if server.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut events = Vec::new();
    poll_until(&mut upstream, &mut events, |e| data_len(e) == CREDIT);
    // Nothing more arrives while no credit is returned.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(5));
        upstream.poll(true, Instant::now(), &mut events);
    }
    assert_eq!(data_len(&events), CREDIT);
    // The bytes still in the kernel are read once credit comes back, without a new
    // readiness event.
    link.return_credit(1000);
    upstream.poll(false, Instant::now(), &mut events);
    assert_eq!(data_len(&events), CREDIT + 1000);
    drop(link);
    writer.join().unwrap();
}

#[test]
fn dropping_a_link_writes_what_was_sent_then_closes() {
    let (listener, addr) = listener();
    let mut upstream = Upstream::new(TIMEOUT).unwrap();
    let link = upstream.connect(9, addr);
    link.send(b"QUIT\r\n".to_vec());
    drop(link);
    let (mut server, _) = listener.accept().unwrap();
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut events = Vec::new();
    let mut got = Vec::new();
    let until = Instant::now() + TIMEOUT;
    while got.len() < 6 {
        assert!(Instant::now() < until);
        upstream.poll(true, Instant::now(), &mut events);
        let mut buf = [0u8; 16];
        let mut server_nb = server.try_clone().unwrap();
        server_nb.set_nonblocking(true).unwrap();
        if let Ok(n) = server_nb.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(got, b"QUIT\r\n");
    server.set_nonblocking(false).unwrap();
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after the flush");
    // The dataplane let go of the link: it hears nothing more of it.
    assert!(events.is_empty(), "{events:?}");
}
