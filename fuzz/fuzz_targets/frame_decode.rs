//! `wspd::frame::decode` on arbitrary text (bytes that are not UTF-8 are
//! decoded lossily, as a browser could never send them but a fuzzer should
//! still reach every path), then, when it decodes, the frame is encoded
//! again the way the router relays it and checked.
//!
//! What must hold (docs/protocol.md §3 and §6):
//! - the fast reading (`decode_fast`) accepts only what the checked
//!   decoding accepts, with the same result;
//! - decode never panics; a refusal has a non-empty reason and a close code
//!   of 1007 exactly when the text is not JSON at all, else 1002;
//! - an accepted frame's content is a slice of the message text (kept byte
//!   for byte) and fits its keyword: an object for invite, offer, answer,
//!   bye and a non-null icecandidate, with the checked fields;
//! - `encode(keyword, content, call)` is valid JSON `[keyword, content,
//!   {"call": id}]` whose element 1 is the exact content text, and it decodes
//!   again to the same keyword, call and content.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serde_json::value::RawValue;
use wspd::address::CallId;
use wspd::frame::{self, Body, FrameError, Keyword};

fuzz_target!(|data: &[u8]| {
    check(&String::from_utf8_lossy(data));
});

fn check(text: &str) {
    if let Some(fast) = frame::decode_fast(text) {
        let checked = frame::decode_checked(text)
            .unwrap_or_else(|e| panic!("fast reading accepted {text:?}, checked refuses: {e}"));
        assert_eq!(fast.keyword, checked.keyword);
        assert_eq!(fast.call, checked.call);
        assert_eq!(fast.traceparent, checked.traceparent);
        assert_eq!(fast.body.raw(), checked.body.raw());
        assert_eq!(fast.body.bye_code(), checked.body.bye_code());
        if let (Body::Invite(a), Body::Invite(b)) = (&fast.body, &checked.body) {
            assert_eq!(
                (&a.caller_uri, &a.callee_uri),
                (&b.caller_uri, &b.callee_uri)
            );
        }
    }
    let f = match frame::decode(text) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "empty reason for {text:?}");
            // JSON text by grammar (serde_json's syntax check), and JSON that
            // serde_json can also hold as a Value. They differ for a lone
            // surrogate escape ("\ud800x") or a number out of f64's range
            // (1e999): such JSON, when it is not an array, is called not JSON
            // (close 1007, not 1002), because serde_json cannot read that
            // value to name it in its "expected an array" error.
            let grammar = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            let value = serde_json::from_str::<Value>(text).is_ok();
            if e == FrameError::NotJson {
                assert!(!value, "{text:?} is JSON, refused as not JSON");
            }
            if !grammar {
                assert_eq!(e, FrameError::NotJson, "{text:?} is not JSON");
            }
            assert_eq!(
                e.close_code().get(),
                if e == FrameError::NotJson { 1007 } else { 1002 }
            );
            return;
        }
    };

    if let Some(id) = &f.call {
        let s = id.as_str();
        assert!((8..=64).contains(&s.len()), "{s:?}");
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        );
    }

    let raw = f.body.raw();
    if let Some(raw) = raw
        && raw != "null"
    {
        // Borrowed from the message: the very bytes the client sent.
        let start = raw.as_ptr() as usize - text.as_ptr() as usize;
        assert!(raw.as_ptr() >= text.as_ptr() && start + raw.len() <= text.len());
        assert!(
            raw.starts_with('{'),
            "{} content must be an object: {raw:?}",
            f.keyword.as_str()
        );
    }
    // JSON's grammar allows a lone surrogate escape ("\ud800") in a string
    // and numbers of any size (1e999); wspd relays them verbatim in fields it
    // does not read (browsers' JSON.parse accepts both); serde_json's Value
    // refuses them, so such content is only checked to be JSON text.
    let content: Option<Option<Value>> = raw.map(|r| match serde_json::from_str(r) {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(serde_json::from_str::<&RawValue>(r).is_ok(), "{e}: {r:?}");
            let e = e.to_string();
            assert!(
                e.contains("escape") || e.contains("number out of range"),
                "{e}: {r:?}"
            );
            None
        }
    });
    if content.as_ref().is_none_or(Option::is_some) {
        check_fields(&f, content.flatten().as_ref());
    }

    // Relay it the way the router does, and read it back.
    reencode(&f, raw);
}

/// The fields wspd checks, read again from the content.
fn check_fields(f: &frame::Inbound<'_>, content: Option<&Value>) {
    match (&f.body, f.keyword) {
        (Body::Invite(i), Keyword::Invite) => {
            let v = content.unwrap();
            assert_eq!(v["caller"]["uri"].as_str(), Some(&*i.caller_uri));
            assert_eq!(v["callee"]["uri"].as_str(), Some(&*i.callee_uri));
            for party in ["caller", "callee"] {
                let name = &v[party]["name"];
                assert!(name.is_null() || name.is_string(), "{party}.name {name}");
            }
        }
        (Body::Empty, Keyword::Ringing) => {}
        (Body::Raw(_), Keyword::Offer | Keyword::Answer) => {
            let v = content.unwrap();
            let t = v["type"].as_str().unwrap();
            match f.keyword {
                Keyword::Offer => assert_eq!(t, "offer"),
                _ => assert!(t == "answer" || t == "pranswer", "{t}"),
            }
            assert!(v["sdp"].is_string());
        }
        (Body::Raw(_), Keyword::IceCandidate) => {
            let v = content.unwrap();
            if !v.is_null() {
                for k in ["candidate", "sdpMid", "usernameFragment"] {
                    assert!(v[k].is_null() || v[k].is_string(), "{k}: {v}");
                }
                let i = &v["sdpMLineIndex"];
                assert!(i.is_null() || i.as_u64().is_some_and(|n| n <= 65535), "{v}");
            }
        }
        (Body::Bye(b), Keyword::Bye) => {
            assert!((100..=699).contains(&b.code.get()));
            let v = content.unwrap();
            assert_eq!(v["code"].as_u64(), Some(u64::from(b.code.get())));
            let d = &v["description"];
            assert!(d.is_null() || d.is_string());
        }
        (body, kw) => panic!("body {body:?} for keyword {kw:?}"),
    }
}

fn reencode(f: &frame::Inbound<'_>, raw: Option<&str>) {
    let id = f
        .call
        .clone()
        .unwrap_or_else(|| CallId::parse("fuzz-call-id").unwrap());
    let out = frame::encode(f.keyword, raw, &id);
    let parts: Vec<&RawValue> = serde_json::from_str(out.as_str())
        .unwrap_or_else(|e| panic!("encoded frame is not JSON ({e}): {}", out.as_str()));
    assert_eq!(parts.len(), 3);
    assert_eq!(
        serde_json::from_str::<String>(parts[0].get()).unwrap(),
        f.keyword.as_str()
    );
    assert_eq!(
        parts[1].get(),
        raw.unwrap_or("null"),
        "content kept verbatim"
    );
    let opts: Value = serde_json::from_str(parts[2].get()).unwrap();
    assert_eq!(opts, serde_json::json!({ "call": id.as_str() }));

    let again = frame::decode(out.as_str()).expect("an encoded frame decodes");
    assert_eq!(again.keyword, f.keyword);
    assert_eq!(again.call.as_ref(), Some(&id));
    assert_eq!(again.body.raw(), raw);
    assert_eq!(again.body.bye_code(), f.body.bye_code());
}
