/*
 * stats.c — the host's metrics series and usage store, in shared memory
 * (see stats.h).
 *
 * The zone: a head (sizes, reloads, the host's application labels), then per
 * worker a part of its own: a small head, the series' hash index and their
 * entries, the usage keys' hash index and their entries. Entries are filled
 * in order (entry I exists when I < the part's count), so a reader walks
 * only what exists; the indexes are the writer's alone, rebuilt from the
 * entries when a worker attaches.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "log.h"
#include "stats.h"
#include "weir.h"

#define WEIR_STATS_SEQ_TRIES 100000

typedef struct {
    _Atomic uint32_t state;            /* 0: free, 2: in use */
    uint16_t         kind;
    uint16_t         len;
    char             labels[WEIR_STATS_LABELS];
    _Atomic uint64_t v[WEIR_STATS_VALUES];
} weir_series_t;

typedef struct {
    uint64_t  stamp;                   /* the second, minute or hour it counts (since the epoch) */
    uint64_t  v[WEIR_U_VALUES];
} weir_bucket_t;

#define WEIR_SEC_N  60
#define WEIR_MIN_N  60
#define WEIR_HOUR_N 24

typedef struct {
    _Atomic uint32_t seq;              /* odd while being written */
    _Atomic uint32_t state;            /* 0: free, 2: in use */
    uint32_t         len;
    char             key[WEIR_STATS_LABELS];
    uint64_t         last_ms;
    weir_bucket_t    sec[WEIR_SEC_N], min[WEIR_MIN_N], hour[WEIR_HOUR_N];
} weir_usage_t;

typedef struct {
    _Atomic uint32_t nseries;          /* entries in use: [0, nseries) */
    _Atomic uint32_t nusage;           /* usage entries in use, the "other" one apart */
    _Atomic uint64_t dropped;          /* counts lost to a full series table */
} weir_part_head_t;

typedef struct {
    _Atomic uint32_t state;            /* 0: free, 2: named, WEIR_APP_CLAIM + w: worker w names it now */
    char             name[WEIR_STATS_APP_NAME];
} weir_app_t;

typedef struct {
    int              nworkers;
    uint32_t         max_series, max_apps, max_usage;
    uint32_t         series_slots, usage_slots;   /* hash index sizes */
    size_t           part;                        /* bytes of one worker's part */
    size_t           off_sidx, off_series, off_uidx, off_usage;  /* within a part */
    _Atomic uint64_t reloads[WEIR_RELOAD_RESULTS];
} weir_stats_head_t;

#define WEIR_APP_NAMED 2u
#define WEIR_APP_CLAIM 3u

static weir_stats_head_t *weir_st;
static weir_app_t        *weir_st_apps;
static char              *weir_st_parts;
static size_t             weir_st_size;
static int                weir_st_me = -1;       /* the attached worker */

#define WEIR_ALIGN(n) (((n) + 63) & ~(size_t) 63)

static weir_part_head_t *
weir_part(int w)
{
    return (weir_part_head_t *) (weir_st_parts + (size_t) w * weir_st->part);
}

static uint32_t *
weir_sidx(int w)
{
    return (uint32_t *) ((char *) weir_part(w) + weir_st->off_sidx);
}

static weir_series_t *
weir_series(int w, uint32_t i)
{
    return (weir_series_t *) ((char *) weir_part(w) + weir_st->off_series) + i;
}

static uint32_t *
weir_uidx(int w)
{
    return (uint32_t *) ((char *) weir_part(w) + weir_st->off_uidx);
}

/* usage entry I of worker W; I == max_usage is its "other" key */
static weir_usage_t *
weir_usage(int w, uint32_t i)
{
    return (weir_usage_t *) ((char *) weir_part(w) + weir_st->off_usage) + i;
}

/* Encode the N VALUES (NULL: "") into OUT (WEIR_STATS_LABELS bytes) as
 * label values: a length byte and the bytes, each cut to
 * WEIR_STATS_VALUE_MAX at a UTF-8 boundary; values past
 * WEIR_STATS_MAX_LABELS are left out. Returns the length. */
static size_t
weir_labels_encode(char *out, const char *const *values, int n)
{
    _Static_assert(WEIR_STATS_LABELS >= WEIR_STATS_MAX_LABELS * (WEIR_STATS_VALUE_MAX + 1),
                   "a label buffer holds the longest values");
    size_t len = 0;
    if (n > WEIR_STATS_MAX_LABELS) n = WEIR_STATS_MAX_LABELS;
    for (int i = 0; i < n; i++) {
        const char *v = values[i] ? values[i] : "";
        size_t l = strnlen(v, WEIR_STATS_VALUE_MAX + 1);
        if (l > WEIR_STATS_VALUE_MAX) {
            l = WEIR_STATS_VALUE_MAX;
            while (l > 0 && ((unsigned char) v[l] & 0xC0) == 0x80) l--;     /* not inside a character */
        }
        out[len++] = (char) l;
        memcpy(out + len, v, l);
        len += l;
    }
    return len;
}

/* FNV-1a of KIND and the labels. */
static uint32_t
weir_labels_hash(int kind, const char *p, size_t len)
{
    uint32_t h = 2166136261u ^ (uint32_t) kind;
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t) p[i]) * 16777619u;
    return h;
}

int
weir_stats_init(int nworkers, uint32_t max_series, uint32_t max_apps, uint32_t max_usage)
{
    if (weir_st != NULL) return WEIR_OK;
    size_t head = WEIR_ALIGN(sizeof(weir_stats_head_t));
    size_t apps = WEIR_ALIGN((size_t) max_apps * sizeof(weir_app_t));
    uint32_t sslots = max_series * 2 + 1, uslots = max_usage * 2 + 1;
    size_t off_sidx = WEIR_ALIGN(sizeof(weir_part_head_t));
    size_t off_series = off_sidx + WEIR_ALIGN((size_t) sslots * sizeof(uint32_t));
    size_t off_uidx = off_series + WEIR_ALIGN((size_t) max_series * sizeof(weir_series_t));
    size_t off_usage = off_uidx + WEIR_ALIGN((size_t) uslots * sizeof(uint32_t));
    size_t part = off_usage + WEIR_ALIGN(((size_t) max_usage + 1) * sizeof(weir_usage_t));
    part = (part + 4095) & ~(size_t) 4095;
    size_t size = head + apps + (size_t) nworkers * part;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        weir_log(WEIR_LOG_ERROR, "cannot map shared memory", "\"error\":\"%s\"", strerror(errno));
        return WEIR_ERROR;
    }
    weir_st = p;
    weir_st_apps = (weir_app_t *) ((char *) p + head);
    weir_st_parts = (char *) p + head + apps;
    weir_st_size = size;
    weir_st->nworkers = nworkers;
    weir_st->max_series = max_series;
    weir_st->max_apps = max_apps;
    weir_st->max_usage = max_usage;
    weir_st->series_slots = sslots;
    weir_st->usage_slots = uslots;
    weir_st->part = part;
    weir_st->off_sidx = off_sidx;
    weir_st->off_series = off_series;
    weir_st->off_uidx = off_uidx;
    weir_st->off_usage = off_usage;
    static const char *const other[4] = { "other", "other", "other", "other" };
    for (int w = 0; w < nworkers; w++) {
        weir_usage_t *u = weir_usage(w, max_usage);
        u->len = (uint32_t) weir_labels_encode(u->key, other, 4);
        atomic_store(&u->state, 2);
    }
    return WEIR_OK;
}

void
weir_stats_cleanup(void)
{
    if (weir_st != NULL) munmap(weir_st, weir_st_size);
    weir_st = NULL;
    weir_st_me = -1;
}

void
weir_stats_reload(const char *result)
{
    if (weir_st == NULL) return;
    int r = strcmp(result, "applied") == 0 ? WEIR_RELOAD_APPLIED
            : strcmp(result, "partial") == 0 ? WEIR_RELOAD_PARTIAL : WEIR_RELOAD_REFUSED;
    atomic_fetch_add(&weir_st->reloads[r], 1);
}

/* Put entry I (its labels hashing to H) into index IDX of SLOTS. */
static void
weir_index_put(uint32_t *idx, uint32_t slots, uint32_t h, uint32_t i)
{
    uint32_t k = h % slots;
    while (idx[k] != 0) k = (k + 1) % slots;
    idx[k] = i + 1;
}

int
weir_stats_attach(int worker)
{
    if (weir_st == NULL || worker < 0 || worker >= weir_st->nworkers) return WEIR_ERROR;
    weir_part_head_t *ph = weir_part(worker);
    uint32_t ns = atomic_load(&ph->nseries), nu = atomic_load(&ph->nusage);
    uint32_t *sidx = weir_sidx(worker), *uidx = weir_uidx(worker);

    /* an entry its predecessor was filling when it died counted nothing yet */
    if (ns < weir_st->max_series) {
        weir_series_t *e = weir_series(worker, ns);
        atomic_store(&e->state, 0);
        memset(e->labels, 0, sizeof(e->labels));
        e->len = 0;
    }
    if (nu < weir_st->max_usage) {
        weir_usage_t *u = weir_usage(worker, nu);
        atomic_store(&u->state, 0);
        u->len = 0;
    }
    memset(sidx, 0, (size_t) weir_st->series_slots * sizeof(uint32_t));
    for (uint32_t i = 0; i < ns; i++) {
        weir_series_t *e = weir_series(worker, i);
        weir_index_put(sidx, weir_st->series_slots, weir_labels_hash(e->kind, e->labels, e->len), i);
    }
    memset(uidx, 0, (size_t) weir_st->usage_slots * sizeof(uint32_t));
    for (uint32_t i = 0; i <= nu; i++) {                 /* the keys in use, and the "other" one (not the
                                                            rest: their pages stay untouched) */
        weir_usage_t *u = weir_usage(worker, i < nu ? i : weir_st->max_usage);
        uint32_t q = atomic_load(&u->seq);
        if (q & 1) atomic_store(&u->seq, q + 1);         /* it died inside a write */
        if (i < nu) weir_index_put(uidx, weir_st->usage_slots, weir_labels_hash(0, u->key, u->len), i);
    }
    /* an application label its predecessor was naming when it died: free
     * again (nobody else claims in this worker's name) */
    for (uint32_t i = 0; i < weir_st->max_apps; i++) {
        uint32_t mine = WEIR_APP_CLAIM + (uint32_t) worker;
        atomic_compare_exchange_strong(&weir_st_apps[i].state, &mine, 0);
    }
    weir_st_me = worker;
    return WEIR_OK;
}

/* ---- series ----------------------------------------------------------------- */

uint32_t
weir_stats_series(int kind, const char *const *values, int n)
{
    if (weir_st_me < 0) return 0;
    char labels[WEIR_STATS_LABELS];
    size_t len = weir_labels_encode(labels, values, n);
    uint32_t h = weir_labels_hash(kind, labels, len), slots = weir_st->series_slots;
    uint32_t *idx = weir_sidx(weir_st_me);
    uint32_t k = h % slots;
    for (; idx[k] != 0; k = (k + 1) % slots) {
        weir_series_t *e = weir_series(weir_st_me, idx[k] - 1);
        if (e->kind == kind && e->len == len && memcmp(e->labels, labels, len) == 0) return idx[k];
    }
    weir_part_head_t *ph = weir_part(weir_st_me);
    uint32_t i = atomic_load_explicit(&ph->nseries, memory_order_relaxed);
    if (i >= weir_st->max_series) return 0;
    weir_series_t *e = weir_series(weir_st_me, i);
    e->kind = (uint16_t) kind;
    e->len = (uint16_t) len;
    memcpy(e->labels, labels, len);
    atomic_store_explicit(&e->state, 2, memory_order_release);
    idx[k] = i + 1;
    atomic_store_explicit(&ph->nseries, i + 1, memory_order_release);
    return i + 1;
}

static weir_series_t *
weir_own_series(uint32_t h)
{
    if (weir_st_me < 0) return NULL;
    if (h == 0 || h > weir_st->max_series) {
        atomic_fetch_add_explicit(&weir_part(weir_st_me)->dropped, 1, memory_order_relaxed);
        return NULL;
    }
    return weir_series(weir_st_me, h - 1);
}

/* the one writer adds: a load and a store, no locked instruction */
static void
weir_add(_Atomic uint64_t *p, uint64_t d)
{
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + d, memory_order_relaxed);
}

void
weir_stats_add(uint32_t h, int i, uint64_t d)
{
    if (d == 0 || i < 0 || i >= WEIR_STATS_VALUES) return;
    weir_series_t *e = weir_own_series(h);
    if (e != NULL) weir_add(&e->v[i], d);
}

void
weir_stats_max(uint32_t h, int i, uint64_t v)
{
    if (i < 0 || i >= WEIR_STATS_VALUES) return;
    weir_series_t *e = weir_own_series(h);
    if (e != NULL && atomic_load_explicit(&e->v[i], memory_order_relaxed) < v)
        atomic_store_explicit(&e->v[i], v, memory_order_relaxed);
}

void
weir_stats_observe(uint32_t h, const uint64_t *bounds, int n, uint64_t v)
{
    weir_series_t *e = weir_own_series(h);
    if (e == NULL) return;
    int b = 0;
    while (b < n && b < WEIR_STATS_HIST_MAX && v > bounds[b]) b++;
    weir_add(&e->v[b < n ? b : WEIR_STATS_HIST_INF], 1);
    weir_add(&e->v[WEIR_STATS_HIST_SUM], v);
}

const char *
weir_stats_application(const char *app)
{
    if (app == NULL || app[0] == '\0') return "";
    if (weir_st == NULL || weir_st_me < 0) return "other";
    char name[WEIR_STATS_APP_NAME];
    size_t l = weir_labels_encode(name, &app, 1) - 1;       /* the value as a label keeps it */
    memmove(name, name + 1, l);
    name[l] = '\0';
    for (uint32_t i = 0; i < weir_st->max_apps; i++) {
        weir_app_t *a = &weir_st_apps[i];
        uint32_t st = atomic_load_explicit(&a->state, memory_order_acquire);
        if (st == 0) {
            uint32_t zero = 0;
            if (atomic_compare_exchange_strong(&a->state, &zero, WEIR_APP_CLAIM + (uint32_t) weir_st_me)) {
                memcpy(a->name, name, l + 1);
                atomic_store_explicit(&a->state, WEIR_APP_NAMED, memory_order_release);
                return a->name;
            }
            st = zero;
        }
        for (int t = 0; st >= WEIR_APP_CLAIM && t < WEIR_STATS_SEQ_TRIES; t++)   /* another worker names it now */
            st = atomic_load_explicit(&a->state, memory_order_acquire);
        if (st == WEIR_APP_NAMED && strcmp(a->name, name) == 0) return a->name;
    }
    return "other";
}

void
weir_stats_policy_failed(const char *policy)
{
    const char *v[1] = { policy ? policy : "unknown" };
    weir_stats_add(weir_stats_series(WEIR_ST_POLICY, v, 1), 0, 1);
}

/* ---- usage ------------------------------------------------------------------ */

uint32_t
weir_stats_usage_key(const char *api, const char *version, const char *app, const char *sub)
{
    if (weir_st_me < 0) return 0;
    const char *values[4] = { api, version, app, sub };
    char key[WEIR_STATS_LABELS];
    size_t len = weir_labels_encode(key, values, 4);
    uint32_t h = weir_labels_hash(0, key, len), slots = weir_st->usage_slots;
    uint32_t *idx = weir_uidx(weir_st_me);
    uint32_t k = h % slots;
    for (; idx[k] != 0; k = (k + 1) % slots) {
        weir_usage_t *u = weir_usage(weir_st_me, idx[k] - 1);
        if (u->len == len && memcmp(u->key, key, len) == 0) return idx[k];
    }
    weir_part_head_t *ph = weir_part(weir_st_me);
    uint32_t i = atomic_load_explicit(&ph->nusage, memory_order_relaxed);
    if (i >= weir_st->max_usage) return weir_st->max_usage + 1;          /* the "other" key */
    weir_usage_t *u = weir_usage(weir_st_me, i);
    u->len = (uint32_t) len;
    memcpy(u->key, key, len);
    atomic_store_explicit(&u->state, 2, memory_order_release);
    idx[k] = i + 1;
    atomic_store_explicit(&ph->nusage, i + 1, memory_order_release);
    return i + 1;
}

static void
weir_bucket_add(weir_bucket_t *ring, int n, uint64_t stamp, const uint64_t *d)
{
    weir_bucket_t *b = &ring[stamp % (uint64_t) n];
    if (b->stamp != stamp) {
        memset(b->v, 0, sizeof(b->v));
        b->stamp = stamp;
    }
    for (int i = 0; i < WEIR_U_VALUES; i++) b->v[i] += d[i];
}

void
weir_stats_usage_add(uint32_t h, uint64_t now_s, const uint64_t *d, uint64_t last_ms)
{
    if (weir_st_me < 0 || h == 0 || h > weir_st->max_usage + 1) return;
    weir_usage_t *u = weir_usage(weir_st_me, h - 1);
    uint32_t q = atomic_load_explicit(&u->seq, memory_order_relaxed);
    atomic_store_explicit(&u->seq, q + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    weir_bucket_add(u->sec, WEIR_SEC_N, now_s, d);
    weir_bucket_add(u->min, WEIR_MIN_N, now_s / 60, d);
    weir_bucket_add(u->hour, WEIR_HOUR_N, now_s / 3600, d);
    if (last_ms > u->last_ms) u->last_ms = last_ms;
    atomic_store_explicit(&u->seq, q + 2, memory_order_release);
}

/* ---- readers ---------------------------------------------------------------- */

uint64_t
weir_stats_capacity(int which)
{
    if (weir_st == NULL) return 0;
    return (uint64_t) weir_st->nworkers * (which ? weir_st->max_usage + 1 : weir_st->max_series);
}

int
weir_stats_read(uint64_t i, weir_stats_row_t *out)
{
    if (i >= weir_stats_capacity(0)) return -1;
    int w = (int) (i / weir_st->max_series);
    uint32_t k = (uint32_t) (i % weir_st->max_series);
    if (k >= atomic_load_explicit(&weir_part(w)->nseries, memory_order_acquire)) return 0;
    weir_series_t *e = weir_series(w, k);
    if (atomic_load_explicit(&e->state, memory_order_acquire) != 2) return 0;
    out->kind = e->kind;
    out->len = e->len;
    memcpy(out->labels, e->labels, e->len);
    for (int j = 0; j < WEIR_STATS_VALUES; j++) out->v[j] = atomic_load_explicit(&e->v[j], memory_order_relaxed);
    return 1;
}

/* Sum the buckets of RING (N of them) stamped in (NOW - N, NOW] into V. */
static void
weir_ring_sum(const weir_bucket_t *ring, int n, uint64_t now, uint64_t *v)
{
    for (int b = 0; b < n; b++) {
        if (ring[b].stamp > now || ring[b].stamp + (uint64_t) n <= now) continue;
        for (int j = 0; j < WEIR_U_VALUES; j++) v[j] += ring[b].v[j];
    }
}

int
weir_stats_usage_read(uint64_t i, int range, uint64_t now_ms, weir_stats_usage_row_t *out)
{
    if (i >= weir_stats_capacity(1)) return -1;
    uint32_t per = weir_st->max_usage + 1;
    int w = (int) (i / per);
    uint32_t k = (uint32_t) (i % per);
    if (k < weir_st->max_usage && k >= atomic_load_explicit(&weir_part(w)->nusage, memory_order_acquire)) return 0;
    weir_usage_t *u = weir_usage(w, k);
    uint64_t now_s = now_ms / 1000;
    for (int t = 0; t < WEIR_STATS_SEQ_TRIES; t++) {
        uint32_t q = atomic_load_explicit(&u->seq, memory_order_acquire);
        if (q & 1) continue;
        memset(out->v, 0, sizeof(out->v));
        out->len = u->len;
        memcpy(out->key, u->key, WEIR_MIN(u->len, sizeof(out->key)));
        out->last_ms = u->last_ms;
        if (range == WEIR_RANGE_MINUTE) weir_ring_sum(u->sec, WEIR_SEC_N, now_s, out->v);
        else if (range == WEIR_RANGE_HOUR) weir_ring_sum(u->min, WEIR_MIN_N, now_s / 60, out->v);
        else weir_ring_sum(u->hour, WEIR_HOUR_N, now_s / 3600, out->v);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&u->seq, memory_order_relaxed) == q) {
            out->worker = (uint32_t) w;
            return 1;
        }
    }
    return 0;                                                      /* its writer died inside a write */
}

int
weir_stats_workers(void)
{
    return weir_st ? weir_st->nworkers : 0;
}

uint32_t
weir_stats_used(int which, int w)
{
    if (weir_st == NULL || w < 0 || w >= weir_st->nworkers) return 0;
    weir_part_head_t *ph = weir_part(w);
    return atomic_load_explicit(which ? &ph->nusage : &ph->nseries, memory_order_acquire);
}

uint64_t
weir_stats_reloads(int result)
{
    if (weir_st == NULL || result < 0 || result >= WEIR_RELOAD_RESULTS) return 0;
    return atomic_load(&weir_st->reloads[result]);
}

uint64_t
weir_stats_dropped(void)
{
    uint64_t n = 0;
    if (weir_st == NULL) return 0;
    for (int w = 0; w < weir_st->nworkers; w++) n += atomic_load(&weir_part(w)->dropped);
    return n;
}

size_t
weir_stats_sizeof(int which)
{
    return which ? sizeof(weir_stats_usage_row_t) : sizeof(weir_stats_row_t);
}
