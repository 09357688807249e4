//! A call's life on one domain, over real sockets.

mod common;

use common::*;
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
