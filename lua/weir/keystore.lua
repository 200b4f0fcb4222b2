--- The key manager's store on one host: applications, their consumer keys,
-- subscriptions (application × API version × tier), revoked tokens and the
-- issuer's signing keys, in one SQLite database file reached through
-- LuaJIT's FFI (libsqlite3; SHA-256, randomness and constant-time compare
-- from libcrypto). No C of weir's own.
--
-- Every worker opens the same file and any of them may write: the database
-- is in WAL mode (readers never wait for the writer), a write waits at most
-- `BUSY_TIMEOUT_MS` for another process's write to finish, and every change
-- is one transaction begun with `BEGIN IMMEDIATE` (it takes the write lock
-- first, so two writers queue on the busy timeout instead of failing when a
-- read turns into a write). Each change also bumps a counter in the same
-- transaction, which `generation` returns: workers compare it to drop their
-- caches. Open the store in the process that uses it, after any fork: an
-- SQLite connection must not cross a fork.
--
-- Errors are returned as `nil, code, message`: code is "invalid" (a bad
-- argument), "conflict" (a name, subscription or kid that exists; a revoked
-- application), "not_found" or "internal" (SQLite or the random generator
-- failed; the store is closed). Messages are for people and never hold a
-- secret, a secret's hash or a private key.
--
-- A consumer secret is stored as its SHA-256 only. The issuer's private
-- keys are stored as given: the file is created mode 0600 (SQLite gives its
-- `-wal` and `-shm` files the same mode).
--
-- @module weir.keystore
-- @usage local keystore = require "weir.keystore"
-- local st = assert(keystore.open("/var/lib/weir/keys.db"))
-- local app = assert(st:create_app{ name = "app1", owner = "alice" })
-- local keys = assert(st:generate_keys(app.id, "production"))
-- local same_app, key_type = st:check_client(keys.consumer_key, keys.consumer_secret)

local ffi   = require "ffi"
local bit   = require "bit"
local rules = require "weir.keystore_rules"

local type, pairs, ipairs, next, select, tostring, tonumber, pcall, error, setmetatable =
      type, pairs, ipairs, next, select, tostring, tonumber, pcall, error, setmetatable
local find, format, lower = string.find, string.format, string.lower
local unpack = unpack
local floor, ceil = math.floor, math.ceil
local band, bor = bit.band, bit.bor
local ffi_new, ffi_string, ffi_gc, ffi_cast = ffi.new, ffi.string, ffi.gc, ffi.cast

local _M = {
    _VERSION = "0.1.0",
    --- How long a write waits for another connection's write, in milliseconds.
    BUSY_TIMEOUT_MS = 2000,
    --- `list_*`: rows per page by default, and at most.
    DEFAULT_LIMIT = rules.DEFAULT_LIMIT,
    MAX_LIMIT = rules.MAX_LIMIT,
    --- An application's tier when `create_app` is given none.
    DEFAULT_TIER = rules.DEFAULT_TIER,
}

ffi.cdef [[
    typedef struct sqlite3 sqlite3;
    typedef struct sqlite3_stmt sqlite3_stmt;
    int sqlite3_open_v2(const char *filename, sqlite3 **ppDb, int flags, const char *zVfs);
    int sqlite3_close_v2(sqlite3 *db);
    int sqlite3_busy_timeout(sqlite3 *db, int ms);
    int sqlite3_extended_result_codes(sqlite3 *db, int onoff);
    const char *sqlite3_errmsg(sqlite3 *db);
    const char *sqlite3_errstr(int rc);
    int sqlite3_exec(sqlite3 *db, const char *sql, int (*callback)(void *, int, char **, char **),
                     void *arg, char **errmsg);
    void sqlite3_free(void *p);
    int sqlite3_prepare_v3(sqlite3 *db, const char *zSql, int nByte, unsigned int prepFlags,
                           sqlite3_stmt **ppStmt, const char **pzTail);
    int sqlite3_step(sqlite3_stmt *stmt);
    int sqlite3_reset(sqlite3_stmt *stmt);
    int sqlite3_clear_bindings(sqlite3_stmt *stmt);
    int sqlite3_finalize(sqlite3_stmt *stmt);
    int sqlite3_bind_text(sqlite3_stmt *stmt, int i, const char *v, int n, void (*destructor)(void *));
    int sqlite3_bind_int64(sqlite3_stmt *stmt, int i, int64_t v);
    int sqlite3_bind_double(sqlite3_stmt *stmt, int i, double v);
    int sqlite3_bind_null(sqlite3_stmt *stmt, int i);
    int sqlite3_column_count(sqlite3_stmt *stmt);
    const char *sqlite3_column_name(sqlite3_stmt *stmt, int i);
    int sqlite3_column_type(sqlite3_stmt *stmt, int i);
    int64_t sqlite3_column_int64(sqlite3_stmt *stmt, int i);
    double sqlite3_column_double(sqlite3_stmt *stmt, int i);
    const unsigned char *sqlite3_column_text(sqlite3_stmt *stmt, int i);
    int sqlite3_column_bytes(sqlite3_stmt *stmt, int i);
    int sqlite3_changes(sqlite3 *db);
    int sqlite3_total_changes(sqlite3 *db);
    int sqlite3_get_autocommit(sqlite3 *db);

    int open(const char *pathname, int flags, ...);
    int close(int fd);
    int chmod(const char *pathname, unsigned int mode);
    char *strerror(int errnum);
]]

local sqlite = ffi.load("libsqlite3.so.0")

-- sqlite3.h
local SQLITE_OK, SQLITE_ROW, SQLITE_DONE = 0, 100, 101
local SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CONSTRAINT = 5, 6, 19
local SQLITE_CONSTRAINT_FOREIGNKEY, SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE = 787, 1555, 2067
local SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_NULL = 1, 2, 5
local SQLITE_OPEN_READWRITE, SQLITE_OPEN_NOMUTEX = 0x2, 0x8000
local SQLITE_PREPARE_PERSISTENT = 0x1
local SQLITE_TRANSIENT = ffi_cast("void (*)(void *)", -1)
-- fcntl.h (Linux)
local O_RDWR, O_CREAT, O_EXCL, O_CLOEXEC = 0x2, 0x40, 0x80, 0x80000
local EEXIST = 17

---------------------------------------------------------------------------
-- the schema: migration N takes a database from user_version N-1 to N

local MIGRATIONS = {
    [[
    CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO meta (name, value) VALUES ('generation', 0);

    CREATE TABLE apps (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        owner       TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        tier        TEXT NOT NULL,
        scopes      TEXT NOT NULL DEFAULT '',   -- space-separated
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        revoked_at  INTEGER
    );
    CREATE INDEX apps_owner ON apps (owner);

    CREATE TABLE keys (
        consumer_key TEXT PRIMARY KEY,
        app_id       TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
        key_type     TEXT NOT NULL CHECK (key_type IN ('production', 'sandbox')),
        secret_hash  TEXT NOT NULL,             -- SHA-256, hex
        created_at   INTEGER NOT NULL,
        revoked_at   INTEGER,
        UNIQUE (app_id, key_type)
    );

    CREATE TABLE subscriptions (
        id         TEXT PRIMARY KEY,
        app_id     TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
        api        TEXT NOT NULL,
        version    TEXT NOT NULL,
        tier       TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (app_id, api, version)
    );
    CREATE INDEX subscriptions_api ON subscriptions (api, version);

    CREATE TABLE revoked_tokens (
        jti        TEXT PRIMARY KEY,
        exp        INTEGER NOT NULL,
        revoked_at INTEGER NOT NULL
    );
    CREATE INDEX revoked_tokens_exp ON revoked_tokens (exp);

    CREATE TABLE signing_keys (
        seq         INTEGER PRIMARY KEY,        -- insertion order, for "oldest first"
        kid         TEXT NOT NULL UNIQUE,
        private_pem TEXT NOT NULL,
        public_jwk  TEXT NOT NULL,
        created_at  NUMERIC NOT NULL,
        retired_at  NUMERIC
    );
    ]],
}

--- The schema version this module creates (the database's `PRAGMA user_version`).
_M.SCHEMA_VERSION = #MIGRATIONS
-- for the specs: a migration appended here is applied by the next `open`
_M._migrations = MIGRATIONS

---------------------------------------------------------------------------
-- the checks and records both stores share (weir.keystore_rules)

local fail, uuid, is_uuid, check_fields, check_time = rules.fail, rules.uuid, rules.is_uuid,
                                                      rules.check_fields, rules.check_time
local rand_failed, name_taken, app_of = rules.rand_failed, rules.name_taken, rules.app_of

local function now_seconds(self)
    return floor(self.now())
end

---------------------------------------------------------------------------
-- SQLite: statements, queries, transactions

local Store = {}
Store.__index = Store

local function errmsg(db)
    return db ~= nil and ffi_string(sqlite.sqlite3_errmsg(db)) or "no connection"
end

-- The cached prepared statement for SQL, and its column names.
local function prepare(self, sql)
    local st = self.stmts[sql]
    if st then return st, self.columns[sql] end
    if not self.db then return fail("internal", "the key store is closed") end
    local pp = ffi_new("sqlite3_stmt *[1]")
    local rc = sqlite.sqlite3_prepare_v3(self.db, sql, #sql, SQLITE_PREPARE_PERSISTENT, pp, nil)
    if rc ~= SQLITE_OK then
        return fail("internal", "key store: could not prepare a statement: %s", errmsg(self.db))
    end
    st = ffi_gc(pp[0], sqlite.sqlite3_finalize)
    local names = {}
    for i = 0, sqlite.sqlite3_column_count(st) - 1 do
        names[i + 1] = ffi_string(sqlite.sqlite3_column_name(st, i))
    end
    self.stmts[sql], self.columns[sql] = st, names
    return st, names
end

local function classify(rc)
    if rc == SQLITE_CONSTRAINT_UNIQUE or rc == SQLITE_CONSTRAINT_PRIMARYKEY then return "conflict" end
    if rc == SQLITE_CONSTRAINT_FOREIGNKEY then return "not_found" end
    if band(rc, 0xff) == SQLITE_CONSTRAINT then return "invalid" end
    return "internal"
end

local function bind(st, i, v)
    local t = type(v)
    if v == nil then return sqlite.sqlite3_bind_null(st, i) end
    if t == "string" then return sqlite.sqlite3_bind_text(st, i, v, #v, SQLITE_TRANSIENT) end
    if t == "number" then
        if v == floor(v) and v > -2^53 and v < 2^53 then return sqlite.sqlite3_bind_int64(st, i, v) end
        return sqlite.sqlite3_bind_double(st, i, v)
    end
    if t == "boolean" then return sqlite.sqlite3_bind_int64(st, i, v and 1 or 0) end
    error("keystore: cannot bind a " .. t, 3)
end

local function done(st)
    sqlite.sqlite3_reset(st)
    sqlite.sqlite3_clear_bindings(st)
end

-- Run SQL with the arguments bound to ?1, ?2 ... in order. Returns the rows
-- (an array of tables keyed by column name; empty for a statement without
-- rows), or nil, code, message.
local function query(self, sql, ...)
    local st, names, msg0 = prepare(self, sql)
    if not st then return nil, names, msg0 end
    -- a call the budget stopped may have left the statement stepped (not
    -- reset): binding it would fail
    sqlite.sqlite3_reset(st)
    for i = 1, select("#", ...) do
        if bind(st, i, (select(i, ...))) ~= SQLITE_OK then
            local msg = errmsg(self.db)
            done(st)
            return fail("internal", "key store: could not bind a value: %s", msg)
        end
    end
    local rows, ncol = {}, #names
    while true do
        local rc = sqlite.sqlite3_step(st)
        if rc == SQLITE_ROW then
            local row = {}
            for c = 0, ncol - 1 do
                local t = sqlite.sqlite3_column_type(st, c)
                if t == SQLITE_INTEGER then
                    row[names[c + 1]] = tonumber(sqlite.sqlite3_column_int64(st, c))
                elseif t == SQLITE_FLOAT then
                    row[names[c + 1]] = sqlite.sqlite3_column_double(st, c)
                elseif t ~= SQLITE_NULL then
                    local p = sqlite.sqlite3_column_text(st, c)
                    row[names[c + 1]] = ffi_string(p, sqlite.sqlite3_column_bytes(st, c))
                end
            end
            rows[#rows + 1] = row
        elseif rc == SQLITE_DONE then
            break
        else
            local msg = errmsg(self.db)
            done(st)
            if band(rc, 0xff) == SQLITE_BUSY or band(rc, 0xff) == SQLITE_LOCKED then
                return fail("internal", "the key store is busy (another process is writing): try again")
            end
            return nil, classify(rc), "key store: " .. msg
        end
    end
    done(st)
    return rows
end

local function rollback(self)
    if self.db and sqlite.sqlite3_get_autocommit(self.db) == 0 then query(self, "ROLLBACK") end
end

local pack = function(...) return { n = select("#", ...), ... } end

-- Run FN(self, ...) in one write transaction. FN returns its results, or
-- nil, code, message (then nothing it did is kept). When FN changed any
-- row, the generation counter is bumped in the same transaction.
local function write(self, fn, ...)
    -- a transaction left open by a call the policy budget stopped (it
    -- stops the coroutine again at every instruction, so the call's own
    -- rollback never ran): nothing of it is kept
    rollback(self)
    local ok, code, msg = query(self, "BEGIN IMMEDIATE")
    if not ok then return nil, code, msg end
    local before = sqlite.sqlite3_total_changes(self.db)
    local res = pack(pcall(fn, self, ...))
    if not res[1] then
        rollback(self)
        error(res[2], 0)
    end
    if res[2] == nil then
        rollback(self)
        return nil, res[3], res[4]
    end
    if sqlite.sqlite3_total_changes(self.db) ~= before then
        ok, code, msg = query(self, "UPDATE meta SET value = value + 1 WHERE name = 'generation'")
        if not ok then rollback(self); return nil, code, msg end
    end
    ok, code, msg = query(self, "COMMIT")
    if not ok then rollback(self); return nil, code, msg end
    self.stale = true
    return unpack(res, 2, res.n)
end

-- Run FN(self, ...) in one read transaction (one snapshot for its queries).
local function read(self, fn, ...)
    rollback(self)          -- as in write: one a stopped call left open
    local ok, code, msg = query(self, "BEGIN")
    if not ok then return nil, code, msg end
    local res = pack(pcall(fn, self, ...))
    rollback(self)  -- nothing to keep: ends the read
    if not res[1] then error(res[2], 0) end
    return unpack(res, 2, res.n)
end

-- SQL run with sqlite3_exec (several statements, no parameters).
local function exec(self, sql)
    local errp = ffi_new("char *[1]")
    local rc = sqlite.sqlite3_exec(self.db, sql, nil, nil, errp)
    if rc ~= SQLITE_OK then
        local msg = errp[0] ~= nil and ffi_string(errp[0]) or ffi_string(sqlite.sqlite3_errstr(rc))
        if errp[0] ~= nil then sqlite.sqlite3_free(errp[0]) end
        return fail("internal", "key store: %s", msg)
    end
    return true
end

-- The first column of the first row SQL gives (nil when no row or NULL).
local function pragma(self, sql, ...)
    local rows, code, msg = query(self, sql, ...)
    if not rows then return nil, code, msg end
    local row = rows[1]
    if not row then return nil end
    return row[self.columns[sql][1]]
end

---------------------------------------------------------------------------
-- opening

local function c_error(what, path)
    local e = ffi.errno()
    return fail("internal", "could not %s the key store %s: %s", what, path, ffi_string(ffi.C.strerror(e)))
end

-- Create PATH mode 0600 when it does not exist (so the file is never
-- readable by others, whatever the umask). Returns true when it made it.
local function create_file(path)
    local fd = ffi.C.open(path, bor(O_RDWR, O_CREAT, O_EXCL, O_CLOEXEC), ffi_cast("int", 384))
    if fd < 0 then
        if ffi.errno() == EEXIST then return false end
        return c_error("create", path)
    end
    ffi.C.close(fd)
    if ffi.C.chmod(path, 384) ~= 0 then return c_error("chmod", path) end
    return true
end

local function migrate(self)
    local target = #MIGRATIONS
    local version, code, msg = pragma(self, "PRAGMA user_version")
    if not version then return nil, code or "internal", msg or "key store: no user_version" end
    if version == target then return true end
    if version > target then
        return fail("internal", "the key store's schema is version %d, newer than this weir's (%d)",
                    version, target)
    end
    -- BEGIN IMMEDIATE: two workers opening a new file migrate one after the other
    local ok
    ok, code, msg = query(self, "BEGIN IMMEDIATE")
    if not ok then return nil, code, msg end
    version, code, msg = pragma(self, "PRAGMA user_version")
    if not version then rollback(self); return nil, code or "internal", msg end
    for v = version + 1, target do
        ok, code, msg = exec(self, MIGRATIONS[v])
        if not ok then
            rollback(self)
            return fail("internal", "could not migrate the key store to schema version %d: %s", v, msg)
        end
    end
    if version < target then
        ok, code, msg = exec(self, format("PRAGMA user_version = %d;"
            .. "UPDATE meta SET value = value + 1 WHERE name = 'generation';", target))
        if not ok then rollback(self); return nil, code, msg end
    end
    ok, code, msg = query(self, "COMMIT")
    if not ok then rollback(self); return nil, code, msg end
    self.stale = true
    return true
end

--- Open (and create when missing) the store in the file PATH. The
-- directory must exist. A new file is made mode 0600; the schema is created
-- or migrated to `SCHEMA_VERSION`.
-- @tparam string path the database file
-- @tparam[opt] table opts `busy_timeout` (ms, default `BUSY_TIMEOUT_MS`),
--   `now` (a function returning the time in seconds, default `os.time`)
-- @treturn[1] table the store
-- @treturn[2] nil
-- @treturn[2] string code
-- @treturn[2] string message
-- @usage local st, code, msg = keystore.open(conf.keystore)
function _M.open(path, opts)
    if type(path) ~= "string" or path == "" or find(path, "%z") then
        return fail("invalid", "keystore.open: path must be a file name")
    end
    opts = opts or {}
    local ok, code, msg = check_fields(opts, { busy_timeout = true, now = true }, "keystore.open")
    if not ok then return nil, code, msg end
    local timeout = opts.busy_timeout or _M.BUSY_TIMEOUT_MS
    if type(timeout) ~= "number" or timeout < 0 or timeout ~= floor(timeout) then
        return fail("invalid", "keystore.open: busy_timeout must be a whole number of milliseconds")
    end
    if opts.now ~= nil and type(opts.now) ~= "function" then
        return fail("invalid", "keystore.open: now must be a function")
    end

    local created
    created, code, msg = create_file(path)
    if created == nil then return nil, code, msg end

    local pp = ffi_new("sqlite3 *[1]")
    local rc = sqlite.sqlite3_open_v2(path, pp, bor(SQLITE_OPEN_READWRITE, SQLITE_OPEN_NOMUTEX), nil)
    if pp[0] == nil then return fail("internal", "could not open the key store %s: out of memory", path) end
    local db = ffi_gc(pp[0], sqlite.sqlite3_close_v2)
    local self = setmetatable({
        db = db, path = path, now = opts.now or os.time,
        stmts = {}, columns = {},   -- SQL → prepared statement, its column names
        gen = nil, dv = nil,        -- the generation last read, and PRAGMA data_version then
        stale = true,               -- this connection committed since: read the counter again
    }, Store)
    if rc ~= SQLITE_OK then
        msg = errmsg(db)
        self:close()
        return fail("internal", "could not open the key store %s: %s", path, msg)
    end
    sqlite.sqlite3_extended_result_codes(db, 1)
    sqlite.sqlite3_busy_timeout(db, timeout)

    local mode
    mode, code, msg = pragma(self, "PRAGMA journal_mode = WAL")
    if mode ~= "wal" then
        self:close()
        return fail("internal", "could not open the key store %s: %s", path,
                    msg or ("journal mode " .. tostring(mode) .. " instead of wal"))
    end
    -- FULL: a commit is on disk when it returns (a revocation survives a
    -- power cut); only writes pay for it, and they are admin requests.
    ok, code, msg = exec(self, "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA trusted_schema = OFF;")
    if ok then ok, code, msg = migrate(self) end
    if not ok then
        self:close()
        return fail(code, "could not open the key store %s: %s", path, msg)
    end
    return self
end

--- Close the store; later calls return nil, "internal". Closing twice is fine.
-- @usage st:close()
function Store:close()
    if not self.db then return true end
    for _, st in pairs(self.stmts) do
        ffi_gc(st, nil)
        sqlite.sqlite3_finalize(st)
    end
    self.stmts, self.columns = {}, {}
    local db = self.db
    self.db = nil
    ffi_gc(db, nil)
    sqlite.sqlite3_close_v2(db)
    return true
end

--- The database's schema version (`PRAGMA user_version`).
-- @treturn number
function Store:schema_version()
    local v, code, msg = pragma(self, "PRAGMA user_version")
    if not v then return nil, code or "internal", msg end
    return v
end

--- A number that changes whenever any connection (this one, another
-- worker's) has committed a change. Cheap: one `PRAGMA data_version`, and a
-- read of the counter only when that or this connection says something
-- was committed. Compare it with the value a cache was filled at.
-- @treturn number
-- @usage if st:generation() ~= cache.gen then cache = refill() end
function Store:generation()
    local dv, code, msg = pragma(self, "PRAGMA data_version")
    if not dv then return nil, code or "internal", msg end
    if self.stale or dv ~= self.dv then
        -- data_version first: a commit after it is seen at the next call
        local gen
        gen, code, msg = pragma(self, "SELECT value FROM meta WHERE name = 'generation'")
        if not gen then return nil, code or "internal", msg end
        self.gen, self.dv, self.stale = gen, dv, false
    end
    return self.gen
end

---------------------------------------------------------------------------
-- applications

local APP_COLS = "a.id AS id, a.name AS name, a.owner AS owner, a.description AS description, "
    .. "a.tier AS tier, a.scopes AS scopes, a.created_at AS created_at, a.updated_at AS updated_at, "
    .. "a.revoked_at AS revoked_at"
local SQL_APP_BY_ID = "SELECT " .. APP_COLS .. " FROM apps a WHERE a.id = ?1"
local SQL_APP_BY_NAME = "SELECT " .. APP_COLS .. " FROM apps a WHERE a.name = ?1"

-- The app row named by an id or a name, or nil, "not_found".
local function find_app(self, id_or_name)
    local rows, code, msg = rules.check_app_ref(id_or_name)
    if not rows then return nil, code, msg end
    if is_uuid(id_or_name) then
        rows, code, msg = query(self, SQL_APP_BY_ID, lower(id_or_name))
    else
        rows, code, msg = query(self, SQL_APP_BY_NAME, id_or_name)
    end
    if not rows then return nil, code, msg end
    if not rows[1] then return fail("not_found", "no such application") end
    return rows[1]
end

--- Create an application.
-- @tparam table t `name` (unique, case-sensitive, 1..100 characters, not
--   shaped like a UUID), `owner` (1..200), `description` (optional, up to
--   1000), `tier` (optional, 1..64, default `DEFAULT_TIER`), `scopes`
--   (optional array of up to 50 strings of 1..100 of `[A-Za-z0-9._:/-]`)
-- @treturn table the application: `id` (UUID), `name`, `owner`,
--   `description`, `tier`, `scopes`, `created_at`, `updated_at`, `revoked_at`
-- @usage local app, code, msg = st:create_app{ name = "app1", owner = "alice" }
function Store:create_app(t)
    local v, code, msg = rules.check_create_app(t)
    if not v then return nil, code, msg end
    local id = uuid()
    if not id then return rand_failed() end
    local now = now_seconds(self)
    return write(self, function()
        local rows, c, m = query(self, "INSERT INTO apps (id, name, owner, description, tier, scopes, "
            .. "created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            id, v.name, v.owner, v.description or "", v.tier or _M.DEFAULT_TIER, v.scopes or "", now)
        if not rows then
            if c == "conflict" then return name_taken(v.name) end
            return nil, c, m
        end
        local row
        row, c, m = find_app(self, id)
        if not row then return nil, c, m end
        return app_of(row)
    end)
end

--- An application, by id or by name.
-- @tparam string id_or_name
-- @treturn table the application (see `create_app`), or nil, "not_found"
-- @usage local app = st:get_app("app1")
function Store:get_app(id_or_name)
    local row, code, msg = find_app(self, id_or_name)
    if not row then return nil, code, msg end
    return app_of(row)
end

--- Applications, in the order they were created.
-- @tparam[opt] table q `owner`, `name` (exact matches), `limit` (default
--   `DEFAULT_LIMIT`, at most `MAX_LIMIT`), `offset`
-- @treturn table an array of applications
-- @treturn number how many match, whatever the limit
-- @usage local apps, total = st:list_apps{ owner = "alice", limit = 20 }
function Store:list_apps(q)
    local limit, offset
    q, limit, offset = rules.check_list_apps(q, _M.DEFAULT_LIMIT, _M.MAX_LIMIT)
    if not q then return nil, limit, offset end
    return read(self, function()
        local where = " FROM apps a WHERE (?1 IS NULL OR a.owner = ?1) AND (?2 IS NULL OR a.name = ?2)"
        local rows, c, m = query(self, "SELECT " .. APP_COLS .. where .. " ORDER BY a.rowid LIMIT ?3 OFFSET ?4",
                                 q.owner, q.name, limit, offset)
        if not rows then return nil, c, m end
        local n
        n, c, m = pragma(self, "SELECT count(*)" .. where, q.owner, q.name)
        if not n then return nil, c or "internal", m end
        local out = {}
        for i, row in ipairs(rows) do out[i] = app_of(row) end
        return out, n
    end)
end

--- Change an application's fields.
-- @tparam string id the application's id (or name)
-- @tparam table fields any of `name`, `owner`, `description`, `tier`,
--   `scopes` (checked as in `create_app`; other fields are "invalid")
-- @treturn table the application as it is now
-- @usage st:update_app(app.id, { tier = "Gold" })
function Store:update_app(id, fields)
    local v, code, msg = rules.check_update_app(fields)
    if not v then return nil, code, msg end
    local now = now_seconds(self)
    return write(self, function()
        local row, c, m = find_app(self, id)
        if not row then return nil, c, m end
        if next(v) == nil then return app_of(row) end
        local rows
        rows, c, m = query(self, "UPDATE apps SET name = ?2, owner = ?3, description = ?4, tier = ?5, "
            .. "scopes = ?6, updated_at = ?7 WHERE id = ?1", row.id, v.name or row.name,
            v.owner or row.owner, v.description or row.description, v.tier or row.tier,
            v.scopes or row.scopes, now)
        if not rows then
            if c == "conflict" then return name_taken(v.name) end
            return nil, c, m
        end
        row, c, m = find_app(self, row.id)
        if not row then return nil, c, m end
        return app_of(row)
    end)
end

--- Delete an application, with its keys and subscriptions.
-- @tparam string id the application's id (or name)
-- @treturn boolean true
-- @usage st:delete_app(app.id)
function Store:delete_app(id)
    return write(self, function()
        local row, c, m = find_app(self, id)
        if not row then return nil, c, m end
        local rows
        rows, c, m = query(self, "DELETE FROM apps WHERE id = ?1", row.id)
        if not rows then return nil, c, m end
        return true
    end)
end

--- Revoke an application: its keys fail `check_client`, its subscriptions
-- are not found by `subscription`. Revoking twice keeps the first time.
-- @tparam string id the application's id (or name)
-- @treturn table the application, `revoked_at` set
-- @usage st:revoke_app(app.id)
function Store:revoke_app(id)
    local now = now_seconds(self)
    return write(self, function()
        local row, c, m = find_app(self, id)
        if not row then return nil, c, m end
        if row.revoked_at then return app_of(row) end
        local rows
        rows, c, m = query(self, "UPDATE apps SET revoked_at = ?2, updated_at = ?2 WHERE id = ?1", row.id, now)
        if not rows then return nil, c, m end
        row, c, m = find_app(self, row.id)
        if not row then return nil, c, m end
        return app_of(row)
    end)
end

---------------------------------------------------------------------------
-- consumer keys (only the SHA-256 of a secret is stored: see weir.keystore_rules)

local KEY_COLS = "k.consumer_key AS consumer_key, k.key_type AS key_type, k.created_at AS key_created_at, "
    .. "k.revoked_at AS key_revoked_at"

local function key_of(row)
    return { consumer_key = row.consumer_key, key_type = row.key_type,
             created_at = row.key_created_at, revoked_at = row.key_revoked_at }
end

--- Make a new consumer key and secret of KEY_TYPE for an application. They
-- replace the pair of that type it had (the old key stops working at once).
-- The secret is returned only here.
-- @tparam string app_id the application's id (or name)
-- @tparam string key_type "production" or "sandbox"
-- @treturn table `consumer_key` (24 characters of base64url), `consumer_secret`
--   (32 random bytes, base64url: 43 characters), `key_type`, `created_at`
-- @usage local keys = assert(st:generate_keys(app.id, "production"))
function Store:generate_keys(app_id, key_type)
    local ok, code, msg = rules.check_key_type(key_type)
    if not ok then return nil, code, msg end
    local key, secret, secret_hash = rules.new_keys()
    if not key then return rand_failed() end
    local now = now_seconds(self)
    return write(self, function()
        local row, c, m = find_app(self, app_id)
        if not row then return nil, c, m end
        if row.revoked_at then return fail("conflict", "the application is revoked") end
        local rows
        rows, c, m = query(self, "DELETE FROM keys WHERE app_id = ?1 AND key_type = ?2", row.id, key_type)
        if not rows then return nil, c, m end
        rows, c, m = query(self, "INSERT INTO keys (consumer_key, app_id, key_type, secret_hash, created_at) "
            .. "VALUES (?1, ?2, ?3, ?4, ?5)", key, row.id, key_type, secret_hash, now)
        if not rows then return fail("internal", "could not store the new key") end
        return { consumer_key = key, consumer_secret = secret, key_type = key_type, created_at = now }
    end)
end

--- An application's consumer keys, without secrets.
-- @tparam string app_id the application's id (or name)
-- @treturn table an array of `{ consumer_key, key_type, created_at, revoked_at }`
-- @usage for _, k in ipairs(st:list_keys(app.id)) do print(k.consumer_key) end
function Store:list_keys(app_id)
    return read(self, function()
        local row, c, m = find_app(self, app_id)
        if not row then return nil, c, m end
        local rows
        rows, c, m = query(self, "SELECT " .. KEY_COLS .. " FROM keys k WHERE k.app_id = ?1 ORDER BY k.key_type",
                           row.id)
        if not rows then return nil, c, m end
        local out = {}
        for i, r in ipairs(rows) do out[i] = key_of(r) end
        return out
    end)
end

local SQL_KEY = "SELECT " .. KEY_COLS .. ", k.secret_hash AS secret_hash, " .. APP_COLS
    .. " FROM keys k JOIN apps a ON a.id = k.app_id WHERE k.consumer_key = ?1"

--- Check client credentials (the token endpoint's client authentication).
-- The secret's hash is compared in constant time, and an unknown key costs
-- the same hash and comparison.
-- @tparam string consumer_key
-- @tparam string secret
-- @treturn[1] table the application
-- @treturn[1] string the key type
-- @treturn[2] nil, "not_found" for an unknown key, a wrong secret, a revoked
--   key or a revoked application (one message for all)
-- @usage local app, key_type = st:check_client(id, secret)
function Store:check_client(consumer_key, secret)
    local rows, code, msg = rules.check_client_args(consumer_key, secret)
    if not rows then return nil, code, msg end
    rows, code, msg = query(self, SQL_KEY, consumer_key)
    if not rows then return nil, code, msg end
    local row = rows[1]
    local same = rules.same_secret(secret, row and row.secret_hash)
    if not row or not same or row.key_revoked_at or row.revoked_at then
        return fail("not_found", "invalid client credentials")
    end
    return app_of(row), row.key_type
end

--- A consumer key's record and application, revoked or not (no secret).
-- @tparam string consumer_key
-- @treturn table the application
-- @treturn string the key type
-- @treturn table `{ consumer_key, key_type, created_at, revoked_at }`
-- @usage local app, key_type, key = st:find_key(id)
function Store:find_key(consumer_key)
    local rows, code, msg = rules.check_consumer_key(consumer_key)
    if not rows then return nil, code, msg end
    rows, code, msg = query(self, SQL_KEY, consumer_key)
    if not rows then return nil, code, msg end
    local row = rows[1]
    if not row then return fail("not_found", "no such consumer key") end
    return app_of(row), row.key_type, key_of(row)
end

--- Revoke a consumer key (it stays listed, with `revoked_at`). Revoking
-- twice keeps the first time.
-- @tparam string consumer_key
-- @treturn boolean true
-- @usage st:revoke_key(id)
function Store:revoke_key(consumer_key)
    local ok, code, msg = rules.check_consumer_key(consumer_key)
    if not ok then return nil, code, msg end
    local now = now_seconds(self)
    return write(self, function()
        local rows, c, m = query(self, "SELECT revoked_at FROM keys WHERE consumer_key = ?1", consumer_key)
        if not rows then return nil, c, m end
        if not rows[1] then return fail("not_found", "no such consumer key") end
        if rows[1].revoked_at then return true end
        rows, c, m = query(self, "UPDATE keys SET revoked_at = ?2 WHERE consumer_key = ?1", consumer_key, now)
        if not rows then return nil, c, m end
        return true
    end)
end

---------------------------------------------------------------------------
-- subscriptions

local SUB_SELECT = "SELECT s.id AS id, s.app_id AS app_id, a.name AS app_name, s.api AS api, "
    .. "s.version AS version, s.tier AS tier, s.created_at AS created_at, s.updated_at AS updated_at "
    .. "FROM subscriptions s JOIN apps a ON a.id = s.app_id "

local function sub_of(row)
    return { id = row.id, app_id = row.app_id, app_name = row.app_name, api = row.api,
             version = row.version, tier = row.tier, created_at = row.created_at,
             updated_at = row.updated_at }
end

local function find_sub(self, id)
    local rows, code, msg = rules.check_sub_id(id)
    if not rows then return nil, code, msg end
    rows, code, msg = query(self, SUB_SELECT .. "WHERE s.id = ?1", lower(id))
    if not rows then return nil, code, msg end
    if not rows[1] then return fail("not_found", "no such subscription") end
    return sub_of(rows[1])
end

--- Subscribe an application to an API version at a tier.
-- @tparam table t `app` (id or name), `api` (1..200 characters), `version`
--   (1..64), `tier` (1..64)
-- @treturn table the subscription: `id`, `app_id`, `app_name`, `api`,
--   `version`, `tier`, `created_at`, `updated_at`; "conflict" when the
--   application has one for that API version, or is revoked
-- @usage st:subscribe{ app = "app1", api = "Echo", version = "1.0", tier = "Gold" }
function Store:subscribe(t)
    local ok, code, msg = rules.check_subscribe(t)
    if not ok then return nil, code, msg end
    local id = uuid()
    if not id then return rand_failed() end
    local now = now_seconds(self)
    return write(self, function()
        local row, c, m = find_app(self, t.app)
        if not row then return nil, c, m end
        if row.revoked_at then return fail("conflict", "the application is revoked") end
        local rows
        rows, c, m = query(self, "INSERT INTO subscriptions (id, app_id, api, version, tier, created_at, "
            .. "updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)", id, row.id, t.api, t.version, t.tier, now)
        if not rows then
            if c == "conflict" then
                return fail("conflict", "the application is subscribed to that API version already")
            end
            return nil, c, m
        end
        return find_sub(self, id)
    end)
end

--- Subscriptions, in the order they were made.
-- @tparam[opt] table q `app` (id or name), `api`, `version` (exact
--   matches), `limit`, `offset` (as in `list_apps`)
-- @treturn table an array of subscriptions
-- @treturn number how many match, whatever the limit
-- @usage local subs, total = st:list_subscriptions{ api = "Echo" }
function Store:list_subscriptions(q)
    local limit, offset
    q, limit, offset = rules.check_list_subscriptions(q, _M.DEFAULT_LIMIT, _M.MAX_LIMIT)
    if not q then return nil, limit, offset end
    local app = q.app
    if is_uuid(app) then app = lower(app) end
    return read(self, function()
        local where = "WHERE (?1 IS NULL OR s.app_id = ?1 OR a.name = ?1) AND (?2 IS NULL OR s.api = ?2) "
            .. "AND (?3 IS NULL OR s.version = ?3)"
        local rows, c, m = query(self, SUB_SELECT .. where .. " ORDER BY s.rowid LIMIT ?4 OFFSET ?5",
                                 app, q.api, q.version, limit, offset)
        if not rows then return nil, c, m end
        local n
        n, c, m = pragma(self, "SELECT count(*) FROM subscriptions s JOIN apps a ON a.id = s.app_id " .. where,
                         app, q.api, q.version)
        if not n then return nil, c or "internal", m end
        local out = {}
        for i, row in ipairs(rows) do out[i] = sub_of(row) end
        return out, n
    end)
end

--- A subscription by id.
-- @tparam string id
-- @treturn table the subscription, or nil, "not_found"
function Store:get_subscription(id)
    return find_sub(self, id)
end

--- Change a subscription's tier.
-- @tparam string id
-- @tparam table fields `tier` (other fields are "invalid")
-- @treturn table the subscription as it is now
-- @usage st:update_subscription(sub.id, { tier = "Silver" })
function Store:update_subscription(id, fields)
    local ok, code, msg = rules.check_update_subscription(fields)
    if not ok then return nil, code, msg end
    local now = now_seconds(self)
    return write(self, function()
        local sub, c, m = find_sub(self, id)
        if not sub then return nil, c, m end
        if fields.tier == nil then return sub end
        local rows
        rows, c, m = query(self, "UPDATE subscriptions SET tier = ?2, updated_at = ?3 WHERE id = ?1",
                           sub.id, fields.tier, now)
        if not rows then return nil, c, m end
        return find_sub(self, sub.id)
    end)
end

--- Delete a subscription.
-- @tparam string id
-- @treturn boolean true
function Store:unsubscribe(id)
    return write(self, function()
        local sub, c, m = find_sub(self, id)
        if not sub then return nil, c, m end
        local rows
        rows, c, m = query(self, "DELETE FROM subscriptions WHERE id = ?1", sub.id)
        if not rows then return nil, c, m end
        return true
    end)
end

--- The handshake's lookup: the subscription of the application named
-- APP_NAME to API version, when the application is not revoked.
-- @tparam string app_name
-- @tparam string api
-- @tparam string version
-- @treturn table the subscription, or nil, "not_found"
-- @usage local sub = st:subscription(app.name, "Echo", "1.0")
function Store:subscription(app_name, api, version)
    local rows, code, msg = rules.check_subscription_args(app_name, api, version)
    if not rows then return nil, code, msg end
    rows, code, msg = query(self, SUB_SELECT
        .. "WHERE a.name = ?1 AND s.api = ?2 AND s.version = ?3 AND a.revoked_at IS NULL",
        app_name, api, version)
    if not rows then return nil, code, msg end
    if not rows[1] then return fail("not_found", "no such subscription") end
    return sub_of(rows[1])
end

---------------------------------------------------------------------------
-- revoked tokens

--- Revoke the token with id JTI until EXP (its expiry, seconds): it is
-- kept until `purge` passes that time. Revoking again keeps the later EXP.
-- @tparam string jti
-- @tparam number exp
-- @treturn boolean true
-- @usage st:revoke_token(claims.jti, claims.exp)
function Store:revoke_token(jti, exp)
    local ok, code, msg = rules.check_jti(jti)
    if not ok then return nil, code, msg end
    ok, code, msg = check_time(exp, "exp")
    if not ok then return nil, code, msg end
    local now = now_seconds(self)
    return write(self, function()
        local rows, c, m = query(self, "INSERT INTO revoked_tokens (jti, exp, revoked_at) VALUES (?1, ?2, ?3) "
            .. "ON CONFLICT (jti) DO UPDATE SET exp = max(exp, excluded.exp)", jti, ceil(exp), now)
        if not rows then return nil, c, m end
        return true
    end)
end

--- Whether JTI has been revoked (and not purged yet). On failure it
-- returns nil, "internal", message: treat that as "cannot tell", not "no".
-- @tparam string jti
-- @treturn boolean
-- @usage if st:token_revoked(claims.jti) ~= false then refuse() end
function Store:token_revoked(jti)
    local ok, code, msg = rules.check_jti(jti)
    if not ok then return nil, code, msg end
    local rows
    rows, code, msg = query(self, "SELECT 1 AS yes FROM revoked_tokens WHERE jti = ?1", jti)
    if not rows then return nil, code, msg end
    return rows[1] ~= nil
end

--- Forget revocations of tokens that expired before NOW (seconds, default
-- the clock). A verifier that allows clock skew passes now minus its leeway.
-- @tparam[opt] number now
-- @treturn number how many were removed
-- @usage st:purge(os.time() - 60)
function Store:purge(now)
    if now == nil then now = self.now() end
    local ok, code, msg = check_time(now, "now")
    if not ok then return nil, code, msg end
    return write(self, function()
        local rows, c, m = query(self, "DELETE FROM revoked_tokens WHERE exp < ?1", now)
        if not rows then return nil, c, m end
        return sqlite.sqlite3_changes(self.db)
    end)
end

---------------------------------------------------------------------------
-- signing keys (records of weir.issuer; their contents are not checked here)

--- The issuer's signing keys, oldest first (by `created_at`, then by when
-- they were added).
-- @treturn table an array of `{ kid, private_pem, public_jwk, created_at, retired_at }`
function Store:signing_keys()
    local rows, code, msg = query(self, "SELECT kid, private_pem, public_jwk, created_at, retired_at "
        .. "FROM signing_keys ORDER BY created_at, seq")
    if not rows then return nil, code, msg end
    local out = {}
    for i, r in ipairs(rows) do
        out[i] = { kid = r.kid, private_pem = r.private_pem, public_jwk = r.public_jwk,
                   created_at = r.created_at, retired_at = r.retired_at }
    end
    return out
end

--- Add a signing key.
-- @tparam table rec `kid` (unique, 1..200 characters), `private_pem`,
--   `public_jwk` (strings, up to 64 KiB), `created_at` (optional, default
--   now), `retired_at` (optional)
-- @treturn boolean true; "conflict" when the kid exists
-- @usage st:add_signing_key{ kid = kid, private_pem = pem, public_jwk = jwk }
function Store:add_signing_key(rec)
    local created, code, msg = rules.check_signing_key(rec, function() return now_seconds(self) end)
    if not created then return nil, code, msg end
    return write(self, function()
        local rows, c, m = query(self, "INSERT INTO signing_keys (kid, private_pem, public_jwk, created_at, "
            .. "retired_at) VALUES (?1, ?2, ?3, ?4, ?5)", rec.kid, rec.private_pem, rec.public_jwk, created,
            rec.retired_at)
        if not rows then
            if c == "conflict" then return fail("conflict", "a signing key with that kid exists") end
            return nil, c, m
        end
        return true
    end)
end

--- Mark a signing key retired at AT (seconds, default now).
-- @tparam string kid
-- @tparam[opt] number at
-- @treturn boolean true
function Store:retire_signing_key(kid, at)
    local code, msg
    at, code, msg = rules.check_retire(kid, at, function() return now_seconds(self) end)
    if not at then return nil, code, msg end
    return write(self, function()
        local rows, c, m = query(self, "UPDATE signing_keys SET retired_at = ?2 WHERE kid = ?1", kid, at)
        if not rows then return nil, c, m end
        if sqlite.sqlite3_changes(self.db) == 0 then return fail("not_found", "no such signing key") end
        return true
    end)
end

--- Delete a signing key.
-- @tparam string kid
-- @treturn boolean true
function Store:delete_signing_key(kid)
    local ok, code, msg = rules.check_kid(kid)
    if not ok then return nil, code, msg end
    return write(self, function()
        local rows, c, m = query(self, "DELETE FROM signing_keys WHERE kid = ?1", kid)
        if not rows then return nil, c, m end
        if sqlite.sqlite3_changes(self.db) == 0 then return fail("not_found", "no such signing key") end
        return true
    end)
end

return _M
