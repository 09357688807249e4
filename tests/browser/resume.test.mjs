// A transferred call across two domains survives a change of network
// address: wsp.js resumes it through both servers (an invite with
// `resume: true`, an ICE restart, bye 101 again). Media here uses only the
// addresses of veth pairs inside the test's namespace (hostNetwork in
// env.mjs): Chromium is started without loopback candidates, while the
// servers stay on 127.0.0.1. The change: a new pair with a new address
// comes up, the old address is deleted; the ICE path dies with it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Scope, WAIT_MS, hostNetwork, launchChromium } from './env.mjs';
import { FIRST, above, failed, installClient, metrics, noActiveCalls, transferredCall, waitIn } from './pages.mjs';

/** Chromium notices the broken path after about 6 s; the resume takes well under a second more. */
const RESUME_WAIT_MS = 25_000;

const fileScope = new Scope();
after(() => fileScope.close());
let context;
before(async () => {
  context = await launchChromium(fileScope, { loopbackCandidates: false });
}, { timeout: 20_000 });

/** Waits (in the page) until the selected candidate pair's local address is `address`. */
const selectedFrom = (page, who, address) =>
  page.evaluate(
    async ([address, ms]) => {
      const deadline = performance.now() + ms;
      for (;;) {
        const pair = await window.t.selectedPair();
        if (pair?.local === address) return pair;
        if (performance.now() > deadline) throw new Error(`selected pair ${JSON.stringify(pair)}, not from ${address}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    [address, WAIT_MS],
  ).catch((e) => assert.fail(`${who}: ${e.message}`));

/**
 * Runs `body(w, net, t)` on a transferred call between Alice (a.test) and
 * Bob (b.test) whose media flows over `net.address`.
 */
function resumeTest(name, body) {
  test(name, { timeout: 90_000 }, async (t) => {
    const scope = new Scope();
    let w = null;
    try {
      const net = await hostNetwork(scope);
      w = await transferredCall(context, 'resume', name);
      await Promise.all([w.pageA, w.pageB].map((p) => p.evaluate(([m, ms]) => window.t.inboundAbove(m, ms), [FIRST, WAIT_MS])));
      await selectedFrom(w.pageA, 'Alice', net.address);
      await selectedFrom(w.pageB, 'Bob', net.address);
      await body(w, net, t);
      assert.deepEqual(w.pageErrors, []);
    } catch (e) {
      if (w) await failed(w);
      throw e;
    } finally {
      await w?.scope.close();
      await scope.close();
    }
  });
}

/**
 * Changes the network under the call and checks that it is resumed: both
 * sides go `resuming` and back to `transferred` (the same Call objects),
 * over the new address, with media both ways again and the messages sent
 * during the gap delivered. `during` runs once both are resuming. Returns
 * the timings, in ms from the change.
 */
async function changeAndResume(w, net, { during = async () => {} } = {}) {
  const { pageA, pageB } = w;
  const t0 = performance.now();
  const address = await net.change();
  for (const [who, page] of [['Alice', pageA], ['Bob', pageB]]) {
    await waitIn(page, `${who}: the call goes resuming`, () => window.t.events.includes('resuming'), undefined, RESUME_WAIT_MS);
  }
  const tResuming = performance.now() - t0;
  await pageA.evaluate(() => window.t.call.send('from Alice, during the gap'));
  await pageB.evaluate(() => window.t.call.send('from Bob, during the gap'));
  await during();
  const before = await Promise.all([pageA, pageB].map((p) => p.evaluate(() => window.t.inbound())));
  for (const [who, page] of [['Alice', pageA], ['Bob', pageB]]) {
    await waitIn(
      page,
      `${who}: transferred again, and the peer's bye 101 received`,
      () => window.t.call.state === 'transferred' && window.t.call.peerTransferred && window.t.events.filter((e) => e === 'transferred').length === 2,
      undefined,
      RESUME_WAIT_MS,
    );
  }
  const tTransferred = performance.now() - t0;
  // Audio first (its bytes grow again), then video (10 more frames decoded).
  const audio = (s) => ({ frames: 0, videoBytes: 0, audioBytes: s.audio?.bytesReceived ?? 0 });
  await Promise.all([pageA, pageB].map((p, i) => p.evaluate(([m, ms]) => window.t.inboundAbove(m, ms), [audio(before[i]), WAIT_MS])));
  const tAudio = performance.now() - t0;
  await Promise.all([pageA, pageB].map((p, i) => p.evaluate(([m, ms]) => window.t.inboundAbove(m, ms), [above(before[i]), WAIT_MS])));
  const tMedia = performance.now() - t0;
  await selectedFrom(pageA, 'Alice', address);
  await selectedFrom(pageB, 'Bob', address);
  await waitIn(pageA, 'Alice gets Bob\'s message', () => window.t.messages.length === 1);
  await waitIn(pageB, 'Bob gets Alice\'s message', () => window.t.messages.length === 1);
  assert.deepEqual(await pageA.evaluate(() => window.t.messages), ['from Bob, during the gap']);
  assert.deepEqual(await pageB.evaluate(() => window.t.messages), ['from Alice, during the gap']);
  for (const [who, page] of [['Alice', pageA], ['Bob', pageB]]) {
    const s = await page.evaluate(() => ({ ...window.t.summary(), same: window.t.call === window.t.first }));
    assert.ok(s.same, `${who}: the same Call object`);
    assert.deepEqual(s.events.filter((e) => !e.startsWith('incoming') && e !== 'ringing'), ['transferred', 'resuming', 'transferred'], `${who}: ${JSON.stringify(s)}`);
    assert.equal(s.closed, null, who);
    assert.deepEqual(s.errors, [], who);
  }
  return { tResuming, tTransferred, tAudio, tMedia };
}

const report = (t, { tResuming, tTransferred, tAudio, tMedia }) =>
  t.diagnostic(
    `from the address change: resuming at ${Math.round(tResuming)} ms, transferred again at ${Math.round(tTransferred)} ms, ` +
      `audio flowing both ways at ${Math.round(tAudio)} ms, video at ${Math.round(tMedia)} ms`,
  );

resumeTest('a transferred call survives a change of network address; the callee\'s other device sees nothing', async (w, net, t) => {
  // Bob's second device opens after the call was set up: it never held it.
  const pageB2 = await w.open('bob2');
  await pageB2.goto(`${w.b.origin}/healthz`);
  assert.equal(await pageB2.evaluate(installClient, { token: await w.b.token('bob@b.test') }), 'bob@b.test');
  const timings = await changeAndResume(w, net);
  report(t, timings);
  // Bob's other device refused the resume (481) without ringing or telling anyone.
  const b2 = await pageB2.evaluate(() => ({ events: window.t.events, errors: window.t.errors, calls: window.t.conn.calls.size, conn: window.t.conn.state }));
  assert.deepEqual(b2, { events: [], errors: [], calls: 0, conn: 'connected' });
  // Both servers forgot the call again; each counted the resume as a call that transferred.
  await noActiveCalls([w.a, w.b]);
  for (const s of [w.a, w.b]) {
    assert.equal((await metrics(s)).get('wspd_calls_total{outcome="transferred"}'), 2, `${s.domain}: the call and its resume`);
  }
});

resumeTest('the caller\'s own server restarts during the change: its socket opens again first, then the call resumes', async (w, net, t) => {
  const restarted = w.a.restart();
  const timings = await changeAndResume(w, net, {
    during: async () => {
      await restarted;
      await waitIn(w.pageA, 'Alice: the socket is open again', () => window.t.conn.state === 'connected', undefined, RESUME_WAIT_MS);
    },
  });
  report(t, timings);
  await noActiveCalls([w.a, w.b]);
  assert.equal((await metrics(w.a)).get('wspd_calls_total{outcome="transferred"}'), 1, 'a.test, restarted: the resume');
  assert.equal((await metrics(w.b)).get('wspd_calls_total{outcome="transferred"}'), 2, 'b.test: the call and its resume');
});
