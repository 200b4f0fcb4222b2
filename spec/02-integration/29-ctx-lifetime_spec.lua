-- What a connection's ctx keeps after the handshake (docs/policies.md "The
-- ctx", "After the handshake"): a hook that runs later reads the request
-- line, the query, the headers and the subprotocols as on_handshake did
-- (the headers made again from the request head); ctx.api is shared and
-- read-only. A chain with nothing after on_handshake drops the request
-- head: a hook a reload adds later still reads the request line, and
-- reading a header fails with an error that says why, never nil. The test
-- policies are spec-request-later.lua and spec-keep-header.lua in
-- spec/fixtures/policies.
local helpers = require "helpers"


local function connect(gw, path, probe)
    local ws, res = helpers.ws_connect(gw.port, { path = path, headers = { ["X-Probe"] = probe },
                                                  protocols = { "chat.v2", "chat.v1" } })
    assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
    return ws
end

local function probe(ws)
    return assert(helpers.json((helpers.ask(ws, "probe"))))
end

describe("the ctx after the handshake", function()
    local gw
    setup(function()
        local be = helpers.start_backend("echo")
        gw = helpers.start_weir({
            workers = 1,
            policy_paths = { helpers.fixture_policies },
            apis = {
                helpers.policy_api("Later", "/later", be, { { "spec-request-later", {} } }),
                helpers.policy_api("Early", "/early", be, { { "spec-keep-header", {} } }),
            },
        })
    end)
    teardown(helpers.cleanup)

    it("gives a later hook the request line, query, headers and subprotocols", function()
        local ws = connect(gw, "/later/1.0/room?a=1&b=2", "p1")
        local r = probe(ws)
        assert.equal("GET", r.method)
        assert.equal("/later/1.0/room", r.path)
        assert.equal("a=1&b=2", r.query_string)
        assert.equal("1", r.query_a)
        assert.equal("127.0.0.1", r.client_ip)
        assert.equal("ws", r.scheme)
        assert.is_false(r.ticket_request)
        assert.equal("p1", r.probe_header)
        assert.equal(2, r.subprotocols)
        assert.equal("Later/1.0", r.api)
        assert.matches("^w%d+%-%d+$", r.id)
        -- twice: the views made again from the head give the same
        assert.same(r, probe(ws))
        ws:close()
    end)

    it("refuses a write to ctx.api, which the version's connections share", function()
        local ws = connect(gw, "/later", "p")
        local r = probe(ws)
        assert.is_table(r.api_write)
        assert.matches("ctx.api is shared by the connections of the version and read-only", r.api_write.error,
                       1, true)
        -- and the next connection's ctx.api is as it was
        local ws2 = connect(gw, "/later", "p")
        assert.equal("Later/1.0", probe(ws2).api)
        ws:close()
        ws2:close()
    end)

    it("a chain with nothing after the handshake drops the head: a hook added by a reload says so", function()
        local old = connect(gw, "/early?a=7", "p2")
        gw:rewrite(function(c)
            local v = c.apis[2].versions[1]
            v.policies[#v.policies + 1] = { "spec-request-later", {} }
        end)
        gw:reload()
        -- the connection opened before: the request line and query stay, the headers are gone
        local r = probe(old)
        assert.equal("GET", r.method)
        assert.equal("/early", r.path)
        assert.equal("a=7", r.query_string)
        assert.equal("7", r.query_a)
        assert.equal("p2", r.kept)                     -- what on_handshake kept in ctx.vars
        assert.is_table(r.probe_header)
        assert.matches("ctx.request.headers is not kept after the handshake", r.probe_header.error, 1, true)
        assert.is_table(r.subprotocols)
        assert.matches("ctx.request.subprotocols is not kept after the handshake", r.subprotocols.error, 1, true)
        -- a connection opened after the reload has a later hook: it keeps its head
        local new = connect(gw, "/early", "p3")
        r = probe(new)
        assert.equal("p3", r.probe_header)
        assert.equal("p3", r.kept)
        assert.equal(2, r.subprotocols)
        old:close()
        new:close()
    end)
end)
