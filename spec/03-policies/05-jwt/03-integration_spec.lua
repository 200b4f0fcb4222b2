-- jwt through a real gateway (docs/policies/jwt.md): keys and tokens are
-- made at run time by spec/support/mint_jwt.py (PyJWT and python3-cryptography,
-- independent of weir's own code); every algorithm, the attack matrix, where
-- the token may be and that it never reaches the backend, tickets, expiry,
-- in-band refresh and revocation on open sockets.
local helpers = require "helpers"
local cjson = require "cjson"

local MINT = "spec/support/mint_jwt.py"
local ISS, AUD = "https://idp.spec.test/realms/weir", "weir-api"

describe("jwt through weir", function()
    local be, gw, dir, keys, revfile, conf_tbl

    local function mint(desc)
        local code, out, err = helpers.run({ "/usr/bin/python3", MINT, "mint", dir, cjson.encode(desc) })
        assert(code == 0, "mint_jwt.py: " .. err)
        local s = out:gsub("%s+$", "")
        if s:sub(1, 1) == "[" then return cjson.decode(s) end
        return s
    end

    -- a valid token's description, with overrides
    local function good(over)
        local d = { key = "rsa", alg = "RS256", exp_in = 300,
                    claims = { iss = ISS, aud = AUD, sub = "alice", azp = "ShopApp", scope = "read write",
                               tier = "Gold", jti = "jti-" .. tostring(math.random(1e9)) } }
        for k, v in pairs(over or {}) do
            if k == "claims" then for ck, cv in pairs(v) do d.claims[ck] = cv end else d[k] = v end
        end
        return d
    end

    local seq = 0
    local function tag()
        seq = seq + 1
        return "j" .. seq
    end

    local function record(id)
        return be:wait_conns(function(conns)
            for _, c in ipairs(conns) do
                if c.url:match("^/[^?]*") == "/" .. id then return c end
            end
        end, 10, "the backend record of " .. id)
    end

    local function seen(id)
        for _, c in ipairs(be:connections()) do
            if c.url:match("^/[^?]*") == "/" .. id then return true end
        end
        return false
    end

    local function header(rec, name)
        for _, kv in ipairs(rec.headers) do
            if kv[1]:lower() == name:lower() then return kv[2] end
        end
    end

    local function open(path, opts)
        opts = opts or {}
        local ws, res = helpers.ws_connect(gw.port, { path = path, headers = opts.headers, protocols = opts.protocols })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        return ws
    end

    local function refused(path, opts)
        opts = opts or {}
        local ws, res = helpers.ws_connect(gw.port, { path = path, headers = opts.headers, protocols = opts.protocols })
        if ws then ws:close() end
        assert.is_nil(ws, "the upgrade was accepted")
        assert.is_table(res, "no HTTP answer: " .. tostring(res))
        return res
    end

    local function bearer(tok) return { Authorization = "Bearer " .. tok } end

    setup(function()
        be = helpers.start_backend("echo", { protocol = "first" })
        dir = helpers.tmpdir() .. "/keys"
        local code, out, err = helpers.run({ "/usr/bin/python3", MINT, "keys", dir })
        assert(code == 0, "mint_jwt.py keys: " .. err)
        keys = cjson.decode(out)
        revfile = helpers.write_file(helpers.tmpdir() .. "/revoked.txt", "# nothing yet\n")
        local base = { jwks_file = keys.jwks, secret_file = keys.keys.hmac.secret_file,
                       issuer = ISS, audience = AUD, headers = { ["X-User"] = "sub", ["X-App"] = "azp" },
                       revocation_file = revfile }
        local short = {}
        for k, v in pairs(base) do short[k] = v end
        short.leeway, short.expiry_warning = 0, 1
        local scoped = {}
        for k, v in pairs(base) do scoped[k] = v end
        scoped.required_scopes = { "admin" }
        local hdronly = {}
        for k, v in pairs(base) do hdronly[k] = v end
        hdronly.token_in = { "header" }
        conf_tbl = {
            workers = 2,
            limits = { max_header_size = "128k" },   -- so that a 64 KiB token reaches the policy
            apis = {
                helpers.policy_api("Jwt", "/jwt", be, { { "jwt", base } }),
                helpers.policy_api("Short", "/short", be, { { "jwt", short } }),
                helpers.policy_api("Scoped", "/scoped", be, { { "jwt", scoped } }),
                helpers.policy_api("HeaderOnly", "/hdr", be, { { "jwt", hdronly } }),
                helpers.policy_api("WithFrameHook", "/framed", be,
                                   { { "jwt", base }, { "message-schema", { types = { "chat" } } } }),
            },
        }
        gw = helpers.start_weir(conf_tbl)
    end)
    teardown(helpers.cleanup)

    describe("accepts every algorithm", function()
        local cases = {
            { "rsa", "RS256" }, { "rsa", "RS384" }, { "rsa", "RS512" },
            { "rsa", "PS256" }, { "rsa", "PS384" }, { "rsa", "PS512" },
            { "ec256", "ES256" }, { "ec384", "ES384" }, { "ed25519", "EdDSA" },
            { "hmac", "HS256" }, { "hmac", "HS384" }, { "hmac", "HS512" },
        }
        for _, c in ipairs(cases) do
            it(c[2], function()
                local id = tag()
                local ws = open("/jwt/" .. id, { headers = bearer(mint(good({ key = c[1], alg = c[2] }))) })
                assert.equal("hi", helpers.ask(ws, "hi"))
                local rec = record(id)
                assert.equal("alice", header(rec, "X-User"))
                assert.equal("ShopApp", header(rec, "X-App"))
                assert.is_nil(header(rec, "Authorization"), "the token reached the backend")
                ws:close()
            end)
        end
    end)

    describe("refuses with 401 and the error JSON, before any byte reaches the backend,", function()
        local function attack(name, token_fn, problem)
            it(name, function()
                local id = tag()
                local tok = token_fn()
                local res = refused("/jwt/" .. id, { headers = bearer(tok) })
                assert.equal(401, res.status)
                assert.equal("application/json", res.headers["content-type"])
                helpers.check_error(res.body, problem or "/problems/unauthorized", 401)
                if tok ~= "" then assert.is_nil(res.body:find(tok, 1, true), "the token is in the error body") end
                helpers.sleep(0.05)
                assert.is_false(seen(id), "the backend saw the connection")
            end)
        end
        attack("alg none", function() return mint(good({ key = "none", alg = "none" })) end)
        attack("alg None", function() return mint(good({ key = "none", alg = "None" })) end)
        attack("alg NONE", function() return mint(good({ key = "none", alg = "NONE" })) end)
        attack("HS256 signed with the RSA public key as secret", function()
            return mint(good({ alg = "HS256", kid = "rsa", secret_file = "rsa.pub.pem" }))
        end)
        attack("an unknown kid", function() return mint(good({ kid = "no-such-kid" })) end)
        attack("an empty kid", function() return mint(good({ kid = "" })) end)
        attack("a path-like kid", function() return mint(good({ kid = "../../etc/passwd" })) end)
        attack("expired", function() return mint(good({ exp_in = -600 })) end, "/problems/token-expired")
        attack("nbf in the future", function() return mint(good({ nbf_in = 600 })) end)
        attack("wrong iss", function() return mint(good({ claims = { iss = "https://evil.test" } })) end)
        attack("wrong aud", function() return mint(good({ claims = { aud = "other" } })) end)
        attack("tampered payload", function() return mint(good({ tamper = "payload" })) end)
        attack("tampered signature", function() return mint(good({ tamper = "signature" })) end)
        attack("invalid base64url", function() return mint(good({ encoding = "std" })) .. "+/=" end)
        attack("a 64 KiB token", function() return string.rep("a", 65536) end)
        attack("a header that is not an object", function()
            return mint(good({ raw_header = "[1,2]" }))
        end)
        attack("a payload that is not an object", function()
            return mint(good({ raw_payload = '"str"' }))
        end)
        attack("an ES256 signature in DER", function()
            return mint(good({ key = "ec256", alg = "ES256", signature = "der" }))
        end)
        attack("no token at all", function() return "" end)
    end)

    it("refuses a token without a required scope with 403 /problems/forbidden", function()
        local res = refused("/scoped/" .. tag(), { headers = bearer(mint(good())) })
        assert.equal(403, res.status)
        helpers.check_error(res.body, "/problems/forbidden", 403)
        local ws = open("/scoped/" .. tag(), { headers = bearer(mint(good({ claims = { scope = "read admin" } }))) })
        ws:close()
    end)

    describe("takes the token from", function()
        it("the access_token query parameter, and the backend's URL loses it", function()
            local id = tag()
            local tok = mint(good())
            local ws = open("/jwt/" .. id .. "?a=1&access_token=" .. tok .. "&b=2")
            assert.equal("x", helpers.ask(ws, "x"))
            local rec = record(id)
            assert.equal("/" .. id .. "?a=1&b=2", rec.url)
            ws:close()
        end)

        it("the query, and the access record names the token's consumer but not the token", function()
            local tok = mint(good())
            local ws = open("/jwt/" .. tag() .. "?access_token=" .. tok)
            local _, port = ws.sock:getsockname()
            assert.equal("x", helpers.ask(ws, "x"))
            ws:close()
            local r = gw:wait_log(function(x) return x.msg == "access" and x.client == "127.0.0.1:" .. port end)
            assert.equal("ShopApp", r.application)
            assert.equal("alice", r.subscriber)
            assert.equal("PRODUCTION", r.key_type)
            assert.equal("Gold", r.tier)
            assert.matches("^w[01]%-%d+$", r.conn)
            assert.is_nil(helpers.read_file(gw.log_path):find(tok, 1, true))
        end)

        it("a subprotocol entry, which the backend never sees and weir never answers back", function()
            local id = tag()
            local tok = mint(good())
            local ws = open("/jwt/" .. id, { protocols = { "bearer." .. tok, "chat" } })
            assert.equal("chat", ws.response.headers["sec-websocket-protocol"])
            local rec = record(id)
            assert.equal("chat", header(rec, "Sec-WebSocket-Protocol"))
            ws:close()
        end)

        it("not from the query when token_in says header only", function()
            local res = refused("/hdr/" .. tag() .. "?access_token=" .. mint(good()))
            assert.equal(401, res.status)
        end)
    end)

    describe("tickets", function()
        local function ticket(path, tok, origin)
            local headers = { Authorization = tok and ("Bearer " .. tok) or nil, Origin = origin }
            return helpers.http_request(gw.port, { method = "POST", path = path, headers = headers, body = "" })
        end

        it("are issued for a valid token and work once, on any worker", function()
            local res = assert(ticket("/jwt/ticket", mint(good()), "http://app.test"))
            assert.equal(200, res.status)
            assert.equal("http://app.test", res.headers["access-control-allow-origin"])
            local j = cjson.decode(res.body)
            assert.is_string(j.ticket)
            assert.equal(30, j.expires_in)
            local id = tag()
            local ws = open("/jwt/" .. id .. "?ticket=" .. j.ticket)
            assert.equal("t", helpers.ask(ws, "t"))
            local rec = record(id)
            assert.equal("/" .. id, rec.url)                    -- the ticket is hidden
            assert.equal("alice", header(rec, "X-User"))
            ws:close()
            local again = refused("/jwt/" .. tag() .. "?ticket=" .. j.ticket)
            assert.equal(401, again.status)
        end)

        it("are bound to their API version", function()
            local j = cjson.decode(assert(ticket("/jwt/ticket", mint(good()))).body)
            local res = refused("/short/" .. tag() .. "?ticket=" .. j.ticket)
            assert.equal(401, res.status)
        end)

        it("are refused without a valid token (401 JSON, CORS headers)", function()
            local res = assert(ticket("/jwt/ticket", nil, "http://app.test"))
            assert.equal(401, res.status)
            assert.equal("http://app.test", res.headers["access-control-allow-origin"])
            helpers.check_error(res.body, "/problems/unauthorized", 401)
        end)

        it("answer the CORS preflight", function()
            local res = assert(helpers.http_request(gw.port, { method = "OPTIONS", path = "/jwt/ticket",
                headers = { Origin = "http://app.test", ["Access-Control-Request-Method"] = "POST",
                            ["Access-Control-Request-Headers"] = "authorization" } }))
            assert.equal(204, res.status)
            assert.equal("http://app.test", res.headers["access-control-allow-origin"])
            assert.truthy(res.headers["access-control-allow-headers"]:lower():find("authorization"))
        end)
    end)

    describe("on a live socket", function()
        it("warns before exp, then sends /problems/token-expired and closes 1008", function()
            local ws = open("/short/" .. tag(), { headers = bearer(mint(good({ exp_in = 3 }))) })
            local warn = cjson.decode((helpers.recv_payload(ws)))
            assert.equal("auth-expiring", warn.type)
            assert.is_number(warn.expires_in)
            local msg = helpers.recv_payload(ws)
            helpers.check_error(msg, "/problems/token-expired", 1008)
            assert.equal(1008, assert(ws:recv_close(10)).code)
        end)

        it("accepts a new token in band, which the backend never sees, and stays open past the first exp", function()
            local id = tag()
            local ws = open("/short/" .. id, { headers = bearer(mint(good({ exp_in = 3 }))) })
            local fresh = mint(good({ exp_in = 300 }))
            local ans = cjson.decode((helpers.ask(ws, cjson.encode({ type = "auth", token = fresh }))))
            assert.equal("auth", ans.type)
            assert.equal("ok", ans.status)
            assert.matches("^%d%d%d%d%-%d%d%-%d%dT", ans.expires_at)
            helpers.sleep(4)
            assert.equal("still", helpers.ask(ws, "still"))
            local rec = record(id)
            assert.is_nil(cjson.encode(rec.events):find(fresh, 1, true), "the backend saw the new token")
            ws:close()
        end)

        it("takes in-band refreshes before a chain's frame hooks see them", function()
            local id = tag()
            local ws = open("/framed/" .. id, { headers = bearer(mint(good())) })
            local fresh = mint(good({ exp_in = 600 }))
            local ans = cjson.decode((helpers.ask(ws, cjson.encode({ type = "auth", token = fresh }))))
            assert.equal("ok", ans.status)
            local chat = '{"type":"chat","text":"auth"}'     -- holds "auth": looked at, then passed on
            assert.equal(chat, helpers.ask(ws, chat))
            assert.is_nil(cjson.encode(record(id).events):find(fresh, 1, true), "the backend saw the new token")
            ws:close()
        end)

        it("refuses an in-band token of another subscriber (the socket stays open)", function()
            local ws = open("/short/" .. tag(), { headers = bearer(mint(good({ exp_in = 60 }))) })
            local other = mint(good({ claims = { sub = "mallory" } }))
            local ans = helpers.ask(ws, cjson.encode({ type = "auth", token = other }))
            helpers.check_error(ans, "/problems/forbidden", 403)
            assert.equal("ok", helpers.ask(ws, "ok"))
            ws:close()
        end)

        it("closes a socket whose token is revoked, at the next reload, with /problems/token-revoked", function()
            local d = good()
            local jti = d.claims.jti
            local ws = open("/jwt/" .. tag(), { headers = bearer(mint(d)) })
            helpers.write_file(revfile, "jti:" .. jti .. "\n")
            gw:reload()
            local msg = helpers.recv_payload(ws)
            helpers.check_error(msg, "/problems/token-revoked", 1008)
            assert.equal(1008, assert(ws:recv_close(5)).code)
            local res = refused("/jwt/" .. tag(), { headers = bearer(mint(d)) })
            helpers.check_error(res.body, "/problems/token-revoked", 401)
            helpers.write_file(revfile, "# none\n")
            gw:reload()
        end)
    end)

    it("never writes a token, in any of the four places, to its logs, the backend or an error body", function()
        local canary = good({ claims = { sub = "canary" } })
        local tok = mint(canary)
        local ids = { tag(), tag(), tag(), tag() }
        local w1 = open("/jwt/" .. ids[1], { headers = bearer(tok) })
        local w2 = open("/jwt/" .. ids[2] .. "?access_token=" .. tok)
        local w3 = open("/jwt/" .. ids[3], { protocols = { "bearer." .. tok, "chat" } })
        local j = cjson.decode(helpers.http_request(gw.port, { method = "POST", path = "/jwt/ticket",
                                                               headers = bearer(tok), body = "" }).body)
        local w4 = open("/jwt/" .. ids[4] .. "?ticket=" .. j.ticket)
        for _, w in ipairs({ w1, w2, w3, w4 }) do w:close() end
        local bad = refused("/jwt/" .. tag(), { headers = bearer(tok .. "x") })
        assert.is_nil(bad.body:find(tok, 1, true))
        local recs = {}
        for _, id in ipairs(ids) do recs[#recs + 1] = cjson.encode(record(id)) end
        local all = table.concat(recs, "\n")
        assert.is_nil(all:find(tok, 1, true), "the backend saw the token")
        assert.is_nil(all:find(j.ticket, 1, true), "the backend saw the ticket")
        local logs = helpers.read_file(gw.log_path) .. gw:stderr()
        assert.is_nil(logs:find(tok, 1, true), "the token is in weir's log")
        assert.is_nil(logs:find(j.ticket, 1, true), "the ticket is in weir's log")
    end)
end)
