-- The browser client (clients/js/weir-client.js) in headless Chromium
-- against a real weir and real backends: what 40-browser-client_spec.lua
-- checks against the fake gateway, now with weir's own side of the
-- contract (policies/origin.lua and policies/jwt.lua).
--
-- The page is served from http://127.0.0.1:P (P chosen first, so that the
-- API's origin allow-list can name it); its tokens are JWTs signed at run
-- time by spec/support/token_server.py with keys from mint_jwt.py, whose
-- JWKS weir pins. A second page, served as http://localhost:P2 (the same
-- server; only the host differs from an allowed origin), is a foreign
-- site. The scenarios are spec/support/pages/scenarios.js's "client",
-- unchanged: they take weir's URL as an argument.
local helpers = require "helpers"
local browser = require "support.browser"
local cjson = require "cjson"

local MINT = helpers.support .. "/mint_jwt.py"
local ISS, AUD = "https://idp.spec.test/realms/weir", "weir-api"

-- The transcript's events named NAME (their details, in order).
local function events(t, name)
    local out = {}
    for _, e in ipairs(t.events) do
        if e.ev == name then out[#out + 1] = e.detail end
    end
    return out
end

local function texts(t)
    local out = {}
    for _, d in ipairs(events(t, "message")) do out[#out + 1] = d.data end
    return out
end

local function index_of(t, name)
    for i = 1, #t.events do
        if t.events[i].ev == name then return i end
    end
end

-- RFC 3339 UTC time (as toISOString writes it) → ms since the epoch.
local function epoch_ms(s)
    local y, m, d, hh, mm, ss = s:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)")
    y, m, d = tonumber(y), tonumber(m), tonumber(d)
    -- days from 1970-01-01 to y-m-d (proleptic Gregorian)
    if m <= 2 then y = y - 1 end
    local era = math.floor(y / 400)
    local yoe = y - era * 400
    local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
    local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
    local days = era * 146097 + doe - 719468
    return ((days * 24 + tonumber(hh)) * 60 + tonumber(mm)) * 60000 + tonumber(ss) * 1000
end

local function start_idp(keydir)
    local dir = helpers.tmpdir()
    local out, err = dir .. "/token-server.stdout", dir .. "/token-server.stderr"
    local base = { key = "ec256", alg = "ES256",
                   claims = { iss = ISS, aud = AUD, sub = "alice", azp = "ChatPage", scope = "chat" } }
    local pid = helpers.spawn({ "/usr/bin/python3", helpers.support .. "/token_server.py", keydir, cjson.encode(base) },
        { stdout = out, stderr = err })
    local line = helpers.wait_until(function()
        local l = (helpers.read_file(out) or ""):match("[^\n]*listening[^\n]*")
        if l then return l end
        if not helpers.alive(pid) then error("token_server.py died: " .. (helpers.read_file(err) or "")) end
    end, 15, "token_server.py to listen")
    local idp = { pid = pid, port = helpers.json(line).listening }
    -- The "token" argument of a scenario: getToken fetches these in turn; TAG names them for hold().
    function idp.token(sequence, tag)
        return { url = string.format("http://127.0.0.1:%d/__token", idp.port), sequence = sequence,
                 query = tag and ("tag=" .. tag) or nil }
    end
    function idp.get(path)
        local res, e = helpers.http_request(idp.port, { path = path, timeout = 5 })
        assert(res and res.status == 200, "token server " .. path .. ": " .. tostring(res and res.status or e))
        return helpers.json(res.body)
    end
    return idp
end

-- Two distinct free ports.
local function two_ports()
    local a, b = helpers.free_port(), helpers.free_port()
    while b == a do b = helpers.free_port() end
    return a, b
end

describe("browser client against weir (headless Chromium)", function()
    local be, restart_be, revived, outage_be, outage_revived, gw, idp, keys, origin, foreign_origin, main, foreign

    -- The transcript of run NAME of report R; errors when the scenario stopped early.
    local function value(r, name)
        local t = r:value(name)
        if type(t) == "table" and t.error then
            error("scenario " .. name .. " stopped at step " .. tostring(t.step) .. ": " .. t.error
                  .. "\nevents: " .. cjson.encode(t.events), 2)
        end
        return t
    end

    -- Backend records of BE whose URL path is PATH.
    local function records(b, path)
        local out = {}
        for _, c in ipairs(b:connections()) do
            if c.url:match("^[^?]*") == path then out[#out + 1] = c end
        end
        return out
    end

    -- weir's access records of API (one per connection: a preflight, a ticket POST, an upgrade).
    local function access(api)
        local out = {}
        for _, r in ipairs(gw:logs()) do
            if r.msg == "access" and r.api == api then out[#out + 1] = r end
        end
        return out
    end

    local function mint(desc)
        local code, out, err = helpers.run({ "/usr/bin/python3", MINT, "mint", keys.dir, cjson.encode(desc) })
        assert(code == 0, "mint_jwt.py: " .. tostring(err))
        return (out:gsub("%s+$", ""))
    end

    setup(function()
        assert(browser.available())
        local keydir = helpers.tmpdir() .. "/keys"
        local code, out, err = helpers.run({ "/usr/bin/python3", MINT, "keys", keydir,
            cjson.encode({ keys = { { name = "ec256", type = "EC", crv = "P-256", alg = "ES256" } } }) })
        assert(code == 0, "mint_jwt.py keys: " .. tostring(err))
        keys = cjson.decode(out)
        idp = start_idp(keydir)

        be = helpers.start_backend("echo", { protocol = "first" })
        -- each stopped under an open socket and started again on its port
        restart_be = helpers.start_backend("echo", { protocol = "first" })
        outage_be = helpers.start_backend("echo", { protocol = "first" })
        local page_port, foreign_port = two_ports()
        origin = "http://127.0.0.1:" .. page_port
        foreign_origin = "http://localhost:" .. foreign_port
        -- the foreign page's port is allowed with 127.0.0.1: only its host makes it foreign
        local chain = {
            { "origin", { allow = { origin, "http://127.0.0.1:" .. foreign_port } } },
            -- a 3 s token is warned about 2 s before it expires, earlier than the
            -- client's own schedule (half-way) would refresh it
            { "jwt", { jwks_file = keys.jwks, issuer = ISS, audience = AUD, leeway = 0, expiry_warning = 2,
                       headers = { ["X-User"] = "sub" } } },
        }
        gw = helpers.start_weir({
            workers = 2,                    -- a ticket may be issued by one worker and redeemed by the other
            -- an API per scenario, so that weir's access records (which name
            -- the API, not the path) tell the scenarios apart
            apis = {
                helpers.policy_api("Ticket", "/ticket", be, chain),
                helpers.policy_api("Subprotocol", "/subprotocol", be, chain),
                helpers.policy_api("Refresh", "/refresh", be, chain),
                helpers.policy_api("Restart", "/restart", restart_be, chain),
                helpers.policy_api("Outage", "/outage", outage_be, chain),
                helpers.policy_api("Foreign", "/foreign", be, chain),
                helpers.policy_api("Direct", "/direct", be, chain),
            },
        })

        local fast = { initialDelay = 200, factor = 2, maxDelay = 1000, jitter = 0 }
        main = browser.start({
            port = page_port, parallel = true, timeout = 120, run_timeout = 90,
            runs = {
                { name = "ticket", scenario = "client", args = {
                    url = gw:url("/ticket/1.0/ticket-run?room=7"),
                    options = { auth = "ticket" },
                    token = idp.token({ { ttl = 60 } }),
                    steps = {
                        { op = "send", text = "queued before connect" },
                        { op = "connect" },
                        { op = "wait", messages = { "queued before connect" } },
                        { op = "send", texts = { "one", "two", "three" } },
                        { op = "wait", messages = { "one", "two", "three" } },
                        { op = "close", code = 1000, reason = "bye" },
                        { op = "wait", event = "close" },
                    } } },
                { name = "subprotocol", scenario = "client", args = {
                    url = gw:url("/subprotocol/1.0/subprotocol-run"),
                    options = { auth = "subprotocol", protocols = { "chat" } },
                    token = idp.token({ { ttl = 60 } }),
                    steps = {
                        { op = "connect" },
                        { op = "send", text = "hello" },
                        { op = "wait", messages = { "hello" } },
                        { op = "close", code = 1000 },
                        { op = "wait", event = "close" },
                    } } },
                { name = "refresh", scenario = "client", args = {
                    url = gw:url("/refresh/1.0/refresh-run"),
                    options = { auth = "ticket" },
                    token = idp.token({ { ttl = 3 }, { ttl = 120 } }),
                    steps = {
                        { op = "connect" },
                        { op = "wait", event = "auth" },
                        { op = "wait_expiry", token = 1, after_ms = 1000 },
                        { op = "send", text = "after the first token expired" },
                        { op = "wait", messages = { "after the first token expired" } },
                    } } },
                { name = "restart", scenario = "client", args = {
                    url = gw:url("/restart/1.0/restart-run"),
                    options = { auth = "ticket", reconnect = fast },
                    token = idp.token({ { ttl = 60 } }, "restart"),
                    timeout = 30,
                    steps = {
                        { op = "connect" },
                        { op = "send", text = "before" },
                        { op = "wait", messages = { "before" } },
                        { op = "mark", name = "restart-open" },         -- the spec stops the backend
                        { op = "wait", event = "close", match = { willReconnect = true } },
                        { op = "send", texts = { "q1", "q2", "q3", "q4", "q5" } },
                        { op = "wait", event = "open", count = 2 },
                        { op = "wait", messages = { "q1", "q2", "q3", "q4", "q5" } },
                        { op = "send", text = "after" },
                        { op = "wait", messages = { "after" } },
                    } } },
                { name = "outage", scenario = "client", args = {
                    url = gw:url("/outage/1.0/outage-run"),
                    options = { auth = "ticket", reconnect = fast },
                    token = idp.token({ { ttl = 60 } }, "outage"),
                    timeout = 30,
                    steps = {
                        { op = "connect" },
                        { op = "send", text = "before" },
                        { op = "wait", messages = { "before" } },
                        { op = "mark", name = "outage-open" },          -- the spec stops the backend
                        { op = "wait", event = "close", match = { willReconnect = true } },
                        { op = "send", texts = { "q1", "q2", "q3", "q4", "q5" } },
                        { op = "signal", name = "outage-over", timeout = 30 },  -- it is back
                        { op = "wait", messages = { "q1", "q2", "q3", "q4", "q5" }, timeout = 8 },
                    } } },
            },
        })
        -- The restart: the backend goes away under an open socket; the
        -- client's next getToken() is held at the token server until the
        -- backend is back on its port, so the reconnect finds it there.
        main:wait_mark("restart-open", 90)
        idp.get("/__hold?tag=restart&n=1")
        restart_be:stop()
        helpers.wait_until(function() return idp.get("/__minted").held == 1 end, 30, "the reconnect to ask for a token")
        revived = helpers.start_backend("echo", { protocol = "first", port = restart_be.port })
        idp.get("/__release")
        -- The outage: the client's attempts reach weir while the backend is
        -- away (weir logs each "backend unavailable") before it comes back.
        main:wait_mark("outage-open", 90)
        outage_be:stop()
        gw:wait_log(function(r) return r.msg == "backend unavailable" and r.url == outage_be.url end, 30)
        outage_revived = helpers.start_backend("echo", { protocol = "first", port = outage_be.port })
        main:signal("outage-over")
        local rep = main:wait()
        io.stdout:write("# browser client against weir, screenshots: " .. tostring(rep.screenshots) .. "\n")

        foreign = browser.start({
            host = "localhost", port = foreign_port, parallel = true, timeout = 60, run_timeout = 40,
            runs = {
                { name = "foreign-ticket", scenario = "client", args = {
                    url = gw:url("/foreign/1.0/foreign-ticket"),
                    options = { auth = "ticket", reconnect = fast },
                    token = idp.token({ { ttl = 60 } }),
                    steps = {
                        { op = "connect" },
                        { op = "wait", event = "close" },
                        { op = "sleep", ms = 1500 },               -- several reconnect delays: none may start
                    } } },
                { name = "foreign-subprotocol", scenario = "client", args = {
                    url = gw:url("/foreign/1.0/foreign-subprotocol"),
                    options = { auth = "subprotocol", protocols = { "chat" },
                                reconnect = { initialDelay = 100, jitter = 0, maxAttempts = 2 } },
                    token = idp.token({ { ttl = 60 } }),
                    steps = {
                        { op = "connect" },
                        { op = "wait", event = "close", match = { willReconnect = false } },
                        { op = "sleep", ms = 1500 },
                    } } },
            },
        })
        local frep = foreign:wait()
        io.stdout:write("# browser client from a foreign origin, screenshots: " .. tostring(frep.screenshots) .. "\n")
    end)
    teardown(helpers.cleanup)

    it("runs every scenario in Chromium, from the page's origin and from a foreign one", function()
        local rep, frep = main:wait(), foreign:wait()
        assert.is_nil(rep.fatal)
        assert.is_nil(frep.fatal)
        assert.equal(origin, rep.origin)
        assert.equal(foreign_origin, frep.origin)
        for _, r in ipairs(rep.runs) do assert.is_true(r.ok, r.name .. ": " .. tostring(r.error)) end
        for _, r in ipairs(frep.runs) do assert.is_true(r.ok, r.name .. ": " .. tostring(r.error)) end
        assert.equal(5, #rep.runs)
        assert.equal(2, #frep.runs)
    end)

    it("takes a screenshot of every run", function()
        for _, rep in ipairs({ main:wait(), foreign:wait() }) do
            local shots = 0
            for _, l in ipairs(rep.lines) do
                if l.kind == "screenshot" then
                    shots = shots + 1
                    local png = assert(helpers.read_file(l.path), "no file " .. tostring(l.path))
                    assert.equal("\137PNG", png:sub(1, 4))
                end
            end
            assert.equal(#rep.runs, shots)
        end
    end)

    describe("with a ticket", function()
        it("fetches a ticket from weir across origins, connects with it and exchanges messages", function()
            local t = value(main, "ticket")
            assert.equal(1, #events(t, "open"))
            assert.same({ "queued before connect", "one", "two", "three" }, texts(t))
            assert.equal(0, #events(t, "problem"))
            assert.equal(0, #events(t, "error"))
            local closes = events(t, "close")
            assert.equal(1, #closes)
            assert.same({ 1000, false }, { closes[1].code, closes[1].willReconnect })
            assert.equal(1, #t.tokens)
        end)

        it("reaches the backend with the query it had, without the ticket, as the token's subject", function()
            local recs = records(be, "/ticket-run")
            assert.equal(1, #recs)
            local rec = recs[1]
            assert.equal("/ticket-run?room=7", rec.url)
            assert.equal("alice", helpers.header(rec, "X-User"))
            assert.equal(origin, helpers.header(rec, "Origin"))
            assert.is_nil(helpers.header(rec, "Authorization"))
            local got = {}
            for _, e in ipairs(rec.events) do
                if e.type == "message" then got[#got + 1] = e.text end
            end
            assert.same({ "queued before connect", "one", "two", "three" }, got)
            local closed = helpers.wait_until(function() return records(be, "/ticket-run")[1].closed end, 10,
                "the backend to see the close")
            assert.same({ 1000, "bye" }, { closed.code, closed.reason })
        end)

        it("is one preflight, one POST and one upgrade in weir's access log", function()
            local statuses = helpers.wait_until(function()
                local got = {}
                for _, r in ipairs(access("Ticket")) do got[#got + 1] = r.status end
                table.sort(got)
                return #got >= 3 and got
            end, 10, "3 access records of Ticket")
            assert.same({ 101, 200, 204 }, statuses)
        end)
    end)

    describe("with a subprotocol token", function()
        it("connects offering the app's protocol and the bearer entry; weir answers the app's", function()
            local t = value(main, "subprotocol")
            local opens = events(t, "open")
            assert.equal(1, #opens)
            assert.equal("chat", opens[1].protocol)
            assert.same({ "hello" }, texts(t))
            assert.equal(1, #t.tokens)
        end)

        it("shows the backend neither the token nor the bearer entry", function()
            local recs = records(be, "/subprotocol-run")
            assert.equal(1, #recs)
            local rec = recs[1]
            assert.equal("chat", helpers.header(rec, "Sec-WebSocket-Protocol"))
            assert.equal("chat", rec.protocol)
            assert.equal("alice", helpers.header(rec, "X-User"))
            local all = cjson.encode(rec)
            assert.is_nil(all:find("bearer", 1, true), "the backend saw the bearer entry")
            assert.is_nil(all:find("eyJ", 1, true), "the backend saw a JWT")
        end)
    end)

    describe("refreshing in band", function()
        it("answers weir's auth-expiring with a fresh token and stays open past the first expiry", function()
            local t = value(main, "refresh")
            local exp = events(t, "expiring")
            assert.equal(1, #exp)
            assert.is_number(exp[1].expiresIn)
            assert.is_true(exp[1].expiresIn <= 2, "warned " .. exp[1].expiresIn .. " s before expiry")
            local auth = events(t, "auth")
            assert.equal(1, #auth)
            assert.is_true(index_of(t, "expiring") < index_of(t, "auth"))
            -- weir's expires_at is the second token's exp
            assert.equal(2, #t.tokens)
            assert.equal(t.tokens[2].expires_at, epoch_ms(auth[1].expiresAt))
            assert.equal(1, #events(t, "open"))
            assert.equal(0, #events(t, "close"))
            assert.equal(0, #events(t, "problem"))
            assert.same({ "after the first token expired" }, texts(t))
        end)

        it("keeps the auth message from the backend", function()
            local recs = records(be, "/refresh-run")
            assert.equal(1, #recs)
            local got = {}
            for _, e in ipairs(recs[1].events) do
                if e.type == "message" then got[#got + 1] = e.text end
            end
            assert.same({ "after the first token expired" }, got)
            assert.is_nil(cjson.encode(recs[1]):find("eyJ", 1, true), "the backend saw a JWT")
        end)
    end)

    describe("reconnecting after the backend restarts", function()
        -- The client reconnects after 100 ms; when the backend is not back
        -- yet (a slow machine), weir answers 101 then 1014 again: every such
        -- round is one more close, reconnect and open.
        it("sees weir's 1014 with /problems/bad-gateway when the backend goes away", function()
            local t = value(main, "restart")
            local closes = events(t, "close")
            assert.is_true(#closes >= 1)
            for _, c in ipairs(closes) do
                assert.same({ 1014, true }, { c.code, c.willReconnect })
                assert.equal("/problems/bad-gateway", c.problem.type)
                assert.equal(1014, c.problem.code)
            end
            assert.equal(#closes, #events(t, "reconnecting"))
        end)

        it("reconnects with a fresh token and a fresh ticket, to the backend on the same port", function()
            local t = value(main, "restart")
            local opens = #events(t, "open")
            assert.equal(#events(t, "close") + 1, opens)
            assert.equal(opens, #t.tokens)
            -- as many ticket POSTs answered 200 as upgrades answered 101: a
            -- ticket works once, so every connection had a new one
            local statuses = helpers.wait_until(function()
                local n = { [101] = 0, [200] = 0 }
                for _, r in ipairs(access("Restart")) do
                    if n[r.status] then n[r.status] = n[r.status] + 1 end
                end
                return n[101] == opens and n
            end, 10, "the access records of Restart")
            assert.same({ [101] = opens, [200] = opens }, statuses)
            assert.equal(restart_be.port, revived.port)
            assert.equal(1, #records(revived, "/restart-run"))
        end)

        it("delivers what was queued while reconnecting, in order, after the new open", function()
            local t = value(main, "restart")
            for i = 1, 5 do
                -- queued while reconnecting, or sent on a socket weir then
                -- closed 1014 (the backend not back yet), and sent again
                assert.same({ "q" .. i, true }, { t.sends[1 + i].data, t.sends[1 + i].ok })
                local state = t.sends[1 + i].state
                assert.is_true(state == "reconnecting" or (state == "open" and #events(t, "close") > 1), state)
            end
            assert.same({ "before", "q1", "q2", "q3", "q4", "q5", "after" }, texts(t))
            local recs = records(revived, "/restart-run")
            local got = {}
            for _, e in ipairs(recs[1].events) do
                if e.type == "message" then got[#got + 1] = e.text end
            end
            assert.same({ "q1", "q2", "q3", "q4", "q5", "after" }, got)
        end)
    end)

    describe("reconnecting while the backend is still away", function()
        it("keeps retrying, with backoff, and opens on the backend once it is back", function()
            local t = main:value("outage")      -- its last wait, for the queued messages, may have failed
            local closes = events(t, "close")
            assert.is_true(#closes >= 2, "no attempt failed during the outage")
            for _, c in ipairs(closes) do
                assert.is_true(c.code == 1014 or c.code == 1006, "close " .. tostring(c.code))
                assert.is_true(c.willReconnect)
            end
            local r = events(t, "reconnecting")
            assert.equal(#closes, #r)
            for i = 2, #r do assert.is_true(r[i].delay >= r[i - 1].delay) end
            local last_open, last_close
            for i, e in ipairs(t.events) do
                if e.ev == "open" then last_open = i elseif e.ev == "close" then last_close = i end
            end
            assert.is_true(last_open > last_close, "not open at the end")
            assert.equal("open", t.state)
            assert.equal(1, #records(outage_revived, "/outage-run"))
        end)
    end)

    describe("from a foreign origin", function()
        it("gets the ticket refused with 403 /problems/forbidden, and stops", function()
            local t = value(foreign, "foreign-ticket")
            assert.equal(0, #events(t, "open"))
            local p = events(t, "problem")
            assert.equal(1, #p)
            assert.same({ "/problems/forbidden", 403, "Origin not allowed" }, { p[1].type, p[1].code, p[1].message })
            local e = events(t, "error")
            assert.equal(403, e[1].status)
            assert.is_true(e[1].fatal)
            local closes = events(t, "close")
            assert.equal(1, #closes)
            assert.same({ 1008, false }, { closes[1].code, closes[1].willReconnect })
            assert.equal(0, #events(t, "reconnecting"))
            assert.equal("closed", t.state)
        end)

        it("never opens with a subprotocol token, and gives up after maxAttempts", function()
            local t = value(foreign, "foreign-subprotocol")
            assert.equal(0, #events(t, "open"))
            local closes = events(t, "close")
            assert.equal(3, #closes)                              -- the first attempt and two more
            for i, c in ipairs(closes) do
                assert.equal(1006, c.code)
                assert.equal(i < 3, c.willReconnect)
            end
            assert.equal(2, #events(t, "reconnecting"))
            assert.equal("closed", t.state)
            assert.equal(3, #t.tokens)
        end)

        it("is refused by the origin policy before the backend sees anything", function()
            assert.equal(0, #records(be, "/foreign-ticket"))
            assert.equal(0, #records(be, "/foreign-subprotocol"))
            local got = helpers.wait_until(function()
                local out = {}
                for _, r in ipairs(access("Foreign")) do
                    if r.status ~= 204 then out[#out + 1] = r.status end  -- not the CORS preflight
                end
                return #out >= 4 and out
            end, 10, "4 access records of Foreign")
            assert.same({ 403, 403, 403, 403 }, got)                     -- one ticket POST, three upgrades
        end)

        it("answers the foreign origin's ticket POST and handshake with 403 and the error JSON", function()
            local tok = mint({ key = "ec256", alg = "ES256", exp_in = 60,
                               claims = { iss = ISS, aud = AUD, sub = "alice" } })
            local function post(o)
                return assert(helpers.http_request(gw.port, { method = "POST", path = "/direct/1.0/x/ticket", body = "",
                    headers = { Authorization = "Bearer " .. tok, Origin = o } }))
            end
            local res = post(foreign_origin)
            assert.equal(403, res.status)
            assert.equal(foreign_origin, res.headers["access-control-allow-origin"])
            helpers.check_error(res.body, "/problems/forbidden", 403)
            assert.equal(200, post(origin).status)                -- the same request from the page's origin
            local ws, hs = helpers.ws_connect(gw.port, { path = "/direct/1.0/x", protocols = { "chat", "bearer." .. tok },
                headers = { Origin = foreign_origin } })
            if ws then ws:close() end
            assert.is_nil(ws)
            assert.equal(403, hs.status)
            helpers.check_error(hs.body, "/problems/forbidden", 403)
        end)
    end)

    it("writes no token or ticket to weir's log", function()
        local logs = helpers.read_file(gw.log_path) .. gw:stderr()
        assert.is_nil(logs:find("eyJ", 1, true), "a JWT is in weir's log")
        assert.is_nil(logs:find(string.rep("%x", 64)), "a ticket (64 hex digits) is in weir's log")
    end)
end)
