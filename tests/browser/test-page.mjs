// End-to-end test of the /ws/test page in a real browser (Debian's Chromium driven by playwright-core).
//
//   (cd tests/browser && npm ci)          # once; needs Debian's chromium package (/usr/bin/chromium)
//   CHAT_BASE_URL=http://127.0.0.1:18000 CHAT_TOKEN=<a valid JWT, e.g. from make token> \
//     CHAT_SCREENSHOT=/tmp/ws-test.png node tests/browser/test-page.mjs
//
// Prints one "ok - ..." / "not ok - ..." line per check and a closing "N passed, M failed" line;
// exits 1 on any failure. A global timeout makes sure it never hangs.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const BASE = (process.env.CHAT_BASE_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');
const TOKEN = process.env.CHAT_TOKEN || '';
const SHOT = process.env.CHAT_SCREENSHOT || path.join(os.tmpdir(), 'ws-test.png');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const QUESTION = 'What is the engine power of the Seawind 250?';
const STEPS = ['starting', 'agent_routing', 'rag_retrieval', 'generating'];
const GLOBAL_TIMEOUT_MS = 60_000;

let passed = 0;
let failed = 0;
let broken = null; // set when a check fails in a way that makes the following ones meaningless

function ok(name) { passed++; console.log(`ok - ${name}`); }
function notOk(name, why) { failed++; console.log(`not ok - ${name}${why ? ': ' + why : ''}`); }
function summary() { console.log(`${passed} passed, ${failed} failed`); }

// Runs one check. fn throws (or returns a string) to fail; a failed check with
// fatal=true skips (and fails) the checks after it, which depend on it.
async function check(name, fn, { fatal = true } = {}) {
  if (broken) { notOk(name, `not run: "${broken}" failed`); return; }
  try {
    const why = await fn();
    if (typeof why === 'string' && why) throw new Error(why);
    ok(name);
  } catch (e) {
    notOk(name, String(e && e.message || e).split('\n')[0]);
    if (fatal) broken = name;
  }
}

// Runs in the page: records the order in which steps get `active`/`done` and #answer's length over time.
function installRecorder(steps) {
  const rec = window.__rec = { active: [], done: [], lengths: [], t0: performance.now() };
  const stepsEl = document.querySelector('#steps');
  const seen = { active: new Set(), done: new Set() };
  const scan = () => {
    for (const li of stepsEl.querySelectorAll('[data-step]')) {
      const s = li.getAttribute('data-step');
      for (const cls of ['active', 'done']) {
        if (li.classList.contains(cls) && !seen[cls].has(s) && steps.includes(s)) { seen[cls].add(s); rec[cls].push(s); }
      }
    }
  };
  new MutationObserver(scan).observe(stepsEl, { subtree: true, attributes: true, attributeFilter: ['class'] });
  const answer = document.querySelector('#answer');
  new MutationObserver(() => rec.lengths.push({ t: performance.now() - rec.t0, len: answer.textContent.length }))
    .observe(answer, { subtree: true, childList: true, characterData: true });
  // The token frames as the page's client received them: the browser may hand several queued WebSocket
  // messages to the page in one go, and then #answer's mutations arrive batched although every token
  // came in a frame of its own.
  rec.tokens = [];
  rec.timings = null;
  if (window.chatTest && window.chatTest.client) {
    window.chatTest.client.on('token', () => rec.tokens.push(performance.now() - rec.t0));
    // the worker's own timings tell a paced generation from one that produced everything at once
    window.chatTest.client.on('complete', d => {
      const m = d && d.metadata ? d.metadata : {};
      rec.timings = { ...(m.timings || {}), provider: m.provider, finish_reason: m.finish_reason, usage: m.usage };
      rec.completeAt = performance.now() - rec.t0;
    });
  }
}

const errorsText = page => page.$$eval('#errors li', lis => lis.map(li => li.innerText.replace(/\s+/g, ' ').trim()).join(' | '));

let browser = null;
const globalTimer = setTimeout(async () => {
  notOk('whole test finished within ' + GLOBAL_TIMEOUT_MS / 1000 + ' s', 'global timeout');
  summary();
  try { await Promise.race([browser && browser.close(), new Promise(r => setTimeout(r, 2000))]); } catch { /* ignore */ }
  process.exit(1);
}, GLOBAL_TIMEOUT_MS);

async function main() {
  if (!TOKEN) { notOk('CHAT_TOKEN is set', 'export CHAT_TOKEN=<a valid JWT>'); return; }
  if (!fs.existsSync(CHROMIUM)) { notOk(`Chromium found at ${CHROMIUM}`, 'apt-get install chromium'); return; }

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 20_000,
  });
  // A new context is a fresh, throw-away profile: no cookies or storage from earlier runs.
  const context = await browser.newContext({ viewport: { width: 1280, height: 960 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);

  const pageErrors = [];
  const foreign = [];
  const origin = new URL(BASE).origin;
  page.on('pageerror', e => pageErrors.push(String(e && e.message || e)));
  page.on('request', r => {
    const u = r.url();
    if (!u.startsWith(origin) && !u.startsWith(origin.replace(/^http/, 'ws')) && !u.startsWith('data:')) foreign.push(u);
  });

  try {
    await check('test page loads at /ws/test with its script and styles', async () => {
      const res = await page.goto(`${BASE}/ws/test`, { waitUntil: 'load' });
      if (!res || res.status() !== 200) return `HTTP ${res && res.status()}`;
      await page.waitForFunction(() => typeof window.ChatWebSocket === 'function' && !!window.chatTest, null, { timeout: 5000 });
      const bg = await page.$eval('body', b => getComputedStyle(b.parentElement).getPropertyValue('--card').trim());
      if (!bg) return 'ws-test.css not applied';
    });

    await check('paste token + connect: #status shows authenticated and #user names the user', async () => {
      await page.fill('#token-input', TOKEN);
      await page.click('#connect-btn');
      await page.waitForFunction(() => /authenticated/i.test(document.querySelector('#status').textContent), null, { timeout: 10_000 })
        .catch(async () => { throw new Error(`#status is "${await page.textContent('#status')}"; errors: ${await errorsText(page)}`); });
      await page.waitForFunction(() => document.querySelector('#user').textContent.trim() !== '', null, { timeout: 5000 });
    });

    await check('a question sent with Enter gets a complete answer', async () => {
      // Record, from inside the page, the order in which steps get `active`/`done`
      // and the length of #answer at every change, before anything is sent.
      await page.evaluate(installRecorder, STEPS);
      await page.fill('#message-input', QUESTION);
      await page.press('#message-input', 'Enter');
      await page.waitForFunction(() => document.querySelector('#meta-finish').textContent.trim() !== '–'
        || document.querySelectorAll('#errors li').length > 0, null, { timeout: 35_000 });
      const errs = await errorsText(page);
      if (errs) return `error instead of an answer: ${errs}`;
      const answer = (await page.textContent('#answer')).trim();
      if (!answer) return 'empty #answer';
    }, { fatal: false }); // the checks below then report what did (not) happen

    await check('the four steps became active in order and all ended done', async () => {
      const rec = await page.evaluate(() => window.__rec);
      if (rec.active.join() !== STEPS.join()) return `active order was [${rec.active}]`;
      const states = await page.$$eval('#steps [data-step]', lis => lis.map(li => `${li.dataset.step}:${li.className}`));
      const notDone = states.filter(s => !/\bdone\b/.test(s) || /\bactive\b/.test(s));
      if (notDone.length) return `not done at the end: ${notDone.join(', ')}`;
    }, { fatal: false });

    await check('#answer grew while streaming (token by token)', async () => {
      const rec = await page.evaluate(() => window.__rec);
      const lens = rec.lengths.map(x => x.len);
      let increases = 0;
      for (let i = 1; i < lens.length; i++) if (lens[i] > lens[i - 1]) increases++;
      // Several increases spread over time: streamed, not dropped in at once.
      const growing = rec.lengths.filter((x, i) => i > 0 && x.len > rec.lengths[i - 1].len);
      const spanMs = growing.length ? growing[growing.length - 1].t - growing[0].t : 0;
      const frames = rec.tokens || [];
      const frameSpan = frames.length > 1 ? frames[frames.length - 1] - frames[0] : 0;
      // Streamed means many updates spread over time (the test stack paces 5 ms per token, ~50 tokens);
      // an unpaced answer arrives in one or two frames within a millisecond.
      const streamed = (n, span) => n >= 5 && span >= 20;
      if (streamed(increases, spanMs)) {
        console.log(`# ${increases} increases of #answer over ${Math.round(spanMs)} ms, ${frames.length} token frames`);
        return;
      }
      // #answer's mutations came batched: streaming is still shown if the token frames themselves arrived
      // one by one over time.
      if (streamed(frames.length, frameSpan)) {
        console.log(`# #answer mutations batched by the browser ([${lens.slice(0, 5)}]), but ${frames.length} token frames over ${Math.round(frameSpan)} ms`);
        return;
      }
      const diag = `#answer length changes: [${lens.slice(0, 20)}], ${frames.length} token frames over ${Math.round(frameSpan)} ms` +
        ` (first at ${Math.round(frames[0] || 0)} ms, complete at ${Math.round(rec.completeAt || 0)} ms; worker timings ${JSON.stringify(rec.timings)})`;
      return diag;
    }, { fatal: false });

    await check('complete shows a non-empty agent, a numeric confidence and at least one source', async () => {
      const agent = (await page.textContent('#meta-agent')).trim();
      const conf = (await page.textContent('#meta-confidence')).trim();
      const sources = await page.$$eval('#sources li:not([data-empty])', lis => lis.map(li => li.textContent.trim()).filter(Boolean));
      if (!agent || agent === '–') return `agent "${agent}"`;
      if (!/^-?\d+(\.\d+)?$/.test(conf) || !Number.isFinite(parseFloat(conf))) return `confidence "${conf}"`;
      if (!sources.length) return 'no source listed';
      console.log(`# agent=${agent} confidence=${conf} sources=${JSON.stringify(sources)}`);
    }, { fatal: false });

    await check('#session-id is filled from the complete frame', async () => {
      const sid = (await page.inputValue('#session-id')).trim();
      if (!sid) return 'empty';
    }, { fatal: false });

    await check('"Drop connection" mid-answer: the client reconnects, resumes, and the answer arrives whole, once', async () => {
      await page.evaluate(() => {
        const c = window.chatTest.client;
        const r = window.__drop = { tokens: [], dropped: false, complete: null, resumed0: window.chatTest.resumed };
        c.on('token', d => {
          r.tokens.push(d.token);
          if (!r.dropped) { r.dropped = true; document.querySelector('#drop-btn').click(); }
        });
        c.once('complete', d => { r.complete = d.response; });
      });
      await page.fill('#message-input', 'How long is the Seawind 190?');
      await page.press('#message-input', 'Enter');
      await page.waitForFunction(() => window.__drop.complete !== null || document.querySelectorAll('#errors li').length > 0,
        null, { timeout: 20_000 });
      const r = await page.evaluate(() => ({ ...window.__drop, resumed: window.chatTest.resumed }));
      const errs = await errorsText(page);
      if (errs) return `errors: ${errs}`;
      if (!r.dropped) return 'no token to drop at';
      if (r.resumed <= r.resumed0) return 'no resumed frame after the reconnect';
      if (r.tokens.join('') !== r.complete) return `tokens ${JSON.stringify(r.tokens.join(''))} != response ${JSON.stringify(r.complete)}`;
      if ((await page.textContent('#answer')).trim() !== r.complete.trim()) return '#answer is not the response';
      console.log(`# dropped after the first token, ${r.tokens.length} token frames in all`);
    }, { fatal: false });

    await check('a drop right after sending, before any of the answer arrived: the client finds the answer and the conversation has it once', async () => {
      // in the page's conversation, then as the first message of a new one (whose id the client chose)
      for (const [q, fresh] of [['How much fuel does the Seawind 250 hold?', false], ['What does fault code E42 mean?', true]]) {
        const r = await page.evaluate(async ([q, fresh]) => {
          const c = window.chatTest.client, ws = c.ws;
          const answer = c.sendMessage(q, fresh ? { sessionId: null } : undefined);
          ws.onmessage = () => {}; // the network loses everything the server sends from here on
          await new Promise(resolve => setTimeout(resolve, 30));
          ws.close(4000, 'dropped by the test');
          try {
            const d = await answer;
            return { response: d.response, session: d.session_id };
          } catch (e) {
            return { code: e.code, error: e.message };
          }
        }, [q, fresh]);
        const which = fresh ? 'a new conversation' : 'the conversation';
        if (r.code) return `${which}: the message was given up: ${r.code} (${r.error})`;
        if (!r.response || !r.session) return `${which}: no answer: ${JSON.stringify(r)}`;
        const res = await fetch(`${BASE}/api/v1/sessions/${encodeURIComponent(r.session)}/messages`,
          { headers: { Authorization: `Bearer ${TOKEN}` } });
        if (res.status !== 200) return `${which}: history: HTTP ${res.status}`;
        const msgs = (await res.json()).messages || [];
        const asked = msgs.map((m, i) => [m, i]).filter(([m]) => m.role === 'user' && m.content === q);
        if (asked.length !== 1) return `${which}: the question is stored ${asked.length} times`;
        if (fresh && msgs.length !== 2) return `${which}: ${msgs.length} messages stored`;
        const reply = msgs[asked[0][1] + 1];
        if (!reply || reply.role !== 'assistant' || reply.content !== r.response)
          return `${which}: the stored answer is not the one the client got: ${JSON.stringify(reply && reply.content.slice(0, 60))}`;
      }
    }, { fatal: false });

    await check('"Open in a second tab": the second tab resumes the conversation and follows the next answer live', async () => {
      const sid = (await page.inputValue('#session-id')).trim();
      if (!sid) return 'no session to open';
      const tab = await context.newPage();
      tab.setDefaultTimeout(15_000);
      tab.on('pageerror', e => pageErrors.push('second tab: ' + String(e && e.message || e)));
      await tab.goto(`${BASE}/ws/test#session=${encodeURIComponent(sid)}`, { waitUntil: 'load' });
      await tab.fill('#token-input', TOKEN);
      await tab.click('#connect-btn');
      await tab.waitForFunction(() => window.chatTest.resumed > 0, null, { timeout: 10_000 });
      const before = await tab.evaluate(() => window.chatTest.completes);
      const mineBefore = await page.evaluate(() => window.chatTest.completes);
      await page.fill('#message-input', 'And its fuel capacity?');
      await page.press('#message-input', 'Enter');
      await tab.waitForFunction(n => window.chatTest.completes > n, before, { timeout: 20_000 });
      await page.waitForFunction(n => window.chatTest.completes > n, mineBefore, { timeout: 20_000 });
      const mine = (await page.textContent('#answer')).trim(), seen = (await tab.textContent('#answer')).trim();
      const asked = await tab.evaluate(() => window.chatTest.userMessages);
      await tab.close();
      if (!asked) return 'the second tab was not shown the question';
      if (!mine || seen !== mine) return `second tab shows ${JSON.stringify(seen.slice(0, 60))}, first ${JSON.stringify(mine.slice(0, 60))}`;
    }, { fatal: false });

    await check('an empty message shows an EMPTY_MESSAGE error in #errors', async () => {
      await page.fill('#message-input', '');
      await page.click('#send-btn');
      await page.waitForFunction(() => /EMPTY_MESSAGE/.test(document.querySelector('#errors').textContent), null, { timeout: 10_000 })
        .catch(async () => { throw new Error(`#errors: "${await errorsText(page)}"`); });
      if (!/authenticated/i.test(await page.textContent('#status'))) return 'connection lost after the error';
    }, { fatal: false });
  } finally {
    broken = null; // the last checks run whatever happened
    await check('screenshot saved to ' + SHOT, async () => {
      fs.mkdirSync(path.dirname(path.resolve(SHOT)), { recursive: true });
      await page.screenshot({ path: SHOT, fullPage: true });
      if (!fs.statSync(SHOT).size) return 'empty file';
    }, { fatal: false });
    await check('no uncaught JavaScript errors and no requests to other origins', async () => {
      if (pageErrors.length) return `page errors: ${pageErrors.join(' | ')}`;
      if (foreign.length) return `external requests: ${foreign.slice(0, 5).join(' ')}`;
    }, { fatal: false });
  }
}

try {
  await main();
} catch (e) {
  notOk('test ran without exceptions', String(e && e.stack || e).split('\n').slice(0, 3).join(' / '));
} finally {
  clearTimeout(globalTimer);
  if (browser) await Promise.race([browser.close().catch(() => {}), new Promise(r => setTimeout(r, 5000))]);
  summary();
  process.exit(failed ? 1 : 0);
}
