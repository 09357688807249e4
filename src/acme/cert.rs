//! Certificates as the ACME glue sees them: a PEM chain and key become a
//! rustls `CertifiedKey` plus what scheduling needs (names, validity, the
//! renewal-information id); the TLS-ALPN-01 challenge certificate; the
//! cache directory's files.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The largest certificate or key file read from the cache.
const MAX_PEM_BYTES: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Pem(String),
    #[error("certificate: {0}")]
    X509(String),
    #[error("key: {0}")]
    Key(String),
    #[error("challenge certificate: {0}")]
    Challenge(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the scheduler and `wspd check` need to know of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The DNS names it is valid for, lowercase, as listed.
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    /// Reads the leaf (the first certificate of a chain).
    pub fn parse(leaf: &CertificateDer<'_>) -> Result<CertInfo, CertError> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) =
            X509Certificate::from_der(leaf).map_err(|e| CertError::X509(e.to_string()))?;
        let names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(CertError::X509(e.to_string())),
        };
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = u64::try_from(t.timestamp()).unwrap_or(0);
            UNIX_EPOCH + Duration::from_secs(secs)
        };
        Ok(CertInfo {
            names,
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
        })
    }

    /// Whether it carries every one of `names`.
    pub fn covers(&self, names: &[String]) -> bool {
        names.iter().all(|n| self.names.contains(n))
    }

    /// The time left until it expires (zero when it has).
    pub fn left(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }

    /// Days until it expires, negative once it has (for the gauge).
    pub fn days_left(&self, now: SystemTime) -> f64 {
        match self.not_after.duration_since(now) {
            Ok(d) => d.as_secs_f64() / 86400.0,
            Err(e) => -e.duration().as_secs_f64() / 86400.0,
        }
    }

    /// When two thirds of its lifetime have passed: the renewal time
    /// when the CA gives no renewal information.
    pub fn two_thirds(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life * 2 / 3
    }
}

/// A certificate ready to serve, with what is known of it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
    /// The leaf, for the renewal-information id.
    pub leaf: CertificateDer<'static>,
}

impl Loaded {
    /// A PEM chain (leaf first) and its PEM private key.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Loaded, CertError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::Pem(e.to_string()))?;
        let leaf = certs
            .first()
            .cloned()
            .ok_or_else(|| CertError::Pem("no certificate in the chain".into()))?;
        let info = CertInfo::parse(&leaf)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| CertError::Key(e.to_string()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| CertError::Key(e.to_string()))?;
        let key = Arc::new(CertifiedKey::new(certs, signer));
        // A key that does not match the certificate is refused here, not at
        // the first handshake.
        key.keys_match()
            .map_err(|e| CertError::Key(e.to_string()))?;
        Ok(Loaded { key, info, leaf })
    }
}

/// What is known of the first certificate of a PEM file (a chain's leaf).
pub fn file_info(path: &Path) -> Result<CertInfo, CertError> {
    let leaf = CertificateDer::pem_file_iter(path)
        .map_err(|e| CertError::Pem(format!("{}: {e}", path.display())))?
        .next()
        .ok_or_else(|| CertError::Pem(format!("{}: no certificate in it", path.display())))?
        .map_err(|e| CertError::Pem(format!("{}: {e}", path.display())))?;
    CertInfo::parse(&leaf)
}

/// The TLS-ALPN-01 certificate for `name` (RFC 8737 §3): self-signed, the
/// name as its only SAN, the SHA-256 of the key authorization in the
/// critical acmeIdentifier extension.
pub fn challenge_cert(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, CertError> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    // The digest is a SHA-256 (32 bytes), as new_acme_identifier requires.
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key_pair = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key_pair)?;
    let key = PrivateKeyDer::try_from(key_pair.serialize_der())
        .map_err(|e| CertError::Key(e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| CertError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// The cache directory of one CA: `[acme] cache`/<directory as a name>,
/// so that a staging account or certificate is never used with another CA.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(root: &Path, directory: &str) -> Cache {
        Cache {
            dir: root.join(directory_slug(directory)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The account credentials (JSON, with the account's private key).
    pub fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The certificate chain of `domain` (PEM).
    pub fn cert_path(&self, domain: &str) -> PathBuf {
        self.dir.join(format!("{domain}.pem"))
    }

    /// The certificate's private key (PEM).
    pub fn key_path(&self, domain: &str) -> PathBuf {
        self.dir.join(format!("{domain}-key.pem"))
    }

    /// Creates the directory (and the root above it) with mode 0700, and
    /// refuses one that others may read.
    pub fn create(&self) -> Result<(), CertError> {
        for d in [self.dir.parent(), Some(self.dir.as_path())]
            .into_iter()
            .flatten()
        {
            match fs::DirBuilder::new().mode(0o700).create(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(d)(e)),
            }
        }
        let mode = fs::metadata(&self.dir)
            .map_err(io(&self.dir))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(io(&self.dir)(std::io::Error::other(format!(
                "mode {:o}: others may read it; it holds private keys (chmod 700 it)",
                mode & 0o777
            ))));
        }
        Ok(())
    }

    /// Reads a file of the cache, at most [`MAX_PEM_BYTES`]; `None` when it
    /// does not exist.
    pub fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, CertError> {
        use std::io::Read;
        let file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        let mut buf = Vec::new();
        file.take(MAX_PEM_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(io(path))?;
        if buf.len() as u64 > MAX_PEM_BYTES {
            return Err(io(path)(std::io::Error::other("too large")));
        }
        Ok(Some(buf))
    }

    /// Writes a file of the cache with mode 0600, through a temporary file
    /// renamed over it: a reader never sees half of it.
    pub fn write(&self, path: &Path, data: &[u8]) -> Result<(), CertError> {
        let tmp = path.with_extension("tmp");
        // A temporary file left behind keeps its mode if reused: start anew.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&tmp)(e)),
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))
    }

    /// The cached certificate of `domain`, if there is one that parses.
    pub fn load_cert(&self, domain: &str) -> Result<Option<Loaded>, CertError> {
        let (Some(chain), Some(key)) = (
            self.read(&self.cert_path(domain))?,
            self.read(&self.key_path(domain))?,
        ) else {
            return Ok(None);
        };
        Loaded::from_pem(&chain, &key).map(Some)
    }

    /// Keeps a new certificate: the key first, so that a chain on disk
    /// always has its key beside it.
    pub fn store_cert(&self, domain: &str, chain: &str, key: &str) -> Result<(), CertError> {
        self.write(&self.key_path(domain), key.as_bytes())?;
        self.write(&self.cert_path(domain), chain.as_bytes())
    }
}

/// A directory URL as one file name: letters, digits, `.` and `-` kept,
/// anything else `_` (`https://acme-v02.api.letsencrypt.org/directory` →
/// `acme-v02.api.letsencrypt.org_directory`).
fn directory_slug(url: &str) -> String {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    rest.trim_end_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(
            directory_slug(crate::config::LETS_ENCRYPT),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            directory_slug("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000_dir"
        );
        assert_eq!(directory_slug("https://x/../..//"), "x_.._..");
    }

    #[test]
    fn two_thirds_and_days() {
        let nb = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertInfo {
            names: vec!["a.test".into()],
            not_before: nb,
            not_after: nb + Duration::from_secs(90 * 86400),
        };
        assert_eq!(info.two_thirds(), nb + Duration::from_secs(60 * 86400));
        assert_eq!(info.days_left(nb), 90.0);
        assert_eq!(info.days_left(nb + Duration::from_secs(91 * 86400)), -1.0);
        assert!(info.covers(&["a.test".into()]));
        assert!(!info.covers(&["a.test".into(), "b.test".into()]));
    }

    #[test]
    fn challenge_certificate_has_the_name() {
        let c = challenge_cert("a.test", &[7u8; 32]).unwrap();
        let info = CertInfo::parse(&c.cert[0]).unwrap();
        assert_eq!(info.names, ["a.test"]);
    }
}
