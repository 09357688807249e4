//! Key ids and the signed message: their exact bytes, since the other end
//! of a link computes them too.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::federation::keys::{LinkKey, key_id, link_message};

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
