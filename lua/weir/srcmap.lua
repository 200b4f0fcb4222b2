--- Source map for a configuration chunk: which line each field is written on.
--
-- Lua keeps no line numbers for table fields at run time, so this module
-- reads the source text itself. It tokenises Lua (strings, long strings,
-- comments, numbers, names, operators), finds the table constructor the
-- chunk returns, and walks it, recording for every field path
-- (`apis[1].versions[2].endpoints.production`) the line its key is written
-- on, or for a positional item the line its value starts on.
--
-- The scan never fails: a construct it does not follow (a value built by a
-- function call, a table assembled in a loop) simply has no entry, and
-- callers fall back to the nearest enclosing path that has one.
--
-- It is only ever run on source that `loadstring` accepted, so the lexer
-- can stop quietly at anything malformed.
--
-- @module weir.srcmap

local byte, sub, find, format = string.byte, string.sub, string.find, string.format
local match, gsub, tonumber = string.match, string.gsub, tonumber
local type, tostring = type, tostring

local _M = {}

-- Keywords that open a block closed by `end` (or `until` for `repeat`).
-- `while` and `for` are not here: their block is opened by the `do` they
-- contain. `if` is, because `then`/`elseif`/`else` open nothing new.
local OPENS = { ["function"] = true, ["do"] = true, ["if"] = true, ["repeat"] = true }
local CLOSES = { ["end"] = true, ["until"] = true }

local ESCAPES = { a = "\a", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t",
                  v = "\v", ["\\"] = "\\", ['"'] = '"', ["'"] = "'",
                  ["\n"] = "\n", ["\r"] = "\n" }

-- Decode the body of a quoted string literal (the lexer has already found
-- its end). Used for `["key"] =` so that the key matches the one Lua builds.
local function unescape(s)
    if not find(s, "\\", 1, true) then return s end
    local out, i, n = {}, 1, #s
    while i <= n do
        local c = sub(s, i, i)
        if c ~= "\\" then
            out[#out + 1] = c
            i = i + 1
        else
            local e = sub(s, i + 1, i + 1)
            if e == "z" then                                   -- skip whitespace
                i = (find(s, "[^%s]", i + 2) or n + 1)
            elseif e == "x" then
                out[#out + 1] = string.char(tonumber(sub(s, i + 2, i + 3), 16) or 0)
                i = i + 4
            elseif find(e, "%d") then
                local d = match(s, "^%d%d?%d?", i + 1)
                out[#out + 1] = string.char(tonumber(d) % 256)
                i = i + 1 + #d
            else
                out[#out + 1] = ESCAPES[e] or e
                i = i + 2
                if (e == "\n" or e == "\r") and find(sub(s, i, i), "[\r\n]") and sub(s, i, i) ~= e then
                    i = i + 1                                  -- \r\n after a backslash
                end
            end
        end
    end
    return table.concat(out)
end

--- Split Lua source into tokens.
-- @tparam string src the source text
-- @treturn table `{ kind = {...}, value = {...}, line = {...}, n = count }`;
--   kinds are "name" (keywords included), "string" (value decoded),
--   "number", "op" and a final "eof".
-- @usage local toks = srcmap.tokenize("return { a = 1 }")
function _M.tokenize(src)
    local kind, value, line = {}, {}, {}
    local n, pos, ln, len = 0, 1, 1, #src

    local function emit(k, v, l)
        n = n + 1
        kind[n], value[n], line[n] = k, v, l
    end

    -- Count the newlines in src[from..to] (\r\n, \n\r, \n and \r each once).
    local function newlines(from, to)
        local s = sub(src, from, to)
        local _, c = gsub(gsub(gsub(s, "\r\n", "\n"), "\n\r", "\n"), "[\r\n]", "")
        return c
    end

    -- A long bracket at pos ("[[", "[==["): returns the position after its
    -- closing bracket and the body, or nil when pos is not a long bracket or
    -- it is unterminated.
    local function long_bracket(at)
        local eq = match(src, "^%[(=*)%[", at)
        if not eq then return nil end
        local open_end = at + #eq + 1
        local close_at, close_end = find(src, "]" .. eq .. "]", open_end + 1, true)
        if not close_at then return nil end
        return close_end + 1, sub(src, open_end + 1, close_at - 1)
    end

    if sub(src, 1, 1) == "#" then          -- a shebang line, as loadfile allows
        pos = (find(src, "\n", 1, true) or len) + 1
        ln = 2
    end

    while pos <= len do
        local c = byte(src, pos)
        if c == 10 or c == 13 then         -- newline, \r\n or \n\r counted once
            local nx = byte(src, pos + 1)
            if (nx == 10 or nx == 13) and nx ~= c then pos = pos + 1 end
            pos, ln = pos + 1, ln + 1
        elseif c == 32 or c == 9 or c == 11 or c == 12 then
            pos = pos + 1
        elseif c == 45 and byte(src, pos + 1) == 45 then      -- "--" comment
            local after = long_bracket(pos + 2)
            if after then
                ln = ln + newlines(pos, after - 1)
                pos = after
            else
                pos = (find(src, "[\r\n]", pos) or len + 1)
            end
        elseif c == 34 or c == 39 then                       -- '...' or "..."
            local q, i, start = c, pos + 1, ln
            while i <= len do
                local d = byte(src, i)
                if d == 92 then i = i + 2
                elseif d == q then break
                else i = i + 1 end
            end
            if i > len then break end                        -- unterminated
            emit("string", unescape(sub(src, pos + 1, i - 1)), start)
            ln = ln + newlines(pos, i)
            pos = i + 1
        elseif c == 91 and long_bracket(pos) then            -- [[...]]
            local after, body = long_bracket(pos)
            emit("string", (gsub(body, "^\r?\n", "")), ln)
            ln = ln + newlines(pos, after - 1)
            pos = after
        elseif find(src, "^[%a_]", pos) then
            local s, e = find(src, "^[%w_]+", pos)
            emit("name", sub(src, s, e), ln)
            pos = e + 1
        elseif find(src, "^%.?%d", pos) then
            -- Greedy, as Lua's lexer is: digits, letters (hex, LuaJIT's LL,
            -- ULL and i suffixes), dots, and a signed exponent.
            local hex = find(src, "^0[xX]", pos)
            local _, e = find(src, "^[%w_%.]+", pos)
            local last = sub(src, e, e)
            if (last == "p" or last == "P" or (not hex and (last == "e" or last == "E")))
               and find(src, "^[%+%-]", e + 1) then
                _, e = find(src, "^[%+%-][%w_%.]*", e + 1)
            end
            emit("number", tonumber(sub(src, pos, e)), ln)
            pos = e + 1
        else
            local op = match(src, "^%.%.%.", pos) or match(src, "^[=~<>]=", pos)
                    or match(src, "^%.%.", pos) or match(src, "^::", pos) or sub(src, pos, pos)
            emit("op", op, ln)
            pos = pos + #op
        end
    end
    emit("eof", nil, ln)
    return { kind = kind, value = value, line = line, n = n }
end

--- Append a key to a field path, the way errors name fields.
-- Identifiers join with a dot, integers in brackets, other strings as
-- `["..."]`.
-- @tparam string path the parent path ("" for the root)
-- @param key a string or number key
-- @treturn string the child path
-- @usage srcmap.join("apis", 1) --> "apis[1]"; srcmap.join("apis[1]", "name") --> "apis[1].name"
function _M.join(path, key)
    if type(key) == "number" then
        if key == math.floor(key) and key > -2^53 and key < 2^53 then
            return format("%s[%d]", path, key)
        end
        return format("%s[%s]", path, tostring(key))
    end
    key = tostring(key)
    if match(key, "^[%a_][%w_]*$") then
        return path == "" and key or path .. "." .. key
    end
    return format('%s["%s"]', path, (gsub(key, '[%c"\\]', function(ch)
        return format("\\%03d", byte(ch))
    end)))
end

-- Index of the token after the expression starting at i, stopping at a ","
-- ";" or "}" that is not nested in brackets or a block.
local function skip_expression(t, i)
    local depth = 0
    while t.kind[i] ~= "eof" do
        local k, v = t.kind[i], t.value[i]
        if k == "op" then
            if v == "(" or v == "[" or v == "{" then
                depth = depth + 1
            elseif v == ")" or v == "]" or v == "}" then
                if depth == 0 then return i end
                depth = depth - 1
            elseif (v == "," or v == ";") and depth == 0 then
                return i
            end
        elseif k == "name" then
            if OPENS[v] then depth = depth + 1
            elseif CLOSES[v] then depth = depth - 1 end
        end
        i = i + 1
    end
    return i
end

-- Walk the table constructor whose "{" is token i, recording each field
-- under path. Returns the index of the token after its "}".
local function walk_table(t, i, path, map)
    local lines, dups = map.lines, map.duplicates
    local positional = 0
    i = i + 1
    while t.kind[i] ~= "eof" and not (t.kind[i] == "op" and t.value[i] == "}") do
        local key, key_line, known = nil, t.line[i], true
        if t.kind[i] == "name" and t.kind[i + 1] == "op" and t.value[i + 1] == "=" then
            key = t.value[i]
            i = i + 2
        elseif t.kind[i] == "op" and t.value[i] == "[" then
            local close = skip_expression(t, i + 1)
            if close == i + 2 and (t.kind[i + 1] == "string" or t.kind[i + 1] == "number") then
                key = t.value[i + 1]
            else
                known = false                   -- a computed key: not followed
            end
            i = close + 1                       -- past "]"
            if t.kind[i] == "op" and t.value[i] == "=" then i = i + 1 end
        else
            positional = positional + 1
            key = positional
        end

        local child
        if known and key ~= nil then
            child = _M.join(path, key)
            -- A path names one constructor, so a named key seen twice is the
            -- same key written twice in it (Lua keeps the last silently).
            local first = lines[child]
            if first and type(key) == "string" then
                dups[#dups + 1] = { path = child, line = key_line, first = first }
            end
            lines[child] = key_line
        end

        if child and t.kind[i] == "op" and t.value[i] == "{" then
            i = walk_table(t, i, child, map)
        end
        i = skip_expression(t, i)
        if t.kind[i] == "op" and (t.value[i] == "," or t.value[i] == ";") then
            i = i + 1
        end
    end
    return i + 1
end

-- Find the "{" of the table the chunk returns, following
-- `return { ... }` and `local t = { ... } ... return t` at the top level.
-- Returns its token index (or nil) and the line of the top-level return.
local function find_root(t)
    local depth, ret = 0, nil
    local assigned = {}                 -- name -> index of "{" assigned at top level
    for i = 1, t.n do
        local k, v = t.kind[i], t.value[i]
        if k == "name" then
            if OPENS[v] then depth = depth + 1
            elseif CLOSES[v] then depth = depth - 1
            elseif v == "return" and depth == 0 then ret = i
            elseif depth == 0 and t.kind[i + 1] == "op" and t.value[i + 1] == "="
                   and t.kind[i + 2] == "op" and t.value[i + 2] == "{" then
                assigned[v] = i + 2
            end
        elseif k == "op" then
            if v == "(" or v == "[" or v == "{" then depth = depth + 1
            elseif v == ")" or v == "]" or v == "}" then depth = depth - 1 end
        end
    end
    if not ret then return nil, nil end
    local nk, nv = t.kind[ret + 1], t.value[ret + 1]
    if nk == "op" and nv == "{" then
        return ret + 1, t.line[ret]
    end
    if nk == "name" and assigned[nv] then
        local after = t.kind[ret + 2]
        if after == "eof" or (after == "op" and t.value[ret + 2] == ";") then
            return assigned[nv], t.line[ret]
        end
    end
    return nil, t.line[ret]
end

--- Map every field of the returned table to the line it is written on.
-- @tparam string src the configuration source (already known to compile)
-- @treturn table `{ lines = { [path] = line },
--   duplicates = { { path =, line =, first = } }, root_line = n|nil,
--   return_line = n|nil, last_line = n }`; the root table's own line is
--   `lines[""]`.
-- @usage local map = srcmap.scan(src); print(map.lines["listen[1].port"])
function _M.scan(src)
    local t = _M.tokenize(src)
    local map = { lines = {}, duplicates = {},
                  last_line = t.line[t.n] }
    local root, ret_line = find_root(t)
    map.return_line = ret_line
    if root then
        map.root_line = t.line[root]
        map.lines[""] = t.line[root]
        walk_table(t, root, "", map)
    end
    return map
end

return _M
