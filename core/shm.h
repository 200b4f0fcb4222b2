/*
 * shm.h — state the workers of one host share, in memory the master maps
 * before it forks them (so a restarted worker sees it too).
 *
 * Today it holds one-time tickets: a browser trades its bearer token for a
 * ticket on one worker and opens its WebSocket, with `?ticket=`, on any
 * worker. A ticket is stored by its SHA-256 (never the ticket itself), bound
 * to one API version (SHA-256 of "api\0version"), expires after its TTL and
 * is consumed by the first take.
 *
 * Every access holds one process-shared robust mutex: the critical sections
 * are a probe of at most WEIR_TICKET_PROBE slots and one copy, and a worker
 * that dies holding it does not block the others.
 */
#ifndef WEIR_SHM_H
#define WEIR_SHM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define WEIR_TICKET_SLOTS 2048      /* tickets waiting at once, per host */
#define WEIR_TICKET_DATA  3072      /* bytes of a ticket's record (lua/weir/runtime.lua TICKET_MAX) */
#define WEIR_TICKET_PROBE 64        /* slots looked at per put or take */

/* Map the shared memory (the master, before forking). Returns WEIR_OK or
 * WEIR_ERROR (logged). */
int  weir_shm_init(void);

/* Unmap it (at exit). */
void weir_shm_cleanup(void);

/*
 * Store a ticket: HASH and SCOPE are 32 bytes each, DATA[0..LEN) its record,
 * TTL_MS its life. Returns WEIR_OK, WEIR_DECLINED when no slot is free near
 * its place (too many tickets waiting), WEIR_ERROR when LEN is too large or
 * there is no shared memory.
 */
int  weir_ticket_put(const uint8_t *hash, const uint8_t *scope, const void *data, size_t len, uint64_t ttl_ms);

/*
 * Take the ticket HASH for SCOPE: copy its record into OUT (CAP bytes) and
 * forget it. Returns the record's length, or -1 when there is no such live
 * ticket for that scope (a ticket of another scope is left in place).
 */
ssize_t weir_ticket_take(const uint8_t *hash, const uint8_t *scope, void *out, size_t cap);

#endif
