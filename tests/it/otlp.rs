//! One trace per call across domains: both servers of a federated call
//! export their spans over OTLP/HTTP to a real receiver (a small HTTP
//! server decoding the requests with the OpenTelemetry protobuf types, so
//! what is checked is what a collector would receive), and a collector
//! that is down or never answers changes nothing for the calls.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};

use crate::common::*;

/// How the receiver answers.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// 200 with an empty `ExportTraceServiceResponse`, as a collector.
    Ok,
    /// Reads the request, then never answers.
    Never,
}

/// A span as received, with the resource it came with.
#[derive(Clone, Debug)]
struct Got {
    resource: Vec<KeyValue>,
    span: Span,
}

/// An OTLP/HTTP receiver on 127.0.0.1: `POST /v1/traces`, protobuf.
struct Collector {
    addr: SocketAddr,
    spans: tokio::sync::watch::Receiver<Vec<Got>>,
    /// Requests received (answered or not).
    requests: tokio::sync::watch::Receiver<usize>,
}

impl Collector {
    async fn start(answer: Answer) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (spans_tx, spans) = tokio::sync::watch::channel(Vec::new());
        let (requests_tx, requests) = tokio::sync::watch::channel(0usize);
        let state = Arc::new((spans_tx, requests_tx));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let ctype = req
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        assert_eq!(path, "/v1/traces");
                        assert_eq!(ctype, "application/x-protobuf");
                        let export = ExportTraceServiceRequest::decode(body).unwrap();
                        let got = export.resource_spans.into_iter().flat_map(|rs| {
                            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
                            rs.scope_spans
                                .into_iter()
                                .flat_map(|ss| ss.spans)
                                .map(move |span| Got {
                                    resource: resource.clone(),
                                    span,
                                })
                        });
                        let got: Vec<Got> = got.collect();
                        state.0.send_modify(|all| all.extend(got));
                        state.1.send_modify(|n| *n += 1);
                        if answer == Answer::Never {
                            std::future::pending::<()>().await;
                        }
                        let reply = ExportTraceServiceResponse::default().encode_to_vec();
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(Bytes::from(reply)))
                                .unwrap(),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
                );
            }
        });
        Collector {
            addr,
            spans,
            requests,
        }
    }

    fn config(&self) -> String {
        format!("[tracing]\notlp_endpoint = \"http://{}\"\n", self.addr)
    }

    /// Waits (bounded) until the spans received satisfy `done`.
    async fn wait_for(&mut self, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let got = tokio::time::timeout(WAIT, self.spans.wait_for(|s| done(s)))
            .await
            .map(|s| s.unwrap().clone());
        got.unwrap_or_else(|_| {
            panic!(
                "not received in time: {what}; received {:#?}",
                self.spans.borrow()
            )
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn attr_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attr_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        any_value::Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

/// The spans of `domain`'s server named `name`.
fn spans_of<'a>(got: &'a [Got], domain: &str, name: &str) -> Vec<&'a Got> {
    got.iter()
        .filter(|g| {
            g.span.name == name && attr_str(&g.resource, "wsp.domain").as_deref() == Some(domain)
        })
        .collect()
}

fn one<'a>(got: &'a [Got], domain: &str, name: &str) -> &'a Span {
    let found = spans_of(got, domain, name);
    assert_eq!(found.len(), 1, "one {name:?} span from {domain}: {got:#?}");
    &found[0].span
}

/// The child spans of `parent` on `domain`'s server, each checked to be
/// in its trace and within its time.
fn steps<'a>(got: &'a [Got], domain: &str, parent: &Span) -> Vec<&'a Span> {
    let children: Vec<&Span> = got
        .iter()
        .filter(|g| attr_str(&g.resource, "wsp.domain").as_deref() == Some(domain))
        .map(|g| &g.span)
        .filter(|s| s.parent_span_id == parent.span_id)
        .collect();
    for c in &children {
        assert_eq!(c.trace_id, parent.trace_id);
        assert!(
            c.start_time_unix_nano >= parent.start_time_unix_nano,
            "{c:?}"
        );
        assert!(c.end_time_unix_nano >= c.start_time_unix_nano, "{c:?}");
        assert!(c.end_time_unix_nano <= parent.end_time_unix_nano, "{c:?}");
    }
    children
}

fn names(spans: &[&Span]) -> Vec<String> {
    spans.iter().map(|s| s.name.clone()).collect()
}

const CLIENT_TRACE: &str = "5d8e6a4c1f2b3a4958677685a4b3c2d1";
const CLIENT_SPAN: &str = "a1b2c3d4e5f60718";

/// Alice on a.test calls Bob on b.test with a traceparent of her own;
/// both servers run as processes with JSON logs and export to one
/// receiver. One trace: the client's id on both servers, b's call span a
/// child of a's, the link's opening and acceptance with their steps, and
/// the trace id on both servers' JSON log lines about the call.
#[tokio::test]
async fn a_federated_call_is_one_trace() {
    let mut collector = Collector::start(Answer::Ok).await;
    let net = Net::new("otlp-call").await;
    let json = ["--log-format", "json"];
    let mut a = Wspd::start_with(
        &net.config_file("a.test", &collector.config()),
        "info",
        &json,
    )
    .await;
    net.publish("a.test", "a.test", a.addr);
    let mut b = Wspd::start_with(
        &net.config_file("b.test", &collector.config()),
        "info",
        &json,
    )
    .await;
    net.publish("b.test", "b.test", b.addr);
    let mut alice = Client::connect_tls(a.addr, "a.test", &user_token("alice@a.test")).await;
    let mut bob = Client::connect_tls(b.addr, "b.test", &user_token("bob@b.test")).await;

    let id = "otlp-call-1";
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    alice
        .send(json!(["invite",
            {"caller": {"uri": "alice@a.test"}, "callee": {"uri": "bob@b.test"}},
            {"call": id, "traceparent": traceparent}]))
        .await;
    let inv = bob.expect("invite").await;
    // Bob's server sends its own context: the same trace, its span.
    let bobs = inv[2]["traceparent"].as_str().unwrap().to_string();
    assert!(bobs.starts_with(&format!("00-{CLIENT_TRACE}-")), "{inv}");
    bob.send(ringing(id)).await;
    alice.expect("ringing").await;
    bob.send(offer(id)).await;
    alice.expect("offer").await;
    alice.send(answer(id)).await;
    bob.expect("answer").await;
    alice.send(bye(id, 101)).await;
    bob.expect_bye(101).await;
    bob.send(bye(id, 101)).await;
    alice.expect_bye(101).await;

    let got = collector
        .wait_for("both call spans, the link's opening and acceptance", |g| {
            ["call", "link open"]
                .iter()
                .all(|n| spans_of(g, "a.test", n).len() == 1)
                && ["call", "link accept"]
                    .iter()
                    .all(|n| spans_of(g, "b.test", n).len() == 1)
                && g.len() >= 10
        })
        .await;

    // The resource names the service, the domain and the node.
    for g in &got {
        assert_eq!(
            attr_str(&g.resource, "service.name").as_deref(),
            Some("wspd")
        );
        assert!(attr_str(&g.resource, "wsp.node").is_some_and(|n| !n.is_empty()));
    }

    // One trace, the client's, through both servers.
    let call_a = one(&got, "a.test", "call");
    let call_b = one(&got, "b.test", "call");
    for s in got.iter().map(|g| &g.span) {
        assert_eq!(hex(&s.trace_id), CLIENT_TRACE, "{s:?}");
    }
    assert_eq!(
        hex(&call_a.parent_span_id),
        CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert_eq!(
        call_b.parent_span_id, call_a.span_id,
        "b's call is a child of a's"
    );
    assert_eq!(
        bobs,
        format!("00-{CLIENT_TRACE}-{}-01", hex(&call_b.span_id))
    );
    for call in [call_a, call_b] {
        assert_eq!(
            attr_str(&call.attributes, "wsp.outcome").as_deref(),
            Some("transferred")
        );
        assert_eq!(attr_int(&call.attributes, "wsp.bye_code"), Some(101));
        assert_eq!(
            attr_str(&call.attributes, "wsp.call.id").as_deref(),
            Some(id)
        );
        let events: Vec<&str> = call.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            events,
            ["ringing", "answer", "transfer", "transfer"],
            "{call:?}"
        );
        assert!(call.end_time_unix_nano > call.start_time_unix_nano);
    }
    assert_eq!(
        attr_str(&call_a.attributes, "wsp.via").as_deref(),
        Some("socket")
    );
    assert_eq!(
        attr_str(&call_b.attributes, "wsp.via").as_deref(),
        Some("link")
    );

    // The link's opening, a child of the first call, step by step.
    let open = one(&got, "a.test", "link open");
    assert_eq!(open.parent_span_id, call_a.span_id);
    assert_eq!(
        attr_str(&open.attributes, "wsp.result").as_deref(),
        Some("ok")
    );
    assert_eq!(
        names(&steps(&got, "a.test", open)),
        ["discovery", "connect", "tls", "upgrade"]
    );
    // Its acceptance on b.test: the keys fetched, the signature checked.
    let accept = one(&got, "b.test", "link accept");
    assert_eq!(accept.parent_span_id, open.span_id);
    assert_eq!(
        attr_str(&accept.attributes, "wsp.origin").as_deref(),
        Some("a.test")
    );
    assert_eq!(names(&steps(&got, "b.test", accept)), ["keys", "verify"]);

    // Nothing of the call's content in any span.
    let text = format!("{got:?}");
    assert!(
        !text.contains("v=0") && !text.contains("candidate:"),
        "{text}"
    );

    // Both servers' JSON log lines about the call carry its trace id, and
    // the link's opening (on a.test) names its steps with their times.
    let up = a.wait_for_line("link up").await;
    let v: Value = serde_json::from_str(&up).unwrap();
    assert_eq!(v["fields"]["trace_id"], CLIENT_TRACE, "{up}");
    let summary = v["fields"]["steps"].as_str().unwrap_or_default();
    for step in ["discovery=", "connect=", "tls=", "upgrade="] {
        assert!(summary.contains(step), "{up}");
    }
    for (w, name) in [(&mut a, "a.test"), (&mut b, "b.test")] {
        let line = w.wait_for_line("call ended").await;
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["span"]["trace_id"], CLIENT_TRACE, "{name}: {line}");
        assert_eq!(v["fields"]["outcome"], "transferred", "{name}: {line}");
    }
    // Counted once the collector's answer is in: the call, the link's
    // opening and its four steps.
    let a_metrics = || async { get_tls(a.addr, "a.test", "/metrics").await.2 };
    wait_until(|| async {
        metric_value(&a_metrics().await, "wspd_spans_total{result=\"exported\"}") >= 6.0
    })
    .await;
    let metrics = a_metrics().await;
    assert_eq!(
        metric_value(&metrics, "wspd_call_setup_seconds_count{until=\"answer\"}"),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "wspd_call_setup_seconds_count{until=\"transfer\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(&metrics, "wspd_link_open_seconds_count{result=\"ok\"}"),
        1.0
    );
}

/// A traceparent that is not valid is ignored, never refused: the call
/// goes on with a trace of its own, and the bad value is in no log line.
#[tokio::test]
async fn an_invalid_traceparent_starts_a_new_trace() {
    let mut collector = Collector::start(Answer::Ok).await;
    let (logs, _guard) = Logs::capture();
    let s = TestServer::start(config("localhost", &collector.config())).await;
    let mut alice = s.connect("alice@localhost").await;
    let mut bob = s.connect_online("bob@localhost").await;
    let bad = "00-NOT-A-TRACE\nINJECTED";
    alice
        .send(json!(["invite",
            {"caller": {"uri": "alice@localhost"}, "callee": {"uri": "bob@localhost"}},
            {"call": "bad-trace-1", "traceparent": bad}]))
        .await;
    let inv = bob.expect("invite").await;
    let tp = wspd::trace::TraceParent::parse(inv[2]["traceparent"].as_str().unwrap()).unwrap();
    bob.send(bye("bad-trace-1", 486)).await;
    alice.expect_bye(486).await;
    let got = collector
        .wait_for("the call's span", |g| {
            spans_of(g, "localhost", "call").len() == 1
        })
        .await;
    let call = one(&got, "localhost", "call");
    assert_eq!(call.trace_id, tp.trace_id.0.to_vec());
    assert!(call.parent_span_id.is_empty(), "a root span: {call:?}");
    assert_eq!(
        attr_str(&call.attributes, "wsp.outcome").as_deref(),
        Some("busy")
    );
    assert_eq!(attr_int(&call.attributes, "wsp.bye_code"), Some(486));
    let ended = logs.lines_with(&["call ended"]);
    assert!(
        ended[0].contains(&format!("trace_id={}", tp.trace_id)),
        "{ended:?}"
    );
    assert!(!logs.text().contains("INJECTED"));
}

/// A collector that is down, or that takes the spans and never answers:
/// the calls end as they would without it, and the failures are counted.
#[tokio::test]
async fn a_collector_down_or_silent_changes_no_call() {
    let silent = Collector::start(Answer::Never).await;
    let down = format!(
        "[tracing]\notlp_endpoint = \"http://127.0.0.1:{}\"\n",
        free_port()
    );
    for (name, extra) in [("silent", silent.config()), ("down", down)] {
        let net = Net::new(&format!("otlp-{name}")).await;
        let a = net.server("a.test", &extra).await;
        let b = net.server("b.test", &extra).await;
        let mut alice = a.connect_online("alice@a.test").await;
        let mut bob = b.connect_online("bob@b.test").await;
        for n in 0..5 {
            let id = format!("otlp-{name}-{n}");
            alice.send(invite("alice@a.test", "bob@b.test", &id)).await;
            bob.expect("invite").await;
            bob.send(offer(&id)).await;
            alice.expect("offer").await;
            alice.send(answer(&id)).await;
            bob.expect("answer").await;
            alice.send(bye(&id, 101)).await;
            bob.expect_bye(101).await;
            bob.send(bye(&id, 101)).await;
            alice.expect_bye(101).await;
        }
        for s in [&a, &b] {
            assert_eq!(s.calls_ended("transferred").await, 5.0, "{name}");
            assert_eq!(s.metric("wspd_calls_active").await, 0.0, "{name}");
        }
        if name == "down" {
            // Each server tried, and counted what it could not send.
            for s in [&a, &b] {
                wait_until(|| async {
                    metric_value(&s.metrics().await, "wspd_spans_total{result=\"failed\"}") >= 1.0
                })
                .await;
            }
        }
    }
    // The silent collector was sent spans (and kept them waiting).
    let mut requests = silent.requests.clone();
    tokio::time::timeout(WAIT, requests.wait_for(|n| *n >= 2))
        .await
        .expect("export requests reached the silent collector")
        .unwrap();
}

/// Waits (bounded by [`WAIT`]) until `check` holds, looking again every
/// 20 ms.
async fn wait_until<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::time::timeout(WAIT, async {
        while !check().await {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("in time");
}
