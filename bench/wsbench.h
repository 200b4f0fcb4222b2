/*
 * wsbench.h — what the benchmark tools (wsecho, wsload) share: RFC 6455
 * frame headers and masking, the opening handshake's accept key, growable
 * byte buffers, a monotonic clock, a fast PRNG and a log-bucket latency
 * histogram.
 *
 * These tools are not part of weir and do not link with it; they carry the
 * wb_ prefix so that nobody mistakes them for core code.
 */
#ifndef WB_WSBENCH_H
#define WB_WSBENCH_H

#include <stddef.h>
#include <stdint.h>

#define WB_OP_CONT   0x0
#define WB_OP_TEXT   0x1
#define WB_OP_BINARY 0x2
#define WB_OP_CLOSE  0x8
#define WB_OP_PING   0x9
#define WB_OP_PONG   0xA

#define WB_FRAME_HDR_MAX 14             /* 2 + 8 (64-bit length) + 4 (mask) */
#define WB_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* ---- time ---------------------------------------------------------------- */

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t wb_now_ns(void);

/* ---- PRNG (xorshift64*, not for cryptography) ------------------------------ */

void     wb_rand_seed(uint64_t seed);
uint64_t wb_rand(void);

/* ---- byte buffers -------------------------------------------------------- */

/* Live bytes are data[off .. off+len); the rest of cap is free space. */
typedef struct {
    unsigned char *data;
    size_t         off;                 /* start of live bytes */
    size_t         len;                 /* live bytes */
    size_t         cap;                 /* allocated bytes */
} wb_buf_t;

/*
 * Make room for N more bytes after the live ones, compacting or growing.
 * Returns a pointer to the free space, or NULL when out of memory.
 */
unsigned char *wb_buf_reserve(wb_buf_t *b, size_t n);
/* Drop N bytes from the front of the live bytes. */
void           wb_buf_consume(wb_buf_t *b, size_t n);
/* Free the memory; the buffer is empty and reusable afterwards. */
void           wb_buf_free(wb_buf_t *b);

/* ---- frames -------------------------------------------------------------- */

typedef struct {
    int            fin;
    int            rsv;                 /* RSV1..3 bits, 0 when none */
    int            opcode;
    int            masked;
    uint64_t       len;                 /* payload bytes */
    unsigned char  mask[4];
} wb_frame_t;

/*
 * Parse the frame header at P (N bytes available) into *F. Returns the
 * header length, 0 when more bytes are needed, -1 when the 64-bit length has
 * its high bit set.
 */
int    wb_frame_parse(const unsigned char *p, size_t n, wb_frame_t *f);

/*
 * Write a frame header for a FIN frame (or not) with OPCODE and LEN bytes of
 * payload to OUT (at least WB_FRAME_HDR_MAX bytes). MASK, when not NULL,
 * sets the mask bit and appends the key. Returns the header length.
 */
size_t wb_frame_header(unsigned char *out, int fin, int opcode, uint64_t len,
                       const unsigned char *mask);

/*
 * XOR N bytes of SRC with KEY into DST (which may be SRC), starting at
 * key byte PHASE (0 for a whole payload). Returns the phase after the last
 * byte so a payload can be masked in pieces.
 */
unsigned wb_mask(unsigned char *dst, const unsigned char *src, size_t n,
                 const unsigned char key[4], unsigned phase);

/* Sec-WebSocket-Accept for KEY (KEYLEN bytes) into OUT (29 bytes, NUL-ended). */
void   wb_accept_key(const char *key, size_t keylen, char out[29]);

/* Base64 of N bytes of IN into OUT (4*ceil(N/3)+1 bytes); returns OUT. */
char  *wb_base64(const unsigned char *in, size_t n, char *out);

/*
 * Find header NAME (case-insensitive, without the colon) in the HTTP head
 * HEAD of LEN bytes (request or status line first). Returns a pointer to the
 * trimmed value and its length in *VLEN, or NULL.
 */
const char *wb_http_header(const char *head, size_t len, const char *name,
                           size_t *vlen);

/* ---- latency histogram ----------------------------------------------------- */

/*
 * Log-linear buckets in nanoseconds: exact below 128 ns, then 64 buckets per
 * power of two (relative error under 1.6%), up to about 2^42 ns (73 min).
 */
#define WB_HIST_SUB_BITS 7
#define WB_HIST_BUCKETS  ((42 - WB_HIST_SUB_BITS + 2) << (WB_HIST_SUB_BITS - 1))

typedef struct {
    uint64_t count;
    uint64_t min;                       /* ns */
    uint64_t max;                       /* ns */
    double   sum;                       /* ns */
    uint64_t b[WB_HIST_BUCKETS];
} wb_hist_t;

void     wb_hist_init(wb_hist_t *h);
void     wb_hist_add(wb_hist_t *h, uint64_t ns);
/* The value (ns) below which fraction Q (0..1) of the samples fall. */
uint64_t wb_hist_quantile(const wb_hist_t *h, double q);

#endif
