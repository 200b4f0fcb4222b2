-- The browser client (clients/js/weir-client.js) in headless Chromium,
-- against spec/support/fake_gateway.js: a stand-in for weir's side of the
-- contract (tickets with CORS, a token in a subprotocol entry, in-band
-- refresh, expiry and revocation closing 1008), so the client is tested on
-- its own. The runs share one Chromium, side by side in tabs
-- (spec/support/browser.js, driven from spec/support/browser.lua), each on a
-- path of its own; the scenarios take the gateway's URL as an argument, so
-- they run unchanged against weir.
local helpers = require "helpers"
local browser = require "support.browser"
local cjson = require "cjson"


local function start_gateway(opts)
    local dir = helpers.tmpdir()
    local out, err = dir .. "/fake-gateway.stdout", dir .. "/fake-gateway.stderr"
    local pid = helpers.spawn({ "node", helpers.support .. "/fake_gateway.js", cjson.encode(opts or {}) },
        { stdout = out, stderr = err })
    local line = helpers.wait_until(function()
        local l = (helpers.read_file(out) or ""):match("[^\n]*listening[^\n]*")
        if l then return l end
        if not helpers.alive(pid) then error("fake_gateway.js died: " .. (helpers.read_file(err) or "")) end
    end, 15, "fake_gateway.js to listen")
    local gw = { pid = pid, port = helpers.json(line).listening }
    function gw.url(path) return string.format("ws://127.0.0.1:%d%s", gw.port, path) end
    function gw.http(path) return string.format("http://127.0.0.1:%d%s", gw.port, path) end
    function gw.get(path)
        local res, e = helpers.http_request(gw.port, { path = path, timeout = 5 })
        assert(res and res.status == 200, "fake gateway " .. path .. ": " .. tostring(res and res.status or e))
        return helpers.json(res.body)
    end
    return gw
end

-- What the gateway recorded for connections and tickets of PATH.
local function conns(gw, path)
    local out = {}
    for _, c in ipairs(gw.get("/__events").connections) do
        if c.path == path then out[#out + 1] = c end
    end
    return out
end

local function tickets(gw, path)
    local out = {}
    for _, t in ipairs(gw.get("/__events").tickets) do
        if t.path == path then out[#out + 1] = t end
    end
    return out
end

-- The transcript's events named NAME.
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

-- Index of the first event NAME in the transcript (nil if none).
local function index_of(t, name, from)
    for i = from or 1, #t.events do
        if t.events[i].ev == name then return i end
    end
end

describe("browser client (headless Chromium, fake gateway)", function()
    local gw, report, run

    local function token(query, ...)
        return { url = gw.http("/__token"), query = query, sequence = { ... } }
    end

    local function value(name)
        local t = run:value(name)
        if type(t) == "table" and t.error then
            error("scenario " .. name .. " stopped at step " .. tostring(t.step) .. ": " .. t.error
                  .. "\nevents: " .. cjson.encode(t.events), 2)
        end
        return t
    end

    setup(function()
        assert(browser.available())
        gw = start_gateway({ protocols = { "chat.v1" }, warn_before = 2 })
        local fast = { initialDelay = 100, factor = 2, jitter = 0, maxDelay = 2000 }
        local runs = {
            { name = "ticket", scenario = "client", args = {
                url = gw.url("/ticket/1.0?room=7"),
                options = { auth = "ticket", maxQueue = 3 },
                token = token(nil, { ttl = 60 }),
                steps = {
                    { op = "send", texts = { "one", "two", "three", "four" } },    -- before connect: queued, bounded
                    { op = "connect" },
                    { op = "wait", messages = { "one", "two", "three" } },
                    { op = "send", text = "five" },
                    { op = "wait", messages = { "five" } },
                    { op = "close", code = 1000, reason = "bye" },
                    { op = "wait", event = "close" },
                    { op = "send", text = "late" },
                } } },
            { name = "subprotocol", scenario = "client", args = {
                url = gw.url("/sub/1.0"),
                options = { auth = "subprotocol", protocols = { "chat.v1" }, reconnect = fast },
                token = token(nil, { ttl = 60 }),
                steps = {
                    { op = "connect" },
                    { op = "send", text = "hello" },
                    { op = "wait", messages = { "hello" } },
                    { op = "fetch", url = gw.http("/__drop?path=/sub/1.0") },
                    { op = "wait", event = "open", count = 2 },
                    { op = "send", text = "again" },
                    { op = "wait", messages = { "again" } },
                } } },
            { name = "units", scenario = "units", args = {
                constructs = {
                    { url = gw.url("/sub/1.0"), options = { auth = "subprotocol", getToken = true } },
                    { url = gw.url("/sub/1.0"), options = { auth = "subprotocol", getToken = true, protocols = { "chat.v1" } } },
                    { url = gw.url("/sub/1.0"), options = { auth = "ticket" } },
                    { url = "ftp://127.0.0.1/x", options = { auth = "none" } },
                },
                ticket_urls = {
                    { "ws://h.example/echo/1.0" }, { "wss://h.example:8443/echo/1.0/?a=1&b=2" },
                    { "ws://h.example/echo/1.0", "/auth/ticket" },
                },
                tokens = {
                    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIiwiZXhwIjoxOTAwMDAwMDAwfQ.c2ln",     -- {"sub":"a","exp":1900000000}
                    "opaque-token", "a.!!!.c",
                },
                problems = {
                    { type = "error", error = { type = "/problems/token-expired", code = 1008, message = "token expired" },
                      timestamp = "2026-01-02T03:04:05Z" },
                    { type = "chat", text = "hi" },
                },
            } },
            { name = "refresh", scenario = "client", args = {
                url = gw.url("/refresh/1.0"),
                options = { auth = "ticket" },
                token = token("opaque=1", { ttl = 3 }, { ttl = 60 }),
                steps = {
                    { op = "connect" },
                    { op = "wait", event = "auth" },
                    { op = "wait_expiry", token = 1, after_ms = 300 },
                    { op = "send", text = "after the first token expired" },
                    { op = "wait", messages = { "after the first token expired" } },
                } } },
            { name = "refresh-own", scenario = "client", args = {
                url = gw.url("/own/1.0?warn_before=0"),
                options = { auth = "subprotocol", protocols = { "chat.v1" }, refreshBefore = 2 },
                token = token(nil, { ttl = 4 }, { ttl = 60 }),
                steps = {
                    { op = "connect" },
                    { op = "wait", event = "auth" },
                    { op = "wait_expiry", token = 1, after_ms = 300 },
                    { op = "send", text = "still here" },
                    { op = "wait", messages = { "still here" } },
                } } },
            { name = "reconnect", scenario = "client", args = {
                url = gw.url("/reconnect/1.0"),
                options = { auth = "ticket", reconnect = { initialDelay = 100, factor = 2, jitter = 0, resetAfter = 300 } },
                token = token(nil, { ttl = 60 }),
                steps = {
                    { op = "connect" },
                    { op = "send", text = "before" },
                    { op = "wait", messages = { "before" } },
                    { op = "mark", name = "reconnect-open" },              -- the spec drops the connection
                    { op = "wait", event = "close", match = { willReconnect = true } },
                    { op = "send", texts = { "q1", "q2", "q3", "q4", "q5" } },
                    { op = "wait", event = "open", count = 2 },
                    { op = "wait", messages = { "q1", "q2", "q3", "q4", "q5" } },
                    { op = "wait_reset" },
                    { op = "fetch", url = gw.http("/__refuse?path=/reconnect/1.0&n=2") },
                    { op = "fetch", url = gw.http("/__drop?path=/reconnect/1.0") },
                    { op = "wait", event = "open", count = 3 },
                    { op = "send", text = "after" },
                    { op = "wait", messages = { "after" } },
                } } },
            { name = "expiry", scenario = "client", args = {
                url = gw.url("/expire/1.0"),
                options = { auth = "ticket", reconnect = fast },
                token = token("opaque=1", { ttl = 2 }, "not-a-token-of-this-gateway"),
                steps = {
                    { op = "connect" },
                    { op = "wait", event = "problem" },                    -- the refresh was refused
                    { op = "send", text = "still open" },
                    { op = "wait", messages = { "still open" } },
                    { op = "wait", event = "close" },
                    { op = "sleep", ms = 1000 },                           -- ten times the reconnect delay
                } } },
            { name = "revoked", scenario = "client", args = {
                url = gw.url("/revoke/1.0"),
                options = { auth = "subprotocol", protocols = { "chat.v1" }, reconnect = fast },
                token = token("sub=bob", { ttl = 60 }),
                steps = {
                    { op = "connect" },
                    { op = "wait", event = "open" },
                    { op = "fetch", url = gw.http("/__revoke?sub=bob") },
                    { op = "wait", event = "close" },
                    { op = "sleep", ms = 1000 },
                } } },
            { name = "close-codes", scenario = "client", args = {
                url = gw.url("/open/codes/1.0"),
                options = { auth = "none", reconnect = { initialDelay = 100, maxDelay = 200, jitter = 0 } },
                steps = (function()
                    local steps = { { op = "connect" }, { op = "wait", event = "open" } }
                    for i, code in ipairs({ 1012, 1013, 1001, 1014, 1011, 1003 }) do
                        steps[#steps + 1] = { op = "fetch", url = gw.http("/__close?path=/open/codes/1.0&code=" .. code) }
                        steps[#steps + 1] = { op = "wait", event = "close", count = i }
                        if code ~= 1003 then steps[#steps + 1] = { op = "wait", event = "open", count = i + 1 } end
                    end
                    steps[#steps + 1] = { op = "sleep", ms = 1000 }
                    return steps
                end)(),
            } },
            { name = "bad-gateway", scenario = "client", args = {
                url = gw.url("/open/bg/1.0"),
                options = { auth = "none", reconnect = fast, maxQueue = 10 },
                steps = {
                    { op = "send", texts = { "a", "b" } },         -- queued: flushed on the doomed socket
                    { op = "fetch", url = gw.http("/__badgateway?path=/open/bg/1.0&n=1") },
                    { op = "connect" },
                    { op = "wait", messages = { "a", "b" } },
                    { op = "send", text = "c" },
                    { op = "wait", messages = { "c" } },
                } } },
            { name = "ticket-refused", scenario = "client", args = {
                url = gw.url("/denied/1.0"),
                options = { auth = "ticket", reconnect = fast },
                token = { sequence = { "not-a-token-of-this-gateway" } },
                steps = {
                    { op = "connect" },
                    { op = "wait", event = "close" },
                    { op = "sleep", ms = 1000 },
                } } },
        }
        run = browser.start({ runs = runs, parallel = true, timeout = 90, run_timeout = 60 })
        run:wait_mark("reconnect-open", 60)
        assert.equal(1, gw.get("/__drop?path=/reconnect/1.0").dropped)
        report = run:wait()
        io.stdout:write("# browser client screenshots: " .. tostring(report.screenshots) .. "\n")
    end)
    teardown(helpers.cleanup)

    it("runs every scenario in Chromium", function()
        assert.is_nil(report.fatal)
        for _, r in ipairs(report.runs) do
            assert.is_true(r.ok, r.name .. ": " .. tostring(r.error))
        end
        assert.equal(11, #report.runs)
    end)

    describe("with a ticket", function()
        it("fetches a ticket across origins and connects with it, keeping the URL's query", function()
            local t = value("ticket")
            assert.same({ "one", "two", "three", "five" }, texts(t))
            local tk = tickets(gw, "/ticket/1.0")
            assert.equal(1, #tk)
            assert.equal(200, tk[1].status)
            assert.is_true(tk[1].used)
            assert.equal(report.origin, tk[1].origin)           -- a cross-origin request: CORS let it through
            assert.is_true(gw.get("/__events").preflights >= 1)
            local c = conns(gw, "/ticket/1.0")
            assert.equal(1, #c)
            assert.equal("ticket", c[1].auth)
            assert.equal(tk[1].seq, c[1].ticket_seq)
            assert.equal("room=7&ticket=REDACTED", c[1].query)
            assert.equal(0, c[1].token_entries)
        end)

        it("queues sends before the connection opens, bounded by maxQueue, and flushes them in order", function()
            local t = value("ticket")
            assert.same({ true, true, true, false }, { t.sends[1].ok, t.sends[2].ok, t.sends[3].ok, t.sends[4].ok })
            assert.equal("idle", t.sends[1].state)
            local errs = events(t, "error")
            assert.truthy(errs[1].message:find("queue full", 1, true), errs[1].message)
            assert.same({ "one", "two", "three", "five" }, conns(gw, "/ticket/1.0")[1].messages)
        end)

        it("closes for good on close(): 'close' without reconnect, and send() refuses after it", function()
            local t = value("ticket")
            local closes = events(t, "close")
            assert.equal(1, #closes)
            assert.equal(1000, closes[1].code)
            assert.is_false(closes[1].willReconnect)
            assert.equal(0, #events(t, "reconnecting"))
            assert.equal("closed", t.state)
            local last = t.sends[#t.sends]
            assert.same({ "late", false, "closed" }, { last.data, last.ok, last.state })
            assert.same({ code = 1000, reason = "bye" }, conns(gw, "/ticket/1.0")[1].closed)
        end)

        it("reports a ticket endpoint's 401 as a 'problem' and does not retry", function()
            local t = value("ticket-refused")
            local p = events(t, "problem")
            assert.equal(1, #p)
            assert.equal("/problems/unauthorized", p[1].type)
            assert.equal(401, p[1].code)
            assert.equal("invalid token", p[1].message)
            assert.is_true(helpers.is_rfc3339(p[1].timestamp))
            local e = events(t, "error")
            assert.equal(401, e[1].status)
            assert.is_true(e[1].fatal)
            local closes = events(t, "close")
            assert.equal(1, #closes)
            assert.equal(1008, closes[1].code)
            assert.is_false(closes[1].willReconnect)
            assert.equal("/problems/unauthorized", closes[1].problem.type)
            assert.equal(0, #events(t, "reconnecting"))
            assert.equal(1, #tickets(gw, "/denied/1.0"))
            assert.equal(401, tickets(gw, "/denied/1.0")[1].status)
            assert.equal(0, #conns(gw, "/denied/1.0"))
        end)
    end)

    describe("with a subprotocol token", function()
        it("offers the app's protocol and the token entry; the app's protocol is chosen", function()
            local t = value("subprotocol")
            assert.same({ "hello", "again" }, texts(t))
            local opens = events(t, "open")
            assert.equal("chat.v1", opens[1].protocol)
            local c = conns(gw, "/sub/1.0")
            assert.equal("subprotocol", c[1].auth)
            assert.same({ "chat.v1" }, c[1].offered_protocols)
            assert.equal(1, c[1].token_entries)
            assert.equal("chat.v1", c[1].protocol)
            assert.equal(0, #tickets(gw, "/sub/1.0"))
        end)

        it("asks getToken for a token again when it reconnects", function()
            local t = value("subprotocol")
            assert.equal(2, #events(t, "open"))
            assert.equal(2, #t.tokens)
            local c = conns(gw, "/sub/1.0")
            assert.equal(2, #c)
            assert.are_not.equal(c[1].token_seq, c[2].token_seq)
        end)

        it("refuses, at construction, a subprotocol token without an application protocol", function()
            local u = value("units")
            assert.is_true(u.constructs[1].threw)
            assert.equal("TypeError", u.constructs[1].name)
            assert.truthy(u.constructs[1].message:find("at least one application protocol", 1, true), u.constructs[1].message)
            assert.is_false(u.constructs[2].threw)
            assert.is_true(u.constructs[3].threw)                 -- a ticket without getToken
            assert.truthy(u.constructs[3].message:find("getToken", 1, true))
            assert.is_true(u.constructs[4].threw)                 -- not a WebSocket URL
        end)
    end)

    describe("refreshing the token in band", function()
        it("answers auth-expiring with a fresh token and keeps its socket past the first token's expiry", function()
            local t = value("refresh")
            local exp = events(t, "expiring")
            assert.equal(1, #exp)
            assert.is_number(exp[1].expiresIn)
            assert.is_true(index_of(t, "expiring") < index_of(t, "auth"))
            local auth = events(t, "auth")
            assert.equal(1, #auth)
            assert.is_true(helpers.is_rfc3339((auth[1].expiresAt:gsub("%.000Z$", "Z"))))
            assert.equal(1, #events(t, "open"))
            assert.equal(0, #events(t, "close"))
            assert.same({ "after the first token expired" }, texts(t))
            local c = conns(gw, "/refresh/1.0")
            assert.equal(1, #c)
            assert.equal("auth-expiring", c[1].control[1].type)
            assert.equal("auth", c[1].control[2].type)
            assert.is_true(c[1].control[2].ok)
            assert.equal(2, #t.tokens)
            assert.equal(c[1].token_seq, c[1].control[2].token_seq)  -- the connection now runs on the new token
            assert.same({ "after the first token expired" }, c[1].messages)   -- the auth message was not an app message
        end)

        it("refreshes on its own before a JWT's exp when weir sends no warning", function()
            local t = value("refresh-own")
            assert.equal(0, #events(t, "expiring"))
            assert.equal(1, #events(t, "auth"))
            assert.equal(1, #events(t, "open"))
            assert.equal(0, #events(t, "close"))
            assert.same({ "still here" }, texts(t))
            local c = conns(gw, "/own/1.0")
            assert.equal(1, #c)
            assert.same({ { type = "auth", ok = true, token_seq = c[1].token_seq } }, c[1].control)
        end)

        it("reports a refused refresh as a 'problem' and keeps the socket open", function()
            local t = value("expiry")
            local p = events(t, "problem")
            assert.equal("/problems/unauthorized", p[1].type)
            assert.equal(1008, p[1].code)
            assert.is_true(index_of(t, "problem") < index_of(t, "message"))
            assert.same({ "still open" }, texts(t))
        end)
    end)

    describe("expiry and revocation", function()
        it("reports /problems/token-expired and does not reconnect after the 1008 close", function()
            local t = value("expiry")
            local p = events(t, "problem")
            assert.equal(2, #p)
            assert.same({ "/problems/token-expired", 1008, "token expired" }, { p[2].type, p[2].code, p[2].message })
            assert.is_true(helpers.is_rfc3339(p[2].timestamp))
            local closes = events(t, "close")
            assert.equal(1, #closes)
            assert.equal(1008, closes[1].code)
            assert.equal("token expired", closes[1].reason)
            assert.is_false(closes[1].willReconnect)
            assert.equal("/problems/token-expired", closes[1].problem.type)
            assert.equal(0, #events(t, "reconnecting"))
            assert.equal(1, #events(t, "open"))
            assert.equal("closed", t.state)
            assert.equal(1, #conns(gw, "/expire/1.0"))
            assert.equal(1, #tickets(gw, "/expire/1.0"))
        end)

        it("reports /problems/token-revoked and does not reconnect", function()
            local t = value("revoked")
            local p = events(t, "problem")
            assert.equal(1, #p)
            assert.same({ "/problems/token-revoked", 1008 }, { p[1].type, p[1].code })
            local closes = events(t, "close")
            assert.equal(1, #closes)
            assert.same({ 1008, false }, { closes[1].code, closes[1].willReconnect })
            assert.equal(0, #events(t, "reconnecting"))
            assert.equal(1, #conns(gw, "/revoke/1.0"))
        end)
    end)

    describe("reconnecting", function()
        it("reconnects after the server drops the socket, with a new ticket each time", function()
            local t = value("reconnect")
            assert.equal(3, #events(t, "open"))
            local c = conns(gw, "/reconnect/1.0")
            local accepted, seqs = 0, {}
            for _, rec in ipairs(c) do
                if not rec.refused then
                    accepted = accepted + 1
                    assert.is_nil(seqs[rec.ticket_seq], "a ticket used twice")
                    seqs[rec.ticket_seq] = true
                end
            end
            assert.equal(3, accepted)
            assert.equal(5, #c)                                   -- and two attempts destroyed before the upgrade
            assert.equal(5, #tickets(gw, "/reconnect/1.0"))       -- one ticket per attempt
            for _, tk in ipairs(tickets(gw, "/reconnect/1.0")) do assert.equal(200, tk.status) end
            for _, d in ipairs(events(t, "close")) do
                if d.code == 1006 then assert.is_true(d.willReconnect) end
            end
        end)

        it("delivers what was sent while reconnecting, in order, after the new open", function()
            local t = value("reconnect")
            -- queued while no socket was open: waiting out the delay ("reconnecting") or, on a
            -- loaded machine where the 100 ms delay ran out first, the new socket not open yet
            for i = 1, 5 do
                local s = t.sends[1 + i]
                assert.same({ "q" .. i, true }, { s.data, s.ok })
                assert.is_true(s.state == "reconnecting" or s.state == "connecting", "sent in state " .. tostring(s.state))
            end
            assert.same({ "before", "q1", "q2", "q3", "q4", "q5", "after" }, texts(t))
            local c = conns(gw, "/reconnect/1.0")
            assert.same({ "q1", "q2", "q3", "q4", "q5" }, c[2].messages)
        end)

        it("backs off exponentially and starts over after a connection stayed open", function()
            local t = value("reconnect")
            local r = events(t, "reconnecting")
            local got = {}
            for _, d in ipairs(r) do got[#got + 1] = { d.attempt, d.delay } end
            -- first drop: attempt 1; then the backoff reset, second drop with two refusals: 1, 2, 3
            assert.same({ { 1, 100 }, { 1, 100 }, { 2, 200 }, { 3, 400 } }, got)
        end)
    end)

    describe("a backend weir cannot reach", function()
        it("sends again, after reconnecting, what it sent on a socket weir closed 1014 with /problems/bad-gateway", function()
            local t = value("bad-gateway")
            local closes = events(t, "close")
            assert.equal(1014, closes[1].code)
            assert.is_true(closes[1].willReconnect)
            assert.equal("/problems/bad-gateway", closes[1].problem.type)
            assert.same({ "a", "b", "c" }, texts(t))
            local c = conns(gw, "/open/bg/1.0")
            assert.is_true(c[1].bad_gateway)
            for i, m in ipairs(c[1].lost) do assert.equal(({ "a", "b" })[i], m) end   -- never echoed
            assert.same({ "a", "b", "c" }, c[2].messages)
        end)
    end)

    describe("close codes", function()
        it("reconnects after 1012, 1013, 1001, 1014 and 1011 from the server, not after 1003", function()
            local t = value("close-codes")
            local got = {}
            for _, d in ipairs(events(t, "close")) do got[#got + 1] = { d.code, d.willReconnect } end
            assert.same({ { 1012, true }, { 1013, true }, { 1001, true }, { 1014, true }, { 1011, true }, { 1003, false } }, got)
            assert.equal(6, #events(t, "open"))
            assert.equal(5, #events(t, "reconnecting"))
            assert.equal("closed", t.state)
            local c = conns(gw, "/open/codes/1.0")
            assert.equal(6, #c)
            for _, rec in ipairs(c) do assert.equal("none", rec.auth) end
            assert.equal(0, #tickets(gw, "/open/codes/1.0"))
        end)
    end)

    describe("module helpers", function()
        it("derives the ticket URL from the WebSocket URL", function()
            local u = value("units")
            assert.same({
                "http://h.example/echo/1.0/ticket",
                "https://h.example:8443/echo/1.0/ticket",
                "http://h.example/echo/1.0/auth/ticket",
            }, u.ticket_urls)
        end)

        it("reads a JWT's exp without verifying it, and nothing from other tokens", function()
            local u = value("units")
            assert.equal(1900000000000, u.jwt_expiries[1])
            assert.is_nil(u.jwt_expiries[2])
            assert.is_nil(u.jwt_expiries[3])
        end)

        it("parses weir's error JSON and nothing else", function()
            local u = value("units")
            assert.same({ type = "/problems/token-expired", code = 1008, message = "token expired",
                          timestamp = "2026-01-02T03:04:05Z" }, u.problems[1])
            assert.is_nil(u.problems[2])
        end)
    end)
end)
