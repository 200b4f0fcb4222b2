-- Half-open peers: a client or a backend that stops answering without a
-- FIN or an RST (its network vanished, its host froze) is found by
-- keep-alive within ping_interval + ping_timeout (docs/protocol.md,
-- "Keep-alive").
--
-- The peer is a process of its own on loopback, frozen with SIGSTOP once
-- its connection is open: it sends nothing more, answers no ping and never
-- closes, while its socket stays established. weir reads nothing from the
-- TCP layer underneath (its own acknowledgements, which a frozen process's
-- kernel still sends and a vanished network would not), only the peer's
-- frames, so to weir both are the same silent peer. Only loopback traffic:
-- no namespace, no link taken down, nothing that needs root.
local helpers = require "helpers"

-- The backend's record of the connection to /ID that satisfies PRED.
local function record(be, id, pred, what)
    return be:wait_conns(function(conns)
        for _, c in ipairs(conns) do
            if c.url == "/" .. id and pred(c) then return c end
        end
    end, 20, what)
end

local LIMITS = { ping_interval = "1s", ping_timeout = "1s", idle_timeout = 0, close_timeout = 2 }

describe("a half-open client", function()
    local be, gw

    setup(function()
        be = helpers.start_backend("echo")
        gw = helpers.start_weir({
            limits = LIMITS,
            apis = { helpers.api("Echo", "/echo", be) },
        })
    end)
    teardown(helpers.cleanup)

    it("is closed by keep-alive, and the backend gets 1001", function()
        local id = "half-open-client"
        local scenario = helpers.tmpdir() .. "/half-open-client.json"
        helpers.write_file(scenario, require("cjson").encode({
            url = ("ws://127.0.0.1:%d/echo/1.0/%s"):format(gw.port, id), timeout = 120,
            steps = { { op = "send", text = "hello" }, { op = "wait", messages = 1 }, { op = "wait", close = true } },
        }))
        local client = helpers.spawn({ "node", helpers.support .. "/client.js", scenario })
        -- the backend echoed the client's message: the session is open
        record(be, id, function(c) return c.messages == 1 end, "the client's message at the backend")
        helpers.kill(client, "STOP")
        gw:wait_log(function(r) return r.msg == "keepalive timeout" and r.side == "client" end, 30)
        local rec = record(be, id, function(c) return c.closed end, "the backend connection to close")
        assert.equal(1001, rec.closed.code)
        -- the client never closed: it is still there, frozen
        assert.is_true(helpers.alive(client))
    end)
end)

describe("a half-open backend", function()
    local be, gw

    setup(function()
        be = helpers.start_backend("echo")
        gw = helpers.start_weir({
            limits = LIMITS,
            apis = { helpers.api("Echo", "/echo", be) },
        })
    end)
    teardown(helpers.cleanup)

    it("is closed by keep-alive, and the client gets bad-gateway JSON and 1014", function()
        local ws = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0/half-open-backend" }))
        ws:send_text("hello")
        assert.equal("hello", assert(ws:recv_message(10)).payload)
        helpers.kill(be.pid, "STOP")
        -- read (answering weir's pings: this client is alive) until weir gives up on the backend
        local m, err, close = ws:recv_message(30)
        assert(m, "no error message before the close: " .. tostring(err))
        helpers.check_error(m.payload, "/problems/bad-gateway", 1014)
        m, err, close = ws:recv_message(10)
        assert.equal("close", err)
        assert.equal(1014, close.code)
        ws:close()
        gw:wait_log(function(r) return r.msg == "keepalive timeout" and r.side == "backend" end, 10)
        -- the backend never closed: it is still there, frozen
        assert.is_true(helpers.alive(be.pid))
    end)
end)
