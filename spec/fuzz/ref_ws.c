/*
 * ref_ws.c — the reference decoder (see ref_ws.h): one frame at a time,
 * the whole message kept, UTF-8 decoded code point by code point. Slow and
 * plain on purpose: it is what weir's relay is compared with.
 */
#include <stdlib.h>
#include <string.h>

#include "ref_ws.h"

int
ref_utf8(const uint8_t *p, size_t n, int *partial)
{
    size_t i = 0;
    if (partial) *partial = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t need;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xe0) == 0xc0) { need = 1; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { need = 2; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { need = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        size_t k;
        for (k = 1; k <= need && i + k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (k <= need) {
            /* cut short: valid only if some completion is valid */
            if (partial == NULL) return 0;
            uint32_t lo = cp, hi = cp;
            for (size_t j = k; j <= need; j++) {
                lo = lo << 6;
                hi = (hi << 6) | 0x3f;
            }
            if (hi < min || lo > 0x10ffff || (lo >= 0xd800 && hi <= 0xdfff)) return 0;
            /* a range straddling the surrogates or the bounds still has a valid member */
            *partial = 1;
            return 1;
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += need + 1;
    }
    return 1;
}

int
ref_close_code_ok(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

void
ref_free(ref_result_t *r)
{
    for (size_t i = 0; i < r->n; i++) free(r->frames[i].payload);
    r->n = 0;
}

void
ref_decode(const uint8_t *p, size_t n, int masked, uint64_t max_msg, ref_result_t *r)
{
    size_t at = 0;
    int msg_op = 0;                 /* the open data message's opcode, 0: none */
    uint64_t msg_len = 0;
    uint8_t *msg = NULL;            /* a text message's bytes so far */
    size_t msg_fill = 0;

    memset(r, 0, sizeof(*r));
    while (at < n && r->n < REF_MAX_FRAMES) {
        const uint8_t *h = p + at;
        size_t avail = n - at, hl = 2;
        if (avail < 2) break;
        int fin = h[0] >> 7, rsv = (h[0] >> 4) & 7, op = h[0] & 15, mask = h[1] >> 7;
        uint64_t len = h[1] & 127;
        if (len == 126) {
            if (avail < 4) break;
            len = (uint64_t) h[2] << 8 | h[3];
            hl = 4;
        } else if (len == 127) {
            if (avail < 10) break;
            if (h[2] & 0x80) { r->error = 1002; break; }
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | h[2 + i];
            hl = 10;
        }
        uint8_t key[4] = { 0, 0, 0, 0 };
        if (mask) {
            if (avail < hl + 4) break;
            memcpy(key, h + hl, 4);
            hl += 4;
        }
        int control = op >= 8;
        int known = op == 0 || op == 1 || op == 2 || op == 8 || op == 9 || op == 10;
        if (rsv || mask != masked || !known || (control && (!fin || len > 125))
            || (op == 0 && msg_op == 0) || ((op == 1 || op == 2) && msg_op != 0)) {
            r->error = 1002;
            break;
        }
        if (!control && len > max_msg - (op == 0 ? msg_len : 0)) {
            r->error = 1009;
            break;
        }
        size_t have = avail - hl < len ? avail - hl : (size_t) len;
        if (control && have < len) break;          /* control frames count only whole */
        ref_frame_t *f = &r->frames[r->n++];
        f->opcode = op;
        f->fin = fin;
        f->wire_len = len;
        f->len = have;
        f->complete = have == len;
        if (have > 0) {
            f->payload = malloc(have);
            for (size_t i = 0; i < have; i++) f->payload[i] = h[hl + i] ^ key[i & 3];
        }
        if (op == 8) {
            unsigned code = len >= 2 ? (unsigned) f->payload[0] << 8 | f->payload[1] : 0;
            if (len == 1 || (len >= 2 && !ref_close_code_ok(code))) r->error = 1002;
            else if (len > 2 && !ref_utf8(f->payload + 2, len - 2, NULL)) r->error = 1007;
            else r->closed = 1;
            if (r->error) r->n--, free(f->payload);
            else r->used = at + hl + len;
            break;
        }
        if (control) {
            at += hl + len;
            r->used = at;
            continue;
        }
        if (op != 0) {
            msg_op = op;
            msg_len = 0;
            msg_fill = 0;
        }
        msg_len += len;
        if (msg_op == 1) {
            uint8_t *nm = realloc(msg, msg_fill + have + 1);
            if (nm == NULL) abort();
            msg = nm;
            if (have > 0) memcpy(msg + msg_fill, f->payload, have);
            msg_fill += have;
            int partial;
            if (!ref_utf8(msg, msg_fill, &partial) || (f->complete && fin && partial)) {
                r->error = 1007;
                r->nvalid = r->n - 1;
                free(msg);
                return;
            }
        }
        if (!f->complete) break;
        at += hl + len;
        r->used = at;
        if (fin) msg_op = 0;
    }
    r->nvalid = r->n;
    free(msg);
}

typedef struct {
    uint8_t *p;
    size_t   n, cap;
} ref_buf_t;

static void
ref_put(ref_buf_t *b, const void *p, size_t n)
{
    if (b->n + n > b->cap || b->p == NULL) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (b->p == NULL) abort();
    }
    if (n > 0) memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void
ref_put_msg(ref_buf_t *b, int op, const uint8_t *p, size_t n)
{
    uint8_t o = (uint8_t) op;
    uint64_t len = n;
    ref_put(b, &o, 1);
    ref_put(b, &len, sizeof(len));
    ref_put(b, p, n);
}

void
ref_messages(const ref_result_t *r, size_t nframes, uint8_t **data, size_t *dlen, uint8_t **ctl, size_t *clen)
{
    ref_buf_t d = { NULL, 0, 0 }, c = { NULL, 0, 0 }, m = { NULL, 0, 0 };
    int op = 0;
    for (size_t i = 0; i < nframes && i < r->n; i++) {
        const ref_frame_t *f = &r->frames[i];
        if (!f->complete) break;
        if (f->opcode >= 8) {
            ref_put_msg(&c, f->opcode, f->payload, f->len);
            continue;
        }
        if (f->opcode != 0) {
            op = f->opcode;
            m.n = 0;
        }
        ref_put(&m, f->payload, f->len);
        if (f->fin) ref_put_msg(&d, op, m.p, m.n);
    }
    free(m.p);
    ref_put(&d, "", 0);
    ref_put(&c, "", 0);
    *data = d.p;
    *dlen = d.n;
    *ctl = c.p;
    *clen = c.n;
}
