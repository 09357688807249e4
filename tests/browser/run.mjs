// Entry point of the real-browser tests. Run it inside a fresh network
// namespace whose only interface is lo, as tests/it/browser.rs does:
//
//   unshare -n -- sh -c 'ip link set lo up && exec node tests/browser/run.mjs [FILE.test.mjs ...]'
//
// (`unshare -rn` without root.) It runs every tests/browser/*.test.mjs (or
// the files named) with node's test runner, one file at a time, with
// TMPDIR and XDG_RUNTIME_DIR in a folder of its own that it removes at the
// end. It fails if any process is left running in the namespace afterwards.

import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));

function refuse(msg) {
  console.error(`tests/browser/run.mjs: ${msg}`);
  process.exit(2);
}

// 1. Loopback only: these tests must never send a packet anywhere else.
function checkNamespace() {
  let out;
  try {
    out = execFileSync('ip', ['-o', 'link', 'show'], {
      encoding: 'utf8',
      env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` },
    });
  } catch (e) {
    refuse(`cannot list network interfaces with \`ip -o link\` (${e.message}); install iproute2`);
  }
  const links = out.split('\n').filter(Boolean).map((l) => {
    const m = /^\d+:\s+([^:@\s]+)[^<]*<([^>]*)>/.exec(l);
    return m ? { name: m[1], flags: m[2].split(',') } : { name: l, flags: [] };
  });
  const others = links.filter((l) => l.name !== 'lo');
  if (others.length || links.length === 0) {
    refuse(
      `refusing to run: this network namespace has interfaces other than lo (${others.map((l) => l.name).join(', ')}).\n` +
        `Run inside a fresh network namespace:\n` +
        `  unshare -n -- sh -c 'ip link set lo up && exec node tests/browser/run.mjs'   (as root)\n` +
        `  unshare -rn -- sh -c 'ip link set lo up && exec node tests/browser/run.mjs'  (with user namespaces)\n` +
        `or simply: cargo test --test it browser::`,
    );
  }
  if (!links[0].flags.includes('UP')) refuse('lo is down: run `ip link set lo up` first');
}

checkNamespace();

// 2. The test files.
const args = process.argv.slice(2);
const files = args.length
  ? args.map((f) => path.resolve(f))
  : readdirSync(HERE)
      .filter((f) => f.endsWith('.test.mjs'))
      .sort()
      .map((f) => path.join(HERE, f));
if (!files.length) refuse(`no *.test.mjs in ${HERE}`);

// 3. Temporary files of Chromium, Playwright and the tests go here.
const PREFIX = 'wspd-browser-run-';

/** "pid starttime" of a process as /proc numbers it, or null. */
function identity(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ');
    return `${pid} ${stat[19]}`;
  } catch {
    return null;
  }
}

/** Removes folders of earlier runs that were killed before they could. */
function removeStale() {
  if (readlinkSync('/proc/self') === '1') return; // a private /proc: other runs' owners are invisible
  for (const e of readdirSync(os.tmpdir())) {
    if (!e.startsWith(PREFIX)) continue;
    const dir = path.join(os.tmpdir(), e);
    try {
      const owner = readFileSync(path.join(dir, 'owner'), 'utf8').trim();
      if (identity(owner.split(' ')[0]) !== owner) rmSync(dir, { recursive: true, force: true });
    } catch {
      // no owner file yet, or not ours: leave it
    }
  }
}

removeStale();
const tmp = mkdtempSync(path.join(os.tmpdir(), PREFIX));
chmodSync(tmp, 0o700); // XDG_RUNTIME_DIR must be private
writeFileSync(path.join(tmp, 'owner'), identity(readlinkSync('/proc/self')) ?? '');
const env = { ...process.env, TMPDIR: tmp, XDG_RUNTIME_DIR: tmp };

const myNetNs = readlinkSync('/proc/self/ns/net');

/** Processes in this network namespace other than this one and its ancestors. */
function strays() {
  const keep = new Set();
  // Our pid as /proc numbers it (process.pid is 1 inside a PID namespace).
  for (let pid = Number(readlinkSync('/proc/self')); pid > 1; ) {
    keep.add(pid);
    try {
      pid = Number(readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ')[1]);
    } catch {
      break;
    }
  }
  keep.add(1);
  const found = [];
  for (const e of readdirSync('/proc')) {
    const pid = Number(e);
    if (!Number.isInteger(pid) || keep.has(pid)) continue;
    try {
      if (readlinkSync(`/proc/${pid}/ns/net`) !== myNetNs) continue;
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
      found.push({ pid, cmd });
    } catch {
      // gone, a zombie, or not ours to read
    }
  }
  return found;
}

let child;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    child?.kill(sig);
  });
}

child = spawn(
  process.execPath,
  ['--test', '--test-reporter=spec', '--test-reporter-destination=stdout', '--test-concurrency=1', ...files],
  { env, stdio: 'inherit' },
);
const [code, signal] = await new Promise((resolve) => child.on('exit', (c, s) => resolve([c, s])));

let status = signal ? 1 : code;
const left = strays();
if (left.length) {
  console.error(`tests/browser/run.mjs: processes left running by the tests (killed now):`);
  for (const p of left) {
    console.error(`  ${p.pid} ${p.cmd.slice(0, 200)}`);
    try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ }
  }
  status ||= 1;
}
rmSync(tmp, { recursive: true, force: true });
process.exit(status);
