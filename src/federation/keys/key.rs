//! This server's link key: the ed25519 key pair, its id, the PEM file it
//! is kept in, and the signatures it makes.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;

use super::{ALG, EXPORTER_LEN, KeyError, LinkAuth, link_message};

/// The id of an ed25519 public key: `ed25519:` followed by the first 16
/// bytes of SHA-256 of the 32-byte key, base64url without padding (22
/// characters).
pub fn key_id(public: &[u8; 32]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, public);
    format!("{ALG}:{}", URL_SAFE_NO_PAD.encode(&hash.as_ref()[..16]))
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
        let bad_file = |why: String| KeyError::BadKeyFile {
            path: path.to_path_buf(),
            why,
        };
        let pkcs8 = generate_pkcs8().map_err(|_| {
            bad_file("cannot generate a key: the system random generator failed".into())
        })?;
        let key = LinkKey::from_pkcs8(&pkcs8).map_err(bad_file)?;
        let tmp =
            temp_path(path).ok_or_else(|| bad_file("the path does not name a file".into()))?;
        if let Err(e) = write_then_rename(&tmp, path, &to_pem(&pkcs8)) {
            let _ = fs::remove_file(&tmp);
            return Err(KeyError::FileIo {
                path: path.to_path_buf(),
                source: e,
            });
        }
        sync_parent(path);
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

/// A hidden name beside `path`, unique to this process and call, for the
/// new key to be written to before it is renamed into place; `None` when
/// `path` names no file.
fn temp_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    Some(path.with_file_name(tmp_name))
}

/// Writes `pem` to the new file `tmp`, readable by its owner only, and
/// renames it to `path`, so that `path` is never seen half written.
fn write_then_rename(tmp: &Path, path: &Path, pem: &str) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(tmp, path)
}

/// Makes the rename itself durable; a failure here only risks a new key
/// after a crash, so it is not reported.
fn sync_parent(path: &Path) {
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
