/*
 * frames.c — weir's frame relay (core/relay.c on a fake session) fed one
 * stream in arbitrary read splits, so headers, control frames, fragments
 * and UTF-8 sequences are cut everywhere, with frame hooks that pass, drop,
 * replace, reply or close, and the interceptor's needle. Checks, besides
 * the sanitizers: what weir writes to either peer is always valid
 * WebSocket, and the same stream read whole gives the same messages and
 * the same failure.
 *
 * Input: byte 0 flags (bit 0: the backend sends; bit 1: frame hooks take
 * whole messages; bits 2-4: the hook's verdict, fake_leg.h; bit 5: the
 * needle "tok" is set; bit 6: max_message_size 100; bit 7: a read may
 * leave a message it cut for the next, as when the socket may hold more),
 * byte 1 the largest read (0: one read), bytes 2-3 the split seed, then
 * the stream.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_leg.h"
#include "ref_ws.h"

static ref_result_t fz_r;

typedef struct {
    unsigned  fail, closed;
    uint8_t  *d, *c;            /* ref_messages of what the peer got */
    size_t    dl, cl;
} fz_run_t;

static void
fz_run(const uint8_t *flags, const uint8_t *p, size_t n, unsigned maxc, fz_run_t *run)
{
    int from_backend = flags[0] & 1;
    uint32_t seed = ((uint32_t) flags[2] << 8 | flags[3]) * 2654435761u + 1;
    fz_session((flags[0] & 64) ? 100 : 65536, (flags[0] >> 1) & 1, (flags[0] & 32) ? "tok" : NULL);
    fz.hook = (flags[0] >> 2) & 7;
    if (fz.hook > FZ_HOOK_VARY) fz.hook = FZ_HOOK_PASS;
    fz.cut_ok = flags[0] >> 7;
    weir_leg_t *l = from_backend ? &fz.s->backend : &fz.s->client;
    size_t at = 0;
    while (at < n && !l->done && !l->fail_code && !l->close_rcvd) {
        size_t k = maxc == 0 ? n - at : 1 + fz_rand(&seed) % maxc;
        if (k > n - at) k = n - at;
        fz_feed(l, p + at, k);
        at += k;
    }
    fz_feed_end(l);
    /* both peers' streams must be valid WebSocket: to a backend masked */
    for (int i = 0; i < 2; i++) {
        ref_decode(fz.out[i], fz.out_len[i], i, UINT64_MAX, &fz_r);
        if (fz_r.error) {
            fprintf(stderr, "frames: weir wrote invalid frames to the %s (%u)\n", i ? "backend" : "client",
                    fz_r.error);
            abort();
        }
        if (i != from_backend) ref_messages(&fz_r, fz_r.n, &run->d, &run->dl, &run->c, &run->cl);
        ref_free(&fz_r);
    }
    run->fail = l->fail_code;
    run->closed = l->close_rcvd;
    fz_session_free();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4) return 0;
    fz_run_t a, b;
    fz_run(data, data + 4, size - 4, data[1], &a);
    fz_run(data, data + 4, size - 4, 0, &b);
    int same = a.fail == b.fail && a.closed == b.closed && a.dl == b.dl && a.cl == b.cl
               && memcmp(a.d, b.d, a.dl) == 0 && memcmp(a.c, b.c, a.cl) == 0;
    free(a.d), free(a.c), free(b.d), free(b.c);
    if (!same) {
        fprintf(stderr, "frames: read in pieces (fail %u) and whole (fail %u), the stream relays differently\n",
                a.fail, b.fail);
        abort();
    }
    return 0;
}
