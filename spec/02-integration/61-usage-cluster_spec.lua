-- Usage across a cluster (docs/analytics.md, "Usage across hosts"): two real
-- weir instances share one real redis-server (started by the spec on a free
-- loopback port) and write their analytics events to one Redis stream;
-- known traffic through both (messages of known sizes per application, some
-- of them throttled) gives, with scope=cluster on either host, the exact sums
-- of both, while scope=host gives each host its own. A stream trimmed by a
-- tiny maxlen answers complete=false; a weir without metrics.usage_stream
-- refuses scope=cluster; with Redis stopped (slow) or killed (down), 503.
local helpers = require "helpers"
local cjson = require "cjson.safe"

local TOKEN = "admin-token-" .. string.rep("u", 24)
local STREAM, TINY = "weir:usage-events", "weir:tiny-events"
local KEYS = { A = "key-of-app-a-0123456789", B = "key-of-app-b-0123456789", C = "key-of-app-c-0123456789" }
local FIELDS = { "messages_in", "messages_out", "bytes_in", "bytes_out", "throttled", "connections" }

describe("usage across hosts, from the analytics stream", function()
    local be, rd, dir, keys_file
    local gw = {}          -- gw[1] alpha, gw[2] beta: the cluster; gw.tiny, gw.plain

    local function admin(g, path)
        return helpers.admin_request(g.admin_port, TOKEN, "GET", path)
    end

    local function conf(name, stream, usage_stream)
        local an = { "analytics", { interval = "200ms", sinks = { { type = "redis", stream = stream,
                                                                     maxlen = stream == TINY and 1 or 100000 } } } }
        return {
            state = { redis = rd.url, host = name, timeout = "2s" },
            metrics = { usage_stream = usage_stream },
            tiers = {
                Gold = { limits = { { frames = 1000, per = "hour" } } },
                Silver = { limits = { { frames = 5, per = "hour", direction = "in" } }, action = "drop" },
            },
            apis = { helpers.policy_api("Echo", "/echo", be, {
                an,
                { "key-auth", { keys_file = keys_file, header = "X-API-Key" } },
                { "throttling", { level = "subscription" } },
            }) },
        }
    end

    setup(function()
        be = helpers.start_backend("echo")
        rd = helpers.start_redis()
        -- stream nodes of 2 entries, so that "MAXLEN ~ 1" trims the tiny stream for real
        assert.equal("OK", rd:command("CONFIG", "SET", "stream-node-max-entries", "2"))
        dir = helpers.tmpdir()
        keys_file = helpers.write_file(dir .. "/keys.txt", table.concat({
            "sha256:" .. helpers.sha256(KEYS.A) .. "  application=AppA subscriber=alice tier=Gold",
            "sha256:" .. helpers.sha256(KEYS.B) .. "  application=AppB subscriber=bob tier=Silver",
            "sha256:" .. helpers.sha256(KEYS.C) .. "  application=AppC subscriber=carol tier=Gold",
        }, "\n") .. "\n")
        gw[1] = helpers.start_weir_admin(conf("alpha", STREAM, STREAM), dir, TOKEN)
        gw[2] = helpers.start_weir_admin(conf("beta", STREAM, STREAM), dir, TOKEN)
        local tiny = conf("gamma", TINY, TINY)
        tiny.workers = 1
        gw.tiny = helpers.start_weir_admin(tiny, dir, TOKEN)
        gw.plain = helpers.start_weir_admin({ workers = 1, apis = { helpers.api("Echo", "/echo", be) } }, dir, TOKEN)
    end)

    teardown(helpers.cleanup)

    local function connect(g, key)
        local ws, res = helpers.ws_connect(g.port, { path = "/echo", headers = { ["X-API-Key"] = key } })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        return ws
    end

    local exchange = helpers.exchange

    local function close(ws)
        local f = ws:close_handshake(1000, "bye")
        assert(f and f.opcode == 8, "no close answered")
        ws:close()
    end

    local function messages(n, size)
        local t = {}
        for i = 1, n do t[i] = string.rep(string.char(96 + i), size) end
        return t
    end

    -- Entries of KEY whose event field is EVENT.
    local function count(key, event)
        local n = 0
        for _, e in ipairs(rd:command("XRANGE", key, "-", "+") or {}) do
            if e[2][2] == event then n = n + 1 end
        end
        return n
    end

    -- The items of a usage answer by their application (and subscriber).
    local function by_app(items)
        local t = {}
        for _, it in ipairs(items) do t[it.application] = it end
        return t
    end

    local function numbers(it)
        local t = {}
        for _, f in ipairs(FIELDS) do t[f] = it and it[f] or 0 end
        return t
    end

    it("sums both hosts' traffic with scope=cluster; scope=host gives each its own", function()
        -- alpha: AppA 7 messages of 10 bytes; AppB 8 of 3 bytes, 3 of them over its limit of 5
        local a = connect(gw[1], KEYS.A)
        assert.equal(7, #exchange(a, messages(7, 10)))
        local b = connect(gw[1], KEYS.B)
        assert.equal(5, #exchange(b, messages(8, 3)))
        -- beta: AppA 4 messages of 20 bytes; AppC 2 of 5 bytes
        local a2 = connect(gw[2], KEYS.A)
        assert.equal(4, #exchange(a2, messages(4, 20)))
        local c = connect(gw[2], KEYS.C)
        assert.equal(2, #exchange(c, messages(2, 5)))
        close(a); close(b); close(a2); close(c)
        helpers.wait_until(function() return count(STREAM, "close") == 4 end, 20, "the 4 close events in the stream")

        local want_host = {
            { AppA = { 7, 7, 70, 70, 0, 1 }, AppB = { 8, 5, 24, 15, 3, 1 } },
            { AppA = { 4, 4, 80, 80, 0, 1 }, AppC = { 2, 2, 10, 10, 0, 1 } },
        }
        local hosts = {}
        for i = 1, 2 do
            hosts[i] = helpers.wait_until(function()
                local r = admin(gw[i], "/usage?by=application&range=hour")
                assert.equal(200, r.status, r.body)
                local t = by_app(r.json.items)
                local n = 0
                for app, w in pairs(want_host[i]) do
                    if t[app] and t[app].messages_out == w[2] and t[app].connections == 1 then n = n + 1 end
                end
                return n == 2 and r.json
            end, 10, "host " .. i .. "'s usage store")
            assert.equal("host", hosts[i].source)
            assert.is_nil(hosts[i].complete)
            local t = by_app(hosts[i].items)
            local apps = 0
            for app, w in pairs(want_host[i]) do
                local want = {}
                for k, f in ipairs(FIELDS) do want[f] = w[k] end
                assert.same(want, numbers(t[app]), "host " .. i .. " " .. app)
                apps = apps + 1
            end
            assert.equal(apps, #hosts[i].items)        -- only its own
        end

        for i = 1, 2 do
            local r = admin(gw[i], "/usage?by=application&range=hour&scope=cluster")
            assert.equal(200, r.status, r.body)
            assert.equal("stream", r.json.source)
            assert.is_true(r.json.complete)
            assert.equal("application", r.json.by)
            assert.equal("hour", r.json.range)
            assert.truthy(r.json.events >= 12)
            local t = by_app(r.json.items)
            assert.equal(3, #r.json.items)
            -- the exact sums of both hosts
            for _, app in ipairs({ "AppA", "AppB", "AppC" }) do
                local want = {}
                for _, f in ipairs(FIELDS) do
                    want[f] = numbers(by_app(hosts[1].items)[app])[f] + numbers(by_app(hosts[2].items)[app])[f]
                end
                assert.same(want, numbers(t[app]), app)
            end
            assert.same({ messages_in = 11, messages_out = 11, bytes_in = 150, bytes_out = 150, throttled = 0,
                          connections = 2 }, numbers(t.AppA))
            assert.same({ messages_in = 8, messages_out = 5, bytes_in = 24, bytes_out = 15, throttled = 3,
                          connections = 1 }, numbers(t.AppB))
            -- last access: when the last messages were counted, not before the host saw the last frame
            assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", t.AppA.last_access)
            for h = 1, 2 do
                assert.truthy(t.AppA.last_access >= by_app(hosts[h].items).AppA.last_access)
            end
            -- sorted by messages, in and out: AppA 22, AppB 13, AppC 4
            assert.equal("AppA", r.json.items[1].application)
            assert.equal("AppB", r.json.items[2].application)
            assert.equal("AppC", r.json.items[3].application)
        end

        -- by subscriber and api, filters, top
        local r = admin(gw[2], "/usage?by=subscriber&range=day&scope=cluster&application=AppB")
        assert.equal(200, r.status, r.body)
        assert.equal(1, #r.json.items)
        assert.equal("bob", r.json.items[1].subscriber)
        assert.equal("AppB", r.json.items[1].application)
        assert.equal(3, r.json.items[1].throttled)
        r = admin(gw[1], "/usage?by=api&range=minute&scope=cluster")
        assert.equal(200, r.status, r.body)
        local echo = r.json.items[1]
        -- a slow machine may have taken more than a minute: at most what the hour holds
        if echo then
            assert.equal("Echo", echo.api)
            assert.equal("1.0", echo.version)
            assert.truthy(echo.messages_in <= 21)
        end
        r = admin(gw[1], "/usage?by=api&range=hour&scope=cluster")
        assert.same({ messages_in = 21, messages_out = 18, bytes_in = 184, bytes_out = 175, throttled = 3,
                      connections = 4 }, numbers(r.json.items[1]))
        r = admin(gw[2], "/usage/top?range=hour&scope=cluster&order=throttled&limit=1")
        assert.equal(200, r.status, r.body)
        assert.equal("stream", r.json.source)
        assert.equal(1, #r.json.items)
        assert.equal("AppB", r.json.items[1].application)
        r = admin(gw[2], "/usage/top?range=hour&scope=cluster&order=bytes")
        assert.equal("AppA", r.json.items[1].application)
        assert.equal(3, #r.json.items)
        r = admin(gw[2], "/usage/top?range=hour")
        assert.equal("host", r.json.source)
        r = admin(gw[1], "/usage?scope=everywhere")
        assert.equal(400, r.status)
        assert.equal("/problems/bad-request", r.json.error.type)
    end)

    it("says complete=false when the stream was trimmed past the range's start", function()
        for _ = 1, 4 do
            local ws = connect(gw.tiny, KEYS.A)
            assert.equal(2, #exchange(ws, messages(2, 4)))
            close(ws)
        end
        -- every event was written: 4 connections, each a connect, messages and close
        helpers.wait_until(function()
            local info = rd:command("XINFO", "STREAM", TINY)
            if type(info) ~= "table" then return false end       -- no stream yet
            for i = 1, #info - 1, 2 do
                if info[i] == "entries-added" then return info[i + 1] >= 12 end
            end
        end, 20, "12 events added to the tiny stream")
        assert.truthy(rd:command("XLEN", TINY) < 12)
        local r = admin(gw.tiny, "/usage?by=application&range=hour&scope=cluster")
        assert.equal(200, r.status, r.body)
        assert.is_false(r.json.complete)
        assert.equal("stream", r.json.source)
        local got = r.json.items[1] and r.json.items[1].messages_in or 0
        assert.truthy(got < 8)
        -- the host's own store has them all
        local h = admin(gw.tiny, "/usage?by=application&range=hour").json
        assert.equal(8, h.items[1].messages_in)
    end)

    it("refuses scope=cluster without metrics.usage_stream, with the error JSON", function()
        local r = admin(gw.plain, "/usage?by=application&scope=cluster")
        assert.equal(400, r.status, r.body)
        assert.equal("error", r.json.type)
        assert.equal("/problems/bad-request", r.json.error.type)
        assert.equal(400, r.json.error.code)
        assert.truthy(r.json.error.message:find("metrics.usage_stream", 1, true))
        assert.equal(400, admin(gw.plain, "/usage/top?scope=cluster").status)
        assert.equal(200, admin(gw.plain, "/usage/top").status)
    end)

    it("answers 503 while Redis is stopped (slow) or gone, and the host scope all along", function()
        helpers.kill(rd.pid, "STOP")
        local r = admin(gw[1], "/usage?by=application&scope=cluster")
        assert.equal(503, r.status, r.body)
        assert.equal("/problems/unavailable", r.json.error.type)
        assert.equal(200, admin(gw[1], "/usage?by=application").status)
        helpers.kill(rd.pid, "CONT")
        helpers.wait_until(function()
            return admin(gw[1], "/usage?by=application&scope=cluster").status == 200
        end, 20, "the stream readable again")
        helpers.kill(rd.pid, "KILL")
        helpers.wait(rd.pid, 10)
        r = admin(gw[2], "/usage/top?scope=cluster")
        assert.equal(503, r.status, r.body)
        assert.equal("error", r.json.type)
        assert.equal(503, r.json.error.code)
        assert.is_nil(cjson.decode(r.body).items)
        assert.equal(200, admin(gw[2], "/usage/top").status)
    end)
end)
