--- weir's own token issuer: a ring of ES256 signing keys kept in a store,
-- short-lived JWTs signed with the newest of them, and the JWKS of them all.
--
-- Keys live in the store (the key manager's SQLite database) and nowhere
-- else: every worker process builds an issuer over the same store, and
-- `refresh` picks up what another process added, retired or deleted. A
-- key's life: generated and added (current: it signs), retired when a newer
-- key replaces it (it signs nothing more but stays in the JWKS, so the
-- tokens it signed still verify), deleted by `prune` once every token it
-- can have signed has expired.
--
-- Which key is current is decided the same way in every process: of the
-- keys not retired, the one created last (equal `created_at`: the greatest
-- kid). After adding a key (`ensure`, `rotate`) a process re-reads the store
-- and retires every other unretired key, so processes that raced converge on
-- one current key and the losers' keys age out like any retired key.
--
-- kid: the key's full RFC 7638 JWK thumbprint (base64url of SHA-256, 43
-- characters), so anyone holding the public JWK can recompute it.
--
-- Private keys never leave this module: `jwks`, `keys` and `keyset` hold
-- public material only, and no error string contains key material.
--
-- @module weir.issuer
-- @usage local issuer = require "weir.issuer"
-- local iss = assert(issuer.new { store = store, issuer = "weir", ttl = 3600 })
-- assert(iss:ensure())
-- local token, claims = assert(iss:mint { sub = client_id, scope = "read" })

local jose  = require "weir.jose"
local cjson = require "cjson.safe"

local type, pairs, ipairs, tostring, setmetatable = type, pairs, ipairs, tostring, setmetatable
local floor, min = math.floor, math.min
local concat, sort = table.concat, table.sort

local _M = {
    --- `new`'s default `ttl`, in seconds.
    DEFAULT_TTL = 3600,
    --- `new`'s default `grace`, in seconds.
    DEFAULT_GRACE = 60,
}

local json = cjson.new()
json.encode_invalid_numbers(false)

local Issuer = {}
Issuer.__index = Issuer

-- the store's answer to a call: a failure is `nil|false, err`
local function store_failed(ok, err)
    return not ok and err ~= nil
end

local function positive_integer(v)
    return type(v) == "number" and v > 0 and v == floor(v) and v < 2 ^ 53
end

--- A key ring over STORE. Reads nothing yet: call `ensure` (or `refresh`).
-- @tparam table opts
-- @tparam table opts.store with `signing_keys()`, `add_signing_key(rec)`,
--  `retire_signing_key(kid, at)`, `delete_signing_key(kid)`
-- @tparam string opts.issuer the `iss` claim of every token
-- @tparam[opt] string|table opts.audience the `aud` claim when a token's
--  claims have none (a string or an array of strings)
-- @tparam[opt=3600] number opts.ttl longest token life, seconds
-- @tparam[opt=60] number opts.grace seconds a retired key is kept beyond
--  `ttl`, for processes still signing with it until their next `refresh`
--  (so refresh more often than this) and for verifiers' clock leeway
-- @tparam[opt=os.time] function opts.clock returns the time, unix seconds
-- @treturn[1] table the issuer
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local iss, err = issuer.new { store = store, issuer = "https://gw.example" }
function _M.new(opts)
    if type(opts) ~= "table" then return nil, "options must be a table" end
    local store = opts.store
    if type(store) ~= "table" and type(store) ~= "userdata" then return nil, "store is missing" end
    for _, m in ipairs { "signing_keys", "add_signing_key", "retire_signing_key", "delete_signing_key" } do
        if type(store[m]) ~= "function" then return nil, "store has no " .. m .. " method" end
    end
    if type(opts.issuer) ~= "string" or opts.issuer == "" then
        return nil, "issuer must be a non-empty string"
    end
    local aud = opts.audience
    if aud ~= nil then
        if type(aud) == "table" then
            if #aud == 0 then return nil, "audience must be a string or a non-empty array of strings" end
            for _, a in ipairs(aud) do
                if type(a) ~= "string" or a == "" then return nil, "audience must hold non-empty strings" end
            end
        elseif type(aud) ~= "string" or aud == "" then
            return nil, "audience must be a string or a non-empty array of strings"
        end
    end
    local ttl = opts.ttl or _M.DEFAULT_TTL
    if not positive_integer(ttl) then return nil, "ttl must be a positive integer (seconds)" end
    local grace = opts.grace or _M.DEFAULT_GRACE
    if not (positive_integer(grace) or grace == 0) then
        return nil, "grace must be a non-negative integer (seconds)"
    end
    local clock = opts.clock or os.time
    if type(clock) ~= "function" then return nil, "clock must be a function" end
    return setmetatable({
        store = store, issuer = opts.issuer, audience = aud, ttl = ttl, grace = grace,
        clock = clock,
        parsed = {},      -- kid → { key =, jwk =, jwk_json =, verify_key = }: parsed once
        records = {},     -- the store's records as last read (public fields only), oldest first
        current = nil,    -- kid of the signing key
        skipped = {},     -- "kid X: why" for records that could not be used
        jwks_text = '{"keys":[]}',
        set = { keys = {}, by_kid = {}, skipped = {} },
    }, Issuer)
end

local function now(self)
    return floor(self.clock())
end

-- a stored record as a usable key, or nil, err (checked once per kid)
local function parse_record(rec)
    local key, err = jose.private_key(rec.private_pem)
    if not key then return nil, err end
    local jwk
    jwk, err = jose.public_jwk(key, rec.kid)
    if not jwk then return nil, err end
    -- the kid is the thumbprint of the private key's own public half: a
    -- store whose kid, public JWK and private key disagree is refused
    if jose.thumbprint(jwk) ~= rec.kid then return nil, "kid is not the key's thumbprint" end
    local stored = type(rec.public_jwk) == "string" and json.decode(rec.public_jwk)
    if type(stored) ~= "table" or stored.x ~= jwk.x or stored.y ~= jwk.y then
        return nil, "stored public JWK does not match the private key"
    end
    local verify_key
    verify_key, err = jose.jwk(jwk)
    if not verify_key then return nil, err end
    key.kid = rec.kid
    return { key = key, jwk = jwk, jwk_json = json.encode(jwk), verify_key = verify_key }
end

-- the current key: of the unretired usable records, the newest (ties: the greatest kid)
local function newer(a, b)
    if a.created_at ~= b.created_at then return a.created_at > b.created_at end
    return a.kid > b.kid
end

--- Re-read the store: keys another process added, retired or deleted.
-- A key already known is not parsed again, so this is cheap enough to call
-- on a timer or before answering the JWKS. Records that cannot be used (a
-- PEM that does not load, a kid that is not the key's thumbprint, a public
-- JWK that is not the private key's) are left out and described in
-- `iss.skipped` (`{ "kid X: why", ... }`, no key material).
-- @treturn[1] true
-- @treturn[2] nil
-- @treturn[2] string why (the store failed; the ring keeps what it had)
-- @usage assert(iss:refresh())
function Issuer:refresh()
    local recs, err = self.store:signing_keys()
    if type(recs) ~= "table" then return nil, "could not read the signing keys: " .. tostring(err) end
    local parsed, records, skipped = {}, {}, {}
    local best
    for _, rec in ipairs(recs) do
        local kid = rec.kid
        if type(kid) ~= "string" or kid == "" or type(rec.created_at) ~= "number"
           or (rec.retired_at ~= nil and type(rec.retired_at) ~= "number") then
            skipped[#skipped + 1] = "a record without a kid, created_at or a numeric retired_at"
        elseif parsed[kid] then
            skipped[#skipped + 1] = "kid " .. kid .. ": duplicate"
        else
            local p, why = self.parsed[kid], nil
            if not p then p, why = parse_record(rec) end
            if p then
                parsed[kid] = p
                local r = { kid = kid, created_at = rec.created_at, retired_at = rec.retired_at }
                records[#records + 1] = r
                if r.retired_at == nil and (not best or newer(r, best)) then best = r end
            else
                skipped[#skipped + 1] = "kid " .. kid .. ": " .. why
            end
        end
    end
    self.parsed, self.records, self.skipped = parsed, records, skipped
    self.current = best and best.kid

    -- the JWKS and the verification keyset, current key first, then newest first
    local order = {}
    for i, r in ipairs(records) do order[i] = r end
    sort(order, function(a, b)
        if (a.retired_at == nil) ~= (b.retired_at == nil) then return a.retired_at == nil end
        return newer(a, b)
    end)
    local texts, set = {}, { keys = {}, by_kid = {}, skipped = {} }
    for i, r in ipairs(order) do
        local p = parsed[r.kid]
        texts[i] = p.jwk_json
        set.keys[i] = p.verify_key
        set.by_kid[r.kid] = p.verify_key
    end
    self.jwks_text = '{"keys":[' .. concat(texts, ",") .. "]}"
    self.set = set
    return true
end

-- add a new key; retire RETIRE (the key it replaces, if any); re-read;
-- retire every other unretired key but the winner. Returns the current kid
-- after that, or nil, err.
local function add_key(self, retire)
    local pem, err = jose.generate_ec_p256()
    if not pem then return nil, err end
    local key
    key, err = jose.private_key(pem)
    if not key then return nil, err end
    local jwk
    jwk, err = jose.public_jwk(key)   -- kid: the thumbprint
    if not jwk then return nil, err end
    local ok
    ok, err = self.store:add_signing_key {
        kid = jwk.kid, private_pem = pem, public_jwk = json.encode(jwk),
        created_at = now(self), retired_at = nil,
    }
    if store_failed(ok, err) then return nil, "could not store the new key: " .. tostring(err) end
    local at = now(self)
    if retire then
        -- after the add, so that there is an unretired key at every moment
        ok, err = self.store:retire_signing_key(retire, at)
        if store_failed(ok, err) then return nil, "could not retire a key: " .. tostring(err) end
    end
    ok, err = self:refresh()
    if not ok then return nil, err end
    if not self.current then return nil, "no usable signing key after adding one" end
    for _, r in ipairs(self.records) do
        if r.retired_at == nil and r.kid ~= self.current then
            ok, err = self.store:retire_signing_key(r.kid, at)
            if store_failed(ok, err) then return nil, "could not retire a key: " .. tostring(err) end
            r.retired_at = at
        end
    end
    return self.current
end

--- Make sure there is a signing key: read the store and, when it holds no
-- usable unretired key, generate one. Several processes may do this at once
-- on an empty store: each adds its key, re-reads, and all settle on the
-- same current key (the newest, ties by kid); the others' keys are retired
-- at once, stay in the JWKS (a process may have signed with one before its
-- re-read showed it the winner) and are deleted by `prune` like any retired
-- key.
-- @treturn[1] string the current kid
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage assert(iss:ensure())
function Issuer:ensure()
    local ok, err = self:refresh()
    if not ok then return nil, err end
    if self.current then return self.current end
    return add_key(self)
end

--- Start signing with a new key. The key that was current is retired now:
-- it stays in the JWKS until `prune` deletes it, `ttl` + `grace` seconds
-- later.
-- @treturn[1] string the new current kid (when two processes rotate at the
--  same moment, both return the one that won)
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local kid = assert(iss:rotate())
function Issuer:rotate()
    local ok, err = self:refresh()
    if not ok then return nil, err end
    return add_key(self, self.current)
end

--- Sign a token with the current key. Sets `iss`, `iat`, `exp` and `jti`
-- (16 random bytes, base64url), replacing any the claims had; `aud` is the
-- issuer's `audience` unless the claims have one. No `nbf`.
-- @tparam[opt] table claims e.g. `{ sub = client_id, scope = "read" }` (copied, not changed)
-- @tparam[opt] number ttl the token's life in seconds, at most the issuer's
--  `ttl` (longer asks get `ttl`)
-- @treturn[1] string the token
-- @treturn[1] table the claims it carries
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local token, claims = iss:mint({ sub = "svc-a" }, 600)
function Issuer:mint(claims, ttl)
    if claims ~= nil and type(claims) ~= "table" then error("iss:mint(claims, ttl): claims must be a table", 2) end
    if ttl ~= nil and not positive_integer(ttl) then return nil, "ttl must be a positive integer (seconds)" end
    local kid = self.current
    local p = kid and self.parsed[kid]
    if not p then return nil, "no signing key (call ensure first)" end
    local out = {}
    for k, v in pairs(claims or {}) do out[k] = v end
    local t = now(self)
    out.iss = self.issuer
    out.iat = t
    out.exp = t + min(ttl or self.ttl, self.ttl)
    local rnd, err = jose.random_bytes(16)
    if not rnd then return nil, err end
    out.jti = jose.b64url_encode(rnd)
    if out.aud == nil then out.aud = self.audience end
    local token
    token, err = jose.encode({ kid = kid }, out, p.key)
    if not token then return nil, err end
    return token, out
end

--- The JWK Set to publish: the public keys of every key in the store as
-- last read (current first, then the retired ones not yet pruned).
-- @treturn string `{"keys":[...]}`
-- @usage res.body = iss:jwks()
function Issuer:jwks()
    return self.jwks_text
end

--- The same keys as `jwks`, as the keyset `jose.verify_jws` takes, so the
-- jwt policy can check weir's own tokens without fetching the JWKS.
-- @treturn table `{ keys =, by_kid =, skipped = {} }`
-- @usage local key, err = jose.verify_jws(iss:keyset(), jws, { ES256 = true })
function Issuer:keyset()
    return self.set
end

--- The keys for the admin API, oldest first, without key material.
-- @treturn table `{ { kid =, created_at =, retired_at =, current = bool }, ... }`
-- @usage for _, k in ipairs(iss:keys()) do print(k.kid, k.retired_at) end
function Issuer:keys()
    local out = {}
    for i, r in ipairs(self.records) do
        out[i] = { kid = r.kid, created_at = r.created_at, retired_at = r.retired_at,
                   current = r.kid == self.current }
    end
    return out
end

--- Delete the keys retired more than `ttl` + `grace` seconds ago: every
-- token they signed has expired. Re-reads the store after.
-- @treturn[1] table the kids deleted
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local gone = assert(iss:prune())
function Issuer:prune()
    local ok, err = self:refresh()
    if not ok then return nil, err end
    local limit = now(self) - self.ttl - self.grace
    local gone = {}
    for _, r in ipairs(self.records) do
        if r.retired_at ~= nil and r.retired_at < limit then
            ok, err = self.store:delete_signing_key(r.kid)
            if store_failed(ok, err) then return nil, "could not delete a key: " .. tostring(err) end
            gone[#gone + 1] = r.kid
        end
    end
    if #gone > 0 then
        ok, err = self:refresh()
        if not ok then return nil, err end
    end
    return gone
end

return _M
