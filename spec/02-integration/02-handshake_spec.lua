-- The client's handshake: routing to API versions, and every HTTP answer
-- weir gives itself (docs/protocol.md, "The handshake").
local helpers = require "helpers"

local function upgrade_headers(extra)
    local h = {
        { "Upgrade", "websocket" },
        { "Connection", "Upgrade" },
        { "Sec-WebSocket-Key", helpers.ws_key() },
        { "Sec-WebSocket-Version", "13" },
    }
    for _, kv in ipairs(extra or {}) do
        local replaced = false
        for _, x in ipairs(h) do
            if x[1]:lower() == kv[1]:lower() then x[2] = kv[2]; replaced = true end
        end
        if not replaced then h[#h + 1] = kv end
    end
    return h
end

-- Asserts an HTTP error answer: status, JSON content type, Connection: close,
-- and the error JSON body.
local function assert_http_error(res, status, ptype)
    assert.is_table(res, "no HTTP answer")
    assert.equal(status, res.status, res.raw)
    assert.truthy((res.headers["content-type"] or ""):lower():find("application/json", 1, true),
        "Content-Type is not application/json: " .. res.raw)
    assert.equal("close", (res.headers["connection"] or ""):lower(), "no Connection: close: " .. res.raw)
    return helpers.check_error(res.body, ptype, status)
end

describe("handshake", function()
    local be, gw

    setup(function()
        be = helpers.start_backend("echo")
        gw = helpers.start_weir({
            limits = { max_header_size = "16k" },
            apis = {
                { name = "Echo", context = "/echo", versions = {
                    { version = "1.0", default = true, endpoints = { production = be.url } },
                    { version = "2.0", endpoints = { production = be.url .. "/ws?v=2" } },
                } },
                { name = "Chat", context = "/chat", versions = {
                    { version = "1", default = true, endpoints = { production = be.url .. "/ws" } },
                } },
                { name = "NoDefault", context = "/nodefault", versions = {
                    { version = "1.0", endpoints = { production = be.url .. "/nd" } },
                } },
            },
        })
    end)
    teardown(helpers.cleanup)

    -- Opens a WebSocket through weir at PATH and asks the backend what
    -- request it received; returns the backend's connection record.
    local function backend_request(path, opts)
        opts = opts or {}
        opts.path = path
        local ws, res = helpers.ws_connect(gw.port, opts)
        assert(ws, "no 101 for " .. path .. ": " .. (type(res) == "table" and res.raw or tostring(res)))
        assert(ws:send_text('{"__ctl":"report"}'))
        local msg = assert(ws:recv_message(5))
        ws:close_handshake(1000)
        ws:close()
        return helpers.json(msg.payload).__report
    end

    describe("routing", function()
        it("/healthz answers 200 with {\"status\":\"ok\"}", function()
            local res = assert(helpers.http_request(gw.port, { path = "/healthz" }))
            assert.equal(200, res.status)
            assert.same({ status = "ok" }, helpers.json(res.body))
        end)

        it("an explicit version with no rest asks the endpoint for /", function()
            assert.equal("/", backend_request("/echo/1.0").url)
        end)

        it("the rest of the path and the query are relayed after an explicit version", function()
            assert.equal("/room/7?x=1", backend_request("/echo/1.0/room/7?x=1").url)
        end)

        it("the context alone selects the default version", function()
            assert.equal("/", backend_request("/echo").url)
        end)

        it("the context with a rest and query selects the default version and relays both", function()
            assert.equal("/room/7?x=1", backend_request("/echo/room/7?x=1").url)
        end)

        it("the endpoint's path comes before the client's rest", function()
            assert.equal("/ws/chat?x=1", backend_request("/chat/chat?x=1").url)
        end)

        it("the client's query follows the endpoint's own query", function()
            assert.equal("/ws?v=2&x=1", backend_request("/echo/2.0?x=1").url)
        end)

        it("a non-default version is reachable by name", function()
            assert.equal("/ws?v=2", backend_request("/echo/2.0").url)
        end)

        it("an API without a default version is reachable by explicit version", function()
            assert.equal("/nd", backend_request("/nodefault/1.0").url)
        end)

        it("a path matching no context answers 404 with the not-found error JSON", function()
            local res = helpers.http_request(gw.port, { path = "/nothing/here", headers = upgrade_headers() })
            assert_http_error(res, 404, "/problems/not-found")
        end)

        it("contexts match whole path segments (/echoes is not /echo)", function()
            local res = helpers.http_request(gw.port, { path = "/echoes", headers = upgrade_headers() })
            assert_http_error(res, 404, "/problems/not-found")
        end)

        it("a 404 also answers a plain HTTP request to an unknown path", function()
            local res = helpers.http_request(gw.port, { path = "/unknown" })
            assert_http_error(res, 404, "/problems/not-found")
        end)
    end)

    describe("dot segments in the request target (RFC 3986 5.2.4)", function()
        -- a ".." (also written %2e%2e, or between encoded slashes) that
        -- would take the path out of its API's context (or version)
        local climbing = {
            "/chat/../../admin",
            "/chat/1/%2e%2e/%2e%2e/admin",
            "/chat/..%2f..%2fadmin",
            "/chat/%2E%2E%2Fadmin",
            "/chat/room/..%2F..%2F..%2Fadmin",
            "/chat/room/../../../admin",
            "/chat/.%2e/x",
            "/chat/../chat/room",
            "/echo/1.0/../2.0",
            "/echo/..",
        }
        for _, path in ipairs(climbing) do
            it(path .. " answers 400 with the bad-request JSON", function()
                local res = helpers.http_request(gw.port, { path = path, headers = upgrade_headers() })
                assert_http_error(res, 400, "/problems/bad-request")
            end)
        end

        local normalised = {
            { "/chat/a/../room/7", "/ws/room/7" },
            { "/chat/./room/%2e/7", "/ws/room/7" },
            { "/chat/room/%2E%2E/lobby?x=../y", "/ws/lobby?x=../y" },
            { "/echo/1.0/room/..", "/" },
            { "/chat/group%2Fproject", "/ws/group%2Fproject" },
            { "/chat/file%2etxt/a.b/..c/.d", "/ws/file%2etxt/a.b/..c/.d" },
        }
        for _, case in ipairs(normalised) do
            it(case[1] .. " reaches the backend as " .. case[2], function()
                assert.equal(case[2], backend_request(case[1]).url)
            end)
        end

        it("frames sent with the request head follow it intact when its target loses dot segments", function()
            local ws = assert(helpers.ws_connect(gw.port, { path = "/chat/a/%2e%2e/./room",
                early = helpers.encode_frame{ opcode = 1, payload = '{"__ctl":"report"}' } }))
            local msg = assert(ws:recv_message(5))
            assert.equal("/ws/room", helpers.json(msg.payload).__report.url)
            ws:close_handshake(1000)
            ws:close()
        end)
    end)

    describe("ambiguous requests (RFC 9112 3.2, RFC 6455 4.2.1)", function()
        -- the upgrade headers, then EXTRA as given (repeated names included)
        local function with(extra)
            local h = upgrade_headers()
            for _, kv in ipairs(extra) do h[#h + 1] = kv end
            return h
        end
        local ambiguous = {
            { "two Host headers", { headers = with{ { "Host", "127.0.0.1" }, { "Host", "backend.example" } } } },
            { "two Sec-WebSocket-Key headers", { headers = with{ { "Sec-WebSocket-Key", helpers.ws_key() } } } },
            { "Content-Length on the upgrade", { headers = with{ { "Content-Length", "0" } } } },
            { "Transfer-Encoding on the upgrade", { headers = with{ { "Transfer-Encoding", "chunked" } } } },
            { "a #fragment in the request target", { path = "/echo/1.0/room#frag", headers = upgrade_headers() } },
            { "a lower-case method (get)", { method = "get", headers = upgrade_headers() } },
        }
        for _, case in ipairs(ambiguous) do
            it(case[1] .. " answers 400 with the bad-request JSON", function()
                local req = case[2]
                req.path = req.path or "/echo/1.0"
                local res = helpers.http_request(gw.port, req)
                assert_http_error(res, 400, "/problems/bad-request")
            end)
        end
    end)

    describe("HTTP answers", function()
        it("plain HTTP to an API answers 426 with Upgrade: websocket and the upgrade-required JSON", function()
            local res = helpers.http_request(gw.port, { path = "/echo/1.0" })
            assert_http_error(res, 426, "/problems/upgrade-required")
            assert.equal("websocket", (res.headers["upgrade"] or ""):lower())
        end)

        it("Sec-WebSocket-Version other than 13 answers 426 with Sec-WebSocket-Version: 13", function()
            local res = helpers.http_request(gw.port, { path = "/echo/1.0",
                headers = upgrade_headers({ { "Sec-WebSocket-Version", "8" } }) })
            assert_http_error(res, 426, "/problems/upgrade-required")
            assert.equal("13", res.headers["sec-websocket-version"])
        end)

        local bad = {
            { "a POST", { method = "POST" } },
            { "HTTP/1.0", { version = "HTTP/1.0" } },
            { "a missing Sec-WebSocket-Key", { headers = { { "Sec-WebSocket-Key", false } } } },
            { "a Sec-WebSocket-Key that is not 16 bytes in base64", { headers = { { "Sec-WebSocket-Key", "c2hvcnQ=" } } } },
            { "a missing Connection: upgrade", { headers = { { "Connection", "keep-alive" } } } },
        }
        for _, case in ipairs(bad) do
            it(case[1] .. " answers 400 with the bad-request JSON", function()
                local req = { path = "/echo/1.0", method = case[2].method, version = case[2].version,
                              headers = upgrade_headers(case[2].headers) }
                if req.method == "POST" then req.body = "" end
                local res = helpers.http_request(gw.port, req)
                assert_http_error(res, 400, "/problems/bad-request")
            end)
        end

        it("request line and headers over 16 KiB answer 431 with the request-header-too-large JSON", function()
            local res = helpers.http_request(gw.port, { path = "/echo/1.0",
                headers = upgrade_headers({ { "Cookie", "big=" .. string.rep("a", 17 * 1024) } }) })
            assert_http_error(res, 431, "/problems/request-header-too-large")
        end)

        it("a handshake of about 12 KiB (a big JWT and cookies) is accepted and relayed intact", function()
            local jwt = "eyJhbGciOiJSUzI1NiJ9." .. string.rep("QUJD", 2048) .. ".c2ln"     -- ~8 KiB
            local cookies = {}
            for i = 1, 40 do cookies[#cookies + 1] = ("c%d=%s"):format(i, string.rep("x", 90)) end
            local cookie = table.concat(cookies, "; ")                                        -- ~3.9 KiB
            local rec = backend_request("/echo/1.0", { headers = {
                { "Authorization", "Bearer " .. jwt }, { "Cookie", cookie } } })
            assert.equal("Bearer " .. jwt, (helpers.header(rec, "Authorization")))
            assert.equal(cookie, (helpers.header(rec, "Cookie")))
        end)

        it("Connection: keep-alive, Upgrade (as Firefox sends it) is accepted", function()
            local rec = backend_request("/echo/1.0", { headers = { { "Connection", "keep-alive, Upgrade" } } })
            assert.equal("/", rec.url)
        end)

        it("header names and the websocket token are matched case-insensitively", function()
            local ws, res = helpers.ws_connect(gw.port, { path = "/echo/1.0",
                headers = { { "Upgrade", "WebSocket" }, { "Connection", "upgrade" } } })
            assert(ws, type(res) == "table" and res.raw or tostring(res))
            ws:close()
        end)

        it("the 101 carries the Sec-WebSocket-Accept computed from the client's key", function()
            local ws = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0" }))
            assert.equal(helpers.ws_accept(ws.key), ws.response.headers["sec-websocket-accept"])
            assert.equal("websocket", ws.response.headers["upgrade"]:lower())
            assert.equal("upgrade", ws.response.headers["connection"]:lower())
            ws:close()
        end)
    end)
end)

describe("max_connections", function()
    local be, gw

    -- Connections closed by an earlier test are released asynchronously.
    local function connect()
        return helpers.wait_until(function()
            return helpers.ws_connect(gw.port, { path = "/echo" })
        end, 10, "a connection to be accepted")
    end

    setup(function()
        be = helpers.start_backend("echo")
        gw = helpers.start_weir({
            workers = 1,
            limits = { max_connections = 2 },
            apis = { helpers.api("Echo", "/echo", be) },
        })
    end)
    teardown(helpers.cleanup)

    it("a worker at its share of max_connections answers 503 with the reach-maximum-connections JSON", function()
        local a = connect()
        local b = connect()
        local res = assert(helpers.http_request(gw.port, { path = "/echo", headers = upgrade_headers() }))
        assert_http_error(res, 503, "/problems/reach-maximum-connections")
        a:close_handshake(1000)
        a:close()
        b:close_handshake(1000)
        b:close()
    end)

    it("a slot freed by a closed connection is available again", function()
        local a = connect()
        local b = connect()
        b:close_handshake(1000)
        b:close()
        local c = connect()
        c:close_handshake(1000)
        c:close()
        a:close_handshake(1000)
        a:close()
    end)
end)

-- weir sends its request to the backend as soon as connect() returns,
-- which over loopback nearly always finds the connection made; when it is
-- still on its way, the send is refused (EAGAIN) and weir waits for the
-- connection before it writes (core/handshake.c, weir_backend_connect).
describe("handshake with a backend whose connection is still on its way", function()
    teardown(helpers.cleanup)

    it("gets the request through once the connection is made, and relays both ways", function()
        local out = helpers.tmpdir() .. "/late-accept.stdout"
        local err = helpers.tmpdir() .. "/late-accept.stderr"
        local pid = helpers.spawn({ "/usr/bin/python3", helpers.support .. "/late_accept.py" },
            { stdout = out, stderr = err })
        local function said()
            local lines = {}
            for l in (helpers.read_file(out) or ""):gmatch("[^\n]+") do lines[#lines + 1] = helpers.json(l) end
            return lines
        end
        local ready = helpers.wait_until(function()
            if not helpers.alive(pid) then error("late_accept.py died: " .. (helpers.read_file(err) or "")) end
            return said()[1]
        end, 15, "late_accept.py to listen")
        local gw = helpers.start_weir({
            apis = { helpers.api("Late", "/late", "ws://127.0.0.1:" .. ready.port) },
        })
        local t = helpers.ws_client("node", { url = gw:url("/late/room-7"), steps = {
            { op = "send", text = "hello" }, { op = "wait", messages = 1 },
            { op = "close", code = 1000 }, { op = "wait", close = true } } })
        assert.is_nil(t.error, "client error: " .. tostring(t.error))
        assert.equal(101, t.handshake and t.handshake.status)
        local m = helpers.events_of(t, "message")
        assert.equal(1, #m)
        assert.equal("hello", m[1].text)
        assert.equal(1000, t.closed and t.closed.code)
        local lines = helpers.wait_until(function()
            local l = said()
            if l[#l] and l[#l]["end"] then return l end
        end, 15, "the backend's end")
        -- weir's connection was seen in SYN_SENT before the backend took it
        assert.same({ { port = ready.port }, { pending = true }, { path = "/room-7" }, { ["end"] = "close" } }, lines)
        gw:stop()
        helpers.stop_pid(pid)
    end)
end)
