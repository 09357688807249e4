//! Discovery: where to connect for a domain (protocol.md section 6).
//!
//! `[federation.peers]` overrides DNS for one domain. Otherwise the SRV
//! records of `_wsp._tcp.D.` are ordered by priority, then by weighted random
//! choice (RFC 2782), and every address of every target is returned in that
//! order. Without SRV records, D itself on port 443. A lone SRV target `.`
//! means the domain has no WSP service.
//!
//! The resolver is hickory's: it caches answers for their TTL (negative
//! answers at most `federation.failure_cache`). On top of that, any failed
//! discovery is remembered per domain for `federation.failure_cache`, so a
//! burst of calls to a dead domain costs one lookup. The whole discovery is
//! bounded by `federation.lookup_timeout`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use tokio::time::Instant;
use tracing::debug;

use crate::config::{Federation, HostPort};
use crate::frame::ByeCode;
use crate::logging::Escaped;
use crate::metrics::Metrics;

/// How many failed domains are remembered at most.
const MAX_REMEMBERED_FAILURES: usize = 10_000;

/// The port used when a domain has no SRV records.
const DEFAULT_PORT: u16 = 443;

/// How many times the resolver sends one query before giving up.
const ATTEMPTS: usize = 2;

/// Why a domain could not be discovered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// NXDOMAIN, no SRV and no address for the domain, or an SRV "." target: bye 604
    #[error("no WSP service: {0}")]
    NoService(String),
    /// Nothing answered within federation.lookup_timeout: bye 504
    #[error("DNS did not answer in time")]
    Timeout,
    /// Any other resolver failure (SERVFAIL, refused, I/O): bye 504
    #[error("DNS lookup failed: {0}")]
    Failed(String),
    /// DNS named only addresses this server may not connect to (loopback,
    /// private, link-local...; see `federation.allow_private_addresses`):
    /// bye 604
    #[error("no address this server may connect to: {0}")]
    PrivateOnly(String),
}

impl DiscoveryError {
    /// The bye code a call to the domain ends with.
    pub fn bye_code(&self) -> ByeCode {
        match self {
            DiscoveryError::NoService(_) | DiscoveryError::PrivateOnly(_) => ByeCode::NO_SERVICE,
            DiscoveryError::Timeout | DiscoveryError::Failed(_) => ByeCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `result` label of `wspd_dns_lookups_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            DiscoveryError::NoService(_) => "no_service",
            DiscoveryError::Timeout => "timeout",
            DiscoveryError::Failed(_) => "error",
            DiscoveryError::PrivateOnly(_) => "private",
        }
    }
}

/// Finds where to connect for a domain. Cheap to clone; clones share the
/// resolver and its caches.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: TokioResolver,
    peers: BTreeMap<String, HostPort>,
    lookup_timeout: Duration,
    failure_cache: Duration,
    failures: Mutex<Failures>,
    metrics: Arc<Metrics>,
    /// `federation.allow_private_addresses`.
    allow_private: bool,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("peers", &self.inner.peers)
            .field("lookup_timeout", &self.inner.lookup_timeout)
            .field("failure_cache", &self.inner.failure_cache)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// A discovery using `fed.resolver`, or the system's DNS configuration
    /// (resolv.conf) when that is not set. Fails only when the system's
    /// configuration cannot be read.
    pub fn new(fed: &Federation, metrics: Arc<Metrics>) -> Result<Self, DiscoveryError> {
        let (config, mut opts) = match fed.resolver {
            Some(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut server.connections {
                    c.port = addr.port();
                }
                let mut opts = ResolverOpts::default();
                // Only the configured server answers, never /etc/hosts.
                opts.use_hosts_file = ResolveHosts::Never;
                (ResolverConfig::from_name_servers(vec![server]), opts)
            }
            None => hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                DiscoveryError::Failed(format!("cannot read the system's DNS configuration: {e}"))
            })?,
        };
        // Both phases (SRV, then the targets' addresses) with every attempt
        // fit in the lookup timeout; the outer timeout bounds the rest.
        opts.timeout = (fed.lookup_timeout / (2 * ATTEMPTS as u32)).max(Duration::from_millis(50));
        opts.attempts = ATTEMPTS;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.negative_max_ttl = Some(fed.failure_cache);
        opts.try_tcp_on_error = true;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| DiscoveryError::Failed(format!("cannot set up the resolver: {e}")))?;
        Ok(Discovery {
            inner: Arc::new(Inner {
                resolver,
                peers: fed.peers.clone(),
                lookup_timeout: fed.lookup_timeout,
                failure_cache: fed.failure_cache,
                failures: Mutex::new(Failures::default()),
                metrics,
                allow_private: fed.allow_private_addresses,
            }),
        })
    }

    /// The bound on one discovery (`federation.lookup_timeout`).
    pub fn lookup_timeout(&self) -> Duration {
        self.inner.lookup_timeout
    }

    /// Where to connect for domain D, best first. Every address of every target, in order.
    pub async fn resolve(&self, domain: &str) -> Result<Vec<SocketAddr>, DiscoveryError> {
        let inner = &*self.inner;
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let now = Instant::now();
        if let Some(e) = inner.failures().get(&domain, now) {
            debug!(%domain, result = "cached_failure", error = %Escaped(&e), "discovery");
            inner.metrics.dns_lookup("cached_failure");
            return Err(e);
        }
        let over = inner.peers.get(&domain);
        let found = match tokio::time::timeout(inner.lookup_timeout, async {
            match over {
                Some(hp) => inner.by_override(hp).await,
                None => inner
                    .by_dns(&domain)
                    .await
                    .and_then(|a| inner.public_only(a)),
            }
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(DiscoveryError::Timeout),
        };
        match found {
            Ok(addrs) => {
                let result = if over.is_some() { "override" } else { "ok" };
                debug!(%domain, result, ?addrs, "discovery");
                inner.metrics.dns_lookup(result);
                Ok(addrs)
            }
            Err(e) => {
                debug!(%domain, result = e.reason(), error = %Escaped(&e), "discovery");
                inner.metrics.dns_lookup(e.reason());
                if !inner.failure_cache.is_zero() {
                    inner.failures().insert(
                        domain,
                        e.clone(),
                        Instant::now() + inner.failure_cache,
                    );
                }
                Err(e)
            }
        }
    }
}

/// One SRV record of `_wsp._tcp.D` (see [`Discovery::srv_records`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Fully qualified (`b.test.`); `.` for "no service here".
    pub target: String,
}

impl Discovery {
    /// The SRV records of `_wsp._tcp.D` as this discovery's resolver has
    /// them (from its cache right after [`Discovery::resolve`]), ordered by
    /// priority; empty when there are none, and for a `[federation.peers]`
    /// domain, which is not looked up. Bounded by `federation.lookup_timeout`.
    /// For `wspd check`, which explains what [`Discovery::resolve`] found.
    pub async fn srv_records(&self, domain: &str) -> Result<Vec<SrvRecord>, DiscoveryError> {
        let inner = &*self.inner;
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if inner.peers.contains_key(&domain) {
            return Ok(Vec::new());
        }
        let mut targets = tokio::time::timeout(inner.lookup_timeout, inner.srv_targets(&domain))
            .await
            .map_err(|_| DiscoveryError::Timeout)??;
        targets.sort_by_key(|t| t.priority);
        Ok(targets
            .into_iter()
            .map(|t| SrvRecord {
                priority: t.priority,
                weight: t.weight,
                port: t.port,
                target: if t.host.is_empty() {
                    ".".into()
                } else {
                    t.host
                },
            })
            .collect())
    }
}

impl Inner {
    fn failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        // The map stays consistent whatever panicked while it was held.
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn by_override(&self, hp: &HostPort) -> Result<Vec<SocketAddr>, DiscoveryError> {
        if let Ok(ip) = hp.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, hp.port)]);
        }
        let ips = self.addresses(&hp.host).await?;
        if ips.is_empty() {
            return Err(DiscoveryError::NoService(format!(
                "{} (from [federation.peers]) has no address",
                hp.host
            )));
        }
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, hp.port))
            .collect())
    }

    /// The SRV records of `_wsp._tcp.D.`, as received; empty when there are none.
    async fn srv_targets(&self, domain: &str) -> Result<Vec<Target>, DiscoveryError> {
        let srv_name = Name::from_ascii(format!("_wsp._tcp.{domain}."))
            .map_err(|_| DiscoveryError::NoService(format!("{domain:?} is not a domain name")))?;
        match self.resolver.srv_lookup(srv_name).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(Target {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        host: if srv.target.is_root() {
                            String::new()
                        } else {
                            let mut t = srv.target.to_ascii();
                            if !t.ends_with('.') {
                                t.push('.');
                            }
                            t
                        },
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) if no_records(&e) => Ok(Vec::new()),
            Err(e) => Err(map_error(e, domain)),
        }
    }

    async fn by_dns(&self, domain: &str) -> Result<Vec<SocketAddr>, DiscoveryError> {
        let targets = self.srv_targets(domain).await?;

        if targets.is_empty() {
            // No SRV records: the domain itself on the default port.
            let ips = self.addresses(&format!("{domain}.")).await?;
            if ips.is_empty() {
                return Err(DiscoveryError::NoService(format!(
                    "{domain} has no _wsp._tcp SRV record and no address"
                )));
            }
            return Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
                .collect());
        }
        if targets.iter().all(|t| t.host.is_empty()) {
            return Err(DiscoveryError::NoService(format!(
                "_wsp._tcp.{domain} says there is no service (target \".\")"
            )));
        }
        let targets: Vec<Target> = targets.into_iter().filter(|t| !t.host.is_empty()).collect();
        let ordered = rfc2782_order(targets, |total| rand::random_range(0..=total));

        let lookups = ordered.iter().map(|t| self.addresses(&t.host));
        let results = futures_util::future::join_all(lookups).await;
        let mut addrs = Vec::new();
        let mut seen = HashSet::new();
        let mut first_error = None;
        for (t, r) in ordered.iter().zip(results) {
            match r {
                Ok(ips) => {
                    for ip in ips {
                        let a = SocketAddr::new(ip, t.port);
                        if seen.insert(a) {
                            addrs.push(a);
                        }
                    }
                }
                Err(e) => {
                    debug!(%domain, target = %Escaped(&t.host), error = %Escaped(&e), "SRV target did not resolve");
                    first_error.get_or_insert(e);
                }
            }
        }
        if addrs.is_empty() {
            // A target that failed to resolve (rather than having no
            // address) makes the whole discovery a transient failure.
            return Err(first_error.unwrap_or_else(|| {
                DiscoveryError::NoService(format!(
                    "no SRV target of _wsp._tcp.{domain} has an address"
                ))
            }));
        }
        Ok(addrs)
    }

    /// The A and AAAA addresses of a host name (A first). Empty when the
    /// name does not exist or has no address.
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DiscoveryError> {
        let mut fqdn = host.to_string();
        if !fqdn.ends_with('.') {
            fqdn.push('.');
        }
        let name = Name::from_ascii(&fqdn)
            .map_err(|_| DiscoveryError::NoService(format!("{host:?} is not a domain name")))?;
        match self.resolver.lookup_ip(name).await {
            Ok(lookup) => Ok(lookup.iter().collect()),
            Err(e) if no_records(&e) => Ok(Vec::new()),
            Err(e) => Err(map_error(e, host)),
        }
    }
}

/// Whether a resolver error says the name or the records do not exist
/// (NXDOMAIN, or NOERROR with an empty answer).
fn no_records(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        }))
    )
}

fn map_error(e: NetError, name: &str) -> DiscoveryError {
    match e {
        NetError::Timeout => DiscoveryError::Timeout,
        e => DiscoveryError::Failed(format!("{name}: {e}")),
    }
}

/// One SRV record. `host` is a fully qualified name, empty for ".".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    priority: u16,
    weight: u16,
    port: u16,
    host: String,
}

/// RFC 2782 order: ascending priority; within one priority, repeatedly a
/// weighted random choice among the records left (weight-0 records first
/// in the running sum, so they are chosen only when drawn `0` or when they
/// are all that is left). `pick(total)` must return a uniform number in
/// `0..=total`.
fn rfc2782_order(mut targets: Vec<Target>, mut pick: impl FnMut(u32) -> u32) -> Vec<Target> {
    // Stable: records of one priority keep their order, weight 0 first.
    targets.sort_by_key(|t| (t.priority, t.weight != 0));
    let mut out = Vec::with_capacity(targets.len());
    let mut rest = targets.into_iter().peekable();
    while let Some(first) = rest.next() {
        let mut group = vec![first];
        while let Some(t) = rest.next_if(|t| t.priority == group[0].priority) {
            group.push(t);
        }
        while !group.is_empty() {
            let total: u32 = group.iter().map(|t| u32::from(t.weight)).sum();
            let r = pick(total).min(total);
            let mut sum = 0u32;
            let mut chosen = group.len() - 1;
            for (i, t) in group.iter().enumerate() {
                sum += u32::from(t.weight);
                if sum >= r {
                    chosen = i;
                    break;
                }
            }
            out.push(group.remove(chosen));
        }
    }
    out
}

/// Failed domains, remembered until they expire. The queue holds the
/// entries in the order they were made, which is the order they expire in
/// (they all live `failure_cache`); it bounds the map.
#[derive(Default)]
struct Failures {
    map: HashMap<String, (Instant, DiscoveryError)>,
    order: VecDeque<(Instant, String)>,
}

impl Failures {
    fn get(&mut self, domain: &str, now: Instant) -> Option<DiscoveryError> {
        match self.map.get(domain) {
            Some((until, e)) if *until > now => Some(e.clone()),
            Some(_) => {
                self.map.remove(domain);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, domain: String, e: DiscoveryError, until: Instant) {
        let now = Instant::now();
        while let Some((t, _)) = self.order.front() {
            if *t > now && self.order.len() < MAX_REMEMBERED_FAILURES {
                break;
            }
            if let Some((t, d)) = self.order.pop_front() {
                // Only the entry this queue slot made: a newer one for the
                // same domain has its own slot further back.
                if self.map.get(&d).is_some_and(|(u, _)| *u == t) {
                    self.map.remove(&d);
                }
            }
        }
        self.order.push_back((until, domain.clone()));
        self.map.insert(domain, (until, e));
    }
}

impl Inner {
    /// Drops the addresses DNS may not aim this server at, unless the
    /// operator allowed them.
    fn public_only(&self, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, DiscoveryError> {
        if self.allow_private {
            return Ok(addrs);
        }
        let found = addrs.len();
        let public: Vec<SocketAddr> = addrs.into_iter().filter(|a| is_public(a.ip())).collect();
        if public.is_empty() && found > 0 {
            return Err(DiscoveryError::PrivateOnly(format!(
                "{found} loopback, private, link-local or otherwise non-public address(es)"
            )));
        }
        Ok(public)
    }
}

/// Whether an address is one DNS may point this server at: not loopback,
/// private (RFC 1918), link-local, CGNAT (100.64.0.0/10), unique-local
/// (fc00::/7), unspecified, broadcast or multicast.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_public_addresses_are_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!super::is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "2001:db8::1",
            "2a00::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(super::is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    use super::*;

    fn t(priority: u16, weight: u16, host: &str) -> Target {
        Target {
            priority,
            weight,
            port: 1,
            host: host.to_string(),
        }
    }

    fn hosts(v: &[Target]) -> Vec<&str> {
        v.iter().map(|t| t.host.as_str()).collect()
    }

    /// A deterministic generator (xorshift) standing in for `rand`.
    fn seeded(mut state: u64) -> impl FnMut(u32) -> u32 {
        move |total| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % (u64::from(total) + 1)) as u32
        }
    }

    #[test]
    fn priority_comes_first_whatever_the_weights() {
        let v = vec![
            t(20, 100, "c"),
            t(10, 0, "a"),
            t(30, 65535, "d"),
            t(15, 1, "b"),
        ];
        for seed in 1..50 {
            assert_eq!(
                hosts(&rfc2782_order(v.clone(), seeded(seed))),
                ["a", "b", "c", "d"]
            );
        }
    }

    #[test]
    fn the_draw_picks_by_running_sum() {
        // Weights 0, 10, 30 in one priority: running sums 0, 10, 40.
        let v = vec![t(1, 10, "x"), t(1, 30, "y"), t(1, 0, "z")];
        // Draw 0: the weight-0 record (sum 0 >= 0). Then total 40: 10 -> x.
        let mut draws = vec![0, 10, 0].into_iter();
        let got = rfc2782_order(v.clone(), |_| draws.next().unwrap());
        assert_eq!(hosts(&got), ["z", "x", "y"]);
        // Draw 11 of 40: y (sum 40 >= 11). Then of 10 left: 5 -> x, then z.
        let mut draws = vec![11, 5, 0].into_iter();
        let got = rfc2782_order(v, |_| draws.next().unwrap());
        assert_eq!(hosts(&got), ["y", "x", "z"]);
    }

    #[test]
    fn draws_are_asked_in_the_right_range() {
        let v = vec![t(1, 10, "x"), t(1, 30, "y"), t(1, 0, "z"), t(2, 0, "w")];
        let mut totals = Vec::new();
        let mut draws = vec![40, 10, 0, 0].into_iter();
        let got = rfc2782_order(v, |total| {
            totals.push(total);
            draws.next().unwrap()
        });
        assert_eq!(hosts(&got), ["y", "x", "z", "w"]);
        assert_eq!(totals, [40, 10, 0, 0]);
    }

    #[test]
    fn weights_give_proportional_first_choices() {
        let v = vec![t(0, 1, "light"), t(0, 3, "heavy")];
        let mut rng = seeded(0x9e37_79b9_7f4a_7c15);
        let mut heavy_first = 0;
        for _ in 0..4000 {
            if rfc2782_order(v.clone(), &mut rng)[0].host == "heavy" {
                heavy_first += 1;
            }
        }
        // Running sums 1, 4; draws 0..=4 (the RFC's inclusive range):
        // 0 and 1 pick light, 2, 3 and 4 pick heavy: 3/5.
        let share = f64::from(heavy_first) / 4000.0;
        assert!((0.55..0.65).contains(&share), "heavy first {share}");
    }

    #[test]
    fn all_zero_weights_keep_every_record() {
        let v = vec![t(5, 0, "a"), t(5, 0, "b"), t(5, 0, "c")];
        let got = rfc2782_order(v, seeded(7));
        assert_eq!(hosts(&got), ["a", "b", "c"]);
    }

    #[test]
    fn out_of_range_draws_are_clamped() {
        let v = vec![t(0, 1, "a"), t(0, 1, "b")];
        let got = rfc2782_order(v, |_| u32::MAX);
        assert_eq!(hosts(&got), ["b", "a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_expire_and_stay_bounded() {
        let mut f = Failures::default();
        let now = Instant::now();
        let e = DiscoveryError::Timeout;
        f.insert("a.test".into(), e.clone(), now + Duration::from_secs(5));
        assert_eq!(f.get("a.test", now), Some(e.clone()));
        assert_eq!(f.get("a.test", now + Duration::from_secs(5)), None);
        assert!(f.map.is_empty());

        for i in 0..MAX_REMEMBERED_FAILURES + 10 {
            f.insert(
                format!("d{i}.test"),
                e.clone(),
                now + Duration::from_secs(5),
            );
        }
        assert!(f.map.len() <= MAX_REMEMBERED_FAILURES);
        assert!(f.order.len() <= MAX_REMEMBERED_FAILURES);
        // The oldest went first.
        assert_eq!(f.get("d0.test", now), None);
        let last = format!("d{}.test", MAX_REMEMBERED_FAILURES + 9);
        assert_eq!(f.get(&last, now), Some(e.clone()));

        // Expired entries are dropped on the next insert.
        tokio::time::advance(Duration::from_secs(6)).await;
        f.insert(
            "new.test".into(),
            e.clone(),
            Instant::now() + Duration::from_secs(5),
        );
        assert_eq!(f.map.len(), 1);
        assert_eq!(f.order.len(), 1);
    }

    /// Discovery is shared between tasks, and its lookups run in spawned
    /// tasks: both must be `Send`.
    #[allow(dead_code)]
    fn discovery_is_send_and_sync(d: &Discovery) {
        fn send<T: Send>(_: T) {}
        fn send_sync<T: Send + Sync>(_: &T) {}
        send_sync(d);
        send(d.resolve("b.test"));
    }

    #[test]
    fn errors_map_to_bye_codes() {
        assert_eq!(DiscoveryError::NoService("x".into()).bye_code().get(), 604);
        assert_eq!(DiscoveryError::NoService("x".into()).reason(), "no_service");
        assert_eq!(DiscoveryError::Timeout.bye_code().get(), 504);
        assert_eq!(DiscoveryError::Timeout.reason(), "timeout");
        assert_eq!(DiscoveryError::Failed("x".into()).bye_code().get(), 504);
        assert_eq!(DiscoveryError::Failed("x".into()).reason(), "error");
    }
}
