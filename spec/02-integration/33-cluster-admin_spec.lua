-- The admin API across hosts (docs/admin-api.md, "Several hosts"): two weir
-- instances share one real redis-server (started by the spec on a free
-- loopback port); a connection held by one is listed, described, pushed to
-- and closed through the other's admin API, one by one and in bulk; with
-- Redis stopped the admin API still answers for its own host, and the
-- other host's connections come back once Redis does.
local helpers = require "helpers"
local cjson = require "cjson.safe"

local TOKEN = "admin-token-" .. string.rep("c", 24)

describe("the admin API across two hosts sharing Redis", function()
    local be, rd, dir
    local gw = {}         -- gw[1], gw[2], each with .admin_port
    local clients = {}

    local function admin(g, method, path, json)
        return helpers.admin_request(g.admin_port, TOKEN, method, path, json)
    end

    local function start(name)
        return helpers.start_weir_admin({ state = { redis = rd.url, host = name, timeout = "2s" },
                                          apis = { helpers.api("Echo", "/echo", be) } }, dir, TOKEN)
    end

    setup(function()
        be = helpers.start_backend("echo")
        rd = helpers.start_redis()
        dir = helpers.tmpdir()
        gw[1] = start("alpha")
        gw[2] = start("beta")
        -- each host sees the other
        for i = 1, 2 do
            helpers.wait_until(function()
                local st = admin(gw[i], "GET", "/status").json
                return st.cluster and #st.cluster.peers == 1
            end, 15, "host " .. i .. " to see its peer")
        end
    end)

    teardown(function()
        for _, ws in ipairs(clients) do pcall(ws.close, ws) end
        helpers.cleanup()
    end)

    local function connect(g)
        local ws = assert(helpers.ws_connect(g.port, { path = "/echo" }))
        clients[#clients + 1] = ws
        return ws
    end

    it("names its hosts in /status", function()
        local st = admin(gw[1], "GET", "/status").json
        assert.equal("alpha", st.cluster.host)
        assert.same({ "beta" }, st.cluster.peers)
    end)

    it("lists the other host's connections after its own, and describes one of them", function()
        local a, b = connect(gw[1]), connect(gw[2])
        local l = helpers.wait_until(function()
            local r = admin(gw[1], "GET", "/connections").json
            return r.total == 2 and r
        end, 30, "both connections listed")
        assert.equal("alpha", l.connections[1].host)
        assert.equal("beta", l.connections[2].host)
        assert.truthy(l.connections[2].id:match("^w%d+%-%d+@beta$"))
        local one = admin(gw[1], "GET", "/connections/" .. l.connections[2].id)
        assert.equal(200, one.status, one.body)
        assert.equal(l.connections[2].id, one.json.id)
        -- paging across hosts
        local p2 = admin(gw[1], "GET", "/connections?limit=1&offset=1").json
        assert.equal(2, p2.total)
        assert.equal(l.connections[2].id, p2.connections[1].id)
        a:close(); b:close()
    end)

    it("pushes to and closes a connection held by the other host", function()
        local ws = connect(gw[2])
        local id = helpers.wait_until(function()
            for _, c in ipairs(admin(gw[1], "GET", "/connections?limit=1000").json.connections) do
                if c.host == "beta" then return c.id end
            end
        end, 30, "beta's connection")
        local r = admin(gw[1], "POST", "/connections/" .. id .. "/messages", '{"text":"from alpha"}')
        assert.equal(200, r.status, r.body)
        assert.equal(1, r.json.delivered)
        assert.equal("from alpha", helpers.recv_payload(ws))
        r = admin(gw[1], "DELETE", "/connections/" .. id, '{"code":4002,"message":"bye from alpha"}')
        assert.equal(200, r.status, r.body)
        helpers.expect_error_close(ws, "/problems/closed-by-operator", 4002)
        assert.equal(404, admin(gw[1], "GET", "/connections/w0-999999@beta").status)
    end)

    it("pushes to and closes every connection of both hosts matching a filter", function()
        local socks = { connect(gw[1]), connect(gw[2]), connect(gw[2]) }
        helpers.wait_until(function() return admin(gw[2], "GET", "/connections?api=Echo").json.total == 3 end,
                           30, "three connections")
        local r = admin(gw[2], "POST", "/connections/messages?api=Echo", '{"text":"all"}')
        assert.equal(200, r.status, r.body)
        assert.same({ 3, 3 }, { r.json.matched, r.json.delivered })
        for _, ws in ipairs(socks) do assert.equal("all", helpers.recv_payload(ws)) end
        r = admin(gw[2], "DELETE", "/connections?api=Echo&code=1001")
        assert.same({ 3, 3 }, { r.json.matched, r.json.closed })
        for _, ws in ipairs(socks) do helpers.expect_error_close(ws, "/problems/closed-by-operator", 1001) end
    end)

    it("keeps answering for its own host while Redis is stopped, and reaches the other again after", function()
        local mine, theirs = connect(gw[1]), connect(gw[2])
        helpers.wait_until(function() return admin(gw[1], "GET", "/connections").json.total == 2 end, 30, "two")
        helpers.kill(rd.pid, "STOP")
        local r = admin(gw[1], "GET", "/connections")
        assert.equal(200, r.status, r.body)
        assert.truthy(r.json.total >= 1)               -- its own, at least
        assert.truthy(helpers.alive(gw[1].pid) and helpers.alive(gw[2].pid))
        helpers.kill(rd.pid, "CONT")
        helpers.wait_until(function() return admin(gw[1], "GET", "/connections").json.total == 2 end, 20,
                           "the other host's connection again")
        assert(mine:send_text("still")); assert.equal("still", helpers.recv_payload(mine))
        assert(theirs:send_text("still")); assert.equal("still", helpers.recv_payload(theirs))
        mine:close(); theirs:close()
    end)

    it("finds the other host again after Redis is killed and started anew (empty) on its port", function()
        local theirs = connect(gw[2])
        helpers.kill(rd.pid, "KILL")
        helpers.wait(rd.pid, 10)
        assert.equal(200, admin(gw[1], "GET", "/status").status)     -- its own host still answers
        rd = helpers.start_redis({ port = rd.port })
        helpers.wait_until(function()
            for _, c in ipairs(admin(gw[1], "GET", "/connections?limit=1000").json.connections) do
                if c.host == "beta" then return true end
            end
        end, 30, "beta's connection listed through the new Redis")
        assert.truthy(helpers.alive(gw[1].pid) and helpers.alive(gw[2].pid))
        assert(theirs:send_text("after")); assert.equal("after", helpers.recv_payload(theirs))
        theirs:close()
    end)
end)
