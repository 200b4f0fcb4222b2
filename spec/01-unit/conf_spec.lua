-- The configuration subsystem: lua/weir/conf.lua (validation and
-- normalisation), lua/weir/srcmap.lua (field lines), and, through
-- `weir -t -c FILE`, core/conf.c (DNS, certificates, keys).
--
-- Configurations are written into a fresh temporary directory per test;
-- the complete example lives in spec/fixtures/conf/full.conf.lua.

local conf   = require "weir.conf"
local srcmap = require "weir.srcmap"

-- The project root, absolute (busted names this file relative to the cwd).
local ROOT = (function()
    local src = debug.getinfo(1, "S").source:sub(2)
    if src:sub(1, 1) ~= "/" then src = assert(os.getenv("PWD")) .. "/" .. src end
    src = src:gsub("/%./", "/")
    return assert(src:match("^(.*)/spec/01%-unit/[^/]+$"))
end)()
local FIXTURE = ROOT .. "/spec/fixtures/conf/full.conf.lua"
local BIN     = os.getenv("WEIR_BIN") or "/work/main/build/weir"

local function sh_quote(s)
    return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function read(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

local function write(path, text)
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
    return path
end

local function make_tmpdir()
    local name = os.tmpname()
    os.remove(name)
    assert(os.execute("mkdir -p " .. sh_quote(name)) == 0)
    return name
end

-- A small valid configuration, as lines, for tests to edit.
local MINIMAL = [[
return {
  listen = { { port = 8080 } },
  apis = {
    { name = "echo", context = "/echo",
      versions = { { version = "1.0", endpoints = { production = "ws://127.0.0.1:9000" } } } },
  },
}
]]

-- MINIMAL with the first occurrence of OLD (plain text) replaced by NEW.
local function edit(old, new)
    local i, j = MINIMAL:find(old, 1, true)
    assert(i, "MINIMAL has no " .. old)
    return MINIMAL:sub(1, i - 1) .. new .. MINIMAL:sub(j + 1)
end

describe("weir.conf", function()
    local dir

    before_each(function() dir = make_tmpdir() end)
    after_each(function() os.execute("rm -rf " .. sh_quote(dir)) end)

    -- Write SRC as DIR/weir.conf.lua and load it.
    local function load(src, opts)
        local file = write(dir .. "/weir.conf.lua", src)
        local c, errs = conf.load(file, opts)
        return c, errs, file
    end

    -- Load SRC, which must fail, and return its error lines and file name.
    local function errors_of(src, opts)
        local c, errs, file = load(src, opts)
        assert.is_nil(c)
        assert.is_table(errs)
        return errs, file
    end

    -- Assert that ERRS contains exactly the line "FILE:LINE: REST".
    local function assert_error(errs, file, line, rest)
        local want = ("%s:%d: %s"):format(file, line, rest)
        for _, e in ipairs(errs) do
            if e == want then return end
        end
        error(("expected the error line\n  %s\ngot\n  %s"):format(want, table.concat(errs, "\n  ")), 2)
    end

    describe("a valid configuration", function()
        it("normalises sizes to bytes, durations to milliseconds and paths to absolute ones", function()
            local c, errs = conf.load(FIXTURE, { cpus = 8 })
            assert.is_nil(errs)
            local fixdir = ROOT .. "/spec/fixtures/conf"
            assert.equal(2, c.workers)
            assert.equal(fixdir .. "/run/weir.pid", c.pid_file)
            assert.same({ file = "/var/log/weir/weir.log", level = "debug" }, c.log)
            assert.same({
                max_connections   = 5000,
                max_message_size  = 4 * 1024 * 1024,
                buffer_size       = 64 * 1024,
                max_header_size   = 8192,
                handshake_timeout = 2500,
                idle_timeout      = 0,
                ping_interval     = 60000,
                ping_timeout      = 7500,
                close_timeout     = 2000,
                send_timeout      = 60000,
                drain_timeout     = 3600000,
                drain_rate        = 0,
                policy_budget     = 100,
            }, c.limits)
            assert.equal(fixdir .. "/tls/server.pem", c.listen[2].tls.cert)
            assert.equal(fixdir .. "/tls/server.key", c.listen[2].tls.key)
            local prod = c.apis[1].versions[2].endpoints.production
            assert.equal(ROOT .. "/spec/fixtures/ca/backend-ca.pem", prod.ca)
            assert.equal(fixdir .. "/full.conf.lua", c.file)
        end)

        it("fills every default when only listen and apis are given", function()
            local c = assert(load(MINIMAL))
            assert.equal("auto", c.workers)
            assert.is_nil(c.pid_file)
            assert.same({ level = "info" }, c.log)
            assert.same({
                max_connections = 10000, max_message_size = 1048576, buffer_size = 262144,
                max_header_size = 16384, handshake_timeout = 10000, idle_timeout = 300000,
                ping_interval = 30000, ping_timeout = 10000, close_timeout = 5000,
                send_timeout = 60000, drain_timeout = 30000, drain_rate = 0, policy_budget = 100,
            }, c.limits)
            assert.equal("0.0.0.0", c.listen[1].address)
            assert.is_nil(c.listen[1].tls)
        end)

        it("turns workers = \"auto\" into the CPU count it is given", function()
            local c = assert(load(MINIMAL, { cpus = 6 }))
            assert.equal(6, c.workers)
        end)

        it("splits a URL string endpoint into host, port, path, query and Host header", function()
            local c = assert(conf.load(FIXTURE))
            local v1 = c.apis[1].versions[1].endpoints
            assert.same({ url = "ws://127.0.0.1:9000", scheme = "ws", tls = false,
                          host = "127.0.0.1", port = 9000, path = "/",
                          host_header = "127.0.0.1:9000", verify = true },
                        (function(e) e._src = nil return e end)(v1.production))
            assert.equal("/sandbox", v1.sandbox.path)
            assert.equal("tenant=test", v1.sandbox.query)
        end)

        it("fills default ports and brackets IPv6 hosts in the Host header", function()
            local c = assert(conf.load(FIXTURE))
            local e = c.apis[2].versions[1].endpoints.production
            assert.equal("::1", e.host)
            assert.equal(443, e.port)
            assert.equal("[::1]", e.host_header)
            assert.is_true(e.tls)
            local u = conf.parse_url("ws://h:8080")
            assert.equal("h:8080", u.host_header)
            assert.equal(80, conf.parse_url("ws://h").port)
            assert.equal("h", conf.parse_url("ws://h:80/x").host_header)
        end)

        it("keeps a table endpoint's TLS options", function()
            local c = assert(conf.load(FIXTURE))
            local e = c.apis[1].versions[2].endpoints.production
            assert.equal("localhost", e.host)
            assert.equal(9443, e.port)
            assert.equal("/ws", e.path)
            assert.is_true(e.verify)
            assert.equal("echo.internal", e.server_name)
        end)

        it("does not make a lone version the default implicitly", function()
            local c = assert(load(MINIMAL))
            assert.is_false(c.apis[1].versions[1].default)
        end)

        it("tells the C side where each endpoint, certificate and key was written", function()
            local c = assert(conf.load(FIXTURE))
            local prod = c.apis[1].versions[1].endpoints.production
            assert.same({ line = 40, field = "apis[1].versions[1].endpoints.production" }, prod._src.url)
            local tls = c.apis[1].versions[2].endpoints.production
            assert.same({ line = 48, field = "apis[1].versions[2].endpoints.production.url" }, tls._src.url)
            assert.same({ line = 49, field = "apis[1].versions[2].endpoints.production.ca" }, tls._src.ca)
            assert.same({ line = 15, field = "listen[2].tls.cert" }, c.listen[2].tls._src.cert)
            assert.same({ line = 15, field = "listen[2].tls.key" }, c.listen[2].tls._src.key)
        end)

        it("lets the file compute values with locals, loops and string methods", function()
            local c = assert(load([[
local apis = {}
for i = 1, 3 do
  apis[#apis + 1] = { name = ("api%d"):format(i), context = "/api" .. i,
    versions = { { version = "1", endpoints = { production = "ws://127.0.0.1:" .. 9000 + i } } } }
end
return { listen = { { port = 8080 } }, apis = apis }
]]))
            assert.equal(3, #c.apis)
            assert.equal(9003, c.apis[3].versions[1].endpoints.production.port)
        end)

        it("accepts the complete example in docs/configuration.md", function()
            local doc = read(ROOT .. "/docs/configuration.md")
            local example = doc:match("<!%-%- complete example %-%->%s*```lua\n(.-)```")
            assert.is_string(example)
            local c, errs = load(example)
            assert.is_nil(errs)
            assert.is_table(c)
        end)
    end)

    describe("reports", function()
        it("an unknown field with its line and the field it probably meant", function()
            local errs, file = errors_of([[
return {
  listen = { { port = 8080 } },
  limits = {
    max_conections = 10,
  },
  apis = {
    { name = "echo", context = "/echo",
      versions = { { version = "1.0", endpoints = { production = "ws://127.0.0.1:9000" } } } },
  },
}
]])
            assert.same({ file .. ":4: limits.max_conections: unknown field (did you mean max_connections?)" }, errs)
        end)

        it("an unknown policy, with the entry that names it", function()
            local errs, file = errors_of(edit("return {\n", "return {\n  policies = { { \"no-such-policy\", {} } },\n"))
            assert.equal(1, #errs)
            assert.truthy(errs[1]:find(file .. ":2: policies[1][1]: unknown policy \"no-such-policy\"", 1, true), errs[1])
        end)

        it("a policy file whose chunk never ends (even catching errors), at the entry and the file's line", function()
            for _, body in ipairs({ "while true do end",
                                    "while true do pcall(function() while true do end end) end" }) do
                write(dir .. "/spin-load.lua", "local x = 0\n" .. body
                      .. "\nreturn { name = \"spin-load\", priority = 1, on_handshake = function() end }\n")
                local errs, file = errors_of(edit("return {\n", "return {\n  policy_paths = { \"" .. dir
                                                  .. "\" },\n  policies = { { \"spin-load\", {} } },\n"))
                assert.equal(1, #errs)
                assert.truthy(errs[1]:find(file .. ":3: policies[1][1]: " .. dir .. "/spin-load.lua:2: it runs for too long",
                                           1, true), errs[1])
                assert.truthy(jit.status(), "the JIT is on again")
            end
        end)

        it("a value of the wrong type", function()
            local errs, file = errors_of([[
return {
  workers = "4",
  listen = { { port = "8080" } },
  apis = {
    { name = "echo", context = "/echo",
      versions = { { version = 1.0, endpoints = { production = "ws://127.0.0.1:9000" } } } },
  },
}
]])
            assert_error(errs, file, 2, 'workers: expected an integer or "auto", got "4"')
            assert_error(errs, file, 3, 'listen[1].port: expected an integer, got "8080"')
            assert_error(errs, file, 6, "apis[1].versions[1].version: expected a string, got 1 (a number: write it in quotes)")
        end)

        it("metrics.usage_stream that is not a string, empty, or without state.redis", function()
            local errs, file = errors_of(edit("return {\n", "return {\n  metrics = { usage_stream = 5 },\n"))
            assert.same({ file .. ":2: metrics.usage_stream: expected a string, got 5 (a number: write it in quotes)" }, errs)
            errs, file = errors_of(edit("return {\n", 'return {\n  metrics = { usage_stream = "" },\n'))
            assert.equal(1, #errs)
            assert.truthy(errs[1]:find(file .. ":2: metrics.usage_stream: ", 1, true), errs[1])
            errs, file = errors_of(edit("return {\n", 'return {\n  metrics = {\n    usage_stream = "weir:events" },\n'))
            assert.same({ file .. ":3: metrics.usage_stream: needs state.redis (the Redis the stream is in)" }, errs)
            local c = assert(load(edit("return {\n", 'return {\n  metrics = { usage_stream = "weir:events" },\n'
                                                    .. '  state = { redis = "redis://127.0.0.1:6379" },\n')))
            assert.equal("weir:events", c.metrics.usage_stream)
            assert.is_nil(assert(load(MINIMAL)).metrics.usage_stream)
        end)

        it("a URL that is not ws:// or wss://", function()
            local errs, file = errors_of(edit("ws://127.0.0.1:9000", "http://x"))
            assert.same({ file .. ':5: apis[1].versions[1].endpoints.production: expected a ws:// or wss:// URL, got "http://x"' }, errs)
        end)

        it("a URL with a fragment, user information or a bad port", function()
            for url, msg in pairs({
                ["ws://h/p#frag"] = 'a backend URL must not have a fragment (#...), got "ws://h/p#frag"',
                ["ws://u:p@h/"]   = 'a backend URL must not contain user information (user@), got "ws://u:p@h/"',
                ["ws://h:99999"]  = 'invalid port in URL "ws://h:99999" (expected 1..65535)',
                ["ws://[::1/"]    = 'invalid IPv6 address in URL "ws://[::1/"',
                ["ws://a b/"]     = 'a URL must not contain spaces or control characters, got "ws://a b/"',
            }) do
                local errs, file = errors_of(edit("ws://127.0.0.1:9000", url))
                assert.same({ file .. ":5: apis[1].versions[1].endpoints.production: " .. msg }, errs)
            end
        end)

        it("TLS options on a ws:// endpoint", function()
            local errs, file = errors_of([[
return {
  listen = { { port = 8080 } },
  apis = {
    { name = "echo", context = "/echo",
      versions = { { version = "1.0", endpoints = { production = {
        url = "ws://127.0.0.1:9000",
        ca = "ca.pem" } } } } },
  },
}
]])
            assert.same({ file .. ':7: apis[1].versions[1].endpoints.production.ca: applies only to wss:// endpoints, and "ws://127.0.0.1:9000" is ws://' }, errs)
        end)

        it("a duplicate API name and a duplicate context", function()
            local errs, file = errors_of([[
return {
  listen = { { port = 8080 } },
  apis = {
    { name = "echo", context = "/echo",
      versions = { { version = "1", endpoints = { production = "ws://127.0.0.1:9000" } } } },
    { name = "echo",
      context = "/echo",
      versions = { { version = "1", endpoints = { production = "ws://127.0.0.1:9000" } } } },
  },
}
]])
            assert.same({
                file .. ':6: apis[2].name: duplicate API name "echo" (already used by apis[1])',
                file .. ':7: apis[2].context: duplicate context "/echo" (already used by apis[1])',
            }, errs)
        end)

        it("two default versions of one API", function()
            local errs, file = errors_of([[
return {
  listen = { { port = 8080 } },
  apis = {
    { name = "echo", context = "/echo",
      versions = {
        { version = "1", default = true, endpoints = { production = "ws://127.0.0.1:9000" } },
        { version = "2", default = true, endpoints = { production = "ws://127.0.0.1:9000" } },
      } },
  },
}
]])
            assert.same({ file .. ":7: apis[1].versions[2].default: only one version may be the default (apis[1].versions[1] already is)" }, errs)
        end)

        it("a duplicate version of one API", function()
            local errs, file = errors_of(edit('{ version = "1.0", endpoints = { production = "ws://127.0.0.1:9000" } }',
                '{ version = "1.0", endpoints = { production = "ws://127.0.0.1:9000" } },\n'
                .. '      { version = "1.0", endpoints = { production = "ws://127.0.0.1:9001" } }'))
            assert.same({ file .. ':6: apis[1].versions[2].version: duplicate version "1.0" (already used by apis[1].versions[1])' }, errs)
        end)

        it("a bad size string", function()
            local errs, file = errors_of(edit("return {\n", 'return {\n  limits = { buffer_size = "12q" },\n'))
            assert.same({ file .. ':2: limits.buffer_size: expected a size like "512", "16k", "1m" or "1g", got "12q"' }, errs)
        end)

        it("a bad duration string", function()
            local errs, file = errors_of(edit("return {\n", 'return {\n  limits = { idle_timeout = "5 minutes" },\n'))
            assert.same({ file .. ':2: limits.idle_timeout: expected a duration like 10, "500ms", "10s", "5m" or "1h", got "5 minutes"' }, errs)
        end)

        it("a value out of its range", function()
            local errs, file = errors_of(edit("return {\n",
                'return {\n  limits = { buffer_size = 1024,\n    max_header_size = "2m", ping_timeout = 0 },\n'))
            assert.same({
                file .. ":2: limits.buffer_size: must be between 4k and 1g, got 1024",
                file .. ':3: limits.max_header_size: must be between 1k and 1m, got "2m"',
                file .. ":3: limits.ping_timeout: must be greater than 0, got 0",
            }, errs)
        end)

        it("a missing required field at the line of the table that lacks it", function()
            local errs, file = errors_of([[
return {
  listen = { { port = 8080 } },
  apis = {
    { name = "echo", context = "/echo",
      versions = { { version = "1.0",
                     endpoints = { sandbox = "ws://127.0.0.1:9000" } } } },
  },
}
]])
            assert.same({ file .. ":6: apis[1].versions[1].endpoints.production: required field missing" }, errs)
        end)

        it("missing listen and apis at the line of the returned table", function()
            local errs, file = errors_of("-- empty\nreturn {\n}\n")
            assert.same({ file .. ":2: listen: required field missing",
                          file .. ":2: apis: required field missing" }, errs)
        end)

        it("a listener given twice and a TLS listener without a key", function()
            local errs, file = errors_of(edit("{ { port = 8080 } }", [[{
    { address = "::1", port = 8080 },
    { address = "0:0::1", port = 8080, tls = { cert = "c.pem" } },
  }]]))
            assert.same({
                file .. ":4: listen[2].tls.key: required field missing",
                file .. ":4: listen[2]: [0:0::1]:8080 is already listened on by listen[1]",
            }, errs)
        end)

        it("a host name as a listen address", function()
            local errs, file = errors_of(edit("{ port = 8080 }", '{ address = "localhost", port = 8080 }'))
            assert.same({ file .. ':2: listen[1].address: expected an IPv4 or IPv6 address (host names are not resolved here), got "localhost"' }, errs)
        end)

        it("bad contexts: trailing slash, reserved /healthz, no leading slash", function()
            for ctxpath, msg in pairs({
                ["/echo/"]   = 'must not end with "/", got "/echo/"',
                ["/healthz"] = '"/healthz" is reserved for weir\'s health check',
                ["echo"]     = 'must start with "/", got "echo"',
                ["/e?x"]     = 'must not contain "?", got "/e?x"',
            }) do
                local errs, file = errors_of(edit('context = "/echo"', 'context = "' .. ctxpath .. '"'))
                assert.same({ file .. ":4: apis[1].context: " .. msg }, errs)
            end
        end)

        it("a field written twice in one table", function()
            local errs, file = errors_of(edit("{ port = 8080 }", "{ port = 8080,\n    port = 8081 }"))
            assert.same({ file .. ":3: listen[1].port: set twice in the same table (first on line 2)" }, errs)
        end)

        it("every error at once, sorted by line", function()
            local errs, file = errors_of([[
return {
  workers = 0,
  listen = { { port = 0 } },
  limits = { max_message_size = 0 },
  apis = {
    { name = "", context = "/echo",
      versions = { { version = "1/0", endpoints = { production = "ws://127.0.0.1:9000" } } } },
  },
}
]])
            assert.same({
                file .. ":2: workers: must be between 1 and 1024, got 0",
                file .. ":3: listen[1].port: must be between 1 and 65535, got 0",
                file .. ":4: limits.max_message_size: must be at least 1, got 0",
                file .. ":6: apis[1].name: must not be empty",
                file .. ':7: apis[1].versions[1].version: must not contain "/", got "1/0"',
            }, errs)
        end)

        it("a syntax error at its line", function()
            local errs, file = errors_of("return {\n  listen = { { port = 8080 } }\n  apis = {},\n}\n")
            assert.equal(1, #errs)
            assert.matches("^" .. file:gsub("%p", "%%%0") .. ":3: '}' expected %(to close '{' at line 1%) near 'apis'$", errs[1])
        end)

        it("a runtime error in the chunk at its line", function()
            local errs, file = errors_of("local t = {}\n\nlocal x = t.a.b\nreturn {}\n")
            assert.same({ file .. ":3: attempt to index field 'a' (a nil value)" }, errs)
        end)

        it("a name that is not defined (there are no globals: no os, no io)", function()
            local errs, file = errors_of('return {\n  workers = auto,\n  pid_file = os.getenv("HOME"),\n}\n')
            assert.same({ file .. ":2: undefined variable 'auto' (the configuration has no globals; if a string was meant, write \"auto\")" }, errs)
            errs, file = errors_of('local home = os.getenv("HOME")\nreturn {}\n')
            assert.same({ file .. ":1: undefined variable 'os' (the configuration has no globals; if a string was meant, write \"os\")" }, errs)
            errs, file = errors_of('\nerror("no backend")\n')
            assert.same({ file .. ":2: undefined variable 'error' (the configuration has no globals; if a string was meant, write \"error\")" }, errs)
        end)

        it("a chunk that does not return a table", function()
            local errs, file = errors_of("local x = 1\nreturn x\n")
            assert.same({ file .. ":2: the configuration must return a table, got 1" }, errs)
        end)

        it("a chunk that never ends", function()
            local errs, file = errors_of("local n = 0\nwhile true do\n  n = n + 1\nend\n")
            assert.equal(1, #errs)
            assert.matches("^" .. file:gsub("%p", "%%%0") .. ":[234]: the configuration runs for too long", errs[1])
        end)

        it("a file that cannot be opened", function()
            local c, errs = conf.load(dir .. "/missing.lua")
            assert.is_nil(c)
            assert.same({ dir .. "/missing.lua: cannot open the configuration: No such file or directory" }, errs)
        end)
    end)

    describe("value syntax", function()
        it("reads sizes as bytes, binary multiples, any case", function()
            for input, bytes in pairs({ [512] = 512, ["512"] = 512, ["16k"] = 16384, ["16K"] = 16384,
                                        ["16kb"] = 16384, ["1m"] = 1048576, ["1MB"] = 1048576,
                                        ["1g"] = 1073741824, ["2Gb"] = 2147483648 }) do
                assert.equal(bytes, conf.parse_size(input), "size " .. tostring(input))
            end
            for _, bad in ipairs({ "1.5m", "-1", "1t", "k", "", 1.5, -1, true }) do
                assert.is_nil(conf.parse_size(bad), "size " .. tostring(bad))
            end
        end)

        it("reads durations as milliseconds, plain numbers as seconds", function()
            for input, ms in pairs({ [10] = 10000, [0.5] = 500, [0] = 0, ["500ms"] = 500,
                                     ["10s"] = 10000, ["1.5s"] = 1500, ["5m"] = 300000,
                                     ["1h"] = 3600000, ["30"] = 30000 }) do
                assert.equal(ms, conf.parse_duration(input), "duration " .. tostring(input))
            end
            for _, bad in ipairs({ "10 s", "1d", "-5s", "s", 0.0001, -1, {} }) do
                assert.is_nil(conf.parse_duration(bad), "duration " .. tostring(bad))
            end
        end)

        it("accepts IPv4, IPv6 and names as URL hosts, and nothing else", function()
            assert.equal("10.0.0.1", conf.parse_url("ws://10.0.0.1/").host)
            assert.equal("fe80::1:2", conf.parse_url("wss://[fe80::1:2]:8443").host)
            assert.equal("backend_1.svc.local", conf.parse_url("ws://backend_1.svc.local").host)
            assert.equal("q=1&r=2", conf.parse_url("WS://h/p?q=1&r=2").query)
            assert.is_nil(conf.parse_url("ws://h/p?").query)
            for _, bad in ipairs({ "ws://", "ws://:80", "ws://256.1.1.1", "ws://a..b", "ws://-a",
                                   "ws://[1:2:3]", "ws://h:", "wss//h", "tcp://h" }) do
                assert.is_nil(conf.parse_url(bad), bad)
            end
        end)

        it("reads Redis URLs: host, port, database, user and password (escaped), nothing else", function()
            assert.same({ host = "127.0.0.1", port = 6379, db = 0, name = "127.0.0.1:6379" },
                        conf.parse_redis_url("redis://127.0.0.1"))
            assert.same({ host = "10.0.0.5", port = 6380, db = 2, password = "s3:c@ret", name = "10.0.0.5:6380" },
                        conf.parse_redis_url("redis://:s3%3Ac%40ret@10.0.0.5:6380/2"))
            assert.same({ host = "::1", port = 7000, db = 0, user = "weir", password = "pw", name = "[::1]:7000" },
                        conf.parse_redis_url("REDIS://weir:pw@[::1]:7000/"))
            for bad, shown in pairs({
                ["redis://secret@h"] = '"redis://***@h"',
                ["redis://u:secret@h:0"] = '"redis://u:***@h:0"',
                ["redis://:secret@"] = '"redis://:***@"',
                ["redis://:@h"] = '"redis://:***@h"',
                ["redis://:sec%zz@h"] = '"redis://:***@h"',
                ["redis://h?db=1"] = '"redis://h?db=1"',
                ["redis://h/-1"] = '"redis://h/-1"',
                ["redis://[1:2]:6379"] = '"redis://[1:2]:6379"',
                ["tcp://h"] = '"tcp://h"',
            }) do
                local u, err = conf.parse_redis_url(bad)
                assert.is_nil(u, bad)
                assert.truthy(err:find(shown, 1, true), bad .. ": " .. err)
                assert.falsy(err:find("secret", 1, true), err)
            end
        end)

        it("defaults state to no Redis, 500 ms, 100 ms and the weir: prefix", function()
            local c = assert(load(MINIMAL))
            assert.same({ timeout = 500, sync_interval = 100, key_prefix = "weir:", _src = {} }, c.state)
        end)

        it("resolves relative paths against the configuration's directory", function()
            assert.equal("/etc/weir/tls/c.pem", conf.resolve_path("/etc/weir", "tls/c.pem"))
            assert.equal("/etc/ca.pem", conf.resolve_path("/etc/weir", "../ca.pem"))
            assert.equal("/srv/c.pem", conf.resolve_path("/etc/weir", "/srv/./c.pem"))
        end)

        it("resolves a relative configuration file against the cwd it is given", function()
            write(dir .. "/weir.conf.lua", edit("return {\n", 'return {\n  pid_file = "weir.pid",\n'))
            local c = assert(conf.parse(read(dir .. "/weir.conf.lua"), "weir.conf.lua", { cwd = dir }))
            assert.equal(dir .. "/weir.conf.lua", c.file)
            assert.equal(dir .. "/weir.pid", c.pid_file)
        end)
    end)

    describe("the source map", function()
        it("finds lines past comments, long strings and bracketed keys", function()
            local map = srcmap.scan([==[
--[[ a long
comment ]] local s = [[
two lines]]
return {
  ["pid_file"] = "x", -- { not a brace
  listen = {
    { port = 1 },

    { port = '}' },
  },
}
]==])
            assert.equal(4, map.lines[""])
            assert.equal(5, map.lines.pid_file)
            assert.equal(7, map.lines["listen[1]"])
            assert.equal(9, map.lines["listen[2].port"])
        end)

        it("follows `local t = { ... } return t`", function()
            local map = srcmap.scan("local conf = {\n  workers = 2,\n}\nreturn conf\n")
            assert.equal(2, map.lines.workers)
        end)

        it("skips over function bodies inside tables", function()
            local map = srcmap.scan("return {\n  f = function(a, b) local x, y = 1, 2 if a then return { z = 1 } end end,\n  g = 3,\n}\n")
            assert.equal(3, map.lines.g)
            assert.is_nil(map.lines["f.z"])
        end)
    end)

    describe("docs/configuration.md", function()
        it("documents every field of the schema", function()
            local doc = read(ROOT .. "/docs/configuration.md")
            for _, f in ipairs(conf.describe()) do
                assert.truthy(doc:find("`" .. f.path .. "`", 1, true), f.path .. " is not documented")
            end
        end)
    end)
end)

describe("weir -t -c FILE", function()
    local have_bin = os.execute("test -x " .. sh_quote(BIN)) == 0
    local test = have_bin and it or pending
    local dir

    local function openssl(args)
        assert(os.execute("openssl " .. args .. " >/dev/null 2>&1") == 0, "openssl " .. args)
    end

    setup(function()
        dir = make_tmpdir()
        if not have_bin then return end
        for _, name in ipairs({ "a", "b" }) do
            openssl(("req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout %s -out %s")
                    :format(sh_quote(dir .. "/" .. name .. ".key"), sh_quote(dir .. "/" .. name .. ".pem")))
        end
        write(dir .. "/junk.pem", "not a certificate\n")
    end)
    teardown(function() os.execute("rm -rf " .. sh_quote(dir)) end)

    -- Run weir -t -c on SRC; returns the exit code and the stderr lines.
    local function check(src)
        local file = write(dir .. "/weir.conf.lua", src)
        local errfile = dir .. "/stderr"
        local p = io.popen(("%s -t -c %s 2>%s; echo $?"):format(sh_quote(BIN), sh_quote(file), sh_quote(errfile)))
        local code = tonumber(p:read("*a"):match("(%d+)%s*$"))
        p:close()
        local lines = {}
        for l in read(errfile):gmatch("[^\n]+") do lines[#lines + 1] = l end
        return code, lines, file
    end

    local function with_tls(cert, key)
        return edit("{ port = 8080 }", ('{ port = 8443, tls = { cert = "%s",\n    key = "%s" } }'):format(cert, key))
    end

    test("exits 0 for a valid configuration with matching certificate and key", function()
        local code = check(with_tls("a.pem", "a.key"))
        assert.equal(0, code)
    end)

    test("exits non-zero and prints weir: FILE:LINE: FIELD: message for a schema error", function()
        local code, lines, file = check(edit("ws://127.0.0.1:9000", "http://x"))
        assert.not_equal(0, code)
        assert.same({ "weir: " .. file .. ':5: apis[1].versions[1].endpoints.production: expected a ws:// or wss:// URL, got "http://x"' }, lines)
    end)

    test("reports a key that does not match the certificate at the key's line", function()
        local code, lines, file = check(with_tls("a.pem", "b.key"))
        assert.not_equal(0, code)
        assert.same({ ("weir: %s:3: listen[1].tls.key: the key in \"%s/b.key\" does not match the certificate in \"%s/a.pem\"")
                      :format(file, dir, dir) }, lines)
    end)

    test("reports a certificate that is not PEM and a missing key", function()
        local code, lines, file = check(with_tls("junk.pem", "none.key"))
        assert.not_equal(0, code)
        assert.equal(2, #lines)
        assert.matches("^weir: " .. file:gsub("%p", "%%%0") .. ':2: listen%[1%]%.tls%.cert: ".-/junk.pem" is not a usable PEM certificate chain', lines[1])
        assert.equal(("weir: %s:3: listen[1].tls.key: cannot read \"%s/none.key\": No such file or directory"):format(file, dir), lines[2])
    end)

    test("reports a backend host that does not resolve at the endpoint's line", function()
        local code, lines, file = check(edit("127.0.0.1:9000", "no-such-host.invalid:9000"))
        assert.not_equal(0, code)
        assert.equal(1, #lines)
        assert.matches("^weir: " .. file:gsub("%p", "%%%0") .. ':5: apis%[1%]%.versions%[1%]%.endpoints%.production: cannot resolve host "no%-such%-host%.invalid": ', lines[1])
    end)

    test("reports an endpoint CA file that holds no certificate", function()
        local code, lines, file = check(edit('"ws://127.0.0.1:9000"', '{ url = "wss://127.0.0.1:9443",\n        ca = "junk.pem" }'))
        assert.not_equal(0, code)
        assert.equal(1, #lines)
        assert.matches("^weir: " .. file:gsub("%p", "%%%0") .. ':6: apis%[1%]%.versions%[1%]%.endpoints%.production%.ca: ".-/junk.pem" holds no usable PEM certificate', lines[1])
    end)
end)
