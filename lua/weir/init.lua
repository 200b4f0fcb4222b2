--- The `weir` module: what a policy uses to give verdicts and to reach the
-- gateway. It works inside a worker and, for unit specs, in a plain LuaJIT.
--
-- @module weir
-- @usage local weir = require "weir"

local ffi = require "ffi"

local setmetatable, getmetatable, type, tostring = setmetatable, getmetatable, type, tostring
local floor, format = math.floor, string.format

local _M = {
    _VERSION = "0.1.0",
    -- return codes, the same numbers as the core's WEIR_* (core/weir.h)
    OK = 0, ERROR = -1, AGAIN = -2, DECLINED = -5,
    -- message opcodes (RFC 6455)
    TEXT = 1, BINARY = 2,
}

ffi.cdef [[
    typedef struct { long tv_sec; long tv_usec; } weir_timeval_t;
    int gettimeofday(weir_timeval_t *tv, void *tz);
    unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
    int RAND_bytes(unsigned char *buf, int num);
]]

-- libcrypto: already in a worker's process; loaded by name in a plain LuaJIT
local crypto = ffi.C
if not pcall(function() return ffi.C.SHA256 end) then crypto = ffi.load("libcrypto.so.3") end

--- Drop the message: the chain stops and nothing is forwarded.
-- @usage return weir.DROP
_M.DROP = setmetatable({}, { __tostring = function() return "weir.DROP" end })

local ERROR_MT = { __tostring = function(e) return "weir.error(" .. e.problem .. ")" end }
local REPLY_MT = { __tostring = function() return "weir.reply" end }

--- A rejection or an error message for the client.
-- In `on_handshake` the connection is refused with HTTP status `code`
-- (default 403) and the error JSON; in a frame hook the error JSON is sent
-- to the client, the message dropped, and the connection closed with `code`
-- when one is given (a WebSocket close code).
-- @tparam string problem the problem type, "/problems/..." (see docs/errors.md)
-- @tparam string message a short human-readable message
-- @tparam[opt] number code HTTP status (handshake) or close code (frames)
-- @treturn table a verdict to return from a hook
-- @usage return weir.error("/problems/unauthorized", "Invalid API key", 401)
function _M.error(problem, message, code)
    if type(problem) ~= "string" or type(message) ~= "string" then
        error("weir.error(problem, message [, code]) takes two strings", 2)
    end
    if code ~= nil and (type(code) ~= "number" or code ~= floor(code)) then
        error("weir.error: code must be an integer", 2)
    end
    return setmetatable({ problem = problem, message = message, code = code }, ERROR_MT)
end

--- Answer the sender instead of forwarding: PAYLOAD goes back, the message is dropped.
-- @tparam string payload the answer
-- @tparam[opt] number opcode `weir.TEXT` (default) or `weir.BINARY`
-- @usage return weir.reply('{"type":"pong"}')
function _M.reply(payload, opcode)
    if type(payload) ~= "string" then error("weir.reply(payload [, opcode]): payload must be a string", 2) end
    return setmetatable({ payload = payload, opcode = opcode or 1 }, REPLY_MT)
end

--- Is V a verdict made by `weir.error`?
function _M.is_error(v) return getmetatable(v) == ERROR_MT end

--- Is V a verdict made by `weir.reply`?
function _M.is_reply(v) return getmetatable(v) == REPLY_MT end

local tv = ffi.new("weir_timeval_t")

--- The current time, in seconds since the epoch, with microseconds.
-- @treturn number
-- @usage local t = weir.now()
function _M.now()
    ffi.C.gettimeofday(tv, nil)
    return tonumber(tv.tv_sec) + tonumber(tv.tv_usec) / 1e6
end

--- The standard error JSON, as a string.
-- @tparam string problem "/problems/..."
-- @tparam number code HTTP status or close code
-- @tparam string message
-- @usage ctx:send(weir.error_json("/problems/throttled", 1013, "slow down"))
local ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
local function json_string(s)
    return '"' .. string.gsub(s, '[%c"\\]', function(c)
        return ESC[c] or format("\\u%04x", string.byte(c))
    end) .. '"'
end

function _M.error_json(problem, code, message)
    -- built by hand so that it is byte for byte the shape the core writes
    return '{"type":"error","error":{"type":' .. json_string(problem) .. ',"code":'
           .. format("%d", code) .. ',"message":' .. json_string(message) .. '},"timestamp":"'
           .. os.date("!%Y-%m-%dT%H:%M:%SZ") .. '"}'
end

local U8P = ffi.typeof("const uint8_t *")

-- SHA-256 over a range with a kept context: weir.jose's (loaded when first
-- used: most callers of weir never hash)
local jose_sha256
local function sha256(s, i, j)
    if not jose_sha256 then jose_sha256 = require("weir.jose").sha256 end
    return jose_sha256(s, i, j)
end

-- every byte's two hex digits, as the uint16_t whose bytes in memory they are
local HEX_PAIRS = ffi.new("uint16_t[256]")
do
    local digits = "0123456789abcdef"
    local probe = ffi.new("uint16_t[1]", 0x0100)
    local little = ffi.cast("uint8_t *", probe)[0] == 0
    for i = 0, 255 do
        local hi, lo = digits:byte(math.floor(i / 16) + 1), digits:byte(i % 16 + 1)
        HEX_PAIRS[i] = little and hi + lo * 256 or hi * 256 + lo
    end
end
local hex_out = ffi.new("uint16_t[32]")

--- SHA-256 of S (or of S[I..J]: a part of a string hashed where it lies),
-- as 64 lower-case hex digits.
-- @tparam string s
-- @tparam[opt=1] number i
-- @tparam[opt=#s] number j
-- @usage local h = weir.sha256_hex(key)
function _M.sha256_hex(s, i, j)
    if type(s) ~= "string" then error("weir.sha256_hex(s [, i, j]): s must be a string", 2) end
    return _M.hex32(sha256(s, i, j))
end

--- SHA-256 of S (or of S[I..J]), as 32 raw bytes.
-- @usage local h = weir.sha256(token)
function _M.sha256(s, i, j)
    if type(s) ~= "string" then error("weir.sha256(s [, i, j]): s must be a string", 2) end
    return sha256(s, i, j)
end

--- 32 raw bytes (a SHA-256) as 64 lower-case hex digits.
-- @usage weir.hex32(weir.sha256(token))
function _M.hex32(h)
    if type(h) ~= "string" or #h ~= 32 then error("weir.hex32(h): h must be 32 bytes", 2) end
    local p = ffi.cast(U8P, h)
    for k = 0, 31 do hex_out[k] = HEX_PAIRS[p[k]] end
    return ffi.string(hex_out, 64)
end

--- N random bytes from OpenSSL's generator, as a string.
function _M.random_bytes(n)
    local buf = ffi.new("unsigned char[?]", n)
    if crypto.RAND_bytes(buf, n) ~= 1 then return nil, "RAND_bytes failed" end
    return ffi.string(buf, n)
end

--- A schema `check` for a list of exact IP addresses (a policy's
-- `trusted_proxies`): true, or what is wrong.
-- @usage { name = "trusted_proxies", type = "list", elements = { type = "string" }, check = weir.check_addresses }
function _M.check_addresses(v)
    for i = 1, #v do
        local a = v[i]
        if not (a:match("^%d+%.%d+%.%d+%.%d+$") or a:match("^[%x:.]*:[%x:.]*$")) then
            return format("expected IPv4 or IPv6 addresses (no names, no ranges), got %q", a)
        end
    end
    return true
end

--- Read a whole file, for a policy's `init` (a keys file, a word list),
-- which runs when the configuration is loaded or reloaded. Hooks may not
-- call it: it would block the worker.
-- @tparam string path
-- @treturn[1] string the contents
-- @treturn[2] nil
-- @treturn[2] string why
-- @usage local text, err = weir.read_file(conf.keys_file)
function _M.read_file(path)
    if type(path) ~= "string" then error("weir.read_file(path): path must be a string", 2) end
    if _M._in_hook and _M._in_hook() then
        error("weir.read_file blocks the worker: call it from init(conf), not from a hook", 2)
    end
    local f, err = io.open(path, "rb")
    if not f then return nil, err end
    local s, rerr = f:read("*a")
    f:close()
    if not s then return nil, path .. ": " .. tostring(rerr) end
    return s
end

--- Where header NAME (lower-cased) is in REQ's (a ctx.request) request
-- head, without parsing the other headers or copying anything: the head and
-- the first and last positions of its value; nil when there is no such
-- header, false when it is repeated (read `req.headers` then, which joins
-- the values). See `weir.ctx.header_span`.
-- @usage local head, i, j = weir.header_span(ctx.request, "apikey")
_M.header_span = require("weir.ctx").header_span

-- `weir.http` (the HTTP client, which needs a worker) is attached by the
-- runtime when it starts; outside a worker it is absent.

return _M
