-- origin at the handshake: exact matches pass, everything else (missing,
-- null, malformed, look-alikes, another scheme or port) is refused with 403.

local fakes = require "fakes"

describe("origin on_handshake", function()
    local policy

    setup(function() policy = fakes.policy("origin") end)

    local CONF = { allow = { "https://example.com", "http://localhost:3000", "https://[::1]:8443" } }

    local REFUSED = { kind = "error", problem = "/problems/forbidden", message = "Origin not allowed",
                      code = 403, status = 403 }
    local PASS = { kind = "pass" }

    -- Run the hook for a request whose Origin header is ORIGIN (nil: none).
    local function handshake(origin, conf)
        local ctx = fakes.ctx({ headers = { origin = origin } })
        return fakes.run(policy, conf or CONF, "on_handshake", ctx), ctx
    end

    it("passes an allowed origin", function()
        assert.same(PASS, handshake("https://example.com"))
    end)

    it("passes every entry of the list", function()
        assert.same(PASS, handshake("http://localhost:3000"))
        assert.same(PASS, handshake("https://[::1]:8443"))
    end)

    it("passes an allowed origin written with other case or its default port", function()
        assert.same(PASS, handshake("HTTPS://Example.COM"))
        assert.same(PASS, handshake("https://example.com:443"))
    end)

    it("matches an entry written with other case or its default port", function()
        local conf = { allow = { "HTTPS://Example.com:443" } }
        assert.same(PASS, handshake("https://example.com", conf))
    end)

    it("finds the header whatever the case the client wrote it in", function()
        local ctx = fakes.ctx({ headers = { ORIGIN = "https://example.com" } })
        assert.same(PASS, fakes.run(policy, CONF, "on_handshake", ctx))
    end)

    it("refuses a handshake without an Origin header", function()
        assert.same(REFUSED, handshake(nil))
    end)

    it("passes a handshake without an Origin header when allow_missing is set", function()
        assert.same(PASS, handshake(nil, { allow = CONF.allow, allow_missing = true }))
    end)

    it("with allow_missing, still refuses an Origin that is present and not allowed", function()
        local conf = { allow = CONF.allow, allow_missing = true }
        assert.same(REFUSED, handshake("https://evil.example", conf))
        assert.same(REFUSED, handshake("null", conf))
    end)

    it("with an empty allow list and allow_missing, refuses every Origin", function()
        local conf = { allow = {}, allow_missing = true }
        assert.same(PASS, handshake(nil, conf))
        assert.same(REFUSED, handshake("https://example.com", conf))
    end)

    -- Each refused Origin, against CONF.
    local REFUSED_ORIGINS = {
        { "null",                              "null (sandboxed iframes, file: pages)" },
        { "",                                  "an empty Origin" },
        { "https://evil.example",              "another site" },
        { "https://example.com.evil.net",      "a look-alike with the allowed origin as a prefix" },
        { "https://evilexample.com",           "a look-alike with the allowed host as a suffix" },
        { "https://sub.example.com",           "a subdomain" },
        { "https://example.co",                "a prefix of the allowed host" },
        { "http://example.com",                "another scheme (http)" },
        { "wss://example.com",                 "another scheme (wss)" },
        { "https://example.com:8443",          "another port" },
        { "http://localhost",                  "an allowed host without its port" },
        { "http://localhost:3001",             "an allowed host with another port" },
        { "http://localhost:3000.evil.net",    "a port followed by more" },
        { "https://example.com/",              "a trailing slash (malformed)" },
        { "https://example.com/app",           "a path (malformed)" },
        { "https://example.com?x",             "a query (malformed)" },
        { "https://user@example.com",          "userinfo (malformed)" },
        { "https://evil.net@example.com",      "userinfo naming another host (malformed)" },
        { "example.com",                       "no scheme (malformed)" },
        { "https://example.com, https://evil.example", "two Origin headers" },
        { " https://example.com",              "leading space (malformed)" },
        { "https://example.com\0",             "a NUL byte (malformed)" },
    }
    for _, case in ipairs(REFUSED_ORIGINS) do
        it("refuses " .. case[2] .. " with 403 /problems/forbidden", function()
            assert.same(REFUSED, handshake(case[1]))
        end)
    end

    it("leaves ctx alone: no consumer, no vars, nothing sent or logged", function()
        for _, origin in ipairs({ "https://example.com", "https://evil.example" }) do
            local _, ctx = handshake(origin)
            assert.is_nil(ctx.consumer)
            assert.same({}, ctx.vars)
            assert.same({}, ctx.sent)
            assert.same({}, ctx.logs)
            assert.is_nil(ctx.closed)
        end
    end)
end)
