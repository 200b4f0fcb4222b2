--- The live dashboard (docs/dashboard.md): its page, served by the admin
-- listener from weir's share directory, and its feed, a WebSocket weir
-- serves itself (GET /dashboard/live; core/service.c checks the admin
-- token and completes the upgrade once `live` says so).
--
-- Every open feed gets a snapshot of the host once a second: connections
-- open, messages and bytes per second each way, throttled messages per
-- second, errors, the top APIs and applications, and the live connection
-- list (the registry, as GET /connections reads it, bounded). Totals and
-- rates come from `weir.stats` when it is there (summed over the host's
-- workers, cumulative since start); without it they are derived from the
-- registry, which knows only the open connections. A worker computes a
-- snapshot at most once per interval, however many feeds it serves.
--
-- Messages from the page are commands (JSON objects): `{"op":"snapshot"}`
-- answers a snapshot at once, `{"op":"close","id":"w0-3"[,"code":4000]}`
-- closes a connection as DELETE /connections/{id} does and answers
-- `{"type":"answer","op":"close","id":…,"status":…,"body":…}`.
--
-- @module weir.dashboard

local ffi = require "ffi"
local cjson = require "cjson.safe"
local weir = require "weir"
local admin = require "weir.admin"

local type, pairs, ipairs, tostring, tonumber, pcall, unpack = type, pairs, ipairs, tostring, tonumber, pcall, unpack
local format, sort, floor, max = string.format, table.sort, math.floor, math.max
local obj, array, json = admin.obj, admin.array, admin.json
local C = ffi.C

local _M = { name = "dashboard" }

_M.INTERVAL = 1             -- s between snapshots
_M.MAX_LISTED = 100         -- connections named in a snapshot (the oldest first)
_M.TOP = 10                 -- APIs and applications in a snapshot
_M.MAX_FEEDS = 32           -- open feeds per worker

------------------------------------------------------------------------------
-- The page: three files from the share directory
------------------------------------------------------------------------------

local FILES = {
    ["index.html"] = "text/html; charset=utf-8",
    ["dashboard.js"] = "text/javascript; charset=utf-8",
    ["dashboard.css"] = "text/css; charset=utf-8",
}

local PAGE_HEADERS = "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n"
    .. "Referrer-Policy: no-referrer\r\nContent-Security-Policy: default-src 'self'; connect-src 'self'; "
    .. "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'\r\n"

--- Where the page's files are: `WEIR_DASHBOARD_DIR` when set, else beside
-- weir's Lua directory (`<prefix>/share/weir/dashboard` when installed,
-- `clients/dashboard` in the source tree).
function _M.dir()
    local env = os.getenv("WEIR_DASHBOARD_DIR")
    if env and env ~= "" then return env end
    local src = debug.getinfo(1, "S").source
    local parent = (src:match("^@(.*)/weir/[^/]*$") or "."):match("^(.*)/[^/]*$") or "."
    for _, d in ipairs({ parent .. "/dashboard", parent .. "/clients/dashboard" }) do
        local f = io.open(d .. "/index.html", "rb")
        if f then f:close() return d end
    end
    return parent .. "/dashboard"
end

local cache = {}            -- file name → its bytes (read once per worker)

local function page(name)
    local ct = FILES[name]
    if not ct then return admin.fail(404, "/problems/not-found", "No dashboard file " .. name) end
    local body = cache[name]
    if not body then
        local f = io.open(_M.dir() .. "/" .. name, "rb")
        if not f then return admin.fail(404, "/problems/not-found", "The dashboard is not installed") end
        body = f:read("*a")
        f:close()
        cache[name] = body
    end
    return 200, body, "Content-Type: " .. ct .. "\r\n" .. PAGE_HEADERS
end

------------------------------------------------------------------------------
-- Snapshots
------------------------------------------------------------------------------

local stats_mod            -- weir.stats, false when absent

local function stats()
    if stats_mod == nil then
        local ok, m = pcall(require, "weir.stats")
        stats_mod = ok and type(m) == "table" and type(m.snapshot) == "function" and m or false
    end
    return stats_mod or nil
end

local RATES = { "messages_in", "messages_out", "bytes_in", "bytes_out", "throttled" }
local ERRORS = { "auth_failures", "policy_errors", "backend_failures" }

local function round1(x) return floor(x * 10 + 0.5) / 10 end

-- Per second between two counters, never below 0.
local function per_s(now, before, dt)
    if not now or not before or dt <= 0 then return nil end
    return round1(max(0, now - before) / dt)
end

-- The N first of LIST by KEY(x) descending (ties: NAME(x) ascending).
local function top(list, key, name, n)
    sort(list, function(a, b)
        local ka, kb = key(a), key(b)
        if ka ~= kb then return ka > kb end
        return name(a) < name(b)
    end)
    local out = array()
    for i = 1, math.min(n, #list) do out[i] = list[i] end
    return out
end

local last                  -- the last snapshot: { t =, text =, stats =, conns = }
local conn_box = ffi.new("weir_reg_conn_t")     -- declared by weir.admin

-- What the registry says: the open connections (totals per API and
-- application, the first MAX_LISTED described) and their counters by id.
local function registry()
    local r = { total = 0, apis = {}, apps = {}, conns = {}, listed = {}, sum = { 0, 0, 0, 0 } }
    local str = admin.str
    admin.each_conn(function(c)
        r.total = r.total + 1
        local id = format("w%d-%d", c.worker, tonumber(c.n))
        local v = { tonumber(c.frames_in), tonumber(c.bytes_in), tonumber(c.frames_out), tonumber(c.bytes_out) }
        r.conns[id] = v
        for i = 1, 4 do r.sum[i] = r.sum[i] + v[i] end
        local api, ver = str(c.api) or "", str(c.version) or ""
        local k = api .. "\0" .. ver
        local a = r.apis[k]
        if not a then a = { api = api, version = ver, n = 0, s = { 0, 0, 0, 0 } }; r.apis[k] = a end
        a.n = a.n + 1
        for i = 1, 4 do a.s[i] = a.s[i] + v[i] end
        local app = str(c.application) or ""       -- none identified: "", as weir.stats names it
        do
            local p = r.apps[app]
            if not p then p = { application = app, n = 0, s = { 0, 0, 0, 0 }, last = 0 }; r.apps[app] = p end
            p.n = p.n + 1
            for i = 1, 4 do p.s[i] = p.s[i] + v[i] end
            p.last = max(p.last, tonumber(c.last_ms))
        end
        r.listed[#r.listed + 1] = { c.worker, tonumber(c.n), c.slot }
    end)
    -- only those shown are described: read again, unless gone since
    sort(r.listed, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
    local per, list = tonumber(C.weir_registry_per_worker()), array()
    for i = 1, math.min(_M.MAX_LISTED, #r.listed) do
        local t = r.listed[i]
        if C.weir_registry_read(t[1] * per + t[3], conn_box) == 1 and tonumber(conn_box.n) == t[2] then
            list[#list + 1] = admin.describe(conn_box)
        end
    end
    r.list = list
    return r
end

-- Rates from the registry alone: what the connections open now moved since
-- the last snapshot (one opened since counts from its start).
local function registry_rates(r, before, dt)
    if not before then return nil end
    local d = { 0, 0, 0, 0 }
    for id, v in pairs(r.conns) do
        local p = before[id]
        for i = 1, 4 do d[i] = d[i] + max(0, v[i] - (p and p[i] or 0)) end
    end
    return obj("messages_in", round1(d[1] / dt), "messages_out", round1(d[3] / dt),
               "bytes_in", round1(d[2] / dt), "bytes_out", round1(d[4] / dt), "throttled", nil)
end

-- An object of KEYS, in their order, each FN(key) (nil ones left out).
local function fields(keys, fn)
    local args = {}
    for i, k in ipairs(keys) do args[2 * i - 1], args[2 * i] = k, fn(k) end
    return obj(unpack(args, 1, 2 * #keys))
end

local TOTALS = { "messages_in", "messages_out", "bytes_in", "bytes_out", "throttled", "handshakes" }

local function from_stats(snap, prev, dt, r)
    local rates = prev and fields(RATES, function(k) return per_s(snap[k], prev[k], dt) end) or nil
    local totals = fields(TOTALS, function(k) return tonumber(snap[k]) end)
    local errors = fields(ERRORS, function(k) return tonumber(snap[k]) or 0 end)
    local apis = {}
    for _, a in ipairs(snap.apis or {}) do
        apis[#apis + 1] = obj("api", a.api, "version", a.version, "connections_open", a.connections_open,
                              "messages_in", a.messages_in, "messages_out", a.messages_out,
                              "bytes_in", a.bytes_in, "bytes_out", a.bytes_out, "throttled", a.throttled)
    end
    local apps = {}
    for _, a in ipairs(snap.applications or {}) do
        local open = r.apps[a.application]
        apps[#apps + 1] = obj("application", a.application, "connections_open", open and open.n or 0,
                              "messages_in", a.messages_in, "messages_out", a.messages_out,
                              "bytes_in", a.bytes_in, "bytes_out", a.bytes_out, "throttled", a.throttled,
                              "last_access", a.last_access_ms and a.last_access_ms > 0
                                             and admin.iso(a.last_access_ms) or nil)
    end
    local traffic = function(x) return (x.messages_in or 0) + (x.messages_out or 0) end
    return rates, totals, errors,
           top(apis, function(x) return x.connections_open or 0 end, function(x) return x.api .. x.version end, _M.TOP),
           top(apps, traffic, function(x) return x.application end, _M.TOP),
           tonumber(snap.connections_open)
end

local function from_registry(r)
    local totals = obj("messages_in", r.sum[1], "messages_out", r.sum[3], "bytes_in", r.sum[2],
                       "bytes_out", r.sum[4])
    local apis, apps = {}, {}
    for _, a in pairs(r.apis) do
        apis[#apis + 1] = obj("api", a.api, "version", a.version, "connections_open", a.n,
                              "messages_in", a.s[1], "messages_out", a.s[3], "bytes_in", a.s[2], "bytes_out", a.s[4])
    end
    for _, p in pairs(r.apps) do
        apps[#apps + 1] = obj("application", p.application, "connections_open", p.n,
                              "messages_in", p.s[1], "messages_out", p.s[3], "bytes_in", p.s[2], "bytes_out", p.s[4],
                              "last_access", p.last > 0 and admin.iso(p.last) or nil)
    end
    local traffic = function(x) return x.messages_in + x.messages_out end
    return totals,
           top(apis, function(x) return x.connections_open end, function(x) return x.api .. x.version end, _M.TOP),
           top(apps, traffic, function(x) return x.application end, _M.TOP)
end

--- The snapshot of the host now, as JSON text (made at most once per
-- half interval per worker: feeds of the same worker share it).
function _M.snapshot()
    local now = weir.now()
    if last and now - last.t < _M.INTERVAL / 2 then return last.text end
    local dt = last and now - last.t or 0
    local r = registry()
    local st, snap = stats(), nil
    if st then
        local ok, v = pcall(st.snapshot)
        if ok and type(v) == "table" then snap = v end
    end
    local rates, totals, errors, apis, apps, open
    if snap then
        rates, totals, errors, apis, apps, open = from_stats(snap, last and last.stats, dt, r)
    else
        rates = registry_rates(r, last and last.conns, dt)
        totals, apis, apps = from_registry(r)
    end
    local list = r.list
    local text = json(obj("type", "snapshot", "at", admin.iso(floor(now * 1000)), "interval_s", _M.INTERVAL,
                          "source", snap and "stats" or "registry", "worker", C.weir_ffi_worker(),
                          "connections_open", open or r.total, "rates", rates, "totals", totals,
                          "errors", errors, "apis", apis, "applications", apps,
                          "connections", obj("total", r.total, "listed", #list, "list", list)))
    last = { t = now, text = text, stats = snap, conns = r.conns }
    return text
end

------------------------------------------------------------------------------
-- The feed
------------------------------------------------------------------------------

local feeds, nfeeds = {}, 0     -- ctx → true: this worker's open feeds

local function send(ctx, text)
    return C.weir_ffi_send(ctx._h, 1, text, #text) == 0
end

local function tick(ctx)
    if not feeds[ctx] then return end
    require("weir.runtime").timer(ctx, _M.INTERVAL, tick)      -- first: a snapshot that fails stops nothing
    -- a snapshot walks the host, as an admin request does: the service's
    -- budget, then a fresh policy budget for the timers due with it
    C.weir_ffi_budget_reset()
    C.weir_ffi_budget_service(1)
    local text = _M.snapshot()
    C.weir_ffi_budget_service(0)
    C.weir_ffi_budget_reset()
    send(ctx, text)             -- a page that does not read loses snapshots, never more than buffer_size waits
end

local CHAIN = { entries = { { name = "dashboard", mod = _M, conf = {}, seq = 1 } }, mask = 2 + 8 }

-- The core completes the upgrade: CTX (the request's) is the feed's from now on.
local function attach(ctx)
    ctx._chain = CHAIN
    feeds[ctx] = true
    nfeeds = nfeeds + 1
    require("weir.runtime").timer(ctx, 0, tick)
end

local function reply(t) return weir.reply(json(t)) end

local function refuse(status, problem, message)
    return weir.reply(weir.error_json(problem, status, message))
end

--- A message from the page: a command (see the module's description).
function _M.on_frame_in(ctx, _, frame)
    C.weir_ffi_budget_service(1)        -- the page's commands are admin requests
    local m = frame.opcode == 1 and cjson.decode(frame.payload)
    if type(m) ~= "table" or type(m.op) ~= "string" then
        return refuse(400, "/problems/bad-request", 'Send a JSON object with "op": "snapshot" or "close"')
    end
    if m.op == "snapshot" then return weir.reply(_M.snapshot()) end
    if m.op ~= "close" then return refuse(400, "/problems/bad-request", "Unknown op " .. tostring(m.op):sub(1, 40)) end
    local id, code = m.id, m.code or 1000
    if type(id) ~= "string" or not id:match("^w%d+%-%d+$") and not id:match("^w%d+%-%d+@[%w._-]+$") then
        return refuse(400, "/problems/bad-request", 'id must name a connection, as "w0-3"')
    end
    if type(code) ~= "number" or code ~= floor(code) then
        return refuse(400, "/problems/bad-request", "code must be an integer")
    end
    local status, body = admin.handle({ method = "DELETE", target = format("/connections/%s?code=%d", id, code),
                                        head = "", body = "", service = "admin", ip = ctx.id, port = 0 })
    return reply(obj("type", "answer", "op", "close", "id", id, "status", status,
                     "body", admin.raw((body:gsub("%s+$", "")))))
end

--- The feed closed: no more snapshots for it.
function _M.on_close(ctx)
    if feeds[ctx] then
        feeds[ctx] = nil
        nfeeds = nfeeds - 1
    end
end

local function live(req)
    if req.target:match("^[^?]*") ~= "/dashboard/live" or not admin.header(req.head, "Upgrade") then
        return admin.fail(404, "/problems/not-found", "No admin endpoint " .. req.target:match("^[^?]*"))
    end
    if nfeeds >= _M.MAX_FEEDS then
        return admin.fail(503, "/problems/unavailable",
                          format("This worker serves %d dashboard feeds already", _M.MAX_FEEDS), "Retry-After: 5\r\n")
    end
    return "upgrade", attach
end

--- Add the dashboard's routes to the admin API (weir.admin calls it).
function _M.routes(route)
    route("GET", "/dashboard", function() return page("index.html") end)
    route("GET", "/dashboard/live", live)
    route("GET", "/dashboard/([^/]+)", function(_, _, name) return page(name) end)
end

return _M
