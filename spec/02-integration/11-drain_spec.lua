-- Draining without a reconnect storm (limits.drain_rate): SIGTERM and
-- `weir -s drain` close the clients at a configured rate, each with the
-- going-away error JSON and a close frame (1001 shutting down, 1012
-- restarting), and limits.drain_timeout bounds the whole drain. No
-- assertion is about exact times: only about the spread being there and
-- the bound holding, with generous margins.
local helpers = require "helpers"
local socket  = require "socket"

-- Open N raw clients through GW, each with one echo seen.
local function open_clients(gw, n)
    local ws = {}
    for i = 1, n do
        ws[i] = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0/drain" .. i }))
        ws[i]:send_text("hi " .. i)
        assert.equal("hi " .. i, assert(ws[i]:recv_message()).payload)
    end
    return ws
end

-- Read every client until its close frame: returns, per client, the time
-- the close came, its code and the text message before it; a client whose
-- connection ended without a close frame (what a browser reports as 1006)
-- or that got nothing within TIMEOUT fails the spec.
local function collect_closes(ws, timeout)
    local got, left = {}, #ws
    local deadline = helpers.now() + timeout
    while left > 0 do
        assert(helpers.now() < deadline, left .. " client(s) got no close frame in time")
        local socks, by = {}, {}
        for i, c in ipairs(ws) do
            if not got[i] then
                socks[#socks + 1] = c.sock
                by[c.sock] = i
            end
        end
        local readable = socket.select(socks, nil, 0.2)
        for _, sk in ipairs(readable or {}) do
            local i = by[sk]
            local c = ws[i]
            repeat
                local f, err = c:recv_frame(5)
                assert(f, "client " .. i .. ": the connection ended without a close frame (" .. tostring(err) .. ")")
                if f.opcode == 1 then
                    c.json = f.payload
                elseif f.opcode == 8 then
                    got[i] = { at = helpers.now(), code = f.code, json = c.json }
                    c:send_frame{ opcode = 8, payload = f.payload:sub(1, 2) }     -- answer it
                    left = left - 1
                end
            until got[i] or c:_avail() == 0
        end
    end
    return got
end

-- A gateway with LIMITS in front of an echo backend, and N clients through it.
local function start(limits, n)
    local be = helpers.start_backend("echo")
    local gw = helpers.start_weir({ limits = limits, apis = { helpers.api("Echo", "/echo", be) } })
    return be, gw, open_clients(gw, n)
end

local function spread(got)
    local first, last = math.huge, 0
    for _, g in ipairs(got) do
        first, last = math.min(first, g.at), math.max(last, g.at)
    end
    return last - first
end

local function check_all(got, code)
    for i, g in ipairs(got) do
        assert.equal(code, g.code, "client " .. i .. " close code")
        assert.is_string(g.json, "client " .. i .. " got no error JSON before its close")
        helpers.check_error(g.json, "/problems/going-away", code)
    end
end

describe("drain", function()
    teardown(helpers.cleanup)

    it("SIGTERM with drain_rate closes the clients spread over about N/rate seconds, 1001 and the JSON each", function()
        local N, RATE = 8, 4
        local be, gw, ws = start({ drain_rate = RATE, drain_timeout = 30, close_timeout = 2 }, N)
        helpers.kill(gw.pid, "TERM")
        local got = collect_closes(ws, 30)
        check_all(got, 1001)
        local s = spread(got)
        assert.is_true(s >= (N / RATE) / 2, ("the closes came within %.2f s: not spread out"):format(s))
        assert.equal(0, gw:wait(20))
        local conns = be:wait_conns(function(c)
            for _, r in ipairs(c) do if not r.closed then return false end end
            return c
        end, 10, "every backend connection to close")
        for _, r in ipairs(conns) do assert.equal(1001, r.closed.code) end
    end)

    it("drain_rate 0 (the default) closes them all at once", function()
        local N = 8
        local _, gw, ws = start({ drain_timeout = 30, close_timeout = 2 }, N)
        helpers.kill(gw.pid, "TERM")
        local got = collect_closes(ws, 30)
        check_all(got, 1001)
        local s = spread(got)
        assert.is_true(s < 1, ("the closes were spread over %.2f s"):format(s))
        assert.equal(0, gw:wait(20))
    end)

    it("drain_timeout bounds a drain the rate would make longer: what is left gets its close at once", function()
        local N, RATE = 8, 1                    -- at the rate alone: 7 s or more
        local _, gw, ws = start({ drain_rate = RATE, drain_timeout = 3, close_timeout = 1 }, N)
        helpers.kill(gw.pid, "TERM")
        local got = collect_closes(ws, 30)
        check_all(got, 1001)
        local s = spread(got)
        assert.is_true(s < (N - 1) / RATE - 1, ("the closes took %.2f s: drain_timeout did not bound them"):format(s))
        assert.is_true(s >= 0.5, ("the closes came within %.2f s: the rate was not applied at first"):format(s))
        assert.equal(0, gw:wait(20))
    end)

    it("weir -s drain closes the clients 1012 with the going-away JSON, at the rate, and waits for the exit", function()
        local N, RATE = 6, 4
        local _, gw, ws = start({ drain_rate = RATE, drain_timeout = 30, close_timeout = 2 }, N)
        local out = helpers.tmpdir() .. "/drain.out"
        local pid = helpers.spawn({ helpers.bin, "-s", "drain", "-c", gw.conf_path }, { stdout = out })
        local got = collect_closes(ws, 30)
        check_all(got, 1012)
        local s = spread(got)
        assert.is_true(s >= (N / RATE) / 2, ("the closes came within %.2f s: not spread out"):format(s))
        assert.equal(0, (helpers.wait(pid, 30)))
        assert.truthy((helpers.read_file(out) or ""):find("weir (pid " .. gw.pid .. ") stopped", 1, true))
        assert.equal(0, gw:wait(20))
        gw:wait_log(function(r) return r.msg == "worker draining" and r.close_code == 1012 end, 5)
    end)
end)
