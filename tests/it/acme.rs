//! wspd obtaining, serving and renewing its own certificate from a real
//! ACME CA: Pebble on loopback, its TLS-ALPN-01 validations reaching wspd's
//! own listener through the tests' DNS server. Nothing leaves loopback.
//!
//! Pebble connects to one port for every validation, so the domains of a
//! test listen on that same port at different loopback addresses
//! (127.0.0.2, 127.0.0.3), each name's A record pointing at its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use wspd::Server;
use wspd::config::Config;

use crate::common::dns::TestDns;
use crate::common::pebble::{Pebble, PebbleOptions};
use crate::common::*;

/// How long a certificate may take to be issued (Pebble answers in well
/// under a second without its random sleeps; this is the bound).
const ISSUE: Duration = Duration::from_secs(30);

/// Listeners for `n` domains: one port, 127.0.0.2, 127.0.0.3...
async fn listeners(n: u8) -> Vec<TcpListener> {
    'again: for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for i in 1..n {
            match TcpListener::bind(SocketAddr::from(([127, 0, 0, 2 + i], port))).await {
                Ok(l) => all.push(l),
                Err(_) => continue 'again,
            }
        }
        return all;
    }
    panic!("no port free on every loopback address");
}

/// The tests' DNS server, a folder, and Pebble validating on `port`.
struct Ca {
    dns: TestDns,
    dir: PathBuf,
    pebble: Pebble,
}

impl Ca {
    async fn start(tag: &str, port: u16, validity_secs: Option<u64>, nonce_reject: u8) -> Ca {
        let dns = TestDns::start().await;
        let dir = temp_dir(tag);
        let pebble = Pebble::start(
            &dir.join("pebble"),
            PebbleOptions {
                tls_port: port,
                dns: dns.addr,
                validity_secs,
                nonce_reject,
            },
        )
        .await;
        Ca { dns, dir, pebble }
    }

    /// `domain`'s config: ACME from this Pebble, its cache in this test's
    /// folder, retries from 200 ms; `extra` adds sections.
    fn config(&self, domain: &str, listen: SocketAddr, extra: &str) -> Config {
        let text = format!(
            "domain = \"{domain}\"\nlisten = \"{listen}\"\n[auth]\nsecret = \"{SECRET}\"\n\
             [tls]\nacme = true\n\
             [acme]\ncontact = \"mailto:ops@{domain}\"\ndirectory = \"{}\"\nca = \"{}\"\n\
             cache = \"{}\"\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"\n{extra}\n",
            self.pebble.directory(),
            self.pebble.https_ca().display(),
            self.cache(domain).display(),
        );
        Config::parse(&text, Path::new(".")).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
    }

    fn cache(&self, domain: &str) -> PathBuf {
        self.dir.join(format!("acme-{domain}"))
    }

    /// `domain` resolves to the address its server listens on.
    fn publish(&self, domain: &str, addr: SocketAddr) {
        let SocketAddr::V4(v4) = addr else {
            panic!("IPv4 loopback expected")
        };
        self.dns.add_a(domain, *v4.ip(), 60);
        self.dns.add_srv(
            &format!("_wsp._tcp.{domain}"),
            10,
            0,
            addr.port(),
            domain,
            60,
        );
    }

    /// `[federation]` trusting Pebble's root, discovering through the DNS
    /// server.
    async fn federation(&self, domain: &str) -> String {
        let root = self.pebble.root_file("pebble-root.pem").await;
        format!(
            "[federation]\nallow_private_addresses = true\nkey = \"{}\"\nresolver = \"{}\"\n\
             ca = \"{}\"\nlookup_timeout = \"2s\"\nconnect_timeout = \"2s\"\n",
            self.dir.join(format!("{domain}.key")).display(),
            self.dns.addr,
            root.display()
        )
    }
}

fn start(config: Config, listener: TcpListener) -> TestServer {
    TestServer {
        running: Server::build(config, listener)
            .expect("server builds")
            .spawn(),
    }
}

/// A TLS client trusting only `root`.
fn client_config(root: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// The chain `addr` serves for `domain`, checked against `root` (the
/// handshake's error when it is refused or does not check).
async fn served(
    addr: SocketAddr,
    domain: &str,
    root: &CertificateDer<'static>,
) -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(domain.to_string()).unwrap();
    let tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(client_config(root)).connect(name, tcp),
    )
    .await
    .expect("a TLS handshake in time")?;
    Ok(tls.get_ref().1.peer_certificates().unwrap().to_vec())
}

/// Polls until `addr` serves a chain for `domain` that checks against
/// `root` and whose leaf is not `old`; returns the leaf.
async fn wait_for_cert(
    addr: SocketAddr,
    domain: &str,
    root: &CertificateDer<'static>,
    old: Option<&CertificateDer<'static>>,
    within: Duration,
) -> CertificateDer<'static> {
    let start = Instant::now();
    loop {
        let last = match served(addr, domain, root).await {
            Ok(chain) if Some(&chain[0]) != old => return chain[0].clone(),
            Ok(_) => "the same certificate".to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            start.elapsed() < within,
            "{domain} at {addr}: no new certificate within {within:?} (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WSP client of `server` over TLS, trusting only `root`.
async fn connect(server: &TestServer, user: &str, root: &CertificateDer<'static>) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let domain = &server.running.app.config.domain;
    let url = format!("wss://{domain}:{}/wsp", server.addr().port());
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("wsp-1.0"),
    );
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {}", server.token(user))).unwrap(),
    );
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
        req,
        tcp,
        None,
        Some(tokio_tungstenite::Connector::Rustls(client_config(root))),
    )
    .await
    .expect("upgrade accepted");
    let mut c = Client { ws };
    c.expect_nothing().await;
    c
}

/// A metric read in-process (the server's `/metrics` needs a certificate
/// the harness does not trust).
fn metric(server: &TestServer, name: &str) -> f64 {
    metric_value(&server.running.app.metrics.render(), name)
}

/// Polls until `name` reaches at least `value`.
async fn wait_metric_at_least(server: &TestServer, name: &str, value: f64, within: Duration) {
    let start = Instant::now();
    while metric(server, name) < value {
        assert!(
            start.elapsed() < within,
            "{name} stays {} (waited for {value})",
            metric(server, name)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops `server` and checks that nothing of it is left running: the
/// renewal task ended with the shutdown, whatever it was waiting for.
async fn stop_cleanly(server: TestServer) {
    let app = server.running.app.clone();
    let started = Instant::now();
    server.stop().await;
    assert!(app.tasks.is_empty(), "{} tasks left", app.tasks.len());
    assert!(
        started.elapsed() < app.config.limits.shutdown_grace,
        "the shutdown waited for the grace period"
    );
}

fn names_of(leaf: &CertificateDer<'_>) -> Vec<String> {
    wspd::acme::CertInfo::parse(leaf).unwrap().names
}

#[tokio::test]
async fn fresh_server_obtains_and_serves_a_certificate() {
    let (logs, _guard) = Logs::capture();
    let mut ls = listeners(1).await;
    let l = ls.remove(0);
    let addr = l.local_addr().unwrap();
    let ca = Ca::start("acme-fresh", addr.port(), None, 0).await;
    ca.publish("a.test", addr);
    ca.publish("www.a.test", addr);
    let a = start(ca.config("a.test", addr, "names = [\"www.a.test\"]"), l);
    let root = ca.pebble.root().await;

    let leaf = wait_for_cert(addr, "a.test", &root, None, ISSUE).await;
    let mut names = names_of(&leaf);
    names.sort();
    assert_eq!(names, ["a.test", "www.a.test"]);
    // The other name is served the same certificate.
    assert_eq!(served(addr, "www.a.test", &root).await.unwrap()[0], leaf);
    assert_eq!(metric(&a, "wspd_acme_orders_total{result=\"issued\"}"), 1.0);
    let days = metric(&a, "wspd_certificate_days_left{source=\"acme\"}");
    assert!(days > 365.0, "Pebble's default lifetime is 5 years: {days}");
    assert!(
        !logs
            .lines_with(&["no certificate yet", "TLS handshakes are refused"])
            .is_empty(),
        "{}",
        logs.text()
    );
    assert!(
        !logs.lines_with(&["new certificate obtained"]).is_empty(),
        "{}",
        logs.text()
    );

    // Kept where only the server's user may read it.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ca.cache("a.test")), 0o700);
    let dir = std::fs::read_dir(ca.cache("a.test"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("a.test-key.pem")), 0o600);
    assert_eq!(mode(&dir.join("account.json")), 0o600);

    // Asking for the validation protocol outside an order gets nothing:
    // no challenge certificate, and never the real one.
    let mut cfg = (*client_config(&root)).clone();
    cfg.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(refused.to_string().contains("alert"), "{refused}");

    // And it is a working wss:// server.
    let alice = connect(&a, "alice@a.test", &root).await;
    alice.close().await;
    a.stop().await;
}

#[tokio::test]
async fn restart_serves_the_cached_certificate_without_the_ca() {
    let (logs, _guard) = Logs::capture();
    let mut ls = listeners(1).await;
    let l = ls.remove(0);
    let addr = l.local_addr().unwrap();
    let mut ca = Ca::start("acme-restart", addr.port(), None, 0).await;
    ca.publish("a.test", addr);
    let a = start(ca.config("a.test", addr, ""), l);
    let root = ca.pebble.root().await;
    let leaf = wait_for_cert(addr, "a.test", &root, None, ISSUE).await;
    a.stop().await;

    // The CA is gone: only the cache can answer now.
    ca.pebble.stop().await;
    let a = TestServer::start_on(ca.config("a.test", addr, ""), addr).await;
    // At once: no polling, the first handshake gets it.
    assert_eq!(served(addr, "a.test", &root).await.unwrap()[0], leaf);
    assert_eq!(metric(&a, "wspd_acme_orders_total{result=\"issued\"}"), 0.0);
    assert_eq!(metric(&a, "wspd_acme_orders_total{result=\"failed\"}"), 0.0);
    assert!(metric(&a, "wspd_certificate_days_left{source=\"acme\"}") > 365.0);
    assert!(
        !logs
            .lines_with(&["serving the cached certificate"])
            .is_empty(),
        "{}",
        logs.text()
    );
    a.stop().await;
}

/// Short-lived certificates: both domains renew while a call's sockets
/// and the link between them stay up, and the link carries on.
#[tokio::test]
async fn renewal_swaps_the_certificate_under_open_sockets_and_links() {
    let (logs, _guard) = Logs::capture();
    let mut ls = listeners(2).await;
    let (la, lb) = (ls.remove(0), ls.remove(0));
    let (addr_a, addr_b) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let ca = Ca::start("acme-renew", addr_a.port(), Some(12), 0).await;
    ca.publish("a.test", addr_a);
    ca.publish("b.test", addr_b);
    let a = start(
        ca.config("a.test", addr_a, &ca.federation("a.test").await),
        la,
    );
    let b = start(
        ca.config("b.test", addr_b, &ca.federation("b.test").await),
        lb,
    );
    let root = ca.pebble.root().await;
    let first = wait_for_cert(addr_a, "a.test", &root, None, ISSUE).await;
    wait_for_cert(addr_b, "b.test", &root, None, ISSUE).await;

    let mut alice = connect(&a, "alice@a.test", &root).await;
    let mut bob = connect(&b, "bob@b.test", &root).await;
    answered_call(
        &mut alice,
        &mut bob,
        "alice@a.test",
        "bob@b.test",
        "renewal-1",
    )
    .await;

    // Renewed at two thirds of 12 s.
    let renewed = wait_for_cert(addr_a, "a.test", &root, Some(&first), ISSUE).await;
    assert_ne!(renewed, first);
    wait_metric_at_least(&a, "wspd_acme_orders_total{result=\"issued\"}", 2.0, ISSUE).await;
    assert!(
        logs.lines_with(&["new certificate obtained"]).len() >= 3,
        "{}",
        logs.text()
    );

    // The call's sockets and the link were not touched.
    alice.send(candidate("renewal-1", 1)).await;
    assert_eq!(bob.expect("icecandidate").await, candidate("renewal-1", 1));
    bob.send(candidate("renewal-1", 2)).await;
    assert_eq!(
        alice.expect("icecandidate").await,
        candidate("renewal-1", 2)
    );
    answered_call(
        &mut alice,
        &mut bob,
        "alice@a.test",
        "bob@b.test",
        "renewal-2",
    )
    .await;
    assert_eq!(
        metric(&a, "wspd_link_attempts_total{result=\"ok\"}"),
        1.0,
        "the same link carried both calls"
    );
    assert_eq!(metric(&a, "wspd_links{direction=\"out\"}"), 1.0);
    a.stop().await;
    b.stop().await;
}

/// A CA that refuses every request (every nonce rejected): retries with
/// backoff, a log line saying what happens, the failure counted, and
/// handshakes refused since there is no certificate to serve.
#[tokio::test]
async fn a_refusing_ca_is_retried_and_reported() {
    let (logs, _guard) = Logs::capture();
    let mut ls = listeners(1).await;
    let l = ls.remove(0);
    let addr = l.local_addr().unwrap();
    let ca = Ca::start("acme-refuse", addr.port(), None, 100).await;
    ca.publish("a.test", addr);
    let a = start(ca.config("a.test", addr, ""), l);
    let root = ca.pebble.root().await;

    wait_metric_at_least(&a, "wspd_acme_orders_total{result=\"failed\"}", 3.0, ISSUE).await;
    let lines = logs.lines_with(&["could not obtain a certificate", "a.test"]);
    assert!(lines.len() >= 3, "{}", logs.text());
    assert!(
        lines[0].contains("TLS handshakes are refused") && lines[0].contains("retry_in"),
        "{}",
        lines[0]
    );
    assert!(lines.iter().any(|l| l.contains("badNonce")), "{lines:?}");
    // rustls ends a handshake it has no certificate for with an alert.
    let e = served(addr, "a.test", &root).await.unwrap_err();
    assert!(e.to_string().contains("alert"), "{e}");
    assert_eq!(metric(&a, "wspd_acme_orders_total{result=\"issued\"}"), 0.0);
    stop_cleanly(a).await;
}

/// The CA goes down before a renewal: the attempts fail, are counted and
/// logged, and the certificate already served stays served.
#[tokio::test]
async fn a_ca_down_at_renewal_keeps_the_current_certificate() {
    let (logs, _guard) = Logs::capture();
    let mut ls = listeners(1).await;
    let l = ls.remove(0);
    let addr = l.local_addr().unwrap();
    let mut ca = Ca::start("acme-down", addr.port(), Some(15), 0).await;
    ca.publish("a.test", addr);
    let a = start(ca.config("a.test", addr, ""), l);
    let root = ca.pebble.root().await;
    let leaf = wait_for_cert(addr, "a.test", &root, None, ISSUE).await;
    ca.pebble.stop().await;

    // Renewal is due at 10 s; the attempts fail against a closed port.
    wait_metric_at_least(&a, "wspd_acme_orders_total{result=\"failed\"}", 2.0, ISSUE).await;
    assert_eq!(served(addr, "a.test", &root).await.unwrap()[0], leaf);
    let lines = logs.lines_with(&[
        "could not obtain a certificate",
        "still serving the current certificate",
    ]);
    assert!(lines.len() >= 2, "{}", logs.text());
    assert_eq!(metric(&a, "wspd_acme_orders_total{result=\"issued\"}"), 1.0);
    stop_cleanly(a).await;
}

/// Two domains, each with a certificate from the ACME CA and trusting its
/// root for links, federate: a call from one to the other.
#[tokio::test]
async fn two_acme_domains_federate() {
    let mut ls = listeners(2).await;
    let (la, lb) = (ls.remove(0), ls.remove(0));
    let (addr_a, addr_b) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let ca = Ca::start("acme-fed", addr_a.port(), None, 0).await;
    ca.publish("a.test", addr_a);
    ca.publish("b.test", addr_b);
    let a = start(
        ca.config("a.test", addr_a, &ca.federation("a.test").await),
        la,
    );
    let b = start(
        ca.config("b.test", addr_b, &ca.federation("b.test").await),
        lb,
    );
    let root = ca.pebble.root().await;
    wait_for_cert(addr_a, "a.test", &root, None, ISSUE).await;
    wait_for_cert(addr_b, "b.test", &root, None, ISSUE).await;

    let mut alice = connect(&a, "alice@a.test", &root).await;
    let mut bob = connect(&b, "bob@b.test", &root).await;
    answered_call(
        &mut alice,
        &mut bob,
        "alice@a.test",
        "bob@b.test",
        "acme-fed-1",
    )
    .await;
    alice.send(bye("acme-fed-1", 101)).await;
    bob.expect_bye(101).await;
    bob.send(bye("acme-fed-1", 101)).await;
    alice.expect_bye(101).await;
    assert_eq!(metric(&a, "wspd_link_attempts_total{result=\"ok\"}"), 1.0);
    assert_eq!(metric(&b, "wspd_links{direction=\"in\"}"), 1.0);

    // `wspd check` tells where a.test's certificate comes from.
    let report = wspd::federation::check::check(&a.running.app.config, "b.test")
        .await
        .unwrap();
    assert!(report.passed(), "{report}");
    let cert = &report.steps[0];
    assert_eq!(cert.name, "cert");
    assert!(
        cert.detail
            .starts_with(&format!("ACME from {}", ca.pebble.directory()))
            && cert.detail.contains("valid for a.test; expires "),
        "{report}"
    );
    a.stop().await;
    b.stop().await;
}
