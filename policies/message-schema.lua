--- message-schema: what the client may send, checked message by message.
--
-- Text messages must be JSON objects with a non-empty string `type` field
-- (the field's name is `type_field`), optionally one of `types`, with the
-- `required` fields (and the `optional` ones, when present) of the JSON
-- types named; every message at most `max_size` bytes. Binary messages are
-- refused unless `allow_binary` is set. A message that breaks a rule is not
-- forwarded: the client gets the error JSON (`/problems/invalid-message`)
-- and, with `on_violation = "close"`, the connection is closed with
-- `close_code`.
--
-- The policy decides once, at the handshake: it attaches an inspector
-- (weir.inspect) built from its configuration when it loads, and the core
-- checks every client message on the payload where it lies, with no Lua
-- call per message. Only client-to-backend messages are checked.
--
-- @module message-schema
-- @usage policies = { { "message-schema", { types = { "chat", "ping" }, max_size = "16k" } } }

local inspect = require "weir.inspect"

local ipairs, pairs, sort = ipairs, pairs, table.sort
local format, concat = string.format, table.concat

local PROBLEM = "/problems/invalid-message"
local MAX_LISTED = 100      -- bytes of the allowed types quoted in a message

-- Close codes an endpoint may send (RFC 6455 7.4, IANA registry).
local function check_close_code(c)
    if (c >= 1000 and c <= 1003) or (c >= 1007 and c <= 1014) or (c >= 3000 and c <= 4999) then
        return true
    end
    return "expected a close code an endpoint may send (1000-1003, 1007-1014, 3000-4999), got " .. c
end

local JSON_TYPES = { "string", "number", "integer", "boolean", "object", "array", "null", "any" }

local function check_fields(map)
    for name, types in pairs(map) do
        for _, t in ipairs(types) do
            if not inspect.JSON_TYPES[t] then
                return format("%s: expected one of %s, got %q", name, concat(JSON_TYPES, ", "), t)
            end
        end
    end
    return true
end

local FIELDS_HELP = "field name = a JSON type (" .. concat(JSON_TYPES, ", ") .. ") or a list of them"

local _M = {
    name     = "message-schema",
    priority = 900,
    schema   = {
        { name = "type_field", type = "string", default = "type",
          description = "the field of every text message that names its type (a non-empty string)" },
        { name = "types", type = "list", non_empty = true, elements = { type = "string" },
          description = "the message types accepted (default: any)" },
        { name = "required", type = "map", values = { type = "strings", non_empty = true }, check = check_fields,
          description = "top-level fields every text message must have: " .. FIELDS_HELP },
        { name = "optional", type = "map", values = { type = "strings", non_empty = true }, check = check_fields,
          description = "top-level fields a text message may have, checked when present: " .. FIELDS_HELP },
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

-- "an integer", "a string or null"
local function kinds(types)
    local out = {}
    for i, t in ipairs(types) do
        out[i] = (t == "integer" or t == "object" or t == "array" or t == "any") and "an " .. t
                 or t == "null" and "null" or "a " .. t
    end
    return concat(out, " or ")
end

-- The fields of MAP, sorted by name (the order they are checked and told in).
local function field_specs(out, map, required)
    local names = {}
    for name in pairs(map or {}) do names[#names + 1] = name end
    sort(names)
    for _, name in ipairs(names) do
        local types = map[name]
        out[#out + 1] = {
            name = name, types = types, required = required,
            message = required and format('message needs a "%s" field: %s', name, kinds(types))
                      or format('"%s" must be %s', name, kinds(types)),
        }
    end
end

--- Compile the configuration into an inspector, once per load.
function _M.init(conf)
    if conf.close_code and conf.on_violation ~= "close" then
        return nil, 'close_code applies only with on_violation = "close"'
    end
    local field = conf.type_field
    for name in pairs(conf.optional or {}) do
        if conf.required and conf.required[name] then
            return nil, format('"%s" is both required and optional', name)
        end
    end
    if (conf.required and conf.required[field]) or (conf.optional and conf.optional[field]) then
        return nil, format('"%s" is the type_field: it is always required, a non-empty string', field)
    end
    local fields = {}
    field_specs(fields, conf.required, true)
    field_specs(fields, conf.optional, false)
    local messages = {
        binary = "binary messages are not accepted",
        not_json = "message is not valid JSON",
        not_object = "message is not a JSON object",
        no_type = format('message has no "%s" field (a non-empty string)', field),
    }
    if conf.max_size then messages.too_big = format("message is larger than %d bytes", conf.max_size) end
    if conf.types then
        local listed = concat(conf.types, ", ")
        if #listed > MAX_LISTED then listed = listed:sub(1, MAX_LISTED) .. "..." end
        messages.not_allowed = format('"%s" must be one of: %s', field, listed)
    end
    local insp, err = inspect.new {
        max_size = conf.max_size, allow_binary = conf.allow_binary, type_field = field, types = conf.types,
        fields = fields, problem = PROBLEM, messages = messages,
        close_code = conf.on_violation == "close" and (conf.close_code or 1008) or nil,
    }
    if not insp then return nil, err end
    conf._inspector = insp
    return true
end

--- Attach the inspector: the core checks every client message from now on.
function _M.on_handshake(ctx, conf)
    ctx:inspect(conf._inspector)
end

--- After a reload, open connections are checked by the new configuration.
function _M.recheck(ctx, conf)
    ctx:inspect(conf._inspector)
end
_M.recheck_reads_request = false     -- so weir may drop the request head after the handshake

return _M
