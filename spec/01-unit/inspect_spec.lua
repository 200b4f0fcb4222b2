-- weir.inspect: the core's message inspector (core/inspect.c, built as a
-- library for this spec), its JSON scanner above all: what it accepts must
-- be what a JSON decoder accepts, message by message.

local inspect = require "weir.inspect"
local cjson = require "cjson"

local TEXT, BINARY = 1, 2

describe("weir.inspect", function()
    local any = assert(inspect.new { type_field = "type" })

    -- The rule a text message breaks under ANY (nil: it passes).
    local function rule(payload)
        local _, r = any:check(TEXT, payload)
        return r
    end

    describe("accepts RFC 8259 JSON", function()
        for _, doc in ipairs({
            '{"type":"a"}', ' \t\r\n{ "type" : "a" } \n', '{"type":"a","n":-0.5e+10,"m":0,"k":123456789012345678901234}',
            '{"type":"a","x":[1,[2,[3,{}]],[],{"y":null}],"t":true,"f":false}',
            '{"type":"a","s":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\\ud83d\\ude00"}',
            '{"type":"a","u":"h\195\169 \240\159\152\128"}', '{"":1,"type":"a"}', '{"type":"a","e":1E5,"z":0.0}',
        }) do
            it(string.format("%q", doc), function() assert.is_nil(rule(doc)) end)
        end
    end)

    describe("refuses what is not JSON", function()
        for _, doc in ipairs({
            "", " ", "{", "}", '{"type":"a"', '{"type":"a"}}', '{"type":"a"} x', '{"type":"a",}', "{'type':'a'}",
            '{type:"a"}', '{"type" "a"}', '{"type":"a" "b":1}', '{"type":"a","n":01}', '{"type":"a","n":1.}',
            '{"type":"a","n":.5}', '{"type":"a","n":+1}', '{"type":"a","n":1e}', '{"type":"a","n":-}',
            '{"type":"a","n":0x10}', '{"type":"a","n":NaN}', '{"type":"a","n":Infinity}', '{"type":"a","b":tru}',
            '{"type":"a","b":nul}', '{"type":"a","b":True}', '{"type":"a\tb"}', '{"type":"a\nb"}',
            '{"type":"a\\x"}', '{"type":"a\\u12"}', '{"type":"a\\u12g4"}', '{"type":"\\ud83d"}',
            '{"type":"\\ude00"}', '{"type":"\\ud83d\\u0041"}', '{"type":"a"/* c */}', "[1,2", "[1,]", '{"a":[}',
            '{"type":"a","x":[1 2]}', '{"type":"a"}\0',
        }) do
            it(string.format("%q", doc), function() assert.equal("not_json", rule(doc)) end)
        end
    end)

    it("accepts nesting 1000 deep and refuses 1001", function()
        local function nest(n) return '{"type":"a","x":' .. ("["):rep(n - 1) .. ("]"):rep(n - 1) .. "}" end
        assert.is_nil(rule(nest(1000)))
        assert.equal("not_json", rule(nest(1001)))
    end)

    it("finds quotes, escapes and control bytes at every offset of a long string", function()
        for i = 0, 40 do
            local pad = ("x"):rep(i)
            assert.is_nil(rule('{"type":"t' .. pad .. '","p":"' .. pad .. '\\"' .. pad .. '"}'), i)
            assert.equal("not_json", rule('{"type":"a","p":"' .. pad .. '\1' .. pad .. '"}'), i)
            assert.equal("not_json", rule('{"type":"a","p":"' .. pad .. '\31"}'), i)
            assert.is_nil(rule('{"type":"a","p":"' .. pad .. '\127\194\128"}'), i)
        end
    end)

    it("refuses JSON that is not an object, and an object without a string type", function()
        assert.equal("not_object", rule("[]"))
        assert.equal("not_object", rule(' "x" '))
        assert.equal("not_object", rule("12"))
        assert.equal("no_type", rule("{}"))
        assert.equal("no_type", rule('{"type":null}'))
        assert.equal("no_type", rule('{"type":["a"]}'))
        assert.equal("no_type", rule('{"Type":"a"}'))
    end)

    it("matches member names written with escapes", function()
        assert.is_nil(rule('{"\\u0074ype":"a"}'))
        assert.is_nil(rule('{"typ\\u0065":"a"}'))
    end)

    it("passes binary messages only when allowed, and sizes both", function()
        local bin = assert(inspect.new { allow_binary = true, max_size = 4, type_field = "type" })
        assert.is_nil(bin:check(BINARY, "\0\1\2\3"))
        assert.equal("too_big", select(2, bin:check(BINARY, "\0\1\2\3\4")))
        assert.equal("binary", select(2, any:check(BINARY, "\0")))
    end)

    it("refuses bad specifications with a reason", function()
        assert.is_nil((inspect.new { type_field = "" }))
        assert.matches("fields need a type_field", select(2, inspect.new { fields = { { name = "a" } } }))
        assert.matches("unknown JSON type", select(2, inspect.new { type_field = "t",
                                                                    fields = { { name = "a", types = { "str" } } } }))
        assert.matches("named twice", select(2, inspect.new { type_field = "t",
                                                             fields = { { name = "a" }, { name = "a" } } }))
        assert.matches("unknown rule", select(2, inspect.new { type_field = "t", messages = { nope = "x" } }))
    end)

    -- Random mutations of valid documents: the scanner and lua-cjson (with
    -- its non-standard numbers turned off) must agree on every one, but for
    -- a number ending in "." ("2.", which lua-cjson's strtod takes and RFC
    -- 8259 does not).
    it("agrees with lua-cjson on 20,000 mutated documents", function()
        local strict = cjson.new()
        strict.decode_invalid_numbers(false)
        strict.decode_max_depth(1000)
        local seeds = {
            '{"type":"chat","text":"hi \\"there\\"","n":[1,2.5,-3e2,{"a":null}],"ok":true,"no":false}',
            '{"type":"x","nested":{"deep":[[[]]],"s":"\\u00e9\\n"},"e":0}',
            '[{"type":"a"},"b",3,true,null]',
        }
        local alphabet = '{}[]":,.-+0123456789eE \\untrfalsy'  -- no raw control bytes: lua-cjson lets them into strings
        math.randomseed(12345)
        local disagreements = {}
        for i = 1, 20000 do
            local s = seeds[i % #seeds + 1]
            for _ = 1, math.random(1, 3) do
                local at = math.random(1, #s + 1)
                local op = math.random(3)
                local c = alphabet:sub(math.random(#alphabet), 1):sub(1, 1)
                local ci = math.random(#alphabet)
                c = alphabet:sub(ci, ci)
                if op == 1 then s = s:sub(1, at - 1) .. c .. s:sub(at)                 -- insert
                elseif op == 2 then s = s:sub(1, at - 1) .. s:sub(at + 1)              -- delete
                else s = s:sub(1, at - 1) .. c .. s:sub(at + 1) end                    -- replace
            end
            local ok = pcall(strict.decode, s)
            local r = rule(s)
            local loose_number = s:find("%.[^%d]") or s:find("%.$")
            if ok == (r == "not_json") and not (ok and loose_number) then disagreements[#disagreements + 1] = s end
        end
        assert.same({}, disagreements)
    end)

    it("finds a needle where a plain search does (the interceptor's weir_find)", function()
        local alphabet = { "a", "b", '"' }
        local function word(n)
            local t = {}
            for i = 1, n do t[i] = alphabet[math.random(#alphabet)] end
            return table.concat(t)
        end
        local wrong = {}
        for _ = 1, 20000 do
            local s, needle = word(math.random(0, 70)), word(math.random(0, 6))
            if math.random(4) == 1 and #s > 0 then      -- a needle taken from the text itself
                local at = math.random(#s)
                needle = s:sub(at, at + math.random(0, 6))
            end
            local want = s:find(needle, 1, true)
            if inspect.find(s, needle) ~= want then wrong[#wrong + 1] = { s, needle, want } end
        end
        assert.same({}, wrong)
        assert.equal(1009, inspect.find(("x"):rep(1008) .. '"auth"', '"auth"'))
        assert.is_nil(inspect.find(("x"):rep(1008) .. '"aut"', '"auth"'))
    end)
end)
