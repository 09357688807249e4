//! wspd: a federated WebRTC signalling server speaking WSP 1.0.
//!
//! Module map, top to bottom: each module imports only from those below it
//! (docs/ARCHITECTURE.md draws the layers and says what each keeps true).
//! - this file: [`App`] (what every connection shares), [`Server`]
//!   (build, run, spawn) and its one [`Drain`] handle;
//! - [`server`]: listener, TLS, HTTP routes, authenticated upgrades;
//! - [`session`]: the client socket's handler;
//! - [`federation`]: links to other domains (their handler, opening,
//!   authentication, discovery, keys, `wspd check`);
//! - [`socket`]: the WebSocket pump shared by client sockets and links;
//! - [`router`]: who is where; drives the call machines; reaches other
//!   domains through [`router::Remote`];
//! - [`peer`]: what every kind of peer shares (handle, outbox);
//! - [`call`]: the call state machine, sans-IO;
//! - [`frame`]: the wire: frames, JSON, typed bye and close codes;
//! - [`auth`]: access tokens and the users file;
//! - [`config`], [`address`], [`limits`], [`metrics`], [`logging`]: the
//!   leaves.

pub mod address;
pub mod auth;
pub mod call;
pub mod config;
pub mod federation;
pub mod frame;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod peer;
pub mod router;
pub mod server;
pub mod session;
pub mod socket;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::auth::{Tokens, UsersError, UsersFile};
use crate::config::Config;
use crate::federation::links::{Links, LinksError};
use crate::metrics::Metrics;
use crate::router::{Remote, Router};

/// Everything a connection needs, shared by all of them.
pub struct App {
    pub config: Config,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub tokens: Tokens,
    /// The users file, when `[auth] users` is set.
    pub users: Option<Arc<UsersFile>>,
    /// Bounds concurrent password checks.
    pub login_gate: Semaphore,
    /// Links to other domains, when `[federation]` is configured.
    pub links: Option<Arc<Links>>,
    /// Cancelled when the server drains (see [`App::drain`]): the accept
    /// loop, every socket and every link watch it.
    pub shutdown: CancellationToken,
    /// The drain has begun.
    draining: AtomicBool,
    /// Every connection, session and link task.
    pub tasks: TaskTracker,
    /// The TLS acceptor for new connections, replaced on reload.
    tls: std::sync::RwLock<Option<TlsAcceptor>>,
}

impl App {
    /// Begins the graceful shutdown, once: every untransferred call ends
    /// with bye 503 (queued in the parties' outboxes), then the shutdown
    /// token tells the accept loop, sockets and links, which write what is
    /// queued for them and close with 1001.
    pub fn drain(&self) {
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        let calls = self.router.shutdown_calls();
        info!(calls, "shutting down: untransferred calls ended with 503");
        self.shutdown.cancel();
    }

    /// The TLS acceptor new connections use (None: plain TCP).
    pub fn tls_acceptor(&self) -> Option<TlsAcceptor> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies what can change without a restart (SIGHUP): the TLS
    /// certificate and key, and the federation allow/deny lists. Sockets and
    /// links stay up; new connections get the new certificate. Returns the
    /// keys whose change was ignored because it needs a restart. On error
    /// nothing is changed.
    pub fn reload(&self, new: &Config) -> Result<Vec<&'static str>, StartError> {
        let old = &self.config;
        let mut ignored = Vec::new();
        if new.domain != old.domain {
            ignored.push("domain");
        }
        if new.listen != old.listen {
            ignored.push("listen");
        }
        if new.tls.is_some() != old.tls.is_some() {
            ignored.push("tls");
        }
        if new.federation.is_some() != old.federation.is_some() {
            ignored.push("federation");
        }
        let tls = match (&new.tls, &old.tls) {
            (Some(t), Some(_)) => Some(load_tls(t)?),
            _ => None,
        };
        if let Some(acceptor) = tls {
            *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Some(acceptor);
        }
        if let (Some(links), Some(fed)) = (&self.links, &new.federation) {
            links.set_policy(fed.allow.clone(), fed.deny.clone());
        }
        info!(ignored = ?ignored, "configuration reloaded: TLS certificate and federation policy");
        Ok(ignored)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("[tls]: {0}")]
    Tls(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error(transparent)]
    Links(#[from] LinksError),
}

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
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Bind(config.listen, e))?;
        Server::build(config, listener)
    }

    /// Builds the server on a listener the caller bound (tests use port 0).
    pub fn build(config: Config, listener: TcpListener) -> Result<Server, StartError> {
        let users = match &config.auth.users {
            Some(path) => Some(Arc::new(UsersFile::load(path)?)),
            None => None,
        };
        let known: Option<HashSet<String>> =
            users.as_ref().map(|u| u.users.keys().cloned().collect());
        let tls = config.tls.as_ref().map(load_tls).transpose()?;
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let links = match &config.federation {
            Some(fed) => Some(Arc::new(Links::new(
                &config,
                fed,
                metrics.clone(),
                shutdown.clone(),
                tasks.clone(),
            )?)),
            None => None,
        };
        let remote = links.clone().map(|l| l as Arc<dyn Remote>);
        let router = Arc::new(Router::new(
            config.domain.clone(),
            config.limits.clone(),
            known,
            metrics.clone(),
            remote,
            tasks.clone(),
        ));
        let app = App {
            tokens: Tokens::new(&config.domain, &config.auth.secret),
            config,
            router,
            metrics,
            users,
            login_gate: Semaphore::new(2),
            links,
            shutdown,
            draining: AtomicBool::new(false),
            tasks,
            tls: std::sync::RwLock::new(tls),
        };
        Ok(Server {
            app: Arc::new(app),
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
        server::accept_loop(self.app, self.listener).await;
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

fn load_tls(tls: &config::Tls) -> Result<TlsAcceptor, StartError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| StartError::Tls(format!("cert {}: {e}", tls.cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "cert {}: no certificate in it",
            tls.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| StartError::Tls(format!("key {}: {e}", tls.key.display())))?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
