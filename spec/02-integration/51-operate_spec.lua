-- Operating a running weir (issue 13, items 2, 3 and 12): what bare weir
-- and -h say; fatal start-up errors seen on the terminal when logging to a
-- file; -t's warnings and -T's checks; weir -s reload's report and exit
-- code; -s stop waiting for the drain; a weir that is not running; SIGUSR1
-- reopening the log file; systemd's readiness protocol.
local helpers = require "helpers"
local socket  = require "socket"
local psock   = require "posix.sys.socket"
local ppoll   = require "posix.poll"
local unistd  = require "posix.unistd"

local function conf_with(extra)
    local conf = {
        workers = 1,
        listen = { { address = "127.0.0.1", port = helpers.free_port() } },
        apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9") },
    }
    for k, v in pairs(extra or {}) do conf[k] = v end
    return conf
end

-- Write CONF over the running gateway GW's configuration file.
local function rewrite(gw, conf)
    helpers.write_file(gw.conf_path, helpers.serialize(conf))
end

local function weir_s(what, gw_or_path, extra)
    local argv = { helpers.bin, "-s", what, "-c", type(gw_or_path) == "table" and gw_or_path.conf_path or gw_or_path }
    for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
    return helpers.run(argv, { timeout = 60 })
end

describe("weir's command line", function()
    teardown(helpers.cleanup)

    it("bare weir says -c is missing and where the installed configuration is, exit 2", function()
        local code, out, err = helpers.run({ helpers.bin })
        assert.equal(2, code)
        assert.truthy(err:find("-c FILE is missing", 1, true), err)
        assert.truthy(err:find("/etc/weir/weir.conf.lua", 1, true), err)
        assert.equal("", out)
    end)

    it("-h names every option, every -s signal, the signals, the environment and the exit codes", function()
        local code, out = helpers.run({ helpers.bin, "-h" })
        assert.equal(0, code)
        for _, word in ipairs({ "-c FILE", "-t ", "-T ", "-s SIGNAL", "--no-wait", "-v ", "-h ", "reload", "stop",
                                "drain", "USR2", "reopen", "HUP", "TERM", "INT", "USR1", "WEIR_LUA_DIR", "WEIR_POLICY_DIR",
                                "exit status" }) do
            assert.truthy(out:find(word, 1, true), "-h does not mention " .. word .. ":\n" .. out)
        end
    end)

    it("--no-wait without -s is a usage error", function()
        local code, _, err = helpers.run({ helpers.bin, "--no-wait", "-c", helpers.write_conf(conf_with()) })
        assert.equal(2, code)
        assert.truthy(err:find("--no-wait goes with -s", 1, true), err)
    end)
end)

describe("fatal start-up errors with log.file set", function()
    teardown(helpers.cleanup)

    it("a port in use: exit 1, and stderr names the address, the port and why", function()
        local port = helpers.free_port()
        local holder = assert(socket.bind("127.0.0.1", port))
        local log = helpers.tmpdir() .. "/port-in-use.log"
        local conf = conf_with({ listen = { { address = "127.0.0.1", port = port } }, log = { file = log } })
        local code, _, err = helpers.run({ helpers.bin, "-c", helpers.write_conf(conf) }, { timeout = 15 })
        holder:close()
        assert.equal(1, code)
        assert.truthy(err:find("cannot listen on 127.0.0.1:" .. port .. ": Address already in use", 1, true), err)
        assert.truthy((helpers.read_file(log) or ""):find('"msg":"cannot listen"', 1, true))
    end)

    it("a pid file that cannot be written: exit 1, and stderr and the log name the file", function()
        local log = helpers.tmpdir() .. "/pid.log"
        local pid_file = helpers.tmpdir() .. "/no-such-dir/weir.pid"
        local conf = conf_with({ pid_file = pid_file, log = { file = log } })
        local code, _, err = helpers.run({ helpers.bin, "-c", helpers.write_conf(conf) }, { timeout = 15 })
        assert.equal(1, code)
        assert.truthy(err:find("cannot write the pid file " .. pid_file .. ": No such file or directory", 1, true), err)
        local rec
        for line in (helpers.read_file(log) or ""):gmatch("[^\n]+") do
            local r = helpers.json(line)
            if r.msg == "cannot write pid file" then rec = r end
        end
        assert.is_table(rec, "no cannot-write-pid-file record")
        assert.equal(pid_file, rec.file)
    end)
end)

describe("-t and -T", function()
    teardown(helpers.cleanup)

    it("-t warns that the pid file's directory does not exist, and still says valid", function()
        local missing = helpers.tmpdir() .. "/missing-run"
        local path = helpers.write_conf(conf_with({ pid_file = missing .. "/weir.pid" }))
        local code, out, err = helpers.run({ helpers.bin, "-t", "-c", path })
        assert.equal(0, code, err)
        assert.truthy(out:find("is valid", 1, true), out)
        assert.truthy(err:find("weir: warning: " .. path .. ": pid_file: ", 1, true), err)
        assert.truthy(err:find("its directory " .. missing .. " does not exist", 1, true), err)
    end)

    it("-t warns about a log file in a directory that does not exist", function()
        local missing = helpers.tmpdir() .. "/missing-log"
        local path = helpers.write_conf(conf_with({ log = { file = missing .. "/weir.log" } }))
        local code, _, err = helpers.run({ helpers.bin, "-t", "-c", path })
        assert.equal(0, code, err)
        assert.truthy(err:find("log.file: ", 1, true) and err:find(missing, 1, true), err)
    end)

    it("-T fails on what -t only warns about", function()
        local path = helpers.write_conf(conf_with({ pid_file = helpers.tmpdir() .. "/missing-run2/weir.pid" }))
        local code, out, err = helpers.run({ helpers.bin, "-T", "-c", path })
        assert.equal(1, code, out .. err)
        assert.truthy(err:find("pid_file: ", 1, true), err)
        assert.is_nil(out:find("is valid", 1, true), out)
    end)

    it("-T binds every listener: a port in use fails it, naming the port", function()
        local port = helpers.free_port()
        local holder = assert(socket.bind("127.0.0.1", port))
        local path = helpers.write_conf(conf_with({ listen = { { address = "127.0.0.1", port = port } } }))
        local code, _, err = helpers.run({ helpers.bin, "-T", "-c", path })
        holder:close()
        assert.equal(1, code)
        assert.truthy(err:find("listen: cannot listen on 127.0.0.1:" .. port .. ": Address already in use", 1, true), err)
    end)

    it("-T passes when weir could start, and leaves nothing listening", function()
        local conf = conf_with({ pid_file = helpers.tmpdir() .. "/t.pid", log = { file = helpers.tmpdir() .. "/t.log" } })
        local code, out, err = helpers.run({ helpers.bin, "-T", "-c", helpers.write_conf(conf) })
        assert.equal(0, code, err)
        assert.truthy(out:find("weir could start now", 1, true), out)
        assert.is_nil(helpers.tcp(conf.listen[1].port, 1))
        assert.is_nil(helpers.read_file(conf.pid_file), "-T wrote the pid file")
    end)
end)

describe("weir -s reload", function()
    local be, gw, conf

    setup(function()
        be = helpers.start_backend("echo")
        gw = helpers.start_weir({ workers = 2, apis = { helpers.api("Echo", "/echo", be) } })
        conf = helpers.deepcopy(gw.conf)
    end)
    teardown(helpers.cleanup)

    it("prints what it applied, in how many workers, and exits 0", function()
        conf.apis[2] = helpers.api("Second", "/second", be)
        rewrite(gw, conf)
        local code, out, err = weir_s("reload", gw)
        assert.equal(0, code, out .. err)
        assert.truthy(out:find("weir: reloaded " .. gw.conf_path .. ": applied in 2 of 2 workers", 1, true), out)
        assert.truthy(out:find("APIs: 2 (added: Second)", 1, true), out)
        local ws = helpers.ws_connect(gw.port, { path = "/second" })
        assert.truthy(ws, "the added API does not answer")
        ws:close()
    end)

    it("a new listen address needs a restart: it says so, exits 3, and the old port still serves", function()
        local old_port = conf.listen[1].port
        conf.listen[1].port = helpers.free_port()
        rewrite(gw, conf)
        local code, out, err = weir_s("reload", gw)
        assert.equal(3, code, out .. err)
        assert.truthy(out:find("applied in part", 1, true), out)
        assert.truthy(out:find(("needs a restart (not applied): listen: 127.0.0.1:%d -> 127.0.0.1:%d")
                               :format(old_port, conf.listen[1].port), 1, true), out)
        local res = assert(helpers.http_request(old_port, { path = "/healthz" }))
        assert.equal(200, res.status)
        conf.listen[1].port = old_port
    end)

    it("a new worker count needs a restart: it says so and exits 3", function()
        conf.workers = 3
        rewrite(gw, conf)
        local code, out, err = weir_s("reload", gw)
        assert.equal(3, code, out .. err)
        assert.truthy(out:find("needs a restart (not applied): workers: 2 -> 3", 1, true), out)
        conf.workers = 2
        rewrite(gw, conf)
        assert.equal(0, (weir_s("reload", gw)))
    end)

    it("workers that cannot apply it: exit 3, and they keep serving the previous configuration", function()
        -- a policy that accepts its configuration in the master and refuses
        -- it in a worker (weir.http exists only there)
        local dir = helpers.tmpdir() .. "/worker-refuses"
        assert(os.execute("mkdir -p " .. helpers.shell_quote(dir)) == 0)
        helpers.write_file(dir .. "/spec-worker-refuses.lua", [[
local weir = require "weir"
return { name = "spec-worker-refuses", priority = 12, on_handshake = function() end,
         init = function() if weir.http then return nil, "refused in a worker" end return true end }
]])
        local bad = helpers.deepcopy(conf)
        bad.policy_paths = { dir }
        bad.policies = { { "spec-worker-refuses", {} } }
        rewrite(gw, bad)
        local code, out, err = weir_s("reload", gw)
        assert.equal(3, code, out .. err)
        assert.truthy(out:find("applied in part in 0 of 2 workers", 1, true), out)
        assert.truthy(out:find("not applied: 2 workers could not apply it and keep the previous configuration", 1, true), out)
        local ws = helpers.ws_connect(gw.port, { path = "/second" })
        assert.truthy(ws, "the previous configuration no longer serves")
        ws:close()
        rewrite(gw, conf)
        assert.equal(0, (weir_s("reload", gw)))
    end)

    it("a configuration with errors: exit 1, nothing signalled", function()
        local before = #gw:logs()
        helpers.write_file(gw.conf_path, "return { workers = 1,, }\n")
        local code, out, err = weir_s("reload", gw)
        assert.equal(1, code, out .. err)
        assert.truthy(err:find(gw.conf_path, 1, true), err)
        for i = before + 1, #gw:logs() do assert.not_equal("reloading", gw:logs()[i].msg) end
        rewrite(gw, conf)
    end)

    it("--no-wait returns once the signal is sent", function()
        local code, out = weir_s("reload", gw, { "--no-wait" })
        assert.equal(0, code)
        assert.truthy(out:find("asked weir", 1, true), out)
        gw:wait_log(function(r) return r.msg == "reload done" end, 20)
    end)

    it("several weir -s reload at once each get a report (SIGHUPs sent during a reload merge)", function()
        local runs = {}
        for i = 1, 4 do
            local out = helpers.tmpdir() .. "/concurrent-" .. i .. ".out"
            runs[i] = { out = out, pid = helpers.spawn({ helpers.bin, "-s", "reload", "-c", gw.conf_path },
                                                        { stdout = out, stderr = out }) }
        end
        for i, r in ipairs(runs) do
            local code = helpers.wait(r.pid, 90)
            local text = helpers.read_file(r.out) or ""
            assert.equal(0, code, "weir -s reload #" .. i .. ": " .. text)
            assert.truthy(text:find("applied in 2 of 2 workers", 1, true), text)
        end
    end)

    it("the log says how the reload went", function()
        local rec = gw:wait_log(function(r) return r.msg == "reload done" and r.complete == true end)
        assert.equal(2, rec.workers_applied)
        assert.equal(0, rec.workers_failed)
    end)
end)

describe("a reload just after a start", function()
    teardown(helpers.cleanup)

    it("reaches every worker, even those still starting (none dies of the SIGHUP)", function()
        -- workers take a while to start: their policy's init is slow there
        -- (weir.http exists only in a worker), not in the master
        local dir = helpers.tmpdir() .. "/slow-init"
        assert(os.execute("mkdir -p " .. helpers.shell_quote(dir)) == 0)
        helpers.write_file(dir .. "/spec-slow-init.lua", [[
local weir = require "weir"
local started = false
return { name = "spec-slow-init", priority = 13, on_handshake = function() end,
         init = function()
             if weir.http and not started then
                 started = true
                 local t = os.clock()
                 while os.clock() - t < 0.5 do end
             end
             return true
         end }
]])
        local gw = helpers.start_weir({ workers = 3, policy_paths = { dir }, policies = { { "spec-slow-init", {} } },
                                        apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9") } },
                                      { wait = false })
        helpers.wait_until(function()
            for _, r in ipairs(gw:logs()) do if r.msg == "weir started" then return true end end
        end, 15, "weir to start")
        helpers.kill(gw.pid, "HUP")
        local rec = gw:wait_log(function(r) return r.msg == "reload done" end, 30)
        assert.equal(3, rec.workers_applied)
        assert.equal(0, rec.workers_died)
        for _, r in ipairs(gw:logs()) do assert.not_equal("worker died", r.msg) end
        assert.equal(0, (gw:stop()))
    end)
end)

describe("a reload and the log", function()
    teardown(helpers.cleanup)

    it("applies a new log.file and log.level in the master and every worker", function()
        local gw = helpers.start_weir({ workers = 2, apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9") } })
        local conf = helpers.deepcopy(gw.conf)
        local old_path = gw.log_path
        conf.log.file = helpers.tmpdir() .. "/after-reload.log"
        rewrite(gw, conf)
        local code, out, err = weir_s("reload", gw)
        assert.equal(0, code, out .. err)
        assert.truthy(out:find("applied: log.file: " .. conf.log.file, 1, true), out)
        gw.log_path = conf.log.file
        local workers = {}
        for _, r in ipairs(gw:logs()) do if r.msg == "worker reloaded" then workers[r.pid] = true end end
        local n = 0
        for _ in pairs(workers) do n = n + 1 end
        assert.equal(2, n, "not every worker logs to the new file")
        assert.truthy(gw:wait_log(function(r) return r.msg == "reload done" end))

        -- level warn: the info records of the next reload are not written
        conf.log.level = "warn"
        rewrite(gw, conf)
        assert.equal(0, (weir_s("reload", gw)))
        local before = #gw:logs()
        assert.equal(0, (weir_s("reload", gw)))
        for i = before + 1, #gw:logs() do assert.not_equal("info", gw:logs()[i].level) end
        assert.is_nil((helpers.read_file(old_path) or ""):find("after-reload", 1, true))
        assert.equal(0, (gw:stop()))
    end)
end)

describe("weir -s stop", function()
    teardown(helpers.cleanup)

    -- A gateway with a client that will not answer weir's close frame, so
    -- that its drain lasts close_timeout.
    local function draining_gateway(close_timeout)
        local be = helpers.start_backend("echo")
        local gw = helpers.start_weir({ limits = { close_timeout = close_timeout, drain_timeout = 30 },
                                        apis = { helpers.api("Echo", "/echo", be) } })
        local ws = assert(helpers.ws_connect(gw.port, { path = "/echo" }))
        return gw, ws
    end

    it("waits until weir has drained and exited", function()
        local gw, ws = draining_gateway(1)
        local code, out, err = weir_s("stop", gw)
        assert.equal(0, code, out .. err)
        assert.truthy(out:find("weir (pid " .. gw.pid .. ") stopped", 1, true), out)
        assert.is_false(helpers.alive(gw.pid), "weir -s stop returned while weir still ran")
        assert.equal(0, (gw:wait()))
        ws:close()
    end)

    it("--no-wait returns while weir drains", function()
        local gw, ws = draining_gateway(5)
        local code, out = weir_s("stop", gw, { "--no-wait" })
        assert.equal(0, code)
        assert.truthy(out:find("asked weir", 1, true), out)
        assert.is_true(helpers.alive(gw.pid), "weir had already exited")
        assert.equal(0, (gw:wait(20)))
        ws:close()
    end)
end)

describe("weir -s against a weir that is not running", function()
    teardown(helpers.cleanup)

    it("no pid file: exit 7, and it says weir is not running", function()
        local pid_file = helpers.tmpdir() .. "/never.pid"
        local code, _, err = weir_s("reload", helpers.write_conf(conf_with({ pid_file = pid_file })))
        assert.equal(7, code)
        assert.truthy(err:find("weir is not running: there is no pid file " .. pid_file, 1, true), err)
    end)

    it("a pid file naming a process that is gone: exit 7", function()
        local pid = helpers.spawn({ "true" })
        helpers.wait(pid)
        local pid_file = helpers.write_file(helpers.tmpdir() .. "/gone.pid", pid .. "\n")
        local code, _, err = weir_s("stop", helpers.write_conf(conf_with({ pid_file = pid_file })))
        assert.equal(7, code)
        assert.truthy(err:find("process " .. pid .. ", named by " .. pid_file .. ", does not exist", 1, true), err)
    end)

    it("a pid file naming a process that is not weir: exit 7, and that process is not signalled", function()
        local pid = helpers.spawn({ "sleep", "30" })
        helpers.wait_until(function()
            return (helpers.read_file("/proc/" .. pid .. "/comm") or ""):find("sleep", 1, true)
        end, 10, "sleep to start")
        local pid_file = helpers.write_file(helpers.tmpdir() .. "/stale.pid", pid .. "\n")
        local code, _, err = weir_s("stop", helpers.write_conf(conf_with({ pid_file = pid_file })))
        assert.equal(7, code)
        assert.truthy(err:find('is "sleep", not weir', 1, true), err)
        assert.is_true(helpers.alive(pid), "weir -s stop signalled a process that is not weir")
    end)

    it("a configuration without pid_file: exit 1, saying what to do", function()
        local code, _, err = weir_s("reload", helpers.write_conf(conf_with()))
        assert.equal(1, code)
        assert.truthy(err:find("sets no pid_file", 1, true), err)
    end)
end)

describe("reopening the log file", function()
    teardown(helpers.cleanup)

    -- Records of PATH, decoded.
    local function records(path)
        local out = {}
        for line in (helpers.read_file(path) or ""):gmatch("[^\n]+") do out[#out + 1] = helpers.json(line) end
        return out
    end

    local function reopened_by_all(gw, reopen)
        local moved = gw.log_path .. ".1"
        assert(os.rename(gw.log_path, moved))
        reopen()
        helpers.wait_until(function()
            for _, r in ipairs(records(gw.log_path)) do if r.msg == "log file reopened" then return true end end
        end, 10, "the master's record in the new file")
        assert.is_true(gw:alive(), "the master did not survive")
        -- a worker's record (the access line of a connection) lands in the new file too
        local res = helpers.http_request(gw.port, { path = "/nothing" })
        assert.equal(404, res.status)
        local workers = gw:worker_pids()
        helpers.wait_until(function()
            for _, r in ipairs(records(gw.log_path)) do
                if r.msg == "access" and r.pid == workers[1] then return true end
            end
        end, 10, "a worker's record in the new file")
        return moved
    end

    it("SIGUSR1: the master and its workers write to a new file of the same name", function()
        local gw = helpers.start_weir({ workers = 1, apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9") } })
        reopened_by_all(gw, function() helpers.kill(gw.pid, "USR1") end)
        assert.equal(0, (gw:stop()))
    end)

    it("weir -s reopen does the same", function()
        local gw = helpers.start_weir({ workers = 1, apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9") } })
        reopened_by_all(gw, function()
            local code, out, err = weir_s("reopen", gw)
            assert.equal(0, code, out .. err)
        end)
        assert.equal(0, (gw:stop()))
    end)
end)

describe("under systemd (Type=notify)", function()
    local fd, path
    setup(function()
        path = helpers.tmpdir() .. "/notify.sock"
        fd = assert(psock.socket(psock.AF_UNIX, psock.SOCK_DGRAM, 0))
        assert(psock.bind(fd, { family = psock.AF_UNIX, path = path }))
    end)
    teardown(function()
        if fd then unistd.close(fd) end
        helpers.cleanup()
    end)

    -- Wait for a notification containing WHAT; returns it.
    local seen = {}
    local function notified(what)
        return helpers.wait_until(function()
            for _, m in ipairs(seen) do if m:find(what, 1, true) then return m end end
            while ppoll.rpoll(fd, 0) == 1 do seen[#seen + 1] = psock.recv(fd, 4096) end
        end, 20, "the notification " .. what)
    end

    it("READY=1 with MAINPID once serving, RELOADING=1 then READY=1 on a reload, STOPPING=1 on a stop", function()
        local gw = helpers.start_weir({ apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9") } },
                                      { env = { NOTIFY_SOCKET = path } })
        local ready = notified("READY=1")
        assert.truthy(ready:find("MAINPID=" .. gw.pid, 1, true), ready)
        seen = {}
        assert.equal(0, (weir_s("reload", gw)))
        notified("RELOADING=1")
        notified("READY=1")
        local reloading, ready_again
        for i, m in ipairs(seen) do
            if m:find("RELOADING=1", 1, true) then reloading = reloading or i end
            if m:find("READY=1", 1, true) then ready_again = i end
        end
        assert.truthy(reloading < ready_again, "READY=1 came before RELOADING=1")
        seen = {}
        assert.equal(0, (gw:stop()))
        notified("STOPPING=1")
    end)
end)
