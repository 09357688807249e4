//! Faults around the server: DNS down or slow, a peer with a certificate
//! that must be refused, a token expiring under an open socket, the
//! process restarted. Each ends with the documented answer, in bounded
//! time, and everything else keeps working meanwhile.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

/// A client whose frames are read per call: frames of other calls that
/// arrive first are kept, in order, for when they are asked for.
struct ByCall {
    c: Client,
    held: Vec<Value>,
}

impl ByCall {
    fn new(c: Client) -> Self {
        ByCall {
            c,
            held: Vec::new(),
        }
    }

    async fn send(&mut self, v: Value) {
        self.c.send(v).await;
    }

    /// The next frame of `call` (each bounded by [`WAIT`]).
    async fn next_of(&mut self, call: &str) -> Value {
        if let Some(i) = self.held.iter().position(|f| f[2]["call"] == call) {
            return self.held.remove(i);
        }
        loop {
            let f = self.c.recv().await;
            if f[2]["call"] == call {
                return f;
            }
            self.held.push(f);
        }
    }

    async fn expect_of(&mut self, call: &str, keyword: &str) -> Value {
        let f = self.next_of(call).await;
        assert_eq!(f[0], keyword, "expected {keyword} for {call}, got {f}");
        f
    }

    /// Nothing held, nothing queued.
    async fn expect_nothing(&mut self) {
        assert!(self.held.is_empty(), "unexpected frames: {:?}", self.held);
        self.c.expect_nothing().await;
    }
}

/// A whole call from `a` (a [`ByCall`]) to `b`, to both byes 101.
async fn local_call(a: &mut ByCall, b: &mut Client, caller: &str, callee: &str, id: &str) {
    a.send(invite(caller, callee, id)).await;
    let inv = b.expect("invite").await;
    assert_eq!(inv[2]["call"], id);
    b.send(ringing(id)).await;
    a.expect_of(id, "ringing").await;
    b.send(offer(id)).await;
    assert_eq!(a.next_of(id).await, offer(id));
    a.send(answer(id)).await;
    assert_eq!(b.expect("answer").await, answer(id));
    for n in 0..4 {
        a.send(candidate(id, n)).await;
        b.send(candidate(id, 100 + n)).await;
    }
    for n in 0..4 {
        assert_eq!(b.expect("icecandidate").await, candidate(id, n));
        assert_eq!(a.next_of(id).await, candidate(id, 100 + n));
    }
    a.send(bye(id, 101)).await;
    b.expect_bye(101).await;
    b.send(bye(id, 101)).await;
    assert_eq!(a.expect_of(id, "bye").await[1]["code"], 101);
}

/// What a failing lookup looked like from alice's socket.
struct Lookup {
    /// The bye that ended the remote call.
    bye: Value,
    /// From the remote invite to that bye.
    waited: Duration,
    /// From the remote invite to the end of the local call placed after it.
    local_done: Duration,
}

/// Alice (a.test) calls bob@b.test, whose lookup cannot succeed; while it
/// is pending she places a whole local call on the same socket and the
/// server answers `/metrics`. Returns when the remote call has ended.
async fn remote_call_during_a_failing_lookup(a: &TestServer, tag: &str) -> Lookup {
    let mut alice = ByCall::new(a.connect_online("alice@a.test").await);
    let mut carol = a.connect_online("carol@a.test").await;
    let remote = format!("{tag}-remote");
    let local = format!("{tag}-local");
    let t0 = Instant::now();
    alice
        .send(invite("alice@a.test", "bob@b.test", &remote))
        .await;
    local_call(
        &mut alice,
        &mut carol,
        "alice@a.test",
        "carol@a.test",
        &local,
    )
    .await;
    let local_done = t0.elapsed();
    // The server answers everyone meanwhile, and holds the pending call.
    assert_eq!(a.metric("wspd_calls_active").await, 1.0);
    let bye = alice.expect_of(&remote, "bye").await;
    let waited = t0.elapsed();
    println!("{tag}: local call done after {local_done:?}, remote bye {bye} after {waited:?}");
    assert!(
        local_done < waited,
        "the local call ({local_done:?}) ran while the lookup was pending ({waited:?})"
    );
    alice.expect_nothing().await;
    carol.expect_nothing().await;
    assert_eq!(a.metric("wspd_calls_active").await, 0.0);
    Lookup {
        bye,
        waited,
        local_done,
    }
}

/// How much later than its timeout a timer may fire on a busy machine
/// running a debug build.
const SLACK: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn a_silent_dns_server_gives_504_within_the_lookup_timeout() {
    let net = Net::new("fault-dns-silent").await;
    let a = TestServer::start(net.config_dns("a.test", "a.test", net.dns.addr, "1s", "")).await;
    net.dns.set_silent(true);
    let r = remote_call_during_a_failing_lookup(&a, "dns-silent").await;
    assert_eq!(r.bye[1]["code"], 504, "{}", r.bye);
    assert_eq!(
        r.bye[1]["description"],
        "The callee's domain could not be resolved in time"
    );
    assert!(r.waited <= Duration::from_secs(1) + SLACK, "{:?}", r.waited);
    assert!(r.local_done < r.waited);
    assert!(net.dns.queries() >= 1, "the DNS server was asked");
    let m = a.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_dns_lookups_total{result=\"timeout\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "wspd_link_failures_total{reason=\"dns\"}"),
        1.0
    );

    // The failure is remembered: the next call to b.test is answered at
    // once, without another wait.
    let mut dave = a.connect_online("dave@a.test").await;
    let t = Instant::now();
    dave.send(invite("dave@a.test", "bob@b.test", "dns-silent-again"))
        .await;
    dave.expect_bye(504).await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    // A server stopped while a lookup hangs does not wait for it: the
    // caller hears 503 and the server is gone well before the lookup's
    // 10 s timeout.
    let a2 = TestServer::start(net.config_dns("a.test", "a.test", net.dns.addr, "10s", "")).await;
    let mut erin = a2.connect_online("erin@a.test").await;
    let asked = net.dns.queries();
    erin.send(invite("erin@a.test", "bob@b.test", "dns-silent-stop"))
        .await;
    let t = Instant::now();
    while net.dns.queries() == asked {
        assert!(
            t.elapsed() < WAIT,
            "the lookup never reached the DNS server"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    let running = a2.running;
    running.drain.start();
    erin.expect_bye(503).await;
    assert_eq!(erin.expect_close().await.code, 1001);
    tokio::time::timeout(Duration::from_secs(5), running.handle)
        .await
        .expect("the server stops without waiting for the lookup")
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    tokio::time::timeout(WAIT, a.stop())
        .await
        .expect("the first server stops too");
}

#[tokio::test]
async fn a_resolver_address_where_nothing_listens_gives_504_within_the_lookup_timeout() {
    let net = Net::new("fault-dns-nothing").await;
    // A port of 127.0.0.1 free for both UDP and TCP, then closed again.
    // The UDP port the kernel picks may still be held for TCP (a socket of
    // an earlier run closing): pick again until both are free.
    let nowhere = (0..100)
        .find_map(|_| {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = udp.local_addr().unwrap();
            std::net::TcpListener::bind(addr).ok().map(|_| addr)
        })
        .expect("a port of 127.0.0.1 free for both UDP and TCP");
    let a = TestServer::start(net.config_dns("a.test", "a.test", nowhere, "1s", "")).await;
    let r = remote_call_during_a_failing_lookup(&a, "dns-nothing").await;
    assert_eq!(r.bye[1]["code"], 504, "{}", r.bye);
    assert!(r.waited <= Duration::from_secs(1) + SLACK, "{:?}", r.waited);
    let m = a.metrics().await;
    // Refused (ICMP port unreachable) or timed out, depending on how the
    // resolver reads the silence: either way a transient DNS failure.
    let failed = metric_value(&m, "wspd_dns_lookups_total{result=\"timeout\"}")
        + metric_value(&m, "wspd_dns_lookups_total{result=\"error\"}");
    assert_eq!(failed, 1.0, "{m}");
    assert_eq!(
        metric_value(&m, "wspd_link_failures_total{reason=\"dns\"}"),
        1.0
    );
    tokio::time::timeout(WAIT, a.stop())
        .await
        .expect("the server stops");
}

#[tokio::test]
async fn an_unknown_domain_gives_604_at_once() {
    let net = Net::new("fault-nxdomain").await;
    // A long lookup timeout: the answer must come from the NXDOMAIN, not
    // from the timer.
    let a = TestServer::start(net.config_dns("a.test", "a.test", net.dns.addr, "10s", "")).await;
    let mut alice = a.connect_online("alice@a.test").await;
    let t = Instant::now();
    alice
        .send(invite("alice@a.test", "zed@nowhere.test", "nxdomain-1"))
        .await;
    let f = alice.expect_bye(604).await;
    let took = t.elapsed();
    println!("604 after {took:?}");
    assert_eq!(f[2]["call"], "nxdomain-1");
    assert_eq!(
        f[1]["description"],
        "The callee's domain has no WSP service"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Asked for the SRV record, then for the domain's own addresses.
    let asked = net.dns.asked();
    assert!(
        asked.contains(&"_wsp._tcp.nowhere.test. SRV".to_string()),
        "{asked:?}"
    );
    alice.expect_nothing().await;
    let m = a.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_dns_lookups_total{result=\"no_service\"}"),
        1.0
    );
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
}

/// a.test calls bob@b.test, where b.test's server presents `cert`: the
/// call ends with 502 before any link exists; the reason is logged (with
/// `why` in the line) and counted.
async fn certificate_refused(tag: &str, cert: &str, why: &str) {
    let (logs, _guard) = Logs::capture();
    let net = Net::new(tag).await;
    let a = net.server("a.test", "").await;
    let b = TestServer::start(net.config("b.test", cert, "")).await;
    net.publish("b.test", "b.test", b.addr());
    let mut alice = a.connect_online("alice@a.test").await;
    let id = format!("{tag}-1");
    alice.send(invite("alice@a.test", "bob@b.test", &id)).await;
    let f = alice.expect_bye(502).await;
    assert_eq!(f[2]["call"], id.as_str());
    assert_eq!(
        f[1]["description"],
        "The callee's server has no valid certificate for its domain"
    );
    alice.expect_nothing().await;

    let m = a.metrics().await;
    assert_eq!(
        metric_value(&m, "wspd_link_failures_total{reason=\"tls\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "wspd_link_attempts_total{result=\"tls\"}"),
        1.0
    );
    assert_eq!(metric_value(&m, "wspd_links{direction=\"out\"}"), 0.0);
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
    // Nothing reached b.test's router. (Read in-process: its certificate
    // is the one nobody accepts.)
    let mb = b.running.app.metrics.render();
    assert_eq!(metric_value(&mb, "wspd_links{direction=\"in\"}"), 0.0);
    assert_eq!(
        metric_value(&mb, "wspd_frames_total{keyword=\"invite\"}"),
        0.0
    );

    let lines = logs.lines_with(&[
        "WARN",
        "link to b.test failed",
        "reason=\"tls\"",
        "code=502",
    ]);
    assert_eq!(lines.len(), 1, "one line per attempt:\n{}", logs.text());
    assert!(lines[0].contains(why), "{}", lines[0]);
    println!("{}", lines[0]);
}

/// b.test serves a certificate for b.test from a CA nobody trusts.
#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    certificate_refused("fault-unknown-ca", "unknown-ca.b.test", "UnknownIssuer").await;
}

/// b.test serves a certificate for b.test from the trusted CA, expired.
#[tokio::test]
async fn an_expired_certificate_is_refused() {
    certificate_refused("fault-expired", "expired.b.test", "expired").await;
}

/// The server checks tokens at the upgrade only: a socket outlives its
/// token (its calls, new calls both ways), a new socket with it does not.
#[tokio::test]
async fn a_token_expiring_under_an_open_socket() {
    let s = TestServer::localhost().await;
    let user = wspd::address::Address::parse("alice@localhost").unwrap();
    let (short, exp) = s.running.app.tokens.mint(&user, Duration::from_secs(1));
    let mut alice = ByCall::new(Client::connect(&s.url(), &short).await);
    alice.expect_nothing().await;
    let mut bob = s.connect_online("bob@localhost").await;

    // A call answered while the token is valid.
    let id = "before-expiry";
    alice
        .send(invite("alice@localhost", "bob@localhost", id))
        .await;
    bob.expect("invite").await;
    bob.send(ringing(id)).await;
    alice.expect_of(id, "ringing").await;
    bob.send(offer(id)).await;
    alice.expect_of(id, "offer").await;
    alice.send(answer(id)).await;
    bob.expect("answer").await;

    // Wait until the server refuses the token (5 s of leeway, wall-clock
    // time): polled, bounded.
    let t = Instant::now();
    loop {
        let (status, _, body) = http(
            s.addr(),
            "GET",
            &format!("/session?access_token={short}"),
            &[],
            "",
        )
        .await;
        if status == 401 {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"], "token-expired", "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the token (exp {exp}) is still accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("token refused after {:?}", t.elapsed());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now > exp, "refused only once expired");

    // The call goes on to its transfer.
    for n in 0..4 {
        alice.send(candidate(id, n)).await;
        bob.send(candidate(id, 100 + n)).await;
    }
    for n in 0..4 {
        assert_eq!(bob.expect("icecandidate").await, candidate(id, n));
        assert_eq!(alice.next_of(id).await, candidate(id, 100 + n));
    }
    alice.send(bye(id, 101)).await;
    bob.expect_bye(101).await;
    bob.send(bye(id, 101)).await;
    alice.expect_of(id, "bye").await;

    // The socket places new calls and is called.
    local_call(
        &mut alice,
        &mut bob,
        "alice@localhost",
        "bob@localhost",
        "after-expiry-out",
    )
    .await;
    let id = "after-expiry-in";
    bob.send(invite("bob@localhost", "alice@localhost", id))
        .await;
    let inv = alice.expect_of(id, "invite").await;
    assert_eq!(inv[1]["caller"]["uri"], "bob@localhost");
    alice.send(ringing(id)).await;
    bob.expect("ringing").await;
    alice.send(bye(id, 603)).await;
    bob.expect_bye(603).await;

    // A new socket with the same token is refused.
    let (status, body) = try_connect(&s.url(), &short).await.err().unwrap();
    assert_eq!(status, 401, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "token-expired");
    // The old one is still served; the server never counted it twice.
    alice.expect_nothing().await;
    bob.expect_nothing().await;
    assert_eq!(s.metric("wspd_sessions").await, 2.0);
    assert_eq!(s.metric("wspd_calls_active").await, 0.0);
    assert_eq!(s.calls_ended("transferred").await, 2.0);
}

/// The real process: SIGTERM with calls up, then started again on the
/// same port; the clients reconnect and call.
#[tokio::test]
async fn the_process_restarted_under_live_calls() {
    let dir = temp_dir("fault-restart");
    let limits = "[limits]\nshutdown_grace = \"3s\"\n";
    let first = config_file(&dir, "first.toml", "127.0.0.1:0", limits);
    let mut w = Wspd::start(&first, "info").await;
    let url = w.url();
    let token = |u: &str| user_token(u);
    let mut alice = Client::connect(&url, &token("alice@localhost")).await;
    let mut bob = Client::connect(&url, &token("bob@localhost")).await;
    let mut carol = Client::connect(&url, &token("carol@localhost")).await;
    let mut dave = Client::connect(&url, &token("dave@localhost")).await;
    for c in [&mut alice, &mut bob, &mut carol, &mut dave] {
        c.expect_nothing().await;
    }
    // Answered, ringing, and transferred calls.
    answered_call(
        &mut alice,
        &mut bob,
        "alice@localhost",
        "bob@localhost",
        "restart-answered",
    )
    .await;
    carol
        .send(invite(
            "carol@localhost",
            "dave@localhost",
            "restart-ringing",
        ))
        .await;
    dave.expect("invite").await;
    bob.send(invite("bob@localhost", "carol@localhost", "restart-moved"))
        .await;
    carol.expect("invite").await;
    carol.send(offer("restart-moved")).await;
    bob.expect("offer").await;
    bob.send(bye("restart-moved", 101)).await;
    carol.expect_bye(101).await;
    carol.send(bye("restart-moved", 101)).await;
    bob.expect_bye(101).await;
    let m = w.metrics().await;
    assert_eq!(metric_value(&m, "wspd_calls_active"), 2.0);

    let t = Instant::now();
    w.signal("TERM");
    for (c, call) in [
        (&mut alice, "restart-answered"),
        (&mut bob, "restart-answered"),
        (&mut carol, "restart-ringing"),
        (&mut dave, "restart-ringing"),
    ] {
        let f = c.expect_bye(503).await;
        assert_eq!(f[2]["call"], call);
        assert_eq!(f[1]["description"], "Server shutting down");
        // Then the close: nothing else, nothing for the transferred call.
        let closed = c.expect_close().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (1001, "server shutting down")
        );
        // Answer the close (tungstenite queued the answer when it read it).
        let _ = futures_util::SinkExt::flush(&mut c.ws).await;
    }
    let status = w.wait().await;
    assert!(status.success(), "{status}");
    println!("stopped after {:?}", t.elapsed());
    // The clients answered the close at once: the server did not need
    // its 2 s wait for them, let alone the 3 s grace.
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(
        w.stderr().iter().any(|l| l.contains("signal received")),
        "{:?}",
        w.stderr()
    );

    // While it is down, a client's reconnect finds nothing.
    let (status, e) = try_connect(&url, &token("alice@localhost"))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 0, "no HTTP answer: {e}");

    // Started again on the same port: the clients reconnect with the
    // tokens they have, on new sockets, and call.
    let second = config_file(&dir, "second.toml", &w.addr.to_string(), limits);
    let w2 = Wspd::start(&second, "info").await;
    assert_eq!(w2.addr, w.addr);
    let mut alice = Client::connect(&url, &token("alice@localhost")).await;
    let mut bob = Client::connect(&url, &token("bob@localhost")).await;
    alice.expect_nothing().await;
    bob.expect_nothing().await;
    let id = "after-restart";
    answered_call(&mut alice, &mut bob, "alice@localhost", "bob@localhost", id).await;
    for n in 0..4 {
        alice.send(candidate(id, n)).await;
        assert_eq!(bob.expect("icecandidate").await, candidate(id, n));
    }
    alice.send(bye(id, 101)).await;
    bob.expect_bye(101).await;
    bob.send(bye(id, 101)).await;
    alice.expect_bye(101).await;
    alice.expect_nothing().await;
    bob.expect_nothing().await;
    let m = w2.metrics().await;
    assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
    assert_eq!(metric_value(&m, "wspd_sessions"), 2.0);
    assert_eq!(
        metric_value(&m, "wspd_calls_total{outcome=\"transferred\"}"),
        1.0
    );
}

/// A client whose connection ends without a close frame (a tab killed, a
/// network lost) is not a protocol error: its peer hears 410, the server
/// does not try to answer it with a close, and nothing is counted as a
/// refusal. A flood is counted as the limit it hit, not as a bad frame.
#[tokio::test]
async fn abrupt_disconnects_and_floods_are_counted_for_what_they_are() {
    let (logs, _guard) = Logs::capture();
    let s = TestServer::start(config(
        "localhost",
        "[limits]\nframes_per_second = 5\nframe_burst = 10\n",
    ))
    .await;
    let mut alice = s.connect_online("alice@localhost").await;
    let mut bob = s.connect_online("bob@localhost").await;
    answered_call(
        &mut alice,
        &mut bob,
        "alice@localhost",
        "bob@localhost",
        "abrupt-1",
    )
    .await;
    drop(bob); // the TCP connection closes, no close frame
    let f = alice.expect_bye(410).await;
    assert_eq!(f[2]["call"], "abrupt-1");
    s.wait_sessions(1).await;

    let mut mallory = s.connect_online("mallory@localhost").await;
    for n in 0..20 {
        mallory
            .send(serde_json::json!(["ringing", null, {"call": format!("flood-{n:04}")}]))
            .await;
    }
    let closed = loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut mallory.ws))
            .await
            .unwrap()
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_))) => {}
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(c)))) => break c,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(u16::from(closed.code), 1008);
    alice.expect_nothing().await;

    let m = s.metrics().await;
    let refused: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("wspd_refusals_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(
        metric_value(&m, "wspd_limits_hit_total{limit=\"frames_per_second\"}"),
        1.0
    );
    assert_eq!(metric_value(&m, "wspd_calls_total{outcome=\"gone\"}"), 1.0);
    assert!(
        logs.lines_with(&["user=bob@localhost", "code=1002"])
            .is_empty(),
        "{}",
        logs.text()
    );
    assert_eq!(
        logs.lines_with(&[
            "user=bob@localhost",
            "connection ended without a close frame"
        ])
        .len(),
        1,
        "{}",
        logs.text()
    );
}
