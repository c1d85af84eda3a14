// The official `openai` npm client against the assistant's OpenAI-compatible API on the real stack
// (tests/run.sh starts it; CHAT_BASE_URL and CHAT_TOKEN, a JWT of the stack, come from there): the
// model list, a whole answer, a stream (deltas collected, the raw stream read to its data: [DONE]),
// include_usage, a bad key, a malformed request, and an AbortController that cuts a stream off, after
// which the same client asks again. Each check prints "ok - ..." or "not ok - ..."; the closing line is
// "N passed, N failed", which tests/run.sh counts.
import OpenAI from 'openai';

const base = process.env.CHAT_BASE_URL;
const token = process.env.CHAT_TOKEN;
if (!base || !token) {
  console.log('not ok - CHAT_BASE_URL and CHAT_TOKEN must be set');
  console.log('0 passed, 1 failed');
  process.exit(1);
}

const MODEL = 'seawind-assistant';
const SHORT = 'What is the engine power of the Seawind 250?';
const LONG = 'How do I winterize the engine of my Seawind 280?';
// No retries: a failure must show, not be papered over.
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: token, maxRetries: 0, timeout: 30000 });

let passed = 0;
let failed = 0;
function check(name, cond, detail = '') {
  if (cond) {
    passed++;
    console.log(`ok - ${name}`);
  } else {
    failed++;
    console.log(`not ok - ${name}${detail ? `: ${detail}` : ''}`);
  }
}

async function step(name, fn) {
  try {
    await fn();
  } catch (e) {
    check(name, false, `${e?.constructor?.name}: ${e?.message}`);
  }
}

const ask = (content, extra = {}) => ({ model: MODEL, messages: [{ role: 'user', content }], ...extra });
let whole = null;

await step('models.list', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  check('models.list names the assistant', ids.includes(MODEL), JSON.stringify(ids));
});

await step('a whole answer', async () => {
  const c = await client.chat.completions.create(ask(SHORT));
  whole = c.choices[0].message.content;
  check('chat.completion', c.object === 'chat.completion' && c.model === MODEL && c.id.startsWith('chatcmpl-'));
  check('the answer', c.choices[0].message.role === 'assistant' && whole.length > 0 && c.choices[0].finish_reason === 'stop');
  check('usage', c.usage.prompt_tokens > 0 && c.usage.total_tokens === c.usage.prompt_tokens + c.usage.completion_tokens);
  check('the assistant metadata', !!c.seawind?.agent && Array.isArray(c.seawind?.context?.sources) && !!c.seawind?.session_id,
    JSON.stringify(c.seawind));
});

await step('a stream', async () => {
  const stream = await client.chat.completions.create(ask(SHORT, { stream: true }));
  let text = '';
  let role = null;
  let finish = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    const choice = chunk.choices[0];
    if (chunks === 1) role = choice?.delta?.role;
    text += choice?.delta?.content ?? '';
    if (choice?.finish_reason) finish = choice.finish_reason;
  }
  check('the first delta names the role', role === 'assistant');
  check('the deltas make the whole answer', whole !== null && text === whole, `${text.length} vs ${whole?.length} bytes`);
  check('the stream finishes with stop', finish === 'stop' && chunks > 3, `${finish}, ${chunks} chunks`);
  // The raw stream, as the client received it, ends with the [DONE] event.
  const raw = await (await client.chat.completions.create(ask(SHORT, { stream: true })).asResponse()).text();
  check('the raw stream ends with data: [DONE]', raw.endsWith('data: [DONE]\n\n'), JSON.stringify(raw.slice(-40)));
});

await step('include_usage', async () => {
  const stream = await client.chat.completions.create(ask(SHORT, { stream: true, stream_options: { include_usage: true } }));
  let last = null;
  for await (const chunk of stream) last = chunk;
  check('the usage chunk comes last', last?.choices.length === 0 && last?.usage?.total_tokens > 0, JSON.stringify(last?.usage));
});

// A request the API refuses: the error class and status the client makes of it, and OpenAI's error shape
// (the protocol's code and the field at fault).
async function refused(name, request, ErrorClass, status, code, param) {
  await step(name, async () => {
    try {
      await request();
      check(`${name} is refused`, false, 'it was answered');
    } catch (e) {
      check(`${name}: ${ErrorClass.name} ${status}`, e instanceof ErrorClass && e.status === status,
        `${e?.constructor?.name} ${e?.status}`);
      check(`${name}: code ${code}, param ${param}`, e.code === code && e.param === param, `${e.code} ${e.param}`);
    }
  });
}

const stranger = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'not-a-jwt', maxRetries: 0 });
await refused('a bad key', () => stranger.chat.completions.create(ask(SHORT)), OpenAI.AuthenticationError, 401,
  'INVALID_TOKEN', null);
await refused('a malformed request', () => client.chat.completions.create({ model: MODEL, messages: [] }),
  OpenAI.BadRequestError, 400, 'INVALID_REQUEST', 'messages');

await step('an abort mid-stream', async () => {
  const session = `npm-abort-${Date.now()}-${process.pid}`;
  const ac = new AbortController();
  const stream = await client.chat.completions.create(ask(LONG, { stream: true, session_id: session }), { signal: ac.signal });
  let chunks = 0;
  let aborted = false;
  try {
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta?.content) chunks++;
      if (chunks === 5) ac.abort();
    }
  } catch (e) {
    aborted = e instanceof OpenAI.APIUserAbortError || e?.name === 'AbortError';
    if (!aborted) throw e;
  }
  // (a chunk or two already read may still come out of the client's buffer after the abort)
  check('the stream stopped at the abort', chunks >= 5 && chunks < 40 && (aborted || ac.signal.aborted), `${chunks} chunks`);
  // The same client asks again, and is answered.
  const c = await client.chat.completions.create(ask(SHORT));
  check('the same client is answered after the abort', c.choices[0].message.content === whole);
  // The cut-off answer was cancelled on the server: its turn is stored as such.
  let turn = null;
  for (let i = 0; i < 50 && !turn; i++) {
    const r = await fetch(`${base}/api/v1/sessions/${session}/messages`, { headers: { Authorization: `Bearer ${token}` } });
    if (r.status === 200) turn = (await r.json()).messages[1] ?? null;
    if (!turn) await new Promise((res) => setTimeout(res, 100));
  }
  check('the server cancelled the generation', turn?.metadata?.finish_reason === 'cancelled', JSON.stringify(turn?.metadata));
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
