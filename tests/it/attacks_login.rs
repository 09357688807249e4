//! Password guessing through `POST /token`: bounded per client address
//! and per account, with a bounded queue of checks, and a flood from one
//! address does not stop a login from another. Clients come from several
//! loopback addresses (127.0.0.x) to be told apart.

use std::net::{IpAddr, SocketAddr};

use crate::common::*;

/// `POST /token` from the local address `from`: status, headers, body.
async fn login_from(
    server: SocketAddr,
    from: &str,
    user: &str,
    password: &str,
) -> (u16, Vec<(String, String)>, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let stream = sock.connect(server).await.unwrap();
    let body = serde_json::json!({ "user": user, "password": password }).to_string();
    http_on(stream, server, "POST", "/token", &[], &body).await
}

fn server_with_users(tag: &str, names: &[&str]) -> (std::path::PathBuf, wspd::config::Config) {
    let dir = temp_dir(tag);
    let mut users = wspd::auth::UsersFile::default();
    for n in names {
        users.set(n, &format!("{n}-password")).unwrap();
    }
    users.save(&dir.join("users.toml")).unwrap();
    let cfg = config_in(
        "localhost",
        "users = \"users.toml\"\n[limits]\nlogin_failure_delay = \"1ms\"\n",
        &dir,
    );
    (dir, cfg)
}

#[tokio::test]
async fn guessing_is_bounded_per_address_and_per_account() {
    let (dir, cfg) = server_with_users("attack-login-guess", &["alice", "bob"]);
    let s = TestServer::start(cfg).await;
    for n in 0..10 {
        let (status, _, body) =
            login_from(s.addr(), "127.0.0.1", "alice", &format!("guess-{n}")).await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, headers, body) = login_from(s.addr(), "127.0.0.1", "alice", "guess-10").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too-many-attempts"), "{body}");
    let retry = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .map(|(_, v)| v.parse::<u64>().unwrap())
        .expect("Retry-After");
    assert!((1..=300).contains(&retry), "{retry}");
    // The guesser's address is stopped for every account...
    let (status, _, _) = login_from(s.addr(), "127.0.0.1", "bob", "bob-password").await;
    assert_eq!(status, 429);
    // ...the guessed account from every address...
    let (status, _, _) = login_from(s.addr(), "127.0.0.3", "alice", "alice-password").await;
    assert_eq!(status, 429);
    // ...and everyone else logs in.
    let (status, _, body) = login_from(s.addr(), "127.0.0.2", "bob", "bob-password").await;
    assert_eq!(status, 200, "{body}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_queued_within_bounds() {
    let (dir, cfg) = server_with_users("attack-login-flood", &["bob"]);
    let s = TestServer::start(cfg).await;
    let addr = s.addr();
    // 48 checks at once from five addresses (unknown users cost a hash
    // too): two run, sixteen wait, the rest are told to come back.
    let flood: Vec<_> = (0..48)
        .map(|n| {
            let from = format!("127.0.0.{}", 10 + n % 5);
            tokio::spawn(async move { login_from(addr, &from, &format!("nobody{n}"), "x").await.0 })
        })
        .collect();
    let mut busy = 0;
    for f in flood {
        match f.await.unwrap() {
            401 => {}
            503 => busy += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(busy >= 1, "the queue of password checks is bounded");
    let (status, _, body) = login_from(addr, "127.0.0.2", "bob", "bob-password").await;
    assert_eq!(status, 200, "{body}");
    std::fs::remove_dir_all(&dir).unwrap();
}
