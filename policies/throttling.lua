--- throttling: the tiers' frame and bandwidth limits, and connection
-- limits, on every connection of an API version.
--
-- At the handshake, after an authentication policy has set `ctx.consumer`,
-- it names the buckets the connection is charged to, one per limit of the
-- tier and per level:
--
--   subscription  the consumer's application on this API ("sub:<app>:<api>:<tier>:<n>")
--   application   the application's end user, on every API ("app:<app>:<subscriber>:<tier>:<n>")
--   api           everyone calling this API version, under `api_tier` ("api:<api>:<version>:<tier>:<n>")
--   connection    this connection alone, under the consumer's tier (no shared state)
--
-- and hands them to the core with `ctx:limit`: from then on every message is
-- counted and judged in C, with no Lua call. Every level that applies is
-- checked and the strictest decides (a message passes only when all allow
-- it). Without a consumer (an anonymous API), the subscription and
-- application levels are keyed by the client's address
-- ("ip:<address>:<api>:<tier>:<n>" and "ip:<address>:<tier>:<n>") under
-- `anonymous_tier`; `X-Forwarded-For` is
-- believed only when the connection comes from one of `trusted_proxies`.
--
-- With `state.redis` configured, the keyed levels and the connection counts
-- are shared with the other hosts (the tier's `on_redis_down` says what its
-- limits do while Redis cannot be reached).
--
-- Connection limits (`max_connections`) count open connections per scope
-- in the host's shared memory; over one, the handshake is refused with 429,
-- `Retry-After` and `/problems/reach-maximum-connections` (or, with
-- `connection_limit_answer = "close"`, upgraded and closed 1013 after that
-- JSON). They are given back in `on_close`.
--
-- See docs/policies/throttling.md.
--
-- @module throttling

local weir = require "weir"
local limits = require "weir.limits"

local type, ipairs, tostring = type, ipairs, tostring
local format = string.format
local weir_error = weir.error

local LEVELS = { "subscription", "application", "api", "connection" }
local SCOPES = { "global", "api", "application", "subscriber", "client" }

local _M = {
    name     = "throttling",
    priority = 940,      -- after authentication (1250 and up) and scopes (950)
    schema   = {
        { name = "level", type = "strings", non_empty = true, default = { "subscription" },
          check = function(v)
              for _, l in ipairs(v) do
                  local ok = false
                  for _, k in ipairs(LEVELS) do if l == k then ok = true end end
                  if not ok then
                      return format('expected "subscription", "application", "api" or "connection", got %q', l)
                  end
              end
              return true
          end,
          description = 'the levels limited: "subscription", "application", "api", "connection", or a list' },
        { name = "api_tier", type = "string",
          description = 'the tier of the "api" level (required when it is listed)' },
        { name = "anonymous_tier", type = "string",
          description = "the tier of a connection without a consumer, keyed by its address (default: no limit)" },
        { name = "trusted_proxies", type = "list", default = {}, elements = { type = "string" },
          check = weir.check_addresses,
          description = "addresses of proxies whose X-Forwarded-For names the client (exact addresses)" },
        { name = "max_connections", type = "record", default = {},
          description = "connections open at once per scope (each optional)",
          fields = {
            { name = "global", type = "integer", min = 0, max = 2147483647,
              description = "on every API of the host" },
            { name = "api", type = "integer", min = 0, max = 2147483647,
              description = "on this API version" },
            { name = "application", type = "integer", min = 0, max = 2147483647,
              description = "per application (on every API)" },
            { name = "subscriber", type = "integer", min = 0, max = 2147483647,
              description = "per subscriber (on every API)" },
            { name = "client", type = "integer", min = 0, max = 2147483647,
              description = "per client address" },
          } },
        { name = "connection_limit_answer", type = "enum", one_of = { "429", "close" }, default = "429",
          description = 'how a connection over a limit is refused: "429" (HTTP 429 with Retry-After), or '
                        .. '"close" (upgrade, then the error JSON and close 1013: browsers cannot read a '
                        .. "refused handshake)" },
    },
}

function _M.init(conf)
    conf.levels = {}
    for _, l in ipairs(conf.level) do conf.levels[l] = true end
    if conf.levels.api and not conf.api_tier then
        return nil, 'the "api" level needs api_tier'
    end
    conf.trusted = {}
    for _, a in ipairs(conf.trusted_proxies) do conf.trusted[a] = true end
    return conf
end

local function tier_of(name)
    local tiers = limits.tiers or {}
    local t = tiers[name]
    if t then return t end
    if name == "Unlimited" then return { limits = {} } end
    return nil
end

-- Register TIER's limits under PREFIX (nil: the connection's own).
local function apply(ctx, prefix, tname, tier)
    for i, spec in ipairs(tier.limits) do
        local key = prefix and format("%s:%s:%d", prefix, tname, i) or nil
        local ok, err = ctx:limit(key, spec, tier.action, tier.action_out, tier.on_redis_down)
        if not ok then return nil, err end
    end
    return true
end

local function release(ctx)
    local held = ctx.vars.throttling_conns
    if not held then return end
    ctx.vars.throttling_conns = nil
    for _, c in ipairs(held) do limits.conn_release(c) end
end

-- Count the connection against every configured scope; nil and a verdict
-- when one is full.
local function count_connection(ctx, conf, c, addr)
    local mc = conf.max_connections
    local keys = {
        global = "conn:global",
        api = "conn:api:" .. ctx.api.name .. ":" .. ctx.api.version,
        application = c and ("conn:app:" .. tostring(c.application)) or nil,
        subscriber = c and ("conn:user:" .. tostring(c.subscriber)) or nil,
        client = "conn:ip:" .. addr,
    }
    for _, scope in ipairs(SCOPES) do
        local max, key = mc[scope], keys[scope]
        if max and key then
            local ref, why = limits.conn_acquire(key, max, true)
            if ref then
                local held = ctx.vars.throttling_conns or {}
                held[#held + 1] = ref
                ctx.vars.throttling_conns = held
            elseif why == "limit" then
                release(ctx)
                return nil, weir_error("/problems/reach-maximum-connections",
                                       "Maximum number of connections reached",
                                       conf.connection_limit_answer == "close" and 1013 or 429)
            else
                ctx:log("warn", "connection not counted: the connection table is full", { scope = scope })
            end
        end
    end
    return true
end

function _M.on_handshake(ctx, conf)
    local c = ctx.consumer
    local addr = ctx:client_address(conf.trusted)
    local ok, verdict = count_connection(ctx, conf, c, addr)
    if not ok then return verdict end

    local ctier_name = c and (c.tier or "Unlimited") or conf.anonymous_tier
    local ctier = ctier_name and tier_of(ctier_name)
    if ctier_name and not ctier then
        release(ctx)
        ctx:log("warn", "unknown throttling tier", { tier = ctier_name })
        return weir_error("/problems/forbidden", "Unknown subscription tier", 403)
    end
    local L = conf.levels
    local err
    if ctier then
        if L.subscription then
            local prefix = c and format("sub:%s:%s", tostring(c.application), ctx.api.name)
                           or format("ip:%s:%s", addr, ctx.api.name)
            ok, err = apply(ctx, prefix, ctier_name, ctier)
        end
        if L.application and not err then
            local prefix = c and format("app:%s:%s", tostring(c.application), tostring(c.subscriber))
                           or ("ip:" .. addr)
            -- anonymous: the subscription level already keyed the address
            if c or not L.subscription then ok, err = apply(ctx, prefix, ctier_name, ctier) end
        end
        if L.connection and not err then ok, err = apply(ctx, nil, ctier_name, ctier) end
    end
    if L.api and not err then
        local atier = tier_of(conf.api_tier)
        if not atier then
            release(ctx)
            ctx:log("warn", "unknown throttling tier", { tier = conf.api_tier })
            return weir_error("/problems/forbidden", "Unknown API tier", 403)
        end
        ok, err = apply(ctx, format("api:%s:%s", ctx.api.name, ctx.api.version), conf.api_tier, atier)
    end
    if err then
        release(ctx)
        error("throttling: " .. tostring(err))
    end
    return nil
end

function _M.on_close(ctx)
    release(ctx)
end

return _M
