// The demo page: sign in, call an address, answer, see and hear each
// other, hang up. Everything about WSP is in wsp.js; this file only wires
// the page to it.
import { WspConnection } from './wsp.js';

const $ = (id) => /** @type {any} */ (document.getElementById(id));

/** What each bye code means to the person using the page. */
const WORDS = {
  101: 'transferred to data channel',
  200: 'ended',
  400: 'refused: bad request',
  403: 'refused by the server',
  404: 'no such user',
  408: 'no answer',
  410: 'connection lost',
  480: 'user offline',
  481: 'call unknown to the server',
  486: 'busy',
  487: 'cancelled',
  502: "their server answered wrongly",
  503: 'server unavailable',
  504: "their server could not be reached",
  603: 'declined',
  604: 'unknown domain',
};

const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/wsp`;
const conn = new WspConnection();
/** @type {any} */ let call = null;
/** @type {MediaStream | null} */ let localStream = null;

function setCallState(words) {
  $('call-state').textContent = words;
}

function setConnState(words) {
  $('conn-state').textContent = words;
}

async function media() {
  if (!localStream) {
    localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    $('local-video').srcObject = localStream;
  }
  return localStream;
}

function showCall(active) {
  $('hangup').hidden = !active;
  $('call').disabled = active;
  $('message-form').hidden = !active;
}

function endOfCall(code, description) {
  let words = WORDS[code] ?? `ended (${code})`;
  if (code === 200 && description) words = description.toLowerCase();
  setCallState(words);
  $('incoming').hidden = true;
  $('remote-video').srcObject = null;
  showCall(false);
  call = null;
}

/** Wires a call's callbacks to the page. */
function follow(c) {
  call = c;
  // An incoming call shows its controls once accepted.
  showCall(c.direction === 'out');
  $('remote-label').textContent = c.peer.name || c.peer.uri;
  // The id both servers log the call under; kept shown after the call.
  $('trace-id').textContent = c.traceId ?? '';
  $('trace-line').hidden = !c.traceId;
  c.onringing = () => setCallState('ringing');
  c.ontrack = (_track, streams) => {
    if (streams[0]) $('remote-video').srcObject = streams[0];
  };
  c.onstatus = (s) => {
    if (s === 'connected' || s === 'completed') {
      if ($('call-state').textContent !== WORDS[101]) setCallState('connected');
    } else if (s === 'disconnected' || s === 'failed') {
      setCallState(`media ${s}`);
    }
  };
  c.ontransferred = () => setCallState(WORDS[101]);
  c.onresuming = () => setCallState('network changed: reconnecting through the servers…');
  c.onmessage = (data) => {
    const li = document.createElement('li');
    li.textContent = `${c.peer.uri}: ${data}`;
    $('messages').append(li);
  };
  c.onclose = (code, description) => endOfCall(code, description);
}

conn.onconnected = () => setConnState('connected');
conn.onreconnecting = (attempt, delayMs) =>
  setConnState(`lost; reconnecting in ${Math.round(delayMs / 1000)} s (attempt ${attempt})`);
conn.onclose = (code, reason) => setConnState(`closed (${code}${reason ? `: ${reason}` : ''})`);
conn.onerror = (e) => console.warn('wsp error', e);
conn.onincoming = (c) => {
  if (call) {
    c.decline(486);
    return;
  }
  follow(c);
  setCallState('incoming call');
  $('incoming-from').textContent = c.peer.name ? `${c.peer.name} <${c.peer.uri}>` : c.peer.uri;
  $('incoming').hidden = false;
};

async function start(token) {
  // ICE servers (TURN credentials) come from the server on every
  // (re)connection, through GET /session: nothing to set here.
  await conn.connect(wsUrl, token);
  sessionStorage.setItem('wsp-token', token);
  $('signin').hidden = true;
  $('phone').hidden = false;
  $('me').textContent = conn.user;
  $('me').hidden = false;
  $('signout').hidden = false;
}

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('signin-error').textContent = '';
  try {
    const r = await fetch('/token', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user: $('login-user').value, password: $('login-password').value }),
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      $('signin-error').textContent =
        r.status === 404
          ? 'This server has no user accounts: use a token from `wspd token`.'
          : body.description || `sign-in refused (${r.status})`;
      return;
    }
    await start(body.token);
  } catch (err) {
    $('signin-error').textContent = `cannot sign in: ${err.message ?? err}`;
  }
});

$('token-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('signin-error').textContent = '';
  try {
    await start($('token').value.trim());
  } catch (err) {
    $('signin-error').textContent = `cannot connect: ${err.message ?? err}`;
  }
});

$('call-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  if (call) return;
  setCallState('calling…');
  $('messages').replaceChildren();
  try {
    const c = conn.call($('callee').value.trim(), { stream: await media() });
    follow(c);
  } catch (err) {
    setCallState(`cannot call: ${err.message ?? err}`);
  }
});

$('accept').addEventListener('click', async () => {
  $('incoming').hidden = true;
  setCallState('connecting');
  $('messages').replaceChildren();
  const c = call;
  const stream = await media();
  // The caller may have hung up while the camera was starting.
  if (call !== c || c.state === 'closed') return;
  showCall(true);
  await c.accept({ stream });
});

// The call's onclose reports our own decline and hang-up too.
$('decline').addEventListener('click', () => {
  $('incoming').hidden = true;
  call.decline();
});

$('hangup').addEventListener('click', () => call?.hangup());

$('message-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('message').value;
  if (!call || !text) return;
  call.send(text);
  const li = document.createElement('li');
  li.textContent = `you: ${text}`;
  $('messages').append(li);
  $('message').value = '';
});

$('signout').addEventListener('click', () => {
  sessionStorage.removeItem('wsp-token');
  conn.close();
  location.reload();
});

const saved = sessionStorage.getItem('wsp-token');
if (saved) start(saved).catch(() => sessionStorage.removeItem('wsp-token'));
