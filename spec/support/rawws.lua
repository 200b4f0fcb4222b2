-- rawws — a raw RFC 6455 frame library over luasocket, for the specs.
--
-- Unlike a WebSocket client library, it builds frames with whatever header
-- bits, masking and length encoding it is told to (including ones RFC 6455
-- forbids), writes them in arbitrary pieces, and parses whatever arrives
-- without judging it, so that a spec can assert exactly what crossed the
-- wire. It speaks both roles: a client handshake towards weir, and a server
-- handshake for the raw backend (spec/support/raw_backend.lua), which records
-- what it receives as JSON lines that `rawws.read_record` reads back.
--
-- Runs under LuaJIT (uses the `bit` library).

local bit    = require "bit"
local socket = require "socket"
local mime   = require "mime"
local cjson  = require "cjson.safe"

local band, bor, bxor, rol, tobit = bit.band, bit.bor, bit.bxor, bit.rol, bit.tobit
local lshift, rshift, bnot = bit.lshift, bit.rshift, bit.bnot
local byte, char, sub, rep, format = string.byte, string.char, string.sub, string.rep, string.format
local concat, floor = table.concat, math.floor

local _M = {}

_M.GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_M.CONT, _M.TEXT, _M.BINARY = 0x0, 0x1, 0x2
_M.CLOSE, _M.PING, _M.PONG  = 0x8, 0x9, 0xA

math.randomseed(floor(socket.gettime() * 1e6) % 2147483647)

---------------------------------------------------------------------------
-- small byte helpers
---------------------------------------------------------------------------

--- Hex-encode a byte string ("\1\255" -> "01ff").
function _M.tohex(s)
    return (s:gsub(".", function(c) return format("%02x", byte(c)) end))
end

--- Decode a hex string back to bytes.
function _M.fromhex(h)
    return (h:gsub("%x%x", function(x) return char(tonumber(x, 16)) end))
end

--- `n` random bytes (test-grade randomness).
function _M.random_bytes(n)
    local t = {}
    for i = 1, n do t[i] = char(math.random(0, 255)) end
    return concat(t)
end

local function be32(n)
    return char(band(rshift(n, 24), 0xff), band(rshift(n, 16), 0xff),
                band(rshift(n, 8), 0xff), band(n, 0xff))
end

--- SHA-1 of `msg`, as 20 raw bytes (for Sec-WebSocket-Accept only).
function _M.sha1(msg)
    local h0, h1, h2, h3, h4 = tobit(0x67452301), tobit(0xEFCDAB89),
        tobit(0x98BADCFE), tobit(0x10325476), tobit(0xC3D2E1F0)
    local ml = #msg
    local bits = ml * 8
    msg = msg .. "\128" .. rep("\0", (55 - ml) % 64)
        .. be32(floor(bits / 4294967296)) .. be32(bits % 4294967296)
    local w = {}
    for chunk = 1, #msg, 64 do
        for i = 0, 15 do
            local a, b, c, d = byte(msg, chunk + i * 4, chunk + i * 4 + 3)
            w[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
        end
        for i = 16, 79 do
            w[i] = rol(bxor(w[i - 3], w[i - 8], w[i - 14], w[i - 16]), 1)
        end
        local a, b, c, d, e = h0, h1, h2, h3, h4
        for i = 0, 79 do
            local f, k
            if i < 20 then
                f, k = bor(band(b, c), band(bnot(b), d)), 0x5A827999
            elseif i < 40 then
                f, k = bxor(b, c, d), 0x6ED9EBA1
            elseif i < 60 then
                f, k = bor(band(b, c), band(b, d), band(c, d)), 0x8F1BBCDC
            else
                f, k = bxor(b, c, d), 0xCA62C1D6
            end
            local t = tobit(rol(a, 5) + f + e + k + w[i])
            e, d, c, b, a = d, c, rol(b, 30), a, t
        end
        h0, h1, h2 = tobit(h0 + a), tobit(h1 + b), tobit(h2 + c)
        h3, h4 = tobit(h3 + d), tobit(h4 + e)
    end
    return be32(h0) .. be32(h1) .. be32(h2) .. be32(h3) .. be32(h4)
end

function _M.b64(s)   return (mime.b64(s)) or "" end
function _M.unb64(s) return (mime.unb64(s)) end

--- The Sec-WebSocket-Accept value for a Sec-WebSocket-Key.
function _M.accept_for(key)
    return _M.b64(_M.sha1(key .. _M.GUID))
end

--- XOR `data` with the 4-byte `key`, starting at key offset `off` (0-based).
function _M.xor_mask(data, key, off)
    off = off or 0
    local k = { byte(key, 1, 4) }
    local out, n = {}, #data
    local CH = 4096
    for base = 1, n, CH do
        local last = base + CH - 1
        if last > n then last = n end
        local t = { byte(data, base, last) }
        for i = 1, #t do
            t[i] = bxor(t[i], k[(base + i - 2 + off) % 4 + 1])
        end
        out[#out + 1] = char(unpack(t))
    end
    return concat(out)
end

---------------------------------------------------------------------------
-- frames
---------------------------------------------------------------------------

--- Build the bytes of one frame, obeying every field literally.
-- @tparam table f
--   `opcode` (default 1), `fin` (default true), `rsv1`/`rsv2`/`rsv3`,
--   `payload` (default ""),
--   `mask`: false/nil unmasked, true a random key, or a 4-byte key string,
--   `len_form`: 7, 16 or 64 (default: the minimal encoding),
--   `length`: the declared length when it must differ from #payload,
--   `len_high_bit`: set the most significant bit of a 64-bit length.
-- @treturn string the frame, and the mask key used (or nil)
-- @usage sock:send(rawws.build{ opcode = 1, payload = "hi", mask = true })
function _M.build(f)
    local payload = f.payload or ""
    local opcode = f.opcode or 1
    local fin = f.fin
    if fin == nil then fin = true end
    local b0 = bor(fin and 0x80 or 0, f.rsv1 and 0x40 or 0, f.rsv2 and 0x20 or 0,
                   f.rsv3 and 0x10 or 0, band(opcode, 0x0f))
    local len = f.length or #payload
    local form = f.len_form or (len < 126 and 7 or len < 65536 and 16 or 64)
    local key = f.mask
    if key == true then key = _M.random_bytes(4) end
    if key == false then key = nil end
    local mbit = key and 0x80 or 0
    local hdr
    if form == 7 then
        assert(len < 126, "length does not fit 7 bits")
        hdr = char(b0, bor(mbit, len))
    elseif form == 16 then
        assert(len < 65536, "length does not fit 16 bits")
        hdr = char(b0, bor(mbit, 126), floor(len / 256), len % 256)
    elseif form == 64 then
        local hi, lo = floor(len / 4294967296), len % 4294967296
        if f.len_high_bit then hi = bor(hi, 0x80000000) end
        hdr = char(b0, bor(mbit, 127)) .. be32(hi) .. be32(lo)
    else
        error("len_form must be 7, 16 or 64", 2)
    end
    if key then
        assert(#key == 4, "a mask key has 4 bytes")
        return hdr .. key .. _M.xor_mask(payload, key), key
    end
    return hdr .. payload, nil
end

--- The payload of a close frame: code (or nil for none) and reason.
function _M.close_payload(code, reason)
    if not code then return "" end
    return char(floor(code / 256) % 256, code % 256) .. (reason or "")
end

--- Split a close payload into code and reason (nil, "" when empty).
function _M.parse_close(payload)
    if #payload < 2 then return nil, payload end
    local a, b = byte(payload, 1, 2)
    return a * 256 + b, sub(payload, 3)
end

-- Decorate a parsed frame with the fields of a close frame.
local function close_fields(fr)
    if fr.opcode == 8 then
        fr.code, fr.reason = _M.parse_close(fr.payload)
    end
    return fr
end

--- Parse one frame from `buf` at `pos` (default 1), without judging it.
-- @return the frame table and the position after it, or nil when `buf` does
--   not yet hold a whole frame. Frame fields: fin, rsv1, rsv2, rsv3, opcode,
--   masked, key (raw 4 bytes or nil), length, len_form (7/16/64),
--   len_high_bit, payload (unmasked), and code/reason for close frames.
function _M.parse(buf, pos)
    pos = pos or 1
    if #buf - pos + 1 < 2 then return nil end
    local b0, b1 = byte(buf, pos, pos + 1)
    local fr = {
        fin = band(b0, 0x80) ~= 0, rsv1 = band(b0, 0x40) ~= 0,
        rsv2 = band(b0, 0x20) ~= 0, rsv3 = band(b0, 0x10) ~= 0,
        opcode = band(b0, 0x0f), masked = band(b1, 0x80) ~= 0,
    }
    local len, p = band(b1, 0x7f), pos + 2
    fr.len_form = 7
    if len == 126 then
        if #buf < p + 1 then return nil end
        local x, y = byte(buf, p, p + 1)
        len, p, fr.len_form = x * 256 + y, p + 2, 16
    elseif len == 127 then
        if #buf < p + 7 then return nil end
        local b = { byte(buf, p, p + 7) }
        fr.len_high_bit = band(b[1], 0x80) ~= 0
        len = 0
        for i = 1, 8 do len = len * 256 + b[i] end
        p, fr.len_form = p + 8, 64
    end
    fr.length = len
    if fr.masked then
        if #buf < p + 3 then return nil end
        fr.key = sub(buf, p, p + 3)
        p = p + 4
    end
    if #buf < p + len - 1 then return nil end
    local data = sub(buf, p, p + len - 1)
    fr.payload = fr.masked and _M.xor_mask(data, fr.key) or data
    return close_fields(fr), p + len
end

--- A JSON-safe copy of a frame (payload and key hex-encoded), for records.
function _M.frame_to_json(fr)
    return {
        fin = fr.fin, rsv1 = fr.rsv1, rsv2 = fr.rsv2, rsv3 = fr.rsv3,
        opcode = fr.opcode, masked = fr.masked,
        key = fr.key and _M.tohex(fr.key) or nil,
        length = fr.length, len_form = fr.len_form,
        payload = _M.tohex(fr.payload or ""),
    }
end

--- The reverse of frame_to_json.
function _M.frame_from_json(t)
    local fr = {}
    for k, v in pairs(t) do fr[k] = v end
    fr.payload = _M.fromhex(t.payload or "")
    fr.key = t.key and _M.fromhex(t.key) or nil
    return close_fields(fr)
end

--- A one-line description of a frame, for failure messages.
function _M.describe(fr)
    if not fr then return "nil" end
    local p = fr.payload or ""
    local shown = #p > 40 and (sub(p, 1, 40) .. "...") or p
    local s = format("op=%d fin=%s%s%s%s%s len=%d", fr.opcode, tostring(fr.fin),
        fr.rsv1 and " rsv1" or "", fr.rsv2 and " rsv2" or "", fr.rsv3 and " rsv3" or "",
        fr.masked and " masked" or "", #p)
    if fr.opcode == 8 then
        s = s .. format(" code=%s reason=%q", tostring(fr.code), fr.reason or "")
    else
        s = s .. format(" payload=%q", shown)
    end
    return s
end

---------------------------------------------------------------------------
-- connections (either role)
---------------------------------------------------------------------------

local Conn = {}
Conn.__index = Conn

--- Wrap a connected luasocket TCP object. `role` is "client" (frames it
-- sends are masked unless told otherwise) or "server" (unmasked).
function _M.wrap(sock, role)
    sock:setoption("tcp-nodelay", true)
    return setmetatable({ sock = sock, role = role, buf = "", sent_keys = {} }, Conn)
end

-- Read exactly n bytes, keeping partial data across timeouts.
function Conn:read_bytes(n, deadline)
    while #self.buf < n do
        local left = deadline - socket.gettime()
        if left <= 0 then return nil, "timeout" end
        self.sock:settimeout(left)
        local data, err, partial = self.sock:receive(n - #self.buf)
        data = data or partial
        if data and #data > 0 then self.buf = self.buf .. data end
        if err and #self.buf < n then
            if err == "timeout" then
                if socket.gettime() >= deadline then return nil, "timeout" end
            else
                return nil, err   -- "closed" or a socket error
            end
        end
    end
    local out = sub(self.buf, 1, n)
    self.buf = sub(self.buf, n + 1)
    return out
end

--- Wait until at least n bytes are buffered, without consuming them.
-- @return the number of bytes buffered, or nil and "timeout"/"closed"
function Conn:peek(n, deadline)
    while #self.buf < n do
        local left = deadline - socket.gettime()
        if left <= 0 then return nil, "timeout" end
        self.sock:settimeout(left)
        local data, err, partial = self.sock:receive(n - #self.buf)
        data = data or partial
        if data and #data > 0 then self.buf = self.buf .. data end
        if err and #self.buf < n and err ~= "timeout" then return nil, err end
    end
    return #self.buf
end

--- Read one frame within `timeout` seconds (default 5).
-- @return the frame, or nil and "timeout"/"closed"/an error
function Conn:read_frame(timeout)
    local deadline = socket.gettime() + (timeout or 5)
    local hdr, err = self:read_bytes(2, deadline)
    if not hdr then return nil, err end
    local b1 = byte(hdr, 2)
    local len7, extra = band(b1, 0x7f), 0
    if len7 == 126 then extra = 2 elseif len7 == 127 then extra = 8 end
    if band(b1, 0x80) ~= 0 then extra = extra + 4 end
    local more = ""
    if extra > 0 then
        more, err = self:read_bytes(extra, deadline)
        if not more then self.buf = hdr .. self.buf; return nil, err end
    end
    local head = hdr .. more
    local len = len7
    if len7 == 126 then
        len = byte(head, 3) * 256 + byte(head, 4)
    elseif len7 == 127 then
        len = 0
        for i = 3, 10 do len = len * 256 + byte(head, i) end
    end
    if len > 64 * 1024 * 1024 then
        return nil, "frame length " .. len .. " too large for the test reader"
    end
    local body = ""
    if len > 0 then
        body, err = self:read_bytes(len, deadline)
        if not body then self.buf = head .. self.buf; return nil, err end
    end
    return (_M.parse(head .. body))
end

--- Write raw bytes, optionally in pieces.
-- @param split nil (one write), a number n (writes of n bytes each), or a
--   list of byte offsets at which to cut (e.g. {1, 2, 10}).
function Conn:send_raw(bytes, split)
    local pieces = {}
    if not split then
        pieces[1] = bytes
    elseif type(split) == "number" then
        for i = 1, #bytes, split do pieces[#pieces + 1] = sub(bytes, i, i + split - 1) end
    else
        local last = 0
        for _, off in ipairs(split) do
            if off > last and off < #bytes then
                pieces[#pieces + 1] = sub(bytes, last + 1, off)
                last = off
            end
        end
        pieces[#pieces + 1] = sub(bytes, last + 1)
    end
    self.sock:settimeout(10)
    for _, p in ipairs(pieces) do
        local i = 1
        while i <= #p do
            local n, err, partial = self.sock:send(p, i)
            if not n then
                if err ~= "timeout" then return nil, err end
                n = partial
            end
            i = n + 1
        end
        if #pieces > 1 then socket.sleep(0) end -- let the kernel flush each piece
    end
    return true
end

--- Build and write a frame (see `build`); masked by default in the client role.
-- @return true, or nil and an error
function Conn:send_frame(f, split)
    if f.mask == nil and self.role == "client" then
        f = setmetatable({ mask = true }, { __index = f })
    end
    local bytes, key = _M.build(f)
    if key then self.sent_keys[#self.sent_keys + 1] = key end
    return self:send_raw(bytes, split)
end

function Conn:send_close(code, reason, extra)
    local f = { opcode = 8, payload = _M.close_payload(code, reason) }
    for k, v in pairs(extra or {}) do f[k] = v end
    return self:send_frame(f)
end

--- Read frames until the peer's close frame, then (unless told otherwise)
-- answer it and wait for the end of the TCP connection.
-- Pings are answered with pongs unless opts.pong == false. weir's own
-- keep-alive pings ("weir-" payloads) are answered and left out of `frames`.
-- @tparam table opts `timeout` (default 5 s, for the whole exchange),
--   `pong`, `echo_close` (default true: answer the close with its payload),
--   `wait_eof` (default true)
-- @return a table: frames (all received, in order, the close included),
--   close (the first close frame or nil), after_close (frames after it),
--   eof (the TCP connection ended), err ("timeout" or nil),
--   data (the data frames before the close)
function Conn:collect(opts)
    opts = opts or {}
    local deadline = socket.gettime() + (opts.timeout or 5)
    local res = { frames = {}, after_close = {}, data = {}, eof = false }
    while true do
        local fr, err = self:read_frame(deadline - socket.gettime())
        if not fr then
            if err == "closed" then res.eof = true else res.err = err end
            break
        end
        local keepalive = fr.opcode == 9 and sub(fr.payload, 1, 5) == "weir-"
        if fr.opcode == 9 and opts.pong ~= false and not res.close then
            self:send_frame{ opcode = 10, payload = fr.payload }
        end
        if not keepalive then
            res.frames[#res.frames + 1] = fr
            if res.close then
                res.after_close[#res.after_close + 1] = fr
            elseif fr.opcode == 8 then
                res.close = fr
                if opts.echo_close ~= false then
                    self:send_frame{ opcode = 8, payload = fr.payload }
                end
                if opts.wait_eof == false then break end
            elseif fr.opcode ~= 9 and fr.opcode ~= 10 then
                res.data[#res.data + 1] = fr
            end
        end
    end
    return res
end

function Conn:close()
    self.sock:close()
end

---------------------------------------------------------------------------
-- handshakes
---------------------------------------------------------------------------

-- Read an HTTP head (start line + headers) with luasocket's line reader.
-- Header names are lower-cased; repeated headers are joined with ", ".
local function read_head(sock, deadline)
    local lines = {}
    while true do
        local left = deadline - socket.gettime()
        if left <= 0 then return nil, "timeout" end
        sock:settimeout(left)
        local line, err = sock:receive("*l")
        if not line then return nil, err end
        if line == "" then break end
        lines[#lines + 1] = line
        if #lines > 200 then return nil, "too many header lines" end
    end
    if #lines == 0 then return nil, "empty head" end
    local headers, order = {}, {}
    for i = 2, #lines do
        local name, value = lines[i]:match("^([^:]+):%s*(.-)%s*$")
        if not name then return nil, "malformed header line: " .. lines[i] end
        local lname = name:lower()
        order[#order + 1] = { name, value }
        headers[lname] = headers[lname] and (headers[lname] .. ", " .. value) or value
    end
    return { start = lines[1], headers = headers, order = order }
end

local function has_token(value, token)
    for t in (value or ""):gmatch("[^,]+") do
        if t:match("^%s*(.-)%s*$"):lower() == token then return true end
    end
    return false
end
_M.has_token = has_token

--- Open a client connection and perform the opening handshake.
-- @tparam table opts `path` (default "/"), `host`, `headers` (a list of
--   {name, value} added to the request), `timeout` (default 5),
--   `key` (default: random), `early` (bytes sent in the same write as the
--   request, before any answer: frames that come with the head), `rcvbuf`
--   (SO_RCVBUF set before connecting: a small one makes a reader that
--   stops reading fill the kernel's buffers sooner)
-- @return conn, response ({status, headers, body}), or nil, err, response
--   (when the answer is not a valid 101, the body is read too)
-- @usage local c, resp = rawws.connect("127.0.0.1", gw.port, { path = "/raw/x" })
function _M.connect(host, port, opts)
    opts = opts or {}
    local deadline = socket.gettime() + (opts.timeout or 5)
    local sock = socket.tcp()
    sock:settimeout(opts.timeout or 5)
    if opts.rcvbuf then sock:setoption("recv-buffer-size", opts.rcvbuf) end
    local ok, err = sock:connect(host, port)
    if not ok then return nil, "connect: " .. tostring(err) end
    local key = opts.key or _M.b64(_M.random_bytes(16))
    local req = {
        "GET " .. (opts.path or "/") .. " HTTP/1.1",
        "Host: " .. (opts.host or (host .. ":" .. port)),
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: " .. key,
        "Sec-WebSocket-Version: 13",
    }
    for _, h in ipairs(opts.headers or {}) do req[#req + 1] = h[1] .. ": " .. h[2] end
    req[#req + 1] = "\r\n"
    sock:settimeout(5)
    sock:send(concat(req, "\r\n") .. (opts.early or ""))
    local head, herr = read_head(sock, deadline)
    if not head then sock:close(); return nil, "handshake: " .. tostring(herr) end
    local status = tonumber(head.start:match("^HTTP/1%.1 (%d%d%d)"))
    local resp = { status = status, headers = head.headers, start = head.start }
    local h = head.headers
    local problem
    if status ~= 101 then
        problem = "status " .. tostring(status)
    elseif (h.upgrade or ""):lower() ~= "websocket" then
        problem = "Upgrade: " .. tostring(h.upgrade)
    elseif not has_token(h.connection, "upgrade") then
        problem = "Connection: " .. tostring(h.connection)
    elseif h["sec-websocket-accept"] ~= _M.accept_for(key) then
        problem = "Sec-WebSocket-Accept: " .. tostring(h["sec-websocket-accept"])
    elseif h["sec-websocket-extensions"] then
        problem = "Sec-WebSocket-Extensions: " .. h["sec-websocket-extensions"]
    end
    if problem then
        local len = tonumber(h["content-length"] or "")
        if len and len > 0 then
            sock:settimeout(2)
            resp.body = sock:receive(len)
        end
        sock:close()
        return nil, "bad handshake answer: " .. problem, resp
    end
    return _M.wrap(sock, "client"), resp
end

--- Server side: read a client's opening handshake from `sock` and check it
-- strictly against RFC 6455 section 4.2.1. Answers 101 (see Conn:answer)
-- when it is valid and `opts.answer` is not false; answers 400 when it is not.
-- @return conn (or nil), request ({method, path, version, headers, order,
--   key, errors = {...}})
function _M.accept(sock, opts)
    opts = opts or {}
    local deadline = socket.gettime() + (opts.timeout or 5)
    local head, err = read_head(sock, deadline)
    if not head then return nil, { errors = { "reading the request: " .. tostring(err) } } end
    local method, path, version = head.start:match("^(%S+) (%S+) (HTTP/%d%.%d)$")
    local h = head.headers
    local req = { method = method, path = path, version = version, headers = h,
                  order = head.order, errors = {} }
    local function bad(msg) req.errors[#req.errors + 1] = msg end
    if method ~= "GET" then bad("method " .. tostring(method)) end
    if version ~= "HTTP/1.1" then bad("version " .. tostring(version)) end
    if not path or path:sub(1, 1) ~= "/" then bad("request target " .. tostring(path)) end
    if not h.host or h.host == "" then bad("no Host") end
    if not has_token(h.upgrade, "websocket") then bad("Upgrade: " .. tostring(h.upgrade)) end
    if not has_token(h.connection, "upgrade") then bad("Connection: " .. tostring(h.connection)) end
    if h["sec-websocket-version"] ~= "13" then
        bad("Sec-WebSocket-Version: " .. tostring(h["sec-websocket-version"]))
    end
    local key = h["sec-websocket-key"]
    req.key = key
    local raw = key and key:match("^[A-Za-z0-9+/]+=*$") and _M.unb64(key)
    if not raw or #raw ~= 16 or #key ~= 24 then bad("Sec-WebSocket-Key: " .. tostring(key)) end
    if h["sec-websocket-extensions"] then
        bad("Sec-WebSocket-Extensions offered: " .. h["sec-websocket-extensions"])
    end
    for _, pair in ipairs(head.order) do
        if pair[1]:lower() == "sec-websocket-key" and pair[2] ~= key then
            bad("Sec-WebSocket-Key repeated")
        end
    end
    sock:settimeout(5)
    if #req.errors > 0 then
        local body = "bad handshake: " .. concat(req.errors, "; ")
        sock:send("HTTP/1.1 400 Bad Request\r\nContent-Length: " .. #body ..
                  "\r\nConnection: close\r\n\r\n" .. body)
        return nil, req
    end
    local conn = _M.wrap(sock, "server")
    if opts.answer ~= false then conn:answer(req, opts) end
    return conn, req
end

--- Server side: send the 101 for a request that rawws.accept checked.
-- @tparam table opts `headers` (a list of {name, value} to add),
--   `then_send` (bytes written in the same write as the 101)
function Conn:answer(req, opts)
    opts = opts or {}
    local lines = {
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Accept: " .. _M.accept_for(req.key),
    }
    for _, hh in ipairs(opts.headers or {}) do lines[#lines + 1] = hh[1] .. ": " .. hh[2] end
    lines[#lines + 1] = "\r\n"
    return self:send_raw(concat(lines, "\r\n") .. (opts.then_send or ""))
end

---------------------------------------------------------------------------
-- the raw backend's record (JSON lines, see raw_backend.lua)
---------------------------------------------------------------------------

--- Read a record file. Returns nil when it does not exist yet, else a table:
--   events (all, decoded; frames with payload/key back to bytes),
--   handshake (the handshake event), recv (frames received, in order),
--   sent (frames sent), done (the final "end" event or nil),
--   close (the first close frame received), data (data frames received
--   before that close).
function _M.read_record(file)
    local f = io.open(file, "rb")
    if not f then return nil end
    local rec = { events = {}, recv = {}, sent = {}, data = {} }
    for line in f:lines() do
        local ev = cjson.decode(line)
        if ev then
            if ev.frame then ev.frame = _M.frame_from_json(ev.frame) end
            rec.events[#rec.events + 1] = ev
            if ev.ev == "handshake" then
                rec.handshake = ev
            elseif ev.ev == "recv" then
                local fr = ev.frame
                rec.recv[#rec.recv + 1] = fr
                if not rec.close then
                    if fr.opcode == 8 then
                        rec.close = fr
                    elseif fr.opcode ~= 9 and fr.opcode ~= 10 then
                        rec.data[#rec.data + 1] = fr
                    end
                end
            elseif ev.ev == "sent" then
                rec.sent[#rec.sent + 1] = ev.frame
            elseif ev.ev == "end" then
                rec.done = ev
            end
        end
    end
    f:close()
    return rec
end

--- Encode a backend script (see raw_backend.lua) as JSON, hex-encoding the
-- payloads and raw bytes it contains.
function _M.encode_script(script)
    local function frame(fr)
        local f = {}
        for k, v in pairs(fr) do f[k] = v end
        f.payload = _M.tohex(fr.payload or "")
        if type(f.mask) == "string" then f.mask = _M.tohex(f.mask) end
        return f
    end
    local steps = {}
    for i, st in ipairs(script.steps or {}) do
        local s = {}
        for k, v in pairs(st) do s[k] = v end
        if st.send then s.send = frame(st.send) end
        if st.raw then s.raw = _M.tohex(st.raw) end
        steps[i] = s
    end
    local out = {}
    for k, v in pairs(script) do out[k] = v end
    out.steps = steps
    if script.with_101 then
        out.with_101 = {}
        for i, fr in ipairs(script.with_101) do out.with_101[i] = frame(fr) end
    end
    return cjson.encode(out)
end

return _M
