-- The Debian package (issue 13, items 11 and 12): make deb builds it with
-- dpkg-deb; unpacked with dpkg -x into a scratch root, its binary checks
-- and serves its shipped configuration, its unit passes systemd-analyze
-- verify, its man page renders cleanly and names every option and signal
-- the code has.
local helpers = require "helpers"

local SAN = os.getenv("WEIR_SAN") == "1" and "1" or "0"

local function sh(cmd)
    local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
    local out = p:read("*a")
    p:close()
    local rc = tonumber(out:match("rc=(%d+)%s*$"))
    return rc, (out:gsub("rc=%d+%s*$", ""))
end

local function q(s) return helpers.shell_quote(s) end

-- The options and signals the code handles: short options from the getopt
-- string and long ones from the option table of core/main.c, signals from
-- the master's signal set in core/master.c (less SIGCHLD and the workers'
-- reload answer).
local function from_source()
    local src = assert(helpers.read_file(helpers.root .. "/core/main.c"))
    local master = assert(helpers.read_file(helpers.root .. "/core/master.c"))
    local opts, sigs = {}, {}
    local optstring = assert(src:match('getopt_long%(argc, argv, "([^"]+)"'), "no getopt_long in core/main.c")
    for letter in optstring:gmatch("%a") do opts[#opts + 1] = "-" .. letter end
    local table_src = assert(src:match("weir_long_options%[%] = {(.-)};"), "no long options in core/main.c")
    for name in table_src:gmatch('{ "([%w-]+)"') do opts[#opts + 1] = "--" .. name end
    for sig in master:gmatch("sigaddset%(&m%.set, SIG([%u%d]+)%)") do
        if sig ~= "CHLD" then sigs[#sigs + 1] = sig end
    end
    return opts, sigs
end

describe("the Debian package", function()
    local deb, root

    setup(function()
        local code, out, err = helpers.run({ "make", "-C", helpers.root, "--no-print-directory", "deb", "SAN=" .. SAN },
                                           { timeout = 300 })
        assert(code == 0, "make deb failed:\n" .. out .. err)
        deb = out:match("([^\n]+%.deb)%s*$")
        assert(deb, "make deb did not name the package:\n" .. out)
        if deb:sub(1, 1) ~= "/" then deb = helpers.root .. "/" .. deb end
        root = helpers.tmpdir() .. "/root"
        local rc, msg = sh(("dpkg -x %s %s"):format(q(deb), q(root)))
        assert(rc == 0, "dpkg -x failed: " .. msg)
    end)
    teardown(helpers.cleanup)

    it("is named weir_VERSION_ARCH.deb and says so in its control file", function()
        local version = helpers.read_file(helpers.root .. "/core/weir.h"):match('#define%s+WEIR_VERSION%s+"([^"]+)"')
        local _, arch = sh("dpkg --print-architecture")
        arch = arch:gsub("%s+", "")
        assert.truthy(deb:find("/weir_" .. version .. "_" .. arch .. ".deb", 1, true), deb)
        local _, control = sh("dpkg-deb -f " .. q(deb) .. " Package Version Architecture")
        assert.truthy(control:find("Package: weir", 1, true), control)
        assert.truthy(control:find("Version: " .. version, 1, true), control)
    end)

    it("declares a package for every library the binary needs, and lua-cjson and adduser", function()
        local _, depends = sh("dpkg-deb -f " .. q(deb) .. " Depends")
        local _, needed = sh("readelf -d " .. q(root .. "/usr/sbin/weir"))
        local libs = 0
        for lib in needed:gmatch("Shared library: %[([^%]]+)%]") do
            local _, path = sh("ldd " .. q(root .. "/usr/sbin/weir") .. " | awk '$1 == \"" .. lib .. "\" { print $3 }'")
            path = path:gsub("%s+$", "")
            assert.is_true(path ~= "", "cannot find " .. lib)
            local _, owner = sh("dpkg -S " .. q(path) .. " 2>/dev/null || dpkg -S \"$(readlink -f " .. q(path)
                                .. ")\" 2>/dev/null")
            local pkg = owner:match("^([^:%s]+)")
            assert.truthy(pkg, "no package owns " .. path .. ": " .. owner)
            assert.truthy(depends:find(pkg, 1, true), lib .. " comes from " .. pkg .. ", not in Depends: " .. depends)
            libs = libs + 1
        end
        assert.truthy(libs >= 6, "the binary needs only " .. libs .. " libraries?\n" .. needed)
        for _, pkg in ipairs({ "libuv1", "libluajit", "libssl3", "libcurl4", "libsystemd0", "libhiredis0.14", "lua-cjson",
                               "adduser" }) do
            assert.truthy(depends:find(pkg, 1, true), pkg .. " is not in Depends: " .. depends)
        end
    end)

    it("its binary checks its shipped configuration", function()
        local code, out, err = helpers.run({ root .. "/usr/sbin/weir", "-t", "-c", root .. "/etc/weir/weir.conf.lua" },
                                           { env = { WEIR_LUA_DIR = false, WEIR_POLICY_DIR = false } })
        assert.equal(0, code, out .. err)
        assert.truthy(out:find("is valid", 1, true), out)
    end)

    it("its binary serves, with the Lua runtime, stock policies and FFI symbols of the package", function()
        local be = helpers.start_backend("echo")
        local keys = helpers.write_file(helpers.tmpdir() .. "/keys.txt",
            ("sha256:%s application=App subscriber=me\n"):format(helpers.sha256("packaged-key")))
        local bin = helpers.bin
        helpers.bin = root .. "/usr/sbin/weir"
        local ok, gw = pcall(helpers.start_weir, {
            apis = { helpers.policy_api("Echo", "/echo", be, { { "key-auth", { keys_file = keys } } }) },
        }, { env = { WEIR_LUA_DIR = false, WEIR_POLICY_DIR = false } })
        helpers.bin = bin
        assert(ok, gw)
        local ws = helpers.ws_connect(gw.port, { path = "/echo", headers = { apikey = "packaged-key" } })
        assert.truthy(ws, "a valid key was refused")
        assert(ws:send_text("hello"))
        assert.equal("hello", assert(ws:recv_message(5)).payload)
        ws:close()
        assert.equal(0, (gw:stop()))
    end)

    it("ships a Type=notify unit with a checked reload, LimitNOFILE and hardening", function()
        local unit = assert(helpers.read_file(root .. "/lib/systemd/system/weir.service"), "no unit")
        for _, line in ipairs({ "Type=notify", "User=weir",
                                "ExecStart=/usr/sbin/weir -c /etc/weir/weir.conf.lua",
                                "ExecReload=/usr/sbin/weir -s reload -c /etc/weir/weir.conf.lua",
                                "LimitNOFILE=", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                                "RuntimeDirectory=weir", "LogsDirectory=weir", "StateDirectory=weir" }) do
            assert.truthy(unit:find("\n" .. line, 1, true), "the unit has no " .. line)
        end
        -- the shipped configuration writes where the unit lets it
        local conf = helpers.read_file(root .. "/etc/weir/weir.conf.lua")
        assert.truthy(conf:find('pid_file = "/run/weir/', 1, true))
        assert.truthy(conf:find('file = "/var/log/weir/', 1, true))
    end)

    it("its unit passes systemd-analyze verify (paths into the scratch root)", function()
        local rc_which = sh("command -v systemd-analyze")
        if rc_which ~= 0 then
            print("# systemd-analyze verify skipped: systemd-analyze is not installed (.ci/deps installs systemd)")
            return
        end
        local unit = helpers.read_file(root .. "/lib/systemd/system/weir.service")
        local copy = helpers.tmpdir() .. "/weir.service"
        helpers.write_file(copy, (unit:gsub("/usr/sbin/weir", root .. "/usr/sbin/weir")))
        local rc, out = sh(("MANPATH=%s SYSTEMD_LOG_COLOR=0 systemd-analyze verify %s"):format(
            q(root .. "/usr/share/man"), q(copy)))
        assert.equal(0, rc, out)
        assert.equal("", out, "systemd-analyze verify had something to say:\n" .. out)
    end)

    it("ships a logrotate file that rotates the shipped log and has weir reopen it", function()
        local rot = assert(helpers.read_file(root .. "/etc/logrotate.d/weir"), "no logrotate file")
        assert.truthy(rot:find("/var/log/weir/*.log", 1, true), rot)
        assert.truthy(rot:find("--signal=USR1", 1, true), rot)
        assert.truthy(rot:find("weir -s reopen", 1, true), rot)
    end)

    it("creates the weir system user in postinst; its scripts are valid sh; its conffiles exist", function()
        local ctl = helpers.tmpdir() .. "/DEBIAN"
        local rc, out = sh(("dpkg-deb -e %s %s"):format(q(deb), q(ctl)))
        assert.equal(0, rc, out)
        for _, script in ipairs({ "postinst", "prerm", "postrm" }) do
            rc, out = sh("sh -n " .. q(ctl .. "/" .. script))
            assert.equal(0, rc, script .. ": " .. out)
        end
        local postinst = helpers.read_file(ctl .. "/postinst")
        assert.truthy(postinst:find("adduser --system --group", 1, true), postinst)
        assert.truthy(postinst:find("weir.service", 1, true), postinst)
        for file in helpers.read_file(ctl .. "/conffiles"):gmatch("[^\n]+") do
            assert.is_not_nil(helpers.read_file(root .. file), "conffile " .. file .. " is not in the package")
        end
    end)

    describe("weir(8)", function()
        local page, help

        setup(function()
            local man = helpers.tmpdir() .. "/weir.8"
            local rc, out = sh(("zcat %s > %s"):format(q(root .. "/usr/share/man/man8/weir.8.gz"), q(man)))
            assert(rc == 0, out)
            local warnings
            rc, warnings = sh("groff -man -ww -z " .. q(man))
            assert(rc == 0 and warnings == "", "groff warns:\n" .. warnings)
            rc, page = sh("groff -man -Tascii -P-cbou " .. q(man))
            assert(rc == 0, page)
            local _
            _, help = helpers.run({ helpers.bin, "-h" })
        end)

        it("is plain ASCII roff", function()
            local src = helpers.read_file(helpers.root .. "/packaging/weir.8")
            assert.is_nil(src:find("[\128-\255]"), "packaging/weir.8 has a non-ASCII byte")
        end)

        it("and weir -h name every option the command line accepts", function()
            local opts = from_source()
            assert.truthy(#opts >= 8, "found only " .. #opts .. " options in core/main.c")
            for _, opt in ipairs(opts) do
                assert.truthy(page:find(opt, 1, true), "weir(8) does not name " .. opt)
                if opt ~= "--help" and opt ~= "--version" then
                    assert.truthy(help:find(opt, 1, true), "weir -h does not name " .. opt)
                end
            end
        end)

        it("and weir -h name every signal the master handles, and each -s signal", function()
            local _, sigs = from_source()
            assert.truthy(#sigs >= 4, "found only " .. #sigs .. " signals in core/master.c")
            for _, sig in ipairs(sigs) do
                assert.truthy(page:find("SIG" .. sig, 1, true), "weir(8) does not name SIG" .. sig)
                assert.truthy(help:find(sig, 1, true), "weir -h does not name " .. sig)
            end
            for _, s in ipairs({ "reload", "stop", "reopen" }) do
                assert.truthy(page:find(s, 1, true), "weir(8) does not name -s " .. s)
            end
        end)

        it("names the exit codes weir uses", function()
            local ctl = helpers.read_file(helpers.root .. "/core/ctl.h")
            local section = assert(page:match("EXIT STATUS\n(.-)\nENVIRONMENT"), "no EXIT STATUS section")
            local n = 0
            for code in ctl:gmatch("#define WEIR_EXIT_[%u_]+%s+(%d+)") do
                assert.truthy(section:find("\n%s+" .. code .. "%s%s+%S") or section:find("^%s+" .. code .. "%s%s+%S"),
                              "weir(8) does not explain exit status " .. code)
                n = n + 1
            end
            assert.equal(5, n)
        end)
    end)
end)
