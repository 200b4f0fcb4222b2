-- Signature verifications per second per algorithm, for lua/weir/jose.lua,
-- in a plain LuaJIT (one core). Keys and tokens come from
-- spec/support/mint_jwt.py, made in a temporary directory.
--
-- usage (from the project root):  luajit bench/jose-verify.lua [seconds per alg, default 1]

package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local jose  = require "weir.jose"
local cjson = require "cjson"

local SECONDS = tonumber(arg[1]) or 1
local ALGS = { "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
               "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512" }
local KEY = { RS = "rsa", PS = "rsa", ES = nil, Ed = "ed25519", HS = "hmac" }

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir) == 0)
local function run(cmd, input)
    local f = assert(io.open(dir .. "/in.json", "w"))
    f:write(input or "{}")
    f:close()
    local p = assert(io.popen("/usr/bin/python3 spec/support/mint_jwt.py " .. cmd .. " " .. dir
                              .. " " .. dir .. "/in.json"))
    local out = p:read("*a")
    p:close()
    return out
end
run("keys")
local descs = {}
for i, alg in ipairs(ALGS) do
    local key = KEY[alg:sub(1, 2)] or (alg == "ES256" and "ec256" or "ec384")
    descs[i] = { key = key, alg = alg, claims = { sub = "user-1", iss = "https://idp.example",
                                                 aud = "weir", scope = "read write" }, exp_in = 3600 }
end
local tokens = cjson.decode(run("mint", cjson.encode(descs)))
local function read(p) local f = assert(io.open(p, "rb")); local s = f:read("*a"); f:close(); return s end
local keyset = assert(jose.jwks(read(dir .. "/jwks.json")))
local hmac = assert(jose.hmac_key(read(dir .. "/hmac.secret")))
os.execute("rm -rf " .. dir)

local function rate(fn)
    local n, batch, t0 = 0, 16, os.clock()
    while os.clock() - t0 < SECONDS do
        for _ = 1, batch do assert(fn()) end
        n = n + batch
        if batch < 4096 then batch = batch * 2 end
    end
    return n / (os.clock() - t0)
end

print(string.format("%-6s %12s %12s %12s", "alg", "verify/s", "decode/s", "both/s"))
for i, alg in ipairs(ALGS) do
    local token = tokens[i]
    local jws = assert(jose.decode(token))
    local key = alg:sub(1, 2) == "HS" and hmac or keyset.by_kid[jws.kid]
    local v = rate(function() return jose.verify(key, alg, jws.signing_input, jws.signature) end)
    local d = rate(function() return jose.decode(token) end)
    local b = rate(function()
        local j = jose.decode(token)
        return jose.verify(key, j.alg, j.signing_input, j.signature)
    end)
    print(string.format("%-6s %12.0f %12.0f %12.0f", alg, v, d, b))
end
print(string.format("sha256 of a token: %.0f/s", rate(function() return jose.sha256(tokens[1]) end)))
