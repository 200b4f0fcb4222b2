--- Redis from Lua, in a weir worker: commands on the worker's one
-- connection to `state.redis` (core/redis.c), answered without blocking the
-- worker. `call` may only be used where waiting is allowed (a hook, a timer,
-- an admin request): the calling coroutine waits for the answer.
--
-- @module weir.redis
-- @usage local v, err = require("weir.redis").call("GET", "weir:km:gen")

local ffi = require "ffi"

ffi.cdef [[
    uint64_t weir_ffi_redis(int argc, const char **argv, const size_t *lens);
    int      weir_ffi_redis_ready(void);
]]
local C = ffi.C

local _M = {}

local MAX = 1024

--- Run one command. Returns its reply (a string, a number, a table for an
-- array, nil for a nil reply), or nil and the error (a Redis error reply's
-- text, or why there was no answer: not configured, not connected, timed
-- out).
function _M.call(...)
    local n = select("#", ...)
    if n == 0 or n > MAX then error("weir.redis.call: 1 to " .. MAX .. " arguments", 2) end
    local args = { ... }
    local argv = ffi.new("const char *[?]", n)
    local lens = ffi.new("size_t[?]", n)
    for i = 1, n do
        local a = args[i]
        if type(a) ~= "string" then a = tostring(a); args[i] = a end
        argv[i - 1] = a
        lens[i - 1] = #a
    end
    local token = tonumber(C.weir_ffi_redis(n, argv, lens))
    if token == 0 then return nil, "Redis is not reachable now" end
    local v, e = require("weir.runtime").wait(token)
    if v == nil and e == true then return nil end
    return v, e
end

--- Whether Redis is configured and connected now.
function _M.ready() return C.weir_ffi_redis_ready() == 1 end

return _M
