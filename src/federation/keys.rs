//! Link authentication: how a server proves, on a link it opens, which
//! domain it speaks for — with an ordinary server-only TLS certificate.
//!
//! Each server holds an ed25519 key pair ([`LinkKey`], kept in a PKCS#8 PEM
//! file, created on first start) and publishes its public half at
//! `GET /.well-known/wsp/keys` ([`LinkKey::document`], read back by
//! [`PublishedKeys::parse`]). The opening server signs [`link_message`] —
//! origin, destination and the TLS exporter of the link's own connection —
//! and sends the signature in the upgrade's `Authorization: WSP-Link ...`
//! header ([`LinkAuth`]). The receiving server fetches the origin's keys
//! over TLS verified for the origin domain and checks the signature
//! ([`PublishedKeys::verify`]); the exporter ties the signature to that one
//! TLS session, so it cannot be replayed on another.
//!
//! Everything here is sans-IO except [`LinkKey::load_or_create`].

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::address::normalize_domain;

/// The label of the TLS exporter (RFC 5705 / RFC 8446 section 7.5) that a
/// link signature covers; no context, [`EXPORTER_LEN`] bytes.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-wsp-link";

/// Length of the TLS exporter value, in bytes.
pub const EXPORTER_LEN: usize = 32;

/// First bytes of every signed link message (followed by `|`).
pub const MESSAGE_PREFIX: &[u8] = b"wsp-link-1";

/// The authentication scheme of the `Authorization` header.
pub const SCHEME: &str = "WSP-Link";

/// The only key algorithm, as it appears in key ids and keys documents.
pub const ALG: &str = "ed25519";

/// Longest value of one `Authorization: WSP-Link` parameter, in bytes.
pub const MAX_PARAM_LEN: usize = 256;

/// Largest keys document accepted, in bytes.
pub const MAX_DOCUMENT_LEN: usize = 16 * 1024;

/// Most keys (of any algorithm) in one keys document.
pub const MAX_KEYS: usize = 16;

/// Why link authentication (or the key file) failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The `Authorization: WSP-Link` header is malformed; the text says
    /// which parameter.
    #[error("bad WSP-Link authorization header: {0}")]
    Header(String),
    /// The origin publishes no key with this id.
    #[error("{domain} publishes no link key with id {key_id:?}")]
    UnknownKey { domain: String, key_id: String },
    /// The keys were fetched for one domain, the link claims another origin.
    #[error("the link claims origin {origin} but the keys checked are {domain}'s")]
    WrongOrigin { origin: String, domain: String },
    /// The signature is malformed or does not verify.
    #[error("the link signature {0}")]
    Signature(&'static str),
    /// The keys document names another domain than the one asked for.
    #[error("the keys document is for {found:?}, not for {expected}")]
    OtherDomain { expected: String, found: String },
    /// The keys document is malformed.
    #[error("bad keys document: {0}")]
    Document(String),
    /// The key file could not be read or written.
    #[error("link key file {}: {source}", path.display())]
    FileIo { path: PathBuf, source: io::Error },
    /// The key file exists but does not hold a usable key. It is never
    /// overwritten: the operator fixes or removes it.
    #[error("link key file {}: {why}", path.display())]
    BadKeyFile { path: PathBuf, why: String },
}

impl KeyError {
    /// A short label for metrics: `header`, `unknown_key`, `signature`,
    /// `document` or `file`.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyError::Header(_) => "header",
            KeyError::UnknownKey { .. } | KeyError::WrongOrigin { .. } => "unknown_key",
            KeyError::Signature(_) => "signature",
            KeyError::OtherDomain { .. } | KeyError::Document(_) => "document",
            KeyError::FileIo { .. } | KeyError::BadKeyFile { .. } => "file",
        }
    }
}

/// The id of an ed25519 public key: `ed25519:` followed by the first 16
/// bytes of SHA-256 of the 32-byte key, base64url without padding (22
/// characters).
pub fn key_id(public: &[u8; 32]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, public);
    format!("{ALG}:{}", URL_SAFE_NO_PAD.encode(&hash.as_ref()[..16]))
}

/// The bytes a link signature covers:
///
/// `wsp-link-1` `|` origin `|` destination `|` exporter
///
/// — the ASCII text up to and including the third `|`, then the 32 raw
/// exporter bytes, no terminator. The domains are lowercased here (they are
/// LDH names, so `|` cannot occur in them).
pub fn link_message(origin: &str, destination: &str, exporter: &[u8; EXPORTER_LEN]) -> Vec<u8> {
    let mut m = Vec::with_capacity(
        MESSAGE_PREFIX.len() + 3 + origin.len() + destination.len() + EXPORTER_LEN,
    );
    m.extend_from_slice(MESSAGE_PREFIX);
    m.push(b'|');
    m.extend(origin.bytes().map(|b| b.to_ascii_lowercase()));
    m.push(b'|');
    m.extend(destination.bytes().map(|b| b.to_ascii_lowercase()));
    m.push(b'|');
    m.extend_from_slice(exporter);
    m
}

/// The link exporter of a TLS connection (client or server side): the
/// keying material for [`EXPORTER_LABEL`], no context, 32 bytes. `None`
/// while the handshake is still running or if the export fails.
///
/// Both ends of one connection get the same value; two connections never
/// do.
pub fn exporter<Data>(conn: &rustls::ConnectionCommon<Data>) -> Option<[u8; EXPORTER_LEN]> {
    if conn.is_handshaking() {
        return None;
    }
    conn.export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
        .ok()
}

/// [`exporter`] for the opening side of a link.
pub fn client_exporter(conn: &rustls::ClientConnection) -> Option<[u8; EXPORTER_LEN]> {
    exporter(conn)
}

/// [`exporter`] for the receiving side of a link.
pub fn server_exporter(conn: &rustls::ServerConnection) -> Option<[u8; EXPORTER_LEN]> {
    exporter(conn)
}

/// This server's link key: an ed25519 key pair.
pub struct LinkKey {
    pair: Ed25519KeyPair,
    public: [u8; 32],
    id: String,
}

impl fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private half.
        write!(f, "LinkKey({})", self.id)
    }
}

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

impl LinkKey {
    /// A fresh key pair, kept in memory only.
    pub fn generate() -> LinkKey {
        let pkcs8 = generate_pkcs8().expect("the system random generator works");
        LinkKey::from_pkcs8(&pkcs8).expect("ring reads back the key it generated")
    }

    /// Reads the key in `path`, or creates it when there is no such file.
    ///
    /// The file is PEM (`-----BEGIN PRIVATE KEY-----`) holding a PKCS#8
    /// ed25519 key (v2 as generated here; v1 as `openssl genpkey -algorithm
    /// ed25519` writes is accepted too). A new file is written to a
    /// temporary file in the same folder with mode 0600, then renamed into
    /// place. A file that exists but is not a valid key is an error, and is
    /// left as it is.
    pub fn load_or_create(path: &Path) -> Result<LinkKey, KeyError> {
        match fs::read(path) {
            Ok(bytes) => {
                let key = LinkKey::from_pem(&bytes).map_err(|why| KeyError::BadKeyFile {
                    path: path.to_path_buf(),
                    why,
                })?;
                warn_if_readable_by_others(path);
                Ok(key)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => LinkKey::create(path),
            Err(source) => Err(KeyError::FileIo {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn create(path: &Path) -> Result<LinkKey, KeyError> {
        let io_err = |source| KeyError::FileIo {
            path: path.to_path_buf(),
            source,
        };
        let pkcs8 = generate_pkcs8().map_err(|_| KeyError::BadKeyFile {
            path: path.to_path_buf(),
            why: "cannot generate a key: the system random generator failed".into(),
        })?;
        let key = LinkKey::from_pkcs8(&pkcs8).map_err(|why| KeyError::BadKeyFile {
            path: path.to_path_buf(),
            why,
        })?;
        let pem = to_pem(&pkcs8);

        let name = path.file_name().ok_or_else(|| KeyError::BadKeyFile {
            path: path.to_path_buf(),
            why: "the path does not name a file".into(),
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            ".tmp-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let tmp = path.with_file_name(tmp_name);

        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        // Make the rename itself durable; a failure here only risks a new
        // key after a crash.
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        tracing::info!(path = %path.display(), key = %key.id, "created a new link key");
        Ok(key)
    }

    /// Reads a PEM PKCS#8 ed25519 key; the error says what is wrong.
    fn from_pem(pem: &[u8]) -> Result<LinkKey, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM \"{PEM_BEGIN}\" file ({e})"))?;
        LinkKey::from_pkcs8(der.secret_pkcs8_der())
    }

    fn from_pkcs8(der: &[u8]) -> Result<LinkKey, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| format!("not an ed25519 PKCS#8 private key ({e})"))?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| "the ed25519 public key is not 32 bytes".to_string())?;
        Ok(LinkKey {
            id: key_id(&public),
            public,
            pair,
        })
    }

    /// The key id, `ed25519:<22 characters>` (see [`key_id`]).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The 32-byte ed25519 public key.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// Signs [`link_message`]`(origin, destination, exporter)`; returns the
    /// 64-byte signature as base64url without padding.
    pub fn sign(&self, origin: &str, destination: &str, exporter: &[u8; EXPORTER_LEN]) -> String {
        let sig = self.pair.sign(&link_message(origin, destination, exporter));
        URL_SAFE_NO_PAD.encode(sig.as_ref())
    }

    /// The whole authorization of a link from `origin` to `destination` on
    /// the TLS connection whose exporter is `exporter`; send it as
    /// `Authorization: ` + [`LinkAuth::to_header`]. Domains are lowercased.
    pub fn authorize(
        &self,
        origin: &str,
        destination: &str,
        exporter: &[u8; EXPORTER_LEN],
    ) -> LinkAuth {
        LinkAuth {
            origin: origin.to_ascii_lowercase(),
            destination: destination.to_ascii_lowercase(),
            key_id: self.id.clone(),
            sig: self.sign(origin, destination, exporter),
        }
    }

    /// The keys document to serve at `GET /.well-known/wsp/keys`:
    /// `{"domain":"b.test","keys":[{"id":"ed25519:...","alg":"ed25519","public":"<base64url>"}]}`.
    pub fn document(&self, domain: &str) -> String {
        let doc = DocumentOut {
            domain: domain.to_ascii_lowercase(),
            keys: vec![KeyOut {
                id: &self.id,
                alg: ALG,
                public: URL_SAFE_NO_PAD.encode(self.public),
            }],
        };
        serde_json::to_string(&doc).expect("a struct of strings serialises")
    }
}

fn generate_pkcs8() -> Result<Vec<u8>, ring::error::Unspecified> {
    let rng = ring::rand::SystemRandom::new();
    Ok(Ed25519KeyPair::generate_pkcs8(&rng)?.as_ref().to_vec())
}

fn to_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = String::with_capacity(b64.len() + 80);
    pem.push_str(PEM_BEGIN);
    pem.push('\n');
    // Base64 is ASCII, so splitting at any byte is a char boundary.
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "the link key file can be read by other users; chmod 600 it"
            );
        }
    }
}

/// The `Authorization: WSP-Link ...` header of a link's upgrade request.
///
/// Grammar (the header value; `OWS` is spaces and tabs):
///
/// ```text
/// header = OWS "WSP-Link" 1*(SP / HTAB) param *(OWS "," OWS param) OWS
/// param  = name "=" DQUOTE value DQUOTE
/// name   = "origin" / "destination" / "key" / "sig"
/// value  = 0*256( %x21 / %x23-5B / %x5D-7E )   ; visible ASCII but " and \
/// ```
///
/// The scheme and the names are case-insensitive; each of the four
/// parameters appears exactly once, in any order; other parameters are
/// refused. `origin` and `destination` are domain names (stored lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAuth {
    pub origin: String,
    pub destination: String,
    pub key_id: String,
    pub sig: String,
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_value_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'"' && b != b'\\'
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

impl LinkAuth {
    /// The header value:
    /// `WSP-Link origin="a.test",destination="b.test",key="ed25519:<id>",sig="<base64url>"`.
    pub fn to_header(&self) -> String {
        format!(
            "{SCHEME} origin=\"{}\",destination=\"{}\",key=\"{}\",sig=\"{}\"",
            self.origin, self.destination, self.key_id, self.sig
        )
    }

    /// Parses an `Authorization` header value (see the grammar on
    /// [`LinkAuth`]). Checks the syntax and the domains only; the key and
    /// the signature are checked by [`PublishedKeys::verify`].
    pub fn parse(header: &str) -> Result<LinkAuth, KeyError> {
        let bad = |what: String| KeyError::Header(what);
        let h = header.trim_matches(is_ows);
        let (scheme, mut rest) = h
            .split_once(is_ows)
            .ok_or_else(|| bad(format!("expected \"{SCHEME} <parameters>\"")))?;
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(bad(format!("the scheme is not {SCHEME}")));
        }
        rest = rest.trim_start_matches(is_ows);

        let mut origin = None;
        let mut destination = None;
        let mut key_id = None;
        let mut sig = None;
        loop {
            let (name, after) = rest
                .split_once('=')
                .ok_or_else(|| bad("expected name=\"value\" parameters".into()))?;
            if name.is_empty() || name.len() > 32 || !name.bytes().all(is_name_byte) {
                return Err(bad("malformed parameter name".into()));
            }
            let name = name.to_ascii_lowercase();
            let after = after
                .strip_prefix('"')
                .ok_or_else(|| bad(format!("{name}: the value must be in double quotes")))?;
            let (value, after) = after
                .split_once('"')
                .ok_or_else(|| bad(format!("{name}: no closing double quote")))?;
            if value.len() > MAX_PARAM_LEN {
                return Err(bad(format!("{name} is longer than {MAX_PARAM_LEN} bytes")));
            }
            if !value.bytes().all(is_value_byte) {
                return Err(bad(format!(
                    "{name}: only visible ASCII other than \" and \\ is allowed"
                )));
            }
            let slot = match name.as_str() {
                "origin" => &mut origin,
                "destination" => &mut destination,
                "key" => &mut key_id,
                "sig" => &mut sig,
                _ => return Err(bad(format!("unknown parameter {name}"))),
            };
            if slot.is_some() {
                return Err(bad(format!("duplicate parameter {name}")));
            }
            *slot = Some(value);

            rest = after.trim_start_matches(is_ows);
            if rest.is_empty() {
                break;
            }
            rest = rest
                .strip_prefix(',')
                .ok_or_else(|| bad(format!("expected a comma after {name}")))?
                .trim_start_matches(is_ows);
            if rest.is_empty() {
                return Err(bad("trailing comma".into()));
            }
        }

        let missing = |name: &str| bad(format!("missing parameter {name}"));
        let origin = origin.ok_or_else(|| missing("origin"))?;
        let destination = destination.ok_or_else(|| missing("destination"))?;
        let key_id = key_id.ok_or_else(|| missing("key"))?;
        let sig = sig.ok_or_else(|| missing("sig"))?;
        Ok(LinkAuth {
            origin: normalize_domain(origin)
                .ok_or_else(|| bad("origin is not a valid domain name".into()))?,
            destination: normalize_domain(destination)
                .ok_or_else(|| bad("destination is not a valid domain name".into()))?,
            key_id: key_id.to_string(),
            sig: sig.to_string(),
        })
    }
}

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

impl PublishedKeys {
    /// Parses a keys document fetched for `expected_domain`.
    ///
    /// At most [`MAX_DOCUMENT_LEN`] bytes and [`MAX_KEYS`] keys; `domain`
    /// must be `expected_domain` (case-insensitively); keys whose `alg` is
    /// not `ed25519` are skipped; an ed25519 key needs `public` (base64url
    /// without padding of 32 bytes) and `id` equal to [`key_id`] of it.
    /// Other members are ignored.
    pub fn parse(json: &[u8], expected_domain: &str) -> Result<PublishedKeys, KeyError> {
        let bad = |what: String| KeyError::Document(what);
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
            let field = |name: &str| {
                k.get(name)
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| bad(format!("keys[{i}]: {name} must be a string")))
            };
            if field("alg")? != ALG {
                continue;
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
            if keys.iter().any(|k| k.id == id) {
                return Err(bad(format!("keys[{i}]: duplicate key id")));
            }
            keys.push(PublicKey {
                id: id.to_string(),
                public,
            });
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
    /// `exporter` is the receiving side's [`exporter`] of the link's TLS
    /// connection.
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh folder, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "wspd-keys-{}-{tag}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const EXP: [u8; 32] = [7u8; 32];

    fn signed(key: &LinkKey, exporter: &[u8; 32]) -> LinkAuth {
        key.authorize("a.test", "b.test", exporter)
    }

    fn published(key: &LinkKey, domain: &str) -> PublishedKeys {
        PublishedKeys::parse(key.document(domain).as_bytes(), domain).unwrap()
    }

    fn header_err(h: &str) -> String {
        match LinkAuth::parse(h) {
            Err(e @ KeyError::Header(_)) => e.to_string(),
            other => panic!("{h:?}: expected a header error, got {other:?}"),
        }
    }

    // --- key file ---

    #[test]
    fn create_then_load_round_trip() {
        let dir = TempDir::new("roundtrip");
        let path = dir.0.join("link.key");
        let created = LinkKey::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        assert!(text.ends_with("-----END PRIVATE KEY-----\n"), "{text}");
        // Ring's PKCS#8 v2 document holds the public key too.
        let der = PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes()).unwrap();
        assert!(Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der()).is_ok());

        let loaded = LinkKey::load_or_create(&path).unwrap();
        assert_eq!(loaded.id(), created.id());
        assert_eq!(loaded.public(), created.public());
        assert_eq!(fs::read_to_string(&path).unwrap(), text, "not rewritten");
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
        // What one signs the other verifies.
        published(&loaded, "a.test")
            .verify(&signed(&created, &EXP), &EXP)
            .unwrap();
    }

    #[test]
    fn openssl_v1_key_is_accepted() {
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1, RFC 8410 test key).
        let dir = TempDir::new("v1");
        let path = dir.0.join("link.key");
        fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\n\
             MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
             -----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let key = LinkKey::load_or_create(&path).unwrap();
        // RFC 8410 section 10.3: the matching public key.
        let expected = STANDARD
            .decode("Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=")
            .unwrap();
        assert_eq!(key.public().as_slice(), expected.as_slice());
    }

    #[test]
    fn corrupt_file_is_refused_not_overwritten() {
        let dir = TempDir::new("corrupt");
        let cases: [(&str, &[u8]); 4] = [
            ("garbage", b"not a key at all\n"),
            ("empty", b""),
            (
                "bad-der",
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
            (
                "p256",
                include_bytes!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/certs/localhost-key.pem"
                )),
            ),
        ];
        for (name, content) in cases {
            let path = dir.0.join(name);
            fs::write(&path, content).unwrap();
            let err = LinkKey::load_or_create(&path).unwrap_err();
            assert!(
                matches!(err, KeyError::BadKeyFile { .. }),
                "{name}: {err:?}"
            );
            assert_eq!(err.reason(), "file");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{name}: {err}"
            );
            assert_eq!(fs::read(&path).unwrap(), content, "{name}: overwritten");
        }
    }

    #[test]
    fn unwritable_folder_is_an_error_naming_the_path() {
        let dir = TempDir::new("nofolder");
        let path = dir.0.join("missing").join("link.key");
        let err = LinkKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, KeyError::FileIo { .. }), "{err:?}");
        assert_eq!(err.reason(), "file");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(!path.exists());
    }

    #[test]
    fn debug_does_not_show_the_private_key() {
        let key = LinkKey::generate();
        assert_eq!(format!("{key:?}"), format!("LinkKey({})", key.id()));
    }

    // --- key id and message ---

    #[test]
    fn key_id_format() {
        let key = LinkKey::generate();
        let id = key.id();
        let rest = id.strip_prefix("ed25519:").unwrap();
        assert_eq!(rest.len(), 22);
        assert!(
            rest.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let hash = ring::digest::digest(&ring::digest::SHA256, &key.public());
        assert_eq!(URL_SAFE_NO_PAD.decode(rest).unwrap(), &hash.as_ref()[..16]);
        assert_eq!(key_id(&key.public()), id);
        assert_ne!(LinkKey::generate().id(), id);
    }

    #[test]
    fn key_id_known_answer() {
        // SHA-256 of 32 zero bytes starts 66687aadf862bd776c8fc18b8e9f8e20.
        assert_eq!(key_id(&[0u8; 32]), "ed25519:Zmh6rfhivXdsj8GLjp-OIA");
    }

    #[test]
    fn message_layout() {
        let exp: [u8; 32] = std::array::from_fn(|i| i as u8);
        let m = link_message("A.Test", "b.test", &exp);
        let mut want = b"wsp-link-1|a.test|b.test|".to_vec();
        want.extend_from_slice(&exp);
        assert_eq!(m, want);
        assert_eq!(m.len(), 25 + 32);
    }

    // --- header ---

    #[test]
    fn header_round_trip() {
        let key = LinkKey::generate();
        let auth = signed(&key, &EXP);
        let h = auth.to_header();
        assert_eq!(
            h,
            format!(
                "WSP-Link origin=\"a.test\",destination=\"b.test\",key=\"{}\",sig=\"{}\"",
                key.id(),
                auth.sig
            )
        );
        assert_eq!(auth.sig.len(), 86); // 64 bytes, base64url, no padding
        assert_eq!(LinkAuth::parse(&h).unwrap(), auth);
    }

    #[test]
    fn header_is_lenient_where_the_grammar_says() {
        let h = "  wsp-link   SIG=\"s\" ,\tkey=\"k\",  Destination=\"B.Test\" ,origin=\"a.test\"  ";
        let auth = LinkAuth::parse(h).unwrap();
        assert_eq!(
            auth,
            LinkAuth {
                origin: "a.test".into(),
                destination: "b.test".into(),
                key_id: "k".into(),
                sig: "s".into(),
            }
        );
    }

    #[test]
    fn header_refusals() {
        let ok = |o: &str| {
            format!("WSP-Link origin=\"{o}\",destination=\"b.test\",key=\"ed25519:x\",sig=\"s\"")
        };
        assert!(LinkAuth::parse(&ok("a.test")).is_ok());

        let long = "a".repeat(257);
        let cases: Vec<(String, &str)> = vec![
            // missing parameters
            (
                "WSP-Link destination=\"b.test\",key=\"k\",sig=\"s\"".into(),
                "missing parameter origin",
            ),
            (
                "WSP-Link origin=\"a.test\",key=\"k\",sig=\"s\"".into(),
                "missing parameter destination",
            ),
            (
                "WSP-Link origin=\"a.test\",destination=\"b.test\",sig=\"s\"".into(),
                "missing parameter key",
            ),
            (
                "WSP-Link origin=\"a.test\",destination=\"b.test\",key=\"k\"".into(),
                "missing parameter sig",
            ),
            // duplicates, also differing in case
            (
                format!("{},origin=\"a.test\"", ok("a.test")),
                "duplicate parameter origin",
            ),
            (
                format!("{},SIG=\"t\"", ok("a.test")),
                "duplicate parameter sig",
            ),
            // unknown
            (
                format!("{},realm=\"x\"", ok("a.test")),
                "unknown parameter realm",
            ),
            // scheme
            (
                ok("a.test").replacen("WSP-Link", "Bearer", 1),
                "scheme is not WSP-Link",
            ),
            ("WSP-Link".into(), "expected \"WSP-Link <parameters>\""),
            ("".into(), "expected"),
            (
                ok("a.test").replacen("WSP-Link ", "WSP-Link,", 1),
                "expected \"WSP-Link <parameters>\"",
            ),
            (
                ok("a.test").replacen("WSP-Link", "WSP-Links", 1),
                "scheme is not WSP-Link",
            ),
            // over-long values
            (ok(&long), "origin is longer than 256 bytes"),
            (
                format!(
                    "WSP-Link origin=\"a.test\",destination=\"b.test\",key=\"k\",sig=\"{long}\""
                ),
                "sig is longer than 256 bytes",
            ),
            // bad domains
            (ok("a_b.test"), "origin is not a valid domain name"),
            (ok("a.test."), "origin is not a valid domain name"),
            (ok(""), "origin is not a valid domain name"),
            (
                "WSP-Link origin=\"a.test\",destination=\"-b.test\",key=\"k\",sig=\"s\"".into(),
                "destination is not a valid domain name",
            ),
            // syntax
            (
                "WSP-Link origin=a.test,destination=\"b.test\",key=\"k\",sig=\"s\"".into(),
                "origin: the value must be in double quotes",
            ),
            (
                "WSP-Link origin=\"a.test\",destination=\"b.test\",key=\"k\",sig=\"s".into(),
                "sig: no closing double quote",
            ),
            (format!("{},", ok("a.test")), "trailing comma"),
            (
                "WSP-Link origin=\"a.test\" destination=\"b.test\",key=\"k\",sig=\"s\"".into(),
                "expected a comma after origin",
            ),
            (
                "WSP-Link origin = \"a.test\",destination=\"b.test\",key=\"k\",sig=\"s\"".into(),
                "malformed parameter name",
            ),
            (
                "WSP-Link origin=\"a.test\",destination=\"b.test\",key=\"k k\",sig=\"s\"".into(),
                "key: only visible ASCII",
            ),
            (
                "WSP-Link origin=\"a.test\",destination=\"b.test\",key=\"k\\\\\",sig=\"s\"".into(),
                "key: only visible ASCII",
            ),
            (
                "WSP-Link origin=\"a.test\",destination=\"b.tést\",key=\"k\",sig=\"s\"".into(),
                "destination: only visible ASCII",
            ),
            ("WSP-Link ,".into(), "expected name=\"value\""),
        ];
        for (h, want) in cases {
            let err = header_err(&h);
            assert!(err.contains(want), "{h:?}: {err:?} lacks {want:?}");
            assert_eq!(LinkAuth::parse(&h).unwrap_err().reason(), "header");
        }
        // Exactly 256 bytes is fine for a value.
        let edge = format!(
            "WSP-Link origin=\"a.test\",destination=\"b.test\",key=\"k\",sig=\"{}\"",
            "s".repeat(256)
        );
        assert!(LinkAuth::parse(&edge).is_ok());
    }

    // --- signing and verifying ---

    #[test]
    fn sign_verify_ok() {
        let key = LinkKey::generate();
        let keys = published(&key, "a.test");
        let auth = LinkAuth::parse(&signed(&key, &EXP).to_header()).unwrap();
        keys.verify(&auth, &EXP).unwrap();
        // sign() and authorize() agree, and ed25519 is deterministic.
        assert_eq!(key.sign("a.test", "b.test", &EXP), auth.sig);
    }

    #[test]
    fn verification_failures() {
        let key = LinkKey::generate();
        let keys = published(&key, "a.test");
        let good = signed(&key, &EXP);

        // Replay on another TLS session.
        let err = keys.verify(&good, &[8u8; 32]).unwrap_err();
        assert!(
            matches!(err, KeyError::Signature("does not verify")),
            "{err:?}"
        );
        assert_eq!(err.reason(), "signature");

        // Another destination.
        let mut a = good.clone();
        a.destination = "c.test".into();
        let err = keys.verify(&a, &EXP).unwrap_err();
        assert!(matches!(err, KeyError::Signature(_)), "{err:?}");

        // Another origin, with that origin's keys (same key material even).
        let mut a = good.clone();
        a.origin = "c.test".into();
        let err = published(&key, "c.test").verify(&a, &EXP).unwrap_err();
        assert!(matches!(err, KeyError::Signature(_)), "{err:?}");
        // ... and with the real origin's keys: they are not c.test's.
        let err = keys.verify(&a, &EXP).unwrap_err();
        assert!(matches!(err, KeyError::WrongOrigin { .. }), "{err:?}");
        assert_eq!(err.reason(), "unknown_key");

        // A flipped signature bit, anywhere.
        let raw = URL_SAFE_NO_PAD.decode(&good.sig).unwrap();
        for bit in [0, 7, 255, 256, 511] {
            let mut s = raw.clone();
            s[bit / 8] ^= 1 << (bit % 8);
            let mut a = good.clone();
            a.sig = URL_SAFE_NO_PAD.encode(&s);
            let err = keys.verify(&a, &EXP).unwrap_err();
            assert!(matches!(err, KeyError::Signature(_)), "bit {bit}: {err:?}");
        }

        // Malformed signatures.
        for sig in [
            "",
            "not base64!",
            &good.sig[..85],
            &format!("{}==", good.sig),
            &URL_SAFE_NO_PAD.encode([0u8; 63]),
            &STANDARD.encode(&raw),
        ] {
            let mut a = good.clone();
            a.sig = sig.to_string();
            let err = keys.verify(&a, &EXP).unwrap_err();
            assert!(matches!(err, KeyError::Signature(_)), "{sig:?}: {err:?}");
        }

        // An unknown key id.
        let mut a = good.clone();
        a.key_id = LinkKey::generate().id().to_string();
        let err = keys.verify(&a, &EXP).unwrap_err();
        assert!(matches!(err, KeyError::UnknownKey { .. }), "{err:?}");
        assert_eq!(err.reason(), "unknown_key");

        // Another key pair signing under this key's id.
        let other = LinkKey::generate();
        let mut a = signed(&other, &EXP);
        a.key_id = key.id().to_string();
        let err = keys.verify(&a, &EXP).unwrap_err();
        assert!(matches!(err, KeyError::Signature(_)), "{err:?}");
        // ... or a document listing another public key under this id.
        let forged = PublishedKeys {
            domain: "a.test".into(),
            keys: vec![PublicKey {
                id: key.id().to_string(),
                public: other.public(),
            }],
        };
        let err = forged.verify(&good, &EXP).unwrap_err();
        assert!(matches!(err, KeyError::Signature(_)), "{err:?}");

        // The untouched one still verifies.
        keys.verify(&good, &EXP).unwrap();
    }

    // --- keys document ---

    #[test]
    fn document_shape() {
        let key = LinkKey::generate();
        let doc: serde_json::Value = serde_json::from_str(&key.document("B.Test")).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "domain": "b.test",
                "keys": [{
                    "id": key.id(),
                    "alg": "ed25519",
                    "public": URL_SAFE_NO_PAD.encode(key.public()),
                }]
            })
        );
        let keys = PublishedKeys::parse(key.document("b.test").as_bytes(), "B.TEST").unwrap();
        assert_eq!(keys.domain, "b.test");
        assert_eq!(
            keys.keys,
            vec![PublicKey {
                id: key.id().to_string(),
                public: key.public()
            }]
        );
    }

    #[test]
    fn document_with_several_keys_and_unknown_algs() {
        let k1 = LinkKey::generate();
        let k2 = LinkKey::generate();
        let entry = |k: &LinkKey| {
            serde_json::json!({"id": k.id(), "alg": "ed25519",
                "public": URL_SAFE_NO_PAD.encode(k.public()), "comment": "x"})
        };
        let doc = serde_json::json!({
            "domain": "a.test",
            "expires": 12345,
            "keys": [
                entry(&k1),
                {"alg": "ml-dsa-44", "id": "ml-dsa-44:abc", "public": {"weird": true}},
                {"alg": "ed448"},
                entry(&k2),
            ]
        });
        let keys = PublishedKeys::parse(doc.to_string().as_bytes(), "a.test").unwrap();
        assert_eq!(keys.keys.len(), 2);
        keys.verify(&signed(&k1, &EXP), &EXP).unwrap();
        keys.verify(&signed(&k2, &EXP), &EXP).unwrap();
    }

    #[test]
    fn document_refusals() {
        let key = LinkKey::generate();
        let id = key.id().to_string();
        let public = URL_SAFE_NO_PAD.encode(key.public());
        let one = |k: serde_json::Value| serde_json::json!({"domain": "a.test", "keys": [k]});

        // Another domain.
        let err = PublishedKeys::parse(key.document("c.test").as_bytes(), "a.test").unwrap_err();
        assert!(
            matches!(&err, KeyError::OtherDomain { found, .. } if found == "c.test"),
            "{err:?}"
        );
        assert_eq!(err.reason(), "document");
        let err = PublishedKeys::parse(key.document("a.test.").as_bytes(), "a.test").unwrap_err();
        assert!(matches!(err, KeyError::OtherDomain { .. }), "{err:?}");

        let too_many = serde_json::json!({
            "domain": "a.test",
            "keys": vec![serde_json::json!({"alg": "x"}); 17],
        });
        let big = format!(
            "{{\"domain\":\"a.test\",\"keys\":[],\"pad\":\"{}\"}}",
            "x".repeat(MAX_DOCUMENT_LEN)
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), ""),
            (b"not json".to_vec(), ""),
            (b"[]".to_vec(), ""),
            (br#"{"domain": "a.test"}"#.to_vec(), "missing field `keys`"),
            (br#"{"keys": []}"#.to_vec(), "missing field `domain`"),
            (br#"{"domain": "a.test", "keys": {}}"#.to_vec(), ""),
            (big.into_bytes(), "larger than 16384 bytes"),
            (too_many.to_string().into_bytes(), "more than 16 keys"),
            (
                one(serde_json::json!({"id": id, "public": public}))
                    .to_string()
                    .into_bytes(),
                "keys[0]: alg must be a string",
            ),
            (
                one(serde_json::json!({"alg": "ed25519", "public": public}))
                    .to_string()
                    .into_bytes(),
                "keys[0]: id must be a string",
            ),
            (
                one(serde_json::json!({"alg": "ed25519", "id": id}))
                    .to_string()
                    .into_bytes(),
                "keys[0]: public must be a string",
            ),
            (
                one(serde_json::json!({"alg": "ed25519", "id": id,
                    "public": URL_SAFE_NO_PAD.encode([1u8; 31])}))
                .to_string()
                .into_bytes(),
                "keys[0]: public is not 32 bytes",
            ),
            (
                one(serde_json::json!({"alg": "ed25519", "id": id,
                    "public": STANDARD.encode(key.public())}))
                .to_string()
                .into_bytes(),
                "keys[0]: public is not 32 bytes",
            ),
            (
                one(
                    serde_json::json!({"alg": "ed25519", "id": LinkKey::generate().id(),
                    "public": public}),
                )
                .to_string()
                .into_bytes(),
                "keys[0]: id does not match the public key",
            ),
            (
                serde_json::json!({"domain": "a.test", "keys": [
                    {"alg": "ed25519", "id": id, "public": public},
                    {"alg": "ed25519", "id": id, "public": public},
                ]})
                .to_string()
                .into_bytes(),
                "keys[1]: duplicate key id",
            ),
        ];
        for (json, want) in cases {
            let err = PublishedKeys::parse(&json, "a.test").unwrap_err();
            assert!(
                matches!(err, KeyError::Document(_)),
                "{:?}: {err:?}",
                String::from_utf8_lossy(&json)
            );
            assert!(err.to_string().contains(want), "{err} lacks {want:?}");
            assert_eq!(err.reason(), "document");
        }

        // An empty key list parses; nothing verifies against it.
        let keys = PublishedKeys::parse(br#"{"domain":"a.test","keys":[]}"#, "a.test").unwrap();
        let err = keys.verify(&signed(&key, &EXP), &EXP).unwrap_err();
        assert!(matches!(err, KeyError::UnknownKey { .. }), "{err:?}");
    }

    // --- the exporter over a real TLS handshake ---

    fn certs_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
    }

    fn tls_pair(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (rustls::ClientConnection, rustls::ServerConnection) {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let dir = certs_dir();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("localhost.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("localhost-key.pem")).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = rustls::ClientConnection::new(
            Arc::new(client),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let server = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        (client, server)
    }

    /// Moves TLS records between the two ends until both finish the
    /// handshake.
    fn handshake(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
        fn pump<A, B>(
            from: &mut rustls::ConnectionCommon<A>,
            to: &mut rustls::ConnectionCommon<B>,
        ) {
            while from.wants_write() {
                let mut buf = Vec::new();
                from.write_tls(&mut buf).unwrap();
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    to.read_tls(&mut rd).unwrap();
                    to.process_new_packets().unwrap();
                }
            }
        }
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return;
            }
            pump(client, server);
            pump(server, client);
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn tls_exporter_binds_the_session() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (mut c1, mut s1) = tls_pair(version);
            assert_eq!(client_exporter(&c1), None, "no exporter mid-handshake");
            handshake(&mut c1, &mut s1);
            assert_eq!(c1.protocol_version(), Some(version.version));
            let (e1c, e1s) = (client_exporter(&c1).unwrap(), server_exporter(&s1).unwrap());
            assert_eq!(e1c, e1s, "{version:?}: both ends agree");
            assert_eq!(exporter(&c1), Some(e1c));
            assert_eq!(exporter(&s1), Some(e1s));

            let (mut c2, mut s2) = tls_pair(version);
            handshake(&mut c2, &mut s2);
            let (e2c, e2s) = (client_exporter(&c2).unwrap(), server_exporter(&s2).unwrap());
            assert_eq!(e2c, e2s);
            assert_ne!(e1c, e2c, "{version:?}: two connections differ");

            // A link signed on connection 1 verifies there, not on 2.
            let key = LinkKey::generate();
            let keys = published(&key, "a.test");
            let auth = LinkAuth::parse(&signed(&key, &e1c).to_header()).unwrap();
            keys.verify(&auth, &e1s).unwrap();
            let err = keys.verify(&auth, &e2s).unwrap_err();
            assert!(matches!(err, KeyError::Signature(_)), "{err:?}");
        }
    }
}
