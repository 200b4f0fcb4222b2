-- The JSON log: every line a JSON object, and one "access" record per
-- connection with its counters.
local helpers = require "helpers"

describe("logging", function()
    local be, gw

    setup(function()
        be = helpers.start_backend("echo")
        gw = helpers.start_weir({
            log = { level = "info" },
            apis = {
                { name = "Echo", context = "/echo", versions = {
                    { version = "1.0", default = true, endpoints = { production = be.url } },
                    { version = "2.0", endpoints = { production = be.url } },
                } },
                helpers.api("Refused", "/refused", helpers.start_backend("refuse")),
            },
        })
    end)
    teardown(helpers.cleanup)

    local function access_for(pred)
        return gw:wait_log(function(r) return r.msg == "access" and pred(r) end, 10)
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
        assert.is_not_nil(r.conn)
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

    it("writes an access record for a request answered with an HTTP error", function()
        local res = assert(helpers.http_request(gw.port, { path = "/no/such/api" }))
        assert.equal(404, res.status)
        local r = access_for(function(r) return r.status == 404 end)
        assert.is_nil(r.api)
        assert.is_nil(r.version)
        assert.equal(0, r.frames_in)
        assert.equal(0, r.frames_out)
    end)

    it("writes only JSON objects with ts, level, pid and msg", function()
        local logs = gw:logs()
        assert.is_true(#logs > 0)
        for i, r in ipairs(logs) do
            assert.is_nil(r._raw, "line " .. i .. " is not JSON: " .. tostring(r._raw))
            assert.truthy(type(r.ts) == "string" and r.ts:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"),
                "line " .. i .. ": ts is not UTC with milliseconds: " .. tostring(r.ts))
            assert.truthy(({ debug = 1, info = 1, warn = 1, error = 1 })[r.level], "line " .. i .. ": level " .. tostring(r.level))
            assert.is_string(r.level, "line " .. i .. " has no level")
            assert.is_number(r.pid, "line " .. i .. " has no pid")
            assert.is_string(r.msg, "line " .. i .. " has no msg")
        end
    end)

end)
