//! A bounded load-and-fault soak against the real binary (a child process,
//! so its memory can be read from /proc): rounds of many sockets placing
//! whole calls while others send garbage, flood, or drop their TCP
//! connection mid-call. After each round: every well-behaved call
//! completed with every frame once and in order, every fault got its
//! documented answer, no call or socket leaked, and memory does not grow
//! from round to round.

use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Caller/callee pairs placing calls back to back, in each round.
const PAIRS: usize = 40;
/// Whole calls each pair places in a round.
const CALLS: usize = 16;
/// Candidates each side sends in each call.
const CANDIDATES: usize = 8;
/// Pairs whose call ends with one side's TCP connection dropped.
const DROPPERS: usize = 12;
/// Pairs whose call ends with one side sending garbage.
const GARBAGE_MID_CALL: usize = 4;
/// Sockets that send one malformed message.
const GARBAGE: usize = 10;
/// Sockets that send frames faster than allowed.
const FLOODERS: usize = 4;
/// Frames a flooder sends at most.
const FLOOD: usize = 1000;
/// Sockets open from start to end, probed after each round.
const IDLE: usize = 5;
const ROUNDS: usize = 5;

/// Frames a socket may send at once. A well-behaved socket of this test
/// sends 2 probes and 11 frames per call: 178, under the burst whatever
/// the machine's speed; a flooder's 1000 are far over it.
const FRAMES_PER_SECOND: u32 = 100;
const FRAME_BURST: u32 = 200;
const MAX_FRAME_BYTES: usize = 65536;

fn user(kind: &str, round: usize, i: usize) -> String {
    format!("{kind}-r{round}-{i}@localhost")
}

async fn connect(url: &str, user: &str) -> Client {
    Client::connect(url, &user_token(user)).await
}

/// Reads the close frame and answers it, as a browser does.
async fn closed_with(c: &mut Client) -> Closed {
    let closed = c.expect_close().await;
    let _ = c.ws.flush().await;
    closed
}

/// One caller/callee pair placing `CALLS` whole calls back to back, each
/// frame checked as it arrives: exactly the frames sent, in order, and
/// nothing else (probed at the end). Returns the calls completed.
async fn well_behaved_pair(url: String, round: usize, i: usize) -> usize {
    let (caller, callee) = (user("caller", round, i), user("callee", round, i));
    let mut x = connect(&url, &caller).await;
    let mut y = connect(&url, &callee).await;
    x.expect_nothing().await;
    y.expect_nothing().await;
    for k in 0..CALLS {
        let id = format!("soak-r{round}-p{i}-c{k}");
        let inv = invite(&caller, &callee, &id);
        x.send(inv.clone()).await;
        assert_eq!(untraced(y.recv().await), inv);
        y.send(ringing(&id)).await;
        assert_eq!(x.recv().await, ringing(&id));
        y.send(offer(&id)).await;
        assert_eq!(x.recv().await, offer(&id));
        x.send(answer(&id)).await;
        assert_eq!(y.recv().await, answer(&id));
        for n in 0..CANDIDATES {
            x.send(candidate(&id, n)).await;
            y.send(candidate(&id, 100 + n)).await;
        }
        for n in 0..CANDIDATES {
            assert_eq!(y.recv().await, candidate(&id, n));
            assert_eq!(x.recv().await, candidate(&id, 100 + n));
        }
        x.send(bye(&id, 101)).await;
        y.send(bye(&id, 101)).await;
        assert_eq!(y.recv().await, bye(&id, 101));
        assert_eq!(x.recv().await, bye(&id, 101));
    }
    x.expect_nothing().await;
    y.expect_nothing().await;
    x.close().await;
    y.close().await;
    CALLS
}

/// The callee's offer and the caller's answer, then 4 candidates each way.
async fn answered(x: &mut Client, y: &mut Client, id: &str) {
    y.send(offer(id)).await;
    x.expect("offer").await;
    x.send(answer(id)).await;
    y.expect("answer").await;
    for n in 0..4 {
        x.send(candidate(id, n)).await;
        y.send(candidate(id, 100 + n)).await;
    }
    for n in 0..4 {
        assert_eq!(y.recv().await, candidate(id, n));
        assert_eq!(x.recv().await, candidate(id, 100 + n));
    }
}

/// A pair whose call ends with one side dropping its TCP connection
/// without a close frame, at one of four moments; the other side must
/// hear 410 and nothing else.
async fn dropper_pair(url: String, round: usize, j: usize) {
    let (caller, callee) = (user("dcaller", round, j), user("dcallee", round, j));
    let mut x = connect(&url, &caller).await;
    let mut y = connect(&url, &callee).await;
    x.expect_nothing().await;
    y.expect_nothing().await;
    let id = format!("drop-r{round}-{j}");
    x.send(invite(&caller, &callee, &id)).await;
    y.expect("invite").await;
    y.send(ringing(&id)).await;
    x.expect("ringing").await;
    let mut survivor = match j % 4 {
        // Ringing: the callee's device goes away.
        0 => {
            drop(y);
            x
        }
        // Ringing: the caller goes away.
        1 => {
            drop(x);
            y
        }
        // Answered: the callee goes away.
        2 => {
            answered(&mut x, &mut y, &id).await;
            drop(y);
            x
        }
        // The callee has transferred (101), the caller has not and goes
        // away: the transferred side, still connected, hears 410.
        _ => {
            answered(&mut x, &mut y, &id).await;
            y.send(bye(&id, 101)).await;
            x.expect_bye(101).await;
            drop(x);
            y
        }
    };
    let f = survivor.expect_bye(410).await;
    assert_eq!(f[2]["call"], id.as_str(), "{f}");
    survivor.expect_nothing().await;
    survivor.close().await;
}

/// A pair whose answered call ends with one side sending text that is
/// not JSON: that socket is closed with 1007, the other hears 410.
async fn garbage_mid_call(url: String, round: usize, j: usize) {
    let (caller, callee) = (user("gcaller", round, j), user("gcallee", round, j));
    let mut x = connect(&url, &caller).await;
    let mut y = connect(&url, &callee).await;
    x.expect_nothing().await;
    y.expect_nothing().await;
    let id = format!("garbage-r{round}-{j}");
    answered_call(&mut x, &mut y, &caller, &callee, &id).await;
    let (mut bad, mut good) = if j.is_multiple_of(2) { (x, y) } else { (y, x) };
    bad.send_text("{\"not\": json").await;
    assert_eq!(closed_with(&mut bad).await.code, 1007);
    let f = good.expect_bye(410).await;
    assert_eq!(f[2]["call"], id.as_str());
    good.expect_nothing().await;
    good.close().await;
}

/// One malformed message of kind `j % 5`; the socket is closed with the
/// documented code.
async fn garbage(url: String, round: usize, j: usize) {
    let mut c = connect(&url, &user("garbage", round, j)).await;
    c.expect_nothing().await;
    let code = match j % 5 {
        0 => {
            c.send_text("[\"invite\", {").await;
            1007
        }
        1 => {
            c.send(json!(["hello", null, null])).await;
            1002
        }
        2 => {
            c.ws.send(Message::Binary(vec![0u8; 64].into()))
                .await
                .unwrap();
            1003
        }
        3 => {
            let sdp = "a".repeat(MAX_FRAME_BYTES + 1024);
            c.send(json!(["offer", {"type": "offer", "sdp": sdp}, {"call": "too-big-1"}]))
                .await;
            1009
        }
        _ => {
            c.send(json!(["offer", {"type": "offer"}, {"call": "no-sdp-call"}]))
                .await;
            1002
        }
    };
    let closed = closed_with(&mut c).await;
    assert_eq!(closed.code, code, "kind {}: {closed:?}", j % 5);
}

/// Sends up to `FLOOD` frames as fast as it can without reading, then
/// reads: the answers to the first frames (481), then close 1008.
/// Returns how many frames were answered.
async fn flooder(url: String, round: usize, j: usize) -> usize {
    let mut c = connect(&url, &user("flood", round, j)).await;
    let t = Instant::now();
    let mut sent = 0;
    for n in 0..FLOOD {
        let f = json!(["ringing", null, {"call": format!("flood-{n:06}")}]);
        if c.ws
            .send(Message::Text(f.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    let took = t.elapsed();
    // Faster than the rate allows: more than the burst plus what the rate
    // refilled meanwhile.
    assert!(
        sent as f64 > f64::from(FRAME_BURST) + took.as_secs_f64() * f64::from(FRAMES_PER_SECOND),
        "{sent} frames in {took:?} is not a flood"
    );
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    let close = loop {
        match tokio::time::timeout_at(deadline, c.ws.next())
            .await
            .expect("the flooder is closed in time")
        {
            Some(Ok(Message::Text(t))) => {
                assert!(t.as_str().contains("481"), "{t}");
                answered += 1;
            }
            Some(Ok(Message::Close(Some(f)))) => break f,
            other => panic!("flooder: unexpected {other:?}"),
        }
    };
    let _ = c.ws.flush().await;
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("too many frames"), "{}", close.reason);
    assert!(answered < sent, "{answered} of {sent} answered");
    answered
}

/// The server's figures once a round has settled.
#[derive(Debug, Clone, Copy)]
struct Settled {
    rss_kib: u64,
    fds: usize,
}

/// Waits (polling, bounded) until the server holds no call and counts only
/// the idle sockets, and its descriptors are back to `fds`.
async fn settle(w: &Wspd, fds: Option<usize>) -> (Settled, String) {
    let start = Instant::now();
    loop {
        let m = w.metrics().await;
        let sessions = metric_value(&m, "wspd_sessions");
        let calls = metric_value(&m, "wspd_calls_active");
        let open = w.open_fds();
        if sessions == IDLE as f64 && calls == 0.0 && fds.is_none_or(|f| open == f) {
            let s = Settled {
                rss_kib: w.rss_kib(),
                fds: open,
            };
            return (s, m);
        }
        assert!(
            start.elapsed() < WAIT,
            "not settled: {sessions} sockets (want {IDLE}), {calls} calls, {open} descriptors (want {fds:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How much a counter of `after` grew since `before`.
fn grew(before: &str, after: &str, name: &str) -> f64 {
    metric_value(after, name) - metric_value(before, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_under_garbage_floods_and_drops() {
    let test_start = Instant::now();
    let dir = temp_dir("soak");
    let cfg = config_file(
        &dir,
        "soak.toml",
        "127.0.0.1:0",
        &format!(
            "[limits]\nframes_per_second = {FRAMES_PER_SECOND}\nframe_burst = {FRAME_BURST}\n\
             max_frame_bytes = {MAX_FRAME_BYTES}\n\
             # every socket of the test comes from 127.0.0.1\nconnections_per_ip = 1000\n"
        ),
    );
    let mut w = Wspd::start(&cfg, "info").await;
    let url = w.url();

    let mut idle = Vec::new();
    for i in 0..IDLE {
        let mut c = connect(&url, &user("idle", 0, i)).await;
        c.expect_nothing().await;
        idle.push(c);
    }
    let (start, mut before) = settle(&w, None).await;
    println!(
        "start: RSS {} KiB, {} descriptors, {IDLE} idle sockets",
        start.rss_kib, start.fds
    );

    let mut after_round = Vec::new();
    for round in 1..=ROUNDS {
        let t = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        let mut faults = tokio::task::JoinSet::new();
        let mut floods = tokio::task::JoinSet::new();
        for i in 0..PAIRS {
            calls.spawn(well_behaved_pair(url.clone(), round, i));
        }
        for j in 0..DROPPERS {
            faults.spawn(dropper_pair(url.clone(), round, j));
        }
        for j in 0..GARBAGE_MID_CALL {
            faults.spawn(garbage_mid_call(url.clone(), round, j));
        }
        for j in 0..GARBAGE {
            faults.spawn(garbage(url.clone(), round, j));
        }
        for j in 0..FLOODERS {
            floods.spawn(flooder(url.clone(), round, j));
        }
        let mut completed = 0;
        while let Some(r) = calls.join_next().await {
            completed += r.unwrap();
        }
        while let Some(r) = faults.join_next().await {
            r.unwrap();
        }
        let mut answered = Vec::new();
        while let Some(r) = floods.join_next().await {
            answered.push(r.unwrap());
        }
        let load = t.elapsed();
        assert_eq!(
            completed,
            PAIRS * CALLS,
            "every well-behaved call completed"
        );
        for c in &mut idle {
            c.expect_nothing().await;
        }

        let (settled, m) = settle(&w, Some(start.fds)).await;
        println!(
            "round {round}: {completed} calls in {load:?}, flooders answered {answered:?} frames; \
             settled after {:?}: RSS {} KiB, {} descriptors",
            t.elapsed() - load,
            settled.rss_kib,
            settled.fds
        );
        let count = |name: &str| grew(&before, &m, name);
        assert_eq!(
            count("wspd_calls_total{outcome=\"transferred\"}"),
            (PAIRS * CALLS) as f64
        );
        assert_eq!(
            count("wspd_calls_total{outcome=\"gone\"}"),
            (DROPPERS + GARBAGE_MID_CALL) as f64,
            "{m}"
        );
        assert_eq!(
            count("wspd_limits_hit_total{limit=\"frames_per_second\"}"),
            FLOODERS as f64
        );
        let kinds = |k: usize| (0..GARBAGE).filter(|j| j % 5 == k).count() as f64;
        assert_eq!(
            count("wspd_refusals_total{reason=\"bad_json\"}"),
            kinds(0) + GARBAGE_MID_CALL as f64
        );
        // Dropped connections are not bad frames: only the garbage counts.
        assert_eq!(
            count("wspd_refusals_total{reason=\"bad_frame\"}"),
            kinds(1) + kinds(4),
            "the server's closes for bad frames:\n{}",
            w.stderr()
                .iter()
                .filter(|l| l.contains("code=1002") || l.contains("code=1008"))
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert_eq!(count("wspd_refusals_total{reason=\"binary\"}"), kinds(2));
        assert_eq!(count("wspd_refusals_total{reason=\"too_big\"}"), kinds(3));
        after_round.push(settled);
        before = m;
    }

    // Memory. Freed memory is not all handed back to the system: glibc's
    // malloc keeps an arena per runtime thread for reuse, and tokio keeps
    // the slab pages of its I/O driver once it has needed them. So RSS
    // after the first round settles some 2.5 MiB above the idle start
    // (18.6 -> 21.1 MiB, debug build, 2 cores), then creeps up, by
    // 100-300 KiB a round at first and less later: a run of 15 rounds
    // went from 21.0 to 22.8 MiB. That is the allocator, not a leak: with
    // MALLOC_ARENA_MAX=1 the same 15 rounds went 21.0, 21.2, 21.3, 21.5,
    // 21.5, 21.5, 21.5 MiB, then exactly 21.6 MiB for the last 8 rounds.
    // What must hold:
    // - it is back near the start (8 MiB: over twice what was measured);
    // - later rounds, each opening and closing as many sockets and calls
    //   as the first, do not keep growing it: rounds 3 to 5 stay within
    //   1.5 MiB of round 2 (measured: at most 0.6 MiB), so a leak of some
    //   800 bytes a call (3 * 656 calls), or 4 KiB a socket (3 * 126
    //   sockets), fails here.
    let rss: Vec<u64> = after_round.iter().map(|s| s.rss_kib).collect();
    let peak = w.status_kib("VmHWM");
    println!(
        "RSS KiB: start {}, after each round {rss:?}, peak {peak}; took {:?} in all",
        start.rss_kib,
        test_start.elapsed()
    );
    let last = rss[ROUNDS - 1];
    assert!(
        last <= start.rss_kib + 8 * 1024,
        "RSS {last} KiB, more than 8 MiB over the start's {} KiB",
        start.rss_kib
    );
    for (n, r) in rss.iter().enumerate().skip(2) {
        assert!(
            *r <= rss[1] + 1536,
            "RSS grows round after round: {r} KiB after round {}, {} KiB after round 2",
            n + 1,
            rss[1]
        );
    }

    for c in idle {
        c.close().await;
    }
    let t = Instant::now();
    loop {
        let m = w.metrics().await;
        if metric_value(&m, "wspd_sessions") == 0.0 {
            assert_eq!(metric_value(&m, "wspd_calls_active"), 0.0);
            break;
        }
        assert!(t.elapsed() < WAIT, "sockets still counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And it stops cleanly.
    w.signal("TERM");
    let status = w.wait().await;
    assert!(status.success(), "{status}");
    assert!(
        test_start.elapsed() < Duration::from_secs(60),
        "bounded: {:?}",
        test_start.elapsed()
    );
}
