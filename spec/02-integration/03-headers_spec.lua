-- What weir sends the backend in its handshake, and what of the backend's
-- 101 reaches the client (docs/protocol.md, "Headers towards the backend").
local helpers = require "helpers"

describe("forwarded headers", function()
    local be, plain, gw

    setup(function()
        -- `be` chooses the subprotocol "beta" when offered and adds headers of
        -- its own to its 101; `plain` chooses none.
        be = helpers.start_backend("echo", { protocol = "beta",
            headers_101 = { ["X-Backend-Secret"] = "s3cret", ["Set-Cookie"] = "session=backend" } })
        plain = helpers.start_backend("echo")
        gw = helpers.start_weir({ apis = {
            helpers.api("Echo", "/echo", be),
            helpers.api("Plain", "/plain", plain),
        } })
    end)
    teardown(helpers.cleanup)

    -- Opens a WebSocket through weir, waits until the backend has the
    -- connection, closes, and returns (backend record, client ws).
    local function through(opts, backend)
        backend = backend or be
        local before = #backend:connections()
        opts.path = opts.path or "/echo"
        local ws, res = helpers.ws_connect(gw.port, opts)
        assert(ws, "no 101: " .. (type(res) == "table" and res.raw or tostring(res)))
        local rec = backend:wait_conn(before + 1)
        ws:close_handshake(1000)
        ws:close()
        return rec, ws
    end

    local function all_names(rec)
        local names = {}
        for _, kv in ipairs(rec.headers) do names[#names + 1] = kv[1]:lower() end
        return names
    end

    local function count(rec, name)
        local _, all = helpers.header(rec, name)
        return #all
    end

    it("X-Forwarded-For is the client's address when the client sent none", function()
        local rec = through({})
        assert.equal("127.0.0.1", (helpers.header(rec, "X-Forwarded-For")))
    end)

    it("X-Forwarded-For appends the client's address to the client's value", function()
        local rec = through({ headers = { { "X-Forwarded-For", "203.0.113.7" } } })
        local _, all = helpers.header(rec, "X-Forwarded-For")
        assert.same({ "203.0.113.7, 127.0.0.1" }, all)
    end)

    it("X-Forwarded-Proto and X-Forwarded-Host sent by the client are replaced by weir's", function()
        local rec = through({ host = "real.example.test", headers = {
            { "X-Forwarded-Proto", "https" }, { "X-Forwarded-Host", "spoofed.example.test" } } })
        local _, proto = helpers.header(rec, "X-Forwarded-Proto")
        local _, host = helpers.header(rec, "X-Forwarded-Host")
        assert.same({ "http" }, proto)
        assert.same({ "real.example.test" }, host)
    end)

    it("X-Forwarded-Proto is http on a ws:// listener", function()
        assert.equal("http", (helpers.header(through({}), "X-Forwarded-Proto")))
    end)

    it("X-Forwarded-Host is the client's Host", function()
        local rec = through({ host = "gateway.example.test:8443" })
        assert.equal("gateway.example.test:8443", (helpers.header(rec, "X-Forwarded-Host")))
    end)

    it("Host is the endpoint's host:port", function()
        local rec = through({ host = "gateway.example.test" })
        local _, all = helpers.header(rec, "Host")
        assert.same({ "127.0.0.1:" .. be.port }, all)
    end)

    it("Origin is passed as sent", function()
        local rec = through({ headers = { { "Origin", "https://app.example.test" } } })
        assert.equal("https://app.example.test", (helpers.header(rec, "Origin")))
    end)

    it("Sec-WebSocket-Protocol is the client's offer as sent", function()
        local rec = through({ protocols = { "alpha", "beta" } })
        assert.equal("alpha, beta", (helpers.header(rec, "Sec-WebSocket-Protocol")))
    end)

    it("Cookie, Authorization, User-Agent and custom headers are sent as-is, in the client's order", function()
        local rec = through({ headers = {
            { "X-First", "1" },
            { "Cookie", "a=1; b=2" },
            { "Authorization", "Bearer abc.def.ghi" },
            { "User-Agent", "spec-agent/1.0" },
            { "X-Last", "last" },
        } })
        assert.equal("a=1; b=2", (helpers.header(rec, "Cookie")))
        assert.equal("Bearer abc.def.ghi", (helpers.header(rec, "Authorization")))
        assert.equal("spec-agent/1.0", (helpers.header(rec, "User-Agent")))
        assert.equal("1", (helpers.header(rec, "X-First")))
        assert.equal("last", (helpers.header(rec, "X-Last")))
        local order = {}
        for _, n in ipairs(all_names(rec)) do
            if n == "x-first" or n == "cookie" or n == "authorization" or n == "user-agent" or n == "x-last" then
                order[#order + 1] = n
            end
        end
        assert.same({ "x-first", "cookie", "authorization", "user-agent", "x-last" }, order)
    end)

    it("a header repeated by the client is sent repeated, in order", function()
        local rec = through({ headers = { { "X-Multi", "one" }, { "X-Multi", "two" } } })
        local _, all = helpers.header(rec, "X-Multi")
        assert.same({ "one", "two" }, all)
    end)

    it("hop-by-hop headers are not sent", function()
        local rec = through({ headers = {
            { "Keep-Alive", "timeout=5" },
            { "Proxy-Connection", "keep-alive" },
            { "Proxy-Authenticate", "Basic" },
            { "Proxy-Authorization", "Basic dXNlcjpwYXNz" },
            { "TE", "trailers" },
            { "Trailer", "X-Checksum" },
        } })
        -- (Content-Length and Transfer-Encoding on an upgrade are refused: 02-handshake_spec.lua)
        for _, name in ipairs({ "keep-alive", "proxy-connection", "proxy-authenticate",
                                "proxy-authorization", "te", "trailer" }) do
            assert.equal(0, count(rec, name), name .. " was sent to the backend")
        end
    end)

    it("headers named in the client's Connection header are not sent", function()
        local rec = through({ headers = {
            { "Connection", "Upgrade, X-Hop-Secret" },
            { "X-Hop-Secret", "do not forward" },
            { "X-Kept", "yes" },
        } })
        assert.equal(0, count(rec, "X-Hop-Secret"))
        assert.equal("yes", (helpers.header(rec, "X-Kept")))
    end)

    it("Upgrade, Connection and Sec-WebSocket-Version are weir's own, each sent once", function()
        local rec = through({ headers = { { "Connection", "keep-alive, Upgrade" }, { "Upgrade", "WebSocket" } } })
        local _, up = helpers.header(rec, "Upgrade")
        local _, conn = helpers.header(rec, "Connection")
        local _, ver = helpers.header(rec, "Sec-WebSocket-Version")
        assert.same({ "websocket" }, { up[1] and up[1]:lower() })
        assert.equal(1, #up)
        assert.same({ "upgrade" }, { conn[1] and conn[1]:lower() })
        assert.equal(1, #conn)
        assert.same({ "13" }, ver)
    end)

    it("Sec-WebSocket-Key is a fresh 16-byte key, never the client's", function()
        local key = helpers.ws_key()
        local rec = through({ key = key })
        local _, keys = helpers.header(rec, "Sec-WebSocket-Key")
        assert.equal(1, #keys)
        assert.is_not.equal(key, keys[1])
        assert.truthy(keys[1]:match("^[A-Za-z0-9+/]+==$") and #keys[1] == 24, "not a 16-byte base64 key: " .. keys[1])
    end)

    it("each backend handshake gets a different key", function()
        local a = through({})
        local b = through({})
        assert.is_not.equal((helpers.header(a, "Sec-WebSocket-Key")), (helpers.header(b, "Sec-WebSocket-Key")))
    end)

    it("Sec-WebSocket-Extensions is not sent even when the client offers one", function()
        local rec = through({ headers = { { "Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits" } } })
        assert.equal(0, count(rec, "Sec-WebSocket-Extensions"))
    end)

    describe("the client's 101", function()
        it("carries the subprotocol the backend chose", function()
            local _, ws = through({ protocols = { "alpha", "beta" } })
            assert.equal("beta", ws.response.headers["sec-websocket-protocol"])
        end)

        it("carries no subprotocol when the backend chose none", function()
            local _, ws = through({ path = "/plain", protocols = { "alpha", "beta" } }, plain)
            assert.is_nil(ws.response.headers["sec-websocket-protocol"])
        end)

        it("relays no other header of the backend's 101", function()
            local _, ws = through({})
            assert.is_nil(ws.response.headers["x-backend-secret"])
            assert.is_nil(ws.response.headers["set-cookie"])
        end)

        it("negotiates no extension", function()
            local _, ws = through({ headers = { { "Sec-WebSocket-Extensions", "permessage-deflate" } } })
            assert.is_nil(ws.response.headers["sec-websocket-extensions"])
        end)

        for _, impl in ipairs(helpers.client_impls) do
            it("gives the " .. impl .. " client the backend's subprotocol and no extension", function()
                local t = helpers.ws_client(impl, { url = gw:url("/echo"), protocols = { "alpha", "beta" },
                    steps = { { op = "send", text = "hi" }, { op = "wait", messages = 1 } } })
                assert.is_nil(t.error)
                assert.equal("beta", t.protocol)
                assert.is_nil(t.extensions ~= "" and t.extensions or nil)
                assert.equal("hi", helpers.events_of(t, "message")[1].text)
            end)
        end
    end)
end)
