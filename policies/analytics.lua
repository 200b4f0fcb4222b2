--- analytics: events of every connection of a chain, to files, Redis
-- Streams and HTTP collectors (docs/analytics.md, docs/policies/analytics.md).
--
-- At the handshake, before any authentication policy runs (so that its
-- refusals are seen too), it turns the connection's analytics on with
-- `ctx:analytics`, giving what the core cannot know: the client's address
-- from a trusted proxy's `X-Forwarded-For` (resolved as the throttling
-- policy does). From then on the core builds the events itself (connect,
-- messages and throttled per interval, auth_failure, policy_error, close)
-- and hands them to the sinks once per interval: no Lua call per message.
--
-- @module analytics

local weir = require "weir"

local match, format = string.match, string.format
local ipairs, pairs, tostring, type = ipairs, pairs, tostring, type

local SINK_TYPES = { "file", "redis", "http" }

-- which options belong to which type of sink
local ONLY = { path = "file", stream = "redis", maxlen = "redis", url = "http", format = "http",
               timeout = "http", headers = "http" }
local NEEDS = { file = "path", redis = "stream", http = "url" }
local OPTIONS = { "type", "path", "stream", "maxlen", "url", "format", "timeout", "queue", "queue_bytes" }

-- "TYPE:TARGET", an http URL without its userinfo, query and fragment
-- (they may hold a token: the name is in every log line of the sink);
-- as weir.analytics.default_name, which the policy may not require
local function default_name(s)
    if s.type ~= "http" then return s.type .. ":" .. tostring(s.path or s.stream or s.url) end
    local url = tostring(s.url)
    local scheme, rest = match(url, "^(%a[%w+.-]*://)(.*)$")
    if not scheme then scheme, rest = "", url end
    rest = match(rest, "^[^?#]*")
    local auth, path = match(rest, "^([^/]*)(.*)$")
    return "http:" .. scheme .. (match(auth, "^.*@(.*)$") or auth) .. path
end

-- What makes a sink what it is, as one string (two entries of one name must agree).
local function signature(s)
    local out = {}
    for _, k in ipairs(OPTIONS) do out[#out + 1] = k .. "=" .. tostring(s[k]) end
    local hs = {}
    for k, v in pairs(s.headers or {}) do hs[#hs + 1] = k .. ":" .. tostring(v) end
    table.sort(hs)
    out[#out + 1] = "headers=" .. table.concat(hs, "\n")
    return table.concat(out, "\0")
end

-- One sink entry: the options its type needs, and none of another type's.
local function check_sink(s)
    local need = NEEDS[s.type]
    if s[need] == nil then return format("a %s sink needs %s", s.type, need) end
    for opt, kind in pairs(ONLY) do
        if s[opt] ~= nil and kind ~= s.type then
            return format("%s is an option of %s sinks, not of %s sinks", opt, kind, s.type)
        end
    end
    if s.type == "http" and not match(s.url, "^https?://[^/]") then
        return format("url: expected an http:// or https:// URL, got %q", s.url)
    end
    return true
end

-- The list: sink names unique in it, and a name used by several chains
-- (several entries of the configuration) means the same sink everywhere.
local function check_sinks(list, node, ctx)
    local here = {}
    ctx._analytics_sinks = ctx._analytics_sinks or {}
    local seen = ctx._analytics_sinks
    for i, s in ipairs(list) do
        local name = s.name or default_name(s)
        if here[name] then
            return format("sinks[%d] and sinks[%d] are the same sink %q", here[name], i, name)
        end
        here[name] = i
        local sig = signature(s)
        local other = seen[name]
        if other and other.sig ~= sig then
            return format("sink %q is configured differently at %s: a name means one sink for every chain",
                          name, other.at)
        end
        seen[name] = other or { sig = sig, at = format("%s[%d]", node.path, i) }
    end
    return true
end

local _M = {
    name     = "analytics",
    priority = 2100,     -- before every other stock policy (origin 2000, authentication 1250-1300)
    schema   = {
        { name = "sinks", type = "list", required = true, non_empty = true, check = check_sinks,
          description = "where the events go: one or more sinks (file, redis, http)",
          elements = { type = "record", check = check_sink, fields = {
            { name = "type", type = "enum", one_of = SINK_TYPES, required = true,
              description = 'the kind of sink: "file", "redis" or "http"' },
            { name = "name", type = "string",
              description = 'the sink\'s name in logs and counters (default "TYPE:TARGET", an http URL '
                            .. "without its userinfo, query and fragment); chains naming one sink share it" },
            { name = "path", type = "path",
              description = "file: the JSON-lines file the events are appended to (reopened on SIGUSR1)" },
            { name = "stream", type = "string",
              description = "redis: the stream key events are added to (XADD), on state.redis" },
            { name = "maxlen", type = "integer", min = 1, max = 1000000000,
              description = "redis: the stream's approximate length cap (XADD MAXLEN ~; default 1000000)" },
            { name = "url", type = "string",
              description = "http: where each batch is POSTed (http:// or https://)" },
            { name = "format", type = "enum", one_of = { "ndjson", "json" },
              description = 'http: the body: "ndjson" (one event per line, the default) or "json" (an array)' },
            { name = "timeout", type = "duration", min = 1, max = 600000,
              description = "http: how long one POST may take (default 5 s)" },
            { name = "headers", type = "map", values = { type = "string" },
              description = "http: headers sent with each POST (e.g. Authorization)" },
            { name = "queue", type = "integer", default = 60, min = 1, max = 100000,
              description = "redis, http: batches kept while the sink is down or slow; the oldest go first" },
            { name = "queue_bytes", type = "size", default = "64m", min = 65536, max = 4294967296,
              description = "redis, http: bytes of batches kept while the sink is down or slow; the oldest go first" },
          } } },
        { name = "interval", type = "duration", default = 1, min = 100, max = 3600000,
          description = "how often the core hands the events over (and counts each connection's messages)" },
        { name = "trusted_proxies", type = "list", default = {}, elements = { type = "string" },
          check = weir.check_addresses,
          description = "addresses of proxies whose X-Forwarded-For names the client (exact addresses)" },
    },
}

function _M.init(conf)
    conf._trusted = {}
    for _, a in ipairs(conf.trusted_proxies) do conf._trusted[a] = true end
    for _, s in ipairs(conf.sinks) do
        if type(s.name) ~= "string" then s.name = default_name(s) end
        if s.type == "redis" then s.maxlen = s.maxlen or 1000000 end
        if s.type == "http" then s.format, s.timeout = s.format or "ndjson", s.timeout or 5000 end
    end
    return true
end

--- Turn the connection's analytics on.
function _M.on_handshake(ctx, conf)
    local ok, err = ctx:analytics({ sinks = conf.sinks, client = ctx:client_address(conf._trusted) })
    -- analytics never refuses traffic: without it the connection goes on unreported
    if not ok and err ~= "closed" then ctx:log("warn", "analytics not turned on", { error = tostring(err) }) end
end

return _M
