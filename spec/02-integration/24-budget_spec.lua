-- The CPU budget of a policy hook (limits.policy_budget, docs/policies.md
-- "A policy that fails"): endless loops, compiled by LuaJIT or not, are
-- stopped; only their connection is closed; the worker goes on serving.
-- The test policy is spec/fixtures/policies/spec-budget.lua.
local helpers = require "helpers"

local ERR = "/problems/internal-error"

-- An echo backend and a weir of one worker with policy_budget BUDGET, the
-- APIs APIS(backend) gives; returns the weir.
local function start(budget, apis)
    local be = helpers.start_backend("echo")
    return helpers.start_weir({
        workers = 1,
        policy_paths = { helpers.fixture_policies },
        limits = { policy_budget = budget },
        apis = apis(be),
    })
end

-- GW's one worker's pid.
local function one_worker(gw)
    return helpers.wait_until(function()
        local p = gw:worker_pids()
        return #p == 1 and p
    end, 10, "one worker")[1]
end

describe("policy CPU budget", function()
    local gw
    local seq = 0

    setup(function()
        gw = start("50ms", function(be)
            return {
                helpers.policy_api("Budget", "/budget", be, { { "spec-budget", {} } }),
                helpers.policy_api("Open", "/open", be, { { "spec-budget", {}, fail_open = true } }),
                -- spec-budget (priority 540) runs before spec-verdicts (510)
                helpers.policy_api("Chain", "/chain", be, {
                    { "spec-budget", {}, fail_open = true }, { "spec-verdicts", {} } }),
            }
        end)
    end)
    teardown(helpers.cleanup)

    local function connect(path)
        seq = seq + 1
        local ws, res = helpers.ws_connect(gw.port, { path = (path or "/budget") .. "/1.0/c" .. seq })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        local _, port = ws.sock:getsockname()
        ws.client = "127.0.0.1:" .. port
        return ws
    end

    local recv = helpers.recv_payload

    local ask = helpers.ask

    local function worker() return one_worker(gw) end

    -- The conn id of WS, from its access record (written once it is gone).
    local function conn_of(ws)
        return gw:wait_log(function(r) return r.msg == "access" and r.client == ws.client end).conn
    end

    -- The log record MSG (default "policy failed") of a budget overrun on CONN.
    local function budget_failure(conn, msg)
        return gw:wait_log(function(r)
            return r.msg == (msg or "policy failed") and r.conn == conn
                   and tostring(r.error):find("CPU budget of 50 ms", 1, true)
        end)
    end

    it("stops a compiled endless loop: 1011 for its connection, another connection is served, same worker", function()
        local pid = worker()
        local other = connect()
        assert.equal("b1", ask(other, "b1"))
        local ws = connect()
        assert(ws:send_text("spin"))
        assert(other:send_text("b2"))       -- waits behind the loop, then is served
        local _, close = helpers.expect_error_close(ws, ERR, 1011)
        assert.equal("internal error", close.reason)
        assert.equal("b2", recv(other))
        assert.equal("b3", ask(other, "b3"))
        assert.equal(pid, worker())
        ws:close()
        local rec = budget_failure(conn_of(ws))
        assert.equal("spec-budget", rec.policy)
        assert.equal("on_frame_in", rec.hook)
        other:close()
    end)

    it("stops a loop that earlier messages made hot (traced) before it runs without end", function()
        local pid = worker()
        local ws = connect()
        local first = ask(ws, "warm:20000")
        for _ = 1, 4 do assert.equal(first, ask(ws, "warm:20000")) end
        assert(ws:send_text("hot"))
        helpers.expect_error_close(ws, ERR, 1011)
        assert.equal(pid, worker())
        local other = connect()
        assert.equal("after", ask(other, "after"))
        other:close()
    end)

    it("is per hook call: many short hooks in a row are not stopped", function()
        local ws = connect()
        for _ = 1, 100 do assert.matches("^warm:%d+$", ask(ws, "warm:20000")) end
        assert.equal("still open", ask(ws, "still open"))
        ws:close()
    end)

    it("still stops a policy that catches the budget error with pcall and loops again", function()
        local pid = worker()
        local ws = connect()
        assert(ws:send_text("pcall-spin"))
        helpers.expect_error_close(ws, ERR, 1011)
        assert.equal(pid, worker())
        local other = connect()
        assert.equal("after", ask(other, "after"))
        other:close()
    end)

    it("stops an endless on_handshake: 500 and /problems/internal-error", function()
        local pid = worker()
        seq = seq + 1
        local ws, res = helpers.ws_connect(gw.port, { path = "/budget/1.0/c" .. seq .. "?spin=1" })
        assert.is_nil(ws)
        assert.is_table(res, tostring(res))
        assert.equal(500, res.status)
        helpers.check_error(res.body, ERR, 500)
        assert.equal(pid, worker())
    end)

    it("with fail_open, a hook stopped by the budget counts as a pass: the message is forwarded", function()
        local pid = worker()
        local ws = connect("/open")
        assert.equal("spin", ask(ws, "spin"))
        assert.equal("next", ask(ws, "next"))
        assert.equal(pid, worker())
        gw:wait_log(function(r)
            return r.msg == "policy failed (fail_open: passing)" and r.policy == "spec-budget"
                   and tostring(r.error):find("CPU budget of 50 ms", 1, true)
        end)
        ws:close()
    end)

    it("with fail_open, the policies after one stopped by the budget still run", function()
        local ws = connect("/chain")
        assert.equal("after#spin", ask(ws, "reply:after#spin"))
        assert.equal("next", ask(ws, "next"))
        ws:close()
    end)

    it("stops an endless timer; the worker goes on serving", function()
        local pid = worker()
        local ws = connect()
        assert.equal("armed", ask(ws, "timer-spin"))
        local other = connect()
        assert.equal("after", ask(other, "after"))
        assert.equal(pid, worker())
        other:close()
        ws:close()
        budget_failure(conn_of(ws), "timer failed")
    end)

    it("gives each timer a budget of its own: one that spins does not stop another due with it", function()
        local ws = connect()
        assert.equal("armed", ask(ws, "timers-spin-send"))
        assert.equal("second timer ran", recv(ws))
        ws:close()
        budget_failure(conn_of(ws), "timer failed")
    end)

    it("stops an endless recheck after a reload; the reload completes and the worker goes on serving", function()
        local pid = worker()
        local ws = connect()
        assert.equal("before", ask(ws, "before"))
        gw:rewrite(function(c)
            c.apis[1].versions[1].policies = { { "spec-budget", { spin_recheck = true } } }
        end)
        gw:reload()                         -- waits for the worker's "worker reloaded"
        local rec = gw:wait_log(function(r)
            return r.msg == "policy failed" and r.hook == "recheck" and tostring(r.error):find("CPU budget", 1, true)
        end)
        assert.equal("spec-budget", rec.policy)
        local other = connect()
        assert.equal("after", ask(other, "after"))
        assert.equal("still", ask(ws, "still"))      -- its connection is not closed for it
        assert.equal(pid, worker())
        other:close()
        ws:close()
        gw:rewrite(function(c) c.apis[1].versions[1].policies = { { "spec-budget", {} } } end)
        gw:reload()
    end)

    it("stops an endless on_close; the worker goes on serving", function()
        local pid = worker()
        local ws = connect()
        assert.equal("spin-on-close", ask(ws, "spin-on-close"))
        ws:close_handshake(1000)
        ws:close()
        local conn = conn_of(ws)
        local rec = gw:wait_log(function(r) return tostring(r.msg):find("^policy failed") and r.conn == conn end)
        local other = connect()
        assert.equal("after", ask(other, "after"))
        assert.equal(pid, worker())
        other:close()
        -- logged like any failing hook: the policy's name, the hook, the conn, the error
        assert.equal("spec-budget", rec.policy)
        assert.equal("on_close", rec.hook)
        assert.matches("CPU budget of 50 ms", tostring(rec.error), 1, true)
    end)
end)

-- What the budget counts is the CPU a call uses, not the time it took: a
-- worker descheduled in the middle of a policy's work (here stopped with
-- SIGSTOP, as a CPU quota or a busy host can hold it) must not have the
-- policy stopped for the time it did not run.
describe("policy CPU budget, a worker stopped in a policy's work", function()
    local gw

    setup(function()
        gw = start("1s", function(be)
            return { helpers.policy_api("Budget", "/budget", be, { { "spec-budget", {} } }) }
        end)
    end)
    teardown(helpers.cleanup)

    local function count(msg)
        local n = 0
        for _, r in ipairs(gw:logs()) do if r.msg == msg then n = n + 1 end end
        return n
    end

    it("lets the hook finish and pass when its CPU is under the budget, however long the worker was stopped", function()
        local w = one_worker(gw)
        local ws = assert(helpers.ws_connect(gw.port, { path = "/budget/1.0/stopped" }))
        -- half the budget of CPU; the worker stopped for longer than the
        -- whole budget while it works (the hook says how long it took: a
        -- try in which the stop came too late to fall inside it is done again)
        local cpu, wall
        for try = 1, 3 do
            local marks = count("spec-budget working")
            assert(ws:send_text("work:500"))
            helpers.wait_until(function()
                return count("spec-budget working") > marks
            end, 10, "the hook at work")
            helpers.kill(w, "STOP")
            helpers.sleep(1.5)
            helpers.kill(w, "CONT")
            local reply = helpers.recv_payload(ws)
            cpu, wall = reply:match("^worked (%S+) (%S+)$")
            cpu, wall = tonumber(cpu), tonumber(wall)
            assert(cpu and wall, "unexpected reply " .. tostring(reply) .. " at try " .. try)
            if wall > 1.2 then break end
        end
        assert.is_true(wall > 1.2, "the worker was never stopped inside the hook")
        assert.is_true(cpu < 1.0)
        -- the connection is open and served; no policy failure was logged
        assert.equal("after", helpers.ask(ws, "after"))
        ws:close()
        assert.equal(0, count("policy failed"))
    end)
end)
