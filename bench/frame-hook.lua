-- The Lua side of one message through a frame hook, in a plain LuaJIT:
-- nanoseconds per message for a chain of one no-op `on_frame_in`
-- (bench/run's "weir + no-op on_frame_in"), without sockets, the core or
-- the kernel. Each message is one resume of a pooled frame_loop coroutine
-- (runtime.frame_co), as core/lua_bridge.c weir_lua_resume_frame does,
-- with the arguments it passes; the core's weir_ffi_* functions are
-- no-ops from bench/ffi-stubs.c (built into a temp dir and LD_PRELOADed:
-- the script runs itself again).
--
-- usage (from the project root, after `make`):
--   luajit bench/frame-hook.lua [options]
--     -n N        resumes per round (default 1000000; 20000 with -c)
--     -r R        rounds (default 7): the least, median and most ns per
--                 message are shown
--     -c BYTES    write BYTES of memory before each message, so that each
--                 starts with cold caches, as in weir, where the kernel's
--                 work between two messages of a connection evicts the
--                 hook's code and data; only the resumes are timed (each
--                 with one clock read, about 20-30 ns, counted in)
--     -w N        a row of N messages per resume (ICPT 2, as the core runs
--                 the messages of one read: weir_ffi_batch_at shows each;
--                 default 1: one message per resume)
--     -b          bare VM: without the budget's count hook and profiler
--
-- WEIR_LUA_DIR measures another copy of lua/ (e.g. an older commit's,
-- from git archive).

local ffi = require "ffi"

local H = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua")

H.with_stubs()            -- runs this script again with the core's functions stubbed
H.use_runtime()

local N, ROUNDS, POLLUTE, BARE, ROW = nil, 7, 0, false, 1
do
    local i = 1
    while i <= #arg do
        local a = arg[i]
        if a == "-n" then N = tonumber(arg[i + 1]); i = i + 1
        elseif a == "-r" then ROUNDS = tonumber(arg[i + 1]); i = i + 1
        elseif a == "-c" then POLLUTE = tonumber(arg[i + 1]); i = i + 1
        elseif a == "-w" then ROW = tonumber(arg[i + 1]); i = i + 1
        elseif a == "-b" then BARE = true
        else error("unknown option " .. a) end
        i = i + 1
    end
end
N = N or (POLLUTE > 0 and 20000 or 1000000)

local conf_file = os.tmpname()
do
    local f = assert(io.open(conf_file, "w"))
    f:write(H.conf_text { { "1", '{ { "bench-frame-noop", {} } }' } })
    f:close()
end

-- the worker's VM as core/lua_bridge.c sets it up (see bench/jwt-cold.lua)
if not BARE then
    debug.sethook(function() end, "", 2 ^ 30)
    require("jit.profile").start("li10", function() end)
end

local runtime = require "weir.runtime"
local masks, err = runtime.load(conf_file, 1)
os.remove(conf_file)
if not masks then error(err) end

local head = "GET /bench HTTP/1.1\r\nHost: 127.0.0.1:19108\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
runtime.open(1, "w0-1", "Bench", "1", "/bench", head, "127.0.0.1", 40000, 0, 0)
local st, kind = runtime.handshake(1)
if st ~= 0 or kind ~= 0 then error("handshake: status " .. tostring(st) .. " kind " .. tostring(kind)) end


local co = runtime.frame_co()
local resume = coroutine.resume

-- N resumes; errors out on anything but a pass. Returns the seconds they
-- took.
local function round(n)
    return H.timed(n, POLLUTE, function(i)
        -- id, direction (0: in), opcode (1: text), length, icpt (0: one
        -- message); or a row: opcode 0, the row's length, icpt 2
        local ok, s, k
        if ROW > 1 then ok, s, k = resume(co, 1, 0, 0, ROW, 2) else ok, s, k = resume(co, 1, 0, 1, 64, 0) end
        if not ok or s ~= 0 or k ~= 0 then
            error(string.format("message %d: %s %s %s", i, tostring(ok), tostring(s), tostring(k)))
        end
    end)
end

round(math.min(N, 20000))                  -- the JIT compiles the path
local ns = {}
for r = 1, ROUNDS do ns[r] = round(N) / (N * ROW) * 1e9 end
table.sort(ns)
print(string.format("no-op on_frame_in, %d x %d messages%s%s%s: ns per message least %.1f, median %.1f, most %.1f",
                    ROUNDS, N * ROW, ROW > 1 and string.format(" in rows of %d", ROW) or "", POLLUTE > 0 and string.format(", %d bytes written before each", POLLUTE) or "",
                    BARE and ", bare VM" or "", ns[1], ns[math.floor((ROUNDS + 1) / 2)], ns[ROUNDS]))
