//! `GET /session` and the ICE servers clients are given.

use crate::common::*;
use serde_json::Value;

const TURN: &str = "[turn]\nurls = [\"turn:turn.localhost:3478?transport=udp\", \"turns:turn.localhost:5349\"]\nsecret = \"coturn-shared-secret\"\nttl = \"10m\"\n";

#[tokio::test]
async fn session_names_the_user_and_has_no_ice_servers_without_turn() {
    let s = TestServer::localhost().await;
    let token = s.token("alice@localhost");
    let auth = format!("Bearer {token}");
    let (status, _, body) =
        http(s.addr(), "GET", "/session", &[("Authorization", &auth)], "").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["user"], "alice@localhost");
    assert_eq!(v["iceServers"], serde_json::json!([]));
    // The query form, as browsers use it.
    let (status, _, _) = http(
        s.addr(),
        "GET",
        &format!("/session?access_token={token}"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn session_refuses_a_token_as_the_upgrade_would() {
    let s = TestServer::localhost().await;
    for (path, id) in [
        ("/session", "missing-token"),
        ("/session?access_token=garbage", "invalid-token"),
    ] {
        let (status, headers, body) = http(s.addr(), "GET", path, &[], "").await;
        assert_eq!(status, 401, "{path}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], id);
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "www-authenticate" && v == "Bearer")
        );
    }
    let other = TestServer::start(config("a.test", "")).await;
    let foreign = other.token("alice@a.test");
    let (status, _, body) = http(
        s.addr(),
        "GET",
        &format!("/session?access_token={foreign}"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body.contains("invalid-token") || body.contains("wrong-domain"),
        "{body}"
    );
}

#[tokio::test]
async fn turn_credentials_in_coturn_shared_secret_form() {
    let s = TestServer::start(config("localhost", TURN)).await;
    let token = s.token("alice@localhost");
    let (status, _, body) = http(
        s.addr(),
        "GET",
        &format!("/session?access_token={token}"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let ice = &v["iceServers"][0];
    assert_eq!(ice["urls"][0], "turn:turn.localhost:3478?transport=udp");
    assert_eq!(ice["urls"][1], "turns:turn.localhost:5349");
    let username = ice["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice@localhost");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "{expiry} vs {now}"
    );
    // What coturn computes from its static-auth-secret.
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        b"coturn-shared-secret",
    );
    use base64::Engine;
    let credential = base64::engine::general_purpose::STANDARD
        .decode(ice["credential"].as_str().unwrap())
        .unwrap();
    assert!(ring::hmac::verify(&key, username.as_bytes(), &credential).is_ok());
}

#[tokio::test]
async fn login_returns_ice_servers_with_the_token() {
    let dir = temp_dir("session-login");
    let users = dir.join("users.toml");
    let mut f = wspd::auth::UsersFile::default();
    f.set("alice", "secret-pw").unwrap();
    f.save(&users).unwrap();
    let s = TestServer::start(config_in(
        "localhost",
        &format!("users = \"users.toml\"\n{TURN}"),
        &dir,
    ))
    .await;
    let (status, _, body) = http(
        s.addr(),
        "POST",
        "/token",
        &[],
        r#"{"user":"alice","password":"secret-pw"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["token"].is_string());
    assert!(
        v["iceServers"][0]["username"]
            .as_str()
            .unwrap()
            .ends_with(":alice@localhost")
    );
}

#[tokio::test]
async fn cross_origin_pages_may_use_the_library_and_the_endpoints() {
    let s = TestServer::localhost().await;
    let cors = |h: &[(String, String)]| {
        h.iter()
            .any(|(k, v)| k == "access-control-allow-origin" && v == "*")
    };
    let (status, h, _) = http(s.addr(), "GET", "/wsp.js", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        cors(&h),
        "a module import from another origin needs CORS: {h:?}"
    );
    let (status, h, _) = http(
        s.addr(),
        "OPTIONS",
        "/token",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 204);
    assert!(cors(&h));
    assert!(
        h.iter()
            .any(|(k, v)| k == "access-control-allow-headers" && v.contains("content-type"))
    );
    let (status, h, _) = http(s.addr(), "POST", "/token", &[], "{}").await;
    assert_eq!(status, 404, "no users file here");
    assert!(cors(&h));
}
