//! The HTTP routes: `/wsp` upgrades refused (tokens, subprotocols,
//! malformed requests), `POST /token` logins, and the plain routes.

use super::*;

// ---------------------------------------------------------------------------
// Upgrade refusals
// ---------------------------------------------------------------------------

#[tokio::test]
async fn upgrades_without_a_good_token_are_refused_with_401() {
    let s = TestServer::localhost().await;
    let now = unix_now();
    let alice = Address::parse("alice@localhost").unwrap();
    let hs = jsonwebtoken::Algorithm::HS256;

    let other_secret = Tokens::new("localhost", "another-secret-another-secret-another")
        .mint(&alice, Duration::from_secs(3600))
        .0;
    let foreign = Tokens::new("example.com", SECRET)
        .mint(
            &Address::parse("alice@example.com").unwrap(),
            Duration::from_secs(3600),
        )
        .0;
    let expired = jwt(
        &RawClaims {
            sub: Some("alice@localhost"),
            exp: Some(now - 60),
            iat: now - 120,
        },
        SECRET,
        hs,
    );
    let no_exp = jwt(
        &RawClaims {
            sub: Some("alice@localhost"),
            exp: None,
            iat: now,
        },
        SECRET,
        hs,
    );
    let bad_subject = jwt(
        &RawClaims {
            sub: Some("not an address"),
            exp: Some(now + 600),
            iat: now,
        },
        SECRET,
        hs,
    );
    let hs512 = jwt(
        &RawClaims {
            sub: Some("alice@localhost"),
            exp: Some(now + 600),
            iat: now,
        },
        SECRET,
        jsonwebtoken::Algorithm::HS512,
    );
    let good = s.token("alice@localhost");
    let tampered = {
        // Same signature, another subject.
        let parts: Vec<&str> = good.split('.').collect();
        let other = s.token("mallory@localhost");
        let other_payload = other.split('.').nth(1).unwrap();
        format!("{}.{}.{}", parts[0], other_payload, parts[2])
    };

    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let mut cases: Vec<Case> = vec![
        ("no token", upgrade_headers(), "missing-token"),
        ("empty bearer", with_bearer(""), "missing-token"),
        ("garbage", with_bearer("garbage"), "invalid-token"),
        (
            "another secret",
            with_bearer(&other_secret),
            "invalid-token",
        ),
        ("tampered", with_bearer(&tampered), "invalid-token"),
        ("expired", with_bearer(&expired), "token-expired"),
        ("no exp", with_bearer(&no_exp), "invalid-token"),
        ("bad subject", with_bearer(&bad_subject), "invalid-token"),
        ("HS512", with_bearer(&hs512), "invalid-token"),
        ("another domain", with_bearer(&foreign), "wrong-domain"),
    ];
    let mut basic = upgrade_headers();
    basic.push(("Authorization", "Basic YWxpY2U6cGFzcw==".into()));
    cases.push(("basic auth", basic, "missing-token"));

    for (what, headers, id) in &cases {
        let (status, h, body) = upgrade_refused(&s, "/wsp", headers).await;
        assert_eq!(status, 401, "{what}: {body}");
        json_error(status, &h, &body, id);
        assert_eq!(header(&h, "www-authenticate"), Some("Bearer"), "{what}");
    }
    // The same through the query string.
    for (token, id) in [(&expired, "token-expired"), (&foreign, "wrong-domain")] {
        let (status, h, body) = upgrade_refused(
            &s,
            &format!("/wsp?access_token={token}"),
            &upgrade_headers(),
        )
        .await;
        assert_eq!(status, 401, "{body}");
        json_error(status, &h, &body, id);
    }
    let refused_n = cases.len() as f64 + 2.0;
    assert_refusals(&s, &[("unauthorized", refused_n)]).await;
    assert_eq!(s.metric("wspd_sessions").await, 0.0);

    // The good token still works.
    let mut c = s.connect("alice@localhost").await;
    c.expect_nothing().await;
}

#[tokio::test]
async fn a_token_in_the_query_string_opens_a_socket() {
    let s = TestServer::localhost().await;
    let mut bob = s.connect_online("bob@localhost").await;
    let token = s.token("alice@localhost");
    let mut req = format!("{}?access_token={token}", s.url())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("wsp-1.0"),
    );
    let (mut alice, proto) = try_connect(req).await.expect("accepted");
    assert_eq!(proto.as_deref(), Some("wsp-1.0"));
    // The socket is alice's: she can place a call as herself.
    answered_call(
        &mut alice,
        &mut bob,
        "alice@localhost",
        "bob@localhost",
        "call-query-1",
    )
    .await;
    // Other query parameters do not get in the way.
    let mut req = format!("{}?x=1&access_token={token}&y=2", s.url())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("wsp-1.0"),
    );
    let (mut again, _) = try_connect(req).await.expect("accepted");
    again.expect_nothing().await;
}

#[tokio::test]
async fn subprotocol_negotiation() {
    let s = TestServer::localhost().await;
    let token = s.token("alice@localhost");
    let request = |proto: Option<&'static str>| {
        let mut req = s.url().into_client_request().unwrap();
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        if let Some(p) = proto {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
        }
        req
    };

    // None offered: accepted, none selected.
    let (mut c, proto) = try_connect(request(None)).await.expect("accepted");
    assert_eq!(proto, None);
    c.expect_nothing().await;
    // wsp-1.0 among others: selected.
    let (mut c, proto) = try_connect(request(Some("chat, wsp-1.0")))
        .await
        .expect("accepted");
    assert_eq!(proto.as_deref(), Some("wsp-1.0"));
    c.expect_nothing().await;

    // Only others: refused at the upgrade, as plain HTTP.
    for offered in ["chat", "wsp-2.0", "WSP-1.0x"] {
        let mut h = with_bearer(&token);
        h.retain(|(k, _)| *k != "Sec-WebSocket-Protocol");
        h.push(("Sec-WebSocket-Protocol", offered.into()));
        let (status, hs, body) = upgrade_refused(&s, "/wsp", &h).await;
        assert_eq!(status, 400, "{offered}: {body}");
        let v = json_error(status, &hs, &body, "bad-upgrade");
        assert!(
            v["description"].as_str().unwrap().contains("wsp-1.0"),
            "{body}"
        );
    }
    // And tungstenite sees a refusal.
    match try_connect(request(Some("chat"))).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 400),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("an upgrade offering only chat was accepted"),
    }
    assert_refusals(&s, &[("bad_upgrade", 4.0)]).await;
}

#[tokio::test]
async fn malformed_upgrades_are_refused() {
    let s = TestServer::localhost().await;
    let token = s.token("alice@localhost");

    // Wrong WebSocket version: 426 naming the version spoken.
    for version in ["8", "14", ""] {
        let mut h = with_bearer(&token);
        h.retain(|(k, _)| *k != "Sec-WebSocket-Version");
        if !version.is_empty() {
            h.push(("Sec-WebSocket-Version", version.into()));
        }
        let (status, hs, body) = upgrade_refused(&s, "/wsp", &h).await;
        assert_eq!(status, 426, "version {version:?}: {body}");
        json_error(status, &hs, &body, "bad-upgrade");
        assert_eq!(header(&hs, "sec-websocket-version"), Some("13"));
    }

    // A plain GET: 400, even with a good token.
    let auth = format!("Bearer {token}");
    let (status, hs, body) = http(s.addr(), "GET", "/wsp", &[("Authorization", &auth)], "").await;
    assert_eq!(status, 400, "{body}");
    let v = json_error(status, &hs, &body, "bad-upgrade");
    assert!(
        v["description"].as_str().unwrap().contains("WebSocket"),
        "{body}"
    );

    // Upgrade to something else.
    let mut h = with_bearer(&token);
    h.retain(|(k, _)| *k != "Upgrade");
    h.push(("Upgrade", "h2c".into()));
    let (status, hs, body) = upgrade_refused(&s, "/wsp", &h).await;
    assert_eq!(status, 400, "{body}");
    json_error(status, &hs, &body, "bad-upgrade");

    // No key.
    let mut h = with_bearer(&token);
    h.retain(|(k, _)| *k != "Sec-WebSocket-Key");
    let (status, hs, body) = upgrade_refused(&s, "/wsp", &h).await;
    assert_eq!(status, 400, "{body}");
    let v = json_error(status, &hs, &body, "bad-upgrade");
    assert!(
        v["description"]
            .as_str()
            .unwrap()
            .contains("Sec-WebSocket-Key"),
        "{body}"
    );
    assert_refusals(&s, &[("bad_upgrade", 6.0)]).await;
    assert_eq!(s.metric("wspd_sessions").await, 0.0);
}

#[tokio::test]
async fn a_raw_upgrade_is_accepted_and_its_close_answered() {
    let s = TestServer::localhost().await;
    let (mut tcp, head) = raw_upgrade(&s, &s.token("alice@localhost")).await;
    let head = head.to_ascii_lowercase();
    assert!(head.contains("sec-websocket-protocol: wsp-1.0"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // A masked close frame (1000) from the client: the server answers it
    // with a close frame before it hangs up (RFC 6455 5.5.1), so the
    // browser's close is clean.
    tcp.write_all(&[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2])
        .await
        .unwrap();
    let (op, payload) = read_frame(&mut tcp).await;
    assert_eq!(op, 0x88);
    assert_eq!(payload, [0x03, 0xe8]);
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("the server hangs up")
        .unwrap();
    assert!(rest.is_empty(), "{rest:x?}");
}

// ---------------------------------------------------------------------------
// POST /token
// ---------------------------------------------------------------------------

/// A server with a users file holding alice's password.
fn login_server_config(tag: &str) -> (std::path::PathBuf, wspd::config::Config) {
    let dir = temp_dir(&format!("input-{tag}"));
    let mut users = UsersFile::default();
    users.set("alice", "correct horse").unwrap();
    users.save(&dir.join("users.toml")).unwrap();
    let config = config_in(
        "localhost",
        "users = \"users.toml\"\n[limits]\nlogin_failure_delay = \"10ms\"",
        &dir,
    );
    (dir, config)
}

async fn post_token(s: &TestServer, body: &str) -> (u16, Vec<(String, String)>, String) {
    http(s.addr(), "POST", "/token", &[], body).await
}

#[tokio::test]
async fn login_with_the_right_password_gives_a_token_that_opens_wsp() {
    let (dir, config) = login_server_config("login-ok");
    let s = TestServer::start(config).await;

    for user in ["alice", "alice@localhost", "Alice@LOCALHOST"] {
        let body = json!({"user": user, "password": "correct horse"}).to_string();
        let before = unix_now();
        let (status, h, body) = post_token(&s, &body).await;
        assert_eq!(status, 200, "{user}: {body}");
        assert_eq!(header(&h, "content-type"), Some("application/json"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["user"], "alice@localhost", "{body}");
        let expires = v["expires"].as_u64().expect("expires is a number");
        // token_ttl defaults to 12 h.
        assert!(
            (before + 43200..=unix_now() + 43200).contains(&expires),
            "{body}"
        );
        let token = v["token"].as_str().unwrap();
        assert_eq!(token.split('.').count(), 3);

        // The socket is alice's: an invite as alice passes the caller
        // check and meets the users file (404 for a stranger); one as
        // someone else is refused (403).
        let mut alice = Client::connect(&s.url(), token).await;
        let id = unique("login");
        alice
            .send(invite("alice@localhost", "nobody@localhost", &id))
            .await;
        assert_eq!(alice.expect_bye(404).await[2]["call"], id.as_str());
        let id = unique("login");
        alice
            .send(invite("mallory@localhost", "alice@localhost", &id))
            .await;
        assert_eq!(alice.expect_bye(403).await[2]["call"], id.as_str());
        alice.close().await;
    }
    assert_eq!(s.metric("wspd_logins_total{result=\"ok\"}").await, 3.0);
    assert_eq!(s.metric("wspd_logins_total{result=\"failed\"}").await, 0.0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn login_failures_are_401_and_counted() {
    let (dir, config) = login_server_config("login-failed");
    let s = TestServer::start(config).await;
    let cases = [
        json!({"user": "alice", "password": "wrong"}),
        json!({"user": "alice", "password": ""}),
        json!({"user": "alice", "password": "correct horse "}),
        json!({"user": "bob", "password": "correct horse"}),
        json!({"user": "alice@example.com", "password": "correct horse"}),
        json!({"user": "not a name", "password": "correct horse"}),
        json!({"user": "", "password": "correct horse"}),
    ];
    for c in &cases {
        let (status, h, body) = post_token(&s, &c.to_string()).await;
        assert_eq!(status, 401, "{c}: {body}");
        json_error(status, &h, &body, "bad-credentials");
        assert!(!body.contains("token\""), "{body}");
    }
    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_logins_total{result=\"failed\"}"),
        cases.len() as f64,
        "{m}"
    );
    assert_eq!(metric_value(&m, "wspd_logins_total{result=\"ok\"}"), 0.0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn login_with_a_malformed_or_large_body_is_refused() {
    let (dir, config) = login_server_config("login-bad");
    let s = TestServer::start(config).await;
    for body in [
        "",
        "user=alice&password=x",
        "{\"user\": \"alice\"",
        r#"{"user":"alice"}"#,
        r#"{"password":"correct horse"}"#,
        r#"{"user":"alice","password":"correct horse","admin":true}"#,
        r#"{"user":1,"password":"correct horse"}"#,
    ] {
        let (status, h, resp) = post_token(&s, body).await;
        assert_eq!(status, 400, "{body:?}: {resp}");
        json_error(status, &h, &resp, "bad-request");
    }

    // Just at the limit: read and judged (a wrong password here).
    let pad = |n: usize| {
        let base = r#"{"user":"alice","password":""}"#;
        json!({"user": "alice", "password": "p".repeat(n - base.len())}).to_string()
    };
    let at_limit = pad(4096);
    assert_eq!(at_limit.len(), 4096);
    let (status, _, resp) = post_token(&s, &at_limit).await;
    assert_eq!(status, 401, "{resp}");
    let over = pad(4097);
    let (status, h, resp) = post_token(&s, &over).await;
    assert_eq!(status, 413, "{resp}");
    json_error(status, &h, &resp, "too-large");
    let (status, _, resp) = post_token(&s, &pad(64 * 1024)).await;
    assert_eq!(status, 413, "{resp}");

    let m = s.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_logins_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(metric_value(&m, "wspd_logins_total{result=\"ok\"}"), 0.0);

    // The server still logs people in.
    let ok = json!({"user": "alice", "password": "correct horse"}).to_string();
    assert_eq!(post_token(&s, &ok).await.0, 200);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn login_without_a_users_file_is_404() {
    let s = TestServer::localhost().await;
    let body = json!({"user": "alice", "password": "correct horse"}).to_string();
    let (status, h, resp) = post_token(&s, &body).await;
    assert_eq!(status, 404, "{resp}");
    json_error(status, &h, &resp, "no-users-file");
    assert_eq!(s.metric("wspd_logins_total{result=\"failed\"}").await, 0.0);
}

// ---------------------------------------------------------------------------
// The other routes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn plain_http_routes() {
    let s = TestServer::localhost().await;
    let (status, h, body) = http(s.addr(), "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(body, "ok\n");
    assert!(
        header(&h, "content-type")
            .unwrap()
            .starts_with("text/plain")
    );

    let (status, h, body) = http(s.addr(), "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        header(&h, "content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{h:?}"
    );
    assert!(body.contains("wspd_sessions"), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    // The demo page and the client library are served as files.
    for (path, kind) in [
        ("/", "text/html"),
        ("/wsp.js", "text/javascript"),
        ("/demo.js", "text/javascript"),
    ] {
        let (status, h, body) = http(s.addr(), "GET", path, &[], "").await;
        assert_eq!(status, 200, "{path}");
        assert!(
            header(&h, "content-type").unwrap().starts_with(kind),
            "{path}: {h:?}"
        );
        assert_eq!(header(&h, "x-content-type-options").unwrap(), "nosniff");
        assert!(!body.is_empty());
    }

    for path in [
        "/nope",
        "/wsp/",
        "/healthz/x",
        "/WSP",
        "/web/wsp.js",
        "/../Cargo.toml",
    ] {
        let (status, h, body) = http(s.addr(), "GET", path, &[], "").await;
        assert_eq!(status, 404, "{path}: {body}");
        json_error(status, &h, &body, "not-found");
    }
    for (method, path) in [
        ("POST", "/healthz"),
        ("DELETE", "/wsp"),
        ("POST", "/wsp"),
        ("GET", "/token"),
        ("PUT", "/token"),
        ("POST", "/metrics"),
    ] {
        let (status, h, body) = http(s.addr(), method, path, &[], "").await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        json_error(status, &h, &body, "method-not-allowed");
    }
    // A query string does not change the route.
    let (status, _, _) = http(s.addr(), "GET", "/healthz?probe=1", &[], "").await;
    assert_eq!(status, 200);
}
