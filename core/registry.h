/*
 * registry.h — what the host knows of itself, in shared memory the master
 * maps before it forks: its workers (pid, start), the configuration's
 * generation and the last reload's result (written by the master), and one
 * slot per open client connection (written by the worker that holds it).
 * The admin API of any worker reads it to list and describe every
 * connection of the host without asking the other workers.
 *
 * Each worker owns a fixed range of slots (its share of
 * limits.max_connections at start, plus one), so writers never contend;
 * readers see a slot whole through its sequence number (odd while it is
 * being written: retry). The counters of a slot (frames, bytes, last
 * activity) are copied from the session at each worker tick, not per frame.
 */
#ifndef WEIR_REGISTRY_H
#define WEIR_REGISTRY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define WEIR_REG_REPORT_MAX 8192      /* bytes of the last reload's report kept */
#define WEIR_REG_BUS_NAME   48        /* a worker's command socket name (bus.c), with its NUL */

/* One connection, as a copy read from the registry. */
typedef struct {
    uint64_t  n;                      /* the worker's connection number: its name is "w<worker>-<n>" */
    int       worker;
    uint32_t  slot;
    uint64_t  since_ms;               /* wall clock, ms since the epoch */
    uint64_t  last_ms;                /* last data frame either way (wall clock, ms); as of the last tick */
    uint64_t  frames_in, bytes_in, frames_out, bytes_out;    /* as of the last tick */
    uint16_t  peer_port;
    uint8_t   tls;
    char      peer_ip[48];
    char      api[128];
    char      version[64];
    char      application[128];
    char      subscriber[128];
    char      key_type[16];
    char      tier[64];
} weir_reg_conn_t;

/* The host's status, as a copy. */
typedef struct {
    uint64_t  started_ms;             /* wall clock: when the master started */
    uint64_t  generation;             /* configurations applied: 1 at start, +1 per reload that applied */
    uint64_t  reload_ms;              /* 0: no reload yet */
    char      reload_result[16];      /* "applied", "partial", "refused" */
    char      reload_report[WEIR_REG_REPORT_MAX];
    int       nworkers;
} weir_reg_status_t;

/* Map the registry for NWORKERS workers of PER_WORKER slots each (the
 * master, before forking). Returns WEIR_OK or WEIR_ERROR (logged). */
int  weir_registry_init(int nworkers, uint32_t per_worker);
void weir_registry_cleanup(void);

/* The master: a worker slot's process started (PID) or stopped (0: its
 * connection slots are emptied). */
void weir_registry_worker(int worker, pid_t pid);

/* The master: a reload ended with RESULT ("applied", "partial", "refused")
 * and REPORT; an applied or partial one counts one more generation. */
void weir_registry_reloaded(const char *result, const char *report, size_t len);

/* Copy the status into OUT. */
void weir_registry_status(weir_reg_status_t *out);

/* Worker W's pid, 0 when not running or out of range. */
pid_t weir_registry_pid(int worker);

/* Worker WORKER's command socket (bus.c) is NAME: a name made anew by each
 * worker that starts, so that no other process can take it in advance. */
void weir_registry_set_bus(int worker, const char *name);

/* Copy worker WORKER's command socket name into OUT (LEN >=
 * WEIR_REG_BUS_NAME). WEIR_ERROR: none (not running, or not bound yet). */
int  weir_registry_bus(int worker, char *out, size_t len);

/* Slots of one worker. */
uint32_t weir_registry_per_worker(void);

/* ---- a worker's own slots ---------------------------------------------- */

/* Worker W starts: every slot of it is free (what a worker that died left
 * there is gone). Returns WEIR_OK, or WEIR_ERROR when out of memory. */
int  weir_registry_attach(int worker);

/* Take a free slot of worker W for connection N; returns it, or -1 when
 * every slot of W is taken (the connection is not listed). */
int32_t weir_registry_open(int worker, uint64_t n, const char *api, const char *version, const char *peer_ip,
                           uint16_t peer_port, int tls);

/* Set SLOT's consumer (any field NULL: unknown). */
void weir_registry_consumer(int worker, int32_t slot, const char *application, const char *subscriber,
                            const char *key_type, const char *tier);

/* Copy the counters of SLOT. */
void weir_registry_counters(int worker, int32_t slot, uint64_t last_ms, uint64_t frames_in, uint64_t bytes_in,
                            uint64_t frames_out, uint64_t bytes_out);

/* SLOT is free again. */
void weir_registry_close(int worker, int32_t slot);

/* ---- readers ------------------------------------------------------------ */

/* Read the slot at global index I (worker * per_worker + slot) into OUT.
 * Returns 1 when it holds a connection, 0 when free, -1 past the end. */
int  weir_registry_read(uint64_t i, weir_reg_conn_t *out);

/* sizeof(weir_reg_conn_t) (WHICH 0) or sizeof(weir_reg_status_t) (1): the
 * admin API checks its FFI copies of them. */
size_t weir_registry_sizeof(int which);

#endif
