//! Calls between domains: real wspd servers for a.test, b.test (and c.test)
//! with TLS from certs/, found through a real DNS server on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::common::*;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use wspd::federation::keys::{self, LinkKey};

/// Alice on a.test calls Bob on b.test, from invite to both bye 101.
#[tokio::test]
async fn federated_call_through_srv_discovery() {
    let net = Net::new("fed-call").await;
    let a = net.server("a.test", "").await;
    let b = net.server("b.test", "").await;
    let mut alice = a.connect_online("alice@a.test").await;
    let mut bob = b.connect_online("bob@b.test").await;
    let id = "fed-call-1";

    alice.send(invite("alice@a.test", "bob@b.test", id)).await;
    let inv = bob.expect("invite").await;
    assert_eq!(inv[1]["caller"]["uri"], "alice@a.test");
    assert_eq!(inv[2]["call"], id);
    bob.send(ringing(id)).await;
    alice.expect("ringing").await;
    let sdp = r#"["offer",{"type":"offer","sdp":"v=0\r\na=fingerprint:sha-256 AB:CD\r\n\u00e9"},{"call":"fed-call-1"}]"#;
    bob.send_text(sdp).await;
    assert_eq!(
        alice.recv_text().await,
        sdp,
        "SDP crosses the link byte for byte"
    );
    alice.send(answer(id)).await;
    bob.expect("answer").await;
    for n in 0..8 {
        alice.send(candidate(id, n)).await;
        bob.send(candidate(id, 100 + n)).await;
    }
    for n in 0..8 {
        assert_eq!(bob.expect("icecandidate").await, candidate(id, n));
        assert_eq!(alice.expect("icecandidate").await, candidate(id, 100 + n));
    }
    alice.send(bye(id, 101)).await;
    bob.expect_bye(101).await;
    bob.send(bye(id, 101)).await;
    alice.expect_bye(101).await;

    // Both servers forget the call.
    assert_eq!(a.metric("wspd_calls_active").await, 0.0);
    assert_eq!(b.metric("wspd_calls_active").await, 0.0);
    let ma = a.metrics().await;
    assert_eq!(
        metric_value(&ma, "wspd_calls_total{outcome=\"transferred\"}"),
        1.0
    );
    assert_eq!(
        metric_value(
            &ma,
            "wspd_remote_calls_total{domain=\"b.test\",outcome=\"transferred\"}"
        ),
        1.0
    );
    assert_eq!(metric_value(&ma, "wspd_links{direction=\"out\"}"), 1.0);
    assert_eq!(
        metric_value(&ma, "wspd_link_attempts_total{result=\"ok\"}"),
        1.0
    );
    let mb = b.metrics().await;
    assert_eq!(
        metric_value(&mb, "wspd_calls_total{outcome=\"transferred\"}"),
        1.0
    );
    assert_eq!(metric_value(&mb, "wspd_links{direction=\"in\"}"), 1.0);

    // Frames of the forgotten call are unknown on both sides.
    alice.send(candidate(id, 99)).await;
    alice.expect_bye(481).await;
    bob.expect_nothing().await;
}

#[tokio::test]
async fn forking_across_the_link() {
    let net = Net::new("fed-fork").await;
    let a = net.server("a.test", "").await;
    let b = net.server("b.test", "").await;
    let mut alice = a.connect_online("alice@a.test").await;
    let mut bob1 = b.connect_online("bob@b.test").await;
    let mut bob2 = b.connect_online("bob@b.test").await;
    let id = "fed-fork-1";
    alice.send(invite("alice@a.test", "bob@b.test", id)).await;
    bob1.expect("invite").await;
    bob2.expect("invite").await;
    bob1.send(ringing(id)).await;
    bob2.send(ringing(id)).await;
    alice.expect("ringing").await;
    bob2.send(offer(id)).await;
    let f = bob1.expect_bye(200).await;
    assert_eq!(f[1]["description"], "Answered elsewhere");
    alice.expect("offer").await;
    alice.expect_nothing().await; // the second ringing was not relayed
    alice.send(answer(id)).await;
    bob2.expect("answer").await;
    bob1.expect_nothing().await;
}

/// Each refusal reaches the caller with its code.
#[tokio::test]
async fn federated_bye_codes() {
    let net = Net::new("fed-codes").await;
    let users = net.dir.join("b-users.toml");
    let mut f = wspd::auth::UsersFile::default();
    f.set("bob", "pw").unwrap();
    f.set("dora", "pw").unwrap();
    f.save(&users).unwrap();
    let a = net.server("a.test", "").await;
    let b_cfg = config_in(
        "b.test",
        &format!(
            "users = \"{}\"\n[tls]\ncert = \"certs/b.test.pem\"\nkey = \"certs/b.test-key.pem\"\n\
             [limits]\nring_timeout = \"1s\"\n\
             [federation]\nallow_private_addresses = true\nkey = \"{}\"\nresolver = \"{}\"\nca = \"certs/ca.pem\"\n",
            users.display(),
            net.key_path("b.test").display(),
            net.dns.addr
        ),
        Path::new("."),
    );
    let b = TestServer::start(b_cfg).await;
    net.publish("b.test", "b.test", b.addr());
    let mut alice = a.connect_online("alice@a.test").await;
    let mut bob = b.connect_online("bob@b.test").await;

    // 404: no such user at b.test.
    alice
        .send(invite("alice@a.test", "nobody@b.test", "code-404"))
        .await;
    alice.expect_bye(404).await;
    // 480: dora exists but is offline.
    alice
        .send(invite("alice@a.test", "dora@b.test", "code-480"))
        .await;
    alice.expect_bye(480).await;
    // 487: alice hangs up while bob's device rings.
    alice
        .send(invite("alice@a.test", "bob@b.test", "code-487"))
        .await;
    bob.expect("invite").await;
    alice.send(bye("code-487", 200)).await;
    bob.expect_bye(487).await;
    // 486 and 603 from bob reach alice.
    alice
        .send(invite("alice@a.test", "bob@b.test", "code-486"))
        .await;
    bob.expect("invite").await;
    bob.send(bye("code-486", 486)).await;
    alice.expect_bye(486).await;
    alice
        .send(invite("alice@a.test", "bob@b.test", "code-603"))
        .await;
    bob.expect("invite").await;
    bob.send(bye("code-603", 603)).await;
    alice.expect_bye(603).await;
    // 408: b.test's ring timeout (1 s) ends it on both sides.
    alice
        .send(invite("alice@a.test", "bob@b.test", "code-408"))
        .await;
    bob.expect("invite").await;
    bob.expect_bye(408).await;
    alice.expect_bye(408).await;
    // 604: a domain with no WSP service (NXDOMAIN).
    alice
        .send(invite("alice@a.test", "zed@nowhere.test", "code-604"))
        .await;
    alice.expect_bye(604).await;
    // 504: the domain's server does not answer (nothing listens there).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    net.publish("dead.test", "dead.test", dead_addr);
    alice
        .send(invite("alice@a.test", "zed@dead.test", "code-504"))
        .await;
    alice.expect_bye(504).await;

    assert_eq!(a.metric("wspd_calls_active").await, 0.0);
    assert_eq!(b.metric("wspd_calls_active").await, 0.0);
    let m = a.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_dns_lookups_total{result=\"no_service\"}"),
        1.0
    );
    assert!(
        metric_value(&m, "wspd_link_failures_total{reason=\"connect\"}") >= 1.0,
        "{m}"
    );
    bob.expect_nothing().await;
}

#[tokio::test]
async fn policy_refuses_both_ways_with_403() {
    let net = Net::new("fed-policy").await;
    // a.test refuses to call c.test; b.test refuses links from a.test.
    let a = net.server("a.test", "deny = [\"c.test\"]").await;
    let b = net.server("b.test", "deny = [\"a.test\"]").await;
    let c = net.server("c.test", "").await;
    let mut alice = a.connect_online("alice@a.test").await;
    let mut bob = b.connect_online("bob@b.test").await;
    let mut carol = c.connect_online("carol@c.test").await;

    alice
        .send(invite("alice@a.test", "carol@c.test", "policy-out"))
        .await;
    alice.expect_bye(403).await;
    alice
        .send(invite("alice@a.test", "bob@b.test", "policy-in"))
        .await;
    alice.expect_bye(403).await;
    // b.test refuses calls to a.test too: its own policy, before any link.
    bob.send(invite("bob@b.test", "alice@a.test", "policy-back"))
        .await;
    bob.expect_bye(403).await;
    bob.expect_nothing().await;
    carol.expect_nothing().await;
    alice.expect_nothing().await;
    let mb = b.metrics().await;
    assert_eq!(
        metric_value(&mb, "wspd_link_failures_total{reason=\"policy\"}"),
        1.0
    );
}

/// c.test's SRV record points at wsp-host.test, whose certificate is valid
/// for wsp-host.test only: DNS is not trusted, the link is refused.
#[tokio::test]
async fn a_certificate_valid_only_for_the_srv_target_is_refused() {
    let net = Net::new("fed-cert").await;
    let a = net.server("a.test", "").await;
    let c = TestServer::start(net.config("c.test", "wsp-host.test", "")).await;
    net.publish("c.test", "wsp-host.test", c.addr());
    let mut alice = a.connect_online("alice@a.test").await;
    // c.test's clients reach it by the name its certificate has.
    let mut carol = Client::connect_tls(c.addr(), "wsp-host.test", &c.token("carol@c.test")).await;
    carol.expect_nothing().await;
    alice
        .send(invite("alice@a.test", "carol@c.test", "cert-test-1"))
        .await;
    let f = alice.expect_bye(502).await;
    assert!(
        f[1]["description"]
            .as_str()
            .unwrap()
            .contains("certificate"),
        "{f}"
    );
    carol.expect_nothing().await;
    let m = a.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_link_failures_total{reason=\"tls\"}"),
        1.0
    );
}

/// Opens a TLS connection to `addr` verified for `domain`; returns it and
/// its exporter.
pub(crate) async fn tls_to(
    addr: SocketAddr,
    domain: &str,
) -> (tokio_rustls::client::TlsStream<TcpStream>, [u8; 32]) {
    let mut cfg = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(dev_ca_roots())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(domain.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    let exporter = keys::client_exporter(tls.get_ref().1).unwrap();
    (tls, exporter)
}

/// Tries a link upgrade with this header; Ok(ws) or Err(status, body).
pub(crate) async fn link_upgrade(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    domain: &str,
    header: &str,
) -> Result<Client, (u16, String)> {
    let mut req = format!("wss://{domain}/wsp").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("wsp-1.0"),
    );
    req.headers_mut()
        .insert("Authorization", HeaderValue::from_str(header).unwrap());
    match tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Rustls(tls)).await
    {
        Ok((ws, _)) => Ok(Client { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("unexpected: {e}"),
    }
}

#[tokio::test]
async fn forged_replayed_and_misattributed_links_are_refused() {
    let net = Net::new("fed-forge").await;
    let a = net.server("a.test", "").await;
    let b = net.server("b.test", "").await;
    let mut bob = b.connect_online("bob@b.test").await;
    // a.test's real key: the server created it on start.
    let a_key = LinkKey::load_or_create(&net.key_path("a.test")).unwrap();

    // A forged signature.
    let (tls, exporter) = tls_to(b.addr(), "b.test").await;
    let mut auth = a_key.authorize("a.test", "b.test", &exporter);
    let mut sig = auth.sig.into_bytes();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    auth.sig = String::from_utf8(sig).unwrap();
    let (status, body) = link_upgrade(tls, "b.test", &auth.to_header())
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("bad-link-signature"), "{body}");

    // A genuine signature replayed on another TLS connection.
    let (_tls1, exporter1) = tls_to(b.addr(), "b.test").await;
    let (tls2, _) = tls_to(b.addr(), "b.test").await;
    let auth = a_key.authorize("a.test", "b.test", &exporter1);
    let (status, body) = link_upgrade(tls2, "b.test", &auth.to_header())
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401, "{body}");

    // A link claiming a.test, signed by a key that is not a.test's.
    let (tls, exporter) = tls_to(b.addr(), "b.test").await;
    let other = LinkKey::generate();
    let auth = other.authorize("a.test", "b.test", &exporter);
    let (status, body) = link_upgrade(tls, "b.test", &auth.to_header())
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401, "{body}");

    // A link to the wrong destination.
    let (tls, exporter) = tls_to(b.addr(), "b.test").await;
    let auth = a_key.authorize("a.test", "c.test", &exporter);
    let (status, _) = link_upgrade(tls, "b.test", &auth.to_header())
        .await
        .err()
        .unwrap();
    assert_eq!(status, 403);

    // A header that does not parse.
    let (tls, _) = tls_to(b.addr(), "b.test").await;
    let (status, _) = link_upgrade(tls, "b.test", "WSP-Link origin=\"a.test\"")
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);

    // The genuine article works, and an invite on it whose caller is not
    // of a.test is refused with 403; bob never hears of it.
    let (tls, exporter) = tls_to(b.addr(), "b.test").await;
    let auth = a_key.authorize("a.test", "b.test", &exporter);
    let mut link = link_upgrade(tls, "b.test", &auth.to_header())
        .await
        .unwrap();
    link.send(invite("mallory@c.test", "bob@b.test", "spoofed-1"))
        .await;
    let f = link.expect_bye(403).await;
    assert_eq!(f[2]["call"], "spoofed-1");
    // A callee of another domain is refused too.
    link.send(invite("alice@a.test", "carol@c.test", "spoofed-2"))
        .await;
    link.expect_bye(403).await;
    // A frame for a call that is not the link's gets 481.
    link.send(candidate("not-this-links-call", 1)).await;
    link.expect_bye(481).await;
    bob.expect_nothing().await;
    let mb = b.metrics().await;
    assert!(
        metric_value(&mb, "wspd_link_failures_total{reason=\"auth\"}") >= 3.0,
        "{mb}"
    );
    assert_eq!(
        metric_value(&mb, "wspd_link_failures_total{reason=\"misrouted\"}"),
        3.0
    );
    drop(a);
}

#[tokio::test]
async fn peer_server_gone_mid_call_then_back() {
    let net = Net::new("fed-restart").await;
    let a = net.server("a.test", "").await;
    let b = net.server("b.test", "").await;
    let b_addr = b.addr();
    let mut alice = a.connect_online("alice@a.test").await;
    let mut bob = b.connect_online("bob@b.test").await;
    answered_call(
        &mut alice,
        &mut bob,
        "alice@a.test",
        "bob@b.test",
        "restart-1",
    )
    .await;
    // A transferred call is not touched by the link going away.
    alice
        .send(invite("alice@a.test", "bob@b.test", "restart-2"))
        .await;
    bob.expect("invite").await;
    bob.send(offer("restart-2")).await;
    alice.expect("offer").await;
    alice.send(bye("restart-2", 101)).await;
    bob.expect_bye(101).await;
    bob.send(bye("restart-2", 101)).await;
    alice.expect_bye(101).await;

    b.stop().await;
    // b.test shuts down gracefully: the untransferred call ends for alice
    // with its 503 (a killed server gives 410: see below).
    let f = alice.expect_bye(503).await;
    assert_eq!(f[2]["call"], "restart-1");
    alice.expect_nothing().await;
    assert_eq!(a.metric("wspd_calls_active").await, 0.0);

    // b.test comes back on the same address: the next call opens a new link.
    let b = TestServer::start_on(net.config("b.test", "b.test", ""), b_addr).await;
    let mut bob = b.connect_online("bob@b.test").await;
    alice
        .send(invite("alice@a.test", "bob@b.test", "restart-3"))
        .await;
    bob.expect("invite").await;
    let m = a.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_link_attempts_total{result=\"ok\"}"),
        2.0
    );
}

/// 200 calls at once over one link: every frame exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_calls_in_parallel_over_one_link() {
    let net = Net::new("fed-200").await;
    let a = Arc::new(net.server("a.test", "").await);
    let b = Arc::new(net.server("b.test", "").await);
    const N: usize = 200;
    const CANDIDATES: usize = 10;
    let mut tasks = Vec::new();
    for i in 0..N {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let caller = format!("caller{i}@a.test");
            let callee = format!("callee{i}@b.test");
            let id = format!("parallel-call-{i:04}");
            let mut x = a.connect_online(&caller).await;
            let mut y = b.connect_online(&callee).await;
            answered_call(&mut x, &mut y, &caller, &callee, &id).await;
            for n in 0..CANDIDATES {
                x.send(candidate(&id, n)).await;
                y.send(candidate(&id, 1000 + n)).await;
            }
            for n in 0..CANDIDATES {
                assert_eq!(y.expect("icecandidate").await, candidate(&id, n));
                assert_eq!(x.expect("icecandidate").await, candidate(&id, 1000 + n));
            }
            x.send(bye(&id, 101)).await;
            y.send(bye(&id, 101)).await;
            y.expect_bye(101).await;
            x.expect_bye(101).await;
            x.expect_nothing().await;
            y.expect_nothing().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(a.metric("wspd_calls_active").await, 0.0);
    assert_eq!(b.metric("wspd_calls_active").await, 0.0);
    let m = a.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_link_attempts_total{result=\"ok\"}"),
        1.0,
        "one link"
    );
    assert_eq!(
        metric_value(
            &m,
            "wspd_remote_calls_total{domain=\"b.test\",outcome=\"transferred\"}"
        ),
        N as f64
    );
    let mb = b.metrics().await;
    assert_eq!(
        metric_value(&mb, "wspd_frames_total{keyword=\"icecandidate\"}"),
        (N * CANDIDATES) as f64
    );
}

#[tokio::test]
async fn an_idle_link_is_closed_and_the_next_call_opens_a_new_one() {
    let net = Net::new("fed-idle").await;
    let a = net.server("a.test", "link_idle_timeout = \"200ms\"").await;
    let b = net.server("b.test", "").await;
    let mut alice = a.connect_online("alice@a.test").await;
    let mut bob = b.connect_online("bob@b.test").await;
    for (n, id) in ["idle-call-1", "idle-call-2"].into_iter().enumerate() {
        alice.send(invite("alice@a.test", "bob@b.test", id)).await;
        bob.expect("invite").await;
        bob.send(bye(id, 486)).await;
        alice.expect_bye(486).await;
        // The link closes once idle, on both sides.
        a.wait_metric("wspd_links{direction=\"out\"}", 0.0).await;
        b.wait_metric("wspd_links{direction=\"in\"}", 0.0).await;
        let ok = a.metric("wspd_link_attempts_total{result=\"ok\"}").await;
        assert_eq!(ok, (n + 1) as f64);
    }
}

/// b.test's server process is killed (SIGKILL) mid-call: alice hears 410
/// as soon as the TCP connection reports the loss, not after keepalive.
#[tokio::test]
async fn peer_process_killed_mid_call() {
    let net = Net::new("fed-kill").await;
    let a = net.server("a.test", "").await;
    let mut b = Wspd::start(&net.config_file("b.test", ""), "info").await;
    net.publish("b.test", "b.test", b.addr);
    let mut alice = a.connect_online("alice@a.test").await;
    let mut bob = Client::connect_tls(b.addr, "b.test", &user_token("bob@b.test")).await;
    bob.expect_nothing().await;
    answered_call(
        &mut alice,
        &mut bob,
        "alice@a.test",
        "bob@b.test",
        "killed-1",
    )
    .await;

    b.child.kill().await.unwrap();
    let f = alice.expect_bye(410).await;
    assert_eq!(f[2]["call"], "killed-1");
    assert_eq!(a.metric("wspd_calls_active").await, 0.0);
    assert_eq!(
        a.metric("wspd_link_failures_total{reason=\"broken\"}")
            .await,
        1.0
    );
}

/// Every refusal of an invite is counted in `wspd_calls_total` the same
/// way whether it came from a client socket or over a link; refusals on a
/// link also count for the link's origin in `wspd_remote_calls_total`.
#[tokio::test]
async fn invite_refusals_are_counted_alike_on_sockets_and_links() {
    let net = Net::new("fed-refusals").await;
    let _a = net.server("a.test", "").await;
    let b = net
        .server(
            "b.test",
            "invites_per_second = 1\ninvite_burst = 4\ncalls_per_link = 1\n\
             [limits]\ncalls_per_socket = 1\n",
        )
        .await;
    let mut bob = b.connect_online("bob@b.test").await;
    let a_key = LinkKey::load_or_create(&net.key_path("a.test")).unwrap();
    let (tls, exporter) = tls_to(b.addr(), "b.test").await;
    let auth = a_key.authorize("a.test", "b.test", &exporter);
    let mut link = link_upgrade(tls, "b.test", &auth.to_header())
        .await
        .unwrap();

    // On the link: a bad address, a caller not of the origin, one call
    // taken, then the link's limits (calls in flight, then the rate; which
    // of the two refuses the last depends on the clock, both are 503).
    link.send(invite("not-an-address", "bob@b.test", "link-bad-1"))
        .await;
    link.expect_bye(400).await;
    link.send(invite("mallory@c.test", "bob@b.test", "link-spoof-1"))
        .await;
    link.expect_bye(403).await;
    link.send(invite("alice@a.test", "bob@b.test", "link-call-1"))
        .await;
    bob.expect("invite").await;
    for id in ["link-full-1", "link-full-2"] {
        link.send(invite("alice@a.test", "bob@b.test", id)).await;
        link.expect_bye(503).await;
    }

    // On a socket: a spoofed caller, a bad callee, and one call too many.
    let mut carol = b.connect_online("carol@b.test").await;
    carol
        .send(invite("mallory@b.test", "bob@b.test", "sock-spoof-1"))
        .await;
    carol.expect_bye(403).await;
    carol
        .send(invite("carol@b.test", "bob@@b.test", "sock-bad-1"))
        .await;
    carol.expect_bye(400).await;
    carol
        .send(invite("carol@b.test", "bob@b.test", "sock-call-1"))
        .await;
    bob.expect("invite").await;
    carol
        .send(invite("carol@b.test", "bob@b.test", "sock-full-1"))
        .await;
    carol.expect_bye(503).await;
    bob.expect_nothing().await;

    let m = b.metrics().await;
    let calls =
        |outcome: &str| metric_value(&m, &format!("wspd_calls_total{{outcome=\"{outcome}\"}}"));
    assert_eq!(calls("bad_request"), 2.0, "{m}");
    assert_eq!(calls("forbidden"), 2.0, "{m}");
    assert_eq!(calls("unavailable"), 3.0, "{m}");
    let remote = |outcome: &str| {
        metric_value(
            &m,
            &format!("wspd_remote_calls_total{{domain=\"a.test\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(remote("bad_request"), 1.0, "{m}");
    assert_eq!(remote("forbidden"), 1.0, "{m}");
    assert_eq!(remote("unavailable"), 2.0, "{m}");
    let limit =
        |name: &str| metric_value(&m, &format!("wspd_limits_hit_total{{limit=\"{name}\"}}"));
    assert!(limit("calls_per_link") >= 1.0, "{m}");
    assert_eq!(
        limit("calls_per_link") + limit("invites_per_second"),
        2.0,
        "{m}"
    );
    assert_eq!(limit("calls_per_socket"), 1.0, "{m}");
    assert_eq!(metric_value(&m, "wspd_calls_active"), 2.0, "{m}");
}
