//! What every kind of peer shares: a client socket, a server-to-server
//! link, and (to come) another node of the same domain. The router knows a
//! peer only by its [`Peer`] handle: a bounded outbox of [`Out`] messages
//! and a kill switch. The task that owns the peer's transport drains the
//! outbox in order, and closes it with [`close_outbox`] when it ends.
//!
//! The outbox is bounded twice: in messages (the channel's capacity) and in
//! the bytes of its frames, counted from [`Peer::deliver`] until the owner
//! has written them to its socket ([`Outbox::written`]). A peer that lets
//! either bound fill is killed: memory for a reader too slow stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    shared: Arc<Shared>,
}

/// What a peer's handles and its outbox share: one allocation.
#[derive(Debug)]
pub struct Shared {
    /// Cancelled when the peer must end (a reader too slow), or when the
    /// server shuts down: a child of the shutdown token.
    kill: CancellationToken,
    /// Bytes of frames delivered and not yet written to the socket.
    queued: AtomicUsize,
    /// The most `queued` may hold.
    max_bytes: usize,
}

/// A new peer's outbox, as its owning task holds it.
pub struct Outbox {
    pub rx: mpsc::Receiver<Out>,
    pub shared: Arc<Shared>,
}

/// An outbox's two bounds.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Messages queued at most.
    pub messages: usize,
    /// Bytes of frames queued and not yet written, at most.
    pub bytes: usize,
}

impl Peer {
    /// A peer with an outbox of these bounds, killed with `shutdown`.
    pub fn new(id: PeerId, bounds: Bounds, shutdown: &CancellationToken) -> (Peer, Outbox) {
        let (tx, rx) = mpsc::channel(bounds.messages);
        let shared = Arc::new(Shared {
            kill: shutdown.child_token(),
            queued: AtomicUsize::new(0),
            max_bytes: bounds.bytes,
        });
        let peer = Peer {
            id,
            tx,
            shared: shared.clone(),
        };
        (peer, Outbox { rx, shared })
    }

    /// Queues a message without waiting. An outbox full (in messages or in
    /// bytes) means the reader is too slow: the peer is killed rather than
    /// allowed to grow memory, and the message is dropped. Returns false
    /// when the peer is gone (its outbox is closed).
    pub fn deliver(&self, out: Out, metrics: &Metrics) -> bool {
        let bytes = match &out {
            Out::Frame(text) => text.len(),
            Out::Attach(_) | Out::Detach(_) => 0,
        };
        let queued = &self.shared.queued;
        if queued.fetch_add(bytes, Ordering::Relaxed) + bytes > self.shared.max_bytes {
            queued.fetch_sub(bytes, Ordering::Relaxed);
            self.too_slow(metrics, "outbox bytes full");
            return !self.tx.is_closed();
        }
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                queued.fetch_sub(bytes, Ordering::Relaxed);
                self.too_slow(metrics, "outbox full");
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Ends the peer: its owner stops, and its calls are told.
    pub fn kill(&self) {
        self.shared.kill.cancel();
    }

    /// Kills a peer that does not read fast enough (once).
    fn too_slow(&self, metrics: &Metrics, why: &'static str) {
        if !self.shared.kill.is_cancelled() {
            warn!(
                peer = self.id,
                why, "disconnecting a reader too slow to keep up"
            );
            metrics.refused(Refusal::SlowReader);
            self.shared.kill.cancel();
        }
    }
}

impl Shared {
    /// Fires when the peer must end: a reader too slow, or the shutdown.
    pub fn kill(&self) -> &CancellationToken {
        &self.kill
    }

    /// `bytes` of frames left the outbox for the socket.
    pub fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: usize) -> Out {
        Out::Frame("x".repeat(bytes).into())
    }

    #[test]
    fn an_outbox_full_in_bytes_kills_its_peer_and_written_bytes_make_room() {
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let bounds = Bounds {
            messages: 100,
            bytes: 1000,
        };
        let (peer, mut outbox) = Peer::new(1, bounds, &shutdown);
        assert!(peer.deliver(frame(600), &metrics));
        assert!(peer.deliver(frame(400), &metrics));
        assert!(
            !outbox.shared.kill().is_cancelled(),
            "exactly full is not over"
        );
        // The reader took one frame and wrote it: room again.
        assert!(matches!(outbox.rx.try_recv(), Ok(Out::Frame(t)) if t.len() == 600));
        outbox.shared.written(600);
        assert!(peer.deliver(frame(600), &metrics));
        assert!(!outbox.shared.kill().is_cancelled());
        // One byte over: killed, the frame dropped, the peer still there.
        assert!(peer.deliver(frame(1), &metrics));
        assert!(outbox.shared.kill().is_cancelled());
        assert!(!shutdown.is_cancelled(), "only this peer is killed");
        let queued: Vec<usize> = std::iter::from_fn(|| match outbox.rx.try_recv() {
            Ok(Out::Frame(t)) => Some(t.len()),
            _ => None,
        })
        .collect();
        assert_eq!(queued, [400, 600]);
    }

    #[test]
    fn marks_cost_no_bytes_and_a_closed_outbox_says_gone() {
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let bounds = Bounds {
            messages: 4,
            bytes: 10,
        };
        let (peer, mut outbox) = Peer::new(1, bounds, &shutdown);
        let id = CallId::parse("call-0001").unwrap();
        for _ in 0..4 {
            assert!(peer.deliver(Out::Attach(id.clone()), &metrics));
        }
        assert!(!outbox.shared.kill().is_cancelled());
        // A fifth message: over the message bound.
        assert!(peer.deliver(Out::Detach(id.clone()), &metrics));
        assert!(outbox.shared.kill().is_cancelled());
        outbox.rx.close();
        assert!(!peer.deliver(frame(1), &metrics));
    }
}
