//! The fast reading of a frame: one hand-written pass over the frames that
//! browsers and servers actually send, with no JSON library.
//!
//! It accepts a strict subset of what the checked decoding
//! ([`super::decode_checked`]) accepts and gives the same result for it;
//! anything else (escapes in a keyword, a key, an address or a call id,
//! duplicate fields, numbers that are not plain integers, deep nesting,
//! anything malformed) makes it answer `None`, and the checked decoding
//! decides and names what is wrong. A unit test and a property test hold
//! the two to agreement.
//!
//! Why: an SDP is a 2.7 KB JSON string with an escaped `\r\n` every 35
//! bytes or so, and serde_json's string scanner leaves its fast loop at
//! every escape; most of a relayed frame's cost was there. Here a string
//! is skipped eight bytes at a time, from escape to escape ([`special`]).

use std::borrow::Cow;

use super::{Body, Bye, ByeCode, Inbound, Invite, Keyword};
use crate::address::CallId;
use crate::trace::TraceParent;

/// Deeper values are left to the checked decoding (which allows 128).
const MAX_DEPTH: usize = 16;

struct Scan<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// `null`, if it is next.
    fn null(&mut self) -> bool {
        self.ws();
        self.literal(b"null").is_some()
    }

    /// Skips a string (the cursor on its opening quote); any valid JSON
    /// string. Lone surrogates in `\u` escapes are accepted, as serde_json
    /// accepts them in a string it skips.
    fn skip_string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            self.i += special(&self.b[self.i..])?;
            match self.b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => {}
                _ => return None, // a control character
            }
            match *self.b.get(self.i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                b'u' => {
                    let hex = self.b.get(self.i + 2..self.i + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    self.i += 6;
                }
                _ => return None,
            }
        }
    }

    /// A string without escapes, as the text it holds.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let end = start + special(&self.b[start..])?;
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        // Quotes are ASCII: these are character boundaries.
        self.text.get(start..end)
    }

    /// A non-negative integer written plainly (no sign, fraction or
    /// exponent, no leading zero) that fits in a `u16`.
    fn u16(&mut self) -> Option<u16> {
        self.ws();
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        let digits = &self.text[start..self.i];
        if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.b.get(self.i) {
            return None;
        }
        digits.parse().ok()
    }

    fn skip_number(&mut self) -> Option<()> {
        let digits = |s: &mut Self| {
            let start = s.i;
            while s.b.get(s.i).is_some_and(u8::is_ascii_digit) {
                s.i += 1;
            }
            (s.i > start).then_some(s.i - start)
        };
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let lead = self.b.get(self.i).copied();
        let n = digits(self)?;
        if lead == Some(b'0') && n > 1 {
            return None;
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            digits(self)?;
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            digits(self)?;
        }
        Some(())
    }

    /// Skips any JSON value.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' => self.object(depth, |s, _| s.skip_value(depth + 1)),
            b'[' => {
                self.i += 1;
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    if self.eat(b',').is_none() {
                        return self.eat(b']');
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.skip_number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// An object: `member` is called with each key (escape-free) and must
    /// consume its value.
    fn object(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.plain_string()?;
            self.eat(b':')?;
            member(self, key)?;
            if self.eat(b',').is_none() {
                return self.eat(b'}');
            }
        }
    }

    /// A string or null, skipped (an optional string field).
    fn optional_string(&mut self) -> Option<()> {
        if self.null() {
            Some(())
        } else {
            self.skip_string()
        }
    }
}

/// Where the run of ordinary string characters at the start of `b` ends:
/// the index of its first quote, backslash or control character.
///
/// Eight bytes at a time, as one `u64` ("SWAR"): for each byte the top bit
/// of `(x - 0x01) & !x` is set when `x` is zero, which finds a quote in
/// `x ^ '"'`, a backslash in `x ^ '\\'`, and with `0x20` in place of
/// `0x01` a byte below 0x20. A borrow runs only upwards from a byte that
/// matched, so the lowest flag (the first byte, little-endian) is exact.
fn special(b: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const TOP: u64 = ONES << 7;
    let flags = |x: u64| {
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & TOP
    };
    let mut words = b.chunks_exact(8);
    let mut base = 0;
    for word in &mut words {
        let found = flags(u64::from_le_bytes(word.try_into().ok()?));
        if found != 0 {
            return Some(base + found.trailing_zeros() as usize / 8);
        }
        base += 8;
    }
    let is = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
    words
        .remainder()
        .iter()
        .position(|&c| is(c))
        .map(|i| base + i)
}

/// Sets a field seen once; a second sighting fails (serde refuses
/// duplicate fields of a struct).
fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(v);
            Some(())
        }
    }
}

/// `{"uri": "...", "name": "..."?, ...}`: the uri.
fn party<'a>(s: &mut Scan<'a>) -> Option<&'a str> {
    let (mut uri, mut name) = (None, None);
    s.object(1, |s, key| match key {
        "uri" => once(&mut uri, s.plain_string()?),
        "name" => once(&mut name, s.optional_string()?),
        _ => s.skip_value(2),
    })?;
    uri
}

fn invite<'a>(s: &mut Scan<'a>) -> Option<(&'a str, &'a str)> {
    let (mut caller, mut callee) = (None, None);
    s.object(0, |s, key| match key {
        "caller" => once(&mut caller, party(s)?),
        "callee" => once(&mut callee, party(s)?),
        _ => s.skip_value(1),
    })?;
    Some((caller?, callee?))
}

/// `{"type": ..., "sdp": "...", ...}`: the type.
fn description<'a>(s: &mut Scan<'a>) -> Option<&'a str> {
    let (mut kind, mut sdp) = (None, None);
    s.object(0, |s, key| match key {
        "type" => once(&mut kind, s.plain_string()?),
        "sdp" => once(&mut sdp, s.skip_string()?),
        _ => s.skip_value(1),
    })?;
    sdp?;
    kind
}

fn candidate(s: &mut Scan<'_>) -> Option<()> {
    let mut seen = [false; 4];
    s.object(0, |s, key| {
        let field = ["candidate", "sdpMid", "sdpMLineIndex", "usernameFragment"]
            .iter()
            .position(|k| *k == key);
        let Some(f) = field else {
            return s.skip_value(1);
        };
        if std::mem::replace(&mut seen[f], true) {
            return None;
        }
        match f {
            2 if s.null() => Some(()),
            2 => s.u16().map(drop),
            _ => s.optional_string(),
        }
    })
}

fn bye(s: &mut Scan<'_>) -> Option<ByeCode> {
    let (mut code, mut description) = (None, None);
    s.object(0, |s, key| match key {
        "code" => once(&mut code, s.u16()?),
        "description" => once(&mut description, s.optional_string()?),
        _ => s.skip_value(1),
    })?;
    code.and_then(ByeCode::new)
}

/// `options`: the call id, when given, and the `traceparent`, when valid
/// (the first `traceparent` key is read; anything but a valid one is
/// ignored, never refused).
fn options(s: &mut Scan<'_>) -> Option<(Option<CallId>, Option<TraceParent>)> {
    if s.null() {
        return Some((None, None));
    }
    let mut call: Option<Option<&str>> = None;
    let mut traceparent: Option<Option<TraceParent>> = None;
    s.object(0, |s, key| match key {
        "call" if s.null() => once(&mut call, None),
        "call" => once(&mut call, Some(s.plain_string()?)),
        "traceparent" if traceparent.is_none() && s.peek() == Some(b'"') => {
            // An escaped string is left to the checked decoding.
            traceparent = Some(TraceParent::parse(s.plain_string()?));
            Some(())
        }
        _ => s.skip_value(1),
    })?;
    let call = match call.flatten() {
        Some(c) => Some(CallId::parse(c)?),
        None => None,
    };
    Some((call, traceparent.flatten()))
}

/// One pass over a frame that is well formed; `None` for anything else.
pub fn decode_fast(text: &str) -> Option<Inbound<'_>> {
    let mut s = Scan {
        text,
        b: text.as_bytes(),
        i: 0,
    };
    s.eat(b'[')?;
    let keyword = Keyword::parse(s.plain_string()?)?;
    let mut body = None;
    let (mut call, mut traceparent) = (None, None);
    if s.eat(b',').is_some() {
        body = if s.null() {
            None
        } else {
            Some(content(&mut s, keyword)?)
        };
        if s.eat(b',').is_some() {
            (call, traceparent) = options(&mut s)?;
        }
    }
    s.eat(b']')?;
    s.ws();
    if s.i != text.len() {
        return None;
    }
    let body = match (keyword, body) {
        (_, Some(b)) => b,
        (Keyword::Ringing, None) => Body::Empty,
        (Keyword::IceCandidate, None) => Body::Raw("null"),
        // Content is required.
        _ => return None,
    };
    Some(Inbound {
        keyword,
        call,
        traceparent,
        body,
    })
}

/// The content of a `keyword` frame, checked for it; the body keeps it as
/// the raw text it was.
#[inline]
fn content<'a>(s: &mut Scan<'a>, keyword: Keyword) -> Option<Body<'a>> {
    s.ws();
    let start = s.i;
    let text = s.text;
    let b = match keyword {
        Keyword::Invite => {
            let (caller, callee) = invite(s)?;
            Body::Invite(Invite {
                caller_uri: Cow::Borrowed(caller),
                callee_uri: Cow::Borrowed(callee),
                raw: &text[start..s.i],
            })
        }
        Keyword::Ringing => {
            s.object(0, |s, _| s.skip_value(1))?;
            Body::Empty
        }
        Keyword::Offer | Keyword::Answer => {
            let kind = description(s)?;
            let fits = match keyword {
                Keyword::Offer => kind == "offer",
                _ => kind == "answer" || kind == "pranswer",
            };
            if !fits {
                return None;
            }
            Body::Raw(&text[start..s.i])
        }
        Keyword::IceCandidate => {
            candidate(s)?;
            Body::Raw(&text[start..s.i])
        }
        Keyword::Bye => {
            let code = bye(s)?;
            Body::Bye(Bye {
                code,
                raw: &text[start..s.i],
            })
        }
    };
    Some(b)
}
