-- state.redis (docs/configuration.md#state): the setting checked at load,
-- each worker's connection to a real redis-server started here (AUTH,
-- SELECT, a refused password), and a reload that changes it. The shared
-- limits themselves: spec/03-policies/07-throttling/04-shared_spec.lua.
local helpers = require "helpers"

local function conf_source(state_line)
    return ([[
return {
  listen = { { address = "127.0.0.1", port = 8080 } },
  state = {
    %s
  },
  apis = {
    { name = "echo", context = "/echo",
      versions = { { version = "1.0", endpoints = { production = "ws://127.0.0.1:9000" } } } },
  },
}
]]):format(state_line)
end

-- weir -t on SRC: exit code and stderr.
local function check(src)
    local file = helpers.write_file(helpers.tmpdir() .. "/redis-" .. math.random(1e9) .. ".conf.lua", src)
    local code, _, err = helpers.run({ helpers.bin, "-t", "-c", file })
    return code, err, file
end

describe("state.redis", function()
    teardown(helpers.cleanup)

    it("a malformed URL is a configuration error naming the file, the line and the field", function()
        for url, msg in pairs({
            ["http://127.0.0.1:6379"] = 'expected a URL redis://[[user]:password@]host[:port][/db], got "http://127.0.0.1:6379"',
            ["redis://127.0.0.1:99999"] = 'invalid port in URL "redis://127.0.0.1:99999" (expected 1..65535)',
            ["redis://127.0.0.1/x"] = 'the database after the host must be a whole number, got "redis://127.0.0.1/x"',
            ["rediss://127.0.0.1"] = "rediss:// (TLS) is not supported",
        }) do
            local code, err, file = check(conf_source(('redis = "%s",'):format(url)))
            assert.equal(1, code)
            assert.truthy(err:find(("weir: %s:4: state.redis: %s"):format(file, msg), 1, true), err)
        end
    end)

    it("never shows the password of a refused URL", function()
        local code, err, file = check(conf_source('redis = "redis://admin:hunter2@127.0.0.1:6379/db",'))
        assert.equal(1, code)
        assert.truthy(err:find(file .. ':4: state.redis: the database after the host must be a whole number, got '
                               .. '"redis://admin:***@127.0.0.1:6379/db"', 1, true), err)
        assert.falsy(err:find("hunter2", 1, true))
    end)

    it("a host that does not resolve is reported at its line", function()
        local code, err, file = check(conf_source('redis = "redis://no-such-host.invalid:6379",'))
        assert.equal(1, code)
        assert.truthy(err:find(file .. ':4: state.redis: cannot resolve host "no-such-host.invalid"', 1, true), err)
    end)

    it("timeout and sync_interval are durations with bounds", function()
        local code, err, file = check(conf_source('redis = "redis://127.0.0.1:6379", sync_interval = "5ms",'))
        assert.equal(1, code)
        assert.truthy(err:find(file .. ':4: state.sync_interval: must be between 10ms and 10s, got "5ms"', 1, true), err)
    end)

    it("each worker connects with AUTH and SELECT, and a refused password is logged once, without it", function()
        local rd = helpers.start_redis({ password = "s3cret-pw" })
        local be = helpers.start_backend("echo")
        local tiers = { T = { limits = { { frames = 100, per = "hour", direction = "in" } } } }
        local apis = { helpers.policy_api("A", "/a", be, { { "throttling", { anonymous_tier = "T" } } }) }
        local gw = helpers.start_weir({ workers = 2, tiers = tiers, apis = apis,
                                        state = { redis = ("redis://:s3cret-pw@127.0.0.1:%d/3"):format(rd.port) } })
        helpers.wait_until(function()
            local n = 0
            for _, r in ipairs(gw:logs()) do if r.msg == "redis connected" then n = n + 1 end end
            return n == 2
        end, 10, "both workers connected")
        local ws = assert(helpers.ws_connect(gw.port, { path = "/a" }))
        assert.equal("x", helpers.ask(ws, "x"))
        -- the limit's state is in database 3, under the default prefix
        rd.db = 3
        local keys = helpers.wait_until(function()
            local k = rd:command("KEYS", "weir:limit:*")
            return #k > 0 and k
        end, 10, "the limit's key in database 3")
        assert.same({ "weir:limit:100:3600000000:f:ip:127.0.0.1:A:T:1" }, keys)
        rd.db = 0
        assert.same({}, rd:command("KEYS", "*"))
        ws:close()

        -- the wrong password: refused, said once per worker, and weir serves on
        local bad_apis = helpers.deepcopy(apis)
        bad_apis[2] = helpers.policy_api("Stats", "/stats", be, { { "spec-limit-stats", {} } })
        local bad = helpers.start_weir({ workers = 1, tiers = tiers, apis = bad_apis,
                                         policy_paths = { helpers.fixture_policies },
                                         state = { redis = ("redis://:wrong-pw@127.0.0.1:%d"):format(rd.port) } })
        local rec = bad:wait_log(function(r) return r.msg:find("^redis unreachable") end)
        assert.truthy(rec.error:find("refused: WRONGPASS", 1, true), rec.error)
        local w2 = assert(helpers.ws_connect(bad.port, { path = "/a" }))
        assert.equal("y", helpers.ask(w2, "y"))
        w2:close()
        -- it keeps trying (backoff), but says so only once
        helpers.wait_until(function()
            local s = assert(helpers.ws_connect(bad.port, { path = "/stats" }))
            local st = helpers.json((helpers.ask(s, "stats")))
            s:close()
            return st.sync.failures >= 3 and st.sync.down and not st.sync.ready
        end, 15, "three failed attempts")
        local n = 0
        for _, r in ipairs(bad:logs()) do if r.msg:find("^redis unreachable") then n = n + 1 end end
        assert.equal(1, n)
        local log = helpers.read_file(bad.log_path) .. helpers.read_file(gw.log_path)
        assert.falsy(log:find("wrong-pw", 1, true))
        assert.falsy(log:find("s3cret-pw", 1, true))
    end)

    -- (a worker's cleanup once zeroed a timer the loop still held: a crash
    -- that only the sanitizer build reports, make test SAN=1)
    it("stops cleanly on SIGTERM, with Redis answering and with Redis stopped", function()
        local rd = helpers.start_redis()
        local be = helpers.start_backend("echo")
        local tiers = { T = { limits = { { frames = 5, per = "hour", direction = "in" } } } }
        local apis = { helpers.policy_api("A", "/a", be, { { "throttling", { anonymous_tier = "T",
                                                                                 max_connections = { api = 10 } } } }) }
        for _, stopped in ipairs({ false, true }) do
            local gw = helpers.start_weir({ workers = 2, tiers = tiers, apis = apis, state = { redis = rd.url } })
            local ws = assert(helpers.ws_connect(gw.port, { path = "/a" }))
            assert.equal("x", helpers.ask(ws, "x"))
            helpers.wait_until(function() return rd:command("GET", "weir:limit:5:3600000000:f:ip:127.0.0.1:A:T:1") end,
                               10, "the limit in Redis")
            if stopped then rd:kill("STOP") end
            assert.equal(0, gw:stop())
            if stopped then rd:kill("CONT") end
            local n = 0
            for _, r in ipairs(gw:logs()) do if r.msg == "worker stopped" then n = n + 1 end end
            assert.equal(2, n)
            rd:command("FLUSHALL")
        end
    end)

    it("a reload that changes it says a restart is needed, and the workers keep their connection", function()
        local rd = helpers.start_redis()
        local be = helpers.start_backend("echo")
        local conf = { workers = 1, state = { redis = rd.url }, apis = { helpers.api("E", "/e", be) } }
        local gw = helpers.start_weir(conf)
        gw:wait_log(function(r) return r.msg == "redis connected" end)
        conf = helpers.deepcopy(gw.conf)
        conf.state.redis = "redis://127.0.0.1:1"
        helpers.write_file(gw.conf_path, helpers.serialize(conf))
        local code, out = helpers.run({ helpers.bin, "-s", "reload", "-c", gw.conf_path }, { timeout = 60 })
        assert.equal(3, code, out)
        assert.truthy(out:find(("needs a restart (not applied): state (redis): 127.0.0.1:%d -> 127.0.0.1:1"):format(rd.port),
                               1, true), out)
        for _, r in ipairs(gw:logs()) do assert.is_nil(r.msg:find("^redis unreachable"), r.msg) end
    end)

    it("a reload that changes its prefix or host name: not applied by the Lua runtime either", function()
        local rd = helpers.start_redis()
        local be = helpers.start_backend("echo")
        local gw = helpers.start_weir({ workers = 1, state = { redis = rd.url, host = "east" },
                                        apis = { helpers.api("E", "/e", be) } })
        -- the cluster's heartbeat (lua/weir/cluster.lua) writes its host under the prefix
        helpers.wait_until(function() return rd:command("HGET", "weir:hosts", "east") end, 10, "east's heartbeat")
        local conf = helpers.deepcopy(gw.conf)
        conf.state.key_prefix = "other:"
        conf.state.host = "west"
        helpers.write_file(gw.conf_path, helpers.serialize(conf))
        local code, out = helpers.run({ helpers.bin, "-s", "reload", "-c", gw.conf_path }, { timeout = 60 })
        assert.equal(3, code, out)
        assert.truthy(out:find("needs a restart (not applied): state (key_prefix, host):", 1, true), out)
        local function two_beats_unchanged(what)
            -- two heartbeats after WHAT, still under the old prefix and name
            for _ = 1, 2 do
                local before = rd:command("HGET", "weir:hosts", "east")
                helpers.wait_until(function() return rd:command("HGET", "weir:hosts", "east") ~= before end, 10,
                                   "a heartbeat after " .. what)
            end
            assert.same({}, rd:command("KEYS", "other:*"))
            assert.is_nil(rd:command("HGET", "weir:hosts", "west"))
        end
        two_beats_unchanged("the reload")
        -- a worker started after the reload (the master restarts a killed
        -- one) runs with the same state, not the file's
        local worker = assert(gw:worker_pids()[1])
        helpers.kill(worker, "KILL")
        helpers.wait_until(function()
            local w = gw:worker_pids()[1]
            return w and w ~= worker
        end, 10, "the worker restarted")
        gw:wait_log(function(r) return r.msg == "worker started" and r.pid ~= worker end)
        two_beats_unchanged("the worker's restart")
        -- and the host name alone is reported too
        conf = helpers.deepcopy(gw.conf)
        conf.state.host = "west"
        helpers.write_file(gw.conf_path, helpers.serialize(conf))
        code, out = helpers.run({ helpers.bin, "-s", "reload", "-c", gw.conf_path }, { timeout = 60 })
        assert.equal(3, code, out)
        assert.truthy(out:find("needs a restart (not applied): state (host):", 1, true), out)
    end)
end)
