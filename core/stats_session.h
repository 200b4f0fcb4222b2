/*
 * stats_session.h — what a session counts in the host's metrics and usage
 * store (stats.h), and when: one call per event of its life, none per frame.
 */
#ifndef WEIR_STATS_SESSION_H
#define WEIR_STATS_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "proxy.h"


/* S is open (the client got the backend's 101): its handshake duration and
 * one more connection of its consumer. */
void weir_stats_opened(weir_session_t *s);

/* Add what S counted since its last flush (the worker's tick; WALL: the wall
 * clock's ms). Nothing to do for a session whose counters did not move. */
void weir_stats_flush(weir_session_t *s, uint64_t wall);

/* S ends (its free): a last flush, its close (code, side) and duration, or
 * the refusal of its handshake. */
void weir_stats_end(weir_session_t *s);

/* on_handshake refused S with STATUS (an HTTP status or a close code) and
 * the error JSON P[0..LEN): a 401 or 403 is an auth failure, its reason the
 * error's problem type. */
void weir_stats_refused(weir_session_t *s, int status, const char *p, size_t len);

/* S's backend could not be used (weir_bad_gateway). */
void weir_stats_backend_failed(weir_session_t *s);

/* A policy (POLICY: its name, NULL: unknown) failed on S. */
void weir_stats_policy_error(weir_session_t *s, const char *policy);

/* S's consumer changed: its series are looked up again at the next flush. */
void weir_stats_consumer(weir_session_t *s);

#endif
