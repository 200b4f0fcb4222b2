#!/usr/bin/env node
// backend.js — the backends the integration specs put behind weir.
//
// Usage: node backend.js '{"kind":"echo","port":9000, ...}'   (port 0 or none: any)
// Every kind listens on 127.0.0.1:port and answers `GET /__events` with a
// JSON record of every connection it has seen (request, frames, close), so
// that a spec can learn what reached the backend even after the connection
// is gone. The control protocol is described in README.md beside this file.
'use strict';

const http = require('http');
const https = require('https');
const fs = require('fs');
const crypto = require('crypto');
const { WebSocketServer } = require('ws');

const opts = JSON.parse(process.argv[2] || '{}');
const kind = opts.kind || 'echo';
const port = opts.port || 0;
const host = '127.0.0.1';        // loopback only
const SMALL = 4096;              // payloads up to this size are recorded whole

const connections = [];          // one record per upgrade request seen
let nextId = 1;

function newRecord(req) {
  const headers = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    headers.push([req.rawHeaders[i], req.rawHeaders[i + 1]]);
  }
  const rec = {
    id: nextId++,
    method: req.method,
    url: req.url,
    http_version: req.httpVersion,
    headers,
    remote: req.socket.remoteAddress + ':' + req.socket.remotePort,
    protocol: null,
    open: false,
    events: [],
    messages: 0,
    bytes: 0,
    closed: null,
  };
  connections.push(rec);
  return rec;
}

function describePayload(buf, isText) {
  const d = { length: buf.length };
  if (buf.length <= SMALL) {
    if (isText) d.text = buf.toString('utf8');
    else d.b64 = buf.toString('base64');
  }
  d.sha256 = crypto.createHash('sha256').update(buf).digest('hex');
  return d;
}

function serveEvents(req, res) {
  if (req.url === '/__events') {
    const body = JSON.stringify({ kind, pid: process.pid, connections });
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
    return true;
  }
  if (req.url === '/__reset') {
    connections.length = 0;
    res.writeHead(200, { 'Content-Length': 2 });
    res.end('ok');
    return true;
  }
  return false;
}

// ---- the ws-based kinds: echo, slow, tls-echo -----------------------------

function chooseProtocol(protocols) {
  // opts.protocol: a name to pick when offered, "first" for the first offer,
  // absent: none is chosen.
  if (!opts.protocol) return false;
  if (opts.protocol === 'first') return protocols.values().next().value || false;
  return protocols.has(opts.protocol) ? opts.protocol : false;
}

function handleControl(ws, rec, msg) {
  rec.events.push({ type: 'ctl', ctl: msg });
  switch (msg.__ctl) {
    case 'report':
      ws.send(JSON.stringify({ __report: rec }));
      break;
    case 'close':
      if (msg.code === undefined) ws.close();
      else ws.close(msg.code, msg.reason || '');
      break;
    case 'ping':
      ws.ping(Buffer.from(msg.payload || '', 'utf8'));
      break;
    case 'send': {
      const count = msg.count || 1;
      for (let i = 0; i < count; i++) {
        if (msg.text !== undefined) ws.send(msg.text);
        else ws.send(crypto.randomBytes(msg.size || 0), { binary: true });
      }
      break;
    }
    case 'fragments': {
      const parts = msg.parts || [];
      parts.forEach((p, i) => {
        const data = msg.binary ? Buffer.from(p, 'base64') : p;
        ws.send(data, { binary: !!msg.binary, fin: i === parts.length - 1 });
      });
      break;
    }
    case 'terminate':
      ws.terminate();
      break;
    case 'exit':
      process.exit(0);
      break;
    default:
      ws.send(JSON.stringify({ __error: 'unknown control ' + msg.__ctl }));
  }
}

function parseControl(data, isBinary) {
  if (isBinary || data.length > SMALL || data[0] !== 0x7b) return null;   // '{'
  try {
    const m = JSON.parse(data.toString('utf8'));
    return m && typeof m.__ctl === 'string' ? m : null;
  } catch (e) {
    return null;
  }
}

function wsServer(server) {
  const wss = new WebSocketServer({
    server,
    perMessageDeflate: false,
    autoPong: opts.auto_pong !== false,
    maxPayload: 1024 * 1024 * 1024,
    handleProtocols: chooseProtocol,
  });
  wss.on('headers', (headers) => {
    for (const [k, v] of Object.entries(opts.headers_101 || {})) headers.push(k + ': ' + v);
  });
  wss.on('connection', (ws, req) => {
    const rec = newRecord(req);
    rec.open = true;
    rec.protocol = ws.protocol || null;
    const slow = kind === 'slow';
    const hash = slow ? crypto.createHash('sha256') : null;
    ws.on('message', (data, isBinary) => {
      const ctl = parseControl(data, isBinary);
      if (ctl) {
        if (slow && ctl.__ctl === 'report') rec.sha256 = hash.copy().digest('hex');
        handleControl(ws, rec, ctl);
        return;
      }
      rec.messages++;
      rec.bytes += data.length;
      if (slow) {
        hash.update(data);
        return;
      }
      const ev = describePayload(data, !isBinary);
      ev.type = 'message';
      ev.opcode = isBinary ? 2 : 1;
      rec.events.push(ev);
      if (!opts.no_echo) ws.send(data, { binary: isBinary });
    });
    ws.on('ping', (data) => rec.events.push({ type: 'ping', payload: data.toString('utf8') }));
    ws.on('pong', (data) => rec.events.push({ type: 'pong', payload: data.toString('utf8') }));
    ws.on('error', (err) => rec.events.push({ type: 'error', message: String(err.message) }));
    ws.on('close', (code, reason) => {
      // ws reports 1005 for a close frame without code, 1006 for none at all
      rec.closed = { code, reason: reason.toString('utf8'), clean: code !== 1006 };
      if (slow) rec.sha256 = hash.digest('hex');
    });
    if (slow) throttle(ws, rec);
    if (opts.greeting) ws.send(opts.greeting);
  });
  return wss;
}

// Reads at most opts.rate bytes per second (default 20 MB/s) by pausing the
// socket whenever this 10 ms slice's budget is spent.
function throttle(ws, rec) {
  const rate = opts.rate || 20 * 1024 * 1024;
  const slice = Math.max(1, Math.floor(rate / 100));
  let used = 0;
  const sock = ws._socket;
  sock.on('data', (chunk) => {
    used += chunk.length;
    if (used >= slice && !ws.isPaused) ws.pause();
  });
  const timer = setInterval(() => {
    used = Math.max(0, used - slice);
    if (used < slice && ws.isPaused) ws.resume();
  }, 10);
  ws.on('close', () => clearInterval(timer));
}

// ---- the raw kinds: http, bad-accept, frames -------------------------------

function acceptFor(key) {
  return crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
}

function encodeFrame(opcode, payload, fin = true) {
  const len = payload.length;
  let head;
  if (len < 126) {
    head = Buffer.alloc(2);
    head[1] = len;
  } else if (len < 65536) {
    head = Buffer.alloc(4);
    head[1] = 126;
    head.writeUInt16BE(len, 2);
  } else {
    head = Buffer.alloc(10);
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  head[0] = (fin ? 0x80 : 0) | opcode;
  return Buffer.concat([head, payload]);
}

// A backend with its own frame parser that records every frame it receives
// (fin, rsv, opcode, mask, payload) and echoes data frames one by one, so a
// spec can see whether fragments and masks survived weir.
function framesBackend(req, socket, head) {
  const rec = newRecord(req);
  const key = req.headers['sec-websocket-key'] || '';
  let proto = null;
  if (opts.protocol && req.headers['sec-websocket-protocol']) {
    const offered = req.headers['sec-websocket-protocol'].split(',').map((s) => s.trim());
    proto = opts.protocol === 'first' ? offered[0] : (offered.includes(opts.protocol) ? opts.protocol : null);
  }
  if (opts.force_protocol) proto = opts.force_protocol;      // even when not offered
  rec.protocol = proto;
  rec.open = true;
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Accept: ' + acceptFor(key) + '\r\n' +
    (proto ? 'Sec-WebSocket-Protocol: ' + proto + '\r\n' : '') +
    (opts.extensions ? 'Sec-WebSocket-Extensions: ' + opts.extensions + '\r\n' : '') + '\r\n');
  let buf = head && head.length ? Buffer.from(head) : Buffer.alloc(0);
  let closeSent = false;
  const send = (b) => { if (!socket.destroyed) socket.write(b); };
  socket.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (buf.length < 2) return;
      const b0 = buf[0], b1 = buf[1];
      let len = b1 & 0x7f, off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
      const masked = (b1 & 0x80) !== 0;
      let mask = null;
      if (masked) { if (buf.length < off + 4) return; mask = buf.subarray(off, off + 4); off += 4; }
      if (buf.length < off + len) return;
      const payload = Buffer.from(buf.subarray(off, off + len));
      if (mask) for (let i = 0; i < len; i++) payload[i] ^= mask[i & 3];
      buf = buf.subarray(off + len);
      const fr = describePayload(payload, false);
      Object.assign(fr, { type: 'frame', fin: (b0 & 0x80) !== 0, rsv: (b0 >> 4) & 7, opcode: b0 & 0x0f,
        masked, mask: mask ? mask.toString('hex') : null });
      if (fr.opcode === 1 || (fr.opcode === 0 && len <= SMALL)) fr.text = payload.toString('utf8');
      rec.events.push(fr);
      const op = fr.opcode;
      if (op === 8) {
        const code = len >= 2 ? payload.readUInt16BE(0) : null;
        rec.closed = { code, reason: len > 2 ? payload.subarray(2).toString('utf8') : '', clean: true };
        if (!closeSent) { closeSent = true; send(encodeFrame(8, payload)); }
        socket.end();
        return;
      }
      if (op === 9) { send(encodeFrame(10, payload)); continue; }
      if (op === 10) continue;
      const ctl = op === 1 && fr.fin ? parseControl(payload, false) : null;
      if (ctl) {
        rec.events.push({ type: 'ctl', ctl });
        if (ctl.__ctl === 'report') send(encodeFrame(1, Buffer.from(JSON.stringify({ __report: rec }))));
        else if (ctl.__ctl === 'raw') send(Buffer.from(ctl.b64 || '', 'base64'));
        else if (ctl.__ctl === 'close') {
          const p = ctl.code === undefined ? Buffer.alloc(0)
            : Buffer.concat([Buffer.from([ctl.code >> 8, ctl.code & 255]), Buffer.from(ctl.reason || '')]);
          closeSent = true;
          send(encodeFrame(8, p));
        } else if (ctl.__ctl === 'terminate') socket.destroy();
        continue;
      }
      if (!opts.no_echo) send(encodeFrame(op, payload, fr.fin));
    }
  });
  socket.on('close', () => {
    if (!rec.closed) rec.closed = { code: 1006, reason: '', clean: false };
  });
  socket.on('error', () => {});
}

function rawUpgrade(req, socket, head) {
  const rec = newRecord(req);
  socket.on('error', () => {});
  if (kind === 'http') {
    const body = 'not a websocket server\n';
    socket.end('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ' + body.length + '\r\n\r\n' + body);
  } else if (kind === 'bad-accept') {
    socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      'Sec-WebSocket-Accept: ' + acceptFor('not the key weir sent') + '\r\n\r\n');
  }
  rec.closed = { code: null, reason: '', clean: false };
}

// ---- main ------------------------------------------------------------------

function onRequest(req, res) {
  if (serveEvents(req, res)) return;
  newRecord(req);
  const body = 'plain http from the ' + kind + ' backend\n';
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
  res.end(body);
}

let server;
if (kind === 'tls-echo') {
  server = https.createServer({ cert: fs.readFileSync(opts.cert), key: fs.readFileSync(opts.key) }, onRequest);
} else {
  server = http.createServer(onRequest);
}
server.keepAliveTimeout = 0;

if (kind === 'echo' || kind === 'slow' || kind === 'tls-echo') {
  wsServer(server);
} else if (kind === 'frames') {
  server.on('upgrade', framesBackend);
} else if (kind === 'http' || kind === 'bad-accept') {
  server.on('upgrade', rawUpgrade);
} else {
  console.error('unknown backend kind ' + kind);
  process.exit(2);
}

// Port 0 (the default) lets the system choose; the port is printed once
// everything listens. A TLS backend also answers /__events in plain HTTP on
// a second port ("events"), since the specs' own HTTP client speaks no TLS.
server.listen(port, host, () => {
  const ready = { listening: server.address().port, kind };
  if (kind !== 'tls-echo') {
    console.log(JSON.stringify(ready));
    return;
  }
  const ev = http.createServer((req, res) => {
    if (!serveEvents(req, res)) { res.writeHead(404); res.end(); }
  });
  ev.listen(opts.events_port || 0, '127.0.0.1', () => {
    ready.events = ev.address().port;
    console.log(JSON.stringify(ready));
  });
});
process.on('SIGTERM', () => process.exit(0));
