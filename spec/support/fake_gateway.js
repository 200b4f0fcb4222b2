#!/usr/bin/env node
// fake_gateway.js — a stand-in for weir's browser-facing auth contract, so
// the browser client (clients/js/weir-client.js) can be tested on its own.
//
// Usage: node fake_gateway.js '{"port":0,"warn_before":1,"protocols":["chat.v1"]}'
// Prints {"listening":PORT} once it listens on 127.0.0.1:PORT. It is the
// gateway and the echo backend in one process; it is not weir and checks
// nothing weir does beyond the contract below.
//
// Options: port (0: any), protocols (subprotocols the "backend" accepts;
// default ["chat.v1"]), prefix (token entry prefix, "bearer."), ticket_ttl
// (s, 30), warn_before (s before a token's expiry to send auth-expiring; 0:
// never; a warn_before query parameter of the WebSocket URL overrides it
// for that connection), auth_type ("auth": the in-band message type), expiring_type
// ("auth-expiring").
//
// The contract (what weir implements):
// - Tokens: minted here by GET /__token?ttl=S&sub=NAME&opaque=1 →
//   {"token":…,"expires_at":RFC3339}. A token is JWT-shaped (its payload has
//   sub, exp, jti; the signature is fake) unless opaque=1. Expiry is exp,
//   whole seconds.
// - POST /<path>/ticket with Authorization: Bearer <token> → 200
//   {"ticket":…,"expires_in":ticket_ttl}, or 401 (missing, unknown, expired
//   token) / 403 (revoked) with the error JSON. CORS: every answer carries
//   Access-Control-Allow-Origin (the request's Origin); OPTIONS is the
//   preflight. A ticket is single-use, bound to <path>, expires.
// - Upgrade of <path>?ticket=T (ticket), or with a Sec-WebSocket-Protocol
//   entry <prefix><token> (subprotocol; the entry is never answered back),
//   or of a path under /open/ (no auth). Anything else: 401 + error JSON.
//   The answer names the first offered protocol in `protocols`, or none.
// - In band: auth-expiring {"type":"auth-expiring","expires_in":N} warn_before
//   seconds before expiry; {"type":"auth","token":T} is consumed, checked
//   (known, unexpired, unrevoked, same sub) and answered
//   {"type":"auth","status":"ok","expires_at":…} or the error JSON (code
//   1008, the socket stays open). At expiry: /problems/token-expired + close
//   1008. Other messages are echoed as they came.
//
// Control (plain HTTP on the same port, CORS too; P: a WebSocket path):
//   GET /__events                 every connection and ticket record (no secrets)
//   GET /__reset                  forget the records
//   GET /__drop?path=P            end matching connections' TCP without a close frame (→ 1006)
//   GET /__close?path=P&code=C&reason=R   close them with that code
//   GET /__refuse?path=P&n=N      destroy the next N upgrades of P (→ 1006)
//   GET /__badgateway?path=P&n=N  the next N upgrades of P go as weir's do when
//                                 the backend cannot be reached: 101, then the
//                                 /problems/bad-gateway JSON and close 1014;
//                                 what the client sends on them is recorded
//                                 in `lost`, never echoed
//   GET /__revoke?sub=NAME        revoke that subject's tokens: open sockets get
//                                 /problems/token-revoked + close 1008
'use strict';

const http = require('http');
const crypto = require('crypto');
const { WebSocketServer } = require('ws');

const opts = JSON.parse(process.argv[2] || '{}');
const PROTOCOLS = opts.protocols || ['chat.v1'];
const PREFIX = opts.prefix || 'bearer.';
const TICKET_TTL = opts.ticket_ttl || 30;
const WARN_BEFORE = opts.warn_before === undefined ? 1 : opts.warn_before;
const AUTH_TYPE = opts.auth_type || 'auth';
const EXPIRING_TYPE = opts.expiring_type || 'auth-expiring';

const tokens = new Map();       // token → {seq, sub, exp (ms), revoked}
const tickets = new Map();      // ticket → {seq, path, token, expires (ms), used}
let tokenSeq = 0, ticketSeq = 0, connSeq = 0;
let records = { connections: [], tickets: [], preflights: 0 };
const live = new Set();         // open {ws, rec, cred, timers}
const refuse = new Map();       // path → upgrades still to destroy
const badGateway = new Map();   // path → upgrades still to fail with 1014 after the 101

function rfc3339(ms) {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function problem(type, code, message) {
  return JSON.stringify({ type: 'error', error: { type, code, message }, timestamp: rfc3339(Date.now()) });
}

function b64url(s) {
  return Buffer.from(s).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

function mint(ttl, sub, opaque) {
  const seq = ++tokenSeq;
  const exp = Math.ceil((Date.now() + ttl * 1000) / 1000);
  const jti = crypto.randomBytes(8).toString('hex');
  const token = opaque
    ? 'opaque-' + seq + '-' + crypto.randomBytes(12).toString('hex')
    : b64url(JSON.stringify({ alg: 'none', typ: 'JWT' })) + '.' +
      b64url(JSON.stringify({ sub, exp, jti })) + '.' + b64url('fake-signature-' + seq);
  tokens.set(token, { seq, sub, exp: exp * 1000, revoked: false });
  return { token, expires_at: rfc3339(exp * 1000), seq };
}

/** The token's record when it is usable; otherwise {problem, status}. */
function check(token) {
  const t = token && tokens.get(token);
  if (!t) return { status: 401, type: '/problems/unauthorized', message: 'invalid token' };
  if (t.revoked) return { status: 403, type: '/problems/token-revoked', message: 'token revoked' };
  if (t.exp <= Date.now()) return { status: 401, type: '/problems/token-expired', message: 'token expired' };
  return { ok: t };
}

function cors(req, res) {
  res.setHeader('Access-Control-Allow-Origin', req.headers.origin || '*');
  res.setHeader('Vary', 'Origin');
}

function send(res, status, body) {
  const s = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
  res.end(s);
}

function matching(path) {
  return [...live].filter((c) => !path || c.rec.path === path);
}

function onRequest(req, res) {
  const u = new URL(req.url, 'http://x');
  const q = u.searchParams;
  cors(req, res);
  if (req.method === 'OPTIONS') {
    records.preflights++;
    res.setHeader('Access-Control-Allow-Methods', 'POST, GET, OPTIONS');
    res.setHeader('Access-Control-Allow-Headers', 'Authorization, Content-Type');
    res.setHeader('Access-Control-Max-Age', '0');
    res.writeHead(204);
    return res.end();
  }
  if (u.pathname === '/__events') return send(res, 200, records);
  if (u.pathname === '/__reset') {
    records = { connections: [], tickets: [], preflights: 0 };
    return send(res, 200, {});
  }
  if (u.pathname === '/__token') {
    return send(res, 200, mint(Number(q.get('ttl') || 60), q.get('sub') || 'alice', q.get('opaque') === '1'));
  }
  if (u.pathname === '/__drop') {
    const cs = matching(q.get('path'));
    for (const c of cs) c.ws.terminate();
    return send(res, 200, { dropped: cs.length });
  }
  if (u.pathname === '/__close') {
    const cs = matching(q.get('path'));
    for (const c of cs) c.ws.close(Number(q.get('code') || 1000), q.get('reason') || '');
    return send(res, 200, { closed: cs.length });
  }
  if (u.pathname === '/__refuse') {
    refuse.set(q.get('path') || '*', Number(q.get('n') || 1));
    return send(res, 200, {});
  }
  if (u.pathname === '/__badgateway') {
    badGateway.set(q.get('path') || '*', Number(q.get('n') || 1));
    return send(res, 200, {});
  }
  if (u.pathname === '/__revoke') {
    const sub = q.get('sub') || 'alice';
    for (const t of tokens.values()) if (t.sub === sub) t.revoked = true;
    let n = 0;
    for (const c of live) {
      if (c.cred && c.cred.sub === sub) {
        n++;
        endWith(c, '/problems/token-revoked', 'token revoked');
      }
    }
    return send(res, 200, { revoked: n });
  }
  if (req.method === 'POST' && u.pathname.endsWith('/ticket')) return issueTicket(req, res, u);
  send(res, 404, problem('/problems/not-found', 404, 'not found'));
}

function issueTicket(req, res, u) {
  const path = u.pathname.slice(0, -'/ticket'.length) || '/';
  const rec = { seq: null, path, status: null, origin: req.headers.origin || null, used: false };
  records.tickets.push(rec);
  req.resume();
  const m = /^Bearer (.+)$/.exec(req.headers.authorization || '');
  const c = m ? check(m[1]) : { status: 401, type: '/problems/unauthorized', message: 'no bearer token' };
  rec.status = c.ok ? 200 : c.status;
  if (!c.ok) return send(res, c.status, problem(c.type, c.status, c.message));
  const ticket = crypto.randomBytes(24).toString('base64url');
  rec.seq = ++ticketSeq;
  rec.token_seq = c.ok.seq;
  tickets.set(ticket, { rec, path, token: m[1], expires: Date.now() + TICKET_TTL * 1000 });
  send(res, 200, { ticket, expires_in: TICKET_TTL });
}

function refuseUpgrade(socket, status, type, message) {
  const body = problem(type, status, message);
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}

const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: false,
  handleProtocols: (_offered, req) => req.chosenProtocol || false,
});

function onUpgrade(req, socket, head) {
  const u = new URL(req.url, 'http://x');
  const path = u.pathname;
  for (const key of [path, '*']) {
    const n = refuse.get(key) || 0;
    if (n > 0) {
      refuse.set(key, n - 1);
      records.connections.push({ id: ++connSeq, path, refused: true });
      return socket.destroy();
    }
  }
  const offered = (req.headers['sec-websocket-protocol'] || '').split(',').map((s) => s.trim()).filter(Boolean);
  const app = offered.filter((p) => !p.startsWith(PREFIX));
  const entries = offered.filter((p) => p.startsWith(PREFIX));
  const warnBefore = u.searchParams.has('warn_before') ? Number(u.searchParams.get('warn_before')) : WARN_BEFORE;
  const rec = {
    id: ++connSeq, path, warn_before: warnBefore, query: redactedQuery(u), origin: req.headers.origin || null,
    offered_protocols: app, token_entries: entries.length, auth: null, ticket_seq: null,
    token_seq: null, sub: null, protocol: null, open: false, messages: [], control: [], closed: null,
  };
  records.connections.push(rec);
  let cred = null;
  const ticket = u.searchParams.get('ticket');
  if (ticket !== null) {
    const t = tickets.get(ticket);
    tickets.delete(ticket);                         // single use, even when refused
    if (!t || t.path !== path || t.expires <= Date.now()) {
      rec.refused = 401;
      return refuseUpgrade(socket, 401, '/problems/unauthorized', 'invalid ticket');
    }
    t.rec.used = true;
    const c = check(t.token);
    if (!c.ok) { rec.refused = c.status; return refuseUpgrade(socket, c.status, c.type, c.message); }
    rec.auth = 'ticket';
    rec.ticket_seq = t.rec.seq;
    cred = c.ok;
  } else if (entries.length > 0) {
    const c = check(entries[0].slice(PREFIX.length));
    if (!c.ok) { rec.refused = c.status; return refuseUpgrade(socket, c.status, c.type, c.message); }
    rec.auth = 'subprotocol';
    cred = c.ok;
  } else if (path.startsWith('/open/')) {
    rec.auth = 'none';
  } else {
    rec.refused = 401;
    return refuseUpgrade(socket, 401, '/problems/unauthorized', 'no credentials');
  }
  req.chosenProtocol = app.find((p) => PROTOCOLS.includes(p)) || false;
  const bad = badGateway.get(path) || 0;
  if (bad > 0) {
    badGateway.set(path, bad - 1);
    rec.bad_gateway = true;
    rec.lost = [];
    return wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('message', (data) => rec.lost.push(data.toString('utf8')));
      ws.on('close', (code) => { rec.closed = { code }; });
      ws.on('error', () => {});
      ws.send(problem('/problems/bad-gateway', 1014, 'backend unavailable'));
      ws.close(1014, 'backend unavailable');
    });
  }
  wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws, rec, cred));
}

function redactedQuery(u) {
  const q = new URLSearchParams(u.search);
  if (q.has('ticket')) q.set('ticket', 'REDACTED');
  return q.toString();
}

function setCred(c, cred) {
  c.cred = cred;
  c.rec.token_seq = cred ? cred.seq : null;
  c.rec.sub = cred ? cred.sub : null;
  clearTimeout(c.warn);
  clearTimeout(c.expire);
  if (!cred) return;
  const left = cred.exp - Date.now();
  const warnBefore = c.rec.warn_before;
  if (warnBefore > 0) {
    c.warn = setTimeout(() => {
      const msg = { type: EXPIRING_TYPE, expires_in: Math.max(0, Math.round((cred.exp - Date.now()) / 1000)) };
      c.rec.control.push(msg);
      c.ws.send(JSON.stringify(msg));
    }, Math.max(0, left - warnBefore * 1000));
  }
  c.expire = setTimeout(() => endWith(c, '/problems/token-expired', 'token expired'), Math.max(0, left));
}

function endWith(c, type, message) {
  clearTimeout(c.warn);
  clearTimeout(c.expire);
  c.rec.control.push({ type: 'error', problem: type });
  c.ws.send(problem(type, 1008, message));
  c.ws.close(1008, message);
}

function onConnection(ws, rec, cred) {
  const c = { ws, rec, cred: null, warn: null, expire: null };
  live.add(c);
  rec.open = true;
  rec.protocol = ws.protocol || null;
  setCred(c, cred);
  ws.on('message', (data, isBinary) => {
    if (!isBinary && cred !== null && data.length < 65536) {
      let m = null;
      try { m = JSON.parse(data.toString('utf8')); } catch (_) { m = null; }
      if (m && m.type === AUTH_TYPE && typeof m.token === 'string') return refreshed(c, m.token);
    }
    rec.messages.push(isBinary ? { b64: data.toString('base64') } : data.toString('utf8'));
    ws.send(data, { binary: isBinary });
  });
  ws.on('close', (code, reason) => {
    live.delete(c);
    clearTimeout(c.warn);
    clearTimeout(c.expire);
    rec.open = false;
    rec.closed = { code, reason: reason.toString('utf8') };
  });
  ws.on('error', () => {});
}

function refreshed(c, token) {
  const ck = check(token);
  const entry = { type: AUTH_TYPE, ok: false, token_seq: ck.ok ? ck.ok.seq : null };
  c.rec.control.push(entry);
  if (!ck.ok || (c.cred && ck.ok.sub !== c.cred.sub)) {
    const why = ck.ok ? { type: '/problems/forbidden', message: 'a token of another subject' } : ck;
    return c.ws.send(problem(why.type, 1008, why.message));
  }
  entry.ok = true;
  setCred(c, ck.ok);
  c.ws.send(JSON.stringify({ type: AUTH_TYPE, status: 'ok', expires_at: rfc3339(ck.ok.exp) }));
}

const server = http.createServer(onRequest);
server.on('upgrade', onUpgrade);
server.listen(opts.port || 0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ listening: server.address().port }) + '\n');
});
process.on('SIGTERM', () => process.exit(0));
