//! Attacks through federation that aim the server's outbound connections:
//! DNS that names loopback or private addresses, for a link or for the key
//! fetch an unauthenticated upgrade triggers. Each test proves the refusal,
//! that no connection was made, and that other users are still served.

use std::net::TcpListener;
use std::path::Path;

use crate::common::*;
use crate::federation::{link_upgrade, tls_to};
use wspd::config::Config;
use wspd::federation::keys::LinkKey;

/// `domain`'s config on this net without `allow_private_addresses`: the
/// default an operator gets. `extra` adds `[federation]` keys.
fn default_config(net: &Net, domain: &str, extra: &str) -> Config {
    config_in(
        domain,
        &format!(
            "[tls]\ncert = \"certs/{domain}.pem\"\nkey = \"certs/{domain}-key.pem\"\n\
             [federation]\nkey = \"{}\"\nresolver = \"{}\"\nca = \"certs/ca.pem\"\n\
             lookup_timeout = \"2s\"\nconnect_timeout = \"2s\"\n{extra}",
            net.key_path(domain).display(),
            net.dns.addr
        ),
        Path::new("."),
    )
}

/// An internal service on loopback that the attacker's DNS points at; it
/// must never see a connection.
fn internal_service() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn assert_never_connected(l: &TcpListener) {
    match l.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the server connected to the internal service: {other:?}"),
    }
}

#[tokio::test]
async fn a_domain_whose_dns_names_loopback_is_never_connected_to() {
    let net = Net::new("attack-ssrf-link").await;
    let service = internal_service();
    net.publish("evil.test", "evil.test", service.local_addr().unwrap());
    let a = TestServer::start(default_config(&net, "a.test", "")).await;
    let mut alice = a.connect_online("alice@a.test").await;
    let mut carol = a.connect_online("carol@a.test").await;

    alice
        .send(invite("alice@a.test", "bob@evil.test", "ssrf-link-1"))
        .await;
    let f = alice.expect_bye(604).await;
    assert!(
        !f.to_string().contains("127.0.0.1"),
        "no address in the bye: {f}"
    );
    assert_never_connected(&service);
    assert_eq!(
        a.metric("wspd_dns_lookups_total{result=\"private\"}").await,
        1.0
    );
    // Everyone else is served.
    alice
        .send(invite("alice@a.test", "carol@a.test", "local-call-1"))
        .await;
    carol.expect("invite").await;
}

#[tokio::test]
async fn an_upgrade_naming_an_origin_on_loopback_makes_no_key_fetch() {
    let net = Net::new("attack-ssrf-keys").await;
    let service = internal_service();
    net.publish("evil.test", "evil.test", service.local_addr().unwrap());
    let a = TestServer::start(default_config(&net, "a.test", "")).await;
    net.publish("a.test", "a.test", a.addr());
    let mut alice = a.connect_online("alice@a.test").await;
    let mut carol = a.connect_online("carol@a.test").await;

    // Anyone can open TLS to a.test and name an origin in WSP-Link.
    let (tls, exporter) = tls_to(a.addr(), "a.test").await;
    let auth = LinkKey::generate().authorize("evil.test", "a.test", &exporter);
    let (status, body) = link_upgrade(tls, "a.test", &auth.to_header())
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("keys-unavailable"), "{body}");
    assert_never_connected(&service);
    alice
        .send(invite("alice@a.test", "carol@a.test", "local-call-2"))
        .await;
    carol.expect("invite").await;
}

/// `[federation.peers]` is the operator's own choice: a peer on loopback is
/// reached without the option.
#[tokio::test]
async fn a_peer_the_operator_named_is_reached_on_loopback() {
    let net = Net::new("attack-ssrf-peers").await;
    let b = net.server("b.test", "").await;
    let a = TestServer::start(default_config(
        &net,
        "a.test",
        &format!("[federation.peers]\n\"b.test\" = \"{}\"\n", b.addr()),
    ))
    .await;
    net.publish("a.test", "a.test", a.addr());
    let mut alice = a.connect_online("alice@a.test").await;
    let mut bob = b.connect_online("bob@b.test").await;
    alice
        .send(invite("alice@a.test", "bob@b.test", "peer-call-1"))
        .await;
    bob.expect("invite").await;
}

/// A plain listener on loopback that counts the connections it accepts and
/// holds them (`close`: or drops each at once). Returns its address, the
/// count and the task to abort.
async fn counting_listener(
    close: bool,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if !close {
                held.push(s);
            }
        }
    });
    (addr, accepted, task)
}

fn count(c: &std::sync::atomic::AtomicUsize) -> usize {
    c.load(std::sync::atomic::Ordering::SeqCst)
}

/// A link upgrade to `addr` claiming `origin`, signed by a throwaway key:
/// the HTTP status of its refusal.
async fn upgrade_claiming(addr: std::net::SocketAddr, origin: &str) -> u16 {
    let (tls, exporter) = tls_to(addr, "a.test").await;
    let auth = LinkKey::generate().authorize(origin, "a.test", &exporter);
    link_upgrade(tls, "a.test", &auth.to_header())
        .await
        .err()
        .expect("refused")
        .0
}

/// An origin with six addresses costs at most three connections per
/// fetch.
#[tokio::test]
async fn a_key_fetch_tries_at_most_three_addresses() {
    let net = Net::new("attack-ssrf-many").await;
    let mut tasks = Vec::new();
    let mut counts = Vec::new();
    for n in 0..6 {
        let (addr, c, t) = counting_listener(true).await;
        let target = format!("t{n}.many.test");
        net.dns
            .add_srv("_wsp._tcp.many.test", 10, 0, addr.port(), &target, 60);
        net.dns.add_a(&target, std::net::Ipv4Addr::LOCALHOST, 60);
        tasks.push(t);
        counts.push(c);
    }
    let a = TestServer::start(default_config(
        &net,
        "a.test",
        "allow_private_addresses = true\n",
    ))
    .await;
    assert_eq!(upgrade_claiming(a.addr(), "many.test").await, 401);
    let tried: usize = counts.iter().map(|c| count(c)).sum();
    assert_eq!(tried, 3, "addresses tried for one fetch");
    for t in tasks {
        t.abort();
    }
}

/// Upgrades naming many origins at once start at most eight fetches; the
/// others are refused at once, and other users are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_fetches_in_flight_are_capped() {
    let net = Net::new("attack-ssrf-cap").await;
    let (silent, accepted, task) = counting_listener(false).await;
    for n in 0..16 {
        net.publish(&format!("o{n}.test"), "silent.test", silent);
    }
    let a = TestServer::start(default_config(
        &net,
        "a.test",
        "allow_private_addresses = true\n",
    ))
    .await;
    let mut alice = a.connect_online("alice@a.test").await;
    let mut carol = a.connect_online("carol@a.test").await;
    let addr = a.addr();
    let upgrades: Vec<_> = (0..16)
        .map(|n| tokio::spawn(async move { upgrade_claiming(addr, &format!("o{n}.test")).await }))
        .collect();
    alice
        .send(invite("alice@a.test", "carol@a.test", "local-call-4"))
        .await;
    carol.expect("invite").await;
    for u in upgrades {
        assert_eq!(u.await.unwrap(), 401);
    }
    let n = count(&accepted);
    assert!((1..=8).contains(&n), "{n} fetches were in flight at once");
    task.abort();
}

/// An upgrade naming an origin that cannot be fetched gets a fixed refusal:
/// nothing the resolver, the network or the other side said comes back.
#[tokio::test]
async fn a_refused_link_hears_nothing_of_third_parties() {
    let net = Net::new("attack-ssrf-body").await;
    let a = TestServer::start(default_config(&net, "a.test", "")).await;
    net.publish("a.test", "a.test", a.addr());
    let (tls, exporter) = tls_to(a.addr(), "a.test").await;
    let auth = LinkKey::generate().authorize("nosuch.test", "a.test", &exporter);
    let (status, body) = link_upgrade(tls, "a.test", &auth.to_header())
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 401, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "keys-unavailable", "{body}");
    assert_eq!(
        v["description"], "the origin domain's link keys could not be fetched",
        "{body}"
    );
    // The header's own text is not echoed either.
    let (tls, exporter) = tls_to(a.addr(), "a.test").await;
    let auth = LinkKey::generate().authorize("a.test", "evil-destination.test", &exporter);
    let (status, body) = link_upgrade(tls, "a.test", &auth.to_header())
        .await
        .err()
        .expect("refused");
    assert!(status == 401 || status == 403, "{status} {body}");
    assert!(!body.contains("evil"), "{body}");
}

/// Many upgrades naming one origin whose server never answers cost one
/// outbound connection: one fetch in flight per origin, and its failure
/// remembered.
#[tokio::test]
async fn a_burst_of_upgrades_naming_one_origin_costs_one_fetch() {
    let net = Net::new("attack-ssrf-burst").await;
    // A server for slow.test that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    net.publish("slow.test", "slow.test", silent.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(s);
        }
    });
    let a = TestServer::start(default_config(
        &net,
        "a.test",
        "allow_private_addresses = true\n",
    ))
    .await;
    net.publish("a.test", "a.test", a.addr());
    let mut alice = a.connect_online("alice@a.test").await;
    let mut carol = a.connect_online("carol@a.test").await;

    let addr = a.addr();
    let upgrades: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(async move {
                let (tls, exporter) = tls_to(addr, "a.test").await;
                let auth = LinkKey::generate().authorize("slow.test", "a.test", &exporter);
                link_upgrade(tls, "a.test", &auth.to_header()).await.err()
            })
        })
        .collect();
    for u in upgrades {
        let (status, body) = u.await.unwrap().expect("refused");
        assert_eq!(status, 401, "{body}");
    }
    // Again, one after another: the failure is remembered.
    for _ in 0..5 {
        let (tls, exporter) = tls_to(addr, "a.test").await;
        let auth = LinkKey::generate().authorize("slow.test", "a.test", &exporter);
        let (status, _) = link_upgrade(tls, "a.test", &auth.to_header())
            .await
            .err()
            .expect("refused");
        assert_eq!(status, 401);
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one outbound connection for sixteen upgrades"
    );
    alice
        .send(invite("alice@a.test", "carol@a.test", "local-call-3"))
        .await;
    carol.expect("invite").await;
    holder.abort();
}
