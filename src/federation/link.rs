//! Server-to-server links: one authenticated TLS WebSocket per (origin,
//! destination), opened on the first call that needs it, shared by every
//! call between the two domains, closed when idle.
//!
//! A link is a [`Peer`] of the router like a client socket: the router
//! queues the frames of its calls in the link's outbox (frames carry their
//! call id) and the link feeds what arrives from the other server back to
//! the router as frames of that peer. The call state machine does not know
//! the difference; on the caller's server the link is the call's one
//! device, on the callee's server it is the caller.
//!
//! Invites flow only from origin to destination: a link opened by a.test to
//! b.test carries calls from a.test's users to b.test's users, and every
//! frame of those calls both ways. Calls the other way use b.test's own
//! link to a.test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::StatusCode;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, info, info_span, warn};

use crate::address::{Address, CallId};
use crate::call::Outcome;
use crate::config::{Config, Federation, Limits};
use crate::federation::discovery::{Discovery, DiscoveryError};
use crate::federation::keys::{self, LinkAuth, LinkKey, PublishedKeys};
use crate::frame::{self, Body};
use crate::limits::TokenBucket;
use crate::metrics::Metrics;
use crate::router::{Out, Peer, Refused, Router, close_outbox};
use crate::session::{self, Close, Handler, PumpConfig};

/// How many frames may wait for one link (all its calls together).
const LINK_OUTBOX: usize = 8192;
/// How long fetched keys are trusted before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(3600);
/// An unknown key id makes the keys be fetched again, at most this often.
const KEYS_REFETCH: Duration = Duration::from_secs(30);
/// The largest keys document.
const MAX_KEYS_DOC: usize = 16 * 1024;
/// The first backoff after a failed link attempt; it doubles up to
/// `federation.backoff_max`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Why a link could not be had.
#[derive(Debug, Clone)]
struct LinkFailure {
    /// Metrics label: `dns`, `connect`, `tls`, `auth`, `refused`, `timeout`, `protocol`.
    reason: &'static str,
    /// What the calls waiting for the link are told.
    refused: Refused,
    detail: String,
}

impl LinkFailure {
    fn new(
        reason: &'static str,
        code: u16,
        description: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        let outcome = match code {
            403 => Outcome::Forbidden,
            _ => Outcome::Unreachable,
        };
        LinkFailure {
            reason,
            refused: Refused::new(code, description, outcome),
            detail: detail.into(),
        }
    }
}

struct Backoff {
    failures: u32,
    until: Instant,
    refused: Refused,
}

struct CachedKeys {
    keys: Arc<PublishedKeys>,
    fetched: Instant,
}

/// A refusal of an incoming link, before the upgrade.
#[derive(Debug)]
pub struct LinkRefusal {
    pub status: StatusCode,
    pub id: &'static str,
    pub description: String,
}

fn refusal(status: StatusCode, id: &'static str, description: impl Into<String>) -> LinkRefusal {
    LinkRefusal {
        status,
        id,
        description: description.into(),
    }
}

/// All links of this server, and what it needs to open and accept them.
pub struct Links {
    domain: String,
    fed: Federation,
    /// `allow` and `deny`, replaced on reload (SIGHUP).
    policy: std::sync::RwLock<(Vec<String>, Vec<String>)>,
    limits: Limits,
    discovery: Discovery,
    key: LinkKey,
    tls: TlsConnector,
    metrics: Arc<Metrics>,
    outbound: DashMap<String, Peer>,
    backoff: DashMap<String, Backoff>,
    keys: DashMap<String, CachedKeys>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    #[error("[federation] key: {0}")]
    Key(#[from] keys::KeyError),
    #[error("[federation] resolver: {0}")]
    Discovery(#[from] DiscoveryError),
    #[error("[federation] ca {0}: {1}")]
    Ca(String, String),
}

impl Links {
    /// Loads (or creates) the link key, sets up discovery and TLS trust.
    pub fn new(
        config: &Config,
        fed: &Federation,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Links, LinksError> {
        let key = LinkKey::load_or_create(&fed.key)?;
        Links::with_key(config, fed, key, metrics, shutdown, tasks)
    }

    /// [`Links::new`] with the link key given (`wspd check` must not
    /// create the server's key file).
    pub(crate) fn with_key(
        config: &Config,
        fed: &Federation,
        key: LinkKey,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Links, LinksError> {
        let discovery = Discovery::new(fed, metrics.clone())?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = &fed.ca {
            let shown = ca.display().to_string();
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| LinksError::Ca(shown.clone(), e.to_string()))?;
            if certs.is_empty() {
                return Err(LinksError::Ca(shown, "no certificate in it".into()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| LinksError::Ca(shown.clone(), e.to_string()))?;
            }
        }
        // TLS 1.3 only: the link signature is bound to the TLS 1.3 exporter.
        let mut tls =
            rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
                .with_root_certificates(roots)
                .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Links {
            domain: config.domain.clone(),
            fed: fed.clone(),
            policy: std::sync::RwLock::new((fed.allow.clone(), fed.deny.clone())),
            limits: config.limits.clone(),
            discovery,
            key,
            tls: TlsConnector::from(Arc::new(tls)),
            metrics,
            outbound: DashMap::new(),
            backoff: DashMap::new(),
            keys: DashMap::new(),
            shutdown,
            tasks,
        })
    }

    /// Whether policy lets `domain` federate (the lists as last reloaded).
    pub fn allows(&self, domain: &str) -> bool {
        let p = self.policy.read().unwrap_or_else(|e| e.into_inner());
        let (allow, deny) = &*p;
        !deny.iter().any(|d| d == domain) && (allow.is_empty() || allow.iter().any(|d| d == domain))
    }

    /// Replaces the allow and deny lists (SIGHUP). Links already up stay;
    /// the new lists apply to every new call and link.
    pub fn set_policy(&self, allow: Vec<String>, deny: Vec<String>) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = (allow, deny);
    }

    /// The keys document served at `/.well-known/wsp/keys`.
    pub fn keys_document(&self) -> String {
        self.key.document(&self.domain)
    }

    /// The discovery this server uses (for `wspd check`).
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// The id of the key this server signs its links with.
    pub(crate) fn key_id(&self) -> &str {
        self.key.id()
    }

    /// The link to `domain` for a new call: the one up or being opened, or a
    /// new one. Refused at once by policy or while backing off.
    pub fn link_for(self: &Arc<Self>, router: &Arc<Router>, domain: &str) -> Result<Peer, Refused> {
        if !self.allows(domain) {
            return Err(Refused::new(
                403,
                "Federation with this domain is refused by policy",
                Outcome::Forbidden,
            ));
        }
        if let Some(p) = self.outbound.get(domain) {
            return Ok(p.clone());
        }
        if let Some(b) = self.backoff.get(domain)
            && Instant::now() < b.until
        {
            return Err(b.refused);
        }
        let entry = self.outbound.entry(domain.to_string());
        let peer = match entry {
            dashmap::mapref::entry::Entry::Occupied(e) => return Ok(e.get().clone()),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                let (tx, rx) = mpsc::channel(LINK_OUTBOX);
                let kill = self.shutdown.child_token();
                let peer = Peer::new(router.next_peer_id(), tx, kill.clone());
                v.insert(peer.clone());
                let links = self.clone();
                let router = router.clone();
                let domain = domain.to_string();
                let span =
                    info_span!(parent: None, "link", dir = "out", peer = %domain, id = peer.id);
                let p = peer.clone();
                self.tasks.spawn(async move {
                    links.run_outbound(router, domain, p, rx, kill, span).await
                });
                peer
            }
        };
        Ok(peer)
    }

    async fn run_outbound(
        self: Arc<Self>,
        router: Arc<Router>,
        domain: String,
        peer: Peer,
        mut rx: mpsc::Receiver<Out>,
        kill: CancellationToken,
        span: Span,
    ) {
        let id = peer.id;
        // Only the setup runs in the link's span: once up, the link's
        // events name it (see session::Handler::span).
        let connected = async {
            tokio::select! {
                r = self.connect(&domain) => r,
                _ = self.shutdown.cancelled() => Err(LinkFailure::new(
                    "shutdown", 503, "This server is shutting down", "shutdown")),
            }
        }
        .instrument(span.clone())
        .await;
        let mut ws = match connected {
            Ok(ws) => ws,
            Err(f) => {
                let _in_span = span.enter();
                warn!(
                    reason = f.reason,
                    code = f.refused.code,
                    "link to {domain} failed: {}",
                    f.detail
                );
                self.metrics.link_attempt(f.reason);
                self.metrics.link_failure(f.reason);
                self.note_failure(&domain, f.refused);
                self.outbound.remove_if(&domain, |_, p| p.id == id);
                // Every call that was waiting for this link is refused.
                for call in close_outbox(&mut rx, Vec::new()) {
                    router.remote_bye(id, &call, f.refused.code, f.refused.description);
                }
                return;
            }
        };
        self.metrics.link_attempt("ok");
        self.backoff.remove(&domain);
        self.metrics.link_up("out", 1);
        info!(parent: &span, "link up");
        let mut h = LinkHandler {
            dir: Direction::Out,
            remote: domain.clone(),
            own: self.domain.clone(),
            peer,
            router: router.clone(),
            calls: Vec::new(),
            idle_since: Some(Instant::now()),
            idle_after: self.fed.link_idle_timeout,
            invites: self.invite_bucket(),
            max_calls: self.fed.calls_per_link,
            span,
        };
        let close = session::pump(
            &mut ws,
            &mut rx,
            &kill,
            &self.shutdown,
            &self.pump_config(),
            &mut h,
        )
        .await;
        self.outbound.remove_if(&domain, |_, p| p.id == id);
        let calls = close_outbox(&mut rx, std::mem::take(&mut h.calls));
        session::close_socket(&mut ws, close, &h.span).await;
        self.end_link(&router, id, calls, "out", &h.span);
    }

    fn end_link(
        &self,
        router: &Router,
        id: u64,
        calls: Vec<CallId>,
        dir: &'static str,
        span: &Span,
    ) {
        let _in_span = span.enter();
        if !calls.is_empty() {
            warn!(
                calls = calls.len(),
                "link down: ending its untransferred calls with 410"
            );
            self.metrics.link_failure("broken");
        } else {
            info!("link closed");
        }
        for call in calls {
            router.gone(id, &call);
        }
        self.metrics.link_up(dir, -1);
    }

    fn invite_bucket(&self) -> TokenBucket {
        TokenBucket::new(
            self.fed.invites_per_second,
            self.fed.invite_burst,
            Instant::now(),
        )
    }

    fn pump_config(&self) -> PumpConfig {
        PumpConfig::from_limits(&self.limits)
    }

    fn note_failure(&self, domain: &str, refused: Refused) {
        let mut b = self.backoff.entry(domain.to_string()).or_insert(Backoff {
            failures: 0,
            until: Instant::now(),
            refused,
        });
        b.failures = b.failures.saturating_add(1);
        let delay = FIRST_BACKOFF
            .saturating_mul(1u32 << (b.failures - 1).min(16))
            .min(self.fed.backoff_max);
        b.until = Instant::now() + delay;
        b.refused = refused;
        debug!(failures = b.failures, ?delay, "backing off");
    }

    /// Discovers `domain`, connects, checks its certificate for `domain`,
    /// signs and upgrades. Each address is tried in turn.
    async fn connect(
        &self,
        domain: &str,
    ) -> Result<WebSocketStream<TlsStream<TcpStream>>, LinkFailure> {
        let addrs = self.discovery.resolve(domain).await.map_err(|e| {
            let (desc, outcome) = match e.bye_code() {
                604 => (
                    "The callee's domain has no WSP service",
                    Outcome::Unreachable,
                ),
                _ => (
                    "The callee's domain could not be resolved in time",
                    Outcome::Unreachable,
                ),
            };
            LinkFailure {
                reason: "dns",
                refused: Refused::new(e.bye_code(), desc, outcome),
                detail: e.to_string(),
            }
        })?;
        let name = ServerName::try_from(domain.to_string()).map_err(|_| {
            LinkFailure::new(
                "dns",
                604,
                "The callee's domain is not a valid name",
                domain,
            )
        })?;
        let mut last = LinkFailure::new(
            "dns",
            604,
            "The callee's domain has no WSP service",
            "no address",
        );
        for addr in addrs {
            let attempt =
                tokio::time::timeout(self.fed.connect_timeout, self.try_addr(addr, &name, domain))
                    .await;
            match attempt {
                Ok(Ok(ws)) => return Ok(ws),
                Ok(Err(f)) => {
                    debug!(%addr, reason = f.reason, "link attempt failed: {}", f.detail);
                    // The server answered and refused us: another address of
                    // the same domain would say the same.
                    if matches!(f.reason, "auth" | "refused") {
                        return Err(f);
                    }
                    last = f;
                }
                Err(_) => {
                    last = LinkFailure::new(
                        "timeout",
                        504,
                        "The callee's server could not be reached in time",
                        format!("{addr}: no answer within {:?}", self.fed.connect_timeout),
                    );
                }
            }
        }
        Err(last)
    }

    async fn try_addr(
        &self,
        addr: SocketAddr,
        name: &ServerName<'static>,
        domain: &str,
    ) -> Result<WebSocketStream<TlsStream<TcpStream>>, LinkFailure> {
        let tls = self.tls_connect(addr, name).await?;
        self.upgrade(tls, domain).await.map_err(|e| match e {
            UpgradeError::NoExporter => LinkFailure::new(
                "tls",
                502,
                "The callee's server answered wrongly",
                "no TLS exporter",
            ),
            UpgradeError::Refused { status, body } => {
                let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                if status == StatusCode::FORBIDDEN {
                    LinkFailure::new(
                        "refused",
                        403,
                        "The callee's server refuses federation with this domain",
                        format!("{status} {body}"),
                    )
                } else {
                    LinkFailure::new(
                        "auth",
                        502,
                        "The callee's server did not accept this server's link",
                        format!("{status} {body}"),
                    )
                }
            }
            UpgradeError::Protocol(detail) => LinkFailure::new(
                "protocol",
                502,
                "The callee's server answered wrongly",
                detail,
            ),
        })
    }

    /// The link upgrade to `domain` on a TLS connection to it, signed with
    /// this server's key and bound to that TLS session.
    pub(crate) async fn upgrade(
        &self,
        tls: TlsStream<TcpStream>,
        domain: &str,
    ) -> Result<WebSocketStream<TlsStream<TcpStream>>, UpgradeError> {
        let exporter = keys::client_exporter(tls.get_ref().1).ok_or(UpgradeError::NoExporter)?;
        let auth = LinkAuth {
            origin: self.domain.clone(),
            destination: domain.to_string(),
            key_id: self.key.id().to_string(),
            sig: self.key.sign(&self.domain, domain, &exporter),
        };
        let mut req = format!("wss://{domain}/wsp")
            .into_client_request()
            .map_err(|e| UpgradeError::Protocol(e.to_string()))?;
        let h = req.headers_mut();
        h.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(crate::server::SUBPROTOCOL),
        );
        if let Ok(v) = HeaderValue::from_str(&auth.to_header()) {
            h.insert("Authorization", v);
        }
        match tokio_tungstenite::client_async_with_config(
            req,
            tls,
            Some(session::ws_config(self.limits.max_frame_bytes)),
        )
        .await
        {
            Ok((ws, _)) => Ok(ws),
            Err(WsError::Http(resp)) => Err(UpgradeError::Refused {
                status: resp.status(),
                body: resp.body().clone().unwrap_or_default(),
            }),
            Err(e) => Err(UpgradeError::Protocol(e.to_string())),
        }
    }

    /// TCP then TLS to `addr`, the certificate checked for `name` (the
    /// domain itself, never the SRV target).
    async fn tls_connect(
        &self,
        addr: SocketAddr,
        name: &ServerName<'static>,
    ) -> Result<TlsStream<TcpStream>, LinkFailure> {
        let tcp = tcp_connect(addr).await.map_err(|e| {
            LinkFailure::new(
                "connect",
                504,
                "The callee's server could not be reached",
                format!("{addr}: {e}"),
            )
        })?;
        self.tls_handshake(tcp, name).await.map_err(|e| {
            if certificate_error(&e).is_some() {
                LinkFailure::new(
                    "tls",
                    502,
                    "The callee's server has no valid certificate for its domain",
                    format!("{addr}: {e}"),
                )
            } else {
                LinkFailure::new(
                    "tls",
                    502,
                    "The callee's server answered wrongly",
                    format!("{addr}: {e}"),
                )
            }
        })
    }

    /// The TLS handshake of a link (TLS 1.3, SNI `name`), the certificate
    /// checked for `name` against the webpki roots and `[federation] ca`.
    pub(crate) async fn tls_handshake(
        &self,
        tcp: TcpStream,
        name: &ServerName<'static>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        self.tls.connect(name.clone(), tcp).await
    }

    /// Checks an incoming link's `Authorization: WSP-Link ...` header,
    /// bound to `exporter` (this TLS session's). Returns the origin domain.
    pub async fn authenticate(
        &self,
        header: &str,
        exporter: Option<[u8; 32]>,
    ) -> Result<String, LinkRefusal> {
        let refuse = |reason: &'static str, r: LinkRefusal| {
            self.metrics.link_failure(reason);
            info!(reason, "link refused: {}", r.description);
            r
        };
        let Some(exporter) = exporter else {
            return Err(refuse(
                "tls",
                refusal(
                    StatusCode::FORBIDDEN,
                    "link-needs-tls",
                    "links are accepted only over TLS 1.3 on this server's own TLS listener",
                ),
            ));
        };
        let auth = LinkAuth::parse(header).map_err(|e| {
            refuse(
                "auth",
                refusal(StatusCode::UNAUTHORIZED, "bad-link-auth", e.to_string()),
            )
        })?;
        if auth.destination != self.domain {
            return Err(refuse(
                "misrouted",
                refusal(
                    StatusCode::FORBIDDEN,
                    "wrong-destination",
                    format!("this server is {}, not {}", self.domain, auth.destination),
                ),
            ));
        }
        if auth.origin == self.domain || !self.allows(&auth.origin) {
            return Err(refuse(
                "policy",
                refusal(
                    StatusCode::FORBIDDEN,
                    "federation-refused",
                    format!("federation with {} is refused by policy", auth.origin),
                ),
            ));
        }
        let keys = self.keys_for(&auth.origin, false).await.map_err(|e| {
            refuse(
                "keys",
                refusal(StatusCode::UNAUTHORIZED, "keys-unavailable", e),
            )
        })?;
        if let Err(first) = keys.verify(&auth, &exporter) {
            // A key we have not seen may be new: fetch again, rarely.
            let again = match self.keys_for(&auth.origin, true).await {
                Ok(fresh) if !Arc::ptr_eq(&fresh, &keys) => fresh.verify(&auth, &exporter),
                _ => Err(first),
            };
            again.map_err(|e| {
                refuse(
                    "auth",
                    refusal(
                        StatusCode::UNAUTHORIZED,
                        "bad-link-signature",
                        e.to_string(),
                    ),
                )
            })?;
        }
        Ok(auth.origin)
    }

    /// The published keys of `origin`, from cache or fetched from its own
    /// discovered server over TLS verified for `origin`.
    async fn keys_for(&self, origin: &str, refresh: bool) -> Result<Arc<PublishedKeys>, String> {
        if let Some(c) = self.keys.get(origin) {
            let age = c.fetched.elapsed();
            if age < KEYS_TTL && (!refresh || age < KEYS_REFETCH) {
                return Ok(c.keys.clone());
            }
        }
        let keys = Arc::new(self.fetch_keys(origin).await?);
        if self.keys.len() >= 10_000 {
            self.keys.retain(|_, c| c.fetched.elapsed() < KEYS_TTL);
        }
        self.keys.insert(
            origin.to_string(),
            CachedKeys {
                keys: keys.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(keys)
    }

    async fn fetch_keys(&self, origin: &str) -> Result<PublishedKeys, String> {
        let addrs = self
            .discovery
            .resolve(origin)
            .await
            .map_err(|e| format!("cannot discover {origin}: {e}"))?;
        let name = ServerName::try_from(origin.to_string())
            .map_err(|_| format!("{origin} is not a valid name"))?;
        let mut last = format!("{origin} has no address");
        for addr in addrs {
            let fetch = async {
                let tls = self.tls_connect(addr, &name).await.map_err(|f| f.detail)?;
                get_keys(tls, origin).await
            };
            match tokio::time::timeout(self.fed.connect_timeout, fetch).await {
                Ok(Ok(k)) => return Ok(k),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no answer within {:?}", self.fed.connect_timeout),
            }
        }
        Err(last)
    }

    /// Runs an accepted link from `origin` to its end.
    pub async fn run_inbound<S>(
        self: Arc<Self>,
        router: Arc<Router>,
        mut ws: WebSocketStream<S>,
        origin: String,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (tx, mut rx) = mpsc::channel(LINK_OUTBOX);
        let kill = self.shutdown.child_token();
        let peer = Peer::new(router.next_peer_id(), tx, kill.clone());
        let id = peer.id;
        let span = info_span!(parent: None, "link", dir = "in", peer = %origin, id);
        self.metrics.link_up("in", 1);
        info!(parent: &span, "link accepted");
        {
            let mut h = LinkHandler {
                dir: Direction::In,
                remote: origin,
                own: self.domain.clone(),
                peer,
                router: router.clone(),
                calls: Vec::new(),
                idle_since: None,
                idle_after: self.fed.link_idle_timeout,
                invites: self.invite_bucket(),
                max_calls: self.fed.calls_per_link,
                span,
            };
            let close = session::pump(
                &mut ws,
                &mut rx,
                &kill,
                &self.shutdown,
                &self.pump_config(),
                &mut h,
            )
            .await;
            let calls = close_outbox(&mut rx, std::mem::take(&mut h.calls));
            session::close_socket(&mut ws, close, &h.span).await;
            self.end_link(&router, id, calls, "in", &h.span);
        }
    }
}

/// Why a signed link upgrade was not accepted.
#[derive(Debug)]
pub(crate) enum UpgradeError {
    /// The TLS session has no exporter to bind the signature to.
    NoExporter,
    /// The server answered the upgrade with this status (and body).
    Refused { status: StatusCode, body: Vec<u8> },
    /// A bad request, an I/O error, an answer that is not HTTP.
    Protocol(String),
}

/// A TCP connection to `addr` with Nagle off.
pub(crate) async fn tcp_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// What was wrong with the certificate, when a TLS handshake failed on it.
pub(crate) fn certificate_error(e: &std::io::Error) -> Option<&rustls::CertificateError> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(c) => Some(c),
        _ => None,
    }
}

/// `GET /.well-known/wsp/keys` on a TLS connection to `origin`'s server:
/// its published keys (at most [`MAX_KEYS_DOC`] bytes, for `origin`).
pub(crate) async fn get_keys(
    tls: TlsStream<TcpStream>,
    origin: &str,
) -> Result<PublishedKeys, String> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get("/.well-known/wsp/keys")
        .header(hyper::header::HOST, origin)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        conn.abort();
        return Err(format!(
            "GET /.well-known/wsp/keys answered {}",
            resp.status()
        ));
    }
    let body = Limited::new(resp.into_body(), MAX_KEYS_DOC)
        .collect()
        .await
        .map_err(|e| format!("keys document: {e}"))?
        .to_bytes();
    conn.abort();
    PublishedKeys::parse(&body, origin).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Opened by this server: invites go out.
    Out,
    /// Accepted from the origin: invites come in.
    In,
}

/// What a link does with the frames it reads.
struct LinkHandler {
    dir: Direction,
    /// The other server's domain.
    remote: String,
    own: String,
    peer: Peer,
    router: Arc<Router>,
    calls: Vec<CallId>,
    /// Outbound links: when the last call left (idle close).
    idle_since: Option<Instant>,
    idle_after: Duration,
    /// Inbound links: the origin's invites per second.
    invites: TokenBucket,
    /// Inbound links: calls in flight from the origin, at most.
    max_calls: usize,
    span: Span,
}

impl LinkHandler {
    fn refuse(&self, code: u16, description: &str, call: Option<&CallId>) {
        self.router.bye(&self.peer, code, description, call);
    }

    fn invite(&mut self, id: &CallId, caller_uri: &str, callee_uri: &str, raw: &str) {
        let metrics = self.router.metrics();
        if self.dir == Direction::Out {
            metrics.link_failure("misrouted");
            return self.refuse(
                400,
                "Invites are not accepted in this direction of the link",
                Some(id),
            );
        }
        // One domain's flood is bounded on its own link: other domains'
        // links and local calls are not slowed by it.
        if !self.invites.take(Instant::now()) {
            metrics.limit_hit("invites_per_second");
            return self.refuse(
                503,
                "Too many invites from this domain: slow down",
                Some(id),
            );
        }
        if self.calls.len() >= self.max_calls {
            metrics.limit_hit("calls_per_link");
            return self.refuse(503, "Too many calls in flight from this domain", Some(id));
        }
        let (Ok(caller), Ok(callee)) = (Address::parse(caller_uri), Address::parse(callee_uri))
        else {
            return self.refuse(400, "Bad address in invite", Some(id));
        };
        if caller.domain() != self.remote || callee.domain() != self.own {
            metrics.link_failure("misrouted");
            warn!(parent: &self.span, call = %id, %caller, %callee, "refused invite: not from the link's origin to this domain");
            metrics.call_ended(Outcome::Forbidden);
            metrics.remote_call_ended(&self.remote, Outcome::Forbidden);
            return self.refuse(
                403,
                "An invite on a link must be from the link's origin to the receiving domain",
                Some(id),
            );
        }
        match self.router.invite(&self.peer, &caller, &callee, id, raw) {
            Ok(()) => self.calls.push(id.clone()),
            Err(r) => {
                metrics.call_ended(r.outcome);
                metrics.remote_call_ended(&self.remote, r.outcome);
                self.refuse(r.code, r.description, Some(id));
            }
        }
    }
}

impl Handler for LinkHandler {
    fn on_text(&mut self, text: &str) -> Result<(), Close> {
        let f = frame::decode(text).map_err(|e| Close::new(e.close_code(), e.to_string()))?;
        let Some(id) = f.call.clone() else {
            self.refuse(400, "Frames on a link must carry options.call", None);
            return Ok(());
        };
        if let Body::Invite(inv) = &f.body {
            self.invite(&id, &inv.caller_uri, &inv.callee_uri, inv.raw);
        } else {
            self.router
                .frame(&self.peer, &id, f.keyword, f.body.raw(), f.body.bye_code());
        }
        Ok(())
    }

    fn on_attach(&mut self, id: CallId) {
        self.calls.push(id);
        self.idle_since = None;
    }

    fn on_detach(&mut self, id: CallId) {
        self.calls.retain(|c| *c != id);
        if self.calls.is_empty() && self.dir == Direction::Out {
            self.idle_since = Some(Instant::now());
        }
    }

    fn metrics(&self) -> &Metrics {
        self.router.metrics()
    }

    fn on_tick(&mut self, now: Instant) -> Option<Close> {
        match self.wake_at() {
            Some(t) if now >= t => Some(Close::new(1000, "idle")),
            _ => None,
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        self.idle_since.map(|t| t + self.idle_after)
    }

    fn span(&self) -> &Span {
        &self.span
    }
}
