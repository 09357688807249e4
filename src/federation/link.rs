//! One link's handler: what the frames from another domain's server mean,
//! and the run of a link, either direction, from up to down.
//!
//! A link is a [`Peer`] of the router like a client socket: the router
//! queues the frames of its calls in the link's outbox (frames carry their
//! call id) and the link feeds what arrives from the other server back to
//! the router as frames of that peer. On the caller's server the link is
//! the call's one device; on the callee's server it is the caller.
//!
//! Invites flow only from origin to destination: a link opened by a.test to
//! b.test carries calls from a.test's users to b.test's users, and every
//! frame of those calls both ways. Calls the other way use b.test's own
//! link to a.test.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{Span, info, warn};

use crate::address::CallId;
use crate::frame::{self, Body, Close, CloseCode, ServerBye};
use crate::limits::TokenBucket;
use crate::metrics::Metrics;
use crate::peer::{Outbox, Peer, close_outbox};
use crate::router::{Router, Via};
use crate::socket::{self, Handler, PumpConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Opened by this server: invites go out.
    Out,
    /// Accepted from the origin: invites come in.
    In,
}

impl Direction {
    /// The `direction` label of `wspd_links`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// What a link needs to run, whichever way it was opened.
pub struct LinkRun {
    pub dir: Direction,
    /// The other server's domain.
    pub remote: String,
    pub peer: Peer,
    pub outbox: Outbox,
    pub router: Arc<Router>,
    pub span: Span,
    pub idle_after: Duration,
    /// The origin's invites per second (inbound links).
    pub invites: TokenBucket,
    /// Calls in flight from the origin, at most (inbound links).
    pub max_calls: usize,
}

/// Runs an open link to its end: pumps it, calls `unlist` (no new call may
/// pick the link from then on), ends every call still on it (410 for the
/// other side) and sends the close frame. The link is counted in
/// `wspd_links` while it runs.
pub async fn run<S>(
    ws: &mut WebSocketStream<S>,
    link: LinkRun,
    cfg: &PumpConfig,
    shutdown: &CancellationToken,
    unlist: impl FnOnce(),
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let LinkRun {
        dir,
        remote,
        peer,
        mut outbox,
        router,
        span,
        idle_after,
        invites,
        max_calls,
    } = link;
    let metrics = router.metrics();
    metrics.link_up(dir.as_str(), 1);
    let id = peer.id;
    let mut h = LinkHandler {
        dir,
        remote,
        peer,
        router: router.clone(),
        calls: Vec::new(),
        // An outbound link is opened for a call, which is queued already;
        // until its Attach is written, it counts as idle.
        idle_since: (dir == Direction::Out).then(Instant::now),
        idle_after,
        invites,
        max_calls,
        span,
    };
    let close = socket::pump(ws, &mut outbox, shutdown, cfg, &mut h).await;
    unlist();
    let calls = close_outbox(&mut outbox.rx, std::mem::take(&mut h.calls));
    socket::close_socket(ws, close, &h.span).await;
    if calls.is_empty() {
        info!(parent: &h.span, "link closed");
    } else {
        warn!(parent: &h.span, calls = calls.len(), "link down: ending its untransferred calls with 410");
        metrics.link_failure("broken");
    }
    for call in calls {
        router.gone(id, &call);
    }
    metrics.link_up(dir.as_str(), -1);
}

/// What a link does with the frames it reads.
struct LinkHandler {
    dir: Direction,
    /// The other server's domain.
    remote: String,
    peer: Peer,
    router: Arc<Router>,
    calls: Vec<CallId>,
    /// Outbound links: when the last call left (idle close).
    idle_since: Option<Instant>,
    idle_after: Duration,
    /// Inbound links: the origin's invites per second.
    invites: TokenBucket,
    /// Inbound links: calls in flight from the origin, at most.
    max_calls: usize,
    span: Span,
}

impl Handler for LinkHandler {
    fn on_text(&mut self, text: &str) -> Result<(), Close> {
        let f = frame::decode(text).map_err(|e| socket::bad_frame(e, self.router.metrics()))?;
        let Some(id) = f.call.clone() else {
            self.router
                .bye(&self.peer, ServerBye::LINK_CALL_REQUIRED, None);
            return Ok(());
        };
        if let Body::Invite(inv) = &f.body {
            let inbound = self.dir == Direction::In;
            let via = Via::Link {
                origin: &self.remote,
                inbound,
                // Only an inbound link takes a token: an outbound one
                // refuses every invite anyway.
                within_rate: inbound && self.invites.take(Instant::now()),
                calls: self.calls.len(),
                max_calls: self.max_calls,
            };
            if self
                .router
                .invite(&self.peer, via, &self.span, &id, inv, f.traceparent)
            {
                self.calls.push(id);
            }
        } else {
            self.router.frame(
                &self.peer,
                true,
                &id,
                f.keyword,
                f.body.raw(),
                f.body.bye_code(),
            );
        }
        Ok(())
    }

    fn on_attach(&mut self, id: CallId) {
        self.calls.push(id);
        self.idle_since = None;
    }

    fn on_detach(&mut self, id: CallId) {
        self.calls.retain(|c| *c != id);
        if self.calls.is_empty() && self.dir == Direction::Out {
            self.idle_since = Some(Instant::now());
        }
    }

    fn metrics(&self) -> &Metrics {
        self.router.metrics()
    }

    fn on_tick(&mut self, now: Instant) -> Option<Close> {
        match self.wake_at() {
            Some(t) if now >= t => Some(Close::new(CloseCode::Normal, "idle")),
            _ => None,
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        self.idle_since.map(|t| t + self.idle_after)
    }

    fn span(&self) -> &Span {
        &self.span
    }
}
