//! The development certificates shipped in `certs/` (their private keys
//! are published with the source): refused as a server certificate or as
//! a trusted `[federation] ca` unless the server listens on loopback only,
//! as the development secret is.

use std::net::SocketAddr;
use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Every certificate in `certs/`, compiled in to be recognised.
const BUNDLED: &[&str] = &[
    include_str!("../certs/ca.pem"),
    include_str!("../certs/localhost.pem"),
    include_str!("../certs/a.test.pem"),
    include_str!("../certs/b.test.pem"),
    include_str!("../certs/c.test.pem"),
    include_str!("../certs/wsp-host.test.pem"),
    include_str!("../certs/expired.b.test.pem"),
    include_str!("../certs/unknown-ca.b.test.pem"),
];

/// A development certificate configured on a public address.
#[derive(Debug, thiserror::Error)]
#[error(
    "{key} = {path}: this is a development certificate from wspd's certs/ folder, whose private \
     key is published; refusing to use it on {listen}, which is not a loopback address"
)]
pub struct DevCertError {
    key: &'static str,
    path: String,
    listen: SocketAddr,
}

/// Refuses `path` (configured as `key`) when it holds one of the bundled
/// certificates and `listen` is not loopback. A file that cannot be read
/// is left to the code that loads it to report.
pub fn refuse_on_public(
    key: &'static str,
    path: &Path,
    listen: SocketAddr,
) -> Result<(), DevCertError> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    let Ok(certs) =
        CertificateDer::pem_file_iter(path).and_then(|it| it.collect::<Result<Vec<_>, _>>())
    else {
        return Ok(());
    };
    if certs.iter().any(is_bundled) {
        return Err(DevCertError {
            key,
            path: path.display().to_string(),
            listen,
        });
    }
    Ok(())
}

fn is_bundled(cert: &CertificateDer<'_>) -> bool {
    BUNDLED.iter().any(|pem| {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .flatten()
            .any(|c| c.as_ref() == cert.as_ref())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_certificates_only_on_loopback() {
        let public: SocketAddr = "0.0.0.0:443".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let ca = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.pem"));
        let leaf = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/certs/a.test.pem"));
        assert!(refuse_on_public("[federation] ca", ca, public).is_err());
        assert!(refuse_on_public("[tls] cert", leaf, public).is_err());
        assert!(refuse_on_public("[tls] cert", leaf, local).is_ok());
        assert!(refuse_on_public("[tls] cert", leaf, "[::1]:443".parse().unwrap()).is_ok());
        // Nothing bundled in it: an empty file, a missing one.
        let dir = std::env::temp_dir().join(format!("wspd-devcerts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(refuse_on_public("[tls] cert", &empty, public).is_ok());
        assert!(refuse_on_public("[tls] cert", &dir.join("missing.pem"), public).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
