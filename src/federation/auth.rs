//! Inbound link authentication: checks the `Authorization: WSP-Link ...`
//! header of a link upgrade against the origin's published keys, bound to
//! the TLS session it arrived on. The keys are fetched from the origin's
//! own server (found by discovery, over TLS verified for the origin) and
//! cached.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use hyper::StatusCode;
use tokio::time::Instant;
use tracing::info;

use crate::federation::dial::{self, DialError, Dialer, FetchError};
use crate::federation::keys::{LinkAuth, PublishedKeys};
use crate::metrics::Metrics;

/// How long fetched keys are trusted before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(3600);
/// An unknown key id makes the keys be fetched again, at most this often.
const KEYS_REFETCH: Duration = Duration::from_secs(30);
/// The most origins whose keys are cached; past it, expired ones go.
const MAX_CACHED_ORIGINS: usize = 10_000;

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

/// Why an origin's keys could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot discover {origin}: {source}")]
    Discovery {
        origin: String,
        source: crate::federation::discovery::DiscoveryError,
    },
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("{addr}: {source}")]
    Fetch {
        addr: std::net::SocketAddr,
        source: FetchError,
    },
    #[error("{addr}: no answer within {after:?}")]
    Timeout {
        addr: std::net::SocketAddr,
        after: Duration,
    },
    #[error("{0} has no address")]
    NoAddress(String),
}

struct CachedKeys {
    keys: Arc<PublishedKeys>,
    fetched: Instant,
}

/// Checks incoming links; keeps the origins' keys.
pub struct LinkAuthenticator {
    domain: String,
    keys: DashMap<String, CachedKeys>,
    metrics: Arc<Metrics>,
}

impl LinkAuthenticator {
    pub fn new(domain: String, metrics: Arc<Metrics>) -> Self {
        LinkAuthenticator {
            domain,
            keys: DashMap::new(),
            metrics,
        }
    }

    /// Checks an incoming link's header, bound to `exporter` (this TLS
    /// session's), with `allows` as the policy. Returns the origin domain.
    pub async fn authenticate(
        &self,
        dialer: &Dialer,
        allows: impl Fn(&str) -> bool,
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
        if auth.origin == self.domain || !allows(&auth.origin) {
            return Err(refuse(
                "policy",
                refusal(
                    StatusCode::FORBIDDEN,
                    "federation-refused",
                    format!("federation with {} is refused by policy", auth.origin),
                ),
            ));
        }
        self.verify(dialer, &auth, &exporter)
            .await
            .map_err(|(reason, r)| refuse(reason, r))?;
        Ok(auth.origin)
    }

    /// Verifies the signature with the origin's keys; a key not seen yet
    /// may be new, so the keys are fetched again (rarely) before refusing.
    async fn verify(
        &self,
        dialer: &Dialer,
        auth: &LinkAuth,
        exporter: &[u8; 32],
    ) -> Result<(), (&'static str, LinkRefusal)> {
        let keys = self
            .keys_for(dialer, &auth.origin, false)
            .await
            .map_err(|e| {
                (
                    "keys",
                    refusal(StatusCode::UNAUTHORIZED, "keys-unavailable", e.to_string()),
                )
            })?;
        let Err(first) = keys.verify(auth, exporter) else {
            return Ok(());
        };
        let again = match self.keys_for(dialer, &auth.origin, true).await {
            Ok(fresh) if !Arc::ptr_eq(&fresh, &keys) => fresh.verify(auth, exporter),
            _ => Err(first),
        };
        again.map_err(|e| {
            (
                "auth",
                refusal(
                    StatusCode::UNAUTHORIZED,
                    "bad-link-signature",
                    e.to_string(),
                ),
            )
        })
    }

    /// The published keys of `origin`, from cache or fetched from its own
    /// discovered server over TLS verified for `origin`.
    async fn keys_for(
        &self,
        dialer: &Dialer,
        origin: &str,
        refresh: bool,
    ) -> Result<Arc<PublishedKeys>, KeysError> {
        if let Some(c) = self.keys.get(origin) {
            let age = c.fetched.elapsed();
            if age < KEYS_TTL && (!refresh || age < KEYS_REFETCH) {
                return Ok(c.keys.clone());
            }
        }
        let keys = Arc::new(fetch_keys(dialer, origin).await?);
        if self.keys.len() >= MAX_CACHED_ORIGINS {
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
}

/// Fetches `origin`'s keys from its own server: each discovered address in
/// turn, each within `federation.connect_timeout`.
async fn fetch_keys(dialer: &Dialer, origin: &str) -> Result<PublishedKeys, KeysError> {
    let addrs =
        dialer
            .discovery()
            .resolve(origin)
            .await
            .map_err(|source| KeysError::Discovery {
                origin: origin.to_string(),
                source,
            })?;
    let name = dial::server_name(origin)?;
    let after = dialer.connect_timeout();
    let mut last = KeysError::NoAddress(origin.to_string());
    for addr in addrs {
        let fetch = async {
            let tls = dialer.tls_connect(addr, &name).await?;
            dial::get_keys(tls, origin)
                .await
                .map_err(|source| KeysError::Fetch { addr, source })
        };
        match tokio::time::timeout(after, fetch).await {
            Ok(Ok(k)) => return Ok(k),
            Ok(Err(e)) => last = e,
            Err(_) => last = KeysError::Timeout { addr, after },
        }
    }
    Err(last)
}
