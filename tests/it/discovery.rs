//! Discovery against a real DNS server ([`common::dns::TestDns`]): SRV
//! order, the port-443 fallback, "no service" answers, timeouts, the
//! failure cache, the resolver's positive cache and `[federation.peers]`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::common;
use crate::common::dns::TestDns;
use wspd::config::Federation;
use wspd::federation::discovery::{Discovery, DiscoveryError};
use wspd::metrics::Metrics;

/// `[federation]` of a server for a.test asking `dns`, with `extra` keys.
fn federation(dns: &TestDns, extra: &str) -> Federation {
    let cfg = common::config(
        "a.test",
        &format!(
            "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
             [federation]\nallow_private_addresses = true\nresolver = \"{}\"\n{extra}",
            dns.addr
        ),
    );
    cfg.federation.expect("[federation] parsed")
}

fn discovery(fed: &Federation) -> (Discovery, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let d = Discovery::new(fed, metrics.clone()).expect("discovery builds");
    (d, metrics)
}

/// `wspd_dns_lookups_total{result}`.
fn lookups(metrics: &Metrics, result: &str) -> f64 {
    common::metric_value(
        &metrics.render(),
        &format!("wspd_dns_lookups_total{{result=\"{result}\"}}"),
    )
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(ip), port))
}

#[tokio::test]
async fn srv_targets_come_in_priority_order_with_every_address() {
    let dns = TestDns::start().await;
    // Listed out of order on purpose.
    dns.add_srv("_wsp._tcp.b.test", 20, 0, 7002, "two.b.test", 60);
    dns.add_srv("_wsp._tcp.b.test", 10, 5, 7001, "one.b.test", 60);
    dns.add_a("one.b.test", Ipv4Addr::new(127, 0, 0, 1), 60);
    dns.add_a("one.b.test", Ipv4Addr::new(127, 0, 0, 2), 60);
    dns.add_aaaa("one.b.test", "::1".parse().unwrap(), 60);
    dns.add_a("two.b.test", Ipv4Addr::new(127, 0, 0, 3), 60);
    let (d, metrics) = discovery(&federation(&dns, ""));

    let got = d.resolve("b.test").await.unwrap();
    assert_eq!(
        got,
        [
            sa([127, 0, 0, 1], 7001),
            sa([127, 0, 0, 2], 7001),
            "[::1]:7001".parse().unwrap(),
            sa([127, 0, 0, 3], 7002),
        ]
    );
    assert_eq!(lookups(&metrics, "ok"), 1.0);
    // Fully qualified names only: no search domain was tried.
    for q in dns.asked() {
        assert!(q.contains(".b.test. "), "unexpected query {q}");
    }
}

#[tokio::test]
async fn targets_of_one_priority_all_come_before_the_next() {
    let dns = TestDns::start().await;
    dns.add_srv("_wsp._tcp.b.test", 1, 10, 7001, "x.b.test", 60);
    dns.add_srv("_wsp._tcp.b.test", 1, 90, 7002, "y.b.test", 60);
    dns.add_srv("_wsp._tcp.b.test", 1, 0, 7003, "z.b.test", 60);
    dns.add_srv("_wsp._tcp.b.test", 2, 0, 7004, "w.b.test", 60);
    for (host, last) in [("x", 1), ("y", 2), ("z", 3), ("w", 4)] {
        dns.add_a(
            &format!("{host}.b.test"),
            Ipv4Addr::new(127, 0, 0, last),
            60,
        );
    }
    let (d, _) = discovery(&federation(&dns, ""));
    let got = d.resolve("b.test").await.unwrap();
    assert_eq!(got.len(), 4);
    let mut first_three: Vec<u16> = got[..3].iter().map(|a| a.port()).collect();
    first_three.sort_unstable();
    assert_eq!(first_three, [7001, 7002, 7003]);
    assert_eq!(got[3], sa([127, 0, 0, 4], 7004));
}

#[tokio::test]
async fn without_srv_the_domain_itself_on_443() {
    let dns = TestDns::start().await;
    dns.add_a("b.test", Ipv4Addr::new(127, 0, 0, 5), 60);
    let (d, metrics) = discovery(&federation(&dns, ""));
    assert_eq!(
        d.resolve("b.test").await.unwrap(),
        [sa([127, 0, 0, 5], 443)]
    );
    assert_eq!(lookups(&metrics, "ok"), 1.0);
    assert!(dns.asked().contains(&"_wsp._tcp.b.test. SRV".to_string()));
}

#[tokio::test]
async fn a_domain_that_does_not_exist_has_no_service() {
    let dns = TestDns::start().await;
    let (d, metrics) = discovery(&federation(&dns, ""));
    let e = d.resolve("nowhere.test").await.unwrap_err();
    assert!(matches!(e, DiscoveryError::NoService(_)), "{e:?}");
    assert_eq!(e.bye_code().get(), 604);
    assert_eq!(e.reason(), "no_service");
    assert_eq!(lookups(&metrics, "no_service"), 1.0);
}

#[tokio::test]
async fn an_srv_dot_target_means_no_service() {
    let dns = TestDns::start().await;
    dns.add_srv("_wsp._tcp.b.test", 0, 0, 0, ".", 60);
    // The domain has an address, but the SRV answer wins.
    dns.add_a("b.test", Ipv4Addr::new(127, 0, 0, 5), 60);
    let (d, _) = discovery(&federation(&dns, ""));
    let e = d.resolve("b.test").await.unwrap_err();
    assert!(matches!(e, DiscoveryError::NoService(_)), "{e:?}");
    assert_eq!(e.bye_code().get(), 604);
    assert!(!dns.asked().iter().any(|q| q.starts_with("b.test. ")));
}

#[tokio::test]
async fn srv_targets_without_addresses_mean_no_service() {
    let dns = TestDns::start().await;
    dns.add_srv("_wsp._tcp.b.test", 0, 0, 7001, "gone.b.test", 60);
    dns.add_a("b.test", Ipv4Addr::new(127, 0, 0, 5), 60);
    let (d, _) = discovery(&federation(&dns, ""));
    let e = d.resolve("b.test").await.unwrap_err();
    assert!(matches!(e, DiscoveryError::NoService(_)), "{e:?}");
}

#[tokio::test]
async fn a_refusing_server_is_a_transient_failure() {
    let dns = TestDns::start().await;
    dns.set_refuse(true);
    let (d, metrics) = discovery(&federation(&dns, ""));
    let e = d.resolve("b.test").await.unwrap_err();
    assert!(matches!(e, DiscoveryError::Failed(_)), "{e:?}");
    assert_eq!(e.bye_code().get(), 504);
    assert_eq!(lookups(&metrics, "error"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_times_out_within_the_lookup_timeout() {
    let dns = TestDns::start().await;
    dns.set_silent(true);
    let (d, metrics) = discovery(&federation(&dns, "lookup_timeout = \"2s\""));
    let start = tokio::time::Instant::now();
    let e = d.resolve("b.test").await.unwrap_err();
    assert_eq!(e, DiscoveryError::Timeout);
    assert_eq!(e.bye_code().get(), 504);
    assert!(
        start.elapsed() <= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(dns.queries() >= 1);
    assert_eq!(lookups(&metrics, "timeout"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn failures_are_remembered_for_failure_cache_then_forgotten() {
    let dns = TestDns::start().await;
    let (d, metrics) = discovery(&federation(&dns, "failure_cache = \"5s\""));
    let e = d.resolve("b.test").await.unwrap_err();
    assert!(matches!(e, DiscoveryError::NoService(_)), "{e:?}");
    let asked = dns.queries();
    assert!(asked >= 1);

    // The domain appears, but the failure is remembered: DNS is not asked.
    dns.add_a("b.test", Ipv4Addr::new(127, 0, 0, 5), 60);
    tokio::time::advance(Duration::from_millis(4900)).await;
    assert_eq!(d.resolve("b.test").await.unwrap_err(), e);
    assert_eq!(dns.queries(), asked);
    assert_eq!(lookups(&metrics, "cached_failure"), 1.0);
    assert_eq!(lookups(&metrics, "no_service"), 1.0);

    // Another domain is not affected.
    assert!(d.resolve("c.test").await.is_err());
    assert!(dns.queries() > asked);

    tokio::time::advance(Duration::from_millis(200)).await;
    let before = dns.queries();
    assert_eq!(
        d.resolve("b.test").await.unwrap(),
        [sa([127, 0, 0, 5], 443)]
    );
    assert!(dns.queries() > before);
    assert_eq!(lookups(&metrics, "cached_failure"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_remembered_too() {
    let dns = TestDns::start().await;
    dns.set_silent(true);
    let (d, metrics) = discovery(&federation(
        &dns,
        "lookup_timeout = \"1s\"\nfailure_cache = \"5s\"",
    ));
    assert_eq!(
        d.resolve("b.test").await.unwrap_err(),
        DiscoveryError::Timeout
    );
    let asked = dns.queries();
    assert_eq!(
        d.resolve("b.test").await.unwrap_err(),
        DiscoveryError::Timeout
    );
    assert_eq!(dns.queries(), asked);
    assert_eq!(lookups(&metrics, "cached_failure"), 1.0);

    dns.set_silent(false);
    dns.add_a("b.test", Ipv4Addr::new(127, 0, 0, 5), 60);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        d.resolve("b.test").await.unwrap(),
        [sa([127, 0, 0, 5], 443)]
    );
}

/// The resolver's own negative cache is bounded by `failure_cache` even
/// when the zone says to keep negative answers for an hour. Real time: the
/// resolver's cache runs on the system clock, not tokio's.
#[tokio::test]
async fn negative_answers_are_not_kept_longer_than_failure_cache() {
    let dns = TestDns::start().await;
    dns.set_negative_ttl(Some(3600));
    let (d, metrics) = discovery(&federation(&dns, "failure_cache = \"200ms\""));
    assert!(matches!(
        d.resolve("b.test").await,
        Err(DiscoveryError::NoService(_))
    ));
    dns.add_a("b.test", Ipv4Addr::new(127, 0, 0, 5), 60);
    // Let both caches expire (the point of the test, not a synchronisation).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = dns.queries();
    assert_eq!(
        d.resolve("b.test").await.unwrap(),
        [sa([127, 0, 0, 5], 443)]
    );
    assert!(dns.queries() > before);
    assert_eq!(lookups(&metrics, "cached_failure"), 0.0);
}

#[tokio::test]
async fn answers_are_cached_for_their_ttl() {
    let dns = TestDns::start().await;
    dns.add_srv("_wsp._tcp.b.test", 0, 0, 7001, "one.b.test", 300);
    dns.add_a("one.b.test", Ipv4Addr::new(127, 0, 0, 1), 300);
    // The empty AAAA answer is cached too (for at most failure_cache).
    dns.set_negative_ttl(Some(300));
    let (d, metrics) = discovery(&federation(&dns, ""));
    let first = d.resolve("b.test").await.unwrap();
    assert_eq!(first, [sa([127, 0, 0, 1], 7001)]);
    let asked = dns.queries();
    assert_eq!(asked, 3, "{:?}", dns.asked()); // SRV, A, AAAA
    let again = d.resolve("b.test").await.unwrap();
    assert_eq!(again, first);
    assert_eq!(dns.queries(), asked, "the second discovery asked DNS");
    assert_eq!(lookups(&metrics, "ok"), 2.0);
    // Clones share the cache.
    assert_eq!(d.clone().resolve("b.test").await.unwrap(), first);
    assert_eq!(dns.queries(), asked);
}

#[tokio::test]
async fn peers_override_dns() {
    let dns = TestDns::start().await;
    dns.add_srv("_wsp._tcp.b.test", 0, 0, 7001, "one.b.test", 60);
    dns.add_a("one.b.test", Ipv4Addr::new(127, 0, 0, 1), 60);
    let (d, metrics) = discovery(&federation(
        &dns,
        "[federation.peers]\n\"b.test\" = \"127.0.0.9:9999\"\n\"c.test\" = \"[::1]:9998\"",
    ));
    assert_eq!(
        d.resolve("b.test").await.unwrap(),
        [sa([127, 0, 0, 9], 9999)]
    );
    assert_eq!(
        d.resolve("C.test").await.unwrap(),
        ["[::1]:9998".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(dns.queries(), 0);
    assert_eq!(lookups(&metrics, "override"), 2.0);
}

#[tokio::test]
async fn a_peer_given_by_name_is_resolved_without_srv() {
    let dns = TestDns::start().await;
    dns.add_srv("_wsp._tcp.b.test", 0, 0, 7001, "one.b.test", 60);
    dns.add_a("one.b.test", Ipv4Addr::new(127, 0, 0, 1), 60);
    dns.add_a("private.b.test", Ipv4Addr::new(127, 0, 0, 7), 60);
    let (d, metrics) = discovery(&federation(
        &dns,
        "[federation.peers]\n\"b.test\" = \"private.b.test:7443\"",
    ));
    assert_eq!(
        d.resolve("b.test").await.unwrap(),
        [sa([127, 0, 0, 7], 7443)]
    );
    let asked = dns.asked();
    assert!(!asked.is_empty());
    assert!(
        asked.iter().all(|q| q.starts_with("private.b.test. ")),
        "{asked:?}"
    );
    assert_eq!(lookups(&metrics, "override"), 1.0);
}
