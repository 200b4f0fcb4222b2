--- pong: weir answers the client's pings itself.
--
-- An application-level ping (`{"type":"ping"}`, not a WebSocket ping
-- frame) is answered at the gateway with `{"type":"pong"}` and never reaches
-- the backend. Every other message passes. When the connection ends, the
-- number of pings answered is logged.
--
-- This is an operator's own policy: it lives outside weir, in a directory
-- named by `policy_paths`, and is written exactly like a stock one.
--
-- @module pong
-- @usage policies = { { "pong", { ping_type = "ping", reply = '{"type":"pong"}' } } }

local weir  = require "weir"
local cjson = require "cjson.safe"

local type = type
local decode = cjson.decode
local TEXT = weir.TEXT

local _M = {
    name     = "pong",
    priority = 500,           -- after the stock message checks (message-schema is 900)
    schema   = {
        { name = "ping_type", type = "string", default = "ping",
          description = 'the "type" of the messages weir answers itself' },
        { name = "reply", type = "string", default = '{"type":"pong"}',
          description = "what weir sends back, as is" },
    },
}

--- Build the reply once: the per-message path only returns it.
function _M.init(conf)
    conf._reply = weir.reply(conf.reply)
    return true
end

--- Answer a ping; let everything else through.
function _M.on_frame_in(ctx, conf, frame)
    if frame.opcode ~= TEXT then return nil end
    local msg = decode(frame.payload)
    if type(msg) ~= "table" or msg.type ~= conf.ping_type then return nil end
    local vars = ctx.vars
    vars.pongs = (vars.pongs or 0) + 1
    return conf._reply
end

--- Say how many pings weir answered on this connection.
function _M.on_close(ctx)
    local n = ctx.vars.pongs
    if n then ctx:log("info", "pings answered by weir", { pings = n }) end
end

return _M
