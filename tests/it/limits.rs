//! The configurable limits: each refuses with its documented answer and
//! the server goes on serving everyone else.

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn a_frame_flood_closes_that_socket_with_1008() {
    let s = TestServer::start(config(
        "localhost",
        "[limits]\nframes_per_second = 5\nframe_burst = 10\n",
    ))
    .await;
    let mut flooder = s.connect_online("mallory@localhost").await; // the probe took one token
    let mut alice = s.connect_online("alice@localhost").await;
    for n in 0..20 {
        flooder
            .send(json!(["ringing", null, {"call": format!("flood-{n:04}")}]))
            .await;
    }
    // The first frames are answered (481: no such call), then the socket
    // is closed for the flood.
    let mut answered = 0;
    let closed = loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut flooder.ws))
            .await
            .unwrap()
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_))) => answered += 1,
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(c)))) => break c,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(answered, 9, "the burst of 10, less the probe");
    assert_eq!(u16::from(closed.code), 1008);
    assert!(
        closed.reason.contains("too many frames"),
        "{}",
        closed.reason
    );
    alice.expect_nothing().await;
    assert_eq!(
        s.metric("wspd_limits_hit_total{limit=\"frames_per_second\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn connections_per_address_are_bounded() {
    let s = TestServer::start(config("localhost", "[limits]\nconnections_per_ip = 2\n")).await;
    let a = s.connect_online("alice@localhost").await;
    let mut b = s.connect_online("bob@localhost").await;
    // A third connection from 127.0.0.1 is closed at once.
    let url = s.url();
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", s.token("carol@localhost"))
            .parse()
            .unwrap(),
    );
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    b.expect_nothing().await;
    // (Read in-process: a /metrics request would be one more connection.)
    let m = s.running.app.metrics.render();
    assert_eq!(
        metric_value(&m, "wspd_limits_hit_total{limit=\"connections_per_ip\"}"),
        1.0
    );
    // A socket that closes gives its place back.
    a.close().await;
    s.wait_sessions(1).await;
    let mut c = s.connect_online("carol@localhost").await;
    c.expect_nothing().await;
}

#[tokio::test]
async fn calls_ringing_for_one_user_are_bounded() {
    let s = TestServer::start(config(
        "localhost",
        "[limits]\npending_invites_per_user = 2\n",
    ))
    .await;
    let mut bob = s.connect_online("bob@localhost").await;
    let mut callers = Vec::new();
    for n in 0..3 {
        callers.push(s.connect_online(&format!("caller{n}@localhost")).await);
    }
    for (n, c) in callers.iter_mut().enumerate().take(2) {
        c.send(invite(
            &format!("caller{n}@localhost"),
            "bob@localhost",
            &format!("ring-{n:04}"),
        ))
        .await;
        bob.expect("invite").await;
    }
    callers[2]
        .send(invite("caller2@localhost", "bob@localhost", "ring-0002"))
        .await;
    let f = callers[2].expect_bye(486).await;
    assert!(
        f[1]["description"]
            .as_str()
            .unwrap()
            .contains("too many calls ringing")
    );
    bob.expect_nothing().await;
    // Once one stops ringing (answered here), another may ring.
    bob.send(offer("ring-0000")).await;
    callers[0].expect("offer").await;
    callers[2]
        .send(invite("caller2@localhost", "bob@localhost", "ring-0003"))
        .await;
    bob.expect("invite").await;
    // Other users are not affected by bob's limit.
    let mut dave = s.connect_online("dave@localhost").await;
    callers[1]
        .send(invite("caller1@localhost", "dave@localhost", "ring-0004"))
        .await;
    dave.expect("invite").await;
    assert_eq!(
        s.metric("wspd_limits_hit_total{limit=\"pending_invites_per_user\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn too_many_calls_on_one_socket_is_503() {
    let s = TestServer::start(config("localhost", "[limits]\ncalls_per_socket = 2\n")).await;
    let mut alice = s.connect_online("alice@localhost").await;
    let mut bob = s.connect_online("bob@localhost").await;
    for n in 0..2 {
        alice
            .send(invite(
                "alice@localhost",
                "bob@localhost",
                &format!("many-{n:04}"),
            ))
            .await;
        bob.expect("invite").await;
    }
    alice
        .send(invite("alice@localhost", "bob@localhost", "many-0002"))
        .await;
    alice.expect_bye(503).await;
    bob.expect_nothing().await;
}

#[tokio::test]
async fn one_domain_flooding_invites_is_bounded_on_its_own_link() {
    let net = Net::new("limits-link").await;
    let a = net.server("a.test", "").await;
    let b = net
        .server(
            "b.test",
            "invites_per_second = 1\ninvite_burst = 2\ncalls_per_link = 3\n",
        )
        .await;
    let mut alice = a.connect_online("alice@a.test").await;
    let mut bob = b.connect_online("bob@b.test").await;
    for n in 0..2 {
        alice
            .send(invite(
                "alice@a.test",
                "bob@b.test",
                &format!("flood-in-{n}"),
            ))
            .await;
        bob.expect("invite").await;
    }
    alice
        .send(invite("alice@a.test", "bob@b.test", "flood-in-2"))
        .await;
    let f = alice.expect_bye(503).await;
    assert!(
        f[1]["description"]
            .as_str()
            .unwrap()
            .contains("Too many invites"),
        "{f}"
    );
    bob.expect_nothing().await;
    // b.test's own users are not slowed by a.test's flood.
    let mut carol = b.connect_online("carol@b.test").await;
    carol
        .send(invite("carol@b.test", "bob@b.test", "local-while-flooded"))
        .await;
    bob.expect("invite").await;
    assert_eq!(
        b.metric("wspd_limits_hit_total{limit=\"invites_per_second\"}")
            .await,
        1.0
    );
}

/// A socket that stops reading is disconnected once its outbox is full,
/// instead of growing memory; its calls end for their peers with 410.
#[tokio::test]
async fn a_reader_too_slow_is_disconnected() {
    let s = TestServer::start(config(
        "localhost",
        "[limits]\noutbox_frames = 8\nframe_burst = 1000\nframes_per_second = 1000\n",
    ))
    .await;
    let mut alice = s.connect_online("alice@localhost").await;
    let mut bob = s.connect_online("bob@localhost").await;
    answered_call(
        &mut alice,
        &mut bob,
        "alice@localhost",
        "bob@localhost",
        "slow-read-1",
    )
    .await;
    // Bob stops reading. Alice sends big candidates until the kernel's
    // buffers and then bob's outbox are full.
    let big = "x".repeat(60_000);
    let mut sent = 0;
    let gone = loop {
        assert!(sent < 2_000, "bob was never disconnected");
        alice
            .send(json!(["icecandidate", {"candidate": big, "sdpMid": "0", "sdpMLineIndex": 0}, {"call": "slow-read-1"}]))
            .await;
        sent += 1;
        // Alice hears of bob only once he is gone.
        if let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) =
            tokio::time::timeout(
                std::time::Duration::ZERO,
                futures_util::StreamExt::next(&mut alice.ws),
            )
            .await
        {
            break serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap();
        }
    };
    assert_eq!(gone[0], "bye", "{gone}");
    assert_eq!(gone[1]["code"], 410, "{gone}");
    drop(bob);
    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_refusals_total{reason=\"slow_reader\"}"),
        1.0
    );
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
}
