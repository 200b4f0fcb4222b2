#!/usr/bin/env node
// client.js — a scripted WebSocket client (the `ws` library) for the specs.
//
// Usage: node client.js SCENARIO.json   (or the JSON itself as the argument)
// Runs the scenario's steps in order and prints, on stdout, one JSON
// transcript of everything that happened. The scenario format and the
// transcript are described in README.md beside this file; client.py accepts
// the same scenarios and prints the same transcripts.
'use strict';

const fs = require('fs');
const crypto = require('crypto');
const WebSocket = require('ws');

const arg = process.argv[2] || '{}';
const sc = JSON.parse(arg.trim().startsWith('{') ? arg : fs.readFileSync(arg, 'utf8'));
const SMALL = 4096;
const started = Date.now();

const t = {
  impl: 'node',
  open: false,
  protocol: null,
  extensions: null,
  handshake: null,
  events: [],
  sent: [],
  closed: null,
  error: null,
};

function describe(buf, isText) {
  const d = { length: buf.length, sha256: crypto.createHash('sha256').update(buf).digest('hex') };
  if (buf.length <= SMALL) {
    if (isText) d.text = buf.toString('utf8');
    else d.b64 = buf.toString('base64');
  }
  return d;
}

let printed = false;
function finish(code) {
  if (printed) return;
  printed = true;
  t.duration_ms = Date.now() - started;
  process.stdout.write(JSON.stringify(t) + '\n', () => process.exit(code || 0));
}

const timeout = (sc.timeout || 20) * 1000;
const globalTimer = setTimeout(() => {
  t.error = t.error || ('timeout' + (currentStep !== null ? ' in step ' + (currentStep + 1) : ''));
  try { ws.terminate(); } catch (e) { /* already gone */ }
  finish(0);
}, timeout);

const wsOpts = {
  headers: sc.headers || {},
  maxPayload: 1024 * 1024 * 1024,
  perMessageDeflate: sc.compression !== false,
  autoPong: sc.auto_pong !== false,
  handshakeTimeout: timeout,
};
if (sc.origin) wsOpts.origin = sc.origin;
if (sc.ca) wsOpts.ca = fs.readFileSync(sc.ca);
if (sc.insecure) wsOpts.rejectUnauthorized = false;

let currentStep = null;
let counts = { messages: 0, pings: 0, pongs: 0 };
let closedResolve;
const closedP = new Promise((r) => { closedResolve = r; });
let openResolve, openReject;
const openP = new Promise((res, rej) => { openResolve = res; openReject = rej; });

const ws = new WebSocket(sc.url, sc.protocols || [], wsOpts);

ws.on('upgrade', (res) => {
  t.handshake = { status: res.statusCode, headers: res.headers };
});
ws.on('unexpected-response', (req, res) => {
  const chunks = [];
  t.handshake = { status: res.statusCode, headers: res.headers, body: '' };
  res.on('data', (c) => chunks.push(c));
  const done = () => {
    t.handshake.body = Buffer.concat(chunks).toString('utf8');
    openReject(new Error('handshake refused: HTTP ' + res.statusCode));
  };
  res.on('end', done);
  res.on('error', done);
  res.on('aborted', done);
});
ws.on('open', () => {
  t.open = true;
  t.protocol = ws.protocol || null;
  t.extensions = ws.extensions || null;
  openResolve();
});
ws.on('message', (data, isBinary) => {
  const ev = describe(data, !isBinary);
  ev.type = 'message';
  ev.opcode = isBinary ? 2 : 1;
  t.events.push(ev);
  counts.messages++;
  wake();
});
ws.on('ping', (data) => { t.events.push({ type: 'ping', payload: data.toString('utf8') }); counts.pings++; wake(); });
ws.on('pong', (data) => { t.events.push({ type: 'pong', payload: data.toString('utf8') }); counts.pongs++; wake(); });
ws.on('error', (err) => {
  t.events.push({ type: 'error', message: String(err.message) });
  if (!t.open) openReject(err);
});
ws.on('close', (code, reason) => {
  // ws: 1005 = close frame without code, 1006 = no close frame at all
  t.closed = { code, reason: reason.toString('utf8') };
  t.events.push({ type: 'close', code, reason: reason.toString('utf8') });
  closedResolve();
  wake();
});

let waiters = [];
function wake() {
  const w = waiters;
  waiters = [];
  w.forEach((f) => f());
}
function until(pred) {
  return new Promise((resolve) => {
    const check = () => (pred() ? resolve() : waiters.push(check));
    check();
  });
}

function payloadOf(step) {
  if (step.text !== undefined) {
    const s = step.repeat ? step.text.repeat(step.repeat) : step.text;
    return { data: s, binary: false, buf: Buffer.from(s, 'utf8') };
  }
  if (step.b64 !== undefined) {
    const b = Buffer.from(step.b64, 'base64');
    return { data: b, binary: true, buf: b };
  }
  const b = crypto.randomBytes(step.size || 0);
  return { data: b, binary: true, buf: b };
}

function sendAsync(data, options) {
  return new Promise((resolve, reject) => ws.send(data, options, (err) => (err ? reject(err) : resolve())));
}

async function stream(step) {
  const total = step.total;
  const chunk = step.chunk || 65536;
  const hash = crypto.createHash('sha256');
  let sent = 0;
  const inflight = [];
  while (sent < total) {
    const n = Math.min(chunk, total - sent);
    const b = crypto.randomBytes(n);
    hash.update(b);
    sent += n;
    inflight.push(sendAsync(b, { binary: true }));
    if (inflight.length >= 8) await inflight.shift();
  }
  await Promise.all(inflight);
  t.sent.push({ stream: true, length: sent, sha256: hash.digest('hex') });
}

async function run(steps) {
  for (let i = 0; i < steps.length; i++) {
    currentStep = i;
    const s = steps[i];
    switch (s.op) {
      case 'send': {
        const p = payloadOf(s);
        await sendAsync(p.data, { binary: p.binary });
        t.sent.push(describe(p.buf, !p.binary));
        break;
      }
      case 'fragments': {
        const parts = s.text !== undefined ? s.text.map((x) => Buffer.from(x, 'utf8'))
          : s.b64.map((x) => Buffer.from(x, 'base64'));
        const binary = s.text === undefined;
        for (let j = 0; j < parts.length; j++) {
          await sendAsync(parts[j], { binary, fin: j === parts.length - 1 });
        }
        t.sent.push(describe(Buffer.concat(parts), !binary));
        break;
      }
      case 'ping':
        ws.ping(Buffer.from(s.payload || '', 'utf8'));
        break;
      case 'pong':
        ws.pong(Buffer.from(s.payload || '', 'utf8'));
        break;
      case 'close':
        if (s.code === undefined) ws.close();
        else ws.close(s.code, s.reason || '');
        break;
      case 'drop':
        ws.terminate();
        break;
      case 'wait': {
        const want = (k) => (s[k] === undefined ? true : counts[k] >= s[k]);
        if (s.close) await closedP;
        else await until(() => (want('messages') && want('pings') && want('pongs')) || t.closed);
        break;
      }
      case 'stream':
        await stream(s);
        break;
      case 'sleep':
        await new Promise((r) => setTimeout(r, s.ms));
        break;
      default:
        throw new Error('unknown op ' + s.op);
    }
  }
  currentStep = null;
}

(async () => {
  try {
    await openP;
  } catch (err) {
    if (!t.handshake || t.handshake.status === 101) t.error = String(err.message);
    clearTimeout(globalTimer);
    return finish(0);
  }
  try {
    await run(sc.steps || []);
    if (!t.closed && sc.close_at_end !== false) {
      ws.close(1000);
      await closedP;
    }
  } catch (err) {
    t.error = String(err && err.message);
  }
  clearTimeout(globalTimer);
  finish(0);
})();
