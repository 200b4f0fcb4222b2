-- scopes through a real gateway (docs/policies/scopes.md), with key-auth's
-- scopes field as the source of the caller's scopes: allowed types reach
-- the backend; a forbidden one never does, the client gets
-- /problems/forbidden and keeps its socket, or is closed 1008 when so
-- configured.
local helpers = require "helpers"

local PROBLEM = "/problems/forbidden"
local RW, RO, NONE = "scopes-rw-key-0123456789", "scopes-ro-key-0123456789", "scopes-none-key-0123456789"

local RULES = {
    ["chat.read"] = { "read" },
    ["chat.send"] = { "read", "write" },
    ["admin.kick"] = { "admin" },
    ping = {},
}

describe("scopes through weir", function()
    local be, gw
    local seq = 0

    setup(function()
        be = helpers.start_backend("echo")
        local keys = helpers.write_file(helpers.tmpdir() .. "/scopes-keys.txt", table.concat({
            "sha256:" .. helpers.sha256(RW) .. "  application=App subscriber=alice scopes=read,write",
            "sha256:" .. helpers.sha256(RO) .. "  application=App subscriber=bob scopes=read",
            "sha256:" .. helpers.sha256(NONE) .. "  application=App subscriber=carol",
        }, "\n") .. "\n")
        local auth = { "key-auth", { keys_file = keys, key_in = { "header" } } }
        gw = helpers.start_weir({
            workers = 1,
            apis = {
                helpers.policy_api("Drop", "/drop", be, { auth, { "scopes", { rules = RULES } } }),
                helpers.policy_api("Close", "/close", be, { auth, { "scopes", { rules = RULES, on_violation = "close" } } }),
                helpers.policy_api("Open", "/open", be, {
                    { "scopes", { rules = { ["admin.kick"] = { "admin" } }, default = "allow" } } }),
            },
        })
    end)
    teardown(helpers.cleanup)

    local function connect(context, key)
        seq = seq + 1
        local id = "c" .. seq
        local ws, res = helpers.ws_connect(gw.port, { path = context .. "/1.0/" .. id,
                                                      headers = key and { apikey = key } or nil })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        return ws, id
    end

    local ask, recv = helpers.ask, helpers.recv_payload

    -- The data messages the backend received on connection ID (waits until
    -- it has WANT of them, or until it is closed when WANT is nil).
    local function at_backend(id, want)
        local rec = be:wait_conns(function(conns)
            for _, c in ipairs(conns) do
                if c.url == "/" .. id and ((want and c.messages >= want) or (not want and c.closed)) then return c end
            end
        end, 10, "the backend record of " .. id)
        local out = {}
        for _, e in ipairs(rec.events) do
            if e.type == "message" then out[#out + 1] = e.text or e.b64 end
        end
        return out, rec
    end

    local function forbidden(payload, message)
        local j = helpers.check_error(payload, PROBLEM, 1008)
        assert.equal(message, j.error.message)
    end

    it("forwards a type the caller's key has the scopes for", function()
        local ws, id = connect("/drop", RW)
        local msg = '{"type":"chat.send","text":"hi"}'
        assert.equal(msg, ask(ws, msg))
        assert.equal('{"type":"chat.read"}', ask(ws, '{"type":"chat.read"}'))
        assert.same({ msg, '{"type":"chat.read"}' }, at_backend(id, 2))
        ws:close()
    end)

    it("drops a type the key lacks a scope for: the error JSON, the socket stays open, the next message goes through",
       function()
        local ws, id = connect("/drop", RO)
        forbidden(ask(ws, '{"type":"chat.send","text":"hi"}'), '"chat.send" messages need the scopes read, write')
        forbidden(ask(ws, '{"type":"admin.kick"}'), '"admin.kick" messages need the scope admin')
        local ok = '{"type":"chat.read"}'
        assert.equal(ok, ask(ws, ok))
        assert.same({ ok }, at_backend(id, 1))
        assert.equal(ok, ask(ws, ok))
        assert.same({ ok, ok }, at_backend(id, 2))
        ws:close()
        assert.same({ ok, ok }, (at_backend(id)))
    end)

    it("a key without scopes may send only the types whose rule lists none", function()
        local ws, id = connect("/drop", NONE)
        forbidden(ask(ws, '{"type":"chat.read"}'), '"chat.read" messages need the scope read')
        assert.equal('{"type":"ping"}', ask(ws, '{"type":"ping"}'))
        assert.same({ '{"type":"ping"}' }, at_backend(id, 1))
        ws:close()
    end)

    it("with the default deny, messages without a type, of an unknown type or binary are dropped", function()
        local ws, id = connect("/drop", RW)
        forbidden(ask(ws, '{"text":"no type"}'), 'messages without a "type" field are not allowed')
        forbidden(ask(ws, "not json"), 'messages without a "type" field are not allowed')
        forbidden(ask(ws, '{"type":"chat.delete"}'), "message type not allowed")
        assert(ws:send_binary("\1\2\3"))
        forbidden(recv(ws), "binary messages are not allowed")
        assert.equal('{"type":"ping"}', ask(ws, '{"type":"ping"}'))
        assert.same({ '{"type":"ping"}' }, at_backend(id, 1))
        ws:close()
    end)

    it("refuses a message with the type field twice, whichever value comes last", function()
        local ws, id = connect("/drop", RO)
        forbidden(ask(ws, '{"type":"chat.send","type":"chat.read"}'), 'message has more than one "type" field')
        forbidden(ask(ws, '{"type":"chat.read","typ\\u0065":"chat.send"}'), 'message has more than one "type" field')
        assert.equal('{"type":"chat.read"}', ask(ws, '{"type":"chat.read"}'))
        assert.same({ '{"type":"chat.read"}' }, at_backend(id, 1))
        ws:close()
    end)

    it("checks a message sent in fragments as the one message it is", function()
        local ws, id = connect("/drop", RO)
        assert(ws:send_text('{"type":"chat', false))
        assert(ws:send_cont('.send"}', true))
        forbidden(recv(ws), '"chat.send" messages need the scopes read, write')
        assert(ws:send_text('{"type":"chat', false))
        assert(ws:send_cont('.read"}', true))
        assert.equal('{"type":"chat.read"}', recv(ws))
        assert.same({ '{"type":"chat.read"}' }, at_backend(id, 1))
        ws:close()
    end)

    it("with on_violation = \"close\": the error JSON, then close 1008; the backend gets 1001 and never the message",
       function()
        local ws, id = connect("/close", RO)
        assert.equal('{"type":"chat.read"}', ask(ws, '{"type":"chat.read"}'))
        assert(ws:send_text('{"type":"chat.send"}'))
        local j, close = helpers.expect_error_close(ws, PROBLEM, 1008)
        assert.equal('"chat.send" messages need the scopes read, write', j.error.message)
        assert.equal('"chat.send" messages need the scopes read, write', close.reason)
        local msgs, rec = at_backend(id)
        assert.same({ '{"type":"chat.read"}' }, msgs)
        assert.equal(1001, rec.closed.code)
    end)

    it("with on_violation = \"close\", a message without a type follows the default deny and closes too", function()
        local ws, id = connect("/close", RW)
        assert(ws:send_text('{"text":"no type"}'))
        local j = helpers.expect_error_close(ws, PROBLEM, 1008)
        assert.equal('messages without a "type" field are not allowed', j.error.message)
        assert.same({}, (at_backend(id)))
    end)

    it("with the default allow and no authentication: untyped, unknown and binary pass, ruled types need a consumer",
       function()
        local ws, id = connect("/open")
        assert.equal("plain text", ask(ws, "plain text"))
        assert.equal('{"type":"anything"}', ask(ws, '{"type":"anything"}'))
        assert(ws:send_binary("\0\1"))
        local p, m = recv(ws)
        assert.same({ "\0\1", 2 }, { p, m.opcode })
        forbidden(ask(ws, '{"type":"admin.kick"}'), '"admin.kick" messages need the scope admin')
        assert.equal(3, #at_backend(id, 3))
        ws:close()
        local msgs = at_backend(id)
        assert.equal(3, #msgs)
        assert.is_nil(table.concat(msgs, "|"):find("admin.kick", 1, true))
    end)

    it("weir -t refuses a bad rule, naming the file, the line and the field", function()
        local conf = helpers.write_conf(table.concat({
            "return {",
            '  listen = { { address = "127.0.0.1", port = 9 } },',
            "  apis = { { name = \"E\", context = \"/e\", versions = { { version = \"1.0\", default = true,",
            '    endpoints = { production = "ws://127.0.0.1:9" },',
            "    policies = {",
            '      { "scopes", { rules = {',
            '        ["chat.send"] = { "read write" },',
            "      } } },",
            "    } } } } },",
            "}",
        }, "\n") .. "\n")
        local code, out, err = helpers.run({ helpers.bin, "-t", "-c", conf })
        assert.equal(1, code, "weir -t: " .. out .. err)
        assert.matches(conf .. ':7: apis[1].versions[1].policies[1][2].rules["chat.send"][1]: '
                       .. "a scope has no spaces, commas or control characters", err, 1, true)
    end)
end)
