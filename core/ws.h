/*
 * ws.h — RFC 6455 framing: frame headers, masking, UTF-8 validation, close
 * codes and the handshake accept key. Pure functions, no I/O, no allocation.
 */
#ifndef WEIR_WS_H
#define WEIR_WS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "weir.h"

#define WEIR_WS_CONT   0x0
#define WEIR_WS_TEXT   0x1
#define WEIR_WS_BINARY 0x2
#define WEIR_WS_CLOSE  0x8
#define WEIR_WS_PING   0x9
#define WEIR_WS_PONG   0xA

#define WEIR_WS_MAX_HDR      14     /* 2 + 8 (length) + 4 (mask) */
#define WEIR_WS_MAX_CONTROL  125
#define WEIR_WS_ACCEPT_LEN   28     /* base64 of a SHA-1 */

#define WEIR_UTF8_ACCEPT 0
#define WEIR_UTF8_REJECT 1

/* whole bytes, not bit-fields: the relay reads these right after the parse
 * writes them, and a wide read of fields just written a byte at a time
 * waits for the stores (a store-forwarding stall on every frame) */
typedef struct {
    uint8_t   fin;
    uint8_t   masked;
    uint8_t   rsv;            /* RSV1..3 as bits 2..0 */
    uint8_t   opcode;
    uint8_t   hdr_len;        /* bytes of header incl. mask key */
    uint8_t   mask[4];
    uint64_t  len;            /* payload bytes */
} weir_ws_hdr_t;

/*
 * Parse a frame header from P[0..N). Returns the header length when complete
 * (and fills H), 0 when more bytes are needed, WEIR_ERROR when the 64-bit
 * length has its most significant bit set (a protocol error). Inline: the
 * relay calls it on every frame, and inlined, H stays in registers.
 */
static inline int
weir_ws_parse_hdr(const uint8_t *p, size_t n, weir_ws_hdr_t *h)
{
    if (n < 2) return 0;
    h->fin = p[0] >> 7;
    h->rsv = (p[0] >> 4) & 7;
    h->opcode = p[0] & 0x0f;
    h->masked = p[1] >> 7;
    uint64_t len = p[1] & 0x7f;
    size_t need = 2;
    if (len == 126) {
        need += 2;
        if (n < need) return 0;
        len = ((uint64_t) p[2] << 8) | p[3];
    } else if (len == 127) {
        need += 8;
        if (n < need) return 0;
        if (p[2] & 0x80) return WEIR_ERROR;
        len = 0;
        for (int i = 2; i < 10; i++) len = (len << 8) | p[i];
    }
    if (h->masked) {
        if (n < need + 4) return 0;
        memcpy(h->mask, p + need, 4);
        need += 4;
    }
    h->len = len;
    h->hdr_len = (uint8_t) need;
    return (int) need;
}

/* Write a header with minimal length encoding; MASK NULL for unmasked. */
size_t weir_ws_build_hdr(uint8_t *out, int fin, int opcode, uint64_t len, const uint8_t *mask);

/* XOR P[0..N) with KEY, P[0] being byte OFFSET of the payload. */
void weir_ws_mask(uint8_t *p, size_t n, const uint8_t key[4], uint64_t offset);

/* DST[0..N) = SRC[0..N) XOR KEY, SRC[0] being byte OFFSET of the payload:
 * a copy masked or unmasked in one pass (DST may be SRC). */
void weir_ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4], uint64_t offset);

/* Advance the UTF-8 validator over P[0..N); returns the new state. */
uint32_t weir_utf8_step(uint32_t state, const uint8_t *p, size_t n);

/* A client's binary passed on as read: P[0..N), masked with IN, masked
 * with OUT instead, in one XOR (P[0] being byte OFFSET of the payload). */
void weir_ws_remask(uint8_t *p, size_t n, const uint8_t in[4], const uint8_t out[4], uint64_t offset);

/* A client's text passed on as read: unmask P[0..N) with IN, advance the
 * UTF-8 validator from STATE over it, and mask it with OUT (P[0] being
 * byte OFFSET of the payload). ASCII takes one pass. Returns the new
 * state; on WEIR_UTF8_REJECT, P is unmasked with IN, and masked with OUT
 * only in part. With OUT all zero, P is left unmasked whatever the state:
 * unmasking and checking in one pass. */
uint32_t weir_ws_remask_text(uint8_t *p, size_t n, const uint8_t in[4], const uint8_t out[4], uint64_t offset,
                             uint32_t state);

/* 1 when CODE may appear in a close frame on the wire. */
int weir_ws_close_code_valid(unsigned code);

/* OUT (29 bytes) = base64(SHA1(KEY ++ GUID)), NUL-terminated. */
void weir_ws_accept(const char *key, size_t key_len, char *out);

/* 1 when KEY is base64 of exactly 16 bytes (24 characters). */
int weir_ws_key_valid(const char *key, size_t key_len);

/* Fill OUT with N random bytes (OpenSSL's DRBG, through a small pool). */
void weir_ws_random(uint8_t *out, size_t n);

/* Empty the pool (a new worker process must not reuse its parent's bytes). */
void weir_ws_random_reset(void);

#endif
