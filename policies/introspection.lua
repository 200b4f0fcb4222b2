--- introspection: OAuth2 access tokens checked with the identity
-- provider's token introspection endpoint (RFC 7662), for opaque tokens
-- that weir cannot verify itself.
--
-- The token comes from the same places as jwt's (`token_in`: the
-- `Authorization: Bearer` header, the `access_token` query parameter, a
-- `Sec-WebSocket-Protocol` entry, a one-time ticket). weir POSTs it,
-- form-encoded, to `introspection_url`, authenticating itself with a client
-- id and secret (HTTP Basic or form fields) or a bearer token. The answer
-- must say `"active": true`; then the claims it carries go through the same
-- checks and mapping as jwt's (weir.oauth): `iss`, `aud`, scopes, `exp`,
-- `nbf`, `iat`, `ctx.consumer`, `ctx.token`, identity headers, expiry and
-- in-band refresh on the open socket, revocation, tickets.
--
-- Answers are cached per worker by the token's SHA-256: an active token
-- for at most `cache_ttl` and never past its `exp`, a refused one for
-- `negative_ttl`; both bounded by `cache_size`.
--
-- When the endpoint cannot answer (down, timeout, 5xx, refused weir's own
-- credentials, not JSON) the handshake is refused with 503
-- /problems/unavailable; an entry with `fail_open = true` lets it through
-- without a consumer instead. See docs/policies/introspection.md.
--
-- @module introspection

local weir = require "weir"
local oauth = require "weir.oauth"
local cjson = require "cjson.safe"

local type, ipairs, tostring, rawget = type, ipairs, tostring, rawget
local find, match, format, byte, gsub, sub = string.find, string.match, string.format, string.byte,
    string.gsub, string.sub
local weir_error, now, sha256 = weir.error, weir.now, weir.sha256

local function http_url(v)
    if not find(v, "^https?://[^/]") then return "expected an http:// or https:// URL" end
    return true
end

local _M = {
    name     = "introspection",
    priority = 1290,
    schema   = {
        { name = "introspection_url", type = "string", required = true, check = http_url,
          description = "the RFC 7662 introspection endpoint (https:// or http://)" },
        { name = "client_id", type = "string",
          description = "weir's client id at the introspection endpoint (with client_secret)" },
        { name = "client_secret", type = "string", description = "weir's client secret" },
        { name = "client_secret_file", type = "path", description = "a file holding weir's client secret" },
        { name = "client_auth", type = "enum", one_of = { "basic", "post" }, default = "basic",
          description = "how the client id and secret are sent: HTTP Basic, or form fields of the POST" },
        { name = "bearer_token", type = "string",
          description = "a bearer token for the introspection endpoint (instead of a client id and secret)" },
        { name = "bearer_token_file", type = "path", description = "a file holding that bearer token" },
        { name = "token_type_hint", type = "string", default = "access_token",
          description = "token_type_hint sent with each token" },
        { name = "ca", type = "path", description = "PEM CA file for an https introspection_url" },
        { name = "verify", type = "boolean", default = true,
          description = "verify the introspection endpoint's certificate" },
        { name = "timeout", type = "duration", default = 5, min = 1, max = 60000,
          description = "timeout of one introspection request" },
        { name = "max_token_size", type = "size", default = "8k", min = 64, max = 65536,
          description = "longer tokens are refused without asking the endpoint" },
        { name = "cache_size", type = "integer", default = 10000, min = 0, max = 10000000,
          description = "introspection answers remembered per worker, active and refused alike (0: none)" },
        { name = "cache_ttl", type = "duration", default = 60, zero_disables = true, max = 86400000,
          description = "keep an active answer at most this long (and never past the token's exp; 0: never)" },
        { name = "negative_ttl", type = "duration", default = 5, zero_disables = true, max = 3600000,
          description = "keep a refused token's answer this long (0: never)" },
    },
}
for _, f in ipairs(oauth.SCHEMA) do _M.schema[#_M.schema + 1] = f end
-- one of these is required (checked by init)
_M.required_one_of = { "client_id", "bearer_token", "bearer_token_file" }

local function unauthorized(msg, problem)
    return weir_error(problem or "/problems/unauthorized", msg, 401)
end

-- application/x-www-form-urlencoded (the HTML form encoding RFC 7662 and
-- RFC 6749 2.3.1 use): unreserved characters as they are, space as "+",
-- every other byte %XX
local function form(s)
    return (gsub(s, "[^%w%-%._~ ]", function(c) return format("%%%02X", byte(c)) end):gsub(" ", "+"))
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(s)
    local out = {}
    for i = 1, #s, 3 do
        local a, b, c = byte(s, i, i + 2)
        local n = a * 65536 + (b or 0) * 256 + (c or 0)
        local k = {}
        for j = 1, 4 do
            local d = math.floor(n / 64 ^ (4 - j)) % 64
            k[j] = sub(B64, d + 1, d + 1)
        end
        if not b then k[3], k[4] = "=", "=" elseif not c then k[4] = "=" end
        out[#out + 1] = table.concat(k)
    end
    return table.concat(out)
end
_M._base64, _M._form = base64, form       -- for the unit specs

-- The URL without userinfo and query, for log lines.
local function loggable(url)
    local scheme, rest = match(url, "^(%a+://)(.*)$")
    rest = gsub(rest, "^[^/?#]*@", "")
    return scheme .. (match(rest, "^[^?#]*") or "")
end

local function secret_from(conf, field, file_field)
    if conf[field] and conf[file_field] then
        return nil, format("give %s or %s, not both", field, file_field)
    end
    if conf[file_field] then
        local s, err = weir.read_file(conf[file_field])
        if not s then return nil, format("cannot read the %s: %s", file_field, tostring(err)) end
        s = gsub(s, "[\r\n]+$", "")
        if s == "" then return nil, conf[file_field] .. " is empty" end
        conf[field] = s
    end
    return true
end

function _M.init(conf)
    local ok, err = oauth.init(conf)
    if not ok then return nil, err end
    ok, err = secret_from(conf, "client_secret", "client_secret_file")
    if not ok then return nil, err end
    ok, err = secret_from(conf, "bearer_token", "bearer_token_file")
    if not ok then return nil, err end
    local client, bearer = conf.client_id ~= nil, conf.bearer_token ~= nil
    if client and bearer then
        return nil, "give client_id (and client_secret) or bearer_token, not both"
    end
    if not client and not bearer then
        return nil, "no credentials for the introspection endpoint: give client_id with client_secret "
                    .. "or client_secret_file, or bearer_token or bearer_token_file"
    end
    if client and not conf.client_secret then
        return nil, "client_id needs client_secret or client_secret_file"
    end
    if bearer and find(conf.bearer_token, "[%c ]") then
        return nil, "bearer_token holds spaces or control characters"
    end

    local headers = { ["Content-Type"] = "application/x-www-form-urlencoded", Accept = "application/json" }
    local tail = "&token_type_hint=" .. form(conf.token_type_hint)
    if bearer then
        headers.Authorization = "Bearer " .. conf.bearer_token
    elseif conf.client_auth == "basic" then
        headers.Authorization = "Basic " .. base64(form(conf.client_id) .. ":" .. form(conf.client_secret))
    else
        tail = tail .. "&client_id=" .. form(conf.client_id) .. "&client_secret=" .. form(conf.client_secret)
    end
    -- the secrets live on only inside the prepared request
    conf.client_secret, conf.client_secret_file, conf.bearer_token, conf.bearer_token_file = nil, nil, nil, nil
    conf._headers, conf._tail = headers, tail
    conf._log_url = loggable(conf.introspection_url)
    conf._ttl = (conf.cache_ttl or 0) / 1000
    conf._neg_ttl = (conf.negative_ttl or 0) / 1000
    conf._cache = oauth.cache(conf.cache_size)
    return true
end

------------------------------------------------------------------------------
-- The cache: active answers and refusals, two generations bounded by cache_size
------------------------------------------------------------------------------

-- The entry for hash H, if still good at T.
local function cache_get(conf, h, t)
    local e = conf._cache:get(h)
    if e and e.till > t then return e end
    return nil
end

local function cache_put(conf, h, entry)
    conf._cache:put(h, entry)
end

-- Remember a refusal of hash H at T (for negative_ttl).
local function refuse(conf, h, t, message, problem, status)
    if conf._neg_ttl > 0 then
        cache_put(conf, h, { till = t + conf._neg_ttl, refused = true, message = message,
                             problem = problem, status = status })
    end
    return nil, weir_error(problem or "/problems/unauthorized", message, status or 401)
end

local hex = oauth.hex32

------------------------------------------------------------------------------
-- Asking the endpoint
------------------------------------------------------------------------------

-- The endpoint could not answer: log why (never the token or weir's
-- credentials), and return the 503 verdict with a mark.
local function unavailable(ctx, conf, why, status)
    ctx:log("warn", "token introspection failed", { url = conf._log_url, error = why, status = status })
    return nil, weir_error("/problems/unavailable", "Token introspection unavailable", 503), true
end

-- POST TOK to the endpoint. Returns the decoded answer (a table), or nil,
-- the verdict and true (the endpoint failed).
local function introspect(ctx, conf, tok)
    local res, err = weir.http.request{
        url = conf.introspection_url, method = "POST", headers = conf._headers,
        body = "token=" .. form(tok) .. conf._tail,
        timeout = conf.timeout / 1000, verify = conf.verify, ca = conf.ca,
    }
    tok = nil
    if not res then return unavailable(ctx, conf, err) end
    local st = res.status
    if st == 401 or st == 403 then
        return unavailable(ctx, conf, "the endpoint refused weir's client credentials", st)
    end
    if st ~= 200 then return unavailable(ctx, conf, "unexpected status", st) end
    local answer = cjson.decode(res.body)
    if type(answer) ~= "table" then return unavailable(ctx, conf, "the answer is not a JSON object", st) end
    return answer
end

------------------------------------------------------------------------------
-- Validation
------------------------------------------------------------------------------

local function num(v) return type(v) == "number" and v == v and v or nil end

--- Validate the token TOK. Returns the token record { exp, jti, hash,
-- claims, consumer }, or nil, a weir.error verdict and (when the endpoint
-- failed rather than refused the token) true.
local function validate(ctx, conf, tok)
    if #tok > conf.max_token_size then return nil, unauthorized("Token is too large") end
    local h = sha256(tok)
    local t = now()
    local e = cache_get(conf, h, t)
    if e and e.refused then
        return nil, weir_error(e.problem or "/problems/unauthorized", e.message, e.status or 401)
    end
    if not e then
        local claims, verdict, failed = introspect(ctx, conf, tok)
        tok = nil
        if not claims then return nil, verdict, failed end
        t = now()
        if claims.active ~= true then return refuse(conf, h, t, "Token is not active") end
        local sok, why, problem, status = oauth.check_static(claims, conf)
        if not sok then return refuse(conf, h, t, why, problem, status) end
        local tok_ok, twhy, tproblem = oauth.check_time(claims, conf, t)
        if not tok_ok then
            -- an expired token stays expired: remember it like a refusal
            if tproblem == "/problems/token-expired" then return refuse(conf, h, t, twhy, tproblem) end
            return nil, unauthorized(twhy, tproblem)
        end
        local exp, jti = num(claims.exp), claims.jti
        e = { claims = claims, exp = exp, jti = type(jti) == "string" and jti or nil,
              hash = hex(h), consumer = oauth.consumer(claims, conf) }
        -- never past the token's exp, never longer than cache_ttl
        local till = t + conf._ttl
        if exp and exp < till then till = exp end
        if till > t then
            e.till = till
            cache_put(conf, h, e)
        end
    end
    local bad = oauth.check_live(e, conf, t)
    if bad then return nil, bad end
    return e
end
_M._validate = validate

-- Whether the chain entry running this policy has `fail_open = true` (the
-- entry whose conf is CONF in the connection's chain).
local function fail_open(ctx, conf)
    local chain = rawget(ctx, "_chain")
    local entries = type(chain) == "table" and chain.entries
    if type(entries) ~= "table" then return false end
    for _, e in ipairs(entries) do
        if e.conf == conf then return e.fail_open == true end
    end
    return false
end

-- fail_open: raise, so that the chain logs, counts and passes (never for
-- a ticket request: no ticket is issued without a token)
local function on_failed(ctx, conf)
    if fail_open(ctx, conf) then error("token introspection unavailable", 0) end
end

function _M.on_handshake(ctx, conf)
    return oauth.handshake(ctx, conf, validate, on_failed)
end

function _M.recheck(ctx, conf)
    return oauth.recheck(ctx, conf)
end

return _M
