--- The connection object policies receive as `ctx`.
--
-- Fields: `id` (the connection's name, "w0-17": the `conn` of its log
-- records), `api` (`name`, `version`, `context`), `request` (`method`,
-- `path`, `query_string`, `query`, `headers`, `client_ip`, `client_port`,
-- `scheme`, `subprotocols`; parsed from the handshake on first use),
-- `consumer` (set by authentication policies), `vars` (the policies' own
-- per-connection state), `policy` (the name of the policy running).
--
-- @module weir.ctx

local ffi = require "ffi"
local cjson = require "cjson.safe"

local setmetatable, getmetatable, rawget, rawset, type, tostring, tonumber, pairs, select, next =
    setmetatable, getmetatable, rawget, rawset, type, tostring, tonumber, pairs, select, next
local find, sub, lower, gsub, gmatch, match, char, byte =
    string.find, string.sub, string.lower, string.gsub, string.gmatch, string.match, string.char, string.byte
local concat, sort = table.concat, table.sort
local encode = cjson.encode
local tnew
do
    local ok, new = pcall(require, "table.new")
    tnew = ok and new or function() return {} end
end

local _M = {}

local C   -- the core's FFI functions, bound by the runtime (nil in plain LuaJIT)

--- Bind the core's functions (called by the runtime inside a worker).
function _M.bind(c) C = c end

local function unescape(s)
    s = gsub(s, "+", " ")
    return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

--- Decode a query string into a table (first value per name wins).
function _M.parse_query(qs)
    local q = {}
    if not qs or qs == "" then return q end
    for pair in gmatch(qs, "[^&]+") do
        local k, v = match(pair, "^([^=]*)=?(.*)$")
        k = unescape(k)
        if q[k] == nil then q[k] = unescape(v) end
    end
    return q
end

--- Parse header lines of a request head into a table of lower-cased
-- names; a repeated header's values are joined with ", ". Values lose the
-- spaces and tabs around them, as in the core's parser.
-- Plain searches only: a pattern walks a long value (a bearer token)
-- character by character, several times slower.
function _M.parse_headers(head)
    local h = {}
    local pos = find(head, "\r\n", 1, true)
    if not pos then return h end
    pos = pos + 2
    while true do
        local eol = find(head, "\r\n", pos, true)
        if not eol or eol == pos then break end
        local colon = find(head, ":", pos, true)
        if colon and colon > pos and colon < eol then
            local vs, ve = colon + 1, eol - 1
            local b = byte(head, vs)
            while vs <= ve and (b == 32 or b == 9) do vs = vs + 1; b = byte(head, vs) end
            b = byte(head, ve)
            while ve >= vs and (b == 32 or b == 9) do ve = ve - 1; b = byte(head, ve) end
            local name, value = lower(sub(head, pos, colon - 1)), sub(head, vs, ve)
            local old = h[name]
            h[name] = old and old .. ", " .. value or value
        end
        pos = eol + 2
    end
    return h
end

-- What reading the head's fields says once the head is gone (handshake_done).
local function head_gone(what)
    error("ctx.request." .. what .. " is not kept after the handshake: when the connection opened, its chain "
          .. "had no hook after on_handshake (no frame or close hook, no recheck, no timer or interceptor "
          .. "set), so the request head was dropped; read it in on_handshake and keep what you need in "
          .. "ctx.vars", 3)
end

-- A request keeps its fields in its array part (a table of one allocation,
-- no hash part): the head, the request line's parts, the client's address,
-- then the views parsed from the head on first use. Its metatable maps the
-- names to the slots, for reading and writing; other names are plain fields.
local R_HEAD, R_HEADERS, R_QUERY, R_PROTOS, R_LINE = 1, 9, 10, 11, 12
local R_FIELD = { method = 2, path = 3, query_string = 4, client_ip = 5, client_port = 6, scheme = 7,
                  ticket_request = 8 }
local R_VIEW = { headers = R_HEADERS, query = R_QUERY, subprotocols = R_PROTOS }

--- Where header NAME (lower-cased) is in REQ's request head, without
-- parsing the other headers or copying anything: the head and the first
-- and last positions of its value (spaces and tabs around it left out, as
-- parse_headers does). Nil when the head has no such header; false when
-- the caller must read `req.headers[name]` instead: the header is repeated
-- (req.headers joins the values), the headers were parsed already (a policy
-- may have changed them), or REQ has no head (a spec's fake request).
-- @usage local head, i, j = ctxmod.header_span(ctx.request, "authorization")
function _M.header_span(req, name)
    local head = rawget(req, R_HEAD)
    if type(head) ~= "string" then
        if head == false then head_gone("headers") end
        return false
    end
    if rawget(req, R_HEADERS) ~= nil then return false end
    local n = #name
    local pos = find(head, "\r\n", 1, true)
    if not pos then return nil end
    pos = pos + 2
    local fs, fe
    while true do
        local eol = find(head, "\r\n", pos, true)
        if not eol or eol == pos then break end
        -- NAME when the line's first colon comes right after #NAME bytes
        -- that are NAME in any case (the only string made, and rarely)
        if byte(head, pos + n) == 58 and pos + n < eol and lower(sub(head, pos, pos + n - 1)) == name then
            if fs then return false end
            local vs, ve = pos + n + 1, eol - 1
            local b = byte(head, vs)
            while vs <= ve and (b == 32 or b == 9) do vs = vs + 1; b = byte(head, vs) end
            b = byte(head, ve)
            while ve >= vs and (b == 32 or b == 9) do ve = ve - 1; b = byte(head, ve) end
            fs, fe = vs, ve
        end
        pos = eol + 2
    end
    if not fs then return nil end
    return head, fs, fe
end

local parse_line     -- forward: parse_line(r)

-- request fields from their slots (the request line parsed on first use);
-- the views parsed on first use
local REQUEST_MT = {
    __index = function(r, k)
        local i = R_FIELD[k]
        if i then
            if i <= 4 and not rawget(r, R_LINE) then parse_line(r) end
            return rawget(r, i)
        end
        i = R_VIEW[k]
        if not i then return nil end
        local v = rawget(r, i)
        if v ~= nil then return v end
        if i == R_QUERY then
            v = _M.parse_query(r.query_string)
        else
            local head = rawget(r, R_HEAD)
            if head == false then head_gone(k) end
            if i == R_HEADERS then
                v = _M.parse_headers(head or "")
            else
                v = {}
                local p = r.headers["sec-websocket-protocol"]
                if p then for w in gmatch(p, "[^,%s]+") do v[#v + 1] = w end end
            end
        end
        rawset(r, i, v)
        return v
    end,
    __newindex = function(r, k, v)
        local i = R_FIELD[k] or R_VIEW[k]
        if i and i <= 4 and not rawget(r, R_LINE) then parse_line(r) end
        if i then rawset(r, i, v) else rawset(r, k, v) end
    end,
}

-- The method and target of HEAD's request line: what match(head,
-- "^(%S+) (%S+)") gives, found with plain searches when the line is the
-- usual "METHOD SP TARGET SP ..." (the pattern otherwise).
local function request_line(head)
    local sp1 = find(head, " ", 1, true)
    local sp2 = sp1 and sp1 > 1 and find(head, " ", sp1 + 1, true)
    if sp2 and sp2 > sp1 + 1 then
        local method, target = sub(head, 1, sp1 - 1), sub(head, sp1 + 1, sp2 - 1)
        if not find(method, "%s") and not find(target, "%s") then return method, target end
    end
    return match(head, "^(%S+) (%S+)")
end

-- Fill R's method, path and query string from its head's request line.
parse_line = function(r)
    local head = rawget(r, R_HEAD)
    local method, target = request_line(type(head) == "string" and head or "")
    -- the path, up to the first "?", and the query string after it
    local path, qs = target or "/", ""
    local q = find(path, "?", 1, true)
    if q then path, qs = sub(path, 1, q - 1), sub(path, q + 1) end
    rawset(r, R_LINE, true)
    rawset(r, 2, method)
    rawset(r, 3, path)
    rawset(r, 4, qs ~= "" and qs or nil)
end

--- A request table for HEAD (the client's request line and headers).
function _M.request(head, client_ip, client_port, tls)
    local r = tnew(12, 0)
    r[R_HEAD] = head or ""
    r[R_LINE] = false   -- the line's fields (2, 3, 4) are parsed when first read
    r[5], r[6], r[7] = client_ip, client_port, tls and "wss" or "ws"
    r[8] = false        -- ticket_request: the runtime sets it for POST <path>/ticket (read on every handshake)
    return setmetatable(r, REQUEST_MT)
end

--- The handshake of CTX was decided (the runtime calls it): what only the
-- handshake needed goes, for the connection's life. The changes to the
-- backend's request were given to the core; the request's parsed views
-- (`headers`, `query`, `subprotocols`) are made again from the request
-- head on their next use, as on their first.
function _M.handshake_done(ctx)
    rawset(ctx, "_up", nil)
    local req = rawget(ctx, "request")
    if not req or getmetatable(req) ~= REQUEST_MT then return end
    rawset(req, R_HEADERS, nil)
    rawset(req, R_QUERY, nil)
    rawset(req, R_PROTOS, nil)
    -- the head itself, when nothing of this connection can run after the
    -- handshake: a chain of on_handshake hooks alone, no recheck, no timer,
    -- no interceptor (after a reload that adds later hooks, reading the
    -- headers or subprotocols is an error: head_gone)
    local c = rawget(ctx, "_chain")
    if c and c.mask == 1 and not c.rechecks and rawget(ctx, "_timers") == nil and rawget(ctx, "_icpt") == nil then
        if not rawget(req, R_LINE) then parse_line(req) end     -- kept: the line's fields are small
        rawset(req, R_HEAD, false)
    end
end

------------------------------------------------------------------------------
-- Log records
------------------------------------------------------------------------------

--- Log levels by name, as the core numbers them.
_M.LEVELS = { debug = 0, info = 1, warn = 2, error = 3 }

-- members every record starts with, or that name what it is about: a
-- policy's fields never replace them
local RESERVED = { ts = true, level = true, pid = true, msg = true, conn = true, policy = true }

--- Write a log record (docs/logging.md): after `ts`, `level`, `pid` and
-- `msg`, `conn` and `policy` (each left out when nil), then the members
-- NAME, VALUE given as pairs in `...`, in that order, then the members of
-- the table FIELDS in name order (values that JSON cannot hold are left
-- out, and so are names the record already has).
-- @tparam number level 0 (debug) to 3 (error)
-- @tparam string msg
-- @tparam[opt] string conn the connection's name (ctx.id)
-- @tparam[opt] string policy
-- @tparam[opt] table fields
-- @usage ctxmod.log(3, "timer failed", ctx.id, name, nil, "error", err)
function _M.log(level, msg, conn, policy, fields, ...)
    if C.weir_ffi_log_level() > level then return end
    local out, n = {}, 0
    if conn ~= nil then n = n + 1; out[n] = '"conn":' .. encode(tostring(conn)) end
    if policy ~= nil then n = n + 1; out[n] = '"policy":' .. encode(tostring(policy)) end
    for i = 1, select("#", ...), 2 do
        local name, v = select(i, ...)
        v = cjson.encode(v)
        if v then n = n + 1; out[n] = encode(name) .. ":" .. v end
    end
    if fields then
        local names, k = {}, 0
        for name in pairs(fields) do
            if type(name) == "string" and not RESERVED[name] then k = k + 1; names[k] = name end
        end
        sort(names)
        for i = 1, k do
            local v = cjson.encode(fields[names[i]])
            if v then n = n + 1; out[n] = encode(names[i]) .. ":" .. v end
        end
    end
    C.weir_ffi_log(level, tostring(msg), n > 0 and concat(out, ",") or nil)
end

local CTX = {}

-- A ctx keeps a few things in its array part, where each costs 8 bytes and
-- leaves the hash part (the runtime's fields and the policies') at 8 slots
-- for a chain such as key-auth's: its name (ctx.id), its version's shared
-- ctx.api, and the consumer last told to the core (the runtime's).
local ID, TOLD, API = 1, 2, 3
_M.TOLD = TOLD

-- methods; `id` and `api` from the array part; `vars`, made on first use
-- (most connections never need it)
CTX.__index = function(ctx, k)
    local m = CTX[k]
    if m ~= nil then return m end
    if k == "id" then return rawget(ctx, ID) end
    if k == "api" then return rawget(ctx, API) end
    if k == "vars" then
        local v = {}
        rawset(ctx, "vars", v)
        return v
    end
    return nil
end

local LEVELS = _M.LEVELS

--- Send PAYLOAD to the client, as a message of its own.
-- @tparam string payload
-- @tparam[opt] number opcode `weir.TEXT` (default) or `weir.BINARY`
-- @treturn boolean true, or nil and an error when the connection is gone
-- @usage ctx:send('{"type":"welcome"}')
function CTX:send(payload, opcode)
    if type(payload) ~= "string" then error("ctx:send(payload [, opcode]): payload must be a string", 2) end
    if rawget(self, "_closed") then return nil, "closed" end
    if C.weir_ffi_send(self._h, opcode or 1, payload, #payload) ~= 0 then return nil, "closed" end
    return true
end

--- Close the connection: the client gets close CODE and REASON (and, when
-- given, the error JSON made from a `weir.error` verdict first); the backend
-- gets 1001.
-- @tparam number code a close code (1000, 1008, 4000–4999, ...)
-- @tparam[opt] string reason
-- @tparam[opt] table err a `weir.error(...)` whose JSON is sent first
-- @usage ctx:close(1008, "policy violation")
function CTX:close(code, reason, err)
    if rawget(self, "_closed") then return nil, "closed" end
    C.weir_ffi_close(self._h, code or 1000, reason or "", err and err.problem or nil,
                     err and err.message or nil)
    return true
end

--- Log a JSON line with the connection's id (`conn`) and the running
-- policy (`policy`), then FIELDS' members in name order.
-- @tparam string level "debug", "info", "warn" or "error"
-- @tparam string msg
-- @tparam[opt] table fields extra members (strings, numbers, booleans)
-- @usage ctx:log("info", "subscribed", { topic = t })
function CTX:log(level, msg, fields)
    _M.log(LEVELS[level] or 1, msg, self.id, rawget(self, "policy"), fields)
end

--- Run FN(ctx, ...) after DELAY seconds, on this connection. Timers of a
-- closed connection do not run.
-- @treturn table a handle with `:cancel()`
-- @usage ctx:timer(30, function(ctx) ctx:send("still there?") end)
function CTX:timer(delay, fn, ...)
    return _M.runtime.timer(self, delay, fn, ...)
end

------------------------------------------------------------------------------
-- The request the backend receives (on_handshake only)
------------------------------------------------------------------------------

-- The four sets of changes start as this one empty table, shared and never
-- written (the runtime only reads them): a set is made when first written.
local NONE = setmetatable({}, { __newindex = function() error("weir.ctx: the shared empty set is read-only", 2) end })

-- The changes of a request that only loses header L (an authentication
-- policy hiding the credential, on every handshake): one table per name,
-- shared and never written; the first other change makes the ctx its own.
local only_cleared, n_only_cleared, ONLY_MAX = {}, 0, 64

local function upstream(self, what)
    if rawget(self, "_upgraded") then
        error("ctx:" .. what .. " changes the backend's request: call it from on_handshake", 3)
    end
    local up = rawget(self, "_up")
    if not up then
        up = { set = NONE, del = NONE, query = NONE, proto = NONE }
        rawset(self, "_up", up)
    elseif up.shared then
        local del = {}
        for k in pairs(up.del) do del[k] = true end
        up = { set = NONE, del = del, query = NONE, proto = NONE }
        rawset(self, "_up", up)
    end
    return up
end

-- UP's set K, made when it is still the shared empty one
local function set_of(up, k)
    local t = up[k]
    if t == NONE then
        t = {}
        up[k] = t
    end
    return t
end

-- names already checked → their lower case (a policy names the same few
-- headers on every handshake); at most NAMES_MAX remembered
local checked, n_checked, NAMES_MAX = {}, 0, 256

local function check_header_name(name, fn)
    local l = checked[name]
    if l then return l end
    if type(name) ~= "string" or not find(name, "^[!#$%%&'*+%-.^_`|~%w]+$") then
        error("ctx:" .. fn .. "(name, ...): name must be an HTTP header name", 3)
    end
    l = lower(name)
    if l == "host" or l == "connection" or l == "upgrade" or find(l, "^sec%-websocket%-")
       or l == "content-length" or l == "transfer-encoding" then
        error("ctx:" .. fn .. ": weir owns the " .. name .. " header", 3)
    end
    if n_checked < NAMES_MAX then
        n_checked = n_checked + 1
        checked[name] = l
    end
    return l
end

--- Set header NAME to VALUE on the request weir sends to the backend,
-- replacing the client's (call it from on_handshake).
-- @tparam string name an HTTP header name (not Host, Connection, Upgrade or Sec-WebSocket-*)
-- @tparam string value no CR, LF or other control characters
-- @usage ctx:set_backend_header("X-User", ctx.consumer.subscriber)
function CTX:set_backend_header(name, value)
    local l = check_header_name(name, "set_backend_header")
    if type(value) ~= "string" or find(value, "%c") then
        error("ctx:set_backend_header(name, value): value must be a string without control characters", 2)
    end
    local up = upstream(self, "set_backend_header")
    set_of(up, "set")[l] = { name, value }
    set_of(up, "del")[l] = true
end

--- Remove header NAME from the request the backend receives.
-- @usage ctx:clear_backend_header("authorization")
function CTX:clear_backend_header(name)
    local l = check_header_name(name, "clear_backend_header")
    if rawget(self, "_up") == nil and not rawget(self, "_upgraded") then
        local up = only_cleared[l]
        if not up and n_only_cleared < ONLY_MAX then
            up = { set = NONE, del = setmetatable({ [l] = true }, getmetatable(NONE)), query = NONE, proto = NONE,
                   shared = true }
            n_only_cleared = n_only_cleared + 1
            only_cleared[l] = up
        end
        if up then
            rawset(self, "_up", up)
            return
        end
    end
    local up = upstream(self, "clear_backend_header")
    if up.set ~= NONE then up.set[l] = nil end
    set_of(up, "del")[l] = true
end

--- Remove query parameter NAME (every occurrence) from the URL the backend receives.
-- @usage ctx:hide_query_arg("apikey")
function CTX:hide_query_arg(name)
    if type(name) ~= "string" or name == "" then error("ctx:hide_query_arg(name): name must be a string", 2) end
    if self.request.query_string == nil then
        -- no query: nothing to hide (and nothing to record, on every handshake)
        if rawget(self, "_upgraded") then upstream(self, "hide_query_arg") end
        return
    end
    set_of(upstream(self, "hide_query_arg"), "query")[name] = true
end

--- Remove subprotocol P from the list the backend is offered; weir never
-- answers it back to the client either.
-- @usage ctx:hide_subprotocol("bearer." .. token)
function CTX:hide_subprotocol(p)
    if type(p) ~= "string" or p == "" then error("ctx:hide_subprotocol(p): p must be a string", 2) end
    set_of(upstream(self, "hide_subprotocol"), "proto")[p] = true
end

local icpt_chains = setmetatable({}, { __mode = "k" })   -- fn → its interceptor chain
local needles, n_needles = {}, 0                          -- msg_type → '"msg_type"'

-- The interceptor chain of FN for policy NAME (made here, apart from
-- CTX:intercept: a closure there would keep the JIT from compiling it)
local function icpt_chain(fn, name)
    local chain = { { name = name, priority = 0,
                      mod = { on_intercept = function(c, _, frame) return fn(c, frame.payload) end } } }
    icpt_chains[fn] = chain
    return chain
end

--- Have client text messages that contain the JSON string MSG_TYPE (quoted:
-- `"auth"` for "auth") handed to FN(ctx, payload) before anything else sees
-- them. FN returns nil to let the message go on, or a verdict (weir.DROP,
-- weir.reply(...), weir.error(...)). The core checks the needle in C, so
-- other messages cost no Lua call. Messages split into fragments or larger
-- than 64 KiB are not inspected.
-- @usage ctx:intercept("auth", function(ctx, payload) ... end)
function CTX:intercept(msg_type, fn)
    -- a needle made before is a msg_type checked before
    local needle = needles[msg_type]
    if not needle and (type(msg_type) ~= "string" or msg_type == "" or #msg_type > 60
                       or find(msg_type, '["\\%c]')) then
        error("ctx:intercept(msg_type, fn): msg_type must be a short plain string", 2)
    end
    if type(fn) ~= "function" then error("ctx:intercept(msg_type, fn): fn must be a function", 2) end
    local name = rawget(self, "policy") or "intercept"
    local chain = icpt_chains[fn]        -- one chain per function, shared by its connections
    if not chain or chain[1].name ~= name then chain = icpt_chain(fn, name) end
    rawset(self, "_icpt", chain)
    if C then
        if not needle then
            needle = '"' .. msg_type .. '"'
            if n_needles < NAMES_MAX then
                n_needles = n_needles + 1
                needles[msg_type] = needle
            end
        end
        C.weir_ffi_intercept(self._h, needle)
    end
end

local owner_nos, owner_names = {}, {}      -- policy name ↔ the core's number for it (1..)

local function owner_no(name)
    name = name or "?"
    local n = owner_nos[name]
    if not n then
        n = #owner_names + 1
        if n > 65535 then return 0 end
        owner_nos[name], owner_names[n] = n, name
    end
    return n
end

--- Have the core check each of the client's messages from the next one on
-- with INSP (built by `weir.inspect.new`), before the chain's frame hooks
-- and with no Lua call: a message that breaks one of its rules is refused
-- with the inspector's error JSON (and the connection closed when it says
-- so). nil stops the checks. One inspector per connection: the last call wins.
-- @usage ctx:inspect(conf._inspector)
local inspector_is   -- weir.inspect's test, bound on first use (it requires weir, which requires this)

function CTX:inspect(insp)
    -- weir.inspect declares the core's call (and the inspector type) to the FFI
    if not inspector_is then inspector_is = require("weir.inspect").is end
    if insp ~= nil and not inspector_is(insp) then
        error("ctx:inspect(insp): an inspector from weir.inspect.new, or nil", 2)
    end
    -- the core keeps who attached it (a reload whose chain lacks that policy
    -- stops it: runtime.load); nothing more is kept in the ctx
    if C then C.weir_ffi_inspect(self._h, insp and insp.c or nil, insp and owner_no(rawget(self, "policy")) or 0) end
end

--- The name of the policy that attached CTX's inspector, or nil.
function _M.inspected_by(ctx)
    if not C or #owner_names == 0 then return nil end    -- no inspector was ever attached
    return owner_names[C.weir_ffi_inspect_owner(ctx._h)]
end

ffi.cdef [[
    int weir_ffi_limit(uint64_t id, const char *key, size_t len, uint64_t count, uint64_t period_us,
                       uint64_t burst, int unit, int dirs, int action_in, int action_out, int share,
                       char *err, size_t errlen);
]]

local ACTIONS = { delay = 1, drop = 2, close = 3 }   -- core/conn.h WEIR_THROTTLE_*
local SHARE = { ["local"] = 0, open = 1, closed = 2 } -- core/limit.h WEIR_LIMIT_LOCAL / SHARED_*
local limit_err = ffi.new("char[256]")

--- Enforce a rate limit on this connection's messages, in the core, with
-- no Lua call per message. Limits with the same KEY and the same count,
-- unit and period share one bucket across every connection of the host;
-- KEY nil gives the connection a limit of its own. With `state.redis` in
-- the configuration, a keyed limit is shared with the other hosts too
-- (docs/throttling.md), unless ON_REDIS_DOWN is "local". A message is
-- decided at its first frame: every limit of its direction is checked and
-- the strictest decides.
-- @tparam string|nil key e.g. "sub:" .. app .. ":" .. api
-- @tparam table spec `{ frames = N }` or `{ bytes = N|"10m" }`, `per`,
--   optional `burst`, `direction` ("in", "out", "both": the default) (see `weir.limits.parse`)
-- @tparam[opt] string action for the client's messages over it: "drop" (default), "delay" or "close"
-- @tparam[opt] string action_out for the backend's: "delay" (default), "drop" or "close"
-- @tparam[opt] string on_redis_down a keyed limit shared through Redis, while Redis cannot be
--   reached: "open" (default: this host's bucket alone decides) or "closed" (every message it
--   counts is over the limit); "local": not shared with other hosts at all
-- @treturn boolean true, or nil and what is wrong
-- @usage ctx:limit("app:" .. ctx.consumer.application, { frames = 100, per = "second" }, "delay")
function CTX:limit(key, spec, action, action_out, on_redis_down)
    if key ~= nil and (type(key) ~= "string" or key == "") then
        error("ctx:limit(key, spec [, action [, action_out [, on_redis_down]]]): key must be a string or nil", 2)
    end
    local ai, ao = ACTIONS[action or "drop"], ACTIONS[action_out or "delay"]
    if not ai or not ao then error('ctx:limit: action must be "drop", "delay" or "close"', 2) end
    local share = SHARE[on_redis_down or "open"]
    if not share then error('ctx:limit: on_redis_down must be "open", "closed" or "local"', 2) end
    if rawget(self, "_closed") then return nil, "closed" end
    local p, err = spec, nil
    if type(spec) ~= "table" or not spec.period_us then
        p, err = require("weir.limits").parse(spec)
        if not p then return nil, err end
    end
    if key and #key > 512 then return nil, "a limit's key is longer than 512 bytes" end
    if not C then return nil, "no core" end
    if C.weir_ffi_limit(self._h, key, key and #key or 0, p.count, p.period_us, p.burst, p.unit, p.dirs, ai, ao,
                        key and share or 0, limit_err, 256) ~= 0 then
        return nil, ffi.string(limit_err)
    end
    return true
end

--- The client's address in REQ (a ctx.request): the peer's, or, when the
-- peer is one of the proxies in TRUSTED (a set: address → true), the last
-- `X-Forwarded-For` entry that is not a trusted proxy itself (what the
-- throttling and analytics policies key and report by).
-- @usage local addr = ctxmod.client_address(ctx.request, { ["10.0.0.2"] = true })
function _M.client_address(req, trusted)
    local ip = req.client_ip
    if not trusted or not trusted[ip] then return ip end
    local xff = req.headers["x-forwarded-for"]
    if not xff then return ip end
    local list = {}
    for a in gmatch(xff, "[^,%s]+") do list[#list + 1] = a end
    for i = #list, 1, -1 do
        if not trusted[list[i]] then return list[i] end
    end
    return ip
end

--- The client's address: the peer's, or, from one of the proxies TRUSTED
-- (a set: address → true), what its `X-Forwarded-For` says (see
-- `weir.ctx.client_address`).
-- @usage local addr = ctx:client_address(conf.trusted)
function CTX:client_address(trusted)
    return _M.client_address(self.request, trusted)
end

ffi.cdef [[
    int weir_ffi_analytics(uint64_t id, int set, const char *client);
]]

--- Turn on the analytics events of this connection (docs/analytics.md):
-- from now on the core reports its connect, messages, throttling, auth
-- failure, policy errors and close to the sinks SINKS (an `analytics`
-- policy's `sinks`), in batches, with no Lua call per message. CLIENT is
-- the client's address to report (nil: the peer's).
-- @tparam table opts `{ sinks = conf.sinks, client = addr }`
-- @treturn boolean true, or nil and what is wrong
-- @usage ctx:analytics{ sinks = conf.sinks, client = ctx:client_address(conf._trusted) }
function CTX:analytics(opts)
    if type(opts) ~= "table" or type(opts.sinks) ~= "table" then
        error("ctx:analytics{ sinks = ..., client = ... }: sinks is required", 2)
    end
    if opts.client ~= nil and type(opts.client) ~= "string" then
        error("ctx:analytics: client must be a string", 2)
    end
    if rawget(self, "_closed") then return nil, "closed" end
    if not C then return nil, "no core" end
    local set, err = require("weir.analytics").set_of(opts.sinks)
    if not set then return nil, err end
    if C.weir_ffi_analytics(self._h, set, opts.client) ~= 0 then return nil, "the connection is gone" end
    return true
end

-- What writing to a version's shared ctx.api says.
local API_MT = { __newindex = function(_, k)
    error("ctx.api is shared by the connections of the version and read-only (writing " .. tostring(k)
          .. "): keep a connection's own state in ctx.vars", 2)
end }

--- The `ctx.api` of a version: one table shared by its connections, which
-- they must not change (a new field is refused with an error).
function _M.api(api, version, context)
    return setmetatable({ name = api, version = version, context = context }, API_MT)
end

--- How many hash slots a ctx like CTX needs (at least AT_LEAST): a power
-- of two that holds the fields it has (the runtime learns it from a chain's
-- first connections, so that their tables are made big enough at once).
function _M.slots(ctx, at_least)
    local n = 0
    for k in next, ctx do
        if type(k) ~= "number" then n = n + 1 end
    end
    local s = at_least or 8
    while s < n do s = s * 2 end
    return s
end

--- A new ctx (called by the runtime when a connection reaches a chain):
-- H is the core's handle for it, ID its name; API_T, when given, the
-- version's shared `ctx.api` (`weir.ctx.api`), else one is made; SLOTS,
-- the hash slots to make it with (default 8: `_M.slots`).
function _M.new(h, id, api, version, context, head, client_ip, client_port, tls, api_t, slots)
    -- the array part (ID, TOLD, API) and room for the runtime's fields (_h,
    -- request, _chain, policy, _at, _replaced, _upgraded, _up until the
    -- handshake is done) and the policies': 8 for a key-auth chain
    local ctx = tnew(3, slots or 8)
    ctx[ID] = id
    ctx[API] = api_t or _M.api(api, version, context)
    ctx._h = h
    ctx.request = _M.request(head, client_ip, client_port, tls)
    return setmetatable(ctx, CTX)
end

_M.CTX = CTX

return _M
