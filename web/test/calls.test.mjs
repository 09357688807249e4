// The call dance: who sends what, candidate buffering, the 101 hand-off,
// signalling on the data channel, bye codes, surviving the socket's loss.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { MAX_PENDING_CANDIDATES, WspConnection } from '../wsp.js';
import { FakeClock, FakeServer, FakeWebSocket, connector, fakeStream, makeToken, makeWebRTC, settle } from './fakes.mjs';

const ALICE = 'alice@a.example';
const BOB = 'bob@a.example';
const OFFER = { type: 'offer', sdp: 'v=0 remote\r\n' };

/** A connection whose socket the test plays the server of. */
async function manual(user = ALICE) {
  const rtc = makeWebRTC();
  const clock = new FakeClock();
  const conn = new WspConnection({ WebSocket: FakeWebSocket, RTCPeerConnection: rtc.RTCPeerConnection, timers: clock, sessionUrl: null });
  conn.errors = [];
  conn.onerror = (e) => conn.errors.push(e);
  const connected = conn.connect('wss://a.example/wsp', makeToken(user));
  await settle();
  const ws = conn.socket;
  ws.accept();
  await connected;
  return { conn, ws, rtc, clock };
}

/** Two connections on one fake server, Alice calling Bob, up to the transfer. */
async function pair({ transfer = true } = {}) {
  const server = new FakeServer([ALICE, BOB]);
  const rtc = makeWebRTC();
  const clock = new FakeClock();
  const make = connector(WspConnection, server, rtc, clock);
  const alice = await make(ALICE);
  const bob = await make(BOB);
  let incoming = null;
  bob.onincoming = (c) => {
    incoming = c;
  };
  const out = alice.call(BOB, { name: 'Alice', stream: fakeStream('audio') });
  await settle();
  assert.ok(incoming, 'Bob got the call');
  if (transfer) {
    await incoming.accept({ stream: fakeStream('audio', 'video') });
    await settle();
    assert.equal(out.state, 'transferred');
    assert.equal(incoming.state, 'transferred');
  }
  return { server, rtc, clock, alice, bob, out, incoming };
}

/** What one side sent on its data channel, parsed. */
const channelFrames = (call) => call.channel.sent.map((t) => JSON.parse(t));

test('call() sends an invite with a random 128-bit id and our address', async () => {
  const { conn, ws } = await manual('Alice@A.Example');
  assert.equal(conn.user, ALICE);
  const call = conn.call('bob@b.example', { name: 'Alice' });
  assert.match(call.id, /^[0-9a-f]{32}$/);
  const traceparent = `00-${call.traceId}-${ws.frames[0][2].traceparent.slice(36, 52)}-00`;
  assert.deepEqual(ws.frames, [['invite', { caller: { uri: ALICE, name: 'Alice' }, callee: { uri: 'bob@b.example' } }, { call: call.id, traceparent }]]);
  assert.equal(call.direction, 'out');
  assert.deepEqual(call.peer, { uri: 'bob@b.example' });
  assert.equal(call.state, 'inviting');
  assert.ok(call.pc, 'the caller has its RTCPeerConnection at once');
  assert.notEqual(conn.call('bob@b.example').id, call.id);
});

test('the caller: ringing, then the callee offer is answered; its candidates wait for the offer', async () => {
  const { conn, ws } = await manual();
  const call = conn.call(BOB);
  const id = call.id;
  let rang = 0;
  call.onringing = () => rang++;
  ws.deliver(['ringing', null, { call: id }]);
  assert.equal(rang, 1);
  assert.equal(call.state, 'ringing');

  // A candidate that arrives before the remote description is kept.
  const early = { candidate: 'candidate:early 1 udp 1 127.0.0.1 9 typ host', sdpMid: '0', sdpMLineIndex: 0 };
  ws.deliver(['icecandidate', early, { call: id }]);
  await settle();
  assert.deepEqual(call.pc.ops, []);

  ws.deliver(['offer', OFFER, { call: id }]);
  assert.equal(call.state, 'connecting');
  await settle();
  assert.deepEqual(call.pc.ops, [
    'setRemoteDescription:offer',
    `addIceCandidate:${early.candidate}`,
    'setLocalDescription:answer',
  ]);
  const frames = ws.frames.slice(1);
  assert.equal(frames[0][0], 'answer');
  assert.equal(frames[0][1].type, 'answer');
  assert.deepEqual(frames[0][2], { call: id });
  // Our candidates follow the answer, then end-of-candidates.
  assert.deepEqual(frames.slice(1).map((f) => [f[0], f[1] === null ? null : typeof f[1].candidate]), [
    ['icecandidate', 'string'],
    ['icecandidate', 'string'],
    ['icecandidate', null],
  ]);
  // Later candidates go straight in.
  ws.deliver(['icecandidate', { ...early, candidate: 'candidate:late' }, { call: id }]);
  ws.deliver(['icecandidate', null, { call: id }]);
  await settle();
  assert.deepEqual(call.pc.ops.slice(3), ['addIceCandidate:candidate:late', 'addIceCandidate:end']);
  assert.deepEqual(conn.errors, []);
});

test('remote candidates before the description are bounded', async () => {
  const { conn, ws } = await manual();
  const call = conn.call(BOB);
  for (let i = 0; i <= MAX_PENDING_CANDIDATES; i++) ws.deliver(['icecandidate', { candidate: `c${i}` }, { call: call.id }]);
  await settle();
  assert.deepEqual(conn.errors.map((e) => e.code), ['buffer-full']);
  ws.deliver(['offer', OFFER, { call: call.id }]);
  await settle();
  assert.equal(call.pc.ops.filter((o) => o.startsWith('addIceCandidate')).length, MAX_PENDING_CANDIDATES);
});

test('the callee: ringing at once, accept() creates the wsp channel and the offer', async () => {
  const { conn, ws } = await manual(BOB);
  let incoming = null;
  conn.onincoming = (c) => {
    incoming = c;
  };
  ws.deliver(['invite', { caller: { uri: ALICE, name: 'Alice' }, callee: { uri: BOB } }, { call: 'call-0001' }]);
  assert.deepEqual(ws.frames, [['ringing', null, { call: 'call-0001' }]]);
  assert.equal(incoming.id, 'call-0001');
  assert.equal(incoming.direction, 'in');
  assert.deepEqual(incoming.peer, { uri: ALICE, name: 'Alice' });
  assert.equal(incoming.state, 'ringing');
  assert.equal(incoming.pc, null);

  await incoming.accept({ stream: fakeStream('audio') });
  assert.equal(incoming.state, 'connecting');
  assert.equal(incoming.channel.label, 'wsp');
  assert.equal(incoming.pc.senders.length, 1);
  const [offer] = ws.frames.slice(1);
  assert.equal(offer[0], 'offer');
  assert.equal(offer[1].type, 'offer');
  assert.deepEqual(offer[2], { call: 'call-0001' });
  await settle();
  // Candidates follow the offer (the server relays them once answered).
  assert.deepEqual(ws.frames.slice(2).map((f) => f[0]), ['icecandidate', 'icecandidate', 'icecandidate']);

  ws.deliver(['answer', { type: 'answer', sdp: 'v=0\r\n' }, { call: 'call-0001' }]);
  await settle();
  assert.deepEqual(incoming.pc.ops, ['setLocalDescription:offer', 'setRemoteDescription:answer']);
  await assert.rejects(incoming.accept(), { code: 'bad-state' });
  assert.deepEqual(conn.errors, []);
});

test('without onincoming an invite is declined with 486', async () => {
  const { ws } = await manual(BOB);
  ws.deliver(['invite', { caller: { uri: ALICE }, callee: { uri: BOB } }, { call: 'call-0002' }]);
  assert.deepEqual(ws.frames, [['bye', { code: 486, description: 'Busy' }, { call: 'call-0002' }]]);
});

test('decline() sends the bye and closes the call; hangup() on a ringing call declines', async () => {
  const { conn, ws } = await manual(BOB);
  const calls = [];
  conn.onincoming = (c) => calls.push(c);
  for (const id of ['call-0003', 'call-0004', 'call-0005']) ws.deliver(['invite', { caller: { uri: ALICE }, callee: { uri: BOB } }, { call: id }]);
  const closes = [];
  for (const c of calls) c.onclose = (code, d) => closes.push([c.id, code, d]);
  calls[0].decline();
  calls[1].decline(486);
  calls[2].hangup();
  assert.deepEqual(ws.frames.filter((f) => f[0] === 'bye'), [
    ['bye', { code: 603, description: 'Declined' }, { call: 'call-0003' }],
    ['bye', { code: 486, description: 'Busy' }, { call: 'call-0004' }],
    ['bye', { code: 603, description: 'Declined' }, { call: 'call-0005' }],
  ]);
  assert.deepEqual(closes, [
    ['call-0003', 603, 'Declined'],
    ['call-0004', 486, 'Busy'],
    ['call-0005', 603, 'Declined'],
  ]);
  assert.equal(conn.calls.size, 0);
  assert.throws(() => calls[0].decline(), { code: 'bad-state' });
});

test('a whole call over a server: invite, ringing, offer from the callee, answer, 101 from each side', async () => {
  const { server, alice, bob, out, incoming } = await pair();
  const roles = server.log.map((f) => `${f.from === ALICE ? 'caller' : 'callee'} ${f.keyword}${f.keyword === 'bye' ? ` ${f.content.code}` : ''}`);
  const firsts = roles.filter((r) => !r.endsWith('icecandidate'));
  assert.deepEqual(firsts.slice(0, 4), ['caller invite', 'callee ringing', 'callee offer', 'caller answer']);
  assert.ok(firsts.includes('caller bye 101') && firsts.includes('callee bye 101'));
  assert.ok(roles.includes('caller icecandidate') && roles.includes('callee icecandidate'));
  // Nothing from a side goes through the server after its 101.
  for (const side of ['caller', 'callee']) {
    const own = roles.filter((r) => r.startsWith(side));
    assert.equal(own.at(-1), `${side} bye 101`, side);
  }
  assert.ok(out.peerTransferred && incoming.peerTransferred, 'each side heard the other 101');
  assert.deepEqual(server.log.find((f) => f.keyword === 'bye').content, { code: 101, description: 'Transferred' });
  assert.equal(server.calls.size, 0, 'the server forgot the call');
  assert.deepEqual([alice.errors, bob.errors], [[], []]);
});

test('callbacks: onringing, onstatus, ontrack, ontransferred, in order with the state', async () => {
  const server = new FakeServer([ALICE, BOB]);
  const rtc = makeWebRTC();
  const clock = new FakeClock();
  const opts = { WebSocket: server.WebSocket, RTCPeerConnection: rtc.RTCPeerConnection, fetch: server.fetch, timers: clock };
  const alice = new WspConnection(opts);
  const bob = new WspConnection(opts);
  await alice.connect('wss://a.example/wsp', server.tokenOf(ALICE));
  await bob.connect('wss://a.example/wsp', server.tokenOf(BOB));
  const seen = [];
  bob.onincoming = (c) => {
    seen.push(`bob incoming ${c.state}`);
    c.onstatus = (s) => seen.push(`bob status ${s} ${c.state}`);
    c.ontransferred = () => seen.push(`bob transferred ${c.state}`);
    c.ontrack = (t, streams) => seen.push(`bob track ${t.kind} ${streams[0].id}`);
    c.accept();
  };
  const call = alice.call(BOB, { stream: fakeStream('video') });
  call.onringing = () => seen.push(`alice ringing ${call.state}`);
  call.onstatus = (s) => seen.push(`alice status ${s} ${call.state}`);
  call.ontransferred = () => seen.push(`alice transferred ${call.state}`);
  await settle();
  const of = (who) => seen.filter((s) => s.startsWith(who));
  assert.deepEqual(of('alice'), [
    'alice ringing ringing',
    'alice status checking connecting',
    'alice status connected connected',
    'alice transferred transferred',
  ]);
  assert.ok(of('bob').includes('bob track video stream-video'), 'Bob got Alice video track');
  assert.deepEqual(of('bob').filter((s) => !s.includes('track')), [
    'bob incoming ringing',
    'bob status checking connecting',
    'bob status connected connected',
    'bob transferred transferred',
  ]);
});

test('send() messages reach onmessage on the other side, also those sent before the transfer', async () => {
  const { alice, bob, out, incoming } = await pair({ transfer: false });
  const atBob = [];
  const atAlice = [];
  incoming.onmessage = (d) => atBob.push(d);
  out.onmessage = (d) => atAlice.push(d);
  out.send('early'); // before the data channel exists: queued
  await incoming.accept();
  await settle();
  out.send({ text: 'hi', n: [1, 2] });
  incoming.send('hello');
  incoming.send(null);
  await settle();
  assert.deepEqual(atBob, ['early', { text: 'hi', n: [1, 2] }]);
  assert.deepEqual(atAlice, ['hello', null]);
  assert.deepEqual(channelFrames(out).filter((f) => f[0] === 'message'), [['message', 'early'], ['message', { text: 'hi', n: [1, 2] }]]);
  assert.throws(() => out.send(10n), { code: 'bad-message' });
  assert.deepEqual([alice.errors, bob.errors], [[], []]);
});

test('after the transfer, renegotiation and the hang-up go on the data channel, not the socket', async () => {
  const { server, alice, bob, out, incoming } = await pair();
  const logged = server.log.length;
  out.pc.addTrack({ kind: 'video', id: 'screen' }, fakeStream('video'));
  await settle();
  assert.deepEqual(channelFrames(out).map((f) => f[0]), ['offer']);
  assert.equal(channelFrames(out)[0].length, 2, 'no options on the channel');
  assert.deepEqual(channelFrames(incoming).map((f) => f[0]), ['answer']);
  assert.equal(out.pc.signalingState, 'stable');
  assert.equal(incoming.pc.signalingState, 'stable');

  let closed = null;
  incoming.onclose = (code, d) => {
    closed = [code, d];
  };
  out.hangup();
  assert.equal(out.state, 'closed');
  await settle();
  assert.deepEqual(channelFrames(out).at(-1), ['bye', { code: 200, description: 'Hung up' }]);
  assert.deepEqual(closed, [200, 'Hung up']);
  assert.equal(incoming.state, 'closed');
  assert.equal(server.log.length, logged, 'nothing more went through the server');
  assert.ok(out.pc.closed && incoming.pc.closed);
  assert.deepEqual([alice.errors, bob.errors], [[], []]);
});

test('renegotiation glare on the data channel: the callee (impolite) wins, both end stable', async () => {
  const { alice, bob, out, incoming } = await pair();
  out.pc.addTrack({ kind: 'audio', id: 'a2' }, fakeStream('audio'));
  incoming.pc.addTrack({ kind: 'audio', id: 'b2' }, fakeStream('audio'));
  await settle(60);
  assert.ok(out.pc.ops.includes('rollback'), 'the caller rolled back');
  assert.ok(!incoming.pc.ops.includes('rollback'));
  assert.equal(out.pc.signalingState, 'stable');
  assert.equal(incoming.pc.signalingState, 'stable');
  // The caller's own change was offered again after the glare.
  assert.equal(channelFrames(out).filter((f) => f[0] === 'offer').length, 2);
  assert.equal(out.pc.needNegotiation, false);
  assert.deepEqual([alice.errors, bob.errors], [[], []]);
});

test('a transferred call survives the loss of both sockets and of the server', async () => {
  const { server, clock, alice, bob, out, incoming } = await pair();
  let ended = 0;
  out.onclose = incoming.onclose = () => ended++;
  server.shutdown();
  await settle();
  assert.equal(alice.state, 'reconnecting');
  assert.equal(bob.state, 'reconnecting');
  assert.equal(out.state, 'transferred');
  assert.equal(incoming.state, 'transferred');
  assert.equal(ended, 0);
  const got = [];
  incoming.onmessage = (d) => got.push(d);
  out.send('still here');
  await settle();
  assert.deepEqual(got, ['still here']);
  // Reconnection attempts fail meanwhile; the call does not care.
  clock.advance(60_000);
  await settle();
  assert.equal(out.state, 'transferred');
  // close() leaves transferred calls alone.
  alice.close();
  assert.equal(out.state, 'transferred');
  incoming.hangup();
  await settle();
  assert.equal(out.state, 'closed');
  assert.equal(ended, 2);
});

test('a call that is not transferred ends with 410 when the socket is lost', async () => {
  const { server, alice, out, incoming } = await pair({ transfer: false });
  const closes = [];
  out.onclose = (code, d) => closes.push([code, d]);
  server.kill(ALICE);
  await settle();
  assert.deepEqual(closes, [[410, 'Connection to the server lost']]);
  assert.equal(out.state, 'closed');
  assert.ok(out.pc.closed);
  assert.equal(alice.calls.size, 0);
  assert.equal(incoming.state, 'ringing'); // the server told Bob nothing yet in this fake
});

test('every bye code of the protocol reaches onclose(code, description) and closes the call', async () => {
  const { conn, ws } = await manual();
  // Before the answer, any bye ends an outgoing call (400 and 481 refuse the invite).
  const codes = [200, 400, 403, 404, 408, 410, 480, 481, 486, 487, 502, 503, 504, 603, 604];
  for (const code of codes) {
    const call = conn.call(BOB);
    const seen = [];
    call.onclose = (c, d) => seen.push([c, d]);
    ws.deliver(['bye', { code, description: `text ${code}` }, { call: call.id }]);
    assert.deepEqual(seen, [[code, `text ${code}`]], `bye ${code}`);
    assert.equal(call.state, 'closed');
    assert.ok(call.pc.closed);
    assert.equal(conn.calls.has(call.id), false);
  }
  // For a ringing incoming call: cancelled, answered or declined elsewhere, timeout, caller gone.
  conn.onincoming = () => {};
  for (const [code, description] of [[487, 'Cancelled'], [200, 'Answered elsewhere'], [603, 'Declined elsewhere'], [408, 'No answer'], [410, 'Caller went away']]) {
    ws.deliver(['invite', { caller: { uri: BOB }, callee: { uri: ALICE } }, { call: `in-${code}-x` }]);
    const call = conn.calls.get(`in-${code}-x`);
    const seen = [];
    call.onclose = (c, d) => seen.push([c, d]);
    ws.deliver(['bye', { code, description }, { call: call.id }]);
    assert.deepEqual(seen, [[code, description]]);
  }
  // A bye without a description gives ''.
  const call = conn.call(BOB);
  let got = null;
  call.onclose = (c, d) => {
    got = [c, d];
  };
  ws.deliver(['bye', { code: 486 }, { call: call.id }]);
  assert.deepEqual(got, [486, '']);
  assert.deepEqual(conn.errors, []);
});

test('after the answer, bye 400 only refuses a frame; 481 ends a call still on the socket', async () => {
  const { conn, ws } = await manual();
  const call = conn.call(BOB);
  ws.deliver(['offer', OFFER, { call: call.id }]);
  await settle();
  ws.deliver(['bye', { code: 400, description: 'Not allowed' }, { call: call.id }]);
  assert.equal(call.state, 'connecting');
  assert.deepEqual(conn.errors.map((e) => [e.code, e.byeCode, e.callId]), [['refused', 400, call.id]]);
  let got = null;
  call.onclose = (c, d) => {
    got = [c, d];
  };
  ws.deliver(['bye', { code: 481, description: 'No such call' }, { call: call.id }]);
  assert.deepEqual(got, [481, 'No such call']);
});

test('on a transferred call, a bye from the peer on the channel ends it; socket byes are dropped', async () => {
  const { alice, bob, out, incoming } = await pair();
  // Both sides transferred: the servers forgot the call, so a frame for
  // its id on the socket belongs to another call through the servers.
  for (const code of [481, 410, 200]) alice.socket.deliver(['bye', { code, description: 'not this call' }, { call: out.id }]);
  assert.equal(out.state, 'transferred');
  assert.deepEqual(alice.errors, []);
  let got = null;
  out.onclose = (c, d) => {
    got = [c, d];
  };
  incoming.channel.send(JSON.stringify(['bye', { code: 486, description: 'Busy here' }]));
  await settle();
  assert.deepEqual(got, [486, 'Busy here']);
  assert.equal(bob.errors.length, 0);
});

test('the data channel refuses frames that are not for it, and binary messages', async () => {
  const { alice, out, incoming } = await pair();
  const got = [];
  out.onmessage = (d) => got.push(d);
  for (const bad of ['nope', '["invite", {"caller": {"uri": "a@b"}, "callee": {"uri": "c@d"}}]', '["ringing"]', '["bye", {"code": 1}]']) incoming.channel.send(bad);
  incoming.channel.remote.dispatchEvent(Object.assign(new Event('message'), { data: new ArrayBuffer(2) }));
  incoming.channel.send('["message", "ok"]');
  await settle();
  assert.deepEqual(alice.errors.map((e) => [e.code, e.callId]), Array(5).fill(['bad-frame', out.id]));
  assert.deepEqual(got, ['ok']);
  assert.equal(out.state, 'transferred');
});

test('the data channel closing without a bye ends the call with 410', async () => {
  const { out, incoming } = await pair();
  let got = null;
  out.onclose = (c, d) => {
    got = [c, d];
  };
  incoming.pc.close(); // the peer vanished
  await settle();
  assert.deepEqual(got, [410, 'Data channel closed']);
});

test('frames for unknown calls are reported; late frames of ended calls are not', async () => {
  const { conn, ws } = await manual();
  ws.deliver(['offer', OFFER, { call: 'nobody-here' }]);
  ws.deliver(['bye', { code: 400, description: 'options.call is required' }]);
  assert.deepEqual(conn.errors.map((e) => e.code), ['unknown-call', 'refused']);
  const call = conn.call(BOB);
  call.hangup();
  ws.deliver(['icecandidate', null, { call: call.id }]);
  assert.equal(conn.errors.length, 2);
  ws.deliver('["ringing", 5]');
  ws.deliver(['message', 'x', { call: call.id }]);
  assert.deepEqual(conn.errors.map((e) => e.code).slice(2), ['bad-frame', 'bad-frame']);
});

test('setStatsInterval calls onstats with getStats() until stopped or closed', async () => {
  const { clock, out } = await pair();
  const got = [];
  out.onstats = (s) => got.push(s.get('in').type);
  out.setStatsInterval(1000);
  clock.advance(1000);
  await settle();
  clock.advance(1000);
  await settle();
  assert.deepEqual(got, ['inbound-rtp', 'inbound-rtp']);
  out.setStatsInterval(0);
  clock.advance(5000);
  await settle();
  assert.equal(got.length, 2);
  out.setStatsInterval(500);
  out.hangup();
  clock.advance(5000);
  await settle();
  assert.equal(got.length, 2);
});

test('the rtcConfiguration of a call: its own, else the connection one', async () => {
  const { conn } = await manual();
  conn.rtcConfiguration = { iceServers: [{ urls: 'stun:conn.example' }] };
  assert.deepEqual(conn.call(BOB).pc.configuration, conn.rtcConfiguration);
  const own = { iceServers: [{ urls: 'turn:own.example', username: 'u', credential: 'c' }] };
  assert.equal(conn.call(BOB, { rtcConfiguration: own }).pc.configuration, own);
});
