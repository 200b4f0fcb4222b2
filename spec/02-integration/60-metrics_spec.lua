-- Prometheus metrics and usage queries (docs/analytics.md, "Metrics and usage") against a real weir
-- with 2 workers, real clients and a real echo backend: /metrics read
-- before and after known traffic gives the exact deltas (messages and bytes
-- each way, throttled messages, auth failures by reason, refusals by
-- status, closes by code and side, handshakes and sessions, backend
-- failures, policy errors, reloads), parses as the text format 0.0.4,
-- folds applications past metrics.max_applications into "other", and no
-- counter goes down when a worker is killed with SIGKILL; /usage and
-- /usage/top give the exact numbers of the same traffic.
local helpers = require "helpers"
local prom = require "support.prom"
local cjson = require "cjson.safe"

local TOKEN = "admin-token-" .. string.rep("5", 24)
local KEYS = {
    A = "key-of-app-a-0123456789", B = "key-of-app-b-0123456789",
    C = "key-of-app-c-0123456789", Odd = "key-of-app-odd-012345678",
    M = "key-of-app-m-0123456789", Long = "key-of-app-long-01234567",
}
-- names longer than a label value keeps (100 bytes): cut, never overflowing
local LONG_API, LONG_APP, LONG_SUB = "Api" .. string.rep("x", 117), "App" .. string.rep("é", 60), string.rep("s", 130)

describe("metrics and usage", function()
    local be, gw, dir, admin_port

    local function admin(method, path, opts)
        opts = opts or {}
        local headers = { { "Authorization", opts.token == nil and ("Bearer " .. TOKEN) or opts.token } }
        if opts.token == false then headers = {} end
        local res = assert(helpers.http_request(admin_port, { method = method, path = path, headers = headers,
                                                              timeout = 10 }))
        res.json = cjson.decode(res.body)
        return res
    end

    local function scrape()
        local r = admin("GET", "/metrics")
        if r.status ~= 200 then
            error("GET /metrics: " .. r.status .. " " .. r.body .. "\n" .. tostring(helpers.read_file(gw.log_path)):sub(-3000))
        end
        return prom.parse(r.body), r
    end

    local function connect(path, key)
        local ws, res = helpers.ws_connect(gw.port, { path = path, headers = key and { ["X-API-Key"] = key } or nil })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        return ws
    end

    local exchange = helpers.exchange

    local function close(ws, code)
        local f = ws:close_handshake(code, "bye")
        assert(f and f.opcode == 8, "no close answered")
        ws:close()
    end

    -- Wait until FN(parsed metrics) is true; returns the last scrape.
    local function wait_metrics(fn, what)
        local last, text
        local ok, err = pcall(helpers.wait_until, function()
            local r
            last, r = scrape()
            text = r.body
            return fn(last)
        end, 10, what)
        if not ok then error(tostring(err) .. "\n" .. tostring(text), 2) end
        return last
    end

    local function delta(a, b, name, labels) return prom.value(b, name, labels) - prom.value(a, name, labels) end

    setup(function()
        be = helpers.start_backend("echo")
        dir = helpers.tmpdir()
        helpers.write_file(dir .. "/admin.token", TOKEN .. "\n")
        local keys_file = helpers.write_file(dir .. "/keys.txt", table.concat({
            "sha256:" .. helpers.sha256(KEYS.A) .. "  application=AppA subscriber=alice tier=Gold",
            "sha256:" .. helpers.sha256(KEYS.B) .. "  application=AppB subscriber=bob tier=Silver",
            "sha256:" .. helpers.sha256(KEYS.C) .. "  application=AppC subscriber=carol tier=Gold",
            "sha256:" .. helpers.sha256(KEYS.Odd) .. '  application="Odd \\ App" subscriber=dave tier=Gold',
            "sha256:" .. helpers.sha256(KEYS.M) .. "  application=AppM subscriber=mike tier=Gold",
            "sha256:" .. helpers.sha256(KEYS.Long) .. "  application=" .. LONG_APP .. " subscriber=" .. LONG_SUB
                .. " tier=Gold",
        }, "\n") .. "\n")
        admin_port = helpers.free_port()
        local chain = {
            { "key-auth", { keys_file = keys_file, header = "X-API-Key" } },
            { "throttling", { level = "subscription" } },
        }
        local down = helpers.free_port()
        gw = helpers.start_weir({
            workers = 2,
            admin = { port = admin_port, token_file = dir .. "/admin.token" },
            metrics = { max_applications = 3 },
            tiers = {
                Gold = { limits = { { frames = 1000, per = "hour" } } },
                Silver = { limits = { { frames = 5, per = "hour", direction = "in" } }, action = "drop" },
            },
            policy_paths = { helpers.fixture_policies },
            apis = {
                helpers.policy_api("Echo", "/echo", be, chain),
                helpers.policy_api("Verdicts", "/verdicts", be, { { "spec-verdicts", {} } }),
                helpers.policy_api("Open", "/open", be, { { "spec-verdicts", {}, fail_open = true } }),
                helpers.api("Down", "/down", "ws://127.0.0.1:" .. down .. "/"),
                helpers.policy_api(LONG_API, "/long", be, { chain[1] }),
            },
        })
        helpers.wait_port(admin_port)
    end)

    teardown(helpers.cleanup)

    it("needs the admin token, and answers text format 0.0.4", function()
        assert.equal(401, admin("GET", "/metrics", { token = false }).status)
        assert.equal(401, admin("GET", "/usage", { token = "Bearer not-the-token-0000000000" }).status)
        local p, r = scrape()
        assert.equal("text/plain; version=0.0.4; charset=utf-8", r.headers["content-type"])
        assert.equal("counter", p.types.weir_messages_total)
        assert.equal("histogram", p.types.weir_handshake_duration_seconds)
        assert.equal("gauge", p.types.weir_connections_open)
        -- the parser is strict: a bad line fails it
        assert.has_error(function() prom.parse("weir_x{a=\"1\"} 1\nweir_x{a=\"1\"} 2\n") end)
        assert.has_error(function() prom.parse("weir_x{a=\"b\\q\"} 1\n") end)
        assert.has_error(function() prom.parse("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
                                               .. "h_count 1\n") end)
    end)

    it("has a Grafana dashboard whose queries name only metrics weir exports", function()
        local p = scrape()
        local dash = assert(cjson.decode(helpers.read_file(helpers.root .. "/examples/grafana/weir-dashboard.json")))
        local names = 0
        for _, panel in ipairs(dash.panels) do
            assert.is_true(#panel.targets > 0, panel.title)
            for _, t in ipairs(panel.targets) do
                for name in t.expr:gmatch("weir_[%w_]+") do
                    local family = name:gsub("_bucket$", ""):gsub("_count$", ""):gsub("_sum$", "")
                    assert.truthy(p.types[family], panel.title .. ": " .. name .. " is not a metric of weir")
                    names = names + 1
                end
            end
        end
        assert.is_true(names >= 15)
    end)

    it("counts known traffic exactly: messages, bytes, throttled, closes, handshakes, sessions", function()
        local before = scrape()
        local a = connect("/echo", KEYS.A)
        local b = connect("/echo", KEYS.B)
        local open = wait_metrics(function(p)
            return prom.value(p, "weir_connections_open", { api = "Echo", version = "1.0" }) == 2
        end, "2 connections open")
        assert.equal(2, prom.value(open, "weir_connections_open", { api = "Echo", version = "1.0" }))

        -- AppA: 7 messages of 10 bytes, all echoed
        local msgs = {}
        for i = 1, 7 do msgs[i] = string.format("a%09d", i) end
        assert.equal(7, #exchange(a, msgs))
        -- AppB (Silver: 5 an hour, drop): 8 messages of 3 bytes, 5 echoed
        msgs = {}
        for i = 1, 8 do msgs[i] = string.format("b%02d", i) end
        assert.equal(5, #exchange(b, msgs))
        close(a, 1000)
        close(b, 4001)

        local after = wait_metrics(function(p)
            return prom.value(p, "weir_connections_open", { api = "Echo", version = "1.0" }) == 0
                and delta(before, p, "weir_connections_closed_total",
                          { api = "Echo", version = "1.0", code = "4xxx", side = "client" }) == 1
                and delta(before, p, "weir_connections_closed_total",
                          { api = "Echo", version = "1.0", code = "1000", side = "client" }) == 1
        end, "both closes counted")
        local function d(name, app, dir)
            return delta(before, after, name, { api = "Echo", version = "1.0", application = app, direction = dir })
        end
        assert.equal(7, d("weir_messages_total", "AppA", "in"))
        assert.equal(7, d("weir_messages_total", "AppA", "out"))
        assert.equal(70, d("weir_message_bytes_total", "AppA", "in"))
        assert.equal(70, d("weir_message_bytes_total", "AppA", "out"))
        assert.equal(7, d("weir_frames_total", "AppA", "in"))
        assert.equal(0, d("weir_messages_throttled_total", "AppA", "in"))
        assert.equal(8, d("weir_messages_total", "AppB", "in"))
        assert.equal(5, d("weir_messages_total", "AppB", "out"))
        assert.equal(24, d("weir_message_bytes_total", "AppB", "in"))
        assert.equal(15, d("weir_message_bytes_total", "AppB", "out"))
        assert.equal(3, d("weir_messages_throttled_total", "AppB", "in"))
        assert.equal(0, d("weir_messages_throttled_total", "AppB", "out"))
        local hs = { api = "Echo", version = "1.0" }
        assert.equal(2, delta(before, after, "weir_handshake_duration_seconds_count", hs))
        assert.equal(2, delta(before, after, "weir_session_duration_seconds_count", hs))
        assert.is_true(delta(before, after, "weir_handshake_duration_seconds_sum", hs) > 0)
        local last = prom.value(after, "weir_last_access_timestamp_seconds",
                                { api = "Echo", version = "1.0", application = "AppA" })
        assert.is_true(last > os.time() - 60 and last < os.time() + 60)
        -- promtool (Debian's prometheus package), when installed, agrees with the strict parser
        if os.execute("command -v promtool >/dev/null 2>&1") == 0 then
            local file = helpers.write_file(helpers.tmpdir() .. "/metrics.txt", admin("GET", "/metrics").body)
            local out = io.popen("promtool check metrics < " .. file .. " 2>&1; echo rc=$?"):read("*a")
            assert.truthy(out:find("rc=0", 1, true), out)
            assert.equal("rc=0\n", out)
        end
    end)

    it("counts refusals by status and auth failures by reason, without the key", function()
        local before = scrape()
        for i = 1, 3 do
            local ws, res = helpers.ws_connect(gw.port, { path = "/echo",
                                                          headers = { ["X-API-Key"] = "wrong-key-" .. i .. "-secret" } })
            assert.is_nil(ws)
            assert.equal(401, res.status)
        end
        local ws, res = helpers.ws_connect(gw.port, { path = "/nowhere" })
        assert.is_nil(ws)
        assert.equal(404, res.status)
        ws, res = helpers.ws_connect(gw.port, { path = "/verdicts?reject=403" })
        assert.is_nil(ws)
        assert.equal(403, res.status)
        local after, text
        helpers.wait_until(function()
            local r = admin("GET", "/metrics")
            text = r.body
            after = prom.parse(text)
            return delta(before, after, "weir_handshakes_refused_total", { status = "401" }) == 3
                and delta(before, after, "weir_handshakes_refused_total", { status = "403" }) == 1
        end, 10, "refusals counted")
        assert.equal(3, delta(before, after, "weir_auth_failures_total", { api = "Echo", reason = "unauthorized" }))
        assert.equal(1, delta(before, after, "weir_auth_failures_total",
                              { api = "Verdicts", reason = "spec-rejected" }))
        assert.equal(1, delta(before, after, "weir_handshakes_refused_total", { status = "404" }))
        assert.is_nil(text:find("wrong-key", 1, true))
        assert.is_nil(text:find(TOKEN, 1, true))
    end)

    it("counts backend failures, policy errors and reloads", function()
        local before = scrape()
        local ws = connect("/down")
        local f = ws:recv_close(10)
        assert.equal(1014, f.code)
        ws:close()
        local ws2, res = helpers.ws_connect(gw.port, { path = "/verdicts?raise=1" })
        assert.is_nil(ws2)
        assert.equal(500, res.status)
        -- with fail_open the handshake goes on, and the failure is counted all the same
        local open = connect("/open?raise=1")
        close(open, 1000)
        assert.equal(200, admin("POST", "/reload").status)
        local after = wait_metrics(function(p)
            return delta(before, p, "weir_backend_failures_total", { api = "Down", version = "1.0" }) == 1
                and delta(before, p, "weir_policy_errors_total", { policy = "spec-verdicts" }) == 2
                and delta(before, p, "weir_reloads_total", { result = "applied" }) == 1
                and delta(before, p, "weir_connections_closed_total",
                          { api = "Down", version = "1.0", code = "1014", side = "weir" }) == 1
        end, "failures counted")
        assert.equal(1, delta(before, after, "weir_handshakes_refused_total", { status = "500" }))
        assert.equal(0, delta(before, after, "weir_reloads_total", { result = "refused" }))
        -- a backend that never answered is no handshake
        assert.equal(0, delta(before, after, "weir_handshake_duration_seconds_count", { api = "Down", version = "1.0" }))
    end)

    it("labels applications past max_applications \"other\", and escapes label values", function()
        -- AppA and AppB took 2 of the 3 labels (the first seen); "Odd \ App" takes the last, AppC is "other"
        local before = scrape()
        local odd = connect("/echo", KEYS.Odd)
        local c = connect("/echo", KEYS.C)
        assert.equal(2, #exchange(c, { "c1", "c2" }))
        assert.equal(1, #exchange(odd, { "odd" }))
        close(c, 1000)
        close(odd, 1000)
        local after = wait_metrics(function(p)
            return delta(before, p, "weir_messages_total",
                         { api = "Echo", version = "1.0", application = "other", direction = "out" }) == 2
                and delta(before, p, "weir_messages_total",
                          { api = "Echo", version = "1.0", application = "Odd \\ App", direction = "out" }) == 1
        end, "other counted")
        assert.equal(2, delta(before, after, "weir_messages_total",
                              { api = "Echo", version = "1.0", application = "other", direction = "in" }))
        for _, s in ipairs(after.samples) do
            local app = s.labels.application
            assert.is_true(app == nil or app == "" or app == "AppA" or app == "AppB" or app == "Odd \\ App"
                           or app == "other", app)
        end
        -- written escaped: a backslash doubled
        local text = admin("GET", "/metrics").body
        assert.truthy(text:find('application="Odd \\\\ App"', 1, true))
    end)

    it("answers usage by api, application and subscriber with the exact numbers, and the top ones", function()
        -- the traffic of the tests above, all within the last hour (a slow machine may
        -- have taken more than a minute since: the minute has a test of its own)
        local r = admin("GET", "/usage?by=application&range=hour")
        assert.equal(200, r.status, r.body)
        local by = {}
        for _, it in ipairs(r.json.items) do by[it.application] = it end
        assert.same({ application = "AppA", messages_in = 7, messages_out = 7, bytes_in = 70, bytes_out = 70,
                      throttled = 0, connections = 1, last_access = by.AppA.last_access }, by.AppA)
        assert.same({ application = "AppB", messages_in = 8, messages_out = 5, bytes_in = 24, bytes_out = 15,
                      throttled = 3, connections = 1, last_access = by.AppB.last_access }, by.AppB)
        assert.equal(2, by.AppC.messages_in)
        assert.equal(1, by["Odd \\ App"].messages_in)
        assert.truthy(by.AppA.last_access:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"))
        -- the same for the day, and the minute at most what the hour holds
        local minute = admin("GET", "/usage?by=application&range=minute&application=AppB").json.items[1]
        assert.is_true(minute == nil or minute.messages_in <= 8)
        for _, range in ipairs({ "day" }) do
            r = admin("GET", "/usage?by=application&range=" .. range .. "&application=AppB")
            assert.equal(200, r.status, r.body)
            assert.equal(1, #r.json.items)
            assert.equal(8, r.json.items[1].messages_in)
            assert.equal(3, r.json.items[1].throttled)
        end
        r = admin("GET", "/usage?by=subscriber&range=hour&api=Echo")
        local subs = {}
        for _, it in ipairs(r.json.items) do subs[it.subscriber] = it end
        assert.equal("AppA", subs.alice.application)
        assert.equal(7, subs.alice.messages_out)
        assert.equal(5, subs.bob.messages_out)
        r = admin("GET", "/usage?by=api&range=hour")
        local echo
        for _, it in ipairs(r.json.items) do if it.api == "Echo" then echo = it end end
        assert.equal(7 + 8 + 2 + 1, echo.messages_in)
        assert.equal(70 + 24 + 4 + 3, echo.bytes_in)
        assert.equal(4, echo.connections)
        -- top: the most messages first, LIMIT of them
        r = admin("GET", "/usage/top?by=application&range=hour&limit=2")
        assert.equal(200, r.status, r.body)
        assert.equal(2, #r.json.items)
        assert.equal("AppA", r.json.items[1].application)
        assert.equal("AppB", r.json.items[2].application)
        r = admin("GET", "/usage/top?by=application&range=hour&order=throttled&limit=1")
        assert.equal("AppB", r.json.items[1].application)
        -- bad queries
        for _, q in ipairs({ "by=host", "range=week", "limit=0", "order=random" }) do
            r = admin("GET", "/usage?" .. q)
            assert.equal(400, r.status, q)
            helpers.check_error(r.body, "/problems/bad-request", 400)
        end
    end)

    it("gives the snapshot of weir.stats (GET /stats): host totals, per API, per application", function()
        local function snap()
            local r = admin("GET", "/stats")
            assert.equal(200, r.status, r.body)
            local s = r.json
            s.api, s.app = {}, {}
            for _, a in ipairs(s.apis) do s.api[a.api .. "/" .. a.version] = a end
            for _, a in ipairs(s.applications) do s.app[a.application] = a end
            return s
        end
        local before = snap()
        local ws = connect("/echo", KEYS.A)
        assert.equal(3, #exchange(ws, { "abcd", "efgh", "ijkl" }))
        local mid
        helpers.wait_until(function()
            mid = snap()
            return mid.messages_out - before.messages_out == 3
        end, 10, "3 messages in the snapshot")
        assert.equal(before.connections_open + 1, mid.connections_open)
        assert.equal(1, mid.api["Echo/1.0"].connections_open)
        ws:close()
        assert.equal(3, mid.messages_in - before.messages_in)
        assert.equal(12, mid.bytes_in - before.bytes_in)
        assert.equal(12, mid.bytes_out - before.bytes_out)
        assert.equal(1, mid.handshakes - before.handshakes)
        assert.equal(3, mid.api["Echo/1.0"].messages_in - before.api["Echo/1.0"].messages_in)
        assert.equal(3, mid.app.AppA.messages_out - before.app.AppA.messages_out)
        assert.equal(12, mid.app.AppA.bytes_in - before.app.AppA.bytes_in)
        assert.is_true(mid.app.AppA.last_access_ms > before.app.AppA.last_access_ms)
        assert.is_true(math.abs(mid.now_ms / 1000 - os.time()) < 60)
        -- what the tests above counted
        assert.equal(3, before.app.AppB.throttled)
        assert.is_true(before.auth_failures >= 4)
        assert.is_true(before.policy_errors >= 2)
        assert.is_true(before.backend_failures >= 1)
    end)

    it("keeps every counter when a worker is killed with SIGKILL", function()
        local before = scrape()
        local pids = gw:worker_pids()
        assert.equal(2, #pids)
        for _, pid in ipairs(pids) do
            helpers.kill(pid, "KILL")
            helpers.wait_until(function()
                local now = gw:worker_pids()
                if #now ~= 2 then return false end
                for _, p in ipairs(now) do if p == pid then return false end end
                return true
            end, 15, "worker restarted")
        end
        helpers.wait_port(admin_port)
        local after
        helpers.wait_until(function()
            local ok, p = pcall(scrape)
            after = ok and p
            return after
        end, 10, "metrics after the restart")
        for _, s in ipairs(before.samples) do
            if before.types[s.name] == "counter" or s.name:match("_bucket$") or s.name:match("_count$") then
                local v = prom.value(after, s.name, s.labels)
                assert.is_true(v >= s.value, s.name .. " went down: " .. s.value .. " -> " .. v)
            end
        end
        assert.equal(10, delta({ samples = {} }, after, "weir_messages_total",
                               { api = "Echo", version = "1.0", application = "AppA", direction = "in" }))
        -- and the usage too
        local r = admin("GET", "/usage?by=application&range=hour&application=AppA")
        assert.equal(200, r.status, r.body)
        assert.equal(10, r.json.items[1].messages_in)
    end)

    it("answers the last minute of fresh traffic exactly", function()
        local ws = connect("/echo", KEYS.M)
        assert.equal(3, #exchange(ws, { "m1", "m22", "m333" }))
        close(ws, 1000)
        local item
        helpers.wait_until(function()
            local r = admin("GET", "/usage?by=subscriber&range=minute&application=AppM")
            item = r.json.items[1]
            return item and item.messages_out == 3 and item.connections == 1
        end, 10, "AppM's minute")
        assert.same({ "AppM", "mike", 3, 3, 9, 9, 0, 1 }, { item.application, item.subscriber, item.messages_in,
                     item.messages_out, item.bytes_in, item.bytes_out, item.throttled, item.connections })
    end)

    it("keeps names longer than a label holds, cut at 100 bytes on a character boundary", function()
        local ws = connect("/long", KEYS.Long)
        assert.equal(2, #exchange(ws, { "l1", "l22" }))
        close(ws, 1000)
        local app100 = LONG_APP:sub(1, 99)              -- "App" and 48 two-byte characters: 99 bytes
        local item
        helpers.wait_until(function()
            local r = admin("GET", "/usage?by=subscriber&range=hour")
            for _, it in ipairs(r.json.items) do
                if it.subscriber == LONG_SUB:sub(1, 100) then item = it end
            end
            return item and item.messages_out == 2
        end, 10, "the long key's usage")
        assert.same({ app100, 2, 5 }, { item.application, item.messages_in, item.bytes_in })
        local api
        for _, it in ipairs(admin("GET", "/usage?by=api&range=hour").json.items) do
            if it.api == LONG_API:sub(1, 100) then api = it end
        end
        assert.same({ "1.0", 2, 2 }, { api and api.version, api and api.messages_in, api and api.messages_out })
        local p = scrape()
        assert.equal(2, prom.value(p, "weir_messages_total", { api = LONG_API:sub(1, 100), version = "1.0",
                                                               application = "other", direction = "in" }))
    end)
end)

describe("the store's bounds (metrics.max_usage_keys, metrics.max_series)", function()
    local be, gw, admin_port
    local token = "admin-token-" .. string.rep("6", 24)

    local function get(path)
        local res = assert(helpers.http_request(admin_port, { path = path,
            headers = { { "Authorization", "Bearer " .. token } }, timeout = 10 }))
        assert.equal(200, res.status, res.body)
        return res.body
    end

    setup(function()
        be = helpers.start_backend("echo")
        local dir = helpers.tmpdir()
        helpers.write_file(dir .. "/admin.token", token .. "\n")
        local keys_file = helpers.write_file(dir .. "/keys.txt", table.concat({
            "sha256:" .. helpers.sha256(KEYS.A) .. "  application=AppA subscriber=alice",
            "sha256:" .. helpers.sha256(KEYS.B) .. "  application=AppB subscriber=bob",
        }, "\n") .. "\n")
        admin_port = helpers.free_port()
        gw = helpers.start_weir({
            workers = 1,
            admin = { port = admin_port, token_file = dir .. "/admin.token" },
            metrics = { max_usage_keys = 1, max_series = 64 },
            policy_paths = { helpers.fixture_policies },
            apis = {
                helpers.policy_api("Echo", "/echo", be, { { "key-auth", { keys_file = keys_file,
                                                                           header = "X-API-Key" } } }),
                helpers.policy_api("Verdicts", "/verdicts", be, { { "spec-verdicts", {} } }),
            },
        })
        helpers.wait_port(admin_port)
    end)

    teardown(helpers.cleanup)

    it("counts usage keys past the first under one \"other\" key, exactly", function()
        for _, k in ipairs({ { KEYS.A, 2 }, { KEYS.B, 3 } }) do
            local ws = assert(helpers.ws_connect(gw.port, { path = "/echo", headers = { ["X-API-Key"] = k[1] } }))
            for i = 1, k[2] do
                assert(ws:send_text("m" .. i))
                assert.equal("m" .. i, assert(ws:recv_message(5)).payload)
            end
            ws:close()
        end
        local items
        helpers.wait_until(function()
            items = {}
            for _, it in ipairs(cjson.decode(get("/usage?by=subscriber&range=minute")).items) do
                items[it.application .. "/" .. it.subscriber] = it
            end
            return items["other/other"] and items["other/other"].messages_out == 3
        end, 10, "the other key")
        assert.equal(2, items["AppA/alice"].messages_in)
        assert.equal(3, items["other/other"].messages_in)
        assert.equal(1, items["other/other"].connections)
        assert.is_nil(items["AppB/bob"])
    end)

    it("drops and counts what a full series table cannot hold, and the output stays whole", function()
        local before = prom.parse(get("/metrics"))
        local had = 0
        for _, s in ipairs(before.samples) do if s.name == "weir_handshakes_refused_total" then had = had + 1 end end
        -- 80 refusals, each with a status of its own: 80 new series wanted
        for status = 410, 489 do
            local ws, res = helpers.ws_connect(gw.port, { path = "/verdicts?reject=" .. status })
            assert.is_nil(ws)
            assert.equal(status, res.status)
        end
        -- a refusal is counted when its session is freed, once the client's
        -- socket is gone: wait until all 80 are kept or dropped
        local after, series
        helpers.wait_until(function()
            after = prom.parse(get("/metrics"))
            series = 0
            for _, s in ipairs(after.samples) do
                if s.name == "weir_handshakes_refused_total" then series = series + 1 end
            end
            return series - had + prom.value(after, "weir_metrics_dropped_total", {}) == 80
        end, 10, "all 80 refusals kept or dropped")
        for _, s in ipairs(after.samples) do
            if s.name == "weir_handshakes_refused_total" then assert.equal(1, s.value) end
        end
        -- what was in the table before (every family's series) plus the new ones make 64
        local used = 0
        for _, f in ipairs({ "weir_connections_closed_total", "weir_auth_failures_total",
                             "weir_handshakes_refused_total", "weir_backend_failures_total",
                             "weir_policy_errors_total", "weir_handshake_duration_seconds_count",
                             "weir_session_duration_seconds_count" }) do
            for _, s in ipairs(after.samples) do if s.name == f then used = used + 1 end end
        end
        for _, s in ipairs(after.samples) do
            if s.name == "weir_messages_total" and s.labels.direction == "in" then used = used + 1 end
        end
        assert.equal(64, used)
        assert.equal(80 - (series - had), prom.value(after, "weir_metrics_dropped_total", {}))
        assert.is_true(series - had < 80)
    end)
end)
