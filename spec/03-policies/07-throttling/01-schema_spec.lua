-- throttling's configuration, and the tiers it reads from the
-- configuration file (FILE:LINE: FIELD: message errors).

local fakes = require "fakes"
local weir_conf = require "weir.conf"

describe("throttling schema", function()
    local policy

    setup(function() policy = fakes.policy("throttling") end)
    teardown(fakes.cleanup)

    local function errors(conf)
        local out, errs = fakes.check(policy, conf)
        assert.is_nil(out)
        return table.concat(errs, "\n")
    end

    it("normalises a minimal configuration with its defaults", function()
        local conf = assert(fakes.check(policy, {}))
        assert.same({ "subscription" }, conf.level)
        assert.equal("429", conf.connection_limit_answer)
        assert.same({}, conf.trusted_proxies)
        assert.is_true(conf.levels.subscription)
    end)

    it("takes one level or a list of them", function()
        local conf = assert(fakes.check(policy, { level = { "api", "connection" }, api_tier = "Gold" }))
        assert.is_true(conf.levels.api)
        assert.is_true(conf.levels.connection)
        assert.is_nil(conf.levels.subscription)
    end)

    it("refuses unknown levels, an api level without its tier, bad proxies and answers", function()
        assert.matches('expected "subscription", "application", "api" or "connection", got "user"',
                       errors({ level = "user" }), 1, true)
        assert.matches("api_tier", errors({ level = "api" }), 1, true)
        assert.matches("trusted_proxies", errors({ trusted_proxies = { "proxy.example" } }), 1, true)
        assert.matches("connection_limit_answer", errors({ connection_limit_answer = "503" }), 1, true)
        assert.matches("max_connections.client", errors({ max_connections = { client = -1 } }), 1, true)
    end)
end)

describe("tiers in the configuration", function()
    local function parse(tiers_src)
        return weir_conf.parse(([[
return {
  listen = { { port = 8080 } },
  tiers = %s,
  apis = { { name = "a", context = "/a", versions = { { version = "v1",
             endpoints = { production = "ws://127.0.0.1:1/" } } } } },
}]]):format(tiers_src), "t.conf.lua")
    end

    it("normalises limits, actions and defaults", function()
        local conf = assert(parse([[{
    Gold = { limits = { { frames = 1000, per = "minute" }, { bytes = "10m", per = "minute", burst = "1m", direction = "in" } } },
    Free = { limits = {}, action = "close", action_out = "drop" },
  }]]))
        local g = conf.tiers.Gold
        assert.equal("drop", g.action)
        assert.equal("delay", g.action_out)
        assert.same({ unit = 0, count = 1000, period_us = 60e6, burst = 1000, dirs = 3 }, g.limits[1])
        assert.same({ unit = 1, count = 10 * 1048576, period_us = 60e6, burst = 1048576, dirs = 1 }, g.limits[2])
        assert.equal("close", conf.tiers.Free.action)
        assert.same({}, conf.tiers.Free.limits)
    end)

    it("reports each mistake with its line and field", function()
        local conf, errs = parse([[{
    Bad = {
      limits = { { frames = 0, per = "minute" }, { bytes = "1k", per = "week" }, { frame = 3, per = 1 } },
      action = "nope",
    },
  }]])
        assert.is_nil(conf)
        local all = table.concat(errs, "\n")
        assert.matches("t.conf.lua:5: tiers.Bad.limits[1].frames: expected a whole number above 0", all, 1, true)
        assert.matches('t.conf.lua:5: tiers.Bad.limits[2].per: expected "second"', all, 1, true)
        assert.matches("t.conf.lua:5: tiers.Bad.limits[3].frame: unknown field", all, 1, true)
        assert.matches('t.conf.lua:6: tiers.Bad.action: expected one of drop, delay, close, got "nope"', all, 1, true)
    end)
end)
