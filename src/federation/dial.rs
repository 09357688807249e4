//! Reaching another domain's server: discovery, TCP, TLS 1.3 with the
//! certificate checked for the domain itself, and the signed link upgrade.
//! Opening a link ([`Dialer::connect`]), fetching a domain's keys
//! (`auth.rs`) and `wspd check` all go through here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::StatusCode;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tracing::debug;

use crate::federation::discovery::{Discovery, DiscoveryError};
use crate::federation::keys::{self, LinkAuth, LinkKey, PublishedKeys};
use crate::frame::{ByeCode, SUBPROTOCOL, ServerBye};
use crate::logging::Escaped;
use crate::socket;
use crate::trace::{Steps, TraceParent};

/// The largest keys document.
const MAX_KEYS_DOC: usize = 16 * 1024;

/// A link's WebSocket to another server.
pub type LinkStream = WebSocketStream<TlsStream<TcpStream>>;

/// Why a link could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Discovery(#[from] DiscoveryError),
    #[error("{0} is not a valid name")]
    BadName(String),
    #[error("no address")]
    NoAddress,
    #[error("{addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr}: no answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("no TLS exporter")]
    NoExporter,
    /// The server answered the upgrade with 403: it refuses this domain.
    #[error("{status} {body}")]
    Refused { status: StatusCode, body: String },
    /// The server answered the upgrade with another status.
    #[error("{status} {body}")]
    NotAccepted { status: StatusCode, body: String },
    /// A bad request, an I/O error, an answer that is not HTTP.
    #[error("{0}")]
    Protocol(String),
    #[error("shutdown")]
    Shutdown,
}

impl DialError {
    /// The label of `wspd_link_attempts_total{result}` and
    /// `wspd_link_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            DialError::Discovery(_) | DialError::BadName(_) | DialError::NoAddress => "dns",
            DialError::Connect { .. } => "connect",
            DialError::Tls { .. } | DialError::NoExporter => "tls",
            DialError::Timeout { .. } => "timeout",
            DialError::Refused { .. } => "refused",
            DialError::NotAccepted { .. } => "auth",
            DialError::Protocol(_) => "protocol",
            DialError::Shutdown => "shutdown",
        }
    }

    /// What the calls waiting for the link are told.
    pub fn bye(&self) -> ServerBye {
        match self {
            DialError::Discovery(e) if e.bye_code() == ByeCode::NO_SERVICE => {
                ServerBye::DOMAIN_NO_SERVICE
            }
            DialError::Discovery(_) => ServerBye::DOMAIN_DNS_TIMEOUT,
            DialError::BadName(_) => ServerBye::DOMAIN_INVALID,
            DialError::NoAddress => ServerBye::DOMAIN_NO_SERVICE,
            DialError::Connect { .. } => ServerBye::SERVER_UNREACHABLE,
            DialError::Tls { source, .. } if certificate_error(source).is_some() => {
                ServerBye::SERVER_BAD_CERTIFICATE
            }
            DialError::Tls { .. } | DialError::NoExporter | DialError::Protocol(_) => {
                ServerBye::SERVER_ANSWERED_WRONGLY
            }
            DialError::Timeout { .. } => ServerBye::SERVER_TIMEOUT,
            DialError::Refused { .. } => ServerBye::SERVER_REFUSES,
            DialError::NotAccepted { .. } => ServerBye::SERVER_REFUSED_LINK,
            DialError::Shutdown => ServerBye::LINK_SHUTDOWN,
        }
    }

    /// The server answered and refused us: another address of the same
    /// domain would say the same.
    fn is_final(&self) -> bool {
        matches!(
            self,
            DialError::Refused { .. } | DialError::NotAccepted { .. }
        )
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

impl From<UpgradeError> for DialError {
    fn from(e: UpgradeError) -> DialError {
        match e {
            UpgradeError::NoExporter => DialError::NoExporter,
            UpgradeError::Refused { status, body } => {
                let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                if status == StatusCode::FORBIDDEN {
                    DialError::Refused { status, body }
                } else {
                    DialError::NotAccepted { status, body }
                }
            }
            UpgradeError::Protocol(detail) => DialError::Protocol(detail),
        }
    }
}

/// Why the TLS trust for links could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("[federation] ca {path}: {reason}")]
pub struct CaError {
    path: String,
    reason: String,
}

/// Opens connections to other domains' servers, as this domain.
pub struct Dialer {
    domain: String,
    key: LinkKey,
    discovery: Discovery,
    tls: TlsConnector,
    connect_timeout: Duration,
    max_frame_bytes: usize,
}

impl Dialer {
    /// Trusts the webpki roots plus `ca` (a PEM file), for TLS 1.3 only:
    /// the link signature is bound to the TLS 1.3 exporter.
    pub fn new(
        domain: String,
        key: LinkKey,
        discovery: Discovery,
        ca: Option<&std::path::Path>,
        connect_timeout: Duration,
        max_frame_bytes: usize,
    ) -> Result<Dialer, CaError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = ca {
            add_ca(&mut roots, ca)?;
        }
        let mut tls =
            rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
                .with_root_certificates(roots)
                .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Dialer {
            domain,
            key,
            discovery,
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
            max_frame_bytes,
        })
    }

    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    pub fn key(&self) -> &LinkKey {
        &self.key
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Discovers `domain`, connects, checks its certificate for `domain`,
    /// signs and upgrades. Each address is tried in turn, each within
    /// `federation.connect_timeout`. Each step is timed in `steps`; the
    /// upgrade carries `traceparent` (the link's opening as the parent of
    /// the other server's acceptance).
    pub async fn connect(
        &self,
        domain: &str,
        traceparent: Option<TraceParent>,
        steps: &mut Steps,
    ) -> Result<LinkStream, DialError> {
        let t = Steps::start("discovery");
        let addrs = match self.discovery.resolve(domain).await {
            Ok(a) => {
                steps.push(t, None);
                a
            }
            Err(e) => {
                let e = DialError::from(e);
                steps.push(t, Some(e.reason()));
                return Err(e);
            }
        };
        let name = server_name(domain)?;
        let mut last = DialError::NoAddress;
        for addr in addrs {
            let mut attempt = Steps::start("attempt");
            attempt.addr = Some(addr);
            let mut tried = Steps::default();
            let r = tokio::time::timeout(
                self.connect_timeout,
                self.attempt(addr, &name, domain, traceparent, &mut tried),
            )
            .await;
            steps.0.append(&mut tried.0);
            match r {
                Ok(Ok(ws)) => return Ok(ws),
                Ok(Err(e)) => {
                    debug!(%addr, reason = e.reason(), "link attempt failed: {}", Escaped(&e));
                    if e.is_final() {
                        return Err(e);
                    }
                    last = e;
                }
                Err(_) => {
                    // The step that was under way when time ran out.
                    steps.push(attempt, Some("timeout"));
                    last = DialError::Timeout {
                        addr,
                        after: self.connect_timeout,
                    }
                }
            }
        }
        Err(last)
    }

    /// TCP, TLS and the signed upgrade to one address, each step timed.
    async fn attempt(
        &self,
        addr: SocketAddr,
        name: &ServerName<'static>,
        domain: &str,
        traceparent: Option<TraceParent>,
        steps: &mut Steps,
    ) -> Result<LinkStream, DialError> {
        let mut t = Steps::start("connect");
        t.addr = Some(addr);
        let tcp = match tcp_connect(addr).await {
            Ok(tcp) => {
                steps.push(t, None);
                tcp
            }
            Err(source) => {
                let e = DialError::Connect { addr, source };
                steps.push(t, Some(e.reason()));
                return Err(e);
            }
        };
        let t = Steps::start("tls");
        let tls = match self.tls_handshake(tcp, name).await {
            Ok(tls) => {
                steps.push(t, None);
                tls
            }
            Err(source) => {
                let e = DialError::Tls { addr, source };
                steps.push(t, Some(e.reason()));
                return Err(e);
            }
        };
        let t = Steps::start("upgrade");
        match self.upgrade(tls, domain, traceparent).await {
            Ok(ws) => {
                steps.push(t, None);
                Ok(ws)
            }
            Err(e) => {
                let e = DialError::from(e);
                steps.push(t, Some(e.reason()));
                Err(e)
            }
        }
    }

    /// TCP then TLS to `addr`, the certificate checked for `name` (the
    /// domain itself, never the SRV target).
    pub async fn tls_connect(
        &self,
        addr: SocketAddr,
        name: &ServerName<'static>,
    ) -> Result<TlsStream<TcpStream>, DialError> {
        let tcp = tcp_connect(addr)
            .await
            .map_err(|source| DialError::Connect { addr, source })?;
        self.tls_handshake(tcp, name)
            .await
            .map_err(|source| DialError::Tls { addr, source })
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

    /// The link upgrade to `domain` on a TLS connection to it, signed with
    /// this server's key and bound to that TLS session, with a
    /// `traceparent` header when given.
    pub(crate) async fn upgrade(
        &self,
        tls: TlsStream<TcpStream>,
        domain: &str,
        traceparent: Option<TraceParent>,
    ) -> Result<LinkStream, UpgradeError> {
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
            HeaderValue::from_static(SUBPROTOCOL),
        );
        if let Ok(v) = HeaderValue::from_str(&auth.to_header()) {
            h.insert("Authorization", v);
        }
        if let Some(tp) = traceparent
            && let Ok(v) = HeaderValue::from_str(&tp.to_string())
        {
            h.insert("traceparent", v);
        }
        let config = Some(socket::ws_config(self.max_frame_bytes));
        match tokio_tungstenite::client_async_with_config(req, tls, config).await {
            Ok((ws, _)) => Ok(ws),
            Err(WsError::Http(resp)) => Err(UpgradeError::Refused {
                status: resp.status(),
                body: resp.body().clone().unwrap_or_default(),
            }),
            Err(e) => Err(UpgradeError::Protocol(e.to_string())),
        }
    }
}

fn add_ca(roots: &mut rustls::RootCertStore, ca: &std::path::Path) -> Result<(), CaError> {
    let err = |reason: String| CaError {
        path: ca.display().to_string(),
        reason,
    };
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in it".into()));
    }
    for c in certs {
        roots.add(c).map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}

/// `domain` as the name its certificate must be valid for.
pub fn server_name(domain: &str) -> Result<ServerName<'static>, DialError> {
    ServerName::try_from(domain.to_string()).map_err(|_| DialError::BadName(domain.to_string()))
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

/// Why a keys document could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("GET /.well-known/wsp/keys answered {0}")]
    Status(StatusCode),
    #[error("keys document: {0}")]
    Body(String),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
}

/// `GET /.well-known/wsp/keys` on a TLS connection to `origin`'s server:
/// its published keys (at most [`MAX_KEYS_DOC`] bytes, for `origin`). The
/// connection is driven beside the request, within this future: nothing
/// is left running when it ends.
pub(crate) async fn get_keys(
    tls: TlsStream<TcpStream>,
    origin: &str,
) -> Result<PublishedKeys, FetchError> {
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    let fetch = async {
        let req = hyper::Request::get("/.well-known/wsp/keys")
            .header(hyper::header::HOST, origin)
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Body(e.to_string()))?;
        let resp = send.send_request(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(FetchError::Status(resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_KEYS_DOC)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?
            .to_bytes();
        Ok(PublishedKeys::parse(&body, origin)?)
    };
    tokio::pin!(fetch);
    // The connection ends early only with an error; the fetch decides.
    tokio::select! {
        r = &mut fetch => r,
        r = conn => {
            r?;
            fetch.await
        }
    }
}
