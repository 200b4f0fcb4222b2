// weir's live dashboard (docs/dashboard.md).
//
// Login: the admin token is checked with GET /status (Authorization: Bearer)
// and kept in sessionStorage, never in the URL. The feed is the WebSocket
// /dashboard/live, opened with the subprotocols "weir-dashboard" and
// "weir-admin.<the token in base64url>" (a browser cannot set headers on a
// WebSocket); weir answers "weir-dashboard" and sends a snapshot of the host
// once a second. A connection's Close button sends {"op":"close","id":…}
// on the feed; weir answers {"type":"answer",…}. Charts are drawn on
// canvases by the small code below: nothing is loaded from elsewhere.
'use strict';

(function () {
  const KEY = 'weir-admin-token';
  const HISTORY = 120;                    // points kept per chart (s)
  const $ = (id) => document.getElementById(id);

  let ws = null;
  let retry = null;
  let backoff = 1000;
  let loggedIn = false;

  // ---- formatting --------------------------------------------------------

  function count(n) { return n == null ? '–' : Math.round(n).toLocaleString('en-US'); }
  function rate(n) { return n == null ? '–' : (Math.round(n * 10) / 10).toLocaleString('en-US'); }
  function bytes(n, suffix) {
    if (n == null) return '–';
    const units = ['B', 'kB', 'MB', 'GB', 'TB'];
    let i = 0;
    let v = n;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return (i === 0 ? String(Math.round(v)) : v.toFixed(1)) + ' ' + units[i] + (suffix || '');
  }
  function time(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleTimeString('en-GB');
  }

  // Set element ID's text to TEXT and its data-value to the raw VALUE.
  function show(id, value, text) {
    const el = $(id);
    if (!el) return;
    el.dataset.value = value == null ? '' : String(value);
    el.textContent = text;
  }

  // ---- charts: lines on a canvas -------------------------------------------

  function Chart(canvas, colors, format) {
    this.canvas = canvas;
    this.colors = colors;
    this.format = format;
    this.series = colors.map(() => []);
  }

  Chart.prototype.push = function (values) {
    values.forEach((v, i) => {
      const s = this.series[i];
      s.push(v == null ? null : v);
      if (s.length > HISTORY) s.shift();
    });
    this.draw();
  };

  Chart.prototype.draw = function () {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || 480;
    const h = c.clientHeight || 160;
    if (c.width !== Math.round(w * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 56;
    const top = 8;
    const bottom = h - 18;
    const right = w - 6;
    let max = 0;
    for (const s of this.series) for (const v of s) if (v != null && v > max) max = v;
    max = niceMax(max);
    g.strokeStyle = '#dde1e7';
    g.fillStyle = '#6b7484';
    g.font = '11px system-ui, sans-serif';
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let i = 0; i <= 5; i++) {
      const y = bottom - (bottom - top) * i / 5;
      g.beginPath();
      g.moveTo(left, Math.round(y) + 0.5);
      g.lineTo(right, Math.round(y) + 0.5);
      g.stroke();
      g.fillText(this.format(max * i / 5), left - 6, y);
    }
    g.textAlign = 'left';
    g.textBaseline = 'alphabetic';
    g.fillText('-' + HISTORY + ' s', left, h - 4);
    g.textAlign = 'right';
    g.fillText('now', right, h - 4);
    const step = (right - left) / (HISTORY - 1);
    this.series.forEach((s, i) => {
      g.strokeStyle = this.colors[i];
      g.lineWidth = 2;
      g.beginPath();
      let pen = false;
      s.forEach((v, j) => {
        if (v == null) { pen = false; return; }
        const x = right - (s.length - 1 - j) * step;
        const y = bottom - (bottom - top) * (max ? v / max : 0);
        if (pen) g.lineTo(x, y); else g.moveTo(x, y);
        pen = true;
      });
      g.stroke();
    });
  };

  // The smallest of 1, 2, 5 × 10^k at or above V (at least 1).
  function niceMax(v) {
    if (!(v > 1)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  const css = getComputedStyle(document.documentElement);
  const IN = css.getPropertyValue('--in').trim() || '#1f77b4';
  const OUT = css.getPropertyValue('--out').trim() || '#e07b00';
  const charts = {
    messages: new Chart($('chart-messages'), [IN, OUT], rate),
    bytes: new Chart($('chart-bytes'), [IN, OUT], (v) => bytes(v)),
    connections: new Chart($('chart-connections'), ['#2e8b57'], count),
  };

  // ---- tables ------------------------------------------------------------

  function cell(tr, text, value, numeric) {
    const td = document.createElement('td');
    td.textContent = text;
    if (value !== undefined) td.dataset.value = value == null ? '' : String(value);
    if (numeric) td.className = 'n';
    tr.appendChild(td);
    return td;
  }

  // Numeric cells of X's FIELDS ([name, format] each), their raw values in data-value.
  const TRAFFIC = [['connections_open', count], ['messages_in', count], ['messages_out', count],
    ['bytes_in', (v) => bytes(v)], ['bytes_out', (v) => bytes(v)]];
  const FRAMES = [['frames_in', count], ['bytes_in', (v) => bytes(v)], ['frames_out', count],
    ['bytes_out', (v) => bytes(v)]];
  function numbers(tr, x, fields) {
    for (const [f, format] of fields) cell(tr, format(x[f]), x[f], true).dataset.field = f;
  }

  function fill(tbodyParent, rows, build) {
    const tbody = tbodyParent.querySelector('tbody');
    const frag = document.createDocumentFragment();
    for (const r of rows) {
      const tr = document.createElement('tr');
      build(tr, r);
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
  }

  const closing = new Set();            // ids whose close was asked for

  function renderConnections(list, total) {
    fill($('connections'), list, (tr, c) => {
      tr.dataset.id = c.id;
      if (closing.has(c.id)) tr.className = 'closing';
      const consumer = c.consumer || {};
      cell(tr, c.id);
      cell(tr, c.api || '');
      cell(tr, c.version || '');
      cell(tr, consumer.application || '');
      cell(tr, c.client ? c.client.ip + ':' + c.client.port : '');
      cell(tr, time(c.since));
      cell(tr, time(c.last_activity));
      numbers(tr, c, FRAMES);
      const td = document.createElement('td');
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'close';
      b.textContent = 'Close';
      b.dataset.id = c.id;
      b.disabled = closing.has(c.id);
      b.addEventListener('click', () => closeConnection(c.id, b));
      td.appendChild(b);
      tr.appendChild(td);
    });
    const n = list.length;
    $('conn-count').textContent = n < total ? `(${n} of ${total} listed)` : `(${total})`;
    for (const id of closing) if (!list.some((c) => c.id === id)) closing.delete(id);
  }

  function render(s) {
    const r = s.rates || {};
    const t = s.totals || {};
    const e = s.errors || {};
    show('v-connections_open', s.connections_open, count(s.connections_open));
    show('v-rate-messages_in', r.messages_in, rate(r.messages_in));
    show('v-rate-messages_out', r.messages_out, rate(r.messages_out));
    show('v-rate-bytes_in', r.bytes_in, bytes(r.bytes_in, '/s'));
    show('v-rate-bytes_out', r.bytes_out, bytes(r.bytes_out, '/s'));
    show('v-rate-throttled', r.throttled, rate(r.throttled));
    show('v-total-messages_in', t.messages_in, count(t.messages_in));
    show('v-total-messages_out', t.messages_out, count(t.messages_out));
    show('v-total-bytes_in', t.bytes_in, bytes(t.bytes_in));
    show('v-total-bytes_out', t.bytes_out, bytes(t.bytes_out));
    show('v-total-throttled', t.throttled, count(t.throttled));
    show('v-auth_failures', e.auth_failures, count(e.auth_failures));
    show('v-policy_errors', e.policy_errors, count(e.policy_errors));
    show('v-backend_failures', e.backend_failures, count(e.backend_failures));
    $('totals-scope').textContent = s.source === 'stats'
      ? 'since start, the whole host' : 'of the connections open now (weir.stats did not answer)';
    $('source').textContent = 'source: ' + s.source;
    $('source').dataset.value = s.source;
    $('updated').textContent = 'updated ' + time(s.at) + ' (worker ' + s.worker + ')';
    charts.messages.push([r.messages_in, r.messages_out]);
    charts.bytes.push([r.bytes_in, r.bytes_out]);
    charts.connections.push([s.connections_open]);
    fill($('apis'), s.apis || [], (tr, a) => {
      tr.dataset.api = a.api;
      cell(tr, a.api);
      cell(tr, a.version);
      numbers(tr, a, TRAFFIC);
    });
    fill($('applications'), s.applications || [], (tr, a) => {
      tr.dataset.application = a.application;
      cell(tr, a.application || '(none identified)');
      numbers(tr, a, TRAFFIC);
      cell(tr, time(a.last_access), a.last_access).dataset.field = 'last_access';
    });
    renderConnections(s.connections ? s.connections.list || [] : [], s.connections ? s.connections.total : 0);
  }

  // ---- the feed ----------------------------------------------------------

  function notice(text) {
    const n = $('notice');
    n.textContent = text || '';
    n.hidden = !text;
  }

  function feedState(state, text) {
    const el = $('feed-state');
    el.dataset.state = state;
    el.className = 'state ' + (state === 'open' ? 'on' : state === 'refused' ? 'bad' : 'off');
    el.textContent = text;
  }

  // The token as a subprotocol: "weir-admin." and its UTF-8 bytes in base64url.
  function tokenProtocol(token) {
    let bin = '';
    for (const b of new TextEncoder().encode(token)) bin += String.fromCharCode(b);
    return 'weir-admin.' + btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function connect() {
    const token = sessionStorage.getItem(KEY);
    if (!token) return;
    clearTimeout(retry);
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/dashboard/live';
    feedState('connecting', 'connecting…');
    const sock = new WebSocket(url, ['weir-dashboard', tokenProtocol(token)]);
    ws = sock;
    sock.onopen = () => {
      backoff = 1000;
      feedState('open', 'live');
      notice('');
    };
    sock.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch (_) { return; }
      if (m.type === 'snapshot') render(m);
      else if (m.type === 'answer') answered(m);
      else if (m.type === 'error' && m.error) notice(m.error.message);
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      if (!loggedIn) return;
      if (ev.code === 1008) {
        // the admin token changed: check it again (a 401 shows the login)
        login(sessionStorage.getItem(KEY) || '');
        return;
      }
      feedState('closed', 'reconnecting…');
      retry = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  function closeConnection(id, button) {
    if (!ws || ws.readyState !== WebSocket.OPEN) { notice('The feed is not connected'); return; }
    closing.add(id);
    button.disabled = true;
    button.closest('tr').className = 'closing';
    ws.send(JSON.stringify({ op: 'close', id: id }));
  }

  function answered(m) {
    if (m.op !== 'close') return;
    if (m.status === 200) { notice('Closed ' + m.id + ' (code ' + (m.body && m.body.code) + ')'); return; }
    closing.delete(m.id);
    notice('Could not close ' + m.id + ': ' + (m.body && m.body.error ? m.body.error.message : 'status ' + m.status));
  }

  // ---- login -------------------------------------------------------------

  function showBoard(on) {
    loggedIn = on;
    $('login').hidden = on;
    $('board').hidden = !on;
    $('logout').hidden = !on;
  }

  async function login(token) {
    const err = $('login-error');
    err.hidden = true;
    let res;
    try {
      res = await fetch('/status', { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store' });
    } catch (e) {
      err.textContent = 'weir did not answer: ' + e.message;
      err.hidden = false;
      return;
    }
    if (res.status === 401) {
      sessionStorage.removeItem(KEY);
      showBoard(false);
      err.textContent = 'This admin token was refused.';
      err.hidden = false;
      feedState('refused', 'token refused');
      return;
    }
    if (!res.ok) {
      err.textContent = 'weir answered ' + res.status;
      err.hidden = false;
      return;
    }
    sessionStorage.setItem(KEY, token);
    $('token').value = '';
    showBoard(true);
    connect();
  }

  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    login($('token').value.trim());
  });

  $('logout').addEventListener('click', () => {
    sessionStorage.removeItem(KEY);
    showBoard(false);
    clearTimeout(retry);
    if (ws) { const s = ws; ws = null; s.close(1000, 'logged out'); }
    feedState('off', 'not connected');
  });

  window.addEventListener('resize', () => Object.values(charts).forEach((c) => c.draw()));

  if (sessionStorage.getItem(KEY)) login(sessionStorage.getItem(KEY));    // a reload: checked again
})();
