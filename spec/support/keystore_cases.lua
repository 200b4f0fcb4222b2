-- spec/support/keystore_cases.lua: the behaviour both key manager stores
-- share (weir.keystore on SQLite, weir.keystore_redis on Redis), run by
-- spec/01-unit/keystore_spec.lua and spec/01-unit/keystore_redis_spec.lua
-- against each.
--
-- `cases.run(backend)` adds the shared `describe`s inside the caller's. The
-- backend gives:
--
--   open(clock)              a new, empty store whose clock is CLOCK
--   open_again(st, clock)    a second handle on ST's data (another
--                            connection: another worker, another host)
--   stored(st)               everything the store keeps, as one string
--                            (to look for secrets in)
--   stored_secret_hash(st, consumer_key)   the hash kept for that key
--   leftovers(st, app_id, ids)   how many stored records still refer to the
--                            application APP_ID (or, where the store can tell,
--                            to the consumer keys and subscription ids IDS)
--
-- Times come from an injected clock, so timestamps are exact and nothing
-- sleeps. `cases.is_err` (for the callers too) works once `run` was called.
local ffi = require "ffi"

local fmt, concat = string.format, table.concat

local cases = {}

local T = 1700000000
local function clock() return T end

function cases.is_err(code, pattern, v, c, m)
    assert.is_nil(v)
    assert.equal(code, c)
    assert.is_string(m)
    if pattern then assert.truthy(m:find(pattern), "message: " .. tostring(m)) end
end
local is_err = cases.is_err

-- Everything a value holds, flattened to strings (to look for secrets in).
local function strings_of(v, out)
    out = out or {}
    if type(v) == "table" then
        for k, x in pairs(v) do strings_of(k, out); strings_of(x, out) end
    elseif v ~= nil then
        out[#out + 1] = tostring(v)
    end
    return out
end

function cases.contains(v, needle)
    for _, s in ipairs(strings_of(v)) do
        if s:find(needle, 1, true) then return true end
    end
    return false
end
local contains = cases.contains

-- (the stores' modules declared SHA256)
function cases.sha256_hex(s)
    local md = ffi.new("unsigned char[32]")
    ffi.load("libcrypto.so.3").SHA256(s, #s, md)
    local h = {}
    for i = 0, 31 do h[i + 1] = fmt("%02x", md[i]) end
    return concat(h)
end
local sha256_hex = cases.sha256_hex

function cases.run(backend)
    -- busted's describe, it, assert… are in the calling spec's environment
    local env = getfenv(2)
    setfenv(1, env)
    setfenv(is_err, env)

    before_each(function() T = 1700000000 end)

    describe("closing", function()
        it("answers internal once closed, and closes twice", function()
            local st = backend.open(clock)
            assert.is_true(st:close())
            assert.is_true(st:close())
            is_err("internal", "closed", st:get_app("x"))
            is_err("internal", "closed", st:create_app{ name = "x", owner = "o" })
            is_err("internal", "closed", st:generation())
        end)
    end)

    describe("applications", function()
        local st
        before_each(function() st = backend.open(clock) end)
        after_each(function() st:close() end)

        it("creates one with the defaults", function()
            local app = assert(st:create_app{ name = "app1", owner = "alice" })
            assert.truthy(app.id:find("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"))
            assert.same({ id = app.id, name = "app1", owner = "alice", description = "", tier = "Unlimited",
                          scopes = {}, created_at = T, updated_at = T }, app)
            assert.is_nil(app.revoked_at)
            assert.same(app, st:get_app(app.id))
            assert.same(app, st:get_app("app1"))
            assert.same(app, st:get_app(app.id:upper()))
        end)

        it("creates one with every field", function()
            local desc = ("Line one\n\tline two é ✓ "):rep(30):sub(1, 900)
            local app = assert(st:create_app{ name = "Ünïcode app ✓", owner = "bob@example.com",
                description = desc, tier = "Gold", scopes = { "read", "write:all", "a/b.c_d-e" } })
            assert.equal("Ünïcode app ✓", app.name)
            assert.equal(desc, app.description)
            assert.equal("Gold", app.tier)
            assert.same({ "read", "write:all", "a/b.c_d-e" }, app.scopes)
            assert.same(app, st:get_app("Ünïcode app ✓"))
        end)

        it("gives every application its own id", function()
            local seen = {}
            for i = 1, 20 do
                local app = assert(st:create_app{ name = "n" .. i, owner = "o" })
                assert.is_nil(seen[app.id])
                seen[app.id] = true
            end
        end)

        local long = function(n, c) return (c or "x"):rep(n) end
        local scopes51 = {}
        for i = 1, 51 do scopes51[i] = "s" .. i end
        local bad = {
            { "no name", { owner = "o" }, "name is required" },
            { "no owner", { name = "n" }, "owner is required" },
            { "an empty name", { name = "", owner = "o" }, "name must be 1 to 100" },
            { "a 101-character name", { name = long(101), owner = "o" }, "name must be 1 to 100" },
            { "a name with a newline", { name = "a\nb", owner = "o" }, "control" },
            { "a name with a NUL", { name = "a\0b", owner = "o" }, "control" },
            { "a name shaped like an id", { name = "12345678-1234-4234-8234-123456789abc", owner = "o" },
              "UUID" },
            { "a name that is not UTF-8", { name = "a\255b", owner = "o" }, "UTF%-8" },
            { "an overlong UTF-8 form", { name = "\192\175", owner = "o" }, "UTF%-8" },
            { "a number for a name", { name = 5, owner = "o" }, "name must be a string" },
            { "an empty owner", { name = "n", owner = "" }, "owner must be 1 to 200" },
            { "a 201-character owner", { name = "n", owner = long(201) }, "owner must be 1 to 200" },
            { "a 1001-character description", { name = "n", owner = "o", description = long(1001, "é") },
              "description must be at most 1000" },
            { "a description with a bell", { name = "n", owner = "o", description = "ding\7" }, "control" },
            { "an empty tier", { name = "n", owner = "o", tier = "" }, "tier must be 1 to 64" },
            { "a 65-character tier", { name = "n", owner = "o", tier = long(65) }, "tier must be 1 to 64" },
            { "scopes not a table", { name = "n", owner = "o", scopes = "read" }, "array" },
            { "scopes with a key", { name = "n", owner = "o", scopes = { x = "read" } }, "array" },
            { "a scope with a space", { name = "n", owner = "o", scopes = { "a b" } }, "scope 1" },
            { "an empty scope", { name = "n", owner = "o", scopes = { "ok", "" } }, "scope 2" },
            { "a 101-character scope", { name = "n", owner = "o", scopes = { long(101) } }, "scope 1" },
            { "51 scopes", { name = "n", owner = "o", scopes = scopes51 }, "at most 50" },
            { "a scope twice", { name = "n", owner = "o", scopes = { "a", "a" } }, "duplicate" },
            { "an unknown field", { name = "n", owner = "o", colour = "red" }, "unknown field colour" },
        }
        for _, case in ipairs(bad) do
            it("refuses " .. case[1], function()
                local gen = st:generation()
                is_err("invalid", case[3], st:create_app(case[2]))
                assert.equal(0, select(2, st:list_apps()))
                assert.equal(gen, st:generation())
            end)
        end

        it("accepts the limits exactly", function()
            local scopes = {}
            for i = 1, 50 do scopes[i] = long(100 - #tostring(i)) .. i end
            assert(st:create_app{ name = long(100, "é"), owner = long(200), description = long(1000),
                                  tier = long(64), scopes = scopes })
        end)

        it("keeps names unique, case-sensitively", function()
            local a = assert(st:create_app{ name = "app", owner = "o" })
            is_err("conflict", 'named "app" exists', st:create_app{ name = "app", owner = "p" })
            local b = assert(st:create_app{ name = "App", owner = "o" })
            assert.not_equal(a.id, b.id)
            assert.equal(b.id, st:get_app("App").id)
            assert.equal(a.id, st:get_app("app").id)
        end)

        it("does not find what is not there", function()
            is_err("not_found", nil, st:get_app("nobody"))
            is_err("not_found", nil, st:get_app("12345678-1234-4234-8234-123456789abc"))
            is_err("invalid", nil, st:get_app(nil))
            is_err("invalid", nil, st:get_app(""))
        end)

        it("lists in creation order, with filters, pages and the total", function()
            local made = {}
            for i = 1, 7 do
                T = T + 1
                made[i] = assert(st:create_app{ name = "app" .. i, owner = i % 2 == 0 and "even" or "odd" })
            end
            local all, total = st:list_apps()
            assert.equal(7, total)
            assert.same(made, all)

            local odd, n = st:list_apps{ owner = "odd" }
            assert.equal(4, n)
            assert.same({ "app1", "app3", "app5", "app7" }, { odd[1].name, odd[2].name, odd[3].name, odd[4].name })

            local page, n2 = st:list_apps{ limit = 2, offset = 3 }
            assert.equal(7, n2)
            assert.same({ made[4], made[5] }, page)
            local last = st:list_apps{ limit = 5, offset = 5 }
            assert.same({ made[6], made[7] }, last)
            local none, n3 = st:list_apps{ offset = 10 }
            assert.same({}, none)
            assert.equal(7, n3)

            local one, n4 = st:list_apps{ name = "app2" }
            assert.equal(1, n4)
            assert.same({ made[2] }, one)
            local zero, n5 = st:list_apps{ name = "app2", owner = "odd" }
            assert.same({}, zero)
            assert.equal(0, n5)
        end)

        it("refuses bad list arguments", function()
            is_err("invalid", "limit", st:list_apps{ limit = 0 })
            is_err("invalid", "limit", st:list_apps{ limit = 1001 })
            is_err("invalid", "limit", st:list_apps{ limit = 1.5 })
            is_err("invalid", "offset", st:list_apps{ offset = -1 })
            is_err("invalid", "owner", st:list_apps{ owner = 1 })
            is_err("invalid", "unknown field", st:list_apps{ page = 2 })
            assert(st:list_apps{ limit = 1000 })
        end)

        it("updates fields, and updated_at", function()
            local app = assert(st:create_app{ name = "u", owner = "o", scopes = { "a" } })
            T = T + 100
            local up = assert(st:update_app(app.id, { name = "u2", tier = "Gold", description = "d",
                                                       scopes = { "b", "c" } }))
            assert.same({ id = app.id, name = "u2", owner = "o", description = "d", tier = "Gold",
                          scopes = { "b", "c" }, created_at = app.created_at, updated_at = T + 0 }, up)
            assert.same(up, st:get_app("u2"))
            is_err("not_found", nil, st:get_app("u"))
            -- by name too, and clearing
            up = assert(st:update_app("u2", { owner = "p", scopes = {}, description = "" }))
            assert.equal("p", up.owner)
            assert.same({ up }, (st:list_apps{ owner = "p" }))
            assert.equal(0, select(2, st:list_apps{ owner = "o" }))
            assert.same({}, up.scopes)
            assert.equal("", up.description)
            assert.equal("Gold", up.tier)
            -- nothing to change: nothing written
            local gen = st:generation()
            assert.same(up, st:update_app(app.id, {}))
            assert.equal(gen, st:generation())
        end)

        it("refuses bad updates", function()
            local a = assert(st:create_app{ name = "a", owner = "o" })
            assert(st:create_app{ name = "b", owner = "o" })
            is_err("invalid", "unknown field id", st:update_app(a.id, { id = "x" }))
            is_err("invalid", "unknown field created_at", st:update_app(a.id, { created_at = 1 }))
            is_err("invalid", "tier", st:update_app(a.id, { tier = "" }))
            is_err("invalid", "takes a table", st:update_app(a.id, nil))
            is_err("conflict", 'named "b" exists', st:update_app(a.id, { name = "b" }))
            is_err("not_found", nil, st:update_app("nobody", { tier = "Gold" }))
            assert.same(a, st:get_app(a.id))
        end)

        it("deletes one with its keys and subscriptions, and nothing else", function()
            local a = assert(st:create_app{ name = "a", owner = "o" })
            local b = assert(st:create_app{ name = "b", owner = "o" })
            local ka = assert(st:generate_keys(a.id, "production"))
            local ka2 = assert(st:generate_keys(a.id, "sandbox"))
            local kb = assert(st:generate_keys(b.id, "production"))
            local sa = assert(st:subscribe{ app = a.id, api = "Echo", version = "1.0", tier = "Gold" })
            local sb = assert(st:subscribe{ app = b.id, api = "Echo", version = "1.0", tier = "Gold" })
            assert.is_true(backend.leftovers(st, a.id, { ka.consumer_key, ka2.consumer_key, sa.id }) > 0)

            assert.is_true(st:delete_app(a.id))
            is_err("not_found", nil, st:get_app(a.id))
            is_err("not_found", nil, st:check_client(ka.consumer_key, ka.consumer_secret))
            is_err("not_found", nil, st:find_key(ka2.consumer_key))
            is_err("not_found", nil, st:get_subscription(sa.id))
            is_err("not_found", nil, st:list_keys(a.id))
            assert.equal(0, backend.leftovers(st, a.id, { ka.consumer_key, ka2.consumer_key, sa.id }))

            assert.equal(b.id, (st:check_client(kb.consumer_key, kb.consumer_secret)).id)
            assert.same(sb, st:get_subscription(sb.id))
            is_err("not_found", nil, st:delete_app(a.id))
            -- by name
            assert.is_true(st:delete_app("b"))
            assert.equal(0, select(2, st:list_subscriptions()))
        end)

        it("revokes one: its keys and subscriptions stop working, the records stay", function()
            local app = assert(st:create_app{ name = "r", owner = "o" })
            local keys = assert(st:generate_keys(app.id, "production"))
            local sub = assert(st:subscribe{ app = "r", api = "Echo", version = "1.0", tier = "Gold" })
            assert(st:check_client(keys.consumer_key, keys.consumer_secret))
            assert(st:subscription("r", "Echo", "1.0"))

            T = T + 5
            local rev = assert(st:revoke_app(app.id))
            assert.equal(T, rev.revoked_at)
            assert.equal(T, st:get_app("r").revoked_at)
            is_err("not_found", "invalid client credentials", st:check_client(keys.consumer_key, keys.consumer_secret))
            is_err("not_found", nil, st:subscription("r", "Echo", "1.0"))
            assert.same(sub, st:get_subscription(sub.id))
            local found = st:find_key(keys.consumer_key)
            assert.equal(T, found.revoked_at)
            is_err("conflict", "revoked", st:generate_keys(app.id, "sandbox"))
            is_err("conflict", "revoked", st:subscribe{ app = "r", api = "Echo", version = "2.0", tier = "Gold" })

            T = T + 5
            assert.equal(T - 5, assert(st:revoke_app("r")).revoked_at)
            is_err("not_found", nil, st:revoke_app("nobody"))
        end)
    end)

    describe("consumer keys", function()
        local st, app
        before_each(function()
            st = backend.open(clock)
            app = assert(st:create_app{ name = "app", owner = "o" })
        end)
        after_each(function() st:close() end)

        it("makes a random key and a 32-byte secret, base64url", function()
            local k = assert(st:generate_keys(app.id, "production"))
            assert.equal("production", k.key_type)
            assert.equal(T, k.created_at)
            assert.truthy(#k.consumer_key >= 22)
            assert.truthy(k.consumer_key:find("^[A-Za-z0-9_-]+$"))
            assert.equal(43, #k.consumer_secret)
            assert.truthy(k.consumer_secret:find("^[A-Za-z0-9_-]+$"))
            local k2 = assert(st:generate_keys("app", "sandbox"))
            assert.not_equal(k.consumer_key, k2.consumer_key)
            assert.not_equal(k.consumer_secret, k2.consumer_secret)
        end)

        it("refuses a bad key type and an unknown application", function()
            is_err("invalid", "key_type", st:generate_keys(app.id, "staging"))
            is_err("invalid", "key_type", st:generate_keys(app.id, nil))
            is_err("not_found", nil, st:generate_keys("nobody", "production"))
            assert.same({}, st:list_keys(app.id))
        end)

        it("keeps one pair per type: regenerating replaces that type's only", function()
            local p1 = assert(st:generate_keys(app.id, "production"))
            local s1 = assert(st:generate_keys(app.id, "sandbox"))
            T = T + 10
            local p2 = assert(st:generate_keys(app.id, "production"))
            is_err("not_found", nil, st:check_client(p1.consumer_key, p1.consumer_secret))
            is_err("not_found", nil, st:find_key(p1.consumer_key))
            assert.equal("production", select(2, st:check_client(p2.consumer_key, p2.consumer_secret)))
            assert.equal("sandbox", select(2, st:check_client(s1.consumer_key, s1.consumer_secret)))
            assert.same({
                { consumer_key = p2.consumer_key, key_type = "production", created_at = T },
                { consumer_key = s1.consumer_key, key_type = "sandbox", created_at = T - 10 },
            }, st:list_keys(app.id))
            -- a revoked pair is replaced too
            assert(st:revoke_key(p2.consumer_key))
            local p3 = assert(st:generate_keys(app.id, "production"))
            assert(st:check_client(p3.consumer_key, p3.consumer_secret))
            assert.equal(2, #st:list_keys(app.id))
        end)

        it("never gives back the secret or its hash after generate_keys, and stores only the hash", function()
            local k = assert(st:generate_keys(app.id, "production"))
            local hash = sha256_hex(k.consumer_secret)
            local seen = { st:list_keys(app.id), st:get_app(app.id), { st:find_key(k.consumer_key) },
                           { st:check_client(k.consumer_key, k.consumer_secret) }, { st:list_apps() },
                           { st:check_client(k.consumer_key, "wrong") } }
            for _, v in ipairs(seen) do
                assert.is_false(contains(v, k.consumer_secret))
                assert.is_false(contains(v, hash))
            end
            local stored = backend.stored(st)
            assert.is_nil(stored:find(k.consumer_secret, 1, true))
            assert.truthy(stored:find(hash, 1, true))
            assert.equal(hash, backend.stored_secret_hash(st, k.consumer_key))
        end)

        it("checks client credentials", function()
            local k = assert(st:generate_keys(app.id, "sandbox"))
            local got, key_type = st:check_client(k.consumer_key, k.consumer_secret)
            assert.same(st:get_app(app.id), got)
            assert.equal("sandbox", key_type)

            local refused = {
                { k.consumer_key, k.consumer_secret .. "x" },
                { k.consumer_key, k.consumer_secret:sub(1, 42) },
                { k.consumer_key, "" },
                { k.consumer_key, k.consumer_secret:upper() },
                { "no-such-key-000000000000", k.consumer_secret },
                { "", "" },
            }
            for _, c in ipairs(refused) do
                local v, code, msg = st:check_client(c[1], c[2])
                is_err("not_found", nil, v, code, msg)
                assert.equal("invalid client credentials", msg)
            end
            is_err("invalid", nil, st:check_client(k.consumer_key, nil))
            is_err("invalid", nil, st:check_client(nil, k.consumer_secret))
            is_err("invalid", nil, st:check_client(k.consumer_key, 12))
        end)

        it("refuses a revoked key, and keeps it listed", function()
            local k = assert(st:generate_keys(app.id, "production"))
            T = T + 3
            assert.is_true(st:revoke_key(k.consumer_key))
            local v, code, msg = st:check_client(k.consumer_key, k.consumer_secret)
            is_err("not_found", nil, v, code, msg)
            assert.equal("invalid client credentials", msg)
            assert.same({ { consumer_key = k.consumer_key, key_type = "production", created_at = T - 3,
                            revoked_at = T } }, st:list_keys(app.id))
            T = T + 3
            assert.is_true(st:revoke_key(k.consumer_key))
            assert.equal(T - 3, st:list_keys(app.id)[1].revoked_at)
            is_err("not_found", nil, st:revoke_key("nope"))
            is_err("invalid", nil, st:revoke_key(nil))
        end)

        it("finds a key's application and record", function()
            local k = assert(st:generate_keys(app.id, "production"))
            local got, key_type, rec = st:find_key(k.consumer_key)
            assert.same(st:get_app(app.id), got)
            assert.equal("production", key_type)
            assert.same({ consumer_key = k.consumer_key, key_type = "production", created_at = T }, rec)
            is_err("not_found", nil, st:find_key("nope"))
            is_err("invalid", nil, st:find_key(5))
        end)

        it("lists keys of an application only", function()
            local other = assert(st:create_app{ name = "other", owner = "o" })
            assert(st:generate_keys(other.id, "production"))
            assert.same({}, st:list_keys(app.id))
            assert.equal(1, #st:list_keys("other"))
            is_err("not_found", nil, st:list_keys("nobody"))
        end)
    end)

    describe("subscriptions", function()
        local st, app
        before_each(function()
            st = backend.open(clock)
            app = assert(st:create_app{ name = "app", owner = "o" })
        end)
        after_each(function() st:close() end)

        it("subscribes by name or id", function()
            local s = assert(st:subscribe{ app = "app", api = "Echo", version = "1.0", tier = "Gold" })
            assert.truthy(s.id:find("^%x+%-%x+%-4%x+%-%x+%-%x+$"))
            assert.same({ id = s.id, app_id = app.id, app_name = "app", api = "Echo", version = "1.0",
                          tier = "Gold", created_at = T, updated_at = T }, s)
            local s2 = assert(st:subscribe{ app = app.id, api = "Echo", version = "2.0", tier = "Silver" })
            assert.equal(app.id, s2.app_id)
            assert.same(s, st:get_subscription(s.id))
            assert.same(s, st:subscription("app", "Echo", "1.0"))
            assert.same(s2, st:subscription("app", "Echo", "2.0"))
        end)

        it("allows one subscription per application and API version", function()
            assert(st:subscribe{ app = "app", api = "Echo", version = "1.0", tier = "Gold" })
            is_err("conflict", "subscribed", st:subscribe{ app = app.id, api = "Echo", version = "1.0", tier = "Bronze" })
            assert(st:subscribe{ app = "app", api = "echo", version = "1.0", tier = "Gold" })
            local other = assert(st:create_app{ name = "other", owner = "o" })
            assert(st:subscribe{ app = other.id, api = "Echo", version = "1.0", tier = "Gold" })
            assert.equal(3, select(2, st:list_subscriptions()))
        end)

        it("refuses bad subscriptions", function()
            is_err("not_found", nil, st:subscribe{ app = "nobody", api = "Echo", version = "1.0", tier = "Gold" })
            is_err("invalid", "app is required", st:subscribe{ api = "Echo", version = "1.0", tier = "Gold" })
            is_err("invalid", "api is required", st:subscribe{ app = "app", version = "1.0", tier = "Gold" })
            is_err("invalid", "version is required", st:subscribe{ app = "app", api = "E", tier = "Gold" })
            is_err("invalid", "tier is required", st:subscribe{ app = "app", api = "E", version = "1" })
            is_err("invalid", "api must be 1 to 200",
                   st:subscribe{ app = "app", api = ("a"):rep(201), version = "1", tier = "G" })
            is_err("invalid", "version must be 1 to 64",
                   st:subscribe{ app = "app", api = "E", version = ("1"):rep(65), tier = "G" })
            is_err("invalid", "control", st:subscribe{ app = "app", api = "E\r", version = "1", tier = "G" })
            is_err("invalid", "unknown field", st:subscribe{ app = "app", api = "E", version = "1", tier = "G",
                                                             plan = "x" })
            is_err("invalid", "takes a table", st:subscribe("app"))
            assert.equal(0, select(2, st:list_subscriptions()))
        end)

        it("lists with filters, pages and the total", function()
            local other = assert(st:create_app{ name = "other", owner = "o" })
            local made = {}
            for i, s in ipairs{ { "app", "Echo", "1.0" }, { "app", "Echo", "2.0" }, { "other", "Echo", "1.0" },
                                { "app", "Chat", "1.0" }, { "other", "Chat", "2.0" } } do
                T = T + 1
                made[i] = assert(st:subscribe{ app = s[1], api = s[2], version = s[3], tier = "Gold" })
            end
            local all, n = st:list_subscriptions()
            assert.equal(5, n)
            assert.same(made, all)
            local by_name, n1 = st:list_subscriptions{ app = "other" }
            assert.equal(2, n1)
            assert.same({ made[3], made[5] }, by_name)
            assert.same({ made[3], made[5] }, (st:list_subscriptions{ app = other.id }))
            assert.same({ made[1], made[3] }, (st:list_subscriptions{ api = "Echo", version = "1.0" }))
            local mine, n4 = st:list_subscriptions{ app = "app", api = "Echo" }
            assert.equal(2, n4)
            assert.same({ made[1], made[2] }, mine)
            assert.same({ made[1], made[4] }, (st:list_subscriptions{ app = app.id, version = "1.0" }))
            assert.same({ made[2], made[5] }, (st:list_subscriptions{ version = "2.0" }))
            assert.same({ made[5] }, (st:list_subscriptions{ app = "other", api = "Chat", version = "2.0" }))
            local second, n5 = st:list_subscriptions{ app = "app", version = "1.0", offset = 1 }
            assert.equal(2, n5)
            assert.same({ made[4] }, second)
            local first, n6 = st:list_subscriptions{ app = "app", version = "1.0", limit = 1 }
            assert.equal(2, n6)
            assert.same({ made[1] }, first)
            local page, n2 = st:list_subscriptions{ api = "Echo", limit = 1, offset = 1 }
            assert.equal(3, n2)
            assert.same({ made[2] }, page)
            local none, n3 = st:list_subscriptions{ app = "nobody" }
            assert.same({}, none)
            assert.equal(0, n3)
            is_err("invalid", "limit", st:list_subscriptions{ limit = 0 })
            is_err("invalid", "unknown field", st:list_subscriptions{ tier = "Gold" })
        end)

        it("changes a tier, and unsubscribes", function()
            local s = assert(st:subscribe{ app = "app", api = "Echo", version = "1.0", tier = "Gold" })
            T = T + 7
            local up = assert(st:update_subscription(s.id, { tier = "Bronze" }))
            assert.equal("Bronze", up.tier)
            assert.equal(T, up.updated_at)
            assert.equal(s.created_at, up.created_at)
            assert.same(up, st:subscription("app", "Echo", "1.0"))
            is_err("invalid", "unknown field", st:update_subscription(s.id, { api = "Other" }))
            is_err("invalid", "tier", st:update_subscription(s.id, { tier = "" }))
            is_err("not_found", nil, st:update_subscription("nope", { tier = "Gold" }))

            assert.is_true(st:unsubscribe(s.id))
            is_err("not_found", nil, st:get_subscription(s.id))
            is_err("not_found", nil, st:subscription("app", "Echo", "1.0"))
            is_err("not_found", nil, st:unsubscribe(s.id))
            -- and subscribes again
            local again = assert(st:subscribe{ app = "app", api = "Echo", version = "1.0", tier = "Silver" })
            assert.not_equal(s.id, again.id)
            assert.same(again, st:subscription("app", "Echo", "1.0"))
        end)

        it("the handshake's lookup finds exact matches of live applications only", function()
            assert(st:subscribe{ app = "app", api = "Echo", version = "1.0", tier = "Gold" })
            is_err("not_found", nil, st:subscription("app", "Echo", "1.1"))
            is_err("not_found", nil, st:subscription("app", "echo", "1.0"))
            is_err("not_found", nil, st:subscription("App", "Echo", "1.0"))
            is_err("not_found", nil, st:subscription(app.id, "Echo", "1.0"))
            is_err("invalid", nil, st:subscription("app", "Echo"))
        end)
    end)

    describe("revoked tokens", function()
        local st
        before_each(function() st = backend.open(clock) end)
        after_each(function() st:close() end)

        it("remembers a revoked jti until purge passes its expiry", function()
            assert.is_false(st:token_revoked("t1"))
            assert.is_true(st:revoke_token("t1", 1000))
            assert.is_true(st:revoke_token("t2", 2000))
            assert.is_true(st:token_revoked("t1"))
            assert.is_true(st:token_revoked("t2"))
            assert.is_false(st:token_revoked("t3"))
            assert.equal(0, st:purge(1000))   -- exp 1000 is kept until after 1000
            assert.is_true(st:token_revoked("t1"))
            assert.equal(1, st:purge(1001))
            assert.is_false(st:token_revoked("t1"))
            assert.is_true(st:token_revoked("t2"))
            assert.equal(1, st:purge())        -- the clock: T is past 2000
            assert.is_false(st:token_revoked("t2"))
        end)

        it("keeps the later expiry when a jti is revoked twice", function()
            assert(st:revoke_token("t", 3000))
            assert(st:revoke_token("t", 1000))
            assert.equal(0, st:purge(2000))
            assert.is_true(st:token_revoked("t"))
            assert(st:revoke_token("t", 5000.5))
            assert.equal(0, st:purge(5001))
            assert.equal(1, st:purge(5002))
        end)

        it("refuses bad arguments", function()
            is_err("invalid", "jti", st:revoke_token("", 10))
            is_err("invalid", "jti", st:revoke_token(("j"):rep(1025), 10))
            is_err("invalid", "exp", st:revoke_token("j", nil))
            is_err("invalid", "exp", st:revoke_token("j", 0 / 0))
            is_err("invalid", "jti", st:token_revoked(nil))
            is_err("invalid", "now", st:purge("soon"))
        end)
    end)

    describe("signing keys", function()
        local st
        before_each(function() st = backend.open(clock) end)
        after_each(function() st:close() end)

        local function rec(kid, created_at)
            return { kid = kid, private_pem = "-----BEGIN PRIVATE KEY-----\nSECRET-" .. kid .. "\n",
                     public_jwk = '{"kid":"' .. kid .. '"}', created_at = created_at }
        end

        it("keeps the issuer's records, oldest first", function()
            assert.is_true(st:add_signing_key(rec("b", 200)))
            assert.is_true(st:add_signing_key(rec("a", 100)))
            assert.is_true(st:add_signing_key(rec("c", 200)))
            assert.is_true(st:add_signing_key(rec("d")))          -- created now: T
            local keys = st:signing_keys()
            assert.same({ "a", "b", "c", "d" }, { keys[1].kid, keys[2].kid, keys[3].kid, keys[4].kid })
            assert.same({ kid = "a", private_pem = rec("a").private_pem, public_jwk = '{"kid":"a"}',
                          created_at = 100 }, keys[1])
            assert.equal(T, keys[4].created_at)
        end)

        it("adds a key retired already", function()
            local r = rec("old", 100)
            r.retired_at = 150.5
            assert.is_true(st:add_signing_key(r))
            assert.is_true(st:add_signing_key(rec("new", 200)))
            local keys = st:signing_keys()
            assert.equal(150.5, keys[1].retired_at)
            assert.is_nil(keys[2].retired_at)
            is_err("invalid", "retired_at", st:add_signing_key{ kid = "z", private_pem = "x", public_jwk = "{}",
                                                                retired_at = "soon" })
        end)

        it("retires and deletes", function()
            assert(st:add_signing_key(rec("a", 100)))
            assert(st:add_signing_key(rec("b", 200)))
            assert.is_true(st:retire_signing_key("a", 150))
            assert.equal(150, st:signing_keys()[1].retired_at)
            assert.is_true(st:retire_signing_key("b"))
            assert.equal(T, st:signing_keys()[2].retired_at)
            assert.is_true(st:delete_signing_key("a"))
            assert.equal(1, #st:signing_keys())
            is_err("not_found", nil, st:delete_signing_key("a"))
            is_err("not_found", nil, st:retire_signing_key("a", 1))
        end)

        it("refuses a kid twice and bad records, never echoing the private key", function()
            assert(st:add_signing_key(rec("a", 1)))
            local r = rec("a", 2)
            local v, code, msg = st:add_signing_key(r)
            is_err("conflict", "kid exists", v, code, msg)
            assert.is_nil(msg:find("SECRET", 1, true))
            is_err("invalid", "kid", st:add_signing_key{ private_pem = "x", public_jwk = "{}" })
            is_err("invalid", "public_jwk", st:add_signing_key{ kid = "z", private_pem = "x" })
            is_err("invalid", "private_pem", st:add_signing_key{ kid = "z", private_pem = "", public_jwk = "{}" })
            is_err("invalid", "unknown field", st:add_signing_key{ kid = "z", private_pem = "x", public_jwk = "{}",
                                                                   alg = "ES256" })
            is_err("invalid", "created_at", st:add_signing_key{ kid = "z", private_pem = "x", public_jwk = "{}",
                                                                created_at = "now" })
            is_err("invalid", "at", st:retire_signing_key("a", "later"))
            assert.equal(1, #st:signing_keys())
        end)
    end)

    describe("generation", function()
        it("changes with each committed change of this handle, not with reads or refused writes", function()
            local st = backend.open(clock)
            local g0 = st:generation()
            assert.is_number(g0)
            local app = assert(st:create_app{ name = "a", owner = "o" })
            local g1 = st:generation()
            assert.not_equal(g0, g1)
            st:get_app("a"); st:list_apps(); st:list_keys(app.id); st:token_revoked("x")
            assert.equal(g1, st:generation())
            is_err("conflict", nil, st:create_app{ name = "a", owner = "o" })
            is_err("invalid", nil, st:create_app{ name = "", owner = "o" })
            assert.equal(0, st:purge(0))
            assert.equal(g1, st:generation())
            assert(st:generate_keys(app.id, "production"))
            local g2 = st:generation()
            assert.not_equal(g1, g2)
            assert(st:revoke_token("j", 10))
            assert.not_equal(g2, st:generation())
            st:close()
        end)

        it("changes when a second handle on the store commits", function()
            local a = backend.open(clock)
            local b = backend.open_again(a, clock)
            local ga, gb = a:generation(), b:generation()
            assert.equal(ga, gb)
            local app = assert(b:create_app{ name = "from-b", owner = "o" })
            local ga2 = a:generation()
            assert.not_equal(ga, ga2)
            assert.equal(b:generation(), ga2)
            assert.same(app, a:get_app("from-b"))
            assert(b:revoke_app(app.id))
            assert.not_equal(ga2, a:generation())
            assert.equal(b:generation(), a:generation())
            a:close(); b:close()
        end)

    end)
end

return cases
