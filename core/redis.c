/*
 * redis.c — the worker's connection to Redis (see redis.h).
 *
 * States: OFF (no Redis configured) → CONNECTING → HANDSHAKE (AUTH when a
 * password is set, SELECT when db is not 0, SCRIPT LOAD of each script,
 * written together) → READY. Any failure drops the connection (every
 * command out gets its callback with no reply) and goes to WAITING, from
 * which a timer connects again after a backoff: 100 ms doubling to 2 s,
 * ±25 %. A failure is logged once, when the state changes (ready or never
 * ready → down), and when Redis is back; every failure is counted.
 *
 * Timeouts: answers come in the order commands were written, so the
 * oldest command out has the earliest deadline; one timer watches it (and
 * the connection attempt). A late answer means Redis is slow or the path
 * to it is blackholed: the connection is dropped and made again.
 *
 * hiredis's libuv adapter ignores poll errors (a refused connection, a
 * reset): such a connection is found by the same timeouts.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>
#include <openssl/evp.h>

#include "log.h"
#include "redis.h"
#include "weir.h"

#define WEIR_REDIS_MAX_SCRIPTS  8
#define WEIR_REDIS_MAX_WATCHERS 4

enum {
    WEIR_REDIS_OFF = 0,
    WEIR_REDIS_WAITING,           /* to connect again when the retry timer fires */
    WEIR_REDIS_CONNECTING,
    WEIR_REDIS_HANDSHAKE,
    WEIR_REDIS_READY,
};

static const char *weir_redis_state_names[] = { "off", "waiting", "connecting", "handshake", "ready" };

/* A command written and not answered yet. */
typedef struct weir_redis_req_s {
    weir_redis_cb             cb;
    void                     *data;
    uint64_t                  deadline_ms;   /* loop time */
    struct weir_redis_req_s  *prev, *next;
} weir_redis_req_t;

static struct {
    uv_loop_t           *loop;
    redisAsyncContext   *ac;              /* NULL unless CONNECTING, HANDSHAKE or READY */
    int                  state;
    int                  down;            /* failed, and not ready since */
    int                  ever_ready;
    char                 ip[INET6_ADDRSTRLEN];
    int                  port;
    char                *name;            /* host:port for logs */
    char                *user, *password; /* AUTH; the password is never logged */
    uint32_t             db;
    uint64_t             timeout_ms;
    uint64_t             connect_deadline_ms;
    uint64_t             down_since_ms;
    unsigned             backoff_ms;
    int                  handshake_left;  /* answers the handshake still waits for */
    uv_timer_t           timer;           /* deadlines */
    uv_timer_t           retry;           /* connecting again */
    weir_redis_req_t    *head, *tail;     /* commands out, oldest first */
    uint64_t             out;
    weir_redis_script_t *scripts[WEIR_REDIS_MAX_SCRIPTS];
    int                  nscripts;
    void               (*watchers[WEIR_REDIS_MAX_WATCHERS])(int ready);
    int                  nwatchers;
    weir_redis_stats_t   stats;
} R;

static void weir_redis_connect(void);
static void weir_redis_retry_cb(uv_timer_t *t);
static void weir_redis_reply_cb(redisAsyncContext *c, void *reply, void *privdata);

/* ---- deadlines ------------------------------------------------------------- */

static void weir_redis_timer_cb(uv_timer_t *t);

/* Arm the timer for the earliest deadline: the connection attempt's (and
 * its handshake's) or the oldest command's. */
static void
weir_redis_arm(void)
{
    uint64_t at = UINT64_MAX;
    if (R.state == WEIR_REDIS_CONNECTING || R.state == WEIR_REDIS_HANDSHAKE) at = R.connect_deadline_ms;
    if (R.head != NULL && R.head->deadline_ms < at) at = R.head->deadline_ms;
    if (at == UINT64_MAX) {
        uv_timer_stop(&R.timer);
        return;
    }
    uint64_t now = uv_now(R.loop);
    uv_timer_start(&R.timer, weir_redis_timer_cb, at > now ? at - now : 0, 0);
}

/* ---- state changes -------------------------------------------------------- */

static void
weir_redis_tell(int ready)
{
    for (int i = 0; i < R.nwatchers; i++) R.watchers[i](ready);
}

/*
 * The connection failed (WHY says how): drop it when FREE (hiredis frees it
 * itself after its connect and disconnect callbacks), fail every command
 * out, log the change of state once, and connect again after the backoff.
 */
static void
weir_redis_fail(const char *why, int free_ac)
{
    char e[512];
    redisAsyncContext *ac = R.ac;
    int was = R.state;

    if (R.state == WEIR_REDIS_OFF || R.state == WEIR_REDIS_WAITING) return;
    R.ac = NULL;
    R.state = WEIR_REDIS_WAITING;
    R.stats.failures++;
    /* with R.ac NULL, the callbacks hiredis runs now (no reply) cannot send */
    if (ac != NULL && free_ac) redisAsyncFree(ac);
    if (!R.down) {
        R.down = 1;
        R.down_since_ms = uv_now(R.loop);
        weir_log(WEIR_LOG_WARN, "redis unreachable: shared limits decide on this host alone or refuse, "
                 "as their tier says", "\"redis\":\"%s\",\"state\":\"%s\",\"error\":\"%s\"", R.name,
                 weir_redis_state_names[was], weir_log_str(e, sizeof(e), why ? why : "unknown"));
        weir_redis_tell(0);
    }
    unsigned b = R.backoff_ms ? R.backoff_ms : WEIR_REDIS_BACKOFF_MIN;
    R.backoff_ms = WEIR_MIN(b * 2, (unsigned) WEIR_REDIS_BACKOFF_MAX);
    uint64_t jitter = uv_hrtime() % (b / 2 + 1);          /* ±25 % */
    uv_timer_start(&R.retry, weir_redis_retry_cb, b - b / 4 + jitter, 0);
    weir_redis_arm();
}

static void
weir_redis_ready_now(void)
{
    R.state = WEIR_REDIS_READY;
    R.backoff_ms = 0;
    R.stats.connects++;
    if (R.down) {
        weir_log(WEIR_LOG_INFO, "redis reachable again: shared limits synchronise again",
                 "\"redis\":\"%s\",\"down_ms\":%llu", R.name,
                 (unsigned long long) (uv_now(R.loop) - R.down_since_ms));
    } else if (!R.ever_ready) {
        weir_log(WEIR_LOG_INFO, "redis connected", "\"redis\":\"%s\"", R.name);
    }
    R.down = 0;
    R.ever_ready = 1;
    weir_redis_tell(1);
}

static void
weir_redis_timer_cb(uv_timer_t *t)
{
    char why[96];
    uint64_t now = uv_now(t->loop);
    if ((R.state == WEIR_REDIS_CONNECTING || R.state == WEIR_REDIS_HANDSHAKE) && now >= R.connect_deadline_ms) {
        snprintf(why, sizeof(why), "not %s within %llu ms",
                 R.state == WEIR_REDIS_CONNECTING ? "connected" : "ready", (unsigned long long) R.timeout_ms);
        weir_redis_fail(why, 1);
        return;
    }
    if (R.head != NULL && now >= R.head->deadline_ms) {
        R.stats.timeouts++;
        snprintf(why, sizeof(why), "no answer within %llu ms", (unsigned long long) R.timeout_ms);
        weir_redis_fail(why, 1);
        return;
    }
    weir_redis_arm();
}

/* ---- sending ---------------------------------------------------------------- */

/* Write a command on the connection (READY, or HANDSHAKE for its own). */
static int
weir_redis_send(weir_redis_cb cb, void *data, int argc, const char **argv, const size_t *lens)
{
    if (R.ac == NULL || R.out >= WEIR_REDIS_MAX_OUT) {
        R.stats.declined++;
        return WEIR_DECLINED;
    }
    weir_redis_req_t *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        R.stats.declined++;
        return WEIR_DECLINED;
    }
    q->cb = cb;
    q->data = data;
    q->deadline_ms = uv_now(R.loop) + R.timeout_ms;
    if (redisAsyncCommandArgv(R.ac, weir_redis_reply_cb, q, argc, argv, lens) != REDIS_OK) {
        free(q);
        R.stats.declined++;
        return WEIR_DECLINED;
    }
    q->prev = R.tail;
    if (R.tail) R.tail->next = q;
    else R.head = q;
    R.tail = q;
    R.out++;
    R.stats.commands++;
    if (q == R.head) weir_redis_arm();
    return WEIR_OK;
}

static void weir_redis_load_scripts(int handshake);

/* Every answer comes here first: the command is taken off the list. */
static void
weir_redis_reply_cb(redisAsyncContext *c, void *reply, void *privdata)
{
    weir_redis_req_t *q = privdata;
    redisReply *r = reply;
    WEIR_UNUSED(c);
    if (q->prev) q->prev->next = q->next;
    else R.head = q->next;
    if (q->next) q->next->prev = q->prev;
    else R.tail = q->prev;
    R.out--;
    if (r == NULL) R.stats.unanswered++;
    if (r != NULL && r->type == REDIS_REPLY_ERROR && r->str != NULL && strncmp(r->str, "NOSCRIPT", 8) == 0
        && R.state == WEIR_REDIS_READY)
        weir_redis_load_scripts(0);
    q->cb(q->data, r);
    free(q);
    if (R.state != WEIR_REDIS_OFF) weir_redis_arm();
}

/* ---- connecting ----------------------------------------------------------- */

static void
weir_redis_handshake_cb(void *data, redisReply *r)
{
    char why[256];
    WEIR_UNUSED(data);
    if (R.state != WEIR_REDIS_HANDSHAKE) return;       /* already failed */
    if (r == NULL) return;                              /* the failure that came with it says why */
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(why, sizeof(why), "refused: %.200s", r->str ? r->str : "?");
        weir_redis_fail(why, 1);
        return;
    }
    if (--R.handshake_left == 0) weir_redis_ready_now();
}

static void
weir_redis_script_loaded_cb(void *data, redisReply *r)
{
    WEIR_UNUSED(data);
    WEIR_UNUSED(r);
}

/* One command of the handshake: counted even when it cannot be written
 * (then it is never answered, and the handshake's deadline fails it). */
static void
weir_redis_handshake_send(int argc, const char **argv, const size_t *lens)
{
    R.handshake_left++;
    weir_redis_send(weir_redis_handshake_cb, NULL, argc, argv, lens);
}

/* SCRIPT LOAD every script, for the handshake (HANDSHAKE) or again. */
static void
weir_redis_load_scripts(int handshake)
{
    for (int i = 0; i < R.nscripts; i++) {
        const char *argv[3] = { "SCRIPT", "LOAD", R.scripts[i]->src };
        size_t lens[3] = { 6, 4, strlen(R.scripts[i]->src) };
        if (handshake) weir_redis_handshake_send(3, argv, lens);
        else weir_redis_send(weir_redis_script_loaded_cb, NULL, 3, argv, lens);
    }
}

static void
weir_redis_connect_cb(const redisAsyncContext *c, int status)
{
    char db[16];
    if (c != R.ac) return;
    if (status != REDIS_OK) {
        /* hiredis frees the context when this returns */
        weir_redis_fail(c->errstr[0] ? c->errstr : "cannot connect", 0);
        return;
    }
    /* never dropped in here (hiredis goes on using the context after this
     * returns): a handshake that cannot be written fails by its deadline */
    R.state = WEIR_REDIS_HANDSHAKE;
    R.connect_deadline_ms = uv_now(R.loop) + R.timeout_ms;
    R.handshake_left = 0;
    if (R.password != NULL) {
        const char *argv[3] = { "AUTH", R.user ? R.user : R.password, R.password };
        size_t lens[3] = { 4, strlen(argv[1]), strlen(R.password) };
        weir_redis_handshake_send(R.user ? 3 : 2, argv, lens);
    }
    if (R.db != 0) {
        snprintf(db, sizeof(db), "%u", R.db);
        const char *argv[2] = { "SELECT", db };
        size_t lens[2] = { 6, strlen(db) };
        weir_redis_handshake_send(2, argv, lens);
    }
    weir_redis_load_scripts(1);
    const char *ping[1] = { "PING" };
    size_t plen[1] = { 4 };
    weir_redis_handshake_send(1, ping, plen);
    weir_redis_arm();
}

static void
weir_redis_disconnect_cb(const redisAsyncContext *c, int status)
{
    WEIR_UNUSED(status);
    if (c != R.ac) return;                      /* dropped by weir_redis_fail */
    /* hiredis frees the context when this returns */
    weir_redis_fail(c->errstr[0] ? c->errstr : "connection closed", 0);
}

static void
weir_redis_retry_cb(uv_timer_t *t)
{
    WEIR_UNUSED(t);
    weir_redis_connect();
}

static void
weir_redis_connect(void)
{
    if (R.state != WEIR_REDIS_WAITING) return;
    redisAsyncContext *ac = redisAsyncConnect(R.ip, R.port);
    if (ac == NULL) {
        R.state = WEIR_REDIS_CONNECTING;
        weir_redis_fail("out of memory", 0);
        return;
    }
    if (ac->err) {
        char why[256];
        snprintf(why, sizeof(why), "%s", ac->errstr);
        redisAsyncFree(ac);
        R.state = WEIR_REDIS_CONNECTING;
        weir_redis_fail(why, 0);
        return;
    }
    if (redisLibuvAttach(ac, R.loop) != REDIS_OK) {
        redisAsyncFree(ac);
        R.state = WEIR_REDIS_CONNECTING;
        weir_redis_fail("cannot watch the connection", 0);
        return;
    }
    ac->data = NULL;
    redisAsyncSetConnectCallback(ac, weir_redis_connect_cb);
    redisAsyncSetDisconnectCallback(ac, weir_redis_disconnect_cb);
    R.ac = ac;
    R.state = WEIR_REDIS_CONNECTING;
    R.connect_deadline_ms = uv_now(R.loop) + R.timeout_ms;
    weir_redis_arm();
}

/* ---- the interface ---------------------------------------------------------- */

int
weir_redis_init(uv_loop_t *loop, const weir_state_conf_t *conf)
{
    if (conf->redis_url == NULL) return WEIR_OK;
    const struct sockaddr *sa = (const struct sockaddr *) &conf->redis_addr;
    R.loop = loop;
    R.timeout_ms = conf->timeout_ms;
    R.db = conf->redis_db;
    R.name = strdup(conf->redis_name);
    R.user = conf->redis_user ? strdup(conf->redis_user) : NULL;
    R.password = conf->redis_password ? strdup(conf->redis_password) : NULL;
    if (R.name == NULL || (conf->redis_user && !R.user) || (conf->redis_password && !R.password)) {
        free(R.name);
        free(R.user);
        free(R.password);
        R.name = R.user = R.password = NULL;
        return WEIR_ERROR;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *) sa;
        inet_ntop(AF_INET6, &a->sin6_addr, R.ip, sizeof(R.ip));
        R.port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *) sa;
        inet_ntop(AF_INET, &a->sin_addr, R.ip, sizeof(R.ip));
        R.port = ntohs(a->sin_port);
    }
    uv_timer_init(loop, &R.timer);
    uv_timer_init(loop, &R.retry);
    R.stats.configured = 1;
    R.state = WEIR_REDIS_WAITING;
    weir_redis_connect();
    return WEIR_OK;
}

void
weir_redis_cleanup(void)
{
    if (R.state == WEIR_REDIS_OFF) return;
    redisAsyncContext *ac = R.ac;
    R.ac = NULL;
    R.state = WEIR_REDIS_OFF;
    if (ac != NULL) redisAsyncFree(ac);             /* the commands out get no reply */
    uv_close((uv_handle_t *) &R.timer, NULL);
    uv_close((uv_handle_t *) &R.retry, NULL);
    free(R.name);
    free(R.user);
    if (R.password != NULL) {
        OPENSSL_cleanse(R.password, strlen(R.password));
        free(R.password);
    }
    R.name = R.user = R.password = NULL;
}

int
weir_redis_ready(void)
{
    return R.state == WEIR_REDIS_READY;
}

int
weir_redis_script(weir_redis_script_t *s)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    if (R.nscripts == WEIR_REDIS_MAX_SCRIPTS) return WEIR_ERROR;
    if (!EVP_Digest(s->src, strlen(s->src), md, &len, EVP_sha1(), NULL) || len != 20) return WEIR_ERROR;
    for (unsigned i = 0; i < 20; i++) snprintf(s->sha + 2 * i, 3, "%02x", md[i]);
    R.scripts[R.nscripts++] = s;
    if (R.state == WEIR_REDIS_READY) weir_redis_load_scripts(0);
    return WEIR_OK;
}

int
weir_redis_command(weir_redis_cb cb, void *data, int argc, const char **argv, const size_t *lens)
{
    if (R.state != WEIR_REDIS_READY) {
        if (R.state != WEIR_REDIS_OFF) R.stats.declined++;
        return WEIR_DECLINED;
    }
    return weir_redis_send(cb, data, argc, argv, lens);
}

int
weir_redis_eval(const weir_redis_script_t *s, weir_redis_cb cb, void *data, int nkeys, int argc,
                const char **argv, const size_t *lens)
{
    const char *av[WEIR_REDIS_MAX_ARGS + 3];
    size_t      al[WEIR_REDIS_MAX_ARGS + 3];
    char        nk[16];
    if (argc < 0 || argc > WEIR_REDIS_MAX_ARGS) return WEIR_DECLINED;
    snprintf(nk, sizeof(nk), "%d", nkeys);
    av[0] = "EVALSHA";
    al[0] = 7;
    av[1] = s->sha;
    al[1] = 40;
    av[2] = nk;
    al[2] = strlen(nk);
    for (int i = 0; i < argc; i++) {
        av[i + 3] = argv[i];
        al[i + 3] = lens[i];
    }
    return weir_redis_command(cb, data, argc + 3, av, al);
}

void
weir_redis_watch(void (*fn)(int ready))
{
    if (R.nwatchers < WEIR_REDIS_MAX_WATCHERS) R.watchers[R.nwatchers++] = fn;
}

void
weir_redis_stats(weir_redis_stats_t *st)
{
    *st = R.stats;
    st->ready = R.state == WEIR_REDIS_READY;
    st->down = R.down;
}
