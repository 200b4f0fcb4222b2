--- What the key manager's two stores share: the rules every argument is
-- checked by, the records' shapes, and the secrets' handling (random ids
-- and keys, the SHA-256 of a consumer secret, its constant-time check).
-- weir.keystore (SQLite, one host) and weir.keystore_redis (Redis, several
-- hosts) both use it, so that the same call is refused by both with the same
-- code and message, and a secret is treated the same way by both.
--
-- Checks return the value (or true) on success, else nil, "invalid",
-- message. A message never quotes a value that may be anything.
--
-- @module weir.keystore_rules
-- @usage local rules = require "weir.keystore_rules"
-- local v, code, msg = rules.check_create_app(t)

local ffi  = require "ffi"
local bit  = require "bit"
local jose = require "weir.jose"

local type, pairs, ipairs, select, tonumber, pcall = type, pairs, ipairs, select, tonumber, pcall
local byte, find, format, gmatch = string.byte, string.find, string.format, string.gmatch
local concat = table.concat
local floor, huge = math.floor, math.huge
local band, bor = bit.band, bit.bor
local ffi_new, ffi_string = ffi.new, ffi.string

local _M = {
    --- `list_*`: rows per page by default, and at most.
    DEFAULT_LIMIT = 100,
    MAX_LIMIT = 1000,
    --- An application's tier when `create_app` is given none.
    DEFAULT_TIER = "Unlimited",
}

ffi.cdef [[
    unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
    int RAND_bytes(unsigned char *buf, int num);
    int CRYPTO_memcmp(const void *a, const void *b, size_t len);
]]

-- libcrypto: already in a worker's process; loaded by name in a plain LuaJIT
local crypto = ffi.C
if not pcall(function() return ffi.C.CRYPTO_memcmp end) then crypto = ffi.load("libcrypto.so.3") end
_M.crypto = crypto

--- nil, CODE and the message FMT formatted with the rest.
function _M.fail(code, fmt, ...)
    return nil, code, select("#", ...) > 0 and format(fmt, ...) or fmt
end
local fail = _M.fail

function _M.rand_failed() return fail("internal", "the random generator failed") end

function _M.name_taken(name)
    return fail("conflict", 'an application named "%s" exists', name)
end

---------------------------------------------------------------------------
-- randomness and hashes

local rand_buf = ffi_new("unsigned char[32]")

--- N (at most 32) random bytes, or nil when the generator failed.
function _M.random_bytes(n)
    if crypto.RAND_bytes(rand_buf, n) ~= 1 then return nil end
    return ffi_string(rand_buf, n)
end
local random_bytes = _M.random_bytes

local HEX = {}
for i = 0, 255 do HEX[i] = format("%02x", i) end
local md = ffi_new("unsigned char[32]")
local hex_parts = {}

--- The SHA-256 of S, 64 hex digits.
function _M.sha256_hex(s)
    crypto.SHA256(s, #s, md)
    for i = 0, 31 do hex_parts[i + 1] = HEX[md[i]] end
    return concat(hex_parts, "", 1, 32)
end
local sha256_hex = _M.sha256_hex

--- A random (version 4) UUID, lower case; nil when the generator failed.
function _M.uuid()
    if crypto.RAND_bytes(rand_buf, 16) ~= 1 then return nil end
    rand_buf[6] = bor(band(rand_buf[6], 0x0f), 0x40)
    rand_buf[8] = bor(band(rand_buf[8], 0x3f), 0x80)
    local h = {}
    for i = 0, 15 do h[i + 1] = HEX[rand_buf[i]] end
    return concat(h, "", 1, 4) .. "-" .. concat(h, "", 5, 6) .. "-" .. concat(h, "", 7, 8) .. "-"
           .. concat(h, "", 9, 10) .. "-" .. concat(h, "", 11, 16)
end

local UUID_PATTERN = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
function _M.is_uuid(s) return type(s) == "string" and find(s, UUID_PATTERN) ~= nil end
local is_uuid = _M.is_uuid

---------------------------------------------------------------------------
-- consumer keys
--
-- A consumer secret is 32 random bytes, so its SHA-256 is enough to store:
-- a slow password hash (bcrypt, scrypt, Argon2) exists to make guessing a
-- low-entropy password from its hash expensive, and nobody can guess 256
-- random bits however fast the hash. A fast hash also keeps `check_client`
-- cheap on the token endpoint.

_M.KEY_TYPES = { production = true, sandbox = true }

-- compared against when the consumer key is unknown, so that an unknown
-- key costs the same hash and comparison as a known one
local DUMMY_HASH = sha256_hex("weir.keystore: no such consumer key")

function _M.check_key_type(key_type)
    if not _M.KEY_TYPES[key_type] then return fail("invalid", 'key_type must be "production" or "sandbox"') end
    return key_type
end

-- N random bytes in base64url that do not start with "-": on a command line
-- (`weir token KEY`, `curl -u KEY:SECRET`) such a word reads as an option.
-- One draw in 64 starts with it and is drawn again; nil when the random
-- source fails.
local function random_word(n)
    for _ = 1, 32 do
        local b = random_bytes(n)
        if not b then return nil end
        local s = jose.b64url_encode(b)
        if s:byte(1) ~= 45 then return s end
    end
    return nil
end

--- A new consumer key (18 random bytes, base64url: 24 characters), secret
-- (32 random bytes, base64url: 43 characters) and the secret's SHA-256; nil
-- when the generator failed. Neither starts with "-".
function _M.new_keys()
    local key, secret = random_word(18), random_word(32)
    if not key or not secret then return nil end
    return key, secret, sha256_hex(secret)
end

--- Whether SECRET's SHA-256 is HASH (64 hex digits), compared in constant
-- time. With no HASH (an unknown key) it hashes and compares all the same,
-- against a hash nobody has the secret of, and answers false.
function _M.same_secret(secret, hash)
    local known = type(hash) == "string" and #hash == 64
    local same = crypto.CRYPTO_memcmp(sha256_hex(secret), known and hash or DUMMY_HASH, 64) == 0
    return known and same
end

---------------------------------------------------------------------------
-- text fields

-- Characters in S when it is well-formed UTF-8 (no overlong forms, no
-- surrogates), else nil.
local function utf8_len(s)
    local i, n, len = 1, 0, #s
    while i <= len do
        local c = byte(s, i)
        local extra, lo, hi = 0, 0x80, 0xbf
        if c < 0x80 then extra = 0
        elseif c >= 0xc2 and c <= 0xdf then extra = 1
        elseif c >= 0xe0 and c <= 0xef then
            extra = 2
            if c == 0xe0 then lo = 0xa0 elseif c == 0xed then hi = 0x9f end
        elseif c >= 0xf0 and c <= 0xf4 then
            extra = 3
            if c == 0xf0 then lo = 0x90 elseif c == 0xf4 then hi = 0x8f end
        else
            return nil
        end
        if i + extra > len then return nil end
        for j = 1, extra do
            local b = byte(s, i + j)
            if b < lo or b > hi then return nil end
            lo, hi = 0x80, 0xbf
        end
        i, n = i + extra + 1, n + 1
    end
    return n
end

local CONTROL = "[%z\1-\31\127]"
local CONTROL_BUT_WHITESPACE = "[%z\1-\8\11\12\14-\31\127]"  -- tab, LF and CR allowed

--- Check a text field: a string of MIN..MAX characters of UTF-8 without
-- control characters (MULTILINE: tab, LF and CR allowed). The value is
-- never quoted in the message: it may be anything.
function _M.check_text(v, what, min, max, multiline)
    if type(v) ~= "string" then return fail("invalid", "%s must be a string", what) end
    local n = #v <= max * 4 and utf8_len(v)
    if not n then
        if #v > max * 4 then return fail("invalid", "%s must be at most %d characters", what, max) end
        return fail("invalid", "%s must be UTF-8 text", what)
    end
    if n < min or n > max then
        if min == 0 then return fail("invalid", "%s must be at most %d characters", what, max) end
        return fail("invalid", "%s must be %d to %d characters", what, min, max)
    end
    if find(v, multiline and CONTROL_BUT_WHITESPACE or CONTROL) then
        return fail("invalid", "%s must not contain control characters", what)
    end
    return v
end
local check_text = _M.check_text

function _M.check_name(v)
    local ok, code, msg = check_text(v, "name", 1, 100)
    if not ok then return nil, code, msg end
    -- names and ids share `get_app`'s argument: a name never looks like an id
    if is_uuid(v) then return fail("invalid", "name must not have the form of an application id (a UUID)") end
    return v
end
local check_name = _M.check_name

local MAX_SCOPES = 50

--- Check an array of scopes; returns them space-separated.
function _M.check_scopes(v)
    if type(v) ~= "table" then return fail("invalid", "scopes must be an array of strings") end
    local n = #v
    for k in pairs(v) do
        if type(k) ~= "number" or k < 1 or k > n or k ~= floor(k) then
            return fail("invalid", "scopes must be an array of strings")
        end
    end
    if n > MAX_SCOPES then return fail("invalid", "at most %d scopes", MAX_SCOPES) end
    local seen = {}
    for i = 1, n do
        local s = v[i]
        if type(s) ~= "string" or #s < 1 or #s > 100 or not find(s, "^[A-Za-z0-9._:/-]+$") then
            return fail("invalid", "scope %d must be 1 to 100 characters of A-Z a-z 0-9 . _ : / -", i)
        end
        if seen[s] then return fail("invalid", "scope %d is a duplicate", i) end
        seen[s] = true
    end
    return concat(v, " ")
end
local check_scopes = _M.check_scopes

--- Space-separated scopes as an array.
function _M.split_scopes(s)
    local out = {}
    for w in gmatch(s or "", "%S+") do out[#out + 1] = w end
    return out
end
local split_scopes = _M.split_scopes

--- Check that T is a table whose every key is in FIELDS (name → true).
-- WHAT names the call in the message.
function _M.check_fields(t, fields, what)
    if type(t) ~= "table" then return fail("invalid", "%s takes a table", what) end
    for k in pairs(t) do
        if not fields[k] then
            return fail("invalid", "%s: unknown field %s", what,
                        type(k) == "string" and not find(k, CONTROL) and #k <= 64 and k or "(not a name)")
        end
    end
    return true
end
local check_fields = _M.check_fields

--- The limit and offset of a `list_*` query Q (DEFAULT and MAX: the limit
-- when none is given, and the largest).
function _M.check_paging(q, default, max)
    local limit, offset = q.limit, q.offset
    if limit == nil then
        limit = default
    elseif type(limit) ~= "number" or limit ~= floor(limit) or limit < 1 or limit > max then
        return fail("invalid", "limit must be a whole number from 1 to %d", max)
    end
    if offset == nil then
        offset = 0
    elseif type(offset) ~= "number" or offset ~= floor(offset) or offset < 0 or offset >= 2^53 then
        return fail("invalid", "offset must be a whole number, 0 or more")
    end
    return limit, offset
end
local check_paging = _M.check_paging

function _M.check_time(v, what)
    if type(v) ~= "number" or v ~= v or v == huge or v == -huge then
        return fail("invalid", "%s must be a number of seconds", what)
    end
    return v
end
local check_time = _M.check_time

---------------------------------------------------------------------------
-- applications

_M.APP_FIELDS = { name = true, owner = true, description = true, tier = true, scopes = true }
local APP_FIELDS = _M.APP_FIELDS

--- Check the fields of T that are there; returns the values to store
-- (`scopes` space-separated).
function _M.check_app(t)
    local v = {}
    local ok, code, msg
    if t.name ~= nil then
        ok, code, msg = check_name(t.name); if not ok then return nil, code, msg end
        v.name = ok
    end
    if t.owner ~= nil then
        ok, code, msg = check_text(t.owner, "owner", 1, 200); if not ok then return nil, code, msg end
        v.owner = ok
    end
    if t.description ~= nil then
        ok, code, msg = check_text(t.description, "description", 0, 1000, true)
        if not ok then return nil, code, msg end
        v.description = ok
    end
    if t.tier ~= nil then
        ok, code, msg = check_text(t.tier, "tier", 1, 64); if not ok then return nil, code, msg end
        v.tier = ok
    end
    if t.scopes ~= nil then
        ok, code, msg = check_scopes(t.scopes); if not ok then return nil, code, msg end
        v.scopes = ok
    end
    return v
end
local check_app = _M.check_app

--- `create_app`'s argument: the values to store.
function _M.check_create_app(t)
    local ok, code, msg = check_fields(t, APP_FIELDS, "create_app")
    if not ok then return nil, code, msg end
    if t.name == nil then return fail("invalid", "name is required") end
    if t.owner == nil then return fail("invalid", "owner is required") end
    return check_app(t)
end

--- `update_app`'s fields: the values to change.
function _M.check_update_app(fields)
    local ok, code, msg = check_fields(fields, APP_FIELDS, "update_app")
    if not ok then return nil, code, msg end
    return check_app(fields)
end

--- `list_apps`'s query (nil: everything): returns it, the limit, the offset.
function _M.check_list_apps(q, default, max)
    q = q or {}
    local ok, code, msg = check_fields(q, { owner = true, name = true, limit = true, offset = true }, "list_apps")
    if not ok then return nil, code, msg end
    for _, k in ipairs{ "owner", "name" } do
        if q[k] ~= nil and type(q[k]) ~= "string" then return fail("invalid", "%s must be a string", k) end
    end
    local limit, offset, why = check_paging(q, default, max)
    if not limit then return nil, offset, why end
    return q, limit, offset
end

--- An application record from ROW (its fields by name, `scopes`
-- space-separated; numbers as numbers or as their text).
function _M.app_of(row)
    return {
        id = row.id, name = row.name, owner = row.owner, description = row.description,
        tier = row.tier, scopes = split_scopes(row.scopes),
        created_at = tonumber(row.created_at), updated_at = tonumber(row.updated_at),
        revoked_at = tonumber(row.revoked_at),
    }
end

--- The check of an application's id or name.
function _M.check_app_ref(id_or_name)
    if type(id_or_name) ~= "string" or id_or_name == "" then
        return fail("invalid", "an application is named by its id or its name (a string)")
    end
    return id_or_name
end

---------------------------------------------------------------------------
-- subscriptions

--- `subscribe`'s argument.
function _M.check_subscribe(t)
    local ok, code, msg = check_fields(t, { app = true, api = true, version = true, tier = true }, "subscribe")
    if not ok then return nil, code, msg end
    for _, f in ipairs{ { "api", 200 }, { "version", 64 }, { "tier", 64 } } do
        if t[f[1]] == nil then return fail("invalid", "%s is required", f[1]) end
        ok, code, msg = check_text(t[f[1]], f[1], 1, f[2])
        if not ok then return nil, code, msg end
    end
    if t.app == nil then return fail("invalid", "app is required") end
    return t
end

--- `list_subscriptions`'s query (nil: everything): returns it, the limit,
-- the offset.
function _M.check_list_subscriptions(q, default, max)
    q = q or {}
    local ok, code, msg = check_fields(q, { app = true, api = true, version = true, limit = true, offset = true },
                                       "list_subscriptions")
    if not ok then return nil, code, msg end
    for _, k in ipairs{ "app", "api", "version" } do
        if q[k] ~= nil and type(q[k]) ~= "string" then return fail("invalid", "%s must be a string", k) end
    end
    local limit, offset, why = check_paging(q, default, max)
    if not limit then return nil, offset, why end
    return q, limit, offset
end

--- `update_subscription`'s fields.
function _M.check_update_subscription(fields)
    local ok, code, msg = check_fields(fields, { tier = true }, "update_subscription")
    if not ok then return nil, code, msg end
    if fields.tier ~= nil then
        ok, code, msg = check_text(fields.tier, "tier", 1, 64)
        if not ok then return nil, code, msg end
    end
    return fields
end

function _M.check_sub_id(id)
    if type(id) ~= "string" then return fail("invalid", "a subscription id is a string") end
    return id
end

--- The handshake lookup's arguments.
function _M.check_subscription_args(app_name, api, version)
    if type(app_name) ~= "string" or type(api) ~= "string" or type(version) ~= "string" then
        return fail("invalid", "subscription(app_name, api, version) takes three strings")
    end
    return true
end

function _M.check_consumer_key(consumer_key)
    if type(consumer_key) ~= "string" then return fail("invalid", "a consumer key is a string") end
    return consumer_key
end

function _M.check_client_args(consumer_key, secret)
    if type(consumer_key) ~= "string" or type(secret) ~= "string" then
        return fail("invalid", "check_client takes a consumer key and a secret (strings)")
    end
    return true
end

---------------------------------------------------------------------------
-- revoked tokens, signing keys

function _M.check_jti(jti)
    if type(jti) ~= "string" or #jti < 1 or #jti > 1024 then
        return fail("invalid", "jti must be a string of 1 to 1024 bytes")
    end
    return jti
end

function _M.check_kid(kid)
    local ok, code, msg = check_text(kid, "kid", 1, 200)
    if not ok then return nil, code, msg end
    return kid
end
local check_kid = _M.check_kid

--- `add_signing_key`'s record; NOW() gives `created_at` when it has none.
-- Returns the record's `created_at`.
function _M.check_signing_key(rec, now)
    local ok, code, msg = check_fields(rec, { kid = true, private_pem = true, public_jwk = true,
                                              created_at = true, retired_at = true }, "add_signing_key")
    if not ok then return nil, code, msg end
    ok, code, msg = check_kid(rec.kid)
    if not ok then return nil, code, msg end
    for _, f in ipairs{ "private_pem", "public_jwk" } do
        local v = rec[f]
        if type(v) ~= "string" or #v < 1 or #v > 65536 then
            return fail("invalid", "%s must be a string of 1 to 65536 bytes", f)
        end
    end
    local created = rec.created_at
    if created == nil then created = now() end
    ok, code, msg = check_time(created, "created_at")
    if not ok then return nil, code, msg end
    if rec.retired_at ~= nil then
        ok, code, msg = check_time(rec.retired_at, "retired_at")
        if not ok then return nil, code, msg end
    end
    return created
end

--- `retire_signing_key`'s arguments; NOW() gives AT when it is nil.
-- Returns AT.
function _M.check_retire(kid, at, now)
    local ok, code, msg = check_kid(kid)
    if not ok then return nil, code, msg end
    if at == nil then at = now() end
    ok, code, msg = check_time(at, "at")
    if not ok then return nil, code, msg end
    return at
end

return _M
