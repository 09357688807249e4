//! Who is where: users' sockets, live calls, and the driver that feeds the
//! call state machines and carries out what they decide.
//!
//! Shared maps hold handles ([`Peer`]: a bounded sender and a kill switch),
//! never session state. A call's state sits behind its own mutex; it is
//! locked only for the synchronous work of feeding one input and queueing
//! the resulting frames (`try_send`, never `.await`), which keeps every
//! call's frames in one order without holding anything across an await.
//!
//! Routing decides "local sockets" or "another domain". Only the local half
//! exists today; the other domain's half (a server-to-server link) will be
//! one more kind of [`Peer`] that receives the same [`Out`] messages.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use smallvec::SmallVec;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use crate::address::{Address, CallId};
use crate::call::{Call, Input, Outcome, Output, PeerId};
use crate::config::Limits;
use crate::federation::link::Links;
use crate::frame::{self, Keyword};
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

/// A handle on a client socket or a link: cheap to clone.
#[derive(Clone, Debug)]
pub struct Peer {
    pub id: PeerId,
    tx: mpsc::Sender<Out>,
    kill: CancellationToken,
}

impl Peer {
    pub fn new(id: PeerId, tx: mpsc::Sender<Out>, kill: CancellationToken) -> Self {
        Peer { id, tx, kill }
    }

    /// Queues a message without waiting. A full outbox means the reader is
    /// too slow: the peer is killed rather than allowed to grow memory.
    /// Returns false when the peer is gone (its outbox is closed).
    fn deliver(&self, out: Out, metrics: &Metrics) -> bool {
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

/// Why an invite was refused before a call existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub code: u16,
    pub description: &'static str,
    pub outcome: Outcome,
}

impl Refused {
    pub const fn new(code: u16, description: &'static str, outcome: Outcome) -> Self {
        Refused {
            code,
            description,
            outcome,
        }
    }
}

struct CallState {
    call: Call,
    /// Every peer that is or was a party, to find handles by id.
    peers: SmallVec<[Peer; 3]>,
    timer: Option<AbortHandle>,
    /// The parent of the call's events. Never entered: the events name it.
    span: tracing::Span,
    started: Instant,
    /// The other domain, for a call that crosses a link.
    remote: Option<String>,
    /// Its end has been counted and it left the map.
    finished: bool,
    /// The local callee it counts against while it rings.
    ringing_for: Option<Address>,
}

type Slot = Arc<Mutex<CallState>>;

pub struct Router {
    domain: String,
    limits: Limits,
    /// With a users file: the users that exist (others get 404).
    known_users: Option<HashSet<String>>,
    metrics: Arc<Metrics>,
    sessions: DashMap<Address, SmallVec<[Peer; 2]>>,
    calls: DashMap<CallId, Slot>,
    next_peer: AtomicU64,
    /// Links to other domains, when federation is configured.
    links: Option<Arc<Links>>,
    /// Calls ringing for each local user (`limits.pending_invites_per_user`).
    ringing: DashMap<Address, usize>,
}

impl Router {
    pub fn new(
        domain: String,
        limits: Limits,
        known_users: Option<HashSet<String>>,
        metrics: Arc<Metrics>,
        links: Option<Arc<Links>>,
    ) -> Self {
        Router {
            domain,
            limits,
            known_users,
            metrics,
            sessions: DashMap::new(),
            calls: DashMap::new(),
            next_peer: AtomicU64::new(1),
            links,
            ringing: DashMap::new(),
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn next_peer_id(&self) -> PeerId {
        self.next_peer.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes a socket reachable for its user.
    pub fn register(&self, user: &Address, peer: Peer) {
        self.sessions.entry(user.clone()).or_default().push(peer);
    }

    pub fn unregister(&self, user: &Address, id: PeerId) {
        if let Entry::Occupied(mut e) = self.sessions.entry(user.clone()) {
            e.get_mut().retain(|p| p.id != id);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// Sends a server bye straight to one peer.
    pub fn bye(&self, to: &Peer, code: u16, description: &str, call: Option<&CallId>) {
        to.deliver(
            Out::Frame(frame::encode_bye(code, description, call)),
            &self.metrics,
        );
    }

    /// Starts a call from `from` (a socket of `caller`) to `callee`. On
    /// success every device of the callee has been sent the invite.
    pub fn invite(
        self: &Arc<Self>,
        from: &Peer,
        caller: &Address,
        callee: &Address,
        id: &CallId,
        invite: &str,
    ) -> Result<(), Refused> {
        let remote = if callee.domain() != self.domain {
            Some(callee.domain())
        } else if caller.domain() != self.domain {
            Some(caller.domain())
        } else {
            None
        };
        let devices: SmallVec<[Peer; 3]> = if callee.domain() != self.domain {
            // The callee's server does the forking: the link is the one device.
            let Some(links) = &self.links else {
                return Err(Refused::new(
                    403,
                    "This server does not federate with other domains",
                    Outcome::Forbidden,
                ));
            };
            smallvec::smallvec![links.link_for(self, callee.domain())?]
        } else {
            if let Some(known) = &self.known_users
                && !known.contains(callee.user())
            {
                return Err(Refused::new(404, "No such user", Outcome::NotFound));
            }
            let devices: SmallVec<[Peer; 3]> = self
                .sessions
                .get(callee)
                .map(|s| s.iter().filter(|p| p.id != from.id).cloned().collect())
                .unwrap_or_default();
            if devices.is_empty() {
                return Err(Refused::new(480, "User offline", Outcome::Offline));
            }
            devices
        };
        // An invite flood aimed at one user is bounded; the count is taken
        // here and given back when the call stops ringing (apply()).
        let ringing_for = if callee.domain() == self.domain {
            let mut n = self.ringing.entry(callee.clone()).or_insert(0);
            if *n >= self.limits.pending_invites_per_user {
                self.metrics.limit_hit("pending_invites_per_user");
                return Err(Refused::new(
                    486,
                    "Busy: too many calls ringing for this user",
                    Outcome::Busy,
                ));
            }
            *n += 1;
            Some(callee.clone())
        } else {
            None
        };

        let span = info_span!("call", id = %id, caller = %caller, callee = %callee);
        let ids: SmallVec<[PeerId; 3]> = devices.iter().map(|p| p.id).collect();
        let now = Instant::now();
        let (call, outputs) = Call::start(from.id, &ids, invite, now, self.limits.ring_timeout);
        let mut peers = devices;
        peers.push(from.clone());
        let deadline = call.ring_deadline();
        let slot = Arc::new(Mutex::new(CallState {
            call,
            peers,
            timer: None,
            span,
            started: now,
            remote: remote.map(str::to_string),
            finished: false,
            ringing_for,
        }));

        // Claim the id; hold the call's lock until its invites are queued so
        // no other frame of the call can overtake them.
        let mut state = lock(&slot);
        match self.calls.entry(id.clone()) {
            Entry::Occupied(_) => {
                if let Some(user) = state.ringing_for.take() {
                    self.stop_ringing(&user);
                }
                return Err(Refused::new(
                    400,
                    "Call id already in use",
                    Outcome::BadRequest,
                ));
            }
            Entry::Vacant(v) => {
                v.insert(slot.clone());
            }
        }
        self.metrics.calls_active.inc();
        debug!(parent: &state.span, devices = ids.len(), "call started");
        for p in state.peers.iter().filter(|p| p.id != from.id) {
            p.deliver(Out::Attach(id.clone()), &self.metrics);
        }
        if let Some(deadline) = deadline {
            state.timer = Some(self.spawn_ring_timer(Arc::downgrade(&slot), id.clone(), deadline));
        }
        self.apply(&mut state, id, outputs, None);
        Ok(())
    }

    /// Feeds a frame from `from` to call `id`; an unknown call gets 481.
    pub fn frame(
        &self,
        from: &Peer,
        id: &CallId,
        keyword: Keyword,
        content: Option<&str>,
        bye_code: Option<u16>,
    ) {
        let Some(slot) = self.calls.get(id).map(|s| s.value().clone()) else {
            return self.bye(from, 481, "No such call", Some(id));
        };
        self.feed(
            &slot,
            id,
            Input::Frame {
                from: from.id,
                keyword,
                content,
                bye_code,
            },
            Some(from),
        );
    }

    /// A bye that the link `from` could not get from the other server (the
    /// link failed): fed to the call as if that server had sent it.
    pub fn remote_bye(&self, from: PeerId, id: &CallId, code: u16, description: &str) {
        let content = serde_json::json!({ "code": code, "description": description }).to_string();
        if let Some(slot) = self.calls.get(id).map(|s| s.value().clone()) {
            self.feed(
                &slot,
                id,
                Input::Frame {
                    from,
                    keyword: Keyword::Bye,
                    content: Some(&content),
                    bye_code: Some(code),
                },
                None,
            );
        }
    }

    /// The peer's socket went away: every call it was part of is told.
    pub fn gone(&self, from: PeerId, id: &CallId) {
        if let Some(slot) = self.calls.get(id).map(|s| s.value().clone()) {
            self.feed(&slot, id, Input::Gone(from), None);
        }
    }

    /// Feeds one input to a call. `sender` is the socket a frame came from:
    /// it may be no party of the call (a socket naming another's call id),
    /// and must still hear the call's refusal.
    fn feed(&self, slot: &Slot, id: &CallId, input: Input<'_>, sender: Option<&Peer>) {
        let mut state = lock(slot);
        let outputs = state.call.handle(input);
        self.apply(&mut state, id, outputs, sender);
    }

    /// Carries out a state machine's outputs, under the call's lock.
    fn apply(
        &self,
        state: &mut CallState,
        id: &CallId,
        outputs: crate::call::Outputs<'_>,
        sender: Option<&Peer>,
    ) {
        let mut gone: SmallVec<[PeerId; 2]> = SmallVec::new();
        for o in outputs {
            let (to, out) = match o {
                Output::Relay {
                    to,
                    keyword,
                    content,
                } => (to, Out::Frame(frame::encode(keyword, content, id))),
                Output::Bye {
                    to,
                    code,
                    description,
                } => {
                    debug!(parent: &state.span, to, code, description, "server bye");
                    (
                        to,
                        Out::Frame(frame::encode_bye(code, description, Some(id))),
                    )
                }
                Output::Detach(to) => (to, Out::Detach(id.clone())),
            };
            let peer = state.peers.iter().find(|p| p.id == to);
            if let Some(p) = peer.or(sender.filter(|p| p.id == to))
                && !p.deliver(out, &self.metrics)
                && !gone.contains(&to)
            {
                gone.push(to);
            }
        }
        // A party whose outbox closed while the call was being routed (its
        // socket or link ended) is gone: tell the call now, rather than
        // leave it waiting for the ring timeout.
        for to in gone {
            if state.call.outcome().is_none() {
                let more = state.call.handle(Input::Gone(to));
                self.apply(state, id, more, None);
            }
        }
        if state.call.ring_deadline().is_none() {
            if let Some(t) = state.timer.take() {
                t.abort();
            }
            if let Some(user) = state.ringing_for.take() {
                self.stop_ringing(&user);
            }
        }
        if let Some(outcome) = state.call.outcome()
            && !state.finished
        {
            // While unfinished the map's entry for `id` is this call.
            state.finished = true;
            self.calls.remove(id);
            self.metrics.calls_active.dec();
            self.metrics.call_ended(outcome);
            if let Some(remote) = &state.remote {
                self.metrics.remote_call_ended(remote, outcome);
            }
            info!(
                parent: &state.span,
                outcome = outcome.as_str(),
                seconds = format_args!("{:.3}", state.started.elapsed().as_secs_f64()),
                "call ended"
            );
        }
    }

    fn spawn_ring_timer(
        self: &Arc<Self>,
        slot: Weak<Mutex<CallState>>,
        id: CallId,
        at: Instant,
    ) -> AbortHandle {
        let router = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            if let (Some(router), Some(slot)) = (router.upgrade(), slot.upgrade()) {
                router.feed(&slot, &id, Input::RingTimeout, None);
            }
        })
        .abort_handle()
    }

    fn stop_ringing(&self, user: &Address) {
        if let Entry::Occupied(mut e) = self.ringing.entry(user.clone()) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Ends every call that has not transferred with bye 503, for shutdown.
    /// The byes are queued in the parties' outboxes, which sessions and
    /// links flush before they close.
    pub fn shutdown_calls(&self) -> usize {
        let calls: Vec<(CallId, Slot)> = self
            .calls
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for (id, slot) in &calls {
            self.feed(slot, id, Input::Shutdown, None);
        }
        calls.len()
    }

    /// Calls the server holds (for tests and shutdown).
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }
}

/// Locks a call. A panic while holding it would be a bug in the state
/// machine; the state is still the last consistent one, so carry on.
fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, CallState> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}
