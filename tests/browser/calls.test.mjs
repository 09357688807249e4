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
import { FIRST, above, failed, frameCounts, metrics, noActiveCalls, transferredCall, waitIn } from './pages.mjs';

const TIMEOUT = 15_000;

const fileScope = new Scope();
after(() => fileScope.close());
let context;
before(async () => {
  context = await launchChromium(fileScope);
}, { timeout: 20_000 });

/** Runs `body(w)` on a transferred call; releases the world whatever happens. */
function callTest(name, body) {
  test(name, { timeout: TIMEOUT }, async (t) => {
    const w = await transferredCall(context, 'calls', name);
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
  // One trace id for the call on both pages (and so on both servers).
  const traces = await Promise.all([pageA, pageB].map((p) => p.evaluate(() => window.t.call.traceId)));
  assert.match(traces[0], /^[0-9a-f]{32}$/);
  assert.equal(traces[1], traces[0]);
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
