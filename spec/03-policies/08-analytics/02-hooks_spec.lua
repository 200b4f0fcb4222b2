-- analytics' on_handshake with a fake ctx: it turns analytics on with the
-- policy's sinks and the client's address, from a trusted proxy's
-- X-Forwarded-For only, and never refuses a connection.

local fakes = require "fakes"

describe("analytics on_handshake", function()
    local policy
    local SINKS = { { type = "file", path = "/tmp/events.jsonl" } }

    setup(function() policy = fakes.policy("analytics") end)
    teardown(fakes.cleanup)

    it("turns analytics on with the sinks and the peer's address", function()
        local ctx = fakes.ctx({ client_ip = "192.0.2.10", headers = { ["X-Forwarded-For"] = "203.0.113.1" } })
        local v = fakes.run(policy, { sinks = SINKS }, "on_handshake", ctx)
        assert.equal("pass", v.kind)
        assert.equal("192.0.2.10", ctx.analytics_on.client)
        assert.equal("file:/tmp/events.jsonl", ctx.analytics_on.sinks[1].name)
    end)

    it("reports the client a trusted proxy names, skipping trusted proxies in the list", function()
        local ctx = fakes.ctx({ client_ip = "10.0.0.2",
                                headers = { ["X-Forwarded-For"] = "198.51.100.9, 203.0.113.5, 10.0.0.3" } })
        fakes.run(policy, { sinks = SINKS, trusted_proxies = { "10.0.0.2", "10.0.0.3" } }, "on_handshake", ctx)
        assert.equal("203.0.113.5", ctx.analytics_on.client)
    end)

    it("lets the connection go on when analytics cannot be turned on", function()
        local ctx = fakes.ctx()
        ctx.analytics = function() return nil, "too many different lists of analytics sinks" end
        local v = fakes.run(policy, { sinks = SINKS }, "on_handshake", ctx)
        assert.equal("pass", v.kind)
        assert.equal("analytics not turned on", ctx.logs[1].msg)
        assert.equal("warn", ctx.logs[1].level)
    end)

    it("runs before every other stock policy", function()
        for _, name in ipairs({ "origin", "jwt", "introspection", "key-auth", "subscription", "throttling" }) do
            assert.is_true(policy.priority > fakes.policy(name).priority, name)
        end
    end)
end)
