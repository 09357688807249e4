//! Real-browser tests: runs tests/browser/run.mjs (node's test runner,
//! Chromium through playwright-core, dnsmasq, this crate's wspd binary)
//! inside a fresh network namespace whose only interface is lo.
//!
//! It needs, besides cargo's own build of `wspd`:
//!   apt-get install -y chromium dnsmasq-base iproute2 util-linux
//!   node 20 or later (NodeSource's nodejs; Debian 12's own is 18)
//!   npm ci        (node_modules/playwright-core, from package-lock.json)
//! and root or unprivileged user namespaces (`unshare -rn`). When any of
//! it is missing the test fails and says what to install: it never skips.
//!
//! Its output (node's spec reporter) shows with `--nocapture` or on failure;
//! screenshots and process logs are kept in target/browser-artifacts/.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The whole run, browser launches included, must end within this: a
/// guard against a hang, not a timing goal (the run takes about 65 s on
/// an idle 2-core machine, a third of it the resume test's waits for
/// Chromium to notice a broken network path).
const DEADLINE: Duration = Duration::from_secs(300);

/// Debian's Chromium; `CHROMIUM_BIN` overrides it (env.mjs reads it too).
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM_BIN")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Finds a program in PATH or the sbin folders (dnsmasq and ip live there,
/// outside a normal user's PATH).
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// PATH for the child, with the sbin folders added.
fn child_path() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .collect::<Vec<_>>();
    std::env::join_paths(dirs).expect("PATH joins")
}

fn runs_ok(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The unshare flags that give a new network namespace here: `-n` as root,
/// `-rn` with user namespaces; None when neither works.
fn namespace_flags(unshare: &Path) -> Option<&'static str> {
    ["-n", "-rn"].into_iter().find(|flag| {
        runs_ok(Command::new(unshare).args([*flag, "-p", "-f", "--kill-child", "--", "true"]))
    })
}

/// Everything the run needs, checked up front; the message says what to
/// install.
fn preflight(root: &Path) -> Result<(PathBuf, &'static str), String> {
    let mut missing = Vec::new();
    let unshare = find("unshare");
    let setpriv = find("setpriv");
    if unshare.is_none() || setpriv.is_none() {
        missing.push("unshare and setpriv: apt-get install -y util-linux".to_string());
    }
    if find("ip").is_none() {
        missing.push("ip: apt-get install -y iproute2".to_string());
    }
    if find("dnsmasq").is_none() {
        missing.push("dnsmasq: apt-get install -y dnsmasq-base".to_string());
    }
    if !chromium().is_file() {
        missing.push(format!(
            "{}: apt-get install -y chromium (Debian's package; never `npx playwright install`)",
            chromium().display()
        ));
    }
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {
            let v = String::from_utf8_lossy(&out.stdout);
            let major: u32 = v
                .trim()
                .trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            if major < 20 {
                missing.push(format!(
                    "node 20 or later (found {}): apt-get install -y nodejs",
                    v.trim()
                ));
            }
        }
        _ => missing
            .push("node 20 or later: nodejs from NodeSource (Debian 12's own is 18)".to_string()),
    }
    if !root
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        missing.push(format!(
            "node_modules/playwright-core: run `npm ci` in {}",
            root.display()
        ));
    }
    let flags = unshare.as_deref().and_then(namespace_flags);
    if unshare.is_some() && flags.is_none() {
        missing.push(
            "a network namespace: `unshare -n` (root) and `unshare -rn` (user namespaces) both fail; \
             run as root or enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, \
             user.max_user_namespaces > 0), and allow unshare(2) in the container's seccomp profile"
                .to_string(),
        );
    }
    match (missing.is_empty(), unshare, flags) {
        (true, Some(unshare), Some(flags)) => Ok((unshare, flags)),
        _ => Err(format!(
            "the browser tests cannot run; missing:\n  - {}",
            missing.join("\n  - ")
        )),
    }
}

/// Kills the run (and with it the whole namespace) if the test ends early.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Copies a child's output, line by line, to the test's output.
fn forward(stream: impl Read + Send + 'static, err: bool) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if err {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
    })
}

#[test]
fn browser_tests_in_a_loopback_namespace() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (unshare, flags) = preflight(root).unwrap_or_else(|msg| panic!("{msg}"));
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .join("browser-artifacts");

    // setpriv: the run dies with this test's thread. unshare -p -f
    // --kill-child: node runs as PID 1 of a new PID namespace, so when it
    // ends, or unshare is killed, every process started inside dies too.
    let started = Instant::now();
    let child = Command::new(find("setpriv").expect("checked"))
        .args(["--pdeathsig", "KILL", "--"])
        .arg(&unshare)
        .args([flags, "-p", "-f", "--kill-child", "--"])
        .args([
            "sh",
            "-c",
            "ip link set lo up && exec node tests/browser/run.mjs",
        ])
        .current_dir(root)
        .env("PATH", child_path())
        .env("WSPD_BIN", env!("CARGO_BIN_EXE_wspd"))
        .env("WSPD_BROWSER_ARTIFACTS", &artifacts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", unshare.display()));
    let mut run = Running(child);
    let out = forward(run.0.stdout.take().expect("piped"), false);
    let err = forward(run.0.stderr.take().expect("piped"), true);

    let status = loop {
        if let Some(status) = run.0.try_wait().expect("wait for the run") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            drop(run);
            let _ = (out.join(), err.join());
            panic!("the browser tests did not finish within {DEADLINE:?}; killed them");
        }
        thread::sleep(Duration::from_millis(100));
    };
    let _ = (out.join(), err.join());
    assert!(
        status.success(),
        "the browser tests failed ({status}); see their output above and {}",
        artifacts.display()
    );
}
