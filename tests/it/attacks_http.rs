//! Attacks over HTTP and on the files and logs the server keeps, each
//! mounted against a real server: what the attacker is refused, and that
//! another user is served all the same.

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wspd::auth::UsersFile;
use wspd::config::Config;

use crate::cli::{config_text, run, stderr, write};
use crate::common::*;

/// A server whose users file holds alice's password; `limits` completes
/// its `[limits]` section.
fn login_server_config(tag: &str, limits: &str) -> (std::path::PathBuf, Config) {
    let dir = temp_dir(&format!("attacks-{tag}"));
    let mut users = UsersFile::default();
    users.set("alice", "correct horse").unwrap();
    users.save(&dir.join("users.toml")).unwrap();
    let config = config_in(
        "localhost",
        &format!("users = \"users.toml\"\n[limits]\nlogin_failure_delay = \"10ms\"\n{limits}"),
        &dir,
    );
    (dir, config)
}

/// Alice logs in over a connection of her own: 200 and a token.
async fn alice_logs_in(addr: std::net::SocketAddr) {
    let body = json!({"user": "alice", "password": "correct horse"}).to_string();
    let (status, _, resp) = http(addr, "POST", "/token", &[], &body).await;
    assert_eq!(status, 200, "{resp}");
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["user"], "alice@localhost");
}

/// Reads what the server sends until it closes the connection (a reset
/// after the answer counts as closing: the attacker's unread bytes make
/// the kernel reset rather than finish).
async fn read_until_closed(s: &mut TcpStream, into: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
}

// Slow request bodies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_login_body_trickled_a_byte_at_a_time_is_cut_off_with_408() {
    let (dir, config) = login_server_config("slow-body", "handshake_timeout = \"1s\"");
    let s = TestServer::start(config).await;

    // The attacker announces a body it would take 400 s to send at the
    // rate it sends it.
    let mut attacker = TcpStream::connect(s.addr()).await.unwrap();
    let head = format!(
        "POST /token HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 4000\r\n\r\n{{",
        s.addr()
    );
    attacker.write_all(head.as_bytes()).await.unwrap();

    // Meanwhile alice is served on a connection of her own.
    alice_logs_in(s.addr()).await;

    // One byte every 100 ms until the server answers (this pacing is the
    // attack, not a wait for the server); the server's deadline is bounded
    // generously by WAIT.
    let mut answer = Vec::new();
    let mut drip = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut sent = 0;
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                r = attacker.read(&mut buf) => {
                    match r {
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                        Err(e) => panic!("no answer before the connection failed: {e}"),
                    }
                    break;
                }
                _ = drip.tick() => {
                    if attacker.write_all(b" ").await.is_ok() {
                        sent += 1;
                    }
                }
            }
        }
    })
    .await
    .expect("the server cuts a slow body off at its handshake timeout");
    assert!(sent < 3999, "the body was never completed ({sent} bytes)");

    // The answer is 408 with the usual error body, and the connection is
    // closed after it: nothing is left holding it.
    tokio::time::timeout(WAIT, read_until_closed(&mut attacker, &mut answer))
        .await
        .expect("the connection is closed after the 408");
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    assert!(head.starts_with("HTTP/1.1 408"), "{answer}");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"], "timeout", "{body}");
    assert!(v["description"].is_string(), "{body}");
    assert_eq!(
        s.metric("wspd_refusals_total{reason=\"handshake\"}").await,
        1.0
    );

    // And after it, alice still logs in, and the server still answers.
    alice_logs_in(s.addr()).await;
    assert_eq!(s.get("/healthz").await.0, 200);
    s.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

// Connections per address over IPv6
// ---------------------------------------------------------------------------

/// A server on a dual-stack listener (`[::]`), one connection per client
/// address: over `::1` (the /64 `::`) and over 127.0.0.1 (which arrives as
/// `::ffff:127.0.0.1` and counts as 127.0.0.1) each group gets its one
/// place, and a second connection of a group is refused while the other
/// group is served. (Two addresses of one /64 cannot be shown here: every
/// loopback IPv6 connection comes from `::1`; see the unit tests in
/// `src/limits.rs`.)
#[tokio::test]
async fn ipv6_and_mapped_ipv4_connections_are_counted_per_group() {
    let s = TestServer::start_on(
        config("localhost", "[limits]\nconnections_per_ip = 1\n"),
        "[::]:0".parse().unwrap(),
    )
    .await;
    let port = s.addr().port();
    let v6 = format!("ws://[::1]:{port}/wsp");
    let v4 = format!("ws://127.0.0.1:{port}/wsp");

    let mut alice = try_connect(&v6, &s.token("alice@localhost"))
        .await
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    let refused = try_connect(&v6, &s.token("mallory@localhost")).await;
    assert!(refused.is_err(), "a second connection from ::1's /64");
    // The IPv4 client is another group, served meanwhile.
    let mut bob = try_connect(&v4, &s.token("bob@localhost"))
        .await
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    let refused = try_connect(&v4, &s.token("mallory@localhost")).await;
    assert!(
        refused.is_err(),
        "a second connection from 127.0.0.1, mapped"
    );
    let m = s.running.app.metrics.render();
    assert_eq!(
        metric_value(&m, "wspd_limits_hit_total{limit=\"connections_per_ip\"}"),
        2.0
    );
    s.wait_sessions(2).await;
    alice
        .send(invite("alice@localhost", "bob@localhost", "call-v6-0001"))
        .await;
    bob.expect("invite").await;
    s.stop().await;
}

// Log injection
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_user_name_with_line_breaks_cannot_forge_a_log_line() {
    // The real binary, its text log read from its stderr.
    let (dir, _) = login_server_config("log-injection", "");
    let config = dir.join("config.toml");
    write(
        &config,
        &config_text(
            "127.0.0.1:0",
            "users = \"users.toml\"",
            "[limits]\nlogin_failure_delay = \"10ms\"",
        ),
    );
    let mut w = Wspd::start(&config, "info").await;

    let forged = "x\ninjected line: INFO login user=admin\r\nINJECTED too\u{1b}[2K";
    let body = json!({"user": forged, "password": "guess"}).to_string();
    let (status, _, resp) = http(w.addr, "POST", "/token", &[], &body).await;
    assert_eq!(status, 401, "{resp}");
    // Another user is served; her line comes after the attacker's.
    alice_logs_in(w.addr).await;
    let failed = w.wait_for_line("login failed").await;
    w.wait_for_line("user=alice@localhost").await;

    let lines = w.stderr();
    for line in &lines {
        assert!(
            !line.starts_with("injected") && !line.starts_with("INJECTED"),
            "a forged log line:\n{}",
            lines.join("\n")
        );
        assert!(
            !line.contains('\r') && !line.contains('\u{1b}'),
            "control characters reached the log: {line:?}"
        );
    }
    assert!(
        failed.contains(r"x\ninjected line: INFO login user=admin\r\nINJECTED too\u{1b}[2K"),
        "the name is logged, escaped: {failed}"
    );
    w.signal("TERM");
    assert!(w.wait().await.success());
    let _ = std::fs::remove_dir_all(dir);
}

// The users file
// ---------------------------------------------------------------------------

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn user_add_writes_the_users_file_readable_by_its_owner_only() {
    let dir = temp_dir("attacks-users-mode");
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
    let users = dir.join("users.toml");

    // A new file.
    let o = run(
        &dir,
        &["user", "add", "alice", "--config", config_arg],
        Some("correct horse\n"),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(mode(&users), 0o600, "a new users file");

    // An existing file readable by everyone (written by an older wspd),
    // and a temporary file left readable by an interrupted run: the
    // replacement is 0600 all the same.
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let tmp = dir.join("users.tmp");
    write(&tmp, "left over");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = run(
        &dir,
        &["user", "add", "bob", "--config", config_arg],
        Some("hunter2 two\n"),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(mode(&users), 0o600, "a replaced users file");
    assert!(!tmp.exists());

    // The server reads it, and both users log in.
    let s = TestServer::start(Config::load(&config).unwrap()).await;
    alice_logs_in(s.addr()).await;
    let body = json!({"user": "bob", "password": "hunter2 two"}).to_string();
    assert_eq!(http(s.addr(), "POST", "/token", &[], &body).await.0, 200);
    s.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
