--- The worker's runtime: what the core calls. It loads the configuration's
-- chains, keeps one ctx per connection that has a chain, runs each hook's
-- chain in a coroutine (so a policy may wait on I/O without blocking the
-- worker), and runs timers.
--
-- Every entry point returns to the core `status, kind, a, b, c`:
-- status `weir.OK` with a verdict kind (weir.chain's PASS ... FAIL) and its
-- values, or `weir.AGAIN` when the hook waits; the verdict then comes later
-- from `io_done`, which returns `conn_id, hook, status, kind, a, b, c`.
--
-- @module weir.runtime

local ffi = require "ffi"
local weir = require "weir"
local chain = require "weir.chain"
local ctxmod = require "weir.ctx"
local policy = require "weir.policy"
local weir_conf = require "weir.conf"

local create, resume, yield, running, status =
    coroutine.create, coroutine.resume, coroutine.yield, coroutine.running, coroutine.status
local pairs, ipairs, type, tostring, setmetatable, rawset =
    pairs, ipairs, type, tostring, setmetatable, rawset
local concat, floor = table.concat, math.floor

local OK, AGAIN = weir.OK, weir.AGAIN
local PASS, REPLACE, FAIL = chain.PASS, chain.REPLACE, chain.FAIL

local ABI = 2   -- must equal WEIR_FFI_ABI in core/lua_bridge.h

ffi.cdef [[
    int weir_ffi_abi(void);
    const char *weir_ffi_payload(uint64_t id, int dir, size_t *len);
    int weir_ffi_send(uint64_t id, int opcode, const char *p, size_t n);
    int weir_ffi_close(uint64_t id, int code, const char *reason, const char *problem, const char *message);
    void weir_ffi_log(int level, const char *msg, const char *fields);
    void weir_ffi_timer(double ms);
    void weir_ffi_policy_failed(void);
    void weir_ffi_budget_reset(void);
    uint64_t weir_ffi_http(const char *method, const char *url, const char *headers,
                           const char *body, size_t blen, double timeout_ms, int verify,
                           const char *ca, char *err, size_t errlen);
    void weir_ffi_http_cancel(uint64_t token);
]]
local C = ffi.C

local _M = {}

local chains = {}        -- "api\0version" → { entries, mask }
local ctxs = {}          -- conn id → ctx
local waiting = {}       -- coroutine → { ctx =, hook =, frame = } for hooks that wait
local io = {}            -- I/O token → coroutine
local pool = {}          -- idle hook coroutines
local current            -- the ctx whose hook or timer is running
local DONE, WAIT = {}, {}
local HOOK_NO = { on_handshake = 1, on_frame_in = 2, on_frame_out = 4, on_close = 8 }

local function json_str(v)
    return require("cjson").encode(tostring(v))
end

local function log(level, msg, fields)
    C.weir_ffi_log(level, msg, fields or nil)
end

local function on_fail_open(entry, err)
    C.weir_ffi_policy_failed()
    log(2, "policy failed (fail_open: passing)",
        (current and '"conn":' .. current.id .. ',' or '') .. '"policy":' .. json_str(entry.name)
        .. ',"error":' .. json_str(err))
end

-- A hook coroutine: runs chains until its hook waits; then it belongs to
-- that hook until the wait ends.
local function hook_body(ctx, hook, frame, start, replaced)
    while true do
        local kind, a, b = chain.run(ctx._chain.entries, hook, ctx, frame, on_fail_open, start, replaced)
        ctx, hook, frame, start, replaced = yield(DONE, kind, a, b)
    end
end

local function take()
    local n = #pool
    if n > 0 then
        local co = pool[n]
        pool[n] = nil
        return co
    end
    return create(hook_body)
end

local run      -- forward: run(ctx, hook, frame, start, replaced)

-- Turn what a hook coroutine gave back into the core's return values.
local function settle(co, ctx, hook, frame, ok, tag, kind, a, b)
    current = nil
    if not ok then
        -- only an error outside chain.run's pcall gets here: the budget; the
        -- coroutine is dead, so a fail_open entry's chain goes on in a new one
        local name = ctx and ctx.policy or "?"
        local entry = ctx and ctx._chain.entries[ctx._at or 0]
        if ctx then ctx.policy = nil end
        if entry and entry.name == name and entry.fail_open then
            on_fail_open(entry, tostring(tag))
            C.weir_ffi_budget_reset()     -- the rest of the chain gets a budget of its own
            return run(ctx, hook, frame, ctx._at + 1, ctx._replaced)
        end
        C.weir_ffi_policy_failed()
        return OK, FAIL, name, tostring(tag)
    end
    if tag == WAIT then
        waiting[co] = { ctx = ctx, hook = hook, frame = frame }
        return AGAIN
    end
    pool[#pool + 1] = co
    if kind == chain.ERROR then
        local code = a.code
        if hook == "on_handshake" then code = code or 403 end
        return OK, kind, weir.error_json(a.problem, code or 1008, a.message), code or 0, a.message
    elseif kind == REPLACE then
        return OK, kind, frame.payload
    elseif kind == FAIL then
        C.weir_ffi_policy_failed()
        return OK, kind, a, b
    elseif kind == PASS and hook == "on_handshake" then
        local c = ctx.consumer
        return OK, PASS, c and c.key_type == "SANDBOX" and 1 or 0
    end
    return OK, kind, a, b
end

run = function(ctx, hook, frame, start, replaced)
    local co = take()
    current = ctx
    return settle(co, ctx, hook, frame, resume(co, ctx, hook, frame, start, replaced))
end

------------------------------------------------------------------------------
-- Loading
------------------------------------------------------------------------------

local function build(conf)
    local out = {}
    for _, api in ipairs(conf.apis) do
        for _, v in ipairs(api.versions) do
            local entries, by_name, seq = {}, {}, 0
            for _, list in ipairs({ conf.policies or {}, v.policies or {} }) do
                for _, e in ipairs(list) do
                    seq = seq + 1
                    local copy = { name = e.name, mod = e.mod, conf = e.conf, fail_open = e.fail_open,
                                   priority = e.priority, seq = seq }
                    if by_name[e.name] then      -- a version's entry replaces the global one
                        for i, old in ipairs(entries) do
                            if old.name == e.name then entries[i] = copy end
                        end
                    else
                        entries[#entries + 1] = copy
                    end
                    by_name[e.name] = true
                end
            end
            chain.sort(entries)
            out[api.name .. "\0" .. v.version] = { entries = entries, mask = policy.mask(entries) }
        end
    end
    return out
end

--- Load FILE's chains. Returns a table "api\0version" → hook mask, or nil
-- and the errors (one string).
function _M.load(file, cpus)
    if C.weir_ffi_abi() ~= ABI then
        return nil, "weir's Lua runtime and core disagree (FFI ABI " .. ABI .. " vs "
                    .. C.weir_ffi_abi() .. "): reinstall both"
    end
    local conf, errs = weir_conf.load(file, { cpus = cpus })
    if not conf then return nil, concat(errs, "\n") end
    chains = build(conf)
    local masks = {}
    for k, c in pairs(chains) do masks[k] = c.mask end
    -- open connections use the new chains from their next event
    for _, ctx in pairs(ctxs) do
        local c = chains[ctx.api.name .. "\0" .. ctx.api.version]
        if c then ctx._chain = c end
    end
    return masks
end

------------------------------------------------------------------------------
-- Connection events
------------------------------------------------------------------------------

--- A connection reached a version with a chain.
function _M.open(id, api, version, context, head, ip, port, tls)
    local ctx = ctxmod.new(id, api, version, context, head, ip, port, tls ~= 0)
    ctx._chain = chains[api .. "\0" .. version] or { entries = {}, mask = 0 }
    ctx._frames = {}
    ctxs[id] = ctx
end

--- Run on_handshake.
function _M.handshake(id)
    return run(ctxs[id], "on_handshake", nil)
end

local len_box = ffi.new("size_t[1]")
local FRAME_MT = {
    __index = function(f, k)
        if k == "payload" then
            local p = C.weir_ffi_payload(f._id, f._dir, len_box)
            local s = p ~= nil and ffi.string(p, len_box[0]) or ""
            rawset(f, "payload", s)
            return s
        end
    end,
}

--- Run on_frame_in (DIR 0) or on_frame_out (DIR 1) for a complete message.
function _M.frame(id, dir, opcode, len)
    local ctx = ctxs[id]
    local f = ctx._frames[dir]
    if not f then
        f = setmetatable({ _id = id, _dir = dir, fin = true }, FRAME_MT)
        ctx._frames[dir] = f
    end
    f.opcode, f.length = opcode, len
    rawset(f, "payload", nil)
    return run(ctx, dir == 0 and "on_frame_in" or "on_frame_out", f)
end

--- The connection is gone: run on_close, forget it.
function _M.close(id, code, side, duration_ms, frames_in, bytes_in, frames_out, bytes_out)
    local ctx = ctxs[id]
    if not ctx then return end
    ctxs[id] = nil
    ctx._closed = true
    for token in pairs(ctx._io or {}) do
        C.weir_ffi_http_cancel(token)
        io[token] = nil
    end
    for co, w in pairs(waiting) do
        if w.ctx == ctx then waiting[co] = nil end
    end
    if ctx._chain.mask % 16 >= 8 then
        local info = { code = code, side = side, duration = duration_ms / 1000,
                       frames_in = frames_in, bytes_in = bytes_in,
                       frames_out = frames_out, bytes_out = bytes_out }
        local co = take()
        current = ctx
        local ok, tag = resume(co, ctx, "on_close", info)
        current = nil
        local who = '"conn":' .. id .. ',"policy":' .. json_str(ctx.policy or "?")
        if ok and tag == DONE then pool[#pool + 1] = co
        elseif ok then log(2, "on_close may not wait: its wait was abandoned", who)
        else
            C.weir_ffi_policy_failed()
            log(3, "policy failed", who .. ',"hook":"on_close","error":' .. json_str(tostring(tag)))
        end
    end
end

------------------------------------------------------------------------------
-- Waiting: I/O and timers
------------------------------------------------------------------------------

--- Called by waiting functions (weir.http.request): park the running hook
-- until the core delivers TOKEN's result. Returns what io_done was given.
function _M.wait(token)
    local co, main = running()
    if co == nil or main then error("this function waits, so it can only be called from a hook or a timer", 3) end
    io[token] = co
    if current then
        current._io = current._io or {}
        current._io[token] = true
    end
    return yield(WAIT)
end

--- The core finished I/O TOKEN: resume its coroutine with the results.
function _M.io_done(token, ...)
    local co = io[token]
    if not co then return 0 end
    io[token] = nil
    local w = waiting[co]
    waiting[co] = nil
    if w and w.ctx._io then w.ctx._io[token] = nil end
    current = w and w.ctx or nil
    local ok, tag, kind, a, b = resume(co, ...)
    current = nil
    if not w then                                 -- a timer's coroutine
        if ok and tag == WAIT then waiting[co] = false end
        if not ok then log(3, "timer failed", '"error":' .. require("cjson").encode(tostring(tag))) end
        return 0
    end
    return w.ctx.id, HOOK_NO[w.hook], settle(co, w.ctx, w.hook, w.frame, ok, tag, kind, a, b)
end

-- timers: a binary heap on `at`
local heap, seq = {}, 0

local function up(i)
    while i > 1 do
        local p = floor(i / 2)
        if heap[p].at <= heap[i].at then break end
        heap[p], heap[i] = heap[i], heap[p]
        i = p
    end
end

local function down(i)
    local n = #heap
    while true do
        local l, r, m = 2 * i, 2 * i + 1, i
        if l <= n and heap[l].at < heap[m].at then m = l end
        if r <= n and heap[r].at < heap[m].at then m = r end
        if m == i then return end
        heap[m], heap[i] = heap[i], heap[m]
        i = m
    end
end

local function arm()
    if heap[1] then C.weir_ffi_timer((heap[1].at - weir.now()) * 1000) end
end

local TIMER = {}
TIMER.__index = TIMER
function TIMER:cancel() self.cancelled = true end

--- Schedule FN(ctx, ...) in DELAY seconds (ctx:timer).
function _M.timer(ctx, delay, fn, ...)
    if type(delay) ~= "number" or delay < 0 then error("ctx:timer(delay, fn): delay must be seconds >= 0", 3) end
    if type(fn) ~= "function" then error("ctx:timer(delay, fn): fn must be a function", 3) end
    seq = seq + 1
    local t = setmetatable({ at = weir.now() + delay, ctx = ctx, fn = fn, args = { ... }, n = select("#", ...),
                             policy = ctx.policy }, TIMER)
    heap[#heap + 1] = t
    up(#heap)
    arm()
    return t
end

local function timer_body(t)
    t.fn(t.ctx, unpack(t.args, 1, t.n))
end

--- Run the timers that are due (the core's timer fired).
function _M.timers()
    local now = weir.now()
    while heap[1] and heap[1].at <= now do
        local t = heap[1]
        heap[1] = heap[#heap]
        heap[#heap] = nil
        if heap[1] then down(1) end
        if not t.cancelled and not t.ctx._closed then
            local co = create(timer_body)
            current = t.ctx
            local ok, err = resume(co, t)
            current = nil
            if not ok then
                C.weir_ffi_policy_failed()
                log(3, "timer failed", '"conn":' .. tostring(t.ctx.id) .. ',"policy":'
                                       .. json_str(t.policy or "?") .. ',"error":' .. json_str(err))
            end
        end
    end
    arm()
end

ctxmod.bind(C)
ctxmod.runtime = _M
weir.http = require "weir.http"
weir._in_hook = function() return current ~= nil end

return _M
