-- The Lua side of a handshake through weir's runtime, in a plain LuaJIT:
-- µs and bytes allocated per handshake for a chain of `jwt` with its
-- cache cold (every handshake verifies an RS256 signature, as bench/run's
-- "weir + jwt (cache cold)"), warm (one token), and the handshake-only
-- no-op chain (the runtime's own cost), without sockets, the core or the
-- kernel. The core's weir_ffi_* functions are no-ops from bench/ffi-stubs.c
-- (built into a temp dir and LD_PRELOADed: the script runs itself again).
--
-- usage (from the project root, after `make`):
--   luajit bench/jwt-cold.lua [options]
--     -n N        handshakes per round (default 5000: short rounds, so that
--                 some of them run undisturbed on a shared machine)
--     -r R        rounds per mode, modes taking turns (default 9): the least,
--                 median and most wall-clock µs per handshake are shown
--     -m LIST     modes, comma-separated: noop, warm, cold, sig, keyauth (default
--                 noop, warm, cold; sig: bench/run's "weir + RS256 signature
--                 only", the floor under cold, with cold's tokens; keyauth:
--                 bench/run's "weir + policies" chain, key-auth then
--                 message-schema, the key in a header)
--     -M N        also the Lua memory an open connection keeps: N handshakes
--                 per mode left open (open and handshake, no close), bytes
--                 per connection after a full collection
--     -p [MODE]   profile the last mode of -m with jit.p (MODE: jit.p's, default "Fl")
--     -v FILE     jit.v (traces, aborts) from the start to FILE ("-": stdout)
--     -b          bare VM: without the budget's count hook and profiler
--     -c BYTES    write BYTES of memory between handshakes (e.g. 4000000), so
--                 that each starts with cold caches, as in weir, where the
--                 kernel's work between handshakes evicts the Lua path's code
--                 and data; only the handshakes are timed
--     -k DIR      keys and tokens in DIR (made there by mint_jwt.py if missing,
--                 about 5 s); default a temp dir, removed at the end
--
-- Each handshake is runtime.open (the ctx), runtime.handshake (the chain)
-- and runtime.close, with the request head wsload sends (bench/wsload.c).
-- WEIR_LUA_DIR and WEIR_POLICY_DIR measure other copies of lua/ and
-- policies/ (e.g. an older commit's, from git archive).

local ffi = require "ffi"

local H = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua")
local HERE, ROOT = H.HERE, H.ROOT
H.with_stubs()            -- runs this script again with the core's functions stubbed
-- the runtime from WEIR_LUA_DIR when set (and the stock policies from
-- WEIR_POLICY_DIR, as in weir), else from this tree
H.use_runtime()
local cjson = require "cjson"

local N, ROUNDS, MODES, PROFILE, VERBOSE, KEYDIR = 5000, 9, { "noop", "warm", "cold" }, nil, nil, nil
local BARE, POLLUTE, HELD = false, 0, 0
do
    local i = 1
    while i <= #arg do
        local a = arg[i]
        if a == "-n" then N = tonumber(arg[i + 1]); i = i + 1
        elseif a == "-r" then ROUNDS = tonumber(arg[i + 1]); i = i + 1
        elseif a == "-m" then
            MODES = {}
            for m in arg[i + 1]:gmatch("[^,]+") do MODES[#MODES + 1] = m end
            i = i + 1
        elseif a == "-p" then
            PROFILE = "Fl"
            if arg[i + 1] and arg[i + 1]:sub(1, 1) ~= "-" then PROFILE = arg[i + 1]; i = i + 1 end
        elseif a == "-v" then VERBOSE = arg[i + 1]; i = i + 1
        elseif a == "-b" then BARE = true
        elseif a == "-c" then POLLUTE = tonumber(arg[i + 1]); i = i + 1
        elseif a == "-k" then KEYDIR = arg[i + 1]; i = i + 1
        elseif a == "-M" then HELD = tonumber(arg[i + 1]); i = i + 1
        else error("unknown option " .. a) end
        i = i + 1
    end
end

local function read(p)
    local f = io.open(p, "rb")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
end
local function write(p, s) local f = assert(io.open(p, "wb")); f:write(s); f:close() end
local function sh(cmd)
    local ok = os.execute(cmd)
    if ok ~= true and ok ~= 0 then error("failed: " .. cmd) end
end

------------------------------------------------------------------------------
-- keys and tokens (as bench/run's make_jwt, valid for a day)

local ISSUER, AUDIENCE, COLD_TOKENS = "https://idp.bench.example/", "weir-bench", 128
local dir, temp = KEYDIR, not KEYDIR
if not dir then
    dir = os.tmpname()
    os.remove(dir)
end
sh(string.format("mkdir -p %q", dir))
local tokens = read(dir .. "/tokens.json")
tokens = tokens and cjson.decode(tokens)
if not tokens or #tokens < COLD_TOKENS + 1 then
    local mint = string.format("/usr/bin/python3 %q", ROOT .. "/spec/support/mint_jwt.py")
    write(dir .. "/keys-spec.json", cjson.encode({ keys = {
        { name = "idp", kid = "idp-1", type = "RSA", bits = 2048, alg = "RS256", use = "sig" } } }))
    sh(string.format("%s keys %q %q >/dev/null", mint, dir, dir .. "/keys-spec.json"))
    local spec = {}
    for i = 0, COLD_TOKENS do
        spec[#spec + 1] = { key = "idp", alg = "RS256", exp_in = 86400, iat_in = 0,
                            claims = { iss = ISSUER, aud = AUDIENCE, sub = "bench-user", azp = "bench-app",
                                       scope = "bench:read bench:write",
                                       jti = i == 0 and "warm-1" or string.format("cold-%06d", i) } }
    end
    write(dir .. "/mint-spec.json", cjson.encode(spec))
    sh(string.format("%s mint %q %q > %q", mint, dir, dir .. "/mint-spec.json", dir .. "/tokens.json"))
    tokens = cjson.decode(read(dir .. "/tokens.json"))
end

------------------------------------------------------------------------------
-- the runtime, with one API version per mode

local chain = function(extra)
    return string.format([[{ { "jwt", { jwks_file = %q, issuer = %q, audience = %q%s } } }]],
                         dir .. "/jwks.json", ISSUER, AUDIENCE, extra)
end
-- the key of the keyauth mode: its keys file holds its SHA-256 (bench/run's)
local API_KEY = "0123456789abcdef0123456789abcdef0123456789abcdef"
do
    local hash = require("weir").sha256_hex(API_KEY)
    write(dir .. "/keys.txt", "sha256:" .. hash .. "  application=Bench subscriber=bench tier=Gold\n")
end
-- the sig mode's policy reads the first cold token from a wsload -T file
write(dir .. "/sig-token.txt", "Authorization: Bearer " .. tokens[2] .. "\n")
local conf_file = dir .. "/weir.conf.lua"
write(conf_file, H.conf_text {
    { "noop", '{ { "bench-handshake-noop", {} } }' },
    { "warm", chain("") },
    { "cold", chain(", cache_size = 32") },
    { "sig", string.format('{ { "bench-signature-only", { jwks_file = %q, token_file = %q } } }',
                           dir .. "/jwks.json", dir .. "/sig-token.txt") },
    { "keyauth", string.format([[{
            { "key-auth", { keys_file = %q, key_in = { "header" } } },
            { "message-schema", { types = { "bench" }, max_size = "1m", allow_binary = true } } }]],
                               dir .. "/keys.txt") },
})

-- the worker's VM as core/lua_bridge.c sets it up: a count hook that
-- never fires (the budget's) and LuaJIT's profiler at 10 ms in line mode
-- (so traces carry the budget's checks); -p takes the profiler instead
if not BARE then
    debug.sethook(function() end, "", 2 ^ 30)
    if not PROFILE then require("jit.profile").start("li10", function() end) end
end

if VERBOSE then require("jit.v").on(VERBOSE) end

local runtime = require "weir.runtime"
local masks, err = runtime.load(conf_file, 2)
if not masks then error(err) end

local function head(tok, key)
    return "GET /bench HTTP/1.1\r\nHost: 127.0.0.1:19108\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           .. (tok and "Authorization: Bearer " .. tok .. "\r\n" or "")
           .. (key and "apikey: " .. key .. "\r\n" or "") .. "\r\n"
end
local heads = { noop = { head(nil) }, warm = { head(tokens[1]) }, cold = {}, keyauth = { head(nil, API_KEY) } }
for i = 2, COLD_TOKENS + 1 do heads.cold[#heads.cold + 1] = head(tokens[i]) end
heads.sig = heads.cold

-- for the signature check alone, below
local jose = require "weir.jose"
local keyset = assert(jose.jwks(read(dir .. "/jwks.json")))
local jws = {}
for i = 1, COLD_TOKENS do jws[i] = assert(jose.decode(tokens[i + 1])) end
-- no token string stays alive: each handshake makes its own, as in weir
-- (a string equal to a live one would cost no allocation here)
tokens = nil
collectgarbage("collect")

local clock = H.clock            -- wall-clock seconds

local open, handshake, close = runtime.open, runtime.handshake, runtime.close
local id = 0

-- N handshakes of MODE; errors out on anything but a pass. Returns the
-- seconds they took (with -c: the handshakes alone, not the writes between)
local function run(mode, n)
    local hs = heads[mode]
    local k = #hs
    return H.timed(n, POLLUTE, function(i)
        id = id + 1
        open(id, "w0-1", "Bench", mode, "/bench", hs[i % k + 1], "127.0.0.1", 40000, 0, 0)
        local st, kind, a, b = handshake(id)
        if st ~= 0 or kind ~= 0 then
            error(string.format("%s: handshake %d: status %s kind %s %s %s", mode, i, tostring(st), tostring(kind),
                                tostring(a), tostring(b)))
        end
        close(id, 1000, "client", 10, 0, 0, 0, 0)
    end)
end

-- bytes allocated per handshake, the collector stopped for COLD_TOKENS
-- handshakes: each cold token once, so that no string is found already
-- made by an earlier handshake of the batch (LuaJIT interns strings)
local function alloc_per(mode)
    local n = COLD_TOKENS
    collectgarbage("collect")
    collectgarbage("stop")
    local before = collectgarbage("count")
    run(mode, n)
    local after = collectgarbage("count")
    collectgarbage("restart")
    return (after - before) * 1024 / n
end

for _, m in ipairs(MODES) do run(m, 2000) end     -- warm up: caches, traces

local times = {}
for _, m in ipairs(MODES) do times[m] = {} end
for _ = 1, ROUNDS do
    for _, m in ipairs(MODES) do
        times[m][#times[m] + 1] = run(m, N) / N * 1e6
    end
end

local function median(t)
    local c = {}
    for i, v in ipairs(t) do c[i] = v end
    table.sort(c)
    local n = #c
    return n % 2 == 1 and c[(n + 1) / 2] or (c[n / 2] + c[n / 2 + 1]) / 2
end

-- the signature check alone (jose.verify with the same key), for scale
local vt = {}
do
    local key = keyset.by_kid[jws[1].kid]
    for _ = 1, ROUNDS do
        local t0 = clock()
        for i = 1, N do
            local j = jws[i % COLD_TOKENS + 1]
            assert(jose.verify(key, "RS256", j.signing_input, j.signature))
        end
        vt[#vt + 1] = (clock() - t0) / N * 1e6
    end
end

-- the Lua memory HELD open connections of MODE keep, per connection: each
-- gets a request head of its own (in weir every head is a new string)
local function held_per(mode)
    local hs = heads[mode]
    collectgarbage("collect")
    collectgarbage("collect")
    local before = collectgarbage("count")
    local first = id + 1
    for i = 1, HELD do
        id = id + 1
        -- a head of its own (a string made now), and a name of its own, as in weir
        local h = hs[i % #hs + 1]
        h = h:sub(1, -3) .. "X-Seq: " .. i .. "\r\n\r\n"
        open(id, "w0-" .. i, "Bench", mode, "/bench", h, "127.0.0.1", 40000, 0, 0)
        local st, kind = handshake(id)
        if st ~= 0 or kind ~= 0 then error(mode .. ": held handshake refused") end
    end
    collectgarbage("collect")
    collectgarbage("collect")
    local after = collectgarbage("count")
    for i = first, id do close(i, 1000, "client", 10, 0, 0, 0, 0) end
    collectgarbage("collect")
    return (after - before) * 1024 / HELD
end

print(string.format("%-7s %10s %10s %10s %10s%s", "mode", "µs/hs min", "median", "max", "bytes/hs",
                    HELD > 0 and "  bytes/open conn" or ""))
for _, m in ipairs(MODES) do
    local t = times[m]
    table.sort(t)
    print(string.format("%-7s %10.2f %10.2f %10.2f %10.0f%s", m, t[1], median(t), t[#t], alloc_per(m),
                        HELD > 0 and string.format("  %10.0f", held_per(m)) or ""))
end
table.sort(vt)
print(string.format("%-7s %10.2f %10.2f %10.2f %s", "verify", vt[1], median(vt), vt[#vt], "  (jose.verify alone)"))


if PROFILE then
    local p = require "jit.p"
    p.start(PROFILE, "-")
    run(MODES[#MODES], N * ROUNDS)
    p.stop()
end

if temp then sh(string.format("rm -rf %q", dir)) end
