/*
 * wsbench.c — helpers shared by wsecho and wsload (see wsbench.h).
 */
#include "wsbench.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

uint64_t wb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static __thread uint64_t wb_rand_state = 0x9E3779B97F4A7C15ull;

void wb_rand_seed(uint64_t seed)
{
    wb_rand_state = seed ? seed : 0x9E3779B97F4A7C15ull;
}

uint64_t wb_rand(void)
{
    uint64_t x = wb_rand_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    wb_rand_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

unsigned char *wb_buf_reserve(wb_buf_t *b, size_t n)
{
    if (b->cap - b->off - b->len >= n)
        return b->data + b->off + b->len;
    if (b->off > 0 && b->cap - b->len >= n) {
        /* enough room once compacted */
        memmove(b->data, b->data + b->off, b->len);
        b->off = 0;
        return b->data + b->len;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < n)
        cap *= 2;
    unsigned char *d = malloc(cap);
    if (d == NULL)
        return NULL;
    if (b->len)
        memcpy(d, b->data + b->off, b->len);
    free(b->data);
    b->data = d;
    b->off = 0;
    b->cap = cap;
    return d + b->len;
}

void wb_buf_consume(wb_buf_t *b, size_t n)
{
    b->off += n;
    b->len -= n;
    if (b->len == 0)
        b->off = 0;
}

void wb_buf_free(wb_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

int wb_frame_parse(const unsigned char *p, size_t n, wb_frame_t *f)
{
    if (n < 2)
        return 0;
    size_t hl = 2;
    f->fin = p[0] >> 7;
    f->rsv = (p[0] >> 4) & 7;
    f->opcode = p[0] & 0x0F;
    f->masked = p[1] >> 7;
    uint64_t len = p[1] & 0x7F;
    if (len == 126) {
        if (n < 4)
            return 0;
        len = ((uint64_t)p[2] << 8) | p[3];
        hl = 4;
    } else if (len == 127) {
        if (n < 10)
            return 0;
        if (p[2] & 0x80)
            return -1;
        len = 0;
        for (int i = 2; i < 10; i++)
            len = (len << 8) | p[i];
        hl = 10;
    }
    if (f->masked) {
        if (n < hl + 4)
            return 0;
        memcpy(f->mask, p + hl, 4);
        hl += 4;
    }
    f->len = len;
    return (int)hl;
}

size_t wb_frame_header(unsigned char *out, int fin, int opcode, uint64_t len,
                       const unsigned char *mask)
{
    size_t hl;
    out[0] = (unsigned char)((fin ? 0x80 : 0) | (opcode & 0x0F));
    unsigned char m = mask ? 0x80 : 0;
    if (len < 126) {
        out[1] = m | (unsigned char)len;
        hl = 2;
    } else if (len < 65536) {
        out[1] = m | 126;
        out[2] = (unsigned char)(len >> 8);
        out[3] = (unsigned char)len;
        hl = 4;
    } else {
        out[1] = m | 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (unsigned char)(len >> (56 - 8 * i));
        hl = 10;
    }
    if (mask) {
        memcpy(out + hl, mask, 4);
        hl += 4;
    }
    return hl;
}

unsigned wb_mask(unsigned char *dst, const unsigned char *src, size_t n,
                 const unsigned char key[4], unsigned phase)
{
    size_t i = 0;
    /* rotate the key so that word-wide XOR starts at byte 0 of SRC */
    unsigned char k[8];
    for (int j = 0; j < 8; j++)
        k[j] = key[(phase + j) & 3];
    uint64_t k64;
    memcpy(&k64, k, 8);
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= k64;
        memcpy(dst + i, &w, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ k[i & 7];
    return (unsigned)((phase + n) & 3);
}

char *wb_base64(const unsigned char *in, size_t n, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    return out;
}

void wb_accept_key(const char *key, size_t keylen, char out[29])
{
    unsigned char buf[128], md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    size_t gl = sizeof(WB_GUID) - 1;
    if (keylen > sizeof(buf) - gl)
        keylen = sizeof(buf) - gl;
    memcpy(buf, key, keylen);
    memcpy(buf + keylen, WB_GUID, gl);
    EVP_Digest(buf, keylen + gl, md, &mdlen, EVP_sha1(), NULL);
    wb_base64(md, 20, out);
}

const char *wb_http_header(const char *head, size_t len, const char *name,
                           size_t *vlen)
{
    size_t nl = strlen(name);
    const char *end = head + len;
    const char *p = memchr(head, '\n', len);   /* skip the first line */
    while (p != NULL && p + 1 < end) {
        const char *line = p + 1;
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (eol == NULL)
            eol = end;
        if ((size_t)(eol - line) > nl && line[nl] == ':'
            && strncasecmp(line, name, nl) == 0) {
            const char *v = line + nl + 1, *e = eol;
            while (v < e && (*v == ' ' || *v == '\t'))
                v++;
            while (e > v && isspace((unsigned char)e[-1]))
                e--;
            *vlen = (size_t)(e - v);
            return v;
        }
        p = eol < end ? eol : NULL;
    }
    return NULL;
}

void wb_hist_init(wb_hist_t *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

static size_t wb_hist_index(uint64_t v)
{
    const uint64_t top = (1ull << 42) - 1;
    if (v > top)
        v = top;
    if (v < (1u << WB_HIST_SUB_BITS))
        return (size_t)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - (WB_HIST_SUB_BITS - 1);
    return ((size_t)shift << (WB_HIST_SUB_BITS - 1)) + (size_t)(v >> shift);
}

void wb_hist_add(wb_hist_t *h, uint64_t ns)
{
    h->b[wb_hist_index(ns)]++;
    h->count++;
    h->sum += (double)ns;
    if (ns < h->min)
        h->min = ns;
    if (ns > h->max)
        h->max = ns;
}

uint64_t wb_hist_quantile(const wb_hist_t *h, double q)
{
    if (h->count == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)h->count + 0.999999);
    if (want < 1)
        want = 1;
    if (want > h->count)
        want = h->count;
    uint64_t seen = 0;
    for (size_t i = 0; i < WB_HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen < want)
            continue;
        uint64_t lo, width;
        if (i < (1u << WB_HIST_SUB_BITS)) {
            lo = i;
            width = 1;
        } else {
            int shift = (int)(i >> (WB_HIST_SUB_BITS - 1)) - 1;
            uint64_t mant = i - ((uint64_t)shift << (WB_HIST_SUB_BITS - 1));
            lo = mant << shift;
            width = 1ull << shift;
        }
        uint64_t v = lo + width / 2;
        if (v < h->min)
            v = h->min;
        if (v > h->max)
            v = h->max;
        return v;
    }
    return h->max;
}
