-- introspection's configuration: the schema, the credentials init reads
-- and prepares, and the encodings it uses (form fields, HTTP Basic).

local fakes = require "fakes"

local URL = "https://idp.test/realms/weir/protocol/openid-connect/token/introspect"

describe("introspection schema", function()
    local policy

    setup(function() policy = fakes.policy("introspection") end)
    teardown(fakes.cleanup)

    local function errors(conf)
        local out, errs = fakes.check(policy, conf)
        assert.is_nil(out)
        return table.concat(errs, "\n")
    end

    local function base(over)
        local c = { introspection_url = URL, client_id = "weir", client_secret = "s3cret" }
        for k, v in pairs(over or {}) do c[k] = v end
        return c
    end

    it("normalises a minimal configuration with its defaults", function()
        local conf = assert(fakes.check(policy, base()))
        assert.same(URL, conf.introspection_url)
        assert.same("basic", conf.client_auth)
        assert.same("access_token", conf.token_type_hint)
        assert.is_true(conf.verify)
        assert.same(5000, conf.timeout)
        assert.same(8192, conf.max_token_size)
        assert.same(10000, conf.cache_size)
        assert.same(60000, conf.cache_ttl)
        assert.same(5000, conf.negative_ttl)
        -- and the shared token fields of weir.oauth
        assert.same({ "header", "subprotocol", "ticket", "query" }, conf.token_in)
        assert.same(30000, conf.leeway)
        assert.is_true(conf.hide_credentials)
    end)

    it("requires introspection_url", function()
        assert.matches("introspection_url: required field missing",
                       errors({ client_id = "weir", client_secret = "s" }), 1, true)
    end)

    it("accepts only http:// and https:// URLs", function()
        assert.matches("introspection_url: expected an http:// or https:// URL",
                       errors(base({ introspection_url = "ftp://idp.test/x" })), 1, true)
        assert.truthy(fakes.check(policy, base({ introspection_url = "http://127.0.0.1:8080/introspect" })))
    end)

    it("rejects an unknown client_auth", function()
        assert.matches('client_auth: expected one of basic, post, got "jwt"',
                       errors(base({ client_auth = "jwt" })), 1, true)
    end)

    it("requires credentials for the endpoint, naming every way to give them", function()
        local e = errors({ introspection_url = URL })
        for _, f in ipairs(policy.required_one_of) do assert.matches(f, e, 1, true) end
        assert.matches("client_secret_file", e, 1, true)
    end)

    it("requires a secret with client_id", function()
        assert.matches("client_id needs client_secret or client_secret_file",
                       errors({ introspection_url = URL, client_id = "weir" }), 1, true)
    end)

    it("refuses client credentials and a bearer token together", function()
        assert.matches("not both", errors(base({ bearer_token = "abc" })), 1, true)
    end)

    it("refuses a secret given twice", function()
        local f = fakes.file("s3cret\n")
        assert.matches("give client_secret or client_secret_file, not both",
                       errors(base({ client_secret_file = f })), 1, true)
    end)

    it("names a secret file that cannot be read, without its content", function()
        assert.matches("cannot read the client_secret_file",
                       errors({ introspection_url = URL, client_id = "weir",
                                client_secret_file = "/nonexistent/secret" }), 1, true)
    end)

    it("refuses a bearer token with a space or a line break", function()
        assert.matches("bearer_token holds spaces or control characters",
                       errors({ introspection_url = URL, bearer_token = "a b" }), 1, true)
        assert.matches("bearer_token holds spaces or control characters",
                       errors({ introspection_url = URL, bearer_token = "ab\r\nX-Evil: 1" }), 1, true)
    end)

    it("rejects a zero timeout and accepts zero cache_ttl / negative_ttl (never cache)", function()
        assert.matches("timeout: must be greater than 0", errors(base({ timeout = 0 })), 1, true)
        local conf = assert(fakes.check(policy, base({ cache_ttl = 0, negative_ttl = 0 })))
        assert.same(0, conf.cache_ttl)
        assert.same(0, conf.negative_ttl)
    end)

    it("rejects an unknown field, suggesting the one meant", function()
        assert.matches("unknown field (did you mean client_secret?)",
                       errors(base({ client_secrets = "x" })), 1, true)
    end)
end)

describe("introspection credentials", function()
    local policy

    setup(function() policy = fakes.policy("introspection") end)
    teardown(fakes.cleanup)

    it("sends client id and secret with HTTP Basic, form-encoded first (RFC 6749 2.3.1)", function()
        local conf = assert(fakes.check(policy, { introspection_url = URL, client_id = "weir app",
                                                  client_secret = "s3:cr/t+" }))
        -- base64("weir+app:s3%3Acr%2Ft%2B")
        assert.same("Basic d2VpcithcHA6czMlM0FjciUyRnQlMkI=", conf._headers.Authorization)
        assert.same("application/x-www-form-urlencoded", conf._headers["Content-Type"])
        assert.same("&token_type_hint=access_token", conf._tail)
    end)

    it("sends them as form fields with client_auth = \"post\"", function()
        local conf = assert(fakes.check(policy, { introspection_url = URL, client_id = "weir",
                                                  client_secret = "a&b=c", client_auth = "post" }))
        assert.is_nil(conf._headers.Authorization)
        assert.same("&token_type_hint=access_token&client_id=weir&client_secret=a%26b%3Dc", conf._tail)
    end)

    it("reads the secret from a file, without its final line break", function()
        local f = fakes.file("from-file\r\n")
        local conf = assert(fakes.check(policy, { introspection_url = URL, client_id = "weir",
                                                  client_secret_file = f, client_auth = "post" }))
        assert.matches("&client_secret=from%-file$", conf._tail)
    end)

    it("sends a bearer token, from the configuration or a file", function()
        local conf = assert(fakes.check(policy, { introspection_url = URL, bearer_token = "tok.123" }))
        assert.same("Bearer tok.123", conf._headers.Authorization)
        local f = fakes.file("tok-from-file\n")
        conf = assert(fakes.check(policy, { introspection_url = URL, bearer_token_file = f }))
        assert.same("Bearer tok-from-file", conf._headers.Authorization)
    end)

    it("keeps no secret in the configuration's own fields", function()
        local conf = assert(fakes.check(policy, { introspection_url = URL, client_id = "weir",
                                                  client_secret = "s3cret" }))
        assert.is_nil(conf.client_secret)
        conf = assert(fakes.check(policy, { introspection_url = URL, bearer_token = "tok" }))
        assert.is_nil(conf.bearer_token)
    end)

    it("logs the URL without userinfo or query", function()
        local conf = assert(fakes.check(policy, { introspection_url = "https://u:p@idp.test:8443/i?key=v",
                                                  bearer_token = "t" }))
        assert.same("https://idp.test:8443/i", conf._log_url)
    end)
end)

describe("introspection encodings", function()
    local policy

    setup(function() policy = fakes.policy("introspection") end)

    it("base64 matches RFC 4648's test vectors", function()
        local b = policy._base64
        assert.same("", b(""))
        assert.same("Zg==", b("f"))
        assert.same("Zm8=", b("fo"))
        assert.same("Zm9v", b("foo"))
        assert.same("Zm9vYg==", b("foob"))
        assert.same("Zm9vYmE=", b("fooba"))
        assert.same("Zm9vYmFy", b("foobar"))
        assert.same("/+8=", b("\255\239"))
    end)

    it("form-encodes every reserved byte", function()
        local f = policy._form
        assert.same("abc-._~XYZ09", f("abc-._~XYZ09"))
        assert.same("a+b%2B%2F%3D%26%25%0D%0A%C3%A9", f("a b+/=&%\r\né"))
    end)
end)
