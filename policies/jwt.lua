--- jwt: OAuth2 bearer tokens in JWS compact form, validated locally.
--
-- The token comes from the `Authorization: Bearer` header, the
-- `access_token` query parameter, a `Sec-WebSocket-Protocol` entry
-- (`bearer.<token>`) or a one-time ticket (see `token_in`). Its signature is
-- checked with a key from a JWKS file, a JWKS URL or a shared secret; the
-- algorithm must be allowed by `algorithms` *and* by the key (a JWK's `kty`,
-- `crv` and `alg`), never by the token alone, so `alg: none` and HS256
-- signed with an RSA public key are refused. Then `iss`, `aud`, `exp`,
-- `nbf`, `iat` (with `leeway`) and `required_scopes` are checked, and the
-- claims become `ctx.consumer` and `ctx.token`.
--
-- On an open socket, the token's `exp` is honoured: a warning message
-- before it, `/problems/token-expired` and close 1008 at it, unless the
-- client sends a new token in band (`{"type":"auth","token":"..."}`).
-- Revoked tokens (`revocation_file`) are refused, and open sockets using
-- them are closed at the next reload.
--
-- Verified tokens are cached per worker by their SHA-256 (`cache_size`), so
-- a reconnect storm does not redo signature checks. See docs/policies/jwt.md.
--
-- @module jwt

local weir = require "weir"
local oauth = require "weir.oauth"
local jose = require "weir.jose"
local cjson = require "cjson.safe"

local type, pairs, ipairs, tostring, next = type, pairs, ipairs, tostring, next
local find, sub, format, byte = string.find, string.sub, string.format, string.byte
local weir_error, now = weir.error, weir.now

local ALGS = { "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
               "HS256", "HS384", "HS512" }

local _M = {
    name     = "jwt",
    priority = 1300,
    schema   = {
        { name = "jwks_file", type = "path", description = "a JWKS file of the issuer's public keys" },
        { name = "jwks_url", type = "string",
          check = function(v)
              if not find(v, "^https?://[^/]") then return "expected an http:// or https:// URL" end
              return true
          end,
          description = "a JWKS URL, fetched without blocking, cached, refetched on an unknown kid" },
        { name = "jwks_ca", type = "path", description = "PEM CA file for an https jwks_url" },
        { name = "jwks_verify", type = "boolean", default = true,
          description = "verify the jwks_url server's certificate" },
        { name = "jwks_min_refresh", type = "duration", default = 60, min = 1, max = 86400000,
          description = "refetch the JWKS on an unknown kid at most this often" },
        { name = "jwks_max_age", type = "duration", default = 3600, min = 1000, max = 604800000,
          description = "refetch the JWKS after this long (the old keys are kept if it fails)" },
        { name = "jwks_timeout", type = "duration", default = 5, min = 1, max = 60000,
          description = "timeout of one JWKS fetch" },
        { name = "secret", type = "string", description = "HMAC secret for HS256/384/512" },
        { name = "secret_file", type = "path", description = "a file holding the HMAC secret" },
        { name = "algorithms", type = "list", non_empty = true, default = ALGS,
          elements = { type = "enum", one_of = ALGS },
          description = "algorithms accepted (a key must also allow the token's)" },
        { name = "max_token_size", type = "size", default = "8k", min = 64, max = 65536,
          description = "longer tokens are refused before any decoding" },
        { name = "cache_size", type = "integer", default = 10000, min = 0, max = 10000000,
          description = "verified tokens remembered per worker (0: none)" },
        { name = "key_manager", type = "boolean", default = false,
          description = "validate the tokens of weir's own key manager (key_manager in weir's "
                        .. "configuration): its signing keys, its revocations, the application from "
                        .. "the `application` claim" },
    },
}
for _, f in ipairs(oauth.SCHEMA) do _M.schema[#_M.schema + 1] = f end
-- one of these is required (checked by init)
_M.required_one_of = { "jwks_file", "jwks_url", "secret", "secret_file", "key_manager" }

-- JWKS fetched from URLs, per worker:
-- url, CA and verify → { keyset =, fetched =, attempted =, inflight = (when the fetch started) }
local remote = {}

local UNAVAILABLE = "Signing keys are not available"

local function unauthorized(msg, problem)
    return weir_error(problem or "/problems/unauthorized", msg, 401)
end

function _M.init(conf)
    local ok, err = oauth.init(conf)
    if not ok then return nil, err end
    if conf.secret and conf.secret_file then return nil, "give secret or secret_file, not both" end
    if conf.jwks_file and conf.jwks_url then return nil, "give jwks_file or jwks_url, not both" end
    if conf.secret_file then
        local s, rerr = weir.read_file(conf.secret_file)
        if not s then return nil, "cannot read the secret file: " .. tostring(rerr) end
        conf.secret = s:gsub("[\r\n]+$", "")
        conf.secret_file = nil
    end
    if conf.key_manager then
        if conf.secret or conf.jwks_file or conf.jwks_url then
            return nil, "key_manager = true takes weir's own keys: give no jwks_file, jwks_url or secret"
        end
        -- weir's tokens name the application by name; azp and client_id hold the consumer key
        local d = conf.application_claims
        if #d == 2 and d[1] == "azp" and d[2] == "client_id" then conf.application_claims = { "application" } end
    elseif not (conf.secret or conf.jwks_file or conf.jwks_url) then
        return nil, "no keys: give jwks_file, jwks_url, secret or secret_file (or key_manager = true)"
    end
    if conf.secret and #conf.secret < 32 then
        return nil, "secret: at least 32 bytes are needed for HMAC keys (RFC 7518 3.2)"
    end
    conf._algs = {}
    for _, a in ipairs(conf.algorithms) do conf._algs[a] = true end
    if conf.secret then
        local k, kerr = jose.hmac_key(conf.secret)
        conf.secret = nil             -- kept only inside the key
        if not k then return nil, "secret: " .. tostring(kerr) end
        conf._hkey = k
    end
    if conf.jwks_file then
        local text, rerr = weir.read_file(conf.jwks_file)
        if not text then return nil, "cannot read the JWKS file: " .. tostring(rerr) end
        local ks, kerr = jose.jwks(text)
        if not ks then return nil, conf.jwks_file .. ": " .. tostring(kerr) end
        conf._keyset = ks
    end
    conf._cache = oauth.cache(conf.cache_size)
    return true
end

------------------------------------------------------------------------------
-- Keys
------------------------------------------------------------------------------

-- Fetch the JWKS of CONF's URL now (the hook waits). Keeps the old keys
-- when it fails. Returns the keyset (maybe the old one).
local function fetch(conf, r)
    local mark = now()
    r.inflight = mark
    r.attempted = mark
    local res, err = weir.http.request{ url = conf.jwks_url, timeout = conf.jwks_timeout / 1000,
                                        verify = conf.jwks_verify, ca = conf.jwks_ca,
                                        headers = { Accept = "application/json" } }
    if r.inflight == mark then r.inflight = nil end
    if not res then
        weir.log("warn", "JWKS fetch failed", { url = conf.jwks_url, error = err })
    elseif res.status ~= 200 then
        weir.log("warn", "JWKS fetch failed", { url = conf.jwks_url, status = res.status })
    else
        local ks, kerr = jose.jwks(res.body)
        if ks then
            r.keyset, r.fetched = ks, now()
        else
            weir.log("warn", "JWKS refused", { url = conf.jwks_url, error = kerr })
        end
    end
    return r.keyset
end

-- The keyset to use; REFRESH: a kid was not found in it.
local function keyset(conf, refresh)
    if conf.key_manager then return (require("weir.km").keyset(refresh)) end
    if not conf.jwks_url then return conf._keyset end
    -- keys fetched without verifying the server are not shared with a
    -- policy that verifies it (nor with another CA)
    local id = conf._jwks_id
    if not id then
        id = conf.jwks_url .. "\0" .. tostring(conf.jwks_ca) .. "\0" .. tostring(conf.jwks_verify)
        conf._jwks_id = id
    end
    local r = remote[id]
    if not r then
        r = { attempted = -1e18, fetched = -1e18 }
        remote[id] = r
    end
    local t = now()
    -- a fetch older than its timeout was abandoned: its connection closed
    -- while it waited, and a hook whose connection is gone never resumes
    if r.inflight and t - r.inflight < conf.jwks_timeout / 1000 then return r.keyset end
    if not r.keyset and t - r.attempted >= 1 then return fetch(conf, r) end
    if refresh and t - r.attempted >= conf.jwks_min_refresh / 1000 then return fetch(conf, r) end
    if r.keyset and t - r.fetched >= conf.jwks_max_age / 1000 and t - r.attempted >= conf.jwks_min_refresh / 1000 then
        return fetch(conf, r)
    end
    return r.keyset
end

-- The key for a token's ALG and KID. Returns key, keyset, or nil and a message.
local function find_key(conf, alg, kid)
    if sub(alg, 1, 2) == "HS" then
        if conf._hkey then return conf._hkey, conf._hkey end
    end
    if kid ~= nil and (type(kid) ~= "string" or kid == "" or #kid > 256) then
        return nil, "Token key id is not valid"
    end
    local ks = keyset(conf, false)
    for attempt = 1, 2 do
        if ks then
            if kid then
                local k = ks.by_kid[kid]
                if k then return k, ks end
            else
                for _, k in ipairs(ks.keys) do
                    if jose.key_allows(k, alg) then return k, ks end
                end
            end
        end
        if attempt == 1 then
            -- fetched again (jwks_url), or read again from the key manager's
            -- store (a key another host added since this worker's last poll)
            if not conf.jwks_url and not conf.key_manager then break end
            local again = keyset(conf, true)
            if again == ks then break end
            ks = again
        end
    end
    -- no keys at all: the issuer's never arrived, or the store cannot answer
    if not ks and (conf.jwks_url or conf.key_manager) then return nil, UNAVAILABLE end
    return nil, "Token signing key is unknown"
end

------------------------------------------------------------------------------
-- Validation
------------------------------------------------------------------------------

local hex = oauth.hex32

--- Validate the token TOK[I..J] (all of TOK without I and J). Returns the
-- token record { exp, jti, hash, claims, consumer }, or nil and a weir.error
-- verdict.
local function validate(ctx, conf, tok, i, j)
    i, j = i or 1, j or #tok
    if j - i + 1 > conf.max_token_size then return nil, unauthorized("Token is too large") end
    local h = jose.sha256(tok, i, j)
    local t = now()
    local e = conf._cache:get(h)
    if e and e.keyset ~= (e.hmac and conf._hkey or keyset(conf, false)) then e = nil end
    if not e then
        local jws, err = jose.decode(tok, conf.max_token_size, i, j)
        if not jws then return nil, unauthorized("Token is malformed") end
        local alg = jws.alg
        if type(alg) ~= "string" or not conf._algs[alg] then
            return nil, unauthorized("Token algorithm is not accepted")
        end
        local key, ks = find_key(conf, alg, jws.kid)
        if not key then
            if ks == UNAVAILABLE then       -- the issuer's keys never arrived: not the token's fault
                return nil, weir_error("/problems/unavailable", UNAVAILABLE, 503)
            end
            return nil, unauthorized(ks)
        end
        if not jose.key_allows(key, alg) then return nil, unauthorized("Token algorithm is not accepted") end
        local ok = jose.verify_decoded(key, jws)
        if not ok and jws.kid == nil and ks ~= conf._hkey then
            -- no kid: any key of the set that allows the algorithm may have signed it
            for _, k in ipairs(ks.keys) do
                if k ~= key and jose.key_allows(k, alg) and jose.verify_decoded(k, jws) then
                    ok = true
                    break
                end
            end
        end
        if not ok then return nil, unauthorized("Token signature is not valid") end
        local claims = jws.payload
        local sok, why, problem, status = oauth.check_static(claims, conf)
        if not sok then return nil, weir_error(problem or "/problems/unauthorized", why, status or 401) end
        local jti = claims.jti
        e = { keyset = ks, hmac = ks == conf._hkey, claims = claims,
              exp = type(claims.exp) == "number" and claims.exp or nil,
              jti = type(jti) == "string" and jti or nil,
              hash = hex(h), consumer = oauth.consumer(claims, conf) }
        conf._cache:put(h, e)
    end
    local bad = oauth.check_live(e, conf, t)
    if bad then return nil, bad end
    return e
end

function _M.on_handshake(ctx, conf)
    return oauth.handshake(ctx, conf, validate, nil, true)
end

function _M.recheck(ctx, conf)
    return oauth.recheck(ctx, conf)
end

return _M
