-- The admin API's commands of the weir binary (docs/admin-api.md, "The
-- command line"): status, connections, push, kick, reload against a real
-- weir with 2 workers and live WebSocket connections; the key manager's
-- commands (app, subscribe, subscriptions, token, revoke) against a fake
-- admin API (spec/support/fake_admin.py) that records every request, so
-- that each spec asserts exactly what the CLI sent and what it printed for
-- a canned answer. Every run is checked for the admin token in its output;
-- the token and the client secret never reach a command line.
local helpers = require "helpers"
local cjson = require "cjson.safe"
local mime = require "mime"

local TOKEN = "cli-admin-token-" .. string.rep("5", 24)
local OTHER_TOKEN = "another-admin-token-" .. string.rep("9", 20)
local KEY_A, KEY_B = "cli-key-of-app-a-0123456789", "cli-key-of-app-b-0123456789"
local SECRET = "s3cret-of-ck-0123456789"

-- Run `weir -c CONF ARGS...`; returns exit code, stdout, stderr. The admin
-- token is in neither output, whatever happened.
local function weir(conf, args, opts)
    local argv = { helpers.bin, "-c", conf }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local code, out, err = helpers.run(argv, opts)
    assert.falsy((out .. err):find(TOKEN, 1, true), "the admin token was printed")
    return code, out, err
end

-- The rows of a table printed by the CLI: its heading's words, and each
-- line's cells (split on runs of two or more spaces).
local function rows_of(text)
    local lines = {}
    for line in text:gmatch("[^\n]+") do lines[#lines + 1] = line end
    local function cells(line)
        local t = {}
        for c in (line .. "  "):gmatch("(.-)%s%s+") do if c ~= "" then t[#t + 1] = c end end
        return t
    end
    local head = table.remove(lines, 1)
    local out = {}
    for _, l in ipairs(lines) do
        if not l:match("^%(") then out[#out + 1] = cells(l) end
    end
    return cells(head or ""), out
end

-- `key: value` lines as a table.
local function fields_of(text)
    local t = {}
    for k, v in text:gmatch("([^\n:]+):%s+([^\n]*)") do t[k] = v end
    return t
end

describe("weir's commands against a running weir", function()
    local be, gw, dir, admin_port
    local clients, by_id = {}, {}

    local function admin(method, path)
        local res = assert(helpers.http_request(admin_port, { method = method, path = path, timeout = 10,
                                                              headers = { { "Authorization", "Bearer " .. TOKEN } } }))
        return cjson.decode(res.body), res
    end

    local function conf_with(pattern, repl)
        local src = helpers.read_file(gw.conf_path)
        local changed, n = src:gsub(pattern, repl)
        assert(n > 0, "nothing replaced in the configuration: " .. pattern)
        return helpers.write_conf(changed)
    end

    setup(function()
        be = helpers.start_backend("echo")
        dir = helpers.tmpdir()
        helpers.write_file(dir .. "/admin.token", TOKEN .. "\n")
        helpers.write_file(dir .. "/other.token", OTHER_TOKEN .. "\n")
        local keys_file = helpers.write_file(dir .. "/keys.txt", table.concat({
            "sha256:" .. helpers.sha256(KEY_A) .. "  application=AppA subscriber=alice tier=Gold",
            "sha256:" .. helpers.sha256(KEY_B) .. "  application=AppB subscriber=bob tier=Silver",
        }, "\n") .. "\n")
        admin_port = helpers.free_port()
        gw = helpers.start_weir({
            workers = 2,
            admin = { port = admin_port, token_file = dir .. "/admin.token" },
            apis = { helpers.policy_api("Echo", "/echo", be,
                                        { { "key-auth", { keys_file = keys_file, header = "X-API-Key" } } }),
                     helpers.api("Open", "/open", be) },
        })
        helpers.wait_port(admin_port)
    end)

    teardown(function()
        for _, ws in ipairs(clients) do pcall(ws.close, ws) end
        helpers.cleanup()
    end)

    it("weir -h lists every command", function()
        local code, out = helpers.run({ helpers.bin, "-h" })
        assert.equal(0, code)
        for _, c in ipairs({ "status", "connections", "kick", "push", "reload", "app create", "app list",
                             "app show", "app keys", "app delete", "subscribe", "unsubscribe", "subscriptions",
                             "token", "revoke app", "WEIR_CLIENT_SECRET" }) do
            assert.truthy(out:find(c, 1, true), "weir -h does not name " .. c)
        end
    end)

    it("status prints a summary; --json prints GET /status as it is", function()
        local code, out, err = weir(gw.conf_path, { "status" })
        assert.equal(0, code, err)
        local f = fields_of(out)
        assert.equal(gw.conf_path, f.configuration)
        assert.equal("1", f.generation)
        assert.equal("2 running of 2", f.workers)
        local head, rows = rows_of(out:match("\n\n(.*)$"))
        assert.same({ "WORKER", "PID", "RUNNING", "CONNECTIONS" }, head)
        local pids = gw:worker_pids()
        assert.same({ "0", tostring(pids[1]), "yes", "0" }, rows[1])
        assert.same({ "1", tostring(pids[2]), "yes", "0" }, rows[2])

        code, out = weir(gw.conf_path, { "status", "--json" })
        assert.equal(0, code)
        local st = assert(cjson.decode(out))
        assert.same(pids, { st.workers[1].pid, st.workers[2].pid })
        assert.equal(gw.conf_path, st.configuration)
    end)

    it("-c may come after the command, and --json before it", function()
        local code, out = helpers.run({ helpers.bin, "--json", "status", "-c", gw.conf_path })
        assert.equal(0, code)
        assert.equal(1, assert(cjson.decode(out)).generation)
    end)

    describe("with connections on both workers", function()
        setup(function()
            helpers.wait_until(function()
                local ws = assert(helpers.ws_connect(gw.port, { path = "/echo", headers = {
                    ["X-API-Key"] = #clients % 2 == 0 and KEY_A or KEY_B } }))
                clients[#clients + 1] = ws
                local st = admin("GET", "/status")
                return #clients >= 4 and st.workers[1].connections >= 2 and st.workers[2].connections >= 2
            end, 30, "connections on both workers")
            for i, ws in ipairs(clients) do assert.equal("hi-" .. i, helpers.ask(ws, "hi-" .. i)) end
            helpers.wait_until(function()
                local l = admin("GET", "/connections?limit=1000")
                if l.total ~= #clients then return false end
                for _, c in ipairs(l.connections) do if c.frames_in < 1 then return false end end
                return true
            end, 10, "counters of every connection")
            for _, c in ipairs(admin("GET", "/connections?limit=1000").connections) do
                for _, ws in ipairs(clients) do
                    local _, port = ws.sock:getsockname()
                    if tonumber(port) == c.client.port then by_id[c.id] = ws end
                end
            end
        end)

        it("connections prints a table of every one, as the API lists them", function()
            local code, out, err = weir(gw.conf_path, { "connections" })
            assert.equal(0, code, err)
            local head, rows = rows_of(out)
            assert.same({ "ID", "API", "VERSION", "APPLICATION", "SUBSCRIBER", "CLIENT", "SINCE", "IN", "OUT" }, head)
            local l = admin("GET", "/connections?limit=1000")
            assert.equal(#clients, #rows)
            for i, c in ipairs(l.connections) do
                local r = rows[i]
                assert.equal(c.id, r[1])
                assert.same({ "Echo", "1.0", c.consumer.application, c.consumer.subscriber,
                              "127.0.0.1:" .. c.client.port }, { r[2], r[3], r[4], r[5], r[6] })
                assert.equal((c.since:gsub("%.%d+Z$", "Z")), r[7])
                assert.truthy(r[8]:match("^%d+/%d+B$"), r[8])
                assert.equal(tostring(c.frames_in), r[8]:match("^(%d+)/"))
            end
        end)

        it("connections shows - for what no policy identified", function()
            local ws = assert(helpers.ws_connect(gw.port, { path = "/open" }))
            assert.equal("x", helpers.ask(ws, "x"))
            local code, out = weir(gw.conf_path, { "connections", "--api", "Open" })
            ws:close()
            assert.equal(0, code)
            local _, rows = rows_of(out)
            assert.equal(1, #rows)
            assert.same({ "Open", "1.0", "-", "-" }, { rows[1][2], rows[1][3], rows[1][4], rows[1][5] })
            helpers.wait_until(function() return admin("GET", "/connections?api=Open").total == 0 end, 10,
                               "the Open connection gone")
        end)

        it("connections filters, pages, and prints the API's JSON with --json", function()
            local code, out = weir(gw.conf_path, { "connections", "--application", "AppA" })
            assert.equal(0, code)
            local _, rows = rows_of(out)
            local a = admin("GET", "/connections?application=AppA")
            assert.equal(a.total, #rows)
            assert.truthy(#rows >= 1)
            for _, r in ipairs(rows) do assert.equal("AppA", r[4]) end

            code, out = weir(gw.conf_path, { "connections", "--subscriber", "bob", "--tier", "Silver", "--json" })
            assert.equal(0, code)
            local j = assert(cjson.decode(out))
            assert.equal(admin("GET", "/connections?subscriber=bob").total, j.total)
            for _, c in ipairs(j.connections) do assert.equal("bob", c.consumer.subscriber) end

            code, out = weir(gw.conf_path, { "connections", "--limit", "2", "--offset", "1" })
            assert.equal(0, code)
            _, rows = rows_of(out)
            local all = admin("GET", "/connections").connections
            assert.same({ all[2].id, all[3].id }, { rows[1][1], rows[2][1] })
            assert.truthy(out:find(("(2-3 of %d: --offset 3 for more)"):format(#clients), 1, true), out)

            code, out = weir(gw.conf_path, { "connections", "--client", "10.9.9.9" })
            assert.equal(0, code)
            assert.equal("no open connections match\n", out)
        end)

        it("push sends text to a client and a file's bytes to a backend, on either worker", function()
            for id, ws in pairs(by_id) do
                local code, out, err = weir(gw.conf_path, { "push", id, "--text", "notice for " .. id })
                assert.equal(0, code, err)
                assert.equal("sent to " .. id .. "'s client\n", out)
                assert.equal("notice for " .. id, helpers.recv_payload(ws))
            end
            local id, ws = next(by_id)
            local file = helpers.write_file(dir .. "/bytes.bin", "\0\1\2\255")
            local code, out = weir(gw.conf_path, { "push", id, "--binary-file", file, "--to", "backend" })
            assert.equal(0, code)
            assert.equal("sent to " .. id .. "'s backend\n", out)
            local f = ws:recv_frame(5)                -- the echo backend sends it back
            assert.equal(2, f.opcode)
            assert.equal("\0\1\2\255", f.payload)
        end)

        it("an error answer is said on stderr with its code, exit 1; --json prints it too", function()
            local code, out, err = weir(gw.conf_path, { "push", "w0-999999", "--text", "x" })
            assert.equal(1, code)
            assert.equal("", out)
            assert.equal("weir: No open connection w0-999999 (404)\n", err)
            code, out, err = weir(gw.conf_path, { "kick", "w1-999999", "--json" })
            assert.equal(1, code)
            helpers.check_error(out, "/problems/not-found", 404)
            assert.equal("weir: No open connection w1-999999 (404)\n", err)
        end)

        it("kick closes one connection with the code and message given", function()
            local id, ws = next(by_id)
            local code, out, err = weir(gw.conf_path, { "kick", id, "--code", "4001", "--message", "maintenance" })
            assert.equal(0, code, err)
            assert.equal("closed " .. id .. " (code 4001)\n", out)
            local j = helpers.expect_error_close(ws, "/problems/closed-by-operator", 4001)
            assert.equal("maintenance", j.error.message)
            by_id[id] = nil
            helpers.wait_until(function() return select(2, admin("GET", "/connections/" .. id)).status == 404 end,
                               10, "the connection gone")
        end)

        it("kick without an ID, a filter or --all is a usage error and closes nothing", function()
            local before = admin("GET", "/connections").total
            for _, args in ipairs({ { "kick" }, { "kick", "w0-1", "--application", "AppA" },
                                    { "kick", "--code", "abc", "--all" }, { "kick", "--nope" } }) do
                local code, out, err = weir(gw.conf_path, args)
                assert.equal(2, code, table.concat(args, " "))
                assert.equal("", out)
                assert.truthy(err:find("weir kick -h", 1, true), err)
            end
            assert.equal(before, admin("GET", "/connections").total)
        end)

        it("kick closes every connection of an application at once", function()
            local a = admin("GET", "/connections?application=AppA")
            assert.truthy(a.total >= 1)
            local code, out, err = weir(gw.conf_path, { "kick", "--application", "AppA", "--code", "1001" })
            assert.equal(0, code, err)
            assert.equal(("closed %d of %d matching connection%s (code 1001)\n"):format(a.total, a.total,
                         a.total == 1 and "" or "s"), out)
            for _, c in ipairs(a.connections) do
                if by_id[c.id] then
                    helpers.expect_error_close(by_id[c.id], "/problems/closed-by-operator", 1001)
                    by_id[c.id] = nil
                end
            end
            helpers.wait_until(function() return admin("GET", "/connections?application=AppA").total == 0 end,
                               10, "AppA's connections gone")
            local code2, out2 = weir(gw.conf_path, { "kick", "--application", "AppA", "--json" })
            assert.equal(0, code2)
            assert.same({ matched = 0, closed = 0, code = 1000 }, cjson.decode(out2))
            assert.truthy(admin("GET", "/connections").total >= 1)      -- AppB's are there
        end)
    end)

    it("reload: a broken configuration is refused (exit 1, nothing changes), a good one applied (exit 0)", function()
        local good = helpers.read_file(gw.conf_path)
        local gen = admin("GET", "/status").generation
        helpers.write_file(gw.conf_path, (good:gsub("workers = 2", "workers = 2, limits = { idle_timeout = -5 }", 1)))
        local code, out, err = weir(gw.conf_path, { "reload" })
        helpers.write_file(gw.conf_path, good)
        assert.equal(1, code)
        assert.equal("", out)
        local at = err:find(gw.conf_path .. ":", 1, true)
        assert.truthy(at and err:find("^%d+: limits%.idle_timeout", at + #gw.conf_path + 1), err)
        assert.equal(gen, admin("GET", "/status").generation)

        code, out, err = weir(gw.conf_path, { "reload" })
        assert.equal(0, code, err)
        assert.truthy(out:find("reloaded " .. gw.conf_path, 1, true), out)
        assert.equal(gen + 1, admin("GET", "/status").generation)

        code, out = weir(gw.conf_path, { "reload", "--json" })
        assert.equal(0, code)
        assert.equal("applied", assert(cjson.decode(out)).result)
        code, out = weir(gw.conf_path, { "status" })
        assert.equal(0, code)
        assert.truthy(fields_of(out)["last reload"]:match("^applied at "), out)
    end)

    it("a token file with another token: 401, said, exit 1, neither token printed", function()
        local conf = conf_with("admin%.token", "other.token")
        local code, out, err = weir(conf, { "status" })
        assert.equal(1, code)
        assert.equal("", out)
        assert.truthy(err:find("(401)", 1, true), err)
        assert.falsy(err:find(OTHER_TOKEN, 1, true))
        code, out, err = weir(conf, { "connections", "--json" })
        assert.equal(1, code)
        assert.falsy((out .. err):find(OTHER_TOKEN, 1, true))
        helpers.check_error(out, "/problems/unauthorized", 401)
    end)

    it("weir not reachable: exit 7, naming the address", function()
        local port = helpers.free_port()
        local conf = conf_with("port = " .. admin_port, "port = " .. port)
        local code, out, err = weir(conf, { "status" })
        assert.equal(7, code)
        assert.equal("", out)
        assert.truthy(err:find("cannot reach weir's admin API at 127.0.0.1:" .. port, 1, true), err)
    end)

    it("a configuration without admin, or with errors, is said and exits 1", function()
        local conf = helpers.write_conf({ listen = { { port = helpers.free_port() } },
                                          apis = { helpers.api("Echo", "/echo", be) } })
        local code, _, err = weir(conf, { "status" })
        assert.equal(1, code)
        assert.truthy(err:find("has no admin section", 1, true), err)
        code, _, err = weir(dir .. "/no-such.conf.lua", { "connections" })
        assert.equal(1, code)
        assert.truthy(err:find("cannot open the configuration", 1, true), err)
    end)

    it("speaks HTTPS to an admin API with admin.tls (on loopback, without verifying the certificate)", function()
        local cert = helpers.make_cert("admin")
        local port = helpers.free_port()
        local tgw = helpers.start_weir({
            admin = { port = port, token_file = dir .. "/admin.token", tls = { cert = cert.cert, key = cert.key } },
            apis = { helpers.api("Echo", "/echo", be) },
        })
        helpers.wait_port(port)
        local code, out, err = weir(tgw.conf_path, { "status", "--json" })
        assert.equal(0, code, err)
        assert.equal(tgw.conf_path, assert(cjson.decode(out)).configuration)
        -- plain HTTP to it gets no answer the CLI takes
        local plain = helpers.write_conf((helpers.read_file(tgw.conf_path):gsub("tls = %b{},", "", 1)))
        code, out, err = weir(plain, { "status" })
        assert.equal(1, code)
        assert.equal("", out)
        assert.truthy(err:find("127.0.0.1:" .. port, 1, true), err)
    end)
end)

--------------------------------------------------------------------------
-- the key manager's commands, against a fake admin API
--------------------------------------------------------------------------

local Fake = {}
Fake.__index = Fake

-- Start spec/support/fake_admin.py (HTTPS with CERT; on HOST, default 127.0.0.1).
local function start_fake(cert, host)
    local out = helpers.tmpdir() .. "/fake-" .. helpers.free_port() .. ".out"
    local argv = { "/usr/bin/python3", helpers.support .. "/fake_admin.py" }
    if host then argv[#argv + 1], argv[#argv + 2] = "--host", host end
    if cert then argv[#argv + 1], argv[#argv + 2] = cert.cert, cert.key end
    local pid = helpers.spawn(argv, { stdout = out, stderr = out .. ".err" })
    local line = helpers.wait_until(function()
        if not helpers.alive(pid) then error("fake_admin.py died: " .. (helpers.read_file(out .. ".err") or "")) end
        return (helpers.read_file(out) or ""):match("[^\n]*listening[^\n]*")
    end, 15, "fake_admin.py to listen")
    local ready = cjson.decode(line)
    return setmetatable({ pid = pid, port = ready.listening, control = ready.control }, Fake)
end

function Fake:post(path, body)
    local res = assert(helpers.http_request(self.control, { method = "POST", path = path, body = cjson.encode(body),
                                                            headers = { { "Content-Type", "application/json" } } }))
    assert(res.status == 200, res.body)
    return cjson.decode(res.body)
end

--- Replace the canned answers (and forget the requests seen).
function Fake:answers(list) return self:post("/__answers", list) end

function Fake:requests()
    return cjson.decode(assert(helpers.http_request(self.control, { path = "/__requests" })).body).requests
end

--- The one request the fake saw (fails unless exactly one).
function Fake:request()
    local reqs = self:requests()
    assert.equal(1, #reqs, "requests seen: " .. cjson.encode(reqs))
    return reqs[1]
end

local function header(req, name)
    for _, kv in ipairs(req.headers) do
        if kv[1]:lower() == name:lower() then return kv[2] end
    end
end

local function error_body(code, message)
    return { type = "error", error = { type = "/problems/x", code = code, message = message },
             timestamp = "2026-11-30T00:00:00Z" }
end

describe("the key manager's commands against a fake admin API", function()
    local admin, public_tls, public_plain, conf, conf_plain, dir

    setup(function()
        dir = helpers.tmpdir()
        local cert = helpers.make_cert("fake")
        admin, public_tls, public_plain = start_fake(), start_fake(cert), start_fake()
        local token_file = helpers.write_file(dir .. "/admin.token", TOKEN .. "\n")
        local api = helpers.api("Echo", "/echo", "ws://127.0.0.1:9/")
        conf = helpers.write_conf({
            listen = { { address = "127.0.0.1", port = public_tls.port, tls = { cert = cert.cert, key = cert.key } },
                       { address = "127.0.0.1", port = public_plain.port } },
            admin = { port = admin.port, token_file = token_file },
            apis = { api },
        })
        conf_plain = helpers.write_conf({
            listen = { { address = "0.0.0.0", port = public_plain.port } },
            admin = { port = admin.port, token_file = token_file },
            apis = { api },
        })
    end)

    teardown(helpers.cleanup)

    -- The request to the admin API carries the admin token, and JSON when it has a body.
    local function admin_request(method, path, body)
        local req = admin:request()
        assert.equal(method, req.method)
        assert.equal(path, req.target)
        assert.equal("Bearer " .. TOKEN, header(req, "Authorization"))
        assert.truthy((header(req, "User-Agent") or ""):match("^weir%-cli/%d"), header(req, "User-Agent"))
        if body == nil then
            assert.equal("", req.body)
        else
            assert.equal("application/json", header(req, "Content-Type"))
            assert.same(body, cjson.decode(req.body))
        end
        return req
    end

    it("app create sends the application's fields and prints the answer", function()
        local app = { id = 7, name = "ShopApp", owner = "alice", description = "the shop", tier = "Gold",
                      scopes = { "read", "write" }, created_at = "2026-11-30T01:00:00Z" }
        admin:answers({ { method = "POST", path = "/applications", status = 201, body = app } })
        local code, out, err = weir(conf, { "app", "create", "ShopApp", "--owner", "alice", "--description",
                                            "the shop", "--tier", "Gold", "--scopes", "read,write" })
        assert.equal(0, code, err)
        admin_request("POST", "/applications", { name = "ShopApp", owner = "alice", description = "the shop",
                                                 tier = "Gold", scopes = { "read", "write" } })
        local f = fields_of(out)
        assert.same({ id = "7", name = "ShopApp", owner = "alice", description = "the shop", tier = "Gold",
                      scopes = "read, write", created_at = "2026-11-30T01:00:00Z" }, f)
        assert.truthy(out:match("^id:%s+7\nname:%s+ShopApp\n"), out)

        admin:answers({ { method = "POST", path = "/applications", status = 201, body = app } })
        code = weir(conf, { "app", "create", "Bare", "--owner", "bob" })
        assert.equal(0, code)
        admin_request("POST", "/applications", { name = "Bare", owner = "bob" })

        code, _, err = weir(conf, { "app", "create", "NoOwner" })
        assert.equal(2, code)
        assert.truthy(err:find("--owner", 1, true), err)
    end)

    it("app list asks for an owner's applications and prints a table; --json the answer as it is", function()
        local raw = cjson.encode({ total = 3, applications = {
            { id = 1, name = "ShopApp", owner = "alice smith", tier = "Gold", scopes = { "read" },
              created_at = "2026-11-30T01:00:00Z" },
            { id = 2, name = "Other", owner = "alice smith", scopes = {} } } })
        admin:answers({ { method = "GET", path = "/applications", raw = raw } })
        local code, out = weir(conf, { "app", "list", "--owner", "alice smith" })
        assert.equal(0, code)
        admin_request("GET", "/applications?owner=alice%20smith")
        local head, rows = rows_of(out)
        assert.same({ "ID", "NAME", "OWNER", "TIER", "SCOPES", "CREATED" }, head)
        assert.same({ "1", "ShopApp", "alice smith", "Gold", "read", "2026-11-30T01:00:00Z" }, rows[1])
        assert.same({ "2", "Other", "alice smith", "-", "-", "-" }, rows[2])
        assert.truthy(out:find("(2 of 3)", 1, true), out)

        admin:answers({ { method = "GET", path = "/applications", raw = raw } })
        code, out = weir(conf, { "app", "list", "--json" })
        assert.equal(0, code)
        admin_request("GET", "/applications")
        assert.equal(raw .. "\n", out)
    end)

    it("app show, app delete and unsubscribe name their object in the path, escaped", function()
        admin:answers({ { method = "GET", path = "/applications/Shop%20App%2F1",
                          body = { id = 3, name = "Shop App/1", owner = "carol" } } })
        local code, out = weir(conf, { "app", "show", "Shop App/1" })
        assert.equal(0, code)
        admin_request("GET", "/applications/Shop%20App%2F1")
        assert.same({ id = "3", name = "Shop App/1", owner = "carol" }, fields_of(out))

        admin:answers({ { method = "DELETE", path = "/applications/ShopApp", status = 204, raw = "" } })
        code, out = weir(conf, { "app", "delete", "ShopApp" })
        assert.equal(0, code)
        admin_request("DELETE", "/applications/ShopApp")
        assert.equal("deleted application ShopApp\n", out)

        admin:answers({ { method = "DELETE", path = "/subscriptions/42", body = { id = 42, deleted = true } } })
        code, out = weir(conf, { "unsubscribe", "42" })
        assert.equal(0, code)
        admin_request("DELETE", "/subscriptions/42")
        assert.equal("removed subscription 42\n", out)
    end)

    it("app keys lists the keys; --generate makes one and prints its secret once, saying so", function()
        admin:answers({ { method = "GET", path = "/applications/ShopApp/keys", body = { keys = {
            { consumer_key = "ck-1", key_type = "production", created_at = "2026-11-30T01:00:00Z", revoked_at = cjson.null },
            { consumer_key = "ck-2", key_type = "sandbox", created_at = "2026-11-30T02:00:00Z",
              revoked_at = "2026-11-30T03:00:00Z" } } } } })
        local code, out = weir(conf, { "app", "keys", "ShopApp" })
        assert.equal(0, code)
        admin_request("GET", "/applications/ShopApp/keys")
        local head, rows = rows_of(out)
        assert.same({ "CONSUMER KEY", "TYPE", "CREATED", "REVOKED" }, head)
        assert.same({ "ck-1", "production", "2026-11-30T01:00:00Z", "-" }, rows[1])
        assert.same({ "ck-2", "sandbox", "2026-11-30T02:00:00Z", "2026-11-30T03:00:00Z" }, rows[2])

        for _, kind in ipairs({ "production", "sandbox" }) do
            admin:answers({ { method = "POST", path = "/applications/ShopApp/keys", status = 201,
                              body = { consumer_key = "ck-3", consumer_secret = SECRET, key_type = kind,
                                       created_at = "2026-11-30T04:00:00Z" } } })
            local args = { "app", "keys", "ShopApp", "--generate" }
            if kind == "sandbox" then args[5] = "--sandbox" end
            local err
            code, out, err = weir(conf, args)
            assert.equal(0, code, err)
            admin_request("POST", "/applications/ShopApp/keys", { key_type = kind })
            local f = fields_of(out)
            assert.same({ consumer_key = "ck-3", consumer_secret = SECRET, key_type = kind,
                          created_at = "2026-11-30T04:00:00Z" }, f)
            assert.equal(1, select(2, (out .. err):gsub(SECRET:gsub("%-", "%%-"), "")))
            assert.truthy(err:find("shown only now", 1, true), err)
        end

        code = weir(conf, { "app", "keys", "ShopApp", "--sandbox" })
        assert.equal(2, code)
    end)

    it("subscribe sends the subscription and prints it; subscriptions filters and prints a table", function()
        local sub = { id = 42, app_id = 7, app_name = "ShopApp", api = "Echo", version = "1.0", tier = "Gold",
                      created_at = "2026-11-30T01:00:00Z" }
        admin:answers({ { method = "POST", path = "/subscriptions", status = 201, body = sub } })
        local code, out, err = weir(conf, { "subscribe", "ShopApp", "Echo", "1.0", "--tier", "Gold" })
        assert.equal(0, code, err)
        admin_request("POST", "/subscriptions", { application = "ShopApp", api = "Echo", version = "1.0", tier = "Gold" })
        assert.same({ id = "42", app_id = "7", app_name = "ShopApp", api = "Echo", version = "1.0", tier = "Gold",
                      created_at = "2026-11-30T01:00:00Z" }, fields_of(out))

        code, _, err = weir(conf, { "subscribe", "ShopApp", "Echo", "1.0" })
        assert.equal(2, code)
        assert.truthy(err:find("--tier", 1, true))

        admin:answers({ { method = "GET", path = "/subscriptions", body = { total = 1, subscriptions = { sub } } } })
        code, out = weir(conf, { "subscriptions", "--application", "ShopApp", "--api", "Echo" })
        assert.equal(0, code)
        admin_request("GET", "/subscriptions?application=ShopApp&api=Echo")
        local head, rows = rows_of(out)
        assert.same({ "ID", "APPLICATION", "API", "VERSION", "TIER", "CREATED" }, head)
        assert.same({ { "42", "ShopApp", "Echo", "1.0", "Gold", "2026-11-30T01:00:00Z" } }, rows)
    end)

    it("revoke app, key and token post to their endpoints; a token is sent as token or as jti", function()
        admin:answers({ { method = "POST", path = "/applications/ShopApp/revoke", body = { revoked_keys = 2 } } })
        local code, out = weir(conf, { "revoke", "app", "ShopApp" })
        assert.equal(0, code)
        local req = admin_request("POST", "/applications/ShopApp/revoke")
        assert.equal("0", header(req, "Content-Length"))
        assert.equal("revoked application ShopApp\nrevoked_keys:  2\n", out)

        admin:answers({ { method = "POST", path = "/keys/ck-1/revoke", body = {} } })
        code, out = weir(conf, { "revoke", "key", "ck-1" })
        assert.equal(0, code)
        admin_request("POST", "/keys/ck-1/revoke")
        assert.equal("revoked key ck-1\n", out)

        local jwt = "eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiJ0LTEifQ.c2lnbmF0dXJl"
        admin:answers({ { method = "POST", path = "/tokens/revoke", body = { jti = "t-1" } } })
        code, out = weir(conf, { "revoke", "token", jwt })
        assert.equal(0, code)
        admin_request("POST", "/tokens/revoke", { token = jwt })
        assert.falsy(out:find(jwt, 1, true))

        admin:answers({ { method = "POST", path = "/tokens/revoke", body = { jti = "t-1" } } })
        code = weir(conf, { "revoke", "token", "t-1" })
        assert.equal(0, code)
        admin_request("POST", "/tokens/revoke", { jti = "t-1" })

        admin:answers({ { method = "POST", path = "/tokens/revoke", body = { jti = "t-1" } } })
        code = weir(conf, { "revoke", "token", "-" }, { stdin = helpers.write_file(dir .. "/jwt.txt", jwt .. "\n") })
        assert.equal(0, code)
        admin_request("POST", "/tokens/revoke", { token = jwt })

        code = weir(conf, { "revoke", "secret", "x" })
        assert.equal(2, code)
    end)

    it("an error answer: its message and code on stderr, exit 1; --json prints the answer too", function()
        admin:answers({ { method = "GET", path = "/applications/Nope", status = 404,
                          body = error_body(404, "No application Nope") } })
        local code, out, err = weir(conf, { "app", "show", "Nope" })
        assert.equal(1, code)
        assert.equal("", out)
        assert.equal("weir: No application Nope (404)\n", err)

        admin:answers({ { method = "POST", path = "/subscriptions", status = 409,
                          body = error_body(409, "Already subscribed") } })
        code, out, err = weir(conf, { "subscribe", "A", "Echo", "1.0", "--tier", "Gold", "--json" })
        assert.equal(1, code)
        helpers.check_error(out, "/problems/x", 409)
        assert.equal("weir: Already subscribed (409)\n", err)

        admin:answers({ { method = "GET", path = "/applications", status = 502, raw = "<html>bad gateway</html>",
                          headers = { ["Content-Type"] = "text/html" } } })
        code, out, err = weir(conf, { "app", "list" })
        assert.equal(1, code)
        assert.equal("", out)
        assert.truthy(err:find("answered HTTP 502 (not JSON)", 1, true), err)
    end)

    it("reload prints the report: refused on stderr (exit 1), partial on stdout (exit 3)", function()
        admin:answers({ { method = "POST", path = "/reload", status = 422, body = {
            result = "refused", errors = { "/etc/weir/weir.conf.lua:3: workers: bad" },
            report = { "weir: not reloaded: /etc/weir/weir.conf.lua has errors", "  /etc/weir/weir.conf.lua:3: workers: bad" } } } })
        local code, out, err = weir(conf, { "reload" })
        assert.equal(1, code)
        admin_request("POST", "/reload")
        assert.equal("", out)
        assert.equal("weir: not reloaded: /etc/weir/weir.conf.lua has errors\n  /etc/weir/weir.conf.lua:3: workers: bad\n", err)

        admin:answers({ { method = "POST", path = "/reload", body = {
            result = "partial", errors = {}, report = { "weir: reloaded: applied in 1 of 2 workers" } } } })
        code, out = weir(conf, { "reload" })
        assert.equal(3, code)
        assert.equal("weir: reloaded: applied in 1 of 2 workers\n", out)

        admin:answers({ { method = "POST", path = "/reload", status = 504, body = error_body(504, "no report") } })
        code, _, err = weir(conf, { "reload" })
        assert.equal(1, code)
        assert.equal("weir: no report (504)\n", err)
    end)

    describe("token", function()
        local answer = { access_token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjay0xIn0.c2ln", token_type = "Bearer",
                         expires_in = 3600, scope = "read write" }

        it("posts the client credentials grant to listen[1] over HTTPS with Basic auth; prints the token alone", function()
            public_tls:answers({ { method = "POST", path = "/oauth2/token", body = answer } })
            admin:answers({})
            local code, out, err = weir(conf, { "token", "ck-1", "--scope", "read write" },
                                        { env = { WEIR_CLIENT_SECRET = SECRET } })
            assert.equal(0, code, err)
            assert.equal(answer.access_token .. "\n", out)
            assert.truthy(err:find("expires in 1h 0m", 1, true), err)
            local req = public_tls:request()
            assert.equal("POST", req.method)
            assert.equal("/oauth2/token", req.target)
            assert.equal("Basic " .. mime.b64("ck-1:" .. SECRET), header(req, "Authorization"))
            assert.equal("application/x-www-form-urlencoded", header(req, "Content-Type"))
            assert.equal("grant_type=client_credentials&scope=read%20write", req.body)
            assert.same({}, admin:requests())               -- the admin API is not asked
            assert.falsy((out .. err):find(SECRET, 1, true))
        end)

        it("reads the secret from standard input; --json prints the whole answer", function()
            local raw = cjson.encode(answer)
            public_plain:answers({ { method = "POST", path = "/oauth2/token", raw = raw } })
            local code, out, err = weir(conf_plain, { "token", "ck-1", "--json" },
                                        { stdin = helpers.write_file(dir .. "/secret.txt", SECRET .. "\n") })
            assert.equal(0, code, err)
            assert.equal(raw .. "\n", out)
            local req = public_plain:request()
            assert.equal("Basic " .. mime.b64("ck-1:" .. SECRET), header(req, "Authorization"))
            assert.equal("grant_type=client_credentials", req.body)
        end)

        it("without a secret is a usage error, and asks nothing", function()
            public_plain:answers({})
            local code, out, err = weir(conf_plain, { "token", "ck-1" }, { env = { WEIR_CLIENT_SECRET = false } })
            assert.equal(2, code)
            assert.equal("", out)
            assert.truthy(err:find("WEIR_CLIENT_SECRET", 1, true), err)
            assert.same({}, public_plain:requests())
        end)

        it("an RFC 6749 error answer is said with its error code, exit 1", function()
            public_plain:answers({ { method = "POST", path = "/oauth2/token", status = 401,
                                     headers = { ["WWW-Authenticate"] = 'Basic realm="weir"' },
                                     body = { error = "invalid_client", error_description = "Client authentication failed" } } })
            local code, out, err = weir(conf_plain, { "token", "ck-1" }, { env = { WEIR_CLIENT_SECRET = SECRET } })
            assert.equal(1, code)
            assert.equal("", out)
            assert.equal("weir: Client authentication failed (invalid_client)\n", err)
        end)
    end)

    it("reaches an admin API on ::1", function()
        local six = start_fake(nil, "::1")
        six:answers({ { method = "GET", path = "/status", body = { version = "0.1.0", workers = {} } } })
        local c6 = helpers.write_conf({
            listen = { { address = "127.0.0.1", port = public_plain.port } },
            admin = { address = "::1", port = six.port, token_file = dir .. "/admin.token" },
            apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9/") },
        })
        local code, out, err = weir(c6, { "status", "--json" })
        assert.equal(0, code, err)
        assert.equal("0.1.0", cjson.decode(out).version)
        assert.equal("[::1]:" .. six.port, header(six:request(), "Host"))
    end)

    it("neither the admin token nor the client secret is in a command line or the environment", function()
        local function check_running(fake, argv, opts)
            fake:post("/__hold", { n = 1 })
            local out = dir .. "/held.out"
            local pid = helpers.spawn(argv, { stdout = out, stderr = out .. ".err", stdin = opts.stdin })
            helpers.wait_until(function()
                local h = cjson.decode(assert(helpers.http_request(fake.control, { path = "/__held" })).body)
                return h.held == 1
            end, 15, "the CLI's request to be held")
            local cmdline = helpers.read_file("/proc/" .. pid .. "/cmdline") or ""
            local environ = helpers.read_file("/proc/" .. pid .. "/environ") or ""
            local children = helpers.children(pid)
            fake:post("/__release", {})
            local code = helpers.wait(pid, 15)
            assert.truthy(cmdline:find(argv[#argv], 1, true), "read the CLI's own command line")
            for _, secret in ipairs({ TOKEN, SECRET }) do
                assert.falsy(cmdline:find(secret, 1, true), "a secret in /proc/PID/cmdline")
                assert.falsy(environ:find(secret, 1, true), "a secret in /proc/PID/environ")
            end
            assert.same({}, children)
            return code, fake:request()
        end

        admin:answers({ { method = "GET", path = "/status", body = { version = "0.1.0", workers = {} } } })
        local code, req = check_running(admin, { helpers.bin, "-c", conf, "status" }, {})
        assert.equal(0, code)
        assert.equal("Bearer " .. TOKEN, header(req, "Authorization"))

        public_plain:answers({ { method = "POST", path = "/oauth2/token", body = { access_token = "t", expires_in = 60 } } })
        code, req = check_running(public_plain, { helpers.bin, "-c", conf_plain, "token", "ck-1" },
                                  { stdin = helpers.write_file(dir .. "/secret2.txt", SECRET .. "\n") })
        assert.equal(0, code)
        assert.equal("Basic " .. mime.b64("ck-1:" .. SECRET), header(req, "Authorization"))
    end)
end)

describe("the CLI's HTTP client (weir.cli.request)", function()
    local cli = require "weir.cli"
    local stdlib = require "posix.stdlib"

    teardown(function()
        stdlib.setenv("SSL_CERT_FILE", nil)
        helpers.cleanup()
    end)

    it("verifies a certificate against the trusted store and the address when told to", function()
        local good = helpers.make_cert("trusted")                   -- names 127.0.0.1
        local other = helpers.tmpdir() .. "/other"
        local code, _, err = helpers.run({ "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-keyout", other .. ".key", "-out",
            other .. ".pem", "-subj", "/CN=other", "-addext", "subjectAltName=DNS:other" })
        assert(code == 0, err)
        local a, b = start_fake(good), start_fake({ cert = other .. ".pem", key = other .. ".key" })
        a:answers({ { method = "GET", path = "/x", body = { ok = true } } })
        b:answers({ { method = "GET", path = "/x", body = { ok = true } } })
        local req = { method = "GET", path = "/x", timeout = 5 }

        stdlib.setenv("SSL_CERT_FILE", helpers.tmpdir() .. "/none.pem")   -- trusts nothing
        local res, why = cli.request({ host = "127.0.0.1", port = a.port, tls = true, verify = true }, req)
        assert.is_nil(res)
        assert.equal("TLS: the certificate does not verify: self-signed certificate", why)
        res = assert(cli.request({ host = "127.0.0.1", port = a.port, tls = true, verify = false }, req))
        assert.equal(200, res.status)

        stdlib.setenv("SSL_CERT_FILE", good.cert)
        res = assert(cli.request({ host = "127.0.0.1", port = a.port, tls = true, verify = true }, req))
        assert.same({ ok = true }, cjson.decode(res.body))

        stdlib.setenv("SSL_CERT_FILE", other .. ".pem")             -- trusted, but for another name
        res, why = cli.request({ host = "127.0.0.1", port = b.port, tls = true, verify = true }, req)
        assert.is_nil(res)
        assert.equal("TLS: the certificate does not verify: IP address mismatch", why)
    end)

    it("tells loopback addresses, where the CLI does not verify, from others", function()
        for _, a in ipairs({ "127.0.0.1", "127.9.8.7", "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1" }) do
            assert.is_true(cli.is_loopback(a), a)
        end
        for _, a in ipairs({ "10.0.0.1", "0.0.0.0", "::", "128.0.0.1", "::2", "::ffff:10.0.0.1", "fe80::1" }) do
            assert.is_false(cli.is_loopback(a), a)
        end
    end)

    it("every command is in weir -h, weir(8) and docs/admin-api.md's section on the command line", function()
        local _, help = helpers.run({ helpers.bin, "-h" })
        local man = helpers.read_file(helpers.root .. "/packaging/weir.8"):gsub("\\f[BIR]", ""):gsub("\\%-", "-")
        local doc = assert(helpers.read_file(helpers.root .. "/docs/admin-api.md"):match("\n## The command line\n(.*)$"))
        assert.truthy(#cli.commands >= 15)
        for _, name in ipairs(cli.commands) do
            assert.truthy(help:find(name, 1, true), "weir -h does not name " .. name)
            assert.truthy(man:find(".B " .. name, 1, true), "weir(8) does not name " .. name)
            assert.truthy(doc:find("`weir " .. name, 1, true), "docs/admin-api.md does not name weir " .. name)
        end
    end)

    it("says a peer that is not there cannot be reached", function()
        local port = helpers.free_port()
        local res, why, unreachable = cli.request({ host = "127.0.0.1", port = port }, { method = "GET", path = "/" })
        assert.is_nil(res)
        assert.equal("Connection refused", why)
        assert.is_true(unreachable)
    end)
end)
