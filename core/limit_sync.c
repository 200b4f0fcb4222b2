/*
 * limit_sync.c — the shared limits and connection counts of this worker's
 * sessions, kept in step with the other hosts through Redis (see
 * limit_sync.h; the accuracy: docs/throttling.md).
 *
 * An entry per bucket (or connection key) some session of this worker
 * holds: a table by the key's hash, and a list the tick walks. Each tick
 * (state.sync_interval) an entry whose turn has come (limit.c decides, so
 * that one worker of the host syncs a bucket per interval) sends one
 * EVALSHA; at most one is out per entry. The answers move the host's
 * bucket forward (weir_limit_share_apply) or set the other hosts' count
 * of a connection key (weir_conn_share_remote).
 *
 * While Redis is down, takes keep going to the host's buckets; what they
 * took is forgotten at each tick instead of reported (when Redis comes
 * back, the hosts start again from what they take then), and the other
 * hosts' connection counts are taken as 0. Limits whose tier says
 * on_redis_down = "closed" refuse in limit.c meanwhile.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limit_sync.h"
#include "log.h"
#include "redis.h"
#include "weir.h"

#define WEIR_SYNC_IDLE_FACTOR   10      /* an entry not in use syncs this many times less often */
#define WEIR_SYNC_CONN_TTL_MIN  3000    /* ms a host's connection count stays in Redis unrefreshed */

enum { WEIR_SYNC_LIMIT = 0, WEIR_SYNC_CONN = 1 };

typedef struct weir_sync_entry_s {
    struct weir_sync_entry_s *hnext;          /* in the table's chain */
    struct weir_sync_entry_s *prev, *next;    /* in the list */
    int                       kind;           /* WEIR_SYNC_LIMIT / CONN */
    uint64_t                  key[2];         /* the hash: the entry's identity */
    weir_limit_ref_t          ref;            /* LIMIT: the bucket */
    uint32_t                  slot;           /* CONN: the slot as last seen */
    uint64_t                  users;          /* sessions (refs, counts) of this worker holding it */
    unsigned                  out:1;          /* a sync is out */
    unsigned                  last:1;         /* users went to 0: one last report, then freed */
    size_t                    rlen;
    char                      rkey[];         /* the Redis key */
} weir_sync_entry_t;

/*
 * The limit's state in Redis: one GCRA theoretical arrival time, in
 * microseconds of Redis's clock, that every host's takes move forward
 * (never refused there: each host decided already). A report's tokens were
 * taken over the SINCE_US before it: they are charged as if taken at its
 * start, tat = max(tat, now - since) + tokens × period / count, which is
 * never more than taking them one by one would have made it (charging
 * them at `now` would forget the refill while they were taken). Answers
 * the debt, tat - now, in whole microseconds (rounded up; 0 when full),
 * which each host adds to its own bucket.
 * KEYS[1] the limit; ARGV: tokens taken, period_us, count, since_us.
 */
static weir_redis_script_t weir_sync_limit_script = { .src =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1])) or 0\n"
    "local from = now - tonumber(ARGV[4])\n"
    "if tat < from then tat = from end\n"
    "local n = tonumber(ARGV[1])\n"
    "if n > 0 then\n"
    "  tat = tat + n * tonumber(ARGV[2]) / tonumber(ARGV[3])\n"
    "  redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.floor((tat - now) / 1000) + 1000)\n"
    "end\n"
    "if tat < now then return 0 end\n"
    "return math.ceil(tat - now)\n" };

/*
 * A connection key's counts: a hash of host → "count:expiry_ms". Sets this
 * host's count (removes it at 0), drops expired hosts, answers the sum of
 * the others'. KEYS[1] the key; ARGV: host id, count, ttl_ms.
 */
static weir_redis_script_t weir_sync_conn_script = { .src =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local others = 0\n"
    "local all = redis.call('HGETALL', KEYS[1])\n"
    "for i = 1, #all, 2 do\n"
    "  if all[i] ~= ARGV[1] then\n"
    "    local c, exp = string.match(all[i + 1], '^(%d+):(%d+)$')\n"
    "    if c and tonumber(exp) > now then others = others + tonumber(c)\n"
    "    else redis.call('HDEL', KEYS[1], all[i]) end\n"
    "  end\n"
    "end\n"
    "local ttl = tonumber(ARGV[3])\n"
    "if tonumber(ARGV[2]) > 0 then\n"
    "  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. (now + ttl))\n"
    "  redis.call('PEXPIRE', KEYS[1], ttl)\n"
    "else\n"
    "  redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "end\n"
    "return others\n" };

/* What the sync did, for this worker (weir.limits.sync_stats). */
typedef struct {
    uint64_t entries;      /* buckets and keys held now */
    uint64_t syncs;        /* reports sent */
    uint64_t answers;      /* answered */
    uint64_t failed;       /* not answered, or an error */
    uint64_t forgiven;     /* tokens taken while Redis was down, not reported */
} weir_sync_stats_t;

static struct {
    int                 on;               /* state.redis is set */
    uv_loop_t          *loop;
    uv_timer_t          tick;
    weir_sync_entry_t **table;            /* chains by key[0] */
    size_t              nbuckets;         /* power of two */
    weir_sync_entry_t  *head;
    uint64_t            active_us, idle_us, conn_ttl_ms;
    char               *prefix;
    weir_sync_stats_t   stats;
} S;

/* ---- the entries ---------------------------------------------------------- */

static weir_sync_entry_t *
weir_sync_find(int kind, const uint64_t key[2])
{
    if (S.table == NULL) return NULL;
    for (weir_sync_entry_t *e = S.table[key[0] & (S.nbuckets - 1)]; e != NULL; e = e->hnext)
        if (e->kind == kind && e->key[0] == key[0] && e->key[1] == key[1]) return e;
    return NULL;
}

static int
weir_sync_grow(void)
{
    size_t n = S.nbuckets ? S.nbuckets * 2 : 256;
    weir_sync_entry_t **t = calloc(n, sizeof(*t));
    if (t == NULL) return WEIR_ERROR;
    for (weir_sync_entry_t *e = S.head; e != NULL; e = e->next) {
        size_t b = e->key[0] & (n - 1);
        e->hnext = t[b];
        t[b] = e;
    }
    free(S.table);
    S.table = t;
    S.nbuckets = n;
    return WEIR_OK;
}

/* A new entry for KIND and KEY, named RKEY[0..RLEN) in Redis; NULL when out of memory. */
static weir_sync_entry_t *
weir_sync_add(int kind, const uint64_t key[2], const char *rkey, size_t rlen)
{
    if (S.stats.entries >= S.nbuckets && weir_sync_grow() != WEIR_OK) return NULL;
    weir_sync_entry_t *e = calloc(1, sizeof(*e) + rlen + 1);
    if (e == NULL) return NULL;
    e->kind = kind;
    e->key[0] = key[0];
    e->key[1] = key[1];
    memcpy(e->rkey, rkey, rlen);
    e->rlen = rlen;
    size_t b = key[0] & (S.nbuckets - 1);
    e->hnext = S.table[b];
    S.table[b] = e;
    e->next = S.head;
    if (S.head) S.head->prev = e;
    S.head = e;
    S.stats.entries++;
    return e;
}

static void
weir_sync_free(weir_sync_entry_t *e)
{
    weir_sync_entry_t **p = &S.table[e->key[0] & (S.nbuckets - 1)];
    while (*p != e) p = &(*p)->hnext;
    *p = e->hnext;
    if (e->prev) e->prev->next = e->next;
    else S.head = e->next;
    if (e->next) e->next->prev = e->prev;
    S.stats.entries--;
    free(e);
}

/* ---- syncing ---------------------------------------------------------------- */

static void
weir_sync_answer(void *data, redisReply *r)
{
    weir_sync_entry_t *e = data;
    e->out = 0;
    if (r == NULL || r->type != REDIS_REPLY_INTEGER || r->integer < 0) {
        S.stats.failed++;
    } else {
        S.stats.answers++;
        if (e->kind == WEIR_SYNC_LIMIT) weir_limit_share_apply(&e->ref, (uint64_t) r->integer, weir_limits_now_us());
        else weir_conn_share_remote(e->key, e->slot, (uint64_t) r->integer);
    }
    if (e->last) weir_sync_free(e);
}

/*
 * Report E now if its turn has come (FORCE: now in any case, for a last
 * report). Returns 1 when a report was sent, 0 otherwise.
 */
static int
weir_sync_entry(weir_sync_entry_t *e, uint64_t now_us, int force)
{
    char        a1[24], a2[24], a3[24], a4[24];
    const char *argv[5];
    size_t      lens[5];
    uint64_t    taken = 0, since = S.idle_us;
    int         due, argc = 4;

    if (e->out) return 0;
    if (e->kind == WEIR_SYNC_LIMIT) {
        due = weir_limit_share_turn(&e->ref, now_us, S.active_us, S.idle_us, &since);
        if (!due && !force) return 0;
        taken = weir_limit_share_pending(&e->ref);
        if (!weir_redis_ready()) {
            S.stats.forgiven += taken;          /* Redis is down: the host decided alone */
            return 0;
        }
        snprintf(a1, sizeof(a1), "%" PRIu64, taken);
        snprintf(a2, sizeof(a2), "%" PRIu64, e->ref.period_us);
        snprintf(a3, sizeof(a3), "%" PRIu64, e->ref.count);
        snprintf(a4, sizeof(a4), "%" PRIu64, WEIR_MIN(since, e->ref.period_us));
        argv[1] = a1;
        argv[2] = a2;
        argv[3] = a3;
        argv[4] = a4;
        argc = 5;
    } else {
        uint64_t count;
        due = weir_conn_share_turn(e->key, &e->slot, now_us, S.active_us, S.idle_us, &count);
        if ((!due && !force) || !weir_redis_ready()) return 0;
        snprintf(a2, sizeof(a2), "%" PRIu64, count);
        snprintf(a3, sizeof(a3), "%" PRIu64, S.conn_ttl_ms);
        argv[1] = weir_limits_host_id();
        argv[2] = a2;
        argv[3] = a3;
    }
    argv[0] = e->rkey;
    for (int i = 0; i < argc; i++) lens[i] = i == 0 ? e->rlen : strlen(argv[i]);
    const weir_redis_script_t *s = e->kind == WEIR_SYNC_LIMIT ? &weir_sync_limit_script : &weir_sync_conn_script;
    if (weir_redis_eval(s, weir_sync_answer, e, 1, argc, argv, lens) != WEIR_OK) {
        /* not sent (too many out): the tokens wait for the next report */
        if (e->kind == WEIR_SYNC_LIMIT) weir_limit_share_unpend(&e->ref, taken);
        S.stats.failed++;
        return 0;
    }
    e->out = 1;
    S.stats.syncs++;
    return 1;
}

/* Report every entry whose turn has come (FORCE: every entry), and the last
 * report of those no session holds any more. */
static void
weir_sync_pass(int force)
{
    uint64_t now = weir_limits_now_us();
    for (weir_sync_entry_t *e = S.head, *next; e != NULL; e = next) {
        next = e->next;
        if (e->users > 0 || e->out) {
            weir_sync_entry(e, now, force);
        } else if (!weir_sync_entry(e, now, 1)) {
            weir_sync_free(e);                  /* nothing left to report, or nowhere to report it */
        } else {
            e->last = 1;                        /* freed by its answer */
        }
    }
}

static void
weir_sync_tick(uv_timer_t *t)
{
    WEIR_UNUSED(t);
    weir_sync_pass(0);
}

/* Redis went down or came back. */
static void
weir_sync_watch(int ready)
{
    weir_limits_set_down(!ready);
    if (ready) {
        weir_sync_pass(1);                      /* everything in use reports at once, turn or not */
        return;
    }
    /* fail open for connections: the other hosts' counts are unknown */
    for (weir_sync_entry_t *e = S.head; e != NULL; e = e->next)
        if (e->kind == WEIR_SYNC_CONN) weir_conn_share_remote(e->key, e->slot, 0);
}

/* ---- the interface ---------------------------------------------------------- */

int
weir_sync_init(uv_loop_t *loop, const weir_conf_t *conf)
{
    const weir_state_conf_t *st = &conf->state;
    if (st->redis_url == NULL) return WEIR_OK;
    S.loop = loop;
    S.active_us = st->sync_interval_ms * 1000;
    S.idle_us = S.active_us * WEIR_SYNC_IDLE_FACTOR;
    S.conn_ttl_ms = WEIR_MAX(5 * S.idle_us / 1000, (uint64_t) WEIR_SYNC_CONN_TTL_MIN);
    S.prefix = strdup(st->key_prefix);
    if (S.prefix == NULL || weir_sync_grow() != WEIR_OK) return WEIR_ERROR;
    if (weir_redis_script(&weir_sync_limit_script) != WEIR_OK || weir_redis_script(&weir_sync_conn_script) != WEIR_OK)
        return WEIR_ERROR;
    weir_redis_watch(weir_sync_watch);
    if (weir_redis_init(loop, st) != WEIR_OK) return WEIR_ERROR;
    uv_timer_init(loop, &S.tick);
    uv_timer_start(&S.tick, weir_sync_tick, st->sync_interval_ms, st->sync_interval_ms);
    S.on = 1;
    return WEIR_OK;
}

void
weir_sync_cleanup(void)
{
    weir_redis_cleanup();                       /* the syncs out are answered (with nothing) first */
    if (S.on) {
        uv_close((uv_handle_t *) &S.tick, NULL); /* the loop holds the handle until it has closed */
        while (S.head != NULL) weir_sync_free(S.head);
    }
    free(S.table);                              /* also what a failed start-up made */
    free(S.prefix);
    S.table = NULL;
    S.prefix = NULL;
    S.nbuckets = 0;
    S.on = 0;
}

void
weir_sync_hold(weir_limit_ref_t *ref, const char *key, size_t len)
{
    if (ref->share == WEIR_LIMIT_LOCAL || ref->index == UINT32_MAX) return;
    if (!S.on) {
        ref->share = WEIR_LIMIT_LOCAL;
        return;
    }
    weir_sync_entry_t *e = weir_sync_find(WEIR_SYNC_LIMIT, ref->key);
    if (e == NULL) {
        /* PREFIX limit:COUNT:PERIOD_US:f|b:KEY — what fixes the bucket's units, as the hash */
        char head[96];
        int hl = snprintf(head, sizeof(head), "limit:%" PRIu64 ":%" PRIu64 ":%c:", ref->count, ref->period_us,
                          ref->unit == WEIR_LIMIT_BYTES ? 'b' : 'f');
        size_t pl = strlen(S.prefix), rl = pl + (size_t) hl + len;
        char *rkey = malloc(rl);
        if (rkey != NULL) {
            memcpy(rkey, S.prefix, pl);
            memcpy(rkey + pl, head, (size_t) hl);
            memcpy(rkey + pl + (size_t) hl, key, len);
            e = weir_sync_add(WEIR_SYNC_LIMIT, ref->key, rkey, rl);
            free(rkey);
        }
        if (e == NULL) {
            ref->share = WEIR_LIMIT_LOCAL;      /* out of memory: this host alone */
            return;
        }
        e->ref = *ref;
        e->users = 1;
        weir_sync_entry(e, weir_limits_now_us(), 0);   /* learn the hosts' debt at once */
        return;
    }
    e->users++;
    e->last = 0;
}

void
weir_sync_release(const weir_limit_ref_t *ref)
{
    if (!S.on || ref->share == WEIR_LIMIT_LOCAL) return;
    weir_sync_entry_t *e = weir_sync_find(WEIR_SYNC_LIMIT, ref->key);
    if (e != NULL && e->users > 0) e->users--;
}

int
weir_sync_conn_acquire(weir_conn_ref_t *ref, const char *key, size_t len, uint64_t max)
{
    int rc = weir_conn_acquire(ref, key, len, max);
    if (rc != WEIR_OK || !S.on) return rc;
    weir_sync_entry_t *e = weir_sync_find(WEIR_SYNC_CONN, ref->key);
    if (e == NULL) {
        size_t pl = strlen(S.prefix), rl = pl + 5 + len;
        char *rkey = malloc(rl);
        if (rkey != NULL) {
            memcpy(rkey, S.prefix, pl);
            memcpy(rkey + pl, "conn:", 5);
            memcpy(rkey + pl + 5, key, len);
            e = weir_sync_add(WEIR_SYNC_CONN, ref->key, rkey, rl);
            free(rkey);
        }
        if (e == NULL) return rc;               /* counted on this host alone */
        e->slot = ref->index;
    }
    e->users++;
    e->last = 0;
    ref->shared = 1;
    weir_sync_entry(e, weir_limits_now_us(), 0);
    return rc;
}

void
weir_sync_conn_release(weir_conn_ref_t *ref)
{
    if (ref->shared && S.on && ref->index != UINT32_MAX) {
        weir_sync_entry_t *e = weir_sync_find(WEIR_SYNC_CONN, ref->key);
        if (e != NULL && e->users > 0) e->users--;
    }
    ref->shared = 0;
    weir_conn_release(ref);
}

/* ---- for the runtime (LuaJIT FFI: lua/weir/limits.lua) -------------------------- */

int
weir_ffi_sync_conn_acquire(weir_conn_ref_t *ref, const char *key, size_t len, uint64_t max)
{
    return weir_sync_conn_acquire(ref, key, len, max);
}

void
weir_ffi_sync_conn_release(weir_conn_ref_t *ref)
{
    weir_sync_conn_release(ref);
}

/* This worker's sync and Redis counters: OUT[0..11) = entries, syncs,
 * answers, failed, forgiven, redis configured, ready, down, connects,
 * failures, timeouts. */
void
weir_ffi_sync_stats(uint64_t *out)
{
    weir_redis_stats_t r;
    weir_redis_stats(&r);
    uint64_t v[11] = { S.stats.entries, S.stats.syncs, S.stats.answers, S.stats.failed, S.stats.forgiven,
                       (uint64_t) r.configured, (uint64_t) r.ready, (uint64_t) r.down, r.connects, r.failures,
                       r.timeouts };
    memcpy(out, v, sizeof(v));
}
