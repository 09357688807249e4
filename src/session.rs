//! One client socket: reads frames, hands them to the router, writes what
//! the router queues in its outbox, keeps the socket alive, and ends its
//! calls when it goes away.
//!
//! The task owns the socket and the list of calls it is part of; everything
//! else reaches it through its bounded outbox, in order.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use smallvec::SmallVec;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, info, info_span};

use crate::address::{Address, CallId};
use crate::call::Outcome;
use crate::config::Limits;
use crate::frame::{self, Body, Keyword};
use crate::limits::TokenBucket;
use crate::metrics::{Metrics, Refusal};
use crate::router::{Out, Peer, Router, close_outbox};

/// The read buffer every socket holds: candidates and most frames fit, a
/// larger SDP grows it for the frame (tungstenite reserves the frame's
/// length once its header is read). It is allocated with the socket and
/// zero-filled before each read, so it is both the largest part of an idle
/// socket's memory and a per-read cost.
const READ_BUFFER: usize = 2048;
/// How many queued messages are written before one flush.
const WRITE_BATCH: usize = 64;
/// Frames are staged in the socket's write buffer until it holds this
/// much, or the batch ends: a batch goes out in one write, not one per
/// frame. The buffer is allocated on the first write, so an idle socket
/// does not pay for it.
const WRITE_BUFFER: usize = 16 * 1024;
/// How long a socket may take to write what was queued for it when the
/// server shuts down.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Why a socket is being closed, and the close frame it gets.
#[derive(Debug)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

impl Close {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Close {
            code,
            reason: reason.into(),
        }
    }
}

/// What a socket does with what it reads: a client session or a link.
pub trait Handler {
    /// A text message arrived. An error closes the socket with it.
    fn on_text(&mut self, text: &str) -> Result<(), Close>;
    /// The peer became a party of this call (queued before its first frame).
    fn on_attach(&mut self, id: CallId);
    /// The call is over for this peer.
    fn on_detach(&mut self, id: CallId);
    /// Called on each keepalive wake-up and at [`Handler::wake_at`];
    /// `Some` closes the socket.
    fn on_tick(&mut self, _now: Instant) -> Option<Close> {
        None
    }
    /// A time the handler wants [`Handler::on_tick`] called by, if any.
    fn wake_at(&self) -> Option<Instant> {
        None
    }
    fn metrics(&self) -> &Metrics;
    /// The socket's span: the parent of what is logged about it. Events
    /// name it as their parent rather than the task entering it: a task
    /// entered for every poll would pay two trips through the subscriber
    /// per frame.
    fn span(&self) -> &Span;
}

/// The socket timings and sizes [`pump`] keeps.
#[derive(Debug, Clone)]
pub struct PumpConfig {
    pub ping_after: Duration,
    pub dead_after: Duration,
    pub max_frame_bytes: usize,
}

impl PumpConfig {
    pub fn from_limits(l: &Limits) -> Self {
        PumpConfig {
            ping_after: l.keepalive_ping,
            dead_after: l.keepalive_timeout,
            max_frame_bytes: l.max_frame_bytes,
        }
    }
}

/// Buffers sized for signalling. tungstenite's default read buffer is
/// 128 KiB per socket; [`READ_BUFFER`] grows on demand up to the frame
/// limit for a large SDP. Writes are staged up to [`WRITE_BUFFER`] so that
/// a batch of frames leaves in one system call (one TLS record) at its
/// flush. See docs/performance.md.
pub fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max_frame_bytes.saturating_mul(4).max(1 << 20))
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

struct Session {
    user: Address,
    me: Peer,
    router: Arc<Router>,
    limits: Limits,
    /// The calls this socket is a party of, oldest first.
    calls: SmallVec<[CallId; 2]>,
    span: Span,
    /// `limits.frames_per_second` with bursts of `limits.frame_burst`.
    bucket: TokenBucket,
}

/// A user's socket registered with the router before its upgrade is
/// answered, so that once the client sees `101` it can be called at once.
/// Frames for it wait in its outbox until [`run`] starts.
pub struct Registered {
    user: Address,
    me: Peer,
    rx: mpsc::Receiver<Out>,
    kill: CancellationToken,
    span: Span,
}

impl Registered {
    pub fn new(
        router: &Router,
        user: Address,
        remote: std::net::SocketAddr,
        limits: &Limits,
        shutdown: &CancellationToken,
    ) -> Registered {
        let (tx, rx) = mpsc::channel(limits.outbox_frames);
        let kill = shutdown.child_token();
        let me = Peer::new(router.next_peer_id(), tx, kill.clone());
        let span = info_span!(parent: None, "session", id = me.id, user = %user, %remote);
        router.register(&user, me.clone());
        router.metrics().sessions.inc();
        Registered {
            user,
            me,
            rx,
            kill,
            span,
        }
    }

    /// The upgrade did not happen: leave, ending any call that already
    /// reached this socket.
    pub fn abandon(mut self, router: &Router, error: &hyper::Error) {
        let calls = leave(router, &self.user, &self.me, &mut self.rx, Vec::new());
        debug!(parent: &self.span, calls, %error, "upgrade failed");
    }
}

/// Unregisters a socket, closes its outbox and tells every call it was
/// part of (known to it, or still queued) that it is gone. Returns how many.
fn leave(
    router: &Router,
    user: &Address,
    me: &Peer,
    rx: &mut mpsc::Receiver<Out>,
    calls: Vec<CallId>,
) -> usize {
    router.unregister(user, me.id);
    let calls = close_outbox(rx, calls);
    for call in &calls {
        router.gone(me.id, call);
    }
    router.metrics().sessions.dec();
    calls.len()
}

/// Runs one authenticated, registered socket to its end.
///
/// An async block rather than an `async fn`: an async fn stores its
/// by-value arguments twice in its state (as captured, and as the locals
/// they are moved into), and this state is what every idle connection's
/// task holds.
pub fn run<S>(
    mut ws: WebSocketStream<S>,
    reg: Registered,
    router: Arc<Router>,
    limits: Limits,
    shutdown: CancellationToken,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Registered {
        user,
        me,
        mut rx,
        kill,
        span,
    } = reg;
    let cfg = PumpConfig::from_limits(&limits);
    let mut s = Session {
        user,
        me,
        router,
        bucket: TokenBucket::new(limits.frames_per_second, limits.frame_burst, Instant::now()),
        limits,
        calls: SmallVec::new(),
        span,
    };
    async move {
        info!(parent: &s.span, "connected");
        let close = pump(&mut ws, &mut rx, &kill, &shutdown, &cfg, &mut s).await;
        let calls = std::mem::take(&mut s.calls).into_vec();
        leave(&s.router, &s.user, &s.me, &mut rx, calls);
        close_socket(&mut ws, close, &s.span).await;
    }
}

/// Drives one socket: reads frames into `h`, writes the outbox in batches,
/// pings when quiet, drops the silent. Returns why it ended: `Some` when
/// the server decided to close (the caller sends the close frame with
/// [`close_socket`]), `None` when the socket ended by itself.
///
/// `kill` must be a child of `shutdown` (`shutdown.child_token()`): it ends
/// this socket alone (a reader too slow), and the server's shutdown ends it
/// with every other. One token is polled per turn of the loop, not two.
pub async fn pump<S, H>(
    ws: &mut WebSocketStream<S>,
    rx: &mut mpsc::Receiver<Out>,
    kill: &CancellationToken,
    shutdown: &CancellationToken,
    cfg: &PumpConfig,
    h: &mut H,
) -> Option<Close>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut last_heard = Instant::now();
    let mut pinged = false;
    let keepalive = sleep_until(last_heard + cfg.ping_after);
    tokio::pin!(keepalive);
    // Grows on the first frame: an idle socket holds no batch buffer.
    let mut batch: Vec<Out> = Vec::new();
    // Registered once: a fresh `cancelled()` in every turn of the loop
    // would take the token's locks to register and unregister its waker
    // for every frame.
    let ended = kill.cancelled();
    tokio::pin!(ended);

    loop {
        tokio::select! {
            biased;
            _ = &mut ended => {
                if !shutdown.is_cancelled() {
                    return Some(Close::new(1008, "reading too slowly: outbox full"));
                }
                // What was queued before the shutdown (the calls' byes 503)
                // goes out first, within a bound.
                let flush = async {
                    while let Ok(out) = rx.try_recv() {
                        batch.push(out);
                        if batch.len() == WRITE_BATCH {
                            write_batch(ws, &mut batch, h).await?;
                        }
                    }
                    write_batch(ws, &mut batch, h).await
                };
                // Boxed: it runs once, at shutdown, and unboxed it would
                // make every socket's task larger for good.
                let _ = Box::pin(tokio::time::timeout(SHUTDOWN_FLUSH, flush)).await;
                return Some(Close::new(1001, "server shutting down"));
            }
            n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    return None;
                }
                // The batch first: it usually completes at once, and the
                // token is only polled while the socket cannot take it.
                let res = tokio::select! {
                    biased;
                    r = write_batch(ws, &mut batch, h) => r,
                    _ = &mut ended => Err(WsError::ConnectionClosed),
                };
                if res.is_err() {
                    return None;
                }
                // Attach/detach may have moved the handler's own deadline.
                if let Some(w) = h.wake_at()
                    && w < keepalive.deadline()
                {
                    keepalive.as_mut().reset(w);
                }
            }
            msg = ws.next() => {
                last_heard = Instant::now();
                if pinged {
                    // The timer waits for the dead line; heard again, the
                    // next ping is due after ping_after of quiet, not 25 s
                    // later.
                    pinged = false;
                    keepalive.as_mut().reset(last_heard + cfg.ping_after);
                }
                match msg {
                    None => return None,
                    Some(Ok(Message::Text(text))) => {
                        if let Err(c) = h.on_text(text.as_str()) {
                            let r = match c.code {
                                1007 => Some(Refusal::BadJson),
                                // A flood: counted where it is caught, in
                                // wspd_limits_hit_total.
                                1008 => None,
                                _ => Some(Refusal::BadFrame),
                            };
                            if let Some(r) = r {
                                h.metrics().refused(r);
                            }
                            return Some(c);
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        h.metrics().refused(Refusal::Binary);
                        return Some(Close::new(1003, "binary messages are not accepted: send JSON text"));
                    }
                    Some(Ok(Message::Close(_))) => {
                        // tungstenite has queued the answer to the peer's
                        // close; send it before hanging up, or the peer
                        // sees an unclean close (a browser reports 1006).
                        let _ = tokio::time::timeout(Duration::from_secs(2), ws.flush()).await;
                        return None;
                    }
                    Some(Ok(_)) => {} // ping (answered by tungstenite), pong
                    Some(Err(WsError::Capacity(_))) => {
                        h.metrics().refused(Refusal::TooBig);
                        return Some(Close::new(1009, format!("message over {} bytes", cfg.max_frame_bytes)));
                    }
                    Some(Err(WsError::Utf8(_))) => {
                        h.metrics().refused(Refusal::BadJson);
                        return Some(Close::new(1007, "text message is not UTF-8"));
                    }
                    Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                        // The connection ended without a close frame (a
                        // tab killed, a network lost): nothing to answer.
                        debug!(parent: h.span(), "connection ended without a close frame");
                        return None;
                    }
                    Some(Err(WsError::Protocol(e))) => {
                        h.metrics().refused(Refusal::BadFrame);
                        return Some(Close::new(1002, format!("WebSocket protocol error: {e}")));
                    }
                    Some(Err(e)) => {
                        debug!(parent: h.span(), error = %e, "socket error");
                        return None;
                    }
                }
            }
            () = &mut keepalive => {
                let now = Instant::now();
                if pinged && now >= last_heard + cfg.dead_after {
                    h.metrics().refused(Refusal::Silent);
                    info!(parent: h.span(), "silent for too long: dropping");
                    return None;
                }
                if let Some(c) = h.on_tick(now) {
                    return Some(c);
                }
                if !pinged && now >= last_heard + cfg.ping_after {
                    pinged = true;
                    if ws.send(Message::Ping(Default::default())).await.is_err() {
                        return None;
                    }
                }
                let next = if pinged { last_heard + cfg.dead_after } else { last_heard + cfg.ping_after };
                let next = h
                    .wake_at()
                    .map_or(next, |w| w.max(now + Duration::from_millis(10)).min(next));
                keepalive.as_mut().reset(next);
            }
        }
    }
}

/// Sends the close frame (when there is one) and gives the other side a
/// moment to answer it.
pub async fn close_socket<S>(ws: &mut WebSocketStream<S>, close: Option<Close>, span: &Span)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(Close { code, reason }) = close else {
        info!(parent: span, "disconnected");
        return;
    };
    info!(parent: span, code, reason = %reason, "closing");
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: close_reason(reason).into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// A close reason fits in a control frame: 123 bytes at most, cut on a
/// character boundary.
fn close_reason(mut reason: String) -> String {
    const MAX: usize = 123;
    if reason.len() > MAX {
        let mut end = MAX - 3;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
    reason
}

/// Writes queued frames with one flush, and applies attach/detach.
async fn write_batch<S, H>(
    ws: &mut WebSocketStream<S>,
    batch: &mut Vec<Out>,
    h: &mut H,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut wrote = false;
    for out in batch.drain(..) {
        match out {
            Out::Frame(text) => {
                ws.feed(Message::Text(text)).await?;
                wrote = true;
            }
            Out::Attach(id) => h.on_attach(id),
            Out::Detach(id) => h.on_detach(id),
        }
    }
    if wrote {
        ws.flush().await?;
    }
    Ok(())
}

impl Handler for Session {
    fn on_text(&mut self, text: &str) -> Result<(), Close> {
        Session::on_text(self, text)
    }

    fn on_attach(&mut self, id: CallId) {
        self.calls.push(id);
    }

    fn on_detach(&mut self, id: CallId) {
        self.calls.retain(|c| *c != id);
    }

    fn metrics(&self) -> &Metrics {
        self.router.metrics()
    }

    fn span(&self) -> &Span {
        &self.span
    }
}

impl Session {
    /// Handles one text message. An error closes the socket.
    fn on_text(&mut self, text: &str) -> Result<(), Close> {
        if !self.bucket.take(Instant::now()) {
            self.router.metrics().limit_hit("frames_per_second");
            return Err(Close::new(
                1008,
                format!(
                    "too many frames: at most {} a second, in bursts of {}",
                    self.limits.frames_per_second, self.limits.frame_burst
                ),
            ));
        }
        // pump() counts the refusal when this error closes the socket.
        let f = frame::decode(text).map_err(|e| Close::new(e.close_code(), e.to_string()))?;
        self.router.metrics().frame(f.keyword);

        if let Body::Invite(inv) = &f.body {
            let id = f.call.clone().unwrap_or_else(CallId::random);
            self.invite(&id, &inv.caller_uri, &inv.callee_uri, inv.raw);
            return Ok(());
        }

        let id = match (&f.call, self.calls.as_slice()) {
            (Some(id), _) => id.clone(),
            (None, [only]) => only.clone(),
            (None, []) => {
                self.router.bye(&self.me, 481, "No such call", None);
                return Ok(());
            }
            (None, _) => {
                self.router.bye(
                    &self.me,
                    400,
                    "options.call is required while this socket has several calls",
                    None,
                );
                return Ok(());
            }
        };
        self.router
            .frame(&self.me, &id, f.keyword, f.body.raw(), f.body.bye_code());
        if f.keyword == Keyword::Bye {
            // A bye ends or hands off the call for this socket whatever the
            // call says; forget it here at once so a following frame without
            // options.call does not mean it.
            if let Some(code) = f.body.bye_code()
                && code != 101
            {
                self.calls.retain(|c| *c != id);
            }
        }
        Ok(())
    }

    fn invite(&mut self, id: &CallId, caller_uri: &str, callee_uri: &str, raw: &str) {
        let metrics = self.router.metrics();
        if Address::parse(caller_uri).ok().as_ref() != Some(&self.user) {
            metrics.call_ended(Outcome::Forbidden);
            info!(parent: &self.span, call = %id, "refused invite: caller is not this socket's user");
            return self.router.bye(
                &self.me,
                403,
                "caller.uri is not the user of this socket",
                Some(id),
            );
        }
        let callee = match Address::parse(callee_uri) {
            Ok(a) => a,
            Err(e) => {
                metrics.call_ended(Outcome::BadRequest);
                return self
                    .router
                    .bye(&self.me, 400, &format!("callee.uri: {e}"), Some(id));
            }
        };
        if self.calls.len() >= self.limits.calls_per_socket {
            metrics.call_ended(Outcome::Unavailable);
            metrics.limit_hit("calls_per_socket");
            return self
                .router
                .bye(&self.me, 503, "Too many calls on this socket", Some(id));
        }
        match self.router.invite(&self.me, &self.user, &callee, id, raw) {
            Ok(()) => self.calls.push(id.clone()),
            Err(r) => {
                metrics.call_ended(r.outcome);
                debug!(parent: &self.span, call = %id, code = r.code, "invite refused");
                self.router.bye(&self.me, r.code, r.description, Some(id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn close_reasons_fit_a_control_frame() {
        let long = "é".repeat(100);
        let r = super::close_reason(long);
        assert!(r.len() <= 123 && r.ends_with("..."), "{}", r.len());
        assert_eq!(super::close_reason("short".into()), "short");
    }
}
