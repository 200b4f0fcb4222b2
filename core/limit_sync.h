/*
 * limit_sync.h — the host's shared limits and connection counts kept in
 * step with the other hosts' through Redis (state.redis).
 *
 * Every frame is still decided by the host's own buckets (limit.h), with
 * no wait. A shared bucket also counts what it let through ("pending");
 * this worker's sync, every state.sync_interval for a bucket in use (ten
 * times less often for one that is not), reports that to Redis, where one
 * GCRA state per limit adds up every host's takes, and moves the bucket
 * forward by what the others took. Connection counts: each host reports
 * its count of a key and learns the others' total, which its acquires
 * then count against the maximum. docs/throttling.md says how exact this
 * is, and what happens while Redis is down.
 *
 * The sync knows the buckets and counts this worker's sessions hold
 * (weir_sync_hold / weir_sync_conn_acquire) and forgets one when the last
 * lets it go, after a last report.
 */
#ifndef WEIR_LIMIT_SYNC_H
#define WEIR_LIMIT_SYNC_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "conf.h"
#include "limit.h"

/* Start syncing on LOOP when CONF has state.redis (and connect to it).
 * Returns WEIR_OK (also without Redis) or WEIR_ERROR. */
int  weir_sync_init(uv_loop_t *loop, const weir_conf_t *conf);

/* Stop: the connection is dropped, every entry forgotten. Before the loop's
 * handles close. */
void weir_sync_cleanup(void);

/*
 * A session of this worker holds REF, resolved from KEY[0..LEN), from now
 * on. A shared ref (share mode not LOCAL) has its bucket synchronised
 * while any session holds it; without Redis it is made LOCAL here (its
 * mode then means nothing). Call weir_sync_release with the same ref once.
 */
void weir_sync_hold(weir_limit_ref_t *ref, const char *key, size_t len);
void weir_sync_release(const weir_limit_ref_t *ref);

/*
 * weir_conn_acquire, counted with the other hosts when Redis is set: the
 * ref is marked shared and its key's count synchronised while this worker
 * holds counts of it. Release it with weir_sync_conn_release.
 */
int  weir_sync_conn_acquire(weir_conn_ref_t *ref, const char *key, size_t len, uint64_t max);
void weir_sync_conn_release(weir_conn_ref_t *ref);

#endif
