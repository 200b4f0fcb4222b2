-- jwt with `jwks_url` (docs/policies/jwt.md), against a real HTTPS server
-- (spec/support/idp_server.py) whose JWKS file the spec rewrites: keys are
-- fetched and verify tokens; rotation (a new kid picked up on the refresh an
-- unknown kid triggers, at most once per jwks_min_refresh; a dropped kid
-- refused after that refresh or after jwks_max_age); the server down at
-- start (refused with the JSON, recovers when it comes up) and after the
-- keys were fetched (the old keys are kept); a server slower than
-- jwks_timeout (refused, while the worker goes on serving other APIs); a
-- client that gives up while a fetch is in flight (later fetches still
-- happen). Keys and tokens are made at run time by spec/support/mint_jwt.py.
local helpers = require "helpers"
local idp = require "support.idp"
local cjson = require "cjson"

local MINT = "spec/support/mint_jwt.py"
local ISS, AUD = "https://idp.spec.test/realms/weir", "weir-api"

describe("jwt with a JWKS URL", function()
    local be, gw, dir, keys, cert, jwks_file, srv, srv3, late_port, late

    local function mint(desc)
        local code, out, err = helpers.run({ "/usr/bin/python3", MINT, "mint", dir, cjson.encode(desc) })
        assert(code == 0, "mint_jwt.py: " .. err)
        return (out:gsub("%s+$", ""))
    end

    local ALG = { k1 = "RS256", k2 = "ES256", k3 = "RS256" }

    -- a valid token signed with key NAME
    local function token(name)
        return mint({ key = name, alg = ALG[name], exp_in = 300,
                      claims = { iss = ISS, aud = AUD, sub = "alice", azp = "ShopApp",
                                 jti = "jti-" .. tostring(math.random(1e9)) } })
    end

    -- The JWKS the servers answer from now on: the public keys NAMES.
    local function serve(names)
        local list = {}
        for i, n in ipairs(names) do list[i] = keys.keys[n].jwk end
        helpers.write_file(jwks_file, cjson.encode({ keys = list }))
    end

    local seq = 0
    local function tag()
        seq = seq + 1
        return "w" .. seq
    end

    local function bearer(tok) return { Authorization = "Bearer " .. tok } end

    -- weir's log records about JWKS fetches, for failure messages
    local function jwks_log()
        local out = {}
        for _, r in ipairs(gw:logs()) do
            if type(r.msg) == "string" and r.msg:find("JWKS", 1, true) then out[#out + 1] = cjson.encode(r) end
        end
        return table.concat(out, "\n")
    end

    local function accepted(api, tok)
        local ws, res = helpers.ws_connect(gw.port, { path = "/" .. api .. "/" .. tag(), headers = bearer(tok) })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res))
                   .. "\nweir's JWKS log:\n" .. jwks_log())
        assert.equal("hi", helpers.ask(ws, "hi"))
        ws:close()
    end

    -- Refused with 401 and the error JSON; returns the decoded error.
    -- STATUS 401 (the token refused, the default) or 503 (no keys to check it with)
    local function refused(api, tok, status)
        status = status or 401
        local ws, res = helpers.ws_connect(gw.port, { path = "/" .. api .. "/" .. tag(), headers = bearer(tok) })
        if ws then ws:close() end
        assert.is_nil(ws, "the upgrade was accepted")
        assert.is_table(res, "no HTTP answer: " .. tostring(res))
        assert.equal(status, res.status)
        assert.equal("application/json", res.headers["content-type"])
        return helpers.check_error(res.body, status == 503 and "/problems/unavailable" or "/problems/unauthorized", status)
    end

    -- JWKS requests SRV has had
    local function fetches(s) return (s or srv):stats().paths["/jwks.json"] or 0 end

    setup(function()
        be = helpers.start_backend("echo")
        dir = helpers.tmpdir() .. "/keys"
        local code, out, err = helpers.run({ "/usr/bin/python3", MINT, "keys", dir, cjson.encode({ keys = {
            { name = "k1", type = "RSA", bits = 2048 },
            { name = "k2", type = "EC", crv = "P-256" },
            { name = "k3", type = "RSA", bits = 2048 },
        } }) })
        assert(code == 0, "mint_jwt.py keys: " .. err)
        keys = cjson.decode(out)
        cert = helpers.make_cert("idp")
        jwks_file = helpers.tmpdir() .. "/served-jwks.json"
        serve({ "k1" })
        srv = idp.start({ cert = cert, jwks = jwks_file })
        srv3 = idp.start({ cert = cert, jwks = jwks_file })        -- stopped by a spec below
        late_port = helpers.free_port()                           -- started by a spec below
        -- each API has a URL of its own (the query differs), so each has
        -- its own cached key set
        local function api(name, url, over)
            local c = { jwks_url = url, jwks_ca = cert.cert, issuer = ISS, audience = AUD }
            for k, v in pairs(over or {}) do
                if v == false and k ~= "jwks_verify" then c[k] = nil else c[k] = v end
            end
            return helpers.policy_api(name, "/" .. name, be, { { "jwt", c } })
        end
        local function at(q) return srv:url("/jwks.json?api=" .. q) end
        gw = helpers.start_weir({
            workers = 1,    -- one worker: one key cache, and "the worker keeps serving" means weir does
            limits = { handshake_timeout = "4s" },
            apis = {
                api("rot", at("rot"), { jwks_min_refresh = "1ms" }),
                api("lazy", at("lazy"), { jwks_min_refresh = "3s" }),
                api("aged", at("aged"), { jwks_max_age = "2s", jwks_min_refresh = "1ms" }),
                api("late", "https://127.0.0.1:" .. late_port .. "/jwks.json", { jwks_min_refresh = "1ms" }),
                api("kept", srv3:url("/jwks.json"), { jwks_max_age = "1s", jwks_min_refresh = "1ms" }),
                api("slow", at("slow&delay=30000"), { jwks_timeout = "2s" }),
                -- a fetch that outlives the handshake (handshake_timeout)
                api("abandon", at("abandon"), { jwks_timeout = "6s", jwks_min_refresh = "1ms" }),
                -- the same URL, not verified / verified against the system's CAs (which
                -- do not know the spec's certificate)
                api("noverify", at("shared"), { jwks_verify = false, jwks_ca = false }),
                api("verify", at("shared"), { jwks_ca = false }),
                helpers.policy_api("file", "/file", be, { { "jwt", { jwks_file = keys.jwks, issuer = ISS,
                                                                      audience = AUD } } }),
            },
        })
    end)
    teardown(helpers.cleanup)

    it("verifies a token with a key fetched from the URL", function()
        serve({ "k1" })
        local before = fetches()
        accepted("rot", token("k1"))
        assert.equal(before + 1, fetches())
        accepted("rot", token("k1"))
        assert.equal(before + 1, fetches(), "the keys were fetched again without a reason")
    end)

    it("picks up a new kid on the refresh an unknown kid triggers, and refuses a dropped one", function()
        serve({ "k1" })
        local old = token("k1")
        accepted("rot", old)
        serve({ "k2" })                                   -- rotation: k1 out, k2 in
        local before = fetches()
        accepted("rot", token("k2"))
        assert.equal(before + 1, fetches())
        -- the token verified before is not trusted from the cache: its key is gone
        assert.equal("Token signing key is unknown", refused("rot", old).error.message)
        refused("rot", token("k1"))
    end)

    it("refetches for an unknown kid at most once per jwks_min_refresh", function()
        serve({ "k1" })
        local k1, k2 = token("k1"), token("k2")
        local t0 = helpers.now()
        accepted("lazy", k1)                              -- the first fetch, after t0 and before t1
        local t1 = helpers.now()
        serve({ "k1", "k2" })
        local before = fetches()
        local err = refused("lazy", k2)
        if helpers.now() - t0 < 3 then                    -- (unless this machine took 3 s for it)
            assert.equal("Token signing key is unknown", err.error.message)
            assert.equal(before, fetches(), "refetched within jwks_min_refresh")
        end
        helpers.wait_until(function() return helpers.now() - t1 > 3.05 end, 10, "jwks_min_refresh to pass")
        accepted("lazy", k2)
        assert.equal(before + 1, fetches())
    end)

    it("refuses a dropped kid after jwks_max_age, without an unknown kid to trigger it", function()
        serve({ "k1", "k3" })
        accepted("aged", token("k1"))
        local t1 = helpers.now()                          -- fetched before this
        serve({ "k3" })
        local k1 = token("k1")
        if helpers.now() - t1 < 1.5 then accepted("aged", k1) end     -- still within max_age: the old set
        helpers.wait_until(function() return helpers.now() - t1 > 2.05 end, 10, "jwks_max_age to pass")
        local before = fetches()
        refused("aged", k1)
        assert.is_true(fetches() > before)
        accepted("aged", token("k3"))
    end)

    it("refuses with the JSON while the server is down at start, and recovers when it comes up", function()
        serve({ "k1" })
        local tok = token("k1")
        local err = refused("late", tok, 503)
        assert.equal("Signing keys are not available", err.error.message)
        assert.is_true(gw:alive())
        gw:wait_log(function(r)
            return r.msg == "JWKS fetch failed" and type(r.url) == "string" and r.url:find(":" .. late_port, 1, true)
        end)
        late = idp.start({ cert = cert, jwks = jwks_file, port = late_port })
        helpers.wait_until(function()
            local ws = helpers.ws_connect(gw.port, { path = "/late/" .. tag(), headers = bearer(tok) })
            if ws then ws:close() return true end
        end, 15, "the keys to be fetched once the server is up")
        assert.is_true(fetches(late) >= 1)
    end)

    it("keeps the keys it has when the server goes down", function()
        serve({ "k1" })
        accepted("kept", token("k1"))
        local t1 = helpers.now()
        srv3:stop()
        helpers.wait_until(function() return helpers.now() - t1 > 1.05 end, 10, "jwks_max_age to pass")
        accepted("kept", token("k1"))                     -- max_age passed, the refetch failed: old keys
        gw:wait_log(function(r)
            return r.msg == "JWKS fetch failed" and type(r.url) == "string"
                   and r.url:find(":" .. srv3.port, 1, true)
        end)
        refused("kept", token("k2"))                      -- an unknown kid cannot be looked up, no crash
        accepted("kept", token("k1"))
    end)

    it("never lends keys fetched without verifying the server to a policy that verifies it", function()
        serve({ "k1" })
        accepted("noverify", token("k1"))
        local err = refused("verify", token("k1"), 503)
        assert.equal("Signing keys are not available", err.error.message)
        gw:wait_log(function(r)
            return r.msg == "JWKS fetch failed" and type(r.url) == "string" and r.url:find("api=shared", 1, true)
                   and type(r.error) == "string" and r.error:lower():find("certificate", 1, true)
        end)
    end)

    it("refuses when the server is slower than jwks_timeout, while the worker serves other APIs", function()
        serve({ "k1" })
        local k1, k3 = token("k1"), token("k3")
        local before = fetches()
        -- the handshake whose policy waits on the slow server
        local conn = assert(helpers.tcp(gw.port, 15))
        assert(conn:send(helpers.build_request{ method = "GET", path = "/slow/" .. tag(), headers = {
            { "Host", "127.0.0.1:" .. gw.port }, { "Upgrade", "websocket" }, { "Connection", "Upgrade" },
            { "Sec-WebSocket-Key", helpers.ws_key() }, { "Sec-WebSocket-Version", "13" },
            { "Authorization", "Bearer " .. k1 } }, host = false }))
        helpers.wait_until(function() return fetches() > before end, 10, "the JWKS request to reach the server")
        local t0 = helpers.now()
        -- meanwhile: the same (only) worker answers another API with a jwt policy
        accepted("file", k3)
        if helpers.now() - t0 < 1.5 then                  -- well within the 2 s timeout
            local res, rerr = conn:read_response(0.01)
            assert.is_nil(res, "the slow handshake was answered before its fetch ended")
            assert.equal("timeout", rerr)
        end
        local res = assert(conn:read_response(15))
        conn:close()
        assert.equal(503, res.status)
        local err = helpers.check_error(res.body, "/problems/unavailable", 503)
        assert.equal("Signing keys are not available", err.error.message)
        gw:wait_log(function(r) return r.msg == "JWKS fetch failed" and r.error == "timeout" end)
    end)

    it("fetches again after a handshake ended while its fetch was in flight", function()
        serve({ "k1" })
        srv:control({ delay = 20000, path = "/jwks.json" })
        local before = fetches()
        local conn = assert(helpers.tcp(gw.port, 15))
        assert(conn:send(helpers.build_request{ method = "GET", path = "/abandon/" .. tag(), headers = {
            { "Host", "127.0.0.1:" .. gw.port }, { "Upgrade", "websocket" }, { "Connection", "Upgrade" },
            { "Sec-WebSocket-Key", helpers.ws_key() }, { "Sec-WebSocket-Version", "13" },
            { "Authorization", "Bearer " .. token("k1") } }, host = false }))
        helpers.wait_until(function() return fetches() > before end, 10, "the JWKS request to reach the server")
        -- handshake_timeout ends the handshake (and its fetch) before jwks_timeout
        local res = assert(conn:read_response(15))
        conn:close()
        assert.equal(504, res.status)
        helpers.check_error(res.body, "/problems/gateway-timeout", 504)
        srv:control({})
        local tok = token("k1")
        helpers.wait_until(function()
            local ws = helpers.ws_connect(gw.port, { path = "/abandon/" .. tag(), headers = bearer(tok) })
            if ws then ws:close() return true end
        end, 20, "a fetch after the abandoned one")
    end)
end)
