#!/usr/bin/env node
// dashboard.js — drives weir's own dashboard page (clients/dashboard/, served
// by weir's admin listener) in headless Chromium for
// spec/02-integration/43-dashboard-browser_spec.lua.
//
// Usage: node dashboard.js PLAN_FILE
// PLAN (JSON): {"url": "http://127.0.0.1:P/dashboard/", "token": "…",
//   "wrong_token": "…", "commands": "/dir", "timeout": 90}
//
// It opens the page in a fresh Chromium profile (Debian's /usr/bin/chromium
// through playwright-core), logs in with the wrong token first (the page
// must refuse it), then with the right one, and from then on prints what
// the page shows whenever it changes. The spec steers it with files in
// the "commands" directory (each removed once done):
//   close.<id>        click the Close button of connection <id>'s row
//   screenshot.<path> a full-page screenshot into the file <path> (URI-encoded)
//   quit              close the browser and exit 0
//
// Output: one JSON object per line:
//   {"kind":"refused","text":"…"}          the wrong token's error on the page
//   {"kind":"state","page":{…}}             what the page shows (see read())
//   {"kind":"clicked","id":"w0-3"}
//   {"kind":"screenshot","path":"…"}
//   {"kind":"console","level":…,"text":…} / {"kind":"pageerror","message":…}
//   {"kind":"done"} or {"kind":"fatal","error":"…"}
// A hard timeout (plan.timeout, 90 s) closes the browser and exits 2.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

function out(o) { fs.writeSync(1, JSON.stringify(o) + '\n'); }

// What the page shows: the cards' values, the feed's state, the tables' rows.
function read() {
  const values = {};
  document.querySelectorAll('[id^="v-"]').forEach((el) => { values[el.id.slice(2)] = el.dataset.value; });
  const rows = (sel, key) => [...document.querySelectorAll(sel + ' tbody tr')].map((tr) => {
    const r = { key: tr.dataset[key] };
    tr.querySelectorAll('td[data-field]').forEach((td) => { r[td.dataset.field] = td.dataset.value; });
    return r;
  });
  return {
    feed: document.getElementById('feed-state').dataset.state,
    source: document.getElementById('source').dataset.value || null,
    notice: document.getElementById('notice').hidden ? null : document.getElementById('notice').textContent,
    values,
    connections: rows('#connections', 'id'),
    applications: rows('#applications', 'application'),
    apis: rows('#apis', 'api'),
  };
}

async function main() {
  const plan = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const profile = fs.mkdtempSync(path.join(plan.work_dir || os.tmpdir(), 'dash-profile-'));
  let ctx = null;
  const finish = async (code) => {
    if (ctx) await ctx.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
    process.exit(code);
  };
  const hard = setTimeout(() => { out({ kind: 'fatal', error: 'timed out' }); finish(2); }, (plan.timeout || 90) * 1000);
  process.on('SIGTERM', () => { out({ kind: 'fatal', error: 'got SIGTERM' }); finish(2); });
  try {
    const { chromium } = require('playwright-core');
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 1400, height: 1000 }, timeout: 30000,
    });
    const page = ctx.pages()[0] || await ctx.newPage();
    page.on('console', (m) => out({ kind: 'console', level: m.type(), text: m.text() }));
    page.on('pageerror', (e) => out({ kind: 'pageerror', message: String(e && e.message || e) }));
    await page.goto(plan.url, { waitUntil: 'load' });

    await page.fill('#token', plan.wrong_token);
    await page.click('#login-button');
    await page.waitForSelector('#login-error:not([hidden])', { timeout: 15000 });
    out({ kind: 'refused', text: await page.textContent('#login-error'),
      board_hidden: await page.evaluate(() => document.getElementById('board').hidden),
      stored: await page.evaluate(() => sessionStorage.getItem('weir-admin-token')) });

    await page.fill('#token', plan.token);
    await page.click('#login-button');
    await page.waitForSelector('#feed-state[data-state="open"]', { timeout: 15000 });
    out({ kind: 'login', url: page.url(), stored: await page.evaluate(() => sessionStorage.getItem('weir-admin-token') !== null) });

    let last = '';
    for (;;) {
      const state = await page.evaluate(read);
      const text = JSON.stringify(state);
      if (text !== last) { out({ kind: 'state', page: state }); last = text; }
      for (const name of fs.readdirSync(plan.commands).sort()) {
        const file = path.join(plan.commands, name);
        if (name === 'quit') {
          fs.rmSync(file);
          clearTimeout(hard);
          out({ kind: 'done' });
          return finish(0);
        }
        if (name.startsWith('close.')) {
          const id = name.slice(6);
          await page.click(`#connections button.close[data-id="${id}"]`, { timeout: 10000 });
          out({ kind: 'clicked', id });
        } else if (name.startsWith('screenshot.')) {
          const p = decodeURIComponent(name.slice(11));
          await page.screenshot({ path: p, fullPage: true });
          out({ kind: 'screenshot', path: p });
        }
        fs.rmSync(file, { force: true });
      }
      await page.waitForTimeout(200);
    }
  } catch (e) {
    out({ kind: 'fatal', error: String(e && e.message || e).split('\n')[0] });
    clearTimeout(hard);
    return finish(2);
  }
}

main();
