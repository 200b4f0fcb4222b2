--- spec/fakes.lua — a fake connection for unit specs of policies.
--
-- A policy's unit spec needs no gateway: it loads the policy the way weir
-- does (through `weir.policy`'s registry, so the sandbox applies), checks
-- its configuration the way weir does (`weir.conf.check_policy_conf`, which
-- runs the policy's `init`), and runs a hook through the same chain runner
-- the gateway uses (`weir.chain.run`). What comes back is the verdict the
-- gateway would act on, as a plain table a spec can assert on.
--
-- The ctx made here has the fields and methods of a real one; its methods
-- record what the policy asked for instead of doing it: `ctx.sent`,
-- `ctx.closed`, `ctx.logs`, `ctx.timers` (fire timers with `fakes.advance`).
--
-- Usage (copy this file next to your own specs; busted's lpath must reach
-- weir's `lua/`, this file and your policies — see weir's `.busted`):
--
--     local fakes = require "fakes"
--     local filter = fakes.policy("word-filter", { "/etc/weir/policies" })
--
--     it("refuses a forbidden word", function()
--         local v = fakes.run(filter, { words = { "spam" } }, "on_frame_in",
--                             fakes.ctx(), fakes.frame("spam"))
--         assert.same("error", v.kind)
--         assert.same("/problems/invalid-message", v.problem)
--     end)
--
--     it("takes a key from the query", function()
--         local auth = fakes.policy("key-auth")
--         local keys = fakes.file("sha256:" .. require("weir").sha256_hex("k1")
--                                 .. " application=App subscriber=me\n")
--         local ctx = fakes.ctx({ query_string = "apikey=k1" })
--         assert.same({ kind = "pass" }, fakes.run(auth, { keys_file = keys }, "on_handshake", ctx))
--         assert.same("App", ctx.consumer.application)
--     end)
--
--     teardown(fakes.cleanup)          -- removes the files fakes.file made
--
-- Verdicts (what `fakes.run` returns):
--
--   { kind = "pass" }                                   nothing to do: forward / go on
--   { kind = "replace", payload =, opcode = }           forward this payload instead
--   { kind = "drop" }                                   forward nothing
--   { kind = "reply", payload =, opcode = }             send this back to the sender
--   { kind = "error", problem =, message =, code =,     weir.error: problem is the JSON's
--     status = (on_handshake: HTTP status, 403 when      error.type, message its
--               no code was given),                      error.message, code the
--     close = (frame hooks: the close code, or nil) }    status or close code
--   { kind = "fail", policy =, err = }                  the hook raised an error or
--                                                        returned something unexpected
--
-- @module fakes

local policy_mod = require "weir.policy"
local conf_mod   = require "weir.conf"
local chain      = require "weir.chain"
local ctxmod     = require "weir.ctx"
local weir       = require "weir"

local type, pairs, ipairs, tostring, setmetatable, error =
    type, pairs, ipairs, tostring, setmetatable, error
local lower, format, gmatch = string.lower, string.format, string.gmatch
local concat, select, unpack = table.concat, select, unpack

local fakes = {}

------------------------------------------------------------------------------
-- Loading and configuring a policy
------------------------------------------------------------------------------

--- Load policy NAME as the gateway does: from PATHS, then weir's stock policies/.
-- Raises an error (with the loader's message) when it cannot be loaded.
-- @tparam string name the policy's name
-- @tparam[opt] table paths the operator's policy directories (searched first)
-- @treturn table the policy module
-- @usage local p = fakes.policy("key-auth")
function fakes.policy(name, paths)
    local mod, err = policy_mod.registry(paths):get(name)
    if not mod then error(err, 2) end
    return mod
end

--- Check CONF against POLICY's schema and run its `init`, as weir does.
-- @tparam table policy the module
-- @tparam table conf the configuration as an operator would write it
-- @tparam[opt] string dir directory relative paths resolve against (default ".")
-- @treturn[1] table the normalised configuration
-- @treturn[2] nil
-- @treturn[2] table the errors, one "FIELD: message" string each
-- @usage local conf, errs = fakes.check(p, { keys_file = "/tmp/keys" })
function fakes.check(policy, conf, dir)
    return conf_mod.check_policy_conf(policy, conf, dir)
end

------------------------------------------------------------------------------
-- The ctx
------------------------------------------------------------------------------

local LEVELS = { debug = true, info = true, warn = true, error = true }

--- Parse a query string exactly as the gateway does (`weir.ctx.parse_query`):
-- names and values percent-decoded ("+" is a space), the first value of
-- each name kept.
-- @tparam string qs e.g. "apikey=abc&x=1"
-- @treturn table name → value
fakes.parse_query = ctxmod.parse_query

-- The methods of a fake ctx; each records its call.
local methods = {}

--- Record a change to the backend's request: `ctx.backend.headers[lower
-- name] = value`, `ctx.backend.cleared[lower name] = true`,
-- `ctx.backend.hidden_query[name] = true`, `ctx.backend.hidden_protocols[p] = true`.
function methods:set_backend_header(name, value)
    if type(name) ~= "string" or type(value) ~= "string" or value:find("%c") then
        error("ctx:set_backend_header(name, value): a header name and a value without control characters", 2)
    end
    self.backend.headers[lower(name)] = value
end
function methods:clear_backend_header(name)
    if type(name) ~= "string" then error("ctx:clear_backend_header(name): name must be a string", 2) end
    self.backend.headers[lower(name)] = nil
    self.backend.cleared[lower(name)] = true
end
function methods:hide_query_arg(name)
    if type(name) ~= "string" then error("ctx:hide_query_arg(name): name must be a string", 2) end
    self.backend.hidden_query[name] = true
end
function methods:hide_subprotocol(p)
    if type(p) ~= "string" then error("ctx:hide_subprotocol(p): p must be a string", 2) end
    self.backend.hidden_protocols[p] = true
end

--- The client's address, resolved as the gateway does (`weir.ctx.client_address`).
function methods:client_address(trusted)
    return ctxmod.client_address(self.request, trusted)
end

--- Record that analytics was turned on: `ctx.analytics_on = { sinks =, client = }`.
function methods:analytics(opts)
    if type(opts) ~= "table" or type(opts.sinks) ~= "table" then
        error("ctx:analytics{ sinks = ..., client = ... }: sinks is required", 2)
    end
    self.analytics_on = { sinks = opts.sinks, client = opts.client }
    return true
end

--- Record an interceptor: `ctx.intercepts[msg_type] = fn` (call it yourself:
-- fn(ctx, payload)).
function methods:intercept(msg_type, fn)
    if type(msg_type) ~= "string" or type(fn) ~= "function" then
        error("ctx:intercept(msg_type, fn): a string and a function", 2)
    end
    self.intercepts[msg_type] = fn
end

--- Record the inspector attached (`ctx.inspector`; check messages yourself
-- with its `check(opcode, payload)`).
function methods:inspect(insp)
    if insp ~= nil and not require("weir.inspect").is(insp) then
        error("ctx:inspect(insp): an inspector from weir.inspect.new, or nil", 2)
    end
    self.inspector = insp
end

--- Record a message sent to the client: `ctx.sent[i] = { payload =, opcode = }`.
function methods:send(payload, opcode)
    if type(payload) ~= "string" then error("ctx:send(payload [, opcode]): payload must be a string", 2) end
    if opcode ~= nil and opcode ~= weir.TEXT and opcode ~= weir.BINARY then
        error("ctx:send: opcode must be weir.TEXT or weir.BINARY, got " .. tostring(opcode), 2)
    end
    self.sent[#self.sent + 1] = { payload = payload, opcode = opcode or weir.TEXT }
    return true
end

--- Record a close: `ctx.closed = { code =, reason =, err = }` (code 1000
-- and reason "" when not given, as the gateway does; the first close wins).
-- @tparam[opt] table err a `weir.error(...)` verdict whose JSON the gateway sends first
function methods:close(code, reason, err)
    if code ~= nil and (type(code) ~= "number" or code % 1 ~= 0) then
        error("ctx:close(code, reason [, err]): code must be an integer", 2)
    end
    if reason ~= nil and type(reason) ~= "string" then
        error("ctx:close(code, reason [, err]): reason must be a string", 2)
    end
    if err ~= nil and not weir.is_error(err) then
        error("ctx:close(code, reason [, err]): err must be a weir.error(...)", 2)
    end
    if self.closed then return nil, "closed" end
    self.closed = { code = code or 1000, reason = reason or "", err = err }
    return true
end

--- Record a log line: `ctx.logs[i] = { level =, msg =, fields =, policy = }`
-- (`policy` is the policy that was running, as the gateway tags its lines).
function methods:log(level, msg, fields)
    if not LEVELS[level] then
        error("ctx:log(level, msg [, fields]): level must be debug, info, warn or error, got "
              .. tostring(level), 2)
    end
    if type(msg) ~= "string" then error("ctx:log: msg must be a string", 2) end
    if fields ~= nil and type(fields) ~= "table" then error("ctx:log: fields must be a table", 2) end
    self.logs[#self.logs + 1] = { level = level, msg = msg, fields = fields, policy = self.policy }
end

local timer_methods = {}
timer_methods.__index = timer_methods

--- Cancel a pending timer; true when it was still pending.
function timer_methods:cancel()
    if self.fired or self.cancelled then return false end
    self.cancelled = true
    return true
end

--- Record a timer: `ctx.timers[i] = { delay =, due =, fn =, args =, fired =, cancelled = }`.
-- Nothing runs until `fakes.advance(ctx, seconds)` moves the fake clock;
-- then FN(ctx, ...) is called, as the gateway calls it.
-- @treturn table a handle with `:cancel()`
function methods:timer(delay, fn, ...)
    if type(delay) ~= "number" or delay < 0 then error("ctx:timer(delay, fn, ...): delay must be a number >= 0", 2) end
    if type(fn) ~= "function" then error("ctx:timer(delay, fn, ...): fn must be a function", 2) end
    local t = setmetatable({ delay = delay, due = self.clock + delay, fn = fn,
                             args = { n = select("#", ...), ... }, fired = false, cancelled = false,
                             seq = #self.timers + 1 }, timer_methods)
    self.timers[#self.timers + 1] = t
    return t
end

local CTX_MT = { __index = methods }

local CTX_OPTS = {
    id = true, api = true, version = true, context = true, method = true, path = true,
    query_string = true, query = true, headers = true, client_ip = true, client_port = true,
    scheme = true, subprotocols = true, consumer = true, vars = true,
}

local next_id = 0

--- A fake connection.
-- @tparam[opt] table opts any of: `id` (default: "w0-" and a counter, as
--   weir names connections), `api` (a name, default "Test", or a whole
--   `{ name =, version =, context = }`), `version`
--   ("1.0"), `context` ("/test"), `method` ("GET"), `path` (the context),
--   `query_string` (nil, as for a URL without "?"; parsed into
--   `request.query` unless `query` is given), `query`, `headers` (names are
--   lower-cased; a list value is joined with ", " as for a repeated header),
--   `client_ip` ("127.0.0.1"), `client_port` (40000), `scheme` ("ws"),
--   `subprotocols` (default: from the sec-websocket-protocol header),
--   `consumer` (nil), `vars` ({})
-- @treturn table the ctx, with `sent`, `closed`, `logs`, `timers`, `clock` (0),
--   `backend` (changes to the backend's request) and `intercepts`
-- @usage local ctx = fakes.ctx({ headers = { ApiKey = "k" }, query_string = "v=1" })
function fakes.ctx(opts)
    opts = opts or {}
    for k in pairs(opts) do
        if not CTX_OPTS[k] then error("fakes.ctx: unknown option " .. tostring(k), 2) end
    end
    local api = opts.api
    if type(api) ~= "table" then
        api = { name = api or "Test", version = opts.version or "1.0", context = opts.context or "/test" }
    end
    local headers = {}
    for name, value in pairs(opts.headers or {}) do
        if type(value) == "table" then value = concat(value, ", ") end
        headers[lower(name)] = value
    end
    local qs = opts.query_string
    local subprotocols = opts.subprotocols
    if not subprotocols then
        subprotocols = {}
        for p in gmatch(headers["sec-websocket-protocol"] or "", "[^,%s]+") do
            subprotocols[#subprotocols + 1] = p
        end
    end
    if not opts.id then next_id = next_id + 1 end
    return setmetatable({
        id = opts.id or "w0-" .. next_id,
        api = api,
        request = {
            method = opts.method or "GET",
            path = opts.path or api.context,
            query_string = qs,
            query = opts.query or fakes.parse_query(qs),
            headers = headers,
            client_ip = opts.client_ip or "127.0.0.1",
            client_port = opts.client_port or 40000,
            scheme = opts.scheme or "ws",
            subprotocols = subprotocols,
        },
        consumer = opts.consumer,
        vars = opts.vars or {},
        sent = {}, closed = nil, logs = {}, timers = {}, clock = 0, intercepts = {},
        backend = { headers = {}, cleared = {}, hidden_query = {}, hidden_protocols = {} },
    }, CTX_MT)
end

--- Move CTX's fake clock on by SECONDS and run the timers that fall due, in
-- the order they are due. A timer set by a timer runs too if it falls due
-- within the same advance; timers of a closed ctx do not run. An error in a
-- timer is raised to the spec (the gateway would log it and count a failure).
-- @treturn number how many timers ran
-- @usage fakes.advance(ctx, 5)
function fakes.advance(ctx, seconds)
    local target = ctx.clock + (seconds or 0)
    local ran = 0
    while true do
        local due
        for _, t in ipairs(ctx.timers) do
            if not t.fired and not t.cancelled and not ctx.closed and t.due <= target
               and (not due or t.due < due.due or (t.due == due.due and t.seq < due.seq)) then
                due = t
            end
        end
        if not due then break end
        ctx.clock = due.due
        due.fired = true
        ran = ran + 1
        due.fn(ctx, unpack(due.args, 1, due.args.n))
    end
    ctx.clock = target
    return ran
end

--- A whole message as frame hooks see it.
-- @tparam string payload
-- @tparam[opt] number opcode `weir.TEXT` (default) or `weir.BINARY`
-- @usage fakes.frame('{"type":"ping"}')
local FRAME_MT = { __index = { json = chain.frame_json } }    -- frame:json(), as the runtime's frames

function fakes.frame(payload, opcode)
    if type(payload) ~= "string" then error("fakes.frame(payload [, opcode]): payload must be a string", 2) end
    return setmetatable({ opcode = opcode or weir.TEXT, fin = true, length = #payload, payload = payload }, FRAME_MT)
end

------------------------------------------------------------------------------
-- Running a hook
------------------------------------------------------------------------------

local HOOKS = {}
for _, h in ipairs(policy_mod.HOOKS) do HOOKS[h] = true end

--- Run HOOK of POLICY, configured with CONF, as the gateway would.
-- CONF is checked (and `init` run) first; an invalid CONF raises an error
-- listing every problem.
-- @tparam table policy the module (from `fakes.policy`)
-- @tparam table conf the configuration as an operator would write it
-- @tparam string hook "on_handshake", "on_frame_in", "on_frame_out" or "on_close"
-- @tparam[opt] table ctx the connection (default: a fresh `fakes.ctx()`)
-- @tparam[opt] table frame the message for frame hooks, the info for on_close
-- @tparam[opt] string dir directory CONF's relative paths resolve against
-- @treturn table the verdict (see the top of this file)
-- @usage local v = fakes.run(p, {}, "on_frame_in", fakes.ctx(), fakes.frame("hi"))
function fakes.run(policy, conf, hook, ctx, frame, dir)
    if not HOOKS[hook] then error("fakes.run: unknown hook " .. tostring(hook), 2) end
    if type(policy[hook]) ~= "function" then
        error(format("fakes.run: policy %s has no %s", tostring(policy.name), hook), 2)
    end
    local normalised, errs = conf_mod.check_policy_conf(policy, conf or {}, dir)
    if not normalised then
        error(format("fakes.run: invalid configuration for %s: %s", tostring(policy.name),
                     concat(errs, "; ")), 2)
    end
    ctx = ctx or fakes.ctx()
    local entries = { { name = policy.name, mod = policy, conf = normalised, priority = policy.priority } }
    local kind, a, b = chain.run(entries, hook, ctx, frame)
    if kind == chain.PASS then
        return { kind = "pass" }
    elseif kind == chain.REPLACE then
        return { kind = "replace", payload = frame.payload, opcode = frame.opcode }
    elseif kind == chain.DROP then
        return { kind = "drop" }
    elseif kind == chain.REPLY then
        return { kind = "reply", payload = a, opcode = b }
    elseif kind == chain.ERROR then
        local v = { kind = "error", problem = a.problem, message = a.message, code = a.code }
        if hook == "on_handshake" then v.status = a.code or 403 else v.close = a.code end
        return v
    end
    return { kind = "fail", policy = a, err = b }
end

------------------------------------------------------------------------------
-- Files for fixtures
------------------------------------------------------------------------------

local made = {}

--- Write TEXT to a fresh temporary file; returns its path.
-- Remove them all with `fakes.cleanup()` (in the spec's `teardown`).
-- @usage local keys = fakes.file("sha256:... application=App subscriber=me\n")
function fakes.file(text)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
    made[#made + 1] = path
    return path
end

--- Remove the files `fakes.file` made.
function fakes.cleanup()
    for i = #made, 1, -1 do
        os.remove(made[i])
        made[i] = nil
    end
end

return fakes
