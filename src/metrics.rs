//! Prometheus metrics, served at `GET /metrics`.
//!
//! Counters on the hot path (frames by keyword, calls by outcome) are
//! created once at start and kept as handles, so counting a frame is one
//! atomic add. Rare events (refusals) look their counter up by label.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::frame::Keyword;
use crate::frame::Outcome;

type Labels = [(&'static str, &'static str); 1];

/// The `domain` label of every call with a domain that is not known
/// (neither configured nor with a link up).
pub const OTHER_DOMAIN: &str = "other";

pub struct Metrics {
    registry: Registry,
    pub sessions: Gauge,
    /// Cluster: the live nodes this node sees, itself included.
    pub cluster_nodes: Gauge,
    /// Cluster: messages to and from other nodes, by direction.
    cluster_frames: Family<Labels, Counter>,
    /// Cluster: gaps in a node pair's message numbers.
    pub cluster_gaps: Counter,
    /// Cluster: connections to Redis made again after a loss.
    pub cluster_redis_reconnects: Counter,
    /// Cluster: Redis commands that failed.
    pub cluster_redis_errors: Counter,
    pub calls_active: Gauge,
    calls: Vec<Counter>,
    frames: Vec<Counter>,
    refusals: Family<Labels, Counter>,
    logins: Family<Labels, Counter>,
    /// Links up, by direction (`out`: opened by us, `in`: accepted).
    links: Family<Labels, Gauge>,
    link_attempts: Family<Labels, Counter>,
    link_failures: Family<Labels, Counter>,
    dns_lookups: Family<Labels, Counter>,
    limits_hit: Family<Labels, Counter>,
    remote_calls: Family<[(&'static str, String); 2], Counter>,
    /// Days until the certificate expires, by source (only `acme` today:
    /// no series until ACME serves a certificate).
    certificate_days_left: Family<Labels, Gauge<f64, AtomicU64>>,
    acme_orders: Family<Labels, Counter>,
    /// Invite to answer, and invite to transfer (both 101s), in seconds.
    setup_answer: Histogram,
    setup_transfer: Histogram,
    /// A first call's wait for its link, by result (`ok` or the reason).
    link_open: Family<Labels, Histogram, fn() -> Histogram>,
    /// Spans exported, failed to export, or dropped from a full queue.
    spans: Family<Labels, Counter>,
}

/// The buckets of the call setup and link opening histograms, in seconds:
/// 1 ms to 60 s (a link's opening is milliseconds; a person answers in
/// seconds).
const SETUP_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

fn setup_histogram() -> Histogram {
    Histogram::new(SETUP_BUCKETS)
}

/// Why the server refused or closed something: `wspd_refusals_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Upgrade refused: no, bad, expired or foreign token.
    Unauthorized,
    /// Upgrade refused: not a valid WebSocket upgrade or wrong subprotocol.
    BadUpgrade,
    /// Connection refused: `limits.max_connections` reached.
    TooManyConnections,
    /// TLS or HTTP handshake not finished in time or failed.
    Handshake,
    /// Socket closed: frame not JSON (1007).
    BadJson,
    /// Socket closed: JSON of the wrong shape (1002).
    BadFrame,
    /// Socket closed: binary message (1003).
    Binary,
    /// Socket closed: message over `limits.max_frame_bytes` (1009).
    TooBig,
    /// Socket closed: its outbox was full (a reader too slow).
    SlowReader,
    /// Socket closed: silent past `limits.keepalive_timeout`.
    Silent,
    /// Socket closed: its writes made no progress for `limits.write_timeout`.
    WriteTimeout,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::BadUpgrade => "bad_upgrade",
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::Handshake => "handshake",
            Refusal::BadJson => "bad_json",
            Refusal::BadFrame => "bad_frame",
            Refusal::Binary => "binary",
            Refusal::TooBig => "too_big",
            Refusal::SlowReader => "slow_reader",
            Refusal::Silent => "silent",
            Refusal::WriteTimeout => "write_timeout",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("wspd");
        // Registered in the order they are exposed.
        let sessions = metric(&mut r, "sessions", "Client sockets open");
        let calls_active = metric(&mut r, "calls_active", "Calls the server holds state for");
        let calls: Family<Labels, Counter> = metric(&mut r, "calls", "Calls ended, by outcome");
        let frames: Family<Labels, Counter> =
            metric(&mut r, "frames", "Frames received from clients, by keyword");
        Metrics {
            sessions,
            calls_active,
            // The hot-path counters are looked up once, here.
            calls: Outcome::ALL
                .iter()
                .map(|o| calls.get_or_create(&[("outcome", o.as_str())]).clone())
                .collect(),
            frames: Keyword::ALL
                .iter()
                .map(|k| frames.get_or_create(&[("keyword", k.as_str())]).clone())
                .collect(),
            refusals: metric(
                &mut r,
                "refusals",
                "Connections and sockets refused or closed, by reason",
            ),
            logins: metric(&mut r, "logins", "POST /token attempts, by result"),
            links: metric(&mut r, "links", "Server-to-server links up, by direction"),
            link_attempts: metric(&mut r, "link_attempts", "Outgoing link attempts, by result"),
            link_failures: metric(
                &mut r,
                "link_failures",
                "Link failures (either direction), by reason",
            ),
            dns_lookups: metric(&mut r, "dns_lookups", "Domain discoveries, by result"),
            limits_hit: metric(
                &mut r,
                "limits_hit",
                "Times a configured limit refused something, by limit",
            ),
            remote_calls: metric(
                &mut r,
                "remote_calls",
                "Calls with another domain ended, by remote domain and outcome",
            ),
            certificate_days_left: metric(
                &mut r,
                "certificate_days_left",
                "Days until the TLS certificate expires, by source",
            ),
            acme_orders: metric(
                &mut r,
                "acme_orders",
                "Attempts to obtain a certificate from the ACME CA, by result",
            ),
            cluster_nodes: metric(
                &mut r,
                "cluster_nodes",
                "Live nodes of this domain's cluster, this one included",
            ),
            cluster_frames: metric(
                &mut r,
                "cluster_frames",
                "Messages between this node and the others, by direction",
            ),
            cluster_gaps: metric(
                &mut r,
                "cluster_gaps",
                "Gaps found in the numbering of another node's messages",
            ),
            cluster_redis_reconnects: metric(
                &mut r,
                "cluster_redis_reconnects",
                "Connections to Redis made again after one was lost",
            ),
            cluster_redis_errors: metric(
                &mut r,
                "cluster_redis_errors",
                "Redis commands of the cluster that failed",
            ),
            setup_answer: setup_histogram(),
            setup_transfer: setup_histogram(),
            link_open: Family::new_with_constructor(setup_histogram),
            spans: metric(
                &mut r,
                "spans",
                "Spans of calls and links given to the OTLP exporter, by result (exported, failed, dropped: the export queue was full)",
            ),
            registry: r,
        }
        .register_histograms()
    }

    /// The histograms, registered after the rest (their families need
    /// constructors, not `Default`).
    fn register_histograms(mut self) -> Self {
        let setup: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(setup_histogram);
        self.setup_answer = setup.get_or_create(&[("until", "answer")]).clone();
        self.setup_transfer = setup.get_or_create(&[("until", "transfer")]).clone();
        self.registry.register(
            "call_setup_seconds",
            "Time from a call's invite to its answer (the callee's offer) and to its transfer (both sides' bye 101)",
            setup,
        );
        self.registry.register(
            "link_open_seconds",
            "Time the first call to a domain waited for the link to open, by result (ok, or the failure's reason)",
            self.link_open.clone(),
        );
        self
    }

    /// A call was answered `seconds` after its invite.
    pub fn call_answered(&self, seconds: f64) {
        self.setup_answer.observe(seconds);
    }

    /// A call was transferred `seconds` after its invite.
    pub fn call_transferred(&self, seconds: f64) {
        self.setup_transfer.observe(seconds);
    }

    /// A link opened, or failed to, after `seconds`.
    pub fn link_opened(&self, result: &'static str, seconds: f64) {
        self.link_open
            .get_or_create(&[("result", result)])
            .observe(seconds);
    }

    /// Spans given to the exporter: `exported`, `failed`.
    pub fn spans(&self, result: &'static str, n: u64) {
        self.spans.get_or_create(&[("result", result)]).inc_by(n);
    }

    /// A span dropped (`dropped`: the export queue was full).
    pub fn span(&self, result: &'static str) {
        self.spans(result, 1);
    }

    pub fn frame(&self, k: Keyword) {
        self.frames[k as usize].inc();
    }

    pub fn call_ended(&self, o: Outcome) {
        self.calls[o as usize].inc();
    }

    pub fn refused(&self, r: Refusal) {
        self.refusals.get_or_create(&[("reason", r.as_str())]).inc();
    }

    pub fn login(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.logins.get_or_create(&[("result", result)]).inc();
    }

    /// A link came up (`+1`) or went down (`-1`); `direction` is `in` or `out`.
    pub fn link_up(&self, direction: &'static str, delta: i64) {
        self.links
            .get_or_create(&[("direction", direction)])
            .inc_by(delta);
    }

    /// An outgoing link attempt ended: `ok` or a failure reason.
    pub fn link_attempt(&self, result: &'static str) {
        self.link_attempts
            .get_or_create(&[("result", result)])
            .inc();
    }

    /// A link failed or was refused, by reason (`dns`, `connect`, `tls`,
    /// `auth`, `policy`, `broken`, `keys`, ...).
    pub fn link_failure(&self, reason: &'static str) {
        self.link_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// A discovery ended: `ok`, `override`, `cached_failure`, `no_service`,
    /// `timeout` or `error`.
    pub fn dns_lookup(&self, result: &'static str) {
        self.dns_lookups.get_or_create(&[("result", result)]).inc();
    }

    /// A limit refused something: `connections_per_ip`, `max_connections`,
    /// `frames_per_second`, `calls_per_socket`, `pending_invites_per_user`,
    /// `outbox_frames`, `invites_per_second`, `calls_per_link`.
    pub fn limit_hit(&self, limit: &'static str) {
        self.limits_hit.get_or_create(&[("limit", limit)]).inc();
    }

    /// A call with another domain ended with `outcome`: labelled with the
    /// domain when it is known (the caller decides), else with
    /// [`OTHER_DOMAIN`], so that made-up domains add no series.
    pub fn remote_call_ended(&self, domain: Option<&str>, outcome: Outcome) {
        self.remote_calls
            .get_or_create(&[
                ("domain", domain.unwrap_or(OTHER_DOMAIN).to_string()),
                ("outcome", outcome.as_str().to_string()),
            ])
            .inc();
    }

    /// The certificate obtained by ACME expires in `days`.
    pub fn set_certificate_days_left(&self, days: f64) {
        self.certificate_days_left
            .get_or_create(&[("source", "acme")])
            .set(days);
    }

    /// An attempt to obtain a certificate ended: `issued` or `failed`.
    /// Cross-node messages: `sent` or `received`.
    pub fn cluster_frames(&self, direction: &'static str, n: u64) {
        self.cluster_frames
            .get_or_create(&[("direction", direction)])
            .inc_by(n);
    }

    pub fn acme_order(&self, result: &'static str) {
        self.acme_orders.get_or_create(&[("result", result)]).inc();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// A new metric, registered under `name`.
fn metric<M>(registry: &mut Registry, name: &str, help: &str) -> M
where
    M: Default + Clone + prometheus_client::registry::Metric,
{
    let m = M::default();
    registry.register(name, help, m.clone());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let m = Metrics::new();
        m.frame(Keyword::IceCandidate);
        m.call_ended(Outcome::Transferred);
        m.refused(Refusal::TooBig);
        m.sessions.inc();
        let text = m.render();
        assert!(text.contains("wspd_sessions 1"), "{text}");
        assert!(text.contains("wspd_calls_active 0"));
        assert!(text.contains("wspd_calls_total{outcome=\"transferred\"} 1"));
        assert!(text.contains("wspd_frames_total{keyword=\"icecandidate\"} 1"));
        assert!(text.contains("wspd_refusals_total{reason=\"too_big\"} 1"));
    }
}
