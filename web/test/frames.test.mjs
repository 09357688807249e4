// Frame encoding and decoding, token reading, the backoff schedule.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  BACKOFF_CAP_MS,
  WspError,
  backoffDelay,
  decodeFrame,
  encodeFrame,
  tokenSubject,
} from '../wsp.js';
import { makeToken } from './fakes.mjs';

test('encodeFrame writes [keyword, content, options] and leaves out absent options', () => {
  assert.equal(encodeFrame('ringing', null, { call: 'abcdefgh' }), '["ringing",null,{"call":"abcdefgh"}]');
  assert.equal(encodeFrame('ringing', undefined, { call: 'abcdefgh' }), '["ringing",null,{"call":"abcdefgh"}]');
  assert.equal(encodeFrame('message', { a: [1, 'x'] }), '["message",{"a":[1,"x"]}]');
  assert.equal(encodeFrame('bye', { code: 101, description: 'Transferred' }), '["bye",{"code":101,"description":"Transferred"}]');
});

test('decodeFrame reads every keyword and fills absent parts with null', () => {
  const offer = { type: 'offer', sdp: 'v=0\r\n' };
  assert.deepEqual(decodeFrame('["ringing"]'), { keyword: 'ringing', content: null, options: null });
  assert.deepEqual(decodeFrame('["ringing", null, null]'), { keyword: 'ringing', content: null, options: null });
  assert.deepEqual(decodeFrame(JSON.stringify(['offer', offer, { call: 'c1234567' }])), {
    keyword: 'offer',
    content: offer,
    options: { call: 'c1234567' },
  });
  const invite = { caller: { uri: 'a@a.example', name: 'A' }, callee: { uri: 'b@b.example' }, extra: 1 };
  assert.deepEqual(decodeFrame(JSON.stringify(['invite', invite])).content, invite);
  assert.equal(decodeFrame('["answer", {"type": "pranswer", "sdp": ""}]').keyword, 'answer');
  assert.equal(decodeFrame('["icecandidate", null]').content, null);
  assert.equal(decodeFrame('["icecandidate", {"candidate": "c", "sdpMid": "0", "sdpMLineIndex": 0}]').keyword, 'icecandidate');
  assert.deepEqual(decodeFrame('["bye", {"code": 603}]').content, { code: 603 });
  assert.deepEqual(decodeFrame('["message", [1, 2]]').content, [1, 2]);
});

test('decodeFrame refuses what is not a WSP frame, with a bad-frame WspError', () => {
  const bad = [
    ['not json', /not valid JSON/],
    ['{"a": 1}', /JSON array/],
    ['[]', /JSON array/],
    ['["ringing", null, null, null]', /JSON array/],
    ['["hello"]', /unknown keyword "hello"/],
    ['["configuration", {}]', /unknown keyword "configuration"/],
    ['[42]', /unknown keyword 42/],
    ['["toString"]', /unknown keyword/],
    ['["invite", {"caller": {"uri": "a@a"}}]', /bad invite content/],
    ['["invite", {"caller": {"uri": 1}, "callee": {"uri": "b@b"}}]', /bad invite content/],
    ['["ringing", 3]', /bad ringing content/],
    ['["offer", {"type": "answer", "sdp": ""}]', /bad offer content/],
    ['["offer", {"type": "offer"}]', /bad offer content/],
    ['["answer", {"type": "offer", "sdp": ""}]', /bad answer content/],
    ['["icecandidate", "candidate:1"]', /bad icecandidate content/],
    ['["bye", {"code": 99}]', /bad bye content/],
    ['["bye", {"code": 200.5}]', /bad bye content/],
    ['["bye", {"code": 200, "description": 5}]', /bad bye content/],
    ['["bye"]', /bad bye content/],
    ['["ringing", null, "call"]', /bad options/],
    ['["ringing", null, {"call": 5}]', /bad options/],
  ];
  for (const [text, message] of bad) {
    assert.throws(
      () => decodeFrame(text),
      (e) => e instanceof WspError && e.code === 'bad-frame' && message.test(e.message),
      text,
    );
  }
});

test('tokenSubject reads the sub claim, lowercased, without verifying', () => {
  assert.equal(tokenSubject(makeToken('Alice@A.Example')), 'alice@a.example');
  assert.equal(tokenSubject(makeToken('zoë@a.example')), 'zoë@a.example');
  assert.equal(tokenSubject('not-a-jwt'), null);
  assert.equal(tokenSubject('a.###.c'), null);
  assert.equal(tokenSubject(`x.${Buffer.from('{"exp":1}').toString('base64url')}.y`), null);
});

test('backoffDelay doubles from 1 s to a 30 s cap, with equal jitter', () => {
  const mid = [1, 2, 3, 4, 5, 6, 7, 50].map((n) => backoffDelay(n, () => 0.5));
  assert.deepEqual(mid, [750, 1500, 3000, 6000, 12000, 22500, 22500, 22500]);
  assert.equal(backoffDelay(1, () => 0), 500);
  assert.equal(backoffDelay(1, () => 0.999999), 1000);
  assert.equal(backoffDelay(20, () => 0), BACKOFF_CAP_MS / 2);
  assert.equal(backoffDelay(20, () => 0.999999), BACKOFF_CAP_MS);
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(3);
    assert.ok(d >= 2000 && d <= 4000, `attempt 3 gave ${d}`);
  }
});
