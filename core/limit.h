/*
 * limit.h — rate limits and connection counts shared by every worker of
 * one host: a zone of shared memory the master maps before it forks.
 *
 * Rate limits are GCRA buckets (see docs/throttling.md): one 64-bit
 * "theoretical arrival time" per bucket, in units of 1/2^frac of a token,
 * moved forward by a compare-and-swap. The per-frame call, weir_limits_take,
 * takes no lock, allocates nothing and calls no Lua; it checks every limit
 * that applies and consumes only when all of them allow.
 *
 * Buckets live in an open-addressing table of a fixed size, found by a
 * 128-bit salted hash of a string key such as "sub:<app>:<api>:<tier>:1".
 * A key is looked for in a window of WEIR_LIMIT_PROBE buckets from its home.
 * A new key takes an empty bucket, else one that is full again (forgetting
 * it loses nothing), else the least recently used one of the window (used:
 * a take, allowed or refused; counted: evictions_live); a ref whose bucket
 * was taken over finds or claims a bucket again on its next take.
 *
 * Connection counts are a second table of (key, count) slots: acquired at
 * the handshake against a maximum, released at close. Each worker's share
 * of every count is kept too, so that the master gives back the counts of
 * a worker that died (weir_limits_reclaim).
 *
 * Shared limits (core/limit_sync.c, with state.redis): a ref resolved with
 * a share mode also adds what it takes to its bucket's `pending` tokens;
 * the worker's sync reports them to Redis in batches and moves the
 * bucket's state forward by what the other hosts took
 * (weir_limit_share_apply). A connection slot holds, beside this host's
 * count, the other hosts' count as last synced. Nothing here talks to
 * Redis: the per-frame path only adds to a counter.
 *
 * Finding or claiming a bucket or a slot holds the zone's process-shared
 * robust mutex; the per-frame take and the release never do.
 *
 * (limit.h, not limits.h: compiled with -Icore, <limits.h> would find it.)
 */
#ifndef WEIR_LIMIT_H
#define WEIR_LIMIT_H

#include <stddef.h>
#include <stdint.h>

#define WEIR_LIMITS_ABI          2        /* lua/weir/limits.lua checks it */
#define WEIR_LIMIT_BUCKETS       65536    /* default bucket count */
#define WEIR_LIMIT_CONN_SLOTS    16384    /* default connection-count slots */
#define WEIR_LIMIT_PROBE         16       /* buckets (slots) looked at per key */
#define WEIR_LIMIT_KEY_MAX       512      /* bytes of a key */
#define WEIR_LIMITS_MAX_REFS     32       /* refs per weir_limits_take call */
#define WEIR_LIMIT_MAX_PERIOD_US (50ULL * 86400 * 1000000)   /* 50 days */
#define WEIR_LIMIT_MAX_RATE      4096     /* units per microsecond (4.096e9 a second), exclusive */
#define WEIR_LIMIT_NEVER         UINT64_MAX /* retry hint: the cost exceeds a burst */
#define WEIR_LIMIT_DOWN_RETRY_US 1000000  /* retry hint of a shared limit refused while Redis is down */
#define WEIR_LIMIT_MAX_WORKERS   1024     /* workers whose connection counts are kept apart */

/* what a limit counts */
enum {
    WEIR_LIMIT_FRAMES = 0,
    WEIR_LIMIT_BYTES  = 1,
};

/* directions (bits): what a limit counts, what a take is for */
enum {
    WEIR_LIMIT_IN   = 1,     /* client → backend */
    WEIR_LIMIT_OUT  = 2,     /* backend → client */
    WEIR_LIMIT_BOTH = 3,
};

/* whether a keyed limit is shared with other hosts (limit_sync.c), and what
 * it does while Redis cannot be reached */
enum {
    WEIR_LIMIT_LOCAL         = 0,   /* this host only */
    WEIR_LIMIT_SHARED_OPEN   = 1,   /* shared; Redis down: this host's bucket alone decides */
    WEIR_LIMIT_SHARED_CLOSED = 2,   /* shared; Redis down: refused (retry hint WEIR_LIMIT_DOWN_RETRY_US) */
};

/* A limit: COUNT units per PERIOD_US, at most BURST of them at once. */
typedef struct {
    uint64_t count;          /* units per period, >= 1 */
    uint64_t period_us;      /* microseconds, 1 .. WEIR_LIMIT_MAX_PERIOD_US */
    uint64_t burst;          /* units that may come at once, >= 1; 0: COUNT */
    int      unit;           /* WEIR_LIMIT_FRAMES or WEIR_LIMIT_BYTES */
    int      dirs;           /* WEIR_LIMIT_IN / OUT / BOTH */
    int      share;          /* WEIR_LIMIT_LOCAL / SHARED_*; a local ref (no key) is always LOCAL */
} weir_limit_spec_t;

/*
 * A resolved limit, held by whoever enforces it (a session): the key's hash,
 * the bucket it lives in, and the limit turned into the bucket's units.
 * Plain data, copied freely; weir_limits_take may update `index` when the
 * bucket was taken over by another key. A local ref (one connection's own
 * limit) keeps its state in `local_tat` and touches no shared memory.
 */
typedef struct {
    uint64_t key[2];         /* salted SHA-256 of the key, first 128 bits; never (0,0) */
    uint64_t mul;            /* bucket units per microsecond, fixed point: >> shift */
    uint64_t tau;            /* burst << frac: the tolerance, in units */
    uint64_t burst;          /* units (frames or bytes) */
    uint64_t count;          /* the spec, kept for peeks, logs and other hosts */
    uint64_t period_us;
    uint64_t local_tat;      /* a local ref's state, in units */
    uint32_t index;          /* bucket; UINT32_MAX: local */
    uint8_t  shift;          /* fraction bits of mul */
    uint8_t  frac;           /* log2 of units per token */
    uint8_t  unit;           /* WEIR_LIMIT_FRAMES / BYTES */
    uint8_t  dirs;           /* WEIR_LIMIT_* bits */
    uint8_t  share;          /* WEIR_LIMIT_LOCAL / SHARED_*: takes add to the bucket's pending */
    uint8_t  pad[7];
} weir_limit_ref_t;

/* One acquired connection count. */
typedef struct {
    uint64_t key[2];
    uint32_t index;          /* slot; UINT32_MAX: none */
    uint32_t shared;         /* 1: counted with other hosts (limit_sync.c holds its key) */
} weir_conn_ref_t;

typedef struct {
    uint64_t buckets;            /* table size */
    uint64_t buckets_used;       /* buckets holding a key (a scan: not for hot paths) */
    uint64_t claims;             /* keys given a bucket */
    uint64_t evictions_full;     /* buckets taken over while full again: nothing lost */
    uint64_t evictions_live;     /* buckets taken over while not full: their debt forgotten */
    uint64_t conn_slots;
    uint64_t conn_slots_used;    /* slots with a count above 0 (a scan) */
    uint64_t conn_table_full;    /* acquires refused for want of a slot */
    uint64_t conn_reclaimed;     /* counts given back for workers that died */
    uint64_t shared_refused;     /* takes refused because Redis was down (SHARED_CLOSED) */
} weir_limits_stats_t;

/*
 * Map the zone (the master, before forking): BUCKETS buckets and CONN_SLOTS
 * connection slots, each rounded up to a power of two (0: the defaults),
 * and each of WORKERS workers' share of every slot's count (0: not kept;
 * at most WEIR_LIMIT_MAX_WORKERS). Memory: 64 bytes a bucket, 64 a slot,
 * 4 a slot per worker. Idempotent. Returns WEIR_OK or WEIR_ERROR (logged).
 */
int  weir_limits_init(size_t buckets, size_t conn_slots, int workers);

/* This process is worker ID (0 .. WORKERS-1): the connection counts it
 * acquires from now on are kept as its share. */
void weir_limits_worker(int id);

/*
 * Give back every connection count worker ID held (it died: its sessions
 * never released them). The master calls it when it reaps a worker, before
 * starting another in its place. Returns the counts given back.
 */
uint64_t weir_limits_reclaim(int id);

/* 16 hex digits, random for each start of the master: names this host to
 * the others (connection counts in Redis). "" before the zone is mapped. */
const char *weir_limits_host_id(void);

/* Unmap it (at exit). */
void weir_limits_cleanup(void);

/* CLOCK_MONOTONIC in microseconds: the clock every caller must pass as now_us
 * (any caller of one zone: one clock; below 2^51). */
uint64_t weir_limits_now_us(void);

/*
 * Resolve KEY[0..LEN) and SPEC into REF: check the spec, convert it to
 * bucket units, and find the key's bucket or claim one (at NOW_US). KEY NULL
 * makes a local ref (no shared state). Returns WEIR_OK, or WEIR_ERROR with
 * a message in ERR (ERRLEN bytes) when the spec or key is out of range or
 * the zone is not mapped.
 */
int  weir_limit_resolve(weir_limit_ref_t *ref, const char *key, size_t len, const weir_limit_spec_t *spec,
                        uint64_t now_us, char *err, size_t errlen);

/*
 * Charge one frame travelling in direction DIR (WEIR_LIMIT_IN or OUT) to
 * REFS[0..N): each ref whose dirs include DIR is charged COST_FRAMES or
 * COST_BYTES by its unit. Either every one allows and all are charged, or
 * none is charged. Returns WEIR_OK, or WEIR_DECLINED with *RETRY_AFTER_US
 * (may be NULL) set to the longest wait among the refusing limits: the
 * first microsecond at which that limit alone would allow it, or
 * WEIR_LIMIT_NEVER when a cost exceeds some limit's burst. WEIR_ERROR when
 * N exceeds WEIR_LIMITS_MAX_REFS. May update refs' bucket index (a bucket
 * taken over by another key: the key is given a bucket again, under the
 * zone lock).
 */
int  weir_limits_take(weir_limit_ref_t *refs, int n, int dir, uint64_t cost_frames, uint64_t cost_bytes,
                      uint64_t now_us, uint64_t *retry_after_us);

/*
 * What REF's bucket holds at NOW_US without changing it: *AVAILABLE units
 * (frames or bytes) that may come at once now, *FULL_IN_US microseconds
 * until it is full again (0: full). Either pointer may be NULL. Returns
 * WEIR_OK, or WEIR_DECLINED when the bucket was taken over (the ref would
 * claim a fresh, full one: *AVAILABLE is the burst).
 */
int  weir_limits_peek(const weir_limit_ref_t *ref, uint64_t now_us, uint64_t *available, uint64_t *full_in_us);

/*
 * Count one connection against KEY[0..LEN), at most MAX at once. Returns
 * WEIR_OK (REF filled: release it once), WEIR_DECLINED when MAX are open,
 * WEIR_ERROR when it cannot be counted: no slot free near the key's place
 * (counted: conn_table_full), the key too long, the zone not mapped; the
 * caller decides whether to let it through. REF's index is UINT32_MAX
 * unless WEIR_OK.
 */
int  weir_conn_acquire(weir_conn_ref_t *ref, const char *key, size_t len, uint64_t max);

/* Give back REF's count, once; a second release (index UINT32_MAX) does nothing. */
void weir_conn_release(weir_conn_ref_t *ref);

/* Connections counted for KEY now (0 when unknown). */
uint64_t weir_conn_count(const char *key, size_t len);

/* Fill ST with the zone's counters. */
void weir_limits_stats(weir_limits_stats_t *st);

/* ---- shared with other hosts (core/limit_sync.c) ------------------------- */

/* Whether Redis is down for this process: SHARED_CLOSED refs then refuse. */
void weir_limits_set_down(int down);

/*
 * Whether this process should sync REF's bucket now, and if so claim the
 * turn for the host: due when it has pending tokens and no worker of the
 * host synced it for ACTIVE_US, or when none did for IDLE_US. Finds or
 * claims the bucket again if it was handed over. Returns 1 (this caller
 * syncs it now: *SINCE_US, when not NULL, is how long ago the host's
 * previous turn was, IDLE_US for the first), 0 (not due, or another worker
 * took the turn).
 */
int  weir_limit_share_turn(weir_limit_ref_t *ref, uint64_t now_us, uint64_t active_us, uint64_t idle_us,
                           uint64_t *since_us);

/* The tokens taken from REF's bucket by shared refs since the last call
 * (on any worker of the host), and zero them. 0 when the bucket was handed
 * over. weir_limit_share_unpend puts TOKENS back (a report not sent). */
uint64_t weir_limit_share_pending(weir_limit_ref_t *ref);
void     weir_limit_share_unpend(weir_limit_ref_t *ref, uint64_t tokens);

/*
 * Another host's view: Redis says the hosts together owe DEBT_US
 * microseconds of REF's limit (its theoretical arrival time less Redis's
 * clock). The bucket is moved to at least NOW_US + DEBT_US plus what was
 * taken here since the pending tokens were read, never back. The debt is
 * capped at 64 bursts. Returns WEIR_OK, or WEIR_ERROR when no bucket could
 * be had.
 */
int  weir_limit_share_apply(weir_limit_ref_t *ref, uint64_t debt_us, uint64_t now_us);

/*
 * Connection counts: whether this process should sync the count of KEY
 * (the hash of a weir_conn_ref_t; INDEX its slot as last seen, updated),
 * as weir_limit_share_turn: "pending" is a count that changed since it was
 * last reported. Sets *COUNT to this host's count (0 when the slot no
 * longer holds the key). Returns 1 or 0.
 */
int  weir_conn_share_turn(const uint64_t key[2], uint32_t *index, uint64_t now_us, uint64_t active_us,
                          uint64_t idle_us, uint64_t *count);

/* The other hosts hold REMOTE connections of KEY: acquires count them
 * against the maximum from now on. Nothing when the slot no longer holds
 * the key. */
void weir_conn_share_remote(const uint64_t key[2], uint32_t index, uint64_t remote);

#endif
