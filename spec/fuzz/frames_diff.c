/*
 * frames_diff.c — differential harness: the same bytes through weir's relay
 * (core/relay.c, read in arbitrary splits) and through a plain reference
 * decoder (ref_ws.c). Both must agree on every frame (opcode, FIN, payload
 * after unmasking) up to the same point, and fail the peer with the same
 * close code (1002, 1007, 1009) or not at all; a disagreement aborts.
 * Frame hooks pass everything, so nothing may change on the way.
 *
 * Input: byte 0 flags (bit 0: the backend sends, else the client; bit 1:
 * frame hooks take whole messages; bit 2: max_message_size 100 instead of
 * 64 KiB; bit 3: a read may leave a message it cut for the next, as when
 * the socket may hold more), byte 1 the largest read (0: one read), bytes
 * 2-3 the split seed, then the stream.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_leg.h"
#include "ref_ws.h"

static ref_result_t fz_in, fz_outr;

static void
fz_disagree(const char *what, size_t i)
{
    fprintf(stderr, "frames_diff: weir and the reference disagree: %s (frame %zu)\n", what, i);
    abort();
}

/* Feed STREAM[0..N) into L in reads of at most MAXC bytes (SEED choosing
 * each size), stopping when L is failed, done or sent its close. */
static void
fz_feed_split(weir_leg_t *l, const uint8_t *p, size_t n, unsigned maxc, uint32_t seed)
{
    size_t at = 0;
    seed = seed * 2654435761u + 1;
    while (at < n && !l->done && !l->fail_code && !l->close_rcvd) {
        size_t k = maxc == 0 ? n - at : 1 + fz_rand(&seed) % maxc;
        if (k > n - at) k = n - at;
        fz_feed(l, p + at, k);
        at += k;
    }
    fz_feed_end(l);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4) return 0;
    int from_backend = data[0] & 1, assemble = (data[0] >> 1) & 1;
    uint64_t max_msg = (data[0] & 4) ? 100 : 65536;
    const uint8_t *p = data + 4;
    size_t n = size - 4;

    fz_session(max_msg, assemble, NULL);
    fz.hook = FZ_HOOK_PASS;
    fz.cut_ok = (data[0] >> 3) & 1;
    weir_leg_t *l = from_backend ? &fz.s->backend : &fz.s->client;
    fz_feed_split(l, p, n, data[1], (uint32_t) data[2] << 8 | data[3]);

    ref_decode(p, n, !from_backend, max_msg, &fz_in);
    const uint8_t *out = fz.out[from_backend ? 0 : 1];
    size_t out_len = fz.out_len[from_backend ? 0 : 1];
    ref_decode(out, out_len, !from_backend, max_msg, &fz_outr);

    if (fz_outr.error) fz_disagree("weir wrote frames that are not valid", fz_outr.n);
    if (l->fail_code != fz_in.error) {
        fprintf(stderr, "weir failed the peer with %u, the reference with %u\n", l->fail_code, fz_in.error);
        fz_disagree("close code of the failure", fz_in.n);
    }
    if (fz_in.closed != (int) l->close_rcvd) fz_disagree("close received", fz_in.n);
    if (fz_in.closed) {
        const ref_frame_t *c = &fz_in.frames[fz_in.n - 1];
        unsigned code = c->len >= 2 ? (unsigned) c->payload[0] << 8 | c->payload[1] : 0;
        if (code != l->rcvd_code) fz_disagree("close code received", fz_in.n - 1);
    }

    size_t valid = fz_in.nvalid;
    size_t whole = 0;
    while (whole < valid && fz_in.frames[whole].complete) whole++;

    if (!assemble) {
        /* cut-through: frame for frame, the last one possibly cut short */
        size_t out_whole = 0;
        while (out_whole < fz_outr.n && fz_outr.frames[out_whole].complete) out_whole++;
        if (out_whole != whole) {
            fprintf(stderr, "weir forwarded %zu whole frames, the reference decoded %zu\n", out_whole, whole);
            fz_disagree("number of frames", out_whole);
        }
        if (fz_outr.n > out_whole + 1) fz_disagree("frames after one cut short", out_whole);
        if (fz_in.error == 0 && fz_outr.n != valid) fz_disagree("a frame cut short is not streamed", valid);
        for (size_t i = 0; i < fz_outr.n; i++) {
            const ref_frame_t *a = &fz_outr.frames[i], *b = &fz_in.frames[i];
            if (i >= fz_in.n) fz_disagree("a frame the input does not have", i);
            if (a->opcode != b->opcode || a->fin != b->fin || a->wire_len != b->wire_len)
                fz_disagree("opcode, FIN or length", i);
            if (a->len > b->len || (a->complete && a->len != b->len)
                || (a->len > 0 && memcmp(a->payload, b->payload, a->len) != 0))
                fz_disagree("payload", i);
            if (!from_backend && i + 1 == fz_outr.n && fz_in.error == 0 && a->len != b->len)
                fz_disagree("payload read but not streamed", i);
        }
        if (from_backend && out_len > 0 && memcmp(out, p, out_len) != 0) fz_disagree("a server's bytes changed", 0);
    } else {
        /* whole messages: the same data messages and control frames, in order */
        uint8_t *d1, *c1, *d2, *c2;
        size_t dl1, cl1, dl2, cl2;
        ref_messages(&fz_in, valid, &d1, &dl1, &c1, &cl1);
        ref_messages(&fz_outr, fz_outr.n, &d2, &dl2, &c2, &cl2);
        int same = dl1 == dl2 && cl1 == cl2 && memcmp(d1, d2, dl1) == 0 && memcmp(c1, c2, cl1) == 0;
        free(d1), free(c1), free(d2), free(c2);
        if (!same) fz_disagree("messages", 0);
        for (size_t i = 0; i < fz_outr.n; i++)
            if (!fz_outr.frames[i].complete) fz_disagree("part of a message forwarded", i);
    }
    ref_free(&fz_in);
    ref_free(&fz_outr);
    fz_session_free();
    return 0;
}
