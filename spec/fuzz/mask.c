/*
 * mask.c — the masking primitives of core/ws.c against byte-by-byte
 * references: weir_ws_mask, weir_ws_mask_copy and weir_ws_remask at any
 * key phase, and weir_ws_remask_text (a client's text unmasked, validated
 * and masked again in one pass while it is ASCII) in two calls split anywhere,
 * against ref_utf8 of ref_ws.c on the unmasked bytes; with weir's key all
 * zero, it must leave the text unmasked whatever it finds.
 *
 * Input: the client's key (4 bytes), weir's key (4), the payload's offset
 * in its frame (1), where the payload is split between the two calls (1),
 * then the payload as the client masked it.
 */
#include <stdlib.h>
#include <string.h>

#include "ref_ws.h"
#include "weir.h"
#include "ws.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 10) return 0;
    const uint8_t *in = data, *out = data + 4;
    uint64_t off = data[8];
    const uint8_t *wire = data + 10;
    size_t n = size - 10, cut = n > 0 ? data[9] % (n + 1) : 0;

    uint8_t *plain = malloc(n + 1), *want = malloc(n + 1), *buf = malloc(n + 1), *copy = malloc(n + 1);
    if (plain == NULL || want == NULL || buf == NULL || copy == NULL) abort();
    for (size_t i = 0; i < n; i++) {
        plain[i] = wire[i] ^ in[(off + i) & 3];
        want[i] = plain[i] ^ out[(off + i) & 3];
    }

    /* unmasking, in place and as a copy, in two pieces */
    memcpy(buf, wire, n);
    weir_ws_mask(buf, cut, in, off);
    weir_ws_mask(buf + cut, n - cut, in, off + cut);
    if (memcmp(buf, plain, n) != 0) abort();
    weir_ws_mask_copy(copy, wire, cut, in, off);
    weir_ws_mask_copy(copy + cut, wire + cut, n - cut, in, off + cut);
    if (memcmp(copy, plain, n) != 0) abort();

    /* a binary re-masked in one XOR of both keys, in two pieces */
    memcpy(buf, wire, n);
    weir_ws_remask(buf, cut, in, out, off);
    weir_ws_remask(buf + cut, n - cut, in, out, off + cut);
    if (memcmp(buf, want, n) != 0) abort();

    /* one pass of unmask, validate, mask: the same bytes and verdict as three */
    memcpy(buf, wire, n);
    uint32_t st = weir_ws_remask_text(buf, cut, in, out, off, WEIR_UTF8_ACCEPT);
    if (st != WEIR_UTF8_REJECT) st = weir_ws_remask_text(buf + cut, n - cut, in, out, off + cut, st);
    int partial = 0;
    int valid = ref_utf8(plain, n, &partial);
    if (!valid != (st == WEIR_UTF8_REJECT)) abort();
    if (valid && (st == WEIR_UTF8_ACCEPT) != !partial) abort();
    if (valid && memcmp(buf, want, n) != 0) abort();
    /* with weir's key all zero it unmasks and checks, valid or not */
    static const uint8_t none[4];
    memcpy(copy, wire, n);
    uint32_t st0 = weir_ws_remask_text(copy, cut, in, none, off, WEIR_UTF8_ACCEPT);
    if (st0 != WEIR_UTF8_REJECT) st0 = weir_ws_remask_text(copy + cut, n - cut, in, none, off + cut, st0);
    if (st0 != st || (st0 != WEIR_UTF8_REJECT && memcmp(copy, plain, n) != 0)) abort();
    if (st0 == WEIR_UTF8_REJECT && cut == 0 && memcmp(copy, plain, n) != 0) abort();
    /* and the validator alone agrees, from the same state, on the same pieces */
    uint32_t st2 = weir_utf8_step(WEIR_UTF8_ACCEPT, plain, cut);
    if (st2 != WEIR_UTF8_REJECT) st2 = weir_utf8_step(st2, plain + cut, n - cut);
    if (st2 != st) abort();

    free(plain);
    free(want);
    free(buf);
    free(copy);
    return 0;
}
