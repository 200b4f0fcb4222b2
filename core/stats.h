/*
 * stats.h — the host's metrics and usage store, in shared memory the master
 * maps before it forks (docs/metrics.md).
 *
 * Each worker owns two tables of it, written by that worker alone (no
 * contention) and read by any worker's admin API, which sums them:
 *
 * - series: a family (WEIR_ST_*) and its label values -> up to
 *   WEIR_STATS_VALUES uint64 counters (a histogram's buckets, a traffic
 *   series' messages/bytes/throttled each way). Values only grow (relaxed
 *   atomic adds by the one writer), so a reader needs no lock.
 * - usage: (api, version, application, subscriber) -> rings of 60 seconds,
 *   60 minutes and 24 hours of messages, bytes, throttled messages and
 *   connections, and the last access; read whole under a sequence number.
 *
 * Both tables outlive the worker: a worker restarted in the same slot goes
 * on counting in them, so no counter ever goes down. Both are bounded
 * (metrics.max_series, metrics.max_usage_keys); applications past
 * metrics.max_applications (the first ones seen by the host) are labelled
 * "other" in the series, and usage keys past the capacity fold into one
 * ("other", "other", "other", "other") key.
 *
 * The session's side (what to count, when) is in stats_session.c: counts
 * are flushed from the session's counters at each worker tick and at its
 * free, never per frame.
 */
#ifndef WEIR_STATS_H
#define WEIR_STATS_H

#include <stddef.h>
#include <stdint.h>

#define WEIR_STATS_VALUE_MAX  100     /* bytes of one label value kept (cut at a UTF-8 boundary) */
#define WEIR_STATS_MAX_LABELS 4       /* label values of a series or usage key, at most */
/* bytes of a series' or usage key's encoded label values: each value a
 * length byte and its bytes, rounded up to 8 */
#define WEIR_STATS_LABELS     ((WEIR_STATS_MAX_LABELS * (WEIR_STATS_VALUE_MAX + 1) + 7) / 8 * 8)
#define WEIR_STATS_VALUES     16      /* counters of one series */
#define WEIR_STATS_APP_NAME   (WEIR_STATS_VALUE_MAX + 1)

/* series families; the numbers are mirrored in lua/weir/stats.lua */
enum {
    WEIR_ST_TRAFFIC = 1,     /* api, version, application: WEIR_TR_* values */
    WEIR_ST_CLOSED,          /* api, version, code, side: [0] connections closed */
    WEIR_ST_AUTH,            /* api, reason: [0] auth failures */
    WEIR_ST_REFUSED,         /* status: [0] handshakes refused */
    WEIR_ST_HANDSHAKE,       /* api, version: histogram of handshake durations */
    WEIR_ST_SESSION,         /* api, version: histogram of session durations */
    WEIR_ST_BACKEND,         /* api, version: [0] backend failures */
    WEIR_ST_POLICY,          /* policy: [0] policy errors */
};

/* the values of a WEIR_ST_TRAFFIC series */
enum {
    WEIR_TR_MSG_IN, WEIR_TR_MSG_OUT, WEIR_TR_BYTES_IN, WEIR_TR_BYTES_OUT,
    WEIR_TR_THR_IN, WEIR_TR_THR_OUT, WEIR_TR_FRAMES_IN, WEIR_TR_FRAMES_OUT,
    WEIR_TR_LAST_MS,         /* wall clock ms of the last data frame: the greatest wins */
};

/* A histogram's values: WEIR_STATS_HIST_MAX buckets (counts per bucket,
 * not cumulative), then +Inf's, then the sum in the family's unit (ns for
 * handshakes, ms for sessions). */
#define WEIR_STATS_HIST_MAX 13
#define WEIR_STATS_HIST_INF WEIR_STATS_HIST_MAX
#define WEIR_STATS_HIST_SUM (WEIR_STATS_HIST_MAX + 1)

/* usage values */
enum { WEIR_U_MSG_IN, WEIR_U_MSG_OUT, WEIR_U_BYTES_IN, WEIR_U_BYTES_OUT, WEIR_U_THROTTLED, WEIR_U_CONNECTIONS,
       WEIR_U_VALUES };

/* usage ranges */
enum { WEIR_RANGE_MINUTE, WEIR_RANGE_HOUR, WEIR_RANGE_DAY };

/* reload results */
enum { WEIR_RELOAD_APPLIED, WEIR_RELOAD_PARTIAL, WEIR_RELOAD_REFUSED, WEIR_RELOAD_RESULTS };

/* A series, as a copy (weir_stats_read). */
typedef struct {
    uint32_t  kind;                    /* WEIR_ST_* */
    uint32_t  len;                     /* bytes of labels: values, each a length byte then its bytes */
    char      labels[WEIR_STATS_LABELS];
    uint64_t  v[WEIR_STATS_VALUES];
} weir_stats_row_t;

/* A usage key's sums over a range, as a copy (weir_stats_usage_read). */
typedef struct {
    uint32_t  len;                     /* bytes of key: api, version, application, subscriber, as labels */
    uint32_t  worker;
    char      key[WEIR_STATS_LABELS];
    uint64_t  v[WEIR_U_VALUES];
    uint64_t  last_ms;                 /* wall clock ms of the last data frame, 0: none */
} weir_stats_usage_row_t;

/* Map the store for NWORKERS workers (the master, before forking): MAX_SERIES
 * series and MAX_USAGE usage keys per worker, MAX_APPS application labels
 * for the host. Returns WEIR_OK or WEIR_ERROR (logged). */
int  weir_stats_init(int nworkers, uint32_t max_series, uint32_t max_apps, uint32_t max_usage);
void weir_stats_cleanup(void);

/* The master: a reload ended with RESULT ("applied", "partial", "refused"). */
void weir_stats_reload(const char *result);

/* Worker W starts: it writes to W's tables from now on, which keep what
 * earlier workers in that slot counted (only a write its predecessor did not
 * finish is undone). Returns WEIR_OK or WEIR_ERROR. */
int  weir_stats_attach(int worker);

/* ---- the attached worker's writes ----------------------------------------- */

/* The series of family KIND with the N label VALUES (NULL: ""), created when
 * missing. Returns its handle (> 0), or 0 when the table is full (what it
 * would count is dropped, and counted in weir_stats_dropped). */
uint32_t weir_stats_series(int kind, const char *const *values, int n);

/* Add D to value I of series H (0: nothing). */
void weir_stats_add(uint32_t h, int i, uint64_t d);

/* Raise value I of series H to V when greater. */
void weir_stats_max(uint32_t h, int i, uint64_t v);

/* Count V (in the family's unit) in the histogram series H whose bucket
 * upper bounds are BOUNDS[0..N) (N <= WEIR_STATS_HIST_MAX, same unit). */
void weir_stats_observe(uint32_t h, const uint64_t *bounds, int n, uint64_t v);

/* APP's label: APP itself when it is one of the host's first
 * metrics.max_applications applications, "other" past them, "" for none. */
const char *weir_stats_application(const char *app);

/* The usage key (API, VERSION, APP, SUB; NULL: ""), created when missing;
 * the "other" key when the table is full. Returns its handle (> 0), 0 when
 * the store is not mapped. */
uint32_t weir_stats_usage_key(const char *api, const char *version, const char *app, const char *sub);

/* Add D[WEIR_U_VALUES] to usage key H at wall clock second NOW_S; LAST_MS
 * (0: none) raises its last access. */
void weir_stats_usage_add(uint32_t h, uint64_t now_s, const uint64_t *d, uint64_t last_ms);

/* POLICY (NULL: "unknown") failed: a hook raised an error, returned
 * something invalid or ran over its budget (the runtime calls it by FFI for
 * the failures that do not end in a verdict: fail_open, on_close, recheck,
 * timers). */
void weir_stats_policy_failed(const char *policy);

/* ---- readers (the admin API, by FFI) ------------------------------------- */

/* Series I of the host (0 <= I < weir_stats_capacity(0)) into OUT. Returns 1
 * when it exists, 0 when not, -1 past the end. */
int  weir_stats_read(uint64_t i, weir_stats_row_t *out);

/* Usage key I of the host (0 <= I < weir_stats_capacity(1)), its sums over
 * RANGE (WEIR_RANGE_*) ending at wall clock ms NOW_MS, into OUT. Returns 1
 * when it has a key, 0 when not, -1 past the end. */
int  weir_stats_usage_read(uint64_t i, int range, uint64_t now_ms, weir_stats_usage_row_t *out);

/* Series (WHICH 0) or usage keys (1) of the host, all workers' slots. */
uint64_t weir_stats_capacity(int which);

/* Workers of the host (0: the store is not mapped). */
int  weir_stats_workers(void);

/* Series (WHICH 0) or usage keys (1, the "other" key apart) worker W has
 * made: its entries are the first ones of its slots. */
uint32_t weir_stats_used(int which, int w);

/* Reloads that ended with RESULT (WEIR_RELOAD_*). */
uint64_t weir_stats_reloads(int result);

/* Counts lost because a worker's series table was full. */
uint64_t weir_stats_dropped(void);

/* sizeof(weir_stats_row_t) (WHICH 0) or sizeof(weir_stats_usage_row_t) (1). */
size_t weir_stats_sizeof(int which);

#endif
