// Helpers of the wsp.js and demo-page browser tests (calls.test.mjs,
// demo.test.mjs): a federation and pages per test, the servers' metrics,
// bounded polling. Not a test file itself (run.mjs runs *.test.mjs only).

import assert from 'node:assert/strict';
import { appendFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { ARTIFACTS, CERTS, Scope, WAIT_MS, screenshot, startFederation, within } from './env.mjs';

const CA = readFileSync(path.join(CERTS, 'ca.pem'));

/**
 * GET `pathname` from a server over https, verified with the development
 * CA for the server's own domain (the name resolves to 127.0.0.1 only in
 * dnsmasq and Chromium, so connect to the address and send SNI).
 */
export function httpsGet(server, pathname) {
  return within(WAIT_MS, `GET ${server.origin}${pathname}`, new Promise((resolve, reject) => {
    const req = https.get(
      { host: '127.0.0.1', port: server.port, servername: server.domain, ca: CA, path: pathname, headers: { host: `${server.domain}:${server.port}` }, agent: false },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, body }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
  }));
}

/** The server's /metrics as a Map "name{labels}" -> number. */
export async function metrics(server) {
  const { status, body } = await httpsGet(server, '/metrics');
  assert.equal(status, 200, `GET ${server.origin}/metrics`);
  const m = new Map();
  for (const line of body.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

/** The `wspd_frames_total{keyword=...}` counters of a metrics map, by keyword. */
export function frameCounts(m) {
  const out = {};
  for (const [k, v] of m) {
    const match = /^wspd_frames_total\{keyword="([a-z]+)"\}$/.exec(k);
    if (match) out[match[1]] = v;
  }
  return out;
}

/**
 * Polls `check` (async, returning `{ok, ...what it saw}`) every 50 ms until
 * `ok`, for at most `ms`; returns its last answer. On time-out the error
 * says `what` and shows the last answer.
 */
export async function until(what, check, ms = WAIT_MS) {
  const deadline = performance.now() + ms;
  for (;;) {
    const last = await check();
    if (last.ok) return last;
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Waits until each of `servers` holds no call. */
export async function noActiveCalls(servers) {
  for (const s of servers) {
    await until(`${s.domain}: wspd_calls_active 0`, async () => {
      const v = (await metrics(s)).get('wspd_calls_active');
      return { ok: v === 0, wspd_calls_active: v };
    });
  }
}

/**
 * One test's world: dnsmasq and a.test's and b.test's servers (`a`, `b`;
 * logs in `logDir` = ARTIFACTS/<group>/<slug of name>/), and `open(label)`,
 * which opens a page in `context` with its console copied to
 * console-<label>.log there and its uncaught errors kept in `pageErrors`.
 * Everything is released by the returned `scope`; `failed(pages)` saves
 * screenshots in `logDir`.
 */
export async function world(context, group, name) {
  const scope = new Scope();
  try {
    const slug = name.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '').toLowerCase().slice(0, 60);
    const logDir = path.join(ARTIFACTS, group, slug);
    mkdirSync(logDir, { recursive: true });
    const { servers } = await startFederation(scope, { logDir });
    const a = servers['a.test'];
    const b = servers['b.test'];
    const pageErrors = [];
    const open = async (label) => {
      const page = await context.newPage();
      scope.defer(() => page.close());
      page.on('pageerror', (e) => pageErrors.push(`${label}: ${e.message}`));
      const log = path.join(logDir, `console-${label}.log`);
      writeFileSync(log, ''); // this run's only
      page.on('console', (msg) => appendFileSync(log, `${msg.type()}: ${msg.text()}\n`));
      return page;
    };
    const failed = async (pages) => {
      for (const [label, page] of Object.entries(pages)) {
        if (page && !page.isClosed()) await screenshot(page, path.join(path.relative(ARTIFACTS, logDir), `failed-${label}`)).catch(() => {});
      }
    };
    return { scope, a, b, logDir, pageErrors, open, failed };
  } catch (e) {
    await scope.close().catch(() => {});
    throw e;
  }
}

// ---- the client that runs in the pages (serialised by Playwright)

/**
 * Loads /wsp.js from the page's own server, opens a WspConnection with
 * `token` (and `options`) and fake camera and microphone, and records
 * everything the library reports in window.t.
 */
export async function installClient({ token, options = {} }) {
  const { WspConnection } = await import('/wsp.js');
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  const conn = new WspConnection(options);
  const t = {
    conn,
    stream,
    call: null,
    first: null,
    errors: [],
    events: [],
    messages: [],
    closed: null,
    connState: () => conn.state,
  };
  conn.onerror = (e) => t.errors.push({ code: e.code, message: e.message, byeCode: e.byeCode, callId: e.callId });
  const watch = (call) => {
    t.call = call;
    t.first ??= call;
    call.onringing = () => t.events.push('ringing');
    call.onresuming = () => t.events.push('resuming');
    call.ontransferred = () => t.events.push('transferred');
    call.onmessage = (data) => t.messages.push(data);
    call.onclose = (code, description) => {
      t.closed = { code, description };
      t.events.push(`close ${code}`);
    };
  };
  conn.onincoming = (call) => {
    t.events.push(`incoming ${call.peer.uri}`);
    watch(call);
  };
  t.dial = (uri) => {
    watch(conn.call(uri, { stream }));
    return t.call.id;
  };
  t.accept = () => t.call.accept({ stream });
  t.summary = () => ({
    conn: conn.state,
    user: conn.user,
    events: t.events,
    errors: t.errors,
    closed: t.closed,
    call: t.call && { id: t.call.id, state: t.call.state, transferred: t.call.transferred, peerTransferred: t.call.peerTransferred, ice: t.call.pc?.iceConnectionState, transport: t.call.pc?.connectionState },
  });
  /** Inbound RTP of the call, by kind. */
  t.inbound = async () => {
    const out = {};
    (await t.call.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp') out[s.kind] = { bytesReceived: s.bytesReceived ?? 0, framesDecoded: s.framesDecoded ?? 0 };
    });
    return out;
  };
  /** Inbound stats once video has `min.frames` frames decoded and both kinds' bytes exceed `min`'s. */
  t.inboundAbove = async (min, ms) => {
    const deadline = performance.now() + ms;
    for (;;) {
      const s = await t.inbound();
      if ((s.video?.framesDecoded ?? 0) >= min.frames && (s.video?.bytesReceived ?? 0) > min.videoBytes && (s.audio?.bytesReceived ?? 0) > min.audioBytes) return s;
      if (performance.now() > deadline) throw new Error(`inbound stats did not pass ${JSON.stringify(min)} in ${ms} ms: ${JSON.stringify(s)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  /**
   * The local and remote addresses of the candidate pair the transport
   * selected (getStats keeps listing stale pairs: the transport names
   * the one in use).
   */
  t.selectedPair = async () => {
    const stats = new Map();
    (await t.call.pc.getStats()).forEach((s) => stats.set(s.id, s));
    const transport = [...stats.values()].find((s) => s.type === 'transport' && s.selectedCandidatePairId);
    const pair = transport && stats.get(transport.selectedCandidatePairId);
    if (!pair) return null;
    return { local: stats.get(pair.localCandidateId)?.address, remote: stats.get(pair.remoteCandidateId)?.address, state: pair.state };
  };
  window.t = t;
  await conn.connect(`wss://${location.host}/wsp`, token);
  return conn.user;
}

// ---- helpers of the tests that drive installClient's pages

const summary = (page) => page.evaluate(() => window.t.summary()).catch((e) => `(page gone: ${e.message})`);

/**
 * Waits until `predicate` (run in the page with window.t) is true, for at
 * most `ms`; the error shows the page's summary.
 */
export async function waitIn(page, what, predicate, arg, ms = WAIT_MS) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: ms, polling: 20 });
  } catch (e) {
    throw new Error(`${what}: ${e.message.split('\n')[0]}\n  state: ${JSON.stringify(await summary(page))}`);
  }
}

/** For inboundAbove: 10 more decoded frames than `s`, and more bytes of both kinds. */
export const above = (s) => ({ frames: (s.video?.framesDecoded ?? 0) + 10, videoBytes: s.video?.bytesReceived ?? 0, audioBytes: s.audio?.bytesReceived ?? 0 });
/** For inboundAbove: a first decoded frame, some bytes of both kinds. */
export const FIRST = { frames: 1, videoBytes: 0, audioBytes: 0 };

/**
 * A world with Alice on a.test and Bob on b.test, connected through
 * wsp.js; Alice calls Bob, Bob accepts, and both sides transfer. Returns
 * the world with pageA and pageB. `options` are the WspConnection's.
 */
export async function transferredCall(context, group, name, { options = {} } = {}) {
  const w = await world(context, group, name);
  try {
    w.pageA = await w.open('alice');
    w.pageB = await w.open('bob');
    await Promise.all([w.pageA.goto(`${w.a.origin}/healthz`), w.pageB.goto(`${w.b.origin}/healthz`)]);
    const [alice, bob] = await Promise.all([w.a.token('alice@a.test'), w.b.token('bob@b.test')]);
    assert.deepEqual(
      await Promise.all([w.pageA.evaluate(installClient, { token: alice, options }), w.pageB.evaluate(installClient, { token: bob, options })]),
      ['alice@a.test', 'bob@b.test'],
    );
    w.t0 = performance.now();
    w.callId = await w.pageA.evaluate(() => window.t.dial('bob@b.test'));
    await waitIn(w.pageB, 'Bob gets the call', () => window.t.call?.state === 'ringing');
    assert.deepEqual(await w.pageB.evaluate(() => [window.t.events, window.t.call.id, window.t.call.peer]), [
      ['incoming alice@a.test'],
      w.callId,
      { uri: 'alice@a.test' },
    ]);
    await waitIn(w.pageA, 'Alice hears it ring', () => window.t.call.state === 'ringing');
    await w.pageB.evaluate(() => window.t.accept());
    for (const [who, page] of [['Alice', w.pageA], ['Bob', w.pageB]]) {
      await waitIn(page, `${who}: transferred, and the peer's bye 101 received`, () => window.t.call.state === 'transferred' && window.t.call.peerTransferred);
    }
    w.tTransferred = performance.now();
    return w;
  } catch (e) {
    await failed(w);
    await w.scope.close().catch(() => {});
    throw e;
  }
}

/** Screenshots of the pages of a failed test, beside its logs. */
export const failed = (w) => w.failed({ alice: w.pageA, bob: w.pageB });
