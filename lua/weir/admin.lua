--- The admin API (docs/admin-api.md): status, reload, the published APIs,
-- and the host's live connections, listed from the registry every worker
-- writes (core/registry.h) and reached, when another worker holds them,
-- through the bus between workers (core/bus.h).
--
-- The core has already checked the admin token and read the body
-- (core/service.c); `handle(req)` answers `status, body, header lines`.
-- Every error is the standard error JSON.
--
-- @module weir.admin

local ffi = require "ffi"
local cjson = require "cjson.safe"
local weir = require "weir"

local type, pairs, ipairs, tostring, tonumber, next = type, pairs, ipairs, tostring, tonumber, next
local format, concat, sort, floor = string.format, table.concat, table.sort, math.floor

ffi.cdef [[
    typedef struct {
        uint64_t  n;
        int       worker;
        uint32_t  slot;
        uint64_t  since_ms, last_ms;
        uint64_t  frames_in, bytes_in, frames_out, bytes_out;
        uint16_t  peer_port;
        uint8_t   tls;
        char      peer_ip[48];
        char      api[128];
        char      version[64];
        char      application[128];
        char      subscriber[128];
        char      key_type[16];
        char      tier[64];
    } weir_reg_conn_t;
    typedef struct {
        uint64_t  started_ms, generation, reload_ms;
        char      reload_result[16];
        char      reload_report[8192];
        int       nworkers;
    } weir_reg_status_t;
    int      weir_registry_read(uint64_t i, weir_reg_conn_t *out);
    void     weir_registry_status(weir_reg_status_t *out);
    int      weir_registry_pid(int worker);
    uint32_t weir_registry_per_worker(void);
    size_t   weir_registry_sizeof(int which);
    int      weir_ffi_worker(void);
    double   weir_ffi_conn_act(int worker, int action, const uint64_t *ns, const uint32_t *slots,
                               uint32_t count, int code, int opcode, const char *p, size_t len, uint64_t *token);
    uint64_t weir_ffi_reload(void);
    const char *weir_ffi_version(void);
]]
local C = ffi.C

local _M = {}

local SEND_CLIENT, SEND_BACKEND, CLOSE = 1, 2, 3       -- core/bus.h
local MAX_PUSH = 64 * 1024          -- bytes of a message pushed through the API
local MAX_TARGETS = 8192            -- connections named in one command to a worker
local PAGE_DEFAULT, PAGE_MAX = 100, 1000

local JSON_HEADERS = "Content-Type: application/json\r\nCache-Control: no-store\r\n"

local conn_box = ffi.new("weir_reg_conn_t")
local status_box = ffi.new("weir_reg_status_t")
assert(ffi.sizeof("weir_reg_conn_t") == tonumber(C.weir_registry_sizeof(0))
       and ffi.sizeof("weir_reg_status_t") == tonumber(C.weir_registry_sizeof(1)),
       "weir.admin and core/registry.h disagree on the registry's layout")

------------------------------------------------------------------------------
-- JSON out: objects keep their keys' order when built with `obj`, and an
-- empty list stays a list
------------------------------------------------------------------------------

local ARRAY, OBJ, RAW = {}, {}, {}

local function array(t) return setmetatable(t or {}, ARRAY) end

-- An object whose keys are written in the order given: obj("a", 1, "b", 2).
local function obj(...)
    local t = setmetatable({ _keys = {} }, OBJ)
    local n = select("#", ...)
    for i = 1, n, 2 do
        local k, v = select(i, ...)
        t._keys[#t._keys + 1] = k
        t[k] = v
    end
    return t
end

local ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
local function jstr(s)
    return '"' .. s:gsub('[%c"\\]', function(c) return ESC[c] or format("\\u%04x", c:byte()) end) .. '"'
end

local encode
encode = function(v, out)
    local t = type(v)
    if t == "table" then
        local mt = getmetatable(v)
        if mt == ARRAY then
            out[#out + 1] = "["
            for i, x in ipairs(v) do
                if i > 1 then out[#out + 1] = "," end
                encode(x, out)
            end
            out[#out + 1] = "]"
        elseif mt == RAW then
            out[#out + 1] = v[1]
        elseif mt == OBJ then
            out[#out + 1] = "{"
            local first = true
            for _, k in ipairs(v._keys) do
                if v[k] ~= nil then
                    if not first then out[#out + 1] = "," end
                    first = false
                    out[#out + 1] = jstr(k)
                    out[#out + 1] = ":"
                    encode(v[k], out)
                end
            end
            out[#out + 1] = "}"
        else
            out[#out + 1] = cjson.encode(v) or "null"
        end
    elseif t == "number" then
        if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then out[#out + 1] = format("%d", v)
        else out[#out + 1] = format("%.14g", v) end
    elseif t == "string" then
        out[#out + 1] = jstr(v)
    elseif v == nil then
        out[#out + 1] = "null"
    else
        out[#out + 1] = cjson.encode(v) or "null"
    end
    return out
end

local function json(v) return concat(encode(v, {})) end

-- JSON text S, written as it is.
local function raw(s) return setmetatable({ s }, RAW) end

local function answer(status, body, extra)
    return status, json(body) .. "\n", JSON_HEADERS .. (extra or "")
end

local function fail(status, problem, message, extra)
    return status, weir.error_json(problem, status, message), JSON_HEADERS .. (extra or "")
end

_M.array, _M.obj, _M.json, _M.answer, _M.fail, _M.raw = array, obj, json, answer, fail, raw

------------------------------------------------------------------------------
-- Requests: the query, the JSON body
------------------------------------------------------------------------------

local function unescape(s)
    s = s:gsub("+", " ")
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- The path and the query arguments (the last of a repeated name wins).
function _M.split_target(target)
    local path, q = target:match("^([^?]*)%??(.*)$")
    local args = {}
    for pair in q:gmatch("[^&]+") do
        local k, v = pair:match("^([^=]*)=?(.*)$")
        args[unescape(k)] = unescape(v)
    end
    return path, args
end

--- A header's value from the request head (the first one), or nil.
function _M.header(head, name)
    local lname = name:lower()
    for line in head:gmatch("[^\r\n]+") do
        local k, v = line:match("^([^:]+):%s*(.-)%s*$")
        if k and k:lower() == lname then return v end
    end
    return nil
end

--- Decode REQ's body as a JSON object whose fields are all in ALLOWED (a
-- set). Returns the table (empty for no body), or nil and an answer.
function _M.body(req, allowed)
    if req.body == "" then return {} end
    local ct = _M.header(req.head, "Content-Type")
    if not ct or not ct:lower():match("^application/json%s*;?") then
        return nil, { fail(415, "/problems/unsupported-media-type", "Send the body as application/json") }
    end
    local v = cjson.decode(req.body)
    if type(v) ~= "table" or (next(v) ~= nil and v[1] ~= nil) then
        return nil, { fail(400, "/problems/bad-request", "The body must be a JSON object") }
    end
    for k in pairs(v) do
        if type(k) ~= "string" or not allowed[k] then
            local names = {}
            for a in pairs(allowed) do names[#names + 1] = a end
            sort(names)
            return nil, { fail(400, "/problems/bad-request",
                               format("Unknown field %s (known: %s)", cjson.encode(tostring(k)), concat(names, ", "))) }
        end
    end
    return v
end

------------------------------------------------------------------------------
-- The registry
------------------------------------------------------------------------------

local function str(c) return c[0] ~= 0 and ffi.string(c) or nil end

local function iso(ms)
    ms = tonumber(ms)
    return os.date("!%Y-%m-%dT%H:%M:%S", floor(ms / 1000)) .. format(".%03dZ", ms % 1000)
end

local function status_copy()
    C.weir_registry_status(status_box)
    return status_box
end

--- Call FN(c) for every listed connection of the host (c: the registry's
-- copy, valid during the call).
local function each_conn(fn)
    local per = tonumber(C.weir_registry_per_worker())
    local total = status_copy().nworkers * per
    for i = 0, total - 1 do
        if C.weir_registry_read(i, conn_box) == 1 then fn(conn_box) end
        if i % 4096 == 4095 then C.weir_ffi_budget_reset() end
    end
end

_M.each_conn = each_conn

local cluster = require "weir.cluster"

-- A connection's id: "w0-17", and "w0-17@HOST" when hosts share a Redis.
local function conn_name(c)
    local id = format("w%d-%d", c.worker, tonumber(c.n))
    if cluster.enabled() then id = id .. "@" .. cluster.host() end
    return id
end

local function describe(c)
    local consumer
    local app, sub, kt, tier = str(c.application), str(c.subscriber), str(c.key_type), str(c.tier)
    if app or sub or kt or tier then
        consumer = obj("application", app, "subscriber", sub, "key_type", kt, "tier", tier)
    end
    return obj("id", conn_name(c), "host", cluster.enabled() and cluster.host() or nil, "worker", c.worker,
               "api", str(c.api), "version", str(c.version),
               "client", obj("ip", str(c.peer_ip), "port", c.peer_port), "tls", c.tls ~= 0,
               "consumer", consumer, "since", iso(c.since_ms), "last_activity", iso(c.last_ms),
               "frames_in", tonumber(c.frames_in), "bytes_in", tonumber(c.bytes_in),
               "frames_out", tonumber(c.frames_out), "bytes_out", tonumber(c.bytes_out))
end

-- what the dashboard's feed reads (weir.dashboard)
_M.describe, _M.str, _M.iso = describe, str, iso

local FILTERS = { api = "api", version = "version", application = "application", subscriber = "subscriber",
                  client = "peer_ip", key_type = "key_type", tier = "tier" }

-- The filters among ARGS, as { field = value }; nil and an answer when a
-- value is unusable.
local function filters(args)
    local f, any = {}, false
    for name, field in pairs(FILTERS) do
        local v = args[name]
        if v ~= nil then
            if v == "" or #v > 255 then
                return nil, { fail(400, "/problems/bad-request", "Filter " .. name .. " needs a value") }
            end
            f[field] = v
            any = true
        end
    end
    return f, nil, any
end

local function matches(c, f)
    for field, v in pairs(f) do
        if str(c[field]) ~= v then return false end
    end
    return true
end

--- The connections matching F: a list of { worker, n, slot }, ordered by
-- worker then number (oldest first).
local function matching(f)
    local out = {}
    each_conn(function(c)
        if matches(c, f) then out[#out + 1] = { c.worker, tonumber(c.n), c.slot } end
    end)
    sort(out, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
    return out
end

-- The registry's copy of connection ID ("w0-17"), or nil.
local function find(id)
    local w, n, at = tostring(id):match("^w(%d+)%-(%d+)(.*)$")
    if at ~= "" and (not cluster.enabled() or at ~= "@" .. cluster.host()) then return nil end
    w, n = tonumber(w), tonumber(n)
    if not w then return nil end
    local per = tonumber(C.weir_registry_per_worker())
    if w >= status_copy().nworkers then return nil end
    for i = w * per, (w + 1) * per - 1 do
        if C.weir_registry_read(i, conn_box) == 1 and tonumber(conn_box.n) == n then return conn_box end
    end
    return nil
end

------------------------------------------------------------------------------
-- Acting on connections: this worker's at once, others' through the bus
------------------------------------------------------------------------------

local ns_buf = ffi.new("uint64_t[?]", MAX_TARGETS)
local slots_buf = ffi.new("uint32_t[?]", MAX_TARGETS)
local token_box = ffi.new("uint64_t[1]")

--- Do ACTION to TARGETS ({ worker, n, slot } each). Returns how many were
-- reached. Waits for the other workers' answers.
local function act(targets, action, code, opcode, payload)
    local by_worker = {}
    for _, t in ipairs(targets) do
        local l = by_worker[t[1]]
        if not l then l = {}; by_worker[t[1]] = l end
        l[#l + 1] = t
    end
    local waits, done = {}, 0
    for w, list in pairs(by_worker) do
        for from = 1, #list, MAX_TARGETS do
            local n = 0
            for i = from, math.min(from + MAX_TARGETS - 1, #list) do
                ns_buf[n], slots_buf[n] = list[i][2], list[i][3]
                n = n + 1
            end
            local r = C.weir_ffi_conn_act(w, action, ns_buf, slots_buf, n, code or 0, opcode or 1,
                                          payload, #payload, token_box)
            if r == -2 then waits[#waits + 1] = tonumber(token_box[0])
            elseif r > 0 then done = done + r end
        end
    end
    local rt = require "weir.runtime"
    for _, token in ipairs(waits) do
        local got = rt.wait(token)
        if got and got > 0 then done = done + got end
    end
    return done
end

------------------------------------------------------------------------------
-- Other hosts (state.redis): the same, asked through weir.cluster
------------------------------------------------------------------------------

-- The host connection ID names when it is another one, else nil.
local function remote_host(id)
    local at = tostring(id):match("@([%w._-]+)$")
    if at and cluster.enabled() and at ~= cluster.host() then return at end
end

local jose = require "weir.jose"

-- A command's message for another host: the payload as text, or base64url.
local function wire(m)
    if m.opcode == 2 then return { payload_b64 = jose.b64url_encode(m.payload) } end
    return { payload = m.payload }
end

local function unwire(msg)
    if msg.payload_b64 then return jose.b64url_decode(msg.payload_b64) or "" end
    return type(msg.payload) == "string" and msg.payload or ""
end

-- The other hosts alive, or an empty list when there are none (or no Redis).
local function peers()
    if not cluster.enabled() then return {} end
    return cluster.peers() or {}
end

cluster.handle("list", function(msg)
    local all = matching(type(msg.filters) == "table" and msg.filters or {})
    local per, out = tonumber(C.weir_registry_per_worker()), {}
    for i = 1, math.min(tonumber(msg.upto) or 0, #all) do
        local t = all[i]
        if C.weir_registry_read(t[1] * per + t[3], conn_box) == 1 and tonumber(conn_box.n) == t[2] then
            out[#out + 1] = json(describe(conn_box))
        end
    end
    return { total = #all, connections = out }
end)

cluster.handle("get", function(msg)
    local c = find(msg.id)
    return { connection = c and json(describe(c)) or nil }
end)

-- Close codes an operator may send: what a well-behaved peer understands.
local function close_code_ok(c)
    return c == 1000 or c == 1001 or c == 1008 or c == 1011 or c == 1012 or c == 1013
           or (c >= 3000 and c <= 4999)
end

-- A command from another host: its action and close code are checked as
-- this host's own requests are.
local function valid_command(msg)
    local a, code = msg.action, tonumber(msg.code) or 0
    if a ~= SEND_CLIENT and a ~= SEND_BACKEND and a ~= CLOSE then return false end
    return a ~= CLOSE or close_code_ok(code)
end

cluster.handle("act", function(msg)
    if not valid_command(msg) then return { done = 0, error = "invalid command" } end
    local c = find(msg.id)
    if not c then return { done = 0 } end
    return { done = act({ { c.worker, tonumber(c.n), c.slot } }, msg.action, msg.code, msg.opcode, unwire(msg)) }
end)

cluster.handle("act_filter", function(msg)
    if not valid_command(msg) then return { matched = 0, done = 0, error = "invalid command" } end
    local targets = matching(type(msg.filters) == "table" and msg.filters or {})
    return { matched = #targets, done = act(targets, msg.action, msg.code, msg.opcode, unwire(msg)) }
end)

cluster.handle("recheck", function()
    _M.recheck_all(true)
    return { done = 0 }
end)

-- Do ACTION (M: payload, opcode; CODE) to connection ID of another host.
-- Returns how many were reached, or nil when the host did not answer.
local function act_remote(host, id, action, code, m)
    local msg = wire(m)
    msg.op, msg.id, msg.action, msg.code, msg.opcode = "act", id, action, code, m.opcode
    local a = cluster.ask({ host }, msg)[host]
    return a and tonumber(a.done) or nil
end

-- The same for every connection of every other host matching F: matched, reached.
local function act_peers(f, action, code, m)
    local msg = wire(m)
    msg.op, msg.filters, msg.action, msg.code, msg.opcode = "act_filter", f, action, code, m.opcode
    local matched, done = 0, 0
    for _, a in pairs(cluster.ask(peers(), msg)) do
        matched = matched + (tonumber(a.matched) or 0)
        done = done + (tonumber(a.done) or 0)
    end
    return matched, done
end

-- The message of a push request: its payload and opcode, and where it goes.
local function push_message(req)
    local b, err = _M.body(req, { text = true, binary = true, to = true })
    if not b then return nil, err end
    local to = b.to or "client"
    if to ~= "client" and to ~= "backend" then
        return nil, { fail(400, "/problems/bad-request", 'to must be "client" or "backend"') }
    end
    local payload, opcode
    if type(b.text) == "string" and b.binary == nil then
        payload, opcode = b.text, 1
    elseif type(b.binary) == "string" and b.text == nil then
        local b64 = b.binary:gsub("%s", ""):gsub("=+$", "")
        local bin = not b64:find("[-_]") and require("weir.jose").b64url_decode((b64:gsub("[+/]", { ["+"] = "-", ["/"] = "_" })))
        if not bin then
            return nil, { fail(400, "/problems/bad-request", "binary must be base64") }
        end
        payload, opcode = bin, 2
    else
        return nil, { fail(400, "/problems/bad-request", "Give the message as text or as binary (base64), one of them") }
    end
    if #payload > MAX_PUSH then
        return nil, { fail(413, "/problems/payload-too-large",
                           format("A pushed message is at most %d bytes", MAX_PUSH)) }
    end
    return { payload = payload, opcode = opcode, action = to == "client" and SEND_CLIENT or SEND_BACKEND }
end


local function close_request(req, args)
    local b, err = _M.body(req, { code = true, message = true, problem = true })
    if not b then return nil, err end
    local code = b.code or tonumber(args.code) or 1000
    if type(code) ~= "number" or code ~= floor(code) or not close_code_ok(code) then
        return nil, { fail(400, "/problems/bad-request",
                           "code must be 1000, 1001, 1008, 1011, 1012, 1013 or 3000-4999") }
    end
    local message = b.message or args.message or "Closed by the operator"
    local problem = b.problem or args.problem or "/problems/closed-by-operator"
    if type(message) ~= "string" or #message > 120 or message:find("%z") then
        return nil, { fail(400, "/problems/bad-request", "message must be a string of at most 120 bytes") }
    end
    if type(problem) ~= "string" or not problem:match("^/problems/[%w%-]+$") then
        return nil, { fail(400, "/problems/bad-request", 'problem must look like "/problems/name"') }
    end
    return { code = code, payload = problem .. "\0" .. message .. "\0" }
end

------------------------------------------------------------------------------
-- Endpoints
------------------------------------------------------------------------------

local routes = {}

local function route(method, pattern, fn)
    routes[#routes + 1] = { method = method, pattern = "^" .. pattern .. "$", fn = fn }
end

route("GET", "/status", function()
    local st = status_copy()
    local per = tonumber(C.weir_registry_per_worker())
    local counts, total = {}, 0
    each_conn(function(c)
        counts[c.worker] = (counts[c.worker] or 0) + 1
        total = total + 1
    end)
    local workers = array()
    for i = 0, st.nworkers - 1 do
        local pid = C.weir_registry_pid(i)
        workers[#workers + 1] = obj("index", i, "pid", pid ~= 0 and pid or nil, "running", pid ~= 0,
                                    "connections", counts[i] or 0)
    end
    local reload
    if st.reload_ms > 0 then
        local lines = array()
        for line in ffi.string(st.reload_report):gmatch("[^\n]+") do lines[#lines + 1] = line end
        reload = obj("at", iso(st.reload_ms), "result", ffi.string(st.reload_result), "report", lines)
    end
    local now = weir.now()
    local rt = require "weir.runtime"
    return answer(200, obj("version", ffi.string(C.weir_ffi_version()), "started", iso(st.started_ms),
                           "uptime_s", floor(now - tonumber(st.started_ms) / 1000),
                           "workers", workers, "generation", tonumber(st.generation),
                           "configuration", rt.conf and rt.conf.file, "last_reload", reload,
                           "connections", total, "connections_listed_max", per * st.nworkers,
                           "answered_by", C.weir_ffi_worker(),
                           "cluster", cluster.enabled() and obj("host", cluster.host(), "peers", array(peers())) or nil))
end)

route("POST", "/reload", function()
    local token = tonumber(C.weir_ffi_reload())
    if token == 0 then return fail(500, "/problems/internal-error", "Cannot ask the master for a reload") end
    local ok, report = require("weir.runtime").wait(token)
    if not ok or ok < 0 then return fail(504, "/problems/gateway-timeout", tostring(report)) end
    local result = report:match("^([^\n]*)")
    local lines, errors = array(), array()
    for line in report:sub(#result + 2):gmatch("[^\n]+") do
        lines[#lines + 1] = line
        local e = line:match("^%s*(/[^:]+:%d+: .*)$")
        if e then errors[#errors + 1] = e end
    end
    local status = result == "refused" and 422 or 200
    return answer(status, obj("result", result, "errors", errors, "report", lines))
end)

local function redacted_url(ep)
    if not ep then return nil end
    local host = ep.host:find(":", 1, true) and "[" .. ep.host .. "]" or ep.host
    return format("%s://%s:%d%s%s", ep.tls and "wss" or "ws", host, ep.port, ep.path or "/",
                  ep.query and "?(query hidden)" or "")
end

local function chain_of(list)
    local out = array()
    for _, e in ipairs(list or {}) do
        out[#out + 1] = obj("name", e.name, "priority", e.priority or (e.mod and e.mod.priority),
                            "fail_open", e.fail_open and true or false)
    end
    return out
end

route("GET", "/apis", function()
    local conf = require("weir.runtime").conf
    local apis = array()
    for _, a in ipairs(conf and conf.apis or {}) do
        local versions = array()
        for _, v in ipairs(a.versions) do
            versions[#versions + 1] = obj("version", v.version, "default", v.default and true or false,
                                          "endpoints", obj("production", redacted_url(v.endpoints.production),
                                                           "sandbox", redacted_url(v.endpoints.sandbox)),
                                          "policies", chain_of(v.policies))
        end
        apis[#apis + 1] = obj("name", a.name, "context", a.context, "versions", versions)
    end
    return answer(200, obj("policies", chain_of(conf and conf.policies), "apis", apis))
end)

route("GET", "/connections", function(req, args)
    local f, err = filters(args)
    if not f then return unpack(err) end
    local limit = tonumber(args.limit or PAGE_DEFAULT)
    local offset = tonumber(args.offset or 0)
    if not limit or limit < 1 or limit > PAGE_MAX or limit ~= floor(limit) then
        return fail(400, "/problems/bad-request", format("limit must be 1 to %d", PAGE_MAX))
    end
    if not offset or offset < 0 or offset ~= floor(offset) then
        return fail(400, "/problems/bad-request", "offset must be 0 or more")
    end
    local all = matching(f)
    local page, per = array(), tonumber(C.weir_registry_per_worker())
    for i = offset + 1, math.min(offset + limit, #all) do
        local t = all[i]
        if C.weir_registry_read(t[1] * per + t[3], conn_box) == 1 and tonumber(conn_box.n) == t[2] then
            page[#page + 1] = describe(conn_box)
        end
    end
    -- then the other hosts', in the order of their names, after this host's
    local total, hosts = #all, peers()
    if #hosts > 0 then
        local answers = cluster.ask(hosts, { op = "list", filters = f, upto = offset + limit })
        for _, h in ipairs(hosts) do
            local a = answers[h]
            if a and type(a.connections) == "table" then
                for i, text in ipairs(a.connections) do
                    local at = total + i            -- its place in the whole list
                    if at > offset and at <= offset + limit then page[#page + 1] = raw(text) end
                end
                total = total + (tonumber(a.total) or 0)
            end
        end
    end
    return answer(200, obj("total", total, "offset", offset, "limit", limit, "connections", page))
end)

route("GET", "/connections/([^/]+)", function(_, _, id)
    local host = remote_host(id)
    if host then
        local a = cluster.ask({ host }, { op = "get", id = id })[host]
        if a and type(a.connection) == "string" then return answer(200, raw(a.connection)) end
        return fail(404, "/problems/not-found", "No open connection " .. id)
    end
    local c = find(id)
    if not c then return fail(404, "/problems/not-found", "No open connection " .. id) end
    return answer(200, describe(c))
end)

route("POST", "/connections/([^/]+)/messages", function(req, _, id)
    local m, err = push_message(req)
    if not m then return unpack(err) end
    local n
    local host = remote_host(id)
    if host then
        n = act_remote(host, id, m.action, 0, m)
        if not n then return fail(404, "/problems/not-found", "No open connection " .. id) end
    else
        local c = find(id)
        if not c then return fail(404, "/problems/not-found", "No open connection " .. id) end
        n = act({ { c.worker, tonumber(c.n), c.slot } }, m.action, 0, m.opcode, m.payload)
    end
    if n == 0 then
        return fail(409, "/problems/conflict", "The connection is closing or its buffer is full: nothing was sent")
    end
    return answer(200, obj("id", id, "delivered", n))
end)

route("DELETE", "/connections/([^/]+)", function(req, args, id)
    local cl, err = close_request(req, args)
    if not cl then return unpack(err) end
    local n
    local host = remote_host(id)
    if host then
        n = act_remote(host, id, CLOSE, cl.code, { payload = cl.payload, opcode = 1 }) or 0
    else
        local c = find(id)
        if not c then return fail(404, "/problems/not-found", "No open connection " .. id) end
        n = act({ { c.worker, tonumber(c.n), c.slot } }, CLOSE, cl.code, 1, cl.payload)
    end
    if n == 0 then return fail(404, "/problems/not-found", "No open connection " .. id) end
    return answer(200, obj("id", id, "closed", n, "code", cl.code))
end)

-- The filter of a bulk request: at least one, or all=true.
local function bulk_filter(args)
    local f, err, any = filters(args)
    if not f then return nil, err end
    if not any and args.all ~= "true" then
        return nil, { fail(400, "/problems/bad-request",
                           "Name a filter (api, version, application, subscriber, client, key_type, tier), "
                           .. "or all=true for every connection") }
    end
    return f
end

route("POST", "/connections/messages", function(req, args)
    local f, err = bulk_filter(args)
    if not f then return unpack(err) end
    local m, merr = push_message(req)
    if not m then return unpack(merr) end
    local targets = matching(f)
    local n = act(targets, m.action, 0, m.opcode, m.payload)
    local pm, pn = act_peers(f, m.action, 0, m)
    return answer(200, obj("matched", #targets + pm, "delivered", n + pn))
end)

route("DELETE", "/connections", function(req, args)
    local f, err = bulk_filter(args)
    if not f then return unpack(err) end
    local cl, cerr = close_request(req, args)
    if not cl then return unpack(cerr) end
    local targets = matching(f)
    local n = act(targets, CLOSE, cl.code, 1, cl.payload)
    local pm, pn = act_peers(f, CLOSE, cl.code, { payload = cl.payload, opcode = 1 })
    return answer(200, obj("matched", #targets + pm, "closed", n + pn, "code", cl.code))
end)

--- Every worker of the host runs its connections' rechecks (this one at
-- once, the others through the bus); returns once they all did, or after
-- the bus's timeout.
function _M.recheck_all(this_host_only)
    local rt = require "weir.runtime"
    rt.recheck_local()
    -- the other workers first (the bus: no wait to send), then the other
    -- hosts from a task of the worker's own, which outlives this request
    local me, waits = C.weir_ffi_worker(), {}
    for w = 0, status_copy().nworkers - 1 do
        if w ~= me and C.weir_registry_pid(w) ~= 0 then
            local r = C.weir_ffi_conn_act(w, 4, nil, nil, 0, 0, 1, "", 0, token_box)
            if r == -2 then waits[#waits + 1] = tonumber(token_box[0]) end
        end
    end
    if not this_host_only and cluster.enabled() then
        rt.spawn(function() cluster.ask(peers(), { op = "recheck" }) end)
    end
    for _, token in ipairs(waits) do rt.wait(token) end
end

--- Add the routes of another module (the key manager's admin endpoints):
-- ADD(route) is called with the route function.
function _M.extend(add) add(route) end

local dispatch
local extended

--- Add the other modules' routes (the key manager's, the metrics' and
-- usage's, the dashboard's). The
-- runtime calls it when it loads a configuration with an admin listener,
-- outside any policy budget: a first request that paid for loading them
-- could run out of budget, and a module whose load failed stays failed.
function _M.extend_all()
    if extended then return end
    extended = true
    require "weir.keymanager"         -- adds its routes
    require("weir.stats").routes(route, _M)    -- /metrics, /usage
    require("weir.dashboard").routes(route)
end

--- Answer the admin request REQ (core/service.c checked its token): its
-- status, body and header lines, which name the worker that answered
-- (`Weir-Worker`).
function _M.handle(req)
    local status, body, headers = dispatch(req)
    return status, body, (headers or JSON_HEADERS) .. "Weir-Worker: " .. C.weir_ffi_worker() .. "\r\n"
end

dispatch = function(req)
    _M.extend_all()
    local path, args = _M.split_target(req.target)
    if #path > 1 and path:sub(-1) == "/" then path = path:sub(1, -2) end
    local allowed = {}
    for _, r in ipairs(routes) do
        local caps = { path:match(r.pattern) }
        if caps[1] ~= nil then
            if r.method == req.method then return r.fn(req, args, unpack(caps)) end
            allowed[#allowed + 1] = r.method
        end
    end
    if #allowed > 0 then
        return fail(405, "/problems/method-not-allowed", req.method .. " is not allowed here",
                    "Allow: " .. concat(allowed, ", ") .. "\r\n")
    end
    return fail(404, "/problems/not-found", "No admin endpoint " .. path)
end

return _M
