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
local pairs, ipairs, type, tostring, setmetatable, rawset, rawget, next, pcall, tonumber, select, unpack =
    pairs, ipairs, type, tostring, setmetatable, rawset, rawget, next, pcall, tonumber, select, unpack
local concat, floor = table.concat, math.floor

local OK, AGAIN = weir.OK, weir.AGAIN
local PASS, REPLACE, FAIL = chain.PASS, chain.REPLACE, chain.FAIL
local RESPOND = 6       -- an HTTP answer instead of an upgrade (core: WEIR_V_RESPOND)

local ABI = 9   -- must equal WEIR_FFI_ABI in core/lua_bridge.h

ffi.cdef [[
    int weir_ffi_abi(void);
    const char *weir_ffi_payload(uint64_t id, int dir, size_t *len);
    int weir_ffi_batch_at(int i, size_t *len);
    int weir_ffi_send(uint64_t id, int opcode, const char *p, size_t n);
    int weir_ffi_close(uint64_t id, int code, const char *reason, const char *problem, const char *message);
    void weir_ffi_log(int level, const char *msg, const char *fields);
    int weir_ffi_log_level(void);
    int weir_ffi_consumer(uint64_t id, const char *application, const char *subscriber, const char *key_type,
                          const char *tier);
    void weir_ffi_timer(double ms);
    void weir_ffi_policy_failed(void);
    void weir_stats_policy_failed(const char *policy);
    void weir_ffi_budget_reset(void);
    void weir_ffi_budget_service(int on);
    uint64_t weir_ffi_http(const char *method, const char *url, const char *headers,
                           const char *body, size_t blen, double timeout_ms, int verify,
                           const char *ca, char *err, size_t errlen);
    void weir_ffi_http_cancel(uint64_t token);
    int weir_ffi_upstream(uint64_t id, const char *query, size_t qlen, const char *del, size_t dlen,
                          const char *add, size_t alen, const char *proto, size_t plen, int proto_set);
    int weir_ffi_intercept(uint64_t id, const char *needle);
    int weir_ffi_ticket_put(const unsigned char *hash, const unsigned char *scope, const char *data,
                            size_t len, double ttl_ms);
    int weir_ffi_ticket_take(const unsigned char *hash, const unsigned char *scope, char *out, size_t cap);
    uint64_t weir_ffi_sleep(double ms);
]]
local C = ffi.C

local _M = {}

local chains = {}        -- "api\0version" → { entries, mask, api, ... }
local chains_by = {}     -- the same chains by API name, then version
local ctxs = {}          -- conn id → ctx
local waiting = {}       -- coroutine → { ctx =, hook =, frame = } for hooks that wait
local timer_of = {}      -- coroutine → its timer, for timers that wait
local io = {}            -- I/O token → coroutine
local pool = {}          -- idle hook coroutines
local current            -- the ctx whose hook or timer is running
local DONE, WAIT = {}, {}
local HOOK_NO = { on_handshake = 1, on_frame_in = 2, on_frame_out = 4, on_close = 8, on_intercept = 2,
                  on_request = 1 }

local log = ctxmod.log      -- (level, msg, conn, policy, fields, name, value, ...)

-- Who answers a service request, for the log of its failure.
local function req_owner(ctx) return ctx.service == "admin" and "admin-api" or "key-manager" end

local function on_fail_open(entry, err, hook, ctx)
    ctx = ctx or current
    C.weir_ffi_policy_failed()
    C.weir_stats_policy_failed(entry.name)
    log(2, "policy failed (fail_open: passing)", ctx and ctx.id, entry.name, nil, "hook", hook, "error", err)
end

-- What the access record says of CTX's consumer (docs/logging.md): told to
-- the core whenever a hook leaves it changed.
local function consumer_field(v)
    if type(v) == "string" then return v end
    if type(v) == "number" then return string.format("%.14g", v) end
    return nil
end

-- What was told, { app, sub, key_type, tier }: one read-only tuple shared
-- by the connections of the same consumer (at most TOLD_MAX remembered).
local told_tuples, n_told, TOLD_MAX = {}, 0, 1024
local TOLD = ctxmod.TOLD       -- where a ctx keeps its tuple (an array slot)

local last_told = {}

local function told_tuple(app, sub, kt, tier)
    local t = last_told
    if t[1] == app and t[2] == sub and t[3] == kt and t[4] == tier then return t end
    local key = (app or "") .. "\0" .. (sub or "") .. "\0" .. (kt or "") .. "\0" .. (tier or "")
    t = told_tuples[key]
    if t and t[1] == app and t[2] == sub and t[3] == kt and t[4] == tier then
        last_told = t
        return t
    end
    t = { app, sub, kt, tier }
    last_told = t
    if n_told >= TOLD_MAX then told_tuples, n_told = {}, 0 end
    n_told = n_told + 1
    told_tuples[key] = t
    return t
end

local function sync_consumer(ctx)
    local c = rawget(ctx, "consumer")
    if c == nil and rawget(ctx, TOLD) == nil then return end
    local app, sub, kt, tier
    if type(c) == "table" then
        app, sub = consumer_field(c.application), consumer_field(c.subscriber)
        kt, tier = consumer_field(c.key_type), consumer_field(c.tier)
    end
    local told = rawget(ctx, TOLD)
    if told and told[1] == app and told[2] == sub and told[3] == kt and told[4] == tier then return end
    rawset(ctx, TOLD, told_tuple(app, sub, kt, tier))
    C.weir_ffi_consumer(ctx._h, app, sub, kt, tier)
end

-- A hook coroutine: runs chains until its hook waits; then it belongs to
-- that hook until the wait ends.
local function hook_body(ctx, hook, frame, start, replaced)
    while true do
        local entries = hook == "on_intercept" and ctx._icpt or ctx._chain.entries
        local kind, a, b = chain.run(entries, hook, ctx, frame, on_fail_open, start, replaced)
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
local timer_settled   -- forward: timer_settled(co, t, ok, tag)

-- The core's return values for a chain that ended with KIND, A, B (not
-- waiting, not failed outside chain.run): shared by settle and frame_loop.
local function finish(ctx, hook, frame, kind, a, b)
    sync_consumer(ctx)
    if kind == PASS then
        if hook ~= "on_handshake" then return OK, PASS end
        ctx._upgraded = true
        if ctx.request.ticket_request then return _M.issue_ticket(ctx) end
        local up = rawget(ctx, "_up")
        if up then _M.push_upstream(ctx, up) end
        local c = ctx.consumer
        return OK, PASS, c and c.key_type == "SANDBOX" and 1 or 0
    elseif kind == chain.ERROR then
        local code = a.code
        if hook == "on_handshake" then code = code or 403 end
        return OK, kind, weir.error_json(a.problem, code or 1008, a.message), code or 0, a.message
    elseif kind == REPLACE then
        return OK, kind, frame.payload
    elseif kind == FAIL then
        C.weir_ffi_policy_failed()
        return OK, kind, a, b, hook
    end
    return OK, kind, a, b
end

-- Turn what a hook coroutine gave back into the core's return values.
-- CO is nil for a coroutine the core resumed itself (frame_loop) that died.
local function settle(co, ctx, hook, frame, ok, tag, kind, a, b)
    current = nil
    if not ok then
        -- only an error outside chain.run's pcall gets here: the budget; the
        -- coroutine is dead, so a fail_open entry's chain goes on in a new one
        local name = ctx and ctx.policy or "?"
        local entries = ctx and (hook == "on_intercept" and ctx._icpt or ctx._chain.entries)
        local entry = entries and entries[ctx._at or 0]
        if ctx then ctx.policy = nil end
        if entry and entry.name == name and entry.fail_open then
            on_fail_open(entry, tostring(tag), hook, ctx)
            C.weir_ffi_budget_reset()     -- the rest of the chain gets a budget of its own
            return run(ctx, hook, frame, ctx._at + 1, ctx._replaced)
        end
        C.weir_ffi_policy_failed()
        return OK, FAIL, name, tostring(tag), hook
    end
    if tag == WAIT then
        waiting[co] = { ctx = ctx, hook = hook, frame = frame }
        return AGAIN
    end
    pool[#pool + 1] = co
    return finish(ctx, hook, frame, kind, a, b)
end

run = function(ctx, hook, frame, start, replaced)
    local co = take()
    current = ctx
    return settle(co, ctx, hook, frame, resume(co, ctx, hook, frame, start, replaced))
end

------------------------------------------------------------------------------
-- What the backend receives, and tickets
------------------------------------------------------------------------------

local function unescape(s)
    s = s:gsub("+", " ")
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Give the core the changes policies made to the backend's request.
function _M.push_upstream(ctx, up)
    local req = ctx.request
    local q = next(up.query) and req.query_string
    if q then
        local keep = {}
        for pair in q:gmatch("[^&]+") do
            local k = pair:match("^([^=]*)")
            if not up.query[unescape(k)] then keep[#keep + 1] = pair end
        end
        q = concat(keep, "&")
    else
        q = nil
    end
    -- a shared record (one removed header: ctx:clear_backend_header) keeps
    -- its list, made once
    local del, add = up.del_list, ""
    if not del then
        local d = {}
        for name in pairs(up.del) do d[#d + 1] = name end
        del = concat(d, "\n")
        if up.shared then up.del_list = del end
    end
    if next(up.set) then
        local a = {}
        for _, nv in pairs(up.set) do a[#a + 1] = nv[1] .. ": " .. nv[2] .. "\r\n" end
        add = concat(a)
    end
    local proto, pset = nil, 0
    if next(up.proto) then
        local keep = {}
        for _, p in ipairs(req.subprotocols) do
            if not up.proto[p] then keep[#keep + 1] = p end
        end
        proto, pset = concat(keep, ", "), 1
    end
    C.weir_ffi_upstream(ctx._h, q, q and #q or 0, del, #del, add, #add, proto, proto and #proto or 0, pset)
end

local cjson_safe = require "cjson.safe"
local TICKET_MAX = 3072    -- bytes of a ticket's record (core/shm.h WEIR_TICKET_DATA)
local ticket_buf = ffi.new("char[?]", TICKET_MAX)
local hash_buf = ffi.new("unsigned char[32]")

local function sha256(s)
    return weir.sha256(s)
end

local function scope_of(api, version) return sha256(api .. "\0" .. version) end

--- Tickets: one-time credentials shared by the workers of a host.
weir.tickets = {
    --- Take (and so consume) TICKET for API VERSION. Returns its record, or nil.
    take = function(ticket, api, version)
        if type(ticket) ~= "string" or #ticket ~= 64 or not ticket:match("^%x+$") then return nil end
        local n = C.weir_ffi_ticket_take(sha256(ticket:lower()), scope_of(api, version), ticket_buf, TICKET_MAX)
        if n < 0 then return nil end
        return ffi.string(ticket_buf, n)
    end,
}

--- Answer a ticket request (POST <api path>/ticket) whose chain passed.
function _M.issue_ticket(ctx)
    local t = rawget(ctx, "_ticket")
    if not t then
        local msg = "No policy of this API issues tickets"
        return OK, chain.ERROR, weir.error_json("/problems/not-found", 404, msg), 404, msg
    end
    local rec = cjson_safe.encode(t.record)
    if rec and #rec > TICKET_MAX then
        t.record.claims = nil                 -- too big to share: the consumer and exp suffice
        rec = cjson_safe.encode(t.record)
    end
    local raw = weir.random_bytes(32)
    local ticket = raw and raw:gsub(".", function(c) return string.format("%02x", c:byte()) end)
    if not rec or #rec > TICKET_MAX or not ticket
       or C.weir_ffi_ticket_put(sha256(ticket), scope_of(ctx.api.name, ctx.api.version), rec, #rec,
                                t.ttl * 1000) ~= 0 then
        local msg = "Cannot issue a ticket now"
        return OK, chain.ERROR, weir.error_json("/problems/unavailable", 503, msg), 503, msg
    end
    return OK, RESPOND, string.format('{"ticket":"%s","expires_in":%d}', ticket, floor(t.ttl + 0.5)), 200
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
            -- a recheck that may read ctx.request keeps the request head after the handshake
            local rechecks = false
            for _, e in ipairs(entries) do
                rechecks = rechecks or (e.mod.recheck ~= nil and e.mod.recheck_reads_request ~= false)
            end
            out[api.name .. "\0" .. v.version] = { entries = entries, mask = policy.mask(entries),
                                                   rechecks = rechecks, sized = 0, ctx_slots = 8, names = by_name,
                                                   api = ctxmod.api(api.name, v.version, api.context) }
        end
    end
    return out
end

--- Load FILE's chains. Returns a table "api\0version" → hook mask, or nil
-- and the errors (one string). CORE_STATE, when given, is the state the core
-- runs with (`{ redis = URL, key_prefix =, host =, timeout =, sync_interval = }`).
function _M.load(file, cpus, core_state)
    if C.weir_ffi_abi() ~= ABI then
        return nil, "weir's Lua runtime and core disagree (FFI ABI " .. ABI .. " vs "
                    .. C.weir_ffi_abi() .. "): reinstall both"
    end
    local conf, errs = weir_conf.load(file, { cpus = cpus })
    if not conf then return nil, concat(errs, "\n") end
    -- a reload does not apply `state` (core/master.c reports it as needing a
    -- restart, and the core keeps its Redis connection): CORE_STATE is the
    -- core's state, which the key manager, the cluster and the usage store
    -- use instead of the file's, so that they go on with the Redis, prefix
    -- and host name the core uses (also in a worker started after such a
    -- reload)
    if core_state then
        if core_state.redis then
            local u = assert(weir_conf.parse_redis_url(core_state.redis))
            u.url = core_state.redis
            core_state.redis = u
        end
        conf.state = core_state
    end
    chains = build(conf)
    chains_by = {}
    for _, c in pairs(chains) do
        local by = chains_by[c.api.name] or {}
        chains_by[c.api.name] = by
        by[c.api.version] = c
    end
    _M.conf = conf                -- the admin API describes it
    require("weir.cluster").start()
    if conf.admin then require("weir.admin").extend_all() end     -- loaded now: not in a request's budget
    if conf.key_manager then require("weir.keymanager").start() end
    require("weir.limits").tiers = conf.tiers     -- the throttling policy reads them by name
    require("weir.analytics").loaded(conf)
    local masks = {}
    for k, c in pairs(chains) do masks[k] = c.mask end
    -- open connections use the new chains from their next event, and are
    -- checked again by policies that can (revocations)
    for _, ctx in pairs(ctxs) do
        local c = not ctx.service and chains[ctx.api.name .. "\0" .. ctx.api.version]
        if c then
            ctx._chain = c
            local by = ctxmod.inspected_by(ctx)
            if by and not c.names[by] then ctx:inspect(nil) end    -- its policy left the chain
            if rawget(ctx, "_upgraded") then _M.recheck_soon(ctx) end
        end
    end
    return masks
end

--- Run every `recheck(ctx, conf)` of CTX's chain (after a reload); the
-- first weir.error closes the connection with its JSON and code.
function _M.recheck(ctx)
    for _, e in ipairs(ctx._chain.entries) do
        local fn = e.mod.recheck
        if fn then
            current = ctx
            ctx.policy = e.name
            local ok, v = pcall(fn, ctx, e.conf)
            ctx.policy = nil
            current = nil
            if not ok then
                C.weir_stats_policy_failed(e.name)
                log(3, "policy failed", ctx.id, e.name, nil, "hook", "recheck", "error", tostring(v))
            elseif weir.is_error(v) then
                -- closed from a timer: never from inside the core's reload
                _M.timer(ctx, 0, function(c) c:close(v.code or 1008, v.message, v) end)
                return
            end
        end
    end
end

--- Run CTX's rechecks soon, in a timer of its own: a recheck may wait (on
-- the store), and each connection's rechecks get a budget of their own, so
-- one that never ends is stopped (its connection stays open) without
-- holding the worker, its reload or the other connections' rechecks.
function _M.recheck_soon(ctx)
    local t = _M.timer(ctx, 0, _M.recheck)
    t.hook = "recheck"
end

local NO_CHAIN = { entries = {}, mask = 0, sized = 16, ctx_slots = 8 }     -- what has no chain: service requests, the worker's tasks

-- The worker's own tasks (not a connection's): their timers and waits.
local WORKER = { id = "worker", _chain = NO_CHAIN, service = "worker" }

--- Run FN(...) now in a coroutine of the worker's own, which may wait
-- (I/O, `sleep`). Its failure is logged as a timer's.
function _M.spawn(fn, ...)
    return _M.timer(WORKER, 0, function(_, ...) return fn(...) end, ...)
end

--- Wait SECONDS (only where waiting is allowed).
function _M.sleep(seconds)
    local token = tonumber(C.weir_ffi_sleep(seconds * 1000))
    if token == 0 then return nil end
    return _M.wait(token)
end

--- Run the rechecks of every open connection of this worker (a revocation
-- in the key manager, told by any worker), each in a timer of its own
-- (recheck_soon).
function _M.recheck_local()
    for _, ctx in pairs(ctxs) do
        if not ctx.service and rawget(ctx, "_upgraded") then _M.recheck_soon(ctx) end
    end
end

--- An event from the core: "recheck" (another worker asks); "analytics",
-- "analytics-final", "reopen" (SIGUSR1): for weir.analytics.
function _M.event(name)
    if name == "recheck" then _M.recheck_local()
    elseif name == "analytics" or name == "analytics-final" or name == "reopen" then require("weir.analytics").event(name) end
end

------------------------------------------------------------------------------
-- Connection events
------------------------------------------------------------------------------

--- A connection reached a version with a chain: ID is the core's handle
-- for it, NAME its name (ctx.id).
function _M.open(id, name, api, version, context, head, ip, port, tls, ticket)
    local v = chains_by[api]
    local c = v and v[version] or NO_CHAIN
    local ctx = ctxmod.new(id, name, api, version, context, head, ip, port, tls ~= 0, c.api, c.ctx_slots)
    if ticket == 1 then ctx.request.ticket_request = true end
    ctx._chain = c
    ctxs[id] = ctx
end

--- Run on_handshake. Once it has decided, what only the handshake needed
-- goes (the backend request's changes, pushed to the core by now).
function _M.handshake(id)
    local ctx = ctxs[id]
    local st, kind, a, b, c = run(ctx, "on_handshake", nil)
    if st ~= AGAIN then
        local ch = ctx._chain
        if ch.sized < 16 then ch.sized, ch.ctx_slots = ch.sized + 1, ctxmod.slots(ctx, ch.ctx_slots) end
        ctxmod.handshake_done(ctx)
    end
    return st, kind, a, b, c
end

local len_box = ffi.new("size_t[1]")
local frame_json = chain.frame_json
local FRAME_MT = {
    __index = function(f, k)
        if k == "payload" then
            local p = C.weir_ffi_payload(f._id, f._dir, len_box)
            local s = p ~= nil and ffi.string(p, len_box[0]) or ""
            rawset(f, "payload", s)
            return s
        elseif k == "json" then
            return frame_json
        end
    end,
}

-- CTX's frame object for direction DIR, reused for each of its messages
-- (the core gives the next one only when this one's verdict is known).
local function frame_of(ctx, id, dir, opcode, len)
    local fs = rawget(ctx, "_frames")
    if not fs then
        fs = {}
        rawset(ctx, "_frames", fs)
    end
    local f = fs[dir]
    if not f then
        f = setmetatable({ _id = id, _dir = dir, fin = true }, FRAME_MT)
        fs[dir] = f
    end
    f.opcode, f.length = opcode, len
    rawset(f, "payload", nil)
    rawset(f, "_json", nil)
    return f
end

local cframe = setmetatable({}, { __mode = "k" })   -- the frame_loop coroutines
local waited = setmetatable({}, { __mode = "k" })   -- those whose hook waited in the message they run
local cur_hook, cur_frame     -- what the frame_loop coroutine running now runs, for wait()
local batch_len = ffi.new("size_t[1]")

-- The body of the coroutines the core resumes itself for every message
-- (core/lua_bridge.c weir_lua_resume_frame): no Lua run/settle around it.
-- Each resume runs one message's chain (ICPT 2: the chains of LEN
-- messages of one read, weir_ffi_batch_at showing each, until one does
-- not pass or its hook waited) and yields the core's return values
-- (status first, a number); a policy that waits yields WAIT from inside
-- (wait()), and the coroutine is the waiting hook's from then on.
local function frame_loop(id, dir, opcode, len, icpt)
    local self = running()
    while true do
        local ctx = ctxs[id]
        local hook, entries
        if icpt == 1 then
            hook, entries = "on_intercept", ctx._icpt
        else
            hook, entries = dir == 0 and "on_frame_in" or "on_frame_out", ctx._chain.entries
        end
        local f, kind, a, b
        if icpt == 2 then
            for i = 0, len - 1 do
                local op = C.weir_ffi_batch_at(i, batch_len)
                f = frame_of(ctx, id, dir, op, tonumber(batch_len[0]))
                current, cur_hook, cur_frame = ctx, hook, f
                kind, a, b = chain.run(entries, hook, ctx, f, on_fail_open)
                if kind ~= PASS or waited[self] then break end
            end
        else
            f = frame_of(ctx, id, dir, opcode, len)
            current, cur_hook, cur_frame = ctx, hook, f
            kind, a, b = chain.run(entries, hook, ctx, f, on_fail_open)
        end
        current = nil
        waited[self] = nil
        id, dir, opcode, len, icpt = yield(finish(ctx, hook, f, kind, a, b))
    end
end

--- A new coroutine for the core's pool of frame hook coroutines.
function _M.frame_co()
    local co = create(frame_loop)
    cframe[co] = true
    return co
end

--- A frame_loop coroutine died with ERR (the budget, or the runtime's own
-- error) while running message DIR (ICPT 1: the interceptor) of ID.
function _M.frame_failed(id, dir, icpt, err)
    local ctx = ctxs[id]
    local hook = icpt == 1 and "on_intercept" or dir == 0 and "on_frame_in" or "on_frame_out"
    local fs = ctx and rawget(ctx, "_frames")
    return settle(nil, ctx, hook, fs and fs[dir], false, err)
end

--- The connection is gone: run on_close, forget it.
function _M.close(id, code, side, duration_ms, frames_in, bytes_in, frames_out, bytes_out)
    local ctx = ctxs[id]
    if not ctx then return end
    ctxs[id] = nil
    ctx._closed = true
    local ts = rawget(ctx, "_timers")
    if ts then
        -- collected first: cancelling removes a timer from ts, and removing
        -- keys under a running pairs() lost timers once compiled
        local list, n = {}, 0
        for t in pairs(ts) do n = n + 1; list[n] = t end
        for i = 1, n do list[i]:cancel() end
    end
    local ios = rawget(ctx, "_io")
    if ios then
        for token in pairs(ios) do
            C.weir_ffi_http_cancel(token)
            io[token] = nil
        end
    end
    for co, w in pairs(waiting) do
        if w.ctx == ctx then waiting[co] = nil end
    end
    for co, t in pairs(timer_of) do
        if t.ctx == ctx then timer_of[co] = nil end
    end
    if ctx._chain.mask % 16 >= 8 then
        local info = { code = code, side = side, duration = duration_ms / 1000,
                       frames_in = frames_in, bytes_in = bytes_in,
                       frames_out = frames_out, bytes_out = bytes_out }
        local co = take()
        current = ctx
        local ok, tag = resume(co, ctx, "on_close", info)
        current = nil
        if ok and tag == DONE then pool[#pool + 1] = co
        elseif ok then log(2, "on_close may not wait: its wait was abandoned", ctx.id, ctx.policy or "?")
        else
            C.weir_ffi_policy_failed()
            C.weir_stats_policy_failed(ctx.policy)
            log(3, "policy failed", ctx.id, ctx.policy or "?", nil, "hook", "on_close", "error", tostring(tag))
        end
    end
end

------------------------------------------------------------------------------
-- Requests to weir's own services (core/service.c): the admin API and the
-- key manager's public endpoints
------------------------------------------------------------------------------

local function request_body(ctx, req)
    local handler
    if req.service == "admin" then handler = require("weir.admin").handle
    else handler = require("weir.keymanager").handle end
    local ok, status, body, headers = pcall(handler, req)
    if not ok then return DONE, "fail", tostring(status) end
    if status == "upgrade" then body(ctx) end     -- a WebSocket weir serves: BODY takes its ctx
    return DONE, status, body, headers
end

--- Turn what a request coroutine gave back into the core's return values.
function _M.settle_request(co, ctx, ok, tag, status, body, headers)
    current = nil
    if not ok then
        C.weir_ffi_policy_failed()
        return OK, FAIL, req_owner(ctx), tostring(tag), "request"
    end
    if tag == WAIT then
        waiting[co] = { ctx = ctx, hook = "on_request" }
        return AGAIN
    end
    if status == "fail" then
        C.weir_ffi_policy_failed()
        return OK, FAIL, req_owner(ctx), body, "request"
    end
    if status == "upgrade" then return OK, PASS, 0 end
    return OK, RESPOND, body or "", status or 500, headers
end

--- A request to one of weir's services: SERVICE "admin" (the admin
-- listener, its token already checked) or "public" (the key manager's
-- endpoints). Answers `weir.OK, RESPOND, body, status, header lines` or
-- `weir.AGAIN`.
function _M.request(id, name, service, method, target, head, body, ip, port, tls)
    local ctx = { _h = id, id = name, _chain = NO_CHAIN, service = service }
    ctxs[id] = ctx
    local req = { service = service, method = method, target = target, head = head, body = body,
                  ip = ip, port = port, tls = tls ~= 0, id = name }
    local co = create(request_body)
    current = ctx
    C.weir_ffi_budget_service(1)
    return _M.settle_request(co, ctx, resume(co, ctx, req))
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
    if cframe[co] then
        waiting[co] = { ctx = current, hook = cur_hook, frame = cur_frame, cframe = true }
        waited[co] = true
    end
    return yield(WAIT)
end

--- The core finished I/O TOKEN: resume its coroutine with the results.
function _M.io_done(token, ...)
    local co = io[token]
    if not co then return 0 end
    io[token] = nil
    local w = waiting[co] or timer_of[co]
    waiting[co], timer_of[co] = nil, nil
    if w.ctx._io then w.ctx._io[token] = nil end
    current = w.ctx
    if w.hook == "on_request" then C.weir_ffi_budget_service(1) end
    if w.cframe then cur_hook, cur_frame = w.hook, w.frame end
    local ok, tag, kind, a, b, c = resume(co, ...)
    current = nil
    if w.fn then return timer_settled(co, w, ok, tag) end
    if w.hook == "on_request" then return w.ctx._h, 1, _M.settle_request(co, w.ctx, ok, tag, kind, a, b) end
    if w.cframe and ok then
        -- frame_loop settled the hook itself (TAG is its status), or it
        -- waits again (wait() put it back in `waiting`); it is not pooled
        if tag == WAIT then return w.ctx._h, HOOK_NO[w.hook], AGAIN end
        return w.ctx._h, HOOK_NO[w.hook], tag, kind, a, b, c
    end
    return w.ctx._h, HOOK_NO[w.hook], settle(co, w.ctx, w.hook, w.frame, ok, tag, kind, a, b)
end

-- timers: a binary heap on `at`; each timer knows its index (t.i), so a
-- cancelled timer (or one of a closed connection) leaves the heap at once
local heap = {}

local function swap(i, j)
    heap[i], heap[j] = heap[j], heap[i]
    heap[i].i, heap[j].i = i, j
end

local function up(i)
    while i > 1 do
        local p = floor(i / 2)
        if heap[p].at <= heap[i].at then break end
        swap(p, i)
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
        swap(m, i)
        i = m
    end
end

local function remove(t)
    local i, n = t.i, #heap
    if not i then return end
    t.i = nil
    if i ~= n then
        heap[i] = heap[n]
        heap[i].i = i
        heap[n] = nil
        down(i)
        up(i)
    else
        heap[n] = nil
    end
    local ts = rawget(t.ctx, "_timers")
    if ts then ts[t] = nil end
end

local function arm(now)
    if heap[1] then C.weir_ffi_timer((heap[1].at - (now or weir.now())) * 1000) end
end

local TIMER = {}
TIMER.__index = TIMER
function TIMER:cancel()
    self.cancelled = true
    remove(self)
end

--- Schedule FN(ctx, ...) in DELAY seconds (ctx:timer).
function _M.timer(ctx, delay, fn, ...)
    if type(delay) ~= "number" or delay < 0 then error("ctx:timer(delay, fn): delay must be seconds >= 0", 3) end
    if type(fn) ~= "function" then error("ctx:timer(delay, fn): fn must be a function", 3) end
    if rawget(ctx, "_closed") then return setmetatable({ cancelled = true, ctx = ctx }, TIMER) end
    local now = weir.now()
    local n = select("#", ...)
    -- up to two arguments kept in the timer's array part (no table for them)
    local t
    if n <= 2 then
        local a1, a2 = ...
        t = setmetatable({ a1, a2, at = now + delay, ctx = ctx, fn = fn, n = n, policy = ctx.policy }, TIMER)
    else
        t = setmetatable({ at = now + delay, ctx = ctx, fn = fn, args = { ... }, n = n, policy = ctx.policy }, TIMER)
    end
    heap[#heap + 1] = t
    t.i = #heap
    up(t.i)
    local ts = rawget(ctx, "_timers")
    if not ts then
        ts = {}
        rawset(ctx, "_timers", ts)
    end
    ts[t] = true
    if t.i == 1 then arm(now) end     -- the core's timer already fires for an earlier one
    return t
end

local function timer_body(t)
    local n = t.n
    if n == 0 then t.fn(t.ctx)
    elseif n == 1 then t.fn(t.ctx, t[1])
    elseif n == 2 then t.fn(t.ctx, t[1], t[2])
    else t.fn(t.ctx, unpack(t.args, 1, n)) end
end

-- Timer T's coroutine CO returned OK, TAG (resume's results): it waits,
-- or it ended (a failure is logged). Returns 0 (for io_done).
timer_settled = function(co, t, ok, tag)
    if ok and tag == WAIT then
        timer_of[co] = t
    elseif not ok and t.hook then
        -- a hook run in a timer (recheck_soon), stopped by the budget: the
        -- failure of the policy it was running
        local name = t.ctx.policy or t.policy or "?"
        t.ctx.policy = nil
        C.weir_ffi_policy_failed()
        C.weir_stats_policy_failed(name)
        log(3, "policy failed", t.ctx.id, name, nil, "hook", t.hook, "error", tostring(tag))
    elseif not ok then
        C.weir_ffi_policy_failed()
        C.weir_stats_policy_failed(t.policy)
        log(3, "timer failed", t.ctx.id, t.policy or "?", nil, "error", tostring(tag))
    end
    return 0
end

--- Run the timers that are due (the core's timer fired).
function _M.timers()
    local now = weir.now()
    while heap[1] and heap[1].at <= now do
        local t = heap[1]
        remove(t)
        if not t.cancelled and not t.ctx._closed then
            local co = create(timer_body)
            t.co = co                       -- for whoever holds the timer (a sink's sender)
            current = t.ctx
            -- each timer is a call into the policies of its own: one that
            -- ran over the budget does not stop the ones due with it
            C.weir_ffi_budget_reset()
            local ok, tag = resume(co, t)
            current = nil
            timer_settled(co, t, ok, tag)
        end
    end
    arm()
end

--- Log a JSON line from a policy's own code (not tied to a connection).
-- @tparam string level "debug", "info", "warn" or "error"
-- @tparam string msg
-- @tparam[opt] table fields extra members
-- @usage weir.log("warn", "JWKS fetch failed", { url = url })
weir.log = function(level, msg, fields)
    ctxmod.log(ctxmod.LEVELS[level] or 1, msg, nil, nil, fields)
end

ctxmod.bind(C)
ctxmod.runtime = _M
weir.http = require "weir.http"
weir._in_hook = function() return current ~= nil end

return _M
