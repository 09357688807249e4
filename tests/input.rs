//! Bad input and authentication, over real sockets: what closes a socket
//! and why, what refuses an upgrade, the login endpoint, the plain HTTP
//! routes, keepalive and the sessions gauge.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wspd::address::Address;
use wspd::auth::{Tokens, UsersFile};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{:08}", N.fetch_add(1, Ordering::Relaxed))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits for the server's close frame, then keeps reading, which sends the
/// client's answer to the close, until the connection ends. By then the
/// server's session has ended and told its calls.
async fn closed(mut c: Client) -> Closed {
    let close = c.expect_close().await;
    let end = tokio::time::timeout(WAIT, async {
        while let Some(Ok(m)) = c.ws.next().await {
            assert!(
                matches!(m, Message::Close(_) | Message::Ping(_) | Message::Pong(_)),
                "after the close: {m:?}"
            );
        }
    })
    .await;
    assert!(end.is_ok(), "the server did not end the connection");
    close
}

/// Opens a socket for `user`, sends `text` and returns how the server
/// closed it.
async fn refused(s: &TestServer, user: &str, text: &str) -> Closed {
    let mut c = s.connect(user).await;
    c.send_text(text).await;
    closed(c).await
}

/// Proves the server still serves: the witness socket (opened before the
/// bad input) answers a probe, and a fresh call between two other users
/// rings through and ends.
async fn still_serves(s: &TestServer, witness: &mut Client) {
    witness.expect_nothing().await;
    let mut carol = s.connect_online("carol@localhost").await;
    let mut dave = s.connect_online("dave@localhost").await;
    let id = unique("witness");
    carol
        .send(invite("carol@localhost", "dave@localhost", &id))
        .await;
    let f = dave.expect("invite").await;
    assert_eq!(f[2]["call"], id.as_str());
    dave.send(bye(&id, 603)).await;
    carol.expect_bye(603).await;
    carol.close().await;
    dave.close().await;
}

/// Sends every text as the first message of a fresh socket; each must
/// close with `code` and a reason containing every `needles` entry; after
/// each the server must still serve.
async fn catalogue(s: &TestServer, code: u16, cases: &[(&str, &[&str])]) {
    let mut witness = s.connect("wendy@localhost").await;
    for (text, needles) in cases {
        let c = refused(s, "mallory@localhost", text).await;
        assert_eq!(c.code, code, "{text} -> {c:?}");
        for n in *needles {
            assert!(
                c.reason.contains(n),
                "{text}: close reason {:?} should mention {n:?}",
                c.reason
            );
        }
        // A close reason must fit a control frame (RFC 6455 5.5: 125
        // bytes, 2 of them the code).
        assert!(c.reason.len() <= 123, "{text}: reason too long");
        still_serves(s, &mut witness).await;
    }
    witness.close().await;
}

async fn refusals(s: &TestServer, reason: &str) -> f64 {
    s.metric(&format!("wspd_refusals_total{{reason=\"{reason}\"}}"))
        .await
}

/// Checks the refusal counters: the listed ones have these values, the
/// others are zero.
async fn assert_refusals(s: &TestServer, expected: &[(&str, f64)]) {
    let m = s.metrics().await;
    for reason in [
        "unauthorized",
        "bad_upgrade",
        "too_many_connections",
        "handshake",
        "bad_json",
        "bad_frame",
        "binary",
        "too_big",
        "slow_reader",
        "silent",
    ] {
        let want = expected
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0.0, |(_, n)| *n);
        let got = metric_value(&m, &format!("wspd_refusals_total{{reason=\"{reason}\"}}"));
        assert_eq!(got, want, "wspd_refusals_total{{reason=\"{reason}\"}}\n{m}");
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A JSON error body `{"error": id, "description": text}`; returns it.
fn json_error(status: u16, headers: &[(String, String)], body: &str, id: &str) -> Value {
    assert_eq!(
        header(headers, "content-type"),
        Some("application/json"),
        "{status} {body}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["error"], id, "{status} {body}");
    let d = v["description"].as_str().expect("a description");
    assert!(!d.is_empty());
    assert_eq!(v.as_object().unwrap().len(), 2, "{body}");
    v
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The accept value RFC 6455 gives for [`KEY`].
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The headers of a valid WebSocket upgrade offering wsp-1.0.
fn upgrade_headers() -> Vec<(&'static str, String)> {
    vec![
        ("Connection", "Upgrade".into()),
        ("Upgrade", "websocket".into()),
        ("Sec-WebSocket-Version", "13".into()),
        ("Sec-WebSocket-Key", KEY.into()),
        ("Sec-WebSocket-Protocol", "wsp-1.0".into()),
    ]
}

/// `GET /wsp` as a WebSocket upgrade with these headers, expecting a
/// refusal (a plain HTTP response).
async fn upgrade_refused(
    s: &TestServer,
    path: &str,
    headers: &[(&str, String)],
) -> (u16, Vec<(String, String)>, String) {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http(s.addr(), "GET", path, &h, "").await
}

fn with_bearer(token: &str) -> Vec<(&'static str, String)> {
    let mut h = upgrade_headers();
    h.push(("Authorization", format!("Bearer {token}")));
    h
}

#[derive(serde::Serialize)]
struct RawClaims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    iat: u64,
}

/// A JWT with these claims, signed with `secret` and `alg`.
fn jwt(claims: &RawClaims, secret: &str, alg: jsonwebtoken::Algorithm) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Opens /wsp with a hand-made request; the error is tungstenite's.
async fn try_connect(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<(Client, Option<String>), WsError> {
    let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
    let proto = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    Ok((Client { ws }, proto))
}

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

// ---------------------------------------------------------------------------
// Upgrade refusals
// ---------------------------------------------------------------------------

#[tokio::test]
async fn upgrades_without_a_good_token_are_refused_with_401() {
    let s = TestServer::localhost().await;
    let now = unix_now();
    let alice = Address::parse("alice@localhost").unwrap();
    let hs = jsonwebtoken::Algorithm::HS256;

    let other_secret = Tokens::new("localhost", "another-secret-another-secret-another")
        .mint(&alice, Duration::from_secs(3600))
        .0;
    let foreign = Tokens::new("example.com", SECRET)
        .mint(
            &Address::parse("alice@example.com").unwrap(),
            Duration::from_secs(3600),
        )
        .0;
    let expired = jwt(
        &RawClaims {
            sub: Some("alice@localhost"),
            exp: Some(now - 60),
            iat: now - 120,
        },
        SECRET,
        hs,
    );
    let no_exp = jwt(
        &RawClaims {
            sub: Some("alice@localhost"),
            exp: None,
            iat: now,
        },
        SECRET,
        hs,
    );
    let bad_subject = jwt(
        &RawClaims {
            sub: Some("not an address"),
            exp: Some(now + 600),
            iat: now,
        },
        SECRET,
        hs,
    );
    let hs512 = jwt(
        &RawClaims {
            sub: Some("alice@localhost"),
            exp: Some(now + 600),
            iat: now,
        },
        SECRET,
        jsonwebtoken::Algorithm::HS512,
    );
    let good = s.token("alice@localhost");
    let tampered = {
        // Same signature, another subject.
        let parts: Vec<&str> = good.split('.').collect();
        let other = s.token("mallory@localhost");
        let other_payload = other.split('.').nth(1).unwrap();
        format!("{}.{}.{}", parts[0], other_payload, parts[2])
    };

    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let mut cases: Vec<Case> = vec![
        ("no token", upgrade_headers(), "missing-token"),
        ("empty bearer", with_bearer(""), "missing-token"),
        ("garbage", with_bearer("garbage"), "invalid-token"),
        (
            "another secret",
            with_bearer(&other_secret),
            "invalid-token",
        ),
        ("tampered", with_bearer(&tampered), "invalid-token"),
        ("expired", with_bearer(&expired), "token-expired"),
        ("no exp", with_bearer(&no_exp), "invalid-token"),
        ("bad subject", with_bearer(&bad_subject), "invalid-token"),
        ("HS512", with_bearer(&hs512), "invalid-token"),
        ("another domain", with_bearer(&foreign), "wrong-domain"),
    ];
    let mut basic = upgrade_headers();
    basic.push(("Authorization", "Basic YWxpY2U6cGFzcw==".into()));
    cases.push(("basic auth", basic, "missing-token"));

    for (what, headers, id) in &cases {
        let (status, h, body) = upgrade_refused(&s, "/wsp", headers).await;
        assert_eq!(status, 401, "{what}: {body}");
        json_error(status, &h, &body, id);
        assert_eq!(header(&h, "www-authenticate"), Some("Bearer"), "{what}");
    }
    // The same through the query string.
    for (token, id) in [(&expired, "token-expired"), (&foreign, "wrong-domain")] {
        let (status, h, body) = upgrade_refused(
            &s,
            &format!("/wsp?access_token={token}"),
            &upgrade_headers(),
        )
        .await;
        assert_eq!(status, 401, "{body}");
        json_error(status, &h, &body, id);
    }
    let refused_n = cases.len() as f64 + 2.0;
    assert_refusals(&s, &[("unauthorized", refused_n)]).await;
    assert_eq!(s.metric("wspd_sessions").await, 0.0);

    // The good token still works.
    let mut c = s.connect("alice@localhost").await;
    c.expect_nothing().await;
}

#[tokio::test]
async fn a_token_in_the_query_string_opens_a_socket() {
    let s = TestServer::localhost().await;
    let mut bob = s.connect_online("bob@localhost").await;
    let token = s.token("alice@localhost");
    let mut req = format!("{}?access_token={token}", s.url())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("wsp-1.0"),
    );
    let (mut alice, proto) = try_connect(req).await.expect("accepted");
    assert_eq!(proto.as_deref(), Some("wsp-1.0"));
    // The socket is alice's: she can place a call as herself.
    answered_call(
        &mut alice,
        &mut bob,
        "alice@localhost",
        "bob@localhost",
        "call-query-1",
    )
    .await;
    // Other query parameters do not get in the way.
    let mut req = format!("{}?x=1&access_token={token}&y=2", s.url())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("wsp-1.0"),
    );
    let (mut again, _) = try_connect(req).await.expect("accepted");
    again.expect_nothing().await;
}

#[tokio::test]
async fn subprotocol_negotiation() {
    let s = TestServer::localhost().await;
    let token = s.token("alice@localhost");
    let request = |proto: Option<&'static str>| {
        let mut req = s.url().into_client_request().unwrap();
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        if let Some(p) = proto {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
        }
        req
    };

    // None offered: accepted, none selected.
    let (mut c, proto) = try_connect(request(None)).await.expect("accepted");
    assert_eq!(proto, None);
    c.expect_nothing().await;
    // wsp-1.0 among others: selected.
    let (mut c, proto) = try_connect(request(Some("chat, wsp-1.0")))
        .await
        .expect("accepted");
    assert_eq!(proto.as_deref(), Some("wsp-1.0"));
    c.expect_nothing().await;

    // Only others: refused at the upgrade, as plain HTTP.
    for offered in ["chat", "wsp-2.0", "WSP-1.0x"] {
        let mut h = with_bearer(&token);
        h.retain(|(k, _)| *k != "Sec-WebSocket-Protocol");
        h.push(("Sec-WebSocket-Protocol", offered.into()));
        let (status, hs, body) = upgrade_refused(&s, "/wsp", &h).await;
        assert_eq!(status, 400, "{offered}: {body}");
        let v = json_error(status, &hs, &body, "bad-upgrade");
        assert!(
            v["description"].as_str().unwrap().contains("wsp-1.0"),
            "{body}"
        );
    }
    // And tungstenite sees a refusal.
    match try_connect(request(Some("chat"))).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 400),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("an upgrade offering only chat was accepted"),
    }
    assert_refusals(&s, &[("bad_upgrade", 4.0)]).await;
}

#[tokio::test]
async fn malformed_upgrades_are_refused() {
    let s = TestServer::localhost().await;
    let token = s.token("alice@localhost");

    // Wrong WebSocket version: 426 naming the version spoken.
    for version in ["8", "14", ""] {
        let mut h = with_bearer(&token);
        h.retain(|(k, _)| *k != "Sec-WebSocket-Version");
        if !version.is_empty() {
            h.push(("Sec-WebSocket-Version", version.into()));
        }
        let (status, hs, body) = upgrade_refused(&s, "/wsp", &h).await;
        assert_eq!(status, 426, "version {version:?}: {body}");
        json_error(status, &hs, &body, "bad-upgrade");
        assert_eq!(header(&hs, "sec-websocket-version"), Some("13"));
    }

    // A plain GET: 400, even with a good token.
    let auth = format!("Bearer {token}");
    let (status, hs, body) = http(s.addr(), "GET", "/wsp", &[("Authorization", &auth)], "").await;
    assert_eq!(status, 400, "{body}");
    let v = json_error(status, &hs, &body, "bad-upgrade");
    assert!(
        v["description"].as_str().unwrap().contains("WebSocket"),
        "{body}"
    );

    // Upgrade to something else.
    let mut h = with_bearer(&token);
    h.retain(|(k, _)| *k != "Upgrade");
    h.push(("Upgrade", "h2c".into()));
    let (status, hs, body) = upgrade_refused(&s, "/wsp", &h).await;
    assert_eq!(status, 400, "{body}");
    json_error(status, &hs, &body, "bad-upgrade");

    // No key.
    let mut h = with_bearer(&token);
    h.retain(|(k, _)| *k != "Sec-WebSocket-Key");
    let (status, hs, body) = upgrade_refused(&s, "/wsp", &h).await;
    assert_eq!(status, 400, "{body}");
    let v = json_error(status, &hs, &body, "bad-upgrade");
    assert!(
        v["description"]
            .as_str()
            .unwrap()
            .contains("Sec-WebSocket-Key"),
        "{body}"
    );
    assert_refusals(&s, &[("bad_upgrade", 6.0)]).await;
    assert_eq!(s.metric("wspd_sessions").await, 0.0);
}

#[tokio::test]
async fn a_raw_upgrade_is_accepted_and_its_close_answered() {
    let s = TestServer::localhost().await;
    let (mut tcp, head) = raw_upgrade(&s, &s.token("alice@localhost")).await;
    let head = head.to_ascii_lowercase();
    assert!(head.contains("sec-websocket-protocol: wsp-1.0"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // A masked close frame (1000) from the client: the server answers it
    // with a close frame before it hangs up (RFC 6455 5.5.1), so the
    // browser's close is clean.
    tcp.write_all(&[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2])
        .await
        .unwrap();
    let (op, payload) = read_frame(&mut tcp).await;
    assert_eq!(op, 0x88);
    assert_eq!(payload, [0x03, 0xe8]);
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("the server hangs up")
        .unwrap();
    assert!(rest.is_empty(), "{rest:x?}");
}

// ---------------------------------------------------------------------------
// POST /token
// ---------------------------------------------------------------------------

/// A server with a users file holding alice's password.
fn login_server_config(tag: &str) -> (std::path::PathBuf, wspd::config::Config) {
    let dir = temp_dir(&format!("input-{tag}"));
    let mut users = UsersFile::default();
    users.set("alice", "correct horse").unwrap();
    users.save(&dir.join("users.toml")).unwrap();
    let config = config_in(
        "localhost",
        "users = \"users.toml\"\n[limits]\nlogin_failure_delay = \"10ms\"",
        &dir,
    );
    (dir, config)
}

async fn post_token(s: &TestServer, body: &str) -> (u16, Vec<(String, String)>, String) {
    http(s.addr(), "POST", "/token", &[], body).await
}

#[tokio::test]
async fn login_with_the_right_password_gives_a_token_that_opens_wsp() {
    let (dir, config) = login_server_config("login-ok");
    let s = TestServer::start(config).await;

    for user in ["alice", "alice@localhost", "Alice@LOCALHOST"] {
        let body = json!({"user": user, "password": "correct horse"}).to_string();
        let before = unix_now();
        let (status, h, body) = post_token(&s, &body).await;
        assert_eq!(status, 200, "{user}: {body}");
        assert_eq!(header(&h, "content-type"), Some("application/json"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["user"], "alice@localhost", "{body}");
        let expires = v["expires"].as_u64().expect("expires is a number");
        // token_ttl defaults to 12 h.
        assert!(
            (before + 43200..=unix_now() + 43200).contains(&expires),
            "{body}"
        );
        let token = v["token"].as_str().unwrap();
        assert_eq!(token.split('.').count(), 3);

        // The socket is alice's: an invite as alice passes the caller
        // check and meets the users file (404 for a stranger); one as
        // someone else is refused (403).
        let mut alice = Client::connect(&s.url(), token).await;
        let id = unique("login");
        alice
            .send(invite("alice@localhost", "nobody@localhost", &id))
            .await;
        assert_eq!(alice.expect_bye(404).await[2]["call"], id.as_str());
        let id = unique("login");
        alice
            .send(invite("mallory@localhost", "alice@localhost", &id))
            .await;
        assert_eq!(alice.expect_bye(403).await[2]["call"], id.as_str());
        alice.close().await;
    }
    assert_eq!(s.metric("wspd_logins_total{result=\"ok\"}").await, 3.0);
    assert_eq!(s.metric("wspd_logins_total{result=\"failed\"}").await, 0.0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn login_failures_are_401_and_counted() {
    let (dir, config) = login_server_config("login-failed");
    let s = TestServer::start(config).await;
    let cases = [
        json!({"user": "alice", "password": "wrong"}),
        json!({"user": "alice", "password": ""}),
        json!({"user": "alice", "password": "correct horse "}),
        json!({"user": "bob", "password": "correct horse"}),
        json!({"user": "alice@example.com", "password": "correct horse"}),
        json!({"user": "not a name", "password": "correct horse"}),
        json!({"user": "", "password": "correct horse"}),
    ];
    for c in &cases {
        let (status, h, body) = post_token(&s, &c.to_string()).await;
        assert_eq!(status, 401, "{c}: {body}");
        json_error(status, &h, &body, "bad-credentials");
        assert!(!body.contains("token\""), "{body}");
    }
    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_logins_total{result=\"failed\"}"),
        cases.len() as f64,
        "{m}"
    );
    assert_eq!(metric_value(&m, "wspd_logins_total{result=\"ok\"}"), 0.0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn login_with_a_malformed_or_large_body_is_refused() {
    let (dir, config) = login_server_config("login-bad");
    let s = TestServer::start(config).await;
    for body in [
        "",
        "user=alice&password=x",
        "{\"user\": \"alice\"",
        r#"{"user":"alice"}"#,
        r#"{"password":"correct horse"}"#,
        r#"{"user":"alice","password":"correct horse","admin":true}"#,
        r#"{"user":1,"password":"correct horse"}"#,
    ] {
        let (status, h, resp) = post_token(&s, body).await;
        assert_eq!(status, 400, "{body:?}: {resp}");
        json_error(status, &h, &resp, "bad-request");
    }

    // Just at the limit: read and judged (a wrong password here).
    let pad = |n: usize| {
        let base = r#"{"user":"alice","password":""}"#;
        json!({"user": "alice", "password": "p".repeat(n - base.len())}).to_string()
    };
    let at_limit = pad(4096);
    assert_eq!(at_limit.len(), 4096);
    let (status, _, resp) = post_token(&s, &at_limit).await;
    assert_eq!(status, 401, "{resp}");
    let over = pad(4097);
    let (status, h, resp) = post_token(&s, &over).await;
    assert_eq!(status, 413, "{resp}");
    json_error(status, &h, &resp, "too-large");
    let (status, _, resp) = post_token(&s, &pad(64 * 1024)).await;
    assert_eq!(status, 413, "{resp}");

    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_logins_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(metric_value(&m, "wspd_logins_total{result=\"ok\"}"), 0.0);

    // The server still logs people in.
    let ok = json!({"user": "alice", "password": "correct horse"}).to_string();
    assert_eq!(post_token(&s, &ok).await.0, 200);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn login_without_a_users_file_is_404() {
    let s = TestServer::localhost().await;
    let body = json!({"user": "alice", "password": "correct horse"}).to_string();
    let (status, h, resp) = post_token(&s, &body).await;
    assert_eq!(status, 404, "{resp}");
    json_error(status, &h, &resp, "no-users-file");
    assert_eq!(s.metric("wspd_logins_total{result=\"failed\"}").await, 0.0);
}

// ---------------------------------------------------------------------------
// The other routes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn plain_http_routes() {
    let s = TestServer::localhost().await;
    let (status, h, body) = http(s.addr(), "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(body, "ok\n");
    assert!(
        header(&h, "content-type")
            .unwrap()
            .starts_with("text/plain")
    );

    let (status, h, body) = http(s.addr(), "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        header(&h, "content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{h:?}"
    );
    assert!(body.contains("wspd_sessions"), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    // The demo page and the client library are served as files.
    for (path, kind) in [
        ("/", "text/html"),
        ("/wsp.js", "text/javascript"),
        ("/demo.js", "text/javascript"),
    ] {
        let (status, h, body) = http(s.addr(), "GET", path, &[], "").await;
        assert_eq!(status, 200, "{path}");
        assert!(
            header(&h, "content-type").unwrap().starts_with(kind),
            "{path}: {h:?}"
        );
        assert_eq!(header(&h, "x-content-type-options").unwrap(), "nosniff");
        assert!(!body.is_empty());
    }

    for path in [
        "/nope",
        "/wsp/",
        "/healthz/x",
        "/WSP",
        "/web/wsp.js",
        "/../Cargo.toml",
    ] {
        let (status, h, body) = http(s.addr(), "GET", path, &[], "").await;
        assert_eq!(status, 404, "{path}: {body}");
        json_error(status, &h, &body, "not-found");
    }
    for (method, path) in [
        ("POST", "/healthz"),
        ("DELETE", "/wsp"),
        ("POST", "/wsp"),
        ("GET", "/token"),
        ("PUT", "/token"),
        ("POST", "/metrics"),
    ] {
        let (status, h, body) = http(s.addr(), method, path, &[], "").await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        json_error(status, &h, &body, "method-not-allowed");
    }
    // A query string does not change the route.
    let (status, _, _) = http(s.addr(), "GET", "/healthz?probe=1", &[], "").await;
    assert_eq!(status, 200);
}

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

/// Completes a WebSocket handshake by hand; returns the socket, positioned
/// just after the response head, and the head.
async fn raw_upgrade(s: &TestServer, token: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(s.addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let req = format!(
        "GET /wsp HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Protocol: wsp-1.0\r\nAuthorization: Bearer {token}\r\n\r\n",
        s.addr()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = tokio::time::timeout(WAIT, tcp.read_u8())
            .await
            .expect("a response in time")
            .expect("a response head");
        head.push(b);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let accept = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, v)| v.trim().to_string());
    assert_eq!(accept.as_deref(), Some(ACCEPT), "{head}");
    (tcp, head)
}

/// Reads one unmasked server frame: (first byte, payload).
async fn read_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let b0 = tcp.read_u8().await.expect("a frame");
    let b1 = tcp.read_u8().await.expect("a frame");
    assert_eq!(b1 & 0x80, 0, "server frames are not masked");
    let len = match b1 & 0x7f {
        126 => u64::from(tcp.read_u16().await.unwrap()),
        127 => tcp.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut payload = vec![0; usize::try_from(len).unwrap()];
    tcp.read_exact(&mut payload).await.unwrap();
    (b0, payload)
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
