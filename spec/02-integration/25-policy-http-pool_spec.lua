-- weir.http.request from a worker reuses connections (the keep-alive pool
-- of core/http_client.c), and a worker that exits with pooled connections
-- still open releases them: under `make test SAN=1` any leak or bad access
-- at that exit is a sanitizer report, which fails the run.
--
-- The HTTP server is spec/support/http_test_server.py, which keeps
-- connections alive and numbers them; the test policy is
-- spec/fixtures/policies/spec-http.lua.
local helpers = require "helpers"

local function start_http_server()
    local dir = helpers.tmpdir()
    local out, err = dir .. "/http-server.out", dir .. "/http-server.err"
    local pid = helpers.spawn({ "/usr/bin/python3", helpers.support .. "/http_test_server.py" },
                              { stdout = out, stderr = err })
    local info = helpers.wait_until(function()
        local s = helpers.read_file(out)
        if s and s:find("\n") then return helpers.json(s) end
        if not helpers.alive(pid) then error("the test server exited: " .. (helpers.read_file(err) or "")) end
    end, 15, "the test server to listen")
    info.pid = pid
    return info
end

describe("weir.http's keep-alive pool in a worker", function()
    local be, srv, gw

    setup(function()
        be = helpers.start_backend("echo")
        srv = start_http_server()
        gw = helpers.start_weir({
            workers = 1,
            policy_paths = { helpers.fixture_policies },
            apis = {
                helpers.policy_api("Io", "/io", be,
                                   { { "spec-http", { base = string.format("http://127.0.0.1:%d", srv.http) } } }),
            },
        })
    end)
    teardown(helpers.cleanup)

    -- The server's echo record for PATH, fetched by the policy.
    local function fetch(ws, path)
        local got = helpers.ask(ws, "get:" .. path)
        local body = got:match("^200:(.*)$")
        assert(body, "the policy's request failed: " .. got)
        return helpers.json(body)
    end

    it("a policy's sequential requests to one host share one connection", function()
        local ws = assert(helpers.ws_connect(gw.port, { path = "/io/1.0/pool" }))
        local list = {}
        for i = 1, 4 do
            list[i] = fetch(ws, "/echo?n=" .. i)
            assert.equal("/echo?n=" .. i, list[i].target)
        end
        assert.equal(1, list[4].accepted - list[1].accepted + 1)
        for i = 1, 4 do
            assert.equal(list[1].conn, list[i].conn)
            assert.equal(i, list[i].conn_request)
        end
        ws:close()
    end)

    it("the worker exits cleanly with a pooled connection still open", function()
        local ws = assert(helpers.ws_connect(gw.port, { path = "/io/1.0/exit" }))
        fetch(ws, "/echo?n=last")       -- leaves an idle connection in the pool
        ws:close()
        assert.equal(0, gw:stop("TERM"))
        gw:wait_log(function(r) return r.msg == "worker stopped" end, 5)
        assert.is_nil(gw:stderr():find("Sanitizer"))
    end)
end)
