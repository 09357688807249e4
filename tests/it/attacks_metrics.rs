//! Attacks on the metrics: labels from remote input must not grow without
//! bound, and `/metrics` can be kept private (docs/security.md).

use std::collections::BTreeSet;

use crate::common::*;

/// The `domain` labels of `wspd_remote_calls_total`.
fn remote_domains(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("wspd_remote_calls_total{domain=\""))
        .filter_map(|r| r.split_once('"'))
        .map(|(d, _)| d.to_string())
        .collect()
}

/// The sum of `wspd_remote_calls_total` for `domain`, over outcomes.
fn remote_calls(text: &str, domain: &str) -> f64 {
    let prefix = format!("wspd_remote_calls_total{{domain=\"{domain}\",");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.trim().parse::<f64>().unwrap())
        .sum()
}

/// A user inviting 50 made-up domains adds no series: they are counted
/// under `other`, while a real link and a configured peer keep their own
/// label and another user is still served.
#[tokio::test]
async fn made_up_domains_add_no_metric_labels() {
    let net = Net::new("attack-labels").await;
    // A peer listed in the config, where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let a = net
        .server(
            "a.test",
            &format!("[federation.peers]\n\"dead.test\" = \"{dead_addr}\"\n"),
        )
        .await;
    let b = net.server("b.test", "").await;
    let mut mallory = a.connect_online("mallory@a.test").await;
    let mut alice = a.connect_online("alice@a.test").await;
    let mut bob = b.connect_online("bob@b.test").await;

    for i in 0..50 {
        let id = format!("made-up-call-{i}");
        mallory
            .send(invite(
                "mallory@a.test",
                &format!("x@made-up-{i}.test"),
                &id,
            ))
            .await;
        mallory.expect_bye(604).await;
    }
    mallory
        .send(invite("mallory@a.test", "x@dead.test", "dead-call-1"))
        .await;
    mallory.expect_bye(504).await;

    // Alice still reaches Bob across the link.
    let id = "real-call-1";
    alice.send(invite("alice@a.test", "bob@b.test", id)).await;
    bob.expect("invite").await;
    bob.send(ringing(id)).await;
    alice.expect("ringing").await;
    bob.send(bye(id, 486)).await;
    alice.expect_bye(486).await;
    a.wait_metric("wspd_calls_active", 0.0).await;
    b.wait_metric("wspd_calls_active", 0.0).await;

    let ma = a.metrics().await;
    let labels: Vec<String> = remote_domains(&ma).into_iter().collect();
    assert_eq!(labels, ["b.test", "dead.test", "other"], "{ma}");
    assert_eq!(remote_calls(&ma, "other"), 50.0, "{ma}");
    assert_eq!(remote_calls(&ma, "b.test"), 1.0, "{ma}");
    assert_eq!(remote_calls(&ma, "dead.test"), 1.0, "{ma}");
    // The callee's server names the origin of the link it accepted.
    let mb = b.metrics().await;
    assert_eq!(remote_calls(&mb, "a.test"), 1.0, "{mb}");
    assert_eq!(remote_domains(&mb).len(), 1, "{mb}");
}

const TOKEN: &str = "metrics-token-0123456789";

/// With `[metrics] token`, `/metrics` answers only its holders; without
/// the key it is open as before.
#[tokio::test]
async fn metrics_token_keeps_metrics_private() {
    let s = TestServer::start(config(
        "localhost",
        &format!("[metrics]\ntoken = \"{TOKEN}\"\n"),
    ))
    .await;
    let (status, headers, body) = http(s.addr(), "GET", "/metrics", &[], "").await;
    assert_eq!(status, 401, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "unauthorized", "{body}");
    assert!(v["description"].is_string(), "{body}");
    assert!(headers.iter().any(|(k, _)| k == "www-authenticate"));
    assert!(!body.contains("wspd_"), "{body}");

    for wrong in [
        "Bearer metrics-token-0123456788",
        "Bearer metrics-token-012345678",
        "Bearer ",
        "Basic metrics-token-0123456789",
    ] {
        let (status, _, body) =
            http(s.addr(), "GET", "/metrics", &[("Authorization", wrong)], "").await;
        assert_eq!(status, 401, "{wrong}: {body}");
    }
    // Not taken from the query as a socket's token is.
    let (status, _, _) = http(
        s.addr(),
        "GET",
        &format!("/metrics?access_token={TOKEN}"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 401);

    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) =
        http(s.addr(), "GET", "/metrics", &[("Authorization", &auth)], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("wspd_sessions"), "{body}");
    s.stop().await;

    let open = TestServer::localhost().await;
    let (status, _, body) = http(open.addr(), "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("wspd_sessions"), "{body}");
    open.stop().await;
}
