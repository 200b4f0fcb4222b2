/*
 * limits_driver.c — runs core/limit.c from a script, with an injected
 * clock, for spec/01-unit/limits_spec.lua; also its benchmark.
 *
 * Build (the spec does it):
 *   cc -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -Icore \
 *      spec/support/limits_driver.c core/limit.c core/log.c $(pkg-config --cflags --libs openssl)
 *
 * Reads one command a line from stdin and prints one JSON line for each
 * (blank lines and lines starting with # are skipped). NAMEs name refs; DIR
 * is in, out or both; UNIT frames or bytes; KEY "-" makes a local ref.
 *
 *   init BUCKETS SLOTS [WORKERS]            map the zone        → {"rc":N}
 *   ref NAME KEY UNIT COUNT PERIOD_US BURST DIRS [NOW [SHARE]]   → {"rc":N,"index":I,"err":"…"}
 *        SHARE: local, open or closed (a shared ref's takes count as pending)
 *   take NOW DIR FRAMES BYTES NAME...       one frame           → {"rc":N,"retry":N}  (retry -1: never)
 *   burst NOW DIR FRAMES BYTES MAX NAME...  frames until one is refused (at most MAX)
 *                                                               → {"allowed":N,"rc":N,"retry":N}
 *   peek NAME NOW                                               → {"rc":N,"available":N,"full_in":N,"index":I}
 *   stats                                                       → the zone's counters
 *   race PROCS STOP NOW DIR FRAMES BYTES NAME...
 *        PROCS forked processes, started together, take frames at NOW until
 *        each has seen STOP refusals in a row
 *                          → {"allowed":[N,...],"total":N,"overlap":N}  (overlap: takes that saw
 *                            another process's progress since their own previous take)
 *   down 0|1                Redis down for this process (shared refs)   → {"rc":0}
 *   sturn NAME NOW ACTIVE IDLE   weir_limit_share_turn               → {"turn":N,"since":N}
 *   spending NAME           weir_limit_share_pending                 → {"pending":N}
 *   sapply NAME DEBT_US NOW weir_limit_share_apply                   → {"rc":N}
 *   worker ID               this process is worker ID (-1: none)     → {"rc":0}
 *   reclaim ID              weir_limits_reclaim                      → {"given":N}
 *   cturn NAME NOW ACTIVE IDLE   weir_conn_share_turn on NAME's count → {"turn":N,"count":N}
 *   cremote NAME N          other hosts hold N of NAME's key          → {"rc":0}
 *   cacq NAME KEY MAX       acquire a connection count          → {"rc":N}
 *   crel NAME               release it                          → {"rc":0}
 *   ccount KEY                                                  → {"count":N}
 *   crace PROCS ITERS KEY MAX
 *        PROCS processes acquire and release counts on KEY (at most MAX) in a
 *        pseudo-random pattern for ITERS steps each, then release all
 *                          → {"acquired":N,"declined":N,"released":N,"observed_max":N,"final":N}
 *   cfill PROCS KEY MAX     PROCS processes acquire on KEY until refused, holding
 *                          → {"acquired":[N,...],"total":N,"count":N,"final":N}
 *   bench PROCS ITERS NAME...
 *        ns per weir_limits_take of one frame (1 byte) on the named refs, the
 *        clock moving 1 µs a take; PROCS processes at once
 *                          → {"ns_per_take":[N,...],"refused":N}
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "limit.h"
#include "weir.h"

#define DRV_MAX_REFS  256
#define DRV_MAX_PROCS 8
#define DRV_MAX_ARGS  64

typedef struct {
    char             name[64];
    weir_limit_ref_t ref;
    weir_conn_ref_t  conn;
    uint32_t         cidx;      /* the slot of conn's key, kept after a release (cturn, cremote) */
} drv_ref_t;

static drv_ref_t drv_refs[DRV_MAX_REFS];
static int       drv_nrefs;

static drv_ref_t *
drv_find(const char *name, int create)
{
    for (int i = 0; i < drv_nrefs; i++)
        if (strcmp(drv_refs[i].name, name) == 0) return &drv_refs[i];
    if (!create || drv_nrefs == DRV_MAX_REFS) return NULL;
    drv_ref_t *d = &drv_refs[drv_nrefs++];
    snprintf(d->name, sizeof(d->name), "%s", name);
    d->conn.index = UINT32_MAX;
    d->cidx = UINT32_MAX;
    return d;
}

static int
drv_dir(const char *s)
{
    if (strcmp(s, "in") == 0) return WEIR_LIMIT_IN;
    if (strcmp(s, "out") == 0) return WEIR_LIMIT_OUT;
    return WEIR_LIMIT_BOTH;
}

static uint64_t
drv_u64(const char *s)
{
    return strtoull(s, NULL, 10);
}

static uint64_t
drv_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
}

/* Copy the named refs (ARGV[0..N)) into OUT; returns the count, -1 on an unknown name. */
static int
drv_gather(char **argv, int n, weir_limit_ref_t *out, drv_ref_t **src)
{
    for (int i = 0; i < n; i++) {
        src[i] = drv_find(argv[i], 0);
        if (src[i] == NULL) return -1;
        out[i] = src[i]->ref;
    }
    return n;
}

static void
drv_scatter(int n, const weir_limit_ref_t *refs, drv_ref_t **src)
{
    for (int i = 0; i < n; i++) src[i]->ref = refs[i];
}

/* shared by forked processes */
typedef struct {
    volatile int go;
    volatile int ready;
    uint64_t     progress[DRV_MAX_PROCS];
    uint64_t     result[DRV_MAX_PROCS][4];
    int64_t      open;               /* counts held now, as the processes see them */
    int64_t      open_max;
} drv_shared_t;

static drv_shared_t *
drv_shared(void)
{
    void *p = mmap(NULL, sizeof(drv_shared_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    return p;
}

static void
drv_barrier(drv_shared_t *sh)
{
    __atomic_fetch_add(&sh->ready, 1, __ATOMIC_ACQ_REL);
    while (!__atomic_load_n(&sh->go, __ATOMIC_ACQUIRE)) {}
}

static void
drv_start_and_wait(drv_shared_t *sh, int procs, pid_t *pids)
{
    while (__atomic_load_n(&sh->ready, __ATOMIC_ACQUIRE) < procs) {}
    __atomic_store_n(&sh->go, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < procs; i++) {
        int st;
        if (waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "child %d failed\n", i);
            exit(2);
        }
    }
}

static void
cmd_race(int argc, char **argv)
{
    int procs = atoi(argv[1]);
    uint64_t stop = drv_u64(argv[2]), now = drv_u64(argv[3]);
    int dir = drv_dir(argv[4]);
    uint64_t frames = drv_u64(argv[5]), bytes = drv_u64(argv[6]);
    int n = argc - 7;
    weir_limit_ref_t refs[DRV_MAX_ARGS];
    drv_ref_t *src[DRV_MAX_ARGS];
    if (procs < 1 || procs > DRV_MAX_PROCS || drv_gather(argv + 7, n, refs, src) < 0) {
        printf("{\"error\":\"bad race\"}\n");
        return;
    }
    drv_shared_t *sh = drv_shared();
    pid_t pids[DRV_MAX_PROCS];
    fflush(stdout);
    for (int p = 0; p < procs; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            uint64_t allowed = 0, refused = 0, overlap = 0, seen[DRV_MAX_PROCS] = { 0 };
            drv_barrier(sh);
            while (refused < stop) {
                if (weir_limits_take(refs, n, dir, frames, bytes, now, NULL) != WEIR_OK) {
                    refused++;
                    continue;
                }
                refused = 0;
                allowed++;
                __atomic_store_n(&sh->progress[p], allowed, __ATOMIC_RELAXED);
                for (int q = 0; q < procs; q++) {
                    if (q == p) continue;
                    uint64_t v = __atomic_load_n(&sh->progress[q], __ATOMIC_RELAXED);
                    if (v != seen[q]) {
                        overlap++;
                        seen[q] = v;
                    }
                }
            }
            sh->result[p][0] = allowed;
            sh->result[p][1] = overlap;
            _exit(0);
        }
    }
    drv_start_and_wait(sh, procs, pids);
    uint64_t total = 0, overlap = 0;
    printf("{\"allowed\":[");
    for (int p = 0; p < procs; p++) {
        printf("%s%" PRIu64, p ? "," : "", sh->result[p][0]);
        total += sh->result[p][0];
        overlap += sh->result[p][1];
    }
    printf("],\"total\":%" PRIu64 ",\"overlap\":%" PRIu64 "}\n", total, overlap);
    /* the processes' refs may have claimed new buckets: the parent's are as they were */
    drv_scatter(n, refs, src);
    munmap(sh, sizeof(*sh));
}

static void
cmd_crace(char **argv)
{
    int procs = atoi(argv[1]);
    uint64_t iters = drv_u64(argv[2]), max = drv_u64(argv[4]);
    const char *key = argv[3];
    if (procs < 1 || procs > DRV_MAX_PROCS) {
        printf("{\"error\":\"bad crace\"}\n");
        return;
    }
    drv_shared_t *sh = drv_shared();
    pid_t pids[DRV_MAX_PROCS];
    fflush(stdout);
    for (int p = 0; p < procs; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            weir_conn_ref_t held[256];
            int nheld = 0;
            uint64_t acquired = 0, declined = 0, released = 0, x = 0x9e3779b97f4a7c15ULL * (uint64_t) (p + 1);
            drv_barrier(sh);
            for (uint64_t i = 0; i < iters; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                if ((x & 3) != 0 && nheld < 256) {       /* acquire three times in four */
                    int rc = weir_conn_acquire(&held[nheld], key, strlen(key), max);
                    if (rc == WEIR_OK) {
                        int64_t o = __atomic_add_fetch(&sh->open, 1, __ATOMIC_ACQ_REL);
                        int64_t m = __atomic_load_n(&sh->open_max, __ATOMIC_RELAXED);
                        while (o > m && !__atomic_compare_exchange_n(&sh->open_max, &m, o, 0, __ATOMIC_ACQ_REL,
                                                                     __ATOMIC_RELAXED)) {}
                        nheld++;
                        acquired++;
                    } else if (rc == WEIR_DECLINED) {
                        declined++;
                    } else {
                        _exit(3);
                    }
                } else if (nheld > 0) {
                    int k = (int) (x % (uint64_t) nheld);
                    __atomic_sub_fetch(&sh->open, 1, __ATOMIC_ACQ_REL);
                    weir_conn_release(&held[k]);
                    held[k] = held[--nheld];
                    released++;
                }
            }
            while (nheld > 0) {
                __atomic_sub_fetch(&sh->open, 1, __ATOMIC_ACQ_REL);
                weir_conn_release(&held[--nheld]);
                released++;
            }
            sh->result[p][0] = acquired;
            sh->result[p][1] = declined;
            sh->result[p][2] = released;
            _exit(0);
        }
    }
    drv_start_and_wait(sh, procs, pids);
    uint64_t a = 0, d = 0, r = 0;
    for (int p = 0; p < procs; p++) {
        a += sh->result[p][0];
        d += sh->result[p][1];
        r += sh->result[p][2];
    }
    printf("{\"acquired\":%" PRIu64 ",\"declined\":%" PRIu64 ",\"released\":%" PRIu64
           ",\"observed_max\":%" PRId64 ",\"final\":%" PRIu64 "}\n",
           a, d, r, sh->open_max, weir_conn_count(key, strlen(key)));
    munmap(sh, sizeof(*sh));
}

static void
cmd_cfill(char **argv)
{
    int procs = atoi(argv[1]);
    const char *key = argv[2];
    uint64_t max = drv_u64(argv[3]);
    if (procs < 1 || procs > DRV_MAX_PROCS) {
        printf("{\"error\":\"bad cfill\"}\n");
        return;
    }
    drv_shared_t *sh = drv_shared();
    pid_t pids[DRV_MAX_PROCS];
    int release_pipe[2];
    if (pipe(release_pipe) != 0) exit(2);
    fflush(stdout);
    for (int p = 0; p < procs; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            close(release_pipe[1]);
            weir_conn_ref_t *held = calloc(max + 1, sizeof(*held));
            uint64_t n = 0, refused = 0;
            drv_barrier(sh);
            while (refused < 100 && n <= max) {
                if (weir_conn_acquire(&held[n], key, strlen(key), max) == WEIR_OK) n++;
                else refused++;
            }
            sh->result[p][0] = n;
            __atomic_fetch_add(&sh->result[DRV_MAX_PROCS - 1][3], 1, __ATOMIC_ACQ_REL);
            char c;
            while (read(release_pipe[0], &c, 1) < 0 && errno == EINTR) {}    /* EOF: release */
            for (uint64_t i = 0; i < n; i++) weir_conn_release(&held[i]);
            free(held);
            _exit(0);
        }
    }
    close(release_pipe[0]);
    while (__atomic_load_n(&sh->ready, __ATOMIC_ACQUIRE) < procs) {}
    __atomic_store_n(&sh->go, 1, __ATOMIC_RELEASE);
    while (__atomic_load_n(&sh->result[DRV_MAX_PROCS - 1][3], __ATOMIC_ACQUIRE) < (uint64_t) procs) {}
    uint64_t held_now = weir_conn_count(key, strlen(key)), total = 0;
    close(release_pipe[1]);
    for (int p = 0; p < procs; p++) {
        int st;
        if (waitpid(pids[p], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) exit(2);
    }
    printf("{\"acquired\":[");
    for (int p = 0; p < procs; p++) {
        printf("%s%" PRIu64, p ? "," : "", sh->result[p][0]);
        total += sh->result[p][0];
    }
    printf("],\"total\":%" PRIu64 ",\"count\":%" PRIu64 ",\"final\":%" PRIu64 "}\n", total, held_now,
           weir_conn_count(key, strlen(key)));
    munmap(sh, sizeof(*sh));
}

static void
cmd_bench(int argc, char **argv)
{
    int procs = atoi(argv[1]);
    uint64_t iters = drv_u64(argv[2]);
    int n = argc - 3;
    weir_limit_ref_t refs[DRV_MAX_ARGS];
    drv_ref_t *src[DRV_MAX_ARGS];
    if (procs < 1 || procs > DRV_MAX_PROCS || drv_gather(argv + 3, n, refs, src) < 0) {
        printf("{\"error\":\"bad bench\"}\n");
        return;
    }
    drv_shared_t *sh = drv_shared();
    pid_t pids[DRV_MAX_PROCS];
    fflush(stdout);
    for (int p = 0; p < procs; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            uint64_t now = weir_limits_now_us(), refused = 0;
            drv_barrier(sh);
            uint64_t t0 = drv_ns();
            for (uint64_t i = 0; i < iters; i++)
                if (weir_limits_take(refs, n, WEIR_LIMIT_IN, 1, 1, now + i, NULL) != WEIR_OK) refused++;
            sh->result[p][0] = (drv_ns() - t0) * 10 / iters;       /* tenths of ns */
            sh->result[p][1] = refused;
            _exit(0);
        }
    }
    drv_start_and_wait(sh, procs, pids);
    uint64_t refused = 0;
    printf("{\"ns_per_take\":[");
    for (int p = 0; p < procs; p++) {
        printf("%s%" PRIu64 ".%" PRIu64, p ? "," : "", sh->result[p][0] / 10, sh->result[p][0] % 10);
        refused += sh->result[p][1];
    }
    printf("],\"refused\":%" PRIu64 "}\n", refused);
    munmap(sh, sizeof(*sh));
}

static void
drv_command(int argc, char **argv)
{
    const char *c = argv[0];
    if (strcmp(c, "init") == 0 && (argc == 3 || argc == 4)) {
        printf("{\"rc\":%d}\n", weir_limits_init(drv_u64(argv[1]), drv_u64(argv[2]), argc == 4 ? atoi(argv[3]) : 0));
    } else if (strcmp(c, "ref") == 0 && argc >= 8 && argc <= 10) {
        drv_ref_t *d = drv_find(argv[1], 1);
        weir_limit_spec_t sp = {
            .unit = strcmp(argv[3], "bytes") == 0 ? WEIR_LIMIT_BYTES : WEIR_LIMIT_FRAMES,
            .count = drv_u64(argv[4]), .period_us = drv_u64(argv[5]), .burst = drv_u64(argv[6]),
            .dirs = drv_dir(argv[7]),
            .share = argc < 10 ? WEIR_LIMIT_LOCAL : strcmp(argv[9], "open") == 0 ? WEIR_LIMIT_SHARED_OPEN
                   : strcmp(argv[9], "closed") == 0 ? WEIR_LIMIT_SHARED_CLOSED : WEIR_LIMIT_LOCAL,
        };
        char err[256] = "";
        const char *key = strcmp(argv[2], "-") == 0 ? NULL : argv[2];
        int rc = weir_limit_resolve(&d->ref, key, key ? strlen(key) : 0, &sp, argc >= 9 ? drv_u64(argv[8]) : 0, err,
                                    sizeof(err));
        printf("{\"rc\":%d,\"index\":%" PRIu32 ",\"err\":\"%s\"}\n", rc, d->ref.index, err);
    } else if ((strcmp(c, "take") == 0 && argc >= 6) || (strcmp(c, "burst") == 0 && argc >= 7)) {
        int is_burst = c[0] == 'b', first = is_burst ? 6 : 5, n = argc - first;
        uint64_t now = drv_u64(argv[1]), retry = 0, allowed = 0, max = is_burst ? drv_u64(argv[5]) : 1;
        weir_limit_ref_t refs[DRV_MAX_ARGS];
        drv_ref_t *src[DRV_MAX_ARGS];
        if (n > DRV_MAX_ARGS || drv_gather(argv + first, n, refs, src) < 0) {
            printf("{\"error\":\"unknown ref\"}\n");
            return;
        }
        int rc = WEIR_OK;
        while (allowed < max) {
            rc = weir_limits_take(refs, n, drv_dir(argv[2]), drv_u64(argv[3]), drv_u64(argv[4]), now, &retry);
            if (rc != WEIR_OK) break;
            allowed++;
        }
        drv_scatter(n, refs, src);
        /* retry: -1 for WEIR_LIMIT_NEVER */
        int64_t r = rc != WEIR_OK ? (retry == WEIR_LIMIT_NEVER ? -1 : (int64_t) retry) : 0;
        if (is_burst)
            printf("{\"allowed\":%" PRIu64 ",\"rc\":%d,\"retry\":%" PRId64 "}\n", allowed, rc, r);
        else
            printf("{\"rc\":%d,\"retry\":%" PRId64 "}\n", rc, r);
    } else if (strcmp(c, "peek") == 0 && argc == 3) {
        drv_ref_t *d = drv_find(argv[1], 0);
        uint64_t avail = 0, full_in = 0;
        if (d == NULL) {
            printf("{\"error\":\"unknown ref\"}\n");
            return;
        }
        int rc = weir_limits_peek(&d->ref, drv_u64(argv[2]), &avail, &full_in);
        printf("{\"rc\":%d,\"available\":%" PRIu64 ",\"full_in\":%" PRIu64 ",\"index\":%" PRIu32 "}\n", rc, avail,
               full_in, d->ref.index);
    } else if (strcmp(c, "stats") == 0) {
        weir_limits_stats_t st;
        weir_limits_stats(&st);
        printf("{\"buckets\":%" PRIu64 ",\"buckets_used\":%" PRIu64 ",\"claims\":%" PRIu64
               ",\"evictions_full\":%" PRIu64 ",\"evictions_live\":%" PRIu64 ",\"conn_slots\":%" PRIu64
               ",\"conn_slots_used\":%" PRIu64 ",\"conn_table_full\":%" PRIu64 ",\"conn_reclaimed\":%" PRIu64
               ",\"shared_refused\":%" PRIu64 "}\n",
               st.buckets, st.buckets_used, st.claims, st.evictions_full, st.evictions_live, st.conn_slots,
               st.conn_slots_used, st.conn_table_full, st.conn_reclaimed, st.shared_refused);
    } else if (strcmp(c, "race") == 0 && argc >= 8) {
        cmd_race(argc, argv);
    } else if (strcmp(c, "down") == 0 && argc == 2) {
        weir_limits_set_down(atoi(argv[1]));
        printf("{\"rc\":0}\n");
    } else if (strcmp(c, "sturn") == 0 && argc == 5) {
        drv_ref_t *d = drv_find(argv[1], 0);
        uint64_t since = 0;
        int t = d ? weir_limit_share_turn(&d->ref, drv_u64(argv[2]), drv_u64(argv[3]), drv_u64(argv[4]), &since) : -1;
        printf("{\"turn\":%d,\"since\":%" PRIu64 "}\n", t, since);
    } else if (strcmp(c, "spending") == 0 && argc == 2) {
        drv_ref_t *d = drv_find(argv[1], 0);
        printf("{\"pending\":%" PRIu64 "}\n", d ? weir_limit_share_pending(&d->ref) : 0);
    } else if (strcmp(c, "sapply") == 0 && argc == 4) {
        drv_ref_t *d = drv_find(argv[1], 0);
        printf("{\"rc\":%d}\n", d ? weir_limit_share_apply(&d->ref, drv_u64(argv[2]), drv_u64(argv[3])) : -9);
    } else if (strcmp(c, "worker") == 0 && argc == 2) {
        weir_limits_worker(atoi(argv[1]));
        printf("{\"rc\":0}\n");
    } else if (strcmp(c, "reclaim") == 0 && argc == 2) {
        printf("{\"given\":%" PRIu64 "}\n", weir_limits_reclaim(atoi(argv[1])));
    } else if (strcmp(c, "cturn") == 0 && argc == 5) {
        drv_ref_t *d = drv_find(argv[1], 0);
        uint64_t count = 0;
        uint32_t idx = d ? d->cidx : UINT32_MAX;
        int t = d ? weir_conn_share_turn(d->conn.key, &idx, drv_u64(argv[2]), drv_u64(argv[3]), drv_u64(argv[4]),
                                         &count) : -1;
        if (d) d->cidx = idx;
        printf("{\"turn\":%d,\"count\":%" PRIu64 "}\n", t, count);
    } else if (strcmp(c, "cremote") == 0 && argc == 3) {
        drv_ref_t *d = drv_find(argv[1], 0);
        if (d) weir_conn_share_remote(d->conn.key, d->cidx, drv_u64(argv[2]));
        printf("{\"rc\":%d}\n", d ? 0 : -1);
    } else if (strcmp(c, "cacq") == 0 && argc == 4) {
        drv_ref_t *d = drv_find(argv[1], 1);
        int rc = weir_conn_acquire(&d->conn, argv[2], strlen(argv[2]), drv_u64(argv[3]));
        if (rc == WEIR_OK) d->cidx = d->conn.index;
        printf("{\"rc\":%d}\n", rc);
    } else if (strcmp(c, "crel") == 0 && argc == 2) {
        drv_ref_t *d = drv_find(argv[1], 0);
        if (d) weir_conn_release(&d->conn);
        printf("{\"rc\":%d}\n", d ? 0 : -1);
    } else if (strcmp(c, "ccount") == 0 && argc == 2) {
        printf("{\"count\":%" PRIu64 "}\n", weir_conn_count(argv[1], strlen(argv[1])));
    } else if (strcmp(c, "crace") == 0 && argc == 5) {
        cmd_crace(argv);
    } else if (strcmp(c, "cfill") == 0 && argc == 4) {
        cmd_cfill(argv);
    } else if (strcmp(c, "bench") == 0 && argc >= 4) {
        cmd_bench(argc, argv);
    } else {
        printf("{\"error\":\"bad command: %s\"}\n", c);
    }
}

int
main(void)
{
    char line[4096];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof(line), stdin)) {
        char *argv[DRV_MAX_ARGS + 8];
        int argc = 0;
        for (char *tok = strtok(line, " \t\r\n"); tok && argc < DRV_MAX_ARGS + 8; tok = strtok(NULL, " \t\r\n"))
            argv[argc++] = tok;
        if (argc == 0 || argv[0][0] == '#') continue;
        drv_command(argc, argv);
    }
    weir_limits_cleanup();
    return 0;
}
