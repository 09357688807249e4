//! A call's life on one domain, over real sockets.

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn call_from_invite_to_transfer() {
    let s = TestServer::localhost().await;
    let mut alice = s.connect("alice@localhost").await;
    let mut bob = s.connect("bob@localhost").await;
    let id = "call-0001";

    alice
        .send(invite("alice@localhost", "bob@localhost", id))
        .await;
    let inv = bob.expect("invite").await;
    assert_eq!(inv[1]["caller"]["uri"], "alice@localhost");
    assert_eq!(inv[2]["call"], id);

    bob.send(json!(["ringing", null, {"call": id}])).await;
    alice.expect("ringing").await;

    // SDP passes through byte for byte, escapes and all.
    let sdp_text =
        r#"["offer",{"type":"offer","sdp":"v=0\r\na=x:\u00e9\"q\"\r\n"},{"call":"call-0001"}]"#;
    bob.send_text(sdp_text).await;
    assert_eq!(alice.recv_text().await, sdp_text);

    alice.send(answer(id)).await;
    bob.expect("answer").await;
    for n in 0..4 {
        alice.send(candidate(id, n)).await;
        bob.send(candidate(id, 10 + n)).await;
    }
    for n in 0..4 {
        assert_eq!(bob.expect("icecandidate").await, candidate(id, n));
        assert_eq!(alice.expect("icecandidate").await, candidate(id, 10 + n));
    }
    assert_eq!(s.metric("wspd_calls_active").await, 1.0);

    alice.send(bye(id, 101)).await;
    bob.expect_bye(101).await;
    bob.send(bye(id, 101)).await;
    alice.expect_bye(101).await;

    assert_eq!(s.metric("wspd_calls_active").await, 0.0);
    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"transferred\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&m, "wspd_frames_total{keyword=\"icecandidate\"}"),
        8.0
    );

    // The call is forgotten: its frames are unknown, and a socket closing
    // later touches nobody.
    alice.send(candidate(id, 99)).await;
    let f = alice.expect_bye(481).await;
    assert_eq!(f[2]["call"], id);
    alice.close().await;
    bob.expect_nothing().await;
}

const ALICE: &str = "alice@localhost";
const BOB: &str = "bob@localhost";

/// A server with alice and `n` devices (sockets) of bob.
async fn alice_and_bob(n: usize) -> (TestServer, Client, Vec<Client>) {
    let s = TestServer::localhost().await;
    let alice = s.connect(ALICE).await;
    let mut devices = Vec::new();
    for _ in 0..n {
        devices.push(s.connect_online(BOB).await);
    }
    (s, alice, devices)
}

/// Alice invites bob; every device must get the invite, verbatim, with the id.
async fn ring(alice: &mut Client, devices: &mut [Client], id: &str) {
    let inv = invite(ALICE, BOB, id);
    alice.send(inv.clone()).await;
    for d in devices.iter_mut() {
        assert_eq!(untraced(d.expect("invite").await), inv);
    }
}

/// The bye's call id and description.
fn bye_parts(f: &serde_json::Value) -> (&str, &str) {
    (
        f[2]["call"].as_str().unwrap_or(""),
        f[1]["description"].as_str().unwrap_or(""),
    )
}

#[tokio::test]
async fn forking_rings_every_device_and_the_first_offer_wins() {
    let (s, mut alice, mut bobs) = alice_and_bob(3).await;
    let id = "fork-0001";
    ring(&mut alice, &mut bobs, id).await;
    assert_eq!(s.metric("wspd_calls_active").await, 1.0);

    // Two devices ring; the caller hears it once.
    bobs[0].send(ringing(id)).await;
    bobs[1].send(ringing(id)).await;
    let r = alice.expect("ringing").await;
    assert_eq!(r, ringing(id));
    // Both ringings have been handled once each sender has its probe back.
    bobs[0].expect_nothing().await;
    bobs[1].expect_nothing().await;
    alice.expect_nothing().await;

    // The second device accepts: the caller gets its offer, the others are
    // told it was answered elsewhere.
    bobs[1].send(offer(id)).await;
    assert_eq!(alice.expect("offer").await, offer(id));
    for i in [0, 2] {
        let f = bobs[i].expect_bye(200).await;
        assert_eq!(bye_parts(&f), (id, "Answered elsewhere"), "{f}");
    }
    bobs[1].expect_nothing().await;

    // The losers are out of the call: their frames are for no call.
    bobs[0].send(candidate(id, 1)).await;
    let f = bobs[0].expect_bye(481).await;
    assert_eq!(f[2]["call"], id);
    bobs[2].send(offer(id)).await;
    let f = bobs[2].expect_bye(481).await;
    assert_eq!(f[2]["call"], id);
    bobs[2].send(bye(id, 200)).await;
    bobs[2].expect_bye(481).await;
    alice.expect_nothing().await;
    bobs[1].expect_nothing().await;

    // The winner and the caller go on.
    alice.send(answer(id)).await;
    assert_eq!(bobs[1].expect("answer").await, answer(id));
    bobs[1].send(candidate(id, 7)).await;
    assert_eq!(alice.expect("icecandidate").await, candidate(id, 7));
    bobs[0].expect_nothing().await;
    bobs[2].expect_nothing().await;
    assert_eq!(s.metric("wspd_calls_active").await, 1.0);
}

#[tokio::test]
async fn busy_only_when_every_device_is_busy() {
    let (s, mut alice, mut bobs) = alice_and_bob(2).await;
    let id = "busy-0001";
    ring(&mut alice, &mut bobs, id).await;

    bobs[0].send(bye(id, 486)).await;
    bobs[0].expect_nothing().await;
    alice.expect_nothing().await;
    assert_eq!(s.metric("wspd_calls_active").await, 1.0);

    bobs[1].send(bye(id, 486)).await;
    let f = alice.expect_bye(486).await;
    assert_eq!(f[2]["call"], id);
    bobs[0].expect_nothing().await;
    bobs[1].expect_nothing().await;

    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
    assert_eq!(metric_value(&m, "wspd_calls_total{outcome=\"busy\"}"), 1.0);
}

#[tokio::test]
async fn one_busy_device_does_not_stop_another_from_answering() {
    let (s, mut alice, mut bobs) = alice_and_bob(2).await;
    let id = "busy-0002";
    ring(&mut alice, &mut bobs, id).await;

    bobs[0].send(bye(id, 486)).await;
    bobs[0].expect_nothing().await;
    bobs[1].send(ringing(id)).await;
    alice.expect("ringing").await;
    bobs[1].send(offer(id)).await;
    assert_eq!(alice.expect("offer").await, offer(id));
    alice.send(answer(id)).await;
    assert_eq!(bobs[1].expect("answer").await, answer(id));
    // The busy device has left already: no "answered elsewhere" for it.
    bobs[0].expect_nothing().await;
    assert_eq!(s.calls_ended("busy").await, 0.0);
    assert_eq!(s.metric("wspd_calls_active").await, 1.0);
}

#[tokio::test]
async fn decline_from_one_device_ends_the_call() {
    let (s, mut alice, mut bobs) = alice_and_bob(2).await;
    let id = "decline-01";
    ring(&mut alice, &mut bobs, id).await;
    bobs[1].send(ringing(id)).await;
    alice.expect("ringing").await;

    let declined = json!(["bye", {"code": 603, "description": "Not now"}, {"call": id}]);
    bobs[0].send(declined.clone()).await;
    // The caller gets the device's own bye, as it was sent.
    assert_eq!(alice.expect("bye").await, declined);
    let f = bobs[1].expect_bye(603).await;
    assert_eq!(bye_parts(&f), (id, "Declined elsewhere"), "{f}");
    bobs[0].expect_nothing().await;
    alice.expect_nothing().await;

    bobs[1].send(offer(id)).await;
    bobs[1].expect_bye(481).await;
    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"declined\"}"),
        1.0
    );
}

#[tokio::test]
async fn caller_bye_before_the_answer_cancels_every_device() {
    let (s, mut alice, mut bobs) = alice_and_bob(2).await;
    let id = "cancel-001";
    ring(&mut alice, &mut bobs, id).await;
    bobs[0].send(ringing(id)).await;
    alice.expect("ringing").await;

    alice.send(bye(id, 200)).await;
    for b in bobs.iter_mut() {
        let f = b.expect_bye(487).await;
        assert_eq!(bye_parts(&f), (id, "Cancelled"), "{f}");
    }
    alice.expect_nothing().await;
    // The call is gone for everyone.
    bobs[1].send(offer(id)).await;
    bobs[1].expect_bye(481).await;
    alice.expect_nothing().await;

    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"cancelled\"}"),
        1.0
    );
}

/// The default ring timeout (60 s) under tokio's paused clock: no real
/// waiting. Every socket is read while the clock runs, as real clients do,
/// so they answer the server's keepalive pings.
#[tokio::test(start_paused = true)]
async fn ring_timeout_ends_the_call_with_408() {
    let (s, mut alice, mut bobs) = alice_and_bob(2).await;
    let id = "timeout-01";
    let started = tokio::time::Instant::now();
    ring(&mut alice, &mut bobs, id).await;
    bobs[0].send(ringing(id)).await;
    alice.expect("ringing").await;

    let long = std::time::Duration::from_secs(300);
    let [b0, b1] = &mut bobs[..] else {
        unreachable!()
    };
    let (a, f0, f1) = tokio::join!(
        alice.recv_within(long),
        b0.recv_within(long),
        b1.recv_within(long)
    );
    let waited = started.elapsed();
    for f in [&a, &f0, &f1] {
        assert_eq!(f[0], "bye", "{f}");
        assert_eq!(f[1]["code"], 408, "{f}");
        assert_eq!(bye_parts(f), (id, "No answer"), "{f}");
    }
    assert!(
        waited >= std::time::Duration::from_secs(60) && waited < std::time::Duration::from_secs(61),
        "the ring timeout fired after {waited:?}"
    );
    alice.expect_nothing().await;
    bobs[0].expect_nothing().await;
    bobs[1].send(offer(id)).await;
    bobs[1].expect_bye(481).await;

    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"timeout\"}"),
        1.0
    );
    assert_eq!(metric_value(&m, "wspd_sessions"), 3.0, "no socket dropped");
}

#[tokio::test]
async fn callee_without_a_socket_is_offline_480() {
    let s = TestServer::localhost().await;
    let mut alice = s.connect(ALICE).await;
    alice.send(invite(ALICE, BOB, "offline-01")).await;
    let f = alice.expect_bye(480).await;
    assert_eq!(f[2]["call"], "offline-01");

    // Bob was online and has gone.
    let bob = s.connect_online(BOB).await;
    bob.close().await;
    s.wait_sessions(1).await;
    alice.send(invite(ALICE, BOB, "offline-02")).await;
    let f = alice.expect_bye(480).await;
    assert_eq!(f[2]["call"], "offline-02");

    // A user's own socket is not one of its devices.
    alice.send(invite(ALICE, ALICE, "offline-03")).await;
    alice.expect_bye(480).await;

    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"offline\"}"),
        3.0
    );
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
}

#[tokio::test]
async fn no_such_user_is_404_with_a_users_file() {
    let dir = temp_dir("calls-404");
    // Alice and bob are users; carol is not. Only the users file's users
    // may connect.
    let mut users = wspd::auth::UsersFile::default();
    users.set("alice", "alice-password").unwrap();
    users.set("bob", "bob-password").unwrap();
    users.save(&dir.join("users.toml")).unwrap();
    let s = TestServer::start(config_in("localhost", "users = \"users.toml\"", &dir)).await;
    let mut alice = s.connect(ALICE).await;

    alice
        .send(invite(ALICE, "carol@localhost", "notfound-1"))
        .await;
    let f = alice.expect_bye(404).await;
    assert_eq!(bye_parts(&f), ("notfound-1", "No such user"), "{f}");
    // A known user without a socket is offline, not unknown.
    alice.send(invite(ALICE, BOB, "notfound-2")).await;
    alice.expect_bye(480).await;
    // And a known user online is called.
    let mut bob = s.connect_online(BOB).await;
    alice.send(invite(ALICE, BOB, "notfound-3")).await;
    bob.expect("invite").await;

    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"not_found\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"offline\"}"),
        1.0
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn frames_of_unknown_calls_get_481() {
    let (s, mut alice, mut bobs) = alice_and_bob(1).await;
    for f in [
        ringing("nosuchcall"),
        offer("nosuchcall"),
        answer("nosuchcall"),
        candidate("nosuchcall", 1),
        json!(["icecandidate", null, {"call": "nosuchcall"}]),
        bye("nosuchcall", 200),
        bye("nosuchcall", 101),
    ] {
        alice.send(f.clone()).await;
        let b = alice.expect_bye(481).await;
        assert_eq!(bye_parts(&b), ("nosuchcall", "No such call"), "{f} -> {b}");
    }
    // Without options.call on a socket with no call: 481 naming no call.
    alice.send(json!(["ringing"])).await;
    let b = alice.expect_bye(481).await;
    assert_eq!(b.as_array().unwrap().len(), 2, "no options: {b}");
    // Another socket's call is unknown to a socket not in it.
    let mut eve = s.connect("eve@localhost").await;
    ring(&mut alice, &mut bobs, "known-call").await;
    eve.send(offer("known-call")).await;
    let b = eve.expect_bye(481).await;
    assert_eq!(b[2]["call"], "known-call");
    alice.expect_nothing().await;
    bobs[0].expect_nothing().await;
}

#[tokio::test]
async fn spoofed_caller_is_403() {
    let (s, mut alice, mut bobs) = alice_and_bob(1).await;
    alice
        .send(invite("mallory@localhost", BOB, "spoof-0001"))
        .await;
    let f = alice.expect_bye(403).await;
    assert_eq!(f[2]["call"], "spoof-0001");
    // Bob's address used by alice's socket, to bob himself.
    alice.send(invite(BOB, BOB, "spoof-0002")).await;
    alice.expect_bye(403).await;
    alice
        .send(invite("not an address", BOB, "spoof-0003"))
        .await;
    alice.expect_bye(403).await;
    bobs[0].expect_nothing().await;
    assert_eq!(s.calls_ended("forbidden").await, 3.0);

    // The same address in other letters is not a spoof.
    alice
        .send(invite("Alice@LOCALHOST", BOB, "spoof-0004"))
        .await;
    bobs[0].expect("invite").await;
}

#[tokio::test]
async fn bad_callee_address_is_400() {
    let (s, mut alice, mut bobs) = alice_and_bob(1).await;
    let bad = [
        "bob",
        "bob@",
        "@localhost",
        "b b@localhost",
        "bob@local host",
        "bob@-localhost",
        "bob@localhost.",
    ];
    for (n, callee) in bad.iter().enumerate() {
        let id = format!("badaddr-{n}");
        alice.send(invite(ALICE, callee, &id)).await;
        let f = alice.expect_bye(400).await;
        let (call, description) = bye_parts(&f);
        assert_eq!(call, id, "{f}");
        assert!(description.starts_with("callee.uri"), "{f}");
    }
    bobs[0].expect_nothing().await;
    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"bad_request\"}"),
        bad.len() as f64
    );
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);

    // The domain and user are case-insensitive: this one is bob.
    alice
        .send(invite(ALICE, "BOB@LocalHost", "goodaddr-1"))
        .await;
    bobs[0].expect("invite").await;
}

/// A well-formed frame the call's state does not allow gets 400 for that
/// call, and the call goes on untouched.
#[tokio::test]
async fn frames_not_allowed_in_the_state_get_400() {
    let (s, mut alice, mut bobs) = alice_and_bob(1).await;
    let bob = &mut bobs[0];
    let id = "state-0001";
    ring(&mut alice, std::slice::from_mut(bob), id).await;

    async fn refused(c: &mut Client, f: serde_json::Value, id: &str) {
        c.send(f.clone()).await;
        let b = c.expect_bye(400).await;
        assert_eq!(b[2]["call"], id, "{f} -> {b}");
    }
    // Ringing: the caller speaks only to hang up; the callee does not answer.
    refused(&mut alice, offer(id), id).await;
    refused(&mut alice, answer(id), id).await;
    refused(&mut alice, candidate(id, 1), id).await;
    refused(&mut alice, bye(id, 101), id).await;
    refused(bob, answer(id), id).await;
    refused(bob, candidate(id, 1), id).await;
    refused(bob, bye(id, 101), id).await;
    alice.expect_nothing().await;
    bob.expect_nothing().await;

    // Answered by the callee: the caller answers first.
    bob.send(offer(id)).await;
    alice.expect("offer").await;
    refused(bob, answer(id), id).await;
    alice.expect_nothing().await;
    alice.send(answer(id)).await;
    assert_eq!(bob.expect("answer").await, answer(id));
    // After that, renegotiation either way is relayed.
    alice.send(offer(id)).await;
    assert_eq!(bob.expect("offer").await, offer(id));
    bob.send(answer(id)).await;
    assert_eq!(alice.expect("answer").await, answer(id));

    alice.send(bye(id, 101)).await;
    bob.expect_bye(101).await;
    bob.send(bye(id, 101)).await;
    alice.expect_bye(101).await;
    assert_eq!(s.calls_ended("transferred").await, 1.0);
    assert_eq!(s.calls_ended("bad_request").await, 0.0);
}

#[tokio::test]
async fn invite_reusing_a_live_call_id_is_400() {
    let (s, mut alice, mut bobs) = alice_and_bob(1).await;
    let id = "reused-001";
    ring(&mut alice, &mut bobs, id).await;

    alice.send(invite(ALICE, BOB, id)).await;
    let f = alice.expect_bye(400).await;
    assert_eq!(bye_parts(&f), (id, "Call id already in use"), "{f}");
    // Another user, another callee: still taken.
    let mut carol = s.connect("carol@localhost").await;
    let _dave = s.connect_online("dave@localhost").await;
    carol
        .send(invite("carol@localhost", "dave@localhost", id))
        .await;
    carol.expect_bye(400).await;
    bobs[0].expect_nothing().await;

    // The live call is untouched.
    bobs[0].send(offer(id)).await;
    assert_eq!(alice.expect("offer").await, offer(id));
    bobs[0].send(bye(id, 200)).await;
    alice.expect_bye(200).await;

    // Once it has ended the id is free again.
    ring(&mut alice, &mut bobs, id).await;
    assert_eq!(s.metric("wspd_calls_active").await, 1.0);
    assert_eq!(s.calls_ended("bad_request").await, 2.0);
}

#[tokio::test]
async fn caller_socket_closing_before_the_answer_is_410_to_every_device() {
    let (s, mut alice, mut bobs) = alice_and_bob(2).await;
    let id = "gone-00001";
    ring(&mut alice, &mut bobs, id).await;
    alice.close().await;
    for b in bobs.iter_mut() {
        let f = b.expect_bye(410).await;
        assert_eq!(f[2]["call"], id, "{f}");
    }
    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
    assert_eq!(metric_value(&m, "wspd_calls_total{outcome=\"gone\"}"), 1.0);
}

#[tokio::test]
async fn a_ringing_device_leaving_while_others_ring_is_nothing_to_the_caller() {
    let (s, mut alice, mut bobs) = alice_and_bob(2).await;
    let id = "gone-00002";
    ring(&mut alice, &mut bobs, id).await;
    let b1 = bobs.pop().unwrap();
    // Gone without a close handshake.
    drop(b1);
    s.wait_sessions(2).await;
    alice.expect_nothing().await;

    bobs[0].send(offer(id)).await;
    assert_eq!(alice.expect("offer").await, offer(id));
    assert_eq!(s.metric("wspd_calls_active").await, 1.0);
}

#[tokio::test]
async fn the_last_device_leaving_before_the_answer() {
    // Every device gone: 410, as for any peer that went away.
    let (s, mut alice, mut bobs) = alice_and_bob(1).await;
    let id = "gone-00003";
    ring(&mut alice, &mut bobs, id).await;
    bobs.pop().unwrap().close().await;
    let f = alice.expect_bye(410).await;
    assert_eq!(bye_parts(&f), (id, "Peer went away"), "{f}");

    // One busy, the other gone: not every device was busy, so 480 too.
    let mut bobs = vec![s.connect_online(BOB).await, s.connect_online(BOB).await];
    let id = "gone-00004";
    ring(&mut alice, &mut bobs, id).await;
    bobs[0].send(bye(id, 486)).await;
    bobs[0].expect_nothing().await;
    bobs.pop().unwrap().close().await;
    alice.expect_bye(480).await;

    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"unanswered\"}"),
        1.0
    );
    assert_eq!(metric_value(&m, "wspd_calls_total{outcome=\"gone\"}"), 1.0);
    assert_eq!(metric_value(&m, "wspd_calls_total{outcome=\"busy\"}"), 0.0);
}

#[tokio::test]
async fn a_socket_closing_after_the_answer_is_410_to_the_other_side() {
    let (s, mut alice, mut bobs) = alice_and_bob(2).await;

    // The caller goes.
    let id = "gone-00005";
    ring(&mut alice, &mut bobs, id).await;
    bobs[0].send(offer(id)).await;
    alice.expect("offer").await;
    bobs[1].expect_bye(200).await;
    alice.close().await;
    let f = bobs[0].expect_bye(410).await;
    assert_eq!(bye_parts(&f), (id, "Peer went away"), "{f}");
    bobs[1].expect_nothing().await;

    // The callee goes (after the caller's answer).
    let mut alice = s.connect(ALICE).await;
    let id = "gone-00006";
    ring(&mut alice, &mut bobs, id).await;
    bobs[1].send(offer(id)).await;
    alice.expect("offer").await;
    bobs[0].expect_bye(200).await;
    alice.send(answer(id)).await;
    bobs[1].expect("answer").await;
    drop(bobs.pop());
    let f = alice.expect_bye(410).await;
    assert_eq!(bye_parts(&f), (id, "Peer went away"), "{f}");
    bobs[0].expect_nothing().await;

    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
    assert_eq!(metric_value(&m, "wspd_calls_total{outcome=\"gone\"}"), 2.0);
}

#[tokio::test]
async fn a_transferred_call_is_forgotten() {
    let s = TestServer::localhost().await;
    let mut alice = s.connect(ALICE).await;
    let mut bob = s.connect_online(BOB).await;
    let id = "xfer-00001";
    answered_call(&mut alice, &mut bob, ALICE, BOB, id).await;
    alice.send(bye(id, 101)).await;
    assert_eq!(bob.expect("bye").await, bye(id, 101));
    bob.send(bye(id, 101)).await;
    assert_eq!(alice.expect("bye").await, bye(id, 101));
    assert_eq!(s.metric("wspd_calls_active").await, 0.0);

    bob.send(candidate(id, 1)).await;
    bob.expect_bye(481).await;
    alice.close().await;
    s.wait_sessions(1).await;
    bob.expect_nothing().await;
    drop(bob);
    s.wait_sessions(0).await;

    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"transferred\"}"),
        1.0
    );
    assert_eq!(metric_value(&m, "wspd_calls_total{outcome=\"gone\"}"), 0.0);
}

/// A side that has sent 101 may close its socket; the call completes when
/// the other side sends its 101, whichever side went first.
#[tokio::test]
async fn a_side_that_transferred_may_close_before_the_other_sends_101() {
    let s = TestServer::localhost().await;
    for (n, caller_first) in [(1, true), (2, false)] {
        let mut alice = s.connect(ALICE).await;
        let mut bob = s.connect_online(BOB).await;
        let id = format!("xfer-half-{n}");
        answered_call(&mut alice, &mut bob, ALICE, BOB, &id).await;
        let (mut first, mut second) = if caller_first {
            (alice, bob)
        } else {
            (bob, alice)
        };
        first.send(bye(&id, 101)).await;
        second.expect_bye(101).await;
        first.close().await;
        s.wait_sessions(1).await;
        second.expect_nothing().await;
        assert_eq!(s.metric("wspd_calls_active").await, 1.0);

        // Late candidates of the side still here go nowhere, quietly.
        second.send(candidate(&id, 1)).await;
        second.expect_nothing().await;
        second.send(bye(&id, 101)).await;
        second.expect_nothing().await;
        let m = s.metrics().await;
        assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
        assert_eq!(
            metric_value(&m, "wspd_calls_total{outcome=\"transferred\"}"),
            n as f64
        );
        assert_eq!(metric_value(&m, "wspd_calls_total{outcome=\"gone\"}"), 0.0);
        second.close().await;
        s.wait_sessions(0).await;
    }
}

fn is_server_id(v: &serde_json::Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test]
async fn frames_without_a_call_id() {
    let s = TestServer::localhost().await;
    let mut alice = s.connect(ALICE).await;
    let mut bob = s.connect_online(BOB).await;
    let mut carol = s.connect_online("carol@localhost").await;
    let sdp = |t: &str| json!({"type": t, "sdp": "v=0\r\n"});

    // A refused invite without an id still names the id it was given.
    alice
        .send(json!(["invite", {"caller": {"uri": ALICE}, "callee": {"uri": "dave@localhost"}}]))
        .await;
    let f = alice.expect_bye(480).await;
    assert!(is_server_id(&f[2]["call"]), "{f}");

    alice
        .send(json!(["invite", {"caller": {"uri": ALICE}, "callee": {"uri": BOB}}]))
        .await;
    let inv = bob.expect("invite").await;
    assert!(is_server_id(&inv[2]["call"]), "{inv}");
    let id = inv[2]["call"].as_str().unwrap().to_string();
    assert_ne!(f[2]["call"], id, "a fresh id per call");

    // Each side has exactly one call: frames without an id mean it, and
    // every frame back carries the id.
    bob.send(json!(["ringing"])).await;
    assert_eq!(alice.expect("ringing").await[2]["call"], id);
    bob.send(json!(["offer", sdp("offer")])).await;
    assert_eq!(
        alice.expect("offer").await,
        json!(["offer", sdp("offer"), {"call": id}])
    );
    alice.send(json!(["answer", sdp("answer"), null])).await;
    assert_eq!(
        bob.expect("answer").await,
        json!(["answer", sdp("answer"), {"call": id}])
    );
    alice.send(json!(["icecandidate", null, {}])).await;
    assert_eq!(
        bob.expect("icecandidate").await,
        json!(["icecandidate", null, {"call": id}])
    );

    // A second call on alice's socket: now frames without an id are refused.
    alice
        .send(invite(ALICE, "carol@localhost", "second-call"))
        .await;
    carol.expect("invite").await;
    alice.send(json!(["icecandidate", null])).await;
    let f = alice.expect_bye(400).await;
    assert_eq!(f.as_array().unwrap().len(), 2, "no call id: {f}");
    bob.expect_nothing().await;
    carol.expect_nothing().await;
    // Bob still has one call.
    bob.send(json!(["icecandidate", null])).await;
    assert_eq!(alice.expect("icecandidate").await[2]["call"], id);

    // Carol declines; alice is back to one call.
    carol.send(json!(["bye", {"code": 603}])).await;
    assert_eq!(alice.expect_bye(603).await[2]["call"], "second-call");
    alice.send(json!(["bye", {"code": 101}])).await;
    assert_eq!(bob.expect_bye(101).await[2]["call"], id);
    bob.send(json!(["bye", {"code": 101}])).await;
    assert_eq!(alice.expect_bye(101).await[2]["call"], id);

    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"transferred\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"declined\"}"),
        1.0
    );
}

#[tokio::test]
async fn hang_up_after_the_answer_is_relayed() {
    let s = TestServer::localhost().await;
    let mut alice = s.connect(ALICE).await;
    let mut bob = s.connect_online(BOB).await;

    // The callee hangs up.
    let id = "hangup-001";
    answered_call(&mut alice, &mut bob, ALICE, BOB, id).await;
    let hangup = json!(["bye", {"code": 200, "description": "See you"}, {"call": id}]);
    bob.send(hangup.clone()).await;
    assert_eq!(alice.expect("bye").await, hangup);
    bob.expect_nothing().await;
    alice.send(candidate(id, 1)).await;
    alice.expect_bye(481).await;

    // The caller hangs up, before its answer even.
    let id = "hangup-002";
    alice.send(invite(ALICE, BOB, id)).await;
    bob.expect("invite").await;
    bob.send(offer(id)).await;
    alice.expect("offer").await;
    alice.send(bye(id, 200)).await;
    assert_eq!(bob.expect("bye").await, bye(id, 200));
    alice.expect_nothing().await;

    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"hung_up\"}"),
        2.0
    );
}

/// 100 calls at once between 200 distinct users, each with 20 candidates
/// each way: every frame arrives once, in order, on its own call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_calls_in_parallel() {
    const CALLS: usize = 100;
    const CANDIDATES: usize = 20;
    let s = TestServer::localhost().await;
    let mut pairs = Vec::new();
    for i in 0..CALLS {
        let caller = format!("caller{i}@localhost");
        let callee = format!("callee{i}@localhost");
        let a = s.connect(&caller).await;
        let b = s.connect_online(&callee).await;
        pairs.push((caller, callee, a, b));
    }
    let tasks: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(i, (caller, callee, mut a, mut b))| {
            tokio::spawn(async move {
                let id = format!("parallel-call-{i:04}");
                answered_call(&mut a, &mut b, &caller, &callee, &id).await;
                let send = async {
                    for n in 0..CANDIDATES {
                        a.send(candidate(&id, n)).await;
                        b.send(candidate(&id, 1000 + n)).await;
                    }
                };
                send.await;
                for n in 0..CANDIDATES {
                    assert_eq!(b.expect("icecandidate").await, candidate(&id, n));
                    assert_eq!(a.expect("icecandidate").await, candidate(&id, 1000 + n));
                }
                a.send(bye(&id, 101)).await;
                assert_eq!(b.expect("bye").await, bye(&id, 101));
                b.send(bye(&id, 101)).await;
                assert_eq!(a.expect("bye").await, bye(&id, 101));
                // Nothing twice, nothing from another call.
                a.expect_nothing().await;
                b.expect_nothing().await;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"transferred\"}"),
        CALLS as f64
    );
    assert_eq!(
        metric_value(&m, "wspd_frames_total{keyword=\"icecandidate\"}"),
        (CALLS * CANDIDATES * 2) as f64
    );
}

/// Both sides hang up at the same moment, on many calls at once, with the
/// server's sessions on several threads: each call ends once and is counted
/// once. (The second bye used to find the ended call still in the router's
/// map and end it again: `wspd_calls_active` went below 0.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossing_hang_ups_end_each_call_once() {
    const CALLS: usize = 50;
    const ROUNDS: usize = 10;
    let s = TestServer::localhost().await;
    let all_at_once = std::sync::Arc::new(tokio::sync::Barrier::new(CALLS));
    let mut tasks = Vec::new();
    for i in 0..CALLS {
        let caller = format!("caller{i}@localhost");
        let callee = format!("callee{i}@localhost");
        let mut a = s.connect(&caller).await;
        let mut b = s.connect_online(&callee).await;
        let all_at_once = all_at_once.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let id = format!("crossing-{i:04}-{round:02}");
                answered_call(&mut a, &mut b, &caller, &callee, &id).await;
                all_at_once.wait().await;
                tokio::join!(a.send(bye(&id, 200)), b.send(bye(&id, 200)));
                let (fa, fb) = tokio::join!(a.drain(), b.drain());
                // The bye that ended the call reached the other side, whose
                // own bye then found no call.
                let ended_by_other = [
                    bye(&id, 200),
                    json!(["bye", {"code": 481, "description": "No such call"}, {"call": id}]),
                ];
                match (fa.as_slice(), fb.as_slice()) {
                    ([], heard) | (heard, []) => assert_eq!(heard, ended_by_other, "{id}"),
                    _ => panic!("{id}: both sides heard something: {fa:?} {fb:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"hung_up\"}"),
        (CALLS * ROUNDS) as f64
    );
}

/// A resume (docs/protocol.md "Resuming a transferred call") is an invite
/// like any other: after both 101s the id is free again, the invite with
/// `"resume": true` is relayed verbatim to every device, a device that
/// does not hold the call leaves with 481, and the one that does answers
/// with an offer without ringing. Nothing in the server tells the two apart.
#[tokio::test]
async fn a_resume_is_an_invite_with_the_same_id_and_needs_no_special_case() {
    let (s, mut alice, mut bobs) = alice_and_bob(2).await;
    let id = "resume-0001";
    ring(&mut alice, &mut bobs, id).await;
    bobs[0].send(offer(id)).await;
    alice.expect("offer").await;
    bobs[1].expect_bye(200).await;
    alice.send(answer(id)).await;
    bobs[0].expect("answer").await;
    alice.send(bye(id, 101)).await;
    bobs[0].expect_bye(101).await;
    bobs[0].send(bye(id, 101)).await;
    alice.expect_bye(101).await;
    assert_eq!(s.metric("wspd_calls_active").await, 0.0);

    // The path broke: the caller invites again with the call's own id.
    let resume = json!(["invite", {"caller": {"uri": ALICE}, "callee": {"uri": BOB}, "resume": true}, {"call": id}]);
    alice.send(resume.clone()).await;
    for d in bobs.iter_mut() {
        assert_eq!(untraced(d.expect("invite").await), resume);
    }
    // The other device does not hold the call: 481, and it leaves.
    bobs[1].send(bye(id, 481)).await;
    bobs[1].expect_nothing().await;
    alice.expect_nothing().await;
    // The device that holds it restarts ICE: an offer, no ringing.
    bobs[0].send(offer(id)).await;
    assert_eq!(alice.expect("offer").await, offer(id));
    alice.send(answer(id)).await;
    bobs[0].expect("answer").await;
    alice.send(candidate(id, 1)).await;
    assert_eq!(bobs[0].expect("icecandidate").await, candidate(id, 1));
    bobs[0].send(bye(id, 101)).await;
    alice.expect_bye(101).await;
    alice.send(bye(id, 101)).await;
    bobs[0].expect_bye(101).await;
    assert_eq!(s.metric("wspd_calls_active").await, 0.0);
    assert_eq!(s.calls_ended("transferred").await, 2.0);
    bobs[1].expect_nothing().await;

    // With one device that does not hold the call, its 481 reaches the
    // caller as it was sent: the library's "not there yet".
    let id = "resume-0002";
    let mut lone = s.connect_online("carol@localhost").await;
    alice
        .send(json!(["invite", {"caller": {"uri": ALICE}, "callee": {"uri": "carol@localhost"}, "resume": true}, {"call": id}]))
        .await;
    lone.expect("invite").await;
    lone.send(bye(id, 481)).await;
    let f = alice.expect_bye(481).await;
    assert_eq!(f[2]["call"], id);
    assert_eq!(s.metric("wspd_calls_active").await, 0.0);
}
