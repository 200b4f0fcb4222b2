-- The raw frame tools of the RFC 6455 suite, checked against each other
-- without weir: spec/support/rawws.lua (frames, client and server
-- handshakes) talking directly to spec/support/raw_backend.lua. If these
-- fail, 20-rfc6455_spec.lua's verdicts about weir mean nothing.

local helpers = require "helpers"
local rawws   = require "support.rawws"
local socket  = require "socket"

local T = 5

describe("rawws", function()
    it("computes SHA-1 and Sec-WebSocket-Accept (RFC 6455 1.3 example)", function()
        assert.are.equal("a9993e364706816aba3e25717850c26c9cd0d89d", rawws.tohex(rawws.sha1("abc")))
        assert.are.equal("da39a3ee5e6b4b0d3255bfef95601890afd80709", rawws.tohex(rawws.sha1("")))
        assert.are.equal("84983e441c3bd26ebaae4aa1f95129e5e54670f1", rawws.tohex(rawws.sha1(
            "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")))
        assert.are.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", rawws.accept_for("dGhlIHNhbXBsZSBub25jZQ=="))
    end)

    it("builds the RFC 6455 5.7 examples byte for byte", function()
        assert.are.equal("810548656c6c6f", rawws.tohex(rawws.build{ opcode = 1, payload = "Hello" }))
        assert.are.equal("818537fa213d7f9f4d5158", rawws.tohex(rawws.build{
            opcode = 1, payload = "Hello", mask = "\55\250\33\61" }))
        assert.are.equal("010348656c", rawws.tohex(rawws.build{ opcode = 1, fin = false, payload = "Hel" }))
        assert.are.equal("80026c6f", rawws.tohex(rawws.build{ opcode = 0, payload = "lo" }))
        assert.are.equal("890548656c6c6f", rawws.tohex(rawws.build{ opcode = 9, payload = "Hello" }))
        assert.are.equal("827e0100", rawws.tohex(rawws.build{ opcode = 2, payload = ("x"):rep(256) }):sub(1, 8))
        assert.are.equal("827f0000000000010000",
            rawws.tohex(rawws.build{ opcode = 2, payload = ("x"):rep(65536) }):sub(1, 20))
    end)

    it("builds and parses every header field and length encoding", function()
        for _, n in ipairs{ 0, 1, 125, 126, 127, 65535, 65536, 70000 } do
            for _, form in ipairs{ 7, 16, 64 } do
                if not (form == 7 and n > 125) and not (form == 16 and n > 65535) then
                    for _, mask in ipairs{ false, "\1\2\3\4" } do
                        local p = rawws.random_bytes(n)
                        local b = rawws.build{ opcode = 5, fin = false, rsv1 = true, rsv3 = true,
                                               payload = p, len_form = form, mask = mask }
                        local fr, nextpos = rawws.parse(b)
                        assert.are.equal(#b + 1, nextpos)
                        assert.are.equal(5, fr.opcode)
                        assert.is_false(fr.fin)
                        assert.is_true(fr.rsv1); assert.is_false(fr.rsv2); assert.is_true(fr.rsv3)
                        assert.are.equal(form, fr.len_form)
                        assert.are.equal(mask and true or false, fr.masked)
                        assert.are.equal(mask or nil, fr.key)
                        assert.are.equal(p, fr.payload)
                        assert.is_nil(rawws.parse(b:sub(1, -2)))
                    end
                end
            end
        end
        local fr = rawws.parse(rawws.build{ opcode = 2, payload = "abc", len_form = 64, len_high_bit = true }
                               .. ("\0"):rep(8))
        assert.is_nil(fr)  -- declared length is huge: never complete
        local b = rawws.build{ opcode = 2, payload = "abc", len_form = 64, len_high_bit = true }
        assert.are.equal("827f8000000000000003", rawws.tohex(b:sub(1, 10)))
    end)

    it("encodes and decodes close payloads", function()
        assert.are.equal("03e8", rawws.tohex(rawws.close_payload(1000)))
        assert.are.equal("", rawws.close_payload(nil))
        local code, reason = rawws.parse_close(rawws.close_payload(4999, "bye"))
        assert.are.equal(4999, code)
        assert.are.equal("bye", reason)
    end)
end)

describe("rawws client ↔ raw_backend, without weir", function()
    local dir, port, pid, n = nil, nil, nil, 0

    lazy_setup(function()
        dir = helpers.tmpdir() .. "/rawws-self"
        assert(os.execute("mkdir -p " .. helpers.shell_quote(dir)))
        port = helpers.free_port()
        pid = helpers.spawn({ "luajit", helpers.support .. "/raw_backend.lua", tostring(port), dir },
                            { stderr = dir .. "/raw_backend.stderr" })
        helpers.wait_port(port, T)
    end)

    lazy_teardown(function()
        if pid then helpers.stop_pid(pid) end
        helpers.cleanup()
    end)

    local function case(script)
        n = n + 1
        local name = "self" .. n
        if script then helpers.write_file(dir .. "/" .. name .. ".json", rawws.encode_script(script)) end
        return name
    end

    local function record(name)
        return helpers.wait_until(function()
            local rec = rawws.read_record(dir .. "/" .. name .. ".jsonl")
            return rec and rec.done and rec
        end, T, "the record of " .. name)
    end

    it("records each frame exactly as sent, however it was split", function()
        local name = case()
        local c = assert(rawws.connect("127.0.0.1", port, { path = "/" .. name .. "?q=1" }))
        local big = rawws.random_bytes(70000)
        c:send_frame({ opcode = 1, payload = "héllo" }, 1)
        c:send_frame({ opcode = 2, payload = big, mask = "\9\8\7\6" }, { 1, 2, 5, 9, 13, 14, 1000 })
        c:send_frame{ opcode = 1, fin = false, payload = "a", len_form = 64 }
        c:send_frame{ opcode = 0, fin = true, payload = "b", rsv2 = true }
        c:send_frame{ opcode = 2, payload = "nomask", mask = false }
        c:send_close(1000, "done")
        local got = c:collect{ timeout = T }
        c:close()
        assert.are.equal(1000, got.close.code)
        assert.are.equal("done", got.close.reason)
        assert.is_true(got.eof)
        local rec = record(name)
        assert.is_true(rec.handshake.ok)
        assert.are.equal("/" .. name .. "?q=1", rec.handshake.path)
        assert.are.equal(6, #rec.recv)
        assert.are.equal("héllo", rec.recv[1].payload)
        assert.are.equal(big, rec.recv[2].payload)
        assert.are.equal("09080706", rawws.tohex(rec.recv[2].key))
        assert.are.equal(64, rec.recv[2].len_form)
        assert.are.equal(64, rec.recv[3].len_form)
        assert.is_false(rec.recv[3].fin)
        assert.is_true(rec.recv[4].rsv2)
        assert.is_false(rec.recv[5].masked)
        assert.are.equal(8, rec.recv[6].opcode)
        assert.are.equal(1000, rec.close.code)
        assert.are.equal(5, #rec.data)
        assert.are.equal("close handshake done", rec.done.why)
    end)

    it("sends scripted frames, answers pings, echoes the close", function()
        local p = rawws.random_bytes(125)
        local name = case{ steps = {
            { wait_opcode = 1 },
            { send = { opcode = 1, fin = false, payload = "frag" } },
            { send = { opcode = 9, payload = p }, split = 1 },
            { wait_opcode = 10 },
            { send = { opcode = 0, payload = "ment", rsv1 = true, mask = true } },
            { send = { opcode = 14, payload = "" } },
            { raw = "\136\0" },                         -- an empty close, by hand
        } }
        local c = assert(rawws.connect("127.0.0.1", port, { path = "/" .. name }))
        c:send_frame{ opcode = 1, payload = "go" }
        c:send_frame{ opcode = 9, payload = "ping!" }
        local got = c:collect{ timeout = T }
        c:close()
        assert.are.equal(6, #got.frames)
        assert.are.equal("frag", got.frames[1].payload)
        assert.are.equal(p, got.frames[2].payload)
        assert.are.equal(10, got.frames[3].opcode)          -- the pong to "ping!"
        assert.are.equal("ping!", got.frames[3].payload)
        assert.is_true(got.frames[4].rsv1)
        assert.is_true(got.frames[4].masked)
        assert.are.equal(14, got.frames[5].opcode)
        assert.are.equal("", got.close.payload)
        local rec = record(name)
        local pong = rec.recv[3]
        assert.are.equal(10, pong.opcode)
        assert.are.equal(p, pong.payload)
        assert.are.equal("", rec.close.payload)
    end)

    it("sends frames in the same write as its 101", function()
        local name = case{ with_101 = { { opcode = 1, payload = "early" } },
                           steps = { { send = { opcode = 8, payload = rawws.close_payload(1001) } } } }
        local c = assert(rawws.connect("127.0.0.1", port, { path = "/" .. name }))
        local got = c:collect{ timeout = T }
        c:close()
        assert.are.equal("early", got.data[1].payload)
        assert.are.equal(1001, got.close.code)
    end)

    it("ends TCP without a close frame when told to", function()
        local name = case{ steps = { { close_tcp = true } } }
        local c = assert(rawws.connect("127.0.0.1", port, { path = "/" .. name }))
        local got = c:collect{ timeout = T }
        c:close()
        assert.is_nil(got.close)
        assert.is_true(got.eof)
        assert.are.equal("closed by script", record(name).done.why)
    end)

    it("keeps waiting for its peer's close when told not to echo, until the peer ends TCP", function()
        local name = case{ echo_close = false }
        local c = assert(rawws.connect("127.0.0.1", port, { path = "/" .. name }))
        c:send_close(1000)
        local fr, err = c:read_frame(0.3)
        assert.is_nil(fr)
        assert.are.equal("timeout", err)
        c:close()
        assert.are.equal("eof", record(name).done.why)
    end)

    local bad = {
        { "no Sec-WebSocket-Key", { "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13" } },
        { "a short Sec-WebSocket-Key", { "Upgrade: websocket", "Connection: Upgrade",
          "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: AAAA" } },
        { "version 12", { "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 12",
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" } },
        { "no Connection: upgrade", { "Upgrade: websocket", "Connection: keep-alive",
          "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" } },
        { "an extension offered", { "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Extensions: permessage-deflate" } },
    }
    for _, b in ipairs(bad) do
        it("refuses a handshake with " .. b[1] .. " (400, recorded)", function()
            local name = case()
            local s = socket.tcp()
            s:settimeout(T)
            assert(s:connect("127.0.0.1", port))
            s:send("GET /" .. name .. " HTTP/1.1\r\nHost: x\r\n" .. table.concat(b[2], "\r\n") .. "\r\n\r\n")
            local line = s:receive("*l")
            s:close()
            assert.are.equal("HTTP/1.1 400 Bad Request", line)
            local rec = record(name)
            assert.is_false(rec.handshake.ok)
            assert.are.equal("bad handshake", rec.done.why)
        end)
    end

    it("the client refuses a 101 with a wrong Sec-WebSocket-Accept", function()
        local p = helpers.free_port()
        local code = [[
            local socket = require "socket"
            local srv = assert(socket.bind("127.0.0.1", ]] .. p .. [[))
            while true do
                local c = srv:accept()
                c:settimeout(5)
                local line = c:receive("*l")
                while line and line ~= "" do line = c:receive("*l") end
                if line then
                    c:send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        .. "Connection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n")
                end
                c:close()
            end
        ]]
        local wpid = helpers.spawn({ "luajit", "-e", code })
        helpers.wait_port(p, T)
        local ok, err = rawws.connect("127.0.0.1", p, { timeout = T })
        helpers.stop_pid(wpid)
        assert.is_nil(ok)
        assert.matches("Sec%-WebSocket%-Accept", err)
    end)
end)
