//! The `WSP-Link` header: its round trip, where the grammar is lenient, and
//! every malformed form refused with a message naming the fault.

use super::{EXP, header_err, signed};
use crate::federation::keys::{LinkAuth, LinkKey};

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
            format!("WSP-Link origin=\"a.test\",destination=\"b.test\",key=\"k\",sig=\"{long}\""),
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
