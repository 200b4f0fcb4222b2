--- The analytics sinks of a worker (docs/analytics.md): where the events
-- the core builds (core/analytics.c) go. The core hands the batches over
-- once per interval (one call, `event("analytics")`); each batch, NDJSON,
-- goes to every sink of its set:
--
--   file    appended to a JSON-lines file with one write(2) per batch (the
--           workers' batches never interleave inside a line); reopened on
--           SIGUSR1, for logrotate
--   redis   one `XADD <stream> MAXLEN ~ <maxlen> * event <type> json <line>`
--           per event, pipelined per batch, on the worker's state.redis
--           connection
--   http    the batch POSTed to a URL (NDJSON, or a JSON array)
--
-- A redis or http sink keeps a bounded queue of batches (`queue`); while
-- it is down or slow, the oldest batches are dropped and their events
-- counted. Traffic never waits on a sink. Sinks are named (`name`, by
-- default "TYPE:TARGET"); every chain naming the same sink shares it.
--
-- @module weir.analytics
-- @usage local c = require("weir.analytics").counters()   -- { ["file:/var/log/e.jsonl"] = { sent = 10, dropped = 0 } }

local ffi = require "ffi"
local ctxmod = require "weir.ctx"

local pairs, ipairs, type, tostring, tonumber, pcall, setmetatable =
    pairs, ipairs, type, tostring, tonumber, pcall, setmetatable
local sub, match, gsub = string.sub, string.match, string.gsub
local concat, remove = table.concat, table.remove

ffi.cdef [[
    void        weir_ffi_analytics_interval(double ms);
    const char *weir_ffi_analytics_batch(int set, size_t *len, uint64_t *count, uint64_t *lost);
    int         weir_ffi_analytics_open(const char *path, char *err, size_t errlen);
    long        weir_ffi_analytics_write(int fd, const char *p, size_t n, char *err, size_t errlen);
    void        weir_ffi_analytics_close(int fd);
    uint64_t    weir_ffi_redis(int argc, const char **argv, const size_t *lens);
]]
local C = ffi.C

local _M = {}

local MAX_SETS = 63                                       -- core/analytics.h WEIR_ANALYTICS_SETS - 1
local sinks = {}                                          -- name → sink, for the life of the worker
local sets, nsets = {}, 0                                 -- id → { sink, ... }
local set_of_key = {}                                     -- "name\0name..." → id
local set_of_table = setmetatable({}, { __mode = "k" })   -- a policy entry's conf.sinks → id
local lost_seen = {}                                      -- id → events lost by the core, as last seen
local interval_ms = 0

local len_box, count_box, lost_box = ffi.new("size_t[1]"), ffi.new("uint64_t[1]"), ffi.new("uint64_t[1]")
local errbuf = ffi.new("char[256]")

local log = ctxmod.log      -- (level, msg, conn, policy, fields, name, value, ...)

--- The name a sink entry has when it gives none: "file:PATH", "redis:STREAM", "http:URL".
function _M.default_name(s)
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

-- Queue BATCH (N events) for a sink that sends in the background; the
-- oldest batches go when the queue is full.
function SINK:enqueue(batch, n)
    local q = self.q
    q[#q + 1] = { batch, n }
    while #q > self.queue do
        local old = remove(q, 1)
        self:drop(old[2], "queue full (the sink is down or slow)")
    end
    self:kick()
end

-- A batch (P[0..LEN), N events) for a sink that sends in the background:
-- copied into its queue.
function SINK:push(p, len, n)
    self:enqueue(ffi.string(p, len), n)
end

-- Send what is queued, in a coroutine of the worker's own, unless one is at it.
function SINK:kick()
    if self.busy or #self.q == 0 then return end
    self.busy = true
    require("weir.runtime").spawn(function()
        local ok, err = pcall(self.drain, self)
        self.busy = false
        if not ok then log(3, "analytics sink failed", nil, nil, nil, "sink", self.name, "error", tostring(err)) end
    end)
end

-- A failed send of ITEM: back at the head of the queue when there is room
-- (tried again at the next interval), else its events are lost.
function SINK:retry(item, why)
    self.why = why
    if #self.q < self.queue then
        table.insert(self.q, 1, item)
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

function FILE:push(p, len, n)
    local ok, err = self:open()
    if not ok then return self:drop(n, err) end
    local w = tonumber(C.weir_ffi_analytics_write(self.fd, p, len, errbuf, 256))
    if w == len then
        self.sent = self.sent + n
        return
    end
    self:drop(n, "cannot write " .. self.path .. ": " .. ffi.string(errbuf))
    C.weir_ffi_analytics_close(self.fd)          -- opened again at the next batch
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

-- Send the queued batches, each one XADD per event, pipelined: every
-- command goes out before the first answer is awaited.
function REDIS:drain()
    local runtime = require("weir.runtime")
    local maxlen = tostring(self.maxlen)
    while #self.q > 0 do
        local item = remove(self.q, 1)
        local tokens, n = {}, 0
        for line in item[1]:gmatch("[^\n]+") do
            local ev = match(line, '^{"event":"([%w_]+)"') or "?"
            local args = { "XADD", self.stream, "MAXLEN", "~", maxlen, "*", "event", ev, "json", line }
            for i = 1, 10 do argv[i - 1] = args[i]; lens[i - 1] = #args[i] end     -- hiredis copies them
            local token = tonumber(C.weir_ffi_redis(10, argv, lens))
            if token == 0 then break end
            n = n + 1
            tokens[n] = token
        end
        if n == 0 then
            -- not connected: nothing went out; the batch waits for the next interval
            self:retry(item, "Redis is not reachable")
            return
        end
        local ok = 0
        for i = 1, n do
            local v = runtime.wait(tokens[i])
            if v ~= nil then ok = ok + 1 end
        end
        self.sent = self.sent + ok
        if ok < item[2] then
            if n < item[2] then
                -- the connection went in the middle: what did not go out is requeued
                local rest, k = {}, 0
                for line in item[1]:gmatch("[^\n]+") do
                    k = k + 1
                    if k > n then rest[#rest + 1] = line end
                end
                self:drop(n - ok, "XADD failed (no answer, or an error reply)")
                self:retry({ concat(rest, "\n") .. "\n", item[2] - n }, "Redis is not reachable")
                return
            end
            self:drop(item[2] - ok, "XADD failed (no answer, or an error reply)")
        end
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
        local item = remove(self.q, 1)
        local body = item[1]
        if self.format == "json" then body = "[" .. gsub(sub(body, 1, -2), "\n", ",") .. "]" end
        local res, err = http.request({ url = self.url, method = "POST", headers = headers, body = body,
                                        timeout = self.timeout / 1000 })
        if res and res.status >= 200 and res.status < 300 then
            self.sent = self.sent + item[2]
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
        k = setmetatable({ name = name, type = s.type, sent = 0, dropped = 0, dropped_now = 0, q = {}, fd = -1 },
                         KINDS[s.type])
        sinks[name] = k
    end
    if k.type == "file" and k.path ~= s.path then
        k:close()
        k.path = s.path
    end
    k.stream, k.maxlen, k.url, k.format = s.stream, s.maxlen, s.url, s.format
    k.timeout, k.headers, k.queue = s.timeout, s.headers, s.queue or 60
    return k
end

------------------------------------------------------------------------------
-- Sets, the interval, the batches
------------------------------------------------------------------------------

--- The set id of a policy entry's SINKS list (its conf.sinks): the same
-- sinks in the same order share one set. Returns the id (1..63), or nil
-- and what is wrong.
function _M.set_of(list)
    local id = set_of_table[list]
    if id then return id end
    local names, members = {}, {}
    for i, s in ipairs(list) do
        members[i] = sink_for(s)
        names[i] = members[i].name
    end
    local key = concat(names, "\0")
    id = set_of_key[key]
    if not id then
        if nsets >= MAX_SETS then return nil, "too many different lists of analytics sinks (63 at most)" end
        nsets = nsets + 1
        id = nsets
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
function _M.loaded(conf)
    local shortest
    for _, pc in ipairs(entries(conf)) do
        local id, err = _M.set_of(pc.sinks)
        if not id then log(3, "analytics sinks not used", nil, nil, nil, "error", err) end
        if not shortest or pc.interval < shortest then shortest = pc.interval end
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
    for id = 1, nsets do
        local members = sets[id]
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
            k.q = {}
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
