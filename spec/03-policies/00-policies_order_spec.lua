-- Every stock policy in policies/: loads as the gateway loads it, has a
-- priority no other stock policy has, a schema whose every field is
-- described, valid defaults, and at least one hook.

local lfs    = require "lfs"
local policy = require "weir.policy"
local conf   = require "weir.conf"

local KNOWN_TYPES = {
    string = true, boolean = true, integer = true, number = true, size = true, duration = true,
    enum = true, path = true, record = true, list = true, map = true, strings = true,
}

-- The names of the stock policies: NAME.lua files and NAME/init.lua folders.
local function stock_names()
    local dir = policy.stock_dir()
    local names = {}
    for entry in lfs.dir(dir) do
        local path = dir .. "/" .. entry
        local mode = lfs.attributes(path, "mode")
        if mode == "file" and entry:match("%.lua$") then
            names[#names + 1] = entry:sub(1, -5)
        elseif mode == "directory" and entry:sub(1, 1) ~= "." and lfs.attributes(path .. "/init.lua", "mode") then
            names[#names + 1] = entry
        end
    end
    table.sort(names)
    return names
end

-- Every problem with a list of schema fields, as "PATH: problem" strings.
local function field_problems(fields, prefix, out)
    for i, f in ipairs(fields) do
        local path = prefix .. (type(f.name) == "string" and f.name or "[" .. i .. "]")
        if type(f.name) ~= "string" or f.name == "" then out[#out + 1] = path .. ": no name" end
        if not KNOWN_TYPES[f.type] then out[#out + 1] = path .. ": unknown type " .. tostring(f.type) end
        if type(f.description) ~= "string" or #f.description < 10 then
            out[#out + 1] = path .. ": no description"
        end
        if f.type == "enum" and type(f.one_of) ~= "table" then out[#out + 1] = path .. ": enum without one_of" end
        if f.type == "record" then field_problems(f.fields or {}, path .. ".", out) end
        if f.type == "list" then
            local el = f.elements
            if type(el) ~= "table" or not KNOWN_TYPES[el.type] then
                out[#out + 1] = path .. ": list without valid elements"
            elseif el.type == "record" then
                field_problems(el.fields or {}, path .. "[].", out)
            end
        end
        if f.type == "map" then
            local vals = f.values
            if type(vals) ~= "table" or not KNOWN_TYPES[vals.type] then
                out[#out + 1] = path .. ": map without valid values"
            elseif vals.type == "record" then
                field_problems(vals.fields or {}, path .. "[*].", out)
            end
        end
    end
    return out
end

describe("stock policies", function()
    local names = stock_names()
    local reg = policy.registry({})

    it("are there", function()
        assert.is_true(#names > 0)
    end)

    for _, name in ipairs(names) do
        describe(name, function()
            it("loads through the registry", function()
                local mod, err = reg:get(name)
                assert.is_nil(err)
                assert.same(name, mod.name)
            end)

            it("has an integer priority", function()
                local mod = assert(reg:get(name))
                assert.is_true(mod.priority % 1 == 0)
            end)

            it("implements at least one hook", function()
                local mod = assert(reg:get(name))
                local hooks = 0
                for _, h in ipairs(policy.HOOKS) do
                    if mod[h] then hooks = hooks + 1 end
                end
                assert.is_true(hooks > 0)
            end)

            it("describes every field of its schema", function()
                local mod = assert(reg:get(name))
                assert.same("table", type(mod.schema))
                assert.same({}, field_problems(mod.schema, "", {}))
            end)

            it("has valid defaults (an empty conf lacks only required fields)", function()
                local mod = assert(reg:get(name))
                local _, errs = conf.check_policy_conf(mod, {})
                for _, e in ipairs(errs or {}) do
                    if mod.required_one_of and e:match("^init: ") then
                        -- one of several fields is required: init says which
                        for _, f in ipairs(mod.required_one_of) do assert.truthy(e:find(f, 1, true), e) end
                    else
                        assert.matches("^[%w_]+: required field missing$", e)
                    end
                end
            end)
        end)
    end

    it("have unique priorities", function()
        local by_priority = {}
        for _, name in ipairs(names) do
            local mod = assert(reg:get(name))
            local other = by_priority[mod.priority]
            assert.is_nil(other, name .. " has the priority of " .. tostring(other))
            by_priority[mod.priority] = name
        end
    end)
end)
