--- A strict parser of the Prometheus text exposition format 0.0.4, for the
-- metrics specs: every line must be a HELP, a TYPE, a comment or a sample
-- of the grammar; a family's TYPE comes before its samples, its samples are
-- together; no series twice; a histogram's buckets per label set have
-- increasing `le` ending at +Inf, cumulative counts, and a _count equal to
-- the +Inf bucket. Errors name the line.
--
-- prom.parse(text) -> { types = {family = type}, samples = { {name=, labels={}, value=} ... } }
-- prom.value(parsed, name, labels) -> the value of the sample whose labels
--   are exactly LABELS, or 0 when there is none
-- prom.sum(parsed, name, labels) -> the sum of the samples whose labels
--   include LABELS
local prom = {}

local NAME = "^[a-zA-Z_:][a-zA-Z0-9_:]*"
local LABEL = "^[a-zA-Z_][a-zA-Z0-9_]*"
local TYPES = { counter = true, gauge = true, histogram = true, summary = true, untyped = true }

local function number(s)
    if s == "+Inf" then return math.huge end
    if s == "-Inf" then return -math.huge end
    if s == "NaN" then return 0 / 0 end
    if not s:match("^[-+]?%d+%.?%d*[eE]?[-+]?%d*$") and not s:match("^[-+]?%.%d+[eE]?[-+]?%d*$") then return nil end
    return tonumber(s)
end

-- The family a sample NAME belongs to, given the TYPEs seen.
local function family_of(name, types)
    if types[name] then return name end
    for _, suffix in ipairs({ "_bucket", "_sum", "_count" }) do
        local base = name:sub(1, -#suffix - 1)
        if name:sub(-#suffix) == suffix and (types[base] == "histogram" or types[base] == "summary") then
            return base
        end
    end
    return name
end

local function valid_utf8(s)
    local i, n = 1, #s
    while i <= n do
        local c = s:byte(i)
        local len = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2 or (c >= 0xE0 and c <= 0xEF) and 3
                    or (c >= 0xF0 and c <= 0xF4) and 4 or nil
        if not len or i + len - 1 > n then return false end
        for k = i + 1, i + len - 1 do
            local b = s:byte(k)
            if b < 0x80 or b > 0xBF then return false end
        end
        i = i + len
    end
    return true
end

-- Parse the labels at S[POS] ("{" ...). Returns the table, the key and the position after "}".
local function parse_labels(s, pos, fail)
    local labels, names = {}, {}
    pos = pos + 1
    while true do
        if s:sub(pos, pos) == "}" then return labels, names, pos + 1 end
        local name = s:match(LABEL, pos)
        if not name then fail("a label name expected") end
        if name:sub(1, 2) == "__" then fail("label name " .. name .. " is reserved") end
        if labels[name] then fail("label " .. name .. " twice") end
        pos = pos + #name
        if s:sub(pos, pos + 1) ~= '="' then fail('=" expected after ' .. name) end
        pos = pos + 2
        local out = {}
        while true do
            local c = s:sub(pos, pos)
            if c == "" then fail("unterminated label value") end
            if c == '"' then break end
            if c == "\\" then
                local e = s:sub(pos + 1, pos + 1)
                if e == "\\" then out[#out + 1] = "\\"
                elseif e == '"' then out[#out + 1] = '"'
                elseif e == "n" then out[#out + 1] = "\n"
                else fail("bad escape \\" .. e) end
                pos = pos + 2
            else
                out[#out + 1] = c
                pos = pos + 1
            end
        end
        local v = table.concat(out)
        if not valid_utf8(v) then fail("label value not UTF-8") end
        labels[name] = v
        names[#names + 1] = name
        pos = pos + 1
        local c = s:sub(pos, pos)
        if c == "," then pos = pos + 1
        elseif c ~= "}" then fail(", or } expected") end
    end
end

local function key_of(labels, skip)
    local names = {}
    for k in pairs(labels) do if k ~= skip then names[#names + 1] = k end end
    table.sort(names)
    local parts = {}
    for _, k in ipairs(names) do parts[#parts + 1] = k .. "=" .. labels[k] end
    return table.concat(parts, "\0")
end

function prom.parse(text)
    assert(type(text) == "string", "no text")
    if text ~= "" and text:sub(-1) ~= "\n" then error("the last line does not end with a newline") end
    local types, helps, samples, seen, done, current = {}, {}, {}, {}, {}, nil
    local hist = {}       -- family .. key -> { last_le, last_count, inf, count }
    local n = 0
    for line in text:gmatch("([^\n]*)\n") do
        n = n + 1
        local function fail(why) error(("line %d: %s: %q"):format(n, why, line), 0) end
        if line:sub(1, 1) == "#" then
            local kw, name, rest = line:match("^# (%u+) ([^ ]+) ?(.*)$")
            if kw == "TYPE" then
                if not name:match(NAME .. "$") then fail("bad metric name") end
                if not TYPES[rest] then fail("unknown type") end
                if types[name] then fail("a second TYPE for " .. name) end
                if seen[name] then fail("TYPE after samples of " .. name) end
                types[name] = rest
            elseif kw == "HELP" then
                if not name:match(NAME .. "$") then fail("bad metric name") end
                if helps[name] then fail("a second HELP for " .. name) end
                if rest:gsub("\\[\\n]", ""):find("\\", 1, true) then fail("bad escape in HELP") end
                helps[name] = rest
            end
        elseif line:match("^%s*$") then
            if line ~= "" then fail("a line of blanks") end
        else
            local name = line:match(NAME)
            if not name then fail("a metric name expected") end
            local pos = #name + 1
            local labels, key = {}, ""
            if line:sub(pos, pos) == "{" then
                labels, _, pos = parse_labels(line, pos, fail)
            end
            key = key_of(labels)
            local rest = line:sub(pos)
            local value_s, ts = rest:match("^ (%S+)$")
            if not value_s then value_s, ts = rest:match("^ (%S+) (%-?%d+)$") end
            if not value_s then fail("a value expected after one space") end
            local value = number(value_s)
            if not value then fail("bad value " .. value_s) end
            local fam = family_of(name, types)
            if current ~= fam then
                if done[fam] then fail("samples of " .. fam .. " are not together") end
                if current then done[current] = true end
                current = fam
            end
            seen[fam] = true
            local id = name .. "\0" .. key
            if seen[id] then fail("the same series twice") end
            seen[id] = true
            local t = types[fam]
            if t == "counter" and (value < 0 or value ~= value) then fail("a negative counter") end
            if t == "histogram" then
                local hk = fam .. "\0" .. key_of(labels, "le")
                local h = hist[hk] or { last_le = -math.huge, last = 0 }
                hist[hk] = h
                if name == fam .. "_bucket" then
                    local le = labels.le and number(labels.le)
                    if not le then fail("a bucket without a numeric le") end
                    if le <= h.last_le then fail("buckets' le not increasing") end
                    if value < h.last then fail("bucket counts not cumulative") end
                    h.last_le, h.last = le, value
                    if le == math.huge then h.inf = value end
                elseif name == fam .. "_count" then
                    h.count = value
                elseif name ~= fam .. "_sum" then
                    fail("not a histogram sample")
                end
            elseif name ~= fam then
                fail("a sample of an unknown family")
            end
            samples[#samples + 1] = { name = name, labels = labels, value = value }
        end
    end
    for hk, h in pairs(hist) do
        if h.inf == nil then error("histogram " .. hk:gsub("%z", " ") .. " has no +Inf bucket", 0) end
        if h.count ~= h.inf then error("histogram " .. hk:gsub("%z", " ") .. ": _count is not the +Inf bucket", 0) end
    end
    return { types = types, helps = helps, samples = samples }
end

local function includes(labels, want, exact)
    for k, v in pairs(want) do if labels[k] ~= v then return false end end
    if exact then
        for k in pairs(labels) do if want[k] == nil then return false end end
    end
    return true
end

function prom.value(p, name, labels)
    for _, s in ipairs(p.samples) do
        if s.name == name and includes(s.labels, labels or {}, true) then return s.value end
    end
    return 0
end

function prom.sum(p, name, labels)
    local total = 0
    for _, s in ipairs(p.samples) do
        if s.name == name and includes(s.labels, labels or {}, false) then total = total + s.value end
    end
    return total
end

return prom
