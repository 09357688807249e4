//! The server's own certificate from an ACME CA (`[tls] acme = true`):
//! obtained at start unless a valid one is cached, served at once by a
//! swappable resolver, renewed well before it expires, all without a
//! restart or a dropped socket.
//!
//! The protocol is the `instant-acme` crate's; this module is the glue:
//! - [`resolver`]: the certificate each handshake gets, and the
//!   TLS-ALPN-01 answers (validation happens on the server's own TLS
//!   listener: no port 80, no other process);
//! - [`cert`]: parsing, the challenge certificate, the cache directory;
//! - [`client`]: the bounded HTTPS client the CA is reached with;
//! - [`Acme`]: the lifecycle, one task of the app's tracker that stops
//!   with the shutdown token.
//!
//! When to renew: inside the CA's suggested window when it offers ACME
//! Renewal Information (RFC 9773), else when two thirds of the lifetime
//! have passed. A failed attempt is logged, counted, and retried after a
//! delay that doubles from `[acme] backoff_min` up to `backoff_max`; the
//! certificate already served stays served meanwhile.

pub mod cert;
pub mod client;
pub mod resolver;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config;
use crate::logging::Escaped;
use crate::metrics::Metrics;

pub use cert::{Cache, CertError, CertInfo, Loaded};
pub use client::HttpError;
pub use resolver::{ACME_TLS_ALPN, CertResolver};

/// The longest one attempt (account, order, validations, certificate) may
/// take before it counts as failed.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the CA may take to validate and to issue, each.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(2.0)
    .timeout(Duration::from_secs(90));
/// The renewal task wakes at least this often, to keep the days-left
/// gauge current and to ask the CA again for renewal information.
const WAKE: Duration = Duration::from_secs(600);
/// How often the CA's renewal information is asked for.
const ARI_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Why an attempt to obtain a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("cached account {path}: {reason}")]
    Account { path: String, reason: String },
    #[error(
        "the CA offers no tls-alpn-01 challenge for {0} (wspd validates only with TLS-ALPN-01)"
    )]
    NoChallenge(String),
    #[error("authorization for {name} is {status:?}")]
    Authorization {
        name: String,
        status: AuthorizationStatus,
    },
    #[error("the order ended {status:?}{}", problem.as_deref().map(|p| format!(": {p}")).unwrap_or_default())]
    Order {
        status: OrderStatus,
        problem: Option<String>,
    },
    #[error("the certificate issued does not carry every name asked for ({0:?})")]
    Names(Vec<String>),
    #[error("no certificate within {}s", ATTEMPT_TIMEOUT.as_secs())]
    Timeout,
}

/// See the module documentation.
pub struct Acme {
    config: config::Acme,
    /// The domain: the first of the names.
    domain: String,
    resolver: Arc<CertResolver>,
    cache: Cache,
    client: client::Client,
    metrics: Arc<Metrics>,
    /// What was cached at start and is served already.
    cached: Option<Loaded>,
}

impl Acme {
    /// Prepares the cache directory and the CA client, and serves the
    /// cached certificate at once when it is still valid. Nothing is asked
    /// of the CA before [`Acme::run`].
    pub fn new(config: &config::Acme, metrics: Arc<Metrics>) -> Result<Acme, AcmeError> {
        // The config always lists the domain first.
        let domain = config.names[0].clone();
        let cache = Cache::new(&config.cache, &config.directory);
        cache.create()?;
        let client = client::Client::new(config.ca.as_deref())?;
        let resolver = Arc::new(CertResolver::new());
        let now = SystemTime::now();
        let cached = match cache.load_cert(&domain) {
            Ok(Some(c)) if c.info.not_after > now => Some(c),
            Ok(Some(_)) => {
                info!(%domain, "ACME: the cached certificate has expired; a new one will be obtained");
                None
            }
            Ok(None) => None,
            Err(e) => {
                warn!(%domain, error = %e, "ACME: the cached certificate is unreadable; a new one will be obtained");
                None
            }
        };
        if let Some(c) = &cached {
            resolver.set_current(c.key.clone());
            metrics.set_certificate_days_left(c.info.days_left(now));
            info!(
                %domain,
                names = ?c.info.names,
                expires = %utc(c.info.not_after),
                "ACME: serving the cached certificate"
            );
        }
        Ok(Acme {
            config: config.clone(),
            domain,
            resolver,
            cache,
            client,
            metrics,
            cached,
        })
    }

    /// The acceptor of the TLS listener: every handshake asks the resolver,
    /// and `acme-tls/1` is offered beside HTTP/1.1 for the validations.
    /// Sessions resume with `tickets` (see `app::session_tickets`).
    pub fn acceptor(&self, tickets: Arc<dyn rustls::server::ProducesTickets>) -> TlsAcceptor {
        let mut cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        cfg.ticketer = tickets;
        TlsAcceptor::from(Arc::new(cfg))
    }

    /// Obtains and renews until `shutdown`; see the module documentation.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut current = self.cached.clone();
        if current.is_none() {
            warn!(
                domain = %self.domain,
                directory = %self.config.directory,
                "ACME: no certificate yet; TLS handshakes are refused (but for the CA's validations) \
                 until one is obtained"
            );
        }
        let mut account: Option<Account> = None;
        // When to renew, from the CA's renewal information: (asked at, pick).
        let mut ari: Option<(SystemTime, Option<SystemTime>)> = None;
        let mut failures: u32 = 0;
        // After a failure, no attempt before this.
        let mut retry_at: Option<SystemTime> = None;
        loop {
            let now = SystemTime::now();
            let due = match &current {
                None => now,
                Some(c) => {
                    self.metrics
                        .set_certificate_days_left(c.info.days_left(now));
                    if c.info.covers(&self.config.names) {
                        if ari.is_none_or(|(at, _)| now >= at + ARI_EVERY) {
                            let asked = self.renewal_info(&mut account, c);
                            let Some(pick) = until_shutdown(asked, &shutdown).await else {
                                return;
                            };
                            ari = Some((now, pick));
                        }
                        ari.and_then(|(_, pick)| pick)
                            .unwrap_or_else(|| c.info.two_thirds())
                    } else {
                        // The configured names changed: at once.
                        now
                    }
                }
            };
            let due = retry_at.map_or(due, |r| due.max(r));
            if let Ok(wait) = due.duration_since(now)
                && !wait.is_zero()
            {
                if until_shutdown(tokio::time::sleep(wait.min(WAKE)), &shutdown)
                    .await
                    .is_none()
                {
                    return;
                }
                continue;
            }
            let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, self.obtain(&mut account));
            let Some(result) = until_shutdown(attempt, &shutdown).await else {
                return;
            };
            self.resolver.clear_challenges();
            match result.unwrap_or(Err(AcmeError::Timeout)) {
                Ok(new) => {
                    failures = 0;
                    retry_at = None;
                    ari = None;
                    self.served(&new);
                    current = Some(new);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let retry = backoff(failures, self.config.backoff_min, self.config.backoff_max);
                    self.failed(&e, failures, retry, current.as_ref());
                    retry_at = Some(SystemTime::now() + retry);
                    // A broken account (deactivated, another CA) is
                    // looked up again next time.
                    account = None;
                }
            }
        }
    }

    /// A new certificate: served to new handshakes, counted, logged.
    fn served(&self, new: &Loaded) {
        self.resolver.set_current(new.key.clone());
        self.metrics.acme_order("issued");
        self.metrics
            .set_certificate_days_left(new.info.days_left(SystemTime::now()));
        info!(
            domain = %self.domain,
            names = ?new.info.names,
            expires = %utc(new.info.not_after),
            "ACME: new certificate obtained and served to new connections"
        );
    }

    /// A failed attempt: counted, and logged with what is served meanwhile
    /// and when the next attempt comes.
    fn failed(&self, e: &AcmeError, failures: u32, retry: Duration, current: Option<&Loaded>) {
        self.metrics.acme_order("failed");
        let serving = match current {
            Some(c) => format!(
                "still serving the current certificate (expires {})",
                utc(c.info.not_after)
            ),
            None => "no certificate yet: TLS handshakes are refused".to_string(),
        };
        warn!(
            domain = %self.domain,
            attempt = failures,
            retry_in = ?retry,
            error = %Escaped(bounded(e)),
            "ACME: could not obtain a certificate; {serving}"
        );
    }

    /// When the CA suggests renewing `cert` (now if its window has begun,
    /// else a uniformly random point of the window), or `None` when it
    /// offers no renewal information or cannot be asked in time.
    async fn renewal_info(
        &self,
        account: &mut Option<Account>,
        cert: &Loaded,
    ) -> Option<SystemTime> {
        let id = CertificateIdentifier::try_from(&cert.leaf).ok()?;
        let acct = match self.account(account).await {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %Escaped(bounded(&e)), "ACME: renewal information not asked: no account");
                return None;
            }
        };
        let asked = tokio::time::timeout(client::REQUEST_TIMEOUT, acct.renewal_info(&id)).await;
        match asked.unwrap_or(Err(instant_acme::Error::Str("no answer in time"))) {
            Ok((info, _)) => {
                let pick = window_pick(
                    SystemTime::from(info.suggested_window.start),
                    SystemTime::from(info.suggested_window.end),
                    SystemTime::now(),
                    rand::random::<f64>(),
                );
                info!(domain = %self.domain, renew_at = %utc(pick), "ACME: renewal time from the CA's renewal information");
                Some(pick)
            }
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                debug!(error = %Escaped(bounded(&e)), "ACME: renewal information unavailable");
                None
            }
        }
    }

    /// The account: the cached one, else a new one (then cached).
    async fn account(&self, slot: &mut Option<Account>) -> Result<Account, AcmeError> {
        if let Some(a) = slot {
            return Ok(a.clone());
        }
        let path = self.cache.account_path();
        let builder = || Account::builder_with_http(Box::new(self.client.clone()));
        let account = match self.cache.read(&path)? {
            Some(json) => {
                let creds: AccountCredentials =
                    serde_json::from_slice(&json).map_err(|e| AcmeError::Account {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                builder().from_credentials(creds).await?
            }
            None => {
                let (account, creds) = builder()
                    .create(
                        &NewAccount {
                            contact: &[&self.config.contact],
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.config.directory.clone(),
                        None,
                    )
                    .await?;
                let json = serde_json::to_vec(&creds).map_err(|e| AcmeError::Account {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                self.cache.write(&path, &json)?;
                info!(directory = %self.config.directory, "ACME: account created");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// One attempt: order, validations, certificate, cache.
    async fn obtain(&self, account: &mut Option<Account>) -> Result<Loaded, AcmeError> {
        let account = self.account(account).await?;
        let ids: Vec<Identifier> = self
            .config
            .names
            .iter()
            .map(|n| Identifier::Dns(n.clone()))
            .collect();
        info!(domain = %self.domain, names = ?self.config.names, "ACME: ordering a certificate");
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            let name = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => return Err(AcmeError::Authorization { name, status }),
            }
            let mut challenge = authz
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| AcmeError::NoChallenge(name.clone()))?;
            let digest = challenge.key_authorization().digest();
            let cert = cert::challenge_cert(&name, digest.as_ref())?;
            self.resolver.add_challenge(&name, cert);
            challenge.set_ready().await?;
        }
        let status = order.poll_ready(&POLL).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Order {
                status,
                problem: order.state().error.as_ref().map(|p| p.to_string()),
            });
        }
        let key = order.finalize().await?;
        let chain = order.poll_certificate(&POLL).await?;
        let loaded = Loaded::from_pem(chain.as_bytes(), key.as_bytes())?;
        if !loaded.info.covers(&self.config.names) {
            return Err(AcmeError::Names(loaded.info.names));
        }
        self.cache.store_cert(&self.domain, &chain, &key)?;
        Ok(loaded)
    }
}

/// The longest error text logged: a CA's problem document is the CA's
/// to write.
const MAX_ERROR_CHARS: usize = 512;

/// `e` as text, cut at [`MAX_ERROR_CHARS`].
fn bounded(e: &impl std::fmt::Display) -> String {
    let mut text = e.to_string();
    if let Some((cut, _)) = text.char_indices().nth(MAX_ERROR_CHARS) {
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// What `f` gives, unless the server shuts down first (then `None`).
async fn until_shutdown<F: std::future::Future>(
    f: F,
    shutdown: &CancellationToken,
) -> Option<F::Output> {
    tokio::select! {
        _ = shutdown.cancelled() => None,
        r = f => Some(r),
    }
}

/// When to renew in a suggested window (RFC 9773 §4.2): `now` when it
/// has begun, else the point `fraction` (0 to 1, random) of the way
/// through it.
fn window_pick(start: SystemTime, end: SystemTime, now: SystemTime, fraction: f64) -> SystemTime {
    if start <= now {
        return now;
    }
    let span = end.duration_since(start).unwrap_or_default();
    start + span.mul_f64(fraction.clamp(0.0, 1.0))
}

/// The wait after `failures` failed attempts in a row: `min`, doubling,
/// at most `max`.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    min.saturating_mul(1 << doublings).min(max)
}

/// A time in UTC, for log lines and `wspd check`.
pub fn utc(t: SystemTime) -> String {
    let odt = time::OffsetDateTime::from(t);
    let fmt =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    odt.format(&fmt).unwrap_or_else(|_| format!("{odt}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let (min, max) = (Duration::from_secs(10), Duration::from_secs(3600));
        assert_eq!(backoff(1, min, max), Duration::from_secs(10));
        assert_eq!(backoff(2, min, max), Duration::from_secs(20));
        assert_eq!(backoff(4, min, max), Duration::from_secs(80));
        assert_eq!(backoff(20, min, max), max);
        assert_eq!(backoff(u32::MAX, min, max), max);
    }

    #[test]
    fn renewal_window() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(window_pick(t(100), t(200), t(50), 0.5), t(150));
        assert_eq!(window_pick(t(100), t(200), t(50), 0.0), t(100));
        assert_eq!(window_pick(t(100), t(200), t(50), 7.0), t(200));
        // Begun, or over: now.
        assert_eq!(window_pick(t(100), t(200), t(150), 0.9), t(150));
        assert_eq!(window_pick(t(100), t(200), t(300), 0.1), t(300));
        // A window that ends before it starts: its start.
        assert_eq!(window_pick(t(100), t(90), t(50), 0.5), t(100));
    }

    #[test]
    fn long_errors_are_cut() {
        let long = "é".repeat(600);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), MAX_ERROR_CHARS + 3);
        assert_eq!(bounded(&"short"), "short");
    }

    #[test]
    fn dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(86400 * 365);
        assert_eq!(utc(t), "1971-01-01 00:00:00 UTC");
    }
}
