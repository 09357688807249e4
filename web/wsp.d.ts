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
export declare const SUBPROTOCOL = "wsp-1.0";
/** The label of the signalling data channel. */
export declare const CHANNEL_LABEL = "wsp";
/** Remote candidates kept per call until its remote description is set. */
export declare const MAX_PENDING_CANDIDATES = 64;
/** Application messages queued per call until its data channel opens. */
export declare const MAX_QUEUED_MESSAGES = 64;
/** Bytes waiting in a data channel above which {@link Call#send} refuses. */
export declare const MAX_CHANNEL_BUFFER: number;
/** The first reconnection delay's ceiling, in ms (before jitter). */
export declare const BACKOFF_BASE_MS = 1000;
/** The largest reconnection delay, in ms. */
export declare const BACKOFF_CAP_MS = 30000;
/** How long the session request and the socket may take, in ms. */
export declare const CONNECT_TIMEOUT_MS = 15000;
/** How long a hung-up transferred call waits for its bye to leave, in ms. */
export declare const LINGER_MS = 1000;
/**
 * How long a transferred call's connection may stay `disconnected` before
 * the call is resumed through the servers, in ms (`failed` resumes at once).
 */
export declare const RESUME_DELAY_MS = 2000;
/** How long a call may stay `resuming` before both sides give up, in ms. */
export declare const RESUME_TIMEOUT_MS = 30000;
/** The largest delay between two resume invites of the caller, in ms. */
export declare const RESUME_RETRY_CAP_MS = 5000;
export type Keyword = 'invite' | 'ringing' | 'offer' | 'answer' | 'icecandidate' | 'bye' | 'message';
export type FrameOptions = {
    call?: string;
    traceparent?: string;
};
export type Frame = {
    keyword: Keyword;
    /**
     * - validated for its keyword; `null` when absent
     */
    content: any;
    options: FrameOptions | null;
};
export type Party = {
    /**
     * - an address, `user@domain`
     */
    uri: string;
    /**
     * - a display name
     */
    name?: string;
};
export type Invitation = {
    caller: Party;
    callee: Party;
    resume?: boolean;
};
export type Bye = {
    code: number;
    description?: string;
};
export type CallState = 'inviting' | 'ringing' | 'connecting' | 'connected' | 'transferred' | 'resuming' | 'closed';
export type ConnectionState = 'new' | 'connecting' | 'connected' | 'reconnecting' | 'closed';
export type WspErrorCode = 'missing-token' | 'invalid-token' | 'token-expired' | 'wrong-domain' | 'unknown-user' | 'connect-failed' | 'bad-url' | 'closed' | 'not-connected' | 'bad-state' | 'bad-frame' | 'unknown-call' | 'refused' | 'socket-closed' | 'buffer-full' | 'bad-message' | 'undelivered' | 'webrtc';
export type Timers = {
    setTimeout: (callback: () => void, ms: number) => unknown;
    clearTimeout: (handle: unknown) => void;
};
export type WspConnectionOptions = {
    WebSocket?: typeof WebSocket;
    RTCPeerConnection?: typeof RTCPeerConnection;
    fetch?: typeof fetch;
    timers?: Timers;
    /**
     * - uniform in [0, 1), for the jitter
     */
    random?: () => number;
    /**
     * - the session endpoint, resolved
     * against the socket URL; `null` never asks it; by default `session`
     * (`wss://host/wsp` gives `https://host/session`)
     */
    sessionUrl?: string | null;
    /**
     * - ms, for the session request and
     * for the socket to open; default {@link CONNECT_TIMEOUT_MS}
     */
    connectTimeout?: number;
    /**
     * - whether transferred calls whose
     * connection breaks are resumed through the servers (state `resuming`);
     * default true. When false, such a call stays `transferred` and the
     * application decides (`onstatus` reports `disconnected`, `failed`)
     */
    resume?: boolean;
    /**
     * - ms a connection may stay
     * `disconnected` before its call is resumed; default
     * {@link RESUME_DELAY_MS}
     */
    resumeDelay?: number;
    /**
     * - ms a call may stay `resuming`;
     * default {@link RESUME_TIMEOUT_MS}
     */
    resumeTimeout?: number;
};
export type TokenSource = string | (() => string | Promise<string>);
export type CallOptions = {
    /**
     * - local tracks to send
     */
    stream?: MediaStream;
    /**
     * - our display name, sent as `caller.name`
     */
    name?: string;
    /**
     * - overrides
     * {@link WspConnection#rtcConfiguration} for this call
     */
    rtcConfiguration?: RTCConfiguration;
};
export type AcceptOptions = {
    /**
     * - local tracks to send
     */
    stream?: MediaStream;
    /**
     * - overrides
     * {@link WspConnection#rtcConfiguration} for this call
     */
    rtcConfiguration?: RTCConfiguration;
};
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
export declare class WspError extends Error {
    /** @type {WspErrorCode} */
    code: WspErrorCode;
    /**
     * The HTTP status of a refused token.
     * @type {number|undefined}
     */
    status: number | undefined;
    /**
     * The WebSocket close code that reported the error.
     * @type {number|undefined}
     */
    closeCode: number | undefined;
    /**
     * The bye code that reported the error.
     * @type {number|undefined}
     */
    byeCode: number | undefined;
    /**
     * The id of the call the error is about.
     * @type {string|undefined}
     */
    callId: string | undefined;
    /**
     * The messages of `send()` that were not delivered (`undelivered`).
     * @type {any[]|undefined}
     */
    undelivered: any[] | undefined;
    /**
     * @param {WspErrorCode} code
     * @param {string} message
     * @param {{status?: number, closeCode?: number, byeCode?: number, callId?: string, cause?: unknown, undelivered?: any[]}} [details]
     */
    constructor(code: WspErrorCode, message: string, details?: {
        status?: number;
        closeCode?: number;
        byeCode?: number;
        callId?: string;
        cause?: unknown;
        undelivered?: any[];
    });
}
/**
 * Encodes a frame as the JSON text of `[keyword, content, options]`;
 * trailing absent parts are left out (`["message", 1]`).
 *
 * @param {Keyword} keyword
 * @param {unknown} [content]
 * @param {FrameOptions|null} [options]
 * @returns {string}
 */
export declare function encodeFrame(keyword: Keyword, content?: unknown, options?: FrameOptions | null): string;
/**
 * Decodes the JSON text of a frame and checks its content for its keyword.
 *
 * @param {string} text
 * @returns {Frame}
 * @throws {WspError} with code `bad-frame`
 */
export declare function decodeFrame(text: string): Frame;
/**
 * The user address in a JWT's `sub` claim, lowercased, or null when the
 * token cannot be read. The token is not verified: the server does that.
 *
 * @param {string} token
 * @returns {string|null}
 */
export declare function tokenSubject(token: string): string | null;
/**
 * The delay before reconnection attempt `attempt` (1, 2, ...): exponential
 * with "equal jitter", between half and all of
 * `min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2^(attempt-1))`.
 *
 * @param {number} attempt
 * @param {() => number} [random]
 * @returns {number} ms
 */
export declare function backoffDelay(attempt: number, random?: () => number): number;
/**
 * A fresh W3C trace context for a call this page places: a random trace
 * id (or `traceId`, to continue a call's trace) and span id, flags `00`
 * (the page records nothing itself).
 *
 * @param {string} [traceId] - 32 lowercase hex digits
 * @returns {{traceId: string, traceparent: string}}
 */
export declare function newTraceParent(traceId?: string): {
    traceId: string;
    traceparent: string;
};
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
export declare class WspConnection {
    #private;
    /**
     * Called when a socket opens: after `connect()` and after every
     * successful reconnection.
     * @type {((this: WspConnection) => void) | null}
     */
    onconnected: ((this: WspConnection) => void) | null;
    /**
     * Called once when the connection ends for good, if `connect()` had
     * resolved: after `close()` (1000, 'Closed by client'), or when a
     * reconnection finds the token refused (1006 and the server's
     * description; `onerror` has had the WspError just before). Socket
     * losses that are retried call `onreconnecting` instead.
     * @type {((this: WspConnection, code: number, reason: string) => void) | null}
     */
    onclose: ((this: WspConnection, code: number, reason: string) => void) | null;
    /**
     * Called with every error that no promise reports (protocol errors,
     * refused frames, failures in calls). Without it, errors go to
     * `console.error`.
     * @type {((this: WspConnection, error: WspError) => void) | null}
     */
    onerror: ((this: WspConnection, error: WspError) => void) | null;
    /**
     * Called with each incoming call, once `ringing` has been sent. Call
     * `call.accept()` or `call.decline()`. Without it, invites are declined
     * with 486 (Busy), which leaves the caller's other devices ringing.
     * @type {((this: WspConnection, call: Call) => void) | null}
     */
    onincoming: ((this: WspConnection, call: Call) => void) | null;
    /**
     * Called when the socket was lost (or a reconnection failed) and
     * attempt number `attempt` (1, 2, ...) is made in `delayMs` ms.
     * @type {((this: WspConnection, attempt: number, delayMs: number) => void) | null}
     */
    onreconnecting: ((this: WspConnection, attempt: number, delayMs: number) => void) | null;
    /**
     * Our own address: the `sub` claim of the token, read (not verified)
     * by `connect()`, then as `GET /session` names it.
     * @type {string|null}
     */
    user: string | null;
    /**
     * The RTCConfiguration of new calls (ICE servers...), unless a call is
     * given its own (`options.rtcConfiguration` of `call()` or `accept()`).
     * The application may set it. Otherwise it is filled with the ICE
     * servers of `GET /session`, refreshed before every socket (the
     * server's value replaces only null or an earlier server value).
     * @type {RTCConfiguration|null}
     */
    rtcConfiguration: RTCConfiguration | null;
    /** @type {ConnectionState} */
    state: ConnectionState;
    /**
     * The calls that are not closed, by id, including transferred ones.
     * @type {Map<string, Call>}
     */
    calls: Map<string, Call>;
    /**
     * The current socket, when one is open or opening.
     * @type {WebSocket|null}
     */
    socket: WebSocket | null;
    /**
     * @param {WspConnectionOptions} [options]
     */
    constructor(options?: WspConnectionOptions);
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
    connect(url: string, token: TokenSource): Promise<void>;
    /**
     * Closes the connection for good: stops reconnecting, hangs up every
     * call that is not transferred (bye 200; a ringing incoming call gets
     * 480, so that the caller's other devices go on ringing), closes the
     * socket, and calls `onclose(1000, ...)`. Transferred calls go on
     * (a resuming call is hung up: it cannot resume without a socket). A
     * pending `connect()` rejects with `closed` instead.
     */
    close(): void;
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
    call(uri: string, options?: CallOptions): Call;
}
/**
 * One call, incoming or outgoing. Created by {@link WspConnection#call} or
 * handed to `onincoming`; never constructed by the application.
 */
export declare class Call {
    #private;
    /**
     * Called when a device of the callee rings (outgoing calls).
     * @type {((this: Call) => void) | null}
     */
    onringing: ((this: Call) => void) | null;
    /**
     * Called with each remote track (RTCPeerConnection `track` events).
     * @type {((this: Call, track: MediaStreamTrack, streams: readonly MediaStream[]) => void) | null}
     */
    ontrack: ((this: Call, track: MediaStreamTrack, streams: readonly MediaStream[]) => void) | null;
    /**
     * Called with each new ICE connection state. `connected` and
     * `completed` mean media can flow; `disconnected` may recover. A
     * transferred call whose connection stays `disconnected` or goes
     * `failed` is resumed by the library (state `resuming`), unless the
     * connection option `resume` is false: the application then decides,
     * and after `failed` should hang up.
     * @type {((this: Call, state: RTCIceConnectionState) => void) | null}
     */
    onstatus: ((this: Call, state: RTCIceConnectionState) => void) | null;
    /**
     * Called when this side has moved its signalling onto the data channel
     * (state `transferred`): once after the call is set up, and again after
     * each successful resume.
     * @type {((this: Call) => void) | null}
     */
    ontransferred: ((this: Call) => void) | null;
    /**
     * Called when a transferred call's connection broke and the call goes
     * `resuming`: its media and messages wait until it is `transferred`
     * again (`ontransferred`) or closed with 410 (`onclose`).
     * @type {((this: Call) => void) | null}
     */
    onresuming: ((this: Call) => void) | null;
    /**
     * Called with each application message from the peer's `send()`.
     * @type {((this: Call, data: any) => void) | null}
     */
    onmessage: ((this: Call, data: any) => void) | null;
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
    onclose: ((this: Call, code: number, description: string) => void) | null;
    /**
     * Called with the RTCStatsReport every `setStatsInterval()` ms.
     * @type {((this: Call, stats: RTCStatsReport) => void) | null}
     */
    onstats: ((this: Call, stats: RTCStatsReport) => void) | null;
    /** @type {string} */
    id: string;
    /**
     * The call's W3C trace id (32 hex digits): for an outgoing call the
     * one this page sent, for an incoming one the one the server sent
     * with the invite. Both servers of a call between two domains log it,
     * so a "report a problem" dialog can show it. `null` when an incoming
     * invite had none.
     * @type {string|null}
     */
    traceId: string | null;
    /** @type {'in'|'out'} */
    direction: 'in' | 'out';
    /**
     * The other side: the callee of an outgoing call (as dialled), the
     * caller of an incoming one (as its invite said).
     * @type {Party}
     */
    peer: Party;
    /**
     * The RTCPeerConnection. For an incoming call it is created by
     * `accept()` and null before.
     * @type {RTCPeerConnection|null}
     */
    pc: RTCPeerConnection | null;
    /**
     * The signalling data channel `wsp`, once it exists.
     * @type {RTCDataChannel|null}
     */
    channel: RTCDataChannel | null;
    /** @type {CallState} */
    state: CallState;
    /**
     * Whether this side has sent its bye 101 (state `transferred`, or
     * `closed` after it); false again while `resuming`.
     * @type {boolean}
     */
    transferred: boolean;
    /**
     * Whether the peer's bye 101 has arrived.
     * @type {boolean}
     */
    peerTransferred: boolean;
    /**
     * A place for the application's own data.
     * @type {Record<string, unknown>}
     */
    userdata: Record<string, unknown>;
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
    accept(options?: AcceptOptions): Promise<void>;
    /**
     * Declines an incoming ringing call: sends bye `code` (603, Declined,
     * ends the call for every device of ours; 486, Busy, only for this
     * one) and closes the call.
     *
     * @param {number} [code]
     * @throws {WspError} `bad-state` unless incoming and ringing, or when
     *   the code is not 300-699
     */
    decline(code?: number): void;
    /**
     * Ends the call: sends bye 200 (on the data channel once transferred,
     * else on the socket) and closes it. On a ringing incoming call it is
     * `decline()`. Does nothing on a closed call.
     */
    hangup(): void;
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
    send(data: any): void;
    /**
     * Calls `onstats` with `pc.getStats()` every `ms` milliseconds; 0
     * stops.
     *
     * @param {number} ms
     */
    setStatsInterval(ms: number): void;
}
