--- origin: only pages of the listed origins may open a connection.
--
-- A browser lets any page open a WebSocket to any host and sends the
-- user's cookies with it; the same-origin policy does not apply. What it
-- does send is the page's origin, in the `Origin` header, and a page cannot
-- change it. Checking that header at the handshake is the defence against
-- cross-site WebSocket hijacking: a page on evil.example opening a socket
-- to the gateway with the victim's cookies or HTTP credentials.
--
-- `allow` lists exact origins, `scheme://host[:port]`. Both the entries and
-- the request's header are normalised (scheme and host lower-cased, the
-- default port of the scheme dropped) and compared for equality: no
-- prefixes, no suffixes, no wildcards. A header that is not a well-formed
-- origin is refused, and so is `null` (what sandboxed iframes, `file:`
-- pages and some redirects send, which any site can produce). A request
-- without the header is refused unless `allow_missing` is set: browsers
-- always send it on a WebSocket handshake, other clients (servers, mobile
-- apps, command-line tools) do not.
--
-- A refusal is 403 with `/problems/forbidden`, "Origin not allowed", before
-- weir connects to the backend.
--
-- @module origin
-- @usage policies = { { "origin", { allow = { "https://app.example.com" } } } }

local weir = require "weir"

local type, tonumber = type, tonumber
local byte, find, match, lower, sub, format =
    string.byte, string.find, string.match, string.lower, string.sub, string.format

local LBRACKET = 91     -- "["

-- The port a scheme's origin omits.
local DEFAULT_PORT = { http = 80, ws = 80, https = 443, wss = 443 }

local SHAPE = 'expected an origin, scheme://host[:port], e.g. "https://app.example.com"'

-- Normalise origin S: lower-case scheme and host, no default port.
-- Returns the normalised origin, or nil and why it is not one.
local function normalise(s)
    if s == "null" then
        return nil, '"null" is the origin of sandboxed and file: pages, which any site can produce; '
                    .. "it cannot be allowed"
    end
    local scheme, rest = match(s, "^(%a[%w+.-]*)://(.*)$")
    if not scheme then return nil, SHAPE end
    scheme = lower(scheme)
    if find(rest, "[%c%s]") then return nil, "must not contain spaces or control characters" end
    local stop = find(rest, "[/?#]")
    local authority = stop and sub(rest, 1, stop - 1) or rest
    if find(authority, "@", 1, true) then return nil, "must not have a user name or password (user@)" end
    if find(rest, "*", 1, true) then return nil, "wildcards are not supported: list each origin" end
    if stop then
        local c = sub(rest, stop, stop)
        if c == "/" and stop == #rest then return nil, 'must not end with "/" (an origin has no path)' end
        if c == "/" then return nil, "must not have a path (an origin is scheme://host[:port])" end
        if c == "?" then return nil, "must not have a query" end
        return nil, "must not have a fragment"
    end
    local host, port
    if byte(authority, 1) == LBRACKET then
        host, port = match(authority, "^(%[[%x:.]+%])(.*)$")
        if not host then return nil, "expected an IPv6 address in brackets, e.g. http://[::1]:8080" end
    else
        host, port = match(authority, "^([^:]*)(.*)$")
        if host == "" then return nil, "has no host" end
        if not find(host, "^[%w._-]+$") then
            return nil, "the host may only have letters, digits, '.', '-' and '_' (write IDNs in punycode)"
        end
    end
    if port ~= "" then
        local digits = match(port, "^:(%d+)$")
        local n = digits and #digits <= 5 and tonumber(digits)
        if not n or n < 1 or n > 65535 then return nil, "the port must be a number from 1 to 65535" end
        port = n ~= DEFAULT_PORT[scheme] and ":" .. n or ""
    end
    return scheme .. "://" .. lower(host) .. port
end

local function check_entry(v)
    local _, err = normalise(v)
    if err then return format("%s, got %q", err, v) end
    return true
end

local _M = {
    name     = "origin",
    priority = 2000,
    schema   = {
        { name = "allow", type = "list", required = true,
          elements = { type = "string", check = check_entry },
          description = 'the origins allowed, each exactly "scheme://host[:port]" '
                        .. '(e.g. "https://app.example.com"; no path, no trailing "/", no wildcard)' },
        { name = "allow_missing", type = "boolean", default = false,
          description = "accept a handshake without an Origin header (non-browser clients send none)" },
    },
}

--- Build the set of normalised origins and the refusal, once per configuration.
-- @tparam table conf the normalised configuration
-- @treturn[1] true
-- @treturn[2] nil
-- @treturn[2] string why the configuration is refused
function _M.init(conf)
    if #conf.allow == 0 and not conf.allow_missing then
        return nil, "allow is empty and allow_missing is false: every handshake would be refused"
    end
    local set = {}
    for i = 1, #conf.allow do set[normalise(conf.allow[i])] = true end
    conf._allow = set
    conf._refused = weir.error("/problems/forbidden", "Origin not allowed", 403)
    return true
end

--- Refuse the handshake unless its Origin is allowed.
-- @usage -- a page at https://app.example.com: new WebSocket("wss://gateway/chat")
function _M.on_handshake(ctx, conf)
    local origin = ctx.request.headers.origin
    if origin == nil then
        if conf.allow_missing then return nil end
        return conf._refused
    end
    local allow = conf._allow
    if allow[origin] then return nil end             -- what browsers send: already normal
    if type(origin) == "string" then
        local norm = normalise(origin)
        if norm and allow[norm] then return nil end
    end
    return conf._refused
end

return _M
