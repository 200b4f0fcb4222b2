-- scopes on client messages: which caller may send which type, what a
-- refusal looks like, and what follows the default.

local fakes = require "fakes"
local weir  = require "weir"

local PROBLEM = "/problems/forbidden"

describe("scopes on_frame_in", function()
    local policy

    setup(function() policy = fakes.policy("scopes") end)

    local RULES = {
        ["chat.read"] = { "read" },
        ["chat.send"] = { "read", "write" },
        ["admin.kick"] = { "admin" },
        ping = {},
    }

    local function conf(extra)
        local c = { rules = RULES }
        for k, v in pairs(extra or {}) do c[k] = v end
        return c
    end

    -- Run the hook for PAYLOAD from a caller with SCOPES (false: no consumer).
    local function send(c, scopes, payload, opcode)
        local consumer
        if scopes ~= false then
            consumer = { application = "App", subscriber = "alice", tier = "Unlimited",
                         key_type = "PRODUCTION", scopes = scopes }
        end
        local ctx = fakes.ctx({ consumer = consumer })
        return fakes.run(policy, c, "on_frame_in", ctx, fakes.frame(payload, opcode)), ctx
    end

    local PASS = { kind = "pass" }

    local function refused(message, close)
        return { kind = "error", problem = PROBLEM, message = message, code = close, close = close }
    end

    describe("rules", function()
        it("passes a type whose scopes the caller has", function()
            assert.same(PASS, send(conf(), { "read" }, '{"type":"chat.read"}'))
        end)

        it("passes when the caller has more scopes than needed, in any order", function()
            assert.same(PASS, send(conf(), { "admin", "write", "x", "read" }, '{"type":"chat.send","text":"hi"}'))
        end)

        it("refuses a type when the caller lacks one of its scopes, naming them", function()
            assert.same(refused('"chat.send" messages need the scopes read, write'),
                        send(conf(), { "read" }, '{"type":"chat.send"}'))
            assert.same(refused('"chat.send" messages need the scopes read, write'),
                        send(conf(), { "write" }, '{"type":"chat.send"}'))
        end)

        it("names a single scope in the singular", function()
            assert.same(refused('"admin.kick" messages need the scope admin'),
                        send(conf(), { "read", "write" }, '{"type":"admin.kick"}'))
        end)

        it("compares scopes exactly: no prefixes, no case folding", function()
            assert.same(refused('"admin.kick" messages need the scope admin'),
                        send(conf(), { "Admin", "admin:all", "adm" }, '{"type":"admin.kick"}'))
        end)

        it("refuses every rule with scopes when there is no consumer", function()
            assert.same(refused('"chat.read" messages need the scope read'),
                        send(conf(), false, '{"type":"chat.read"}'))
        end)

        it("refuses when the consumer has no scopes", function()
            assert.same(refused('"chat.read" messages need the scope read'), send(conf(), {}, '{"type":"chat.read"}'))
            assert.same(refused('"chat.read" messages need the scope read'), send(conf(), nil, '{"type":"chat.read"}'))
        end)

        it("passes a type whose rule lists no scopes, even without a consumer", function()
            assert.same(PASS, send(conf(), false, '{"type":"ping"}'))
        end)

        it("reads the type from the whole message: other fields and nesting do not matter", function()
            assert.same(PASS, send(conf(), { "read" },
                                   ' {"data":{"type":"admin.kick"},"type":"chat.read","list":[{"type":"x"}]}'))
            assert.same(refused('"admin.kick" messages need the scope admin'),
                        send(conf(), { "read" }, '{"data":{"type":"chat.read"},"type":"admin.kick"}'))
        end)

        it("reads the type with JSON escapes decoded", function()
            assert.same(refused('"admin.kick" messages need the scope admin'),
                        send(conf(), { "read" }, '{"type":"admin\\u002ekick"}'))
        end)

        it("reads the configured type_field", function()
            local c = conf({ type_field = "kind" })
            assert.same(PASS, send(c, { "read" }, '{"kind":"chat.read","type":"admin.kick"}'))
            assert.same(refused('"admin.kick" messages need the scope admin'),
                        send(c, { "read" }, '{"kind":"admin.kick","type":"chat.read"}'))
        end)

        it("leaves ctx alone: nothing sent, logged or closed by the policy itself", function()
            local _, ctx = send(conf(), { "read" }, '{"type":"admin.kick"}')
            assert.same({}, ctx.sent)
            assert.same({}, ctx.logs)
            assert.is_nil(ctx.closed)
            assert.same({ "read" }, ctx.consumer.scopes)
        end)
    end)

    describe("the default", function()
        local UNTYPED = {
            { '{"type":"nope"}',   "unknown" },
            { '{"text":"hi"}',     "untyped" },
            { '{"type":""}',       "untyped" },
            { '{"type":3}',        "untyped" },
            { '{"type":null}',     "untyped" },
            { '{"type":["ping"]}', "untyped" },
            { '[{"type":"ping"}]', "untyped" },
            { '"ping"',            "untyped" },
            { "ping",              "untyped" },
            { '{"type":"ping"',    "untyped" },
        }
        local MESSAGES = {
            unknown = "message type not allowed",
            untyped = 'messages without a "type" field are not allowed',
        }

        for _, case in ipairs(UNTYPED) do
            it("deny (the default) refuses " .. case[1], function()
                assert.same(refused(MESSAGES[case[2]]), send(conf(), { "read", "write", "admin" }, case[1]))
            end)

            it("allow passes " .. case[1], function()
                assert.same(PASS, send(conf({ default = "allow" }), false, case[1]))
            end)
        end

        it("does not quote the client's type in the refusal", function()
            local v = send(conf(), { "read" }, '{"type":"<script>very-long-type"}')
            assert.same(refused("message type not allowed"), v)
        end)

        it("names the configured type_field for a message without it", function()
            assert.same(refused('messages without a "kind" field are not allowed'),
                        send(conf({ type_field = "kind" }), { "read" }, '{"type":"chat.read"}'))
        end)

        it("deny refuses a binary message, even one that reads as an allowed JSON message", function()
            assert.same(refused("binary messages are not allowed"),
                        send(conf(), { "read" }, '{"type":"chat.read"}', weir.BINARY))
        end)

        it("allow passes a binary message, whatever it holds", function()
            assert.same(PASS, send(conf({ default = "allow" }), false, '{"type":"admin.kick"}', weir.BINARY))
        end)

        it("allow still applies the rules to types that have one", function()
            assert.same(refused('"admin.kick" messages need the scope admin'),
                        send(conf({ default = "allow" }), { "read" }, '{"type":"admin.kick"}'))
        end)
    end)

    describe("a type field given twice", function()
        local TWICE = refused('message has more than one "type" field')

        for _, payload in ipairs({
            '{"type":"admin.kick","type":"chat.read"}',
            '{"type":"chat.read","type":"admin.kick"}',
            '{"type":"admin.kick","x":{"a":[1,"}"]},"type":"ping"}',
            '{"typ\\u0065":"admin.kick","type":"ping"}',
            '{"type":"ping","\\u0074ype":"admin.kick"}',
            '{ "type" : "admin.kick" , "type" : 5 }',
            '{"type":"admin.kick","type":null}',
        }) do
            it("refuses " .. payload .. ", whatever the default", function()
                assert.same(TWICE, send(conf(), { "read", "write", "admin" }, payload))
                assert.same(TWICE, send(conf({ default = "allow" }), { "read", "write", "admin" }, payload))
            end)
        end

        for _, payload in ipairs({
            '{"type":"ping","data":{"type":"admin.kick"}}',
            '{"data":[{"type":"a"},{"type":"b"}],"type":"ping"}',
            '{"type":"ping","text":"\\"type\\":\\"admin.kick\\""}',
            '{"type":"ping","note":"the \\"type\\" field, twice: \\"type\\""}',
            '{"type":"ping","types":["type","type"]}',
            '{"types":1,"type":"ping","typed":2}',
            '{"type":"p\\u0069ng","other":"\\\\"}',
            '{"typo":1,"type":"ping","x":"\\n","typ3":2,"Type":3,"tYpe":4}',
        }) do
            it("does not count " .. payload .. " as twice", function()
                assert.same(PASS, send(conf(), {}, payload))
            end)
        end
    end)

    it("finds a one-letter type_field twice", function()
        local c = conf({ type_field = "t", rules = { a = {}, b = {} } })
        assert.same(refused('message has more than one "t" field'), send(c, {}, '{"t":"a","u":1,"t":"b"}'))
        assert.same(PASS, send(c, {}, '{"t":"a","u":{"t":"b"},"v":"\\t"}'))
    end)

    it("finds a type_field with a / given twice, once written with the short escape \\/", function()
        local c = conf({ type_field = "msg/type", rules = { a = {}, b = {} } })
        assert.same(refused('message has more than one "msg/type" field'),
                    send(c, {}, '{"msg/type":"a","msg\\/type":"b"}'))
        assert.same(PASS, send(c, {}, '{"msg\\/type":"a","text":"\\u0041"}'))
    end)

    describe("on_violation", function()
        it('"drop" (the default): error JSON, message dropped, the connection kept (no close code)', function()
            local v = send(conf(), { "read" }, '{"type":"chat.send"}')
            assert.equal("error", v.kind)
            assert.is_nil(v.close)
            assert.is_nil(v.code)
        end)

        it('"close": the same refusal with close code 1008', function()
            local c = conf({ on_violation = "close" })
            assert.same(refused('"chat.send" messages need the scopes read, write', 1008),
                        send(c, { "read" }, '{"type":"chat.send"}'))
            assert.same(refused("message type not allowed", 1008), send(c, { "read" }, '{"type":"x"}'))
            assert.same(refused('messages without a "type" field are not allowed', 1008), send(c, { "read" }, "{}"))
            assert.same(refused("binary messages are not allowed", 1008), send(c, { "read" }, "\1", weir.BINARY))
            assert.same(refused('message has more than one "type" field', 1008),
                        send(c, { "read" }, '{"type":"ping","type":"ping"}'))
        end)

        it('"close" passes what is allowed', function()
            assert.same(PASS, send(conf({ on_violation = "close" }), { "read" }, '{"type":"chat.read"}'))
        end)
    end)
end)
