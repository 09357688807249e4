//! Signing and verifying: what verifies, and every change to a link's
//! authorization (session, domains, key, signature bits) that must not.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::{EXP, published, signed};
use crate::federation::keys::{KeyError, LinkAuth, LinkKey, PublicKey, PublishedKeys};

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
