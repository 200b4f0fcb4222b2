-- lua/weir/ctx.lua: the request a policy sees, parsed from the handshake's
-- head, and lua/weir/oauth.lua's search for a bearer token in it. Both run
-- once per handshake, so they use plain searches, never patterns that walk
-- a long value character by character: these cases pin what they accept.
local helpers = require "helpers"   -- luacheck: no unused (sets package.path)
local ctxmod  = require "weir.ctx"
local oauth   = require "weir.oauth"

local function head(lines)
    return "GET /e/1?x=1 HTTP/1.1\r\n" .. table.concat(lines, "\r\n") .. "\r\n\r\n"
end

describe("ctx.parse_headers", function()
    it("lower-cases names and strips spaces and tabs around values", function()
        local h = ctxmod.parse_headers(head({ "Host: a.example", "X-Mixed-Case:\t  v a l \t",
                                              "Empty:", "Spaces:    " }))
        assert.same({ host = "a.example", ["x-mixed-case"] = "v a l", empty = "", spaces = "" }, h)
    end)

    it("joins a repeated header's values with a comma, in order", function()
        local h = ctxmod.parse_headers(head({ "Accept: a", "X: 1", "accept: b", "ACCEPT: c" }))
        assert.equal("a, b, c", h.accept)
        assert.equal("1", h.x)
    end)

    it("keeps colons inside values and skips lines without a name", function()
        local h = ctxmod.parse_headers(head({ "Origin: https://a.example:8443", ": no name", "no colon at all",
                                              "After: yes" }))
        assert.same({ origin = "https://a.example:8443", after = "yes" }, h)
    end)

    it("stops at the blank line that ends the head", function()
        local h = ctxmod.parse_headers("GET / HTTP/1.1\r\nA: 1\r\n\r\nB: 2\r\n\r\n")
        assert.same({ a = "1" }, h)
    end)

    it("keeps a long value whole", function()
        local long = string.rep("abcdefgh", 1000)
        local h = ctxmod.parse_headers(head({ "Authorization: Bearer " .. long }))
        assert.equal("Bearer " .. long, h.authorization)
    end)

    it("returns an empty table for a head without headers or line ends", function()
        assert.same({}, ctxmod.parse_headers("GET / HTTP/1.1\r\n\r\n"))
        assert.same({}, ctxmod.parse_headers("GET / HTTP/1.1"))
        assert.same({}, ctxmod.parse_headers(""))
    end)
end)

describe("oauth.credential from the Authorization header", function()
    local conf = { token_in = { "header" }, hide_credentials = false }

    local function cred(value)
        local ctx = ctxmod.new(1, "w1-1", "a", "1", "/a", head({ "Host: x", "Authorization: " .. value }),
                               "127.0.0.1", 1, false)
        return select(2, oauth.credential(ctx, conf))
    end

    it("takes the token after the scheme, in any case, with any number of spaces", function()
        assert.equal("abc.def-_~+/=", cred("Bearer abc.def-_~+/="))
        assert.equal("tok", cred("bEaReR    tok"))
        assert.equal("tok", cred("Bearer tok   "))
    end)

    it("refuses a second credential after the token", function()
        assert.is_nil(cred("Bearer a b"))
        assert.is_nil(cred("Bearer a,b"))
        assert.is_nil(cred("Bearer a\tb"))
        assert.is_nil(cred("Bearer a, Basic b"))
    end)

    it("refuses other schemes and an empty token", function()
        assert.is_nil(cred("Basic dXNlcjpwYXNz"))
        assert.is_nil(cred("Bearer"))
        assert.is_nil(cred("Bearer "))
        assert.is_nil(cred("Bearertok"))
    end)

    it("keeps a long token whole", function()
        local long = string.rep("x", 8000)
        assert.equal(long, cred("Bearer " .. long))
    end)
end)
