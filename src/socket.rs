//! The WebSocket pump shared by every socket: client sockets and links.
//!
//! [`pump`] reads messages into a [`Handler`] (what the frames mean is the
//! handler's business), writes the peer's outbox in batches, pings a quiet
//! socket and drops a silent one, and returns why it ended; [`close_socket`]
//! then sends the close frame. Each of those is a small function here; the
//! loop only chooses which runs next.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::{Sink, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, info};

use crate::address::CallId;
use crate::config::Limits;
use crate::frame::{Close, CloseCode, FrameError};
use crate::logging::Escaped;
use crate::metrics::{Metrics, Refusal};
use crate::peer::{Out, Outbox};

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
/// How long the other side has to answer a close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What a socket does with what it reads: a client session or a link.
pub trait Handler {
    /// A text message arrived. An error closes the socket with it (the
    /// handler has counted why).
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

/// A frame that could not be decoded: counted, and the close it causes.
pub fn bad_frame(e: FrameError, metrics: &Metrics) -> Close {
    metrics.refused(match e {
        FrameError::NotJson => Refusal::BadJson,
        _ => Refusal::BadFrame,
    });
    Close::from(e)
}

/// The socket timings and sizes [`pump`] keeps.
#[derive(Debug, Clone)]
pub struct PumpConfig {
    pub ping_after: Duration,
    pub dead_after: Duration,
    pub write_timeout: Duration,
    pub max_frame_bytes: usize,
}

impl PumpConfig {
    pub fn from_limits(l: &Limits) -> Self {
        PumpConfig {
            ping_after: l.keepalive_ping,
            dead_after: l.keepalive_timeout,
            write_timeout: l.write_timeout,
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

/// Drives one socket: reads frames into `h`, writes the outbox in batches,
/// pings when quiet, drops the silent and the stalled. Returns why it
/// ended: `Some` when the server decided to close (the caller sends the
/// close frame with [`close_socket`]), `None` when the socket ended by
/// itself.
///
/// The outbox's kill switch is a child of `shutdown`: it ends this socket
/// alone (a reader too slow), and the server's shutdown ends it with every
/// other. One token is polled per turn of the loop, not two.
///
/// One timer serves the keepalive, the handler's deadline and, while a
/// write is blocked, the write's: a socket that takes no bytes for
/// `write_timeout` is closed, and the keepalive's dead line still holds.
pub async fn pump<S, H>(
    ws: &mut WebSocketStream<S>,
    outbox: &mut Outbox,
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
    let timer = sleep_until(keepalive::next(last_heard, pinged, last_heard, None, cfg));
    tokio::pin!(timer);
    // Grows on the first frame: an idle socket holds no batch buffer.
    let mut batch: Vec<Out> = Vec::new();
    // Registered once: a fresh `cancelled()` in every turn of the loop
    // would take the token's locks to register and unregister its waker
    // for every frame.
    let Outbox { rx, shared } = outbox;
    let ended = shared.kill().cancelled();
    tokio::pin!(ended);

    loop {
        let mut ping = false;
        tokio::select! {
            biased;
            _ = &mut ended => return Some(killed(ws, rx, &mut batch, h, shutdown).await),
            n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    return None;
                }
                mark(&mut batch, h);
                // Attach/detach may have moved the handler's own deadline.
                if let Some(w) = h.wake_at()
                    && w < timer.deadline()
                {
                    timer.as_mut().reset(w);
                }
            }
            msg = ws.next() => {
                if let Some(next) = keepalive::heard(&mut last_heard, &mut pinged, Instant::now(), cfg) {
                    timer.as_mut().reset(next);
                }
                // Decided before any await, so that no temporary of the
                // decision is kept in the task across it.
                let answer_close = match read(msg, h, cfg.max_frame_bytes) {
                    Read::Go => false,
                    Read::End(close) => return close,
                    Read::AnswerClose => true,
                };
                if answer_close {
                    // tungstenite has queued the answer to the peer's
                    // close: send it, or the peer sees an unclean close.
                    let _ = tokio::time::timeout(CLOSE_WAIT, ws.flush()).await;
                    return None;
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                match keepalive::due(last_heard, &mut pinged, now, h, cfg, false) {
                    Due::Nothing => {}
                    Due::Ping => ping = true,
                    Due::Dead => return None,
                    Due::Close(c) => return Some(c),
                }
                timer
                    .as_mut()
                    .reset(keepalive::next(last_heard, pinged, now, h.wake_at(), cfg));
            }
        }
        if batch.is_empty() && !ping {
            continue;
        }
        // The write, polled by hand (see [`Writing`]).
        let mut w = Writing::new(ping);
        // Polled once first: a write usually completes at once, and then
        // neither the token nor the timer is touched.
        let wrote = match std::future::poll_fn(|cx| Poll::Ready(w.poll(ws, &mut batch, cx))).await {
            Poll::Ready(r) => Wrote::Done(r.ok()),
            Poll::Pending => {
                // The socket does not take what is written: from now on
                // the timer watches the write too.
                let now = Instant::now();
                let mut stall = Stall::new(now, cfg);
                timer.as_mut().reset(keepalive::blocked_next(
                    last_heard,
                    now,
                    stall.line,
                    h.wake_at(),
                    cfg,
                ));
                loop {
                    tokio::select! {
                        biased;
                        r = std::future::poll_fn(|cx| w.poll(ws, &mut batch, cx)) => break Wrote::Blocked(r.ok()),
                        _ = &mut ended => break Wrote::Killed,
                        () = &mut timer => match blocked_tick(&mut stall, w.steps, last_heard, &mut pinged, h, cfg) {
                            Ok(next) => timer.as_mut().reset(next),
                            Err(end) => break end,
                        },
                    }
                }
            }
        };
        // No await in this match: `wrote` would be kept in the task.
        let killed_meanwhile = match wrote {
            Wrote::Done(Some(bytes)) => {
                shared.written(bytes);
                false
            }
            Wrote::Blocked(Some(bytes)) => {
                shared.written(bytes);
                // Back to the keepalive's own line (a ping that fell due
                // while the write was blocked goes out now).
                let now = Instant::now();
                timer
                    .as_mut()
                    .reset(keepalive::next(last_heard, pinged, now, h.wake_at(), cfg));
                false
            }
            Wrote::Done(None) | Wrote::Blocked(None) | Wrote::Dead => return None,
            Wrote::Killed => true,
            Wrote::Stalled => return Some(stalled(h, cfg)),
            Wrote::Close(c) => return Some(c),
        };
        if killed_meanwhile {
            // What was not written yet goes first if the server is
            // shutting down.
            batch.drain(..w.sent);
            return Some(killed(ws, rx, &mut batch, h, shutdown).await);
        }
    }
}

/// How a write ended.
enum Wrote {
    /// At once: the bytes of frames written, or `None` if the socket
    /// failed (it is over; the error is not kept, for the task's size).
    Done(Option<usize>),
    /// After blocking for a while.
    Blocked(Option<usize>),
    /// The kill switch fired meanwhile.
    Killed,
    /// No progress for `write_timeout`.
    Stalled,
    /// Silent past the keepalive's dead line meanwhile.
    Dead,
    /// The handler's deadline closed the socket meanwhile.
    Close(Close),
}

/// Watches a blocked write's progress (the steps [`Writing`] counts):
/// stalled when a whole `write_timeout` passed without a step, so a socket
/// taking nothing is closed between one and two `write_timeout`s after its
/// last progress.
struct Stall {
    seen: u32,
    line: Instant,
}

impl Stall {
    fn new(now: Instant, cfg: &PumpConfig) -> Stall {
        Stall {
            seen: 0,
            line: now + cfg.write_timeout,
        }
    }

    /// At `now`: true when no step was made since the last line.
    fn stalled(&mut self, steps: u32, now: Instant, cfg: &PumpConfig) -> bool {
        if now < self.line {
            return false;
        }
        if steps == self.seen {
            return true;
        }
        self.seen = steps;
        self.line = now + cfg.write_timeout;
        false
    }
}

/// The timer fired while a write is blocked: what ends the socket, or when
/// to look again. No ping is sent meanwhile (it would wait behind the
/// write), but the dead line and the handler's deadline hold.
fn blocked_tick<H: Handler>(
    stall: &mut Stall,
    steps: u32,
    last_heard: Instant,
    pinged: &mut bool,
    h: &mut H,
    cfg: &PumpConfig,
) -> Result<Instant, Wrote> {
    let now = Instant::now();
    if stall.stalled(steps, now, cfg) {
        return Err(Wrote::Stalled);
    }
    match keepalive::due(last_heard, pinged, now, h, cfg, true) {
        Due::Nothing | Due::Ping => {}
        Due::Dead => return Err(Wrote::Dead),
        Due::Close(c) => return Err(Wrote::Close(c)),
    }
    Ok(keepalive::blocked_next(
        last_heard,
        now,
        stall.line,
        h.wake_at(),
        cfg,
    ))
}

/// The socket took nothing for `write_timeout`: counted and logged.
fn stalled<H: Handler>(h: &H, cfg: &PumpConfig) -> Close {
    h.metrics().refused(Refusal::WriteTimeout);
    info!(parent: h.span(), timeout = ?cfg.write_timeout, "writes stalled: closing");
    Close::new(CloseCode::Policy, "not reading: writes stalled")
}

/// The kill switch fired: the reader was too slow for its outbox, or the
/// server is shutting down, when what was queued first goes out.
async fn killed<S, H>(
    ws: &mut WebSocketStream<S>,
    rx: &mut mpsc::Receiver<Out>,
    batch: &mut Vec<Out>,
    h: &mut H,
    shutdown: &CancellationToken,
) -> Close
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    if !shutdown.is_cancelled() {
        return Close::new(CloseCode::Policy, "reading too slowly: outbox full");
    }
    // Boxed: it runs once, at shutdown, and unboxed it would make every
    // socket's task larger for good.
    Box::pin(flush_for_shutdown(ws, rx, batch, h)).await;
    Close::new(CloseCode::GoingAway, "server shutting down")
}

/// What one read from the socket leads to.
enum Read {
    /// Keep going.
    Go,
    /// The socket is over: closed by the server with this frame, or
    /// (`None`) ended by itself.
    End(Option<Close>),
    /// The peer sent a close frame: answer it, then end.
    AnswerClose,
}

/// Hands a text message to the handler; refuses anything else.
fn read<H: Handler>(msg: Option<Result<Message, WsError>>, h: &mut H, max_frame: usize) -> Read {
    let refuse = |h: &H, why: Refusal, close: Close| {
        h.metrics().refused(why);
        Read::End(Some(close))
    };
    match msg {
        None => Read::End(None),
        Some(Ok(Message::Text(text))) => match h.on_text(text.as_str()) {
            Ok(()) => Read::Go,
            Err(c) => Read::End(Some(c)),
        },
        Some(Ok(Message::Binary(_))) => refuse(
            h,
            Refusal::Binary,
            Close::new(
                CloseCode::Unsupported,
                "binary messages are not accepted: send JSON text",
            ),
        ),
        Some(Ok(Message::Close(_))) => Read::AnswerClose,
        Some(Ok(_)) => Read::Go, // ping (answered by tungstenite), pong
        Some(Err(WsError::Capacity(_))) => refuse(
            h,
            Refusal::TooBig,
            Close::new(CloseCode::TooBig, format!("message over {max_frame} bytes")),
        ),
        Some(Err(WsError::Utf8(_))) => refuse(
            h,
            Refusal::BadJson,
            Close::new(CloseCode::NotJson, "text message is not UTF-8"),
        ),
        Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
            // The connection ended without a close frame (a tab killed, a
            // network lost): nothing to answer.
            debug!(parent: h.span(), "connection ended without a close frame");
            Read::End(None)
        }
        Some(Err(WsError::Protocol(e))) => refuse(
            h,
            Refusal::BadFrame,
            Close::new(
                CloseCode::Protocol,
                format!("WebSocket protocol error: {e}"),
            ),
        ),
        Some(Err(e)) => {
            debug!(parent: h.span(), error = %Escaped(&e), "socket error");
            Read::End(None)
        }
    }
}

/// What the keepalive timer found due.
enum Due {
    Nothing,
    /// Quiet for `ping_after`: send a ping.
    Ping,
    /// Pinged and still silent at `dead_after`: drop the socket.
    Dead,
    /// The handler's own deadline closes the socket.
    Close(Close),
}

/// When to ping a quiet socket and when to give up on a silent one. The
/// state is two locals of the pump, `last_heard` and `pinged`, and the
/// timings are the [`PumpConfig`]'s: as a struct it would add its padding
/// to every idle socket's task.
mod keepalive {
    use super::*;

    /// Something was read at `now`. Returns the timer's new deadline when
    /// it moved: once pinged, the timer waits for the dead line; heard
    /// again, the next ping is due after `ping_after` of quiet, not 25 s
    /// later.
    pub(super) fn heard(
        last_heard: &mut Instant,
        pinged: &mut bool,
        now: Instant,
        cfg: &PumpConfig,
    ) -> Option<Instant> {
        *last_heard = now;
        if !std::mem::take(pinged) {
            return None;
        }
        Some(now + cfg.ping_after)
    }

    /// What is due when the timer fires at `now`. While a write is
    /// blocked (`writing`) no ping is due: it could not go out, and nothing
    /// is read meanwhile. The dead line then holds whether or not a ping
    /// went out: a socket that has neither taken nor sent anything for
    /// `dead_after` is dropped.
    pub(super) fn due<H: Handler>(
        last_heard: Instant,
        pinged: &mut bool,
        now: Instant,
        h: &mut H,
        cfg: &PumpConfig,
        writing: bool,
    ) -> Due {
        if (*pinged || writing) && now >= last_heard + cfg.dead_after {
            h.metrics().refused(Refusal::Silent);
            info!(parent: h.span(), "silent for too long: dropping");
            return Due::Dead;
        }
        if let Some(c) = h.on_tick(now) {
            return Due::Close(c);
        }
        if !writing && !*pinged && now >= last_heard + cfg.ping_after {
            *pinged = true;
            return Due::Ping;
        }
        Due::Nothing
    }

    /// When the timer should fire next: the keepalive's own line, or the
    /// handler's deadline if sooner (but not in a busy loop).
    pub(super) fn next(
        last_heard: Instant,
        pinged: bool,
        now: Instant,
        wake: Option<Instant>,
        cfg: &PumpConfig,
    ) -> Instant {
        let next = last_heard
            + if pinged {
                cfg.dead_after
            } else {
                cfg.ping_after
            };
        wake.map_or(next, |w| w.max(now + Duration::from_millis(10)).min(next))
    }

    /// When the timer should fire next while a write is blocked: at the
    /// write's `stall_line`, the dead line, or the handler's deadline,
    /// whichever is first.
    pub(super) fn blocked_next(
        last_heard: Instant,
        now: Instant,
        stall_line: Instant,
        wake: Option<Instant>,
        cfg: &PumpConfig,
    ) -> Instant {
        let next = stall_line.min(last_heard + cfg.dead_after);
        wake.map_or(next, |w| w.max(now + Duration::from_millis(10)).min(next))
    }
}

/// Writes what was queued before the shutdown (the calls' byes 503) before
/// the close frame, within [`SHUTDOWN_FLUSH`].
async fn flush_for_shutdown<S, H>(
    ws: &mut WebSocketStream<S>,
    rx: &mut mpsc::Receiver<Out>,
    batch: &mut Vec<Out>,
    h: &mut H,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let flush = async {
        loop {
            while batch.len() < WRITE_BATCH
                && let Ok(out) = rx.try_recv()
            {
                batch.push(out);
            }
            mark(batch, h);
            if batch.is_empty() {
                return Ok::<_, WsError>(());
            }
            let mut w = Writing::new(false);
            std::future::poll_fn(|cx| w.poll(ws, batch, cx)).await?;
        }
    };
    let _ = tokio::time::timeout(SHUTDOWN_FLUSH, flush).await;
}

/// Applies a batch's attach and detach marks to the handler, leaving its
/// frames. All of a batch's marks are applied before any of its frames is
/// written, so that a write that fails halfway loses no mark: the calls
/// the handler knows are the calls it must end.
fn mark<H: Handler>(batch: &mut Vec<Out>, h: &mut H) {
    for out in batch.extract_if(.., |out| !matches!(out, Out::Frame(_))) {
        match out {
            Out::Attach(id) => h.on_attach(id),
            Out::Detach(id) => h.on_detach(id),
            Out::Frame(_) => {}
        }
    }
}

/// A batch being written: the frames of `batch` (marks already applied),
/// a ping first if asked, then one flush. Polled by hand rather than
/// written as an async fn: its state is these few fields, where an async
/// fn would keep a `Feed` future with its message in every socket's task.
struct Writing {
    ping: bool,
    /// Frames of the batch handed to the socket so far.
    sent: usize,
    /// Their bytes.
    bytes: usize,
    /// Frames handed over, and the flush: how a blocked write shows its
    /// progress.
    steps: u32,
}

impl Writing {
    fn new(ping: bool) -> Writing {
        Writing {
            ping,
            sent: 0,
            bytes: 0,
            steps: 0,
        }
    }

    /// Goes on writing; ready with the bytes of frames written once all
    /// are flushed, when the batch is empty again.
    fn poll<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        batch: &mut Vec<Out>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<usize, WsError>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut ws = Pin::new(ws);
        if self.ping {
            ready!(ws.as_mut().poll_ready(cx))?;
            ws.as_mut().start_send(Message::Ping(Default::default()))?;
            self.ping = false;
        }
        while let Some(out) = batch.get_mut(self.sent) {
            ready!(ws.as_mut().poll_ready(cx))?;
            let out = std::mem::replace(out, Out::Frame(Default::default()));
            self.sent += 1;
            if let Out::Frame(text) = out {
                self.bytes += text.len();
                ws.as_mut().start_send(Message::Text(text))?;
                self.steps = self.steps.wrapping_add(1);
            }
        }
        ready!(ws.as_mut().poll_flush(cx))?;
        self.steps = self.steps.wrapping_add(1);
        batch.clear();
        Poll::Ready(Ok(self.bytes))
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
    info!(parent: span, code = code.get(), reason = %Escaped(&reason), "closing");
    let frame = CloseFrame {
        code: WsCloseCode::from(code.get()),
        reason: close_reason(reason.into_owned()).into(),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
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
