-- Reload (SIGHUP, weir -s reload; docs/policies.md "Reloading"): open
-- connections take the new chains from their next message without being
-- closed; a configuration with an error changes nothing and says where the
-- error is; reloads under traffic lose nothing; a removed API's connections
-- are closed 1012. The test policies are spec-tag.lua ("TAG:payload") and
-- spec-verdicts.lua in spec/fixtures/policies; the many-connection client
-- is spec/support/many_ws.js.
local helpers = require "helpers"

local REFUSED = "reload refused: the configuration has errors, nothing changed"

local function count_logs(gw, msg)
    local n = 0
    for _, r in ipairs(gw:logs()) do if r.msg == msg then n = n + 1 end end
    return n
end

-- Wait for the Nth record MSG; returns it.
local function wait_nth(gw, msg, n)
    return helpers.wait_until(function()
        local k = 0
        for _, r in ipairs(gw:logs()) do
            if r.msg == msg then
                k = k + 1
                if k == n then return r end
            end
        end
    end, 20, "log record #" .. n .. " " .. msg)
end

-- SIGHUP the master and wait until each of its WORKERS logged "worker
-- reloaded"; returns those records.
local function reload(gw, workers)
    local before = count_logs(gw, "worker reloaded")
    helpers.kill(gw.pid, "HUP")
    return helpers.wait_until(function()
        local recs = {}
        for _, r in ipairs(gw:logs()) do
            if r.msg == "worker reloaded" then recs[#recs + 1] = r end
        end
        if #recs >= before + workers then return { unpack(recs, before + 1) } end
    end, 20, workers .. " worker(s) reloaded")
end

local function connect(gw, path)
    local ws, res = helpers.ws_connect(gw.port, { path = path })
    assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
    return ws
end

local ask = helpers.ask

local function tag_api(name, context, be, tag)
    return helpers.policy_api(name, context, be, { { "spec-tag", { tag = tag } } })
end

describe("reload", function()
    teardown(helpers.cleanup)

    it("applies a changed policy configuration to 1,000 open connections without closing any", function()
        local N = 1000
        local be = helpers.start_backend("echo")
        local gw = helpers.start_weir({
            workers = 2,
            policy_paths = { helpers.fixture_policies },
            apis = { tag_api("Tagged", "/tagged", be, "gen1") },
        })
        local many = helpers.start_many_ws({ mode = "hold", url = gw:url("/tagged"), count = N })
        local opened = many:wait_event("open", 1, 60)
        assert.same({ open = N, failed = 0, errors = {} }, { open = opened.open, failed = opened.failed,
                                                              errors = opened.errors })

        many:signal("USR1")
        local r1 = many:wait_event("round", 1, 60)
        for i = 1, N do assert.equal("gen1:m" .. i, r1.replies[i]) end

        local workers = gw:worker_pids()
        gw:rewrite(function(c) c.apis[1].versions[1].policies[1][2].tag = "gen2" end)
        local recs = reload(gw, 2)
        assert.equal(N, recs[1].connections + recs[2].connections)
        assert.same(workers, gw:worker_pids())       -- the same processes: nothing restarted

        many:signal("USR1")
        local r2 = many:wait_event("round", 2, 60)
        for i = 1, N do assert.equal("gen2:m" .. i, r2.replies[i]) end

        -- the backend's side of each connection is the one it had from the start
        local conns = be:connections()
        assert.equal(N, #conns)
        for _, c in ipairs(conns) do
            assert.is_nil(c.closed, c.url .. " was closed at the backend")
            assert.equal(2, c.messages)
        end

        many:signal("USR2")
        local final = many:wait_event("final", 1, 30)
        assert.same({}, final.closed)     -- no client connection received a close
        assert.same({}, final.extra)
        many:wait_exit()
    end)

    describe("of policy files", function()
        local be, gw, dir, file

        local GOOD = helpers.read_file(helpers.fixture_policies .. "/spec-tag.lua")
        local EDITED = GOOD:gsub('return conf%.tag %.%. ":" %.%. frame%.payload',
                                 'return "edited-" .. conf.tag .. ":" .. frame.payload')
        -- line 5 does not parse
        local BROKEN = GOOD:gsub("^(.-\n.-\n.-\n.-\n)", "%1local = 1\n")

        setup(function()
            assert(EDITED ~= GOOD and BROKEN ~= GOOD)
            be = helpers.start_backend("echo")
            dir = helpers.tmpdir() .. "/policies"
            assert(os.execute("mkdir -p " .. helpers.shell_quote(dir)))
            file = dir .. "/spec-tag.lua"
            helpers.write_file(file, GOOD)
            gw = helpers.start_weir({
                workers = 1,
                policy_paths = { dir, helpers.fixture_policies },
                apis = {
                    tag_api("Tagged", "/tagged", be, "a"),
                    helpers.policy_api("Counted", "/counted", be, { { "spec-verdicts", {} } }),
                    helpers.policy_api("Grows", "/grows", be, { { "spec-handshake-only", {} } }),
                },
            })
        end)

        it("an edited policy file takes effect on open connections at `weir -s reload`", function()
            local ws = connect(gw, "/tagged")
            assert.equal("a:x", ask(ws, "x"))
            helpers.write_file(file, EDITED)
            local before = count_logs(gw, "worker reloaded")
            local code, out, err = helpers.run({ helpers.bin, "-s", "reload", "-c", gw.conf_path })
            assert.equal(0, code, out .. err)
            helpers.wait_until(function() return count_logs(gw, "worker reloaded") > before end, 20, "the reload")
            assert.equal("edited-a:y", ask(ws, "y"))
            helpers.write_file(file, GOOD)
            reload(gw, 1)
            assert.equal("a:z", ask(ws, "z"))
            ws:close()
        end)

        it("a syntax error in a policy file: SIGHUP changes nothing and logs the file and line", function()
            local ws = connect(gw, "/tagged")
            assert.equal("a:1", ask(ws, "1"))
            helpers.write_file(file, BROKEN)
            gw:rewrite(function(c) c.apis[1].versions[1].policies[1][2].tag = "b" end)
            local reloaded = count_logs(gw, "worker reloaded")
            local refused = count_logs(gw, REFUSED)
            local errors_before = count_logs(gw, "configuration error")
            helpers.kill(gw.pid, "HUP")
            wait_nth(gw, REFUSED, refused + 1)
            local rec = wait_nth(gw, "configuration error", errors_before + 1)
            assert.equal("error", rec.level)
            assert.matches(file .. ":5:", rec.error, 1, true)
            -- the old chain goes on, for open connections and new ones
            assert.equal("a:2", ask(ws, "2"))
            local fresh = connect(gw, "/tagged")
            assert.equal("a:3", ask(fresh, "3"))
            assert.equal(reloaded, count_logs(gw, "worker reloaded"))
            helpers.write_file(file, GOOD)
            reload(gw, 1)
            assert.equal("b:4", ask(ws, "4"))
            gw:rewrite(function(c) c.apis[1].versions[1].policies[1][2].tag = "a" end)
            reload(gw, 1)
            ws:close()
            fresh:close()
        end)

        it("a syntax error in a policy file: `weir -s reload` exits 1 with file:line on stderr and signals nothing", function()
            local ws = connect(gw, "/tagged")
            helpers.write_file(file, BROKEN)
            local hups = count_logs(gw, "reloading") + count_logs(gw, REFUSED)
            local code, _, err = helpers.run({ helpers.bin, "-s", "reload", "-c", gw.conf_path })
            assert.equal(1, code)
            assert.matches(file .. ":5:", err, 1, true)
            helpers.write_file(file, GOOD)
            assert.equal("a:still", ask(ws, "still"))
            -- one SIGHUP of ours now: had weir -s sent one, its record would come first
            reload(gw, 1)
            assert.equal(hups + 1, count_logs(gw, "reloading") + count_logs(gw, REFUSED))
            ws:close()
        end)

        it("ctx.vars survives a reload", function()
            local ws = connect(gw, "/counted")
            assert.equal("count:1", ask(ws, "count"))
            assert.equal("count:2", ask(ws, "count"))
            reload(gw, 1)
            assert.equal("count:3", ask(ws, "count"))
            ws:close()
        end)

        it("a chain that gains a frame hook applies it to open connections from their next message", function()
            local ws = connect(gw, "/grows")
            assert.equal("plain", ask(ws, "plain"))
            gw:rewrite(function(c)
                c.apis[3].versions[1].policies = { { "spec-handshake-only", {} }, { "spec-tag", { tag = "grown" } } }
            end)
            reload(gw, 1)
            assert.equal("grown:next", ask(ws, "next"))
            ws:close()
        end)
    end)

    it("loses no message through 20 reloads in a row under continuous traffic", function()
        local RELOADS = 20
        local be = helpers.start_backend("echo")
        local gw = helpers.start_weir({
            workers = 1,
            policy_paths = { helpers.fixture_policies },
            apis = { tag_api("Stream", "/stream", be, "r0") },
        })
        local window = 8
        local many = helpers.start_many_ws({ mode = "stream", url = gw:url("/stream"), window = window })
        many:wait_event("streaming", 1, 30)
        for i = 1, RELOADS do
            gw:rewrite(function(c) c.apis[1].versions[1].policies[1][2].tag = "r" .. i end)
            reload(gw, 1)
        end
        many:signal("USR1")
        local res = many:wait_event("stream", 1, 30)
        many:wait_exit()
        assert.is_nil(res.mismatch)
        assert.is_nil(res.closed)
        assert.equal(res.sent, res.received)
        assert.is_true(res.received > 50)
        -- tags only ever move forward, one configuration generation after another
        local last = -1
        for _, run in ipairs(res.runs) do
            local g = tonumber(run[1]:match("^r(%d+)$"))
            assert.is_number(g, "unexpected tag " .. tostring(run[1]))
            assert.is_true(g > last, "tag r" .. g .. " after r" .. last)
            last = g
        end
        -- the last messages were sent after the last reload
        local tail = res.runs[#res.runs]
        assert.equal("r" .. RELOADS, tail[1])
        assert.equal(res.received, tail[3])
        assert.is_true(tail[3] - tail[2] + 1 >= 10)
    end)

    it("an API removed by a reload: its connections get /problems/api-removed and 1012; others stay", function()
        local be = helpers.start_backend("echo")
        local gw = helpers.start_weir({
            workers = 1,
            policy_paths = { helpers.fixture_policies },
            apis = {
                helpers.api("Keep", "/keep", be),
                tag_api("Gone", "/gone", be, "g"),
                helpers.api("Plain", "/plain", be),
            },
        })
        local keep = connect(gw, "/keep/1.0/k1")
        local gone = { connect(gw, "/gone/1.0/g1"), connect(gw, "/plain/1.0/p1") }
        assert.equal("k", ask(keep, "k"))
        assert.equal("g:x", ask(gone[1], "x"))
        assert.equal("y", ask(gone[2], "y"))
        gw:rewrite(function(c) c.apis = { c.apis[1] } end)
        reload(gw, 1)
        for _, ws in ipairs(gone) do
            local j, close = helpers.expect_error_close(ws, "/problems/api-removed", 1012)
            assert.equal("API removed", close.reason)
            assert.is_string(j.error.message)
        end
        local recs = be:wait_conns(function(conns)
            local out = {}
            for _, c in ipairs(conns) do
                if c.url == "/g1" or c.url == "/p1" then
                    if not c.closed then return false end
                    out[#out + 1] = c
                end
            end
            return #out == 2 and out
        end, 10, "the removed API's backend connections to close")
        for _, c in ipairs(recs) do assert.equal(1001, c.closed.code) end
        assert.equal("still", ask(keep, "still"))
        local res = helpers.http_request(gw.port, { path = "/gone/1.0", headers = {
            Upgrade = "websocket", Connection = "Upgrade", ["Sec-WebSocket-Key"] = helpers.ws_key(),
            ["Sec-WebSocket-Version"] = "13" } })
        assert.equal(404, res.status)
        keep:close()
    end)
end)
