-- Frame hooks on many messages of one read (core/relay.c weir_relay_batch):
-- a client that sends a row of messages in one write gets each message's
-- hooks run in order, every verdict applied to its own message, and the
-- rest of the row treated as if the messages had come one by one: after a
-- verdict, a close (the messages before it go first), a hook that waits,
-- a budget overrun, invalid UTF-8.
-- The client is spec/support/rawws.lua, so a row really is one write; the
-- test policies are spec/fixtures/policies (spec-verdicts.lua,
-- spec-http.lua, spec-budget.lua).
local helpers = require "helpers"
local rawws = require "support.rawws"

describe("frame hooks on a row of messages sent in one write", function()
    local be, srv, gw
    local seq = 0

    setup(function()
        be = helpers.start_backend("echo")
        srv = helpers.start_slow_http()
        gw = helpers.start_weir({
            workers = 1,
            policy_paths = { helpers.fixture_policies },
            limits = { policy_budget = "50ms" },
            apis = {
                helpers.policy_api("Verdicts", "/verdicts", be, { { "spec-verdicts", {} } }),
                helpers.policy_api("Io", "/io", be, { { "spec-http", { base = srv:url("") } } }),
                helpers.policy_api("Checked", "/checked", be, {
                    { "message-schema", { type_field = "cmd" } }, { "spec-verdicts", {} } }),
                -- spec-budget (540) runs before spec-verdicts (510)
                helpers.policy_api("Open", "/open", be, {
                    { "spec-budget", {}, fail_open = true }, { "spec-verdicts", {} } }),
            },
        })
    end)
    teardown(helpers.cleanup)

    local function connect(path)
        seq = seq + 1
        local id = "r" .. seq
        local c, err = rawws.connect("127.0.0.1", gw.port, { path = path .. "/1.0/" .. id })
        assert(c, err)
        return c, id
    end

    -- MSGS (strings: text; { binary = s }: binary) as one write
    local function send_row(c, msgs)
        local out = {}
        for i, m in ipairs(msgs) do
            if type(m) == "table" then
                out[i] = rawws.build { opcode = 2, payload = m.binary, mask = true }
            else
                out[i] = rawws.build { opcode = 1, payload = m, mask = true }
            end
        end
        assert(c:send_raw(table.concat(out)))
    end

    -- The next N data frames from weir, as { opcode, payload }
    local function read_n(c, n)
        local got = {}
        while #got < n do
            local f, err = c:read_frame(10)
            assert(f, "after " .. #got .. " of " .. n .. " frames: " .. tostring(err))
            assert(f.opcode == 1 or f.opcode == 2, "a frame of opcode " .. f.opcode .. " after " .. #got)
            got[#got + 1] = { f.opcode, f.payload }
        end
        return got
    end

    -- The texts the echo backend received on connection ID, once it has N
    local function backend_texts(id, n)
        return helpers.texts(be:record(id, function(c) return #helpers.texts(c) >= n end))
    end

    local function close_of(c)
        while true do
            local f, err = c:read_frame(10)
            assert(f, "no close frame: " .. tostring(err))
            if f.opcode == 8 then return rawws.parse_close(f.payload) end
        end
    end

    it("runs every message's hooks in order and forwards each as it was sent", function()
        local c = connect("/verdicts")
        local msgs, want = {}, {}
        for i = 1, 100 do
            if i % 7 == 0 then
                msgs[i] = { binary = "\0\1\2bin" .. i }
                want[#want + 1] = { 2, msgs[i].binary }
            elseif i == 20 or i == 50 or i == 99 then
                msgs[i] = "count"                                 -- replied by the hook, not forwarded
            else
                msgs[i] = "message " .. i .. " " .. ("é"):rep(i % 5)
                want[#want + 1] = { 1, msgs[i] }
            end
        end
        send_row(c, msgs)
        local got = read_n(c, #want + 3)
        local echoes, counts = {}, {}
        for _, g in ipairs(got) do
            if g[2]:match("^count:") then counts[#counts + 1] = g[2] else echoes[#echoes + 1] = g end
        end
        assert.same({ "count:1", "count:2", "count:3" }, counts)
        assert.same(want, echoes)
        c:close()
    end)

    it("applies a verdict to its own message and runs the rest of the row", function()
        local c, id = connect("/verdicts")
        send_row(c, { "a", "replace:X", "b", "drop", "c", "reply:R", "d", "replace:Y", "e" })
        local got = read_n(c, 8)
        local echoes, replies = {}, {}
        for _, g in ipairs(got) do
            if g[2] == "R" then replies[#replies + 1] = g[2] else echoes[#echoes + 1] = g[2] end
        end
        assert.same({ "R" }, replies)
        assert.same({ "a", "X", "b", "c", "d", "Y", "e" }, echoes)
        assert.same({ "a", "X", "b", "c", "d", "Y", "e" }, backend_texts(id, 7))
        c:close()
    end)

    -- What the backend got on connection ID once it is closed: the texts
    -- (its WebSocket library reads nothing after a close frame) and the
    -- close's code
    local function backend_until_close(id)
        local rec = be:record(id, function(r) return r.closed end, 10, "the backend's closed connection " .. id)
        return helpers.texts(rec), rec.closed.code
    end

    it("forwards the messages before one whose hook closed the connection, then the close, then nothing", function()
        local c, id = connect("/verdicts")
        send_row(c, { "a", "replace:X", "b", "close:4000:bye", "c", "d" })
        local code, reason = close_of(c)          -- (the echoes come after it: dropped)
        assert.equal(4000, code)
        assert.equal("bye", reason)
        local texts, bcode = backend_until_close(id)
        assert.same({ "a", "X", "b" }, texts)
        assert.equal(1001, bcode)
        c:close()
    end)

    it("forwards the messages before one whose hook closed it when the core checks the messages too", function()
        -- message-schema's inspector in the chain: each message goes to the
        -- hooks on its own (weir_relay_inline), not as a row
        local c, id = connect("/checked")
        send_row(c, { '{"cmd":"a"}', '{"cmd":"b"}', '{"cmd":"close:4000:bye"}', '{"cmd":"c"}' })
        assert.equal(4000, (close_of(c)))
        local texts, bcode = backend_until_close(id)
        assert.same({ '{"cmd":"a"}', '{"cmd":"b"}' }, texts)
        assert.equal(1001, bcode)
        c:close()
    end)

    it("holds the rest of the row while a hook waits, then forwards it in order", function()
        local c, id = connect("/io")
        local hold = "row" .. seq
        send_row(c, { "a", "get:/hold/" .. hold, "b", "get:/delay/0", "c" })
        helpers.wait_until(function() return srv:seen(hold) end, 10, "weir's request for /hold/" .. hold)
        assert.same({ { 1, "a" } }, read_n(c, 1))
        assert.same({ "a" }, backend_texts(id, 1))          -- b and c wait behind the held message
        srv:release(hold)
        local got = read_n(c, 4)
        assert.equal("b", got[2][2])
        assert.equal("c", got[4][2])
        assert.matches("^200:", got[1][2])
        assert.matches("^200:", got[3][2])
        c:close()
    end)

    it("runs the rest of the row after a fail_open policy stopped by the budget", function()
        local c, id = connect("/open")
        send_row(c, { "a", "x#spin", "replace:R", "b" })
        assert.same({ { 1, "a" }, { 1, "x#spin" }, { 1, "R" }, { 1, "b" } }, read_n(c, 4))
        assert.same({ "a", "x#spin", "R", "b" }, backend_texts(id, 4))
        c:close()
    end)

    -- Messages bigger than a read and than weir's batch of small writes
    -- (core/proxy.h WEIR_BATCH_COPY) go to the backend framed where they were
    -- assembled: byte for byte, and in order with the small ones around them.
    local function bytes(n, seed)
        local t, x = {}, seed
        for i = 1, n do
            x = (x * 1103515245 + 12345) % 2147483648
            t[i] = string.char(x % 256)
        end
        return table.concat(t)
    end

    -- spec-verdicts' answer to binary message MIRRORED, taken out of GOT
    -- (read_n's): it comes straight from weir, ahead of echoes sent before it
    local function take_answer(got, mirrored)
        local answer
        for i, f in ipairs(got) do
            if #f[2] == #mirrored then answer = table.remove(got, i); break end
        end
        assert.is_table(answer, "no answer of " .. #mirrored .. " bytes")
        assert.equal(2, answer[1])
        assert.is_true(mirrored == answer[2], "the hook read the message changed")
        return answer
    end

    it("forwards big messages whole and byte for byte, in order with small ones", function()
        local c = connect("/verdicts")
        local b1, b2, b3 = bytes(16 * 1024 + 1, 1), bytes(64 * 1024, 2), bytes(200 * 1000, 3)
        -- spec-verdicts reads a binary message of 170,777 bytes (then it
        -- passes) and answers one of 150,555 with what it read (both more
        -- than a read of 128 KiB: assembled)
        local peeked, mirrored = bytes(170777, 4), bytes(150555, 5)
        local t = "big " .. string.rep("0123456789", 7000)
        send_row(c, { "a", { binary = b1 }, "b", { binary = b2 }, t, { binary = b3 }, "c",
                      { binary = peeked }, { binary = mirrored }, { binary = b1 } })
        local got = read_n(c, 10)
        table.insert(got, 9, take_answer(got, mirrored))
        assert.same({ 1, "a" }, got[1])
        assert.same({ 1, "b" }, got[3])
        assert.same({ 1, "c" }, got[7])
        for i, want in pairs({ [2] = b1, [4] = b2, [6] = b3, [8] = peeked, [10] = b1 }) do
            assert.equal(2, got[i][1])
            assert.equal(#want, #got[i][2], "message " .. i .. "'s length")
            assert.is_true(want == got[i][2], "message " .. i .. " changed on the way")
        end
        assert.same({ 1, t }, got[5])
        c:close()
    end)

    it("shows hooks whole the messages a read cuts, when the rest is read behind them", function()
        -- each fits a read of 128 KiB but not what the last one left: cut,
        -- and read on behind in the read buffer (core/relay.c weir_relay_read);
        -- spec-verdicts reads the one ending in 777, answers the one ending
        -- in 555 with what it read, and sends the backend replace:'s argument
        local c = connect("/verdicts")
        local b1, peeked, mirrored, b2 = bytes(100000, 12), bytes(90777, 13), bytes(100555, 14), bytes(70000, 15)
        local replaced = string.rep("0123456789", 9000)
        send_row(c, { { binary = b1 }, { binary = peeked }, "replace:" .. replaced, { binary = mirrored },
                      { binary = b2 }, "after" })
        local got = read_n(c, 6)
        take_answer(got, mirrored)
        assert.equal(5, #got)
        for i, want in ipairs({ { 2, b1 }, { 2, peeked }, { 1, replaced }, { 2, b2 }, { 1, "after" } }) do
            assert.equal(want[1], got[i][1], "message " .. i .. "'s opcode")
            assert.equal(#want[2], #got[i][2], "message " .. i .. "'s length")
            assert.is_true(want[2] == got[i][2], "message " .. i .. " changed on the way")
        end
        c:close()
    end)

    it("shows a client's binary messages of a row to the hooks that read them, and forwards all byte for byte",
       function()
        -- in one read: kept masked for the backend where they lie, and
        -- unmasked only for the hooks that read them (spec-verdicts reads
        -- lengths ending in 777, answers those ending in 555 with what it read)
        local c = connect("/verdicts")
        local plain1, peeked, mirrored, plain2 = bytes(900, 6), bytes(1777, 7), bytes(2555, 8), bytes(4000, 9)
        send_row(c, { { binary = plain1 }, { binary = peeked }, "a", { binary = mirrored }, { binary = plain2 } })
        local got = read_n(c, 5)
        take_answer(got, mirrored)
        assert.same({ 2, plain1 }, got[1])
        assert.same({ 2, peeked }, got[2])
        assert.same({ 1, "a" }, got[3])
        assert.same({ 2, plain2 }, got[4])
        c:close()
    end)

    it("forwards a row's binary messages byte for byte after a hook before them waited", function()
        -- the hook of the first waits: the binary ones behind it were made
        -- ready for the backend but not run, and are read again after it
        local c = connect("/io")
        local hold = "bin" .. seq
        local b1, b2 = bytes(3000, 10), bytes(5000, 11)
        send_row(c, { "pass:/hold/" .. hold .. "\n", { binary = b1 }, { binary = b2 }, "after" })
        helpers.wait_until(function() return srv:seen(hold) end, 10, "weir's request for /hold/" .. hold)
        srv:release(hold)
        local got = read_n(c, 4)
        assert.same({ 1, "pass:/hold/" .. hold .. "\n" }, got[1])
        assert.same({ 2, b1 }, got[2])
        assert.same({ 2, b2 }, got[3])
        assert.same({ 1, "after" }, got[4])
        c:close()
    end)

    it("forwards a big message whole after its hook waited, then the ones behind it", function()
        local c = connect("/io")
        local hold = "big" .. seq
        local big = "pass:/hold/" .. hold .. "\n" .. string.rep("abcdefghij", 20000)
        send_row(c, { big, "after" })
        helpers.wait_until(function() return srv:seen(hold) end, 10, "weir's request for /hold/" .. hold)
        srv:release(hold)
        local got = read_n(c, 2)
        assert.equal(#big, #got[1][2])
        assert.is_true(big == got[1][2], "the big message changed on the way")
        assert.same({ 1, "after" }, got[2])
        c:close()
    end)

    it("forwards the messages before one with invalid UTF-8, then closes 1007", function()
        local c, id = connect("/verdicts")
        send_row(c, { "a", "replace:X", "bad \xff text", "c" })
        assert.same({ { 1, "a" }, { 1, "X" } }, read_n(c, 2))
        assert.equal(1007, (close_of(c)))
        assert.same({ "a", "X" }, backend_texts(id, 2))
        c:close()
    end)
end)
