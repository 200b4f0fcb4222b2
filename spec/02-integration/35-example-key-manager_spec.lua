-- examples/key-manager runs as-is: its `run` starts the backends and weir,
-- and its `flow` goes through the WSO2 flow with weir's command line
-- (application, keys, refused while unsubscribed, subscription under Gold,
-- token, an echoed message, revocation). The example uses fixed ports (8080,
-- 9000, 9001, 9901), as its README says; it runs from a copy of examples/
-- so that it leaves nothing in the tree.
local helpers = require "helpers"

describe("examples/key-manager", function()
    local tmp, run_pid

    -- every process under PID, deepest first
    local function tree(pid, out)
        out = out or {}
        for _, c in ipairs(helpers.children(pid)) do tree(c, out) end
        out[#out + 1] = pid
        return out
    end

    setup(function()
        for _, p in ipairs({ 8080, 9000, 9001, 9901 }) do
            local c = helpers.tcp(p, 0.5)
            if c then c:close(); error("port " .. p .. " is in use: the example needs it") end
        end
        tmp = helpers.tmpdir()
        assert.equal(0, (helpers.run({ "cp", "-r", helpers.root .. "/examples", tmp .. "/examples" })))
        run_pid = helpers.spawn({ tmp .. "/examples/key-manager/run", helpers.bin },
                                { stdout = tmp .. "/run.out", stderr = tmp .. "/run.err" })
        helpers.wait_port(9901, 20)
        helpers.wait_port(9000, 20)
        helpers.wait_port(9001, 20)
    end)

    teardown(function()
        if run_pid then
            -- run's children (weir, the backends) are ours too, started through it
            local all = tree(run_pid)
            for _, p in ipairs(all) do
                if p ~= run_pid then helpers.run({ "kill", "-TERM", tostring(p) }) end
            end
            helpers.kill(run_pid, "TERM")
            helpers.wait(run_pid, 10)
            helpers.wait_until(function()
                for _, p in ipairs(all) do
                    if helpers.read_file("/proc/" .. p .. "/stat") then return false end
                end
                return true
            end, 20, "the example's processes to exit")
        end
        helpers.cleanup()
    end)

    it("goes through the flow of its README: refused unsubscribed, echoed once subscribed, then revoked", function()
        local code, out, err = helpers.run({ tmp .. "/examples/key-manager/flow", helpers.bin }, { timeout = 60 })
        assert.equal(0, code, out .. err)
        assert.truthy(out:find("refused: 403", 1, true), out)
        assert.truthy(out:find('echoed: {"type":"hello","from":"the key-manager example"}', 1, true), out)
        assert.truthy(out:find("revoked application", 1, true), out)
        -- the consumer secret went to nobody's log
        local secret = (out .. err):match('"consumer_secret":"([^"]+)"')
        local log = helpers.read_file(tmp .. "/run.err") .. helpers.read_file(tmp .. "/run.out")
        assert.truthy(#log > 0)
        if secret then assert.falsy(log:find(secret, 1, true)) end
        assert.truthy(helpers.read_file(tmp .. "/examples/key-manager/state/weir.db"))
    end)
end)
