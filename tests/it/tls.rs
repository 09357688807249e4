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
