//! The `Authorization: WSP-Link ...` header of a link's upgrade request:
//! writing it, and reading it strictly, since its text comes from whoever
//! opened the connection.

use crate::address::normalize_domain;

use super::{KeyError, MAX_PARAM_LEN, SCHEME};

/// The `Authorization: WSP-Link ...` header of a link's upgrade request.
///
/// Grammar (the header value; `OWS` is spaces and tabs):
///
/// ```text
/// header = OWS "WSP-Link" 1*(SP / HTAB) param *(OWS "," OWS param) OWS
/// param  = name "=" DQUOTE value DQUOTE
/// name   = "origin" / "destination" / "key" / "sig"
/// value  = 0*256( %x21 / %x23-5B / %x5D-7E )   ; visible ASCII but " and \
/// ```
///
/// The scheme and the names are case-insensitive; each of the four
/// parameters appears exactly once, in any order; other parameters are
/// refused. `origin` and `destination` are domain names (stored lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAuth {
    pub origin: String,
    pub destination: String,
    pub key_id: String,
    pub sig: String,
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_value_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'"' && b != b'\\'
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

fn bad(what: String) -> KeyError {
    KeyError::Header(what)
}

impl LinkAuth {
    /// The header value:
    /// `WSP-Link origin="a.test",destination="b.test",key="ed25519:<id>",sig="<base64url>"`.
    pub fn to_header(&self) -> String {
        format!(
            "{SCHEME} origin=\"{}\",destination=\"{}\",key=\"{}\",sig=\"{}\"",
            self.origin, self.destination, self.key_id, self.sig
        )
    }

    /// Parses an `Authorization` header value (see the grammar on
    /// [`LinkAuth`]). Checks the syntax and the domains only; the key and
    /// the signature are checked by
    /// [`PublishedKeys::verify`](super::PublishedKeys::verify).
    pub fn parse(header: &str) -> Result<LinkAuth, KeyError> {
        let params = read_params(strip_scheme(header)?)?;
        params.into_auth()
    }
}

/// The parameters after the scheme, or why there is no `WSP-Link` scheme.
fn strip_scheme(header: &str) -> Result<&str, KeyError> {
    let h = header.trim_matches(is_ows);
    let (scheme, rest) = h
        .split_once(is_ows)
        .ok_or_else(|| bad(format!("expected \"{SCHEME} <parameters>\"")))?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return Err(bad(format!("the scheme is not {SCHEME}")));
    }
    Ok(rest.trim_start_matches(is_ows))
}

/// The four parameters as read, before they are checked for presence and
/// the domains are checked.
#[derive(Default)]
struct Params<'a> {
    origin: Option<&'a str>,
    destination: Option<&'a str>,
    key_id: Option<&'a str>,
    sig: Option<&'a str>,
}

/// Reads the comma-separated `name="value"` list to its end.
fn read_params(mut rest: &str) -> Result<Params<'_>, KeyError> {
    let mut params = Params::default();
    loop {
        let (name, value, after) = read_param(rest)?;
        params.set(&name, value)?;

        rest = after.trim_start_matches(is_ows);
        if rest.is_empty() {
            return Ok(params);
        }
        rest = rest
            .strip_prefix(',')
            .ok_or_else(|| bad(format!("expected a comma after {name}")))?
            .trim_start_matches(is_ows);
        if rest.is_empty() {
            return Err(bad("trailing comma".into()));
        }
    }
}

/// The `name="value"` at the start of `rest`: the lowercased name, the
/// value, and what follows its closing quote.
fn read_param(rest: &str) -> Result<(String, &str, &str), KeyError> {
    let (name, after) = rest
        .split_once('=')
        .ok_or_else(|| bad("expected name=\"value\" parameters".into()))?;
    if name.is_empty() || name.len() > 32 || !name.bytes().all(is_name_byte) {
        return Err(bad("malformed parameter name".into()));
    }
    let name = name.to_ascii_lowercase();
    let after = after
        .strip_prefix('"')
        .ok_or_else(|| bad(format!("{name}: the value must be in double quotes")))?;
    let (value, after) = after
        .split_once('"')
        .ok_or_else(|| bad(format!("{name}: no closing double quote")))?;
    if value.len() > MAX_PARAM_LEN {
        return Err(bad(format!("{name} is longer than {MAX_PARAM_LEN} bytes")));
    }
    if !value.bytes().all(is_value_byte) {
        return Err(bad(format!(
            "{name}: only visible ASCII other than \" and \\ is allowed"
        )));
    }
    Ok((name, value, after))
}

impl<'a> Params<'a> {
    /// Records one parameter; unknown and repeated names are refused.
    fn set(&mut self, name: &str, value: &'a str) -> Result<(), KeyError> {
        let slot = match name {
            "origin" => &mut self.origin,
            "destination" => &mut self.destination,
            "key" => &mut self.key_id,
            "sig" => &mut self.sig,
            _ => return Err(bad(format!("unknown parameter {name}"))),
        };
        if slot.is_some() {
            return Err(bad(format!("duplicate parameter {name}")));
        }
        *slot = Some(value);
        Ok(())
    }

    /// The header's meaning once every parameter is known to be there and
    /// both domains are valid.
    fn into_auth(self) -> Result<LinkAuth, KeyError> {
        let missing = |name: &str| bad(format!("missing parameter {name}"));
        let origin = self.origin.ok_or_else(|| missing("origin"))?;
        let destination = self.destination.ok_or_else(|| missing("destination"))?;
        let key_id = self.key_id.ok_or_else(|| missing("key"))?;
        let sig = self.sig.ok_or_else(|| missing("sig"))?;
        Ok(LinkAuth {
            origin: normalize_domain(origin)
                .ok_or_else(|| bad("origin is not a valid domain name".into()))?,
            destination: normalize_domain(destination)
                .ok_or_else(|| bad("destination is not a valid domain name".into()))?,
            key_id: key_id.to_string(),
            sig: sig.to_string(),
        })
    }
}
