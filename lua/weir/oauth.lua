--- `weir.oauth`: what the `jwt` and `introspection` policies share: where a
-- token is taken from (and hidden from the backend), the claim checks, the
-- mapping of claims to `ctx.consumer`, identity headers for the backend,
-- revocation lists, and live-socket expiry with in-band refresh.
--
-- Policies reach it as `require "weir.oauth"`.
--
-- @module weir.oauth

local weir = require "weir"
local cjson = require "cjson.safe"
local bit = require "bit"
local ctxmod = require "weir.ctx"

local type, pairs, ipairs, tostring, tonumber, next, floor, format =
    type, pairs, ipairs, tostring, tonumber, next, math.floor, string.format
local find, match, lower, sub, byte = string.find, string.match, string.lower, string.sub, string.byte
local bor = bit.bor
local header_span = ctxmod.header_span

local _M = {}

local DEFAULT_TIER = "Unlimited"

------------------------------------------------------------------------------
-- Configuration shared by the token policies
------------------------------------------------------------------------------

local function header_name(v)
    if not find(v, "^[!#$%%&'*+%-.^_`|~%w]+$") then
        return "expected an HTTP header name, got " .. format("%q", v)
    end
    return true
end

local function token_chars(v)
    if not find(v, "^[!#$%%&'*+%-.^_`|~%w]+$") then
        return "expected token characters (RFC 7230), got " .. format("%q", v)
    end
    return true
end

--- The schema fields every token policy has (appended to the policy's own).
_M.SCHEMA = {
    { name = "token_in", type = "list", non_empty = true,
      default = { "header", "subprotocol", "ticket", "query" },
      elements = { type = "enum", one_of = { "header", "query", "subprotocol", "ticket" } },
      description = "where the token may be: the Authorization: Bearer header, the `access_token` query "
                    .. "parameter, a Sec-WebSocket-Protocol entry, or a one-time ticket; tried in the list's order" },
    { name = "query_param", type = "string", default = "access_token",
      description = "query parameter carrying the token (token_in \"query\")" },
    { name = "subprotocol_prefix", type = "string", default = "bearer.", check = token_chars,
      description = "a Sec-WebSocket-Protocol entry starting with this carries the token" },
    { name = "hide_credentials", type = "boolean", default = true,
      description = "remove the token (header, query parameter, subprotocol entry, ticket) from "
                    .. "what the backend receives" },
    { name = "issuer", type = "string", description = "required `iss`" },
    { name = "audience", type = "strings",
      description = "accepted audiences: `aud` (a string or a list) must hold one of them" },
    { name = "leeway", type = "duration", default = 30, zero_disables = true, max = 3600000,
      description = "clock skew allowed on exp, nbf and iat" },
    { name = "required_scopes", type = "list", default = {}, elements = { type = "string" },
      description = "scopes the token must all have (`scope`, space-separated, or `scp`, a list)" },
    { name = "application_claims", type = "list", default = { "azp", "client_id" }, non_empty = true,
      elements = { type = "string" },
      description = "claims naming the application, first present wins" },
    { name = "subscriber_claim", type = "string", default = "sub",
      description = "claim naming the subscriber (the end user)" },
    { name = "tier_claim", type = "string", default = "tier",
      description = "claim naming the subscription tier" },
    { name = "default_tier", type = "string", default = DEFAULT_TIER,
      description = "tier when the token has no tier claim" },
    { name = "key_type_claim", type = "string", default = "key_type",
      description = "claim saying PRODUCTION or SANDBOX (which endpoint serves the caller)" },
    { name = "headers", type = "map", default = {}, values = { type = "string" },
      description = "request headers for the backend, set from claims: { [\"X-User\"] = \"sub\" }" },
    { name = "revocation_file", type = "path",
      description = "revoked tokens, applications and subscribers, one per line "
                    .. "(`jti:ID`, `sha256:HEX`, `application:NAME`, `subscriber:NAME`); read at every load" },
    { name = "expiry_warning", type = "duration", default = 60, zero_disables = true, max = 86400000,
      description = "send the warning message this long before the token expires (0: never)" },
    { name = "warning_type", type = "string", default = "auth-expiring",
      description = "`type` of the expiry warning message" },
    { name = "refresh", type = "boolean", default = true,
      description = "accept a new token in band: a text message {\"type\": refresh_type, \"token\": ...}" },
    { name = "refresh_type", type = "string", default = "auth",
      check = function(v)
          if find(v, '["\\%c]') or v == "" then return "expected a plain word, got " .. format("%q", v) end
          return true
      end,
      description = "`type` of in-band refresh messages (consumed by weir, never forwarded)" },
    { name = "tickets", type = "boolean", default = true,
      description = "answer POST <api path>/ticket with a one-time ticket" },
    { name = "ticket_ttl", type = "duration", default = 30, min = 1000, max = 600000,
      description = "how long a ticket may wait to be used" },
}

------------------------------------------------------------------------------
-- Revocation lists
------------------------------------------------------------------------------

local REVOKE_KINDS = { jti = true, sha256 = true, application = true, subscriber = true }

--- Parse a revocation file. Returns { jti = set, sha256 = set, application = set,
-- subscriber = set }, or nil and every problem ("FILE:LINE: message") joined.
function _M.parse_revocations(text, file)
    local r = { jti = {}, sha256 = {}, application = {}, subscriber = {} }
    local errs, n = {}, 0
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
        n = n + 1
        line = match(line, "^%s*(.-)%s*$")
        if line ~= "" and byte(line, 1) ~= 35 then
            local kind, value = match(line, "^(%w+):(.+)$")
            if not kind or not REVOKE_KINDS[kind] then
                errs[#errs + 1] = format("%s:%d: expected jti:ID, sha256:HEX, application:NAME or subscriber:NAME",
                                         file, n)
            elseif kind == "sha256" and not match(value, "^%x+$") or kind == "sha256" and #value ~= 64 then
                errs[#errs + 1] = format("%s:%d: sha256: must be followed by 64 hex digits", file, n)
            else
                r[kind][kind == "sha256" and lower(value) or value] = true
            end
        end
    end
    if #errs > 0 then return nil, table.concat(errs, "\n") end
    return r
end

--- Is the token (its hash, its jti) or its consumer on CONF's revocation list,
-- or (key_manager) revoked in weir's key manager: the token, its consumer key
-- or its application? When the key manager cannot tell, LENIENT says no,
-- else nil (the caller fails closed).
local function revoked(conf, token, lenient)
    if conf.key_manager and token and token.claims then
        local r = require("weir.km").revoked(token.claims, lenient)
        if r then return true end
        if r == nil and not lenient then return nil end
    end
    local r = conf._revoked
    if not r or not token then return false end
    if token.jti and r.jti[token.jti] then return true end
    if token.hash and r.sha256[token.hash] then return true end
    local c = token.consumer
    if c then
        if c.application and r.application[c.application] then return true end
        if c.subscriber and r.subscriber[c.subscriber] then return true end
    end
    return false
end
_M.revoked = revoked

------------------------------------------------------------------------------
-- init
------------------------------------------------------------------------------

--- Prepare CONF's shared fields (call from the policy's init).
-- @treturn[1] true
-- @treturn[2] nil
-- @treturn[2] string why
function _M.init(conf)
    local set = {}
    for _, s in ipairs(conf.token_in) do set[s] = true end
    conf._from = set
    for name in pairs(conf.headers) do
        local ok = header_name(name)
        if ok ~= true then return nil, "headers: " .. ok end
    end
    if conf.audience then
        local a = {}
        for _, v in ipairs(conf.audience) do a[v] = true end
        conf._aud = a
    end
    conf._leeway = (conf.leeway or 0) / 1000
    conf._warn = (conf.expiry_warning or 0) / 1000
    conf._ticket_ttl = (conf.ticket_ttl or 30000) / 1000
    conf._refresh_needle = '"' .. conf.refresh_type .. '"'
    if conf.revocation_file then
        local text, err = weir.read_file(conf.revocation_file)
        if not text then return nil, "cannot read the revocation file: " .. tostring(err) end
        local r, perr = _M.parse_revocations(text, conf.revocation_file)
        if not r then return nil, perr end
        conf._revoked = r
    end
    return true
end

------------------------------------------------------------------------------
-- Where the token is
------------------------------------------------------------------------------

-- The token of an Authorization value S[I..J] (spaces and tabs around it
-- already left out): "Bearer TOKEN", the scheme in any case, one or more
-- spaces, then the token with nothing after it (no second credential).
-- Returns the token as S2, I2, J2 (S2[I2..J2]; S itself unless it had to be
-- cut out), or nil when it is not that. Byte tests and plain searches: a
-- pattern would walk the token a character at a time.
local function bearer(s, i, j)
    if j - i < 7 then return nil end           -- "Bearer" SP and one byte at least
    -- bor(b, 32) is the letter's lower case for exactly its two cases
    if bor(byte(s, i), 32) ~= 98 or bor(byte(s, i + 1), 32) ~= 101 or bor(byte(s, i + 2), 32) ~= 97
       or bor(byte(s, i + 3), 32) ~= 114 or bor(byte(s, i + 4), 32) ~= 101 or bor(byte(s, i + 5), 32) ~= 114
       or byte(s, i + 6) ~= 32 then
        return nil
    end
    local k = i + 7
    while k <= j and byte(s, k) == 32 do k = k + 1 end
    -- the searches may run on past J (S can be the whole request head)
    local sp, co, tb = find(s, " ", k, true), find(s, ",", k, true), find(s, "\t", k, true)
    if sp and sp <= j or co and co <= j or tb and tb <= j then
        local tok = match(sub(s, k, j), "^([^%s,]+)%s*$")
        if not tok then return nil end
        return tok, 1, #tok
    end
    return s, k, j
end

-- The credential of a request: kind ("token" or "ticket") and where it is,
-- S[I..J] (for the header, S is the request head: nothing is copied); it is
-- hidden from the backend (when hide_credentials). Nil when there is none.
local function find_credential(ctx, conf)
    local req = ctx.request
    local from, hide = conf.token_in, conf.hide_credentials
    for n = 1, #from do
        local where = from[n]
        if where == "header" then
            -- straight from the request head (no headers table, no copy of
            -- the value) unless the headers were parsed already or the
            -- header is repeated (its values joined: never one token)
            local s, i, j
            local head, vs, ve = header_span(req, "authorization")
            if vs then
                s, i, j = bearer(head, vs, ve)
            elseif head == false then
                local h = req.headers["authorization"]
                if h then s, i, j = bearer(h, 1, #h) end
            end
            if s then
                if hide then ctx:clear_backend_header("authorization") end
                return "token", s, i, j
            end
        elseif where == "query" then
            local tok = req.query[conf.query_param]
            if type(tok) == "string" and tok ~= "" then
                if hide then ctx:hide_query_arg(conf.query_param) end
                return "token", tok, 1, #tok
            end
        elseif where == "subprotocol" then
            local prefix, list = conf.subprotocol_prefix, req.subprotocols
            for k = 1, #list do
                local p = list[k]
                if sub(p, 1, #prefix) == prefix and #p > #prefix then
                    -- never answered back, and never seen by the backend
                    ctx:hide_subprotocol(p)
                    return "token", p, #prefix + 1, #p
                end
            end
        elseif where == "ticket" then
            local t = req.query["ticket"]
            if type(t) == "string" and t ~= "" then
                if hide then ctx:hide_query_arg("ticket") end
                return "ticket", t, 1, #t
            end
        end
    end
    return nil
end

--- Find the credential of a request. Returns kind ("token" or "ticket"),
-- the credential, and hides it from the backend (when hide_credentials).
-- Returns nil when there is none.
function _M.credential(ctx, conf)
    local kind, s, i, j = find_credential(ctx, conf)
    if not kind then return nil end
    if i ~= 1 or j ~= #s then s = sub(s, i, j) end
    return kind, s
end

------------------------------------------------------------------------------
-- Claims
------------------------------------------------------------------------------

-- Append S's words (runs of bytes other than whitespace, as %S+ sees them)
-- to OUT: byte tests, compiled, where gmatch would not be.
local function words(s, out)
    local n, i, len = #out, 1, #s
    while i <= len do
        local b = byte(s, i)
        if b == 32 or (b >= 9 and b <= 13) then
            i = i + 1
        else
            local j = i + 1
            while j <= len do
                b = byte(s, j)
                if b == 32 or (b >= 9 and b <= 13) then break end
                j = j + 1
            end
            n = n + 1
            out[n] = sub(s, i, j - 1)
            i = j + 1
        end
    end
    return out
end

-- Scope strings already split (an issuer's tokens mostly carry a few
-- distinct ones): string → its words, never handed out (copied). At most
-- SPLIT_MAX strings of at most SPLIT_MAX_LEN bytes are kept.
local split, n_split, SPLIT_MAX, SPLIT_MAX_LEN = {}, 0, 256, 512

-- A new list of S's words.
local function words_of(s)
    local w = split[s]
    if not w then
        w = words(s, {})
        if #s <= SPLIT_MAX_LEN then
            if n_split >= SPLIT_MAX then split, n_split = {}, 0 end
            n_split = n_split + 1
            split[s] = w
        else
            return w
        end
    end
    local out = {}
    for i = 1, #w do out[i] = w[i] end
    return out
end

local function scopes_of(claims)
    local s = claims.scope
    if type(s) == "string" then return words_of(s) end
    local out = {}
    if type(claims.scp) == "table" then
        for _, w in ipairs(claims.scp) do if type(w) == "string" then out[#out + 1] = w end end
    elseif type(claims.scp) == "string" then
        return words_of(claims.scp)
    end
    return out
end
_M.scopes_of = scopes_of

local function num(v) return type(v) == "number" and v == v and v or nil end

local TIME_CLAIMS = { "exp", "nbf", "iat" }

--- Check the registered claims that do not change with time (iss, aud,
-- scopes). Returns true, or nil and a message for the client.
function _M.check_static(claims, conf)
    if conf.issuer and claims.iss ~= conf.issuer then return nil, "Token issuer is not accepted" end
    if conf._aud then
        local aud, ok = claims.aud, false
        if type(aud) == "string" then ok = conf._aud[aud] == true
        elseif type(aud) == "table" then
            for _, a in ipairs(aud) do if conf._aud[a] then ok = true break end end
        end
        if not ok then return nil, "Token audience is not accepted" end
    end
    for i = 1, 3 do
        local k = TIME_CLAIMS[i]
        if claims[k] ~= nil and not num(claims[k]) then return nil, "Token claim " .. k .. " is not a number" end
    end
    if #conf.required_scopes > 0 then
        local have = {}
        for _, s in ipairs(scopes_of(claims)) do have[s] = true end
        for _, s in ipairs(conf.required_scopes) do
            if not have[s] then return nil, "Token lacks a required scope", "/problems/forbidden", 403 end
        end
    end
    return true
end

--- Check the time claims at NOW. Returns true, or nil, a message and the
-- problem type.
function _M.check_time(claims, conf, now)
    local leeway = conf._leeway
    local exp, nbf, iat = num(claims.exp), num(claims.nbf), num(claims.iat)
    if exp and now > exp + leeway then return nil, "Token has expired", "/problems/token-expired" end
    if nbf and now + leeway < nbf then return nil, "Token is not valid yet" end
    if iat and now + leeway < iat then return nil, "Token was issued in the future" end
    return true
end

local function claim_string(v)
    if type(v) == "string" and v ~= "" then return v end
    if type(v) == "number" then return format("%.14g", v) end
    return nil
end

--- The consumer a token's claims describe.
function _M.consumer(claims, conf)
    local app
    for _, name in ipairs(conf.application_claims) do
        app = claim_string(claims[name])
        if app then break end
    end
    local kt = claim_string(claims[conf.key_type_claim])
    kt = kt and kt:upper() == "SANDBOX" and "SANDBOX" or "PRODUCTION"
    return {
        application = app,
        subscriber  = claim_string(claims[conf.subscriber_claim]),
        tier        = claim_string(claims[conf.tier_claim]) or conf.default_tier,
        key_type    = kt,
        scopes      = scopes_of(claims),
    }
end

--- Set the identity headers for the backend from CLAIMS. Returns true, or
-- nil and a message when a value is unusable (control characters).
function _M.identity_headers(ctx, conf, claims)
    if next(conf.headers) == nil then return true end
    for name, claim in pairs(conf.headers) do
        local v = claims[claim]
        if type(v) == "table" then
            local parts = {}
            for _, x in ipairs(v) do parts[#parts + 1] = claim_string(x) end
            v = table.concat(parts, " ")
        else
            v = claim_string(v)
        end
        if v then
            if find(v, "%c") then return nil, "Token claim " .. claim .. " holds control characters" end
            ctx:set_backend_header(name, v)
        else
            ctx:clear_backend_header(name)     -- never let the client choose it
        end
    end
    return true
end

------------------------------------------------------------------------------
-- The verified token on a connection: ctx.token, expiry, refresh
------------------------------------------------------------------------------

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", floor(t)) end

local arm      -- forward

local function expire(ctx, conf)
    if ctx._closed then return end
    ctx:close(1008, "token expired", weir.error("/problems/token-expired", "The access token has expired"))
end

-- The warning; with THEN_EXPIRE, the expiry timer after it (one timer at a
-- time per connection in the common case: a token that outlives the warning).
local function warn(ctx, conf, then_expire)
    if ctx._closed or not ctx.token or not ctx.token.exp then return end
    local left = ctx.token.exp + conf._leeway - weir.now()
    if left < 0 then left = 0 end
    ctx:send(format('{"type":%s,"expires_in":%d}', cjson.encode(conf.warning_type), floor(left + 0.5)))
    if then_expire then ctx.vars._oauth_exp_timer = ctx:timer(left, expire, conf) end
end

-- (Re)arm the expiry and warning timers of CTX's token.
arm = function(ctx, conf)
    local v = ctx.vars
    if v._oauth_exp_timer then v._oauth_exp_timer:cancel() v._oauth_exp_timer = nil end
    if v._oauth_warn_timer then v._oauth_warn_timer:cancel() v._oauth_warn_timer = nil end
    local exp = ctx.token and ctx.token.exp
    if not exp then return end
    local left = exp + conf._leeway - weir.now()
    if conf._warn > 0 and left - conf._warn > 0 then
        v._oauth_exp_timer = ctx:timer(left - conf._warn, warn, conf, true)
    else
        v._oauth_exp_timer = ctx:timer(left > 0 and left or 0, expire, conf)
        if conf._warn > 0 and left > 0 then v._oauth_warn_timer = ctx:timer(0, warn, conf) end
    end
end

-- CONF's in-band refresh interceptor (made here, apart from _M.accept: a
-- closure there would keep the JIT from compiling it)
local function refresh_fn(conf, validate)
    local fn = function(c2, payload) return _M.refresh(c2, conf, payload, validate) end
    conf._refresh_fn, conf._refresh_validate = fn, validate
    return fn
end

--- Accept a verified token on CTX: ctx.consumer, ctx.token, identity
-- headers, expiry timers, the in-band refresh. TOKEN = { exp=, jti=, hash=,
-- claims=, consumer= }.
-- @treturn[1] true
-- @treturn[2] nil
-- @treturn[2] table a weir.error verdict
function _M.accept(ctx, conf, token, validate)
    local ok, why = _M.identity_headers(ctx, conf, token.claims or {})
    if not ok then return nil, weir.error("/problems/unauthorized", why, 401) end
    local c = token.consumer
    ctx.consumer = { application = c.application, subscriber = c.subscriber, tier = c.tier,
                     key_type = c.key_type, scopes = c.scopes }
    ctx.token = { exp = token.exp, jti = token.jti, claims = token.claims, hash = token.hash }
    ctx.vars._oauth_policy = conf
    if not ctx.request.ticket_request then
        arm(ctx, conf)
        if conf.refresh and validate then
            local fn = conf._refresh_fn     -- one closure per configuration, not per connection
            if not fn or conf._refresh_validate ~= validate then fn = refresh_fn(conf, validate) end
            ctx:intercept(conf.refresh_type, fn)
        end
    end
    return true
end

local function auth_error(message, problem)
    local forbidden = problem == "/problems/forbidden"
    return weir.reply(weir.error_json(problem or "/problems/unauthorized", forbidden and 403 or 401, message))
end

--- An intercepted client message that may be an in-band refresh. Returns
-- nil (not one: forward it) or a verdict (the answer; never forwarded).
function _M.refresh(ctx, conf, payload, validate)
    local msg = cjson.decode(payload)
    if type(msg) ~= "table" or msg.type ~= conf.refresh_type then return nil end
    local tok = msg.token
    msg = nil
    if type(tok) ~= "string" or tok == "" then return auth_error("The auth message has no token") end
    local t, err = validate(ctx, conf, tok)
    tok = nil
    if not t then
        if err and err.problem ~= "/problems/unauthorized" and err.code then
            return weir.reply(weir.error_json(err.problem, err.code, err.message))
        end
        return auth_error(err and err.message or "Invalid token")
    end
    local old = ctx.consumer
    if t.consumer.subscriber ~= old.subscriber or t.consumer.application ~= old.application then
        return auth_error("The new token belongs to another subscriber or application", "/problems/forbidden")
    end
    ctx.consumer.scopes, ctx.consumer.tier = t.consumer.scopes, t.consumer.tier
    ctx.token = { exp = t.exp, jti = t.jti, claims = t.claims, hash = t.hash }
    arm(ctx, conf)
    return weir.reply(format('{"type":%s,"status":"ok","expires_at":%s}', cjson.encode(conf.refresh_type),
                             t.exp and ('"' .. iso(t.exp) .. '"') or "null"))
end

--- After a reload: close CTX when its token or consumer is now revoked.
function _M.recheck(ctx, conf)
    local t = ctx.token
    if not t then return nil end
    if revoked(conf, { jti = t.jti, hash = t.hash, consumer = ctx.consumer, claims = t.claims }, true) then
        return weir.error("/problems/token-revoked", "The access token has been revoked", 1008)
    end
    -- a reload may change the timers' settings
    if ctx.vars._oauth_policy ~= conf then
        ctx.vars._oauth_policy = conf
        arm(ctx, conf)
    end
    return nil
end

--- A 32-byte hash (weir.sha256) as 64 hex digits.
_M.hex32 = weir.hex32

------------------------------------------------------------------------------
-- A cache of validated tokens, per worker
------------------------------------------------------------------------------

--- A cache of at most SIZE entries (0: none) keyed by a token's hash: two
-- generations, the older dropped whole when the newer is half full, so
-- neither a lookup nor an insert ever walks it.
-- @usage local c = oauth.cache(conf.cache_size); c:put(h, e); c:get(h)
function _M.cache(size)
    local c = { size = size, new = {}, old = {}, n = 0 }
    function c:get(h) return self.new[h] or self.old[h] end
    function c:put(h, entry)
        if self.size == 0 then return end
        if self.n >= (self.size + 1) / 2 then self.old, self.new, self.n = self.new, {}, 0 end
        if not self.new[h] then self.n = self.n + 1 end
        self.new[h] = entry
    end
    return c
end

------------------------------------------------------------------------------
-- The handshake of a token policy
------------------------------------------------------------------------------

local function unauthorized(msg, problem)
    return weir.error(problem or "/problems/unauthorized", msg, 401)
end

--- What can change while a validated token is reused (from a cache, a
-- ticket): its time claims and the revocation list. Returns nil when the
-- token is still good, else a weir.error verdict.
function _M.check_live(rec, conf, now)
    local ok, why, problem = _M.check_time(rec.claims or { exp = rec.exp }, conf, now)
    if not ok then return unauthorized(why, problem) end
    local r = revoked(conf, rec)
    if r then return unauthorized("The access token has been revoked", "/problems/token-revoked") end
    if r == nil then
        return weir.error("/problems/unavailable", "Revocations cannot be checked now", 503)
    end
    return nil
end

--- The on_handshake of a token policy: find the credential, redeem a
-- ticket or VALIDATE(ctx, conf, token) a token (which returns the token
-- record, or nil, a weir.error verdict and, when the validator itself could
-- not work, true), answer a ticket request, or accept the token on CTX.
-- ON_FAILED(ctx, conf), when given, is called when the validator could not
-- work (not for a ticket request), before its verdict is returned.
-- With IN_PLACE, VALIDATE is given the token as (ctx, conf, s, i, j), the
-- token being s[i..j] (s may be the whole request head: nothing copied);
-- it must accept a plain (ctx, conf, token) too (the in-band refresh).
-- @treturn nil|table nothing (accepted) or the verdict to return
function _M.handshake(ctx, conf, validate, on_failed, in_place)
    local req = ctx.request
    local kind, cred, ci, cj = find_credential(ctx, conf)
    if not kind then return unauthorized("Missing access token") end
    if (kind == "ticket" or not in_place) and (ci ~= 1 or cj ~= #cred) then cred = sub(cred, ci, cj) end
    if req.ticket_request then
        if not conf.tickets then
            return weir.error("/problems/not-found", "Tickets are not enabled for this API", 404)
        end
        if kind ~= "token" then return unauthorized("A ticket is requested with a bearer token") end
    end
    local rec, err, failed
    if kind == "ticket" then
        rec = _M.redeem(ctx, cred)
        cred = nil
        if not rec then return unauthorized("Invalid or expired ticket") end
        local bad = _M.check_live(rec, conf, weir.now())
        if bad then return bad end
    else
        if in_place then
            rec, err, failed = validate(ctx, conf, cred, ci, cj)
        else
            rec, err, failed = validate(ctx, conf, cred)
        end
        cred = nil
        if not rec then
            if failed and on_failed and not req.ticket_request then on_failed(ctx, conf) end
            return err
        end
    end
    if req.ticket_request then _M.ticket_for(ctx, conf, rec) end
    local ok, verr = _M.accept(ctx, conf, rec, validate)
    if not ok then return verr end
    return nil
end

------------------------------------------------------------------------------
-- Tickets
------------------------------------------------------------------------------

--- Redeem a ticket for CTX's API version. Returns the token record, or nil.
function _M.redeem(ctx, ticket)
    local rec = weir.tickets and weir.tickets.take(ticket, ctx.api.name, ctx.api.version)
    if not rec then return nil end
    local t = cjson.decode(rec)
    if type(t) ~= "table" or type(t.consumer) ~= "table" then return nil end
    if type(t.consumer.scopes) ~= "table" then t.consumer.scopes = {} end
    if t.claims ~= nil and type(t.claims) ~= "table" then t.claims = nil end
    return t
end

--- Ask the runtime to answer this ticket request with a ticket for TOKEN.
function _M.ticket_for(ctx, conf, token)
    ctx._ticket = { ttl = conf._ticket_ttl,
                    record = { consumer = token.consumer, exp = token.exp, jti = token.jti,
                               hash = token.hash, claims = token.claims } }
end

_M.iso = iso

return _M
