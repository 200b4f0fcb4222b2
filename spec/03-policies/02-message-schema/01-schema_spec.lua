-- message-schema's configuration.

local fakes = require "fakes"

describe("message-schema schema", function()
    local policy

    setup(function() policy = fakes.policy("message-schema") end)

    local function errors(conf)
        local out, errs = fakes.check(policy, conf)
        assert.is_nil(out)
        return table.concat(errs, "\n")
    end

    it("normalises an empty configuration with its defaults", function()
        local conf = assert(fakes.check(policy, {}))
        assert.same("type", conf.type_field)
        assert.is_nil(conf.types)
        assert.is_nil(conf.max_size)
        assert.is_false(conf.allow_binary)
        assert.same("drop", conf.on_violation)
        assert.is_nil(conf.close_code)
    end)

    it("normalises every option", function()
        local conf = assert(fakes.check(policy, {
            type_field = "kind", types = { "chat", "ping" }, max_size = "16k",
            allow_binary = true, on_violation = "close", close_code = 4000,
        }))
        assert.same("kind", conf.type_field)
        assert.same({ "chat", "ping" }, conf.types)
        assert.same(16384, conf.max_size)
        assert.is_true(conf.allow_binary)
        assert.same("close", conf.on_violation)
        assert.same(4000, conf.close_code)
    end)

    it("rejects an empty type_field", function()
        assert.matches("type_field: must not be empty", errors({ type_field = "" }), 1, true)
    end)

    it("rejects types that is not a list", function()
        assert.matches('types: expected a list, got "chat"', errors({ types = "chat" }), 1, true)
    end)

    it("rejects an empty types list", function()
        assert.matches("types: must not be empty", errors({ types = {} }), 1, true)
    end)

    it("rejects a type that is not a string", function()
        assert.matches("types[2]: expected a string, got 7", errors({ types = { "chat", 7 } }), 1, true)
    end)

    it("rejects a max_size that is not a size", function()
        assert.matches('max_size: expected a size like "512", "16k", "1m" or "1g", got "big"',
                       errors({ max_size = "big" }), 1, true)
    end)

    it("rejects a max_size of 0", function()
        assert.matches("max_size: must be at least 1, got 0", errors({ max_size = 0 }), 1, true)
    end)

    it("rejects an allow_binary that is not a boolean", function()
        assert.matches('allow_binary: expected true or false, got "yes"', errors({ allow_binary = "yes" }), 1, true)
    end)

    it("rejects an unknown on_violation", function()
        assert.matches('on_violation: expected one of drop, close, got "reject"',
                       errors({ on_violation = "reject" }), 1, true)
    end)

    it("rejects a close_code that is not an integer", function()
        assert.matches("close_code: expected an integer, got 1008.5",
                       errors({ on_violation = "close", close_code = 1008.5 }), 1, true)
    end)

    it("rejects a close_code an endpoint may not send", function()
        assert.matches("close_code: expected a close code an endpoint may send (1000-1003, 1007-1014, "
                       .. "3000-4999), got 1006", errors({ on_violation = "close", close_code = 1006 }), 1, true)
    end)

    it("rejects a close_code without on_violation = close", function()
        assert.matches('init: close_code applies only with on_violation = "close"',
                       errors({ close_code = 1008 }), 1, true)
    end)

    it("rejects an unknown field, suggesting the one meant", function()
        assert.matches("type: unknown field (did you mean types?)", errors({ type = { "chat" } }), 1, true)
    end)
end)
