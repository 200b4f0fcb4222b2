--- weir's own key manager (docs/key-manager.md): applications, their
-- consumer keys, subscriptions and revocations in the store
-- (weir.keystore, SQLite in state_dir), tokens signed by weir's own keys
-- (weir.issuer).
--
-- It answers the public endpoints (`POST /oauth2/token`, `GET
-- /.well-known/jwks.json`, routed here by core/service.c when
-- `key_manager` is configured) and adds its routes to the admin API. The
-- `jwt` policy (with `key_manager = true`) and the `subscription` policy
-- read the store through `store()` and `keyset()`.
--
-- Each worker opens the store itself (after the fork) and caches what the
-- handshake path reads, keyed by the store's generation: a change committed
-- by any worker empties every worker's caches at its next lookup.
--
-- @module weir.keymanager

local ffi = require "ffi"
local cjson = require "cjson.safe"
local weir = require "weir"
local keystore = require "weir.keystore"
local issuer_mod = require "weir.issuer"
local jose = require "weir.jose"

local type, pairs, ipairs, tostring, tonumber, next = type, pairs, ipairs, tostring, tonumber, next
local format, concat, floor = string.format, table.concat, math.floor

ffi.cdef [[ int mkdir(const char *path, unsigned int mode); ]]

local _M = {}

local st, st_path, iss, iss_conf      -- this worker's store and issuer
local gen_seen                        -- the store generation the caches belong to
local cache = {}                      -- lookups of the handshake path, emptied on a new generation

local function conf() return require("weir.runtime").conf end

local function km_conf()
    local c = conf()
    return c and c.key_manager, c
end

local polled_gen          -- with Redis: the store's generation as last polled
local polled_recheck      -- and the count of rechecks asked for (km:recheck), nil before the first answer

local function on_redis(c) return c.state and c.state.redis ~= nil end

--- This worker's store, opened at its first use (nil, message when the key
-- manager is off or the store cannot open): SQLite in state_dir, or Redis
-- when state.redis is set.
function _M.store()
    local km, c = km_conf()
    if not km then return nil, "the key manager is off (key_manager in the configuration)" end
    if on_redis(c) then
        if st and st_path == "redis" then return st end
        local s, _, msg = require("weir.keystore_redis").open {
            call = require("weir.redis").call, prefix = c.state.key_prefix }
        if not s then return nil, msg end
        st, st_path = s, "redis"
        return st
    end
    if not c.state_dir then
        -- state.redis added by a reload, which the running weir does not apply
        return nil, "the key manager has no store until weir is restarted (state.redis needs a restart)"
    end
    local path = c.state_dir .. "/weir.db"
    if st and st_path == path then return st end
    if st then st:close(); st, iss = nil, nil end
    ffi.C.mkdir(c.state_dir, tonumber("700", 8))
    local s, _, msg = keystore.open(path)
    if not s then return nil, msg end
    st, st_path = s, path
    return st
end

--- This worker's issuer over the store, with a current signing key.
function _M.issuer()
    local s, err = _M.store()
    if not s then return nil, err end
    local km = km_conf()
    local want = km.issuer .. "\0" .. tostring(km.audience) .. "\0" .. km.token_ttl
    if not iss or iss_conf ~= want then
        local i, ierr = issuer_mod.new { store = s, issuer = km.issuer, audience = km.audience,
                                         ttl = floor(km.token_ttl / 1000) }
        if not i then return nil, ierr end
        local ok, eerr = i:ensure()
        if not ok then return nil, eerr end
        iss, iss_conf = i, want
    end
    _M.fresh()
    return iss
end

--- Empty the caches when another worker (or this one) changed the store;
-- returns the store's generation. With Redis the generation is the one
-- polled every 250 ms, unless LIVE asks for it now (where waiting is
-- allowed: a recheck after a revocation).
function _M.fresh(live)
    local s = _M.store()
    if not s then return nil end
    local g
    if st_path == "redis" and not (live and coroutine.isyieldable and coroutine.isyieldable()) and polled_gen then
        g = polled_gen
    else
        g = s:generation()
    end
    if g ~= gen_seen then
        gen_seen = g
        cache = {}
        if iss then iss:refresh() end
    end
    return g
end

--- A cached lookup: FN() computed once per KEY and store generation (LIVE:
-- as `fresh`).
function _M.cached(key, fn, live)
    _M.fresh(live)
    local v = cache[key]
    if v == nil then
        v = { fn() }
        if v[1] ~= nil then cache[key] = v end      -- "cannot tell" is asked again next time
    end
    return unpack(v)
end

--- The keys weir's tokens verify with, as jose.verify_jws takes them
-- (LIVE: as `fresh`: a key another host added since the last poll, for a
-- token whose kid the set does not have; nil, message when the store cannot
-- tell now).
function _M.keyset(live)
    local i, err = _M.issuer()
    if not i then return nil, err end
    if live and _M.fresh(true) == nil then return nil, "the key manager's store cannot answer" end
    return i:keyset()
end

--- Is the credential of a weir token (its claims) revoked: the token, its
-- consumer key or its application? nil, message when the store cannot tell.
-- LIVE: as `fresh`.
function _M.revoked(claims, live)
    local s, err = _M.store()
    if not s then return nil, err end
    return _M.cached("rev\0" .. tostring(claims.jti) .. "\0" .. tostring(claims.client_id), function()
        if type(claims.jti) == "string" then
            local r, e = s:token_revoked(claims.jti)
            if r == nil then return nil, e end
            if r then return true end
        end
        if type(claims.client_id) == "string" then
            local app, code, key = s:find_key(claims.client_id)
            if not app and code ~= "not_found" then return nil, key end      -- the store cannot tell
            if not app or key.revoked_at or app.revoked_at then return true end
        end
        return false
    end, live)
end

local polling, started

--- With Redis, poll the store's generation every 250 ms (each worker), so
-- that handshakes see another host's change without a round trip each,
-- and the count of rechecks asked for (`recheck_all`): when it moved, this
-- worker rechecks its connections.
function _M.start()
    local km, c = km_conf()
    if not km then return end
    if not started then
        started = true
        -- the signing key exists from the start (made now when there is none)
        require("weir.runtime").spawn(function()
            local ok, err = _M.issuer()
            if not ok then weir.log("warn", "no signing key yet", { error = tostring(err) }) end
        end)
    end
    if polling or not on_redis(c) then return end
    polling = true
    local rt, redis = require "weir.runtime", require "weir.redis"
    rt.spawn(function()
        local keys = { c.state.key_prefix .. "km:gen", c.state.key_prefix .. "km:recheck" }
        while polling do
            local r = redis.call("MGET", keys[1], keys[2])
            if type(r) == "table" then
                polled_gen = tonumber(r[1]) or 0
                local n = tonumber(r[2]) or 0
                -- a revocation on any host, this one's included (its
                -- connections were rechecked already: again does no harm);
                -- at the first answer, whatever came before it (the
                -- connections of a worker whose Redis was not up yet)
                if n ~= polled_recheck then rt.recheck_local() end
                polled_recheck = n
            end
            if rt.sleep(0.25) == nil then polling = false end      -- the worker is stopping
        end
    end)
end

--- The subscription of application APP_NAME to API version VERSION:
-- { tier = ... }, false when there is none, or nil and a message when the
-- store cannot tell. Cached until the store changes (LIVE: as `fresh`).
function _M.subscription(app_name, api, version, live)
    local s, err = _M.store()
    if not s then return nil, err end
    return _M.cached("sub\0" .. app_name .. "\0" .. api .. "\0" .. version, function()
        local sub, code, msg = s:subscription(app_name, api, version)
        if sub then return { tier = sub.tier, id = sub.id } end
        if code == "not_found" then return false end
        return nil, msg
    end, live)
end

------------------------------------------------------------------------------
-- Telling the workers to check their connections again
------------------------------------------------------------------------------

--- After a revocation or a removed subscription: every worker of the host
-- runs its connections' rechecks now (the jwt and subscription policies
-- close what is no longer allowed: 1008). With Redis, the count of
-- rechecks asked for (`km:recheck`) goes up first: every worker of every
-- host sees it at its next poll (`start`), a host this one does not know as
-- a peer yet (started within its first heartbeat) included.
function _M.recheck_all()
    local km, c = km_conf()
    if km and on_redis(c) then
        local ok, err = require("weir.redis").call("INCR", c.state.key_prefix .. "km:recheck")
        if not ok then weir.log("warn", "recheck not counted in Redis", { error = tostring(err) }) end
    end
    require("weir.admin").recheck_all()
end

------------------------------------------------------------------------------
-- The public endpoints: POST /oauth2/token, GET /.well-known/jwks.json
------------------------------------------------------------------------------

local TOKEN_HEADERS = "Content-Type: application/json\r\nCache-Control: no-store\r\nPragma: no-cache\r\n"

-- An RFC 6749 (5.2) error.
local function oauth_error(status, code, description, extra)
    return status, cjson.encode({ error = code, error_description = description }),
           TOKEN_HEADERS .. (extra or "")
end

local function form_decode(s)
    local out, dup = {}, nil
    for pair in s:gmatch("[^&]+") do
        local k, v = pair:match("^([^=]*)=?(.*)$")
        k = k:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
        v = v:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
        if out[k] ~= nil then dup = k end
        out[k] = v
    end
    return out, dup
end

local function b64_decode(s)
    s = s:gsub("=+$", "")
    if s:find("[^%w+/]") then return nil end
    return jose.b64url_decode((s:gsub("[+/]", { ["+"] = "-", ["/"] = "_" })))
end

local function token_request(req)
    local admin = require "weir.admin"
    if req.method ~= "POST" then
        return oauth_error(405, "invalid_request", "Use POST", "Allow: POST\r\n")
    end
    local ct = admin.header(req.head, "Content-Type")
    if not ct or not ct:lower():match("^application/x%-www%-form%-urlencoded") then
        return oauth_error(400, "invalid_request", "Send the form as application/x-www-form-urlencoded")
    end
    local form, dup = form_decode(req.body)
    if dup then return oauth_error(400, "invalid_request", "Parameter " .. dup .. " is repeated") end
    local id, secret, basic
    local auth = admin.header(req.head, "Authorization")
    if auth then
        local b64 = auth:match("^[Bb][Aa][Ss][Ii][Cc]%s+(%S+)$")
        local raw = b64 and b64_decode(b64)
        local u, p
        if raw then u, p = raw:match("^([^:]*):(.*)$") end
        if not u then
            return oauth_error(401, "invalid_client", "Client authentication failed",
                               'WWW-Authenticate: Basic realm="weir"\r\n')
        end
        local function pct(x) return (x:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)) end
        id, secret, basic = pct(u), pct(p), true
        if form.client_id or form.client_secret then
            return oauth_error(400, "invalid_request", "Authenticate the client one way only")
        end
    else
        id, secret = form.client_id, form.client_secret
    end
    if form.grant_type == nil then return oauth_error(400, "invalid_request", "grant_type is missing") end
    if form.grant_type ~= "client_credentials" then
        return oauth_error(400, "unsupported_grant_type", "Only client_credentials is supported")
    end
    if not id or not secret or id == "" or secret == "" then
        return oauth_error(401, "invalid_client", "Client authentication failed",
                           basic and 'WWW-Authenticate: Basic realm="weir"\r\n' or nil)
    end
    local s, serr = _M.store()
    if not s then return oauth_error(503, "temporarily_unavailable", serr) end
    local app, key_type = s:check_client(id, secret)
    if not app and key_type == "internal" then
        return oauth_error(503, "temporarily_unavailable", "The key manager's store cannot answer now")
    end
    if not app then
        return oauth_error(401, "invalid_client", "Client authentication failed",
                           basic and 'WWW-Authenticate: Basic realm="weir"\r\n' or nil)
    end
    -- scopes: what was asked, all of it allowed to the application; nothing asked: all it has
    local allowed = {}
    for _, sc in ipairs(app.scopes or {}) do allowed[sc] = true end
    local granted = {}
    if form.scope and form.scope ~= "" then
        for sc in form.scope:gmatch("%S+") do
            if not allowed[sc] then
                return oauth_error(400, "invalid_scope", "Scope " .. sc .. " is not granted to this application")
            end
            granted[#granted + 1] = sc
        end
    else
        for _, sc in ipairs(app.scopes or {}) do granted[#granted + 1] = sc end
    end
    local i, ierr = _M.issuer()
    if not i then return oauth_error(503, "temporarily_unavailable", tostring(ierr)) end
    local claims = { sub = app.owner, client_id = id, azp = id, application = app.name,
                     application_id = app.id, key_type = key_type == "sandbox" and "SANDBOX" or "PRODUCTION",
                     tier = app.tier }
    if #granted > 0 then claims.scope = concat(granted, " ") end
    local token, full = i:mint(claims)
    if not token then return oauth_error(500, "server_error", "Cannot sign a token now") end
    local body = { access_token = token, token_type = "Bearer", expires_in = full.exp - full.iat }
    if claims.scope then body.scope = claims.scope end
    return 200, cjson.encode(body), TOKEN_HEADERS
end

local function jwks_request(req)
    local admin = require "weir.admin"
    if req.method ~= "GET" and req.method ~= "HEAD" then
        return admin.fail(405, "/problems/method-not-allowed", "Use GET", "Allow: GET\r\n")
    end
    local i, err = _M.issuer()
    if not i then return admin.fail(503, "/problems/unavailable", tostring(err)) end
    local body = i:jwks()
    local headers = "Content-Type: application/json\r\nCache-Control: public, max-age=60\r\n"
    if req.method == "HEAD" then return 200, "", headers end
    return 200, body, headers
end

--- Answer a request to a public endpoint (core/service.c routed it here).
function _M.handle(req)
    local path = req.target:match("^([^?]*)")
    if path == "/oauth2/token" then return token_request(req) end
    if path == "/.well-known/jwks.json" then return jwks_request(req) end
    return require("weir.admin").fail(404, "/problems/not-found", "No such endpoint")
end

------------------------------------------------------------------------------
-- The admin API's key-manager routes
------------------------------------------------------------------------------

local admin = require "weir.admin"
local array, obj, answer, fail = admin.array, admin.obj, admin.answer, admin.fail

local STATUS_OF = { invalid = 400, conflict = 409, not_found = 404, internal = 500 }
local PROBLEM_OF = { invalid = "/problems/bad-request", conflict = "/problems/conflict",
                     not_found = "/problems/not-found", internal = "/problems/internal-error" }

local function store_fail(code, msg)
    return fail(STATUS_OF[code] or 500, PROBLEM_OF[code] or "/problems/internal-error", msg or "Store error")
end

local function iso(t) return t and os.date("!%Y-%m-%dT%H:%M:%SZ", t) or nil end

local function app_json(a)
    return obj("id", a.id, "name", a.name, "owner", a.owner, "description", a.description, "tier", a.tier,
               "scopes", array(a.scopes or {}), "created_at", iso(a.created_at), "updated_at", iso(a.updated_at),
               "revoked_at", iso(a.revoked_at))
end

local function key_json(k)
    return obj("consumer_key", k.consumer_key, "key_type", k.key_type, "created_at", iso(k.created_at),
               "revoked_at", iso(k.revoked_at))
end

local function sub_json(s)
    return obj("id", s.id, "application_id", s.app_id, "application", s.app_name, "api", s.api,
               "version", s.version, "tier", s.tier, "created_at", iso(s.created_at))
end

-- The store, or an answer saying why there is none.
local function with_store(fn)
    return function(...)
        local s, err = _M.store()
        if not s then return fail(404, "/problems/not-found", err) end
        return fn(s, ...)
    end
end

local function paging(args)
    local limit, offset = tonumber(args.limit or 100), tonumber(args.offset or 0)
    if not limit or limit < 1 or limit > 1000 or limit ~= floor(limit) then
        return nil, { fail(400, "/problems/bad-request", "limit must be 1 to 1000") }
    end
    if not offset or offset < 0 or offset ~= floor(offset) then
        return nil, { fail(400, "/problems/bad-request", "offset must be 0 or more") }
    end
    return limit, offset
end

-- Does the configuration publish API version VERSION of API?
local function published(api, version)
    for _, a in ipairs(conf().apis) do
        if a.name == api then
            for _, v in ipairs(a.versions) do if v.version == version then return true end end
        end
    end
    return false
end

-- GET PATH: the store's METHOD (a list) as { total, offset, limit, NAME = [TO_JSON(item)] },
-- filtered by what QUERY(args) gives.
local function listing(route, path, method, name, to_json, query)
    route("GET", path, with_store(function(s, _, args)
        local limit, offset = paging(args)
        if not limit then return unpack(offset) end
        local q = query(args)
        q.limit, q.offset = limit, offset
        local list, total = s[method](s, q)
        if not list then return store_fail(total) end
        local out = array()
        for _, x in ipairs(list) do out[#out + 1] = to_json(x) end
        return answer(200, obj("total", total, "offset", offset, "limit", limit, name, out))
    end))
end

-- GET PATH (one capture: an id): the store's METHOD(id) as TO_JSON.
local function getting(route, path, method, to_json)
    route("GET", path, with_store(function(s, _, _, id)
        local x, code, msg = s[method](s, id)
        if not x then return store_fail(code, msg) end
        return answer(200, to_json(x))
    end))
end

-- METHOD PATH (one capture: an id): the store's STORE_METHOD(id) ends a
-- credential or a subscription; every worker rechecks its sockets; the
-- answer is { WORD = id }.
local function ending(route, method, path, store_method, word)
    route(method, path, with_store(function(s, _, _, id)
        local ok, code, msg = s[store_method](s, id)
        if not ok then return store_fail(code, msg) end
        _M.recheck_all()
        return answer(200, obj(word, id))
    end))
end

-- The answer for a tier the configuration does not define, or nil.
local function unknown_tier(t)
    if type(t) == "string" and t ~= "Unlimited" and not (conf().tiers or {})[t] then
        return { fail(400, "/problems/bad-request", "No tier " .. t .. " in the configuration") }
    end
end

admin.extend(function(route)
    route("POST", "/applications", with_store(function(s, req)
        local b, err = admin.body(req, { name = true, owner = true, description = true, tier = true, scopes = true })
        if not b then return unpack(err) end
        local bad = unknown_tier(b.tier)
        if bad then return unpack(bad) end
        local app, code, msg = s:create_app(b)
        if not app then return store_fail(code, msg) end
        return answer(201, app_json(app))
    end))

    listing(route, "/applications", "list_apps", "applications", app_json,
            function(args) return { owner = args.owner, name = args.name } end)
    getting(route, "/applications/([^/]+)", "get_app", app_json)

    route("PATCH", "/applications/([^/]+)", with_store(function(s, req, _, id)
        local b, err = admin.body(req, { name = true, owner = true, description = true, tier = true, scopes = true })
        if not b then return unpack(err) end
        if next(b) == nil then return fail(400, "/problems/bad-request", "Nothing to change") end
        local app, code, msg = s:update_app(id, b)
        if not app then return store_fail(code, msg) end
        _M.recheck_all()             -- a new name or tier
        return answer(200, app_json(app))
    end))

    route("DELETE", "/applications/([^/]+)", with_store(function(s, _, _, id)
        local app, code, msg = s:get_app(id)
        if not app then return store_fail(code, msg) end
        local ok, dcode, dmsg = s:delete_app(app.id)
        if not ok then return store_fail(dcode, dmsg) end
        _M.recheck_all()
        return answer(200, obj("deleted", app.id, "name", app.name))
    end))

    route("POST", "/applications/([^/]+)/revoke", with_store(function(s, _, _, id)
        local app, code, msg = s:revoke_app(id)
        if not app then return store_fail(code, msg) end
        _M.recheck_all()
        return answer(200, app_json(app))
    end))

    route("GET", "/applications/([^/]+)/keys", with_store(function(s, _, _, id)
        local keys, code, msg = s:list_keys(id)
        if not keys then return store_fail(code, msg) end
        local out = array()
        for _, k in ipairs(keys) do out[#out + 1] = key_json(k) end
        return answer(200, obj("keys", out))
    end))

    route("POST", "/applications/([^/]+)/keys", with_store(function(s, req, _, id)
        local b, err = admin.body(req, { key_type = true })
        if not b then return unpack(err) end
        local kt = b.key_type or "production"
        if kt ~= "production" and kt ~= "sandbox" then
            return fail(400, "/problems/bad-request", 'key_type must be "production" or "sandbox"')
        end
        local k, code, msg = s:generate_keys(id, kt)
        if not k then return store_fail(code, msg) end
        _M.recheck_all()             -- the previous pair of that type stops working
        return answer(201, obj("consumer_key", k.consumer_key, "consumer_secret", k.consumer_secret,
                               "key_type", k.key_type, "created_at", iso(k.created_at)))
    end))

    ending(route, "POST", "/keys/([^/]+)/revoke", "revoke_key", "revoked")

    route("POST", "/subscriptions", with_store(function(s, req)
        local b, err = admin.body(req, { application = true, api = true, version = true, tier = true })
        if not b then return unpack(err) end
        if type(b.api) == "string" and type(b.version) == "string" and not published(b.api, b.version) then
            return fail(404, "/problems/not-found", format("No API %s version %s is published", b.api, b.version))
        end
        local bad = unknown_tier(b.tier)
        if bad then return unpack(bad) end
        local sub, code, msg = s:subscribe { app = b.application, api = b.api, version = b.version, tier = b.tier }
        if not sub then return store_fail(code, msg) end
        return answer(201, sub_json(sub))
    end))

    listing(route, "/subscriptions", "list_subscriptions", "subscriptions", sub_json,
            function(args) return { app = args.application, api = args.api, version = args.version } end)
    getting(route, "/subscriptions/([^/]+)", "get_subscription", sub_json)

    route("PATCH", "/subscriptions/([^/]+)", with_store(function(s, req, _, id)
        local b, err = admin.body(req, { tier = true })
        if not b then return unpack(err) end
        local bad = unknown_tier(b.tier)
        if bad then return unpack(bad) end
        local sub, code, msg = s:update_subscription(id, b)
        if not sub then return store_fail(code, msg) end
        return answer(200, sub_json(sub))
    end))

    ending(route, "DELETE", "/subscriptions/([^/]+)", "unsubscribe", "deleted")

    route("POST", "/tokens/revoke", with_store(function(s, req)
        local b, err = admin.body(req, { token = true, jti = true, exp = true })
        if not b then return unpack(err) end
        local jti, exp = b.jti, b.exp
        if type(b.token) == "string" then
            local parts = {}
            for p in b.token:gmatch("[^.]+") do parts[#parts + 1] = p end
            local payload = #parts == 3 and jose.b64url_decode(parts[2])
            local claims = payload and cjson.decode(payload)
            if type(claims) ~= "table" or type(claims.jti) ~= "string" then
                return fail(400, "/problems/bad-request", "token is not a JWT with a jti")
            end
            jti, exp = claims.jti, tonumber(claims.exp)
        end
        if type(jti) ~= "string" or jti == "" then
            return fail(400, "/problems/bad-request", "Give the token, or its jti (and exp)")
        end
        exp = exp or (os.time() + floor(km_conf().token_ttl / 1000) + 60)
        local ok, code, msg = s:revoke_token(jti, exp)
        if not ok then return store_fail(code, msg) end
        _M.recheck_all()
        return answer(200, obj("revoked", jti, "until", iso(exp)))
    end))

    route("GET", "/signing%-keys", with_store(function()
        local i, err = _M.issuer()
        if not i then return fail(503, "/problems/unavailable", tostring(err)) end
        local out = array()
        for _, k in ipairs(i:keys()) do
            out[#out + 1] = obj("kid", k.kid, "current", k.current and true or false,
                                "created_at", iso(k.created_at), "retired_at", iso(k.retired_at))
        end
        return answer(200, obj("keys", out))
    end))

    route("POST", "/signing%-keys/rotate", with_store(function()
        local i, err = _M.issuer()
        if not i then return fail(503, "/problems/unavailable", tostring(err)) end
        local kid, rerr = i:rotate()
        if not kid then return fail(500, "/problems/internal-error", tostring(rerr)) end
        i:prune()
        return answer(200, obj("current", kid))
    end))
end)

return _M
