-- A worker out of file descriptors (docs/logging.md "cannot accept"): it
-- logs the error, stops accepting for 100 ms instead of spinning on the
-- listener, and serves new connections again once descriptors are free.
-- weir runs under prlimit with a small RLIMIT_NOFILE; every proxied
-- connection costs the worker two descriptors.
local helpers = require "helpers"

describe("a worker out of file descriptors", function()
    teardown(helpers.cleanup)

    it("logs 'cannot accept', serves the connections it has, and accepts again once some close", function()
        local be = helpers.start_backend("echo")
        local gw = helpers.start_weir({ workers = 1, apis = { helpers.api("Echo", "/echo", be) } },
                                      { wrap = { "prlimit", "--nofile=48:48", "--" } })
        local held, refused = {}, nil
        for i = 1, 40 do
            local ws, err = helpers.ws_connect(gw.port, { path = "/echo/1.0/h" .. i, timeout = 1 })
            if not ws then refused = err; break end
            held[#held + 1] = ws
        end
        assert(refused, "48 descriptors held 40 proxied connections: the limit did not apply")
        assert.is_true(#held > 0)
        local rec = gw:wait_log(function(r) return r.msg == "cannot accept" end)
        assert.matches("[Tt]oo many open files", rec.error)
        -- the connections it has are served; the one accepted with the last
        -- descriptor, if any, had none left for its backend: bad gateway
        local served, bad = 0, 0
        for _, ws in ipairs(held) do
            local got = helpers.ask(ws, "still here")
            if got == "still here" then
                served = served + 1
            else
                assert.matches('"type":"/problems/bad%-gateway"', got)
                bad = bad + 1
            end
        end
        assert.is_true(bad <= 1, bad .. " connections lost their backend")
        assert.is_true(served >= 10, "only " .. served .. " connections served")
        for _, ws in ipairs(held) do ws:close() end
        local ws = helpers.wait_until(function()
            return (helpers.ws_connect(gw.port, { path = "/echo/1.0/again", timeout = 1 }))
        end, 20, "a connection accepted again")
        assert.equal("back", helpers.ask(ws, "back"))
        ws:close()
    end)
end)
