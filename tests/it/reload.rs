//! Reloading (SIGHUP): new certificates and federation policy apply to new
//! connections and calls; nothing open is dropped.

use std::path::Path;
use std::sync::Arc;

use crate::common::*;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// Certificate `certs/<cert>.pem`, by absolute paths (for the binary too).
fn tls_config(cert: &str) -> String {
    let d = env!("CARGO_MANIFEST_DIR");
    format!("[tls]\ncert = \"{d}/certs/{cert}.pem\"\nkey = \"{d}/certs/{cert}-key.pem\"\n")
}

/// Whether a TLS handshake to `addr` succeeds with the certificate checked
/// for `name`.
async fn handshake_ok(addr: std::net::SocketAddr, name: &str) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(dev_ca_client())
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .is_ok()
}

#[tokio::test]
async fn a_new_certificate_serves_new_connections_and_keeps_old_sockets() {
    let s = TestServer::start(config("localhost", &tls_config("localhost"))).await;
    let mut alice = s.connect_online("alice@localhost").await;
    assert!(handshake_ok(s.addr(), "localhost").await);
    assert!(!handshake_ok(s.addr(), "a.test").await);

    let app = Arc::clone(&s.running.app);
    let ignored = app
        .reload(&config("localhost", &tls_config("a.test")))
        .unwrap();
    assert!(ignored.is_empty(), "{ignored:?}");
    assert!(
        handshake_ok(s.addr(), "a.test").await,
        "the new certificate"
    );
    assert!(!handshake_ok(s.addr(), "localhost").await);
    alice.expect_nothing().await; // the socket opened before is still served

    // A broken file leaves everything as it was.
    let bad = config_in(
        "localhost",
        "[tls]\ncert = \"certs/nope.pem\"\nkey = \"certs/nope-key.pem\"\n",
        Path::new("."),
    );
    assert!(app.reload(&bad).is_err());
    assert!(handshake_ok(s.addr(), "a.test").await);
    // Keys that need a restart are named, not applied.
    let ignored = app
        .reload(&config("example.org", &tls_config("a.test")))
        .unwrap();
    assert_eq!(ignored, ["domain"]);
}

#[tokio::test]
async fn a_new_policy_applies_to_the_next_call() {
    let net = Net::new("reload-policy").await;
    let a = net.server("a.test", "").await;
    let b = net.server("b.test", "").await;
    let mut alice = a.connect_online("alice@a.test").await;
    let mut bob = b.connect_online("bob@b.test").await;
    alice
        .send(invite("alice@a.test", "bob@b.test", "before-reload"))
        .await;
    bob.expect("invite").await;

    a.running
        .app
        .reload(&net.config("a.test", "a.test", "deny = [\"b.test\"]"))
        .unwrap();
    alice
        .send(invite("alice@a.test", "bob@b.test", "after-reload"))
        .await;
    alice.expect_bye(403).await;
    bob.expect_nothing().await;

    a.running
        .app
        .reload(&net.config("a.test", "a.test", ""))
        .unwrap();
    alice
        .send(invite("alice@a.test", "bob@b.test", "allowed-again"))
        .await;
    bob.expect("invite").await;
}

/// `POST /token` for `user` with `password`: the HTTP status.
async fn login(s: &TestServer, user: &str, password: &str) -> u16 {
    let body = serde_json::json!({ "user": user, "password": password }).to_string();
    let headers = [("content-type", "application/json")];
    http(s.addr(), "POST", "/token", &headers, &body).await.0
}

/// A reloaded users file: a changed password applies to the next login, a
/// removed user's token is refused at the next connect and calls to it get
/// 404, while its socket already open stays.
#[tokio::test]
async fn a_reloaded_users_file_applies_to_the_next_login_and_connect() {
    let dir = temp_dir("reload-users");
    let path = dir.join("users.toml");
    let mut users = wspd::auth::UsersFile::default();
    users.set("alice", "old-password").unwrap();
    users.set("bob", "bob-password").unwrap();
    users.save(&path).unwrap();
    let cfg = config_in("localhost", "users = \"users.toml\"", &dir);
    let s = TestServer::start(cfg.clone()).await;
    let mut alice = s.connect_online("alice@localhost").await;
    let mut bob = s.connect_online("bob@localhost").await;
    assert_eq!(login(&s, "alice", "old-password").await, 200);

    users.set("alice", "new-password").unwrap();
    users.users.remove("bob");
    users.save(&path).unwrap();
    let ignored = s.running.app.reload(&cfg).unwrap();
    assert!(ignored.is_empty(), "{ignored:?}");

    assert_eq!(login(&s, "alice", "old-password").await, 401);
    assert_eq!(login(&s, "alice", "new-password").await, 200);
    assert_eq!(login(&s, "bob", "bob-password").await, 401);
    let (status, body) = try_connect(&s.url(), &s.token("bob@localhost"))
        .await
        .err()
        .expect("bob's token is refused");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unknown-user"), "{body}");
    alice
        .send(invite("alice@localhost", "bob@localhost", "to-removed-1"))
        .await;
    alice.expect_bye(404).await;
    // Bob's socket opened before the reload is still served; alice's
    // token still connects.
    bob.expect_nothing().await;
    s.connect_online("alice@localhost").await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The signal itself, on the real binary.
#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let dir = temp_dir("sighup");
    let write = |cert: &str| config_file(&dir, "wspd.toml", "127.0.0.1:0", &tls_config(cert));
    let cfg = write("localhost");
    let mut w = Wspd::start(&cfg, "info").await;
    let mut alice = Client::connect_tls(w.addr, "localhost", &user_token("alice@localhost")).await;
    alice.expect_nothing().await;

    // A config that does not parse: refused, the server goes on.
    std::fs::write(&cfg, "domain = ").unwrap();
    w.signal("HUP");
    let line = w.wait_for_line("reload failed").await;
    assert!(line.contains("running configuration stays"), "{line}");
    alice.expect_nothing().await;

    // A new certificate.
    write("a.test");
    w.signal("HUP");
    w.wait_for_line("configuration reloaded").await;
    assert!(handshake_ok(w.addr, "a.test").await);
    alice.expect_nothing().await;
}
