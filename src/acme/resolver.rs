//! The listener's certificate when it comes from ACME: [`CertResolver`]
//! hands rustls the current certificate, swapped in place when a new one
//! arrives, and answers TLS-ALPN-01 validation handshakes (RFC 8737) with
//! the challenge certificate of the name asked for.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The most challenge certificates held at once: one per name of the
/// certificate being ordered.
const MAX_CHALLENGES: usize = crate::config::MAX_ACME_NAMES;

/// Chooses the certificate of each handshake. Locks are held only to clone
/// an `Arc` or to insert, never across an await.
#[derive(Debug, Default)]
pub struct CertResolver {
    /// The certificate served to every handshake but a validation; `None`
    /// until the first one is obtained (handshakes are refused meanwhile).
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// The challenge certificate of each name being validated.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertResolver {
    pub fn new() -> CertResolver {
        CertResolver::default()
    }

    /// Serves `cert` to new handshakes; connections already up keep theirs.
    pub fn set_current(&self, cert: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(cert);
    }

    /// Answers validation handshakes for `name` with `cert` until
    /// [`CertResolver::clear_challenges`]. Past [`MAX_CHALLENGES`] names
    /// it takes no more and returns false.
    pub fn add_challenge(&self, name: &str, cert: Arc<CertifiedKey>) -> bool {
        let mut map = self.challenges.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CHALLENGES && !map.contains_key(name) {
            return false;
        }
        map.insert(name.to_ascii_lowercase(), cert);
        true
    }

    /// Forgets every challenge certificate (an order is over).
    pub fn clear_challenges(&self) {
        self.challenges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.challenges
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name.to_ascii_lowercase())
            .cloned()
    }
}

/// Whether a ClientHello is a TLS-ALPN-01 validation: the CA offers
/// `acme-tls/1` and nothing else (RFC 8737 §3).
pub fn is_validation(hello: &ClientHello<'_>) -> bool {
    match hello.alpn() {
        Some(mut protocols) => {
            protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
        }
        None => false,
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if is_validation(&hello) {
            // A validation gets the challenge certificate of the name it
            // asks for, or nothing: never the real certificate.
            return hello.server_name().and_then(|n| self.challenge(n));
        }
        let current = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if current.is_none() {
            tracing::debug!(
                sni = ?hello.server_name().map(crate::logging::Escaped),
                "TLS handshake refused: no ACME certificate yet"
            );
        }
        current
    }
}
