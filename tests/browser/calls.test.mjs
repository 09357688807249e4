// wsp.js in real Chromium, across two domains: Alice's page is on a.test's
// origin and signals through a.test's wspd, Bob's is on b.test's; a.test
// finds b.test through dnsmasq. Each page loads the library from its own
// server (`import('/wsp.js')`) and calls through the library's API only
// (WspConnection.call, onincoming, Call.accept, send, hangup).
//
// Every test has its own servers and pages (world() in pages.mjs); the
// browser is shared by the tests of this file.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Scope, WAIT_MS, launchChromium } from './env.mjs';
import { frameCounts, metrics, noActiveCalls, world } from './pages.mjs';

const TIMEOUT = 15_000;

const fileScope = new Scope();
after(() => fileScope.close());
let context;
before(async () => {
  context = await launchChromium(fileScope);
}, { timeout: 20_000 });

// ---- code that runs in the pages (serialised by Playwright)

/**
 * Loads /wsp.js from the page's own server, opens a WspConnection with
 * `token` and fake camera and microphone, and records everything the
 * library reports in window.t.
 */
async function installClient({ token }) {
  const { WspConnection } = await import('/wsp.js');
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  const conn = new WspConnection();
  const t = {
    conn,
    stream,
    call: null,
    errors: [],
    events: [],
    messages: [],
    closed: null,
    connState: () => conn.state,
  };
  conn.onerror = (e) => t.errors.push({ code: e.code, message: e.message, byeCode: e.byeCode, callId: e.callId });
  const watch = (call) => {
    t.call = call;
    call.onringing = () => t.events.push('ringing');
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
    call: t.call && { id: t.call.id, state: t.call.state, transferred: t.call.transferred, peerTransferred: t.call.peerTransferred, ice: t.call.pc?.iceConnectionState },
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
  window.t = t;
  await conn.connect(`wss://${location.host}/wsp`, token);
  return conn.user;
}

// ---- helpers of the tests

const summary = (page) => page.evaluate(() => window.t.summary()).catch((e) => `(page gone: ${e.message})`);

/** Waits until `predicate` (run in the page with window.t) is true; the error shows the page's summary. */
async function waitIn(page, what, predicate, arg) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: WAIT_MS, polling: 20 });
  } catch (e) {
    throw new Error(`${what}: ${e.message.split('\n')[0]}\n  state: ${JSON.stringify(await summary(page))}`);
  }
}

/** For inboundAbove: 10 more decoded frames than `s`, and more bytes of both kinds. */
const above = (s) => ({ frames: (s.video?.framesDecoded ?? 0) + 10, videoBytes: s.video?.bytesReceived ?? 0, audioBytes: s.audio?.bytesReceived ?? 0 });
/** For inboundAbove: a first decoded frame, some bytes of both kinds. */
const FIRST = { frames: 1, videoBytes: 0, audioBytes: 0 };

/**
 * A world with Alice on a.test and Bob on b.test, connected through
 * wsp.js; Alice calls Bob, Bob accepts, and both sides transfer. Returns
 * the world with pageA and pageB.
 */
async function transferredCall(name) {
  const w = await world(context, 'calls', name);
  try {
    w.pageA = await w.open('alice');
    w.pageB = await w.open('bob');
    await Promise.all([w.pageA.goto(`${w.a.origin}/healthz`), w.pageB.goto(`${w.b.origin}/healthz`)]);
    const [alice, bob] = await Promise.all([w.a.token('alice@a.test'), w.b.token('bob@b.test')]);
    assert.deepEqual(
      await Promise.all([w.pageA.evaluate(installClient, { token: alice }), w.pageB.evaluate(installClient, { token: bob })]),
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
const failed = (w) => w.failed({ alice: w.pageA, bob: w.pageB });

/** Runs `body(w)` on a transferred call; releases the world whatever happens. */
function callTest(name, body) {
  test(name, { timeout: TIMEOUT }, async (t) => {
    const w = await transferredCall(name);
    try {
      t.diagnostic(`invite to both transferred: ${Math.round(w.tTransferred - w.t0)} ms`);
      await body(w, t);
      assert.deepEqual(w.pageErrors, []);
    } catch (e) {
      await failed(w);
      throw e;
    } finally {
      await w.scope.close();
    }
  });
}

// ---- the tests

callTest('a call carries audio and video both ways, transfers on both sides, and leaves no call on either server', async (w, t) => {
  const { pageA, pageB } = w;
  // Both sides: ontransferred once, no close, no error.
  for (const page of [pageA, pageB]) {
    const s = await page.evaluate(() => window.t.summary());
    assert.deepEqual(s.events.filter((e) => !e.startsWith('incoming') && e !== 'ringing'), ['transferred'], JSON.stringify(s));
    assert.equal(s.closed, null);
    assert.deepEqual(s.errors, []);
  }
  // Media flows both ways: bytes and decoded frames grow.
  const first = await Promise.all([pageA, pageB].map((p) => p.evaluate(([m, ms]) => window.t.inboundAbove(m, ms), [FIRST, WAIT_MS])));
  const second = await Promise.all([pageA, pageB].map((p, i) => p.evaluate(([m, ms]) => window.t.inboundAbove(m, ms), [above(first[i]), WAIT_MS])));
  t.diagnostic(`video frames decoded: alice ${first[0].video.framesDecoded} -> ${second[0].video.framesDecoded}, bob ${first[1].video.framesDecoded} -> ${second[1].video.framesDecoded}`);
  // Both servers forgot the call.
  await noActiveCalls([w.a, w.b]);
  for (const s of [w.a, w.b]) {
    const m = await metrics(s);
    assert.equal(m.get('wspd_calls_total{outcome="transferred"}'), 1, `${s.domain}: one transferred call`);
  }
});

callTest('hangup() after the transfer reaches the peer over the data channel, not through the servers', async (w) => {
  const { pageA, pageB, a, b } = w;
  await noActiveCalls([a, b]);
  const before = await Promise.all([a, b].map(async (s) => frameCounts(await metrics(s))));
  await pageA.evaluate(() => window.t.call.hangup());
  await waitIn(pageB, 'Bob: onclose', () => window.t.closed !== null);
  assert.deepEqual(await pageB.evaluate(() => window.t.closed), { code: 200, description: 'Hung up' });
  assert.deepEqual(await pageA.evaluate(() => [window.t.closed, window.t.call.state]), [{ code: 200, description: 'Hung up' }, 'closed']);
  // A barrier: one frame for an unknown call on each socket; its bye 481
  // comes back after every frame sent before it has been counted.
  for (const page of [pageA, pageB]) {
    await page.evaluate(() => window.t.conn.socket.send(JSON.stringify(['ringing', null, { call: 'barrier-0001' }])));
    await waitIn(page, 'the barrier frame answered', () => window.t.errors.some((e) => e.callId === 'barrier-0001' && e.byeCode === 481));
    assert.deepEqual((await page.evaluate(() => window.t.errors)).map((e) => [e.code, e.callId, e.byeCode]), [['refused', 'barrier-0001', 481]]);
  }
  const after = await Promise.all([a, b].map(async (s) => frameCounts(await metrics(s))));
  for (const [i, s] of [a, b].entries()) {
    assert.deepEqual(after[i], { ...before[i], ringing: before[i].ringing + 1 }, `${s.domain}: frames received: only the barrier's ringing is new, no bye`);
  }
  await noActiveCalls([a, b]);
});

callTest('call.send(data) reaches the peer\'s onmessage, both ways', async (w) => {
  const { pageA, pageB } = w;
  const toBob = [{ text: 'hello Bob', n: 1, list: [true, null, 'é✓'] }, 'second'];
  const toAlice = ['hello Alice', 42];
  for (const m of toBob) await pageA.evaluate((m) => window.t.call.send(m), m);
  for (const m of toAlice) await pageB.evaluate((m) => window.t.call.send(m), m);
  await waitIn(pageB, 'Bob gets both messages', (n) => window.t.messages.length >= n, toBob.length);
  await waitIn(pageA, 'Alice gets both messages', (n) => window.t.messages.length >= n, toAlice.length);
  assert.deepEqual(await pageB.evaluate(() => window.t.messages), toBob);
  assert.deepEqual(await pageA.evaluate(() => window.t.messages), toAlice);
  for (const page of [pageA, pageB]) assert.deepEqual(await page.evaluate(() => window.t.errors), []);
});

callTest('after a.test\'s server stops, the transferred call goes on: media flows and the library keeps it open', async (w, t) => {
  const { pageA, pageB, a, b } = w;
  await Promise.all([pageA, pageB].map((p) => p.evaluate(([m, ms]) => window.t.inboundAbove(m, ms), [FIRST, WAIT_MS])));
  const tStop = performance.now();
  const status = await a.proc.stop();
  assert.equal(status.code, 0, `a.test's wspd exits cleanly after SIGTERM: ${JSON.stringify(status)}`);
  t.diagnostic(`a.test's wspd stopped in ${Math.round(performance.now() - tStop)} ms`);
  // Alice's socket is gone: the library is reconnecting, the call is not touched.
  await waitIn(pageA, 'Alice: the connection notices the loss', () => window.t.conn.state === 'reconnecting');
  const startAfter = await Promise.all([pageA, pageB].map((p) => p.evaluate(() => window.t.inbound())));
  const later = await Promise.all([pageA, pageB].map((p, i) => p.evaluate(([m, ms]) => window.t.inboundAbove(m, ms), [above(startAfter[i]), WAIT_MS])));
  t.diagnostic(`after the stop: video frames decoded alice ${startAfter[0].video.framesDecoded} -> ${later[0].video.framesDecoded}, bob ${startAfter[1].video.framesDecoded} -> ${later[1].video.framesDecoded}`);
  for (const page of [pageA, pageB]) {
    const s = await page.evaluate(() => window.t.summary());
    assert.equal(s.call.state, 'transferred', JSON.stringify(s));
    assert.equal(s.closed, null, JSON.stringify(s));
    assert.ok(['connected', 'completed'].includes(s.call.ice), JSON.stringify(s));
    assert.deepEqual(s.errors, []);
  }
  // The data channel still carries messages and the hang-up.
  await pageA.evaluate(() => window.t.call.send('still here'));
  await waitIn(pageB, 'Bob gets the message', () => window.t.messages.length === 1);
  assert.deepEqual(await pageB.evaluate(() => window.t.messages), ['still here']);
  await pageB.evaluate(() => window.t.call.hangup());
  await waitIn(pageA, 'Alice: onclose', () => window.t.closed !== null);
  assert.deepEqual(await pageA.evaluate(() => window.t.closed), { code: 200, description: 'Hung up' });
  await noActiveCalls([b]);
});
