// Smoke test of the browser test environment: two real Chromium pages, on
// a.test's and b.test's origins, call each other with fake camera and
// microphone. The offer, answer and candidates go through Playwright, not
// through wspd (wsp.js does that; it is tested elsewhere). The wspd servers
// run for real: the page opens a WSP socket to a.test and gets an answer.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { ARTIFACTS, Scope, WAIT_MS, launchChromium, screenshot, startFederation, within } from './env.mjs';

const scope = new Scope();
after(() => scope.close());

// ---- code that runs in the pages (serialised by Playwright)

/** Sets up window.smoke: a peer connection with fake media, shown on the page. */
async function initPeer(role) {
  const pc = new RTCPeerConnection();
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  for (const track of stream.getTracks()) pc.addTrack(track, stream);

  const title = document.createElement('h3');
  title.textContent = `${location.host} (${role}): local, remote`;
  const local = Object.assign(document.createElement('video'), { autoplay: true, muted: true, width: 320, height: 240 });
  const remote = Object.assign(document.createElement('video'), { autoplay: true, muted: true, width: 320, height: 240 });
  local.srcObject = stream;
  document.body.append(title, local, remote);
  pc.ontrack = (e) => {
    remote.srcObject = e.streams[0];
  };

  let remoteSet;
  const remoteDescribed = new Promise((resolve) => (remoteSet = resolve));
  const errors = [];
  const received = [];
  const channel = new Promise((resolve) => {
    const watch = (dc) => {
      dc.onmessage = (e) => {
        received.push(e.data);
        if (e.data === 'ping') dc.send('pong');
      };
      if (dc.readyState === 'open') resolve(dc);
      else dc.onopen = () => resolve(dc);
    };
    if (role === 'caller') watch(pc.createDataChannel('smoke'));
    pc.ondatachannel = (e) => watch(e.channel);
  });
  pc.onicecandidate = (e) => {
    // window.sendCandidate is exposed by the test: it hands it to the other page.
    if (e.candidate) window.sendCandidate(e.candidate.toJSON()).catch((err) => errors.push(String(err)));
  };

  const inbound = async () => {
    const out = {};
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp') {
        out[s.kind] = { bytesReceived: s.bytesReceived ?? 0, packetsReceived: s.packetsReceived ?? 0, framesDecoded: s.framesDecoded ?? 0 };
      }
    });
    return out;
  };

  window.smoke = {
    errors,
    received,
    async offer() {
      await pc.setLocalDescription();
      return pc.localDescription.toJSON();
    },
    async answer(offer) {
      const done = pc.setRemoteDescription(offer);
      remoteSet();
      await done;
      await pc.setLocalDescription();
      return pc.localDescription.toJSON();
    },
    async accept(answer) {
      const done = pc.setRemoteDescription(answer);
      remoteSet();
      await done;
    },
    async candidate(c) {
      await remoteDescribed; // candidates may come before the description
      await pc.addIceCandidate(c);
    },
    async channelOpen() {
      return (await channel).label;
    },
    async ping() {
      const dc = await channel;
      const pong = new Promise((resolve) => dc.addEventListener('message', (e) => e.data === 'pong' && resolve(e.data)));
      dc.send('ping');
      return pong;
    },
    state: () => ({ ice: pc.iceConnectionState, connection: pc.connectionState }),
    inbound,
    /** Inbound stats once video frames and audio bytes exceed the minimums. */
    async inboundAtLeast({ frames, videoBytes, audioBytes }, ms) {
      const deadline = performance.now() + ms;
      for (;;) {
        const s = await inbound();
        if (
          (s.video?.framesDecoded ?? 0) >= frames &&
          (s.video?.bytesReceived ?? 0) > videoBytes &&
          (s.audio?.bytesReceived ?? 0) > audioBytes
        ) {
          return s;
        }
        if (performance.now() > deadline) throw new Error(`inbound stats did not grow enough in ${ms} ms: ${JSON.stringify(s)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
  };
}

/** Opens a WSP socket, sends a frame for an unknown call, returns the answer. */
function wspProbe({ url, frame, ms }) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, 'wsp-1.0');
    const timer = setTimeout(() => reject(new Error(`no frame within ${ms} ms`)), ms);
    ws.onopen = () => ws.send(JSON.stringify(frame));
    ws.onmessage = (e) => {
      clearTimeout(timer);
      resolve({ protocol: ws.protocol, frame: JSON.parse(e.data) });
      ws.close(1000);
    };
    ws.onclose = (e) => {
      clearTimeout(timer);
      reject(new Error(`socket closed before an answer: ${e.code} ${e.reason}`));
    };
  });
}

/** A WSP socket as a page-side object: window.wsp[name] with a frame queue. */
function wspOpen({ name, url, ms }) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, 'wsp-1.0');
    const frames = [];
    const waiting = [];
    ws.onmessage = (e) => {
      const f = JSON.parse(e.data);
      const w = waiting.shift();
      if (w) w(f);
      else frames.push(f);
    };
    const timer = setTimeout(() => reject(new Error(`${name}: not open within ${ms} ms`)), ms);
    ws.onopen = () => {
      clearTimeout(timer);
      resolve(ws.protocol);
    };
    ws.onclose = (e) => reject(new Error(`${name}: closed ${e.code} ${e.reason}`));
    window.wsp ??= {};
    window.wsp[name] = {
      send: (f) => ws.send(JSON.stringify(f)),
      next: (ms) =>
        frames.length
          ? Promise.resolve(frames.shift())
          : new Promise((res, rej) => {
              const t = setTimeout(() => rej(new Error(`${name}: no frame within ${ms} ms`)), ms);
              waiting.push((f) => {
                clearTimeout(t);
                res(f);
              });
            }),
      close: () => ws.close(1000),
    };
  });
}

// ---- the environment, shared by the tests of this file

const logDir = path.join(ARTIFACTS, 'smoke');
let env; // { a, b, pageA, pageB, pageErrors, timings }

before(async () => {
  mkdirSync(logDir, { recursive: true });
  const t0 = performance.now();
  const { servers } = await startFederation(scope, { logDir });
  const t1 = performance.now();
  const context = await launchChromium(scope);
  const t2 = performance.now();
  const pageErrors = [];
  const pages = [];
  for (const [name, server] of [['a', servers['a.test']], ['b', servers['b.test']]]) {
    const page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
    page.on('console', (m) => appendFileSync(path.join(logDir, `console-${name}.log`), `${m.type()}: ${m.text()}\n`));
    // Any same-origin page makes a secure context; / will serve web/ later.
    const resp = await page.goto(`${server.origin}/healthz`);
    assert.equal(resp.status(), 200, `GET ${server.origin}/healthz`);
    assert.equal(await page.evaluate(() => window.isSecureContext), true, `${server.origin} is a secure context`);
    pages.push(page);
  }
  const t3 = performance.now();
  env = { a: servers['a.test'], b: servers['b.test'], pageA: pages[0], pageB: pages[1], pageErrors };
  const ms = (x) => `${Math.round(x)} ms`;
  diagnostics.push(`setup: dnsmasq and 2 wspd ${ms(t1 - t0)}, Chromium launch ${ms(t2 - t1)}, 2 pages ${ms(t3 - t2)}`);
}, { timeout: 30_000 });

const diagnostics = [];

/** On failure: screenshots of both pages and their peer connection states. */
async function onFailure(t) {
  for (const [name, page] of [['a', env?.pageA], ['b', env?.pageB]]) {
    if (!page) continue;
    await screenshot(page, `smoke-failed-page-${name}`).catch(() => {});
    const state = await page.evaluate(() => window.smoke?.state()).catch(() => null);
    if (state) t.diagnostic(`page ${name}: ${JSON.stringify(state)}`);
  }
}

// ---- the tests

test('two Chromium pages on a.test and b.test exchange media and data through WebRTC', { timeout: 30_000 }, async (t) => {
  for (const d of diagnostics.splice(0)) t.diagnostic(d);
  const { pageA, pageB, pageErrors } = env;
  try {
    const t0 = performance.now();
    // Candidates go straight to the other page.
    const signalErrors = [];
    const forward = (to) => (c) => to.evaluate((c) => window.smoke.candidate(c), c).catch((e) => signalErrors.push(String(e)));
    await pageA.exposeFunction('sendCandidate', forward(pageB));
    await pageB.exposeFunction('sendCandidate', forward(pageA));
    await pageA.evaluate(initPeer, 'caller');
    await pageB.evaluate(initPeer, 'callee');

    const offer = await pageA.evaluate(() => window.smoke.offer());
    assert.equal(offer.type, 'offer');
    const answer = await pageB.evaluate((o) => window.smoke.answer(o), offer);
    assert.equal(answer.type, 'answer');
    await pageA.evaluate((a) => window.smoke.accept(a), answer);

    const labels = await within(WAIT_MS, 'the data channel to open on both sides', Promise.all([
      pageA.evaluate(() => window.smoke.channelOpen()),
      pageB.evaluate(() => window.smoke.channelOpen()),
    ]));
    assert.deepEqual(labels, ['smoke', 'smoke']);
    assert.equal(await pageA.evaluate(() => window.smoke.ping()), 'pong');
    const tChannel = performance.now();

    // Media flows both ways: decoded frames and received bytes grow.
    const first = { frames: 10, videoBytes: 0, audioBytes: 0 };
    const [a1, b1] = await Promise.all([
      pageA.evaluate(([m, ms]) => window.smoke.inboundAtLeast(m, ms), [first, WAIT_MS]),
      pageB.evaluate(([m, ms]) => window.smoke.inboundAtLeast(m, ms), [first, WAIT_MS]),
    ]);
    const tFrames = performance.now();
    const more = (s) => ({ frames: s.video.framesDecoded + 10, videoBytes: s.video.bytesReceived, audioBytes: s.audio.bytesReceived });
    const [a2, b2] = await Promise.all([
      pageA.evaluate(([m, ms]) => window.smoke.inboundAtLeast(m, ms), [more(a1), WAIT_MS]),
      pageB.evaluate(([m, ms]) => window.smoke.inboundAtLeast(m, ms), [more(b1), WAIT_MS]),
    ]);
    for (const [side, s1, s2] of [['a', a1, a2], ['b', b1, b2]]) {
      assert.ok(s2.video.framesDecoded > s1.video.framesDecoded, `${side}: video frames decoded grow: ${JSON.stringify([s1, s2])}`);
      assert.ok(s2.video.bytesReceived > s1.video.bytesReceived, `${side}: video bytes grow: ${JSON.stringify([s1, s2])}`);
      assert.ok(s2.audio.bytesReceived > s1.audio.bytesReceived, `${side}: audio bytes grow: ${JSON.stringify([s1, s2])}`);
    }
    t.diagnostic(`inbound video frames decoded: a ${a1.video.framesDecoded} -> ${a2.video.framesDecoded}, b ${b1.video.framesDecoded} -> ${b2.video.framesDecoded}`);

    const shot = await screenshot(pageA, 'smoke-page-a');
    t.diagnostic(`screenshot: ${path.relative(process.cwd(), shot)}`);
    assert.deepEqual(signalErrors, []);
    assert.deepEqual(await pageA.evaluate(() => window.smoke.errors), []);
    assert.deepEqual(await pageB.evaluate(() => window.smoke.errors), []);
    assert.deepEqual(pageErrors, []);
    const ms = (x) => `${Math.round(x)} ms`;
    t.diagnostic(`call: data channel open ${ms(tChannel - t0)}, 10 decoded frames both sides ${ms(tFrames - t0)}`);
  } catch (e) {
    await onFailure(t);
    throw e;
  }
});

test('the pages speak WSP over wss to their servers, and a.test reaches b.test through DNS', { timeout: 20_000 }, async (t) => {
  const { a, b, pageA, pageB, pageErrors } = env;
  try {
    // A frame round trip: a frame for an unknown call gets bye 481.
    const alice = await a.token('alice@a.test');
    const probe = await pageA.evaluate(wspProbe, {
      url: `${a.wsp}?access_token=${encodeURIComponent(alice)}`,
      frame: ['ringing', null, { call: 'probe-0001' }],
      ms: WAIT_MS,
    });
    assert.equal(probe.protocol, 'wsp-1.0');
    assert.equal(probe.frame[0], 'bye', JSON.stringify(probe.frame));
    assert.equal(probe.frame[1].code, 481, JSON.stringify(probe.frame));
    assert.equal(probe.frame[2].call, 'probe-0001', JSON.stringify(probe.frame));

    // A federated invite: a.test finds b.test by SRV through dnsmasq and
    // opens a link; bob declines and alice hears it.
    const bob = await b.token('bob@b.test');
    const open = (page, name, server, token) =>
      page.evaluate(wspOpen, { name, url: `${server.wsp}?access_token=${encodeURIComponent(token)}`, ms: WAIT_MS });
    assert.equal(await open(pageB, 'bob', b, bob), 'wsp-1.0');
    assert.equal(await open(pageA, 'alice', a, alice), 'wsp-1.0');
    // bob's socket is registered before the 101, so the invite finds it.
    const call = 'browser-fed-0001';
    await pageA.evaluate((f) => window.wsp.alice.send(f), ['invite', { caller: { uri: 'alice@a.test' }, callee: { uri: 'bob@b.test' } }, { call }]);
    const invite = await pageB.evaluate((ms) => window.wsp.bob.next(ms), WAIT_MS);
    assert.equal(invite[0], 'invite', JSON.stringify(invite));
    assert.equal(invite[1].caller.uri, 'alice@a.test');
    assert.equal(invite[2].call, call);
    await pageB.evaluate((f) => window.wsp.bob.send(f), ['bye', { code: 603 }, { call }]);
    const bye = await pageA.evaluate((ms) => window.wsp.alice.next(ms), WAIT_MS);
    assert.deepEqual([bye[0], bye[1].code, bye[2].call], ['bye', 603, call], JSON.stringify(bye));
    await pageA.evaluate(() => window.wsp.alice.close());
    await pageB.evaluate(() => window.wsp.bob.close());
    assert.deepEqual(pageErrors, []);
  } catch (e) {
    await onFailure(t);
    throw e;
  }
});
