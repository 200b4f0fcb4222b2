-- RFC 6455 conformance of weir's relay, on both legs, with raw frames.
--
-- A raw client (spec/support/rawws.lua) talks to weir, weir talks to a raw
-- backend (spec/support/raw_backend.lua) that records every frame it gets
-- and can send scripted frames, good or malformed. Each case asserts what
-- docs/protocol.md promises on EACH leg: what the client receives and what
-- the backend receives. The cases come from RFC 6455 itself: sections 5.2
-- (base framing), 5.3 (masking), 5.4 (fragmentation), 5.5 (control frames),
-- 5.6 and 8.1 (UTF-8), 7.4 (close codes), 10.4 (size limits).
--
-- Every connection is named "caseN": the client asks weir for /raw/caseN,
-- weir asks the backend for /caseN, and the backend's script and record are
-- DIR/caseN.json and DIR/caseN.jsonl.

local helpers = require "helpers"
local rawws   = require "support.rawws"
local cjson   = require "cjson.safe"
local socket  = require "socket"

local T = 5                      -- seconds any one exchange may take
local TEXT, BINARY, CONT = 1, 2, 0
local CLOSE, PING, PONG = 8, 9, 10

---------------------------------------------------------------------------
-- harness
---------------------------------------------------------------------------

local ncase = 0                  -- case names are unique across the file

local function start(tag, limits, policies)
    local e = { dir = helpers.tmpdir() .. "/raw-" .. tag, bport = helpers.free_port() }
    assert(os.execute("mkdir -p " .. helpers.shell_quote(e.dir)))
    e.bpid = helpers.spawn({ "luajit", helpers.support .. "/raw_backend.lua",
                             tostring(e.bport), e.dir },
                           { stderr = e.dir .. "/raw_backend.stderr" })
    helpers.wait_port(e.bport, T)
    local lim = { close_timeout = 2 }
    for k, v in pairs(limits or {}) do lim[k] = v end
    e.gw = helpers.start_weir{
        workers = 1,
        listen  = { { address = "127.0.0.1", port = helpers.free_port() } },
        limits  = lim,
        policy_paths = policies and { helpers.fixture_policies } or nil,
        apis    = { {
            name = "Raw", context = "/raw",
            versions = { { version = "1", default = true, policies = policies,
                           endpoints = { production = "ws://127.0.0.1:" .. e.bport } } },
        } },
    }
    return e
end

local function stop(e)
    if not e then return end
    if e.gw then e.gw:stop() end
    if e.bpid then helpers.stop_pid(e.bpid) end
end

local function dump(frames)
    local out = {}
    for i, fr in ipairs(frames or {}) do out[i] = "  " .. rawws.describe(fr) end
    return table.concat(out, "\n")
end

-- A new case: its name, with the backend's script written when given.
local function new_case(e, script)
    ncase = ncase + 1
    local name = "case" .. ncase
    if script then
        local f = assert(io.open(e.dir .. "/" .. name .. ".json", "wb"))
        f:write(rawws.encode_script(script))
        f:close()
    end
    return name
end

-- The backend's record of a case, once the backend is done with it.
local function backend_record(e, name)
    local file = e.dir .. "/" .. name .. ".jsonl"
    local rec
    local ok = pcall(helpers.wait_until, function()
        rec = rawws.read_record(file)
        return rec and rec.done ~= nil
    end, T, "the backend's record of " .. name)
    assert(rec, "the backend never saw " .. name .. " (weir did not connect it)")
    assert(rec.handshake and rec.handshake.ok, "weir's handshake to the backend was refused: "
        .. table.concat(rec.handshake and rec.handshake.errors or {}, "; "))
    assert(ok and rec.done, "the backend's leg of " .. name .. " did not end within "
        .. T .. " s; the backend received:\n" .. dump(rec.recv))
    return rec
end

-- Is `s` valid UTF-8? With `final` false, a sequence cut short at the end
-- counts as valid (the rest may come in the next fragment).
local function utf8_ok(s, final)
    local i, n = 1, #s
    while i <= n do
        local c = s:byte(i)
        local len, lo, hi = 1, 0x80, 0xBF
        if c < 0x80 then len = 1
        elseif c >= 0xC2 and c <= 0xDF then len = 2
        elseif c == 0xE0 then len, lo = 3, 0xA0
        elseif c == 0xED then len, hi = 3, 0x9F
        elseif c >= 0xE1 and c <= 0xEF then len = 3
        elseif c == 0xF0 then len, lo = 4, 0x90
        elseif c >= 0xF1 and c <= 0xF3 then len = 4
        elseif c == 0xF4 then len, hi = 4, 0x8F
        else return false end
        for k = 1, len - 1 do
            local b = s:byte(i + k)
            if not b then return not final end
            if k == 1 then
                if b < lo or b > hi then return false end
            elseif b < 0x80 or b > 0xBF then
                return false
            end
        end
        i = i + len
    end
    return true
end

local function code_ok(code)
    return (code >= 1000 and code <= 1003) or (code >= 1007 and code <= 1014)
        or (code >= 3000 and code <= 4999)
end

-- Everything weir puts on a leg must itself be valid RFC 6455: no RSV bit,
-- no reserved opcode, control frames short and whole, fragments in order,
-- text valid UTF-8, close codes allowed on the wire (never 1005, 1006 or
-- 1015), nothing after its close frame.
local function check_leg(frames, leg)
    local open, text, closed
    for i, fr in ipairs(frames) do
        local where = leg .. ": frame " .. i .. " from weir (" .. rawws.describe(fr) .. ") "
        local function ensure(cond, what)
            assert(cond, where .. what .. "; all frames from weir:\n" .. dump(frames))
        end
        ensure(not closed, "came after weir's close frame")
        ensure(not (fr.rsv1 or fr.rsv2 or fr.rsv3), "has an RSV bit set")
        local op = fr.opcode
        if op >= 8 then
            ensure(op <= 10, "has a reserved control opcode")
            ensure(fr.fin, "is a fragmented control frame")
            ensure(#fr.payload <= 125, "is a control frame over 125 bytes")
            if op == CLOSE then
                closed = true
                ensure(#fr.payload ~= 1, "is a close with a 1-byte payload")
                if fr.code then
                    ensure(fr.code ~= 1005 and fr.code ~= 1006 and fr.code ~= 1015,
                           "puts a reserved close code on the wire")
                    ensure(code_ok(fr.code), "has a close code not allowed on the wire")
                    ensure(utf8_ok(fr.reason, true), "has a close reason that is not UTF-8")
                end
            end
        else
            ensure(op <= 2, "has a reserved data opcode")
            if op == CONT then
                ensure(open, "is a continuation without a message started")
            else
                ensure(not open, "starts a new message inside an unfinished fragmented one")
                open, text = op, op == TEXT and {} or nil
            end
            if text then
                text[#text + 1] = fr.payload
                ensure(utf8_ok(table.concat(text), fr.fin), "makes the text message invalid UTF-8")
            end
            if fr.fin then open, text = nil, nil end
        end
    end
end

local function check_wire(got, rec)
    check_leg(got.frames, "client")
    check_leg(rec.recv, "backend")
end

--- Run one case: the backend follows `script` (if any), the client runs
-- `client(conn)` (if any) and then collects what weir sends it until the
-- close handshake and the end of the connection (`copts`: Conn:collect's).
-- @return got (the client's rawws collect result), rec (the backend's record)
local function run(e, client, script, copts)
    local name = new_case(e, script)
    copts = copts or {}
    local c, err, resp = rawws.connect("127.0.0.1", e.gw.port, { path = "/raw/" .. name, early = copts.early })
    assert(c, "client handshake through weir: " .. tostring(err)
        .. (resp and resp.body and ("\n" .. resp.body) or ""))
    local before = client and client(c, name) or {}   -- frames the client read itself
    copts.timeout = copts.timeout or T
    local got = c:collect(copts)
    c:close()
    for i = #before, 1, -1 do
        table.insert(got.frames, 1, before[i])
        if before[i].opcode <= 2 then table.insert(got.data, 1, before[i]) end
    end
    local rec = backend_record(e, name)
    check_wire(got, rec)
    return got, rec
end

--- A case where the backend speaks: it waits for the client's "go" (so that
-- both legs are up), then runs `steps`.
local function from_backend(e, steps, script, copts)
    script = script or {}
    script.steps = { { wait_opcode = TEXT } }
    for _, st in ipairs(steps) do script.steps[#script.steps + 1] = st end
    return run(e, function(c) c:send_frame{ opcode = TEXT, payload = "go" } end, script, copts)
end

-- Wait until the backend has logged a "peeked" event for case `name`.
local function wait_peeked(e, name)
    helpers.wait_until(function()
        local rec = rawws.read_record(e.dir .. "/" .. name .. ".jsonl")
        for _, ev in ipairs(rec and rec.events or {}) do
            if ev.ev == "peeked" then return true end
        end
    end, T, "the backend to receive the first part of the frame")
end

-- Send FRAME (whole, raw) from client C of case NAME in two parts: its
-- first 100,000 bytes, then, once the backend has them (so the frame is
-- streamed), the rest followed by AFTER.
local function send_streamed(e, c, name, frame, after)
    c:send_raw(frame:sub(1, 100000))
    wait_peeked(e, name)
    c:send_raw(frame:sub(100001) .. (after or ""))
end

local function send(fr, split) return { send = fr, split = split } end
local function close_step(code, reason)
    return send{ opcode = CLOSE, payload = rawws.close_payload(code, reason) }
end

-- Assert that `side` (a collect result or a record) got a close with `code`.
local function assert_close(side, code, leg)
    assert(side.close, leg .. ": no close frame received; frames:\n" .. dump(side.frames or side.recv))
    assert(side.close.code == code, leg .. ": expected close " .. tostring(code) .. ", got "
        .. rawws.describe(side.close) .. "; frames:\n" .. dump(side.frames or side.recv))
end

-- Assert that the client got the error JSON for `problem` then close `code`
-- with the error's message as the reason (docs/errors.md).
-- One exception: when the client is in the middle of a fragmented message
-- from the backend, a text frame cannot legally be sent (RFC 6455 5.4), so
-- then only the close is required (check_leg fails any text frame sent).
local function assert_error(got, problem, code)
    assert_close(got, code, "client")
    local fr = got.data[#got.data]
    if fr and not fr.fin then return end   -- a message from the backend left open
    assert(fr and fr.opcode == TEXT, "client: no error JSON text frame before the close; frames:\n"
        .. dump(got.frames))
    local j = cjson.decode(fr.payload)
    assert(type(j) == "table" and type(j.error) == "table",
        "client: the frame before the close is not the error JSON: " .. fr.payload)
    assert.are.equal("error", j.type)
    assert.are.equal(problem, j.error.type)
    assert.are.equal(code, j.error.code)
    assert.is_string(j.error.message)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", j.timestamp)
    assert.are.equal(j.error.message:sub(1, 123), got.close.reason)
end

local function assert_frames(expected, actual, leg)
    local msg = leg .. ": expected\n" .. dump(expected) .. "\ngot\n" .. dump(actual)
    assert(#expected == #actual, msg)
    for i, x in ipairs(expected) do
        local a = actual[i]
        local fin = x.fin
        if fin == nil then fin = true end
        assert(a.opcode == x.opcode and a.fin == fin and a.payload == (x.payload or ""), msg)
        assert(not (a.rsv1 or a.rsv2 or a.rsv3), msg)
    end
end

-- Assert that weir failed the client's connection (RFC 6455 7.1.7): a
-- close frame with `code` and a reason, and no data frame but `data` (the
-- frames it was sent before; none when nil), in particular no error JSON.
local function assert_failed(got, code, data)
    assert_close(got, code, "client")
    assert(got.close.reason ~= "", "client: the close " .. code .. " has no reason")
    assert_frames(data or {}, got.data, "client")
end

-- The client broke the protocol: its connection is failed with `code` (a
-- message too big, which a well-behaved client can send, gets the error
-- JSON first), the backend gets 1001.
local function client_offended(got, rec, code)
    if code == 1009 then
        assert_error(got, "/problems/message-too-big", code)
    else
        assert_failed(got, code)
    end
    assert_close(rec, 1001, "backend")
end

-- The backend broke the protocol: it gets `code`, the client gets the
-- bad-gateway JSON and 1014.
local function backend_offended(got, rec, code)
    assert_close(rec, code, "backend")
    assert_error(got, "/problems/bad-gateway", 1014)
end

local function bytes(n)
    return rawws.random_bytes(n)
end

-- Frames valid on either leg, then sent in one write with a violation.
local function good_frames(mask)
    return rawws.build{ opcode = TEXT, payload = "before", mask = mask }
        .. rawws.build{ opcode = PING, payload = "p", mask = mask }
        .. rawws.build{ opcode = BINARY, fin = false, payload = "\1\2", mask = mask }
        .. rawws.build{ opcode = CONT, payload = "\3", mask = mask }
end

-- What, sent right after good_frames, breaks the protocol: name, close code, frame.
local VIOLATIONS = {
    { "reserved bits", 1002, { opcode = TEXT, payload = "x", rsv1 = true } },
    { "a reserved opcode", 1002, { opcode = 3, payload = "x" } },
    { "a continuation without a message", 1002, { opcode = CONT, payload = "x" } },
    { "a close with code 1005", 1002, { opcode = CLOSE, payload = rawws.close_payload(1005) } },
    { "invalid UTF-8", 1007, { opcode = TEXT, payload = "ok\255" } },
}

--- For each of `violations`, both ways: good_frames and the violation in one
-- write reach the other peer as the data frames `want`, then the offender's
-- connection is failed. `env()` gives the running gateway.
local function forwarded_then_failed(env, want, violations)
    for _, v in ipairs(violations) do
        local what, code, frame = v[1], v[2], v[3]

        it("client→backend: the messages before " .. what .. " in the same read are forwarded, then " .. code, function()
            local got, rec = run(env(), function(c)
                c:send_raw(good_frames(true) .. rawws.build(setmetatable({ mask = true }, { __index = frame })))
            end)
            assert_frames(want, rec.data, "backend")
            client_offended(got, rec, code)
        end)

        it("backend→client: the messages before " .. what .. " in the same read are forwarded, then " .. code, function()
            local got, rec = from_backend(env(), { { raw = good_frames(false) .. rawws.build(frame) } })
            local upto = {}
            for i = 1, #want do upto[i] = got.data[i] end
            assert_frames(want, upto, "client")
            backend_offended(got, rec, code)
        end)
    end
end

---------------------------------------------------------------------------
-- the cases
---------------------------------------------------------------------------

describe("RFC 6455 through weir", function()
    local e

    lazy_setup(function() e = start("main", { max_message_size = "1m" }) end)
    lazy_teardown(function() stop(e) end)

    describe("payload length encodings (5.2)", function()
        for _, case in ipairs{ { 0, "7-bit" }, { 125, "7-bit" }, { 126, "16-bit" },
                               { 65535, "16-bit" }, { 65536, "64-bit" } } do
            local n, enc = case[1], case[2]

            it("client→backend: " .. n .. " bytes (" .. enc .. ") arrive with the same opcode, FIN and payload", function()
                local payload = bytes(n)
                local got, rec = run(e, function(c)
                    c:send_frame{ opcode = BINARY, payload = payload }
                    c:send_close(1000)
                end)
                assert_frames({ { opcode = BINARY, payload = payload } }, rec.data, "backend")
                assert_close(rec, 1000, "backend")
                assert_close(got, 1000, "client")
            end)

            it("backend→client: " .. n .. " bytes (" .. enc .. ") arrive with the same opcode, FIN and payload", function()
                local payload = bytes(n)
                local got, rec = from_backend(e, { send{ opcode = BINARY, payload = payload },
                                                   close_step(1000) })
                assert_frames({ { opcode = BINARY, payload = payload } }, got.data, "client")
                assert_close(got, 1000, "client")
                assert_close(rec, 1000, "backend")
            end)
        end

        it("client→backend: text frames of 125, 126 and 65536 bytes arrive intact", function()
            local p = { ("a"):rep(125), ("b"):rep(126), ("c"):rep(65536) }
            local got, rec = run(e, function(c)
                for _, x in ipairs(p) do c:send_frame{ opcode = TEXT, payload = x } end
                c:send_close(1000)
            end)
            assert_frames({ { opcode = TEXT, payload = p[1] }, { opcode = TEXT, payload = p[2] },
                            { opcode = TEXT, payload = p[3] } }, rec.data, "backend")
            assert_close(got, 1000, "client")
        end)

        for _, form in ipairs{ 16, 64 } do
            it("client→backend: a non-minimal " .. form .. "-bit length is accepted", function()
                local got, rec = run(e, function(c)
                    c:send_frame{ opcode = TEXT, payload = "short", len_form = form }
                    c:send_frame{ opcode = BINARY, payload = "", len_form = form }
                    c:send_close(1000)
                end)
                assert_frames({ { opcode = TEXT, payload = "short" }, { opcode = BINARY, payload = "" } },
                              rec.data, "backend")
                assert_close(got, 1000, "client")
            end)

            it("backend→client: a non-minimal " .. form .. "-bit length is accepted", function()
                local got = from_backend(e, { send{ opcode = TEXT, payload = "short", len_form = form },
                                              close_step(1000) })
                assert_frames({ { opcode = TEXT, payload = "short" } }, got.data, "client")
                assert_close(got, 1000, "client")
            end)
        end

        it("client: a 64-bit length with the high bit set → 1002", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = BINARY, payload = "abc", len_form = 64, len_high_bit = true }
            end)
            client_offended(got, rec, 1002)
        end)

        it("backend: a 64-bit length with the high bit set → 1002", function()
            local got, rec = from_backend(e, { send{ opcode = BINARY, payload = "abc", len_form = 64,
                                                     len_high_bit = true } })
            backend_offended(got, rec, 1002)
        end)

        it("client→backend: frames written 1 byte at a time arrive intact", function()
            local p1, p2 = ("x"):rep(300), bytes(70000)
            local got, rec = run(e, function(c)
                c:send_frame({ opcode = TEXT, payload = "hello" }, 1)
                c:send_frame({ opcode = BINARY, payload = p1 }, 1)
                -- cut inside the 64-bit length, the mask key and the payload
                c:send_frame({ opcode = BINARY, payload = p2 }, { 1, 2, 3, 6, 9, 10, 11, 13, 15, 100, 40000 })
                c:send_close(1000, "bye")
            end)
            assert_frames({ { opcode = TEXT, payload = "hello" }, { opcode = BINARY, payload = p1 },
                            { opcode = BINARY, payload = p2 } }, rec.data, "backend")
            assert_close(rec, 1000, "backend")
            assert_close(got, 1000, "client")
        end)

        it("backend→client: frames written 1 byte at a time arrive intact", function()
            local p1, p2 = ("y"):rep(300), bytes(70000)
            local got = from_backend(e, {
                send({ opcode = TEXT, payload = "hello" }, 1),
                send({ opcode = BINARY, payload = p1 }, 1),
                send({ opcode = BINARY, payload = p2 }, { 1, 2, 3, 6, 9, 10, 11, 100, 40000 }),
                close_step(1000),
            })
            assert_frames({ { opcode = TEXT, payload = "hello" }, { opcode = BINARY, payload = p1 },
                            { opcode = BINARY, payload = p2 } }, got.data, "client")
            assert_close(got, 1000, "client")
        end)

        it("backend→client: frames sent in the same write as the backend's 101 arrive", function()
            local got = run(e, nil, {
                with_101 = { { opcode = TEXT, payload = "early" }, { opcode = BINARY, payload = "\0\1" } },
                steps = { close_step(1000) },
            })
            assert_frames({ { opcode = TEXT, payload = "early" }, { opcode = BINARY, payload = "\0\1" } },
                          got.data, "client")
            assert_close(got, 1000, "client")
        end)

        it("client→backend: 50 frames in one write arrive as 50 frames", function()
            local out, want = {}, {}
            for i = 1, 50 do
                want[i] = { opcode = i % 2 == 1 and TEXT or BINARY, payload = ("m"):rep(i * 3) }
                out[i] = rawws.build{ opcode = want[i].opcode, payload = want[i].payload, mask = true }
            end
            local _, rec = run(e, function(c)
                c:send_raw(table.concat(out))
                c:send_close(1000)
            end)
            assert_frames(want, rec.data, "backend")
        end)

        it("backend→client: 50 frames in one write arrive as 50 frames", function()
            local out, want = {}, {}
            for i = 1, 50 do
                want[i] = { opcode = i % 2 == 1 and TEXT or BINARY, payload = ("m"):rep(i * 3) }
                out[i] = rawws.build{ opcode = want[i].opcode, payload = want[i].payload }
            end
            local got = from_backend(e, { { raw = table.concat(out) }, close_step(1000) })
            assert_frames(want, got.data, "client")
        end)
    end)

    describe("streaming (protocol.md: a large frame is streamed, never held whole)", function()
        it("client→backend: the first half of a 200 KB frame reaches the backend before the rest is sent", function()
            local p = bytes(200000)
            local _, rec = run(e, function(c, name)
                send_streamed(e, c, name, rawws.build{ opcode = BINARY, payload = p, mask = true })
                c:send_close(1000)
            end, { steps = { { wait_bytes = 50000 } } })
            assert_frames({ { opcode = BINARY, payload = p } }, rec.data, "backend")
        end)

        it("backend→client: the first half of a 200 KB frame reaches the client before the rest is sent", function()
            local p = bytes(200000)
            local frame = rawws.build{ opcode = BINARY, payload = p }
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = TEXT, payload = "go" }
                local n, err = c:peek(50000, socket.gettime() + T)
                assert(n, "client: the first half of the frame did not arrive before the rest was sent: "
                       .. tostring(err))
                c:send_frame{ opcode = TEXT, payload = "more" }
            end, { steps = {
                { wait_opcode = TEXT },                  -- the client's "go"
                { raw = frame:sub(1, 100000) },
                { wait_opcode = TEXT },                  -- the client's "more"
                { raw = frame:sub(100001) },
                close_step(1000),
            } })
            assert_frames({ { opcode = BINARY, payload = p } }, got.data, "client")
            assert.are.equal("more", rec.data[2] and rec.data[2].payload)
        end)

        it("client: invalid UTF-8 in the second half of a streamed text frame → 1007; the backend never gets the frame whole", function()
            local p = ("a"):rep(150000) .. "\255" .. ("b"):rep(49999)
            local got, rec = run(e, function(c, name)
                send_streamed(e, c, name, rawws.build{ opcode = TEXT, payload = p, mask = true })
            end, { steps = { { wait_bytes = 50000 } } })
            assert_failed(got, 1007)
            assert_frames({}, rec.data, "backend")
            assert.is_truthy(rec.done)
        end)
    end)

    describe("masking (5.1, 5.3)", function()
        it("client: an unmasked data frame → 1002; backend gets 1001", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = TEXT, payload = "plain", mask = false }
            end)
            client_offended(got, rec, 1002)
            assert_frames({}, rec.data, "backend")
        end)

        it("client: an unmasked ping → 1002; backend gets 1001", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = PING, payload = "p", mask = false }
            end)
            client_offended(got, rec, 1002)
        end)

        it("backend: a masked data frame → 1002; client gets bad-gateway and 1014", function()
            local got, rec = from_backend(e, { send{ opcode = TEXT, payload = "masked", mask = true } })
            backend_offended(got, rec, 1002)
            assert.are.equal(1, #got.data)      -- only the error JSON
        end)

        it("backend: a masked ping → 1002; client gets bad-gateway and 1014", function()
            local got, rec = from_backend(e, { send{ opcode = PING, payload = "p", mask = true } })
            backend_offended(got, rec, 1002)
        end)

        it("frames weir sends to the backend are masked, with a key other than the client's", function()
            local key = "\1\2\3\4"
            local _, rec = run(e, function(c)
                c:send_frame{ opcode = TEXT, payload = "one", mask = key }
                c:send_frame{ opcode = BINARY, payload = "two", mask = key }
                c:send_frame{ opcode = PING, payload = "three", mask = key }
                c:send_close(1000, "four", { mask = key })
            end)
            assert.are.equal(4, #rec.recv, dump(rec.recv))
            for _, fr in ipairs(rec.recv) do
                assert.is_true(fr.masked, rawws.describe(fr))
                assert.are_not.equal(rawws.tohex(key), rawws.tohex(fr.key))
            end
        end)

        it("client→backend: a frame masked with the all-zero key is accepted", function()
            local _, rec = run(e, function(c)
                c:send_frame{ opcode = TEXT, payload = "zero key", mask = "\0\0\0\0" }
                c:send_close(1000)
            end)
            assert_frames({ { opcode = TEXT, payload = "zero key" } }, rec.data, "backend")
        end)

        it("weir masks each frame to the backend with a fresh key", function()
            local _, rec = run(e, function(c)
                for i = 1, 4 do c:send_frame{ opcode = TEXT, payload = "m" .. i } end
                c:send_close(1000)
            end)
            local keys = {}
            for _, fr in ipairs(rec.recv) do keys[fr.key or ""] = true end
            local distinct = 0
            for _ in pairs(keys) do distinct = distinct + 1 end
            assert.is_true(distinct > 1, "every frame to the backend used the same mask key")
        end)

        it("frames weir sends to the client are not masked", function()
            local got = from_backend(e, {
                send{ opcode = TEXT, payload = "t" }, send{ opcode = BINARY, payload = "b" },
                send{ opcode = PING, payload = "p" }, send{ opcode = PONG, payload = "q" },
                close_step(1000, "bye"),
            })
            assert.are.equal(5, #got.frames, dump(got.frames))
            for _, fr in ipairs(got.frames) do
                assert.is_false(fr.masked, rawws.describe(fr))
            end
        end)
    end)

    describe("reserved bits and opcodes (5.2)", function()
        for _, bit in ipairs{ "rsv1", "rsv2", "rsv3" } do
            it("client: " .. bit:upper() .. " set → 1002; backend gets 1001", function()
                local got, rec = run(e, function(c)
                    c:send_frame{ opcode = TEXT, payload = "x", [bit] = true }
                end)
                client_offended(got, rec, 1002)
                assert_frames({}, rec.data, "backend")
            end)

            it("backend: " .. bit:upper() .. " set → 1002; client gets bad-gateway and 1014", function()
                local got, rec = from_backend(e, { send{ opcode = TEXT, payload = "x", [bit] = true } })
                backend_offended(got, rec, 1002)
            end)
        end

        it("client: RSV1 on a continuation frame → 1002; backend gets 1001", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = TEXT, fin = false, payload = "a" }
                c:send_frame{ opcode = CONT, fin = true, payload = "b", rsv1 = true }
            end)
            client_offended(got, rec, 1002)
        end)

        it("client: RSV1 on a ping → 1002", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = PING, payload = "x", rsv1 = true }
            end)
            client_offended(got, rec, 1002)
        end)

        for _, op in ipairs{ 3, 4, 5, 6, 7, 11, 12, 13, 14, 15 } do
            it("client: reserved opcode " .. op .. " → 1002; backend gets 1001", function()
                local got, rec = run(e, function(c)
                    c:send_frame{ opcode = op, payload = "x" }
                end)
                client_offended(got, rec, 1002)
                assert_frames({}, rec.data, "backend")
            end)

            it("backend: reserved opcode " .. op .. " → 1002; client gets bad-gateway and 1014", function()
                local got, rec = from_backend(e, { send{ opcode = op, payload = "x" } })
                backend_offended(got, rec, 1002)
            end)
        end
    end)

    describe("control frames (5.5)", function()
        for _, op in ipairs{ PING, PONG, CLOSE } do
            local what = ({ [PING] = "ping", [PONG] = "pong", [CLOSE] = "close" })[op]
            local payload = op == CLOSE and rawws.close_payload(1000, ("r"):rep(124)) or ("p"):rep(126)

            it("client: a " .. what .. " with 126 bytes → 1002; backend gets 1001", function()
                local got, rec = run(e, function(c)
                    c:send_frame{ opcode = op, payload = payload }
                end)
                client_offended(got, rec, 1002)
            end)

            it("backend: a " .. what .. " with 126 bytes → 1002; client gets bad-gateway and 1014", function()
                local got, rec = from_backend(e, { send{ opcode = op, payload = payload } })
                backend_offended(got, rec, 1002)
            end)
        end

        for _, op in ipairs{ PING, PONG } do
            local what = op == PING and "ping" or "pong"
            it("client: a fragmented " .. what .. " (FIN=0) → 1002; backend gets 1001", function()
                local got, rec = run(e, function(c)
                    c:send_frame{ opcode = op, payload = "frag", fin = false }
                end)
                client_offended(got, rec, 1002)
            end)

            it("backend: a fragmented " .. what .. " (FIN=0) → 1002; client gets bad-gateway and 1014", function()
                local got, rec = from_backend(e, { send{ opcode = op, payload = "frag", fin = false } })
                backend_offended(got, rec, 1002)
            end)
        end

        it("client: a close with FIN=0 → 1002; backend gets 1001", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = CLOSE, payload = rawws.close_payload(1000), fin = false }
            end)
            client_offended(got, rec, 1002)
        end)

        it("client→backend: a ping with 125 bytes is forwarded intact, and the backend's pong comes back", function()
            local p = bytes(125)
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = PING, payload = p }
                local fr = c:read_frame(T)
                assert(fr and fr.opcode == PONG and fr.payload == p,
                       "client: expected the backend's pong, got " .. rawws.describe(fr))
                c:send_close(1000)
            end)
            assert_frames({ { opcode = PING, payload = p } }, { rec.recv[1] }, "backend")
            assert_close(rec, 1000, "backend")
            assert_close(got, 1000, "client")
        end)

        it("backend→client: a ping with 125 bytes is forwarded intact, and the client's pong goes back", function()
            local p = bytes(125)
            local got, rec = from_backend(e, { send{ opcode = PING, payload = p }, { wait_opcode = PONG },
                                               close_step(1000) })
            assert_frames({ { opcode = PING, payload = p } }, { got.frames[1] }, "client")
            local pong
            for _, fr in ipairs(rec.recv) do if fr.opcode == PONG then pong = fr end end
            assert(pong and pong.payload == p, "backend: the client's pong did not arrive intact\n"
                .. dump(rec.recv))
        end)

        it("client→backend: an unsolicited pong is forwarded", function()
            local _, rec = run(e, function(c)
                c:send_frame{ opcode = PONG, payload = "unasked" }
                c:send_close(1000)
            end)
            assert_frames({ { opcode = PONG, payload = "unasked" } }, { rec.recv[1] }, "backend")
        end)

        it("client→backend: empty ping and pong are forwarded empty", function()
            local _, rec = run(e, function(c)
                c:send_frame{ opcode = PING, payload = "" }
                c:send_frame{ opcode = PONG, payload = "" }
                c:send_close(1000)
            end)
            assert_frames({ { opcode = PING }, { opcode = PONG } }, { rec.recv[1], rec.recv[2] }, "backend")
        end)
    end)

    describe("fragmentation (5.4)", function()
        local frags = {
            { opcode = TEXT, fin = false, payload = "Hello, " },
            { opcode = PING, payload = "between-1" },
            { opcode = CONT, fin = false, payload = "fragmented " },
            { opcode = PING, payload = "between-2" },
            { opcode = CONT, fin = true, payload = "world" },
        }

        it("client→backend: 3 text fragments with pings between arrive as the same frames, in order", function()
            local got, rec = run(e, function(c)
                for _, f in ipairs(frags) do c:send_frame(f) end
                c:send_close(1000)
            end)
            local upto = {}
            for i = 1, #frags do upto[i] = rec.recv[i] end
            assert_frames(frags, upto, "backend")
            assert_close(rec, 1000, "backend")
            assert_close(got, 1000, "client")
        end)

        it("backend→client: 3 text fragments with pings between arrive as the same frames, in order", function()
            local steps = {}
            for i, f in ipairs(frags) do steps[i] = send(f) end
            steps[#steps + 1] = close_step(1000)
            local got = from_backend(e, steps)
            local upto = {}
            for i = 1, #frags do upto[i] = got.frames[i] end
            assert_frames(frags, upto, "client")
        end)

        it("client→backend: a binary message with empty fragments arrives as the same frames", function()
            local m = { { opcode = BINARY, fin = false, payload = "" },
                        { opcode = CONT, fin = false, payload = "\0\255" },
                        { opcode = CONT, fin = true, payload = "" } }
            local _, rec = run(e, function(c)
                for _, f in ipairs(m) do c:send_frame(f) end
                c:send_close(1000)
            end)
            assert_frames(m, rec.data, "backend")
        end)

        it("client→backend: a close in the middle of a fragmented message is forwarded", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = TEXT, fin = false, payload = "half" }
                c:send_close(1000, "enough")
            end)
            assert_frames({ { opcode = TEXT, fin = false, payload = "half" } }, rec.data, "backend")
            assert_close(rec, 1000, "backend")
            assert.are.equal("enough", rec.close.reason)
            assert_close(got, 1000, "client")
        end)

        it("client: a continuation without a message started → 1002; backend gets 1001", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = CONT, fin = true, payload = "orphan" }
            end)
            client_offended(got, rec, 1002)
            assert_frames({}, rec.data, "backend")
        end)

        it("client: a continuation after a complete message → 1002; backend gets 1001", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = TEXT, payload = "done" }
                c:send_frame{ opcode = CONT, fin = false, payload = "orphan" }
            end)
            client_offended(got, rec, 1002)
        end)

        it("backend: a continuation without a message started → 1002; client gets bad-gateway and 1014", function()
            local got, rec = from_backend(e, { send{ opcode = CONT, fin = true, payload = "orphan" } })
            backend_offended(got, rec, 1002)
        end)

        for _, op in ipairs{ TEXT, BINARY } do
            local what = op == TEXT and "text" or "binary"
            it("client: a new " .. what .. " frame inside a fragmented message → 1002; backend gets 1001", function()
                local got, rec = run(e, function(c)
                    c:send_frame{ opcode = TEXT, fin = false, payload = "start" }
                    c:send_frame{ opcode = op, fin = true, payload = "intruder" }
                end)
                client_offended(got, rec, 1002)
                for _, fr in ipairs(rec.data) do
                    assert.are_not.equal("intruder", fr.payload)
                end
            end)

            it("backend: a new " .. what .. " frame inside a fragmented message → 1002; client gets bad-gateway and 1014", function()
                local got, rec = from_backend(e, {
                    send{ opcode = BINARY, fin = false, payload = "start" },
                    send{ opcode = op, fin = true, payload = "intruder" },
                })
                backend_offended(got, rec, 1002)
            end)
        end
    end)

    describe("errors while a message is unfinished (5.4)", function()
        it("client: an unmasked frame while a backend message to it is unfinished → 1002, the client leg stays valid", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = TEXT, payload = "go" }
                local fr = c:read_frame(T)
                assert(fr and fr.opcode == TEXT and not fr.fin, "client: expected the first fragment, got "
                       .. rawws.describe(fr))
                c:send_frame{ opcode = TEXT, payload = "plain", mask = false }
                return { fr }
            end, { steps = { { wait_opcode = TEXT }, send{ opcode = TEXT, fin = false, payload = "half" } } })
            assert_failed(got, 1002, { { opcode = TEXT, fin = false, payload = "half" } })
            assert_close(rec, 1001, "backend")
        end)
    end)

    describe("frames around a violation (7.1.7)", function()
        -- Valid frames that arrive in the same read as a violation are
        -- forwarded first, and what the other peer answers to them until
        -- its close still reaches the offender; only then is the offender's
        -- connection failed.
        local want = { { opcode = TEXT, payload = "before" }, { opcode = BINARY, fin = false, payload = "\1\2" },
                       { opcode = CONT, payload = "\3" } }
        it("client→backend: the backend's answer to a message sent before a violation reaches the client before its close", function()
            local got, rec = run(e, function(c)
                c:send_raw(rawws.build{ opcode = TEXT, payload = "question", mask = true }
                           .. rawws.build{ opcode = TEXT, payload = "x", rsv1 = true, mask = true })
            end, { steps = { { wait_opcode = TEXT }, send{ opcode = TEXT, payload = "answer" } } })
            assert_frames({ { opcode = TEXT, payload = "question" } }, rec.data, "backend")
            assert_failed(got, 1002, { { opcode = TEXT, payload = "answer" } })
            assert_close(rec, 1001, "backend")
        end)

        it("backend→client: the client's answer to a message sent before a violation reaches the backend before its close", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = TEXT, payload = "go" }
                local fr = c:read_frame(T)
                assert(fr and fr.opcode == TEXT and fr.payload == "question",
                       "client: expected the backend's question, got " .. rawws.describe(fr))
                c:send_frame{ opcode = TEXT, payload = "answer" }
                return { fr }
            end, { steps = { { wait_opcode = TEXT },
                             { raw = rawws.build{ opcode = TEXT, payload = "question" }
                                     .. rawws.build{ opcode = TEXT, payload = "x", rsv1 = true } } } })
            assert_frames({ { opcode = TEXT, payload = "go" }, { opcode = TEXT, payload = "answer" } },
                          rec.data, "backend")
            backend_offended(got, rec, 1002)
        end)

        it("client: a backend that never answers weir's close does not keep the client's 1002 past close_timeout", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = TEXT, payload = "x", rsv1 = true }
            end, { echo_close = false, linger = true })
            client_offended(got, rec, 1002)
            assert.is_true(got.eof, "client: the connection did not end")
        end)

        it("client→backend: messages sent with the request head before a violation are forwarded, then 1002", function()
            local bad = rawws.build{ opcode = TEXT, payload = "x", rsv1 = true, mask = true }
            local got, rec = run(e, nil, nil, { early = good_frames(true) .. bad })
            assert_frames(want, rec.data, "backend")
            client_offended(got, rec, 1002)
        end)

        it("backend→client: messages sent with the backend's 101 before a violation are forwarded, then 1002", function()
            local got, rec = run(e, nil, { with_101 = { { opcode = TEXT, payload = "before" },
                                                         { opcode = TEXT, payload = "x", rsv1 = true } } })
            assert_frames({ { opcode = TEXT, payload = "before" } }, { got.data[1] }, "client")
            backend_offended(got, rec, 1002)
        end)

        forwarded_then_failed(function() return e end, want, VIOLATIONS)
    end)

    describe("UTF-8 (5.6, 8.1)", function()
        -- "κόσμε €𝄞" = ce ba | e1 bd b9 | cf 83 | ce bc | ce b5 | 20 | e2 82 ac | f0 9d 84 9e
        local text = "\206\186\225\189\185\207\131\206\188\206\181 \226\130\172\240\157\132\158"

        local splits = {
            ["at code-point boundaries"] = { 2, 5, 7, 9, 11, 12, 15 },
            ["in the middle of code points"] = { 1, 3, 4, 13, 14, 16, 17, 18 },
        }
        for how, cuts in pairs(splits) do
            local m, last = {}, 0
            for _, cut in ipairs(cuts) do
                m[#m + 1] = { opcode = #m == 0 and TEXT or CONT, fin = false, payload = text:sub(last + 1, cut) }
                last = cut
            end
            m[#m + 1] = { opcode = CONT, fin = true, payload = text:sub(last + 1) }

            it("client→backend: valid UTF-8 split " .. how .. " is delivered", function()
                local got, rec = run(e, function(c)
                    for _, f in ipairs(m) do c:send_frame(f) end
                    c:send_close(1000)
                end)
                assert_frames(m, rec.data, "backend")
                assert_close(got, 1000, "client")
            end)

            it("backend→client: valid UTF-8 split " .. how .. " is delivered", function()
                local steps = {}
                for i, f in ipairs(m) do steps[i] = send(f) end
                steps[#steps + 1] = close_step(1000)
                local got = from_backend(e, steps)
                assert_frames(m, got.data, "client")
                assert_close(got, 1000, "client")
            end)
        end

        it("client→backend: a text frame with the largest code points is delivered", function()
            local s = "\239\191\191\244\143\191\191\237\159\191\238\128\128" -- U+FFFF U+10FFFF U+D7FF U+E000
            local _, rec = run(e, function(c)
                c:send_frame{ opcode = TEXT, payload = s }
                c:send_close(1000)
            end)
            assert_frames({ { opcode = TEXT, payload = s } }, rec.data, "backend")
        end)

        it("client→backend: binary frames are not checked as UTF-8", function()
            local _, rec = run(e, function(c)
                c:send_frame{ opcode = BINARY, payload = "\255\254\192\128" }
                c:send_close(1000)
            end)
            assert_frames({ { opcode = BINARY, payload = "\255\254\192\128" } }, rec.data, "backend")
        end)

        local invalid = {
            { "an overlong 2-byte '/' (C0 AF)", "a\192\175" },
            { "an overlong 2-byte (C1 BF)", "\193\191" },
            { "an overlong 3-byte (E0 80 AF)", "\224\128\175" },
            { "an overlong 4-byte (F0 80 80 AF)", "\240\128\128\175" },
            { "the surrogate U+D800 (ED A0 80)", "x\237\160\128y" },
            { "the surrogate U+DFFF (ED BF BF)", "\237\191\191" },
            { "a code point above U+10FFFF (F4 90 80 80)", "\244\144\128\128" },
            { "a lone 0xC0 byte", "ab\192" .. "cd" },
            { "a 0xF5 byte", "\245\128\128\128" },
            { "a 0xFF byte", "ok\255" },
            { "a lone continuation byte (80)", "\128" },
            { "a sequence truncated at the end of the message (E2 82)", "abc\226\130" },
        }
        for _, case in ipairs(invalid) do
            local what, payload = case[1], case[2]

            it("client: " .. what .. " → 1007; backend gets 1001", function()
                local got, rec = run(e, function(c)
                    c:send_frame{ opcode = TEXT, payload = payload }
                end)
                client_offended(got, rec, 1007)
            end)

            it("backend: " .. what .. " → 1007; client gets bad-gateway and 1014", function()
                local got, rec = from_backend(e, { send{ opcode = TEXT, payload = payload } })
                backend_offended(got, rec, 1007)
            end)
        end

        it("client: a message whose last fragment ends inside a code point → 1007; backend gets 1001", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = TEXT, fin = false, payload = "abc\226" }
                c:send_frame{ opcode = CONT, fin = true, payload = "\130" }
            end)
            client_offended(got, rec, 1007)
        end)

        it("backend: a message whose last fragment ends inside a code point → 1007; client gets bad-gateway and 1014", function()
            local got, rec = from_backend(e, {
                send{ opcode = TEXT, fin = false, payload = "abc\226" },
                send{ opcode = CONT, fin = true, payload = "\130" },
            })
            backend_offended(got, rec, 1007)
        end)

        it("client: invalid UTF-8 in a later fragment → 1007; backend gets 1001", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = TEXT, fin = false, payload = "fine so far \226" }
                c:send_frame{ opcode = CONT, fin = false, payload = "\40" }   -- E2 then '(' : broken
            end)
            client_offended(got, rec, 1007)
        end)

        it("client: invalid UTF-8 in a close reason → 1007; backend gets 1001", function()
            local got, rec = run(e, function(c)
                c:send_close(1000, "bad \255 reason")
            end)
            client_offended(got, rec, 1007)
        end)

        it("backend: invalid UTF-8 in a close reason → 1007; client gets bad-gateway and 1014", function()
            local got, rec = from_backend(e, { close_step(1000, "bad \237\160\128 reason") })
            backend_offended(got, rec, 1007)
        end)
    end)

    describe("close (5.5.1, 7.4)", function()
        for _, code in ipairs{ 1000, 1001, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                               3000, 4999 } do
            local reason = "reason " .. code .. " ✓"

            it("client→backend: close " .. code .. " and its reason are forwarded intact, and the answer comes back", function()
                local got, rec = run(e, function(c) c:send_close(code, reason) end)
                assert_close(rec, code, "backend")
                assert.are.equal(reason, rec.close.reason)
                assert_close(got, code, "client")
                assert.are.equal(reason, got.close.reason)
                assert_frames({}, got.data, "client")
            end)

            it("backend→client: close " .. code .. " and its reason are forwarded intact, and the answer goes back", function()
                local got, rec = from_backend(e, { close_step(code, reason) })
                assert_close(got, code, "client")
                assert.are.equal(reason, got.close.reason)
                assert_frames({}, got.data, "client")
                assert_close(rec, code, "backend")
                assert.are.equal(reason, rec.close.reason)
            end)
        end

        it("client→backend: a close with a 123-byte reason is forwarded intact", function()
            local reason = ("z"):rep(123)
            local got, rec = run(e, function(c) c:send_close(4000, reason) end)
            assert_close(rec, 4000, "backend")
            assert.are.equal(reason, rec.close.reason)
            assert.are.equal(reason, got.close.reason)
        end)

        it("backend→client: a close with a 123-byte reason is forwarded intact", function()
            local reason = ("y"):rep(123)
            local got, rec = from_backend(e, { close_step(4000, reason) })
            assert_close(got, 4000, "client")
            assert.are.equal(reason, got.close.reason)
            assert.are.equal(reason, rec.close.reason)
        end)

        it("client→backend: an empty close is forwarded empty, and the empty answer comes back", function()
            local got, rec = run(e, function(c) c:send_close(nil) end)
            assert(rec.close, "backend: no close frame\n" .. dump(rec.recv))
            assert.are.equal("", rec.close.payload)
            assert(got.close, "client: no close frame\n" .. dump(got.frames))
            assert.are.equal("", got.close.payload)
        end)

        it("backend→client: an empty close is forwarded empty, and the empty answer goes back", function()
            local got, rec = from_backend(e, { send{ opcode = CLOSE, payload = "" } })
            assert(got.close, "client: no close frame\n" .. dump(got.frames))
            assert.are.equal("", got.close.payload)
            assert(rec.close, "backend: no close frame\n" .. dump(rec.recv))
            assert.are.equal("", rec.close.payload)
        end)

        it("after the close handshake weir ends the client's TCP connection", function()
            local got = run(e, function(c) c:send_close(1000) end)
            assert_close(got, 1000, "client")
            assert.is_true(got.eof, "client: the connection was not ended after the close handshake")
            assert_frames({}, got.after_close, "client (after the close)")
        end)

        it("a backend that never answers the close is disconnected after close_timeout; the client's leg ends", function()
            local t0 = helpers.now()
            local got, rec = run(e, function(c) c:send_close(1000, "bye") end,
                                 { echo_close = false, linger = true })
            assert_close(rec, 1000, "backend")
            assert.are.equal("eof", rec.done.why)
            assert(got.close, "client: no close frame; frames:\n" .. dump(got.frames))
            assert.is_true(got.eof, "client: the connection did not end")
            assert.is_true(helpers.now() - t0 < 2 + 2.5, "took longer than close_timeout")
        end)

        it("a client that never answers the close is disconnected after close_timeout; the backend's leg ends", function()
            local got, rec = from_backend(e, { close_step(1000, "bye") }, { linger = true },
                                          { echo_close = false })
            assert_close(got, 1000, "client")
            assert.is_true(got.eof, "client: weir did not end the connection of a client that ignored its close")
            assert.is_nil(got.err)
            assert.is_truthy(rec.done)
        end)

        it("client: a 1-byte close payload → 1002; backend gets 1001", function()
            local got, rec = run(e, function(c)
                c:send_frame{ opcode = CLOSE, payload = "\3" }
            end)
            client_offended(got, rec, 1002)
        end)

        it("backend: a 1-byte close payload → 1002; client gets bad-gateway and 1014", function()
            local got, rec = from_backend(e, { send{ opcode = CLOSE, payload = "\3" } })
            backend_offended(got, rec, 1002)
        end)

        for _, code in ipairs{ 0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535 } do
            it("client: close code " .. code .. " → 1002; backend gets 1001", function()
                local got, rec = run(e, function(c) c:send_close(code, "x") end)
                client_offended(got, rec, 1002)
            end)

            it("backend: close code " .. code .. " → 1002; client gets bad-gateway and 1014", function()
                local got, rec = from_backend(e, { close_step(code, "x") })
                backend_offended(got, rec, 1002)
            end)
        end

        it("backend: TCP ends without a close frame → client gets bad-gateway and 1014", function()
            local got = from_backend(e, { { close_tcp = true } })
            assert_error(got, "/problems/bad-gateway", 1014)
        end)

        it("client: TCP ends without a close frame → backend gets 1001", function()
            local name = new_case(e)
            local c = assert(rawws.connect("127.0.0.1", e.gw.port, { path = "/raw/" .. name }))
            c:send_frame{ opcode = TEXT, payload = "bye" }
            c:close()
            local rec = backend_record(e, name)
            check_wire({ frames = {} }, rec)
            assert_close(rec, 1001, "backend")
        end)
    end)
end)

describe("RFC 6455 through weir, max_message_size = 1000 (10.4)", function()
    local e

    lazy_setup(function() e = start("small", { max_message_size = 1000 }) end)
    lazy_teardown(function() stop(e) end)

    it("client→backend: a 1000-byte message is delivered", function()
        local p = bytes(1000)
        local got, rec = run(e, function(c)
            c:send_frame{ opcode = BINARY, payload = p }
            c:send_close(1000)
        end)
        assert_frames({ { opcode = BINARY, payload = p } }, rec.data, "backend")
        assert_close(got, 1000, "client")
    end)

    it("client→backend: messages of 800 bytes each, one after another, are delivered", function()
        local ps = { bytes(800), bytes(800), bytes(800) }
        local _, rec = run(e, function(c)
            for _, p in ipairs(ps) do c:send_frame{ opcode = BINARY, payload = p } end
            c:send_close(1000)
        end)
        assert_frames({ { opcode = BINARY, payload = ps[1] }, { opcode = BINARY, payload = ps[2] },
                        { opcode = BINARY, payload = ps[3] } }, rec.data, "backend")
    end)

    it("client→backend: control frames between fragments do not count toward the message", function()
        local m = { { opcode = BINARY, fin = false, payload = bytes(500) },
                    { opcode = PING, payload = bytes(125) },
                    { opcode = CONT, fin = true, payload = bytes(500) } }
        local _, rec = run(e, function(c)
            for _, f in ipairs(m) do c:send_frame(f) end
            c:send_close(1000)
        end)
        assert_frames(m, { rec.recv[1], rec.recv[2], rec.recv[3] }, "backend")
    end)

    it("client: a 1001-byte frame → 1009, none of it forwarded; backend gets 1001", function()
        local got, rec = run(e, function(c)
            c:send_frame{ opcode = BINARY, payload = bytes(1001) }
        end)
        client_offended(got, rec, 1009)
        assert_frames({}, rec.data, "backend")
    end)

    it("client: a 1001-byte text frame → 1009; backend gets 1001", function()
        local got, rec = run(e, function(c)
            c:send_frame{ opcode = TEXT, payload = ("t"):rep(1001) }
        end)
        client_offended(got, rec, 1009)
        assert_frames({}, rec.data, "backend")
    end)

    it("client: 600 + 600 bytes of fragments → 1009, the second fragment not forwarded; backend gets 1001", function()
        local first = bytes(600)
        local got, rec = run(e, function(c)
            c:send_frame{ opcode = BINARY, fin = false, payload = first }
            c:send_frame{ opcode = CONT, fin = true, payload = bytes(600) }
        end)
        client_offended(got, rec, 1009)
        assert_frames({ { opcode = BINARY, fin = false, payload = first } }, rec.data, "backend")
    end)

    it("client: 11 fragments of 100 bytes → 1009 at the 11th; backend gets the first 10 and 1001", function()
        local m = {}
        for i = 1, 11 do
            m[i] = { opcode = i == 1 and TEXT or CONT, fin = i == 11, payload = ("f"):rep(100) }
        end
        local got, rec = run(e, function(c)
            for _, f in ipairs(m) do c:send_frame(f) end
        end)
        client_offended(got, rec, 1009)
        m[11] = nil
        assert_frames(m, rec.data, "backend")
    end)

    it("client→backend: 10 fragments of 100 bytes (exactly 1000) are delivered", function()
        local m = {}
        for i = 1, 10 do
            m[i] = { opcode = i == 1 and TEXT or CONT, fin = i == 10, payload = ("f"):rep(100) }
        end
        local got, rec = run(e, function(c)
            for _, f in ipairs(m) do c:send_frame(f) end
            c:send_close(1000)
        end)
        assert_frames(m, rec.data, "backend")
        assert_close(got, 1000, "client")
    end)

    it("backend: a 1001-byte frame → 1009; client gets bad-gateway and 1014, and none of it", function()
        local got, rec = from_backend(e, { send{ opcode = BINARY, payload = bytes(1001) } })
        backend_offended(got, rec, 1009)
        assert.are.equal(1, #got.data, dump(got.data))   -- only the error JSON
    end)

    it("backend: 600 + 600 bytes of fragments → 1009; client gets bad-gateway and 1014", function()
        local first = bytes(600)
        local got, rec = from_backend(e, {
            send{ opcode = BINARY, fin = false, payload = first },
            send{ opcode = CONT, fin = true, payload = bytes(600) },
        })
        backend_offended(got, rec, 1009)
        assert_frames({ { opcode = BINARY, fin = false, payload = first } },
                      { got.data[1] }, "client")
    end)

    it("backend→client: a 1000-byte message is delivered", function()
        local p = bytes(1000)
        local got = from_backend(e, { send{ opcode = BINARY, payload = p }, close_step(1000) })
        assert_frames({ { opcode = BINARY, payload = p } }, got.data, "client")
    end)
end)

describe("RFC 6455 through weir, with frame hooks both ways", function()
    local e

    lazy_setup(function() e = start("hooks", nil, { { "spec-pass", {} } }) end)
    lazy_teardown(function() stop(e) end)

    -- whole messages: the fragmented one arrives as one frame
    local want = { { opcode = TEXT, payload = "before" }, { opcode = BINARY, payload = "\1\2\3" } }
    forwarded_then_failed(function() return e end, want, { VIOLATIONS[1], VIOLATIONS[#VIOLATIONS] })
end)

describe("RFC 6455 through weir, with an on_frame_out that closes", function()
    local e

    lazy_setup(function() e = start("outclose", nil, { { "spec-outclose", {} } }) end)
    lazy_teardown(function() stop(e) end)

    it("sends the client the messages before the closing one, then the close, then nothing", function()
        -- one write of the backend: its hooks run on the messages as a row
        local row = {}
        for i, p in ipairs({ "a", "b", "close:4000", "c" }) do row[i] = rawws.build{ opcode = TEXT, payload = p } end
        local got, rec = from_backend(e, { { raw = table.concat(row) } })
        assert_frames({ { opcode = TEXT, payload = "a" }, { opcode = TEXT, payload = "b" } }, got.data, "client")
        assert_close(got, 4000, "client")
        assert_close(rec, 1001, "backend")
    end)
end)

describe("RFC 6455 through weir, with message-schema closing on a violation", function()
    local e

    lazy_setup(function()
        e = start("strict", nil, { { "message-schema", { type_field = "cmd", allow_binary = true,
                                                         on_violation = "close" } } })
    end)
    lazy_teardown(function() stop(e) end)

    it("closes the backend with a close frame when it refuses a message right behind a streamed frame", function()
        -- the binary frame is streamed (nothing checks its payload); the read
        -- that ends it holds a text message message-schema refuses
        local p = bytes(200000)
        local got, rec = run(e, function(c, name)
            send_streamed(e, c, name, rawws.build{ opcode = BINARY, payload = p, mask = true },
                          rawws.build{ opcode = TEXT, payload = "not json", mask = true })
        end, { steps = { { wait_bytes = 50000 } } })
        assert_frames({ { opcode = BINARY, payload = p } }, rec.data, "backend")
        assert_close(rec, 1001, "backend")
        assert_close(got, 1008, "client")
    end)
end)

teardown(function() helpers.cleanup() end)
