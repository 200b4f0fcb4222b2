--- The host's metrics and usage (docs/analytics.md, "Metrics and usage"), read from the store every
-- worker writes in shared memory (core/stats.h) and summed over workers:
-- `GET /metrics` (Prometheus text format 0.0.4), `GET /usage` and
-- `GET /usage/top` on the admin API, and `snapshot()` for the dashboard.
-- With `scope=cluster` the usage is summed instead from the analytics
-- events every host writes to a Redis stream (`metrics.usage_stream`).
--
-- @module weir.stats

local ffi = require "ffi"
local cjson = require "cjson.safe"
local weir = require "weir"

local format, concat, sort, floor, byte, sub = string.format, table.concat, table.sort, math.floor,
                                               string.byte, string.sub
local pairs, ipairs, tonumber = pairs, ipairs, tonumber

ffi.cdef [[
    typedef struct {
        uint32_t  kind, len;
        char      labels[408];
        uint64_t  v[16];
    } weir_stats_row_t;
    typedef struct {
        uint32_t  len, worker;
        char      key[408];
        uint64_t  v[6];
        uint64_t  last_ms;
    } weir_stats_usage_row_t;
    int      weir_stats_read(uint64_t i, weir_stats_row_t *out);
    int      weir_stats_usage_read(uint64_t i, int range, uint64_t now_ms, weir_stats_usage_row_t *out);
    uint64_t weir_stats_capacity(int which);
    int      weir_stats_workers(void);
    uint32_t weir_stats_used(int which, int w);
    uint64_t weir_stats_reloads(int result);
    uint64_t weir_stats_dropped(void);
    size_t   weir_stats_sizeof(int which);
]]
local C = ffi.C

assert(ffi.sizeof("weir_stats_row_t") == tonumber(C.weir_stats_sizeof(0))
       and ffi.sizeof("weir_stats_usage_row_t") == tonumber(C.weir_stats_sizeof(1)),
       "weir.stats and core/stats.h disagree on the store's layout")

local _M = {}

-- core/stats.h
local TRAFFIC, CLOSED, AUTH, REFUSED, HANDSHAKE, SESSION, BACKEND, POLICY = 1, 2, 3, 4, 5, 6, 7, 8
local MSG_IN, MSG_OUT, BYTES_IN, BYTES_OUT, THR_IN, THR_OUT, FRAMES_IN, FRAMES_OUT, LAST_MS = 0, 1, 2, 3, 4, 5, 6, 7, 8
local HIST_INF, HIST_SUM = 13, 14
local RANGES = { minute = 0, hour = 1, day = 2 }
local RANGE_MS = { minute = 60000, hour = 3600000, day = 86400000 }

-- bucket upper bounds as written in `le` (core/stats_session.c, same order)
local HS_LE = { "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
                "10" }
local SESSION_LE = { "1", "5", "30", "60", "300", "900", "1800", "3600", "7200", "21600", "43200", "86400",
                     "604800" }

local row = ffi.new("weir_stats_row_t")
local urow = ffi.new("weir_stats_usage_row_t")

local function budget_reset(i)
    if i % 4096 == 4095 then C.weir_ffi_budget_reset() end
end

--- Call FN(i) for every slot index of WHICH's table (0: series, 1: usage)
-- that may hold something: each worker's entries in use, and for usage its
-- "other" key (the last slot of the worker).
local function each_slot(which, fn)
    local nw = C.weir_stats_workers()
    if nw == 0 then return end
    local per = tonumber(C.weir_stats_capacity(which)) / nw
    local n = 0
    for w = 0, nw - 1 do
        local used = C.weir_stats_used(which, w)
        for k = 0, used - 1 do
            fn(w * per + k)
            n = n + 1
            budget_reset(n)
        end
        if which == 1 then fn(w * per + per - 1) end
    end
end

-- A label value: valid UTF-8 (a byte that is not becomes "?"), with \, " and
-- newline escaped.
local function utf8_clean(s)
    if not s:find("[\128-\255]") then return s end
    local out, i, n = {}, 1, #s
    while i <= n do
        local c = byte(s, i)
        local len = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2 or (c >= 0xE0 and c <= 0xEF) and 3
                    or (c >= 0xF0 and c <= 0xF4) and 4 or 0
        local ok = len > 0 and i + len - 1 <= n
        for k = i + 1, i + len - 1 do
            if not ok then break end
            local b = byte(s, k)
            ok = b >= 0x80 and b <= 0xBF
        end
        if ok then
            out[#out + 1] = sub(s, i, i + len - 1)
            i = i + len
        else
            out[#out + 1] = "?"
            i = i + 1
        end
    end
    return concat(out)
end

--- The label values encoded in P (LEN bytes: a length byte, then the value).
local function decode(p, len)
    local s, out, i = ffi.string(p, len), {}, 1
    while i <= #s do
        local n = byte(s, i)
        out[#out + 1] = sub(s, i + 1, i + n)
        i = i + n + 1
    end
    return out
end

--- Every series of the host, summed over workers: a list of
-- { kind =, labels = {...}, v = {[0] = ...} } (LAST_MS: the greatest).
local function series()
    local by, list = {}, {}
    each_slot(0, function(i)
        if C.weir_stats_read(i, row) == 1 then
            -- merged on the values as written: two that differ only in bytes
            -- that are not UTF-8 are one series (never two of the same name)
            local vals = decode(row.labels, row.len)
            for k = 1, #vals do vals[k] = utf8_clean(vals[k]) end
            local key = row.kind .. "\0" .. concat(vals, "\0")
            local e = by[key]
            if not e then
                e = { kind = row.kind, labels = vals, v = {} }
                for j = 0, 15 do e.v[j] = 0 end
                by[key] = e
                list[#list + 1] = e
            end
            for j = 0, 15 do
                local x = tonumber(row.v[j])
                if e.kind == TRAFFIC and j == LAST_MS then
                    if x > e.v[j] then e.v[j] = x end
                else
                    e.v[j] = e.v[j] + x
                end
            end
        end
    end)
    return list
end

--- Open connections by api and version, from the host's registry.
local function open_connections()
    local by, total = {}, 0
    require("weir.admin").each_conn(function(c)
        local key = ffi.string(c.api) .. "\0" .. ffi.string(c.version)
        by[key] = (by[key] or 0) + 1
        total = total + 1
    end)
    return by, total
end

------------------------------------------------------------------------------
-- The text exposition format 0.0.4
------------------------------------------------------------------------------


local function escape(s)
    return (utf8_clean(s):gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end
_M.escape = escape

-- '{a="x",b="y"}' from NAMES and VALUES (EXTRA: one more name=value pair, raw).
local function labels(names, values, extra)
    local parts = {}
    for i, n in ipairs(names) do parts[#parts + 1] = n .. '="' .. escape(values[i] or "") .. '"' end
    if extra then parts[#parts + 1] = extra end
    if #parts == 0 then return "" end
    return "{" .. concat(parts, ",") .. "}"
end

local function num(x)
    if x == floor(x) and x < 2 ^ 53 then return format("%d", x) end
    return format("%.15g", x)          -- a timestamp keeps its milliseconds
end

local function family(out, name, kind, help)
    out[#out + 1] = "# HELP " .. name .. " " .. help
    out[#out + 1] = "# TYPE " .. name .. " " .. kind
end

local function sample(out, name, lbl, value)
    out[#out + 1] = name .. lbl .. " " .. num(value)
end

-- KIND's series sorted by their labels.
local function of_kind(all, kind)
    local t = {}
    for _, e in ipairs(all) do if e.kind == kind then t[#t + 1] = e end end
    sort(t, function(a, b) return concat(a.labels, "\0") < concat(b.labels, "\0") end)
    return t
end

local function counter(out, all, kind, name, names, help, j)
    family(out, name, "counter", help)
    for _, e in ipairs(of_kind(all, kind)) do sample(out, name, labels(names, e.labels), e.v[j or 0]) end
end

local function histogram(out, all, kind, name, le, unit, help)
    family(out, name, "histogram", help)
    for _, e in ipairs(of_kind(all, kind)) do
        local cum = 0
        for b, bound in ipairs(le) do
            cum = cum + e.v[b - 1]
            sample(out, name .. "_bucket", labels({ "api", "version" }, e.labels, 'le="' .. bound .. '"'), cum)
        end
        cum = cum + e.v[HIST_INF]
        sample(out, name .. "_bucket", labels({ "api", "version" }, e.labels, 'le="+Inf"'), cum)
        sample(out, name .. "_sum", labels({ "api", "version" }, e.labels), e.v[HIST_SUM] / unit)
        sample(out, name .. "_count", labels({ "api", "version" }, e.labels), cum)
    end
end

--- The host's metrics in the Prometheus text format 0.0.4.
function _M.metrics()
    local all = series()
    local out = {}
    local open = open_connections()
    family(out, "weir_connections_open", "gauge", "Client connections open now (upgraded, listed in the registry).")
    local keys = {}
    for k in pairs(open) do keys[#keys + 1] = k end
    sort(keys)
    for _, k in ipairs(keys) do
        local api, version = k:match("^(.-)%z(.*)$")
        sample(out, "weir_connections_open", labels({ "api", "version" }, { api, version }), open[k])
    end
    counter(out, all, CLOSED, "weir_connections_closed_total", { "api", "version", "code", "side" },
            "Connections ended after the upgrade, by the first close code and the side that sent it.")
    local tl = { "api", "version", "application" }
    local traffic = of_kind(all, TRAFFIC)
    for _, f in ipairs({
        { "weir_messages_total", MSG_IN, MSG_OUT, "Data messages relayed, by direction (in: from clients)." },
        { "weir_message_bytes_total", BYTES_IN, BYTES_OUT, "Payload bytes of data frames, by direction." },
        { "weir_frames_total", FRAMES_IN, FRAMES_OUT, "Data frames, by direction." },
        { "weir_messages_throttled_total", THR_IN, THR_OUT,
          "Messages over a rate limit (delayed, dropped or refused; a delayed one counted once), by direction." },
    }) do
        family(out, f[1], "counter", f[4])
        for _, e in ipairs(traffic) do
            sample(out, f[1], labels(tl, e.labels, 'direction="in"'), e.v[f[2]])
            sample(out, f[1], labels(tl, e.labels, 'direction="out"'), e.v[f[3]])
        end
    end
    family(out, "weir_last_access_timestamp_seconds", "gauge", "When the last data frame went either way.")
    for _, e in ipairs(traffic) do
        if e.v[LAST_MS] > 0 then
            sample(out, "weir_last_access_timestamp_seconds", labels(tl, e.labels), e.v[LAST_MS] / 1000)
        end
    end
    counter(out, all, AUTH, "weir_auth_failures_total", { "api", "reason" },
            "Handshakes refused 401 or 403 by a policy, by the problem type (without /problems/).")
    counter(out, all, REFUSED, "weir_handshakes_refused_total", { "status" },
            "Handshakes answered with an HTTP error instead of the upgrade, by status.")
    histogram(out, all, HANDSHAKE, "weir_handshake_duration_seconds", HS_LE, 1e9,
              "From the accept to the client's 101 (the backend's handshake and the policies included).")
    histogram(out, all, SESSION, "weir_session_duration_seconds", SESSION_LE, 1e3,
              "From the accept to the end of an upgraded connection (its length, not a latency).")
    counter(out, all, BACKEND, "weir_backend_failures_total", { "api", "version" },
            "Backends that could not be used: connect, TLS or handshake failed (bad gateway).")
    counter(out, all, POLICY, "weir_policy_errors_total", { "policy" },
            "Policy hooks that failed (an error, or over their budget).")
    family(out, "weir_reloads_total", "counter", "Reloads, by result.")
    for i, r in ipairs({ "applied", "partial", "refused" }) do
        sample(out, "weir_reloads_total", labels({ "result" }, { r }), tonumber(C.weir_stats_reloads(i - 1)))
    end
    family(out, "weir_metrics_dropped_total", "counter",
           "Counts lost because a worker's series table was full (metrics.max_series).")
    sample(out, "weir_metrics_dropped_total", "", tonumber(C.weir_stats_dropped()))
    out[#out + 1] = ""
    return concat(out, "\n")
end

------------------------------------------------------------------------------
-- The snapshot (the dashboard's feed)
------------------------------------------------------------------------------

--- The host's totals now (docs/analytics.md, "weir.stats.snapshot").
function _M.snapshot()
    local all = series()
    local open, total = open_connections()
    local s = {
        now_ms = floor(weir.now() * 1000), connections_open = total,
        messages_in = 0, messages_out = 0, bytes_in = 0, bytes_out = 0, throttled = 0,
        auth_failures = 0, policy_errors = 0, backend_failures = 0, handshakes = 0,
        apis = {}, applications = {},
    }
    local apis, apps = {}, {}
    local function api_of(api, version)
        local key = api .. "\0" .. version
        local a = apis[key]
        if not a then
            a = { api = api, version = version, connections_open = open[key] or 0, messages_in = 0,
                  messages_out = 0, bytes_in = 0, bytes_out = 0, throttled = 0 }
            apis[key] = a
            s.apis[#s.apis + 1] = a
        end
        return a
    end
    for key in pairs(open) do
        local api, version = key:match("^(.-)%z(.*)$")
        api_of(api, version)
    end
    for _, e in ipairs(all) do
        local v = e.v
        if e.kind == TRAFFIC then
            local thr = v[THR_IN] + v[THR_OUT]
            s.messages_in, s.messages_out = s.messages_in + v[MSG_IN], s.messages_out + v[MSG_OUT]
            s.bytes_in, s.bytes_out = s.bytes_in + v[BYTES_IN], s.bytes_out + v[BYTES_OUT]
            s.throttled = s.throttled + thr
            local a = api_of(e.labels[1], e.labels[2])
            a.messages_in, a.messages_out = a.messages_in + v[MSG_IN], a.messages_out + v[MSG_OUT]
            a.bytes_in, a.bytes_out = a.bytes_in + v[BYTES_IN], a.bytes_out + v[BYTES_OUT]
            a.throttled = a.throttled + thr
            local name = e.labels[3]
            local p = apps[name]
            if not p then
                p = { application = name, messages_in = 0, messages_out = 0, bytes_in = 0, bytes_out = 0,
                      throttled = 0, last_access_ms = 0 }
                apps[name] = p
                s.applications[#s.applications + 1] = p
            end
            p.messages_in, p.messages_out = p.messages_in + v[MSG_IN], p.messages_out + v[MSG_OUT]
            p.bytes_in, p.bytes_out = p.bytes_in + v[BYTES_IN], p.bytes_out + v[BYTES_OUT]
            p.throttled = p.throttled + thr
            if v[LAST_MS] > p.last_access_ms then p.last_access_ms = v[LAST_MS] end
        elseif e.kind == AUTH then
            s.auth_failures = s.auth_failures + v[0]
        elseif e.kind == POLICY then
            s.policy_errors = s.policy_errors + v[0]
        elseif e.kind == BACKEND then
            s.backend_failures = s.backend_failures + v[0]
        elseif e.kind == HANDSHAKE then
            for j = 0, HIST_INF do s.handshakes = s.handshakes + v[j] end
        end
    end
    sort(s.apis, function(a, b) return a.api .. "\0" .. a.version < b.api .. "\0" .. b.version end)
    sort(s.applications, function(a, b) return a.application < b.application end)
    return s
end

------------------------------------------------------------------------------
-- Usage
------------------------------------------------------------------------------

local GROUPS = {
    api = { "api", "version" },
    application = { "application" },
    subscriber = { "application", "subscriber" },
}
local FIELD = { api = 1, version = 2, application = 3, subscriber = 4 }
local ORDERS = { messages = true, bytes = true, throttled = true, connections = true }

-- Whether KEY (api, version, application, subscriber) has FILTER's values.
local function matches(key, filter)
    for f, want in pairs(filter or {}) do
        if key[FIELD[f]] ~= want then return false end
    end
    return true
end

-- The group of KEY for NAMES (the fields grouped by) in GROUPS (by its
-- fields joined), added to LIST with every count 0 when new.
local function group_of(groups, list, names, key)
    local parts = {}
    for k, n in ipairs(names) do parts[k] = key[FIELD[n]] end
    local gk = concat(parts, "\0")
    local g = groups[gk]
    if not g then
        g = { messages_in = 0, messages_out = 0, bytes_in = 0, bytes_out = 0, throttled = 0,
              connections = 0, last_access_ms = 0 }
        for k, n in ipairs(names) do g[n] = parts[k] end
        groups[gk] = g
        list[#list + 1] = g
    end
    return g
end

--- The usage of the host over RANGE ("minute", "hour", "day"), grouped BY
-- ("api", "application", "subscriber"), only keys matching FILTER (field ->
-- value). Returns the list of groups, most messages first.
function _M.usage(by, range, filter, now_ms)
    now_ms = now_ms or floor(weir.now() * 1000)
    local groups, list = {}, {}
    local names = GROUPS[by]
    each_slot(1, function(i)
        if C.weir_stats_usage_read(i, RANGES[range], now_ms, urow) == 1 then
            local v = urow.v
            local any = false
            for j = 0, 5 do if v[j] ~= 0 then any = true end end
            local key = any and decode(urow.key, urow.len)
            if any and matches(key, filter) then
                local g = group_of(groups, list, names, key)
                g.messages_in = g.messages_in + tonumber(v[0])
                g.messages_out = g.messages_out + tonumber(v[1])
                g.bytes_in = g.bytes_in + tonumber(v[2])
                g.bytes_out = g.bytes_out + tonumber(v[3])
                g.throttled = g.throttled + tonumber(v[4])
                g.connections = g.connections + tonumber(v[5])
                local last = tonumber(urow.last_ms)
                if last > g.last_access_ms then g.last_access_ms = last end
            end
        end
    end)
    return list
end

------------------------------------------------------------------------------
-- Usage from the analytics stream (scope=cluster)
------------------------------------------------------------------------------

local STREAM_PAGE = 1000            -- entries read with one XRANGE
local STREAM_MAX = 1000000          -- entries one query reads at most

--- Milliseconds since the epoch of a UTC time "YYYY-MM-DDTHH:MM:SS.mmmZ"
-- (the events' `ts`), or nil.
local function iso_ms(s)
    local y, mo, d, h, mi, se, ms = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)%.?(%d*)Z$")
    if not y then return nil end
    y, mo = tonumber(y), tonumber(mo)
    if mo <= 2 then y = y - 1 end
    -- days since 1970-01-01 of a proleptic Gregorian date (the civil-from-days
    -- arithmetic, years counted from March)
    local era = floor(y / 400)
    local yoe = y - era * 400
    local doy = floor((153 * ((mo + 9) % 12) + 2) / 5) + tonumber(d) - 1
    local days = era * 146097 + yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy - 719468
    local frac = ms ~= "" and tonumber((ms .. "00"):sub(1, 3)) or 0
    return (((days * 24 + tonumber(h)) * 60 + tonumber(mi)) * 60 + tonumber(se)) * 1000 + frac
end
_M.iso_ms = iso_ms

local function field(v) return type(v) == "string" and v or "" end

local COUNTED = { messages = true, throttled = true, connect = true }

-- The event of the stream entry ENTRY ({ id, { field, value, ... } }) if
-- usage counts it: its type, the event (decoded) and its ts in ms.
local function usage_event(entry)
    local f, kind, line = entry[2], nil, nil
    if type(f) ~= "table" then return nil end
    for i = 1, #f - 1, 2 do
        if f[i] == "event" then kind = f[i + 1] elseif f[i] == "json" then line = f[i + 1] end
    end
    if not COUNTED[kind] or type(line) ~= "string" then return nil end
    local e = cjson.decode(line)
    local ts = type(e) == "table" and type(e.ts) == "string" and iso_ms(e.ts)
    if not ts then return nil end
    return kind, e, ts
end

-- Add the event E of type KIND, made at TS (ms), to the group G.
local function count_event(g, kind, e, ts)
    if kind == "messages" then
        g.messages_in = g.messages_in + (tonumber(e.messages_in) or 0)
        g.messages_out = g.messages_out + (tonumber(e.messages_out) or 0)
        g.bytes_in = g.bytes_in + (tonumber(e.bytes_in) or 0)
        g.bytes_out = g.bytes_out + (tonumber(e.bytes_out) or 0)
        if ts > g.last_access_ms then g.last_access_ms = ts end
    elseif kind == "throttled" then
        g.throttled = g.throttled + (tonumber(e.throttled_in) or 0) + (tonumber(e.throttled_out) or 0)
    else
        g.connections = g.connections + 1
    end
end

-- Whether entries of STREAM older than FROM_MS may have been removed:
-- its first entry is newer than FROM_MS and the stream lost entries
-- (XINFO STREAM: entries-added greater than its length). Returns the
-- answer, or nil and the error.
local function trimmed(redis, stream, from_ms)
    local first, err = redis.call("XRANGE", stream, "-", "+", "COUNT", 1)
    if type(first) ~= "table" then return nil, err or "no answer from Redis" end
    if #first == 0 then return false end                -- no stream, or an empty one
    local ms = tonumber(tostring(first[1][1]):match("^(%d+)"))
    if not ms or ms <= from_ms then return false end
    local info = redis.call("XINFO", "STREAM", stream)
    if type(info) == "table" then
        local length, added
        for i = 1, #info - 1, 2 do
            if info[i] == "length" then length = tonumber(info[i + 1]) end
            if info[i] == "entries-added" then added = tonumber(info[i + 1]) end
        end
        if length and added and added <= length then return false end     -- nothing ever removed
    end
    return true
end

--- The usage over RANGE from the analytics events in the Redis stream
-- STREAM (state.redis), grouped and filtered as `usage` does. Reads the
-- entries added since the range began (XRANGE, STREAM_PAGE at a time, the
-- worker serving others between pages), at most MAX (STREAM_MAX), and
-- counts the events whose `ts` is in the range. Returns the groups, whether
-- the range was all there (false: MAX entries read, or older entries
-- trimmed away) and the entries read; or nil and the error (Redis down,
-- slow, or the key is not a stream).
function _M.stream_usage(stream, by, range, filter, now_ms, max)
    local redis = require "weir.redis"
    now_ms, max = now_ms or floor(weir.now() * 1000), max or STREAM_MAX
    local from = now_ms - RANGE_MS[range]
    local names = GROUPS[by]
    local groups, list = {}, {}
    local lost, err = trimmed(redis, stream, from)
    if lost == nil then return nil, err end
    local complete, read, start = not lost, 0, format("%d-0", from)
    while true do
        local page, perr = redis.call("XRANGE", stream, start, "+", "COUNT", STREAM_PAGE)
        if type(page) ~= "table" then return nil, perr or "no answer from Redis" end
        C.weir_ffi_budget_reset()
        for _, entry in ipairs(page) do
            if read >= max then
                complete = false
                break
            end
            read = read + 1
            local kind, e, ts = usage_event(entry)
            if kind and ts >= from and ts <= now_ms then
                local key = { field(e.api), field(e.version), field(e.application), field(e.subscriber) }
                if matches(key, filter) then count_event(group_of(groups, list, names, key), kind, e, ts) end
            end
        end
        if read >= max or #page < STREAM_PAGE then
            if read >= max and #page == STREAM_PAGE and complete then
                -- exactly MAX read: complete only if nothing follows
                local more = redis.call("XRANGE", stream, "(" .. page[#page][1], "+", "COUNT", 1)
                if type(more) ~= "table" or #more > 0 then complete = false end
            end
            break
        end
        start = "(" .. page[#page][1]
    end
    return list, complete, read
end

local function total(g, order)
    if order == "messages" then return g.messages_in + g.messages_out end
    if order == "bytes" then return g.bytes_in + g.bytes_out end
    return g[order]
end

--- Add the admin routes (lua/weir/admin.lua calls it with its route
-- function and module A).
function _M.routes(route, A)
    local obj, array, answer, fail = A.obj, A.array, A.answer, A.fail

    route("GET", "/stats", function()
        local s = _M.snapshot()
        s.apis, s.applications = array(s.apis), array(s.applications)
        return answer(200, s)
    end)

    route("GET", "/metrics", function()
        return 200, _M.metrics(), "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\nCache-Control: no-store\r\n"
    end)

    local function iso(ms)
        if ms == 0 then return nil end
        return os.date("!%Y-%m-%dT%H:%M:%S", floor(ms / 1000)) .. format(".%03dZ", ms % 1000)
    end

    local function query(args, top)
        local by, range = args.by or (top and "application" or "api"), args.range or "hour"
        if not GROUPS[by] then
            return nil, { fail(400, "/problems/bad-request", "by must be api, application or subscriber") }
        end
        if not RANGES[range] then
            return nil, { fail(400, "/problems/bad-request", "range must be minute, hour or day") }
        end
        local order = args.order or "messages"
        if not ORDERS[order] then
            return nil, { fail(400, "/problems/bad-request", "order must be messages, bytes, throttled or connections") }
        end
        local limit = args.limit
        if limit ~= nil then
            limit = tonumber(limit)
            if not limit or limit < 1 or limit > 1000 or limit ~= floor(limit) then
                return nil, { fail(400, "/problems/bad-request", "limit must be an integer from 1 to 1000") }
            end
        elseif top then
            limit = 10
        end
        local scope = args.scope or "host"
        if scope ~= "host" and scope ~= "cluster" then
            return nil, { fail(400, "/problems/bad-request", "scope must be host or cluster") }
        end
        local filter = {}
        for f in pairs(FIELD) do if args[f] then filter[f] = args[f] end end
        local now = floor(weir.now() * 1000)
        local list, complete, read
        if scope == "host" then
            list = _M.usage(by, range, filter, now)
        else
            local c = require("weir.runtime").conf
            local stream = c and c.metrics and c.metrics.usage_stream
            if not stream or not (c.state and c.state.redis) then
                return nil, { fail(400, "/problems/bad-request",
                                   "scope=cluster needs metrics.usage_stream and state.redis, "
                                   .. "which are not configured") }
            end
            list, complete, read = _M.stream_usage(stream, by, range, filter, now)
            if not list then
                return nil, { fail(503, "/problems/unavailable",
                                   "The usage stream cannot be read now: " .. tostring(complete)) }
            end
        end
        sort(list, function(a, b)
            local x, y = total(a, order), total(b, order)
            if x ~= y then return x > y end
            for _, n in ipairs(GROUPS[by]) do
                if a[n] ~= b[n] then return a[n] < b[n] end
            end
            return false
        end)
        local items = array()
        for i, g in ipairs(list) do
            if limit and i > limit then break end
            local o = obj()
            for _, n in ipairs(GROUPS[by]) do
                o._keys[#o._keys + 1] = n
                o[n] = g[n]
            end
            for _, n in ipairs({ "messages_in", "messages_out", "bytes_in", "bytes_out", "throttled",
                                 "connections" }) do
                o._keys[#o._keys + 1] = n
                o[n] = g[n]
            end
            o._keys[#o._keys + 1] = "last_access"
            o.last_access = iso(g.last_access_ms)
            items[#items + 1] = o
        end
        return obj("by", by, "range", range, "from", iso(now - RANGE_MS[range]), "to", iso(now),
                   "order", order, "source", scope == "host" and "host" or "stream", "complete", complete,
                   "events", read, "items", items)
    end

    route("GET", "/usage", function(_, args)
        local body, err = query(args, false)
        if not body then return unpack(err) end
        return answer(200, body)
    end)

    route("GET", "/usage/top", function(_, args)
        local body, err = query(args, true)
        if not body then return unpack(err) end
        return answer(200, body)
    end)
end

return _M
