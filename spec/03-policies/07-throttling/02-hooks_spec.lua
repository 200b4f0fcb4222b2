-- throttling's on_handshake with a fake ctx: which limits it hands to the
-- core (ctx:limit) for each level, under which keys and tiers, and who is
-- refused. (Connection counts need the core's shared memory: see
-- 03-integration_spec.lua.)

local fakes = require "fakes"
local limits = require "weir.limits"

describe("throttling on_handshake", function()
    local policy, saved

    local TIERS = {
        Gold = { action = "drop", action_out = "delay",
                 limits = { { unit = 0, count = 1000, period_us = 60e6, burst = 1000, dirs = 3 },
                            { unit = 1, count = 1024, period_us = 60e6, burst = 1024, dirs = 3 } } },
        Silver = { action = "close", action_out = "drop", on_redis_down = "closed",
                   limits = { { unit = 0, count = 5, period_us = 60e6, burst = 5, dirs = 1 } } },
    }

    setup(function()
        policy = fakes.policy("throttling")
        saved = limits.tiers
        limits.tiers = TIERS
    end)
    teardown(function()
        limits.tiers = saved
        fakes.cleanup()
    end)

    -- A fake ctx whose ctx:limit records its calls.
    local function ctx(opts)
        local c = fakes.ctx(opts)
        c.limited = {}
        c.limit = function(self, key, spec, action, action_out, on_redis_down)
            self.limited[#self.limited + 1] = { key = key, spec = spec, action = action, action_out = action_out,
                                                on_redis_down = on_redis_down }
            return true
        end
        return c
    end

    local function keys(c)
        local out = {}
        for i, l in ipairs(c.limited) do out[i] = l.key or "(own)" end
        return out
    end

    local alice = { application = "ShopApp", subscriber = "alice", tier = "Gold" }

    it("limits the subscription by default, with every limit of the consumer's tier and its actions", function()
        local c = ctx({ api = "Shop", consumer = alice })
        assert.same({ kind = "pass" }, fakes.run(policy, {}, "on_handshake", c))
        assert.same({ "sub:ShopApp:Shop:Gold:1", "sub:ShopApp:Shop:Gold:2" }, keys(c))
        assert.equal(TIERS.Gold.limits[2], c.limited[2].spec)
        assert.equal("drop", c.limited[1].action)
        assert.equal("delay", c.limited[1].action_out)
    end)

    it("adds every level listed: application, connection (its own bucket) and api under api_tier", function()
        local c = ctx({ api = "Shop", version = "2", consumer = alice })
        local conf = { level = { "subscription", "application", "connection", "api" }, api_tier = "Silver" }
        assert.same({ kind = "pass" }, fakes.run(policy, conf, "on_handshake", c))
        assert.same({ "sub:ShopApp:Shop:Gold:1", "sub:ShopApp:Shop:Gold:2",
                      "app:ShopApp:alice:Gold:1", "app:ShopApp:alice:Gold:2",
                      "(own)", "(own)", "api:Shop:2:Silver:1" }, keys(c))
        assert.equal("close", c.limited[7].action)
    end)

    it("hands each limit its tier's on_redis_down (for limits shared through Redis)", function()
        local c = ctx({ api = "Shop", consumer = alice })
        fakes.run(policy, { level = { "subscription", "api" }, api_tier = "Silver" }, "on_handshake", c)
        assert.is_nil(c.limited[1].on_redis_down)             -- Gold does not say: ctx:limit's default, open
        assert.equal("closed", c.limited[3].on_redis_down)
    end)

    it("keys an anonymous client by its address under anonymous_tier, or does not limit it", function()
        local c = ctx({ api = "Pub", client_ip = "192.0.2.7" })
        fakes.run(policy, { anonymous_tier = "Silver" }, "on_handshake", c)
        assert.same({ "ip:192.0.2.7:Pub:Silver:1" }, keys(c))
        local none = ctx({ api = "Pub" })
        assert.same({ kind = "pass" }, fakes.run(policy, {}, "on_handshake", none))
        assert.same({}, keys(none))
    end)

    it("believes X-Forwarded-For only from a trusted proxy, taking the last untrusted entry", function()
        local conf = { anonymous_tier = "Silver", trusted_proxies = { "10.0.0.1", "10.0.0.2" } }
        local via = ctx({ api = "Pub", client_ip = "10.0.0.1",
                          headers = { ["X-Forwarded-For"] = "1.1.1.1, 198.51.100.9, 10.0.0.2" } })
        fakes.run(policy, conf, "on_handshake", via)
        assert.same({ "ip:198.51.100.9:Pub:Silver:1" }, keys(via))
        local direct = ctx({ api = "Pub", client_ip = "203.0.113.5", headers = { ["X-Forwarded-For"] = "1.1.1.1" } })
        fakes.run(policy, conf, "on_handshake", direct)
        assert.same({ "ip:203.0.113.5:Pub:Silver:1" }, keys(direct))
    end)

    it("treats a consumer without a tier as Unlimited, and refuses an unknown tier", function()
        local c = ctx({ consumer = { application = "A", subscriber = "s" } })
        assert.same({ kind = "pass" }, fakes.run(policy, {}, "on_handshake", c))
        assert.same({}, keys(c))
        local v = fakes.run(policy, {}, "on_handshake",
                            ctx({ consumer = { application = "A", subscriber = "s", tier = "Platinum" } }))
        assert.equal("error", v.kind)
        assert.equal(403, v.status)
        assert.equal("/problems/forbidden", v.problem)
    end)

    it("fails the handshake when the core refuses a limit", function()
        local c = ctx({ consumer = alice })
        c.limit = function() return nil, "the limits zone is not mapped" end
        local v = fakes.run(policy, {}, "on_handshake", c)
        assert.equal("fail", v.kind)
        assert.matches("the limits zone is not mapped", tostring(v.err), 1, true)
    end)
end)
