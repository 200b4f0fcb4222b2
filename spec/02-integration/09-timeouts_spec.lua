-- What weir does on its own clock: keep-alive pings, the idle timeout, the
-- handshake timeout and the close timeout (docs/protocol.md, "What weir
-- answers itself"). Limits are small so that the specs are quick; no
-- assertion is about how long anything took, only about what happened.
local helpers = require "helpers"

local function starts_with_weir(p) return type(p) == "string" and p:sub(1, 5) == "weir-" end

describe("keep-alive", function()
    local be, gw
    local seq = 0

    setup(function()
        be = helpers.start_backend("echo")
        gw = helpers.start_weir({
            limits = { ping_interval = "200ms", ping_timeout = "1s", idle_timeout = 0, close_timeout = 2 },
            apis = { helpers.api("Echo", "/echo", be) },
        })
    end)
    teardown(helpers.cleanup)

    local function tag() seq = seq + 1; return "k" .. seq end

    local function record(id, pred, what)
        return be:wait_conns(function(conns)
            for _, c in ipairs(conns) do
                if c.url == "/" .. id and (not pred or pred(c)) then return c end
            end
        end, 10, what or ("the backend record of " .. id))
    end

    it("pings a silent client and keeps a client that answers", function()
        local t = helpers.ws_client("node", { url = gw:url("/echo"), timeout = 30, steps = {
            { op = "wait", pings = 3 },
            { op = "send", text = "still open" }, { op = "wait", messages = 1 } } })
        assert.is_nil(t.error)
        local pings = helpers.events_of(t, "ping")
        assert.is_true(#pings >= 3)
        assert.equal("still open", helpers.events_of(t, "message")[1].text)
        assert.equal(1000, t.closed.code)
    end)

    it("gives its keep-alive pings a payload starting with weir-", function()
        local ws = assert(helpers.ws_connect(gw.port, { path = "/echo" }))
        local f = assert(ws:recv_frame(5))
        assert.equal(9, f.opcode)
        assert.is_true(starts_with_weir(f.payload), ("ping payload %q"):format(f.payload))
        ws:close_handshake(1000)
        ws:close()
    end)

    it("consumes the pongs answering its own pings (the backend never sees them)", function()
        local id = tag()
        helpers.ws_client("python", { url = gw:url("/echo/1.0/" .. id), timeout = 30, steps = {
            { op = "wait", pings = 2 } } })
        -- the client sends no ping of its own, so any pong is one answering weir
        local rec = record(id, function(c) return c.closed end)
        for _, e in ipairs(rec.events) do
            assert.is_false(e.type == "pong", "the backend got a pong answering weir's ping")
        end
    end)

    it("pings a silent backend too, and does not relay the backend's pong to the client", function()
        local id = tag()
        local t = helpers.ws_client("node", { url = gw:url("/echo/1.0/" .. id), timeout = 30, steps = {
            { op = "wait", pings = 3 } } })
        -- the client pings nobody: every ping at the backend is weir's, and
        -- any pong at the client would be the backend's answer to weir
        local rec = record(id, function(c) return c.closed end)
        local pings = 0
        for _, e in ipairs(rec.events) do
            if e.type == "ping" then pings = pings + 1 end
        end
        assert.is_true(pings >= 1, "the backend was never pinged by weir")
        assert.equal(0, #helpers.events_of(t, "pong"), "the client got the backend's pong to weir")
    end)

    it("drops a client that does not answer its pings, and closes the backend with 1001", function()
        local id = tag()
        local ws = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0/" .. id, auto_pong = false }))
        ws:send_text("hello")
        assert.equal("hello", assert(ws:recv_message()).payload)
        -- read (and never answer) until weir gives up on us
        local pinged = false
        local deadline = helpers.now() + 15
        while helpers.now() < deadline do
            local f, err = ws:recv_frame(1)
            if not f and err == "closed" then break end
            if f and f.opcode == 9 then pinged = true end      -- the backend never pings: weir does
            if f and f.opcode == 8 then ws:wait_closed(5); break end
        end
        ws:close()
        assert.is_true(pinged, "weir never pinged the client")
        local rec = record(id, function(c) return c.closed end, "the backend connection to close")
        assert.equal(1001, rec.closed.code)
        gw:wait_log(function(r) return r.msg == "keepalive timeout" and r.side == "client" end, 10)
    end)

    it("drops a node client with autoPong off", function()
        local id = tag()
        local t = helpers.ws_client("node", { url = gw:url("/echo/1.0/" .. id), auto_pong = false, timeout = 30,
            steps = { { op = "wait", close = true } } })
        assert.is_nil(t.error)
        assert.is_true(#helpers.events_of(t, "ping") >= 1)
        assert.is_table(t.closed)
        local rec = record(id, function(c) return c.closed end)
        assert.equal(1001, rec.closed.code)
    end)

    it("forwards a client's own ping to the backend and the backend's pong back", function()
        local t = helpers.ws_client("node", { url = gw:url("/echo"), steps = {
            { op = "ping", payload = "mine" }, { op = "wait", pongs = 1 } } })
        local pongs = helpers.events_of(t, "pong")
        assert.equal("mine", pongs[1].payload)
    end)
end)

describe("keep-alive towards a backend that does not answer pings", function()
    local mute, gw

    setup(function()
        mute = helpers.start_backend("echo", { auto_pong = false })
        gw = helpers.start_weir({
            limits = { ping_interval = "200ms", ping_timeout = "1s", idle_timeout = 0, close_timeout = 2 },
            apis = { helpers.api("Mute", "/mute", mute) },
        })
    end)
    teardown(helpers.cleanup)

    it("gives the client bad-gateway JSON and 1014 when the backend stops answering", function()
        local t = helpers.ws_client("node", { url = gw:url("/mute"), timeout = 30, steps = {
            { op = "send", text = "hello" }, { op = "wait", messages = 1 }, { op = "wait", close = true } } })
        assert.is_nil(t.error)
        local m = helpers.events_of(t, "message")
        assert.equal("hello", m[1].text)
        assert.equal(2, #m)
        helpers.check_error(m[2].text, "/problems/bad-gateway", 1014)
        assert.equal(1014, t.closed.code)
        local rec = mute:wait_conn(1)
        local pinged = false
        for _, e in ipairs(rec.events) do if e.type == "ping" then pinged = true end end
        assert.is_true(pinged, "weir never pinged the backend")
        gw:wait_log(function(r) return r.msg == "keepalive timeout" and r.side == "backend" end, 10)
    end)
end)

describe("idle timeout", function()
    local be, gw

    setup(function()
        be = helpers.start_backend("echo")
        gw = helpers.start_weir({
            limits = { idle_timeout = "1s", ping_interval = 0, close_timeout = 2 },
            apis = { helpers.api("Echo", "/echo", be) },
        })
    end)
    teardown(helpers.cleanup)

    for _, impl in ipairs(helpers.client_impls) do
        it("closes an idle " .. impl .. " client with idle-timeout JSON and 1001, and the backend with 1001", function()
            local id = impl .. "-idle"
            local t = helpers.ws_client(impl, { url = gw:url("/echo/1.0/" .. id), timeout = 30, steps = {
                { op = "send", text = "one" }, { op = "wait", messages = 1 }, { op = "wait", close = true } } })
            assert.is_nil(t.error)
            local m = helpers.events_of(t, "message")
            assert.equal(2, #m)
            helpers.check_error(m[2].text, "/problems/idle-timeout", 1001)
            assert.equal(1001, t.closed.code)
            local rec = be:wait_conns(function(conns)
                for _, c in ipairs(conns) do
                    if c.url == "/" .. id and c.closed then return c end
                end
            end, 10, "the backend connection to close")
            assert.equal(1001, rec.closed.code)
        end)
    end

    it("does not count pings as activity", function()
        local t = helpers.ws_client("node", { url = gw:url("/echo"), timeout = 30, steps = {
            { op = "ping", payload = "1" }, { op = "wait", pongs = 1 },
            { op = "ping", payload = "2" }, { op = "wait", pongs = 2 },
            { op = "wait", close = true } } })
        local m = helpers.events_of(t, "message")
        assert.equal(1, #m)
        helpers.check_error(m[1].text, "/problems/idle-timeout", 1001)
    end)
end)

describe("handshake timeout", function()
    local gw

    setup(function()
        gw = helpers.start_weir({
            limits = { handshake_timeout = "300ms" },
            apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9") },
        })
    end)
    teardown(helpers.cleanup)

    it("answers half a request with 408 and the request-timeout JSON, then closes", function()
        local c = assert(helpers.tcp(gw.port))
        c:send("GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        local res = assert(c:read_response(10))
        assert.equal(408, res.status)
        helpers.check_error(res.body, "/problems/request-timeout", 408)
        assert.truthy(c:wait_closed(10), "weir did not close the connection")
        c:close()
    end)

    it("drops a connection that sends nothing", function()
        local c = assert(helpers.tcp(gw.port))
        assert.truthy(c:wait_closed(10), "weir did not close the connection")
        c:close()
    end)

    it("still answers a complete request afterwards", function()
        local res = assert(helpers.http_request(gw.port, { path = "/healthz" }))
        assert.equal(200, res.status)
    end)
end)

describe("close timeout", function()
    local be, gw

    setup(function()
        be = helpers.start_backend("echo")
        gw = helpers.start_weir({
            limits = { close_timeout = "300ms", ping_interval = 0 },
            apis = { helpers.api("Echo", "/echo", be) },
        })
    end)
    teardown(helpers.cleanup)

    it("disconnects a client that never answers a close frame", function()
        local ws = assert(helpers.ws_connect(gw.port, { path = "/echo" }))
        ws:send_text('{"__ctl":"close","code":4003,"reason":"bye"}')
        local close = assert(ws:recv_close(5))
        assert.equal(4003, close.code)
        -- we do not answer: weir must end the TCP connection itself
        assert.truthy(ws:wait_closed(10), "weir kept the connection open")
        ws:close()
    end)
end)

-- A peer that stops reading while weir writes a large frame to it is never
-- pinged (its stream is inside a frame) and, with idle_timeout 0, nothing
-- else would ever drop it: limits.send_timeout does.
describe("send timeout", function()
    local rawws  = require "support.rawws"
    local socket = require "socket"
    local BIG = 16 * 1024 * 1024        -- more than the kernel buffers on both sides of weir hold
    local be, gw
    local seq = 0

    setup(function()
        be = helpers.start_backend("echo")
        gw = helpers.start_weir({
            limits = { send_timeout = "1s", idle_timeout = 0, ping_interval = 0, close_timeout = 2,
                       max_message_size = "32m", buffer_size = "64k" },
            apis = { helpers.api("Echo", "/echo", be) },
        })
    end)
    teardown(helpers.cleanup)

    -- Upgrade with a small receive buffer and have the backend send SIZE bytes.
    local function ask_big(size)
        seq = seq + 1
        local id = "send-" .. seq
        local c = assert(rawws.connect("127.0.0.1", gw.port, { path = "/echo/1.0/" .. id, rcvbuf = 4096 }))
        c:send_frame{ opcode = rawws.TEXT, payload = ('{"__ctl":"send","size":%d}'):format(size) }
        return c, id
    end

    local function send_timeouts()
        local n = 0
        for _, r in ipairs(gw:logs()) do if r.msg == "send timeout" then n = n + 1 end end
        return n
    end

    local function backend_closed(id)
        return be:wait_conns(function(conns)
            for _, r in ipairs(conns) do
                if r.url == "/" .. id and r.closed then return r end
            end
        end, 60, "the backend connection of " .. id .. " to close")
    end

    it("closes a client that stops reading in the middle of a frame, and the backend with 1001", function()
        local c, id = ask_big(BIG)
        -- never read: weir's queue for us fills and stays full
        local rec = gw:wait_log(function(r) return r.msg == "send timeout" and r.side == "client" end, 30)
        assert.is_true(rec.queued > 0)
        assert.equal(1001, backend_closed(id).closed.code)
        -- our socket was closed by weir: reading now ends (after what the kernel held) in a close or a reset
        c.sock:settimeout(10)
        local got = 0
        while true do
            local data, err, partial = c.sock:receive(1048576)
            got = got + #(data or partial or "")
            if err == "closed" or (err and err ~= "timeout") then break end
            assert.is_true(err ~= "timeout", "weir kept the stalled client's socket open")
        end
        assert.is_true(got < BIG, "the whole message arrived: the client was never stalled")
        c.sock:close()
    end)

    it("keeps a client that reads slowly but steadily", function()
        local size = 3 * 1024 * 1024
        local timeouts_before = send_timeouts()
        local c, id = ask_big(size)
        c.sock:settimeout(0.05)
        local got, deadline = 0, socket.gettime() + 60
        while got < size + 10 and socket.gettime() < deadline do
            local data, err, partial = c.sock:receive(32768)
            got = got + #(data or partial or "")
            assert.is_true(err == nil or err == "timeout", "connection ended: " .. tostring(err))
            socket.sleep(0.03)                  -- about 1 MB/s at most: slower than weir writes
        end
        assert.equal(size + 10, got)            -- the binary frame: 10 bytes of header, then the payload
        -- still open, with nothing stalled: an echo comes back
        c:send_frame{ opcode = rawws.TEXT, payload = "still here" }
        local f = assert(c:read_frame(10))
        assert.equal("still here", f.payload)
        assert.equal(timeouts_before, send_timeouts())
        c:send_close(1000)
        assert.equal(1000, backend_closed(id).closed.code)
    end)
end)
