/*
 * close.c — close frames through weir's relay: the payload (a code, then a
 * UTF-8 reason) is the input, framed by the harness. A valid close is
 * forwarded unchanged and its code recorded; a one-byte payload or a code
 * no endpoint may send fails the peer with 1002, a reason that is not
 * UTF-8 with 1007 (RFC 6455 5.5.1, 7.4). Checked against ref_ws.c, and
 * weir_ws_close_code_valid against the registry for every code.
 *
 * Input: byte 0 flags (bit 0: the backend sends), byte 1 where the frame
 * is split in two reads, then the payload (at most 125 bytes are used).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_leg.h"
#include "ref_ws.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int codes_checked;
    if (!codes_checked) {
        for (unsigned c = 0; c < 65536; c++)
            if (weir_ws_close_code_valid(c) != ref_close_code_ok(c)) {
                fprintf(stderr, "close: code %u: weir and the registry disagree\n", c);
                abort();
            }
        codes_checked = 1;
    }
    if (size < 2) return 0;
    int from_backend = data[0] & 1;
    const uint8_t *pl = data + 2;
    size_t n = size - 2 > WEIR_WS_MAX_CONTROL ? WEIR_WS_MAX_CONTROL : size - 2;
    static const uint8_t key[4] = { 0x12, 0x34, 0x56, 0x78 };

    uint8_t frame[WEIR_WS_MAX_HDR + WEIR_WS_MAX_CONTROL];
    size_t hl = weir_ws_build_hdr(frame, 1, WEIR_WS_CLOSE, n, from_backend ? NULL : key);
    memcpy(frame + hl, pl, n);
    if (!from_backend) weir_ws_mask(frame + hl, n, key, 0);
    size_t total = hl + n, cut = data[1] % (total + 1);

    unsigned code = n >= 2 ? (unsigned) pl[0] << 8 | pl[1] : 0;
    unsigned expect = 0;
    if (n == 1 || (n >= 2 && !ref_close_code_ok(code))) expect = 1002;
    else if (n > 2 && !ref_utf8(pl + 2, n - 2, NULL)) expect = 1007;

    fz_session(65536, 0, NULL);
    weir_leg_t *l = from_backend ? &fz.s->backend : &fz.s->client;
    fz_feed(l, frame, cut);
    if (cut < total && (l->close_rcvd || l->fail_code)) {
        fprintf(stderr, "close: decided before the frame was whole\n");
        abort();
    }
    fz_feed(l, frame + cut, total - cut);

    int peer = from_backend ? 0 : 1;
    if (l->fail_code != expect) {
        fprintf(stderr, "close: failed with %u, expected %u\n", l->fail_code, expect);
        abort();
    }
    if (expect == 0) {
        /* forwarded unchanged (re-masked towards a backend) */
        ref_result_t r;
        ref_decode(fz.out[peer], fz.out_len[peer], !from_backend, 65536, &r);
        int ok = l->close_rcvd && l->rcvd_code == code && r.closed && r.n == 1 && r.frames[0].len == n
                 && (n == 0 || memcmp(r.frames[0].payload, pl, n) == 0);
        ref_free(&r);
        if (!ok) {
            fprintf(stderr, "close: a valid close was not forwarded as it came\n");
            abort();
        }
    } else if (fz.out_len[peer] != 0) {
        fprintf(stderr, "close: an invalid close was forwarded\n");
        abort();
    }
    fz_session_free();
    return 0;
}
