//! What every connection shares ([`App`]): the config, the router, the
//! links, the metrics, the tokens, the TLS acceptor, the shutdown token and
//! the task tracker; built once from the config. It also holds the two
//! things that change a running server: the drain (graceful shutdown) and
//! the SIGHUP reload.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ProducesTickets;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::acme::{Acme, AcmeError};
use crate::auth::{Tokens, UsersError, UsersFile};
use crate::cluster::{Cluster, ClusterError};
use crate::config::{Config, Tls};
use crate::devcerts;
use crate::federation::links::{Links, LinksError};
use crate::metrics::Metrics;
use crate::router::{Remote, Router};
use crate::telemetry::{Telemetry, TelemetryError};
use crate::throttle::Attempts;

/// Password checks that may wait for the two that run at once; past it,
/// `POST /token` answers 503.
pub const LOGIN_QUEUE: usize = 16;
/// Login attempts (a right password is given back) per client address and
/// per account in [`LOGIN_WINDOW`]; past it, 429 with `Retry-After`.
pub const LOGIN_ATTEMPTS: u32 = 10;
pub const LOGIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// Everything a connection needs, shared by all of them.
pub struct App {
    pub config: Config,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub tokens: Tokens,
    /// The users file, when `[auth] users` is set; replaced on reload.
    users: std::sync::RwLock<Option<Arc<UsersFile>>>,
    /// Bounds concurrent password checks.
    pub login_gate: Semaphore,
    /// Password checks waiting for the gate (at most [`LOGIN_QUEUE`]).
    pub login_waiting: std::sync::atomic::AtomicUsize,
    /// Login attempts per client address (IPv6: per /64).
    pub logins_by_client: Attempts<std::net::IpAddr>,
    /// Login attempts per account.
    pub logins_by_account: Attempts<String>,
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
    /// Seals TLS session tickets; kept across reloads, so that a client
    /// resumes its session after a certificate change too.
    tickets: Arc<dyn ProducesTickets>,
    /// With `[tls] acme = true`: the certificate's lifecycle, taken by the
    /// server's run (see [`App::take_acme`]).
    acme: std::sync::Mutex<Option<Acme>>,
    /// With `[cluster]`: this node's part in its domain's cluster, started
    /// by the server's run.
    pub cluster: Option<Arc<Cluster>>,
}

impl App {
    /// Loads what the config names (users file, TLS certificate, link
    /// key) and builds the shared state.
    pub fn build(config: Config) -> Result<App, StartError> {
        let users = load_users(&config)?;
        let known = known_users(users.as_deref());
        refuse_dev_certs(&config, config.listen)?;
        let metrics = Arc::new(Metrics::new());
        let tickets = session_tickets()?;
        let (tls, acme) = match &config.tls {
            None => (None, None),
            Some(Tls::Files { cert, key }) => (Some(load_tls(cert, key, &tickets)?), None),
            Some(Tls::Acme(settings)) => {
                let acme = Acme::new(settings, metrics.clone())?;
                (Some(acme.acceptor(tickets.clone())), Some(acme))
            }
        };
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let telemetry = Arc::new(match &config.tracing {
            Some(t) => {
                Telemetry::start(t, &config.domain, metrics.clone(), shutdown.clone(), &tasks)?
            }
            None => Telemetry::off(),
        });
        let links = match &config.federation {
            Some(fed) => Some(Arc::new(Links::new(
                &config,
                fed,
                metrics.clone(),
                shutdown.clone(),
                tasks.clone(),
                telemetry.clone(),
            )?)),
            None => None,
        };
        let remote = links.clone().map(|l| l as Arc<dyn Remote>);
        let cluster = match &config.cluster {
            Some(c) => Some(Cluster::new(
                c,
                &config.domain,
                &config.limits,
                metrics.clone(),
                shutdown.clone(),
                tasks.clone(),
            )?),
            None => None,
        };
        let router = Arc::new(Router::new(
            config.domain.clone(),
            config.limits.clone(),
            known,
            metrics.clone(),
            remote,
            tasks.clone(),
            telemetry,
        ));
        if let Some(c) = &cluster {
            router.set_nodes(c.clone());
        }
        let app = App {
            tokens: Tokens::new(&config.domain, &config.auth.secret),
            config,
            router,
            metrics,
            users: std::sync::RwLock::new(users),
            login_gate: Semaphore::new(2),
            login_waiting: std::sync::atomic::AtomicUsize::new(0),
            logins_by_client: Attempts::new(LOGIN_ATTEMPTS, LOGIN_WINDOW),
            logins_by_account: Attempts::new(LOGIN_ATTEMPTS, LOGIN_WINDOW),
            links,
            shutdown,
            draining: AtomicBool::new(false),
            tasks,
            tls: std::sync::RwLock::new(tls),
            tickets,
            acme: std::sync::Mutex::new(acme),
            cluster,
        };
        Ok(app)
    }

    /// The users file, when `[auth] users` is set (as last loaded).
    pub fn users(&self) -> Option<Arc<UsersFile>> {
        self.users.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

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

    /// The ACME lifecycle to run, once (`None` without ACME or when taken).
    pub fn take_acme(&self) -> Option<Acme> {
        self.acme.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The TLS acceptor new connections use (None: plain TCP).
    pub fn tls_acceptor(&self) -> Option<TlsAcceptor> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies what can change without a restart (SIGHUP): the TLS
    /// certificate and key, the users file (new passwords, removed users:
    /// their tokens are refused at the next connect, calls to them get
    /// 404), and the federation allow/deny lists. Sockets and links stay
    /// up; new connections get the new certificate. Returns the
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
        match (&new.tls, &old.tls) {
            (Some(Tls::Files { .. }), Some(Tls::Files { .. })) | (None, None) => {}
            (Some(Tls::Acme(a)), Some(Tls::Acme(b))) => {
                if a != b {
                    ignored.push("acme");
                }
            }
            _ => ignored.push("tls"),
        }
        if new.federation.is_some() != old.federation.is_some() {
            ignored.push("federation");
        }
        if new.metrics.token != old.metrics.token {
            ignored.push("metrics");
        }
        // Everything is read before anything is applied.
        let tls = match (&new.tls, &old.tls) {
            (Some(Tls::Files { cert, key }), Some(Tls::Files { .. })) => {
                refuse_dev_certs(new, old.listen)?;
                Some(load_tls(cert, key, &self.tickets)?)
            }
            _ => None,
        };
        let users = load_users(new)?;
        if let Some(acceptor) = tls {
            *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Some(acceptor);
        }
        self.router.set_known_users(known_users(users.as_deref()));
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = users;
        if let (Some(links), Some(fed)) = (&self.links, &new.federation) {
            links.set_policy(fed.allow.clone(), fed.deny.clone());
        }
        info!(ignored = ?ignored, "configuration reloaded: TLS certificate, users file and federation policy");
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
    #[error(transparent)]
    DevCert(#[from] devcerts::DevCertError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("[acme]: {0}")]
    Acme(#[from] AcmeError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// The users file the config names, if any.
fn load_users(config: &Config) -> Result<Option<Arc<UsersFile>>, UsersError> {
    match &config.auth.users {
        Some(path) => Ok(Some(Arc::new(UsersFile::load(path)?))),
        None => Ok(None),
    }
}

/// The names in a users file, for the router's 404.
fn known_users(users: Option<&UsersFile>) -> Option<HashSet<String>> {
    users.map(|u| u.users.keys().cloned().collect())
}

/// Refuses the development certificates of `certs/` (as `[tls] cert` or
/// `[federation] ca`) unless `listen` is loopback.
fn refuse_dev_certs(config: &Config, listen: SocketAddr) -> Result<(), StartError> {
    // The trust first: a development CA makes every development
    // certificate valid for any domain it names.
    if let Some(ca) = config.federation.as_ref().and_then(|f| f.ca.as_deref()) {
        devcerts::refuse_on_public("[federation] ca", ca, listen)?;
    }
    match &config.tls {
        Some(Tls::Files { cert, .. }) => devcerts::refuse_on_public("[tls] cert", cert, listen)?,
        // Trusting the development CA for the CA's directory would let
        // anyone holding its published key answer for the CA.
        Some(Tls::Acme(acme)) => {
            if let Some(ca) = &acme.ca {
                devcerts::refuse_on_public("[acme] ca", ca, listen)?;
            }
        }
        None => {}
    }
    Ok(())
}

/// Stateless TLS session resumption: the server seals a session into the
/// ticket it gives the client (TLS 1.3 tickets, and TLS 1.2 ones), so that
/// a client coming back (a reconnection, a reconnect storm after a network
/// blip) skips the certificate signature, and the server keeps nothing per
/// session. rustls's default keeps 256 sessions in memory, which does not
/// cover a node's clients. The keys are random, held in memory only and
/// rotated every 6 hours (tickets live 12 hours): after a restart, and on
/// another node of a cluster, clients make a full handshake.
pub fn session_tickets() -> Result<Arc<dyn ProducesTickets>, StartError> {
    rustls::crypto::ring::Ticketer::new()
        .map_err(|e| StartError::Tls(format!("session tickets: {e}")))
}

fn load_tls(
    cert: &Path,
    key: &Path,
    tickets: &Arc<dyn ProducesTickets>,
) -> Result<TlsAcceptor, StartError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| StartError::Tls(format!("cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "cert {}: no certificate in it",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| StartError::Tls(format!("key {}: {e}", key.display())))?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.ticketer = tickets.clone();
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
