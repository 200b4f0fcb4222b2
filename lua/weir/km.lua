--- What policies may ask of weir's key manager (weir.keymanager): whether
-- a token's credential is revoked, an application's subscription, the keys
-- weir's tokens verify with. Nothing more: a policy cannot read the store,
-- its secrets or its signing keys, nor issue tokens.
--
-- @module weir.km

local km = require "weir.keymanager"

return setmetatable({}, {
    __index = {
        revoked = function(claims, live) return km.revoked(claims, live) end,
        subscription = function(app, api, version, live) return km.subscription(app, api, version, live) end,
        keyset = function(live) return km.keyset(live) end,
    },
    __newindex = function() error("weir.km is read-only", 2) end,
    __metatable = false,
})
