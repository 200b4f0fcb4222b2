-- weir's live dashboard in headless Chromium (spec/support/dashboard.js):
-- the page served by a real weir's admin listener, a wrong token refused, a
-- login, known traffic from real clients through weir to a real backend,
-- the numbers on the page reaching what that traffic makes (weir.stats's
-- host-wide counters: throttled messages and authentication failures too),
-- a connection closed from the page (its client gets the close code), and a screenshot
-- kept under the spec's output directory (WEIR_SPEC_OUT, else a new
-- directory in /tmp; its path is printed).
local helpers = require "helpers"
local browser = require "support.browser"
local cjson = require "cjson.safe"

local TOKEN = "dashboard-admin-token-" .. string.rep("5", 16)
local KEY_A, KEY_B = "key-of-app-a-0123456789", "key-of-app-b-0123456789"

local available, why = browser.available()
local describe_browser = available and describe or function(name) pending(name .. ": " .. tostring(why)) end

describe_browser("the live dashboard in a browser", function()
    local be, gw, dir, drv, out_dir
    local clients = {}
    local cursor = 0        -- lines up to this one were matched already: a wait looks past them

    -- Lines the driver printed, decoded.
    local function lines()
        local t = {}
        for line in (helpers.read_file(drv.out) or ""):gmatch("([^\n]*)\n") do
            local ok, v = pcall(helpers.json, line)          -- JSON null → nil
            if ok and type(v) == "table" then t[#t + 1] = v end
        end
        return t
    end

    local function why_not()
        return "\ndriver stdout: " .. (helpers.read_file(drv.out) or ""):sub(-4000)
               .. "\nstderr: " .. (helpers.read_file(drv.err) or ""):sub(-2000)
               .. "\nweir's log: " .. (helpers.read_file(gw.log_path) or ""):sub(-3000)
    end

    -- The first line after those matched before for which PRED(line) holds.
    local function wait_line(pred, what, timeout)
        return helpers.wait_until(function()
            local all = lines()
            for i = cursor + 1, #all do
                local l = all[i]
                if l.kind == "fatal" then error("the driver failed: " .. tostring(l.error) .. why_not()) end
                if pred(l) then
                    cursor = i
                    return l
                end
            end
            if not helpers.alive(drv.pid) then error("the driver ended before " .. what .. why_not()) end
        end, timeout or 30, what)
    end

    -- The first page state for which PRED(page) holds.
    local function wait_page(pred, what, timeout)
        return wait_line(function(l) return l.kind == "state" and pred(l.page) end, what, timeout).page
    end

    local function command(name)
        local tmp = drv.commands .. "/.tmp"
        helpers.write_file(tmp, "")
        assert(os.rename(tmp, drv.commands .. "/" .. name))
    end

    local function row(rows, key)
        for _, r in ipairs(rows or {}) do if r.key == key then return r end end
    end

    local function connect(key, path)
        local ws = assert(helpers.ws_connect(gw.port, { path = path or "/echo", headers = { ["X-API-Key"] = key } }))
        clients[#clients + 1] = ws
        return ws
    end

    setup(function()
        be = helpers.start_backend("echo")
        dir = helpers.tmpdir()
        local keys = helpers.write_file(dir .. "/keys.txt", table.concat({
            "sha256:" .. helpers.sha256(KEY_A) .. "  application=AppA subscriber=alice tier=Gold",
            "sha256:" .. helpers.sha256(KEY_B) .. "  application=AppB subscriber=bob tier=Silver",
        }, "\n") .. "\n")
        local chain = { { "key-auth", { keys_file = keys, header = "X-API-Key" } } }
        gw = helpers.start_weir_admin({
            tiers = { Two = { limits = { { frames = 2, per = "hour", direction = "in" } }, action = "drop" } },
            apis = {
                helpers.policy_api("Echo", "/echo", be, chain),
                helpers.policy_api("Limited", "/limited", be,
                                   { { "throttling", { level = "subscription", anonymous_tier = "Two" } } }),
            },
        }, dir, TOKEN)
        out_dir = os.getenv("WEIR_SPEC_OUT")
        if not out_dir or out_dir == "" then
            out_dir = assert(io.popen("mktemp -d /tmp/weir-dashboard-spec-XXXXXX")):read("*l")
        end
        os.execute("mkdir -p '" .. out_dir .. "'")
        local commands = dir .. "/commands"
        os.execute("mkdir -p '" .. commands .. "'")
        local plan = helpers.write_file(dir .. "/dashboard-plan.json", cjson.encode({
            url = string.format("http://127.0.0.1:%d/dashboard/", gw.admin_port), token = TOKEN,
            wrong_token = TOKEN .. "-not", commands = commands, work_dir = dir, timeout = 120,
        }))
        drv = { out = dir .. "/dashboard.stdout", err = dir .. "/dashboard.stderr", commands = commands }
        drv.pid = helpers.spawn({ "node", helpers.support .. "/dashboard.js", plan }, { stdout = drv.out, stderr = drv.err })
    end)

    teardown(function()
        for _, ws in ipairs(clients) do pcall(ws.close, ws) end
        if drv and helpers.alive(drv.pid) then
            pcall(command, "quit")
            if select(2, helpers.wait(drv.pid, 15)) == "timeout" then helpers.kill(drv.pid, "KILL") end
        end
        if gw then pcall(gw.stop, gw) end
        helpers.cleanup()
    end)

    it("refuses a wrong token on the login field, and keeps nothing of it", function()
        local l = wait_line(function(x) return x.kind == "refused" end, "the refusal")
        assert.matches("refused", l.text, 1, true)
        assert.is_true(l.board_hidden)
        assert.is_nil(l.stored)
    end)

    it("logs in with the admin token, kept in sessionStorage and not in the URL", function()
        local l = wait_line(function(x) return x.kind == "login" end, "the login")
        assert.is_true(l.stored)
        assert.is_nil(l.url:find(TOKEN, 1, true))
        assert.equal(string.format("http://127.0.0.1:%d/dashboard/", gw.admin_port), l.url)
    end)

    it("shows the numbers that known traffic makes", function()
        local a1, a2, b1 = connect(KEY_A), connect(KEY_A), connect(KEY_B)
        for i = 1, 5 do assert.equal(i .. string.rep("a", 99), helpers.ask(a1, i .. string.rep("a", 99))) end
        for i = 1, 2 do assert.equal(i .. string.rep("b", 9), helpers.ask(a2, i .. string.rep("b", 9))) end
        for i = 1, 3 do assert.equal(i .. string.rep("c", 999), helpers.ask(b1, i .. string.rep("c", 999))) end
        local page = wait_page(function(p)
            local app_a, app_b, api = row(p.applications, "AppA"), row(p.applications, "AppB"), row(p.apis, "Echo")
            return p.values.connections_open == "3" and #p.connections == 3
                   and app_a and app_a.connections_open == "2" and app_a.messages_in == "7" and app_a.bytes_in == "520"
                   and app_a.bytes_out == "520" and app_a.last_access ~= nil and app_a.last_access ~= ""
                   and app_b and app_b.connections_open == "1" and app_b.messages_in == "3" and app_b.bytes_in == "3000"
                   and api and api.connections_open == "3"
                   and p.values["total-messages_in"] == "10" and p.values["total-bytes_in"] == "3520"
                   and p.values["total-messages_out"] == "10" and p.values["total-bytes_out"] == "3520"
        end, "the page to show the traffic", 30)
        assert.equal("open", page.feed)
        assert.equal("stats", page.source)      -- weir.stats is there: host-wide counters, not the registry's
        local seen = {}
        for _, r in ipairs(page.connections) do seen[r.bytes_in .. "/" .. r.frames_in .. "/" .. r.bytes_out] = r.key end
        assert.is_string(seen["500/5/500"])
        assert.is_string(seen["20/2/20"])
        assert.is_string(seen["3000/3/3000"])
        -- the rates moved while the traffic went through (one snapshot at least)
        local moved = false
        for _, l in ipairs(lines()) do
            if l.kind == "state" and tonumber(l.page.values["rate-messages_in"] or "") and tonumber(l.page.values["rate-messages_in"]) > 0
               and tonumber(l.page.values["rate-bytes_in"]) > 0 then
                moved = true
            end
        end
        assert.is_true(moved, "no snapshot showed messages/s and bytes/s in above 0")
    end)

    it("closes a connection from the page: its client gets the close, the page drops it", function()
        local id
        wait_page(function(p)
            for _, r in ipairs(p.connections) do if r.bytes_in == "3000" then id = r.key end end
            return #p.connections == 3 and id
        end, "the connection of AppB")
        assert.is_string(id)
        command("close." .. id)
        wait_line(function(l) return l.kind == "clicked" and l.id == id end, "the click")
        local cl = assert(clients[3]:recv_close(10))
        assert.equal(1000, cl.code)
        local after = wait_page(function(p)
            return p.values.connections_open == "2" and #p.connections == 2 and not row(p.connections, id)
        end, "the page to drop " .. id, 30)
        assert.matches("Closed " .. id, after.notice or "", 1, true)
        -- the other clients are untouched
        assert.equal("still", helpers.ask(clients[1], "still"))
    end)

    it("shows throttled messages and authentication failures", function()
        for _ = 1, 2 do
            local ws, res = helpers.ws_connect(gw.port, { path = "/echo", headers = { ["X-API-Key"] = "wrong-key-0123456789" } })
            assert.is_nil(ws)
            assert.equal(401, res.status)
        end
        local t = connect(nil, "/limited")
        for i = 1, 5 do assert(t:send_text("t" .. i)) end
        local echoes = 0
        helpers.wait_until(function()
            local m = assert(t:recv_message(5))
            if m.payload:match("^t%d$") then echoes = echoes + 1 end
            return echoes == 2
        end, 10, "the two messages the limit lets through")
        wait_page(function(p)
            return p.values.auth_failures == "2" and p.values["total-throttled"] == "3" and #p.connections == 3
        end, "the page to show the limited connection, its throttled messages and the refusals", 30)
        local seen = false
        for _, l in ipairs(lines()) do
            if l.kind == "state" and (tonumber(l.page.values["rate-throttled"] or "") or 0) > 0 then seen = true end
        end
        assert.is_true(seen, "no snapshot showed throttled/s above 0")
    end)

    it("saves a screenshot under the spec's output directory", function()
        local path = out_dir .. "/dashboard.png"
        os.remove(path)
        command("screenshot." .. path:gsub("[^%w%-%._]", function(c) return string.format("%%%02X", c:byte()) end))
        wait_line(function(l) return l.kind == "screenshot" end, "the screenshot")
        local png = assert(helpers.read_file(path))
        assert.equal("\137PNG", png:sub(1, 4))
        assert.is_true(#png > 10000)
        io.stdout:write("# dashboard screenshot: " .. path .. "\n")
        command("quit")
        wait_line(function(l) return l.kind == "done" end, "the driver to finish")
    end)
end)
