//! The client socket's handler: what a user's frames mean. It rate-limits
//! them, decodes them, works out which call a frame belongs to, and hands
//! invites and frames to the router. The socket itself (reading, writing
//! the outbox, keepalive, closing) is [`crate::socket`]'s.
//!
//! The task owns the socket and the list of calls it is part of; everything
//! else reaches it through its bounded outbox, in order.

use std::sync::Arc;

use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, info, info_span};

use crate::address::{Address, CallId};
use crate::config::Limits;
use crate::frame::{self, Body, ByeCode, Close, CloseCode, Keyword, ServerBye};
use crate::limits::TokenBucket;
use crate::logging::Escaped;
use crate::metrics::Metrics;
use crate::peer::{Bounds, Out, Outbox, Peer, close_outbox};
use crate::router::{Router, Via};
use crate::socket::{self, Handler, PumpConfig};

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
    outbox: Outbox,
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
        let (me, outbox) = Peer::new(
            router.next_peer_id(),
            Bounds {
                messages: limits.outbox_frames,
                bytes: limits.outbox_bytes,
            },
            shutdown,
        );
        let span = info_span!(parent: None, "session", id = me.id, user = %user, %remote);
        router.register(&user, me.clone());
        router.metrics().sessions.inc();
        Registered {
            user,
            me,
            outbox,
            span,
        }
    }

    /// The upgrade did not happen: leave, ending any call that already
    /// reached this socket.
    pub fn abandon(mut self, router: &Router, error: &hyper::Error) {
        let calls = leave(
            router,
            &self.user,
            &self.me,
            &mut self.outbox.rx,
            Vec::new(),
        );
        debug!(parent: &self.span, calls, error = %Escaped(error), "upgrade failed");
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
        mut outbox,
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
        let close = socket::pump(&mut ws, &mut outbox, &shutdown, &cfg, &mut s).await;
        let calls = std::mem::take(&mut s.calls).into_vec();
        leave(&s.router, &s.user, &s.me, &mut outbox.rx, calls);
        socket::close_socket(&mut ws, close, &s.span).await;
    }
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
                CloseCode::Policy,
                format!(
                    "too many frames: at most {} a second, in bursts of {}",
                    self.limits.frames_per_second, self.limits.frame_burst
                ),
            ));
        }
        let f = frame::decode(text).map_err(|e| socket::bad_frame(e, self.router.metrics()))?;
        self.router.metrics().frame(f.keyword);

        if let Body::Invite(inv) = &f.body {
            let id = f.call.clone().unwrap_or_else(CallId::random);
            let via = Via::Socket {
                user: &self.user,
                calls: self.calls.len(),
            };
            if self
                .router
                .invite(&self.me, via, &self.span, &id, inv, f.traceparent)
            {
                self.calls.push(id);
            }
            return Ok(());
        }

        let Some(id) = self.call_of(f.call.as_ref()) else {
            return Ok(());
        };
        let bye_code = f.body.bye_code();
        self.router
            .frame(&self.me, false, &id, f.keyword, f.body.raw(), bye_code);
        if f.keyword == Keyword::Bye && bye_code != Some(ByeCode::TRANSFERRED) {
            // A bye ends the call for this socket whatever the call says;
            // forget it here at once so a following frame without
            // options.call does not mean it.
            self.calls.retain(|c| *c != id);
        }
        Ok(())
    }

    /// The call a frame belongs to: the one it names, else this socket's
    /// only call. Without either, the socket is told why and gets `None`.
    fn call_of(&self, named: Option<&CallId>) -> Option<CallId> {
        match (named, self.calls.as_slice()) {
            (Some(id), _) => Some(id.clone()),
            (None, [only]) => Some(only.clone()),
            (None, []) => {
                self.router.bye(&self.me, ServerBye::NO_SUCH_CALL, None);
                None
            }
            (None, _) => {
                self.router.bye(&self.me, ServerBye::CALL_REQUIRED, None);
                None
            }
        }
    }
}
