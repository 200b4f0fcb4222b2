-- message-schema through a real gateway (docs/policies/message-schema.md):
-- valid messages reach the backend; a refused one never does, and the client
-- gets /problems/invalid-message, then a close when so configured.
local helpers = require "helpers"

local PROBLEM = "/problems/invalid-message"

describe("message-schema through weir", function()
    local be, gw
    local seq = 0

    setup(function()
        be = helpers.start_backend("echo")
        gw = helpers.start_weir({
            workers = 1,
            apis = {
                helpers.policy_api("Drop", "/drop", be, {
                    { "message-schema", { types = { "chat", "ping" } } } }),
                helpers.policy_api("Close", "/close", be, {
                    { "message-schema", { on_violation = "close" } } }),
                helpers.policy_api("Close4400", "/close4400", be, {
                    { "message-schema", { on_violation = "close", close_code = 4400 } } }),
                helpers.policy_api("Sized", "/sized", be, {
                    { "message-schema", { max_size = 32, allow_binary = true } } }),
                helpers.policy_api("Fields", "/fields", be, {
                    { "message-schema", { required = { text = "string" }, optional = { seq = "integer" } } } }),
            },
        })
    end)
    teardown(helpers.cleanup)

    local function connect(context)
        seq = seq + 1
        local id = "c" .. seq
        local ws, res = helpers.ws_connect(gw.port, { path = context .. "/1.0/" .. id })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        return ws, id
    end

    local recv = helpers.recv_payload

    local ask = helpers.ask

    -- The data messages the backend received on connection ID (waits until
    -- it has WANT of them, or until it is closed when WANT is nil).
    local function at_backend(id, want)
        local rec = be:wait_conns(function(conns)
            for _, c in ipairs(conns) do
                if c.url == "/" .. id and ((want and c.messages >= want) or (not want and c.closed)) then return c end
            end
        end, 10, "the backend record of " .. id)
        local out = {}
        for _, e in ipairs(rec.events) do
            if e.type == "message" then out[#out + 1] = e.text or e.b64 end
        end
        return out, rec
    end

    local function refusal(payload, message, code)
        local j = helpers.check_error(payload, PROBLEM, code or 1008)
        assert.equal(message, j.error.message)
    end

    it("passes a valid message to the backend unchanged", function()
        local ws, id = connect("/drop")
        local msg = '{"type":"chat","text":"héllo"}'
        assert.equal(msg, ask(ws, msg))
        assert.same({ msg }, at_backend(id, 1))
        ws:close()
    end)

    it("passes a valid message sent in fragments, as one message", function()
        local ws, id = connect("/drop")
        assert(ws:send_text('{"type":', false))
        assert(ws:send_cont('"ping"}', true))
        assert.equal('{"type":"ping"}', recv(ws))
        assert.same({ '{"type":"ping"}' }, at_backend(id, 1))
        ws:close()
    end)

    it("drops text that is not JSON: the client gets the error JSON, the backend never gets it", function()
        local ws, id = connect("/drop")
        refusal(ask(ws, "hello"), "message is not valid JSON")
        local ok = '{"type":"chat"}'
        assert.equal(ok, ask(ws, ok))
        assert.same({ ok }, at_backend(id, 1))
        ws:close()
    end)

    it("drops a message of a type not listed", function()
        local ws, id = connect("/drop")
        refusal(ask(ws, '{"type":"admin"}'), '"type" must be one of: chat, ping')
        refusal(ask(ws, '{"text":"no type"}'), 'message has no "type" field (a non-empty string)')
        refusal(ask(ws, '[1,2]'), "message is not a JSON object")
        local ok = '{"type":"ping"}'
        assert.equal(ok, ask(ws, ok))
        assert.same({ ok }, at_backend(id, 1))
        ws:close()
    end)

    it("drops a binary message unless allow_binary is set", function()
        local ws, id = connect("/drop")
        assert(ws:send_binary("\1\2\3"))
        refusal(recv(ws), "binary messages are not accepted")
        assert.equal('{"type":"chat"}', ask(ws, '{"type":"chat"}'))
        assert.same({ '{"type":"chat"}' }, at_backend(id, 1))
        ws:close()
    end)

    it("with on_violation = \"close\": the error JSON, then close 1008; the backend gets 1001 and never the message", function()
        local ws, id = connect("/close")
        assert.equal('{"type":"a"}', ask(ws, '{"type":"a"}'))
        assert(ws:send_text("not json"))
        local j, close = helpers.expect_error_close(ws, PROBLEM, 1008)
        assert.equal("message is not valid JSON", j.error.message)
        assert.equal("message is not valid JSON", close.reason)
        local msgs, rec = at_backend(id)
        assert.same({ '{"type":"a"}' }, msgs)
        assert.equal(1001, rec.closed.code)
    end)

    it("with close_code = 4400: the error JSON carries 4400 and the close is 4400", function()
        local ws, id = connect("/close4400")
        assert(ws:send_text('{"type":""}'))
        local j = helpers.expect_error_close(ws, PROBLEM, 4400)
        assert.equal('message has no "type" field (a non-empty string)', j.error.message)
        assert.same({}, at_backend(id))
    end)

    it("max_size refuses a larger message, text or binary; allow_binary passes smaller binary ones", function()
        local ws, id = connect("/sized")
        assert(ws:send_binary("\0\1\2"))
        local p, m = recv(ws)
        assert.same({ "\0\1\2", 2 }, { p, m.opcode })
        refusal(ask(ws, '{"type":"chat","pad":"' .. string.rep("x", 32) .. '"}'), "message is larger than 32 bytes")
        assert(ws:send_binary(string.rep("\255", 33)))
        refusal(recv(ws), "message is larger than 32 bytes")
        assert.equal('{"type":"t"}', ask(ws, '{"type":"t"}'))
        assert.equal(2, #at_backend(id, 2))
        ws:close()
    end)

    it("checks required and optional fields, naming the one that is wrong", function()
        local ws, id = connect("/fields")
        refusal(ask(ws, '{"type":"chat"}'), 'message needs a "text" field: a string')
        refusal(ask(ws, '{"type":"chat","text":"a","seq":1.5}'), '"seq" must be an integer')
        local ok = '{"type":"chat","text":"a","seq":2}'
        assert.equal(ok, ask(ws, ok))
        assert.same({ ok }, at_backend(id, 1))
        ws:close()
    end)

    it("checks a fragmented message whole: refused when its fragments make no JSON", function()
        local ws, id = connect("/drop")
        assert(ws:send_text('{"type":"chat",', false))
        assert(ws:send_cont('"text":', false))
        assert(ws:send_cont('}', true))
        refusal(recv(ws), "message is not valid JSON")
        local ok = '{"type":"chat"}'
        assert.equal(ok, ask(ws, ok))
        assert.same({ ok }, at_backend(id, 1))
        ws:close()
    end)

    it("checks messages larger than a read: 300 KB passes whole, 300 KB broken at its end is refused", function()
        local ws, id = connect("/drop")
        local big = '{"type":"chat","pad":"' .. ("x"):rep(300000) .. '"}'
        assert.equal(big, ask(ws, big))
        refusal(ask(ws, big:sub(1, -2)), "message is not valid JSON")
        local _, rec = at_backend(id, 1)
        assert.equal(1, rec.messages)
        assert.equal(#big, rec.bytes)
        ws:close()
    end)
end)

describe("message-schema across a reload", function()
    local be, gw

    local function api(chain)
        return helpers.policy_api("R", "/r", be, chain)
    end

    setup(function()
        be = helpers.start_backend("echo")
        gw = helpers.start_weir({ workers = 1, apis = { api({ { "message-schema", { types = { "chat" } } } }) } })
    end)
    teardown(helpers.cleanup)

    local function reload(chain)
        gw:rewrite(function(c) c.apis = { api(chain) } end)
        gw:reload()
    end

    it("checks an open connection by the new configuration, and not at all once the policy is gone", function()
        local ws = assert(helpers.ws_connect(gw.port, { path = "/r/1.0/x" }))
        local j = helpers.check_error(helpers.ask(ws, '{"type":"admin"}'), PROBLEM, 1008)
        assert.equal('"type" must be one of: chat', j.error.message)

        reload({ { "message-schema", { types = { "chat", "admin" }, required = { text = "string" } } } })
        local ok = '{"type":"admin","text":"t"}'
        assert.equal(ok, helpers.ask(ws, ok))
        j = helpers.check_error(helpers.ask(ws, '{"type":"admin"}'), PROBLEM, 1008)
        assert.equal('message needs a "text" field: a string', j.error.message)

        reload({})
        assert.equal("not json at all", helpers.ask(ws, "not json at all"))
        ws:close()
    end)
end)
