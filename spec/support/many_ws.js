#!/usr/bin/env node
// many_ws.js — many WebSocket connections (or one busy one) in one process,
// driven by signals from the spec (spec/02-integration/23-reload_spec.lua).
//
// Usage: node many_ws.js '{"mode":"hold","url":"ws://…","count":1000}'
//        node many_ws.js '{"mode":"stream","url":"ws://…","window":8}'
//
// Every line printed on stdout is one JSON event.
//
// mode "hold": opens `count` connections (at most `concurrency`, 50, in the
// handshake at once) to `url` + "/c<i>" and prints
//     {"event":"open","open":N,"failed":F,"errors":[…first few…]}
// On SIGUSR1 (a "round"), connection i sends the text `prefix` + i (prefix
// "m") and waits for one message; once every open connection has one (or
// after `round_timeout` s, 30) prints
//     {"event":"round","round":R,"replies":["…", …]}   (index i-1; null: none)
// On SIGUSR2 prints, then exits 0:
//     {"event":"final","closed":[[i,code,reason],…],    connections the server closed
//      "extra":[[i,"text"],…]}                          messages no round asked for
// and closes the rest with 1000 (it does not wait for their close handshake).
//
// mode "stream": one connection to `url`; sends "1", "2", … as text, with at
// most `window` (8) unanswered, and records each answer. On SIGUSR1 it sends
// `tail` (10) more messages (all sent after the signal), then stops, waits
// for the answers still due (10 s at most), prints
//     {"event":"stream","sent":N,"received":M,"mismatch":null|{"n":…,"got":"…"},
//      "runs":[["tag",first,last],…],"closed":null|[code,reason]}
// and exits 0. An answer is expected to be "TAG:N" for the Nth message sent:
// `runs` groups consecutive answers by TAG; `mismatch` is the first answer
// that is not "SOMETHING:N" for the N expected next.
// Before the first SIGUSR1 it prints {"event":"streaming","after":K} once K
// (`report_after`, 50) answers have come back.
'use strict';

const WebSocket = require('ws');

const sc = JSON.parse(process.argv[2] || '{}');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const wsOpts = { perMessageDeflate: false, handshakeTimeout: 20000 };

if (sc.mode === 'stream') stream(); else hold();

function hold() {
  const count = sc.count || 1000;
  const conc = sc.concurrency || 50;
  const prefix = sc.prefix || 'm';
  const conns = new Array(count);
  let next = 0, settled = 0, open = 0, failed = 0;
  const errors = [];
  let round = 0, pending = null;
  const closed = [], extra = [];

  function start() {
    if (next >= count) return;
    const i = next++;
    const ws = new WebSocket(sc.url + '/c' + (i + 1), wsOpts);
    const c = { ws, open: false, want: false, reply: null };
    conns[i] = c;
    ws.on('open', () => { c.open = true; open++; done(); });
    ws.on('message', (data) => {
      const text = data.toString('utf8');
      if (c.want) {
        c.want = false;
        c.reply = text;
        if (pending) { pending.left--; if (pending.left === 0) finishRound(); }
      } else {
        extra.push([i + 1, text]);
      }
    });
    ws.on('close', (code, reason) => {
      if (c.open && !c.closing) closed.push([i + 1, code, reason.toString('utf8')]);
      if (c.want && pending) { c.want = false; pending.left--; if (pending.left === 0) finishRound(); }
    });
    ws.on('error', (e) => {
      if (!c.open && !c.failed) {
        c.failed = true; failed++;
        if (errors.length < 5) errors.push(String(e.message || e));
        done();
      }
    });
  }
  function done() {
    settled++;
    if (settled === count) out({ event: 'open', open, failed, errors });
    else start();
  }
  for (let k = 0; k < Math.min(conc, count); k++) start();

  function finishRound() {
    if (!pending) return;
    clearTimeout(pending.timer);
    pending = null;
    out({ event: 'round', round, replies: conns.map((c) => (c && c.reply !== null ? c.reply : null)) });
  }
  process.on('SIGUSR1', () => {
    if (pending) return;
    round++;
    pending = { left: 0 };
    conns.forEach((c, i) => {
      if (!c) return;
      c.reply = null;
      if (c.open && c.ws.readyState === WebSocket.OPEN) {
        c.want = true;
        pending.left++;
        c.ws.send(prefix + (i + 1));
      }
    });
    pending.timer = setTimeout(finishRound, (sc.round_timeout || 30) * 1000);
    if (pending.left === 0) finishRound();
  });
  process.on('SIGUSR2', () => {
    out({ event: 'final', closed, extra });
    for (const c of conns) {
      if (c && c.ws.readyState === WebSocket.OPEN) { c.closing = true; c.ws.close(1000); }
    }
    setTimeout(() => process.exit(0), 50);
  });
}

function stream() {
  const win = sc.window || 8;
  const reportAfter = sc.report_after || 50;
  const ws = new WebSocket(sc.url, wsOpts);
  let sent = 0, received = 0, stopping = false, mismatch = null, closed = null, reported = false;
  let stopAt = Infinity;
  const runs = [];
  let timer = null;

  function pump() {
    while (sent < stopAt && !closed && sent - received < win) {
      sent++;
      ws.send(String(sent));
    }
    if (stopping && ((sent >= stopAt && received >= sent) || closed)) finish();
  }
  function finish() {
    if (timer) clearTimeout(timer);
    out({ event: 'stream', sent, received, mismatch, runs, closed });
    process.exit(0);
  }
  ws.on('open', pump);
  ws.on('message', (data) => {
    const text = data.toString('utf8');
    received++;
    const m = /^(.*):(\d+)$/.exec(text);
    if (!m || Number(m[2]) !== received) {
      if (!mismatch) mismatch = { n: received, got: text.slice(0, 200) };
    } else {
      const last = runs[runs.length - 1];
      if (last && last[0] === m[1]) last[2] = received; else runs.push([m[1], received, received]);
    }
    if (!reported && received >= reportAfter) { reported = true; out({ event: 'streaming', after: received }); }
    pump();
  });
  ws.on('close', (code, reason) => { closed = [code, reason.toString('utf8')]; if (stopping) finish(); });
  ws.on('error', (e) => { if (!closed) closed = [0, String(e.message || e)]; if (stopping) finish(); });
  process.on('SIGUSR1', () => {
    if (stopping) return;
    stopping = true;
    stopAt = sent + (sc.tail || 10);
    timer = setTimeout(finish, 10000);
    pump();
  });
}
