/*
 * limit.c — the host's rate-limit buckets and connection counts (see
 * limit.h; the algorithm and its accuracy: docs/throttling.md).
 *
 * The zone is one mapping: a header (the claim lock, the hash salt,
 * counters), the bucket table, the connection-slot table, and each
 * worker's share of every slot's count (WORKERS × SLOTS counters).
 *
 * A bucket's state is one word, `tat`, in units of its limit (1/2^frac of a
 * token). A take reads it, checks the bucket still holds its key, and
 * compare-and-swaps the new value in. A claim (under the lock) hands a
 * bucket to another key in three steps: swap `tat` to WEIR_TAT_LOCKED,
 * write the key, store a fresh `tat` (release). A take that read `tat`
 * before the handover then fails its swap, because the fresh value differs
 * from what it read; one that reads it after sees the new key, and claims a
 * bucket of its own.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "limit.h"
#include "log.h"
#include "weir.h"

#define WEIR_TAT_LOCKED UINT64_MAX      /* the bucket is being handed to another key */
#define WEIR_NO_INDEX   UINT32_MAX      /* a local ref; a released connection ref */
#define WEIR_SALT_LEN   32

typedef struct {
    uint64_t tat;            /* units of the owner's limit; WEIR_TAT_LOCKED during a handover */
    uint64_t key[2];         /* (0,0): empty */
    uint64_t mul;            /* the owner's ref.mul and ref.shift, so that a claim can */
    uint64_t last_us;        /*   tell "full again"; last take (allowed or refused) or claim: LRU */
    uint64_t pending;        /* tokens shared refs took, not yet reported to Redis */
    uint64_t sync_us;        /* when a worker of this host last took its sync turn */
    uint8_t  shift;
    uint8_t  pad[7];
} __attribute__((aligned(64))) weir_bucket_t;

typedef struct {
    uint64_t key[2];         /* (0,0): never used */
    int64_t  count;          /* this host's connections open; a slot at 0 may change key */
    uint64_t remote;         /* other hosts' connections, as last synced (0 when not shared) */
    uint64_t sync_us;        /* when a worker of this host last took its sync turn */
    uint64_t reported;       /* the count that turn reported */
    uint64_t pad[2];
} __attribute__((aligned(64))) weir_conn_slot_t;

typedef struct {
    pthread_mutex_t lock;            /* process-shared, robust: claims and acquires */
    uint8_t         salt[WEIR_SALT_LEN];
    uint64_t        nbuckets;        /* powers of two */
    uint64_t        nslots;
    uint64_t        gen;             /* handovers so far (under the lock): fresh tat values */
    uint64_t        claims;          /* the counters are read without the lock: atomics */
    uint64_t        evictions_full;
    uint64_t        evictions_live;
    uint64_t        conn_table_full;
    uint64_t        conn_reclaimed;
    uint64_t        shared_refused;
    uint64_t        nworkers;        /* workers whose shares are kept (rows of `held`) */
    char            host_id[17];
    size_t          size;            /* bytes mapped */
} weir_limits_zone_t;

static weir_limits_zone_t *weir_lz;
static weir_bucket_t      *weir_lb;
static weir_conn_slot_t   *weir_lc;
static uint32_t           *weir_held;        /* [worker * nslots + slot]: that worker's share of the count */
static int                 weir_worker_id = -1;
static int                 weir_shared_down; /* this process: Redis cannot be reached */

#define WEIR_HDR_SIZE ((sizeof(weir_limits_zone_t) + 63) & ~(size_t) 63)

/* ---- the zone -------------------------------------------------------------- */

static uint64_t
weir_pow2(size_t n, size_t dflt)
{
    uint64_t v = n ? n : dflt, p = 1;
    while (p < v) p <<= 1;
    return p;
}

int
weir_limits_init(size_t buckets, size_t conn_slots, int workers)
{
    if (weir_lz != NULL) return WEIR_OK;
    uint64_t nb = weir_pow2(buckets, WEIR_LIMIT_BUCKETS), ns = weir_pow2(conn_slots, WEIR_LIMIT_CONN_SLOTS);
    if (nb > WEIR_NO_INDEX / 2 || ns > WEIR_NO_INDEX / 2 || workers < 0 || workers > WEIR_LIMIT_MAX_WORKERS) {
        weir_log(WEIR_LOG_ERROR, "cannot map the limits zone", "\"error\":\"too many buckets, slots or workers\"");
        return WEIR_ERROR;
    }
    size_t size = WEIR_HDR_SIZE + nb * sizeof(weir_bucket_t) + ns * sizeof(weir_conn_slot_t)
                  + (size_t) workers * ns * sizeof(uint32_t);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        weir_log(WEIR_LOG_ERROR, "cannot map the limits zone", "\"error\":\"%s\",\"bytes\":%zu",
                 strerror(errno), size);
        return WEIR_ERROR;
    }
    weir_limits_zone_t *z = p;          /* anonymous memory comes zeroed: every bucket empty */
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&z->lock, &a);
    pthread_mutexattr_destroy(&a);
    const char *why = rc != 0 ? strerror(rc) : NULL;
    uint8_t id[8];
    if (why == NULL && (RAND_bytes(z->salt, WEIR_SALT_LEN) != 1 || RAND_bytes(id, sizeof(id)) != 1))
        why = "no random bytes for the key salt";
    if (why != NULL) {
        weir_log(WEIR_LOG_ERROR, "cannot map the limits zone", "\"error\":\"%s\"", why);
        munmap(p, size);
        return WEIR_ERROR;
    }
    z->nbuckets = nb;
    z->nslots = ns;
    z->nworkers = (uint64_t) workers;
    z->size = size;
    for (int i = 0; i < 8; i++) snprintf(z->host_id + 2 * i, 3, "%02x", id[i]);
    weir_lz = z;
    weir_lb = (weir_bucket_t *) ((char *) p + WEIR_HDR_SIZE);
    weir_lc = (weir_conn_slot_t *) (weir_lb + nb);
    weir_held = workers > 0 ? (uint32_t *) (weir_lc + ns) : NULL;
    return WEIR_OK;
}

void
weir_limits_worker(int id)
{
    weir_worker_id = id;
}

const char *
weir_limits_host_id(void)
{
    return weir_lz != NULL ? weir_lz->host_id : "";
}

void
weir_limits_cleanup(void)
{
    if (weir_lz == NULL) return;
    munmap(weir_lz, weir_lz->size);
    weir_lz = NULL;
    weir_lb = NULL;
    weir_lc = NULL;
    weir_held = NULL;
}

uint64_t
weir_limits_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static void
weir_limits_lock(void)
{
    if (pthread_mutex_lock(&weir_lz->lock) == EOWNERDEAD) {
        /* a process died holding the lock, perhaps in the middle of a
         * handover: a bucket it left locked becomes empty (its refs claim
         * again); everything else is written whole before it is published */
        for (uint64_t i = 0; i < weir_lz->nbuckets; i++) {
            weir_bucket_t *b = &weir_lb[i];
            if (__atomic_load_n(&b->tat, __ATOMIC_ACQUIRE) != WEIR_TAT_LOCKED) continue;
            __atomic_store_n(&b->key[0], 0, __ATOMIC_RELAXED);
            __atomic_store_n(&b->key[1], 0, __ATOMIC_RELAXED);
            __atomic_store_n(&b->tat, 0, __ATOMIC_RELEASE);
        }
        pthread_mutex_consistent(&weir_lz->lock);
    }
}

static void
weir_limits_unlock(void)
{
    pthread_mutex_unlock(&weir_lz->lock);
}

static void
weir_count(uint64_t *counter)
{
    __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

/*
 * The first 128 bits of SHA-256(salt || KEY || TAG[0..TLEN)): keys an
 * attacker chooses (a client address) cannot be aimed at one probe window.
 * Never (0,0).
 */
static int
weir_limit_hash(const char *key, size_t len, const void *tag, size_t tlen, uint64_t out[2])
{
    uint8_t buf[WEIR_SALT_LEN + WEIR_LIMIT_KEY_MAX + 32], md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (len > WEIR_LIMIT_KEY_MAX || tlen > 32) return WEIR_ERROR;
    memcpy(buf, weir_lz->salt, WEIR_SALT_LEN);
    if (len) memcpy(buf + WEIR_SALT_LEN, key, len);
    if (tlen) memcpy(buf + WEIR_SALT_LEN + len, tag, tlen);
    if (!EVP_Digest(buf, WEIR_SALT_LEN + len + tlen, md, &mdlen, EVP_sha256(), NULL)) return WEIR_ERROR;
    memcpy(out, md, 2 * sizeof(uint64_t));
    if (out[0] == 0 && out[1] == 0) out[1] = 1;
    return WEIR_OK;
}

/* ---- units ------------------------------------------------------------------- */

/* NOW_US in a limit's units: floor(now_us * mul / 2^shift). */
static inline uint64_t
weir_units(uint64_t now_us, uint64_t mul, unsigned shift)
{
    return (uint64_t) (((unsigned __int128) now_us * mul) >> shift);
}

/* The first microsecond at which weir_units() reaches X. */
static inline uint64_t
weir_units_at(uint64_t x, uint64_t mul, unsigned shift)
{
    return (uint64_t) ((((unsigned __int128) x << shift) + mul - 1) / mul);
}

static int
weir_limit_fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen) snprintf(err, errlen, "%s", msg);
    return WEIR_ERROR;
}

/*
 * SPEC in bucket units. A token is 2^frac units, frac the least that makes a
 * unit at most a microsecond, so that converting the clock loses less than
 * a microsecond; costs and the burst are whole tokens, hence exact. The
 * clock in units is now_us * mul / 2^shift, mul holding at least 51
 * significant bits.
 */
static int
weir_limit_params(weir_limit_ref_t *r, const weir_limit_spec_t *sp, char *err, size_t errlen)
{
    uint64_t count = sp->count, period = sp->period_us, burst = sp->burst ? sp->burst : sp->count;
    if (count < 1) return weir_limit_fail(err, errlen, "a limit's count must be at least 1");
    if (period < 1 || period > WEIR_LIMIT_MAX_PERIOD_US)
        return weir_limit_fail(err, errlen, "a limit's period must be between 1 microsecond and 50 days");
    if (sp->unit != WEIR_LIMIT_FRAMES && sp->unit != WEIR_LIMIT_BYTES)
        return weir_limit_fail(err, errlen, "a limit counts frames or bytes");
    if (sp->dirs < WEIR_LIMIT_IN || sp->dirs > WEIR_LIMIT_BOTH)
        return weir_limit_fail(err, errlen, "a limit counts in, out or both directions");
    if ((unsigned __int128) count >= (unsigned __int128) WEIR_LIMIT_MAX_RATE * period)
        return weir_limit_fail(err, errlen, "a limit's rate must be below 4096 units a microsecond");
    unsigned frac = 0;
    while (((unsigned __int128) count << frac) < period) frac++;
    /* units per microsecond: k = count * 2^frac / period, in [1, 4096) */
    uint64_t k = (uint64_t) (((unsigned __int128) count << frac) / period);
    unsigned shift = 62 - (63 - __builtin_clzll(k));    /* k * 2^shift < 2^63 */
    if (frac >= 62 || (burst >> (62 - frac)) != 0)
        return weir_limit_fail(err, errlen, "a limit's burst is too large");
    /* rounded up: the clock may gain a fraction of a unit, never lose one,
     * so a bucket emptied at t is full again at t + period, exactly */
    unsigned __int128 scaled = (unsigned __int128) count << (frac + shift);
    r->mul = (uint64_t) ((scaled + period - 1) / period);
    r->shift = (uint8_t) shift;
    r->frac = (uint8_t) frac;
    r->tau = burst << frac;
    r->burst = burst;
    r->count = count;
    r->period_us = period;
    r->unit = (uint8_t) sp->unit;
    r->dirs = (uint8_t) sp->dirs;
    return WEIR_OK;
}

/* ---- buckets -------------------------------------------------------------- */

/* A full starting value for a bucket handed over from state T: at most
 * NOW_U (so the new key starts full) and unlike T (so a take that read T
 * before the handover fails its swap), and unlike the last 65,535
 * handovers' values, so two quick handovers cannot bring T back either. */
static uint64_t
weir_fresh_tat(uint64_t t, uint64_t now_u)
{
    uint64_t f = 1 + (weir_lz->gen++ & 0xffff);
    if (f > now_u) f = now_u;
    if (f == t && f > 0) f--;       /* at 0 (the clock's first microseconds) fullness comes first */
    return f;
}

/*
 * Find R's key in its probe window or give it a bucket: an empty one, else
 * one full again, else the least recently used. Sets R->index. Holds the lock.
 */
static void
weir_limit_claim(weir_limit_ref_t *r, uint64_t now_us)
{
    weir_limits_lock();
    uint64_t mask = weir_lz->nbuckets - 1, home = r->key[0] & mask;
    uint64_t probe = WEIR_MIN((uint64_t) WEIR_LIMIT_PROBE, weir_lz->nbuckets);
    int64_t empty = -1, full = -1, lru = -1;
    uint64_t lru_us = UINT64_MAX;
    for (uint64_t i = 0; i < probe; i++) {
        uint64_t idx = (home + i) & mask;
        weir_bucket_t *b = &weir_lb[idx];
        uint64_t t = __atomic_load_n(&b->tat, __ATOMIC_ACQUIRE);
        uint64_t k0 = __atomic_load_n(&b->key[0], __ATOMIC_RELAXED);
        uint64_t k1 = __atomic_load_n(&b->key[1], __ATOMIC_RELAXED);
        if (k0 == r->key[0] && k1 == r->key[1]) {
            r->index = (uint32_t) idx;
            weir_limits_unlock();
            return;
        }
        if (k0 == 0 && k1 == 0) {
            if (empty < 0) empty = (int64_t) idx;
            continue;
        }
        if (full < 0 && t <= weir_units(now_us, b->mul, b->shift)) full = (int64_t) idx;
        uint64_t last = __atomic_load_n(&b->last_us, __ATOMIC_RELAXED);
        if (lru < 0 || last < lru_us) {
            lru = (int64_t) idx;
            lru_us = last;
        }
    }
    int64_t pick = empty >= 0 ? empty : full >= 0 ? full : lru;
    weir_bucket_t *b = &weir_lb[pick];
    uint64_t t = __atomic_load_n(&b->tat, __ATOMIC_ACQUIRE);
    while (!__atomic_compare_exchange_n(&b->tat, &t, WEIR_TAT_LOCKED, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {}
    if (pick != empty) {
        /* judged on the state the handover swapped out */
        weir_count(t <= weir_units(now_us, b->mul, b->shift) ? &weir_lz->evictions_full
                                                              : &weir_lz->evictions_live);
    }
    __atomic_store_n(&b->key[0], r->key[0], __ATOMIC_RELAXED);
    __atomic_store_n(&b->key[1], r->key[1], __ATOMIC_RELAXED);
    b->mul = r->mul;
    b->shift = r->shift;
    __atomic_store_n(&b->pending, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&b->sync_us, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&b->last_us, now_us, __ATOMIC_RELAXED);
    __atomic_store_n(&b->tat, weir_fresh_tat(t, weir_units(now_us, r->mul, r->shift)), __ATOMIC_RELEASE);
    weir_count(&weir_lz->claims);
    r->index = (uint32_t) pick;
    weir_limits_unlock();
}

/* Whether bucket B holds R's key, given B's tat T read (acquire) before. */
static inline int
weir_bucket_holds(const weir_bucket_t *b, uint64_t t, const weir_limit_ref_t *r)
{
    return t != WEIR_TAT_LOCKED
        && __atomic_load_n(&b->key[0], __ATOMIC_RELAXED) == r->key[0]
        && __atomic_load_n(&b->key[1], __ATOMIC_RELAXED) == r->key[1];
}

/*
 * R's state word: *TP points at it, *T is its value. A bucket that no
 * longer holds R's key is found or claimed again first. Returns WEIR_OK, or
 * WEIR_ERROR when no bucket could be had (three handovers in a row lost).
 */
static int
weir_limit_load(weir_limit_ref_t *r, uint64_t now_us, uint64_t **tp, uint64_t *t)
{
    if (r->index == WEIR_NO_INDEX) {
        *tp = &r->local_tat;
        *t = r->local_tat;
        return WEIR_OK;
    }
    if (weir_lz == NULL) return WEIR_ERROR;
    for (int tries = 0; tries < 3; tries++) {
        if (r->index < weir_lz->nbuckets) {
            weir_bucket_t *b = &weir_lb[r->index];
            uint64_t v = __atomic_load_n(&b->tat, __ATOMIC_ACQUIRE);
            if (weir_bucket_holds(b, v, r)) {
                *tp = &b->tat;
                *t = v;
                return WEIR_OK;
            }
        }
        weir_limit_claim(r, now_us);
    }
    return WEIR_ERROR;
}

static inline void
weir_limit_touch(const weir_limit_ref_t *r, uint64_t now_us)
{
    if (r->index == WEIR_NO_INDEX) return;
    weir_bucket_t *b = &weir_lb[r->index];
    if (__atomic_load_n(&b->last_us, __ATOMIC_RELAXED) != now_us)
        __atomic_store_n(&b->last_us, now_us, __ATOMIC_RELAXED);
}

static inline uint64_t
weir_limit_cost(const weir_limit_ref_t *r, uint64_t frames, uint64_t bytes)
{
    return r->unit == WEIR_LIMIT_BYTES ? bytes : frames;
}

/* What a shared ref takes is also counted for the next sync with Redis. */
static inline void
weir_limit_note(const weir_limit_ref_t *r, uint64_t cost)
{
    if (r->share != WEIR_LIMIT_LOCAL && r->index != WEIR_NO_INDEX)
        __atomic_fetch_add(&weir_lb[r->index].pending, cost, __ATOMIC_RELAXED);
}

/*
 * GCRA on one state: from T, charging COST at NOW_US gives *NEXT; returns
 * 0 when allowed, else the microseconds until it would be.
 */
static inline uint64_t
weir_gcra(const weir_limit_ref_t *r, uint64_t t, uint64_t cost, uint64_t now_us, uint64_t *next)
{
    uint64_t now_u = weir_units(now_us, r->mul, r->shift);
    uint64_t nt = WEIR_MAX(t, now_u) + (cost << r->frac);
    *next = nt;
    if (nt - now_u <= r->tau) return 0;
    uint64_t at = weir_units_at(nt - r->tau, r->mul, r->shift);
    return at > now_us ? at - now_us : 1;
}

/* Charge R COST with a swap loop. Returns 0, or the wait when it refuses. */
static uint64_t
weir_limit_charge(weir_limit_ref_t *r, uint64_t cost, uint64_t now_us)
{
    for (;;) {
        uint64_t *tp, t, nt;
        if (weir_limit_load(r, now_us, &tp, &t) != WEIR_OK) return 0;      /* no bucket: let it pass */
        uint64_t wait = weir_gcra(r, t, cost, now_us, &nt);
        if (wait) {
            weir_limit_touch(r, now_us);
            return wait;
        }
        if (r->index == WEIR_NO_INDEX) {
            r->local_tat = nt;
            return 0;
        }
        if (__atomic_compare_exchange_n(tp, &t, nt, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            weir_limit_touch(r, now_us);
            weir_limit_note(r, cost);
            return 0;
        }
    }
}

/* Give back COST charged to R a moment ago (another limit refused the frame). */
static void
weir_limit_refund(weir_limit_ref_t *r, uint64_t cost)
{
    uint64_t inc = cost << r->frac;
    if (r->index == WEIR_NO_INDEX) {
        r->local_tat = r->local_tat > inc ? r->local_tat - inc : 0;
        return;
    }
    weir_bucket_t *b = &weir_lb[r->index];
    uint64_t t = __atomic_load_n(&b->tat, __ATOMIC_ACQUIRE);
    for (;;) {
        if (!weir_bucket_holds(b, t, r)) return;        /* handed over since: nothing to give back */
        uint64_t nt = t > inc ? t - inc : 0;
        if (__atomic_compare_exchange_n(&b->tat, &t, nt, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) break;
    }
    if (r->share != WEIR_LIMIT_LOCAL) {
        uint64_t p = __atomic_load_n(&b->pending, __ATOMIC_RELAXED);
        while (!__atomic_compare_exchange_n(&b->pending, &p, p > cost ? p - cost : 0, 0, __ATOMIC_RELAXED,
                                            __ATOMIC_RELAXED)) {}
    }
}

int
weir_limits_take(weir_limit_ref_t *refs, int n, int dir, uint64_t cost_frames, uint64_t cost_bytes,
                 uint64_t now_us, uint64_t *retry_after_us)
{
    uint64_t seen[WEIR_LIMITS_MAX_REFS], next[WEIR_LIMITS_MAX_REFS];   /* next 0: not charged */
    uint64_t wait = 0;
    if (n < 0 || n > WEIR_LIMITS_MAX_REFS) return WEIR_ERROR;

    /* check every limit first: a frame one of them refuses costs the others nothing */
    for (int i = 0; i < n; i++) {
        weir_limit_ref_t *r = &refs[i];
        uint64_t cost = weir_limit_cost(r, cost_frames, cost_bytes), *tp, w;
        next[i] = 0;
        if (!(r->dirs & dir) || cost == 0 || r->mul == 0) continue;     /* mul 0: never resolved */
        if (cost > r->burst) {
            wait = WEIR_LIMIT_NEVER;
            continue;
        }
        if (r->share == WEIR_LIMIT_SHARED_CLOSED && weir_shared_down) {
            /* the hosts' count cannot be known: this limit fails closed */
            weir_count(&weir_lz->shared_refused);
            if (wait < WEIR_LIMIT_DOWN_RETRY_US) wait = WEIR_LIMIT_DOWN_RETRY_US;
            continue;
        }
        if (weir_limit_load(r, now_us, &tp, &seen[i]) != WEIR_OK) continue;
        if ((w = weir_gcra(r, seen[i], cost, now_us, &next[i])) != 0) {
            /* a client that keeps trying is using its bucket: were it the
             * least recently used, eviction would forgive its debt */
            weir_limit_touch(r, now_us);
            next[i] = 0;
            if (w > wait) wait = w;
        }
    }
    if (wait) goto over;

    /* then charge them; a swap lost to another worker is retried on the new
     * state, and should that one refuse, what was charged is given back */
    for (int i = 0; i < n; i++) {
        weir_limit_ref_t *r = &refs[i];
        if (next[i] == 0) continue;
        if (r->index == WEIR_NO_INDEX) {
            r->local_tat = next[i];
            continue;
        }
        weir_bucket_t *b = &weir_lb[r->index];
        if (__atomic_compare_exchange_n(&b->tat, &seen[i], next[i], 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            weir_limit_touch(r, now_us);
            weir_limit_note(r, weir_limit_cost(r, cost_frames, cost_bytes));
            continue;
        }
        uint64_t w = weir_limit_charge(r, weir_limit_cost(r, cost_frames, cost_bytes), now_us);
        if (w == 0) continue;
        for (int j = 0; j < i; j++)
            if (next[j]) weir_limit_refund(&refs[j], weir_limit_cost(&refs[j], cost_frames, cost_bytes));
        wait = w;
        goto over;
    }
    return WEIR_OK;

over:
    if (retry_after_us) *retry_after_us = wait;
    return WEIR_DECLINED;
}

int
weir_limit_resolve(weir_limit_ref_t *ref, const char *key, size_t len, const weir_limit_spec_t *spec,
                   uint64_t now_us, char *err, size_t errlen)
{
    memset(ref, 0, sizeof(*ref));
    ref->index = WEIR_NO_INDEX;
    if (weir_limit_params(ref, spec, err, errlen) != WEIR_OK) return WEIR_ERROR;
    if (key == NULL) return WEIR_OK;
    if (spec->share < WEIR_LIMIT_LOCAL || spec->share > WEIR_LIMIT_SHARED_CLOSED)
        return weir_limit_fail(err, errlen, "unknown share mode");
    ref->share = (uint8_t) spec->share;
    if (weir_lz == NULL) return weir_limit_fail(err, errlen, "the limits zone is not mapped");
    /* the bucket is named by the key and by what fixes its units: a reload
     * that changes a limit's count, period or unit starts fresh buckets */
    uint64_t tag[3] = { spec->count, spec->period_us, (uint64_t) spec->unit };
    if (weir_limit_hash(key, len, tag, sizeof(tag), ref->key) != WEIR_OK)
        return weir_limit_fail(err, errlen, len > WEIR_LIMIT_KEY_MAX ? "a limit's key is longer than 512 bytes"
                                                                     : "cannot hash a limit's key");
    weir_limit_claim(ref, now_us);
    return WEIR_OK;
}

int
weir_limits_peek(const weir_limit_ref_t *ref, uint64_t now_us, uint64_t *available, uint64_t *full_in_us)
{
    int rc = WEIR_OK;
    uint64_t t = 0;
    if (ref->mul == 0) return WEIR_ERROR;
    if (ref->index == WEIR_NO_INDEX) {
        t = ref->local_tat;
    } else if (weir_lz != NULL && ref->index < weir_lz->nbuckets) {
        const weir_bucket_t *b = &weir_lb[ref->index];
        t = __atomic_load_n(&b->tat, __ATOMIC_ACQUIRE);
        if (!weir_bucket_holds(b, t, ref)) {
            rc = WEIR_DECLINED;
            t = 0;
        }
    } else {
        rc = WEIR_DECLINED;
    }
    uint64_t now_u = weir_units(now_us, ref->mul, ref->shift);
    uint64_t used = t > now_u ? WEIR_MIN(t - now_u, ref->tau) : 0;
    if (available) *available = (ref->tau - used) >> ref->frac;
    if (full_in_us) *full_in_us = t > now_u ? weir_units_at(t, ref->mul, ref->shift) - now_us : 0;
    return rc;
}

/* ---- connection counts ------------------------------------------------------ */

/* Keys change under the lock only, and only in a slot at 0. */
static inline int
weir_slot_holds(const weir_conn_slot_t *s, const uint64_t key[2])
{
    return __atomic_load_n(&s->key[0], __ATOMIC_RELAXED) == key[0]
        && __atomic_load_n(&s->key[1], __ATOMIC_RELAXED) == key[1];
}

int
weir_conn_acquire(weir_conn_ref_t *ref, const char *key, size_t len, uint64_t max)
{
    memset(ref, 0, sizeof(*ref));
    ref->index = WEIR_NO_INDEX;
    if (weir_lz == NULL || weir_limit_hash(key, len, NULL, 0, ref->key) != WEIR_OK) return WEIR_ERROR;
    uint64_t mask = weir_lz->nslots - 1, home = ref->key[0] & mask;
    uint64_t probe = WEIR_MIN((uint64_t) WEIR_LIMIT_PROBE, weir_lz->nslots);
    int64_t found = -1, free_slot = -1;
    int rc;
    weir_limits_lock();
    for (uint64_t i = 0; i < probe && found < 0; i++) {
        uint64_t idx = (home + i) & mask;
        weir_conn_slot_t *s = &weir_lc[idx];
        if (weir_slot_holds(s, ref->key)) found = (int64_t) idx;
        else if (free_slot < 0 && __atomic_load_n(&s->count, __ATOMIC_ACQUIRE) == 0) free_slot = (int64_t) idx;
    }
    if (found >= 0) {
        /* other acquires wait on the lock; releases only lower the count */
        weir_conn_slot_t *s = &weir_lc[found];
        uint64_t here = (uint64_t) __atomic_load_n(&s->count, __ATOMIC_ACQUIRE);
        if (here + __atomic_load_n(&s->remote, __ATOMIC_RELAXED) >= max) {
            rc = WEIR_DECLINED;
        } else {
            __atomic_fetch_add(&s->count, 1, __ATOMIC_ACQ_REL);
            ref->index = (uint32_t) found;
            rc = WEIR_OK;
        }
    } else if (free_slot >= 0) {
        /* a slot at 0 has no holder to release it: it may change key */
        weir_conn_slot_t *s = &weir_lc[free_slot];
        if (max == 0) {
            rc = WEIR_DECLINED;
        } else {
            __atomic_store_n(&s->key[0], ref->key[0], __ATOMIC_RELAXED);
            __atomic_store_n(&s->key[1], ref->key[1], __ATOMIC_RELAXED);
            __atomic_store_n(&s->remote, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&s->sync_us, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&s->reported, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&s->count, 1, __ATOMIC_RELEASE);
            ref->index = (uint32_t) free_slot;
            rc = WEIR_OK;
        }
    } else {
        weir_count(&weir_lz->conn_table_full);
        rc = WEIR_ERROR;
    }
    if (rc == WEIR_OK && weir_held != NULL && weir_worker_id >= 0 && (uint64_t) weir_worker_id < weir_lz->nworkers)
        __atomic_fetch_add(&weir_held[(uint64_t) weir_worker_id * weir_lz->nslots + ref->index], 1, __ATOMIC_RELAXED);
    weir_limits_unlock();
    return rc;
}

/* Lower slot S's count by N, not below 0. */
static void
weir_slot_lower(weir_conn_slot_t *s, int64_t n)
{
    int64_t c = __atomic_load_n(&s->count, __ATOMIC_ACQUIRE);
    while (c > 0 && !__atomic_compare_exchange_n(&s->count, &c, c > n ? c - n : 0, 0, __ATOMIC_ACQ_REL,
                                                 __ATOMIC_ACQUIRE)) {}
}

void
weir_conn_release(weir_conn_ref_t *ref)
{
    if (weir_lz == NULL || ref->index == WEIR_NO_INDEX || ref->index >= weir_lz->nslots) return;
    weir_conn_slot_t *s = &weir_lc[ref->index];
    uint32_t idx = ref->index;
    ref->index = WEIR_NO_INDEX;
    /* the slot cannot change key while this ref's count is in it */
    if (!weir_slot_holds(s, ref->key)) return;
    if (weir_held != NULL && weir_worker_id >= 0 && (uint64_t) weir_worker_id < weir_lz->nworkers) {
        /* the share first: the master never finds more in it than in the count */
        uint32_t *h = &weir_held[(uint64_t) weir_worker_id * weir_lz->nslots + idx];
        uint32_t v = __atomic_load_n(h, __ATOMIC_RELAXED);
        while (v > 0 && !__atomic_compare_exchange_n(h, &v, v - 1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    }
    weir_slot_lower(s, 1);
}

uint64_t
weir_limits_reclaim(int id)
{
    uint64_t total = 0;
    if (weir_lz == NULL || weir_held == NULL || id < 0 || (uint64_t) id >= weir_lz->nworkers) return 0;
    uint32_t *row = &weir_held[(uint64_t) id * weir_lz->nslots];
    weir_limits_lock();
    for (uint64_t i = 0; i < weir_lz->nslots; i++) {
        uint32_t h = __atomic_exchange_n(&row[i], 0, __ATOMIC_RELAXED);
        if (h == 0) continue;
        weir_slot_lower(&weir_lc[i], (int64_t) h);
        total += h;
    }
    weir_limits_unlock();
    __atomic_fetch_add(&weir_lz->conn_reclaimed, total, __ATOMIC_RELAXED);
    return total;
}

uint64_t
weir_conn_count(const char *key, size_t len)
{
    uint64_t h[2];
    if (weir_lz == NULL || weir_limit_hash(key, len, NULL, 0, h) != WEIR_OK) return 0;
    uint64_t mask = weir_lz->nslots - 1, home = h[0] & mask;
    uint64_t probe = WEIR_MIN((uint64_t) WEIR_LIMIT_PROBE, weir_lz->nslots), n = 0;
    weir_limits_lock();
    for (uint64_t i = 0; i < probe; i++) {
        weir_conn_slot_t *s = &weir_lc[(home + i) & mask];
        if (weir_slot_holds(s, h)) {
            int64_t c = __atomic_load_n(&s->count, __ATOMIC_ACQUIRE);
            n = c > 0 ? (uint64_t) c : 0;
            break;
        }
    }
    weir_limits_unlock();
    return n;
}

void
weir_limits_stats(weir_limits_stats_t *st)
{
    memset(st, 0, sizeof(*st));
    if (weir_lz == NULL) return;
    st->buckets = weir_lz->nbuckets;
    st->conn_slots = weir_lz->nslots;
    st->claims = __atomic_load_n(&weir_lz->claims, __ATOMIC_RELAXED);
    st->evictions_full = __atomic_load_n(&weir_lz->evictions_full, __ATOMIC_RELAXED);
    st->evictions_live = __atomic_load_n(&weir_lz->evictions_live, __ATOMIC_RELAXED);
    st->conn_table_full = __atomic_load_n(&weir_lz->conn_table_full, __ATOMIC_RELAXED);
    st->conn_reclaimed = __atomic_load_n(&weir_lz->conn_reclaimed, __ATOMIC_RELAXED);
    st->shared_refused = __atomic_load_n(&weir_lz->shared_refused, __ATOMIC_RELAXED);
    for (uint64_t i = 0; i < weir_lz->nbuckets; i++)
        if (__atomic_load_n(&weir_lb[i].key[0], __ATOMIC_RELAXED) || __atomic_load_n(&weir_lb[i].key[1], __ATOMIC_RELAXED))
            st->buckets_used++;
    for (uint64_t i = 0; i < weir_lz->nslots; i++)
        if (__atomic_load_n(&weir_lc[i].count, __ATOMIC_RELAXED) > 0) st->conn_slots_used++;
}

/* ---- shared with other hosts (core/limit_sync.c) ------------------------------ */

void
weir_limits_set_down(int down)
{
    weir_shared_down = down;
}

/* Claim the host's sync turn kept in *SYNC_US: due after ACTIVE_US when
 * ACTIVE, after IDLE_US otherwise. *SINCE_US (not NULL): how long ago the
 * previous turn was (IDLE_US for the first). */
static int
weir_sync_turn(uint64_t *sync_us, int active, uint64_t now_us, uint64_t active_us, uint64_t idle_us,
               uint64_t *since_us)
{
    uint64_t last = __atomic_load_n(sync_us, __ATOMIC_RELAXED);
    uint64_t every = active ? active_us : idle_us;
    if (last != 0 && now_us < last + every) return 0;
    if (!__atomic_compare_exchange_n(sync_us, &last, now_us, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return 0;
    if (since_us != NULL) *since_us = last != 0 && now_us >= last ? now_us - last : idle_us;
    return 1;
}

int
weir_limit_share_turn(weir_limit_ref_t *ref, uint64_t now_us, uint64_t active_us, uint64_t idle_us,
                      uint64_t *since_us)
{
    uint64_t *tp, t;
    if (ref->index == WEIR_NO_INDEX || weir_limit_load(ref, now_us, &tp, &t) != WEIR_OK) return 0;
    weir_bucket_t *b = &weir_lb[ref->index];
    return weir_sync_turn(&b->sync_us, __atomic_load_n(&b->pending, __ATOMIC_RELAXED) > 0, now_us, active_us,
                          idle_us, since_us);
}

uint64_t
weir_limit_share_pending(weir_limit_ref_t *ref)
{
    if (weir_lz == NULL || ref->index == WEIR_NO_INDEX || ref->index >= weir_lz->nbuckets) return 0;
    weir_bucket_t *b = &weir_lb[ref->index];
    if (!weir_bucket_holds(b, __atomic_load_n(&b->tat, __ATOMIC_ACQUIRE), ref)) return 0;
    return __atomic_exchange_n(&b->pending, 0, __ATOMIC_RELAXED);
}

void
weir_limit_share_unpend(weir_limit_ref_t *ref, uint64_t tokens)
{
    if (weir_lz == NULL || ref->index == WEIR_NO_INDEX || ref->index >= weir_lz->nbuckets || tokens == 0) return;
    weir_bucket_t *b = &weir_lb[ref->index];
    if (weir_bucket_holds(b, __atomic_load_n(&b->tat, __ATOMIC_ACQUIRE), ref))
        __atomic_fetch_add(&b->pending, tokens, __ATOMIC_RELAXED);
}

int
weir_limit_share_apply(weir_limit_ref_t *ref, uint64_t debt_us, uint64_t now_us)
{
    if (ref->index == WEIR_NO_INDEX) return WEIR_ERROR;
    /* at most 64 bursts (and 2^62 units): the sums below stay below 2^64 */
    uint64_t cap = ref->tau >= (1ULL << 56) ? (1ULL << 62) : ref->tau << 6;
    uint64_t now_u = weir_units(now_us, ref->mul, ref->shift);
    if (debt_us > WEIR_LIMIT_MAX_PERIOD_US * 64) debt_us = WEIR_LIMIT_MAX_PERIOD_US * 64;
    uint64_t debt_u = WEIR_MIN(weir_units(debt_us, ref->mul, ref->shift), cap);
    for (;;) {
        uint64_t *tp, t;
        if (weir_limit_load(ref, now_us, &tp, &t) != WEIR_OK) return WEIR_ERROR;
        /* taken here since the pending tokens were read: not in Redis's answer yet */
        uint64_t p = __atomic_load_n(&weir_lb[ref->index].pending, __ATOMIC_RELAXED);
        uint64_t more = p > (cap >> ref->frac) ? cap : debt_u + (p << ref->frac);
        if (more > cap) more = cap;
        uint64_t want = now_u + more;
        if (want <= t) return WEIR_OK;
        if (__atomic_compare_exchange_n(tp, &t, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return WEIR_OK;
    }
}

int
weir_conn_share_turn(const uint64_t key[2], uint32_t *index, uint64_t now_us, uint64_t active_us,
                     uint64_t idle_us, uint64_t *count)
{
    *count = 0;
    if (weir_lz == NULL) return 0;
    weir_conn_slot_t *s = *index < weir_lz->nslots ? &weir_lc[*index] : NULL;
    if (s == NULL || !weir_slot_holds(s, key)) {
        /* the slot went back to 0 and changed key: look for the key again */
        uint64_t mask = weir_lz->nslots - 1, home = key[0] & mask;
        uint64_t probe = WEIR_MIN((uint64_t) WEIR_LIMIT_PROBE, weir_lz->nslots);
        s = NULL;
        for (uint64_t i = 0; i < probe && s == NULL; i++) {
            weir_conn_slot_t *c = &weir_lc[(home + i) & mask];
            if (weir_slot_holds(c, key)) {
                s = c;
                *index = (uint32_t) ((home + i) & mask);
            }
        }
        /* not held here: 0 to report, once per idle interval is enough */
        if (s == NULL) return 1;
    }
    int64_t c = __atomic_load_n(&s->count, __ATOMIC_ACQUIRE);
    *count = c > 0 ? (uint64_t) c : 0;
    if (!weir_sync_turn(&s->sync_us, *count != __atomic_load_n(&s->reported, __ATOMIC_RELAXED), now_us,
                        active_us, idle_us, NULL))
        return 0;
    __atomic_store_n(&s->reported, *count, __ATOMIC_RELAXED);
    return 1;
}

void
weir_conn_share_remote(const uint64_t key[2], uint32_t index, uint64_t remote)
{
    if (weir_lz == NULL || index >= weir_lz->nslots) return;
    weir_conn_slot_t *s = &weir_lc[index];
    if (weir_slot_holds(s, key)) __atomic_store_n(&s->remote, remote, __ATOMIC_RELAXED);
}

/* ---- for policies and the runtime (LuaJIT FFI: lua/weir/limits.lua) --------- */

int
weir_ffi_limits_abi(void)
{
    return WEIR_LIMITS_ABI;
}

int
weir_ffi_limit_ref(weir_limit_ref_t *ref, const char *key, size_t len, uint64_t count, uint64_t period_us,
                   uint64_t burst, int unit, int dirs, char *err, size_t errlen)
{
    weir_limit_spec_t spec = { .count = count, .period_us = period_us, .burst = burst, .unit = unit, .dirs = dirs };
    return weir_limit_resolve(ref, key, len, &spec, weir_limits_now_us(), err, errlen);
}

int
weir_ffi_limits_take(weir_limit_ref_t *refs, int n, int dir, uint64_t frames, uint64_t bytes, uint64_t *retry_us)
{
    return weir_limits_take(refs, n, dir, frames, bytes, weir_limits_now_us(), retry_us);
}

int
weir_ffi_limits_peek(const weir_limit_ref_t *ref, uint64_t *available, uint64_t *full_in_us)
{
    return weir_limits_peek(ref, weir_limits_now_us(), available, full_in_us);
}

int
weir_ffi_conn_acquire(weir_conn_ref_t *ref, const char *key, size_t len, uint64_t max)
{
    return weir_conn_acquire(ref, key, len, max);
}

void
weir_ffi_conn_release(weir_conn_ref_t *ref)
{
    weir_conn_release(ref);
}

uint64_t
weir_ffi_conn_count(const char *key, size_t len)
{
    return weir_conn_count(key, len);
}

void
weir_ffi_limits_stats(weir_limits_stats_t *st)
{
    weir_limits_stats(st);
}
