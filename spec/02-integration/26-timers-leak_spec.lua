-- A closed connection's timers leave the runtime with it: a policy arming
-- two long timers per connection (as jwt does) over tens of thousands of
-- connections keeps the worker's memory flat once warm. (Before the fix,
-- a compiled close lost one timer per connection: about 2 KiB each.)
local helpers = require "helpers"

describe("timers of closed connections", function()
    local gw, wsload
    setup(function()
        local code, _, err = helpers.run({ "make", "-s", "-C", "bench", "tools" }, { timeout = 120 })
        assert(code == 0, "building bench tools: " .. err)
        wsload = "bench/out/wsload"
        -- the C echo server of make bench: the node backend is slower than
        -- weir here, and the leak showed only after ~20,000 connections
        local port = helpers.free_port()
        helpers.spawn({ "bench/out/wsecho", "-p", tostring(port), "-q" })
        helpers.wait_port(port)
        local be = "ws://127.0.0.1:" .. port
        gw = helpers.start_weir({
            workers = 1,
            log = { level = "warn" },
            policy_paths = { helpers.fixture_policies },
            apis = { helpers.policy_api("T", "/t", be, { { "spec-two-timers", {} } }) },
        })
    end)
    teardown(helpers.cleanup)

    -- open and close connections for SECONDS; returns how many opened
    local function churn(seconds)
        local code, out, err = helpers.run({ wsload, "-m", "connect", "-c", "50", "-d", tostring(seconds), "-q",
                                             gw:url("/t") }, { timeout = seconds + 60 })
        assert(code == 0, "wsload: " .. out .. err)
        return assert(tonumber(out:match('"opened":(%d+)')), out)
    end

    it("do not pile up (memory flat once warm: under 64 bytes a connection, where lost timers held hundreds)", function()
        local worker = assert(gw:worker_pids()[1])
        -- the JIT compiles the close path in here: at least 20,000 connections,
        -- however long a loaded machine (or a sanitizer build) takes for them
        local warm, t0 = 0, helpers.now()
        repeat warm = warm + churn(5) until warm > 20000 or helpers.now() - t0 > 150
        assert.is_true(warm > 20000, "only " .. warm .. " connections to warm up in 150 s")
        local before = helpers.rss_kb(worker)
        local n = churn(8)
        local grew = helpers.rss_kb(worker) - before
        assert.is_true(n > 5000, "only " .. n .. " connections")
        assert.is_true(grew * 1024 / n < 64,
                       string.format("the worker grew by %d KiB over %d connections", grew, n))
    end)
end)
