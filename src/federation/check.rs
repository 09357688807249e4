//! `wspd check DOMAIN`: whether this server federates with DOMAIN, told
//! step by step the way the server itself would go about it.
//!
//! The check builds the server's own [`Links`] from the config (same
//! discovery, resolver, `[federation.peers]`, trust roots, TLS settings and
//! link key) and walks what opening a link does, one observable step at a
//! time: discovery, TCP and TLS to each address in turn until one works,
//! the peer's published keys, then the signed link upgrade, which it closes
//! at once with 1000. Every step is bounded by `federation.lookup_timeout`
//! or `federation.connect_timeout`, so a check always ends.
//!
//! It never creates the link key file: a missing key means the server has
//! not started yet, and a key created by an operator's shell could end up
//! unreadable by the server.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme;
use crate::address::normalize_domain;
use crate::config::{Config, Federation, Tls};
use crate::federation::dial::{UpgradeError, certificate_error, get_keys, tcp_connect};
use crate::federation::discovery::DiscoveryError;
use crate::federation::keys::LinkKey;
use crate::federation::links::{Links, LinksError};
use crate::frame::{ByeCode, ServerBye};
use crate::logging::Escaped;
use crate::metrics::Metrics;
use crate::telemetry::Telemetry;

// The codes calls end with at each step, as the links would answer them.
const POLICY: ByeCode = ServerBye::POLICY.code;
const NO_SERVICE: ByeCode = ServerBye::DOMAIN_NO_SERVICE.code;
const DNS_TIMEOUT: ByeCode = ServerBye::DOMAIN_DNS_TIMEOUT.code;
const UNREACHABLE: ByeCode = ServerBye::SERVER_UNREACHABLE.code;
const TIMEOUT: ByeCode = ServerBye::SERVER_TIMEOUT.code;
const ANSWERED_WRONGLY: ByeCode = ServerBye::SERVER_ANSWERED_WRONGLY.code;
const BAD_CERTIFICATE: ByeCode = ServerBye::SERVER_BAD_CERTIFICATE.code;

/// How one step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// It failed, but a later attempt of the same kind worked (an address
    /// that did not answer before one that did).
    Warn,
    Fail,
    /// Not tried: an earlier step failed.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Step {
    pub status: Status,
    /// `cert`, `policy`, `dns`, `connect`, `tls`, `keys` or `link`.
    pub name: &'static str,
    pub detail: String,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<4} {:<10} {}",
            self.status.label(),
            self.name,
            self.detail
        )
    }
}

/// The outcome of a check: its steps in order and a verdict.
#[derive(Debug, Clone)]
pub struct Report {
    /// This server's domain.
    pub origin: String,
    /// The domain checked.
    pub domain: String,
    pub steps: Vec<Step>,
    /// What the first failure means for calls.
    pub problem: Option<String>,
}

impl Report {
    /// Whether every step passed (warnings allowed): the server federates.
    pub fn passed(&self) -> bool {
        !self
            .steps
            .iter()
            .any(|s| matches!(s.status, Status::Fail | Status::Skip))
    }

    /// The last line: `verdict: ...`.
    pub fn verdict(&self) -> String {
        let (origin, domain) = (&self.origin, &self.domain);
        if !self.passed() {
            let p = self
                .problem
                .as_deref()
                .unwrap_or("see the failed steps above");
            return format!("verdict: {origin} does NOT federate with {domain}: {p}");
        }
        match self
            .steps
            .iter()
            .filter(|s| s.status == Status::Warn)
            .count()
        {
            0 => format!("verdict: {origin} federates with {domain}"),
            1 => format!(
                "verdict: {origin} federates with {domain} \
                 (1 warning above: links take longer to open)"
            ),
            n => format!(
                "verdict: {origin} federates with {domain} \
                 ({n} warnings above: links take longer to open)"
            ),
        }
    }

    fn push(&mut self, status: Status, name: &'static str, detail: impl Into<String>) {
        self.steps.push(Step {
            status,
            name,
            detail: detail.into(),
        });
    }

    fn ok(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(Status::Ok, name, detail);
    }

    /// A failed step; `problem` is what it means, kept for the verdict when
    /// it is the first failure.
    fn fail(&mut self, name: &'static str, detail: impl Into<String>, problem: impl Into<String>) {
        self.push(Status::Fail, name, detail);
        self.problem.get_or_insert_with(|| problem.into());
    }

    fn skip(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(Status::Skip, name, detail);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A step's detail may quote what another server sent (an error
        // body, a header): one step, one line.
        for s in &self.steps {
            writeln!(f, "{}", Escaped(s))?;
        }
        write!(f, "{}", Escaped(self.verdict()))
    }
}

/// Why a check could not even start.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("the config has no [federation] section: this server does not federate")]
    NoFederation,
    #[error("{0:?} is not a domain name")]
    BadDomain(String),
    #[error("{0} is this server's own domain")]
    OwnDomain(String),
    #[error(transparent)]
    Setup(#[from] LinksError),
}

/// Checks whether the server configured by `config` federates with
/// `domain`; see the module documentation.
pub async fn check(config: &Config, domain: &str) -> Result<Report, CheckError> {
    let fed = config.federation.as_ref().ok_or(CheckError::NoFederation)?;
    let domain = normalize_domain(domain.trim_end_matches('.'))
        .ok_or_else(|| CheckError::BadDomain(domain.to_string()))?;
    if domain == config.domain {
        return Err(CheckError::OwnDomain(domain));
    }
    let name =
        ServerName::try_from(domain.clone()).map_err(|_| CheckError::BadDomain(domain.clone()))?;
    // Without a usable key the steps up to the keys still run; the link
    // step reports the key's problem. The placeholder never signs anything.
    let (key, key_problem) = match load_key(&fed.key) {
        Ok(k) => (k, None),
        Err(why) => (LinkKey::generate(), Some(why)),
    };
    let links = Links::with_key(
        config,
        fed,
        key,
        Arc::new(Metrics::new()),
        CancellationToken::new(),
        TaskTracker::new(),
        Arc::new(Telemetry::off()),
    )?;
    let probe = Probe {
        links,
        fed,
        origin: &config.domain,
        domain,
        name,
        ct: fed.connect_timeout,
    };
    let mut report = Report {
        origin: config.domain.clone(),
        domain: probe.domain.clone(),
        steps: Vec::new(),
        problem: None,
    };
    own_certificate(config, &mut report);
    probe.policy(&mut report);
    let Some(addrs) = probe.discovery(&mut report).await else {
        return Ok(report);
    };
    let Some((addr, tls)) = probe.first_working(&mut report, addrs).await else {
        return Ok(report);
    };
    probe.keys(&mut report, addr, tls).await;
    match key_problem {
        Some(why) => report.fail(
            "link",
            why.clone(),
            format!("this server has no link key to sign with: {why}"),
        ),
        None => probe.link(&mut report, addr).await,
    }
    Ok(report)
}

/// The first step, this server's own certificate: where it comes from
/// (files or ACME), the names it is valid for, when it expires. The other
/// domain checks it when a link from here opens and when it fetches this
/// server's keys. Read from the files or the ACME cache; the CA is not
/// asked.
fn own_certificate(config: &Config, report: &mut Report) {
    let domain = &config.domain;
    let (source, info) = match &config.tls {
        None => {
            report.fail(
                "cert",
                "no [tls] section: this server has no certificate",
                "federation needs a certificate for this domain ([tls])",
            );
            return;
        }
        Some(Tls::Files { cert, .. }) => (
            format!("files ({})", cert.display()),
            acme::cert::file_info(cert).map(Some),
        ),
        Some(Tls::Acme(settings)) => {
            let cache = acme::Cache::new(&settings.cache, &settings.directory);
            (
                format!(
                    "ACME from {} (cache {})",
                    settings.directory,
                    cache.dir().display()
                ),
                cache.load_cert(domain).map(|c| c.map(|c| c.info)),
            )
        }
    };
    let info = match info {
        Ok(Some(info)) => info,
        Ok(None) => {
            report.fail(
                "cert",
                format!("{source}: none obtained yet (the server obtains it when it runs)"),
                format!("{domain} has no certificate yet: start the server and see its log"),
            );
            return;
        }
        Err(e) => {
            report.fail(
                "cert",
                format!("{source}: {e}"),
                format!("this server's certificate cannot be read: {e}"),
            );
            return;
        }
    };
    let now = std::time::SystemTime::now();
    let names = info.names.join(", ");
    let expires = acme::utc(info.not_after);
    if info.not_after <= now {
        report.fail(
            "cert",
            format!("{source}: valid for {names}; EXPIRED {expires}"),
            format!("{domain}'s own certificate has expired: other servers refuse it"),
        );
    } else if !info.names.iter().any(|n| n == domain) {
        report.fail(
            "cert",
            format!("{source}: valid for {names}, not for {domain}; expires {expires}"),
            format!(
                "{domain}'s own certificate is not valid for {domain}: other servers refuse it"
            ),
        );
    } else {
        report.ok(
            "cert",
            format!(
                "{source}: valid for {names}; expires {expires} (in {:.0} days)",
                info.days_left(now).floor()
            ),
        );
    }
}

/// What every step needs: the server's own links, built from the config,
/// and the domain checked.
struct Probe<'a> {
    links: Links,
    fed: &'a Federation,
    /// This server's domain.
    origin: &'a str,
    domain: String,
    /// `domain` as the TLS server name (SNI and certificate check).
    name: ServerName<'static>,
    /// `federation.connect_timeout`, which bounds each network step.
    ct: Duration,
}

impl Probe<'_> {
    /// Step 0, our own policy: the server refuses calls to a denied domain
    /// before any link; the rest still runs, to show the peer's side.
    fn policy(&self, report: &mut Report) {
        let (origin, domain) = (self.origin, &self.domain);
        if self.fed.allows(domain) {
            report.ok(
                "policy",
                format!("{origin}'s [federation] allow/deny lets {domain} federate"),
            );
        } else {
            report.fail(
                "policy",
                format!("{origin}'s [federation] allow/deny refuses {domain}"),
                format!(
                    "this config's own policy refuses {domain} (calls to it end with {POLICY} here)"
                ),
            );
        }
    }

    /// Step 1, discovery, exactly as a call would do it. `None` when it
    /// failed; the later steps are then reported as skipped.
    async fn discovery(&self, report: &mut Report) -> Option<Vec<SocketAddr>> {
        let (fed, domain) = (self.fed, &self.domain);
        let e = match self.links.discovery().resolve(domain).await {
            Ok(addrs) => {
                let route = route(&self.links, fed, domain).await;
                report.ok(
                    "dns",
                    format!("{route} -> {} [{}]", list(&addrs), resolver(fed)),
                );
                return Some(addrs);
            }
            Err(e) => e,
        };
        let detail = match &e {
            DiscoveryError::NoService(why) => format!("no WSP service (bye {NO_SERVICE}): {why}"),
            DiscoveryError::Timeout => format!(
                "DNS did not answer within {:?} (bye {DNS_TIMEOUT})",
                fed.lookup_timeout
            ),
            DiscoveryError::Failed(why) => format!("DNS lookup failed (bye {DNS_TIMEOUT}): {why}"),
            DiscoveryError::PrivateOnly(why) => format!(
                "DNS names no address this server may connect to (bye {NO_SERVICE}): {why}; \
                 set [federation] allow_private_addresses = true only if that is meant"
            ),
        };
        report.fail(
            "dns",
            format!("{detail} [{}]", resolver(fed)),
            format!(
                "{domain} cannot be discovered: calls to it end with bye {}",
                e.bye_code()
            ),
        );
        report.skip("connect", "not tried: no address");
        report.skip("keys", "not tried: no address");
        report.skip("link", "not tried: no address");
        None
    }

    /// Step 2, TCP and TLS to each address in turn, until one works. A
    /// failed address costs the server time but not the link when a later
    /// one works: its failure is then only a warning. `None` when no
    /// address worked; the later steps are then reported as skipped.
    async fn first_working(
        &self,
        report: &mut Report,
        addrs: Vec<SocketAddr>,
    ) -> Option<(SocketAddr, TlsStream<TcpStream>)> {
        let mut problem = None;
        let first_attempt = report.steps.len();
        for addr in addrs {
            let Some(tcp) = self.connect(report, addr, &mut problem).await else {
                continue;
            };
            if let Some(tls) = self.tls(report, addr, tcp, &mut problem).await {
                for s in &mut report.steps[first_attempt..] {
                    if s.status == Status::Fail {
                        s.status = Status::Warn;
                    }
                }
                return Some((addr, tls));
            }
        }
        // The last failure is the one calls see; a policy failure stays first.
        report.problem = report.problem.take().or(problem);
        report.skip("keys", "not tried: no address worked");
        report.skip("link", "not tried: no address worked");
        None
    }

    /// The TCP connection to one address; on failure, `problem` becomes
    /// what it means for calls.
    async fn connect(
        &self,
        report: &mut Report,
        addr: SocketAddr,
        problem: &mut Option<String>,
    ) -> Option<TcpStream> {
        let (domain, ct) = (&self.domain, self.ct);
        let start = Instant::now();
        match timeout(ct, tcp_connect(addr)).await {
            Ok(Ok(tcp)) => {
                report.ok("connect", format!("{addr} in {}", ms(start.elapsed())));
                Some(tcp)
            }
            Ok(Err(e)) => {
                report.push(Status::Fail, "connect", format!("{addr}: {e}"));
                *problem = Some(format!(
                    "no server of {domain} could be reached (calls end with {UNREACHABLE})"
                ));
                None
            }
            Err(_) => {
                report.push(
                    Status::Fail,
                    "connect",
                    format!("{addr}: no answer within {ct:?}"),
                );
                *problem = Some(format!(
                    "no server of {domain} answered in time (calls end with {TIMEOUT})"
                ));
                None
            }
        }
    }

    /// The TLS handshake on one address's connection; on failure,
    /// `problem` becomes what it means for calls.
    async fn tls(
        &self,
        report: &mut Report,
        addr: SocketAddr,
        tcp: TcpStream,
        problem: &mut Option<String>,
    ) -> Option<TlsStream<TcpStream>> {
        let (domain, ct) = (&self.domain, self.ct);
        let start = Instant::now();
        match timeout(ct, self.links.dialer().tls_handshake(tcp, &self.name)).await {
            Ok(Ok(tls)) => {
                report.ok(
                    "tls",
                    format!(
                        "{addr}: {}, certificate valid for {domain} (SNI {domain}) in {}",
                        session(&tls),
                        ms(start.elapsed())
                    ),
                );
                Some(tls)
            }
            Ok(Err(e)) => {
                let (detail, why) = tls_failure(&e, domain, self.fed);
                report.push(Status::Fail, "tls", format!("{addr}: {detail}"));
                *problem = Some(why);
                None
            }
            Err(_) => {
                report.push(
                    Status::Fail,
                    "tls",
                    format!("{addr}: no TLS handshake within {ct:?}"),
                );
                *problem = Some(format!(
                    "{domain}'s server did not finish a TLS handshake (calls end with {TIMEOUT})"
                ));
                None
            }
        }
    }

    /// Step 3, the peer's published keys, on the connection just checked.
    async fn keys(&self, report: &mut Report, addr: SocketAddr, tls: TlsStream<TcpStream>) {
        let (origin, domain, ct) = (self.origin, &self.domain, self.ct);
        let url = format!("https://{domain}/.well-known/wsp/keys");
        let problem =
            format!("{origin} could not verify links from {domain} (its calls to us would fail)");
        match timeout(ct, get_keys(tls, domain)).await {
            Ok(Ok(keys)) => {
                let ids: Vec<&str> = keys.keys.iter().map(|k| k.id.as_str()).collect();
                if ids.is_empty() {
                    report.fail("keys", format!("{url} lists no ed25519 key"), problem);
                } else {
                    report.ok("keys", format!("{url}: {}", ids.join(", ")));
                }
            }
            Ok(Err(e)) => report.fail("keys", format!("{url} at {addr}: {e}"), problem),
            Err(_) => report.fail(
                "keys",
                format!("{url} at {addr}: no answer within {ct:?}"),
                problem,
            ),
        }
    }

    /// Step 4, the signed link upgrade, on a fresh connection to that
    /// address, closed at once with 1000 when it is accepted.
    async fn link(&self, report: &mut Report, addr: SocketAddr) {
        let (origin, domain, ct) = (self.origin, &self.domain, self.ct);
        let key_id = self.links.key_id().to_string();
        match timeout(ct, self.upgrade(addr)).await {
            Ok(Ok(Ok(ws))) => {
                let answered = self.close(ws).await;
                report.ok(
                    "link",
                    format!(
                        "101: {domain} accepted a link from {origin} signed with {key_id}; closed with 1000{}",
                        if answered { "" } else { " (no close answer in time)" }
                    ),
                );
            }
            Ok(Ok(Err(UpgradeError::Refused { status, body }))) => {
                let (detail, problem) = refused(&status, &body, origin, domain, &key_id, self.fed);
                report.fail("link", detail, problem);
            }
            Ok(Ok(Err(UpgradeError::NoExporter))) => report.fail(
                "link",
                format!("{addr}: the TLS session has no exporter to sign"),
                format!("{domain}'s server does not speak TLS 1.3 correctly"),
            ),
            Ok(Ok(Err(UpgradeError::Protocol(e)))) => report.fail(
                "link",
                format!("{addr}: {e}"),
                format!(
                    "{domain}'s server did not answer the link upgrade properly (calls end with {ANSWERED_WRONGLY})"
                ),
            ),
            Ok(Err(e)) => report.fail(
                "link",
                e,
                format!("{domain}'s server could not be reached again for the link"),
            ),
            Err(_) => report.fail(
                "link",
                format!("{addr}: no answer to the link upgrade within {ct:?}"),
                format!("{domain}'s server did not answer the link in time (calls end with {TIMEOUT})"),
            ),
        }
    }

    /// TCP, TLS and the signed upgrade; the outer error is a failure to
    /// reach the address again, the inner one the upgrade's.
    async fn upgrade(
        &self,
        addr: SocketAddr,
    ) -> Result<Result<WebSocketStream<TlsStream<TcpStream>>, UpgradeError>, String> {
        let tcp = tcp_connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let tls = self
            .links
            .dialer()
            .tls_handshake(tcp, &self.name)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok(self.links.dialer().upgrade(tls, &self.domain, None).await)
    }

    /// Closes an accepted link with 1000 and reads until the peer answers
    /// the close (bounded); whether it answered in time.
    async fn close(&self, mut ws: WebSocketStream<TlsStream<TcpStream>>) -> bool {
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "wspd check".into(),
            }))
            .await;
        timeout(self.ct, async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await
        .is_ok()
    }
}

/// The negotiated TLS version and cipher suite, e.g.
/// `TLS 1.3 TLS13_AES_256_GCM_SHA384`.
fn session(tls: &TlsStream<TcpStream>) -> String {
    let (_, conn) = tls.get_ref();
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        v => format!("{v:?}"),
    };
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!(" {:?}", s.suite()))
        .unwrap_or_default();
    format!("{version}{suite}")
}

/// This config's link key, loaded, never created.
fn load_key(path: &Path) -> Result<LinkKey, String> {
    match path.try_exists() {
        Ok(true) => LinkKey::load_or_create(path)
            .map_err(|e| format!("{e} (run the check as the user the server runs as)")),
        Ok(false) => Err(format!(
            "no link key at {}: the server creates it on its first start",
            path.display()
        )),
        Err(e) => Err(format!("link key file {}: {e}", path.display())),
    }
}

/// Where the addresses came from: `[federation.peers]`, SRV records, or
/// the fallback to the domain itself on 443.
async fn route(links: &Links, fed: &Federation, domain: &str) -> String {
    if let Some(hp) = fed.peers.get(domain) {
        return format!(
            "[federation.peers] {domain} = {}:{} (no DNS)",
            hp.host, hp.port
        );
    }
    match links.discovery().srv_records(domain).await {
        Ok(srv) if srv.is_empty() => {
            format!("no _wsp._tcp.{domain} SRV record: fallback {domain}:443")
        }
        Ok(srv) => {
            let records: Vec<String> = srv
                .iter()
                .map(|r| {
                    format!(
                        "{}:{} (priority {}, weight {})",
                        r.target.trim_end_matches('.'),
                        r.port,
                        r.priority,
                        r.weight
                    )
                })
                .collect();
            format!("_wsp._tcp.{domain} -> {}", records.join(", "))
        }
        Err(e) => format!("_wsp._tcp.{domain} (SRV records not listed: {e})"),
    }
}

fn resolver(fed: &Federation) -> String {
    match fed.resolver {
        Some(r) => format!("resolver {r}"),
        None => "system resolver".into(),
    }
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// What a failed link TLS handshake means: the detail line and the problem.
fn tls_failure(e: &std::io::Error, domain: &str, fed: &Federation) -> (String, String) {
    let problem = format!(
        "{domain}'s server has no certificate valid for {domain} (calls end with {BAD_CERTIFICATE})"
    );
    match certificate_error(e) {
        Some(rustls::CertificateError::NotValidForNameContext { presented, .. }) => {
            let names: Vec<&str> = presented.iter().map(|n| tidy_name(n)).collect();
            let valid = if names.is_empty() {
                "no name at all".to_string()
            } else {
                names.join(", ")
            };
            (
                format!(
                    "the certificate is not valid for {domain}: it is valid for {valid} \
                     (a link checks the domain itself, never the SRV target)"
                ),
                problem,
            )
        }
        Some(rustls::CertificateError::UnknownIssuer) => (
            format!(
                "the certificate for {domain} is not issued by a trusted CA (webpki roots{})",
                match &fed.ca {
                    Some(ca) => format!(" and [federation] ca {}", ca.display()),
                    None => String::new(),
                }
            ),
            problem,
        ),
        Some(c) => (format!("bad certificate: {c}"), problem),
        None => {
            let protocol = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some_and(|r| {
                    matches!(
                        r,
                        rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion)
                            | rustls::Error::PeerIncompatible(_)
                    )
                });
            if protocol {
                (
                    format!("{e} (links need TLS 1.3)"),
                    format!("{domain}'s server does not speak TLS 1.3, which links need"),
                )
            } else {
                (
                    e.to_string(),
                    format!(
                        "the TLS handshake with {domain}'s server failed (calls end with {ANSWERED_WRONGLY})"
                    ),
                )
            }
        }
    }
}

/// `DnsName("b.test")` (how rustls shows a presented name) as `b.test`.
fn tidy_name(n: &str) -> &str {
    n.strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"))
        .unwrap_or(n)
}

/// What a refused link upgrade means: the detail line and the problem.
fn refused(
    status: &hyper::StatusCode,
    body: &[u8],
    origin: &str,
    domain: &str,
    key_id: &str,
    fed: &Federation,
) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(500)]).replace(['\r', '\n'], " ");
    let id = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_default();
    let meaning = match id.as_str() {
        "keys-unavailable" => format!(
            "{domain} could not fetch {origin}'s keys: our own server must be running and \
             discoverable (_wsp._tcp.{origin}, a certificate valid for {origin}) for {domain} \
             to verify us"
        ),
        "bad-link-signature" => format!(
            "{domain} fetched {origin}'s keys, but they do not verify this config's key \
             {key_id}: the server publishing {origin}'s keys uses another key file than {} \
             (or {domain} still has older keys cached)",
            fed.key.display()
        ),
        "federation-refused" => {
            format!("{domain}'s policy ([federation] allow/deny) refuses {origin}")
        }
        "wrong-destination" => format!("the server found for {domain} is not {domain}'s"),
        "no-federation" => format!("{domain}'s server has no [federation] section"),
        "link-needs-tls" => format!(
            "{domain}'s server did not get the link on its own TLS 1.3 listener (a proxy in front?)"
        ),
        "bad-link-auth" => format!("{domain}'s server did not understand our link header"),
        _ => format!("{domain}'s server did not accept the link"),
    };
    (format!("{status} {text}: {meaning}"), meaning)
}
