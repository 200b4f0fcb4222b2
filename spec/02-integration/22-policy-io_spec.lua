-- Policies waiting on I/O (weir.http.request, docs/policies.md): the hook
-- waits, the worker serves every other connection meanwhile, the waiting
-- connection's later messages are held in order, and HTTP failures come back
-- to the policy as nil, err.
--
-- The HTTP server is spec/support/slow_http.py: /hold/ID answers only when
-- the spec releases ID, so "while the hook waits" is a fact the spec
-- controls, not a delay it hopes is long enough. The test policy is
-- spec/fixtures/policies/spec-http.lua.
local helpers = require "helpers"

describe("policies waiting on HTTP", function()
    local be, srv, gw
    local seq = 0

    setup(function()
        be = helpers.start_backend("echo")
        srv = helpers.start_slow_http()
        gw = helpers.start_weir({
            workers = 1,     -- every connection on the same worker
            policy_paths = { helpers.fixture_policies },
            apis = {
                helpers.policy_api("Io", "/io", be, { { "spec-http", { base = srv:url("") } } }),
            },
        })
    end)
    teardown(helpers.cleanup)

    local function tag()
        seq = seq + 1
        return "c" .. seq
    end

    local function connect(id)
        local ws, res = helpers.ws_connect(gw.port, { path = "/io/1.0/" .. (id or tag()) })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        return ws
    end

    local recv = helpers.recv_payload

    local ask = helpers.ask

    local function held(id)
        helpers.wait_until(function() return srv:seen(id) end, 10, "weir's request for /hold/" .. id)
    end

    local function record(id) return be:record(id) end

    local texts = helpers.texts

    local function worker()
        return helpers.wait_until(function()
            local p = gw:worker_pids()
            return #p == 1 and p[1]
        end, 10, "one worker")
    end

    it("a hook waiting on HTTP does not delay another connection's messages", function()
        local arrived = {}
        local slow, fast = connect(), connect()
        assert(slow:send_text("get:/hold/a1"))
        held("a1")
        -- the slow hook is waiting (its answer is held back): the fast
        -- connection's messages go through now
        arrived[#arrived + 1] = "fast " .. ask(fast, "f1")
        arrived[#arrived + 1] = "fast " .. ask(fast, "f2")
        srv:release("a1")
        arrived[#arrived + 1] = "slow " .. recv(slow)
        assert.same({ "fast f1", "fast f2", "slow 200:held:a1" }, arrived)
        slow:close()
        fast:close()
    end)

    it("keeps the waiting connection's later messages in order behind the waiting one", function()
        local id = tag()
        local ws = connect(id)
        local fast = connect()
        assert(ws:send_text("get:/hold/b1"))
        for _, m in ipairs({ "m1", "m2", "get:/delay/0", "m3" }) do assert(ws:send_text(m)) end
        held("b1")
        -- a round trip on another connection: the worker has run since; still
        -- nothing of this connection reached the backend
        assert.equal("x", ask(fast, "x"))
        assert.same({}, texts(record(id)))
        srv:release("b1")
        local got = {}
        for i = 1, 5 do got[i] = recv(ws) end
        assert.same({ "200:held:b1", "m1", "m2", "200:delayed:0", "m3" }, got)
        assert.same(got, texts(record(id)))
        ws:close()
        fast:close()
    end)

    it("a refused connection comes back to the policy as nil, \"connection refused\"", function()
        local ws = connect()
        local url = string.format("http://127.0.0.1:%d/", helpers.free_port())
        assert.equal("err:connection refused", ask(ws, "url:" .. url))
        assert.equal("open", ask(ws, "open"))
        ws:close()
    end)

    it("a request over its timeout comes back to the policy as nil, \"timeout\"", function()
        local ws = connect()
        assert.equal("err:timeout", ask(ws, "get:/hold/t1@0.3"))
        srv:release("t1")
        assert.equal("open", ask(ws, "open"))
        ws:close()
    end)

    -- (weir stops reading a client while its hook waits, so it notices the
    -- client is gone when the wait ends: the release comes first here)
    it("a client that goes away while its hook waits: the backend gets 1001, the worker goes on", function()
        local pid = worker()
        local id = tag()
        local ws = connect(id)
        assert(ws:send_text("get:/hold/g1"))
        held("g1")
        ws:close()
        srv:release("g1")
        local rec = be:wait_conns(function(conns)
            for _, c in ipairs(conns) do if c.url == "/" .. id and c.closed then return c end end
        end, 10, "the backend connection to close")
        assert.equal(1001, rec.closed.code)
        local other = connect()
        assert.equal("after", ask(other, "after"))
        assert.equal("200:delayed:0", ask(other, "get:/delay/0"))
        assert.equal(pid, worker())
        other:close()
    end)

    describe("a timer that waits", function()
        -- the access record of the connection from WS's local port (asked while open)
        local function access_of(ws)
            local _, port = ws.sock:getsockname()
            return function()
                return gw:wait_log(function(r) return r.msg == "access" and r.client == "127.0.0.1:" .. port end)
            end
        end

        it("twice keeps its connection: it may send after both, and a close cancels its wait", function()
            local ws = connect()
            assert.equal("timer:/delay/0,/delay/0", ask(ws, "timer:/delay/0,/delay/0"))
            assert.equal("timer:200:delayed:0|200:delayed:0", recv(ws))
            -- now the second wait outlives the connection
            assert.equal("timer:/delay/0,/hold/t2", ask(ws, "timer:/delay/0,/hold/t2"))
            held("t2")
            local access = access_of(ws)
            ws:close()
            access()
            srv:release("t2")
            local other = connect()
            assert.equal("after", ask(other, "after"))
            other:close()
            for _, r in ipairs(gw:logs()) do
                assert.is_not.equal("lua runtime error", r.msg, r.error)
            end
        end)

        it("and then fails is logged with its conn and policy", function()
            local ws = connect()
            local access = access_of(ws)
            assert.equal("timerfail:/delay/0", ask(ws, "timerfail:/delay/0"))
            local rec = gw:wait_log(function(r)
                return r.msg == "timer failed" and tostring(r.error):find("raised after its request", 1, true)
            end)
            ws:close()
            assert.equal(access().conn, rec.conn)
            assert.equal("spec-http", rec.policy)
            assert.equal("error", rec.level)
        end)
    end)

    it("on_handshake may wait: the 101 follows its answer, other connections are served meanwhile", function()
        local conn = assert(helpers.tcp(gw.port))
        assert(conn:send(helpers.build_request({
            path = "/io/1.0/" .. tag() .. "?wait=/hold/h1",
            headers = { { "Host", "127.0.0.1" }, { "Upgrade", "websocket" }, { "Connection", "Upgrade" },
                        { "Sec-WebSocket-Key", helpers.ws_key() }, { "Sec-WebSocket-Version", "13" } },
        })))
        held("h1")
        local fast = connect()
        assert.equal("meanwhile", ask(fast, "meanwhile"))
        srv:release("h1")
        local res = assert(conn:read_response(10))
        assert.equal(101, res.status)
        local ws = setmetatable(conn, getmetatable(fast))
        ws.control, ws.auto_pong = {}, true
        assert.equal("200:held:h1", ask(ws, "hs"))
        ws:close()
        fast:close()
    end)

    it("an on_handshake still waiting at handshake_timeout gets 504 and /problems/gateway-timeout", function()
        local gw2 = helpers.start_weir({
            workers = 1,
            policy_paths = { helpers.fixture_policies },
            limits = { handshake_timeout = "300ms" },
            apis = { helpers.policy_api("Io", "/io", be, { { "spec-http", { base = srv:url("") } } }) },
        })
        local id = tag()
        local ws, res = helpers.ws_connect(gw2.port, { path = "/io/1.0/" .. id .. "?wait=/hold/h504", timeout = 10 })
        assert.is_nil(ws)
        assert.is_table(res, tostring(res))
        assert.equal(504, res.status)
        helpers.check_error(res.body, "/problems/gateway-timeout", 504)
        srv:release("h504")
        for _, c in ipairs(be:connections()) do assert.is_not.equal("/" .. id, c.url:match("^[^?]*")) end
        gw2:stop()
    end)
end)
