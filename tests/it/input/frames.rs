//! The bad-input catalogue: each kind of malformed frame closes its socket
//! with its own close code and reason, ends that socket's calls for the
//! other side, and leaves the server serving everyone else.

use super::*;

// ---------------------------------------------------------------------------
// The bad-input catalogue
// ---------------------------------------------------------------------------

#[tokio::test]
async fn text_that_is_not_json_closes_1007() {
    let s = TestServer::localhost().await;
    catalogue(
        &s,
        1007,
        &[
            ("not json", &["not valid JSON"]),
            ("[\"bye\"", &["not valid JSON"]),
            ("[\"ringing\",null,{\"call\":", &["not valid JSON"]),
            ("", &["not valid JSON"]),
            // Not JSON, though it starts like an object or a number.
            ("{not json", &["not valid JSON"]),
            ("{", &["not valid JSON"]),
            ("42 x", &["not valid JSON"]),
        ],
    )
    .await;
    assert_refusals(&s, &[("bad_json", 7.0)]).await;
}

#[tokio::test]
async fn json_that_is_not_an_array_closes_1002() {
    let s = TestServer::localhost().await;
    let array = &["must be a JSON array"][..];
    catalogue(
        &s,
        1002,
        &[
            (r#"{"keyword":"invite"}"#, array),
            ("42", array),
            (r#""invite""#, array),
            ("null", array),
            ("[]", array),
            (r#"["ringing",null,null,null]"#, array),
        ],
    )
    .await;
    assert_refusals(&s, &[("bad_frame", 6.0)]).await;
}

#[tokio::test]
async fn an_unknown_keyword_closes_1002() {
    let s = TestServer::localhost().await;
    catalogue(
        &s,
        1002,
        &[
            (r#"["hello",{}]"#, &["unknown keyword", "hello"]),
            // Keywords are case-sensitive.
            (r#"["INVITE",{}]"#, &["unknown keyword", "INVITE"]),
            ("[42]", &["unknown keyword", "42"]),
            (r#"[null]"#, &["unknown keyword"]),
        ],
    )
    .await;
    assert_refusals(&s, &[("bad_frame", 4.0)]).await;
}

#[tokio::test]
async fn content_of_the_wrong_shape_closes_1002() {
    let s = TestServer::localhost().await;
    let long = "x".repeat(300);
    let long_index = format!(r#"["icecandidate",{{"candidate":"","sdpMLineIndex":"{long}"}}]"#);
    let long_sdp = format!(r#"["offer",{{"type":"offer","sdp":{{"{long}":1}}}}]"#);
    let cases: &[(&str, &[&str])] = &[
        // invite
        (r#"["invite"]"#, &["bad invite content", "required"]),
        (
            r#"["invite",{"caller":{"uri":"mallory@localhost"}}]"#,
            &["bad invite content", "callee"],
        ),
        (
            r#"["invite",{"caller":{"uri":"mallory@localhost"},"callee":"bob@localhost"}]"#,
            &["bad invite content"],
        ),
        (
            r#"["invite",{"caller":{"uri":"mallory@localhost"},"callee":{"uri":7}}]"#,
            &["bad invite content"],
        ),
        (
            r#"["invite",{"caller":{"uri":"mallory@localhost","name":5},"callee":{"uri":"bob@localhost"}}]"#,
            &["bad invite content"],
        ),
        // offer / answer
        (r#"["offer"]"#, &["bad offer content", "required"]),
        (
            r#"["offer",{"type":"offer","sdp":5}]"#,
            &["bad offer content", "string"],
        ),
        (
            r#"["offer",{"type":"offer"}]"#,
            &["bad offer content", "sdp"],
        ),
        (
            r#"["offer",{"type":"answer","sdp":"v=0"}]"#,
            &["bad offer content", "answer"],
        ),
        (r#"["offer","v=0"]"#, &["bad offer content"]),
        (
            r#"["answer",{"type":"offer","sdp":"v=0"}]"#,
            &["bad answer content", "offer"],
        ),
        (&long_sdp, &["bad offer content"]),
        // icecandidate
        (
            r#"["icecandidate",{"candidate":"candidate:1","sdpMLineIndex":"0"}]"#,
            &["bad icecandidate content"],
        ),
        (
            r#"["icecandidate",{"candidate":5}]"#,
            &["bad icecandidate content"],
        ),
        (
            r#"["icecandidate","candidate:1"]"#,
            &["bad icecandidate content"],
        ),
        // A long serde message must still fit a close frame.
        (&long_index, &["bad icecandidate content"]),
        // bye
        (r#"["bye"]"#, &["bad bye content", "required"]),
        (r#"["bye",{}]"#, &["bad bye content", "code"]),
        (
            r#"["bye",{"description":"x"}]"#,
            &["bad bye content", "code"],
        ),
        (r#"["bye",{"code":99}]"#, &["bad bye content", "100-699"]),
        (r#"["bye",{"code":700}]"#, &["bad bye content", "100-699"]),
        (r#"["bye",{"code":0}]"#, &["bad bye content", "100-699"]),
        (r#"["bye",{"code":"200"}]"#, &["bad bye content"]),
        (r#"["bye",{"code":-1}]"#, &["bad bye content"]),
        (
            r#"["bye",{"code":200,"description":3}]"#,
            &["bad bye content"],
        ),
        // ringing
        (r#"["ringing",5]"#, &["bad ringing content"]),
        (r#"["ringing","yes"]"#, &["bad ringing content"]),
        (r#"["ringing",[]]"#, &["bad ringing content"]),
    ];
    catalogue(&s, 1002, cases).await;
    assert_refusals(&s, &[("bad_frame", cases.len() as f64)]).await;
}

#[tokio::test]
async fn bad_options_close_1002() {
    let s = TestServer::localhost().await;
    let too_long = format!(r#"["ringing",null,{{"call":"{}"}}]"#, "a".repeat(65));
    let call = &["bad options", "call"][..];
    let cases: &[(&str, &[&str])] = &[
        (r#"["ringing",null,{"call":"short"}]"#, call),
        (r#"["ringing",null,{"call":""}]"#, call),
        (&too_long, call),
        (r#"["ringing",null,{"call":"abc def ghi"}]"#, call),
        (r#"["ringing",null,{"call":"abcdefgh!"}]"#, call),
        (r#"["ringing",null,{"call":"abcdéfghij"}]"#, call),
        (r#"["ringing",null,{"call":12345678}]"#, &["bad options"]),
        (r#"["ringing",null,[]]"#, &["bad options"]),
        (r#"["ringing",null,"call-0001"]"#, &["bad options"]),
        (
            r#"["invite",{"caller":{"uri":"mallory@localhost"},"callee":{"uri":"bob@localhost"}},{"call":"bad id"}]"#,
            call,
        ),
    ];
    catalogue(&s, 1002, cases).await;
    assert_refusals(&s, &[("bad_frame", cases.len() as f64)]).await;
}

#[tokio::test]
async fn a_binary_message_closes_1003() {
    let s = TestServer::localhost().await;
    let mut witness = s.connect("wendy@localhost").await;
    let mut c = s.connect("mallory@localhost").await;
    c.ws.send(Message::Binary(br#"["ringing"]"#.to_vec().into()))
        .await
        .unwrap();
    let close = closed(c).await;
    assert_eq!(close.code, 1003, "{close:?}");
    assert!(close.reason.contains("binary"), "{close:?}");
    still_serves(&s, &mut witness).await;
    assert_refusals(&s, &[("binary", 1.0)]).await;
}

/// An `offer` of exactly `len` bytes for a call that does not exist.
fn offer_of_len(len: usize, id: &str) -> String {
    let head = r#"["offer",{"type":"offer","sdp":""#;
    let tail = format!(r#""}},{{"call":"{id}"}}]"#);
    let pad = len - head.len() - tail.len();
    let s = format!("{head}{}{tail}", "a".repeat(pad));
    assert_eq!(s.len(), len);
    s
}

#[tokio::test]
async fn a_message_over_the_default_limit_closes_1009() {
    let s = TestServer::localhost().await;
    let mut witness = s.connect("wendy@localhost").await;

    // Exactly at the limit (64 KiB) is fine: the unknown call gets 481.
    let mut c = s.connect("mallory@localhost").await;
    c.send_text(&offer_of_len(65536, "nosuchcall")).await;
    let f = c.expect_bye(481).await;
    assert_eq!(f[2]["call"], "nosuchcall");
    c.close().await;

    let close = refused(&s, "mallory@localhost", &offer_of_len(65537, "nosuchcall")).await;
    assert_eq!(close.code, 1009, "{close:?}");
    assert!(close.reason.contains("65536"), "{close:?}");
    still_serves(&s, &mut witness).await;

    let close = refused(
        &s,
        "mallory@localhost",
        &offer_of_len(1 << 20, "nosuchcall"),
    )
    .await;
    assert_eq!(close.code, 1009, "{close:?}");
    still_serves(&s, &mut witness).await;
    assert_refusals(&s, &[("too_big", 2.0)]).await;
}

#[tokio::test]
async fn a_message_over_a_configured_limit_closes_1009() {
    let s = TestServer::start(config("localhost", "[limits]\nmax_frame_bytes = 2048")).await;
    let mut witness = s.connect("wendy@localhost").await;

    let mut c = s.connect("mallory@localhost").await;
    c.send_text(&offer_of_len(2048, "nosuchcall")).await;
    c.expect_bye(481).await;
    c.close().await;

    let close = refused(&s, "mallory@localhost", &offer_of_len(2049, "nosuchcall")).await;
    assert_eq!(close.code, 1009, "{close:?}");
    assert!(close.reason.contains("2048"), "{close:?}");
    still_serves(&s, &mut witness).await;

    // A message of several small frames is bounded as a whole.
    let mut c = s.connect("mallory@localhost").await;
    let text = offer_of_len(3000, "nosuchcall");
    let (a, b) = text.as_bytes().split_at(1500);
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, coding::Data, coding::OpCode};
    // tungstenite masks client frames as it writes them.
    let first = Frame::message(a.to_vec(), OpCode::Data(Data::Text), false);
    let second = Frame::message(b.to_vec(), OpCode::Data(Data::Continue), true);
    c.ws.send(Message::Frame(first)).await.unwrap();
    c.ws.send(Message::Frame(second)).await.unwrap();
    let close = closed(c).await;
    assert_eq!(close.code, 1009, "{close:?}");
    still_serves(&s, &mut witness).await;
    assert_refusals(&s, &[("too_big", 2.0)]).await;
}

#[tokio::test]
async fn bad_input_from_a_caller_ends_its_answered_call_with_410() {
    let s = TestServer::localhost().await;
    let mut alice = s.connect("alice@localhost").await;
    let mut bob = s.connect_online("bob@localhost").await;
    let id = "call-bad-0001";
    answered_call(&mut alice, &mut bob, "alice@localhost", "bob@localhost", id).await;

    alice.send_text("{not json").await;
    let close = closed(alice).await;
    assert_eq!(close.code, 1007);
    let f = bob.expect_bye(410).await;
    assert_eq!(f[2]["call"], id);
    bob.expect_nothing().await;
    assert_eq!(s.metric("wspd_calls_active").await, 0.0);
    assert_eq!(
        s.metric("wspd_calls_total{outcome=\"gone\"}").await,
        1.0,
        "{}",
        s.metrics().await
    );
}

#[tokio::test]
async fn bad_input_from_a_callee_ends_its_answered_call_with_410() {
    let s = TestServer::localhost().await;
    let mut alice = s.connect("alice@localhost").await;
    let mut bob = s.connect_online("bob@localhost").await;
    let id = "call-bad-0002";
    answered_call(&mut alice, &mut bob, "alice@localhost", "bob@localhost", id).await;

    bob.send_text(r#"["icecandidate",{"sdpMLineIndex":"zero"},{"call":"call-bad-0002"}]"#)
        .await;
    let close = closed(bob).await;
    assert_eq!(close.code, 1002);
    let f = alice.expect_bye(410).await;
    assert_eq!(f[2]["call"], id);
    alice.expect_nothing().await;
}

#[tokio::test]
async fn bad_input_from_a_ringing_caller_ends_the_call_with_410_for_every_device() {
    let s = TestServer::localhost().await;
    let mut alice = s.connect("alice@localhost").await;
    let mut bob1 = s.connect_online("bob@localhost").await;
    let mut bob2 = s.connect_online("bob@localhost").await;
    let id = "call-bad-0003";
    alice
        .send(invite("alice@localhost", "bob@localhost", id))
        .await;
    bob1.expect("invite").await;
    bob2.expect("invite").await;

    alice
        .ws
        .send(Message::Binary(vec![0u8; 4].into()))
        .await
        .unwrap();
    assert_eq!(closed(alice).await.code, 1003);
    for bob in [&mut bob1, &mut bob2] {
        let f = bob.expect_bye(410).await;
        assert_eq!(f[2]["call"], id);
        bob.expect_nothing().await;
    }
}

#[tokio::test]
async fn bad_input_ends_every_call_of_the_socket() {
    let s = TestServer::localhost().await;
    let mut alice = s.connect("alice@localhost").await;
    let mut bob = s.connect_online("bob@localhost").await;
    let mut carol = s.connect_online("carol@localhost").await;
    answered_call(
        &mut alice,
        &mut bob,
        "alice@localhost",
        "bob@localhost",
        "call-multi-1",
    )
    .await;
    answered_call(
        &mut alice,
        &mut carol,
        "alice@localhost",
        "carol@localhost",
        "call-multi-2",
    )
    .await;
    alice.send_text(r#"["dance"]"#).await;
    let close = closed(alice).await;
    assert_eq!(close.code, 1002);
    assert!(close.reason.contains("dance"), "{close:?}");
    assert_eq!(bob.expect_bye(410).await[2]["call"], "call-multi-1");
    assert_eq!(carol.expect_bye(410).await[2]["call"], "call-multi-2");
    bob.expect_nothing().await;
    carol.expect_nothing().await;
}
