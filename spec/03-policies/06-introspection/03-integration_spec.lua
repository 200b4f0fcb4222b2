-- introspection through a real gateway (docs/policies/introspection.md),
-- against a real identity provider over HTTPS (spec/support/idp_server.py):
-- active, inactive and expired tokens, the endpoint down, slow, broken or
-- refusing weir's credentials (fail closed, 503), fail_open, the caches
-- (a second connection with the same token does not reach the IdP), the
-- token never reaching the backend or the logs, and connection reuse
-- towards the IdP.
local helpers = require "helpers"
local idp = require "support.idp"
local cjson = require "cjson"

local ISS, AUD = "https://idp.spec.test/realms/weir", "weir-api"
local CLIENT_ID, CLIENT_SECRET = "weir-gw", "s3cr:t&x=1"

describe("introspection through weir", function()
    local be, gw, srv, bsrv, cert, tokens_file, tokens, down_port

    -- Register TOKEN's introspection response (written to the IdP's file,
    -- which it reads for every request) and return TOKEN.
    local function issue(token, resp)
        tokens[token] = resp
        helpers.write_file(tokens_file, cjson.encode(tokens))
        return token
    end

    local seq = 0
    local function tag()
        seq = seq + 1
        return "i" .. seq
    end

    -- A fresh opaque token, with characters a form body must encode.
    local function opaque()
        return "op." .. helpers.random_bytes(12):gsub(".", function(c) return string.format("%02x", c:byte()) end)
               .. "+/=&%"
    end

    -- An active token's introspection response, with overrides.
    local function active(over)
        local r = { active = true, iss = ISS, aud = AUD, sub = "alice", client_id = "ShopApp",
                    scope = "read write", token_type = "Bearer", exp_in = 300,
                    jti = "jti-" .. tostring(math.random(1e9)) }
        for k, v in pairs(over or {}) do
            if v == false then r[k] = nil else r[k] = v end
        end
        return r
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
        assert.equal("application/json", res.headers["content-type"])
        return res
    end

    local function bearer(tok) return { Authorization = "Bearer " .. tok } end

    -- Refused with STATUS and PROBLEM, and nothing reached the backend.
    local function refused_as(api, tok, status, problem)
        local id = tag()
        local res = refused("/" .. api .. "/" .. id, { headers = bearer(tok) })
        assert.equal(status, res.status)
        local j = helpers.check_error(res.body, problem, status)
        assert.is_nil(res.body:find(tok, 1, true), "the token is in the error body")
        helpers.sleep(0.05)
        assert.is_false(seen(id), "the backend saw the connection")
        return j
    end

    local function logs()
        return (helpers.read_file(gw.log_path) or "") .. gw:stderr()
    end

    setup(function()
        be = helpers.start_backend("echo", { protocol = "first" })
        cert = helpers.make_cert("idp")
        tokens, tokens_file = {}, helpers.tmpdir() .. "/tokens.json"
        issue("placeholder", { active = false })
        srv = idp.start({ cert = cert, tokens = tokens_file, client_id = CLIENT_ID, client_secret = CLIENT_SECRET })
        -- a second IdP in plain HTTP that wants a bearer token
        bsrv = idp.start({ plain = true, tokens = tokens_file, bearer = "idp-access.token" })
        down_port = helpers.free_port()          -- nothing listens there
        local url = srv:url("/introspect")
        local base = { introspection_url = url, ca = cert.cert, client_id = CLIENT_ID,
                       client_secret = CLIENT_SECRET, issuer = ISS, audience = AUD,
                       headers = { ["X-User"] = "sub", ["X-App"] = "client_id" },
                       cache_ttl = 600, negative_ttl = 600 }
        local function with(over)
            local c = {}
            for k, v in pairs(base) do c[k] = v end
            for k, v in pairs(over) do
                if v == false then c[k] = nil else c[k] = v end
            end
            return c
        end
        local secret_file = helpers.write_file(helpers.tmpdir() .. "/client-secret", CLIENT_SECRET .. "\n")
        local down = "https://127.0.0.1:" .. down_port .. "/introspect"
        gw = helpers.start_weir({
            workers = 1,     -- one worker: one cache, so cache hits are deterministic
            limits = { max_header_size = "32k" },   -- so that a 9000-byte token reaches the policy
            apis = {
                helpers.policy_api("Intro", "/intro", be, { { "introspection", base } }),
                helpers.policy_api("Post", "/post", be, { { "introspection", with({
                    client_auth = "post", client_secret = false, client_secret_file = secret_file }) } }),
                helpers.policy_api("Bearer", "/bearer", be, { { "introspection", with({
                    introspection_url = bsrv:url("/introspect"), client_id = false, client_secret = false,
                    bearer_token = "idp-access.token" }) } }),
                helpers.policy_api("Scoped", "/scoped", be, { { "introspection", with({
                    required_scopes = { "admin" } }) } }),
                helpers.policy_api("WrongSecret", "/wrong", be, { { "introspection", with({
                    client_secret = "not-the-secret" }) } }),
                helpers.policy_api("Down", "/down", be, { { "introspection", with({ introspection_url = down }) } }),
                helpers.policy_api("FailOpen", "/failopen", be,
                    { { "introspection", with({ introspection_url = down }), fail_open = true } }),
                helpers.policy_api("Slow", "/slow", be, { { "introspection", with({
                    introspection_url = url .. "?delay=3000", timeout = "300ms" }) } }),
                helpers.policy_api("Err5xx", "/err5xx", be, { { "introspection", with({
                    introspection_url = url .. "?status=502" }) } }),
                helpers.policy_api("Garbage", "/garbage", be, { { "introspection", with({
                    introspection_url = url .. "?garbage=1" }) } }),
                helpers.policy_api("ShortCache", "/shortcache", be, { { "introspection", with({
                    cache_ttl = "1s" }) } }),
                helpers.policy_api("NoCache", "/nocache", be, { { "introspection", with({
                    cache_size = 0 }) } }),
                helpers.policy_api("Short", "/short", be, { { "introspection", with({
                    leeway = 0, expiry_warning = 1 }) } }),
            },
        })
    end)
    teardown(helpers.cleanup)

    describe("accepts an active token", function()
        it("and maps its claims to identity headers; the backend never sees the token", function()
            local tok = issue(opaque(), active())
            local id = tag()
            local ws = open("/intro/" .. id, { headers = bearer(tok) })
            assert.equal("hi", helpers.ask(ws, "hi"))
            local rec = record(id)
            assert.equal("alice", helpers.header(rec, "X-User"))
            assert.equal("ShopApp", helpers.header(rec, "X-App"))
            assert.is_nil(helpers.header(rec, "Authorization"), "the token reached the backend")
            assert.is_nil(cjson.encode(rec):find(tok, 1, true), "the token reached the backend")
            ws:close()
        end)

        it("asking with a form-encoded POST, HTTP Basic client authentication and the hint", function()
            local tok = issue(opaque(), active())
            open("/intro/" .. tag(), { headers = bearer(tok) }):close()
            local last = srv:stats().last
            assert.equal("/introspect", last.path)
            assert.equal("basic", last.auth)
            assert.equal("application/x-www-form-urlencoded", last.content_type)
            assert.equal("application/json", last.accept)
            assert.equal("access_token", last.token_type_hint)
            assert.same({ "token", "token_type_hint" }, last.form_keys)
            assert.equal(1, srv:count(tok), "the IdP did not get the token as it was sent")
        end)

        it("with the client credentials as form fields (client_auth = post, secret from a file)", function()
            local tok = issue(opaque(), active())
            open("/post/" .. tag(), { headers = bearer(tok) }):close()
            local last = srv:stats().last
            assert.equal("post", last.auth)
            assert.same({ "client_id", "client_secret", "token", "token_type_hint" }, last.form_keys)
        end)

        it("from a plain-HTTP endpoint that wants a bearer token", function()
            local tok = issue(opaque(), active())
            local id = tag()
            open("/bearer/" .. id, { headers = bearer(tok) }):close()
            assert.equal("alice", helpers.header(record(id), "X-User"))
            assert.equal("bearer", bsrv:stats().last.auth)
        end)

        it("given in the query or a subprotocol, hidden from the backend", function()
            local tok = issue(opaque(), active())
            local id1, id2 = tag(), tag()
            open("/intro/" .. id1 .. "?a=1&access_token=" .. tok:gsub("[^%w%.%-_]", function(c)
                return string.format("%%%02X", c:byte()) end) .. "&b=2"):close()
            assert.equal("/" .. id1 .. "?a=1&b=2", record(id1).url)
            local ws = open("/intro/" .. id2, { protocols = { "bearer." .. issue("sp." .. opaque():gsub("[^%w%.]", ""),
                                                                               active()), "chat" } })
            assert.equal("chat", ws.response.headers["sec-websocket-protocol"])
            assert.equal("chat", helpers.header(record(id2), "Sec-WebSocket-Protocol"))
            ws:close()
        end)
    end)

    describe("refuses with the error JSON, before any byte reaches the backend,", function()
        it("an inactive token (401)", function()
            local j = refused_as("intro", issue(opaque(), { active = false }), 401, "/problems/unauthorized")
            assert.equal("Token is not active", j.error.message)
        end)

        it("a token the IdP does not know (401)", function()
            refused_as("intro", opaque(), 401, "/problems/unauthorized")
        end)

        it("an active answer whose exp is in the past (401 /problems/token-expired)", function()
            refused_as("intro", issue(opaque(), active({ exp_in = -600 })), 401, "/problems/token-expired")
        end)

        it("an active answer with active as a string, not true (401)", function()
            refused_as("intro", issue(opaque(), active({ active = "true" })), 401, "/problems/unauthorized")
        end)

        it("a wrong issuer or audience (401)", function()
            refused_as("intro", issue(opaque(), active({ iss = "https://evil.test" })), 401, "/problems/unauthorized")
            refused_as("intro", issue(opaque(), active({ aud = "other" })), 401, "/problems/unauthorized")
        end)

        it("a token without a required scope (403 /problems/forbidden)", function()
            refused_as("scoped", issue(opaque(), active()), 403, "/problems/forbidden")
            open("/scoped/" .. tag(), { headers = bearer(issue(opaque(), active({ scope = "read admin" }))) }):close()
        end)

        it("a token over max_token_size, without asking the IdP (401)", function()
            local before = srv:stats().requests
            refused_as("intro", string.rep("a", 9000), 401, "/problems/unauthorized")
            assert.equal(before, srv:stats().requests)
        end)

        it("no token at all (401)", function()
            local res = refused("/intro/" .. tag())
            assert.equal(401, res.status)
            helpers.check_error(res.body, "/problems/unauthorized", 401)
        end)
    end)

    describe("fails closed with 503 /problems/unavailable when the endpoint", function()
        local function unavailable(api)
            local tok = issue(opaque(), active())
            local j = refused_as(api, tok, 503, "/problems/unavailable")
            assert.equal("Token introspection unavailable", j.error.message)
            return tok
        end

        it("is down, and logs why with the URL (never the token)", function()
            local tok = unavailable("down")
            local rec = gw:wait_log(function(r)
                return r.msg == "token introspection failed" and type(r.url) == "string"
                       and r.url:find(":" .. down_port .. "/", 1, true)
            end)
            assert.equal("https://127.0.0.1:" .. down_port .. "/introspect", rec.url)
            assert.equal("introspection", rec.policy)
            assert.matches("refused", rec.error)
            assert.is_nil(logs():find(tok, 1, true), "the token is in weir's log")
        end)

        it("answers after the timeout", function()
            unavailable("slow")
            gw:wait_log(function(r)
                return r.msg == "token introspection failed" and r.error == "timeout"
            end)
        end)

        it("answers 5xx", function()
            unavailable("err5xx")
            gw:wait_log(function(r) return r.msg == "token introspection failed" and r.status == 502 end)
        end)

        it("answers something that is not JSON", function()
            unavailable("garbage")
        end)

        it("refuses weir's client credentials (and the secret is never logged)", function()
            local before = srv:stats().introspect.auth_failed
            unavailable("wrong")
            assert.equal(before + 1, srv:stats().introspect.auth_failed)
            gw:wait_log(function(r) return r.msg == "token introspection failed" and r.status == 401 end)
            local l = logs()
            assert.is_nil(l:find("not-the-secret", 1, true), "the client secret is in weir's log")
            assert.is_nil(l:find(CLIENT_SECRET, 1, true), "the client secret is in weir's log")
        end)
    end)

    it("lets the connection through without a consumer when its entry is fail_open", function()
        local tok = issue(opaque(), active())
        local id = tag()
        local ws = open("/failopen/" .. id, { headers = bearer(tok) })
        assert.equal("open", helpers.ask(ws, "open"))
        ws:close()
        local rec = record(id)
        assert.is_nil(helpers.header(rec, "X-User"), "a consumer was set without introspection")
        assert.is_nil(helpers.header(rec, "Authorization"), "the token reached the backend")
        gw:wait_log(function(r) return r.msg == "policy failed (fail_open: passing)" and r.policy == "introspection" end)
        assert.is_nil(logs():find(tok, 1, true), "the token is in weir's log")
    end)

    describe("caches", function()
        it("an active answer: a second connection with the token does not reach the IdP", function()
            local tok = issue(opaque(), active())
            open("/intro/" .. tag(), { headers = bearer(tok) }):close()
            assert.equal(1, srv:count(tok))
            local id = tag()
            open("/intro/" .. id, { headers = bearer(tok) }):close()
            assert.equal("alice", helpers.header(record(id), "X-User"))
            assert.equal(1, srv:count(tok), "the second connection asked the IdP again")
        end)

        it("a refusal (negative cache): a flood of one bad token asks the IdP once", function()
            local tok = issue(opaque(), { active = false })
            for _ = 1, 5 do refused_as("intro", tok, 401, "/problems/unauthorized") end
            assert.equal(1, srv:count(tok))
        end)

        it("not with cache_size = 0", function()
            local tok = issue(opaque(), active())
            open("/nocache/" .. tag(), { headers = bearer(tok) }):close()
            open("/nocache/" .. tag(), { headers = bearer(tok) }):close()
            assert.equal(2, srv:count(tok))
        end)

        it("an active answer no longer than cache_ttl", function()
            local tok = issue(opaque(), active())
            open("/shortcache/" .. tag(), { headers = bearer(tok) }):close()
            local t1 = helpers.now()        -- the answer was cached before this
            open("/shortcache/" .. tag(), { headers = bearer(tok) }):close()
            local n = srv:count(tok)
            -- within the second, the cache answered (unless this machine is very slow)
            assert.is_true(n == 1 or helpers.now() - t1 >= 1, "asked twice within cache_ttl")
            helpers.wait_until(function() return helpers.now() - t1 > 1.05 end, 5, "cache_ttl to pass")
            open("/shortcache/" .. tag(), { headers = bearer(tok) }):close()
            assert.equal(n + 1, srv:count(tok), "a cached answer outlived cache_ttl")
        end)

        it("an active answer never past the token's exp", function()
            -- exp is 2 s away; the leeway (30 s) still accepts the token after
            -- it, but the cached answer must not be used then
            local exp = os.time() + 2
            local tok = issue(opaque(), active({ exp_in = false, exp = exp }))
            open("/intro/" .. tag(), { headers = bearer(tok) }):close()
            open("/intro/" .. tag(), { headers = bearer(tok) }):close()
            local n = srv:count(tok)
            -- before exp, the cache answered (unless this machine is very slow)
            assert.is_true(n == 1 or os.time() >= exp, "asked twice before exp")
            helpers.wait_until(function() return os.time() > exp end, 5, "exp to pass")
            open("/intro/" .. tag(), { headers = bearer(tok) }):close()
            assert.equal(n + 1, srv:count(tok), "a cached answer outlived the token's exp")
        end)
    end)

    describe("on a live socket", function()
        it("accepts a new opaque token in band, and refuses an inactive one (the socket stays open)", function()
            local ws = open("/intro/" .. tag(), { headers = bearer(issue(opaque(), active())) })
            local fresh = issue(opaque(), active({ exp_in = 900 }))
            local ans = cjson.decode((helpers.ask(ws, cjson.encode({ type = "auth", token = fresh }))))
            assert.equal("ok", ans.status)
            assert.matches("^%d%d%d%d%-%d%d%-%d%dT", ans.expires_at)
            local bad = helpers.ask(ws, cjson.encode({ type = "auth", token = issue(opaque(), { active = false }) }))
            helpers.check_error(bad, "/problems/unauthorized", 401)
            assert.equal("still", helpers.ask(ws, "still"))
            ws:close()
        end)

        it("closes 1008 with /problems/token-expired at the introspected exp", function()
            local ws = open("/short/" .. tag(), { headers = bearer(issue(opaque(), active({ exp_in = 2 }))) })
            local warn = cjson.decode((helpers.recv_payload(ws)))
            assert.equal("auth-expiring", warn.type)
            helpers.check_error(helpers.recv_payload(ws), "/problems/token-expired", 1008)
            assert.equal(1008, assert(ws:recv_close(10)).code)
        end)
    end)

    it("issues a one-time ticket for an introspected token", function()
        local tok = issue(opaque(), active())
        local res = assert(helpers.http_request(gw.port, { method = "POST", path = "/intro/ticket",
                                                           headers = bearer(tok), body = "" }))
        assert.equal(200, res.status)
        local j = cjson.decode(res.body)
        local id = tag()
        local ws = open("/intro/" .. id .. "?ticket=" .. j.ticket)
        assert.equal("t", helpers.ask(ws, "t"))
        ws:close()
        local rec = record(id)
        assert.equal("/" .. id, rec.url)
        assert.equal("alice", helpers.header(rec, "X-User"))
        assert.equal(1, srv:count(tok), "the ticket's use asked the IdP again")
        assert.equal(401, refused("/intro/" .. tag() .. "?ticket=" .. j.ticket).status)
    end)

    it("never writes a token, in any of the four places, to its logs, the backend or an error body", function()
        local tok = issue("canary" .. opaque():gsub("[^%w%.]", ""), active({ sub = "canary" }))
        local ids = { tag(), tag(), tag(), tag() }
        local w1 = open("/intro/" .. ids[1], { headers = bearer(tok) })
        local w2 = open("/intro/" .. ids[2] .. "?access_token=" .. tok)
        local w3 = open("/intro/" .. ids[3], { protocols = { "bearer." .. tok, "chat" } })
        local j = cjson.decode(helpers.http_request(gw.port, { method = "POST", path = "/intro/ticket",
                                                               headers = bearer(tok), body = "" }).body)
        local w4 = open("/intro/" .. ids[4] .. "?ticket=" .. j.ticket)
        for _, w in ipairs({ w1, w2, w3, w4 }) do w:close() end
        local bad = refused("/down/" .. tag(), { headers = bearer(tok) })
        assert.is_nil(bad.body:find(tok, 1, true))
        local recs = {}
        for _, id in ipairs(ids) do recs[#recs + 1] = cjson.encode(record(id)) end
        local all = table.concat(recs, "\n")
        assert.is_nil(all:find(tok, 1, true), "the backend saw the token")
        assert.is_nil(all:find(j.ticket, 1, true), "the backend saw the ticket")
        local l = logs()
        assert.is_nil(l:find(tok, 1, true), "the token is in weir's log")
        assert.is_nil(l:find(j.ticket, 1, true), "the ticket is in weir's log")
        assert.is_nil(l:find(CLIENT_SECRET, 1, true), "the client secret is in weir's log")
    end)

    it("reuses its TCP connections to the IdP across introspections", function()
        -- the hand-written client (core/http_client.c before libcurl) opens
        -- one connection per request; the libcurl client keeps a pool
        local code, out = helpers.run({ "ldd", helpers.bin })
        if not (code == 0 and out:find("libcurl", 1, true)) then
            pending("needs the libcurl client")
            return
        end
        local s0 = srv:stats()
        local n = 6
        for _ = 1, n do
            open("/intro/" .. tag(), { headers = bearer(issue(opaque(), active())) }):close()
        end
        local s1 = srv:stats()
        local conns, reused = s1.connections - s0.connections, s1.reused - s0.reused
        assert.equal(n, s1.paths["/introspect"] - s0.paths["/introspect"])
        -- at most one new connection (none when a pooled one was still open),
        -- and every other introspection on a connection used before
        assert.is_true(conns <= 1, conns .. " TCP connections for " .. n .. " introspections")
        assert.equal(n - conns, reused)
    end)
end)
