-- introspection's handshake hook with a stand-in for weir.http: the request
-- it makes, the cache bounds, what it logs, and fail_open. (The real
-- exchange with a real provider is in 03-integration_spec.lua.)

local fakes = require "fakes"
local weir  = require "weir"
local cjson = require "cjson"

local URL = "https://idp.test/introspect"

describe("introspection on_handshake", function()
    local policy, calls, answers, saved_http

    -- weir.http as the hook sees it: records each request, answers from
    -- ANSWERS[token] (a table: 200 JSON; a string: that error; nil: inactive)
    setup(function()
        policy = fakes.policy("introspection")
        saved_http = rawget(weir, "http")
        weir.http = { request = function(opts)
            calls[#calls + 1] = opts
            local tok = opts.body:match("^token=([^&]*)")
            tok = tok and tok:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
            local a = answers[tok]
            if type(a) == "string" then return nil, a end
            return { status = 200, headers = {}, body = cjson.encode(a or { active = false }) }
        end }
    end)
    teardown(function()
        weir.http = saved_http
        fakes.cleanup()
    end)
    before_each(function() calls, answers = {}, {} end)

    local function conf(over)
        local c = { introspection_url = URL, client_id = "weir", client_secret = "s3cret" }
        for k, v in pairs(over or {}) do c[k] = v end
        return assert(fakes.check(policy, c))
    end

    local function ctx(tok)
        return fakes.ctx({ headers = { authorization = "Bearer " .. tok } })
    end

    local function active(over)
        local a = { active = true, sub = "alice", client_id = "ShopApp", exp = os.time() + 300 }
        for k, v in pairs(over or {}) do a[k] = v end
        return a
    end

    it("POSTs the form-encoded token with client authentication and the conf's limits", function()
        local c = conf({ timeout = "2s", ca = "/etc/ssl/idp.pem" })
        answers["x+/=&%"] = active()
        local x = ctx("x+/=&%")
        assert.is_nil(policy.on_handshake(x, c))
        assert.equal(1, #calls)
        local o = calls[1]
        assert.equal(URL, o.url)
        assert.equal("POST", o.method)
        assert.equal("token=x%2B%2F%3D%26%25&token_type_hint=access_token", o.body)
        assert.equal("application/x-www-form-urlencoded", o.headers["Content-Type"])
        assert.equal("application/json", o.headers.Accept)
        assert.equal("Basic " .. "d2VpcjpzM2NyZXQ=", o.headers.Authorization)
        assert.equal(2, o.timeout)
        assert.is_true(o.verify)
        assert.equal("/etc/ssl/idp.pem", o.ca)
        assert.equal("alice", x.consumer.subscriber)
        assert.equal("ShopApp", x.consumer.application)
    end)

    it("keeps at most about cache_size answers", function()
        local c = conf({ cache_size = 4 })
        for i = 1, 10 do
            answers["t" .. i] = active()
            assert.is_nil(policy.on_handshake(ctx("t" .. i), c))
        end
        local n = 0
        for _ in pairs(c._cache.new) do n = n + 1 end
        for _ in pairs(c._cache.old) do n = n + 1 end
        assert.is_true(n <= 5, n .. " answers kept")
        assert.equal(10, #calls)
        policy.on_handshake(ctx("t10"), c)                -- recent: cached
        assert.equal(10, #calls)
        policy.on_handshake(ctx("t1"), c)                 -- old: dropped, asked again
        assert.equal(11, #calls)
    end)

    it("keeps a refusal for negative_ttl only", function()
        local c = conf({ negative_ttl = "20ms" })
        local v = policy.on_handshake(ctx("bad"), c)
        assert.equal(401, v.code)
        assert.equal("Token is not active", v.message)
        policy.on_handshake(ctx("bad"), c)
        assert.equal(1, #calls)
        local t = weir.now()
        while weir.now() - t < 0.03 do end               -- let negative_ttl pass
        policy.on_handshake(ctx("bad"), c)
        assert.equal(2, #calls)
    end)

    it("answers 503 when the endpoint fails, logs the URL and the reason, never the token", function()
        local c = conf({ introspection_url = "https://user:pw@idp.test/introspect?x=1" })
        answers["secret-token"] = "connection refused"
        local x = ctx("secret-token")
        local v = policy.on_handshake(x, c)
        assert.equal(503, v.code)
        assert.equal("/problems/unavailable", v.problem)
        assert.equal("Token introspection unavailable", v.message)
        assert.equal(1, #x.logs)
        assert.equal("warn", x.logs[1].level)
        assert.equal("token introspection failed", x.logs[1].msg)
        assert.same({ url = "https://idp.test/introspect", error = "connection refused" }, x.logs[1].fields)
        assert.is_nil(cjson.encode(x.logs):find("secret-token", 1, true))
        assert.is_nil(cjson.encode(x.logs):find("s3cret", 1, true))
        -- a failure is not cached
        policy.on_handshake(ctx("secret-token"), c)
        assert.equal(2, #calls)
    end)

    it("raises instead when its chain entry is fail_open, so that the chain passes", function()
        local c = conf()
        answers["tok"] = "timeout"
        local x = ctx("tok")
        x._chain = { entries = { { name = "introspection", conf = c, fail_open = true } } }
        local ok, err = pcall(policy.on_handshake, x, c)
        assert.is_false(ok)
        assert.equal("token introspection unavailable", err)
        assert.is_nil(x.consumer)
        -- another entry's fail_open is not this one's
        local y = ctx("tok")
        y._chain = { entries = { { name = "introspection", conf = conf(), fail_open = true } } }
        assert.equal(503, policy.on_handshake(y, c).code)
    end)

    it("never fails open for a ticket request", function()
        local c = conf()
        answers["tok"] = "timeout"
        local x = ctx("tok")
        x.request.ticket_request = true
        x._chain = { entries = { { name = "introspection", conf = c, fail_open = true } } }
        assert.equal(503, policy.on_handshake(x, c).code)
    end)
end)
