-- origin's configuration: the allow list, normalised when it is loaded,
-- and every entry that is not an exact origin refused, naming the entry.

local fakes = require "fakes"

describe("origin schema", function()
    local policy

    setup(function() policy = fakes.policy("origin") end)

    -- The errors for CONF, as one string.
    local function errors(conf)
        local out, errs = fakes.check(policy, conf)
        assert.is_nil(out)
        return table.concat(errs, "\n")
    end

    -- The normalised set init builds from ALLOW.
    local function set_of(allow)
        return assert(fakes.check(policy, { allow = allow }))._allow
    end

    it("normalises a minimal configuration with its defaults", function()
        local conf = assert(fakes.check(policy, { allow = { "https://app.example.com" } }))
        assert.same({ "https://app.example.com" }, conf.allow)
        assert.is_false(conf.allow_missing)
        assert.same({ ["https://app.example.com"] = true }, conf._allow)
    end)

    it("keeps allow_missing when it is given", function()
        local conf = assert(fakes.check(policy, { allow = { "https://a.example" }, allow_missing = true }))
        assert.is_true(conf.allow_missing)
    end)

    it("lower-cases the scheme and the host", function()
        assert.same({ ["https://app.example.com"] = true }, set_of({ "HTTPS://App.Example.COM" }))
    end)

    it("drops the default port of http, ws, https and wss", function()
        assert.same({ ["http://a.example"] = true, ["ws://b.example"] = true,
                      ["https://c.example"] = true, ["wss://d.example"] = true },
                    set_of({ "http://a.example:80", "ws://b.example:80", "https://c.example:443", "wss://d.example:443" }))
    end)

    it("keeps a port that is not the scheme's default", function()
        assert.same({ ["http://a.example:443"] = true, ["https://a.example:80"] = true,
                      ["https://a.example:8443"] = true, ["http://localhost:3000"] = true },
                    set_of({ "http://a.example:443", "https://a.example:80", "https://a.example:8443",
                             "http://localhost:3000" }))
    end)

    it("accepts IPv4 and bracketed IPv6 hosts", function()
        assert.same({ ["http://127.0.0.1:8080"] = true, ["http://[::1]:8080"] = true, ["https://[fe80::ab]"] = true },
                    set_of({ "http://127.0.0.1:8080", "http://[::1]:8080", "https://[FE80::AB]:443" }))
    end)

    it("accepts an empty list when handshakes without an Origin are allowed", function()
        local conf = assert(fakes.check(policy, { allow = {}, allow_missing = true }))
        assert.same({}, conf._allow)
    end)

    it("refuses an empty list that would refuse every handshake", function()
        assert.equal("init: allow is empty and allow_missing is false: every handshake would be refused",
                     errors({ allow = {} }))
    end)

    it("requires allow", function()
        assert.matches("allow: required field missing", errors({}), 1, true)
    end)

    it("rejects an allow that is not a list", function()
        assert.matches('allow: expected a list, got "https://a.example"', errors({ allow = "https://a.example" }), 1, true)
    end)

    it("rejects an allow_missing that is not a boolean", function()
        assert.matches('allow_missing: expected true or false, got "yes"',
                       errors({ allow = { "https://a.example" }, allow_missing = "yes" }), 1, true)
    end)

    it("rejects an unknown field, suggesting the one meant", function()
        assert.matches("alow: unknown field (did you mean allow?)",
                       errors({ allow = { "https://a.example" }, alow = {} }), 1, true)
    end)

    -- Each bad entry, second in the list, and the message naming allow[2].
    local BAD = {
        { "https://a.example/", 'must not end with "/" (an origin has no path), got "https://a.example/"' },
        { "https://a.example/app", 'must not have a path (an origin is scheme://host[:port]), got "https://a.example/app"' },
        { "https://a.example?x=1", 'must not have a query, got "https://a.example?x=1"' },
        { "https://a.example#top", 'must not have a fragment, got "https://a.example#top"' },
        { "https://user@a.example", 'must not have a user name or password (user@), got "https://user@a.example"' },
        { "https://user:pw@a.example", "must not have a user name or password (user@)" },
        { "https://*.example.com", 'wildcards are not supported: list each origin, got "https://*.example.com"' },
        { "*", "expected an origin, scheme://host[:port]" },
        { "null", '"null" is the origin of sandboxed and file: pages, which any site can produce; it cannot be allowed' },
        { "a.example", 'expected an origin, scheme://host[:port], e.g. "https://app.example.com", got "a.example"' },
        { "//a.example", "expected an origin, scheme://host[:port]" },
        { "https://", 'has no host, got "https://"' },
        { "https://:8443", "has no host" },
        { "https://a.example:", 'the port must be a number from 1 to 65535, got "https://a.example:"' },
        { "https://a.example:0", "the port must be a number from 1 to 65535" },
        { "https://a.example:65536", "the port must be a number from 1 to 65535" },
        { "https://a.example:http", "the port must be a number from 1 to 65535" },
        { "https://a.example:80:80", "the port must be a number from 1 to 65535" },
        { "https://a.example ", "must not contain spaces or control characters" },
        { "https://a\nb.example", "must not contain spaces or control characters" },
        { "https://a!b.example", "the host may only have letters, digits, '.', '-' and '_'" },
        { "https://[::1", "expected an IPv6 address in brackets" },
        { "https://[zz::1]", "expected an IPv6 address in brackets" },
    }
    for _, case in ipairs(BAD) do
        it("rejects " .. ('"' .. case[1] .. '"'):gsub("\n", "\\n") .. " naming the entry", function()
            assert.matches("allow[2]: " .. case[2],
                           errors({ allow = { "https://good.example", case[1] } }), 1, true)
        end)
    end

    it("reports every bad entry at once", function()
        local errs = select(2, fakes.check(policy, { allow = { "https://a.example/", "https://b.example", "null" } }))
        assert.equal(2, #errs)
        assert.matches("^allow%[1%]: ", errs[1])
        assert.matches("^allow%[3%]: ", errs[2])
    end)

    it("rejects an entry that is not a string", function()
        assert.matches("allow[1]: expected a string, got 443", errors({ allow = { 443 } }), 1, true)
    end)
end)
