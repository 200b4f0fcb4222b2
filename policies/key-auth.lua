--- key-auth: API keys, checked at the handshake against a file of key hashes.
--
-- The client presents its key in a header (default `apikey`) or, for
-- browsers, which cannot set headers on a WebSocket handshake, in a query
-- parameter (default `apikey`). The key is hashed with SHA-256 and the hash
-- looked up in the keys file; a match makes the key's application the
-- connection's consumer, which later policies (throttling, analytics) read
-- from `ctx.consumer`. No match, or no key: the handshake is refused with
-- 401 and `/problems/unauthorized`.
--
-- The keys file, one key per line (blank lines and `#` comments ignored):
--
--     # sha256 of the key                                                      fields
--     sha256:0c3d899ff1bf72140951a59dda636d8380a0f75bbedb9a0596ca8d4242a31fcf  application=ShopApp subscriber=alice tier=Gold
--     sha256:1da277e93e05db42a4ce00aa07cb2b0b37d6b955c363059f240b14a9b5238151  application="Test App" subscriber=bob key_type=SANDBOX scopes=read,write
--
-- The first word is `sha256:` followed by the 64 hex digits of the key's
-- SHA-256 (compute it with `printf %s "$KEY" | sha256sum`). Then NAME=VALUE
-- fields, separated by spaces; a VALUE with spaces is written in double
-- quotes (and cannot contain one):
--
--   application  required   the application the key was issued to
--   subscriber   required   the user who owns the application
--   tier         optional   its subscription tier (default "Unlimited")
--   key_type     optional   PRODUCTION (default) or SANDBOX: which endpoint serves it
--   scopes       optional   comma-separated scopes (default: none)
--
-- The file is read when the configuration is loaded, so a reload (SIGHUP)
-- picks up added or revoked keys. Mistakes in it refuse the configuration,
-- each reported as `KEYS_FILE:LINE: message`, all of them at once (up to 20,
-- then a count of the rest); messages never quote a line's first word, in
-- case a raw key was written there by mistake.
--
-- The key itself is never logged, never put in a message, never kept in
-- ctx and, unless `hide_credentials = false`, never forwarded to the
-- backend (its header and query parameter are removed): only its hash is looked up (a table lookup, so the time taken says
-- nothing about how close a wrong key came to a right one).
--
-- @module key-auth

local weir = require "weir"

local type, ipairs, tostring = type, ipairs, tostring
local byte, find, match, lower, upper, sub, format =
    string.byte, string.find, string.match, string.lower, string.upper, string.sub,
    string.format
local sha256_hex, weir_error = weir.sha256_hex, weir.error
local header_span = weir.header_span

local HASH_CHAR = 35     -- "#"
local QUOTE     = 34     -- '"'

local _M = {
    name     = "key-auth",
    priority = 1250,
    schema   = {
        { name = "keys_file", type = "path", required = true,
          description = "the keys file: one `sha256:<hex> application=... subscriber=...` line per key "
                        .. "(see docs/policies/key-auth.md)" },
        { name = "header", type = "string", default = "apikey",
          check = function(v)
              if not find(v, "^[!#$%%&'*+%-.^_`|~%w]+$") then
                  return "expected an HTTP header name, got " .. format("%q", v)
              end
              return true
          end,
          description = "request header the key is read from (any case)" },
        { name = "query_param", type = "string", default = "apikey",
          description = "query parameter the key is read from (for browsers, which cannot set headers)" },
        { name = "hide_credentials", type = "boolean", default = true,
          description = "remove the key (its header and query parameter) from what the backend receives" },
        { name = "key_in", type = "list", non_empty = true, default = { "header", "query" },
          elements = { type = "enum", one_of = { "header", "query" } },
          description = 'where to look for the key, in order: "header", "query" '
                        .. '(drop "query" to refuse keys in URLs, which proxies may log)' },
    },
}

local FIELDS = {
    application = true, subscriber = true, tier = true, key_type = true, scopes = true,
}
local REQUIRED = { "application", "subscriber" }
local KEY_TYPES = { PRODUCTION = true, SANDBOX = true }
local DEFAULT_TIER = "Unlimited"

-- Parse one line's NAME=VALUE fields, starting at POS. Returns a table
-- of fields, or nil and a message.
local function parse_fields(line, pos)
    local fields = {}
    while true do
        pos = match(line, "^[ \t]*()", pos)
        if pos > #line or byte(line, pos) == HASH_CHAR then break end
        local name, at = match(line, "^([%a_][%w_]*)=()", pos)
        if not name then
            return nil, "expected NAME=VALUE fields after the key hash, e.g. application=ShopApp"
        end
        if not FIELDS[name] then
            return nil, format("unknown field %s (fields: application, subscriber, tier, key_type, scopes)",
                               name)
        end
        if fields[name] then return nil, format("field %s is given twice", name) end
        local value
        if byte(line, at) == QUOTE then
            value, pos = match(line, '^"([^"]*)"()', at)
            if not value then return nil, format("field %s: the quoted value has no closing quote", name) end
        else
            value, pos = match(line, '^([^%s"]+)()', at)
            if not value then return nil, format("field %s has no value", name) end
        end
        if pos <= #line and not find(line, "^[ \t]", pos) then
            return nil, format("field %s: expected a space after its value", name)
        end
        if value == "" then return nil, format("field %s has no value", name) end
        fields[name] = value
    end
    return fields
end

local MAX_PROBLEMS = 20   -- reported per keys file; the rest are counted

-- Parse one key line; POS is where its first word starts, FIRST_LINE maps
-- each hash already read to its line. Returns the hash and its consumer
-- template, or nil and a message.
local function parse_key_line(line, pos, first_line)
    local word, after = match(line, "^(%S+)()", pos)
    local hex = match(word, "^sha256:(%x+)$")
    if not hex or #hex ~= 64 then
        return nil, sub(word, 1, 7) == "sha256:"
            and "sha256: must be followed by the 64 hex digits of the key's hash"
            or "a line starts with the key's hash, sha256:<64 hex digits> "
               .. '(store hashes, not keys: printf %s "$KEY" | sha256sum)'
    end
    hex = lower(hex)
    if first_line[hex] then
        return nil, format("the same key hash is already on line %d", first_line[hex])
    end
    local f, err = parse_fields(line, after)
    if not f then return nil, err end
    for _, name in ipairs(REQUIRED) do
        if not f[name] then return nil, format("field %s is required", name) end
    end
    local key_type = upper(f.key_type or "PRODUCTION")
    if not KEY_TYPES[key_type] then
        return nil, format("key_type must be PRODUCTION or SANDBOX, got %q", f.key_type)
    end
    local scopes = {}
    for s in (f.scopes or ""):gmatch("[^,]+") do scopes[#scopes + 1] = s end
    return hex, { application = f.application, subscriber = f.subscriber,
                  tier = f.tier or DEFAULT_TIER, key_type = key_type, scopes = scopes }
end

-- Parse the text of a keys file. Returns hash → consumer template, or nil
-- and every problem, one "FILE:LINE: message" each (at most MAX_PROBLEMS,
-- then one line counting the rest).
local function parse_keys(text, file)
    local keys, first_line, problems = {}, {}, {}
    local n, more = 0, 0
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
        n = n + 1
        if byte(line, -1) == 13 then line = sub(line, 1, -2) end          -- CRLF files
        local pos = match(line, "^[ \t]*()")
        if pos <= #line and byte(line, pos) ~= HASH_CHAR then
            local hex, rec = parse_key_line(line, pos, first_line)
            if hex then
                keys[hex] = rec
                first_line[hex] = n
            elseif #problems < MAX_PROBLEMS then
                problems[#problems + 1] = format("%s:%d: %s", file, n, rec)
            else
                more = more + 1
            end
        end
    end
    if more > 0 then
        problems[#problems + 1] = format("%s: %d more problem%s after line %s", file, more,
                                         more == 1 and "" or "s", match(problems[MAX_PROBLEMS], ":(%d+):"))
    end
    if #problems > 0 then return nil, problems end
    return keys
end

--- Read and parse the keys file; remember where to look for the key.
-- @tparam table conf the normalised configuration (`keys_file` is absolute)
-- @treturn[1] true
-- @treturn[2] nil
-- @treturn[2] string|table why the file cannot be read, or every problem in
--   it, one "KEYS_FILE:LINE: message" each
function _M.init(conf)
    local text, err = weir.read_file(conf.keys_file)
    if not text then return nil, "cannot read the keys file: " .. tostring(err) end
    local keys, perr = parse_keys(text, conf.keys_file)
    if not keys then return nil, perr end
    conf._keys = keys
    conf._header = lower(conf.header)
    return true
end

--- Authenticate the handshake; on success set `ctx.consumer`.
-- @usage -- a client: ws://host/echo?apikey=KEY, or the header "apikey: KEY"
function _M.on_handshake(ctx, conf)
    local req = ctx.request
    local rec
    local from = conf.key_in
    for i = 1, #from do
        local s, ki, kj
        if from[i] == "header" then
            -- read where it lies in the request head: no headers table, no
            -- copy of the key (a repeated header: its values joined, as
            -- req.headers has them)
            local head, vs, ve = header_span(req, conf._header)
            if vs then
                s, ki, kj = head, vs, ve
            elseif head == false then
                s = req.headers[conf._header]
            end
        else
            s = req.query[conf.query_param]
        end
        if type(s) == "string" and (ki or #s > 0) and (not ki or kj >= ki) then
            rec = conf._keys[sha256_hex(s, ki, kj)]
            break
        end
    end
    if rec and conf.hide_credentials then
        ctx:clear_backend_header(conf._header)
        ctx:hide_query_arg(conf.query_param)
    end
    if not rec then
        return weir_error("/problems/unauthorized", "Invalid or missing API key", 401)
    end
    local scopes = {}
    for i = 1, #rec.scopes do scopes[i] = rec.scopes[i] end
    ctx.consumer = {
        application = rec.application,
        subscriber  = rec.subscriber,
        tier        = rec.tier,
        key_type    = rec.key_type,
        scopes      = scopes,
    }
end

return _M
