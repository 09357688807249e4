//! How long a socket lives: keepalive pings and the drop of a silent
//! socket, under paused time, and the sessions gauge that counts open
//! sockets.

use super::*;

// ---------------------------------------------------------------------------
// Keepalive, under paused time
// ---------------------------------------------------------------------------

/// Turns Nagle's algorithm off on a client's socket. Under paused time the
/// clock jumps to the next timer whenever the runtime waits for the
/// network; a small write held back by Nagle until the peer's delayed ACK
/// (real milliseconds) would arrive only after such a jump.
fn nodelay(c: &Client) {
    match c.ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.set_nodelay(true).unwrap(),
        _ => unreachable!("tests speak plain ws://"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_socket_is_pinged_at_20s_and_dropped_at_45s() {
    let s = TestServer::localhost().await;
    let (mut tcp, _) = raw_upgrade(&s, &s.token("alice@localhost")).await;
    let start = Instant::now();

    let (op, _) = tokio::time::timeout(Duration::from_secs(120), read_frame(&mut tcp))
        .await
        .expect("a ping");
    assert_eq!(op, 0x89, "a final ping frame");
    let t = start.elapsed();
    assert!(
        (Duration::from_secs(20)..Duration::from_secs(21)).contains(&t),
        "ping after {t:?}"
    );
    assert_eq!(s.metric("wspd_sessions").await, 1.0);

    // No answer: the server drops the connection, without a close frame.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(120), tcp.read(&mut buf))
        .await
        .expect("the connection ends")
        .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "expected the end of the connection, got {:x?}",
        &buf[..n]
    );
    let t = start.elapsed();
    assert!(
        (Duration::from_secs(45)..Duration::from_secs(46)).contains(&t),
        "dropped after {t:?}"
    );
    assert_eq!(refusals(&s, "silent").await, 1.0);
    assert_eq!(s.metric("wspd_sessions").await, 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_silent_caller_is_dropped_and_its_peer_gets_410() {
    let s = TestServer::localhost().await;
    let mut bob = s.connect_online("bob@localhost").await;
    nodelay(&bob);
    let (mut tcp, _) = raw_upgrade(&s, &s.token("alice@localhost")).await;
    let id = "call-silent-1";
    let inv = invite("alice@localhost", "bob@localhost", id).to_string();
    // One masked text frame (mask of zeros), under 126 bytes.
    assert!(inv.len() < 126);
    let mut frame = vec![0x81, 0x80 | inv.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(inv.as_bytes());
    tcp.write_all(&frame).await.unwrap();
    bob.expect("invite").await;
    let start = Instant::now();

    // bob keeps his socket alive (he reads, so he answers pings); alice
    // says nothing more.
    let f = bob.recv_within(Duration::from_secs(100)).await;
    assert_eq!(f[0], "bye", "{f}");
    assert_eq!(f[1]["code"], 410, "{f}");
    assert_eq!(f[2]["call"], id);
    let t = start.elapsed();
    assert!(
        (Duration::from_secs(45)..Duration::from_secs(46)).contains(&t),
        "410 after {t:?}"
    );
    bob.expect_nothing().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_pings_stays_connected() {
    let s = TestServer::localhost().await;
    let mut alice = s.connect("alice@localhost").await;
    nodelay(&alice);
    let start = Instant::now();
    let until = start + Duration::from_secs(130);
    let mut pings = Vec::new();
    // tungstenite answers each ping with a pong while it reads.
    loop {
        match tokio::time::timeout_at(until, alice.ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => pings.push(start.elapsed().as_secs()),
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    // Quiet for 20 s after each pong: pings at 20, 40, 60, ...
    assert!(pings.len() >= 6, "pings at {pings:?}");
    for (n, at) in pings.iter().enumerate() {
        assert_eq!(*at, 20 * (n as u64 + 1), "pings at {pings:?}");
    }
    alice.expect_nothing().await;
    assert_eq!(s.metric("wspd_sessions").await, 1.0);
    assert_eq!(refusals(&s, "silent").await, 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_socket_that_sends_frames_is_never_pinged() {
    let s = TestServer::localhost().await;
    let mut alice = s.connect("alice@localhost").await;
    nodelay(&alice);
    let start = Instant::now();
    // A probe every 15 s for two minutes: the socket is never quiet for
    // 20 s, so no ping comes (expect_nothing fails on anything but text,
    // and recv would skip a ping; count them by reading raw).
    for _ in 0..8 {
        tokio::time::advance(Duration::from_secs(15)).await;
        alice
            .send(json!(["ringing", null, {"call": "nosuchcall"}]))
            .await;
        match tokio::time::timeout(WAIT, alice.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => assert!(t.contains("481"), "{t}"),
            other => panic!("expected the 481, got {other:?}"),
        }
    }
    assert!(start.elapsed() >= Duration::from_secs(120));
    assert_eq!(s.metric("wspd_sessions").await, 1.0);
}

// ---------------------------------------------------------------------------
// The sessions gauge
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_sessions_gauge_follows_open_sockets() {
    let s = TestServer::localhost().await;
    assert_eq!(s.metric("wspd_sessions").await, 0.0);
    // connect_online returns once the session runs (and counts).
    let a = s.connect_online("alice@localhost").await;
    assert_eq!(s.metric("wspd_sessions").await, 1.0);
    let b = s.connect_online("bob@localhost").await;
    let b2 = s.connect_online("bob@localhost").await;
    assert_eq!(s.metric("wspd_sessions").await, 3.0);

    b.close().await;
    s.wait_sessions(2).await;
    assert_eq!(s.metric("wspd_sessions").await, 2.0);

    // A socket closed by the server for bad input stops counting too.
    let mut a = a;
    a.send_text("nope").await;
    assert_eq!(closed(a).await.code, 1007);
    s.wait_sessions(1).await;
    assert_eq!(s.metric("wspd_sessions").await, 1.0);

    // And one whose TCP connection just goes away.
    drop(b2);
    s.wait_sessions(0).await;
    assert_eq!(s.metric("wspd_sessions").await, 0.0);
    // Refused upgrades never count.
    let (status, _, _) = upgrade_refused(&s, "/wsp", &upgrade_headers()).await;
    assert_eq!(status, 401);
    assert_eq!(s.metric("wspd_sessions").await, 0.0);
}
