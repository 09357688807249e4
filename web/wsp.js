// wsp.js: the browser client library of wspd (WSP 1.0 WebRTC signalling).
// SPDX-License-Identifier: MIT OR Apache-2.0
//
// A plain ES module with no build step. Its types are JSDoc, checked by
// `tsc --noEmit` (checkJs, strict); wsp.d.ts beside it is generated from it
// by `npm run build:types`. The wire contract is docs/protocol.md.

/**
 * # Overview
 *
 * A {@link WspConnection} is one signalling socket to the user's own server
 * (`wss://host/wsp`, subprotocol `wsp-1.0`). It reconnects by itself after
 * a loss, with exponential backoff and jitter, until {@link WspConnection#close}.
 * Calls are {@link Call} objects, created by {@link WspConnection#call}
 * (outgoing) or handed to `onincoming` (incoming).
 *
 * The library does the WSP call dance: the callee sends `ringing` as soon as
 * the invite arrives; {@link Call#accept} makes the callee create the data
 * channel `wsp` and the offer; the caller answers; candidates flow both
 * ways. When the data channel opens, each side sends
 * `["bye", {"code": 101, "description": "Transferred"}, {"call": id}]` on
 * the socket and from then on sends all its signalling on the data channel.
 * A transferred call no longer depends on the socket or the server.
 *
 * ## The data channel
 *
 * The channel is labelled `wsp`, created by the callee (in-band, ordered,
 * reliable). Every channel message is one text message holding a JSON array
 * `[keyword, content]`: the same frames as on the socket, without options
 * (the channel belongs to one call). Keywords on the channel:
 *
 * | keyword | content |
 * |---|---|
 * | `offer`, `answer` | RTCSessionDescriptionInit (renegotiation) |
 * | `icecandidate` | RTCIceCandidateInit, or `null` for end of candidates |
 * | `bye` | `{code, description?}`: ends the call (101 is ignored there) |
 * | `message` | any JSON value: an application message from {@link Call#send} |
 *
 * Application messages only ever travel as `["message", data]`, so they
 * cannot be mistaken for signalling. Binary messages and other keywords on
 * the channel are protocol errors (reported through `onerror`, ignored).
 *
 * Renegotiation (tracks added to `call.pc` later) uses perfect negotiation:
 * the caller is the polite peer, the callee the impolite one.
 *
 * ## Errors
 *
 * Failures are {@link WspError}s with a string `code`. Protocol errors and
 * failures that no promise can report go to `connection.onerror`; when it
 * is not set they are logged with `console.error`, never dropped.
 *
 * ## Server support this library uses
 *
 * - `GET /wsp?access_token=...` with subprotocol `wsp-1.0` (docs/protocol.md).
 * - `GET /session?access_token=...`, asked before every attempt to open a
 *   socket (the URL is `session` resolved against the socket URL, ws→http,
 *   wss→https: `wss://host/wsp` gives `https://host/session`). A browser
 *   sees a refused upgrade (HTTP 401) only as close 1006, so this is how a
 *   refused token is told apart from a network failure:
 *   - 200 `{"user": address, "iceServers": [RTCIceServer...]}`: the token
 *     is good; `user` replaces the address read from the token and
 *     `iceServers` (fresh TURN credentials) fill
 *     {@link WspConnection#rtcConfiguration} unless the application set
 *     its own;
 *   - 401 (or 403) `{"error": id, "description": text}`, with the ids of a
 *     refused upgrade: the token is refused, for good; no socket is opened;
 *   - anything else (404 from a server without it, 5xx, a network or CORS
 *     failure, no answer within the connect timeout): unknown; the socket
 *     is tried anyway, and its failure counts as transient.
 *   A page served from another origin than the server needs
 *   `Access-Control-Allow-Origin` on that answer.
 *
 * @module wsp
 */

/** The WebSocket subprotocol of WSP 1.0. */
export const SUBPROTOCOL = 'wsp-1.0';

/** The label of the signalling data channel. */
export const CHANNEL_LABEL = 'wsp';

/** Remote candidates kept per call until its remote description is set. */
export const MAX_PENDING_CANDIDATES = 64;

/** Application messages queued per call until its data channel opens. */
export const MAX_QUEUED_MESSAGES = 64;

/** Bytes waiting in a data channel above which {@link Call#send} refuses. */
export const MAX_CHANNEL_BUFFER = 1 << 20;

/** The first reconnection delay's ceiling, in ms (before jitter). */
export const BACKOFF_BASE_MS = 1000;

/** The largest reconnection delay, in ms. */
export const BACKOFF_CAP_MS = 30000;

/** How long the session request and the socket may take, in ms. */
export const CONNECT_TIMEOUT_MS = 15000;

/** How long a hung-up transferred call waits for its bye to leave, in ms. */
export const LINGER_MS = 1000;

/**
 * How long a transferred call's connection may stay `disconnected` before
 * the call is resumed through the servers, in ms (`failed` resumes at once).
 */
export const RESUME_DELAY_MS = 2000;

/** How long a call may stay `resuming` before both sides give up, in ms. */
export const RESUME_TIMEOUT_MS = 30000;

/** The largest delay between two resume invites of the caller, in ms. */
export const RESUME_RETRY_CAP_MS = 5000;

/** Close codes with which the server says that we broke the protocol. */
const PROTOCOL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008, 1009]);

/** Keywords allowed on the data channel. */
const CHANNEL_KEYWORDS = new Set(['offer', 'answer', 'icecandidate', 'bye', 'message']);

/** How many ids of ended calls are remembered, to drop their late frames. */
const ENDED_CALLS_KEPT = 64;

/**
 * Byes that end the servers' part of a resume, not the call: the caller
 * invites again, the callee waits for that invite (400: the servers still
 * hold the call's id, or refused a frame; 480: no device of the callee is
 * online; 481: the devices that got it do not hold the call, or the
 * servers no longer know it; 410: a socket went away; 408, 502, 503, 504:
 * the path between the servers failed).
 */
const RESUME_RETRY_CODES = new Set([400, 408, 410, 480, 481, 502, 503, 504]);

/** Descriptions of the bye codes this library sends. */
const BYE_DESCRIPTIONS = /** @type {Record<number, string>} */ ({
    101: 'Transferred',
    200: 'Hung up',
    410: 'Peer went away',
    480: 'Temporarily unavailable',
    486: 'Busy',
    488: 'Not acceptable here',
    500: 'Internal error',
    603: 'Declined',
});

/**
 * A frame keyword. `message` is only allowed on the data channel,
 * `invite` and `ringing` only on the socket.
 *
 * @typedef {'invite'|'ringing'|'offer'|'answer'|'icecandidate'|'bye'|'message'} Keyword
 */

/**
 * The options of a socket frame. The server reads `call`, and the
 * `traceparent` of an invite.
 *
 * @typedef {{call?: string, traceparent?: string}} FrameOptions
 */

/**
 * A decoded frame.
 *
 * @typedef {Object} Frame
 * @property {Keyword} keyword
 * @property {any} content - validated for its keyword; `null` when absent
 * @property {FrameOptions|null} options
 */

/**
 * One side of a call.
 *
 * @typedef {Object} Party
 * @property {string} uri - an address, `user@domain`
 * @property {string} [name] - a display name
 */

/**
 * The content of an `invite`. `resume: true` asks the callee's device that
 * holds the call of that id to restart its ICE (see {@link Call#state}).
 *
 * @typedef {{caller: Party, callee: Party, resume?: boolean}} Invitation
 */

/**
 * The content of a `bye`.
 *
 * @typedef {{code: number, description?: string}} Bye
 */

/**
 * The state of a {@link Call}. It only moves forward, in this order
 * (states may be skipped):
 *
 * - `inviting`: outgoing, the invite is sent, no device rings yet;
 * - `ringing`: outgoing: a device of the callee rings (`onringing` was
 *   called); incoming: `ringing` is sent, waiting for `accept()` or
 *   `decline()`;
 * - `connecting`: the call is answered: offer, answer and candidates are
 *   being exchanged (for the callee, from `accept()` on; for the caller,
 *   from the callee's offer on);
 * - `connected`: ICE is connected, the data channel is not open yet;
 * - `transferred`: the data channel is open and this side has sent its
 *   bye 101: all its signalling goes on the data channel, and the call no
 *   longer depends on the socket (`ontransferred` was called);
 * - `resuming`: the transferred call's connection broke (`disconnected`
 *   for {@link RESUME_DELAY_MS}, or `failed`), and the two sides are
 *   finding each other again through their servers to restart ICE
 *   (`onresuming` was called). The caller sends an invite with
 *   `resume: true` and the call's id; the callee's device that holds the
 *   call answers with an offer that restarts ICE. Back on the data channel
 *   the call is `transferred` again and `ontransferred` is called again;
 *   after {@link RESUME_TIMEOUT_MS} without success it is closed with 410.
 *   It is the only state a call can leave backwards;
 * - `closed`: the call is over (`onclose` was called, once).
 *
 * @typedef {'inviting'|'ringing'|'connecting'|'connected'|'transferred'|'resuming'|'closed'} CallState
 */

/**
 * The state of a {@link WspConnection}:
 *
 * - `new`: `connect()` was never called;
 * - `connecting`: the first socket is opening (`connect()` is pending);
 * - `connected`: the socket is open;
 * - `reconnecting`: the socket was lost; another is tried after a delay;
 * - `closed`: `close()` was called, a token was refused, or the first
 *   attempt failed. `connect()` may be called again.
 *
 * @typedef {'new'|'connecting'|'connected'|'reconnecting'|'closed'} ConnectionState
 */

/**
 * The `code` of a {@link WspError}:
 *
 * - `missing-token`, `invalid-token`, `token-expired`, `wrong-domain`,
 *   `unknown-user`: the server refused the token (final: never retried);
 * - `connect-failed`: the first socket could not be opened;
 * - `bad-url`: the URL given to `connect()` is not a ws:, wss:, http: or
 *   https: URL;
 * - `closed`: the connection or call was closed while the operation was
 *   pending;
 * - `not-connected`: a frame had to go on a socket or data channel that is
 *   not open;
 * - `bad-state`: a method was called in a state that does not allow it;
 * - `bad-frame`: a frame was received that is not a valid WSP frame;
 * - `unknown-call`: a frame was received for a call this client does not
 *   know;
 * - `refused`: the server refused one of our frames with bye 400 or 481
 *   without ending the call;
 * - `socket-closed`: the server closed the socket because of our frames
 *   (close 1002, 1003, 1007, 1008 or 1009); the connection reconnects;
 * - `buffer-full`: a bounded buffer is full; the item was dropped;
 * - `bad-message`: `send()` was given something JSON cannot encode;
 * - `undelivered`: a call ended while messages given to `send()` still
 *   waited for its data channel (before the transfer, or while resuming);
 *   they were not sent, and `undelivered` holds them, in order;
 * - `webrtc`: an RTCPeerConnection operation failed (see `cause`).
 *
 * @typedef {'missing-token'|'invalid-token'|'token-expired'|'wrong-domain'|'unknown-user'|'connect-failed'|'bad-url'|'closed'|'not-connected'|'bad-state'|'bad-frame'|'unknown-call'|'refused'|'socket-closed'|'buffer-full'|'bad-message'|'undelivered'|'webrtc'} WspErrorCode
 */

/**
 * Timers, injectable for tests.
 *
 * @typedef {Object} Timers
 * @property {(callback: () => void, ms: number) => unknown} setTimeout
 * @property {(handle: unknown) => void} clearTimeout
 */

/**
 * The options of a {@link WspConnection}. Every field defaults to the
 * browser's global of the same name; tests supply fakes.
 *
 * @typedef {Object} WspConnectionOptions
 * @property {typeof WebSocket} [WebSocket]
 * @property {typeof RTCPeerConnection} [RTCPeerConnection]
 * @property {typeof fetch} [fetch]
 * @property {Timers} [timers]
 * @property {() => number} [random] - uniform in [0, 1), for the jitter
 * @property {string|null} [sessionUrl] - the session endpoint, resolved
 *   against the socket URL; `null` never asks it; by default `session`
 *   (`wss://host/wsp` gives `https://host/session`)
 * @property {number} [connectTimeout] - ms, for the session request and
 *   for the socket to open; default {@link CONNECT_TIMEOUT_MS}
 * @property {boolean} [resume] - whether transferred calls whose
 *   connection breaks are resumed through the servers (state `resuming`);
 *   default true. When false, such a call stays `transferred` and the
 *   application decides (`onstatus` reports `disconnected`, `failed`)
 * @property {number} [resumeDelay] - ms a connection may stay
 *   `disconnected` before its call is resumed; default
 *   {@link RESUME_DELAY_MS}
 * @property {number} [resumeTimeout] - ms a call may stay `resuming`;
 *   default {@link RESUME_TIMEOUT_MS}
 */

/**
 * An access token, or a function that returns one, called before every
 * attempt to open a socket (so that reconnections can use a fresh token).
 *
 * @typedef {string | (() => string | Promise<string>)} TokenSource
 */

/**
 * The options of an outgoing call ({@link WspConnection#call}).
 *
 * @typedef {Object} CallOptions
 * @property {MediaStream} [stream] - local tracks to send
 * @property {string} [name] - our display name, sent as `caller.name`
 * @property {RTCConfiguration} [rtcConfiguration] - overrides
 *   {@link WspConnection#rtcConfiguration} for this call
 */

/**
 * The options of {@link Call#accept}.
 *
 * @typedef {Object} AcceptOptions
 * @property {MediaStream} [stream] - local tracks to send
 * @property {RTCConfiguration} [rtcConfiguration] - overrides
 *   {@link WspConnection#rtcConfiguration} for this call
 */

/**
 * An error of this library. `code` says what went wrong; the other fields
 * are set when they apply.
 */
export class WspError extends Error {
    /**
     * @param {WspErrorCode} code
     * @param {string} message
     * @param {{status?: number, closeCode?: number, byeCode?: number, callId?: string, cause?: unknown, undelivered?: any[]}} [details]
     */
    constructor(code, message, details = {}) {
        super(message, 'cause' in details ? {cause: details.cause} : undefined);
        this.name = 'WspError';
        /** @type {WspErrorCode} */
        this.code = code;
        /**
         * The HTTP status of a refused token.
         * @type {number|undefined}
         */
        this.status = details.status;
        /**
         * The WebSocket close code that reported the error.
         * @type {number|undefined}
         */
        this.closeCode = details.closeCode;
        /**
         * The bye code that reported the error.
         * @type {number|undefined}
         */
        this.byeCode = details.byeCode;
        /**
         * The id of the call the error is about.
         * @type {string|undefined}
         */
        this.callId = details.callId;
        /**
         * The messages of `send()` that were not delivered (`undelivered`).
         * @type {any[]|undefined}
         */
        this.undelivered = details.undelivered;
    }
}

/**
 * @param {unknown} v
 * @returns {v is Record<string, any>}
 */
function isObject(v) {
    return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * @param {unknown} v
 * @returns {boolean}
 */
function isParty(v) {
    return isObject(v) && typeof v.uri === 'string' &&
        (v.name === undefined || v.name === null || typeof v.name === 'string');
}

/**
 * @param {unknown} v
 * @param {string[]} types
 * @returns {boolean}
 */
function isDescription(v, types) {
    return isObject(v) && types.includes(v.type) && typeof v.sdp === 'string';
}

/**
 * The ICE username fragment of a session description (its first
 * `a=ice-ufrag` line), or null.
 *
 * @param {string|undefined} sdp
 * @returns {string|null}
 */
function iceUfrag(sdp) {
    const m = typeof sdp === 'string' ? /^a=ice-ufrag:(\S+)/m.exec(sdp) : null;
    return m ? m[1] : null;
}

/**
 * The state of a peer connection's transport as `connectionState` says,
 * else as `iceConnectionState` says (`completed` is `connected`).
 *
 * @param {RTCPeerConnection} pc
 * @returns {string}
 */
function connectivity(pc) {
    /** @type {string} */
    const s = pc.connectionState ?? pc.iceConnectionState;
    return s === 'completed' ? 'connected' : s;
}

/**
 * The content check of each keyword: `null` when the content is fine,
 * else what was expected.
 *
 * @type {Record<Keyword, (content: unknown) => string|null>}
 */
const contentChecks = {
    invite: (c) => isObject(c) && isParty(c.caller) && isParty(c.callee) ?
        null : 'expected {caller: {uri}, callee: {uri}}',
    ringing: (c) => c === null || isObject(c) ? null : 'expected no content',
    offer: (c) => isDescription(c, ['offer']) ? null : 'expected {type: "offer", sdp}',
    answer: (c) => isDescription(c, ['answer', 'pranswer']) ?
        null : 'expected {type: "answer", sdp}',
    icecandidate: (c) => c === null || isObject(c) ? null : 'expected a candidate or null',
    bye: (c) => isObject(c) && Number.isInteger(c.code) && c.code >= 100 && c.code <= 699 &&
        (c.description === undefined || c.description === null ||
         typeof c.description === 'string') ?
        null : 'expected {code: 100-699, description?}',
    message: () => null,
};

/**
 * Encodes a frame as the JSON text of `[keyword, content, options]`;
 * trailing absent parts are left out (`["message", 1]`).
 *
 * @param {Keyword} keyword
 * @param {unknown} [content]
 * @param {FrameOptions|null} [options]
 * @returns {string}
 */
export function encodeFrame(keyword, content, options) {
    /** @type {unknown[]} */
    const frame = [keyword, content === undefined ? null : content];
    if (options)
        frame.push(options);
    return JSON.stringify(frame);
}

/**
 * Decodes the JSON text of a frame and checks its content for its keyword.
 *
 * @param {string} text
 * @returns {Frame}
 * @throws {WspError} with code `bad-frame`
 */
export function decodeFrame(text) {
    /** @type {unknown} */
    let v;
    try {
        v = JSON.parse(text);
    } catch (e) {
        throw new WspError('bad-frame', 'frame is not valid JSON', {cause: e});
    }
    if (!Array.isArray(v) || v.length < 1 || v.length > 3)
        throw new WspError('bad-frame', 'frame must be a JSON array [keyword, content, options]');
    const [keyword, content = null, options = null] = v;
    if (typeof keyword !== 'string' || !Object.hasOwn(contentChecks, keyword))
        throw new WspError('bad-frame', `unknown keyword ${JSON.stringify(keyword)}`);
    const k = /** @type {Keyword} */ (keyword);
    const problem = contentChecks[k](content);
    if (problem)
        throw new WspError('bad-frame', `bad ${k} content: ${problem}`);
    if (options !== null && (!isObject(options) ||
                             (options.call !== undefined && typeof options.call !== 'string')))
        throw new WspError('bad-frame', 'bad options: expected {call?: string}');
    return {keyword: k, content, options};
}

/**
 * The user address in a JWT's `sub` claim, lowercased, or null when the
 * token cannot be read. The token is not verified: the server does that.
 *
 * @param {string} token
 * @returns {string|null}
 */
export function tokenSubject(token) {
    const payload = token.split('.')[1];
    if (!payload)
        return null;
    try {
        const b64 = payload.replace(/-/g, '+').replace(/_/g, '/');
        const binary = atob(b64 + '='.repeat((4 - b64.length % 4) % 4));
        const bytes = Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
        const claims = JSON.parse(new TextDecoder().decode(bytes));
        return isObject(claims) && typeof claims.sub === 'string' ?
            claims.sub.toLowerCase() : null;
    } catch {
        return null; // not base64url JSON: the caller says "unreadable token"
    }
}

/**
 * The delay before reconnection attempt `attempt` (1, 2, ...): exponential
 * with "equal jitter", between half and all of
 * `min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2^(attempt-1))`.
 *
 * @param {number} attempt
 * @param {() => number} [random]
 * @returns {number} ms
 */
export function backoffDelay(attempt, random = Math.random) {
    const ceiling = Math.min(BACKOFF_CAP_MS,
                             BACKOFF_BASE_MS * 2 ** Math.min(Math.max(attempt, 1) - 1, 30));
    return Math.round(ceiling / 2 + random() * ceiling / 2);
}

/**
 * A random call id: 128 bits as 32 lowercase hex digits.
 *
 * @returns {string}
 */
function newCallId() {
    const a = new Uint8Array(16);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * A fresh W3C trace context for a call this page places: a random trace
 * id (or `traceId`, to continue a call's trace) and span id, flags `00`
 * (the page records nothing itself).
 *
 * @param {string} [traceId] - 32 lowercase hex digits
 * @returns {{traceId: string, traceparent: string}}
 */
export function newTraceParent(traceId) {
    const hex = (/** @type {number} */ n) => {
        const a = new Uint8Array(n);
        crypto.getRandomValues(a);
        if (a.every((b) => b === 0))
            a[n - 1] = 1;
        return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
    };
    const id = traceId ?? hex(16);
    return {traceId: id, traceparent: `00-${id}-${hex(8)}-00`};
}

/**
 * The trace id of a `traceparent` option, when it is a valid one.
 *
 * @param {unknown} tp
 * @returns {string|null}
 */
function traceIdOf(tp) {
    const m = typeof tp === 'string' && /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/.exec(tp);
    return m && !/^0+$/.test(m[1]) ? m[1] : null;
}

/**
 * The socket URL without any token: ws: or wss:, http(s) turned into
 * ws(s), relative URLs resolved against the page.
 *
 * @param {string} url
 * @returns {URL}
 */
function socketUrl(url) {
    let u;
    try {
        u = new URL(url, globalThis.location?.href);
    } catch (e) {
        throw new WspError('bad-url', `not a URL: ${url}`, {cause: e});
    }
    if (u.protocol === 'http:')
        u.protocol = 'ws:';
    else if (u.protocol === 'https:')
        u.protocol = 'wss:';
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:')
        throw new WspError('bad-url', `not a WebSocket URL: ${url}`);
    u.searchParams.delete('access_token');
    u.hash = '';
    return u;
}

/**
 * `u` with ws(s) turned into http(s), without query.
 *
 * @param {URL} u
 * @returns {URL}
 */
function httpUrl(u) {
    if (u.protocol === 'ws:')
        u.protocol = 'http:';
    else if (u.protocol === 'wss:')
        u.protocol = 'https:';
    u.search = '';
    return u;
}

/** The token refusal ids of docs/protocol.md. */
const TOKEN_ERRORS = new Set(['missing-token', 'invalid-token', 'token-expired', 'wrong-domain', 'unknown-user']);

/**
 * Calls an application callback with `this` bound. An exception it throws
 * must not break the library's own state: it is rethrown on its own, as an
 * uncaught error.
 *
 * @param {object} target
 * @param {Function|null|undefined} callback
 * @param {...unknown} args
 */
function invoke(target, callback, ...args) {
    if (!callback)
        return;
    try {
        callback.apply(target, args);
    } catch (e) {
        queueMicrotask(() => { throw e; });
    }
}

/**
 * One signalling connection to the user's own WSP server, and its calls.
 *
 * ```js
 * const conn = new WspConnection();
 * conn.onincoming = (call) => { ... call.accept({stream}) ... };
 * await conn.connect('wss://a.example/wsp', token);
 * const call = conn.call('bob@b.example', {stream, name: 'Alice'});
 * ```
 */
export class WspConnection {
    /**
     * Called when a socket opens: after `connect()` and after every
     * successful reconnection.
     * @type {((this: WspConnection) => void) | null}
     */
    onconnected = null;
    /**
     * Called once when the connection ends for good, if `connect()` had
     * resolved: after `close()` (1000, 'Closed by client'), or when a
     * reconnection finds the token refused (1006 and the server's
     * description; `onerror` has had the WspError just before). Socket
     * losses that are retried call `onreconnecting` instead.
     * @type {((this: WspConnection, code: number, reason: string) => void) | null}
     */
    onclose = null;
    /**
     * Called with every error that no promise reports (protocol errors,
     * refused frames, failures in calls). Without it, errors go to
     * `console.error`.
     * @type {((this: WspConnection, error: WspError) => void) | null}
     */
    onerror = null;
    /**
     * Called with each incoming call, once `ringing` has been sent. Call
     * `call.accept()` or `call.decline()`. Without it, invites are declined
     * with 486 (Busy), which leaves the caller's other devices ringing.
     * @type {((this: WspConnection, call: Call) => void) | null}
     */
    onincoming = null;
    /**
     * Called when the socket was lost (or a reconnection failed) and
     * attempt number `attempt` (1, 2, ...) is made in `delayMs` ms.
     * @type {((this: WspConnection, attempt: number, delayMs: number) => void) | null}
     */
    onreconnecting = null;

    /**
     * Our own address: the `sub` claim of the token, read (not verified)
     * by `connect()`, then as `GET /session` names it.
     * @type {string|null}
     */
    user = null;

    /**
     * The RTCConfiguration of new calls (ICE servers...), unless a call is
     * given its own (`options.rtcConfiguration` of `call()` or `accept()`).
     * The application may set it. Otherwise it is filled with the ICE
     * servers of `GET /session`, refreshed before every socket (the
     * server's value replaces only null or an earlier server value).
     * @type {RTCConfiguration|null}
     */
    rtcConfiguration = null;

    /** @type {ConnectionState} */
    state = 'new';

    /**
     * The calls that are not closed, by id, including transferred ones.
     * @type {Map<string, Call>}
     */
    calls = new Map();

    /**
     * The current socket, when one is open or opening.
     * @type {WebSocket|null}
     */
    socket = null;

    /** @type {WspConnectionOptions} */
    #options;
    /** @type {URL|null} */
    #url = null;
    /** @type {TokenSource} */
    #token = '';
    /** Reconnection attempts since the last open socket. */
    #attempt = 0;
    /** @type {unknown} */
    #timer = null;
    /** @type {{resolve: () => void, reject: (e: WspError) => void} | null} */
    #pending = null;
    /** @type {RTCConfiguration|null} */
    #serverConfiguration = null;
    /** @type {string[]} */
    #ended = [];
    /** Bumped by connect() and whenever the connection closes: async work of an older epoch stops. */
    #epoch = 0;

    /**
     * @param {WspConnectionOptions} [options]
     */
    constructor(options = {}) {
        this.#options = options;
    }

    /**
     * The timers in use.
     * @internal
     * @returns {Timers}
     */
    get _timers() {
        return this.#options.timers ?? {
            setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
            clearTimeout: (h) => globalThis.clearTimeout(/** @type {number} */ (h)),
        };
    }

    /**
     * The resume settings in use (connection options, else the defaults).
     * @internal
     * @returns {{enabled: boolean, delay: number, timeout: number}}
     */
    get _resume() {
        const o = this.#options;
        return {
            enabled: o.resume ?? true,
            delay: o.resumeDelay ?? RESUME_DELAY_MS,
            timeout: o.resumeTimeout ?? RESUME_TIMEOUT_MS,
        };
    }

    /**
     * The random source of the jitter.
     * @internal
     * @returns {() => number}
     */
    get _random() {
        return this.#options.random ?? Math.random;
    }

    /**
     * Whether the socket is open and frames can be sent.
     * @internal
     * @returns {boolean}
     */
    get _canSend() {
        return this.#socketOpen();
    }

    /**
     * The RTCPeerConnection constructor in use.
     * @internal
     * @returns {typeof RTCPeerConnection}
     */
    get _RTCPeerConnection() {
        return this.#options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    }

    /**
     * Opens the signalling socket: `url` like `wss://host/wsp`, `token` a
     * JWT (sent as `?access_token=`, since browsers cannot set headers).
     * Resolves when the socket is open. Rejects with a WspError when the
     * token is refused (`invalid-token`, `token-expired`, ...: told by
     * `GET /session`, see the module doc) or when the first attempt fails
     * (`connect-failed`); nothing is retried then. Once it has resolved,
     * lost sockets are reopened until `close()`.
     *
     * @param {string} url
     * @param {TokenSource} token
     * @returns {Promise<void>}
     */
    connect(url, token) {
        if (this.state !== 'new' && this.state !== 'closed')
            return Promise.reject(new WspError('bad-state', `connect() while ${this.state}`));
        try {
            this.#url = socketUrl(url);
        } catch (e) {
            return Promise.reject(e);
        }
        this.#token = token;
        this.#attempt = 0;
        this.#epoch++;
        this.state = 'connecting';
        return new Promise((resolve, reject) => {
            this.#pending = {resolve, reject};
            this.#open();
        });
    }

    /**
     * Closes the connection for good: stops reconnecting, hangs up every
     * call that is not transferred (bye 200; a ringing incoming call gets
     * 480, so that the caller's other devices go on ringing), closes the
     * socket, and calls `onclose(1000, ...)`. Transferred calls go on
     * (a resuming call is hung up: it cannot resume without a socket). A
     * pending `connect()` rejects with `closed` instead.
     */
    close() {
        if (this.state === 'new' || this.state === 'closed')
            return;
        for (const call of [...this.calls.values()]) {
            if (call.direction === 'in' && call.state === 'ringing')
                call.decline(480); // this device leaves; others may still ring
            else if (!call.transferred)
                call.hangup();
        }
        const ws = this.socket;
        this.#shut();
        if (ws)
            ws.close(1000, 'Closed by client');
        this.#finish(null, 1000, 'Closed by client');
    }

    /**
     * Places a call to `uri`. Sends
     * `["invite", {caller: {uri: user, name}, callee: {uri}}, {call: id, traceparent}]`
     * with a random 128-bit id and a fresh W3C trace context, whose trace
     * id is `call.traceId` (the servers log the call under it). The
     * RTCPeerConnection (`call.pc`) is created at once, with the tracks of
     * `options.stream`.
     *
     * @param {string} uri
     * @param {CallOptions} [options]
     * @returns {Call}
     * @throws {WspError} `not-connected` when the socket is not open,
     *   `bad-state` when `uri` is not a string, `webrtc` when the
     *   RTCPeerConnection cannot be created
     */
    call(uri, options = {}) {
        if (typeof uri !== 'string' || uri === '')
            throw new WspError('bad-state', 'call() needs an address');
        if (!this.#socketOpen() || !this.user)
            throw new WspError('not-connected', 'the signalling socket is not open');
        const call = new Call(this, newCallId(), 'out', {uri});
        const trace = newTraceParent();
        call.traceId = trace.traceId;
        call._start(options.rtcConfiguration ?? this.rtcConfiguration, options.stream);
        /** @type {Invitation} */
        const invitation = {caller: {uri: this.user}, callee: {uri}};
        if (options.name !== undefined)
            invitation.caller.name = options.name;
        this.calls.set(call.id, call);
        try {
            this._send('invite', invitation, call.id, {traceparent: trace.traceparent});
        } catch (e) {
            call._abort();
            throw e;
        }
        return call;
    }

    /**
     * Sends a frame on the socket.
     * @internal
     * @param {Keyword} keyword
     * @param {unknown} content
     * @param {string} callId
     * @param {FrameOptions} [options] - more options than the call id
     * @throws {WspError} `not-connected`
     */
    _send(keyword, content, callId, options) {
        const ws = this.socket;
        if (!ws || !this.#socketOpen())
            throw new WspError('not-connected', `cannot send ${keyword}: the signalling socket is not open`,
                               {callId});
        ws.send(encodeFrame(keyword, content, {call: callId, ...options}));
    }

    /**
     * Reports an error.
     * @internal
     * @param {WspError} error
     */
    _error(error) {
        if (this.onerror)
            invoke(this, this.onerror, error);
        else
            console.error(error);
    }

    /**
     * Forgets an ended call; its late frames are dropped quietly.
     * @internal
     * @param {Call} call
     */
    _forget(call) {
        if (this.calls.get(call.id) !== call)
            return;
        this.calls.delete(call.id);
        this.#remember(call.id);
    }

    /**
     * Remembers the id of a call that is over for us: its late frames are
     * dropped quietly.
     *
     * @param {string} id
     */
    #remember(id) {
        this.#ended.push(id);
        if (this.#ended.length > ENDED_CALLS_KEPT)
            this.#ended.shift();
    }

    /** @returns {boolean} */
    #socketOpen() {
        return this.state === 'connected' && this.socket !== null && this.socket.readyState === 1;
    }

    /** Stops timers and forgets the socket. */
    #shut() {
        this.#epoch++;
        if (this.#timer !== null) {
            this._timers.clearTimeout(this.#timer);
            this.#timer = null;
        }
        this.socket = null;
        this.state = 'closed';
    }

    /**
     * Ends the connection for good: rejects a pending `connect()` with
     * `error`, or reports `error` and calls `onclose`.
     *
     * @param {WspError|null} error
     * @param {number} code
     * @param {string} reason
     */
    #finish(error, code, reason) {
        const pending = this.#pending;
        this.#pending = null;
        if (pending) {
            pending.reject(error ?? new WspError('closed', 'close() was called before the socket opened'));
            return;
        }
        if (error)
            this._error(error);
        invoke(this, this.onclose, code, reason);
    }

    /** Opens one socket. */
    async #open() {
        const epoch = this.#epoch;
        /** @type {string} */
        let token;
        try {
            token = typeof this.#token === 'function' ? await this.#token() : this.#token;
        } catch (e) {
            if (epoch === this.#epoch) {
                this.#shut();
                this.#finish(new WspError('invalid-token', 'the token function failed', {cause: e}),
                             1006, 'no token');
            }
            return;
        }
        if (epoch !== this.#epoch)
            return; // close() meanwhile
        const user = typeof token === 'string' ? tokenSubject(token) : null;
        if (!user) {
            this.#shut();
            this.#finish(new WspError('invalid-token', 'the token is not a JWT with a sub claim'),
                         1006, 'invalid token');
            return;
        }
        this.user = user;
        const refusal = await this.#session(token);
        if (epoch !== this.#epoch)
            return; // close() meanwhile
        if (refusal) {
            this.#shut();
            this.#finish(refusal, 1006, refusal.message);
            return;
        }
        const url = new URL(/** @type {URL} */ (this.#url));
        url.searchParams.set('access_token', token);
        const WS = this.#options.WebSocket ?? globalThis.WebSocket;
        /** @type {WebSocket} */
        let ws;
        try {
            ws = new WS(url.href, SUBPROTOCOL);
        } catch (e) {
            // A URL the browser refuses: no retry can help.
            this.#shut();
            this.#finish(new WspError('bad-url', `cannot open ${this.#url}`, {cause: e}),
                         1006, 'bad URL');
            return;
        }
        this.socket = ws;
        let opened = false;
        const timers = this._timers;
        const timeout = timers.setTimeout(() => {
            if (!opened && this.socket === ws)
                ws.close();
        }, this.#options.connectTimeout ?? CONNECT_TIMEOUT_MS);
        ws.addEventListener('open', () => {
            timers.clearTimeout(timeout);
            if (this.socket !== ws)
                return;
            opened = true;
            this.#attempt = 0;
            this.state = 'connected';
            const pending = this.#pending;
            this.#pending = null;
            pending?.resolve();
            invoke(this, this.onconnected);
            for (const call of [...this.calls.values()])
                call._socketOpened();
        });
        ws.addEventListener('message', (e) => {
            if (this.socket === ws)
                this.#received(e.data);
        });
        ws.addEventListener('close', (e) => {
            timers.clearTimeout(timeout);
            if (this.socket !== ws)
                return;
            this.socket = null;
            if (opened)
                this.#lost(e.code, e.reason);
            else
                this.#failed(e.code);
        });
    }

    /**
     * An open socket closed.
     *
     * @param {number} code
     * @param {string} reason
     */
    #lost(code, reason) {
        for (const call of [...this.calls.values()])
            call._socketLost();
        if (PROTOCOL_CLOSE_CODES.has(code))
            this._error(new WspError('socket-closed', `the server closed the socket: ${code} ${reason}`,
                                     {closeCode: code}));
        this.#retry();
    }

    /**
     * A socket closed before it opened. The token was not refused by
     * `GET /session` just before, so the failure is transient.
     *
     * @param {number} code
     */
    #failed(code) {
        if (this.#pending) {
            this.#shut();
            this.#finish(new WspError('connect-failed', `could not open ${this.#url} (close ${code})`,
                                      {closeCode: code}), code, 'connect failed');
        } else {
            this.#retry();
        }
    }

    /** Schedules the next attempt. */
    #retry() {
        this.#attempt++;
        const attempt = this.#attempt;
        const delay = backoffDelay(attempt, this.#options.random);
        this.state = 'reconnecting';
        this.#timer = this._timers.setTimeout(() => {
            this.#timer = null;
            if (this.state === 'reconnecting')
                this.#open();
        }, delay);
        invoke(this, this.onreconnecting, attempt, delay);
    }

    /**
     * Asks `GET /session` about `token`; takes the user and ICE servers it
     * names.
     *
     * @param {string} token
     * @returns {Promise<WspError|null>} the refusal, or null when the
     *   token is accepted or the answer is unknown
     */
    async #session(token) {
        const configured = this.#options.sessionUrl;
        const fetchFn = this.#options.fetch ?? globalThis.fetch;
        if (configured === null || !fetchFn || !this.#url)
            return null;
        const url = httpUrl(new URL(configured ?? 'session', this.#url));
        url.searchParams.set('access_token', token);
        const timers = this._timers;
        const abort = new AbortController();
        const timeout = timers.setTimeout(() => abort.abort(),
                                          this.#options.connectTimeout ?? CONNECT_TIMEOUT_MS);
        /** @type {unknown} */
        let body = null;
        let status = 0;
        try {
            const r = await fetchFn(url.href, {cache: 'no-store', credentials: 'omit', signal: abort.signal});
            status = r.status;
            body = await r.json();
        } catch {
            // No answer (network, CORS, timeout) or no JSON: see below.
        } finally {
            timers.clearTimeout(timeout);
        }
        if (status === 401 || status === 403) {
            const id = isObject(body) && typeof body.error === 'string' ? body.error : '';
            const description = isObject(body) && typeof body.description === 'string' ?
                body.description : `the server refused the token (${status})`;
            const code = /** @type {WspErrorCode} */ (TOKEN_ERRORS.has(id) ? id : 'invalid-token');
            return new WspError(code, description, {status});
        }
        if (status === 200 && isObject(body)) {
            if (typeof body.user === 'string')
                this.user = body.user;
            if (Array.isArray(body.iceServers))
                this.#configured(body.iceServers);
        }
        return null; // accepted, or unknown: the socket will tell
    }

    /**
     * Handles one socket message.
     *
     * @param {unknown} data
     */
    #received(data) {
        if (typeof data !== 'string') {
            this._error(new WspError('bad-frame', 'binary message on the signalling socket'));
            return;
        }
        /** @type {Frame} */
        let frame;
        try {
            frame = decodeFrame(data);
        } catch (e) {
            this._error(/** @type {WspError} */ (e));
            return;
        }
        const handler = WspConnection.#handlers[frame.keyword];
        if (!handler) {
            this._error(new WspError('bad-frame', `${frame.keyword} is not allowed on the socket`));
            return;
        }
        handler.call(this, frame);
    }

    /**
     * What to do with each keyword received on the socket.
     * @type {Partial<Record<Keyword, (this: WspConnection, frame: Frame) => void>>}
     */
    static #handlers = {
        invite(frame) { this.#invited(frame); },
        ringing(frame) { this.#route(frame); },
        offer(frame) { this.#route(frame); },
        answer(frame) { this.#route(frame); },
        icecandidate(frame) { this.#route(frame); },
        bye(frame) { this.#route(frame); },
    };

    /**
     * An incoming call.
     *
     * @param {Frame} frame
     */
    #invited(frame) {
        const id = frame.options?.call;
        if (!id) {
            this._error(new WspError('bad-frame', 'invite without options.call'));
            return;
        }
        const invitation = /** @type {Invitation} */ (frame.content);
        if (invitation.resume === true) {
            this.#resumeInvited(id, invitation);
            return;
        }
        if (this.calls.has(id)) {
            this._error(new WspError('bad-frame', `invite for call ${id}, which exists`, {callId: id}));
            return;
        }
        /** @type {Party} */
        const peer = {uri: invitation.caller.uri};
        if (typeof invitation.caller.name === 'string')
            peer.name = invitation.caller.name;
        const call = new Call(this, id, 'in', peer);
        call.traceId = traceIdOf(frame.options?.traceparent);
        this.calls.set(id, call);
        if (!this.onincoming) {
            call.decline(486);
            return;
        }
        call._ring();
        if (call.state === 'ringing')
            invoke(this, this.onincoming, call);
    }

    /**
     * An invite that resumes call `id`: taken by the call when this device
     * holds it and the caller is its peer; refused at once with bye 481
     * otherwise, without ringing and without touching any call.
     *
     * @param {string} id
     * @param {Invitation} invitation
     */
    #resumeInvited(id, invitation) {
        const call = this.calls.get(id);
        if (call?._takeResume(invitation.caller.uri))
            return;
        try {
            this._send('bye', {code: 481, description: 'No such call'}, id);
        } catch {
            // The socket closed meanwhile: the server ends our part anyway.
        }
        if (!call)
            this.#remember(id); // its later frames ("Answered elsewhere")
    }

    /**
     * A frame for an existing call.
     *
     * @param {Frame} frame
     */
    #route(frame) {
        const id = frame.options?.call;
        const call = id === undefined ? undefined : this.calls.get(id);
        if (call) {
            call._receive(frame.keyword, frame.content, 'socket');
            return;
        }
        if (id !== undefined && this.#ended.includes(id))
            return; // a frame that crossed our bye
        const bye = frame.keyword === 'bye' ? /** @type {Bye} */ (frame.content) : null;
        this._error(bye ?
            new WspError('refused', `the server sent bye ${bye.code} ${bye.description ?? ''}` +
                         (id ? ` for unknown call ${id}` : ''), {byeCode: bye.code, callId: id}) :
            new WspError('unknown-call', `${frame.keyword} for unknown call ${id ?? '(none)'}`,
                         {callId: id}));
    }

    /**
     * The ICE servers the server gave (`GET /session`).
     *
     * @param {RTCIceServer[]} iceServers
     */
    #configured(iceServers) {
        /** @type {RTCConfiguration} */
        const configuration = {iceServers};
        if (this.rtcConfiguration === null || this.rtcConfiguration === this.#serverConfiguration)
            this.rtcConfiguration = configuration;
        this.#serverConfiguration = configuration;
    }
}

/**
 * One call, incoming or outgoing. Created by {@link WspConnection#call} or
 * handed to `onincoming`; never constructed by the application.
 */
export class Call {
    /**
     * Called when a device of the callee rings (outgoing calls).
     * @type {((this: Call) => void) | null}
     */
    onringing = null;
    /**
     * Called with each remote track (RTCPeerConnection `track` events).
     * @type {((this: Call, track: MediaStreamTrack, streams: readonly MediaStream[]) => void) | null}
     */
    ontrack = null;
    /**
     * Called with each new ICE connection state. `connected` and
     * `completed` mean media can flow; `disconnected` may recover. A
     * transferred call whose connection stays `disconnected` or goes
     * `failed` is resumed by the library (state `resuming`), unless the
     * connection option `resume` is false: the application then decides,
     * and after `failed` should hang up.
     * @type {((this: Call, state: RTCIceConnectionState) => void) | null}
     */
    onstatus = null;
    /**
     * Called when this side has moved its signalling onto the data channel
     * (state `transferred`): once after the call is set up, and again after
     * each successful resume.
     * @type {((this: Call) => void) | null}
     */
    ontransferred = null;
    /**
     * Called when a transferred call's connection broke and the call goes
     * `resuming`: its media and messages wait until it is `transferred`
     * again (`ontransferred`) or closed with 410 (`onclose`).
     * @type {((this: Call) => void) | null}
     */
    onresuming = null;
    /**
     * Called with each application message from the peer's `send()`.
     * @type {((this: Call, data: any) => void) | null}
     */
    onmessage = null;
    /**
     * Called once when the call ends, whoever ended it, with the bye code
     * and its description: the peer's or the server's bye (every code of
     * docs/protocol.md: 200, 400, 403, 404, 408, 410, 480, 481, 486, 487,
     * 503, 603 and any code a peer sends), our own `hangup()` (200) or
     * `decline(code)`, 410 when the socket is lost before the transfer or
     * the data channel closes without a bye, 488 when a session
     * description is refused by WebRTC, 500 when the call could not be set
     * up, 410 "Could not resume the call" when a resume took longer than
     * the connection's `resumeTimeout`.
     * @type {((this: Call, code: number, description: string) => void) | null}
     */
    onclose = null;
    /**
     * Called with the RTCStatsReport every `setStatsInterval()` ms.
     * @type {((this: Call, stats: RTCStatsReport) => void) | null}
     */
    onstats = null;

    /** @type {string} */
    id;
    /**
     * The call's W3C trace id (32 hex digits): for an outgoing call the
     * one this page sent, for an incoming one the one the server sent
     * with the invite. Both servers of a call between two domains log it,
     * so a "report a problem" dialog can show it. `null` when an incoming
     * invite had none.
     * @type {string|null}
     */
    traceId = null;
    /** @type {'in'|'out'} */
    direction;
    /**
     * The other side: the callee of an outgoing call (as dialled), the
     * caller of an incoming one (as its invite said).
     * @type {Party}
     */
    peer;
    /**
     * The RTCPeerConnection. For an incoming call it is created by
     * `accept()` and null before.
     * @type {RTCPeerConnection|null}
     */
    pc = null;
    /**
     * The signalling data channel `wsp`, once it exists.
     * @type {RTCDataChannel|null}
     */
    channel = null;
    /** @type {CallState} */
    state;
    /**
     * Whether this side has sent its bye 101 (state `transferred`, or
     * `closed` after it); false again while `resuming`.
     * @type {boolean}
     */
    transferred = false;
    /**
     * Whether the peer's bye 101 has arrived.
     * @type {boolean}
     */
    peerTransferred = false;
    /**
     * A place for the application's own data.
     * @type {Record<string, unknown>}
     */
    userdata = {};

    /** @type {WspConnection} */
    #conn;
    /** The caller is the polite peer of perfect negotiation. */
    #polite;
    /** Whether the first offer/answer exchange is complete. */
    #negotiated = false;
    /** Whether our first description has been signalled. */
    #described = false;
    /** Whether the last remote offer was ignored (glare, impolite side). */
    #ignoreOffer = false;
    /** Signalling work, one task at a time. @type {Promise<void>} */
    #chain = Promise.resolve();
    /** @type {(RTCIceCandidateInit|null)[]} */
    #pendingCandidates = [];
    /** @type {(RTCIceCandidateInit|null)[]} */
    #localCandidates = [];
    /** @type {string[]} */
    #messages = [];
    /** @type {unknown} */
    #statsTimer = null;
    #statsGeneration = 0;
    /** Runs out when the connection stayed `disconnected` too long. @type {unknown} */
    #disconnectTimer = null;
    /** Ends a resume that takes too long. @type {unknown} */
    #resumeDeadline = null;
    /** The caller's next resume invite. @type {unknown} */
    #retryTimer = null;
    /** Resume invites sent since the resume began. */
    #retries = 0;
    /**
     * While resuming: whether the servers hold a call of this id that this
     * side is a party of (the caller's invite is out, or the callee took
     * it). Signalling goes on the socket only then.
     */
    #serverCall = false;
    /** While resuming: the ICE restart's offer and answer are applied. */
    #restarted = false;
    /**
     * The peer's ICE usernames replaced by a restart: descriptions and
     * candidates that still carry them were sent before it, and arrive
     * late on the data channel.
     * @type {Set<string>}
     */
    #staleUfrags = new Set();

    /**
     * @internal
     * @param {WspConnection} conn
     * @param {string} id
     * @param {'in'|'out'} direction
     * @param {Party} peer
     */
    constructor(conn, id, direction, peer) {
        this.#conn = conn;
        this.id = id;
        this.direction = direction;
        this.peer = peer;
        this.#polite = direction === 'out';
        this.state = direction === 'out' ? 'inviting' : 'ringing';
    }

    /**
     * Accepts an incoming ringing call: creates the RTCPeerConnection with
     * the tracks of `options.stream`, the data channel `wsp`, and sends the
     * offer. Resolves once the offer is sent; failures later in the call
     * end it (`onclose`) and are reported to `onerror`.
     *
     * @param {AcceptOptions} [options]
     * @returns {Promise<void>}
     * @throws {WspError} `bad-state` unless incoming and ringing; `webrtc`
     *   when the RTCPeerConnection cannot be created (the call is then
     *   ended with 500)
     */
    async accept(options = {}) {
        if (this.direction !== 'in' || this.state !== 'ringing')
            throw new WspError('bad-state', `accept() on a call that is ${this.direction} and ${this.state}`,
                               {callId: this.id});
        this.state = 'connecting';
        this._start(options.rtcConfiguration ?? this.#conn.rtcConfiguration, options.stream);
        const pc = /** @type {RTCPeerConnection} */ (this.pc);
        this.#adopt(pc.createDataChannel(CHANNEL_LABEL, {ordered: true}));
        await this.#enqueue(async () => {
            try {
                await pc.setLocalDescription();
            } catch (e) {
                this.#webrtcFailed(e, 500);
                return;
            }
            if (this.state === 'closed')
                return;
            this.#signal('offer', pc.localDescription);
            this.#describedNow();
        });
    }

    /**
     * Declines an incoming ringing call: sends bye `code` (603, Declined,
     * ends the call for every device of ours; 486, Busy, only for this
     * one) and closes the call.
     *
     * @param {number} [code]
     * @throws {WspError} `bad-state` unless incoming and ringing, or when
     *   the code is not 300-699
     */
    decline(code = 603) {
        if (this.direction !== 'in' || this.state !== 'ringing')
            throw new WspError('bad-state', 'only a ringing incoming call can be declined',
                               {callId: this.id});
        if (!Number.isInteger(code) || code < 300 || code > 699)
            throw new WspError('bad-state', `bye code ${code} cannot decline a call`, {callId: this.id});
        this.#end(code, BYE_DESCRIPTIONS[code] ?? 'Declined', true);
    }

    /**
     * Ends the call: sends bye 200 (on the data channel once transferred,
     * else on the socket) and closes it. On a ringing incoming call it is
     * `decline()`. Does nothing on a closed call.
     */
    hangup() {
        if (this.state === 'closed')
            return;
        if (this.direction === 'in' && this.state === 'ringing')
            this.decline();
        else
            this.#end(200, BYE_DESCRIPTIONS[200], true);
    }

    /**
     * Sends an application message to the peer over the data channel, as
     * `["message", data]`; the peer's `onmessage(data)` gets it. Opaque to
     * servers: it never goes on the socket. Before the transfer and while
     * resuming, up to {@link MAX_QUEUED_MESSAGES} messages wait, and are
     * sent in order once the channel works; if the call ends first,
     * `onerror` gets a WspError `undelivered` holding them.
     *
     * @param {any} data - any value JSON can encode
     * @throws {WspError} `closed`, `not-connected` (the channel closed),
     *   `buffer-full`, `bad-message`
     */
    send(data) {
        if (this.state === 'closed')
            throw new WspError('closed', 'the call is closed', {callId: this.id});
        /** @type {string} */
        let text;
        try {
            text = encodeFrame('message', data);
        } catch (e) {
            throw new WspError('bad-message', 'send() needs a value JSON can encode',
                               {callId: this.id, cause: e});
        }
        if (!this.transferred) { // not yet, or resuming: kept until the channel works
            if (this.#messages.length >= MAX_QUEUED_MESSAGES)
                throw new WspError('buffer-full', 'too many messages wait for the data channel',
                                   {callId: this.id});
            this.#messages.push(text);
            return;
        }
        const ch = this.channel;
        if (!ch || ch.readyState !== 'open')
            throw new WspError('not-connected', 'the data channel is closed', {callId: this.id});
        if (ch.bufferedAmount > MAX_CHANNEL_BUFFER)
            throw new WspError('buffer-full', 'the data channel is full', {callId: this.id});
        ch.send(text);
    }

    /**
     * Calls `onstats` with `pc.getStats()` every `ms` milliseconds; 0
     * stops.
     *
     * @param {number} ms
     */
    setStatsInterval(ms) {
        const timers = this.#conn._timers;
        if (this.#statsTimer !== null)
            timers.clearTimeout(this.#statsTimer);
        this.#statsTimer = null;
        const generation = ++this.#statsGeneration;
        if (!(ms > 0) || this.state === 'closed')
            return;
        const tick = async () => {
            this.#statsTimer = null;
            const pc = this.pc;
            if (pc && this.#live(generation)) {
                try {
                    const stats = await pc.getStats();
                    if (this.#live(generation))
                        invoke(this, this.onstats, stats);
                } catch (e) {
                    if (this.#live(generation))
                        this.#conn._error(new WspError('webrtc', 'getStats() failed',
                                                       {callId: this.id, cause: e}));
                }
            }
            if (this.#live(generation))
                this.#statsTimer = timers.setTimeout(tick, ms);
        };
        this.#statsTimer = timers.setTimeout(tick, ms);
    }

    /**
     * Whether the stats timer of `generation` should go on.
     *
     * @param {number} generation
     * @returns {boolean}
     */
    #live(generation) {
        return this.state !== 'closed' && generation === this.#statsGeneration;
    }

    /**
     * Creates the RTCPeerConnection with the tracks of `stream`.
     * @internal
     * @param {RTCConfiguration|null|undefined} configuration
     * @param {MediaStream|undefined} stream
     * @throws {WspError} `webrtc`, after ending the call with 500
     */
    _start(configuration, stream) {
        /** @type {RTCPeerConnection} */
        let pc;
        try {
            const PC = this.#conn._RTCPeerConnection;
            pc = new PC(configuration ?? undefined);
            for (const track of stream?.getTracks() ?? [])
                pc.addTrack(track, /** @type {MediaStream} */ (stream));
        } catch (e) {
            this.#end(500, BYE_DESCRIPTIONS[500], this.direction === 'in');
            throw new WspError('webrtc', 'cannot create the RTCPeerConnection', {callId: this.id, cause: e});
        }
        this.pc = pc;
        pc.addEventListener('icecandidate', (e) => this.#localCandidate(e.candidate));
        pc.addEventListener('track', (e) => {
            if (this.state !== 'closed')
                invoke(this, this.ontrack, e.track, e.streams);
        });
        pc.addEventListener('iceconnectionstatechange', () => {
            if (this.state === 'closed')
                return;
            const s = pc.iceConnectionState;
            if ((s === 'connected' || s === 'completed') && this.state === 'connecting')
                this.state = 'connected';
            invoke(this, this.onstatus, s);
            if (pc.connectionState === undefined)
                this.#connectivity();
        });
        pc.addEventListener('connectionstatechange', () => this.#connectivity());
        pc.addEventListener('datachannel', (e) => {
            if (e.channel.label === CHANNEL_LABEL && !this.channel && this.state !== 'closed')
                this.#adopt(e.channel);
        });
        pc.addEventListener('negotiationneeded', () => {
            // The first exchange is driven by accept() and the callee's
            // offer; this event fires again once stable if still needed.
            if (this.#negotiated && this.state !== 'closed')
                this.#enqueue(() => this.#renegotiate());
        });
    }

    /**
     * Sends `ringing`.
     * @internal
     */
    _ring() {
        try {
            this.#conn._send('ringing', null, this.id);
        } catch (e) {
            this.#conn._error(/** @type {WspError} */ (e));
            this.#end(410, 'Connection to the server lost', false);
        }
    }

    /**
     * Ends a call that never got going, without a bye.
     * @internal
     */
    _abort() {
        this.#end(500, BYE_DESCRIPTIONS[500], false);
    }

    /**
     * The socket is gone: calls that are not transferred are over (the
     * server ends them too, and tells the peer 410).
     * @internal
     */
    _socketLost() {
        if (this.state === 'resuming') {
            // The servers end their part; the caller invites again once a
            // socket is open, the callee waits for that invite.
            this.#serverCall = false;
            this.#restarted = false;
            this.#checkResumed();
        } else if (!this.transferred) {
            this.#end(410, 'Connection to the server lost', false);
        }
    }

    /**
     * A socket opened: a resuming caller sends its invite.
     * @internal
     */
    _socketOpened() {
        if (this.state === 'resuming' && this.direction === 'out')
            this.#sendResume();
    }

    /**
     * A resume invite from `callerUri` for this call's id. Taken when this
     * is the callee's side of a transferred (or resuming) call whose peer
     * is that caller: the ICE restart's offer goes out on the socket.
     * @internal
     * @param {string} callerUri
     * @returns {boolean} whether it was taken (else the invite is refused)
     */
    _takeResume(callerUri) {
        if (this.direction !== 'in' || callerUri.toLowerCase() !== this.peer.uri.toLowerCase() ||
            !this.#conn._resume.enabled)
            return false;
        if (this.state === 'transferred')
            this.#startResume(); // the caller noticed the break first
        if (this.state !== 'resuming')
            return false;
        this.#serverCall = true;
        this.#restarted = false;
        this.#described = false;
        const pc = /** @type {RTCPeerConnection} */ (this.pc);
        this.#enqueue(async () => {
            if (pc.signalingState !== 'stable') // a renegotiation of ours: the restart replaces it
                await pc.setLocalDescription({type: 'rollback'});
            await pc.setLocalDescription(await pc.createOffer({iceRestart: true}));
            if (this.state !== 'resuming' || !this.#serverCall)
                return;
            this.#signal('offer', pc.localDescription);
            this.#describedNow();
        });
        return true;
    }

    /**
     * A frame for this call, from the socket or the data channel.
     * @internal
     * @param {Keyword} keyword
     * @param {any} content
     * @param {'socket'|'channel'} via
     */
    _receive(keyword, content, via) {
        if (this.state === 'closed')
            return;
        if (via === 'socket' && !this.#onSocket())
            return; // the servers forgot this call: another call's frame (a refused resume's)
        const handler = Call.#handlers[keyword];
        if (!handler) {
            this.#conn._error(new WspError('bad-frame', `${keyword} is not a frame of a call`,
                                           {callId: this.id}));
            return;
        }
        handler.call(this, content, via);
    }

    /**
     * Whether the servers hold a call of this id that this side is a
     * party of: before both 101s, and while resuming once the resume
     * invite is out (caller) or taken (callee).
     *
     * @returns {boolean}
     */
    #onSocket() {
        return this.state === 'resuming' ? this.#serverCall : !(this.transferred && this.peerTransferred);
    }

    /**
     * What to do with each keyword of a call.
     * @type {Partial<Record<Keyword, (this: Call, content: any, via: 'socket'|'channel') => void>>}
     */
    static #handlers = {
        ringing() {
            if (this.direction === 'out' && this.state === 'inviting') {
                this.state = 'ringing';
                invoke(this, this.onringing);
            }
        },
        offer(description) {
            if (this.direction === 'out' && (this.state === 'inviting' || this.state === 'ringing'))
                this.state = 'connecting'; // the callee's first offer: answered
            this.#enqueue(() => this.#remoteDescription(description));
        },
        answer(description) { this.#enqueue(() => this.#remoteDescription(description)); },
        icecandidate(candidate) { this.#enqueue(() => this.#remoteCandidate(candidate)); },
        bye(bye, via) { this.#bye(bye, via); },
        message(data) { invoke(this, this.onmessage, data); },
    };

    /**
     * Runs signalling work after the work before it: descriptions and
     * candidates are applied in the order they came.
     *
     * @param {() => Promise<void>} task
     * @returns {Promise<void>}
     */
    #enqueue(task) {
        this.#chain = this.#chain
            .then(() => this.state === 'closed' ? undefined : task())
            .catch((e) => this.#webrtcFailed(e, 500));
        return this.#chain;
    }

    /**
     * A WebRTC operation failed: report it and end the call with `code`.
     *
     * @param {unknown} e
     * @param {number} code
     */
    #webrtcFailed(e, code) {
        if (this.state === 'closed')
            return; // closing the RTCPeerConnection fails what was pending
        this.#conn._error(e instanceof WspError ? e :
            new WspError('webrtc', `call ${this.id}: ${e instanceof Error ? e.message : String(e)}`,
                         {callId: this.id, cause: e}));
        this.#end(code, BYE_DESCRIPTIONS[code] ?? '', true);
    }

    /**
     * An offer or answer from the peer (perfect negotiation).
     *
     * @param {RTCSessionDescriptionInit} description
     */
    async #remoteDescription(description) {
        const pc = this.pc;
        if (!pc) {
            this.#conn._error(new WspError('bad-state', `${description.type} before accept()`,
                                           {callId: this.id}));
            return;
        }
        const isOffer = description.type === 'offer';
        const ufrag = iceUfrag(description.sdp);
        if ((ufrag !== null && this.#staleUfrags.has(ufrag)) ||
            (!isOffer && pc.signalingState === 'stable' && this.#staleUfrags.size > 0))
            return; // sent before an ICE restart that replaced it: late on the data channel
        const collision = isOffer && pc.signalingState !== 'stable';
        this.#ignoreOffer = !this.#polite && collision;
        if (this.#ignoreOffer)
            return;
        const previous = iceUfrag(pc.remoteDescription?.sdp);
        try {
            await pc.setRemoteDescription(description);
            if (previous !== null && ufrag !== null && previous !== ufrag)
                this.#staleUfrags.add(previous); // the peer restarted ICE
            if (!isOffer)
                this.#negotiated = true;
            await this.#flushCandidates();
            if (isOffer) {
                await pc.setLocalDescription();
                if (this.state === 'closed')
                    return;
                this.#signal('answer', pc.localDescription);
                this.#negotiated = true;
                this.#describedNow();
            }
            if (this.state === 'resuming' && this.#serverCall) {
                this.#restarted = true; // the callee has our answer, or we sent it
                this.#checkResumed();
            }
        } catch (e) {
            this.#webrtcFailed(e, 488);
        }
    }

    /** Our own offer, for a renegotiation. */
    async #renegotiate() {
        const pc = this.pc;
        if (!pc || pc.signalingState !== 'stable' || this.state === 'resuming')
            return; // negotiationneeded fires again when stable (after the restart)
        await pc.setLocalDescription();
        if (this.state !== 'closed')
            this.#signal('offer', pc.localDescription);
    }

    /**
     * A candidate from the peer: kept until the remote description is set.
     *
     * @param {RTCIceCandidateInit|null} candidate
     */
    async #remoteCandidate(candidate) {
        if (!this.pc || !this.pc.remoteDescription) {
            if (this.#pendingCandidates.length >= MAX_PENDING_CANDIDATES) {
                this.#conn._error(new WspError('buffer-full', 'too many candidates before the description',
                                               {callId: this.id}));
                return;
            }
            this.#pendingCandidates.push(candidate);
            return;
        }
        await this.#addCandidate(candidate);
    }

    async #flushCandidates() {
        for (const candidate of this.#pendingCandidates.splice(0))
            await this.#addCandidate(candidate);
    }

    /** @param {RTCIceCandidateInit|null} candidate */
    async #addCandidate(candidate) {
        const pc = /** @type {RTCPeerConnection} */ (this.pc);
        try {
            await (candidate === null ? pc.addIceCandidate() : pc.addIceCandidate(candidate));
        } catch (e) {
            // Candidates of an offer we ignored (glare), or from before an
            // ICE restart, are expected to fail.
            const stale = candidate?.usernameFragment != null && this.#staleUfrags.has(candidate.usernameFragment);
            if (!this.#ignoreOffer && !stale && this.state !== 'closed')
                this.#conn._error(new WspError('webrtc', 'addIceCandidate failed',
                                               {callId: this.id, cause: e}));
        }
    }

    /**
     * A candidate of ours: sent once our first description is.
     *
     * @param {RTCIceCandidate|null} candidate
     */
    #localCandidate(candidate) {
        if (this.state === 'closed')
            return;
        const init = candidate && typeof candidate.toJSON === 'function' ?
            candidate.toJSON() : candidate;
        if (!this.#described) {
            if (this.#localCandidates.length >= MAX_PENDING_CANDIDATES) {
                this.#conn._error(new WspError('buffer-full', 'too many local candidates',
                                               {callId: this.id}));
                return;
            }
            this.#localCandidates.push(init);
            return;
        }
        this.#trySignal('icecandidate', init);
    }

    /** Our first description is sent: send the candidates that waited. */
    #describedNow() {
        if (this.#described)
            return;
        this.#described = true;
        for (const candidate of this.#localCandidates.splice(0))
            this.#trySignal('icecandidate', candidate);
    }

    /**
     * Sends a signalling frame: on the data channel once transferred, else
     * on the socket.
     *
     * @param {Keyword} keyword
     * @param {unknown} content
     * @throws {WspError} `not-connected`
     */
    #signal(keyword, content) {
        if (this.state === 'resuming' ? this.#serverCall : !this.transferred) {
            this.#conn._send(keyword, content, this.id);
            return;
        }
        const ch = this.channel;
        if (!ch || ch.readyState !== 'open')
            throw new WspError('not-connected', `cannot send ${keyword}: the data channel is closed`,
                               {callId: this.id});
        ch.send(encodeFrame(keyword, content));
    }

    /**
     * @param {Keyword} keyword
     * @param {unknown} content
     */
    #trySignal(keyword, content) {
        try {
            this.#signal(keyword, content);
        } catch (e) {
            this.#conn._error(/** @type {WspError} */ (e));
        }
    }

    /**
     * Takes the data channel `wsp`.
     *
     * @param {RTCDataChannel} ch
     */
    #adopt(ch) {
        this.channel = ch;
        ch.addEventListener('open', () => this.#channelOpen());
        ch.addEventListener('message', (e) => this.#channelMessage(e.data));
        ch.addEventListener('close', () => {
            if (this.state !== 'closed')
                this.#end(410, 'Data channel closed',
                          this.state === 'resuming' ? this.#serverCall : !this.transferred);
        });
        if (ch.readyState === 'open')
            this.#channelOpen(); // a received channel may be open already
    }

    /** The data channel is open: hand signalling over to it (bye 101). */
    #channelOpen() {
        if (this.transferred || this.state === 'closed' || this.state === 'resuming')
            return;
        this.#handOver(true);
    }

    /**
     * Moves signalling onto the data channel: sends bye 101 on the socket
     * (when the servers hold the call), sends the messages that waited,
     * and calls `ontransferred`.
     *
     * @param {boolean} throughServers
     */
    #handOver(throughServers) {
        if (throughServers) {
            try {
                this.#conn._send('bye', {code: 101, description: BYE_DESCRIPTIONS[101]}, this.id);
            } catch (e) {
                // Unreachable in practice: a lost socket ends untransferred
                // calls (and the servers' part of a resume) first. The peer
                // learns of the transfer from our frames.
                this.#conn._error(/** @type {WspError} */ (e));
            }
        }
        this.transferred = true;
        this.state = 'transferred';
        const ch = /** @type {RTCDataChannel} */ (this.channel);
        for (const text of this.#messages.splice(0))
            ch.send(text);
        invoke(this, this.ontransferred);
    }

    /** @param {unknown} data */
    #channelMessage(data) {
        if (this.state === 'closed')
            return;
        if (typeof data !== 'string') {
            this.#conn._error(new WspError('bad-frame', 'binary message on the wsp data channel',
                                           {callId: this.id}));
            return;
        }
        /** @type {Frame} */
        let frame;
        try {
            frame = decodeFrame(data);
        } catch (e) {
            const error = /** @type {WspError} */ (e);
            error.callId = this.id;
            this.#conn._error(error);
            return;
        }
        if (!CHANNEL_KEYWORDS.has(frame.keyword)) {
            this.#conn._error(new WspError('bad-frame', `${frame.keyword} is not allowed on the data channel`,
                                           {callId: this.id}));
            return;
        }
        this._receive(frame.keyword, frame.content, 'channel');
    }

    /**
     * The connection's state changed. A transferred call resumes when it
     * is `failed`, or still `disconnected` after the resume delay; a
     * resuming one goes back to its channel once `connected`.
     */
    #connectivity() {
        const pc = this.pc;
        if (!pc || this.state === 'closed')
            return;
        const s = connectivity(pc);
        const timers = this.#conn._timers;
        if (s === 'connected') {
            if (this.#disconnectTimer !== null)
                timers.clearTimeout(this.#disconnectTimer);
            this.#disconnectTimer = null;
            this.#checkResumed();
            return;
        }
        const settings = this.#conn._resume;
        if (this.state !== 'transferred' || !settings.enabled)
            return;
        if (s === 'failed') {
            this.#startResume();
        } else if (s === 'disconnected' && this.#disconnectTimer === null) {
            this.#disconnectTimer = timers.setTimeout(() => {
                this.#disconnectTimer = null;
                const now = connectivity(pc);
                if (this.state === 'transferred' && (now === 'disconnected' || now === 'failed'))
                    this.#startResume();
            }, settings.delay);
        }
    }

    /** The transferred call's connection broke: find the peer again through the servers. */
    #startResume() {
        const timers = this.#conn._timers;
        if (this.#disconnectTimer !== null)
            timers.clearTimeout(this.#disconnectTimer);
        this.#disconnectTimer = null;
        this.state = 'resuming';
        this.transferred = false;
        this.peerTransferred = false;
        this.#serverCall = false;
        this.#restarted = false;
        this.#retries = 0;
        this.#resumeDeadline = timers.setTimeout(() => {
            this.#resumeDeadline = null;
            if (this.state === 'resuming')
                this.#end(410, 'Could not resume the call', true);
        }, this.#conn._resume.timeout);
        invoke(this, this.onresuming);
        if (this.direction === 'out')
            this.#sendResume();
    }

    /**
     * The caller's resume invite, when the socket is open and no invite
     * or retry is pending; otherwise the socket's opening or the retry
     * timer sends it.
     */
    #sendResume() {
        if (this.state !== 'resuming' || this.#serverCall || this.#retryTimer !== null || !this.#conn._canSend)
            return;
        /** @type {Invitation} */
        const invitation = {caller: {uri: /** @type {string} */ (this.#conn.user)}, callee: {uri: this.peer.uri},
                            resume: true};
        // The call's own trace: both servers log the resume under it.
        const trace = this.traceId ? {traceparent: newTraceParent(this.traceId).traceparent} : undefined;
        try {
            this.#conn._send('invite', invitation, this.id, trace);
        } catch (e) {
            this.#conn._error(/** @type {WspError} */ (e));
            return;
        }
        this.#retries++;
        this.#serverCall = true;
        this.#restarted = false;
        this.#described = false; // our candidates wait for our answer
    }

    /** The resume invite was refused for now: another one after a backoff. */
    #retryResume() {
        if (this.state !== 'resuming' || this.#retryTimer !== null)
            return;
        const delay = Math.min(RESUME_RETRY_CAP_MS, backoffDelay(this.#retries, this.#conn._random));
        this.#retryTimer = this.#conn._timers.setTimeout(() => {
            this.#retryTimer = null;
            this.#sendResume();
        }, delay);
    }

    /** A resuming call whose connection works goes back on its data channel. */
    #checkResumed() {
        const pc = this.pc;
        if (this.state !== 'resuming' || !pc || connectivity(pc) !== 'connected' ||
            this.channel?.readyState !== 'open')
            return;
        if (this.#serverCall && !this.#restarted)
            return; // an ICE restart is being negotiated: it finishes first
        const timers = this.#conn._timers;
        for (const timer of [this.#resumeDeadline, this.#retryTimer]) {
            if (timer !== null)
                timers.clearTimeout(timer);
        }
        this.#resumeDeadline = this.#retryTimer = null;
        const throughServers = this.#serverCall;
        this.#serverCall = false;
        if (!throughServers)
            this.peerTransferred = true; // the servers hold nothing of this call
        this.#handOver(throughServers);
    }

    /**
     * A bye for this call.
     *
     * @param {Bye} bye
     * @param {'socket'|'channel'} via
     */
    #bye(bye, via) {
        const description = bye.description ?? '';
        if (bye.code === 101) {
            if (via === 'socket')
                this.peerTransferred = true;
            return;
        }
        if (via === 'socket' && RESUME_RETRY_CODES.has(bye.code)) {
            if (this.state === 'resuming') {
                // The servers' part of the resume is over, not the call.
                this.#serverCall = false;
                this.#restarted = false;
                if (this.direction === 'out')
                    this.#retryResume();
                this.#checkResumed();
                return;
            }
            if (bye.code === 410 && this.transferred && this.#staleUfrags.size > 0) {
                // A resumed call back on its channel: the peer's socket
                // went before its 101, but a resuming peer keeps its call.
                this.peerTransferred = true;
                return;
            }
        }
        if (via === 'socket' && (bye.code === 400 || bye.code === 481)) {
            // These refuse one frame of ours. Only an invite's refusal, or
            // a 481 for a call still tied to the socket, ends the call.
            const invite = this.direction === 'out' && (this.state === 'inviting' || this.state === 'ringing');
            if (!invite && (bye.code === 400 || this.transferred)) {
                this.#conn._error(new WspError('refused', `the server refused a frame: ${bye.code} ${description}`,
                                               {callId: this.id, byeCode: bye.code}));
                return;
            }
        }
        this.#end(bye.code, description, false);
    }

    /**
     * Ends the call: optionally sends bye `code`, releases everything and
     * calls `onclose` once.
     *
     * @param {number} code
     * @param {string} description
     * @param {boolean} send
     */
    #end(code, description, send) {
        if (this.state === 'closed')
            return;
        if (send) {
            try {
                this.#signal('bye', {code, description});
            } catch (e) {
                this.#conn._error(/** @type {WspError} */ (e));
            }
        }
        const linger = send && this.transferred && this.channel?.readyState === 'open';
        this.state = 'closed';
        const timers = this.#conn._timers;
        for (const timer of [this.#statsTimer, this.#disconnectTimer, this.#resumeDeadline, this.#retryTimer]) {
            if (timer !== null)
                timers.clearTimeout(timer);
        }
        this.#statsTimer = this.#disconnectTimer = this.#resumeDeadline = this.#retryTimer = null;
        this.#statsGeneration++;
        this.#pendingCandidates.length = 0;
        this.#localCandidates.length = 0;
        const undelivered = this.#messages.splice(0).map((text) => JSON.parse(text)[1]);
        this.#conn._forget(this);
        if (undelivered.length > 0)
            this.#conn._error(new WspError('undelivered',
                `${undelivered.length} message(s) given to send() were not delivered: the call ended`,
                {callId: this.id, undelivered}));
        if (linger)
            this.#closeAfterBye();
        else
            this.#release();
        invoke(this, this.onclose, code, description);
    }

    /**
     * Closes the RTCPeerConnection once the peer has closed the channel
     * (it got our bye) or after {@link LINGER_MS}: closing at once could
     * drop the bye.
     */
    #closeAfterBye() {
        const ch = /** @type {RTCDataChannel} */ (this.channel);
        const timers = this.#conn._timers;
        let done = false;
        const release = () => {
            if (done)
                return;
            done = true;
            timers.clearTimeout(timeout);
            this.#release();
        };
        const timeout = timers.setTimeout(release, LINGER_MS);
        ch.addEventListener('close', release);
    }

    #release() {
        this.channel?.close();
        this.pc?.close();
    }
}
