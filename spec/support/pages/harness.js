// harness.js — the page half of spec/support/browser.js: marks the spec can
// wait for, signals from the spec, and a log on the page (what screenshots show).
//
// browser.js calls window.__weirRun(SCENARIO, ARGS) once window.__weirReady
// is true; a scenario is `async (args, h) => value` (value: anything JSON
// can carry), h being the helpers below.

const started = performance.now();
const logEl = () => document.getElementById('log');

export const h = {
  /** ms since the page loaded. */
  now() { return Math.round(performance.now() - started); },

  /** Append a line to the page (and the console, which browser.js prints). */
  log(...parts) {
    const line = `${String(h.now()).padStart(6)} ms  ` +
      parts.map((p) => (typeof p === 'string' ? p : JSON.stringify(p))).join(' ');
    const el = logEl();
    if (el) el.append(line + '\n');
  },

  /** Tell the spec something happened: a {"kind":"mark"} line on browser.js's stdout. */
  async mark(name, data) {
    h.log('mark', name, data === undefined ? '' : data);
    if (window.__weirMark) await window.__weirMark(name, data === undefined ? null : data);
  },

  /** Wait until the spec writes the signal file NAME (see browser.js); returns its content. */
  async waitSignal(name, timeoutMs = 15000) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), timeoutMs);
    try {
      const res = await fetch('/__signal/' + encodeURIComponent(name), { signal: ctrl.signal, cache: 'no-store' });
      return await res.text();
    } catch (e) {
      throw new Error(`no signal ${name} within ${timeoutMs} ms`);
    } finally {
      clearTimeout(timer);
    }
  },

  /** Pause (for pacing only). */
  sleep(ms) { return new Promise((r) => setTimeout(r, ms)); },

  /** Poll PRED every 10 ms until it returns a truthy value (returned); throws after timeoutMs. */
  async until(pred, timeoutMs = 10000, what = 'a condition') {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const v = pred();
      if (v) return v;
      if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await h.sleep(10);
    }
  },
};

export function setup(scenarios) {
  window.__weirRun = async (name, args) => {
    document.getElementById('scenario').textContent = name;
    const status = document.getElementById('status');
    const fn = scenarios[name];
    try {
      if (!fn) throw new Error('no scenario ' + name + ' (have: ' + Object.keys(scenarios).join(', ') + ')');
      h.log('args', args);
      const value = await fn(args, h);
      status.textContent = 'done';
      status.className = 'ok';
      return value === undefined ? null : JSON.parse(JSON.stringify(value));
    } catch (e) {
      status.textContent = 'failed: ' + (e && e.message);
      status.className = 'failed';
      h.log('FAILED', String(e && e.stack || e));
      throw e;
    }
  };
  window.__weirReady = true;
}
