//! The figures of a run, as a table and as JSON, and the goals they meet.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::load::{CALL_FRAMES, PhaseResult, Script};
use crate::procs::ServerProc;
use crate::scale::{Handshakes, IdleCpu, ScaleResult};

/// Resident memory of idle sockets on one server.
pub struct IdleMemory {
    pub connections: usize,
    pub transport: &'static str,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub opened_in: Duration,
}

impl IdleMemory {
    pub fn kib_per_connection(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64
            / self.connections.max(1) as f64
    }
}

/// Everything measured on one setup (local or federated).
pub struct ModeResult {
    pub name: &'static str,
    pub transport: &'static str,
    pub servers: Vec<String>,
    pub idle: Option<IdleMemory>,
    pub with_idle: Option<PhaseResult>,
    pub scaling: Vec<PhaseResult>,
    pub saturation: Option<PhaseResult>,
    pub half: Option<PhaseResult>,
    pub frames_verified: u64,
}

impl ModeResult {
    pub fn new(name: &'static str, transport: &'static str, servers: &[ServerProc]) -> Self {
        ModeResult {
            name,
            transport,
            servers: servers.iter().map(|s| s.domain.clone()).collect(),
            idle: None,
            with_idle: None,
            scaling: Vec::new(),
            saturation: None,
            half: None,
            frames_verified: 0,
        }
    }
}

/// The cluster setup: cross-node calls against same-node calls, measured
/// in one run on the same two nodes and Redis.
pub struct ClusterResult {
    pub nodes: Vec<String>,
    pub redis_version: String,
    pub cross_sat: PhaseResult,
    pub same_sat: PhaseResult,
    /// Both at half of the cross-node saturation rate.
    pub cross_half: PhaseResult,
    pub same_half: PhaseResult,
    /// Messages the nodes published to each other per cross-node call.
    pub messages_per_cross_call: f64,
    pub frames_verified: u64,
}

/// Hop latency percentiles of a phase, µs.
pub fn p50_us(r: &PhaseResult) -> f64 {
    r.rec.hop.value_at_quantile(0.5) as f64
}

pub fn p99_us(r: &PhaseResult) -> f64 {
    r.rec.hop.value_at_quantile(0.99) as f64
}

fn p99_ms(r: &PhaseResult) -> f64 {
    r.rec.hop.value_at_quantile(0.99) as f64 / 1000.0
}

fn p50_ms(r: &PhaseResult) -> f64 {
    r.rec.hop.value_at_quantile(0.5) as f64 / 1000.0
}

impl ClusterResult {
    /// Server CPU (both nodes and Redis) of a cross-node call over that of
    /// a same-node call, at saturation.
    pub fn cost_ratio(&self) -> f64 {
        self.cross_sat.cpu_per_call_us() / self.same_sat.cpu_per_call_us().max(1e-9)
    }

    /// The same at half load.
    pub fn cost_ratio_half(&self) -> f64 {
        self.cross_half.cpu_per_call_us() / self.same_half.cpu_per_call_us().max(1e-9)
    }

    /// Hop latency p99 cross-node minus same-node, at half load, ms.
    pub fn added_p99_ms(&self) -> f64 {
        p99_ms(&self.cross_half) - p99_ms(&self.same_half)
    }

    pub fn added_p50_ms(&self) -> f64 {
        p50_ms(&self.cross_half) - p50_ms(&self.same_half)
    }

    fn table(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "
cluster (one domain on two nodes, {}, sharing one redis-server ({}); clients on ws://; server CPU = {} + redis-server)",
            self.nodes.join(" and "),
            self.redis_version,
            self.nodes.join(" + "),
        );
        let _ = writeln!(
            o,
            "  {:<34} {:>8} {:>12} {:>20} {:>9} {:>10} {:>20} {:>22} {:>6}",
            "load",
            "calls/s",
            "srv CPU/call",
            "n1/n2/redis us/call",
            "csw/call",
            "client CPU",
            "hop p50/p99/max us",
            "setup p50/p99/max us",
            "others"
        );
        let rows = [
            (
                format!("cross-node saturation ({} pairs)", self.cross_sat.pairs),
                &self.cross_sat,
            ),
            (
                format!("same-node saturation ({} pairs)", self.same_sat.pairs),
                &self.same_sat,
            ),
            (
                format!(
                    "cross-node half ({:.0} calls/s)",
                    self.cross_half.rate.unwrap_or(0.0)
                ),
                &self.cross_half,
            ),
            (
                format!(
                    "same-node half ({:.0} calls/s)",
                    self.same_half.rate.unwrap_or(0.0)
                ),
                &self.same_half,
            ),
        ];
        for (label, r) in rows {
            let split: Vec<String> = r
                .server_cpu
                .iter()
                .map(|c| format!("{:.0}", c.as_secs_f64() * 1e6 / r.calls.max(1) as f64))
                .collect();
            let _ = writeln!(
                o,
                "  {:<34} {:>8.0} {:>10.0}us {:>20} {:>9.1} {:>8.0}us {:>20} {:>22} {:>5.0}%",
                label,
                r.calls_per_s(),
                r.cpu_per_call_us(),
                split.join("/"),
                r.switches_per_call(),
                r.client_cpu.as_secs_f64() * 1e6 / r.calls.max(1) as f64,
                pct_text(&r.rec.hop),
                pct_text(&r.rec.setup),
                r.other_load() * 100.0,
            );
        }
        let _ = writeln!(
            o,
            "  cost: a cross-node call takes {:.2}x the server CPU of a same-node call at saturation ({:.0} / {:.0} us), {:.2}x at half load ({:.0} / {:.0} us)",
            self.cost_ratio(),
            self.cross_sat.cpu_per_call_us(),
            self.same_sat.cpu_per_call_us(),
            self.cost_ratio_half(),
            self.cross_half.cpu_per_call_us(),
            self.same_half.cpu_per_call_us(),
        );
        let _ = writeln!(
            o,
            "  added hop latency at half load ({:.0} calls/s both): p50 {:+.3} ms ({:.3} vs {:.3}), p99 {:+.3} ms ({:.3} vs {:.3})",
            self.cross_half.rate.unwrap_or(0.0),
            self.added_p50_ms(),
            p50_ms(&self.cross_half),
            p50_ms(&self.same_half),
            self.added_p99_ms(),
            p99_ms(&self.cross_half),
            p99_ms(&self.same_half),
        );
        let _ = writeln!(
            o,
            "  through Redis: {:.1} messages per cross-node call, none for a same-node call",
            self.messages_per_cross_call
        );
        let _ = writeln!(
            o,
            "  check: {} frames verified exactly once and in order; every socket probed clean; 0 calls left on the nodes",
            self.frames_verified
        );
    }

    fn json(&self) -> Value {
        let phase = |r: &PhaseResult| {
            let mut v = phase_json(r, 0);
            v["server_processes"] = json!(["n1", "n2", "redis-server"]);
            v
        };
        json!({
            "nodes": self.nodes,
            "redis": self.redis_version,
            "transport": "ws",
            "pairs": self.cross_sat.pairs,
            "half_load_calls_per_s": self.cross_half.rate,
            "cross_node": {"saturation": phase(&self.cross_sat), "half": phase(&self.cross_half)},
            "same_node": {"saturation": phase(&self.same_sat), "half": phase(&self.same_half)},
            "cpu_us_per_call_cross_node": self.cross_sat.cpu_per_call_us(),
            "cpu_us_per_call_same_node": self.same_sat.cpu_per_call_us(),
            "cost_ratio": self.cost_ratio(),
            "cpu_us_per_call_cross_node_half": self.cross_half.cpu_per_call_us(),
            "cpu_us_per_call_same_node_half": self.same_half.cpu_per_call_us(),
            "cost_ratio_half": self.cost_ratio_half(),
            "hop_p50_ms_cross_node": p50_ms(&self.cross_half),
            "hop_p50_ms_same_node": p50_ms(&self.same_half),
            "hop_p99_ms_cross_node": p99_ms(&self.cross_half),
            "hop_p99_ms_same_node": p99_ms(&self.same_half),
            "added_p50_ms": self.added_p50_ms(),
            "added_p99_ms": self.added_p99_ms(),
            "messages_per_cross_node_call": self.messages_per_cross_call,
            "frames_verified": self.frames_verified,
        })
    }
}

pub struct Report {
    pub quick: bool,
    pub server_log: String,
    pub nofile: u64,
    pub offer_bytes: usize,
    pub answer_bytes: usize,
    pub modes: Vec<ModeResult>,
    pub cluster: Option<ClusterResult>,
    pub scale: Option<ScaleResult>,
}

/// One line while the bench runs.
pub fn brief(r: &PhaseResult, idle: usize) -> String {
    let load = match r.rate {
        Some(rate) => format!("{} pairs paced at {rate:.0} calls/s", r.pairs),
        None => format!("{} pairs", r.pairs),
    };
    let idle = if idle > 0 {
        format!(" + {idle} idle")
    } else {
        String::new()
    };
    format!(
        "{load}{idle}: {:.0} calls/s, {:.0} us server CPU/call, {:.0} relays/server-CPU-s, {} syscalls + {:.1} switches/call, setup p99 {} us, others used {:.0}% of the CPUs",
        r.calls_per_s(),
        r.cpu_per_call_us(),
        r.relays_per_cpu_s(),
        r.syscalls_per_call()
            .map_or("?".into(), |n| format!("{n:.1}")),
        r.switches_per_call(),
        r.rec.setup.value_at_quantile(0.99),
        r.other_load() * 100.0
    )
}

fn machine() -> (String, usize, String) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    (cpu, cores, kernel)
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

fn pct(h: &Histogram<u64>) -> Value {
    json!({
        "p50": h.value_at_quantile(0.5),
        "p99": h.value_at_quantile(0.99),
        "max": h.max(),
        "count": h.len(),
    })
}

fn pct_text(h: &Histogram<u64>) -> String {
    format!(
        "{}/{}/{}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    )
}

pub fn phase_json(r: &PhaseResult, idle: usize) -> Value {
    json!({
        "pairs": r.pairs,
        "idle_connections": idle,
        "paced_calls_per_s": r.rate,
        "late_starts": r.late,
        "window_s": r.window.as_secs_f64(),
        "calls": r.calls,
        "calls_per_s": r.calls_per_s(),
        "frames_per_s": r.frames_per_s(),
        "server_cpu_s": r.server_cpu.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
        "server_cpu_us_per_call": r.cpu_per_call_us(),
        "relays_per_server_cpu_s": r.relays_per_cpu_s(),
        "client_cpu_us_per_call": r.client_cpu.as_secs_f64() * 1e6 / r.calls.max(1) as f64,
        "server_syscalls_per_call": r.syscalls_per_call(),
        "server_context_switches_per_call": r.switches_per_call(),
        "other_processes_cpu_share": r.other_load(),
        "hop_latency_us": pct(&r.rec.hop),
        "setup_latency_us": pct(&r.rec.setup),
    })
}

/// A goal of the issue and whether this run meets it.
struct Goal {
    what: &'static str,
    target: f64,
    value: Option<f64>,
    at_least: bool,
    unit: &'static str,
}

impl Goal {
    fn met(&self) -> Option<bool> {
        self.value.map(|v| {
            if self.at_least {
                v >= self.target
            } else {
                v <= self.target
            }
        })
    }
}

impl Report {
    pub fn new(quick: bool, server_log: &str, nofile: u64, script: &Script) -> Report {
        Report {
            quick,
            server_log: server_log.into(),
            nofile,
            offer_bytes: script.offer_len(),
            answer_bytes: script.answer_len(),
            modes: Vec::new(),
            cluster: None,
            scale: None,
        }
    }

    pub fn header(&self) -> String {
        let (cpu, cores, kernel) = machine();
        format!(
            "wsp-bench{}: {} build; {cores} cores ({cpu}); Linux {kernel}; server log filter {:?}; \
             open files {}; a call = invite, ringing, offer ({} B), answer ({} B), 8+8 candidates, bye 101 x2 = {CALL_FRAMES} frames",
            if self.quick { " --quick" } else { "" },
            profile(),
            self.server_log,
            self.nofile,
            self.offer_bytes,
            self.answer_bytes,
        )
    }

    fn mode(&self, name: &str) -> Option<&ModeResult> {
        self.modes.iter().find(|m| m.name == name)
    }

    fn goals(&self) -> Vec<Goal> {
        let local = self.mode("local");
        let fed = self.mode("federated");
        let scale = self.scale.as_ref();
        vec![
            Goal {
                what: "local: frames relayed per server CPU-second (saturation)",
                target: 150_000.0,
                value: local
                    .and_then(|m| m.saturation.as_ref())
                    .map(|r| r.relays_per_cpu_s()),
                at_least: true,
                unit: "",
            },
            Goal {
                what: "federated: server CPU per call, both servers (saturation)",
                target: 300.0,
                value: fed
                    .and_then(|m| m.saturation.as_ref())
                    .map(|r| r.cpu_per_call_us()),
                at_least: false,
                unit: "us",
            },
            Goal {
                what: "memory per idle plain (ws) connection",
                target: 8.0,
                value: local
                    .and_then(|m| m.idle.as_ref())
                    .map(|i| i.kib_per_connection()),
                at_least: false,
                unit: "KiB",
            },
            Goal {
                what: "memory per idle TLS (wss) connection",
                target: 24.0,
                value: fed
                    .and_then(|m| m.idle.as_ref())
                    .map(|i| i.kib_per_connection()),
                at_least: false,
                unit: "KiB",
            },
            Goal {
                what: "federated: call setup p99 at half of saturation",
                target: 5000.0,
                value: fed
                    .and_then(|m| m.half.as_ref())
                    .map(|r| r.rec.setup.value_at_quantile(0.99) as f64),
                at_least: false,
                unit: "us",
            },
            Goal {
                what: "cluster: CPU of a cross-node / a same-node call (sat.)",
                target: 1.5,
                value: self.cluster.as_ref().map(ClusterResult::cost_ratio),
                at_least: false,
                unit: "x",
            },
            Goal {
                what: "cluster: added hop p99 at half of saturation",
                target: 1000.0,
                value: self.cluster.as_ref().map(|c| c.added_p99_ms() * 1000.0),
                at_least: false,
                unit: "us",
            },
            Goal {
                what: "scale: keepalive CPU per 100k idle, % of one core",
                target: 5.0,
                value: scale
                    .and_then(|s| s.idle.as_ref())
                    .map(IdleCpu::keepalive_percent_per_100k),
                at_least: false,
                unit: "%",
            },
            Goal {
                what: "scale: server CPU of a resumed / a full TLS connection",
                target: 0.5,
                value: scale
                    .and_then(|s| s.handshakes.as_ref())
                    .map(Handshakes::cost_ratio),
                at_least: false,
                unit: "x",
            },
            Goal {
                what: "scale: hop p99 of calls during the reconnect storm",
                target: 50_000.0,
                value: scale
                    .and_then(|s| s.storm.as_ref())
                    .map(|s| p99_us(&s.calls)),
                at_least: false,
                unit: "us",
            },
        ]
    }

    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "\n{}", self.header());
        for m in &self.modes {
            let _ = writeln!(
                o,
                "\n{} ({}; servers: {}; clients on {}://)",
                m.name,
                if m.servers.len() > 1 {
                    "two domains over a TLS link"
                } else {
                    "one domain"
                },
                m.servers.join(", "),
                m.transport
            );
            let _ = writeln!(
                o,
                "  {:<24} {:>8} {:>9} {:>10} {:>13} {:>9} {:>9} {:>9} {:>20} {:>22} {:>6}",
                "load",
                "calls/s",
                "frames/s",
                "srv CPU/call",
                "relays/srv-CPU-s",
                "sysc/call",
                "csw/call",
                "client CPU",
                "hop p50/p99/max us",
                "setup p50/p99/max us",
                "others"
            );
            let row = |o: &mut String, label: String, r: &PhaseResult| {
                let _ = writeln!(
                    o,
                    "  {:<24} {:>8.0} {:>9.0} {:>9.0}us {:>16.0} {:>9} {:>9.1} {:>8.0}us {:>20} {:>22} {:>5.0}%",
                    label,
                    r.calls_per_s(),
                    r.frames_per_s(),
                    r.cpu_per_call_us(),
                    r.relays_per_cpu_s(),
                    r.syscalls_per_call()
                        .map_or("-".into(), |n| format!("{n:.1}")),
                    r.switches_per_call(),
                    r.client_cpu.as_secs_f64() * 1e6 / r.calls.max(1) as f64,
                    pct_text(&r.rec.hop),
                    pct_text(&r.rec.setup),
                    r.other_load() * 100.0,
                );
            };
            if let Some(r) = &m.saturation {
                row(&mut o, format!("saturation ({} pairs)", r.pairs), r);
            }
            if let Some(r) = &m.half {
                row(
                    &mut o,
                    format!("half ({:.0} calls/s)", r.rate.unwrap_or(0.0)),
                    r,
                );
            }
            let _ = writeln!(o, "  scaling (back-to-back calls):");
            for r in &m.scaling {
                row(&mut o, format!("  {} pairs", r.pairs), r);
            }
            if let (Some(r), Some(i)) = (&m.with_idle, &m.idle) {
                row(
                    &mut o,
                    format!("  {} pairs + {} idle", r.pairs, i.connections),
                    r,
                );
            }
            if let Some(i) = &m.idle {
                let _ = writeln!(
                    o,
                    "  memory: {} idle {} connections: RSS {} -> {} KiB = {:.2} KiB per connection (opened in {:.1} s)",
                    i.connections,
                    i.transport,
                    i.rss_before_kib,
                    i.rss_after_kib,
                    i.kib_per_connection(),
                    i.opened_in.as_secs_f64()
                );
            }
            let _ = writeln!(
                o,
                "  check: {} frames verified exactly once and in order; every socket probed clean; 0 calls left on the servers",
                m.frames_verified
            );
        }
        if let Some(c) = &self.cluster {
            c.table(&mut o);
        }
        if let Some(s) = &self.scale {
            s.table(&mut o);
        }
        let _ = writeln!(
            o,
            "\ngoals{}:",
            if self.quick {
                " (quick run: figures not comparable)"
            } else {
                ""
            }
        );
        for g in self.goals() {
            let (value, verdict) = match (g.value, g.met()) {
                (Some(v), Some(met)) => (
                    format!("{v:.1}{}", g.unit),
                    if met { "met" } else { "NOT met" },
                ),
                _ => ("-".into(), "not measured"),
            };
            let _ = writeln!(
                o,
                "  {:<60} {} {:>9}{}: {:>12}  {}",
                g.what,
                if g.at_least { ">=" } else { "<=" },
                g.target,
                g.unit,
                value,
                verdict
            );
        }
        o
    }

    pub fn json(&self) -> Value {
        let (cpu, cores, kernel) = machine();
        let modes: serde_json::Map<String, Value> = self
            .modes
            .iter()
            .map(|m| {
                let idle_n = m.idle.as_ref().map_or(0, |i| i.connections);
                let mut scaling: Vec<Value> = m.scaling.iter().map(|r| phase_json(r, 0)).collect();
                if let Some(r) = &m.with_idle {
                    scaling.push(phase_json(r, idle_n));
                }
                (
                    m.name.to_string(),
                    json!({
                        "servers": m.servers,
                        "transport": m.transport,
                        "saturation": m.saturation.as_ref().map(|r| phase_json(r, 0)),
                        "half": m.half.as_ref().map(|r| phase_json(r, 0)),
                        "scaling": scaling,
                        "idle_memory": m.idle.as_ref().map(|i| json!({
                            "connections": i.connections,
                            "transport": i.transport,
                            "rss_before_kib": i.rss_before_kib,
                            "rss_after_kib": i.rss_after_kib,
                            "kib_per_connection": i.kib_per_connection(),
                            "opened_in_s": i.opened_in.as_secs_f64(),
                        })),
                        "frames_verified": m.frames_verified,
                    }),
                )
            })
            .collect();
        let goals: Vec<Value> = self
            .goals()
            .iter()
            .map(|g| {
                json!({
                    "goal": g.what,
                    "target": g.target,
                    "at_least": g.at_least,
                    "unit": g.unit,
                    "value": g.value,
                    "met": g.met(),
                })
            })
            .collect();
        json!({
            "tool": "wsp-bench",
            "quick": self.quick,
            "build": profile(),
            "machine": {"cpu": cpu, "cores": cores, "kernel": kernel},
            "server_log": self.server_log,
            "call": {
                "frames": CALL_FRAMES,
                "offer_bytes": self.offer_bytes,
                "answer_bytes": self.answer_bytes,
                "candidates_each_way": 8,
            },
            "modes": modes,
            "cluster": self.cluster.as_ref().map(ClusterResult::json),
            "scale": self.scale.as_ref().map(ScaleResult::json),
            "check": {
                "frames_verified": self.modes.iter().map(|m| m.frames_verified).sum::<u64>()
                    + self.cluster.as_ref().map_or(0, |c| c.frames_verified)
                    + self.scale.as_ref().map_or(0, |s| s.frames_verified),
                "lost": 0,
                "duplicated": 0,
                "reordered": 0,
                "ok": true,
            },
            "goals": goals,
        })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The cost figures of one build in one round.
struct Costs {
    local: Option<ModeResult>,
    federated: Option<ModeResult>,
}

/// `--compare`: the servers of several builds, measured in alternation
/// (round 1: every build, round 2: every build, ...), so that whatever else
/// the machine does weighs on all of them alike.
pub async fn compare(
    cli: &crate::Cli,
    plan: &crate::Plan,
    dir: &std::path::Path,
    script: &std::sync::Arc<Script>,
    nofile: u64,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let exes: Vec<std::path::PathBuf> = cli
        .compare
        .iter()
        .map(|e| e.canonicalize().with_context(|| e.display().to_string()))
        .collect::<Result<_, _>>()?;
    let report = Report::new(plan.quick, &cli.server_log, nofile, script);
    eprintln!("{} (compare, {} rounds)", report.header(), cli.rounds);
    let mut runs: Vec<Vec<Costs>> = exes.iter().map(|_| Vec::new()).collect();
    for round in 1..=cli.rounds {
        for (i, exe) in exes.iter().enumerate() {
            eprintln!("\n-- round {round}, build {}", exe.display());
            let local = if cli.only != crate::Only::Federated {
                Some(crate::run_local(exe, cli, plan, dir, script).await?)
            } else {
                None
            };
            let federated = if cli.only != crate::Only::Local {
                Some(crate::run_federated(exe, cli, plan, dir, script).await?)
            } else {
                None
            };
            runs[i].push(Costs { local, federated });
        }
    }
    let sat = |m: &Option<ModeResult>, f: &dyn Fn(&PhaseResult) -> f64| {
        m.as_ref()
            .and_then(|m| m.saturation.as_ref())
            .map_or(f64::NAN, f)
    };
    let mem = |m: &Option<ModeResult>| {
        m.as_ref()
            .and_then(|m| m.idle.as_ref())
            .map_or(f64::NAN, IdleMemory::kib_per_connection)
    };
    let mut o = String::new();
    let _ = writeln!(o, "\n{}", report.header());
    let _ = writeln!(
        o,
        "compare: median of {} rounds; saturation with {} pairs for {:.0} s; {} idle connections\n",
        cli.rounds,
        plan.pairs,
        plan.window.as_secs_f64(),
        plan.idle
    );
    let _ = writeln!(
        o,
        "| build | local calls/s | local µs CPU/call | local relays/CPU-s | local syscalls/call | local switches/call | ws KiB/conn | fed. calls/s | fed. µs CPU/call (both) | fed. syscalls/call | fed. switches/call | wss KiB/conn |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut json_rows = Vec::new();
    for (exe, r) in exes.iter().zip(&runs) {
        let col = |f: &dyn Fn(&Costs) -> f64| median(r.iter().map(f).collect());
        let cells = [
            col(&|c| sat(&c.local, &|p| p.calls_per_s())),
            col(&|c| sat(&c.local, &|p| p.cpu_per_call_us())),
            col(&|c| sat(&c.local, &|p| p.relays_per_cpu_s())),
            col(&|c| sat(&c.local, &|p| p.syscalls_per_call().unwrap_or(f64::NAN))),
            col(&|c| sat(&c.local, &|p| p.switches_per_call())),
            col(&|c| mem(&c.local)),
            col(&|c| sat(&c.federated, &|p| p.calls_per_s())),
            col(&|c| sat(&c.federated, &|p| p.cpu_per_call_us())),
            col(&|c| sat(&c.federated, &|p| p.syscalls_per_call().unwrap_or(f64::NAN))),
            col(&|c| sat(&c.federated, &|p| p.switches_per_call())),
            col(&|c| mem(&c.federated)),
        ];
        let name = exe
            .file_name()
            .map_or_else(|| exe.display().to_string(), |n| n.to_string_lossy().into());
        // Not measured (no --count-syscalls, or one setup left out): "-".
        let f = |v: f64, digits: usize| {
            if v.is_nan() {
                "-".to_string()
            } else {
                format!("{v:.digits$}")
            }
        };
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f(cells[0], 0),
            f(cells[1], 0),
            f(cells[2], 0),
            f(cells[3], 1),
            f(cells[4], 1),
            f(cells[5], 1),
            f(cells[6], 0),
            f(cells[7], 0),
            f(cells[8], 1),
            f(cells[9], 1),
            f(cells[10], 1)
        );
        json_rows.push(json!({
            "build": name,
            "local_calls_per_s": cells[0],
            "local_server_cpu_us_per_call": cells[1],
            "local_relays_per_server_cpu_s": cells[2],
            "local_syscalls_per_call": cells[3],
            "local_switches_per_call": cells[4],
            "ws_kib_per_idle_connection": cells[5],
            "federated_calls_per_s": cells[6],
            "federated_server_cpu_us_per_call": cells[7],
            "federated_syscalls_per_call": cells[8],
            "federated_switches_per_call": cells[9],
            "wss_kib_per_idle_connection": cells[10],
            "rounds": r.iter().map(|c| json!({
                "local": c.local.as_ref().and_then(|m| m.saturation.as_ref()).map(|p| phase_json(p, 0)),
                "federated": c.federated.as_ref().and_then(|m| m.saturation.as_ref()).map(|p| phase_json(p, 0)),
                "ws_kib_per_idle_connection": mem(&c.local),
                "wss_kib_per_idle_connection": mem(&c.federated),
            })).collect::<Vec<_>>(),
        }));
    }
    println!("{o}");
    if let Some(path) = &cli.json {
        let v = json!({ "tool": "wsp-bench", "compare": json_rows, "rounds": cli.rounds, "build": profile() });
        std::fs::write(path, serde_json::to_string_pretty(&v)?)?;
        eprintln!("JSON written to {}", path.display());
    }
    Ok(())
}
