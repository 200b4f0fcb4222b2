-- throttling across hosts (docs/throttling.md, "Across hosts: Redis"): two
-- weir instances, each its own host (its own master and shared memory),
-- sharing one real redis-server started here on a free loopback port. A
-- shared limit holds across them; Redis killed, restarted, or stopped
-- (blackholed) mid-run: each tier does what its on_redis_down says, no
-- worker dies, and counting resumes; connection counts are shared too.
local helpers = require "helpers"

local N = 20                         -- frames an hour on the shared tiers: a token every 180 s
local TOKEN_US = 3600e6 / N

-- Send every message of LIST in one write, then a ping; read until its
-- pong. Returns how many echoes came back and the throttled notices.
local function exchange(ws, list, tag)
    local bytes = {}
    for _, m in ipairs(list) do bytes[#bytes + 1] = helpers.encode_frame({ opcode = 1, payload = m }) end
    tag = tag or "end"
    bytes[#bytes + 1] = helpers.encode_frame({ opcode = 9, payload = tag })
    assert(ws:send(table.concat(bytes)))
    local n, notices = 0, {}
    local deadline = helpers.now() + 20
    while true do
        local f, err = ws:recv_frame(math.max(0.01, deadline - helpers.now()))
        assert(f, "no pong " .. tag .. " (" .. tostring(err) .. ")")
        if f.opcode == 10 and f.payload == tag then return n, notices end
        if f.opcode == 8 then error("closed: " .. tostring(f.code)) end
        if f.opcode == 1 then
            if f.payload:find('"/problems/throttled"', 1, true) then notices[#notices + 1] = f.payload
            else n = n + 1 end
        end
    end
end

local function msgs(n, prefix)
    local out = {}
    for i = 1, n do out[i] = (prefix or "m") .. i end
    return out
end

-- Tokens Redis holds against KEY now: (tat - Redis's clock) / a token.
local function redis_tokens(rd, key)
    local tat = tonumber((rd:command("GET", key)))
    if not tat then return 0 end
    local t = rd:command("TIME")
    local now = tonumber(t[1]) * 1e6 + tonumber(t[2])
    return math.floor((tat - now) / TOKEN_US + 0.5)
end

local function limit_key(api, tier)
    return ("weir:limit:%d:%d:f:ip:127.0.0.1:%s:%s:1"):format(N, 3600e6, api, tier)
end

describe("throttling shared through Redis", function()
    local be, rd, gw1, gw2

    local tiers = {
        Shared = { limits = { { frames = N, per = "hour", direction = "in" } }, action = "drop" },
        Open = { limits = { { frames = N, per = "hour", direction = "in" } }, action = "drop" },
        Closed = { limits = { { frames = N, per = "hour", direction = "in" } }, action = "drop",
                   on_redis_down = "closed" },
    }

    local function conf(extra_state)
        local function api(name, tier, extra)
            local c = { level = "subscription", anonymous_tier = tier }
            for k, v in pairs(extra or {}) do c[k] = v end
            return helpers.policy_api(name, "/" .. name:lower(), be, { { "throttling", c } })
        end
        local state = { redis = rd.url }
        for k, v in pairs(extra_state or {}) do state[k] = v end
        return {
            workers = 1, tiers = tiers, state = state, policy_paths = { helpers.fixture_policies },
            apis = {
                api("Shared", "Shared"), api("Race", "Shared"), api("Open", "Open"), api("Closed", "Closed"),
                api("Conns", nil, { max_connections = { api = 3 } }),
                helpers.policy_api("Stats", "/stats", be, { { "spec-limit-stats", {} } }),
                helpers.policy_api("Local", "/local", be, { { "spec-local-limit", {} } }),
                helpers.api("Plain", "/plain", be),
            },
        }
    end

    setup(function()
        be = helpers.start_backend("echo")
        rd = helpers.start_redis()
        gw1 = helpers.start_weir(conf())
        gw2 = helpers.start_weir(conf())
        for _, g in ipairs({ gw1, gw2 }) do g:wait_log(function(r) return r.msg == "redis connected" end) end
    end)
    teardown(helpers.cleanup)

    local function open(g, path)
        local ws, res = helpers.ws_connect(g.port, { path = path })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        return ws
    end

    -- This host's worker's weir.limits stats (spec-limit-stats).
    local function stats(g)
        local ws = open(g, "/stats")
        local s = helpers.json((helpers.ask(ws, "stats")))
        ws:close()
        return s
    end

    -- Wait until G's worker has had N more answers from Redis than it had.
    local function synced(g, n)
        local before = stats(g).sync.answers
        helpers.wait_until(function() return stats(g).sync.answers >= before + (n or 1) end, 10,
                           "answers from Redis")
    end

    it("holds one budget across two hosts: N in all, whichever host the frames come through", function()
        local c1 = open(gw1, "/shared")
        assert.equal(12, (exchange(c1, msgs(12))))
        -- gw1 reports its 12 to Redis
        local key = limit_key("Shared", "Shared")
        helpers.wait_until(function() return redis_tokens(rd, key) == 12 end, 10, "12 tokens in Redis")
        -- gw2's first connection on the limit learns the hosts' debt at once
        local c2 = open(gw2, "/shared")
        synced(gw2)
        local n2, notices = exchange(c2, msgs(12))
        assert.equal(N - 12, n2)
        assert.equal(1, #notices)
        helpers.wait_until(function() return redis_tokens(rd, key) == N end, 10, "N tokens in Redis")
        -- and gw1 learns gw2's at its next sync
        synced(gw1, 2)
        assert.equal(0, (exchange(c1, { "late" })))
        c1:close(); c2:close()
    end)

    it("both hosts flooding at once: at most one burst more than N (the documented tolerance), all reported", function()
        local c1, c2 = open(gw1, "/race"), open(gw2, "/race")
        synced(gw1); synced(gw2)
        -- 2N from each host, both on their way before either answers
        local b1, b2 = {}, {}
        for _, m in ipairs(msgs(2 * N, "a")) do b1[#b1 + 1] = helpers.encode_frame({ opcode = 1, payload = m }) end
        for _, m in ipairs(msgs(2 * N, "b")) do b2[#b2 + 1] = helpers.encode_frame({ opcode = 1, payload = m }) end
        assert(c1:send(table.concat(b1)))
        assert(c2:send(table.concat(b2)))
        local n1, n2 = exchange(c1, {}, "p1"), exchange(c2, {}, "p2")
        local total = n1 + n2
        -- (H - 1) × burst: what the other host can let through before it learns
        assert.is_true(total >= N and total <= 2 * N, "passed " .. total)
        -- every frame that passed is in Redis's count, once
        local key = limit_key("Race", "Shared")
        helpers.wait_until(function() return redis_tokens(rd, key) == total end, 10,
                           total .. " tokens in Redis (has " .. redis_tokens(rd, key) .. ")")
        -- and neither host lets anything more through: the excess is paid back first
        synced(gw1, 2); synced(gw2, 2)
        assert.equal(0, (exchange(c1, { "x" })))
        assert.equal(0, (exchange(c2, { "y" })))
        c1:close(); c2:close()
    end)

    it("keeps a limit on its host when ctx:limit says \"local\"", function()
        local c1, c2 = open(gw1, "/local"), open(gw2, "/local")
        assert.equal(2, (exchange(c1, msgs(3))))
        assert.equal(2, (exchange(c2, msgs(3))))             -- gw2's own 2: nothing was shared
        -- with both connections open, neither worker has anything to sync
        for _, g in ipairs({ gw1, gw2 }) do
            helpers.wait_until(function() return stats(g).sync.entries == 0 end, 10, "no shared entries")
        end
        assert.same({}, rd:command("KEYS", "*local-key*"))
        c1:close(); c2:close()
    end)

    it("shares connection counts: a maximum of the API holds across both hosts", function()
        local key = "weir:conn:conn:api:Conns:1.0"
        local a, b = open(gw1, "/conns"), open(gw1, "/conns")
        helpers.wait_until(function()
            local h = rd:command("HGETALL", key)
            return type(h) == "table" and #h == 2 and h[2]:match("^2:")
        end, 10, "gw1's count of 2 in Redis")
        local c = open(gw2, "/conns")
        -- gw2 now knows gw1's 2: its next is refused; gw1 learns gw2's 1 and refuses too
        for _, g in ipairs({ gw2, gw1 }) do
            local res = helpers.wait_until(function()
                local ws, r = helpers.ws_connect(g.port, { path = "/conns" })
                if ws then ws:close(); return nil end          -- not synced yet: give it back, try again
                return r
            end, 10, "a 429 from " .. g.port)
            assert.equal(429, res.status)
            helpers.check_error(res.body, "/problems/reach-maximum-connections", 429)
        end
        -- gw1's connections go: gw2 admits again
        a:close(); b:close()
        local d = helpers.wait_until(function() return (helpers.ws_connect(gw2.port, { path = "/conns" })) end, 10,
                                     "gw2 to admit after gw1's connections closed")
        c:close(); d:close()
    end)

    it("Redis killed and started again: open tiers go on alone, closed ones refuse, no worker dies, counting resumes", function()
        local workers1, workers2 = gw1:worker_pids(), gw2:worker_pids()
        local o, cl = open(gw1, "/open"), open(gw1, "/closed")
        assert.equal(1, (exchange(o, { "before" })))
        assert.equal(1, (exchange(cl, { "before" })))
        local okey = limit_key("Open", "Open")
        helpers.wait_until(function() return redis_tokens(rd, okey) == 1 end, 10, "the open tier's token in Redis")

        rd:kill("KILL")
        for _, g in ipairs({ gw1, gw2 }) do
            g:wait_log(function(r) return r.msg:find("^redis unreachable") end)
        end
        -- open: this host's bucket alone decides
        assert.equal(5, (exchange(o, msgs(5))))
        -- closed: every message is over the limit, with a retry hint of 1 s
        local n, notices = exchange(cl, msgs(3))
        assert.equal(0, n)
        assert.equal(1, #notices)
        local j = helpers.check_error(notices[1], "/problems/throttled", 429)
        assert.equal(1, j.error.retry_after)
        -- new connections and unlimited traffic go on
        local p = open(gw2, "/plain")
        assert.equal("plain", helpers.ask(p, "plain"))
        -- the takes made meanwhile are forgotten, not kept for later
        helpers.wait_until(function() return stats(gw1).sync.forgiven >= 5 end, 10, "the 5 takes forgiven")
        local st = stats(gw1)
        assert.is_true(st.sync.down)
        assert.is_true(st.zone.shared_refused >= 3)

        rd:restart()
        for _, g in ipairs({ gw1, gw2 }) do
            g:wait_log(function(r) return r.msg:find("^redis reachable again") end, 15)
        end
        assert.equal(1, (exchange(cl, { "after" })))
        assert.equal(3, (exchange(o, msgs(3, "after"))))
        -- Redis came back empty: it counts what the hosts take from now on
        helpers.wait_until(function() return redis_tokens(rd, okey) == 3 end, 10, "3 tokens in the new Redis")
        assert.same(workers1, gw1:worker_pids())
        assert.same(workers2, gw2:worker_pids())
        for _, g in ipairs({ gw1, gw2 }) do
            for _, r in ipairs(g:logs()) do
                assert.is_nil(r.msg:match("^worker died") or r.msg:match("^worker exited"), r.msg)
            end
        end
        o:close(); cl:close(); p:close()
    end)

    it("Redis stopped (blackholed): no answer in time counts as down, the worker goes on; SIGCONT: back", function()
        local cl = open(gw2, "/closed")
        local p = open(gw2, "/plain")
        local function count(pattern)
            local n, last = 0, nil
            for _, r in ipairs(gw2:logs()) do
                if r.msg:find(pattern) then n, last = n + 1, r end
            end
            return n, last
        end
        local down0, up0 = count("^redis unreachable"), count("^redis reachable again")
        rd:kill("STOP")
        -- the next sync waits state.timeout for an answer, then Redis is down
        helpers.wait_until(function() return count("^redis unreachable") > down0 end, 15, "redis unreachable")
        local _, rec = count("^redis unreachable")
        assert.truthy(rec.error:find("no answer within 500 ms", 1, true), rec.error)
        assert.equal("plain", helpers.ask(p, "plain"))
        local n, notices = exchange(cl, { "while-stopped" })
        assert.equal(0, n)
        assert.equal(1, #notices)
        rd:kill("CONT")
        helpers.wait_until(function() return count("^redis reachable again") > up0 end, 15, "redis reachable again")
        assert.equal(1, (exchange(cl, { "again" })))
        cl:close(); p:close()
    end)
end)
