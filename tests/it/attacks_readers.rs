//! Attacks by a party that stops reading: a client socket or a peer
//! server's link that takes no more frames while frames keep coming for
//! it. Each is mounted against real servers: the reader is cut off within
//! its bounds (bytes queued, or time without progress), its calls end with
//! 410 for the other side, and everyone else is served all the same.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wspd::federation::keys::LinkKey;

use crate::common::*;
use crate::federation::{link_upgrade, tls_to};

/// A candidate of about 60 KB (under the 64 KiB frame limit).
fn big_candidate(id: &str) -> Value {
    json!(["icecandidate", {"candidate": "x".repeat(60_000), "sdpMid": "0", "sdpMLineIndex": 0}, {"call": id}])
}

/// No rate limit gets in the way of the flood: only the outbox's bounds
/// and the write timeout are under test.
const NO_RATE: &str = "frames_per_second = 100000\nframe_burst = 100000\n";

/// A frame `c` has already received, if any, without waiting for one.
async fn try_recv(c: &mut Client) -> Option<Value> {
    match tokio::time::timeout(Duration::ZERO, c.ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => Some(serde_json::from_str(t.as_str()).unwrap()),
        _ => None,
    }
}

/// Checks that a call between two other users still goes through.
async fn others_are_served(url: &str) {
    let mut carol = Client::connect(url, &user_token("carol@localhost")).await;
    let mut dave = Client::connect(url, &user_token("dave@localhost")).await;
    answered_call(
        &mut carol,
        &mut dave,
        "carol@localhost",
        "dave@localhost",
        "others-call-1",
    )
    .await;
    carol.send(bye("others-call-1", 200)).await;
    dave.expect_bye(200).await;
}

/// The attack of the report: sockets that completed the handshake and
/// never read again, each sent 60 KB frames, pinned memory without limit
/// (a reader was cut off only past 256 *frames*). Now each is cut off once
/// `limits.outbox_bytes` (1 MiB) is queued and unwritten, so the server's
/// memory grows by at most about that much a socket. Measured on the real
/// binary: its peak resident memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_stop_reading_cannot_pin_memory() {
    const READERS: usize = 10;
    /// Frames sent to each reader at most: 14 MB each, as in the report.
    const ROUNDS: usize = 240;
    let dir = temp_dir("attacks-pin");
    let config = config_file(
        &dir,
        "wspd.toml",
        "127.0.0.1:0",
        &format!("[limits]\n{NO_RATE}"),
    );
    let w = Wspd::start(&config, "wspd=info").await;
    let url = w.url();
    let mut alice = Client::connect(&url, &user_token("alice@localhost")).await;
    // Each reader answers a call from alice, then never reads again.
    let mut readers = Vec::new();
    for i in 0..READERS {
        let user = format!("bob{i}@localhost");
        let mut bob = Client::connect(&url, &user_token(&user)).await;
        answered_call(
            &mut alice,
            &mut bob,
            "alice@localhost",
            &user,
            &format!("pin-call-{i}"),
        )
        .await;
        readers.push(bob);
    }
    let before = w.rss_kib();

    // Alice floods every call; she hears of a reader only once it is gone.
    let mut live: Vec<bool> = vec![true; READERS];
    for _ in 0..ROUNDS {
        for (i, _) in live.iter().enumerate().filter(|(_, l)| **l) {
            alice.send(big_candidate(&format!("pin-call-{i}"))).await;
        }
        while let Some(v) = try_recv(&mut alice).await {
            assert_eq!(v[0], "bye", "{v}");
            let i: usize = v[2]["call"].as_str().unwrap()["pin-call-".len()..]
                .parse()
                .unwrap();
            if v[1]["code"] == 410 {
                live[i] = false;
            } else {
                // A frame she sent before she heard: the call is over.
                assert!(!live[i] && v[1]["code"] == 481, "{v}");
            }
        }
        if !live.contains(&true) {
            break;
        }
    }
    let peak = w.status_kib("VmHWM");
    assert!(
        !live.contains(&true),
        "readers still connected after {ROUNDS} frames each: {live:?}"
    );
    // About 1 MiB a reader, and the frames in flight: far below the 14 MB
    // a reader the flood tried to pin.
    let grown = peak.saturating_sub(before);
    eprintln!("{READERS} readers cut off; peak memory grew by {grown} KiB");
    assert!(
        grown < (READERS as u64) * 3 * 1024,
        "the server grew by {grown} KiB for {READERS} readers"
    );
    let m = w.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_refusals_total{reason=\"slow_reader\"}"),
        READERS as f64,
        "{m}"
    );
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0, "{m}");
    others_are_served(&url).await;
    drop(readers);
}

/// Floods one call from alice to a bob who never reads, with more than
/// the kernel's buffers take but less than his outbox holds: his socket's
/// writes block. Returns alice, still reading, and bob, who must be kept.
async fn flood_a_reader_that_stopped(s: &TestServer, id: &str) -> (Client, Client) {
    let mut alice = s.connect_online("alice@localhost").await;
    let mut bob = s.connect_online("bob@localhost").await;
    answered_call(&mut alice, &mut bob, "alice@localhost", "bob@localhost", id).await;
    // 9 MB: the socket buffers on loopback take at most about 4 MB.
    for _ in 0..150 {
        alice.send(big_candidate(id)).await;
    }
    (alice, bob)
}

/// A socket whose writes make no progress for `limits.write_timeout` is
/// closed, even with room left in its outbox (the report: a blocked write
/// held the pump, and with it the keepalive, for ever).
#[tokio::test]
async fn a_socket_whose_writes_stall_is_closed_after_write_timeout() {
    let s = TestServer::start(config(
        "localhost",
        &format!(
            "[limits]\n{NO_RATE}write_timeout = \"1s\"\n\
             outbox_bytes = 67108864\noutbox_frames = 4096\n"
        ),
    ))
    .await;
    let (mut alice, bob) = flood_a_reader_that_stopped(&s, "stall-call-1").await;
    let gone = alice.recv_within(WAIT).await;
    assert_eq!(gone, bye_from_server(&gone, "stall-call-1", 410), "{gone}");
    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_refusals_total{reason=\"write_timeout\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "wspd_refusals_total{reason=\"slow_reader\"}"),
        0.0,
        "{m}"
    );
    others_are_served(&s.url()).await;
    drop(bob);
}

/// The keepalive runs while a write is blocked: a socket that neither
/// takes frames nor sends anything is dropped at `keepalive_timeout`, even
/// when the write timeout is longer.
#[tokio::test]
async fn keepalive_drops_a_silent_socket_while_its_write_is_blocked() {
    let s = TestServer::start(config(
        "localhost",
        &format!(
            "[limits]\n{NO_RATE}write_timeout = \"1h\"\nkeepalive_ping = \"1s\"\n\
             keepalive_timeout = \"2s\"\noutbox_bytes = 67108864\noutbox_frames = 4096\n"
        ),
    ))
    .await;
    let (mut alice, bob) = flood_a_reader_that_stopped(&s, "silent-call-1").await;
    let gone = alice.recv_within(WAIT).await;
    assert_eq!(gone, bye_from_server(&gone, "silent-call-1", 410), "{gone}");
    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_refusals_total{reason=\"silent\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "wspd_refusals_total{reason=\"write_timeout\"}"),
        0.0,
        "{m}"
    );
    drop(bob);
}

/// `v` if it is the server's bye `code` for call `id` (whatever its
/// reason text), else what was expected: for `assert_eq!`.
fn bye_from_server(v: &Value, id: &str, code: u64) -> Value {
    if v[0] == "bye" && v[1]["code"] == code && v[2]["call"] == id {
        v.clone()
    } else {
        json!(["bye", {"code": code}, {"call": id}])
    }
}

/// A peer server that stops reading its link: bob's frames for it are
/// queued up to `limits.link_outbox_bytes`, then the link is closed and
/// bob hears 410; b.test keeps serving its users. `extra` completes b's
/// `[limits]`; returns b's metrics at the end.
async fn a_link_that_stops_reading(tag: &str, extra: &str) -> String {
    let net = Net::new(tag).await;
    let _a = net.server("a.test", "").await;
    let b = net
        .server(
            "b.test",
            &format!("invites_per_second = 1000\n[limits]\n{NO_RATE}{extra}"),
        )
        .await;
    let mut bob = b.connect_online("bob@b.test").await;
    // The attacker holds a.test's real key: an authenticated link.
    let a_key = LinkKey::load_or_create(&net.key_path("a.test")).unwrap();
    let (tls, exporter) = tls_to(b.addr(), "b.test").await;
    let auth = a_key.authorize("a.test", "b.test", &exporter);
    let mut link = link_upgrade(tls, "b.test", &auth.to_header())
        .await
        .unwrap();
    answered_call(
        &mut link,
        &mut bob,
        "alice@a.test",
        "bob@b.test",
        "link-pin-call-1",
    )
    .await;
    // The link reads no more; bob sends 9 MB for it, more than the
    // socket buffers take.
    for _ in 0..150 {
        bob.send(big_candidate("link-pin-call-1")).await;
    }
    let gone = bob.recv_within(WAIT).await;
    assert_eq!(
        gone,
        bye_from_server(&gone, "link-pin-call-1", 410),
        "{gone}"
    );
    let mut carol = b.connect_online("carol@b.test").await;
    let mut dave = b.connect_online("dave@b.test").await;
    answered_call(
        &mut carol,
        &mut dave,
        "carol@b.test",
        "dave@b.test",
        "after-link-call-1",
    )
    .await;
    drop(link);
    b.metrics().await
}

#[tokio::test]
async fn a_link_that_stops_reading_is_closed_past_link_outbox_bytes() {
    let m = a_link_that_stops_reading("link-pin", "link_outbox_bytes = 262144\n").await;
    assert_eq!(
        metric_value(&m, "wspd_refusals_total{reason=\"slow_reader\"}"),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_link_whose_writes_stall_is_closed_after_write_timeout() {
    let m = a_link_that_stops_reading(
        "link-stall",
        "write_timeout = \"1s\"\nlink_outbox_bytes = 67108864\n",
    )
    .await;
    assert_eq!(
        metric_value(&m, "wspd_refusals_total{reason=\"write_timeout\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "wspd_refusals_total{reason=\"slow_reader\"}"),
        0.0,
        "{m}"
    );
}
