//! Inbound link authentication: checks the `Authorization: WSP-Link ...`
//! header of a link upgrade against the origin's published keys, bound to
//! the TLS session it arrived on. The keys are fetched from the origin's
//! own server (found by discovery, over TLS verified for the origin) and
//! cached.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use hyper::StatusCode;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::info;

use crate::federation::dial::{self, DialError, Dialer, FetchError};
use crate::federation::keys::{LinkAuth, PublishedKeys};
use crate::metrics::Metrics;
use crate::trace::Steps;

/// How long fetched keys are trusted before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(3600);
/// An unknown key id makes the keys be fetched again, at most this often.
const KEYS_REFETCH: Duration = Duration::from_secs(30);
/// The most origins whose keys (or failures) are cached; past it, expired
/// ones go.
const MAX_CACHED_ORIGINS: usize = 10_000;
/// A failed fetch is not tried again for this long: a burst of upgrades
/// naming one origin costs one fetch.
const FAILURE_TTL: Duration = Duration::from_secs(30);
/// Key fetches in flight at once, for all origins together.
const MAX_FETCHES: usize = 8;
/// Addresses of an origin tried, at most, in one fetch.
const MAX_ADDRESSES: usize = 3;

/// A refusal of an incoming link, before the upgrade: its status, an id of
/// the fixed set documented in docs/protocol.md §7 and a fixed
/// description. Nothing the other side sent, and nothing a third party
/// answered (an address, a TLS error, a name), comes back in it: the
/// details go to the log.
#[derive(Debug, Clone, Copy)]
pub struct LinkRefusal {
    pub status: StatusCode,
    pub id: &'static str,
    pub description: &'static str,
}

const NEEDS_TLS: LinkRefusal = LinkRefusal {
    status: StatusCode::FORBIDDEN,
    id: "link-needs-tls",
    description: "links are accepted only over TLS 1.3 on this server's own TLS listener",
};
const BAD_AUTH: LinkRefusal = LinkRefusal {
    status: StatusCode::UNAUTHORIZED,
    id: "bad-link-auth",
    description: "the WSP-Link authorization header is not valid",
};
const WRONG_DESTINATION: LinkRefusal = LinkRefusal {
    status: StatusCode::FORBIDDEN,
    id: "wrong-destination",
    description: "the link's destination is not this server's domain",
};
const POLICY: LinkRefusal = LinkRefusal {
    status: StatusCode::FORBIDDEN,
    id: "federation-refused",
    description: "federation with the origin domain is refused by policy",
};
const KEYS_UNAVAILABLE: LinkRefusal = LinkRefusal {
    status: StatusCode::UNAUTHORIZED,
    id: "keys-unavailable",
    description: "the origin domain's link keys could not be fetched",
};
const BAD_SIGNATURE: LinkRefusal = LinkRefusal {
    status: StatusCode::UNAUTHORIZED,
    id: "bad-link-signature",
    description: "the link signature does not verify with the origin domain's keys",
};

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
    #[error("a fetch failed less than {FAILURE_TTL:?} ago")]
    RecentlyFailed,
    #[error("{MAX_FETCHES} key fetches are already in flight")]
    Busy,
    #[error("no keys within {0:?}")]
    Deadline(Duration),
}

struct CachedKeys {
    keys: Arc<PublishedKeys>,
    fetched: Instant,
}

/// Checks incoming links; keeps the origins' keys.
pub struct LinkAuthenticator {
    domain: String,
    keys: DashMap<String, CachedKeys>,
    /// Origins whose fetch failed, until when they are not fetched again.
    failed: DashMap<String, Instant>,
    /// One fetch in flight per origin: the others wait for it.
    inflight: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Fetches in flight for all origins.
    fetches: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl LinkAuthenticator {
    pub fn new(domain: String, metrics: Arc<Metrics>) -> Self {
        LinkAuthenticator {
            domain,
            keys: DashMap::new(),
            failed: DashMap::new(),
            inflight: DashMap::new(),
            fetches: Arc::new(Semaphore::new(MAX_FETCHES)),
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
        steps: &mut Steps,
    ) -> Result<String, LinkRefusal> {
        // The log has the details; `detail` is escaped (Debug), since it
        // can hold what the other side sent.
        let refuse = |reason: &'static str, r: LinkRefusal, detail: &dyn std::fmt::Debug| {
            self.metrics.link_failure(reason);
            info!(reason, id = r.id, ?detail, "link refused");
            r
        };
        let Some(exporter) = exporter else {
            return Err(refuse("tls", NEEDS_TLS, &"no TLS 1.3 exporter"));
        };
        let auth = LinkAuth::parse(header).map_err(|e| refuse("auth", BAD_AUTH, &e))?;
        if auth.destination != self.domain {
            return Err(refuse("misrouted", WRONG_DESTINATION, &auth.destination));
        }
        if auth.origin == self.domain || !allows(&auth.origin) {
            return Err(refuse("policy", POLICY, &auth.origin));
        }
        self.verify(dialer, &auth, &exporter, steps)
            .await
            .map_err(|(reason, r, detail)| refuse(reason, r, &detail))?;
        Ok(auth.origin)
    }

    /// Verifies the signature with the origin's keys; a key not seen yet
    /// may be new, so the keys are fetched again (rarely) before refusing.
    async fn verify(
        &self,
        dialer: &Dialer,
        auth: &LinkAuth,
        exporter: &[u8; 32],
        steps: &mut Steps,
    ) -> Result<(), (&'static str, LinkRefusal, String)> {
        let mut t = Steps::start("keys");
        t.detail = self
            .cached(&auth.origin, false)
            .ok()
            .flatten()
            .map(|_| "cached");
        let keys = match self.keys_for(dialer, &auth.origin, false).await {
            Ok(k) => {
                steps.push(t, None);
                k
            }
            Err(e) => {
                steps.push(t, Some("keys"));
                return Err(("keys", KEYS_UNAVAILABLE, format!("{}: {e}", auth.origin)));
            }
        };
        let t = Steps::start("verify");
        let Err(first) = keys.verify(auth, exporter) else {
            steps.push(t, None);
            return Ok(());
        };
        steps.push(t, Some("auth"));
        // A key not seen yet: the keys are fetched again, then checked.
        let t = Steps::start("keys");
        let again = match self.keys_for(dialer, &auth.origin, true).await {
            Ok(fresh) if !Arc::ptr_eq(&fresh, &keys) => fresh.verify(auth, exporter),
            _ => Err(first),
        };
        steps.push(t, again.as_ref().err().map(|_| "auth"));
        again.map_err(|e| ("auth", BAD_SIGNATURE, e.to_string()))
    }

    /// The published keys of `origin`, from cache or fetched from its own
    /// discovered server over TLS verified for `origin`. One fetch per
    /// origin at a time (the others wait for its result), at most
    /// [`MAX_FETCHES`] in all, failures remembered for [`FAILURE_TTL`].
    async fn keys_for(
        &self,
        dialer: &Dialer,
        origin: &str,
        refresh: bool,
    ) -> Result<Arc<PublishedKeys>, KeysError> {
        if let Some(k) = self.cached(origin, refresh)? {
            return Ok(k);
        }
        let slot = self.inflight.entry(origin.to_string()).or_default().clone();
        let _one = slot.lock().await;
        // Whoever held the slot before may have fetched, or failed.
        if let Some(k) = self.cached(origin, refresh)? {
            return Ok(k);
        }
        let result = self.fetch(dialer, origin).await;
        self.inflight.remove(origin);
        sweep(&self.keys, |c| c.fetched.elapsed() < KEYS_TTL);
        sweep(&self.failed, |until| Instant::now() < *until);
        match result {
            Ok(keys) => {
                let keys = Arc::new(keys);
                self.failed.remove(origin);
                self.keys.insert(
                    origin.to_string(),
                    CachedKeys {
                        keys: keys.clone(),
                        fetched: Instant::now(),
                    },
                );
                Ok(keys)
            }
            Err(e) => {
                self.failed
                    .insert(origin.to_string(), Instant::now() + FAILURE_TTL);
                Err(e)
            }
        }
    }

    /// The cached keys, when fresh enough; an error while a failure is
    /// remembered.
    fn cached(&self, origin: &str, refresh: bool) -> Result<Option<Arc<PublishedKeys>>, KeysError> {
        if let Some(c) = self.keys.get(origin) {
            let age = c.fetched.elapsed();
            if age < KEYS_TTL && (!refresh || age < KEYS_REFETCH) {
                return Ok(Some(c.keys.clone()));
            }
        }
        match self.failed.get(origin) {
            Some(until) if Instant::now() < *until => Err(KeysError::RecentlyFailed),
            _ => Ok(None),
        }
    }

    /// One fetch, within the global cap and one deadline for all of it.
    async fn fetch(&self, dialer: &Dialer, origin: &str) -> Result<PublishedKeys, KeysError> {
        let Ok(_permit) = self.fetches.clone().try_acquire_owned() else {
            return Err(KeysError::Busy);
        };
        let deadline = dialer.discovery().lookup_timeout() + dialer.connect_timeout();
        tokio::time::timeout(deadline, fetch_keys(dialer, origin))
            .await
            .unwrap_or(Err(KeysError::Deadline(deadline)))
    }
}

/// Past [`MAX_CACHED_ORIGINS`] entries, drops those that `keep` refuses.
fn sweep<V>(map: &DashMap<String, V>, keep: impl Fn(&V) -> bool) {
    if map.len() >= MAX_CACHED_ORIGINS {
        map.retain(|_, v| keep(v));
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
    for addr in addrs.into_iter().take(MAX_ADDRESSES) {
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
