-- Backpressure: a fast client pushing into a slow backend must not make weir
-- buffer what the backend has not read (docs/protocol.md: "a large frame is
-- streamed, never held whole"; STYLE.md: a bounded ring per direction).
local helpers = require "helpers"

local MiB = 1024 * 1024

-- Samples weir's RSS every 20 ms while CLIENT runs; returns the peak (KiB).
local function peak_rss_while(gw, client, timeout)
    local peak = 0
    helpers.wait_until(function()
        peak = math.max(peak, gw:rss_kb())
        return not client:running()
    end, timeout, "the client to finish its transfer")
    return peak
end

describe("backpressure", function()
    local slow, gw

    setup(function()
        -- 25 MB/s: 100 MiB take about 4 s, far slower than the client writes.
        slow = helpers.start_backend("slow", { rate = 25 * 1000 * 1000 })
        gw = helpers.start_weir({
            workers = 1,
            limits = { buffer_size = "256k", max_message_size = "64m", idle_timeout = 60 },
            policy_paths = { helpers.fixture_policies },
            apis = { helpers.api("Slow", "/slow", slow),
                     -- spec-verdicts reads every message whose length ends in 777
                     helpers.policy_api("Hooked", "/hooked", slow, { { "spec-verdicts", {} } }) },
        })
    end)
    teardown(helpers.cleanup)

    it("100 MiB pushed into a slow backend all arrive, in order, with weir's memory bounded", function()
        -- Warm up (first connection allocates the worker's steady-state
        -- structures), then take the baseline.
        helpers.ws_client("node", { url = gw:url("/slow"), steps = { { op = "send", text = "warm-up" } } })
        local base = gw:rss_kb()

        local total = 100 * MiB
        local client = helpers.ws_client_start("node", { url = gw:url("/slow"), timeout = 90, steps = {
            { op = "stream", total = total, chunk = 64 * 1024 },
            { op = "send", text = '{"__ctl":"report"}' },
            { op = "wait", messages = 1 },
        } })
        local peak = peak_rss_while(gw, client, 120)
        local t = client:wait()
        assert.is_nil(t.error, "client error: " .. tostring(t.error))

        local report = helpers.json(helpers.events_of(t, "message")[1].text).__report
        assert.equal(total, report.bytes)
        assert.equal(1600, report.messages)
        assert.equal(t.sent[1].sha256, report.sha256, "bytes arrived altered or out of order")

        -- Bound: with buffer_size = 256k weir needs well under 1 MiB per
        -- connection; 64 MiB leaves room for allocator slack and TLS/Lua
        -- state, yet is far below the 100 MiB sent, so a weir that queued
        -- what the backend had not read yet (instead of pausing the client)
        -- fails here.
        local growth_kb = peak - base
        assert.is_true(growth_kb < 64 * 1024,
            ("weir's RSS grew by %d KiB (base %d KiB, peak %d KiB) while relaying %d MiB"):format(
                growth_kb, base, peak, total / MiB))
    end)

    it("messages a frame hook reads, pushed into a slow backend, all arrive whole and in order", function()
        -- each is cut by the reads, which stop when the backend's queue is
        -- full: read on behind, or assembled when the reads stop first
        local n, size = 200, 100777
        local t = helpers.ws_client("node", { url = gw:url("/hooked"), timeout = 60, steps = {
            { op = "stream", total = n * size, chunk = size },
            { op = "send", text = '{"__ctl":"report"}' },
            { op = "wait", messages = 1 },
        } })
        assert.is_nil(t.error, "client error: " .. tostring(t.error))
        local report = helpers.json(helpers.events_of(t, "message")[1].text).__report
        assert.equal(n * size, report.bytes)
        assert.equal(n, report.messages)
        assert.equal(t.sent[1].sha256, report.sha256, "bytes arrived altered or out of order")
    end)

    it("a single 48 MiB message into a slow backend is streamed, not held whole", function()
        local base = gw:rss_kb()
        local size = 48 * MiB
        local client = helpers.ws_client_start("python", { url = gw:url("/slow"), timeout = 90, steps = {
            { op = "send", size = size },
            { op = "send", text = '{"__ctl":"report"}' },
            { op = "wait", messages = 1 },
        } })
        local peak = peak_rss_while(gw, client, 120)
        local t = client:wait()
        assert.is_nil(t.error, "client error: " .. tostring(t.error))
        local report = helpers.json(helpers.events_of(t, "message")[1].text).__report
        -- the slow backend's counters cover every connection's own bytes only
        assert.equal(size, report.bytes)
        assert.equal(t.sent[1].sha256, report.sha256)
        -- Bound: half the message. A weir that held a frame whole would grow
        -- by at least 48 MiB.
        local growth_kb = peak - base
        assert.is_true(growth_kb < 24 * 1024,
            ("weir's RSS grew by %d KiB (base %d KiB, peak %d KiB) while relaying one %d MiB message"):format(
                growth_kb, base, peak, size / MiB))
    end)
end)
