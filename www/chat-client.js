/*
 * chat-client.js - browser client for the streaming chat WebSocket (/ws/chat).
 *
 * A plain classic script: no modules, no build step. Load it with
 *   <script src="/chat-client.js"></script>
 * and use window.ChatWebSocket. It is the ChatWebSocket class of the protocol
 * spec (same constructor, same onProgress/onMessage/onComplete/onError
 * callbacks), made robust:
 *   - the ws:// or wss:// URL is derived from location when none is given;
 *   - the token is sent in an `auth` frame on every open, so a reconnect
 *     re-authenticates by itself;
 *   - reconnects with exponential backoff and jitter until disconnect(), and
 *     resumes the conversation by itself: it keeps, per session, the id of the
 *     answer it is in and the seq of the last token (or complete) received, and
 *     sends `resume` with them on every new connection, so the answer in flight
 *     continues exactly where it broke off (its sendMessage() promise survives
 *     the drop) and later answers asked from other tabs arrive too;
 *   - a message sent just before a drop, whose answer had not begun to arrive,
 *     is not given up either: the resume asks the server whether it is being
 *     answered (an answer of its conversation newer than the last one seen),
 *     and the promise gets that answer, or CONNECTION_LOST when the server
 *     did not take the message (sending it again is then safe; the one
 *     exception is in docs/protocol.md).
 *     So that even a first message can be found again, a new conversation's
 *     session id is chosen here (a random UUID), not left to the server;
 *   - emits connection state changes and every server event through on(type, fn);
 *   - sendMessage() returns a Promise of the `complete` frame (or rejects on
 *     `error`), matched by order because the server answers in order;
 *   - remembers the session_id of the last answer so follow-ups continue the
 *     conversation; resume(sessionId) follows another one (a second tab);
 *   - refreshes its token on the open socket: when the server says the token
 *     expires soon (`auth_expiring`), options.refreshToken() is asked for a new
 *     one (a token, or a Promise of one) and it is sent in an `auth` frame;
 *     answers in flight go on. Without refreshToken the socket stays usable
 *     until the token expires, then messages get AUTH_REQUIRED.
 *
 * Events for on(type, fn) (fn gets one detail object):
 *   state            {state, previous, ...}  state is one of: idle, connecting,
 *                    open, authenticated, reconnecting, closed
 *   open, close      {code, reason, wasClean, willReconnect}
 *   reconnecting     {attempt, delayMs}
 *   auth             {user, message}         (auth_success)
 *   auth_error       {message, code}         code: INVALID_TOKEN, TOKEN_EXPIRED, ...
 *   auth_expiring    {expires_in}            seconds left on the token
 *   refresh_error    {error, code}           refreshToken failed or its token was refused
 *                                            (the socket keeps its user until the old token expires)
 *   progress         {step, message, session_id, answer_id, own}
 *   token            {token, partial_response, seq, session_id, answer_id, own}
 *   complete         {response, session_id, metadata, answer_id, seq, own}
 *   resumed          the server's resumed frame {session_id, in_flight, complete_follows, answer_id, seq}
 *   user_message     {session_id, answer_id, message}: asked from another connection of the user
 *                    (own: false on the answer's events that follow it)
 *   error            {error, code}           (the server's `error` frames only)
 *   connection_error {error, code: 'CONNECTION_ERROR'}
 *   frame            the raw parsed frame, for every frame received
 *   send             the frame object just sent
 */
(function (global) {
  'use strict';

  var DEFAULTS = {
    reconnect: true,        // reconnect after an unexpected close
    minBackoffMs: 500,      // first retry delay
    maxBackoffMs: 10000,    // cap: a restarted server is retried at least every ~10 s
    connectTimeoutMs: 10000, // a socket stuck in CONNECTING is abandoned and retried
    stableAfterMs: 5000,    // a connection open this long resets the backoff
    tokenInQuery: false,    // also put ?token= in the URL (it then ends up in access logs: off by default)
    resume: true,           // on every new connection, resume the conversation (this.sessionId)
    resumeRetries: 5,       // a resume answered OVERLOADED (no worker yet, e.g. a restart) is retried
    refreshToken: null,     // function () -> a new token for the same user, or a Promise of one (auth_expiring)
    path: '/ws/chat',
    WebSocket: null         // injectable WebSocket implementation (tests, non-browser hosts)
  };

  // Error codes that answer one of our `message` frames. INVALID_JSON and
  // UNKNOWN_TYPE cannot answer a well-formed message frame, so they never
  // settle a pending sendMessage() promise.
  var UNRELATED_CODES = { INVALID_JSON: true, UNKNOWN_TYPE: true };

  function makeError(message, code, detail) {
    var err = new Error(message || code || 'error');
    err.code = code || 'ERROR';
    if (detail !== undefined) err.detail = detail;
    return err;
  }

  // Works out ws(s)://host/ws/chat from the page's own location, so the same
  // page works over http and https, behind any host name or port.
  function deriveUrl(url, path) {
    var loc = global.location;
    if (url && /^wss?:\/\//i.test(url)) return url;
    if (!loc || !loc.host) {
      if (url) return url;
      throw makeError('ChatWebSocket: no URL given and no location to derive one from', 'NO_URL');
    }
    var scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
    if (url && /^https?:\/\//i.test(url)) return url.replace(/^http/i, 'ws');
    var p = url || path || '/ws/chat';
    if (p.charAt(0) !== '/') p = '/' + p;
    return scheme + '//' + loc.host + p;
  }

  // A new conversation's id: a random (version 4) UUID, which the server takes as the user's new
  // session. null where the host has no crypto (the server then names the session, and a message
  // dropped before its answer began cannot be looked for).
  function newSessionId() {
    var c = global.crypto || (typeof globalThis !== 'undefined' ? globalThis.crypto : null);
    if (c && typeof c.randomUUID === 'function') return c.randomUUID();
    if (!c || typeof c.getRandomValues !== 'function') return null;
    var b = c.getRandomValues(new Uint8Array(16)), hex = '';
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    for (var i = 0; i < 16; i++) hex += (b[i] < 16 ? '0' : '') + b[i].toString(16);
    return hex.slice(0, 8) + '-' + hex.slice(8, 12) + '-' + hex.slice(12, 16) + '-' + hex.slice(16, 20) + '-' + hex.slice(20);
  }

  function withQueryToken(url, token) {
    if (!token) return url;
    return url + (url.indexOf('?') >= 0 ? '&' : '?') + 'token=' + encodeURIComponent(token);
  }

  /**
   * new ChatWebSocket(url?, token?, options?)  or  new ChatWebSocket({url, token, ...options})
   * Nothing happens until connect() is called.
   */
  function ChatWebSocket(url, token, options) {
    if (url && typeof url === 'object') { options = url; url = options.url; token = options.token; }
    options = options || {};
    this.options = {};
    for (var k in DEFAULTS) this.options[k] = (options[k] !== undefined) ? options[k] : DEFAULTS[k];

    this.url = deriveUrl(url, this.options.path);
    this.token = token || null;
    this.sessionId = options.sessionId || null; // continued by the next sendMessage()
    this.user = null;                           // from the last auth_success
    this.state = 'idle';
    this.ws = null;

    // Spec-compatible callbacks (optional); on(type, fn) is the richer interface.
    this.onMessage = null;     // (token, partialResponse)
    this.onProgress = null;    // (step, message)
    this.onComplete = null;    // (response, metadata, frame)
    this.onError = null;       // (error, code)  server errors, auth errors, connection errors
    this.onAuth = null;        // (user)
    this.onStateChange = null; // (state, previous)

    this._listeners = {};
    this._cursors = {};  // session_id -> {answerId, seq}: the answer this client is in, and its last seq
    this._answer = null; // the answer being received: {id, sessionId, own}
    this._foreign = {};  // answer ids announced by user_message: not answers to our messages
    this._resuming = null;     // the resume sent on this socket and not answered yet: {sessionId, attempts}
    this._resumeOnAuth = false; // a new socket: resume once authenticated
    this._pending = [];  // sent, awaiting complete/error, in send order (the server answers FIFO)
    this._outbox = [];   // accepted by sendMessage() but not sent yet (not connected/authenticated)
    this._manualClose = true;  // true until connect(); disconnect() sets it again
    this._attempt = 0;
    this._reconnectTimer = null;
    this._connectTimer = null;
    this._stableTimer = null;
    this._authFailed = false;
    this._authKinds = [];    // why each auth frame on this socket was sent ('connect', 'set', 'refresh'), in order
    this._refreshing = false;
    this._onOnline = null;
  }

  var P = ChatWebSocket.prototype;

  // ---- events -----------------------------------------------------------

  /** Subscribe; returns a function that unsubscribes. */
  P.on = function (type, fn) {
    (this._listeners[type] || (this._listeners[type] = [])).push(fn);
    var self = this;
    return function () { self.off(type, fn); };
  };

  P.off = function (type, fn) {
    var list = this._listeners[type];
    if (!list) return;
    var i = list.indexOf(fn);
    if (i >= 0) list.splice(i, 1);
  };

  P.once = function (type, fn) {
    var off = this.on(type, function (d) { off(); fn(d); });
    return off;
  };

  // A throwing listener must not break the stream or the other listeners.
  P._emit = function (type, detail) {
    var list = (this._listeners[type] || []).slice();
    for (var i = 0; i < list.length; i++) {
      try { list[i].call(this, detail); } catch (e) { if (global.console) console.error('ChatWebSocket listener for "' + type + '" threw', e); }
    }
  };

  P._callback = function (name, args) {
    var fn = this[name];
    if (typeof fn !== 'function') return;
    try { fn.apply(this, args); } catch (e) { if (global.console) console.error('ChatWebSocket ' + name + ' threw', e); }
  };

  P._setState = function (state, extra) {
    if (state === this.state && !extra) return;
    var previous = this.state;
    this.state = state;
    var detail = { state: state, previous: previous };
    if (extra) for (var k in extra) detail[k] = extra[k];
    this._emit('state', detail);
    this._callback('onStateChange', [state, previous]);
  };

  // ---- connection -------------------------------------------------------

  /** Opens the connection (no-op if already open or opening). Re-enables auto-reconnect. */
  P.connect = function () {
    this._manualClose = false;
    this._authFailed = false;
    this._clearTimer('_reconnectTimer');
    this._watchOnline();
    if (this.ws && (this.ws.readyState === 0 || this.ws.readyState === 1)) return this;
    this._open();
    return this;
  };

  P._open = function () {
    var WS = this.options.WebSocket || global.WebSocket;
    var url = this.options.tokenInQuery ? withQueryToken(this.url, this.token) : this.url;
    var self = this;
    var ws;
    this._setState('connecting', { attempt: this._attempt });
    try {
      ws = new WS(url);
    } catch (e) {
      // A malformed URL or a blocked port throws synchronously: treat it as a failed attempt.
      this._emit('connection_error', { error: String(e && e.message || e), code: 'CONNECTION_ERROR' });
      this._callback('onError', ['WebSocket error: ' + (e && e.message || e), 'CONNECTION_ERROR']);
      this._scheduleReconnect({ code: 1006, reason: 'constructor failed' });
      return;
    }
    this.ws = ws;

    this._clearTimer('_connectTimer');
    this._connectTimer = setTimeout(function () {
      // A half-open TCP connection can hang in CONNECTING for minutes; give up and retry.
      if (self.ws === ws && ws.readyState === 0) { try { ws.close(); } catch (e) { /* ignore */ } self._handleClose(ws, { code: 4000, reason: 'connect timeout', wasClean: false }); }
    }, this.options.connectTimeoutMs);

    // Every handler checks `self.ws === ws`: events of a superseded socket are ignored.
    ws.onopen = function () {
      if (self.ws !== ws) return;
      self._clearTimer('_connectTimer');
      self._setState('open');
      self._emit('open', {});
      self._clearTimer('_stableTimer');
      self._stableTimer = setTimeout(function () { if (self.ws === ws) self._attempt = 0; }, self.options.stableAfterMs);
      self._resumeOnAuth = true;
      self._resuming = null;
      self._authKinds = [];
      if (self.token) {
        // Re-sent on every (re)connect: a new socket is a new, unauthenticated session server-side.
        self._sendAuth('connect');
      } else {
        self._flushOutbox();
      }
    };
    ws.onmessage = function (ev) {
      if (self.ws !== ws) return;
      if (typeof ev.data !== 'string') return; // the protocol is JSON text only
      var data;
      try { data = JSON.parse(ev.data); } catch (e) {
        self._emit('connection_error', { error: 'unparsable frame from server', code: 'BAD_FRAME', raw: ev.data });
        return;
      }
      if (!data || typeof data !== 'object') return;
      self._handleFrame(data);
    };
    ws.onerror = function () {
      if (self.ws !== ws) return;
      // Browsers give no detail here on purpose; the close event that follows drives reconnection.
      self._emit('connection_error', { error: 'WebSocket error', code: 'CONNECTION_ERROR' });
      self._callback('onError', ['WebSocket error', 'CONNECTION_ERROR']);
    };
    ws.onclose = function (ev) {
      self._handleClose(ws, { code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
    };
  };

  // restarting: the caller opens a new socket right away (reconnect()), so no backoff is scheduled.
  P._handleClose = function (ws, info, restarting) {
    if (this.ws !== ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    this.ws = null;
    this._answer = null;
    this._resuming = null;
    this._clearTimer('_connectTimer');
    this._clearTimer('_stableTimer');

    // The answer being streamed outlives the socket: it is resumed on the next one and its promise
    // stays pending. So does the first message when its answer had not begun to arrive: a worker may
    // be answering it all the same, and the resume tells (see 'resumed'). The messages after it die
    // with the socket (the server answers a connection's messages one at a time and forgets the
    // waiting ones): rejected. Unsent messages (outbox) go out after reconnecting.
    var lost = makeError('connection closed before the answer completed (code ' + info.code + ')', 'CONNECTION_LOST', info);
    var first = this._pending[0];
    var resumable = (this.options.reconnect && !this._manualClose && first &&
      (first.answerId || (this.options.resume && first.frame.session_id))) ? this._pending.shift() : null;
    this._rejectPending(lost);
    if (resumable) {
      resumable.resuming = true;
      if (!resumable.answerId) { // not begun here: any answer of its conversation newer than the last one seen
        var sid = resumable.frame.session_id, seen = this._cursors[sid];
        resumable.unstarted = { after: seen ? seen.answerId : null, error: lost };
        this.sessionId = sid; // the conversation the next socket resumes
      }
      this._pending.push(resumable);
    }

    // 1008 after a rejected token: retrying with the same token would loop forever.
    var willReconnect = !!restarting || (!this._manualClose && this.options.reconnect && !(this._authFailed && info.code === 1008));
    info.willReconnect = willReconnect;
    this._emit('close', info);
    if (restarting) return;
    if (willReconnect) {
      this._scheduleReconnect(info);
    } else {
      this._rejectOutbox(makeError('disconnected', 'DISCONNECTED', info));
      this._setState('closed', { code: info.code, reason: info.reason });
    }
  };

  P._scheduleReconnect = function (info) {
    if (this._manualClose || !this.options.reconnect) { this._setState('closed', info || {}); return; }
    // Exponential backoff with "equal jitter": half fixed, half random, so many
    // clients dropped by one server restart (close 1001) don't all return at once.
    var base = Math.min(this.options.maxBackoffMs, this.options.minBackoffMs * Math.pow(2, this._attempt));
    var delay = Math.round(base / 2 + Math.random() * base / 2);
    this._attempt++;
    var self = this;
    this._clearTimer('_reconnectTimer');
    this._reconnectTimer = setTimeout(function () {
      self._reconnectTimer = null;
      if (!self._manualClose) self._open();
    }, delay);
    var detail = { attempt: this._attempt, delayMs: delay, code: info && info.code, reason: info && info.reason };
    this._emit('reconnecting', detail);
    this._setState('reconnecting', detail);
  };

  /** Reconnect now, skipping any backoff delay (e.g. a "Reconnect" button). */
  P.reconnect = function () {
    this._attempt = 0;
    if (this.ws) {
      var ws = this.ws;
      try { ws.close(1000, 'reconnect'); } catch (e) { /* ignore */ }
      this._handleClose(ws, { code: 1000, reason: 'reconnect', wasClean: true }, true);
    }
    this._manualClose = false;
    this._authFailed = false;
    this._watchOnline();
    this._clearTimer('_reconnectTimer');
    this._open();
    return this;
  };

  /** Closes for good: no reconnection; pending and queued messages are rejected. */
  P.disconnect = function () {
    this._manualClose = true;
    this._clearTimer('_reconnectTimer');
    this._unwatchOnline();
    if (this.ws) {
      var ws = this.ws;
      try { ws.close(1000, 'client disconnect'); } catch (e) { /* ignore */ }
      this._handleClose(ws, { code: 1000, reason: 'client disconnect', wasClean: true });
    } else {
      this._rejectOutbox(makeError('disconnected', 'DISCONNECTED'));
      this._setState('closed', { code: 1000, reason: 'client disconnect' });
    }
  };

  // When the browser comes back online, waiting out a 10 s backoff is pointless.
  P._watchOnline = function () {
    if (this._onOnline || typeof global.addEventListener !== 'function') return;
    var self = this;
    this._onOnline = function () {
      if (self.state === 'reconnecting') { self._attempt = 0; self._clearTimer('_reconnectTimer'); self._open(); }
    };
    global.addEventListener('online', this._onOnline);
  };

  P._unwatchOnline = function () {
    if (this._onOnline && typeof global.removeEventListener === 'function') global.removeEventListener('online', this._onOnline);
    this._onOnline = null;
  };

  P._clearTimer = function (name) {
    if (this[name]) { clearTimeout(this[name]); this[name] = null; }
  };

  /** Changes the token; re-authenticates at once when connected. */
  // A token for another user is refused on an authenticated socket (USER_MISMATCH): the client then
  // reconnects, and the new socket authenticates with it (answers in flight are lost).
  P.setToken = function (token) {
    this.token = token || null;
    this._authFailed = false;
    if (this.token && this.isOpen()) this._sendAuth('set');
  };

  P.isOpen = function () { return !!this.ws && this.ws.readyState === 1; };
  P.isAuthenticated = function () { return this.state === 'authenticated'; };
  /** Number of messages sent or queued whose answer has not arrived yet. */
  P.pendingCount = function () { return this._pending.length + this._outbox.length; };

  // ---- frames -----------------------------------------------------------

  P._sendRaw = function (obj) {
    if (!this.isOpen()) return false;
    this.ws.send(JSON.stringify(obj));
    this._emit('send', obj);
    return true;
  };

  // The server answers auth frames in order, one auth_success or auth_error each.
  P._sendAuth = function (kind) {
    if (!this._sendRaw({ type: 'auth', token: this.token })) return false;
    this._authKinds.push(kind);
    return true;
  };

  // Asks options.refreshToken for a token and authenticates the open socket with it. One at a time;
  // a failure is reported as refresh_error and changes nothing else.
  P._refresh = function () {
    var fn = this.options.refreshToken;
    if (typeof fn !== 'function' || this._refreshing) return;
    var self = this, ws = this.ws;
    this._refreshing = true;
    var failed = function (e) {
      self._refreshing = false;
      self._emit('refresh_error', { error: String(e && e.message || e), code: (e && e.code) || 'REFRESH_FAILED' });
    };
    var pending;
    try { pending = Promise.resolve(fn.call(this)); } catch (e) { failed(e); return; }
    pending.then(function (token) {
      if (typeof token !== 'string' || !token) { failed(makeError('refreshToken gave no token', 'REFRESH_FAILED')); return; }
      self._refreshing = false;
      self.token = token;
      if (self.ws === ws && self.isOpen()) self._sendAuth('refresh');
    }, failed);
  };

  P._handleFrame = function (data) {
    this._emit('frame', data);
    switch (data.type) {
      case 'auth_success':
        this._authKinds.shift();
        this._authFailed = false;
        this._attempt = 0;
        this.user = data.user || null;
        this._setState('authenticated', { user: this.user });
        this._emit('auth', { user: this.user, message: data.message });
        this._callback('onAuth', [this.user]);
        // Resumed before the queued messages go out: the server answers in order.
        if (this._resumeOnAuth && this.options.resume && this.sessionId) this.resume(this.sessionId);
        this._resumeOnAuth = false;
        this._flushOutbox();
        break;
      case 'auth_error': {
        var kind = this._authKinds.shift() || 'connect';
        // A failed auth on an authenticated socket leaves it authenticated as before (server-side too).
        if (this.state === 'authenticated' && kind === 'refresh') {
          this._emit('auth_error', { message: data.message, code: data.code });
          this._emit('refresh_error', { error: data.message, code: data.code || 'AUTH_ERROR' });
          break;
        }
        if (this.state === 'authenticated' && kind === 'set' && data.code === 'USER_MISMATCH') {
          this.reconnect(); // another user: a socket of its own
          break;
        }
        this._authFailed = true;
        this.user = null;
        if (this.state === 'authenticated') this._setState('open');
        this._emit('auth_error', { message: data.message, code: data.code });
        this._callback('onError', [data.message, 'AUTH_ERROR']);
        // Queued messages would only earn AUTH_REQUIRED: fail them now, clearly.
        this._rejectOutbox(makeError(data.message || 'authentication failed', 'AUTH_ERROR', data));
        break;
      }
      case 'auth_expiring':
        this._emit('auth_expiring', { expires_in: data.expires_in });
        this._refresh();
        break;
      case 'progress': {
        var a = this._noteAnswer(data);
        this._emit('progress', { step: data.step, message: data.message, session_id: data.session_id, answer_id: data.answer_id, own: a.own });
        this._callback('onProgress', [data.step, data.message]);
        break;
      }
      case 'token': {
        var cur = this._answer || {};
        if (cur.sessionId && data.seq) this._cursors[cur.sessionId] = { answerId: cur.id, seq: data.seq };
        this._emit('token', { token: data.token, partial_response: data.partial_response, seq: data.seq,
          session_id: data.session_id, answer_id: cur.id, own: cur.own !== false });
        this._callback('onMessage', [data.token, data.partial_response]);
        break;
      }
      case 'complete': {
        var done = this._noteAnswer(data);
        this._answer = null;
        if (data.session_id && data.seq) this._cursors[data.session_id] = { answerId: data.answer_id, seq: data.seq };
        var result = { response: data.response, session_id: data.session_id, metadata: data.metadata || {},
          answer_id: data.answer_id, seq: data.seq, own: done.own };
        var entry = done.own ? this._pending.shift() : null;
        if (done.own && data.session_id) this.sessionId = data.session_id;
        this._emit('complete', result);
        this._callback('onComplete', [data.response, result.metadata, data]);
        if (entry) entry.resolve(result);
        break;
      }
      case 'resumed': {
        this._resuming = null;
        var waiting = this._pending[0] && this._pending[0].resuming ? this._pending[0] : null;
        if (waiting && waiting.unstarted) this._claimUnstarted(waiting, data);
        // Nothing more of our answer comes (it ended with a worker that died, or long ago), or a newer
        // answer of the conversation is what streams now: ours is in the session's history.
        else if (waiting && (!data.complete_follows || data.answer_id !== waiting.answerId))
          this._rejectResuming('the answer cannot be resumed; see the conversation\'s history', 'ANSWER_LOST', data);
        // An answer that follows but is not the one our message waited for answers none of our messages.
        if (waiting && this._pending[0] !== waiting && data.answer_id) this._foreign[data.answer_id] = true;
        if (data.answer_id && data.complete_follows) this._noteAnswer(data);
        this._emit('resumed', data);
        break;
      }
      case 'user_message':
        if (data.answer_id) this._foreign[data.answer_id] = true;
        this._noteAnswer(data);
        this._emit('user_message', { session_id: data.session_id, answer_id: data.answer_id, message: data.message });
        break;
      case 'error': {
        var detail = { error: data.error, code: data.code };
        this._emit('error', detail);
        this._callback('onError', [data.error, data.code]);
        if (this._resuming) { this._resumeFailed(data); break; }
        var e = this._takePendingFor(data.code);
        if (e) e.reject(makeError(data.error, data.code, data));
        break;
      }
      default:
        // Unknown frame types are ignored (forward compatibility); 'frame' listeners still see them.
        break;
    }
  };

  // The answer a frame belongs to; a new answer id starts a new answer. Ours unless another connection
  // asked it (user_message) or it is not the one our resumed message waits for.
  P._noteAnswer = function (data) {
    var id = data.answer_id;
    if (!id) return this._answer || { own: true };
    if (!this._answer || this._answer.id !== id) {
      var own = !this._foreign[id];
      var first = this._pending[0];
      if (own && first && first.resuming && first.answerId !== id) own = false; // a newer answer than ours
      if (own && first && !first.answerId) first.answerId = id;
      this._answer = { id: id, sessionId: data.session_id, own: own };
      if (own && data.session_id) this.sessionId = data.session_id;
      if (data.session_id && (!this._cursors[data.session_id] || this._cursors[data.session_id].answerId !== id))
        this._cursors[data.session_id] = { answerId: id, seq: 0 };
    }
    return this._answer;
  };

  // The resume of a message whose answer had not begun when its socket closed: the conversation's
  // held answer is ours when it is newer than the last one this client saw of the conversation and
  // the rest of it follows; otherwise the server never took the message, and CONNECTION_LOST says
  // it may be sent again.
  P._claimUnstarted = function (waiting, data) {
    var u = waiting.unstarted;
    waiting.unstarted = null;
    if (data.answer_id && data.complete_follows && data.answer_id !== u.after) waiting.answerId = data.answer_id;
    else this._rejectResuming(u.error.message, 'CONNECTION_LOST', u.error.detail);
  };

  // A resumed answer that will not complete: its promise fails (the session's history has it, if anything).
  P._rejectResuming = function (message, code, detail) {
    var first = this._pending[0];
    if (first && first.resuming) { this._pending.shift(); first.reject(makeError(message, code, detail)); }
  };

  // The resume was refused: OVERLOADED (no worker reachable yet) is retried; anything else ends it.
  P._resumeFailed = function (data) {
    var r = this._resuming;
    this._resuming = null;
    if (data.code === 'OVERLOADED' && r.attempts < this.options.resumeRetries) {
      var self = this, ws = this.ws;
      setTimeout(function () { if (self.ws === ws && self.isOpen()) self.resume(r.sessionId, r.attempts + 1); },
        Math.min(this.options.maxBackoffMs, this.options.minBackoffMs * Math.pow(2, r.attempts)));
      return;
    }
    if (data.code === 'SESSION_FORBIDDEN') delete this._cursors[r.sessionId];
    var first = this._pending[0];
    // A new conversation's message the server never took: the user has no such session yet.
    if (first && first.resuming && first.unstarted && data.code === 'SESSION_FORBIDDEN') {
      var u = first.unstarted;
      first.unstarted = null;
      this._rejectResuming(u.error.message, 'CONNECTION_LOST', u.error.detail);
      return;
    }
    this._rejectResuming(data.error, data.code, data);
  };

  // Picks the pending message an error answers. Normally the oldest one (FIFO),
  // but a server may validate a message the moment it arrives, before earlier
  // queued answers finish: an EMPTY_MESSAGE then belongs to the first empty
  // message, whatever its position.
  P._takePendingFor = function (code) {
    if (!this._pending.length || UNRELATED_CODES[code]) return null;
    var idx = 0;
    if (code === 'EMPTY_MESSAGE') {
      for (var i = 0; i < this._pending.length; i++) {
        if (!String(this._pending[i].frame.message || '').trim()) { idx = i; break; }
      }
    }
    return this._pending.splice(idx, 1)[0];
  };

  P._rejectPending = function (err) {
    var list = this._pending; this._pending = [];
    for (var i = 0; i < list.length; i++) list[i].reject(err);
  };

  P._rejectOutbox = function (err) {
    var list = this._outbox; this._outbox = [];
    for (var i = 0; i < list.length; i++) list[i].reject(err);
  };

  // Sends what was queued while connecting; called once we may talk (authenticated, or open without a token).
  P._flushOutbox = function () {
    while (this._outbox.length && this.isOpen()) {
      var entry = this._outbox.shift();
      this._pending.push(entry);
      this._sendRaw(entry.frame);
    }
  };

  // ---- public API -------------------------------------------------------

  /**
   * Sends a chat message. Returns a Promise of {response, session_id, metadata}
   * (resolved on `complete`, including finish_reason "cancelled"), rejected with
   * an Error whose .code is the server's code (EMPTY_MESSAGE, RATE_LIMITED, ...)
   * or CONNECTION_LOST / DISCONNECTED / AUTH_ERROR / NOT_CONNECTED.
   *
   * opts.sessionId: undefined -> continue the last conversation (this.sessionId);
   *                 null or '' -> start a new one (its id a fresh UUID, chosen here);
   *                 a string -> that session.
   * opts.customerId, opts.partial: passed through when given.
   * While (re)connecting the message is queued and sent once authenticated.
   */
  P.sendMessage = function (text, opts) {
    if (typeof opts === 'string' || opts === null) opts = { sessionId: opts }; // spec: sendMessage(message, sessionId)
    opts = opts || {};
    var frame = { type: 'message', message: text == null ? '' : String(text) };
    var sid = opts.sessionId !== undefined ? opts.sessionId : this.sessionId;
    if (!sid) sid = newSessionId();
    if (sid) frame.session_id = String(sid);
    if (opts.customerId) frame.customer_id = String(opts.customerId);
    if (typeof opts.partial === 'boolean') frame.partial = opts.partial;

    var self = this;
    return new Promise(function (resolve, reject) {
      var entry = { frame: frame, resolve: resolve, reject: reject };
      // With a rejected token we still send: the server's own AUTH_REQUIRED is the honest answer.
      var mayTalk = self.isOpen() && (self.state === 'authenticated' || !self.token || self._authFailed);
      if (mayTalk) {
        self._pending.push(entry);
        self._sendRaw(frame);
      } else if (!self._manualClose && (self.ws || self._reconnectTimer)) {
        self._outbox.push(entry);
      } else {
        reject(makeError('not connected: call connect() first', 'NOT_CONNECTED'));
      }
    });
  };

  /** Asks the server to stop the answer in flight (it then completes with finish_reason "cancelled").
   *  With a sessionId: that conversation's answer, for every tab that follows it. */
  P.cancel = function (sessionId) {
    return this._sendRaw(sessionId ? { type: 'cancel', session_id: String(sessionId) } : { type: 'cancel' });
  };

  /** Follows a conversation from now on (a second tab, a page reload): what this client missed of its
   *  answer in flight (or completed within the server's retention window) arrives first, then every
   *  later answer of it, also those asked from other connections. Done by itself after a reconnect. */
  P.resume = function (sessionId, attempts) {
    if (!sessionId) return false;
    this.sessionId = String(sessionId);
    var c = this._cursors[this.sessionId] || {};
    var frame = { type: 'resume', session_id: this.sessionId };
    if (c.seq) frame.last_seq = c.seq;
    if (c.answerId) frame.answer_id = c.answerId;
    this._resuming = { sessionId: this.sessionId, attempts: attempts || 0 };
    if (this._sendRaw(frame)) return true;
    this._resuming = null;
    return false;
  };

  /** Forget the remembered session: the next message starts a new conversation. */
  P.resetSession = function () { this.sessionId = null; };

  ChatWebSocket.deriveUrl = deriveUrl;
  global.ChatWebSocket = ChatWebSocket;
  if (typeof module === 'object' && module && module.exports) module.exports = ChatWebSocket;
})(typeof window !== 'undefined' ? window : (typeof self !== 'undefined' ? self : this));
