--- bench-handshake-noop: a bench-only policy with nothing but an
-- on_handshake that does nothing.
--
-- Its chain has hooks, so every connection gets a ctx and one call into Lua
-- at the handshake (and the worker's Lua VM is in use), but no frame hook:
-- weir relays messages frame by frame without calling Lua. bench/run uses
-- it for the "weir + handshake-only chain" row, which should run at plain
-- weir's speed: a chain without frame hooks costs nothing per message.

local _M = {
    name     = "bench-handshake-noop",
    priority = 10,
}

function _M.on_handshake(ctx, conf)      -- luacheck: no unused args
end

return _M
