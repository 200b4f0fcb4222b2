-- message-schema on client messages: what passes, what is refused and how.

local fakes = require "fakes"
local weir  = require "weir"

local PROBLEM = "/problems/invalid-message"

describe("message-schema on_frame_in", function()
    local policy

    setup(function() policy = fakes.policy("message-schema") end)

    local function send(conf, payload, opcode)
        return fakes.run(policy, conf, "on_frame_in", fakes.ctx(), fakes.frame(payload, opcode))
    end

    local function refused(message, close)
        return { kind = "error", problem = PROBLEM, message = message, code = close, close = close }
    end

    it("passes a JSON object with a string type", function()
        assert.same({ kind = "pass" }, send({}, '{"type":"chat","text":"hi"}'))
    end)

    it("passes an object with leading whitespace", function()
        assert.same({ kind = "pass" }, send({}, ' \r\n\t{"type":"chat"}'))
    end)

    it("refuses text that is not JSON", function()
        assert.same(refused("message is not valid JSON"), send({}, "hello"))
    end)

    it("refuses truncated JSON", function()
        assert.same(refused("message is not valid JSON"), send({}, '{"type":"chat"'))
    end)

    it("refuses a JSON array", function()
        assert.same(refused("message is not a JSON object"), send({}, '[{"type":"chat"}]'))
    end)

    it("refuses an empty JSON array", function()
        assert.same(refused("message is not a JSON object"), send({}, "[]"))
    end)

    it("refuses a JSON string", function()
        assert.same(refused("message is not a JSON object"), send({}, '"chat"'))
    end)

    it("refuses JSON null", function()
        assert.same(refused("message is not a JSON object"), send({}, "null"))
    end)

    it("refuses an object without a type", function()
        assert.same(refused('message has no "type" field (a non-empty string)'), send({}, '{"text":"hi"}'))
    end)

    it("refuses a type that is not a string", function()
        assert.same(refused('message has no "type" field (a non-empty string)'), send({}, '{"type":3}'))
    end)

    it("refuses an empty type", function()
        assert.same(refused('message has no "type" field (a non-empty string)'), send({}, '{"type":""}'))
    end)

    it("reads the configured type_field", function()
        assert.same({ kind = "pass" }, send({ type_field = "kind" }, '{"kind":"chat"}'))
    end)

    it("names the configured type_field when it is missing", function()
        assert.same(refused('message has no "kind" field (a non-empty string)'),
                    send({ type_field = "kind" }, '{"type":"chat"}'))
    end)

    it("passes a type from the allowed list", function()
        assert.same({ kind = "pass" }, send({ types = { "chat", "ping" } }, '{"type":"ping"}'))
    end)

    it("refuses a type not in the allowed list", function()
        assert.same(refused('"type" must be one of: chat, ping'),
                    send({ types = { "chat", "ping" } }, '{"type":"admin"}'))
    end)

    it("passes a message of exactly max_size bytes", function()
        local msg = '{"type":"chat","text":"' .. ("x"):rep(100 - 25) .. '"}'
        assert.same(100, #msg)
        assert.same({ kind = "pass" }, send({ max_size = 100 }, msg))
    end)

    it("refuses a message over max_size", function()
        local msg = '{"type":"chat","text":"' .. ("x"):rep(101 - 25) .. '"}'
        assert.same(refused("message is larger than 100 bytes"), send({ max_size = 100 }, msg))
    end)

    it("refuses an oversized message without reading its payload", function()
        local frame = setmetatable({ opcode = weir.TEXT, fin = true, length = 5000 }, {
            __index = function(_, k) if k == "payload" then error("payload was read") end end,
        })
        local v = fakes.run(policy, { max_size = "4k" }, "on_frame_in", fakes.ctx(), frame)
        assert.same(refused("message is larger than 4096 bytes"), v)
    end)

    it("refuses a binary message by default", function()
        assert.same(refused("binary messages are not accepted"), send({}, "\0\1\2", weir.BINARY))
    end)

    it("passes a binary message when allow_binary is set", function()
        assert.same({ kind = "pass" }, send({ allow_binary = true }, "\0\1\2", weir.BINARY))
    end)

    it("applies max_size to binary messages too", function()
        assert.same(refused("message is larger than 2 bytes"),
                    send({ allow_binary = true, max_size = 2 }, "\0\1\2", weir.BINARY))
    end)

    it("closes with 1008 when on_violation is close", function()
        local v = send({ on_violation = "close" }, "hello")
        assert.same(refused("message is not valid JSON", 1008), v)
    end)

    it("closes with the configured close_code", function()
        local v = send({ on_violation = "close", close_code = 4400 }, "hello")
        assert.same(4400, v.close)
        assert.same(PROBLEM, v.problem)
    end)

    it("leaves the connection alone itself (the gateway sends and closes)", function()
        local ctx = fakes.ctx()
        fakes.run(policy, { on_violation = "close" }, "on_frame_in", ctx, fakes.frame("hello"))
        assert.same({}, ctx.sent)
        assert.is_nil(ctx.closed)
    end)

    it("checks client messages only", function()
        assert.is_nil(policy.on_frame_out)
    end)
end)
