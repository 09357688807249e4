//! Bad input and authentication, over real sockets, one module per
//! subject: what closes a socket and why (`frames`), what refuses an
//! upgrade, the login endpoint and the plain HTTP routes (`routes`), and how
//! long a silent socket lives and how open sockets are counted
//! (`keepalive`). The helpers they share are here.

mod frames;
mod keepalive;
mod routes;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
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
        "write_timeout",
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
