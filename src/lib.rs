//! wspd: a federated WebRTC signalling server speaking WSP 1.0.
//!
//! Module map (see docs/ARCHITECTURE.md for the invariants):
//! - [`config`]: TOML -> validated [`config::Config`];
//! - [`address`]: user addresses and call ids;
//! - [`frame`]: the only module that knows JSON (wire frames <-> typed);
//! - [`call`]: the call state machine, sans-IO;
//! - [`router`]: who is where, and the driver of the call machines;
//! - [`session`]: one client socket;
//! - [`server`]: listener, TLS, HTTP routes, authenticated upgrade;
//! - [`auth`]: access tokens and the users file;
//! - [`limits`]: token buckets and per-address connection counts;
//! - [`metrics`]: Prometheus exposition.

pub mod address;
pub mod auth;
pub mod call;
pub mod config;
pub mod federation;
pub mod frame;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod router;
pub mod server;
pub mod session;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

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
use crate::federation::link::{Links, LinksError};
use crate::metrics::Metrics;
use crate::router::Router;

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
    /// Cancelled to stop the server.
    pub shutdown: CancellationToken,
    /// Every connection, session and link task.
    pub tasks: TaskTracker,
    /// The TLS acceptor for new connections, replaced on reload.
    tls: std::sync::RwLock<Option<TlsAcceptor>>,
}

impl App {
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

/// A server running in the background.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    /// Cancel to stop: accepting ends, sockets close with 1001.
    pub shutdown: CancellationToken,
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
        let router = Arc::new(Router::new(
            config.domain.clone(),
            config.limits.clone(),
            known,
            metrics.clone(),
            links.clone(),
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

    /// Serves until `shutdown` is cancelled, then shuts down gracefully:
    /// stops accepting, ends every untransferred call with bye 503, closes
    /// sockets and links with 1001, and returns when every connection has
    /// finished or `limits.shutdown_grace` has passed.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = self.app.tasks.clone();
        let app = self.app.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = app.shutdown.cancelled() => {}
            }
            let calls = app.router.shutdown_calls();
            info!(calls, "shutting down: untransferred calls ended with 503");
            app.shutdown.cancel();
        });
        let shutdown = self.app.shutdown.clone();
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
        server::accept_loop(self.app, self.listener, shutdown, tasks.clone()).await;
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
        let shutdown = CancellationToken::new();
        let addr = self.local_addr();
        let app = self.app.clone();
        let handle = tokio::spawn(self.run(shutdown.clone()));
        Running {
            addr,
            app,
            shutdown,
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
