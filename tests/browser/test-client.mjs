// www/chat-client.js's token refresh and user change, in node against a fake WebSocket (the client takes
// its WebSocket implementation as an option), so every exchange is scripted and nothing needs a browser
// or a server:  node tests/browser/test-client.mjs
//
// Prints one "ok - ..." / "not ok - ..." line per check and a closing "N passed, M failed" line; exits 1
// on any failure.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const ChatWebSocket = require('../../www/chat-client.js');

let passed = 0;
let failed = 0;

class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWebSocket.sockets.push(this);
    setTimeout(() => { this.readyState = 1; if (this.onopen) this.onopen({}); }, 0);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => { if (this.onclose) this.onclose({ code: code || 1000, reason: reason || '', wasClean: true }); }, 0);
  }
  serve(frame) { if (this.onmessage) this.onmessage({ data: JSON.stringify(frame) }); }
}
FakeWebSocket.sockets = [];

const settle = () => new Promise(resolve => setTimeout(resolve, 5));
const alice = { id: 'alice', email: 'alice@example.com', name: 'Alice' };
const assert = (cond, why) => { if (!cond) throw new Error(why); };
const sentTypes = ws => ws.sent.map(f => f.type + (f.token ? ':' + f.token : '')).join(' ');

// A client authenticated as alice with token tok-1 on a fresh fake socket; events are recorded.
async function authenticated(options) {
  FakeWebSocket.sockets = [];
  const c = new ChatWebSocket('ws://test.invalid/ws/chat', 'tok-1', { WebSocket: FakeWebSocket, reconnect: false, ...options });
  const events = [];
  for (const type of ['auth', 'auth_error', 'auth_expiring', 'refresh_error']) c.on(type, d => events.push({ type, ...d }));
  c.connect();
  await settle();
  const ws = FakeWebSocket.sockets[0];
  assert(ws && ws.sent.length === 1 && ws.sent[0].type === 'auth' && ws.sent[0].token === 'tok-1', 'no auth frame at open');
  ws.serve({ type: 'auth_success', message: 'Authentication successful', user: alice });
  assert(c.state === 'authenticated', `state ${c.state}`);
  return { c, ws, events };
}

async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed++;
    console.log(`not ok - ${name}: ${e && e.message || e}`);
  }
}

await check('auth_expiring: refreshToken\'s promised token goes out on the same socket and the answer in flight completes', async () => {
  const { c, ws, events } = await authenticated({ refreshToken: () => Promise.resolve('tok-2') });
  const answer = c.sendMessage('hi');
  ws.serve({ type: 'progress', step: 'starting', message: 'Processing your message...' });
  ws.serve({ type: 'token', token: 'Hel', partial_response: 'Hel' });
  ws.serve({ type: 'auth_expiring', expires_in: 30 });
  await settle();
  assert(sentTypes(ws) === 'auth:tok-1 message auth:tok-2', `sent: ${sentTypes(ws)}`);
  ws.serve({ type: 'auth_success', message: 'Authentication successful', user: alice });
  ws.serve({ type: 'token', token: 'lo', partial_response: 'Hello' });
  ws.serve({ type: 'complete', response: 'Hello', session_id: 's-1', metadata: { finish_reason: 'stop' } });
  const result = await answer;
  assert(result.response === 'Hello', `response ${result.response}`);
  assert(c.state === 'authenticated' && c.token === 'tok-2', `state ${c.state}, token ${c.token}`);
  assert(FakeWebSocket.sockets.length === 1, 'a new socket was opened');
  assert(events.some(e => e.type === 'auth_expiring' && e.expires_in === 30), 'no auth_expiring event');
  // A later reconnect authenticates with the refreshed token.
  c.reconnect();
  await settle();
  const again = FakeWebSocket.sockets[1];
  assert(again && again.sent[0].token === 'tok-2', `reconnected with ${again && again.sent[0] && again.sent[0].token}`);
  c.disconnect();
});

await check('a refreshToken that returns a plain token works, one refresh at a time', async () => {
  let calls = 0;
  const { c, ws } = await authenticated({ refreshToken: () => { calls++; return 'tok-' + (calls + 1); } });
  ws.serve({ type: 'auth_expiring', expires_in: 30 });
  ws.serve({ type: 'auth_expiring', expires_in: 29 }); // while the first refresh is under way
  await settle();
  assert(calls === 1 && sentTypes(ws) === 'auth:tok-1 auth:tok-2', `${calls} calls, sent: ${sentTypes(ws)}`);
  ws.serve({ type: 'auth_success', user: alice });
  ws.serve({ type: 'auth_expiring', expires_in: 30 });
  await settle();
  assert(calls === 2 && sentTypes(ws) === 'auth:tok-1 auth:tok-2 auth:tok-3', `${calls} calls, sent: ${sentTypes(ws)}`);
  c.disconnect();
});

await check('a failing refreshToken is reported and the socket stays authenticated, its answer pending', async () => {
  const { c, ws, events } = await authenticated({ refreshToken: () => Promise.reject(new Error('identity provider down')) });
  let settled = false;
  const answer = c.sendMessage('hi').then(() => { settled = true; }, () => { settled = true; });
  ws.serve({ type: 'auth_expiring', expires_in: 30 });
  await settle();
  assert(sentTypes(ws) === 'auth:tok-1 message', `sent: ${sentTypes(ws)}`);
  assert(events.some(e => e.type === 'refresh_error' && /identity provider down/.test(e.error)), 'no refresh_error');
  assert(c.state === 'authenticated' && !settled, `state ${c.state}, answer settled ${settled}`);
  ws.serve({ type: 'complete', response: 'ok', session_id: 's-1', metadata: {} });
  await answer;
  c.disconnect();
});

await check('a refreshed token the server refuses (another user) is reported; the socket keeps its user', async () => {
  const { c, ws, events } = await authenticated({ refreshToken: () => 'tok-of-bob' });
  let settled = false;
  c.sendMessage('hi').then(() => { settled = true; }, () => { settled = true; });
  ws.serve({ type: 'auth_expiring', expires_in: 30 });
  await settle();
  ws.serve({ type: 'auth_error', message: 'The token is for another user', code: 'USER_MISMATCH' });
  await settle();
  assert(events.some(e => e.type === 'refresh_error' && e.code === 'USER_MISMATCH'), 'no refresh_error');
  assert(c.state === 'authenticated' && c.user && c.user.id === 'alice', `state ${c.state}`);
  assert(!settled && FakeWebSocket.sockets.length === 1, 'the answer in flight was dropped');
  c.disconnect();
});

await check('without refreshToken, auth_expiring is only an event', async () => {
  const { c, ws, events } = await authenticated({});
  ws.serve({ type: 'auth_expiring', expires_in: 12 });
  await settle();
  assert(sentTypes(ws) === 'auth:tok-1', `sent: ${sentTypes(ws)}`);
  assert(events.some(e => e.type === 'auth_expiring' && e.expires_in === 12), 'no auth_expiring event');
  assert(c.state === 'authenticated', `state ${c.state}`);
  c.disconnect();
});

await check('setToken with another user\'s token: refused on the socket, so the client reconnects with it', async () => {
  const { c, ws } = await authenticated({});
  c.setToken('tok-of-bob');
  assert(sentTypes(ws) === 'auth:tok-1 auth:tok-of-bob', `sent: ${sentTypes(ws)}`);
  ws.serve({ type: 'auth_error', message: 'The token is for another user', code: 'USER_MISMATCH' });
  await settle();
  const next = FakeWebSocket.sockets[1];
  assert(ws.readyState === 3 && next && sentTypes(next) === 'auth:tok-of-bob', `new socket sent: ${next && sentTypes(next)}`);
  next.serve({ type: 'auth_success', user: { id: 'bob' } });
  assert(c.state === 'authenticated' && c.user.id === 'bob', `state ${c.state}`);
  c.disconnect();
});

await check('setToken with a bad token behaves as before: auth_error, not authenticated', async () => {
  const { c, ws, events } = await authenticated({});
  c.setToken('garbage');
  ws.serve({ type: 'auth_error', message: 'Invalid token', code: 'INVALID_TOKEN' });
  assert(events.some(e => e.type === 'auth_error' && e.code === 'INVALID_TOKEN'), 'no auth_error event with its code');
  assert(c.state === 'open' && FakeWebSocket.sockets.length === 1, `state ${c.state}`);
  c.disconnect();
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
