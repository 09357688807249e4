//! The published keys document: the shape served, the forms accepted, and
//! the malformed documents refused.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::{EXP, signed};
use crate::federation::keys::{KeyError, LinkKey, MAX_DOCUMENT_LEN, PublicKey, PublishedKeys};

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
