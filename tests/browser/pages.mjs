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
