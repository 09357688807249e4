//! How `wspd` logs: to stderr, as text or as one JSON object per line, at
//! the level `RUST_LOG` asks for (`info` by default).
//!
//! Socket, link and call events name their span as their parent instead of
//! running inside it (see [`crate::socket::Handler::span`]), so the spans
//! cost nothing per frame; a line still shows its context:
//! `INFO call{id=... caller=... callee=...}: call ended outcome="transferred"`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The format of the log on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, coloured on a terminal.
    Text,
    /// One JSON object per event, for a log collector.
    Json,
}

/// Installs the global subscriber. `filter` is a `RUST_LOG`-style
/// directive (`info`, `wspd=debug`, ...).
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    init_for_node(format, filter, None)
}

/// [`init`], with the node's name on every line when the server is one
/// node of a cluster (`node=NAME` first in text, a `"node"` field in JSON).
pub fn init_for_node(format: LogFormat, filter: &str, node: Option<&str>) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("log filter {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_timer(Timestamp)
        .with_writer(std::io::stderr);
    let node = node.map(str::to_string);
    match (format, node) {
        (LogFormat::Text, None) => builder.try_init(),
        (LogFormat::Json, None) => builder.json().try_init(),
        (LogFormat::Text, Some(node)) => builder
            .event_format(WithNode {
                node: format!("node={node} "),
                json: false,
                inner: tracing_subscriber::fmt::format::Format::default().with_timer(Timestamp),
            })
            .try_init(),
        (LogFormat::Json, Some(node)) => builder
            .event_format(WithNode {
                node: format!("\"node\":{},", serde_json::Value::from(node)),
                json: true,
                inner: tracing_subscriber::fmt::format::Format::default()
                    .with_timer(Timestamp)
                    .json(),
            })
            .try_init(),
    }
    .map_err(|e| e.to_string())
}

/// An event format that puts the node's name on each line: before a text
/// line, as the first field of a JSON object.
struct WithNode<F> {
    /// What is written: `node=NAME ` or `"node":"NAME",`.
    node: String,
    json: bool,
    inner: F,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithNode<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if !self.json {
            writer.write_str(&self.node)?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match line.strip_prefix('{') {
            Some(rest) => {
                writer.write_char('{')?;
                writer.write_str(&self.node)?;
                writer.write_str(rest)
            }
            None => writer.write_str(&line),
        }
    }
}

/// The time of a log line, in UTC, exactly as tracing-subscriber's own
/// `SystemTime` writes it (`2026-12-03T16:40:05.123456Z`), but into one
/// buffer written at once: a line's timestamp costs about a tenth of the
/// instructions of the general formatting machinery, which paid for the
/// trace id on every call line (docs/performance.md).
struct Timestamp;

impl tracing_subscriber::fmt::time::FormatTime for Timestamp {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match rfc3339(std::time::SystemTime::now()) {
            Some(buf) => w.write_str(std::str::from_utf8(&buf).map_err(|_| std::fmt::Error)?),
            // Before 1970 or after 9999: the general formatting.
            None => tracing_subscriber::fmt::time::SystemTime.format_time(w),
        }
    }
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`, for the years 1970 to 9999.
fn rfc3339(t: std::time::SystemTime) -> Option<[u8; 27]> {
    let since = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    if year > 9999 {
        return None;
    }
    let rem = secs % 86_400;
    let mut buf = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, rem / 3600);
    put(14, 2, rem / 60 % 60);
    put(17, 2, rem % 60);
    put(20, 6, u64::from(since.subsec_micros()));
    Some(buf)
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The filter `wspd` runs with: `RUST_LOG` when set, `info` otherwise.
pub fn default_filter() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string())
}

/// Text from a remote party, made safe for a log line: control characters
/// (a newline, a carriage return, an escape sequence) and the Unicode line
/// separators are written escaped (`\n`, `\u{1b}`), so that a user name, an
/// error body or a header field can never start a line of its own in the
/// text log nor drive a terminal. Wraps anything `Display` (an error
/// whose text quotes its input too) and escapes as it writes.
///
/// `info!(user = %Escaped(&name), "login failed")`.
pub struct Escaped<T>(pub T);

impl<T: std::fmt::Display> std::fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        write!(EscapingWriter(f), "{}", self.0)
    }
}

impl<T: std::fmt::Display> std::fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

struct EscapingWriter<'a, 'b>(&'a mut std::fmt::Formatter<'b>);

impl std::fmt::Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(needs_escape) {
            self.0.write_str(&rest[..i])?;
            // `find` returned the start of a character.
            let c = rest[i..].chars().next().unwrap_or_default();
            write!(self.0, "{}", c.escape_default())?;
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::{Escaped, rfc3339};
    use std::time::{Duration, UNIX_EPOCH};

    /// The same text as the `time` crate gives, across leap days, century
    /// years, year ends and the last second of 9999; nothing outside.
    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let format = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        let mut secs: Vec<u64> = vec![
            0,
            951_782_400,     // 2000-02-29
            4_107_542_399,   // 2100-02-28T23:59:59
            4_107_542_400,   // 2100-03-01
            1_798_761_599,   // 2026-12-31T23:59:59
            253_402_300_799, // 9999-12-31T23:59:59
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            secs.push(x % 253_402_300_800);
        }
        for s in secs {
            for nanos in [0, 999, 1_000, 123_456_789, 999_999_999] {
                let t = UNIX_EPOCH + Duration::new(s, nanos);
                let ours = rfc3339(t).expect("in range");
                let theirs = time::OffsetDateTime::from(t).format(format).unwrap();
                assert_eq!(std::str::from_utf8(&ours).unwrap(), theirs, "{s}.{nanos}");
            }
        }
        assert!(rfc3339(UNIX_EPOCH + Duration::from_secs(253_402_300_800)).is_none());
        assert!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)).is_none());
    }

    #[test]
    fn control_characters_are_escaped() {
        let s = format!("{}", Escaped("x\ninjected\r\u{1b}[31m\u{2028}é\tok"));
        assert_eq!(s, "x\\ninjected\\r\\u{1b}[31m\\u{2028}é\\tok");
        assert!(!s.chars().any(char::is_control));
        assert_eq!(format!("{}", Escaped("plain")), "plain");
        let e = std::io::Error::other("body: a\nb");
        assert_eq!(format!("{}", Escaped(&e)), "body: a\\nb");
    }
}
