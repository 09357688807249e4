//! The `wspd` binary: minting tokens, adding users, refusing bad
//! configuration, and running until SIGTERM.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use wspd::auth::{Tokens, UsersFile};
use wspd::config::{Config, DEV_SECRET};

const BIN: &str = env!("CARGO_BIN_EXE_wspd");

/// How long any one run of the binary may take.
const RUN_LIMIT: Duration = Duration::from_secs(20);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A `wspd` command in `dir`, with a predictable environment.
fn wspd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Runs `wspd args` in `dir` to its end (bounded), feeding `stdin`.
pub(crate) async fn run(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = wspd(dir, args);
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("wspd starts");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        // A run that fails early may not read it (broken pipe).
        let _ = pipe.write_all(text.as_bytes()).await;
        drop(pipe);
    }
    tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("wspd {args:?} did not finish in {RUN_LIMIT:?}"))
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Decodes unpadded base64url.
fn b64url(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("{:?} is not base64url", c as char),
        }
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        acc = (acc << 6) | val(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Checks that `o` printed exactly one JWT line; returns its header and
/// claims.
fn one_jwt(o: &Output) -> (String, Value, Value) {
    assert!(o.status.success(), "{o:?}\n{}", stderr(o));
    let out = stdout(o);
    assert!(out.ends_with('\n'), "{out:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    let token = lines[0].to_string();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    for p in &parts {
        assert!(
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{token}"
        );
    }
    let header: Value = serde_json::from_slice(&b64url(parts[0])).unwrap();
    let claims: Value = serde_json::from_slice(&b64url(parts[1])).unwrap();
    (token, header, claims)
}

pub(crate) fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A config file's text for domain localhost.
pub(crate) fn config_text(listen: &str, auth_extra: &str, rest: &str) -> String {
    format!(
        "domain = \"localhost\"\nlisten = \"{listen}\"\n[auth]\nsecret = \"{SECRET}\"\n{auth_extra}\n{rest}\n"
    )
}

// ---------------------------------------------------------------------------
// wspd token
// ---------------------------------------------------------------------------

#[tokio::test]
async fn token_prints_one_jwt_signed_with_the_embedded_config() {
    // An empty folder: no ./config.toml, so the embedded default applies.
    let dir = temp_dir("cli-token");
    let before = unix_now();
    let o = run(&dir, &["token", "alice@localhost"], None).await;
    let (token, header, claims) = one_jwt(&o);
    assert_eq!(header["alg"], "HS256", "{header}");
    assert_eq!(claims["sub"], "alice@localhost", "{claims}");
    let exp = claims["exp"].as_u64().expect("exp is a number");
    assert!(
        (before + 3600..=unix_now() + 3600).contains(&exp),
        "exp {exp}, now {}",
        unix_now()
    );
    // Signed with the embedded development secret, for domain localhost.
    let user = Tokens::new("localhost", DEV_SECRET).verify(&token).unwrap();
    assert_eq!(user.as_str(), "alice@localhost");
    assert!(
        Tokens::new("localhost", SECRET).verify(&token).is_err(),
        "a token verifies only with its secret"
    );

    // The address is normalised.
    let o = run(&dir, &["token", "Alice@LocalHost"], None).await;
    assert_eq!(one_jwt(&o).2["sub"], "alice@localhost");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn token_ttl_sets_the_expiry() {
    let dir = temp_dir("cli-ttl");
    let before = unix_now();
    let o = run(&dir, &["token", "alice@localhost", "--ttl", "60"], None).await;
    let exp = one_jwt(&o).2["exp"].as_u64().unwrap();
    assert!((before + 60..=unix_now() + 60).contains(&exp), "exp {exp}");

    let o = run(&dir, &["token", "--ttl", "86400", "bob@localhost"], None).await;
    let claims = one_jwt(&o).2;
    assert_eq!(claims["sub"], "bob@localhost");
    let exp = claims["exp"].as_u64().unwrap();
    assert!((before + 86400..=unix_now() + 86400).contains(&exp));

    for ttl in ["0", "-5", "soon"] {
        let arg = format!("--ttl={ttl}");
        let o = run(&dir, &["token", "alice@localhost", &arg], None).await;
        assert!(!o.status.success(), "--ttl {ttl}");
        assert!(stdout(&o).is_empty(), "--ttl {ttl}: {}", stdout(&o));
        assert!(stderr(&o).contains("ttl"), "--ttl {ttl}: {}", stderr(&o));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn token_refuses_foreign_and_bad_addresses() {
    let dir = temp_dir("cli-token-bad");
    let o = run(&dir, &["token", "alice@example.com"], None).await;
    assert!(!o.status.success());
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains("alice@example.com") && e.contains("localhost"),
        "{e}"
    );

    for bad in ["alice", "al ice@localhost", "@localhost", "alice@", ""] {
        let o = run(&dir, &["token", bad], None).await;
        assert!(!o.status.success(), "{bad:?}");
        assert!(stdout(&o).is_empty(), "{bad:?}: {}", stdout(&o));
        let e = stderr(&o);
        assert!(e.starts_with("wspd: "), "{bad:?}: {e}");
        assert!(e.contains(&format!("{bad:?}")), "{bad:?}: {e}");
    }

    // No address at all: a usage error from the argument parser.
    let o = run(&dir, &["token"], None).await;
    assert!(!o.status.success());
    assert!(stdout(&o).is_empty());
    assert!(!stderr(&o).is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn token_uses_the_config_in_the_working_directory() {
    let dir = temp_dir("cli-token-cwd");
    write(
        &dir.join("config.toml"),
        &config_text("127.0.0.1:0", "", "").replace("\"localhost\"", "\"example.test\""),
    );
    let o = run(&dir, &["token", "alice@example.test"], None).await;
    let (token, _, claims) = one_jwt(&o);
    assert_eq!(claims["sub"], "alice@example.test");
    assert!(Tokens::new("example.test", SECRET).verify(&token).is_ok());
    // The embedded default's domain is not this one.
    let o = run(&dir, &["token", "alice@localhost"], None).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("example.test"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------
// wspd user add
// ---------------------------------------------------------------------------

#[tokio::test]
async fn user_add_writes_an_argon2id_hash_the_server_accepts() {
    let dir = temp_dir("cli-user");
    // Run from another folder: the users file is found next to the config.
    let elsewhere = temp_dir("cli-user-cwd");
    let config = dir.join("config.toml");
    write(
        &config,
        &config_text(
            "127.0.0.1:0",
            "users = \"users.toml\"",
            "[limits]\nlogin_failure_delay = \"10ms\"",
        ),
    );
    let config_arg = config.to_str().unwrap();

    let o = run(
        &elsewhere,
        &["user", "add", "Alice", "--config", config_arg],
        Some("correct horse\n"),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    assert!(stderr(&o).contains("alice"), "{}", stderr(&o));
    assert!(!elsewhere.join("users.toml").exists());
    let text = std::fs::read_to_string(dir.join("users.toml")).unwrap();
    assert!(text.contains("$argon2id$"), "{text}");
    assert!(!text.contains("correct horse"), "{text}");

    // A second user, with a CRLF line end; alice stays.
    let o = run(
        &elsewhere,
        &["--config", config_arg, "user", "add", "bob"],
        Some("hunter2 two\r\n"),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let users = UsersFile::load(&dir.join("users.toml")).unwrap();
    assert!(users.check("alice", "correct horse"));
    assert!(users.check("bob", "hunter2 two"));
    assert!(!users.check("bob", "hunter2 two\r"));
    assert_eq!(users.users.len(), 2);

    // The server started with that config logs alice in.
    let s = TestServer::start(Config::load(&config).unwrap()).await;
    let body = json!({"user": "alice", "password": "correct horse"}).to_string();
    let (status, _, resp) = http(s.addr(), "POST", "/token", &[], &body).await;
    assert_eq!(status, 200, "{resp}");
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["user"], "alice@localhost");
    let mut alice = Client::connect(&s.url(), v["token"].as_str().unwrap()).await;
    alice.expect_nothing().await;
    let body = json!({"user": "alice", "password": "Correct horse"}).to_string();
    assert_eq!(http(s.addr(), "POST", "/token", &[], &body).await.0, 401);
    // And knows bob (an invite to a stranger would be 404).
    let mut bob = s.connect_online("bob@localhost").await;
    alice
        .send(invite("alice@localhost", "bob@localhost", "call-cli-0001"))
        .await;
    bob.expect("invite").await;
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(elsewhere);
}

#[tokio::test]
async fn user_add_refusals() {
    let dir = temp_dir("cli-user-bad");
    let with_users = dir.join("with-users.toml");
    write(
        &with_users,
        &config_text("127.0.0.1:0", "users = \"users.toml\"", ""),
    );
    let without = dir.join("without-users.toml");
    write(&without, &config_text("127.0.0.1:0", "", ""));

    // Empty password.
    let o = run(
        &dir,
        &[
            "user",
            "add",
            "alice",
            "--config",
            with_users.to_str().unwrap(),
        ],
        Some("\n"),
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("empty password"), "{}", stderr(&o));
    // A bad name.
    let o = run(
        &dir,
        &[
            "user",
            "add",
            "al ice",
            "--config",
            with_users.to_str().unwrap(),
        ],
        Some("pw\n"),
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("al ice"), "{}", stderr(&o));
    assert!(!dir.join("users.toml").exists());
    // No users file in the config.
    let o = run(
        &dir,
        &[
            "user",
            "add",
            "alice",
            "--config",
            without.to_str().unwrap(),
        ],
        Some("pw\n"),
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("users"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------
// Configuration errors
// ---------------------------------------------------------------------------

/// Runs the server with this config text; it must exit non-zero at once
/// with a message containing every `needles` entry.
async fn refuses_config(dir: &Path, name: &str, text: &str, needles: &[&str]) {
    let path = dir.join(name);
    write(&path, text);
    let o = run(dir, &["--config", path.to_str().unwrap()], None).await;
    let e = stderr(&o);
    assert!(!o.status.success(), "{name}: {e}");
    for n in needles {
        assert!(e.contains(n), "{name}: stderr should mention {n:?}:\n{e}");
    }
    assert!(
        !e.contains("listening on"),
        "{name}: the server started:\n{e}"
    );
}

/// The certificates of `certs/` (their keys are published) are refused off
/// loopback, as a server certificate and as a trusted CA; the server never
/// listens.
#[tokio::test]
async fn development_certificates_are_refused_off_loopback() {
    let dir = temp_dir("cli-devcerts");
    let root = env!("CARGO_MANIFEST_DIR");
    let tls = format!(
        "[tls]\ncert = \"{root}/certs/localhost.pem\"\nkey = \"{root}/certs/localhost-key.pem\"\n"
    );
    refuses_config(
        &dir,
        "dev-cert.toml",
        &config_text("0.0.0.0:0", "", &tls),
        &["[tls] cert", "development certificate", "0.0.0.0"],
    )
    .await;
    // Federation needs [tls]: the CA is named first, as the graver.
    let fed = format!(
        "{tls}[federation]\nkey = \"{}\"\nca = \"{root}/certs/ca.pem\"\n",
        dir.join("link.key").display()
    );
    refuses_config(
        &dir,
        "dev-ca.toml",
        &config_text("0.0.0.0:0", "", &fed),
        &["[federation] ca", "development certificate"],
    )
    .await;
    assert!(
        !dir.join("link.key").exists(),
        "refused before anything was made"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bad_configuration_stops_the_server_with_the_key_named() {
    let dir = temp_dir("cli-config");
    let ok = config_text("127.0.0.1:0", "", "");
    refuses_config(
        &dir,
        "unknown.toml",
        &format!("colour = 1\n{ok}"),
        &["colour"],
    )
    .await;
    refuses_config(
        &dir,
        "unknown-limit.toml",
        &format!("{ok}[limits]\nmax_frams_bytes = 65536\n"),
        &["max_frams_bytes"],
    )
    .await;
    refuses_config(
        &dir,
        "small-frames.toml",
        &format!("{ok}[limits]\nmax_frame_bytes = 10\n"),
        &["limits.max_frame_bytes"],
    )
    .await;
    refuses_config(
        &dir,
        "bad-duration.toml",
        &format!("{ok}[limits]\nring_timeout = \"soon\"\n"),
        &["ring_timeout"],
    )
    .await;
    refuses_config(
        &dir,
        "dev-secret.toml",
        &config_text("0.0.0.0:0", "", "").replace(SECRET, DEV_SECRET),
        &["auth.secret", "development"],
    )
    .await;
    refuses_config(
        &dir,
        "short-secret.toml",
        &ok.replace(SECRET, "short"),
        &["auth.secret"],
    )
    .await;
    refuses_config(
        &dir,
        "bad-listen.toml",
        &config_text("nowhere", "", ""),
        &["listen"],
    )
    .await;
    refuses_config(
        &dir,
        "no-cert.toml",
        &format!("{ok}[tls]\ncert = \"missing.pem\"\nkey = \"missing-key.pem\"\n"),
        &["tls", "missing.pem"],
    )
    .await;

    // A file that is not there.
    let o = run(&dir, &["--config", "nope.toml"], None).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nope.toml"), "{}", stderr(&o));

    // The development secret is fine on loopback: `token` works with it.
    let dev_loopback = dir.join("dev-loopback.toml");
    write(
        &dev_loopback,
        &config_text("127.0.0.1:0", "", "").replace(SECRET, DEV_SECRET),
    );
    let o = run(
        &dir,
        &[
            "token",
            "alice@localhost",
            "--config",
            dev_loopback.to_str().unwrap(),
        ],
        None,
    )
    .await;
    one_jwt(&o);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_port_in_use_stops_the_server() {
    let dir = temp_dir("cli-port-in-use");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    refuses_config(
        &dir,
        "config.toml",
        &config_text(&addr, "", ""),
        &["cannot listen on", &addr],
    )
    .await;
    drop(taken);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_bad_log_filter_stops_the_server_with_the_filter_named() {
    let dir = temp_dir("cli-bad-log-filter");
    let path = dir.join("config.toml");
    write(&path, &config_text("127.0.0.1:0", "", ""));
    let mut cmd = wspd(&dir, &["--config", path.to_str().unwrap()]);
    cmd.env("RUST_LOG", "wspd=loud");
    let o = tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .expect("wspd finishes")
        .unwrap();
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("log filter \"wspd=loud\""), "{e}");
    assert!(!e.contains("listening on"), "the server started:\n{e}");
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------
// Running, and stopping on SIGTERM
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_server_runs_and_stops_cleanly_on_sigterm() {
    let dir = temp_dir("cli-run");
    // A free port: bind, note, release. (The server must bind a fixed
    // address from its config.)
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = dir.join("config.toml");
    write(&config, &config_text(&addr.to_string(), "", ""));
    // Ready when it says where it listens.
    let mut w = Wspd::start(&config, "info").await;
    let listening = format!("listening on ws://{addr}/wsp");
    assert!(
        w.stderr().iter().any(|l| l.contains(&listening)),
        "{:#?}",
        w.stderr()
    );

    let (status, _, body) = http(addr, "GET", "/healthz", &[], "").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let mut alice = Client::connect(&w.url(), &user_token("alice@localhost")).await;
    alice.expect_nothing().await;

    w.signal("TERM");
    // Open sockets are told why they close.
    let close = alice.expect_close().await;
    assert_eq!(close.code, 1001, "{close:?}");
    assert!(close.reason.contains("shutting down"), "{close:?}");
    drop(alice);

    let status = w.wait().await;
    assert!(status.success(), "{status:?}");
    let log = w.stderr();
    assert!(
        log.iter().any(|l| l.contains("signal received")),
        "{log:#?}"
    );
    assert!(log.iter().any(|l| l.contains("stopped")), "{log:#?}");
    // Nothing listens there any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let _ = std::fs::remove_dir_all(dir);
}
