// scenarios.js — what the browser specs run in the page, through
// spec/support/browser.js. Every scenario takes the gateway's URL in its
// arguments, so the same scenarios run against the fake gateway
// (spec/support/fake_gateway.js) and against weir.
//
// "client": drives one WeirClient through scripted steps and returns a
// transcript of everything it saw.
//   args: {
//     url: "ws://127.0.0.1:P/echo/1.0",
//     options: {auth:"ticket", protocols:[…], reconnect:{…}, …},   WeirClient options (not getToken)
//     token: {url: "http://127.0.0.1:P/__token", query: "opaque=1",
//             sequence: [{ttl: 2}, {ttl: 30}, "a literal token"]},
//         getToken's answers in turn (the last one repeats): an object is
//         fetched from token.url (?ttl=…&query; JSON {token, expires_at}),
//         a string is handed out as it is
//     steps: [ … ], timeout: 10 (s, default for waits) }
//   steps:
//     {"op":"connect"}
//     {"op":"send","text":"hi"} | {"op":"send","texts":["a","b"]} | {"op":"send","bytes":[0,1,255]}
//     {"op":"wait","event":"open","count":2,"match":{"willReconnect":true},"timeout":10}
//         until COUNT events of that name (all so far; matching MATCH's detail fields) were seen
//     {"op":"wait","messages":["a","b"]}      until these texts arrived, in order, after what was there
//     {"op":"wait_expiry","token":1,"after_ms":500}   until the Nth token handed out has expired (+ms)
//     {"op":"fetch","url":"http://…","method":"GET"}  an HTTP request from the page (a control endpoint)
//     {"op":"mark","name":"open","data":{…}} | {"op":"signal","name":"go"}   talk to the spec
//     {"op":"refresh"}                          client.refresh()
//     {"op":"wait_reset"}                       until client.attempt is back to 0 (resetAfter passed)
//     {"op":"sleep","ms":300}                   pacing (and giving a wrong reconnect time to happen)
//     {"op":"close","code":1000,"reason":"bye"}
//   transcript: {events:[{ev, t, detail}], sends:[{data, ok, state}], tokens:[{n, kind, expires_at}],
//                state, queued, error (a step that failed, else null), step}
//
// "units": {constructs:[{url, options}] (getToken: true stands for a function),
//            ticket_urls:[[wsUrl, ticketPath]], tokens:[jwt], problems:[obj]}
//          → what new WeirClient (threw, name, message), ticketUrl, jwtExpiry and
//            parseProblem make of each
import { WeirClient, ticketUrl, jwtExpiry, parseProblem } from '/clients/js/weir-client.js';

const EVENTS = ['open', 'message', 'problem', 'auth', 'expiring', 'close', 'reconnecting', 'error'];

function detailOf(name, ev) {
  if (name === 'message') {
    if (typeof ev.data === 'string') return { data: ev.data };
    const bytes = ev.data instanceof ArrayBuffer ? new Uint8Array(ev.data) : null;
    return { binary: bytes ? Array.from(bytes) : String(ev.data) };
  }
  const d = ev.detail || {};
  if (name === 'error') {
    const e = d.error || {};
    return { message: e.message, fatal: !!e.fatal, status: e.status ?? null };
  }
  if (name === 'auth') return { expiresAt: d.expiresAt ? d.expiresAt.toISOString() : null };
  return d;
}

function tokenSource(spec, tokens, h) {
  const seq = (spec && spec.sequence) || [];
  let n = 0;
  return async () => {
    if (seq.length === 0) throw new Error('no token sequence');
    const item = seq[Math.min(n, seq.length - 1)];
    n++;
    if (typeof item === 'string') {
      const exp = jwtExpiry(item);
      tokens.push({ n, kind: 'literal', expires_at: exp });
      h.log('getToken', n, 'literal');
      return item;
    }
    const q = new URLSearchParams({ ttl: String(item.ttl ?? 60) });
    const url = spec.url + '?' + q.toString() + (spec.query ? '&' + spec.query : '');
    const res = await fetch(url, { cache: 'no-store' });
    const j = await res.json();
    tokens.push({ n, kind: 'fetched', ttl: item.ttl, expires_at: Date.parse(j.expires_at) });
    h.log('getToken', n, 'fetched, expires', j.expires_at);
    return j.token;
  };
}

function matches(detail, match) {
  for (const [k, v] of Object.entries(match || {})) {
    const got = detail ? detail[k] : undefined;
    if (v !== null && typeof v === 'object') {
      if (!matches(got, v)) return false;
    } else if (got !== v) {
      return false;
    }
  }
  return true;
}

async function client(args, h) {
  const t = { events: [], sends: [], tokens: [], state: null, queued: 0, error: null, step: null };
  const options = { ...(args.options || {}) };
  // an empty Lua table reaches us as {} rather than []
  if (options.protocols && !Array.isArray(options.protocols) && typeof options.protocols === 'object'
    && Object.keys(options.protocols).length === 0) options.protocols = [];
  if (options.auth !== 'none') options.getToken = tokenSource(args.token, t.tokens, h);
  const c = new WeirClient(args.url, options);
  for (const name of EVENTS) {
    c.addEventListener(name, (ev) => {
      const detail = detailOf(name, ev);
      t.events.push({ ev: name, t: h.now(), detail });
      h.log(name.padEnd(12), detail);
    });
  }
  const dflt = (args.timeout || 10) * 1000;
  const steps = args.steps || [];
  let seen = 0;                   // 'messages' waits look past this many messages
  try {
    for (let i = 0; i < steps.length; i++) {
      const s = steps[i];
      t.step = i + 1;
      switch (s.op) {
      case 'connect': c.connect(); break;
      case 'send': {
        const items = s.texts || (s.bytes ? [new Uint8Array(s.bytes)] : [s.text]);
        for (const data of items) {
          const state = c.state;
          const ok = c.send(data);
          t.sends.push({ data: typeof data === 'string' ? data : Array.from(data), ok, state });
        }
        break;
      }
      case 'wait':
        if (s.messages) {
          const want = s.messages;
          await h.until(() => {
            const got = t.events.filter((e) => e.ev === 'message').slice(seen).map((e) => e.detail.data);
            return got.length >= want.length;
          }, (s.timeout || 0) * 1000 || dflt, `messages ${JSON.stringify(want)}`);
          seen += want.length;
        } else {
          const count = s.count || 1;
          await h.until(() => t.events.filter((e) => e.ev === s.event && matches(e.detail, s.match)).length >= count,
            (s.timeout || 0) * 1000 || dflt, `${count} '${s.event}' event(s)` + (s.match ? ' matching ' + JSON.stringify(s.match) : ''));
        }
        break;
      case 'wait_expiry': {
        const tok = await h.until(() => t.tokens[(s.token || 1) - 1], dflt, 'token ' + (s.token || 1));
        if (!tok.expires_at) throw new Error('token ' + (s.token || 1) + ' has no known expiry');
        await h.until(() => Date.now() > tok.expires_at + (s.after_ms || 0), tok.expires_at - Date.now() + dflt,
          'the expiry of token ' + (s.token || 1));
        h.log('token', s.token || 1, 'has expired');
        break;
      }
      case 'fetch': {
        const res = await fetch(s.url, { method: s.method || 'GET', cache: 'no-store' });
        h.log('fetch', s.url, res.status, await res.text());
        break;
      }
      case 'mark': await h.mark(s.name, s.data); break;
      case 'signal': await h.waitSignal(s.name, (s.timeout || 0) * 1000 || dflt); break;
      case 'refresh': await c.refresh(); break;
      case 'wait_reset':              // the backoff went back to its start
        await h.until(() => c.attempt === 0, (s.timeout || 0) * 1000 || dflt, 'the backoff to reset');
        break;
      case 'sleep': await h.sleep(s.ms || 0); break;
      case 'close': c.close(s.code, s.reason); break;
      default: throw new Error('unknown step op ' + s.op);
      }
    }
    t.step = null;
  } catch (e) {
    t.error = String(e && e.message || e);
    h.log('step', t.step, 'failed:', t.error);
  }
  t.state = c.state;
  t.queued = c.queued;
  t.protocol = c.protocol;
  if (args.close_at_end !== false && c.state !== 'closed') c.close(1000, 'scenario over');
  return t;
}

/** What the module does without a network: constructor checks and its helpers. */
async function units(args) {
  const constructs = (args.constructs || []).map(({ url, options }) => {
    const o = { ...(options || {}) };
    if (o.getToken === true) o.getToken = async () => 'a-token';     // JSON carries no functions
    try {
      new WeirClient(url, o);
      return { threw: false };
    } catch (e) {
      return { threw: true, name: e.name, message: e.message };
    }
  });
  return {
    constructs,
    ticket_urls: (args.ticket_urls || []).map(([u, path]) => ticketUrl(u, path)),
    jwt_expiries: (args.tokens || []).map((tok) => jwtExpiry(tok)),
    problems: (args.problems || []).map((p) => parseProblem(p)),
  };
}

export const scenarios = { client, units };
