//! What every kind of peer shares: a client socket, a server-to-server
//! link, and (to come) another node of the same domain. The router knows a
//! peer only by its [`Peer`] handle: a bounded outbox of [`Out`] messages
//! and a kill switch. The task that owns the peer's transport drains the
//! outbox in order, and closes it with [`close_outbox`] when it ends.

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::address::CallId;
use crate::call::PeerId;
use crate::metrics::{Metrics, Refusal};

/// What the router sends to a peer's outbox.
#[derive(Debug)]
pub enum Out {
    /// A frame to write as is.
    Frame(Utf8Bytes),
    /// The peer is now a party of this call (sent before its invite).
    Attach(CallId),
    /// The call is over for this peer.
    Detach(CallId),
}

/// A handle on a peer: cheap to clone.
#[derive(Clone, Debug)]
pub struct Peer {
    pub id: PeerId,
    tx: mpsc::Sender<Out>,
    kill: CancellationToken,
}

/// A new peer's outbox, as its owning task holds it.
pub struct Outbox {
    pub rx: mpsc::Receiver<Out>,
    /// Cancelled when the peer must end (a reader too slow), or when the
    /// server shuts down: a child of the shutdown token.
    pub kill: CancellationToken,
}

impl Peer {
    /// A peer with an outbox of `capacity` messages, killed with `shutdown`.
    pub fn new(id: PeerId, capacity: usize, shutdown: &CancellationToken) -> (Peer, Outbox) {
        let (tx, rx) = mpsc::channel(capacity);
        let kill = shutdown.child_token();
        let peer = Peer {
            id,
            tx,
            kill: kill.clone(),
        };
        (peer, Outbox { rx, kill })
    }

    /// Queues a message without waiting. A full outbox means the reader is
    /// too slow: the peer is killed rather than allowed to grow memory.
    /// Returns false when the peer is gone (its outbox is closed).
    pub fn deliver(&self, out: Out, metrics: &Metrics) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.kill.is_cancelled() {
                    warn!(
                        peer = self.id,
                        "outbox full: disconnecting a reader too slow to keep up"
                    );
                    metrics.refused(Refusal::SlowReader);
                    self.kill.cancel();
                }
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Closes an outbox and returns the calls its owner is still a party of:
/// `calls` (what it knew) plus what was still queued (`Attach`ed and not
/// `Detach`ed). The owner then tells each call it is gone.
pub fn close_outbox(rx: &mut mpsc::Receiver<Out>, mut calls: Vec<CallId>) -> Vec<CallId> {
    rx.close();
    while let Ok(out) = rx.try_recv() {
        match out {
            Out::Attach(c) => calls.push(c),
            Out::Detach(c) => calls.retain(|x| *x != c),
            Out::Frame(_) => {}
        }
    }
    calls
}
