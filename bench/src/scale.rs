//! The scale setup (`--only scale`): how many idle users one node holds,
//! what they cost while idle, and what happens when they all come back at
//! once.
//!
//! - *Idle at scale*: one plain-WebSocket server; authenticated sockets
//!   opened in steps (100,000, then 500,000), each step followed by the
//!   server's RSS per socket and the cost of a call with that many idle
//!   (the calls' 100 pairs are connected first, from 127.0.0.1). Then the
//!   idle CPU, split into keepalive and the rest (below). The same for
//!   200,000 sockets over TLS on a second server.
//! - *Keepalive*: every socket sends one unsolicited pong at once (a
//!   "touch"), so that all of them are pinged together `keepalive_ping`
//!   later. The window around that burst of pings holds the keepalive's
//!   work for every socket exactly once (the clients count the pings);
//!   the quiet window after it, until the next burst, holds the rest of
//!   what an idle server does. Keepalive CPU = the burst window's CPU minus
//!   the rest's rate over the same time.
//! - *Handshakes*: a set of new TLS clients connects with full handshakes,
//!   drops, and connects again resuming the sessions the server gave them
//!   (TLS 1.3 tickets): server CPU per connection for each, authenticated
//!   WebSocket upgrade included.
//! - *Reconnect storm*: 100,000 TLS clients drop their sockets at once (a
//!   network blip: each client resets its connection) and reconnect as
//!   `web/wsp.js` does (attempt n after a delay between half and all of
//!   min(30 s, 1 s x 2^(n-1))), resuming their TLS sessions; meanwhile 10
//!   pairs place calls at a steady rate on the same server. Time until all
//!   are back, failed attempts, server CPU per reconnection, and the
//!   calls' hop latency.
//!
//! The idle clients are lean: one task per socket holding the stream and a
//! 64-byte buffer; the WebSocket upgrade and the few frames an idle socket
//! sees (the server's pings; the clients' pongs) are written by hand. Each
//! comes from its own loopback source address range (127.0.0.2 and up,
//! [`PER_SOURCE`] sockets per address), since one address has only about
//! 28,000 ephemeral ports. Sockets are ended with a reset (SO_LINGER 0),
//! as a network loss ends them, which also leaves no TIME_WAIT behind.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::{HandshakeKind, NamedGroup};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::MaybeTlsStream;
use wspd::address::Address;
use wspd::auth::Tokens;

use crate::load::{self, PhaseResult, PhaseSpec, Script, Target};
use crate::procs::{self, ServerProc};
use crate::report::{p50_us, p99_us, phase_json};
use crate::{Cli, Plan};

/// Sockets opened from one loopback source address (of about 28,000
/// ephemeral ports).
const PER_SOURCE: usize = 20_000;
/// Sockets being opened at once while the idle sets are built.
const OPENING: usize = 256;
/// How long one connection attempt may take (connect, TLS, upgrade).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// wsp.js: the first reconnection delay's ceiling, and the largest delay.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Pairs placing calls during the storm, and their rate (calls/s, all
/// together).
const STORM_PAIRS: usize = 10;
const STORM_CALL_RATE: f64 = 50.0;

/// The sizes of a scale run.
pub struct ScalePlan {
    /// Idle plain sockets after each step.
    pub steps: Vec<usize>,
    /// Idle TLS sockets (the storm's clients among them).
    pub tls: usize,
    /// Clients in the reconnect storm.
    pub storm: usize,
    /// New TLS clients for the handshake cost, full then resumed.
    pub probe: usize,
    /// `[limits]` lines for the servers (the quick run shortens the
    /// keepalive; the full run keeps wspd's defaults).
    pub limits: &'static str,
    /// keepalive_ping as configured.
    pub ping_after: Duration,
    /// Call pairs for the cost-with-idle rows.
    pub pairs: usize,
    pub warm: Duration,
    pub window: Duration,
    /// The measured window of calls during the storm.
    pub storm_window: Duration,
    /// The longest the storm may take.
    pub storm_limit: Duration,
}

impl ScalePlan {
    pub fn new(cli: &Cli, plan: &Plan) -> ScalePlan {
        let (steps, tls, storm, probe) = if plan.quick {
            (vec![200, 400], 300, 200, 100)
        } else {
            (vec![100_000, 500_000], 200_000, 100_000, 20_000)
        };
        // With a smaller --idle: the default steps below it, or a fifth.
        let steps = match cli.idle {
            Some(n) => {
                let mut s: Vec<usize> = steps.into_iter().filter(|&s| s < n).collect();
                if s.is_empty() && n >= 5 {
                    s.push(n / 5);
                }
                s.push(n);
                s
            }
            None => steps,
        };
        let tls = cli.scale_tls.unwrap_or(tls);
        let storm = cli.storm.unwrap_or(storm).min(tls);
        // The handshake probe opens beside the idle TLS sockets.
        let probe = probe.min(tls / 5).max(1);
        let (limits, ping_after) = if plan.quick {
            (
                "keepalive_ping = \"1s\"\nkeepalive_timeout = \"5s\"\n",
                Duration::from_secs(1),
            )
        } else {
            // wspd's defaults (docs/operating.md): keepalive_ping 20 s.
            ("", Duration::from_secs(20))
        };
        ScalePlan {
            steps,
            tls,
            storm,
            probe,
            limits,
            ping_after,
            pairs: if plan.quick {
                10
            } else {
                cli.pairs.unwrap_or(100)
            },
            warm: plan.warm,
            window: plan.step,
            storm_window: if plan.quick {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(15)
            },
            storm_limit: if plan.quick {
                Duration::from_secs(60)
            } else {
                Duration::from_secs(240)
            },
        }
    }

    /// The sizes that fit `hard_limit` open files per process: every
    /// socket the largest step would open, less what the calls and the
    /// servers' own files take. `(plain, tls, storm)`, in the default
    /// run's proportions (the handshake probe, a fifth of the TLS
    /// sockets, opens beside them; the storm is half of them).
    pub fn fit_open_files(&self, hard_limit: u64) -> (usize, usize, usize) {
        let overhead = 2 * self.pairs.max(STORM_PAIRS) + 1024;
        let plain = (hard_limit as usize).saturating_sub(overhead + 256);
        let tls = plain * 5 / 6;
        (plain, tls, tls / 2)
    }

    /// Open files the bench needs (and each server).
    pub fn open_files(&self) -> u64 {
        let most = self
            .steps
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(self.tls + self.probe);
        (most + 2 * self.pairs.max(STORM_PAIRS) + 1024) as u64
    }
}

/// The loopback source address of client `i`: 127.0.0.2 and up.
fn source(i: usize) -> IpAddr {
    let k = i / PER_SOURCE + 2;
    IpAddr::V4(Ipv4Addr::new(127, (k >> 16) as u8, (k >> 8) as u8, k as u8))
}

/// Client `i`'s own source address and port: ports from 10,000, below
/// the usual ephemeral range, so that they seldom meet another program's.
fn source_port(i: usize) -> SocketAddr {
    SocketAddr::new(source(i), 10_000 + (i % PER_SOURCE) as u16)
}

/// What every idle client is told to do next; the number tells a new
/// order from an old one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Order {
    Stay,
    /// Send one unsolicited pong (the server hears from every socket).
    Touch,
    /// Reset the connection and reconnect with backoff (a network blip).
    Blip,
    /// Reset the connection and end.
    End,
}

/// What the clients of one set count.
#[derive(Default)]
struct Stats {
    /// Sockets open now (upgraded).
    up: AtomicU64,
    /// Tasks not ended yet.
    alive: AtomicU64,
    /// Pings answered.
    pings: AtomicU64,
    /// Connection attempts that failed (refused, reset, timed out).
    failed: AtomicU64,
    /// TLS handshakes by kind.
    full: AtomicU64,
    resumed: AtomicU64,
    /// Sockets the server ended (unasked).
    lost: AtomicU64,
    /// Frames other than pings received.
    unexpected: AtomicU64,
    /// The first failure while opening the set (it fails the run).
    first_error: Mutex<Option<String>>,
}

/// A TLS 1.3 ticket store shared by the clients of a set: each ticket is
/// used once, and any client may use any ticket (a server does not tie a
/// ticket to a client), so the pool stands for every client keeping its
/// own. Tickets are only taken once `take` is set: a client connecting for
/// the first time has none. Bounded; TLS 1.2 sessions are not kept.
#[derive(Debug)]
struct Tickets {
    pool: Mutex<std::collections::VecDeque<Tls13ClientSessionValue>>,
    cap: usize,
    take: std::sync::atomic::AtomicBool,
}

impl Tickets {
    fn new(cap: usize) -> Arc<Tickets> {
        Arc::new(Tickets {
            pool: Mutex::new(Default::default()),
            cap,
            take: false.into(),
        })
    }
}

impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        None
    }
    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() >= self.cap {
            pool.pop_front();
        }
        pool.push_back(value);
    }
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        if !self.take.load(Ordering::Relaxed) {
            return None;
        }
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_back()
    }
}

/// Where and how the idle clients connect.
struct Net {
    addr: SocketAddr,
    domain: String,
    tokens: Arc<Tokens>,
    /// With TLS: the client config, sessions kept in [`Tickets`].
    tls: Option<(TlsConnector, ServerName<'static>, Arc<Tickets>)>,
}

/// A client TLS config that prefers the cipher suites in a browser's
/// order: AES-128-GCM with SHA-256 first (rustls prefers AES-256-GCM with
/// SHA-384, whose key schedule costs the server more on a CPU without
/// SHA-512 instructions), trusting the development CA.
fn browser_like(certs: &Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::crypto::ring::{self, cipher_suite};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    let rest: Vec<_> = ring::default_provider()
        .cipher_suites
        .into_iter()
        .filter(|c| !suites.contains(c))
        .collect();
    suites.extend(rest);
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites,
        ..ring::default_provider()
    };
    let ca = certs.join("ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca).with_context(|| ca.display().to_string())? {
        roots.add(c?)?;
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl Net {
    /// Over TLS, with a ticket pool of its own.
    fn tls(
        addr: SocketAddr,
        domain: &str,
        tokens: Arc<Tokens>,
        ca: &rustls::ClientConfig,
        cap: usize,
    ) -> anyhow::Result<Arc<Net>> {
        let tickets = Tickets::new(cap);
        let mut cfg = ca.clone();
        cfg.resumption = rustls::client::Resumption::store(tickets.clone());
        Ok(Arc::new(Net {
            addr,
            domain: domain.into(),
            tokens,
            tls: Some((
                TlsConnector::from(Arc::new(cfg)),
                ServerName::try_from(domain.to_string())?,
                tickets,
            )),
        }))
    }

    /// From now on, clients resume the sessions they were given.
    fn resume(&self) {
        if let Some((_, _, t)) = &self.tls {
            t.take.store(true, Ordering::Relaxed);
        }
    }
}

type Stream = MaybeTlsStream<tokio::net::TcpStream>;

/// Opens one authenticated socket for user `s<i>@<domain>`.
async fn open(i: usize, net: &Net, stats: &Stats) -> anyhow::Result<Stream> {
    let sock = TcpSocket::new_v4()?;
    // A port of its own: bind(2) with port 0 searches the range for a free
    // one, which gets slow as the range fills (and blocks a runtime thread
    // meanwhile). One taken by another program: any free one.
    if sock.bind(source_port(i)).is_err() {
        sock.bind(SocketAddr::new(source(i), 0))
            .with_context(|| format!("binding {}", source(i)))?;
    }
    let tcp = sock.connect(net.addr).await?;
    tcp.set_nodelay(true)?;
    let mut s = match &net.tls {
        None => MaybeTlsStream::Plain(tcp),
        Some((connector, name, _)) => {
            let tls = connector.connect(name.clone(), tcp).await?;
            let counter = match tls.get_ref().1.handshake_kind() {
                Some(HandshakeKind::Resumed) => &stats.resumed,
                _ => &stats.full,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            MaybeTlsStream::Rustls(tls)
        }
    };
    let user = format!("s{i}@{}", net.domain);
    let address = Address::parse(&user).map_err(|e| anyhow::anyhow!("{user}: {e}"))?;
    let (token, _) = net.tokens.mint(&address, Duration::from_secs(3600));
    let req = format!(
        "GET /wsp HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: wsp-1.0\r\nAuthorization: Bearer {token}\r\n\r\n",
        net.domain
    );
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    // The response head; the server sends nothing after it until asked.
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server ended the connection during the upgrade");
        }
        head.extend_from_slice(&chunk[..n]);
        if head.len() > 4096 {
            bail!("response head over 4 KiB");
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&head);
        bail!("upgrade refused: {}", line.lines().next().unwrap_or(""));
    }
    Ok(s)
}

/// Ends a socket as a network loss does: with a reset, and no TIME_WAIT.
fn reset(s: Stream) {
    let tcp = match &s {
        MaybeTlsStream::Plain(t) => t,
        MaybeTlsStream::Rustls(t) => t.get_ref().0,
        _ => return,
    };
    let _ = tcp.set_zero_linger();
}

/// Why an idle socket's loop ended.
enum Next {
    Blip,
    End,
    /// The server ended it, or it failed.
    Lost,
}

/// A masked client frame with an empty or short payload (a pong).
fn pong(payload: &[u8]) -> ([u8; 6 + 48], usize) {
    const MASK: [u8; 4] = [0x5a, 0x13, 0xc4, 0x7e];
    let mut f = [0u8; 6 + 48];
    let n = payload.len().min(48);
    f[0] = 0x8a;
    f[1] = 0x80 | n as u8;
    f[2..6].copy_from_slice(&MASK);
    for (k, b) in payload[..n].iter().enumerate() {
        f[6 + k] = b ^ MASK[k % 4];
    }
    (f, 6 + n)
}

/// An open socket sitting idle: answers the server's pings, obeys orders.
async fn idle<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    orders: &mut watch::Receiver<(u64, Order)>,
    stats: &Stats,
) -> Next {
    let mut buf = [0u8; 64];
    let mut have = 0usize;
    // Payload bytes of an unexpected frame still to be skipped.
    let mut skip = 0u64;
    loop {
        tokio::select! {
            r = s.read(&mut buf[have..]) => {
                match r {
                    Ok(0) | Err(_) => return Next::Lost,
                    Ok(n) => have += n,
                }
                loop {
                    if skip > 0 {
                        let k = skip.min(have as u64) as usize;
                        buf.copy_within(k..have, 0);
                        have -= k;
                        skip -= k as u64;
                        if skip > 0 {
                            break;
                        }
                    }
                    if have < 2 {
                        break;
                    }
                    let op = buf[0] & 0x0f;
                    let (head, len) = match buf[1] & 0x7f {
                        126 if have >= 4 => (4, u64::from(u16::from_be_bytes([buf[2], buf[3]]))),
                        127 if have >= 10 => (10, u64::from_be_bytes(buf[2..10].try_into().unwrap_or_default())),
                        126 | 127 => break,
                        n => (2, u64::from(n)),
                    };
                    match op {
                        0x9 if len <= 48 => {
                            let end = head + len as usize;
                            if have < end {
                                break;
                            }
                            let (f, n) = pong(&buf[head..end]);
                            if s.write_all(&f[..n]).await.is_err() || s.flush().await.is_err() {
                                return Next::Lost;
                            }
                            stats.pings.fetch_add(1, Ordering::Relaxed);
                            buf.copy_within(end..have, 0);
                            have -= end;
                        }
                        0x8 => return Next::Lost,
                        _ => {
                            stats.unexpected.fetch_add(1, Ordering::Relaxed);
                            buf.copy_within(head..have, 0);
                            have -= head;
                            skip = len;
                        }
                    }
                }
            }
            r = orders.changed() => {
                if r.is_err() {
                    return Next::End;
                }
                let order = orders.borrow_and_update().1;
                match order {
                    Order::Stay => {}
                    Order::Touch => {
                        let (f, n) = pong(&[]);
                        if s.write_all(&f[..n]).await.is_err() || s.flush().await.is_err() {
                            return Next::Lost;
                        }
                    }
                    Order::Blip => return Next::Blip,
                    Order::End => return Next::End,
                }
            }
        }
    }
}

/// wsp.js's delay before reconnection attempt `attempt` (1, 2, ...):
/// between half and all of min(cap, base x 2^(attempt-1)).
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.clamp(1, 16).saturating_sub(1))
        .min(BACKOFF_CAP);
    ceiling / 2 + ceiling.mul_f64(rand::random::<f64>() / 2.0)
}

/// One idle client: opens its socket (under `gate`), sits idle, and after
/// a blip or a loss reconnects with backoff, until told to end.
async fn client(
    i: usize,
    net: Arc<Net>,
    stats: Arc<Stats>,
    mut orders: watch::Receiver<(u64, Order)>,
    gate: Arc<Semaphore>,
) {
    orders.borrow_and_update();
    let first = {
        let _permit = gate.acquire().await;
        tokio::time::timeout(ATTEMPT_TIMEOUT, open(i, &net, &stats)).await
    };
    let mut s = match first {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(&stats, format!("{e:#}")),
        Err(_) => return fail(&stats, format!("no connection within {ATTEMPT_TIMEOUT:?}")),
    };
    loop {
        stats.up.fetch_add(1, Ordering::Relaxed);
        let next = idle(&mut s, &mut orders, &stats).await;
        stats.up.fetch_sub(1, Ordering::Relaxed);
        reset(s);
        match next {
            Next::End => break,
            Next::Lost => {
                stats.lost.fetch_add(1, Ordering::Relaxed);
            }
            Next::Blip => {}
        }
        // Reconnect as wsp.js does, until back or told to end.
        let mut attempt = 0;
        s = loop {
            attempt += 1;
            tokio::select! {
                () = tokio::time::sleep(backoff(attempt)) => {}
                _ = ended(&mut orders) => return done(&stats),
            }
            match tokio::time::timeout(ATTEMPT_TIMEOUT, open(i, &net, &stats)).await {
                Ok(Ok(s)) => break s,
                _ => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
    }
    done(&stats);
}

/// Until the order is to end.
async fn ended(orders: &mut watch::Receiver<(u64, Order)>) {
    while orders.changed().await.is_ok() {
        if orders.borrow_and_update().1 == Order::End {
            return;
        }
    }
}

fn fail(stats: &Stats, e: String) {
    stats.failed.fetch_add(1, Ordering::Relaxed);
    let mut first = stats.first_error.lock().unwrap_or_else(|e| e.into_inner());
    first.get_or_insert(e);
    drop(first);
    done(stats);
}

fn done(stats: &Stats) {
    stats.alive.fetch_sub(1, Ordering::Relaxed);
}

/// A set of idle clients with one order channel.
struct Clients {
    orders: watch::Sender<(u64, Order)>,
    stats: Arc<Stats>,
}

impl Clients {
    /// Opens clients `first..first + n` and waits until every one is up.
    async fn open(net: &Arc<Net>, first: usize, n: usize) -> anyhow::Result<Clients> {
        let (orders, rx) = watch::channel((0, Order::Stay));
        let stats = Arc::new(Stats::default());
        stats.alive.store(n as u64, Ordering::Relaxed);
        let gate = Arc::new(Semaphore::new(OPENING));
        for i in first..first + n {
            tokio::spawn(client(
                i,
                net.clone(),
                stats.clone(),
                rx.clone(),
                gate.clone(),
            ));
        }
        let set = Clients { orders, stats };
        let mut last_report = Instant::now();
        loop {
            let up = set.stats.up.load(Ordering::Relaxed) as usize;
            if up >= n {
                return Ok(set);
            }
            let error = set
                .stats
                .first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(e) = error {
                set.end().await;
                bail!("opening idle connections: {e}");
            }
            if last_report.elapsed() > Duration::from_secs(15) {
                eprintln!("    ... {up} of {n} open");
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn order(&self, o: Order) {
        self.orders.send_modify(|(n, order)| {
            *n += 1;
            *order = o;
        });
    }

    fn up(&self) -> usize {
        self.stats.up.load(Ordering::Relaxed) as usize
    }

    /// Ends every client (their sockets reset) and waits for their tasks.
    async fn end(self) {
        self.order(Order::End);
        while self.stats.alive.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One step of idle sockets on a server.
pub struct Step {
    pub connections: usize,
    pub transport: &'static str,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// Time to open the sockets of this step (not of the earlier steps).
    pub opened: usize,
    pub opened_in: Duration,
    /// Server CPU while they opened.
    pub open_cpu: Duration,
    /// The cost of a call with this many idle (plain steps only).
    pub calls: Option<PhaseResult>,
    /// The bench's own RSS growth per connection while this step opened
    /// (its client side: how lean the load generator is).
    pub client_kib_per_connection: f64,
}

impl Step {
    pub fn kib_per_connection(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / self.connections as f64
    }
    /// Server CPU per new connection (TCP, TLS if any, upgrade), µs.
    pub fn open_us(&self) -> f64 {
        self.open_cpu.as_secs_f64() * 1e6 / self.opened.max(1) as f64
    }
    fn json(&self) -> Value {
        json!({
            "connections": self.connections,
            "transport": self.transport,
            "rss_before_kib": self.rss_before_kib,
            "rss_after_kib": self.rss_after_kib,
            "kib_per_connection": self.kib_per_connection(),
            "opened": self.opened,
            "opened_in_s": self.opened_in.as_secs_f64(),
            "connections_per_s": self.opened as f64 / self.opened_in.as_secs_f64().max(1e-9),
            "server_cpu_us_per_connection": self.open_us(),
            "client_kib_per_connection": self.client_kib_per_connection,
            "calls": self.calls.as_ref().map(|r| phase_json(r, self.connections)),
        })
    }
}

/// The idle CPU of a server holding `connections` sockets.
pub struct IdleCpu {
    pub connections: usize,
    pub transport: &'static str,
    pub ping_after: Duration,
    /// The rest: CPU per second of wall time while no ping was due.
    pub rest_per_s: Duration,
    pub rest_window: Duration,
    /// The burst window: its length, CPU, and pings answered in it.
    pub burst_window: Duration,
    pub burst_cpu: Duration,
    pub pings: u64,
}

impl IdleCpu {
    /// Keepalive CPU of one ping and its pong (the burst less the rest).
    pub fn per_ping(&self) -> Duration {
        let rest = self.rest_per_s.mul_f64(self.burst_window.as_secs_f64());
        self.burst_cpu.saturating_sub(rest) / self.pings.max(1) as u32
    }
    /// Keepalive CPU per 100,000 idle sockets pinged every `ping_after`,
    /// as a percentage of one core.
    pub fn keepalive_percent_per_100k(&self) -> f64 {
        self.per_ping().as_secs_f64() * 100_000.0 / self.ping_after.as_secs_f64() * 100.0
    }
    pub fn keepalive_percent(&self) -> f64 {
        self.keepalive_percent_per_100k() * self.connections as f64 / 100_000.0
    }
    pub fn rest_percent(&self) -> f64 {
        self.rest_per_s.as_secs_f64() * 100.0
    }
    fn json(&self) -> Value {
        json!({
            "connections": self.connections,
            "transport": self.transport,
            "keepalive_ping_s": self.ping_after.as_secs_f64(),
            "keepalive_us_per_ping": self.per_ping().as_secs_f64() * 1e6,
            "keepalive_core_percent": self.keepalive_percent(),
            "keepalive_core_percent_per_100k": self.keepalive_percent_per_100k(),
            "rest_core_percent": self.rest_percent(),
            "rest_window_s": self.rest_window.as_secs_f64(),
            "burst_window_s": self.burst_window.as_secs_f64(),
            "burst_server_cpu_s": self.burst_cpu.as_secs_f64(),
            "pings": self.pings,
        })
    }
}

/// New TLS connections, full and resumed.
pub struct Handshakes {
    pub clients: usize,
    pub full_cpu: Duration,
    pub full_seen: u64,
    pub resumed_cpu: Duration,
    pub resumed_seen: u64,
}

impl Handshakes {
    pub fn per_cpu_s_full(&self) -> f64 {
        self.clients as f64 / self.full_cpu.as_secs_f64().max(1e-9)
    }
    pub fn per_cpu_s_resumed(&self) -> f64 {
        self.clients as f64 / self.resumed_cpu.as_secs_f64().max(1e-9)
    }
    /// Server CPU of a resumed connection over a full one's.
    pub fn cost_ratio(&self) -> f64 {
        self.resumed_cpu.as_secs_f64() / self.full_cpu.as_secs_f64().max(1e-9)
    }
}

/// The reconnect storm.
pub struct Storm {
    pub clients: usize,
    pub seconds: f64,
    pub failed_attempts: u64,
    pub resumed: u64,
    pub full: u64,
    pub server_cpu: Duration,
    pub calls: PhaseResult,
}

impl Storm {
    pub fn per_cpu_s(&self) -> f64 {
        self.clients as f64 / self.server_cpu.as_secs_f64().max(1e-9)
    }
}

/// Everything `--only scale` measured.
pub struct ScaleResult {
    pub steps: Vec<Step>,
    pub idle: Option<IdleCpu>,
    pub tls_step: Option<Step>,
    pub tls_idle: Option<IdleCpu>,
    pub handshakes: Option<Handshakes>,
    pub storm: Option<Storm>,
    pub frames_verified: u64,
    /// Set when the run was made smaller to fit the open-files limit:
    /// `{"hard_limit", "needed"}` (see `fit_open_files`).
    pub open_files_limited: Option<Value>,
}

impl ScaleResult {
    fn top(&self) -> Option<&Step> {
        self.steps.last()
    }

    pub fn json(&self) -> Value {
        let hs = self.handshakes.as_ref();
        json!({
            "idle_connections": self.top().map(|s| s.connections),
            "kib_per_connection": self.top().map(Step::kib_per_connection),
            "tls_idle_connections": self.tls_step.as_ref().map(|s| s.connections),
            "tls_kib_per_connection": self.tls_step.as_ref().map(Step::kib_per_connection),
            "keepalive_core_percent_per_100k": self.idle.as_ref().map(IdleCpu::keepalive_percent_per_100k),
            "tls_keepalive_core_percent_per_100k": self.tls_idle.as_ref().map(IdleCpu::keepalive_percent_per_100k),
            "storm_clients": self.storm.as_ref().map(|s| s.clients),
            "storm_seconds": self.storm.as_ref().map(|s| s.seconds),
            "storm_refused": self.storm.as_ref().map(|s| s.failed_attempts),
            "storm_resumed": self.storm.as_ref().map(|s| s.resumed),
            "storm_reconnections_per_cpu_second": self.storm.as_ref().map(Storm::per_cpu_s),
            "storm_hop_p50_ms": self.storm.as_ref().map(|s| p50_us(&s.calls) / 1000.0),
            "storm_hop_p99_ms": self.storm.as_ref().map(|s| p99_us(&s.calls) / 1000.0),
            "storm_calls": self.storm.as_ref().map(|s| phase_json(&s.calls, s.clients)),
            "handshakes_per_cpu_second_full": hs.map(Handshakes::per_cpu_s_full),
            "handshakes_per_cpu_second_resumed": hs.map(Handshakes::per_cpu_s_resumed),
            "handshake_resumed_cost_ratio": hs.map(Handshakes::cost_ratio),
            "handshake_clients": hs.map(|h| h.clients),
            "handshakes_seen_full": hs.map(|h| h.full_seen),
            "handshakes_seen_resumed": hs.map(|h| h.resumed_seen),
            "steps": self.steps.iter().chain(&self.tls_step).map(Step::json).collect::<Vec<_>>(),
            "idle_cpu": self.idle.iter().chain(&self.tls_idle).map(IdleCpu::json).collect::<Vec<_>>(),
            "frames_verified": self.frames_verified,
            "open_files_limited": self.open_files_limited,
        })
    }

    pub fn table(&self, o: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            o,
            "\nscale (one node; idle clients from 127.0.0.2 and up; calls from 127.0.0.1)"
        );
        for s in self.steps.iter().chain(&self.tls_step) {
            let _ = writeln!(
                o,
                "  {:>7} idle {:<3}: RSS {} -> {} KiB = {:.2} KiB per connection; the last {} opened in {:.1} s ({:.0}/s, {:.0} us server CPU each; the bench {:.1} KiB each)",
                s.connections,
                s.transport,
                s.rss_before_kib,
                s.rss_after_kib,
                s.kib_per_connection(),
                s.opened,
                s.opened_in.as_secs_f64(),
                s.opened as f64 / s.opened_in.as_secs_f64().max(1e-9),
                s.open_us(),
                s.client_kib_per_connection
            );
            if let Some(r) = &s.calls {
                let _ = writeln!(
                    o,
                    "      calls with them ({} pairs): {:.0} calls/s, {:.0} us server CPU/call, {:.0} relays/srv-CPU-s, hop p50/p99 {:.0}/{:.0} us",
                    r.pairs,
                    r.calls_per_s(),
                    r.cpu_per_call_us(),
                    r.relays_per_cpu_s(),
                    p50_us(r),
                    p99_us(r)
                );
            }
        }
        for i in self.idle.iter().chain(&self.tls_idle) {
            let _ = writeln!(
                o,
                "  idle CPU, {} {}: keepalive {:.1}% of a core ({:.1} us per ping and pong, {} pings; {:.2}% per 100k at keepalive_ping {:?}), the rest {:.2}%",
                i.connections,
                i.transport,
                i.keepalive_percent(),
                i.per_ping().as_secs_f64() * 1e6,
                i.pings,
                i.keepalive_percent_per_100k(),
                i.ping_after,
                i.rest_percent()
            );
        }
        if let Some(h) = &self.handshakes {
            let _ = writeln!(
                o,
                "  new TLS connections ({} clients, upgrade included): full {:.0} per server CPU-s ({:.0} us), resumed {:.0} per CPU-s ({:.0} us): resumed/full = {:.2} ({} full, {} resumed seen)",
                h.clients,
                h.per_cpu_s_full(),
                h.full_cpu.as_secs_f64() * 1e6 / h.clients.max(1) as f64,
                h.per_cpu_s_resumed(),
                h.resumed_cpu.as_secs_f64() * 1e6 / h.clients.max(1) as f64,
                h.cost_ratio(),
                h.full_seen,
                h.resumed_seen
            );
        }
        if let Some(s) = &self.storm {
            let _ = writeln!(
                o,
                "  reconnect storm, {} TLS clients reset at once: all back in {:.1} s, {} failed attempts, {} resumed / {} full, {:.0} reconnections per server CPU-s; calls meanwhile ({:.0}/s): hop p50/p99/max {:.1}/{:.1}/{:.1} ms",
                s.clients,
                s.seconds,
                s.failed_attempts,
                s.resumed,
                s.full,
                s.per_cpu_s(),
                s.calls.calls_per_s(),
                p50_us(&s.calls) / 1000.0,
                p99_us(&s.calls) / 1000.0,
                s.calls.rec.hop.max() as f64 / 1000.0
            );
        }
    }
}

/// The bench's own resident memory, KiB.
fn own_rss() -> u64 {
    procs::rss_of("/proc/self/status").unwrap_or(0)
}

fn server_cpu(s: &ServerProc) -> Duration {
    s.cpu().unwrap_or_default()
}

/// `--only scale`.
pub async fn run_scale(
    exe: &Path,
    cli: &Cli,
    plan: &Plan,
    dir: &Path,
    script: &Arc<Script>,
) -> anyhow::Result<ScaleResult> {
    let sp = ScalePlan::new(cli, plan);
    let mut result = ScaleResult {
        steps: Vec::new(),
        idle: None,
        tls_step: None,
        tls_idle: None,
        handshakes: None,
        storm: None,
        frames_verified: 0,
        open_files_limited: None,
    };
    plain(exe, cli, &sp, dir, script, &mut result).await?;
    tls(exe, cli, &sp, dir, script, &mut result).await?;
    Ok(result)
}

/// A first round of calls on `pairs` pairs, so that what calls allocate
/// once is in the baseline; the pairs are then closed and the server left
/// to go quiet. Returns the frames verified.
async fn warm_up(
    target: &Target,
    pairs: usize,
    sp: &ScalePlan,
    script: &Arc<Script>,
    pids: &[u32],
) -> anyhow::Result<u64> {
    let mut set = load::connect_pairs(0, pairs, target, target).await?;
    let warm = PhaseSpec {
        pairs: set.len(),
        warm: Duration::ZERO,
        window: sp.warm,
        rate: None,
    };
    let verified = load::run_phase(&mut set, script, &warm, pids)
        .await?
        .frames_verified;
    drop(set);
    procs::settle(pids, Duration::from_millis(300), Duration::from_secs(5)).await;
    Ok(verified)
}

/// Stops the server after a part of the run; when the part went well, the
/// server must hold no call then.
async fn stop_checked(r: anyhow::Result<()>, target: &Target, s: ServerProc) -> anyhow::Result<()> {
    if r.is_ok() {
        let active = load::metric(target, "wspd_calls_active").await?;
        anyhow::ensure!(active == 0.0, "the server still holds {active} calls");
    }
    s.stop().await;
    r
}

fn config(domain: &str, secret: &str, sp: &ScalePlan, extra: &str) -> String {
    // base_config ends with the [limits] section: the keepalive goes there.
    format!("{}{}{extra}", crate::base_config(domain, secret), sp.limits)
}

async fn plain(
    exe: &Path,
    cli: &Cli,
    sp: &ScalePlan,
    dir: &Path,
    script: &Arc<Script>,
    result: &mut ScaleResult,
) -> anyhow::Result<()> {
    let top = sp.steps.iter().copied().max().unwrap_or(0);
    eprintln!(
        "\n== scale: up to {top} idle WebSockets on one node ({})",
        exe.display()
    );
    let secret = crate::secret();
    let mut s = ServerProc::spawn(exe, "localhost", &cli.server_log, dir).await?;
    let path = dir.join("scale.toml");
    std::fs::write(&path, config("localhost", &secret, sp, ""))?;
    s.start(&path).await?;
    let tokens = Arc::new(Tokens::new("localhost", &secret));
    let target = Target {
        addr: s.addr,
        domain: "localhost".into(),
        tls: None,
        tokens: tokens.clone(),
    };
    let net = Arc::new(Net {
        addr: s.addr,
        domain: "localhost".into(),
        tokens,
        tls: None,
    });
    let pids = [s.pid];
    let quiet = Duration::from_millis(300);
    let r = async {
        // The pairs' sockets are not read between phases, so they would not
        // answer the server's pings: each phase connects its own.
        result.frames_verified += warm_up(&target, sp.pairs, sp, script, &pids).await?;
        let rss0 = s.rss_kib()?;
        let mut sets: Vec<Clients> = Vec::new();
        let mut open = 0;
        for &n in &sp.steps {
            let cpu0 = server_cpu(&s);
            let own0 = own_rss();
            let t = Instant::now();
            sets.push(Clients::open(&net, open, n - open).await?);
            let opened_in = t.elapsed();
            let open_cpu = server_cpu(&s) - cpu0;
            let client_kib_per_connection = own_rss().saturating_sub(own0) as f64 / (n - open) as f64;
            procs::settle(&pids, quiet, Duration::from_secs(20)).await;
            let rss = s.rss_kib()?;
            let mut step = Step {
                connections: n,
                transport: "ws",
                rss_before_kib: rss0,
                rss_after_kib: rss,
                opened: n - open,
                opened_in,
                open_cpu,
                calls: None,
                client_kib_per_connection,
            };
            eprintln!(
                "  {n} idle ws: RSS {rss0} -> {rss} KiB, {:.2} KiB each; {} opened in {:.1} s, {:.0} us server CPU each",
                step.kib_per_connection(),
                n - open,
                opened_in.as_secs_f64(),
                step.open_us()
            );
            open = n;
            let first = 10_000 * (result.steps.len() + 1);
            let mut pairs = load::connect_pairs(first, sp.pairs, &target, &target).await?;
            let spec = PhaseSpec {
                pairs: sp.pairs,
                warm: sp.warm,
                window: sp.window,
                rate: None,
            };
            let r = load::run_phase(&mut pairs, script, &spec, &pids).await?;
            result.frames_verified += r.frames_verified;
            eprintln!("  {}", crate::report::brief(&r, n));
            step.calls = Some(r);
            result.steps.push(step);
            drop(pairs);
            procs::settle(&pids, quiet, Duration::from_secs(5)).await;
        }
        let idle = idle_cpu(&sets, open, sp.ping_after, &s, "ws").await?;
        result.idle = Some(idle);
        check_quiet(&sets)?;
        for set in sets {
            set.end().await;
        }
        anyhow::Ok(())
    }
    .await;
    stop_checked(r, &target, s).await
}

/// No idle socket was ended by the server or sent anything but pings.
fn check_quiet(sets: &[Clients]) -> anyhow::Result<()> {
    for set in sets {
        let lost = set.stats.lost.load(Ordering::Relaxed);
        let odd = set.stats.unexpected.load(Ordering::Relaxed);
        anyhow::ensure!(
            lost == 0 && odd == 0,
            "idle sockets: {lost} ended by the server, {odd} frames other than pings received"
        );
    }
    Ok(())
}

/// The idle CPU of server `s`, split into keepalive and the rest (see the
/// module's doc).
async fn idle_cpu(
    sets: &[Clients],
    n: usize,
    ping_after: Duration,
    s: &ServerProc,
    transport: &'static str,
) -> anyhow::Result<IdleCpu> {
    let pings = || -> u64 {
        sets.iter()
            .map(|c| c.stats.pings.load(Ordering::Relaxed))
            .sum()
    };
    // A socket whose ping fell due just before the window would be pinged
    // twice in it: the window opens a little before the burst.
    let lead = (ping_after / 20).max(Duration::from_millis(100));
    let t0 = Instant::now();
    for c in sets {
        c.order(Order::Touch);
    }
    let p0 = pings();
    eprintln!(
        "  idle CPU of {n} {transport}: every socket heard from at once; its pings fall due in {ping_after:?}"
    );
    tokio::time::sleep_until(t0 + ping_after - lead).await;
    let p1 = pings();
    let cpu0 = server_cpu(s);
    let b0 = Instant::now();
    // Every socket pinged once, and the server done with it.
    let limit = b0 + ping_after;
    while pings() < p1 + n as u64 && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    procs::settle(
        &[s.pid],
        Duration::from_millis(200),
        lead.max(Duration::from_millis(300)),
    )
    .await;
    let burst_cpu = server_cpu(s) - cpu0;
    let burst_window = b0.elapsed();
    let burst_pings = pings() - p1;
    anyhow::ensure!(
        burst_pings >= n as u64,
        "only {burst_pings} of {n} sockets were pinged within {ping_after:?} (and {} before)",
        p1 - p0
    );
    // Quiet until the next burst.
    let r0 = Instant::now();
    let cpu1 = server_cpu(s);
    let until = t0 + 2 * ping_after - lead;
    anyhow::ensure!(
        until > r0 + lead,
        "the burst of pings lasted too long to leave a quiet window ({burst_window:?})"
    );
    tokio::time::sleep_until(until).await;
    let rest_window = r0.elapsed();
    let rest_cpu = server_cpu(s) - cpu1;
    let quiet_pings = pings() - p1 - burst_pings;
    let idle = IdleCpu {
        connections: n,
        transport,
        ping_after,
        rest_per_s: rest_cpu.div_f64(rest_window.as_secs_f64()),
        rest_window,
        burst_window,
        burst_cpu,
        pings: burst_pings,
    };
    eprintln!(
        "  keepalive: {} pings in {:.1} s, server CPU {:.2} s, {:.1} us per ping: {:.2}% of a core per 100k; the rest {:.2}% ({} pings in its {:.1} s)",
        burst_pings,
        burst_window.as_secs_f64(),
        burst_cpu.as_secs_f64(),
        idle.per_ping().as_secs_f64() * 1e6,
        idle.keepalive_percent_per_100k(),
        idle.rest_percent(),
        quiet_pings,
        rest_window.as_secs_f64()
    );
    Ok(idle)
}

async fn tls(
    exe: &Path,
    cli: &Cli,
    sp: &ScalePlan,
    dir: &Path,
    script: &Arc<Script>,
    result: &mut ScaleResult,
) -> anyhow::Result<()> {
    eprintln!(
        "\n== scale: {} idle TLS WebSockets, handshakes, and a reconnect storm of {} ({})",
        sp.tls,
        sp.storm,
        exe.display()
    );
    let certs = cli
        .certs
        .canonicalize()
        .with_context(|| format!("--certs {}", cli.certs.display()))?;
    let domain = "a.test";
    let secret = crate::secret();
    let mut s = ServerProc::spawn(exe, domain, &cli.server_log, dir).await?;
    let path = dir.join("scale-tls.toml");
    let tls_section = format!(
        "[tls]\ncert = \"{c}/{domain}.pem\"\nkey = \"{c}/{domain}-key.pem\"\n",
        c = certs.display()
    );
    std::fs::write(&path, config(domain, &secret, sp, &tls_section))?;
    s.start(&path).await?;
    let ca = crate::dev_ca(&certs)?;
    let tokens = Arc::new(Tokens::new(domain, &secret));
    let target = Target {
        addr: s.addr,
        domain: domain.into(),
        tls: Some(ca.clone()),
        tokens: tokens.clone(),
    };
    let browser = browser_like(&certs)?;
    let net = Net::tls(s.addr, domain, tokens.clone(), &browser, 2 * sp.tls)?;
    let probe_net = Net::tls(s.addr, domain, tokens, &browser, 2 * sp.probe)?;
    let pids = [s.pid];
    let quiet = Duration::from_millis(300);
    let r = async {
        // Not read until the storm: connected again then.
        result.frames_verified += warm_up(&target, STORM_PAIRS, sp, script, &pids).await?;

        // Idle TLS sockets: the storm's clients, then the rest.
        let rss0 = s.rss_kib()?;
        let cpu0 = server_cpu(&s);
        let own0 = own_rss();
        let t = Instant::now();
        let storm_set = Clients::open(&net, 0, sp.storm).await?;
        let rest_set = Clients::open(&net, sp.storm, sp.tls - sp.storm).await?;
        let opened_in = t.elapsed();
        let open_cpu = server_cpu(&s) - cpu0;
        procs::settle(&pids, quiet, Duration::from_secs(20)).await;
        let rss = s.rss_kib()?;
        let step = Step {
            connections: sp.tls,
            transport: "wss",
            rss_before_kib: rss0,
            rss_after_kib: rss,
            opened: sp.tls,
            opened_in,
            open_cpu,
            calls: None,
            client_kib_per_connection: own_rss().saturating_sub(own0) as f64 / sp.tls as f64,
        };
        eprintln!(
            "  {} idle wss: RSS {rss0} -> {rss} KiB, {:.2} KiB each; opened in {:.1} s, {:.0} us server CPU each",
            sp.tls,
            step.kib_per_connection(),
            opened_in.as_secs_f64(),
            step.open_us()
        );
        result.tls_step = Some(step);
        net.resume();
        let sets = [storm_set, rest_set];
        result.tls_idle = Some(idle_cpu(&sets, sp.tls, sp.ping_after, &s, "wss").await?);
        check_quiet(&sets)?;
        let [storm_set, rest_set] = sets;

        // Handshakes: new clients, full; then the same again, resumed.
        let first = sp.tls;
        procs::settle(&pids, quiet, Duration::from_secs(10)).await;
        let c0 = server_cpu(&s);
        let probe = Clients::open(&probe_net, first, sp.probe).await?;
        let full_cpu = server_cpu(&s) - c0;
        let full_seen = probe.stats.full.load(Ordering::Relaxed);
        probe.end().await;
        procs::settle(&pids, quiet, Duration::from_secs(10)).await;
        probe_net.resume();
        let c0 = server_cpu(&s);
        let probe = Clients::open(&probe_net, first, sp.probe).await?;
        let resumed_cpu = server_cpu(&s) - c0;
        let resumed_seen = probe.stats.resumed.load(Ordering::Relaxed);
        probe.end().await;
        let h = Handshakes {
            clients: sp.probe,
            full_cpu,
            full_seen,
            resumed_cpu,
            resumed_seen,
        };
        eprintln!(
            "  handshakes: full {:.0}/CPU-s, resumed {:.0}/CPU-s ({} of {} resumed): resumed/full {:.2}",
            h.per_cpu_s_full(),
            h.per_cpu_s_resumed(),
            resumed_seen,
            sp.probe,
            h.cost_ratio()
        );
        result.handshakes = Some(h);
        rest_set.end().await;
        procs::settle(&pids, quiet, Duration::from_secs(10)).await;

        // The storm, with calls going on. The calls run on a runtime of
        // their own: on the bench's, they would wait behind the storm's
        // client handshakes, and their latency would be the bench's.
        let calls_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("storm-calls")
            .enable_all()
            .build()?;
        let spec = PhaseSpec {
            pairs: STORM_PAIRS,
            warm: Duration::from_millis(500),
            window: sp.storm_window,
            rate: Some(STORM_CALL_RATE),
        };
        let calls = calls_rt.spawn({
            let (target, script, pids) = (target.clone(), script.clone(), pids.to_vec());
            async move {
                let mut pairs = load::connect_pairs(10_000, STORM_PAIRS, &target, &target).await?;
                load::run_phase(&mut pairs, &script, &spec, &pids).await
            }
        });
        let storm = async {
            // The calls connected and warmed up first.
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let failed0 = storm_set.stats.failed.load(Ordering::Relaxed);
            let resumed0 = storm_set.stats.resumed.load(Ordering::Relaxed);
            let full0 = storm_set.stats.full.load(Ordering::Relaxed);
            let c0 = server_cpu(&s);
            let t = Instant::now();
            storm_set.order(Order::Blip);
            // Every socket down first (each task resets its own), then up.
            while storm_set.up() > 0 && t.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            while storm_set.up() < sp.storm {
                if t.elapsed() > sp.storm_limit {
                    bail!(
                        "reconnect storm: {} of {} back after {:?}",
                        storm_set.up(),
                        sp.storm,
                        sp.storm_limit
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let seconds = t.elapsed().as_secs_f64();
            procs::settle(&pids, quiet, Duration::from_secs(5)).await;
            let cpu = server_cpu(&s) - c0;
            anyhow::Ok((
                seconds,
                storm_set.stats.failed.load(Ordering::Relaxed) - failed0,
                storm_set.stats.resumed.load(Ordering::Relaxed) - resumed0,
                storm_set.stats.full.load(Ordering::Relaxed) - full0,
                cpu,
            ))
        };
        let (calls, storm) = tokio::join!(calls, storm);
        calls_rt.shutdown_background();
        let calls = calls.context("the storm's calls panicked")??;
        let (seconds, failed_attempts, resumed, full, server_cpu) = storm?;
        result.frames_verified += calls.frames_verified;
        let st = Storm {
            clients: sp.storm,
            seconds,
            failed_attempts,
            resumed,
            full,
            server_cpu,
            calls,
        };
        eprintln!(
            "  storm: {} back in {:.1} s, {} failed attempts, {} resumed, {} full, {:.0} per server CPU-s; calls' hop p99 {:.1} ms",
            st.clients,
            st.seconds,
            st.failed_attempts,
            st.resumed,
            st.full,
            st.per_cpu_s(),
            p99_us(&st.calls) / 1000.0
        );
        result.storm = Some(st);
        storm_set.end().await;
        anyhow::Ok(())
    }
    .await;
    stop_checked(r, &target, s).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_start_at_127_0_0_2() {
        assert_eq!(source(0), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(
            source(PER_SOURCE * 254),
            IpAddr::V4(Ipv4Addr::new(127, 0, 1, 0))
        );
    }

    #[test]
    fn backoff_is_wsp_js_equal_jitter() {
        for _ in 0..100 {
            let d = backoff(1);
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_secs(1));
            let d = backoff(3);
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_secs(4));
            assert!(backoff(20) <= BACKOFF_CAP);
        }
    }

    #[test]
    fn a_pong_is_masked() {
        let (f, n) = pong(b"ab");
        assert_eq!(n, 8);
        assert_eq!(&f[..2], &[0x8a, 0x82]);
        assert_eq!(f[6] ^ f[2], b'a');
        assert_eq!(f[7] ^ f[3], b'b');
    }
}
