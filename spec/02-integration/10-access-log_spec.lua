-- The JSON log (docs/logging.md): every line a JSON object whose members
-- come in one order with one type each, connection ids of the documented
-- form, and one "access" record per connection with its counters, its
-- consumer (never its key) and who closed it.
local helpers = require "helpers"

local KEY = "log-spec-key-0123456789abcdef"

-- The member names of the JSON object LINE, in the order they are written
-- (decoding into a table loses it).
local function member_names(line)
    local names, depth, i, n, want = {}, 0, 1, #line, false
    while i <= n do
        local c = line:sub(i, i)
        if c == '"' then
            local j = i + 1
            while j <= n do
                local d = line:sub(j, j)
                if d == "\\" then j = j + 2 elseif d == '"' then break else j = j + 1 end
            end
            if depth == 1 and want then names[#names + 1] = line:sub(i + 1, j - 1) end
            want = false
            i = j + 1
        else
            if c == "{" or c == "[" then
                depth = depth + 1
                want = depth == 1
            elseif c == "}" or c == "]" then
                depth = depth - 1
            elseif c == "," and depth == 1 then
                want = true
            end
            i = i + 1
        end
    end
    return names
end

-- The type each member has in every record that has it (docs/logging.md).
local TYPES = {
    ts = "string", level = "string", pid = "number", msg = "string", conn = "string", policy = "string",
    worker = "number", worker_pid = "number", workers = "number", connections = "number", signal = "number",
    port = "number", tls = "boolean", status = "number", code = "number", side = "string", why = "string",
    error = "string", hook = "string", client = "string", duration_ms = "number", frames_in = "number",
    bytes_in = "number", frames_out = "number", bytes_out = "number", close_code = "number",
    close_side = "string", complete = "boolean",
}

-- The access record's members, in order (docs/logging.md).
local ACCESS = { "ts", "level", "pid", "msg", "conn", "client", "api", "version", "application", "subscriber",
                 "key_type", "tier", "status", "duration_ms", "frames_in", "bytes_in", "frames_out", "bytes_out",
                 "close_code", "close_side" }

describe("logging", function()
    local be, gw

    setup(function()
        be = helpers.start_backend("echo")
        local keys = helpers.write_file(helpers.tmpdir() .. "/log-keys.txt",
            "sha256:" .. helpers.sha256(KEY) .. "  application=ShopApp subscriber=alice tier=Gold\n")
        gw = helpers.start_weir({
            log = { level = "info" },
            limits = { max_message_size = "4k" },
            policy_paths = { helpers.fixture_policies },
            apis = {
                { name = "Echo", context = "/echo", versions = {
                    { version = "1.0", default = true, endpoints = { production = be.url } },
                    { version = "2.0", endpoints = { production = be.url } },
                } },
                helpers.api("Refused", "/refused", helpers.start_backend("refuse")),
                helpers.policy_api("Keyed", "/keyed", be, {
                    { "key-auth", { keys_file = keys } }, { "spec-verdicts", {} },
                }),
            },
        })
    end)
    teardown(helpers.cleanup)

    local function access_for(pred)
        return gw:wait_log(function(r) return r.msg == "access" and pred(r) end, 10)
    end

    -- The client address of WS (ask while it is open), and its access record.
    local function client_of(ws)
        local _, port = ws.sock:getsockname()
        return "127.0.0.1:" .. port
    end
    local function access_of(client)
        return access_for(function(r) return r.client == client end)
    end

    -- The raw line of the access record of connection CONN.
    local function access_line(conn)
        for line in (helpers.read_file(gw.log_path) or ""):gmatch("[^\n]+") do
            if line:find('"msg":"access"', 1, true) and line:find('"conn":"' .. conn .. '"', 1, true) then
                return line
            end
        end
    end

    local function keyed(path)
        local ws, res = helpers.ws_connect(gw.port, { path = path or "/keyed", headers = { apikey = KEY } })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        return ws
    end

    it("writes the access record of a short session with its counters", function()
        local ws = assert(helpers.ws_connect(gw.port, { path = "/echo/2.0" }))
        local _, port = ws.sock:getsockname()
        for i = 1, 3 do
            ws:send_text("hello")                    -- 3 frames of 5 payload bytes each way
            assert.equal("hello", assert(ws:recv_message()).payload)
        end
        local close = assert(ws:close_handshake(1000, "done"))
        assert.equal(1000, close.code)
        ws:wait_closed(5)
        ws:close()

        local r = access_for(function(r) return r.version == "2.0" end)
        assert.equal("Echo", r.api)
        assert.equal("2.0", r.version)
        assert.equal("127.0.0.1:" .. port, r.client)
        assert.equal(101, r.status)
        assert.matches("^w0%-%d+$", r.conn)
        assert.is_number(r.duration_ms)
        assert.is_true(r.duration_ms >= 0)
        -- docs/logging.md: data frames and payload bytes; _in from the
        -- client, _out from the backend (3 echoes of 5 bytes)
        assert.equal(3, r.frames_in)
        assert.equal(15, r.bytes_in)
        assert.equal(3, r.frames_out)
        assert.equal(15, r.bytes_out)
        assert.equal(1000, r.close_code)
        assert.equal("client", r.close_side)
    end)

    it("names connections w<worker>-<n>, counting up from 1 in each worker", function()
        local a = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0" }))
        local b = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0" }))
        local ca, cb = client_of(a), client_of(b)
        a:close()
        b:close()
        local na = tonumber(access_of(ca).conn:match("^w0%-(%d+)$"))
        local nb = tonumber(access_of(cb).conn:match("^w0%-(%d+)$"))
        assert.is_true(na >= 1)
        assert.equal(na + 1, nb)
    end)

    it("counts a fragmented message's frames and all their payload bytes", function()
        local ws = assert(helpers.ws_connect(gw.port, { path = "/echo/2.0/frag" }))
        ws:send_text("abc", false)
        ws:send_cont("defg", false)
        ws:send_cont("hi", true)
        local m = assert(ws:recv_message())
        assert.equal("abcdefghi", m.payload)
        ws:close_handshake(1000)
        ws:wait_closed(5)
        ws:close()
        local r = access_for(function(r) return r.version == "2.0" and r.bytes_in == 9 end)
        assert.equal(3, r.frames_in)
        assert.equal(9, r.bytes_out)
    end)

    it("names the backend as the closing side when it closed first", function()
        local ws = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0" }))
        ws:send_text('{"__ctl":"close","code":4000,"reason":"backend closes"}')
        local close = assert(ws:recv_close(5))
        assert.equal(4000, close.code)
        ws:send_close(4000, "backend closes")
        ws:wait_closed(5)
        ws:close()
        local r = access_for(function(r) return r.close_code == 4000 end)
        assert.equal("backend", r.close_side)
        assert.equal("1.0", r.version)
    end)

    it("logs the close code weir chose for a failed backend", function()
        local ws = assert(helpers.ws_connect(gw.port, { path = "/refused" }))
        assert(ws:recv_message(5))
        local close = assert(ws:recv_close(5))
        assert.equal(1014, close.code)
        ws:send_close(1014)
        ws:wait_closed(5)
        ws:close()
        local r = access_for(function(r) return r.api == "Refused" end)
        assert.equal(1014, r.close_code)
        assert.equal("weir", r.close_side)
        assert.equal(101, r.status)
    end)

    describe("names weir as the closing side when weir closed", function()
        -- Send TEXT on WS; weir sends the error JSON of PROBLEM (unless nil)
        -- and closes with CODE, which the client answers. Returns the access
        -- record, which must say weir closed with CODE.
        local function weir_closes(ws, text, problem, code)
            local who = client_of(ws)
            ws:send_text(text)
            if problem then
                helpers.expect_error_close(ws, problem, code)
            else
                assert.equal(code, assert(ws:recv_close(5)).code)
            end
            ws:send_close(code)
            ws:close()
            local r = access_of(who)
            assert.equal(code, r.close_code)
            assert.equal("weir", r.close_side)
            return r
        end

        it("a message over max_message_size: 1009, though the client broke the limit", function()
            local ws = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0" }))
            local r = weir_closes(ws, string.rep("x", 5000), "/problems/message-too-big", 1009)
            local v = gw:wait_log(function(x) return x.msg == "protocol violation" and x.conn == r.conn end)
            assert.equal("client", v.side)
            assert.equal(1009, v.code)
        end)

        it("a policy's ctx:close: its code", function()
            weir_closes(keyed(), "close:4001:bye", nil, 4001)
        end)

        it("a policy that fails: 1011, and its failure names the conn, the policy and the hook", function()
            local r = weir_closes(keyed(), "raise", "/problems/internal-error", 1011)
            local f = gw:wait_log(function(x) return x.msg == "policy failed" and x.conn == r.conn end)
            assert.equal("spec-verdicts", f.policy)
            assert.equal("on_frame_in", f.hook)
        end)

        it("a shutdown: 1001", function()
            local own = helpers.start_weir({ apis = { helpers.api("Echo", "/echo", be) } })
            local ws = assert(helpers.ws_connect(own.port, { path = "/echo" }))
            ws:send_text("hi")
            assert(ws:recv_message(5))
            helpers.kill(own.pid, "TERM")
            local close = assert(ws:recv_close(10))
            assert.equal(1001, close.code)
            ws:send_close(1001)
            ws:close()
            assert.equal(0, own:wait(15))
            local r = own:wait_log(function(x) return x.msg == "access" and x.status == 101 end)
            assert.equal(1001, r.close_code)
            assert.equal("weir", r.close_side)
        end)
    end)

    describe("the consumer", function()
        it("is the application, subscriber, key type and tier key-auth found; the key is nowhere", function()
            local ws = keyed()
            local who = client_of(ws)
            assert.equal("pong", helpers.ask(ws, "reply:pong"))
            ws:close_handshake(1000)
            ws:close()
            local r = access_of(who)
            assert.equal("Keyed", r.api)
            assert.equal("ShopApp", r.application)
            assert.equal("alice", r.subscriber)
            assert.equal("PRODUCTION", r.key_type)
            assert.equal("Gold", r.tier)
            assert.equal(101, r.status)
            assert.is_nil(helpers.read_file(gw.log_path):find(KEY, 1, true))
        end)

        it("is null in every field when no policy identified one", function()
            local ws = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0" }))
            local who = client_of(ws)
            ws:close_handshake(1000)
            ws:close()
            local line = assert(access_line(access_of(who).conn))
            for _, name in ipairs({ "application", "subscriber", "key_type", "tier" }) do
                assert.truthy(line:find('"' .. name .. '":null', 1, true), name .. " in " .. line)
            end
        end)

        it("is null for a handshake key-auth refused", function()
            local ws, res = helpers.ws_connect(gw.port, { path = "/keyed", headers = { apikey = "wrong" } })
            assert.is_nil(ws)
            assert.equal(401, res.status)
            local r = access_for(function(x) return x.api == "Keyed" and x.status == 401 end)
            assert.equal("none", r.close_side)
            assert.truthy(access_line(r.conn):find('"application":null', 1, true))
        end)
    end)

    it("writes an access record for a request answered with an HTTP error", function()
        local res = assert(helpers.http_request(gw.port, { path = "/no/such/api" }))
        assert.equal(404, res.status)
        local r = access_for(function(r) return r.status == 404 end)
        assert.is_nil(r.api)
        assert.is_nil(r.version)
        assert.equal(0, r.frames_in)
        assert.equal(0, r.frames_out)
    end)

    it("writes only JSON objects: ts, level, pid, msg, then conn and policy, each member of one type", function()
        local lines = {}
        for line in (helpers.read_file(gw.log_path) or ""):gmatch("[^\n]+") do lines[#lines + 1] = line end
        assert.is_true(#lines > 0)
        local seen = {}
        for i, line in ipairs(lines) do
            local r = helpers.json(line)
            assert.is_table(r, "line " .. i .. " is not JSON: " .. line)
            assert.truthy(type(r.ts) == "string" and r.ts:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"),
                "line " .. i .. ": ts is not UTC with milliseconds: " .. tostring(r.ts))
            assert.truthy(({ debug = 1, info = 1, warn = 1, error = 1 })[r.level], "line " .. i .. ": level " .. tostring(r.level))
            local names = member_names(line)
            assert.same({ "ts", "level", "pid", "msg" }, { names[1], names[2], names[3], names[4] }, line)
            local at = 5
            if r.conn ~= nil then
                assert.equal("conn", names[at], line)
                assert.matches("^w%d+%-%d+$", r.conn, nil, nil, line)
                at = at + 1
            end
            if r.policy ~= nil then assert.equal("policy", names[at], line) end
            for name, v in pairs(r) do
                if TYPES[name] then
                    assert.equal(TYPES[name], type(v), name .. " in " .. line)
                    seen[name] = true
                end
            end
            if r.msg == "access" then assert.same(ACCESS, names, line) end
        end
        -- the log of this spec had connection and policy records
        assert.is_true(seen.conn and seen.policy and seen.hook and seen.close_side or false)
    end)
end)
