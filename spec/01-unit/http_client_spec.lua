-- core/http_client.c, the non-blocking HTTP/1.1 client policies call
-- through weir.http.request (libcurl's multi-socket interface on a libuv
-- loop, with a keep-alive pool per loop).
--
-- The spec compiles spec/support/http_client_driver.c with the client twice
-- (plain, and with AddressSanitizer + UBSan, whose reports fail the spec,
-- leaks included), starts spec/support/http_test_server.py (plain HTTP on
-- 127.0.0.1 and [::1], HTTPS with certificates generated here; it keeps
-- connections alive and numbers them, so reuse shows), and runs every case
-- with both builds. The driver runs its calls concurrently on one loop and
-- prints one JSON line per result (see its header comment).
-- Timing is asserted only loosely: what matters is the error and the order.
local helpers = require "helpers"
local mime    = require "mime"

local fmt, concat = string.format, table.concat

local ROOT    = helpers.root
local SERVER  = ROOT .. "/spec/support/http_test_server.py"
local SOURCES = { ROOT .. "/spec/support/http_client_driver.c", ROOT .. "/core/http_client.c", ROOT .. "/core/log.c" }
local CFLAGS  = "-std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE"
local SAN     = "-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
local SAN_ENV = {
    ASAN_OPTIONS  = "detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1",
    UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1",
    LSAN_OPTIONS  = false,
}

local q = helpers.shell_quote

-- The bytes of the server's and the driver's generated bodies: byte i is i % 251.
local function pattern(n)
    local t = {}
    for i = 0, 250 do t[#t + 1] = string.char(i) end
    local base = concat(t)
    return base:rep(math.floor(n / 251) + 1):sub(1, n)
end

local function b64url(s)
    if s == "" then return "" end
    return (mime.b64(s):gsub("+", "-"):gsub("/", "_"):gsub("=", ""))
end

-- "Name: value\r\n" lines → { {name, value}, ... }; errors when malformed.
local function parse_headers(s)
    local list, pos = {}, 1
    while pos <= #s do
        local name, value, e = s:match("^([^:\r\n]+): ([^\r\n]*)\r\n()", pos)
        assert(name, fmt("malformed header lines at byte %d: %q", pos, s))
        list[#list + 1] = { name, value }
        pos = e
    end
    return list
end

-- The value of the first header named NAME (case-insensitive) in LIST.
local function header(list, name)
    for _, h in ipairs(list) do
        if h[1]:lower() == name:lower() then return h[2] end
    end
end

local function compile(out, extra)
    local cmd = fmt("cc %s %s -I%s -o %s %s $(pkg-config --cflags --libs libuv openssl libcurl)", CFLAGS, extra,
                    q(ROOT .. "/core"), q(out), concat((function()
                        local t = {}
                        for i, s in ipairs(SOURCES) do t[i] = q(s) end
                        return t
                    end)(), " "))
    local code, stdout, stderr = helpers.run({ "sh", "-c", cmd }, { timeout = 180 })
    assert(code == 0, "compiling the driver failed:\n" .. cmd .. "\n" .. stdout .. stderr)
    return out
end

local function make_cert(name, san)
    local dir = helpers.tmpdir()
    local cert, key = dir .. "/" .. name .. ".pem", dir .. "/" .. name .. ".key"
    local code, _, err = helpers.run({ "openssl", "req", "-x509", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-keyout", key, "-out", cert, "-subj", "/CN=" .. name, "-addext", "subjectAltName=" .. san })
    assert(code == 0, "openssl req failed: " .. err)
    return { cert = cert, key = key }
end

local function start_server(certs)
    local dir = helpers.tmpdir()
    local out, err = dir .. "/http-server.out", dir .. "/http-server.err"
    local argv = { "/usr/bin/python3", SERVER }
    for _, c in ipairs(certs) do
        argv[#argv + 1] = "--https"
        argv[#argv + 1] = c.cert .. ":" .. c.key
    end
    local pid = helpers.spawn(argv, { stdout = out, stderr = err })
    local info = helpers.wait_until(function()
        local s = helpers.read_file(out)
        if s and s:find("\n") then return helpers.json(s) end
        if not helpers.alive(pid) then error("the test server exited: " .. (helpers.read_file(err) or "")) end
    end, 15, "the test server to listen")
    info.pid = pid
    return info
end

describe("http client", function()
    local drivers = {}
    local srv, good, other

    setup(function()
        local dir = helpers.tmpdir()
        drivers.plain = compile(dir .. "/driver", "-O2")
        drivers.sanitized = compile(dir .. "/driver-san", SAN)
        good = make_cert("localhost", "DNS:localhost,IP:127.0.0.1")
        other = make_cert("only.localhost", "DNS:only.localhost")     -- neither "localhost" nor 127.0.0.1
        srv = start_server({ good, other })
    end)
    teardown(helpers.cleanup)

    local function http(path) return fmt("http://127.0.0.1:%d%s", srv.http, path) end
    local function https(path, host, i) return fmt("https://%s:%d%s", host or "127.0.0.1", srv.https[i or 1], path) end
    local function raw(bytes) return http("/raw?b64=" .. b64url(bytes)) end

    for _, flavour in ipairs({ "plain", "sanitized" }) do
        describe("(" .. flavour .. " build)", function()

            -- Run the driver with ARGS; returns { by = {name → line}, list = {...}, summary = {...} }.
            -- Fails on a sanitizer report, a broken contract, a handle left open or a bad exit.
            local function drive(args)
                local argv = { drivers[flavour] }
                for _, a in ipairs(args) do argv[#argv + 1] = a end
                local code, out, err = helpers.run(argv, { timeout = 60, env = flavour == "sanitized" and SAN_ENV or nil })
                assert(not (err:find("Sanitizer") or err:find("runtime error")),
                       "the sanitizers reported:\n" .. err)
                local r = { by = {}, list = {} }
                for line in out:gmatch("[^\n]+") do
                    local v = helpers.json(line)
                    if v.summary then r.summary = v
                    else
                        r.list[#r.list + 1] = v
                        if v.name then r.by[v.name] = v end
                    end
                end
                assert(r.summary, fmt("the driver did not finish (exit %s):\n%s\n%s", tostring(code), out, err))
                assert(r.summary.violations == 0, "the client broke its contract:\n" .. out)
                assert(r.summary.loop_close == 0, "a libuv handle was left open:\n" .. out)
                assert(code == 0, fmt("the driver exited with %s:\n%s", tostring(code), err))
                return r
            end

            -- Run one call; returns its result line (asserting it is a result).
            local function call(args)
                local a = { "-n", "it" }
                for _, x in ipairs(args) do a[#a + 1] = x end
                local r = drive(a)
                local res = assert(r.by.it, "no result line")
                assert(res.order, "the call did not complete")
                return res
            end

            local function ok(res)
                assert(res.error == nil, "the call failed: " .. tostring(res.error or res.start_error))
                assert.equal(200, res.status)
                res.hlist = parse_headers(res.headers)
                return res
            end

            local function echo(res)
                return helpers.json(ok(res).body)
            end

            -- Requests --------------------------------------------------------------------

            it("GET: sends Host, User-Agent and the caller's headers, nothing else of its own", function()
                local e = echo(call({ "-H", "X-Test: yes", "-H", "X-Empty:", http("/echo?x=1&y=%20") }))
                assert.equal("GET", e.method)
                assert.equal("/echo?x=1&y=%20", e.target)
                assert.equal("HTTP/1.1", e.http_version)
                local h = e.headers
                assert.equal("127.0.0.1:" .. srv.http, header(h, "Host"))
                assert.equal("weir/0.1.0", header(h, "User-Agent"))
                assert.equal("yes", header(h, "X-Test"))
                assert.equal("", header(h, "X-Empty"))
                assert.is_nil(header(h, "Content-Length"))
                -- connections are kept alive: HTTP/1.1's default, nothing to say
                assert.is_nil(header(h, "Connection"))
                -- libcurl's own additions are switched off
                assert.is_nil(header(h, "Accept"))
                assert.is_nil(header(h, "Expect"))
                assert.equal(4, #h)      -- Host, User-Agent, X-Test, X-Empty
            end)

            it("the response's header lines come back as \"Name: value\\r\\n\"", function()
                local res = ok(call({ http("/echo") }))
                assert.equal("application/json", header(res.hlist, "Content-Type"))
                assert.equal(tostring(res.body_len), header(res.hlist, "Content-Length"))
                assert.equal("weir-test", header(res.hlist, "Server"))
            end)

            it("a URL without a path asks for /, and a fragment is not sent", function()
                local r = drive({ "-n", "bare", http(""), "-n", "query", http("?a=1"), "-n", "frag", http("/echo#top") })
                assert.equal(404, r.by.bare.status)      -- the server's answer for "/"
                assert.equal(404, r.by.query.status)
                assert.equal("/echo", helpers.json(r.by.frag.body).target)
            end)

            it("POST with a body: Content-Length and the body reach the server", function()
                local e = echo(call({ "-X", "POST", "-H", "Content-Type: application/json", "-d", '{"a":1}', http("/echo") }))
                assert.equal("POST", e.method)
                assert.equal("7", header(e.headers, "Content-Length"))
                assert.equal('{"a":1}', e.body)
            end)

            it("POST and PUT without a body send Content-Length: 0", function()
                local r = drive({ "-n", "post", "-X", "POST", http("/echo"), "-n", "put", "-X", "PUT", http("/echo") })
                for _, name in ipairs({ "post", "put" }) do
                    local e = echo(r.by[name])
                    assert.equal(name:upper(), e.method)
                    assert.equal("0", header(e.headers, "Content-Length"))
                    assert.is_nil(header(e.headers, "Content-Type"))
                    assert.equal(0, e.body_len)
                end
            end)

            it("a 512 KiB request body arrives whole", function()
                local n = 512 * 1024
                local e = echo(call({ "-X", "POST", "-Z", tostring(n), http("/echo") }))
                assert.is_nil(header(e.headers, "Expect"))
                assert.is_nil(header(e.headers, "Content-Type"))
                assert.equal(n, e.body_len)
                assert.equal(helpers.sha256(pattern(n)), e.body_sha256)
            end)

            it("the caller's Host and User-Agent replace weir's", function()
                local e = echo(call({ "-H", "Host: api.example.test", "-H", "User-Agent: probe/2", http("/echo") }))
                local hosts, uas = 0, 0
                for _, h in ipairs(e.headers) do
                    if h[1]:lower() == "host" then hosts = hosts + 1 end
                    if h[1]:lower() == "user-agent" then uas = uas + 1 end
                end
                assert.equal(1, hosts)
                assert.equal(1, uas)
                assert.equal("api.example.test", header(e.headers, "Host"))
                assert.equal("probe/2", header(e.headers, "User-Agent"))
            end)

            it("a host name is resolved (localhost) and an IPv6 literal is used as is", function()
                local args = { "-n", "name", fmt("http://localhost:%d/echo", srv.http) }
                if srv.http6 then
                    args[#args + 1] = "-n"
                    args[#args + 1] = "v6"
                    args[#args + 1] = fmt("http://[::1]:%d/echo", srv.http6)
                end
                local r = drive(args)
                assert.equal("localhost:" .. srv.http, header(echo(r.by.name).headers, "Host"))
                if srv.http6 then
                    assert.equal("[::1]:" .. srv.http6, header(echo(r.by.v6).headers, "Host"))
                end
            end)

            it("bad requests are refused at once, without a callback", function()
                local cases = {
                    { "scheme", "ftp://127.0.0.1/" }, { "nohost", "http:///x" }, { "v6", "http://[::1/x" },
                    { "space", "http://127.0.0.1/a b" }, { "port", "http://127.0.0.1:99999/" },
                    { "port0", "http://127.0.0.1:0/" }, { "userinfo", "http://u:p@127.0.0.1/" },
                    { "method", "-X", "GE T", http("/echo") },
                    { "noname", "-W", ": x\r\n", http("/echo") },
                    { "nocrlf", "-W", "X-A: 1", http("/echo") },
                    { "barelf", "-W", "X-A: 1\nX-B: 2\r\n", http("/echo") },
                    { "ctl", "-W", "X-A: \1\r\n", http("/echo") },
                    { "badname", "-H", "Bad Name: x", http("/echo") },
                    { "cl", "-H", "Content-Length: 5", http("/echo") },
                    { "te", "-H", "transfer-encoding: chunked", http("/echo") },
                    { "conn", "-H", "Connection: keep-alive", http("/echo") },
                    { "cafile", "-v", "-C", helpers.tmpdir() .. "/missing.pem", https("/echo") },
                }
                local args = {}
                for _, c in ipairs(cases) do
                    args[#args + 1] = "-n"
                    for _, a in ipairs(c) do args[#args + 1] = a end
                end
                local r = drive(args)
                for _, c in ipairs(cases) do
                    local res = r.by[c[1]]
                    assert.is_string(res.start_error, c[1] .. " was not refused")
                    assert.is_true(#res.start_error > 0)
                end
                assert.equal(0, r.summary.callbacks)
                assert.equal(#cases, r.summary.start_errors)
            end)

            -- Responses ----------------------------------------------------------------------

            it("a Content-Length body of 512 KiB", function()
                local res = ok(call({ http("/bytes?size=524288") }))
                assert.equal(524288, res.body_len)
                assert.equal(header(res.hlist, "X-Body-Sha256"), res.body_sha256)
            end)

            it("a chunked body is de-chunked, extensions and trailers dropped", function()
                local res = ok(call({ http("/bytes?size=70001&mode=chunked&chunk=777") }))
                assert.equal(70001, res.body_len)
                assert.equal(header(res.hlist, "X-Body-Sha256"), res.body_sha256)
                assert.equal("chunked", header(res.hlist, "Transfer-Encoding"))
                assert.is_nil(header(res.hlist, "X-Trailer"))
            end)

            it("a body delimited by the end of the connection", function()
                local res = ok(call({ http("/bytes?size=70001&mode=close") }))
                assert.equal(70001, res.body_len)
                assert.is_nil(header(res.hlist, "Content-Length"))
                assert.equal(header(res.hlist, "X-Body-Sha256"), res.body_sha256)
            end)

            it("HEAD, 204 and 304 have no body whatever their headers say", function()
                local r = drive({ "-n", "head", "-X", "HEAD", http("/bytes?size=1000"),
                                  "-n", "s204", http("/status?code=204"), "-n", "s304", http("/status?code=304") })
                assert.equal(0, ok(r.by.head).body_len)
                assert.equal("1000", header(r.by.head.hlist, "Content-Length"))
                assert.equal(204, r.by.s204.status)
                assert.equal(0, r.by.s204.body_len)
                assert.equal(304, r.by.s304.status)
                assert.equal(0, r.by.s304.body_len)
            end)

            it("a non-200 status is a result, not an error", function()
                local res = call({ http("/status?code=503") })
                assert.is_nil(res.error)
                assert.equal(503, res.status)
                assert.equal("status 503", res.body)
            end)

            it("interim 1xx responses are skipped", function()
                local res = ok(call({ raw("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX: y\r\n\r\n"
                                          .. "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") }))
                assert.equal("ok", res.body)
                assert.equal("Content-Length: 2\r\n", res.headers)
            end)

            it("bare LF line ends, padded values and folded lines are normalised", function()
                local res = ok(call({ raw("HTTP/1.0 200 OK\nX-A:   one  \n \t two\nX-B:\nContent-Length: 2\n\nokEXTRA") }))
                assert.equal("X-A: one two\r\nX-B: \r\nContent-Length: 2\r\n", res.headers)
                assert.equal("ok", res.body)
            end)

            it("Transfer-Encoding wins over Content-Length; a body of length 0 ends at once", function()
                local r = drive({
                    "-n", "te", raw("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    .. "3\r\nabc\r\n0\r\n\r\n"),
                    "-n", "zero", raw("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
                    "-n", "same", raw("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nxyz"),
                })
                assert.equal("abc", ok(r.by.te).body)
                assert.equal("", ok(r.by.zero).body)
                assert.equal("xyz", ok(r.by.same).body)
            end)

            it("malformed responses are errors", function()
                local cases = {
                    garbage = "garbage\r\n\r\n",
                    version = "HTTP/2 200 OK\r\n\r\n",
                    status = "HTTP/1.1 20 OK\r\n\r\n",
                    space = "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
                    colon = "HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
                    cl = "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
                    cls = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                    chunk = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                    chunkcrlf = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n",
                    upgrade = "HTTP/1.1 101 Switching Protocols\r\n\r\n",
                    fold = "HTTP/1.1 200 OK\r\n folded\r\n\r\n",
                }
                local args = {}
                for name, bytes in pairs(cases) do
                    args[#args + 1] = "-n"
                    args[#args + 1] = name
                    args[#args + 1] = raw(bytes)
                end
                local r = drive(args)
                for name in pairs(cases) do
                    local res = r.by[name]
                    assert.equal(0, res.status, name)
                    assert(tostring(res.error):match("^malformed response: "), name .. ": " .. tostring(res.error))
                end
            end)

            it("a response that ends early is an error", function()
                local r = drive({
                    "-n", "empty", raw(""),
                    "-n", "head", raw("HTTP/1.1 200 OK\r\nContent-Le"),
                    "-n", "length", raw("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"),
                    "-n", "chunked", raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"),
                })
                for _, name in ipairs({ "empty", "head", "length", "chunked" }) do
                    assert.equal(0, r.by[name].status)
                    assert.equal("connection closed before the response was complete", r.by[name].error)
                end
            end)

            it("a reset connection is an error, before or after the head", function()
                local r = drive({
                    "-n", "before", http("/raw?rst=1&b64="),
                    "-n", "after", http("/raw?rst=1&b64=" .. b64url("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")),
                    "-n", "tls", https("/raw?rst=1&b64=" .. b64url("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")),
                })
                for _, name in ipairs({ "before", "after", "tls" }) do
                    assert.equal(0, r.by[name].status, name)
                    assert.equal("connection reset", r.by[name].error, name)
                end
            end)

            it("a response over max_response is refused, however its body is framed", function()
                local r = drive({
                    "-n", "length", "-m", "20000", http("/bytes?size=20000"),
                    "-n", "chunked", "-m", "20000", http("/bytes?size=20000&mode=chunked&chunk=1000"),
                    "-n", "close", "-m", "20000", http("/bytes?size=20000&mode=close"),
                    "-n", "default", http("/bytes?size=1048577"),
                    "-n", "tiny", "-m", "50", http("/bytes?size=1"),
                    "-n", "fits", "-m", "30000", http("/bytes?size=20000&mode=chunked"),
                })
                for _, name in ipairs({ "length", "chunked", "close", "default", "tiny" }) do
                    assert.equal(0, r.by[name].status, name)
                    assert.equal("response too large", r.by[name].error, name)
                end
                assert.equal(20000, ok(r.by.fits).body_len)
            end)

            it("a response head over 16 KiB is refused", function()
                local r = drive({ "-n", "big", http("/bytes?size=10&pad=16384"),
                                  "-n", "fits", http("/bytes?size=10&pad=15000") })
                assert.equal(0, r.by.big.status)
                assert.equal("response head too large", r.by.big.error)
                assert.equal(15000, #header(ok(r.by.fits).hlist, "X-Pad"))
            end)

            -- Failures ------------------------------------------------------------------------

            it("times out against a slow server, in about the time given", function()
                local r = drive({ "-n", "head", "-t", "300", http("/echo?delay=5000"),
                                  "-n", "body", "-t", "300", http("/bytes?size=10&body_delay=5000") })
                for _, name in ipairs({ "head", "body" }) do
                    assert.equal(0, r.by[name].status)
                    assert.equal("timeout", r.by[name].error)
                    assert.is_true(r.by[name].elapsed_ms >= 250, "timed out early")
                    assert.is_true(r.by[name].elapsed_ms < 3000, "timed out late")
                end
            end)

            it("connection refused", function()
                local port = helpers.free_port()
                local r = drive({ "-n", "ip", fmt("http://127.0.0.1:%d/", port),
                                  "-n", "name", fmt("http://localhost:%d/", port) })
                assert.equal(0, r.by.ip.status)
                assert.equal("connection refused", r.by.ip.error)
                assert.equal("connection refused", r.by.name.error)
            end)

            -- TLS -------------------------------------------------------------------------------

            it("https with the CA and verify=1: by name (with SNI) and by IP (without)", function()
                local r = drive({ "-n", "name", "-v", "-C", good.cert, https("/echo", "localhost"),
                                  "-n", "ip", "-v", "-C", good.cert, https("/echo") })
                local e = echo(r.by.name)
                assert.equal("localhost", e.sni)
                assert.equal("localhost:" .. srv.https[1], header(e.headers, "Host"))
                e = echo(r.by.ip)
                assert.is_nil(e.sni)
            end)

            it("https bodies: 512 KiB by length, chunked, until close", function()
                local r = drive({
                    "-n", "length", "-v", "-C", good.cert, https("/bytes?size=524288"),
                    "-n", "chunked", "-v", "-C", good.cert, https("/bytes?size=70001&mode=chunked&chunk=4000"),
                    "-n", "close", "-v", "-C", good.cert, https("/bytes?size=70001&mode=close"),
                    "-n", "post", "-v", "-C", good.cert, "-X", "POST", "-Z", "524288", https("/echo"),
                })
                for _, name in ipairs({ "length", "chunked", "close" }) do
                    local res = ok(r.by[name])
                    assert.equal(header(res.hlist, "X-Body-Sha256"), res.body_sha256, name)
                end
                assert.equal(helpers.sha256(pattern(524288)), echo(r.by.post).body_sha256)
            end)

            it("https with verify=1 and the system store refuses the self-signed certificate", function()
                local res = call({ "-v", https("/echo", "localhost") })
                assert.equal(0, res.status)
                assert.matches("^TLS: certificate verify failed", res.error)
            end)

            it("https with verify=1 refuses a certificate for another name or IP", function()
                local r = drive({ "-n", "name", "-v", "-C", other.cert, https("/echo", "localhost", 2),
                                  "-n", "ip", "-v", "-C", other.cert, https("/echo", "127.0.0.1", 2) })
                assert.matches("^TLS: certificate verify failed: [Hh]ostname mismatch", r.by.name.error)
                assert.matches("^TLS: certificate verify failed: IP address mismatch", r.by.ip.error)
            end)

            it("https with verify=0 accepts any certificate", function()
                local r = drive({ "-n", "a", https("/echo", "localhost"), "-n", "b", https("/echo", "127.0.0.1", 2) })
                echo(r.by.a)
                echo(r.by.b)
            end)

            it("https against a plain HTTP port fails with a TLS error", function()
                local res = call({ "-t", "3000", fmt("https://127.0.0.1:%d/echo", srv.http) })
                assert.equal(0, res.status)
                assert.matches("^TLS: ", res.error)
            end)

            -- The keep-alive pool ------------------------------------------------------------------

            -- Args for N calls to URL(i), each started from the previous one's callback,
            -- named NAME.1 ... NAME.N; EXTRA (a list) goes before every URL.
            local function chain(name, n, url, extra)
                local args = {}
                for i = 1, n do
                    args[#args + 1] = "-n"
                    args[#args + 1] = name .. "." .. i
                    if i > 1 then
                        args[#args + 1] = "-a"
                        args[#args + 1] = name .. "." .. (i - 1)
                    end
                    for _, x in ipairs(extra or {}) do args[#args + 1] = x end
                    args[#args + 1] = url(i)
                end
                return args
            end

            -- The echo records of NAME.1 ... NAME.N, after checking each came back in order.
            local function echoes(r, name, n)
                local list = {}
                for i = 1, n do
                    local e = echo(r.by[name .. "." .. i])
                    assert.equal(i, r.by[name .. "." .. i].order)
                    assert.matches("n=" .. i .. "$", e.target)
                    list[i] = e
                end
                return list
            end

            it("sequential calls to one host reuse one connection", function()
                local n = 6
                local r = drive(chain("seq", n, function(i) return http("/echo?n=" .. i) end))
                local list = echoes(r, "seq", n)
                -- connections the server accepted while the calls ran: the first call's one
                local opened = list[n].accepted - list[1].accepted + 1
                assert.equal(1, opened)
                assert.is_true(opened < n)
                for i = 1, n do
                    assert.equal(list[1].conn, list[i].conn)
                    assert.equal(i, list[i].conn_request)
                end
            end)

            it("sequential https calls reuse one verified connection (one TLS handshake)", function()
                local n = 5
                local r = drive(chain("tls", n, function(i) return https("/echo?n=" .. i, "localhost") end,
                                      { "-v", "-C", good.cert }))
                local list = echoes(r, "tls", n)
                assert.equal(1, list[n].accepted - list[1].accepted + 1)
                for i = 1, n do
                    assert.equal(list[1].conn, list[i].conn)
                    assert.equal(i, list[i].conn_request)
                    assert.equal("localhost", list[i].sni)
                end
            end)

            it("a connection made without verification is never reused for a verified call", function()
                -- the second listener's certificate names only.localhost: verify=1 must refuse it
                local r = drive({
                    "-n", "unverified", https("/echo?n=1", "localhost", 2),
                    "-n", "verified", "-a", "unverified", "-v", "-C", other.cert, https("/echo?n=2", "localhost", 2),
                    "-n", "again", "-a", "verified", https("/echo?n=3", "localhost", 2),
                })
                local first = echo(r.by.unverified)
                assert.matches("^TLS: certificate verify failed: [Hh]ostname mismatch", r.by.verified.error)
                -- the unverified connection stayed in the pool for unverified calls
                local again = echo(r.by.again)
                assert.equal(first.conn, again.conn)
                assert.equal(2, again.conn_request)
            end)

            it("a connection left in the middle of a response is closed, never reused", function()
                -- the second call times out while the server sleeps on the pooled connection:
                -- reusing it would hand the third call the second one's late answer
                local r = drive({
                    "-n", "first", http("/echo?n=1"),
                    "-n", "slow", "-a", "first", "-t", "300", http("/echo?n=2&delay=1500"),
                    "-n", "third", "-a", "slow", http("/echo?n=3"),
                })
                local first = echo(r.by.first)
                assert.equal("timeout", r.by.slow.error)
                local third = echo(r.by.third)
                assert.equal("/echo?n=3", third.target)
                assert.are_not.equal(first.conn, third.conn)
                assert.equal(1, third.conn_request)
            end)

            it("a connection the server closed, saying so or not, is replaced", function()
                local r = drive({
                    "-n", "said", http("/echo?n=1&close=1"),
                    "-n", "after_said", "-a", "said", http("/echo?n=2"),
                    "-n", "quiet", "-a", "after_said", http("/echo?n=3&hangup=1"),
                    "-n", "after_quiet", "-a", "quiet", http("/echo?n=4"),
                    "-n", "reused", "-a", "after_quiet", http("/echo?n=5"),
                })
                local said, after_said = echo(r.by.said), echo(r.by.after_said)
                local quiet, after_quiet = echo(r.by.quiet), echo(r.by.after_quiet)
                assert.equal("close", header(ok(r.by.said).hlist, "Connection"))
                assert.are_not.equal(said.conn, after_said.conn)
                assert.equal(after_said.conn, quiet.conn)
                assert.are_not.equal(quiet.conn, after_quiet.conn)
                assert.equal(after_quiet.conn, echo(r.by.reused).conn)
            end)

            -- The loop ------------------------------------------------------------------------------

            it("a slow call and a fast call started together complete fast first", function()
                local r = drive({ "-n", "slow", http("/echo?delay=1500"), "-n", "fast", http("/echo"),
                                  "-n", "slowtls", https("/echo?delay=1500"), "-n", "fasttls", https("/echo") })
                ok(r.by.slow)
                ok(r.by.fast)
                assert.is_true(r.by.fast.order < r.by.slow.order)
                assert.is_true(r.by.fasttls.order < r.by.slowtls.order)
                assert.is_true(r.by.fast.order <= 2 and r.by.fasttls.order <= 2)
            end)

            it("twenty calls run at once", function()
                local r = drive({ "-n", "many", "-R", "20", http("/echo?delay=500") })
                local slowest = 0
                for i = 1, 20 do
                    ok(r.by["many." .. i])
                    slowest = math.max(slowest, r.by["many." .. i].elapsed_ms)
                end
                assert.is_true(slowest < 5000, "the calls did not overlap")
            end)

            it("a cancelled call never calls back, at any stage", function()
                local r = drive({
                    "-n", "dns", "-c", "0", fmt("http://localhost:%d/echo", srv.http),
                    "-n", "connect", "-c", "0", http("/echo"),
                    "-n", "tls", "-c", "0", https("/echo"),
                    "-n", "waiting", "-c", "100", http("/echo?delay=2000"),
                    "-n", "waiting_tls", "-c", "100", https("/echo?delay=2000"),
                    "-n", "mid_body", "-c", "100", http("/bytes?size=10&body_delay=2000"),
                    "-n", "refused", "-c", "0", fmt("http://127.0.0.1:%d/", helpers.free_port()),
                    "-n", "bystander", http("/echo"),
                })
                for _, name in ipairs({ "dns", "connect", "tls", "waiting", "waiting_tls", "mid_body", "refused" }) do
                    assert.is_true(r.by[name].cancelled, name)
                    assert.is_nil(r.by[name].order, name .. " called back")
                end
                ok(r.by.bystander)
                assert.equal(1, r.summary.callbacks)
                assert.equal(7, r.summary.cancelled)
            end)

            it("a callback may start a new call and cancel another", function()
                local r = drive({
                    "-n", "first", "-x", "victim", http("/echo"),
                    "-n", "second", "-a", "first", "-x", "nobody", http("/echo?n=2"),
                    "-n", "third", "-a", "second", https("/echo"),
                    "-n", "victim", http("/echo?delay=3000"),
                })
                assert.equal(1, r.by.first.order)
                assert.equal(2, r.by.second.order)
                assert.equal(3, r.by.third.order)
                ok(r.by.second)
                ok(r.by.third)
                assert.is_true(r.by.victim.cancelled)
                assert.is_nil(r.by.victim.order)
                assert.equal(3, r.summary.callbacks)
            end)

            it("cancelling a call from its own callback is ignored", function()
                local r = drive({ "-n", "self", "-s", http("/echo"), "-n", "selffail", "-s", raw("junk\r\n\r\n") })
                ok(r.by.self)
                assert.matches("^malformed", r.by.selffail.error)
                assert.equal(2, r.summary.callbacks)
            end)
        end)
    end
end)
