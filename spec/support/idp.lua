--- spec/support/idp.lua — start and drive spec/support/idp_server.py (an
-- identity provider over HTTPS: a JWKS URL and an RFC 7662 introspection
-- endpoint) from a spec. The process is spawned through spec/helpers.lua,
-- so helpers.cleanup() kills it like every other process of the spec.
--
-- Usage:
--   local idp = require "support.idp"
--   local cert = helpers.make_cert("idp")
--   local srv = idp.start({ cert = cert, jwks = path, tokens = path,
--                           client_id = "weir", client_secret = "s3cret" })
--   srv:url("/introspect")          -- "https://127.0.0.1:PORT/introspect"
--   srv:stats().connections         -- GET /stats on the control port
--   srv:control({ delay = 3000 })   -- every answer waits 3 s
--   srv:control({})                 -- back to normal
--   srv:stop()                      -- the IdP is down (the port stays known)
--   srv = idp.start({ ..., port = srv.port })   -- and up again, same URL

local helpers = require "helpers"
local cjson = require "cjson"
local weir = require "weir"

local _M = {}

local Idp = {}
Idp.__index = Idp

local seq = 0

--- Start idp_server.py. OPTS: cert (from helpers.make_cert), plain (no TLS),
-- port, jwks, tokens (file paths), client_id/client_secret, bearer.
-- Returns a handle with port, control (the control port), pid.
function _M.start(opts)
    seq = seq + 1
    local dir = helpers.tmpdir()
    local out, err = dir .. "/idp-" .. seq .. ".out", dir .. "/idp-" .. seq .. ".err"
    local argv = { "/usr/bin/python3", helpers.support .. "/idp_server.py" }
    local function add(flag, v) if v ~= nil then argv[#argv + 1] = flag; argv[#argv + 1] = tostring(v) end end
    if opts.plain then argv[#argv + 1] = "--plain"
    else add("--cert", opts.cert.cert); add("--key", opts.cert.key) end
    add("--port", opts.port)
    add("--jwks", opts.jwks)
    add("--tokens", opts.tokens)
    add("--client-id", opts.client_id)
    add("--client-secret", opts.client_secret)
    add("--bearer", opts.bearer)
    local pid = helpers.spawn(argv, { stdout = out, stderr = err })
    local line = helpers.wait_until(function()
        local l = (helpers.read_file(out) or ""):match("[^\n]*\n")
        if l then return l end
        if not helpers.alive(pid) then
            error("idp_server.py exited: " .. (helpers.read_file(err) or ""), 3)
        end
    end, 15, "idp_server.py to listen")
    local ready = cjson.decode(line)
    return setmetatable({ pid = pid, port = ready.port, control_port = ready.control, tls = ready.tls,
                          opts = opts }, Idp)
end

--- The URL of PATH on the IdP port.
function Idp:url(path)
    return string.format("%s://127.0.0.1:%d%s", self.tls and "https" or "http", self.port, path or "/")
end

local function get(self, path)
    local res, err = helpers.http_request(self.control_port, { path = path, timeout = 5 })
    if not res then error("idp control " .. path .. ": " .. tostring(err), 3) end
    assert(res.status == 200, "idp control " .. path .. ": status " .. tostring(res.status))
    return cjson.decode(res.body)
end

--- The counters (see idp_server.py): connections, requests, reused, paths,
-- introspect, tokens (sha256 hex of a token → introspections), last.
function Idp:stats() return get(self, "/stats") end

--- Zero the counters.
function Idp:reset() return get(self, "/reset") end

--- Set the controls: { delay = MS, status = N, garbage = true, path = "/introspect" };
-- {} clears them.
function Idp:control(c)
    local q = {}
    for _, k in ipairs({ "delay", "status", "path" }) do
        if c[k] ~= nil then q[#q + 1] = k .. "=" .. tostring(c[k]) end
    end
    if c.garbage then q[#q + 1] = "garbage=1" end
    return get(self, "/control" .. (#q > 0 and ("?" .. table.concat(q, "&")) or ""))
end

--- Introspections of TOKEN so far.
function Idp:count(token)
    return self:stats().tokens[weir.sha256_hex(token)] or 0
end

--- Stop the process (SIGTERM) and reap it.
function Idp:stop()
    return helpers.stop_pid(self.pid)
end

return _M
