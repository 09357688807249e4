//! Spans of calls and links, exported over OTLP/HTTP (protobuf) to an
//! OpenTelemetry collector when `[tracing] otlp_endpoint` is set.
//!
//! A span is plain data while it is recorded ([`Recording`]: ids, times,
//! attributes, events), built only for a sampled trace of a server that
//! exports. When it ends it becomes the SDK's `SpanData` and is queued with
//! `try_send` in a bounded queue; one task of the server takes batches from
//! the queue and hands them to the OTLP exporter. A full queue drops the
//! span (`wspd_spans_total{result="dropped"}`), so a slow or absent
//! collector costs the calls nothing: no call ever waits for the export.
//! Without `[tracing]` there is no queue, no task, and a call records
//! nothing ([`Telemetry::record`] returns `None`).
//!
//! The ids are this server's own ([`crate::trace`]): the trace id of a
//! span is the one on the call's log lines and in the `traceparent` sent
//! on, whether or not the span is exported.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Event, SpanContext, SpanId as OtelSpanId, SpanKind, Status, TraceFlags, TraceId as OtelTraceId,
    TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Tracing;
use crate::logging::Escaped;
use crate::metrics::Metrics;
use crate::trace::{CallTrace, SpanId, Step, TraceId};

/// Spans waiting for export, at most (OpenTelemetry's default queue).
pub const QUEUE: usize = 2048;
/// Spans per export request, at most.
const MAX_BATCH: usize = 512;
/// How long a batch waits for more spans before it is sent.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// One export request, at most (connect, send, answer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, what is queued is sent within this.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("[tracing] otlp_endpoint: {0}")]
pub struct TelemetryError(String);

/// Where ended spans go: the queue of the export task.
struct Sink {
    tx: mpsc::Sender<SpanData>,
    metrics: Arc<Metrics>,
    scope: InstrumentationScope,
}

impl Sink {
    fn send(&self, span: SpanData) {
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(_) => self.metrics.span("dropped"),
        }
    }
}

/// The server's tracing: off, or exporting with a sampling ratio.
pub struct Telemetry {
    sink: Option<Arc<Sink>>,
    ratio: f64,
}

impl Telemetry {
    /// Nothing is recorded or exported.
    pub fn off() -> Telemetry {
        Telemetry {
            sink: None,
            ratio: 0.0,
        }
    }

    /// Exports to `config.endpoint` from a task of `tasks`, which sends
    /// what is queued when `shutdown` fires, then ends. Must run inside
    /// the server's runtime.
    pub fn start(
        config: &Tracing,
        domain: &str,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Telemetry, TelemetryError> {
        use opentelemetry_otlp::{Protocol, WithExportConfig};
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TelemetryError(
                "the exporter needs the server's runtime".into(),
            ));
        }
        // The `hyper-client` feature: requests on this runtime, each
        // within the timeout, the answer's body bounded.
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let resource = Resource::builder_empty()
            .with_service_name("wspd")
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("wsp.domain", domain.to_string()),
                KeyValue::new("wsp.node", config.node.clone()),
                KeyValue::new("service.instance.id", config.node.clone()),
            ])
            .build();
        exporter.set_resource(&resource);
        let (tx, rx) = mpsc::channel(QUEUE);
        tasks.spawn(export(rx, exporter, metrics.clone(), shutdown));
        info!(
            endpoint = %config.endpoint,
            sample_ratio = config.sample_ratio,
            "exporting spans over OTLP/HTTP"
        );
        Ok(Telemetry {
            sink: Some(Arc::new(Sink {
                tx,
                metrics,
                scope: InstrumentationScope::builder("wspd")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            })),
            ratio: config.sample_ratio,
        })
    }

    /// The sampling ratio: 0 when nothing is exported.
    pub fn ratio(&self) -> f64 {
        if self.sink.is_some() { self.ratio } else { 0.0 }
    }

    /// [`Telemetry::record`] starting now (the clock is read only for a
    /// span that is recorded).
    pub fn record_now(
        &self,
        name: &'static str,
        kind: SpanKind,
        trace: &CallTrace,
    ) -> Option<Recording> {
        if self.sink.is_none() || !trace.sampled {
            return None;
        }
        self.record(name, kind, trace, SystemTime::now())
    }

    /// A span of `trace` (this server's span of it: `trace.span_id`, its
    /// parent `trace.parent`), recorded only when the trace is sampled and
    /// spans are exported.
    pub fn record(
        &self,
        name: &'static str,
        kind: SpanKind,
        trace: &CallTrace,
        start: SystemTime,
    ) -> Option<Recording> {
        let sink = self.sink.as_ref().filter(|_| trace.sampled)?;
        Some(Recording {
            sink: sink.clone(),
            name,
            kind,
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent: trace.parent,
            parent_remote: trace.parent.is_some(),
            start,
            attributes: Vec::with_capacity(8),
            events: Vec::new(),
            error: None,
        })
    }
}

/// A span being recorded: plain data, sent to the export queue by
/// [`Recording::end`] (or dropped unsent).
pub struct Recording {
    sink: Arc<Sink>,
    name: &'static str,
    kind: SpanKind,
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    /// The parent is another process's span (a client's or a server's).
    parent_remote: bool,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    /// The span ended in error, with this description.
    error: Option<Cow<'static, str>>,
}

impl Recording {
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The parent is a span of this server (`record` takes a parent as
    /// another process's).
    pub fn set_local_parent(&mut self) {
        self.parent_remote = false;
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attributes.push(KeyValue::new(key, value));
    }

    /// An event now, with its attributes.
    pub fn event(&mut self, name: &'static str, attributes: Vec<KeyValue>) {
        self.event_at(name, SystemTime::now(), attributes);
    }

    pub fn event_at(&mut self, name: &'static str, at: SystemTime, attributes: Vec<KeyValue>) {
        self.events.push(Event::new(name, at, attributes, 0));
    }

    /// Marks the span as failed.
    pub fn fail(&mut self, description: impl Into<Cow<'static, str>>) {
        self.error = Some(description.into());
    }

    /// A child span of this one, in the same trace.
    pub fn child(&self, name: &'static str, kind: SpanKind, start: SystemTime) -> Recording {
        Recording {
            sink: self.sink.clone(),
            name,
            kind,
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent: Some(self.span_id),
            parent_remote: false,
            start,
            attributes: Vec::new(),
            events: Vec::new(),
            error: None,
        }
    }

    /// One child span for each step, with its own times; a failed step's
    /// span is marked as such.
    pub fn steps(&self, steps: &[Step]) {
        for s in steps {
            let mut child = self.child(s.name, SpanKind::Internal, s.start);
            if let Some(addr) = s.addr {
                child.set("server.address", addr.ip().to_string());
                child.set("server.port", i64::from(addr.port()));
            }
            if let Some(detail) = s.detail {
                child.set("wsp.detail", detail);
            }
            if let Some(reason) = s.failed {
                child.fail(reason);
            }
            child.end_at(s.start + s.took);
        }
    }

    /// Ends the span now and queues it for export.
    pub fn end(self) {
        self.end_at(SystemTime::now());
    }

    pub fn end_at(self, end: SystemTime) {
        let sink = self.sink.clone();
        let span = self.into_data(end);
        sink.send(span);
    }

    fn into_data(self, end: SystemTime) -> SpanData {
        let mut events = SpanEvents::default();
        events.events = self.events;
        SpanData {
            span_context: SpanContext::new(
                OtelTraceId::from_bytes(self.trace_id.0),
                OtelSpanId::from_bytes(self.span_id.0),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: self
                .parent
                .map_or(OtelSpanId::INVALID, |p| OtelSpanId::from_bytes(p.0)),
            parent_span_is_remote: self.parent_remote,
            span_kind: self.kind,
            name: Cow::Borrowed(self.name),
            start_time: self.start,
            end_time: end.max(self.start),
            attributes: self.attributes,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: match self.error {
                Some(d) => Status::error(d),
                None => Status::Unset,
            },
            instrumentation_scope: self.sink.scope.clone(),
        }
    }
}

/// The export task: batches of up to [`MAX_BATCH`] spans, sent one at a
/// time; at shutdown, what is queued is sent once more within
/// [`FLUSH_TIMEOUT`].
async fn export(
    mut rx: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let send = async |batch: Vec<SpanData>, within: Duration| {
        let n = batch.len() as u64;
        match tokio::time::timeout(within, exporter.export(batch)).await {
            Ok(Ok(())) => metrics.spans("exported", n),
            Ok(Err(e)) => {
                metrics.spans("failed", n);
                debug!(spans = n, "span export failed: {}", Escaped(&e));
            }
            Err(_) => {
                metrics.spans("failed", n);
                debug!(spans = n, "span export failed: no answer in time");
            }
        }
    };
    loop {
        let first = tokio::select! {
            s = rx.recv() => s,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        let until = Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => batch.push(s),
                    None => break,
                },
                _ = tokio::time::sleep_until(until) => break,
                _ = shutdown.cancelled() => break,
            }
        }
        let n = batch.len() as u64;
        // A shutdown does not wait for a slow collector: the batch under
        // way is given up, what is queued gets one more try below.
        tokio::select! {
            _ = send(batch, EXPORT_TIMEOUT) => {}
            _ = shutdown.cancelled() => {
                metrics.spans("failed", n);
                break;
            }
        }
    }
    // Shutting down: the calls ended by the drain are queued by now.
    let mut rest = Vec::new();
    while let Ok(s) = rx.try_recv() {
        rest.push(s);
    }
    if !rest.is_empty() {
        send(rest, FLUSH_TIMEOUT).await;
    }
    if let Err(e) = exporter.shutdown() {
        warn!("span exporter shutdown: {}", Escaped(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Origin;

    fn with_queue(n: usize, metrics: Arc<Metrics>) -> (Telemetry, mpsc::Receiver<SpanData>) {
        let (tx, rx) = mpsc::channel(n);
        let sink = Sink {
            tx,
            metrics,
            scope: InstrumentationScope::builder("wspd").build(),
        };
        let t = Telemetry {
            sink: Some(Arc::new(sink)),
            ratio: 1.0,
        };
        (t, rx)
    }

    #[test]
    fn a_full_queue_drops_spans_and_counts_them() {
        let metrics = Arc::new(Metrics::new());
        let (t, mut rx) = with_queue(2, metrics.clone());
        let trace = CallTrace::new(None, Origin::Client, t.ratio());
        for _ in 0..5 {
            let rec = t.record("call", SpanKind::Server, &trace, SystemTime::now());
            rec.expect("sampled at ratio 1").end();
        }
        assert!(
            metrics
                .render()
                .contains("wspd_spans_total{result=\"dropped\"} 3"),
            "{}",
            metrics.render()
        );
        let first = rx.try_recv().unwrap();
        assert_eq!(first.name, "call");
        assert_eq!(
            first.span_context.trace_id().to_bytes(),
            trace.trace_id.0,
            "the call's own ids"
        );
        assert_eq!(first.parent_span_id, OtelSpanId::INVALID);
    }

    #[test]
    fn nothing_is_recorded_off_or_unsampled() {
        let trace = CallTrace::new(None, Origin::Client, 1.0);
        let off = Telemetry::off();
        assert_eq!(off.ratio(), 0.0);
        assert!(
            off.record("call", SpanKind::Server, &trace, SystemTime::now())
                .is_none()
        );
        let (t, _rx) = with_queue(2, Arc::new(Metrics::new()));
        let unsampled = CallTrace {
            sampled: false,
            ..trace
        };
        assert!(
            t.record("call", SpanKind::Server, &unsampled, SystemTime::now())
                .is_none()
        );
    }

    #[test]
    fn steps_become_child_spans_with_their_times() {
        let (t, mut rx) = with_queue(8, Arc::new(Metrics::new()));
        let trace = CallTrace::new(None, Origin::Client, 1.0);
        let start = SystemTime::now();
        let rec = t
            .record("link open", SpanKind::Client, &trace, start)
            .unwrap();
        let steps = [
            Step {
                name: "discovery",
                start,
                took: Duration::from_millis(3),
                addr: None,
                detail: None,
                failed: None,
            },
            Step {
                name: "connect",
                start: start + Duration::from_millis(3),
                took: Duration::from_millis(2),
                addr: Some("127.0.0.1:443".parse().unwrap()),
                detail: None,
                failed: Some("connect"),
            },
        ];
        rec.steps(&steps);
        rec.end();
        let d = rx.try_recv().unwrap();
        assert_eq!(d.name, "discovery");
        assert_eq!(d.parent_span_id.to_bytes(), trace.span_id.0);
        assert_eq!(
            d.end_time.duration_since(d.start_time).unwrap(),
            Duration::from_millis(3)
        );
        let c = rx.try_recv().unwrap();
        assert_eq!(c.name, "connect");
        assert!(matches!(c.status, Status::Error { .. }));
        assert_eq!(rx.try_recv().unwrap().name, "link open");
    }
}
