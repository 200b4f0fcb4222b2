/*
 * lua_bridge.c — the worker's LuaJIT VM: loading lua/weir/runtime.lua,
 * the calls into it (one per event), the FFI functions it calls back
 * (weir_ffi_*), the sessions it may name by id, the CPU budget of policy
 * code, timers, and the HTTP client's results.
 *
 * The budget. LuaJIT does not run count hooks inside compiled traces, so a
 * count hook alone cannot stop a loop the JIT compiled. Instead the VM runs
 * LuaJIT's profiler in line mode: traces recorded while it runs carry a
 * check that leaves the trace when a profiler tick is due, so its callback
 * is reached from compiled code too. The callback, when the call into Lua
 * has used more than limits.policy_budget of CPU, sets the (always
 * installed) count hook to fire at the next instruction, and the hook
 * raises an error inside the policy's coroutine. The hook keeps firing
 * until control is back in the runtime's main thread, so a policy cannot
 * catch its way out. What counts is the CPU the call used, read from the
 * thread's CPU-time clock in the callback (weir_profile_cb), never once per
 * call: a worker descheduled or held by a CPU quota in the middle of a
 * policy is not charged for the time it did not run.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>

#include "http_client.h"
#include "log.h"
#include "lua_bridge.h"
#include "redis.h"

#define WEIR_HOOK_COUNT_IDLE (1 << 30)
#define WEIR_SERVICE_BUDGET_MS 2000   /* a service request's budget, at least (weir_ffi_budget_service) */

typedef struct weir_lua_io_s weir_lua_io_t;
struct weir_lua_io_s {
    uint64_t          token;
    weir_http_call_t *call;
    weir_lua_io_t    *prev, *next;
};

static lua_State      *weir_L;
static uv_loop_t      *weir_lua_loop;
static weir_conf_t    *weir_lua_conf;     /* the current configuration: its limits apply */
static int             weir_ref[10];
enum { R_LOAD, R_OPEN, R_HANDSHAKE, R_FRAME_CO, R_CLOSE, R_IO_DONE, R_TIMERS, R_REQUEST, R_EVENT, R_FRAME_FAILED };
static const char *weir_ref_names[] = { "load", "open", "handshake", "frame_co", "close", "io_done", "timers",
                                        "request", "event", "frame_failed" };
#define R_LAST R_FRAME_FAILED

/* Idle frame hook coroutines (runtime.frame_loop), each anchored in the
 * registry by REF: weir_lua_resume_frame resumes one per message. */
typedef struct {
    lua_State *co;
    int        ref;
} weir_lua_co_t;

static weir_lua_co_t  *weir_cos;
static size_t          weir_cos_n, weir_cos_cap;

static uint64_t        weir_call_start_ns;
static int             weir_in_call;
static int             weir_over;
static int             weir_profiling;
static uint64_t        weir_failures;
static uv_timer_t      weir_lua_timer;
static weir_lua_io_t  *weir_ios;
static uint64_t        weir_next_token;

/* sessions by id: only those with a ctx */
static weir_session_t **weir_map;
static size_t          weir_map_cap, weir_map_n;

/* The budget's clock: the coarse monotonic clock is read from the vDSO at
 * a fraction of CLOCK_MONOTONIC's cost (this runs on every call into Lua),
 * and its few milliseconds of resolution are plenty for a budget. */
static uint64_t
weir_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

/* ---- the id map ---------------------------------------------------------------- */

static size_t
weir_map_slot(uint64_t id)
{
    return (size_t) ((id * 0x9e3779b97f4a7c15ULL) >> 20) & (weir_map_cap - 1);
}

static void
weir_map_put(weir_session_t *s)
{
    if ((weir_map_n + 1) * 2 > weir_map_cap) {
        size_t old = weir_map_cap;
        weir_session_t **o = weir_map;
        weir_map_cap = old ? old * 2 : 1024;
        weir_map = calloc(weir_map_cap, sizeof(*weir_map));
        if (weir_map == NULL) abort();
        weir_map_n = 0;
        for (size_t i = 0; i < old; i++)
            if (o[i] != NULL) weir_map_put(o[i]);
        free(o);
    }
    size_t i = weir_map_slot(weir_conn_id(s));
    while (weir_map[i] != NULL) i = (i + 1) & (weir_map_cap - 1);
    weir_map[i] = s;
    weir_map_n++;
}

static weir_session_t *
weir_map_get(uint64_t id)
{
    if (weir_map_cap == 0) return NULL;
    for (size_t i = weir_map_slot(id); weir_map[i] != NULL; i = (i + 1) & (weir_map_cap - 1))
        if (weir_conn_id(weir_map[i]) == id) return weir_map[i];
    return NULL;
}

static void
weir_map_del(uint64_t id)
{
    if (weir_map_cap == 0) return;
    size_t i = weir_map_slot(id);
    while (weir_map[i] != NULL && weir_conn_id(weir_map[i]) != id) i = (i + 1) & (weir_map_cap - 1);
    if (weir_map[i] == NULL) return;
    weir_map[i] = NULL;
    weir_map_n--;
    /* re-place the rest of the cluster (linear probing deletion) */
    for (size_t j = (i + 1) & (weir_map_cap - 1); weir_map[j] != NULL; j = (j + 1) & (weir_map_cap - 1)) {
        weir_session_t *s = weir_map[j];
        weir_map[j] = NULL;
        weir_map_n--;
        weir_map_put(s);
    }
}

/* ---- the budget ------------------------------------------------------------------ */

static void
weir_budget_hook(lua_State *L, lua_Debug *ar)
{
    WEIR_UNUSED(ar);
    if (!weir_over) {
        lua_sethook(L, weir_budget_hook, LUA_MASKCOUNT, WEIR_HOOK_COUNT_IDLE);
        return;
    }
    if (L == weir_L) return;      /* the runtime's own code: let it settle the failure */
    lua_pushfstring(L, "policy exceeded its CPU budget of %d ms", (int) weir_lua_conf->limits.policy_budget_ms);
    lua_error(L);
}

/* The budget of the call running now, in ns: limits.policy_budget, or a
 * service's (weir_ffi_budget_service). */
static uint64_t weir_call_limit_ns;

/* The call's CPU is read from this thread's CPU-time clock, a system call:
 * never per call, only in the profiler's callbacks (one per profiler tick
 * at most). The first callback of a call anchors it: WEIR_CALL_CPU0_NS is
 * the thread's CPU time then (0: no callback yet in this call), and
 * WEIR_CALL_PRE_NS what the call may have used before it: the less of the
 * thread's CPU since the callback before (which came before the call) and
 * the call's time on the clock. */
static uint64_t weir_call_cpu0_ns;
static uint64_t weir_call_pre_ns;
static uint64_t weir_cpu_last_ns;          /* the thread's CPU time at the last callback */

static uint64_t
weir_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

/* A call into Lua starts, or a message of a row: its budget starts anew. */
static inline void
weir_budget_start(void)
{
    weir_call_start_ns = weir_clock_ns();
    weir_call_cpu0_ns = 0;
}

/* Is the call running now over its budget, its CPU being CPU (the
 * thread's CPU time now) since the anchor? Its time on the clock is at
 * least its CPU: under the budget, it is. */
static int
weir_budget_spent(uint64_t cpu)
{
    if (weir_call_cpu0_ns == 0) return 0;
    if (weir_clock_ns() - weir_call_start_ns < weir_call_limit_ns) return 0;
    return cpu - weir_call_cpu0_ns + weir_call_pre_ns >= weir_call_limit_ns;
}

static void
weir_profile_cb(void *data, lua_State *L, int samples, int vmstate)
{
    WEIR_UNUSED(data);
    WEIR_UNUSED(samples);
    WEIR_UNUSED(vmstate);
    uint64_t cpu = weir_cpu_ns();
    uint64_t since = cpu - weir_cpu_last_ns;
    weir_cpu_last_ns = cpu;
    if (!weir_in_call || weir_over) return;
    if (weir_call_cpu0_ns == 0) {
        uint64_t wall = weir_clock_ns() - weir_call_start_ns;
        weir_call_cpu0_ns = cpu;
        weir_call_pre_ns = WEIR_MIN(since, wall);
    }
    if (!weir_budget_spent(cpu)) return;
    weir_over = 1;
    lua_sethook(L, weir_budget_hook, LUA_MASKCOUNT, 1);
}

/* Call the runtime's function REF with NARGS pushed after it; results stay
 * on the stack from index 1. Returns WEIR_OK or WEIR_ERROR (logged). */
static int
weir_lua_call(int nargs)
{
    weir_budget_start();
    weir_call_limit_ns = weir_lua_conf->limits.policy_budget_ms * 1000000ULL;
    weir_in_call = 1;
    int rc = lua_pcall(weir_L, nargs, LUA_MULTRET, 0);
    weir_in_call = 0;
    weir_over = 0;
    lua_sethook(weir_L, weir_budget_hook, LUA_MASKCOUNT, WEIR_HOOK_COUNT_IDLE);
    if (rc != 0) {
        char e[1024];
        weir_log(WEIR_LOG_ERROR, "lua runtime error", "\"error\":\"%s\"",
                 weir_log_str(e, sizeof(e), lua_tostring(weir_L, -1)));
        lua_settop(weir_L, 0);
        return WEIR_ERROR;
    }
    return WEIR_OK;
}

static void
weir_lua_push(int ref)
{
    lua_settop(weir_L, 0);
    lua_rawgeti(weir_L, LUA_REGISTRYINDEX, weir_ref[ref]);
}

/* Read a verdict from the stack, starting at index BASE. */
static int
weir_lua_verdict(int base, weir_verdict_t *v)
{
    memset(v, 0, sizeof(*v));
    if (lua_tointeger(weir_L, base) == WEIR_AGAIN) return WEIR_AGAIN;
    v->kind = (int) lua_tointeger(weir_L, base + 1);
    switch (v->kind) {
    case WEIR_V_PASS:
        v->sandbox = (int) lua_tointeger(weir_L, base + 2);
        break;
    case WEIR_V_REPLACE:
        v->payload = lua_tolstring(weir_L, base + 2, &v->len);
        break;
    case WEIR_V_REPLY:
        v->payload = lua_tolstring(weir_L, base + 2, &v->len);
        v->code = (int) lua_tointeger(weir_L, base + 3);
        break;
    case WEIR_V_ERROR:
        v->payload = lua_tolstring(weir_L, base + 2, &v->len);
        v->code = (int) lua_tointeger(weir_L, base + 3);
        v->reason = lua_tostring(weir_L, base + 4);
        break;
    case WEIR_V_RESPOND:
        v->payload = lua_tolstring(weir_L, base + 2, &v->len);
        v->code = (int) lua_tointeger(weir_L, base + 3);
        v->reason = lua_tostring(weir_L, base + 4);     /* a service's header lines, or nil */
        break;
    case WEIR_V_FAIL:
        v->reason = lua_tostring(weir_L, base + 2);
        v->payload = lua_tolstring(weir_L, base + 3, &v->len);
        v->hook = lua_tostring(weir_L, base + 4);
        break;
    }
    if (v->payload == NULL && (v->kind == WEIR_V_REPLACE || v->kind == WEIR_V_REPLY)) v->payload = "";
    return WEIR_OK;
}

/* HOOK could not run: weir's runtime failed (logged) */
static void
weir_lua_fail_verdict(weir_verdict_t *v, const char *hook, const char *why)
{
    memset(v, 0, sizeof(*v));
    v->kind = WEIR_V_FAIL;
    v->hook = hook;
    v->reason = "runtime";
    v->payload = why;
    v->len = strlen(why);
}

/* ---- loading ------------------------------------------------------------------- */

/* The profiler runs only once some chain has hooks: traces recorded from
 * then on carry the checks the budget needs. */
static void
weir_lua_profile_start(weir_conf_t *conf)
{
    char mode[16];
    uint64_t iv = WEIR_MAX(conf->limits.policy_budget_ms / 4, (uint64_t) 1);
    snprintf(mode, sizeof(mode), "li%llu", (unsigned long long) WEIR_MIN(iv, (uint64_t) 10));
    luaJIT_profile_start(weir_L, mode, weir_profile_cb, NULL);
    weir_profiling = 1;
}

static int
weir_lua_load(weir_conf_t *conf)
{
    weir_lua_push(R_LOAD);
    lua_pushstring(weir_L, conf->file);
    lua_pushinteger(weir_L, conf->workers);
    /* the running state (the master's and this worker's: a reload keeps it),
     * which the runtime uses instead of the file's */
    const weir_state_conf_t *st = &conf->state;
    lua_createtable(weir_L, 0, 5);
    if (st->redis_url != NULL) {
        lua_pushstring(weir_L, st->redis_url);
        lua_setfield(weir_L, -2, "redis");
    }
    lua_pushstring(weir_L, st->key_prefix ? st->key_prefix : "");
    lua_setfield(weir_L, -2, "key_prefix");
    if (st->host != NULL) {
        lua_pushstring(weir_L, st->host);
        lua_setfield(weir_L, -2, "host");
    }
    lua_pushnumber(weir_L, (lua_Number) st->timeout_ms);
    lua_setfield(weir_L, -2, "timeout");
    lua_pushnumber(weir_L, (lua_Number) st->sync_interval_ms);
    lua_setfield(weir_L, -2, "sync_interval");
    if (weir_lua_call(3) != WEIR_OK) return WEIR_ERROR;
    if (!lua_istable(weir_L, 1)) {
        char e[2048];
        weir_log(WEIR_LOG_ERROR, "cannot load policies", "\"error\":\"%s\"",
                 weir_log_str(e, sizeof(e), lua_tostring(weir_L, 2)));
        return WEIR_ERROR;
    }
    for (size_t a = 0; a < conf->napis; a++) {
        for (size_t i = 0; i < conf->apis[a].nversions; i++) {
            weir_version_t *v = &conf->apis[a].versions[i];
            lua_pushstring(weir_L, conf->apis[a].name);
            lua_pushlstring(weir_L, "\0", 1);
            lua_pushstring(weir_L, v->version);
            lua_concat(weir_L, 3);
            lua_rawget(weir_L, 1);
            v->hooks = (unsigned) lua_tointeger(weir_L, -1);
            lua_pop(weir_L, 1);
            if (v->hooks != 0 && !weir_profiling) weir_lua_profile_start(conf);
        }
    }
    lua_settop(weir_L, 0);
    return WEIR_OK;
}

int
weir_lua_init(uv_loop_t *loop, weir_conf_t *conf)
{
    weir_lua_loop = loop;
    weir_lua_conf = conf;
    weir_L = luaL_newstate();
    if (weir_L == NULL) return WEIR_ERROR;
    luaL_openlibs(weir_L);

    const char *dir = weir_conf_lua_dir(NULL, 0);      /* found by the master before it forked */
    if (dir == NULL) return WEIR_ERROR;
    lua_getglobal(weir_L, "package");
    lua_pushfstring(weir_L, "%s/?.lua;%s/?/init.lua;", dir, dir);
    lua_getfield(weir_L, -2, "path");
    lua_concat(weir_L, 2);
    lua_setfield(weir_L, -2, "path");
    lua_pop(weir_L, 1);

    lua_getglobal(weir_L, "require");
    lua_pushstring(weir_L, "weir.runtime");
    if (lua_pcall(weir_L, 1, 1, 0) != 0) {
        char e[2048];
        weir_log(WEIR_LOG_ERROR, "cannot start the Lua runtime", "\"error\":\"%s\"",
                 weir_log_str(e, sizeof(e), lua_tostring(weir_L, -1)));
        return WEIR_ERROR;
    }
    for (int i = 0; i <= R_LAST; i++) {
        lua_getfield(weir_L, -1, weir_ref_names[i]);
        weir_ref[i] = luaL_ref(weir_L, LUA_REGISTRYINDEX);
    }
    lua_settop(weir_L, 0);

    uv_timer_init(loop, &weir_lua_timer);
    lua_sethook(weir_L, weir_budget_hook, LUA_MASKCOUNT, WEIR_HOOK_COUNT_IDLE);
    return weir_lua_load(conf);
}

int
weir_lua_reload(weir_conf_t *conf)
{
    if (weir_lua_load(conf) != WEIR_OK) return WEIR_ERROR;
    weir_lua_conf = conf;
    return WEIR_OK;
}

static void weir_lua_cancel_sleepers(void);
static int  weir_lua_stopping;     /* the worker is exiting: no new sleeper */

void
weir_lua_cancel_io(void)
{
    weir_lua_stopping = 1;
    weir_lua_cancel_sleepers();
    while (weir_ios != NULL) {
        weir_lua_io_t *io = weir_ios;
        weir_ios = io->next;
        weir_http_cancel(io->call);
        free(io);
    }
}

void
weir_lua_cleanup(void)
{
    weir_lua_cancel_io();
    weir_http_client_cleanup();
    if (weir_L != NULL) {
        if (weir_profiling) luaJIT_profile_stop(weir_L);
        weir_profiling = 0;
        lua_close(weir_L);
        weir_L = NULL;
    }
    free(weir_map);
    weir_map = NULL;
    weir_map_cap = weir_map_n = 0;
    free(weir_cos);
    weir_cos = NULL;
    weir_cos_n = weir_cos_cap = 0;
}

uint64_t
weir_lua_failures(void)
{
    return weir_failures;
}

/* ---- hooks: the sessions' policy engine ---------------------------------------- */

static int
weir_lua_open(weir_session_t *s, const weir_conn_info_t *c)
{
    weir_lua_push(R_OPEN);
    lua_pushnumber(weir_L, (lua_Number) weir_conn_id(s));
    lua_pushstring(weir_L, weir_conn_name(s));
    lua_pushstring(weir_L, c->api);
    lua_pushstring(weir_L, c->version);
    lua_pushstring(weir_L, c->context);
    lua_pushlstring(weir_L, c->head, c->head_len);
    lua_pushstring(weir_L, c->peer_ip);
    lua_pushinteger(weir_L, c->peer_port);
    lua_pushinteger(weir_L, c->tls);
    lua_pushinteger(weir_L, c->ticket);
    if (weir_lua_call(10) != WEIR_OK) return WEIR_ERROR;
    weir_map_put(s);
    return WEIR_OK;
}

static int
weir_lua_handshake(weir_session_t *s, weir_verdict_t *v)
{
    weir_lua_push(R_HANDSHAKE);
    lua_pushnumber(weir_L, (lua_Number) weir_conn_id(s));
    if (weir_lua_call(1) != WEIR_OK) {
        weir_lua_fail_verdict(v, "on_handshake", "runtime error");
        return WEIR_OK;
    }
    return weir_lua_verdict(1, v);
}

/* Run message DIR of S (ICPT 1: the interceptor) in a frame_loop coroutine
 * resumed from here: the chain runs with no Lua call around it. The
 * coroutine yields the runtime's return values (status first, a number)
 * and goes back to the pool; a hook that waits yields something else, and
 * the runtime keeps its coroutine until io_done. A coroutine that died (the
 * budget, or the runtime's own error) is settled by runtime.frame_failed. */
static int
weir_lua_resume_frame(weir_session_t *s, int dir, int opcode, size_t len, int icpt, weir_verdict_t *v,
                      const char *hook)
{
    uint64_t id = weir_conn_id(s);
    weir_lua_co_t c;
    if (weir_cos_n > 0) {
        c = weir_cos[--weir_cos_n];
    } else {
        weir_lua_push(R_FRAME_CO);
        if (weir_lua_call(0) != WEIR_OK || !lua_isthread(weir_L, 1)) {
            lua_settop(weir_L, 0);
            weir_lua_fail_verdict(v, hook, "runtime error");
            return WEIR_OK;
        }
        c.co = lua_tothread(weir_L, 1);
        c.ref = luaL_ref(weir_L, LUA_REGISTRYINDEX);
    }
    lua_settop(weir_L, 0);              /* the verdict of the call before is no longer read */
    lua_State *co = c.co;
    lua_pushnumber(co, (lua_Number) id);
    lua_pushinteger(co, dir);
    lua_pushinteger(co, opcode);
    lua_pushnumber(co, (lua_Number) len);
    lua_pushinteger(co, icpt);

    weir_budget_start();
    weir_call_limit_ns = weir_lua_conf->limits.policy_budget_ms * 1000000ULL;
    weir_in_call = 1;
    int rc = lua_resume(co, 5);
    weir_in_call = 0;
    if (weir_over) {
        weir_over = 0;
        lua_sethook(weir_L, weir_budget_hook, LUA_MASKCOUNT, WEIR_HOOK_COUNT_IDLE);
    }

    if (rc == LUA_YIELD && lua_type(co, 1) == LUA_TNUMBER) {
        lua_xmove(co, weir_L, lua_gettop(co));
        if (weir_cos_n == weir_cos_cap) {
            size_t cap = weir_cos_cap ? weir_cos_cap * 2 : 16;
            weir_lua_co_t *n = realloc(weir_cos, cap * sizeof(*n));
            if (n == NULL) abort();
            weir_cos = n;
            weir_cos_cap = cap;
        }
        weir_cos[weir_cos_n++] = c;
        return weir_lua_verdict(1, v);
    }
    if (rc == LUA_YIELD) {              /* the hook waits: the runtime holds its coroutine */
        lua_settop(co, 0);
        luaL_unref(weir_L, LUA_REGISTRYINDEX, c.ref);
        return WEIR_AGAIN;
    }
    /* dead: its error message is on top of its stack */
    lua_xmove(co, weir_L, 1);
    luaL_unref(weir_L, LUA_REGISTRYINDEX, c.ref);
    lua_rawgeti(weir_L, LUA_REGISTRYINDEX, weir_ref[R_FRAME_FAILED]);
    lua_insert(weir_L, 1);
    lua_pushnumber(weir_L, (lua_Number) id);
    lua_pushinteger(weir_L, dir);
    lua_pushinteger(weir_L, icpt);
    lua_pushvalue(weir_L, 2);
    lua_remove(weir_L, 2);
    if (weir_lua_call(4) != WEIR_OK) {
        weir_lua_fail_verdict(v, hook, "runtime error");
        return WEIR_OK;
    }
    return weir_lua_verdict(1, v);
}

/* The row of messages weir_lua_frames runs (NULL between calls), and the
 * one its hooks run now (weir_ffi_batch_at). */
static weir_msg_ref_t       *weir_batch;
static weir_session_t       *weir_batch_s;
static int                   weir_batch_dir, weir_batch_n, weir_batch_i;

static int
weir_lua_frames(weir_session_t *s, int dir, weir_msg_ref_t *m, int n, int *k, weir_verdict_t *v)
{
    weir_batch = m;
    weir_batch_s = s;
    weir_batch_dir = dir;
    weir_batch_n = n;
    weir_batch_i = 0;
    int rc = weir_lua_resume_frame(s, dir, 0, (size_t) n, 2, v, dir ? "on_frame_out" : "on_frame_in");
    /* a pass is message weir_batch_i's: the last of the row, or the one a
     * fail_open entry let through when the budget stopped its coroutine */
    *k = rc == WEIR_OK && v->kind == WEIR_V_PASS ? weir_batch_i + 1 : weir_batch_i;
    weir_batch = NULL;
    weir_batch_s = NULL;
    return rc;
}

/* Message I of the row being run: shown to weir_conn_payload, its opcode
 * returned and its length in *LEN; each message is a call of its own for
 * the budget. -1 when there is no such message. */
int
weir_ffi_batch_at(int i, size_t *len)
{
    *len = 0;
    if (weir_batch == NULL || i < 0 || i >= weir_batch_n) return -1;
    weir_batch_i = i;
    weir_conn_view(weir_batch_s, weir_batch_dir, &weir_batch[i]);
    *len = weir_batch[i].len;
    weir_budget_start();
    return weir_batch[i].opcode;
}

static int
weir_lua_frame(weir_session_t *s, int dir, int opcode, size_t len, weir_verdict_t *v)
{
    return weir_lua_resume_frame(s, dir, opcode, len, 0, v, dir ? "on_frame_out" : "on_frame_in");
}

static int
weir_lua_intercept(weir_session_t *s, size_t len, weir_verdict_t *v)
{
    return weir_lua_resume_frame(s, 0, 1, len, 1, v, "on_intercept");      /* a text message */
}

static int
weir_lua_request(weir_session_t *s, const weir_request_info_t *r, weir_verdict_t *v)
{
    weir_lua_push(R_REQUEST);
    lua_pushnumber(weir_L, (lua_Number) weir_conn_id(s));
    lua_pushstring(weir_L, weir_conn_name(s));
    lua_pushstring(weir_L, r->service);
    lua_pushlstring(weir_L, r->method, r->method_len);
    lua_pushlstring(weir_L, r->target, r->target_len);
    lua_pushlstring(weir_L, r->head, r->head_len);
    lua_pushlstring(weir_L, r->body ? r->body : "", r->body_len);
    lua_pushstring(weir_L, r->peer_ip);
    lua_pushinteger(weir_L, r->peer_port);
    lua_pushinteger(weir_L, r->tls);
    weir_map_put(s);
    if (weir_lua_call(10) != WEIR_OK) {
        weir_lua_fail_verdict(v, "request", "runtime error");
        return WEIR_OK;
    }
    return weir_lua_verdict(1, v);
}

static void
weir_lua_close(weir_session_t *s, const weir_conn_end_t *e)
{
    uint64_t id = weir_conn_id(s);
    weir_map_del(id);
    weir_lua_push(R_CLOSE);
    lua_pushnumber(weir_L, (lua_Number) id);
    lua_pushinteger(weir_L, e->code);
    lua_pushstring(weir_L, e->side);
    lua_pushnumber(weir_L, (lua_Number) e->duration_ms);
    lua_pushnumber(weir_L, (lua_Number) e->frames_in);
    lua_pushnumber(weir_L, (lua_Number) e->bytes_in);
    lua_pushnumber(weir_L, (lua_Number) e->frames_out);
    lua_pushnumber(weir_L, (lua_Number) e->bytes_out);
    weir_lua_call(8);
    lua_settop(weir_L, 0);
}

const weir_policy_ops_t weir_lua_policy = {
    .open      = weir_lua_open,
    .handshake = weir_lua_handshake,
    .frame     = weir_lua_frame,
    .frames    = weir_lua_frames,
    .intercept = weir_lua_intercept,
    .close     = weir_lua_close,
    .request   = weir_lua_request,
};

/* ---- I/O results and timers ------------------------------------------------- */

/* The runtime returned "conn_id, hook, status, kind, ..." for a hook that
 * finished after waiting: hand the verdict to its session. */
static void
weir_lua_deliver(void)
{
    uint64_t id = (uint64_t) lua_tonumber(weir_L, 1);
    if (id == 0) return;
    weir_session_t *s = weir_map_get(id);
    if (s == NULL) return;
    int hook = (int) lua_tointeger(weir_L, 2);
    weir_verdict_t v;
    if (weir_lua_verdict(3, &v) == WEIR_AGAIN) return;
    weir_conn_resolved(s, hook, &v);
}

static void
weir_lua_http_done(weir_http_call_t *call, const weir_http_res_t *res, void *data)
{
    weir_lua_io_t *io = data;
    WEIR_UNUSED(call);
    if (io->prev) io->prev->next = io->next;
    else weir_ios = io->next;
    if (io->next) io->next->prev = io->prev;
    uint64_t token = io->token;
    free(io);

    weir_lua_push(R_IO_DONE);
    lua_pushnumber(weir_L, (lua_Number) token);
    lua_pushinteger(weir_L, res->status);
    if (res->error) lua_pushstring(weir_L, res->error);
    else lua_pushnil(weir_L);
    lua_pushlstring(weir_L, res->headers ? res->headers : "", res->headers_len);
    lua_pushlstring(weir_L, res->body ? res->body : "", res->body_len);
    if (weir_lua_call(5) == WEIR_OK) weir_lua_deliver();
    lua_settop(weir_L, 0);
}

static void
weir_lua_timer_cb(uv_timer_t *t)
{
    WEIR_UNUSED(t);
    weir_lua_push(R_TIMERS);
    weir_lua_call(0);
    lua_settop(weir_L, 0);
}

/* ---- FFI functions (called from the Lua runtime) -------------------------------- */

int
weir_ffi_abi(void)
{
    return WEIR_FFI_ABI;
}

const char *
weir_ffi_payload(uint64_t id, int dir, size_t *len)
{
    weir_session_t *s = weir_map_get(id);
    *len = 0;
    if (s == NULL) return NULL;
    const uint8_t *p = weir_conn_payload(s, dir, len);
    return (const char *) p;
}

int
weir_ffi_send(uint64_t id, int opcode, const char *p, size_t n)
{
    weir_session_t *s = weir_map_get(id);
    if (s == NULL) return WEIR_ERROR;
    return weir_conn_send(s, opcode, (const uint8_t *) p, n);
}

int
weir_ffi_close(uint64_t id, int code, const char *reason, const char *problem, const char *message)
{
    weir_session_t *s = weir_map_get(id);
    if (s == NULL) return WEIR_ERROR;
    weir_conn_close(s, code, reason, problem, message);
    return WEIR_OK;
}

int
weir_ffi_upstream(uint64_t id, const char *query, size_t qlen, const char *del, size_t dlen, const char *add,
                  size_t alen, const char *proto, size_t plen, int proto_set)
{
    weir_session_t *s = weir_map_get(id);
    if (s == NULL) return WEIR_ERROR;
    return weir_conn_upstream(s, query, qlen, del, dlen, add, alen, proto, plen, proto_set);
}

int
weir_ffi_limit(uint64_t id, const char *key, size_t len, uint64_t count, uint64_t period_us, uint64_t burst, int unit,
               int dirs, int action_in, int action_out, int share, char *err, size_t errlen)
{
    weir_session_t *s = weir_map_get(id);
    weir_limit_spec_t spec = { .count = count, .period_us = period_us, .burst = burst, .unit = unit, .dirs = dirs,
                               .share = share };
    if (s == NULL) {
        snprintf(err, errlen, "the connection is gone");
        return WEIR_ERROR;
    }
    return weir_conn_limit(s, key, len, &spec, action_in, action_out, err, errlen);
}

int
weir_ffi_analytics(uint64_t id, int set, const char *client)
{
    weir_session_t *s = weir_map_get(id);
    if (s == NULL) return WEIR_ERROR;
    return weir_conn_analytics(s, set, client);
}

int
weir_ffi_inspect(uint64_t id, weir_inspector_t *in, int owner)
{
    weir_session_t *s = weir_map_get(id);
    if (s == NULL) return WEIR_ERROR;
    weir_conn_inspect(s, in, owner > 0 ? (unsigned) owner : 0);
    return WEIR_OK;
}

int
weir_ffi_inspect_owner(uint64_t id)
{
    weir_session_t *s = weir_map_get(id);
    return s != NULL ? (int) weir_conn_inspect_owner(s) : 0;
}

int
weir_ffi_intercept(uint64_t id, const char *needle)
{
    weir_session_t *s = weir_map_get(id);
    if (s == NULL) return WEIR_ERROR;
    return weir_conn_intercept(s, needle);
}

int
weir_ffi_log_level(void)
{
    return weir_log_level;
}

int
weir_ffi_consumer(uint64_t id, const char *application, const char *subscriber, const char *key_type,
                  const char *tier)
{
    weir_session_t *s = weir_map_get(id);
    const char *f[WEIR_CONSUMER_FIELDS] = {
        [WEIR_CONSUMER_APPLICATION] = application, [WEIR_CONSUMER_SUBSCRIBER] = subscriber,
        [WEIR_CONSUMER_KEY_TYPE] = key_type, [WEIR_CONSUMER_TIER] = tier,
    };
    if (s == NULL) return WEIR_ERROR;
    return weir_conn_consumer(s, f);
}

void
weir_ffi_log(int level, const char *msg, const char *fields)
{
    if (!weir_log_enabled(level)) return;
    if (fields != NULL && *fields != '\0') weir_log(level, msg, "%s", fields);
    else weir_log(level, msg, NULL);
}

void
weir_ffi_timer(double ms)
{
    uint64_t d = ms <= 0 ? 0 : (uint64_t) ms + 1;
    uv_timer_start(&weir_lua_timer, weir_lua_timer_cb, d, 0);
}

void
weir_ffi_policy_failed(void)
{
    weir_failures++;
}

/* The runtime goes on with the rest of a chain after a fail_open policy ran
 * out of budget: the rest starts with a budget of its own. */
void
weir_ffi_budget_reset(void)
{
    weir_over = 0;
    weir_budget_start();
    lua_sethook(weir_L, weir_budget_hook, LUA_MASKCOUNT, WEIR_HOOK_COUNT_IDLE);
}

/* ON 1: what runs now in this call is one of weir's own services (an admin
 * or key manager request, run or resumed; a dashboard snapshot): weir's
 * code, which walks every connection or series of the host, not an
 * operator's policy. It gets WEIR_SERVICE_BUDGET_MS, or ten policy budgets
 * when that is more. ON 0: back to limits.policy_budget (for the timers
 * that follow a snapshot in the same call). */
void
weir_ffi_budget_service(int on)
{
    uint64_t ms = on ? WEIR_MAX((uint64_t) WEIR_SERVICE_BUDGET_MS, weir_lua_conf->limits.policy_budget_ms * 10)
                     : weir_lua_conf->limits.policy_budget_ms;
    weir_call_limit_ns = ms * 1000000ULL;
    /* the profiler may have found the call over the policy budget before it
     * got here: under the service's budget it is not, and the request must
     * not be stopped for it */
    if (weir_over && !weir_budget_spent(weir_cpu_ns())) {
        weir_over = 0;
        lua_sethook(weir_L, weir_budget_hook, LUA_MASKCOUNT, WEIR_HOOK_COUNT_IDLE);
    }
}

uint64_t
weir_ffi_http(const char *method, const char *url, const char *headers, const char *body, size_t blen,
              double timeout_ms, int verify, const char *ca, char *err, size_t errlen)
{
    weir_lua_io_t *io = calloc(1, sizeof(*io));
    if (io == NULL) {
        snprintf(err, errlen, "out of memory");
        return 0;
    }
    weir_http_req_t req = {
        .method = method, .url = url, .headers = headers, .body = body, .body_len = blen,
        .timeout_ms = timeout_ms > 0 ? (uint64_t) timeout_ms : 0, .verify = verify, .ca_file = ca,
    };
    io->token = ++weir_next_token;
    io->call = weir_http_request(weir_lua_loop, &req, weir_lua_http_done, io, err, errlen);
    if (io->call == NULL) {
        free(io);
        return 0;
    }
    io->next = weir_ios;
    if (weir_ios) weir_ios->prev = io;
    weir_ios = io;
    return io->token;
}

void
weir_lua_event(const char *name)
{
    if (weir_L == NULL) return;
    weir_lua_push(R_EVENT);
    lua_pushstring(weir_L, name);
    weir_lua_call(1);
    lua_settop(weir_L, 0);
}

uv_loop_t *
weir_lua_loop_of(void)
{
    return weir_lua_loop;
}

uint64_t
weir_lua_token(void)
{
    return ++weir_next_token;
}

void
weir_lua_io_result(uint64_t token, double value, const char *err)
{
    if (weir_L == NULL) return;
    weir_lua_push(R_IO_DONE);
    lua_pushnumber(weir_L, (lua_Number) token);
    lua_pushnumber(weir_L, value);
    if (err != NULL) lua_pushstring(weir_L, err);
    else lua_pushnil(weir_L);
    if (weir_lua_call(3) == WEIR_OK) weir_lua_deliver();
    lua_settop(weir_L, 0);
}

/* ---- sleeping ------------------------------------------------------------ */

typedef struct weir_lua_sleep_s weir_lua_sleep_t;
struct weir_lua_sleep_s {
    uv_timer_t        timer;
    uint64_t          token;
    weir_lua_sleep_t *prev, *next;
};

static weir_lua_sleep_t *weir_sleepers;

static void
weir_lua_sleep_freed(uv_handle_t *h)
{
    free(h->data);
}

/* SL is over: off the list, its handle closed (freed by the close). */
static void
weir_lua_sleep_end(weir_lua_sleep_t *sl)
{
    if (sl->prev) sl->prev->next = sl->next;
    else weir_sleepers = sl->next;
    if (sl->next) sl->next->prev = sl->prev;
    uv_close((uv_handle_t *) &sl->timer, weir_lua_sleep_freed);
}

static void
weir_lua_cancel_sleepers(void)
{
    while (weir_sleepers != NULL) weir_lua_sleep_end(weir_sleepers);
}

static void
weir_lua_sleep_cb(uv_timer_t *t)
{
    weir_lua_sleep_t *sl = t->data;
    uint64_t token = sl->token;
    weir_lua_sleep_end(sl);
    weir_lua_io_result(token, 0, NULL);
}

uint64_t
weir_ffi_sleep(double ms)
{
    if (weir_lua_stopping) return 0;       /* what still runs finds its sleep refused, and ends */
    weir_lua_sleep_t *sl = calloc(1, sizeof(*sl));
    if (sl == NULL || weir_lua_loop == NULL) {
        free(sl);
        return 0;
    }
    sl->token = weir_lua_token();
    uv_timer_init(weir_lua_loop, &sl->timer);
    sl->timer.data = sl;
    uv_timer_start(&sl->timer, weir_lua_sleep_cb, ms > 0 ? (uint64_t) ms : 0, 0);
    uv_unref((uv_handle_t *) &sl->timer);      /* a sleeper does not keep a stopping worker alive */
    sl->next = weir_sleepers;
    if (weir_sleepers) weir_sleepers->prev = sl;
    weir_sleepers = sl;
    return sl->token;
}

/* ---- Redis for Lua (state.redis) ---------------------------------------- */

/* Push REPLY as a Lua value: a string (status and bulk), a number, a table
 * (arrays, nested), nil; an error reply pushes nil and its text. Returns
 * how many values it pushed (1 or 2). */
static int
weir_lua_push_reply(lua_State *L, const redisReply *r, int depth)
{
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str, r->len);
        return 1;
    case REDIS_REPLY_INTEGER:
        lua_pushnumber(L, (lua_Number) r->integer);
        return 1;
    case REDIS_REPLY_ARRAY:
        if (depth > 8) {
            lua_pushnil(L);
            return 1;
        }
        lua_createtable(L, (int) r->elements, 0);
        for (size_t i = 0; i < r->elements; i++) {
            if (weir_lua_push_reply(L, r->element[i], depth + 1) == 2) lua_pop(L, 1);   /* an error inside: its nil */
            lua_rawseti(L, -2, (int) i + 1);
        }
        return 1;
    case REDIS_REPLY_ERROR:
        lua_pushnil(L);
        lua_pushlstring(L, r->str, r->len);
        return 2;
    default:
        lua_pushnil(L);
        return 1;
    }
}

static void
weir_lua_redis_done(void *data, redisReply *reply)
{
    uint64_t token = (uint64_t) (uintptr_t) data;
    if (weir_L == NULL) return;
    weir_lua_push(R_IO_DONE);
    lua_pushnumber(weir_L, (lua_Number) token);
    int n = 1;
    if (reply == NULL) {
        lua_pushnil(weir_L);
        lua_pushstring(weir_L, "no answer from Redis (not connected, or it timed out)");
        n += 2;
    } else {
        int k = weir_lua_push_reply(weir_L, reply, 0);
        if (k == 1 && reply->type != REDIS_REPLY_NIL) {
            n += 1;
        } else if (k == 1) {
            lua_pushboolean(weir_L, 1);    /* a nil reply: nil, true (an answer, not an error) */
            n += 2;
        } else {
            n += 2;
        }
    }
    if (weir_lua_call(n) == WEIR_OK) weir_lua_deliver();
    lua_settop(weir_L, 0);
}

uint64_t
weir_ffi_redis(int argc, const char **argv, const size_t *lens)
{
    if (argc <= 0 || argc > 1024) return 0;
    uint64_t token = weir_lua_token();
    if (weir_redis_command(weir_lua_redis_done, (void *) (uintptr_t) token, argc, argv, lens) != WEIR_OK) return 0;
    return token;
}

int
weir_ffi_redis_ready(void)
{
    return weir_redis_ready();
}

void
weir_ffi_http_cancel(uint64_t token)
{
    for (weir_lua_io_t *io = weir_ios; io != NULL; io = io->next) {
        if (io->token != token) continue;
        if (io->prev) io->prev->next = io->next;
        else weir_ios = io->next;
        if (io->next) io->next->prev = io->prev;
        weir_http_cancel(io->call);
        free(io);
        return;
    }
}
