//! The key file: created with mode 0600 and read back, the PEM forms
//! accepted, and a bad file refused and left as it is.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::Ed25519KeyPair;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;

use super::{EXP, TempDir, published, signed};
use crate::federation::keys::{KeyError, LinkKey};

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
