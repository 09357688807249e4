//! Test harness: real wspd servers on 127.0.0.1:0 in the test's runtime,
//! real WebSocket clients, a tiny HTTP client for the other endpoints.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wspd::address::Address;
use wspd::config::Config;
use wspd::{Running, Server};

pub const SECRET: &str = "test-secret-test-secret-test-secret!";

/// How long a test waits for a frame before failing. Under paused time
/// this is virtual and passes at once when nothing else is pending, so a
/// hang fails fast there too.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn config(domain: &str, extra: &str) -> Config {
    config_in(domain, extra, Path::new("."))
}

/// A config whose `[auth]` and `[limits]` sections are completed by `extra`
/// (which may add keys to `[auth]` first, then other sections).
pub fn config_in(domain: &str, extra: &str, base: &Path) -> Config {
    let text = format!(
        "domain = \"{domain}\"\nlisten = \"127.0.0.1:0\"\n[auth]\nsecret = \"{SECRET}\"\n{extra}\n"
    );
    Config::parse(&text, base).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

pub struct TestServer {
    pub running: Running,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::build(config, listener).expect("server builds");
        TestServer {
            running: server.spawn(),
        }
    }

    /// Starts a server on a given address (a restart on the same port).
    pub async fn start_on(config: Config, addr: SocketAddr) -> TestServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let server = Server::build(config, listener).expect("server builds");
        TestServer {
            running: server.spawn(),
        }
    }

    pub async fn localhost() -> TestServer {
        Self::start(config("localhost", "")).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    pub fn token(&self, user: &str) -> String {
        let a = Address::parse(user).unwrap();
        self.running
            .app
            .tokens
            .mint(&a, Duration::from_secs(3600))
            .0
    }

    pub fn url(&self) -> String {
        format!("ws://{}/wsp", self.addr())
    }

    pub async fn connect(&self, user: &str) -> Client {
        let token = self.token(user);
        match &self.running.app.config.tls {
            None => Client::connect(&self.url(), &token).await,
            Some(_) => {
                Client::connect_tls(self.addr(), &self.running.app.config.domain, &token).await
            }
        }
    }

    /// Fetches the metrics text (over TLS when the server speaks it).
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.2
    }

    /// A GET request to this server, over TLS when it speaks it.
    pub async fn get(&self, path: &str) -> (u16, Vec<(String, String)>, String) {
        match &self.running.app.config.tls {
            None => http(self.addr(), "GET", path, &[], "").await,
            Some(_) => {
                let tcp = TcpStream::connect(self.addr()).await.unwrap();
                let name =
                    rustls::pki_types::ServerName::try_from(self.running.app.config.domain.clone())
                        .unwrap();
                let tls = tokio_rustls::TlsConnector::from(dev_ca_client())
                    .connect(name, tcp)
                    .await
                    .unwrap();
                http_on(tls, self.addr(), "GET", path, &[], "").await
            }
        }
    }

    /// One metric's value, 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics().await, name)
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(self) {
        self.running.drain.start();
        self.running.handle.await.unwrap();
    }
}

pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A GET request over TLS to `addr`, checking the certificate for
/// `domain` under the development CA; returns status, headers and body.
pub async fn get_tls(
    addr: SocketAddr,
    domain: &str,
    path: &str,
) -> (u16, Vec<(String, String)>, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(domain.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(dev_ca_client())
        .connect(name, tcp)
        .await
        .unwrap();
    http_on(tls, addr, "GET", path, &[], "").await
}

/// A plain HTTP/1.1 request over a fresh connection; returns status,
/// headers (lowercase names) and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    http_on(s, addr, method, path, headers, body).await
}

/// [`http`] over a stream already connected.
pub async fn http_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Length: {}\r\nContent-Type: application/json\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("HTTP response in time")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, headers, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking WSP.
pub struct Client {
    pub ws: Ws,
}

/// What the server said when it closed a socket.
#[derive(Debug)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Client {
    pub async fn connect(url: &str, token: &str) -> Client {
        let req = wsp_request(url, token);
        // TCP_NODELAY: with Nagle a small write can wait for an ACK, and
        // under paused time the clock may jump meanwhile.
        let (ws, resp) = tokio_tungstenite::connect_async_with_config(req, None, true)
            .await
            .expect("upgrade accepted");
        assert_eq!(
            resp.headers().get("sec-websocket-protocol").unwrap(),
            "wsp-1.0"
        );
        Client { ws }
    }

    /// Connects over TLS to `addr`, checking the certificate for `domain`
    /// under the development CA.
    pub async fn connect_tls(addr: SocketAddr, domain: &str, token: &str) -> Client {
        let req = wsp_request(&format!("wss://{domain}:{}/wsp", addr.port()), token);
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
            req,
            tcp,
            None,
            Some(tokio_tungstenite::Connector::Rustls(dev_ca_client())),
        )
        .await
        .expect("upgrade accepted");
        Client { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(Utf8Bytes::from(text)))
            .await
            .unwrap();
    }

    /// The next frame, parsed. Fails on close, timeout or non-text.
    pub async fn recv(&mut self) -> Value {
        serde_json::from_str(&self.recv_text().await).unwrap()
    }

    /// The next frame as its exact text.
    pub async fn recv_text(&mut self) -> String {
        self.text_until(tokio::time::Instant::now() + WAIT).await
    }

    /// The next text frame before `deadline`, skipping pings and pongs.
    async fn text_until(&mut self, deadline: tokio::time::Instant) -> String {
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
                .expect("no socket error");
            match msg {
                Message::Text(t) => return t.as_str().to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame, which must have this keyword.
    pub async fn expect(&mut self, keyword: &str) -> Value {
        let f = self.recv().await;
        assert_eq!(f[0], keyword, "expected {keyword}, got {f}");
        f
    }

    /// The next frame must be a bye with this code; returns it.
    pub async fn expect_bye(&mut self, code: u64) -> Value {
        let f = self.expect("bye").await;
        assert_eq!(f[1]["code"], code, "expected bye {code}, got {f}");
        f
    }

    /// Proves that nothing is queued for this socket: sends a frame for a
    /// call that cannot exist and checks that the very next frame is the
    /// server's 481 for it. Everything the server sent before the probe
    /// would arrive first.
    pub async fn expect_nothing(&mut self) {
        let probe = format!("probe{}", rand_suffix());
        self.send(json!(["ringing", null, {"call": probe}])).await;
        let f = self.recv().await;
        assert_eq!(
            f[0], "bye",
            "expected nothing before the probe's answer, got {f}"
        );
        assert_eq!(
            f[1]["code"], 481,
            "expected nothing before the probe's answer, got {f}"
        );
        assert_eq!(
            f[2]["call"], probe,
            "expected nothing before the probe's answer, got {f}"
        );
    }

    /// Waits for the server to close the socket; returns its close frame.
    pub async fn expect_close(&mut self) -> Closed {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a close in time");
            match msg {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Closed {
                        code: code.into(),
                        reason: reason.to_string(),
                    };
                }
                Some(Ok(Message::Close(None))) => panic!("close without a code"),
                Some(Ok(Message::Text(t))) => panic!("expected a close, got {t}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("expected a close frame, got error {e}"),
                None => panic!("socket ended without a close frame"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Read until the server answers the close.
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{:08}", N.fetch_add(1, Ordering::Relaxed))
}

/// An invite from `caller` to `callee` with call id `id`.
pub fn invite(caller: &str, callee: &str, id: &str) -> Value {
    json!(["invite", {"caller": {"uri": caller}, "callee": {"uri": callee}}, {"call": id}])
}

/// An invite as a callee receives it, less the server's `traceparent`
/// option (which must be there, and valid).
pub fn untraced(mut v: Value) -> Value {
    let tp = v[2]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent in {v}"))
        .to_string();
    assert!(wspd::trace::TraceParent::parse(&tp).is_some(), "{tp}");
    if let Some(o) = v[2].as_object_mut() {
        o.remove("traceparent");
    }
    v
}

pub fn offer(id: &str) -> Value {
    json!(["offer", {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"}, {"call": id}])
}

pub fn answer(id: &str) -> Value {
    json!(["answer", {"type": "answer", "sdp": "v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=-\r\n"}, {"call": id}])
}

pub fn candidate(id: &str, n: usize) -> Value {
    json!(["icecandidate", {"candidate": format!("candidate:{n} 1 udp 2122260223 127.0.0.1 {} typ host", 50000 + n), "sdpMid": "0", "sdpMLineIndex": 0}, {"call": id}])
}

pub fn bye(id: &str, code: u16) -> Value {
    json!(["bye", {"code": code}, {"call": id}])
}

/// Places a call from `a` to `b` (one device) up to the answer.
pub async fn answered_call(a: &mut Client, b: &mut Client, caller: &str, callee: &str, id: &str) {
    a.send(invite(caller, callee, id)).await;
    b.expect("invite").await;
    b.send(json!(["ringing", null, {"call": id}])).await;
    a.expect("ringing").await;
    b.send(offer(id)).await;
    a.expect("offer").await;
    a.send(answer(id)).await;
    b.expect("answer").await;
}

// ---- Helpers for the call tests (`calls`) ----

pub fn ringing(id: &str) -> Value {
    json!(["ringing", null, {"call": id}])
}

impl Client {
    /// Like [`Client::recv`], but waits up to `wait`: for server timers
    /// longer than [`WAIT`] (under paused time this costs nothing).
    pub async fn recv_within(&mut self, wait: Duration) -> Value {
        let text = self.text_until(tokio::time::Instant::now() + wait).await;
        serde_json::from_str(&text).unwrap()
    }

    /// Every frame queued for this socket, proved complete like
    /// [`Client::expect_nothing`]: the frames that arrive before the
    /// answer to a probe for a call that cannot exist.
    pub async fn drain(&mut self) -> Vec<Value> {
        let probe = format!("probe{}", rand_suffix());
        self.send(json!(["ringing", null, {"call": probe}])).await;
        let mut frames = Vec::new();
        loop {
            let f = self.recv().await;
            if f[0] == "bye" && f[1]["code"] == 481 && f[2]["call"] == probe {
                return frames;
            }
            frames.push(f);
        }
    }
}

impl TestServer {
    /// `wspd_calls_total{outcome="..."}`.
    pub async fn calls_ended(&self, outcome: &str) -> f64 {
        self.metric(&format!("wspd_calls_total{{outcome=\"{outcome}\"}}"))
            .await
    }

    /// Waits until the server counts exactly `n` open client sockets. A
    /// socket stops being counted only after its calls have been told that
    /// it went away, so this is the barrier after a client closes.
    pub async fn wait_sessions(&self, n: i64) {
        // Real time, not tokio's: under paused time a yielding loop never
        // lets the clock move.
        let start = std::time::Instant::now();
        loop {
            let now = self.running.app.metrics.sessions.get();
            if now == n {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "expected {n} open sockets, the server still counts {now}"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Waits until a metric (as `/metrics` shows it) has this value; polls
    /// the observable condition, bounded by [`WAIT`] of real time.
    pub async fn wait_metric(&self, name: &str, value: f64) {
        let start = std::time::Instant::now();
        loop {
            let now = self.metric(name).await;
            if now == value {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "expected {name} = {value}, it stays {now}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Connects and proves the session is running with a probe. (The
    /// server registers a socket before it answers the upgrade, so a plain
    /// [`TestServer::connect`] is already reachable; this also proves the
    /// socket is being read.)
    pub async fn connect_online(&self, user: &str) -> Client {
        let mut c = self.connect(user).await;
        c.expect_nothing().await;
        c
    }
}

/// The development CA as the only trust root.
pub fn dev_ca_roots() -> rustls::RootCertStore {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(Path::new("certs/ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

/// A TLS client configuration that trusts only the development CA.
pub fn dev_ca_client() -> std::sync::Arc<rustls::ClientConfig> {
    std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(dev_ca_roots())
            .with_no_client_auth(),
    )
}

/// A fresh, empty directory of this test process under the system's
/// temporary directory.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wspd-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub mod dns;
pub mod redis;

// ---- A small federation (`federation`, `check`) ----

/// A small federation: a DNS server on loopback and the servers of some
/// domains, all with TLS from certs/ and trusting the development CA.
pub struct Net {
    pub dns: dns::TestDns,
    pub dir: std::path::PathBuf,
}

impl Net {
    pub async fn new(tag: &str) -> Net {
        Net {
            dns: dns::TestDns::start().await,
            dir: temp_dir(tag),
        }
    }

    /// `domain`'s config with certificate `certs/<cert>.pem`, its link key
    /// in this net's folder, this net's resolver; `extra` adds
    /// `[federation]` keys or later sections.
    pub fn config(&self, domain: &str, cert: &str, extra: &str) -> Config {
        config_in(
            domain,
            &format!(
                "[tls]\ncert = \"certs/{cert}.pem\"\nkey = \"certs/{cert}-key.pem\"\n\
                 [federation]\nallow_private_addresses = true\nkey = \"{}\"\nresolver = \"{}\"\nca = \"certs/ca.pem\"\n\
                 lookup_timeout = \"2s\"\nconnect_timeout = \"2s\"\n{extra}",
                self.key_path(domain).display(),
                self.dns.addr
            ),
            Path::new("."),
        )
    }

    /// The same config as [`Net::config`] (certificate `certs/<domain>.pem`)
    /// written to a file in this net's folder with absolute paths, for the
    /// `wspd` binary run from any directory. Returns its path.
    pub fn config_file(&self, domain: &str, extra: &str) -> std::path::PathBuf {
        self.config_file_named(domain, &format!("{domain}.toml"), extra)
    }

    /// [`Net::config_file`] written under the file name `name`: for
    /// several servers of one domain (the nodes of a cluster), which share
    /// the certificate and the link key but not their config file.
    pub fn config_file_named(&self, domain: &str, name: &str, extra: &str) -> std::path::PathBuf {
        let root = std::env::current_dir().unwrap();
        let path = self.dir.join(name);
        std::fs::write(
            &path,
            format!(
                "domain = \"{domain}\"\nlisten = \"127.0.0.1:0\"\n[auth]\nsecret = \"{SECRET}\"\n\
                 [tls]\ncert = \"{r}/certs/{domain}.pem\"\nkey = \"{r}/certs/{domain}-key.pem\"\n\
                 [federation]\nallow_private_addresses = true\nkey = \"{}\"\nresolver = \"{}\"\nca = \"{r}/certs/ca.pem\"\n\
                 lookup_timeout = \"2s\"\nconnect_timeout = \"2s\"\n{extra}",
                self.key_path(domain).display(),
                self.dns.addr,
                r = root.display()
            ),
        )
        .unwrap();
        path
    }

    pub fn key_path(&self, domain: &str) -> std::path::PathBuf {
        self.dir.join(format!("{domain}.key"))
    }

    /// Starts `domain`'s server with its own certificate and publishes
    /// `_wsp._tcp.<domain>` SRV -> `<domain>`:port and its A record.
    pub async fn server(&self, domain: &str, extra: &str) -> TestServer {
        let s = TestServer::start(self.config(domain, domain, extra)).await;
        self.publish(domain, domain, s.addr());
        s
    }

    /// `_wsp._tcp.<domain>` SRV -> `<target>`:port, and `<target>` A 127.0.0.1.
    pub fn publish(&self, domain: &str, target: &str, addr: SocketAddr) {
        self.dns.add_srv(
            &format!("_wsp._tcp.{domain}"),
            10,
            0,
            addr.port(),
            target,
            60,
        );
        self.dns.add_a(target, std::net::Ipv4Addr::LOCALHOST, 60);
    }
}

// ---- Faults and soak (`faults`, `soak`) ----

impl Net {
    /// Like [`Net::config`], with the DNS server `resolver` and the
    /// `lookup_timeout` given instead of this net's and 2 s.
    pub fn config_dns(
        &self,
        domain: &str,
        cert: &str,
        resolver: SocketAddr,
        lookup_timeout: &str,
        extra: &str,
    ) -> Config {
        config_in(
            domain,
            &format!(
                "[tls]\ncert = \"certs/{cert}.pem\"\nkey = \"certs/{cert}-key.pem\"\n\
                 [federation]\nallow_private_addresses = true\nkey = \"{}\"\nresolver = \"{resolver}\"\nca = \"certs/ca.pem\"\n\
                 lookup_timeout = \"{lookup_timeout}\"\nconnect_timeout = \"2s\"\n{extra}",
                self.key_path(domain).display(),
            ),
            Path::new("."),
        )
    }
}

/// A WSP upgrade request for `url`: subprotocol `wsp-1.0`, bearer `token`.
fn wsp_request(
    url: &str,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("wsp-1.0"),
    );
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    req
}

/// Tries a WSP upgrade (subprotocol `wsp-1.0`, bearer token) on a plain
/// `ws://` URL: the client, or the HTTP status and body of the refusal
/// (status 0 and the error's text when no HTTP answer came at all).
pub async fn try_connect(url: &str, token: &str) -> Result<Client, (u16, String)> {
    let req = wsp_request(url, token);
    match tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(req, None, true),
    )
    .await
    .expect("an answer to the upgrade in time")
    {
        Ok((ws, _)) => Ok(Client { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => Err((0, e.to_string())),
    }
}

/// Log lines written by the servers of this test, captured in memory.
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    /// Captures, until the guard is dropped, every event (down to `debug`
    /// for wspd) emitted on this thread: with `#[tokio::test]`'s
    /// single-threaded runtime, everything the in-process servers log.
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let w = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,wspd=debug"))
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// The lines that contain every one of `words`.
    pub fn lines_with(&self, words: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .map(str::to_string)
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The real `wspd` binary running as a child process, its stderr read
/// all along (a full pipe would block the server) and kept.
pub struct Wspd {
    pub child: tokio::process::Child,
    /// The address it listens on, read from its "listening on" line.
    pub addr: SocketAddr,
    /// Its stderr lines so far; the sender goes at the end of the stream.
    stderr: tokio::sync::watch::Receiver<Vec<String>>,
    /// How many of those lines [`Wspd::wait_for_line`] has gone past.
    seen: usize,
}

impl Wspd {
    /// Starts `wspd --config <config>` with `RUST_LOG` set to `log` and
    /// waits (bounded) for its "listening on" line.
    pub async fn start(config: &Path, log: &str) -> Wspd {
        Wspd::start_with(config, log, &[]).await
    }

    /// [`Wspd::start`] with more arguments (`--log-format json`).
    pub async fn start_with(config: &Path, log: &str, args: &[&str]) -> Wspd {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wspd"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", log)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, stderr) = tokio::sync::watch::channel(Vec::new());
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tx.send_modify(|kept| kept.push(line));
            }
        });
        let mut w = Wspd {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            stderr,
            seen: 0,
        };
        let line = w.wait_for_line("listening on ").await;
        w.addr = line
            .split_once("://")
            .and_then(|(_, r)| r.split_once('/'))
            .and_then(|(a, _)| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        w
    }

    /// Waits (bounded by [`WAIT`]) for a line containing `text`, after the
    /// last line this returned, and returns it.
    pub async fn wait_for_line(&mut self, text: &str) -> String {
        let from = self.seen;
        let find =
            |lines: &Vec<String>| Some(from + lines[from..].iter().position(|l| l.contains(text))?);
        let in_time = tokio::time::timeout(WAIT, self.stderr.wait_for(|l| find(l).is_some()))
            .await
            .is_ok();
        let lines = self.stderr();
        let i = find(&lines).unwrap_or_else(|| {
            let why = if in_time { "wspd ended" } else { "not in time" };
            panic!("no line with {text:?} ({why}):\n{}", lines.join("\n"))
        });
        self.seen = i + 1;
        lines[i].clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("wspd still running")
    }

    /// What it wrote to stderr so far, one entry a line.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.borrow().clone()
    }

    /// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`...).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid()))
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// Open file descriptors (sockets included).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Sends it a signal: `TERM`, `HUP`...
    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits (bounded by [`WAIT`]) for it to exit and for the end of its
    /// stderr, so that [`Wspd::stderr`] then holds every line.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, async {
            let status = self.child.wait().await.unwrap();
            while self.stderr.changed().await.is_ok() {}
            status
        })
        .await
        .expect("wspd exits in time")
    }

    pub async fn metrics(&self) -> String {
        http(self.addr, "GET", "/metrics", &[], "").await.2
    }

    pub fn url(&self) -> String {
        format!("ws://{}/wsp", self.addr)
    }
}

/// A config file for the binary: domain `localhost`, [`SECRET`], the
/// listen address given, then `extra`. Returns its path.
pub fn config_file(dir: &Path, name: &str, listen: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "domain = \"localhost\"\nlisten = \"{listen}\"\n[auth]\nsecret = \"{SECRET}\"\n{extra}\n"
        ),
    )
    .unwrap();
    path
}

/// A token for `user` signed for the user's domain with [`SECRET`] (as a
/// server started by [`config_file`] or [`Net::config_file`] checks it),
/// valid for an hour.
pub fn user_token(user: &str) -> String {
    let user = Address::parse(user).unwrap();
    wspd::auth::Tokens::new(user.domain(), SECRET)
        .mint(&user, Duration::from_secs(3600))
        .0
}

pub mod pebble;

/// A port of 127.0.0.1 free a moment ago (for a child process's config:
/// the port is released before the child binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
