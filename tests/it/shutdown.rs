//! Graceful shutdown: every untransferred call ends with bye 503, sockets
//! close with 1001, transferred calls are left alone.

use crate::common::*;

#[tokio::test]
async fn stopping_ends_untransferred_calls_with_503_and_closes_with_1001() {
    let s = TestServer::localhost().await;
    let mut alice = s.connect_online("alice@localhost").await;
    let mut bob = s.connect_online("bob@localhost").await;
    let mut carol = s.connect_online("carol@localhost").await;
    let mut dave = s.connect_online("dave@localhost").await;

    // An answered call, a ringing call, and a transferred one.
    answered_call(
        &mut alice,
        &mut bob,
        "alice@localhost",
        "bob@localhost",
        "answered-1",
    )
    .await;
    carol
        .send(invite("carol@localhost", "dave@localhost", "ringing-1"))
        .await;
    dave.expect("invite").await;
    alice
        .send(invite("alice@localhost", "dave@localhost", "moved-call-1"))
        .await;
    dave.expect("invite").await;
    dave.send(offer("moved-call-1")).await;
    alice.expect("offer").await;
    alice.send(bye("moved-call-1", 101)).await;
    dave.expect_bye(101).await;
    dave.send(bye("moved-call-1", 101)).await;
    alice.expect_bye(101).await;
    assert_eq!(s.metric("wspd_calls_active").await, 2.0);

    let running = s.running;
    running.drain.start();
    let f = alice.expect_bye(503).await;
    assert_eq!(f[2]["call"], "answered-1");
    assert_eq!(f[1]["description"], "Server shutting down");
    bob.expect_bye(503).await;
    carol.expect_bye(503).await;
    let f = dave.expect_bye(503).await;
    assert_eq!(
        f[2]["call"], "ringing-1",
        "nothing for the transferred call"
    );
    for c in [&mut alice, &mut bob, &mut carol, &mut dave] {
        let closed = c.expect_close().await;
        assert_eq!(closed.code, 1001);
        assert_eq!(closed.reason, "server shutting down");
    }
    tokio::time::timeout(WAIT, running.handle)
        .await
        .expect("the server stops within the grace period")
        .unwrap();
    assert_eq!(running.app.router.active_calls(), 0);
    let m = running.app.metrics.render();
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"unavailable\"}"),
        2.0
    );
}

#[tokio::test]
async fn a_federated_call_hears_503_across_the_link() {
    let net = Net::new("shutdown-fed").await;
    let a = net.server("a.test", "").await;
    let b = net.server("b.test", "").await;
    let mut alice = a.connect_online("alice@a.test").await;
    let mut bob = b.connect_online("bob@b.test").await;
    answered_call(
        &mut alice,
        &mut bob,
        "alice@a.test",
        "bob@b.test",
        "fed-down-1",
    )
    .await;
    a.stop().await;
    alice.expect_bye(503).await;
    // b.test relays a.test's 503 to bob: the call ends with the reason
    // a.test gave, not a bare 410.
    let f = bob.expect_bye(503).await;
    assert_eq!(f[2]["call"], "fed-down-1");
    bob.expect_nothing().await;
    assert_eq!(b.metric("wspd_calls_active").await, 0.0);
}

#[tokio::test]
async fn sigterm_during_live_calls() {
    let limits = "[limits]\nshutdown_grace = \"3s\"\n";
    let cfg = config_file(&temp_dir("sigterm"), "wspd.toml", "127.0.0.1:0", limits);
    let mut w = Wspd::start(&cfg, "info").await;
    let mut alice = Client::connect(&w.url(), &user_token("alice@localhost")).await;
    let mut bob = Client::connect(&w.url(), &user_token("bob@localhost")).await;
    answered_call(
        &mut alice,
        &mut bob,
        "alice@localhost",
        "bob@localhost",
        "sigterm-1",
    )
    .await;

    let started = std::time::Instant::now();
    w.signal("TERM");
    alice.expect_bye(503).await;
    bob.expect_bye(503).await;
    assert_eq!(alice.expect_close().await.code, 1001);
    assert_eq!(bob.expect_close().await.code, 1001);
    let status = w.wait().await;
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "exited within the grace period"
    );
}
