--- subscription: the consumer must be subscribed to the API version it
-- asks for, in weir's key manager (docs/policies/subscription.md).
--
-- An authentication policy earlier in the chain (key-auth, jwt or
-- introspection) identifies the consumer's application; this policy looks
-- up the subscription of that application (by name) to the API version
-- being opened, in the key manager's store (`key_manager` and `state_dir`
-- in weir's configuration). None: the handshake is refused with 403 and
-- `/problems/not-subscribed`. Found: the subscription's tier becomes
-- `ctx.consumer.tier`, which the throttling policy after it reads.
--
-- Lookups are cached per worker until the store changes. When a
-- subscription is removed or its application revoked through the admin
-- API, every worker rechecks its open connections and closes those no
-- longer subscribed (1008, the same problem).
--
-- @module subscription

local weir = require "weir"

local _M = {
    name     = "subscription",
    priority = 1200,      -- after authentication (1250 and up), before scopes (950) and throttling (940)
    schema   = {
        { name = "tier", type = "boolean", default = true,
          description = "the subscription's tier becomes ctx.consumer.tier (false: the tier the "
                        .. "authentication policy found stays)" },
    },
}

local function lookup(ctx, live)
    local c = ctx.consumer
    if type(c) ~= "table" or type(c.application) ~= "string" then
        return nil, weir.error("/problems/unauthorized", "This API needs an authenticated application", 401)
    end
    local km = require "weir.km"
    local sub, err = km.subscription(c.application, ctx.api.name, ctx.api.version, live)
    if sub == nil then
        return nil, weir.error("/problems/unavailable", "Subscriptions cannot be checked now", 503), err
    end
    if not sub then
        return nil, weir.error("/problems/not-subscribed", "The application is not subscribed to this API version",
                               403)
    end
    return sub
end

-- A copy of CTX's consumer with TIER (the consumer table may be shared).
local function with_tier(ctx, tier)
    local c = {}
    for k, v in pairs(ctx.consumer) do c[k] = v end
    c.tier = tier
    ctx.consumer = c
end

function _M.on_handshake(ctx, conf)
    local sub, verdict, why = lookup(ctx)
    if not sub then
        if why then ctx:log("warn", "subscriptions cannot be checked", { error = tostring(why) }) end
        return verdict
    end
    if conf.tier and ctx.consumer.tier ~= sub.tier then with_tier(ctx, sub.tier) end
end

--- After a change in the key manager (or a reload): close a connection
-- whose subscription is gone.
function _M.recheck(ctx, conf)
    local sub, verdict = lookup(ctx, true)
    if sub == nil and verdict and verdict.problem == "/problems/not-subscribed" then
        return weir.error("/problems/not-subscribed", "The application is no longer subscribed to this API version",
                          1008)
    end
    if sub and conf.tier and ctx.consumer.tier ~= sub.tier then with_tier(ctx, sub.tier) end
    return nil
end

return _M
