// The demo page (web/index.html, served by wspd at `/`) driven by clicks in
// real Chromium: Alice's page on a.test's server, Bob's on b.test's. Each
// test signs in with a token through the "I have a token" form and checks
// what the page says, in its own words (demo.js's WORDS).
//
// Every test has its own servers and pages (world() in pages.mjs); the
// browser is shared by the tests of this file.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { ARTIFACTS, Scope, WAIT_MS, launchChromium } from './env.mjs';
import { noActiveCalls, world } from './pages.mjs';

const TIMEOUT = 15_000;

const fileScope = new Scope();
after(() => fileScope.close());
let context;
before(async () => {
  context = await launchChromium(fileScope);
}, { timeout: 20_000 });

/** The text of `selector` in `page`, or a note that it is missing. */
const textOf = (page, selector) => page.locator(selector).textContent({ timeout: 1_000 }).catch((e) => `(no ${selector}: ${e.message.split('\n')[0]})`);

/** Waits until the text of `selector` is `text`; the error shows what it was. */
async function waitText(page, selector, text, ms = WAIT_MS) {
  try {
    await page.waitForFunction(([s, t]) => document.querySelector(s)?.textContent === t, [selector, text], { timeout: ms, polling: 20 });
  } catch (e) {
    throw new Error(`${selector} should read ${JSON.stringify(text)} but reads ${JSON.stringify(await textOf(page, selector))}: ${e.message.split('\n')[0]}`);
  }
}

const PHONE = { width: 390, height: 844 };

/** Opens the demo page of `server` (in `viewport` if given) and signs in as `user` with a token. */
async function signIn(w, label, server, user, viewport) {
  const page = await w.open(label);
  if (viewport) await page.setViewportSize(viewport);
  const response = await page.goto(`${server.origin}/`);
  assert.equal(response.status(), 200);
  await page.getByText('I have a token').click();
  await page.locator('#token').fill(await server.token(user));
  await page.locator('#use-token').click();
  await page.locator('#phone').waitFor({ state: 'visible' });
  await waitText(page, '#conn-state', 'connected');
  assert.equal(await textOf(page, '#me'), user);
  assert.equal(await page.locator('#signin').isHidden(), true);
  await idle(page);
  return page;
}

/** The phone without a call: Call enabled, no Hang up, no message form. */
async function idle(page) {
  assert.equal(await page.locator('#call').isEnabled(), true);
  for (const hidden of ['#hangup', '#message-form', '#incoming']) {
    assert.equal(await page.locator(hidden).isHidden(), true, `${hidden} is hidden without a call`);
  }
}

/** Types `uri` in the Call field and clicks Call. */
async function dial(page, uri) {
  await page.locator('#callee').fill(uri);
  await page.locator('#call').click();
}

/** Runs `body(w, t)` in a world of its own; releases it whatever happens. */
function demoTest(name, body) {
  test(name, { timeout: TIMEOUT }, async (t) => {
    const w = await world(context, 'demo', name);
    try {
      await body(w, t);
      assert.deepEqual(w.pageErrors, []);
    } catch (e) {
      await w.failed({ alice: w.pageA, bob: w.pageB });
      throw e;
    } finally {
      await w.scope.close();
    }
  });
}

/** Whether the remote video of the page plays: has a size and its time advances. */
async function remoteVideoPlays(page) {
  try {
    const t0 = await page.waitForFunction(() => {
      const v = document.getElementById('remote-video');
      return v.videoWidth > 0 && v.currentTime > 0 && v.currentTime;
    }, null, { timeout: WAIT_MS, polling: 20 }).then((h) => h.jsonValue());
    await page.waitForFunction((t0) => document.getElementById('remote-video').currentTime > t0 + 0.2, t0, { timeout: WAIT_MS, polling: 20 });
  } catch (e) {
    const v = await page.evaluate(() => {
      const v = document.getElementById('remote-video');
      return { videoWidth: v.videoWidth, currentTime: v.currentTime, paused: v.paused, readyState: v.readyState, src: !!v.srcObject };
    });
    throw new Error(`the remote video does not play: ${JSON.stringify(v)}: ${e.message.split('\n')[0]}`);
  }
  return page.evaluate(() => {
    const v = document.getElementById('remote-video');
    return { width: v.videoWidth, height: v.videoHeight, paused: v.paused };
  });
}

/** Screenshot of the whole page as ARTIFACTS/<name>.png. */
async function fullShot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

// ---- the tests

demoTest('Bob clicks Decline (on a phone-sized page): Alice\'s page says "declined"', async (w, t) => {
  w.pageB = await signIn(w, 'bob', w.b, 'bob@b.test', PHONE);
  w.pageA = await signIn(w, 'alice', w.a, 'alice@a.test');
  await dial(w.pageA, 'bob@b.test');
  await w.pageB.locator('#incoming').waitFor({ state: 'visible' });
  assert.equal(await textOf(w.pageB, '#incoming-from'), 'alice@a.test');
  await waitText(w.pageB, '#call-state', 'incoming call');
  await waitText(w.pageA, '#call-state', 'ringing');
  t.diagnostic(`screenshot: ${path.relative(process.cwd(), await fullShot(w.pageB, 'demo-incoming-phone-bob'))}`);
  await w.pageB.locator('#decline').click();
  await waitText(w.pageA, '#call-state', 'declined');
  await waitText(w.pageB, '#call-state', 'declined');
  for (const page of [w.pageA, w.pageB]) await idle(page);
  await noActiveCalls([w.a, w.b]);
});

demoTest('calling a user with no socket: Alice\'s page says "user offline"', async (w) => {
  w.pageA = await signIn(w, 'alice', w.a, 'alice@a.test');
  await dial(w.pageA, 'carol@b.test');
  await waitText(w.pageA, '#call-state', 'user offline');
  await idle(w.pageA);
  await noActiveCalls([w.a, w.b]);
});

demoTest('calling an address of a domain DNS does not know: Alice\'s page says "unknown domain"', async (w) => {
  w.pageA = await signIn(w, 'alice', w.a, 'alice@a.test');
  await dial(w.pageA, 'zed@nowhere.test');
  await waitText(w.pageA, '#call-state', 'unknown domain');
  await idle(w.pageA);
  await noActiveCalls([w.a]);
});

demoTest('by clicks: Alice calls bob@b.test, Bob accepts, both see each other, transfer, talk and hang up', async (w, t) => {
  w.pageB = await signIn(w, 'bob', w.b, 'bob@b.test');
  w.pageA = await signIn(w, 'alice', w.a, 'alice@a.test');
  const t0 = performance.now();
  await dial(w.pageA, 'bob@b.test');
  await w.pageB.locator('#incoming').waitFor({ state: 'visible' });
  assert.equal(await textOf(w.pageB, '#incoming-from'), 'alice@a.test');
  await w.pageB.locator('#accept').click();
  for (const page of [w.pageA, w.pageB]) await waitText(page, '#call-state', 'transferred to data channel');
  const tTransferred = performance.now();
  const sizes = [await remoteVideoPlays(w.pageA), await remoteVideoPlays(w.pageB)];
  t.diagnostic(`clicks: Call to both transferred ${Math.round(tTransferred - t0)} ms, remote videos playing ${Math.round(performance.now() - t0)} ms: ${JSON.stringify(sizes)}`);
  assert.equal(await textOf(w.pageA, '#remote-label'), 'bob@b.test');
  assert.equal(await textOf(w.pageB, '#remote-label'), 'alice@a.test');
  // One trace id for the call, shown on both pages: Alice's page chose it,
  // a.test continued it across the link, b.test gave it to Bob's page.
  const traceA = await textOf(w.pageA, '#trace-id');
  assert.match(traceA, /^[0-9a-f]{32}$/);
  assert.equal(await textOf(w.pageB, '#trace-id'), traceA);
  for (const page of [w.pageA, w.pageB]) {
    assert.equal(await page.locator('#hangup').isVisible(), true);
    assert.equal(await page.locator('#message-form').isVisible(), true);
    assert.equal(await page.locator('#call').isDisabled(), true);
  }
  await noActiveCalls([w.a, w.b]);

  // A message each way through the message form.
  for (const [page, other, text, from] of [[w.pageA, w.pageB, 'Hi Bob!', 'alice@a.test'], [w.pageB, w.pageA, 'Hello Alice.', 'bob@b.test']]) {
    await page.locator('#message').fill(text);
    await page.locator('#send').click();
    await other.getByText(`${from}: ${text}`).waitFor();
    assert.equal(await page.getByText(`you: ${text}`).count(), 1);
  }

  // Screenshots at desktop width, then phone width.
  const shots = [];
  for (const [label, page] of [['alice', w.pageA], ['bob', w.pageB]]) shots.push(await fullShot(page, `demo-call-desktop-${label}`));
  for (const page of [w.pageA, w.pageB]) await page.setViewportSize(PHONE);
  for (const [label, page] of [['alice', w.pageA], ['bob', w.pageB]]) {
    await page.waitForFunction(() => document.documentElement.clientWidth === 390);
    // Nothing sticks out sideways on a phone.
    assert.equal(await page.evaluate(() => document.documentElement.scrollWidth), 390, `${label}: no horizontal scrolling at 390 px`);
    shots.push(await fullShot(page, `demo-call-phone-${label}`));
  }
  for (const s of shots) t.diagnostic(`screenshot: ${path.relative(process.cwd(), s)}`);

  // Alice clicks Hang up: Bob's page hears it over the data channel.
  await w.pageA.locator('#hangup').click();
  await waitText(w.pageB, '#call-state', 'hung up');
  for (const page of [w.pageA, w.pageB]) await idle(page);
  await noActiveCalls([w.a, w.b]);
});
