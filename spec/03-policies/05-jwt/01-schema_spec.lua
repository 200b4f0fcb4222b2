-- jwt's configuration: the schema, and what init refuses (keys, secrets,
-- revocation lists, identity headers).

local fakes = require "fakes"

describe("jwt schema", function()
    local policy, secret, jwks

    setup(function()
        policy = fakes.policy("jwt")
        secret = fakes.file(string.rep("s", 40) .. "\n")
        jwks = fakes.file('{"keys":[{"kty":"oct","k":"' .. string.rep("A", 43) .. '","kid":"x"}]}')
    end)

    teardown(fakes.cleanup)

    local function errors(conf)
        local out, errs = fakes.check(policy, conf)
        assert.is_nil(out, "the configuration was accepted")
        return table.concat(errs, "\n")
    end

    it("normalises a minimal configuration with its defaults", function()
        local conf = assert(fakes.check(policy, { secret_file = secret }))
        assert.same({ "header", "subprotocol", "ticket", "query" }, conf.token_in)
        assert.equal("access_token", conf.query_param)
        assert.equal("bearer.", conf.subprotocol_prefix)
        assert.is_true(conf.hide_credentials)
        assert.equal(30000, conf.leeway)
        assert.equal(60000, conf.expiry_warning)
        assert.is_true(conf.refresh)
        assert.equal("auth", conf.refresh_type)
        assert.equal(10000, conf.cache_size)
        assert.is_nil(conf.secret, "the secret stays only inside its key")
    end)

    it("takes an audience as a string or a list", function()
        assert.same({ "a" }, assert(fakes.check(policy, { secret_file = secret, audience = "a" })).audience)
        assert.same({ "a", "b" },
                    assert(fakes.check(policy, { secret_file = secret, audience = { "a", "b" } })).audience)
    end)

    it("refuses a configuration without keys, naming the fields that would do", function()
        local e = errors({})
        for _, f in ipairs({ "jwks_file", "jwks_url", "secret", "secret_file" }) do
            assert.truthy(e:find(f, 1, true), e)
        end
    end)

    it("refuses both secrets, or both JWKS sources", function()
        assert.matches("not both", errors({ secret = string.rep("x", 40), secret_file = secret }))
        assert.matches("not both", errors({ jwks_file = jwks, jwks_url = "https://idp.test/jwks" }))
    end)

    it("refuses an HMAC secret shorter than 32 bytes", function()
        assert.matches("32", errors({ secret = "changeme" }))
    end)

    it("refuses a jwks_url that is not http(s)", function()
        assert.matches("URL", errors({ jwks_url = "file:///etc/passwd" }))
    end)

    it("refuses an unknown algorithm, and none", function()
        assert.matches("algorithms", errors({ secret_file = secret, algorithms = { "none" } }))
        assert.matches("algorithms", errors({ secret_file = secret, algorithms = { "HS1" } }))
    end)

    it("refuses an identity header that is not a header name", function()
        assert.matches("header name", errors({ secret_file = secret, headers = { ["X User"] = "sub" } }))
    end)

    it("reports every bad line of a revocation file at once", function()
        local rev = fakes.file("jti:ok\nbogus\n# fine\nsha256:12\nsubscriber:bob\nwhat:ever\n")
        local e = errors({ secret_file = secret, revocation_file = rev })
        assert.matches(":2: ", e)
        assert.matches(":4: sha256: must be followed by 64 hex digits", e)
        assert.matches(":6: ", e)
        assert.is_nil(e:find(":1: ", 1, true))
        assert.is_nil(e:find(":5: ", 1, true))
    end)

    it("refuses a JWKS file without a usable key", function()
        local bad = fakes.file('{"keys":[]}')
        assert.matches(bad, errors({ jwks_file = bad }), 1, true)
    end)
end)
