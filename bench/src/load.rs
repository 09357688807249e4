//! The load: pairs of WebSocket clients placing realistic calls, idle
//! connections, and the check that every frame arrives exactly once and in
//! order.
//!
//! A pair is a caller's socket and a callee's socket driven by one task.
//! One call is 22 frames, 11 each way:
//!
//! ```text
//! caller (A)                                   callee (B)
//! invite ─────────────────────────────────────▶
//!        ◀───────────────────────────────────── ringing, offer (~2.5 KB SDP), 8 candidates
//! answer (~2.5 KB SDP), 8 candidates ─────────▶
//!   (after B's 8 candidates) bye 101 ─────────▶
//!        ◀───────────────────────────────────── bye 101 (after A's 8 candidates)
//! ```
//!
//! Each side knows the exact text of every frame the other sends (the
//! server relays content byte for byte and adds `{"call": id}`), so the
//! receiver checks each frame against the next one expected: a frame
//! missing, repeated, out of order or altered fails the run. Candidates
//! carry their sequence number in their foundation. After each phase every
//! socket sends a probe for a call that cannot exist and must get the
//! server's 481 for it as its very next frame: nothing stray was queued.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wspd::address::Address;
use wspd::auth::Tokens;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames one side sends in a call.
const SIDE_FRAMES: usize = 11;
/// Frames relayed per call, both ways.
pub const CALL_FRAMES: u64 = 2 * SIDE_FRAMES as u64;
/// Candidates each way.
const CANDIDATES: usize = 8;
/// The longest a call may take before its missing frame counts as lost.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A server the clients connect to.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub domain: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub tokens: Arc<Tokens>,
}

impl Target {
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "wss" } else { "ws" }
    }
}

/// Client-side buffers kept small: the bench holds tens of thousands of
/// sockets.
fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Opens an authenticated WSP socket for `user` on `target`.
pub async fn connect(target: &Target, user: &str) -> anyhow::Result<Ws> {
    let address = Address::parse(user).map_err(|e| anyhow!("{user}: {e}"))?;
    let (token, _) = target.tokens.mint(&address, Duration::from_secs(3600));
    let mut req = format!("{}://{}/wsp", target.scheme(), target.domain).into_client_request()?;
    let h = req.headers_mut();
    h.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("wsp-1.0"),
    );
    h.insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let tcp = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("connect {}", target.addr))?;
    tcp.set_nodelay(true)?;
    let stream = match &target.tls {
        None => MaybeTlsStream::Plain(tcp),
        Some(cfg) => {
            let name = ServerName::try_from(target.domain.clone())?;
            let tls = TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .context("TLS handshake")?;
            MaybeTlsStream::Rustls(tls)
        }
    };
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(client_ws_config()))
            .await
            .with_context(|| format!("upgrade for {user}"))?;
    Ok(ws)
}

/// The contents every call sends (the same for every call: the call id in
/// the options tells calls apart).
pub struct Script {
    offer: String,
    answer: String,
    a_candidates: Vec<String>,
    b_candidates: Vec<String>,
}

const BYE_101: &str = r#"{"code":101,"description":"Transferred"}"#;

impl Script {
    pub fn new() -> Script {
        let desc =
            |kind: &str, sdp: String| serde_json::json!({ "type": kind, "sdp": sdp }).to_string();
        let candidate = |side: u32, n: usize| {
            // The foundation carries the side and the sequence number.
            let foundation = side * 1000 + n as u32;
            serde_json::json!({
                "candidate": format!(
                    "candidate:{foundation} 1 udp 2122260223 192.168.{side}.{} {} typ host generation 0 ufrag Wb{side}c network-id 1 network-cost 10",
                    10 + n,
                    50000 + n
                ),
                "sdpMid": "0",
                "sdpMLineIndex": 0,
                "usernameFragment": format!("Wb{side}c"),
            })
            .to_string()
        };
        Script {
            offer: desc("offer", sdp("offer")),
            answer: desc("answer", sdp("answer")),
            a_candidates: (0..CANDIDATES).map(|n| candidate(1, n)).collect(),
            b_candidates: (0..CANDIDATES).map(|n| candidate(2, n)).collect(),
        }
    }

    pub fn offer_len(&self) -> usize {
        self.offer.len()
    }

    pub fn answer_len(&self) -> usize {
        self.answer.len()
    }

    /// Frame `i` the caller sends: (keyword, content).
    fn a_frame<'a>(&'a self, invite: &'a str, i: usize) -> (&'static str, &'a str) {
        match i {
            0 => ("invite", invite),
            1 => ("answer", &self.answer),
            10 => ("bye", BYE_101),
            n => ("icecandidate", &self.a_candidates[n - 2]),
        }
    }

    /// Frame `i` the callee sends.
    fn b_frame(&self, i: usize) -> (&'static str, &str) {
        match i {
            0 => ("ringing", "null"),
            1 => ("offer", &self.offer),
            10 => ("bye", BYE_101),
            n => ("icecandidate", &self.b_candidates[n - 2]),
        }
    }
}

/// A session description of about 2.5 KB, as a browser writes one for an
/// audio, video and data-channel call.
fn sdp(kind: &str) -> String {
    let setup = if kind == "offer" { "actpass" } else { "active" };
    let mut s = String::new();
    let mut l = |line: &str| {
        s.push_str(line);
        s.push_str("\r\n");
    };
    l("v=0");
    l("o=- 4611731400430051336 2 IN IP4 127.0.0.1");
    l("s=-");
    l("t=0 0");
    l("a=group:BUNDLE 0 1 2");
    l("a=extmap-allow-mixed");
    l("a=msid-semantic: WMS 9f3b6c1e-0f4d-4f0e-a5b2-7d1c2e3f4a5b");
    l("m=audio 9 UDP/TLS/RTP/SAVPF 111 9 0 8 13 110 126");
    l("c=IN IP4 0.0.0.0");
    l("a=rtcp:9 IN IP4 0.0.0.0");
    l("a=ice-ufrag:Wb7c");
    l("a=ice-pwd:9hOFmmMvVJNOQL5MbCcZbK1N");
    l("a=ice-options:trickle");
    l(
        "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08",
    );
    l(&format!("a=setup:{setup}"));
    l("a=mid:0");
    l("a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level");
    l("a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time");
    l("a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01");
    l("a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid");
    l("a=sendrecv");
    l("a=msid:9f3b6c1e-0f4d-4f0e-a5b2-7d1c2e3f4a5b 4c1f2a3b-5d6e-4f70-8192-a3b4c5d6e7f8");
    l("a=rtcp-mux");
    l("a=rtpmap:111 opus/48000/2");
    l("a=rtcp-fb:111 transport-cc");
    l("a=fmtp:111 minptime=10;useinbandfec=1");
    l("a=rtpmap:9 G722/8000");
    l("a=rtpmap:0 PCMU/8000");
    l("a=rtpmap:8 PCMA/8000");
    l("a=rtpmap:13 CN/8000");
    l("a=rtpmap:110 telephone-event/48000");
    l("a=rtpmap:126 telephone-event/8000");
    l("a=ssrc:1001894373 cname:Hk5bV3TnqSjk6Mda");
    l("m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103");
    l("c=IN IP4 0.0.0.0");
    l("a=rtcp:9 IN IP4 0.0.0.0");
    l("a=ice-ufrag:Wb7c");
    l("a=ice-pwd:9hOFmmMvVJNOQL5MbCcZbK1N");
    l("a=ice-options:trickle");
    l(
        "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08",
    );
    l(&format!("a=setup:{setup}"));
    l("a=mid:1");
    l("a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time");
    l("a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01");
    l("a=sendrecv");
    l("a=msid:9f3b6c1e-0f4d-4f0e-a5b2-7d1c2e3f4a5b 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d");
    l("a=rtcp-mux");
    l("a=rtcp-rsize");
    l("a=rtpmap:96 VP8/90000");
    l("a=rtcp-fb:96 goog-remb");
    l("a=rtcp-fb:96 transport-cc");
    l("a=rtcp-fb:96 ccm fir");
    l("a=rtcp-fb:96 nack");
    l("a=rtcp-fb:96 nack pli");
    l("a=rtpmap:97 rtx/90000");
    l("a=fmtp:97 apt=96");
    l("a=rtpmap:102 H264/90000");
    l("a=rtcp-fb:102 transport-cc");
    l("a=rtcp-fb:102 nack pli");
    l("a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f");
    l("a=rtpmap:103 rtx/90000");
    l("a=fmtp:103 apt=102");
    l("a=ssrc-group:FID 2231627014 632943048");
    l("a=ssrc:2231627014 cname:Hk5bV3TnqSjk6Mda");
    l("a=ssrc:632943048 cname:Hk5bV3TnqSjk6Mda");
    l("m=application 9 UDP/DTLS/SCTP webrtc-datachannel");
    l("c=IN IP4 0.0.0.0");
    l("a=ice-ufrag:Wb7c");
    l("a=ice-pwd:9hOFmmMvVJNOQL5MbCcZbK1N");
    l("a=ice-options:trickle");
    l(
        "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08",
    );
    l(&format!("a=setup:{setup}"));
    l("a=mid:2");
    l("a=sctp-port:5000");
    l("a=max-message-size:262144");
    s
}

/// Latency histograms of one phase, microseconds.
pub struct Recorder {
    pub hop: Histogram<u64>,
    pub setup: Histogram<u64>,
}

impl Recorder {
    fn new() -> Recorder {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        Recorder {
            hop: h(),
            setup: h(),
        }
    }
}

/// Shared by the pairs of one phase.
struct Control {
    measuring: AtomicBool,
    stop: CancellationToken,
    calls: AtomicU64,
    frames_verified: AtomicU64,
    /// Paced calls that started later than their schedule.
    late: AtomicU64,
    rec: Mutex<Recorder>,
}

/// A caller's socket and a callee's socket.
pub struct Pair {
    pub n: usize,
    a: Ws,
    b: Ws,
    invite: String,
    seq: u64,
    probes: u64,
}

impl Pair {
    /// Connects caller `c<n>@<a domain>` and callee `d<n>@<b domain>`.
    pub async fn connect(n: usize, a: &Target, b: &Target) -> anyhow::Result<Pair> {
        let caller = format!("c{n}@{}", a.domain);
        let callee = format!("d{n}@{}", b.domain);
        let (wa, wb) = tokio::try_join!(connect(a, &caller), connect(b, &callee))?;
        let invite = serde_json::json!({
            "caller": {"uri": caller, "name": format!("Caller {n}")},
            "callee": {"uri": callee},
        })
        .to_string();
        Ok(Pair {
            n,
            a: wa,
            b: wb,
            invite,
            seq: 0,
            probes: 0,
        })
    }
}

async fn send(ws: &mut Ws, keyword: &str, content: &str, id: &str) -> anyhow::Result<()> {
    let mut s = String::with_capacity(keyword.len() + content.len() + id.len() + 20);
    s.push_str("[\"");
    s.push_str(keyword);
    s.push_str("\",");
    s.push_str(content);
    s.push_str(",{\"call\":\"");
    s.push_str(id);
    s.push_str("\"}]");
    ws.send(Message::Text(Utf8Bytes::from(s)))
        .await
        .context("sending a frame")
}

/// The next text message; pings and pongs are skipped.
async fn next_text(ws: &mut Ws) -> anyhow::Result<Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(c))) => bail!("the server closed the socket: {c:?}"),
            Some(Ok(other)) => bail!("unexpected message {other:?}"),
            Some(Err(e)) => bail!("socket error: {e}"),
            None => bail!("the socket ended"),
        }
    }
}

/// Whether `text` is exactly `["keyword",content,{"call":"id"}]`; an
/// invite may also carry the server's trace context,
/// `{"call":"id","traceparent":"00-..."}` (a valid one).
fn is_frame(text: &str, keyword: &str, content: &str, id: &str) -> bool {
    (|| {
        let t = text.strip_prefix("[\"")?.strip_prefix(keyword)?;
        let t = t.strip_prefix("\",")?.strip_prefix(content)?;
        let t = t.strip_prefix(",{\"call\":\"")?.strip_prefix(id)?;
        if t == "\"}]" {
            return Some(());
        }
        let tp = t
            .strip_prefix("\",\"traceparent\":\"")?
            .strip_suffix("\"}]")?;
        (keyword == "invite" && wspd::trace::TraceParent::parse(tp).is_some()).then_some(())
    })()
    .is_some()
}

/// What a frame is, for an error message: keyword, call id and, for a
/// candidate, its sequence number.
fn describe(text: &str) -> String {
    let v: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return format!("not JSON: {}", truncate(text, 120)),
    };
    let kw = v[0].as_str().unwrap_or("?");
    let call = v[2]["call"].as_str().unwrap_or("(no call)");
    let extra = match kw {
        "icecandidate" => v[1]["candidate"]
            .as_str()
            .and_then(|c| c.strip_prefix("candidate:"))
            .and_then(|c| c.split(' ').next())
            .map(|f| format!(" #{f}"))
            .unwrap_or_default(),
        "bye" => format!(" {}", v[1]),
        _ => String::new(),
    };
    format!("{kw}{extra} of call {call}")
}

fn truncate(s: &str, n: usize) -> &str {
    let mut end = s.len().min(n);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Which frame of a side's script this text is, if any (for diagnosis).
fn position_in(
    text: &str,
    id: &str,
    frame: impl Fn(usize) -> (&'static str, String),
) -> Option<usize> {
    (0..SIDE_FRAMES).find(|&i| {
        let (kw, content) = frame(i);
        is_frame(text, kw, &content, id)
    })
}

/// A frame that is not the one expected: lost, repeated, reordered or stray.
fn mismatch(
    who: &str,
    got: &str,
    id: &str,
    expected: usize,
    frame: impl Fn(usize) -> (&'static str, String),
) -> anyhow::Error {
    let (kw, _) = frame(expected);
    let what = match position_in(got, id, &frame) {
        Some(p) if p > expected => format!(
            "LOSS: frame {expected} ({kw}) of call {id} never arrived; frame {p} came instead"
        ),
        Some(p) => format!(
            "DUPLICATE or REORDER: frame {p} of call {id} arrived again or late, while frame {expected} ({kw}) was expected"
        ),
        None => format!(
            "UNEXPECTED FRAME: expected frame {expected} ({kw}) of call {id}, got {}",
            describe(got)
        ),
    };
    anyhow!("{who}: {what}")
}

/// The timings of one call, microseconds.
struct CallTimes {
    hops: [u64; CALL_FRAMES as usize],
    setup: u64,
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// Places one call on a pair and checks every frame of it.
async fn one_call(p: &mut Pair, script: &Script) -> anyhow::Result<CallTimes> {
    let id = format!("p{:05}c{:08}", p.n, p.seq);
    p.seq += 1;
    let t0 = Instant::now();
    let mut a_sent = [t0; SIDE_FRAMES];
    let mut b_sent = [t0; SIDE_FRAMES];
    // The next frame each side expects from the other.
    let (mut a_next, mut b_next) = (0usize, 0usize);
    let mut times = CallTimes {
        hops: [0; CALL_FRAMES as usize],
        setup: 0,
    };
    let mut nh = 0;
    let deadline = tokio::time::sleep(CALL_TIMEOUT);
    tokio::pin!(deadline);

    a_sent[0] = Instant::now();
    send(&mut p.a, "invite", &p.invite, &id).await?;
    while a_next < SIDE_FRAMES || b_next < SIDE_FRAMES {
        tokio::select! {
            m = next_text(&mut p.a), if a_next < SIDE_FRAMES => {
                let text = m.with_context(|| format!("caller c{} in call {id}", p.n))?;
                let now = Instant::now();
                let (kw, content) = script.b_frame(a_next);
                if !is_frame(&text, kw, content, &id) {
                    return Err(mismatch(&format!("caller c{}", p.n), &text, &id, a_next, |i| {
                        let (k, c) = script.b_frame(i);
                        (k, c.to_string())
                    }));
                }
                times.hops[nh] = micros(now - b_sent[a_next]);
                nh += 1;
                a_next += 1;
                match a_next {
                    // The offer arrived: answer, then trickle candidates.
                    2 => {
                        for (i, sent) in a_sent.iter_mut().enumerate().take(10).skip(1) {
                            let (kw, content) = script.a_frame(&p.invite, i);
                            *sent = Instant::now();
                            send(&mut p.a, kw, content, &id).await?;
                        }
                    }
                    // The callee's last candidate: the data channel is up.
                    10 => {
                        a_sent[10] = Instant::now();
                        send(&mut p.a, "bye", BYE_101, &id).await?;
                    }
                    _ => {}
                }
            }
            m = next_text(&mut p.b), if b_next < SIDE_FRAMES => {
                let text = m.with_context(|| format!("callee d{} in call {id}", p.n))?;
                let now = Instant::now();
                let (kw, content) = script.a_frame(&p.invite, b_next);
                if !is_frame(&text, kw, content, &id) {
                    return Err(mismatch(&format!("callee d{}", p.n), &text, &id, b_next, |i| {
                        let (k, c) = script.a_frame(&p.invite, i);
                        (k, c.to_string())
                    }));
                }
                times.hops[nh] = micros(now - a_sent[b_next]);
                nh += 1;
                b_next += 1;
                match b_next {
                    // The invite arrived: ringing, the offer, candidates.
                    1 => {
                        for (i, sent) in b_sent.iter_mut().enumerate().take(10) {
                            let (kw, content) = script.b_frame(i);
                            *sent = Instant::now();
                            send(&mut p.b, kw, content, &id).await?;
                        }
                    }
                    10 => {
                        b_sent[10] = Instant::now();
                        send(&mut p.b, "bye", BYE_101, &id).await?;
                    }
                    _ => {}
                }
            }
            () = &mut deadline => {
                bail!(
                    "LOSS: call {id} of pair {} not complete after {CALL_TIMEOUT:?}: the caller got {a_next} of {SIDE_FRAMES} frames, the callee {b_next}",
                    p.n
                );
            }
        }
    }
    times.setup = micros(t0.elapsed());
    Ok(times)
}

/// Proves nothing stray is queued for a socket: a frame for a call that
/// cannot exist must be answered by the server's 481 as the very next frame.
async fn probe(ws: &mut Ws, id: &str, who: &str) -> anyhow::Result<()> {
    send(ws, "ringing", "null", id).await?;
    let got = tokio::time::timeout(Duration::from_secs(10), next_text(ws))
        .await
        .with_context(|| format!("{who}: no answer to the probe"))??;
    let ok = got.starts_with("[\"bye\",{\"code\":481,")
        && got.ends_with(&format!(",{{\"call\":\"{id}\"}}]"));
    if !ok {
        bail!(
            "{who}: STRAY FRAME after the phase: expected the 481 for probe {id}, got {}",
            describe(&got)
        );
    }
    Ok(())
}

async fn drive(
    mut p: Pair,
    script: Arc<Script>,
    ctl: Arc<Control>,
    pace: Option<(Instant, Duration)>,
) -> (Pair, anyhow::Result<()>) {
    let res = async {
        let mut next = pace.map(|(first, _)| first);
        loop {
            if let (Some(at), Some((_, every))) = (next.as_mut(), pace) {
                tokio::select! {
                    () = tokio::time::sleep_until(*at) => {}
                    () = ctl.stop.cancelled() => break,
                }
                if Instant::now() > *at + Duration::from_millis(1) {
                    ctl.late.fetch_add(1, Ordering::Relaxed);
                }
                *at += every;
            } else if ctl.stop.is_cancelled() {
                break;
            }
            let t = one_call(&mut p, &script).await?;
            if ctl.measuring.load(Ordering::Relaxed) {
                ctl.calls.fetch_add(1, Ordering::Relaxed);
                let mut rec = ctl.rec.lock().unwrap_or_else(|e| e.into_inner());
                for h in t.hops {
                    rec.hop.saturating_record(h);
                }
                rec.setup.saturating_record(t.setup);
            }
            ctl.frames_verified
                .fetch_add(CALL_FRAMES, Ordering::Relaxed);
        }
        p.probes += 1;
        let id = format!("probe{:05}x{:06}", p.n, p.probes);
        probe(&mut p.a, &id, &format!("caller c{}", p.n)).await?;
        probe(&mut p.b, &id, &format!("callee d{}", p.n)).await?;
        anyhow::Ok(())
    }
    .await;
    if res.is_err() {
        ctl.stop.cancel();
    }
    (p, res)
}

/// Places exactly `per_pair` calls on each pair (in parallel across pairs),
/// then probes every socket: a fixed amount of work, for counting
/// instructions under a profiler (`--profile-calls`).
pub async fn fixed_calls(
    pairs: &mut Vec<Pair>,
    script: &Arc<Script>,
    per_pair: u64,
) -> anyhow::Result<u64> {
    let mut set = JoinSet::new();
    for mut p in pairs.drain(..) {
        let script = script.clone();
        set.spawn(async move {
            let res = async {
                for _ in 0..per_pair {
                    one_call(&mut p, &script).await?;
                }
                p.probes += 1;
                let id = format!("probe{:05}x{:06}", p.n, p.probes);
                probe(&mut p.a, &id, &format!("caller c{}", p.n)).await?;
                probe(&mut p.b, &id, &format!("callee d{}", p.n)).await
            }
            .await;
            (p, res)
        });
    }
    let mut calls = 0;
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        let (p, res) = r.context("a pair task panicked")?;
        match res {
            Ok(()) => calls += per_pair,
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
        pairs.push(p);
    }
    pairs.sort_by_key(|p| p.n);
    match first_err {
        Some(e) => Err(e),
        None => Ok(calls),
    }
}

/// What one phase asks for.
pub struct PhaseSpec {
    pub pairs: usize,
    pub warm: Duration,
    pub window: Duration,
    /// Paced load: calls per second for all pairs together; `None` runs
    /// every pair back to back (saturation).
    pub rate: Option<f64>,
}

/// What one phase measured.
pub struct PhaseResult {
    pub pairs: usize,
    pub window: Duration,
    pub calls: u64,
    /// CPU time of each server process during the window.
    pub server_cpu: Vec<Duration>,
    /// CPU time of the bench (load client) during the window.
    pub client_cpu: Duration,
    /// The servers' system calls during the window (when perf can count).
    pub server_syscalls: Option<u64>,
    /// The servers' context switches during the window.
    pub server_switches: u64,
    /// CPU time of everything else on the machine during the window.
    pub other_cpu: Duration,
    pub rec: Recorder,
    pub frames_verified: u64,
    pub late: u64,
    pub rate: Option<f64>,
    /// How many of the measured processes relay each frame (every server
    /// it crosses; by default all of them).
    pub relayed_by: usize,
}

impl PhaseResult {
    pub fn calls_per_s(&self) -> f64 {
        self.calls as f64 / self.window.as_secs_f64()
    }
    pub fn frames_per_s(&self) -> f64 {
        (self.calls * CALL_FRAMES) as f64 / self.window.as_secs_f64()
    }
    /// Server system calls per call (all servers together).
    pub fn syscalls_per_call(&self) -> Option<f64> {
        self.server_syscalls
            .map(|n| n as f64 / self.calls.max(1) as f64)
    }
    /// Server context switches per call (all servers together).
    pub fn switches_per_call(&self) -> f64 {
        self.server_switches as f64 / self.calls.max(1) as f64
    }
    /// The share of the machine's CPUs that other processes used.
    pub fn other_load(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.other_cpu.as_secs_f64() / (self.window.as_secs_f64() * cores as f64)
    }
    pub fn server_cpu_total(&self) -> Duration {
        self.server_cpu.iter().sum()
    }
    /// Server CPU per call, microseconds (all servers together).
    pub fn cpu_per_call_us(&self) -> f64 {
        self.server_cpu_total().as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }
    /// Relays per server CPU-second: every frame is relayed once by each
    /// server it crosses.
    pub fn relays_per_cpu_s(&self) -> f64 {
        let relays = self.calls * CALL_FRAMES * self.relayed_by as u64;
        relays as f64 / self.server_cpu_total().as_secs_f64().max(1e-9)
    }
}

fn cpus(pids: &[u32]) -> anyhow::Result<Vec<Duration>> {
    pids.iter().map(|&p| crate::procs::cpu_of_pid(p)).collect()
}

fn switches(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| crate::procs::switches_of(p)).sum()
}

/// Runs the first `spec.pairs` pairs for a warm-up and a measured window,
/// then stops them and probes every socket. The CPU time and context
/// switches are those of the processes `pids` (the servers).
pub async fn run_phase(
    pairs: &mut Vec<Pair>,
    script: &Arc<Script>,
    spec: &PhaseSpec,
    pids: &[u32],
) -> anyhow::Result<PhaseResult> {
    anyhow::ensure!(spec.pairs <= pairs.len(), "not enough pairs connected");
    let ctl = Arc::new(Control {
        measuring: AtomicBool::new(false),
        stop: CancellationToken::new(),
        calls: AtomicU64::new(0),
        frames_verified: AtomicU64::new(0),
        late: AtomicU64::new(0),
        rec: Mutex::new(Recorder::new()),
    });
    let start = Instant::now() + Duration::from_millis(5);
    let mut set = JoinSet::new();
    let used: Vec<Pair> = pairs.drain(..spec.pairs).collect();
    for (i, p) in used.into_iter().enumerate() {
        let pace = spec.rate.map(|rate| {
            // Each pair places rate/pairs calls a second, the pairs spread
            // evenly over one interval.
            let every = Duration::from_secs_f64(spec.pairs as f64 / rate);
            (start + every.mul_f64(i as f64 / spec.pairs as f64), every)
        });
        set.spawn(drive(p, script.clone(), ctl.clone(), pace));
    }
    let stopped = ctl.stop.clone();
    let measured = async {
        tokio::time::sleep(spec.warm).await;
        let sc = crate::procs::SyscallCount::start(pids);
        let cpu0 = cpus(pids)?;
        let sw0 = switches(pids);
        let client0 = crate::procs::cpu_of("/proc/self/stat")?;
        let all0 = crate::procs::machine_busy()?;
        let t0 = Instant::now();
        ctl.measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(spec.window).await;
        ctl.measuring.store(false, Ordering::Relaxed);
        let window = t0.elapsed();
        let cpu1 = cpus(pids)?;
        let sw1 = switches(pids);
        let client1 = crate::procs::cpu_of("/proc/self/stat")?;
        let all1 = crate::procs::machine_busy()?;
        let syscalls = sc.stop();
        let server_cpu: Vec<Duration> = cpu1.iter().zip(&cpu0).map(|(b, a)| *b - *a).collect();
        let client_cpu = client1 - client0;
        let other = (all1 - all0).saturating_sub(server_cpu.iter().sum::<Duration>() + client_cpu);
        anyhow::Ok((window, server_cpu, client_cpu, syscalls, sw1 - sw0, other))
    };
    let measured = tokio::select! {
        m = measured => Some(m),
        () = stopped.cancelled() => None,
    };
    ctl.stop.cancel();
    let mut first_err = None;
    let mut back = Vec::with_capacity(spec.pairs);
    while let Some(r) = set.join_next().await {
        let (p, res) = r.context("a pair task panicked")?;
        if let Err(e) = res
            && first_err.is_none()
        {
            first_err = Some(e);
        }
        back.push(p);
    }
    back.sort_by_key(|p| p.n);
    back.append(pairs);
    *pairs = back;
    if let Some(e) = first_err {
        return Err(e);
    }
    let (window, server_cpu, client_cpu, server_syscalls, server_switches, other_cpu) =
        measured.context("the phase was stopped")??;
    let ctl = Arc::try_unwrap(ctl).map_err(|_| anyhow!("pair tasks still hold the phase"))?;
    Ok(PhaseResult {
        pairs: spec.pairs,
        window,
        calls: ctl.calls.into_inner(),
        server_cpu,
        client_cpu,
        server_syscalls,
        server_switches,
        other_cpu,
        rec: ctl.rec.into_inner().unwrap_or_else(|e| e.into_inner()),
        frames_verified: ctl.frames_verified.into_inner(),
        late: ctl.late.into_inner(),
        rate: spec.rate,
        relayed_by: pids.len(),
    })
}

/// Connects `n` pairs numbered from `first` (their users are `c<i>` and
/// `d<i>`), 64 at a time.
pub async fn connect_pairs(
    first: usize,
    n: usize,
    a: &Target,
    b: &Target,
) -> anyhow::Result<Vec<Pair>> {
    let mut out = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    let mut next = first;
    while out.len() < n {
        while next < first + n && set.len() < 64 {
            let (a, b) = (a.clone(), b.clone());
            set.spawn(async move { Pair::connect(next, &a, &b).await });
            next += 1;
        }
        let p = set
            .join_next()
            .await
            .context("pair tasks")?
            .context("a pair task panicked")??;
        out.push(p);
    }
    out.sort_by_key(|p| p.n);
    Ok(out)
}

/// Idle client sockets: connected, authenticated, answering pings, silent.
pub struct Idle {
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Idle {
    /// Opens `n` sockets for users `idle<i>@<domain>`.
    pub async fn open(target: &Target, n: usize) -> anyhow::Result<Idle> {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let gate = Arc::new(tokio::sync::Semaphore::new(128));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(n.max(1));
        for i in 0..n {
            let (target, stop, gate, tx) = (target.clone(), stop.clone(), gate.clone(), tx.clone());
            tasks.spawn(async move {
                let permit = gate.acquire_owned().await;
                let ws = connect(&target, &format!("idle{i}@{}", target.domain)).await;
                drop(permit);
                let mut ws = match ws {
                    Ok(ws) => {
                        let _ = tx.send(Ok(())).await;
                        ws
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                drop(tx);
                // Reading answers the server's pings; nothing else comes.
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = async { while let Some(Ok(_)) = ws.next().await {} } => {}
                }
            });
        }
        drop(tx);
        for _ in 0..n {
            match rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    stop.cancel();
                    return Err(e.context("opening idle connections"));
                }
                None => bail!("idle connection tasks ended early"),
            }
        }
        Ok(Idle { stop, tasks })
    }

    /// Drops every idle socket.
    pub async fn close(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A GET of `/metrics` on a server; returns the value of `name`.
pub async fn metric(target: &Target, name: &str) -> anyhow::Result<f64> {
    let text = metrics_text(target).await?;
    value_in(&text, name).with_context(|| format!("{name} not in {}'s metrics", target.domain))
}

/// The value of metric `name` (with its labels, if any) in an exposition.
pub fn value_in(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A GET of `/metrics` on a server: the response, headers included.
pub async fn metrics_text(target: &Target) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = TcpStream::connect(target.addr).await?;
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.domain
    );
    let mut body = Vec::new();
    match &target.tls {
        None => {
            let mut s = tcp;
            s.write_all(req.as_bytes()).await?;
            s.read_to_end(&mut body).await?;
        }
        Some(cfg) => {
            let name = ServerName::try_from(target.domain.clone())?;
            let mut s = TlsConnector::from(cfg.clone()).connect(name, tcp).await?;
            s.write_all(req.as_bytes()).await?;
            // A TLS peer may end without close_notify; what was read counts.
            let _ = s.read_to_end(&mut body).await;
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_matched_exactly() {
        assert!(is_frame(
            r#"["offer",{"a":1},{"call":"abcdefgh"}]"#,
            "offer",
            r#"{"a":1}"#,
            "abcdefgh"
        ));
        assert!(!is_frame(
            r#"["offer",{"a":2},{"call":"abcdefgh"}]"#,
            "offer",
            r#"{"a":1}"#,
            "abcdefgh"
        ));
        assert!(!is_frame(
            r#"["offer",{"a":1},{"call":"abcdefgh"}] "#,
            "offer",
            r#"{"a":1}"#,
            "abcdefgh"
        ));
    }

    #[test]
    fn sdp_is_about_2_5_kb() {
        let s = Script::new();
        assert!((2200..3000).contains(&s.offer_len()), "{}", s.offer_len());
        assert!((2200..3000).contains(&s.answer_len()), "{}", s.answer_len());
    }
}
