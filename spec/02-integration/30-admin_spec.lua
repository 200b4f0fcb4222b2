-- The admin API (docs/admin-api.md) against a real weir with 2 workers:
-- the token, status, the published APIs, the host's live connections
-- listed, pushed to and closed whichever worker holds them, bulk actions by
-- filter, reload through the API (a broken configuration changes nothing),
-- and bad input answered 4xx with the error JSON.
local helpers = require "helpers"
local cjson = require "cjson.safe"

local TOKEN = "admin-token-" .. string.rep("7", 24)
local KEY_A, KEY_B = "key-of-app-a-0123456789", "key-of-app-b-0123456789"

describe("the admin API", function()
    local be, gw, dir, admin_port, keys_file
    local clients = {}

    local function admin(method, path, opts)
        opts = opts or {}
        local headers = { { "Authorization", opts.token == nil and ("Bearer " .. TOKEN) or opts.token } }
        if opts.token == false then headers = {} end
        if opts.json then headers[#headers + 1] = { "Content-Type", "application/json" } end
        for _, h in ipairs(opts.headers or {}) do headers[#headers + 1] = h end
        local res = assert(helpers.http_request(admin_port, { method = method, path = path, headers = headers,
                                                              body = opts.json or opts.body, timeout = 10 }))
        res.json = cjson.decode(res.body)
        return res
    end

    local function connect(key, path)
        local ws = assert(helpers.ws_connect(gw.port, { path = path or "/echo",
                                                        headers = { ["X-API-Key"] = key } }))
        clients[#clients + 1] = ws
        return ws
    end

    local function list(query)
        local r = admin("GET", "/connections" .. (query or ""))
        assert.equal(200, r.status, r.body)
        return r.json
    end

    setup(function()
        be = helpers.start_backend("echo")
        dir = helpers.tmpdir()
        helpers.write_file(dir .. "/admin.token", TOKEN .. "\n")
        keys_file = helpers.write_file(dir .. "/keys.txt", table.concat({
            "sha256:" .. helpers.sha256(KEY_A) .. "  application=AppA subscriber=alice tier=Gold",
            "sha256:" .. helpers.sha256(KEY_B) .. "  application=AppB subscriber=bob tier=Silver",
        }, "\n") .. "\n")
        admin_port = helpers.free_port()
        local chain = { { "key-auth", { keys_file = keys_file, header = "X-API-Key" } } }
        gw = helpers.start_weir({
            workers = 2,
            admin = { port = admin_port, token_file = dir .. "/admin.token" },
            apis = {
                helpers.policy_api("Echo", "/echo", be, chain),
                helpers.api("Hidden", "/hidden", "ws://127.0.0.1:" .. be.port .. "/in?secret=s3cr3t-query"),
            },
        })
        helpers.wait_port(admin_port)
    end)

    teardown(function()
        for _, ws in ipairs(clients) do pcall(ws.close, ws) end
        helpers.cleanup()
    end)

    describe("the token", function()
        it("is not needed for GET /healthz", function()
            local r = admin("GET", "/healthz", { token = false })
            assert.equal(200, r.status)
            assert.same({ status = "ok" }, r.json)
        end)

        it("is needed everywhere else: none, another one, or another scheme get 401 and the error JSON", function()
            for _, tok in ipairs({ false, "Bearer wrong-token-000000000000", "Basic " .. TOKEN, TOKEN,
                                   "Bearer " .. TOKEN .. "x" }) do
                for _, ep in ipairs({ { "GET", "/status" }, { "GET", "/connections" }, { "POST", "/reload" },
                                      { "DELETE", "/connections?all=true" } }) do
                    local r = admin(ep[1], ep[2], { token = tok })
                    assert.equal(401, r.status, ep[2])
                    helpers.check_error(r.body, "/problems/unauthorized", 401)
                    assert.truthy(r.headers["www-authenticate"])
                end
            end
        end)

        it("is never written to the log, right or wrong", function()
            admin("GET", "/status", { token = "Bearer wrong-but-secret-token-1234" })
            admin("GET", "/status")
            local log = helpers.wait_until(function()
                local text = helpers.read_file(gw.log_path)
                return text:find("admin request refused", 1, true) and text
            end, 10, "the refusal's record")
            assert.falsy(log:find(TOKEN, 1, true))
            assert.falsy(log:find("wrong-but-secret-token-1234", 1, true))
        end)
    end)

    describe("with connections on both workers", function()
        local by_id = {}       -- connection id -> client

        setup(function()
            -- connect until each worker holds some (the kernel spreads accepts)
            helpers.wait_until(function()
                connect(#clients % 2 == 0 and KEY_A or KEY_B)
                local st = admin("GET", "/status").json
                return st.workers[1].connections >= 2 and st.workers[2].connections >= 2
            end, 30, "connections on both workers")
            -- learn which client is which connection: each says who it is
            for i, ws in ipairs(clients) do
                assert(ws:send_text("who-" .. i))
                assert.equal("who-" .. i, helpers.recv_payload(ws))
            end
            helpers.wait_until(function()
                local l = list("?limit=1000")
                if l.total ~= #clients then return false end
                for _, c in ipairs(l.connections) do if c.frames_in < 1 then return false end end
                return true
            end, 10, "counters of every connection")
            local l = list("?limit=1000")
            -- the client port tells the connections apart
            for _, c in ipairs(l.connections) do
                for _, ws in ipairs(clients) do
                    local _, port = ws.sock:getsockname()
                    if tonumber(port) == c.client.port then
                        by_id[c.id] = ws
                    end
                end
            end
        end)

        it("GET /status counts them per worker, with pids and the configuration's generation", function()
            local st = admin("GET", "/status").json
            assert.equal(2, #st.workers)
            assert.same(gw:worker_pids(), { st.workers[1].pid, st.workers[2].pid })
            assert.equal(#clients, st.connections)
            assert.equal(#clients, st.workers[1].connections + st.workers[2].connections)
            assert.equal(1, st.generation)
            assert.truthy(helpers.is_rfc3339(st.started:gsub("%.%d+Z$", "Z")))
        end)

        it("GET /connections lists every one with its consumer, and pages", function()
            local l = list("?limit=1000")
            assert.equal(#clients, l.total)
            local ids = {}
            for _, c in ipairs(l.connections) do
                assert.equal("Echo", c.api)
                assert.truthy(c.consumer.application == "AppA" or c.consumer.application == "AppB")
                assert.equal("127.0.0.1", c.client.ip)
                assert.truthy(by_id[c.id], "a client for " .. c.id)
                ids[#ids + 1] = c.id
            end
            local p1, p2 = list("?limit=2&offset=0"), list("?limit=2&offset=2")
            assert.equal(#clients, p1.total)
            assert.same({ ids[1], ids[2] }, { p1.connections[1].id, p1.connections[2].id })
            assert.same({ ids[3], ids[4] }, { p2.connections[1].id, p2.connections[2].id })
        end)

        it("filters by application, subscriber, tier and client address", function()
            local a = list("?application=AppA&limit=1000")
            local b = list("?subscriber=bob&limit=1000")
            assert.equal(#clients, a.total + b.total)
            for _, c in ipairs(a.connections) do assert.equal("AppA", c.consumer.application) end
            for _, c in ipairs(b.connections) do assert.equal("Silver", c.consumer.tier) end
            assert.equal(a.total, list("?tier=Gold").total)
            assert.equal(0, list("?client=10.0.0.1").total)
            assert.equal(0, list("?api=Hidden").total)
        end)

        it("GET /connections/{id} tells frames and bytes each way", function()
            local id, ws = next(by_id)
            assert(ws:send_text("12345"))
            assert.equal("12345", helpers.recv_payload(ws))
            local c = helpers.wait_until(function()
                local r = admin("GET", "/connections/" .. id)
                return r.json.frames_in >= 2 and r.json
            end, 10, "counters")
            assert.equal(id, c.id)
            assert.equal(c.frames_in, c.frames_out)
            assert.equal(c.bytes_in, c.bytes_out)
            assert.truthy(c.bytes_in >= 5)
        end)

        it("pushes text to a client and binary to a backend, whichever worker holds the connection", function()
            local seen_other = false
            for id, ws in pairs(by_id) do
                local r = admin("POST", "/connections/" .. id .. "/messages", { json = '{"text":"pushed to ' .. id .. '"}' })
                assert.equal(200, r.status, r.body)
                assert.equal(1, r.json.delivered)
                assert.equal("pushed to " .. id, helpers.recv_payload(ws))
                if r.headers["weir-worker"] ~= id:match("^w(%d+)") then seen_other = true end
            end
            -- each admin request goes to the worker the kernel picks for its
            -- connection (a socket per worker): push until one crosses workers
            local cid, cws = next(by_id)
            for i = 1, 40 do
                if seen_other then break end
                local r = admin("POST", "/connections/" .. cid .. "/messages", { json = '{"text":"again ' .. i .. '"}' })
                assert.equal(200, r.status, r.body)
                assert.equal(1, r.json.delivered)
                assert.equal("again " .. i, helpers.recv_payload(cws))
                if r.headers["weir-worker"] ~= cid:match("^w(%d+)") then seen_other = true end
            end
            assert.is_true(seen_other, "no push crossed workers")
            -- to the backend: the echo backend sends it back to the client
            local id, ws = next(by_id)
            local r = admin("POST", "/connections/" .. id .. "/messages",
                            { json = '{"binary":"AAECAw==","to":"backend"}' })
            assert.equal(200, r.status, r.body)
            local f = ws:recv_frame(5)
            assert.equal(2, f.opcode)
            assert.equal("\0\1\2\3", f.payload)
        end)

        it("pushes to every connection of an application", function()
            local r = admin("POST", "/connections/messages?application=AppB", { json = '{"text":"to B"}' })
            assert.equal(200, r.status, r.body)
            local b = list("?application=AppB&limit=1000")
            assert.equal(b.total, r.json.matched)
            assert.equal(b.total, r.json.delivered)
            for _, c in ipairs(b.connections) do assert.equal("to B", helpers.recv_payload(by_id[c.id])) end
        end)

        it("refuses bad input with 4xx and the error JSON, changing nothing", function()
            local before = list("?limit=1000").total
            local id = next(by_id)
            local cases = {
                { "POST", "/connections/" .. id .. "/messages", { json = "{not json" }, 400 },
                { "POST", "/connections/" .. id .. "/messages", { json = '["a"]' }, 400 },
                { "POST", "/connections/" .. id .. "/messages", { json = '{"text":"x","evil":1}' }, 400 },
                { "POST", "/connections/" .. id .. "/messages", { json = '{"text":"x","binary":"AA=="}' }, 400 },
                { "POST", "/connections/" .. id .. "/messages", { json = '{"binary":"not base64!"}' }, 400 },
                { "POST", "/connections/" .. id .. "/messages", { body = '{"text":"x"}' }, 415 },
                { "POST", "/connections/" .. id .. "/messages",
                  { json = '{"text":"' .. string.rep("x", 70000) .. '"}' }, 413 },
                { "POST", "/connections/w9-1/messages", { json = '{"text":"x"}' }, 404 },
                { "GET", "/connections/w0-999999", {}, 404 },
                { "GET", "/connections/../status/x", {}, 404 },
                { "GET", "/connections/%2e%2e/%2e%2e/etc/passwd", {}, 400 },     -- climbs above the root
                { "DELETE", "/connections/" .. id .. "?code=1005", {}, 400 },
                { "DELETE", "/connections/" .. id .. "?code=999", {}, 400 },
                { "DELETE", "/connections", {}, 400 },
                { "PUT", "/status", {}, 405 },
                { "GET", "/nothing-here", {}, 404 },
                { "GET", "/connections?limit=0", {}, 400 },
                { "GET", "/connections?limit=abc", {}, 400 },
                { "GET", "/connections?application=", {}, 400 },
            }
            for _, c in ipairs(cases) do
                local r = admin(c[1], c[2], c[3])
                assert.equal(c[4], r.status, c[1] .. " " .. c[2] .. ": " .. r.body)
                local e = helpers.json(r.body)
                assert.equal("error", e.type)
                assert.equal(c[4], e.error.code)
                assert.truthy(e.error.type:match("^/problems/"))
            end
            -- a body larger than admin.max_body, and a chunked one
            local r = admin("POST", "/connections/messages?all=true",
                            { body = string.rep("x", 1024 * 1024 + 1), headers = { { "Content-Type", "application/json" } } })
            assert.equal(413, r.status)
            r = admin("POST", "/connections/messages?all=true",
                      { headers = { { "Transfer-Encoding", "chunked" } }, body = "" })
            assert.equal(411, r.status)
            assert.equal(before, list("?limit=1000").total)
        end)

        it("POST /reload: a broken configuration is refused with its errors and changes nothing; a good one applies", function()
            local good = helpers.read_file(gw.conf_path)
            helpers.write_file(gw.conf_path, (good:gsub("workers = 2", "workers = 2, limits = { idle_timeout = -5 }", 1)))
            local r = admin("POST", "/reload")
            assert.equal(422, r.status, r.body)
            assert.equal("refused", r.json.result)
            assert.truthy(#r.json.errors >= 1)
            local e = r.json.errors[1]
            assert.equal(gw.conf_path .. ":", e:sub(1, #gw.conf_path + 1))
            assert.truthy(e:find("limits.idle_timeout", 1, true), e)
            assert.equal(1, admin("GET", "/status").json.generation)
            assert.equal(#clients, list().total)
            helpers.write_file(gw.conf_path, good)
            r = admin("POST", "/reload")
            assert.equal(200, r.status, r.body)
            assert.equal("applied", r.json.result)
            local st = admin("GET", "/status").json
            assert.equal(2, st.generation)
            assert.equal("applied", st.last_reload.result)
            assert.equal(#clients, st.connections)
        end)

        it("GET /apis shows versions, endpoints and chains, never an endpoint's query", function()
            local r = admin("GET", "/apis")
            assert.equal(200, r.status)
            assert.falsy(r.body:find("s3cr3t", 1, true))
            local names = {}
            for _, a in ipairs(r.json.apis) do names[a.name] = a end
            assert.equal("/echo", names.Echo.context)
            assert.equal("key-auth", names.Echo.versions[1].policies[1].name)
            assert.equal("ws://127.0.0.1:" .. be.port .. "/in?(query hidden)",
                         names.Hidden.versions[1].endpoints.production)
        end)

        it("DELETE closes one connection held by either worker with the error JSON and the code, then a whole application", function()
            local id, ws = next(by_id)
            local r = admin("DELETE", "/connections/" .. id, { json = '{"code":4001,"message":"maintenance"}' })
            assert.equal(200, r.status, r.body)
            assert.equal(1, r.json.closed)
            helpers.expect_error_close(ws, "/problems/closed-by-operator", 4001)
            by_id[id] = nil
            helpers.wait_until(function() return admin("GET", "/connections/" .. id).status == 404 end, 10, "gone")

            local a = list("?application=AppA&limit=1000")
            r = admin("DELETE", "/connections?application=AppA&code=1001")
            assert.equal(200, r.status, r.body)
            assert.equal(a.total, r.json.matched)
            assert.equal(a.total, r.json.closed)
            for _, c in ipairs(a.connections) do
                helpers.expect_error_close(by_id[c.id], "/problems/closed-by-operator", 1001)
            end
            helpers.wait_until(function() return list("?application=AppA").total == 0 end, 10, "AppA gone")
            assert.truthy(list().total > 0)       -- AppB's are still there
        end)
    end)
end)

describe("the admin API over HTTPS (admin.tls)", function()
    local gw, dir, port, cert

    -- One HTTPS request with Python's client, verifying weir's certificate
    -- against CA: returns status and body.
    local function https(path, token)
        local script = [[
import http.client, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[2]), context=ctx, timeout=10)
h = {"Authorization": "Bearer " + sys.argv[4]} if sys.argv[4] else {}
c.request("GET", sys.argv[3], headers=h)
r = c.getresponse()
print(r.status)
print(r.read().decode())
]]
        local f = helpers.write_file(dir .. "/https.py", script)
        local code, out, err = helpers.run({ "/usr/bin/python3", f, cert.cert, tostring(port), path, token or "" })
        assert.equal(0, code, err)
        local status, body = out:match("^(%d+)\n(.*)$")
        return tonumber(status), body
    end

    setup(function()
        dir = helpers.tmpdir()
        helpers.write_file(dir .. "/admin.token", TOKEN .. "\n")
        cert = helpers.make_cert("admin", "127.0.0.1")
        port = helpers.free_port()
        gw = helpers.start_weir({
            admin = { port = port, token_file = dir .. "/admin.token", tls = { cert = cert.cert, key = cert.key } },
            apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9") },
        })
        helpers.wait_port(port)
    end)

    teardown(helpers.cleanup)

    it("answers with the token over TLS, verified against its certificate, and refuses without it", function()
        local status, body = https("/status", TOKEN)
        assert.equal(200, status, body)
        assert.equal(1, cjson.decode(body).workers[1].index + 1)
        status, body = https("/status", nil)
        assert.equal(401, status)
        helpers.check_error(body:gsub("%s+$", ""), "/problems/unauthorized", 401)
        -- plain HTTP on the TLS port gets nothing useful
        local res = helpers.http_request(port, { path = "/healthz", timeout = 3 })
        assert.is_true(res == nil or res.status ~= 200)
    end)
end)

describe("the admin API under a tight policy budget", function()
    teardown(helpers.cleanup)

    -- weir's own services walk the whole host: they get a budget of their own
    -- (2 s, or ten policy budgets), not limits.policy_budget
    it("lists 1,000 connections with limits.policy_budget = 1ms", function()
        local be = helpers.start_backend("echo")
        local dir = helpers.tmpdir()
        helpers.write_file(dir .. "/admin.token", TOKEN .. "\n")
        local admin_port = helpers.free_port()
        local keys = helpers.write_file(dir .. "/keys.txt", "sha256:" .. helpers.sha256(KEY_A) .. "  application=AppA subscriber=alice\n")
        local gw = helpers.start_weir({
            workers = 1,
            limits = { policy_budget = "1ms" },
            admin = { port = admin_port, token_file = dir .. "/admin.token" },
            apis = {
                helpers.api("Echo", "/echo", be),
                -- a chain with hooks: the budget is enforced from then on
                helpers.policy_api("Keyed", "/keyed", be, { { "key-auth", { keys_file = keys, header = "X-API-Key" } } }),
            },
        })
        helpers.wait_port(admin_port)
        local many = helpers.start_many_ws({ mode = "hold", url = gw:url("/echo"), count = 1000 })
        local ev = many:wait_event("open", 1, 60)
        assert.equal(1000, ev.open)
        local res
        helpers.wait_until(function()
            res = assert(helpers.http_request(admin_port, { path = "/connections?limit=1000",
                headers = { { "Authorization", "Bearer " .. TOKEN } }, timeout = 20 }))
            local j = res.status == 200 and cjson.decode(res.body)
            return j and j.total == 1000 or res.status ~= 200
        end, 20, "every connection listed")
        -- a walk and 1,000 described connections: many times a 1 ms budget
        assert.equal(200, res.status, res.body)
        assert.equal(1000, #cjson.decode(res.body).connections)
        many:signal("USR2")
        many:wait_exit(20)
    end)
end)
