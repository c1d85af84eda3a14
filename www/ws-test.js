/*
 * ws-test.js - the interactive test page for /ws/chat (served at /ws/test).
 * Drives www/chat-client.js; everything the server sends is shown, nothing is hidden,
 * so the page doubles as a debugging tool for the streamer.
 */
(function () {
  'use strict';

  var STEPS = ['starting', 'agent_routing', 'rag_retrieval', 'generating'];
  var STATE_TEXT = {
    idle: 'Idle',
    connecting: 'Connecting…',
    open: 'Connected',
    authenticated: 'Authenticated',
    reconnecting: 'Reconnecting…',
    closed: 'Disconnected'
  };
  var LOG_MAX = 200;

  function $(id) { return document.getElementById(id); }
  var el = {
    status: $('status'), endpoint: $('endpoint'),
    token: $('token-input'), connect: $('connect-btn'), demo: $('demo-token-btn'), reconnect: $('reconnect-btn'),
    drop: $('drop-btn'), tab: $('tab-btn'),
    user: $('user'), userNone: $('user-none'),
    form: $('message-form'), message: $('message-input'), send: $('send-btn'), cancel: $('cancel-btn'),
    session: $('session-id'), customer: $('customer-id'),
    steps: $('steps'), stepMessage: $('step-message'), answer: $('answer'), announce: $('announce'),
    agent: $('meta-agent'), confidence: $('meta-confidence'), finish: $('meta-finish'),
    usage: $('meta-usage'), timings: $('meta-timings'), sources: $('sources'),
    errors: $('errors'), log: $('log'),
    clearErrors: $('clear-errors-btn'), clearLog: $('clear-log-btn')
  };

  var client = null;
  var answering = false;    // between the first progress/token of an answer and its complete/error
  var tokenCount = 0;       // tokens of the current answer
  var tokenLogLine = null;  // one log line updated in place instead of one line per token

  // For automated tests and the curious: window.chatTest.client is the live ChatWebSocket.
  window.chatTest = { client: null, tokens: 0, completes: 0, errors: 0, resumed: 0, userMessages: 0 };

  // ---- small helpers ------------------------------------------------------

  function time() {
    var d = new Date();
    function p(n, w) { return String(n).padStart(w || 2, '0'); }
    return p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds()) + '.' + p(d.getMilliseconds(), 3);
  }

  function log(kind, text) {
    var li = document.createElement('li');
    li.className = 'log-' + kind.replace(/[^a-z_]/gi, '');
    var t = document.createElement('time'); t.textContent = time();
    var k = document.createElement('span'); k.className = 'kind'; k.textContent = kind;
    var m = document.createElement('span'); m.className = 'text'; m.textContent = text || '';
    li.appendChild(t); li.appendChild(k); li.appendChild(m);
    el.log.appendChild(li);
    while (el.log.children.length > LOG_MAX) el.log.removeChild(el.log.firstChild);
    el.log.scrollTop = el.log.scrollHeight;
    return m;
  }

  function showError(code, text) {
    var li = document.createElement('li');
    var c = document.createElement('code'); c.className = 'code'; c.textContent = code || 'ERROR';
    var t = document.createElement('span'); t.textContent = text || '';
    var tm = document.createElement('time'); tm.textContent = time();
    li.appendChild(c); li.appendChild(t); li.appendChild(tm);
    el.errors.insertBefore(li, el.errors.firstChild);
    window.chatTest.errors++;
  }

  function shortJson(v) {
    var s = JSON.stringify(v);
    return s && s.length > 160 ? s.slice(0, 157) + '…' : s;
  }

  // ---- status and buttons -------------------------------------------------

  function setStatus(state, extra) {
    var text = STATE_TEXT[state] || state;
    if (state === 'reconnecting' && extra && extra.delayMs != null) {
      text = 'Reconnecting in ' + (extra.delayMs / 1000).toFixed(1) + ' s (attempt ' + extra.attempt + ')';
    }
    if (state === 'closed' && extra && extra.code && extra.code !== 1000) text += ' (code ' + extra.code + ')';
    el.status.textContent = text;
    el.status.setAttribute('data-state', state);
    updateButtons();
  }

  function updateButtons() {
    var state = client ? client.state : 'idle';
    var live = state === 'connecting' || state === 'open' || state === 'authenticated' || state === 'reconnecting';
    el.send.disabled = !(state === 'open' || state === 'authenticated');
    el.cancel.disabled = !(client && client.pendingCount() > 0 && client.isOpen());
    el.reconnect.disabled = !client;
    el.reconnect.textContent = live ? 'Disconnect' : 'Reconnect';
    el.drop.disabled = !(client && client.isOpen());
    el.tab.disabled = !(client && (client.sessionId || el.session.value.trim()));
  }

  function setUser(user) {
    el.user.textContent = '';
    if (user) {
      var name = document.createElement('span');
      name.className = 'user-name';
      name.textContent = user.name || user.id || user.email || '(unnamed user)';
      el.user.appendChild(name);
      if (user.email && user.email !== name.textContent) {
        var mail = document.createElement('span');
        mail.className = 'user-email';
        mail.textContent = user.email;
        el.user.appendChild(document.createTextNode(' '));
        el.user.appendChild(mail);
      }
      el.userNone.hidden = true;
    } else {
      el.userNone.hidden = false;
    }
  }

  // ---- the answer panel ---------------------------------------------------

  function resetAnswer() {
    tokenCount = 0;
    tokenLogLine = null;
    el.answer.textContent = '';
    el.answer.classList.remove('cancelled', 'failed');
    el.answer.setAttribute('aria-busy', 'true');
    el.stepMessage.textContent = '';
    el.announce.textContent = '';
    for (var i = 0; i < el.steps.children.length; i++) el.steps.children[i].classList.remove('active', 'done', 'failed');
    syncAriaCurrent();
    [el.agent, el.confidence, el.finish, el.usage, el.timings].forEach(function (d) { d.textContent = '–'; });
    el.sources.textContent = '';
  }

  // An answer begins with its first progress or token frame (not when we send:
  // the server queues messages, so ours may start only after earlier answers).
  function beginAnswerIfNeeded() {
    if (answering) return;
    answering = true;
    resetAnswer();
  }

  function markStep(step) {
    var idx = STEPS.indexOf(step);
    var items = el.steps.querySelectorAll('[data-step]');
    for (var i = 0; i < items.length; i++) {
      var s = STEPS.indexOf(items[i].getAttribute('data-step'));
      if (idx >= 0 && s < idx) {
        // Earlier steps are finished, even if the server skipped announcing one.
        if (items[i].classList.contains('active') || !items[i].classList.contains('done')) {
          items[i].classList.remove('active');
          items[i].classList.add('done');
        }
      } else if (s === idx) {
        items[i].classList.remove('done');
        items[i].classList.add('active');
      }
    }
    syncAriaCurrent();
  }

  // Screen readers get the current step through aria-current, not just the colour.
  function syncAriaCurrent() {
    var items = el.steps.querySelectorAll('[data-step]');
    for (var i = 0; i < items.length; i++) {
      if (items[i].classList.contains('active')) items[i].setAttribute('aria-current', 'step');
      else items[i].removeAttribute('aria-current');
    }
  }

  function finishSteps(failed) {
    var items = el.steps.querySelectorAll('[data-step].active');
    for (var i = 0; i < items.length; i++) {
      items[i].classList.remove('active');
      items[i].classList.add(failed ? 'failed' : 'done');
    }
    syncAriaCurrent();
  }

  function renderSource(src) {
    var li = document.createElement('li');
    if (src == null) return null;
    if (typeof src !== 'object') { li.textContent = String(src); return li; }
    var label = src.title || src.name || src.source || src.document || src.file || src.id || shortJson(src);
    var url = typeof src.url === 'string' ? src.url : null;
    // Only http(s) and same-site links: a source URL is data, never a javascript: link.
    if (url && /^(https?:\/\/|\/)/i.test(url)) {
      var a = document.createElement('a'); a.href = url; a.textContent = String(label); a.rel = 'noopener noreferrer';
      li.appendChild(a);
    } else {
      li.appendChild(document.createTextNode(String(label)));
    }
    var score = typeof src.score === 'number' ? src.score : (typeof src.similarity === 'number' ? src.similarity : null);
    if (score != null) {
      var s = document.createElement('span'); s.className = 'muted score'; s.textContent = ' ' + score.toFixed(2);
      li.appendChild(s);
    }
    return li;
  }

  function renderComplete(d) {
    var md = d.metadata || {};
    var fr = md.finish_reason || 'stop';
    if (typeof d.response === 'string' && (d.response || fr !== 'cancelled')) el.answer.textContent = d.response;
    el.answer.classList.toggle('cancelled', fr === 'cancelled');
    el.answer.classList.toggle('failed', fr === 'error');
    el.answer.setAttribute('aria-busy', 'false');
    el.agent.textContent = md.agent != null && md.agent !== '' ? String(md.agent) : '–';
    el.confidence.textContent = typeof md.confidence === 'number' ? md.confidence.toFixed(2)
      : (md.confidence != null ? String(md.confidence) : '–');
    el.finish.textContent = fr;
    el.finish.className = 'finish-' + String(fr).replace(/[^a-z_]/gi, '');
    var u = md.usage;
    el.usage.textContent = u ? (u.prompt_tokens != null ? u.prompt_tokens : '?') + ' in / ' + (u.completion_tokens != null ? u.completion_tokens : '?') + ' out' : '–';
    var t = md.timings;
    el.timings.textContent = t ? (t.first_token_ms != null ? t.first_token_ms : '–') + ' / ' + (t.total_ms != null ? t.total_ms : '–') + ' ms' : '–';
    el.sources.textContent = '';
    var sources = (md.context && md.context.sources) || md.sources || [];
    if (!Array.isArray(sources)) sources = [sources];
    sources.forEach(function (src) { var li = renderSource(src); if (li) el.sources.appendChild(li); });
    if (!el.sources.children.length) {
      var none = document.createElement('li'); none.className = 'muted none'; none.textContent = 'no sources';
      // Marked so tests and readers can tell "no sources" apart from a source.
      none.setAttribute('data-empty', '');
      el.sources.appendChild(none);
    }
    if (d.session_id) el.session.value = d.session_id;
    el.stepMessage.textContent = fr === 'stop' ? 'Done.' : 'Finished: ' + fr + '.';
    el.announce.textContent = 'Answer complete' + (fr !== 'stop' ? ' (' + fr + ')' : '') + '.';
  }

  // ---- wiring the client --------------------------------------------------

  function makeClient(token) {
    var c = new window.ChatWebSocket(null, token || null);
    el.endpoint.textContent = c.url;

    c.on('state', function (d) {
      setStatus(d.state, d);
      if (d.state !== 'authenticated' && d.state !== 'open') setUser(null);
      // reconnecting: the answer goes on, the client resumes it once connected again
      if (d.state === 'closed') {
        if (answering) { answering = false; finishSteps(true); el.answer.setAttribute('aria-busy', 'false'); }
      }
    });
    c.on('open', function () { log('open', 'connected to ' + c.url); });
    c.on('close', function (d) { log('close', 'code ' + d.code + (d.reason ? ' "' + d.reason + '"' : '') + (d.willReconnect ? ', will reconnect' : '')); });
    c.on('reconnecting', function (d) { log('reconnecting', 'attempt ' + d.attempt + ' in ' + d.delayMs + ' ms'); });
    c.on('connection_error', function (d) { log('conn_error', d.error); });
    c.on('send', function (f) {
      var shown = f.type === 'auth' ? { type: 'auth', token: '…' + String(f.token).slice(-8) } : f;
      log('send', shortJson(shown));
      updateButtons();
    });
    c.on('auth', function (d) {
      setUser(d.user);
      log('auth_success', d.user ? (d.user.name || '') + ' ' + (d.user.email || '') : (d.message || ''));
    });
    c.on('auth_error', function (d) {
      setUser(null);
      showError('AUTH_ERROR', d.message || 'authentication failed');
      log('auth_error', d.message);
    });
    c.on('progress', function (d) {
      if (d.step === 'starting') answering = false; // 'starting' always opens a new answer
      beginAnswerIfNeeded();
      markStep(d.step);
      el.stepMessage.textContent = d.message || '';
      log('progress', d.step + (d.message ? ' - ' + d.message : ''));
      updateButtons();
    });
    c.on('token', function (d) {
      beginAnswerIfNeeded();
      // Tokens mean generation, even if the server did not announce the step.
      if (!el.steps.querySelector('[data-step="generating"].active')) markStep('generating');
      // partial_response is authoritative when present: it heals any missed frame.
      if (typeof d.partial_response === 'string') el.answer.textContent = d.partial_response;
      else el.answer.textContent += d.token || '';
      el.answer.scrollTop = el.answer.scrollHeight;
      tokenCount++;
      window.chatTest.tokens++;
      if (!tokenLogLine) tokenLogLine = log('token', '');
      tokenLogLine.textContent = tokenCount + ' token' + (tokenCount === 1 ? '' : 's');
    });
    c.on('complete', function (d) {
      if (!answering) resetAnswer(); // a complete without any progress/token (e.g. cancelled before start)
      answering = false;
      var md = d.metadata || {};
      finishSteps(md.finish_reason === 'error');
      renderComplete(d);
      window.chatTest.completes++;
      log('complete', 'agent ' + md.agent + ', confidence ' + md.confidence + ', finish ' + (md.finish_reason || '?') + ', session ' + d.session_id);
      setTimeout(updateButtons, 0); // the client drops the pending entry right after this event
    });
    c.on('error', function (d) {
      showError(d.code, d.error);
      log('error', (d.code || '') + ' ' + (d.error || ''));
      // PROCESSING_ERROR ends the answer being streamed. Other codes (EMPTY_MESSAGE,
      // RATE_LIMITED, ...) may reject a queued message while an earlier answer still streams.
      if (answering && d.code === 'PROCESSING_ERROR') {
        answering = false;
        finishSteps(true);
        el.answer.classList.add('failed');
        el.answer.setAttribute('aria-busy', 'false');
      }
      setTimeout(updateButtons, 0);
    });
    c.on('resumed', function (d) {
      window.chatTest.resumed++;
      log('resumed', 'session ' + d.session_id + (d.in_flight ? ', answer in flight' : ', nothing streaming') +
        (d.answer_id ? ', at piece ' + d.seq : '') + (d.complete_follows ? '' : ', nothing more to come'));
    });
    c.on('user_message', function (d) {
      // asked from another tab of this conversation: its answer follows
      window.chatTest.userMessages++;
      answering = false;
      beginAnswerIfNeeded();
      log('user_message', 'another tab asked: ' + d.message);
      el.stepMessage.textContent = 'Another tab asked: ' + d.message;
    });
    c.on('frame', function (f) {
      if (['auth_success', 'auth_error', 'progress', 'token', 'complete', 'error', 'resumed', 'user_message'].indexOf(f.type) < 0) log('frame', shortJson(f));
    });
    return c;
  }

  function connect() {
    var token = el.token.value.trim();
    if (client) {
      // Same client: keeps the remembered session and queued messages.
      client.setToken(token);
      if (!client.isOpen()) client.reconnect();
    } else {
      client = makeClient(token);
      window.chatTest.client = client;
      // a session in the field (e.g. opened by "Open in a second tab"): followed once authenticated
      client.sessionId = el.session.value.trim() || null;
      client.connect();
    }
    updateButtons();
  }

  function send() {
    if (!client) return;
    var text = el.message.value; // sent verbatim, even empty: the server's validation is under test
    var opts = { sessionId: el.session.value.trim() || null, customerId: el.customer.value.trim() || undefined };
    el.message.value = '';
    client.sendMessage(text, opts).then(function () {
      updateButtons();
    }, function (err) {
      // Server errors are already shown by the 'error' listener; show only client-side failures here.
      if (['CONNECTION_LOST', 'DISCONNECTED', 'NOT_CONNECTED', 'AUTH_ERROR'].indexOf(err.code) >= 0) showError(err.code, err.message);
      updateButtons();
    });
    updateButtons();
  }

  // ---- UI events ----------------------------------------------------------

  el.connect.addEventListener('click', connect);
  el.token.addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); connect(); }
  });
  el.form.addEventListener('submit', function (e) { e.preventDefault(); if (!el.send.disabled) send(); });
  el.cancel.addEventListener('click', function () {
    if (client && client.cancel()) log('cancel', 'asked the server to stop the answer');
  });
  el.reconnect.addEventListener('click', function () {
    if (!client) return;
    var s = client.state;
    if (s === 'closed' || s === 'idle') { client.setToken(el.token.value.trim()); client.reconnect(); }
    else client.disconnect();
  });
  el.drop.addEventListener('click', function () {
    // what a network drop looks like to the client: the socket closes without the client asking
    if (client && client.ws) { log('drop', 'closing the socket: the client reconnects and resumes'); client.ws.close(4000, 'dropped by the test page'); }
  });
  el.tab.addEventListener('click', function () {
    var sid = (client && client.sessionId) || el.session.value.trim();
    if (sid) window.open('/ws/test#session=' + encodeURIComponent(sid), '_blank', 'noopener');
  });
  el.clearErrors.addEventListener('click', function () { el.errors.textContent = ''; });
  el.clearLog.addEventListener('click', function () { el.log.textContent = ''; tokenLogLine = null; });
  el.demo.addEventListener('click', function () {
    el.demo.disabled = true;
    fetchDemoToken().then(function (tok) {
      el.demo.disabled = false;
      if (!tok) { showError('DEMO_TOKEN', 'no demo token available'); return; }
      el.token.value = tok;
      connect();
    });
  });

  // The demo-token endpoint exists only on a demo stack (make run): 404 elsewhere.
  function fetchDemoToken() {
    return fetch('/api/v1/demo-token', { cache: 'no-store', credentials: 'same-origin' })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (j) { return j && typeof j.token === 'string' && j.token ? j.token : null; })
      .catch(function () { return null; });
  }

  fetchDemoToken().then(function (tok) {
    el.demo.hidden = !tok;
    if (tok) log('demo', 'demo token available');
  });

  var fromHash = /(?:^#|&)session=([^&]+)/.exec(location.hash || '');
  if (fromHash) el.session.value = decodeURIComponent(fromHash[1]);
  try { el.endpoint.textContent = window.ChatWebSocket.deriveUrl(null, '/ws/chat'); } catch (e) { /* ignore */ }
  setUser(null);
  setStatus('idle');
  log('ready', 'paste a token and connect');
})();
