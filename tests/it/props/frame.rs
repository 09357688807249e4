//! Properties of the frame codec (`wspd::frame`): frames built part by
//! part decode exactly when they are valid, any text decodes or is refused
//! with the right close code, and what decodes re-encodes byte for byte.
//! Then the cases these properties found, kept as plain tests.

use proptest::prelude::*;

use super::config;

mod codec {
    use std::fmt::Write;

    use proptest::prelude::*;
    use serde_json::value::RawValue;
    use wspd::address::CallId;
    use wspd::frame::{self, Body, FrameError, Keyword};

    /// A JSON string literal and the string it means. The literal mixes
    /// every way of writing a character: as itself (any Unicode), short
    /// escapes, `\uXXXX` (surrogate pairs above the BMP, either case), `\/`.
    #[derive(Clone, Debug)]
    pub struct JStr {
        pub value: String,
        pub lit: String,
    }

    impl JStr {
        pub fn plain(s: &str) -> JStr {
            JStr {
                value: s.to_string(),
                lit: serde_json::to_string(s).unwrap(),
            }
        }
    }

    fn u_escape(lit: &mut String, c: char, upper: bool) {
        let mut buf = [0u16; 2];
        for u in c.encode_utf16(&mut buf) {
            if upper {
                write!(lit, "\\u{u:04X}").unwrap();
            } else {
                write!(lit, "\\u{u:04x}").unwrap();
            }
        }
    }

    fn render_str(chars: &[(char, u8)]) -> JStr {
        let mut value = String::new();
        let mut lit = String::from("\"");
        for &(c, style) in chars {
            value.push(c);
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                '\u{8}' => Some("\\b"),
                '\u{c}' => Some("\\f"),
                '/' if style % 2 == 0 => Some("\\/"),
                _ => None,
            };
            match (short, style % 3) {
                (_, 0) => u_escape(&mut lit, c, style % 2 == 1),
                (Some(s), _) => lit.push_str(s),
                (None, _) if (c as u32) < 0x20 => u_escape(&mut lit, c, false),
                (None, _) => lit.push(c),
            }
        }
        lit.push('"');
        JStr { value, lit }
    }

    fn any_char() -> impl Strategy<Value = char> {
        prop_oneof![
            6 => proptest::char::range(' ', '~'),
            2 => any::<char>(),
            2 => proptest::sample::select(vec![
                '"', '\\', '/', '\n', '\r', '\t', '\u{0}', '\u{8}', '\u{1f}', '\u{7f}',
                'é', '\u{2028}', '\u{feff}', '\u{ffff}', '😀', '\u{10ffff}',
            ]),
        ]
    }

    /// Any string, written with a random mix of escapes.
    pub fn jstr() -> impl Strategy<Value = JStr> {
        proptest::collection::vec((any_char(), any::<u8>()), 0..16).prop_map(|v| render_str(&v))
    }

    /// A given string, written with a random mix of escapes.
    fn jstr_of(s: &'static str) -> impl Strategy<Value = JStr> {
        proptest::collection::vec(any::<u8>(), s.chars().count()).prop_map(move |styles| {
            let v: Vec<(char, u8)> = s.chars().zip(styles).collect();
            render_str(&v)
        })
    }

    /// A JSON value, as far as wspd cares.
    #[derive(Clone, Debug)]
    pub enum V {
        Null,
        Bool(bool),
        Int(i64),
        /// A number with a fraction: never an integer.
        Frac(String),
        Str(JStr),
        Arr(Vec<V>),
        Obj(Obj),
    }

    /// An object, its members in the order written. Keys are unique (wspd
    /// refuses duplicate keys of the fields it reads; that is not what these
    /// properties are about).
    #[derive(Clone, Debug)]
    pub struct Obj {
        pub members: Vec<(JStr, V)>,
        pub ws: &'static str,
    }

    impl Obj {
        fn get(&self, key: &str) -> Option<&V> {
            self.members
                .iter()
                .find(|(k, _)| k.value == key)
                .map(|(_, v)| v)
        }
    }

    impl V {
        pub fn render(&self, out: &mut String) {
            match self {
                V::Null => out.push_str("null"),
                V::Bool(b) => write!(out, "{b}").unwrap(),
                V::Int(i) => write!(out, "{i}").unwrap(),
                V::Frac(f) => out.push_str(f),
                V::Str(s) => out.push_str(&s.lit),
                V::Arr(items) => {
                    out.push('[');
                    for (i, v) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        v.render(out);
                    }
                    out.push(']');
                }
                V::Obj(o) => {
                    out.push('{');
                    for (i, (k, v)) in o.members.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        write!(out, "{ws}{}{ws}:{ws}", k.lit, ws = o.ws).unwrap();
                        v.render(out);
                        out.push_str(o.ws);
                    }
                    out.push('}');
                }
            }
        }

        pub fn text(&self) -> String {
            let mut s = String::new();
            self.render(&mut s);
            s
        }

        fn is_str(&self) -> bool {
            matches!(self, V::Str(_))
        }
    }

    fn ws() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(vec!["", "", "", " ", "\n", "\t ", "\r\n  "])
    }

    /// Every key wspd reads somewhere: random extra members avoid them.
    const KNOWN: [&str; 13] = [
        "caller",
        "callee",
        "uri",
        "name",
        "type",
        "sdp",
        "candidate",
        "sdpMid",
        "sdpMLineIndex",
        "usernameFragment",
        "code",
        "description",
        "call",
    ];

    pub fn value() -> impl Strategy<Value = V> {
        let leaf = prop_oneof![
            Just(V::Null),
            any::<bool>().prop_map(V::Bool),
            any::<i64>().prop_map(V::Int),
            (-1000i32..1000, 1u32..1000).prop_map(|(i, f)| V::Frac(format!("{i}.{f:03}"))),
            jstr().prop_map(V::Str),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(V::Arr),
                (proptest::collection::vec((jstr(), inner), 0..4), ws())
                    .prop_map(|(members, ws)| V::Obj(object(Vec::new(), members, ws))),
            ]
        })
    }

    /// An object of the `known` members plus `extra` ones whose keys are
    /// neither known to wspd nor repeated.
    fn object(known: Vec<(JStr, V)>, extra: Vec<(JStr, V)>, ws: &'static str) -> Obj {
        let mut members = known;
        for (k, v) in extra {
            if !KNOWN.contains(&k.value.as_str())
                && !members.iter().any(|(m, _)| m.value == k.value)
            {
                members.push((k, v));
            }
        }
        Obj { members, ws }
    }

    /// An object with these fields (each present or not) in a random order,
    /// plus random other members.
    fn fields(known: Vec<(&'static str, BoxedStrategy<Option<V>>)>) -> impl Strategy<Value = Obj> {
        let known: Vec<_> = known
            .into_iter()
            .map(|(name, s)| (jstr_of(name), s))
            .collect();
        (
            known,
            proptest::collection::vec((jstr(), value()), 0..3),
            ws(),
        )
            .prop_flat_map(|(known, extra, ws)| {
                let known: Vec<(JStr, V)> = known
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .collect();
                Just(object(known, extra, ws).members)
                    .prop_shuffle()
                    .prop_map(move |members| Obj { members, ws })
            })
    }

    /// Mostly `good`, sometimes absent, sometimes any value at all.
    fn field(good: BoxedStrategy<V>) -> BoxedStrategy<Option<V>> {
        prop_oneof![
            8 => good.prop_map(Some),
            1 => Just(None),
            1 => value().prop_map(Some),
        ]
        .boxed()
    }

    fn string() -> BoxedStrategy<V> {
        jstr().prop_map(V::Str).boxed()
    }

    fn opt_string() -> BoxedStrategy<V> {
        prop_oneof![3 => string(), 1 => Just(V::Null)].boxed()
    }

    fn one_of(words: &'static [&'static str]) -> BoxedStrategy<V> {
        proptest::sample::select(words)
            .prop_flat_map(jstr_of)
            .prop_map(V::Str)
            .boxed()
    }

    fn party() -> BoxedStrategy<V> {
        fields(vec![
            ("uri", field(string())),
            ("name", field(opt_string())),
        ])
        .prop_map(V::Obj)
        .boxed()
    }

    fn invite() -> BoxedStrategy<V> {
        fields(vec![("caller", field(party())), ("callee", field(party()))])
            .prop_map(V::Obj)
            .boxed()
    }

    fn description() -> BoxedStrategy<V> {
        fields(vec![
            (
                "type",
                field(one_of(
                    &["offer", "answer", "pranswer", "rollback", "Offer"][..],
                )),
            ),
            ("sdp", field(string())),
        ])
        .prop_map(V::Obj)
        .boxed()
    }

    fn candidate() -> BoxedStrategy<V> {
        let index = prop_oneof![
            4 => (0i64..=65535).prop_map(V::Int),
            1 => Just(V::Null),
            1 => prop_oneof![Just(-1i64), Just(65536), Just(70000)].prop_map(V::Int),
            1 => Just(V::Str(JStr::plain("0"))),
        ]
        .boxed();
        fields(vec![
            ("candidate", field(opt_string())),
            ("sdpMid", field(opt_string())),
            ("sdpMLineIndex", field(index)),
            ("usernameFragment", field(opt_string())),
        ])
        .prop_map(V::Obj)
        .boxed()
    }

    fn bye() -> BoxedStrategy<V> {
        let code = prop_oneof![
            4 => (100i64..=699).prop_map(V::Int),
            1 => prop_oneof![Just(0i64), Just(99), Just(700), Just(-1), Just(65636)].prop_map(V::Int),
            1 => Just(V::Frac("200.5".into())),
            1 => Just(V::Str(JStr::plain("200"))),
        ]
        .boxed();
        fields(vec![
            ("code", field(code)),
            ("description", field(opt_string())),
        ])
        .prop_map(V::Obj)
        .boxed()
    }

    /// An array holding a struct's fields in order: serde would take it
    /// for the struct; WSP content and options are objects only.
    fn struct_as_array() -> BoxedStrategy<V> {
        let s = || V::Str(JStr::plain("x"));
        prop_oneof![
            Just(V::Arr(vec![V::Int(200), V::Null])),
            Just(V::Arr(vec![V::Str(JStr::plain("offer")), s()])),
            Just(V::Arr(vec![V::Str(JStr::plain("answer")), s()])),
            Just(V::Arr(vec![s(), s(), V::Int(0), s()])),
            Just(V::Arr(vec![
                V::Arr(vec![V::Str(JStr::plain("a@a.test")), V::Null]),
                V::Arr(vec![V::Str(JStr::plain("b@b.test")), V::Null]),
            ])),
            Just(V::Arr(vec![V::Str(JStr::plain("abcdefgh"))])),
        ]
        .boxed()
    }

    /// The content element: shaped for some keyword, or anything.
    fn content() -> impl Strategy<Value = Option<V>> {
        prop_oneof![
            3 => invite().prop_map(Some),
            6 => description().prop_map(Some),
            3 => candidate().prop_map(Some),
            4 => bye().prop_map(Some),
            1 => struct_as_array().prop_map(Some),
            1 => value().prop_map(Some),
            1 => Just(Some(V::Null)),
            1 => Just(None),
        ]
    }

    fn call_id() -> impl Strategy<Value = JStr> {
        prop_oneof![
            4 => "[A-Za-z0-9_-]{8,64}".prop_map(|s| JStr::plain(&s)),
            1 => "[A-Za-z0-9_-]{0,7}".prop_map(|s| JStr::plain(&s)),
            1 => "[A-Za-z0-9_-]{65,70}".prop_map(|s| JStr::plain(&s)),
            1 => "[A-Za-z0-9_ .!é-]{8,12}".prop_map(|s| JStr::plain(&s)),
            // Escaped, but a fine id once decoded.
            1 => "[A-Za-z0-9]{8}".prop_flat_map(|s| {
                proptest::collection::vec(any::<u8>(), 8).prop_map(move |st| {
                    let v: Vec<(char, u8)> = s.chars().zip(st).collect();
                    render_str(&v)
                })
            }),
        ]
    }

    fn options() -> impl Strategy<Value = Option<V>> {
        let call = prop_oneof![
            6 => call_id().prop_map(V::Str),
            1 => Just(V::Null),
            1 => value(),
        ]
        .boxed();
        prop_oneof![
            6 => fields(vec![("call", field(call))]).prop_map(|o| Some(V::Obj(o))),
            2 => Just(None),
            1 => Just(Some(V::Null)),
            1 => struct_as_array().prop_map(Some),
            1 => value().prop_map(Some),
        ]
    }

    #[derive(Clone, Debug)]
    pub enum Kw {
        /// One of the six, possibly written with escapes.
        Known(Keyword, JStr),
        Other(V),
    }

    fn keyword() -> impl Strategy<Value = Kw> {
        prop_oneof![
            12 => proptest::sample::select(Keyword::ALL.to_vec()).prop_flat_map(|k| {
                prop_oneof![
                    3 => Just(JStr::plain(k.as_str())),
                    1 => jstr_of(k.as_str()),
                ]
                .prop_map(move |s| Kw::Known(k, s))
            }),
            1 => proptest::sample::select(vec!["INVITE", "hello", "Bye", "invite ", ""])
                .prop_map(|s| Kw::Other(V::Str(JStr::plain(s)))),
            1 => value().prop_map(Kw::Other),
        ]
    }

    /// A frame as the elements of its array: `content` and `options`
    /// `None` are left out (content written as `null` when options follow).
    #[derive(Clone, Debug)]
    pub struct Frame {
        pub keyword: Kw,
        pub content: Option<V>,
        pub options: Option<V>,
        /// A fourth element (never valid).
        pub extra: Option<V>,
        /// Whitespace around the elements.
        pub ws: [&'static str; 8],
    }

    pub fn frame() -> impl Strategy<Value = Frame> {
        (
            keyword(),
            content(),
            options(),
            proptest::option::weighted(0.05, value()),
            proptest::array::uniform8(ws()),
        )
            .prop_map(|(keyword, content, options, extra, ws)| Frame {
                keyword,
                content,
                options,
                extra,
                ws,
            })
    }

    impl Frame {
        /// The text, and the text of the content element when written.
        pub fn render(&self) -> (String, Option<String>) {
            let w = self.ws;
            let mut s = format!("{}[{}", w[0], w[1]);
            match &self.keyword {
                Kw::Known(_, lit) => s.push_str(&lit.lit),
                Kw::Other(v) => v.render(&mut s),
            }
            let content = self
                .content
                .as_ref()
                .or(self.options.as_ref().map(|_| &V::Null))
                .or(self.extra.as_ref().map(|_| &V::Null))
                .map(V::text);
            if let Some(c) = &content {
                write!(s, "{}, {}{c}", w[2], w[3]).unwrap();
            }
            let options = self
                .options
                .as_ref()
                .or(self.extra.as_ref().map(|_| &V::Null));
            if let Some(o) = options {
                write!(s, "{},{}{}", w[4], w[5], o.text()).unwrap();
            }
            if let Some(x) = &self.extra {
                write!(s, ",{}", x.text()).unwrap();
            }
            write!(s, "{}]{}", w[6], w[7]).unwrap();
            (s, content)
        }
    }

    /// Which part of a frame is wrong.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Bad {
        Shape,
        Keyword,
        Content,
        Options,
    }

    /// What decoding must give, from docs/protocol.md §1 and §3.
    #[derive(Debug)]
    pub struct Expected {
        pub keyword: Keyword,
        pub call: Option<String>,
        /// `Body::raw()`: the content text verbatim, `"null"` for an
        /// end-of-candidates, `None` for ringing.
        pub raw: Option<String>,
        pub uris: Option<(String, String)>,
        pub code: Option<u16>,
    }

    fn opt(v: Option<&V>, ok: impl Fn(&V) -> bool) -> bool {
        match v {
            None | Some(V::Null) => true,
            Some(v) => ok(v),
        }
    }

    fn obj(v: Option<&V>) -> Option<&Obj> {
        match v {
            Some(V::Obj(o)) => Some(o),
            _ => None,
        }
    }

    fn party_uri(v: Option<&V>) -> Option<String> {
        let o = obj(v)?;
        match (o.get("uri"), opt(o.get("name"), V::is_str)) {
            (Some(V::Str(u)), true) => Some(u.value.clone()),
            _ => None,
        }
    }

    fn is_u16(v: &V) -> bool {
        matches!(v, V::Int(i) if (0..=65535).contains(i))
    }

    impl Frame {
        /// The model: `Ok` with what decoding gives, or every wrong part.
        pub fn expected(&self, content_text: Option<&str>) -> Result<Expected, Vec<Bad>> {
            if self.extra.is_some() {
                return Err(vec![Bad::Shape]);
            }
            let mut bad = Vec::new();
            let keyword = match &self.keyword {
                Kw::Known(k, _) => Some(*k),
                Kw::Other(V::Str(s)) if Keyword::ALL.iter().any(|k| k.as_str() == s.value) => {
                    Keyword::ALL.into_iter().find(|k| k.as_str() == s.value)
                }
                Kw::Other(_) => {
                    bad.push(Bad::Keyword);
                    None
                }
            };
            let call = match &self.options {
                None | Some(V::Null) => None,
                Some(V::Obj(o)) => match o.get("call") {
                    None | Some(V::Null) => None,
                    Some(V::Str(s)) if CallId::parse(&s.value).is_some() => Some(s.value.clone()),
                    Some(_) => {
                        bad.push(Bad::Options);
                        None
                    }
                },
                Some(_) => {
                    bad.push(Bad::Options);
                    None
                }
            };
            let c = match &self.content {
                Some(V::Null) => None,
                c => c.as_ref(),
            };
            let text = || content_text.map(str::to_string);
            let (mut raw, mut uris, mut code) = (None, None, None);
            let ok = match keyword {
                None => true,
                Some(Keyword::Invite) => {
                    let o = obj(c);
                    let caller = party_uri(o.and_then(|o| o.get("caller")));
                    let callee = party_uri(o.and_then(|o| o.get("callee")));
                    raw = text();
                    uris = caller.zip(callee);
                    uris.is_some()
                }
                Some(Keyword::Ringing) => c.is_none() || obj(c).is_some(),
                Some(k @ (Keyword::Offer | Keyword::Answer)) => {
                    let types: &[&str] = match k {
                        Keyword::Offer => &["offer"],
                        _ => &["answer", "pranswer"],
                    };
                    raw = text();
                    obj(c).is_some_and(|o| {
                        matches!(o.get("type"), Some(V::Str(t)) if types.contains(&t.value.as_str()))
                            && matches!(o.get("sdp"), Some(V::Str(_)))
                    })
                }
                Some(Keyword::IceCandidate) => match c {
                    None => {
                        raw = Some("null".into());
                        true
                    }
                    Some(V::Obj(o)) => {
                        raw = text();
                        ["candidate", "sdpMid", "usernameFragment"]
                            .iter()
                            .all(|k| opt(o.get(k), V::is_str))
                            && opt(o.get("sdpMLineIndex"), is_u16)
                    }
                    Some(_) => false,
                },
                Some(Keyword::Bye) => {
                    raw = text();
                    obj(c).is_some_and(|o| {
                        code = match o.get("code") {
                            Some(V::Int(i)) if (100..=699).contains(i) => Some(*i as u16),
                            _ => None,
                        };
                        code.is_some() && opt(o.get("description"), V::is_str)
                    })
                }
            };
            if !ok {
                bad.push(Bad::Content);
            }
            if !bad.is_empty() {
                return Err(bad);
            }
            Ok(Expected {
                keyword: keyword.unwrap(),
                call,
                raw,
                uris,
                code,
            })
        }
    }

    pub fn bad_part(e: &FrameError) -> Bad {
        match e {
            FrameError::NotJson => panic!("generated frames are JSON: {e}"),
            FrameError::NotArray => Bad::Shape,
            FrameError::UnknownKeyword(_) => Bad::Keyword,
            FrameError::Content { .. } => Bad::Content,
            FrameError::Options(_) => Bad::Options,
        }
    }

    /// The fast reading of a frame accepts only what the checked decoding
    /// accepts, with the same keyword, call id, content text and code.
    pub fn fast_agrees(text: &str) -> Result<(), TestCaseError> {
        let Some(fast) = frame::decode_fast(text) else {
            return Ok(());
        };
        let checked = frame::decode_checked(text).map_err(|e| {
            TestCaseError::fail(format!(
                "{text}: the fast reading accepted what the checked decoding refuses: {e}"
            ))
        })?;
        prop_assert_eq!(fast.keyword, checked.keyword, "{}", text);
        prop_assert_eq!(&fast.call, &checked.call, "{}", text);
        prop_assert_eq!(fast.body.raw(), checked.body.raw(), "{}", text);
        prop_assert_eq!(fast.body.bye_code(), checked.body.bye_code(), "{}", text);
        if let (Body::Invite(a), Body::Invite(b)) = (&fast.body, &checked.body) {
            prop_assert_eq!(&a.caller_uri, &b.caller_uri, "{}", text);
            prop_assert_eq!(&a.callee_uri, &b.callee_uri, "{}", text);
        }
        Ok(())
    }

    /// `encode` of a decoded frame is `[keyword, content, {"call": id}]`
    /// with the content text byte for byte, and decodes to the same frame.
    pub fn reencode(text: &str) -> Result<(), TestCaseError> {
        let f = frame::decode(text).unwrap();
        let id = f
            .call
            .clone()
            .unwrap_or_else(|| CallId::parse("prop-call-id").unwrap());
        let out = frame::encode(f.keyword, f.body.raw(), &id);
        let parts: Vec<&RawValue> = serde_json::from_str(out.as_str())
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", out.as_str())))?;
        prop_assert_eq!(parts.len(), 3);
        prop_assert_eq!(
            serde_json::from_str::<String>(parts[0].get()).unwrap(),
            f.keyword.as_str()
        );
        prop_assert_eq!(parts[1].get(), f.body.raw().unwrap_or("null"));
        prop_assert_eq!(
            serde_json::from_str::<serde_json::Value>(parts[2].get()).unwrap(),
            serde_json::json!({ "call": id.as_str() })
        );
        let again = frame::decode(out.as_str()).unwrap();
        prop_assert_eq!(again.keyword, f.keyword);
        prop_assert_eq!(again.call.as_ref(), Some(&id));
        prop_assert_eq!(again.body.raw(), f.body.raw());
        prop_assert_eq!(again.body.bye_code(), f.body.bye_code());
        Ok(())
    }

    pub fn check_frame(f: &Frame) -> Result<(), TestCaseError> {
        let (text, content_text) = f.render();
        fast_agrees(&text)?;
        let got = frame::decode(&text);
        match (f.expected(content_text.as_deref()), got) {
            (Ok(want), Ok(got)) => {
                prop_assert_eq!(got.keyword, want.keyword, "{}", text);
                prop_assert_eq!(
                    got.call.as_ref().map(CallId::as_str),
                    want.call.as_deref(),
                    "{}",
                    text
                );
                prop_assert_eq!(got.body.raw(), want.raw.as_deref(), "{}", text);
                prop_assert_eq!(
                    got.body.bye_code().map(wspd::frame::ByeCode::get),
                    want.code,
                    "{}",
                    text
                );
                if let Body::Invite(i) = &got.body {
                    let (caller, callee) = want.uris.as_ref().unwrap();
                    prop_assert_eq!(&*i.caller_uri, caller.as_str());
                    prop_assert_eq!(&*i.callee_uri, callee.as_str());
                }
                reencode(&text)?;
            }
            (Err(bad), Err(e)) => {
                prop_assert!(
                    bad.contains(&bad_part(&e)),
                    "{text}: refused as {e:?} ({e}), but the wrong parts are {bad:?}"
                );
                prop_assert!(!e.to_string().is_empty());
                prop_assert_eq!(e.close_code().get(), 1002);
            }
            (Ok(want), Err(e)) => {
                return Err(TestCaseError::fail(format!(
                    "{text}: a valid frame ({want:?}) was refused: {e}"
                )));
            }
            (Err(bad), Ok(got)) => {
                return Err(TestCaseError::fail(format!(
                    "{text}: an invalid frame (wrong: {bad:?}) was accepted: {got:?}"
                )));
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(config())]

    /// Frames built part by part, valid or not: decoding succeeds exactly
    /// when docs/protocol.md §3 says the frame is valid, gives its keyword,
    /// call id and content text byte for byte, names a wrong part when it
    /// refuses; re-encoding keeps the content text byte for byte.
    #[test]
    fn frames_decode_exactly_when_valid(f in codec::frame()) {
        codec::check_frame(&f)?;
    }

    /// Any text: decode never panics; it refuses with 1007 exactly when the
    /// text is not JSON; what it accepts re-encodes byte for byte.
    #[test]
    fn any_text_decodes_or_is_refused(
        text in prop_oneof![
            any::<String>(),
            "[\\[\\]{}\",:0-9a-z\\\\ .eE+-]{0,48}",
            "\\[\"(invite|ringing|offer|answer|icecandidate|bye)\",[\\[\\]{}\",:0-9a-z\\\\ ]{0,40}",
        ]
    ) {
        codec::fast_agrees(&text)?;
        match wspd::frame::decode(&text) {
            Ok(_) => codec::reencode(&text)?,
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                let json = serde_json::from_str::<serde_json::Value>(&text).is_ok();
                prop_assert_eq!(e.close_code().get(), if json { 1002 } else { 1007 }, "{}: {}", text, e);
            }
        }
    }

    /// A valid frame cut short anywhere (but at its end) is not JSON.
    #[test]
    fn truncated_frames_are_not_json(f in codec::frame(), cut in any::<prop::sample::Index>()) {
        let (text, _) = f.render();
        let end = text.trim_end().len();
        let at = cut.index(end);
        if text.is_char_boundary(at) && !text[..at].trim().is_empty() {
            let e = wspd::frame::decode(&text[..at]).unwrap_err();
            prop_assert_eq!(e.close_code().get(), 1007, "{:?}", &text[..at]);
        }
    }
}

// ---------------------------------------------------------------------------
// Regressions: the cases the properties found, kept as plain tests
// ---------------------------------------------------------------------------

/// serde's derived structs accept an array of their fields in order; the
/// codec took these arrays for content and options objects and relayed them
/// (found by `frames_decode_exactly_when_valid`; fixed in src/frame.rs with
/// `Object<T>`).
#[test]
fn arrays_are_not_content_or_options_objects() {
    use wspd::frame::{FrameError, decode};
    for (text, part) in [
        (r#"["ringing",null,["abcdefgh"]]"#, "options"),
        (r#"["offer",["offer","v=0"]]"#, "content"),
        (r#"["answer",["answer","v=0"]]"#, "content"),
        (r#"["icecandidate",["candidate:1","0",0,"u"]]"#, "content"),
        (r#"["bye",[200,null]]"#, "content"),
        (
            r#"["invite",[["a@a.test",null],["b@b.test",null]]]"#,
            "content",
        ),
        (
            r#"["invite",{"caller":["a@a.test",null],"callee":{"uri":"b@b.test"}}]"#,
            "content",
        ),
    ] {
        let e = decode(text).expect_err(text);
        match part {
            "options" => assert!(matches!(e, FrameError::Options(_)), "{text}: {e:?}"),
            _ => assert!(matches!(e, FrameError::Content { .. }), "{text}: {e:?}"),
        }
        assert!(e.to_string().contains("object"), "{text}: {e}");
        assert_eq!(e.close_code().get(), 1002);
    }
}
