-- make install, and a binary that finds its Lua runtime and stock policies
-- beside itself wherever it is moved (issue 13, items 1 and 10).
local helpers = require "helpers"

local SAN = os.getenv("WEIR_SAN") == "1" and "1" or "0"

local function exists(path)
    return os.execute("test -e " .. helpers.shell_quote(path)) == 0
end

local function is_dir(path)
    return os.execute("test -d " .. helpers.shell_quote(path)) == 0
end

-- Run weir binary BIN with ARGS, with neither override set.
local function run_weir(bin, args, env)
    local argv = { bin }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    env = env or {}
    if env.WEIR_LUA_DIR == nil then env.WEIR_LUA_DIR = false end
    if env.WEIR_POLICY_DIR == nil then env.WEIR_POLICY_DIR = false end
    return helpers.run(argv, { env = env })
end

describe("make install", function()
    local stage, prefix, install_out

    setup(function()
        stage = helpers.tmpdir() .. "/stage"
        local code, out, err = helpers.run({ "make", "-C", helpers.root, "--no-print-directory", "install",
                                             "DESTDIR=" .. stage, "PREFIX=/usr/local", "SAN=" .. SAN },
                                           { timeout = 300 })
        assert(code == 0, "make install failed:\n" .. out .. err)
        install_out = out
        -- move the installed tree somewhere else entirely
        prefix = helpers.tmpdir() .. "/elsewhere/opt-weir"
        assert(os.execute("mkdir -p " .. helpers.shell_quote(helpers.tmpdir() .. "/elsewhere")) == 0)
        assert(os.rename(stage .. "/usr/local", prefix))
        -- a policy only the installed tree has: finding it proves the stock
        -- policies are looked up beside the binary, not in the source tree
        helpers.write_file(prefix .. "/share/weir/policies/spec-installed.lua", [[
return { name = "spec-installed", priority = 11, on_handshake = function() end }
]])
    end)
    teardown(helpers.cleanup)

    it("installs the binary, the Lua runtime, the stock policies, the dashboard, the docs, the man page and the state directory", function()
        for _, f in ipairs({ "/sbin/weir", "/share/weir/lua/weir/conf.lua", "/share/weir/lua/weir/runtime.lua",
                             "/share/weir/policies/key-auth.lua", "/share/weir/policies/jwt.lua",
                             "/share/doc/weir/configuration.md", "/share/doc/weir/operating.md",
                             "/share/doc/weir/policies/key-auth.md", "/share/man/man8/weir.8",
                             "/share/weir/weir.conf.lua", "/share/weir/dashboard/index.html",
                             "/share/weir/dashboard/dashboard.js", "/share/weir/dashboard/dashboard.css" }) do
            assert.is_true(exists(prefix .. f), f .. " was not installed")
        end
        assert.is_true(is_dir(stage .. "/var/lib/weir"), "no state directory")
    end)

    it("installs an example configuration in /etc/weir", function()
        assert.is_true(exists(stage .. "/etc/weir/weir.conf.lua"))
    end)

    it("the installed binary, moved elsewhere, checks the installed configuration", function()
        local code, out, err = run_weir(prefix .. "/sbin/weir", { "-t", "-c", stage .. "/etc/weir/weir.conf.lua" })
        assert.equal(0, code, out .. err)
        assert.truthy(out:find("is valid", 1, true), out)
    end)

    it("the moved binary uses the stock policies installed beside it", function()
        local conf = {
            workers = 1,
            listen = { { address = "127.0.0.1", port = helpers.free_port() } },
            apis = { helpers.policy_api("Echo", "/echo", "ws://127.0.0.1:9", { { "spec-installed", {} } }) },
        }
        local code, out, err = run_weir(prefix .. "/sbin/weir", { "-t", "-c", helpers.write_conf(conf) })
        assert.equal(0, code, out .. err)
    end)

    it("the moved binary serves: its workers load the runtime and the stock policies beside it", function()
        local be = helpers.start_backend("echo")
        local keys = helpers.write_file(helpers.tmpdir() .. "/keys.txt",
            ("sha256:%s application=App subscriber=me\n"):format(helpers.sha256("installed-key")))
        local bin = helpers.bin
        helpers.bin = prefix .. "/sbin/weir"
        local ok, gw = pcall(helpers.start_weir, {
            apis = { helpers.policy_api("Echo", "/echo", be, { { "key-auth", { keys_file = keys } } }) },
        }, { env = { WEIR_LUA_DIR = false, WEIR_POLICY_DIR = false } })
        helpers.bin = bin
        assert(ok, gw)
        local ws = helpers.ws_connect(gw.port, { path = "/echo", headers = { apikey = "installed-key" } })
        assert.truthy(ws, "a valid key was refused")
        ws:close()
        local _, res = helpers.ws_connect(gw.port, { path = "/echo", headers = { apikey = "wrong" } })
        assert.equal(401, res.status)
        assert.equal(0, (gw:stop()))
    end)

    it("a binary without its runtime says, in one line, where it looked and about WEIR_LUA_DIR", function()
        local alone = helpers.tmpdir() .. "/alone/bin/weir"
        assert(os.execute("mkdir -p " .. helpers.shell_quote(helpers.tmpdir() .. "/alone/bin")) == 0)
        assert(os.execute(("cp %s %s"):format(helpers.shell_quote(helpers.bin), helpers.shell_quote(alone))) == 0)
        local code, out, err = run_weir(alone, { "-t", "-c", stage .. "/etc/weir/weir.conf.lua" })
        assert.equal(1, code, out .. err)
        local lines = {}
        for l in err:gmatch("[^\n]+") do lines[#lines + 1] = l end
        assert.equal(1, #lines, err)
        assert.truthy(err:find(helpers.tmpdir() .. "/alone/share/weir/lua", 1, true), err)
        assert.truthy(err:find("WEIR_LUA_DIR", 1, true), err)

        -- and WEIR_LUA_DIR is the override
        code, out, err = run_weir(alone, { "-t", "-c", stage .. "/etc/weir/weir.conf.lua" },
                                  { WEIR_LUA_DIR = prefix .. "/share/weir/lua" })
        assert.equal(0, code, out .. err)
    end)

    it("WEIR_LUA_DIR naming a directory without the runtime is refused, saying so", function()
        local code, _, err = run_weir(prefix .. "/sbin/weir", { "-t", "-c", stage .. "/etc/weir/weir.conf.lua" },
                                      { WEIR_LUA_DIR = helpers.tmpdir() })
        assert.equal(1, code)
        assert.truthy(err:find("WEIR_LUA_DIR is " .. helpers.tmpdir() .. ", which holds no weir/conf.lua", 1, true), err)
    end)

    it("make install keeps an existing configuration", function()
        local mine = "-- mine\n" .. helpers.read_file(stage .. "/etc/weir/weir.conf.lua")
        helpers.write_file(stage .. "/etc/weir/weir.conf.lua", mine)
        assert.is_nil(install_out:find("kept", 1, true))
        local code, out, err = helpers.run({ "make", "-C", helpers.root, "--no-print-directory", "install",
                                             "DESTDIR=" .. stage, "PREFIX=/usr/local", "SAN=" .. SAN },
                                           { timeout = 300 })
        assert.equal(0, code, out .. err)
        assert.truthy(out:find("kept " .. stage .. "/etc/weir/weir.conf.lua", 1, true), out)
        assert.equal(mine, helpers.read_file(stage .. "/etc/weir/weir.conf.lua"))
    end)
end)
