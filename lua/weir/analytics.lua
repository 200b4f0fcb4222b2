--- The analytics sinks of a worker (docs/analytics.md): where the events
-- the core builds (core/analytics.c) go. The core hands the batches over
-- once per interval (one call, `event("analytics")`); each batch, NDJSON,
-- goes to every sink of its set:
--
--   file    appended to a JSON-lines file with one write(2) per batch (the
--           workers' batches never interleave inside a line); reopened on
--           SIGUSR1, for logrotate
--   redis   one `XADD <stream> MAXLEN ~ <maxlen> * event <type> json <line>`
--           per event, pipelined by at most 500 (CHUNK), on the worker's
--           state.redis connection
--   http    the batch POSTed to a URL (NDJSON, or a JSON array)
--
-- A redis or http sink keeps a bounded queue of batches (`queue` batches,
-- `queue_bytes` bytes); while it is down or slow, the oldest batches are
-- dropped and their events counted. Traffic never waits on a sink. Sinks
-- are named (`name`, by default "TYPE:TARGET", without a URL's userinfo,
-- query and fragment); every chain naming the same sink shares it.
--
-- A sink sends in a coroutine of the worker's own (runtime.spawn), which
-- runs under the policy budget: it resets the budget as it goes (as
-- weir.stats does), and a sender that died anyway (its coroutine is dead) is
-- noticed at the next interval: what it had in flight (`inflight` events:
-- XADDs sent and not answered, a POST) is counted dropped, what of a
-- Redis batch had not gone out yet is queued again (salvage), and a new
-- sender starts.
--
-- @module weir.analytics
-- @usage local c = require("weir.analytics").counters()   -- { ["file:/var/log/e.jsonl"] = { sent = 10, dropped = 0 } }

local ffi = require "ffi"
local ctxmod = require "weir.ctx"

local pairs, ipairs, type, tostring, tonumber, pcall, setmetatable =
    pairs, ipairs, type, tostring, tonumber, pcall, setmetatable
local sub, match, gsub, find = string.sub, string.match, string.gsub, string.find
local concat, remove, insert = table.concat, table.remove, table.insert
local co_status = coroutine.status

ffi.cdef [[
    void        weir_ffi_analytics_interval(double ms);
    const char *weir_ffi_analytics_batch(int set, size_t *len, uint64_t *count, uint64_t *lost);
    int         weir_ffi_analytics_open(const char *path, char *err, size_t errlen);
    long        weir_ffi_analytics_write(int fd, const char *p, size_t n, char *err, size_t errlen);
    void        weir_ffi_analytics_close(int fd);
    uint64_t    weir_ffi_redis(int argc, const char **argv, const size_t *lens);
    void        weir_ffi_budget_reset(void);
    void        weir_ffi_analytics_sets_used(unsigned char *used);
]]
local C = ffi.C

local _M = {}

local MAX_SETS = 63                                       -- core/analytics.h WEIR_ANALYTICS_SETS - 1
local CHUNK = 500                                         -- XADDs of one pipeline: a big batch goes in several
local RESET_EVERY = 128                                   -- lines between two budget resets in a sender
local QUEUE_BYTES = 64 * 1024 * 1024                      -- queue_bytes' default
local sinks = {}                                          -- name → sink, while a set (or its queue) holds it
local sets = {}                                           -- id → { sink, ... } (ids 1..MAX_SETS)
local set_of_key = {}                                     -- "name\0name..." → id
local set_of_table = setmetatable({}, { __mode = "k" })   -- a policy entry's conf.sinks → id
local lost_seen = {}                                      -- id → events lost by the core, as last seen
local interval_ms = 0

local len_box, count_box, lost_box = ffi.new("size_t[1]"), ffi.new("uint64_t[1]"), ffi.new("uint64_t[1]")
local errbuf = ffi.new("char[256]")

local log = ctxmod.log      -- (level, msg, conn, policy, fields, name, value, ...)

--- URL without what may be secret: its userinfo (`user:pass@`), query
-- and fragment. "https://u:p@h:8443/x?k=v#f" → "https://h:8443/x".
function _M.public_url(url)
    url = tostring(url)
    local scheme, rest = match(url, "^(%a[%w+.-]*://)(.*)$")
    if not scheme then scheme, rest = "", url end
    rest = match(rest, "^[^?#]*")
    local auth, path = match(rest, "^([^/]*)(.*)$")
    auth = match(auth, "^.*@(.*)$") or auth
    return scheme .. auth .. path
end

--- The name a sink entry has when it gives none: "file:PATH",
-- "redis:STREAM", "http:URL" (the URL as `public_url` gives it).
function _M.default_name(s)
    if s.type == "http" then return "http:" .. _M.public_url(s.url) end
    return s.type .. ":" .. tostring(s.path or s.stream or s.url)
end

------------------------------------------------------------------------------
-- Sinks
------------------------------------------------------------------------------

local SINK = {}
SINK.__index = SINK

-- N events of this sink lost (WHY: what went wrong), counted and logged
-- once per interval.
function SINK:drop(n, why)
    if n <= 0 then return end
    self.dropped = self.dropped + n
    self.dropped_now = self.dropped_now + n
    self.why = why or self.why
end

-- The queue of a sink that sends in the background: items { batch, events },
-- self.qbytes the bytes of their batches.
function SINK:q_pop()
    local item = remove(self.q, 1)
    self.qbytes = self.qbytes - #item[1]
    return item
end

-- Queue BATCH (N events) for a sink that sends in the background; the
-- oldest batches go while the queue holds more than `queue` batches or
-- `queue_bytes` bytes (a batch bigger than queue_bytes goes itself).
function SINK:enqueue(batch, n)
    local q = self.q
    q[#q + 1] = { batch, n }
    self.qbytes = self.qbytes + #batch
    while #q > 0 and (#q > self.queue or self.qbytes > self.queue_bytes) do
        local old = self:q_pop()
        self:drop(old[2], "queue full (the sink is down or slow)")
    end
    self:kick()
end

-- A batch (P[0..LEN), N events) for a sink that sends in the background:
-- copied into its queue.
function SINK:push(p, len, n)
    self:enqueue(ffi.string(p, len), n)
end

-- The events the sender had in hand are lost (it failed, or died).
function SINK:lost_inflight(why)
    self:drop(self.inflight, why)
    self.inflight = 0
end

-- Send what is queued, in a coroutine of the worker's own, unless one is
-- at it. A sender that died without saying so (stopped by the policy
-- budget, say) is replaced, and what it had in hand counted dropped.
function SINK:kick()
    if self.busy then
        -- the sender's coroutine, once the runtime started it (task.co):
        -- one that died, even before its first instruction, is replaced
        local co = self.task and self.task.co
        if not (co and co_status(co) == "dead") then return end
        self:lost_inflight("the sink's sender was stopped")
        if self.salvage then self:salvage() end
        log(3, "analytics sink failed", nil, nil, nil, "sink", self.name, "error", "its sender was stopped")
        self.busy, self.task = false, nil
    end
    if #self.q == 0 then return end
    self.busy = true
    self.task = require("weir.runtime").spawn(function()
        local ok, err = pcall(self.drain, self)
        if not ok then
            self:lost_inflight("the sink failed")
            if self.salvage then self:salvage() end
        end
        self.busy, self.task = false, nil
        if not ok then log(3, "analytics sink failed", nil, nil, nil, "sink", self.name, "error", tostring(err)) end
    end)
end

-- A failed send of ITEM: back at the head of the queue when there is room
-- (`queue` and `queue_bytes`; tried again at the next interval), else its
-- events are lost.
function SINK:retry(item, why)
    self.why = why
    self.inflight = 0
    if #self.q < self.queue and self.qbytes + #item[1] <= self.queue_bytes then
        insert(self.q, 1, item)
        self.qbytes = self.qbytes + #item[1]
    else
        self:drop(item[2], why)
    end
end

-- file ------------------------------------------------------------------------

local FILE = setmetatable({}, { __index = SINK })
FILE.__index = FILE

function FILE:open()
    if self.fd >= 0 then return true end
    local fd = C.weir_ffi_analytics_open(self.path, errbuf, 256)
    if fd < 0 then return nil, "cannot open " .. self.path .. ": " .. ffi.string(errbuf) end
    self.fd = fd
    return true
end

-- A batch is written whole or not at all; a write that fails part way is
-- cut off again (core: weir_ffi_analytics_write), and when it cannot be,
-- the partial line is ended with a newline before the next batch (`torn`),
-- so the lines after it stay lines. Either way the batch's events are
-- counted dropped.
function FILE:push(p, len, n)
    local ok, err = self:open()
    if not ok then return self:drop(n, err) end
    if self.torn then
        if tonumber(C.weir_ffi_analytics_write(self.fd, "\n", 1, errbuf, 256)) == 1 then
            self.torn = false
        else
            return self:fail(n)
        end
    end
    local w = tonumber(C.weir_ffi_analytics_write(self.fd, p, len, errbuf, 256))
    if w == len then
        self.sent = self.sent + n
        return
    end
    if w == -2 then self.torn = true end
    self:fail(n)
end

-- A write failed: the batch's N events are dropped, and the file is opened
-- again at the next batch.
function FILE:fail(n)
    self:drop(n, "cannot write " .. self.path .. ": " .. ffi.string(errbuf))
    C.weir_ffi_analytics_close(self.fd)
    self.fd = -1
end

function FILE:reopen()
    if self.fd >= 0 then C.weir_ffi_analytics_close(self.fd) end
    self.fd = -1
    local ok, err = self:open()
    if not ok then log(3, "cannot reopen an analytics file", nil, nil, nil, "sink", self.name, "error", err) end
end

function FILE:close()
    if self.fd >= 0 then C.weir_ffi_analytics_close(self.fd) end
    self.fd = -1
end

-- redis -----------------------------------------------------------------------

local REDIS = setmetatable({}, { __index = SINK })
REDIS.__index = REDIS

local argv = ffi.new("const char *[10]")
local lens = ffi.new("size_t[10]")

-- Send the queued batches, each one XADD per event, pipelined by CHUNK:
-- the commands of a chunk go out before the first answer is awaited, so a
-- big batch never sits for long ahead of the other users of state.redis
-- (limit syncs, key lookups).
function REDIS:drain()
    local runtime = require("weir.runtime")
    local maxlen = tostring(self.maxlen)
    while #self.q > 0 do
        local item = self:q_pop()
        -- the item being sent: what of it has not gone out yet starts at
        -- pos (left events); a sender that dies leaves it to salvage()
        local cur = { body = item[1], pos = 1, left = item[2] }
        local body, size = cur.body, #cur.body
        self.cur = cur
        while cur.pos <= size do
            local tokens, n = {}, 0
            while n < CHUNK and cur.pos <= size do
                local e = find(body, "\n", cur.pos, true) or size + 1
                local line = sub(body, cur.pos, e - 1)
                local ev = match(line, '^{"event":"([%w_]+)"') or "?"
                local args = { "XADD", self.stream, "MAXLEN", "~", maxlen, "*", "event", ev, "json", line }
                for i = 1, 10 do argv[i - 1] = args[i]; lens[i - 1] = #args[i] end     -- hiredis copies them
                -- counted in flight before it goes: a sender stopped at any
                -- instruction never leaves a sent line to be sent again
                local pos = cur.pos
                cur.pos, cur.left, self.inflight = e + 1, cur.left - 1, self.inflight + 1
                local token = tonumber(C.weir_ffi_redis(10, argv, lens))
                if token == 0 then
                    cur.pos, cur.left, self.inflight = pos, cur.left + 1, self.inflight - 1
                    break
                end
                n = n + 1
                tokens[n] = token
                if n % RESET_EVERY == 0 then C.weir_ffi_budget_reset() end
            end
            for i = 1, n do
                local v = runtime.wait(tokens[i])
                self.inflight = self.inflight - 1
                if v ~= nil then
                    self.sent = self.sent + 1
                else
                    self:drop(1, "XADD failed (no answer, or an error reply)")
                end
            end
            C.weir_ffi_budget_reset()
            if n < CHUNK and cur.pos <= size then
                -- not connected (from the start, or since the middle of the
                -- chunk): what did not go out waits for the next interval
                self.cur = nil
                self:retry({ sub(body, cur.pos), cur.left }, "Redis is not reachable")
                return
            end
        end
        self.cur = nil
    end
end

-- The sender died (KICK): what of the batch in hand had not gone out goes
-- back to the head of the queue (when there is room).
function REDIS:salvage()
    local cur = self.cur
    self.cur = nil
    if cur and cur.pos <= #cur.body then
        self:retry({ sub(cur.body, cur.pos), cur.left }, "the sink's sender was stopped")
    end
end

-- http ------------------------------------------------------------------------

local HTTP = setmetatable({}, { __index = SINK })
HTTP.__index = HTTP

-- POST the queued batches, one at a time, in order. A failure leaves the
-- batch at the head of the queue until the next interval.
function HTTP:drain()
    local http = require("weir.http")
    local headers = { ["Content-Type"] = self.format == "json" and "application/json" or "application/x-ndjson" }
    for k, v in pairs(self.headers or {}) do headers[k] = v end
    while #self.q > 0 do
        local item = self:q_pop()
        local body = item[1]
        self.inflight = item[2]
        if self.format == "json" then body = "[" .. gsub(sub(body, 1, -2), "\n", ",") .. "]" end
        C.weir_ffi_budget_reset()           -- the copies of a big batch took their time
        local res, err = http.request({ url = self.url, method = "POST", headers = headers, body = body,
                                        timeout = self.timeout / 1000 })
        body = nil
        C.weir_ffi_budget_reset()
        if res and res.status >= 200 and res.status < 300 then
            self.sent = self.sent + item[2]
            self.inflight = 0
        else
            self:retry(item, res and ("answered " .. res.status) or tostring(err))
            return
        end
    end
end

local KINDS = { file = FILE, redis = REDIS, http = HTTP }

-- The sink named by entry S: made, or its options brought up to date.
local function sink_for(s)
    local name = s.name or _M.default_name(s)
    local k = sinks[name]
    if k and k.type ~= s.type then
        if k.close then k:close() end
        k = nil
    end
    if not k then
        k = setmetatable({ name = name, type = s.type, sent = 0, dropped = 0, dropped_now = 0, q = {}, qbytes = 0,
                           inflight = 0, fd = -1 }, KINDS[s.type])
        sinks[name] = k
    end
    if k.type == "file" and k.path ~= s.path then
        k:close()
        k.path = s.path
    end
    k.stream, k.maxlen, k.url, k.format = s.stream, s.maxlen, s.url, s.format
    k.timeout, k.headers, k.queue = s.timeout, s.headers, s.queue or 60
    k.queue_bytes = s.queue_bytes or QUEUE_BYTES
    return k
end

------------------------------------------------------------------------------
-- Sets, the interval, the batches
------------------------------------------------------------------------------

-- The lowest set id free in SETS, or nil.
local function free_id(in_use)
    for id = 1, MAX_SETS do
        if not sets[id] and not (in_use and in_use[id]) then return id end
    end
end

-- The members and key of the sinks list LIST.
local function members_of(list)
    local names, members = {}, {}
    for i, s in ipairs(list) do
        members[i] = sink_for(s)
        names[i] = members[i].name
    end
    return members, concat(names, "\0")
end

--- The set id of a policy entry's SINKS list (its conf.sinks): the same
-- sinks in the same order share one set. Returns the id (1..63), or nil
-- and what is wrong.
function _M.set_of(list)
    local id = set_of_table[list]
    if id then return id end
    local members, key = members_of(list)
    id = set_of_key[key]
    if not id then
        id = free_id()
        if not id then return nil, "too many different lists of analytics sinks (63 at most)" end
        set_of_key[key] = id
    end
    sets[id] = members
    set_of_table[list] = id
    return id
end

-- The analytics entries of CONF's chains.
local function entries(conf)
    local out = {}
    local function scan(list)
        for _, e in ipairs(list or {}) do
            if e.name == "analytics" and type(e.conf) == "table" then out[#out + 1] = e.conf end
        end
    end
    scan(conf.policies)
    for _, api in ipairs(conf.apis or {}) do
        for _, v in ipairs(api.versions or {}) do scan(v.policies) end
    end
    return out
end

--- A configuration was loaded (at start and at every reload): its sinks
-- are made or brought up to date, and the batches are handed over every
-- `interval` (the shortest the configuration gives).
--
-- The sets are made again: a list of the new configuration keeps its id
-- when an open connection still reports to it, or it had one; the ids of
-- lists only open connections still use stay theirs (and deliver to the
-- same sinks) until a later reload finds them unused; every other id is
-- free again. Sinks no set names any more are closed once their queue is
-- empty.
function _M.loaded(conf)
    local used = ffi.new("unsigned char[64]")
    C.weir_ffi_analytics_sets_used(used)
    local in_use = {}
    for id = 1, MAX_SETS do in_use[id] = used[id] ~= 0 or nil end
    local old_sets, old_key = sets, set_of_key
    sets, set_of_key = {}, {}
    set_of_table = setmetatable({}, { __mode = "k" })
    -- first the lists open connections use, under their ids
    for key, id in pairs(old_key) do
        if in_use[id] then
            sets[id] = old_sets[id]
            set_of_key[key] = id
        end
    end
    local shortest
    local list = entries(conf)
    -- then the new configuration's lists: their old id when free, else the lowest free one
    for pass = 1, 2 do
        for _, pc in ipairs(list) do
            local members, key = members_of(pc.sinks)
            local id = set_of_key[key]
            if not id and pass == 1 and old_key[key] and not sets[old_key[key]] then id = old_key[key] end
            if not id and pass == 2 then id = free_id() end
            if id then
                sets[id] = members
                set_of_key[key] = id
                set_of_table[pc.sinks] = id
            elseif pass == 2 then
                log(3, "analytics sinks not used", nil, nil, nil, "error",
                    "too many different lists of analytics sinks (63 at most)")
            end
            if pass == 2 and (not shortest or pc.interval < shortest) then shortest = pc.interval end
        end
    end
    -- the sinks no set names: closed and forgotten once idle
    local named = {}
    for _, members in pairs(sets) do
        for _, k in ipairs(members) do named[k] = true end
    end
    for name, k in pairs(sinks) do
        if not named[k] and #k.q == 0 and not k.busy then
            if k.close then k:close() end
            sinks[name] = nil
        end
    end
    if shortest and shortest ~= interval_ms then
        interval_ms = shortest
        C.weir_ffi_analytics_interval(interval_ms)
    end
end

-- Log what each sink dropped in the interval, once.
local function report_drops()
    for name, k in pairs(sinks) do
        if k.dropped_now > 0 then
            log(2, "analytics events dropped", nil, nil, nil, "sink", name, "dropped", k.dropped_now, "dropped_total", k.dropped,
                "sent_total", k.sent, "queued_batches", #k.q, "reason", k.why)
            k.dropped_now = 0
        end
    end
end

-- The batches of the interval, to every sink of their set. FINAL: the
-- worker is stopping: only what can be written now (files) is.
local function deliver(final)
    for id, members in pairs(sets) do
        local p = C.weir_ffi_analytics_batch(id, len_box, count_box, lost_box)
        local lost = tonumber(lost_box[0])
        local n, len = tonumber(count_box[0]), tonumber(len_box[0])
        local newly = lost - (lost_seen[id] or 0)
        lost_seen[id] = lost
        for _, k in ipairs(members) do
            if newly > 0 then k:drop(newly, "the worker's batch was full") end
            if n > 0 and p ~= nil then
                if final and k.type ~= "file" then
                    k:drop(n, "the worker stopped")
                else
                    k:push(p, len, n)
                end
            end
        end
    end
    for _, k in pairs(sinks) do
        -- a sink whose last send failed tries again now
        if not final and k.kick then k:kick() end
        if final and k.q then
            for _, item in ipairs(k.q) do k:drop(item[2], "the worker stopped") end
            k.q, k.qbytes = {}, 0
        end
    end
    report_drops()
end

--- An event from the core: "analytics" (the interval's batches are
-- ready), "analytics-final" (the last ones: the worker stops), "reopen"
-- (SIGUSR1: the files are opened again by their names).
function _M.event(name)
    if name == "analytics" then
        deliver(false)
    elseif name == "analytics-final" then
        deliver(true)
        for _, k in pairs(sinks) do if k.close then k:close() end end
    elseif name == "reopen" then
        for _, k in pairs(sinks) do if k.reopen then k:reopen() end end
    end
end

--- Per sink, what it delivered and what it lost, since the worker started:
-- `{ [name] = { sent = N, dropped = N, queued = batches waiting } }`.
function _M.counters()
    local out = {}
    for name, k in pairs(sinks) do
        out[name] = { sent = k.sent, dropped = k.dropped, queued = #k.q, type = k.type }
    end
    return out
end


return _M
