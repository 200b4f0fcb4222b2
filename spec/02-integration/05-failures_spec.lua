-- When a backend fails, a message is too big, or a client vanishes
-- (docs/protocol.md: the handshake table, "Protocol errors", "Close").
local helpers = require "helpers"

describe("failures", function()
    local refuse, http, badaccept, echo, rogue_proto, rogue_ext, gw
    local seq = 0

    setup(function()
        refuse = helpers.start_backend("refuse")
        http = helpers.start_backend("http")
        badaccept = helpers.start_backend("bad-accept")
        echo = helpers.start_backend("echo")
        rogue_proto = helpers.start_backend("frames", { force_protocol = "never-offered" })
        rogue_ext = helpers.start_backend("frames", { extensions = "permessage-deflate" })
        gw = helpers.start_weir({
            limits = { max_message_size = "64k", close_timeout = 2 },
            apis = {
                helpers.api("Refused", "/refused", refuse),
                helpers.api("Http", "/http", http),
                helpers.api("BadAccept", "/badaccept", badaccept),
                helpers.api("Echo", "/echo", echo),
                helpers.api("RogueProto", "/rogue-proto", rogue_proto),
                helpers.api("RogueExt", "/rogue-ext", rogue_ext),
            },
        })
    end)
    teardown(helpers.cleanup)

    local function tag()
        seq = seq + 1
        return "f" .. seq
    end

    local function record(backend, id, pred, what)
        return backend:wait_conns(function(conns)
            for _, c in ipairs(conns) do
                if c.url == "/" .. id and (not pred or pred(c)) then return c end
            end
        end, 10, what or ("the backend record of " .. id))
    end

    -- The client's upgrade completed, then it got exactly one error JSON
    -- text frame of PTYPE/CODE and a close CODE whose reason is the message.
    local function assert_error_then_close(t, ptype, code)
        assert.is_nil(t.error, "client error: " .. tostring(t.error))
        assert.equal(101, t.handshake and t.handshake.status)
        local m = helpers.events_of(t, "message")
        assert.equal(1, #m, "expected exactly one message before the close")
        assert.equal(1, m[1].opcode)
        local err = helpers.check_error(m[1].text, ptype, code)
        assert.is_table(t.closed, "the connection was not closed")
        assert.equal(code, t.closed.code)
        assert.equal(err.error.message:sub(1, 123), t.closed.reason)
        return err
    end

    local WAIT_CLOSE = { { op = "wait", close = true } }

    for _, impl in ipairs(helpers.client_impls) do
        describe("with the " .. impl .. " client", function()
            it("a refused backend connection gives bad-gateway JSON then close 1014", function()
                local t = helpers.ws_client(impl, { url = gw:url("/refused"), steps = WAIT_CLOSE })
                assert_error_then_close(t, "/problems/bad-gateway", 1014)
            end)

            it("a backend answering HTTP 200 gives bad-gateway JSON then close 1014", function()
                local t = helpers.ws_client(impl, { url = gw:url("/http"), steps = WAIT_CLOSE })
                assert_error_then_close(t, "/problems/bad-gateway", 1014)
            end)

            it("a backend answering 101 with a wrong Sec-WebSocket-Accept gives bad-gateway JSON then close 1014", function()
                local t = helpers.ws_client(impl, { url = gw:url("/badaccept"), steps = WAIT_CLOSE })
                assert_error_then_close(t, "/problems/bad-gateway", 1014)
            end)

            it("a backend dropping its TCP connection mid-stream gives bad-gateway JSON then close 1014", function()
                local t = helpers.ws_client(impl, { url = gw:url("/echo"), steps = {
                    { op = "send", text = "before" }, { op = "wait", messages = 1 },
                    { op = "send", text = '{"__ctl":"terminate"}' }, { op = "wait", close = true } } })
                assert.is_nil(t.error)
                local m = helpers.events_of(t, "message")
                assert.equal("before", m[1].text)
                assert.equal(2, #m, "expected the echo and then one error JSON")
                helpers.check_error(m[2].text, "/problems/bad-gateway", 1014)
                assert.equal(1014, t.closed.code)
            end)

            it("a message over max_message_size gives message-too-big JSON then close 1009", function()
                local t = helpers.ws_client(impl, { url = gw:url("/echo"), steps = {
                    { op = "send", size = 100 * 1024 }, { op = "wait", close = true } } })
                assert_error_then_close(t, "/problems/message-too-big", 1009)
            end)
        end)
    end

    it("a failed backend still completes the upgrade with the client's first subprotocol", function()
        local t = helpers.ws_client("node", { url = gw:url("/refused"), protocols = { "chat.v2", "chat.v1" },
            steps = WAIT_CLOSE })
        assert.equal("chat.v2", t.protocol)
        assert_error_then_close(t, "/problems/bad-gateway", 1014)
    end)

    it("a backend choosing a subprotocol the client did not offer gives bad-gateway JSON then close 1014", function()
        local t = helpers.ws_client("node", { url = gw:url("/rogue-proto"), protocols = { "chat" }, steps = WAIT_CLOSE })
        assert_error_then_close(t, "/problems/bad-gateway", 1014)
        assert.equal("chat", t.protocol)
    end)

    it("a backend negotiating an extension gives bad-gateway JSON then close 1014", function()
        local t = helpers.ws_client("python", { url = gw:url("/rogue-ext"), steps = WAIT_CLOSE })
        assert_error_then_close(t, "/problems/bad-gateway", 1014)
        assert.is_nil(t.extensions)
    end)

    it("the backend answering HTTP 200 was asked for the upgrade (the 200 is not relayed)", function()
        local t = helpers.ws_client("node", { url = gw:url("/http"), steps = WAIT_CLOSE })
        assert.equal(101, t.handshake.status)
        assert.is_true(#http:connections() >= 1)
    end)

    it("a backend process killed mid-stream gives the client bad-gateway JSON then close 1014", function()
        local dying = helpers.start_backend("echo")
        local gw2 = helpers.start_weir({ apis = { helpers.api("Dying", "/dying", dying) } })
        local c = helpers.ws_client_start("node", { url = gw2:url("/dying"), steps = {
            { op = "send", text = "hello" }, { op = "wait", messages = 1 }, { op = "wait", close = true } } })
        dying:wait_conns(function(conns) return conns[1] and conns[1].messages >= 1 end, 10, "the message at the backend")
        dying:stop("KILL")
        local t = c:wait()
        local m = helpers.events_of(t, "message")
        assert.equal("hello", m[1].text)
        assert.equal(2, #m)
        helpers.check_error(m[2].text, "/problems/bad-gateway", 1014)
        assert.equal(1014, t.closed.code)
        gw2:stop()
    end)

    it("an oversized message is refused before any of it reaches the backend, which gets close 1001", function()
        local id = tag()
        local t = helpers.ws_client("node", { url = gw:url("/echo/1.0/" .. id), steps = {
            { op = "send", size = 100 * 1024 }, { op = "wait", close = true } } })
        assert.equal(1009, t.closed.code)
        local rec = record(echo, id, function(c) return c.closed end)
        assert.equal(0, rec.messages)
        assert.equal(1001, rec.closed.code)
    end)

    it("a message of exactly max_message_size passes", function()
        local t = helpers.ws_client("node", { url = gw:url("/echo"), steps = {
            { op = "send", size = 64 * 1024 }, { op = "wait", messages = 1 } } })
        local m = helpers.events_of(t, "message")
        assert.equal(64 * 1024, m[1].length)
        assert.equal(t.sent[1].sha256, m[1].sha256)
        assert.equal(1000, t.closed.code)
    end)

    it("a fragmented message whose fragments add up over max_message_size gets close 1009", function()
        local part = string.rep("A", 40 * 1024)
        local t = helpers.ws_client("python", { url = gw:url("/echo"), steps = {
            { op = "fragments", text = { part, part } }, { op = "wait", close = true } } })
        assert_error_then_close(t, "/problems/message-too-big", 1009)
    end)

    it("a client that vanishes (TCP closed, no close frame) is reported to the backend as 1001", function()
        local id = tag()
        local ws = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0/" .. id }))
        ws:send_text("hello")
        assert.equal("hello", assert(ws:recv_message()).payload)
        ws:close()
        local rec = record(echo, id, function(c) return c.closed end)
        assert.equal(1001, rec.closed.code)
        assert.is_true(rec.closed.clean, "the backend got no close frame")
    end)

    it("a node client terminating its socket is reported to the backend as 1001", function()
        local id = tag()
        helpers.ws_client("node", { url = gw:url("/echo/1.0/" .. id), steps = {
            { op = "send", text = "x" }, { op = "wait", messages = 1 }, { op = "drop" } } })
        local rec = record(echo, id, function(c) return c.closed end)
        assert.equal(1001, rec.closed.code)
    end)

    it("weir keeps serving after every failure above", function()
        local t = helpers.ws_client("node", { url = gw:url("/echo"), steps = {
            { op = "send", text = "still here" }, { op = "wait", messages = 1 } } })
        assert.equal("still here", helpers.events_of(t, "message")[1].text)
        assert.is_true(gw:alive())
    end)
end)
