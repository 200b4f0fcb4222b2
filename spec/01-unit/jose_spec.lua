-- lua/weir/jose.lua: strict base64url, the JWS compact form, JWKS import
-- and signature checks, in a plain LuaJIT (libcrypto through ffi.load).
--
-- Keys are generated and tokens minted at run time by
-- spec/support/mint_jwt.py (python3-jwt signs the ordinary tokens,
-- python3-cryptography the ones that are wrong on purpose), in one temporary
-- directory per run of this file.

local jose  = require "weir.jose"
local cjson = require "cjson"
local ffi   = require "ffi"
local bit   = require "bit"

local ROOT = (function()
    local src = debug.getinfo(1, "S").source:sub(2)
    if src:sub(1, 1) ~= "/" then src = assert(os.getenv("PWD")) .. "/" .. src end
    src = src:gsub("/%./", "/")
    return assert(src:match("^(.*)/spec/01%-unit/[^/]+$"))
end)()
local MINT = ROOT .. "/spec/support/mint_jwt.py"

ffi.cdef [[ unsigned long ERR_peek_error(void); ]]
local libcrypto = ffi.load("libcrypto.so.3")

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

local function make_tmpdir()
    local name = os.tmpname()
    os.remove(name)
    assert(os.execute("mkdir -p " .. sh_quote(name)) == 0)
    return name
end

-- mint_jwt.py CMD DIR with SPEC (a table, as JSON in a file): its stdout
local function mint_py(cmd, dir, spec)
    local path = write(dir .. "/spec-" .. cmd .. ".json", cjson.encode(spec))
    local p = assert(io.popen("/usr/bin/python3 " .. sh_quote(MINT) .. " " .. cmd .. " "
                              .. sh_quote(dir) .. " " .. sh_quote(path)))
    local out = p:read("*a")
    p:close()
    assert(out ~= "", "mint_jwt.py " .. cmd .. " printed nothing")
    return out
end

local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

-- every token the specs use, minted in one run of the script
local TOKENS = {
    -- ordinary tokens, signed by PyJWT
    RS256 = { key = "rsa", alg = "RS256", claims = { sub = "u1" }, exp_in = 60 },
    RS384 = { key = "rsa", alg = "RS384", claims = { sub = "u1" } },
    RS512 = { key = "rsa", alg = "RS512", claims = { sub = "u1" } },
    PS256 = { key = "rsa", alg = "PS256", claims = { sub = "u1" } },
    PS384 = { key = "rsa", alg = "PS384", claims = { sub = "u1" } },
    PS512 = { key = "rsa", alg = "PS512", claims = { sub = "u1" } },
    ES256 = { key = "ec256", alg = "ES256", claims = { sub = "u1" } },
    ES384 = { key = "ec384", alg = "ES384", claims = { sub = "u1" } },
    EdDSA = { key = "ed25519", alg = "EdDSA", claims = { sub = "u1" } },
    HS256 = { key = "hmac", alg = "HS256", claims = { sub = "u1" } },
    HS384 = { key = "hmac", alg = "HS384", claims = { sub = "u1" } },
    HS512 = { key = "hmac", alg = "HS512", claims = { sub = "u1" } },
    no_kid = { key = "ec256", alg = "ES256", kid = cjson.null, claims = { sub = "u1" } },
    other_ec256 = { key = "ec256b", alg = "ES256", kid = "ec256", claims = { sub = "u1" } },
    -- assembled by hand: controls first (they must pass, so the attacks
    -- below fail for the reason they are about)
    hand_ES256 = { key = "ec256", alg = "ES256", encoding = "url", claims = { sub = "u1" } },
    hand_RS256 = { key = "rsa", alg = "RS256", encoding = "url", claims = { sub = "u1" } },
    hand_HS256_pem = { key = "rsa", alg = "HS256", kid = "rsa", secret_file = "rsa.pub.pem",
                       claims = { sub = "admin" } },
    none = { key = "none", alg = "none", kid = "rsa", claims = { sub = "admin" } },
    None = { key = "none", alg = "None", kid = "rsa", claims = { sub = "admin" } },
    NONE = { key = "none", alg = "NONE", kid = "rsa", claims = { sub = "admin" } },
    none_signed = { key = "hmac", alg = "none", sign_alg = "HS256", kid = "hmac", claims = { sub = "admin" } },
    es256_der = { key = "ec256", alg = "ES256", signature = "der", claims = { sub = "u1" } },
    es256_as_384 = { key = "ec256", alg = "ES256", kid = "ec384", encoding = "url", claims = { sub = "u1" } },
    ps256_salt_max = { key = "rsa", alg = "PS256", pss_salt = "max", claims = { sub = "u1" } },
    ps256_salt_0 = { key = "rsa", alg = "PS256", pss_salt = 0, claims = { sub = "u1" } },
    padded = { key = "rsa", alg = "RS256", encoding = "padded", claims = { sub = "u1" } },
    huge = { key = "rsa", alg = "RS256", claims = { sub = "u1", pad = string.rep("a", 65536) } },
    crit = { key = "rsa", alg = "RS256", header = { crit = { "exp" }, exp = 1 }, claims = { sub = "u1" } },
    b64_false = { key = "rsa", alg = "RS256", header = { b64 = false, crit = { "b64" } }, claims = {} },
    b64_false_only = { key = "rsa", alg = "RS256", header = { b64 = false }, claims = {} },
    no_alg = { key = "rsa", alg = "RS256", header = { alg = cjson.null }, claims = {} },
    alg_number = { key = "rsa", alg = "RS256", raw_header = '{"alg":256,"kid":"rsa"}', claims = {} },
    kid_number = { key = "rsa", alg = "RS256", raw_header = '{"alg":"RS256","kid":7}', claims = {} },
    kid_empty = { key = "rsa", alg = "RS256", kid = "", claims = {} },
}
for _, name in ipairs { "payload", "signature" } do
    for _, alg in ipairs { "RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256" } do
        local base = TOKENS[alg]
        TOKENS["tamper_" .. name .. "_" .. alg] = { key = base.key, alg = alg, tamper = name,
                                                    claims = { sub = "u1" } }
    end
end
local NOT_OBJECTS = { "[1,2]", "[]", '"a string"', "123", "true", "null", "[{}]" }
for i, text in ipairs(NOT_OBJECTS) do
    TOKENS["header_not_object_" .. i] = { key = "rsa", alg = "RS256", raw_header = text, claims = {} }
    TOKENS["payload_not_object_" .. i] = { key = "rsa", alg = "RS256", raw_payload = text }
end
TOKENS.header_not_json = { key = "rsa", alg = "RS256", raw_header = '{"alg":"RS256"', claims = {} }
TOKENS.payload_not_json = { key = "rsa", alg = "RS256", raw_payload = '{"sub":' }
TOKENS.payload_nan = { key = "rsa", alg = "RS256", raw_payload = '{"exp":NaN}' }

local ALGS = { "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
               "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512" }

describe("weir.jose", function()
    local dir, keys, tok, keyset, hmac

    -- decode must succeed: the JWS
    local function jws_of(name)
        local jws, err = jose.decode(assert(tok[name], name), 1e6)
        assert(jws, name .. ": " .. tostring(err))
        return jws
    end

    -- decode must fail; the error matches PATTERN and contains no part of the token
    local function refused(token, pattern, max_len)
        local jws, err = jose.decode(token, max_len)
        assert.is_nil(jws)
        assert.is_string(err)
        assert.matches(pattern, err)
        assert.is_true(#err < 80)
        for part in token:gmatch("[^.]+") do
            if #part >= 8 then assert.is_nil(err:find(part:sub(1, 8), 1, true)) end
        end
        return err
    end

    setup(function()
        dir = make_tmpdir()
        local spec = { keys = {
            { name = "rsa", type = "RSA", bits = 2048 },
            { name = "ec256", type = "EC", crv = "P-256" },
            { name = "ec384", type = "EC", crv = "P-384" },
            { name = "ed25519", type = "OKP", crv = "Ed25519" },
            { name = "hmac", type = "oct", bytes = 64 },
            { name = "ec256b", type = "EC", crv = "P-256", in_jwks = false },
            { name = "rsa1024", type = "RSA", bits = 1024, in_jwks = false },
        } }
        keys = cjson.decode(mint_py("keys", dir, spec)).keys
        local names, descs = {}, {}
        for name, desc in pairs(TOKENS) do
            names[#names + 1] = name
            descs[#descs + 1] = desc
        end
        local minted = cjson.decode(mint_py("mint", dir, descs))
        assert(#minted == #names)
        tok = {}
        for i, name in ipairs(names) do tok[name] = minted[i] end
        keyset = assert(jose.jwks(read(dir .. "/jwks.json")))
        hmac = assert(jose.hmac_key(read(keys.hmac.secret_file)))
    end)

    teardown(function()
        if dir then os.execute("rm -rf " .. sh_quote(dir)) end
    end)

    -- the key TOKEN's description names
    local function key_for(name)
        local desc = TOKENS[name]
        if desc.key == "hmac" then return hmac end
        return assert(keyset.by_kid[desc.kid or desc.key], name)
    end

    describe("b64url", function()
        it("encodes and decodes RFC 4648's test vectors, unpadded", function()
            local vectors = { [""] = "", f = "Zg", fo = "Zm8", foo = "Zm9v", foob = "Zm9vYg",
                              fooba = "Zm9vYmE", foobar = "Zm9vYmFy", ["\251\255\191"] = "-_-_" }
            for plain, enc in pairs(vectors) do
                assert.equal(enc, jose.b64url_encode(plain))
                assert.equal(plain, jose.b64url_decode(enc))
            end
        end)

        it("round-trips every byte value at every length remainder", function()
            local all = {}
            for i = 0, 255 do all[#all + 1] = string.char(i) end
            all = table.concat(all)
            for n = 0, 40 do
                local s = all:sub(256 - n) .. all:sub(1, n)
                local enc = jose.b64url_encode(s)
                assert.is_nil(enc:find("[^%w%-_]"))
                assert.equal(s, jose.b64url_decode(enc))
            end
            assert.equal(all, jose.b64url_decode(jose.b64url_encode(all)))
        end)

        it("refuses padding, '+', '/', whitespace and other characters", function()
            for _, bad in ipairs { "Zg==", "Zm8=", "Zm9v+w", "Zm9v/w", "Zm9v Yg", " Zm9v", "Zm9v\n",
                                   "Zm9v\tYg", "Zm9v\0Yg", "Zm9v.Yg", "Zm9vYé" } do
                local out, err = jose.b64url_decode(bad)
                assert.is_nil(out, bad)
                assert.matches("base64url", err)
            end
        end)

        it("refuses impossible lengths (len % 4 == 1)", function()
            for _, bad in ipairs { "Z", "Zm9vY", "Zm9vYmFyZ" } do
                local out, err = jose.b64url_decode(bad)
                assert.is_nil(out)
                assert.equal("bad base64url length", err)
            end
        end)

        it("refuses non-zero bits after the last byte (one encoding per byte string)", function()
            assert.equal("f", jose.b64url_decode("Zg"))
            assert.is_nil(jose.b64url_decode("Zh"))
            assert.is_nil(jose.b64url_decode("Zm9"))
            assert.equal("fo", jose.b64url_decode("Zm8"))
        end)

        it("refuses what is not a string", function()
            assert.is_nil(jose.b64url_decode(nil))
            assert.is_nil(jose.b64url_decode(12))
        end)
    end)

    describe("decode", function()
        it("splits a token into header, payload, signing input and signature", function()
            local token = tok.RS256
            local jws = jws_of("RS256")
            assert.equal("RS256", jws.alg)
            assert.equal("rsa", jws.kid)
            assert.equal("RS256", jws.header.alg)
            assert.equal("JWT", jws.header.typ)
            assert.equal("u1", jws.payload.sub)
            assert.is_number(jws.payload.exp)
            assert.equal(token:match("^([^.]+%.[^.]+)%."), jws.signing_input)
            assert.equal(256, #jws.signature)
            assert.equal(token:match("[^.]+$"), jose.b64url_encode(jws.signature))
        end)

        it("gives no kid when the header has none", function()
            assert.is_nil(jws_of("no_kid").kid)
        end)

        it("refuses a 64 KiB token before decoding anything", function()
            local token = tok.huge
            assert.is_true(#token >= 65536)
            refused(token, "^token too long$")
            -- the same token is well formed: only its length was wrong
            assert.is_table(jose.decode(token, 100000))
            -- and the length is checked first: garbage of that size says so too
            refused(string.rep("!", 65536), "^token too long$")
        end)

        it("takes 8192 bytes by default, or max_len", function()
            local h = jose.b64url_encode('{"alg":"RS256"}')
            local function token(n)
                return h .. "." .. jose.b64url_encode('{"p":"' .. string.rep("x", n) .. '"}') .. ".c2ln"
            end
            local under, over
            for n = 6000, 6200 do
                local t = token(n)
                if #t <= 8192 then under = t elseif not over then over = t end
            end
            assert.is_true(#under >= 8190 and #over <= 8195)
            assert.is_table(jose.decode(under))
            refused(over, "^token too long$")
            refused(under, "^token too long$", 8000)
        end)

        it("takes exactly three parts", function()
            local h, p, s = tok.RS256:match("^([^.]+)%.([^.]+)%.([^.]+)$")
            for _, bad in ipairs { h .. "." .. p, h .. "." .. p .. "." .. s .. "." .. s,
                                   h .. "." .. p .. "." .. s .. ".", h, "", "...", h .. p .. s } do
                if bad == "" then
                    refused(bad, "^empty token$")
                else
                    refused(bad, "three dot%-separated parts")
                end
            end
            refused("..", "^header is not a JSON object$")
            assert.is_nil(jose.decode(nil))
            assert.is_nil(jose.decode({}))
        end)

        it("refuses invalid base64url in any part", function()
            local h, p, s = tok.RS256:match("^([^.]+)%.([^.]+)%.([^.]+)$")
            refused(h .. "=." .. p .. "." .. s, "^header: bad base64url")
            refused(h .. "." .. p .. "." .. "+" .. s:sub(2), "^signature: bad base64url character")
            refused(h .. "." .. "/" .. p:sub(2) .. "." .. s, "^payload: bad base64url character")
            refused(h .. "." .. p .. " ." .. s, "^payload: bad base64url character")
            refused(h .. "." .. p .. "." .. s .. "\n", "^signature: bad base64url character")
            refused(" " .. h .. "." .. p .. "." .. s, "^header: bad base64url")
            refused(" " .. h:sub(2) .. "." .. p .. "." .. s, "^header: bad base64url character")
            refused(h .. "." .. p .. "." .. s:sub(1, 1 + 4 * math.floor((#s - 1) / 4)),
                    "^signature: bad base64url length")
            -- a whole token in padded base64url: an RSA-2048 signature (256
            -- bytes) always ends in "=="
            assert.matches("==$", tok.padded)
            refused(tok.padded, "bad base64url")
        end)

        it("refuses a header or payload that is JSON but not an object", function()
            for i in ipairs(NOT_OBJECTS) do
                refused(tok["header_not_object_" .. i], "^header is not a JSON object$")
                refused(tok["payload_not_object_" .. i], "^payload is not a JSON object$")
            end
        end)

        it("refuses a header or payload that is not JSON", function()
            refused(tok.header_not_json, "^header is not valid JSON$")
            refused(tok.payload_not_json, "^payload is not valid JSON$")
            refused(tok.payload_nan, "^payload is not valid JSON$")
        end)

        it("refuses a header without a string alg or with a kid that is not a non-empty string", function()
            refused(tok.no_alg, "^header has no alg$")
            refused(tok.alg_number, "^header has no alg$")
            refused(tok.kid_number, "^header kid is not a non%-empty string$")
            refused(tok.kid_empty, "^header kid is not a non%-empty string$")
        end)

        it("refuses crit (no extension is understood) and b64=false", function()
            refused(tok.crit, "^header crit is not supported$")
            refused(tok.b64_false, "^header crit is not supported$")
            refused(tok.b64_false_only, "^header b64 is not supported$")
        end)

        it("decodes an unsigned token (alg none) but leaves its refusal to verify", function()
            local jws = jws_of("none")
            assert.equal("none", jws.alg)
            assert.equal("", jws.signature)
        end)
    end)

    describe("jwks", function()
        it("loads RSA, EC P-256, EC P-384 and Ed25519 JWKs written by PyJWT", function()
            assert.equal(4, #keyset.keys)
            assert.same({}, keyset.skipped)
            local rsa, ec256, ec384, ed = keyset.by_kid.rsa, keyset.by_kid.ec256,
                                          keyset.by_kid.ec384, keyset.by_kid.ed25519
            assert.equal("RSA", rsa.kty)
            assert.equal(2048, rsa.bits)
            assert.equal("EC", ec256.kty)
            assert.equal("P-256", ec256.crv)
            assert.equal("P-384", ec384.crv)
            assert.equal("OKP", ed.kty)
            assert.equal("Ed25519", ed.crv)
            for _, key in ipairs(keyset.keys) do
                assert.equal("cdata", type(key.pkey))
                assert.is_nil(key.secret)
                assert.is_nil(key.alg)
            end
        end)

        it("takes a decoded table as well as JSON text", function()
            local set = assert(jose.jwks(cjson.decode(read(dir .. "/jwks.json"))))
            assert.equal(4, #set.keys)
        end)

        it("skips an RSA key under 2048 bits and loads the others", function()
            local small = keys.rsa1024.jwk
            local set = assert(jose.jwks { keys = { small, keys.ec256.jwk } })
            assert.equal(1, #set.keys)
            assert.is_nil(set.by_kid.rsa1024)
            assert.same({ "kid rsa1024: RSA modulus of 1024 bits is too short" }, set.skipped)
            -- alone, it leaves no key: an error naming why
            local none, err = jose.jwks { keys = { small } }
            assert.is_nil(none)
            assert.matches("no usable key", err)
            assert.matches("1024 bits", err)
        end)

        it("skips unknown kty, unsupported curves and keys not for signatures, and counts them", function()
            local set = assert(jose.jwks { keys = {
                { kty = "XYZ", kid = "x1" },
                keys.ed25519.jwk,
                { kty = "EC", crv = "P-521", kid = "p521", x = "AA", y = "AA" },
                { kty = "OKP", crv = "Ed448", kid = "ed448", x = "AA" },
                { kty = "OKP", crv = "X25519", kid = "x25519", x = "AA" },
                { kty = "RSA", kid = "enc", use = "enc", n = keys.rsa.jwk.n, e = keys.rsa.jwk.e },
                { kty = "RSA", kid = "ops", key_ops = { "encrypt" }, n = keys.rsa.jwk.n, e = keys.rsa.jwk.e },
                "not a key",
                { kid = "nokty" },
                keys.rsa.jwk,
            } })
            assert.equal(2, #set.keys)
            assert.truthy(set.by_kid.ed25519 and set.by_kid.rsa)
            assert.same({
                "kid x1: unsupported kty", "kid p521: unsupported crv", "kid ed448: unsupported crv",
                "kid x25519: unsupported crv", "kid enc: use is not sig", "kid ops: key_ops has no verify",
                "key #8: not a JSON object", "kid nokty: no kty",
            }, set.skipped)
        end)

        it("refuses an EC point that is not on the curve", function()
            for _, name in ipairs { "ec256", "ec384" } do
                local jwk = keys[name].jwk
                local y = jose.b64url_decode(jwk.y)
                local bad_y = y:sub(1, -2) .. string.char(bit.bxor(y:byte(-1), 1))
                local bad = { kty = "EC", crv = jwk.crv, kid = "bad", x = jwk.x, y = jose.b64url_encode(bad_y) }
                local key, err = jose.jwk(bad)
                assert.is_nil(key)
                assert.equal("EC point is not on the curve", err)
                local set = assert(jose.jwks { keys = { bad, jwk } })
                assert.equal(1, #set.keys)
                assert.same({ "kid bad: EC point is not on the curve" }, set.skipped)
                -- the unaltered point imports
                assert.is_table(jose.jwk(jwk))
            end
        end)

        it("refuses EC and Ed25519 coordinates of the wrong length", function()
            local jwk = keys.ec256.jwk
            local x = jose.b64url_decode(jwk.x)
            -- a coordinate a few bytes short is taken as having lost its leading
            -- zeros (PyJWT < 2.8 writes them so): padded, then on the curve or not.
            -- Cut a byte that is not zero (x's first is zero for one key in 256:
            -- then padding would give x back), so the padded point is off the curve.
            local y = jose.b64url_decode(jwk.y)
            local bad = x:byte(1) ~= 0 and { x = jose.b64url_encode(x:sub(2)), y = jwk.y }
                        or { x = jwk.x, y = jose.b64url_encode(y:sub(2)) }
            assert(x:byte(1) ~= 0 or y:byte(1) ~= 0, "both coordinates start with a zero byte")
            local _, err = jose.jwk { kty = "EC", crv = "P-256", x = bad.x, y = bad.y }
            assert.equal("EC point is not on the curve", err)
            _, err = jose.jwk { kty = "EC", crv = "P-256", x = jose.b64url_encode(x:sub(10)), y = jwk.y }
            assert.equal("P-256 coordinates must be 32 bytes", err)
            _, err = jose.jwk { kty = "EC", crv = "P-256", x = jose.b64url_encode("\0" .. x), y = jwk.y }
            assert.equal("P-256 coordinates must be 32 bytes", err)
            -- the P-256 point presented as P-384
            _, err = jose.jwk { kty = "EC", crv = "P-384", x = jwk.x, y = jwk.y }
            assert.equal("P-384 coordinates must be 48 bytes", err)
            local ed = jose.b64url_decode(keys.ed25519.jwk.x)
            _, err = jose.jwk { kty = "OKP", crv = "Ed25519", x = jose.b64url_encode(ed:sub(2)) }
            assert.equal("Ed25519 x must be 32 bytes", err)
            _, err = jose.jwk { kty = "OKP", crv = "Ed25519", x = keys.ed25519.jwk.x .. "=" }
            assert.matches("^x: bad base64url", err)
        end)

        it("verifies with an EC key whose JWK lost a coordinate's leading zero (as PyJWT < 2.8 writes it)", function()
            local py = [[
import json, jwt, jwt.algorithms
from cryptography.hazmat.primitives.asymmetric import ec
while True:
    k = ec.generate_private_key(ec.SECP256R1())
    if k.public_key().public_numbers().x < (1 << 248):
        break
jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.public_key()))
print(json.dumps({"jwk": jwk, "token": jwt.encode({"sub": "z"}, k, algorithm="ES256")}))
]]
            local f = assert(io.popen("/usr/bin/python3 -c " .. sh_quote(py)))
            local out = cjson.decode(f:read("*a"))
            f:close()
            assert.is_true(#jose.b64url_decode(out.jwk.x) < 32, "PyJWT wrote the full length: nothing to test")
            local key = assert(jose.jwk(out.jwk))
            local jws = assert(jose.decode(out.token))
            assert.is_true(jose.verify(key, "ES256", jws.signing_input, jws.signature))
        end)

        it("refuses RSA keys with a bad exponent or missing members", function()
            local n = keys.rsa.jwk.n
            local _, err = jose.jwk { kty = "RSA", n = n, e = "AQ" }        -- 1
            assert.equal("bad RSA exponent", err)
            _, err = jose.jwk { kty = "RSA", n = n, e = "AAEAAA" }          -- 65536: even
            assert.equal("bad RSA exponent", err)
            _, err = jose.jwk { kty = "RSA", n = n }
            assert.equal("no e", err)
            _, err = jose.jwk { kty = "RSA", e = "AQAB" }
            assert.equal("no n", err)
            -- leading zero bytes in n do not change the key
            local key = assert(jose.jwk { kty = "RSA", e = "AQAB",
                                          n = jose.b64url_encode("\0\0" .. jose.b64url_decode(n)) })
            assert.equal(2048, key.bits)
        end)

        it("loads an oct key and refuses one shorter than 32 bytes", function()
            local k = jose.b64url_encode(read(keys.hmac.secret_file))
            local set = assert(jose.jwks { keys = {
                { kty = "oct", kid = "hs", k = k },
                { kty = "oct", kid = "short", k = jose.b64url_encode(string.rep("s", 31)) },
            } })
            assert.equal(1, #set.keys)
            assert.equal(read(keys.hmac.secret_file), set.by_kid.hs.secret)
            assert.same({ "kid short: HMAC secret shorter than 32 bytes" }, set.skipped)
            assert.is_true(jose.verify(set.by_kid.hs, "HS256", jws_of("HS256").signing_input,
                                       jws_of("HS256").signature))
        end)

        it("keeps a JWK's alg, and skips a JWK whose alg does not fit its key", function()
            local jwk = {}
            for k, v in pairs(keys.rsa.jwk) do jwk[k] = v end
            jwk.alg = "PS256"
            local key = assert(jose.jwk(jwk))
            assert.equal("PS256", key.alg)
            jwk.alg = "ES256"
            local _, err = jose.jwk(jwk)
            assert.equal("alg does not fit the key", err)
            jwk.alg = "none"
            _, err = jose.jwk(jwk)
            assert.equal("alg does not fit the key", err)
            local oct = { kty = "oct", alg = "HS512", k = jose.b64url_encode(string.rep("k", 32)) }
            _, err = jose.jwk(oct)
            assert.equal("secret too short for HS512", err)
        end)

        it("skips a duplicate kid, empty kids and keys past MAX_KEYS", function()
            local list = {}
            for i = 1, jose.MAX_KEYS + 3 do
                list[i] = { kty = "OKP", crv = "Ed25519", x = keys.ed25519.jwk.x, kid = "k" .. i }
            end
            list[2].kid = "k1"
            list[3].kid = ""
            local set = assert(jose.jwks { keys = list })
            assert.equal(jose.MAX_KEYS, #set.keys)
            assert.equal(3, #set.skipped)
            assert.same({ "kid k1: duplicate kid", "key #3: kid is not a non-empty string" },
                        { set.skipped[1], set.skipped[2] })
            assert.equal("kid k" .. (jose.MAX_KEYS + 3) .. ": more than " .. jose.MAX_KEYS .. " keys",
                         set.skipped[3])
        end)

        it("fails on a set that is not one, or has no keys", function()
            for _, bad in ipairs { "", "[]", '{"keys":', '{"keys":{}}', '{"keys":[]}', '{"no":[]}', 7 } do
                local set, err = jose.jwks(bad)
                assert.is_nil(set)
                assert.is_string(err)
            end
        end)

        it("keeps key material out of the reasons it gives", function()
            local jwk = keys.rsa1024.jwk
            local set = assert(jose.jwks { keys = { jwk, keys.rsa.jwk } })
            assert.is_nil(set.skipped[1]:find(jwk.n:sub(1, 12), 1, true))
            local weird = { kty = "XYZ", kid = "a\nb\27[31m" .. string.rep("z", 100) }
            set = assert(jose.jwks { keys = { weird, keys.rsa.jwk } })
            assert.is_nil(set.skipped[1]:find("[%c]"))
            assert.is_true(#set.skipped[1] < 100)
        end)
    end)

    describe("key_allows", function()
        it("pins each algorithm to its kind of key", function()
            local allowed = {
                rsa = { RS256 = true, RS384 = true, RS512 = true, PS256 = true, PS384 = true, PS512 = true },
                ec256 = { ES256 = true }, ec384 = { ES384 = true }, ed25519 = { EdDSA = true },
            }
            local others = { "HS256", "HS384", "HS512", "ES512", "Ed25519", "ES256K", "RS1", "rs256",
                             "none", "None", "NONE", "nOnE", "", "RS256 " }
            for kid, set in pairs(allowed) do
                local key = keyset.by_kid[kid]
                for _, alg in ipairs(ALGS) do
                    assert.equal(set[alg] == true, jose.key_allows(key, alg), kid .. " " .. alg)
                end
                for _, alg in ipairs(others) do assert.is_false(jose.key_allows(key, alg), kid .. " " .. alg) end
            end
            for _, alg in ipairs(ALGS) do
                assert.equal(alg:sub(1, 2) == "HS", jose.key_allows(hmac, alg), alg)
            end
            for _, alg in ipairs(others) do
                if alg:sub(1, 2) ~= "HS" then assert.is_false(jose.key_allows(hmac, alg), alg) end
            end
        end)

        it("allows HS384 and HS512 only with secrets as long as their hash", function()
            local k32 = assert(jose.hmac_key(string.rep("k", 32)))
            local k48 = assert(jose.hmac_key(string.rep("k", 48)))
            assert.is_true(jose.key_allows(k32, "HS256"))
            assert.is_false(jose.key_allows(k32, "HS384"))
            assert.is_false(jose.key_allows(k32, "HS512"))
            assert.is_true(jose.key_allows(k48, "HS384"))
            assert.is_false(jose.key_allows(k48, "HS512"))
            assert.is_true(jose.key_allows(hmac, "HS512"))
            local none, err = jose.hmac_key(string.rep("k", 31))
            assert.is_nil(none)
            assert.equal("HMAC secret shorter than 32 bytes", err)
            assert.is_nil(jose.hmac_key(nil))
        end)

        it("allows only the JWK's alg when it has one", function()
            local jwk = {}
            for k, v in pairs(keys.rsa.jwk) do jwk[k] = v end
            jwk.alg = "PS256"
            local key = assert(jose.jwk(jwk))
            assert.is_true(jose.key_allows(key, "PS256"))
            for _, alg in ipairs(ALGS) do
                if alg ~= "PS256" then assert.is_false(jose.key_allows(key, alg), alg) end
            end
        end)

        it("says no to what is not a key or an alg", function()
            assert.is_false(jose.key_allows(nil, "RS256"))
            assert.is_false(jose.key_allows(keyset.by_kid.rsa, nil))
            assert.is_false(jose.key_allows({ kty = "RSA" }, "RS256"))
            assert.is_false(jose.key_allows({ kty = "oct" }, "HS256"))
        end)
    end)

    describe("verify", function()
        for _, alg in ipairs(ALGS) do
            it("passes a " .. alg .. " token signed by PyJWT", function()
                local jws = jws_of(alg)
                assert.equal(alg, jws.alg)
                assert.is_true(jose.verify(key_for(alg), alg, jws.signing_input, jws.signature))
            end)
        end

        it("passes tokens assembled by the test's own signer (the attacks' controls)", function()
            for _, name in ipairs { "hand_ES256", "hand_RS256" } do
                local jws = jws_of(name)
                assert.is_true(jose.verify(key_for(name), jws.alg, jws.signing_input, jws.signature))
            end
        end)

        it("verifies through a key set, by kid or by trying the keys that allow the alg", function()
            local jws = jws_of("ES384")
            assert.equal(keyset.by_kid.ec384, jose.verify_jws(keyset, jws))
            assert.equal(keyset.by_kid.ec256, jose.verify_jws(keyset, jws_of("no_kid")))
            local hs = jws_of("HS256")
            hs.kid = nil
            assert.equal(hmac, jose.verify_jws({ keys = { hmac }, by_kid = {} }, hs))
            local _, err = jose.verify_jws(keyset, jws, { ES256 = true })
            assert.equal("algorithm not allowed", err)
            jws.kid = "nope"
            _, err = jose.verify_jws(keyset, jws)
            assert.equal("unknown kid", err)
            jws.kid = nil
            _, err = jose.verify_jws(keyset, hs)  -- the JWKS has no oct key
            assert.equal("no key for this algorithm", err)
        end)

        it("tries keys without a kid for a kid the set does not know, and says unknown kid", function()
            local anon = {}
            for k, v in pairs(keys.ec256.jwk) do anon[k] = v end
            anon.kid = nil
            local set = assert(jose.jwks { keys = { anon, keys.rsa.jwk } })
            local jws = jws_of("ES256")
            jws.kid = "rotated-away"
            assert.equal(set.keys[1], jose.verify_jws(set, jws))
            -- the kid-less key does not verify it: still "unknown kid" (a refresh may help)
            local other = jws_of("other_ec256")
            other.kid = "rotated-away"
            local _, err = jose.verify_jws(set, other)
            assert.equal("unknown kid", err)
            -- a kid that names a key is held to that key
            other.kid = "rsa"
            _, err = jose.verify_jws(set, other)
            assert.equal("algorithm not allowed for this key", err)
            -- without a kid the reason is the last key's
            other.kid = nil
            _, err = jose.verify_jws(set, other)
            assert.equal("bad signature", err)
        end)

        it("refuses alg none, None and NONE with every key", function()
            local all = { hmac }
            for _, key in ipairs(keyset.keys) do all[#all + 1] = key end
            for _, name in ipairs { "none", "None", "NONE", "none_signed" } do
                local jws = jws_of(name)
                for _, key in ipairs(all) do
                    assert.is_false(jose.key_allows(key, jws.alg))
                    local ok, err = jose.verify(key, jws.alg, jws.signing_input, jws.signature)
                    assert.is_nil(ok)
                    assert.equal("algorithm not allowed for this key", err)
                end
                assert.is_nil(jose.verify_jws(keyset, jws))
                jws.kid = nil
                assert.is_nil(jose.verify_jws({ keys = all, by_kid = {} }, jws))
            end
            -- the signed one carries a valid HS256 signature: only its alg saves us
            local jws = jws_of("none_signed")
            assert.is_true(jose.verify(hmac, "HS256", jws.signing_input, jws.signature))
        end)

        it("refuses HS256 signed with the RSA public key as the HMAC secret", function()
            local jws = jws_of("hand_HS256_pem")
            assert.equal("HS256", jws.alg)
            assert.equal("rsa", jws.kid)
            local ok, err = jose.verify(keyset.by_kid.rsa, "HS256", jws.signing_input, jws.signature)
            assert.is_nil(ok)
            assert.equal("algorithm not allowed for this key", err)
            assert.is_nil(jose.verify_jws(keyset, jws))
            -- a verifier that took the PEM as an HMAC secret would have passed it
            local pem = assert(jose.hmac_key(read(keys.rsa.pub_pem)))
            assert.is_true(jose.verify(pem, "HS256", jws.signing_input, jws.signature))
        end)

        it("refuses an ES256 signature in DER instead of raw R||S", function()
            local jws = jws_of("es256_der")
            assert.is_true(#jws.signature >= 68 and #jws.signature <= 72)
            assert.equal(0x30, jws.signature:byte(1))
            local ok, err = jose.verify(keyset.by_kid.ec256, "ES256", jws.signing_input, jws.signature)
            assert.is_nil(ok)
            assert.equal("bad signature length", err)
            -- padded to 64 bytes it is still no raw signature
            local padded = (jws.signature .. string.rep("\0", 64)):sub(1, 64)
            ok, err = jose.verify(keyset.by_kid.ec256, "ES256", jws.signing_input, padded)
            assert.is_nil(ok)
            assert.equal("bad signature", err)
        end)

        it("refuses an ES256 token against a P-384 key, and the reverse", function()
            local jws = jws_of("es256_as_384")
            local ok, err = jose.verify(keyset.by_kid.ec384, "ES256", jws.signing_input, jws.signature)
            assert.is_nil(ok)
            assert.equal("algorithm not allowed for this key", err)
            assert.is_nil(jose.verify_jws(keyset, jws))
            ok = jose.verify(keyset.by_kid.ec384, "ES384", jws.signing_input, jws.signature)
            assert.is_nil(ok)
            jws = jws_of("ES384")
            ok, err = jose.verify(keyset.by_kid.ec256, "ES384", jws.signing_input, jws.signature)
            assert.is_nil(ok)
            assert.equal("algorithm not allowed for this key", err)
        end)

        it("refuses a signature made by another key of the same kind", function()
            local jws = jws_of("other_ec256")
            local ok, err = jose.verify(keyset.by_kid.ec256, "ES256", jws.signing_input, jws.signature)
            assert.is_nil(ok)
            assert.equal("bad signature", err)
        end)

        for _, what in ipairs { "payload", "signature" } do
            it("refuses a tampered " .. what, function()
                for _, alg in ipairs { "RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256" } do
                    local name = "tamper_" .. what .. "_" .. alg
                    local jws = jws_of(name)
                    local ok, err = jose.verify(key_for(alg), alg, jws.signing_input, jws.signature)
                    assert.is_nil(ok, name)
                    assert.equal("bad signature", err)
                end
                assert.equal("u1-tampered", jws_of("tamper_payload_RS256").payload.sub)
            end)
        end

        it("refuses PS* signatures whose salt is not the hash's length", function()
            for _, name in ipairs { "ps256_salt_max", "ps256_salt_0" } do
                local jws = jws_of(name)
                assert.is_nil(jose.verify(keyset.by_kid.rsa, "PS256", jws.signing_input, jws.signature))
            end
        end)

        it("refuses signatures of the wrong length and empty ones", function()
            for _, alg in ipairs(ALGS) do
                local jws = jws_of(alg)
                local key = key_for(alg)
                for _, sig in ipairs { "", jws.signature:sub(2), jws.signature .. "\0" } do
                    local ok, err = jose.verify(key, alg, jws.signing_input, sig)
                    assert.is_nil(ok, alg)
                    assert.matches("^bad signature", err)
                end
            end
        end)

        it("refuses a signature over another signing input", function()
            local a, b = jws_of("RS256"), jws_of("RS384")
            assert.is_nil(jose.verify(keyset.by_kid.rsa, "RS256", b.signing_input, a.signature))
            local h = jws_of("HS256")
            assert.is_nil(jose.verify(hmac, "HS256", h.signing_input .. "x", h.signature))
        end)

        it("leaves OpenSSL's error queue empty after failures", function()
            local jws = jws_of("tamper_signature_RS256")
            local checks = {
                function() return jose.verify(keyset.by_kid.rsa, "RS256", jws.signing_input, jws.signature) end,
                function() return jose.verify(keyset.by_kid.rsa, "PS256", jws.signing_input, jws.signature) end,
                function()
                    return jose.verify(keyset.by_kid.ec256, "ES256", jws.signing_input, string.rep("\0", 64))
                end,
                function()
                    return jose.verify(keyset.by_kid.ed25519, "EdDSA", jws.signing_input, string.rep("\255", 64))
                end,
                function()
                    return jose.jwk { kty = "EC", crv = "P-256", x = keys.ec256.jwk.x, y = keys.ec256.jwk.x }
                end,
            }
            for i, check in ipairs(checks) do
                for _ = 1, 3 do assert.is_nil(check()) end
                assert.equal(0, tonumber(libcrypto.ERR_peek_error()), "check " .. i)
            end
        end)

        it("refuses bad arguments without raising", function()
            local jws = jws_of("RS256")
            assert.is_nil(jose.verify(keyset.by_kid.rsa, "RS256", nil, jws.signature))
            assert.is_nil(jose.verify(keyset.by_kid.rsa, "RS256", jws.signing_input, nil))
            assert.is_nil(jose.verify(nil, "RS256", jws.signing_input, jws.signature))
        end)
    end)

    describe("sha256", function()
        it("gives the 32 raw bytes of SHA-256", function()
            assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                         hex(jose.sha256("abc")))
            assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                         hex(jose.sha256("")))
            assert.equal(32, #jose.sha256(tok.RS256))
        end)
    end)
end)
