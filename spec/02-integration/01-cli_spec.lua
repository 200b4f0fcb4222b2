-- The command line: -v, -h, -t and what weir does with a bad configuration.
local helpers = require "helpers"

local function version_from_source()
    local h = helpers.read_file(helpers.root .. "/core/weir.h") or ""
    return h:match('#define%s+WEIR_VERSION%s+"([^"]+)"')
end

local function valid_conf()
    return {
        workers = 1,
        listen = { { address = "127.0.0.1", port = helpers.free_port() } },
        apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9") },
    }
end

describe("weir command line", function()
    teardown(helpers.cleanup)

    it("-v prints the version and exits 0", function()
        local code, out, err = helpers.run({ helpers.bin, "-v" })
        assert.equal(0, code)
        local version = assert(version_from_source(), "WEIR_VERSION not found in core/weir.h")
        assert.truthy((out .. err):find(version, 1, true), "no " .. version .. " in: " .. out .. err)
    end)

    it("-h prints a usage naming -c and -t and exits 0", function()
        local code, out, err = helpers.run({ helpers.bin, "-h" })
        assert.equal(0, code)
        local text = out .. err
        assert.truthy(text:find("-c", 1, true), "usage does not mention -c: " .. text)
        assert.truthy(text:find("-t", 1, true), "usage does not mention -t: " .. text)
    end)

    it("an unknown option exits non-zero", function()
        local code = helpers.run({ helpers.bin, "--no-such-option" })
        assert.is_not.equal(0, code)
    end)

    it("-t accepts a valid configuration with exit code 0", function()
        local path = helpers.write_conf(valid_conf())
        local code, out, err = helpers.run({ helpers.bin, "-t", "-c", path })
        assert.equal(0, code, "stdout: " .. out .. "\nstderr: " .. err)
    end)

    it("-t does not start serving", function()
        local conf = valid_conf()
        local path = helpers.write_conf(conf)
        assert.equal(0, (helpers.run({ helpers.bin, "-t", "-c", path })))
        assert.is_nil(helpers.tcp(conf.listen[1].port, 1), "something listens after weir -t exited")
    end)

    it("-t rejects an invalid field with a non-zero exit naming file and field", function()
        local conf = valid_conf()
        conf.limits = { max_message_size = "lots" }
        local path = helpers.write_conf(conf)
        local code, out, err = helpers.run({ helpers.bin, "-t", "-c", path })
        assert.is_not.equal(0, code)
        local text = out .. err
        assert.truthy(text:find(path, 1, true), "the error does not name the file: " .. text)
        assert.truthy(text:find("max_message_size", 1, true), "the error does not name the field: " .. text)
    end)

    it("-t rejects a file that is not valid Lua", function()
        local path = helpers.write_conf("return { workers = 1,, }\n")
        local code, out, err = helpers.run({ helpers.bin, "-t", "-c", path })
        assert.is_not.equal(0, code)
        assert.truthy((out .. err):find(path, 1, true), "the error does not name the file: " .. out .. err)
    end)

    it("-t rejects a file that does not exist", function()
        local code = helpers.run({ helpers.bin, "-t", "-c", helpers.tmpdir() .. "/no-such.conf.lua" })
        assert.is_not.equal(0, code)
    end)

    it("-t rejects an API whose endpoint is not a ws:// or wss:// URL", function()
        local conf = valid_conf()
        conf.apis[1].versions[1].endpoints.production = "http://127.0.0.1:9"
        local code = helpers.run({ helpers.bin, "-t", "-c", helpers.write_conf(conf) })
        assert.is_not.equal(0, code)
    end)

    it("refuses to start with an invalid configuration (exit non-zero, nothing listening)", function()
        local conf = valid_conf()
        conf.limits = { idle_timeout = "soon" }
        local code, out, err = helpers.run({ helpers.bin, "-c", helpers.write_conf(conf) }, { timeout = 15 })
        assert.is_not.equal(0, code, "stdout: " .. out .. "\nstderr: " .. err)
        assert.is_nil(helpers.tcp(conf.listen[1].port, 1))
    end)
end)
