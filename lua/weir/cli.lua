--- `weir [-c FILE] COMMAND ...`: the command line's client of a running
-- weir's admin API (docs/admin-api.md, "The command line").
--
-- core/main.c hands argv over here when its first word names a command;
-- `main` returns the exit code. The configuration is loaded with the normal
-- loader (weir.conf), which also reads the admin token from
-- `admin.token_file`: the token goes into one request header and nowhere
-- else (never argv, never output). Each command makes one blocking
-- HTTP/1.1 request (one request per connection, `Connection: close`) over
-- a socket of its own, through LuaJIT's FFI to libc, and through OpenSSL's
-- libssl when the listener serves TLS; the answer is printed as a table, as
-- `key: value` lines, or as it is (`--json`).
--
-- Exit codes: 0 done, 1 failed (an error answer, a refused reload), 2
-- usage, 3 a reload applied in part, 7 the admin API (or, for `weir token`,
-- the listener) cannot be reached: as core/ctl.h's WEIR_EXIT_*.
--
-- @module weir.cli
-- @usage weir -c /etc/weir/weir.conf.lua connections --application ShopApp

local ffi = require "ffi"
local bit = require "bit"
local cjson = require "cjson.safe"

local type, pairs, ipairs, tostring, tonumber, next = type, pairs, ipairs, tostring, tonumber, next
local format, concat, sort, floor, max = string.format, table.concat, table.sort, math.floor, math.max
local band, bor, rshift, lshift = bit.band, bit.bor, bit.rshift, bit.lshift

local _M = {
    agent = "weir-cli",             -- the User-Agent; main adds the version
}

local EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_PARTIAL, EXIT_NOT_RUNNING = 0, 1, 2, 3, 7

local TIMEOUT = 10                  -- seconds: connecting, and the whole answer
local RELOAD_TIMEOUT = 35           -- POST /reload answers within 30 s (then 504)
local MAX_ANSWER = 64 * 1024 * 1024 -- bytes of an answer read at most
local MAX_HEAD = 64 * 1024

------------------------------------------------------------------------------
-- libc and libssl through the FFI (renamed with asm so that nothing clashes
-- with other modules' declarations in this state)
------------------------------------------------------------------------------

ffi.cdef [[
    struct weir_cli_pollfd { int fd; short events; short revents; };
    int     weir_cli_socket(int domain, int type, int protocol) asm("socket");
    int     weir_cli_connect(int fd, const void *addr, uint32_t len) asm("connect");
    int     weir_cli_poll(struct weir_cli_pollfd *fds, unsigned long n, int timeout) asm("poll");
    ssize_t weir_cli_send(int fd, const void *buf, size_t len, int flags) asm("send");
    ssize_t weir_cli_recv(int fd, void *buf, size_t len, int flags) asm("recv");
    int     weir_cli_close(int fd) asm("close");
    int     weir_cli_getsockopt(int fd, int level, int name, void *val, uint32_t *len) asm("getsockopt");
    int     weir_cli_inet_pton(int af, const char *src, void *dst) asm("inet_pton");
    char   *weir_cli_strerror(int errnum) asm("strerror");
    int     weir_cli_isatty(int fd) asm("isatty");
    char   *weir_cli_getcwd(char *buf, size_t size) asm("getcwd");
    int     weir_cli_clock_gettime(int clk, int64_t *ts) asm("clock_gettime");
]]
local C = ffi.C

-- Linux's numbers
local AF_INET, AF_INET6 = 2, 10
local SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC = 1, 0x800, 0x80000
local POLLIN, POLLOUT = 1, 4
local SOL_SOCKET, SO_ERROR = 1, 4
local MSG_NOSIGNAL = 0x4000
local EINTR, EAGAIN, EINPROGRESS = 4, 11, 115
local CLOCK_MONOTONIC = 1

local function strerror(e) return ffi.string(C.weir_cli_strerror(e)) end

local ts_box = ffi.new("int64_t[2]")
local function now()
    C.weir_cli_clock_gettime(CLOCK_MONOTONIC, ts_box)
    return tonumber(ts_box[0]) + tonumber(ts_box[1]) / 1e9
end

local ssl                           -- libssl's functions, declared on first use

local function load_ssl()
    if ssl then return ssl end
    ffi.cdef [[
        struct ssl_st; struct ssl_ctx_st; struct ssl_method_st;
        const struct ssl_method_st *weir_cli_TLS_client_method(void) asm("TLS_client_method");
        struct ssl_ctx_st *weir_cli_SSL_CTX_new(const struct ssl_method_st *m) asm("SSL_CTX_new");
        void   weir_cli_SSL_CTX_free(struct ssl_ctx_st *ctx) asm("SSL_CTX_free");
        int    weir_cli_SSL_CTX_set_default_verify_paths(struct ssl_ctx_st *ctx) asm("SSL_CTX_set_default_verify_paths");
        void   weir_cli_SSL_CTX_set_verify(struct ssl_ctx_st *ctx, int mode, void *cb) asm("SSL_CTX_set_verify");
        long   weir_cli_SSL_CTX_ctrl(struct ssl_ctx_st *ctx, int cmd, long larg, void *parg) asm("SSL_CTX_ctrl");
        struct ssl_st *weir_cli_SSL_new(struct ssl_ctx_st *ctx) asm("SSL_new");
        void   weir_cli_SSL_free(struct ssl_st *s) asm("SSL_free");
        int    weir_cli_SSL_set_fd(struct ssl_st *s, int fd) asm("SSL_set_fd");
        int    weir_cli_SSL_set1_host(struct ssl_st *s, const char *host) asm("SSL_set1_host");
        int    weir_cli_SSL_connect(struct ssl_st *s) asm("SSL_connect");
        int    weir_cli_SSL_read(struct ssl_st *s, void *buf, int num) asm("SSL_read");
        int    weir_cli_SSL_write(struct ssl_st *s, const void *buf, int num) asm("SSL_write");
        int    weir_cli_SSL_get_error(const struct ssl_st *s, int ret) asm("SSL_get_error");
        long   weir_cli_SSL_get_verify_result(const struct ssl_st *s) asm("SSL_get_verify_result");
        const char *weir_cli_X509_verify_cert_error_string(long n) asm("X509_verify_cert_error_string");
        unsigned long weir_cli_ERR_get_error(void) asm("ERR_get_error");
        void   weir_cli_ERR_error_string_n(unsigned long e, char *buf, size_t len) asm("ERR_error_string_n");
        void   weir_cli_ERR_clear_error(void) asm("ERR_clear_error");
    ]]
    -- the weir binary links libssl: its symbols are in the global namespace
    if pcall(function() return C.weir_cli_SSL_CTX_new end) then
        ssl = C
    else
        ssl = ffi.load("libssl.so.3", true)
    end
    return ssl
end

local SSL_VERIFY_NONE, SSL_VERIFY_PEER = 0, 1
local SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_2_VERSION = 123, 0x0303
local SSL_ERROR_SSL, SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE = 1, 2, 3
local SSL_ERROR_SYSCALL, SSL_ERROR_ZERO_RETURN = 5, 6

local function ssl_error_text()
    local e, last = ssl.weir_cli_ERR_get_error(), nil
    while e ~= 0 do
        last = e
        e = ssl.weir_cli_ERR_get_error()
    end
    if not last then return "TLS error" end
    local buf = ffi.new("char[256]")
    ssl.weir_cli_ERR_error_string_n(last, buf, 256)
    return ffi.string(buf)
end

------------------------------------------------------------------------------
-- A connection: a non-blocking socket (and TLS over it), every wait bounded
-- by a deadline
------------------------------------------------------------------------------

local Conn = {}
Conn.__index = Conn

local pfd = ffi.new("struct weir_cli_pollfd[1]")

-- Wait until FD is ready for EVENTS or DEADLINE passes. Returns true, or
-- nil and "timeout" / an error.
local function wait_fd(fd, events, deadline)
    while true do
        local left = deadline - now()
        if left <= 0 then return nil, "timeout" end
        pfd[0].fd, pfd[0].events, pfd[0].revents = fd, events, 0
        local r = C.weir_cli_poll(pfd, 1, math.ceil(left * 1000))
        if r > 0 then return true end
        if r < 0 and ffi.errno() ~= EINTR then return nil, strerror(ffi.errno()) end
    end
end

--- Whether ADDRESS (an IP address, as the configuration writes it) is a
-- loopback address: 127.0.0.0/8, ::1, or ::ffff:127.x.y.z.
function _M.is_loopback(address)
    if address:match("^127%.%d+%.%d+%.%d+$") then return true end
    local v6 = require("weir.conf").parse_ipv6(address)
    if not v6 then return false end
    if v6 == "0:0:0:0:0:0:0:1" then return true end
    local hi = v6:match("^0:0:0:0:0:ffff:(%x+):%x+$")
    return hi ~= nil and rshift(tonumber(hi, 16), 8) == 127
end

-- Where to connect for a listener on ADDRESS: a wildcard means this host.
local function connect_address(address)
    if address == "0.0.0.0" then return "127.0.0.1" end
    local v6 = require("weir.conf").parse_ipv6(address)
    if v6 == "0:0:0:0:0:0:0:0" then return "::1" end
    return address
end

--- "host:port", or "[v6]:port".
function _M.host_port(host, port)
    if host:find(":", 1, true) then return format("[%s]:%d", host, port) end
    return format("%s:%d", host, port)
end

-- Connect to TARGET ({ host, port, tls, verify }) before DEADLINE. Returns
-- the connection, or nil, why, and whether the peer could not be reached.
local function connect(target, deadline)
    local v6 = target.host:find(":", 1, true) ~= nil
    local sa = ffi.new("uint8_t[28]")
    local family = v6 and AF_INET6 or AF_INET
    ffi.cast("uint16_t *", sa)[0] = family
    sa[2], sa[3] = rshift(target.port, 8), band(target.port, 0xff)
    if C.weir_cli_inet_pton(family, target.host, sa + (v6 and 8 or 4)) ~= 1 then
        return nil, "not an IP address: " .. target.host, true
    end
    local fd = C.weir_cli_socket(family, bor(SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC), 0)
    if fd < 0 then return nil, "socket: " .. strerror(ffi.errno()) end
    local c = setmetatable({ fd = fd, deadline = deadline }, Conn)
    if C.weir_cli_connect(fd, sa, v6 and 28 or 16) ~= 0 then
        local e = ffi.errno()
        if e ~= EINPROGRESS and e ~= EINTR then
            c:close()
            return nil, strerror(e), true
        end
        local ok, err = wait_fd(fd, POLLOUT, deadline)
        if not ok then
            c:close()
            return nil, err == "timeout" and "no answer to connecting within " .. TIMEOUT .. " s" or err, true
        end
        local soerr, len = ffi.new("int[1]"), ffi.new("uint32_t[1]", 4)
        C.weir_cli_getsockopt(fd, SOL_SOCKET, SO_ERROR, soerr, len)
        if soerr[0] ~= 0 then
            c:close()
            return nil, strerror(soerr[0]), true
        end
    end
    if target.tls then
        local ok, err = c:handshake(target)
        if not ok then
            c:close()
            return nil, err
        end
    end
    return c
end

-- The TLS handshake: the certificate verified against the system's trusted
-- store, and the address checked against it, unless TARGET.verify is false
-- (a loopback address).
function Conn:handshake(target)
    local s = load_ssl()
    s.weir_cli_ERR_clear_error()
    local ctx = s.weir_cli_SSL_CTX_new(s.weir_cli_TLS_client_method())
    if ctx == nil then return nil, "TLS: " .. ssl_error_text() end
    self.ctx = ctx
    s.weir_cli_SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_2_VERSION, nil)
    if target.verify then
        s.weir_cli_SSL_CTX_set_default_verify_paths(ctx)
        s.weir_cli_SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
    else
        s.weir_cli_SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
    end
    local h = s.weir_cli_SSL_new(ctx)
    if h == nil then return nil, "TLS: " .. ssl_error_text() end
    self.ssl = h
    s.weir_cli_SSL_set_fd(h, self.fd)
    if target.verify then s.weir_cli_SSL_set1_host(h, target.host) end
    while true do
        local r = s.weir_cli_SSL_connect(h)
        if r == 1 then return true end
        local e = s.weir_cli_SSL_get_error(h, r)
        if e == SSL_ERROR_WANT_READ or e == SSL_ERROR_WANT_WRITE then
            local ok, err = wait_fd(self.fd, e == SSL_ERROR_WANT_READ and POLLIN or POLLOUT, self.deadline)
            if not ok then return nil, "TLS handshake: " .. err end
        else
            local v = s.weir_cli_SSL_get_verify_result(h)
            if v ~= 0 then
                return nil, "TLS: the certificate does not verify: "
                            .. ffi.string(s.weir_cli_X509_verify_cert_error_string(v))
            end
            return nil, "TLS handshake failed: " .. (e == SSL_ERROR_SSL and ssl_error_text() or
                                                     (e == SSL_ERROR_SYSCALL and "the connection was closed"
                                                      or "error " .. e))
        end
    end
end

--- Send all of DATA. Returns true, or nil and why.
function Conn:write(data)
    local p, left = ffi.cast("const char *", data), #data
    while left > 0 do
        local n, want
        if self.ssl then
            ssl.weir_cli_ERR_clear_error()
            n = ssl.weir_cli_SSL_write(self.ssl, p, left)
            if n <= 0 then
                local e = ssl.weir_cli_SSL_get_error(self.ssl, n)
                if e == SSL_ERROR_WANT_READ then want = POLLIN
                elseif e == SSL_ERROR_WANT_WRITE then want = POLLOUT
                else return nil, "TLS: " .. ssl_error_text() end
            end
        else
            n = tonumber(C.weir_cli_send(self.fd, p, left, MSG_NOSIGNAL))
            if n < 0 then
                local e = ffi.errno()
                if e == EAGAIN or e == EINTR then want = POLLOUT else return nil, strerror(e) end
            end
        end
        if want then
            local ok, err = wait_fd(self.fd, want, self.deadline)
            if not ok then return nil, err end
        else
            p, left = p + n, left - n
        end
    end
    return true
end

local rbuf = ffi.new("char[65536]")

--- Read what is there: a string, "" at the end of the stream, or nil and why.
function Conn:read()
    while true do
        local n, want
        if self.ssl then
            ssl.weir_cli_ERR_clear_error()
            n = ssl.weir_cli_SSL_read(self.ssl, rbuf, 65536)
            if n <= 0 then
                local e = ssl.weir_cli_SSL_get_error(self.ssl, n)
                if e == SSL_ERROR_WANT_READ then want = POLLIN
                elseif e == SSL_ERROR_WANT_WRITE then want = POLLOUT
                elseif e == SSL_ERROR_ZERO_RETURN or e == SSL_ERROR_SYSCALL then return ""
                else return nil, "TLS: " .. ssl_error_text() end
            end
        else
            n = tonumber(C.weir_cli_recv(self.fd, rbuf, 65536, 0))
            if n < 0 then
                local e = ffi.errno()
                if e == EAGAIN or e == EINTR then want = POLLIN else return nil, strerror(e) end
            end
        end
        if want then
            local ok, err = wait_fd(self.fd, want, self.deadline)
            if not ok then return nil, err end
        else
            return ffi.string(rbuf, n)
        end
    end
end

function Conn:close()
    if self.ssl then ssl.weir_cli_SSL_free(self.ssl); self.ssl = nil end
    if self.ctx then ssl.weir_cli_SSL_CTX_free(self.ctx); self.ctx = nil end
    if self.fd then C.weir_cli_close(self.fd); self.fd = nil end
end

------------------------------------------------------------------------------
-- HTTP/1.1: one request, one answer, then the connection is closed
------------------------------------------------------------------------------

-- Parse the head of an answer. Returns status and headers (lower-cased
-- names), or nil.
local function parse_head(head)
    local status = head:match("^HTTP/1%.[01] (%d%d%d)[^\r\n]*\r\n")
    if not status then return nil end
    local headers = {}
    for name, value in head:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]-)[ \t]*%f[\r\n]") do
        headers[name:lower()] = value
    end
    return tonumber(status), headers
end

--- Make one request to TARGET ({ host, port, tls, verify }): REQ has
-- method, path, headers (a list of { name, value }), body, timeout.
-- Returns { status, headers, body }, or nil, why, and whether the peer
-- could not be reached at all.
function _M.request(target, req)
    local deadline = now() + (req.timeout or TIMEOUT)
    local c, err, unreachable = connect(target, deadline)
    if not c then return nil, err, unreachable end
    local lines = { format("%s %s HTTP/1.1", req.method, req.path),
                    "Host: " .. _M.host_port(target.host, target.port),
                    "User-Agent: " .. _M.agent, "Accept: application/json", "Connection: close" }
    for _, h in ipairs(req.headers or {}) do lines[#lines + 1] = h[1] .. ": " .. h[2] end
    local body = req.body
    if body or req.method ~= "GET" then lines[#lines + 1] = "Content-Length: " .. #(body or "") end
    local ok, werr = c:write(concat(lines, "\r\n") .. "\r\n\r\n" .. (body or ""))
    if not ok then
        c:close()
        return nil, "sending the request: " .. werr
    end
    local got, size, status, headers, start, want = {}, 0, nil, nil, nil, nil
    while true do
        local chunk, rerr = c:read()
        if not chunk then
            c:close()
            if rerr == "timeout" then
                return nil, format("no answer within %d s", req.timeout or TIMEOUT)
            end
            return nil, "reading the answer: " .. rerr
        end
        if chunk == "" then break end
        got[#got + 1] = chunk
        size = size + #chunk
        if size > MAX_ANSWER then
            c:close()
            return nil, "the answer is larger than " .. MAX_ANSWER .. " bytes"
        end
        if not status then
            local all = concat(got)
            got = { all }
            local e = all:find("\r\n\r\n", 1, true)
            if e then
                status, headers = parse_head(all:sub(1, e + 1))
                if not status then
                    c:close()
                    return nil, "the answer is not HTTP"
                end
                start = e + 4
                want = tonumber(headers["content-length"])
            elseif #all > MAX_HEAD then
                c:close()
                return nil, "the answer is not HTTP"
            end
        end
        if want and size - start + 1 >= want then break end
    end
    c:close()
    local all = concat(got)
    if not status then
        if all == "" then return nil, "the connection was closed without an answer" end
        return nil, "the answer is not HTTP"
    end
    local body_out = all:sub(start, want and start + want - 1 or -1)
    if want and #body_out < want then return nil, "the answer was cut short" end
    return { status = status, headers = headers, body = body_out }
end

------------------------------------------------------------------------------
-- Encodings
------------------------------------------------------------------------------

--- Percent-encode S for a path segment or a query value (every byte but
-- the unreserved ones).
function _M.escape(s)
    return (tostring(s):gsub("[^%w%-%._~]", function(ch) return format("%%%02X", ch:byte()) end))
end
local escape = _M.escape

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

--- Standard base64 (with padding).
function _M.base64(s)
    local out = {}
    for i = 1, #s, 3 do
        local a, b, c = s:byte(i, i + 2)
        local n = bor(lshift(a, 16), lshift(b or 0, 8), c or 0)
        local q = {}
        for k = 1, 4 do
            local v = band(rshift(n, (4 - k) * 6), 63)
            q[k] = B64:sub(v + 1, v + 1)
        end
        if not b then q[3], q[4] = "=", "=" elseif not c then q[4] = "=" end
        out[#out + 1] = concat(q)
    end
    return concat(out)
end

-- The query string of ARGS (a list of { name, value }, nil values skipped).
local function query(args)
    local parts = {}
    for _, a in ipairs(args) do
        if a[2] ~= nil then parts[#parts + 1] = escape(a[1]) .. "=" .. escape(a[2]) end
    end
    return #parts > 0 and "?" .. concat(parts, "&") or ""
end

-- Server text made safe for a terminal: control characters shown as "?".
local function clean(s)
    return (tostring(s):gsub("[%z\1-\8\11-\31\127]", "?"))
end

------------------------------------------------------------------------------
-- Output
------------------------------------------------------------------------------

local out, err_out = io.stdout, io.stderr

local function say(...) out:write(...) end
local function complain(msg) err_out:write("weir: ", msg, "\n") end

local null = cjson.null

local function iso(t)
    return os.date("!%Y-%m-%dT%H:%M:%SZ", floor(t))
end

-- A value as text: "-" for none, lists joined, times (a number in a key
-- ending in _at) as RFC 3339.
local function show(v, key)
    if v == nil or v == null then return "-" end
    if type(v) == "boolean" then return v and "yes" or "no" end
    if type(v) == "number" then
        if key and key:match("_at$") and v > 1e9 then return iso(v > 1e11 and v / 1000 or v) end
        if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return format("%d", v) end
        return format("%.14g", v)
    end
    if type(v) == "table" then
        if #v == 0 and next(v) ~= nil then return clean(cjson.encode(v) or "?") end
        local parts = {}
        for i, x in ipairs(v) do parts[i] = show(x) end
        return #parts > 0 and concat(parts, ", ") or "-"
    end
    return clean(v)
end

--- Print OBJ as `key: value` lines, aligned: the keys in FIRST in that
-- order, then the others sorted; a nested object's fields as
-- `key.field`.
local function print_object(obj, first)
    local rows, seen = {}, {}
    local function add(prefix, o, order)
        local keys = {}
        for _, k in ipairs(order or {}) do
            if o[k] ~= nil then keys[#keys + 1] = k; seen[prefix .. k] = true end
        end
        local rest = {}
        for k in pairs(o) do
            if type(k) == "string" and not seen[prefix .. k] then rest[#rest + 1] = k end
        end
        sort(rest)
        for _, k in ipairs(rest) do keys[#keys + 1] = k end
        for _, k in ipairs(keys) do
            local v = o[k]
            if type(v) == "table" and next(v) ~= nil and #v == 0 then
                add(prefix .. k .. ".", v)
            else
                rows[#rows + 1] = { prefix .. k, show(v, k) }
            end
        end
    end
    add("", obj, first)
    local w = 0
    for _, r in ipairs(rows) do w = max(w, #r[1]) end
    for _, r in ipairs(rows) do say(r[1], ":", (" "):rep(w - #r[1] + 2), r[2], "\n") end
end

--- Print ROWS as a table under the headings of COLUMNS ({ title, fn(row)
-- returning text [, right = true] }); a column no row has a value for
-- (every cell "-") is left out when it is marked `optional`.
local function print_table(columns, rows)
    local cells, cols = {}, {}
    for _, col in ipairs(columns) do
        local texts, any = {}, false
        for i, r in ipairs(rows) do
            texts[i] = col[2](r)
            if texts[i] ~= "-" then any = true end
        end
        if any or not col.optional then
            cols[#cols + 1] = col
            cells[#cols] = texts
        end
    end
    local widths = {}
    for c, col in ipairs(cols) do
        widths[c] = #col[1]
        for _, t in ipairs(cells[c]) do widths[c] = max(widths[c], #t) end
    end
    local function line(texts)
        local parts = {}
        for c, col in ipairs(cols) do
            local t = texts[c]
            local pad = (" "):rep(widths[c] - #t)
            if c == #cols and not col.right then parts[c] = t
            else parts[c] = col.right and pad .. t or t .. pad end
        end
        say(concat(parts, "  "), "\n")
    end
    local head = {}
    for c, col in ipairs(cols) do head[c] = col[1] end
    line(head)
    for i in ipairs(rows) do
        local t = {}
        for c in ipairs(cols) do t[c] = cells[c][i] end
        line(t)
    end
end

-- A column of field KEY.
local function field(title, key, extra)
    local col = { title, function(r) return show(r[key], key) end }
    for k, v in pairs(extra or {}) do col[k] = v end
    return col
end

local function human_bytes(n)
    n = tonumber(n) or 0
    if n < 1024 then return format("%dB", n) end
    local units = { "K", "M", "G", "T" }
    local u = 0
    while n >= 1024 and u < #units do n = n / 1024; u = u + 1 end
    return format("%.1f%s", n, units[u])
end

local function human_duration(s)
    s = floor(tonumber(s) or 0)
    if s < 60 then return s .. "s" end
    if s < 3600 then return format("%dm %ds", s / 60, s % 60) end
    if s < 86400 then return format("%dh %dm", s / 3600, s % 3600 / 60) end
    return format("%dd %dh", s / 86400, s % 86400 / 3600)
end

------------------------------------------------------------------------------
-- Commands: their options, and what each does
------------------------------------------------------------------------------

-- Options: name → "value" (takes one), "flag", or "number" (an integer).
local FILTERS = { "api", "version", "application", "subscriber", "client", "key-type", "tier" }
local FILTER_OPTS = {}
for _, f in ipairs(FILTERS) do FILTER_OPTS[f] = "value" end

local function with(t, extra)
    local r = {}
    for k, v in pairs(t) do r[k] = v end
    for k, v in pairs(extra) do r[k] = v end
    return r
end

local commands = {}
local order = {}

-- Declare command NAME (for `app` and `revoke`, "app create" etc.).
local function command(name, def)
    commands[name] = def
    order[#order + 1] = name
end

-- The filters given, as query arguments in a fixed order.
local function filter_args(opts)
    local args, any = {}, false
    for _, f in ipairs(FILTERS) do
        local v = opts[f]
        if v ~= nil then
            args[#args + 1] = { (f:gsub("%-", "_")), v }
            any = true
        end
    end
    return args, any
end

local UsageError = {}
local current                       -- the command being parsed, for the hint of a usage error

local function usage_error(msg)
    error(setmetatable({ msg = msg, command = current }, UsageError), 0)
end

-- The admin request's outcome: the decoded answer and the raw one, or nil
-- and the exit code (the error said already).
local function call(ctx, method, path, body, opts)
    opts = opts or {}
    local target, terr = ctx.target(opts.listener)
    if not target then
        complain(terr)
        return nil, EXIT_FAILURE
    end
    local headers = {}
    if opts.auth then headers[#headers + 1] = { "Authorization", opts.auth }
    elseif not opts.listener then headers[#headers + 1] = { "Authorization", "Bearer " .. target.token } end
    local raw
    if type(body) == "table" then
        raw = cjson.encode(body)
        headers[#headers + 1] = { "Content-Type", "application/json" }
    elseif type(body) == "string" then
        raw = body
        headers[#headers + 1] = { "Content-Type", opts.content_type or "application/json" }
    end
    local res, err, unreachable = _M.request(target, { method = method, path = path, headers = headers,
                                                       body = raw, timeout = opts.timeout })
    if not res then
        if unreachable then
            complain(format("cannot reach %s at %s (%s in %s): %s; is weir running?", target.what,
                            _M.host_port(target.host, target.port), target.where, ctx.file, err))
            return nil, EXIT_NOT_RUNNING
        end
        complain(format("%s at %s: %s", target.what, _M.host_port(target.host, target.port), err))
        return nil, EXIT_FAILURE
    end
    local doc = cjson.decode(res.body)
    local ok = res.status >= 200 and res.status < 300 or (opts.accept and opts.accept[res.status])
    if ctx.json and res.body ~= "" then
        say(res.body)
        if res.body:sub(-1) ~= "\n" then say("\n") end
    end
    if ok then return doc or {}, res end
    if type(doc) == "table" and doc.type == "error" and type(doc.error) == "table" then
        complain(format("%s (%s)", clean(doc.error.message or "error"), show(doc.error.code or res.status)))
    elseif type(doc) == "table" and type(doc.error) == "string" then
        complain(format("%s (%s)", clean(doc.error_description or doc.error), clean(doc.error)))
    else
        complain(format("%s at %s answered HTTP %d%s", target.what, _M.host_port(target.host, target.port),
                        res.status, doc and "" or " (not JSON)"))
    end
    return nil, EXIT_FAILURE
end

-- Option NAME (checked to be a whole number by `parse`) as a number.
local function int_opt(opts, name)
    return opts[name] ~= nil and tonumber(opts[name]) or nil
end

---------------------------------------------------------------- status

command("status", {
    usage = "weir status [--json]",
    help = "The gateway's version, uptime, configuration, connections, workers and last reload (GET /status).",
    run = function(ctx)
        local st, code = call(ctx, "GET", "/status")
        if not st then return code end
        if ctx.json then return EXIT_OK end
        local running = 0
        for _, w in ipairs(st.workers or {}) do if w.running then running = running + 1 end end
        print_object({
            version = st.version,
            started = st.started and format("%s (up %s)", show(st.started), human_duration(st.uptime_s)),
            configuration = st.configuration,
            generation = st.generation,
            connections = st.connections and format("%s (the registry lists at most %s)", show(st.connections),
                                                    show(st.connections_listed_max)),
            workers = format("%d running of %d", running, #(st.workers or {})),
            ["last reload"] = st.last_reload and format("%s at %s", show(st.last_reload.result),
                                                        show(st.last_reload.at)) or "none since the start",
        }, { "version", "started", "configuration", "generation", "connections", "workers", "last reload" })
        say("\n")
        print_table({
            field("WORKER", "index"), field("PID", "pid", { right = true }),
            { "RUNNING", function(w) return w.running and "yes" or "no" end },
            field("CONNECTIONS", "connections", { right = true }),
        }, st.workers or {})
        return EXIT_OK
    end,
})

---------------------------------------------------------------- connections

local function trim_ms(s) return type(s) == "string" and (s:gsub("%.%d+Z$", "Z")) or s end

command("connections", {
    usage = "weir connections [--api A] [--version V] [--application X] [--subscriber S] [--client IP]\n"
            .. "                 [--key-type T] [--tier T] [--limit N] [--offset N] [--json]",
    help = "The host's live connections matching every filter given (GET /connections): ID, API, version,\n"
           .. "application, subscriber, client address, since when, and messages/bytes in (from the\n"
           .. "client) and out (from the backend).",
    opts = with(FILTER_OPTS, { limit = "number", offset = "number" }),
    run = function(ctx)
        local args = filter_args(ctx.opts)
        args[#args + 1] = { "limit", int_opt(ctx.opts, "limit") }
        args[#args + 1] = { "offset", int_opt(ctx.opts, "offset") }
        local l, code = call(ctx, "GET", "/connections" .. query(args))
        if not l then return code end
        if ctx.json then return EXIT_OK end
        local conns = l.connections or {}
        if #conns == 0 then
            say(l.total and l.total > 0 and format("no connections on this page (%d match)\n", l.total)
                or "no open connections match\n")
            return EXIT_OK
        end
        local function consumer(key)
            return function(c)
                if type(c.consumer) ~= "table" then return "-" end
                return show(c.consumer[key])
            end
        end
        print_table({
            field("ID", "id"), field("API", "api"), field("VERSION", "version"),
            { "APPLICATION", consumer("application") }, { "SUBSCRIBER", consumer("subscriber") },
            { "CLIENT", function(c)
                local cl = type(c.client) == "table" and c.client or {}
                return cl.ip and _M.host_port(cl.ip, cl.port or 0) or "-"
            end },
            { "SINCE", function(c) return show(trim_ms(c.since)) end },
            { "IN", function(c) return format("%s/%s", show(c.frames_in), human_bytes(c.bytes_in)) end, right = true },
            { "OUT", function(c) return format("%s/%s", show(c.frames_out), human_bytes(c.bytes_out)) end, right = true },
        }, conns)
        local offset = l.offset or 0
        if l.total and l.total > offset + #conns then
            say(format("(%d-%d of %d: --offset %d for more)\n", offset + 1, offset + #conns, l.total,
                       offset + #conns))
        end
        return EXIT_OK
    end,
})

---------------------------------------------------------------- kick, push

-- The target of kick and push: one connection (ID) or the filters (or
-- --all). Returns path-or-nil and the query arguments.
local function one_or_many(ctx, verb)
    local id = ctx.args[1]
    local fargs, any = filter_args(ctx.opts)
    if id and (any or ctx.opts.all) then
        usage_error(format("%s takes a connection ID or filters, not both", verb))
    end
    if id then return id end
    if not any and not ctx.opts.all then
        usage_error(format("%s needs a connection ID, or filters (--application X, --api A, ...), "
                           .. "or --all for every connection of the host", verb))
    end
    if ctx.opts.all then fargs[#fargs + 1] = { "all", "true" } end
    return nil, fargs
end

command("kick", {
    usage = "weir kick ID [--code N] [--message M] [--json]\n"
            .. "       weir kick (FILTERS | --all) [--code N] [--message M] [--json]",
    help = "Close a connection (DELETE /connections/ID), or every connection matching the filters\n"
           .. "(DELETE /connections?...; FILTERS as for weir connections; --all: every one). The client gets\n"
           .. "the error JSON and a close frame with the code (default 1000), the backend 1001.",
    args = { 0, 1 }, opts = with(FILTER_OPTS, { code = "number", message = "value", all = "flag" }),
    check = function(p) one_or_many(p, "kick") end,
    run = function(ctx)
        local id, fargs = one_or_many(ctx, "kick")
        local body
        local code_n = int_opt(ctx.opts, "code")
        if code_n or ctx.opts.message then body = { code = code_n, message = ctx.opts.message } end
        local path = id and "/connections/" .. escape(id) or "/connections" .. query(fargs)
        local r, code = call(ctx, "DELETE", path, body)
        if not r then return code end
        if ctx.json then return EXIT_OK end
        if id then
            say(format("closed %s (code %s)\n", show(r.id or id), show(r.code)))
        elseif (r.matched or 0) == 0 then
            say("no connection matched\n")
        else
            say(format("closed %s of %s matching connection%s (code %s)\n", show(r.closed), show(r.matched),
                       r.matched == 1 and "" or "s", show(r.code)))
        end
        return EXIT_OK
    end,
})

command("push", {
    usage = "weir push ID (--text T | --binary-file F) [--to client|backend] [--json]\n"
            .. "       weir push (FILTERS | --all) (--text T | --binary-file F) [--to client|backend] [--json]",
    help = "Send a message to a connection's client (or, --to backend, to its backend): POST\n"
           .. "/connections/ID/messages, or to every connection matching the filters (POST\n"
           .. "/connections/messages?...). --text sends a text message, --binary-file the bytes of a file.",
    args = { 0, 1 },
    opts = with(FILTER_OPTS, { text = "value", ["binary-file"] = "value", to = "value", all = "flag" }),
    check = function(p)
        one_or_many(p, "push")
        local o = p.opts
        if (o.text == nil) == (o["binary-file"] == nil) then
            usage_error("push needs one of --text T and --binary-file F")
        end
        if o.to and o.to ~= "client" and o.to ~= "backend" then
            usage_error(format('--to takes "client" or "backend", not %q', o.to))
        end
    end,
    run = function(ctx)
        local id, fargs = one_or_many(ctx, "push")
        local o = ctx.opts
        local body = { text = o.text, to = o.to }
        if o["binary-file"] then
            local f, ferr = io.open(o["binary-file"], "rb")
            if not f then
                complain("cannot read " .. ferr)
                return EXIT_FAILURE
            end
            local size = f:seek("end")
            local limit = ctx.conf.admin and ctx.conf.admin.max_body or 1024 * 1024
            if size and size > limit then
                f:close()
                complain(format("%s has %d bytes: more than the admin API takes (admin.max_body, %d)",
                                o["binary-file"], size, limit))
                return EXIT_FAILURE
            end
            f:seek("set")
            local data = f:read("*a") or ""
            f:close()
            body.binary = _M.base64(data)
        end
        local path = id and "/connections/" .. escape(id) .. "/messages" or "/connections/messages" .. query(fargs)
        local r, code = call(ctx, "POST", path, body)
        if not r then return code end
        if ctx.json then return EXIT_OK end
        local peer = o.to == "backend" and "backend" or "client"
        if id then
            say(format("sent to %s's %s\n", show(r.id or id), peer))
        elseif (r.matched or 0) == 0 then
            say("no connection matched\n")
        else
            say(format("sent to the %s of %s of %s matching connection%s\n", peer, show(r.delivered),
                       show(r.matched), r.matched == 1 and "" or "s"))
        end
        return EXIT_OK
    end,
})

---------------------------------------------------------------- reload

command("reload", {
    usage = "weir reload [--json]",
    help = "Have the running weir load its configuration again and apply it, as weir -s reload does\n"
           .. "(POST /reload), and print its report. Exit 0: applied, 3: applied in part, 1: refused\n"
           .. "(nothing changed).",
    run = function(ctx)
        local r, code = call(ctx, "POST", "/reload", nil, { accept = { [422] = true }, timeout = RELOAD_TIMEOUT })
        if not r then return code end
        local result = r.result
        local rc = result == "applied" and EXIT_OK or result == "partial" and EXIT_PARTIAL or EXIT_FAILURE
        if ctx.json then return rc end
        local to = rc == EXIT_FAILURE and err_out or out
        local lines = type(r.report) == "table" and #r.report > 0 and r.report or r.errors or {}
        for _, line in ipairs(lines) do to:write(clean(line), "\n") end
        if #lines == 0 then to:write("weir: reload ", show(result), "\n") end
        return rc
    end,
})

---------------------------------------------------------------- the key manager

local APP_FIELDS = { "id", "name", "owner", "description", "tier", "scopes", "created_at" }

command("app create", {
    usage = "weir app create NAME --owner O [--description D] [--tier T] [--scopes a,b] [--json]",
    help = "Register an application (POST /applications).",
    args = { 1, 1 }, opts = { owner = "value", description = "value", tier = "value", scopes = "value" },
    check = function(p)
        if not p.opts.owner then usage_error("app create needs --owner O") end
    end,
    run = function(ctx)
        local o = ctx.opts
        local scopes
        if o.scopes then
            scopes = setmetatable({}, cjson.array_mt)
            for s in o.scopes:gmatch("[^,%s]+") do scopes[#scopes + 1] = s end
        end
        local a, code = call(ctx, "POST", "/applications", { name = ctx.args[1], owner = o.owner,
                                                             description = o.description, tier = o.tier,
                                                             scopes = scopes })
        if not a then return code end
        if not ctx.json then print_object(a, APP_FIELDS) end
        return EXIT_OK
    end,
})

command("app list", {
    usage = "weir app list [--owner O] [--json]",
    help = "The applications (GET /applications), or those of one owner.",
    opts = { owner = "value" },
    run = function(ctx)
        local l, code = call(ctx, "GET", "/applications" .. query({ { "owner", ctx.opts.owner } }))
        if not l then return code end
        if ctx.json then return EXIT_OK end
        local apps = type(l.applications) == "table" and l.applications or {}
        if #apps == 0 then say("no applications\n") return EXIT_OK end
        print_table({ field("ID", "id", { optional = true }), field("NAME", "name"), field("OWNER", "owner"),
                      field("TIER", "tier"), field("SCOPES", "scopes"), field("CREATED", "created_at") }, apps)
        if l.total and l.total > #apps then say(format("(%d of %d)\n", #apps, l.total)) end
        return EXIT_OK
    end,
})

command("app show", {
    usage = "weir app show APP [--json]",
    help = "One application (GET /applications/APP).",
    args = { 1, 1 },
    run = function(ctx)
        local a, code = call(ctx, "GET", "/applications/" .. escape(ctx.args[1]))
        if not a then return code end
        if not ctx.json then print_object(a, APP_FIELDS) end
        return EXIT_OK
    end,
})

command("app keys", {
    usage = "weir app keys APP [--json]\n"
            .. "       weir app keys APP --generate [--sandbox] [--json]",
    help = "An application's consumer keys (GET /applications/APP/keys); with --generate, make a new\n"
           .. "production (or --sandbox) key (POST /applications/APP/keys) and print its consumer secret:\n"
           .. "it is shown this once, weir keeps only its hash.",
    args = { 1, 1 }, opts = { generate = "flag", sandbox = "flag" },
    check = function(p)
        if p.opts.sandbox and not p.opts.generate then usage_error("--sandbox goes with --generate") end
    end,
    run = function(ctx)
        local app = escape(ctx.args[1])
        if ctx.opts.generate then
            local k, code = call(ctx, "POST", "/applications/" .. app .. "/keys",
                                 { key_type = ctx.opts.sandbox and "sandbox" or "production" })
            if not k then return code end
            if not ctx.json then
                print_object(k, { "consumer_key", "consumer_secret", "key_type", "created_at" })
            end
            if k.consumer_secret then
                complain("the consumer secret is shown only now: weir keeps only its hash; store it safely")
            end
            return EXIT_OK
        end
        local l, code = call(ctx, "GET", "/applications/" .. app .. "/keys")
        if not l then return code end
        if ctx.json then return EXIT_OK end
        local keys = type(l.keys) == "table" and l.keys or {}
        if #keys == 0 then say("no keys\n") return EXIT_OK end
        print_table({ field("CONSUMER KEY", "consumer_key"), field("TYPE", "key_type"),
                      field("CREATED", "created_at"), field("REVOKED", "revoked_at") }, keys)
        return EXIT_OK
    end,
})

command("app delete", {
    usage = "weir app delete APP [--json]",
    help = "Delete an application (DELETE /applications/APP).",
    args = { 1, 1 },
    run = function(ctx)
        local r, code = call(ctx, "DELETE", "/applications/" .. escape(ctx.args[1]))
        if not r then return code end
        if not ctx.json then say("deleted application ", clean(ctx.args[1]), "\n") end
        return EXIT_OK
    end,
})

command("subscribe", {
    usage = "weir subscribe APP API VERSION --tier T [--json]",
    help = "Subscribe an application to an API's version at a tier (POST /subscriptions).",
    args = { 3, 3 }, opts = { tier = "value" },
    check = function(p)
        if not p.opts.tier then usage_error("subscribe needs --tier T") end
    end,
    run = function(ctx)
        local s, code = call(ctx, "POST", "/subscriptions", { application = ctx.args[1], api = ctx.args[2],
                                                              version = ctx.args[3], tier = ctx.opts.tier })
        if not s then return code end
        if not ctx.json then
            print_object(s, { "id", "app_id", "app_name", "api", "version", "tier", "created_at" })
        end
        return EXIT_OK
    end,
})

command("unsubscribe", {
    usage = "weir unsubscribe SUBSCRIPTION_ID [--json]",
    help = "Remove a subscription (DELETE /subscriptions/ID).",
    args = { 1, 1 },
    run = function(ctx)
        local r, code = call(ctx, "DELETE", "/subscriptions/" .. escape(ctx.args[1]))
        if not r then return code end
        if not ctx.json then say("removed subscription ", clean(ctx.args[1]), "\n") end
        return EXIT_OK
    end,
})

command("subscriptions", {
    usage = "weir subscriptions [--application APP] [--api A] [--json]",
    help = "The subscriptions (GET /subscriptions), of one application or to one API.",
    opts = { application = "value", api = "value" },
    run = function(ctx)
        local l, code = call(ctx, "GET", "/subscriptions" .. query({ { "application", ctx.opts.application },
                                                                     { "api", ctx.opts.api } }))
        if not l then return code end
        if ctx.json then return EXIT_OK end
        local subs = type(l.subscriptions) == "table" and l.subscriptions or {}
        if #subs == 0 then say("no subscriptions\n") return EXIT_OK end
        print_table({ field("ID", "id"),
                      { "APPLICATION", function(s) return show(s.app_name or s.application) end },
                      field("API", "api"), field("VERSION", "version"), field("TIER", "tier"),
                      field("CREATED", "created_at") }, subs)
        if l.total and l.total > #subs then say(format("(%d of %d)\n", #subs, l.total)) end
        return EXIT_OK
    end,
})

-- The client secret: WEIR_CLIENT_SECRET, else one line of standard input
-- (not echoed when it is a terminal).
local function client_secret(key)
    local s = os.getenv("WEIR_CLIENT_SECRET")
    if s and s ~= "" then return s end
    local tty = C.weir_cli_isatty(0) == 1
    if tty then
        err_out:write("client secret of ", clean(key), ": ")
        err_out:flush()
        os.execute("stty -echo 2>/dev/null")
    end
    local line = io.stdin:read("*l")
    if tty then
        os.execute("stty echo 2>/dev/null")
        err_out:write("\n")
    end
    line = line and line:gsub("\r$", "")
    if not line or line == "" then
        usage_error("no client secret: set WEIR_CLIENT_SECRET, or give it as one line on standard input")
    end
    return line
end

command("token", {
    usage = 'weir token CONSUMER_KEY [--scope "a b"] [--json]',
    help = "An access token for a consumer key, by the client credentials grant (POST /oauth2/token on\n"
           .. "weir's first listener, listen[1]; https when it has tls), the key and its secret sent with\n"
           .. "HTTP Basic authentication. The secret is read from WEIR_CLIENT_SECRET, else as one line of\n"
           .. "standard input; never give it as an argument. Prints the access token alone (TOKEN=$(weir\n"
           .. "token KEY) works), when it expires on standard error; --json prints the whole answer.",
    args = { 1, 1 }, opts = { scope = "value" },
    run = function(ctx)
        local key = ctx.args[1]
        local secret = client_secret(key)
        local form = "grant_type=client_credentials"
        if ctx.opts.scope then form = form .. "&scope=" .. escape(ctx.opts.scope) end
        local auth = "Basic " .. _M.base64(escape(key) .. ":" .. escape(secret))
        local t, code = call(ctx, "POST", "/oauth2/token", form,
                             { listener = true, auth = auth, content_type = "application/x-www-form-urlencoded" })
        if not t then return code end
        if ctx.json then return EXIT_OK end
        if type(t.access_token) ~= "string" then
            complain("the token endpoint answered without an access_token")
            return EXIT_FAILURE
        end
        say(t.access_token, "\n")
        local notes = {}
        if tonumber(t.expires_in) then
            notes[#notes + 1] = format("expires in %s (at %s)", human_duration(t.expires_in),
                                       iso(os.time() + tonumber(t.expires_in)))
        end
        if t.scope then notes[#notes + 1] = "scope: " .. clean(t.scope) end
        if #notes > 0 then complain(concat(notes, "; ")) end
        return EXIT_OK
    end,
})

-- `weir revoke WHAT ID`: POST PATH_OF(id), and say "revoked WHAT ID".
local function revoke_command(what, label, help, path_of)
    command("revoke " .. what, {
        usage = "weir revoke " .. what .. " " .. label .. " [--json]",
        help = help,
        args = { 1, 1 },
        run = function(ctx)
            local r, code = call(ctx, "POST", path_of(escape(ctx.args[1])))
            if not r then return code end
            if not ctx.json then
                say("revoked ", what == "app" and "application" or what, " ", clean(ctx.args[1]), "\n")
                if next(r) ~= nil then print_object(r) end
            end
            return EXIT_OK
        end,
    })
end

revoke_command("app", "APP", "Revoke every key and token of an application (POST /applications/APP/revoke).",
               function(id) return "/applications/" .. id .. "/revoke" end)
revoke_command("key", "CONSUMER_KEY", "Revoke a consumer key (POST /keys/KEY/revoke).",
               function(id) return "/keys/" .. id .. "/revoke" end)

command("revoke token", {
    usage = "weir revoke token (TOKEN | JTI | -) [--json]",
    help = "Revoke an access token (POST /tokens/revoke): a JWT is sent as {\"token\":...}, anything\n"
           .. "else as its ID, {\"jti\":...}; - reads it from one line of standard input (so that the\n"
           .. "token is not in the command line).",
    args = { 1, 1 },
    run = function(ctx)
        local t = ctx.args[1]
        if t == "-" then
            t = (io.stdin:read("*l") or ""):gsub("^%s+", ""):gsub("%s+$", "")
            if t == "" then usage_error("no token on standard input") end
        end
        local is_jwt = t:match("^[%w%-_]+%.[%w%-_]+%.[%w%-_]*$") ~= nil
        local r, code = call(ctx, "POST", "/tokens/revoke", is_jwt and { token = t } or { jti = t })
        if not r then return code end
        if not ctx.json then
            say(is_jwt and "revoked the token\n" or "revoked token " .. clean(t) .. "\n")
            if next(r) ~= nil then print_object(r) end
        end
        return EXIT_OK
    end,
})

local GROUPS = { app = { "create", "list", "show", "keys", "delete" }, revoke = { "app", "key", "token" } }

--- The commands, "app create" and the like included, in the order declared.
_M.commands = order

------------------------------------------------------------------------------
-- The command line
------------------------------------------------------------------------------

local function command_help(name)
    local def = commands[name]
    say("usage: ", def.usage:gsub("\n", "\n"), "\n\n", def.help, "\n\n",
        "  -c FILE  the configuration, for admin.address, admin.port, admin.tls and admin.token_file\n",
        "  --json   print the API's answer as it is\n")
end

-- Split ARGV into the command, its words and its options. Errors with a
-- UsageError.
local function parse(argv, env)
    local p = { file = nil, json = false, help = false, args = {}, opts = {} }
    local name, def, group
    local i, only_words = 1, false
    while i <= #argv do
        local a = argv[i]
        if only_words or a == "-" or a:sub(1, 1) ~= "-" then
            if not name then
                name = a
                if GROUPS[a] then group = a elseif commands[a] then def = commands[a] end
                current = (group or def) and a or nil
            elseif group and not def then
                def = commands[group .. " " .. a]
                if not def then
                    usage_error(format("%s has no %q (it has: %s)", group, a, concat(GROUPS[group], ", ")))
                end
                name = group .. " " .. a
                current = name
            else
                p.args[#p.args + 1] = a
            end
        elseif a == "--" then
            only_words = true
        elseif a == "--json" then
            p.json = true
        elseif a == "-h" or a == "--help" then
            p.help = true
        elseif a:sub(1, 2) == "-c" then
            local v = a:sub(3)
            if v == "" then
                i = i + 1
                v = argv[i]
                if not v then usage_error("-c needs a FILE") end
            end
            p.file = v
        elseif a:sub(1, 2) == "--" then
            local opt, v = a:match("^%-%-([^=]+)=(.*)$")
            opt = opt or a:sub(3)
            local kind = def and def.opts and def.opts[opt]
            if not kind then
                usage_error(format("%s does not take --%s", name or "weir", opt))
            end
            if kind == "flag" then
                if v then usage_error("--" .. opt .. " takes no value") end
                p.opts[opt] = true
            else
                if not v then
                    i = i + 1
                    v = argv[i]
                    if not v then usage_error("--" .. opt .. " needs a value") end
                end
                p.opts[opt] = v
            end
        else
            usage_error(format("%s does not take %s", name or "weir", a))
        end
        i = i + 1
    end
    if group and not def then
        if p.help then return { help_group = group } end
        usage_error(format("%s needs one of: %s", group, concat(GROUPS[group], ", ")))
    end
    if not def then usage_error("unknown command " .. tostring(name)) end
    p.name, p.def = name, def
    p.file_given = p.file ~= nil
    p.file = p.file or env.conf_default
    if not p.help then
        local lo, hi = unpack(def.args or { 0, 0 })
        if #p.args < lo then
            usage_error(format("%s needs more arguments: %s", name, def.usage:match("^[^\n]*")))
        end
        if #p.args > hi then usage_error(format("%s: unexpected argument %q", name, p.args[hi + 1])) end
        for opt, v in pairs(p.opts) do
            if def.opts[opt] == "number" and not v:match("^%-?%d+$") then
                usage_error(format("--%s takes a whole number, not %q", opt, v))
            end
        end
        if def.check then def.check(p) end
    end
    return p
end

local function getcwd()
    local buf = ffi.new("char[4096]")
    if C.weir_cli_getcwd(buf, 4096) == nil then return nil end
    return ffi.string(buf)
end

-- The targets of the requests: the admin listener, or (LISTENER) the first
-- public listener.
local function targets(conf, file)
    return function(listener)
        if listener then
            local l = conf.listen[1]
            local host = connect_address(l.address)
            return { host = host, port = l.port, tls = l.tls ~= nil, verify = not _M.is_loopback(host),
                     what = "weir's listener", where = "listen[1]" }
        end
        local a = conf.admin
        if not a then
            return nil, file .. " has no admin section: the commands talk to weir's admin API "
                        .. "(admin = { port = ..., token_file = ... }, see docs/admin-api.md)"
        end
        if not a.token then return nil, file .. ": admin.token_file holds no usable token" end
        local host = connect_address(a.address)
        return { host = host, port = a.port, tls = a.tls ~= nil, verify = not _M.is_loopback(host),
                 token = a.token, what = "weir's admin API", where = "admin" }
    end
end

--- Run the command ARGV names (argv without the program's name). ENV:
-- `conf_default` (the configuration without -c), `version`. Returns the
-- exit code.
-- @usage os.exit(require("weir.cli").main({ "status", "--json" }, { conf_default = "/etc/weir/weir.conf.lua" }))
function _M.main(argv, env)
    env = env or {}
    if env.version then _M.agent = "weir-cli/" .. env.version end
    current = nil
    local ok, p = pcall(parse, argv, env)
    if not ok then
        if getmetatable(p) ~= UsageError then error(p, 0) end
        complain(p.msg .. (p.command and " (weir " .. p.command .. " -h tells more)" or " (weir -h lists the commands)"))
        return EXIT_USAGE
    end
    if p.help_group then
        for _, sub in ipairs(GROUPS[p.help_group]) do say("usage: ", commands[p.help_group .. " " .. sub].usage, "\n") end
        return EXIT_OK
    end
    if p.help then
        command_help(p.name)
        return EXIT_OK
    end
    local conf, errs = require("weir.conf").load(p.file, { cwd = getcwd() })
    if not conf then
        for _, e in ipairs(errs or {}) do complain(e) end
        if not p.file_given then
            complain("(the commands read " .. p.file .. " unless -c FILE names another configuration)")
        end
        return EXIT_FAILURE
    end
    local ctx = { conf = conf, file = p.file, json = p.json, args = p.args, opts = p.opts,
                  target = targets(conf, p.file), version = env.version }
    local rok, rc = pcall(p.def.run, ctx)
    if not rok then
        if getmetatable(rc) ~= UsageError then error(rc, 0) end
        complain(rc.msg .. " (weir " .. p.name .. " -h tells more)")
        return EXIT_USAGE
    end
    out:flush()
    return rc
end

return _M
