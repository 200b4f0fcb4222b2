-- The jwt policy's fast path reads the bearer token where it is, in the
-- request head, instead of copying it out: weir.ctx's header_span and
-- request line, jose's decode, sha256 and verify_decoded over a range of a
-- string, the decoded-header cache, and the shared record of a removed
-- header. Each must answer exactly what the copying way answers.
local helpers = require "helpers"   -- luacheck: no unused (sets package.path)
local ctxmod  = require "weir.ctx"
local oauth   = require "weir.oauth"
local jose    = require "weir.jose"

local function head(lines)
    return "GET /e/1?x=1 HTTP/1.1\r\n" .. table.concat(lines, "\r\n") .. "\r\n\r\n"
end

describe("ctx.header_span", function()
    local heads = {
        head({ "Host: a", "Authorization: Bearer abc" }),
        head({ "authorization:\t  Bearer  abc \t", "X: 1" }),
        head({ "AUTHORIZATION: one", "X: 1", "Authorization: two" }),
        head({ "Authorization : spaced name", "Host: a" }),
        head({ "Host: a" }),
        head({ "Authorization:", "Host: a" }),
        head({ "Authorizations: no", "X-Authorization: no" }),
        "GET / HTTP/1.1\r\nA: 1\r\n\r\nAuthorization: after the head\r\n\r\n",
        "GET / HTTP/1.1",
        "",
    }

    it("finds one header's value, trimmed, exactly as parse_headers reads it", function()
        for _, h in ipairs(heads) do
            local want = ctxmod.parse_headers(h).authorization
            local s, i, j = ctxmod.header_span(ctxmod.request(h, "127.0.0.1", 1, false), "authorization")
            if s then
                assert.equal(want, s:sub(i, j))
                assert.equal(h, s)
            elseif s == false then
                assert.truthy(want:find(", ", 1, true), "a repeated header")
            else
                assert.is_nil(want)
            end
        end
    end)

    local function req(h) return ctxmod.request(h, "127.0.0.1", 1, false) end

    it("says false for a repeated header, in any case, and nil without one", function()
        assert.is_false(ctxmod.header_span(req(heads[3]), "authorization"))
        assert.is_nil(ctxmod.header_span(req(heads[5]), "authorization"))
    end)

    it("says false (read req.headers) once the headers are parsed, and for a request without a head", function()
        local r = req(heads[1])
        assert.equal("Bearer abc", r.headers.authorization)
        assert.is_false(ctxmod.header_span(r, "authorization"))
        assert.is_false(ctxmod.header_span({ headers = {} }, "authorization"))
    end)
end)

describe("ctx request line", function()
    it("gives the method, path and query string the patterns give", function()
        local cases = { "GET /bench HTTP/1.1\r\n\r\n", "GET /a?b=1&c HTTP/1.1\r\n", "GET /a?b?c HTTP/1.1\r\n",
                        "GET\t/x HTTP/1.1\r\n", "GET /x\r\nHost: a b\r\n", " GET /x HTTP/1.1", "GET  /x HTTP/1.1",
                        "", "GET", "GET /x", "GET /x ", "GET /x\tHTTP/1.1 y", "G\vET /x HTTP/1.1",
                        "GET /? HTTP/1.1", "GET ? HTTP/1.1", "POST /t/ticket HTTP/1.1\r\n" }
        for _, h in ipairs(cases) do
            local r = ctxmod.request(h, "127.0.0.1", 1, false)
            local method, target = h:match("^(%S+) (%S+)")
            local path, qs = (target or "/"):match("^([^?]*)%??(.*)$")
            assert.equal(method, r.method, h)
            assert.equal(path, r.path, h)
            assert.equal(qs ~= "" and qs or nil, r.query_string, h)
            assert.is_false(r.ticket_request)
        end
    end)
end)

describe("ctx: a request that only loses one header", function()
    local function new(i) return ctxmod.new(i, "w0-" .. i, "a", "1", "/a", head({ "Host: a" }), "127.0.0.1", 1, false) end

    it("shares one record until another change, which makes the ctx its own", function()
        local a, b = new(1), new(2)
        a:clear_backend_header("Authorization")
        b:clear_backend_header("authorization")
        assert.equal(rawget(a, "_up"), rawget(b, "_up"))
        b:set_backend_header("X-User", "u")
        b:hide_query_arg("x")
        local ua, ub = rawget(a, "_up"), rawget(b, "_up")
        assert.are_not.equal(ua, ub)
        assert.same({ authorization = true }, ua.del)
        assert.is_nil(next(ua.set))
        assert.is_nil(next(ua.query))
        assert.same({ authorization = true, ["x-user"] = true }, ub.del)
        assert.same({ "X-User", "u" }, ub.set["x-user"])
        assert.same({ x = true }, ub.query)
        -- a ctx that shares the record may still remove another header
        a:clear_backend_header("Cookie")
        assert.same({ authorization = true, cookie = true }, rawget(a, "_up").del)
        -- and the shared record is as it was
        local c = new(3)
        c:clear_backend_header("Authorization")
        assert.same({ authorization = true }, rawget(c, "_up").del)
        assert.is_nil(next(rawget(c, "_up").set))
    end)

    it("still refuses changes after the upgrade", function()
        local c = new(4)
        c._upgraded = true
        assert.has_error(function() c:clear_backend_header("Authorization") end)
    end)
end)

describe("oauth helpers", function()
    it("splits scopes as %S+ does", function()
        for _, s in ipairs({ "a b", "read write", "", " ", " a", "a ", "a  b", "a\tb", "a\nb c", "a\vb\fc\rd" }) do
            local want = {}
            for w in s:gmatch("%S+") do want[#want + 1] = w end
            assert.same(want, oauth.scopes_of({ scope = s }))
            assert.same(want, oauth.scopes_of({ scp = s }))
        end
    end)

    it("writes a hash as 64 lower-case hex digits", function()
        for _, s in ipairs({ "", "abc", string.rep("\255", 100) }) do
            local h = jose.sha256(s)
            assert.equal((h:gsub(".", function(c) return string.format("%02x", c:byte()) end)), oauth.hex32(h))
        end
        assert.has_error(function() oauth.hex32("short") end)
    end)
end)

describe("jose over a range of a string", function()
    local key = assert(jose.private_key(assert(jose.generate_ec_p256())))
    local other = assert(jose.private_key(assert(jose.generate_ec_p256())))
    local kid = assert(jose.public_jwk(key)).kid
    local token = assert(jose.encode({ kid = kid }, { sub = "u1", scope = "a b", n = 1 }, key))
    local around = "GET / HTTP/1.1\r\nAuthorization: Bearer " .. token .. "\r\nHost: 1.2.3.4\r\n\r\n"
    local i = assert(around:find(token, 1, true))
    local j = i + #token - 1

    it("decodes a token in place as it decodes the token alone", function()
        local a, b = assert(jose.decode(token)), assert(jose.decode(around, nil, i, j))
        assert.same(a.header, b.header)
        assert.same(a.payload, b.payload)
        assert.equal(a.signature, b.signature)
        assert.equal(a.alg, b.alg)
        assert.equal(a.kid, b.kid)
        assert.equal(token:match("^([^.]+%.[^.]+)%."), b.signing_input)
        assert.equal(a.signing_input, b.signing_input)
    end)

    it("checks the signature in place, and refuses another key's", function()
        assert.is_true(jose.verify_decoded(key, assert(jose.decode(around, nil, i, j))))
        assert.is_true(jose.verify_decoded(key, assert(jose.decode(token))))
        local ok, err = jose.verify_decoded(other, assert(jose.decode(around, nil, i, j)))
        assert.is_nil(ok)
        assert.equal("bad signature", err)
        -- a table not made by decode: the signing input as a string
        local jws = assert(jose.decode(token))
        assert.is_true(jose.verify_decoded(key, { alg = jws.alg, signing_input = jws.signing_input,
                                                  signature = jws.signature }))
        ok, err = jose.verify_decoded({ kty = "oct", secret = string.rep("k", 32) }, jws)
        assert.is_nil(ok)
        assert.equal("algorithm not allowed for this key", err)
    end)

    it("refuses what it refuses for the token alone, with the same reason", function()
        local h, p, s = token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
        local bad = { h .. "." .. p, h .. "." .. p .. "." .. s .. ".x", "!" .. token:sub(2),
                      h .. "." .. p .. "=." .. s, h .. "." .. p .. "." .. s .. "B",
                      jose.b64url_encode('{"alg":"ES256","crit":["x"]}') .. "." .. p .. "." .. s,
                      jose.b64url_encode('[1]') .. "." .. p .. "." .. s,
                      h .. "." .. jose.b64url_encode("[]") .. "." .. s, "", "...", h .. ".." .. s }
        for _, t in ipairs(bad) do
            local s2 = "x.y " .. t .. " z.w"
            local ok1, e1 = jose.decode(t)
            local ok2, e2 = jose.decode(s2, nil, 5, 4 + #t)
            assert.is_nil(ok1, t)
            assert.is_nil(ok2, t)
            assert.equal(e1, e2, t)
        end
        assert.equal("token too long", select(2, jose.decode(around, 100, i, j)))
    end)

    it("hashes a range as it hashes the substring", function()
        assert.equal(jose.sha256(token), jose.sha256(around, i, j))
        assert.equal(jose.sha256(""), jose.sha256(around, i, i - 1))
        assert.has_error(function() jose.sha256(around, 0, 3) end)
        assert.has_error(function() jose.sha256(around, 1, #around + 1) end)
    end)

    it("keeps each header's own fields when tokens share or differ in headers", function()
        local t2 = assert(jose.encode({ kid = "another" }, { sub = "u2" }, key))
        local t3 = assert(jose.encode({ kid = kid, typ = "at+jwt" }, { sub = "u3" }, key))
        for _ = 1, 3 do
            assert.equal(kid, assert(jose.decode(token)).kid)
            assert.equal("another", assert(jose.decode(t2)).kid)
            assert.equal("at+jwt", assert(jose.decode(t3)).header.typ)
            assert.equal("JWT", assert(jose.decode(token)).header.typ)
        end
        -- a header refused once is refused again (never kept)
        local h, p, s = token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
        local crit = jose.b64url_encode('{"alg":"ES256","crit":["b64"]}') .. "." .. p .. "." .. s
        for _ = 1, 3 do assert.equal("header crit is not supported", select(2, jose.decode(crit))) end
        -- a long header is decoded every time, and right
        local long = assert(jose.encode({ kid = kid, pad = string.rep("p", 600) }, { sub = "u4" }, key))
        for _ = 1, 2 do assert.equal(600, #assert(jose.decode(long)).header.pad) end
        assert.equal(h, token:match("^[^.]+"))
    end)
end)
