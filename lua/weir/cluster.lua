--- The weir instances ("hosts") that share one Redis (`state.redis`): each
-- one's name, which are alive, and requests from one host's admin API to
-- another host (list its connections, push to or close some, recheck them
-- after a revocation).
--
-- Worker 0 of each host writes a heartbeat (`<prefix>hosts`: name → the
-- time, every second) and takes the requests for its host from a Redis
-- list (`<prefix>cmd:<name>`, polled every 100 ms), answering each on the
-- asker's reply list. Requests and answers are JSON. Lists, not pub/sub: a
-- request waits in Redis while its host is briefly away, and the worker's
-- one Redis connection serves it (hiredis 0.14 would need a second
-- connection for SUBSCRIBE). An asker gives up on a host after 2 s.
--
-- @module weir.cluster

local ffi = require "ffi"
local cjson = require "cjson.safe"
local weir = require "weir"
local redis = require "weir.redis"

ffi.cdef [[
    int gethostname(char *name, size_t len);
    int getppid(void);
    int weir_ffi_worker(void);
]]
local C = ffi.C

local _M = {}

local HEARTBEAT = 1          -- seconds between heartbeats
local POLL = 0.1             -- seconds between looks at the request list
local STALE = 5              -- a host silent this long is not alive
local ASK_TIMEOUT = 2        -- seconds an asker waits for the answers
local BATCH = 64             -- requests taken at once

local handlers = {}          -- op → function(msg) returning the answer (a table)
local running                -- the request loop runs in this worker
local host_name

local function conf() return require("weir.runtime").conf end

--- Whether this weir shares state through Redis.
function _M.enabled()
    local c = conf()
    return c ~= nil and c.state ~= nil and c.state.redis ~= nil
end

local function prefix() return conf().state.key_prefix end

--- This host's name: state.host, or the machine's host name and the
-- master's pid.
function _M.host()
    if host_name then return host_name end
    local c = conf()
    if c and c.state and c.state.host then
        host_name = c.state.host
    else
        local buf = ffi.new("char[256]")
        local h = C.gethostname(buf, 255) == 0 and ffi.string(buf) or "weir"
        host_name = h:gsub("[^%w._-]", "_") .. "-" .. C.getppid()
    end
    return host_name
end

--- Answer requests of kind OP with FN(msg) → answer table.
function _M.handle(op, fn) handlers[op] = fn end

--- The other hosts alive now: a list of names (sorted), or nil and why.
function _M.peers()
    local all, err = redis.call("HGETALL", prefix() .. "hosts")
    if type(all) ~= "table" then return nil, err or "no answer" end
    local now_ms, me, out = weir.now() * 1000, _M.host(), {}
    for i = 1, #all - 1, 2 do
        local name, seen = all[i], tonumber(all[i + 1]) or 0
        if name ~= me then
            if now_ms - seen < STALE * 1000 then
                out[#out + 1] = name
            elseif now_ms - seen > 60000 then
                redis.call("HDEL", prefix() .. "hosts", name)       -- long gone
            end
        end
    end
    table.sort(out)
    return out
end

--- Send MSG (a table with `op`) to each host of HOSTS and wait for their
-- answers (at most ASK_TIMEOUT). Returns { [host] = answer } for those that
-- answered.
function _M.ask(hosts, msg)
    local got = {}
    if #hosts == 0 then return got end
    local rnd = weir.random_bytes(8) or tostring(math.random())
    local reply = prefix() .. "reply:" .. _M.host() .. ":" .. rnd:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
    msg.reply, msg.from = reply, _M.host()
    local raw = cjson.encode(msg)
    local want = 0
    for _, h in ipairs(hosts) do
        local key = prefix() .. "cmd:" .. h
        if redis.call("RPUSH", key, raw) then
            redis.call("PEXPIRE", key, 60000)
            want = want + 1
        end
    end
    local rt = require "weir.runtime"
    local deadline, n = weir.now() + ASK_TIMEOUT, 0
    while n < want and weir.now() < deadline do
        if rt.sleep(0.02) == nil then break end        -- the worker is stopping
        local items = redis.call("LPOP", reply, BATCH)
        if type(items) == "table" then
            for _, r in ipairs(items) do
                local a = cjson.decode(r)
                if type(a) == "table" and type(a.host) == "string" then
                    got[a.host] = a
                    n = n + 1
                end
            end
        end
    end
    redis.call("DEL", reply)
    return got
end

-- Answer one request RAW (JSON) taken from this host's list.
local function serve(raw)
    local msg = cjson.decode(raw)
    if type(msg) ~= "table" or type(msg.reply) ~= "string" then return end
    local fn = handlers[msg.op]
    local answer = { host = _M.host() }
    if fn then
        local ok, a = pcall(fn, msg)
        if ok and type(a) == "table" then
            for k, v in pairs(a) do answer[k] = v end
        else
            answer.error = ok and "no answer" or tostring(a)
        end
    else
        answer.error = "unknown request " .. tostring(msg.op)
    end
    redis.call("RPUSH", msg.reply, cjson.encode(answer))
    redis.call("PEXPIRE", msg.reply, 10000)
end

local function loop()
    local rt = require "weir.runtime"
    local key, last_beat = prefix() .. "cmd:" .. _M.host(), -1e9
    while running do
        local now = weir.now()
        if now - last_beat >= HEARTBEAT then
            if redis.call("HSET", prefix() .. "hosts", _M.host(), math.floor(now * 1000)) then last_beat = now end
        end
        local items = redis.call("LPOP", key, BATCH)
        if type(items) == "table" then
            for _, raw in ipairs(items) do rt.spawn(serve, raw) end
        end
        if rt.sleep(POLL) == nil then running = false end      -- the worker is stopping
    end
end

--- Start the heartbeat and the request loop, in worker 0 of a host with
-- state.redis (once; a reload calls it again).
function _M.start()
    if running or not _M.enabled() or C.weir_ffi_worker() ~= 0 then return end
    running = true
    require "weir.admin"          -- its answers to other hosts' requests
    require("weir.runtime").spawn(function()
        while running do
            local ok, err = pcall(loop)
            if not ok then
                weir.log("warn", "cluster request loop failed", { error = tostring(err) })
                if require("weir.runtime").sleep(1) == nil then running = false end
            end
        end
    end)
end

return _M
