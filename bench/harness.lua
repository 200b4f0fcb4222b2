-- What the Lua-side microbenchmarks (jwt-cold.lua, frame-hook.lua) share:
-- where they are, and weir's Lua runtime made to run in a plain LuaJIT.
-- The core's weir_ffi_* functions are no-ops from ffi-stubs.c (with the
-- core's own inspector, core/inspect.c, which message-schema builds),
-- compiled into a temp dir and LD_PRELOADed: with_stubs() runs the script
-- again with them, and returns only in that second run.
--
-- usage, at the top of a script in bench/:
--   local H = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua")
--   H.with_stubs()
--   H.use_runtime()

local ffi = require "ffi"

local _M = {}

local here = arg[0]:match("^(.*)/[^/]*$") or "."
if here:sub(1, 1) ~= "/" then
    local p = io.popen("pwd")
    here = p:read("*l") .. "/" .. here
    p:close()
end
_M.HERE = here                  -- bench/, absolute
_M.ROOT = here .. "/.."         -- the project

--- Make sure the stubs are loaded: when they are not, build them, run the
-- script again with them preloaded and the same arguments, and exit with
-- its status.
function _M.with_stubs()
    ffi.cdef "int weir_ffi_abi(void);"
    if pcall(function() return ffi.C.weir_ffi_abi end) then return end
    if os.getenv("WEIR_FFI_STUBS") then error("the stubs did not load") end
    local so = os.tmpname()
    os.remove(so)
    so = so .. "-weir-ffi-stubs.so"
    local cc = string.format("cc -O2 -shared -fPIC -o %q %q %q", so, here .. "/ffi-stubs.c",
                             _M.ROOT .. "/core/inspect.c")
    local okc = os.execute(cc)
    if okc ~= true and okc ~= 0 then error("cannot build the stubs: " .. cc) end
    local args = {}
    for i = 1, #arg do args[#args + 1] = string.format("%q", arg[i]) end
    local cmd = string.format("WEIR_FFI_STUBS=1 LD_PRELOAD=%q %q %q %s", so, arg[-1] or "luajit", arg[0],
                              table.concat(args, " "))
    local okr = os.execute(cmd)
    os.remove(so)
    os.exit((okr == true or okr == 0) and 0 or 1)
end

--- Make `require "weir.…"` find the runtime: WEIR_LUA_DIR when set (to
-- measure another copy of lua/, e.g. an older commit's from git archive),
-- else this tree's. Returns that directory.
function _M.use_runtime()
    local dir = os.getenv("WEIR_LUA_DIR") or _M.ROOT .. "/lua"
    package.path = dir .. "/?.lua;" .. dir .. "/?/init.lua;" .. package.path
    return dir
end

--- A worker's configuration (workers = 1, the bench policies' path) for
-- API "Bench" at /bench with VERSIONS: { { name, chain } }, CHAIN the
-- version's policies as Lua text. Returns its text.
function _M.conf_text(versions)
    local v = {}
    for _, x in ipairs(versions) do
        v[#v + 1] = string.format('        { version = %q, endpoints = { production = "ws://127.0.0.1:2" },\n'
                                  .. '          policies = %s },', x[1], x[2])
    end
    return string.format([[
return {
    workers = 1,
    log = { level = "warn" },
    listen = { { address = "127.0.0.1", port = 1 } },
    policy_paths = { %q },
    apis = { { name = "Bench", context = "/bench", versions = {
%s
    } } },
}
]], here .. "/policies", table.concat(v, "\n"))
end

-- Wall-clock seconds (CLOCK_MONOTONIC): the process CPU time counts in
-- scheduler ticks (4 ms); the least of several rounds leaves out the time
-- other processes took.
ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } weir_bench_timespec;
    int clock_gettime(int clk, weir_bench_timespec *ts);
]]
local ts = ffi.new("weir_bench_timespec")
function _M.clock()
    ffi.C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

--- Run FN(i) for i = 1..N and return the seconds they took. With POLLUTE
-- bytes (> 0), that much memory is written before each call, outside the
-- timing, so that each starts with cold caches (as in weir, where the
-- kernel's work in between evicts the Lua path's code and data); each call
-- is then timed alone, with one clock read (20-30 ns) counted in.
local junk, junk_size         -- allocated once: no round counts it as its own
function _M.timed(n, pollute, fn)
    local clock = _M.clock
    if pollute == 0 then
        local t0 = clock()
        for i = 1, n do fn(i) end
        return clock() - t0
    end
    if junk_size ~= pollute then junk, junk_size = ffi.new("uint8_t[?]", pollute), pollute end
    local spent = 0
    for i = 1, n do
        ffi.fill(junk, pollute, i)
        local t0 = clock()
        fn(i)
        spent = spent + clock() - t0
    end
    return spent
end

return _M
