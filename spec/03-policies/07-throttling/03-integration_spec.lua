-- throttling through a real gateway (docs/policies/throttling.md): tiers'
-- frame and byte limits counted in the core's shared memory, each action
-- on the wire, both directions added up, messages never cut, and
-- connection limits.
local helpers = require "helpers"

local GOLD, SILVER = "gold-key-0123456789abcdef", "silver-key-fedcba9876543210"

-- Send every message of LIST (strings, or frame tables) in one write, then
-- a ping; read until its pong. Returns the text messages received (data
-- frames reassembled), in order.
local function exchange(ws, list, tag)
    local bytes = {}
    for _, m in ipairs(list) do
        local f = type(m) == "table" and m or { opcode = 1, payload = m }
        bytes[#bytes + 1] = helpers.encode_frame(f)
    end
    tag = tag or "end"
    bytes[#bytes + 1] = helpers.encode_frame({ opcode = 9, payload = tag })
    assert(ws:send(table.concat(bytes)))
    local got, parts = {}, {}
    local deadline = helpers.now() + 20
    while true do
        local f, err = ws:recv_frame(math.max(0.01, deadline - helpers.now()))
        assert(f, "no pong " .. tag .. " (" .. tostring(err) .. ")")
        if f.opcode == 10 and f.payload == tag then return got end
        if f.opcode == 8 then error("closed: " .. tostring(f.code)) end
        if f.opcode < 8 then
            parts[#parts + 1] = f.payload
            if f.fin then
                got[#got + 1] = table.concat(parts)
                parts = {}
            end
        end
    end
end

local function count_echoes(got)
    local n, notices = 0, {}
    for _, m in ipairs(got) do
        if m:sub(1, 1) == "{" and m:find('"/problems/throttled"', 1, true) then notices[#notices + 1] = m
        else n = n + 1 end
    end
    return n, notices
end

local function msgs(n, prefix)
    local out = {}
    for i = 1, n do out[i] = (prefix or "m") .. i end
    return out
end

describe("throttling through weir", function()
    local be, gw, gw2

    local tiers = {
        Gold = { limits = { { frames = 1000, per = "hour" } } },
        Silver = { limits = { { frames = 5, per = "hour", direction = "in" } }, action = "drop" },
        Both = { limits = { { frames = 10, per = "hour" } }, action = "drop", action_out = "drop" },
        Slow = { limits = { { frames = 2, per = "second", direction = "in" } }, action = "delay" },
        Strict = { limits = { { frames = 2, per = "hour", direction = "in" } }, action = "close" },
        Bytes = { limits = { { bytes = "1k", per = "hour", direction = "in" } }, action = "drop" },
        Tiny = { limits = { { bytes = 100, per = "hour", direction = "in" } }, action = "drop" },
        Out = { limits = { { frames = 3, per = "second", direction = "out" } } },
    }

    local function api(name, tier, extra)
        local conf = { level = "subscription", anonymous_tier = tier }
        for k, v in pairs(extra or {}) do conf[k] = v end
        return helpers.policy_api(name, "/" .. name:lower(), be, { { "throttling", conf } })
    end

    setup(function()
        be = helpers.start_backend("echo")
        local keys_file = helpers.write_file(helpers.tmpdir() .. "/keys.txt", table.concat({
            "sha256:" .. helpers.sha256(GOLD) .. "  application=GoldApp subscriber=alice tier=Gold",
            "sha256:" .. helpers.sha256(SILVER) .. "  application=SilverApp subscriber=bob tier=Silver",
        }, "\n") .. "\n")
        local apis = {
            helpers.policy_api("Keyed", "/keyed", be, {
                { "key-auth", { keys_file = keys_file } },
                { "throttling", { level = { "subscription", "connection" } } },
            }),
            api("Both", "Both"), api("Slow", "Slow"), api("Strict", "Strict"), api("Bytes", "Bytes"),
            api("Tiny", "Tiny"), api("Out", "Out"), api("Frag", "Bytes"),
            api("Conns", "Gold", { max_connections = { client = 2 } }),
            api("Conns1013", "Gold", { max_connections = { api = 1 }, connection_limit_answer = "close" }),
            api("Proxied", "Silver", { trusted_proxies = { "127.0.0.1" } }),
        }
        gw = helpers.start_weir({ workers = 1, tiers = tiers, policy_paths = { helpers.fixture_policies },
                                  apis = apis })
        gw2 = helpers.start_weir({ workers = 2, tiers = tiers, apis = {
            helpers.policy_api("Keyed2", "/keyed2", be, {
                { "key-auth", { keys_file = keys_file } }, { "throttling", {} },
            }),
        } })
    end)
    teardown(helpers.cleanup)

    local function open(g, path, headers)
        local ws, res = helpers.ws_connect(g.port, { path = path, headers = headers })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        return ws
    end

    it("lets exactly N frames of a Silver subscription through, and not a Gold one's", function()
        local silver = open(gw, "/keyed", { apikey = SILVER })
        local n, notices = count_echoes(exchange(silver, msgs(8)))
        assert.equal(5, n)
        -- three dropped at once: one notice (at most one a second)
        assert.equal(1, #notices)
        local j = helpers.check_error(notices[1], "/problems/throttled", 429)
        assert.is_number(j.error.retry_after)
        assert.is_true(j.error.retry_after > 0)
        -- the subscription's bucket is shared by the application's next connection
        local again = open(gw, "/keyed", { apikey = SILVER })
        n = count_echoes(exchange(again, { "x" }))
        assert.equal(0, n)
        local gold = open(gw, "/keyed", { apikey = GOLD })
        n = count_echoes(exchange(gold, msgs(20)))
        assert.equal(20, n)
        silver:close(); again:close(); gold:close()
    end)

    it("lets exactly N through across the connections of 2 workers", function()
        local conns, total = {}, 0
        for i = 1, 6 do conns[i] = open(gw2, "/keyed2", { apikey = SILVER }) end
        for i = 1, 6 do
            local n = count_echoes(exchange(conns[i], msgs(3, "w" .. i)))
            total = total + n
        end
        assert.equal(5, total)
        for i = 1, 6 do conns[i]:close() end
    end)

    it("adds both directions up by default", function()
        -- 10 frames: each message and its echo cost one each
        local ws = open(gw, "/both")
        for i = 1, 5 do
            assert.same({ "m" .. i }, exchange(ws, { "m" .. i }, "p" .. i))
        end
        local n, notices = count_echoes(exchange(ws, { "m6" }))
        assert.equal(0, n)
        assert.equal(1, #notices)
        ws:close()
    end)

    it("delays over the limit with nothing lost, in order", function()
        local ws = open(gw, "/slow")
        local t0 = helpers.now()
        local got = exchange(ws, msgs(6))
        -- 2 a second, burst 2: the 6th message cannot pass before 2 s (an exact bound of the algorithm)
        assert.is_true(helpers.now() - t0 >= 1.9)
        assert.same(msgs(6), got)
        ws:close()
    end)

    it("closes 1008 with the throttled JSON", function()
        local ws = open(gw, "/strict")
        assert.equal("a", helpers.ask(ws, "a"))
        assert.equal("b", helpers.ask(ws, "b"))
        assert(ws:send_text("c"))
        local j = helpers.expect_error_close(ws, "/problems/throttled", 1008)
        assert.is_true(j.error.retry_after > 0)
    end)

    it("limits bandwidth under large frames, and never cuts a fragmented message", function()
        local ws = open(gw, "/bytes")
        local big = string.rep("x", 300)
        local n = count_echoes(exchange(ws, { big, big, big, big }))
        assert.equal(3, n)                     -- 900 bytes of 1024; the 4th would make 1200
        ws:close()
        -- a message is decided at its first frame and passes whole: 1500 bytes
        -- against 1024; what its last fragment could not pay is owed by the next one
        local f = open(gw, "/frag")
        local part = string.rep("f", 500)
        local got = exchange(f, { { opcode = 1, payload = part, fin = false }, { opcode = 0, payload = part, fin = false },
                                   { opcode = 0, payload = part, fin = true } })
        assert.same({ part:rep(3) }, got)
        local n, notices = count_echoes(exchange(f, { "q" }))
        assert.equal(0, n)
        assert.equal(1, #notices)
        f:close()
    end)

    it("limits bandwidth under tiny frames", function()
        local ws = open(gw, "/tiny")
        local list = {}
        for i = 1, 130 do list[i] = "y" end
        local n = count_echoes(exchange(ws, list))
        assert.equal(100, n)
        ws:close()
    end)

    it("closes 1009 a message larger than a byte limit's burst", function()
        local b = open(gw, "/bytes")
        assert(b:send_text(string.rep("z", 2000)))
        local j = helpers.expect_error_close(b, "/problems/message-too-big", 1009)
        assert.equal(1009, j.error.code)
    end)

    it("delays the backend's messages over an out limit, losing none", function()
        local ws = open(gw, "/out")
        local got = exchange(ws, msgs(7))
        assert.same(msgs(7), got)
        ws:close()
    end)

    it("refuses connections over max_connections with 429 and Retry-After, and gives them back at close", function()
        local a = open(gw, "/conns")
        local b = open(gw, "/conns")
        local ws, res = helpers.ws_connect(gw.port, { path = "/conns" })
        assert.is_nil(ws)
        assert.equal(429, res.status)
        assert.equal("1", res.headers["retry-after"])
        local j = helpers.check_error(res.body, "/problems/reach-maximum-connections", 429)
        assert.equal("Maximum number of connections reached", j.error.message)
        a:close_handshake(1000)
        helpers.wait_until(function()
            local c = helpers.ws_connect(gw.port, { path = "/conns" })
            if c then c:close(); return true end
        end, 10, "a connection slot to be given back")
        b:close()
    end)

    it("gives back the connection counts of a worker killed with its connections", function()
        local g = helpers.start_weir({ workers = 1, tiers = tiers,
                                       apis = { api("Held", "Gold", { max_connections = { api = 2 } }) } })
        local a, b = open(g, "/held"), open(g, "/held")
        local ws, res = helpers.ws_connect(g.port, { path = "/held" })
        assert.is_nil(ws)
        assert.equal(429, res.status)
        -- the worker's pid, as weir logs it
        local started = g:wait_log(function(r) return r.msg == "worker started" end)
        helpers.kill(started.pid, "KILL")
        local rec = g:wait_log(function(r) return r.msg == "connection counts of a gone worker given back" end, 15)
        assert.equal(started.pid, rec.worker_pid)
        assert.equal(2, rec.counts)
        assert.is_nil((a:recv_frame(5)))                   -- its clients lost their connections
        assert.is_nil((b:recv_frame(5)))
        -- the restarted worker admits two again, and no more
        local c = helpers.wait_until(function() return (helpers.ws_connect(g.port, { path = "/held" })) end, 15,
                                     "a connection to the restarted worker")
        local d = open(g, "/held")
        ws, res = helpers.ws_connect(g.port, { path = "/held" })
        assert.is_nil(ws)
        assert.equal(429, res.status)
        assert.equal("again", helpers.ask(d, "again"))
        c:close(); d:close()
        g:stop()
    end)

    it("answers a connection over max_connections with 101, the JSON and close 1013 when configured", function()
        local a = open(gw, "/conns1013")
        local be_before = #be:connections()
        local b = open(gw, "/conns1013")
        local j = helpers.expect_error_close(b, "/problems/reach-maximum-connections", 1013)
        assert.equal("Maximum number of connections reached", j.error.message)
        -- the refused connection never reached the backend
        assert.equal(be_before, #be:connections())
        assert.equal("still", helpers.ask(a, "still"))
        a:close()
    end)

    it("believes X-Forwarded-For only from a trusted proxy", function()
        -- 127.0.0.1 is trusted here: two different forwarded clients have two buckets
        local one = open(gw, "/proxied", { ["X-Forwarded-For"] = "192.0.2.1" })
        assert.equal(5, (count_echoes(exchange(one, msgs(7)))))
        local two = open(gw, "/proxied", { ["X-Forwarded-For"] = "192.0.2.2" })
        assert.equal(5, (count_echoes(exchange(two, msgs(7)))))
        local again = open(gw, "/proxied", { ["X-Forwarded-For"] = "10.9.9.9, 192.0.2.1" })
        assert.equal(0, (count_echoes(exchange(again, { "x" }))))
        one:close(); two:close(); again:close()
    end)
end)
