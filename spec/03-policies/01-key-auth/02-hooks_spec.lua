-- key-auth at the handshake: where the key is found, what a refusal looks
-- like, and what a match sets in ctx.consumer.

local fakes = require "fakes"
local weir  = require "weir"

local SHOP, SANDBOX = "shop-key-0123456789", "sandbox-key-9876543210"

describe("key-auth on_handshake", function()
    local policy, conf

    setup(function()
        policy = fakes.policy("key-auth")
        local keys = fakes.file(table.concat({
            "# test keys",
            "sha256:" .. weir.sha256_hex(SHOP) .. "  application=ShopApp subscriber=alice tier=Gold scopes=read,write",
            "sha256:" .. weir.sha256_hex(SANDBOX) .. "  application=ShopApp subscriber=alice key_type=SANDBOX",
        }, "\n"))
        conf = { keys_file = keys }
    end)

    teardown(fakes.cleanup)

    local function handshake(opts, c)
        local ctx = fakes.ctx(opts)
        return fakes.run(policy, c or conf, "on_handshake", ctx), ctx
    end

    local REFUSED = { kind = "error", problem = "/problems/unauthorized",
                      message = "Invalid or missing API key", code = 401, status = 401 }

    it("accepts a key in the apikey header", function()
        local v, ctx = handshake({ headers = { apikey = SHOP } })
        assert.same({ kind = "pass" }, v)
        assert.same("ShopApp", ctx.consumer.application)
    end)

    it("finds the header whatever the case of its configured name", function()
        local v = handshake({ headers = { ["x-api-key"] = SHOP } },
                            { keys_file = conf.keys_file, header = "X-Api-Key" })
        assert.same({ kind = "pass" }, v)
    end)

    it("accepts a key in the apikey query parameter", function()
        local v, ctx = handshake({ query_string = "room=1&apikey=" .. SHOP })
        assert.same({ kind = "pass" }, v)
        assert.same("alice", ctx.consumer.subscriber)
    end)

    it("hides the key from the backend (hide_credentials, on by default)", function()
        local _, ctx = handshake({ query_string = "room=1&apikey=" .. SHOP })
        assert.is_true(ctx.backend.hidden_query.apikey)
        assert.is_true(ctx.backend.cleared.apikey)
        local _, kept = handshake({ query_string = "apikey=" .. SHOP },
                                  { keys_file = conf.keys_file, hide_credentials = false })
        assert.is_nil(kept.backend.hidden_query.apikey)
        assert.is_nil(kept.backend.cleared.apikey)
    end)

    it("accepts a percent-encoded key in the query", function()
        local v = handshake({ query_string = "apikey=" .. SHOP:gsub("%-", "%%2D") })
        assert.same({ kind = "pass" }, v)
    end)

    it("reads a configured query parameter", function()
        local v = handshake({ query_string = "key=" .. SHOP },
                            { keys_file = conf.keys_file, query_param = "key" })
        assert.same({ kind = "pass" }, v)
    end)

    it("prefers the header when both are given", function()
        local v = handshake({ headers = { apikey = SHOP }, query_string = "apikey=wrong" })
        assert.same({ kind = "pass" }, v)
    end)

    it("falls back to the query when the header is empty", function()
        local v = handshake({ headers = { apikey = "" }, query_string = "apikey=" .. SHOP })
        assert.same({ kind = "pass" }, v)
    end)

    it("ignores the query when key_in has only header", function()
        local v = handshake({ query_string = "apikey=" .. SHOP },
                            { keys_file = conf.keys_file, key_in = { "header" } })
        assert.same(REFUSED, v)
    end)

    it("ignores the header when key_in has only query", function()
        local v = handshake({ headers = { apikey = SHOP } },
                            { keys_file = conf.keys_file, key_in = { "query" } })
        assert.same(REFUSED, v)
    end)

    it("refuses a handshake without a key: 401 unauthorized", function()
        local v, ctx = handshake({})
        assert.same(REFUSED, v)
        assert.is_nil(ctx.consumer)
    end)

    it("refuses an unknown key: 401 unauthorized", function()
        local v, ctx = handshake({ headers = { apikey = "not-a-key" } })
        assert.same(REFUSED, v)
        assert.is_nil(ctx.consumer)
    end)

    it("refuses the hash of a key presented as the key", function()
        local v = handshake({ headers = { apikey = weir.sha256_hex(SHOP) } })
        assert.same(REFUSED, v)
    end)

    it("refuses a key sent twice (a repeated header)", function()
        local v = handshake({ headers = { apikey = { SHOP, SHOP } } })
        assert.same(REFUSED, v)
    end)

    it("sets the consumer from the key's line", function()
        local _, ctx = handshake({ headers = { apikey = SHOP } })
        assert.same({ application = "ShopApp", subscriber = "alice", tier = "Gold",
                      key_type = "PRODUCTION", scopes = { "read", "write" } }, ctx.consumer)
    end)

    it("marks a sandbox key SANDBOX, with the default tier", function()
        local _, ctx = handshake({ headers = { apikey = SANDBOX } })
        assert.same({ application = "ShopApp", subscriber = "alice", tier = "Unlimited",
                      key_type = "SANDBOX", scopes = {} }, ctx.consumer)
    end)

    it("gives each connection its own consumer table", function()
        local _, a = handshake({ headers = { apikey = SHOP } })
        a.consumer.scopes[1] = "admin"
        local _, b = handshake({ headers = { apikey = SHOP } })
        assert.same({ "read", "write" }, b.consumer.scopes)
    end)

    it("keeps the key out of ctx, logs and the refusal", function()
        local keys = { SHOP, "a-wrong-key-123" }
        for _, key in ipairs(keys) do
            local v, ctx = handshake({ headers = { apikey = key } })
            ctx.request = nil                       -- the key's only place is the request
            local seen = {}
            local function walk(t)
                if seen[t] then return end
                seen[t] = true
                for k, x in pairs(t) do
                    for _, s in ipairs({ k, x }) do
                        if type(s) == "string" then
                            assert.is_nil(s:find(key, 1, true))
                            assert.is_nil(s:find(weir.sha256_hex(key), 1, true))
                        elseif type(s) == "table" then
                            walk(s)
                        end
                    end
                end
            end
            walk(ctx)
            walk(v)
        end
    end)
end)
