-- message-schema on client messages: what passes, what is refused and how.
-- The policy attaches an inspector at the handshake; the core runs it on
-- every message. Here the same compiled checks run through the inspector's
-- own `check` (core/inspect.c built as a library).

local fakes = require "fakes"
local weir  = require "weir"

local PROBLEM = "/problems/invalid-message"

describe("message-schema's inspector", function()
    local policy

    setup(function() policy = fakes.policy("message-schema") end)

    -- The inspector CONF attaches at the handshake.
    local function inspector(conf, ctx)
        ctx = ctx or fakes.ctx()
        assert.same({ kind = "pass" }, fakes.run(policy, conf, "on_handshake", ctx))
        assert.is_not_nil(ctx.inspector, "no inspector attached")
        return ctx.inspector
    end

    -- What the core does with PAYLOAD, as fakes.run tells a frame hook's verdict.
    local function send(conf, payload, opcode)
        local v = inspector(conf):check(opcode or weir.TEXT, payload)
        if v == nil then return { kind = "pass" } end
        assert.is_true(weir.is_error(v))
        return { kind = "error", problem = v.problem, message = v.message, code = v.code, close = v.code }
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

    it("checks the size first: an oversized message is refused for its size alone", function()
        assert.same(refused("message is larger than 4096 bytes"), send({ max_size = "4k" }, ("x"):rep(5000)))
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
        inspector({ on_violation = "close" }, ctx)
        assert.same({}, ctx.sent)
        assert.is_nil(ctx.closed)
    end)

    it("has no frame hook: no Lua runs per message", function()
        assert.is_nil(policy.on_frame_in)
        assert.is_nil(policy.on_frame_out)
    end)

    it("attaches its new inspector again after a reload (recheck)", function()
        local ctx = fakes.ctx()
        local old = inspector({ types = { "chat" } }, ctx)
        local conf = fakes.check(policy, { types = { "ping" } })
        policy.recheck(ctx, conf)
        assert.are_not.equal(old, ctx.inspector)
        assert.is_nil(ctx.inspector:check(weir.TEXT, '{"type":"ping"}'))
        assert.is_not_nil(ctx.inspector:check(weir.TEXT, '{"type":"chat"}'))
    end)

    it("compares a type written with escapes by its value", function()
        assert.same({ kind = "pass" }, send({ types = { "chat", "h\195\169" } }, '{"type":"\\u0063hat"}'))
        assert.same({ kind = "pass" }, send({ types = { "chat", "h\195\169" } }, '{"type":"h\\u00e9"}'))
    end)

    it("takes the last of duplicate type fields, as a JSON decoder does", function()
        assert.same({ kind = "pass" }, send({ types = { "chat" } }, '{"type":"admin","type":"chat"}'))
        assert.same(refused('"type" must be one of: chat'),
                    send({ types = { "chat" } }, '{"type":"chat","type":"admin"}'))
    end)

    it("looks for the type field at the top level only", function()
        assert.same(refused('message has no "type" field (a non-empty string)'),
                    send({}, '{"data":{"type":"chat"}}'))
    end)

    describe("required and optional fields", function()
        local conf = { required = { text = "string", seq = { "integer", "null" } }, optional = { meta = "object" } }

        it("passes a message with every required field of its type", function()
            assert.same({ kind = "pass" }, send(conf, '{"type":"chat","text":"hi","seq":7}'))
            assert.same({ kind = "pass" }, send(conf, '{"type":"chat","text":"hi","seq":null,"meta":{}}'))
        end)

        it("refuses a message without a required field, naming it", function()
            assert.same(refused('message needs a "text" field: a string'),
                        send(conf, '{"type":"chat","seq":7}'))
        end)

        it("refuses a required field of the wrong type", function()
            assert.same(refused('message needs a "seq" field: an integer or null'),
                        send(conf, '{"type":"chat","text":"hi","seq":7.5}'))
            assert.same(refused('message needs a "seq" field: an integer or null'),
                        send(conf, '{"type":"chat","text":"hi","seq":"7"}'))
        end)

        it("checks an optional field only when it is there", function()
            assert.same(refused('"meta" must be an object'),
                        send(conf, '{"type":"chat","text":"hi","seq":1,"meta":[]}'))
        end)

        it("tells number from integer by how it is written", function()
            local c = { required = { n = "number" } }
            for _, n in ipairs({ "1", "-0", "1.5", "1e3", "-2E-7" }) do
                assert.same({ kind = "pass" }, send(c, '{"type":"t","n":' .. n .. '}'), n)
            end
            for _, n in ipairs({ "1.0", "1e3" }) do
                assert.same(refused('message needs a "n" field: an integer'),
                            send({ required = { n = "integer" } }, '{"type":"t","n":' .. n .. '}'), n)
            end
        end)

        it("refuses a field named both required and optional, or the type field", function()
            local _, errs = fakes.check(policy, { required = { a = "string" }, optional = { a = "string" } })
            assert.matches('"a" is both required and optional', table.concat(errs or {}, ";"))
            _, errs = fakes.check(policy, { required = { type = "string" } })
            assert.matches('"type" is the type_field', table.concat(errs or {}, ";"))
        end)

        it("refuses an unknown JSON type name, listing the known ones", function()
            local _, errs = fakes.check(policy, { required = { a = "str" } })
            assert.matches('a: expected one of string, number, integer', table.concat(errs or {}, ";"))
        end)
    end)
end)
