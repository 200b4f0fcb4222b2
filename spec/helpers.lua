--- spec/helpers.lua — the harness the specs drive weir with.
--
-- Starts weir and real backends (spec/support/backend.js) as child
-- processes, drives real WebSocket clients (spec/support/client.js and
-- client.py) through scripted scenarios, and offers a raw HTTP/1.1 and raw
-- WebSocket client over luasocket for what real clients cannot do (half a
-- request, unmasked frames, not answering pings).
--
-- Every process started here is remembered and killed, by PID, by
-- helpers.cleanup() (call it from the spec file's `teardown`), or when the
-- module is collected after busted's insulation drops it. Only loopback
-- addresses are used.
--
-- Usage:
--   local helpers = require "helpers"
--   local be = helpers.start_backend("echo")
--   local gw = helpers.start_weir({ apis = { helpers.api("Echo", "/echo", be) } })
--   local t  = helpers.ws_client("node", { url = gw:url("/echo"), steps = { { op = "send", text = "hi" } } })

local unistd = require "posix.unistd"
local pwait  = require "posix.sys.wait"
local psig   = require "posix.signal"
local ptime  = require "posix.time"
local fcntl  = require "posix.fcntl"
local stdlib = require "posix.stdlib"
local dirent = require "posix.dirent"
local pstat  = require "posix.sys.stat"
local socket = require "socket"
local cjson  = require "cjson"
local mime   = require "mime"
local bit    = require "bit"

local band, bor, bxor, rshift, lshift = bit.band, bit.bor, bit.bxor, bit.rshift, bit.lshift
local char, byte, concat, fmt = string.char, string.byte, table.concat, string.format

local helpers = {}

-- The project root, from where this file lives (busted loads it as
-- "spec/helpers.lua" relative to the root).
local ROOT do
    local src = debug.getinfo(1, "S").source:gsub("^@", "")
    if src:sub(1, 1) ~= "/" then src = unistd.getcwd() .. "/" .. src end
    ROOT = src:gsub("/%./", "/"):gsub("/?spec/helpers%.lua$", "")
    if ROOT == "" then ROOT = unistd.getcwd() end
end
helpers.root = ROOT
helpers.support = ROOT .. "/spec/support"
helpers.bin = os.getenv("WEIR_BIN") or (ROOT .. "/build/weir")

local state = {
    tmpdir   = nil,
    pids     = {},      -- pid → description, every process we spawned and have not reaped
    seq      = 0,
    weirs    = {},      -- gateways started, for killing their workers at cleanup
}

--------------------------------------------------------------------------
-- small utilities
--------------------------------------------------------------------------

--- Sleep for S seconds (fractions allowed). Only for pacing a poll loop.
function helpers.sleep(s)
    local sec = math.floor(s)
    ptime.nanosleep({ tv_sec = sec, tv_nsec = math.floor((s - sec) * 1e9) })
end

--- Monotonic seconds.
function helpers.now()
    local t = ptime.clock_gettime(ptime.CLOCK_MONOTONIC)
    return t.tv_sec + t.tv_nsec / 1e9
end

local function next_name(prefix, ext)
    state.seq = state.seq + 1
    return fmt("%s/%s-%d%s", helpers.tmpdir(), prefix, state.seq, ext or "")
end

--- Read a whole file; nil when it does not exist.
function helpers.read_file(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
end

--- Write S to PATH.
function helpers.write_file(path, s)
    local f = assert(io.open(path, "wb"))
    f:write(s)
    f:close()
    return path
end

local function shell_quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
helpers.shell_quote = shell_quote

--- A fresh temporary directory for this spec file (one per file, created on first use).
function helpers.tmpdir()
    if not state.tmpdir then
        state.tmpdir = assert(stdlib.mkdtemp("/tmp/weir-spec-XXXXXX"))
    elseif not pstat.stat(state.tmpdir) then
        -- removed behind our back (a sweep of /tmp): make it again, private
        pstat.mkdir(state.tmpdir, 448)
    end
    return state.tmpdir
end

--- A free TCP port on 127.0.0.1 (bound to port 0, read, closed).
function helpers.free_port()
    local s = assert(socket.tcp4())
    assert(s:setoption("reuseaddr", true))
    assert(s:bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
end

local function is_identifier(k)
    return type(k) == "string" and k:match("^[%a_][%w_]*$") and not ({
        ["and"]=1, ["break"]=1, ["do"]=1, ["else"]=1, ["elseif"]=1, ["end"]=1, ["false"]=1,
        ["for"]=1, ["function"]=1, ["if"]=1, ["in"]=1, ["local"]=1, ["nil"]=1, ["not"]=1,
        ["or"]=1, ["repeat"]=1, ["return"]=1, ["then"]=1, ["true"]=1, ["until"]=1, ["while"]=1,
    })[k]
end

local function ser(v, indent, seen)
    local t = type(v)
    if t == "string" then return fmt("%q", v) end
    if t == "number" then
        if v ~= v or v == math.huge or v == -math.huge then error("cannot serialize " .. tostring(v)) end
        if v == math.floor(v) and math.abs(v) < 2^53 then return fmt("%d", v) end
        return fmt("%.17g", v)
    end
    if t == "boolean" then return tostring(v) end
    if t ~= "table" then error("cannot serialize a " .. t) end
    if seen[v] then error("cannot serialize a cycle") end
    seen[v] = true
    local pad, out = indent .. "  ", {}
    local n = #v
    for i = 1, n do out[#out + 1] = pad .. ser(v[i], pad, seen) end
    local keys = {}
    for k in pairs(v) do
        if not (type(k) == "number" and k >= 1 and k <= n and k == math.floor(k)) then keys[#keys + 1] = k end
    end
    table.sort(keys, function(a, b)
        if type(a) == type(b) then return a < b end
        return type(a) == "number"
    end)
    for _, k in ipairs(keys) do
        local ks = is_identifier(k) and k or ("[" .. ser(k, pad, seen) .. "]")
        out[#out + 1] = pad .. ks .. " = " .. ser(v[k], pad, seen)
    end
    seen[v] = nil
    if #out == 0 then return "{}" end
    return "{\n" .. concat(out, ",\n") .. ",\n" .. indent .. "}"
end

--- A Lua table → Lua source "return {...}" (strings quoted with %q).
function helpers.serialize(tbl)
    return "return " .. ser(tbl, "", {}) .. "\n"
end

local function deepcopy(v)
    if type(v) ~= "table" then return v end
    local c = {}
    for k, x in pairs(v) do c[k] = deepcopy(x) end
    return c
end
helpers.deepcopy = deepcopy

--- Write a configuration (a table, serialized, or Lua source) into tmpdir; returns its path.
function helpers.write_conf(tbl_or_source, name)
    local src = type(tbl_or_source) == "table" and helpers.serialize(tbl_or_source) or tbl_or_source
    local path = name and (helpers.tmpdir() .. "/" .. name) or next_name("weir", ".conf.lua")
    return helpers.write_file(path, src)
end

--- Poll FN every 20 ms until it returns a truthy value, which is returned.
-- Errors naming WHAT after TIMEOUT seconds (default 10).
function helpers.wait_until(fn, timeout, what)
    local deadline = helpers.now() + (timeout or 10)
    while true do
        local v = fn()
        if v then return v end
        if helpers.now() > deadline then
            error(fmt("timed out after %gs waiting for %s", timeout or 10, what or "a condition"), 2)
        end
        helpers.sleep(0.02)
    end
end

--------------------------------------------------------------------------
-- processes
--------------------------------------------------------------------------

local function close_inherited_fds()
    -- Sockets and files of the spec process must not leak into children:
    -- a leaked client socket would keep a connection open after the spec
    -- closed it.
    local ok, names = pcall(dirent.dir, "/proc/self/fd")
    if not ok or not names then return end
    for _, name in ipairs(names) do
        local fd = tonumber(name)
        if fd and fd > 2 then unistd.close(fd) end
    end
end

--- fork+exec ARGV (argv[1] is the program, looked up in PATH).
-- opts.stdout / opts.stderr: file paths (default /dev/null); opts.stdin: file path;
-- opts.env: table of variables to set (false to unset); opts.cwd.
-- Returns the pid; the process is killed at cleanup unless reaped before.
function helpers.spawn(argv, opts)
    opts = opts or {}
    assert(type(argv) == "table" and argv[1], "spawn: argv must be a non-empty table")
    io.stdout:flush()
    io.stderr:flush()
    local pid, err = unistd.fork()
    if not pid then error("fork: " .. tostring(err)) end
    if pid == 0 then
        -- No finalizer may run here: a collected helpers module of an
        -- earlier spec file would "clean up" from inside the child.
        collectgarbage("stop")
        local ok = pcall(function()
            local function redirect(path, fd, flags)
                local f = fcntl.open(path, flags, 420)
                if f then unistd.dup2(f, fd); if f ~= fd then unistd.close(f) end end
            end
            redirect(opts.stdin or "/dev/null", 0, fcntl.O_RDONLY)
            redirect(opts.stdout or "/dev/null", 1, bor(fcntl.O_WRONLY, fcntl.O_CREAT, fcntl.O_TRUNC))
            redirect(opts.stderr or "/dev/null", 2, bor(fcntl.O_WRONLY, fcntl.O_CREAT, fcntl.O_TRUNC))
            close_inherited_fds()
            for k, v in pairs(opts.env or {}) do
                if v == false then stdlib.setenv(k, nil) else stdlib.setenv(k, tostring(v)) end
            end
            if opts.cwd then unistd.chdir(opts.cwd) end
            local args = {}
            for i = 2, #argv do args[i - 1] = tostring(argv[i]) end
            args[0] = argv[1]
            unistd.execp(argv[1], args)
        end)
        unistd._exit(ok and 127 or 126)
    end
    state.pids[pid] = argv[1]
    return pid
end

local signals = {
    TERM = psig.SIGTERM, KILL = psig.SIGKILL, INT = psig.SIGINT, HUP = psig.SIGHUP,
    QUIT = psig.SIGQUIT, USR1 = psig.SIGUSR1, USR2 = psig.SIGUSR2, STOP = psig.SIGSTOP, CONT = psig.SIGCONT,
}

--- Send signal SIGNAME ("TERM" default, or a number) to PID, which must be
-- one we spawned or a worker of a weir we started.
function helpers.kill(pid, signame)
    local sig = type(signame) == "number" and signame or signals[(signame or "TERM"):gsub("^SIG", "")]
    assert(sig, "unknown signal " .. tostring(signame))
    assert(type(pid) == "number" and pid > 1, "kill: bad pid " .. tostring(pid))
    local ours = state.pids[pid] ~= nil
    for _, gw in ipairs(state.weirs) do
        if gw.pid == pid and ours then gw:worker_pids() end     -- remember its workers first
    end
    if not ours then
        for _, gw in ipairs(state.weirs) do
            for _, w in ipairs(helpers.children(gw.pid)) do if w == pid then ours = true end end
        end
    end
    if not ours then error("kill: pid " .. pid .. " is not a process these specs started", 2) end
    return psig.kill(pid, sig)
end

--- Whether PID still runs (zombies count as gone).
function helpers.alive(pid)
    local stat = helpers.read_file("/proc/" .. pid .. "/stat")
    if not stat then return false end
    local st = stat:match("%) (%S)")
    return st ~= "Z" and st ~= "X"
end

--- Wait for our child PID to exit. Returns its exit code; nil, "signal N"
-- when a signal killed it; nil, "timeout" after TIMEOUT seconds (default 10).
function helpers.wait(pid, timeout)
    local deadline = helpers.now() + (timeout or 10)
    while true do
        local p, how, status = pwait.wait(pid, pwait.WNOHANG)
        if p == nil then
            state.pids[pid] = nil
            return nil, "not our child: " .. tostring(how)
        end
        if p == pid then
            state.pids[pid] = nil
            if how == "exited" then return status end
            return nil, "signal " .. tostring(status)
        end
        if helpers.now() > deadline then return nil, "timeout" end
        helpers.sleep(0.02)
    end
end

--- Kill PID (TERM, then KILL after GRACE seconds) and reap it.
function helpers.stop_pid(pid, grace)
    if not state.pids[pid] then return end
    helpers.kill(pid, "TERM")
    local code, how = helpers.wait(pid, grace or 5)
    if how == "timeout" then
        helpers.kill(pid, "KILL")
        return helpers.wait(pid, 5)
    end
    return code, how
end

--- Run ARGV to completion; returns exit code, stdout, stderr.
function helpers.run(argv, opts)
    opts = opts or {}
    local out, err = next_name("run", ".out"), next_name("run", ".err")
    local pid = helpers.spawn(argv, { stdout = out, stderr = err, env = opts.env, stdin = opts.stdin })
    local code, how = helpers.wait(pid, opts.timeout or 30)
    if how == "timeout" then
        helpers.kill(pid, "KILL")
        helpers.wait(pid, 5)
        error(fmt("%s did not finish in %ss", argv[1], opts.timeout or 30), 2)
    end
    return code, helpers.read_file(out) or "", helpers.read_file(err) or "", how
end

--- Children of PID, from /proc/*/stat.
function helpers.children(pid)
    local out = {}
    local ok, names = pcall(dirent.dir, "/proc")
    if not ok then return out end
    for _, name in ipairs(names) do
        local n = tonumber(name)
        if n then
            local stat = helpers.read_file("/proc/" .. n .. "/stat")
            if stat then
                local st, ppid = stat:match("%) (%S) (%d+)")
                if tonumber(ppid) == pid and st ~= "Z" then out[#out + 1] = n end
            end
        end
    end
    table.sort(out)
    return out
end

--- Resident memory of PID in KiB (VmRSS), 0 when gone.
function helpers.rss_kb(pid)
    local s = helpers.read_file("/proc/" .. pid .. "/status")
    return s and tonumber(s:match("VmRSS:%s*(%d+)")) or 0
end

--------------------------------------------------------------------------
-- raw TCP, HTTP/1.1 and WebSocket over luasocket
--------------------------------------------------------------------------

local Conn = {}
Conn.__index = Conn

--- Open a TCP connection to 127.0.0.1:PORT; returns a buffered connection
-- (conn.sock is the luasocket object) or nil, err.
function helpers.tcp(port, timeout)
    local s = socket.tcp4()
    s:settimeout(timeout or 5)
    local ok, err = s:connect("127.0.0.1", port)
    if not ok then s:close(); return nil, err end
    s:setoption("tcp-nodelay", true)
    return setmetatable({ sock = s, buf = "", pos = 1, closed = false, timeout = timeout or 5 }, Conn)
end

--- Send all of DATA; returns true or nil, err.
function Conn:send(data)
    self.sock:settimeout(self.timeout)
    local i = 1
    while i <= #data do
        local last, err, partial = self.sock:send(data, i)
        if last then return true end
        if err ~= "timeout" then return nil, err end
        i = partial + 1
    end
    return true
end

-- Read whatever is available into the buffer, waiting until DEADLINE.
-- Returns true, or nil, "timeout" / "closed".
function Conn:_fill(deadline)
    if self.closed then return nil, "closed" end
    local remaining = deadline - helpers.now()
    if remaining <= 0 then return nil, "timeout" end
    local r = socket.select({ self.sock }, nil, remaining)
    if not r or not r[1] then return nil, "timeout" end
    self.sock:settimeout(0)
    local data, err, partial = self.sock:receive(1048576)
    data = data or partial
    if data and #data > 0 then
        if self.pos > 1 then self.buf, self.pos = self.buf:sub(self.pos), 1 end
        self.buf = self.buf .. data
    end
    if err == "closed" then
        self.closed = true
        if not data or #data == 0 then return nil, "closed" end
    elseif err and err ~= "timeout" then
        self.closed = true
        return nil, err
    end
    return true
end

function Conn:_avail()
    return #self.buf - self.pos + 1
end

--- Read exactly N bytes before DEADLINE (absolute, helpers.now()); nil, err otherwise.
function Conn:read_n(n, deadline)
    while self:_avail() < n do
        local ok, err = self:_fill(deadline)
        if not ok then return nil, err end
    end
    local s = self.buf:sub(self.pos, self.pos + n - 1)
    self.pos = self.pos + n
    return s
end

--- Read up to and including PATTERN (plain); nil, err otherwise.
function Conn:read_until(pattern, deadline)
    while true do
        local e = self.buf:find(pattern, self.pos, true)
        if e then
            local s = self.buf:sub(self.pos, e + #pattern - 1)
            self.pos = e + #pattern
            return s
        end
        local ok, err = self:_fill(deadline)
        if not ok then return nil, err end
    end
end

--- Read until the peer closes; returns what was read and the reason it stopped.
function Conn:read_all(deadline)
    while true do
        local ok, err = self:_fill(deadline)
        if not ok then
            local s = self.buf:sub(self.pos)
            self.pos = #self.buf + 1
            return s, err
        end
    end
end

--- Wait until the peer closes the TCP connection (anything read is discarded).
-- Returns true, or nil, "timeout".
function Conn:wait_closed(timeout)
    local deadline = helpers.now() + (timeout or 5)
    while true do
        local ok, err = self:_fill(deadline)
        if not ok then
            if err == "timeout" then return nil, "timeout" end
            return true
        end
        self.buf, self.pos = "", 1
    end
end

function Conn:close()
    self.closed = true
    self.sock:close()
end

local function parse_head(head)
    local res = { headers = {}, header_list = {} }
    local first = true
    for line in head:gmatch("([^\r\n]*)\r?\n") do
        if first then
            res.status_line = line
            res.version, res.status, res.reason = line:match("^(HTTP/%d%.%d) (%d%d%d) ?(.*)$")
            res.status = tonumber(res.status)
            first = false
        elseif line ~= "" then
            local k, v = line:match("^([^:]+):%s*(.-)%s*$")
            if k then
                local lk = k:lower()
                res.header_list[#res.header_list + 1] = { k, v }
                if res.headers[lk] then res.headers[lk] = res.headers[lk] .. ", " .. v
                else res.headers[lk] = v end
            end
        end
    end
    return res
end

--- Read one HTTP response head (and body, unless it is a 101) from CONN.
-- Returns {status=, headers= (lower-cased names), body=, raw=} or nil, err.
function Conn:read_response(timeout)
    local deadline = helpers.now() + (timeout or 5)
    local head, err = self:read_until("\r\n\r\n", deadline)
    if not head then
        local rest = self.buf:sub(self.pos)
        return nil, err, rest
    end
    local res = parse_head(head)
    res.raw = head
    if res.status == 101 then res.body = ""; return res end
    local len = tonumber(res.headers["content-length"])
    if len then
        res.body, err = self:read_n(len, deadline)
        if not res.body then return nil, "body: " .. tostring(err) end
    elseif (res.headers["transfer-encoding"] or ""):lower():find("chunked") then
        local parts = {}
        while true do
            local line = self:read_until("\r\n", deadline)
            if not line then return nil, "chunked body truncated" end
            local n = tonumber(line:match("^(%x+)"), 16)
            if not n then return nil, "bad chunk size" end
            if n == 0 then self:read_until("\r\n", deadline); break end
            parts[#parts + 1] = self:read_n(n, deadline)
            self:read_n(2, deadline)
        end
        res.body = concat(parts)
    else
        res.body = self:read_all(deadline)
    end
    res.raw = head .. res.body
    return res
end

local function build_request(opts)
    local lines = { fmt("%s %s %s", opts.method or "GET", opts.path or "/", opts.version or "HTTP/1.1") }
    local have_host = false
    local hdrs = opts.headers or {}
    local list = {}
    if hdrs[1] then
        list = hdrs
    else
        local keys = {}
        for k in pairs(hdrs) do keys[#keys + 1] = k end
        table.sort(keys)
        for _, k in ipairs(keys) do list[#list + 1] = { k, hdrs[k] } end
    end
    for _, kv in ipairs(list) do
        if kv[1]:lower() == "host" then have_host = true end
    end
    if not have_host and opts.host ~= false then
        lines[#lines + 1] = "Host: " .. (opts.host or ("127.0.0.1:" .. tostring(opts.port or "")))
    end
    for _, kv in ipairs(list) do
        if kv[2] ~= false then lines[#lines + 1] = kv[1] .. ": " .. tostring(kv[2]) end
    end
    if opts.body then lines[#lines + 1] = "Content-Length: " .. #opts.body end
    return concat(lines, "\r\n") .. "\r\n\r\n" .. (opts.body or "")
end
helpers.build_request = build_request

--- A raw HTTP/1.1 exchange with 127.0.0.1:PORT.
-- REQ is the raw request text, or opts {method=, path=, headers= (map, or array
-- of {name, value} to keep an order), host=, body=, timeout=, keep=}.
-- Returns {status=, headers= (lower-cased names), body=, raw=} (and, with
-- opts.keep, the connection as a second value; it is closed otherwise),
-- or nil, err.
function helpers.http_request(port, req)
    local opts = type(req) == "table" and req or {}
    local raw = type(req) == "string" and req or build_request(setmetatable({ port = port }, { __index = opts }))
    local conn, err = helpers.tcp(port, opts.timeout or 5)
    if not conn then return nil, "connect: " .. tostring(err) end
    local ok, serr = conn:send(raw)
    if not ok and serr ~= "closed" then conn:close(); return nil, "send: " .. tostring(serr) end
    local res, rerr = conn:read_response(opts.timeout or 5)
    if opts.keep and res then return res, conn end
    conn:close()
    if not res then return nil, rerr end
    return res
end

--- Until a TCP connect to 127.0.0.1:PORT succeeds (TIMEOUT seconds, default 10).
function helpers.wait_port(port, timeout)
    return helpers.wait_until(function()
        local c = helpers.tcp(port, 0.5)
        if c then c:close(); return true end
    end, timeout or 10, "port " .. port)
end

---- WebSocket frames ------------------------------------------------------

helpers.OP = { CONT = 0, TEXT = 1, BINARY = 2, CLOSE = 8, PING = 9, PONG = 10 }

local function mask_payload(payload, key)
    if #payload == 0 then return payload end
    local k = { byte(key, 1, 4) }
    local out = {}
    local n = #payload
    local i = 1
    while i <= n do
        local j = math.min(i + 4095, n)
        local chunk = { byte(payload, i, j) }
        for x = 1, #chunk do
            chunk[x] = bxor(chunk[x], k[((i + x - 2) % 4) + 1])
        end
        out[#out + 1] = char(unpack(chunk))
        i = j + 1
    end
    return concat(out)
end
helpers.mask_payload = mask_payload

local function random_bytes(n)
    local t = {}
    for i = 1, n do t[i] = math.random(0, 255) end
    return char(unpack(t))
end
helpers.random_bytes = function(n)
    local out = {}
    for i = 1, n, 4096 do out[#out + 1] = random_bytes(math.min(4096, n - i + 1)) end
    return concat(out)
end

--- Encode one frame. F: {opcode=, payload="", fin=true, rsv=0 (3 bits),
-- mask=true (random key) | false | "4 bytes", len=override for the length field,
-- len_form="7"|"16"|"64" to force a length encoding}.
function helpers.encode_frame(f)
    local payload = f.payload or ""
    local b0 = bor(f.fin == false and 0 or 0x80, lshift(band(f.rsv or 0, 7), 4), band(f.opcode or 1, 0x0f))
    local len = f.len or #payload
    local key
    if f.mask == nil or f.mask == true then key = random_bytes(4)
    elseif f.mask then key = f.mask end
    local mbit = key and 0x80 or 0
    local head
    local form = f.len_form or (len < 126 and "7" or (len < 65536 and "16" or "64"))
    if form == "7" then
        head = char(b0, bor(mbit, len))
    elseif form == "16" then
        head = char(b0, bor(mbit, 126), rshift(len, 8) % 256, len % 256)
    else
        local bytes = {}
        local v = len
        for i = 8, 1, -1 do bytes[i] = v % 256; v = math.floor(v / 256) end
        head = char(b0, bor(mbit, 127)) .. char(unpack(bytes))
    end
    if key then return head .. key .. mask_payload(payload, key) end
    return head .. payload
end

--- Close payload for CODE and REASON ("" when CODE is nil).
function helpers.close_payload(code, reason)
    if not code then return "" end
    return char(rshift(code, 8), code % 256) .. (reason or "")
end

local WS = setmetatable({}, { __index = Conn })
WS.__index = WS

--- Read one frame. Returns {opcode=, fin=, rsv=, masked=, payload=, code=, reason=}
-- (code/reason for close frames), or nil, "timeout" / "closed".
function WS:recv_frame(timeout)
    local deadline = helpers.now() + (timeout or 5)
    local h, err = self:read_n(2, deadline)
    if not h then return nil, err end
    local b0, b1 = byte(h, 1, 2)
    local f = { fin = band(b0, 0x80) ~= 0, rsv = band(rshift(b0, 4), 7), opcode = band(b0, 0x0f),
                masked = band(b1, 0x80) ~= 0 }
    local len = band(b1, 0x7f)
    if len == 126 then
        local e = self:read_n(2, deadline); if not e then return nil, "closed" end
        local x, y = byte(e, 1, 2)
        len = x * 256 + y
    elseif len == 127 then
        local e = self:read_n(8, deadline); if not e then return nil, "closed" end
        len = 0
        for i = 1, 8 do len = len * 256 + byte(e, i) end
    end
    local key
    if f.masked then key = self:read_n(4, deadline); if not key then return nil, "closed" end end
    local p = self:read_n(len, deadline)
    if not p then return nil, "closed" end
    if key then p = mask_payload(p, key); f.mask = key end
    f.payload = p
    if f.opcode == 8 and #p >= 2 then
        f.code = byte(p, 1) * 256 + byte(p, 2)
        f.reason = p:sub(3)
    end
    self.frames_in = (self.frames_in or 0) + 1
    return f
end

--- Send a frame (see helpers.encode_frame; client frames are masked by default).
function WS:send_frame(f)
    return self:send(helpers.encode_frame(f))
end
function WS:send_text(s, fin) return self:send_frame{ opcode = 1, payload = s, fin = fin } end
function WS:send_binary(s, fin) return self:send_frame{ opcode = 2, payload = s, fin = fin } end
function WS:send_cont(s, fin) return self:send_frame{ opcode = 0, payload = s, fin = fin } end
function WS:ping(s) return self:send_frame{ opcode = 9, payload = s or "" } end
function WS:pong(s) return self:send_frame{ opcode = 10, payload = s or "" } end
function WS:send_close(code, reason)
    return self:send_frame{ opcode = 8, payload = helpers.close_payload(code, reason) }
end

--- Read the next data message, reassembling fragments. Control frames met on
-- the way are appended to self.control; pings are answered when
-- self.auto_pong is true. A close frame ends the wait.
-- Returns {opcode=, payload=, frames=} or nil, err (err = "close" with the
-- close frame as third value).
function WS:recv_message(timeout)
    local deadline = helpers.now() + (timeout or 5)
    local parts, opcode, frames = {}, nil, 0
    while true do
        local f, err = self:recv_frame(math.max(0.001, deadline - helpers.now()))
        if not f then return nil, err end
        if f.opcode >= 8 then
            self.control[#self.control + 1] = f
            if f.opcode == 8 then return nil, "close", f end
            if f.opcode == 9 and self.auto_pong then self:pong(f.payload) end
        else
            frames = frames + 1
            opcode = opcode or f.opcode
            parts[#parts + 1] = f.payload
            if f.fin then return { opcode = opcode, payload = concat(parts), frames = frames } end
        end
    end
end

--- Read frames until a close frame; returns it (data frames met are kept in
-- self.skipped), or nil, err.
function WS:recv_close(timeout)
    local deadline = helpers.now() + (timeout or 5)
    self.skipped = self.skipped or {}
    while true do
        local f, err = self:recv_frame(math.max(0.001, deadline - helpers.now()))
        if not f then return nil, err end
        if f.opcode == 8 then return f end
        self.skipped[#self.skipped + 1] = f
        if f.opcode == 9 and self.auto_pong then self:pong(f.payload) end
    end
end

--- Send a close frame, wait for the peer's, return it (or nil, err).
function WS:close_handshake(code, reason, timeout)
    self:send_close(code, reason)
    return self:recv_close(timeout)
end

--- A fresh random Sec-WebSocket-Key.
function helpers.ws_key()
    return (mime.b64(random_bytes(16)))
end

--- Raw WebSocket client over luasocket: sends the upgrade request for PATH
-- to 127.0.0.1:PORT. opts: path, headers (map or ordered array of pairs,
-- added after the standard ones; false removes one), protocols (array),
-- key, host, timeout, auto_pong, early (bytes sent in the same write as the
-- request: frames that come with the head).
-- Returns ws (ws.response is the 101) or nil, response-or-err.
function helpers.ws_connect(port, opts)
    opts = opts or {}
    local key = opts.key or helpers.ws_key()
    local hdrs = {
        { "Host", opts.host or ("127.0.0.1:" .. port) },
        { "Upgrade", "websocket" },
        { "Connection", "Upgrade" },
        { "Sec-WebSocket-Key", key },
        { "Sec-WebSocket-Version", "13" },
    }
    if opts.protocols then hdrs[#hdrs + 1] = { "Sec-WebSocket-Protocol", concat(opts.protocols, ", ") } end
    local extra = opts.headers or {}
    local list = extra[1] and extra or {}
    if not extra[1] then
        local keys = {}
        for k in pairs(extra) do keys[#keys + 1] = k end
        table.sort(keys)
        for _, k in ipairs(keys) do list[#list + 1] = { k, extra[k] } end
    end
    local nstd = #hdrs     -- a given header replaces a standard one; others are appended as given
    for _, kv in ipairs(list) do
        local replaced = false
        for i = 1, nstd do
            if hdrs[i][1]:lower() == kv[1]:lower() then hdrs[i][2] = kv[2]; replaced = true end
        end
        if not replaced then hdrs[#hdrs + 1] = kv end
    end
    local req = build_request{ method = "GET", path = opts.path or "/", headers = hdrs, host = false }
    local conn, err = helpers.tcp(port, opts.timeout or 5)
    if not conn then return nil, "connect: " .. tostring(err) end
    local ok, serr = conn:send(req .. (opts.early or ""))
    if not ok then conn:close(); return nil, "send: " .. tostring(serr) end
    local res, rerr = conn:read_response(opts.timeout or 5)
    if not res then conn:close(); return nil, rerr end
    if res.status ~= 101 then conn:close(); return nil, res end
    local ws = setmetatable(conn, WS)
    ws.response, ws.key, ws.control = res, key, {}
    ws.auto_pong = opts.auto_pong ~= false
    return ws
end

--- The Sec-WebSocket-Accept for KEY (uses openssl; not on any hot path).
function helpers.ws_accept(key)
    local path = next_name("accept")
    helpers.write_file(path, key .. "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
    local _, out = helpers.run({ "openssl", "dgst", "-sha1", "-binary", path })
    return (mime.b64(out))
end

--- sha256 hex of S (uses openssl; for assertions, not loops).
function helpers.sha256(s)
    local path = next_name("sha")
    helpers.write_file(path, s)
    local _, out = helpers.run({ "openssl", "dgst", "-sha256", "-r", path })
    return out:match("^(%x+)")
end

-- JSON null decodes to cjson.null, which is truthy: turn it into nil so
-- that `if rec.closed then` reads naturally.
local function strip_nulls(v)
    if type(v) ~= "table" then return v end
    for k, x in pairs(v) do
        if x == cjson.null then v[k] = nil else strip_nulls(x) end
    end
    return v
end

local function decode(s)
    local ok, v = pcall(cjson.decode, s)
    if not ok then return nil, v end
    return strip_nulls(v)
end

--- Decode a JSON string (errors with the text on failure); JSON null becomes nil.
function helpers.json(s)
    local v, err = decode(s)
    if v == nil then error("not JSON (" .. tostring(err) .. "): " .. tostring(s), 2) end
    return v
end

--- Assert that S (a string, or an already decoded table) is weir's error
-- JSON (docs/errors.md) of problem TYPE ("/problems/not-found") and CODE;
-- returns the decoded table.
function helpers.check_error(s, ptype, code, level)
    local v = type(s) == "table" and s or helpers.json(s)
    local function check(cond, what)
        if not cond then
            error(fmt("error JSON: %s\n  got: %s", what, type(s) == "string" and s or cjson.encode(v)), (level or 1) + 2)
        end
    end
    check(v.type == "error", 'type is not "error"')
    check(type(v.error) == "table", "no error object")
    check(v.error.type == ptype, "error.type is not " .. tostring(ptype))
    check(v.error.code == code, "error.code is not " .. tostring(code))
    check(type(v.error.message) == "string" and #v.error.message > 0, "error.message is not a non-empty string")
    check(helpers.is_rfc3339(v.timestamp), "timestamp is not RFC 3339 UTC with second precision")
    return v
end

--- Whether S is an RFC 3339 UTC timestamp with second precision.
function helpers.is_rfc3339(s)
    return type(s) == "string" and s:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$") ~= nil
end

--------------------------------------------------------------------------
-- certificates
--------------------------------------------------------------------------

--- A self-signed EC certificate for localhost and 127.0.0.1, generated now.
-- Returns {cert=, key=} (paths in tmpdir); the certificate is its own CA.
function helpers.make_cert(name, cn)
    name = name or "cert"
    local dir = helpers.tmpdir()
    local cert, key = dir .. "/" .. name .. ".pem", dir .. "/" .. name .. ".key"
    local code, _, err = helpers.run({ "openssl", "req", "-x509", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-keyout", key, "-out", cert, "-subj", "/CN=" .. (cn or "localhost"),
        "-addext", "subjectAltName=DNS:" .. (cn or "localhost") .. ",IP:127.0.0.1" })
    assert(code == 0, "openssl req failed: " .. err)
    return { cert = cert, key = key }
end

--------------------------------------------------------------------------
-- weir
--------------------------------------------------------------------------

local Gw = {}
Gw.__index = Gw

--- An API entry for the configuration: NAME, CONTEXT and either a backend
-- (from start_backend) or a URL, as its one default version "1.0".
function helpers.api(name, context, backend_or_url, extra)
    local url = type(backend_or_url) == "table" and backend_or_url.url or backend_or_url
    local api = { name = name, context = context, versions = {
        { version = "1.0", default = true, endpoints = { production = url } },
    } }
    for k, v in pairs(extra or {}) do api[k] = v end
    return api
end

local function listener_is_tls(l)
    return l.tls ~= nil and l.tls ~= false
end

local function tail(s, n)
    s = s or ""
    if #s > n then return "…" .. s:sub(-n) end
    return s
end

--- Write CONF (table or Lua source), spawn `weir -c FILE`, and wait until
-- GET /healthz on the first plain listener answers 200.
-- For a table, fills in: workers (1), log.file and log.level ("info") and
-- pid_file in tmpdir, and a listener on a free port when none is given;
-- listeners without a port get a free one. For source, opts.port and
-- opts.log_path tell where it listens and logs.
-- opts: timeout (startup, default 15 s), env, args (extra argv), wrap (argv
-- before weir's: a command that execs it, as prlimit does), wait = false
-- to skip the readiness check.
-- Returns gw (see Gw methods), or errors with weir's stderr.
function helpers.start_weir(conf, opts)
    opts = opts or {}
    -- Ports from free_port() may be taken (by another process, or as the
    -- local port of some outgoing connection) before weir binds them: when
    -- we chose the ports, try again with new ones.
    if type(conf) == "table" and not opts._attempt then
        local chose = false
        for _, l in ipairs(conf.listen or { {} }) do if not l.port then chose = true end end
        if chose then
            for attempt = 1, 3 do
                local o = setmetatable({ _attempt = attempt }, { __index = opts })
                local ok, gw = pcall(helpers.start_weir, conf, o)
                if ok then return gw end
                if attempt == 3 or not tostring(gw):find("Address already in use", 1, true) then
                    error(gw, 2)
                end
            end
        end
    end
    local log_path, ports, tls_flags = opts.log_path, {}, {}
    local conf_path
    if type(conf) == "table" then
        conf = deepcopy(conf)
        conf.workers = conf.workers or 1
        conf.log = conf.log or {}
        conf.log.file = conf.log.file or next_name("weir", ".log")
        conf.log.level = conf.log.level or "info"
        conf.pid_file = conf.pid_file or next_name("weir", ".pid")
        conf.listen = conf.listen or { { address = "127.0.0.1" } }
        for i, l in ipairs(conf.listen) do
            l.address = l.address or "127.0.0.1"
            l.port = l.port or helpers.free_port()
            ports[i], tls_flags[i] = l.port, listener_is_tls(l)
        end
        log_path = conf.log.file
        conf_path = helpers.write_conf(conf)
    else
        conf_path = helpers.write_conf(conf)
        ports[1], tls_flags[1] = opts.port, false
    end
    local out, err = next_name("weir", ".stdout"), next_name("weir", ".stderr")
    local argv = {}
    for _, a in ipairs(opts.wrap or {}) do argv[#argv + 1] = a end      -- a command that execs weir (prlimit)
    argv[#argv + 1] = helpers.bin
    argv[#argv + 1] = "-c"
    argv[#argv + 1] = conf_path
    for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
    local pid = helpers.spawn(argv, { stdout = out, stderr = err, env = opts.env })
    local gw = setmetatable({
        pid = pid, port = ports[1], ports = ports, conf = type(conf) == "table" and conf or nil,
        conf_path = conf_path, log_path = log_path, stdout_path = out, stderr_path = err,
    }, Gw)
    state.weirs[#state.weirs + 1] = gw
    if opts.wait == false then return gw end

    local probe
    for i, p in ipairs(ports) do if not tls_flags[i] then probe = p; break end end
    local deadline = helpers.now() + (opts.timeout or 15)
    while true do
        local p, how, status = pwait.wait(pid, pwait.WNOHANG)
        if p == pid then
            state.pids[pid] = nil
            gw.exited = true
            error(fmt("weir exited during startup (%s %s)\nstderr: %s\nlog: %s", how, tostring(status),
                tail(helpers.read_file(err), 3000), tail(log_path and helpers.read_file(log_path), 3000)), 2)
        end
        if probe then
            local res = helpers.http_request(probe, { path = "/healthz", timeout = 1 })
            if res and res.status == 200 then break end
        elseif ports[1] then
            local c = helpers.tcp(ports[1], 0.5)
            if c then c:close(); break end
        end
        if helpers.now() > deadline then
            gw:kill_all()
            error(fmt("weir did not answer /healthz within %ss\nstderr: %s\nlog: %s", opts.timeout or 15,
                tail(helpers.read_file(err), 3000), tail(log_path and helpers.read_file(log_path), 3000)), 2)
        end
        helpers.sleep(0.02)
    end
    return gw
end

--- ws://127.0.0.1:PORT/PATH for this gateway's first listener (or listener I).
function Gw:url(path, i)
    local scheme = (self.conf and self.conf.listen[i or 1] and listener_is_tls(self.conf.listen[i or 1])) and "wss" or "ws"
    return fmt("%s://127.0.0.1:%d%s", scheme, self.ports[i or 1], path or "/")
end

-- Start time of PID (field 22 of /proc/PID/stat), to tell a process from a
-- later one that reused its pid; nil when gone.
local function start_time(pid)
    local stat = helpers.read_file("/proc/" .. pid .. "/stat")
    if not stat then return nil end
    local after = stat:match("%)%s(.*)$")
    local i = 2                                -- fields after ")" start at 3 (state)
    for f in after:gmatch("%S+") do
        i = i + 1
        if i == 22 then return f end
    end
end

--- PIDs of its workers (children of the master, from /proc/*/stat). Every
-- worker seen is remembered, so that one outliving the master is noticed.
function Gw:worker_pids()
    local w = helpers.children(self.pid)
    self._seen = self._seen or {}
    for _, pid in ipairs(w) do
        if not self._seen[pid] then self._seen[pid] = start_time(pid) end
    end
    return w
end

-- Workers seen and still running (the same processes, not a reused pid).
function Gw:_live_workers()
    if state.pids[self.pid] then self:worker_pids() end      -- never scan a reaped (reusable) pid
    local out = {}
    for pid, st in pairs(self._seen or {}) do
        if st and helpers.alive(pid) and start_time(pid) == st then out[#out + 1] = pid end
    end
    return out
end

--- Resident memory of master + workers, KiB.
function Gw:rss_kb()
    local total = helpers.rss_kb(self.pid)
    for _, w in ipairs(self:worker_pids()) do total = total + helpers.rss_kb(w) end
    return total
end

-- After the master exited: wait up to 5 s for the workers seen (orphans
-- now) to exit, SIGKILL those that do not, and say so.
function Gw:_reap_workers()
    local ok = pcall(helpers.wait_until, function() return #self:_live_workers() == 0 end, 5)
    if ok then return true end
    for _, w in ipairs(self:_live_workers()) do psig.kill(w, psig.SIGKILL) end
    return false
end

--- Wait for the master to exit (after a signal the spec sent itself);
-- returns its exit code, or nil, "signal N" / "timeout". Errors when a
-- worker outlives the master.
function Gw:wait(timeout)
    if not state.pids[self.pid] then return self.exit_code, self.exit_how end
    self:worker_pids()
    local code, how = helpers.wait(self.pid, timeout or 15)
    if how == "timeout" then return code, how end
    self.exit_code, self.exit_how = code, how
    if not self:_reap_workers() then error("a weir worker outlived its master", 2) end
    return code, how
end

--- Kill master and workers with SIGKILL and reap the master.
function Gw:kill_all()
    if state.pids[self.pid] then
        self:worker_pids()
        psig.kill(self.pid, psig.SIGKILL)
        helpers.wait(self.pid, 5)
    end
    for _, w in ipairs(self:_live_workers()) do psig.kill(w, psig.SIGKILL) end
end

--- Send SIGNAME (default TERM) to the master and wait for it to exit.
-- Returns its exit code (nil, "signal N" if a signal ended it). Errors when
-- it does not exit within TIMEOUT (15 s; then it is killed with SIGKILL) or
-- when a worker outlives it.
function Gw:stop(signame, timeout)
    if not state.pids[self.pid] then return self.exit_code, self.exit_how end
    self:worker_pids()
    helpers.kill(self.pid, signame or "TERM")
    local code, how = helpers.wait(self.pid, timeout or 15)
    if how == "timeout" then
        self:kill_all()
        error(fmt("weir (pid %d) did not exit within %ss of SIG%s", self.pid, timeout or 15, signame or "TERM"), 2)
    end
    self.exit_code, self.exit_how = code, how
    if not self:_reap_workers() then error("a weir worker outlived its master", 2) end
    return code, how
end

--- Its log records, decoded (a line that is not JSON becomes {_raw = line}).
function Gw:logs()
    local s = self.log_path and helpers.read_file(self.log_path) or ""
    local out = {}
    for line in s:gmatch("[^\n]+") do
        local rec = decode(line)
        out[#out + 1] = type(rec) == "table" and rec or { _raw = line }
    end
    return out
end

--- Wait for a log record matching PRED(record); returns it.
function Gw:wait_log(pred, timeout)
    return helpers.wait_until(function()
        for _, r in ipairs(self:logs()) do
            if pred(r) then return r end
        end
    end, timeout or 10, "a matching log record in " .. tostring(self.log_path))
end

--- Rewrite its configuration file: a copy of the configuration it runs,
-- changed by EDIT(conf) (then reload it to apply it).
function Gw:rewrite(edit)
    local c = helpers.deepcopy(self.conf)
    edit(c)
    helpers.write_file(self.conf_path, helpers.serialize(c))
    self.conf = c
end

--- SIGHUP the master and wait until WORKERS workers (default: the
-- configuration's count, else 1) logged "worker reloaded" once more.
function Gw:reload(workers)
    workers = workers or (type(self.conf) == "table" and tonumber(self.conf.workers)) or 1
    local function count()
        local n = 0
        for _, r in ipairs(self:logs()) do if r.msg == "worker reloaded" then n = n + 1 end end
        return n
    end
    local before = count()
    helpers.kill(self.pid, "HUP")
    helpers.wait_until(function() return count() >= before + workers end, 20, workers .. " worker(s) reloaded")
end

--- weir's stderr so far.
function Gw:stderr()
    return helpers.read_file(self.stderr_path) or ""
end

--- Whether the master still runs.
function Gw:alive()
    return state.pids[self.pid] ~= nil and helpers.alive(self.pid)
end

--------------------------------------------------------------------------
-- backends
--------------------------------------------------------------------------

local Be = {}
Be.__index = Be

--- Start a backend of KIND on a free port:
--   "echo"       ws server echoing every message with its opcode, obeying
--                control messages (spec/support/README.md)
--   "slow"       reads at opts.rate bytes/s (20 MB/s default), counts and hashes bytes
--   "frames"     own frame parser: records and echoes every frame as it came
--   "http"       answers 200 to the upgrade
--   "bad-accept" answers 101 with a wrong Sec-WebSocket-Accept
--   "tls-echo"   echo over wss; opts.cert/opts.key, or a certificate made now
--   "refuse"     a free port with nothing listening
-- opts: protocol ("first" or a name to choose when offered), headers_101
-- (extra headers on the 101), no_echo, greeting, rate.
-- Returns be {port=, pid=, url=, kind=, stop=function, ...}.
function helpers.start_backend(kind, opts)
    opts = deepcopy(opts or {})
    local be = setmetatable({ kind = kind }, Be)
    if kind == "refuse" then
        be.port = helpers.free_port()
        be.url = fmt("ws://127.0.0.1:%d", be.port)
        be.stop = function() end
        return be
    end
    opts.kind, opts.port = kind, opts.port or 0      -- 0: the backend picks a port and prints it
    if kind == "tls-echo" and not opts.cert then
        local c = helpers.make_cert("backend")
        opts.cert, opts.key = c.cert, c.key
    end
    be.ca, be.cert, be.key = opts.cert, opts.cert, opts.key
    local out, err = next_name("backend-" .. kind, ".stdout"), next_name("backend-" .. kind, ".stderr")
    local argv = { "node", helpers.support .. "/backend.js", cjson.encode(opts) }
    be.pid = helpers.spawn(argv, { stdout = out, stderr = err })
    be.stdout_path, be.stderr_path = out, err
    local ok, e = pcall(helpers.wait_until, function()
        local line = (helpers.read_file(out) or ""):match("[^\n]*listening[^\n]*\n")
        if line then return true end
        if not helpers.alive(be.pid) then error("backend " .. kind .. " died: " .. (helpers.read_file(err) or "")) end
    end, 15, "backend " .. kind .. " to listen")
    if not ok then helpers.stop_pid(be.pid); error(e, 2) end
    local ready = helpers.json(helpers.read_file(out):match("[^\n]*listening[^\n]*"))
    be.port, be.events_port = ready.listening, ready.events
    be.url = kind == "tls-echo" and fmt("wss://localhost:%d", be.port) or fmt("ws://127.0.0.1:%d", be.port)
    be.stop = function(_, sig)
        if sig then helpers.kill(be.pid, sig); return helpers.wait(be.pid, 5) end
        return helpers.stop_pid(be.pid)
    end
    return be
end

--- Everything the backend has seen: {connections = {...}} (see README.md).
function Be:events()
    local res, err = helpers.http_request(self.events_port or self.port, { path = "/__events", timeout = 5 })
    if not res then error("backend events: " .. tostring(err), 2) end
    return helpers.json(res.body)
end

--- Its connection records.
function Be:connections()
    return self:events().connections
end

--- Wait until PRED(connections) is truthy; returns its value.
function Be:wait_conns(pred, timeout, what)
    return helpers.wait_until(function() return pred(self:connections()) end,
        timeout or 10, what or "backend connections to match")
end

--- Wait until the backend has seen N connections (default 1); returns the Nth.
function Be:wait_conn(n, timeout)
    n = n or 1
    return self:wait_conns(function(c) return c[n] end, timeout, n .. " backend connection(s)")
end

--- Wait until the Nth connection (default: the last) is closed; returns its record.
function Be:wait_closed(n, timeout)
    return helpers.wait_until(function()
        local c = self:connections()
        local rec = c[n or #c]
        return rec and rec.closed and rec
    end, timeout or 10, "backend connection to close")
end

--- Wait for the record of the connection whose path was "/ID" and for
-- which PRED(record) holds (default: any); returns it.
function Be:record(id, pred, timeout, what)
    return self:wait_conns(function(conns)
        for _, c in ipairs(conns) do
            if c.url == "/" .. id and (not pred or pred(c)) then return c end
        end
    end, timeout or 10, what or ("the backend record of " .. id))
end

--- The texts of the data messages a backend record holds, in order.
function helpers.texts(rec)
    local out = {}
    for _, e in ipairs(rec.events) do
        if e.type == "message" then out[#out + 1] = e.text end
    end
    return out
end

--- Clear the recorded connections.
function Be:reset()
    helpers.http_request(self.events_port or self.port, { path = "/__reset" })
end

--- The value of header NAME (case-insensitive) in a backend record; nil if absent.
-- All values (in order) as a second result.
function helpers.header(rec, name)
    local all = {}
    for _, kv in ipairs(rec.headers) do
        if kv[1]:lower() == name:lower() then all[#all + 1] = kv[2] end
    end
    return all[1], all
end

--------------------------------------------------------------------------
-- real WebSocket clients
--------------------------------------------------------------------------

local Client = {}
Client.__index = Client

local client_argv = {
    node   = function(file) return { "node", helpers.support .. "/client.js", file } end,
    python = function(file) return { "/usr/bin/python3", helpers.support .. "/client.py", file } end,
}
helpers.client_impls = { "node", "python" }

--- Start a scripted client of IMPL ("node" or "python") running SCENARIO
-- (see README.md); returns a handle whose :wait() returns the transcript.
function helpers.ws_client_start(impl, scenario)
    assert(client_argv[impl], "unknown client " .. tostring(impl))
    local file = next_name("scenario-" .. impl, ".json")
    helpers.write_file(file, cjson.encode(scenario))
    local out, err = next_name("client-" .. impl, ".stdout"), next_name("client-" .. impl, ".stderr")
    local pid = helpers.spawn(client_argv[impl](file), { stdout = out, stderr = err })
    return setmetatable({ impl = impl, pid = pid, out = out, err = err,
                          timeout = (scenario.timeout or 20) + 15 }, Client)
end

--- Whether the client process is still running.
function Client:running()
    if self.transcript or self.code ~= nil then return false end
    local p = pwait.wait(self.pid, pwait.WNOHANG)
    if p == self.pid then
        state.pids[self.pid] = nil
        self.code = true
        return false
    end
    return true
end

--- Wait for the client to finish; returns its transcript (errors if it
-- printed none).
function Client:wait(timeout)
    if self.transcript then return self.transcript end
    if self.code == nil then
        local code, how = helpers.wait(self.pid, timeout or self.timeout)
        if how == "timeout" then
            helpers.kill(self.pid, "KILL")
            helpers.wait(self.pid, 5)
            error(self.impl .. " client did not finish; stderr: " .. tail(helpers.read_file(self.err), 2000), 2)
        end
        self.code = code
    end
    local s = helpers.read_file(self.out) or ""
    local t = decode(s)
    if type(t) ~= "table" then
        error(self.impl .. " client printed no transcript; stdout: " .. tail(s, 1000)
              .. "\nstderr: " .. tail(helpers.read_file(self.err), 2000), 2)
    end
    self.transcript = t
    return t
end

--- Run a scripted client to completion; returns its transcript.
function helpers.ws_client(impl, scenario)
    return helpers.ws_client_start(impl, scenario):wait()
end

--- Transcript helpers: its events of TYPE ("message", "ping", "pong", "close", "error").
function helpers.events_of(t, typ)
    local out = {}
    for _, e in ipairs(t.events or {}) do
        if e.type == typ then out[#out + 1] = e end
    end
    return out
end

--------------------------------------------------------------------------
-- cleanup
--------------------------------------------------------------------------

--- Kill every process this spec file started (weir workers included),
-- reap them, and remove the temporary directory (kept when WEIR_SPEC_KEEP
-- is set).
function helpers.cleanup()
    for _, gw in ipairs(state.weirs) do pcall(Gw.kill_all, gw) end
    state.weirs = {}
    for pid in pairs(state.pids) do
        psig.kill(pid, psig.SIGKILL)
        pwait.wait(pid)
        state.pids[pid] = nil
    end
    if state.tmpdir and not os.getenv("WEIR_SPEC_KEEP") then
        os.execute("rm -rf " .. shell_quote(state.tmpdir))
        state.tmpdir = nil
    end
end

--------------------------------------------------------------------------
-- policies: fixture policies, a held-back HTTP server, many clients
--------------------------------------------------------------------------

--- The directory of the specs' test policies (put it in `policy_paths`).
helpers.fixture_policies = ROOT .. "/spec/fixtures/policies"

--- An API entry like helpers.api whose default version "1.0" runs the chain
-- POLICIES (a list of { NAME, CONF [, fail_open = true] }). extra.sandbox (a
-- backend or a URL) adds a sandbox endpoint; other fields of EXTRA are set on
-- the API.
function helpers.policy_api(name, context, backend_or_url, policies, extra)
    local api = helpers.api(name, context, backend_or_url)
    local v = api.versions[1]
    v.policies = deepcopy(policies or {})
    for k, x in pairs(extra or {}) do
        if k == "sandbox" then
            v.endpoints.sandbox = type(x) == "table" and x.url or x
        else
            api[k] = x
        end
    end
    return api
end

--- Read, from a raw client (helpers.ws_connect), the error JSON of problem
-- PTYPE with error.code CODE and then the close frame with that code.
-- Returns the decoded JSON and the close frame; errors otherwise.
function helpers.expect_error_close(ws, ptype, code, timeout)
    local msg, err, close = ws:recv_message(timeout or 10)
    if not msg then error("no error JSON before the close (" .. tostring(err) .. ")", 2) end
    local j = helpers.check_error(msg.payload, ptype, code, 2)
    close = close or ws:recv_close(timeout or 10)
    if not close then error("no close frame after the error JSON", 2) end
    if close.code ~= code then
        error(fmt("close code %s, expected %d", tostring(close.code), code), 2)
    end
    return j, close
end

local Slow = {}
Slow.__index = Slow

--- Start spec/support/slow_http.py: an HTTP server whose /hold/ID answers
-- only once the spec calls srv:release(ID). Returns srv with port, pid,
-- url(path), seen(id), release(id), stop().
function helpers.start_slow_http()
    local out, err = next_name("slow-http", ".stdout"), next_name("slow-http", ".stderr")
    local pid = helpers.spawn({ "/usr/bin/python3", helpers.support .. "/slow_http.py" },
        { stdout = out, stderr = err })
    local line = helpers.wait_until(function()
        local l = (helpers.read_file(out) or ""):match("[^\n]*\n")
        if l then return l end
        if not helpers.alive(pid) then error("slow_http.py died: " .. (helpers.read_file(err) or ""), 3) end
    end, 15, "slow_http.py to listen")
    local ready = helpers.json(line)
    return setmetatable({ pid = pid, port = ready.port }, Slow)
end

function Slow:url(path)
    return fmt("http://127.0.0.1:%d%s", self.port, path or "/")
end

local function slow_get(self, path)
    local res, err = helpers.http_request(self.port, { path = path, timeout = 5 })
    if not res then error("slow_http " .. path .. ": " .. tostring(err), 3) end
    return res.body
end

--- Whether a /hold/ID request has arrived.
function Slow:seen(id) return slow_get(self, "/seen/" .. id) == "1" end

--- Let /hold/ID answer.
function Slow:release(id) return slow_get(self, "/release/" .. id) end

function Slow:stop() return helpers.stop_pid(self.pid) end

local Many = {}
Many.__index = Many

--- Start spec/support/many_ws.js with OPTS (mode "hold" or "stream", url,
-- count, …; see the script's header). Returns a handle: :events(),
-- :wait_event(name [, n, timeout]) (the Nth event of that name), :signal(sig),
-- :wait_exit().
function helpers.start_many_ws(opts)
    local out, err = next_name("many-ws", ".stdout"), next_name("many-ws", ".stderr")
    local pid = helpers.spawn({ "node", helpers.support .. "/many_ws.js", cjson.encode(opts) },
        { stdout = out, stderr = err })
    return setmetatable({ pid = pid, out = out, err = err }, Many)
end

function Many:events()
    local evs = {}
    for line in (helpers.read_file(self.out) or ""):gmatch("([^\n]*)\n") do
        evs[#evs + 1] = helpers.json(line)
    end
    return evs
end

function Many:wait_event(name, n, timeout)
    n = n or 1
    local function find()
        local k = 0
        for _, e in ipairs(self:events()) do
            if e.event == name then
                k = k + 1
                if k == n then return e end
            end
        end
    end
    return helpers.wait_until(function()
        local e = find()
        if e then return e end
        if not helpers.alive(self.pid) then
            e = find()                     -- it may have printed it just before exiting
            if e then return e end
            error("many_ws.js exited before event " .. name .. "; stderr: "
                  .. tail(helpers.read_file(self.err), 2000), 3)
        end
    end, timeout or 30, "many_ws.js event " .. name .. " #" .. n)
end

function Many:signal(sig) return helpers.kill(self.pid, sig) end

function Many:wait_exit(timeout) return helpers.wait(self.pid, timeout or 15) end

--------------------------------------------------------------------------
-- a Redis server of the spec's own
--------------------------------------------------------------------------

local Rd = {}
Rd.__index = Rd

--- Start redis-server (Debian's) on a free loopback port, or on opts.port
-- (to start it again where it was), with no persistence (`--save ""`,
-- `--appendonly no`) in the spec's temp dir: never the system's service.
-- opts.password: `--requirepass` (then :command authenticates).
-- Returns rd: port, pid, url ("redis://127.0.0.1:PORT"), log_path, db (0:
-- the database :command uses), and :command(...), :kill(sig), :stop(),
-- :restart(). Stopped by PID at cleanup.
function helpers.start_redis(opts)
    opts = opts or {}
    local port = opts.port or helpers.free_port()
    local log = next_name("redis", ".log")
    local argv = { "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", helpers.tmpdir(), "--logfile", log, "--daemonize", "no" }
    if opts.password then argv[#argv + 1] = "--requirepass"; argv[#argv + 1] = opts.password end
    local pid = helpers.spawn(argv)
    local rd = setmetatable({ port = port, pid = pid, log_path = log, password = opts.password, db = 0,
                              url = fmt("redis://127.0.0.1:%d", port) }, Rd)
    helpers.wait_until(function()
        if not helpers.alive(pid) then
            error("redis-server died: " .. tail(helpers.read_file(log), 1000), 3)
        end
        local ok, pong = pcall(rd.command, rd, "PING")
        return ok and pong == "PONG"
    end, 15, "redis-server to answer PING")
    return rd
end

-- One RESP reply from SOCK: a string, a number, a list, nil, or
-- false and the error's text.
local function resp_read(sock)
    local line = assert(sock:receive("*l"))
    local kind, rest = line:sub(1, 1), line:sub(2)
    if kind == "+" then return rest end
    if kind == "-" then return false, rest end
    if kind == ":" then return tonumber(rest) end
    if kind == "$" then
        local n = tonumber(rest)
        if n < 0 then return nil end
        local data = assert(sock:receive(n + 2))
        return data:sub(1, n)
    end
    if kind == "*" then
        local n, out = tonumber(rest), {}
        for i = 1, n do out[i] = resp_read(sock) end
        return out
    end
    error("unexpected RESP reply: " .. line)
end

local function resp_encode(args)
    local out = { "*" .. #args .. "\r\n" }
    for _, a in ipairs(args) do
        a = tostring(a)
        out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
    end
    return concat(out)
end

--- Run one Redis command (its arguments as strings or numbers), after AUTH
-- (rd.password) and SELECT (rd.db) when set; returns the reply (see
-- resp_read). Errors when Redis cannot be reached.
function Rd:command(...)
    local sock = assert(socket.tcp())
    sock:settimeout(5)
    local ok, err = sock:connect("127.0.0.1", self.port)
    if not ok then sock:close(); error("redis: " .. tostring(err), 2) end
    local pre = 0
    if self.password then assert(sock:send(resp_encode({ "AUTH", self.password }))); pre = pre + 1 end
    if self.db ~= 0 then assert(sock:send(resp_encode({ "SELECT", self.db }))); pre = pre + 1 end
    assert(sock:send(resp_encode({ ... })))
    for _ = 1, pre do
        local r, e = resp_read(sock)
        if r == false then sock:close(); error("redis: " .. tostring(e), 2) end
    end
    local r, e = resp_read(sock)
    sock:close()
    return r, e
end

--- Send SIG (default TERM) to the server, by its PID; for KILL, TERM and
-- INT, wait until it is gone.
function Rd:kill(sig)
    helpers.kill(self.pid, sig or "TERM")
    if sig == nil or sig == "KILL" or sig == "TERM" or sig == "INT" then helpers.wait(self.pid, 10) end
end

function Rd:stop()
    if state.pids[self.pid] then helpers.stop_pid(self.pid) end
end

--- Start it again on the same port (after kill or stop); empty.
function Rd:restart()
    local n = helpers.start_redis({ port = self.port, password = self.password })
    self.pid, self.log_path = n.pid, n.log_path
    return self
end

-- Belt and braces: if a spec file forgets teardown, its processes are
-- killed when busted's insulation drops this module and it is collected.
local sentinel = newproxy(true)
getmetatable(sentinel).__gc = function() pcall(helpers.cleanup) end
helpers._sentinel = sentinel

math.randomseed(os.time() + unistd.getpid())

--- The next data message on WS (a helpers.ws_connect client), within 10 s:
-- returns its payload and the message; fails the spec naming what came instead.
--- Send each text of MSGS on the raw client WS and return the echoes, in
-- order; messages dropped over a rate limit get no echo (their
-- /problems/throttled notices are left out): a ping sent after them tells
-- when every echo that will come has come.
function helpers.exchange(ws, msgs)
    local got = {}
    for _, m in ipairs(msgs) do assert(ws:send_text(m)) end
    assert(ws:ping("done"))
    while true do
        local f = assert(ws:recv_frame(10))
        if f.opcode == 10 and f.payload == "done" then return got end
        if f.opcode == 1 and not f.payload:find("/problems/throttled", 1, true) then got[#got + 1] = f.payload end
    end
end

function helpers.recv_payload(ws)
    local m, err, close = ws:recv_message(10)
    assert(m, "no message (" .. tostring(err) .. (close and (" " .. tostring(close.code)) or "") .. ")")
    return m.payload, m
end

--- Send TEXT on WS and return the next message's payload (and the message).
function helpers.ask(ws, text)
    assert(ws:send_text(text))
    return helpers.recv_payload(ws)
end

--- One request to the admin API on 127.0.0.1:PORT with the admin TOKEN
-- (Bearer); JSON (a string) is the body, sent as application/json.
-- Returns the response (helpers.http_request's) with .json decoded.
function helpers.admin_request(port, token, method, path, json)
    local headers = { { "Authorization", "Bearer " .. token } }
    if json then headers[#headers + 1] = { "Content-Type", "application/json" } end
    local res = assert(helpers.http_request(port, { method = method, path = path, headers = headers, body = json,
                                                    timeout = 10 }))
    res.json = require("cjson.safe").decode(res.body)
    return res
end

--- Start a weir of 2 workers with the admin API (its token file in DIR,
-- holding TOKEN) and CONF's other fields; gw.admin_port is the admin port.
function helpers.start_weir_admin(conf, dir, token)
    helpers.write_file(dir .. "/admin.token", token .. "\n")
    local c = deepcopy(conf)
    c.workers = c.workers or 2
    c.admin = { port = helpers.free_port(), token_file = dir .. "/admin.token" }
    local g = helpers.start_weir(c)
    g.admin_port = c.admin.port
    helpers.wait_port(g.admin_port)
    return g
end

return helpers
