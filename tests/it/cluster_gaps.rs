//! Lost messages between two nodes, made real: the test listens on a
//! node's channel in Redis as any subscriber can, reads how the other node
//! numbers its frames, and publishes one numbered past a gap, as if the
//! frames in between had been published while the receiver was away. The
//! calls between the two nodes end with a clear bye on both sides, the gap
//! is counted, and the nodes go on serving.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::redis::Redis;
use crate::common::*;

/// A Redis command as RESP (binary-safe: the payload holds a newline).
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one RESP array of bulk strings (a pub/sub push or a reply).
async fn read_array(r: &mut BufReader<TcpStream>) -> Vec<String> {
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let n: usize = line.trim_end().trim_start_matches('*').parse().unwrap();
    let mut items = Vec::new();
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        if let Some(len) = line.trim_end().strip_prefix('$') {
            let len: usize = len.parse().unwrap();
            let mut buf = vec![0u8; len + 2];
            tokio::io::AsyncReadExt::read_exact(r, &mut buf)
                .await
                .unwrap();
            buf.truncate(len);
            items.push(String::from_utf8(buf).unwrap());
        } else {
            items.push(line.trim_end().to_string());
        }
    }
    items
}

async fn node(dir: &std::path::Path, redis: &Redis, name: &str) -> Wspd {
    let extra = format!(
        "[cluster]\nredis = \"{}\"\nnode = \"{name}\"\n",
        redis.url()
    );
    let path = config_file(dir, &format!("{name}.toml"), "127.0.0.1:0", &extra);
    Wspd::start(&path, "wspd=info").await
}

async fn wait_metric(w: &Wspd, name: &str, want: f64) {
    let start = std::time::Instant::now();
    loop {
        let v = metric_value(&w.metrics().await, name);
        if v == want {
            return;
        }
        assert!(start.elapsed() < WAIT, "{name} = {v}, waiting for {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Calls bob from alice until an invite rings (bob's presence has
/// reached alice's node), then cancels it; bounded by [`WAIT`].
async fn reachable(alice: &mut Client, bob: &mut Client) {
    let start = std::time::Instant::now();
    for i in 0.. {
        let id = format!("gap-probe-{i:03}");
        alice
            .send(invite("alice@localhost", "bob@localhost", &id))
            .await;
        tokio::select! {
            f = alice.recv() => assert_eq!((f[0].as_str(), &f[1]["code"]), (Some("bye"), &serde_json::json!(480)), "{f}"),
            f = bob.recv() => {
                assert_eq!(f[0], "invite", "{f}");
                alice.send(bye(&id, 487)).await;
                bob.expect_bye(487).await;
                return;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "bob never reachable from alice's node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_gap_in_a_nodes_frames_ends_the_calls_between_them_on_both_sides() {
    let redis = Redis::start("gap").await;
    let dir = temp_dir("cluster-gap");
    let n1 = node(&dir, &redis, "n1").await;
    let n2 = node(&dir, &redis, "n2").await;
    for n in [&n1, &n2] {
        wait_metric(n, "wspd_cluster_nodes", 2.0).await;
    }
    let mut alice = Client::connect(&n1.url(), &user_token("alice@localhost")).await;
    let mut bob = Client::connect(&n2.url(), &user_token("bob@localhost")).await;
    reachable(&mut alice, &mut bob).await;
    let id = "gap-call-01";
    answered_call(&mut alice, &mut bob, "alice@localhost", "bob@localhost", id).await;

    // Listen on n2's channel, and see how n1 numbers what it sends there.
    let port: u16 = redis.url().rsplit(':').next().unwrap().parse().unwrap();
    let mut sub = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    sub.get_mut()
        .write_all(&resp(&["SUBSCRIBE", "wspd:localhost:to:n2"]))
        .await
        .unwrap();
    assert_eq!(read_array(&mut sub).await[0], "subscribe");
    alice.send(candidate(id, 1)).await;
    bob.expect("icecandidate").await;
    let push = tokio::time::timeout(WAIT, read_array(&mut sub))
        .await
        .unwrap();
    assert_eq!(push[0], "message", "{push:?}");
    let (header, _) = push[2].split_once('\n').unwrap();
    let mut parts = header.split(' ');
    let (from, epoch, seq) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap().parse::<u64>().unwrap(),
    );
    assert_eq!(from, "n1");

    // A frame of n1's, numbered as if five had been lost before it.
    let forged = format!(
        "n1 {epoch} {}\n{}",
        seq + 6,
        serde_json::to_string(&candidate(id, 2)).unwrap()
    );
    let mut publisher = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    publisher
        .write_all(&resp(&["PUBLISH", "wspd:localhost:to:n2", &forged]))
        .await
        .unwrap();

    // Both sides hear the call end, with the reason.
    for (who, c) in [("bob", &mut bob), ("alice", &mut alice)] {
        let f = c.expect_bye(503).await;
        assert_eq!(
            f[1]["description"], "Messages between this domain's servers were lost",
            "{who}: {f}"
        );
        assert_eq!(f[2]["call"], id, "{who}: {f}");
    }
    wait_metric(&n2, "wspd_cluster_gaps_total", 1.0).await;
    for n in [&n1, &n2] {
        wait_metric(n, "wspd_calls_active", 0.0).await;
    }

    // The two nodes still carry calls between them.
    let id = "gap-call-02";
    answered_call(&mut alice, &mut bob, "alice@localhost", "bob@localhost", id).await;
    bob.send(candidate(id, 3)).await;
    alice.expect("icecandidate").await;

    // Every log line says which node wrote it; the gap is logged on n2.
    for (name, n) in [("n1", &n1), ("n2", &n2)] {
        let lines = n.stderr();
        assert!(!lines.is_empty());
        for l in &lines {
            assert!(l.starts_with(&format!("node={name} ")), "{l}");
        }
    }
    assert!(
        n2.stderr()
            .iter()
            .any(|l| l.contains("frames from another node were lost")),
        "{:?}",
        n2.stderr()
    );
}
