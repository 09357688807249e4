//! One domain on several nodes: presence, liveness and the node-to-node
//! path, shared through Redis.
//!
//! What lives in Redis (keys under `wspd:DOMAIN:`):
//! - `nodes`: the set of the cluster's node names;
//! - `node:NAME`: a node's liveness, renewed every third of
//!   `node_timeout` and expiring after it (a node whose key is gone is
//!   dead for the others);
//! - `users:NAME`: the users with a socket on that node, written by that
//!   node only, deleted by a survivor when the node dies;
//! - the channel `to:NAME`: the call frames for that node;
//! - the channel `presence`: every node's presence changes.
//!
//! Redis pub/sub delivers at most once, so every message is numbered per
//! sender and channel ([`wire`]): a gap in another node's frames ends the
//! calls with it (bye 503) and is counted; a gap in its presence makes
//! this node read that node's users again. After a reconnect, this node
//! subscribes first, then writes its liveness and users again from memory
//! (Redis may have restarted empty), then reads the others'.
//!
//! The router sees another node as one more [`Peer`] ([`node`]): the node
//! that takes an invite owns the call and forks it to a peer for each node
//! holding devices of the callee; that node runs its own call for those
//! devices, as the callee's server does across a federation link.
//!
//! While Redis is away, this node keeps serving its own users: calls
//! between them go on and new ones are placed; an invite that finds no
//! device here is refused with 503 at once.

mod node;
mod presence;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, IntoConnectionInfo};
use smallvec::SmallVec;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Span, debug, info, info_span, warn};

use crate::address::Address;
use crate::call::PeerId;
use crate::config::{self, Limits};
use crate::frame::ServerBye;
use crate::metrics::Metrics;
use crate::peer::{Bounds, Out, Peer};
use crate::router::{Nodes, Router};

use node::{NodeLink, Why};
use presence::Presence;
use wire::{Seen, Sequence};

/// The body of a node's acknowledgement of another's presence message
/// (`ack EPOCH SEQ`), sent on that node's channel; frames start with `[`.
const ACK: &str = "ack ";

/// The most other nodes whose messages are tracked at once.
const MAX_NODES: usize = 256;

/// How long one Redis command (or pipeline) may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// Presence changes waiting to be written; past it, the whole set is
/// written again at the next heartbeat.
const PRESENCE_QUEUE: usize = 65_536;
/// Presence changes written in one round trip at most.
const PRESENCE_BATCH: usize = 1024;
/// The wait between attempts to reach Redis again, doubling up to the max.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Not the URL: it may hold a password.
    #[error("[cluster] redis is not a usable Redis URL: {0}")]
    Url(String),
}

/// What the presence writer does, in order: it alone writes this node's
/// presence, so that no lock is needed across the writes.
enum PresenceOp {
    /// A user has its first socket here (`true`), or its last one left.
    Change(Address, bool),
    /// Write this node again (liveness, membership, all its users, a new
    /// epoch); answers whether Redis took it.
    Announce(tokio::sync::oneshot::Sender<bool>),
}

/// The names of what the cluster keeps in Redis.
pub struct Keys {
    prefix: String,
}

impl Keys {
    fn new(domain: &str) -> Keys {
        Keys {
            prefix: format!("wspd:{domain}:"),
        }
    }
    fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    fn node(&self, name: &str) -> String {
        format!("{}node:{name}", self.prefix)
    }
    fn users(&self, name: &str) -> String {
        format!("{}users:{name}", self.prefix)
    }
    fn channel(&self, name: &str) -> String {
        format!("{}to:{name}", self.prefix)
    }
    fn presence(&self) -> String {
        format!("{}presence", self.prefix)
    }
}

/// This node's part in the cluster.
pub struct Cluster {
    /// Itself, for the tasks of the peers it makes.
    me: Weak<Cluster>,
    node: String,
    /// Changes each time the process starts: the epoch of its frames.
    incarnation: u64,
    timeout: Duration,
    keys: Keys,
    client: redis::Client,
    /// Commands and publishing; reconnects by itself once made.
    conn: RwLock<Option<ConnectionManager>>,
    metrics: Arc<Metrics>,
    router: OnceLock<Weak<Router>>,
    /// The other nodes alive at the last look, with the value of their
    /// liveness key (the process's incarnation: a node restarted under its
    /// name has a new one).
    live: RwLock<HashMap<String, String>>,
    presence: Presence,
    peers: DashMap<String, NodeLink>,
    /// The next number of the frames for each other node.
    out_seq: DashMap<String, u64>,
    presence_tx: mpsc::Sender<PresenceOp>,
    presence_rx: Mutex<Option<mpsc::Receiver<PresenceOp>>>,
    /// Changes were lost: write the whole set again.
    presence_dirty: AtomicBool,
    /// Changes queued so far, and (below) written so far: a new socket's
    /// 101 waits until its user's presence is out ([`Cluster::presence_written`]).
    presence_queued: AtomicU64,
    presence_done: tokio::sync::watch::Sender<u64>,
    /// The number of the last presence message published (this epoch).
    presence_published: AtomicU64,
    /// What each other node has applied of this node's presence: its
    /// acknowledgement (epoch, number); bumped on each.
    presence_acks: Mutex<HashMap<String, (u64, u64)>>,
    acked: tokio::sync::watch::Sender<u64>,
    presence_epoch: AtomicU64,
    presence_seq: AtomicU64,
    /// The subscription is up: announcing is allowed.
    subscribed: AtomicBool,
    /// This node has been announced once: a liveness key gone since
    /// means the others declared it dead.
    announced: AtomicBool,
    /// Redis answers: the other nodes can be reached.
    healthy: AtomicBool,
    bounds: Bounds,
    max_message: usize,
    span: Span,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Cluster {
    pub fn new(
        cfg: &config::Cluster,
        domain: &str,
        limits: &Limits,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let info = cfg
            .redis
            .as_str()
            .into_connection_info()
            .map_err(|e| ClusterError::Url(format!("{:?}", e.kind())))?;
        // Frames between nodes are small and latency matters.
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let client = redis::Client::open(info.set_tcp_settings(tcp))
            .map_err(|e| ClusterError::Url(format!("{:?}", e.kind())))?;
        let (presence_tx, presence_rx) = mpsc::channel(PRESENCE_QUEUE);
        let span = info_span!(parent: None, "cluster", node = %cfg.node);
        Ok(Arc::new_cyclic(|me| Cluster {
            me: me.clone(),
            node: cfg.node.clone(),
            incarnation: rand::random(),
            timeout: cfg.node_timeout,
            keys: Keys::new(domain),
            client,
            conn: RwLock::new(None),
            metrics,
            router: OnceLock::new(),
            live: RwLock::new(HashMap::new()),
            presence: Presence::default(),
            peers: DashMap::new(),
            out_seq: DashMap::new(),
            presence_tx,
            presence_rx: Mutex::new(Some(presence_rx)),
            presence_dirty: AtomicBool::new(false),
            presence_queued: AtomicU64::new(0),
            presence_done: tokio::sync::watch::Sender::new(0),
            presence_published: AtomicU64::new(0),
            presence_acks: Mutex::new(HashMap::new()),
            acked: tokio::sync::watch::Sender::new(0),
            presence_epoch: AtomicU64::new(rand::random::<u32>() as u64),
            presence_seq: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            announced: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            bounds: Bounds {
                messages: node::NODE_OUTBOX,
                bytes: limits.link_outbox_bytes,
            },
            max_message: limits.max_frame_bytes.saturating_mul(2) + 256,
            span,
            shutdown,
            tasks,
        }))
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the other nodes can be reached (Redis answers).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Starts the cluster's tasks: the subscription, the heartbeat and the
    /// presence writer. They end with the server's shutdown.
    pub fn start(self: &Arc<Self>, router: &Arc<Router>) {
        let _ = self.router.set(Arc::downgrade(router));
        self.metrics.cluster_nodes.set(1);
        let rx = self
            .presence_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rx) = rx {
            self.tasks.spawn(self.clone().write_presence(rx));
        }
        self.tasks.spawn(self.clone().listen());
        self.tasks.spawn(self.clone().heartbeat());
    }

    fn router(&self) -> Option<Arc<Router>> {
        self.router.get().and_then(Weak::upgrade)
    }

    fn conn(&self) -> Option<ConnectionManager> {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was && !healthy {
            warn!(parent: &self.span, "Redis unreachable: serving this node's users only; invites that need another node get 503");
            self.metrics.cluster_nodes.set(1);
        } else if !was && healthy {
            info!(parent: &self.span, "Redis reachable: cross-node calls work");
        }
    }

    /// Runs a pipeline within [`REDIS_TIMEOUT`]. `None` when it failed
    /// (counted; the cluster is then unhealthy until a heartbeat succeeds).
    async fn run<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Option<T> {
        let mut conn = self.conn()?;
        match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.metrics.cluster_redis_errors.inc();
                debug!(parent: &self.span, error = ?e.kind(), "Redis command failed");
                self.set_healthy(false);
                None
            }
            Err(_) => {
                self.metrics.cluster_redis_errors.inc();
                debug!(parent: &self.span, "Redis command timed out");
                self.set_healthy(false);
                None
            }
        }
    }

    /// The next number of the frames for node `to`. Kept per node across
    /// its peers, so that a numbering gap always means lost messages.
    fn next_seq(&self, to: &str) -> u64 {
        let mut n = self.out_seq.entry(to.to_string()).or_insert(0);
        let seq = *n;
        *n += 1;
        seq
    }

    /// The peer for node `name`, made (with its task) if there is none.
    fn peer_for_node(self: &Arc<Self>, router: &Arc<Router>, name: &str) -> Peer {
        if let Some(l) = self.peers.get(name) {
            return l.peer.clone();
        }
        let entry = self.peers.entry(name.to_string());
        let link = entry.or_insert_with(|| {
            let (peer, outbox) = Peer::new(router.next_peer_id(), self.bounds, &self.shutdown);
            let span = info_span!(parent: &self.span, "node", peer = %name);
            let (link, ending) = NodeLink::new(peer.clone(), span);
            self.tasks.spawn(node::run(
                self.clone(),
                router.clone(),
                name.to_string(),
                peer,
                outbox,
                ending,
            ));
            link
        });
        link.peer.clone()
    }

    /// Another node started again (its frames carry a new epoch): the peer
    /// that carried the calls of its last run, if it is that one, ends. A
    /// peer made for the new run (to call it before it sent anything) is
    /// kept.
    fn end_last_run(&self, name: &str, epoch: u64) -> Option<CancellationToken> {
        let l = self.peers.get(name)?;
        let had = l.epoch.load(Ordering::Relaxed);
        if had == 0 || had == epoch {
            return None;
        }
        info!(parent: &self.span, node = %name, "another node started again: ending the calls with its last run");
        l.end(Why::Dead);
        Some(l.ended.clone())
    }

    /// A node peer's task ended: it leaves the list (unless replaced).
    fn forget_peer(&self, name: &str, id: PeerId) {
        self.peers.remove_if(name, |_, l| l.peer.id == id);
    }

    /// Ends the peer of node `name`, if any; returns what is cancelled
    /// once its calls have been ended.
    fn end_peer(&self, name: &str, why: Why) -> Option<CancellationToken> {
        let l = self.peers.get(name)?;
        l.end(why);
        Some(l.ended.clone())
    }

    // ---- The subscription -------------------------------------------------

    /// Keeps the subscription to this node's channel and to presence,
    /// reconnecting with backoff; after each (re)connect, announces this
    /// node and reads the others'.
    async fn listen(self: Arc<Self>) {
        let mut retry = RETRY_MIN;
        let mut connected_before = false;
        loop {
            let subscribed = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = tokio::time::timeout(REDIS_TIMEOUT, self.subscribe()) => r,
            };
            let mut pubsub = match subscribed {
                Ok(Ok(p)) => p,
                _ => {
                    self.metrics.cluster_redis_errors.inc();
                    self.set_healthy(false);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            };
            retry = RETRY_MIN;
            if connected_before {
                self.metrics.cluster_redis_reconnects.inc();
                info!(parent: &self.span, "subscribed to Redis again");
            }
            connected_before = true;
            if self.conn().is_none() {
                self.connect().await;
            }
            self.announce().await;
            // From now on a heartbeat that finds this node's key gone
            // announces it again.
            self.subscribed.store(true, Ordering::Relaxed);
            let mut frames: HashMap<String, Sequence> = HashMap::new();
            let mut presence: HashMap<String, Sequence> = HashMap::new();
            let mut stream = pubsub.on_message();
            loop {
                let msg = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    m = stream.next() => m,
                };
                let Some(msg) = msg else { break };
                if msg.get_channel_name() == self.keys.presence() {
                    self.presence_message(msg.get_payload_bytes(), &mut presence)
                        .await;
                } else {
                    self.frame_message(msg.get_payload_bytes(), &mut frames)
                        .await;
                }
            }
            drop(stream);
            self.subscribed.store(false, Ordering::Relaxed);
            self.set_healthy(false);
            // Whatever was published meanwhile is lost: the calls with
            // other nodes cannot be trusted to hear their frames.
            self.end_all_peers(Why::Gap);
        }
    }

    async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let mut p = self.client.get_async_pubsub().await?;
        p.subscribe(self.keys.channel(&self.node)).await?;
        p.subscribe(self.keys.presence()).await?;
        Ok(p)
    }

    /// A frame from another node, for one of the calls it shares with this
    /// one.
    async fn frame_message(self: &Arc<Self>, raw: &[u8], seqs: &mut HashMap<String, Sequence>) {
        let Some(router) = self.router() else { return };
        if raw.len() > self.max_message {
            warn!(parent: &self.span, bytes = raw.len(), "dropped an oversized message from another node");
            return;
        }
        let Some(m) = wire::decode(raw) else {
            warn!(parent: &self.span, "dropped a message from another node that does not parse");
            return;
        };
        self.metrics.cluster_frames("received", 1);
        if !self.room_for(seqs, m.node) {
            return;
        }
        let known = seqs.contains_key(m.node);
        let seen = seqs
            .entry(m.node.to_string())
            .or_default()
            .see(m.epoch, m.seq);
        let ending = match seen {
            Seen::InOrder => None,
            Seen::NewEpoch { .. } if known => self.end_last_run(m.node, m.epoch),
            Seen::NewEpoch { first } => {
                if !first {
                    debug!(parent: &self.span, node = %m.node, seq = m.seq, "first frame seen from a node is not its first");
                }
                None
            }
            Seen::Gap => {
                self.metrics.cluster_gaps.inc();
                warn!(parent: &self.span, node = %m.node, "frames from another node were lost: ending the calls with it");
                self.end_peer(m.node, Why::Gap)
            }
        };
        // The calls of the peer being ended end first: this frame, which
        // came after the loss, must not reach them out of order.
        if let Some(ended) = ending {
            let _ = tokio::time::timeout(REDIS_TIMEOUT, ended.cancelled()).await;
        }
        if let Some(ack) = m.body.strip_prefix(ACK) {
            self.acked(m.node, ack);
            return;
        }
        let peer = self.peer_for_node(&router, m.node);
        let span = match self.peers.get(m.node) {
            Some(l) => {
                // The peer now belongs to this run of that node.
                let _ = l
                    .epoch
                    .compare_exchange(0, m.epoch, Ordering::Relaxed, Ordering::Relaxed);
                l.span.clone()
            }
            None => self.span.clone(),
        };
        node::on_frame(&router, &peer, m.body, &span);
    }

    /// Whether the numbering of sender `node` may be tracked: at most
    /// [`MAX_NODES`] senders, those no longer alive forgotten first.
    fn room_for(&self, seqs: &mut HashMap<String, Sequence>, node: &str) -> bool {
        if seqs.len() < MAX_NODES || seqs.contains_key(node) {
            return true;
        }
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        seqs.retain(|n, _| live.contains_key(n));
        if seqs.len() < MAX_NODES {
            return true;
        }
        warn!(parent: &self.span, "dropped a message: more than {MAX_NODES} nodes send to this one");
        false
    }

    /// Presence changes of another node; when some may have been missed,
    /// that node's users are read again.
    async fn presence_message(&self, raw: &[u8], seqs: &mut HashMap<String, Sequence>) {
        let Some(m) = wire::decode(raw) else {
            warn!(parent: &self.span, "dropped a presence message that does not parse");
            return;
        };
        if m.node == self.node || !self.room_for(seqs, m.node) {
            return;
        }
        match seqs
            .entry(m.node.to_string())
            .or_default()
            .see(m.epoch, m.seq)
        {
            Seen::InOrder => {
                for change in wire::changes(m.body) {
                    let (user, here) = match change {
                        wire::Change::Here(u) => (u, true),
                        wire::Change::Gone(u) => (u, false),
                    };
                    if let Ok(user) = Address::parse(user) {
                        self.presence.set(m.node, user, here);
                    }
                }
            }
            // Its users as they are now in Redis include these changes:
            // they were written before this message was published.
            Seen::NewEpoch { .. } | Seen::Gap => {
                let node = m.node.to_string();
                self.read_users(&node).await;
            }
        }
        // Applied: that node may answer its new sockets' upgrades.
        if let (Some(me), Some(router)) = (self.me.upgrade(), self.router()) {
            let ack = format!("{ACK}{:x} {}", m.epoch, m.seq);
            me.peer_for_node(&router, m.node)
                .deliver(Out::Frame(ack.into()), &self.metrics);
        }
    }

    /// Another node has applied this node's presence up to `seq` of
    /// `epoch`.
    fn acked(&self, node: &str, body: &str) {
        let mut parts = body.split(' ');
        let (Some(Ok(epoch)), Some(Ok(seq))) = (
            parts.next().map(|e| u64::from_str_radix(e, 16)),
            parts.next().map(str::parse::<u64>),
        ) else {
            return;
        };
        self.presence_acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_string(), (epoch, seq));
        self.acked.send_modify(|n| *n += 1);
    }

    /// Whether every live node has applied this node's presence up to
    /// `seq` of `epoch`.
    fn all_acked(&self, epoch: u64, seq: u64) -> bool {
        let acks = self.presence_acks.lock().unwrap_or_else(|e| e.into_inner());
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .all(|n| acks.get(n).is_some_and(|&(e, s)| e == epoch && s >= seq))
    }

    /// Reads node `name`'s users from Redis into the presence copy.
    async fn read_users(&self, name: &str) {
        let mut p = redis::pipe();
        p.smembers(self.keys.users(name));
        if let Some((users,)) = self.run::<(Vec<String>,)>(&p).await {
            self.presence
                .replace(name, users.iter().filter_map(|u| Address::parse(u).ok()));
        }
    }

    /// Writes this node into Redis again: liveness, membership and users
    /// (from memory), starts a new presence epoch (the others then read its
    /// users), and reads the other nodes' users.
    async fn announce(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .presence_tx
            .send(PresenceOp::Announce(tx))
            .await
            .is_err()
        {
            return;
        }
        if rx.await != Ok(true) {
            return;
        }
        self.set_healthy(true);
        self.look().await;
        for name in self.live_nodes() {
            self.read_users(&name).await;
        }
    }

    /// The writing of [`Cluster::announce`], by the presence writer.
    async fn write_announce(&self) -> bool {
        let Some(router) = self.router() else {
            return false;
        };
        let epoch = self.presence_epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let users: Vec<String> = router.local_users().iter().map(|u| u.to_string()).collect();
        let mut p = redis::pipe();
        p.add_command(self.liveness()).ignore();
        p.sadd(self.keys.nodes(), &self.node).ignore();
        p.del(self.keys.users(&self.node)).ignore();
        for chunk in users.chunks(1000) {
            p.sadd(self.keys.users(&self.node), chunk).ignore();
        }
        p.publish(self.keys.presence(), wire::encode(&self.node, epoch, 0, ""))
            .ignore();
        self.presence_dirty.store(false, Ordering::Relaxed);
        if self.run::<()>(&p).await.is_none() {
            self.presence_dirty.store(true, Ordering::Relaxed);
            return false;
        }
        self.presence_seq.store(1, Ordering::Relaxed);
        self.presence_published.store(0, Ordering::Relaxed);
        self.announced.store(true, Ordering::Relaxed);
        info!(parent: &self.span, users = users.len(), "announced this node to the cluster");
        true
    }

    // ---- Liveness ---------------------------------------------------------

    /// Renews this node's liveness and looks at the others', every third of
    /// `node_timeout`; connects the command connection first.
    async fn heartbeat(self: Arc<Self>) {
        let every = (self.timeout / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.conn().is_none() && !self.connect().await {
                continue;
            }
            self.beat().await;
        }
        self.leave().await;
    }

    async fn connect(&self) -> bool {
        let cfg = ConnectionManagerConfig::new()
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_max_delay(RETRY_MAX)
            .set_number_of_retries(2);
        let made = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            ConnectionManager::new_with_config(self.client.clone(), cfg),
        )
        .await;
        match made {
            Ok(Ok(c)) => {
                *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(c);
                true
            }
            _ => {
                self.metrics.cluster_redis_errors.inc();
                self.set_healthy(false);
                false
            }
        }
    }

    /// Writes this node's liveness key: its incarnation, expiring after
    /// `node_timeout`.
    fn liveness(&self) -> redis::Cmd {
        let mut c = redis::cmd("SET");
        c.arg(self.keys.node(&self.node))
            .arg(format!("{:x}", self.incarnation))
            .arg("PX")
            .arg(self.timeout.as_millis() as u64);
        c
    }

    async fn beat(&self) {
        // Renewed only if it is still there: a key gone means the others
        // declared this node dead, or Redis lost everything.
        let mut liveness = self.liveness();
        liveness.arg("XX");
        let mut p = redis::pipe();
        p.add_command(liveness);
        let Some((renewed,)) = self.run::<(Option<String>,)>(&p).await else {
            return;
        };
        if !self.subscribed.load(Ordering::Relaxed) {
            return;
        }
        if renewed.is_none() {
            if self.announced.load(Ordering::Relaxed) {
                warn!(parent: &self.span, "this node was found dead by the cluster (its liveness key is gone): ending its cross-node calls and announcing it again");
                self.end_all_peers(Why::Fenced);
            }
            self.announce().await;
            return;
        }
        if self.presence_dirty.load(Ordering::Relaxed) {
            self.announce().await;
            return;
        }
        self.set_healthy(true);
        self.look().await;
    }

    /// Reads which nodes are alive; a dead one is cleaned up here (its
    /// users and membership) and in Redis, and its calls end.
    async fn look(&self) {
        let mut p = redis::pipe();
        p.smembers(self.keys.nodes());
        let Some((members,)) = self.run::<(Vec<String>,)>(&p).await else {
            return;
        };
        let others: Vec<String> = members.into_iter().filter(|m| *m != self.node).collect();
        let mut alive = HashMap::new();
        if !others.is_empty() {
            let mut p = redis::pipe();
            p.cmd("MGET")
                .arg(others.iter().map(|n| self.keys.node(n)).collect::<Vec<_>>());
            let Some((keys,)) = self.run::<(Vec<Option<String>>,)>(&p).await else {
                return;
            };
            let mut clean = redis::pipe();
            for (name, key) in others.iter().zip(keys) {
                if let Some(incarnation) = key {
                    alive.insert(name.clone(), incarnation);
                } else {
                    clean.srem(self.keys.nodes(), name).ignore();
                    clean.del(self.keys.users(name)).ignore();
                }
            }
            if alive.len() < others.len() {
                let _ = self.run::<()>(&clean).await;
            }
        }
        // Gone, or started again under its name (its last run is dead).
        let (dead, restarted): (Vec<String>, Vec<(String, u64)>) = {
            let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
            let dead = live
                .keys()
                .filter(|n| !alive.contains_key(*n))
                .cloned()
                .collect();
            let restarted = live
                .iter()
                .filter_map(|(n, inc)| {
                    let now = alive.get(n).filter(|now| *now != inc)?;
                    Some((n.clone(), u64::from_str_radix(now, 16).unwrap_or(0)))
                })
                .collect();
            *live = alive;
            self.metrics.cluster_nodes.set(live.len() as i64 + 1);
            (dead, restarted)
        };
        for name in &dead {
            info!(parent: &self.span, node = %name, "node dead: its calls end and its users are forgotten");
            self.presence.drop_node(name);
            self.end_peer(name, Why::Dead);
        }
        for (name, incarnation) in &restarted {
            // Unless the peer already carries the new run's calls.
            let current = self
                .peers
                .get(name)
                .is_some_and(|l| l.epoch.load(Ordering::Relaxed) == *incarnation);
            if !current {
                info!(parent: &self.span, node = %name, "node started again: the calls of its last run end");
                self.end_peer(name, Why::Dead);
            }
            self.read_users(name).await;
        }
    }

    fn live_nodes(&self) -> Vec<String> {
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn end_all_peers(&self, why: Why) {
        for l in self.peers.iter() {
            l.end(why);
        }
    }

    /// Leaves the cluster on shutdown: the others see this node gone at
    /// once rather than after `node_timeout`.
    async fn leave(&self) {
        let mut p = redis::pipe();
        p.del(self.keys.node(&self.node)).ignore();
        p.srem(self.keys.nodes(), &self.node).ignore();
        p.del(self.keys.users(&self.node)).ignore();
        let _ = self.run::<()>(&p).await;
    }

    // ---- Presence ---------------------------------------------------------

    /// Writes this node's presence changes in batches: the set in Redis and
    /// one numbered message for the others.
    async fn write_presence(self: Arc<Self>, mut rx: mpsc::Receiver<PresenceOp>) {
        let mut batch = Vec::new();
        loop {
            let n = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                n = rx.recv_many(&mut batch, PRESENCE_BATCH) => n,
            };
            if n == 0 {
                return;
            }
            let mut p = redis::pipe();
            let mut body = String::new();
            let mut changes = 0u64;
            let key = self.keys.users(&self.node);
            for op in batch.drain(..) {
                match op {
                    PresenceOp::Change(user, here) => {
                        changes += 1;
                        let user = user.to_string();
                        if here {
                            p.sadd(&key, &user).ignore();
                        } else {
                            p.srem(&key, &user).ignore();
                        }
                        wire::push_change(&mut body, &user, here);
                    }
                    PresenceOp::Announce(reply) => {
                        // The changes before it are in the router's
                        // sockets already: the announce writes them all.
                        p = redis::pipe();
                        body.clear();
                        let _ = reply.send(self.write_announce().await);
                    }
                }
            }
            if body.is_empty() {
                self.presence_done.send_modify(|d| *d += changes);
                continue;
            }
            let epoch = self.presence_epoch.load(Ordering::Relaxed);
            let seq = self.presence_seq.fetch_add(1, Ordering::Relaxed);
            p.publish(
                self.keys.presence(),
                wire::encode(&self.node, epoch, seq, &body),
            )
            .ignore();
            if self.run::<()>(&p).await.is_none() {
                self.presence_dirty.store(true, Ordering::Relaxed);
            } else {
                self.presence_published.fetch_max(seq, Ordering::Relaxed);
            }
            self.presence_done.send_modify(|d| *d += changes);
        }
    }

    /// Waits (at most [`REDIS_TIMEOUT`] in all) until the presence changes
    /// queued so far are written, published and applied by every live node
    /// (each acknowledges what it applied): a socket is answered its 101
    /// once the other nodes know of it, so that a call placed from another
    /// node right after reaches it, as on one node.
    pub async fn presence_written(&self) {
        if !self.healthy() {
            return;
        }
        let deadline = tokio::time::Instant::now() + REDIS_TIMEOUT;
        let target = self.presence_queued.load(Ordering::Relaxed);
        let mut done = self.presence_done.subscribe();
        let _ = tokio::time::timeout_at(deadline, done.wait_for(|d| *d >= target)).await;
        // Published; now applied by every live node (they acknowledge).
        let epoch = self.presence_epoch.load(Ordering::Relaxed);
        let seq = self.presence_published.load(Ordering::Relaxed);
        let mut acked = self.acked.subscribe();
        let _ = tokio::time::timeout_at(deadline, async {
            while !self.all_acked(epoch, seq) {
                if acked.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
}

impl Nodes for Cluster {
    fn peers_for(
        &self,
        router: &Arc<Router>,
        user: &Address,
    ) -> Result<SmallVec<[Peer; 2]>, ServerBye> {
        if !self.healthy() {
            return Err(ServerBye::CLUSTER_UNREACHABLE);
        }
        let Some(me) = self.me.upgrade() else {
            return Ok(SmallVec::new());
        };
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        let names: SmallVec<[Arc<str>; 2]> = self
            .presence
            .nodes_of(user)
            .into_iter()
            .filter(|n| live.contains_key(&**n))
            .collect();
        drop(live);
        Ok(names.iter().map(|n| me.peer_for_node(router, n)).collect())
    }

    fn present(&self, user: &Address, here: bool) {
        match self
            .presence_tx
            .try_send(PresenceOp::Change(user.clone(), here))
        {
            Ok(()) => {
                self.presence_queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self.presence_dirty.store(true, Ordering::Relaxed),
        }
    }
}
