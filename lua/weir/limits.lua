--- Rate limits and connection counts shared by every worker of the host:
-- the Lua side of core/limit.c (the algorithm: docs/throttling.md).
--
-- A policy or the runtime turns a key and a limit into a ref at the
-- handshake (`limits.ref`); the core then charges frames to refs without
-- calling Lua. `limits.take` charges from Lua (specs, a policy's own
-- accounting). Connection counts are acquired at the handshake and released
-- at close.
--
-- A limit: `{ frames = N }` or `{ bytes = N | "10m" }`, `per` ("second",
-- "minute", "hour", "day", or a whole number of seconds), `burst` (units
-- that may come at once; default: the count), `direction` ("in", "out" or
-- "both", the default: both directions added up).
--
-- @module weir.limits
-- @usage
-- local limits = require "weir.limits"
-- local ref = assert(limits.ref("sub:app1:echo:Gold:1", { frames = 1000, per = "minute" }))
-- local refs = limits.refs(1); refs[0] = ref
-- local ok, retry_after = limits.take(refs, 1, limits.IN, 1, 42)

local ffi = require "ffi"
local weir_conf = require "weir.conf"

local type, tonumber, tostring, pcall, error = type, tonumber, tostring, pcall, error
local floor, huge = math.floor, math.huge
local ffi_new, ffi_string = ffi.new, ffi.string

local _M = { _VERSION = "0.1.0" }

local ABI = 2   -- must equal WEIR_LIMITS_ABI in core/limit.h

ffi.cdef [[
    typedef struct {
        uint64_t key[2];
        uint64_t mul;
        uint64_t tau;
        uint64_t burst;
        uint64_t count;
        uint64_t period_us;
        uint64_t local_tat;
        uint32_t index;
        uint8_t  shift;
        uint8_t  frac;
        uint8_t  unit;
        uint8_t  dirs;
        uint8_t  share;
        uint8_t  pad[7];
    } weir_limit_ref_t;
    typedef struct {
        uint64_t key[2];
        uint32_t index;
        uint32_t shared;
    } weir_conn_ref_t;
    typedef struct {
        uint64_t buckets, buckets_used, claims, evictions_full, evictions_live,
                 conn_slots, conn_slots_used, conn_table_full, conn_reclaimed, shared_refused;
    } weir_limits_stats_t;
    int weir_ffi_limits_abi(void);
    int weir_ffi_limit_ref(weir_limit_ref_t *ref, const char *key, size_t len, uint64_t count,
                           uint64_t period_us, uint64_t burst, int unit, int dirs, char *err, size_t errlen);
    int weir_ffi_limits_take(weir_limit_ref_t *refs, int n, int dir, uint64_t frames, uint64_t bytes,
                             uint64_t *retry_us);
    int weir_ffi_limits_peek(const weir_limit_ref_t *ref, uint64_t *available, uint64_t *full_in_us);
    int weir_ffi_conn_acquire(weir_conn_ref_t *ref, const char *key, size_t len, uint64_t max);
    void weir_ffi_conn_release(weir_conn_ref_t *ref);
    uint64_t weir_ffi_conn_count(const char *key, size_t len);
    void weir_ffi_limits_stats(weir_limits_stats_t *st);
    int weir_ffi_sync_conn_acquire(weir_conn_ref_t *ref, const char *key, size_t len, uint64_t max);
    void weir_ffi_sync_conn_release(weir_conn_ref_t *ref);
    void weir_ffi_sync_stats(uint64_t *out);
]]

--- Directions (bits), as the core's WEIR_LIMIT_IN / OUT / BOTH.
_M.IN, _M.OUT, _M.BOTH = 1, 2, 3
--- What a limit counts, as the core's WEIR_LIMIT_FRAMES / BYTES.
_M.FRAMES, _M.BYTES = 0, 1
--- Microseconds of each named period.
_M.PERIODS = { second = 1e6, minute = 60e6, hour = 3600e6, day = 86400e6 }
--- Longest period, in seconds (core: WEIR_LIMIT_MAX_PERIOD_US).
_M.MAX_PERIOD = 50 * 86400
--- Longest key, in bytes (core: WEIR_LIMIT_KEY_MAX).
_M.KEY_MAX = 512
--- Refs per take (core: WEIR_LIMITS_MAX_REFS).
_M.MAX_REFS = 32

local DIRS = { ["in"] = 1, out = 2, both = 3 }
local OK, DECLINED = 0, -5
local NEVER = -1ULL                       -- WEIR_LIMIT_NEVER
local MAX_EXACT = 2 ^ 53

local C                                    -- ffi.C once the core's ABI checked
local err_buf = ffi_new("char[256]")
local u64a, u64b = ffi_new("uint64_t[1]"), ffi_new("uint64_t[1]")

local function core()
    if C then return C end
    local ok, abi = pcall(function() return ffi.C.weir_ffi_limits_abi() end)
    if not ok then error("weir.limits: the core's limits are not linked in (" .. tostring(abi) .. ")", 3) end
    if abi ~= ABI then
        error("weir.limits: the Lua side and the core disagree (limits ABI " .. ABI .. " vs " .. abi
              .. "): reinstall both", 3)
    end
    C = ffi.C
    return C
end

local function positive_integer(v)
    return type(v) == "number" and v >= 1 and v == floor(v) and v < MAX_EXACT
end

--- Check and normalise a limit.
-- @tparam table spec `{ frames = N }` or `{ bytes = N|"10m" }`, `per`, optional `burst`, `direction`
-- @treturn[1] table `{ unit = limits.FRAMES|BYTES, count =, period_us =, burst =, dirs = }`
-- @treturn[2] nil
-- @treturn[2] string what is wrong
-- @usage limits.parse({ bytes = "10m", per = "minute" })
function _M.parse(spec)
    if type(spec) ~= "table" then return nil, "a limit is a table, got " .. type(spec) end
    local unit, count
    if spec.frames ~= nil and spec.bytes ~= nil then
        return nil, "a limit counts frames or bytes, not both"
    elseif spec.frames ~= nil then
        unit, count = _M.FRAMES, spec.frames
        if not positive_integer(count) then return nil, "frames: expected a whole number above 0" end
    elseif spec.bytes ~= nil then
        local n, err = weir_conf.parse_size(spec.bytes)
        if not n then return nil, "bytes: " .. err end
        if n < 1 then return nil, "bytes: must be above 0" end
        unit, count = _M.BYTES, n
    else
        return nil, "a limit needs frames or bytes"
    end
    local per, period_us = spec.per, nil
    if type(per) == "string" then
        period_us = _M.PERIODS[per]
        if not period_us then return nil, 'per: expected "second", "minute", "hour", "day" or seconds, got "' .. per .. '"' end
    elseif positive_integer(per) and per <= _M.MAX_PERIOD then
        period_us = per * 1e6
    else
        return nil, 'per: expected "second", "minute", "hour", "day" or a whole number of seconds up to '
                    .. _M.MAX_PERIOD
    end
    local burst = count
    if spec.burst ~= nil then
        if unit == _M.BYTES then
            local n, err = weir_conf.parse_size(spec.burst)
            if not n then return nil, "burst: " .. err end
            burst = n
        else
            burst = spec.burst
        end
        if not positive_integer(burst) then return nil, "burst: expected a whole number above 0" end
    end
    local dirs = DIRS[spec.direction or "both"]
    if not dirs then return nil, 'direction: expected "in", "out" or "both"' end
    if count / (period_us / 1e6) >= 4.096e9 then
        return nil, "the rate must be below 4,096,000,000 a second"
    end
    return { unit = unit, count = count, period_us = period_us, burst = burst, dirs = dirs }
end

--- A ref for KEY under SPEC: its bucket found or claimed in the host's table.
-- @tparam string|nil key e.g. "sub:<app>:<api>:<tier>:<n>"; nil: a local ref
--   (the state lives in the ref: one connection's own limit)
-- @tparam table spec a limit (see `parse`) or a parsed one
-- @tparam[opt] cdata into a `weir_limit_ref_t *` to fill (e.g. `refs + i`); default: a new one
-- @treturn[1] cdata a `weir_limit_ref_t`
-- @treturn[2] nil
-- @treturn[2] string what is wrong
-- @usage local ref = assert(limits.ref("api:echo:1", { frames = 100, per = "second" }))
function _M.ref(key, spec, into)
    local c = core()
    if key ~= nil and type(key) ~= "string" then error("weir.limits.ref: key must be a string or nil", 2) end
    local p, err = spec, nil
    if not spec.period_us then
        p, err = _M.parse(spec)
        if not p then return nil, err end
    end
    if key and #key > _M.KEY_MAX then return nil, "a limit's key is longer than " .. _M.KEY_MAX .. " bytes" end
    local ref = into or ffi_new("weir_limit_ref_t")
    local rc = c.weir_ffi_limit_ref(ref, key, key and #key or 0, p.count, p.period_us, p.burst, p.unit, p.dirs,
                                    err_buf, 256)
    if rc ~= OK then return nil, ffi_string(err_buf) end
    return ref
end

--- An array of N refs (index 0 .. N-1), to fill with `ref(key, spec, refs + i)` or copies.
function _M.refs(n)
    return ffi_new("weir_limit_ref_t[?]", n)
end

--- Charge a frame going in direction DIR to REFS[0 .. N-1]: all allow and
-- all are charged, or none is.
-- @tparam cdata refs an array from `refs`
-- @tparam number n how many
-- @tparam number dir `limits.IN` or `limits.OUT`
-- @tparam number frames frames to charge to frame limits (1)
-- @tparam number bytes bytes to charge to byte limits
-- @treturn[1] boolean true
-- @treturn[2] boolean false
-- @treturn[2] number seconds until the strictest refusing limit allows it
--   (math.huge when the frame is larger than a limit's burst)
function _M.take(refs, n, dir, frames, bytes)
    if n > _M.MAX_REFS then error("weir.limits.take: more than " .. _M.MAX_REFS .. " refs", 2) end
    local rc = core().weir_ffi_limits_take(refs, n, dir, frames, bytes, u64a)
    if rc == OK then return true end
    if rc ~= DECLINED then error("weir.limits.take: the core refused the call", 2) end
    if u64a[0] == NEVER then return false, huge end
    return false, tonumber(u64a[0]) / 1e6
end

--- What REF's bucket holds now, without charging it.
-- @treturn number units (frames or bytes) that may come at once now
-- @treturn number seconds until it is full again
-- @treturn boolean false when the bucket was handed to another key (its next
--   take claims a fresh, full one)
function _M.peek(ref)
    local rc = core().weir_ffi_limits_peek(ref, u64a, u64b)
    return tonumber(u64a[0]), tonumber(u64b[0]) / 1e6, rc == OK
end

--- Count one connection against KEY, at most MAX at once.
-- @tparam string key
-- @tparam number max
-- @tparam[opt] boolean shared count it with the other hosts' connections of KEY
--   when the configuration has `state.redis` (their count, as last synchronised,
--   counts against MAX)
-- @treturn[1] cdata a `weir_conn_ref_t`: give it to `conn_release` once, at close
-- @treturn[2] nil
-- @treturn[2] string "limit" (MAX are open) or "unavailable" (no slot for the
--   key: the table is full near its place; the caller decides)
-- @usage local c, why = limits.conn_acquire("app:" .. app_id, 10, true)
function _M.conn_acquire(key, max, shared)
    local c = core()
    if type(key) ~= "string" then error("weir.limits.conn_acquire: key must be a string", 2) end
    if not (type(max) == "number" and max >= 0 and max == floor(max)) then
        error("weir.limits.conn_acquire: max must be a whole number", 2)
    end
    local ref = ffi_new("weir_conn_ref_t")
    local rc
    if shared then rc = c.weir_ffi_sync_conn_acquire(ref, key, #key, max)
    else rc = c.weir_ffi_conn_acquire(ref, key, #key, max) end
    if rc == OK then return ref end
    if rc == DECLINED then return nil, "limit" end
    return nil, "unavailable"
end

--- Give back a count from `conn_acquire` (a second call does nothing).
function _M.conn_release(ref)
    if ref.shared ~= 0 then core().weir_ffi_sync_conn_release(ref)
    else core().weir_ffi_conn_release(ref) end
end

--- Connections counted for KEY now.
function _M.conn_count(key)
    return tonumber(core().weir_ffi_conn_count(key, #key))
end

local sync_buf = ffi_new("uint64_t[11]")

--- This worker's synchronisation with the other hosts through Redis:
-- `entries` (shared limits and connection keys held now), `syncs` (reports
-- sent), `answers`, `failed` (unanswered or refused), `forgiven` (tokens
-- taken while Redis was down, never reported), and the connection's
-- `configured`, `ready`, `down` (booleans), `connects`, `failures`, `timeouts`.
function _M.sync_stats()
    core().weir_ffi_sync_stats(sync_buf)
    local v = {}
    for i = 0, 10 do v[i + 1] = tonumber(sync_buf[i]) end
    return {
        entries = v[1], syncs = v[2], answers = v[3], failed = v[4], forgiven = v[5],
        configured = v[6] == 1, ready = v[7] == 1, down = v[8] == 1, connects = v[9], failures = v[10],
        timeouts = v[11],
    }
end

--- The zone's counters: `buckets`, `buckets_used`, `claims`, `evictions_full`,
-- `evictions_live`, `conn_slots`, `conn_slots_used`, `conn_table_full`,
-- `conn_reclaimed` (counts given back for workers that died),
-- `shared_refused` (takes refused because Redis was down, `on_redis_down = "closed"`).
function _M.stats()
    local st = ffi_new("weir_limits_stats_t")
    core().weir_ffi_limits_stats(st)
    return {
        buckets = tonumber(st.buckets), buckets_used = tonumber(st.buckets_used), claims = tonumber(st.claims),
        evictions_full = tonumber(st.evictions_full), evictions_live = tonumber(st.evictions_live),
        conn_slots = tonumber(st.conn_slots), conn_slots_used = tonumber(st.conn_slots_used),
        conn_table_full = tonumber(st.conn_table_full), conn_reclaimed = tonumber(st.conn_reclaimed),
        shared_refused = tonumber(st.shared_refused),
    }
end

return _M
