//! Pebble, the ACME test CA (Debian's `pebble` package), run as a child
//! process on loopback for the ACME tests: its own HTTPS certificate made
//! here with rcgen, its validations aimed through the tests' DNS server at
//! the port wspd listens on. It stops when the [`Pebble`] is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::{WAIT, free_port, http_on};

/// How to run Pebble.
#[derive(Clone)]
pub struct PebbleOptions {
    /// The port its TLS-ALPN-01 validations connect to (wspd's).
    pub tls_port: u16,
    /// The DNS server it resolves the names to validate with.
    pub dns: SocketAddr,
    /// Lifetime of the certificates it issues, in seconds (Pebble's
    /// default is five years).
    pub validity_secs: Option<u64>,
    /// Percentage of nonces it rejects as bad (`PEBBLE_WFE_NONCEREJECT`).
    pub nonce_reject: u8,
}

pub struct Pebble {
    child: Option<tokio::process::Child>,
    dir: PathBuf,
    /// The ACME (WFE) listener.
    pub addr: SocketAddr,
    /// The management listener (roots, intermediates).
    pub mgmt: SocketAddr,
    options: PebbleOptions,
}

impl Pebble {
    /// Starts Pebble in `dir` (its config and HTTPS certificate go there)
    /// and waits, bounded, until it answers.
    pub async fn start(dir: &Path, options: PebbleOptions) -> Pebble {
        std::fs::create_dir_all(dir).unwrap();
        let mut p = Pebble {
            child: None,
            dir: dir.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            mgmt: SocketAddr::from(([127, 0, 0, 1], free_port())),
            options,
        };
        p.write_files();
        p.spawn().await;
        p
    }

    /// The directory URL, for `[acme] directory`.
    pub fn directory(&self) -> String {
        format!("https://{}/dir", self.addr)
    }

    /// The CA of Pebble's own HTTPS, for `[acme] ca`.
    pub fn https_ca(&self) -> PathBuf {
        self.dir.join("https-ca.pem")
    }

    fn write_files(&self) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "wspd tests: Pebble HTTPS CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
                .unwrap();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "pebble");
        let leaf = leaf.signed_by(&key, &ca).unwrap();
        std::fs::write(self.https_ca(), ca.pem()).unwrap();
        std::fs::write(self.dir.join("https.pem"), leaf.pem()).unwrap();
        std::fs::write(self.dir.join("https-key.pem"), key.serialize_pem()).unwrap();
        let validity = self
            .options
            .validity_secs
            .map(|s| format!(",\n    \"certificateValidityPeriod\": {s}"))
            .unwrap_or_default();
        std::fs::write(
            self.dir.join("pebble.json"),
            format!(
                "{{\n  \"pebble\": {{\n    \"listenAddress\": \"{}\",\n    \
                 \"managementListenAddress\": \"{}\",\n    \"certificate\": \"{}\",\n    \
                 \"privateKey\": \"{}\",\n    \"httpPort\": {},\n    \"tlsPort\": {},\n    \
                 \"ocspResponderURL\": \"\",\n    \"externalAccountBindingRequired\": false{validity}\n  }}\n}}\n",
                self.addr,
                self.mgmt,
                self.dir.join("https.pem").display(),
                self.dir.join("https-key.pem").display(),
                free_port(),
                self.options.tls_port,
            ),
        )
        .unwrap();
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("pebble.log")).unwrap();
        let child = tokio::process::Command::new("pebble")
            .arg("-config")
            .arg(self.dir.join("pebble.json"))
            .arg("-dnsserver")
            .arg(self.options.dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env(
                "PEBBLE_WFE_NONCEREJECT",
                self.options.nonce_reject.to_string(),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("pebble runs (Debian package pebble; tests/run.sh installs it)");
        self.child = Some(child);
        // Up when both listeners accept.
        let start = std::time::Instant::now();
        for addr in [self.addr, self.mgmt] {
            while TcpStream::connect(addr).await.is_err() {
                assert!(
                    start.elapsed() < WAIT,
                    "pebble did not listen on {addr}; its log:\n{}",
                    self.log()
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }

    /// What Pebble wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// Stops it (as a CA that is down).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// The root its certificates chain to (it makes a new one at every
    /// start), from its management interface.
    pub async fn root(&self) -> CertificateDer<'static> {
        let pem = self.mgmt_get("/roots/0").await;
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM root from pebble")
    }

    /// Writes [`Pebble::root`] to a file; returns its path.
    pub async fn root_file(&self, name: &str) -> PathBuf {
        let pem = self.mgmt_get("/roots/0").await;
        let path = self.dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    async fn mgmt_get(&self, path: &str) -> String {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.https_ca()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(self.mgmt).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let (status, _, body) = http_on(tls, self.mgmt, "GET", path, &[], "").await;
        assert_eq!(status, 200, "pebble {path}: {body}");
        body
    }
}
