-- docs/logging.md against the code that writes the records: every message
-- the core (core/*.c), weir's Lua runtime (lua/weir/*.lua) and the stock
-- policies (policies/) write is listed, at the level the code writes it,
-- with the members the code writes in the order it writes them; every
-- message listed is written somewhere; and every record puts `conn` and
-- `policy` first.
--
-- The code is read as text: the spec finds each call of weir_log() in C
-- and of ctx:log(), weir.log() and the runtime's log() in Lua, and reads
-- its level, its message (a string literal) and its members (the "name":
-- of a C format, the names of a Lua call's pairs or fields table).
local helpers = require "helpers"
local lfs     = require "lfs"

local ROOT = helpers.root
local fmt, concat = string.format, table.concat

------------------------------------------------------------------------------
-- Reading source text
------------------------------------------------------------------------------

-- TEXT with its comments blanked (strings kept, and every line where it
-- was): C when LANG is "c", else Lua.
local function strip_comments(text, lang)
    local out, i, n = {}, 1, #text
    while i <= n do
        local c, two = text:sub(i, i), text:sub(i, i + 1)
        if c == '"' or c == "'" then
            local j = i + 1
            while j <= n and text:sub(j, j) ~= c do
                j = j + (text:sub(j, j) == "\\" and 2 or 1)
            end
            out[#out + 1] = text:sub(i, j)
            i = j + 1
        elseif lang ~= "c" and text:match("^%[=*%[", i) then
            local eq = text:match("^%[(=*)%[", i)
            local _, e = text:find("]" .. eq .. "]", i, true)
            e = e or n
            out[#out + 1] = text:sub(i, e)
            i = e + 1
        elseif (lang == "c" and two == "/*") then
            local _, e = text:find("*/", i + 2, true)
            out[#out + 1] = " " .. text:sub(i, e or n):gsub("[^\n]", "")
            i = (e or n) + 1
        elseif (lang == "c" and two == "//") or (lang ~= "c" and two == "--") then
            local long = lang ~= "c" and text:match("^%-%-%[(=*)%[", i)
            local e
            if long then
                e = select(2, text:find("]" .. long .. "]", i, true))
            else
                e = (text:find("\n", i, true) or n + 1) - 1
            end
            out[#out + 1] = " " .. text:sub(i, e or n):gsub("[^\n]", "")
            i = (e or n) + 1
        else
            out[#out + 1] = c
            i = i + 1
        end
    end
    return concat(out)
end

-- The arguments of the call whose "(" is at OPEN in TEXT, as trimmed
-- strings (split at the commas outside brackets and strings).
local function call_args(text, open)
    local args, depth, i, start, n = {}, 0, open, open + 1, #text
    while i <= n do
        local c = text:sub(i, i)
        if c == '"' or c == "'" then
            local j = i + 1
            while j <= n and text:sub(j, j) ~= c do j = j + (text:sub(j, j) == "\\" and 2 or 1) end
            i = j
        elseif c == "(" or c == "[" or c == "{" then
            depth = depth + 1
        elseif c == ")" or c == "]" or c == "}" then
            depth = depth - 1
            if depth == 0 then
                args[#args + 1] = text:sub(start, i - 1)
                break
            end
        elseif c == "," and depth == 1 then
            args[#args + 1] = text:sub(start, i - 1)
            start = i + 1
        end
        i = i + 1
    end
    for k, a in ipairs(args) do args[k] = a:match("^%s*(.-)%s*$") end
    return args
end

-- The contents of the string literal(s) that make up all of EXPR (adjacent
-- literals joined, as C joins them), raw (escapes left as written); nil
-- when EXPR is anything else.
local function literal(expr)
    local parts, i = {}, 1
    while i <= #expr do
        local q = expr:sub(i, i)
        if q:match("%s") then
            i = i + 1
        elseif q == '"' or q == "'" then
            local j = i + 1
            while j <= #expr and expr:sub(j, j) ~= q do j = j + (expr:sub(j, j) == "\\" and 2 or 1) end
            if j > #expr then return nil end
            parts[#parts + 1] = expr:sub(i + 1, j - 1)
            i = j + 1
        else
            return nil
        end
    end
    return #parts > 0 and concat(parts) or nil
end

-- The line of TEXT at offset AT.
local function line_at(text, at)
    return select(2, text:sub(1, at):gsub("\n", "")) + 1
end

------------------------------------------------------------------------------
-- Log calls in the code
------------------------------------------------------------------------------

local LUA_LEVELS = { [0] = "debug", [1] = "info", [2] = "warn", [3] = "error" }

-- The weir_log() calls of C source TEXT from FILE: a list of { where, msg,
-- levels, members }, or { where, passthrough = true } for a call whose
-- message is not a literal.
local function c_calls(text, file)
    text = strip_comments(text, "c")
    local calls = {}
    for at, open in text:gmatch("()weir_log%s*()%(") do
        local before = at > 1 and text:sub(at - 1, at - 1) or ""
        local args = call_args(text, open)
        local where = fmt("%s:%d", file, line_at(text, at))
        if not before:match("[%w_]") and not args[1]:match("^int%s") then     -- not the definition
            local msg = literal(args[2] or "")
            local form = literal(args[3] or "")
            if not msg or (form == "%s") then
                calls[#calls + 1] = { where = where, passthrough = true }
            else
                local levels = {}
                for l in args[1]:gmatch("WEIR_LOG_(%u+)") do levels[#levels + 1] = l:lower() end
                local members = {}
                for name in (form or ""):gmatch('\\"([%w_]+)\\":') do members[#members + 1] = name end
                calls[#calls + 1] = { where = where, msg = msg, levels = levels, members = members }
            end
        end
    end
    return calls
end

-- The names a Lua table constructor EXPR ("{ a = 1, b = x }") sets, sorted;
-- nil when EXPR is not one.
local function table_names(expr)
    local body = expr:match("^{(.*)}$")
    if not body then return nil end
    local names = {}
    for _, entry in ipairs(call_args("(" .. body .. ")", 1)) do
        local name = entry:match("^([%a_][%w_]*)%s*=")
        if name then names[#names + 1] = name end
    end
    table.sort(names)
    return names
end

-- The log calls of Lua source TEXT from FILE (as c_calls): X:log(level,
-- msg, fields) and weir.log(level, msg, fields) with a literal level and a
-- table constructor for fields, and the runtime's log(level, msg, conn,
-- policy, fields, name, value, ...). A call the spec cannot read is a
-- { where, unreadable = why }.
local function lua_calls(text, file)
    text = strip_comments(text, "lua")
    local calls = {}
    local function add(at, open, kind)
        local args = call_args(text, open)
        local where = fmt("%s:%d", file, line_at(text, at))
        local msg = literal(args[2] or "")
        if not msg then
            calls[#calls + 1] = { where = where, unreadable = "its message is not a string literal" }
            return
        end
        local call = { where = where, msg = msg, members = {} }
        local m = call.members
        if kind == "runtime" then
            call.levels = { LUA_LEVELS[tonumber(args[1])] }
            if args[3] ~= "nil" then m[#m + 1] = "conn" end
            if args[4] ~= "nil" then m[#m + 1] = "policy" end
            if args[5] and args[5] ~= "nil" then
                call.unreadable = "its fields are not nil: give members as name, value pairs"
            end
            for k = 6, #args, 2 do
                local name = literal(args[k])
                if not name then call.unreadable = "a member name is not a string literal" end
                m[#m + 1] = name
            end
        else
            call.levels = { literal(args[1]) }
            if kind == "ctx" then m[1], m[2] = "conn", "policy" end
            if args[3] then
                local names = table_names(args[3])
                if not names then call.unreadable = "its fields are not a table constructor" end
                for _, name in ipairs(names or {}) do m[#m + 1] = name end
            end
        end
        if call.levels[1] == nil then call.unreadable = "its level is not a literal" end
        calls[#calls + 1] = call
    end
    for at, open in text:gmatch("()[%a_][%w_]*:log%s*()%(") do
        if not text:sub(math.max(1, at - 9), at - 1):match("function%s*$") then add(at, open, "ctx") end
    end
    for at, open in text:gmatch("()weir%.log%s*()%(") do
        if at == 1 or not text:sub(at - 1, at - 1):match("[%w_.:]") then add(at, open, "weir") end
    end
    for at, open in text:gmatch("()log%s*()%(") do
        if at > 1 and not text:sub(at - 1, at - 1):match("[%w_.:]") then add(at, open, "runtime") end
    end
    return calls
end

-- Every log call of the files under DIR (relative to the root, folders
-- included) ending in EXT, appended to OUT.
local function calls_under(dir, ext, reader, out)
    local names = {}
    for name in lfs.dir(ROOT .. "/" .. dir) do
        if name:sub(1, 1) ~= "." then names[#names + 1] = name end
    end
    table.sort(names)
    for _, name in ipairs(names) do
        local file = dir .. "/" .. name
        if lfs.attributes(ROOT .. "/" .. file, "mode") == "directory" then
            calls_under(file, ext, reader, out)
        elseif name:sub(-#ext) == ext then
            for _, c in ipairs(reader(assert(helpers.read_file(ROOT .. "/" .. file)), file)) do out[#out + 1] = c end
        end
    end
    return out
end

------------------------------------------------------------------------------
-- The document
------------------------------------------------------------------------------

-- The records docs/logging.md lists (its tables headed "| msg | level |
-- members |"): msg → { levels = set, members = list, line = N }, and the
-- problems of the tables themselves.
local function doc_records(text)
    local records, problems = {}, {}
    local in_table, n = false, 0
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
        n = n + 1
        if line:match("^|%s*msg%s*|%s*level%s*|%s*members%s*|") then
            in_table = true
        elseif not line:match("^|") then
            in_table = false
        elseif in_table and not line:match("^|%s*%-") then
            local cells = {}
            for cell in line:gmatch("|([^|]*)") do cells[#cells + 1] = cell end
            local msg = cells[1]:match("^%s*`([^`]+)`%s*$")
            if not msg then
                problems[#problems + 1] = fmt("docs/logging.md:%d: the msg cell is not one `message`", n)
            elseif records[msg] then
                problems[#problems + 1] = fmt("docs/logging.md:%d: %q is listed twice", n, msg)
            else
                local levels = {}
                for l in (cells[2] or ""):gmatch("[%a]+") do
                    if not ({ debug = 1, info = 1, warn = 1, error = 1 })[l] then
                        problems[#problems + 1] = fmt("docs/logging.md:%d: level %q", n, l)
                    end
                    levels[l] = true
                end
                local members = {}
                for m in (cells[3] or ""):gmatch("`([^`]+)`") do members[#members + 1] = m end
                records[msg] = { levels = levels, members = members, line = n }
            end
        end
    end
    return records, problems
end

------------------------------------------------------------------------------
-- The comparison
------------------------------------------------------------------------------

-- Is SUB the list LIST with some members left out (the order kept)?
local function subsequence(sub, list)
    local j = 1
    for _, x in ipairs(sub) do
        while list[j] ~= nil and list[j] ~= x do j = j + 1 end
        if list[j] == nil then return false end
        j = j + 1
    end
    return true
end

-- What is wrong between CALLS and the DOC records: a list of sentences.
local function check(calls, doc, expect_passthrough)
    local problems, written, passthrough = {}, {}, {}
    local function say(...) problems[#problems + 1] = fmt(...) end
    for _, c in ipairs(calls) do
        if c.passthrough then
            passthrough[#passthrough + 1] = c.where:match("^[^:]+")
        elseif c.unreadable then
            say("%s: the spec cannot read this log call: %s", c.where, c.unreadable)
        else
            local d = doc[c.msg]
            written[c.msg] = written[c.msg] or {}
            for _, m in ipairs(c.members) do written[c.msg][m] = true end
            if not d then
                say("%s: %q is not in docs/logging.md", c.where, c.msg)
            else
                for _, l in ipairs(c.levels) do
                    if not d.levels[l] then say("%s: %q is written at %s, docs/logging.md says otherwise", c.where, c.msg, l) end
                end
                if not subsequence(c.members, d.members) then
                    say("%s: %q writes %s; docs/logging.md lists %s", c.where, c.msg, concat(c.members, ", "),
                        concat(d.members, ", "))
                end
            end
            local m = c.members
            for k, name in ipairs(m) do
                if (name == "conn" and k ~= 1) or (name == "policy" and k ~= 1 and m[k - 1] ~= "conn") then
                    say("%s: %q writes %s after other members (conn, then policy, come first)", c.where, c.msg, name)
                end
            end
        end
    end
    for msg, d in pairs(doc) do
        if not written[msg] then
            say("docs/logging.md:%d: %q is listed, but no code writes it", d.line, msg)
        else
            for _, m in ipairs(d.members) do
                if not written[msg][m] then
                    say("docs/logging.md:%d: %q lists %s, which no call writes", d.line, msg, m)
                end
            end
        end
    end
    if expect_passthrough and concat(passthrough, " ") ~= expect_passthrough then
        say("log calls whose message is not a literal (expected only %s, the FFI's pass-through for Lua): %s",
            expect_passthrough, concat(passthrough, " "))
    end
    table.sort(problems)
    return problems
end

------------------------------------------------------------------------------

describe("docs/logging.md", function()
    local doc_text = assert(helpers.read_file(ROOT .. "/docs/logging.md"))

    it("lists every message the code writes, with its level and its members in order, and only those", function()
        local calls = {}
        calls_under("core", ".c", c_calls, calls)
        calls_under("lua/weir", ".lua", lua_calls, calls)
        calls_under("policies", ".lua", lua_calls, calls)
        local doc, problems = doc_records(doc_text)
        -- what the spec read is plausible: it would fail, not pass, if it lost its way
        local n = 0
        for _ in pairs(doc) do n = n + 1 end
        assert.is_true(n >= 50, "docs/logging.md lists " .. n .. " records")
        assert.is_true(#calls >= 50, "the code has " .. #calls .. " log calls")
        for _, p in ipairs(check(calls, doc, "core/lua_bridge.c core/lua_bridge.c")) do problems[#problems + 1] = p end
        assert.same({}, problems)
    end)

    describe("the check", function()
        local doc = doc_records([[
| msg | level | members | when |
|---|---|---|---|
| `worker started` | info | `worker` | |
| `access` | info | `conn`, `client`, `status` | |
| `timer failed` | error | `conn`, `policy`, `error` | |
]])
        local function problems_of(c_src, lua_src)
            local calls = c_calls(c_src or "", "x.c")
            for _, c in ipairs(lua_calls(lua_src or "", "x.lua")) do calls[#calls + 1] = c end
            return check(calls, doc)
        end
        local GOOD_C = [[
            /* weir_log(WEIR_LOG_INFO, "in a comment", NULL); */
            weir_log(WEIR_LOG_INFO, "worker started", "\"worker\":%d", id);
            weir_log(WEIR_LOG_INFO, "access",
                     "\"conn\":\"%s\",\"client\":\"%s\","
                     "\"status\":%d", s->name, s->peer, 101);
        ]]
        local GOOD_LUA = [[
            log(3, "timer failed", t.ctx.id, t.policy or "?", nil, "error", tostring(err))  -- log(0, "x")
        ]]

        it("passes code that matches", function()
            assert.same({}, problems_of(GOOD_C, GOOD_LUA))
        end)

        it("fails on a message the document does not list", function()
            local p = problems_of(GOOD_C .. [[weir_log(WEIR_LOG_WARN, "something new", NULL);]], GOOD_LUA)
            assert.equal(1, #p)
            assert.matches('"something new" is not in docs/logging.md', p[1], 1, true)
            p = problems_of(GOOD_C, GOOD_LUA .. [[ctx:log("warn", "a policy's own", { a = 1 })]])
            assert.matches('"a policy\'s own" is not in docs/logging.md', p[1], 1, true)
        end)

        it("fails on a listed message no code writes", function()
            local p = problems_of(GOOD_C, "")
            assert.equal(1, #p)
            assert.matches('"timer failed" is listed, but no code writes it', p[1], 1, true)
        end)

        it("fails on another level, members out of order, or conn after another member", function()
            local p = problems_of(GOOD_C .. [[weir_log(WEIR_LOG_ERROR, "worker started", "\"worker\":%d", 1);]], GOOD_LUA)
            assert.matches("written at error", p[1], 1, true)
            p = problems_of(GOOD_C .. [[weir_log(WEIR_LOG_INFO, "access", "\"client\":\"%s\",\"conn\":\"%s\"", a, b);]],
                            GOOD_LUA)
            assert.equal(2, #p)
            assert.matches("writes client, conn; docs/logging.md lists conn, client, status", concat(p, "\n"), 1, true)
            assert.matches("conn after other members", concat(p, "\n"), 1, true)
        end)

        it("fails on a log call it cannot read", function()
            local p = problems_of(GOOD_C, GOOD_LUA .. [[ctx:log("info", "timer failed", fields)]])
            assert.matches("cannot read this log call: its fields are not a table constructor", p[1], 1, true)
        end)
    end)
end)
