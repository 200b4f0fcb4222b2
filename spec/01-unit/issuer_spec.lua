-- lua/weir/issuer.lua and the signing half of lua/weir/jose.lua: ES256 keys
-- generated and loaded, JWTs signed, the key ring over a store (an in-memory
-- fake with the SQLite store's methods), in a plain LuaJIT.
--
-- weir's tokens are checked twice: by jose.verify_jws and by PyJWT
-- (spec/support/verify_jwt.py, /usr/bin/python3) using the JWKS weir
-- publishes; python3-cryptography reads weir's PEM independently.

local jose   = require "weir.jose"
local issuer = require "weir.issuer"
local cjson  = require "cjson"

local ROOT = (function()
    local src = debug.getinfo(1, "S").source:sub(2)
    if src:sub(1, 1) ~= "/" then src = assert(os.getenv("PWD")) .. "/" .. src end
    src = src:gsub("/%./", "/")
    return assert(src:match("^(.*)/spec/01%-unit/[^/]+$"))
end)()
local VERIFY = ROOT .. "/spec/support/verify_jwt.py"
local MINT = ROOT .. "/spec/support/mint_jwt.py"
local PY = "/usr/bin/python3"

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function read(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

local function write(path, text)
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
    return path
end

local function run(cmd)
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    return out
end

-- a python3-cryptography script over the PEM in a file: its stdout
local function py_on_pem(pem_path, body)
    local script = "import sys, json, base64\n"
        .. "from cryptography.hazmat.primitives import serialization\n"
        .. "from cryptography.hazmat.primitives.asymmetric import ec\n"
        .. "k = serialization.load_pem_private_key(open(sys.argv[1], 'rb').read(), password=None)\n"
        .. "def b64(n): return base64.urlsafe_b64encode(n.to_bytes(32, 'big')).rstrip(b'=').decode()\n"
        .. body
    return run(PY .. " -c " .. sh_quote(script) .. " " .. sh_quote(pem_path) .. " 2>&1")
end

-- a fake of the key manager's SQLite store: the same four methods, records
-- copied in and out (as rows would be), oldest first
local function fake_store()
    local store = { rows = {}, calls = { add = 0, retire = 0, delete = 0, read = 0 } }
    local function copy(r)
        return { kid = r.kid, private_pem = r.private_pem, public_jwk = r.public_jwk,
                 created_at = r.created_at, retired_at = r.retired_at }
    end
    function store:signing_keys()
        self.calls.read = self.calls.read + 1
        local out = {}
        for i, r in ipairs(self.rows) do out[i] = copy(r) end
        table.sort(out, function(a, b) return a.created_at < b.created_at end)
        return out
    end
    function store:add_signing_key(rec)
        self.calls.add = self.calls.add + 1
        for _, r in ipairs(self.rows) do
            if r.kid == rec.kid then return nil, "UNIQUE constraint failed" end
        end
        self.rows[#self.rows + 1] = copy(rec)
        return true
    end
    function store:retire_signing_key(kid, at)
        self.calls.retire = self.calls.retire + 1
        for _, r in ipairs(self.rows) do
            if r.kid == kid and r.retired_at == nil then r.retired_at = at end
        end
        return true
    end
    function store:delete_signing_key(kid)
        self.calls.delete = self.calls.delete + 1
        for i, r in ipairs(self.rows) do
            if r.kid == kid then table.remove(self.rows, i); return true end
        end
        return true
    end
    return store
end

local function unretired(store)
    local n = 0
    for _, r in ipairs(store.rows) do if r.retired_at == nil then n = n + 1 end end
    return n
end

-- a clock the spec sets
local function fake_clock(t)
    local c = { t = t }
    c.fn = function() return c.t end
    return c
end

-- verify TOKEN with KEYSET through jose: the decoded JWS, or nil, err
local function jose_verify(keyset, token)
    local jws, err = jose.decode(token)
    if not jws then return nil, err end
    local key
    key, err = jose.verify_jws(keyset, jws, { ES256 = true })
    if not key then return nil, err end
    return jws, key
end

describe("weir.jose signing", function()
    local dir

    setup(function()
        local name = os.tmpname()
        os.remove(name)
        assert(os.execute("mkdir -p " .. sh_quote(name)) == 0)
        dir = name
    end)

    teardown(function()
        if dir then os.execute("rm -rf " .. sh_quote(dir)) end
    end)

    describe("generate_ec_p256 and private_key", function()
        it("makes an unencrypted PKCS#8 PEM that python3-cryptography reads as a P-256 key", function()
            local pem = assert(jose.generate_ec_p256())
            assert.matches("^%-%-%-%-%-BEGIN PRIVATE KEY%-%-%-%-%-\n", pem)
            assert.matches("%-%-%-%-%-END PRIVATE KEY%-%-%-%-%-\n$", pem)
            local path = write(dir .. "/gen.pem", pem)
            local out = py_on_pem(path, "print(k.curve.name, k.key_size)\n")
            assert.equal("secp256r1 256\n", out)
        end)

        it("makes a new key each time", function()
            local a, b = assert(jose.generate_ec_p256()), assert(jose.generate_ec_p256())
            assert.not_equal(a, b)
            local ja = jose.public_jwk(assert(jose.private_key(a)))
            local jb = jose.public_jwk(assert(jose.private_key(b)))
            assert.not_equal(ja.x, jb.x)
        end)

        it("loads a P-256 key python3-cryptography made", function()
            local out = run(PY .. " " .. sh_quote(MINT) .. " keys " .. sh_quote(dir .. "/py") .. " -"
                            .. " <<'EOF'\n" .. '{"keys":[{"name":"ec","type":"EC","crv":"P-256"}]}' .. "\nEOF\n")
            local info = cjson.decode(out).keys.ec
            local key = assert(jose.private_key(read(info.pem)))
            local jwk = assert(jose.public_jwk(key))
            assert.equal(info.jwk.x, jwk.x)
            assert.equal(info.jwk.y, jwk.y)
        end)

        it("refuses other keys, encrypted PEM (without prompting), public keys and garbage", function()
            local out = run(PY .. " " .. sh_quote(MINT) .. " keys " .. sh_quote(dir .. "/other") .. " -"
                            .. " <<'EOF'\n" .. cjson.encode { keys = {
                                { name = "rsa", type = "RSA", bits = 2048 },
                                { name = "p384", type = "EC", crv = "P-384" },
                                { name = "ed", type = "OKP", crv = "Ed25519" } } } .. "\nEOF\n")
            local info = cjson.decode(out).keys
            local cases = {
                { read(info.rsa.pem), "not an EC private key" },
                { read(info.p384.pem), "not on P%-256" },
                { read(info.ed.pem), "not an EC private key" },
                { read(info.rsa.pub_pem), "PKCS#8" },
                { "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "could not be read" },
                { "", "PKCS#8" },
                { 42, "not a string" },
            }
            -- an encrypted PKCS#8 key: refused before OpenSSL could ask a terminal
            local pem = assert(jose.generate_ec_p256())
            local enc = py_on_pem(write(dir .. "/plain.pem", pem),
                "sys.stdout.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,"
                .. " serialization.BestAvailableEncryption(b'pw')).decode())\n")
            assert.matches("BEGIN ENCRYPTED PRIVATE KEY", enc)
            cases[#cases + 1] = { enc, "PKCS#8" }
            for _, c in ipairs(cases) do
                local key, err = jose.private_key(c[1])
                assert.is_nil(key)
                assert.matches(c[2], err)
                assert.is_nil(err:find("MI", 1, true))   -- no base64 of key material
            end
        end)
    end)

    describe("public_jwk and thumbprint", function()
        it("gives the public JWK python3-cryptography computes for the same PEM", function()
            local pem = assert(jose.generate_ec_p256())
            local jwk = assert(jose.public_jwk(assert(jose.private_key(pem)), "k1"))
            local out = py_on_pem(write(dir .. "/pub.pem", pem),
                "n = k.public_key().public_numbers(); print(b64(n.x)); print(b64(n.y))\n")
            assert.equal(jwk.x .. "\n" .. jwk.y .. "\n", out)
            assert.same({ kty = "EC", crv = "P-256", x = jwk.x, y = jwk.y, kid = "k1", use = "sig",
                          alg = "ES256" }, jwk)
            assert.is_nil(jwk.d)
        end)

        it("left-pads a coordinate with leading zero bytes to 32 bytes", function()
            -- about one key in 128 has x or y below 2^248
            local found, tried
            for i = 1, 3000 do
                tried = i
                local key = assert(jose.private_key(assert(jose.generate_ec_p256())))
                local jwk = assert(jose.public_jwk(key))
                local x, y = jose.b64url_decode(jwk.x), jose.b64url_decode(jwk.y)
                assert.equal(32, #x)
                assert.equal(32, #y)
                if x:byte(1) == 0 or y:byte(1) == 0 then found = { key = key, jwk = jwk }; break end
            end
            assert(found, "no coordinate with a leading zero byte in " .. tried .. " keys")
            -- the padded JWK imports and verifies (OpenSSL checks the point is on the curve)
            local vkey = assert(jose.jwk(found.jwk))
            local sig = assert(jose.sign(found.key, "ES256", "input"))
            assert.is_true(jose.verify(vkey, "ES256", "input", sig))
        end)

        it("computes RFC 7638's example thumbprint", function()
            -- RFC 7638 §3.1
            local jwk = {
                kty = "RSA", e = "AQAB", alg = "RS256", kid = "2011-04-29",
                n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            }
            assert.equal("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs", jose.thumbprint(jwk))
        end)

        it("defaults the kid to the thumbprint, which ignores kid, use and alg", function()
            local key = assert(jose.private_key(assert(jose.generate_ec_p256())))
            local jwk = assert(jose.public_jwk(key))
            assert.equal(43, #jwk.kid)
            assert.equal(jwk.kid, jose.thumbprint(jwk))
            assert.equal(jwk.kid, jose.thumbprint { kty = "EC", crv = "P-256", x = jwk.x, y = jwk.y })
            assert.not_equal(jwk.kid, jose.thumbprint { kty = "EC", crv = "P-256", x = jwk.y, y = jwk.x })
        end)

        it("refuses members that would need JSON escaping and unknown key types", function()
            assert.is_nil(jose.thumbprint { kty = "EC", crv = "P-256", x = 'a"b', y = "c" })
            assert.is_nil(jose.thumbprint { kty = "EC", crv = "P-256", x = "a" })
            assert.is_nil(jose.thumbprint { kty = "oct", k = "abc" })
            assert.is_nil(jose.public_jwk({ kty = "RSA" }))
            local key = assert(jose.private_key(assert(jose.generate_ec_p256())))
            assert.is_nil(jose.public_jwk(key, ""))
        end)
    end)

    describe("ecdsa_der_to_raw", function()
        local function int(bytes) return "\2" .. string.char(#bytes) .. bytes end
        local function seq(body) return "\48" .. string.char(#body) .. body end
        local R = ("\17"):rep(32)

        it("strips the sign byte of a 33-byte INTEGER", function()
            local hi = "\200" .. ("\1"):rep(31)
            local raw = assert(jose.ecdsa_der_to_raw(seq(int("\0" .. hi) .. int(R)), 32))
            assert.equal(hi .. R, raw)
        end)

        it("left-pads short INTEGERs with zeros", function()
            local raw = assert(jose.ecdsa_der_to_raw(seq(int("\1") .. int(("\127"):rep(30))), 32))
            assert.equal(64, #raw)
            assert.equal(("\0"):rep(31) .. "\1" .. "\0\0" .. ("\127"):rep(30), raw)
            raw = assert(jose.ecdsa_der_to_raw(seq(int("\0") .. int(R)), 32))
            assert.equal(("\0"):rep(32) .. R, raw)
        end)

        it("takes P-384's 48-byte integers", function()
            local r = ("\5"):rep(48)
            assert.equal(r .. ("\0"):rep(47) .. "\9", jose.ecdsa_der_to_raw(seq(int(r) .. int("\9")), 48))
        end)

        it("refuses what is not an ECDSA-Sig-Value of the size", function()
            local bad = {
                "",
                "\48",
                seq(int(R)),                                   -- one INTEGER
                seq(int(R) .. int(R) .. int(R)),               -- three
                seq(int(R) .. int(R)) .. "\0",                 -- trailing byte
                seq(int("\1" .. R) .. int(R)),                 -- 33 significant bytes
                seq(int("\128" .. R:sub(2)) .. int(R)),        -- negative
                seq(int(R) .. "\4\32" .. R),                   -- OCTET STRING, not INTEGER
                seq(int(R) .. "\2\0"),                         -- empty INTEGER
                "\49" .. seq(int(R) .. int(R)):sub(2),         -- a SET
                "\48\130\0\68" .. int(R) .. int(R),            -- long form length for P-256
                seq(int(R) .. "\2\40" .. R),                   -- INTEGER longer than what is left
            }
            for i, d in ipairs(bad) do
                local raw, err = jose.ecdsa_der_to_raw(d, 32)
                assert(raw == nil, "case " .. i .. " accepted")
                assert.is_string(err)
            end
        end)
    end)

    describe("sign", function()
        local key, vkey

        setup(function()
            key = assert(jose.private_key(assert(jose.generate_ec_p256())))
            vkey = assert(jose.jwk(assert(jose.public_jwk(key))))
        end)

        it("makes a 64-byte R||S that jose.verify accepts, and that fails for other input", function()
            local sig = assert(jose.sign(key, "ES256", "a.b"))
            assert.equal(64, #sig)
            assert.is_true(jose.verify(vkey, "ES256", "a.b", sig))
            assert.is_nil(jose.verify(vkey, "ES256", "a.c", sig))
            -- the private key verifies too: it has kty, crv and pkey
            assert.is_true(jose.verify(key, "ES256", "a.b", sig))
        end)

        it("signs with a fresh nonce each time", function()
            assert.not_equal(jose.sign(key, "ES256", "same"), jose.sign(key, "ES256", "same"))
        end)

        it("refuses other algorithms and keys without a private half", function()
            local sig, err = jose.sign(key, "ES384", "x")
            assert.is_nil(sig)
            assert.matches("unsupported", err)
            assert.is_nil((jose.sign(key, "none", "x")))
            assert.is_nil((jose.sign(key, "HS256", "x")))
            sig, err = jose.sign(vkey, "ES256", "x")
            assert.is_nil(sig)
            assert.matches("private", err)
            assert.is_nil((jose.sign(key, "ES256", nil)))
        end)
    end)

    describe("encode", function()
        local key, keyset, kid

        setup(function()
            key = assert(jose.private_key(assert(jose.generate_ec_p256())))
            local jwk = assert(jose.public_jwk(key))
            kid = jwk.kid
            keyset = assert(jose.jwks { keys = { jwk } })
        end)

        it("makes a compact JWS with alg ES256, typ JWT and the kid, that verify_jws accepts", function()
            local token = assert(jose.encode({ kid = kid }, { sub = "svc/a", n = 3, scope = "a b" }, key))
            assert.matches("^[%w_-]+%.[%w_-]+%.[%w_-]+$", token)   -- base64url, no padding
            local jws = assert(jose_verify(keyset, token))
            assert.same({ alg = "ES256", typ = "JWT", kid = kid }, jws.header)
            assert.same({ sub = "svc/a", n = 3, scope = "a b" }, jws.payload)
        end)

        it("keeps other header members, takes the kid from the key, and leaves the caller's tables alone", function()
            local header = { typ = "at+jwt", x5t = "abc" }
            local claims = { sub = "u" }
            key.kid = kid
            local token = assert(jose.encode(header, claims, key))
            key.kid = nil
            local jws = assert(jose_verify(keyset, token))
            assert.same({ alg = "ES256", typ = "at+jwt", x5t = "abc", kid = kid }, jws.header)
            assert.same({ typ = "at+jwt", x5t = "abc" }, header)
            assert.same({ sub = "u" }, claims)
        end)

        it("encodes empty claims as an object", function()
            local token = assert(jose.encode(nil, {}, key))
            local jws = assert(jose.decode(token))
            assert.equal("{}", jose.b64url_decode(token:match("%.([^.]+)%.")))
            assert.is_nil(jws.kid)
        end)

        it("refuses another alg, claims that are not a JSON object, and a bad kid", function()
            local cases = {
                { { alg = "RS256" }, { sub = "u" }, "ES256" },
                { { alg = "none" }, { sub = "u" }, "ES256" },
                { nil, { 1, 2 }, "not a JSON object" },
                { nil, "sub", "not a table" },
                { nil, { f = function() end }, "claims" },
                { nil, { x = 0 / 0 }, "claims" },
                { { kid = 7 }, {}, "kid" },
                { { kid = "" }, {}, "kid" },
            }
            for _, c in ipairs(cases) do
                local token, err = jose.encode(c[1], c[2], key)
                assert.is_nil(token)
                assert.matches(c[3], err)
            end
        end)
    end)

    describe("random_bytes", function()
        it("gives N distinct-looking bytes", function()
            local a, b = assert(jose.random_bytes(16)), assert(jose.random_bytes(16))
            assert.equal(16, #a)
            assert.not_equal(a, b)
            assert.has_error(function() jose.random_bytes(0) end)
            assert.has_error(function() jose.random_bytes(1000) end)
        end)
    end)
end)

describe("weir.issuer", function()
    local dir

    setup(function()
        local name = os.tmpname()
        os.remove(name)
        assert(os.execute("mkdir -p " .. sh_quote(name)) == 0)
        dir = name
    end)

    teardown(function()
        if dir then os.execute("rm -rf " .. sh_quote(dir)) end
    end)

    -- PyJWT's verdict on TOKENS with JWKS_TEXT
    local function pyjwt(jwks_text, tokens, opts)
        local jwks_path = write(dir .. "/jwks.json", jwks_text)
        local tokens_path = write(dir .. "/tokens.txt", table.concat(tokens, "\n") .. "\n")
        local opts_path = write(dir .. "/opts.json", cjson.encode(opts or {}))
        local out = run(PY .. " " .. sh_quote(VERIFY) .. " " .. sh_quote(jwks_path) .. " "
                        .. sh_quote(tokens_path) .. " " .. sh_quote(opts_path) .. " 2>&1")
        local ok, res = pcall(cjson.decode, out)
        assert(ok, "verify_jwt.py: " .. out)
        return res
    end

    local function new(store, opts)
        opts = opts or {}
        opts.store = store
        opts.issuer = opts.issuer or "weir"
        return assert(issuer.new(opts))
    end

    describe("new", function()
        it("refuses bad options", function()
            local store = fake_store()
            local cases = {
                { nil, "table" },
                { { issuer = "weir" }, "store" },
                { { store = {}, issuer = "weir" }, "signing_keys" },
                { { store = store }, "issuer" },
                { { store = store, issuer = "" }, "issuer" },
                { { store = store, issuer = "weir", ttl = 0 }, "ttl" },
                { { store = store, issuer = "weir", ttl = 1.5 }, "ttl" },
                { { store = store, issuer = "weir", ttl = "60" }, "ttl" },
                { { store = store, issuer = "weir", grace = -1 }, "grace" },
                { { store = store, issuer = "weir", audience = {} }, "audience" },
                { { store = store, issuer = "weir", audience = { "a", 1 } }, "audience" },
                { { store = store, issuer = "weir", clock = 5 }, "clock" },
            }
            for _, c in ipairs(cases) do
                local iss, err = issuer.new(c[1])
                assert.is_nil(iss)
                assert.matches(c[2], err)
            end
        end)

        it("reads nothing until asked", function()
            local store = fake_store()
            new(store)
            assert.equal(0, store.calls.read)
        end)
    end)

    describe("ensure", function()
        it("generates the first key into an empty store, and only then", function()
            local store = fake_store()
            local clock = fake_clock(1000)
            local iss = new(store, { clock = clock.fn })
            local kid = assert(iss:ensure())
            assert.equal(1, #store.rows)
            local row = store.rows[1]
            assert.equal(kid, row.kid)
            assert.equal(1000, row.created_at)
            assert.is_nil(row.retired_at)
            assert.matches("^%-%-%-%-%-BEGIN PRIVATE KEY", row.private_pem)
            -- kid: the full RFC 7638 thumbprint of the stored public JWK
            local jwk = cjson.decode(row.public_jwk)
            assert.equal(kid, jwk.kid)
            assert.equal(kid, jose.thumbprint(jwk))
            assert.equal(kid, pyjwt('{"keys":[' .. row.public_jwk .. "]}", {}).thumbprints[kid])

            assert.equal(kid, iss:ensure())
            assert.equal(kid, new(store):ensure())   -- another process: uses it
            assert.equal(1, store.calls.add)
        end)

        it("adds a key when every key in the store is retired", function()
            local store = fake_store()
            local clock = fake_clock(1000)
            local iss = new(store, { clock = clock.fn })
            local old = assert(iss:ensure())
            store:retire_signing_key(old, 1000)
            clock.t = 1001
            local kid = assert(iss:ensure())
            assert.not_equal(old, kid)
            assert.equal(2, #store.rows)
        end)

        it("passes on the store's failure", function()
            local store = fake_store()
            function store:signing_keys() return nil, "database is locked" end
            local kid, err = new(store):ensure()
            assert.is_nil(kid)
            assert.matches("database is locked", err)
            store = fake_store()
            function store:add_signing_key() return nil, "disk full" end
            kid, err = new(store):ensure()
            assert.is_nil(kid)
            assert.matches("disk full", err)
        end)

        -- two processes run ensure() over one empty store, one store call
        -- at a time each, in turn: both read the empty store, both add a key
        local function race(clock_a, clock_b)
            local store = fake_store()
            local yielding = {}
            for _, m in ipairs { "signing_keys", "add_signing_key", "retire_signing_key", "delete_signing_key" } do
                yielding[m] = function(_, ...)
                    local res = { store[m](store, ...) }
                    coroutine.yield(m)
                    return unpack(res)
                end
            end
            local a = new(yielding, { clock = clock_a })
            local b = new(yielding, { clock = clock_b })
            local trace, results = {}, {}
            local co = { a = coroutine.create(function() return a:ensure() end),
                         b = coroutine.create(function() return b:ensure() end) }
            while coroutine.status(co.a) ~= "dead" or coroutine.status(co.b) ~= "dead" do
                for _, name in ipairs { "a", "b" } do
                    if coroutine.status(co[name]) ~= "dead" then
                        local ok, v, err = coroutine.resume(co[name])
                        assert(ok, debug.traceback(co[name], v))
                        if coroutine.status(co[name]) == "dead" then
                            results[name] = { v, err }
                        else
                            trace[#trace + 1] = name .. ":" .. v
                        end
                    end
                end
            end
            a.store, b.store = store, store   -- from now on, calls from outside the coroutines
            return store, a, b, results, trace
        end

        it("lets racing processes settle on one key; the loser's is retired, still published", function()
            local store, a, b, results, trace = race(function() return 1000 end, function() return 1000 end)
            -- the race happened: both read the empty store before either added
            assert.same({ "a:signing_keys", "b:signing_keys", "a:add_signing_key", "b:add_signing_key" },
                        { trace[1], trace[2], trace[3], trace[4] })
            assert.equal(2, #store.rows)
            local winner = results.a[1]
            assert.is_string(winner)
            assert.equal(winner, results.b[1])
            -- same created_at: the greater kid wins
            local kids = { store.rows[1].kid, store.rows[2].kid }
            table.sort(kids)
            assert.equal(kids[2], winner)
            assert.equal(1, unretired(store))
            for _, r in ipairs(store.rows) do
                if r.kid ~= winner then assert.equal(1000, r.retired_at) end
            end
            -- both sign with the winner; the loser stays in the JWKS
            for _, iss in ipairs { a, b } do
                assert(iss:refresh())
                local jws = assert(jose.decode((iss:mint { sub = "x" })))
                assert.equal(winner, jws.kid)
                assert.equal(2, #cjson.decode(iss:jwks()).keys)
            end
        end)

        it("picks the newer key when the racers' clocks differ", function()
            local store, a, b, results = race(function() return 1000 end, function() return 1001 end)
            local b_kid
            for _, r in ipairs(store.rows) do if r.created_at == 1001 then b_kid = r.kid end end
            assert.equal(b_kid, results.a[1])
            assert.equal(b_kid, results.b[1])
            assert.equal(1, unretired(store))
            assert(a:refresh())
            assert.equal(b_kid, assert(jose.decode((a:mint {}))).kid)
        end)

        it("keeps tokens a process signed before it saw the winner valid", function()
            -- A completes ensure() alone and signs; B, which read the store
            -- before A added, then adds its key and wins (it is newer)
            local store = fake_store()
            local a = new(store, { clock = function() return 1000 end })
            local b_store = setmetatable({}, { __index = store })
            local b = new(b_store, { clock = function() return 1001 end })
            local early
            function b_store.signing_keys(_)
                local rows = store:signing_keys()
                if not early then   -- B's first read: empty; then A runs
                    early = true
                    assert(a:ensure())
                    a.early_token = assert(a:mint { sub = "early" })
                end
                return rows
            end
            function b_store.add_signing_key(_, rec) return store:add_signing_key(rec) end
            function b_store.retire_signing_key(_, kid, at) return store:retire_signing_key(kid, at) end
            local b_kid = assert(b:ensure())
            assert.equal(2, #store.rows)
            assert.equal(1, unretired(store))
            assert(a:refresh())
            assert.equal(b_kid, assert(jose.decode((a:mint {}))).kid)
            assert.not_equal(b_kid, assert(jose.decode(a.early_token)).kid)
            assert(jose_verify(b:keyset(), a.early_token))
            assert(jose_verify(a:keyset(), a.early_token))
        end)
    end)

    describe("mint", function()
        local store, clock, iss

        before_each(function()
            store = fake_store()
            clock = fake_clock(1700000000)
            iss = new(store, { clock = clock.fn, ttl = 600, audience = "api" })
            assert(iss:ensure())
        end)

        it("refuses to sign before ensure", function()
            local token, err = new(fake_store()):mint { sub = "x" }
            assert.is_nil(token)
            assert.matches("ensure", err)
        end)

        it("adds iss, iat, exp, jti and aud, and no nbf", function()
            local token, claims = assert(iss:mint { sub = "svc", scope = "read write" })
            local jws = assert(jose_verify(iss:keyset(), token))
            assert.same(claims, jws.payload)
            assert.equal("weir", claims.iss)
            assert.equal(1700000000, claims.iat)
            assert.equal(1700000600, claims.exp)
            assert.equal("api", claims.aud)
            assert.equal("svc", claims.sub)
            assert.equal("read write", claims.scope)
            assert.is_nil(claims.nbf)
            assert.equal(16, #assert(jose.b64url_decode(claims.jti)))
            assert.same({ alg = "ES256", typ = "JWT", kid = iss:keys()[1].kid }, jws.header)
        end)

        it("caps the life at ttl and takes a shorter one", function()
            local _, c = assert(iss:mint({}, 60))
            assert.equal(60, c.exp - c.iat)
            _, c = assert(iss:mint({}, 600))
            assert.equal(600, c.exp - c.iat)
            _, c = assert(iss:mint({}, 86400))
            assert.equal(600, c.exp - c.iat)
            for _, bad in ipairs { 0, -5, 1.5, "60" } do
                local token, err = iss:mint({}, bad)
                assert.is_nil(token)
                assert.matches("ttl", err)
            end
            assert.has_error(function() iss:mint("sub") end)
        end)

        it("uses the clock it is given, truncated to whole seconds", function()
            clock.t = 1700000123.9
            local _, c = assert(iss:mint {})
            assert.equal(1700000123, c.iat)
            assert.equal(1700000723, c.exp)
        end)

        it("sets its own iss, iat, exp and jti over the caller's, keeps the caller's aud, and copies the claims", function()
            local mine = { iss = "evil", exp = 9999999999, iat = 1, jti = "fixed", aud = "other", sub = "s" }
            local _, c = assert(iss:mint(mine))
            assert.equal("weir", c.iss)
            assert.equal(1700000600, c.exp)
            assert.equal(1700000000, c.iat)
            assert.not_equal("fixed", c.jti)
            assert.equal("other", c.aud)
            assert.same({ iss = "evil", exp = 9999999999, iat = 1, jti = "fixed", aud = "other", sub = "s" }, mine)
        end)

        it("gives every token its own jti", function()
            local seen = {}
            for _ = 1, 1000 do
                local _, c = assert(iss:mint {})
                assert.is_nil(seen[c.jti])
                seen[c.jti] = true
            end
        end)

        it("leaves aud out when there is no audience", function()
            local plain = new(store, { clock = clock.fn })
            assert(plain:refresh())
            local _, c = assert(plain:mint { sub = "x" })
            assert.is_nil(c.aud)
            local multi = new(store, { clock = clock.fn, audience = { "a", "b" } })
            assert(multi:refresh())
            _, c = assert(multi:mint {})
            assert.same({ "a", "b" }, c.aud)
        end)
    end)

    describe("with PyJWT", function()
        it("verifies 2000 of weir's tokens with the JWKS weir publishes, leading zeros of R and S included", function()
            local store = fake_store()
            local iss = new(store, { issuer = "https://weir.test", audience = "api", ttl = 3600 })
            local kid = assert(iss:ensure())
            local keyset = iss:keyset()
            local tokens, zeros = {}, 0
            for i = 1, 2000 do
                local token = assert(iss:mint { sub = "client-" .. i, n = i })
                tokens[i] = token
                local jws = assert(jose_verify(keyset, token))
                assert.equal(i, jws.payload.n)
                assert.equal(64, #jws.signature)
                -- R or S below 2^248: its DER INTEGER was short and was padded
                if jws.signature:byte(1) == 0 then zeros = zeros + 1 end
                if jws.signature:byte(33) == 0 then zeros = zeros + 1 end
            end
            -- about 2 * 2000 / 256 = 16 expected; none at all: p < 1e-6
            assert.is_true(zeros > 0)
            local res = pyjwt(iss:jwks(), tokens, { issuer = "https://weir.test", audience = "api" })
            assert.same({}, res.failed)
            assert.equal(2000, res.verified)
            assert.equal(2000, res.kids[kid])
            assert.equal(kid, res.thumbprints[kid])
            assert.equal("client-1", res.claims[1].sub)
            assert.equal("https://weir.test", res.claims[1].iss)
        end)

        it("refuses what it should: another audience, a tampered payload", function()
            local iss = new(fake_store(), { audience = "api" })
            assert(iss:ensure())
            local token = assert(iss:mint { sub = "a" })
            local h, _, s = token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
            local forged = h .. "." .. jose.b64url_encode('{"sub":"admin","iss":"weir","aud":"api","exp":'
                .. (os.time() + 60) .. ',"iat":1,"jti":"x"}') .. "." .. s
            assert.equal(0, pyjwt(iss:jwks(), { token }, { audience = "other" }).verified)
            local res = pyjwt(iss:jwks(), { forged, token }, { audience = "api" })
            assert.equal(1, res.verified)
            assert.equal(1, res.failed[1].line)
        end)

        it("verifies old and new tokens across a rotation with the published JWKS", function()
            local iss = new(fake_store())
            local old = assert(iss:ensure())
            local t1 = assert(iss:mint { sub = "before" })
            local new_kid = assert(iss:rotate())
            local t2 = assert(iss:mint { sub = "after" })
            local res = pyjwt(iss:jwks(), { t1, t2 }, { issuer = "weir" })
            assert.same({}, res.failed)
            assert.equal(1, res.kids[old])
            assert.equal(1, res.kids[new_kid])
        end)
    end)

    describe("rotate and prune", function()
        local store, clock, iss

        before_each(function()
            store = fake_store()
            clock = fake_clock(10000)
            iss = new(store, { clock = clock.fn, ttl = 3600, grace = 60 })
        end)

        it("makes the new key current and retires the old one at the rotation time", function()
            local k1 = assert(iss:ensure())
            clock.t = 10500
            local k2 = assert(iss:rotate())
            assert.not_equal(k1, k2)
            assert.same({ { kid = k1, created_at = 10000, retired_at = 10500, current = false },
                          { kid = k2, created_at = 10500, current = true } }, iss:keys())
            assert.equal(k2, assert(jose.decode((iss:mint {}))).kid)
        end)

        it("keeps old tokens valid until prune, after ttl + grace, deletes their key", function()
            local k1 = assert(iss:ensure())
            local tok1 = assert(iss:mint { sub = "early" })
            clock.t = 10500
            local last1 = assert(iss:mint { sub = "last" })   -- the last token of k1
            local k2 = assert(iss:rotate())
            local tok2 = assert(iss:mint { sub = "new" })
            -- every key in the JWKS and the keyset, current first
            local jwks = cjson.decode(iss:jwks())
            assert.same({ k2, k1 }, { jwks.keys[1].kid, jwks.keys[2].kid })
            for _, t in ipairs { tok1, last1, tok2 } do assert(jose_verify(iss:keyset(), t)) end

            -- at the limit: not yet
            clock.t = 10500 + 3600 + 60
            assert.same({}, assert(iss:prune()))
            assert(jose_verify(iss:keyset(), last1))
            -- after it: k1 goes; every token it signed had expired by then
            clock.t = 10500 + 3600 + 61
            assert.same({ k1 }, assert(iss:prune()))
            assert.is_true(assert(jose.decode(last1)).payload.exp < clock.t)
            assert.equal(1, #store.rows)
            jwks = cjson.decode(iss:jwks())
            assert.equal(1, #jwks.keys)
            assert.equal(k2, jwks.keys[1].kid)
            local jws, err = jose_verify(iss:keyset(), tok1)
            assert.is_nil(jws)
            assert.equal("unknown kid", err)
            assert(jose_verify(iss:keyset(), tok2))
            -- never the current key, however old
            clock.t = clock.t + 10 * 3600
            assert.same({}, assert(iss:prune()))
            assert.equal(k2, iss:keys()[1].kid)
        end)

        it("prunes at ttl exactly with grace 0", function()
            local i0 = new(store, { clock = clock.fn, ttl = 100, grace = 0 })
            local k1 = assert(i0:ensure())
            assert(i0:rotate())
            clock.t = 10100
            assert.same({}, assert(i0:prune()))
            clock.t = 10101
            assert.same({ k1 }, assert(i0:prune()))
        end)

        it("lets another process see a rotation on refresh", function()
            local other = new(store, { clock = clock.fn })
            local k1 = assert(iss:ensure())
            assert.equal(k1, assert(other:ensure()))
            local k2 = assert(iss:rotate())
            -- until it refreshes, the other process signs with k1, still published
            local stale = assert(other:mint {})
            assert.equal(k1, assert(jose.decode(stale)).kid)
            assert(jose_verify(iss:keyset(), stale))
            assert(other:refresh())
            assert.equal(k2, assert(jose.decode((other:mint {}))).kid)
            assert.equal(2, #cjson.decode(other:jwks()).keys)
        end)

        it("parses a key once: refresh reuses what it has", function()
            local k1 = assert(iss:ensure())
            local parsed = iss.parsed[k1]
            local calls = 0
            local real = jose.private_key
            jose.private_key = function(...) calls = calls + 1; return real(...) end
            local ok, err = pcall(function()
                for _ = 1, 50 do assert(iss:refresh()) end
            end)
            jose.private_key = real
            assert(ok, err)
            assert.equal(0, calls)
            assert.equal(parsed, iss.parsed[k1])
        end)

        it("skips a corrupt record and signs with a good one", function()
            local k1 = assert(iss:ensure())
            local good = store.rows[1]
            -- a record whose public JWK is another key's
            local pem = assert(jose.generate_ec_p256())
            local jwk = assert(jose.public_jwk(assert(jose.private_key(pem))))
            store.rows[2] = { kid = jwk.kid, private_pem = good.private_pem, public_jwk = cjson.encode(jwk),
                              created_at = 20000 }
            store.rows[3] = { kid = "bogus", private_pem = "not a pem", public_jwk = "{}", created_at = 20001 }
            assert(iss:refresh())
            assert.equal(2, #iss.skipped)
            assert.equal(1, #iss:keys())
            assert.equal(k1, assert(jose.decode((iss:mint {}))).kid)
            for _, s in ipairs(iss.skipped) do assert.is_nil(s:find("PRIVATE", 1, true)) end
        end)
    end)

    describe("jwks, keys and keyset", function()
        it("publish public material only: no private PEM, no private scalar", function()
            local store = fake_store()
            local clock = fake_clock(5000)
            local iss = new(store, { clock = clock.fn })
            assert(iss:ensure())
            clock.t = 5001
            assert(iss:rotate())
            local texts = { iss:jwks(), cjson.encode(iss:keys()) }
            for _, k in ipairs(iss:keyset().keys) do
                local fields = {}
                for name, v in pairs(k) do
                    if type(v) == "string" or type(v) == "number" or type(v) == "boolean" then fields[name] = v end
                end
                texts[#texts + 1] = cjson.encode(fields)
                assert.is_nil(k.private)
            end
            for _, row in ipairs(store.rows) do
                local d = py_on_pem(write(dir .. "/d.pem", row.private_pem),
                                    "print(b64(k.private_numbers().private_value))\n"):gsub("%s+$", "")
                assert.equal(43, #d)
                local body = row.private_pem:gsub("%-%-%-%-%-[^-]+%-%-%-%-%-", ""):gsub("%s", "")
                for _, text in ipairs(texts) do
                    assert.is_nil(text:find(d, 1, true))
                    assert.is_nil(text:find("PRIVATE", 1, true))
                    for i = 1, #body - 16, 8 do
                        assert.is_nil(text:find(body:sub(i, i + 15), 1, true))
                    end
                end
            end
            local allowed = { kid = true, created_at = true, retired_at = true, current = true }
            for _, k in ipairs(iss:keys()) do
                for name in pairs(k) do assert(allowed[name], "keys() has a field " .. name) end
            end
        end)

        it("publish every JWK with kty, crv, x, y of 32 bytes, kid, use and alg, and nothing else", function()
            local iss = new(fake_store())
            assert(iss:ensure())
            local jwks = cjson.decode(iss:jwks())
            assert.equal(1, #jwks.keys)
            local jwk = jwks.keys[1]
            local names = {}
            for name in pairs(jwk) do names[#names + 1] = name end
            table.sort(names)
            assert.same({ "alg", "crv", "kid", "kty", "use", "x", "y" }, names)
            assert.equal("EC", jwk.kty)
            assert.equal("P-256", jwk.crv)
            assert.equal("sig", jwk.use)
            assert.equal("ES256", jwk.alg)
            assert.equal(32, #jose.b64url_decode(jwk.x))
            assert.equal(32, #jose.b64url_decode(jwk.y))
            -- the keyset is what jose.jwks makes of the same JWKS
            local from_text = assert(jose.jwks(iss:jwks()))
            assert.equal(#from_text.keys, #iss:keyset().keys)
            assert.equal(jwk.kid, iss:keyset().keys[1].kid)
            assert.equal("ES256", iss:keyset().keys[1].alg)
        end)

        it("is an empty key list before the first read", function()
            local iss = new(fake_store())
            assert.equal('{"keys":[]}', iss:jwks())
            assert.same({}, iss:keys())
            assert.same({}, iss:keyset().keys)
        end)

        it("lets verify_jws refuse other algorithms and unknown kids with the keyset", function()
            local iss = new(fake_store())
            assert(iss:ensure())
            local token = assert(iss:mint {})
            local jws = assert(jose.decode(token))
            local key, err = jose.verify_jws(iss:keyset(), jws, { RS256 = true })
            assert.is_nil(key)
            assert.equal("algorithm not allowed", err)
            local other = new(fake_store())
            assert(other:ensure())
            key, err = jose.verify_jws(other:keyset(), jws)
            assert.is_nil(key)
            assert.equal("unknown kid", err)
        end)
    end)
end)
