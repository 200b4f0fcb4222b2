-- weir's key manager end to end (docs/key-manager.md), on a real weir with
-- 2 workers and its SQLite store: the WSO2 flow of the seeds (application,
-- keys, subscription, a token from POST /oauth2/token, connect), the
-- refusals (wrong secret, a sandbox key where there is no sandbox endpoint,
-- an unsubscribed version), revocation closing open sockets on either
-- worker, the JWKS and its rotation, and bad input to the admin routes.
-- Tokens are checked with PyJWT too (spec/support/verify_jwt.py), against
-- the JWKS weir publishes.
local helpers = require "helpers"
local cjson = require "cjson.safe"

local TOKEN = "admin-token-" .. string.rep("k", 24)

describe("the key manager", function()
    local prod, sandbox, gw, dir, admin_port

    local function admin(method, path, json, opts)
        opts = opts or {}
        local headers = { { "Authorization", "Bearer " .. TOKEN } }
        if json then headers[#headers + 1] = { "Content-Type", "application/json" } end
        local res = assert(helpers.http_request(admin_port, { method = method, path = path, headers = headers,
                                                              body = json, timeout = 10 }))
        res.json = cjson.decode(res.body)
        return res
    end

    local function ok(res, status)
        assert.equal(status or 200, res.status, res.body)
        return res.json
    end

    local function b64(s) return (require("mime").b64(s)) end

    -- POST /oauth2/token on the public listener, client_credentials, HTTP Basic
    local function token_req(key, secret, extra)
        local body = "grant_type=client_credentials" .. (extra or "")
        local headers = { { "Content-Type", "application/x-www-form-urlencoded" } }
        if key then headers[#headers + 1] = { "Authorization", "Basic " .. b64(key .. ":" .. secret) } end
        local res = assert(helpers.http_request(gw.port, { method = "POST", path = "/oauth2/token",
                                                           headers = headers, body = body }))
        res.json = cjson.decode(res.body)
        return res
    end

    local function new_app(name, extra)
        local body = { name = name, owner = "owner-of-" .. name }
        for k, v in pairs(extra or {}) do body[k] = v end
        return ok(admin("POST", "/applications", cjson.encode(body)), 201)
    end

    local function keys(app, kt)
        return ok(admin("POST", "/applications/" .. app .. "/keys", cjson.encode({ key_type = kt or "production" })), 201)
    end

    local function subscribe(app, api, version, tier)
        return ok(admin("POST", "/subscriptions", cjson.encode({ application = app, api = api, version = version,
                                                                 tier = tier or "Gold" })), 201)
    end

    -- a token for the keys K, and (as a second value, when ANSWER) the whole answer
    local function get_token(k, answer)
        local r = token_req(k.consumer_key, k.consumer_secret)
        assert.equal(200, r.status, r.body)
        if answer then return r.json.access_token, r.json end
        return r.json.access_token
    end

    local function connect(token, path)
        return helpers.ws_connect(gw.port, { path = path or "/shop/1.0",
                                             headers = { Authorization = "Bearer " .. token } })
    end

    -- part I (1: header, 2: claims) of a compact JWS, decoded
    local function part(token, i)
        local p = select(i, token:match("^([^.]+)%.([^.]+)%."))
        return cjson.decode(require("weir.jose").b64url_decode(p))
    end
    local function claims_of(token) return part(token, 2) end

    setup(function()
        prod = helpers.start_backend("echo")
        sandbox = helpers.start_backend("echo")
        dir = helpers.tmpdir()
        helpers.write_file(dir .. "/admin.token", TOKEN .. "\n")
        admin_port = helpers.free_port()
        local chain = { { "jwt", { key_manager = true } }, { "subscription", {} } }
        gw = helpers.start_weir({
            workers = 2,
            admin = { port = admin_port, token_file = dir .. "/admin.token" },
            state_dir = dir .. "/state",
            key_manager = { issuer = "https://weir.spec.test", token_ttl = "10m" },
            tiers = { Gold = { limits = { { frames = 1000, per = "second" } } },
                      Silver = { limits = { { frames = 10, per = "second" } } } },
            apis = {
                { name = "Shop", context = "/shop", versions = {
                    { version = "1.0", default = true, endpoints = { production = prod.url, sandbox = sandbox.url },
                      policies = chain },
                    { version = "2.0", endpoints = { production = prod.url }, policies = chain },
                } },
            },
        })
        helpers.wait_port(admin_port)
    end)

    teardown(helpers.cleanup)

    it("runs the WSO2 flow: application, keys, subscription under Gold, token, connect", function()
        local app = new_app("ShopApp", { scopes = { "read", "write" } })
        assert.equal("ShopApp", app.name)
        assert.equal("Unlimited", app.tier)
        local k = keys("ShopApp")
        assert.equal("production", k.key_type)
        assert.truthy(#k.consumer_secret >= 40)
        -- the secret is shown once: never again
        local listed = admin("GET", "/applications/ShopApp/keys")
        assert.equal(200, listed.status)
        assert.falsy(listed.body:find(k.consumer_secret, 1, true))
        assert.equal(k.consumer_key, listed.json.keys[1].consumer_key)

        local sub = subscribe("ShopApp", "Shop", "1.0", "Gold")
        assert.equal("Gold", sub.tier)
        local tok, body = get_token(k, true)
        assert.equal("Bearer", body.token_type)
        assert.equal(600, body.expires_in)
        assert.equal("read write", body.scope)
        local c = claims_of(tok)
        assert.equal("https://weir.spec.test", c.iss)
        assert.equal("ShopApp", c.application)
        assert.equal(app.id, c.application_id)
        assert.equal("owner-of-ShopApp", c.sub)
        assert.equal(k.consumer_key, c.client_id)
        assert.equal("PRODUCTION", c.key_type)
        assert.truthy(c.jti)

        local ws = assert(connect(tok))
        assert(ws:send_text("hello"))
        assert.equal("hello", helpers.recv_payload(ws))
        -- the subscription's tier is the consumer's
        local conns = ok(admin("GET", "/connections?application=ShopApp"))
        assert.equal(1, conns.total)
        assert.equal("Gold", conns.connections[1].consumer.tier)
        assert.equal("owner-of-ShopApp", conns.connections[1].consumer.subscriber)
        ws:close()
        -- the backend never saw the token
        for _, rec in ipairs(prod:connections()) do
            assert.falsy(cjson.encode(rec):find(tok, 1, true))
        end
    end)

    it("publishes its keys: PyJWT verifies a token against /.well-known/jwks.json", function()
        new_app("PyApp")
        local tok = get_token(keys("PyApp"))
        local res = assert(helpers.http_request(gw.port, { path = "/.well-known/jwks.json" }))
        assert.equal(200, res.status)
        local jwks = cjson.decode(res.body)
        assert.equal("EC", jwks.keys[1].kty)
        assert.is_nil(jwks.keys[1].d)
        local f = helpers.write_file(dir .. "/jwks.json", res.body)
        local t = helpers.write_file(dir .. "/tokens.txt", tok .. "\n")
        local o = helpers.write_file(dir .. "/verify.json", '{"issuer":"https://weir.spec.test"}')
        local code, out, err = helpers.run({ "/usr/bin/python3", helpers.support .. "/verify_jwt.py", f, t, o })
        assert.equal(0, code, out .. err)
        local v = cjson.decode(out)
        assert.equal(1, v.verified, out)
        assert.equal("PyApp", v.claims[1].application)
    end)

    it("refuses a wrong secret, an unknown key, another grant and an unknown scope, as RFC 6749 says", function()
        new_app("RefApp", { scopes = { "read" } })
        local k = keys("RefApp")
        local r = token_req(k.consumer_key, "wrong-" .. k.consumer_secret)
        assert.equal(401, r.status)
        assert.equal("invalid_client", r.json.error)
        assert.truthy(r.headers["www-authenticate"])
        r = token_req("no-such-key", k.consumer_secret)
        assert.equal(401, r.status)
        assert.equal("invalid_client", r.json.error)
        r = token_req(nil, nil, "&client_id=" .. k.consumer_key .. "&client_secret=" .. k.consumer_secret)
        assert.equal(200, r.status, r.body)           -- form fields work too
        r = token_req(k.consumer_key, k.consumer_secret, "&scope=admin")
        assert.equal(400, r.status)
        assert.equal("invalid_scope", r.json.error)
        local res = assert(helpers.http_request(gw.port, { method = "POST", path = "/oauth2/token",
            headers = { { "Content-Type", "application/x-www-form-urlencoded" },
                        { "Authorization", "Basic " .. b64(k.consumer_key .. ":" .. k.consumer_secret) } },
            body = "grant_type=password&username=a&password=b" }))
        assert.equal(400, res.status)
        assert.equal("unsupported_grant_type", cjson.decode(res.body).error)
        -- no secret in weir's log
        local log = helpers.read_file(gw.log_path)
        assert.falsy(log:find(k.consumer_secret, 1, true))
    end)

    it("refuses an unsubscribed API version with 403 not-subscribed, and a sandbox key reaches the sandbox endpoint only where there is one", function()
        new_app("SubApp")
        local k = keys("SubApp")
        subscribe("SubApp", "Shop", "1.0", "Silver")
        local tok = get_token(k)
        local ws, res = connect(tok, "/shop/2.0")
        assert.is_nil(ws)
        assert.equal(403, res.status)
        helpers.check_error(res.body, "/problems/not-subscribed", 403)

        subscribe("SubApp", "Shop", "2.0")
        local sk = keys("SubApp", "sandbox")
        local stok = get_token(sk)
        assert.equal("SANDBOX", claims_of(stok).key_type)
        local before = #sandbox:connections()
        ws = assert(connect(stok, "/shop/1.0"))
        assert(ws:send_text("to sandbox"))
        assert.equal("to sandbox", helpers.recv_payload(ws))
        assert.equal(before + 1, #sandbox:connections())
        ws:close()
        -- 2.0 has no sandbox endpoint
        ws, res = connect(stok, "/shop/2.0")
        assert.is_nil(ws)
        assert.equal(403, res.status)
        helpers.check_error(res.body, "/problems/forbidden", 403)
    end)

    -- Open N sockets with TOKEN until both workers hold one; returns them.
    local function spread(token, app)
        local list = {}
        helpers.wait_until(function()
            list[#list + 1] = assert(connect(token))
            local seen = {}
            for _, c in ipairs(ok(admin("GET", "/connections?application=" .. app)).connections) do
                seen[c.worker] = true
            end
            return seen[0] and seen[1]
        end, 30, "sockets of " .. app .. " on both workers")
        return list
    end

    it("revoking an application closes its open sockets on both workers with 1008 token-revoked, and refuses new ones", function()
        new_app("RevApp")
        local k = keys("RevApp")
        subscribe("RevApp", "Shop", "1.0")
        local tok = get_token(k)
        local socks = spread(tok, "RevApp")
        local r = admin("POST", "/applications/RevApp/revoke")
        assert.equal(200, r.status, r.body)
        assert.truthy(r.json.revoked_at)
        for _, ws in ipairs(socks) do helpers.expect_error_close(ws, "/problems/token-revoked", 1008) end
        local ws, res = connect(tok)
        assert.is_nil(ws)
        helpers.check_error(res.body, "/problems/token-revoked", 401)
        local t = token_req(k.consumer_key, k.consumer_secret)
        assert.equal(401, t.status)
    end)

    it("revoking a key or a token closes the sockets using it; the application's other tokens live on", function()
        new_app("KeyApp")
        local k = keys("KeyApp")
        subscribe("KeyApp", "Shop", "1.0")
        local t1, t2 = get_token(k), get_token(k)
        local w1, w2 = assert(connect(t1)), assert(connect(t2))
        ok(admin("POST", "/tokens/revoke", cjson.encode({ token = t1 })))
        helpers.expect_error_close(w1, "/problems/token-revoked", 1008)
        assert(w2:send_text("still here"))
        assert.equal("still here", helpers.recv_payload(w2))
        ok(admin("POST", "/keys/" .. k.consumer_key .. "/revoke"))
        helpers.expect_error_close(w2, "/problems/token-revoked", 1008)
    end)

    it("removing a subscription closes its sockets with 1008 not-subscribed", function()
        new_app("UnsubApp")
        local sub = subscribe("UnsubApp", "Shop", "1.0")
        local ws = assert(connect(get_token(keys("UnsubApp"))))
        ok(admin("DELETE", "/subscriptions/" .. sub.id))
        helpers.expect_error_close(ws, "/problems/not-subscribed", 1008)
    end)

    it("rotates its signing key: new tokens carry the new kid, old tokens still verify, both keys are published", function()
        new_app("RotApp")
        local k = keys("RotApp")
        subscribe("RotApp", "Shop", "1.0")
        local old = get_token(k)
        local r = ok(admin("POST", "/signing-keys/rotate"))
        local new = get_token(k)
        local function hdr(t) return part(t, 1) end
        assert.equal(r.current, hdr(new).kid)
        assert.not_equal(r.current, hdr(old).kid)
        local jwks = cjson.decode(assert(helpers.http_request(gw.port, { path = "/.well-known/jwks.json" })).body)
        local kids = {}
        for _, key in ipairs(jwks.keys) do kids[key.kid] = true end
        assert.truthy(kids[hdr(old).kid] and kids[hdr(new).kid])
        for _, t in ipairs({ old, new }) do
            local ws = assert(connect(t))
            ws:close()
        end
        local listed = ok(admin("GET", "/signing-keys"))
        local current = {}
        for _, key in ipairs(listed.keys) do
            if key.current then current[#current + 1] = key.kid end
            assert.is_nil(key.d)
        end
        assert.same({ r.current }, current)
        assert.truthy(#listed.keys >= 2)
    end)

    it("needs the admin token on every key-manager endpoint, and answers 401 without it", function()
        for _, ep in ipairs({ { "POST", "/applications" }, { "GET", "/applications" }, { "GET", "/applications/x" },
                              { "PATCH", "/applications/x" }, { "DELETE", "/applications/x" },
                              { "POST", "/applications/x/revoke" }, { "GET", "/applications/x/keys" },
                              { "POST", "/applications/x/keys" }, { "POST", "/keys/k/revoke" },
                              { "POST", "/subscriptions" }, { "GET", "/subscriptions" }, { "GET", "/subscriptions/s" },
                              { "PATCH", "/subscriptions/s" }, { "DELETE", "/subscriptions/s" },
                              { "POST", "/tokens/revoke" }, { "GET", "/signing-keys" },
                              { "POST", "/signing-keys/rotate" } }) do
            local res = assert(helpers.http_request(admin_port, { method = ep[1], path = ep[2], timeout = 10 }))
            assert.equal(401, res.status, ep[1] .. " " .. ep[2])
            helpers.check_error(res.body, "/problems/unauthorized", 401)
        end
    end)

    it("answers bad input with 4xx and the error JSON, changing nothing", function()
        local before = ok(admin("GET", "/applications")).total
        local cases = {
            { "POST", "/applications", "{", 400 },
            { "POST", "/applications", '{"name":"X"}', 400 },                       -- no owner
            { "POST", "/applications", '{"name":"X","owner":"o","color":"red"}', 400 },
            { "POST", "/applications", '{"name":"ShopApp","owner":"o"}', 409 },      -- taken
            { "POST", "/applications", '{"name":"Y","owner":"o","tier":"Platinum"}', 400 },
            { "POST", "/applications", '{"name":"' .. string.rep("n", 300) .. '","owner":"o"}', 400 },
            { "GET", "/applications/no-such-app", nil, 404 },
            { "POST", "/applications/no-such-app/keys", "{}", 404 },
            { "POST", "/applications/ShopApp/keys", '{"key_type":"staging"}', 400 },
            { "POST", "/subscriptions", '{"application":"ShopApp","api":"Shop","version":"9.9","tier":"Gold"}', 404 },
            { "POST", "/subscriptions", '{"application":"ShopApp","api":"Shop","version":"1.0","tier":"Gold"}', 409 },
            { "POST", "/subscriptions", '{"application":"Nobody","api":"Shop","version":"2.0","tier":"Gold"}', 404 },
            { "DELETE", "/subscriptions/00000000-0000-4000-8000-000000000000", nil, 404 },
            { "POST", "/tokens/revoke", '{"token":"not.a.jwt"}', 400 },
            { "POST", "/tokens/revoke", "{}", 400 },
            { "PATCH", "/applications/ShopApp", "{}", 400 },
        }
        for _, c in ipairs(cases) do
            local r = admin(c[1], c[2], c[3])
            assert.equal(c[4], r.status, c[1] .. " " .. c[2] .. ": " .. r.body)
            assert.equal("error", r.json.type)
            assert.equal(c[4], r.json.error.code)
        end
        assert.equal(before, ok(admin("GET", "/applications")).total)
    end)

    it("lists, updates and deletes applications and subscriptions", function()
        new_app("CrudApp", { description = "first" })
        local listed = ok(admin("GET", "/applications?owner=owner-of-CrudApp"))
        assert.equal(1, listed.total)
        assert.equal("first", listed.applications[1].description)
        local upd = ok(admin("PATCH", "/applications/CrudApp", '{"description":"second","tier":"Gold"}'))
        assert.equal("second", upd.description)
        assert.equal("Gold", upd.tier)
        local sub = subscribe("CrudApp", "Shop", "2.0", "Silver")
        local subs = ok(admin("GET", "/subscriptions?application=CrudApp"))
        assert.equal(1, subs.total)
        assert.equal(sub.id, subs.subscriptions[1].id)
        assert.equal("Gold", ok(admin("PATCH", "/subscriptions/" .. sub.id, '{"tier":"Gold"}')).tier)
        ok(admin("DELETE", "/applications/CrudApp"))
        assert.equal(404, admin("GET", "/applications/CrudApp").status)
        assert.equal(0, ok(admin("GET", "/subscriptions?application=CrudApp")).total)
    end)
end)
