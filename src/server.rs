//! The server: [`Server`] binds, runs and drains; its listener accepts
//! connections under a limit, terminates TLS when configured, serves HTTP
//! (hyper) and upgrades `/wsp` to a WebSocket after authenticating it.
//!
//! Routes: `GET /wsp`, `POST /token`, `GET /healthz`, `GET /metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::acme::ACME_TLS_ALPN;
use crate::address::Address;
use crate::app::{App, StartError};
use crate::auth::TokenError;
use crate::config::Config;
use crate::federation::keys;
use crate::frame::SUBPROTOCOL;
use crate::limits::{IpSlot, PerIp};
use crate::logging::Escaped;
use crate::metrics::Refusal;
use crate::{session, socket};
/// A server ready to run: configuration checked, files loaded, socket bound.
pub struct Server {
    app: Arc<App>,
    listener: TcpListener,
}

/// The one handle that stops a server: cheap to clone, for signal
/// handlers and tests.
#[derive(Clone)]
pub struct Drain(Arc<App>);

impl Drain {
    /// Begins the graceful shutdown ([`App::drain`]); [`Server::run`]
    /// returns when it is over.
    pub fn start(&self) {
        self.0.drain();
    }
}

/// A server running in the background.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    /// Stops it: accepting ends, sockets close with 1001.
    pub drain: Drain,
    /// Ends when every connection has finished.
    pub handle: JoinHandle<()>,
}

impl Server {
    /// Binds `config.listen` and builds the server.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        // Built first: a configuration that is refused never listens.
        let listen = config.listen;
        let app = Arc::new(App::build(config)?);
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| StartError::Bind(listen, e))?;
        Ok(Server { app, listener })
    }

    /// Builds the server on a listener the caller bound (tests use port 0).
    pub fn build(config: Config, listener: TcpListener) -> Result<Server, StartError> {
        Ok(Server {
            app: Arc::new(App::build(config)?),
            listener,
        })
    }

    /// The shared state (for reloads and tests).
    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has an address.
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The handle that stops this server.
    pub fn drain(&self) -> Drain {
        Drain(self.app.clone())
    }

    /// Serves until the server drains ([`Drain::start`]), then shuts down
    /// gracefully: stops accepting, ends every untransferred call with bye
    /// 503, closes sockets and links with 1001, and returns when every
    /// connection has finished or `limits.shutdown_grace` has passed.
    pub async fn run(self) {
        let tasks = self.app.tasks.clone();
        let grace = self.app.config.limits.shutdown_grace;
        let scheme = if self.app.tls_acceptor().is_some() {
            "wss"
        } else {
            "ws"
        };
        info!(
            domain = %self.app.config.domain,
            "listening on {scheme}://{}/wsp",
            self.local_addr()
        );
        if let Some(cluster) = &self.app.cluster {
            cluster.start(&self.app.router);
        }
        if let Some(acme) = self.app.take_acme() {
            tasks.spawn(acme.run(self.app.shutdown.clone()));
        }
        accept_loop(self.app, self.listener).await;
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!(
                left = tasks.len(),
                ?grace,
                "shutdown grace over: leaving the rest"
            );
        }
        info!("stopped");
    }

    /// Runs in a background task.
    pub fn spawn(self) -> Running {
        let addr = self.local_addr();
        let app = self.app.clone();
        let drain = self.drain();
        let handle = tokio::spawn(self.run());
        Running {
            addr,
            app,
            drain,
            handle,
        }
    }
}

/// The largest `POST /token` body.
const MAX_LOGIN_BODY: usize = 4096;
/// hyper's read buffer bounds the request head.
const MAX_HEAD_BYTES: usize = 16 * 1024;

type Body = Full<Bytes>;

/// Where TLS handshakes run: threads of their own (half the cores, at
/// least one), not the runtime that relays frames. A handshake is a few
/// hundred microseconds of CPU; when thousands of clients come back at
/// once (a reconnect storm) their handshakes would fill the relaying
/// runtime's run queue, and every frame of the calls in progress would
/// wait behind them for as long as the storm lasts. On threads of their
/// own they get their share of the CPUs from the kernel's scheduler, as
/// relaying does, and a frame waits a scheduler tick at most.
struct Handshakes {
    handle: tokio::runtime::Handle,
}

impl Handshakes {
    /// Starts the threads; they stop when `shutdown` is cancelled.
    fn start(shutdown: CancellationToken) -> std::io::Result<Handshakes> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .div_ceil(2);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wspd-tls")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("wspd-tls-main".into())
            .spawn(move || {
                rt.block_on(shutdown.cancelled());
                rt.shutdown_background();
            })?;
        Ok(Handshakes { handle })
    }

    /// The server side of a TLS handshake, within `limit`; `None` when
    /// the server stopped meanwhile.
    async fn accept(
        &self,
        acceptor: TlsAcceptor,
        tcp: TcpStream,
        limit: Duration,
    ) -> Option<Result<std::io::Result<TlsStream<TcpStream>>, tokio::time::error::Elapsed>> {
        self.handle
            .spawn(async move { tokio::time::timeout(limit, acceptor.accept(tcp)).await })
            .await
            .ok()
    }
}

/// Accepts connections until the server drains; every connection task is
/// tracked in the app's task tracker.
pub async fn accept_loop(app: Arc<App>, listener: TcpListener) {
    let shutdown = app.shutdown.clone();
    let tasks = app.tasks.clone();
    let slots = Arc::new(Semaphore::new(app.config.limits.max_connections));
    let per_ip = PerIp::new(app.config.limits.connections_per_ip);
    // Without threads for them, handshakes run where everything runs.
    let handshakes = match app.tls_acceptor() {
        None => None,
        Some(_) => match Handshakes::start(shutdown.clone()) {
            Ok(h) => Some(Arc::new(h)),
            Err(e) => {
                warn!(error = %e, "no threads for TLS handshakes: they run with the rest");
                None
            }
        },
    };
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little
                    // rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            app.metrics.refused(Refusal::TooManyConnections);
            app.metrics.limit_hit("max_connections");
            debug!(%remote, "connection refused: limits.max_connections reached");
            drop(tcp);
            continue;
        };
        let Some(ip_slot) = per_ip.acquire(remote.ip()) else {
            app.metrics.refused(Refusal::TooManyConnections);
            app.metrics.limit_hit("connections_per_ip");
            debug!(%remote, "connection refused: limits.connections_per_ip reached");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ConnCtx {
            remote,
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
            _held: Arc::new((permit, ip_slot)),
        };
        let tls = app.tls_acceptor();
        tasks.spawn(connection(app.clone(), tcp, tls, handshakes.clone(), ctx));
    }
}

/// What every request of a connection shares. `_held` keeps the
/// connection counted (globally and for its address) for as long as the
/// connection or a socket upgraded from it lives.
#[derive(Clone)]
struct ConnCtx {
    remote: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    _held: Arc<(OwnedSemaphorePermit, IpSlot)>,
}

async fn connection(
    app: Arc<App>,
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    handshakes: Option<Arc<Handshakes>>,
    ctx: ConnCtx,
) {
    let remote = ctx.remote;
    match tls {
        None => serve_http(app, tcp, None, ctx).await,
        Some(acceptor) => {
            let limit = app.config.limits.handshake_timeout;
            let hs = match handshakes {
                Some(h) => match h.accept(acceptor, tcp, limit).await {
                    Some(hs) => hs,
                    // Stopped meanwhile.
                    None => return,
                },
                None => tokio::time::timeout(limit, acceptor.accept(tcp)).await,
            };
            match hs {
                Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) => {
                    // A CA's TLS-ALPN-01 validation: the handshake was the
                    // answer, there is nothing to serve (RFC 8737 §3).
                    debug!(%remote, "ACME validation handshake answered");
                }
                Ok(Ok(stream)) => {
                    // Links sign this session's TLS 1.3 exporter; compute it
                    // now, while the TLS state is at hand.
                    let conn = stream.get_ref().1;
                    let exporter = (conn.protocol_version()
                        == Some(rustls::ProtocolVersion::TLSv1_3))
                    .then(|| keys::server_exporter(conn))
                    .flatten();
                    serve_http(app, stream, exporter, ctx).await
                }
                Ok(Err(e)) => {
                    app.metrics.refused(Refusal::Handshake);
                    debug!(%remote, error = %Escaped(&e), "TLS handshake failed");
                }
                Err(_) => {
                    app.metrics.refused(Refusal::Handshake);
                    debug!(%remote, "TLS handshake timed out");
                }
            }
        }
    }
}

async fn serve_http<I>(app: Arc<App>, io: I, exporter: Option<[u8; 32]>, ctx: ConnCtx)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_app = app.clone();
    let remote = ctx.remote;
    let shutdown = ctx.shutdown.clone();
    let service = hyper::service::service_fn(move |req| {
        let conn = Conn {
            exporter,
            ctx: ctx.clone(),
        };
        route(svc_app.clone(), req, conn)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.limits.handshake_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%remote, error = %Escaped(&e), "HTTP connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// What a request knows of its connection.
struct Conn {
    /// The TLS 1.3 exporter of the connection, for link authentication.
    exporter: Option<[u8; 32]>,
    ctx: ConnCtx,
}

async fn route(
    app: Arc<App>,
    req: Request<Incoming>,
    conn: Conn,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let res = match (req.method(), path) {
        (&Method::GET, "/wsp") => upgrade(app, req, conn).await,
        (&Method::GET, "/.well-known/wsp/keys") => match &app.links {
            Some(links) => text(StatusCode::OK, "application/json", links.keys_document()),
            None => json_error(
                StatusCode::NOT_FOUND,
                "no-federation",
                "this server does not federate",
            ),
        },
        (&Method::POST, "/token") => with_cors(login(app, req, conn.ctx.remote.ip()).await),
        (&Method::OPTIONS, "/token" | "/session") => preflight(),
        (&Method::GET, "/healthz") => {
            // A node that cannot reach Redis still serves its own users.
            let body = match &app.cluster {
                Some(c) if !c.healthy() => {
                    "degraded: Redis unreachable, cross-node calls refused\n"
                }
                _ => "ok\n",
            };
            text(StatusCode::OK, "text/plain; charset=utf-8", body.into())
        }
        (&Method::GET, "/metrics") => metrics(&app, &req),
        (&Method::GET, "/session") => session_info(&app, &req),
        (&Method::GET, p) if static_file(p).is_some() => serve_static(p),
        (_, "/wsp" | "/token" | "/session" | "/healthz" | "/metrics" | "/.well-known/wsp/keys") => {
            json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "method not allowed here",
            )
        }
        _ => json_error(StatusCode::NOT_FOUND, "not-found", "no such endpoint"),
    };
    Ok(res)
}

/// The client library and the demo page, compiled into the binary so that
/// wspd serves them wherever it runs.
const STATIC: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "/demo.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/demo.js"),
    ),
    (
        "/demo.css",
        "text/css; charset=utf-8",
        include_str!("../web/demo.css"),
    ),
    (
        "/wsp.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/wsp.js"),
    ),
    (
        "/wsp.d.ts",
        "text/plain; charset=utf-8",
        include_str!("../web/wsp.d.ts"),
    ),
];

fn static_file(path: &str) -> Option<&'static (&'static str, &'static str, &'static str)> {
    STATIC.iter().find(|(p, _, _)| *p == path)
}

fn serve_static(path: &str) -> Response<Body> {
    let Some((_, content_type, body)) = static_file(path) else {
        return json_error(StatusCode::NOT_FOUND, "not-found", "no such endpoint");
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Pages of other origins may import the library as a module.
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; \
             img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    r
}

/// `POST /token` and `GET /session` may be called from pages of any
/// origin: they carry no cookies, only what the caller sends.
fn with_cors(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// The answer to a CORS preflight for `/token` and `/session`.
fn preflight() -> Response<Body> {
    let mut r = with_cors(Response::new(Full::new(Bytes::new())));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    text(status, "application/json", value.to_string())
}

/// The error body of every refusal: `{"error": id, "description": text}`.
pub fn json_error(status: StatusCode, id: &str, description: &str) -> Response<Body> {
    json(
        status,
        serde_json::json!({ "error": id, "description": description }),
    )
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The access token from `Authorization: Bearer` or `?access_token=`.
fn bearer_token(req: &Request<Incoming>) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some((scheme, token)) = v.split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some(token.trim().to_string());
    }
    req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| v.to_string())
    })
}

/// `GET /wsp`: a valid WebSocket upgrade is authenticated as a link (with
/// `Authorization: WSP-Link`) or as a user's socket (with a bearer token).
async fn upgrade(app: Arc<App>, req: Request<Incoming>, conn: Conn) -> Response<Body> {
    let handshake = match check_upgrade(req.headers()) {
        Ok(h) => h,
        Err(r) => {
            app.metrics.refused(Refusal::BadUpgrade);
            return r;
        }
    };
    let link_auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() > 9 && v[..9].eq_ignore_ascii_case("wsp-link "))
        .map(str::to_string);
    match link_auth {
        Some(link_auth) => link_upgrade(app, req, conn, &link_auth, handshake).await,
        None => {
            let cluster = app.cluster.clone();
            let res = client_upgrade(app, req, conn, handshake);
            // In a cluster, the 101 goes once the other nodes have been
            // told of the socket (bounded): they can call it at once.
            if let Some(c) = cluster
                && res.status() == StatusCode::SWITCHING_PROTOCOLS
            {
                c.presence_written().await;
            }
            res
        }
    }
}

/// What the 101 answer of a valid upgrade carries.
struct Handshake {
    accept: String,
    /// The client offered a subprotocol (then it was wsp-1.0).
    offered: bool,
}

/// Checks that a request is a WebSocket upgrade this server speaks.
#[allow(clippy::result_large_err)] // the refusal is the response itself
fn check_upgrade(h: &HeaderMap) -> Result<Handshake, Response<Body>> {
    let bad = |description: &str| json_error(StatusCode::BAD_REQUEST, "bad-upgrade", description);
    if !header_has_token(h, header::CONNECTION, "upgrade")
        || !header_has_token(h, header::UPGRADE, "websocket")
    {
        return Err(bad(
            "/wsp is a WebSocket endpoint: send Connection: Upgrade and Upgrade: websocket",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = bad("only WebSocket version 13 is supported");
        *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(r);
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(bad("Sec-WebSocket-Key is missing"));
    };
    let offered = h.contains_key(header::SEC_WEBSOCKET_PROTOCOL);
    if offered && !header_has_token(h, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL) {
        return Err(bad("unsupported subprotocol: this server speaks wsp-1.0"));
    }
    Ok(Handshake {
        accept: derive_accept_key(key.as_bytes()),
        offered,
    })
}

/// A link from another domain: authenticated before the 101, then run
/// by the links.
async fn link_upgrade(
    app: Arc<App>,
    mut req: Request<Incoming>,
    conn: Conn,
    link_auth: &str,
    hs: Handshake,
) -> Response<Body> {
    let Some(links) = app.links.clone() else {
        app.metrics.refused(Refusal::Unauthorized);
        return json_error(
            StatusCode::FORBIDDEN,
            "no-federation",
            "this server does not federate",
        );
    };
    let traceparent = req.headers().get("traceparent");
    let origin = match links
        .authenticate(link_auth, conn.exporter, traceparent)
        .await
    {
        Ok(origin) => origin,
        Err(r) => {
            app.metrics.refused(Refusal::Unauthorized);
            return json_error(r.status, r.id, r.description);
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let held = conn.ctx.clone();
    conn.ctx.tasks.spawn(async move {
        // The link counts as its connection until it ends.
        let _held = held;
        match websocket(on_upgrade, app.config.limits.max_frame_bytes).await {
            Ok(ws) => links.run_inbound(&app.router, ws, origin).await,
            Err(e) => debug!(error = %Escaped(&e), "link upgrade failed"),
        }
    });
    switching_protocols(&hs.accept, hs.offered)
}

/// A user's socket: its token checked, registered with the router before
/// the 101 (so it can be called at once), then run as a session.
fn client_upgrade(
    app: Arc<App>,
    mut req: Request<Incoming>,
    conn: Conn,
    hs: Handshake,
) -> Response<Body> {
    let remote = conn.ctx.remote;
    let user = match authenticate(&app, &req) {
        Ok(u) => u,
        Err(e) => {
            info!(%remote, reason = e.id(), "upgrade refused");
            return unauthorized(&e);
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shutdown = conn.ctx.shutdown.clone();
    // Reachable from now on: a call may arrive before the socket runs.
    let reg = session::Registered::new(&app.router, user, remote, &app.config.limits, &shutdown);
    let held = conn.ctx.clone();
    // Not instrumented: the session's events name its span themselves.
    conn.ctx.tasks.spawn(async move {
        // The socket counts as its connection until it ends.
        let _held = held;
        // Not websocket(): awaiting that async fn here makes every
        // socket's task 280 bytes larger (its state is not laid over the
        // session's), and this task is most of an idle socket's memory.
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(socket::ws_config(app.config.limits.max_frame_bytes)),
                )
                .await;
                let limits = app.config.limits.clone();
                session::run(ws, reg, app.router.clone(), limits, shutdown).await;
            }
            Err(e) => reg.abandon(&app.router, &e),
        }
    });
    switching_protocols(&hs.accept, hs.offered)
}

/// Waits for the upgraded connection and makes it the server side of a
/// WebSocket sized for signalling (for links; client sockets inline it).
async fn websocket(
    on_upgrade: hyper::upgrade::OnUpgrade,
    max_frame_bytes: usize,
) -> hyper::Result<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>> {
    let upgraded = on_upgrade.await?;
    Ok(WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(socket::ws_config(max_frame_bytes)),
    )
    .await)
}

fn switching_protocols(accept: &str, offered: bool) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if offered {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    r
}

/// Checks the request's access token (as for `/wsp`). With a users file,
/// the token's user must still be in it (as last reloaded).
fn authenticate(app: &App, req: &Request<Incoming>) -> Result<Address, TokenError> {
    bearer_token(req)
        .ok_or(TokenError::Missing)
        .and_then(|t| app.tokens.verify(&t))
        .and_then(|user| match app.users() {
            Some(users) if !users.contains(user.user()) => Err(TokenError::UnknownUser),
            _ => Ok(user),
        })
        .inspect_err(|_| app.metrics.refused(Refusal::Unauthorized))
}

/// `GET /metrics`: the exposition text, to holders of `[metrics] token`
/// when it is set.
fn metrics(app: &App, req: &Request<Incoming>) -> Response<Body> {
    if let Some(token) = &app.config.metrics.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if !presented.is_some_and(|p| same_secret(p, token)) {
            let mut r = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "/metrics needs the metrics token: Authorization: Bearer <token>",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    text(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        app.metrics.render(),
    )
}

/// Whether `presented` is `expected`, in time that does not depend on
/// where they differ: each keys an HMAC of the same message, and the two
/// tags are compared in constant time.
fn same_secret(presented: &str, expected: &str) -> bool {
    use ring::hmac;
    const MESSAGE: &[u8] = b"wspd metrics token";
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, expected.as_bytes()),
        MESSAGE,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, presented.as_bytes());
    hmac::verify(&key, MESSAGE, tag.as_ref()).is_ok()
}

/// The 401 for a refused token.
fn unauthorized(e: &TokenError) -> Response<Body> {
    let mut r = json_error(StatusCode::UNAUTHORIZED, e.id(), &e.to_string());
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// What a client needs besides its socket: TURN credentials (empty
/// without `[turn]`).
fn ice_servers(app: &App, user: &Address) -> serde_json::Value {
    match &app.config.turn {
        Some(turn) => serde_json::json!([crate::auth::turn_credentials(turn, user)]),
        None => serde_json::json!([]),
    }
}

/// `GET /session`: checks a token the way `/wsp` would, and answers the
/// user it names and its ICE servers. Browsers cannot see why a WebSocket
/// upgrade failed; this tells a refused token (final) from a network
/// failure (worth retrying).
fn session_info(app: &App, req: &Request<Incoming>) -> Response<Body> {
    // Readable from pages of any origin: it reveals nothing to a page that
    // does not already hold the token (no cookies are involved).
    let mut r = session_answer(app, req);
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

fn session_answer(app: &App, req: &Request<Incoming>) -> Response<Body> {
    match authenticate(app, req) {
        Ok(user) => json(
            StatusCode::OK,
            serde_json::json!({ "user": user.as_str(), "iceServers": ice_servers(app, &user) }),
        ),
        Err(e) => unauthorized(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
    password: String,
}

/// `POST /token`. Guessing is bounded per client address and per account
/// (429 with `Retry-After`); at most [`crate::app::LOGIN_QUEUE`] checks
/// wait for the two that run at once (503 past it).
async fn login(app: Arc<App>, req: Request<Incoming>, client: std::net::IpAddr) -> Response<Body> {
    let Some(users) = app.users() else {
        return json_error(
            StatusCode::NOT_FOUND,
            "no-users-file",
            "this server has no users file ([auth] users); tokens are minted with `wspd token`",
        );
    };
    let login = match read_login(req, app.config.limits.handshake_timeout).await {
        Ok(login) => login,
        Err(refused) => {
            if refused.status() == StatusCode::REQUEST_TIMEOUT {
                app.metrics.refused(Refusal::Handshake);
            }
            return refused;
        }
    };
    let address = login_address(&app.config.domain, &login.user);
    let client = crate::limits::address_group(client);
    let account = address.as_ref().ok().map(|a| a.as_str().to_string());
    if let Err(retry) = take_attempts(&app, client, account.as_ref()) {
        return too_many_attempts(retry);
    }
    let ok = match &address {
        Ok(a) => match check_password(&app, users, a, login.password).await {
            Ok(ok) => ok,
            Err(CheckRefused::Busy) => {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "login-busy",
                    "too many logins at once: try again in a moment",
                );
            }
            Err(CheckRefused::ShuttingDown) => {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting-down",
                    "server shutting down",
                );
            }
        },
        Err(_) => false,
    };
    app.metrics.login(ok);
    if ok {
        // A right password is no guess.
        app.logins_by_client.refund(&client);
        if let Some(account) = &account {
            app.logins_by_account.refund(account);
        }
    }
    match address {
        Ok(a) if ok => token_for(&app, &a),
        _ => {
            info!(
                user = %Escaped(login.user.chars().take(80).collect::<String>()),
                "login failed"
            );
            tokio::time::sleep(app.config.limits.login_failure_delay).await;
            json_error(
                StatusCode::UNAUTHORIZED,
                "bad-credentials",
                "unknown user or wrong password",
            )
        }
    }
}

/// The answer to a right password: a token and the ICE servers.
fn token_for(app: &App, a: &Address) -> Response<Body> {
    let (token, expires) = app.tokens.mint(a, app.config.auth.token_ttl);
    info!(user = %a, "login");
    json(
        StatusCode::OK,
        serde_json::json!({
            "token": token,
            "expires": expires,
            "user": a.as_str(),
            "iceServers": ice_servers(app, a),
        }),
    )
}

/// The body of `POST /token`: JSON `{user, password}`, at most
/// [`MAX_LOGIN_BODY`] bytes, all of it within `timeout` of the head (hyper
/// bounds only the head): a body trickled in a byte at a time would
/// otherwise hold its connection for ever.
#[allow(clippy::result_large_err)] // the refusal is the response itself
async fn read_login(req: Request<Incoming>, timeout: Duration) -> Result<Login, Response<Body>> {
    let collect = Limited::new(req.into_body(), MAX_LOGIN_BODY).collect();
    let Ok(read) = tokio::time::timeout(timeout, collect).await else {
        // The rest of the body is never read, so hyper closes the
        // connection after this answer; the header says so.
        let mut r = json_error(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the request body did not arrive within limits.handshake_timeout",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(r);
    };
    let Ok(body) = read else {
        return Err(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "the request body is over 4096 bytes",
        ));
    };
    serde_json::from_slice::<Login>(&body.to_bytes()).map_err(|_| {
        json_error(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "send JSON {\"user\": \"...\", \"password\": \"...\"}",
        )
    })
}

/// The address a login names: "alice" or "alice@this.domain" (another
/// domain names no user of this server).
fn login_address(domain: &str, user: &str) -> Result<Address, crate::address::AddressError> {
    let name = match user.split_once('@') {
        Some((name, d)) if d.eq_ignore_ascii_case(domain) => name,
        Some(_) => "",
        None => user,
    };
    Address::parse(&format!("{name}@{domain}"))
}

/// Why a password was not checked.
enum CheckRefused {
    /// [`crate::app::LOGIN_QUEUE`] checks are waiting already.
    Busy,
    ShuttingDown,
}

/// Counts a login attempt for the client and the account; the time until
/// they may try again when either has used its attempts.
fn take_attempts(
    app: &App,
    client: std::net::IpAddr,
    account: Option<&String>,
) -> Result<(), std::time::Duration> {
    let now = tokio::time::Instant::now();
    app.logins_by_client.take(&client, now)?;
    if let Some(account) = account {
        app.logins_by_account.take(account, now)?;
    }
    Ok(())
}

/// 429 with `Retry-After` (whole seconds, rounded up).
fn too_many_attempts(retry: std::time::Duration) -> Response<Body> {
    let mut r = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-attempts",
        "too many login attempts from this address or for this account: try again later",
    );
    let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// Checks a password against the users file. argon2 is slow by design: at
/// most two at a time, off the async threads, and a bounded queue for them.
async fn check_password(
    app: &App,
    users: Arc<crate::auth::UsersFile>,
    address: &Address,
    password: String,
) -> Result<bool, CheckRefused> {
    use std::sync::atomic::Ordering;
    let waiting = app.login_waiting.fetch_add(1, Ordering::SeqCst);
    let permit = if waiting >= crate::app::LOGIN_QUEUE {
        Err(CheckRefused::Busy)
    } else {
        app.login_gate
            .acquire()
            .await
            .map_err(|_| CheckRefused::ShuttingDown)
    };
    app.login_waiting.fetch_sub(1, Ordering::SeqCst);
    let _permit = permit?;
    let user = address.user().to_string();
    Ok(
        tokio::task::spawn_blocking(move || users.check(&user, &password))
            .await
            .unwrap_or(false),
    )
}
