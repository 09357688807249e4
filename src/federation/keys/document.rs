//! The published keys document (`GET /.well-known/wsp/keys`): this
//! server's, as served, and another domain's, as fetched, parsed and used to
//! verify a link's signature.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::address::normalize_domain;

use super::{
    ALG, EXPORTER_LEN, KeyError, LinkAuth, LinkKey, MAX_DOCUMENT_LEN, MAX_KEYS, MAX_PARAM_LEN,
    key_id, link_message,
};

/// One published public key (only ed25519 keys are kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// `ed25519:<22 characters>`, always [`key_id`] of `public`.
    pub id: String,
    pub public: [u8; 32],
}

/// A domain's published link keys, as fetched from
/// `https://<domain>/.well-known/wsp/keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKeys {
    /// Lowercase.
    pub domain: String,
    pub keys: Vec<PublicKey>,
}

#[derive(Serialize)]
struct DocumentOut<'a> {
    domain: String,
    keys: Vec<KeyOut<'a>>,
}

#[derive(Serialize)]
struct KeyOut<'a> {
    id: &'a str,
    alg: &'a str,
    public: String,
}

#[derive(Deserialize)]
struct DocumentIn {
    domain: String,
    keys: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl LinkKey {
    /// The keys document to serve at `GET /.well-known/wsp/keys`:
    /// `{"domain":"b.test","keys":[{"id":"ed25519:...","alg":"ed25519","public":"<base64url>"}]}`.
    pub fn document(&self, domain: &str) -> String {
        let doc = DocumentOut {
            domain: domain.to_ascii_lowercase(),
            keys: vec![KeyOut {
                id: self.id(),
                alg: ALG,
                public: URL_SAFE_NO_PAD.encode(self.public()),
            }],
        };
        serde_json::to_string(&doc).expect("a struct of strings serialises")
    }
}

fn bad(what: String) -> KeyError {
    KeyError::Document(what)
}

impl PublishedKeys {
    /// Parses a keys document fetched for `expected_domain`.
    ///
    /// At most [`MAX_DOCUMENT_LEN`] bytes and [`MAX_KEYS`] keys; `domain`
    /// must be `expected_domain` (case-insensitively); keys whose `alg` is
    /// not `ed25519` are skipped; an ed25519 key needs `public` (base64url
    /// without padding of 32 bytes) and `id` equal to [`key_id`] of it.
    /// Other members are ignored.
    pub fn parse(json: &[u8], expected_domain: &str) -> Result<PublishedKeys, KeyError> {
        if json.len() > MAX_DOCUMENT_LEN {
            return Err(bad(format!("larger than {MAX_DOCUMENT_LEN} bytes")));
        }
        let doc: DocumentIn = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        let expected = expected_domain.to_ascii_lowercase();
        if normalize_domain(&doc.domain).as_deref() != Some(expected.as_str()) {
            return Err(KeyError::OtherDomain {
                expected,
                found: doc.domain.chars().take(MAX_PARAM_LEN).collect(),
            });
        }
        if doc.keys.len() > MAX_KEYS {
            return Err(bad(format!("more than {MAX_KEYS} keys")));
        }
        let mut keys: Vec<PublicKey> = Vec::new();
        for (i, k) in doc.keys.iter().enumerate() {
            let Some(key) = parse_key(i, k)? else {
                continue;
            };
            if keys.iter().any(|k| k.id == key.id) {
                return Err(bad(format!("keys[{i}]: duplicate key id")));
            }
            keys.push(key);
        }
        Ok(PublishedKeys {
            domain: expected,
            keys,
        })
    }

    /// Checks a link's authorization against these keys: `auth.origin` must
    /// be this document's domain, `auth.key_id` one of its keys, and
    /// `auth.sig` that key's signature over
    /// [`link_message`]`(auth.origin, auth.destination, exporter)`, where
    /// `exporter` is the receiving side's [`exporter`](super::exporter) of
    /// the link's TLS connection.
    ///
    /// The caller still checks that `auth.destination` is its own domain.
    pub fn verify(&self, auth: &LinkAuth, exporter: &[u8; EXPORTER_LEN]) -> Result<(), KeyError> {
        if !auth.origin.eq_ignore_ascii_case(&self.domain) {
            return Err(KeyError::WrongOrigin {
                origin: auth.origin.clone(),
                domain: self.domain.clone(),
            });
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == auth.key_id)
            .ok_or_else(|| KeyError::UnknownKey {
                domain: self.domain.clone(),
                key_id: auth.key_id.clone(),
            })?;
        let sig = URL_SAFE_NO_PAD
            .decode(&auth.sig)
            .ok()
            .filter(|s| s.len() == 64)
            .ok_or(KeyError::Signature(
                "is not 64 bytes in base64url without padding",
            ))?;
        UnparsedPublicKey::new(&ED25519, &key.public)
            .verify(
                &link_message(&auth.origin, &auth.destination, exporter),
                &sig,
            )
            .map_err(|_| KeyError::Signature("does not verify"))
    }
}

/// Entry `i` of the document's `keys`: `None` for an algorithm other than
/// ed25519, which a later version may publish beside it.
fn parse_key(
    i: usize,
    k: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<PublicKey>, KeyError> {
    let field = |name: &str| {
        k.get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(format!("keys[{i}]: {name} must be a string")))
    };
    if field("alg")? != ALG {
        return Ok(None);
    }
    let public: [u8; 32] = URL_SAFE_NO_PAD
        .decode(field("public")?)
        .ok()
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| {
            bad(format!(
                "keys[{i}]: public is not 32 bytes in base64url without padding"
            ))
        })?;
    let id = field("id")?;
    if id != key_id(&public) {
        return Err(bad(format!("keys[{i}]: id does not match the public key")));
    }
    Ok(Some(PublicKey {
        id: id.to_string(),
        public,
    }))
}
