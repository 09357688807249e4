//! Who is where: users' sockets, live calls, and the driver that feeds the
//! call state machines and carries out what they decide.
//!
//! The router sees peers ([`Peer`]), never a transport. A client socket
//! registers for its user; another domain is reached through the narrow
//! [`Remote`] interface, which the federation's links implement (and a
//! cluster of nodes would implement the same way). Every invite, from a
//! socket or from a link, comes through [`Router::invite`], which decides
//! every refusal and counts every call's outcome, the same way for both.
//!
//! Shared maps hold handles, never session state. A call's state sits
//! behind its own mutex; it is locked only for the synchronous work of
//! feeding one input and queueing the resulting frames (`try_send`, never
//! `.await`), which keeps every call's frames in one order without holding
//! anything across an await.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use smallvec::SmallVec;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{Span, debug, info, info_span, warn};

use crate::address::{Address, CallId};
use crate::call::{Call, Input, Output, Outputs, PeerId};
use crate::config::Limits;
use crate::frame::{self, ByeCode, Invite, Keyword, Outcome, ServerBye};
use crate::metrics::Metrics;
use crate::peer::{Out, Peer};
use crate::telemetry::{Recording, Telemetry};
use crate::trace::{CallTrace, Origin, TraceParent};

/// How the router reaches other domains.
pub trait Remote: Send + Sync {
    /// The peer that carries calls to `domain`: a link that is up or being
    /// opened (frames queue in its outbox meanwhile). Refused at once by
    /// policy or while the domain backs off. `trace` is the call's: a
    /// link opened for it is part of its trace.
    fn peer_for(
        self: Arc<Self>,
        router: &Arc<Router>,
        domain: &str,
        trace: &CallTrace,
    ) -> Result<Peer, ServerBye>;

    /// Whether `domain` is known here (configured, or with a link up in
    /// either direction), and so may name its own series in metrics. Other
    /// domains, which anyone can make up, are counted together.
    fn known(&self, domain: &str) -> bool;
}

/// How the router reaches the other nodes of its own domain, when the
/// domain is served by a cluster.
pub trait Nodes: Send + Sync {
    /// The peers that carry a call to the devices of local `user` held by
    /// other nodes: one per live node holding a socket of the user. An
    /// error when that cannot be known now (the nodes cannot reach each
    /// other): the bye for an invite that found no device here.
    fn peers_for(
        &self,
        router: &Arc<Router>,
        user: &Address,
    ) -> Result<SmallVec<[Peer; 2]>, ServerBye>;

    /// `user` has its first socket on this node (`true`), or its last one
    /// left (`false`).
    fn present(&self, user: &Address, here: bool);
}

/// Where an invite came in, as the edge that read it knows it. The router
/// decides from this whether to take the invite.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    /// A client socket of `user`, already a party of `calls` calls.
    Socket { user: &'a Address, calls: usize },
    /// A link with the domain `origin`.
    Link {
        origin: &'a str,
        /// Accepted from the origin; invites never come in on a link this
        /// server opened.
        inbound: bool,
        /// The origin's invite rate had room for this one.
        within_rate: bool,
        /// Calls in flight on the link, and the most it may carry.
        calls: usize,
        max_calls: usize,
    },
    /// Another node of this domain, forking a call to the devices of a
    /// local user held here.
    Node,
}

/// Why an invite was refused: the bye the inviter hears, and how it is
/// counted besides its outcome.
#[derive(Debug, Clone, Copy)]
struct Refused {
    bye: ServerBye,
    kind: RefusedKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefusedKind {
    Plain,
    /// A limit: `wspd_limits_hit_total{limit}`.
    Limit(&'static str),
    /// A socket naming a caller that is not its user.
    Spoofed,
    /// A link carrying what its direction or origin does not allow.
    Misrouted,
}

impl From<ServerBye> for Refused {
    fn from(bye: ServerBye) -> Self {
        Refused {
            bye,
            kind: RefusedKind::Plain,
        }
    }
}

impl Refused {
    fn limit(bye: ServerBye, limit: &'static str) -> Self {
        Refused {
            bye,
            kind: RefusedKind::Limit(limit),
        }
    }
}

struct CallState {
    call: Call,
    /// Every peer that is or was a party, to find handles by id.
    peers: SmallVec<[Peer; 3]>,
    timer: Option<AbortHandle>,
    /// The parent of the call's events. Never entered: the events name it.
    span: Span,
    /// The call's trace (its id is a field of `span`).
    trace: CallTrace,
    /// The call's span for export, when its trace is sampled and spans
    /// are exported; `None` costs nothing.
    rec: Option<Recording>,
    /// The last bye that ended the call for a party (for `rec`).
    last_bye: Option<ByeCode>,
    /// The caller's peer (for `rec`: which side transferred).
    caller: PeerId,
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
    /// With a users file: the users that exist (others get 404). Replaced
    /// when the users file is reloaded; read for each local invite.
    known_users: RwLock<Option<Arc<HashSet<String>>>>,
    metrics: Arc<Metrics>,
    sessions: DashMap<Address, SmallVec<[Peer; 2]>>,
    calls: DashMap<CallId, Slot>,
    next_peer: AtomicU64,
    /// Other domains, when federation is configured.
    remote: Option<Arc<dyn Remote>>,
    /// Calls ringing for each local user (`limits.pending_invites_per_user`).
    ringing: DashMap<Address, usize>,
    /// The ring timers, tracked with every other task of the server.
    timers: TaskTracker,
    /// The other nodes of this domain, in a cluster.
    nodes: std::sync::OnceLock<Arc<dyn Nodes>>,
    /// Where the spans of calls go (`Telemetry::off()`: nowhere).
    telemetry: Arc<Telemetry>,
}

impl Router {
    pub fn new(
        domain: String,
        limits: Limits,
        known_users: Option<HashSet<String>>,
        metrics: Arc<Metrics>,
        remote: Option<Arc<dyn Remote>>,
        timers: TaskTracker,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Router {
            domain,
            limits,
            known_users: RwLock::new(known_users.map(Arc::new)),
            metrics,
            sessions: DashMap::new(),
            calls: DashMap::new(),
            next_peer: AtomicU64::new(1),
            remote,
            ringing: DashMap::new(),
            timers,
            nodes: std::sync::OnceLock::new(),
            telemetry,
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Replaces the users that exist (the users file was reloaded).
    pub fn set_known_users(&self, known: Option<HashSet<String>>) {
        *self.known_users.write().unwrap_or_else(|e| e.into_inner()) = known.map(Arc::new);
    }

    fn known_users(&self) -> Option<Arc<HashSet<String>>> {
        self.known_users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn next_peer_id(&self) -> PeerId {
        self.next_peer.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes a socket reachable for its user.
    pub fn register(&self, user: &Address, peer: Peer) {
        match self.sessions.entry(user.clone()) {
            Entry::Occupied(mut e) => e.get_mut().push(peer),
            Entry::Vacant(v) => {
                v.insert(smallvec::smallvec![peer]);
                if let Some(nodes) = self.nodes.get() {
                    nodes.present(user, true);
                }
            }
        }
    }

    pub fn unregister(&self, user: &Address, id: PeerId) {
        if let Entry::Occupied(mut e) = self.sessions.entry(user.clone()) {
            e.get_mut().retain(|p| p.id != id);
            if e.get().is_empty() {
                e.remove();
                if let Some(nodes) = self.nodes.get() {
                    nodes.present(user, false);
                }
            }
        }
    }

    /// The users with a socket here (a cluster node writes them again
    /// after Redis lost them).
    pub fn local_users(&self) -> Vec<Address> {
        self.sessions.iter().map(|e| e.key().clone()).collect()
    }

    /// Connects the router to the other nodes of its cluster, once, before
    /// the server takes connections.
    pub fn set_nodes(&self, nodes: Arc<dyn Nodes>) {
        let _ = self.nodes.set(nodes);
    }

    /// Sends a server bye straight to one peer.
    pub fn bye(&self, to: &Peer, bye: ServerBye, call: Option<&CallId>) {
        to.deliver(Out::Frame(frame::encode_bye(bye, call)), &self.metrics);
    }

    /// An invite from `from`, which came in as `via` says, with the
    /// `traceparent` of its options when it had a valid one. Returns
    /// whether a call started (every device of the callee has been sent
    /// the invite); if not, the inviter has been sent the refusal and it
    /// was counted.
    pub fn invite(
        self: &Arc<Self>,
        from: &Peer,
        via: Via<'_>,
        span: &Span,
        id: &CallId,
        invite: &Invite<'_>,
        traceparent: Option<TraceParent>,
    ) -> bool {
        let origin = match via {
            Via::Socket { .. } => Origin::Client,
            Via::Link { .. } | Via::Node => Origin::Server,
        };
        let trace = CallTrace::new(traceparent, origin, self.telemetry.ratio());
        let started = self.admit(via, invite).and_then(|(caller, callee)| {
            self.start(from, via, &caller, &callee, id, invite.raw, &trace)
        });
        match started {
            Ok(()) => true,
            Err(r) => {
                self.refuse(from, via, span, id, r, &trace);
                false
            }
        }
    }

    /// Whether the edge may carry this invite: the caller is who the edge
    /// speaks for, the addresses are valid, and the edge is within its
    /// limits. Returns the caller and callee.
    fn admit(&self, via: Via<'_>, inv: &Invite<'_>) -> Result<(Address, Address), Refused> {
        match via {
            Via::Socket { user, calls } => {
                if Address::parse(&inv.caller_uri).ok().as_ref() != Some(user) {
                    return Err(Refused {
                        bye: ServerBye::SPOOFED_CALLER,
                        kind: RefusedKind::Spoofed,
                    });
                }
                let callee = Address::parse(&inv.callee_uri).map_err(ServerBye::bad_callee)?;
                if calls >= self.limits.calls_per_socket {
                    return Err(Refused::limit(
                        ServerBye::TOO_MANY_CALLS_ON_SOCKET,
                        "calls_per_socket",
                    ));
                }
                Ok((user.clone(), callee))
            }
            Via::Link {
                origin,
                inbound,
                within_rate,
                calls,
                max_calls,
            } => {
                let misrouted = |bye| Refused {
                    bye,
                    kind: RefusedKind::Misrouted,
                };
                if !inbound {
                    return Err(misrouted(ServerBye::WRONG_DIRECTION));
                }
                // One domain's flood is bounded on its own link: other
                // domains' links and local calls are not slowed by it.
                if !within_rate {
                    return Err(Refused::limit(
                        ServerBye::LINK_INVITE_RATE,
                        "invites_per_second",
                    ));
                }
                if calls >= max_calls {
                    return Err(Refused::limit(
                        ServerBye::TOO_MANY_CALLS_ON_LINK,
                        "calls_per_link",
                    ));
                }
                let (Ok(caller), Ok(callee)) = (
                    Address::parse(&inv.caller_uri),
                    Address::parse(&inv.callee_uri),
                ) else {
                    return Err(ServerBye::BAD_LINK_ADDRESS.into());
                };
                if caller.domain() != origin || callee.domain() != self.domain {
                    return Err(misrouted(ServerBye::MISROUTED));
                }
                Ok((caller, callee))
            }
            // The node that took the invite admitted it; it only asks for
            // the devices held here.
            Via::Node => {
                let (Ok(caller), Ok(callee)) = (
                    Address::parse(&inv.caller_uri),
                    Address::parse(&inv.callee_uri),
                ) else {
                    return Err(ServerBye::BAD_LINK_ADDRESS.into());
                };
                if callee.domain() != self.domain {
                    return Err(ServerBye::MISROUTED.into());
                }
                Ok((caller, callee))
            }
        }
    }

    /// Sends a refused invite its bye and counts it: every refusal, from a
    /// socket or a link, goes through here.
    fn refuse(
        &self,
        from: &Peer,
        via: Via<'_>,
        span: &Span,
        id: &CallId,
        r: Refused,
        trace: &CallTrace,
    ) {
        let outcome = r.bye.outcome();
        if let Some(mut rec) =
            self.telemetry
                .record_now("call", opentelemetry::trace::SpanKind::Server, trace)
        {
            rec.set("wsp.call.id", id.as_str().to_string());
            rec.set("wsp.via", via_name(via));
            end_call_span(rec, outcome, Some(r.bye.code));
        }
        let trace_id = trace.trace_id;
        self.metrics.call_ended(outcome);
        // The other domain is counted only when it is a link's
        // authenticated origin: a domain a client merely named is not.
        if let Via::Link { origin, .. } = via {
            self.metrics.remote_call_ended(self.label(origin), outcome);
        }
        let code = r.bye.code.get();
        match r.kind {
            RefusedKind::Plain => {
                debug!(parent: span, call = %id, code, %trace_id, "invite refused")
            }
            RefusedKind::Limit(limit) => {
                self.metrics.limit_hit(limit);
                debug!(parent: span, call = %id, code, limit, %trace_id, "invite refused");
            }
            RefusedKind::Spoofed => {
                info!(parent: span, call = %id, %trace_id, "refused invite: caller is not this socket's user")
            }
            RefusedKind::Misrouted => {
                self.metrics.link_failure("misrouted");
                warn!(parent: span, call = %id, code, %trace_id, "refused invite: not from the link's origin to this domain");
            }
        }
        self.bye(from, r.bye, Some(id));
    }

    /// Starts a call from `from` (a peer of `caller`) to `callee`.
    #[allow(clippy::too_many_arguments)]
    fn start(
        self: &Arc<Self>,
        from: &Peer,
        via: Via<'_>,
        caller: &Address,
        callee: &Address,
        id: &CallId,
        invite: &str,
        trace: &CallTrace,
    ) -> Result<(), Refused> {
        let here_only = matches!(via, Via::Node);
        let devices = self.devices(from, callee, here_only, trace)?;
        // An invite flood aimed at one user is bounded; the count is taken
        // here and given back when the call stops ringing (apply()).
        let ringing_for = self.hold_ringing(callee)?;
        let remote = [callee.domain(), caller.domain()]
            .into_iter()
            .find(|d| *d != self.domain)
            .map(str::to_string);
        let span = info_span!("call", id = %id, caller = %caller, callee = %callee, trace_id = %trace.trace_id);
        let ids: SmallVec<[PeerId; 3]> = devices.iter().map(|p| p.id).collect();
        let now = Instant::now();
        let rec = self
            .telemetry
            .record_now("call", opentelemetry::trace::SpanKind::Server, trace)
            .map(|mut rec| {
                rec.set("wsp.call.id", id.as_str().to_string());
                rec.set("wsp.caller", caller.to_string());
                rec.set("wsp.callee", callee.to_string());
                rec.set("wsp.via", via_name(via));
                rec.set("wsp.devices", ids.len() as i64);
                rec
            });
        let (mut call, outputs) = Call::start(from.id, &ids, invite, now, self.limits.ring_timeout);
        if here_only {
            call.forked();
        }
        let mut peers = devices;
        peers.push(from.clone());
        let slot = Arc::new(Mutex::new(CallState {
            call,
            peers,
            timer: None,
            span,
            trace: *trace,
            rec,
            last_bye: None,
            caller: from.id,
            started: now,
            remote,
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
                return Err(ServerBye::CALL_ID_IN_USE.into());
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
        if let Some(deadline) = state.call.ring_deadline() {
            state.timer = Some(self.ring_timer(Arc::downgrade(&slot), id.clone(), deadline));
        }
        self.apply(&mut state, id, outputs, None);
        Ok(())
    }

    /// Who is invited: every socket of a local callee but the caller's own,
    /// with, in a cluster, one peer for each other node holding sockets of
    /// the callee (unless `here_only`: the invite came from such a node);
    /// or the one peer that reaches the callee's domain (whose server does
    /// the forking).
    fn devices(
        self: &Arc<Self>,
        from: &Peer,
        callee: &Address,
        here_only: bool,
        trace: &CallTrace,
    ) -> Result<SmallVec<[Peer; 3]>, Refused> {
        if callee.domain() != self.domain {
            let Some(remote) = &self.remote else {
                return Err(ServerBye::NO_FEDERATION.into());
            };
            let link = remote.clone().peer_for(self, callee.domain(), trace)?;
            return Ok(smallvec::smallvec![link]);
        }
        if let Some(known) = self.known_users()
            && !known.contains(callee.user())
        {
            return Err(ServerBye::NO_SUCH_USER.into());
        }
        let mut devices: SmallVec<[Peer; 3]> = self
            .sessions
            .get(callee)
            .map(|s| s.iter().filter(|p| p.id != from.id).cloned().collect())
            .unwrap_or_default();
        if let Some(nodes) = self.nodes.get().filter(|_| !here_only) {
            match nodes.peers_for(self, callee) {
                Ok(elsewhere) => devices.extend(elsewhere),
                // The nodes cannot reach each other: the devices here are
                // called; with none here, the caller hears why.
                Err(bye) if devices.is_empty() => return Err(bye.into()),
                Err(_) => {}
            }
        }
        if devices.is_empty() {
            return Err(ServerBye::OFFLINE.into());
        }
        Ok(devices)
    }

    /// Counts one more call ringing for a local callee, within
    /// `limits.pending_invites_per_user`.
    fn hold_ringing(&self, callee: &Address) -> Result<Option<Address>, Refused> {
        if callee.domain() != self.domain {
            return Ok(None);
        }
        let mut n = self.ringing.entry(callee.clone()).or_insert(0);
        if *n >= self.limits.pending_invites_per_user {
            return Err(Refused::limit(
                ServerBye::TOO_MANY_RINGING,
                "pending_invites_per_user",
            ));
        }
        *n += 1;
        Ok(Some(callee.clone()))
    }

    /// Feeds a frame from `from` to call `id`; an unknown call gets 481,
    /// except a bye from another server (`from_server`: a link or a node),
    /// which is dropped: two servers that have both forgotten a call must
    /// not answer each other's byes for ever.
    pub fn frame(
        &self,
        from: &Peer,
        from_server: bool,
        id: &CallId,
        keyword: Keyword,
        content: Option<&str>,
        bye_code: Option<ByeCode>,
    ) {
        let Some(slot) = self.calls.get(id).map(|s| s.value().clone()) else {
            if from_server && keyword == Keyword::Bye {
                debug!(call = %id, "bye for a call no longer here: dropped");
                return;
            }
            return self.bye(from, ServerBye::NO_SUCH_CALL, Some(id));
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
    pub fn remote_bye(&self, from: PeerId, id: &CallId, bye: ServerBye) {
        let content = frame::bye_content(bye);
        if let Some(slot) = self.calls.get(id).map(|s| s.value().clone()) {
            self.feed(
                &slot,
                id,
                Input::Frame {
                    from,
                    keyword: Keyword::Bye,
                    content: Some(&content),
                    bye_code: Some(bye.code),
                },
                None,
            );
        }
    }

    /// The peer went away: every call it was part of is told.
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
        let answered = state.call.is_answered();
        let transfers = if state.rec.is_some() {
            state.call.transfers()
        } else {
            0
        };
        let outputs = state.call.handle(input);
        if !answered && state.call.is_answered() {
            self.metrics
                .call_answered(state.started.elapsed().as_secs_f64());
            if let Some(rec) = &mut state.rec {
                rec.event("answer", Vec::new());
            }
        }
        if state.rec.is_some() {
            note(&mut state, input, &outputs, transfers);
        }
        self.apply(&mut state, id, outputs, sender);
    }

    /// Carries out a state machine's outputs, under the call's lock.
    fn apply(
        &self,
        state: &mut CallState,
        id: &CallId,
        outputs: Outputs<'_>,
        sender: Option<&Peer>,
    ) {
        let gone = self.deliver(state, id, outputs, sender);
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
        if state.call.outcome().is_some() && !state.finished {
            self.finish(state, id);
        }
    }

    /// Queues each output in its peer's outbox. Returns the parties found
    /// gone (their outbox closed).
    fn deliver(
        &self,
        state: &CallState,
        id: &CallId,
        outputs: Outputs<'_>,
        sender: Option<&Peer>,
    ) -> SmallVec<[PeerId; 2]> {
        let mut gone: SmallVec<[PeerId; 2]> = SmallVec::new();
        for o in outputs {
            let (to, out) = match o {
                // An invite sent on carries this server's trace context.
                Output::Relay {
                    to,
                    keyword: Keyword::Invite,
                    content: Some(content),
                } => (
                    to,
                    Out::Frame(frame::encode_invite(
                        content,
                        id,
                        &state.trace.traceparent(),
                    )),
                ),
                Output::Relay {
                    to,
                    keyword,
                    content,
                } => (to, Out::Frame(frame::encode(keyword, content, id))),
                Output::Bye { to, bye } => {
                    debug!(parent: &state.span, to, code = bye.code.get(), description = bye.description, "server bye");
                    (to, Out::Frame(frame::encode_bye(bye, Some(id))))
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
        gone
    }

    /// The label of `domain` in `wspd_remote_calls_total`, decided when the
    /// call ends: its name if the domain is known then (a link counts as up
    /// until every call on it has ended), `None` (counted as `other`) if not.
    fn label<'a>(&self, domain: &'a str) -> Option<&'a str> {
        self.remote
            .as_ref()
            .is_some_and(|r| r.known(domain))
            .then_some(domain)
    }

    /// The call has its outcome: it leaves the map and is counted, once.
    fn finish(&self, state: &mut CallState, id: &CallId) {
        let Some(outcome) = state.call.outcome() else {
            return;
        };
        // While unfinished the map's entry for `id` is this call.
        state.finished = true;
        self.calls.remove(id);
        self.metrics.calls_active.dec();
        self.metrics.call_ended(outcome);
        if let Some(remote) = &state.remote {
            self.metrics.remote_call_ended(self.label(remote), outcome);
        }
        let elapsed = state.started.elapsed();
        if outcome == Outcome::Transferred {
            self.metrics.call_transferred(elapsed.as_secs_f64());
        }
        if let Some(rec) = state.rec.take() {
            end_call_span(rec, outcome, state.last_bye);
        }
        info!(
            parent: &state.span,
            outcome = outcome.as_str(),
            seconds = %Seconds(elapsed),
            "call ended"
        );
    }

    /// A task that feeds the ring timeout at `at`, unless the call stops
    /// ringing first (then it is aborted).
    fn ring_timer(
        self: &Arc<Self>,
        slot: Weak<Mutex<CallState>>,
        id: CallId,
        at: Instant,
    ) -> AbortHandle {
        let router = Arc::downgrade(self);
        self.timers
            .spawn(async move {
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

/// What a call's span notes of one input (only while it is recorded):
/// the first ringing relayed, each side's transfer, and the bye that
/// ended the call for a party.
fn note(state: &mut CallState, input: Input<'_>, outputs: &Outputs<'_>, transfers: u8) {
    let caller = state.caller;
    let Some(rec) = &mut state.rec else { return };
    for o in outputs {
        match *o {
            Output::Relay {
                keyword: Keyword::Ringing,
                ..
            } => rec.event("ringing", Vec::new()),
            Output::Bye { bye, .. } => state.last_bye = Some(bye.code),
            _ => {}
        }
    }
    if let Input::Frame {
        from,
        keyword: Keyword::Bye,
        bye_code: Some(code),
        ..
    } = input
    {
        if state.call.transfers() > transfers {
            let side = if from == caller { "caller" } else { "callee" };
            rec.event(
                "transfer",
                vec![opentelemetry::KeyValue::new("wsp.side", side)],
            );
        }
        state.last_bye = Some(code);
    }
}

/// Ends a call's span with its outcome and the code of the bye that
/// ended it.
fn end_call_span(mut rec: Recording, outcome: Outcome, bye: Option<ByeCode>) {
    rec.set("wsp.outcome", outcome.as_str());
    if let Some(code) = bye {
        rec.set("wsp.bye_code", i64::from(code.get()));
    }
    if matches!(
        outcome,
        Outcome::Gone | Outcome::Unavailable | Outcome::Unreachable
    ) {
        rec.fail(outcome.as_str());
    }
    rec.end();
}

fn via_name(via: Via<'_>) -> &'static str {
    match via {
        Via::Socket { .. } => "socket",
        Via::Link { .. } => "link",
        Via::Node => "node",
    }
}

/// A duration as seconds with three decimals (`0.027`), written with
/// integer formatting: a float's `{:.3}` costs several times as much, on
/// the one line every call logs.
struct Seconds(std::time::Duration);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = (self.0.as_micros() + 500) / 1000;
        write!(f, "{}.{:03}", ms / 1000, ms % 1000)
    }
}

/// Locks a call. A panic while holding it would be a bug in the state
/// machine; the state is still the last consistent one, so carry on.
fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, CallState> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}
