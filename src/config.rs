//! Configuration: TOML text becomes a validated [`Config`] once, at start.
//!
//! Unknown keys and bad values are errors that name the key. Paths in the
//! file are relative to the file's own folder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::address::normalize_domain;

/// The configuration compiled into the binary (the repository's
/// `config.toml`), used when no file is given and none is found.
pub const EMBEDDED: &str = include_str!("../config.toml");

/// The shipped development secret. The server refuses it on any address
/// other than loopback.
pub const DEV_SECRET: &str = "wspd-development-secret-do-not-use-in-production";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The domain this server hosts, lowercase.
    pub domain: String,
    pub listen: SocketAddr,
    pub auth: Auth,
    pub tls: Option<Tls>,
    pub limits: Limits,
    /// Present when `[federation]` is configured.
    pub federation: Option<Federation>,
    /// Present when `[turn]` is configured.
    pub turn: Option<Turn>,
    pub metrics: MetricsAccess,
    /// Present when `[cluster]` is configured: this server is one node of
    /// its domain.
    pub cluster: Option<Cluster>,
    /// Present when `[tracing] otlp_endpoint` is set: spans are exported.
    pub tracing: Option<Tracing>,
}

/// `[tracing]`: spans of calls and links exported over OTLP/HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The collector's traces URL: `otlp_endpoint` with `/v1/traces`.
    pub endpoint: String,
    /// The share of traces started here that are exported, 0 to 1.
    pub sample_ratio: f64,
    /// This server's name among the domain's servers (a resource
    /// attribute): the cluster node's name, else `node`, else the host's.
    pub node: String,
}

/// `[cluster]`: the domain served by several nodes sharing Redis.
#[derive(Clone)]
pub struct Cluster {
    /// `redis://` or `rediss://` URL. May hold a password: never logged.
    pub redis: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// A node that has not renewed its liveness for this long is dead.
    pub node_timeout: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("redis", &"<hidden>")
            .field("node", &self.node)
            .field("node_timeout", &self.node_timeout)
            .finish()
    }
}

/// `[metrics]`: who may read `GET /metrics`.
#[derive(Debug, Clone, Default)]
pub struct MetricsAccess {
    /// When set, `/metrics` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// The shortest `[metrics] token` accepted.
const MIN_METRICS_TOKEN: usize = 16;

/// `[turn]`: TURN servers whose time-limited credentials clients get
/// (coturn's `use-auth-secret` scheme).
#[derive(Debug, Clone)]
pub struct Turn {
    /// `turn:` / `turns:` / `stun:` URLs, as RTCIceServer.urls.
    pub urls: Vec<String>,
    /// The secret shared with the TURN server (`static-auth-secret`).
    pub secret: String,
    /// How long credentials are valid.
    pub ttl: Duration,
}

/// `[federation]`: calls to and from other domains.
#[derive(Debug, Clone)]
pub struct Federation {
    /// The server's ed25519 link key (PKCS#8 PEM), created on first start.
    pub key: PathBuf,
    /// One DNS server to ask, instead of the system's.
    pub resolver: Option<SocketAddr>,
    /// Extra trust roots (PEM) besides the webpki roots.
    pub ca: Option<PathBuf>,
    /// Domains reached at a fixed `host:port`, without DNS.
    pub peers: BTreeMap<String, HostPort>,
    /// When not empty, only these domains federate.
    pub allow: Vec<String>,
    /// These domains never federate.
    pub deny: Vec<String>,
    /// Bound on one discovery (all its DNS queries).
    pub lookup_timeout: Duration,
    /// Bound on one TCP connect plus TLS handshake plus link upgrade.
    pub connect_timeout: Duration,
    /// A link with no calls for this long is closed.
    pub link_idle_timeout: Duration,
    /// How long a failed discovery is remembered.
    pub failure_cache: Duration,
    /// The longest backoff after failed link attempts.
    pub backoff_max: Duration,
    /// Invites a second accepted from one origin domain (on its link).
    pub invites_per_second: u32,
    /// Invites one origin may send at once before the rate applies.
    pub invite_burst: u32,
    /// Calls in flight from one origin domain at most.
    pub calls_per_link: usize,
    /// Addresses found through DNS may be loopback, private, link-local...
    /// (never, by default: DNS is the other side's to choose). Domains of
    /// `peers` are exempt.
    pub allow_private_addresses: bool,
}

/// A `host:port` from `[federation.peers]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// A domain name or an IP address (without brackets).
    pub host: String,
    pub port: u16,
}

impl Federation {
    /// Whether `domain` may federate with this server.
    pub fn allows(&self, domain: &str) -> bool {
        !self.deny.iter().any(|d| d == domain)
            && (self.allow.is_empty() || self.allow.iter().any(|d| d == domain))
    }
}

#[derive(Debug, Clone)]
pub struct Auth {
    pub secret: String,
    pub token_ttl: Duration,
    /// The users file, resolved against the config file's folder.
    pub users: Option<PathBuf>,
}

/// `[tls]`: where the listener's certificate comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Tls {
    /// `cert` and `key`: files, read at start and on SIGHUP.
    Files { cert: PathBuf, key: PathBuf },
    /// `acme = true`: obtained and renewed by the server itself, with the
    /// settings of `[acme]`.
    Acme(Acme),
}

/// Let's Encrypt's production directory, the default `[acme] directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory: untrusted certificates, generous
/// rate limits, for trying a set-up out.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// The most names one certificate may carry (Let's Encrypt's limit).
pub const MAX_ACME_NAMES: usize = 100;

/// `[acme]`: the certificate authority and what to ask it for.
#[derive(Debug, Clone, PartialEq)]
pub struct Acme {
    /// The account's contact, a `mailto:` URL.
    pub contact: String,
    /// The CA's directory URL (`https://`).
    pub directory: String,
    /// Where the account key and the certificates are kept (mode 0700).
    pub cache: PathBuf,
    /// The names of the certificate: the domain first, then the extra
    /// `names`, lowercase, without repeats.
    pub names: Vec<String>,
    /// A PEM file of roots trusted for the directory's own HTTPS instead
    /// of the webpki roots (a test CA).
    pub ca: Option<PathBuf>,
    /// The first wait after a failed attempt; it doubles after each
    /// further failure.
    pub backoff_min: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
}

/// Every bound the server keeps. See docs/operating.md.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub ring_timeout: Duration,
    pub calls_per_socket: usize,
    pub outbox_frames: usize,
    /// Bytes of frames queued for one client socket and not yet written.
    pub outbox_bytes: usize,
    /// The same for one federation link (all its calls together).
    pub link_outbox_bytes: usize,
    /// How long a socket's or link's writes may make no progress.
    pub write_timeout: Duration,
    pub handshake_timeout: Duration,
    pub keepalive_ping: Duration,
    pub keepalive_timeout: Duration,
    pub login_failure_delay: Duration,
    pub shutdown_grace: Duration,
    pub connections_per_ip: u32,
    pub frames_per_second: u32,
    pub frame_burst: u32,
    pub pending_invites_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_connections: 10_000,
            ring_timeout: Duration::from_secs(60),
            calls_per_socket: 32,
            outbox_frames: 256,
            outbox_bytes: 1024 * 1024,
            link_outbox_bytes: 16 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            keepalive_ping: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(45),
            login_failure_delay: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            connections_per_ip: 256,
            frames_per_second: 50,
            frame_burst: 200,
            pending_invites_per_user: 16,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    domain: String,
    listen: String,
    auth: RawAuth,
    tls: Option<RawTls>,
    acme: Option<RawAcme>,
    #[serde(default)]
    limits: RawLimits,
    federation: Option<RawFederation>,
    turn: Option<RawTurn>,
    #[serde(default)]
    metrics: RawMetrics,
    cluster: Option<RawCluster>,
    tracing: Option<RawTracing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTracing {
    otlp_endpoint: Option<String>,
    sample_ratio: Option<f64>,
    node: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    redis: String,
    node: Option<String>,
    node_timeout: Option<ConfDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTurn {
    urls: Vec<String>,
    secret: String,
    ttl: Option<ConfDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFederation {
    key: Option<PathBuf>,
    resolver: Option<String>,
    ca: Option<PathBuf>,
    #[serde(default)]
    peers: BTreeMap<String, String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    lookup_timeout: Option<ConfDuration>,
    connect_timeout: Option<ConfDuration>,
    link_idle_timeout: Option<ConfDuration>,
    failure_cache: Option<ConfDuration>,
    backoff_max: Option<ConfDuration>,
    invites_per_second: Option<u32>,
    invite_burst: Option<u32>,
    calls_per_link: Option<usize>,
    allow_private_addresses: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    secret: String,
    token_ttl: Option<ConfDuration>,
    users: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    acme: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    contact: Option<String>,
    directory: Option<String>,
    cache: Option<PathBuf>,
    #[serde(default)]
    names: Vec<String>,
    ca: Option<PathBuf>,
    backoff_min: Option<ConfDuration>,
    backoff_max: Option<ConfDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_frame_bytes: Option<usize>,
    max_connections: Option<usize>,
    ring_timeout: Option<ConfDuration>,
    calls_per_socket: Option<usize>,
    outbox_frames: Option<usize>,
    outbox_bytes: Option<usize>,
    link_outbox_bytes: Option<usize>,
    write_timeout: Option<ConfDuration>,
    handshake_timeout: Option<ConfDuration>,
    keepalive_ping: Option<ConfDuration>,
    keepalive_timeout: Option<ConfDuration>,
    login_failure_delay: Option<ConfDuration>,
    shutdown_grace: Option<ConfDuration>,
    connections_per_ip: Option<u32>,
    frames_per_second: Option<u32>,
    frame_burst: Option<u32>,
    pending_invites_per_user: Option<usize>,
}

/// A duration written as whole seconds (`60`) or with a unit
/// (`"500ms"`, `"60s"`, `"5m"`, `"12h"`).
#[derive(Debug, Clone, Copy)]
struct ConfDuration(Duration);

impl<'de> Deserialize<'de> for ConfDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Secs(u64),
            Text(String),
        }
        let d = match Either::deserialize(d)? {
            Either::Secs(s) => Duration::from_secs(s),
            Either::Text(t) => parse_duration(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid duration {t:?}: write a number with ms, s, m or h, like \"60s\""
                ))
            })?,
        };
        // Durations are added to now and to the Unix time (ring deadline,
        // token expiry...): a bound keeps those from overflowing.
        if d > MAX_DURATION {
            return Err(serde::de::Error::custom(format!(
                "duration of {}s is too long: at most 10 years (87600h)",
                d.as_secs()
            )));
        }
        Ok(ConfDuration(d))
    }
}

/// The longest duration a config may give: 10 years.
const MAX_DURATION: Duration = Duration::from_secs(87600 * 3600);

fn parse_duration(t: &str) -> Option<Duration> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base)
    }

    /// The embedded default, paths relative to the working directory.
    pub fn embedded() -> Config {
        // The embedded file is tested below; it always parses.
        Config::parse(EMBEDDED, Path::new(".")).expect("the embedded config.toml is valid")
    }

    /// Parses TOML text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let domain = normalize_domain(&raw.domain)
            .ok_or_else(|| invalid("domain", format!("{:?} is not a domain name", raw.domain)))?;
        let listen = listen(&raw.listen)?;
        let auth = auth(raw.auth, listen, base)?;
        let tls = tls(raw.tls, raw.acme, &domain, base)?;
        let limits = limits(raw.limits)?;
        let federation = match raw.federation {
            None => None,
            Some(f) => {
                if tls.is_none() {
                    return Err(invalid(
                        "federation",
                        "federation needs this server's own TLS listener: set [tls] cert and key, \
                         or [tls] acme = true (links are TLS, and link signatures are bound to \
                         the TLS session)",
                    ));
                }
                Some(federation(f, base)?)
            }
        };
        let turn = raw.turn.map(turn).transpose()?;
        let metrics = metrics(raw.metrics)?;
        let cluster = raw.cluster.map(cluster).transpose()?;
        let tracing = match raw.tracing {
            Some(t) => tracing(t, cluster.as_ref())?,
            None => None,
        };
        Ok(Config {
            domain,
            listen,
            auth,
            tls,
            limits,
            federation,
            turn,
            metrics,
            cluster,
            tracing,
        })
    }
}

/// `[tracing]`: `None` without `otlp_endpoint` (the section may hold the
/// other keys, commented in and out around it).
fn tracing(t: RawTracing, cluster: Option<&Cluster>) -> Result<Option<Tracing>, ConfigError> {
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(invalid("tracing.sample_ratio", "must be from 0 to 1"));
    }
    if let Some(n) = &t.node
        && !valid_node_name(n)
    {
        return Err(invalid("tracing.node", "use 1-64 of A-Z a-z 0-9 - _ ."));
    }
    let Some(url) = t.otlp_endpoint else {
        return Ok(None);
    };
    let base = url.trim_end_matches('/');
    let Some(rest) = base.strip_prefix("http://") else {
        return Err(invalid(
            "tracing.otlp_endpoint",
            "must be an http:// URL (OTLP/HTTP, like \"http://127.0.0.1:4318\"): \
             run the collector or its agent beside the server",
        ));
    };
    if rest.is_empty() || base.parse::<http::Uri>().is_err() {
        return Err(invalid("tracing.otlp_endpoint", "is not a valid URL"));
    }
    let endpoint = if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    };
    let node = match (cluster, t.node) {
        (Some(c), _) => c.node.clone(),
        (None, Some(n)) => n,
        (None, None) => host_name(),
    };
    Ok(Some(Tracing {
        endpoint,
        sample_ratio,
        node,
    }))
}

/// `[cluster]`, with its defaults, then checked.
fn cluster(c: RawCluster) -> Result<Cluster, ConfigError> {
    if !(c.redis.starts_with("redis://") || c.redis.starts_with("rediss://")) {
        // Not the URL itself: it may hold a password.
        return Err(invalid(
            "cluster.redis",
            "must be a redis:// or rediss:// URL",
        ));
    }
    let node = match c.node {
        Some(n) => n,
        None => default_node_name(),
    };
    if !valid_node_name(&node) {
        return Err(invalid(
            "cluster.node",
            "must be 1-64 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    let node_timeout = c.node_timeout.map_or(Duration::from_secs(3), |d| d.0);
    if node_timeout < Duration::from_millis(300) || node_timeout > Duration::from_secs(60) {
        return Err(invalid("cluster.node_timeout", "must be 300ms to 60s"));
    }
    Ok(Cluster {
        redis: c.redis,
        node,
        node_timeout,
    })
}

/// A node name: 1-64 of `A-Z a-z 0-9 - _ .`.
pub fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The host's name (its characters a node name allows) and a random
/// suffix: a node that restarts is a new node to the others.
fn default_node_name() -> String {
    format!("{}-{:06x}", host_name(), rand::random::<u32>() & 0xff_ffff)
}

/// The host's name, in the characters a node name allows.
fn host_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(48)
        .collect();
    if host.is_empty() {
        "wspd".to_string()
    } else {
        host
    }
}

fn listen(raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.parse().map_err(|_| {
        invalid(
            "listen",
            format!("{raw:?} is not an address:port such as 127.0.0.1:8080"),
        )
    })
}

/// `[tls]` and `[acme]`: certificate files or ACME, never both.
fn tls(
    t: Option<RawTls>,
    a: Option<RawAcme>,
    domain: &str,
    base: &Path,
) -> Result<Option<Tls>, ConfigError> {
    let Some(t) = t else {
        return match a {
            Some(_) => Err(invalid(
                "acme",
                "[acme] is used only with [tls] acme = true",
            )),
            None => Ok(None),
        };
    };
    match (t.acme, t.cert, t.key) {
        (true, None, None) => {
            let a = a.ok_or_else(|| {
                invalid(
                    "acme",
                    "[tls] acme = true needs an [acme] section with at least contact = \"mailto:...\"",
                )
            })?;
            Ok(Some(Tls::Acme(acme(a, domain, base)?)))
        }
        (true, _, _) => Err(invalid(
            "tls",
            "[tls] cert/key and acme = true exclude each other: either the certificate comes \
             from files, or the server obtains it itself (ACME); remove one",
        )),
        (false, Some(cert), Some(key)) => {
            if a.is_some() {
                return Err(invalid(
                    "acme",
                    "[acme] is used only with [tls] acme = true, not with [tls] cert and key",
                ));
            }
            Ok(Some(Tls::Files {
                cert: base.join(cert),
                key: base.join(key),
            }))
        }
        (false, _, _) => Err(invalid(
            "tls",
            "set both cert and key, or acme = true (with an [acme] section)",
        )),
    }
}

/// `[acme]`, with its defaults, then checked.
fn acme(a: RawAcme, domain: &str, base: &Path) -> Result<Acme, ConfigError> {
    let contact = a.contact.ok_or_else(|| {
        invalid(
            "acme.contact",
            "missing: set contact = \"mailto:you@example.org\"",
        )
    })?;
    let valid_contact = contact.strip_prefix("mailto:").is_some_and(|m| {
        m.split_once('@')
            .is_some_and(|(u, d)| !u.is_empty() && !d.is_empty())
            && m.chars().all(|c| c.is_ascii_graphic())
    });
    if !valid_contact {
        return Err(invalid(
            "acme.contact",
            format!("{contact:?} is not a mailto: URL such as \"mailto:admin@example.org\""),
        ));
    }
    let directory = a.directory.unwrap_or_else(|| LETS_ENCRYPT.to_string());
    let valid_directory = directory.strip_prefix("https://").is_some_and(|rest| {
        !rest.is_empty()
            && directory
                .parse::<http::Uri>()
                .is_ok_and(|u| u.host().is_some())
    });
    if !valid_directory {
        return Err(invalid(
            "acme.directory",
            format!("{directory:?} is not an https:// URL"),
        ));
    }
    let mut names = vec![domain.to_string()];
    for n in domains("acme.names", a.names)? {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    if names.len() > MAX_ACME_NAMES {
        return Err(invalid(
            "acme.names",
            format!("a certificate carries at most {MAX_ACME_NAMES} names, the domain included"),
        ));
    }
    let backoff_min = a.backoff_min.map_or(Duration::from_secs(60), |d| d.0);
    let backoff_max = a.backoff_max.map_or(Duration::from_secs(3600), |d| d.0);
    more_than_zero(&[("acme.backoff_min", backoff_min)])?;
    if backoff_max < backoff_min {
        return Err(invalid(
            "acme.backoff_max",
            "must be at least acme.backoff_min",
        ));
    }
    if backoff_max > Duration::from_secs(24 * 3600) {
        return Err(invalid("acme.backoff_max", "must be at most 24 hours"));
    }
    Ok(Acme {
        contact,
        directory,
        cache: base.join(a.cache.unwrap_or_else(|| PathBuf::from("wspd-acme"))),
        names,
        ca: a.ca.map(|c| base.join(c)),
        backoff_min,
        backoff_max,
    })
}

/// `[auth]`; the development secret is refused unless `listen` is
/// loopback.
fn auth(a: RawAuth, listen: SocketAddr, base: &Path) -> Result<Auth, ConfigError> {
    let secret = a.secret;
    if secret.len() < 32 {
        return Err(invalid("auth.secret", "must be at least 32 bytes"));
    }
    if secret == DEV_SECRET && !listen.ip().is_loopback() {
        return Err(invalid(
            "auth.secret",
            format!(
                "this is the published development secret; refusing to use it on {listen}, \
                 which is not a loopback address. Set a secret of your own."
            ),
        ));
    }
    let token_ttl = a.token_ttl.map_or(Duration::from_secs(12 * 3600), |d| d.0);
    if token_ttl.is_zero() {
        return Err(invalid("auth.token_ttl", "must be more than zero"));
    }
    Ok(Auth {
        secret,
        token_ttl,
        users: a.users.map(|p| base.join(p)),
    })
}

/// `[limits]`: each key given, or its default, then checked.
fn limits(l: RawLimits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let limits = Limits {
        max_frame_bytes: l.max_frame_bytes.unwrap_or(d.max_frame_bytes),
        max_connections: l.max_connections.unwrap_or(d.max_connections),
        ring_timeout: l.ring_timeout.map_or(d.ring_timeout, |x| x.0),
        calls_per_socket: l.calls_per_socket.unwrap_or(d.calls_per_socket),
        outbox_frames: l.outbox_frames.unwrap_or(d.outbox_frames),
        outbox_bytes: l.outbox_bytes.unwrap_or(d.outbox_bytes),
        link_outbox_bytes: l.link_outbox_bytes.unwrap_or(d.link_outbox_bytes),
        write_timeout: l.write_timeout.map_or(d.write_timeout, |x| x.0),
        handshake_timeout: l.handshake_timeout.map_or(d.handshake_timeout, |x| x.0),
        keepalive_ping: l.keepalive_ping.map_or(d.keepalive_ping, |x| x.0),
        keepalive_timeout: l.keepalive_timeout.map_or(d.keepalive_timeout, |x| x.0),
        login_failure_delay: l.login_failure_delay.map_or(d.login_failure_delay, |x| x.0),
        shutdown_grace: l.shutdown_grace.map_or(d.shutdown_grace, |x| x.0),
        connections_per_ip: l.connections_per_ip.unwrap_or(d.connections_per_ip),
        frames_per_second: l.frames_per_second.unwrap_or(d.frames_per_second),
        frame_burst: l.frame_burst.unwrap_or(d.frame_burst),
        pending_invites_per_user: l
            .pending_invites_per_user
            .unwrap_or(d.pending_invites_per_user),
    };
    check_limits(&limits)?;
    Ok(limits)
}

fn check_limits(limits: &Limits) -> Result<(), ConfigError> {
    if !(1024..=16 * 1024 * 1024).contains(&limits.max_frame_bytes) {
        return Err(invalid(
            "limits.max_frame_bytes",
            "must be 1024 to 16777216",
        ));
    }
    at_least_one(&[
        ("limits.max_connections", limits.max_connections),
        ("limits.calls_per_socket", limits.calls_per_socket),
        ("limits.outbox_frames", limits.outbox_frames),
        (
            "limits.connections_per_ip",
            limits.connections_per_ip as usize,
        ),
        (
            "limits.frames_per_second",
            limits.frames_per_second as usize,
        ),
        ("limits.frame_burst", limits.frame_burst as usize),
        (
            "limits.pending_invites_per_user",
            limits.pending_invites_per_user,
        ),
    ])?;
    more_than_zero(&[
        ("limits.ring_timeout", limits.ring_timeout),
        ("limits.handshake_timeout", limits.handshake_timeout),
        ("limits.keepalive_ping", limits.keepalive_ping),
        ("limits.write_timeout", limits.write_timeout),
    ])?;
    // A frame the server relays may be a little larger than one it read
    // (the call id added): room for two keeps one large frame from
    // closing a socket that reads.
    for (key, bytes) in [
        ("limits.outbox_bytes", limits.outbox_bytes),
        ("limits.link_outbox_bytes", limits.link_outbox_bytes),
    ] {
        if bytes < 2 * limits.max_frame_bytes {
            return Err(invalid(
                key,
                "must be at least twice limits.max_frame_bytes",
            ));
        }
    }
    if limits.keepalive_timeout <= limits.keepalive_ping {
        return Err(invalid(
            "limits.keepalive_timeout",
            "must be longer than limits.keepalive_ping",
        ));
    }
    Ok(())
}

/// The first of these counts that is zero, as an error naming its key.
fn at_least_one(counts: &[(&'static str, usize)]) -> Result<(), ConfigError> {
    match counts.iter().find(|(_, v)| *v == 0) {
        Some(&(key, _)) => Err(invalid(key, "must be at least 1")),
        None => Ok(()),
    }
}

/// The first of these durations that is zero, as an error naming its key.
fn more_than_zero(durations: &[(&'static str, Duration)]) -> Result<(), ConfigError> {
    match durations.iter().find(|(_, v)| v.is_zero()) {
        Some(&(key, _)) => Err(invalid(key, "must be more than zero")),
        None => Ok(()),
    }
}

/// `[federation]`, with its defaults, then checked.
fn federation(f: RawFederation, base: &Path) -> Result<Federation, ConfigError> {
    let fed = Federation {
        key: base.join(f.key.unwrap_or_else(|| PathBuf::from("wspd-link.key"))),
        resolver: f.resolver.map(resolver).transpose()?,
        ca: f.ca.map(|c| base.join(c)),
        peers: peers(f.peers)?,
        allow: domains("federation.allow", f.allow)?,
        deny: domains("federation.deny", f.deny)?,
        lookup_timeout: f.lookup_timeout.map_or(Duration::from_secs(5), |d| d.0),
        connect_timeout: f.connect_timeout.map_or(Duration::from_secs(5), |d| d.0),
        link_idle_timeout: f
            .link_idle_timeout
            .map_or(Duration::from_secs(300), |d| d.0),
        failure_cache: f.failure_cache.map_or(Duration::from_secs(5), |d| d.0),
        backoff_max: f.backoff_max.map_or(Duration::from_secs(60), |d| d.0),
        invites_per_second: f.invites_per_second.unwrap_or(100),
        invite_burst: f.invite_burst.unwrap_or(200),
        calls_per_link: f.calls_per_link.unwrap_or(10_000),
        allow_private_addresses: f.allow_private_addresses.unwrap_or(false),
    };
    check_federation(&fed)?;
    Ok(fed)
}

fn resolver(r: String) -> Result<SocketAddr, ConfigError> {
    r.parse::<SocketAddr>().map_err(|_| {
        invalid(
            "federation.resolver",
            format!("{r:?} is not an ip:port such as 127.0.0.1:53"),
        )
    })
}

/// `[federation.peers]`: domain = "host:port", both checked.
fn peers(raw: BTreeMap<String, String>) -> Result<BTreeMap<String, HostPort>, ConfigError> {
    let mut peers = BTreeMap::new();
    for (domain, hp) in raw {
        let d = normalize_domain(&domain).ok_or_else(|| {
            invalid(
                "federation.peers",
                format!("{domain:?} is not a domain name"),
            )
        })?;
        let parsed = parse_host_port(&hp).ok_or_else(|| {
            invalid(
                "federation.peers",
                format!("{domain}: {hp:?} is not host:port"),
            )
        })?;
        peers.insert(d, parsed);
    }
    Ok(peers)
}

/// A list of domain names under `key`, normalised.
fn domains(key: &'static str, list: Vec<String>) -> Result<Vec<String>, ConfigError> {
    list.into_iter()
        .map(|d| {
            normalize_domain(&d).ok_or_else(|| invalid(key, format!("{d:?} is not a domain name")))
        })
        .collect()
}

fn check_federation(fed: &Federation) -> Result<(), ConfigError> {
    at_least_one(&[
        (
            "federation.invites_per_second",
            fed.invites_per_second as usize,
        ),
        ("federation.invite_burst", fed.invite_burst as usize),
        ("federation.calls_per_link", fed.calls_per_link),
    ])?;
    more_than_zero(&[
        ("federation.lookup_timeout", fed.lookup_timeout),
        ("federation.connect_timeout", fed.connect_timeout),
        ("federation.link_idle_timeout", fed.link_idle_timeout),
        ("federation.backoff_max", fed.backoff_max),
    ])?;
    if fed.backoff_max > Duration::from_secs(300) {
        return Err(invalid(
            "federation.backoff_max",
            "must be at most 5 minutes",
        ));
    }
    Ok(())
}

fn turn(t: RawTurn) -> Result<Turn, ConfigError> {
    if t.urls.is_empty() {
        return Err(invalid(
            "turn.urls",
            "list at least one turn:, turns: or stun: URL",
        ));
    }
    if let Some(u) = t
        .urls
        .iter()
        .find(|u| !(u.starts_with("turn:") || u.starts_with("turns:") || u.starts_with("stun:")))
    {
        return Err(invalid(
            "turn.urls",
            format!("{u:?} is not a turn:, turns: or stun: URL"),
        ));
    }
    if t.secret.len() < 16 {
        return Err(invalid("turn.secret", "must be at least 16 bytes"));
    }
    let ttl = t.ttl.map_or(Duration::from_secs(12 * 3600), |d| d.0);
    if ttl.is_zero() {
        return Err(invalid("turn.ttl", "must be more than zero"));
    }
    Ok(Turn {
        urls: t.urls,
        secret: t.secret,
        ttl,
    })
}

fn metrics(m: RawMetrics) -> Result<MetricsAccess, ConfigError> {
    if let Some(t) = &m.token {
        if t.chars().count() < MIN_METRICS_TOKEN {
            return Err(invalid(
                "metrics.token",
                format!("must be at least {MIN_METRICS_TOKEN} characters (a random string)"),
            ));
        }
        // It is compared with what follows `Bearer ` in a header.
        if !t.chars().all(|c| c.is_ascii_graphic()) {
            return Err(invalid(
                "metrics.token",
                "use printable ASCII without spaces (it is sent in a header)",
            ));
        }
    }
    Ok(MetricsAccess { token: m.token })
}

/// `host:port`, `1.2.3.4:port` or `[::1]:port`.
fn parse_host_port(s: &str) -> Option<HostPort> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(HostPort {
            host: sa.ip().to_string(),
            port: sa.port(),
        });
    }
    let (host, port) = s.rsplit_once(':')?;
    let host = normalize_domain(host)?;
    Some(HostPort {
        host,
        port: port.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
domain = "Example.COM"
listen = "127.0.0.1:0"
[auth]
secret = "0123456789abcdef0123456789abcdef"
"#;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("/etc/wspd"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded();
        assert_eq!(c.domain, "localhost");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.limits.max_frame_bytes, 65536);
        assert_eq!(c.limits.ring_timeout, Duration::from_secs(60));
    }

    #[test]
    fn defaults_and_paths() {
        let c = Config::parse(
            &format!("{MIN}users = \"users.toml\"\n[tls]\ncert = \"c.pem\"\nkey = \"/k.pem\"\n"),
            Path::new("/etc/wspd"),
        )
        .unwrap();
        assert_eq!(c.domain, "example.com");
        assert_eq!(c.auth.users.unwrap(), Path::new("/etc/wspd/users.toml"));
        assert_eq!(
            c.tls.unwrap(),
            Tls::Files {
                cert: "/etc/wspd/c.pem".into(),
                key: "/k.pem".into()
            }
        );
        assert_eq!(c.limits.keepalive_timeout, Duration::from_secs(45));
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err(&format!("{MIN}colour = 1\n")).contains("colour"));
        assert!(err(&format!("{MIN}[limits]\nmax_frams_bytes = 1\n")).contains("max_frams_bytes"));
        assert!(
            err(&format!("{MIN}[limits]\nmax_frame_bytes = 10\n"))
                .contains("limits.max_frame_bytes")
        );
        assert!(err(&format!("{MIN}[limits]\nring_timeout = \"soon\"\n")).contains("ring_timeout"));
        assert!(err(&format!("{MIN}[limits]\nmax_connections = -1\n")).contains("max_connections"));
        assert!(
            err(&format!("{MIN}[limits]\nkeepalive_timeout = 5\n")).contains("keepalive_timeout")
        );
        assert!(err(&MIN.replace("Example.COM", "not a domain")).contains("domain"));
        assert!(err(&MIN.replace("127.0.0.1:0", "nowhere")).contains("listen"));
        assert!(
            err(&MIN.replace("0123456789abcdef0123456789abcdef", "short")).contains("auth.secret")
        );
    }

    #[test]
    fn metrics_section() {
        assert_eq!(
            Config::parse(MIN, Path::new(".")).unwrap().metrics.token,
            None
        );
        let c = Config::parse(
            &format!("{MIN}[metrics]\ntoken = \"0123456789abcdef\"\n"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.metrics.token.as_deref(), Some("0123456789abcdef"));
        let e = err(&format!("{MIN}[metrics]\ntoken = \"short\"\n"));
        assert!(e.contains("metrics.token") && e.contains("16"), "{e}");
        let e = err(&format!("{MIN}[metrics]\ntoken = \"0123456789 abcdef\"\n"));
        assert!(e.contains("metrics.token"), "{e}");
        assert!(err(&format!("{MIN}[metrics]\ntokn = \"x\"\n")).contains("tokn"));
    }

    #[test]
    fn tracing_section() {
        let c = Config::parse(
            &format!("{MIN}[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/\"\nsample_ratio = 0.25\nnode = \"eu-1\"\n"),
            Path::new("."),
        )
        .unwrap();
        let t = c.tracing.unwrap();
        assert_eq!(t.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(t.sample_ratio, 0.25);
        assert_eq!(t.node, "eu-1");
        let c = Config::parse(
            &format!("{MIN}[tracing]\notlp_endpoint = \"http://collector:4318/v1/traces\"\n"),
            Path::new("."),
        )
        .unwrap();
        let t = c.tracing.unwrap();
        assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(t.sample_ratio, 1.0);
        assert!(!t.node.is_empty());
        // The section without the endpoint exports nothing.
        let c = Config::parse(
            &format!("{MIN}[tracing]\nsample_ratio = 0.5\n"),
            Path::new("."),
        );
        assert!(c.unwrap().tracing.is_none());
        for (bad, key) in [
            (
                "otlp_endpoint = \"https://c:4318\"",
                "tracing.otlp_endpoint",
            ),
            ("otlp_endpoint = \"c:4318\"", "tracing.otlp_endpoint"),
            ("otlp_endpoint = \"http://\"", "tracing.otlp_endpoint"),
            (
                "otlp_endpoint = \"http://c:4318\"\nsample_ratio = 1.5",
                "tracing.sample_ratio",
            ),
            ("sample_ratio = -0.1", "tracing.sample_ratio"),
            ("node = \"a b\"", "tracing.node"),
        ] {
            assert!(
                err(&format!("{MIN}[tracing]\n{bad}\n")).contains(key),
                "{bad}"
            );
        }
    }

    #[test]
    fn cluster_section() {
        assert!(
            Config::parse(MIN, Path::new("."))
                .unwrap()
                .cluster
                .is_none()
        );
        let c = Config::parse(
            &format!("{MIN}[cluster]\nredis = \"redis://:pw@10.0.0.5:6379/2\"\nnode = \"n-1.a\"\nnode_timeout = \"2s\"\n"),
            Path::new("."),
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(
            (c.node.as_str(), c.node_timeout),
            ("n-1.a", Duration::from_secs(2))
        );
        assert!(
            !format!("{c:?}").contains("pw"),
            "the password is never shown"
        );
        // The default name: the host's and a random suffix, valid.
        let d = Config::parse(
            &format!("{MIN}[cluster]\nredis = \"redis://127.0.0.1\"\n"),
            Path::new("."),
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(d.node_timeout, Duration::from_secs(3));
        assert!(
            d.node.len() > 7 && d.node.rsplit_once('-').is_some(),
            "{}",
            d.node
        );
        let e = err(&format!(
            "{MIN}[cluster]\nredis = \"http://user:secret@x\"\n"
        ));
        assert!(e.contains("cluster.redis") && !e.contains("secret"), "{e}");
        let e = err(&format!(
            "{MIN}[cluster]\nredis = \"redis://x\"\nnode = \"a b\"\n"
        ));
        assert!(e.contains("cluster.node"), "{e}");
        let e = err(&format!(
            "{MIN}[cluster]\nredis = \"redis://x\"\nnode_timeout = \"100ms\"\n"
        ));
        assert!(e.contains("cluster.node_timeout"), "{e}");
        assert!(
            err(&format!(
                "{MIN}[cluster]\nredis = \"redis://x\"\nnodes = 1\n"
            ))
            .contains("nodes")
        );
    }

    #[test]
    fn development_secret_only_on_loopback() {
        let dev = MIN.replace("0123456789abcdef0123456789abcdef", DEV_SECRET);
        assert!(Config::parse(&dev, Path::new(".")).is_ok());
        assert!(Config::parse(&dev.replace("127.0.0.1:0", "[::1]:0"), Path::new(".")).is_ok());
        let e = err(&dev.replace("127.0.0.1:0", "0.0.0.0:8080"));
        assert!(
            e.contains("auth.secret") && e.contains("development"),
            "{e}"
        );
    }

    #[test]
    fn federation_section() {
        let tls = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        let e = err(&format!("{MIN}[federation]\n"));
        assert!(e.contains("federation") && e.contains("[tls]"), "{e}");
        let c = Config::parse(
            &format!(
                "{MIN}{tls}[federation]\nresolver = \"127.0.0.1:5353\"\ndeny = [\"Evil.Test\"]\n\
                 [federation.peers]\n\"B.test\" = \"127.0.0.1:8444\"\n\"c.test\" = \"wsp.c.test:443\"\n"
            ),
            Path::new("/etc/wspd"),
        )
        .unwrap();
        let f = c.federation.unwrap();
        assert_eq!(f.key, Path::new("/etc/wspd/wspd-link.key"));
        assert_eq!(
            f.peers["b.test"],
            HostPort {
                host: "127.0.0.1".into(),
                port: 8444
            }
        );
        assert_eq!(
            f.peers["c.test"],
            HostPort {
                host: "wsp.c.test".into(),
                port: 443
            }
        );
        assert!(!f.allows("evil.test"));
        assert!(f.allows("b.test"));
        let e = err(&format!(
            "{MIN}{tls}[federation]\n[federation.peers]\n\"b.test\" = \"nope\"\n"
        ));
        assert!(e.contains("federation.peers"), "{e}");
        let e = err(&format!(
            "{MIN}{tls}[federation]\nresolver = \"dns.example\"\n"
        ));
        assert!(e.contains("federation.resolver"), "{e}");
    }

    #[test]
    fn acme_section() {
        let acme = "[tls]\nacme = true\n[acme]\ncontact = \"mailto:ops@example.com\"\n";
        let c = Config::parse(
            &format!("{MIN}{acme}names = [\"WWW.example.com\", \"example.com\"]\n[federation]\n"),
            Path::new("/etc/wspd"),
        )
        .unwrap();
        let Some(Tls::Acme(a)) = c.tls else {
            panic!("ACME expected")
        };
        assert_eq!(a.directory, LETS_ENCRYPT);
        assert_eq!(a.cache, Path::new("/etc/wspd/wspd-acme"));
        assert_eq!(a.names, ["example.com", "www.example.com"]);
        assert_eq!(a.ca, None);
        assert_eq!(a.backoff_min, Duration::from_secs(60));
        assert_eq!(a.backoff_max, Duration::from_secs(3600));
        let c = Config::parse(
            &format!("{MIN}{acme}directory = \"{LETS_ENCRYPT_STAGING}\"\nca = \"ca.pem\"\n"),
            Path::new("/etc/wspd"),
        )
        .unwrap();
        let Some(Tls::Acme(a)) = c.tls else {
            panic!("ACME expected")
        };
        assert_eq!(a.directory, LETS_ENCRYPT_STAGING);
        assert_eq!(a.ca.unwrap(), Path::new("/etc/wspd/ca.pem"));
        let e = err(&format!(
            "{MIN}[tls]\nacme = true\ncert = \"c.pem\"\nkey = \"k.pem\"\n"
        ));
        assert!(e.contains("tls") && e.contains("exclude"), "{e}");
        let e = err(&format!("{MIN}[tls]\nacme = true\n"));
        assert!(e.contains("[acme]"), "{e}");
        let e = err(&format!(
            "{MIN}[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[acme]\n"
        ));
        assert!(e.starts_with("acme:"), "{e}");
        let e = err(&format!("{MIN}[tls]\ncert = \"c.pem\"\n"));
        assert!(e.starts_with("tls:"), "{e}");
        let e = err(&format!(
            "{MIN}{}",
            acme.replace("mailto:ops@example.com", "ops@example.com")
        ));
        assert!(e.contains("acme.contact"), "{e}");
        let e = err(&format!("{MIN}{acme}directory = \"http://ca.test/dir\"\n"));
        assert!(e.contains("acme.directory"), "{e}");
        let e = err(&format!("{MIN}{acme}names = [\"not a name\"]\n"));
        assert!(e.contains("acme.names"), "{e}");
        let e = err(&format!("{MIN}{acme}colour = 1\n"));
        assert!(e.contains("colour"), "{e}");
        let e = err(&format!(
            "{MIN}{acme}backoff_min = \"2m\"\nbackoff_max = \"1m\"\n"
        ));
        assert!(e.contains("acme.backoff_max"), "{e}");
    }

    #[test]
    fn turn_section() {
        let c = Config::parse(
            &format!("{MIN}[turn]\nurls = [\"turn:turn.example.org:3478\"]\nsecret = \"0123456789abcdef\"\n"),
            Path::new("."),
        )
        .unwrap();
        let t = c.turn.unwrap();
        assert_eq!(t.urls, ["turn:turn.example.org:3478"]);
        assert_eq!(t.ttl, Duration::from_secs(43200));
        let e = err(&format!(
            "{MIN}[turn]\nurls = [\"http://x\"]\nsecret = \"0123456789abcdef\"\n"
        ));
        assert!(e.contains("turn.urls"), "{e}");
        let e = err(&format!(
            "{MIN}[turn]\nurls = [\"turn:x\"]\nsecret = \"short\"\n"
        ));
        assert!(e.contains("turn.secret"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("12h"), Some(Duration::from_secs(43200)));
        assert_eq!(parse_duration("12"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5d"), None);
    }
}
