-- The pong policy, unit-tested with spec/fakes.lua.
-- Run from weir's root: luajit /usr/bin/busted examples/custom-policy/spec

local fakes = require "fakes"
local weir  = require "weir"

-- This example's policies/, found from this file's place.
local POLICIES = (function()
    local src = debug.getinfo(1, "S").source:sub(2)
    if src:sub(1, 1) ~= "/" then src = assert(os.getenv("PWD")) .. "/" .. src end
    return assert(src:match("^(.*)/spec/[^/]+$")) .. "/policies"
end)()

describe("pong", function()
    local policy

    setup(function() policy = fakes.policy("pong", { POLICIES }) end)

    local function send(conf, payload, opcode, ctx)
        return fakes.run(policy, conf, "on_frame_in", ctx or fakes.ctx(), fakes.frame(payload, opcode))
    end

    it("answers a ping itself", function()
        assert.same({ kind = "reply", payload = '{"type":"pong"}', opcode = weir.TEXT },
                    send({}, '{"type":"ping"}'))
    end)

    it("lets other messages through", function()
        assert.same({ kind = "pass" }, send({}, '{"type":"chat","text":"hi"}'))
    end)

    it("lets text that is not JSON through (not its job)", function()
        assert.same({ kind = "pass" }, send({}, "ping"))
    end)

    it("lets binary messages through", function()
        assert.same({ kind = "pass" }, send({}, '{"type":"ping"}', weir.BINARY))
    end)

    it("answers the configured type with the configured reply", function()
        local v = send({ ping_type = "hello", reply = "hi there" }, '{"type":"hello"}')
        assert.same({ kind = "reply", payload = "hi there", opcode = weir.TEXT }, v)
    end)

    it("counts the pings it answered in ctx.vars", function()
        local ctx = fakes.ctx()
        send({}, '{"type":"ping"}', nil, ctx)
        send({}, '{"type":"ping"}', nil, ctx)
        assert.same(2, ctx.vars.pongs)
    end)

    it("logs the count when the connection ends", function()
        local ctx = fakes.ctx({ vars = { pongs = 3 } })
        assert.same({ kind = "pass" }, fakes.run(policy, {}, "on_close", ctx, {}))
        assert.same({ { level = "info", msg = "pings answered by weir", fields = { pings = 3 },
                        policy = "pong" } }, ctx.logs)
    end)

    it("logs nothing for a connection that sent no ping", function()
        local ctx = fakes.ctx()
        fakes.run(policy, {}, "on_close", ctx, {})
        assert.same({}, ctx.logs)
    end)

    it("refuses a reply that is not a string", function()
        local conf, errs = fakes.check(policy, { reply = { type = "pong" } })
        assert.is_nil(conf)
        assert.same({ "reply: expected a string, got a table" }, errs)
    end)
end)
