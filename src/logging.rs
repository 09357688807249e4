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
        .with_writer(std::io::stderr);
    let node = node.map(str::to_string);
    match (format, node) {
        (LogFormat::Text, None) => builder.try_init(),
        (LogFormat::Json, None) => builder.json().try_init(),
        (LogFormat::Text, Some(node)) => builder
            .event_format(WithNode {
                node: format!("node={node} "),
                json: false,
                inner: tracing_subscriber::fmt::format::Format::default(),
            })
            .try_init(),
        (LogFormat::Json, Some(node)) => builder
            .event_format(WithNode {
                node: format!("\"node\":{},", serde_json::Value::from(node)),
                json: true,
                inner: tracing_subscriber::fmt::format::Format::default().json(),
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
    use super::Escaped;

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
