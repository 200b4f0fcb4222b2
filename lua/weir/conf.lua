--- The configuration: load an operator's file, validate it, normalise it.
--
-- The file is a Lua chunk that returns a table. It runs in an empty
-- environment (no `os`, `io`, `require`, `print`; reading an undefined name
-- is an error) with a bounded instruction budget. The table it returns is
-- checked against `_M.schema`, one declarative description of every field
-- that both validation and `describe()` (hence the documentation spec) read.
--
-- Every problem is collected, not just the first, each as one line
-- `FILE:LINE: FIELD: message`, sorted by line. LINE comes from
-- `weir.srcmap`, which reads the source text to find where each field is
-- written.
--
-- The normalised table has defaults filled, sizes in bytes, durations in
-- milliseconds, paths absolute, endpoint URLs split into their parts, and
-- `_src` tables telling the C side (core/conf.c) where things were written
-- so that its own checks (DNS, certificates) can name a line too.
--
-- @module weir.conf
-- @usage local conf, errs = require("weir.conf").load("/etc/weir/weir.conf.lua", { cpus = 4 })

local srcmap = require "weir.srcmap"
local policy = require "weir.policy"

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local setmetatable, setfenv, loadstring = setmetatable, setfenv, loadstring
local floor, huge = math.floor, math.huge
local byte, sub, find, match, gsub, lower, format =
    string.byte, string.sub, string.find, string.match, string.gsub, string.lower,
    string.format
local concat, sort = table.concat, table.sort

local _M = { _VERSION = "0.1.0" }

local CHUNK_NAME   = "config"          -- what Lua calls the chunk in its messages
local MAX_EXACT    = 2 ^ 53            -- largest integer a Lua number holds exactly

local KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024

------------------------------------------------------------------------------
-- Describing values in messages
------------------------------------------------------------------------------

local function quote(s)
    if #s > 80 then s = sub(s, 1, 77) .. "..." end
    return '"' .. gsub(s, '[%c"\\]', function(c)
        if c == "\n" then return "\\n" end
        if c == "\t" then return "\\t" end
        if c == '"' or c == "\\" then return "\\" .. c end
        return format("\\%03d", byte(c))
    end) .. '"'
end

local function show_number(n)
    if n ~= n then return "nan" end
    if n == huge then return "inf" end
    if n == -huge then return "-inf" end
    if n == floor(n) and n > -MAX_EXACT and n < MAX_EXACT then return format("%d", n) end
    return format("%.14g", n)
end

-- How a value appears after "got ": strings quoted, numbers and booleans as
-- written, anything else by its type.
local function show(v)
    local t = type(v)
    if t == "string" then return quote(v) end
    if t == "number" then return show_number(v) end
    if t == "boolean" then return tostring(v) end
    if t == "nil" then return "nil" end
    return "a " .. t
end

local function is_integer(v)
    return type(v) == "number" and v == floor(v) and v > -MAX_EXACT and v < MAX_EXACT
end

-- 4096 -> "4k", 1048576 -> "1m", 1000 -> "1000"
local function show_size(n)
    for _, u in ipairs({ { GIB, "g" }, { MIB, "m" }, { KIB, "k" } }) do
        if n >= u[1] and n % u[1] == 0 then return format("%d%s", n / u[1], u[2]) end
    end
    return format("%d", n)
end

-- 10000 -> "10s", 90000 -> "90s", 500 -> "500ms", 3600000 -> "1h"
local function show_duration(ms)
    if ms > 0 and ms % 3600000 == 0 then return format("%dh", ms / 3600000) end
    if ms > 0 and ms % 1000 == 0 then return format("%ds", ms / 1000) end
    return format("%dms", ms)
end

------------------------------------------------------------------------------
-- Value syntaxes: sizes, durations, addresses, URLs
------------------------------------------------------------------------------

local SIZE_UNITS = { [""] = 1, k = KIB, m = MIB, g = GIB }

--- Parse a size.
-- @param v a number of bytes, or a string of digits with an optional unit
--   `k`, `m`, `g` (binary multiples, any case, optionally followed by `b`)
-- @treturn[1] number bytes
-- @treturn[2] nil
-- @treturn[2] string what is wrong
-- @usage conf.parse_size("16k") --> 16384
function _M.parse_size(v)
    if type(v) == "number" then
        if not is_integer(v) then
            return nil, "expected a whole number of bytes, got " .. show(v)
        end
        if v < 0 then return nil, "must not be negative, got " .. show(v) end
        return v
    end
    if type(v) ~= "string" then
        return nil, 'expected a size (bytes, or a string like "512", "16k", "1m", "1g"), got ' .. show(v)
    end
    local digits, unit = match(lower(v), "^(%d+)([kmg]?)b?$")
    if not digits then
        return nil, 'expected a size like "512", "16k", "1m" or "1g", got ' .. show(v)
    end
    local n = tonumber(digits) * SIZE_UNITS[unit]
    if n >= MAX_EXACT then return nil, "is too large, got " .. show(v) end
    return n
end

local DURATION_UNITS = { ms = 1, s = 1000, m = 60000, h = 3600000 }

--- Parse a duration.
-- @param v a number of seconds (fractions allowed), or a string: a number
--   followed by `ms`, `s`, `m` or `h` (no unit: seconds)
-- @treturn[1] number milliseconds, a whole number
-- @treturn[2] nil
-- @treturn[2] string what is wrong
-- @usage conf.parse_duration("500ms") --> 500; conf.parse_duration(1.5) --> 1500
function _M.parse_duration(v)
    local ms
    if type(v) == "number" then
        if v ~= v or v == huge or v == -huge then
            return nil, "expected a number of seconds, got " .. show(v)
        end
        ms = v * 1000
    elseif type(v) == "string" then
        local num, unit = match(v, "^(%d*%.?%d+)(%a*)$")
        if not num then num, unit = match(v, "^(%d+%.)(%a*)$") end
        local mult = unit and DURATION_UNITS[unit == "" and "s" or unit]
        if not mult then
            return nil, 'expected a duration like 10, "500ms", "10s", "5m" or "1h", got ' .. show(v)
        end
        ms = tonumber(num) * mult
    else
        return nil, 'expected a duration (seconds, or a string like "500ms", "10s", "5m", "1h"), got '
                    .. show(v)
    end
    if ms < 0 then return nil, "must not be negative, got " .. show(v) end
    local whole = floor(ms + 0.5)
    if math.abs(whole - ms) > 1e-6 then
        return nil, "must be a whole number of milliseconds, got " .. show(v)
    end
    if whole >= MAX_EXACT then return nil, "is too large, got " .. show(v) end
    return whole
end

--- Parse a dotted-quad IPv4 address.
-- @tparam string s the address
-- @treturn string|nil s when valid (no leading zeros, each part 0..255)
function _M.parse_ipv4(s)
    if type(s) ~= "string" then return nil end
    local parts = { match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
    if #parts ~= 4 then return nil end
    for _, p in ipairs(parts) do
        if #p > 3 or tonumber(p) > 255 or (#p > 1 and sub(p, 1, 1) == "0") then return nil end
    end
    return s
end

-- Split "a:b:c" into hex groups of one to four digits; nil if one is not.
local function hex_groups(part, into)
    if part == "" then return into end
    for g in (part .. ":"):gmatch("([^:]*):") do
        if not match(g, "^%x%x?%x?%x?$") then return nil end
        into[#into + 1] = g
    end
    return into
end

--- Parse an IPv6 address (without brackets or zone).
-- @tparam string s the address, e.g. "::1" or "::ffff:10.0.0.1"
-- @treturn string|nil the address fully expanded ("0:0:0:0:0:0:0:1"), a
--   canonical form for comparing two addresses, or nil when invalid
function _M.parse_ipv6(s)
    if type(s) ~= "string" or s == "" or find(s, "[^%x:%.]") then return nil end
    local head = s
    if find(s, ".", 1, true) then                  -- a trailing IPv4 part
        local pre, v4 = match(s, "^(.*:)([%d%.]+)$")
        if not pre or not _M.parse_ipv4(v4) then return nil end
        local a, b, c, d = match(v4, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
        head = pre .. format("%x:%x", a * 256 + b, c * 256 + d)
    end
    local groups
    local gap = find(head, "::", 1, true)
    if gap then
        if find(head, "::", gap + 1, true) then return nil end
        local left = hex_groups(sub(head, 1, gap - 1), {})
        local right = hex_groups(sub(head, gap + 2), {})
        if not left or not right or #left + #right > 7 then return nil end
        groups = left
        for _ = 1, 8 - #left - #right do groups[#groups + 1] = "0" end
        for _, g in ipairs(right) do groups[#groups + 1] = g end
    else
        groups = hex_groups(head, {})
        if not groups or #groups ~= 8 then return nil end
    end
    for i, g in ipairs(groups) do groups[i] = format("%x", tonumber(g, 16)) end
    return concat(groups, ":")
end

-- A DNS name (letters, digits, '-', '_', dots; labels 1..63, total <= 253)
-- or an IPv4 address. Returns true when valid.
local function valid_host_name(s)
    if #s == 0 or #s > 253 then return false end
    if match(s, "^[%d%.]+$") then return _M.parse_ipv4(s) ~= nil end
    if find(s, "[^%w%-_%.]") then return false end
    local name = gsub(s, "%.$", "")                 -- a fully qualified "name."
    for label in (name .. "."):gmatch("([^.]*)%.") do
        if #label == 0 or #label > 63 or find(label, "^%-") or find(label, "%-$") then
            return false
        end
    end
    return true
end

local DEFAULT_PORT = { ws = 80, wss = 443 }

--- Parse a backend URL.
-- @tparam string s `ws://` or `wss://`, a host (name, IPv4 or `[IPv6]`), an
--   optional port, path and query; no user information, no fragment
-- @treturn[1] table `{ url, scheme, tls, host, port, path, query, host_header }`:
--   host without brackets, port filled from the scheme, path at least "/",
--   query without "?" (nil when empty), host_header "host[:port]" with the
--   port only when it is not the scheme's default
-- @treturn[2] nil
-- @treturn[2] string what is wrong
-- @usage conf.parse_url("ws://127.0.0.1:9000/ws?v=2")
function _M.parse_url(s)
    local scheme, rest
    if type(s) == "string" then scheme, rest = match(s, "^(%a[%w%+%.%-]*)://(.*)$") end
    scheme = scheme and lower(scheme)
    if not DEFAULT_PORT[scheme] then
        return nil, "expected a ws:// or wss:// URL, got " .. show(s)
    end
    if find(s, "[%s%c]") then
        return nil, "a URL must not contain spaces or control characters, got " .. show(s)
    end
    if find(rest, "#", 1, true) then
        return nil, "a backend URL must not have a fragment (#...), got " .. show(s)
    end
    local authority, tail = match(rest, "^([^/?]*)(.*)$")
    if find(authority, "@", 1, true) then
        return nil, "a backend URL must not contain user information (user@), got " .. show(s)
    end

    local host, port_part, bracketed
    if sub(authority, 1, 1) == "[" then
        host, port_part = match(authority, "^%[([^%]]*)%](.*)$")
        if not host or not _M.parse_ipv6(host) then
            return nil, "invalid IPv6 address in URL " .. show(s)
        end
        bracketed = true
    else
        host, port_part = match(authority, "^([^:]*)(.*)$")
        if host == "" then return nil, "the URL has no host: " .. show(s) end
        if not valid_host_name(host) then
            return nil, "invalid host " .. quote(host) .. " in URL " .. show(s)
        end
    end

    local port = DEFAULT_PORT[scheme]
    if port_part ~= "" then
        local digits = match(port_part, "^:(%d+)$")
        local n = tonumber(digits)
        if not n or n < 1 or n > 65535 then
            return nil, "invalid port in URL " .. show(s) .. " (expected 1..65535)"
        end
        port = n
    end

    local path, question, query = match(tail, "^([^?]*)(%??)(.*)$")
    if path == "" then path = "/" end
    if question == "" or query == "" then query = nil end

    local host_text = bracketed and "[" .. host .. "]" or host
    return {
        url         = s,
        scheme      = scheme,
        tls         = scheme == "wss",
        host        = host,
        port        = port,
        path        = path,
        query       = query,
        host_header = port == DEFAULT_PORT[scheme] and host_text
                      or host_text .. ":" .. port,
    }
end

-- %XX escapes in a URL's user information.
local function percent_decode(s)
    if find(s, "%%[^%x]") or find(s, "%%%x?$") then return nil end
    return (gsub(s, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Parse a Redis URL (`state.redis`).
-- @tparam string s `redis://[[user]:password@]host[:port][/db]`: a host
--   name, IPv4 or `[IPv6]` address; port 6379 by default; db a whole number
--   (default 0). User and password may hold %XX escapes.
-- @treturn[1] table `{ host, port, db, user, password, name }`: user and
--   password nil when not given; name "host:port" for messages (no password)
-- @treturn[2] nil
-- @treturn[2] string what is wrong; the URL is shown with its password
--   replaced by "***"
-- @usage conf.parse_redis_url("redis://:s3cret@10.0.0.5:6380/2")
function _M.parse_redis_url(s)
    local FORM = "redis://[[user]:password@]host[:port][/db]"
    if type(s) ~= "string" then return nil, "expected a URL " .. FORM .. ", got " .. show(s) end
    local scheme, rest = match(s, "^(%a[%w%+%.%-]*)://(.*)$")
    scheme = scheme and lower(scheme)
    local authority, path = match(rest or "", "^([^/]*)(.*)$")
    local at = authority and match(authority, "^.*()@")
    local userinfo = at and sub(authority, 1, at - 1) or ""
    local hostport = at and sub(authority, at + 1) or authority
    -- the password never appears in a message
    local shown = s
    if at then shown = scheme .. "://" .. (match(userinfo, "^([^:]*:)") or "") .. "***@" .. hostport .. path end
    if scheme == "rediss" then
        return nil, "rediss:// (TLS) is not supported (hiredis 0.14 has no TLS): use redis:// on a trusted "
                    .. "network, or a TLS tunnel, got " .. show(shown)
    end
    if scheme ~= "redis" then return nil, "expected a URL " .. FORM .. ", got " .. show(shown) end
    if find(s, "[%s%c]") then return nil, "a URL must not contain spaces or control characters" end
    if find(rest, "[?#]") then
        return nil, "expected a URL " .. FORM .. " (no query, no fragment), got " .. show(shown)
    end
    local user, password
    if at then
        local u, pw = match(userinfo, "^([^:]*):(.*)$")
        if not u then
            return nil, "write the password after a colon (redis://:password@host or "
                        .. "redis://user:password@host), got " .. show(shown)
        end
        user, password = percent_decode(u), percent_decode(pw)
        if not user or not password then return nil, "a bad %XX escape in the user or password of " .. show(shown) end
        if user == "" then user = nil end
        if password == "" then return nil, "the password is empty in " .. show(shown) end
    end
    local host, port_part
    if sub(hostport, 1, 1) == "[" then
        host, port_part = match(hostport, "^%[([^%]]*)%](.*)$")
        if not host or not _M.parse_ipv6(host) then return nil, "invalid IPv6 address in URL " .. show(shown) end
    else
        host, port_part = match(hostport, "^([^:]*)(.*)$")
        if host == "" then return nil, "the URL has no host: " .. show(shown) end
        if not valid_host_name(host) then return nil, "invalid host " .. quote(host) .. " in URL " .. show(shown) end
    end
    local port = 6379
    if port_part ~= "" then
        local n = tonumber(match(port_part, "^:(%d+)$"))
        if not n or n < 1 or n > 65535 then return nil, "invalid port in URL " .. show(shown) .. " (expected 1..65535)" end
        port = n
    end
    local dbn, db = 0, match(path, "^/(.*)$") or path
    if db ~= "" then
        dbn = match(db, "^%d+$") and tonumber(db)
        if not dbn or dbn > 2147483647 then
            return nil, "the database after the host must be a whole number, got " .. show(shown)
        end
    end
    local name = (find(host, ":", 1, true) and "[" .. host .. "]" or host) .. ":" .. port
    return { host = host, port = port, db = dbn, user = user, password = password, name = name }
end

------------------------------------------------------------------------------
-- Paths
------------------------------------------------------------------------------

-- Resolve "." and ".." segments and repeated slashes, lexically.
local function clean_path(p)
    local absolute = sub(p, 1, 1) == "/"
    local out = {}
    for seg in p:gmatch("[^/]+") do
        if seg == ".." then
            if #out > 0 and out[#out] ~= ".." then
                out[#out] = nil
            elseif not absolute then
                out[#out + 1] = ".."
            end
        elseif seg ~= "." then
            out[#out + 1] = seg
        end
    end
    local s = concat(out, "/")
    if absolute then return "/" .. s end
    return s == "" and "." or s
end

--- Resolve a path written in the configuration.
-- @tparam string dir the configuration file's directory
-- @tparam string p the path as written
-- @treturn string p when absolute, else p relative to dir; "." and ".."
--   resolved lexically (symbolic links are not followed)
function _M.resolve_path(dir, p)
    if sub(p, 1, 1) == "/" then return clean_path(p) end
    return clean_path(dir .. "/" .. p)
end

------------------------------------------------------------------------------
-- Validation machinery
------------------------------------------------------------------------------

-- A node is a place in the configuration: its path and its parent, so that
-- an error on a field that has no line of its own (a missing field, a value
-- built by code) takes the line of the nearest enclosing one.
local function child(node, key)
    return { path = srcmap.join(node.path, key), parent = node }
end

local function line_of(ctx, node)
    local lines = ctx.map.lines
    while node do
        local l = lines[node.path]
        if l then return l end
        node = node.parent
    end
    return ctx.map.return_line or 1
end

local function report(ctx, node, msg)
    local errs = ctx.errors
    errs[#errs + 1] = { line = line_of(ctx, node), field = node.path, msg = msg, seq = #errs + 1 }
    return nil
end

-- A warning: the configuration is accepted, but probably does not do what
-- was meant. Reported like an error, never refuses anything.
local function warn(ctx, node, msg)
    local w = ctx.warnings
    w[#w + 1] = { line = line_of(ctx, node), field = node.path, msg = msg, seq = #w + 1 }
end

-- Where NODE was written, for the C side's own messages.
local function source_of(ctx, node)
    return { line = line_of(ctx, node), field = node.path }
end

-- Edit distance, to suggest the field a typo meant.
local function distance(a, b)
    local prev = {}
    for j = 0, #b do prev[j] = j end
    for i = 1, #a do
        local cur = { [0] = i }
        for j = 1, #b do
            local cost = byte(a, i) == byte(b, j) and 0 or 1
            cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
        end
        prev = cur
    end
    return prev[#b]
end

local function suggest(key, fields)
    local best, best_d
    for _, f in ipairs(fields) do
        local d = distance(lower(key), f.name)
        if d <= math.max(1, floor(#f.name / 4)) and (not best_d or d < best_d) then
            best, best_d = f.name, d
        end
    end
    return best and format(" (did you mean %s?)", best) or ""
end

local function key_order(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "number" or ta == "string" then return a < b end
    return tostring(a) < tostring(b)
end

local function sorted_keys(t, keep)
    local keys = {}
    for k in pairs(t) do
        if keep(k) then keys[#keys + 1] = k end
    end
    sort(keys, key_order)
    return keys
end

local validate           -- forward: validate(spec, value, node, ctx)
local check_priority_ties   -- forward: check_priority_ties(conf, ctx)

local function deep_copy(v)
    if type(v) ~= "table" then return v end
    local out = {}
    for k, x in pairs(v) do out[k] = deep_copy(x) end
    return out
end

-- Each type turns a raw value into its normalised form, or reports and
-- returns nil.
local types = {}

function types.string(spec, v, node, ctx)
    if type(v) ~= "string" then
        local hint = type(v) == "number" and " (a number: write it in quotes)" or ""
        return report(ctx, node, "expected a string, got " .. show(v) .. hint)
    end
    if v == "" then return report(ctx, node, "must not be empty") end
    return v
end

function types.boolean(_, v, node, ctx)
    if type(v) ~= "boolean" then
        return report(ctx, node, "expected true or false, got " .. show(v))
    end
    return v
end

local function check_range(spec, n, raw, node, ctx, shown)
    if spec.min and n < spec.min then
        local what = spec.max and format("between %s and %s", shown(spec.min), shown(spec.max))
                     or "at least " .. shown(spec.min)
        return report(ctx, node, format("must be %s, got %s", what, show(raw)))
    end
    if spec.max and n > spec.max then
        local what = spec.min and format("between %s and %s", shown(spec.min), shown(spec.max))
                     or "at most " .. shown(spec.max)
        return report(ctx, node, format("must be %s, got %s", what, show(raw)))
    end
    return n
end

function types.integer(spec, v, node, ctx)
    if not is_integer(v) then
        return report(ctx, node, "expected an integer, got " .. show(v))
    end
    return check_range(spec, v, v, node, ctx, show_number)
end

function types.size(spec, v, node, ctx)
    local n, err = _M.parse_size(v)
    if not n then return report(ctx, node, err) end
    return check_range(spec, n, v, node, ctx, show_size)
end

function types.duration(spec, v, node, ctx)
    local ms, err = _M.parse_duration(v)
    if not ms then return report(ctx, node, err) end
    if ms == 0 then
        if spec.zero_disables then return 0 end
        return report(ctx, node, "must be greater than 0, got " .. show(v))
    end
    return check_range(spec, ms, v, node, ctx, show_duration)
end

function types.enum(spec, v, node, ctx)
    for _, allowed in ipairs(spec.one_of) do
        if v == allowed then return v end
    end
    local hint = ""
    for _, allowed in ipairs(spec.one_of) do
        if type(v) == "number" and show(v) == allowed then hint = format(' (write it in quotes: "%s")', allowed) end
    end
    return report(ctx, node, format("expected one of %s, got %s%s",
                                    concat(spec.one_of, ", "), show(v), hint))
end

function types.path(_, v, node, ctx)
    if type(v) ~= "string" then
        return report(ctx, node, "expected a file path, got " .. show(v))
    end
    if v == "" then return report(ctx, node, "must not be empty") end
    if find(v, "%z") then return report(ctx, node, "must not contain a NUL byte") end
    return _M.resolve_path(ctx.dir, v)
end

function types.address(_, v, node, ctx)
    if type(v) ~= "string" then
        return report(ctx, node, "expected an IPv4 or IPv6 address, got " .. show(v))
    end
    if _M.parse_ipv4(v) or _M.parse_ipv6(v) then return v end
    if match(v, "^%[.*%]$") then
        return report(ctx, node, "write IPv6 addresses without brackets, got " .. show(v))
    end
    return report(ctx, node, "expected an IPv4 or IPv6 address (host names are not resolved here), got "
                             .. show(v))
end

function types.workers(spec, v, node, ctx)
    if v == "auto" then return ctx.cpus or "auto" end
    if not is_integer(v) then
        return report(ctx, node, 'expected an integer or "auto", got ' .. show(v))
    end
    return check_range(spec, v, v, node, ctx, show_number)
end

function types.redis_url(_, v, node, ctx)
    local u, err = _M.parse_redis_url(v)
    if not u then return report(ctx, node, err) end
    u.url = v
    return u
end

function types.url(_, v, node, ctx)
    local u, err = _M.parse_url(v)
    if not u then return report(ctx, node, err) end
    return u
end

-- Records and lists return what they could normalise even when some of
-- their fields failed (those are reported and left out), so that the rules
-- spanning fields still run on the rest and every error is found at once.
-- Nothing partial escapes: parse() returns no table when anything failed.
function types.record(spec, v, node, ctx)
    if type(v) ~= "table" then
        return report(ctx, node, "expected a table, got " .. show(v))
    end
    local out, known = {}, spec.by_name
    for _, k in ipairs(sorted_keys(v, function(k) return not known[k] end)) do
        if type(k) == "string" then
            report(ctx, child(node, k), "unknown field" .. suggest(k, spec.fields))
        elseif type(k) == "number" then
            report(ctx, child(node, k), "unexpected list item (this table takes named fields: "
                                        .. spec.field_list .. ")")
        else
            report(ctx, node, "unexpected key of type " .. type(k))
        end
    end
    for _, f in ipairs(spec.fields) do
        local raw, at = v[f.name], child(node, f.name)
        if raw == nil then
            if f.required then
                report(ctx, at, "required field missing")
            elseif f.default ~= nil then
                out[f.name] = validate(f, deep_copy(f.default), at, ctx)
            end
        else
            out[f.name] = validate(f, raw, at, ctx)
        end
    end
    if spec.locate then
        out._src = {}
        for _, f in ipairs(spec.fields) do
            if v[f.name] ~= nil then out._src[f.name] = source_of(ctx, child(node, f.name)) end
        end
    end
    return out
end

function types.list(spec, v, node, ctx)
    if type(v) ~= "table" then
        local what = spec.elements.type == "record" and "a list of tables" or "a list"
        return report(ctx, node, "expected " .. what .. ", got " .. show(v))
    end
    local count, max = 0, 0
    for k in pairs(v) do
        if is_integer(k) and k >= 1 then
            count = count + 1
            if k > max then max = k end
        end
    end
    for _, k in ipairs(sorted_keys(v, function(k) return not (is_integer(k) and k >= 1) end)) do
        report(ctx, child(node, k), format("unknown field (%s is a list: put each entry in "
                                           .. "its own table, %s = { { ... } })",
                                           node.path, node.path))
    end
    if max ~= count then
        report(ctx, node, "the list has holes (an entry is nil)")
    end
    if count == 0 and spec.non_empty then
        return report(ctx, node, "must not be empty")
    end
    local out = {}
    for i = 1, max do
        if v[i] ~= nil then out[i] = validate(spec.elements, v[i], child(node, i), ctx) end
    end
    return out
end

-- A map: NAME = VALUE entries whose names the schema does not know in
-- advance (message types, say), each VALUE checked against `values`.
-- Names are non-empty strings.
function types.map(spec, v, node, ctx)
    if type(v) ~= "table" then
        return report(ctx, node, "expected a table of NAME = VALUE entries, got " .. show(v))
    end
    local out, count = {}, 0
    for _, k in ipairs(sorted_keys(v, function() return true end)) do
        local at = child(node, k)
        if type(k) ~= "string" then
            report(ctx, at, format("expected NAME = VALUE entries, got a key of type %s "
                                   .. '(write ["name"] = ... for names that are not identifiers)', type(k)))
        elseif k == "" then
            report(ctx, at, "a name must not be empty")
        else
            count = count + 1
            out[k] = validate(spec.values, v[k], at, ctx)
        end
    end
    if count == 0 and spec.non_empty then
        return report(ctx, node, "must not be empty")
    end
    return out
end

-- One string or a list of strings, normalised to a list.
function types.strings(spec, v, node, ctx)
    if type(v) == "string" then v = { v } end
    return types.list({ type = "list", elements = { type = "string" }, non_empty = spec.non_empty },
                      v, node, ctx)
end

-- Endpoints are written either as a URL string or as a table with `url`
-- and TLS options; both normalise to one table.
function types.endpoint(spec, v, node, ctx)
    if type(v) == "string" then
        local out = types.url(spec, v, node, ctx)
        if not out then return nil end
        out.verify = true
        out._src = { url = source_of(ctx, node) }
        return out
    end
    if type(v) ~= "table" then
        return report(ctx, node, "expected a ws:// or wss:// URL or a table { url = ... }, got "
                                 .. show(v))
    end
    local r = types.record(spec.record, v, node, ctx)
    local out = r.url
    if not out then return nil end
    out.ca, out.verify, out.server_name, out._src = r.ca, r.verify, r.server_name, r._src
    if not out.tls then
        for _, name in ipairs({ "ca", "verify", "server_name" }) do
            if v[name] ~= nil then
                report(ctx, child(node, name), "applies only to wss:// endpoints, and "
                                               .. show(out.url) .. " is ws://")
            end
        end
    end
    return out
end

function types.number(spec, v, node, ctx)
    if type(v) ~= "number" or v ~= v then
        return report(ctx, node, "expected a number, got " .. show(v))
    end
    return check_range(spec, v, v, node, ctx, show_number)
end

-- A rate limit of a tier: { frames = N | bytes = N|"10m", per =, burst =,
-- direction = } (weir.limits.parse says what each means), normalised to
-- weir.limits' parsed form.
local LIMIT_FIELDS = { frames = true, bytes = true, per = true, burst = true, direction = true }
function types.limit(_, v, node, ctx)
    if type(v) ~= "table" then
        return report(ctx, node, 'expected a table { frames = N | bytes = SIZE, per = "minute", ... }, got ' .. show(v))
    end
    local bad = false
    for _, k in ipairs(sorted_keys(v, function(k) return not LIMIT_FIELDS[k] end)) do
        report(ctx, child(node, k), "unknown field (a limit has frames or bytes, per, burst, direction)")
        bad = true
    end
    if bad then return nil end
    local p, err = require("weir.limits").parse(v)
    if not p then
        local field, msg = match(err, "^(%a+): (.*)$")
        if field and LIMIT_FIELDS[field] then return report(ctx, child(node, field), msg) end
        return report(ctx, node, err)
    end
    return p
end

-- A policy's schema is a list of fields, like a record's; it is prepared
-- (indexed) once per module.
local prepare            -- forward

local function policy_spec(mod)
    if not mod._spec then
        mod._spec = { type = "record", fields = mod.schema or {} }
        prepare(mod._spec)
    end
    return mod._spec
end

-- The messages of a policy's init that refused CONF: `error(msg)`, or
-- `return nil, msg` where msg is a string or a list of strings (every
-- problem at once, as key-auth does for its keys file). nil when init
-- accepted it.
local function init_messages(mod, pconf)
    local ok, res, msg = pcall(mod.init, pconf)
    if not ok then return { tostring(res) } end
    if res ~= nil or msg == nil then return nil end
    if type(msg) ~= "table" then return { tostring(msg) } end
    local out = {}
    for i = 1, #msg do out[i] = tostring(msg[i]) end
    if #out == 0 then out[1] = "(no reason given)" end
    return out
end

-- Run policy NAME's init on PCONF (written at NODE) and report what it
-- refused. A problem already reported for another entry (the same keys
-- file used by two chains) is not repeated: the entry says where it was.
local function init_policy(ctx, mod, name, pconf, node)
    local msgs = init_messages(mod, pconf)
    if not msgs then return end
    local fresh, first = 0, nil
    for _, m in ipairs(msgs) do
        local key = name .. "\0" .. m
        local seen = ctx.init_reported[key]
        if seen then
            first = first or seen
        else
            ctx.init_reported[key] = node
            fresh = fresh + 1
            report(ctx, node, "policy " .. name .. " refused its configuration: " .. m)
        end
    end
    if fresh == 0 then
        report(ctx, node, format("policy %s refused its configuration: the same problems as %s "
                                 .. "(line %d), reported there", name, first.path, line_of(ctx, first)))
    end
end

-- A chain: a list of { NAME, CONF [, fail_open = true] }. Each policy is
-- loaded (from the policy paths, then the stock policies) and CONF checked
-- against its schema, then given to its init().
function types.chain(_, v, node, ctx)
    if type(v) ~= "table" then
        return report(ctx, node, 'expected a list of policies, { { "name", { ... } }, ... }, got ' .. show(v))
    end
    if not ctx.registry then ctx.registry = policy.registry(ctx.policy_paths) end
    local out, seen = {}, {}
    for i = 1, table.maxn(v) do
        local entry, at = v[i], child(node, i)
        if type(entry) ~= "table" then
            report(ctx, at, 'expected { "policy-name", { conf } }, got ' .. show(entry))
        else
            for k in pairs(entry) do
                if k ~= 1 and k ~= 2 and k ~= "fail_open" then
                    report(ctx, child(at, k), "unknown field (an entry is { NAME, CONF, fail_open = BOOL })")
                end
            end
            local name = entry[1]
            local mod, err
            if type(name) ~= "string" then
                report(ctx, child(at, 1), "expected a policy name, got " .. show(name))
            else
                mod, err = ctx.registry:get(name)
                if not mod then report(ctx, child(at, 1), err) end
            end
            if entry.fail_open ~= nil and type(entry.fail_open) ~= "boolean" then
                report(ctx, child(at, "fail_open"), "expected true or false, got " .. show(entry.fail_open))
            end
            if mod then
                if seen[name] then
                    report(ctx, child(at, 1), format("policy %s is already in this chain (%s)",
                                                     show(name), seen[name]))
                end
                seen[name] = at.path
                local raw = entry[2]
                if raw == nil then raw = {} end
                local before = #ctx.errors
                local pconf = validate(policy_spec(mod), raw, child(at, 2), ctx)
                -- init sees only a configuration that passed the schema: a
                -- second, confusing error from inside the policy helps no one
                if pconf ~= nil and #ctx.errors == before and mod.init then
                    init_policy(ctx, mod, name, pconf, child(at, 2))
                end
                out[#out + 1] = { name = name, mod = mod, conf = pconf, fail_open = entry.fail_open == true,
                                  priority = mod.priority, order = i, field = at.path }
                ctx.entry_nodes[out[#out]] = at
            end
        end
    end
    return out
end

validate = function(spec, v, node, ctx)
    local value = types[spec.type](spec, v, node, ctx)
    if value ~= nil and spec.check then
        -- A check returns true, or a message to report here; checks that
        -- name child fields report those themselves.
        local err = spec.check(value, node, ctx)
        if type(err) == "string" then return report(ctx, node, err) end
    end
    return value
end

------------------------------------------------------------------------------
-- Rules that span fields
------------------------------------------------------------------------------

local function check_context(ctx_path)
    if sub(ctx_path, 1, 1) ~= "/" then return 'must start with "/", got ' .. show(ctx_path) end
    if ctx_path == "/" or sub(ctx_path, -1) == "/" then
        return 'must not end with "/", got ' .. show(ctx_path)
    end
    local bad = match(ctx_path, "[?#%s%c]")
    if bad then return format("must not contain %s, got %s", show(bad), show(ctx_path)) end
    if find(ctx_path, "//", 1, true) then
        return 'must not contain an empty segment ("//"), got ' .. show(ctx_path)
    end
    for seg in ctx_path:gmatch("[^/]+") do
        if seg == "." or seg == ".." then
            return 'must not contain "." or ".." segments, got ' .. show(ctx_path)
        end
    end
    if ctx_path == "/healthz" then
        return '"/healthz" is reserved for weir\'s health check'
    end
    return true
end

local function check_version(v)
    local bad = match(v, "[/?#%%%s%c]")
    if bad then return format("must not contain %s, got %s", show(bad), show(v)) end
    return true
end

local function check_server_name(v)
    if not valid_host_name(v) then return "expected a host name, got " .. show(v) end
    return true
end

-- Call DUPLICATE(i, first) for each entry of LIST (a list that may have
-- holes where entries failed) whose KEY(entry) repeats an earlier one.
local function check_unique(list, key, duplicate)
    local seen = {}
    for i = 1, table.maxn(list) do
        local k = list[i] and key(list[i])
        if k ~= nil then
            if seen[k] then duplicate(i, seen[k]) else seen[k] = i end
        end
    end
end

local function check_listen(list, node, ctx)
    check_unique(list, function(l)
        if not l.address or not l.port then return nil end
        return (_M.parse_ipv6(l.address) or l.address) .. "|" .. l.port
    end, function(i, first)
        local l = list[i]
        local shown = find(l.address, ":", 1, true) and "[" .. l.address .. "]" or l.address
        report(ctx, child(node, i), format("%s:%d is already listened on by %s", shown, l.port,
                                           child(node, first).path))
    end)
end

-- The admin record: its token file is read here (a reload reads it again),
-- and its port is not one of the public listeners'.
local function check_admin(a, node, ctx)
    local tnode = child(node, "token_file")
    if a.token_file then
        local f, err = io.open(a.token_file, "rb")
        if not f then
            report(ctx, tnode, "cannot read the token file: " .. tostring(err))
        else
            local text = f:read("*a") or ""
            f:close()
            local tok = match(text, "^([^\r\n]*)")
            tok = match(tok, "^%s*(.-)%s*$")
            if #tok < 16 or #tok > 512 then
                report(ctx, tnode, format("the token in %s must be 16 to 512 characters long (it has %d)",
                                          a.token_file, #tok))
            elseif find(tok, "[^\33-\126]") then
                report(ctx, tnode, "the token in " .. a.token_file .. " may hold only printable ASCII "
                                   .. "characters without spaces")
            else
                a.token = tok
            end
        end
    end
    return true
end

local function check_versions(list, node, ctx)
    check_unique(list, function(v) return v.version end, function(i, first)
        report(ctx, child(child(node, i), "version"),
               format("duplicate version %s (already used by %s)", show(list[i].version),
                      child(node, first).path))
    end)
    local default
    for i = 1, table.maxn(list) do
        if list[i] and list[i].default then
            if default then
                report(ctx, child(child(node, i), "default"),
                       format("only one version may be the default (%s already is)",
                              child(node, default).path))
            else
                default = i
            end
        end
    end
end

local function check_apis(list, node, ctx)
    check_unique(list, function(a) return a.name end, function(i, first)
        report(ctx, child(child(node, i), "name"),
               format("duplicate API name %s (already used by %s)", show(list[i].name),
                      child(node, first).path))
    end)
    check_unique(list, function(a) return a.context end, function(i, first)
        report(ctx, child(child(node, i), "context"),
               format("duplicate context %s (already used by %s)", show(list[i].context),
                      child(node, first).path))
    end)
end

-- Warn about policies of one chain that have the same priority: their order
-- is then the configuration's (the global chain's entries, then the
-- version's, each as written; see weir.chain.sort), which is easy to change
-- without meaning to. Each pair is named once, however many versions share it.
check_priority_ties = function(conf, ctx)
    local warned = {}
    for _, api in ipairs(conf.apis) do
        for _, v in ipairs(api.versions) do
            -- the merged chain as weir.runtime builds it: a version's entry
            -- replaces the global one of the same policy, and takes its own
            -- place in the order (seq)
            local entries, seqs, at, seq = {}, {}, {}, 0
            for _, list in ipairs({ conf.policies, v.policies }) do
                for _, e in ipairs(list or {}) do
                    seq = seq + 1
                    local i = at[e.name]
                    if not i then i = #entries + 1; at[e.name] = i end
                    entries[i], seqs[i] = e, seq
                end
            end
            for j = 2, #entries do
                for i = 1, j - 1 do
                    local first, second = entries[i], entries[j]
                    if seqs[j] < seqs[i] then first, second = second, first end
                    local key = first.field .. "\0" .. second.field
                    if first.priority == second.priority and not warned[key] then
                        warned[key] = true
                        warn(ctx, ctx.entry_nodes[second] or { path = second.field },
                             format("policy %s has the same priority as %s (%s, at %s): %s runs first "
                                    .. "because it comes first in the configuration (the global chain, "
                                    .. "then the version's); give one of them another priority if the "
                                    .. "order matters", show(second.name), show(first.name),
                                    show_number(first.priority), first.field, show(first.name)))
                    end
                end
            end
        end
    end
end

------------------------------------------------------------------------------
-- The schema
------------------------------------------------------------------------------

local function record(fields, extra)
    local spec = extra or {}
    spec.type, spec.fields = "record", fields
    return spec
end

local endpoint_fields = {
    { name = "url", type = "url", required = true,
      description = "the backend's WebSocket URL: ws:// or wss://, host, optional port, path and query" },
    { name = "ca", type = "path",
      description = "PEM file of the certificate authorities to trust for this backend "
                    .. "(wss:// only; default: the system's store)" },
    { name = "verify", type = "boolean", default = true,
      description = "verify the backend's certificate and host name (wss:// only)" },
    { name = "server_name", type = "string", check = check_server_name,
      description = "name sent as SNI and verified in the certificate (wss:// only; default: the URL's host)" },
}

local function endpoint(extra)
    extra.type = "endpoint"
    extra.record = record(endpoint_fields, { locate = true })
    return extra
end

--- The schema: one declarative table describing every field.
-- Each field has `name`, `type` (string, boolean, integer, size, duration,
-- enum, path, address, workers, url, endpoint, record, list), optionally
-- `required`, `default` (written as in a configuration file), `min`/`max`
-- (bytes for sizes, milliseconds for durations), `one_of`, `zero_disables`,
-- `check` (a function for rules beyond the type) and `description`.
-- Records have `fields`; lists have `elements` and `non_empty`; maps
-- (NAME = VALUE, names not known in advance) have `values` and `non_empty`.
-- A server certificate and its key (a listener's, the admin listener's).
local SERVER_TLS = {
    { name = "cert", type = "path", required = true,
      description = "PEM file: the server certificate, then any intermediates" },
    { name = "key", type = "path", required = true,
      description = "PEM file: the certificate's private key (not encrypted)" },
}

_M.schema = record({
    { name = "workers", type = "workers", default = "auto", min = 1, max = 1024,
      description = 'number of worker processes, or "auto" for one per online CPU' },
    { name = "pid_file", type = "path",
      description = "file the master writes its process id to (default: none)" },
    { name = "log", type = "record", default = {},
      description = "where and what to log",
      fields = {
        { name = "file", type = "path",
          description = "file to append JSON log lines to (default: standard error)" },
        { name = "level", type = "enum", one_of = { "debug", "info", "warn", "error" },
          default = "info", description = "lowest level that is logged" },
      } },
    { name = "policy_paths", type = "list", default = {}, elements = { type = "path" },
      check = function(v, _, ctx) ctx.policy_paths = v return true end,
      description = "directories searched for policies, before the stock policies/ of weir" },
    { name = "policies", type = "chain", default = {},
      description = 'the global chain, run for every API version: { { "name", { conf } [, fail_open = true] }, ... }' },
    { name = "listen", type = "list", required = true, non_empty = true, check = check_listen,
      description = "addresses and ports to accept client connections on",
      elements = record({
        { name = "address", type = "address", default = "0.0.0.0",
          description = "IPv4 or IPv6 address to listen on (\"0.0.0.0\": every IPv4 address, \"::\": every IPv6 one)" },
        { name = "port", type = "integer", required = true, min = 1, max = 65535,
          description = "TCP port" },
        { name = "tls", type = "record", locate = true, fields = SERVER_TLS,
          description = "serve wss:// on this listener (default: plain ws://)" },
      }, { locate = true }) },
    { name = "admin", type = "record", locate = true, check = check_admin,
      description = "the admin API (docs/admin-api.md): a listener of its own, loopback by default "
                    .. "(default: none: no admin API)",
      fields = {
        { name = "address", type = "address", default = "127.0.0.1",
          description = "IPv4 or IPv6 address of the admin listener" },
        { name = "port", type = "integer", required = true, min = 1, max = 65535,
          description = "TCP port of the admin listener" },
        { name = "token_file", type = "path", required = true,
          description = "file holding the admin token (its first line, 16 to 512 printable characters): "
                        .. "every request but GET /healthz carries it as `Authorization: Bearer`; "
                        .. "read again on each reload" },
        { name = "tls", type = "record", locate = true, fields = SERVER_TLS,
          description = "serve the admin API over HTTPS (default: plain HTTP)" },
        { name = "max_body", type = "size", default = "1m", min = KIB, max = 64 * MIB,
          description = "largest request body the admin API reads (a larger one is answered 413)" },
      } },
    { name = "state_dir", type = "path",
      description = "directory of weir's own state on this host: the key manager's database (weir.db, "
                    .. "SQLite); created (mode 0700) when missing (default: none)" },
    { name = "key_manager", type = "record", locate = true,
      description = "weir's own key manager (docs/key-manager.md): applications, keys, subscriptions, "
                    .. "POST /oauth2/token and GET /.well-known/jwks.json on the public listeners "
                    .. "(default: none); needs state_dir",
      fields = {
        { name = "issuer", type = "string", default = "weir",
          description = "the `iss` claim of the tokens weir issues" },
        { name = "audience", type = "string",
          description = "the `aud` claim of the tokens weir issues (default: none)" },
        { name = "token_ttl", type = "duration", default = "1h", min = 60000, max = 86400000,
          description = "life of a token from POST /oauth2/token" },
      } },
    { name = "limits", type = "record", default = {},
      description = "resource limits and timeouts",
      fields = {
        { name = "max_connections", type = "integer", default = 10000, min = 1, max = 2147483647,
          description = "client connections weir accepts at once, shared among the workers" },
        { name = "max_message_size", type = "size", default = "1m", min = 1,
          description = "largest message, the sum of its fragments, in either direction" },
        { name = "buffer_size", type = "size", default = "256k", min = 4 * KIB, max = GIB,
          description = "most bytes buffered per direction of a connection before reading "
                        .. "from the sender pauses" },
        { name = "max_header_size", type = "size", default = "16k", min = KIB, max = MIB,
          description = "largest handshake request or response, request line and headers together" },
        { name = "handshake_timeout", type = "duration", default = 10, min = 1, max = 3600000,
          description = "time allowed for a client's complete handshake request" },
        { name = "idle_timeout", type = "duration", default = 300, zero_disables = true,
          min = 1, max = 7 * 24 * 3600000,
          description = "close a connection when no data frame crossed it for this long (0: never)" },
        { name = "ping_interval", type = "duration", default = 30, zero_disables = true,
          min = 1, max = 24 * 3600000,
          description = "ping a peer that has been silent this long (0: weir sends no pings)" },
        { name = "ping_timeout", type = "duration", default = 10, min = 1, max = 3600000,
          description = "disconnect a peer that has not answered weir's ping within this" },
        { name = "close_timeout", type = "duration", default = 5, min = 1, max = 3600000,
          description = "how long to wait for a peer's close frame after sending one" },
        { name = "send_timeout", type = "duration", default = 60, zero_disables = true,
          min = 1, max = 3600000,
          description = "disconnect a peer (client or backend) that accepts no byte of what weir has "
                        .. "queued for it for this long (0: never)" },
        { name = "policy_budget", type = "duration", default = "100ms", min = 1, max = 60000,
          description = "CPU time a policy hook may use without waiting before it is stopped "
                        .. "(its connection is closed 1011, or the hook passes if fail_open)" },
        { name = "drain_timeout", type = "duration", default = 30, zero_disables = true,
          min = 1, max = 24 * 3600000,
          description = "on SIGTERM, how long to wait for connections to close (0: do not wait)" },
        { name = "drain_rate", type = "integer", default = 0, min = 0, max = 2147483647,
          description = "while draining, close this many connections a second (shared among the workers, "
                        .. "with jitter), so that clients do not all reconnect at once (0: all at once)" },
      } },
    { name = "metrics", type = "record", default = {},
      description = "bounds of the Prometheus metrics and the usage store (docs/analytics.md, Metrics and usage); "
                    .. "the sizes are read at start: a reload does not change them",
      fields = {
        { name = "max_applications", type = "integer", default = 50, min = 0, max = 10000,
          description = "applications with a label of their own in the metrics, the first ones the host "
                        .. "sees; later ones are counted as application=\"other\"" },
        { name = "max_series", type = "integer", default = 4096, min = 64, max = 1048576,
          description = "metric series each worker keeps (labels combined); counts past them are dropped "
                        .. "and counted in weir_metrics_dropped_total" },
        { name = "max_usage_keys", type = "integer", default = 1000, min = 1, max = 100000,
          description = "(api, version, application, subscriber) keys of the usage store each worker "
                        .. "keeps (about 8 KiB each); later ones are counted under one \"other\" key" },
        { name = "usage_stream", type = "string",
          check = function(v)
              if #v > 1024 then return "expected a stream key of at most 1024 bytes, got " .. #v end
              return true
          end,
          description = "the Redis stream (state.redis) an analytics policy's redis sink writes, which "
                        .. "GET /usage?scope=cluster reads; needs state.redis (default: none: usage is "
                        .. "per host only)" },
      } },
    { name = "tiers", type = "map", default = {},
      description = "throttling tiers by name, for the throttling policy: "
                    .. '{ Gold = { limits = { { frames = 1000, per = "minute" } }, action = "drop" } }',
      values = record({
        { name = "limits", type = "list", default = {}, elements = { type = "limit" },
          description = 'rate limits, all enforced: { frames = N } or { bytes = SIZE }, per ("second", '
                        .. '"minute", "hour", "day" or seconds), burst (default: the count), '
                        .. 'direction ("in", "out", "both": the default)' },
        { name = "action", type = "enum", one_of = { "drop", "delay", "close" }, default = "drop",
          description = "what happens to a client's message over a limit: drop it (and tell the client, "
                        .. "at most once a second), delay it (stop reading the client), or close 1008" },
        { name = "action_out", type = "enum", one_of = { "delay", "drop", "close" }, default = "delay",
          description = "what happens to a backend's message over a limit" },
        { name = "on_redis_down", type = "enum", one_of = { "open", "closed" }, default = "open",
          description = "with state.redis, while Redis cannot be reached: \"open\" (each host's own "
                        .. "buckets decide, as if it were alone) or \"closed\" (every message these "
                        .. "limits count is over the limit, retry hint 1 s)" },
      }) },
    { name = "state", type = "record", default = {}, locate = true,
      description = "state shared with the other hosts of a cluster of weir instances",
      fields = {
        { name = "redis", type = "redis_url",
          description = 'a Redis server every host reaches: "redis://[[user]:password@]host[:port][/db]"; '
                        .. "throttling limits and connection counts are then shared through it "
                        .. "(default: none: state stays on this host)" },
        { name = "timeout", type = "duration", default = "500ms", min = 10, max = 60000,
          description = "longest wait for Redis to accept a connection or answer a command; past it "
                        .. "Redis counts as down and weir connects again" },
        { name = "sync_interval", type = "duration", default = "100ms", min = 10, max = 10000,
          description = "how often a shared limit in use is synchronised with Redis "
                        .. "(one that is not: ten times less often)" },
        { name = "key_prefix", type = "string", default = "weir:",
          description = "prefix of every key weir writes in Redis (to share one Redis between clusters)" },
        { name = "host", type = "string",
          check = function(v)
              if not match(v, "^[%w._-]+$") or #v > 64 then
                  return "expected 1 to 64 letters, digits, '.', '_' or '-', got " .. show(v)
              end
              return true
          end,
          description = "this weir instance's name among the hosts sharing the Redis (connection ids "
                        .. "of other hosts read w0-17@NAME); unique per instance (default: the machine's "
                        .. "host name, '-' and the master's pid)" },
      } },
    { name = "apis", type = "list", required = true, non_empty = true, check = check_apis,
      description = "the WebSocket APIs weir exposes",
      elements = record({
        { name = "name", type = "string", required = true,
          description = "the API's name, unique" },
        { name = "context", type = "string", required = true, check = check_context,
          description = 'path prefix the API is served under, e.g. "/echo": starts with "/", '
                        .. 'no trailing "/", unique' },
        { name = "unknown_version", type = "enum", one_of = { "404", "default" }, default = "404",
          description = 'a first path segment shaped like a version ("2", "1.0", "v9") that names none '
                        .. 'of the versions: "404" refuses it, "default" hands it to the default '
                        .. 'version as part of its path' },
        { name = "versions", type = "list", required = true, non_empty = true,
          check = check_versions, description = "the API's versions",
          elements = record({
            { name = "version", type = "string", required = true, check = check_version,
              description = 'version name, a path segment: "/<context>/<version>" selects it' },
            { name = "default", type = "boolean", default = false,
              description = 'serve this version at "/<context>" too; at most one per API' },
            { name = "endpoints", type = "record", required = true,
              description = "the backends of this version",
              fields = {
                endpoint({ name = "production", required = true,
                           description = "the backend used for traffic" }),
                endpoint({ name = "sandbox",
                           description = "a backend for sandbox keys (default: none)" }),
              } },
            { name = "policies", type = "chain", default = {},
              description = "this version's chain, merged with the global one by priority; "
                            .. "an entry here replaces a global entry of the same policy" },
          }) },
      }) },
})

-- Index every record's fields by name, once.
prepare = function(spec)
    if spec.type == "record" and not spec.by_name then
        spec.by_name = {}
        local names = {}
        for _, f in ipairs(spec.fields) do
            spec.by_name[f.name] = f
            names[#names + 1] = f.name
            prepare(f)
        end
        spec.field_list = concat(names, ", ")
    elseif spec.type == "list" then
        prepare(spec.elements)
    elseif spec.type == "map" then
        prepare(spec.values)
    elseif spec.type == "endpoint" then
        prepare(spec.record)
    end
end
prepare(_M.schema)

--- List every field of the schema, for documentation and its spec.
-- @treturn table `{ { path = "limits.max_connections", type = "integer",
--   default = 10000, required = false, description = "..." }, ... }` in
--   schema order; list elements appear as `listen[].port`, an endpoint's
--   table form as `...production.url`
function _M.describe()
    local out = {}
    local function walk(spec, path)
        local fields = spec.type == "record" and spec.fields
                       or spec.type == "endpoint" and spec.record.fields
        if spec.type == "list" then return walk(spec.elements, path .. "[]") end
        for _, f in ipairs(fields or {}) do
            local p = path == "" and f.name or path .. "." .. f.name
            out[#out + 1] = { path = p, type = f.type, default = f.default,
                              required = f.required or false, description = f.description }
            walk(f, p)
        end
    end
    walk(_M.schema, "")
    return out
end

------------------------------------------------------------------------------
-- Running the operator's chunk
------------------------------------------------------------------------------

-- An environment with nothing in it; reading a name that was never
-- assigned is an error rather than a silent nil (`level = debug` would
-- otherwise quietly mean "use the default").
local function sandbox()
    return setmetatable({}, { __index = function(_, k)
        error(format("undefined variable '%s' (the configuration has no globals; "
                     .. 'if a string was meant, write "%s")', tostring(k), tostring(k)), 2)
    end })
end

-- Turn a Lua message about the chunk into { line =, msg = }.
local function chunk_error(e)
    local msg = type(e) == "string" and e or "error object is a " .. type(e) .. " value"
    local line, rest = match(msg, "^" .. CHUNK_NAME .. ":(%d+): (.*)$")
    if line then return { line = tonumber(line), msg = rest } end
    for level = 2, 64 do                  -- no position in the message: find the chunk's frame
        local info = debug.getinfo(level, "Sl")
        if not info then break end
        if info.source == "=" .. CHUNK_NAME and info.currentline > 0 then
            return { line = info.currentline, msg = msg }
        end
    end
    return { msg = msg }
end

-- Run SRC in the sandbox. Returns the value it returned, or nil and
-- { line =, msg = }.
local function evaluate(src)
    if byte(src, 1) == 27 then
        return nil, { line = 1, msg = "precompiled (binary) chunks are not accepted" }
    end
    local fn, err = loadstring(src, "=" .. CHUNK_NAME)
    if not fn then return nil, chunk_error(err) end
    setfenv(fn, sandbox())
    local ok, res = policy.bounded_pcall(fn, "the configuration", chunk_error)
    if not ok then return nil, res end
    return res
end

------------------------------------------------------------------------------
-- Entry points
------------------------------------------------------------------------------

local function format_errors(file, errs)
    sort(errs, function(a, b)
        if a.line ~= b.line then return a.line < b.line end
        return a.seq < b.seq
    end)
    local out = {}
    for i, e in ipairs(errs) do
        out[i] = e.field ~= "" and format("%s:%d: %s: %s", file, e.line, e.field, e.msg)
                 or format("%s:%d: %s", file, e.line, e.msg)
    end
    return out
end

--- Validate and normalise configuration source text.
-- @tparam string src the configuration, Lua source returning a table
-- @tparam string file its name, used in messages as given
-- @tparam[opt] table opts `cwd`: directory a relative FILE is relative to;
--   `cpus`: the number of online CPUs, which `workers = "auto"` becomes
--   (without it, workers stays "auto")
-- @treturn[1] table the normalised configuration
-- @treturn[2] nil
-- @treturn[2] table the errors, one string per error, sorted by line:
--   "FILE:LINE: FIELD: message" (or "FILE:LINE: message" for the chunk itself)
-- @usage local conf, errs = weir_conf.parse('return { ... }', "test.conf.lua")
function _M.parse(src, file, opts)
    opts = opts or {}
    local abs = file
    if sub(file, 1, 1) ~= "/" and opts.cwd then abs = opts.cwd .. "/" .. file end
    abs = clean_path(abs)
    local dir = match(abs, "^(.*)/[^/]*$")
    if dir == nil then dir = "." elseif dir == "" then dir = "/" end

    local value, err = evaluate(src)
    if err then
        return nil, { format("%s:%d: %s", file, err.line or 1, err.msg) }
    end

    local map = srcmap.scan(src)
    if type(value) ~= "table" then
        return nil, { format("%s:%d: the configuration must return a table, got %s",
                             file, map.return_line or map.last_line or 1, show(value)) }
    end

    local ctx = { map = map, errors = {}, warnings = {}, dir = dir, cpus = opts.cpus,
                  init_reported = {}, entry_nodes = {} }
    for _, d in ipairs(map.duplicates) do
        local e = ctx.errors
        e[#e + 1] = { line = d.line, field = d.path, seq = #e + 1,
                      msg = format("set twice in the same table (first on line %d)", d.first) }
    end

    local conf = validate(_M.schema, value, { path = "" }, ctx)
    if #ctx.errors > 0 then return nil, format_errors(file, ctx.errors) end
    check_priority_ties(conf, ctx)
    if conf.metrics and conf.metrics.usage_stream and not (conf.state and conf.state.redis) then
        report(ctx, child(child({ path = "" }, "metrics"), "usage_stream"),
               "needs state.redis (the Redis the stream is in)")
        return nil, format_errors(file, ctx.errors)
    end
    if conf.key_manager then
        local root = { path = "" }
        if not conf.state_dir and not (conf.state and conf.state.redis) then
            report(ctx, child(root, "key_manager"), "needs state_dir (the directory its database lives in) "
                                                    .. "or state.redis")
        elseif conf.state_dir then
            local f = io.open(conf.state_dir, "rb")
            local is_dir = f and not f:read(1) and select(3, f:read(1)) == 21     -- EISDIR
            if f then f:close() end
            if f and not is_dir then
                report(ctx, child(root, "state_dir"), conf.state_dir .. " is not a directory")
            end
        end
        for i, api in ipairs(conf.apis) do
            if api.context == "/oauth2" or api.context == "/.well-known" then
                report(ctx, child(child(child(root, "apis"), i), "context"),
                       api.context .. " is reserved for the key manager's endpoints")
            end
        end
        if #ctx.errors > 0 then return nil, format_errors(file, ctx.errors) end
    end
    local a = conf.admin
    if a then
        for i, l in ipairs(conf.listen) do
            if l.port == a.port and ((_M.parse_ipv6(l.address) or l.address) == (_M.parse_ipv6(a.address) or a.address)
                                     or l.address == "0.0.0.0" or l.address == "::" or a.address == "0.0.0.0"
                                     or a.address == "::") then
                report(ctx, child(child({ path = "" }, "admin"), "port"),
                       format("port %d is listened on by listen[%d] already", a.port, i))
            end
        end
        if #ctx.errors > 0 then return nil, format_errors(file, ctx.errors) end
    end
    conf.file, conf.dir = abs, dir
    conf.warnings = format_errors(file, ctx.warnings)
    return conf
end

--- Check a policy's configuration against its schema, as the loader does
-- (for unit specs of policies).
-- @tparam table mod the policy module
-- @tparam table conf the configuration as an operator would write it
-- @tparam[opt] string dir directory relative paths resolve against (default ".")
-- @treturn[1] table the normalised configuration (after `init`)
-- @treturn[2] nil
-- @treturn[2] table errors, one "FIELD: message" string each
-- @usage local conf = assert(require("weir.conf").check_policy_conf(policy, { keys_file = "k.txt" }))
function _M.check_policy_conf(mod, conf, dir)
    local ctx = { map = { lines = {} }, errors = {}, dir = dir or "." }
    local out = validate(policy_spec(mod), conf, { path = "" }, ctx)
    if out ~= nil and #ctx.errors == 0 and mod.init then
        local msgs = init_messages(mod, out)
        if msgs then
            for i, m in ipairs(msgs) do msgs[i] = "init: " .. m end
            return nil, msgs
        end
    end
    if #ctx.errors > 0 then
        local errs = {}
        for i, e in ipairs(ctx.errors) do
            errs[i] = e.field ~= "" and e.field .. ": " .. e.msg or e.msg
        end
        return nil, errs
    end
    return out
end

--- Load, validate and normalise a configuration file.
-- @tparam string file the file, as the operator named it (used in messages)
-- @tparam[opt] table opts as for `parse` (`cwd`, `cpus`)
-- @treturn[1] table the normalised configuration
-- @treturn[2] nil
-- @treturn[2] table the errors, one "FILE:LINE: FIELD: message" string each
-- @usage local conf, errs = require("weir.conf").load("weir.conf.lua", { cwd = "/srv", cpus = 4 })
function _M.load(file, opts)
    local f, err = io.open(file, "rb")
    if not f then
        if sub(err, 1, #file + 2) == file .. ": " then err = sub(err, #file + 3) end
        return nil, { format("%s: cannot open the configuration: %s", file, err) }
    end
    local src, rerr = f:read("*a")
    f:close()
    if not src then
        return nil, { format("%s: cannot read the configuration: %s", file, tostring(rerr)) }
    end
    return _M.parse(src, file, opts)
end

return _M
