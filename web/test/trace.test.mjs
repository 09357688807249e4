// W3C trace context: a fresh traceparent with every invite placed, and
// call.traceId on both sides of a call.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { WspConnection, newTraceParent } from '../wsp.js';
import { FakeClock, FakeWebSocket, makeToken, makeWebRTC, settle } from './fakes.mjs';

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-00$/;

async function connected(user) {
  const rtc = makeWebRTC();
  const conn = new WspConnection({ WebSocket: FakeWebSocket, RTCPeerConnection: rtc.RTCPeerConnection, timers: new FakeClock(), sessionUrl: null });
  const done = conn.connect('wss://a.example/wsp', makeToken(user));
  await settle();
  const ws = conn.socket;
  ws.accept();
  await done;
  return { conn, ws };
}

test('newTraceParent() is a valid version-00 traceparent with random ids', () => {
  const a = newTraceParent();
  const b = newTraceParent();
  const m = TRACEPARENT.exec(a.traceparent);
  assert.ok(m, a.traceparent);
  assert.equal(m[1], a.traceId);
  assert.notEqual(a.traceId, b.traceId);
  assert.notEqual(m[1], '0'.repeat(32));
  assert.notEqual(m[2], '0'.repeat(16));
});

test('every invite placed carries a fresh traceparent whose trace id is call.traceId', async () => {
  const { conn, ws } = await connected('alice@a.example');
  const first = conn.call('bob@b.example');
  const second = conn.call('carol@b.example');
  const sent = ws.frames.map((f) => f[2]);
  assert.equal(sent[0].call, first.id);
  assert.equal(TRACEPARENT.exec(sent[0].traceparent)[1], first.traceId);
  assert.equal(TRACEPARENT.exec(sent[1].traceparent)[1], second.traceId);
  assert.notEqual(first.traceId, second.traceId);
  // Other frames of the call carry only its id.
  first.hangup();
  assert.deepEqual(ws.frames[2][2], { call: first.id });
});

test('an incoming call takes its traceId from the invite, when valid', async () => {
  const { conn, ws } = await connected('bob@a.example');
  const calls = [];
  conn.onincoming = (c) => calls.push(c);
  const invite = (id, options) =>
    ws.deliver(['invite', { caller: { uri: 'alice@b.example' }, callee: { uri: 'bob@a.example' } }, { call: id, ...options }]);
  invite('call-trace-1', { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' });
  invite('call-trace-2', { traceparent: 'not a traceparent' });
  invite('call-trace-3', {});
  assert.deepEqual(calls.map((c) => c.traceId), ['4bf92f3577b34da6a3ce929d0e0e4736', null, null]);
});
