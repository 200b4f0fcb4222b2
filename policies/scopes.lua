--- scopes: which messages a caller may send, by the scopes it was granted.
--
-- Authentication (key-auth, say) decides who may connect and puts the
-- caller's scopes in `ctx.consumer.scopes`. This policy decides, message
-- by message, what that caller may send: `rules` maps a message type (the
-- `type` field of a JSON text message; the field's name is `type_field`)
-- to the scopes a caller needs for it, all of them. A connection without a
-- consumer has no scopes, so only rules with an empty list let it through.
--
-- Messages whose type has no rule, text messages without a type (not JSON,
-- not an object, no such field, not a non-empty string) and binary messages
-- follow `default`: "allow" or "deny".
--
-- A refused message is not forwarded: the client gets the error JSON
-- (`/problems/forbidden`, `error.code` 1008) and, with
-- `on_violation = "close"`, the connection is closed with 1008.
--
-- A message whose top-level object has the type field twice is refused
-- whatever the rules say: weir's JSON decoder keeps the last value, and a
-- backend's decoder may keep the first, which would let a caller get one
-- type past this policy and another to the backend.
--
-- The rules and every refusal are built when the configuration is loaded;
-- a message costs one JSON decode, a search of its text for the field's
-- name, and a few comparisons. Only a message that holds the name twice
-- (nested objects included) or an escape that could spell it is walked to
-- count its top-level members.
--
-- @module scopes
-- @usage policies = { { "scopes", { rules = { ["chat.send"] = { "chat:write" }, ["chat.read"] = {} } } } }

local weir  = require "weir"
local cjson = require "cjson.safe"

local type, pairs = type, pairs
local byte, find, sub, format = string.byte, string.find, string.sub, string.format
local concat = table.concat
local decode = cjson.decode
local TEXT = weir.TEXT

local PROBLEM = "/problems/forbidden"
local CLOSE_CODE = 1008              -- policy violation
local MAX_LISTED = 100               -- bytes of scopes quoted in a refusal

local QUOTE, BACKSLASH = 34, 92
local LBRACE, RBRACE, LBRACKET, RBRACKET, COMMA, COLON = 123, 125, 91, 93, 44, 58

local function check_scope(s)
    if find(s, "[%s,%c]") then
        return format('a scope has no spaces, commas or control characters: write each as its own string, '
                      .. '{ "read", "write" }, got %q', s)
    end
    return true
end

local _M = {
    name     = "scopes",
    priority = 950,
    schema   = {
        { name = "rules", type = "map", required = true,
          values = { type = "list", elements = { type = "string", check = check_scope } },
          description = 'message type → the scopes a caller needs to send it, all of them, e.g. '
                        .. '{ ["chat.send"] = { "chat:write" } } (an empty list: anyone may)' },
        { name = "type_field", type = "string", default = "type",
          description = "the field of a JSON text message that names its type" },
        { name = "default", type = "enum", one_of = { "allow", "deny" }, default = "deny",
          description = "what happens to messages with no type, a type without a rule, and binary messages" },
        { name = "on_violation", type = "enum", one_of = { "drop", "close" }, default = "drop",
          description = '"drop": send the error JSON and drop the message; '
                        .. '"close": the same, then close the connection with 1008' },
    },
}

--- Index the rules and make every refusal, once per configuration.
-- @tparam table conf the normalised configuration
-- @treturn true
function _M.init(conf)
    local code = conf.on_violation == "close" and CLOSE_CODE or nil
    local function verdict(message) return weir.error(PROBLEM, message, code) end
    local field = conf.type_field

    local rules = {}
    for t, scopes in pairs(conf.rules) do
        local need, seen = {}, {}
        for i = 1, #scopes do
            local s = scopes[i]
            if not seen[s] then seen[s], need[#need + 1] = true, s end
        end
        local listed = concat(need, ", ")
        if #listed > MAX_LISTED then listed = sub(listed, 1, MAX_LISTED) .. "..." end
        rules[t] = {
            need = need,
            denied = verdict(format('"%s" messages need the scope%s %s', t, #need > 1 and "s" or "", listed)),
        }
    end
    conf._rules = rules
    conf._allow = conf.default == "allow"
    conf._key = '"' .. field .. '"'
    -- An escaped spelling of the field's name: \uXXXX, or for the few
    -- characters with a short escape (" \ / and controls) that escape too.
    conf._escape = find(field, '[%c"\\/]') and "\\" or "\\u"
    conf._unknown = verdict("message type not allowed")
    conf._untyped = verdict(format('messages without a "%s" field are not allowed', field))
    conf._binary = verdict("binary messages are not allowed")
    conf._twice = verdict(format('message has more than one "%s" field', field))
    return true
end

-- How many members of the top-level JSON object S are named FIELD (KEY is
-- FIELD in quotes). S is an object cjson decoded, so its strings are
-- well-formed. Walks the bytes; makes a string only to decode a top-level
-- member name with an escape in it.
local function count_members(s, field, key)
    local n, depth, count, i = #s, 0, 0, 1
    local at_name = false              -- the next string at depth 1 is a member name
    while i <= n do
        local c = byte(s, i)
        if c == QUOTE then
            local j, escaped = i + 1, false
            while true do
                local b = byte(s, j)
                if b == QUOTE then break end
                if b == BACKSLASH then j, escaped = j + 2, true else j = j + 1 end
            end
            if at_name and depth == 1 then
                if escaped then
                    if decode(sub(s, i, j)) == field then count = count + 1 end
                elseif j - i + 1 == #key then
                    local k = 2                  -- the quotes match already
                    while k < #key and byte(s, i + k - 1) == byte(key, k) do k = k + 1 end
                    if k == #key then count = count + 1 end
                end
                at_name = false
            end
            i = j
        elseif c == LBRACE or c == LBRACKET then
            depth = depth + 1
            at_name = depth == 1
        elseif c == RBRACE or c == RBRACKET then
            depth = depth - 1
        elseif c == COMMA then
            at_name = depth == 1
        elseif c == COLON then
            at_name = false
        end
        i = i + 1
    end
    return count
end

--- Check that the caller may send this message.
function _M.on_frame_in(ctx, conf, frame)
    if frame.opcode ~= TEXT then
        if conf._allow then return nil end
        return conf._binary
    end
    local payload = frame.payload
    local msg = decode(payload)
    if type(msg) ~= "table" then
        if conf._allow then return nil end
        return conf._untyped
    end
    local field = conf.type_field
    local t = msg[field]
    if t ~= nil then
        -- the field twice needs its name twice, or an escape to hide one
        local key = conf._key
        local _, e = find(payload, key, 1, true)
        if (not e or find(payload, key, e + 1, true) or find(payload, conf._escape, 1, true))
           and count_members(payload, field, key) > 1 then
            return conf._twice
        end
    end
    if type(t) ~= "string" or t == "" then
        if conf._allow then return nil end
        return conf._untyped
    end
    local rule = conf._rules[t]
    if not rule then
        if conf._allow then return nil end
        return conf._unknown
    end
    local need = rule.need
    if #need == 0 then return nil end
    local consumer = ctx.consumer
    local have = type(consumer) == "table" and consumer.scopes
    if type(have) ~= "table" then return rule.denied end
    local nhave = #have
    for i = 1, #need do
        local s = need[i]
        local j = 1
        while j <= nhave and have[j] ~= s do j = j + 1 end
        if j > nhave then return rule.denied end
    end
    return nil
end

return _M
