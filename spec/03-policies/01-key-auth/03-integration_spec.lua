-- key-auth through a real gateway (docs/policies/key-auth.md): where the
-- key may be, what a refusal looks like on the wire, which endpoint a
-- sandbox key reaches, and what later policies see in ctx.consumer.
local helpers = require "helpers"

local PROD, SANDBOX = "prod-key-0123456789abcdef", "sandbox-key-fedcba9876543210"

describe("key-auth through weir", function()
    local prod, sandbox, gw, keys_file
    local seq = 0

    local function keys(lines)
        return table.concat(lines, "\n") .. "\n"
    end

    local PROD_LINE, SANDBOX_LINE

    setup(function()
        prod = helpers.start_backend("echo")
        sandbox = helpers.start_backend("echo")
        PROD_LINE = "sha256:" .. helpers.sha256(PROD) .. "  application=ShopApp subscriber=alice tier=Gold scopes=read,write"
        SANDBOX_LINE = "sha256:" .. helpers.sha256(SANDBOX) .. '  application="Shop Test" subscriber=bob key_type=SANDBOX'
        keys_file = helpers.write_file(helpers.tmpdir() .. "/keys.txt", keys({ "# spec keys", PROD_LINE, SANDBOX_LINE }))
        local chain = { { "key-auth", { keys_file = keys_file } }, { "spec-verdicts", {} } }
        gw = helpers.start_weir({
            workers = 1,
            policy_paths = { helpers.fixture_policies },
            apis = {
                helpers.policy_api("Shop", "/shop", prod, chain, { sandbox = sandbox }),
                helpers.policy_api("NoSandbox", "/nosb", prod, chain),
                helpers.policy_api("HeaderOnly", "/hdr", prod, {
                    { "key-auth", { keys_file = keys_file, header = "X-Api-Key", key_in = { "header" } } },
                }),
            },
        })
    end)
    teardown(helpers.cleanup)

    local function tag()
        seq = seq + 1
        return "c" .. seq
    end

    local function record(be, id)
        return be:wait_conns(function(conns)
            for _, c in ipairs(conns) do
                if c.url:match("^/[^?]*") == "/" .. id then return c end
            end
        end, 10, "the backend record of " .. id)
    end

    local function has_record(be, id)
        for _, c in ipairs(be:connections()) do
            if c.url:match("^/[^?]*") == "/" .. id then return true end
        end
        return false
    end

    local ask = helpers.ask

    local function open(path, headers)
        local ws, res = helpers.ws_connect(gw.port, { path = path, headers = headers })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        return ws
    end

    local function refused(path, headers)
        local ws, res = helpers.ws_connect(gw.port, { path = path, headers = headers })
        assert.is_nil(ws, "the upgrade was accepted")
        assert.is_table(res, "no HTTP answer: " .. tostring(res))
        return res
    end

    local function unauthorized(res)
        assert.equal(401, res.status)
        assert.equal("application/json", res.headers["content-type"])
        local j = helpers.check_error(res.body, "/problems/unauthorized", 401)
        assert.equal("Invalid or missing API key", j.error.message)
    end

    it("accepts the key in the apikey header and reaches the production endpoint", function()
        local id = tag()
        local ws = open("/shop/1.0/" .. id, { apikey = PROD })
        assert.equal("hello", ask(ws, "hello"))
        record(prod, id)
        assert.is_false(has_record(sandbox, id))
        ws:close()
    end)

    it("accepts the key in the apikey query parameter", function()
        local id = tag()
        local ws = open("/shop/1.0/" .. id .. "?x=1&apikey=" .. PROD .. "&y=2")
        assert.equal("hello", ask(ws, "hello"))
        local rec = record(prod, id)
        assert.equal("/" .. id .. "?x=1&y=2", rec.url, "the key reached the backend's URL")
        ws:close()
    end)

    it("never forwards the key in its header either", function()
        local id = tag()
        local ws = open("/shop/1.0/" .. id, { apikey = PROD })
        assert.equal("hello", ask(ws, "hello"))
        local rec = record(prod, id)
        for _, kv in ipairs(rec.headers) do
            assert.is_nil(kv[2]:find(PROD, 1, true), "the key reached the backend in " .. kv[1])
        end
        ws:close()
    end)

    it("makes the key's application the consumer that later policies see", function()
        local ws = open("/shop/1.0/" .. tag(), { apikey = PROD })
        local who = helpers.json(ask(ws, "whoami"))
        assert.same({ application = "ShopApp", subscriber = "alice", tier = "Gold", key_type = "PRODUCTION",
                      scopes = { "read", "write" } }, who.consumer)
        ws:close()
    end)

    it("refuses a handshake without a key: 401 and /problems/unauthorized; the backend never sees it", function()
        local id = tag()
        unauthorized(refused("/shop/1.0/" .. id))
        -- a later connection shows the backend caught up
        local later = tag()
        local ws = open("/shop/1.0/" .. later, { apikey = PROD })
        record(prod, later)
        assert.is_false(has_record(prod, id))
        ws:close()
    end)

    it("refuses a wrong key with the same 401 answer", function()
        unauthorized(refused("/shop/1.0/" .. tag(), { apikey = PROD .. "x" }))
        unauthorized(refused("/shop/1.0/" .. tag() .. "?apikey=nope"))
    end)

    it("sends a sandbox key's connection to the sandbox endpoint", function()
        local id = tag()
        local ws = open("/shop/1.0/" .. id, { apikey = SANDBOX })
        assert.equal("to sandbox", ask(ws, "to sandbox"))
        local rec = record(sandbox, id)
        assert.equal(1, rec.messages)
        assert.is_false(has_record(prod, id))
        assert.equal("SANDBOX", helpers.json(ask(ws, "whoami")).consumer.key_type)
        ws:close()
    end)

    it("refuses a sandbox key with 403 /problems/forbidden where the version has no sandbox endpoint", function()
        local id = tag()
        local res = refused("/nosb/1.0/" .. id, { apikey = SANDBOX })
        assert.equal(403, res.status)
        helpers.check_error(res.body, "/problems/forbidden", 403)
        assert.is_false(has_record(prod, id))
        assert.is_false(has_record(sandbox, id))
    end)

    it("with key_in = { \"header\" } reads its own header (any case) and refuses a key in the query", function()
        local ws = open("/hdr/1.0/" .. tag(), { ["x-API-key"] = PROD })
        assert.equal("ok", ask(ws, "ok"))
        ws:close()
        unauthorized(refused("/hdr/1.0/" .. tag() .. "?apikey=" .. PROD))
        unauthorized(refused("/hdr/1.0/" .. tag(), { apikey = PROD }))
    end)

    it("a reload with the key revoked refuses it on new connections and keeps open ones", function()
        local before = open("/shop/1.0/" .. tag(), { apikey = PROD })
        assert.equal("a", ask(before, "a"))
        helpers.write_file(keys_file, keys({ SANDBOX_LINE }))
        local n = 0
        for _, r in ipairs(gw:logs()) do if r.msg == "worker reloaded" then n = n + 1 end end
        helpers.kill(gw.pid, "HUP")
        helpers.wait_until(function()
            local k = 0
            for _, r in ipairs(gw:logs()) do if r.msg == "worker reloaded" then k = k + 1 end end
            return k > n
        end, 20, "the reload")
        unauthorized(refused("/shop/1.0/" .. tag(), { apikey = PROD }))
        assert.equal("b", ask(before, "b"))
        assert.equal("ShopApp", helpers.json(ask(before, "whoami")).consumer.application)
        before:close()
        local ws = open("/shop/1.0/" .. tag(), { apikey = SANDBOX })
        assert.equal("c", ask(ws, "c"))
        ws:close()
    end)
end)
