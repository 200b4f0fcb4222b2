-- TLS on both legs: a wss:// listener with a certificate generated during
-- the spec, and wss:// backends verified against a CA.
local helpers = require "helpers"

describe("TLS", function()
    local listener_cert, be_tls, be_plain, gw

    setup(function()
        listener_cert = helpers.make_cert("listener")
        be_tls = helpers.start_backend("tls-echo")          -- its own certificate, made now
        be_plain = helpers.start_backend("echo")
        -- By address, with server_name naming the certificate's host.
        local function wss(ca, verify, server_name)
            return { url = "wss://127.0.0.1:" .. be_tls.port, ca = ca, verify = verify, server_name = server_name }
        end
        gw = helpers.start_weir({
            listen = {
                { address = "127.0.0.1" },
                { address = "127.0.0.1", tls = { cert = listener_cert.cert, key = listener_cert.key } },
            },
            policy_paths = { helpers.fixture_policies },
            apis = {
                helpers.api("Plain", "/plain", be_plain),
                -- spec-verdicts reads binary messages whose length ends in 777
                -- and answers those ending in 555 with what it read
                helpers.policy_api("Hooked", "/hooked", be_plain, { { "spec-verdicts", {} } }),
                { name = "Secure", context = "/secure", versions = {
                    { version = "1.0", default = true,
                      endpoints = { production = wss(be_tls.ca, true, "localhost") } } } },
                { name = "ByName", context = "/byname", versions = {
                    { version = "1.0", default = true,
                      endpoints = { production = { url = be_tls.url, ca = be_tls.ca, verify = true } } } } },
                { name = "WrongCA", context = "/wrongca", versions = {
                    { version = "1.0", default = true,
                      endpoints = { production = wss(listener_cert.cert, true, "localhost") } } } },
                { name = "WrongName", context = "/wrongname", versions = {
                    { version = "1.0", default = true,
                      endpoints = { production = wss(be_tls.ca, true, "not-localhost.example") } } } },
            },
        })
    end)
    teardown(helpers.cleanup)

    local function wss_url(path)
        return ("wss://localhost:%d%s"):format(gw.ports[2], path)
    end

    for _, impl in ipairs(helpers.client_impls) do
        it(impl .. " client over wss:// gets its messages echoed by a ws:// backend", function()
            local t = helpers.ws_client(impl, { url = wss_url("/plain"), ca = listener_cert.cert, steps = {
                { op = "send", text = "over tls" }, { op = "send", size = 300000 }, { op = "wait", messages = 2 } } })
            assert.is_nil(t.error, tostring(t.error))
            local m = helpers.events_of(t, "message")
            assert.equal("over tls", m[1].text)
            assert.equal(t.sent[2].sha256, m[2].sha256)
            assert.equal(1000, t.closed.code)
        end)

        it(impl .. " client over ws:// reaches a wss:// backend verified against its CA", function()
            local t = helpers.ws_client(impl, { url = gw:url("/secure"), steps = {
                { op = "send", text = "to tls backend" }, { op = "send", size = 300000 }, { op = "wait", messages = 2 } } })
            assert.is_nil(t.error, tostring(t.error))
            local m = helpers.events_of(t, "message")
            assert.equal("to tls backend", m[1].text)
            assert.equal(t.sent[2].sha256, m[2].sha256)
        end)
    end

    it("shows a frame hook whole the big messages a client sends over wss://, and forwards them", function()
        -- TLS reads a record at a time: a message is read on behind in the
        -- read buffer until it is whole, or assembled (the last, over 128 KiB)
        local t = helpers.ws_client("node", { url = wss_url("/hooked"), ca = listener_cert.cert, steps = {
            { op = "send", size = 100777 }, { op = "send", size = 90555 }, { op = "send", size = 120000 },
            { op = "send", size = 60777 }, { op = "send", size = 200777 }, { op = "wait", messages = 5 } } })
        assert.is_nil(t.error, tostring(t.error))
        local got = {}
        for _, m in ipairs(helpers.events_of(t, "message")) do got[#got + 1] = m.sha256 end
        local want = {}
        for i = 1, 5 do want[i] = t.sent[i].sha256 end
        table.sort(got)
        table.sort(want)
        assert.same(want, got)
    end)

    it("wss:// on both legs relays messages and close codes", function()
        local t = helpers.ws_client("node", { url = wss_url("/secure"), ca = listener_cert.cert, steps = {
            { op = "send", text = "both legs" }, { op = "wait", messages = 1 },
            { op = "close", code = 4002, reason = "tls bye" }, { op = "wait", close = true } } })
        assert.is_nil(t.error, tostring(t.error))
        assert.equal("both legs", helpers.events_of(t, "message")[1].text)
        assert.same({ code = 4002, reason = "tls bye" }, t.closed)
    end)

    it("sends X-Forwarded-Proto: https for a client on the TLS listener", function()
        local before = #be_plain:connections()
        helpers.ws_client("node", { url = wss_url("/plain"), ca = listener_cert.cert, steps = {} })
        local rec = be_plain:wait_conn(before + 1)
        assert.equal("https", (helpers.header(rec, "X-Forwarded-Proto")))
    end)

    it("reaches a wss://localhost endpoint verified by its host name, sending Host: localhost:port", function()
        local before = #be_tls:connections()
        local t = helpers.ws_client("node", { url = gw:url("/byname"), steps = {
            { op = "send", text = "by name" }, { op = "wait", messages = 1 } } })
        assert.equal("by name", helpers.events_of(t, "message")[1].text)
        local rec = be_tls:wait_conn(before + 1)
        assert.equal("localhost:" .. be_tls.port, (helpers.header(rec, "Host")))
    end)

    it("a wss:// backend whose certificate is not signed by the configured CA gives bad-gateway and 1014", function()
        local t = helpers.ws_client("node", { url = gw:url("/wrongca"), steps = { { op = "wait", close = true } } })
        local m = helpers.events_of(t, "message")
        assert.equal(1, #m)
        helpers.check_error(m[1].text, "/problems/bad-gateway", 1014)
        assert.equal(1014, t.closed.code)
    end)

    it("a wss:// backend whose certificate does not match server_name gives bad-gateway and 1014", function()
        local t = helpers.ws_client("node", { url = gw:url("/wrongname"), steps = { { op = "wait", close = true } } })
        local m = helpers.events_of(t, "message")
        assert.equal(1, #m)
        helpers.check_error(m[1].text, "/problems/bad-gateway", 1014)
        assert.equal(1014, t.closed.code)
    end)

    it("a client that fails the TLS handshake does not disturb the listener", function()
        local c = assert(helpers.tcp(gw.ports[2]))
        c:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")      -- plain HTTP to the TLS port
        c:wait_closed(10)
        c:close()
        local t = helpers.ws_client("python", { url = wss_url("/plain"), ca = listener_cert.cert, steps = {
            { op = "send", text = "still fine" }, { op = "wait", messages = 1 } } })
        assert.equal("still fine", helpers.events_of(t, "message")[1].text)
    end)
end)
