//! The wire format: WSP frames `[keyword, content, options]` as JSON text.
//!
//! This is the only module that knows JSON. Inbound frames are decoded into
//! [`Inbound`], whose content is validated for its keyword but kept as the
//! raw JSON text the client sent, so SDP and candidates are relayed byte for
//! byte. Outbound frames are assembled from that raw text plus the call id.
//! Bye and close codes, and every bye the server sends, are typed values of
//! [`codes`].

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::address::CallId;
use crate::trace::TraceParent;

mod codes;
mod scan;
pub use codes::{ByeCode, Close, CloseCode, Outcome, ServerBye};
#[doc(hidden)] // public for the property tests and fuzz targets
pub use scan::decode_fast;

/// The subprotocol of WSP 1.0, offered by clients and links.
pub const SUBPROTOCOL: &str = "wsp-1.0";

/// The six keywords of WSP 1.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Keyword {
    Invite,
    Ringing,
    Offer,
    Answer,
    IceCandidate,
    Bye,
}

impl Keyword {
    pub const ALL: [Keyword; 6] = [
        Keyword::Invite,
        Keyword::Ringing,
        Keyword::Offer,
        Keyword::Answer,
        Keyword::IceCandidate,
        Keyword::Bye,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Keyword::Invite => "invite",
            Keyword::Ringing => "ringing",
            Keyword::Offer => "offer",
            Keyword::Answer => "answer",
            Keyword::IceCandidate => "icecandidate",
            Keyword::Bye => "bye",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Keyword::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Why an inbound frame was refused. Every variant closes the socket; the
/// text becomes the close reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not valid JSON")]
    NotJson,
    #[error("frame must be a JSON array [keyword, content, options]")]
    NotArray,
    #[error("unknown keyword {0:?}")]
    UnknownKeyword(String),
    #[error("bad {keyword} content: {reason}")]
    Content {
        keyword: &'static str,
        reason: String,
    },
    #[error("bad options: {0}")]
    Options(String),
}

impl FrameError {
    /// The WebSocket close code for this error: 1007 when the text is not
    /// JSON at all, 1002 (protocol error) when it is JSON of the wrong shape.
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::NotJson => CloseCode::NotJson,
            _ => CloseCode::Protocol,
        }
    }
}

impl From<FrameError> for Close {
    fn from(e: FrameError) -> Close {
        Close::new(e.close_code(), e.to_string())
    }
}

/// A decoded, validated inbound frame. Borrows the message text.
#[derive(Debug)]
pub struct Inbound<'a> {
    pub keyword: Keyword,
    /// `options.call`, when the client gave it.
    pub call: Option<CallId>,
    /// `options.traceparent`, when it is a valid one (anything else given
    /// there is ignored).
    pub traceparent: Option<TraceParent>,
    pub body: Body<'a>,
}

/// The content of an inbound frame, checked for its keyword.
#[derive(Debug)]
pub enum Body<'a> {
    Invite(Invite<'a>),
    /// `ringing`: no content.
    Empty,
    /// `offer`, `answer`, `icecandidate`: checked, relayed verbatim.
    Raw(&'a str),
    Bye(Bye<'a>),
}

#[derive(Debug)]
pub struct Invite<'a> {
    pub caller_uri: Cow<'a, str>,
    pub callee_uri: Cow<'a, str>,
    /// The invitation as the caller wrote it, relayed verbatim.
    pub raw: &'a str,
}

#[derive(Debug)]
pub struct Bye<'a> {
    pub code: ByeCode,
    pub raw: &'a str,
}

impl Body<'_> {
    /// The raw JSON text to relay, `None` for no content.
    pub fn raw(&self) -> Option<&str> {
        match self {
            Body::Invite(i) => Some(i.raw),
            Body::Empty => None,
            Body::Raw(r) => Some(r),
            Body::Bye(b) => Some(b.raw),
        }
    }

    pub fn bye_code(&self) -> Option<ByeCode> {
        match self {
            Body::Bye(b) => Some(b.code),
            _ => None,
        }
    }
}

/// The top-level array, element by element, without copying.
struct RawFrame<'a> {
    keyword: &'a RawValue,
    content: Option<&'a RawValue>,
    options: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for RawFrame<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawFrame<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of 1 to 3 elements")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let keyword = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let content = seq.next_element()?;
                let options = seq.next_element()?;
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(4, &self));
                }
                Ok(RawFrame {
                    keyword,
                    content,
                    options,
                })
            }
        }
        d.deserialize_seq(V)
    }
}

/// `T` read from a JSON object only. serde's derived structs also accept an
/// array of their fields in order (`["offer", "v=0"]` for
/// `{"type": "offer", "sdp": "v=0"}`), which would then be relayed as it is;
/// WSP content and options are objects (docs/protocol.md §3).
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Accepts any JSON string without keeping it. The string is skipped as a
/// raw value rather than decoded: an SDP is full of `\r\n` escapes, and
/// unescaping it into a scratch buffer only to drop it costs more than the
/// rest of the frame's handling.
struct AnyString;

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&RawValue>::deserialize(d)?.get();
        if raw.starts_with('"') {
            return Ok(AnyString);
        }
        let unexpected = match raw.as_bytes().first() {
            Some(b'{') => de::Unexpected::Map,
            Some(b'[') => de::Unexpected::Seq,
            Some(b't') => de::Unexpected::Bool(true),
            Some(b'f') => de::Unexpected::Bool(false),
            Some(b'n') => de::Unexpected::Unit,
            _ => de::Unexpected::Other("number"),
        };
        Err(de::Error::invalid_type(unexpected, &"a string"))
    }
}

#[derive(Deserialize)]
#[serde(expecting = "an object {uri, name?}")]
struct PartyWire<'a> {
    #[serde(borrow)]
    uri: Cow<'a, str>,
    #[allow(dead_code)] // checked for its type only
    name: Option<AnyString>,
}

#[derive(Deserialize)]
#[serde(expecting = "an object {caller, callee}")]
struct InviteWire<'a> {
    #[serde(borrow)]
    caller: Object<PartyWire<'a>>,
    #[serde(borrow)]
    callee: Object<PartyWire<'a>>,
}

#[derive(Deserialize)]
#[serde(expecting = "an RTCSessionDescriptionInit object {type, sdp}")]
struct DescriptionWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[allow(dead_code)]
    sdp: AnyString,
}

#[derive(Deserialize)]
#[serde(expecting = "an RTCIceCandidateInit object or null")]
#[allow(dead_code)] // checked for the types of its fields only
struct CandidateWire {
    candidate: Option<AnyString>,
    #[serde(rename = "sdpMid")]
    sdp_mid: Option<AnyString>,
    #[serde(rename = "sdpMLineIndex")]
    sdp_m_line_index: Option<u16>,
    #[serde(rename = "usernameFragment")]
    username_fragment: Option<AnyString>,
}

#[derive(Deserialize)]
#[serde(expecting = "an object {code, description?}")]
struct ByeWire {
    code: u16,
    #[allow(dead_code)]
    description: Option<AnyString>,
}

#[derive(Deserialize)]
#[serde(expecting = "an object")]
struct OptionsWire<'a> {
    #[serde(borrow)]
    call: Option<Cow<'a, str>>,
}

fn is_null(v: Option<&RawValue>) -> bool {
    v.is_none_or(|v| v.get() == "null")
}

/// Decodes and validates one text message.
///
/// A frame of the usual shapes is read in one hand-written pass
/// ([`decode_fast`], `frame/scan.rs`) that checks its content for its
/// keyword while it reads the array. Any frame that pass does not accept
/// is decoded again with serde_json by [`decode_checked`], which says
/// exactly what is wrong (and is the definition of what is accepted: the
/// two agree on every frame the fast pass accepts).
pub fn decode(text: &str) -> Result<Inbound<'_>, FrameError> {
    match decode_fast(text) {
        Some(f) => Ok(f),
        None => decode_checked(text),
    }
}

/// Decodes one text message in two passes (the array as raw JSON, then
/// each part), naming what is wrong with it.
#[doc(hidden)] // public for the property tests and fuzz targets
pub fn decode_checked(text: &str) -> Result<Inbound<'_>, FrameError> {
    let raw: RawFrame = serde_json::from_str(text).map_err(|e| match e.classify() {
        // The array visitor stops at the first value of the wrong type
        // (`{` of "{not json"): only JSON as a whole is "not an array".
        serde_json::error::Category::Data if serde_json::from_str::<IgnoredAny>(text).is_ok() => {
            FrameError::NotArray
        }
        _ => FrameError::NotJson,
    })?;
    let keyword: Cow<str> = serde_json::from_str(raw.keyword.get())
        .map_err(|_| FrameError::UnknownKeyword(truncate(raw.keyword.get(), 32)))?;
    let keyword = Keyword::parse(&keyword)
        .ok_or_else(|| FrameError::UnknownKeyword(truncate(&keyword, 32)))?;

    let call = options(raw.options)?;
    let traceparent = raw.options.and_then(traceparent);
    let content = raw.content.filter(|c| c.get() != "null").map(RawValue::get);
    let body = checked_body(keyword, content)?;
    Ok(Inbound {
        keyword,
        call,
        traceparent,
        body,
    })
}

/// `options.traceparent` of options already checked to be an object or
/// null: the first `traceparent` key with a string value, when that
/// string is a valid traceparent.
fn traceparent(options: &RawValue) -> Option<TraceParent> {
    struct First(Option<TraceParent>);
    impl<'de> Deserialize<'de> for First {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = First;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_unit<E: de::Error>(self) -> Result<First, E> {
                    Ok(First(None))
                }
                fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<First, A::Error> {
                    let mut found: Option<Option<TraceParent>> = None;
                    while let Some(key) = map.next_key::<Cow<str>>()? {
                        let value: &RawValue = map.next_value()?;
                        if key == "traceparent" && found.is_none() && value.get().starts_with('"') {
                            let text: Cow<str> =
                                serde_json::from_str(value.get()).map_err(de::Error::custom)?;
                            found = Some(TraceParent::parse(&text));
                        }
                    }
                    Ok(First(found.flatten()))
                }
            }
            d.deserialize_any(V)
        }
    }
    serde_json::from_str::<First>(options.get()).ok()?.0
}

/// `options.call`, when the options give it.
fn options(options: Option<&RawValue>) -> Result<Option<CallId>, FrameError> {
    Ok(if is_null(options) {
        None
    } else {
        let Object(opts): Object<OptionsWire> =
            serde_json::from_str(options.map_or("null", RawValue::get))
                .map_err(|e| FrameError::Options(short(&e)))?;
        match opts.call {
            None => None,
            Some(c) => Some(CallId::parse(&c).ok_or_else(|| {
                FrameError::Options("call must be 8-64 characters of A-Z a-z 0-9 _ -".into())
            })?),
        }
    })
}

/// The content of a `keyword` frame, checked for it and kept as raw text.
fn checked_body(keyword: Keyword, content: Option<&str>) -> Result<Body<'_>, FrameError> {
    let bad = |reason: String| FrameError::Content {
        keyword: keyword.as_str(),
        reason,
    };
    let missing = || bad("content is required".into());
    Ok(match keyword {
        Keyword::Invite => {
            let raw = content.ok_or_else(missing)?;
            let Object(w): Object<InviteWire> =
                serde_json::from_str(raw).map_err(|e| bad(short(&e)))?;
            Body::Invite(Invite {
                caller_uri: w.caller.0.uri,
                callee_uri: w.callee.0.uri,
                raw,
            })
        }
        Keyword::Ringing => {
            if let Some(c) = content
                && !c.starts_with('{')
            {
                return Err(bad("must be absent, null or an object".into()));
            }
            Body::Empty
        }
        Keyword::Offer | Keyword::Answer => {
            let raw = content.ok_or_else(missing)?;
            let Object(w): Object<DescriptionWire> =
                serde_json::from_str(raw).map_err(|e| bad(short(&e)))?;
            let ok = match keyword {
                Keyword::Offer => w.kind == "offer",
                _ => w.kind == "answer" || w.kind == "pranswer",
            };
            if !ok {
                return Err(bad(format!(
                    "type {:?} does not fit",
                    truncate(&w.kind, 16)
                )));
            }
            Body::Raw(raw)
        }
        Keyword::IceCandidate => match content {
            // null is end-of-candidates, relayed as such.
            None => Body::Raw("null"),
            Some(raw) => {
                let _: Object<CandidateWire> =
                    serde_json::from_str(raw).map_err(|e| bad(short(&e)))?;
                Body::Raw(raw)
            }
        },
        Keyword::Bye => {
            let raw = content.ok_or_else(missing)?;
            let Object(w): Object<ByeWire> =
                serde_json::from_str(raw).map_err(|e| bad(short(&e)))?;
            let code = ByeCode::new(w.code).ok_or_else(|| bad("code must be 100-699".into()))?;
            Body::Bye(Bye { code, raw })
        }
    })
}

fn short(e: &serde_json::Error) -> String {
    // serde_json appends " at line 1 column N"; the column is useful, keep it.
    truncate(&e.to_string(), 100)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Builds an outbound frame `[keyword, content, {"call": id}]` from raw
/// content text. One allocation.
pub fn encode(keyword: Keyword, content: Option<&str>, call: &CallId) -> Utf8Bytes {
    let content = content.unwrap_or("null");
    let kw = keyword.as_str();
    let id = call.as_str();
    // Exactly the frame's length: a `String` whose length is its capacity
    // becomes `Bytes` without a second allocation for a shared header.
    let mut s = String::with_capacity(kw.len() + content.len() + id.len() + 17);
    s.push_str("[\"");
    s.push_str(kw);
    s.push_str("\",");
    s.push_str(content);
    // Call ids are restricted to [A-Za-z0-9_-]: nothing to escape.
    s.push_str(",{\"call\":\"");
    s.push_str(id);
    s.push_str("\"}]");
    debug_assert_eq!(s.len(), s.capacity());
    Utf8Bytes::from(s)
}

/// Builds an `invite` sent on by the server:
/// `["invite", content, {"call": id, "traceparent": TRACEPARENT}]`, the
/// trace context being the server's own (its span of the call as the
/// parent). One allocation.
pub fn encode_invite(content: &str, call: &CallId, traceparent: &TraceParent) -> Utf8Bytes {
    let id = call.as_str();
    // Exactly the frame's length, as in `encode`.
    let mut s = String::with_capacity(content.len() + id.len() + 95);
    s.push_str("[\"invite\",");
    s.push_str(content);
    s.push_str(",{\"call\":\"");
    s.push_str(id);
    // A traceparent is hex digits and dashes: nothing to escape.
    s.push_str("\",\"traceparent\":\"");
    traceparent.push_to(&mut s);
    s.push_str("\"}]");
    debug_assert_eq!(s.len(), s.capacity());
    Utf8Bytes::from(s)
}

/// The content of a server's bye: `{"code": N, "description": TEXT}`.
pub fn bye_content(bye: ServerBye) -> String {
    serde_json::json!({ "code": bye.code.get(), "description": bye.description }).to_string()
}

/// Builds a server-generated `bye`. Without a call id (a frame that named
/// no call, on a socket where none could be implied) it has no options.
pub fn encode_bye(bye: ServerBye, call: Option<&CallId>) -> Utf8Bytes {
    let content = bye_content(bye);
    match call {
        Some(call) => encode(Keyword::Bye, Some(&content), call),
        None => Utf8Bytes::from(format!("[\"bye\",{content}]")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> FrameError {
        decode(text).unwrap_err()
    }

    #[test]
    fn decodes_an_invite_and_keeps_it_verbatim() {
        let text = r#"["invite",{"caller":{"uri":"alice@a.test","name":"Alice"},"callee":{"uri":"bob@b.test"}},{"call":"abcdefgh"}]"#;
        let f = decode(text).unwrap();
        assert_eq!(f.keyword, Keyword::Invite);
        assert_eq!(f.call.unwrap().as_str(), "abcdefgh");
        match f.body {
            Body::Invite(i) => {
                assert_eq!(i.caller_uri, "alice@a.test");
                assert_eq!(i.callee_uri, "bob@b.test");
                assert!(i.raw.starts_with("{\"caller\""));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn content_and_options_may_be_left_out_or_null() {
        assert!(matches!(
            decode(r#"["ringing"]"#).unwrap().body,
            Body::Empty
        ));
        assert!(decode(r#"["ringing",null,null]"#).unwrap().call.is_none());
        assert!(matches!(
            decode(r#"["icecandidate",null]"#).unwrap().body,
            Body::Raw("null")
        ));
    }

    #[test]
    fn sdp_passes_through_unmodified() {
        let sdp = r#"{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n\u00e9"}"#;
        let text = format!(r#"["offer",{sdp}]"#);
        let f = decode(&text).unwrap();
        assert_eq!(f.body.raw(), Some(sdp));
        let out = encode(f.keyword, f.body.raw(), &CallId::parse("abcdefgh").unwrap());
        assert_eq!(
            out.as_str(),
            format!(r#"["offer",{sdp},{{"call":"abcdefgh"}}]"#)
        );
        let v: serde_json::Value = serde_json::from_str(out.as_str()).unwrap();
        assert_eq!(v[2]["call"], "abcdefgh");
    }

    /// The fast reading accepts only what the checked one accepts, with
    /// the same result, whitespace and all; it accepts the shapes browsers
    /// send, and leaves escaped names and the like to the checked one.
    #[test]
    fn fast_reading_agrees_with_the_checked_decoding() {
        let sdp = r#"{"type":"offer","sdp":"v=0\r\na=x:\"y\"\r\n\u00e9\ud800\/"}"#;
        let usual = [
            r#"["invite",{"caller":{"uri":"alice@a.test","name":"A"},"callee":{"uri":"Bob@B.test"},"x":[1,{"y":-1.5e3},true,false,null,"z"]},{"call":"abcdefgh"}]"#.to_string(),
            format!(r#"["offer",{sdp},{{"call":"abcdefgh"}}]"#),
            format!("[\"offer\"\n,\t{sdp}\r\n, {{\"call\":\"abcdefgh\",\"x\":null}} ]"),
            format!(r#"["offer",{sdp}]"#),
            format!(r#"["offer",{sdp},null]"#),
            r#"["answer",{"sdp":"v=0","type":"pranswer"},{"call":"abcdefgh"}]"#.to_string(),
            r#"["icecandidate",{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":null},{"call":"abcdefgh"}]"#.to_string(),
            r#"["icecandidate",{"candidate":"","sdpMLineIndex":65535}]"#.to_string(),
            r#"["icecandidate",null,{"call":"abcdefgh"}]"#.to_string(),
            r#"["icecandidate"]"#.to_string(),
            r#"["ringing"]"#.to_string(),
            r#"["ringing",null,null]"#.to_string(),
            r#"["ringing",{"a":1},{}]"#.to_string(),
            r#"["ringing",{},{"call":null}]"#.to_string(),
            r#"["bye",{"code":101,"description":"Transferred"},{"call":"abcdefgh"}]"#.to_string(),
            r#"["bye",{"code":486}]"#.to_string(),
            r#"  [ "bye" , { "code" : 200 , "description" : null } ]  "#.to_string(),
        ];
        // Valid, but left to the checked decoding.
        let unusual = [
            r#"["invite",{"caller":{"uri":"a\u0040a.test"},"callee":{"uri":"b@b.test"}}]"#,
            r#"["\u006fffer",{"type":"offer","sdp":""}]"#,
            r#"["offer",{"type":"offer","sdp":"","\u0061":1}]"#,
            r#"["offer",{"type":"offer","sdp":"","x":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}]"#,
            r#"["bye",{"code":486},{"call":"abcd\u0065fgh"}]"#,
        ];
        for text in usual.iter().map(String::as_str).chain(unusual) {
            let checked = decode_checked(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let Some(fast) = decode_fast(text) else {
                assert!(unusual.contains(&text), "the fast reading refused {text}");
                continue;
            };
            assert!(!unusual.contains(&text), "the fast reading accepted {text}");
            assert_eq!(fast.keyword, checked.keyword, "{text}");
            assert_eq!(fast.call, checked.call, "{text}");
            assert_eq!(fast.traceparent, checked.traceparent, "{text}");
            assert_eq!(fast.body.raw(), checked.body.raw(), "{text}");
            assert_eq!(fast.body.bye_code(), checked.body.bye_code(), "{text}");
            if let (Body::Invite(a), Body::Invite(b)) = (&fast.body, &checked.body) {
                assert_eq!(
                    (&a.caller_uri, &a.callee_uri),
                    (&b.caller_uri, &b.callee_uri)
                );
            }
        }
        let bad = [
            "not json",
            "[]",
            "{}",
            r#"["hello"]"#,
            r#"["offer"]"#,
            r#"["offer",{"type":"answer","sdp":""}]"#,
            r#"["offer",{"type":"offer","sdp":5}]"#,
            r#"["offer",["offer","v=0"]]"#,
            r#"["answer",{"type":"answer"}]"#,
            r#"["bye",{"code":99}]"#,
            r#"["bye",null]"#,
            r#"["invite",null]"#,
            r#"["ringing",5]"#,
            r#"["ringing",null,[]]"#,
            r#"["ringing",null,{"call":"short"}]"#,
            r#"["ringing",null,{},4]"#,
            r#"["icecandidate",{"sdpMLineIndex":"x"}]"#,
            r#"["offer",{"type":"offer","sdp":"v=0"},{"call":"abcdefgh"}"#,
            r#"["offer",{"type":"offer","sdp":"a\qb"}]"#,
            r#"["offer",{"type":"offer","sdp":"a\u12"}]"#,
            "[\"offer\",{\"type\":\"offer\",\"sdp\":\"a\u{1}b\"}]",
            r#"["offer",{"type":"offer","sdp":"v=0","sdp":"v=0"}]"#,
            r#"["bye",{"code":486,"code":486}]"#,
            r#"["bye",{"code":0486}]"#,
            r#"["bye",{"code":1e2}]"#,
            r#"["bye",{"code":486.0}]"#,
            r#"["bye",{"code":70000}]"#,
            r#"["icecandidate",{"sdpMLineIndex":-1}]"#,
            r#"["ringing",{"a":01}]"#,
            r#"["ringing",{"a":1.}]"#,
            r#"["ringing",{"a":tru}]"#,
            r#"["ringing"] x"#,
            r#"["ringing",{},{"call":"abcdefgh","call":"abcdefgh"}]"#,
        ];
        for text in bad {
            assert!(decode_fast(text).is_none(), "one pass accepted {text}");
            assert!(decode(text).is_err(), "{text}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(err("not json"), FrameError::NotJson);
        assert_eq!(err("[\"bye\""), FrameError::NotJson);
        assert_eq!(err("{}"), FrameError::NotArray);
        assert_eq!(err("{not json"), FrameError::NotJson);
        assert_eq!(err("42 x"), FrameError::NotJson);
        assert_eq!(err("[1,2,3,4,"), FrameError::NotJson);
        assert_eq!(err("[]"), FrameError::NotArray);
        assert_eq!(err("[1,2,3,4]"), FrameError::NotArray);
        assert_eq!(
            err("[\"hello\"]"),
            FrameError::UnknownKeyword("hello".into())
        );
        assert!(matches!(err("[42]"), FrameError::UnknownKeyword(_)));
        assert!(matches!(err("[\"invite\"]"), FrameError::Content { .. }));
        assert!(matches!(
            err(r#"["invite",{"caller":{"uri":1},"callee":{"uri":"b@b"}}]"#),
            FrameError::Content { .. }
        ));
        assert!(matches!(
            err(r#"["offer",{"type":"answer","sdp":""}]"#),
            FrameError::Content { .. }
        ));
        assert!(matches!(
            err(r#"["offer","sdp"]"#),
            FrameError::Content { .. }
        ));
        // String fields are checked for their type without being decoded.
        for bad in [
            r#"["offer",{"type":"offer","sdp":5}]"#,
            r#"["offer",{"type":"offer","sdp":{"a":"b"}}]"#,
            r#"["icecandidate",{"candidate":["x"]}]"#,
            r#"["bye",{"code":200,"description":true}]"#,
            r#"["invite",{"caller":{"uri":"a@a.test","name":null},"callee":{"uri":"b@b.test","name":7}}]"#,
        ] {
            match err(bad) {
                FrameError::Content { reason, .. } => {
                    assert!(reason.contains("expected a string"), "{bad}: {reason}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(decode(r#"["offer",{"type":"offer","sdp":"v=0\r\n\u00e9\"x\""}]"#).is_ok());
        assert!(matches!(
            err(r#"["icecandidate",{"sdpMLineIndex":"x"}]"#),
            FrameError::Content { .. }
        ));
        assert!(matches!(
            err(r#"["bye",{"code":99}]"#),
            FrameError::Content { .. }
        ));
        assert!(matches!(err(r#"["bye",{}]"#), FrameError::Content { .. }));
        assert!(matches!(
            err(r#"["ringing",5]"#),
            FrameError::Content { .. }
        ));
        assert!(matches!(
            err(r#"["ringing",null,[]]"#),
            FrameError::Options(_)
        ));
        assert!(matches!(
            err(r#"["ringing",null,{"call":"short"}]"#),
            FrameError::Options(_)
        ));
        assert_eq!(FrameError::NotJson.close_code().get(), 1007);
        assert_eq!(FrameError::NotArray.close_code().get(), 1002);
    }

    #[test]
    fn traceparent_is_read_when_valid_and_otherwise_ignored() {
        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let inv = r#"["invite",{"caller":{"uri":"a@a.test"},"callee":{"uri":"b@b.test"}},"#;
        let with = |options: &str| format!("{inv}{options}]");
        let valid = TraceParent::parse(TP);
        assert!(valid.is_some());
        let cases: [(String, Option<TraceParent>); 9] = [
            (
                with(&format!(r#"{{"call":"abcdefgh","traceparent":"{TP}"}}"#)),
                valid,
            ),
            (
                with(&format!(r#"{{"traceparent":"{TP}","call":"abcdefgh"}}"#)),
                valid,
            ),
            // Anything but a valid traceparent is ignored, never refused.
            (with(r#"{"traceparent":"00-nope"}"#), None),
            (with(r#"{"traceparent":5}"#), None),
            (with(r#"{"traceparent":{"a":[1]}}"#), None),
            (with(r#"{"traceparent":null}"#), None),
            (
                with(&format!(r#"{{"traceparent":"{}"}}"#, "f".repeat(5000))),
                None,
            ),
            // The first string given is the one read.
            (
                with(&format!(r#"{{"traceparent":"x","traceparent":"{TP}"}}"#)),
                None,
            ),
            (
                with(&format!(r#"{{"traceparent":1,"traceparent":"{TP}"}}"#)),
                valid,
            ),
        ];
        for (text, want) in &cases {
            let fast = decode_fast(text).unwrap_or_else(|| panic!("fast: {text}"));
            let checked = decode_checked(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(fast.traceparent, *want, "{text}");
            assert_eq!(checked.traceparent, *want, "{text}");
        }
        // Escaped: left to the checked decoding, which unescapes it.
        let escaped = with(&format!(r#"{{"traceparent":"\u0030{}"}}"#, &TP[1..]));
        assert!(decode_fast(&escaped).is_none());
        assert_eq!(decode(&escaped).unwrap().traceparent, valid);
    }

    #[test]
    fn an_invite_sent_on_carries_the_servers_traceparent() {
        let tp =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let content = r#"{"caller":{"uri":"a@a.test"},"callee":{"uri":"b@b.test"}}"#;
        let id = CallId::parse("abcdefgh").unwrap();
        let text = encode_invite(content, &id, &tp);
        let back = decode(text.as_str()).unwrap();
        assert_eq!(back.traceparent, Some(tp));
        assert_eq!(back.call, Some(id));
        assert_eq!(back.body.raw(), Some(content));
    }

    #[test]
    fn server_bye_is_json() {
        let quoted = ServerBye {
            code: ByeCode::CANCELLED,
            description: "Cancelled \"now\"",
        };
        let b = encode_bye(quoted, Some(&CallId::parse("abcdefgh").unwrap()));
        let v: serde_json::Value =
            serde_json::from_str(encode_bye(ServerBye::NO_SUCH_CALL, None).as_str()).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        let v: serde_json::Value = serde_json::from_str(b.as_str()).unwrap();
        assert_eq!(v[0], "bye");
        assert_eq!(v[1]["code"], 487);
        assert_eq!(v[1]["description"], "Cancelled \"now\"");
    }
}
