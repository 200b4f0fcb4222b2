/*
 * registry.c — the host's registry of workers and open connections, in
 * shared memory (see registry.h).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "log.h"
#include "registry.h"
#include "weir.h"

typedef struct {
    _Atomic uint32_t seq;             /* odd while being written */
    uint32_t         used;
    weir_reg_conn_t  c;
} weir_reg_slot_t;

typedef struct {
    _Atomic uint32_t seq;
    weir_reg_status_t st;
} weir_reg_head_t;

typedef struct {
    _Atomic int32_t  pid;
    _Atomic uint32_t bus_seq;         /* guards bus, as a slot's seq */
    char             bus[WEIR_REG_BUS_NAME];
} weir_reg_worker_t;

static weir_reg_head_t    *weir_reg_head;
static weir_reg_worker_t  *weir_reg_workers;
static weir_reg_slot_t    *weir_reg_slots;
static size_t              weir_reg_size;
static int                 weir_reg_nworkers;
static uint32_t            weir_reg_per;

/* a worker's free slots (its own memory: rebuilt when it starts) */
static uint32_t           *weir_reg_free;
static uint32_t            weir_reg_nfree;
static int                 weir_reg_free_of = -1;

static uint64_t
weir_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static void
weir_seq_begin(_Atomic uint32_t *seq)
{
    uint32_t s = atomic_load_explicit(seq, memory_order_relaxed);
    atomic_store_explicit(seq, s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
}

static void
weir_seq_end(_Atomic uint32_t *seq)
{
    uint32_t s = atomic_load_explicit(seq, memory_order_relaxed);
    atomic_store_explicit(seq, s + 1, memory_order_release);
}

#define WEIR_SEQ_TRIES 100000      /* a writer holds a slot for a few copies: past this, it died in there */

/* Copy LEN bytes at SRC, guarded by SEQ, into DST: a consistent copy.
 * Returns WEIR_OK, or WEIR_ERROR (DST zeroed) when no consistent copy came
 * (its writer died while writing). */
static int
weir_seq_read(_Atomic uint32_t *seq, void *dst, const void *src, size_t len)
{
    for (int i = 0; i < WEIR_SEQ_TRIES; i++) {
        uint32_t s1 = atomic_load_explicit(seq, memory_order_acquire);
        if (s1 & 1) continue;
        memcpy(dst, src, len);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(seq, memory_order_relaxed) == s1) return WEIR_OK;
    }
    memset(dst, 0, len);
    return WEIR_ERROR;
}

/* Empty slot S whatever its writer left: a worker that died inside a write
 * leaves its sequence odd, and readers would wait on it forever. */
static void
weir_slot_reset(weir_reg_slot_t *s)
{
    uint32_t q = atomic_load_explicit(&s->seq, memory_order_relaxed);
    atomic_store_explicit(&s->seq, (q | 1u) + 1u, memory_order_relaxed);     /* odd now: being written */
    atomic_thread_fence(memory_order_release);
    s->used = 0;
    atomic_store_explicit(&s->seq, (q | 1u) + 2u, memory_order_release);      /* even: whole */
}

static void
weir_copy_str(char *dst, size_t cap, const char *src)
{
    if (src == NULL) {
        dst[0] = '\0';
        return;
    }
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int
weir_registry_init(int nworkers, uint32_t per_worker)
{
    if (weir_reg_head != NULL) return WEIR_OK;
    size_t head = (sizeof(weir_reg_head_t) + 63) & ~(size_t) 63;
    size_t workers = ((size_t) nworkers * sizeof(weir_reg_worker_t) + 63) & ~(size_t) 63;
    size_t size = head + workers + (size_t) nworkers * per_worker * sizeof(weir_reg_slot_t);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        weir_log(WEIR_LOG_ERROR, "cannot map shared memory", "\"error\":\"%s\"", strerror(errno));
        return WEIR_ERROR;
    }
    weir_reg_head = p;
    weir_reg_workers = (weir_reg_worker_t *) ((char *) p + head);
    weir_reg_slots = (weir_reg_slot_t *) ((char *) p + head + workers);
    weir_reg_size = size;
    weir_reg_nworkers = nworkers;
    weir_reg_per = per_worker;
    weir_reg_head->st.started_ms = weir_wall_ms();
    weir_reg_head->st.generation = 1;
    weir_reg_head->st.nworkers = nworkers;
    return WEIR_OK;
}

void
weir_registry_cleanup(void)
{
    if (weir_reg_head != NULL) munmap(weir_reg_head, weir_reg_size);
    weir_reg_head = NULL;
    weir_reg_workers = NULL;
    weir_reg_slots = NULL;
    free(weir_reg_free);
    weir_reg_free = NULL;
    weir_reg_free_of = -1;
}

static weir_reg_slot_t *
weir_reg_slot(int worker, int32_t slot)
{
    if (weir_reg_slots == NULL || worker < 0 || worker >= weir_reg_nworkers || slot < 0
        || (uint32_t) slot >= weir_reg_per)
        return NULL;
    return &weir_reg_slots[(size_t) worker * weir_reg_per + (uint32_t) slot];
}

void
weir_registry_worker(int worker, pid_t pid)
{
    if (weir_reg_workers == NULL || worker < 0 || worker >= weir_reg_nworkers) return;
    atomic_store(&weir_reg_workers[worker].pid, (int32_t) pid);
    if (pid != 0) return;
    weir_registry_set_bus(worker, "");
    for (uint32_t i = 0; i < weir_reg_per; i++) {
        weir_reg_slot_t *s = weir_reg_slot(worker, (int32_t) i);
        if (s->used || (atomic_load(&s->seq) & 1)) weir_slot_reset(s);
    }
}

pid_t
weir_registry_pid(int worker)
{
    if (weir_reg_workers == NULL || worker < 0 || worker >= weir_reg_nworkers) return 0;
    return (pid_t) atomic_load(&weir_reg_workers[worker].pid);
}

uint32_t
weir_registry_per_worker(void)
{
    return weir_reg_per;
}

void
weir_registry_reloaded(const char *result, const char *report, size_t len)
{
    if (weir_reg_head == NULL) return;
    weir_reg_status_t *st = &weir_reg_head->st;
    weir_seq_begin(&weir_reg_head->seq);
    if (strcmp(result, "refused") != 0) st->generation++;
    st->reload_ms = weir_wall_ms();
    weir_copy_str(st->reload_result, sizeof(st->reload_result), result);
    len = WEIR_MIN(len, sizeof(st->reload_report) - 1);
    memcpy(st->reload_report, report, len);
    st->reload_report[len] = '\0';
    weir_seq_end(&weir_reg_head->seq);
}

void
weir_registry_status(weir_reg_status_t *out)
{
    memset(out, 0, sizeof(*out));
    if (weir_reg_head == NULL) return;
    weir_seq_read(&weir_reg_head->seq, out, &weir_reg_head->st, sizeof(*out));
}

int
weir_registry_attach(int worker)
{
    if (weir_reg_slots == NULL || worker < 0 || worker >= weir_reg_nworkers) return WEIR_ERROR;
    if (weir_reg_free_of == worker) return WEIR_OK;
    free(weir_reg_free);
    weir_reg_free = malloc((size_t) weir_reg_per * sizeof(uint32_t));
    if (weir_reg_free == NULL) return WEIR_ERROR;
    weir_reg_nfree = 0;
    for (uint32_t i = weir_reg_per; i-- > 0;) {       /* lowest slots first: fewer pages touched */
        weir_reg_slot_t *s = weir_reg_slot(worker, (int32_t) i);
        if (s->used || (atomic_load(&s->seq) & 1)) weir_slot_reset(s);
        weir_reg_free[weir_reg_nfree++] = i;
    }
    weir_reg_free_of = worker;
    return WEIR_OK;
}

int32_t
weir_registry_open(int worker, uint64_t n, const char *api, const char *version, const char *peer_ip,
                   uint16_t peer_port, int tls)
{
    if (weir_reg_slots == NULL || worker < 0 || worker >= weir_reg_nworkers) return -1;
    if (weir_registry_attach(worker) != WEIR_OK || weir_reg_nfree == 0) return -1;
    uint32_t i = weir_reg_free[--weir_reg_nfree];
    weir_reg_slot_t *s = weir_reg_slot(worker, (int32_t) i);
    if (s == NULL) return -1;
    weir_seq_begin(&s->seq);
    memset(&s->c, 0, sizeof(s->c));
    s->c.n = n;
    s->c.worker = worker;
    s->c.slot = i;
    s->c.since_ms = s->c.last_ms = weir_wall_ms();
    s->c.peer_port = peer_port;
    s->c.tls = (uint8_t) (tls != 0);
    weir_copy_str(s->c.peer_ip, sizeof(s->c.peer_ip), peer_ip);
    weir_copy_str(s->c.api, sizeof(s->c.api), api);
    weir_copy_str(s->c.version, sizeof(s->c.version), version);
    s->used = 1;
    weir_seq_end(&s->seq);
    return (int32_t) i;
}

void
weir_registry_consumer(int worker, int32_t slot, const char *application, const char *subscriber,
                       const char *key_type, const char *tier)
{
    weir_reg_slot_t *s = weir_reg_slot(worker, slot);
    if (s == NULL || !s->used) return;
    weir_seq_begin(&s->seq);
    weir_copy_str(s->c.application, sizeof(s->c.application), application);
    weir_copy_str(s->c.subscriber, sizeof(s->c.subscriber), subscriber);
    weir_copy_str(s->c.key_type, sizeof(s->c.key_type), key_type);
    weir_copy_str(s->c.tier, sizeof(s->c.tier), tier);
    weir_seq_end(&s->seq);
}

void
weir_registry_counters(int worker, int32_t slot, uint64_t last_ms, uint64_t frames_in, uint64_t bytes_in,
                       uint64_t frames_out, uint64_t bytes_out)
{
    weir_reg_slot_t *s = weir_reg_slot(worker, slot);
    if (s == NULL || !s->used) return;
    if (s->c.frames_in == frames_in && s->c.frames_out == frames_out && s->c.last_ms >= last_ms) return;
    weir_seq_begin(&s->seq);
    if (last_ms > s->c.last_ms) s->c.last_ms = last_ms;
    s->c.frames_in = frames_in;
    s->c.bytes_in = bytes_in;
    s->c.frames_out = frames_out;
    s->c.bytes_out = bytes_out;
    weir_seq_end(&s->seq);
}

void
weir_registry_close(int worker, int32_t slot)
{
    weir_reg_slot_t *s = weir_reg_slot(worker, slot);
    if (s == NULL || !s->used) return;
    weir_seq_begin(&s->seq);
    s->used = 0;
    weir_seq_end(&s->seq);
    if (weir_reg_free_of == worker && weir_reg_nfree < weir_reg_per) weir_reg_free[weir_reg_nfree++] = (uint32_t) slot;
}

int
weir_registry_read(uint64_t i, weir_reg_conn_t *out)
{
    if (weir_reg_slots == NULL || i >= (uint64_t) weir_reg_nworkers * weir_reg_per) return -1;
    weir_reg_slot_t *s = &weir_reg_slots[i];
    struct { uint32_t used; weir_reg_conn_t c; } copy;
    /* a free slot is told by its used flag alone: no copy of the rest */
    if (!s->used) return 0;
    copy.used = 0;
    for (int k = 0; k < WEIR_SEQ_TRIES; k++) {
        uint32_t s1 = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (s1 & 1) continue;
        copy.used = s->used;
        if (copy.used) memcpy(&copy.c, &s->c, sizeof(copy.c));
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&s->seq, memory_order_relaxed) == s1) break;
        copy.used = 0;
    }
    if (!copy.used) return 0;          /* free, or its writer died inside a write: not listed */
    *out = copy.c;
    return 1;
}

size_t
weir_registry_sizeof(int which)
{
    return which ? sizeof(weir_reg_status_t) : sizeof(weir_reg_conn_t);
}

void
weir_registry_set_bus(int worker, const char *name)
{
    if (weir_reg_workers == NULL || worker < 0 || worker >= weir_reg_nworkers) return;
    weir_reg_worker_t *w = &weir_reg_workers[worker];
    weir_seq_begin(&w->bus_seq);
    weir_copy_str(w->bus, sizeof(w->bus), name);
    weir_seq_end(&w->bus_seq);
}

int
weir_registry_bus(int worker, char *out, size_t len)
{
    char copy[WEIR_REG_BUS_NAME];
    if (weir_reg_workers == NULL || worker < 0 || worker >= weir_reg_nworkers || len < sizeof(copy)) return WEIR_ERROR;
    weir_reg_worker_t *w = &weir_reg_workers[worker];
    if (weir_seq_read(&w->bus_seq, copy, w->bus, sizeof(copy)) != WEIR_OK || copy[0] == '\0') return WEIR_ERROR;
    memcpy(out, copy, sizeof(copy));
    out[sizeof(copy) - 1] = '\0';
    return WEIR_OK;
}
