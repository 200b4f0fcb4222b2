--- Message inspectors: checks of a client's messages that the core runs on
-- every message, on the payload where it lies, with no Lua call per message
-- (core/inspect.h). A policy builds one when its configuration loads and
-- attaches it to a connection at the handshake with `ctx:inspect(insp)`;
-- the core then refuses a message that breaks a rule with the inspector's
-- error JSON, before the chain's frame hooks see it.
--
-- What an inspector can check: the size of a message (text or binary);
-- binary messages refused or passed; text that is well-formed JSON
-- (RFC 8259, strictly), an object, whose type field is a non-empty string,
-- optionally one of a set; top-level fields of given JSON types, required
-- or optional.
--
-- @module weir.inspect
-- @usage
-- local inspect = require "weir.inspect"
-- conf._insp = assert(inspect.new{ type_field = "type", types = { "chat" },
--                                   problem = "/problems/invalid-message" })
-- -- in on_handshake: ctx:inspect(conf._insp)

local ffi = require "ffi"
local weir = require "weir"

local bit = require "bit"

local type, pairs, ipairs, tostring, setmetatable, getmetatable = type, pairs, ipairs, tostring, setmetatable, getmetatable
local format = string.format

ffi.cdef [[
    typedef struct weir_inspector_s weir_inspector_t;
    weir_inspector_t *weir_inspector_new(uint64_t max_size, int allow_binary, const char *type_field,
                                         const char *problem, int close_code);
    int weir_inspector_type(weir_inspector_t *in, const char *name, size_t len);
    int weir_inspector_field(weir_inspector_t *in, const char *name, size_t len, unsigned types, int required);
    int weir_inspector_message(weir_inspector_t *in, int rule, int field, const char *msg);
    void weir_inspector_unref(weir_inspector_t *in);
    int weir_inspector_check(const weir_inspector_t *in, int opcode, const char *p, size_t n, int *field);
    int weir_ffi_inspect(uint64_t id, weir_inspector_t *in, int owner);
    int weir_ffi_inspect_owner(uint64_t id);
    const char *weir_find(const char *p, size_t n, const char *needle, size_t k);
]]

-- In the worker the core's own symbols; in a plain LuaJIT (unit specs) the
-- same code built as a library next to the weir binary.
local C = ffi.C
if not pcall(function() return C.weir_inspector_new end) then
    local bin = os.getenv("WEIR_BIN")
    local here = debug.getinfo(1, "S").source:gsub("^@", ""):match("^(.*)/[^/]*$") or "."
    local lib = os.getenv("WEIR_INSPECT_LIB")
                or (bin and bin:match("^(.*)/[^/]*$") and bin:match("^(.*)/[^/]*$") .. "/libweir-inspect.so")
                or here .. "/../../build/libweir-inspect.so"
    C = ffi.load(lib)
end

local _M = {}

--- Where `needle` first occurs in `s` (its index, from 1), as the core's
-- search of client messages for an interceptor's needle finds it; nil when
-- it does not occur.
function _M.find(s, needle)
    local p = C.weir_find(s, #s, needle, #needle)
    if p == nil then return nil end
    return tonumber(p - ffi.cast("const char *", s)) + 1
end

--- The rules, in the order they are checked (the core's WEIR_INSPECT_*).
_M.RULES = { "too_big", "binary", "not_json", "not_object", "no_type", "not_allowed", "field" }
local RULE_NO = {}
for i, r in ipairs(_M.RULES) do RULE_NO[r] = i end

--- JSON type names a field may name (the core's WEIR_JSON_* bits).
_M.JSON_TYPES = { string = 1, number = 2 + 4, integer = 4, boolean = 8, object = 16, array = 32, null = 64,
                  any = 127 }

local MAX_NAME = 255          -- core/inspect.h WEIR_INSPECT_NAME
local MAX_FIELDS = 64         -- WEIR_INSPECT_FIELDS

local Inspector = {}
Inspector.__index = Inspector

local field_box = ffi.new("int[1]")

--- Check one message as the core does: nil when it passes; otherwise the
-- verdict the core applies (a `weir.error`, what a frame hook would
-- return), the rule broken (a name of `RULES`) and, for "field", the
-- field's name. A frame hook may use it on a message it has in hand.
-- @tparam number opcode weir.TEXT or weir.BINARY
-- @tparam string payload the whole message
-- @usage local v = insp:check(frame.opcode, frame.payload); if v then return v end
function Inspector:check(opcode, payload)
    local rule = C.weir_inspector_check(self.c, opcode, payload, #payload, field_box)
    if rule == 0 then return nil end
    local name = _M.RULES[rule]
    if name == "field" then
        local f = self.fields[field_box[0] + 1]
        return f.verdict, name, f.name
    end
    return self.verdicts[name], name
end

--- Build an inspector. Returns it, or nil and what is wrong with SPEC.
-- @tparam table spec
--   `max_size` (bytes, nil: no limit), `allow_binary` (boolean),
--   `type_field` (string; nil: text is not looked into), `types` (list of
--   strings, nil: any type), `fields` (list of `{ name =, types = { "string", ... },
--   required =, message = }`), `problem` (the error JSON's type),
--   `close_code` (nil: a refused message is dropped, the connection stays
--   open), `messages` (rule name → what the client is told).
function _M.new(spec)
    if type(spec) ~= "table" then return nil, "inspect.new(spec): spec must be a table" end
    local tf = spec.type_field
    if tf ~= nil and (type(tf) ~= "string" or tf == "" or #tf > MAX_NAME) then
        return nil, format("type_field: a non-empty string of at most %d bytes", MAX_NAME)
    end
    local max = spec.max_size or 0
    if type(max) ~= "number" or max < 0 then return nil, "max_size: a number of bytes" end
    local c = C.weir_inspector_new(max, spec.allow_binary and 1 or 0, tf, spec.problem or "/problems/invalid-message",
                                   spec.close_code or 0)
    if c == nil then return nil, "cannot build the inspector (out of memory)" end
    c = ffi.gc(c, C.weir_inspector_unref)
    local problem, code = spec.problem or "/problems/invalid-message", spec.close_code
    local self = setmetatable({ c = c, verdicts = {}, fields = {} }, Inspector)
    for _, name in ipairs(_M.RULES) do self.verdicts[name] = weir.error(problem, "message refused", code) end
    for _, t in ipairs(spec.types or {}) do
        if type(t) ~= "string" or #t > MAX_NAME then
            return nil, format("types: %q is not a string of at most %d bytes", tostring(t), MAX_NAME)
        end
        if C.weir_inspector_type(c, t, #t) ~= 0 then return nil, "cannot build the inspector (out of memory)" end
    end
    local fields = spec.fields or {}
    if #fields > 0 and not tf then return nil, "fields need a type_field" end
    if #fields > MAX_FIELDS then return nil, format("fields: at most %d", MAX_FIELDS) end
    for i, f in ipairs(fields) do
        local bits = 0
        for _, tn in ipairs(f.types or { "any" }) do
            local b = _M.JSON_TYPES[tn]
            if not b then return nil, format("fields[%d]: unknown JSON type %q", i, tostring(tn)) end
            bits = bit.bor(bits, b)
        end
        if type(f.name) ~= "string" or #f.name > MAX_NAME then
            return nil, format("fields[%d]: name must be a string of at most %d bytes", i, MAX_NAME)
        end
        if C.weir_inspector_field(c, f.name, #f.name, bits, f.required and 1 or 0) ~= 0 then
            return nil, format("fields[%d]: %q is the type field or named twice", i, f.name)
        end
        local msg = f.message or format("field %q is missing or of the wrong type", f.name)
        C.weir_inspector_message(c, RULE_NO.field, i - 1, msg)
        self.fields[i] = { name = f.name, verdict = weir.error(problem, msg, code) }
    end
    for name, msg in pairs(spec.messages or {}) do
        local no = RULE_NO[name]
        if not no or name == "field" then return nil, format("messages: unknown rule %q", tostring(name)) end
        if type(msg) ~= "string" then return nil, format("messages.%s: a string", name) end
        C.weir_inspector_message(c, no, 0, msg)
        self.verdicts[name] = weir.error(problem, msg, code)
    end
    return self
end

--- Is V an inspector made by `new`?
function _M.is(v)
    return getmetatable(v) == Inspector
end

return _M
