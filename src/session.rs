//! One client socket: reads frames, hands them to the router, writes what
//! the router queues in its outbox, keeps the socket alive, and ends its
//! calls when it goes away.
//!
//! The task owns the socket and the list of calls it is part of; everything
//! else reaches it through its bounded outbox, in order.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

use crate::address::{Address, CallId};
use crate::call::Outcome;
use crate::config::Limits;
use crate::frame::{self, Body, Keyword};
use crate::metrics::Refusal;
use crate::router::{Out, Peer, Router};

/// How many queued messages are written before one flush.
const WRITE_BATCH: usize = 64;

/// Why the session ends, and the close frame it sends.
struct Close {
    code: u16,
    reason: String,
}

impl Close {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Close {
            code,
            reason: reason.into(),
        }
    }
}

struct Session {
    user: Address,
    me: Peer,
    router: Arc<Router>,
    limits: Limits,
    /// The calls this socket is a party of, oldest first.
    calls: SmallVec<[CallId; 2]>,
}

/// Runs one authenticated socket to its end.
pub async fn run<S>(
    ws: WebSocketStream<S>,
    user: Address,
    router: Arc<Router>,
    limits: Limits,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = router.next_peer_id();
    let span = info_span!("session", id, user = %user);
    async move {
        let (tx, rx) = mpsc::channel(limits.outbox_frames);
        let kill = CancellationToken::new();
        let me = Peer::new(id, tx, kill.clone());
        router.register(&user, me.clone());
        router.metrics().sessions.inc();
        info!("connected");
        let mut s = Session {
            user,
            me,
            router,
            limits,
            calls: SmallVec::new(),
        };
        s.drive(ws, rx, kill, shutdown).await;
        s.router.unregister(&s.user, s.me.id);
        for call in std::mem::take(&mut s.calls) {
            s.router.gone(s.me.id, &call);
        }
        s.router.metrics().sessions.dec();
    }
    .instrument(span)
    .await
}

impl Session {
    async fn drive<S>(
        &mut self,
        mut ws: WebSocketStream<S>,
        mut rx: mpsc::Receiver<Out>,
        kill: CancellationToken,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let router = self.router.clone();
        let metrics = || router.metrics();
        let ping_after = self.limits.keepalive_ping;
        let dead_after = self.limits.keepalive_timeout;
        let mut last_heard = Instant::now();
        let mut pinged = false;
        let keepalive = sleep_until(last_heard + ping_after);
        tokio::pin!(keepalive);
        let mut batch: Vec<Out> = Vec::with_capacity(WRITE_BATCH);

        let close = loop {
            tokio::select! {
                biased;
                _ = kill.cancelled() => {
                    break Some(Close::new(1008, "reading too slowly: outbox full"));
                }
                _ = shutdown.cancelled() => {
                    break Some(Close::new(1001, "server shutting down"));
                }
                n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                    if n == 0 {
                        break None;
                    }
                    let write = self.write_batch(&mut ws, &mut batch);
                    let res = tokio::select! {
                        r = write => r,
                        _ = kill.cancelled() => Err(WsError::ConnectionClosed),
                        _ = shutdown.cancelled() => Err(WsError::ConnectionClosed),
                    };
                    if res.is_err() {
                        break None;
                    }
                }
                msg = ws.next() => {
                    last_heard = Instant::now();
                    pinged = false;
                    match msg {
                        None => break None,
                        Some(Ok(Message::Text(text))) => {
                            if let Err(c) = self.on_text(text.as_str()) {
                                break Some(c);
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            metrics().refused(Refusal::Binary);
                            break Some(Close::new(1003, "binary messages are not accepted: send JSON text"));
                        }
                        Some(Ok(Message::Close(_))) => break None,
                        Some(Ok(_)) => {} // ping (answered by tungstenite), pong
                        Some(Err(WsError::Capacity(_))) => {
                            metrics().refused(Refusal::TooBig);
                            break Some(Close::new(
                                1009,
                                format!("message over {} bytes", self.limits.max_frame_bytes),
                            ));
                        }
                        Some(Err(WsError::Utf8(_))) => {
                            metrics().refused(Refusal::BadJson);
                            break Some(Close::new(1007, "text message is not UTF-8"));
                        }
                        Some(Err(WsError::Protocol(e))) => {
                            metrics().refused(Refusal::BadFrame);
                            break Some(Close::new(1002, format!("WebSocket protocol error: {e}")));
                        }
                        Some(Err(e)) => {
                            debug!(error = %e, "socket error");
                            break None;
                        }
                    }
                }
                () = &mut keepalive => {
                    let now = Instant::now();
                    if pinged && now >= last_heard + dead_after {
                        metrics().refused(Refusal::Silent);
                        info!("silent for too long: dropping");
                        break None;
                    }
                    if !pinged && now >= last_heard + ping_after {
                        pinged = true;
                        if ws.send(Message::Ping(Default::default())).await.is_err() {
                            break None;
                        }
                    }
                    let next = if pinged { last_heard + dead_after } else { last_heard + ping_after };
                    keepalive.as_mut().reset(next);
                }
            }
        };

        if let Some(Close { code, reason }) = close {
            info!(code, reason = %reason, "closing");
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            // Say why, then give the client a moment to answer the close.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                if ws.close(Some(frame)).await.is_ok() {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            })
            .await;
        } else {
            info!("disconnected");
        }
    }

    /// Writes queued frames with one flush, and applies attach/detach.
    async fn write_batch<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        batch: &mut Vec<Out>,
    ) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut wrote = false;
        for out in batch.drain(..) {
            match out {
                Out::Frame(text) => {
                    ws.feed(Message::Text(text)).await?;
                    wrote = true;
                }
                Out::Attach(id) => self.calls.push(id),
                Out::Detach(id) => self.calls.retain(|c| *c != id),
            }
        }
        if wrote {
            ws.flush().await?;
        }
        Ok(())
    }

    /// Handles one text message. An error closes the socket.
    fn on_text(&mut self, text: &str) -> Result<(), Close> {
        let f = frame::decode(text).map_err(|e| {
            let r = if e.close_code() == 1007 {
                Refusal::BadJson
            } else {
                Refusal::BadFrame
            };
            self.router.metrics().refused(r);
            Close::new(e.close_code(), e.to_string())
        })?;
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
            info!(call = %id, "refused invite: caller is not this socket's user");
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
            return self
                .router
                .bye(&self.me, 503, "Too many calls on this socket", Some(id));
        }
        match self.router.invite(&self.me, &self.user, &callee, id, raw) {
            Ok(()) => self.calls.push(id.clone()),
            Err(r) => {
                metrics.call_ended(r.outcome);
                debug!(call = %id, code = r.code, "invite refused");
                self.router.bye(&self.me, r.code, r.description, Some(id));
            }
        }
    }
}
