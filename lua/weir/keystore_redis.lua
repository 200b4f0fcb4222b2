--- The key manager's store shared by several weir hosts: applications, their
-- consumer keys, subscriptions, revoked tokens and the issuer's signing
-- keys in Redis (`state.redis`), with the methods, arguments, answers,
-- checks and error codes of weir.keystore (SQLite, one host): an
-- application created through one host's admin API works on every host at
-- its next lookup. The checks both stores make are weir.keystore_rules.
--
-- Redis is reached through an executor given to `open`, `call(...)`, which
-- sends one command and returns its reply (a string, a number, an array as
-- a Lua array, nil for a nil reply) or nil and the error's text (an error
-- reply, or no connection). In a worker the executor yields the calling
-- coroutine until the answer comes, so the store never blocks the worker;
-- `open` itself sends nothing.
--
-- Every change is one Lua script (`EVALSHA`, and `EVAL` once when Redis
-- answers `NOSCRIPT`) that checks, then writes, then bumps the generation
-- counter and publishes it: Redis runs a script alone, so a change is
-- atomic and uniqueness (application names, one subscription per
-- application × API × version, consumer keys, kids) is decided inside it,
-- never by a read in weir followed by a write. A read of more than one key
-- is a script too (one consistent view). The scripts compute their keys
-- from the prefix, so the store needs a single Redis node (as `state.redis`
-- does); they never see a secret, and the consumer secret's hash is compared
-- here, in constant time.
--
-- Data model, every key under `prefix .. "km:"` (K below):
--
--     K.."gen"               counter: INCRed by every change (`generation`),
--                            published on the channel K.."changed"
--     K.."seq"               counter: the creation order of applications,
--                            subscriptions and signing keys (sorted-set scores)
--     K.."schema"            the data model's version (`SCHEMA_VERSION`), set
--                            by the first change; a store holding another
--                            version refuses every change
--     K.."recheck"           counter: rechecks of open sockets asked for (not
--                            the store's: weir.keymanager's recheck_all)
--     K.."app:"<id>          hash: id name owner description tier scopes
--                            (space-separated) created_at updated_at
--                            [revoked_at] seq
--     K.."apps"              sorted set: application ids by seq
--     K.."names"             hash: name → application id (names are unique)
--     K.."owner:"<owner>     sorted set: that owner's application ids by seq
--     K.."app_keys:"<id>     hash: key type → consumer key (one per type)
--     K.."key:"<consumer key> hash: consumer_key app_id key_type secret_hash
--                            (SHA-256 hex) created_at [revoked_at]
--     K.."sub:"<sub id>      hash: id app_id api version tier created_at
--                            updated_at seq
--     K.."subs"              sorted set: subscription ids by seq
--     K.."app_subs:"<id>     sorted set: an application's subscription ids by seq
--     K.."app_sub_ix:"<id>   hash: api "\n" version → subscription id (unique;
--                            neither may hold a control character)
--     K.."api_subs:"<api>    sorted set: an API's subscription ids by seq
--     K.."revoked"           sorted set: revoked jtis by their token's expiry
--     K.."sk:"<kid>          hash: kid private_pem public_jwk created_at
--                            [retired_at] seq
--     K.."sks"               sorted set: kids by seq
--
-- Times are stored as text (`%.17g`: exact), numbers in answers. A revoked
-- jti stays until `purge` passes its expiry, as in weir.keystore.
--
-- Errors are returned as `nil, code, message`, with weir.keystore's codes:
-- "invalid", "conflict", "not_found", "internal" (Redis answered an error,
-- could not be reached, or the store is closed). Messages never hold a
-- secret, a secret's hash or a private key.
--
-- @module weir.keystore_redis
-- @usage local keystore_redis = require "weir.keystore_redis"
-- local st = assert(keystore_redis.open{ call = redis_call, prefix = "weir:" })
-- local app = assert(st:create_app{ name = "app1", owner = "alice" })
-- local keys = assert(st:generate_keys(app.id, "production"))
-- local same_app, key_type = st:check_client(keys.consumer_key, keys.consumer_secret)

local ffi   = require "ffi"
local rules = require "weir.keystore_rules"

local type, pairs, ipairs, next, tostring, tonumber, setmetatable =
      type, pairs, ipairs, next, tostring, tonumber, setmetatable
local find, format, lower, sub = string.find, string.format, string.lower, string.sub
local concat, sort, unpack = table.concat, table.sort, unpack
local floor, ceil = math.floor, math.ceil
local ffi_new = ffi.new

local fail, uuid, is_uuid, check_fields, check_time = rules.fail, rules.uuid, rules.is_uuid,
                                                      rules.check_fields, rules.check_time
local rand_failed, name_taken, app_of = rules.rand_failed, rules.name_taken, rules.app_of

local _M = {
    _VERSION = "0.1.0",
    --- `list_*`: rows per page by default, and at most.
    DEFAULT_LIMIT = rules.DEFAULT_LIMIT,
    MAX_LIMIT = rules.MAX_LIMIT,
    --- An application's tier when `create_app` is given none.
    DEFAULT_TIER = rules.DEFAULT_TIER,
    --- The key prefix when `open` is given none (`state.key_prefix`'s default).
    DEFAULT_PREFIX = "weir:",
    --- The version of the data model above (K.."schema").
    SCHEMA_VERSION = 1,
}

ffi.cdef [[ unsigned char *SHA1(const unsigned char *d, size_t n, unsigned char *md); ]]

---------------------------------------------------------------------------
-- the scripts: ARGV[1] is always K, the store's key prefix

-- Shared by every script.
local PREAMBLE = [=[
local K = ARGV[1]
local function flat(key) return redis.call('HGETALL', key) end
-- the application ID (how == 'id') or named REF, when it exists
local function resolve(how, ref)
    local id = ref
    if how ~= 'id' then
        id = redis.call('HGET', K .. 'names', ref)
        if not id then return nil end
    end
    if redis.call('EXISTS', K .. 'app:' .. id) == 0 then return nil end
    return id
end
local function no_app() return { 'not_found', 'no such application' } end
local function sub_of(sid)
    local s = flat(K .. 'sub:' .. sid)
    local app_id
    for i = 1, #s, 2 do if s[i] == 'app_id' then app_id = s[i + 1] end end
    return { s, redis.call('HGET', K .. 'app:' .. app_id, 'name') or '' }
end
]=]

-- Before any change: the data model's version. After it: the generation.
local WRITE = PREAMBLE .. format([=[
local function changed()
    local g = redis.call('INCR', K .. 'gen')
    redis.call('PUBLISH', K .. 'changed', g)
end
local version = redis.call('GET', K .. 'schema')
if version and (tonumber(version) or 0) ~= %d then
    return { 'internal', 'the key store in Redis holds data of version ' .. version .. ', not this weir\'s (%d)' }
end
if not version then redis.call('SET', K .. 'schema', '%d') end
]=], _M.SCHEMA_VERSION, _M.SCHEMA_VERSION, _M.SCHEMA_VERSION)

local SRC = {}

-- ARGV: K, id, name, owner, description, tier, scopes, now
SRC.create_app = WRITE .. [=[
local id, name, owner, now = ARGV[2], ARGV[3], ARGV[4], ARGV[8]
if redis.call('HEXISTS', K .. 'names', name) == 1 then return { 'conflict', 'name' } end
if redis.call('EXISTS', K .. 'app:' .. id) == 1 then return { 'internal', 'an application id was drawn twice' } end
local seq = redis.call('INCR', K .. 'seq')
redis.call('HSET', K .. 'app:' .. id, 'id', id, 'name', name, 'owner', owner, 'description', ARGV[5],
           'tier', ARGV[6], 'scopes', ARGV[7], 'created_at', now, 'updated_at', now, 'seq', seq)
redis.call('HSET', K .. 'names', name, id)
redis.call('ZADD', K .. 'apps', seq, id)
redis.call('ZADD', K .. 'owner:' .. owner, seq, id)
changed()
return { 'ok', flat(K .. 'app:' .. id) }
]=]

-- ARGV: K, how, ref, now, then field, value for each field to change
SRC.update_app = WRITE .. [=[
local id = resolve(ARGV[2], ARGV[3])
if not id then return no_app() end
local akey = K .. 'app:' .. id
local set = {}
for i = 5, #ARGV, 2 do set[ARGV[i]] = ARGV[i + 1] end
local cur = redis.call('HMGET', akey, 'name', 'owner')
local rename = set.name and set.name ~= cur[1]
if rename and redis.call('HEXISTS', K .. 'names', set.name) == 1 then return { 'conflict', 'name' } end
if rename then
    redis.call('HDEL', K .. 'names', cur[1])
    redis.call('HSET', K .. 'names', set.name, id)
end
if set.owner and set.owner ~= cur[2] then
    local seq = redis.call('ZSCORE', K .. 'apps', id)
    redis.call('ZREM', K .. 'owner:' .. cur[2], id)
    redis.call('ZADD', K .. 'owner:' .. set.owner, seq, id)
end
local args = { 'HSET', akey, 'updated_at', ARGV[4] }
for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
redis.call(unpack(args))
changed()
return { 'ok', flat(akey) }
]=]

-- ARGV: K, how, ref
SRC.delete_app = WRITE .. [=[
local id = resolve(ARGV[2], ARGV[3])
if not id then return no_app() end
local akey = K .. 'app:' .. id
local cur = redis.call('HMGET', akey, 'name', 'owner')
for _, ck in ipairs(redis.call('HVALS', K .. 'app_keys:' .. id)) do redis.call('DEL', K .. 'key:' .. ck) end
for _, sid in ipairs(redis.call('ZRANGE', K .. 'app_subs:' .. id, 0, -1)) do
    local api = redis.call('HGET', K .. 'sub:' .. sid, 'api')
    if api then redis.call('ZREM', K .. 'api_subs:' .. api, sid) end
    redis.call('ZREM', K .. 'subs', sid)
    redis.call('DEL', K .. 'sub:' .. sid)
end
redis.call('DEL', K .. 'app_keys:' .. id, K .. 'app_subs:' .. id, K .. 'app_sub_ix:' .. id, akey)
redis.call('HDEL', K .. 'names', cur[1])
redis.call('ZREM', K .. 'apps', id)
redis.call('ZREM', K .. 'owner:' .. cur[2], id)
changed()
return { 'ok' }
]=]

-- ARGV: K, how, ref, now
SRC.revoke_app = WRITE .. [=[
local id = resolve(ARGV[2], ARGV[3])
if not id then return no_app() end
local akey = K .. 'app:' .. id
if redis.call('HEXISTS', akey, 'revoked_at') == 0 then
    redis.call('HSET', akey, 'revoked_at', ARGV[4], 'updated_at', ARGV[4])
    changed()
end
return { 'ok', flat(akey) }
]=]

-- ARGV: K, how, ref, key type, consumer key, secret hash, now
SRC.generate_keys = WRITE .. [=[
local id = resolve(ARGV[2], ARGV[3])
if not id then return no_app() end
local kt, ck = ARGV[4], ARGV[5]
if redis.call('HEXISTS', K .. 'app:' .. id, 'revoked_at') == 1 then
    return { 'conflict', 'the application is revoked' }
end
if redis.call('EXISTS', K .. 'key:' .. ck) == 1 then return { 'internal', 'could not store the new key' } end
local old = redis.call('HGET', K .. 'app_keys:' .. id, kt)
if old then redis.call('DEL', K .. 'key:' .. old) end
redis.call('HSET', K .. 'key:' .. ck, 'consumer_key', ck, 'app_id', id, 'key_type', kt,
           'secret_hash', ARGV[6], 'created_at', ARGV[7])
redis.call('HSET', K .. 'app_keys:' .. id, kt, ck)
changed()
return { 'ok' }
]=]

-- ARGV: K, consumer key, now
SRC.revoke_key = WRITE .. [=[
local kkey = K .. 'key:' .. ARGV[2]
if redis.call('EXISTS', kkey) == 0 then return { 'not_found', 'no such consumer key' } end
if redis.call('HEXISTS', kkey, 'revoked_at') == 0 then
    redis.call('HSET', kkey, 'revoked_at', ARGV[3])
    changed()
end
return { 'ok' }
]=]

-- ARGV: K, how, ref, subscription id, api, version, tier, now
SRC.subscribe = WRITE .. [=[
local id = resolve(ARGV[2], ARGV[3])
if not id then return no_app() end
local sid, api, version, now = ARGV[4], ARGV[5], ARGV[6], ARGV[8]
if redis.call('HEXISTS', K .. 'app:' .. id, 'revoked_at') == 1 then
    return { 'conflict', 'the application is revoked' }
end
local ix = api .. '\n' .. version
if redis.call('HEXISTS', K .. 'app_sub_ix:' .. id, ix) == 1 then
    return { 'conflict', 'the application is subscribed to that API version already' }
end
if redis.call('EXISTS', K .. 'sub:' .. sid) == 1 then return { 'internal', 'a subscription id was drawn twice' } end
local seq = redis.call('INCR', K .. 'seq')
redis.call('HSET', K .. 'sub:' .. sid, 'id', sid, 'app_id', id, 'api', api, 'version', version, 'tier', ARGV[7],
           'created_at', now, 'updated_at', now, 'seq', seq)
redis.call('HSET', K .. 'app_sub_ix:' .. id, ix, sid)
redis.call('ZADD', K .. 'subs', seq, sid)
redis.call('ZADD', K .. 'app_subs:' .. id, seq, sid)
redis.call('ZADD', K .. 'api_subs:' .. api, seq, sid)
changed()
return { 'ok', sub_of(sid) }
]=]

-- ARGV: K, subscription id, tier, now
SRC.update_subscription = WRITE .. [=[
local sid = ARGV[2]
if redis.call('EXISTS', K .. 'sub:' .. sid) == 0 then return { 'not_found', 'no such subscription' } end
redis.call('HSET', K .. 'sub:' .. sid, 'tier', ARGV[3], 'updated_at', ARGV[4])
changed()
return { 'ok', sub_of(sid) }
]=]

-- ARGV: K, subscription id
SRC.unsubscribe = WRITE .. [=[
local sid = ARGV[2]
local s = redis.call('HMGET', K .. 'sub:' .. sid, 'app_id', 'api', 'version')
if not s[1] then return { 'not_found', 'no such subscription' } end
redis.call('HDEL', K .. 'app_sub_ix:' .. s[1], s[2] .. '\n' .. s[3])
redis.call('ZREM', K .. 'app_subs:' .. s[1], sid)
redis.call('ZREM', K .. 'api_subs:' .. s[2], sid)
redis.call('ZREM', K .. 'subs', sid)
redis.call('DEL', K .. 'sub:' .. sid)
changed()
return { 'ok' }
]=]

-- ARGV: K, jti, exp (whole seconds); the later expiry is kept
SRC.revoke_token = WRITE .. [=[
local old = redis.call('ZSCORE', K .. 'revoked', ARGV[2])
if not old or tonumber(old) < tonumber(ARGV[3]) then redis.call('ZADD', K .. 'revoked', ARGV[3], ARGV[2]) end
changed()
return { 'ok' }
]=]

-- ARGV: K, now: forgets the jtis whose expiry is before it
SRC.purge = WRITE .. [=[
local n = redis.call('ZREMRANGEBYSCORE', K .. 'revoked', '-inf', '(' .. ARGV[2])
if n > 0 then changed() end
return { 'ok', n }
]=]

-- ARGV: K, kid, private_pem, public_jwk, created_at, retired_at ('' for none)
SRC.add_signing_key = WRITE .. [=[
local kid = ARGV[2]
if redis.call('EXISTS', K .. 'sk:' .. kid) == 1 then return { 'conflict', 'a signing key with that kid exists' } end
local seq = redis.call('INCR', K .. 'seq')
redis.call('HSET', K .. 'sk:' .. kid, 'kid', kid, 'private_pem', ARGV[3], 'public_jwk', ARGV[4],
           'created_at', ARGV[5], 'seq', seq)
if ARGV[6] ~= '' then redis.call('HSET', K .. 'sk:' .. kid, 'retired_at', ARGV[6]) end
redis.call('ZADD', K .. 'sks', seq, kid)
changed()
return { 'ok' }
]=]

-- ARGV: K, kid, at
SRC.retire_signing_key = WRITE .. [=[
if redis.call('EXISTS', K .. 'sk:' .. ARGV[2]) == 0 then return { 'not_found', 'no such signing key' } end
redis.call('HSET', K .. 'sk:' .. ARGV[2], 'retired_at', ARGV[3])
changed()
return { 'ok' }
]=]

-- ARGV: K, kid
SRC.delete_signing_key = WRITE .. [=[
if redis.call('DEL', K .. 'sk:' .. ARGV[2]) == 0 then return { 'not_found', 'no such signing key' } end
redis.call('ZREM', K .. 'sks', ARGV[2])
changed()
return { 'ok' }
]=]

-- reads

-- ARGV: K, how, ref
SRC.get_app = PREAMBLE .. [=[
local id = resolve(ARGV[2], ARGV[3])
if not id then return no_app() end
return { 'ok', flat(K .. 'app:' .. id) }
]=]

-- ARGV: K, owner ('' for any), has owner ('1'/'0'), name, has name, offset, stop (the last index)
-- answers 'ok', the total, then the page's applications
SRC.list_apps = PREAMBLE .. [=[
local owner, by_owner, name, by_name = ARGV[2], ARGV[3] == '1', ARGV[4], ARGV[5] == '1'
local offset, stop = tonumber(ARGV[6]), tonumber(ARGV[7])
if by_name then
    local id = resolve('name', name)
    if not id or (by_owner and redis.call('HGET', K .. 'app:' .. id, 'owner') ~= owner) then return { 'ok', 0 } end
    if offset > 0 then return { 'ok', 1 } end
    return { 'ok', 1, flat(K .. 'app:' .. id) }
end
local index = by_owner and (K .. 'owner:' .. owner) or (K .. 'apps')
local out = { 'ok', redis.call('ZCARD', index) }
for _, id in ipairs(redis.call('ZRANGE', index, ARGV[6], ARGV[7])) do out[#out + 1] = flat(K .. 'app:' .. id) end
return out
]=]

-- ARGV: K, how, ref: 'ok', then the keys (without their secret's hash)
SRC.list_keys = PREAMBLE .. [=[
local id = resolve(ARGV[2], ARGV[3])
if not id then return no_app() end
local out = { 'ok' }
for _, ck in ipairs(redis.call('HVALS', K .. 'app_keys:' .. id)) do
    out[#out + 1] = redis.call('HMGET', K .. 'key:' .. ck, 'consumer_key', 'key_type', 'created_at', 'revoked_at')
    out[#out][4] = out[#out][4] or ''
end
return out
]=]

-- ARGV: K, consumer key, '1' with the secret's hash: 'ok', the key (without
-- the hash unless asked), its application
SRC.find_key = PREAMBLE .. [=[
local k = redis.call('HMGET', K .. 'key:' .. ARGV[2], 'consumer_key', 'key_type', 'created_at', 'revoked_at',
                     'app_id', 'secret_hash')
if not k[1] then return { 'not_found', 'no such consumer key' } end
local app = flat(K .. 'app:' .. k[5])
if #app == 0 then return { 'not_found', 'no such consumer key' } end
return { 'ok', { k[1], k[2], k[3], k[4] or '', ARGV[3] == '1' and k[6] or '' }, app }
]=]

-- ARGV: K, subscription id
SRC.get_subscription = PREAMBLE .. [=[
if redis.call('EXISTS', K .. 'sub:' .. ARGV[2]) == 0 then return { 'not_found', 'no such subscription' } end
return { 'ok', sub_of(ARGV[2]) }
]=]

-- ARGV: K, app how ('' for any), app ref, has api, api, has version, version, offset, limit
-- answers 'ok', the total, then the page's subscriptions
SRC.list_subscriptions = PREAMBLE .. [=[
local how, ref = ARGV[2], ARGV[3]
local by_api, api, by_version, version = ARGV[4] == '1', ARGV[5], ARGV[6] == '1', ARGV[7]
local offset, limit = tonumber(ARGV[8]), tonumber(ARGV[9])
local index
if how ~= '' then
    local id = resolve(how, ref)
    if not id then return { 'ok', 0 } end
    index = K .. 'app_subs:' .. id
elseif by_api then
    index = K .. 'api_subs:' .. api
    by_api = false     -- the index is the filter
else
    index = K .. 'subs'
end
local out = { 'ok', 0 }
if not by_api and not by_version then
    out[2] = redis.call('ZCARD', index)
    for _, sid in ipairs(redis.call('ZRANGE', index, offset, offset + limit - 1)) do out[#out + 1] = sub_of(sid) end
    return out
end
local n = 0
for _, sid in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local s = redis.call('HMGET', K .. 'sub:' .. sid, 'api', 'version')
    if (not by_api or s[1] == api) and (not by_version or s[2] == version) then
        n = n + 1
        if n > offset and n <= offset + limit then out[#out + 1] = sub_of(sid) end
    end
end
out[2] = n
return out
]=]

-- ARGV: K, application name, api, version
SRC.subscription = PREAMBLE .. [=[
local id = resolve('name', ARGV[2])
if not id or redis.call('HEXISTS', K .. 'app:' .. id, 'revoked_at') == 1 then
    return { 'not_found', 'no such subscription' }
end
local sid = redis.call('HGET', K .. 'app_sub_ix:' .. id, ARGV[3] .. '\n' .. ARGV[4])
if not sid then return { 'not_found', 'no such subscription' } end
local s = redis.call('HMGET', K .. 'sub:' .. sid, 'api', 'version')
if s[1] ~= ARGV[3] or s[2] ~= ARGV[4] then return { 'not_found', 'no such subscription' } end
return { 'ok', sub_of(sid) }
]=]

-- ARGV: K: 'ok', then every signing key in the order added
SRC.signing_keys = PREAMBLE .. [=[
local out = { 'ok' }
for _, kid in ipairs(redis.call('ZRANGE', K .. 'sks', 0, -1)) do out[#out + 1] = flat(K .. 'sk:' .. kid) end
return out
]=]

-- The scripts with their SHA-1 (EVALSHA's name for them).
local SCRIPTS = {}
do
    local md = ffi_new("unsigned char[20]")
    for name, src in pairs(SRC) do
        rules.crypto.SHA1(src, #src, md)
        local h = {}
        for i = 0, 19 do h[i + 1] = format("%02x", md[i]) end
        SCRIPTS[name] = { src = src, sha = concat(h), name = name }
    end
end
_M._scripts = SCRIPTS   -- for the specs

---------------------------------------------------------------------------
-- talking to Redis

local Store = {}
Store.__index = Store

-- A number as Redis takes it: exact, never "1e+15".
local function num(v) return format("%.17g", v) end

-- The error text of Redis, short and on one line.
local function redis_error(err)
    err = tostring(err):gsub("[%c]", " ")
    if #err > 300 then err = sub(err, 1, 300) .. "..." end
    return fail("internal", "key store: redis: %s", err)
end

-- Send one command: returns true and the reply, or nil, code, message.
local function command(self, ...)
    local call = self.call
    if not call then return fail("internal", "the key store is closed") end
    local reply, err = call(...)
    if reply == nil and err ~= nil then return redis_error(err) end
    return true, reply
end

-- Run the script S with ARGV K, ...: returns its answer (an array whose
-- first element is "ok"), or nil, code, message.
local function run(self, s, ...)
    local call = self.call
    if not call then return fail("internal", "the key store is closed") end
    local reply, err = call("EVALSHA", s.sha, "0", self.km, ...)
    if reply == nil and type(err) == "string" and find(err, "^NOSCRIPT") then
        reply, err = call("EVAL", s.src, "0", self.km, ...)
    end
    if reply == nil and err ~= nil then return redis_error(err) end
    if type(reply) ~= "table" or type(reply[1]) ~= "string" then
        return fail("internal", "key store: redis: an unexpected answer to %s", s.name)
    end
    local status = reply[1]
    if status == "ok" then return reply end
    if status == "conflict" or status == "not_found" or status == "internal" then
        return fail(status, tostring(reply[2]))
    end
    return fail("internal", "key store: redis: an unexpected answer to %s", s.name)
end

-- A hash's fields from HGETALL's flat array.
local function hash_of(flat)
    local t = {}
    if type(flat) == "table" then
        for i = 1, #flat - 1, 2 do t[flat[i]] = flat[i + 1] end
    end
    return t
end

local function app_from(flat) return app_of(hash_of(flat)) end

-- How the scripts find an application: by id (lower case) or by name.
local function app_ref(id_or_name)
    local ok, code, msg = rules.check_app_ref(id_or_name)
    if not ok then return nil, code, msg end
    if is_uuid(id_or_name) then return "id", lower(id_or_name) end
    return "name", id_or_name
end

local function now_seconds(self)
    return floor(self.now())
end

---------------------------------------------------------------------------
-- opening

--- Open the store over an executor. Nothing is sent to Redis until the
-- first call.
-- @tparam table opts `call` (the executor: `call(cmd, ...)` returns the
--   reply, or nil and the error's text), `prefix` (optional, the keys'
--   prefix, default `DEFAULT_PREFIX`: the store's keys are `prefix .. "km:"`
--   and more), `now` (optional, a function returning the time in seconds,
--   default `os.time`)
-- @treturn[1] table the store
-- @treturn[2] nil
-- @treturn[2] string code
-- @treturn[2] string message
-- @usage local st = assert(keystore_redis.open{ call = call, prefix = conf.state.key_prefix })
function _M.open(opts)
    local ok, code, msg = check_fields(opts, { call = true, prefix = true, now = true }, "keystore_redis.open")
    if not ok then return nil, code, msg end
    if type(opts.call) ~= "function" then
        return fail("invalid", "keystore_redis.open: call must be a function (the Redis executor)")
    end
    local prefix = opts.prefix
    if prefix == nil then prefix = _M.DEFAULT_PREFIX end
    if type(prefix) ~= "string" or #prefix > 200 then
        return fail("invalid", "keystore_redis.open: prefix must be a string of at most 200 bytes")
    end
    if opts.now ~= nil and type(opts.now) ~= "function" then
        return fail("invalid", "keystore_redis.open: now must be a function")
    end
    return setmetatable({ call = opts.call, prefix = prefix, km = prefix .. "km:", now = opts.now or os.time },
                        Store)
end

--- Close the store: later calls return nil, "internal". It does not close
-- the executor's connection (the store does not own it). Closing twice is fine.
-- @usage st:close()
function Store:close()
    self.call = nil
    return true
end

--- The version of the data model in Redis: `SCHEMA_VERSION` once anything
-- was stored, 0 before.
-- @treturn number
function Store:schema_version()
    local ok, v, msg = command(self, "GET", self.km .. "schema")
    if not ok then return nil, v, msg end
    return tonumber(v) or 0
end

--- A number that changes whenever any host has committed a change (the
-- counter K.."gen", which every change INCRs in the script that makes it;
-- the same number is published on K.."changed"). One GET. Compare it with
-- the value a cache was filled at.
-- @treturn number
-- @usage if st:generation() ~= cache.gen then cache = refill() end
function Store:generation()
    local ok, v, msg = command(self, "GET", self.km .. "gen")
    if not ok then return nil, v, msg end
    return tonumber(v) or 0
end

---------------------------------------------------------------------------
-- applications

--- Create an application (see weir.keystore's `create_app`).
-- @tparam table t `name`, `owner`, `description`, `tier`, `scopes`
-- @treturn table the application
-- @usage local app, code, msg = st:create_app{ name = "app1", owner = "alice" }
function Store:create_app(t)
    local v, code, msg = rules.check_create_app(t)
    if not v then return nil, code, msg end
    local id = uuid()
    if not id then return rand_failed() end
    local now = now_seconds(self)
    local r
    r, code, msg = run(self, SCRIPTS.create_app, id, v.name, v.owner, v.description or "",
                       v.tier or _M.DEFAULT_TIER, v.scopes or "", num(now))
    if not r then
        if code == "conflict" then return name_taken(v.name) end
        return nil, code, msg
    end
    return app_from(r[2])
end

--- An application, by id or by name.
-- @tparam string id_or_name
-- @treturn table the application, or nil, "not_found"
function Store:get_app(id_or_name)
    local how, ref, msg = app_ref(id_or_name)
    if not how then return nil, ref, msg end
    local r, code
    r, code, msg = run(self, SCRIPTS.get_app, how, ref)
    if not r then return nil, code, msg end
    return app_from(r[2])
end

--- Applications, in the order they were created.
-- @tparam[opt] table q `owner`, `name` (exact matches), `limit`, `offset`
-- @treturn table an array of applications
-- @treturn number how many match, whatever the limit
function Store:list_apps(q)
    local limit, offset
    q, limit, offset = rules.check_list_apps(q, _M.DEFAULT_LIMIT, _M.MAX_LIMIT)
    if not q then return nil, limit, offset end
    local r, code, msg = run(self, SCRIPTS.list_apps, q.owner or "", q.owner and "1" or "0", q.name or "",
                             q.name and "1" or "0", num(offset), num(offset + limit - 1))
    if not r then return nil, code, msg end
    local out = {}
    for i = 3, #r do out[i - 2] = app_from(r[i]) end
    return out, tonumber(r[2])
end

--- Change an application's fields (see weir.keystore's `update_app`).
-- @tparam string id the application's id (or name)
-- @tparam table fields any of `name`, `owner`, `description`, `tier`, `scopes`
-- @treturn table the application as it is now
function Store:update_app(id, fields)
    local v, code, msg = rules.check_update_app(fields)
    if not v then return nil, code, msg end
    local now = now_seconds(self)
    if next(v) == nil then return self:get_app(id) end
    local how, ref
    how, ref, msg = app_ref(id)
    if not how then return nil, ref, msg end
    local args = {}
    for _, f in ipairs{ "name", "owner", "description", "tier", "scopes" } do
        if v[f] then args[#args + 1] = f; args[#args + 1] = v[f] end
    end
    local r
    r, code, msg = run(self, SCRIPTS.update_app, how, ref, num(now), unpack(args))
    if not r then
        if code == "conflict" then return name_taken(v.name) end
        return nil, code, msg
    end
    return app_from(r[2])
end

--- Delete an application, with its keys and subscriptions.
-- @tparam string id the application's id (or name)
-- @treturn boolean true
function Store:delete_app(id)
    local how, ref, msg = app_ref(id)
    if not how then return nil, ref, msg end
    local r, code
    r, code, msg = run(self, SCRIPTS.delete_app, how, ref)
    if not r then return nil, code, msg end
    return true
end

--- Revoke an application (see weir.keystore's `revoke_app`).
-- @tparam string id the application's id (or name)
-- @treturn table the application, `revoked_at` set
function Store:revoke_app(id)
    local now = now_seconds(self)
    local how, ref, msg = app_ref(id)
    if not how then return nil, ref, msg end
    local r, code
    r, code, msg = run(self, SCRIPTS.revoke_app, how, ref, num(now))
    if not r then return nil, code, msg end
    return app_from(r[2])
end

---------------------------------------------------------------------------
-- consumer keys

local function key_of(k)
    return { consumer_key = k[1], key_type = k[2], created_at = tonumber(k[3]), revoked_at = tonumber(k[4]) }
end

--- Make a new consumer key and secret of KEY_TYPE for an application,
-- replacing the pair of that type (see weir.keystore's `generate_keys`).
-- @tparam string app_id the application's id (or name)
-- @tparam string key_type "production" or "sandbox"
-- @treturn table `consumer_key`, `consumer_secret` (only here), `key_type`, `created_at`
function Store:generate_keys(app_id, key_type)
    local ok, code, msg = rules.check_key_type(key_type)
    if not ok then return nil, code, msg end
    local key, secret, secret_hash = rules.new_keys()
    if not key then return rand_failed() end
    local now = now_seconds(self)
    local how, ref
    how, ref, msg = app_ref(app_id)
    if not how then return nil, ref, msg end
    local r
    r, code, msg = run(self, SCRIPTS.generate_keys, how, ref, key_type, key, secret_hash, num(now))
    if not r then return nil, code, msg end
    return { consumer_key = key, consumer_secret = secret, key_type = key_type, created_at = now }
end

--- An application's consumer keys, without secrets, by key type.
-- @tparam string app_id the application's id (or name)
-- @treturn table an array of `{ consumer_key, key_type, created_at, revoked_at }`
function Store:list_keys(app_id)
    local how, ref, msg = app_ref(app_id)
    if not how then return nil, ref, msg end
    local r, code
    r, code, msg = run(self, SCRIPTS.list_keys, how, ref)
    if not r then return nil, code, msg end
    local out = {}
    for i = 2, #r do out[i - 1] = key_of(r[i]) end
    sort(out, function(a, b) return a.key_type < b.key_type end)
    return out
end

--- Check client credentials: the secret's hash compared here in constant
-- time; an unknown key costs the same hash and comparison.
-- @tparam string consumer_key
-- @tparam string secret
-- @treturn[1] table the application
-- @treturn[1] string the key type
-- @treturn[2] nil, "not_found", "invalid client credentials"
function Store:check_client(consumer_key, secret)
    local ok, code, msg = rules.check_client_args(consumer_key, secret)
    if not ok then return nil, code, msg end
    local r
    r, code, msg = run(self, SCRIPTS.find_key, consumer_key, "1")
    if not r and code ~= "not_found" then return nil, code, msg end
    local k = r and r[2]
    local same = rules.same_secret(secret, k and k[5])
    local app = r and app_from(r[3])
    if not r or not same or k[4] ~= "" or app.revoked_at then
        return fail("not_found", "invalid client credentials")
    end
    return app, k[2]
end

--- A consumer key's record and application, revoked or not (no secret).
-- @tparam string consumer_key
-- @treturn table the application
-- @treturn string the key type
-- @treturn table `{ consumer_key, key_type, created_at, revoked_at }`
function Store:find_key(consumer_key)
    local ok, code, msg = rules.check_consumer_key(consumer_key)
    if not ok then return nil, code, msg end
    local r
    r, code, msg = run(self, SCRIPTS.find_key, consumer_key, "0")
    if not r then return nil, code, msg end
    return app_from(r[3]), r[2][2], key_of(r[2])
end

--- Revoke a consumer key; revoking twice keeps the first time.
-- @tparam string consumer_key
-- @treturn boolean true
function Store:revoke_key(consumer_key)
    local ok, code, msg = rules.check_consumer_key(consumer_key)
    if not ok then return nil, code, msg end
    local now = now_seconds(self)
    ok, code, msg = run(self, SCRIPTS.revoke_key, consumer_key, num(now))
    if not ok then return nil, code, msg end
    return true
end

---------------------------------------------------------------------------
-- subscriptions

-- A subscription from a script's { HGETALL of it, its application's name }.
local function sub_from(pair)
    local s = hash_of(pair[1])
    return { id = s.id, app_id = s.app_id, app_name = pair[2], api = s.api, version = s.version, tier = s.tier,
             created_at = tonumber(s.created_at), updated_at = tonumber(s.updated_at) }
end

--- Subscribe an application to an API version at a tier.
-- @tparam table t `app` (id or name), `api`, `version`, `tier`
-- @treturn table the subscription; "conflict" when the application has one
--   for that API version, or is revoked
function Store:subscribe(t)
    local ok, code, msg = rules.check_subscribe(t)
    if not ok then return nil, code, msg end
    local id = uuid()
    if not id then return rand_failed() end
    local now = now_seconds(self)
    local how, ref
    how, ref, msg = app_ref(t.app)
    if not how then return nil, ref, msg end
    local r
    r, code, msg = run(self, SCRIPTS.subscribe, how, ref, id, t.api, t.version, t.tier, num(now))
    if not r then return nil, code, msg end
    return sub_from(r[2])
end

--- Subscriptions, in the order they were made.
-- @tparam[opt] table q `app` (id or name), `api`, `version`, `limit`, `offset`
-- @treturn table an array of subscriptions
-- @treturn number how many match, whatever the limit
function Store:list_subscriptions(q)
    local limit, offset
    q, limit, offset = rules.check_list_subscriptions(q, _M.DEFAULT_LIMIT, _M.MAX_LIMIT)
    if not q then return nil, limit, offset end
    local how, ref = "", ""
    if q.app ~= nil then
        if is_uuid(q.app) then how, ref = "id", lower(q.app) else how, ref = "name", q.app end
    end
    local r, code, msg = run(self, SCRIPTS.list_subscriptions, how, ref, q.api and "1" or "0", q.api or "",
                             q.version and "1" or "0", q.version or "", num(offset), num(limit))
    if not r then return nil, code, msg end
    local out = {}
    for i = 3, #r do out[i - 2] = sub_from(r[i]) end
    return out, tonumber(r[2])
end

--- A subscription by id.
-- @tparam string id
-- @treturn table the subscription, or nil, "not_found"
function Store:get_subscription(id)
    local ok, code, msg = rules.check_sub_id(id)
    if not ok then return nil, code, msg end
    local r
    r, code, msg = run(self, SCRIPTS.get_subscription, lower(id))
    if not r then return nil, code, msg end
    return sub_from(r[2])
end

--- Change a subscription's tier.
-- @tparam string id
-- @tparam table fields `tier`
-- @treturn table the subscription as it is now
function Store:update_subscription(id, fields)
    local ok, code, msg = rules.check_update_subscription(fields)
    if not ok then return nil, code, msg end
    local now = now_seconds(self)
    if fields.tier == nil then return self:get_subscription(id) end
    ok, code, msg = rules.check_sub_id(id)
    if not ok then return nil, code, msg end
    local r
    r, code, msg = run(self, SCRIPTS.update_subscription, lower(id), fields.tier, num(now))
    if not r then return nil, code, msg end
    return sub_from(r[2])
end

--- Delete a subscription.
-- @tparam string id
-- @treturn boolean true
function Store:unsubscribe(id)
    local ok, code, msg = rules.check_sub_id(id)
    if not ok then return nil, code, msg end
    ok, code, msg = run(self, SCRIPTS.unsubscribe, lower(id))
    if not ok then return nil, code, msg end
    return true
end

--- The handshake's lookup: the subscription of the application named
-- APP_NAME to API version, when the application is not revoked.
-- @tparam string app_name
-- @tparam string api
-- @tparam string version
-- @treturn table the subscription, or nil, "not_found"
function Store:subscription(app_name, api, version)
    local ok, code, msg = rules.check_subscription_args(app_name, api, version)
    if not ok then return nil, code, msg end
    local r
    r, code, msg = run(self, SCRIPTS.subscription, app_name, api, version)
    if not r then return nil, code, msg end
    return sub_from(r[2])
end

---------------------------------------------------------------------------
-- revoked tokens

--- Revoke the token with id JTI until EXP (seconds); kept until `purge`
-- passes that time. Revoking again keeps the later EXP.
-- @tparam string jti
-- @tparam number exp
-- @treturn boolean true
function Store:revoke_token(jti, exp)
    local ok, code, msg = rules.check_jti(jti)
    if not ok then return nil, code, msg end
    ok, code, msg = check_time(exp, "exp")
    if not ok then return nil, code, msg end
    ok, code, msg = run(self, SCRIPTS.revoke_token, jti, num(ceil(exp)))
    if not ok then return nil, code, msg end
    return true
end

--- Whether JTI has been revoked (and not purged yet). On failure it returns
-- nil, "internal", message: treat that as "cannot tell", not "no".
-- @tparam string jti
-- @treturn boolean
function Store:token_revoked(jti)
    local ok, code, msg = rules.check_jti(jti)
    if not ok then return nil, code, msg end
    local score
    ok, score, msg = command(self, "ZSCORE", self.km .. "revoked", jti)
    if not ok then return nil, score, msg end
    return score ~= nil
end

--- Forget revocations of tokens that expired before NOW (seconds, default
-- the clock).
-- @tparam[opt] number now
-- @treturn number how many were removed
function Store:purge(now)
    if now == nil then now = self.now() end
    local ok, code, msg = check_time(now, "now")
    if not ok then return nil, code, msg end
    local r
    r, code, msg = run(self, SCRIPTS.purge, num(now))
    if not r then return nil, code, msg end
    return tonumber(r[2])
end

---------------------------------------------------------------------------
-- signing keys (records of weir.issuer; their contents are not checked here)

--- The issuer's signing keys, oldest first (by `created_at`, then by when
-- they were added).
-- @treturn table an array of `{ kid, private_pem, public_jwk, created_at, retired_at }`
function Store:signing_keys()
    local r, code, msg = run(self, SCRIPTS.signing_keys)
    if not r then return nil, code, msg end
    local out, seqs = {}, {}
    for i = 2, #r do
        local k = hash_of(r[i])
        local rec = { kid = k.kid, private_pem = k.private_pem, public_jwk = k.public_jwk,
                      created_at = tonumber(k.created_at), retired_at = tonumber(k.retired_at) }
        out[#out + 1] = rec
        seqs[rec] = tonumber(k.seq) or 0
    end
    sort(out, function(a, b)
        if a.created_at ~= b.created_at then return a.created_at < b.created_at end
        return seqs[a] < seqs[b]
    end)
    return out
end

--- Add a signing key.
-- @tparam table rec `kid`, `private_pem`, `public_jwk`, `created_at` (optional,
--   default now), `retired_at` (optional)
-- @treturn boolean true; "conflict" when the kid exists
function Store:add_signing_key(rec)
    local created, code, msg = rules.check_signing_key(rec, function() return now_seconds(self) end)
    if not created then return nil, code, msg end
    local ok
    ok, code, msg = run(self, SCRIPTS.add_signing_key, rec.kid, rec.private_pem, rec.public_jwk, num(created),
                        rec.retired_at and num(rec.retired_at) or "")
    if not ok then return nil, code, msg end
    return true
end

--- Mark a signing key retired at AT (seconds, default now).
-- @tparam string kid
-- @tparam[opt] number at
-- @treturn boolean true
function Store:retire_signing_key(kid, at)
    local code, msg
    at, code, msg = rules.check_retire(kid, at, function() return now_seconds(self) end)
    if not at then return nil, code, msg end
    local ok
    ok, code, msg = run(self, SCRIPTS.retire_signing_key, kid, num(at))
    if not ok then return nil, code, msg end
    return true
end

--- Delete a signing key.
-- @tparam string kid
-- @treturn boolean true
function Store:delete_signing_key(kid)
    local ok, code, msg = rules.check_kid(kid)
    if not ok then return nil, code, msg end
    ok, code, msg = run(self, SCRIPTS.delete_signing_key, kid)
    if not ok then return nil, code, msg end
    return true
end

return _M
