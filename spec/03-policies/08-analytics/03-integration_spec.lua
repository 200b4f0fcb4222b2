-- analytics through a real gateway (docs/analytics.md): known traffic
-- gives exact events in a JSON-lines file and in a real Redis stream, an
-- auth failure is seen, SIGUSR1 reopens the file, an HTTP sink that
-- stalls loses only what it reports as dropped while the file beside it
-- gets everything, and a bad sink is refused at load.
local helpers = require "helpers"
local cjson = require "cjson.safe"

local KEY = "analytics-key-0123456789abcdef"

local COMMON = { "event", "ts", "conn", "api", "version", "application", "subscriber", "tier", "key_type",
                 "client", "user_agent" }

local ae = require "support.analytics_events"
local decode_lines, file_events, where, of_type = ae.decode_lines, ae.file_events, ae.where, ae.of_type
local start_collector = ae.start_collector
local sum = ae.sum

-- Every event carries the common members (null when unknown: cjson.null).
local function check_common(e)
    for _, k in ipairs(COMMON) do
        assert(e[k] ~= nil, "event " .. tostring(e.event) .. " has no " .. k)
    end
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", e.ts)
    assert.matches("^w%d+%-%d+$", e.conn)
end

-- The stream's events (XRANGE), decoded from their json field.
local function stream_events(rd, key)
    local out = {}
    for _, entry in ipairs(rd:command("XRANGE", key, "-", "+") or {}) do
        local fields = entry[2]
        local ev, json
        for i = 1, #fields, 2 do
            if fields[i] == "event" then ev = fields[i + 1] end
            if fields[i] == "json" then json = fields[i + 1] end
        end
        local e = assert(cjson.decode(json))
        assert.equal(e.event, ev)
        out[#out + 1] = e
    end
    return out
end

-- Send LIST of { opcode, payload }, each echoed back by the backend.
local function traffic(ws, list)
    for _, m in ipairs(list) do
        assert(ws:send_frame({ opcode = m[1], payload = m[2] }))
        local got = assert(ws:recv_message(10))
        assert.equal(m[2], got.payload)
    end
end

describe("analytics through weir", function()
    local be, rd, gw, dir, file, keys_file

    setup(function()
        dir = helpers.tmpdir()
        be = helpers.start_backend("echo")
        rd = helpers.start_redis()
        file = dir .. "/events.jsonl"
        keys_file = helpers.write_file(dir .. "/keys.txt",
            "sha256:" .. helpers.sha256(KEY) .. "  application=ShopApp subscriber=alice tier=Gold\n")
        local sinks = { { type = "file", path = file }, { type = "redis", stream = "weir:events", maxlen = 10000 } }
        local an = { "analytics", { interval = "200ms", sinks = sinks, trusted_proxies = { "127.0.0.1" } } }
        gw = helpers.start_weir({
            workers = 1, state = { redis = rd.url }, policy_paths = { helpers.fixture_policies },
            tiers = { Two = { limits = { { frames = 2, per = "hour", direction = "in" } }, action = "drop" } },
            apis = {
                helpers.policy_api("Open", "/open", be, { an }),
                helpers.policy_api("Limited", "/limited", be, { an, { "throttling", { anonymous_tier = "Two" } } }),
                helpers.policy_api("Verdicts", "/verdicts", be, { an, { "spec-verdicts", {} } }),
                helpers.policy_api("Keyed", "/keyed", be, { an, { "key-auth", { keys_file = keys_file } } }),
            },
        })
    end)
    teardown(helpers.cleanup)

    -- Wait until SOURCE() holds a close event of the client CLIENT; returns its events.
    local function events_of(source, client)
        return helpers.wait_until(function()
            local evs = where(source(), "client", client)
            if #of_type(evs, "close") > 0 then return evs end
        end, 20, "the close event of " .. client)
    end

    it("writes exact connect, messages and close events to the file and the stream", function()
        local client = "203.0.113.7"
        local ws = assert(helpers.ws_connect(gw.port, { path = "/open/room",
            headers = { ["User-Agent"] = "spec-agent/1.0", ["X-Forwarded-For"] = "198.51.100.1, " .. client } }))
        local list = { { 1, "hello" }, { 1, string.rep("t", 10) }, { 2, string.rep("\1", 7) },
                       { 1, string.rep("x", 20) }, { 2, string.rep("\2", 100) } }
        traffic(ws, list)
        -- a second interval's worth, so that the messages are counted over several events
        helpers.wait_until(function()
            return #of_type(where(file_events(file), "client", client), "messages") > 0
        end, 10, "a first messages event")
        traffic(ws, { { 1, "again" } })
        assert(ws:close_handshake(1000, "bye"))

        for _, source in ipairs({ function() return file_events(file) end,
                                  function() return stream_events(rd, "weir:events") end }) do
            local evs = events_of(source, client)
            for _, e in ipairs(evs) do
                check_common(e)
                assert.equal("Open", e.api)
                assert.equal("1.0", e.version)
                assert.equal("spec-agent/1.0", e.user_agent)
                assert.equal(cjson.null, e.application)
                assert.equal(cjson.null, e.key_type)
            end
            local conn = evs[1].conn
            assert.equal(#evs, #where(evs, "conn", conn))
            local connect = of_type(evs, "connect")
            assert.equal(1, #connect)
            assert.is_number(connect[1].handshake_ms)
            assert.is_true(connect[1].handshake_ms >= 0)
            assert.is_false(connect[1].tls)
            local m = of_type(evs, "messages")
            assert.is_true(#m >= 2)
            -- 6 messages of 5+10+7+20+100+5 bytes, 2 of them binary, echoed
            for _, dirn in ipairs({ "in", "out" }) do
                assert.equal(6, sum(m, "frames_" .. dirn))
                assert.equal(147, sum(m, "bytes_" .. dirn))
                assert.equal(6, sum(m, "messages_" .. dirn))
                assert.equal(2, sum(m, "binary_" .. dirn))
                assert.equal(4, sum(m, "text_" .. dirn))
            end
            for _, e in ipairs(m) do assert.is_number(e.interval_ms) end
            local close = of_type(evs, "close")
            assert.equal(1, #close)
            local c = close[1]
            assert.equal(1000, c.code)
            assert.equal("client", c.side)
            assert.equal(101, c.status)
            assert.is_number(c.duration_ms)
            assert.equal(6, c.frames_in)
            assert.equal(147, c.bytes_in)
            assert.equal(6, c.frames_out)
            assert.equal(147, c.bytes_out)
            assert.equal(2, c.binary_in)
            assert.equal(0, c.throttled_in)
            -- the close comes last
            assert.equal("close", evs[#evs].event)
        end
    end)

    it("reports a refused key as an auth_failure, and the consumer of a good one", function()
        local bad = "198.51.100.20"
        local ws, res = helpers.ws_connect(gw.port, { path = "/keyed",
            headers = { apikey = "wrong", ["X-Forwarded-For"] = bad } })
        assert.is_nil(ws)
        assert.equal(401, res.status)
        local good = "198.51.100.21"
        local ok = assert(helpers.ws_connect(gw.port, { path = "/keyed",
            headers = { apikey = KEY, ["X-Forwarded-For"] = good } }))
        traffic(ok, { { 1, "hi" } })
        ok:close_handshake(4000, "done")
        for _, source in ipairs({ function() return file_events(file) end,
                                  function() return stream_events(rd, "weir:events") end }) do
            local evs = events_of(source, bad)
            local f = of_type(evs, "auth_failure")
            assert.equal(1, #f)
            check_common(f[1])
            assert.equal(401, f[1].status)
            assert.equal("/problems/unauthorized", f[1].problem)
            assert.equal("Keyed", f[1].api)
            assert.equal(0, #of_type(evs, "connect"))
            assert.equal(401, of_type(evs, "close")[1].status)
            -- the key never appears in an event
            assert.is_nil(cjson.encode(evs):find("wrong", 1, true))

            evs = events_of(source, good)
            assert.equal(0, #of_type(evs, "auth_failure"))
            local c = of_type(evs, "close")[1]
            assert.equal("ShopApp", c.application)
            assert.equal("alice", c.subscriber)
            assert.equal("Gold", c.tier)
            assert.equal("PRODUCTION", c.key_type)
            assert.equal(4000, c.code)
            assert.equal(1, sum(of_type(evs, "messages"), "messages_in"))
        end
        assert.is_nil(helpers.read_file(file):find(KEY, 1, true))
    end)

    it("counts the messages over a rate limit in throttled events", function()
        local client = "198.51.100.40"
        local ws = assert(helpers.ws_connect(gw.port, { path = "/limited", headers = { ["X-Forwarded-For"] = client } }))
        for i = 1, 5 do assert(ws:send_text("m" .. i)) end
        assert(ws:ping("sync"))
        helpers.wait_until(function()
            local f = ws:recv_frame(1)
            return f and f.opcode == 10
        end, 10, "the pong")
        ws:close_handshake(1000, "")
        for _, source in ipairs({ function() return file_events(file) end,
                                  function() return stream_events(rd, "weir:events") end }) do
            local evs = events_of(source, client)
            local t = of_type(evs, "throttled")
            assert.is_true(#t >= 1)
            check_common(t[1])
            assert.equal(3, sum(t, "throttled_in"))
            assert.equal(0, sum(t, "throttled_out"))
            local c = of_type(evs, "close")[1]
            assert.equal(3, c.throttled_in)
            assert.equal(5, c.frames_in)
            assert.equal(2, c.frames_out)
            assert.equal(5, sum(of_type(evs, "messages"), "frames_in"))
            assert.equal(2, sum(of_type(evs, "messages"), "frames_out"))
        end
    end)

    it("reports policy errors at the handshake and on a message", function()
        local hs = "198.51.100.50"
        local ws, res = helpers.ws_connect(gw.port, { path = "/verdicts?raise=1", headers = { ["X-Forwarded-For"] = hs } })
        assert.is_nil(ws)
        assert.equal(500, res.status)
        local msg = "198.51.100.51"
        ws = assert(helpers.ws_connect(gw.port, { path = "/verdicts", headers = { ["X-Forwarded-For"] = msg } }))
        assert(ws:send_text("raise"))
        helpers.expect_error_close(ws, "/problems/internal-error", 1011)
        local evs = events_of(function() return file_events(file) end, hs)
        local e = of_type(evs, "policy_error")
        assert.equal(1, #e)
        check_common(e[1])
        assert.equal("spec-verdicts", e[1].policy)
        assert.equal("on_handshake", e[1].hook)
        assert.matches("raised in on_handshake", e[1].error)
        assert.equal(500, of_type(evs, "close")[1].status)
        evs = events_of(function() return file_events(file) end, msg)
        e = of_type(evs, "policy_error")
        assert.equal(1, #e)
        assert.equal("on_frame_in", e[1].hook)
        local c = of_type(evs, "close")[1]
        assert.equal(1011, c.code)
        assert.equal("weir", c.side)
    end)

    it("keeps reporting to the same sinks after a reload", function()
        gw:reload()
        local client = "198.51.100.60"
        local ws = assert(helpers.ws_connect(gw.port, { path = "/open", headers = { ["X-Forwarded-For"] = client } }))
        traffic(ws, { { 1, "after reload" } })
        ws:close_handshake(1000, "")
        for _, source in ipairs({ function() return file_events(file) end,
                                  function() return stream_events(rd, "weir:events") end }) do
            local evs = events_of(source, client)
            assert.equal(12, of_type(evs, "close")[1].bytes_in)
        end
    end)

    it("opens a new file on SIGUSR1 after the old one was moved away", function()
        local before = "198.51.100.30"
        local ws = assert(helpers.ws_connect(gw.port, { path = "/open", headers = { ["X-Forwarded-For"] = before } }))
        ws:close_handshake(1000, "")
        events_of(function() return file_events(file) end, before)
        assert(os.rename(file, file .. ".1"))
        helpers.kill(gw.pid, "USR1")
        helpers.wait_until(function() return helpers.read_file(file) ~= nil end, 10, "a new events file")
        local after = "198.51.100.31"
        ws = assert(helpers.ws_connect(gw.port, { path = "/open", headers = { ["X-Forwarded-For"] = after } }))
        ws:close_handshake(1000, "")
        events_of(function() return file_events(file) end, after)
        assert.equal(0, #where(file_events(file .. ".1"), "client", after))
        assert.equal(0, #where(file_events(file), "client", before))
    end)
end)

describe("an analytics HTTP sink", function()
    local be, gw, dir, file, col

    local function col_get(path)
        local res = assert(helpers.http_request(col.port, { path = path, timeout = 5 }))
        return res.body
    end

    setup(function()
        dir = helpers.tmpdir()
        be = helpers.start_backend("echo")
        col = start_collector(dir)
        file = dir .. "/events.jsonl"
        gw = helpers.start_weir({
            workers = 1,
            apis = { helpers.policy_api("Open", "/open", be, { { "analytics", { interval = "100ms", sinks = {
                { type = "file", path = file },
                { type = "http", name = "collector", url = ("http://127.0.0.1:%d/events"):format(col.port),
                  queue = 2, timeout = "500ms" },
            } } } }) },
        })
    end)
    teardown(helpers.cleanup)

    it("loses only what it reports as dropped while it stalls, and the file gets everything", function()
        col_get("/stall")
        -- connections over several intervals, while the collector holds its POSTs
        local n = 12
        for i = 1, n do
            local ws = assert(helpers.ws_connect(gw.port, { path = "/open" }))
            traffic(ws, { { 1, "m" .. i } })
            ws:close_handshake(1000, "")
            if i % 3 == 0 then
                local held = tonumber(col_get("/held"))
                helpers.wait_until(function() return tonumber(col_get("/held")) > held end, 10,
                                   "the next POST to be held")
            end
        end
        local drop = gw:wait_log(function(r) return r.msg == "analytics events dropped" and r.sink == "collector" end,
                                 20)
        assert.is_true(drop.dropped > 0)
        col_get("/unstall")
        -- every connection's close is in the file
        local total = helpers.wait_until(function()
            local evs = file_events(file)
            if #of_type(evs, "close") == n then return #evs end
        end, 20, "the file to hold every close")
        -- what the collector got plus what weir reported dropped is everything
        local function dropped()
            local d = 0
            for _, r in ipairs(gw:logs()) do
                if r.msg == "analytics events dropped" and r.sink == "collector" then d = math.max(d, r.dropped_total) end
            end
            return d
        end
        helpers.wait_until(function()
            return #decode_lines(col_get("/events")) + dropped() == total
        end, 20, "the collector's events and the dropped ones to add up to the file's")
        local got = decode_lines(col_get("/events"))
        assert.is_true(#got > 0)
        assert.is_true(dropped() > 0)
        -- no event arrived twice
        local seen = {}
        for _, e in ipairs(got) do
            local k = e.conn .. e.event .. e.ts .. (e.interval_ms or "")
            assert.is_nil(seen[k], "twice: " .. k)
            seen[k] = true
        end
        assert.matches("application/x%-ndjson", col_get("/types"))
    end)
end)

describe("analytics HTTP sinks, JSON and down", function()
    local be, gw, dir, col

    setup(function()
        dir = helpers.tmpdir()
        be = helpers.start_backend("echo")
        col = start_collector(dir)
        gw = helpers.start_weir({
            workers = 1,
            apis = {
                helpers.policy_api("Json", "/json", be, { { "analytics", { interval = "100ms", sinks = {
                    { type = "file", path = dir .. "/json.jsonl" },
                    { type = "http", url = ("http://127.0.0.1:%d/events"):format(col.port), format = "json" },
                } } } }),
                helpers.policy_api("Dead", "/dead", be, { { "analytics", { interval = "100ms", sinks = {
                    { type = "file", path = dir .. "/dead.jsonl" },
                    { type = "http", name = "nobody", url = ("http://127.0.0.1:%d/"):format(helpers.free_port()),
                      queue = 1 },
                } } } }),
            },
        })
    end)
    teardown(helpers.cleanup)

    local function connection(path, n)
        for i = 1, n do
            local ws = assert(helpers.ws_connect(gw.port, { path = path }))
            traffic(ws, { { 1, "m" .. i } })
            ws:close_handshake(1000, "")
        end
    end

    it("POSTs a JSON array of the same events the file gets", function()
        connection("/json", 3)
        local evs = helpers.wait_until(function()
            local e = file_events(dir .. "/json.jsonl")
            if #of_type(e, "close") == 3 then return e end
        end, 20, "three closes in the file")
        local got = helpers.wait_until(function()
            local res = assert(helpers.http_request(col.port, { path = "/events", timeout = 5 }))
            local all = {}
            -- the batches are JSON arrays, one after the other
            for arr in res.body:gmatch("%b[]") do
                for _, e in ipairs(assert(cjson.decode(arr))) do all[#all + 1] = e end
            end
            if #all >= #evs then return all end
        end, 20, "the collector to get every event")
        assert.equal(#evs, #got)
        assert.same(evs, got)
        local res = assert(helpers.http_request(col.port, { path = "/types", timeout = 5 }))
        assert.matches("^application/json", res.body)
    end)

    it("counts as dropped what it cannot send to a port nothing listens on; its file gets everything", function()
        -- one connection a batch: a second batch finds the queue full
        local evs
        for i = 1, 6 do
            connection("/dead", 1)
            evs = helpers.wait_until(function()
                local e = file_events(dir .. "/dead.jsonl")
                if #of_type(e, "close") == i then return e end
            end, 20, i .. " closes in the file")
        end
        assert.equal(6, #of_type(evs, "connect"))
        local r = gw:wait_log(function(rec)
            return rec.msg == "analytics events dropped" and rec.sink == "nobody" and rec.dropped_total > 0
        end, 20)
        assert.equal(0, r.sent_total)
        assert.matches("queue full", r.reason)
        assert.is_true(r.queued_batches <= 1)
    end)
end)

describe("analytics of a stopping weir", function()
    teardown(helpers.cleanup)

    it("writes the closes of the connections it closes as it stops", function()
        local dir = helpers.tmpdir()
        local be = helpers.start_backend("echo")
        local file = dir .. "/stop.jsonl"
        -- an interval longer than the run: only the last batch, at the stop, writes anything
        local gw = helpers.start_weir({ workers = 1, apis = { helpers.policy_api("Open", "/open", be, {
            { "analytics", { interval = "1h", sinks = { { type = "file", path = file } } } } }) } })
        local ws = assert(helpers.ws_connect(gw.port, { path = "/open" }))
        traffic(ws, { { 1, "before the stop" } })
        assert.is_nil(helpers.read_file(file))
        assert.equal(0, gw:stop())
        local evs = file_events(file)
        assert.equal(1, #of_type(evs, "connect"))
        local c = of_type(evs, "close")
        assert.equal(1, #c)
        assert.equal(1001, c[1].code)
        assert.equal("weir", c[1].side)
        assert.equal(15, c[1].bytes_in)
        assert.equal(15, sum(of_type(evs, "messages"), "bytes_in"))
    end)
end)

describe("analytics sinks at load", function()
    local function check(sinks)
        local conf = {
            listen = { { address = "127.0.0.1", port = helpers.free_port() } },
            apis = { helpers.policy_api("Echo", "/echo", "ws://127.0.0.1:9", { { "analytics", { sinks = sinks } } }) },
        }
        local path = helpers.write_conf(conf)
        local code, _, err = helpers.run({ helpers.bin, "-t", "-c", path })
        return code, err, path
    end

    it("refuses a bad sink with the file, line and field", function()
        local code, err, path = check({ { type = "file" } })
        assert.is_not.equal(0, code)
        assert.matches(path:gsub("%p", "%%%0") .. ":%d+: apis%[1%]%.versions%[1%]%.policies%[1%]%[2%]%.sinks%[1%]: "
                       .. "a file sink needs path", err)
        code, err = check({ { type = "kafka", path = "/tmp/x" } })
        assert.is_not.equal(0, code)
        assert.matches("sinks%[1%]%.type: expected one of file, redis, http", err)
        code, err = check({ { type = "http", url = "ftp://x" } })
        assert.is_not.equal(0, code)
        assert.matches("url: expected an http:// or https:// URL", err)
        code, err = check({ { type = "file", path = "/tmp/a", url = "http://x/" } })
        assert.is_not.equal(0, code)
        assert.matches("url is an option of http sinks, not of file sinks", err)
    end)
end)
