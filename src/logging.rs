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
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("log filter {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| e.to_string())
}

/// The filter `wspd` runs with: `RUST_LOG` when set, `info` otherwise.
pub fn default_filter() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string())
}
