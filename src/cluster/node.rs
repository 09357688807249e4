//! Another node of the cluster, as this node sees it: one [`Peer`] that
//! the router forks calls to and takes frames from, like a federation
//! link whose transport is Redis. Frames queued for it are published on
//! that node's channel in order, numbered ([`run`]); frames published by
//! it arrive through the cluster's subscription ([`on_frame`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, warn};

use crate::address::CallId;
use crate::frame::{self, Body, ServerBye};
use crate::peer::{Out, Outbox, Peer, close_outbox};
use crate::router::{Router, Via};

use super::{Cluster, wire};

/// How many messages may wait for another node (all its calls together);
/// their bytes are bounded by `limits.link_outbox_bytes`.
pub const NODE_OUTBOX: usize = 8192;
/// Messages published to Redis in one round trip at most.
const BATCH: usize = 64;

/// Why a node's peer ended: what its calls hear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Why {
    /// This node is shutting down (its calls were ended already).
    Closed = 0,
    /// The node is dead, or started again: 410 as for a socket gone.
    Dead = 1,
    /// Messages from it were lost: 503.
    Gap = 2,
    /// Redis took no message for it: 503.
    Unreachable = 3,
    /// This node found itself declared dead: 410.
    Fenced = 4,
}

/// What a node peer's task keeps of its listing: why it is ended, what
/// it cancels once its calls are, and its span.
pub struct Ending {
    why: Arc<AtomicU8>,
    ended: CancellationToken,
    span: Span,
}

/// A node's peer, as the cluster lists it.
pub struct NodeLink {
    pub peer: Peer,
    why: Arc<AtomicU8>,
    pub span: Span,
    /// Cancelled once its task has ended its calls.
    pub ended: CancellationToken,
    /// The other node's epoch (its run) this peer carries calls of; 0
    /// until it has sent a frame.
    pub epoch: std::sync::atomic::AtomicU64,
}

impl NodeLink {
    pub fn new(peer: Peer, span: Span) -> (NodeLink, Ending) {
        let why = Arc::new(AtomicU8::new(Why::Closed as u8));
        let ended = CancellationToken::new();
        let link = NodeLink {
            peer,
            why: why.clone(),
            span: span.clone(),
            ended: ended.clone(),
            epoch: std::sync::atomic::AtomicU64::new(0),
        };
        (link, Ending { why, ended, span })
    }

    /// Ends it: its task stops and its calls hear `why`.
    pub fn end(&self, why: Why) {
        let _ = self.why.compare_exchange(
            Why::Closed as u8,
            why as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.peer.kill();
    }
}

fn why(v: &AtomicU8) -> Why {
    match v.load(Ordering::Relaxed) {
        1 => Why::Dead,
        2 => Why::Gap,
        3 => Why::Unreachable,
        4 => Why::Fenced,
        _ => Why::Closed,
    }
}

/// A frame the node `from` published for this one: an invite forks the
/// call to the devices held here; anything else feeds the call.
pub fn on_frame(router: &Arc<Router>, from: &Peer, text: &str, span: &Span) {
    let f = match frame::decode(text) {
        Ok(f) => f,
        Err(e) => {
            warn!(parent: span, error = %e, "another node sent a frame that does not decode");
            return;
        }
    };
    let Some(id) = f.call.clone() else {
        return;
    };
    if let Body::Invite(inv) = &f.body {
        // The other node's peer is the call's inviter here: it learns of
        // the call as a party does, so that it can end it if that node dies.
        if router.invite(from, Via::Node, span, &id, inv, f.traceparent) {
            from.deliver(Out::Attach(id), router.metrics());
        }
    } else {
        router.frame(from, true, &id, f.keyword, f.body.raw(), f.body.bye_code());
    }
}

/// Adds a frame for node `name` to `pipe`, with its number.
fn publish(cluster: &Cluster, pipe: &mut redis::Pipeline, name: &str, channel: &str, text: &str) {
    let seq = cluster.next_seq(name);
    pipe.publish(
        channel,
        wire::encode(&cluster.node, cluster.incarnation, seq, text),
    )
    .ignore();
}

/// Publishes what is still queued, once, for a shutdown.
async fn flush(
    cluster: &Cluster,
    name: &str,
    channel: &str,
    outbox: &mut Outbox,
    calls: &mut Vec<CallId>,
) {
    let mut pipe = redis::pipe();
    let mut frames = 0;
    while let Ok(out) = outbox.rx.try_recv() {
        match out {
            Out::Attach(id) => calls.push(id),
            Out::Detach(id) => calls.retain(|c| *c != id),
            Out::Frame(text) => {
                publish(cluster, &mut pipe, name, channel, &text);
                frames += 1;
            }
        }
    }
    if frames > 0 {
        let _ = cluster.run::<()>(&pipe).await;
    }
}

/// Publishes what is queued for node `name`, in order and numbered, until
/// the peer is ended; then ends every call still on it as `why` says.
pub async fn run(
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    name: String,
    peer: Peer,
    mut outbox: Outbox,
    ending: Ending,
) {
    let Ending {
        why: why_ended,
        ended,
        span,
    } = ending;
    let channel = cluster.keys.channel(&name);
    let mut calls: Vec<CallId> = Vec::new();
    let mut batch: Vec<Out> = Vec::new();
    let kill = outbox.shared.kill().clone();
    debug!(parent: &span, "node peer up");
    loop {
        let n = tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            n = outbox.rx.recv_many(&mut batch, BATCH) => n,
        };
        if n == 0 {
            break;
        }
        let mut pipe = redis::pipe();
        let (mut frames, mut bytes) = (0u64, 0usize);
        for out in batch.drain(..) {
            match out {
                Out::Attach(id) => calls.push(id),
                Out::Detach(id) => calls.retain(|c| *c != id),
                Out::Frame(text) => {
                    bytes += text.len();
                    publish(&cluster, &mut pipe, &name, &channel, &text);
                    frames += 1;
                }
            }
        }
        if frames > 0 {
            if cluster.run::<()>(&pipe).await.is_none() {
                warn!(parent: &span, "could not publish to another node: ending its calls");
                let _ = why_ended.compare_exchange(
                    Why::Closed as u8,
                    Why::Unreachable as u8,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                break;
            }
            router.metrics().cluster_frames("sent", frames);
        }
        outbox.shared.written(bytes);
    }
    cluster.forget_peer(&name, peer.id);
    let why = why(&why_ended);
    if why == Why::Closed {
        // The server is shutting down: the byes it queued for the calls
        // with that node go out first (one round trip, bounded).
        flush(&cluster, &name, &channel, &mut outbox, &mut calls).await;
    }
    let calls = close_outbox(&mut outbox.rx, calls);
    if !calls.is_empty() {
        warn!(parent: &span, calls = calls.len(), reason = ?why, "ending the calls with another node");
    }
    // After a gap the other node is alive but has lost track: it hears
    // the same bye for each call, so that both sides end it.
    let tell =
        (why == Why::Gap && !calls.is_empty()).then(|| cluster.peer_for_node(&router, &name));
    for call in calls {
        if let Some(p) = &tell {
            p.deliver(
                Out::Frame(frame::encode_bye(ServerBye::CLUSTER_GAP, Some(&call))),
                router.metrics(),
            );
        }
        match why {
            Why::Gap => router.remote_bye(peer.id, &call, ServerBye::CLUSTER_GAP),
            Why::Unreachable => router.remote_bye(peer.id, &call, ServerBye::CLUSTER_UNREACHABLE),
            Why::Dead | Why::Fenced | Why::Closed => router.gone(peer.id, &call),
        }
    }
    ended.cancel();
}
