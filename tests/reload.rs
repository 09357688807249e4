//! Reloading (SIGHUP): new certificates and federation policy apply to new
//! connections and calls; nothing open is dropped.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use rustls::pki_types::ServerName;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;

fn tls_config(cert: &str) -> String {
    format!("[tls]\ncert = \"certs/{cert}.pem\"\nkey = \"certs/{cert}-key.pem\"\n")
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

/// The signal itself, on the real binary.
#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let dir = temp_dir("sighup");
    let root = std::env::current_dir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = dir.join("wspd.toml");
    let write = |cert: &str, extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "domain = \"localhost\"\nlisten = \"127.0.0.1:{port}\"\n[auth]\nsecret = \"{SECRET}\"\n{extra}\
                 [tls]\ncert = \"{r}/certs/{cert}.pem\"\nkey = \"{r}/certs/{cert}-key.pem\"\n",
                r = root.display()
            ),
        )
        .unwrap()
    };
    write("localhost", "");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wspd"))
        .arg("--config")
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut wait_for = async |what: &str| loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("a log line in time")
            .unwrap()
            .expect("wspd still runs");
        if line.contains(what) {
            return line;
        }
    };
    wait_for("listening on").await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let token = wspd::auth::Tokens::new("localhost", SECRET)
        .mint(
            &wspd::address::Address::parse("alice@localhost").unwrap(),
            std::time::Duration::from_secs(60),
        )
        .0;
    let mut alice = Client::connect_tls(addr, "localhost", &token).await;
    alice.expect_nothing().await;
    let pid = child.id().unwrap().to_string();
    let hup = || {
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        )
    };

    // A config that does not parse: refused, the server goes on.
    std::fs::write(&cfg, "domain = ").unwrap();
    hup();
    let line = wait_for("reload failed").await;
    assert!(line.contains("running configuration stays"), "{line}");
    alice.expect_nothing().await;

    // A new certificate.
    write("a.test", "");
    hup();
    wait_for("configuration reloaded").await;
    assert!(handshake_ok(addr, "a.test").await);
    alice.expect_nothing().await;
    child.kill().await.unwrap();
}
