-- Policies through a real gateway (docs/policies.md): what each verdict does
-- on the wire, the ctx a policy sees, ctx methods, on_close, whole messages
-- for frame hooks, a policy that fails, fail_open, and the sandbox.
-- The test policies are in spec/fixtures/policies (spec-verdicts.lua says
-- which client message makes it do what).
local helpers = require "helpers"
local cjson = require "cjson"

local ERR = "/problems/internal-error"

describe("policies", function()
    local be, frames, gw
    local seq = 0

    setup(function()
        be = helpers.start_backend("echo")
        frames = helpers.start_backend("frames")
        gw = helpers.start_weir({
            workers = 1,
            policy_paths = { helpers.fixture_policies },
            apis = {
                helpers.policy_api("Verdicts", "/verdicts", be, { { "spec-verdicts", { tag = "t1" } } }),
                helpers.policy_api("Open", "/open", be, { { "spec-verdicts", {}, fail_open = true } }),
                helpers.policy_api("HsOnly", "/hsonly", frames, { { "spec-handshake-only", {} } }),
                helpers.policy_api("Whole", "/whole", frames, { { "spec-verdicts", {} } }),
                helpers.policy_api("Escape", "/escape", be, { { "spec-escape", {} } }),
            },
        })
    end)
    teardown(helpers.cleanup)

    -- A unique last path segment per connection: the backend's record of it
    -- has url "/<tag>".
    local function tag()
        seq = seq + 1
        return "c" .. seq
    end

    local function connect(path, opts)
        opts = opts or {}
        opts.path = path
        local ws, res = helpers.ws_connect(gw.port, opts)
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        return ws
    end

    local recv = helpers.recv_payload

    local ask = helpers.ask

    local function record(backend, id, pred, what)
        return backend:wait_conns(function(conns)
            for _, c in ipairs(conns) do
                if c.url == "/" .. id and (not pred or pred(c)) then return c end
            end
        end, 10, what or ("the backend record of " .. id))
    end

    local function texts(rec)
        local out = {}
        for _, e in ipairs(rec.events) do
            if e.type == "message" then out[#out + 1] = e.text or e.b64 end
        end
        return out
    end

    local function worker()
        local w = helpers.wait_until(function()
            local p = gw:worker_pids()
            return #p == 1 and p
        end, 10, "one worker")
        return w[1]
    end

    -- An upgrade the policy refuses: returns the HTTP response.
    local function refused(path)
        local ws, res = helpers.ws_connect(gw.port, { path = path })
        assert.is_nil(ws, "the upgrade was accepted")
        assert.is_table(res, "no HTTP answer: " .. tostring(res))
        return res
    end

    describe("on_handshake", function()
        it("weir.error with a status refuses the upgrade with that status and the error JSON", function()
            local id = tag()
            local res = refused("/verdicts/1.0/" .. id .. "?reject=401")
            assert.equal(401, res.status)
            assert.equal("application/json", res.headers["content-type"])
            local j = helpers.check_error(res.body, "/problems/spec-rejected", 401)
            assert.equal("rejected by spec-verdicts", j.error.message)
        end)

        it("weir.error without a status refuses the upgrade with 403", function()
            local res = refused("/verdicts/1.0/" .. tag() .. "?reject=default")
            assert.equal(403, res.status)
            helpers.check_error(res.body, "/problems/spec-rejected", 403)
        end)

        it("a refused upgrade never reaches the backend", function()
            local id = tag()
            refused("/verdicts/1.0/" .. id .. "?reject=451")
            -- a later connection's record shows the backend has caught up
            local later = tag()
            local ws = connect("/verdicts/1.0/" .. later)
            record(be, later)
            for _, c in ipairs(be:connections()) do
                assert.is_not.equal("/" .. id .. "?reject=451", c.url)
            end
            ws:close()
        end)

        it("ctx:send from on_handshake arrives as the first message after the 101", function()
            local ws = connect("/verdicts/1.0/" .. tag() .. "?greet=hello")
            assert(ws:send_text("after"))
            assert.equal("greeting:hello", recv(ws))
            assert.equal("after", recv(ws))
            ws:close()
        end)

        it("a policy that raises in on_handshake gets 500 and /problems/internal-error", function()
            local id = tag()
            local res = refused("/verdicts/1.0/" .. id .. "?raise=1")
            assert.equal(500, res.status)
            helpers.check_error(res.body, ERR, 500)
            local rec = gw:wait_log(function(r)
                return r.msg == "policy failed" and tostring(r.error):find("raised in on_handshake", 1, true)
            end)
            assert.equal("spec-verdicts", rec.policy)
            assert.equal("on_handshake", rec.hook)
            assert.matches("^w0%-%d+$", rec.conn)
        end)
        it("with fail_open, a policy that raises in on_handshake lets the handshake go on", function()
            local ws = connect("/open/1.0/" .. tag() .. "?raise=1")
            assert.equal("hi", ask(ws, "hi"))
            ws:close()
            local rec = gw:wait_log(function(r)
                return r.msg == "policy failed (fail_open: passing)"
                       and tostring(r.error):find("raised in on_handshake", 1, true)
            end)
            assert.equal("spec-verdicts", rec.policy)
            assert.equal("on_handshake", rec.hook)
            assert.matches("^w0%-%d+$", rec.conn)
        end)

        it("ctx:close in on_handshake refuses the upgrade with 403 and /problems/forbidden", function()
            local res = refused("/verdicts/1.0/" .. tag() .. "?close=4000")
            assert.equal(403, res.status)
            helpers.check_error(res.body, "/problems/forbidden", 403)
        end)

        it("ctx:close with a weir.error in on_handshake answers 403 with that error's JSON (error.code 403)", function()
            local res = refused("/verdicts/1.0/" .. tag() .. "?closeerr=4000")
            assert.equal(403, res.status)
            local j = helpers.check_error(res.body, "/problems/spec-closed", 403)
            assert.equal("closed by spec-verdicts", j.error.message)
        end)
    end)

    describe("frame verdicts", function()
        it("a returned string replaces the message: the backend gets the new payload", function()
            local id = tag()
            local ws = connect("/verdicts/1.0/" .. id)
            assert.equal("changed", ask(ws, "replace:changed"))
            assert.same({ "changed" }, texts(record(be, id)))
            ws:close()
        end)

        it("weir.DROP drops the message: neither the backend nor the client sees it", function()
            local id = tag()
            local ws = connect("/verdicts/1.0/" .. id)
            assert(ws:send_text("drop"))
            assert.equal("after", ask(ws, "after"))
            assert.same({ "after" }, texts(record(be, id)))
            ws:close()
        end)

        it("weir.reply answers the client as text and the backend never gets the message", function()
            local id = tag()
            local ws = connect("/verdicts/1.0/" .. id)
            local p, m = ask(ws, "reply:pong")
            assert.equal("pong", p)
            assert.equal(1, m.opcode)
            assert.equal("next", ask(ws, "next"))
            assert.same({ "next" }, texts(record(be, id)))
            ws:close()
        end)

        it("weir.reply with weir.BINARY answers with a binary message", function()
            local ws = connect("/verdicts/1.0/" .. tag())
            local p, m = ask(ws, "replyb:bin")
            assert.equal("bin", p)
            assert.equal(2, m.opcode)
            ws:close()
        end)

        it("weir.error without a code sends the error JSON, drops the message and keeps the connection", function()
            local id = tag()
            local ws = connect("/verdicts/1.0/" .. id)
            local j = helpers.check_error(ask(ws, "error"), "/problems/spec-error", 1008)
            assert.equal("refused by spec-verdicts", j.error.message)
            assert.equal("still open", ask(ws, "still open"))
            assert.same({ "still open" }, texts(record(be, id)))
            ws:close()
        end)

        it("weir.error with a code sends the error JSON, then closes with that code; the backend gets 1001", function()
            local id = tag()
            local ws = connect("/verdicts/1.0/" .. id)
            assert(ws:send_text("error:4001"))
            local j, close = helpers.expect_error_close(ws, "/problems/spec-error", 4001)
            assert.equal("refused by spec-verdicts", j.error.message)
            assert.equal("refused by spec-verdicts", close.reason)
            local rec = record(be, id, function(c) return c.closed end)
            assert.equal(1001, rec.closed.code)
            assert.same({}, texts(rec))
        end)

        it("ctx:close closes with its code and reason and no JSON; the backend gets 1001", function()
            local id = tag()
            local ws = connect("/verdicts/1.0/" .. id)
            assert(ws:send_text("close:4002:bye now"))
            local close = assert(ws:recv_close(10))
            assert.same({}, ws.skipped)
            assert.equal(4002, close.code)
            assert.equal("bye now", close.reason)
            assert.equal(1001, record(be, id, function(c) return c.closed end).closed.code)
        end)

        it("ctx:close with a weir.error sends its JSON (error.code = the close code) before the close", function()
            local ws = connect("/verdicts/1.0/" .. tag())
            assert(ws:send_text("closeerr:4003"))
            local j, close = helpers.expect_error_close(ws, "/problems/spec-closed", 4003)
            assert.equal("closed by spec-verdicts", j.error.message)
            assert.equal("closed by spec", close.reason)
        end)
    end)

    describe("ctx", function()
        it("ctx.request and ctx.api are what the client sent and the route chose", function()
            local ws = connect("/verdicts/1.0/" .. tag() .. "/room?a=1&b=two%20words&a=2", {
                protocols = { "chat", "json" },
                headers = { { "X-Spec", "one" }, { "X-Spec", "two" }, { "User-Agent", "spec/1" } },
            })
            local _, port = ws.sock:getsockname()
            local who = helpers.json(ask(ws, "whoami"))
            assert.same({ name = "Verdicts", version = "1.0", context = "/verdicts" }, who.api)
            local r = who.request
            assert.equal("GET", r.method)
            assert.matches("^/verdicts/1%.0/c%d+/room$", r.path)
            assert.equal("a=1&b=two%20words&a=2", r.query_string)
            assert.same({ a = "1", b = "two words" }, r.query)
            assert.equal("one, two", r.headers["x-spec"])
            assert.equal("spec/1", r.headers["user-agent"])
            assert.equal("websocket", r.headers.upgrade)
            assert.equal("127.0.0.1", r.client_ip)
            assert.equal(tonumber(port), r.client_port)
            assert.equal("ws", r.scheme)
            assert.same({ "chat", "json" }, r.subprotocols)
            assert.equal("spec-verdicts", who.policy)
            assert.is_false(who.consumer)
            -- docs/logging.md: "w", the worker's index, "-", its count of connections
            assert.matches("^w0%-%d+$", who.id)
            ws:close()
        end)

        it("ctx.request.path is the path without its dot segments, as routed and relayed", function()
            local id = tag()
            local ws = connect("/verdicts/1.0/" .. id .. "/x/%2e%2e/./room?a=../b")
            local r = helpers.json(ask(ws, "whoami")).request
            assert.equal("/verdicts/1.0/" .. id .. "/room", r.path)
            assert.equal("a=../b", r.query_string)
            ws:close()
        end)

        it("conf is the entry's configuration, with the schema's defaults filled in", function()
            local a = connect("/verdicts/1.0/" .. tag())
            local b = connect("/whole/1.0/" .. tag())
            assert.equal("t1", ask(a, "tag"))
            assert.equal("v", ask(b, "tag"))
            a:close()
            b:close()
        end)

        it("ctx.vars persists across the messages of one connection, and is per connection", function()
            local a = connect("/verdicts/1.0/" .. tag())
            local b = connect("/verdicts/1.0/" .. tag())
            assert.equal("count:1", ask(a, "count"))
            assert.equal("count:2", ask(a, "count"))
            assert.equal("count:1", ask(b, "count"))
            assert.equal("count:3", ask(a, "count"))
            a:close()
            b:close()
        end)

        it("ctx:timer fires after the hook and its ctx:send reaches the client", function()
            local ws = connect("/verdicts/1.0/" .. tag())
            assert.equal("armed:x1", ask(ws, "timer:x1"))
            assert.equal("timer:x1", recv(ws))
            ws:close()
        end)

        it("ctx:timer of a connection that closed does not run", function()
            local a = connect("/verdicts/1.0/" .. tag())
            local _, port = a.sock:getsockname()
            assert.equal("armed:gone", ask(a, "timer:gone@0.3"))
            a:close_handshake(1000)
            a:close()
            gw:wait_log(function(r) return r.msg == "access" and r.client == "127.0.0.1:" .. port end)
            -- armed later with the same delay: once it has fired, the first was due
            local b = connect("/verdicts/1.0/" .. tag())
            assert.equal("armed:later", ask(b, "timer:later@0.3"))
            assert.equal("timer:later", recv(b))
            b:close()
            local whats = {}
            for _, r in ipairs(gw:logs()) do
                if r.msg == "spec-verdicts timer" then whats[r.what] = true end
            end
            assert.is_true(whats.later)
            assert.is_nil(whats.gone)
        end)

        it("on_close runs when the connection is gone; its ctx:log has the conn id and the policy name", function()
            local ws = connect("/verdicts/1.0/" .. tag())
            local id = helpers.json(ask(ws, "whoami")).id
            local close = ws:close_handshake(4005, "done")
            assert.equal(4005, close.code)
            ws:close()
            local rec = gw:wait_log(function(r)
                return r.msg == "spec-verdicts on_close" and r.conn == id
            end)
            assert.equal("spec-verdicts", rec.policy)
            assert.equal("info", rec.level)
            assert.equal(4005, rec.code)
            assert.equal("client", rec.side)
            assert.equal(1, rec.frames_in)
            -- the same id as the connection's access record
            local access = gw:wait_log(function(r) return r.msg == "access" and r.conn == id end)
            assert.equal(101, access.status)
        end)
    end)

    describe("messages", function()
        -- data frames the frames backend recorded: { opcode, fin, text }
        local function data_frames(id)
            local rec = record(frames, id, function(c)
                for _, e in ipairs(c.events) do
                    if e.type == "frame" and e.opcode <= 2 and e.fin then return true end
                end
            end, "a final data frame at the backend")
            local out = {}
            for _, e in ipairs(rec.events) do
                if e.type == "frame" and e.opcode <= 2 then out[#out + 1] = { e.opcode, e.fin, e.text } end
            end
            return out
        end

        local function send_fragments(ws, parts)
            for i, p in ipairs(parts) do
                local fin = i == #parts
                if i == 1 then assert(ws:send_text(p, fin)) else assert(ws:send_cont(p, fin)) end
            end
        end

        it("a chain without frame hooks relays a fragmented message as the same fragments", function()
            local id = tag()
            local ws = connect("/hsonly/1.0/" .. id)
            send_fragments(ws, { "ab", "cd", "ef" })
            assert.same({ { 1, false, "ab" }, { 0, false, "cd" }, { 0, true, "ef" } }, data_frames(id))
            ws:close()
        end)

        it("a chain with on_frame_in forwards a fragmented message as one frame", function()
            local id = tag()
            local ws = connect("/whole/1.0/" .. id)
            send_fragments(ws, { "ab", "cd", "ef" })
            assert.same({ { 1, true, "abcdef" } }, data_frames(id))
            ws:close()
        end)

        it("on_frame_in is given the fragmented message whole", function()
            local ws = connect("/whole/1.0/" .. tag())
            send_fragments(ws, { "fr", "a", "me" })
            assert.same({ opcode = 1, length = 5, payload = "frame" }, helpers.json(recv(ws)))
            ws:close()
        end)
    end)

    describe("a policy that fails", function()
        it("closes only its connection: 1011 and /problems/internal-error, backend 1001; the worker and others go on", function()
            local pid = worker()
            local other = connect("/verdicts/1.0/" .. tag())
            assert.equal("before", ask(other, "before"))
            local id = tag()
            local ws = connect("/verdicts/1.0/" .. id)
            local conn = helpers.json(ask(ws, "whoami")).id
            assert(ws:send_text("raise"))
            local _, close = helpers.expect_error_close(ws, ERR, 1011)
            assert.equal("internal error", close.reason)
            assert.equal(1001, record(be, id, function(c) return c.closed end).closed.code)
            assert.equal("after", ask(other, "after"))
            assert.equal(pid, worker())
            local rec = gw:wait_log(function(r) return r.msg == "policy failed" and r.conn == conn end)
            assert.equal("error", rec.level)
            assert.equal("spec-verdicts", rec.policy)
            assert.equal("on_frame_in", rec.hook)
            assert.matches("raised on request", rec.error, 1, true)
            other:close()
        end)

        it("a hook that returns something that is not a verdict fails the same way", function()
            local ws = connect("/verdicts/1.0/" .. tag())
            local conn = helpers.json(ask(ws, "whoami")).id
            assert(ws:send_text("bad-return"))
            helpers.expect_error_close(ws, ERR, 1011)
            local rec = gw:wait_log(function(r) return r.msg == "policy failed" and r.conn == conn end)
            assert.equal("spec-verdicts", rec.policy)
        end)

        it("with fail_open the message passes through, the connection stays, and the failure is logged", function()
            local id = tag()
            local ws = connect("/open/1.0/" .. id)
            assert.equal("raise", ask(ws, "raise"))
            assert.equal("next", ask(ws, "next"))
            assert.same({ "raise", "next" }, texts(record(be, id)))
            local rec = gw:wait_log(function(r)
                return r.msg == "policy failed (fail_open: passing)"
                       and tostring(r.error):find("raised on request", 1, true)
            end)
            assert.equal("spec-verdicts", rec.policy)
            assert.equal("warn", rec.level)
            ws:close()
        end)
    end)

    describe("the sandbox", function()
        it("leaves os.exit, io, ffi, debug, load* and the string metatable out of a policy's reach", function()
            local ws = connect("/escape/1.0/" .. tag())
            local got = helpers.json(ask(ws, "reach"))
            assert.same({
                os_exit = "nil", os_execute = "nil", io = "nil", debug = "nil", ffi = "error",
                jit = "nil", package = "nil", load = "nil", loadstring = "nil", dofile = "nil",
                loadfile = "nil", string_dump = "nil", require_os = "error", require_io = "error",
                string_meta = "nil", os_time = "function",
            }, got)
            ws:close()
        end)

        -- what Lua says when each is tried
        local WHY = {
            ["os.exit"] = "attempt to call field 'exit' (a nil value)",
            io = "attempt to index global 'io' (a nil value)",
            ffi = "module 'ffi' not found",
            debug = "attempt to index global 'debug' (a nil value)",
        }

        for _, what in ipairs({ "os.exit", "io", "ffi", "debug" }) do
            it("a hook that tries " .. what .. " fails: 1011 for its connection, the worker survives", function()
                local pid = worker()
                local other = connect("/escape/1.0/" .. tag())
                local ws = connect("/escape/1.0/" .. tag())
                assert(ws:send_text(what))
                helpers.expect_error_close(ws, ERR, 1011)
                assert.equal("still here", ask(other, "still here"))
                assert.equal(pid, worker())
                gw:wait_log(function(r)
                    return r.msg == "policy failed" and r.policy == "spec-escape"
                        and tostring(r.error):find(WHY[what], 1, true)
                end)
                other:close()
            end)
        end

        local function check_conf(entry)
            local conf = helpers.write_conf({
                policy_paths = { helpers.fixture_policies },
                listen = { { address = "127.0.0.1", port = 9 } },
                apis = { helpers.policy_api("E", "/e", "ws://127.0.0.1:9", { entry }) },
            })
            return helpers.run({ helpers.bin, "-t", "-c", conf })
        end

        it("a policy calling os.exit when its file loads is refused by weir -t, naming the file and line", function()
            local code, out, err = check_conf({ "spec-exit-at-load", {} })
            assert.equal(1, code, "weir -t: " .. out .. err)
            assert.matches("spec-exit-at-load.lua:5:", err, 1, true)
        end)

        for _, what in ipairs({ "os.exit", "io", "ffi", "debug" }) do
            it("a policy whose init tries " .. what .. " is refused by weir -t", function()
                local code, out, err = check_conf({ "spec-escape", { at_init = what } })
                assert.equal(1, code, "weir -t: " .. out .. err)
                assert.matches("policy spec%-escape refused its configuration: [^\n]*spec%-escape%.lua:%d+: "
                               .. (WHY[what]:gsub("%p", "%%%0")), err)
            end)
        end
    end)
end)

describe("policies sharing a worker", function()
    -- spec-meddler tries, once, to change what every policy shares; then
    -- spec-verdicts (another API, same worker) reports what it sees.
    local gw, meddled

    setup(function()
        local be = helpers.start_backend("echo")
        gw = helpers.start_weir({
            workers = 1,
            policy_paths = { helpers.fixture_policies },
            apis = {
                helpers.policy_api("Meddle", "/meddle", be, { { "spec-meddler", {} } }),
                helpers.policy_api("Victim", "/victim", be, { { "spec-verdicts", {} } }),
            },
        })
        local ws = assert(helpers.ws_connect(gw.port, { path = "/meddle" }))
        assert(ws:send_text("meddle"))
        local m = assert(ws:recv_message(10))
        local parts = {}
        for p in (m.payload .. "|"):gmatch("([^|]*)|") do parts[#parts + 1] = p end
        meddled = { string_upper = parts[1], weir_reply = parts[2], weir_rawset = parts[3],
                    cjson_rawset = parts[4], global = parts[5] }
        ws:close()
    end)
    teardown(helpers.cleanup)

    local function victim(text)
        local ws = assert(helpers.ws_connect(gw.port, { path = "/victim" }))
        assert(ws:send_text(text))
        local m, err = ws:recv_message(10)
        ws:close()
        assert(m, "no message: " .. tostring(err))
        return m.payload
    end

    -- what spec-verdicts sees: { upper =, encode =, global = }
    local function seen()
        local upper, encode, global = victim("shared"):match("^(.-)|(.-)|(.*)$")
        return { upper = upper, encode = encode, global = global }
    end

    it("refuses an assignment to a field of the weir module", function()
        assert.matches("read-only", meddled.weir_reply, 1, true)
    end)

    it("a rawset on the weir module does not change another policy's weir.reply", function()
        assert.equal("ok", victim("reply:ok"))
    end)

    it("a rawset on the cjson module does not change another policy's cjson.encode", function()
        assert.equal("[1]", seen().encode)
    end)

    it("a change to the string library does not change another policy's string.upper", function()
        assert.equal("ABC", seen().upper)
    end)

    it("a global set by one policy is not seen by another", function()
        assert.equal("nil", seen().global)
    end)
end)
