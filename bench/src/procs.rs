//! The servers under test: each one is this same executable re-run with the
//! hidden `serve` command, so it is a process of its own whose CPU time and
//! memory the kernel accounts separately (`/proc/PID/stat`, `/proc/PID/status`).
//!
//! The child binds its listener first and prints the address; the parent
//! then writes each child's config (which may name the other child's
//! address, for `[federation.peers]`) and sends its path on the child's
//! standard input. The child runs until its standard input closes, so it
//! never outlives the bench.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The child side: `wsp-bench serve --log LEVEL`. Never returns normally.
pub fn serve(log: &str) -> anyhow::Result<()> {
    // As `wspd` logs by default: text on stderr (the parent sends it to a file).
    wspd::logging::init(wspd::logging::LogFormat::Text, log).map_err(anyhow::Error::msg)?;
    // The same runtime as `wspd`: one worker thread per core.
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        // Bound as `wspd` binds (tokio's listen backlog of 1024).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        println!("addr {addr}");
        let line = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map(|_| line)
        })
        .await??;
        let config = wspd::config::Config::load(&PathBuf::from(line.trim()))?;
        let server = wspd::Server::build(config, listener)?;
        println!("ready");
        let s = server.drain();
        // Standard input closes when the bench ends (or dies): stop at once.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while std::io::stdin()
                .lock()
                .read_line(&mut sink)
                .is_ok_and(|n| n > 0)
            {
                sink.clear();
            }
            s.start();
            std::thread::sleep(Duration::from_millis(200));
            std::process::exit(0);
        });
        server.run().await;
        anyhow::Ok(())
    })?;
    std::process::exit(0)
}

/// A server process started by the bench.
pub struct ServerProc {
    pub domain: String,
    pub addr: SocketAddr,
    pub pid: u32,
    pub log: PathBuf,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ServerProc {
    /// Starts a child and reads the address it bound.
    /// `exe` is a wsp-bench executable (this one, or another build's for
    /// `--compare`).
    pub async fn spawn(
        exe: &Path,
        domain: &str,
        log_level: &str,
        dir: &Path,
    ) -> anyhow::Result<ServerProc> {
        ServerProc::spawn_as(exe, domain, domain, log_level, dir).await
    }

    /// As [`ServerProc::spawn`], with its log in `<label>.log` (several
    /// nodes of one domain each have their own).
    pub async fn spawn_as(
        exe: &Path,
        domain: &str,
        label: &str,
        log_level: &str,
        dir: &Path,
    ) -> anyhow::Result<ServerProc> {
        let log = dir.join(format!("{label}.log"));
        let log_file = std::fs::File::create(&log)?;
        // `WSP_BENCH_SERVER_WRAPPER="valgrind --tool=callgrind"` runs the
        // servers under a profiler (the pid stays the server's).
        let wrapper = std::env::var("WSP_BENCH_SERVER_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut cmd = match words.next() {
            Some(w) => {
                let mut c = Command::new(w);
                c.args(words).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = cmd
            .arg("serve")
            .arg("--log")
            .arg(log_level)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .context("starting a server process")?;
        let pid = child.id().context("child pid")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let line = read_line(&mut stdout, &log).await?;
        let addr: SocketAddr = line
            .strip_prefix("addr ")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("server said {line:?}"))?;
        Ok(ServerProc {
            domain: domain.to_string(),
            addr,
            pid,
            log,
            child,
            stdin,
            stdout,
        })
    }

    /// Gives the child its config file and waits until it serves.
    pub async fn start(&mut self, config: &Path) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{}\n", config.display()).as_bytes())
            .await?;
        self.stdin.flush().await?;
        let line = read_line(&mut self.stdout, &self.log).await?;
        if line != "ready" {
            bail!("server {} said {line:?}", self.domain);
        }
        Ok(())
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_of(&format!("/proc/{}/stat", self.pid))
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_of(&format!("/proc/{}/status", self.pid))
    }

    /// Stops the child (it exits when its standard input closes).
    pub async fn stop(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

async fn read_line(r: &mut BufReader<ChildStdout>, log: &Path) -> anyhow::Result<String> {
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(20), r.read_line(&mut line))
        .await
        .context("no answer from the server process within 20 s")??;
    if n == 0 {
        let tail = std::fs::read_to_string(log).unwrap_or_default();
        let tail: String = tail
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        bail!("the server process ended before it served; its log:\n{tail}");
    }
    Ok(line.trim().to_string())
}

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`).
fn ticks_per_second() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&hz| hz > 0)
            // USER_HZ is 100 on every Linux architecture in use.
            .unwrap_or(100)
    })
}

/// utime + stime of a `/proc/.../stat` file.
pub fn cpu_of(path: &str) -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string(path).with_context(|| path.to_string())?;
    // The command name (field 2) may hold spaces: count from its closing ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no ')'"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are 11, 12.
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).context("utime")?;
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).context("stime")?;
    let hz = ticks_per_second();
    Ok(Duration::from_nanos((utime + stime) * 1_000_000_000 / hz))
}

/// Context switches of all a process's threads (voluntary and not).
pub fn switches_of(pid: u32) -> u64 {
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            for name in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
                switches += st
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    switches
}

/// Counts the system calls of some processes with `perf stat` (the
/// `raw_syscalls:sys_enter` tracepoint), when perf is there and allowed.
pub struct SyscallCount {
    child: Option<std::process::Child>,
}

/// Whether to count system calls (`--count-syscalls`): a tracepoint on
/// every system call costs the servers a little CPU, so it is off by default.
pub static COUNT_SYSCALLS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

impl SyscallCount {
    pub fn start(pids: &[u32]) -> SyscallCount {
        if !COUNT_SYSCALLS.load(std::sync::atomic::Ordering::Relaxed) {
            return SyscallCount { child: None };
        }
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = std::process::Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p"])
            .arg(pids.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok();
        SyscallCount { child }
    }

    /// Stops counting; `None` when perf could not count.
    pub fn stop(self) -> Option<u64> {
        let child = self.child?;
        // perf stat prints its counts on SIGINT.
        std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .ok()?;
        let out = child.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stderr);
        text.lines()
            .find(|l| l.contains("raw_syscalls:sys_enter"))
            .and_then(|l| l.split(',').next())
            .and_then(|n| n.trim().parse().ok())
    }
}

/// Busy CPU time of the whole machine (all CPUs, from `/proc/stat`).
pub fn machine_busy() -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().context("/proc/stat is empty")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle, iowait.
    let busy: u64 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| v)
        .sum();
    Ok(Duration::from_nanos(
        busy * 1_000_000_000 / ticks_per_second(),
    ))
}

/// VmRSS of a `/proc/.../status` file, KiB.
pub fn rss_of(path: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| path.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{path}: no VmRSS"))
}

/// The process ids of some servers.
pub fn pids(servers: &[ServerProc]) -> Vec<u32> {
    servers.iter().map(|s| s.pid).collect()
}

/// CPU time (user + system) process `pid` has used so far.
pub fn cpu_of_pid(pid: u32) -> anyhow::Result<Duration> {
    cpu_of(&format!("/proc/{pid}/stat"))
}

/// Waits until the processes have been idle (no CPU used) for `quiet`, at
/// most `max`: the work a burst left queued is done.
pub async fn settle(pids: &[u32], quiet: Duration, max: Duration) {
    let start = std::time::Instant::now();
    let total = || -> Duration { pids.iter().filter_map(|&p| cpu_of_pid(p).ok()).sum() };
    let mut last = total();
    let mut still_since = std::time::Instant::now();
    while start.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = total();
        if now != last {
            last = now;
            still_since = std::time::Instant::now();
        } else if still_since.elapsed() >= quiet {
            return;
        }
    }
}

/// A `redis-server` for the cluster setup: on a free port of 127.0.0.1,
/// without persistence (no RDB, no AOF: an empty database), killed when
/// the bench ends (or dies: `kill_on_drop`). Its CPU time counts with the
/// nodes'.
pub struct RedisProc {
    pub port: u16,
    pub pid: u32,
    /// `Redis X.Y.Z`, from `redis-server --version`.
    pub version: String,
    child: Child,
}

/// How long a `redis-server` may take to answer PING after it starts.
const REDIS_START: Duration = Duration::from_secs(10);

impl RedisProc {
    /// Starts `redis-server` (from PATH) and waits until it answers PING.
    /// A port taken between its choice and the bind is retried.
    pub async fn start(dir: &Path) -> anyhow::Result<RedisProc> {
        let exe = find_on_path("redis-server").context(
            "redis-server is not on PATH: the cluster setup runs a real Redis \
             (on Debian or Ubuntu: apt-get install redis-server)",
        )?;
        let version = std::process::Command::new(&exe)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            // "Redis server v=7.0.15 sha=... malloc=...": the version.
            .and_then(|v| {
                v.split_whitespace()
                    .find_map(|w| w.strip_prefix("v="))
                    .map(|v| format!("Redis {v}"))
            })
            .unwrap_or_else(|| "Redis (version unknown)".into());
        let log = dir.join("redis.log");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut child = Command::new(&exe)
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--daemonize", "no"])
                .arg("--dir")
                .arg(dir)
                .arg("--logfile")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))?;
            let pid = child.id().context("redis-server pid")?;
            let start = std::time::Instant::now();
            loop {
                if redis_ping(port).await {
                    return Ok(RedisProc {
                        port,
                        pid,
                        version,
                        child,
                    });
                }
                if child.try_wait()?.is_some() {
                    // Most likely the port was taken meanwhile: another.
                    break;
                }
                if start.elapsed() > REDIS_START {
                    bail!(
                        "redis-server on port {port} does not answer PING after {REDIS_START:?}; its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        bail!(
            "redis-server did not start on any of 5 free ports; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: nothing in it is worth keeping) and waits.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// An executable `name` in a directory of PATH.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether a Redis answers PING with +PONG on 127.0.0.1:`port` (within
/// one second).
async fn redis_ping(port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), exchange).await,
        Ok(Some(true))
    )
}
