--- bench-frame-noop: a bench-only policy whose on_frame_in returns nothing.
--
-- With a frame hook in the chain weir reassembles each client message and
-- calls Lua once per message (weir_lua_frame → runtime.frame → chain.run →
-- this function), then forwards it unchanged. The payload is never read, so
-- nothing is copied into Lua. bench/run uses it for the "weir + no-op
-- on_frame_in" row: the price of the Lua runtime itself per message.

local _M = {
    name     = "bench-frame-noop",
    priority = 10,
}

function _M.on_frame_in(ctx, conf, frame)   -- luacheck: no unused args
end

return _M
