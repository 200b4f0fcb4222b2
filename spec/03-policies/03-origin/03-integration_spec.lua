-- origin through a real gateway (docs/policies/origin.md): a page of an
-- allowed origin gets its socket; every other Origin gets 403 and the error
-- JSON, and the backend never sees the connection.
local helpers = require "helpers"

local ALLOWED = "https://app.example.com"
local KEY = "origin-spec-key-0123456789"

describe("origin through weir", function()
    local be, gw
    local seq = 0

    setup(function()
        be = helpers.start_backend("echo")
        local allow = { ALLOWED, "http://localhost:3000" }
        local keys = helpers.write_file(helpers.tmpdir() .. "/origin-keys.txt",
            "sha256:" .. helpers.sha256(KEY) .. "  application=App subscriber=alice\n")
        gw = helpers.start_weir({
            workers = 1,
            apis = {
                helpers.policy_api("Strict", "/strict", be, { { "origin", { allow = allow } } }),
                helpers.policy_api("Mixed", "/mixed", be, { { "origin", { allow = allow, allow_missing = true } } }),
                -- listed after key-auth: the priority, not the order, puts origin first
                helpers.policy_api("Authed", "/authed", be, {
                    { "key-auth", { keys_file = keys, key_in = { "header" } } },
                    { "origin", { allow = allow } },
                }),
            },
        })
    end)
    teardown(helpers.cleanup)

    local function tag()
        seq = seq + 1
        return "c" .. seq
    end

    local function has_record(id)
        for _, c in ipairs(be:connections()) do
            if c.url == "/" .. id then return true end
        end
        return false
    end

    local function record(id)
        return be:wait_conns(function(conns)
            for _, c in ipairs(conns) do
                if c.url == "/" .. id then return c end
            end
        end, 10, "the backend record of " .. id)
    end

    -- Open CONTEXT with HEADERS; returns the socket and the connection's tag.
    local function open(context, headers)
        local id = tag()
        local ws, res = helpers.ws_connect(gw.port, { path = context .. "/1.0/" .. id, headers = headers })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        return ws, id
    end

    -- Expect CONTEXT with HEADERS refused; returns the answer and the tag.
    local function refused(context, headers)
        local id = tag()
        local ws, res = helpers.ws_connect(gw.port, { path = context .. "/1.0/" .. id, headers = headers })
        assert.is_nil(ws, "the upgrade was accepted")
        assert.is_table(res, "no HTTP answer: " .. tostring(res))
        return res, id
    end

    local function forbidden(res)
        assert.equal(403, res.status)
        assert.equal("application/json", res.headers["content-type"])
        local j = helpers.check_error(res.body, "/problems/forbidden", 403)
        assert.equal("Origin not allowed", j.error.message)
    end

    -- After refusals with tags IDS: a later allowed connection reaches the
    -- backend (so it has caught up), and none of IDS ever did.
    local function backend_never_saw(ids)
        local ws, later = open("/strict", { Origin = ALLOWED })
        record(later)
        ws:close()
        for _, id in ipairs(ids) do
            assert.is_false(has_record(id), "the backend saw refused connection " .. id)
        end
    end

    it("lets a page of an allowed origin connect and talk to the backend", function()
        local ws, id = open("/strict", { Origin = ALLOWED })
        assert.equal("hello", helpers.ask(ws, "hello"))
        assert.equal(1, record(id).messages)
        ws:close()
    end)

    it("accepts an allowed origin with an explicit default port and other case", function()
        local ws = open("/strict", { Origin = "HTTPS://App.Example.com:443" })
        assert.equal("x", helpers.ask(ws, "x"))
        ws:close()
        ws = open("/strict", { Origin = "http://localhost:3000" })
        assert.equal("y", helpers.ask(ws, "y"))
        ws:close()
    end)

    local REFUSED = {
        { nil,                                  "no Origin header" },
        { "null",                               "Origin null" },
        { "https://evil.example",               "another site" },
        { "https://app.example.com.evil.net",   "a look-alike prefix" },
        { "https://evilapp.example.com",        "a look-alike suffix" },
        { "http://app.example.com",             "another scheme" },
        { "https://app.example.com:8443",       "another port" },
        { "http://localhost",                   "an allowed host without its port" },
        { "https://app.example.com/",           "a trailing slash" },
        { "https://user@app.example.com",       "userinfo" },
    }
    for _, case in ipairs(REFUSED) do
        it("refuses " .. case[2] .. ": 403 /problems/forbidden, and the backend never sees it", function()
            local res, id = refused("/strict", { Origin = case[1] })
            forbidden(res)
            backend_never_saw({ id })
        end)
    end

    it("refuses two Origin headers, even when the first is allowed", function()
        local res, id = refused("/strict", { { "Origin", ALLOWED }, { "Origin", "https://evil.example" } })
        forbidden(res)
        backend_never_saw({ id })
    end)

    it("with allow_missing, accepts a client that sends no Origin and still refuses a foreign one", function()
        local ws, id = open("/mixed")
        assert.equal("cli", helpers.ask(ws, "cli"))
        record(id)
        ws:close()
        local res, bad = refused("/mixed", { Origin = "https://evil.example" })
        forbidden(res)
        local nul, bad2 = refused("/mixed", { Origin = "null" })
        forbidden(nul)
        backend_never_saw({ bad, bad2 })
    end)

    it("runs before authentication: a foreign page gets 403 whether or not it has a key", function()
        local a, id1 = refused("/authed", { Origin = "https://evil.example" })
        forbidden(a)
        local b, id2 = refused("/authed", { Origin = "https://evil.example", apikey = KEY })
        forbidden(b)
        local c, id3 = refused("/authed", { Origin = ALLOWED })
        assert.equal(401, c.status)
        helpers.check_error(c.body, "/problems/unauthorized", 401)
        local ws = open("/authed", { Origin = ALLOWED, apikey = KEY })
        assert.equal("in", helpers.ask(ws, "in"))
        ws:close()
        backend_never_saw({ id1, id2, id3 })
    end)
end)
