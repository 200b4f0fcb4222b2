-- analytics' configuration: sinks of three types, each with its own
-- options, defaults filled by type, names shared by chains (docs/policies/analytics.md).

local fakes = require "fakes"
local weir_conf = require "weir.conf"

describe("analytics schema", function()
    local policy

    setup(function() policy = fakes.policy("analytics") end)
    teardown(fakes.cleanup)

    local function errors(conf)
        local out, errs = fakes.check(policy, conf)
        assert.is_nil(out)
        return table.concat(errs, "\n")
    end

    it("normalises sinks with their type's defaults and names", function()
        local conf = assert(fakes.check(policy, { sinks = {
            { type = "file", path = "/var/log/weir/events.jsonl" },
            { type = "redis", stream = "weir:events" },
            { type = "http", url = "https://collector.example/in", name = "collector" },
        } }))
        assert.equal(1000, conf.interval)
        assert.same({}, conf.trusted_proxies)
        local f, r, h = conf.sinks[1], conf.sinks[2], conf.sinks[3]
        assert.equal("file:/var/log/weir/events.jsonl", f.name)
        assert.is_nil(f.maxlen)
        assert.is_nil(f.format)
        assert.equal("redis:weir:events", r.name)
        assert.equal(1000000, r.maxlen)
        assert.equal(60, r.queue)
        assert.equal("collector", h.name)
        assert.equal("ndjson", h.format)
        assert.equal(5000, h.timeout)
    end)

    it("names an http sink by its URL without userinfo, query or fragment, and bounds queues in bytes", function()
        local conf = assert(fakes.check(policy, { sinks = {
            { type = "http", url = "https://user:pa%40ss@collector.example:8443/in/x?api_key=SECRET&a=b#frag" },
            { type = "http", url = "http://collector.example?token=SECRET" },
            { type = "redis", stream = "s", queue_bytes = "1m" },
        } }))
        assert.equal("http:https://collector.example:8443/in/x", conf.sinks[1].name)
        assert.equal("http:http://collector.example", conf.sinks[2].name)
        assert.equal(64 * 1024 * 1024, conf.sinks[1].queue_bytes)
        assert.equal(1024 * 1024, conf.sinks[3].queue_bytes)
        assert.matches("sinks[1].queue_bytes",
                       errors({ sinks = { { type = "http", url = "http://c/", queue_bytes = 1000 } } }), 1, true)
    end)

    it("takes an interval and trusted proxies", function()
        local conf = assert(fakes.check(policy, { interval = "250ms", trusted_proxies = { "10.0.0.1", "::1" },
                                                  sinks = { { type = "file", path = "/tmp/e" } } }))
        assert.equal(250, conf.interval)
        assert.is_true(conf._trusted["10.0.0.1"])
        assert.is_true(conf._trusted["::1"])
    end)

    it("refuses sinks without what their type needs, or with another type's options", function()
        assert.matches("sinks: required field missing", errors({}), 1, true)
        assert.matches("sinks[1]: a file sink needs path", errors({ sinks = { { type = "file" } } }), 1, true)
        assert.matches("sinks[1]: a redis sink needs stream", errors({ sinks = { { type = "redis" } } }), 1, true)
        assert.matches("sinks[1]: a http sink needs url", errors({ sinks = { { type = "http" } } }), 1, true)
        assert.matches("sinks[1].type: expected one of file, redis, http",
                       errors({ sinks = { { type = "kafka" } } }), 1, true)
        assert.matches("stream is an option of redis sinks, not of file sinks",
                       errors({ sinks = { { type = "file", path = "/tmp/e", stream = "s" } } }), 1, true)
        assert.matches("expected an http:// or https:// URL",
                       errors({ sinks = { { type = "http", url = "collector:80" } } }), 1, true)
        assert.matches("sinks[1].queue", errors({ sinks = { { type = "http", url = "http://c/", queue = 0 } } }),
                       1, true)
        assert.matches("interval", errors({ interval = "10ms", sinks = { { type = "file", path = "/tmp/e" } } }),
                       1, true)
        assert.matches("trusted_proxies",
                       errors({ trusted_proxies = { "proxy.example" }, sinks = { { type = "file", path = "/e" } } }),
                       1, true)
    end)

    it("refuses one sink named twice in a list", function()
        assert.matches('sinks[1] and sinks[2] are the same sink "file:/tmp/e"',
                       errors({ sinks = { { type = "file", path = "/tmp/e" }, { type = "file", path = "/tmp/e" } } }),
                       1, true)
    end)
end)

describe("analytics sinks shared by chains", function()
    local function parse(global, version)
        return weir_conf.parse(([[
return {
  listen = { { port = 8080 } },
  policies = { { "analytics", %s } },
  apis = { { name = "a", context = "/a", versions = { { version = "v1",
             endpoints = { production = "ws://127.0.0.1:1/" },
             policies = { { "analytics", %s } } } } } },
}]]):format(global, version), "t.conf.lua")
    end

    it("accepts one sink named by two chains with the same options", function()
        assert(parse([[{ sinks = { { type = "file", path = "/tmp/e", name = "events" } } }]],
                     [[{ sinks = { { type = "file", path = "/tmp/e", name = "events" } } }]]))
    end)

    it("refuses one name for two different sinks, at the second, with its line", function()
        local conf, errs = parse([[{ sinks = { { type = "file", path = "/tmp/e", name = "events" } } }]],
                                 [[{ sinks = { { type = "file", path = "/tmp/other", name = "events" } } }]])
        assert.is_nil(conf)
        assert.matches('^t%.conf%.lua:6: apis%[1%]%.versions%[1%]%.policies%[1%]%[2%]%.sinks: sink "events" is '
                       .. "configured differently at policies%[1%]%[2%]%.sinks%[1%]", errs[1])
    end)
end)
