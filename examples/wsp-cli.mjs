// A WSP socket on the command line: prints every frame it receives and
// sends every line you type (one JSON frame per line).
//
//   node examples/wsp-cli.mjs URL TOKEN
//
// Node 22 has WebSocket built in; on Node 20 add --experimental-websocket.
// For the development certificates on 127.0.0.1, set
// NODE_TLS_REJECT_UNAUTHORIZED=0 (development only: it turns off
// certificate checks for this process).
import { createInterface } from 'node:readline';

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  console.error('usage: node examples/wsp-cli.mjs URL TOKEN');
  process.exit(2);
}
const ws = new WebSocket(`${url}?access_token=${encodeURIComponent(token)}`, 'wsp-1.0');
const early = []; // lines typed before the socket opened
ws.onopen = () => {
  console.error(`connected to ${url}; type frames, one per line`);
  for (const line of early.splice(0)) ws.send(line);
};
ws.onmessage = (e) => console.log(`<- ${e.data}`);
ws.onclose = (e) => {
  console.error(`closed ${e.code} ${e.reason}`);
  process.exit(0);
};
ws.onerror = () => console.error('socket error (refused token? wrong URL?)');
createInterface({ input: process.stdin }).on('line', (line) => {
  const frame = line.trim();
  if (!frame) return;
  if (ws.readyState === WebSocket.OPEN) ws.send(frame);
  else early.push(frame);
});
