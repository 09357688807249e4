//! `wsp-bench`: what a call costs on wspd, measured.
//!
//!     cargo run --release --bin wsp-bench -- [--quick] [--json PATH]
//!
//! It starts the servers it measures as child processes (this executable
//! re-run with the hidden `serve` command), drives them with realistic
//! calls from a load client in its own process, reads their CPU time and
//! memory from `/proc`, and checks that every frame arrives exactly once
//! and in order. See docs/performance.md for the method and the figures.

mod cluster;
mod load;
mod procs;
mod report;
mod scale;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use wspd::auth::Tokens;

use crate::load::{Idle, PhaseSpec, Script, Target};
use crate::procs::ServerProc;
use crate::report::{IdleMemory, ModeResult, Report};

#[derive(Parser)]
#[command(
    name = "wsp-bench",
    about = "Measures what a call costs on wspd: throughput, server CPU per call, latency, memory per connection"
)]
struct Cli {
    /// A short run (seconds, small numbers) that checks the bench and the
    /// server work; its figures are not comparable.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Which setups to measure.
    #[arg(long, value_enum, default_value = "both")]
    only: Only,
    /// Concurrent call pairs at saturation and at half load.
    #[arg(long, value_name = "N")]
    pairs: Option<usize>,
    /// Idle connections for the memory figure and the cost-with-idle row
    /// (with `--only scale`: the largest plain step).
    #[arg(long, value_name = "N")]
    idle: Option<usize>,
    /// `--only scale`: idle TLS connections (200,000).
    #[arg(long, value_name = "N")]
    scale_tls: Option<usize>,
    /// `--only scale`: clients in the reconnect storm, among the TLS ones
    /// (100,000).
    #[arg(long, value_name = "N")]
    storm: Option<usize>,
    /// Seconds of each saturation and half-load measurement.
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    /// Count the servers' system calls per call with `perf stat` (a
    /// diagnostic: the tracepoint itself costs the servers some CPU).
    #[arg(long)]
    count_syscalls: bool,
    /// Fixed work for a profiler: connect 10 pairs, place one warm-up call
    /// on each, then N calls in all, and stop (no measurement). With
    /// WSP_BENCH_SERVER_WRAPPER="valgrind --tool=callgrind", two runs with
    /// different N give the instructions of one call (docs/performance.md).
    #[arg(long, value_name = "N", hide = true)]
    profile_calls: Option<u64>,
    /// With --profile-calls: the servers export their spans to this
    /// OTLP/HTTP endpoint (`[tracing] otlp_endpoint`), for the cost of
    /// tracing on.
    #[arg(long, value_name = "URL", hide = true)]
    otlp_endpoint: Option<String>,
    /// The servers' log filter (as RUST_LOG); `info` is wspd's default.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    server_log: String,
    /// Before/after: measure the cost figures (saturation and idle memory,
    /// local and federated) of the servers of several wsp-bench builds, in
    /// alternation, in this one run. Each EXE is a wsp-bench executable
    /// (e.g. a copy of target/release/wsp-bench built at another commit).
    #[arg(long, value_name = "EXE", num_args = 1..)]
    compare: Vec<PathBuf>,
    /// Rounds of `--compare` (the table shows each build's median).
    #[arg(long, default_value_t = 3, value_name = "N")]
    rounds: usize,
    /// The development certificates (a.test, b.test, the CA): the
    /// repository's certs/ by default.
    #[arg(long, value_name = "DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../certs"))]
    certs: PathBuf,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    Both,
    Local,
    Federated,
    /// One domain on two nodes sharing a redis-server: cross-node calls
    /// against same-node calls (not part of `both`).
    Cluster,
    /// Hundreds of thousands of idle sockets on one node: memory, idle and
    /// keepalive CPU, TLS handshakes, a reconnect storm (not part of
    /// `both`).
    Scale,
}

#[derive(Subcommand)]
enum Cmd {
    /// (internal) Run one server for the bench.
    #[command(hide = true)]
    Serve {
        #[arg(long, default_value = "info")]
        log: String,
    },
}

/// The sizes of a run.
struct Plan {
    quick: bool,
    /// Only memory and saturation (for `--compare`).
    cost_only: bool,
    idle: usize,
    /// Pair counts of the scaling rows.
    scaling: Vec<usize>,
    /// Pairs at saturation and half load (and with the idle connections).
    pairs: usize,
    warm: Duration,
    step: Duration,
    window: Duration,
}

impl Plan {
    fn new(cli: &Cli) -> Plan {
        let (idle, scaling, pairs, warm, step, window) = if cli.quick {
            (
                300,
                vec![10, 50],
                50,
                Duration::from_millis(200),
                Duration::from_millis(500),
                Duration::from_millis(800),
            )
        } else {
            (
                10_000,
                vec![10, 100, 1000],
                100,
                Duration::from_secs(1),
                Duration::from_secs(3),
                Duration::from_secs(6),
            )
        };
        let pairs = cli.pairs.unwrap_or(pairs);
        let window = cli.seconds.map_or(window, Duration::from_secs_f64);
        let scaling = if cli.compare.is_empty() {
            scaling
        } else {
            Vec::new()
        };
        Plan {
            quick: cli.quick,
            cost_only: !cli.compare.is_empty(),
            idle: cli.idle.unwrap_or(idle),
            scaling,
            pairs,
            warm,
            step,
            window,
        }
    }

    fn max_pairs(&self) -> usize {
        self.scaling
            .iter()
            .copied()
            .chain([self.pairs])
            .max()
            .unwrap_or(1)
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Serve { log }) = &cli.command {
        return match procs::serve(log) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wsp-bench serve: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsp-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nwsp-bench: FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Raises the open-files limit to what the run needs, or says how. A
/// hard limit below the need is raised too when the process may (root, or
/// CAP_SYS_RESOURCE), up to the kernel's `fs.nr_open`.
fn raise_nofile(needed: u64) -> anyhow::Result<u64> {
    let soft = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    if soft >= needed {
        return Ok(soft);
    }
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    if needed <= nr_open && rlimit::Resource::NOFILE.set(needed, needed).is_ok() {
        return Ok(needed);
    }
    let how = if needed > nr_open {
        format!(
            "the kernel allows at most {nr_open} per process: as root, `sysctl -w fs.nr_open={}` \
             first, then `ulimit -Hn {needed}`",
            needed.next_power_of_two()
        )
    } else {
        format!(
            "raise it (as root: `ulimit -Hn {needed}` in the shell that runs the bench, or \
             LimitNOFILE={needed} in a systemd unit)"
        )
    };
    anyhow::bail!(
        "this run needs {needed} open files per process but the hard limit is {soft}: {how}, \
         or pass smaller numbers (--idle, --scale-tls)"
    )
}

fn dev_ca(certs: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let ca = certs.join("ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca).with_context(|| ca.display().to_string())? {
        roots.add(c?)?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

async fn bench(mut cli: Cli) -> anyhow::Result<()> {
    let plan = Plan::new(&cli);
    if matches!(cli.only, Only::Cluster | Only::Scale)
        && (cli.profile_calls.is_some() || !cli.compare.is_empty())
    {
        anyhow::bail!("--profile-calls and --compare measure the local and federated setups only");
    }
    procs::COUNT_SYSCALLS.store(cli.count_syscalls, std::sync::atomic::Ordering::Relaxed);
    let needed = if cli.only == Only::Scale {
        scale::ScalePlan::new(&cli, &plan).open_files()
    } else {
        (plan.idle + 2 * plan.max_pairs() + 256) as u64
    };
    let mut limited = None;
    let nofile = match raise_nofile(needed) {
        Ok(n) => n,
        // The default scale run, on a machine whose hard limit this
        // process may not raise: the same run, as large as the limit
        // allows, said loudly and recorded in the JSON.
        Err(e)
            if cli.only == Only::Scale
                && !plan.quick
                && cli.idle.is_none()
                && cli.scale_tls.is_none()
                && cli.storm.is_none() =>
        {
            let (_, hard) = rlimit::Resource::NOFILE
                .get()
                .context("reading RLIMIT_NOFILE")?;
            let (plain, tls, storm) = scale::ScalePlan::new(&cli, &plan).fit_open_files(hard);
            anyhow::ensure!(plain >= 1000, "{e:#}");
            eprintln!(
                "wsp-bench: {e:#}.\nwsp-bench: measuring as many as the limit allows instead: \
                 {plain} plain and {tls} TLS sockets, a storm of {storm} (figures per socket \
                 and per 100,000 hold; the sizes do not)\n"
            );
            limited = Some(serde_json::json!({"hard_limit": hard, "needed": needed}));
            (cli.idle, cli.scale_tls, cli.storm) = (Some(plain), Some(tls), Some(storm));
            raise_nofile(scale::ScalePlan::new(&cli, &plan).open_files())?
        }
        Err(e) => return Err(e),
    };
    let dir = std::env::temp_dir().join(format!("wsp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = Arc::new(Script::new());
    if let Some(n) = cli.profile_calls {
        return profile_calls(&cli, n, &dir, &script).await;
    }
    if !cli.compare.is_empty() {
        let r = report::compare(&cli, &plan, &dir, &script, nofile).await;
        if r.is_ok() {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            eprintln!("server logs kept in {}", dir.display());
        }
        return r;
    }
    let exe = std::env::current_exe().context("the bench's own executable")?;
    let mut report = Report::new(plan.quick, &cli.server_log, nofile, &script);
    eprintln!("{}", report.header());

    let res = async {
        if matches!(cli.only, Only::Both | Only::Local) {
            let m = run_local(&exe, &cli, &plan, &dir, &script).await?;
            report.modes.push(m);
        }
        if matches!(cli.only, Only::Both | Only::Federated) {
            let m = run_federated(&exe, &cli, &plan, &dir, &script).await?;
            report.modes.push(m);
        }
        if cli.only == Only::Cluster {
            let c = cluster::run_cluster(&exe, &cli, &plan, &dir, &script).await?;
            report.cluster = Some(c);
        }
        if cli.only == Only::Scale {
            let mut s = scale::run_scale(&exe, &cli, &plan, &dir, &script).await?;
            s.open_files_limited = limited.take();
            report.scale = Some(s);
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = res {
        eprintln!("server logs kept in {}", dir.display());
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", report.table());
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)
            .with_context(|| path.display().to_string())?;
        eprintln!("JSON written to {}", path.display());
    }
    Ok(())
}

pub(crate) fn secret() -> String {
    let bits: u128 = rand::random();
    format!("bench-secret-{bits:032x}")
}

/// A server's config. The limits that guard against abusive clients are
/// lifted: every bench client comes from one loopback address and each
/// socket places hundreds of calls a second, far beyond what the defaults
/// let one person do (the token buckets are still checked on every frame).
pub(crate) fn base_config(domain: &str, secret: &str) -> String {
    format!(
        "domain = \"{domain}\"\nlisten = \"127.0.0.1:0\"\n\
         [auth]\nsecret = \"{secret}\"\n\
         [limits]\nmax_connections = 1000000\nconnections_per_ip = 1000000\n\
         frames_per_second = 1000000\nframe_burst = 1000000\n"
    )
}

/// `[federation]` limits lifted likewise (one origin carries every call).
const FEDERATION_LIMITS: &str =
    "invites_per_second = 1000000\ninvite_burst = 1000000\ncalls_per_link = 1000000\n";

async fn run_local(
    exe: &Path,
    cli: &Cli,
    plan: &Plan,
    dir: &Path,
    script: &Arc<Script>,
) -> anyhow::Result<ModeResult> {
    eprintln!(
        "\n== local: one domain, plain WebSocket ({})",
        exe.display()
    );
    let secret = secret();
    let mut s = ServerProc::spawn(exe, "localhost", &cli.server_log, dir).await?;
    let path = dir.join("localhost.toml");
    std::fs::write(&path, base_config("localhost", &secret))?;
    s.start(&path).await?;
    let target = Target {
        addr: s.addr,
        domain: "localhost".into(),
        tls: None,
        tokens: Arc::new(Tokens::new("localhost", &secret)),
    };
    let servers = vec![s];
    let r = measure_mode("local", plan, script, &servers, &target, &target).await;
    for s in servers {
        s.stop().await;
    }
    r
}

async fn run_federated(
    exe: &Path,
    cli: &Cli,
    plan: &Plan,
    dir: &Path,
    script: &Arc<Script>,
) -> anyhow::Result<ModeResult> {
    eprintln!(
        "\n== federated: a.test -> b.test over a TLS link, clients on wss ({})",
        exe.display()
    );
    let certs = cli
        .certs
        .canonicalize()
        .with_context(|| format!("--certs {}", cli.certs.display()))?;
    let mut a = ServerProc::spawn(exe, "a.test", &cli.server_log, dir).await?;
    let mut b = ServerProc::spawn(exe, "b.test", &cli.server_log, dir).await?;
    let (sa, sb) = (secret(), secret());
    let fed = |me: &str, secret: &str, other: &str, other_addr: std::net::SocketAddr| {
        format!(
            "{}[tls]\ncert = \"{c}/{me}.pem\"\nkey = \"{c}/{me}-key.pem\"\n\
             [federation]\nkey = \"{k}\"\nca = \"{c}/ca.pem\"\n{FEDERATION_LIMITS}\
             [federation.peers]\n\"{other}\" = \"{other_addr}\"\n",
            base_config(me, secret),
            c = certs.display(),
            k = dir.join(format!("{me}.key")).display(),
        )
    };
    let pa = dir.join("a.test.toml");
    let pb = dir.join("b.test.toml");
    std::fs::write(&pa, fed("a.test", &sa, "b.test", b.addr))?;
    std::fs::write(&pb, fed("b.test", &sb, "a.test", a.addr))?;
    a.start(&pa).await?;
    b.start(&pb).await?;
    let ca = dev_ca(&certs)?;
    let ta = Target {
        addr: a.addr,
        domain: "a.test".into(),
        tls: Some(ca.clone()),
        tokens: Arc::new(Tokens::new("a.test", &sa)),
    };
    let tb = Target {
        addr: b.addr,
        domain: "b.test".into(),
        tls: Some(ca),
        tokens: Arc::new(Tokens::new("b.test", &sb)),
    };
    let servers = vec![a, b];
    let r = measure_mode("federated", plan, script, &servers, &ta, &tb).await;
    for s in servers {
        s.stop().await;
    }
    r
}

/// `--profile-calls N`: a fixed number of calls on the setup `--only`
/// names (local unless it says federated), nothing measured.
async fn profile_calls(cli: &Cli, n: u64, dir: &Path, script: &Arc<Script>) -> anyhow::Result<()> {
    // With --compare EXE, that build's servers are the ones profiled.
    let exe = match cli.compare.first() {
        Some(e) => e.canonicalize()?,
        None => std::env::current_exe()?,
    };
    let certs = cli.certs.canonicalize()?;
    let secret = secret();
    let federated = cli.only == Only::Federated;
    let names: &[&str] = if federated {
        &["a.test", "b.test"]
    } else {
        &["localhost"]
    };
    let mut servers = Vec::new();
    for name in names {
        servers.push(ServerProc::spawn(&exe, name, &cli.server_log, dir).await?);
    }
    let ca = dev_ca(&certs)?;
    let mut targets = Vec::new();
    for i in 0..servers.len() {
        let me = servers[i].domain.clone();
        let mut text = base_config(&me, &secret);
        if federated {
            let other = &servers[1 - i];
            text.push_str(&format!(
                "[tls]\ncert = \"{c}/{me}.pem\"\nkey = \"{c}/{me}-key.pem\"\n\
                 [federation]\nkey = \"{k}\"\nca = \"{c}/ca.pem\"\n{FEDERATION_LIMITS}\
                 [federation.peers]\n\"{}\" = \"{}\"\n",
                other.domain,
                other.addr,
                c = certs.display(),
                k = dir.join(format!("{me}.key")).display(),
            ));
        }
        if let Some(url) = &cli.otlp_endpoint {
            text.push_str(&format!("[tracing]\notlp_endpoint = \"{url}\"\n"));
        }
        let path = dir.join(format!("{me}.toml"));
        std::fs::write(&path, text)?;
        servers[i].start(&path).await?;
        targets.push(Target {
            addr: servers[i].addr,
            domain: me.clone(),
            tls: federated.then(|| ca.clone()),
            tokens: Arc::new(Tokens::new(&me, &secret)),
        });
    }
    let (a, b) = (&targets[0], targets.last().unwrap_or(&targets[0]));
    let mut pairs = load::connect_pairs(0, 10, a, b).await?;
    load::fixed_calls(&mut pairs, script, 1).await?;
    let t = std::time::Instant::now();
    let calls = load::fixed_calls(&mut pairs, script, n.div_ceil(10)).await?;
    let cpu: Duration = servers.iter().filter_map(|s| s.cpu().ok()).sum();
    drop(pairs);
    for s in servers {
        s.stop().await;
    }
    let _ = std::fs::remove_dir_all(dir);
    println!(
        "profile: {calls} calls after 10 warm-up calls in {:.1} s; servers' CPU in all {:.2} s",
        t.elapsed().as_secs_f64(),
        cpu.as_secs_f64()
    );
    Ok(())
}

/// Every measurement of one setup, in an order that keeps them apart: the
/// memory of idle sockets on a fresh server first, then calls with those
/// sockets present, then calls without them.
async fn measure_mode(
    name: &'static str,
    plan: &Plan,
    script: &Arc<Script>,
    servers: &[ServerProc],
    a: &Target,
    b: &Target,
) -> anyhow::Result<ModeResult> {
    let quiet = Duration::from_millis(300);
    let mut mode = ModeResult::new(name, a.scheme(), servers);
    let pids = procs::pids(servers);

    // Memory per idle connection, on the caller's server.
    procs::settle(&pids, quiet, Duration::from_secs(5)).await;
    let before = servers[0].rss_kib()?;
    let t = std::time::Instant::now();
    let idle = Idle::open(a, plan.idle).await?;
    let opened_in = t.elapsed();
    procs::settle(&pids, quiet, Duration::from_secs(10)).await;
    let after = servers[0].rss_kib()?;
    let mem = IdleMemory {
        connections: plan.idle,
        transport: a.scheme(),
        rss_before_kib: before,
        rss_after_kib: after,
        opened_in,
    };
    eprintln!(
        "  {} idle {} connections opened in {:.1} s: RSS {} -> {} KiB, {:.1} KiB each",
        plan.idle,
        a.scheme(),
        opened_in.as_secs_f64(),
        before,
        after,
        mem.kib_per_connection()
    );
    mode.idle = Some(mem);

    // The call pairs, and a warm-up that also opens the federation link.
    let mut pairs = load::connect_pairs(0, plan.max_pairs(), a, b).await?;
    let warm = PhaseSpec {
        pairs: pairs.len(),
        warm: Duration::ZERO,
        window: plan.warm,
        rate: None,
    };
    let mut verified = load::run_phase(&mut pairs, script, &warm, &pids)
        .await?
        .frames_verified;
    procs::settle(&pids, quiet, Duration::from_secs(5)).await;

    if plan.cost_only {
        idle.close().await;
        procs::settle(&pids, quiet, Duration::from_secs(10)).await;
        let spec = PhaseSpec {
            pairs: plan.pairs,
            warm: plan.warm,
            window: plan.window,
            rate: None,
        };
        let sat = load::run_phase(&mut pairs, script, &spec, &pids).await?;
        eprintln!("  saturation: {}", report::brief(&sat, 0));
        mode.frames_verified = verified + sat.frames_verified;
        mode.saturation = Some(sat);
        return Ok(mode);
    }

    // The cost of a call with the idle connections present.
    let spec = PhaseSpec {
        pairs: plan.pairs,
        warm: plan.warm,
        window: plan.step,
        rate: None,
    };
    let r = load::run_phase(&mut pairs, script, &spec, &pids).await?;
    verified += r.frames_verified;
    eprintln!("  {}", report::brief(&r, plan.idle));
    mode.with_idle = Some(r);
    idle.close().await;
    procs::settle(&pids, quiet, Duration::from_secs(10)).await;

    // Scaling with concurrent calls.
    for &n in &plan.scaling {
        let spec = PhaseSpec {
            pairs: n,
            warm: plan.warm,
            window: plan.step,
            rate: None,
        };
        let r = load::run_phase(&mut pairs, script, &spec, &pids).await?;
        verified += r.frames_verified;
        eprintln!("  {}", report::brief(&r, 0));
        mode.scaling.push(r);
        procs::settle(&pids, quiet, Duration::from_secs(5)).await;
    }

    // Saturation, then half of it.
    let spec = PhaseSpec {
        pairs: plan.pairs,
        warm: plan.warm,
        window: plan.window,
        rate: None,
    };
    let sat = load::run_phase(&mut pairs, script, &spec, &pids).await?;
    verified += sat.frames_verified;
    eprintln!("  saturation: {}", report::brief(&sat, 0));
    procs::settle(&pids, quiet, Duration::from_secs(5)).await;
    let spec = PhaseSpec {
        pairs: plan.pairs,
        warm: plan.warm,
        window: plan.window,
        rate: Some(sat.calls_per_s() / 2.0),
    };
    mode.saturation = Some(sat);
    let half = load::run_phase(&mut pairs, script, &spec, &pids).await?;
    verified += half.frames_verified;
    eprintln!("  half load: {}", report::brief(&half, 0));
    mode.half = Some(half);

    // Both servers have forgotten every call.
    for t in [a, b] {
        let active = load::metric(t, "wspd_calls_active").await?;
        anyhow::ensure!(
            active == 0.0,
            "{} still holds {active} calls after every call ended",
            t.domain
        );
        if a.domain == b.domain {
            break;
        }
    }
    mode.frames_verified = verified;
    drop(pairs);
    Ok(mode)
}
