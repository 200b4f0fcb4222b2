-- Process life: graceful shutdown on SIGTERM/SIGINT, workers restarted by
-- the master, the pid file (docs/protocol.md, "Shutdown").
local helpers = require "helpers"

-- Reads, from a raw client, the going-away error JSON and the close 1001
-- that follows it, and answers the close. Returns nil or a failure message.
local function expect_going_away(ws)
    local msg, err, close = ws:recv_message(10)
    if not msg then return "no error JSON before the close (" .. tostring(err) .. ")" end
    local ok, e = pcall(helpers.check_error, msg.payload, "/problems/going-away", 1001)
    if not ok then return e end
    close = close or ws:recv_close(10)
    if not close then return "no close frame" end
    if close.code ~= 1001 then return "close code " .. tostring(close.code) end
    ws:send_close(1001)
    ws:wait_closed(10)
    ws:close()
end

describe("lifecycle", function()
    teardown(helpers.cleanup)

    it("SIGTERM sends every open client going-away JSON and close 1001, every backend 1001, and exits 0", function()
        local be = helpers.start_backend("echo")
        local gw = helpers.start_weir({
            workers = 2,
            limits = { drain_timeout = 10 },
            apis = { helpers.api("Echo", "/echo", be) },
        })
        local raw = {}
        for i = 1, 20 do
            raw[i] = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0/raw" .. i }))
            raw[i]:send_text("hi " .. i)
            assert.equal("hi " .. i, assert(raw[i]:recv_message()).payload)
        end
        local real = {}
        for _, impl in ipairs(helpers.client_impls) do
            real[impl] = helpers.ws_client_start(impl, { url = gw:url("/echo/1.0/" .. impl), timeout = 30,
                steps = { { op = "send", text = "x" }, { op = "wait", messages = 1 }, { op = "wait", close = true } } })
        end
        be:wait_conns(function(c)
            local n = 0
            for _, r in ipairs(c) do if r.messages >= 1 then n = n + 1 end end
            return n >= 22
        end, 20, "22 connections open at the backend")

        helpers.kill(gw.pid, "TERM")

        for i, ws in ipairs(raw) do
            local failure = expect_going_away(ws)
            assert.is_nil(failure, "raw client " .. i .. ": " .. tostring(failure))
        end
        for impl, c in pairs(real) do
            local t = c:wait()
            local m = helpers.events_of(t, "message")
            assert.equal(2, #m, impl .. " client: expected the echo and the error JSON")
            helpers.check_error(m[2].text, "/problems/going-away", 1001)
            assert.equal(1001, t.closed.code, impl .. " client close code")
        end
        assert.equal(0, gw:wait(20))
        local conns = be:wait_conns(function(c)
            for _, r in ipairs(c) do if not r.closed then return false end end
            return c
        end, 10, "every backend connection to close")
        for _, r in ipairs(conns) do
            assert.equal(1001, r.closed.code, "backend connection " .. r.url .. " closed with " .. tostring(r.closed.code))
        end
    end)

    it("SIGINT shuts down gracefully like SIGTERM", function()
        local be = helpers.start_backend("echo")
        local gw = helpers.start_weir({ apis = { helpers.api("Echo", "/echo", be) } })
        local ws = assert(helpers.ws_connect(gw.port, { path = "/echo" }))
        be:wait_conn(1)
        helpers.kill(gw.pid, "INT")
        assert.is_nil(expect_going_away(ws))
        assert.equal(0, gw:wait(20))
    end)

    it("SIGTERM with no connection open exits 0 and stops listening", function()
        local gw = helpers.start_weir({ apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9") } })
        assert.equal(0, gw:stop("TERM"))
        assert.is_nil(helpers.tcp(gw.port, 1))
    end)

    it("writes the master's pid to pid_file", function()
        local gw = helpers.start_weir({ apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9") } })
        local pid = tonumber((helpers.read_file(gw.conf.pid_file) or ""):match("%d+"))
        assert.equal(gw.pid, pid)
        gw:stop()
    end)

    it("runs the configured number of workers", function()
        local gw = helpers.start_weir({ workers = 2, apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9") } })
        helpers.wait_until(function() return #gw:worker_pids() == 2 end, 10, "2 workers")
        gw:stop()
    end)

    it("a worker killed with SIGKILL is replaced by the master, which logs it, and weir keeps serving", function()
        local be = helpers.start_backend("echo")
        local gw = helpers.start_weir({ workers = 2, apis = { helpers.api("Echo", "/echo", be) } })
        local before = helpers.wait_until(function()
            local w = gw:worker_pids()
            return #w == 2 and w
        end, 10, "2 workers")
        local victim = before[1]
        helpers.kill(victim, "KILL")

        local after = helpers.wait_until(function()
            local w = gw:worker_pids()
            if #w ~= 2 then return false end
            for _, p in ipairs(w) do if p == victim then return false end end
            return w
        end, 10, "a new worker in place of " .. victim)
        assert.is_true(gw:alive())

        -- the master logged the death and the restart (docs/logging.md)
        local died = gw:wait_log(function(r) return r.msg == "worker died" and r.worker_pid == victim end, 10)
        assert.equal(gw.pid, died.pid)
        assert.equal("error", died.level)
        assert.equal(9, died.signal)
        local newpid
        for _, p in ipairs(after) do if p ~= before[2] then newpid = p end end
        local restarted = gw:wait_log(function(r) return r.msg == "worker restarted" and r.worker_pid == newpid end, 10)
        assert.equal(died.worker, restarted.worker)

        -- both workers serve: several connections land on either
        for i = 1, 4 do
            local ws = assert(helpers.ws_connect(gw.port, { path = "/echo" }))
            ws:send_text("again " .. i)
            assert.equal("again " .. i, assert(ws:recv_message()).payload)
            ws:close_handshake(1000)
            ws:close()
        end
        assert.is_not.same(before, after)
        assert.equal(0, gw:stop())
    end)
    it("a worker whose Lua runtime cannot start logs why, exits 1 with nothing held, and is started again", function()
        -- a copy of the runtime that fails when it loads (the master reads
        -- only the configuration modules, so it starts)
        local dir = helpers.tmpdir() .. "/broken-lua"
        assert(os.execute("mkdir -p " .. helpers.shell_quote(dir) .. " && cp -r "
                          .. helpers.shell_quote(helpers.root .. "/lua/weir") .. " " .. helpers.shell_quote(dir)) == 0)
        helpers.write_file(dir .. "/weir/runtime.lua", 'error("spec: this runtime does not load")\n')
        local be = helpers.start_backend("echo")
        local gw = helpers.start_weir({ workers = 1, apis = { helpers.api("Echo", "/echo", be) } },
                                      { env = { WEIR_LUA_DIR = dir }, wait = false })
        local why = gw:wait_log(function(r) return r.msg == "cannot start the Lua runtime" end, 15)
        assert.truthy(why.error:find("this runtime does not load", 1, true), why.error)
        local exited = gw:wait_log(function(r) return r.msg == "worker exited" and r.worker_pid == why.pid end, 15)
        assert.equal(1, exited.status)
        -- the master starts it again (and keeps running); under the
        -- sanitizer build, each exit must also leave no leak report
        gw:wait_log(function(r) return r.msg == "worker restarted" and r.worker_pid ~= why.pid end, 15)
        assert.is_true(gw:alive())
        assert.equal(0, gw:stop())
    end)
end)
