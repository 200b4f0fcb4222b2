--- `weir.http`: an HTTP(S) client for policies. A request waits (the hook's
-- coroutine yields) while the worker goes on serving every other
-- connection; the connection's own messages are held, in order, until the
-- hook returns. Only hooks and timers may call it.
--
-- @module weir.http
-- @usage local res, err = weir.http.request({ url = "https://idp/introspect", method = "POST",
--            headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
--            body = "token=" .. t, timeout = 2 })

local ffi = require "ffi"

local type, pairs, tostring, tonumber = type, pairs, tostring, tonumber
local gmatch, match, lower, find = string.gmatch, string.match, string.lower, string.find

local _M = {}

local errbuf = ffi.new("char[256]")

--- Make an HTTP request and wait for its answer.
-- @tparam table opts `url` (http:// or https://, required), `method` ("GET"),
--   `headers` (table name → value), `body` (string), `timeout` (seconds, 10),
--   `verify` (https: check the certificate, true), `ca` (PEM file of CAs)
-- @treturn[1] table `{ status = 200, headers = { ["content-type"] = ... }, body = "..." }`
-- @treturn[2] nil
-- @treturn[2] string what failed ("timeout", "connection refused", ...)
function _M.request(opts)
    if type(opts) ~= "table" or type(opts.url) ~= "string" then
        error("weir.http.request{ url = ... }: url is required", 2)
    end
    local lines = {}
    for k, v in pairs(opts.headers or {}) do
        local name, value = tostring(k), tostring(v)
        if find(name, "[\r\n:]") or find(value, "[\r\n]") then
            error("weir.http.request: invalid header " .. name, 2)
        end
        lines[#lines + 1] = name .. ": " .. value .. "\r\n"
    end
    local body = opts.body
    if body ~= nil and type(body) ~= "string" then error("weir.http.request: body must be a string", 2) end
    local C = ffi.C
    local token = C.weir_ffi_http(opts.method or "GET", opts.url, table.concat(lines), body,
                                  body and #body or 0, (opts.timeout or 10) * 1000,
                                  opts.verify == false and 0 or 1, opts.ca, errbuf, 256)
    if token == 0 then return nil, ffi.string(errbuf) end
    local status, err, head, resbody = require("weir.runtime").wait(tonumber(token))
    if status == 0 then return nil, err end
    local headers = {}
    for line in gmatch(head or "", "([^\r\n]+)") do
        local n, v = match(line, "^([^:]+):%s*(.-)%s*$")
        if n then
            n = lower(n)
            headers[n] = headers[n] and headers[n] .. ", " .. v or v
        end
    end
    return { status = status, headers = headers, body = resbody or "" }
end

return _M
