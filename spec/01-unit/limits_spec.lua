-- core/limit.c, the host's rate limits (GCRA buckets in shared memory) and
-- connection counts, and lua/weir/limits.lua, its Lua side.
--
-- The spec compiles spec/support/limits_driver.c with core/limit.c twice
-- (plain, and with AddressSanitizer + UBSan, whose reports fail the spec)
-- and runs scripts through it: the clock is injected (every take names its
-- microsecond), so nothing sleeps and every expected number is exact.
-- Decisions are compared with an exact model of GCRA written here in
-- rational arithmetic. Races fork real processes on one shared zone.
-- The Lua module is run against core/limit.c built as a shared library.
local helpers = require "helpers"
local ffi     = require "ffi"

local fmt, concat, floor = string.format, table.concat, math.floor

local ROOT    = helpers.root
local SOURCES = { ROOT .. "/spec/support/limits_driver.c", ROOT .. "/core/limit.c", ROOT .. "/core/log.c" }
local CFLAGS  = "-std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE"
local SAN     = "-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
local SAN_ENV = {
    ASAN_OPTIONS  = "detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1",
    UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1",
    LSAN_OPTIONS  = false,
}
local q = helpers.shell_quote

local SECOND, MINUTE, HOUR = 1000000, 60000000, 3600000000
local T0 = 1000000000          -- the injected clock starts at 1000 s: a monotonic clock is rarely near 0
local NEVER = -1                -- the driver's retry for WEIR_LIMIT_NEVER

local function compile(out, sources, extra)
    local list = {}
    for i, s in ipairs(sources) do list[i] = q(s) end
    local cmd = fmt("cc %s %s -I%s -o %s %s $(pkg-config --cflags --libs openssl)", CFLAGS, extra,
                    q(ROOT .. "/core"), q(out), concat(list, " "))
    local code, stdout, stderr = helpers.run({ "sh", "-c", cmd }, { timeout = 180 })
    assert(code == 0, "compiling failed:\n" .. cmd .. "\n" .. stdout .. stderr)
    return out
end

-- An exact GCRA, in rationals scaled by the count: time t is t*count, a
-- unit costs period, the tolerance is burst*period. Returns a take function
-- (now_us, cost) → allowed, retry_us (as the driver reports them).
local function model(count, period, burst)
    local tat = 0
    return function(now, cost)
        if cost > burst then return false, NEVER end
        local n = now * count
        local nt = math.max(tat, n) + cost * period
        if nt - n <= burst * period then
            tat = nt
            return true, 0
        end
        -- the first microsecond t with t*count >= nt - burst*period
        return false, math.ceil((nt - burst * period) / count) - now
    end
end

-- A deterministic pseudo-random sequence in [0, 1).
local function lcg(seed)
    local x = seed
    return function()
        x = (x * 1103515245 + 12345) % 2147483648
        return x / 2147483648
    end
end

describe("limits", function()
    local drivers = {}

    setup(function()
        local dir = helpers.tmpdir()
        drivers.plain = compile(dir .. "/limits-driver", SOURCES, "-O2")
        drivers.sanitized = compile(dir .. "/limits-driver-san", SOURCES, SAN)
    end)
    teardown(helpers.cleanup)

    for _, flavour in ipairs({ "plain", "sanitized" }) do
        describe("(" .. flavour .. " build)", function()

            -- Run the script LINES (a list of strings); returns one decoded result per command.
            local function drive(lines)
                local file = helpers.tmpdir() .. "/script-" .. math.random(1e9)
                helpers.write_file(file, concat(lines, "\n") .. "\n")
                local code, out, err = helpers.run({ drivers[flavour] }, {
                    stdin = file, timeout = 120, env = flavour == "sanitized" and SAN_ENV or nil })
                assert(not (err:find("Sanitizer") or err:find("runtime error")), "the sanitizers reported:\n" .. err)
                assert(code == 0, fmt("the driver exited with %s:\n%s", tostring(code), err))
                local res = {}
                for line in out:gmatch("[^\n]+") do
                    local v = helpers.json(line)
                    assert(v.error == nil, "the driver refused a command: " .. line)
                    res[#res + 1] = v
                end
                local n = 0
                for _, l in ipairs(lines) do
                    if l:match("%S") and not l:match("^#") then n = n + 1 end
                end
                assert.equal(n, #res, "one result per command")
                return res
            end

            -- Like drive, for a script S whose commands are given as {line, name}: returns name → result.
            local function run(script)
                local lines = {}
                for i, c in ipairs(script) do lines[i] = c[1] end
                local res, by = drive(lines), {}
                for i, c in ipairs(script) do if c[2] then by[c[2]] = res[i] end end
                return by, res
            end

            local function ref(name, key, unit, count, period, burst, dirs, now)
                return fmt("ref %s %s %s %d %d %d %s %d", name, key, unit, count, period, burst or 0,
                           dirs or "both", now or T0)
            end

            -- Rates ---------------------------------------------------------------------------------

            it("N frames a minute: exactly N pass at once, then a refusal with the wait for one token", function()
                local by = run({
                    { "init 0 0" },
                    { ref("a", "sub:app1:echo:Silver:1", "frames", 10, MINUTE) },
                    { fmt("burst %d in 1 0 100 a", T0), "burst" },
                    { fmt("peek a %d", T0), "peek" },
                    { fmt("take %d in 1 0 a", T0 + 6 * SECOND - 1), "early" },
                    { fmt("take %d in 1 0 a", T0 + 6 * SECOND), "on_time" },
                    { fmt("take %d in 1 0 a", T0 + 6 * SECOND), "again" },
                })
                assert.equal(10, by.burst.allowed)
                assert.equal(-5, by.burst.rc)
                assert.equal(6 * SECOND, by.burst.retry)             -- one token: a minute / 10
                assert.equal(0, by.peek.available)
                assert.equal(MINUTE, by.peek.full_in)
                assert.same({ rc = -5, retry = 1 }, by.early)
                assert.same({ rc = 0, retry = 0 }, by.on_time)
                assert.same({ rc = -5, retry = 6 * SECOND }, by.again)
            end)

            it("a period that N does not divide: the hint is exact to the microsecond", function()
                -- 7 a minute: a token every 8,571,428.57 µs
                local by = run({
                    { "init 0 0" },
                    { ref("b", "b", "frames", 7, MINUTE) },
                    { fmt("burst %d in 1 0 100 b", T0), "burst" },
                })
                assert.equal(7, by.burst.allowed)
                local hint = by.burst.retry
                assert.is_true(math.abs(hint - MINUTE / 7) <= 1, "hint " .. hint)
                local later = run({
                    { "init 0 0" },
                    { ref("b", "b", "frames", 7, MINUTE) },
                    { fmt("burst %d in 1 0 100 b", T0) },
                    { fmt("take %d in 1 0 b", T0 + hint - 1), "before" },
                    { fmt("take %d in 1 0 b", T0 + hint), "at" },
                    { fmt("take %d in 1 0 b", T0 + hint), "after" },
                })
                assert.same({ rc = -5, retry = 1 }, later.before)
                assert.equal(0, later.at.rc)
                assert.equal(-5, later.after.rc)
            end)

            it("refills at the rate: drained, full again one period later, exactly", function()
                -- from an odd microsecond, from one that every period divides (10 days), from 0
                for _, t in ipairs({ T0 + 123, 864000 * SECOND, 0 }) do
                    for _, c in ipairs({ { 10, MINUTE }, { 7, MINUTE }, { 3, HOUR }, { 1000, SECOND },
                                         { 86400, 86400 * SECOND }, { 3000000, SECOND } }) do
                        local n, p = c[1], c[2]
                        local by = run({
                            { "init 0 0" },
                            { ref("r", "r", "frames", n, p, 0, "both", t) },
                            { fmt("burst %d in 1 0 %d r", t, n + 5), "first" },
                            { fmt("peek r %d", t + p - 1), "almost" },
                            { fmt("burst %d in 1 0 %d r", t + p, n + 5), "second" },
                        })
                        local what = fmt("%d per %d µs from %d", n, p, t)
                        assert.equal(n, by.first.allowed, what)
                        assert.is_true(by.almost.available < n, what)
                        assert.equal(n, by.second.allowed, what)
                    end
                end
            end)

            -- Run TAKES ({now, cost} in order) on one limit; compare each decision and hint with the model.
            local function against_model(unit, count, period, burst, takes)
                local lines = { "init 0 0", ref("m", "model", unit, count, period, burst) }
                for _, t in ipairs(takes) do
                    lines[#lines + 1] = unit == "frames" and fmt("take %d in %d 0 m", t[1], t[2])
                                                         or fmt("take %d in 1 %d m", t[1], t[2])
                end
                local res = drive(lines)
                local take = model(count, period, burst)
                local allowed = 0
                for i, t in ipairs(takes) do
                    local ok, retry = take(t[1], t[2])
                    local r = res[i + 2]
                    assert.equal(ok and 0 or -5, r.rc, fmt("take %d (now %d, cost %d)", i, t[1], t[2]))
                    assert.equal(retry, r.retry, fmt("hint of take %d", i))
                    if ok then allowed = allowed + 1 end
                end
                return allowed
            end

            it("frames: 3000 irregular takes decide exactly as an exact GCRA", function()
                local rnd, now, takes = lcg(7), T0, {}
                for i = 1, 3000 do
                    now = now + floor(rnd() * 250000)           -- 0 .. 250 ms apart, 10 a second
                    takes[i] = { now, rnd() < 0.1 and 3 or 1 }
                end
                local allowed = against_model("frames", 10, SECOND, 5, takes)
                assert.is_true(allowed > 1000 and allowed < 3000, "the limit was exercised both ways: " .. allowed)
            end)

            it("bandwidth: large and tiny frames against 4 MB/s with a 256 KiB burst decide exactly", function()
                local rnd, now, takes = lcg(11), T0, {}
                for i = 1, 3000 do
                    now = now + floor(rnd() * 40000)            -- 0 .. 40 ms apart
                    local r = rnd()
                    local cost = r < 0.45 and 1 + floor(rnd() * 16)                 -- tiny
                              or r < 0.9 and 1024 + floor(rnd() * 4096)            -- small
                              or r < 0.99 and 65536 + floor(rnd() * 196608)        -- large
                              or 262145                                            -- above the burst
                    takes[i] = { now, cost }
                end
                against_model("bytes", 4000000, SECOND, 262144, takes)
            end)

            it("bandwidth that does not divide the clock (10 MiB a minute): within one byte of exact", function()
                local count, period, burst = 10 * 1048576, MINUTE, 1048576
                -- the clock starts at 1 s here, so that the model's products stay exact in doubles
                local rnd, now = lcg(3), SECOND
                local lines = { "init 0 0", ref("m", "m", "bytes", count, period, burst, "both", now) }
                local takes = {}
                for i = 1, 2000 do
                    now = now + floor(rnd() * 100000)
                    local cost = rnd() < 0.5 and 1 + floor(rnd() * 100) or 10000 + floor(rnd() * 200000)
                    takes[i] = { now, cost }
                    lines[#lines + 1] = fmt("take %d in 1 %d m", now, cost)
                end
                local res = drive(lines)
                -- the core's clock is microseconds in bucket units rounded down: it may let a
                -- frame through when the exact model lacks less than one byte, never more
                local exact, near, tat = 0, 0, 0
                for i, t in ipairs(takes) do
                    local n = t[1] * count
                    local nt = math.max(tat, n) + t[2] * period
                    local lack = (nt - n) - burst * period           -- scaled bytes·period missing
                    local r = res[i + 2]
                    if lack <= 0 then
                        assert.equal(0, r.rc, "take " .. i .. " is within the burst")
                        tat = nt
                        exact = exact + 1
                    elseif lack > period then
                        assert.equal(-5, r.rc, "take " .. i .. " lacks more than a byte")
                        local want = math.ceil(lack / count)
                        assert.is_true(math.abs(r.retry - want) <= 1, fmt("hint %d, exact %d", r.retry, want))
                        exact = exact + 1
                    else
                        near = near + 1
                        if r.rc == 0 then tat = nt end
                    end
                end
                assert.is_true(near <= 2, near .. " takes within a byte of the edge")
                assert.is_true(exact >= 1998)
            end)

            it("a frame larger than a burst is never allowed, and costs nothing", function()
                local by = run({
                    { "init 0 0" },
                    { ref("bw", "bw", "bytes", 1000, SECOND, 100) },
                    { fmt("take %d in 1 101 bw", T0), "big" },
                    { fmt("take %d in 1 100 bw", T0), "fits" },
                    { fmt("take %d in 1 101 bw", T0 + 10 * SECOND), "still" },
                    { fmt("peek bw %d", T0 + 10 * SECOND), "peek" },
                })
                assert.equal(-5, by.big.rc)
                assert.equal(NEVER, by.big.retry)
                assert.equal(0, by.fits.rc)
                assert.equal(-5, by.still.rc)
                assert.equal(100, by.peek.available)
            end)

            it("a frame of no bytes passes a byte limit that is empty, and costs nothing", function()
                local by = run({
                    { "init 0 0" },
                    { ref("bw", "bw", "bytes", 1000, SECOND, 100) },
                    { fmt("burst %d in 1 10 1000 bw", T0), "drain" },
                    { fmt("take %d in 1 0 bw", T0), "empty" },
                })
                assert.equal(10, by.drain.allowed)
                assert.equal(0, by.empty.rc)
            end)

            -- Several limits -----------------------------------------------------------------------

            it("several limits: the strictest decides, and a refused frame costs the others nothing", function()
                -- frames of 100 bytes against 100 frames a minute, 5 a second, 1000 bytes a minute
                -- and this connection's own 1000 frames an hour
                local by = run({
                    { "init 0 0" },
                    { ref("f", "app:f", "frames", 100, MINUTE) },
                    { ref("s", "app:s", "frames", 5, SECOND) },
                    { ref("b", "app:b", "bytes", 1000, MINUTE) },
                    { ref("c", "-", "frames", 1000, HOUR) },
                    { fmt("burst %d in 1 100 50 f s b c", T0), "first" },           -- s refuses the 6th
                    { fmt("peek f %d", T0), "f1" },
                    { fmt("peek b %d", T0), "b1" },
                    { fmt("peek c %d", T0), "c1" },
                    { fmt("take %d in 1 100 f s b c", T0 + SECOND / 5), "refill" },  -- s has one again
                    { fmt("burst %d in 1 100 50 f s b c", T0 + 4 * SECOND), "second" }, -- b refuses the 5th
                    { fmt("peek f %d", T0 + 4 * SECOND), "f2" },
                    { fmt("peek s %d", T0 + 4 * SECOND), "s2" },
                    { fmt("peek c %d", T0 + 4 * SECOND), "c2" },
                })
                assert.equal(5, by.first.allowed)
                assert.equal(SECOND / 5, by.first.retry)             -- the per-second limit's wait
                assert.equal(95, by.f1.available)                    -- charged only the 5 that passed
                assert.equal(500, by.b1.available)
                assert.equal(995, by.c1.available)
                assert.equal(0, by.refill.rc)
                -- b: 600 bytes charged by T0+0.2 s, 60 ms a byte: at T0+4 s it holds 466.7 bytes
                assert.equal(4, by.second.allowed)
                assert.equal(-5, by.second.rc)
                assert.equal(2 * SECOND, by.second.retry)            -- 500 more bytes fit at T0+6 s
                -- the refused 5th frame cost f, s and c nothing
                assert.equal(96, by.f2.available)                    -- 10 charged, 0.6 s a frame: 2.4 s of debt
                assert.equal(1, by.s2.available)
                assert.equal(991, by.c2.available)                   -- 36 s of debt at 3.6 s a frame
            end)

            it("the longest wait among refusing limits is the hint", function()
                local by = run({
                    { "init 0 0" },
                    { ref("x", "x", "frames", 1, SECOND) },
                    { ref("y", "y", "frames", 1, MINUTE) },
                    { fmt("take %d in 1 0 x y", T0), "one" },
                    { fmt("take %d in 1 0 x y", T0), "two" },
                    { fmt("take %d in 1 0 y x", T0), "three" },
                })
                assert.equal(0, by.one.rc)
                assert.same({ rc = -5, retry = MINUTE }, by.two)
                assert.same({ rc = -5, retry = MINUTE }, by.three)
            end)

            it("directions: an inbound limit ignores outbound frames; both adds the two up", function()
                local by = run({
                    { "init 0 0" },
                    { ref("i", "i", "frames", 3, MINUTE, 0, "in") },
                    { ref("o", "o", "frames", 3, MINUTE, 0, "out") },
                    { ref("a", "a", "frames", 4, MINUTE, 0, "both") },
                    { fmt("burst %d in 1 0 10 i o a", T0), "ins" },
                    { fmt("burst %d out 1 0 10 i o a", T0), "outs" },
                    { fmt("peek i %d", T0), "pi" },
                    { fmt("peek o %d", T0), "po" },
                })
                assert.equal(3, by.ins.allowed)       -- i refuses the 4th
                assert.equal(1, by.outs.allowed)      -- a has 1 left of 4
                assert.equal(0, by.pi.available)
                assert.equal(2, by.po.available)
            end)

            it("a local ref keeps its own state, apart from a shared key", function()
                local by = run({
                    { "init 0 0" },
                    { ref("l1", "-", "frames", 2, MINUTE) },
                    { ref("l2", "-", "frames", 2, MINUTE) },
                    { fmt("burst %d in 1 0 10 l1", T0), "l1" },
                    { fmt("burst %d in 1 0 10 l2", T0), "l2" },
                    { "stats", "stats" },
                })
                assert.equal(2, by.l1.allowed)
                assert.equal(2, by.l2.allowed)
                assert.equal(0, by.stats.buckets_used)
            end)

            it("two refs to one key share one bucket", function()
                local by = run({
                    { "init 0 0" },
                    { ref("a", "api:echo", "frames", 5, MINUTE), "ra" },
                    { ref("b", "api:echo", "frames", 5, MINUTE), "rb" },
                    { fmt("burst %d in 1 0 3 a", T0), "a" },
                    { fmt("burst %d in 1 0 10 b", T0), "b" },
                })
                assert.equal(by.ra.index, by.rb.index)
                assert.equal(3, by.a.allowed)
                assert.equal(2, by.b.allowed)
            end)

            it("one key under another count, period or unit is another bucket (a reload that changes a limit)", function()
                local by = run({
                    { "init 0 0" },
                    { ref("a", "sub:x", "frames", 5, MINUTE), "ra" },
                    { ref("b", "sub:x", "frames", 6, MINUTE), "rb" },
                    { ref("c", "sub:x", "frames", 5, HOUR), "rc" },
                    { ref("d", "sub:x", "bytes", 5, MINUTE), "rd" },
                    { ref("e", "sub:x", "frames", 5, MINUTE, 2, "in"), "re" },   -- the same units: shared
                    { fmt("burst %d in 1 1 10 a", T0), "a" },
                    { fmt("burst %d in 1 1 10 b", T0), "b" },
                    { fmt("burst %d in 1 1 10 c", T0), "c" },
                    { fmt("burst %d in 1 1 10 d", T0), "d" },
                    { fmt("take %d in 1 1 e", T0), "e" },
                })
                local seen = {}
                for _, r in ipairs({ by.ra, by.rb, by.rc, by.rd }) do
                    assert.is_nil(seen[r.index])
                    seen[r.index] = true
                end
                assert.equal(by.ra.index, by.re.index)
                assert.equal(5, by.a.allowed)
                assert.equal(6, by.b.allowed)
                assert.equal(5, by.c.allowed)
                assert.equal(5, by.d.allowed)
                assert.equal(-5, by.e.rc)
            end)

            it("specs out of range are refused with a message", function()
                local _, res = run({
                    { "init 0 0" },
                    { ref("z", "k", "frames", 0, SECOND) },
                    { ref("z", "k", "frames", 1, 0) },
                    { ref("z", "k", "frames", 1, 51 * 86400 * SECOND) },
                    { ref("z", "k", "bytes", 4096 * 1000000, SECOND) },
                    { ref("z", "k", "bytes", 4095 * 1000000, SECOND) },
                    { ref("z", ("k"):rep(513), "frames", 1, SECOND) },
                    { ref("z", ("k"):rep(512), "frames", 1, SECOND) },
                })
                assert.matches("count must be at least 1", res[2].err)
                assert.matches("period must be between", res[3].err)
                assert.matches("period must be between", res[4].err)
                assert.matches("rate must be below 4096", res[5].err)
                assert.equal(0, res[6].rc)
                assert.matches("longer than 512", res[7].err)
                assert.equal(0, res[8].rc)
            end)

            -- Processes -------------------------------------------------------------------------------

            it("2 processes hammering one bucket let exactly N through in total, round after round", function()
                local n = 200000
                local script = { { "init 0 0" } }
                for r = 1, 4 do
                    script[#script + 1] = { ref("r" .. r, "race:" .. r, "frames", n, HOUR) }
                    script[#script + 1] = { fmt("race 2 50 %d in 1 0 r%d", T0, r), "race" .. r }
                    script[#script + 1] = { fmt("peek r%d %d", r, T0), "peek" .. r }
                end
                local by = run(script)
                for r = 1, 4 do
                    assert.equal(n, by["race" .. r].total, "round " .. r)
                    assert.equal(0, by["peek" .. r].available)
                end
            end)

            it("2 processes on four limits: the strictest lets exactly N through, the others are charged N", function()
                local script = {
                    { "init 0 0" },
                    { ref("a", "four:a", "frames", 1000000, HOUR) },
                    { ref("b", "four:b", "bytes", 10000000, HOUR) },
                    { ref("s", "four:s", "frames", 50000, HOUR) },         -- the strictest
                    { ref("d", "four:d", "frames", 500000, HOUR) },
                    { fmt("race 2 50 %d in 1 10 a b s d", T0), "race" },
                    { fmt("peek a %d", T0), "a" },
                    { fmt("peek b %d", T0), "b" },
                    { fmt("peek s %d", T0), "s" },
                    { fmt("peek d %d", T0), "d" },
                }
                local by = run(script)
                assert.equal(50000, by.race.total)
                assert.equal(1000000 - 50000, by.a.available)
                assert.equal(10000000 - 500000, by.b.available)
                assert.equal(0, by.s.available)
                assert.equal(500000 - 50000, by.d.available)
            end)

            -- A full table ------------------------------------------------------------------------------

            -- 16 buckets: every key's probe window is the whole table.
            local function sixteen(prefix, count)
                local s = { { "init 16 16" } }
                for i = 1, 16 do
                    s[#s + 1] = { ref(prefix .. i, prefix .. ":" .. i, "frames", count or 10, MINUTE), prefix .. i }
                end
                return s
            end

            it("a full table: a new key takes a bucket that is full again; the live ones keep their state", function()
                local s = sixteen("k")
                for i = 1, 15 do s[#s + 1] = { fmt("burst %d in 1 0 20 k%d", T0, i) } end     -- k16 stays full
                s[#s + 1] = { ref("new", "new", "frames", 10, MINUTE, 0, "both", T0 + SECOND), "new" }
                s[#s + 1] = { "stats", "stats" }
                for i = 1, 15 do s[#s + 1] = { fmt("take %d in 1 0 k%d", T0 + 2 * SECOND, i), "after" .. i } end
                s[#s + 1] = { fmt("peek k16 %d", T0 + 2 * SECOND), "k16" }
                s[#s + 1] = { fmt("burst %d in 1 0 20 k16", T0 + 2 * SECOND), "k16take" }
                local by = run(s)
                assert.equal(by.k16.index, by.new.index)
                assert.equal(1, by.stats.evictions_full)
                assert.equal(0, by.stats.evictions_live)
                assert.equal(16, by.stats.buckets_used)
                for i = 1, 15 do
                    assert.same({ rc = -5, retry = 6 * SECOND - 2 * SECOND }, by["after" .. i])
                end
                assert.equal(-5, by.k16.rc)          -- handed over: its next take claims again
                assert.equal(10, by.k16take.allowed) -- full it was, full it is: nothing lost
            end)

            it("all buckets live: the least recently used is handed over, a throttled client's is kept", function()
                local s = sixteen("k")
                for i = 1, 16 do s[#s + 1] = { fmt("burst %d in 1 0 20 k%d", T0, i) } end
                -- k1..k15 keep trying (refused): in use. k16 goes quiet.
                for i = 1, 15 do s[#s + 1] = { fmt("take %d in 1 0 k%d", T0 + SECOND, i) } end
                s[#s + 1] = { ref("new", "new", "frames", 10, MINUTE, 0, "both", T0 + 2 * SECOND), "new" }
                s[#s + 1] = { "stats", "stats" }
                s[#s + 1] = { fmt("peek k16 %d", T0 + 2 * SECOND), "k16" }
                for i = 1, 15 do s[#s + 1] = { fmt("take %d in 1 0 k%d", T0 + 3 * SECOND, i), "after" .. i } end
                local by = run(s)
                assert.equal(by.k16.index, by.new.index)
                assert.equal(0, by.stats.evictions_full)
                assert.equal(1, by.stats.evictions_live)
                assert.equal(-5, by.k16.rc)
                for i = 1, 15 do
                    assert.same({ rc = -5, retry = 3 * SECOND }, by["after" .. i], "k" .. i)
                end
            end)

            it("churn: a hot key stays exact while 2000 keys pass through a 16-bucket table", function()
                local s = { { "init 16 16" }, { ref("hot", "hot", "frames", 10, SECOND, 10) } }
                local hot_takes = {}
                for step = 1, 2000 do
                    local now = T0 + step * 10000                -- every 10 ms
                    hot_takes[#hot_takes + 1] = now
                    s[#s + 1] = { fmt("take %d in 1 0 hot", now), "hot" .. step }
                    s[#s + 1] = { ref("t", "transient:" .. step, "frames", 1, SECOND, 1, "both", now) }
                    s[#s + 1] = { fmt("take %d in 1 0 t", now) }
                end
                s[#s + 1] = { "stats", "stats" }
                local by = run(s)
                local take = model(10, SECOND, 10)
                local passed = 0
                for step, now in ipairs(hot_takes) do
                    local ok, retry = take(now, 1)
                    assert.same({ rc = ok and 0 or -5, retry = retry }, by["hot" .. step], "step " .. step)
                    if ok then passed = passed + 1 end
                end
                assert.is_true(passed > 200 and passed < 2000, "the hot key was throttled: " .. passed)
                assert.is_true(by.stats.evictions_live > 1000, "the table was under pressure")
            end)

            -- Connection counts -----------------------------------------------------------------------------

            it("connections: at most MAX per key, released once, counted apart per key", function()
                local by = run({
                    { "init 0 0" },
                    { "cacq c1 app:1 2", "c1" },
                    { "cacq c2 app:1 2", "c2" },
                    { "cacq c3 app:1 2", "c3" },
                    { "cacq d1 app:2 2", "d1" },
                    { "ccount app:1", "n1" },
                    { "crel c1" },
                    { "crel c1" },                                  -- a second release does nothing
                    { "ccount app:1", "n2" },
                    { "cacq c4 app:1 2", "c4" },
                    { "cacq c5 app:1 2", "c5" },
                    { "cacq z app:3 0", "zero" },
                    { "crel c2" }, { "crel c4" }, { "crel d1" },
                    { "ccount app:1", "n3" },
                    { "ccount app:2", "n4" },
                    { "ccount nobody", "n5" },
                })
                assert.equal(0, by.c1.rc)
                assert.equal(0, by.c2.rc)
                assert.equal(-5, by.c3.rc)
                assert.equal(0, by.d1.rc)
                assert.equal(2, by.n1.count)
                assert.equal(1, by.n2.count)
                assert.equal(0, by.c4.rc)
                assert.equal(-5, by.c5.rc)
                assert.equal(-5, by.zero.rc)
                assert.equal(0, by.n3.count)
                assert.equal(0, by.n4.count)
                assert.equal(0, by.n5.count)
            end)

            it("connections: a full slot table refuses a new key (counted) until a key's count is back to 0", function()
                local s = { { "init 16 16" } }
                for i = 1, 16 do s[#s + 1] = { fmt("cacq c%d key:%d 5", i, i) } end
                s[#s + 1] = { "cacq x key:new 5", "full" }
                s[#s + 1] = { "cacq c1b key:1 5", "same" }        -- a key already there still counts
                s[#s + 1] = { "stats", "stats" }
                s[#s + 1] = { "crel c7" }
                s[#s + 1] = { "cacq y key:new 5", "reused" }
                s[#s + 1] = { "ccount key:new", "n" }
                local by = run(s)
                assert.equal(-1, by.full.rc)
                assert.equal(0, by.same.rc)
                assert.equal(1, by.stats.conn_table_full)
                assert.equal(16, by.stats.conn_slots_used)
                assert.equal(0, by.reused.rc)
                assert.equal(1, by.n.count)
            end)

            it("connections: 2 processes filling one key get exactly MAX between them", function()
                local by = run({ { "init 0 0" }, { "cfill 2 sub:a:b 1000", "fill" } })
                assert.equal(1000, by.fill.total)
                assert.equal(1000, by.fill.count)
                assert.equal(0, by.fill.final)
            end)

            it("connections: a worker's counts are given back when it dies, and only its own", function()
                local by = run({
                    { "init 0 0 2" },
                    { "worker 0" },
                    { "cacq a1 app:1 3" }, { "cacq a2 app:1 3" }, { "cacq b1 app:2 9" },
                    { "crel a2" },
                    { "worker 1" },
                    { "cacq w1 app:1 3" }, { "cacq w2 app:1 3" },
                    { "cacq w3 app:1 3", "full" },                    -- 1 of worker 0 + 2 of worker 1
                    { "ccount app:1", "before" },
                    { "reclaim 0", "given" },                           -- worker 0 died holding a1 and b1
                    { "ccount app:1", "after1" },
                    { "ccount app:2", "after2" },
                    { "reclaim 0", "again" },
                    { "cacq w4 app:1 3", "room" },
                    { "crel w1" }, { "crel w4" },
                    { "ccount app:1", "final" },
                    { "stats", "stats" },
                })
                assert.equal(-5, by.full.rc)
                assert.equal(3, by.before.count)
                assert.equal(2, by.given.given)
                assert.equal(2, by.after1.count)                       -- worker 1's two stay counted
                assert.equal(0, by.after2.count)
                assert.equal(0, by.again.given)
                assert.equal(0, by.room.rc)
                assert.equal(1, by.final.count)                        -- w2 is still held
                assert.equal(2, by.stats.conn_reclaimed)
            end)

            it("connections: the other hosts' count counts against MAX", function()
                local by = run({
                    { "init 0 0" },
                    { "cacq a app:1 5" },
                    { "cremote a 3" },
                    { "cacq b app:1 5", "fifth" },
                    { "cacq c app:1 5", "sixth" },
                    { "cremote a 0" },
                    { fmt("cturn a %d 100 1000", T0), "turn" },
                    { fmt("cturn a %d 100 1000", T0 + 50), "early" },
                    { fmt("cturn a %d 100 1000", T0 + 999), "idle" },
                    { "cacq d app:1 5" },
                    { fmt("cturn a %d 100 1000", T0 + 100), "changed" },
                })
                assert.equal(0, by.fifth.rc)
                assert.equal(-5, by.sixth.rc)
                assert.same({ turn = 1, count = 2 }, by.turn)          -- a count never reported: due
                assert.same({ turn = 0, count = 2 }, by.early)
                assert.same({ turn = 0, count = 2 }, by.idle)          -- reported, unchanged: the idle interval
                assert.same({ turn = 1, count = 3 }, by.changed)
            end)

            -- Shared with other hosts --------------------------------------------------------------

            local function sref(name, key, count, period, share)
                return fmt("ref %s %s frames %d %d 0 both %d %s", name, key, count, period, T0, share)
            end

            it("shared refs count what they take as pending, once; local refs do not", function()
                local by = run({
                    { "init 0 0" },
                    { sref("s", "sub:a:x:Gold:1", 10, MINUTE, "open") },
                    { sref("s2", "sub:a:x:Gold:1", 10, MINUTE, "open") },
                    { ref("l", "sub:a:y:Gold:1", "frames", 10, MINUTE) },
                    { fmt("burst %d in 1 0 4 s", T0) },
                    { fmt("burst %d in 1 0 3 s2", T0) },
                    { fmt("burst %d in 1 0 20 s l", T0), "both" },       -- refused by s after 3 more
                    { "spending s", "p1" },
                    { "spending s", "p2" },
                    { "spending l", "pl" },
                })
                assert.equal(3, by.both.allowed)
                assert.equal(10, by.p1.pending)
                assert.equal(0, by.p2.pending)
                assert.equal(0, by.pl.pending)
            end)

            it("the hosts' debt moves the bucket forward, plus what was taken since, never back", function()
                -- 60 a minute: a token a second
                local by = run({
                    { "init 0 0" },
                    { sref("s", "sub:a:x:Gold:1", 60, MINUTE, "open") },
                    { fmt("burst %d in 1 0 10 s", T0) },
                    { "spending s" },
                    { fmt("burst %d in 1 0 5 s", T0) },                  -- taken while the sync is out
                    -- Redis: the hosts owe 40 s (this host's 10 and 30 elsewhere)
                    { fmt("sapply s %d %d", 40 * SECOND, T0) },
                    { fmt("peek s %d", T0), "after" },
                    -- an older, smaller answer changes nothing
                    { fmt("sapply s %d %d", 5 * SECOND, T0) },
                    { fmt("peek s %d", T0), "kept" },
                    -- an absurd one is capped at 64 bursts
                    { sref("t", "sub:b:x:Gold:1", 60, MINUTE, "open") },
                    { fmt("sapply t %d %d", 1e15, T0) },
                    { fmt("peek t %d", T0), "capped" },
                })
                -- 40 s + the 5 taken since: 45 of 60 tokens used
                assert.same({ available = 15, full_in = 45 * SECOND }, { available = by.after.available,
                                                                         full_in = by.after.full_in })
                assert.equal(45 * SECOND, by.kept.full_in)
                assert.equal(64 * MINUTE, by.capped.full_in)
                assert.equal(0, by.capped.available)
            end)

            it("Redis down: a closed shared limit refuses (hint 1 s, counted), an open one decides alone", function()
                local by = run({
                    { "init 0 0" },
                    { sref("c", "sub:a:x:Closed:1", 10, MINUTE, "closed") },
                    { sref("o", "sub:a:x:Open:1", 10, MINUTE, "open") },
                    { "down 1" },
                    { fmt("take %d in 1 0 c", T0), "closed" },
                    { fmt("burst %d in 1 0 20 o", T0), "open" },
                    { fmt("take %d in 1 0 c o", T0 + MINUTE), "both" },
                    { "down 0" },
                    { fmt("take %d in 1 0 c", T0), "back" },
                    { "stats", "stats" },
                })
                assert.same({ rc = -5, retry = SECOND }, by.closed)
                assert.equal(10, by.open.allowed)
                assert.same({ rc = -5, retry = SECOND }, by.both)
                assert.same({ rc = 0, retry = 0 }, by.back)
                assert.equal(2, by.stats.shared_refused)
            end)

            it("sync turns: one worker of the host per interval; busy buckets often, idle ones seldom", function()
                local by = run({
                    { "init 0 0" },
                    { sref("s", "sub:a:x:Gold:1", 10, MINUTE, "open") },
                    { sref("s2", "sub:a:x:Gold:1", 10, MINUTE, "open") },
                    { fmt("sturn s %d 100 1000", T0), "first" },
                    { fmt("sturn s2 %d 100 1000", T0), "other" },        -- the same bucket: not twice
                    { fmt("sturn s %d 100 1000", T0 + 500), "idle" },
                    { fmt("take %d in 1 0 s", T0 + 500) },
                    { fmt("sturn s2 %d 100 1000", T0 + 500), "busy" },
                    { "spending s" },
                    { fmt("sturn s %d 100 1000", T0 + 700), "quiet" },
                    { fmt("sturn s %d 100 1000", T0 + 1500), "idle_due" },
                })
                assert.same({ turn = 1, since = 1000 }, by.first)      -- the first: an idle interval
                assert.equal(0, by.other.turn)
                assert.equal(0, by.idle.turn)
                assert.same({ turn = 1, since = 500 }, by.busy)        -- since the host's previous turn
                assert.equal(0, by.quiet.turn)
                assert.equal(1, by.idle_due.turn)
            end)

            it("connections: 2 processes acquiring and releasing never exceed MAX, and every count comes back", function()
                local by = run({ { "init 0 0" }, { "crace 2 200000 ip:127.0.0.1 20", "race" } })
                local r = by.race
                assert.is_true(r.observed_max <= 20, "at most 20 open: " .. r.observed_max)
                assert.equal(20, r.observed_max)                 -- the limit was reached
                assert.is_true(r.declined > 0)
                assert.equal(r.acquired, r.released)
                assert.equal(0, r.final)
            end)
        end)
    end

    describe("weir.limits (Lua, against the core as a shared library)", function()
        local limits

        setup(function()
            local so = compile(helpers.tmpdir() .. "/liblimits.so", { ROOT .. "/core/limit.c", ROOT .. "/core/log.c" },
                               "-O2 -shared -fPIC")
            ffi.cdef "int weir_limits_init(size_t buckets, size_t conn_slots, int workers);"
            local lib = ffi.load(so, true)                    -- global: ffi.C finds weir_ffi_*
            assert.equal(0, lib.weir_limits_init(1024, 64, 0))
            limits = require "weir.limits"
        end)

        it("parse: sizes, periods, bursts, directions", function()
            assert.same({ unit = limits.BYTES, count = 10 * 1048576, period_us = 60e6, burst = 10 * 1048576, dirs = 3 },
                        limits.parse({ bytes = "10m", per = "minute" }))
            assert.same({ unit = limits.FRAMES, count = 10, period_us = 30e6, burst = 2, dirs = 1 },
                        limits.parse({ frames = 10, per = 30, burst = 2, direction = "in" }))
            assert.same({ unit = limits.BYTES, count = 1000, period_us = 86400e6, burst = 512 * 1024, dirs = 2 },
                        limits.parse({ bytes = 1000, per = "day", burst = "512k", direction = "out" }))
        end)

        it("parse: what is wrong, said", function()
            local cases = {
                { { per = "minute" }, "needs frames or bytes" },
                { { frames = 1, bytes = 1, per = "minute" }, "not both" },
                { { frames = 0, per = "minute" }, "frames: expected a whole number above 0" },
                { { frames = 1.5, per = "minute" }, "frames: expected" },
                { { bytes = "ten", per = "minute" }, "bytes: expected a size" },
                { { frames = 1, per = "week" }, 'per: expected "second"' },
                { { frames = 1, per = 0 }, "per: expected" },
                { { frames = 1, per = 50 * 86400 + 1 }, "per: expected" },
                { { frames = 1, per = "minute", burst = 0 }, "burst: expected" },
                { { frames = 1, per = "minute", direction = "up" }, "direction: expected" },
                { { bytes = "5g", per = "second" }, "rate must be below" },
            }
            for _, c in ipairs(cases) do
                local p, err = limits.parse(c[1])
                assert.is_nil(p)
                assert.matches(c[2], err, 1, true)
            end
        end)

        it("ref, take and peek: N pass, then a refusal with the wait in seconds", function()
            local refs = limits.refs(2)
            assert(limits.ref("lua:hour", { frames = 5, per = "hour" }, refs + 0))
            assert(limits.ref(nil, { bytes = "1k", per = "hour" }, refs + 1))
            for _ = 1, 5 do assert.is_true(limits.take(refs, 2, limits.IN, 1, 100)) end
            local ok, retry = limits.take(refs, 2, limits.IN, 1, 100)
            assert.is_false(ok)
            assert.is_true(retry > 700 and retry <= 720, "one token of 5 an hour: " .. retry)
            local avail, full_in, held = limits.peek(refs[1])
            assert.equal(1024 - 500, avail)                       -- the refused frame cost nothing
            assert.is_true(full_in > 0)
            assert.is_true(held)
            local big_ok, never = limits.take(refs + 1, 1, limits.OUT, 1, 2000)
            assert.is_false(big_ok)
            assert.equal(math.huge, never)
        end)

        it("ref: a bad spec or key is nil and the reason", function()
            local r, err = limits.ref("k", { frames = 0, per = "second" })
            assert.is_nil(r)
            assert.matches("frames", err)
            r, err = limits.ref(("k"):rep(513), { frames = 1, per = "second" })
            assert.is_nil(r)
            assert.matches("longer than 512", err)
        end)

        it("connection counts", function()
            local a = assert(limits.conn_acquire("lua:conn", 1))
            local b, why = limits.conn_acquire("lua:conn", 1)
            assert.is_nil(b)
            assert.equal("limit", why)
            assert.equal(1, limits.conn_count("lua:conn"))
            limits.conn_release(a)
            limits.conn_release(a)
            assert.equal(0, limits.conn_count("lua:conn"))
        end)

        it("stats", function()
            local st = limits.stats()
            assert.equal(1024, st.buckets)
            assert.equal(64, st.conn_slots)
            assert.is_true(st.buckets_used >= 1)
            assert.is_true(st.claims >= 1)
        end)
    end)
end)
