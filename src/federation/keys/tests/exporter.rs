//! The TLS exporter over a real in-memory handshake, TLS 1.3 and 1.2: both
//! ends agree, two sessions differ, and a signature binds to its session.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;

use super::{published, signed};
use crate::federation::keys::{
    KeyError, LinkAuth, LinkKey, client_exporter, exporter, server_exporter,
};

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
    let client =
        rustls::ClientConnection::new(Arc::new(client), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let server = rustls::ServerConnection::new(Arc::new(server)).unwrap();
    (client, server)
}

/// Moves TLS records between the two ends until both finish the
/// handshake.
fn handshake(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
    fn pump<A, B>(from: &mut rustls::ConnectionCommon<A>, to: &mut rustls::ConnectionCommon<B>) {
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
