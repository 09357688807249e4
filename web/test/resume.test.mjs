// Resuming a transferred call whose network path broke: the caller's
// resume invite through the servers, the callee's ICE restart, bye 101
// again, and every race around it (both sides moving, a late socket,
// devices that do not hold the call, a wrong caller, the bounded wait,
// glare with a renegotiation).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { RESUME_DELAY_MS, RESUME_RETRY_CAP_MS, RESUME_TIMEOUT_MS, WspConnection } from '../wsp.js';
import { FakeClock, FakeServer, connector, fakeStream, makeWebRTC, settle } from './fakes.mjs';

const ALICE = 'alice@a.example';
const BOB = 'bob@a.example';
const CAROL = 'carol@a.example';

/**
 * Alice calls Bob on one fake server, up to the transfer. Every call's
 * callbacks are recorded in `call.log`; every connection's errors in
 * `conn.errors`. `extra` names more devices to connect after the transfer
 * (`{bob2: BOB}`), so that they never saw the original invite.
 */
async function transferred({ options = {}, extra = {} } = {}) {
  const server = new FakeServer([ALICE, BOB, CAROL]);
  const rtc = makeWebRTC();
  const clock = new FakeClock();
  const make = connector(WspConnection, server, rtc, clock, options);
  const alice = await make(ALICE);
  const bob = await make(BOB);
  const out = watch(alice.call(BOB, { stream: fakeStream('audio') }));
  await settle();
  assert.equal(bob.incoming.length, 1, 'Bob got the call');
  const incoming = watch(bob.incoming[0]);
  await incoming.accept({ stream: fakeStream('audio') });
  await settle();
  assert.deepEqual([out.state, incoming.state], ['transferred', 'transferred']);
  assert.equal(server.calls.size, 0, 'the server forgot the call');
  const devices = {};
  for (const [name, user] of Object.entries(extra)) devices[name] = await make(user);
  server.log.length = 0;
  for (const c of [out, incoming]) c.log.length = 0;
  return { server, rtc, clock, alice, bob, out, incoming, ...devices };
}

/** Records a call's callbacks in `call.log` and its messages in `call.messages`. */
function watch(call) {
  call.log = [];
  call.messages = [];
  call.onresuming = () => call.log.push('resuming');
  call.ontransferred = () => call.log.push('transferred');
  call.onmessage = (m) => call.messages.push(m);
  call.onclose = (code, description) => call.log.push(`close ${code} ${description}`);
  return call;
}

/** The frames the server received, as [from, keyword, extra] (extra: resume, or a bye's code). */
const seen = (server) =>
  server.log.map((f) => [f.from, f.keyword, f.keyword === 'invite' ? !!f.content.resume : f.keyword === 'bye' ? f.content.code : undefined]);

/** Breaks the path and lets the resume delay pass. */
async function breakAndWait(rtc, clock, out, state = 'disconnected') {
  rtc.breakPath(out.pc, state);
  await settle();
  clock.advance(RESUME_DELAY_MS);
  await settle();
}

test('a broken path is resumed through the servers: an ICE restart, bye 101 again, the same call', async () => {
  const { server, rtc, clock, alice, bob, out, incoming } = await transferred();
  const pcs = [out.pc, incoming.pc];
  const channels = [out.channel, incoming.channel];
  rtc.breakPath(out.pc);
  await settle();
  // Disconnected, but not for long enough yet: still transferred.
  clock.advance(RESUME_DELAY_MS - 1);
  await settle();
  assert.deepEqual([out.state, incoming.state], ['transferred', 'transferred']);
  // Sent while the path is down but before anyone noticed: the channel holds it.
  incoming.send('held by the channel');
  clock.advance(1);
  // The caller's invite goes out at once; the callee waits for it.
  assert.deepEqual([out.state, incoming.state], ['resuming', 'resuming']);
  assert.deepEqual([out.transferred, incoming.transferred], [false, false]);
  out.send('queued 1');
  out.send({ queued: 2 });
  await settle();
  assert.deepEqual([out.state, incoming.state], ['transferred', 'transferred']);
  assert.ok(out.transferred && out.peerTransferred && incoming.transferred && incoming.peerTransferred);
  // The invite, the restart's offer, then its answer and both sides'
  // candidates (in the order the network gave), and both 101s.
  const frames = seen(server);
  assert.deepEqual(frames.slice(0, 2), [[ALICE, 'invite', true], [BOB, 'offer', undefined]]);
  const middle = frames.slice(2, -2);
  assert.deepEqual(middle.filter(([, k]) => k !== 'icecandidate'), [[ALICE, 'answer', undefined]]);
  assert.ok(middle.some(([w, k]) => w === ALICE && k === 'icecandidate') && middle.some(([w, k]) => w === BOB && k === 'icecandidate'));
  assert.deepEqual(frames.slice(-2).map(([, k, c]) => [k, c]), [['bye', 101], ['bye', 101]]);
  assert.ok(!seen(server).some(([, k]) => k === 'ringing'), 'the callee never rings again');
  assert.equal(server.calls.size, 0, 'the server forgot the call again');
  assert.equal(server.log[0].id, out.id, 'the same call id');
  assert.deepEqual(server.log[0].content, { caller: { uri: ALICE }, callee: { uri: BOB }, resume: true });
  // It continues the call's trace: same trace id, a span id of its own.
  const invites = alice.socket.frames.filter((f) => f[0] === 'invite').map((f) => f[2].traceparent.split('-'));
  assert.equal(invites.length, 2);
  assert.equal(invites[1][1], out.traceId);
  assert.equal(invites[1][1], invites[0][1]);
  assert.notEqual(invites[1][2], invites[0][2]);
  // The same objects, restarted: the callee offered with iceRestart.
  assert.deepEqual([out.pc, incoming.pc], pcs);
  assert.deepEqual([out.channel, incoming.channel], channels);
  assert.ok(incoming.pc.ops.includes('createOffer:iceRestart'));
  assert.equal(bob.incoming.length, 1, 'no new onincoming');
  assert.deepEqual(out.log, ['resuming', 'transferred']);
  assert.deepEqual(incoming.log, ['resuming', 'transferred']);
  assert.deepEqual(incoming.messages, ['queued 1', { queued: 2 }]);
  assert.deepEqual(out.messages, ['held by the channel']);
  assert.deepEqual([alice.errors, bob.errors], [[], []]);
  // It still works as a transferred call: the hang-up goes on the channel.
  server.log.length = 0;
  out.hangup();
  await settle();
  assert.deepEqual(incoming.log.at(-1), 'close 200 Hung up');
  assert.deepEqual(server.log, []);
});

test('failed resumes at once; a second break resumes again', async () => {
  const { server, rtc, out, incoming, alice, bob } = await transferred();
  rtc.breakPath(out.pc, 'failed');
  await settle();
  assert.deepEqual(out.log, ['resuming', 'transferred']);
  assert.deepEqual(incoming.log, ['resuming', 'transferred']);
  rtc.breakPath(out.pc);
  rtc.failPath(out.pc);
  await settle();
  assert.deepEqual(out.log, ['resuming', 'transferred', 'resuming', 'transferred']);
  assert.deepEqual([out.state, incoming.state], ['transferred', 'transferred']);
  assert.equal(seen(server).filter(([, k]) => k === 'invite').length, 2);
  assert.equal(server.calls.size, 0);
  assert.deepEqual([alice.errors, bob.errors], [[], []]);
});

test('a path that comes back by itself within the delay is not resumed', async () => {
  const { server, rtc, clock, out, incoming } = await transferred();
  rtc.breakPath(out.pc);
  await settle();
  clock.advance(RESUME_DELAY_MS / 2);
  rtc.healPath(out.pc);
  clock.advance(RESUME_DELAY_MS);
  await settle();
  assert.deepEqual([out.state, incoming.state, out.log, incoming.log], ['transferred', 'transferred', [], []]);
  assert.deepEqual(server.log, []);
});

test('both moved: the callee\'s socket is back late; the caller retries with backoff until it is', async () => {
  const { server, rtc, clock, out, incoming, alice, bob } = await transferred();
  // Bob's network is away: his socket drops and cannot open again.
  server.unreachable.add(BOB);
  server.kill(BOB);
  await settle();
  assert.equal(bob.state, 'reconnecting');
  assert.equal(incoming.state, 'transferred', 'a transferred call survives its socket');
  await breakAndWait(rtc, clock, out);
  assert.deepEqual([out.state, incoming.state], ['resuming', 'resuming']);
  const start = clock.now;
  // Every invite finds no device of Bob: 480, and another one later, at
  // growing intervals no longer than the cap.
  const times = [];
  server.onframe = (f) => f.keyword === 'invite' && times.push(clock.now);
  for (let i = 0; i < 15; i++) {
    clock.advance(1000);
    await settle();
  }
  const refused = server.log.filter((f) => f.keyword === 'invite').map((f) => f.id);
  assert.ok(times.length >= 4, `the caller keeps trying: ${times.length} invites in 15 s`);
  const gaps = times.slice(1).map((t, i) => t - times[i]);
  assert.ok(gaps.every((g, i) => g <= RESUME_RETRY_CAP_MS + 1000 && (i === 0 || g >= gaps[i - 1])), `gaps ${gaps}`);
  assert.ok(refused.every((id) => id === out.id));
  assert.equal(out.state, 'resuming');
  // Bob's network is back: his socket reopens; the next invite reaches him.
  server.unreachable.delete(BOB);
  while (out.state === 'resuming' && clock.now - start < RESUME_TIMEOUT_MS) {
    clock.advance(500);
    await settle();
  }
  assert.equal(bob.state, 'connected');
  assert.deepEqual([out.state, incoming.state], ['transferred', 'transferred']);
  assert.deepEqual(out.log, ['resuming', 'transferred']);
  assert.deepEqual(incoming.log, ['resuming', 'transferred']);
  assert.equal(server.calls.size, 0);
  assert.deepEqual([alice.errors, bob.errors], [[], []]);
});

test('a resume at a device that does not hold the call is refused with 481; it never rings or reports anything', async () => {
  const { server, rtc, clock, out, incoming, alice, bob, bob2 } = await transferred({ extra: { bob2: BOB } });
  await breakAndWait(rtc, clock, out);
  assert.deepEqual([out.state, incoming.state], ['transferred', 'transferred']);
  const fromBob2 = server.log.filter((f) => f.ws === bob2.socket);
  assert.deepEqual(fromBob2.map((f) => [f.keyword, f.content.code, f.id]), [['bye', 481, out.id]]);
  assert.equal(bob2.incoming.length, 0, 'no onincoming');
  assert.equal(bob2.calls.size, 0);
  assert.ok(!server.log.some((f) => f.keyword === 'ringing'));
  // Its "Answered elsewhere" (sent when Bob's first device offered) is dropped quietly.
  assert.deepEqual([alice.errors, bob.errors, bob2.errors], [[], [], []]);
  assert.deepEqual(bob2.socket.sent.map((t) => JSON.parse(t)[0]), ['bye']);
});

test('a resume from another caller is refused and does not touch the call', async () => {
  const { server, clock, rtc, out, incoming, alice, bob } = await transferred();
  const ops = incoming.pc.ops.length;
  const carolConn = await rawSocket(server, CAROL);
  carolConn.socket.send(JSON.stringify(['invite', { caller: { uri: CAROL }, callee: { uri: BOB }, resume: true }, { call: out.id }]));
  await settle();
  assert.deepEqual(server.log.filter((f) => f.from === BOB).map((f) => [f.keyword, f.content?.code]), [['bye', 481]]);
  assert.equal(incoming.state, 'transferred');
  assert.equal(incoming.pc.ops.length, ops, 'no WebRTC operation');
  assert.deepEqual(incoming.log, []);
  // Carol's call ended with 481; nothing of it reached Bob's call.
  assert.deepEqual(carolConn.received.map((f) => [f[0], f[1]?.code]), [['bye', 481]]);
  // The real resume still works afterwards.
  await breakAndWait(rtc, clock, out);
  assert.deepEqual([out.state, incoming.state, incoming.log], ['transferred', 'transferred', ['resuming', 'transferred']]);
  assert.deepEqual([alice.errors, bob.errors], [[], []]);
});

/** A raw socket of `user` on the server, recording what it receives. */
async function rawSocket(server, user) {
  const ws = new server.WebSocket(`wss://a.example/wsp?access_token=${server.tokenOf(user)}`, 'wsp-1.0');
  ws.received = [];
  ws.addEventListener('message', (e) => ws.received.push(JSON.parse(e.data)));
  await settle();
  assert.equal(ws.readyState, 1);
  return { socket: ws, received: ws.received };
}

test('the bounded wait: a resume that cannot succeed ends both sides with 410; queued messages are reported', async () => {
  const { server, rtc, clock, out, incoming, alice, bob } = await transferred();
  server.unreachable.add(BOB);
  server.kill(BOB);
  await breakAndWait(rtc, clock, out);
  out.send('never delivered');
  incoming.send('nor this');
  clock.advance(RESUME_TIMEOUT_MS);
  await settle();
  assert.equal(out.log.at(-1), 'close 410 Could not resume the call');
  assert.equal(incoming.log.at(-1), 'close 410 Could not resume the call');
  assert.deepEqual([out.state, incoming.state], ['closed', 'closed']);
  assert.deepEqual(alice.errors.map((e) => [e.code, e.callId, e.undelivered]), [['undelivered', out.id, ['never delivered']]]);
  assert.deepEqual(bob.errors.map((e) => [e.code, e.undelivered]), [['undelivered', ['nor this']]]);
  // The caller cancelled its last invite: nothing is left on the server.
  assert.equal(server.calls.size, 0);
  assert.deepEqual([alice.calls.size, bob.calls.size], [0, 0]);
});

test('glare: a renegotiation in flight when the path breaks gives way to the restart; its late frames are ignored', async () => {
  for (const side of ['callee', 'caller']) {
    const { rtc, clock, out, incoming, alice, bob, server } = await transferred();
    const renegotiating = side === 'callee' ? incoming : out;
    // A track added just before the break: the offer leaves on the data
    // channel but is held there by the broken path.
    rtc.breakPath(out.pc);
    renegotiating.pc.addTrack({ kind: 'video', id: `late-${side}` }, fakeStream('video'));
    await settle();
    assert.equal(renegotiating.pc.signalingState, 'have-local-offer');
    clock.advance(RESUME_DELAY_MS);
    await settle();
    assert.deepEqual([out.state, incoming.state], ['transferred', 'transferred'], side);
    assert.ok(renegotiating.pc.ops.includes('rollback'), `${side}: the renegotiation was rolled back`);
    // The late offer was dropped; the renegotiation ran again after the
    // restart, on the channel: both are stable, the track is announced.
    assert.deepEqual([out.pc.signalingState, incoming.pc.signalingState], ['stable', 'stable'], side);
    const other = renegotiating === out ? incoming : out;
    assert.match(other.pc.remoteDescription.sdp, /tracks=2/, side);
    assert.deepEqual([alice.errors, bob.errors], [[], []], side);
    assert.equal(server.calls.size, 0);
  }
});

test('resume: false leaves a broken call transferred for the application to decide', async () => {
  const { server, rtc, clock, out, incoming } = await transferred({ options: { resume: false } });
  const states = [];
  out.onstatus = (s) => states.push(s);
  await breakAndWait(rtc, clock, out);
  rtc.failPath(out.pc);
  clock.advance(RESUME_TIMEOUT_MS);
  await settle();
  assert.deepEqual([out.state, incoming.state, out.log, incoming.log], ['transferred', 'transferred', [], []]);
  assert.deepEqual(states, ['disconnected']); // reported; `failed` is the transport's, ICE stays disconnected
  assert.deepEqual(server.log, []);
});

test('the caller\'s server restarts during the change: its socket opens again first, then the resume', async () => {
  const { server, rtc, clock, out, incoming, alice, bob } = await transferred();
  server.shutdown();
  await settle();
  assert.deepEqual([alice.state, bob.state], ['reconnecting', 'reconnecting']);
  await breakAndWait(rtc, clock, out);
  assert.equal(out.state, 'resuming');
  assert.deepEqual(server.log, [], 'nothing could be sent');
  server.up = true;
  clock.advance(2000);
  await settle();
  assert.deepEqual([alice.state, bob.state], ['connected', 'connected']);
  assert.deepEqual([out.state, incoming.state], ['transferred', 'transferred']);
  assert.equal(seen(server)[0].join(), [ALICE, 'invite', true].join());
  assert.deepEqual([alice.errors, bob.errors], [[], []]);
});

test('hangup() while resuming ends the call on both sides', async () => {
  const { server, rtc, out, incoming } = await transferred();
  // The callee is away from the servers: the caller's invite waits for it.
  server.unreachable.add(BOB);
  server.kill(BOB);
  rtc.breakPath(out.pc, 'failed');
  await settle();
  assert.equal(out.state, 'resuming');
  out.hangup();
  await settle();
  assert.equal(out.log.at(-1), 'close 200 Hung up');
  // The callee's channel closed with the caller's connection: over for it too.
  assert.equal(incoming.state, 'closed');
  assert.equal(server.calls.size, 0);
});

test('close() hangs up a resuming call: it cannot resume without a socket', async () => {
  const { server, rtc, out, alice } = await transferred();
  server.unreachable.add(BOB); // the callee is away: the resume waits
  server.kill(BOB);
  rtc.breakPath(out.pc, 'failed');
  await settle();
  assert.equal(out.state, 'resuming');
  alice.close();
  await settle();
  assert.equal(out.log.at(-1), 'close 200 Hung up');
  assert.equal(alice.calls.size, 0);
});
