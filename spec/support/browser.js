#!/usr/bin/env node
// browser.js — runs scenarios in a page in headless Chromium for the specs.
//
// Usage:
//   node browser.js SCENARIO [ARGS_JSON] [PLAN_JSON]   one scenario
//   node browser.js --plan PLAN_JSON                     several, one browser
// (each JSON may also be a path to a file holding it)
//
// It serves directories over a loopback HTTP server (127.0.0.1, the plan's
// port or one the system picks), starts Debian's Chromium
// (/usr/bin/chromium, headless, a fresh --user-data-dir) through
// playwright-core, and for each run opens a new tab on the page (default
// pages/client.html), waits for the page's scenarios to load, calls
// window.__weirRun(SCENARIO, ARGS) in the page, takes a screenshot, and
// closes the tab. The browser is always closed; a hard timeout bounds the
// whole process (tabs still running are photographed first). Each run also
// has its own timeout (its "timeout", else the plan's "run_timeout", 20 s).
//
// PLAN (every field but runs optional):
//   runs         [{"scenario":"client","args":{…},"name":"ticket","timeout":20}, …]
//                name labels the run (default: the scenario); timeout in s
//   page         "client.html", under the served root; "client.html?modules=/x/more.js"
//                also loads the scenarios that module exports
//   timeout      60: s for the whole process
//   parallel     false; true (or N): runs side by side in tabs (N at a time),
//                their results then come in the order they finish
//   screenshots  a directory; default: a new temporary one (kept)
//   work_dir     where the browser profile and signals go (default: the system's tmp)
//   signals      the directory for signal files (default: a new one in work_dir, removed at the end)
//   run_timeout  20: s for a run that gives no timeout of its own
//   host         "127.0.0.1": host in the page's URL ("localhost": another origin, same server)
//   port         0: the server's port (0: any; give one when the origin must be known first)
//   mounts       {"/x/":"/abs/dir"}: served besides "/" → pages/ and "/clients/js/" → clients/js/
//
// Output: one JSON object per line on stdout, as things happen ("t": ms
// since start):
//   {"kind":"serving","port":P,"origin":"http://127.0.0.1:P","signals":"/dir"}
//   {"kind":"browser","version":"…"}
//   {"kind":"start","run":1,"name":"ticket","scenario":"client"}
//   {"kind":"ready","run":1}                              the page has loaded its scenarios
//   {"kind":"mark","run":1,"run_name":"ticket","name":"open","data":{…}}  the page's h.mark()
//   {"kind":"console","run":1,"level":"error","text":"…"}  the page's console
//   {"kind":"pageerror","run":1,"message":"…"}
//   {"kind":"screenshot","run":1,"path":"/dir/01-ticket.png"}
//   {"kind":"result","run":1,"name":"ticket","scenario":"client","ok":true,"value":{…},
//    "error":null,"duration_ms":N}
//   {"kind":"done","ok":true,"runs":N,"failed":0,"screenshots":"/dir","duration_ms":N}
// or {"kind":"fatal","error":"…"} when the harness itself failed (then done
// follows with ok false). Exit code 0: every run ok; 1: some run failed;
// 2: the harness failed or timed out.
//
// Signals: the page may wait for the spec (h.waitSignal(NAME) in
// pages/harness.js): it long-polls GET /__signal/NAME, answered once a file
// NAME exists in the "signals" directory of the serving line. A spec writes
// that file when it has done its part (restarted a backend, say), after
// seeing a mark.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const http = require('http');

const started = Date.now();
const ROOT = path.resolve(__dirname, '..', '..');
const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8', '.json': 'application/json', '.css': 'text/css',
  '.png': 'image/png', '.svg': 'image/svg+xml', '.txt': 'text/plain; charset=utf-8',
};

function out(obj) {
  fs.writeSync(1, JSON.stringify({ ...obj, t: Date.now() - started }) + '\n');
}

function readJson(s, what) {
  if (s === undefined) return {};
  const text = s.trim().startsWith('{') || s.trim().startsWith('[') ? s : fs.readFileSync(s, 'utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${what}: not JSON: ${e.message}`);
  }
}

function parseArgv(argv) {
  if (argv[0] === '--plan') return readJson(argv[1], 'PLAN');
  if (!argv[0]) throw new Error('usage: node browser.js SCENARIO [ARGS_JSON] [PLAN_JSON] | --plan PLAN_JSON');
  const plan = readJson(argv[2], 'PLAN_JSON');
  plan.runs = [{ scenario: argv[0], args: readJson(argv[1], 'ARGS_JSON') }];
  return plan;
}

// ---- the HTTP server --------------------------------------------------------

function startServer(mounts, signalsDir, port) {
  // longest prefix first, so "/clients/js/" wins over "/"
  const table = Object.entries(mounts).sort((a, b) => b[0].length - a[0].length);
  const waiting = new Set();
  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    let p;
    try { p = decodeURIComponent(u.pathname); } catch (_) { p = null; }
    if (p === null || p.includes('\0')) { res.writeHead(400); return res.end(); }
    if (p.startsWith('/__signal/')) return signal(p.slice('/__signal/'.length), req, res);
    if (req.method !== 'GET' && req.method !== 'HEAD') { res.writeHead(405); return res.end(); }
    for (const [prefix, dir] of table) {
      if (!p.startsWith(prefix)) continue;
      const file = path.resolve(dir, '.' + path.posix.normalize('/' + p.slice(prefix.length)));
      if (file !== dir && !file.startsWith(dir + path.sep)) break;
      let f = file;
      try { if (fs.statSync(f).isDirectory()) f = path.join(f, 'index.html'); } catch (_) { break; }
      let body;
      try { body = fs.readFileSync(f); } catch (_) { break; }
      res.writeHead(200, {
        'Content-Type': TYPES[path.extname(f)] || 'application/octet-stream',
        'Content-Length': body.length, 'Cache-Control': 'no-store',
      });
      return res.end(req.method === 'HEAD' ? undefined : body);
    }
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found\n');
  });

  function signal(name, req, res) {
    if (!/^[A-Za-z0-9._-]+$/.test(name)) { res.writeHead(400); return res.end(); }
    const file = path.join(signalsDir, name);
    const poll = setInterval(check, 20);
    const entry = { poll, res };
    waiting.add(entry);
    function check() {
      if (!fs.existsSync(file)) return;
      clearInterval(poll);
      waiting.delete(entry);
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Cache-Control': 'no-store' });
      res.end(fs.readFileSync(file));
    }
    req.on('close', () => { clearInterval(poll); waiting.delete(entry); });
    check();
  }

  server.stopAll = () => {
    for (const w of waiting) { clearInterval(w.poll); w.res.destroy(); }
    server.closeAllConnections && server.closeAllConnections();
    server.close();
  };
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

// ---- one run ----------------------------------------------------------------

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

const openTabs = new Map();     // page → {n, file}: what the hard timeout still photographs

async function shoot(page, n, file, ms) {
  try {
    await withTimeout(page.screenshot({ path: file, fullPage: true }), ms, 'screenshot');
    out({ kind: 'screenshot', run: n, path: file });
  } catch (e) {
    out({ kind: 'console', run: n, level: 'harness', text: 'no screenshot: ' + String(e && e.message || e) });
  }
}

async function runOne(ctx, plan, origin, i, run, shotsDir) {
  const n = i + 1;
  const t0 = Date.now();
  const name = run.name || run.scenario;
  const result = { kind: 'result', run: n, name, scenario: run.scenario, ok: false, value: null, error: null };
  out({ kind: 'start', run: n, name, scenario: run.scenario });
  const file = path.join(shotsDir, `${String(n).padStart(2, '0')}-${name.replace(/[^A-Za-z0-9_-]/g, '_')}.png`);
  const page = await ctx.newPage();
  openTabs.set(page, { n, file });
  page.on('console', (m) => out({ kind: 'console', run: n, level: m.type(), text: m.text() }));
  page.on('pageerror', (e) => out({ kind: 'pageerror', run: n, message: String(e && e.message || e) }));
  await page.exposeBinding('__weirMark', (_src, mark, data) => out({ kind: 'mark', run: n, run_name: name, name: mark, data: data === undefined ? null : data }));
  try {
    const timeout = (run.timeout || plan.run_timeout || 20) * 1000;
    await withTimeout((async () => {
      const pg = plan.page || 'client.html';
      await page.goto(`${origin}/${pg}${pg.includes('?') ? '&' : '?'}run=${n}`, { waitUntil: 'load' });
      await page.waitForFunction(() => window.__weirReady === true || window.__weirLoadError, null, { timeout });
      const loadError = await page.evaluate(() => window.__weirLoadError || null);
      if (loadError) throw new Error('page failed to load: ' + loadError);
      out({ kind: 'ready', run: n });
      result.value = await page.evaluate(([s, a]) => window.__weirRun(s, a), [run.scenario, run.args || {}]);
      result.ok = true;
    })(), timeout, `run ${n} (${name})`);
  } catch (e) {
    result.error = String(e && e.message || e).split('\n')[0];
  }
  if (openTabs.delete(page)) await shoot(page, n, file, 10000);   // not when the hard timeout took it
  await withTimeout(page.close(), 5000, 'closing the tab').catch(() => {});
  result.duration_ms = Date.now() - t0;
  out(result);
  return result.ok;
}

// ---- main -------------------------------------------------------------------

async function main() {
  let plan;
  try {
    plan = parseArgv(process.argv.slice(2));
  } catch (e) {
    out({ kind: 'fatal', error: e.message });
    out({ kind: 'done', ok: false, runs: 0, failed: 0, screenshots: null, duration_ms: Date.now() - started });
    process.exit(2);
  }
  const runs = plan.runs || [];
  const workDir = plan.work_dir || os.tmpdir();
  const profile = fs.mkdtempSync(path.join(workDir, 'chromium-profile-'));
  const signalsDir = plan.signals || fs.mkdtempSync(path.join(workDir, 'browser-signals-'));
  const shotsDir = plan.screenshots || fs.mkdtempSync(path.join(os.tmpdir(), 'weir-screenshots-'));
  fs.mkdirSync(shotsDir, { recursive: true });
  let ctx = null, server = null, failed = 0, fatal = null, finished = false;

  async function finish(code) {
    if (finished) return;
    finished = true;
    if (ctx) await withTimeout(ctx.close(), 10000, 'closing the browser').catch(() => {});
    if (server) server.stopAll();
    fs.rmSync(profile, { recursive: true, force: true });
    if (!plan.signals) fs.rmSync(signalsDir, { recursive: true, force: true });
    out({ kind: 'done', ok: code === 0, runs: runs.length, failed, screenshots: shotsDir,
      duration_ms: Date.now() - started });
    process.exit(code);
  }

  // The hard limit: whatever hangs, the browser is closed and we exit.
  const hard = setTimeout(async () => {
    out({ kind: 'fatal', error: `timed out after ${plan.timeout || 60} s` });
    setTimeout(() => process.exit(2), 15000).unref();   // closing hung too
    // what the tabs still running show is the best clue to where they hung
    const tabs = [...openTabs];
    openTabs.clear();
    await Promise.all(tabs.map(([page, tab]) => shoot(page, tab.n, tab.file, 3000)));
    finish(2);
  }, (plan.timeout || 60) * 1000);
  for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, () => { out({ kind: 'fatal', error: 'got ' + sig }); finish(2); });
  }

  try {
    const { chromium } = require('playwright-core');
    const mounts = { '/': path.join(__dirname, 'pages'), '/clients/js/': path.join(ROOT, 'clients', 'js') };
    for (const [k, v] of Object.entries(plan.mounts || {})) mounts[k] = path.resolve(v);
    server = await startServer(mounts, signalsDir, plan.port || 0);
    const port = server.address().port;
    const origin = `http://${plan.host || '127.0.0.1'}:${port}`;
    out({ kind: 'serving', port, origin, signals: signalsDir });
    // launchPersistentContext: the one way to give Chromium our own --user-data-dir
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 900, height: 700 },
      timeout: 30000,
    });
    for (const p of ctx.pages()) await p.close().catch(() => {});
    out({ kind: 'browser', version: ctx.browser() ? ctx.browser().version() : await browserVersion(ctx), args: CHROMIUM_ARGS });
    // runs share the browser; with "parallel" they run in tabs side by side
    const width = plan.parallel === true ? runs.length : Math.max(1, Number(plan.parallel) || 1);
    let next = 0;
    const tab = async () => {
      while (next < runs.length) {
        const i = next++;
        if (!await runOne(ctx, plan, origin, i, runs[i], shotsDir)) failed++;
      }
    };
    await Promise.all(Array.from({ length: Math.min(width, runs.length) }, tab));
  } catch (e) {
    fatal = String(e && e.message || e).split('\n')[0];
    out({ kind: 'fatal', error: fatal });
  }
  clearTimeout(hard);
  await finish(fatal ? 2 : failed ? 1 : 0);
}

async function browserVersion(ctx) {
  const page = await ctx.newPage();
  try {
    const s = await page.context().newCDPSession(page);
    return (await s.send('Browser.getVersion')).product;
  } catch (_) {
    return null;
  } finally {
    await page.close().catch(() => {});
  }
}

main();
