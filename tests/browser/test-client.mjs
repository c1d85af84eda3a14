// www/chat-client.js's token refresh, user change and recovery of a message dropped before its answer
// began, in node against a fake WebSocket (the client takes its WebSocket implementation as an option),
// so every exchange is scripted and nothing needs a browser or a server:  node tests/browser/test-client.mjs
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

// ---- a message whose answer had not begun to arrive when its socket closed ----

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const reconnecting = { reconnect: true, minBackoffMs: 1, maxBackoffMs: 2 };

// Drops socket `ws` as a network would (code 1006), lets the client reconnect and authenticates the new
// socket; returns it with the resume frame the client sent on it. whileDown() runs between the two.
async function dropAndResume(ws, whileDown) {
  const before = FakeWebSocket.sockets.length;
  ws.readyState = 3;
  ws.onclose({ code: 1006, reason: '', wasClean: false });
  if (whileDown) whileDown();
  for (let i = 0; i < 50 && FakeWebSocket.sockets.length === before; i++) await settle();
  await settle();
  const next = FakeWebSocket.sockets[before];
  assert(next && next.sent.length === 1 && next.sent[0].type === 'auth', `after the drop: ${next && sentTypes(next)}`);
  next.serve({ type: 'auth_success', user: alice });
  const resume = next.sent[1];
  assert(resume && resume.type === 'resume', `no resume after the reconnect: ${sentTypes(next)}`);
  return { next, resume };
}

// Records how a promise settles: {state: 'pending' | 'resolved' | 'rejected', value}.
function watch(promise) {
  const w = { state: 'pending', value: null };
  promise.then(v => { w.state = 'resolved'; w.value = v; }, e => { w.state = 'rejected'; w.value = e; });
  return w;
}

// A conversation with one completed answer ('a-1'), so the client has a cursor in it.
async function withOneAnswer() {
  const t = await authenticated(reconnecting);
  const first = t.c.sendMessage('first', { sessionId: 's-1' });
  t.ws.serve({ type: 'progress', step: 'starting', message: 'm', session_id: 's-1', answer_id: 'a-1' });
  t.ws.serve({ type: 'complete', response: 'one', session_id: 's-1', answer_id: 'a-1', seq: 2, metadata: {} });
  await first;
  return t;
}

await check('a new conversation\'s id is chosen by the client: a random UUID in the message frame', async () => {
  const { c, ws } = await authenticated({});
  watch(c.sendMessage('hi'));
  watch(c.sendMessage('and a new one', { sessionId: null }));
  const [a, b] = ws.sent.slice(1);
  assert(UUID.test(a.session_id) && UUID.test(b.session_id) && a.session_id !== b.session_id,
    `session ids ${a.session_id}, ${b.session_id}`);
  c.disconnect();
});

await check('dropped before its answer began: the resume finds the answer in flight and the promise gets all of it', async () => {
  const { c, ws } = await authenticated(reconnecting);
  const answer = watch(c.sendMessage('What does E42 mean?'));
  const sid = ws.sent[1].session_id;
  const late = watch(c.sendMessage('queued behind it')); // the server forgets waiting messages: lost
  const { next, resume } = await dropAndResume(ws);
  assert(resume.session_id === sid && !resume.answer_id && !resume.last_seq, `resume ${JSON.stringify(resume)}`);
  assert(answer.state === 'pending', `the message was settled at the drop: ${answer.state} ${answer.value}`);
  assert(late.state === 'rejected' && late.value.code === 'CONNECTION_LOST', `the queued message: ${late.state}`);
  next.serve({ type: 'resumed', session_id: sid, in_flight: true, complete_follows: true, answer_id: 'a-9', seq: 3 });
  next.serve({ type: 'token', token: 'E42 is ', partial_response: 'E42 is ', seq: 3, session_id: sid });
  next.serve({ type: 'token', token: 'water', partial_response: 'E42 is water', seq: 4, session_id: sid });
  next.serve({ type: 'complete', response: 'E42 is water', session_id: sid, answer_id: 'a-9', seq: 5, metadata: {} });
  await settle();
  assert(answer.state === 'resolved' && answer.value.response === 'E42 is water' && answer.value.answer_id === 'a-9',
    `answer ${answer.state} ${JSON.stringify(answer.value && answer.value.response)}`);
  c.disconnect();
});

await check('dropped before its answer began, in a conversation with answers: a newer answer is ours, the last one seen is not', async () => {
  for (const [held, follows, want] of [['a-2', true, 'resolved'], ['a-1', false, 'rejected'], ['a-1', true, 'rejected'], [null, false, 'rejected']]) {
    const { c, ws } = await withOneAnswer();
    const answer = watch(c.sendMessage('second'));
    let later; // asked while the socket is down: it goes out after the resume
    const { next, resume } = await dropAndResume(ws, () => { later = watch(c.sendMessage('third')); });
    assert(resume.session_id === 's-1' && resume.answer_id === 'a-1' && resume.last_seq === 2, `resume ${JSON.stringify(resume)}`);
    assert(sentTypes(next) === 'auth:tok-1 resume message', `sent after the drop: ${sentTypes(next)}`);
    const resumed = { type: 'resumed', session_id: 's-1', in_flight: follows, complete_follows: follows };
    if (held) Object.assign(resumed, { answer_id: held, seq: 2 });
    next.serve(resumed);
    if (follows) next.serve({ type: 'complete', response: 'two', session_id: 's-1', answer_id: held, seq: 3, metadata: {} });
    await settle();
    const how = `held ${held}, complete_follows ${follows}`;
    assert(answer.state === want, `${how}: ${answer.state}, want ${want}`);
    if (want === 'rejected') assert(answer.value.code === 'CONNECTION_LOST', `${how}: code ${answer.value.code}`);
    else assert(answer.value.response === 'two', `${how}: response ${answer.value.response}`);
    // the message asked meanwhile gets its own answer, never the resumed one
    assert(later.state === 'pending', `${how}: the next message settled early: ${later.value && later.value.response}`);
    next.serve({ type: 'progress', step: 'starting', message: 'm', session_id: 's-1', answer_id: 'a-3' });
    next.serve({ type: 'complete', response: 'three', session_id: 's-1', answer_id: 'a-3', seq: 2, metadata: {} });
    await settle();
    assert(later.state === 'resolved' && later.value.response === 'three', `${how}: the next message: ${later.state}`);
    c.disconnect();
  }
});

await check('a new conversation\'s message the server never took: SESSION_FORBIDDEN to the resume is CONNECTION_LOST to it', async () => {
  const { c, ws } = await authenticated(reconnecting);
  const answer = watch(c.sendMessage('hello'));
  const { next } = await dropAndResume(ws);
  next.serve({ type: 'error', error: 'Session not found', code: 'SESSION_FORBIDDEN' });
  await settle();
  assert(answer.state === 'rejected' && answer.value.code === 'CONNECTION_LOST', `${answer.state} ${answer.value && answer.value.code}`);
  c.disconnect();
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
