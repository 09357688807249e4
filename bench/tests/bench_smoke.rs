//! `wsp-bench --quick` as a smoke test: the bench starts its own servers
//! (one domain, two federated domains over TLS, and, in a test of its own,
//! two nodes of one domain on a real Redis), places calls, checks
//! that every frame arrived exactly once and in order, and writes its JSON.
//! A test of correctness, never of speed: no figure is compared to a goal.

use std::process::Command;

use serde_json::Value;

fn number(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} is missing or not a number in {v:#}"))
}

/// Runs `wsp-bench --quick` with `args` (e.g. `--only cluster`) and returns
/// its JSON report; fails with the bench's output when it fails.
fn run_quick(name: &str, args: &[&str]) -> Value {
    let json =
        std::env::temp_dir().join(format!("wsp-bench-smoke{name}-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_wsp-bench"))
        .arg("--quick")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("wsp-bench starts");
    assert!(
        out.status.success(),
        "wsp-bench --quick {} failed\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).expect("the report is JSON")
}

#[test]
fn quick_bench_runs_clean() {
    let v = run_quick("", &[]);

    assert_eq!(v["quick"], true);
    assert_eq!(v["check"]["ok"], true);
    for key in ["lost", "duplicated", "reordered"] {
        assert_eq!(v["check"][key], 0, "{key}");
    }
    assert!(number(&v, "/check/frames_verified") > 0.0);
    assert_eq!(number(&v, "/call/frames"), 22.0);

    for mode in ["local", "federated"] {
        let m = format!("/modes/{mode}");
        for phase in ["saturation", "half"] {
            let p = format!("{m}/{phase}");
            assert!(number(&v, &format!("{p}/calls")) >= 1.0, "{p}: no call");
            for field in [
                "calls_per_s",
                "frames_per_s",
                "server_cpu_us_per_call",
                "relays_per_server_cpu_s",
                "client_cpu_us_per_call",
                "hop_latency_us/p50",
                "hop_latency_us/p99",
                "hop_latency_us/max",
                "setup_latency_us/p50",
                "setup_latency_us/p99",
                "setup_latency_us/max",
            ] {
                number(&v, &format!("{p}/{field}"));
            }
        }
        let scaling = v
            .pointer(&format!("{m}/scaling"))
            .and_then(Value::as_array)
            .expect("scaling rows");
        assert!(scaling.len() >= 2, "{mode}: scaling rows");
        assert!(
            scaling
                .iter()
                .any(|r| r["idle_connections"].as_u64() > Some(0)),
            "{mode}: a row with idle connections"
        );
        assert!(number(&v, &format!("{m}/idle_memory/connections")) > 0.0);
        number(&v, &format!("{m}/idle_memory/kib_per_connection"));
        assert!(number(&v, &format!("{m}/frames_verified")) > 0.0);
    }
    assert_eq!(v["modes"]["local"]["transport"], "ws");
    assert_eq!(v["modes"]["federated"]["transport"], "wss");
    assert!(v["goals"].as_array().is_some_and(|g| g.len() == 10));
    assert!(
        v["cluster"].is_null(),
        "the cluster is measured on demand only"
    );
}

/// `--quick --only cluster`: a real `redis-server` (tests/run.sh installs
/// it), two nodes of one domain, cross-node and same-node calls; a few
/// seconds.
#[test]
fn quick_cluster_bench_runs_clean() {
    let v = run_quick("-cluster", &["--only", "cluster"]);

    assert_eq!(v["check"]["ok"], true);
    assert!(number(&v, "/check/frames_verified") > 0.0);
    assert!(number(&v, "/cluster/frames_verified") > 0.0);
    assert!(v["modes"].as_object().is_some_and(|m| m.is_empty()));
    for side in ["cross_node", "same_node"] {
        for phase in ["saturation", "half"] {
            let p = format!("/cluster/{side}/{phase}");
            assert!(number(&v, &format!("{p}/calls")) >= 1.0, "{p}: no call");
            // n1, n2 and redis-server.
            let cpu = v
                .pointer(&format!("{p}/server_cpu_s"))
                .and_then(Value::as_array)
                .expect("server_cpu_s");
            assert_eq!(cpu.len(), 3, "{p}: CPU of both nodes and Redis");
            number(&v, &format!("{p}/hop_latency_us/p99"));
        }
    }
    for key in [
        "cpu_us_per_call_cross_node",
        "cpu_us_per_call_same_node",
        "cost_ratio",
        "hop_p99_ms_cross_node",
        "hop_p99_ms_same_node",
        "added_p99_ms",
    ] {
        number(&v, &format!("/cluster/{key}"));
    }
    // Every frame of a cross-node call crossed the nodes once.
    assert_eq!(number(&v, "/cluster/messages_per_cross_node_call"), 22.0);
}

/// `--quick --only scale`: a few hundred idle sockets in two steps over
/// WebSocket and TLS, the keepalive at a 1 s ping, the handshakes full and
/// resumed, and a reconnect storm of 200 clients with calls going on; a
/// few seconds.
#[test]
fn quick_scale_bench_runs_clean() {
    let v = run_quick("-scale", &["--only", "scale"]);

    assert_eq!(v["check"]["ok"], true);
    assert!(number(&v, "/scale/frames_verified") > 0.0);
    assert_eq!(number(&v, "/scale/idle_connections"), 400.0);
    assert_eq!(number(&v, "/scale/tls_idle_connections"), 300.0);
    for key in [
        "kib_per_connection",
        "tls_kib_per_connection",
        "keepalive_core_percent_per_100k",
        "storm_seconds",
        "storm_refused",
        "handshakes_per_cpu_second_full",
        "handshakes_per_cpu_second_resumed",
        "storm_hop_p99_ms",
    ] {
        number(&v, &format!("/scale/{key}"));
    }
    // The plain steps, each with the cost of a call with them, and the
    // TLS one.
    let steps = v["scale"]["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3, "{steps:?}");
    for s in &steps[..2] {
        assert!(number(s, "/calls/calls") >= 1.0, "{s}");
    }
    // Every idle socket was pinged in the keepalive's window.
    for i in v["scale"]["idle_cpu"].as_array().expect("idle_cpu") {
        assert!(number(i, "/pings") >= number(i, "/connections"), "{i}");
    }
    // The server resumed every returning client's session.
    assert_eq!(
        number(&v, "/scale/handshakes_seen_resumed"),
        number(&v, "/scale/handshake_clients")
    );
    assert_eq!(
        number(&v, "/scale/storm_resumed"),
        number(&v, "/scale/storm_clients")
    );
}
