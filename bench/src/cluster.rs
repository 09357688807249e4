//! The cluster setup (`--only cluster`): one domain served by two nodes
//! that share a real `redis-server`, and what a call costs when its two
//! parties are on different nodes, against the same calls with both
//! parties on one node, in the same run.
//!
//! - Redis: `redis-server` from PATH on a free loopback port, without
//!   persistence, killed at the end ([`RedisProc`]).
//! - Nodes `n1` and `n2` of domain `localhost`: server processes as in the
//!   local setup, each with a `[cluster]` section; calls start once both
//!   count two live nodes (`wspd_cluster_nodes`).
//! - Cross-node pairs: callers on n1, callees on n2, so every frame goes
//!   n1 → Redis → n2 or back. Same-node pairs (the baseline): both on n1.
//! - Server CPU is that of n1, n2 and `redis-server` together, in every
//!   phase (the same-node phases too: the idle node and Redis cost what
//!   they cost).
//! - Saturation of each, then both at half of the cross-node saturation
//!   rate: the same offered load, so the difference in hop latency is the
//!   hop through Redis.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wspd::auth::Tokens;

use crate::load::{self, CALL_FRAMES, Pair, PhaseResult, PhaseSpec, Script, Target};
use crate::procs::{self, RedisProc, ServerProc};
use crate::report::{self, ClusterResult};
use crate::{Cli, Plan};

/// The nodes' names.
const NODES: [&str; 2] = ["n1", "n2"];
/// The same-node pairs are numbered from here (their users differ from
/// the cross-node pairs').
const SAME_FIRST: usize = 50_000;
/// How long the nodes may take to see each other.
const JOIN_WAIT: Duration = Duration::from_secs(20);
/// How long the nodes may take to forget every call after the last phase.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// The `[cluster]` section of node `node`.
fn cluster_section(url: &str, node: &str) -> String {
    format!("[cluster]\nredis = \"{url}\"\nnode = \"{node}\"\nnode_timeout = \"3s\"\n")
}

pub async fn run_cluster(
    exe: &Path,
    cli: &Cli,
    plan: &Plan,
    dir: &Path,
    script: &Arc<Script>,
) -> anyhow::Result<ClusterResult> {
    eprintln!(
        "\n== cluster: one domain on two nodes sharing a redis-server, plain WebSocket ({})",
        exe.display()
    );
    let redis = RedisProc::start(dir).await?;
    eprintln!(
        "  {} on 127.0.0.1:{} (pid {})",
        redis.version, redis.port, redis.pid
    );
    let secret = crate::secret();
    let mut nodes = Vec::new();
    let mut targets = Vec::new();
    for name in NODES {
        let mut s = ServerProc::spawn_as(
            exe,
            "localhost",
            &format!("localhost-{name}"),
            &cli.server_log,
            dir,
        )
        .await?;
        let path = dir.join(format!("localhost-{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "{}{}",
                crate::base_config("localhost", &secret),
                cluster_section(&redis.url(), name)
            ),
        )?;
        s.start(&path).await?;
        targets.push(Target {
            addr: s.addr,
            domain: "localhost".into(),
            tls: None,
            tokens: Arc::new(Tokens::new("localhost", &secret)),
        });
        nodes.push(s);
    }
    let mut pids = procs::pids(&nodes);
    pids.push(redis.pid);
    let r = async {
        wait_joined(&targets).await?;
        measure(plan, script, &pids, &targets, &redis.version).await
    }
    .await;
    for s in nodes {
        s.stop().await;
    }
    redis.stop().await;
    r
}

/// Polls every node's `/metrics` until each counts all the nodes live.
async fn wait_joined(targets: &[Target]) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    for (t, name) in targets.iter().zip(NODES) {
        loop {
            let n = load::metric(t, "wspd_cluster_nodes").await?;
            if n == NODES.len() as f64 {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < JOIN_WAIT,
                "node {name} sees {n} live nodes after {JOIN_WAIT:?}, not {}",
                NODES.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "  both nodes see {} live nodes after {} ms",
        NODES.len(),
        start.elapsed().as_millis()
    );
    Ok(())
}

/// Messages the nodes have published to each other so far, all together.
async fn cluster_sent(targets: &[Target]) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for t in targets {
        // The counter appears with the first message.
        let text = load::metrics_text(t).await?;
        sum +=
            load::value_in(&text, "wspd_cluster_frames_total{direction=\"sent\"}").unwrap_or(0.0);
    }
    Ok(sum)
}

/// One phase on one set of pairs; also counts what went through Redis.
struct Runner<'a> {
    script: &'a Arc<Script>,
    pids: &'a [u32],
    targets: &'a [Target],
    verified: u64,
    /// Messages between the nodes during the cross-node phases, and the
    /// calls of those phases (all of them, not only the measured window).
    cross_messages: f64,
    cross_calls: u64,
}

impl Runner<'_> {
    async fn phase(
        &mut self,
        pairs: &mut Vec<Pair>,
        spec: &PhaseSpec,
        cross: bool,
    ) -> anyhow::Result<PhaseResult> {
        let sent0 = cluster_sent(self.targets).await?;
        let mut r = load::run_phase(pairs, self.script, spec, self.pids).await?;
        // A node counts a message once Redis has taken it, which may be
        // after the other node relayed it and the phase's last frame
        // arrived: the count is read once the servers are quiet.
        procs::settle(
            self.pids,
            Duration::from_millis(300),
            Duration::from_secs(5),
        )
        .await;
        let sent = cluster_sent(self.targets).await? - sent0;
        // Frames are relayed by both nodes on a cross-node call, by one on
        // a same-node call (Redis passes them on, it does not read them).
        r.relayed_by = if cross { 2 } else { 1 };
        self.verified += r.frames_verified;
        if cross {
            self.cross_messages += sent;
            self.cross_calls += r.frames_verified / CALL_FRAMES;
        } else {
            anyhow::ensure!(
                sent == 0.0,
                "same-node calls sent {sent} messages to the other node: the baseline is not on one node"
            );
        }
        Ok(r)
    }
}

async fn measure(
    plan: &Plan,
    script: &Arc<Script>,
    pids: &[u32],
    targets: &[Target],
    redis_version: &str,
) -> anyhow::Result<ClusterResult> {
    let (n1, n2) = (&targets[0], &targets[1]);
    procs::settle(pids, Duration::from_millis(300), Duration::from_secs(5)).await;
    let mut cross = load::connect_pairs(0, plan.pairs, n1, n2).await?;
    let mut same = load::connect_pairs(SAME_FIRST, plan.pairs, n1, n1).await?;
    let mut run = Runner {
        script,
        pids,
        targets,
        verified: 0,
        cross_messages: 0.0,
        cross_calls: 0,
    };
    // A warm-up of each, which also makes each node's peer for the other.
    let warm = PhaseSpec {
        pairs: plan.pairs,
        warm: Duration::ZERO,
        window: plan.warm,
        rate: None,
    };
    run.phase(&mut cross, &warm, true).await?;
    run.phase(&mut same, &warm, false).await?;

    let sat = PhaseSpec {
        pairs: plan.pairs,
        warm: plan.warm,
        window: plan.window,
        rate: None,
    };
    let cross_sat = run.phase(&mut cross, &sat, true).await?;
    eprintln!("  cross-node saturation: {}", report::brief(&cross_sat, 0));
    let same_sat = run.phase(&mut same, &sat, false).await?;
    eprintln!("  same-node saturation: {}", report::brief(&same_sat, 0));

    let half = PhaseSpec {
        rate: Some(cross_sat.calls_per_s() / 2.0),
        ..sat
    };
    let cross_half = run.phase(&mut cross, &half, true).await?;
    eprintln!("  cross-node half load: {}", report::brief(&cross_half, 0));
    let same_half = run.phase(&mut same, &half, false).await?;
    eprintln!("  same-node half load: {}", report::brief(&same_half, 0));

    // Both nodes forget every call (the last frames of a cross-node call
    // may still be on their way to the node that did not relay them last).
    let start = tokio::time::Instant::now();
    for (t, name) in targets.iter().zip(NODES) {
        loop {
            let active = load::metric(t, "wspd_calls_active").await?;
            if active == 0.0 {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < DRAIN_WAIT,
                "node {name} still holds {active} calls {DRAIN_WAIT:?} after every call ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop((cross, same));
    Ok(ClusterResult {
        nodes: NODES.iter().map(|n| n.to_string()).collect(),
        redis_version: redis_version.to_string(),
        messages_per_cross_call: run.cross_messages / run.cross_calls.max(1) as f64,
        frames_verified: run.verified,
        cross_sat,
        same_sat,
        cross_half,
        same_half,
    })
}
