//! The listener speaking TLS (wss) with the development certificates.

use std::path::Path;
use std::sync::Arc;

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn connector() -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(Path::new("certs/ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn wss_with_the_development_certificate() {
    let cfg = config(
        "localhost",
        "[tls]\ncert = \"certs/localhost.pem\"\nkey = \"certs/localhost-key.pem\"",
    );
    let s = TestServer::start(cfg).await;
    let tcp = TcpStream::connect(s.addr()).await.unwrap();
    let tls = connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("certificate valid for localhost under the development CA");
    let mut req = format!("wss://localhost:{}/wsp", s.addr().port())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("wsp-1.0"),
    );
    let token = s.token("alice@localhost");
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    // A frame for an unknown call gets 481 over TLS like anywhere else.
    ws.send(Message::text(r#"["ringing",null,{"call":"nosuchcall"}]"#))
        .await
        .unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else {
        panic!("expected a frame")
    };
    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(v[1]["code"], 481);

    // Plain HTTP on the TLS port gets no HTTP answer: the handshake fails.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = TcpStream::connect(s.addr()).await.unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf).await;
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
}

#[tokio::test]
async fn missing_certificate_files_stop_the_server_with_a_clear_error() {
    let cfg = config(
        "localhost",
        "[tls]\ncert = \"certs/nope.pem\"\nkey = \"certs/nope-key.pem\"",
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = wspd::Server::build(cfg, listener).err().expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("[tls]") && text.contains("nope.pem"),
        "{text}"
    );
}

/// A client that keeps the sessions it is given (rustls's in-memory
/// store), as a browser does.
fn resuming_connector() -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(Path::new("certs/ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(4);
    TlsConnector::from(Arc::new(cfg))
}

/// Connects over TLS, reads the session tickets the server sends after the
/// handshake, and says whether the handshake resumed a session.
async fn handshake(c: &TlsConnector, addr: std::net::SocketAddr) -> rustls::HandshakeKind {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = c
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    // The tickets come after the handshake: a request and its answer
    // carry them in.
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = Vec::new();
    let _ = tls.read_to_end(&mut body).await;
    assert!(String::from_utf8_lossy(&body).starts_with("HTTP/1.1 200"));
    kind
}

fn localhost_tls() -> String {
    "[tls]\ncert = \"certs/localhost.pem\"\nkey = \"certs/localhost-key.pem\"".into()
}

/// Sessions resume from tickets the server does not store: a client comes
/// back with a resumed handshake however many other clients connected
/// meanwhile (a server that keeps sessions in a cache of its own forgets
/// the first ones once a few hundred others came).
#[tokio::test]
async fn a_session_resumes_after_many_other_clients() {
    let s = TestServer::start(config("localhost", &localhost_tls())).await;
    let first = resuming_connector();
    assert_eq!(
        handshake(&first, s.addr()).await,
        rustls::HandshakeKind::Full
    );
    // 400 other clients, each with two tickets.
    let others = resuming_connector();
    for _ in 0..50 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (c, addr) = (connector(), s.addr());
            set.spawn(async move { handshake(&c, addr).await });
        }
        while let Some(kind) = set.join_next().await {
            assert_eq!(kind.unwrap(), rustls::HandshakeKind::Full);
        }
    }
    assert_eq!(
        handshake(&others, s.addr()).await,
        rustls::HandshakeKind::Full
    );
    assert_eq!(
        handshake(&first, s.addr()).await,
        rustls::HandshakeKind::Resumed,
        "the first client's session"
    );
    // A ticket is used once; the resumed handshake gave new ones.
    assert_eq!(
        handshake(&first, s.addr()).await,
        rustls::HandshakeKind::Resumed
    );
}

/// A reload (new certificate files) keeps the ticket keys: sessions given
/// before it resume after it.
#[tokio::test]
async fn a_session_resumes_across_a_reload() {
    let s = TestServer::start(config("localhost", &localhost_tls())).await;
    let c = resuming_connector();
    assert_eq!(handshake(&c, s.addr()).await, rustls::HandshakeKind::Full);
    let ignored = s
        .running
        .app
        .reload(&config("localhost", &localhost_tls()))
        .unwrap();
    assert!(ignored.is_empty(), "{ignored:?}");
    assert_eq!(
        handshake(&c, s.addr()).await,
        rustls::HandshakeKind::Resumed
    );
}

/// TLS handshakes run on threads of their own, which stop with the
/// server: a drain does not wait for a client that never finishes its
/// handshake (here for as long as `handshake_timeout`, an hour).
#[tokio::test]
async fn a_drain_does_not_wait_for_a_handshake_in_progress() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start(config(
        "localhost",
        &format!(
            "{}\n[limits]\nhandshake_timeout = \"1h\"\nshutdown_grace = \"1h\"",
            localhost_tls()
        ),
    ))
    .await;
    // The first bytes of a ClientHello, and no more.
    let mut stalled = TcpStream::connect(s.addr()).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x80])
        .await
        .unwrap();
    // Accepted after it (the listen queue is first in, first out): once
    // this one is served, the stalled one is in its handshake.
    assert_eq!(
        handshake(&connector(), s.addr()).await,
        rustls::HandshakeKind::Full
    );
    let running = s.running;
    running.drain.start();
    tokio::time::timeout(WAIT, running.handle)
        .await
        .expect("the server stops without waiting for the stalled handshake")
        .unwrap();
    drop(stalled);
}
