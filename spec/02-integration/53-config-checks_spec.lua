-- What weir -t says about policies and versions (issue 13, items 4, 5, 7
-- and 9): a policy's init runs only on an entry that passed its schema;
-- every problem of a keys file is reported at once, once per file; policies
-- of one chain with the same priority are a warning; an unknown version is
-- refused rather than handed to the default version (unknown_version).
local helpers = require "helpers"

local HASH1 = string.rep("a", 64)
local HASH2 = string.rep("b", 64)
local HASH3 = string.rep("c", 64)

local function backend_conf(extra)
    local conf = {
        workers = 1,
        listen = { { address = "127.0.0.1", port = helpers.free_port() } },
        apis = { helpers.api("Echo", "/echo", "ws://127.0.0.1:9") },
    }
    for k, v in pairs(extra or {}) do conf[k] = v end
    return conf
end

-- weir -t on CONF; returns the exit code, stdout, and stderr's lines.
local function check(conf)
    local path = helpers.write_conf(conf)
    local code, out, err = helpers.run({ helpers.bin, "-t", "-c", path })
    local lines = {}
    for l in err:gmatch("[^\n]+") do lines[#lines + 1] = l end
    return code, out, lines, err
end

local function count(lines, needle)
    local n = 0
    for _, l in ipairs(lines) do if l:find(needle, 1, true) then n = n + 1 end end
    return n
end

describe("weir -t and policies", function()
    local dir
    setup(function()
        dir = helpers.tmpdir()
        helpers.write_file(dir .. "/good-keys.txt",
            ("sha256:%s application=A subscriber=a\n"):format(HASH1))
        helpers.write_file(dir .. "/bad-keys.txt", table.concat({
            "# three bad lines: 3, 4 and 6",
            ("sha256:%s application=A subscriber=a"):format(HASH1),
            "notahash application=B subscriber=b",
            ("sha256:%s subscriber=c"):format(HASH2),
            "",
            ("sha256:%s application=D subscriber=d key_type=WEIRD"):format(HASH3),
        }, "\n") .. "\n")
        helpers.write_file(dir .. "/spec-tie.lua", [[
return { name = "spec-tie", priority = 1250, on_handshake = function() end }
]])
    end)
    teardown(helpers.cleanup)

    it("a policy entry that fails its schema is not given to the policy's init (one error, not two)", function()
        local conf = backend_conf()
        conf.apis[1].versions[1].policies = { { "key-auth", { keys_file = 42 } } }
        local code, _, lines, err = check(conf)
        assert.equal(1, code, err)
        assert.equal(1, #lines, "expected one error line, got:\n" .. err)
        assert.truthy(lines[1]:find("keys_file", 1, true), err)
        assert.equal(0, count(lines, "refused its configuration"), err)
    end)

    it("every bad line of a keys file is reported at once, once per file however many chains use it", function()
        local conf = backend_conf({ policies = { { "key-auth", { keys_file = dir .. "/bad-keys.txt" } } } })
        conf.apis[1].versions[1].policies = { { "key-auth", { keys_file = "bad-keys.txt" } } }
        conf.apis[2] = helpers.api("Other", "/other", "ws://127.0.0.1:9")
        conf.apis[2].versions[1].policies = { { "key-auth", { keys_file = "bad-keys.txt" } } }
        local code, _, lines, err = check(conf)
        assert.equal(1, code, err)
        local keys = dir .. "/bad-keys.txt"
        assert.equal(1, count(lines, keys .. ":3: a line starts with the key's hash"), err)
        assert.equal(1, count(lines, keys .. ":4: field application is required"), err)
        assert.equal(1, count(lines, keys .. ":6: key_type must be PRODUCTION or SANDBOX"), err)
        assert.equal(0, count(lines, keys .. ":2:"), err)
        -- the other two entries point at the first instead of repeating it
        assert.equal(2, count(lines, "the same problems as policies[1][2]"), err)
        assert.equal(5, #lines, err)
    end)

    it("a keys file with very many bad lines: the first 20, then how many more", function()
        local bad = {}
        for i = 1, 25 do bad[i] = "junk" .. i end
        helpers.write_file(dir .. "/junk-keys.txt", table.concat(bad, "\n") .. "\n")
        local conf = backend_conf()
        conf.apis[1].versions[1].policies = { { "key-auth", { keys_file = dir .. "/junk-keys.txt" } } }
        local code, _, lines, err = check(conf)
        assert.equal(1, code, err)
        assert.equal(21, #lines, err)
        assert.truthy(lines[20]:find("junk-keys.txt:20:", 1, true), err)
        assert.truthy(lines[21]:find("junk-keys.txt: 5 more problems after line 20", 1, true), err)
    end)

    it("a keys file's problems never quote a line's first word (it may be a raw key)", function()
        local conf = backend_conf()
        conf.apis[1].versions[1].policies = { { "key-auth", { keys_file = dir .. "/bad-keys.txt" } } }
        local _, _, _, err = check(conf)
        assert.is_nil(err:find("notahash", 1, true), err)
    end)

    it("policies of one chain with the same priority: a warning naming both and which runs first; still valid", function()
        local conf = backend_conf({ policy_paths = { dir } })
        conf.apis[1].versions[1].policies = {
            { "key-auth", { keys_file = "good-keys.txt" } },
            { "spec-tie", {} },
        }
        local code, out, lines, err = check(conf)
        assert.equal(0, code, err)
        assert.truthy(out:find("is valid", 1, true), out)
        assert.equal(1, #lines, err)
        assert.truthy(lines[1]:find("^weir: warning: "), err)
        assert.truthy(lines[1]:find('"spec-tie" has the same priority as "key-auth" (1250', 1, true), err)
        assert.truthy(lines[1]:find('"key-auth" runs first', 1, true), err)
    end)

    it("a tie between the global chain and versions is named once, not once per version", function()
        local conf = backend_conf({ policy_paths = { dir }, policies = { { "spec-tie", {} } } })
        conf.apis[1].versions[1].policies = { { "key-auth", { keys_file = "good-keys.txt" } } }
        conf.apis[1].versions[2] = { version = "2.0", endpoints = { production = "ws://127.0.0.1:9" },
                                     policies = { { "key-auth", { keys_file = "good-keys.txt" } } } }
        local code, _, lines, err = check(conf)
        assert.equal(0, code, err)
        -- one pair per distinct pair of entries: global+1.0 and global+2.0
        assert.equal(2, count(lines, "same priority"), err)
    end)

    it("a version's entry that replaces a global one runs after the global entries it ties with", function()
        local conf = backend_conf({ policy_paths = { dir }, policies = {
            { "key-auth", { keys_file = dir .. "/good-keys.txt" } },
            { "spec-tie", {} },
        } })
        conf.apis[1].versions[1].policies = { { "key-auth", { keys_file = "good-keys.txt" } } }
        local code, _, lines, err = check(conf)
        assert.equal(0, code, err)
        assert.equal(1, #lines, err)
        assert.truthy(lines[1]:find('apis[1].versions[1].policies[1]: policy "key-auth" has the same priority as '
                                    .. '"spec-tie" (1250, at policies[2]): "spec-tie" runs first', 1, true), err)
    end)

    it("policies with different priorities draw no warning", function()
        local conf = backend_conf()
        conf.apis[1].versions[1].policies = {
            { "key-auth", { keys_file = dir .. "/good-keys.txt" } },
            { "origin", { allow = { "https://example.com" } } },
        }
        local code, _, lines, err = check(conf)
        assert.equal(0, code, err)
        assert.equal(0, #lines, err)
    end)

    it("a running weir logs the tie as a configuration warning", function()
        local conf = backend_conf({ policy_paths = { dir } })
        conf.listen = nil
        conf.apis[1].versions[1].policies = {
            { "key-auth", { keys_file = dir .. "/good-keys.txt" } },
            { "spec-tie", {} },
        }
        local gw = helpers.start_weir(conf)
        local rec = gw:wait_log(function(r) return r.msg == "configuration warning" end)
        assert.truthy(rec.warning:find("same priority", 1, true), rec.warning)
        assert.equal("warn", rec.level)
        gw:stop()
    end)
end)

describe("unknown versions", function()
    local be1, be2, gw

    setup(function()
        be1 = helpers.start_backend("echo")
        be2 = helpers.start_backend("echo")
        gw = helpers.start_weir({
            apis = {
                { name = "Market", context = "/market", versions = {
                    { version = "1.0", default = true, endpoints = { production = be1.url } },
                    { version = "2.0", endpoints = { production = be2.url .. "/two" } },
                } },
                { name = "Chat", context = "/chat", unknown_version = "default", versions = {
                    { version = "1", default = true, endpoints = { production = be1.url .. "/chat" } },
                } },
            },
        })
    end)
    teardown(helpers.cleanup)

    local function upgrade(path)
        return helpers.http_request(gw.port, { path = path, headers = {
            { "Upgrade", "websocket" }, { "Connection", "Upgrade" },
            { "Sec-WebSocket-Key", helpers.ws_key() }, { "Sec-WebSocket-Version", "13" },
        } })
    end

    -- The request line the backend got for a WebSocket opened at PATH.
    local function backend_url(path)
        local ws, res = helpers.ws_connect(gw.port, { path = path })
        assert(ws, "no 101 for " .. path .. ": " .. (type(res) == "table" and res.raw or tostring(res)))
        assert(ws:send_text('{"__ctl":"report"}'))
        local msg = assert(ws:recv_message(5))
        ws:close_handshake(1000)
        ws:close()
        return helpers.json(msg.payload).__report.url
    end

    for _, path in ipairs({ "/market/v9", "/market/3.0/feed", "/market/V2", "/market/7?x=1" }) do
        it("a version-shaped segment naming no version (" .. path .. ") is refused 404 by default", function()
            local res = assert(upgrade(path))
            assert.equal(404, res.status, res.raw)
            helpers.check_error(res.body, "/problems/not-found", 404)
        end)
    end

    it("a known version is still reached", function()
        assert.equal("/two/feed", backend_url("/market/2.0/feed"))
    end)

    it("segments not shaped like a version still reach the default version", function()
        assert.equal("/feed", backend_url("/market/feed"))
        assert.equal("/v9beta", backend_url("/market/v9beta"))
        assert.equal("/", backend_url("/market"))
    end)

    it('unknown_version = "default" hands a version-shaped segment to the default version', function()
        assert.equal("/chat/v9", backend_url("/chat/v9"))
        assert.equal("/chat/42/x", backend_url("/chat/42/x"))
    end)

    it("unknown_version written as a number is an error that says to quote it", function()
        local conf = backend_conf()
        conf.apis[1].unknown_version = 404
        local code, _, lines, err = check(conf)
        assert.equal(1, code, err)
        assert.equal(1, #lines, err)
        assert.truthy(lines[1]:find('apis[1].unknown_version: expected one of 404, default, got 404 (write it in quotes: "404")',
                                    1, true), err)
    end)
end)
