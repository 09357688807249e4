//! W3C Trace Context for calls: the `traceparent` a client or another
//! server gives with an invite, and the trace each call belongs to.
//!
//! `traceparent` is `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`
//! (<https://www.w3.org/TR/trace-context/>). What a remote party sends is
//! read here and nowhere else: a value that is not a valid traceparent is
//! ignored (the call starts a trace of its own), never refused, and never
//! written anywhere as it was sent. A call always has a trace id, with or
//! without an exporter: it is on every log line about the call and on the
//! invites the server sends, so that two servers' logs (and a page) name
//! one call the same way.

use std::fmt;

/// The longest `traceparent` looked at. Version 00 is 55 characters; a
/// later version may append fields, which are not read.
pub const MAX_TRACEPARENT: usize = 256;

/// A trace id: 16 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span id: 8 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A new random trace id.
    pub fn random() -> TraceId {
        loop {
            let bits: u128 = rand::random();
            if bits != 0 {
                return TraceId(bits.to_be_bytes());
            }
        }
    }

    /// The low 8 bytes, as the ratio sampler reads them.
    pub fn low(&self) -> u64 {
        let mut low = [0; 8];
        low.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(low)
    }
}

impl SpanId {
    /// A new random span id.
    pub fn random() -> SpanId {
        loop {
            let bits: u64 = rand::random();
            if bits != 0 {
                return SpanId(bits.to_be_bytes());
            }
        }
    }
}

fn write_hex(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        buf[2 * i] = HEX[usize::from(b >> 4)];
        buf[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    // Only ASCII hex digits were written.
    f.write_str(std::str::from_utf8(&buf[..2 * bytes.len()]).unwrap_or_default())
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A valid `traceparent`: the trace, the sender's span (the parent of
/// ours), and whether the sender records the trace.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

/// Lowercase hex digits only (the specification refuses uppercase).
fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

impl TraceParent {
    /// Reads a `traceparent`; `None` for anything that is not a valid one
    /// (the caller then ignores it). Version `00` must be exactly 55
    /// characters; a later version (but `ff`) is read for its first four
    /// fields when what follows them starts with `-`, as the specification
    /// asks. All-zero ids are invalid.
    pub fn parse(s: &str) -> Option<TraceParent> {
        let b = s.as_bytes();
        if b.len() < 55 || b.len() > MAX_TRACEPARENT {
            return None;
        }
        let [version] = hex::<1>(&b[..2])?;
        match version {
            0xff => return None,
            0 if b.len() != 55 => return None,
            0 => {}
            _ if b.len() > 55 && b[55] != b'-' => return None,
            _ => {}
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let trace_id = hex::<16>(&b[3..35])?;
        let parent_id = hex::<8>(&b[36..52])?;
        let [flags] = hex::<1>(&b[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            sampled: flags & 1 == 1,
        })
    }
}

impl TraceParent {
    /// The length of a version-00 value.
    pub const LEN: usize = 55;

    /// The version-00 value, written without the formatting machinery
    /// (it goes into every invite the server sends).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, b) in self.trace_id.0.iter().enumerate() {
            out[3 + 2 * i] = HEX[usize::from(b >> 4)];
            out[4 + 2 * i] = HEX[usize::from(b & 0xf)];
        }
        for (i, b) in self.parent_id.0.iter().enumerate() {
            out[36 + 2 * i] = HEX[usize::from(b >> 4)];
            out[37 + 2 * i] = HEX[usize::from(b & 0xf)];
        }
        if self.sampled {
            out[54] = b'1';
        }
        out
    }

    /// [`TraceParent::to_bytes`] pushed onto `s`.
    pub fn push_to(&self, s: &mut String) {
        // Only ASCII hex digits and dashes were written.
        s.push_str(std::str::from_utf8(&self.to_bytes()).unwrap_or_default());
    }
}

impl fmt::Display for TraceParent {
    /// The version-00 header value, 55 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.to_bytes()).unwrap_or_default())
    }
}

/// Where a call's trace came from, which decides whether its sender's
/// "sampled" flag is followed (see [`CallTrace::new`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Origin {
    /// A client's invite: its trace id is continued, its flag is not
    /// followed (a page does not decide what this server exports).
    Client,
    /// Another server (a link, or a node of this domain): its decision to
    /// record the trace is followed, so that the trace is whole.
    Server,
}

/// The trace of one call on this server: the trace id, this server's span
/// of the call, its parent when the invite carried one, and whether the
/// call's spans are exported.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CallTrace {
    pub trace_id: TraceId,
    /// This server's span for the call (the parent of what it sends on).
    pub span_id: SpanId,
    /// The span of whoever sent the invite, when it gave one.
    pub parent: Option<SpanId>,
    pub sampled: bool,
}

impl CallTrace {
    /// The trace of a call whose invite carried `parent` (valid, or
    /// `None`). `ratio` is this server's sampling ratio (0 when nothing is
    /// exported): a trace is sampled when its id falls within the ratio,
    /// the same way on every server with the same ratio, or, when it came
    /// from another server, when that server samples it.
    pub fn new(parent: Option<TraceParent>, origin: Origin, ratio: f64) -> CallTrace {
        let trace_id = parent.map_or_else(TraceId::random, |p| p.trace_id);
        let followed = parent.is_some_and(|p| p.sampled && origin == Origin::Server);
        CallTrace {
            trace_id,
            span_id: SpanId::random(),
            parent: parent.map(|p| p.parent_id),
            sampled: ratio > 0.0 && (followed || within_ratio(trace_id, ratio)),
        }
    }

    /// What this server sends on with the call: the trace, with this
    /// server's span as the parent.
    pub fn traceparent(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            sampled: self.sampled,
        }
    }
}

/// Whether `trace_id` is sampled at `ratio`: the rule of OpenTelemetry's
/// `TraceIdRatioBased` sampler (the low 63 bits of the id against the
/// ratio), so that every server with the same ratio decides alike.
pub fn within_ratio(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    (trace_id.low() >> 1) < bound
}

/// One step of opening or accepting a link, timed: what a slow first call
/// to a new domain spent its time on (the steps become child spans of the
/// link's span, and their durations are on its log line).
#[derive(Clone, Debug)]
pub struct Step {
    /// `discovery`, `connect`, `tls`, `upgrade`, `keys`, `verify`.
    pub name: &'static str,
    pub start: std::time::SystemTime,
    pub took: std::time::Duration,
    /// The address it was made with, for a connection.
    pub addr: Option<std::net::SocketAddr>,
    /// A fixed word about it (`cached` keys), never remote text.
    pub detail: Option<&'static str>,
    /// The failure's reason (a metric label of the step), when it failed.
    pub failed: Option<&'static str>,
}

/// The steps of one link's opening, in order.
#[derive(Default, Debug)]
pub struct Steps(pub Vec<Step>);

impl Steps {
    /// Starts a step; [`Timer::done`] or [`Timer::failed`] records it.
    pub fn start(name: &'static str) -> Timer {
        Timer {
            name,
            start: std::time::SystemTime::now(),
            clock: std::time::Instant::now(),
            addr: None,
            detail: None,
        }
    }

    pub fn push(&mut self, t: Timer, failed: Option<&'static str>) {
        self.0.push(Step {
            name: t.name,
            start: t.start,
            took: t.clock.elapsed(),
            addr: t.addr,
            detail: t.detail,
            failed,
        });
    }

    /// `discovery=1.2ms connect=0.3ms ...`, for a log line.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for step in &self.0 {
            if !s.is_empty() {
                s.push(' ');
            }
            let _ = write!(s, "{}={:.1}ms", step.name, step.took.as_secs_f64() * 1000.0);
            if step.failed.is_some() {
                s.push_str("(failed)");
            }
        }
        s
    }
}

/// A step being timed.
pub struct Timer {
    name: &'static str,
    start: std::time::SystemTime,
    clock: std::time::Instant,
    pub addr: Option<std::net::SocketAddr>,
    pub detail: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_writes_version_00() {
        let tp = TraceParent::parse(VALID).unwrap();
        assert_eq!(tp.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(tp.sampled);
        assert_eq!(tp.to_string(), VALID);
        let off = TraceParent::parse(&VALID.replace("-01", "-00")).unwrap();
        assert!(!off.sampled);
        // Other flag bits are kept out: only "sampled" is read.
        assert!(
            TraceParent::parse(&VALID.replace("-01", "-03"))
                .unwrap()
                .sampled
        );
    }

    #[test]
    fn invalid_values_are_ignored() {
        for bad in [
            "",
            "00",
            &VALID.to_uppercase(),
            &VALID.replace("4bf9", "4bg9"),
            &format!("{VALID}-extra"),        // 00 has exactly 4 fields
            &VALID.replacen("00-", "ff-", 1), // version ff is invalid
            &VALID.replacen('-', "_", 1),     // separators
            &VALID[..54],                     // short
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
            &"0".repeat(MAX_TRACEPARENT + 1),
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn later_versions_are_read_for_their_first_fields() {
        let v1 = VALID.replacen("00-", "01-", 1);
        assert!(TraceParent::parse(&v1).is_some());
        assert!(TraceParent::parse(&format!("{v1}-more")).is_some());
        assert!(TraceParent::parse(&format!("{v1}more")).is_none());
    }

    #[test]
    fn a_call_continues_a_valid_parent() {
        let tp = TraceParent::parse(VALID).unwrap();
        let t = CallTrace::new(Some(tp), Origin::Server, 0.0);
        assert_eq!(t.trace_id, tp.trace_id);
        assert_eq!(t.parent, Some(tp.parent_id));
        assert_ne!(t.span_id, tp.parent_id);
        assert!(!t.sampled, "nothing is sampled without an exporter");
        let sent = t.traceparent();
        assert_eq!(sent.trace_id, tp.trace_id);
        assert_eq!(sent.parent_id, t.span_id);
        assert_eq!(TraceParent::parse(&sent.to_string()), Some(sent));

        let fresh = CallTrace::new(None, Origin::Client, 1.0);
        assert_eq!(fresh.parent, None);
        assert!(fresh.sampled);
    }

    #[test]
    fn a_servers_sampled_flag_is_followed_a_clients_is_not() {
        // An id outside any small ratio: low 63 bits all ones.
        let mut tp = TraceParent::parse(VALID).unwrap();
        tp.trace_id.0[8..].copy_from_slice(&[0xff; 8]);
        assert!(CallTrace::new(Some(tp), Origin::Server, 0.01).sampled);
        assert!(!CallTrace::new(Some(tp), Origin::Client, 0.01).sampled);
        tp.sampled = false;
        assert!(!CallTrace::new(Some(tp), Origin::Server, 0.01).sampled);
        // An id inside any ratio: low bits zero.
        tp.trace_id.0[8..].copy_from_slice(&[0; 8]);
        assert!(CallTrace::new(Some(tp), Origin::Client, 0.01).sampled);
    }
}
