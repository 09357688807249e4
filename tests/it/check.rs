//! `wspd check DOMAIN`: the real binary, configured as a.test, checking
//! in-process servers found through a real DNS server on loopback.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::common::*;
use wspd::federation::keys::LinkKey;

/// How long one run of the binary may take (every step is bounded by the
/// config's 2 s timeouts).
const RUN_LIMIT: Duration = Duration::from_secs(20);

/// Runs `wspd --config <config> check <domain>` to its end (bounded);
/// returns its output, with stdout as text.
async fn check(config: &Path, domain: &str) -> (Output, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wspd"))
        .arg("--config")
        .arg(config)
        .args(["check", domain])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("wspd starts");
    let out = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("wspd check {domain} did not finish in {RUN_LIMIT:?}"))
        .unwrap();
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    (out, stdout)
}

/// The line of step `name` (the first one), e.g. `ok   dns ...`.
fn step<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| {
            l.get(5..)
                .is_some_and(|r| r.split(' ').next() == Some(name))
        })
        .unwrap_or_else(|| panic!("no {name} step in:\n{stdout}"))
}

fn verdict(stdout: &str) -> &str {
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("verdict: "), "{stdout}");
    last
}

/// a.test's own server runs with the key the check signs with, and is
/// discoverable: b.test fetches a.test's keys to verify the link.
#[tokio::test]
async fn a_healthy_peer_passes_every_step() {
    let net = Net::new("check-ok").await;
    let _a = net.server("a.test", "").await;
    let b = net.server("b.test", "").await;
    let cfg = net.config_file("a.test", "");

    let (out, stdout) = check(&cfg, "b.test").await;
    assert!(out.status.success(), "{stdout}\n{out:?}");
    let steps: Vec<&str> = stdout
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("verdict"))
        .collect();
    let names: Vec<&str> = steps
        .iter()
        .map(|l| l[5..].split(' ').next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["cert", "policy", "dns", "connect", "tls", "keys", "link"],
        "{stdout}"
    );
    for l in &steps {
        assert!(l.starts_with("ok   "), "{l}\n{stdout}");
    }
    assert!(
        step(&stdout, "dns").contains(&format!(
            "_wsp._tcp.b.test -> b.test:{} (priority 10, weight 0) -> 127.0.0.1:{}",
            b.addr().port(),
            b.addr().port()
        )),
        "{stdout}"
    );
    assert!(step(&stdout, "tls").contains("TLS 1.3"), "{stdout}");
    let cert = step(&stdout, "cert");
    assert!(
        cert.contains("files (")
            && cert.contains("a.test.pem")
            && cert.contains("valid for a.test; expires "),
        "{stdout}"
    );
    let b_key = LinkKey::load_or_create(&net.key_path("b.test")).unwrap();
    assert!(step(&stdout, "keys").contains(b_key.id()), "{stdout}");
    let a_key = LinkKey::load_or_create(&net.key_path("a.test")).unwrap();
    let link = step(&stdout, "link");
    assert!(link.contains("101"), "{stdout}");
    assert!(link.contains(a_key.id()), "{stdout}");
    assert!(link.contains("closed with 1000"), "{stdout}");
    assert!(!link.contains("no close answer"), "{stdout}");
    assert_eq!(verdict(&stdout), "verdict: a.test federates with b.test");

    // b.test accepted the link and saw it closed cleanly.
    b.wait_metric("wspd_links{direction=\"in\"}", 0.0).await;
    let m = b.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_link_failures_total{reason=\"broken\"}"),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "wspd_link_failures_total{reason=\"keys\"}"),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_domain_without_records_has_no_service() {
    let net = Net::new("check-nxdomain").await;
    let cfg = net.config_file("a.test", "");
    let (out, stdout) = check(&cfg, "nowhere.test").await;
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{out:?}");
    let dns = step(&stdout, "dns");
    assert!(
        dns.starts_with("FAIL dns        no WSP service (bye 604)"),
        "{stdout}"
    );
    assert!(
        dns.contains(&format!("resolver {}", net.dns.addr)),
        "{stdout}"
    );
    assert!(step(&stdout, "link").starts_with("skip"), "{stdout}");
    assert!(
        verdict(&stdout).starts_with("verdict: a.test does NOT federate with nowhere.test"),
        "{stdout}"
    );
    // The check never creates the server's key file.
    assert!(!net.key_path("a.test").exists());
}

/// c.test's SRV record points at wsp-host.test, whose certificate is valid
/// for wsp-host.test only: a link checks the domain itself.
#[tokio::test]
async fn a_certificate_for_the_srv_target_only_fails_tls() {
    let net = Net::new("check-cert").await;
    let c = TestServer::start(net.config("c.test", "wsp-host.test", "")).await;
    net.publish("c.test", "wsp-host.test", c.addr());
    let cfg = net.config_file("a.test", "");
    let (out, stdout) = check(&cfg, "c.test").await;
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{out:?}");
    assert!(step(&stdout, "dns").contains("wsp-host.test:"), "{stdout}");
    assert!(step(&stdout, "connect").starts_with("ok"), "{stdout}");
    let tls = step(&stdout, "tls");
    assert!(tls.starts_with("FAIL"), "{stdout}");
    assert!(
        tls.contains("not valid for c.test: it is valid for wsp-host.test"),
        "{stdout}"
    );
    assert!(step(&stdout, "keys").starts_with("skip"), "{stdout}");
    assert!(
        verdict(&stdout).contains("no certificate valid for c.test"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_peer_refusing_us_by_policy_answers_403() {
    let net = Net::new("check-deny").await;
    let _a = net.server("a.test", "").await;
    let _b = net.server("b.test", "deny = [\"a.test\"]").await;
    let cfg = net.config_file("a.test", "");
    let (out, stdout) = check(&cfg, "b.test").await;
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{out:?}");
    assert!(step(&stdout, "keys").starts_with("ok"), "{stdout}");
    let link = step(&stdout, "link");
    assert!(
        link.starts_with("FAIL link       403 Forbidden"),
        "{stdout}"
    );
    assert!(
        link.contains("\"error\":\"federation-refused\""),
        "{stdout}"
    );
    assert!(verdict(&stdout).contains("b.test's policy"), "{stdout}");

    // Our own policy refusing b.test fails at once, the rest still shown.
    let cfg = net.config_file("a.test", "deny = [\"b.test\"]");
    let (out, stdout) = check(&cfg, "b.test").await;
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{out:?}");
    assert!(
        step(&stdout, "policy")
            .starts_with("FAIL policy     a.test's [federation] allow/deny refuses b.test"),
        "{stdout}"
    );
    assert!(step(&stdout, "tls").starts_with("ok"), "{stdout}");
    assert!(
        verdict(&stdout)
            .ends_with("this config's own policy refuses b.test (calls to it end with 403 here)"),
        "{stdout}"
    );
}

#[tokio::test]
async fn bad_domains_are_refused() {
    let net = Net::new("check-args").await;
    let cfg = net.config_file("a.test", "");
    for (domain, says) in [
        ("a.test", "wspd: a.test is this server's own domain"),
        (
            "not a domain",
            "wspd: \"not a domain\" is not a domain name",
        ),
    ] {
        let (out, stdout) = check(&cfg, domain).await;
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{out:?}");
        assert_eq!(stdout, "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end(), says);
    }
}

/// Our key file exists but no server of a.test answers: b.test cannot
/// fetch our keys, and the check says what to do about it.
#[tokio::test]
async fn our_own_server_not_running_means_keys_unavailable() {
    let net = Net::new("check-nokeys").await;
    let _b = net.server("b.test", "").await;
    LinkKey::load_or_create(&net.key_path("a.test")).unwrap();
    let cfg = net.config_file("a.test", "");
    let (out, stdout) = check(&cfg, "b.test").await;
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{out:?}");
    let link = step(&stdout, "link");
    assert!(
        link.starts_with("FAIL link       401 Unauthorized"),
        "{stdout}"
    );
    assert!(link.contains("keys-unavailable"), "{stdout}");
    assert!(
        verdict(&stdout).contains("our own server must be running and discoverable"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_config_without_federation_is_refused() {
    let dir = temp_dir("check-nofed");
    let cfg = dir.join("plain.toml");
    std::fs::write(
        &cfg,
        format!("domain = \"a.test\"\nlisten = \"127.0.0.1:0\"\n[auth]\nsecret = \"{SECRET}\"\n"),
    )
    .unwrap();
    let (out, stdout) = check(&cfg, "b.test").await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout, "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has no [federation] section: this server does not federate"),
        "{stderr}"
    );
}

/// The first SRV target does not answer; the second does. The server
/// would get through too, later: a warning, and the check passes.
#[tokio::test]
async fn a_dead_address_before_a_working_one_is_a_warning() {
    let net = Net::new("check-warn").await;
    let _a = net.server("a.test", "").await;
    let b = TestServer::start(net.config("b.test", "b.test", "")).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    net.dns
        .add_srv("_wsp._tcp.b.test", 10, 0, dead_port, "old.b.test", 60);
    net.dns
        .add_a("old.b.test", std::net::Ipv4Addr::LOCALHOST, 60);
    net.dns
        .add_srv("_wsp._tcp.b.test", 20, 0, b.addr().port(), "b.test", 60);
    net.dns.add_a("b.test", std::net::Ipv4Addr::LOCALHOST, 60);
    let cfg = net.config_file("a.test", "");
    let (out, stdout) = check(&cfg, "b.test").await;
    assert!(out.status.success(), "{stdout}\n{out:?}");
    assert!(
        step(&stdout, "dns").contains(&format!(
            "-> old.b.test:{dead_port} (priority 10, weight 0), b.test:{} (priority 20, weight 0) \
             -> 127.0.0.1:{dead_port}, 127.0.0.1:{}",
            b.addr().port(),
            b.addr().port()
        )),
        "{stdout}"
    );
    let connects: Vec<&str> = stdout
        .lines()
        .filter(|l| l[5..].starts_with("connect"))
        .collect();
    assert_eq!(connects.len(), 2, "{stdout}");
    assert!(
        connects[0].starts_with(&format!("warn connect    127.0.0.1:{dead_port}: ")),
        "{stdout}"
    );
    assert!(connects[1].starts_with("ok   connect"), "{stdout}");
    assert!(step(&stdout, "link").starts_with("ok"), "{stdout}");
    assert!(
        verdict(&stdout)
            .ends_with("federates with b.test (1 warning above: links take longer to open)"),
        "{stdout}"
    );
}

/// A DNS server that never answers, and a server that accepts TCP but
/// never speaks TLS: each step ends at its timeout (2 s here).
#[tokio::test]
async fn every_step_is_bounded_by_the_timeouts() {
    let net = Net::new("check-bounded").await;
    // Accepted by the kernel (backlog), never read.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    net.publish("mute.test", "mute.test", mute.local_addr().unwrap());
    let cfg = net.config_file("a.test", "");

    let start = std::time::Instant::now();
    let (out, stdout) = check(&cfg, "mute.test").await;
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{out:?}");
    assert!(step(&stdout, "connect").starts_with("ok"), "{stdout}");
    assert!(
        step(&stdout, "tls").ends_with("no TLS handshake within 2s"),
        "{stdout}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );

    net.dns.set_silent(true);
    let start = std::time::Instant::now();
    let (out, stdout) = check(&cfg, "b.test").await;
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{out:?}");
    let dns = step(&stdout, "dns");
    assert!(
        dns.starts_with("FAIL dns        DNS did not answer within 2s (bye 504)"),
        "{stdout}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
}
