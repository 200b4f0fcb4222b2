-- The key manager on Redis (docs/key-manager.md, "The store on Redis"): two
-- weir instances share one real redis-server (started by the spec on a free
-- loopback port) and no state_dir: an application made through one
-- instance's admin API gets its token from the other and connects to
-- either; revoking it through one closes its sockets on both; while Redis
-- is stopped, open sockets live on and what cannot be checked is refused
-- 503, and everything works again once it is back.
local helpers = require "helpers"
local cjson = require "cjson.safe"

local TOKEN = "admin-token-" .. string.rep("r", 24)

describe("the key manager on Redis, two instances", function()
    local be, rd, dir
    local gw = {}

    local function admin(g, method, path, json)
        return helpers.admin_request(g.admin_port, TOKEN, method, path, json)
    end

    local function token_req(g, k)
        local res = assert(helpers.http_request(g.port, { method = "POST", path = "/oauth2/token", timeout = 10,
            headers = { { "Content-Type", "application/x-www-form-urlencoded" },
                        { "Authorization", "Basic " .. require("mime").b64(k.consumer_key .. ":" .. k.consumer_secret) } },
            body = "grant_type=client_credentials" }))
        res.json = cjson.decode(res.body)
        return res
    end

    local function connect(g, tok)
        return helpers.ws_connect(g.port, { path = "/shop", headers = { Authorization = "Bearer " .. tok } })
    end

    local function start(name)
        return helpers.start_weir_admin({
            state = { redis = rd.url, host = name, timeout = "2s" },
            key_manager = { issuer = "https://weir.cluster.test" },
            tiers = { Gold = { limits = { { frames = 1000, per = "second" } } } },
            apis = { { name = "Shop", context = "/shop", versions = {
                { version = "1.0", default = true, endpoints = { production = be.url },
                  policies = { { "jwt", { key_manager = true } }, { "subscription", {} } } } } } },
        }, dir, TOKEN)
    end

    setup(function()
        be = helpers.start_backend("echo")
        rd = helpers.start_redis()
        dir = helpers.tmpdir()
        gw[1] = start("east")
        gw[2] = start("west")
    end)

    teardown(helpers.cleanup)

    -- After a Redis outage each worker reconnects with a backoff of its own:
    -- a request that lands on one still reconnecting is answered 500 (admin)
    -- or 503 (tokens) and is sent again.
    local function settled(fn)
        return helpers.wait_until(function()
            local r = fn()
            if r.status ~= 500 and r.status ~= 503 then return r end
        end, 20, "an answer from the key manager's store through Redis")
    end

    -- A WebSocket to G with TOK, sent again while the store cannot answer
    -- (503: a worker reconnecting to Redis, or a slow answer on a loaded machine).
    local function open_ws(g, tok)
        local ws
        helpers.wait_until(function()
            local res
            ws, res = connect(g, tok)
            if ws then return true end
            assert(type(res) == "table" and res.status == 503, "refused: " .. tostring(res and res.body or res))
        end, 20, "a WebSocket through the key manager")
        return ws
    end

    local function setup_app(name)
        local a = settled(function()
            return admin(gw[1], "POST", "/applications", cjson.encode({ name = name, owner = "o-" .. name }))
        end)
        assert.equal(201, a.status, a.body)
        local k = settled(function()
            return admin(gw[1], "POST", "/applications/" .. name .. "/keys", '{"key_type":"production"}')
        end)
        assert.equal(201, k.status, k.body)
        local s = settled(function()
            return admin(gw[1], "POST", "/subscriptions",
                         cjson.encode({ application = name, api = "Shop", version = "1.0", tier = "Gold" }))
        end)
        assert.equal(201, s.status, s.body)
        return k.json
    end

    it("shares applications: made on one instance, a token from the other, sockets on both", function()
        local k = setup_app("ClusterApp")
        -- read through the other instance (settled: a 503 while its worker's store answers late)
        local got = settled(function() return admin(gw[2], "GET", "/applications/ClusterApp") end)
        assert.equal(200, got.status, got.body)
        assert.equal("ClusterApp", got.json.name)
        local t = settled(function() return token_req(gw[2], k) end)
        assert.equal(200, t.status, t.body)
        for _, g in ipairs(gw) do
            local ws = open_ws(g, t.json.access_token)
            assert(ws:send_text("hi"))
            assert.equal("hi", helpers.recv_payload(ws))
            ws:close()
        end
        -- both publish the same keys
        local j1 = assert(helpers.http_request(gw[1].port, { path = "/.well-known/jwks.json" })).body
        local j2 = assert(helpers.http_request(gw[2].port, { path = "/.well-known/jwks.json" })).body
        assert.same(cjson.decode(j1), cjson.decode(j2))
    end)

    it("revoking an application on one instance closes its sockets on both with 1008", function()
        local k = setup_app("DoomedApp")
        local tok = settled(function() return token_req(gw[1], k) end).json.access_token
        local s1, s2 = open_ws(gw[1], tok), open_ws(gw[2], tok)
        local r = admin(gw[2], "POST", "/applications/DoomedApp/revoke")
        assert.equal(200, r.status, r.body)
        helpers.expect_error_close(s1, "/problems/token-revoked", 1008)
        helpers.expect_error_close(s2, "/problems/token-revoked", 1008)
        local ws, res = connect(gw[1], tok)
        assert.is_nil(ws)
        assert.equal(401, res.status)
    end)

    it("revoking on one instance closes the sockets of an instance it does not know as a peer", function()
        local k = setup_app("StrangerApp")
        local tok = settled(function() return token_req(gw[1], k) end).json.access_token
        local s1 = open_ws(gw[1], tok)
        -- east's heartbeat made stale: west does not ask it to recheck (it
        -- writes a new one within a second; the revocation follows at once)
        rd:command("HSET", "weir:hosts", "east", "0")
        local r = admin(gw[2], "POST", "/applications/StrangerApp/revoke")
        assert.equal(200, r.status, r.body)
        helpers.expect_error_close(s1, "/problems/token-revoked", 1008)
    end)

    -- a worker learns of another host's changes by a poll (250 ms): a token
    -- whose kid it does not know yet makes it read the key ring again at once
    it("takes at once a token signed with a key the other instance has just rotated in", function()
        local k = setup_app("RotatedApp")
        for _ = 1, 5 do
            local r = settled(function() return admin(gw[2], "POST", "/signing-keys/rotate") end)
            assert.equal(200, r.status, r.body)
            local tok = settled(function() return token_req(gw[2], k) end).json.access_token
            local ws, res = connect(gw[1], tok)
            assert(ws, "refused: " .. tostring(res and res.body or res))
            ws:close()
        end
    end)

    it("answers a kid it does not know 401 when the store says so, and 503 while Redis is stopped", function()
        local b64u = require("weir.jose").b64url_encode
        -- the kid is looked up before the signature is checked: any 64 bytes do
        local forged = b64u('{"alg":"ES256","typ":"JWT","kid":"no-such-kid"}') .. "."
                       .. b64u('{"sub":"nobody"}') .. "." .. b64u(string.rep("s", 64))
        local ws, res = connect(gw[1], forged)
        assert.is_nil(ws)
        helpers.check_error(res.body, "/problems/unauthorized", 401)
        assert.equal("Token signing key is unknown", cjson.decode(res.body).error.message)
        helpers.kill(rd.pid, "STOP")
        ws, res = connect(gw[1], forged)        -- the store cannot say the key does not exist
        helpers.kill(rd.pid, "CONT")
        assert.is_nil(ws)
        helpers.check_error(res.body, "/problems/unavailable", 503)
    end)

    it("with Redis stopped: open sockets live on, tokens cannot be issued (503), and all is well once it is back", function()
        local k = setup_app("OutageApp")
        local tok = settled(function() return token_req(gw[1], k) end).json.access_token
        local ws = open_ws(gw[1], tok)
        helpers.kill(rd.pid, "STOP")
        local t = token_req(gw[1], k)
        assert.equal(503, t.status, t.body)
        assert.equal("temporarily_unavailable", t.json.error)
        assert(ws:send_text("during"))
        assert.equal("during", helpers.recv_payload(ws))
        assert.truthy(helpers.alive(gw[1].pid) and helpers.alive(gw[2].pid))
        helpers.kill(rd.pid, "CONT")
        helpers.wait_until(function() return token_req(gw[2], k).status == 200 end, 20, "tokens again")
        local ws2 = open_ws(gw[2], settled(function() return token_req(gw[2], k) end).json.access_token)
        ws2:close()
        ws:close()
    end)

    it("refuses with 503 a token it could not check while Redis was stopped, and takes it once Redis is back", function()
        local k = setup_app("LateApp")
        local tok = settled(function() return token_req(gw[1], k) end).json.access_token
        helpers.kill(rd.pid, "STOP")
        local ws, res = connect(gw[1], tok)          -- never seen by this host: the store must answer
        if ws then ws:close() else
            assert.equal(503, res.status, res.body)
            helpers.check_error(res.body, "/problems/unavailable", 503)
        end
        helpers.kill(rd.pid, "CONT")
        -- what could not be told is asked again, not remembered
        helpers.wait_until(function()
            local w2 = connect(gw[1], tok)
            if w2 then w2:close(); return true end
        end, 20, "the token accepted again")
    end)

    it("stops cleanly while Redis is stalled, with the key manager's commands out", function()
        local g = helpers.start_weir_admin({
            workers = 1,
            state = { redis = rd.url, host = "stopping", timeout = "5s" },
            key_manager = {},
            apis = { { name = "Shop", context = "/shop", versions = {
                { version = "1.0", default = true, endpoints = { production = be.url },
                  policies = { { "jwt", { key_manager = true } } } } } } },
        }, helpers.tmpdir(), TOKEN)
        helpers.wait_until(function()
            return helpers.read_file(g.log_path):find('"msg":"redis connected"', 1, true)
        end, 10, "the worker's Redis connection")
        helpers.kill(rd.pid, "STOP")
        helpers.sleep(0.5)                            -- the generation poll's GET is out now
        helpers.kill(g.pid, "TERM")
        local ok = helpers.wait(g.pid, 20)
        helpers.kill(rd.pid, "CONT")
        assert.truthy(ok, "weir did not stop")
        local err = helpers.read_file(g.stderr_path) or ""
        assert.falsy(err:find("Assertion", 1, true), err)
        local log = helpers.read_file(g.log_path)
        assert.falsy(log:find('"msg":"worker died"', 1, true), log)
        assert.truthy(log:find('"msg":"worker stopped"', 1, true))
    end)
end)
