-- frame:json() through a real gateway (docs/policies.md#the-frame): one
-- decode per message, shared by every policy of the chain; nil and the
-- decoder's message for a payload that is not JSON; a payload a policy
-- replaced is decoded again; and frame hooks that wait (the coroutine the
-- core resumes itself per message) keep their frame, wait again, and are
-- still stopped by the budget after a wait.
-- The policies are spec/fixtures/policies/spec-frame-json-{a,b}.lua: a
-- keeps what it got, b replies what both got.
local helpers = require "helpers"
local cjson = require "cjson"

describe("frame:json()", function()
    local be, srv, gw

    setup(function()
        be = helpers.start_backend("echo")
        srv = helpers.start_slow_http()
        gw = helpers.start_weir({
            workers = 1,
            limits = { policy_budget = "50ms" },
            policy_paths = { helpers.fixture_policies },
            apis = {
                helpers.policy_api("Json", "/json", be, {
                    { "spec-frame-json-a", { base = srv:url("") } },
                    { "spec-frame-json-b", {} },
                }),
            },
        })
    end)
    teardown(helpers.cleanup)

    local function connect()
        local ws, res = helpers.ws_connect(gw.port, { path = "/json/1.0/x" })
        assert(ws, "no 101: " .. (type(res) == "table" and tostring(res.raw) or tostring(res)))
        return ws
    end

    local function ask(ws, text) return cjson.decode((helpers.ask(ws, text))) end

    it("decodes a message once: the second policy gets the very table the first got", function()
        local ws = connect()
        local got = ask(ws, '{"type":"hello","n":1}')
        assert.same({ same = true, kind = "table", type = "hello", length = 22 }, got)
        ws:close()
    end)

    it("decodes each message of a connection afresh", function()
        local ws = connect()
        assert.equal("one", ask(ws, '{"type":"one"}').type)
        local got = ask(ws, '{"type":"two"}')
        assert.equal("two", got.type)
        assert.is_true(got.same)
        ws:close()
    end)

    it("gives nil and the decoder's message for a payload that is not JSON, to every policy", function()
        local ws = connect()
        local got = ask(ws, "not json")
        assert.equal("nil", got.kind)
        assert.is_string(got.err)
        assert.matches("Expected value", got.err)
        assert.equal(got.err, got.a_err)
        ws:close()
    end)

    it("gives what the JSON text is when it is not an object: arrays, strings, numbers, null", function()
        local ws = connect()
        assert.same({ same = true, kind = "table", length = 5 }, ask(ws, "[1,2]"))
        assert.same({ same = true, kind = "string", length = 4 }, ask(ws, '"hi"'))
        assert.same({ same = true, kind = "number", length = 2 }, ask(ws, "42"))
        assert.same({ same = true, kind = "null", length = 4 }, ask(ws, "null"))
        ws:close()
    end)

    it("decodes a payload a policy replaced again for the policies after it", function()
        local ws = connect()
        local got = ask(ws, cjson.encode({ op = "replace", with = '{"type":"new"}' }))
        assert.same({ same = false, kind = "table", type = "new", length = 14 }, got)
        got = ask(ws, cjson.encode({ op = "replace", with = "{broken" }))
        assert.equal("nil", got.kind)
        assert.is_string(got.err)
        assert.is_nil(got.a_err)
        ws:close()
    end)

    it("a hook that waits twice keeps its message and its decoded value; the next policy shares it", function()
        local ws = connect()
        local got = ask(ws, '{"op":"wait","type":"w"}')
        assert.same({ same = true, kind = "table", type = "w", waited = "200,200", again = true, length = 24 }, got)
        -- and the connection goes on as before
        assert.equal("after", ask(ws, '{"type":"after"}').type)
        ws:close()
    end)

    it("a hook that loops after a wait is stopped by the budget: 1011 for its connection only", function()
        local ws, other = connect(), connect()
        assert(ws:send_text('{"op":"wait-loop"}'))
        helpers.expect_error_close(ws, "/problems/internal-error", 1011)
        assert.equal("still", ask(other, '{"type":"still"}').type)
        other:close()
    end)
end)
