-- analytics sinks under strain, through a real gateway (docs/analytics.md):
-- a batch far over the policy budget still reaches Redis and the batches
-- after it keep flowing; a Redis that stops answering, then dies, loses
-- only what weir reports dropped, and the sink resumes; a collector URL's
-- credentials never reach the log; a sink that is down keeps at most
-- queue_bytes; text is UTF-8 as it was sent (invalid bytes as U+FFFD);
-- more reloads than there are sink-set ids, each with a new file, keep
-- every connection reported; a file that cannot grow stays whole lines.
local helpers = require "helpers"
local cjson = require "cjson.safe"

local ae = require "support.analytics_events"
local decode_lines, file_events, where, of_type = ae.decode_lines, ae.file_events, ae.where, ae.of_type
local start_collector = ae.start_collector
local sum = ae.sum

-- One connection that says one thing and closes; CLIENT as its X-Forwarded-For.
local function one(gw, path, client, headers)
    local h = { ["X-Forwarded-For"] = client }
    for k, v in pairs(headers or {}) do h[k] = v end
    local ws = assert(helpers.ws_connect(gw.port, { path = path, headers = h }))
    assert(ws:send_text("hi"))
    assert(ws:recv_message(10))
    assert(ws:close_handshake(1000, ""))
end

-- SEND(i) for i = 1..N, 8 at a time: after each 8 (and the last), until
-- ARRIVED(i) gives a value, which the last wait returns. An interval's batch
-- then stays far below the 64 KiB the specs below strain (a batch bigger
-- than a queue's or a file's limit goes whole, leaving nothing to check).
local function eight_at_a_time(n, send, arrived)
    local v
    for i = 1, n do
        send(i)
        if i % 8 == 0 or i == n then
            v = helpers.wait_until(function() return arrived(i) end, 20, "the events of connections up to " .. i)
        end
    end
    return v
end

-- The largest dropped_total weir logged for SINK (0: none), and the
-- reasons it gave.
local function dropped(gw, sink)
    local d, why = 0, {}
    for _, r in ipairs(gw:logs()) do
        if r.msg == "analytics events dropped" and r.sink == sink then
            d = math.max(d, r.dropped_total)
            why[#why + 1] = r.reason
        end
    end
    return d, table.concat(why, "; ")
end

local function xlen(rd, key)
    local ok, n = pcall(rd.command, rd, "XLEN", key)
    return ok and tonumber(n) or nil
end

describe("an analytics Redis sink", function()
    teardown(helpers.cleanup)

    it("sends a batch far over the policy budget, and every batch after it", function()
        local dir = helpers.tmpdir()
        local be = helpers.start_backend("echo")
        local rd = helpers.start_redis()
        local file = dir .. "/big.jsonl"
        -- a 5 ms budget: sending one batch of thousands of events in one go
        -- takes longer (fail_open: a handshake caught by the budget passes)
        local gw = helpers.start_weir({
            workers = 1, state = { redis = rd.url }, limits = { policy_budget = "5ms" },
            apis = { helpers.policy_api("Open", "/open", be, { { "analytics", { interval = "1s",
                trusted_proxies = { "127.0.0.1" },
                sinks = { { type = "file", path = file }, { type = "redis", stream = "big", maxlen = 1000000 } },
            }, fail_open = true } }) },
        })
        local N = 3000
        local many = helpers.start_many_ws({ mode = "hold", url = gw:url("/open"), count = N })
        -- (a handshake the budget stops in the runtime's own code may fail: not what this is about)
        assert.is_true(many:wait_event("open", 1, 120).open >= N * 0.9)
        many:signal("USR2")
        many:wait_exit()
        -- every connection the file saw open is closed in it (a handshake
        -- the budget stopped after analytics was on has a close and no
        -- connect: docs/analytics.md, a close for every connection seen)
        local open_left, closes = -1, 0
        local ok = pcall(helpers.wait_until, function()
            local e = file_events(file)
            local closed = {}
            for _, c in ipairs(of_type(e, "close")) do closed[c.conn] = true end
            open_left, closes = 0, #of_type(e, "close")
            for _, c in ipairs(of_type(e, "connect")) do
                if not closed[c.conn] then open_left = open_left + 1 end
            end
            return open_left == 0 and closes >= N * 0.8
        end, 60, "every close in the file")
        assert(ok, string.format("after 60 s the file has %d closes, and %d connects without one",
                                 closes, open_left))
        -- later batches still go: a connection after the big one
        local later = "198.51.100.70"
        one(gw, "/open", later)
        local evs = helpers.wait_until(function()
            local e = file_events(file)
            if #where(of_type(e, "close"), "client", later) == 1 then return e end
        end, 20, "the later close in the file")
        -- the later close reaches the stream, and every event of the file
        -- is in the stream or counted dropped. (On an idle machine none is
        -- dropped; a sender that used up its CPU budget would be stopped:
        -- then what it had in hand is counted, and the next interval's
        -- sender goes on.)
        local function stream_has_later()
            for _, e in ipairs(rd:command("XREVRANGE", "big", "+", "-", "COUNT", 20) or {}) do
                local ev = cjson.decode(e[2][4])
                if ev.client == later and ev.event == "close" then return true end
            end
        end
        local ok = pcall(helpers.wait_until, function()
            return stream_has_later() and (xlen(rd, "big") or 0) + dropped(gw, "redis:big") >= #evs
        end, 30, "the stream")
        local d, why = dropped(gw, "redis:big")
        local n = xlen(rd, "big") or 0
        assert(ok, ("the stream holds %d of the file's %d events; %d dropped (%s)"):format(n, #evs, d, why))
        assert.is_true(n <= #evs)
        -- the big batches went through (all of them, unless a sender was stopped)
        assert.is_true(n >= N * 0.8, ("the stream holds %d of the file's %d events; %d dropped (%s)"):format(
            n, #evs, d, why))
    end)

    it("loses only what it reports dropped while Redis is stopped or dead, and resumes", function()
        local dir = helpers.tmpdir()
        local be = helpers.start_backend("echo")
        local rd = helpers.start_redis()
        local file = dir .. "/down.jsonl"
        local gw = helpers.start_weir({
            workers = 1, state = { redis = rd.url, timeout = "300ms" },
            apis = { helpers.policy_api("Open", "/open", be, { { "analytics", { interval = "100ms",
                trusted_proxies = { "127.0.0.1" },
                sinks = { { type = "file", path = file }, { type = "redis", stream = "down", queue = 1 } },
            } } }) },
        })
        -- N connections, each in a batch of its own: the next starts once
        -- the file has the close of the one before (batches pile up in the
        -- queue only if there are several)
        local k = 0
        local function some(n)
            for _ = 1, n do
                k = k + 1
                local client = "198.51.100." .. k
                one(gw, "/open", client)
                helpers.wait_until(function()
                    return #where(of_type(file_events(file), "close"), "client", client) == 1
                end, 20, "the close of " .. client .. " in the file")
            end
        end
        -- every event of the file is in the stream or counted dropped, and
        -- none is in the stream twice (an XADD that timed out may have been
        -- kept by Redis all the same: then it is both)
        local function settled(base_file, base_drop)
            local f, n = #file_events(file) - base_file, xlen(rd, "down") or 0
            local d = dropped(gw, "redis:down") - base_drop
            assert.is_true(n <= f, "more entries than events: " .. n .. " > " .. f)
            return n + d >= f and f > 0
        end
        some(3)
        helpers.wait_until(function() return xlen(rd, "down") == #file_events(file) end, 20, "the first events")
        assert.equal(0, dropped(gw, "redis:down"))
        -- stopped: XADDs get no answer (state.timeout), batches pile up
        rd:kill("STOP")
        some(4)
        helpers.wait_until(function() return dropped(gw, "redis:down") > 0 end, 20, "a drop while Redis is stopped")
        rd:kill("CONT")
        helpers.wait_until(function() return settled(0, 0) end, 20, "the stream and the drops to cover the file")
        -- dead: not reachable; the batches wait in the queue, the oldest dropped when it is full
        local base_file, base_drop = #file_events(file), dropped(gw, "redis:down")
        rd:kill("KILL")
        some(6)
        helpers.wait_until(function() return dropped(gw, "redis:down") > base_drop end, 20,
                           "a drop while Redis is dead (queue full)")
        -- back (empty): what the queue still held arrives, and what comes after
        rd:restart()
        some(3)
        local last = "198.51.100." .. k
        helpers.wait_until(function()
            for _, e in ipairs(rd:command("XRANGE", "down", "-", "+") or {}) do
                local ev = cjson.decode(e[2][4])
                if ev.client == last and ev.event == "close" then return true end
            end
        end, 30, "the last close in the stream")
        helpers.wait_until(function() return settled(base_file, base_drop) end, 20,
                           "the stream and the drops to cover what the file got since Redis died")
    end)
end)

describe("an analytics HTTP sink named by a URL with credentials", function()
    teardown(helpers.cleanup)

    it("never writes the URL's userinfo or query in the log", function()
        local dir = helpers.tmpdir()
        local be = helpers.start_backend("echo")
        local port = helpers.free_port()     -- nothing listens
        local url = ("http://user:pass@127.0.0.1:%d/in?api_key=SECRET#frag"):format(port)
        local gw = helpers.start_weir({
            workers = 1,
            apis = { helpers.policy_api("Open", "/open", be, { { "analytics", { interval = "100ms",
                sinks = { { type = "file", path = dir .. "/e.jsonl" }, { type = "http", url = url, queue = 1 } },
            } } }) },
        })
        for i = 1, 4 do     -- each in a batch of its own: a second batch finds the queue full
            local client = "198.51.100." .. i
            one(gw, "/open", client)
            helpers.wait_until(function()
                return #of_type(file_events(dir .. "/e.jsonl"), "close") == i
            end, 20, "the close of " .. client .. " in the file")
        end
        local name = ("http:http://127.0.0.1:%d/in"):format(port)
        local r = gw:wait_log(function(rec) return rec.msg == "analytics events dropped" end, 20)
        assert.equal(name, r.sink)
        assert.is_true(r.dropped_total > 0)
        local text = helpers.read_file(gw.log_path) .. (gw:stderr() or "")
        assert.is_nil(text:find("SECRET", 1, true))
        assert.is_nil(text:find("pass@", 1, true))
        assert.is_nil(text:find("user:pass", 1, true))
        assert.is_nil(text:find("#frag", 1, true))
    end)
end)

describe("an analytics HTTP sink that is down", function()
    teardown(helpers.cleanup)

    it("keeps at most queue_bytes of batches, dropping the oldest", function()
        local dir = helpers.tmpdir()
        local be = helpers.start_backend("echo")
        local file = dir .. "/q.jsonl"
        local gw = helpers.start_weir({
            workers = 1,
            apis = { helpers.policy_api("Open", "/open", be, { { "analytics", { interval = "100ms",
                trusted_proxies = { "127.0.0.1" },
                sinks = { { type = "file", path = file },
                          { type = "http", name = "down", url = ("http://127.0.0.1:%d/"):format(helpers.free_port()),
                            queue = 100000, queue_bytes = "64k" } },
            } } }) },
        })
        -- about 1.5 KiB of events per connection: 80 are more than 64 KiB;
        -- each 8 in the file before the next (total: the file's events)
        local total = eight_at_a_time(80, function(i)
            one(gw, "/open", "198.51.100." .. i, { ["User-Agent"] = string.rep("u", 200) })
        end, function(i)
            local evs = file_events(file)
            if #of_type(evs, "close") == i then return #evs end
        end)
        local bytes = #helpers.read_file(file)
        assert.is_true(bytes > 64 * 1024)
        -- nothing is ever sent; what is dropped is what went past 64 KiB
        local r = helpers.wait_until(function()
            for _, rec in ipairs(gw:logs()) do
                if rec.msg == "analytics events dropped" and rec.sink == "down" and rec.reason:find("queue full") then
                    return rec
                end
            end
        end, 20, "a drop: queue full")
        assert.equal(0, r.sent_total)
        -- far fewer batches than `queue` allows: the bytes were the bound
        assert.is_true(r.queued_batches < 100)
        assert.is_true(r.dropped_total < total)
    end)
end)

describe("analytics text", function()
    teardown(helpers.cleanup)

    it("is the UTF-8 that was sent, with invalid bytes as U+FFFD", function()
        local dir = helpers.tmpdir()
        local be = helpers.start_backend("echo")
        local key = "analytics-utf8-key-0123456789abcdef"
        local keys = helpers.write_file(dir .. "/keys.txt",
            "sha256:" .. helpers.sha256(key) .. "  application=Café subscriber=zoë tier=Gold\n")
        local file = dir .. "/utf8.jsonl"
        local gw = helpers.start_weir({
            workers = 1,
            apis = { helpers.policy_api("Keyed", "/keyed", be, {
                { "analytics", { interval = "100ms", trusted_proxies = { "127.0.0.1" },
                                 sinks = { { type = "file", path = file } } } },
                { "key-auth", { keys_file = keys } } }) },
        })
        local client = "198.51.100.80"
        one(gw, "/keyed", client, { apikey = key, ["User-Agent"] = "agent \xff\xfe/1 ünï" })
        local evs = helpers.wait_until(function()
            local e = where(file_events(file), "client", client)
            if #of_type(e, "close") == 1 then return e end
        end, 20, "the close")
        local c = of_type(evs, "close")[1]
        assert.equal("Café", c.application)
        assert.equal("zoë", c.subscriber)
        assert.equal("agent \xef\xbf\xbd\xef\xbf\xbd/1 ünï", c.user_agent)
        -- written as UTF-8, not escaped byte by byte
        assert.is_truthy(helpers.read_file(file):find('"application":"Café"', 1, true))
        -- a user agent cut at its 256 bytes inside "é" loses the "é" whole
        local long = "198.51.100.81"
        one(gw, "/keyed", long, { apikey = key, ["User-Agent"] = string.rep("a", 255) .. "éz" })
        local e = helpers.wait_until(function()
            return of_type(where(file_events(file), "client", long), "close")[1]
        end, 20, "the close of the long user agent")
        assert.equal(string.rep("a", 255), e.user_agent)
    end)
end)

describe("analytics across many reloads", function()
    teardown(helpers.cleanup)

    it("reports to a new file after more reloads than there are sink-set ids, and to the old one for an open connection",
       function()
        local dir = helpers.tmpdir()
        local be = helpers.start_backend("echo")
        local function conf_with(i)
            return { workers = 1, apis = { helpers.policy_api("Open", "/open", be, { { "analytics", {
                interval = "100ms", trusted_proxies = { "127.0.0.1" },
                sinks = { { type = "file", path = dir .. "/g" .. i .. ".jsonl" } } } } }) } }
        end
        local gw = helpers.start_weir(conf_with(0))
        -- open across every reload: its events stay with the sinks it started with
        local held = "198.51.100.90"
        local ws = assert(helpers.ws_connect(gw.port, { path = "/open", headers = { ["X-Forwarded-For"] = held } }))
        local R = 70        -- ids 1..63
        for i = 1, R do
            local c = conf_with(i)
            c.listen, c.log, c.pid_file = gw.conf.listen, gw.conf.log, gw.conf.pid_file
            helpers.write_file(gw.conf_path, helpers.serialize(c))
            gw:reload()
        end
        local client = "198.51.100.91"
        one(gw, "/open", client)
        local last = dir .. "/g" .. R .. ".jsonl"
        helpers.wait_until(function()
            return #of_type(where(file_events(last), "client", client), "close") == 1
        end, 20, "the new connection's close in the last file")
        assert(ws:send_text("still here"))
        assert(ws:recv_message(10))
        assert(ws:close_handshake(1000, ""))
        local first = dir .. "/g0.jsonl"
        helpers.wait_until(function()
            return #of_type(where(file_events(first), "client", held), "close") == 1
        end, 20, "the held connection's close in the first file")
        for _, r in ipairs(gw:logs()) do
            assert.is_not.equal("analytics sinks not used", r.msg)
            assert.is_not.equal("analytics not turned on", r.msg)
        end
    end)
end)

describe("an analytics file that cannot grow", function()
    teardown(helpers.cleanup)

    it("stays whole lines when a write fails part way, and counts what it lost", function()
        local dir = helpers.tmpdir()
        local be = helpers.start_backend("echo")
        local col = start_collector(dir)
        local file = dir .. "/full.jsonl"
        -- weir's files may not grow past 64 KiB (RLIMIT_FSIZE, SIGXFSZ
        -- ignored: a write past it is cut short, then fails with EFBIG)
        local wrapper = helpers.write_file(dir .. "/limited.sh",
            "#!/bin/bash\ntrap '' XFSZ\nulimit -f 64\nexec " .. helpers.shell_quote(helpers.bin) .. ' "$@"\n')
        os.execute("chmod +x " .. helpers.shell_quote(wrapper))
        local bin = helpers.bin
        helpers.bin = wrapper
        local ok, gw = pcall(helpers.start_weir, {
            workers = 1, log = { level = "warn" },
            apis = { helpers.policy_api("Open", "/open", be, { { "analytics", { interval = "100ms",
                trusted_proxies = { "127.0.0.1" },
                sinks = { { type = "file", path = file },
                          { type = "http", name = "all", url = ("http://127.0.0.1:%d/events"):format(col.port) } },
            } } }) },
        })
        helpers.bin = bin
        assert(ok, gw)
        local function collected()
            local res = assert(helpers.http_request(col.port, { path = "/events", timeout = 5 }))
            return decode_lines(res.body)
        end
        -- about 1.5 KiB of events per connection: 80 are far past the limit;
        -- each 8 at the collector before the next
        local n = 80
        eight_at_a_time(n, function(i)
            local ws = assert(helpers.ws_connect(gw.port, { path = "/open",
                headers = { ["X-Forwarded-For"] = "198.51.100." .. i, ["User-Agent"] = string.rep("u", 200) } }))
            assert(ws:send_text(string.rep("m", 100)))
            assert(ws:recv_message(10))
            assert(ws:close_handshake(1000, ""))
        end, function(i)
            return #where(of_type(collected(), "close"), "client", "198.51.100." .. i) == 1
        end)
        local all = helpers.wait_until(function()
            local evs = collected()
            if #where(of_type(evs, "close"), "client", "198.51.100." .. n) == 1 then return evs end
        end, 30, "the collector to get every close")
        local function file_dropped()
            local d = 0
            for _, r in ipairs(gw:logs()) do
                if r.msg == "analytics events dropped" and r.sink == "file:" .. file then
                    d = math.max(d, r.dropped_total)
                end
            end
            return d
        end
        -- every line of the file is a whole event (decode_lines checks), the
        -- file ends with a newline, and what is not in it was counted dropped
        helpers.wait_until(function() return #file_events(file) + file_dropped() == #all end, 20,
                           "the file's events and the dropped ones to add up to the collector's")
        local text = helpers.read_file(file)
        assert.equal("\n", text:sub(-1))
        assert.is_true(file_dropped() > 0)
        assert.is_true(#text <= 64 * 1024)
        assert.is_true(#file_events(file) > 0)
        for line in text:gmatch("[^\n]*\n") do assert.is_table(cjson.decode(line)) end
    end)
end)
