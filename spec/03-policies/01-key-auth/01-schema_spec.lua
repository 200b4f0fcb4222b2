-- key-auth's configuration: the schema, and the keys file read by init.

local fakes = require "fakes"
local weir  = require "weir"

local HASH = weir.sha256_hex("demo-key")

describe("key-auth schema", function()
    local policy, keys

    setup(function()
        policy = fakes.policy("key-auth")
        keys = fakes.file("sha256:" .. HASH .. "  application=ShopApp subscriber=alice\n")
    end)

    teardown(fakes.cleanup)

    -- The errors for CONF, as one string.
    local function errors(conf)
        local out, errs = fakes.check(policy, conf)
        assert.is_nil(out)
        return table.concat(errs, "\n")
    end

    it("normalises a minimal configuration with its defaults", function()
        local conf = assert(fakes.check(policy, { keys_file = keys }))
        assert.same(keys, conf.keys_file)
        assert.same("apikey", conf.header)
        assert.same("apikey", conf.query_param)
        assert.same({ "header", "query" }, conf.key_in)
    end)

    it("resolves a relative keys_file against the configuration's directory", function()
        local dir, name = keys:match("^(.*)/([^/]+)$")
        local conf = assert(fakes.check(policy, { keys_file = name }, dir))
        assert.same(keys, conf.keys_file)
    end)

    it("keeps the options it is given", function()
        local conf = assert(fakes.check(policy, { keys_file = keys, header = "X-Api-Key",
                                                  query_param = "key", key_in = { "header" } }))
        assert.same("X-Api-Key", conf.header)
        assert.same("key", conf.query_param)
        assert.same({ "header" }, conf.key_in)
    end)

    it("requires keys_file", function()
        assert.matches("keys_file: required field missing", errors({}), 1, true)
    end)

    it("rejects a keys_file that is not a string", function()
        assert.matches("keys_file: expected a file path, got 42", errors({ keys_file = 42 }), 1, true)
    end)

    it("rejects a header that is not a header name", function()
        assert.matches('header: expected an HTTP header name, got "api key"',
                       errors({ keys_file = keys, header = "api key" }), 1, true)
    end)

    it("rejects an empty query_param", function()
        assert.matches("query_param: must not be empty", errors({ keys_file = keys, query_param = "" }), 1, true)
    end)

    it("rejects an unknown place in key_in", function()
        assert.matches('key_in[1]: expected one of header, query, got "cookie"',
                       errors({ keys_file = keys, key_in = { "cookie" } }), 1, true)
    end)

    it("rejects an empty key_in", function()
        assert.matches("key_in: must not be empty", errors({ keys_file = keys, key_in = {} }), 1, true)
    end)

    it("rejects an unknown field, suggesting the one meant", function()
        assert.matches("keys_files: unknown field (did you mean keys_file?)",
                       errors({ keys_file = keys, keys_files = keys }), 1, true)
    end)
end)

describe("key-auth keys file", function()
    local policy

    setup(function() policy = fakes.policy("key-auth") end)
    teardown(fakes.cleanup)

    -- Check a configuration whose keys file holds TEXT; returns the conf or
    -- the one error and the file's path.
    local function load(text)
        local path = fakes.file(text)
        local conf, errs = fakes.check(policy, { keys_file = path })
        if conf then return conf, nil, path end
        assert.same(1, #errs)
        return nil, errs[1], path
    end

    it("accepts comments, blank lines, CRLF, quoted values and every field", function()
        local conf = assert(load(table.concat({
            "# keys for the shop",
            "",
            "   # indented comment",
            "sha256:" .. HASH .. "  application=\"Shop App\" subscriber=alice tier=Gold"
                .. " key_type=sandbox scopes=read,write   # trailing comment\r",
            "sha256:" .. weir.sha256_hex("other"):upper() .. "\tapplication=Other\tsubscriber=bob",
        }, "\n")))
        assert.same({ application = "Shop App", subscriber = "alice", tier = "Gold",
                      key_type = "SANDBOX", scopes = { "read", "write" } }, conf._keys[HASH])
        assert.same({ application = "Other", subscriber = "bob", tier = "Unlimited",
                      key_type = "PRODUCTION", scopes = {} }, conf._keys[weir.sha256_hex("other")])
    end)

    it("accepts a file with no keys (every key refused)", function()
        local conf = assert(load("# all revoked\n"))
        assert.same({}, conf._keys)
    end)

    it("names a keys file that cannot be read", function()
        local conf, errs = fakes.check(policy, { keys_file = "/nonexistent/keys.txt" })
        assert.is_nil(conf)
        assert.same({ "init: cannot read the keys file: /nonexistent/keys.txt: No such file or directory" }, errs)
    end)

    it("rejects a line that does not start with a hash, without quoting it", function()
        local _, err, path = load("# ok\nmy-secret-key application=A subscriber=b\n")
        assert.matches(path .. ":2: a line starts with the key's hash, sha256:<64 hex digits>", err, 1, true)
        assert.not_matches("my-secret-key", err, 1, true)
    end)

    it("rejects a hash that is not 64 hex digits", function()
        local _, err, path = load("sha256:abc123 application=A subscriber=b\n")
        assert.matches(path .. ":1: sha256: must be followed by the 64 hex digits", err, 1, true)
    end)

    it("rejects the same hash twice, naming the first line", function()
        local line = "sha256:" .. HASH .. " application=A subscriber=b\n"
        local _, err, path = load(line .. "\n" .. line)
        assert.same("init: " .. path .. ":3: the same key hash is already on line 1", err)
    end)

    it("rejects an unknown field", function()
        local _, err, path = load("sha256:" .. HASH .. " application=A subscriber=b owner=c\n")
        assert.matches(path .. ":1: unknown field owner", err, 1, true)
    end)

    it("rejects a field given twice", function()
        local _, err, path = load("sha256:" .. HASH .. " application=A application=B subscriber=b\n")
        assert.matches(path .. ":1: field application is given twice", err, 1, true)
    end)

    it("rejects a missing application", function()
        local _, err, path = load("sha256:" .. HASH .. " subscriber=b\n")
        assert.matches(path .. ":1: field application is required", err, 1, true)
    end)

    it("rejects a missing subscriber", function()
        local _, err, path = load("sha256:" .. HASH .. " application=A\n")
        assert.matches(path .. ":1: field subscriber is required", err, 1, true)
    end)

    it("rejects an unknown key_type", function()
        local _, err, path = load("sha256:" .. HASH .. " application=A subscriber=b key_type=TEST\n")
        assert.matches(path .. ':1: key_type must be PRODUCTION or SANDBOX, got "TEST"', err, 1, true)
    end)

    it("rejects an unterminated quoted value", function()
        local _, err, path = load("sha256:" .. HASH .. ' application="Shop App subscriber=b\n')
        assert.matches(path .. ":1: field application: the quoted value has no closing quote", err, 1, true)
    end)

    it("rejects a field without a value", function()
        local _, err, path = load("sha256:" .. HASH .. " application= subscriber=b\n")
        assert.matches(path .. ":1: field application has no value", err, 1, true)
    end)

    it("rejects words that are not NAME=VALUE", function()
        local _, err, path = load("sha256:" .. HASH .. " ShopApp alice\n")
        assert.matches(path .. ":1: expected NAME=VALUE fields after the key hash", err, 1, true)
    end)
end)
