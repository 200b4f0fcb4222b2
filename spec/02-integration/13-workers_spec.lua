-- Workers and their listeners: every worker accepts on a socket of its own
-- (SO_REUSEPORT), so the kernel spreads connections over them; a port that
-- is taken, by another weir too, still fails the start (docs/architecture.md,
-- "Processes").
local helpers = require "helpers"

-- The workers of GW's access records: { ["w0"] = count, ["w1"] = count }.
local function per_worker(gw)
    local n = {}
    for line in (helpers.read_file(gw.log_path) or ""):gmatch("[^\n]+") do
        if line:find('"msg":"access"', 1, true) then
            local w = line:match('"conn":"(w%d+)%-')
            if w then n[w] = (n[w] or 0) + 1 end
        end
    end
    return n
end

describe("workers", function()
    teardown(helpers.cleanup)

    it("spread the connections of one client evenly: each of 2 workers takes its share", function()
        local be = helpers.start_backend("echo")
        local gw = helpers.start_weir({ workers = 2, apis = { helpers.api("Echo", "/echo", be) } })
        -- one at a time, each closed before the next: a worker woken first
        -- would take nearly all of them from a shared socket
        local total = 200
        for i = 1, total do
            local ws = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0" }))
            ws:send_text("n" .. i)
            assert.equal("n" .. i, assert(ws:recv_message()).payload)
            ws:send_close(1000)
            ws:wait_closed(10)
            ws:close()
        end
        local n = helpers.wait_until(function()
            local c = per_worker(gw)
            return (c.w0 or 0) + (c.w1 or 0) >= total and c
        end, 20, "an access record for every connection")
        -- the kernel hashes each connection's addresses and ports: binomial,
        -- n = 200, p = 1/2; outside 60..140 has a probability below 1e-8
        assert.is_true(n.w0 >= 60 and n.w1 >= 60,
                       string.format("worker 0 took %d, worker 1 took %d", n.w0 or 0, n.w1 or 0))
    end)

    it("a second weir on a port the first holds does not start, and the first keeps every connection", function()
        local be = helpers.start_backend("echo")
        local gw = helpers.start_weir({ workers = 2, apis = { helpers.api("Echo", "/echo", be) } })
        local conf = helpers.write_conf({
            workers = 2,
            listen = { { address = "127.0.0.1", port = gw.port } },
            apis = { helpers.api("Echo", "/echo", be) },
        })
        local code, _, err = helpers.run({ helpers.bin, "-c", conf }, { timeout = 15 })
        assert.equal(1, code)
        assert.truthy(err:find('"msg":"cannot listen","address":"127.0.0.1","port":' .. gw.port
                               .. ',"error":"Address already in use"', 1, true), err)
        for i = 1, 20 do
            local ws = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0" }))
            ws:send_text("still " .. i)
            assert.equal("still " .. i, assert(ws:recv_message()).payload)
            ws:close()
        end
    end)

    it("a worker killed: what arrives for its socket waits for its successor, nothing is refused", function()
        local be = helpers.start_backend("echo")
        local gw = helpers.start_weir({ workers = 2, apis = { helpers.api("Echo", "/echo", be) } })
        local kids = helpers.children(gw.pid)
        assert.equal(2, #kids)
        helpers.kill(kids[1], "KILL")
        -- connections hashed to the dead worker's socket queue in its backlog
        -- (the master holds the socket) until the new worker accepts them
        for i = 1, 40 do
            local ws = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0", timeout = 10 }))
            ws:send_text("k" .. i)
            assert.equal("k" .. i, assert(ws:recv_message(10)).payload)
            ws:close()
        end
        helpers.wait_until(function() return #helpers.children(gw.pid) == 2 end, 10, "the worker restarted")
    end)
end)
