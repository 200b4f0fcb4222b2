--- Policy modules: finding, loading (in their own environment) and checking
-- them. Stock policies (the project's `policies/`) and an operator's load
-- the same way; the operator's directories are searched first.
--
-- @module weir.policy
-- @usage local reg = require("weir.policy").registry({ "/etc/weir/policies" })
--        local mod, err = reg:get("key-auth")

local type, pairs, ipairs, tostring, setmetatable, setfenv, loadfile, xpcall =
    type, pairs, ipairs, tostring, setmetatable, setfenv, loadfile, xpcall
local format, match, gsub, sub = string.format, string.match, string.gsub, string.sub

local _M = {}

local MAX_STEPS, EVERY = 100000000, 1000     -- code run at load that runs longer is stuck

--- xpcall(FN, HANDLER) stopped after about MAX_STEPS Lua instructions with
-- the error WHAT .. " runs for too long (...)", for code that runs while a
-- configuration loads (in the master too), where no budget applies: the
-- configuration file's chunk (weir.conf) and a policy file's; one that
-- never ended would hang weir's start or reload. The JIT is off meanwhile
-- (count hooks do not run in compiled code); once over, the hook raises at
-- every instruction, so a pcall in the code cannot keep it going.
local bounded_pcall
bounded_pcall = function(fn, what, handler)
    local steps = 0
    local old_hook, old_mask, old_count = debug.gethook()
    local jit_on = jit and jit.status()
    if jit then jit.off() end
    local function hook()
        if steps > MAX_STEPS then
            local at = debug.getinfo(2, "f")
            if at and at.func == bounded_pcall then return end     -- back here: the chunk has stopped
        else
            steps = steps + EVERY
            if steps <= MAX_STEPS then return end
            debug.sethook(hook, "", 1)
        end
        error(what .. " runs for too long (over " .. MAX_STEPS .. " instructions): is there an endless loop?", 2)
    end
    debug.sethook(hook, "", EVERY)
    local ok, res = xpcall(fn, handler)
    -- a hook set from C (the worker's budget) reads as a string here: the
    -- worker installs it again after every call into Lua
    if type(old_hook) == "function" then debug.sethook(old_hook, old_mask, old_count)
    else debug.sethook() end
    if jit_on then jit.on() end
    return ok, res
end
_M.bounded_pcall = bounded_pcall

local HOOKS = { "on_handshake", "on_frame_in", "on_frame_out", "on_close" }
_M.HOOKS = HOOKS

--- The directory of the stock policies: `WEIR_POLICY_DIR` when set, else
-- `policies` beside weir's Lua directory, found from this file's place
-- (`<dir>/weir/policy.lua` → `<dir>/../policies`): `<project>/policies` in
-- the build tree, `<prefix>/share/weir/policies` when installed.
function _M.stock_dir()
    local env = os.getenv("WEIR_POLICY_DIR")
    if env and env ~= "" then return env end
    local src = debug.getinfo(1, "S").source
    local lua_dir = match(src, "^@(.*)/weir/[^/]*$")
    if lua_dir then
        local parent = match(lua_dir, "^(.*)/[^/]*$")
        if parent then return (parent == "" and "" or parent) .. "/policies" end
        return "policies"           -- a relative Lua directory of one segment
    end
    return "policies"
end

local function readable(path)
    local f = io.open(path, "rb")
    if f then f:close() return true end
    return false
end

-- What a policy's code can reach. Functions that could end the process,
-- reach the file system or escape the environment are absent.
local SAFE = {
    "assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber", "tostring",
    "type", "unpack", "xpcall", "rawequal", "rawget", "rawset", "rawlen", "setmetatable",
    "getmetatable", "_VERSION",
}
local SAFE_LIBS = { string = true, table = true, math = true, bit = true }

local function copy(t)
    local out = {}
    for k, v in pairs(t) do out[k] = v end
    return out
end

--- A registry: loads each policy once, in a shared sandbox.
-- @tparam table paths the operator's policy directories (searched first)
-- @treturn table registry with `get(name)`, `paths`
function _M.registry(paths)
    local reg = { paths = {}, loaded = {}, errors = {}, modules = {} }
    for i, p in ipairs(paths or {}) do reg.paths[i] = p end
    reg.paths[#reg.paths + 1] = _M.stock_dir()

    local allowed = { weir = true, cjson = true, ["cjson.safe"] = true,
                      ["weir.jose"] = true, ["weir.oauth"] = true, ["weir.limits"] = true,
                      ["weir.km"] = true, ["weir.inspect"] = true }

    -- A read-only view of a shared module. Each file gets its own views, so
    -- even rawset on one changes nothing another policy sees.
    local function read_only(t, name)
        return setmetatable({}, {
            __index = t,
            __newindex = function() error(name .. " is read-only to policies", 2) end,
            __metatable = false,
        })
    end

    -- Every policy file and module gets an environment of its own: its own
    -- globals and its own copies of the standard tables, so that one policy
    -- cannot change what another sees (string.format, weir.error, a global).
    local make_env
    local function load_module(name)
        local rel = gsub(name, "%.", "/")
        for _, dir in ipairs(reg.paths) do
            for _, cand in ipairs({ dir .. "/" .. rel .. ".lua", dir .. "/" .. rel .. "/init.lua" }) do
                if readable(cand) then
                    local fn, err = loadfile(cand)
                    if not fn then error(err, 3) end
                    setfenv(fn, make_env())
                    local v = fn(name)
                    if v == nil then v = true end
                    return v
                end
            end
        end
        error(format("module '%s' not found (policies may require weir, weir.jose, weir.oauth, weir.limits, weir.km, weir.inspect, cjson, "
                     .. "cjson.safe and modules of the policy paths)", name), 3)
    end

    make_env = function()
        local env = {}
        for _, name in ipairs(SAFE) do env[name] = _G[name] end
        for name in pairs(SAFE_LIBS) do env[name] = _G[name] and copy(_G[name]) end
        env.os = { time = os.time, clock = os.clock, date = os.date, difftime = os.difftime }
        env.string.dump = nil
        env._G = env
        env.getmetatable = function(v)
            if type(v) == "string" then return nil end       -- the shared string metatable
            return getmetatable(v)
        end
        local views = {}
        -- require inside a policy: weir's modules, cjson, or a module of a policy path
        env.require = function(name)
            if type(name) ~= "string" then error("require: module name must be a string", 2) end
            if allowed[name] then
                views[name] = views[name] or read_only(require(name), name)
                return views[name]
            end
            local m = reg.modules[name]
            if m == nil then
                m = load_module(name)
                reg.modules[name] = m
            end
            return m
        end
        return env
    end
    reg.make_env = make_env

    --- Find and load policy NAME.
    -- @treturn[1] table the module
    -- @treturn[2] nil
    -- @treturn[2] string why ("not found", or the load error with file:line)
    function reg:get(name)
        local m = self.loaded[name]
        if m then return m end
        if self.errors[name] then return nil, self.errors[name] end
        if type(name) ~= "string" or not match(name, "^[%w_%-]+$") then
            return nil, "invalid policy name " .. tostring(name)
        end
        local file
        for _, dir in ipairs(self.paths) do
            for _, cand in ipairs({ dir .. "/" .. name .. ".lua", dir .. "/" .. name .. "/init.lua" }) do
                if readable(cand) then file = cand break end
            end
            if file then break end
        end
        if not file then
            local err = format("unknown policy %q (searched %s)", name, table.concat(self.paths, ", "))
            self.errors[name] = err
            return nil, err
        end
        local mod, err = _M.load_file(file, name, make_env())
        if not mod then
            self.errors[name] = err
            return nil, err
        end
        mod._file = file
        self.loaded[name] = mod
        return mod
    end

    return reg
end

--- Load FILE as policy NAME in ENV and check its shape.
-- @treturn[1] table the module
-- @treturn[2] nil
-- @treturn[2] string the error, starting with "FILE:LINE:" when Lua gave one
function _M.load_file(file, name, env)
    local fn, err = loadfile(file)
    if not fn then return nil, err end
    setfenv(fn, env)
    local ok, mod = bounded_pcall(function() return fn(name) end, "it", tostring)
    if not ok then return nil, tostring(mod) end
    local problem = _M.check_module(mod, name)
    if problem then return nil, file .. ": " .. problem end
    return mod
end

--- Check that MOD is a well-formed policy named NAME; returns nil or a message.
function _M.check_module(mod, name)
    if type(mod) ~= "table" then return "a policy must return a table, got " .. type(mod) end
    if mod.name ~= name then
        return format("the policy's name is %q, but its file says %q", tostring(mod.name), name)
    end
    if type(mod.priority) ~= "number" then return "priority must be a number" end
    if mod.schema ~= nil and type(mod.schema) ~= "table" then return "schema must be a list of fields" end
    for _, h in ipairs(HOOKS) do
        if mod[h] ~= nil and type(mod[h]) ~= "function" then return h .. " must be a function" end
    end
    if mod.init ~= nil and type(mod.init) ~= "function" then return "init must be a function" end
    local any = false
    for _, h in ipairs(HOOKS) do any = any or mod[h] ~= nil end
    if not any then return "a policy implements at least one hook (" .. table.concat(HOOKS, ", ") .. ")" end
    return nil
end

--- Which hooks a chain implements, as a bit mask (1 handshake, 2 frame in,
-- 4 frame out, 8 close) — the core calls Lua only for those.
function _M.mask(chain)
    local m = 0
    for _, e in ipairs(chain) do
        for i, h in ipairs(HOOKS) do
            if e.mod[h] and (m % (2 ^ i)) < 2 ^ (i - 1) then m = m + 2 ^ (i - 1) end
        end
    end
    return m
end

return _M
