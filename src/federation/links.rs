//! All links of this server: one authenticated TLS WebSocket per (origin,
//! destination), opened on the first call that needs it, shared by every
//! call between the two domains, closed when idle.
//!
//! [`Links`] is how the router reaches other domains (it implements
//! [`Remote`]): it applies the federation policy, keeps one link per
//! domain and backs off from domains that failed. It also accepts links
//! (after [`Links::authenticate`]). What a link's frames mean is
//! `link.rs`'s; how a connection is made is `dial.rs`'s; how an incoming
//! link proves its origin is `auth.rs`'s.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, info, info_span, warn};

use crate::config::{Config, Federation};
use crate::federation::auth::{LinkAuthenticator, LinkRefusal};
use crate::federation::dial::{CaError, DialError, Dialer};
use crate::federation::discovery::{Discovery, DiscoveryError};
use crate::federation::keys::{self, LinkKey};
use crate::federation::link::{self, Direction, LinkRun};
use crate::frame::ServerBye;
use crate::limits::TokenBucket;
use crate::logging::Escaped;
use crate::metrics::Metrics;
use crate::peer::{Bounds, Peer};
use crate::router::{Remote, Router};
use crate::socket::PumpConfig;
use crate::telemetry::Telemetry;
use crate::trace::{CallTrace, Origin, SpanId, Steps, TraceParent};

/// How many messages may wait for one link (all its calls together); its
/// bytes are bounded by `limits.link_outbox_bytes`.
const LINK_OUTBOX: usize = 8192;
/// The first backoff after a failed link attempt; it doubles up to
/// `federation.backoff_max`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The most domains backed off from at once; past it, expired entries go,
/// and while it stays full a new failure is not remembered.
const MAX_BACKOFF_DOMAINS: usize = 10_000;

struct Backoff {
    failures: u32,
    /// No new attempt before this.
    until: Instant,
    /// Forgotten from this on: a domain quiet for as long again as its
    /// last delay starts over at [`FIRST_BACKOFF`].
    forget: Instant,
    bye: ServerBye,
}

/// The domains that failed recently, bounded: an entry is removed once
/// expired (when looked up, or swept when the map is full), so domains
/// that were made up leave nothing behind for long.
struct Backoffs {
    map: DashMap<String, Backoff>,
    max_delay: Duration,
    max_domains: usize,
}

impl Backoffs {
    fn new(max_delay: Duration, max_domains: usize) -> Self {
        Backoffs {
            map: DashMap::new(),
            max_delay,
            max_domains,
        }
    }

    /// The bye for a new call to `domain` while it backs off; an expired
    /// entry is removed.
    fn refusal(&self, domain: &str, now: Instant) -> Option<ServerBye> {
        let expired = {
            let b = self.map.get(domain)?;
            if now < b.until {
                return Some(b.bye);
            }
            now >= b.forget
        };
        if expired {
            self.map.remove_if(domain, |_, b| now >= b.forget);
        }
        None
    }

    /// `domain` failed: it backs off, twice as long as after its last
    /// failure (up to `federation.backoff_max`). Returns the delay.
    fn failed(&self, domain: &str, bye: ServerBye, now: Instant) -> Duration {
        if !self.map.contains_key(domain) && self.map.len() >= self.max_domains {
            self.map.retain(|_, b| now < b.forget);
            if self.map.len() >= self.max_domains {
                // Full of domains still backing off: this one is not
                // remembered (its discovery failure is cached anyway).
                return Duration::ZERO;
            }
        }
        let fresh = Backoff {
            failures: 0,
            until: now,
            forget: now,
            bye,
        };
        let mut b = match self.map.entry(domain.to_string()) {
            Entry::Occupied(e) if now >= e.get().forget => {
                let mut e = e.into_ref();
                *e = fresh;
                e
            }
            Entry::Occupied(e) => e.into_ref(),
            Entry::Vacant(v) => v.insert(fresh),
        };
        b.failures = b.failures.saturating_add(1);
        let delay = FIRST_BACKOFF
            .saturating_mul(1u32 << (b.failures - 1).min(16))
            .min(self.max_delay);
        b.until = now + delay;
        b.forget = b.until + delay;
        b.bye = bye;
        delay
    }

    /// `domain` was reached: it no longer backs off.
    fn succeeded(&self, domain: &str) {
        self.map.remove(domain);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    #[error("[federation] key: {0}")]
    Key(#[from] keys::KeyError),
    #[error("[federation] resolver: {0}")]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// All links of this server, and what it needs to open and accept them.
pub struct Links {
    domain: String,
    fed: Federation,
    /// `allow` and `deny`, replaced on reload (SIGHUP).
    policy: std::sync::RwLock<(Vec<String>, Vec<String>)>,
    pump: PumpConfig,
    outbox: Bounds,
    dialer: Dialer,
    auth: LinkAuthenticator,
    metrics: Arc<Metrics>,
    outbound: DashMap<String, Peer>,
    backoff: Backoffs,
    /// Links up (running) with each domain, both directions together.
    up: DashMap<String, usize>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Where the spans of links' openings go.
    telemetry: Arc<Telemetry>,
}

impl Links {
    /// Loads (or creates) the link key, sets up discovery and TLS trust.
    pub fn new(
        config: &Config,
        fed: &Federation,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        telemetry: Arc<Telemetry>,
    ) -> Result<Links, LinksError> {
        let key = LinkKey::load_or_create(&fed.key)?;
        Links::with_key(config, fed, key, metrics, shutdown, tasks, telemetry)
    }

    /// [`Links::new`] with the link key given (`wspd check` must not
    /// create the server's key file).
    pub(crate) fn with_key(
        config: &Config,
        fed: &Federation,
        key: LinkKey,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        telemetry: Arc<Telemetry>,
    ) -> Result<Links, LinksError> {
        let discovery = Discovery::new(fed, metrics.clone())?;
        let dialer = Dialer::new(
            config.domain.clone(),
            key,
            discovery,
            fed.ca.as_deref(),
            fed.connect_timeout,
            config.limits.max_frame_bytes,
        )?;
        Ok(Links {
            domain: config.domain.clone(),
            fed: fed.clone(),
            policy: std::sync::RwLock::new((fed.allow.clone(), fed.deny.clone())),
            pump: PumpConfig::from_limits(&config.limits),
            outbox: Bounds {
                messages: LINK_OUTBOX,
                bytes: config.limits.link_outbox_bytes,
            },
            dialer,
            auth: LinkAuthenticator::new(config.domain.clone(), metrics.clone()),
            metrics,
            outbound: DashMap::new(),
            backoff: Backoffs::new(fed.backoff_max, MAX_BACKOFF_DOMAINS),
            up: DashMap::new(),
            shutdown,
            tasks,
            telemetry,
        })
    }

    /// Whether policy lets `domain` federate (the lists as last reloaded).
    pub fn allows(&self, domain: &str) -> bool {
        let p = self.policy.read().unwrap_or_else(|e| e.into_inner());
        let (allow, deny) = &*p;
        !deny.iter().any(|d| d == domain) && (allow.is_empty() || allow.iter().any(|d| d == domain))
    }

    /// Replaces the allow and deny lists (SIGHUP). Links already up stay;
    /// the new lists apply to every new call and link.
    pub fn set_policy(&self, allow: Vec<String>, deny: Vec<String>) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = (allow, deny);
    }

    /// The keys document served at `/.well-known/wsp/keys`.
    pub fn keys_document(&self) -> String {
        self.dialer.key().document(&self.domain)
    }

    /// How this server reaches other servers (for `wspd check`).
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// The discovery this server uses (for `wspd check`).
    pub fn discovery(&self) -> &Discovery {
        self.dialer.discovery()
    }

    /// The id of the key this server signs its links with.
    pub(crate) fn key_id(&self) -> &str {
        self.dialer.key().id()
    }

    /// Checks an incoming link's `Authorization: WSP-Link ...` header,
    /// bound to `exporter` (this TLS session's). Returns the origin domain.
    /// `traceparent` is the upgrade's header: the acceptance (key fetch,
    /// signature check) is a span of the trace of the origin's opening.
    pub async fn authenticate(
        &self,
        header: &str,
        exporter: Option<[u8; 32]>,
        traceparent: Option<&http::HeaderValue>,
    ) -> Result<String, LinkRefusal> {
        let parent = traceparent
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let trace = CallTrace::new(parent, Origin::Server, self.telemetry.ratio());
        let start = std::time::SystemTime::now();
        let mut steps = Steps::default();
        let result = self
            .auth
            .authenticate(
                &self.dialer,
                |d| self.allows(d),
                header,
                exporter,
                &mut steps,
            )
            .await;
        debug!(
            trace_id = %trace.trace_id,
            steps = %steps.summary(),
            ok = result.is_ok(),
            "link authentication"
        );
        if let Some(mut rec) = self.telemetry.record(
            "link accept",
            opentelemetry::trace::SpanKind::Server,
            &trace,
            start,
        ) {
            match &result {
                Ok(origin) => rec.set("wsp.origin", origin.clone()),
                Err(r) => rec.fail(r.id),
            }
            rec.steps(&steps.0);
            rec.end();
        }
        result
    }

    fn new_link(
        &self,
        router: &Arc<Router>,
        dir: Direction,
        remote: String,
        span: impl FnOnce(u64) -> Span,
    ) -> (Peer, LinkRun) {
        let (peer, outbox) = Peer::new(router.next_peer_id(), self.outbox, &self.shutdown);
        let span = span(peer.id);
        let run = LinkRun {
            dir,
            remote,
            peer: peer.clone(),
            outbox,
            router: router.clone(),
            span,
            idle_after: self.fed.link_idle_timeout,
            invites: TokenBucket::new(
                self.fed.invites_per_second,
                self.fed.invite_burst,
                Instant::now(),
            ),
            max_calls: self.fed.calls_per_link,
        };
        (peer, run)
    }

    /// Opens the link, then runs it; if it cannot be opened, every call
    /// waiting for it is refused and the domain backs off. `trace` is the
    /// link opening's own span in the trace of the call that opened it.
    async fn run_outbound(self: Arc<Self>, domain: String, mut run: LinkRun, trace: CallTrace) {
        let id = run.peer.id;
        let start = std::time::SystemTime::now();
        let clock = Instant::now();
        let mut steps = Steps::default();
        // Only the setup runs in the link's span: once up, the link's
        // events name it (see socket::Handler::span).
        let connected = async {
            tokio::select! {
                r = self.dialer.connect(&domain, Some(trace.traceparent()), &mut steps) => r,
                _ = self.shutdown.cancelled() => Err(DialError::Shutdown),
            }
        }
        .instrument(run.span.clone())
        .await;
        let result = connected.as_ref().map_or_else(DialError::reason, |_| "ok");
        self.metrics
            .link_opened(result, clock.elapsed().as_secs_f64());
        if let Some(mut rec) = self.telemetry.record(
            "link open",
            opentelemetry::trace::SpanKind::Client,
            &trace,
            start,
        ) {
            rec.set_local_parent();
            rec.set("wsp.domain", domain.clone());
            rec.set("wsp.result", result);
            if let Err(e) = &connected {
                rec.fail(e.reason());
            }
            rec.steps(&steps.0);
            rec.end();
        }
        let mut ws = match connected {
            Ok(ws) => ws,
            Err(e) => return self.failed(&domain, e, &mut run, &trace, &steps),
        };
        self.metrics.link_attempt("ok");
        self.backoff.succeeded(&domain);
        info!(
            parent: &run.span,
            trace_id = %trace.trace_id,
            seconds = format_args!("{:.3}", clock.elapsed().as_secs_f64()),
            steps = %steps.summary(),
            "link up"
        );
        let unlist = || {
            self.outbound.remove_if(&domain, |_, p| p.id == id);
        };
        self.mark_up(&domain);
        link::run(&mut ws, run, &self.pump, &self.shutdown, unlist).await;
        self.mark_down(&domain);
    }

    /// One more link with `domain` runs: its calls are counted under its
    /// name until it has ended them all (`link::run` returned).
    fn mark_up(&self, domain: &str) {
        *self.up.entry(domain.to_string()).or_insert(0) += 1;
    }

    fn mark_down(&self, domain: &str) {
        if let Entry::Occupied(mut e) = self.up.entry(domain.to_string()) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// A link that could not be opened: logged, counted, backed off from,
    /// and every call queued for it answered with the failure's bye.
    fn failed(
        &self,
        domain: &str,
        e: DialError,
        run: &mut LinkRun,
        trace: &CallTrace,
        steps: &Steps,
    ) {
        let bye = e.bye();
        let reason = e.reason();
        warn!(
            parent: &run.span,
            reason,
            code = bye.code.get(),
            trace_id = %trace.trace_id,
            steps = %steps.summary(),
            "link to {domain} failed: {}",
            Escaped(&e)
        );
        self.metrics.link_attempt(reason);
        self.metrics.link_failure(reason);
        self.note_failure(domain, bye);
        let id = run.peer.id;
        self.outbound.remove_if(domain, |_, p| p.id == id);
        for call in crate::peer::close_outbox(&mut run.outbox.rx, Vec::new()) {
            run.router.remote_bye(id, &call, bye);
        }
    }

    fn note_failure(&self, domain: &str, bye: ServerBye) {
        let delay = self.backoff.failed(domain, bye, Instant::now());
        debug!(?delay, "backing off");
    }

    /// Runs an accepted link from `origin` to its end.
    pub async fn run_inbound<S>(
        &self,
        router: &Arc<Router>,
        mut ws: WebSocketStream<S>,
        origin: String,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (_, run) = self.new_link(
            router,
            Direction::In,
            origin.clone(),
            |id| info_span!(parent: None, "link", dir = "in", peer = %origin, id),
        );
        info!(parent: &run.span, "link accepted");
        self.mark_up(&origin);
        link::run(&mut ws, run, &self.pump, &self.shutdown, || {}).await;
        self.mark_down(&origin);
    }
}

impl Remote for Links {
    /// The link to `domain` for a new call: the one up or being opened, or
    /// a new one. Refused at once by policy or while backing off.
    fn peer_for(
        self: Arc<Self>,
        router: &Arc<Router>,
        domain: &str,
        trace: &CallTrace,
    ) -> Result<Peer, ServerBye> {
        if !self.allows(domain) {
            return Err(ServerBye::POLICY);
        }
        if let Some(p) = self.outbound.get(domain) {
            return Ok(p.clone());
        }
        if let Some(bye) = self.backoff.refusal(domain, Instant::now()) {
            return Err(bye);
        }
        let run = match self.outbound.entry(domain.to_string()) {
            Entry::Occupied(e) => return Ok(e.get().clone()),
            Entry::Vacant(v) => {
                let (peer, run) = self.new_link(
                    router,
                    Direction::Out,
                    domain.to_string(),
                    |id| info_span!(parent: None, "link", dir = "out", peer = %domain, id),
                );
                v.insert(peer);
                run
            }
        };
        let peer = run.peer.clone();
        let domain = domain.to_string();
        let tasks = self.tasks.clone();
        // The opening is a span of the call that asked for the link.
        let trace = CallTrace {
            span_id: SpanId::random(),
            parent: Some(trace.span_id),
            ..*trace
        };
        tasks.spawn(async move { self.run_outbound(domain, run, trace).await });
        Ok(peer)
    }

    /// Known: a link up with it (either direction), listed in
    /// `[federation.peers]`, or in `allow` (as last reloaded).
    fn known(&self, domain: &str) -> bool {
        self.up.contains_key(domain)
            || self.fed.peers.contains_key(domain)
            || self
                .policy
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .iter()
                .any(|d| d == domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BYE: ServerBye = ServerBye::POLICY;

    #[test]
    fn backoff_doubles_then_is_forgotten() {
        let b = Backoffs::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        assert_eq!(b.failed("x.test", BYE, t0), FIRST_BACKOFF);
        assert!(b.refusal("x.test", t0).is_some());
        // Past its delay a new attempt may go; failing again doubles it.
        let t1 = t0 + FIRST_BACKOFF;
        assert!(b.refusal("x.test", t1).is_none());
        assert_eq!(b.map.len(), 1, "kept while a new failure would double");
        assert_eq!(b.failed("x.test", BYE, t1), 2 * FIRST_BACKOFF);
        // Quiet for as long again: looked up, it is removed.
        let t2 = t1 + 4 * FIRST_BACKOFF;
        assert!(b.refusal("x.test", t2).is_none());
        assert_eq!(b.map.len(), 0);
        assert_eq!(b.failed("x.test", BYE, t2), FIRST_BACKOFF, "starts over");
        b.succeeded("x.test");
        assert_eq!(b.map.len(), 0);
    }

    #[test]
    fn backoff_map_is_bounded_and_swept() {
        let b = Backoffs::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        for i in 0..50 {
            b.failed(&format!("made-up-{i}.test"), BYE, t0);
            assert!(b.map.len() <= 10);
        }
        // Full of live entries: a new domain is not remembered.
        assert!(b.refusal("made-up-49.test", t0).is_none());
        // Once they have expired, the next failure sweeps them away.
        let later = t0 + 2 * FIRST_BACKOFF;
        b.failed("real.test", BYE, later);
        assert_eq!(b.map.len(), 1);
        assert!(b.refusal("real.test", later).is_some());
    }
}
