-- scopes' configuration: the rules map (message type → scopes), the
-- default, and errors that name the rule and the scope at fault.

local fakes = require "fakes"

describe("scopes schema", function()
    local policy

    setup(function() policy = fakes.policy("scopes") end)

    -- The errors for CONF, as one string.
    local function errors(conf)
        local out, errs = fakes.check(policy, conf)
        assert.is_nil(out)
        return table.concat(errs, "\n")
    end

    it("normalises a minimal configuration with its defaults", function()
        local conf = assert(fakes.check(policy, { rules = { chat = { "chat:write" } } }))
        assert.same({ chat = { "chat:write" } }, conf.rules)
        assert.same("type", conf.type_field)
        assert.same("deny", conf.default)
        assert.same("drop", conf.on_violation)
    end)

    it("keeps the options it is given", function()
        local conf = assert(fakes.check(policy, { rules = {}, type_field = "kind", default = "allow",
                                                  on_violation = "close" }))
        assert.same({}, conf.rules)
        assert.same("kind", conf.type_field)
        assert.same("allow", conf.default)
        assert.same("close", conf.on_violation)
    end)

    it("takes type names that are not identifiers, and empty scope lists", function()
        local conf = assert(fakes.check(policy, { rules = { ["chat.send"] = { "chat:write", "chat" },
                                                            ["order-cancel"] = { "orders/write" },
                                                            ping = {} } }))
        assert.same({ "chat:write", "chat" }, conf.rules["chat.send"])
        assert.same({ "orders/write" }, conf.rules["order-cancel"])
        assert.same({}, conf.rules.ping)
    end)

    it("indexes each rule once, a scope listed twice counted once", function()
        local conf = assert(fakes.check(policy, { rules = { chat = { "a", "b", "a" } } }))
        assert.same({ "a", "b" }, conf._rules.chat.need)
        assert.same('"chat" messages need the scopes a, b', conf._rules.chat.denied.message)
    end)

    it("requires rules", function()
        assert.matches("rules: required field missing", errors({}), 1, true)
    end)

    it("rejects rules that are not a table", function()
        assert.matches('rules: expected a table of NAME = VALUE entries, got "chat"', errors({ rules = "chat" }), 1, true)
    end)

    it("rejects rules written as a list", function()
        assert.matches("rules[1]: expected NAME = VALUE entries, got a key of type number",
                       errors({ rules = { { "chat:write" } } }), 1, true)
    end)

    it("rejects an empty type name", function()
        assert.matches('rules[""]: a name must not be empty', errors({ rules = { [""] = { "a" } } }), 1, true)
    end)

    it("rejects a rule that is not a list of scopes, naming the type", function()
        assert.matches('rules.chat: expected a list, got "chat:write"',
                       errors({ rules = { chat = "chat:write" } }), 1, true)
    end)

    it("rejects a scope that is not a string, naming the type and the place", function()
        assert.matches('rules["chat.send"][2]: expected a string, got 7',
                       errors({ rules = { ["chat.send"] = { "a", 7 } } }), 1, true)
    end)

    it("rejects an empty scope", function()
        assert.matches("rules.chat[1]: must not be empty", errors({ rules = { chat = { "" } } }), 1, true)
    end)

    it("rejects scopes written as one string with spaces or commas", function()
        local e = errors({ rules = { chat = { "read write" }, send = { "read,write" } } })
        assert.matches('rules.chat[1]: a scope has no spaces, commas or control characters: write each as its own '
                       .. 'string, { "read", "write" }, got "read write"', e, 1, true)
        assert.matches('rules.send[1]: a scope has no spaces, commas or control characters', e, 1, true)
    end)

    it("rejects an unknown default", function()
        assert.matches('default: expected one of allow, deny, got "permit"',
                       errors({ rules = {}, default = "permit" }), 1, true)
    end)

    it("rejects an unknown on_violation", function()
        assert.matches('on_violation: expected one of drop, close, got "kill"',
                       errors({ rules = {}, on_violation = "kill" }), 1, true)
    end)

    it("rejects an empty type_field", function()
        assert.matches("type_field: must not be empty", errors({ rules = {}, type_field = "" }), 1, true)
    end)

    it("rejects an unknown field, suggesting the one meant", function()
        assert.matches("rule: unknown field (did you mean rules?)", errors({ rules = {}, rule = {} }), 1, true)
    end)

    it("reports every bad rule at once", function()
        local _, errs = fakes.check(policy, { rules = { a = { "x y" }, b = { "ok" }, c = 3 } })
        assert.same({ 'rules.a[1]: a scope has no spaces, commas or control characters: write each as its own '
                      .. 'string, { "read", "write" }, got "x y"',
                      "rules.c: expected a list, got 3" }, errs)
    end)
end)
