-- Half-open peers: a client or a backend whose network vanished (no FIN, no
-- RST) is found by keep-alive within ping_interval + ping_timeout
-- (docs/protocol.md, "Keep-alive").
--
-- The peer runs in a network namespace this spec makes, joined to the host by
-- a veth pair with addresses of its own (10.231.N.0/30: the traffic never
-- leaves the two ends of the pair). Its packets are stopped by setting the
-- namespace's end of the pair down: what weir sends is dropped by the veth
-- (its peer is down) and nothing comes back, so weir's socket stays
-- established, as it would towards a peer whose cable was pulled. (This
-- kernel has no qdisc or netfilter modules, so no tc or iptables drop rule:
-- taking the link down is what really stops the packets here.)
--
-- Needs root and `ip` (iproute2); pending otherwise.
local helpers = require "helpers"
local unistd = require "posix.unistd"

local PID = unistd.getpid()
local NS = "weir-ho-" .. PID
local HOST_IF, NS_IF = "who" .. PID .. "h", "who" .. PID .. "n"
local NET = "10.231." .. (PID % 256) .. "."
local HOST_ADDR, NS_ADDR = NET .. "1", NET .. "2"

local function ip(...)
    local code, _, err = helpers.run({ "ip", ... }, { timeout = 10 })
    return code == 0, err
end

-- Create the namespace and the pair; false and why when this host cannot.
local function make_net()
    if unistd.geteuid() ~= 0 then return false, "not root" end
    local steps = {
        { "netns", "add", NS },
        { "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF, "netns", NS },
        { "addr", "add", HOST_ADDR .. "/30", "dev", HOST_IF },
        { "link", "set", HOST_IF, "up" },
        { "-n", NS, "addr", "add", NS_ADDR .. "/30", "dev", NS_IF },
        { "-n", NS, "link", "set", NS_IF, "up" },
        { "-n", NS, "link", "set", "lo", "up" },
    }
    for _, s in ipairs(steps) do
        local ok, err = ip(unpack(s))
        if not ok then return false, "ip " .. table.concat(s, " ") .. ": " .. err end
    end
    return true
end

-- Remove what make_net made, by name (deleting one end removes the pair).
local function remove_net()
    ip("link", "del", HOST_IF)
    ip("netns", "del", NS)
end

-- Stop every packet between the namespace and the host.
local function cut()
    assert(ip("-n", NS, "link", "set", NS_IF, "down"))
end

-- Stop what the specs started, then remove the namespace and the pair.
local function clean_up()
    helpers.cleanup()
    remove_net()
end

-- The backend's record of the connection to /ID that satisfies PRED.
local function record(be, id, pred, what)
    return be:wait_conns(function(conns)
        for _, c in ipairs(conns) do
            if c.url == "/" .. id and pred(c) then return c end
        end
    end, 20, what)
end

local LIMITS = { ping_interval = "1s", ping_timeout = "1s", idle_timeout = 0, close_timeout = 2 }

local usable, why
remove_net()                     -- a leftover of a killed run with the same pid
usable, why = make_net()
if not usable then remove_net() end

if not usable then
    describe("half-open peers", function()
        pending("needs network namespaces: " .. tostring(why))
    end)
    return
end

describe("a half-open client", function()
    local be, gw

    setup(function()
        be = helpers.start_backend("echo")
        gw = helpers.start_weir({
            limits = LIMITS,
            listen = { { address = "127.0.0.1" }, { address = HOST_ADDR } },
            apis = { helpers.api("Echo", "/echo", be) },
        })
    end)
    teardown(clean_up)

    it("is closed by keep-alive, and the backend gets 1001", function()
        local id = "half-open-client"
        local scenario = helpers.tmpdir() .. "/half-open-client.json"
        helpers.write_file(scenario, require("cjson").encode({
            url = ("ws://%s:%d/echo/1.0/%s"):format(HOST_ADDR, gw.ports[2], id), timeout = 120,
            steps = { { op = "send", text = "hello" }, { op = "wait", messages = 1 }, { op = "wait", close = true } },
        }))
        local client = helpers.spawn({ "ip", "netns", "exec", NS, "node", helpers.support .. "/client.js", scenario })
        -- the backend echoed the client's message: the session is open
        record(be, id, function(c) return c.messages == 1 end, "the client's message at the backend")
        cut()
        gw:wait_log(function(r) return r.msg == "keepalive timeout" and r.side == "client" end, 30)
        local rec = record(be, id, function(c) return c.closed end, "the backend connection to close")
        assert.equal(1001, rec.closed.code)
        -- the client never closed: it is still there, its packets going nowhere
        assert.is_true(helpers.alive(client))
    end)
end)

describe("a half-open backend", function()
    local be, gw

    setup(function()
        assert(make_net())
        be = helpers.start_backend("echo", { host = NS_ADDR, netns = NS })
        gw = helpers.start_weir({
            limits = LIMITS,
            apis = { helpers.api("Echo", "/echo", be) },
        })
    end)
    teardown(clean_up)

    it("is closed by keep-alive, and the client gets bad-gateway JSON and 1014", function()
        local ws = assert(helpers.ws_connect(gw.port, { path = "/echo/1.0/half-open-backend" }))
        ws:send_text("hello")
        assert.equal("hello", assert(ws:recv_message(10)).payload)
        cut()
        -- read (answering weir's pings: this client is alive) until weir gives up on the backend
        local m, err, close = ws:recv_message(30)
        assert(m, "no error message before the close: " .. tostring(err))
        helpers.check_error(m.payload, "/problems/bad-gateway", 1014)
        m, err, close = ws:recv_message(10)
        assert.equal("close", err)
        assert.equal(1014, close.code)
        ws:close()
        gw:wait_log(function(r) return r.msg == "keepalive timeout" and r.side == "backend" end, 10)
        -- the backend never closed: it is still there, its packets going nowhere
        assert.is_true(helpers.alive(be.pid))
    end)
end)
