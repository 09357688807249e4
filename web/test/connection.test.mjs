// The signalling socket: connect, GET /session (the token check and the
// ICE servers), reconnection with backoff, close.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { WspConnection, WspError } from '../wsp.js';
import { FakeClock, FakeServer, FakeWebSocket, makeToken, makeWebRTC, settle } from './fakes.mjs';

const ALICE = 'alice@a.example';

function setup(extra = {}) {
  const server = new FakeServer([ALICE, 'bob@a.example']);
  const clock = new FakeClock();
  const fetched = [];
  const conn = new WspConnection({
    WebSocket: server.WebSocket,
    RTCPeerConnection: makeWebRTC().RTCPeerConnection,
    fetch: (url, init) => {
      fetched.push(url);
      return server.fetch(url, init);
    },
    timers: clock,
    random: () => 0.5,
    ...extra,
  });
  const events = [];
  conn.onconnected = () => events.push(['connected']);
  conn.onreconnecting = (attempt, delay) => events.push(['reconnecting', attempt, delay]);
  conn.onclose = (code, reason) => events.push(['close', code, reason]);
  conn.onerror = (e) => events.push(['error', e.code]);
  return { server, clock, conn, events, fetched };
}

test('connect() asks GET /session, opens wss://host/wsp?access_token=... with subprotocol wsp-1.0, resolves on open', async () => {
  const { server, conn, events, fetched } = setup();
  const token = server.tokenOf(ALICE);
  const before = FakeWebSocket.created.length;
  const p = conn.connect('wss://a.example/wsp', token);
  assert.equal(conn.state, 'connecting');
  await p;
  const ws = FakeWebSocket.created.at(-1);
  assert.equal(FakeWebSocket.created.length, before + 1);
  assert.deepEqual(fetched, [`https://a.example/session?access_token=${token}`]);
  assert.equal(ws.url, `wss://a.example/wsp?access_token=${token}`);
  assert.equal(ws.protocol, 'wsp-1.0');
  assert.equal(conn.state, 'connected');
  assert.equal(conn.user, ALICE);
  assert.equal(conn.socket, ws);
  assert.deepEqual(events, [['connected']]);
  await assert.rejects(conn.connect('wss://a.example/wsp', token), { code: 'bad-state' });
});

test('connect() takes http(s) URLs and replaces a token already in the URL', async () => {
  const { server, conn } = setup();
  await conn.connect('https://a.example/wsp?access_token=old#x', server.tokenOf(ALICE));
  assert.equal(FakeWebSocket.created.at(-1).url, `wss://a.example/wsp?access_token=${server.tokenOf(ALICE)}`);
  await assert.rejects(new WspConnection().connect('ftp://a.example/wsp', 't'), { code: 'bad-url' });
  await assert.rejects(new WspConnection().connect('::', 't'), { code: 'bad-url' });
});

test('a token refused by GET /session rejects connect() with the server reason; no socket, no retry', async () => {
  const { server, clock, conn, events, fetched } = setup();
  const before = FakeWebSocket.created.length;
  const token = makeToken(ALICE, { exp: 1 }); // unknown to the server
  const err = await conn.connect('wss://a.example/wsp', token).then(
    () => assert.fail('connect() resolved'),
    (e) => e,
  );
  assert.ok(err instanceof WspError);
  assert.equal(err.code, 'token-expired');
  assert.equal(err.status, 401);
  assert.equal(err.message, 'the token has expired');
  assert.deepEqual(fetched, [`https://a.example/session?access_token=${token}`]);
  assert.equal(conn.state, 'closed');
  clock.advance(600_000);
  await settle();
  assert.equal(FakeWebSocket.created.length, before, 'no socket at all');
  assert.deepEqual(clock.pending(), []);
  assert.deepEqual(events, [], 'the rejection is the report');
  // connect() may be called again, with a good token.
  await conn.connect('wss://a.example/wsp', server.tokenOf(ALICE));
  assert.equal(conn.state, 'connected');
});

test('an unreadable token is refused before any socket', async () => {
  const { conn } = setup();
  const before = FakeWebSocket.created.length;
  await assert.rejects(conn.connect('wss://a.example/wsp', 'not-a-jwt'), { code: 'invalid-token' });
  assert.equal(FakeWebSocket.created.length, before);
});

test('a first attempt that fails for another reason rejects with connect-failed, without retries', async () => {
  const { server, clock, conn } = setup();
  server.up = false; // GET /session gets no answer, then the socket fails
  await assert.rejects(conn.connect('wss://a.example/wsp', server.tokenOf(ALICE)), { code: 'connect-failed', closeCode: 1006 });
  assert.equal(conn.state, 'closed');
  assert.deepEqual(clock.pending(), []);
});

test('the socket reconnects after a loss, with exponential backoff and jitter capped at 30 s', async () => {
  const { server, clock, conn, events } = setup();
  await conn.connect('wss://a.example/wsp', server.tokenOf(ALICE));
  events.length = 0;
  server.shutdown();
  await settle();
  assert.equal(conn.state, 'reconnecting');
  const delays = [];
  for (let i = 0; i < 8; i++) {
    const [last] = events.slice(-1);
    assert.equal(last[0], 'reconnecting');
    assert.equal(last[1], i + 1);
    delays.push(last[2]);
    clock.advance(last[2]);
    await settle();
  }
  // random() = 0.5: three quarters of min(30 s, 1 s * 2^(n-1)).
  assert.deepEqual(delays, [750, 1500, 3000, 6000, 12000, 22500, 22500, 22500]);
  assert.ok(!events.some((e) => e[0] === 'close' || e[0] === 'error'));

  server.up = true;
  clock.advance(22500);
  await settle();
  assert.equal(conn.state, 'connected');
  assert.deepEqual(events.at(-1), ['connected']);
  // The next loss starts the schedule again.
  server.kill(ALICE);
  await settle();
  assert.deepEqual(events.at(-1), ['reconnecting', 1, 750]);
});

test('a token refused on reconnection is final: onerror, then onclose, no socket, no more attempts', async () => {
  const { server, clock, conn, events } = setup();
  await conn.connect('wss://a.example/wsp', server.tokenOf(ALICE));
  server.revoke(ALICE);
  server.kill(ALICE);
  await settle();
  assert.deepEqual(events.at(-1), ['reconnecting', 1, 750]);
  const sockets = FakeWebSocket.created.length;
  clock.advance(750);
  await settle();
  assert.equal(FakeWebSocket.created.length, sockets);
  assert.deepEqual(events.slice(-2), [
    ['error', 'token-expired'],
    ['close', 1006, 'the token has expired'],
  ]);
  assert.equal(conn.state, 'closed');
  clock.advance(600_000);
  await settle();
  assert.equal(FakeWebSocket.created.length, sockets);
  assert.deepEqual(clock.pending(), []);
});

test('without GET /session a failed reconnection counts as transient', async () => {
  const { server, clock, conn, events } = setup();
  await conn.connect('wss://a.example/wsp', server.tokenOf(ALICE));
  server.sessionStatus = 404; // an older server
  server.revoke(ALICE);
  server.kill(ALICE);
  await settle();
  clock.advance(750);
  await settle();
  clock.advance(1500);
  await settle();
  assert.deepEqual(events.slice(-3), [
    ['reconnecting', 1, 750],
    ['reconnecting', 2, 1500],
    ['reconnecting', 3, 3000],
  ]);
  assert.equal(conn.state, 'reconnecting');
});

test('a token function is asked before every attempt', async () => {
  const { server, clock, conn, events } = setup();
  const tokens = [server.tokenOf(ALICE)];
  let asked = 0;
  await conn.connect('wss://a.example/wsp', async () => tokens[asked++]);
  const fresh = makeToken(ALICE, { iat: 2 });
  server.tokens.set(fresh, ALICE);
  tokens.push(fresh);
  server.kill(ALICE);
  await settle();
  clock.advance(750);
  await settle();
  assert.equal(asked, 2);
  assert.equal(conn.state, 'connected');
  assert.equal(FakeWebSocket.created.at(-1).token, fresh);
  assert.deepEqual(events.at(-1), ['connected']);
});

test('close() stops everything and calls onclose(1000) once', async () => {
  const { server, clock, conn, events } = setup();
  await conn.connect('wss://a.example/wsp', server.tokenOf(ALICE));
  const ws = conn.socket;
  conn.close();
  conn.close();
  assert.equal(conn.state, 'closed');
  assert.deepEqual(ws.closedBy, { code: 1000, reason: 'Closed by client' });
  await settle();
  assert.deepEqual(events, [['connected'], ['close', 1000, 'Closed by client']]);
  assert.deepEqual(clock.pending(), []);
  assert.throws(() => conn.call('bob@a.example'), { code: 'not-connected' });
});

test('close() while reconnecting cancels the timer; close() before open rejects connect()', async () => {
  const { server, clock, conn, events } = setup();
  await conn.connect('wss://a.example/wsp', server.tokenOf(ALICE));
  server.kill(ALICE);
  await settle();
  conn.close();
  assert.deepEqual(clock.pending(), []);
  assert.deepEqual(events.at(-1), ['close', 1000, 'Closed by client']);

  const other = setup();
  const p = other.conn.connect('wss://a.example/wsp', other.server.tokenOf(ALICE));
  other.conn.close();
  await assert.rejects(p, { code: 'closed' });
  await settle();
  assert.deepEqual(other.events, []);
});

test('close() hangs up calls still on the socket; a ringing incoming call gets 480', async () => {
  const { server, conn } = setup();
  await conn.connect('wss://a.example/wsp', server.tokenOf(ALICE));
  const ws = conn.socket;
  const out = conn.call('bob@a.example');
  conn.onincoming = () => {};
  ws.deliver(['invite', { caller: { uri: 'bob@a.example' }, callee: { uri: ALICE } }, { call: 'incoming-1' }]);
  conn.close();
  assert.deepEqual(ws.frames.filter((f) => f[0] === 'bye'), [
    ['bye', { code: 200, description: 'Hung up' }, { call: out.id }],
    ['bye', { code: 480, description: 'Temporarily unavailable' }, { call: 'incoming-1' }],
  ]);
});

test('the server closing the socket for a protocol error is reported, then retried', async () => {
  const { server, conn, events } = setup();
  await conn.connect('wss://a.example/wsp', server.tokenOf(ALICE));
  conn.socket.drop(1002, 'bad offer content');
  await settle();
  assert.deepEqual(events.slice(-2), [['error', 'socket-closed'], ['reconnecting', 1, 750]]);
});

test('a socket that does not open in time counts as failed', async () => {
  const clock = new FakeClock();
  class Silent extends FakeWebSocket {}
  const conn = new WspConnection({ WebSocket: Silent, timers: clock, connectTimeout: 5000, sessionUrl: null });
  const p = conn.connect('ws://127.0.0.1:1/wsp', makeToken(ALICE));
  await settle();
  clock.advance(4999);
  await settle();
  assert.equal(conn.state, 'connecting');
  clock.advance(1);
  await assert.rejects(p, { code: 'connect-failed' });
});

test('the session URL follows the socket URL, or the option', async () => {
  const a = setup();
  a.server.up = false;
  await assert.rejects(a.conn.connect('ws://h.example:8080/base/wsp', 'x.eyJzdWIiOiJhQGIuYyJ9.y'));
  assert.deepEqual(a.fetched, ['http://h.example:8080/base/session?access_token=x.eyJzdWIiOiJhQGIuYyJ9.y']);
  const b = setup({ sessionUrl: '/api/session' });
  b.server.up = false;
  await assert.rejects(b.conn.connect('wss://h.example/wsp', 'x.eyJzdWIiOiJhQGIuYyJ9.y'));
  assert.deepEqual(b.fetched, ['https://h.example/api/session?access_token=x.eyJzdWIiOiJhQGIuYyJ9.y']);
});

test('a GET /session that does not answer in time does not hold the socket back', async () => {
  const server = new FakeServer([ALICE]);
  const clock = new FakeClock();
  let aborted = false;
  const hanging = (_url, init) =>
    new Promise((_, reject) => {
      init.signal.addEventListener('abort', () => {
        aborted = true;
        reject(new Error('aborted'));
      });
    });
  const conn = new WspConnection({ WebSocket: server.WebSocket, fetch: hanging, timers: clock, connectTimeout: 3000 });
  const p = conn.connect('wss://a.example/wsp', server.tokenOf(ALICE));
  await settle();
  assert.equal(conn.socket, null);
  clock.advance(3000);
  await p;
  assert.ok(aborted);
  assert.equal(conn.state, 'connected');
});

test('GET /session names the user and fills rtcConfiguration with its ICE servers, fresh for every socket', async () => {
  const { server, clock, conn } = setup();
  const token = makeToken('someone.else@a.example');
  server.tokens.set(token, ALICE);
  const first = [{ urls: ['turn:t.example:3478'], username: '1:alice@a.example', credential: 'c1' }];
  server.iceServers = first;
  await conn.connect('wss://a.example/wsp', token);
  assert.equal(conn.user, ALICE, 'the server names the user');
  assert.deepEqual(conn.rtcConfiguration, { iceServers: first });
  assert.deepEqual(conn.call('bob@a.example').pc.configuration, { iceServers: first });
  const second = [{ urls: ['turn:t.example:3478'], username: '2:alice@a.example', credential: 'c2' }];
  server.iceServers = second;
  server.kill(ALICE);
  await settle();
  clock.advance(750);
  await settle();
  assert.equal(conn.state, 'connected');
  assert.deepEqual(conn.rtcConfiguration, { iceServers: second }, 'a later server value replaces the earlier one');
  const mine = { iceServers: [] };
  conn.rtcConfiguration = mine;
  server.kill(ALICE);
  await settle();
  clock.advance(750);
  await settle();
  assert.equal(conn.state, 'connected');
  assert.equal(conn.rtcConfiguration, mine, 'the application value is kept');
});

test('errors without onerror go to console.error, never nowhere', async (t) => {
  const { server, conn } = setup();
  conn.onerror = null;
  await conn.connect('wss://a.example/wsp', server.tokenOf(ALICE));
  const logged = [];
  t.mock.method(console, 'error', (e) => logged.push(e));
  conn.socket.deliver('not json');
  assert.equal(logged.length, 1);
  assert.equal(logged[0].code, 'bad-frame');
});
