/*
 * fake_leg.h — a session for the frame harnesses: core/relay.c runs on it
 * unchanged, linked with fake_leg.c in place of core/leg.c. What the relay
 * writes to a leg is kept in that leg's output buffer (the bytes a socket
 * would have sent), weir's own messages are framed into it as leg.c would,
 * and closes are recorded instead of sent.
 */
#ifndef WEIR_FAKE_LEG_H
#define WEIR_FAKE_LEG_H

#include <stddef.h>
#include <stdint.h>

#include "session_int.h"

/* What the frame hook answers (the policy engine's stand-in). */
enum { FZ_HOOK_PASS = 0, FZ_HOOK_DROP, FZ_HOOK_REPLACE, FZ_HOOK_REPLY, FZ_HOOK_ERROR, FZ_HOOK_VARY };

typedef struct {
    weir_session_t *s;
    uint8_t        *out[2];         /* bytes written to [0] the client, [1] the backend */
    size_t          out_len[2], out_cap[2];
    unsigned        close_code[2];  /* first close weir sent to [0] client, [1] backend; 0: none */
    unsigned        hook;           /* FZ_HOOK_* */
    unsigned        hook_calls;
    int             cut_ok;         /* reads may leave a cut message for the next (fz_feed) */
    uint8_t        *cut[2];         /* what the last read of [0] the client, [1] the backend left */
    size_t          ncut[2];
} fz_fake_t;

extern fz_fake_t fz;

/* A fresh open session: MAX_MSG is max_message_size, ASSEMBLE whether
 * frame hooks take whole messages on both legs, NEEDLE (NULL: none) the
 * interceptor's needle. Frees the previous one. */
void fz_session(uint64_t max_msg, int assemble, const char *needle);

/* Free the current session. */
void fz_session_free(void);

/* Read BUF[0..N) from leg L as weir_relay_read does: after its stash, or
 * after the message the last read left cut (fz.cut_ok, as when the socket
 * may hold more), in a buffer of exactly that size. */
void fz_feed(weir_leg_t *l, const uint8_t *buf, size_t n);

/* The reads of L end (the socket ran dry): what the last one left cut is
 * relayed as weir_relay_read relays it then. */
void fz_feed_end(weir_leg_t *l);

/* A tiny deterministic generator for split sizes. */
static inline uint32_t
fz_rand(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

#endif
