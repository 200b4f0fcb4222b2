-- lua/weir/keystore.lua: the key manager's store (SQLite in WAL mode via
-- the FFI) in a plain LuaJIT.
--
-- The behaviour it shares with weir.keystore_redis is
-- spec/support/keystore_cases.lua, run here against SQLite; this file adds
-- what is SQLite's own (the file, the schema, real second processes).
--
-- Every database lives in one temporary directory per run of this file,
-- removed at the end. "Another process" is sometimes a second handle on the
-- same file in this process and sometimes a real one: `luajit -e` children
-- that open the file themselves, write and exit. Times come from an
-- injected clock, so every timestamp is exact and nothing sleeps.
local helpers  = require "helpers"
local keystore = require "weir.keystore"
local cases    = require "support.keystore_cases"
local ffi      = require "ffi"
local pstat    = require "posix.sys.stat"

local fmt = string.format

-- keystore's ffi.cdef declared libsqlite3's functions: the spec reads the
-- file behind the module's back with them
local sqlite = ffi.load("libsqlite3.so.0")

local dir
local seq = 0
local function new_path()
    seq = seq + 1
    return fmt("%s/ks-%d.db", dir, seq)
end

local T = 1700000000
local function clock() return T end

local function open(path)
    return assert(keystore.open(path or new_path(), { now = clock }))
end

-- The first column of the first row of SQL, read with a connection of its own.
-- Is ST's connection inside a transaction?
local function sqlite_in_transaction(st)
    return sqlite.sqlite3_get_autocommit(st.db) == 0
end

local function raw(path, sql)
    local pp = ffi.new("sqlite3 *[1]")
    assert(sqlite.sqlite3_open_v2(path, pp, 0x2, nil) == 0, "raw open")
    local db = pp[0]
    local sp = ffi.new("sqlite3_stmt *[1]")
    local rc = sqlite.sqlite3_prepare_v3(db, sql, #sql, 0, sp, nil)
    assert(rc == 0, ffi.string(sqlite.sqlite3_errmsg(db)))
    local v
    rc = sqlite.sqlite3_step(sp[0])
    if rc == 100 then
        local t = sqlite.sqlite3_column_type(sp[0], 0)
        if t == 1 then
            v = tonumber(sqlite.sqlite3_column_int64(sp[0], 0))
        elseif t ~= 5 then
            v = ffi.string(sqlite.sqlite3_column_text(sp[0], 0), sqlite.sqlite3_column_bytes(sp[0], 0))
        end
    else
        assert(rc == 101, ffi.string(sqlite.sqlite3_errmsg(db)))
    end
    sqlite.sqlite3_finalize(sp[0])
    sqlite.sqlite3_close_v2(db)
    return v
end

local is_err = cases.is_err

local function read_all(path)
    local f = io.open(path, "rb")
    if not f then return "" end
    local s = f:read("*a")
    f:close()
    return s
end

-- Code for a `luajit -e` child: finds weir's Lua modules, opens PATH.
local function child_code(path, body)
    return fmt("package.path = %q .. package.path\n"
        .. "local keystore = require 'weir.keystore'\n"
        .. "local st = assert(keystore.open(%q))\n%s\nst:close()\nos.exit(0)\n",
        helpers.root .. "/lua/?.lua;", path, body)
end

local function run_child(path, body)
    local code, out, err = helpers.run({ "luajit", "-e", child_code(path, body) }, { timeout = 60 })
    assert.equal(0, code, "child failed:\n" .. out .. err)
    return out
end

-- weir.keystore for the shared cases: a new file each, a second handle on
-- the same file
local backend = {
    open = function(now) return assert(keystore.open(new_path(), { now = now })) end,
    open_again = function(st, now) return assert(keystore.open(st.path, { now = now })) end,
    stored = function(st) return read_all(st.path) .. read_all(st.path .. "-wal") end,
    stored_secret_hash = function(st, consumer_key)
        return raw(st.path, fmt("SELECT secret_hash FROM keys WHERE consumer_key = '%s'", consumer_key))
    end,
    leftovers = function(st, app_id)
        return raw(st.path, fmt("SELECT count(*) FROM keys WHERE app_id = '%s'", app_id))
             + raw(st.path, fmt("SELECT count(*) FROM subscriptions WHERE app_id = '%s'", app_id))
    end,
}

describe("weir.keystore", function()
    setup(function()
        dir = helpers.tmpdir()
    end)
    teardown(helpers.cleanup)

    before_each(function() T = 1700000000 end)

    describe("open", function()
        it("creates the file mode 0600, in WAL mode, at the current schema version", function()
            local path = new_path()
            local st = open(path)
            assert.equal(tonumber("600", 8), pstat.stat(path).st_mode % 512)
            assert.equal(keystore.SCHEMA_VERSION, st:schema_version())
            assert.equal(keystore.SCHEMA_VERSION, raw(path, "PRAGMA user_version"))
            assert.equal("wal", raw(path, "PRAGMA journal_mode"))
            assert.equal(1, keystore.SCHEMA_VERSION)
            st:create_app{ name = "a", owner = "o" }
            -- SQLite gives the WAL the database's mode
            assert.equal(tonumber("600", 8), pstat.stat(path .. "-wal").st_mode % 512)
            st:close()
        end)

        it("rolls back a transaction left open by a call stopped at any instruction, as the budget stops one", function()
            local st = open()
            local jit_on = jit.status()
            jit.off()         -- count hooks do not run in compiled code (weir's budget has its own way in)
            local left_open = 0
            for n = 1, 3000, 7 do
                -- stopped after N instructions, then at every instruction (as weir's budget does)
                -- (LuaJIT's hooks are the VM's, not a coroutine's: they act only in CO)
                local co
                co = coroutine.create(function() return st:create_app{ name = "app" .. n, owner = "o" } end)
                local function again() if coroutine.running() == co then error("stopped", 2) end end
                debug.sethook(function()
                    if coroutine.running() ~= co then return end
                    debug.sethook(again, "", 1)
                    error("stopped", 2)
                end, "", n)
                local ok = coroutine.resume(co)
                debug.sethook()
                if not ok and sqlite_in_transaction(st) then left_open = left_open + 1 end
                -- whatever it left, the next call works and keeps only its own
                local app, code, msg = st:create_app{ name = "next" .. n, owner = "o" }
                assert(app, tostring(code) .. ": " .. tostring(msg) .. " (stopped at " .. n .. ")")
                assert.equal("next" .. n, st:get_app(app.id).name)
            end
            if jit_on then jit.on() end
            assert.is_true(left_open > 0, "no stop left a transaction open: nothing was tested")
            st:close()
        end)

        it("keeps the data when the file is opened again", function()
            local path = new_path()
            local st = open(path)
            local app = assert(st:create_app{ name = "kept", owner = "o" })
            local keys = assert(st:generate_keys(app.id, "sandbox"))
            assert(st:subscribe{ app = "kept", api = "Echo", version = "1.0", tier = "Gold" })
            assert(st:revoke_token("jti-1", T + 60))
            assert(st:add_signing_key{ kid = "k1", private_pem = "PEM", public_jwk = "{}" })
            local gen = st:generation()
            st:close()

            st = open(path)
            assert.same(app, st:get_app(app.id))
            local same, key_type = st:check_client(keys.consumer_key, keys.consumer_secret)
            assert.equal(app.id, same.id)
            assert.equal("sandbox", key_type)
            assert.equal("Gold", st:subscription("kept", "Echo", "1.0").tier)
            assert.is_true(st:token_revoked("jti-1"))
            assert.equal("k1", st:signing_keys()[1].kid)
            assert.equal(gen, st:generation())
            assert.equal(keystore.SCHEMA_VERSION, st:schema_version())
            st:close()
        end)

        it("does not create a missing directory", function()
            local path = dir .. "/no-such-dir/ks.db"
            is_err("internal", "no%-such%-dir", keystore.open(path))
            assert.is_nil(pstat.stat(dir .. "/no-such-dir"))
        end)

        it("refuses a file that is not a database", function()
            local path = new_path()
            helpers.write_file(path, ("not a database\n"):rep(200))
            is_err("internal", "not a database", keystore.open(path))
        end)

        it("refuses a schema newer than it knows", function()
            local path = new_path()
            open(path):close()
            raw(path, "PRAGMA user_version = 99")
            is_err("internal", "version 99, newer", keystore.open(path))
        end)

        it("applies the migrations a database lacks, from its table", function()
            local path = new_path()
            local st = open(path)
            assert(st:create_app{ name = "before", owner = "o" })
            local gen = st:generation()
            st:close()
            local migrations = keystore._migrations
            migrations[#migrations + 1] = "ALTER TABLE apps ADD COLUMN note TEXT; "
                .. "UPDATE apps SET note = 'migrated';"
            local ok, err = pcall(function()
                st = open(path)
                assert.equal(2, st:schema_version())
                assert.equal("migrated", raw(path, "SELECT note FROM apps WHERE name = 'before'"))
                assert.equal("before", st:get_app("before").name)
                assert.is_true(st:generation() > gen)
                st:close()
            end)
            migrations[#migrations] = nil
            assert(ok, err)
        end)

        it("refuses bad arguments", function()
            is_err("invalid", "path", keystore.open(nil))
            is_err("invalid", "path", keystore.open(""))
            is_err("invalid", "unknown field", keystore.open(new_path(), { busy = 1 }))
            is_err("invalid", "busy_timeout", keystore.open(new_path(), { busy_timeout = -1 }))
            is_err("invalid", "now", keystore.open(new_path(), { now = 5 }))
        end)

    end)

    cases.run(backend)

    describe("consumer keys", function()
        -- a key or secret starting with "-" reads as an option on a command
        -- line (weir token KEY): one base64url draw in 64 starts so
        it("never start with \"-\", nor do their secrets (4,000 pairs)", function()
            local rules = require "weir.keystore_rules"
            local first = {}
            for _ = 1, 4000 do
                local key, secret = rules.new_keys()
                assert.equal(24, #key)
                assert.equal(43, #secret)
                assert.is_nil(key:find("^%-"), key)
                assert.is_nil(secret:find("^%-"), "a secret starting with -")
                first[key:sub(1, 1)] = true
            end
            -- the other 63 characters still begin them (not, say, always "A")
            local n = 0
            for _ in pairs(first) do n = n + 1 end
            assert.equal(63, n)
        end)
    end)

    describe("generation", function()
        it("changes when another process commits", function()
            local path = new_path()
            local st = open(path)
            local g = st:generation()
            run_child(path, [[
                local app = assert(st:create_app{ name = "from-child", owner = "o" })
                assert(st:subscribe{ app = app.id, api = "Echo", version = "1.0", tier = "Gold" })
            ]])
            local g2 = st:generation()
            assert.equal(g + 2, g2)
            assert.equal("from-child", st:get_app("from-child").name)
            assert.equal("Gold", st:subscription("from-child", "Echo", "1.0").tier)
            assert.equal(g2, st:generation())
            st:close()
        end)
    end)

    describe("several processes", function()
        -- Children wait for a "go" file after saying they are ready, so
        -- they start writing together.
        local function start_children(path, n, body)
            local go = path .. ".go"
            local pids, outs = {}, {}
            for i = 1, n do
                local ready = fmt("%s.ready%d", path, i)
                local code = fmt([[
                    package.path = %q .. package.path
                    local ffi = require "ffi"
                    ffi.cdef "int usleep(unsigned int us);"
                    local id = %d
                    io.open(%q, "w"):close()
                    local waited = 0
                    while true do
                        local f = io.open(%q)
                        if f then f:close(); break end
                        ffi.C.usleep(2000); waited = waited + 1
                        assert(waited < 5000, "no go")
                    end
                    local keystore = require "weir.keystore"
                    %s
                    os.exit(0)
                ]], helpers.root .. "/lua/?.lua;", i, ready, go, body)
                outs[i] = fmt("%s.child%d.out", path, i)
                pids[i] = helpers.spawn({ "luajit", "-e", code }, { stdout = outs[i], stderr = outs[i] })
            end
            helpers.wait_until(function()
                for i = 1, n do
                    if not pstat.stat(fmt("%s.ready%d", path, i)) then return false end
                end
                return true
            end, 30, "the children to be ready")
            helpers.write_file(go, "go")
            for i = 1, n do
                local code, how = helpers.wait(pids[i], 120)
                assert.equal(0, code, fmt("child %d: %s\n%s", i, tostring(how), read_all(outs[i])))
            end
            return outs
        end

        -- A child that takes the write lock with a connection of its own,
        -- changes the generation counter, says so, and commits after
        -- HOLD_MS, or once the spec writes the release file.
        local function lock_holder(path, hold_ms)
            local ready, release = path .. ".locked", path .. ".release"
            local code = fmt([[
                package.path = %q .. package.path
                require "weir.keystore"    -- declares libsqlite3's functions
                local ffi = require "ffi"
                ffi.cdef "int usleep(unsigned int us);"
                local sqlite = ffi.load("libsqlite3.so.0")
                local pp = ffi.new("sqlite3 *[1]")
                assert(sqlite.sqlite3_open_v2(%q, pp, 2, nil) == 0)
                local db = pp[0]
                local function exec(sql)
                    assert(sqlite.sqlite3_exec(db, sql, nil, nil, nil) == 0, ffi.string(sqlite.sqlite3_errmsg(db)))
                end
                exec("BEGIN IMMEDIATE")
                exec("UPDATE meta SET value = value + 1 WHERE name = 'generation'")
                io.open(%q, "w"):close()
                local hold = %d
                if hold > 0 then
                    ffi.C.usleep(hold * 1000)
                else
                    for _ = 1, 10000 do
                        local f = io.open(%q)
                        if f then f:close(); break end
                        ffi.C.usleep(2000)
                    end
                end
                exec("COMMIT")
                sqlite.sqlite3_close_v2(db)
                os.exit(0)
            ]], helpers.root .. "/lua/?.lua;", path, ready, hold_ms or 0, release)
            local out = path .. ".holder.out"
            local pid = helpers.spawn({ "luajit", "-e", code }, { stdout = out, stderr = out })
            helpers.wait_until(function() return pstat.stat(ready) end, 30, "the child to take the lock")
            return {
                release = function() helpers.write_file(release, "go") end,
                wait = function()
                    local c, how = helpers.wait(pid, 60)
                    assert.equal(0, c, "lock holder: " .. tostring(how) .. "\n" .. read_all(out))
                end,
            }
        end

        it("a write waits while another process holds the write lock", function()
            local path = new_path()
            local st = open(path)
            local app = assert(st:create_app{ name = "a", owner = "o" })
            local g0 = st:generation()
            -- held for 300 ms, well inside the 2 s busy timeout; this write
            -- reads before it writes, so it must take the lock first
            local holder = lock_holder(path, 300)
            local keys = assert(st:generate_keys(app.id, "production"))
            holder.wait()
            assert(st:check_client(keys.consumer_key, keys.consumer_secret))
            assert.equal(g0 + 2, st:generation())
            st:close()
        end)

        it("a write gives up with internal after the busy timeout", function()
            local path = new_path()
            open(path):close()
            local st = assert(keystore.open(path, { busy_timeout = 50 }))
            local g0 = st:generation()
            local holder = lock_holder(path)     -- until released
            is_err("internal", "busy", st:create_app{ name = "late", owner = "o" })
            holder.release()
            holder.wait()
            is_err("not_found", nil, st:get_app("late"))
            assert.equal(g0 + 1, st:generation())
            assert(st:create_app{ name = "late", owner = "o" })
            st:close()
        end)

        it("write at once without failing: each waits its turn", function()
            local path = new_path()
            local st = open(path)
            local g0 = st:generation()
            local N = 100
            start_children(path, 2, fmt([[
                local st = assert(keystore.open(%q))
                for i = 1, %d do
                    local name = "c" .. id .. "-" .. i
                    local app = assert(st:create_app{ name = name, owner = "child" .. id })
                    assert(st:generate_keys(app.id, "production"))
                    assert(st:subscribe{ app = app.id, api = "Echo", version = "1.0", tier = "Gold" })
                    assert(st:update_app(app.id, { tier = "Gold" }))
                end
                st:close()
            ]], path, N))
            local apps, total = st:list_apps{ limit = 1000 }
            assert.equal(2 * N, total)
            assert.equal(N, select(2, st:list_apps{ owner = "child1" }))
            assert.equal(N, select(2, st:list_apps{ owner = "child2" }))
            assert.equal(2 * N, select(2, st:list_subscriptions{ limit = 1000 }))
            for _, app in ipairs(apps) do
                assert.equal(1, #st:list_keys(app.id))
                assert.equal("Gold", app.tier)
            end
            -- one bump per committed change, none lost
            assert.equal(g0 + 2 * N * 4, st:generation())
            st:close()
        end)

        it("open a new file at once: one creates the schema, all work", function()
            local path = new_path()
            start_children(path, 3, fmt([[
                local st = assert(keystore.open(%q))
                assert(st:schema_version() == keystore.SCHEMA_VERSION)
                assert(st:create_app{ name = "opened-by-" .. id, owner = "o" })
                st:close()
            ]], path))
            local st = open(path)
            assert.equal(3, select(2, st:list_apps()))
            assert.equal(keystore.SCHEMA_VERSION, st:schema_version())
            assert.equal(tonumber("600", 8), pstat.stat(path).st_mode % 512)
            -- the schema's one bump, and one per application
            assert.equal(4, st:generation())
            st:close()
        end)
    end)
end)
