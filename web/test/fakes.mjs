// Small fakes for testing wsp.js without a browser: a WebSocket, a tiny
// in-memory WSP server that relays frames like wspd, an RTCPeerConnection
// pair that "connects" once descriptions and candidates are exchanged, and
// a manual clock. Only what wsp.js uses is faked.

/** Lets queued events (setImmediate, promises) run. */
export async function settle(rounds = 30) {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

/** A JWT-shaped token with the given claims (unsigned: the client never verifies). */
export function makeToken(sub, extra = {}) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: 2e9, ...extra })}.c2ln`;
}

function event(type, props = {}) {
  return Object.assign(new Event(type), props);
}

/** A manual clock for the library's injected timers. */
export class FakeClock {
  now = 0;
  #next = 1;
  /** @type {Map<number, {at: number, ms: number, callback: () => void}>} */
  timers = new Map();

  setTimeout = (callback, ms) => {
    const id = this.#next++;
    this.timers.set(id, { at: this.now + ms, ms, callback });
    return id;
  };

  clearTimeout = (id) => {
    this.timers.delete(id);
  };

  /** The delays of the pending timers, in creation order. */
  pending() {
    return [...this.timers.values()].map((t) => t.ms);
  }

  /** Runs every timer due within `ms`, in time order. */
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let first = null;
      for (const [id, t] of this.timers) if (t.at <= end && (!first || t.at < first[1].at)) first = [id, t];
      if (!first) break;
      this.timers.delete(first[0]);
      this.now = first[1].at;
      first[1].callback();
    }
    this.now = end;
  }
}

/**
 * A fake WebSocket. The client side is what browsers offer; `accept()`,
 * `refuse()`, `deliver()` and `drop()` are the network's side.
 */
export class FakeWebSocket extends EventTarget {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  /** Every socket created, in order. */
  static created = [];

  constructor(url, protocol) {
    super();
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    /** Every text the client sent. */
    this.sent = [];
    /** The client's close(code, reason), if it closed. */
    this.closedBy = null;
    FakeWebSocket.created.push(this);
  }

  /** The token in the URL. */
  get token() {
    return new URL(this.url).searchParams.get('access_token');
  }

  /** The frames the client sent, parsed. */
  get frames() {
    return this.sent.map((t) => JSON.parse(t));
  }

  send(text) {
    if (this.readyState !== 1) throw new Error('InvalidStateError: socket not open');
    this.sent.push(text);
    this.onsend?.(text);
  }

  close(code = 1000, reason = '') {
    if (this.readyState >= 2) return;
    const wasOpen = this.readyState === 1;
    this.closedBy = { code, reason };
    this.readyState = 3;
    setImmediate(() => this.dispatchEvent(event('close', wasOpen ? { code, reason } : { code: 1006, reason: '' })));
  }

  // The network's side.
  accept() {
    this.readyState = 1;
    this.dispatchEvent(event('open'));
  }

  refuse() {
    this.readyState = 3;
    this.dispatchEvent(event('error'));
    this.dispatchEvent(event('close', { code: 1006, reason: '' }));
  }

  deliver(frame) {
    this.dispatchEvent(event('message', { data: typeof frame === 'string' ? frame : JSON.stringify(frame) }));
  }

  drop(code = 1006, reason = '') {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.dispatchEvent(event('close', { code, reason }));
  }
}

/**
 * A tiny WSP server in memory: it accepts sockets whose token it knows,
 * relays call frames between the two sides as wspd does (simplified), and
 * answers `GET /session`. `log` has every frame it received.
 */
export class FakeServer {
  /** @param {string[]} users */
  constructor(users) {
    this.tokens = new Map(users.map((u) => [makeToken(u), u]));
    this.up = true;
    this.log = [];
    this.sockets = [];
    this.calls = new Map();
    this.sessionStatus = null; // force the status of GET /session
    this.unreachable = new Set(); // users whose sockets fail to open (their network is away)
    this.iceServers = [];
    const server = this;
    this.WebSocket = class extends FakeWebSocket {
      constructor(url, protocol) {
        super(url, protocol);
        setImmediate(() => server.#connect(this));
      }
    };
    this.fetch = (url) => this.#session(url);
  }

  tokenOf(user) {
    for (const [t, u] of this.tokens) if (u === user) return t;
    throw new Error(`no token for ${user}`);
  }

  revoke(user) {
    this.tokens.delete(this.tokenOf(user));
  }

  #connect(ws) {
    if (ws.readyState !== 0) return;
    const user = this.tokens.get(ws.token);
    if (!this.up || !user || this.unreachable.has(user)) return ws.refuse();
    ws.user = user;
    ws.onsend = (text) => this.#received(ws, JSON.parse(text));
    this.sockets.push(ws);
    ws.accept();
  }

  async #session(url) {
    if (!this.up) throw new TypeError('fetch failed');
    const u = new URL(url);
    const token = u.searchParams.get('access_token');
    const status = u.pathname !== '/session' ? 404 : this.sessionStatus ?? (this.tokens.has(token) ? 200 : 401);
    const body =
      status === 200
        ? { user: this.tokens.get(token), iceServers: this.iceServers }
        : status === 401
          ? { error: 'token-expired', description: 'the token has expired' }
          : { error: 'not-found', description: 'no such endpoint' };
    return { status, ok: status === 200, json: async () => body };
  }

  /** Drops every socket, as a dying server would; the server is then down. */
  shutdown() {
    this.up = false;
    for (const ws of this.sockets.splice(0)) this.#gone(ws);
  }

  /** Drops one user's sockets. */
  kill(user) {
    for (const ws of this.sockets.filter((s) => s.user === user)) {
      this.sockets.splice(this.sockets.indexOf(ws), 1);
      this.#gone(ws);
    }
  }

  #gone(ws) {
    ws.drop(1006);
    for (const [id, c] of this.calls) {
      const side = c.caller === ws ? 'caller' : c.callee === ws ? 'callee' : null;
      if (!side || c.transferred[side]) continue;
      const other = side === 'caller' ? c.callee : c.caller;
      if (other?.readyState === 1) other.deliver(['bye', { code: 410, description: 'Peer went away' }, { call: id }]);
      this.calls.delete(id);
    }
  }

  #received(ws, frame) {
    // The network is asynchronous: a frame is handled after send() returns.
    setImmediate(() => this.#handle(ws, frame));
  }

  #handle(ws, [keyword, content, options]) {
    const id = options?.call;
    this.log.push({ from: ws.user, keyword, content, id, ws });
    this.onframe?.(this.log.at(-1));
    const relay = (to) => to?.readyState === 1 && to.deliver([keyword, content ?? null, { call: id }]);
    if (keyword === 'invite') {
      if (this.calls.has(id)) return ws.deliver(['bye', { code: 400, description: 'Call id in use' }, { call: id }]);
      const devices = this.sockets.filter((s) => s.user === content.callee.uri && s !== ws);
      if (!devices.length) return ws.deliver(['bye', { code: 480, description: 'User offline' }, { call: id }]);
      this.calls.set(id, { caller: ws, callee: null, devices, transferred: {} });
      for (const d of devices) relay(d);
      return;
    }
    const c = this.calls.get(id);
    if (!c) return ws.deliver(['bye', { code: 481, description: 'No such call' }, { call: id }]);
    const fromCaller = ws === c.caller;
    if (keyword === 'offer' && !c.callee && !fromCaller) {
      c.callee = ws;
      for (const d of c.devices) if (d !== ws && d.readyState === 1) d.deliver(['bye', { code: 200, description: 'Answered elsewhere' }, { call: id }]);
    }
    const other = fromCaller ? c.callee ?? null : c.caller;
    if (keyword === 'ringing' || keyword === 'offer' || keyword === 'answer' || keyword === 'icecandidate') {
      if (!fromCaller && !c.callee && keyword !== 'ringing') return;
      return relay(other ?? (fromCaller ? null : c.caller));
    }
    if (keyword === 'bye') {
      if (content.code === 101) {
        c.transferred[fromCaller ? 'caller' : 'callee'] = true;
        relay(other);
        if (c.transferred.caller && c.transferred.callee) this.calls.delete(id);
        return;
      }
      if (fromCaller && !c.callee) {
        for (const d of c.devices) d.readyState === 1 && d.deliver(['bye', { code: 487, description: 'Cancelled' }, { call: id }]);
      } else if (!c.callee && c.devices.length > 1) {
        // One of several devices leaves; when none is left the caller
        // hears 480 (wspd: "No device answered").
        c.ringing ??= new Set(c.devices);
        c.ringing.delete(ws);
        if (c.ringing.size > 0) return;
        if (c.caller.readyState === 1) c.caller.deliver(['bye', { code: 480, description: 'No device answered' }, { call: id }]);
      } else {
        relay(other);
      }
      this.calls.delete(id);
    }
  }
}

/** The `a=ice-ufrag` of a fake SDP. */
const ufragOf = (sdp) => /^a=ice-ufrag:(\S+)/m.exec(sdp ?? '')?.[1] ?? null;

/**
 * A fake WebRTC: peer connections find each other through their SDP and
 * "connect" once both are stable with descriptions and a remote candidate
 * of the peer's current ICE username. `breakPath(pc)` breaks the path of a
 * connected pair, as a change of network does: both go `disconnected`,
 * their data channels stay open and hold what is sent; only an ICE
 * restart (an offer made with `iceRestart`, its answer and new candidates)
 * connects them again, and then what the channels held is delivered.
 */
export function makeWebRTC() {
  const pcs = new Map();
  let nextId = 1;

  class FakeDataChannel extends EventTarget {
    constructor(label, pc, remote = null) {
      super();
      this.label = label;
      this.pc = pc;
      this.remote = remote;
      this.readyState = 'connecting';
      this.bufferedAmount = 0;
      this.sent = [];
    }

    send(data) {
      if (this.readyState !== 'open') throw new Error('InvalidStateError: channel not open');
      this.sent.push(data);
      if (this.pc.broken) {
        this.pc.held.push([this, data]); // SCTP retransmits it once the path is back
        return;
      }
      this._transmit(data);
    }

    _transmit(data) {
      const remote = this.remote;
      setImmediate(() => {
        if (remote?.readyState === 'open') remote.dispatchEvent(event('message', { data }));
      });
    }

    close() {
      if (this.readyState === 'closed' || this.readyState === 'closing') return;
      this.readyState = 'closing';
      setImmediate(() => {
        this.readyState = 'closed';
        this.dispatchEvent(event('close'));
        this.remote?.close();
      });
    }

    _open() {
      this.readyState = 'open';
      this.dispatchEvent(event('open'));
    }
  }

  class FakeRTCPeerConnection extends EventTarget {
    constructor(configuration) {
      super();
      this.id = nextId++;
      pcs.set(this.id, this);
      this.configuration = configuration;
      this.signalingState = 'stable';
      this.iceConnectionState = 'new';
      this.connectionState = 'new';
      this.generation = 0;
      this.ufrag = `u${this.id}g0`;
      this.remoteUfrag = null;
      this.broken = false;
      this.brokenUfrag = null;
      /** Channel messages sent while the path is broken: [channel, data]. */
      this.held = [];
      this.localDescription = null;
      this.remoteDescription = null;
      this.remoteCandidates = [];
      this.senders = [];
      this.channels = [];
      this.announced = new Set();
      this.peer = null;
      this.connected = false;
      this.closed = false;
      this.gathered = false;
      this.needNegotiation = false;
      this.version = 0;
      /** Every operation, in order: for assertions. */
      this.ops = [];
    }

    addTrack(track, ...streams) {
      this.senders.push({ track, streams });
      this.#markNegotiation();
      return {};
    }

    createDataChannel(label) {
      const ch = new FakeDataChannel(label, this);
      this.channels.push(ch);
      this.#markNegotiation();
      if (this.connected) this.#linkChannels();
      return ch;
    }

    #markNegotiation() {
      if (this.needNegotiation) return;
      this.needNegotiation = true;
      this.#fireNegotiationNeeded();
    }

    #fireNegotiationNeeded() {
      setImmediate(() => {
        if (!this.closed && this.needNegotiation && this.signalingState === 'stable') this.dispatchEvent(event('negotiationneeded'));
      });
    }

    #sdp(ufrag) {
      return `v=0 fake pc=${this.id} version=${++this.version} tracks=${this.senders.length} channels=${this.channels.length}\r\na=ice-ufrag:${ufrag}\r\n`;
    }

    async createOffer(options) {
      if (options?.iceRestart) this.ops.push('createOffer:iceRestart');
      return { type: 'offer', sdp: this.#sdp(options?.iceRestart ? `u${this.id}g${this.generation + 1}` : this.ufrag) };
    }

    async createAnswer() {
      // An offer that restarts ICE (a new username) restarts ours too.
      return { type: 'answer', sdp: this.#sdp(this.remoteRestarted ? `u${this.id}g${this.generation + 1}` : this.ufrag) };
    }

    /** Takes the ICE username of our new description; a new one gathers again. */
    #takeUfrag(d) {
      const ufrag = ufragOf(d.sdp);
      if (!ufrag || ufrag === this.ufrag) return;
      this.ufrag = ufrag;
      this.generation++;
      this.gathered = false;
    }

    #check() {
      if (this.closed) throw new Error('InvalidStateError: closed');
    }

    async setLocalDescription(description) {
      this.#check();
      await null;
      if (description?.type === 'rollback') {
        if (this.signalingState !== 'have-local-offer') throw new Error('InvalidStateError: rollback');
        this.ops.push('rollback');
        this.localDescription = this.stableLocal ?? null;
        this.stableLocal = undefined;
        this.ufrag = ufragOf(this.localDescription?.sdp) ?? this.ufrag;
        this.signalingState = 'stable';
        return;
      }
      const d =
        description ?? (this.signalingState === 'have-remote-offer' ? await this.createAnswer() : await this.createOffer());
      this.ops.push(`setLocalDescription:${d.type}`);
      if (d.type === 'offer') {
        if (this.signalingState !== 'stable' && this.signalingState !== 'have-local-offer') throw new Error('InvalidStateError: SLD(offer)');
        this.stableLocal ??= this.localDescription;
        this.signalingState = 'have-local-offer';
        this.needNegotiation = false;
      } else {
        if (this.signalingState !== 'have-remote-offer') throw new Error('InvalidStateError: SLD(answer)');
        this.signalingState = 'stable';
        this.stableLocal = undefined;
        this.remoteRestarted = false;
      }
      this.localDescription = d;
      this.#takeUfrag(d);
      if (!this.gathered) {
        this.gathered = true;
        const ufrag = this.ufrag;
        setImmediate(() => {
          for (let i = 1; i <= 2; i++) {
            const init = { candidate: `candidate:${this.id}${i} 1 udp 1 127.0.0.1 ${5000 + i} typ host ufrag ${ufrag}`, sdpMid: '0', sdpMLineIndex: 0, usernameFragment: ufrag };
            this.dispatchEvent(event('icecandidate', { candidate: { ...init, toJSON: () => init } }));
          }
          this.dispatchEvent(event('icecandidate', { candidate: null }));
        });
      }
      this.#becameStable();
    }

    async setRemoteDescription(d) {
      this.#check();
      await null;
      this.ops.push(`setRemoteDescription:${d.type}`);
      if (d.type === 'offer') {
        if (this.signalingState === 'have-local-offer') {
          // implicit rollback (the polite peer in glare)
          this.ops.push('rollback');
          this.localDescription = this.stableLocal ?? null;
          this.stableLocal = undefined;
          this.ufrag = ufragOf(this.localDescription?.sdp) ?? this.ufrag;
          this.needNegotiation = true;
          this.signalingState = 'stable';
        }
        if (this.signalingState !== 'stable') throw new Error('InvalidStateError: SRD(offer)');
        this.signalingState = 'have-remote-offer';
      } else {
        if (this.signalingState !== 'have-local-offer') throw new Error('InvalidStateError: SRD(answer)');
        this.signalingState = 'stable';
        this.stableLocal = undefined;
      }
      this.remoteDescription = d;
      const ufrag = ufragOf(d.sdp);
      if (this.remoteUfrag !== null && ufrag !== this.remoteUfrag) {
        this.remoteCandidates = []; // the peer restarted ICE
        if (d.type === 'offer') this.remoteRestarted = true;
      }
      this.remoteUfrag = ufrag;
      const m = /pc=(\d+)/.exec(d.sdp);
      this.peer = m ? pcs.get(Number(m[1])) : null;
      for (const s of this.peer?.senders ?? []) {
        if (this.announced.has(s)) continue;
        this.announced.add(s);
        setImmediate(() => this.dispatchEvent(event('track', { track: s.track, streams: s.streams })));
      }
      this.#becameStable();
    }

    async addIceCandidate(candidate) {
      this.#check();
      await null;
      if (!this.remoteDescription) throw new Error('InvalidStateError: no remote description');
      if (candidate?.usernameFragment && candidate.usernameFragment !== this.remoteUfrag) throw new Error('OperationError: unknown ufrag');
      this.ops.push(`addIceCandidate:${candidate ? candidate.candidate : 'end'}`);
      if (candidate) this.remoteCandidates.push(candidate);
      this.#maybeConnect();
    }

    #becameStable() {
      if (this.signalingState !== 'stable') return;
      if (this.needNegotiation) this.#fireNegotiationNeeded();
      this.#maybeConnect();
    }

    get ready() {
      return (
        !this.closed &&
        this.signalingState === 'stable' &&
        this.localDescription &&
        this.remoteDescription &&
        this.remoteCandidates.length > 0 &&
        (!this.broken || this.ufrag !== this.brokenUfrag)
      );
    }

    #maybeConnect() {
      const peer = this.peer;
      if (this.connected || !peer || !this.ready || !peer.ready) return;
      this.connected = peer.connected = true;
      setImmediate(() => {
        for (const pc of [this, peer]) pc._reach(['checking', 'connected'], ['connecting', 'connected']);
        this.#linkChannels();
      });
    }

    /** Walks through ICE and transport states, with their events; a broken path is back. */
    _reach(iceStates, transportStates) {
      for (const s of iceStates) {
        this.iceConnectionState = s;
        this.dispatchEvent(event('iceconnectionstatechange'));
      }
      for (const s of transportStates) {
        this.connectionState = s;
        this.dispatchEvent(event('connectionstatechange'));
      }
      if (this.connectionState === 'connected' && this.broken) {
        this.broken = false;
        for (const [ch, data] of this.held.splice(0)) ch._transmit(data);
      }
    }

    #linkChannels() {
      for (const [a, b] of [[this, this.peer], [this.peer, this]]) {
        for (const ch of a.channels) {
          if (ch.remote) continue;
          const remote = new FakeDataChannel(ch.label, b, ch);
          ch.remote = remote;
          remote.readyState = 'open'; // announced open, as browsers do
          b.dispatchEvent(event('datachannel', { channel: remote }));
          remote.dispatchEvent(event('open'));
          ch._open();
        }
      }
    }

    async getStats() {
      this.#check();
      return new Map([['in', { type: 'inbound-rtp', bytesReceived: 1000 }]]);
    }

    close() {
      if (this.closed) return;
      this.closed = true;
      this.signalingState = 'closed';
      this.iceConnectionState = 'closed';
      this.connectionState = 'closed';
      for (const ch of this.channels) ch.close();
      for (const ch of this.received ?? []) ch.close();
    }
  }

  // Channels a pc received are closed with it.
  const original = FakeRTCPeerConnection.prototype.dispatchEvent;
  FakeRTCPeerConnection.prototype.dispatchEvent = function (e) {
    if (e.type === 'datachannel') (this.received ??= []).push(e.channel);
    return original.call(this, e);
  };

  /** A change of network under a connected pair: both go `disconnected` (or `failed`). */
  const breakPath = (pc, state = 'disconnected') => {
    for (const p of [pc, pc.peer]) {
      p.connected = false;
      p.broken = true;
      p.brokenUfrag = p.ufrag;
    }
    for (const p of [pc, pc.peer]) p._reach(['disconnected'], [state]);
  };
  /** The pair's transport gives up: `failed` (ICE stays `disconnected`, as in Chromium). */
  const failPath = (pc) => {
    for (const p of [pc, pc.peer]) p._reach([], ['failed']);
  };
  /** A broken path comes back by itself, without a restart (a brief outage). */
  const healPath = (pc) => {
    for (const p of [pc, pc.peer]) p.connected = true;
    for (const p of [pc, pc.peer]) p._reach(['connected'], ['connected']);
  };

  return { RTCPeerConnection: FakeRTCPeerConnection, pcs, breakPath, failPath, healPath };
}

/** A fake MediaStream with one track per kind. */
export function fakeStream(...kinds) {
  const tracks = kinds.map((kind, i) => ({ kind, id: `${kind}-${i}` }));
  return { id: `stream-${kinds.join('-')}`, getTracks: () => tracks };
}

/**
 * `connect(user)` for tests: resolves with a connected `WspConnection`
 * (the class is passed in, so that this file imports nothing) on `server`,
 * with fake WebRTC `rtc`, `clock` and a jitter of 0.5, plus `options`. Its
 * errors are kept in `conn.errors`, its incoming calls in `conn.incoming`.
 */
export function connector(WspConnection, server, rtc, clock, options = {}) {
  return async (user) => {
    const conn = new WspConnection({
      WebSocket: server.WebSocket,
      RTCPeerConnection: rtc.RTCPeerConnection,
      fetch: server.fetch,
      timers: clock,
      random: () => 0.5,
      ...options,
    });
    conn.errors = [];
    conn.onerror = (e) => conn.errors.push(e);
    conn.incoming = [];
    conn.onincoming = (c) => conn.incoming.push(c);
    await conn.connect('wss://a.example/wsp', server.tokenOf(user));
    return conn;
  };
}
