// weir-client.js — a browser client for WebSocket APIs behind weir.
//
// A plain ES module with no dependencies and no build step:
//
//     import { WeirClient } from './weir-client.js';
//     const client = new WeirClient('wss://api.example.com/chat/1.0', {
//         auth: 'ticket', getToken: () => myIdp.accessToken(),
//     });
//     client.addEventListener('message', (ev) => show(ev.data));
//     client.connect();
//     client.send('hello');
//
// It authenticates the handshake the two ways a browser can (a one-time
// ticket fetched with the bearer token, or the token in a
// Sec-WebSocket-Protocol entry), refreshes the token in band before it
// expires, reconnects with exponential backoff and jitter after abnormal
// closes, queues sends (bounded) while it is not connected, and turns weir's
// error JSON into 'problem' events. README.md beside this file describes the
// options, the events and what the client does not do.

const DEFAULTS = {
  auth: 'ticket',                 // 'ticket' | 'subprotocol' | 'none'
  getToken: null,                 // async () => access token (string)
  protocols: [],                  // the application's own subprotocols
  subprotocolPrefix: 'bearer.',   // the token entry is prefix + token
  ticketPath: '/ticket',          // appended to the WebSocket URL's path
  ticketTimeout: 10000,           // ms for the ticket request
  refresh: true,                  // refresh the token in band
  refreshBefore: 30,              // s before a known expiry to refresh on our own
  maxQueue: 1000,                 // messages kept while not open
  binaryType: 'blob',
  messageTypes: { auth: 'auth', expiring: 'auth-expiring' },
};

const RECONNECT_DEFAULTS = {
  initialDelay: 500,              // ms before the first attempt
  maxDelay: 30000,                // ms, cap of the exponential
  factor: 2,                      // growth per attempt
  jitter: 0.5,                    // proportional: delay × (1 − jitter × random); 1 is full jitter
  maxAttempts: Infinity,          // consecutive attempts before giving up
  resetAfter: 5000,               // ms a connection must stay open to reset the backoff
  // Close codes after which the client reconnects (network errors arrive as 1006).
  codes: [1001, 1006, 1011, 1012, 1013, 1014],
};

const OPEN = 1;
const CONNECTING = 0;
const MAX_TIMER = 2147483647;      // setTimeout's largest delay
const CONTROL_MAX = 65536;         // longer text messages are never weir's control messages
// RFC 6455 4.1: a subprotocol is an RFC 2616 token.
const TOKEN_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** An error the client reports in an 'error' event (its detail.error). */
export class WeirClientError extends Error {
  constructor(message, { fatal = false, status = null, problem = null } = {}) {
    super(message);
    this.name = 'WeirClientError';
    this.fatal = fatal;         // the client will not retry after it
    this.status = status;       // HTTP status of the ticket endpoint, when it answered
    this.problem = problem;     // weir's problem, when its body was the error JSON
  }
}

/** weir's error JSON (an object) → {type, code, message, timestamp}; null if it is not one. */
export function parseProblem(obj) {
  if (!obj || typeof obj !== 'object' || obj.type !== 'error') return null;
  const e = obj.error;
  if (!e || typeof e !== 'object' || typeof e.type !== 'string') return null;
  return {
    type: e.type,
    code: typeof e.code === 'number' ? e.code : null,
    message: typeof e.message === 'string' ? e.message : '',
    timestamp: typeof obj.timestamp === 'string' ? obj.timestamp : null,
  };
}

/** The `exp` of a JWT, in ms since the epoch, read without verifying anything; null if none. */
export function jwtExpiry(token) {
  const parts = String(token).split('.');
  if (parts.length !== 3) return null;
  try {
    let s = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    while (s.length % 4) s += '=';
    const bytes = Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return typeof claims.exp === 'number' && Number.isFinite(claims.exp) ? claims.exp * 1000 : null;
  } catch (_) {
    return null;
  }
}

/** The ticket endpoint of a WebSocket URL: ws://h/echo/1.0?x=1 → http://h/echo/1.0/ticket. */
export function ticketUrl(wsUrl, ticketPath = DEFAULTS.ticketPath) {
  const u = new URL(wsUrl);
  const scheme = u.protocol === 'wss:' ? 'https:' : 'http:';
  const path = u.pathname.replace(/\/+$/, '');
  const tail = ticketPath.startsWith('/') ? ticketPath : '/' + ticketPath;
  return scheme + '//' + u.host + path + tail;
}

/** URL with ?ticket=T added; the query it had is kept byte for byte. */
function withTicket(wsUrl, ticket) {
  const u = new URL(wsUrl);
  const param = 'ticket=' + encodeURIComponent(ticket);
  u.search = u.search.length > 1 ? u.search + '&' + param : '?' + param;
  return u.href;
}

/** ws(s) URL from what the app gave (relative URLs and http(s) are resolved against the page). */
function wsUrlOf(url) {
  const base = typeof location !== 'undefined' ? location.href : undefined;
  const u = new URL(String(url), base);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') {
    throw new TypeError('WeirClient: the URL must be ws:, wss:, http: or https:, not ' + u.protocol);
  }
  u.hash = '';
  return u.href;
}

export class WeirClient extends EventTarget {
  /**
   * @param {string} url  the API's WebSocket URL (ws:, wss:, or http(s) / relative, resolved against the page)
   * @param {object} options  see README.md; getToken is required unless auth is 'none'
   */
  constructor(url, options = {}) {
    super();
    const o = { ...DEFAULTS, ...options };
    o.messageTypes = { ...DEFAULTS.messageTypes, ...(options.messageTypes || {}) };
    o.protocols = o.protocols == null ? [] : [].concat(o.protocols);
    o.reconnect = options.reconnect === false ? null : { ...RECONNECT_DEFAULTS, ...(options.reconnect || {}) };
    if (!['ticket', 'subprotocol', 'none'].includes(o.auth)) {
      throw new TypeError("WeirClient: auth must be 'ticket', 'subprotocol' or 'none'");
    }
    if (o.auth !== 'none' && typeof o.getToken !== 'function') {
      throw new TypeError(`WeirClient: auth '${o.auth}' needs options.getToken, an async function returning the access token`);
    }
    if (o.auth === 'subprotocol') {
      if (o.protocols.length === 0) {
        throw new TypeError(
          "WeirClient: auth 'subprotocol' needs at least one application protocol in options.protocols " +
          '(one the backend accepts): weir removes the token entry and never names it in its answer, ' +
          'and a browser fails a handshake that offered protocols when the answer names none');
      }
      if (o.protocols.some((p) => String(p).startsWith(o.subprotocolPrefix))) {
        throw new TypeError('WeirClient: an application protocol must not start with the token prefix ' + o.subprotocolPrefix);
      }
    }
    if (!(o.maxQueue >= 0)) throw new TypeError('WeirClient: maxQueue must be a number ≥ 0');
    this._url = wsUrlOf(url);
    this._o = o;
    this._state = 'idle';       // idle | connecting | open | reconnecting | closing | closed
    this._ws = null;
    this._gen = 0;              // bumped per attempt: late callbacks of an older one are ignored
    this._queue = [];
    this._unconfirmed = null;   // sent on this socket before any backend message: see _closed
    this._attempt = 0;          // reconnect attempts since the last stable connection
    this._userClosed = false;
    this._timers = { reconnect: null, stable: null, refresh: null };
    this._abort = null;         // AbortController of a ticket request in flight
    this._exp = null;           // ms: when the credential of this connection expires, if known
    this._refreshing = null;    // the refresh in progress (a promise)
    this._lastProblem = null;   // the last problem on this socket, reported again with its close
  }

  /** 'idle', 'connecting', 'open', 'reconnecting', 'closing' or 'closed'. */
  get state() { return this._state; }
  /** The WebSocket URL (without any ticket). */
  get url() { return this._url; }
  /** The subprotocol the server chose ('' when none or not open). */
  get protocol() { return this._ws ? this._ws.protocol : ''; }
  /** Messages waiting for a connection. */
  get queued() { return this._queue.length; }
  /** Reconnect attempts since the last connection that stayed open. */
  get attempt() { return this._attempt; }

  /** Start connecting (no-op while connecting or connected). Returns this. */
  connect() {
    if (['connecting', 'open', 'reconnecting', 'closing'].includes(this._state)) return this;
    this._userClosed = false;
    this._attempt = 0;
    this._start();
    return this;
  }

  /**
   * Send a message (string, Blob, ArrayBuffer or view). While the client is
   * not open (idle, connecting, reconnecting) the message is queued and sent,
   * in order, on the next open. Returns false (and emits 'error') when the
   * queue is full or the client was closed.
   */
  send(data) {
    if (this._state === 'open' && this._ws && this._ws.readyState === OPEN) {
      this._ws.send(data);
      this._sentUnconfirmed(data);
      return true;
    }
    if (this._state === 'closed' || this._state === 'closing') {
      this._emitError(new WeirClientError('send on a closed client: message dropped', { fatal: true }));
      return false;
    }
    if (this._queue.length >= this._o.maxQueue) {
      this._emitError(new WeirClientError(`send queue full (${this._o.maxQueue} messages): message dropped`));
      return false;
    }
    this._queue.push(data);
    return true;
  }

  /**
   * Close for good: no reconnect afterwards, queued messages are dropped.
   * The 'close' event follows (at once when no socket is open).
   */
  close(code = 1000, reason = '') {
    this._userClosed = true;
    this._clearTimers();
    if (this._abort) this._abort.abort();
    this._queue.length = 0;
    const ws = this._ws;
    if (ws && (ws.readyState === OPEN || ws.readyState === CONNECTING)) {
      this._setState('closing');
      try {
        ws.close(code, reason);
      } catch (_) {
        ws.close();         // a code the browser does not let a page send
      }
      return;
    }
    if (ws) return;             // already closing: its close event finishes
    if (this._state === 'idle' || this._state === 'closed') return;
    this._gen++;                // a token or ticket still on its way is forgotten
    this._finish({ code, reason, wasClean: true, problem: null }, false);
  }

  /**
   * Fetch a token with getToken() and send it in band ({"type":"auth","token":…}).
   * Resolves true when a token was sent; weir's answer comes as an 'auth' or
   * 'problem' event. Called by the client itself (see options.refresh).
   */
  refresh() {
    if (this._o.auth === 'none') return Promise.resolve(false);
    if (this._refreshing) return this._refreshing;
    const ws = this._ws;
    if (!ws || ws.readyState !== OPEN) return Promise.resolve(false);
    this._refreshing = (async () => {
      try {
        const token = await this._token();
        if (this._ws !== ws || ws.readyState !== OPEN) return false;
        ws.send(JSON.stringify({ type: this._o.messageTypes.auth, token }));
        return true;
      } catch (err) {
        this._emitError(err instanceof WeirClientError ? err
          : new WeirClientError('getToken failed during refresh: ' + describe(err)));
        return false;
      } finally {
        this._refreshing = null;
      }
    })();
    return this._refreshing;
  }

  // ---- one connection attempt --------------------------------------------

  async _start() {
    const gen = ++this._gen;
    this._setState('connecting');
    const o = this._o;
    let target = this._url;
    const protocols = o.protocols.slice();
    let token = null;
    let ws;
    try {
      if (o.auth !== 'none') {
        token = await this._token();
        if (gen !== this._gen) return;
        if (o.auth === 'ticket') {
          const ticket = await this._fetchTicket(token, gen);
          if (gen !== this._gen) return;
          target = withTicket(this._url, ticket);
        } else {
          const entry = o.subprotocolPrefix + token;
          if (!TOKEN_CHARS.test(entry)) {
            throw new WeirClientError('the token holds characters a subprotocol cannot carry', { fatal: true });
          }
          protocols.push(entry);
        }
      }
      ws = new WebSocket(target, protocols);
    } catch (err) {
      if (gen !== this._gen) return;
      const e = err instanceof WeirClientError ? err : new WeirClientError(describe(err));
      this._emitError(e);
      const code = e.status === 401 || e.status === 403 ? 1008 : 1006;
      this._finish({ code, reason: e.message, wasClean: false, problem: e.problem }, !e.fatal);
      return;
    }
    this._ws = ws;
    this._lastProblem = null;
    ws.binaryType = o.binaryType;
    ws.onopen = () => { if (gen === this._gen) this._opened(ws, token); };
    ws.onmessage = (ev) => { if (gen === this._gen) this._received(ev.data); };
    ws.onerror = () => {
      if (gen === this._gen) this._emitError(new WeirClientError('WebSocket error (the browser gives no detail)'));
    };
    ws.onclose = (ev) => { if (gen === this._gen) this._closed(ev); };
  }

  /** getToken(), checked: a non-empty string, or a fatal error. */
  async _token() {
    let token;
    try {
      token = await this._o.getToken();
    } catch (err) {
      throw new WeirClientError('getToken failed: ' + describe(err));
    }
    if (typeof token !== 'string' || token === '') {
      throw new WeirClientError('getToken returned no token', { fatal: true });
    }
    return token;
  }

  async _fetchTicket(token, gen) {
    const ctrl = new AbortController();
    this._abort = ctrl;
    const timer = setTimeout(() => ctrl.abort(), this._o.ticketTimeout);
    let res, body = null;
    try {
      res = await fetch(ticketUrl(this._url, this._o.ticketPath), {
        method: 'POST',
        headers: { Authorization: 'Bearer ' + token },
        cache: 'no-store',
        credentials: 'omit',
        signal: ctrl.signal,
      });
      try { body = await res.json(); } catch (_) { body = null; }
    } catch (err) {
      throw new WeirClientError('ticket request failed: ' + describe(err));
    } finally {
      clearTimeout(timer);
      if (this._abort === ctrl) this._abort = null;
    }
    if (res.ok && body && typeof body.ticket === 'string' && body.ticket !== '') return body.ticket;
    const problem = parseProblem(body);
    if (problem && gen === this._gen) this._emit('problem', problem);
    // 4xx other than 408 and 429 will not heal by retrying the same request
    const fatal = res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429;
    const what = res.ok ? 'answered without a ticket' : `answered ${res.status}`;
    throw new WeirClientError(`ticket endpoint ${what}` + (problem ? ` (${problem.type})` : ''),
      { fatal, status: res.status, problem });
  }

  _opened(ws, token) {
    this._setState('open');
    this._timers.stable = setTimeout(() => { this._attempt = 0; }, this._reconnectOpt('resetAfter', 5000));
    this._unconfirmed = [];
    while (this._queue.length > 0 && ws.readyState === OPEN) {
      const data = this._queue.shift();
      ws.send(data);
      this._sentUnconfirmed(data);
    }
    this._exp = token ? jwtExpiry(token) : null;
    this._scheduleRefresh();
    this._emit('open', { protocol: ws.protocol, attempt: this._attempt });
  }

  /**
   * weir answers 101 before it knows the backend is gone, then sends
   * /problems/bad-gateway and closes 1014: what was sent on that socket
   * before any backend message never reached a backend. Those messages are
   * kept (as many as maxQueue) until a backend message confirms the socket.
   */
  _sentUnconfirmed(data) {
    if (this._unconfirmed === null) return;
    if (this._unconfirmed.length >= this._o.maxQueue) this._unconfirmed = null;   // too many to take back
    else this._unconfirmed.push(data);
  }

  _received(data) {
    if (typeof data === 'string' && data.length <= CONTROL_MAX && data.charCodeAt(0) === 123 /* { */) {
      let obj = null;
      try { obj = JSON.parse(data); } catch (_) { obj = null; }
      if (obj && this._control(obj)) return;
    }
    this._unconfirmed = null;     // a backend is there: what was sent reached it
    this.dispatchEvent(new MessageEvent('message', { data }));
  }

  /** weir's own messages: consumed here (true), never delivered as app messages. */
  _control(obj) {
    const problem = parseProblem(obj);
    if (problem) {
      this._lastProblem = problem;
      this._emit('problem', problem);
      return true;
    }
    if (this._o.auth === 'none') return false;
    const types = this._o.messageTypes;
    if (obj.type === types.expiring && typeof obj.expires_in === 'number') {
      if (this._exp == null) this._exp = Date.now() + obj.expires_in * 1000;
      this._emit('expiring', { expiresIn: obj.expires_in });
      if (this._o.refresh) this.refresh();
      return true;
    }
    if (obj.type === types.auth && typeof obj.status === 'string') {
      if (obj.status === 'ok') {
        const at = typeof obj.expires_at === 'string' ? Date.parse(obj.expires_at) : NaN;
        const expiresAt = Number.isFinite(at) ? new Date(at) : null;
        const before = this._exp;
        if (expiresAt) this._exp = at;
        this._emit('auth', { expiresAt });
        // only a later expiry reschedules: a getToken that hands back the
        // same token must not make us refresh in a loop
        if (expiresAt && (before == null || at > before)) this._scheduleRefresh();
        else this._clearTimer('refresh');
      } else {
        this._emitError(new WeirClientError('refresh answered with status ' + obj.status));
      }
      return true;
    }
    return false;
  }

  _closed(ev) {
    this._ws = null;
    this._clearTimer('stable');
    this._clearTimer('refresh');
    const problem = this._lastProblem;
    this._lastProblem = null;
    const lost = this._unconfirmed;
    this._unconfirmed = null;
    if (lost && lost.length > 0 && ev.code === 1014 && problem && problem.type === '/problems/bad-gateway') {
      // never delivered: first in line again, before what was queued since
      const back = lost.concat(this._queue);
      this._queue = back.slice(0, this._o.maxQueue);
      if (back.length > this._queue.length) {
        this._emitError(new WeirClientError(
          `send queue full (${this._o.maxQueue} messages): ${back.length - this._queue.length} message(s) dropped`));
      }
    }
    const codes = this._reconnectOpt('codes', []);
    this._finish({ code: ev.code, reason: ev.reason, wasClean: ev.wasClean, problem }, codes.includes(ev.code));
  }

  /** The end of a connection (or attempt): 'close', then a reconnect when RETRYABLE and allowed. */
  _finish(info, retryable) {
    const r = this._o.reconnect;
    const willReconnect = !this._userClosed && retryable && !!r && this._attempt < r.maxAttempts;
    this._exp = null;
    if (!willReconnect) this._queue.length = 0;
    this._setState(willReconnect ? 'reconnecting' : 'closed');
    this._emit('close', { ...info, willReconnect });
    // a close listener may have called close() or connect()
    if (!willReconnect || this._userClosed || this._state !== 'reconnecting') return;
    this._attempt++;
    const delay = this._backoff(this._attempt);
    this._emit('reconnecting', { attempt: this._attempt, delay });
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      if (this._state === 'reconnecting' && !this._userClosed) this._start();
    }, delay);
  }

  /** ms before attempt N: min(maxDelay, initialDelay × factor^(N−1)) × (1 − jitter × random). */
  _backoff(n) {
    const r = this._o.reconnect;
    const base = Math.min(r.maxDelay, r.initialDelay * Math.pow(r.factor, n - 1));
    const jitter = Math.min(Math.max(r.jitter, 0), 1);
    return Math.round(base * (1 - jitter * Math.random()));
  }

  _scheduleRefresh() {
    this._clearTimer('refresh');
    if (!this._o.refresh || this._o.auth === 'none' || this._exp == null) return;
    const left = this._exp - Date.now();
    if (left <= 0) return;
    // refreshBefore seconds early, or half-way for a token shorter than twice that
    const delay = Math.max(left - this._o.refreshBefore * 1000, left / 2);
    this._timers.refresh = setTimeout(() => {
      this._timers.refresh = null;
      this.refresh();
    }, Math.min(delay, MAX_TIMER));
  }

  // ---- small things ---------------------------------------------------------

  _reconnectOpt(name, dflt) {
    return this._o.reconnect ? this._o.reconnect[name] : dflt;
  }

  _setState(s) { this._state = s; }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _emitError(error) {
    this._emit('error', { error });
  }

  _clearTimer(name) {
    if (this._timers[name] !== null) clearTimeout(this._timers[name]);
    this._timers[name] = null;
  }

  _clearTimers() {
    for (const name of Object.keys(this._timers)) this._clearTimer(name);
  }
}

function describe(err) {
  return err && err.message ? err.message : String(err);
}
