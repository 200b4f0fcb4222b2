/*
 * analytics.h — the events of the `analytics` policy (docs/analytics.md):
 * one JSON line per event, built in C into per-worker buffers, one buffer
 * per set of sinks, and handed to the Lua sinks (lua/weir/analytics.lua)
 * once per interval with one call. Nothing runs per frame: the relay's
 * per-leg counters are read once per interval for the connections that
 * turned analytics on (ctx:analytics), and their differences become one
 * `messages` (and `throttled`) event per connection that moved.
 *
 * The session rooms call the weir_analytics_* event functions below only
 * for sessions whose s->an is set; the policy engine turns it on through
 * weir_conn_analytics (conn.h).
 */
#ifndef WEIR_ANALYTICS_H
#define WEIR_ANALYTICS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "conn.h"

#define WEIR_ANALYTICS_SETS     64                  /* sink sets a worker may name (set ids 1..63) */
#define WEIR_ANALYTICS_BUF_MAX  (16 * 1024 * 1024)  /* bytes one set's batch may hold; more is lost, counted */

typedef struct weir_analytics_conn_s weir_analytics_conn_t;

/* Start the worker's analytics on LOOP: TELL("analytics") is called once
 * per interval (set by the Lua side, weir_ffi_analytics_interval) while
 * the batches are readable with weir_ffi_analytics_batch. */
void weir_analytics_init(uv_loop_t *loop, void (*tell)(const char *event));

/* The worker stops (its loop closed): the last events (closes of the
 * sessions cut) are handed over with TELL("analytics-final"), then
 * everything is freed. */
void weir_analytics_cleanup(void);

/* S sent its client the 101: the `connect` event (handshake latency). */
void weir_analytics_connect(weir_session_t *s);

/* S's handshake was refused with HTTP STATUS and the error JSON
 * JSON[0..LEN) (MESSAGE: the policy's message): an `auth_failure` event
 * when STATUS is 401 or 403. */
void weir_analytics_refused(weir_session_t *s, int status, const char *json, size_t len, const char *message);

/* A policy failed on S (a WEIR_V_FAIL verdict V): the `policy_error` event. */
void weir_analytics_policy_error(weir_session_t *s, const weir_verdict_t *v);

/* S is gone (ended as END): its last `messages`/`throttled` events and
 * the `close` event; S's analytics state is freed (s->an is NULL after). */
void weir_analytics_close(weir_session_t *s, const weir_conn_end_t *end);

#endif
