--- message-schema: what the client may send, checked message by message.
--
-- Text messages must be JSON objects with a non-empty string `type` field
-- (the field's name is `type_field`), optionally one of `types`, and every
-- message at most `max_size` bytes. Binary messages are refused unless
-- `allow_binary` is set. A message that breaks a rule is not forwarded:
-- the client gets the error JSON (`/problems/invalid-message`) and, with
-- `on_violation = "close"`, the connection is closed with `close_code`.
--
-- Only client-to-backend messages are checked (`on_frame_in`). The size is
-- checked first, from `frame.length`, so an oversized message is refused
-- without its payload being read.
--
-- @module message-schema
-- @usage policies = { { "message-schema", { types = { "chat", "ping" }, max_size = "16k" } } }

local weir  = require "weir"
local cjson = require "cjson.safe"

local type, ipairs = type, ipairs
local find, format, concat = string.find, string.format, table.concat
local decode = cjson.decode
local TEXT = weir.TEXT

local PROBLEM = "/problems/invalid-message"
local MAX_LISTED = 100      -- bytes of the allowed types quoted in a message

-- Close codes an endpoint may send (RFC 6455 7.4, IANA registry).
local function check_close_code(c)
    if (c >= 1000 and c <= 1003) or (c >= 1007 and c <= 1014) or (c >= 3000 and c <= 4999) then
        return true
    end
    return "expected a close code an endpoint may send (1000-1003, 1007-1014, 3000-4999), got " .. c
end

local _M = {
    name     = "message-schema",
    priority = 900,
    schema   = {
        { name = "type_field", type = "string", default = "type",
          description = "the field of every text message that names its type (a non-empty string)" },
        { name = "types", type = "list", non_empty = true, elements = { type = "string" },
          description = "the message types accepted (default: any)" },
        { name = "max_size", type = "size", min = 1,
          description = "largest message accepted, text or binary, in bytes (default: no limit "
                        .. "beyond limits.max_message_size)" },
        { name = "allow_binary", type = "boolean", default = false,
          description = "accept binary messages (they are forwarded unchecked, but for max_size)" },
        { name = "on_violation", type = "enum", one_of = { "drop", "close" }, default = "drop",
          description = '"drop": send the error JSON and drop the message; '
                        .. '"close": the same, then close the connection with close_code' },
        { name = "close_code", type = "integer", check = check_close_code,
          description = 'close code used when on_violation is "close" (default 1008, policy violation)' },
    },
}

--- Build the lookup set and the verdicts, once per configuration: the
-- per-message path then only compares and returns ready-made values.
function _M.init(conf)
    if conf.close_code and conf.on_violation ~= "close" then
        return nil, 'close_code applies only with on_violation = "close"'
    end
    local code = conf.on_violation == "close" and (conf.close_code or 1008) or nil
    local function verdict(message) return weir.error(PROBLEM, message, code) end

    local field = conf.type_field
    conf._too_big = conf.max_size and verdict(format("message is larger than %d bytes", conf.max_size))
    conf._binary = verdict("binary messages are not accepted")
    conf._not_json = verdict("message is not valid JSON")
    conf._not_object = verdict("message is not a JSON object")
    conf._no_type = verdict(format('message has no "%s" field (a non-empty string)', field))
    if conf.types then
        conf._types = {}
        for _, t in ipairs(conf.types) do conf._types[t] = true end
        local listed = concat(conf.types, ", ")
        if #listed > MAX_LISTED then listed = listed:sub(1, MAX_LISTED) .. "..." end
        conf._not_allowed = verdict(format('"%s" must be one of: %s', field, listed))
    end
    return true
end

--- Check one client message.
function _M.on_frame_in(ctx, conf, frame)
    local max = conf.max_size
    if max and frame.length > max then return conf._too_big end
    if frame.opcode ~= TEXT then
        if conf.allow_binary then return nil end
        return conf._binary
    end
    local payload = frame.payload
    local msg = decode(payload)
    if msg == nil then return conf._not_json end
    if type(msg) ~= "table" or not find(payload, "^[ \t\r\n]*{") then return conf._not_object end
    local t = msg[conf.type_field]
    if type(t) ~= "string" or t == "" then return conf._no_type end
    local allowed = conf._types
    if allowed and not allowed[t] then return conf._not_allowed end
    return nil
end

return _M
