-- Messages, pings and closes relayed between real clients (node ws, python
-- websockets) and a real backend (node ws) (docs/protocol.md, "Frames").
local helpers = require "helpers"
local mime = require "mime"

local UNICODE = "héllo wörld — 日本語 — Ελληνικά — 🎉🚀 — e\204\129 — \240\159\145\168\226\128\141\240\159\145\169"

local function b64(s) return (mime.b64(s)) end

local function bytes_0_255()
    local t = {}
    for i = 0, 255 do t[#t + 1] = string.char(i) end
    return table.concat(t)
end

describe("echo", function()
    local be, frames, gw
    local seq = 0

    setup(function()
        be = helpers.start_backend("echo")
        frames = helpers.start_backend("frames")
        gw = helpers.start_weir({
            limits = { max_message_size = "32m", buffer_size = "256k" },
            apis = {
                helpers.api("Echo", "/echo", be),
                helpers.api("Frames", "/frames", frames),
            },
        })
    end)
    teardown(helpers.cleanup)

    -- A unique path per client, so each test finds its own backend record.
    local function tag()
        seq = seq + 1
        return "c" .. seq
    end

    local function record(backend, t, pred, what)
        return backend:wait_conns(function(conns)
            for _, c in ipairs(conns) do
                if c.url == "/" .. t and (not pred or pred(c)) then return c end
            end
        end, 10, what or ("the backend record of " .. t))
    end

    local function run(impl, path, steps, extra)
        local sc = { url = gw:url(path), steps = steps, timeout = 30 }
        for k, v in pairs(extra or {}) do sc[k] = v end
        local t = helpers.ws_client(impl, sc)
        assert.is_nil(t.error, "client error: " .. tostring(t.error))
        assert.is_true(t.open, "client did not open: " .. require("cjson").encode(t.handshake or {}))
        return t
    end

    local function messages(t) return helpers.events_of(t, "message") end

    for _, impl in ipairs(helpers.client_impls) do
        describe(impl .. " client", function()
            it("gets a text message back as text", function()
                local t = run(impl, "/echo/1.0", { { op = "send", text = "hello, weir" }, { op = "wait", messages = 1 } })
                local m = messages(t)
                assert.equal(1, #m)
                assert.equal(1, m[1].opcode)
                assert.equal("hello, weir", m[1].text)
            end)

            it("gets a binary message back as binary, byte for byte", function()
                local data = bytes_0_255()
                local t = run(impl, "/echo/1.0", { { op = "send", b64 = b64(data) }, { op = "wait", messages = 1 } })
                local m = messages(t)
                assert.equal(2, m[1].opcode)
                assert.equal(b64(data), m[1].b64)
            end)

            it("gets unicode text back unchanged", function()
                local t = run(impl, "/echo/1.0", { { op = "send", text = UNICODE }, { op = "wait", messages = 1 } })
                assert.equal(UNICODE, messages(t)[1].text)
            end)

            it("gets empty text and empty binary messages back", function()
                local t = run(impl, "/echo/1.0", {
                    { op = "send", text = "" }, { op = "send", b64 = "" }, { op = "wait", messages = 2 } })
                local m = messages(t)
                assert.equal(2, #m)
                assert.same({ 1, 0 }, { m[1].opcode, m[1].length })
                assert.same({ 2, 0 }, { m[2].opcode, m[2].length })
            end)

            it("gets 200 messages back in order", function()
                local steps = {}
                for i = 1, 200 do steps[#steps + 1] = { op = "send", text = "m" .. i } end
                steps[#steps + 1] = { op = "wait", messages = 200 }
                local m = messages(run(impl, "/echo/1.0", steps))
                assert.equal(200, #m)
                for i = 1, 200 do assert.equal("m" .. i, m[i].text) end
            end)

            it("gets a 16 MiB binary message back intact", function()
                local t = run(impl, "/echo/1.0", {
                    { op = "send", size = 16 * 1024 * 1024 }, { op = "wait", messages = 1 } })
                local m = messages(t)
                assert.equal(1, #m)
                assert.equal(16 * 1024 * 1024, m[1].length)
                assert.equal(t.sent[1].sha256, m[1].sha256)
            end)

            it("gets a 4 MiB unicode text message back intact", function()
                local t = run(impl, "/echo/1.0", {
                    { op = "send", text = "日本語🎉", ["repeat"] = math.floor(4 * 1024 * 1024 / 13) },
                    { op = "wait", messages = 1 } })
                local m = messages(t)
                assert.equal(1, m[1].opcode)
                assert.equal(t.sent[1].length, m[1].length)
                assert.equal(t.sent[1].sha256, m[1].sha256)
            end)

            it("gets a fragmented text message back whole", function()
                local t = run(impl, "/echo/1.0", {
                    { op = "fragments", text = { "héllo, ", "wö", "rld 🎉" } }, { op = "wait", messages = 1 } })
                local m = messages(t)
                assert.equal(1, m[1].opcode)
                assert.equal("héllo, wörld 🎉", m[1].text)
            end)

            it("gets a fragmented binary message back whole", function()
                local parts = { string.rep("\0\1\2", 1000), string.rep("\255", 70000), "\7" }
                local t = run(impl, "/echo/1.0", {
                    { op = "fragments", b64 = { b64(parts[1]), b64(parts[2]), b64(parts[3]) } },
                    { op = "wait", messages = 1 } })
                local m = messages(t)
                assert.equal(2, m[1].opcode)
                assert.equal(#table.concat(parts), m[1].length)
                assert.equal(t.sent[1].sha256, m[1].sha256)
            end)

            it("sends a fragmented message that reaches the backend as the same fragments", function()
                local id = tag()
                run(impl, "/frames/" .. id, {
                    { op = "fragments", text = { "ab", "cd", "ef" } }, { op = "wait", messages = 1 } })
                local rec = record(frames, id, function(c) return c.closed end)
                local data = {}
                for _, e in ipairs(rec.events) do
                    if e.type == "frame" and e.opcode <= 2 then data[#data + 1] = e end
                end
                -- python websockets ends a fragmented message with an empty
                -- final continuation frame; node's ws puts FIN on the last part.
                local want = impl == "python"
                    and { { 1, false, "ab" }, { 0, false, "cd" }, { 0, false, "ef" }, { 0, true, "" } }
                    or { { 1, false, "ab" }, { 0, false, "cd" }, { 0, true, "ef" } }
                local got = {}
                for i, f in ipairs(data) do
                    got[i] = { f.opcode, f.fin, f.text }
                    assert.is_true(f.masked)
                end
                assert.same(want, got)
            end)

            it("pings the backend through weir and gets the backend's pong", function()
                local id = tag()
                local t = run(impl, "/echo/1.0/" .. id, {
                    { op = "ping", payload = "are you there" }, { op = "wait", pongs = 1 } })
                local pongs = helpers.events_of(t, "pong")
                assert.equal(1, #pongs)
                assert.equal("are you there", pongs[1].payload)
                local rec = record(be, id)
                local seen = false
                for _, e in ipairs(rec.events) do
                    if e.type == "ping" and e.payload == "are you there" then seen = true end
                end
                assert.is_true(seen, "the backend never received the client's ping")
            end)

            it("receives the backend's ping and its pong reaches the backend", function()
                local id = tag()
                local t = run(impl, "/echo/1.0/" .. id, {
                    { op = "send", text = '{"__ctl":"ping","payload":"from backend"}' },
                    { op = "wait", pings = 1 },
                    { op = "send", text = "after" }, { op = "wait", messages = 1 } })
                local pings = {}
                for _, p in ipairs(helpers.events_of(t, "ping")) do
                    if p.payload == "from backend" then pings[#pings + 1] = p end
                end
                assert.equal(1, #pings)
                record(be, id, function(c)
                    for _, e in ipairs(c.events) do
                        if e.type == "pong" and e.payload == "from backend" then return true end
                    end
                end, "the client's pong at the backend")
            end)

            it("closes with a code and reason that reach the backend, and gets them back", function()
                local id = tag()
                local t = run(impl, "/echo/1.0/" .. id, {
                    { op = "send", text = "x" }, { op = "wait", messages = 1 },
                    { op = "close", code = 4000, reason = "client says bye" }, { op = "wait", close = true } })
                assert.same({ code = 4000, reason = "client says bye" }, t.closed)
                local rec = record(be, id, function(c) return c.closed end)
                assert.same({ code = 4000, reason = "client says bye", clean = true }, rec.closed)
            end)

            it("gets the backend's close code and reason", function()
                local id = tag()
                local t = run(impl, "/echo/1.0/" .. id, {
                    { op = "send", text = '{"__ctl":"close","code":4001,"reason":"backend says bye"}' },
                    { op = "wait", close = true } })
                assert.same({ code = 4001, reason = "backend says bye" }, t.closed)
                local rec = record(be, id, function(c) return c.closed end)
                assert.equal(4001, rec.closed.code)
                assert.is_true(rec.closed.clean)
            end)

            it("gets a close with a unicode reason unchanged", function()
                local t = run(impl, "/echo/1.0", {
                    { op = "close", code = 1000, reason = "até já 👋" }, { op = "wait", close = true } })
                assert.same({ code = 1000, reason = "até já 👋" }, t.closed)
            end)
        end)
    end

    it("an empty close from the client stays empty at the backend (node client)", function()
        local id = tag()
        local t = run("node", "/echo/1.0/" .. id, { { op = "close" }, { op = "wait", close = true } })
        assert.equal(1005, t.closed.code)       -- ws reports an empty close frame as 1005
        local rec = record(be, id, function(c) return c.closed end)
        assert.equal(1005, rec.closed.code)
        assert.is_true(rec.closed.clean)
    end)
end)
