-- lua/weir/keystore_redis.lua: the key manager's store on Redis, against a
-- real redis-server of the spec's own (helpers.start_redis: a free
-- loopback port, no persistence, stopped by PID at the end).
--
-- The store reaches Redis through an executor; here it is a small blocking
-- one over luasocket, one persistent connection per store ("host"), which
-- can also yield its coroutine between sending a command and reading the
-- answer: two stores driven by two coroutines then have both their scripts
-- in Redis before either answer is read, as two hosts would.
--
-- The behaviour both stores share is spec/support/keystore_cases.lua, run
-- here against Redis; this file adds what is Redis's own. Every store gets
-- a prefix of its own, so the cases never see each other's keys. Times come
-- from an injected clock.
local helpers = require "helpers"
local ks      = require "weir.keystore_redis"
local cases   = require "support.keystore_cases"
local socket  = require "socket"

local fmt, concat, sort = string.format, table.concat, table.sort
local is_err = cases.is_err

---------------------------------------------------------------------------
-- a RESP executor

local function encode(args)
    local out = { "*" .. #args .. "\r\n" }
    for i = 1, #args do
        local a = tostring(args[i])
        out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
    end
    return concat(out)
end

-- One reply: the value (nil for a nil reply), or nil and the text of an
-- error reply. Raises when the connection is lost.
local function read_reply(sock)
    local line, err = sock:receive("*l")
    if not line then error("connection lost: " .. tostring(err), 0) end
    local kind, rest = line:sub(1, 1), line:sub(2)
    if kind == "+" then return rest end
    if kind == "-" then return nil, rest end
    if kind == ":" then return tonumber(rest) end
    if kind == "$" then
        local n = tonumber(rest)
        if n < 0 then return nil end
        local data, e = sock:receive(n + 2)
        if not data then error("connection lost: " .. tostring(e), 0) end
        return data:sub(1, n)
    end
    if kind == "*" then
        local n = tonumber(rest)
        if n < 0 then return nil end
        local out = {}
        for i = 1, n do out[i] = read_reply(sock) end
        return out
    end
    error("unexpected RESP reply: " .. line, 0)
end

local rd                -- the redis-server
local conns = {}        -- every executor a case opened, closed after it

-- An executor on a connection of its own. Fields a case may set: `fail`
-- (answer nil, fail to every call, sending nothing), `yield` (yield the
-- coroutine between sending and reading), `log` (a list: every call's
-- arguments are appended).
local function executor()
    local sock = assert(socket.tcp())
    sock:settimeout(10)
    assert(sock:connect("127.0.0.1", rd.port))
    sock:setoption("tcp-nodelay", true)
    local ex = { calls = 0 }
    function ex.call(...)
        ex.calls = ex.calls + 1
        if ex.log then ex.log[#ex.log + 1] = { ... } end
        if ex.fail then return nil, ex.fail end
        local ok, err = sock:send(encode({ ... }))
        if not ok then return nil, "connection lost: " .. tostring(err) end
        if ex.yield then coroutine.yield() end
        local res = { pcall(read_reply, sock) }
        if not res[1] then return nil, res[2] end
        return res[2], res[3]
    end
    function ex.close() sock:close() end
    conns[#conns + 1] = ex
    return ex
end

local admin             -- the spec's own connection, to look behind the store's back
local function R(...) return admin.call(...) end

local seq = 0
local function new_prefix()
    seq = seq + 1
    return fmt("spec%d:", seq)
end

local T = 1700000000
local function clock() return T end

-- A store on PREFIX (a new one by default) over a new connection.
local function open(prefix, now)
    local ex = executor()
    local st = assert(ks.open{ call = ex.call, prefix = prefix or new_prefix(), now = now or clock })
    return st, ex
end

-- The store's keys (names after prefix.."km:"), sorted.
local function keys_of(prefix)
    local names = {}
    for _, k in ipairs(assert(R("KEYS", prefix .. "*"))) do names[#names + 1] = k end
    sort(names)
    return names
end

-- Everything stored under PREFIX, as one string: each key, its type and
-- its contents.
local function dump(prefix)
    local out = {}
    for _, k in ipairs(keys_of(prefix)) do
        local t = R("TYPE", k)
        local v
        if t == "string" then v = { R("GET", k) }
        elseif t == "hash" then v = R("HGETALL", k)
        elseif t == "zset" then v = R("ZRANGE", k, 0, -1, "WITHSCORES")
        elseif t == "set" then v = R("SMEMBERS", k); sort(v)
        elseif t == "list" then v = R("LRANGE", k, 0, -1)
        end
        out[#out + 1] = k .. " " .. t .. "\n" .. concat(v or {}, "\n")
    end
    return concat(out, "\n")
end

local backend = {
    open = function(now) return (open(nil, now)) end,
    open_again = function(st, now) return (open(st.prefix, now)) end,
    stored = function(st) return dump(st.prefix) end,
    stored_secret_hash = function(st, consumer_key)
        return R("HGET", st.prefix .. "km:key:" .. consumer_key, "secret_hash")
    end,
    -- keys whose name or contents hold the application's id, or IDS
    leftovers = function(st, app_id, ids)
        local n = 0
        for _, k in ipairs(keys_of(st.prefix)) do
            local one = dump(k):gsub("^[^\n]*\n", "")   -- the key's contents
            for _, id in ipairs{ app_id, unpack(ids or {}) } do
                if k:find(id, 1, true) or one:find(id, 1, true) then n = n + 1; break end
            end
        end
        return n
    end,
}

-- Run FA and FB in two coroutines, resumed in turn until both are done;
-- returns what each returned (as arrays).
local function race(fa, fb)
    local cos = { coroutine.create(fa), coroutine.create(fb) }
    local results = {}
    repeat
        local alive = false
        for i, co in ipairs(cos) do
            if coroutine.status(co) ~= "dead" then
                local res = { coroutine.resume(co) }
                assert(res[1], res[2])
                if coroutine.status(co) == "dead" then
                    results[i] = { unpack(res, 2, table.maxn(res)) }
                else
                    alive = true
                end
            end
        end
    until not alive
    return results[1], results[2]
end

-- A second, raw connection subscribed to CHANNEL: :next() is the next
-- message's data.
local function subscriber(channel)
    local sock = assert(socket.tcp())
    sock:settimeout(10)
    assert(sock:connect("127.0.0.1", rd.port))
    assert(sock:send(encode({ "SUBSCRIBE", channel })))
    local ok = read_reply(sock)
    assert.same({ "subscribe", channel, 1 }, ok)
    return {
        next = function()
            local m = read_reply(sock)
            assert.equal("message", m[1])
            assert.equal(channel, m[2])
            return m[3]
        end,
        close = function() sock:close() end,
    }
end

describe("weir.keystore_redis", function()
    setup(function()
        rd = helpers.start_redis()
        admin = executor()
        table.remove(conns)          -- admin stays open until teardown
    end)
    teardown(function()
        for _, ex in ipairs(conns) do ex.close() end
        if admin then admin.close() end
        if rd then rd:stop() end
        helpers.cleanup()
    end)

    before_each(function() T = 1700000000 end)
    after_each(function()
        for _, ex in ipairs(conns) do ex.close() end
        conns = {}
    end)

    cases.run(backend)

    describe("open", function()
        it("sends nothing to Redis", function()
            local ex = executor()
            local st = assert(ks.open{ call = ex.call, prefix = new_prefix() })
            assert.equal(0, ex.calls)
            assert.equal(ks.DEFAULT_LIMIT, 100)
            assert.equal(0, st:generation())
            assert.equal(1, ex.calls)
        end)

        it("refuses bad arguments", function()
            local f = function() end
            is_err("invalid", "takes a table", ks.open(nil))
            is_err("invalid", "takes a table", ks.open("redis://127.0.0.1"))
            is_err("invalid", "call must be a function", ks.open{})
            is_err("invalid", "call must be a function", ks.open{ call = "redis" })
            is_err("invalid", "prefix", ks.open{ call = f, prefix = 5 })
            is_err("invalid", "prefix", ks.open{ call = f, prefix = ("p"):rep(201) })
            is_err("invalid", "now", ks.open{ call = f, now = 5 })
            is_err("invalid", "unknown field colour", ks.open{ call = f, colour = "red" })
        end)

        it("keeps its keys under weir:km: by default", function()
            local ex = executor()
            local st = assert(ks.open{ call = ex.call, now = clock })
            local app = assert(st:create_app{ name = "default-prefix", owner = "o" })
            assert.equal("hash", R("TYPE", "weir:km:app:" .. app.id))
            assert.equal("default-prefix", R("HGET", "weir:km:app:" .. app.id, "name"))
            assert.is_true(st:delete_app(app.id))
        end)
    end)

    describe("data model", function()
        it("is the one documented, every key under prefix..km:", function()
            local st = open()
            local p = st.prefix
            local app = assert(st:create_app{ name = "a", owner = "alice" })
            local k = assert(st:generate_keys(app.id, "production"))
            local sub = assert(st:subscribe{ app = "a", api = "Echo", version = "1.0", tier = "Gold" })
            assert(st:revoke_token("jti-1", T + 60))
            assert(st:add_signing_key{ kid = "k1", private_pem = "PEM", public_jwk = "{}" })
            local want = {
                ["app:" .. app.id] = "hash", apps = "zset", names = "hash", ["owner:alice"] = "zset",
                ["app_keys:" .. app.id] = "hash", ["key:" .. k.consumer_key] = "hash",
                ["sub:" .. sub.id] = "hash", subs = "zset", ["app_subs:" .. app.id] = "zset",
                ["app_sub_ix:" .. app.id] = "hash", ["api_subs:Echo"] = "zset",
                revoked = "zset", ["sk:k1"] = "hash", sks = "zset", gen = "string", seq = "string", schema = "string",
            }
            local got = {}
            for _, name in ipairs(keys_of(p)) do
                assert.equal(p .. "km:", name:sub(1, #p + 3))
                got[name:sub(#p + 4)] = R("TYPE", name)
            end
            assert.same(want, got)
            assert.equal(app.id, R("HGET", p .. "km:names", "a"))
            assert.equal(sub.id, R("HGET", p .. "km:app_sub_ix:" .. app.id, "Echo\n1.0"))
            assert.equal(k.consumer_key, R("HGET", p .. "km:app_keys:" .. app.id, "production"))
            assert.equal(tostring(T + 60), R("ZSCORE", p .. "km:revoked", "jti-1"))
            assert.equal("1", R("GET", p .. "km:schema"))

            -- deleting everything leaves only the counters
            assert(st:delete_app(app.id))
            assert(st:delete_signing_key("k1"))
            assert.equal(1, st:purge(T + 61))
            assert.same({ p .. "km:gen", p .. "km:schema", p .. "km:seq" }, keys_of(p))
        end)

        it("never sends a consumer secret to Redis, only its SHA-256", function()
            local st, ex = open()
            ex.log = {}
            local app = assert(st:create_app{ name = "a", owner = "o" })
            local k = assert(st:generate_keys(app.id, "production"))
            assert(st:check_client(k.consumer_key, k.consumer_secret))
            is_err("not_found", nil, st:check_client(k.consumer_key, k.consumer_secret .. "x"))
            assert(st:find_key(k.consumer_key))
            local hash = cases.sha256_hex(k.consumer_secret)
            assert.is_false(cases.contains(ex.log, k.consumer_secret))
            assert.is_true(cases.contains(ex.log, hash))
            assert.is_false(cases.contains(dump(st.prefix), k.consumer_secret))
        end)

        it("keeps stores with different prefixes apart", function()
            local a, b = open(), open()
            local app = assert(a:create_app{ name = "mine", owner = "o" })
            assert(a:subscribe{ app = "mine", api = "Echo", version = "1.0", tier = "Gold" })
            assert(a:revoke_token("j", T + 60))
            assert(a:add_signing_key{ kid = "k1", private_pem = "PEM", public_jwk = "{}" })
            assert.equal(0, select(2, b:list_apps()))
            is_err("not_found", nil, b:get_app(app.id))
            is_err("not_found", nil, b:get_app("mine"))
            is_err("not_found", nil, b:subscription("mine", "Echo", "1.0"))
            assert.is_false(b:token_revoked("j"))
            assert.same({}, b:signing_keys())
            assert.equal(0, b:generation())
            assert(b:create_app{ name = "mine", owner = "o" })     -- its own names
            assert.equal(4, a:generation())
        end)

        it("reports the data version: 0 before anything is stored, then SCHEMA_VERSION", function()
            local st = open()
            assert.equal(0, st:schema_version())
            st:get_app("x"); st:list_apps(); st:generation()
            assert.equal(0, st:schema_version())
            assert(st:create_app{ name = "x", owner = "o" })
            assert.equal(ks.SCHEMA_VERSION, st:schema_version())
            assert.equal(1, ks.SCHEMA_VERSION)
        end)

        it("refuses every change to data of another version, and still reads it", function()
            local st = open()
            assert(st:create_app{ name = "old", owner = "o" })
            local g = st:generation()
            R("SET", st.prefix .. "km:schema", "2")
            is_err("internal", "version 2", st:create_app{ name = "new", owner = "o" })
            is_err("internal", "version 2", st:revoke_app("old"))
            is_err("internal", "version 2", st:revoke_token("j", 10))
            assert.is_nil(st:get_app("old").revoked_at)
            assert.equal(1, select(2, st:list_apps()))
            assert.equal(g, st:generation())
            assert.equal(2, st:schema_version())
        end)
    end)

    describe("several hosts", function()
        it("a store opened again on the prefix sees everything", function()
            local st = open()
            local app = assert(st:create_app{ name = "kept", owner = "o" })
            local keys = assert(st:generate_keys(app.id, "sandbox"))
            assert(st:subscribe{ app = "kept", api = "Echo", version = "1.0", tier = "Gold" })
            assert(st:revoke_token("jti-1", T + 60))
            assert(st:add_signing_key{ kid = "k1", private_pem = "PEM", public_jwk = "{}" })
            local gen = st:generation()
            st:close()

            st = open(st.prefix)
            assert.same(app, st:get_app(app.id))
            local same, key_type = st:check_client(keys.consumer_key, keys.consumer_secret)
            assert.equal(app.id, same.id)
            assert.equal("sandbox", key_type)
            assert.equal("Gold", st:subscription("kept", "Echo", "1.0").tier)
            assert.is_true(st:token_revoked("jti-1"))
            assert.equal("k1", st:signing_keys()[1].kid)
            assert.equal(gen, st:generation())
            assert.equal(ks.SCHEMA_VERSION, st:schema_version())
        end)

        it("each host sees the other's changes at once", function()
            local a = open()
            local b = open(a.prefix)
            local app = assert(a:create_app{ name = "shop", owner = "alice", scopes = { "read" } })
            local k = assert(a:generate_keys("shop", "production"))
            assert(a:subscribe{ app = "shop", api = "Echo", version = "1.0", tier = "Gold" })

            local got, key_type = b:check_client(k.consumer_key, k.consumer_secret)
            assert.same(app, got)
            assert.equal("production", key_type)
            assert.equal("Gold", b:subscription("shop", "Echo", "1.0").tier)

            assert(b:update_subscription(b:subscription("shop", "Echo", "1.0").id, { tier = "Bronze" }))
            assert.equal("Bronze", a:subscription("shop", "Echo", "1.0").tier)
            assert(b:revoke_key(k.consumer_key))
            is_err("not_found", "invalid client credentials", a:check_client(k.consumer_key, k.consumer_secret))
            assert(b:revoke_token("jti-b", T + 60))
            assert.is_true(a:token_revoked("jti-b"))
            assert(b:update_app("shop", { name = "shop2" }))
            assert.equal(app.id, a:get_app("shop2").id)
            is_err("not_found", nil, a:get_app("shop"))
            assert.equal("shop2", a:list_subscriptions()[1].app_name)
            assert(a:delete_app("shop2"))
            is_err("not_found", nil, b:get_app(app.id))
            is_err("not_found", nil, b:subscription("shop2", "Echo", "1.0"))
            assert.equal(a:generation(), b:generation())
        end)

        -- Two hosts over yielding executors: each sends its command, then
        -- the other does, before either reads its answer.
        -- A third, plain store on their prefix looks at the outcome.
        local function two_hosts()
            local a, ea = open()
            local b, eb = open(a.prefix)
            ea.yield, eb.yield = true, true
            return a, b, open(a.prefix), ea, eb
        end

        it("the harness interleaves: a read-then-write in weir would let both win", function()
            local _, _, _, ea, eb = two_hosts()
            local key = new_prefix() .. "naive"
            local function naive(ex) return function()
                if ex.call("HEXISTS", key, "name") == 0 then
                    ex.call("HSET", key, "name", tostring(ex))
                    return true
                end
                return false
            end end
            local ra, rb = race(naive(ea), naive(eb))
            assert.same({ true }, ra)
            assert.same({ true }, rb)     -- both "won": the race is real
        end)

        it("concurrent creates of one name: exactly one wins", function()
            local a, b, c = two_hosts()
            for i = 1, 20 do
                local name = "race-" .. i
                local ra, rb = race(function() return a:create_app{ name = name, owner = "a" } end,
                                    function() return b:create_app{ name = name, owner = "b" } end)
                local winners = (ra[1] and 1 or 0) + (rb[1] and 1 or 0)
                assert.equal(1, winners, name)
                local won, lost = ra[1] and ra or rb, ra[1] and rb or ra
                assert.same({ nil, "conflict", 'an application named "' .. name .. '" exists' },
                            { lost[1], lost[2], lost[3] })
                assert.equal(won[1].id, R("HGET", a.prefix .. "km:names", name))
                assert.same(won[1], c:get_app(name))
            end
            assert.equal(20, select(2, c:list_apps()))
            assert.equal(20, c:generation())
        end)

        it("concurrent subscriptions of one application to one API version: exactly one wins", function()
            local a, b, c = two_hosts()
            assert(c:create_app{ name = "app", owner = "o" })
            for i = 1, 10 do
                local v = "1." .. i
                local ra, rb = race(
                    function() return a:subscribe{ app = "app", api = "Echo", version = v, tier = "Gold" } end,
                    function() return b:subscribe{ app = "app", api = "Echo", version = v, tier = "Silver" } end)
                assert.equal(1, (ra[1] and 1 or 0) + (rb[1] and 1 or 0), v)
                local won, lost = ra[1] and ra or rb, ra[1] and rb or ra
                assert.same({ nil, "conflict", "the application is subscribed to that API version already" },
                            { lost[1], lost[2], lost[3] })
                assert.same(won[1], c:subscription("app", "Echo", v))
            end
            assert.equal(10, select(2, c:list_subscriptions()))
            assert.equal(11, c:generation())
        end)

        it("concurrent signing keys with one kid, and key pairs of one type: one each", function()
            local a, b, c = two_hosts()
            local ra, rb = race(
                function() return a:add_signing_key{ kid = "k", private_pem = "A", public_jwk = "{}" } end,
                function() return b:add_signing_key{ kid = "k", private_pem = "B", public_jwk = "{}" } end)
            assert.equal(1, (ra[1] and 1 or 0) + (rb[1] and 1 or 0))
            assert.same({ nil, "conflict", "a signing key with that kid exists" }, ra[1] and rb or ra)
            local keys = c:signing_keys()
            assert.equal(1, #keys)
            assert.equal(ra[1] and "A" or "B", keys[1].private_pem)

            local app = assert(c:create_app{ name = "app", owner = "o" })
            local ka, kb = race(function() return a:generate_keys(app.id, "production") end,
                                function() return b:generate_keys(app.id, "production") end)
            assert(ka[1]); assert(kb[1])
            -- one pair of the type is left, the one made last, and only its key works
            local pairs_left = c:list_keys(app.id)
            assert.equal(1, #pairs_left)
            local live = pairs_left[1].consumer_key == ka[1].consumer_key and ka[1] or kb[1]
            local dead = live == ka[1] and kb[1] or ka[1]
            assert.equal(app.id, c:check_client(live.consumer_key, live.consumer_secret).id)
            is_err("not_found", "invalid client credentials", c:check_client(dead.consumer_key, dead.consumer_secret))
            is_err("not_found", nil, c:find_key(dead.consumer_key))
            assert.equal(0, R("EXISTS", a.prefix .. "km:key:" .. dead.consumer_key))
        end)

        it("interleaved writes of two hosts lose nothing", function()
            local a, b, c = two_hosts()
            local N = 50
            race(function()
                for i = 1, N do assert(a:create_app{ name = "a" .. i, owner = "host-a" }) end
            end, function()
                for i = 1, N do assert(b:create_app{ name = "b" .. i, owner = "host-b" }) end
            end)
            local apps, total = c:list_apps{ limit = 1000 }
            assert.equal(2 * N, total)
            assert.equal(N, select(2, c:list_apps{ owner = "host-a" }))
            assert.equal(N, select(2, c:list_apps{ owner = "host-b" }))
            -- creation order: each host's in its own order, the two interleaved
            local last = {}
            for _, app in ipairs(apps) do
                local host, i = app.name:match("^(%a)(%d+)$")
                assert.is_true(tonumber(i) > (last[host] or 0))
                last[host] = tonumber(i)
            end
            assert.equal(2 * N, c:generation())
        end)
    end)

    describe("generation", function()
        it("goes up by one with each change, in the counter every host reads", function()
            local st = open()
            local other = open(st.prefix)
            local g = st:generation()
            assert.equal(0, g)
            local app, k, sub
            local changes = {
                function() app = assert(st:create_app{ name = "a", owner = "o" }) end,
                function() assert(st:update_app(app.id, { tier = "Gold" })) end,
                function() k = assert(st:generate_keys(app.id, "production")) end,
                function() assert(st:revoke_key(k.consumer_key)) end,
                function() sub = assert(st:subscribe{ app = "a", api = "E", version = "1", tier = "G" }) end,
                function() assert(st:update_subscription(sub.id, { tier = "S" })) end,
                function() assert(st:unsubscribe(sub.id)) end,
                function() assert(st:revoke_token("j", 10)) end,
                function() assert(st:purge(11)) end,
                function() assert(st:add_signing_key{ kid = "k", private_pem = "P", public_jwk = "{}" }) end,
                function() assert(st:retire_signing_key("k", 5)) end,
                function() assert(st:delete_signing_key("k")) end,
                function() assert(st:revoke_app(app.id)) end,
                function() assert(st:delete_app(app.id)) end,
            }
            for i, change in ipairs(changes) do
                change()
                assert.equal(g + i, st:generation(), "change " .. i)
                assert.equal(g + i, other:generation())
                assert.equal(tostring(g + i), R("GET", st.prefix .. "km:gen"))
            end
        end)

        it("stays when nothing changes: reads, refusals, and changes that change nothing", function()
            local st = open()
            local app = assert(st:create_app{ name = "a", owner = "o" })
            local k = assert(st:generate_keys(app.id, "production"))
            assert(st:revoke_key(k.consumer_key))
            assert(st:revoke_app(app.id))
            local g = st:generation()
            st:get_app("a"); st:list_apps(); st:list_keys(app.id); st:find_key(k.consumer_key)
            st:check_client(k.consumer_key, k.consumer_secret); st:list_subscriptions(); st:token_revoked("x")
            st:signing_keys(); st:subscription("a", "E", "1")
            is_err("conflict", nil, st:create_app{ name = "a", owner = "o" })
            is_err("conflict", nil, st:generate_keys(app.id, "sandbox"))
            is_err("not_found", nil, st:delete_app("nobody"))
            is_err("not_found", nil, st:retire_signing_key("nope"))
            assert(st:revoke_key(k.consumer_key))           -- revoked already
            assert(st:revoke_app(app.id))                   -- revoked already
            assert(st:update_app(app.id, {}))
            assert.equal(0, st:purge(0))
            assert.equal(g, st:generation())
        end)

        it("is published on prefix..km:changed by every change, and only then", function()
            local st = open()
            local sub = subscriber(st.prefix .. "km:changed")
            local app = assert(st:create_app{ name = "a", owner = "o" })
            assert.equal(tostring(st:generation()), sub.next())
            -- a refused change publishes nothing: the next message is the next change's
            is_err("conflict", nil, st:create_app{ name = "a", owner = "o" })
            assert.equal(0, st:purge(0))
            -- another prefix's changes are on its own channel
            local other = open()
            assert(other:create_app{ name = "a", owner = "o" })
            assert(st:revoke_app(app.id))
            assert.equal("2", sub.next())
            assert(st:delete_app(app.id))
            assert.equal("3", sub.next())
            assert.equal(3, st:generation())
            sub.close()
        end)
    end)

    describe("Redis errors", function()
        -- one call of each method, valid arguments
        local function every_call(st, app, k, sub)
            return {
                { "create_app", st:create_app{ name = "new", owner = "o" } },
                { "get_app", st:get_app(app.id) },
                { "list_apps", st:list_apps() },
                { "update_app", st:update_app(app.id, { tier = "Gold" }) },
                { "revoke_app", st:revoke_app(app.id) },
                { "delete_app", st:delete_app(app.id) },
                { "generate_keys", st:generate_keys(app.id, "sandbox") },
                { "list_keys", st:list_keys(app.id) },
                { "check_client", st:check_client(k.consumer_key, k.consumer_secret) },
                { "find_key", st:find_key(k.consumer_key) },
                { "revoke_key", st:revoke_key(k.consumer_key) },
                { "subscribe", st:subscribe{ app = app.id, api = "E", version = "2", tier = "G" } },
                { "list_subscriptions", st:list_subscriptions() },
                { "get_subscription", st:get_subscription(sub.id) },
                { "update_subscription", st:update_subscription(sub.id, { tier = "S" }) },
                { "unsubscribe", st:unsubscribe(sub.id) },
                { "subscription", st:subscription("a", "E", "1") },
                { "revoke_token", st:revoke_token("j", T + 10) },
                { "token_revoked", st:token_revoked("j") },
                { "purge", st:purge(T + 100) },
                { "signing_keys", st:signing_keys() },
                { "add_signing_key", st:add_signing_key{ kid = "k2", private_pem = "P", public_jwk = "{}" } },
                { "retire_signing_key", st:retire_signing_key("k1") },
                { "delete_signing_key", st:delete_signing_key("k1") },
                { "generation", st:generation() },
                { "schema_version", st:schema_version() },
            }
        end

        local function fixture()
            local st, ex = open()
            local app = assert(st:create_app{ name = "a", owner = "o" })
            local k = assert(st:generate_keys(app.id, "production"))
            local sub = assert(st:subscribe{ app = "a", api = "E", version = "1", tier = "G" })
            assert(st:revoke_token("old", T - 10))
            assert(st:add_signing_key{ kid = "k1", private_pem = "P", public_jwk = "{}" })
            return st, ex, app, k, sub
        end

        it("a lost connection is internal, with its message, and changes nothing", function()
            local st, ex, app, k, sub = fixture()
            local before, g = dump(st.prefix), st:generation()
            ex.fail = "connection lost"
            local results = every_call(st, app, k, sub)
            assert.equal(26, #results)
            for _, r in ipairs(results) do
                assert.is_nil(r[2], r[1])
                assert.equal("internal", r[3], r[1])
                assert.equal("key store: redis: connection lost", r[4], r[1])
            end
            ex.fail = nil
            assert.equal(before, dump(st.prefix))
            assert.equal(g, st:generation())
            assert(st:check_client(k.consumer_key, k.consumer_secret))
        end)

        it("a connection that really closes is internal too", function()
            local st, ex, app = fixture()
            ex.close()
            is_err("internal", "redis: connection lost", st:get_app(app.id))
            is_err("internal", "redis: connection lost", st:create_app{ name = "b", owner = "o" })
            is_err("internal", "redis: connection lost", st:generation())
            assert.is_nil(R("HGET", st.prefix .. "km:names", "b"))
        end)

        it("an error reply is internal, and the change that met it changes nothing", function()
            local st, _, app, k = fixture()
            local names = st.prefix .. "km:names"
            local saved = R("HGETALL", names)
            R("DEL", names)
            R("SET", names, "not a hash")
            local before, g = dump(st.prefix), st:generation()
            is_err("internal", "WRONGTYPE", st:create_app{ name = "b", owner = "o" })
            is_err("internal", "WRONGTYPE", st:get_app("a"))
            is_err("internal", "WRONGTYPE", st:subscribe{ app = "a", api = "E", version = "2", tier = "G" })
            is_err("internal", "WRONGTYPE", st:update_app(app.id, { name = "b" }))
            assert.equal(before, dump(st.prefix))
            assert.equal(g, st:generation())
            -- what does not read that key still works
            assert.equal(app.id, st:check_client(k.consumer_key, k.consumer_secret).id)
            R("DEL", names)
            R("HSET", names, unpack(saved))
            assert.equal(app.id, st:get_app("a").id)
        end)

        it("sends a script again when Redis has forgotten it (NOSCRIPT)", function()
            local st, ex = open()
            assert(st:create_app{ name = "a", owner = "o" })
            assert.equal("OK", R("SCRIPT", "FLUSH"))
            ex.log = {}
            assert(st:create_app{ name = "b", owner = "o" })
            assert.same({ "EVALSHA", "EVAL" }, { ex.log[1][1], ex.log[2][1] })
            assert.equal(ks._scripts.create_app.sha, ex.log[1][2])
            assert.equal(2, #ex.log)
            ex.log = {}
            assert(st:create_app{ name = "c", owner = "o" })
            assert.equal(1, #ex.log)
            assert.equal("EVALSHA", ex.log[1][1])
            assert.equal(3, select(2, st:list_apps()))
        end)
    end)
end)
