-- frame:json() (lua/weir/chain.lua frame_json, docs/policies.md#framejson):
-- one decode per message shared by the chain, what it gives for text that
-- is not a JSON object or not JSON, and a replaced payload decoded again.
-- The chain runs through weir.chain, as in the gateway; the frames are
-- spec/fakes.lua's, which have the runtime's frame:json().
local helpers = require "helpers"   -- luacheck: no unused (sets package.path)
local chain = require "weir.chain"
local fakes = require "fakes"
local cjson = require "cjson.safe"
local weir = require "weir"

-- A chain entry whose on_frame_in calls FN(frame) and keeps what it returns.
local function entry(name, priority, fn)
    local seen = {}
    return { name = name, priority = priority, conf = {},
             mod = { on_frame_in = function(_, _, frame)
                 local v, err, ret = fn(frame)
                 seen[#seen + 1] = { v = v, err = err }
                 return ret
             end } }, seen
end

local function json(frame) return frame:json() end

describe("frame:json()", function()
    it("decodes once: two policies of one chain get the very same table", function()
        local a, sa = entry("a", 20, json)
        local b, sb = entry("b", 10, json)
        local frame = fakes.frame('{"type":"chat","n":[1,2]}')
        assert.equal(chain.PASS, (chain.run(chain.sort({ b, a }), "on_frame_in", fakes.ctx(), frame)))
        assert.is_table(sa[1].v)
        assert.equal("chat", sa[1].v.type)
        assert.is_true(rawequal(sa[1].v, sb[1].v))
    end)

    it("gives nil and the decoder's message to every policy when the payload is not JSON", function()
        local a, sa = entry("a", 20, json)
        local b, sb = entry("b", 10, json)
        local frame = fakes.frame("{nope")
        chain.run(chain.sort({ a, b }), "on_frame_in", fakes.ctx(), frame)
        local _, want = cjson.decode("{nope")
        assert.is_nil(sa[1].v)
        assert.equal(want, sa[1].err)
        assert.is_nil(sb[1].v)
        assert.equal(want, sb[1].err)
    end)

    it("gives what the text is when it is not an object: a table for an array, scalars, cjson.null", function()
        assert.same({ 1, 2 }, (fakes.frame("[1,2]"):json()))
        assert.equal("s", (fakes.frame('"s"'):json()))
        assert.equal(4.5, (fakes.frame("4.5"):json()))
        assert.is_false((fakes.frame("false"):json()))
        assert.equal(cjson.null, (fakes.frame("null"):json()))
        assert.same({ k = 1 }, (fakes.frame('{"k":1}', weir.BINARY):json()))    -- the opcode is not looked at
    end)

    it("decodes a payload a policy replaced again for the policies after it", function()
        local a, sa = entry("a", 20, function(frame)
            local v, err = frame:json()
            return v, err, '{"type":"new"}'
        end)
        local b, sb = entry("b", 10, json)
        local frame = fakes.frame('{"type":"old"}')
        assert.equal(chain.REPLACE, (chain.run(chain.sort({ a, b }), "on_frame_in", fakes.ctx(), frame)))
        assert.equal("old", sa[1].v.type)
        assert.equal("new", sb[1].v.type)
    end)
end)
