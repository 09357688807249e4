// Test environment for the real-browser tests: a DNS server (dnsmasq), wspd
// servers for a.test and b.test, tokens, and Debian's Chromium driven by
// playwright-core. Everything here runs inside the network namespace that
// run.mjs checks (loopback only); see ../shared/design/browser-testing.md (beside the repository)
// and tests/browser/README.md.
//
// Every resource is registered with a Scope and released by scope.close(),
// in reverse order, whether the test passed or failed. Child processes are
// also killed when this Node process exits, whatever the reason.

import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Resolver } from 'node:dns/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The repository's root folder. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CERTS = path.join(ROOT, 'certs');
/** Where screenshots and process logs go (kept after the run). */
export const ARTIFACTS = path.resolve(
  ROOT,
  process.env.WSPD_BROWSER_ARTIFACTS ?? path.join('target', 'browser-artifacts'),
);
/** The wspd binary: $WSPD_BIN, else target/debug/wspd. */
export const WSPD_BIN = path.resolve(ROOT, process.env.WSPD_BIN ?? path.join('target', 'debug', 'wspd'));
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
/** Default bound on every wait: short, because a failing setup costs all of it. */
export const WAIT_MS = 10_000;
/** Chromium's launch alone takes 1.5-4 s on a busy 2-CPU machine. */
export const LAUNCH_MS = 15_000;

/** Finds a program in PATH, then in the sbin folders (dnsmasq and ip live there). */
export function which(name) {
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin', '/usr/bin', '/bin']);
  for (const d of dirs) {
    if (d && existsSync(path.join(d, name))) return path.join(d, name);
  }
  return null;
}

// ---------------------------------------------------------------- guard

/**
 * Throws unless this process's network namespace has no interface but lo.
 * Checked when this module loads, so a browser test started some other way
 * than through run.mjs (a bare `node --test`, say) stops before it starts
 * anything that could send packets off this machine.
 */
export function assertLoopbackOnly() {
  const names = readFileSync('/proc/net/dev', 'utf8')
    .split('\n')
    .slice(2)
    .map((l) => l.split(':')[0].trim())
    .filter(Boolean);
  const others = names.filter((n) => n !== 'lo');
  if (others.length) {
    throw new Error(
      `browser tests run only in a network namespace whose one interface is lo (here: ${names.join(', ')}).\n` +
        `Run them with: cargo test --test it browser::   (or see tests/browser/run.mjs)`,
    );
  }
}
assertLoopbackOnly();

// ---------------------------------------------------------------- cleanup

const live = new Set(); // child processes still running

function killAll() {
  for (const child of live) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
}
process.on('exit', killAll);
for (const [sig, n] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]]) {
  process.once(sig, () => {
    killAll();
    process.exit(128 + n);
  });
}

/** Resources to release, last in first out. */
export class Scope {
  #stack = [];

  /** Registers `fn` (sync or async) to run at close(). */
  defer(fn) {
    this.#stack.push(fn);
  }

  /** Releases everything; throws an AggregateError if any release failed. */
  async close() {
    const errors = [];
    while (this.#stack.length) {
      const fn = this.#stack.pop();
      try {
        await fn();
      } catch (e) {
        errors.push(e);
      }
    }
    if (errors.length === 1) throw errors[0];
    if (errors.length) throw new AggregateError(errors, 'cleanup failed');
  }

  /** A fresh temporary folder, removed at close(). */
  async tempDir(prefix = 'wspd-browser-') {
    const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
    this.defer(() => rm(dir, { recursive: true, force: true }));
    return dir;
  }
}

/** Rejects after `ms` unless `promise` settles first; `what` (a string or a function giving one) says what was awaited. */
export async function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${typeof what === 'function' ? what() : what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A TCP port that is free on 127.0.0.1 right now (the namespace is ours alone). */
export async function freePort() {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  srv.close();
  await once(srv, 'close');
  return port;
}

// ---------------------------------------------------------------- processes

/**
 * A child process whose stdout and stderr lines are kept, copied to
 * `logFile`, and can be waited for.
 */
export class Proc {
  constructor(name, cmd, args, { logFile, env, cwd } = {}) {
    this.name = name;
    this.lines = [];
    this.#waiters = new Set();
    this.log = logFile ? createWriteStream(logFile) : null;
    this.child = spawn(cmd, args, {
      cwd: cwd ?? ROOT,
      env: env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    live.add(this.child);
    this.exited = new Promise((resolve) => {
      const finish = (status) => {
        if (this.exitStatus) return;
        live.delete(this.child);
        this.exitStatus = status;
        for (const w of this.#waiters) {
          w.reject(new Error(`${this.name} exited (${status.signal ?? status.code}) while waiting for ${w.re}:\n${this.tail()}`));
        }
        this.#waiters.clear();
        resolve(status);
      };
      this.child.on('error', (err) => {
        this.#line(`[cannot run ${cmd}: ${err.message}]`);
        finish({ code: null, signal: null, error: err });
      });
      this.child.on('exit', (code, signal) => finish({ code, signal }));
    });
    // All output read (later than 'exit' if a grandchild keeps the pipes open).
    this.drained = once(this.child, 'close').catch(() => {});
    for (const stream of [this.child.stdout, this.child.stderr]) {
      createInterface({ input: stream }).on('line', (l) => this.#line(l));
    }
  }

  #waiters;

  #line(l) {
    this.lines.push(l);
    this.log?.write(l + '\n');
    for (const w of this.#waiters) {
      const m = w.re.exec(l);
      if (m) {
        this.#waiters.delete(w);
        w.resolve(m);
      }
    }
  }

  /** The last lines of output, for error messages. */
  tail(n = 30) {
    return this.lines.slice(-n).map((l) => `  ${this.name}| ${l}`).join('\n');
  }

  /** Resolves with the match of the first output line (seen or to come) matching `re`. */
  waitForLine(re, ms = WAIT_MS) {
    for (const l of this.lines) {
      const m = re.exec(l);
      if (m) return Promise.resolve(m);
    }
    if (this.exitStatus) {
      return Promise.reject(new Error(`${this.name} has exited; no line matching ${re}:\n${this.tail()}`));
    }
    const waiter = { re };
    const p = new Promise((resolve, reject) => {
      Object.assign(waiter, { resolve, reject });
      this.#waiters.add(waiter);
    });
    return within(ms, () => `${this.name}: a line matching ${re}\n${this.tail()}`, p).finally(() => this.#waiters.delete(waiter));
  }

  /** SIGTERM, then waits for the exit; SIGKILL if it takes longer than `ms`. */
  async stop(ms = 5_000) {
    if (!this.exitStatus) {
      this.child.kill('SIGTERM');
      try {
        await within(ms, `${this.name} to exit after SIGTERM`, this.exited);
      } catch (e) {
        this.child.kill('SIGKILL');
        await this.exited;
        throw e;
      }
    }
    await this.exited;
    try {
      await within(1_000, `${this.name}'s output to end`, this.drained);
    } catch {
      this.child.stdout.destroy();
      this.child.stderr.destroy();
    }
    if (this.log) {
      this.log.end();
      await once(this.log, 'close');
      this.log = null;
    }
    return this.exitStatus;
  }
}

// ---------------------------------------------------------------- DNS

/**
 * Starts dnsmasq on 127.0.0.1:`port`, answering only from the records
 * given; every other *.test name is NXDOMAIN.
 *   srv:   [{ name: '_wsp._tcp.a.test', target: 'a.test', port: 8443 }]
 *   hosts: { 'a.test': '127.0.0.1' }
 */
export async function startDns(scope, { port, srv = [], hosts = {}, logDir = ARTIFACTS }) {
  const bin = which('dnsmasq');
  if (!bin) throw new Error('dnsmasq not found: apt-get install -y dnsmasq-base');
  port ??= await freePort();
  const args = [
    '--no-daemon', // foreground, no pid file, no change of user, logs to stderr
    '--conf-file=/dev/null',
    '--no-resolv',
    '--no-hosts',
    '--listen-address=127.0.0.1',
    '--bind-interfaces',
    `--port=${port}`,
    '--log-facility=-',
    '--local=/test/',
    ...srv.map((r) => `--srv-host=${r.name},${r.target},${r.port},${r.priority ?? 0},${r.weight ?? 0}`),
    ...Object.entries(hosts).map(([name, ip]) => `--host-record=${name},${ip}`),
  ];
  mkdirSync(logDir, { recursive: true });
  const proc = new Proc('dnsmasq', bin, args, { logFile: path.join(logDir, 'dnsmasq.log') });
  scope.defer(() => proc.stop());
  await proc.waitForLine(/started, version/);
  // dnsmasq binds before it logs "started"; one real query proves it answers.
  const resolver = new Resolver({ timeout: 2_000, tries: 1 });
  resolver.setServers([`127.0.0.1:${port}`]);
  if (srv.length) await within(WAIT_MS, 'the first SRV answer', resolver.resolveSrv(srv[0].name));
  return { port, addr: `127.0.0.1:${port}`, proc, resolver };
}

// ---------------------------------------------------------------- wspd

/** Runs `wspd --config <config> token <user>` and returns the token. */
export function mintToken(config, user) {
  return new Promise((resolve, reject) => {
    execFile(WSPD_BIN, ['--config', config, 'token', user], { timeout: WAIT_MS }, (err, stdout, stderr) => {
      if (err) reject(new Error(`wspd token ${user}: ${err.message}\n${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

/**
 * Starts wspd for `domain` (a certificate certs/<domain>.pem must exist)
 * on 127.0.0.1 with a free port, federating through the DNS server at
 * `resolver` ("127.0.0.1:port"). Resolves once it logs "listening on".
 */
export async function startWspd(scope, { domain, resolver, dir, extra = '', logDir = ARTIFACTS }) {
  if (!existsSync(WSPD_BIN)) throw new Error(`no wspd binary at ${WSPD_BIN}: run cargo build, or set WSPD_BIN`);
  dir ??= await scope.tempDir(`wspd-${domain}-`);
  const q = (p) => JSON.stringify(p); // a TOML basic string
  const config = path.join(dir, `${domain}.toml`);
  const text = [
    `domain = ${q(domain)}`,
    `listen = "127.0.0.1:0"`,
    `[auth]`,
    `secret = ${q(randomBytes(24).toString('hex'))}`,
    `[tls]`,
    `cert = ${q(path.join(CERTS, `${domain}.pem`))}`,
    `key = ${q(path.join(CERTS, `${domain}-key.pem`))}`,
    `[federation]`,
    `key = ${q(path.join(dir, `${domain}-link.key`))}`,
    // The test DNS server names loopback addresses.
    ...(resolver ? [`resolver = ${q(resolver)}`, 'allow_private_addresses = true'] : []),
    `ca = ${q(path.join(CERTS, 'ca.pem'))}`,
    extra,
    '',
  ].join('\n');
  await writeFile(config, text);
  mkdirSync(logDir, { recursive: true });
  let runs = 0;
  const start = () =>
    new Proc(domain, WSPD_BIN, ['--config', config], {
      logFile: path.join(logDir, `wspd-${domain}${runs++ ? `-${runs}` : ''}.log`),
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info' },
    });
  const server = { domain, config, proc: start(), token: (user) => mintToken(config, user) };
  scope.defer(async () => {
    const status = await server.proc.stop();
    if (status.code !== 0 || status.error) throw new Error(`wspd ${domain} exited with ${status.signal ?? status.code}:\n${server.proc.tail()}`);
  });
  const m = await server.proc.waitForLine(LISTENING);
  const port = Number(m[3]);
  /**
   * Stops the server (SIGTERM, a clean exit expected) and starts it again
   * on the same port with the same config (log: wspd-<domain>-2.log...).
   */
  server.restart = async () => {
    const status = await server.proc.stop();
    if (status.code !== 0 || status.error) throw new Error(`wspd ${domain} exited with ${status.signal ?? status.code}:\n${server.proc.tail()}`);
    await writeFile(config, text.replace('listen = "127.0.0.1:0"', `listen = "127.0.0.1:${port}"`));
    server.proc = start();
    await server.proc.waitForLine(LISTENING);
  };
  return Object.assign(server, {
    port,
    addr: `127.0.0.1:${port}`,
    origin: `https://${domain}:${port}`,
    wsp: `wss://${domain}:${port}/wsp`,
  });
}

const LISTENING = /listening on (wss?):\/\/([0-9.]+):(\d+)\/wsp/;

/**
 * The usual pair: a DNS server publishing a.test and b.test, and their two
 * wspd servers, which find each other through it.
 */
export async function startFederation(scope, { domains = ['a.test', 'b.test'], logDir = ARTIFACTS } = {}) {
  const dnsPort = await freePort();
  const resolver = `127.0.0.1:${dnsPort}`;
  const servers = {};
  for (const d of domains) servers[d] = await startWspd(scope, { domain: d, resolver, logDir });
  const dns = await startDns(scope, {
    logDir,
    port: dnsPort,
    srv: domains.map((d) => ({ name: `_wsp._tcp.${d}`, target: d, port: servers[d].port })),
    hosts: Object.fromEntries(domains.map((d) => [d, '127.0.0.1'])),
  });
  return { dns, servers };
}

// ---------------------------------------------------------------- network

/**
 * Addresses for WebRTC media other than loopback, inside this namespace,
 * and a change of network (browser-testing.md): veth pairs with both ends
 * in this namespace (no packet can leave it), created with IPv6 off so
 * that no link-local address becomes a candidate. `address` is the one
 * address media can use (10.200.0.1 first); `change()` brings up a new
 * pair with the next address (10.201.0.1, ...), then deletes the old
 * address, as a laptop moving to another network does. The scope deletes
 * the pairs and restores the IPv6 default.
 */
export async function hostNetwork(scope) {
  const ip = which('ip');
  if (!ip) throw new Error('no ip command: apt-get install -y iproute2');
  const run = (...args) =>
    new Promise((resolve, reject) =>
      execFile(ip, args, (err, stdout, stderr) => (err ? reject(new Error(`ip ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout))),
    );
  const ipv6Default = '/proc/sys/net/ipv6/conf/default/disable_ipv6';
  const saved = readFileSync(ipv6Default, 'utf8');
  await writeFile(ipv6Default, '1');
  scope.defer(() => writeFile(ipv6Default, saved));
  let n = 0;
  const add = async () => {
    const dev = `wspnc${n}`;
    const address = `10.${200 + n}.0.1`;
    n++;
    await run('link', 'add', dev, 'type', 'veth', 'peer', 'name', `${dev}p`);
    scope.defer(() => run('link', 'del', dev)); // its peer goes with it
    await run('link', 'set', dev, 'up');
    await run('link', 'set', `${dev}p`, 'up');
    await run('addr', 'add', `${address}/24`, 'dev', dev);
    return { dev, address };
  };
  let current = await add();
  return {
    get address() {
      return current.address;
    },
    async change() {
      const old = current;
      current = await add();
      await run('addr', 'del', `${old.address}/24`, 'dev', old.dev);
      return current.address;
    },
  };
}

// ---------------------------------------------------------------- Chromium

/**
 * The recipe's flags (browser-testing.md), plus the loopback mapping of
 * `hosts`. With `loopbackCandidates: false` WebRTC gathers no loopback
 * candidates: media then uses only the addresses of other interfaces
 * (see `hostNetwork`).
 */
export function chromiumArgs(hosts = ['a.test', 'b.test'], { loopbackCandidates = true } = {}) {
  return [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-dev-shm-usage', // CI containers often have a 64 MB /dev/shm
    ...(loopbackCandidates ? ['--allow-loopback-in-peer-connection'] : []),
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    // Chromium asks the system resolver, not our dnsmasq: map the test
    // domains to loopback itself. The wspd servers use dnsmasq.
    `--host-resolver-rules=${hosts.map((h) => `MAP ${h} 127.0.0.1`).join(',')}`,
  ];
}

/**
 * Launches Chromium (headless, fresh profile, its temporary files in
 * test folders) and returns the persistent context. Closed by the scope.
 */
export async function launchChromium(scope, { hosts, extraArgs = [], loopbackCandidates = true } = {}) {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium`);
  const { chromium } = await import('playwright-core');
  const profile = await scope.tempDir('chromium-profile-');
  const tmp = await scope.tempDir('chromium-tmp-');
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...chromiumArgs(hosts, { loopbackCandidates }), ...extraArgs],
    ignoreHTTPSErrors: true,
    // Chromium's crash database goes to $XDG_CONFIG_HOME/chromium (else
    // ~/.config/chromium) whatever the profile: keep it in the test folder.
    env: { ...process.env, TMPDIR: tmp, XDG_RUNTIME_DIR: tmp, XDG_CONFIG_HOME: tmp, XDG_CACHE_HOME: tmp, HOME: tmp },
    timeout: LAUNCH_MS,
  });
  context.setDefaultTimeout(WAIT_MS);
  // Registered after the folders, so it runs before they are removed.
  scope.defer(() => within(WAIT_MS, 'Chromium to close', context.close()));
  return context;
}

/** Saves a screenshot of `page` as ARTIFACTS/<name>.png; returns the path. */
export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}
