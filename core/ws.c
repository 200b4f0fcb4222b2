/*
 * ws.c — RFC 6455 framing primitives (see ws.h). The relay calls these on
 * every frame, so they work in place on the caller's bytes and never
 * allocate.
 */
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "weir.h"
#include "ws.h"

size_t
weir_ws_build_hdr(uint8_t *out, int fin, int opcode, uint64_t len, const uint8_t *mask)
{
    size_t o = 0;
    out[o++] = (uint8_t) ((fin ? 0x80 : 0) | (opcode & 0x0f));
    uint8_t mbit = mask ? 0x80 : 0;
    if (len < 126) {
        out[o++] = mbit | (uint8_t) len;
    } else if (len <= 0xffff) {
        out[o++] = mbit | 126;
        out[o++] = (uint8_t) (len >> 8);
        out[o++] = (uint8_t) len;
    } else {
        out[o++] = mbit | 127;
        for (int i = 7; i >= 0; i--) out[o++] = (uint8_t) (len >> (i * 8));
    }
    if (mask) {
        memcpy(out + o, mask, 4);
        o += 4;
    }
    return o;
}

/*
 * KEY as a word whose first byte is the one for payload byte OFFSET (the
 * key turned to its phase). Read and turned as a word: a word read of key
 * bytes just stored one at a time would wait for the stores.
 */
static inline uint32_t
weir_key_at(const uint8_t key[4], uint64_t offset)
{
    uint32_t k;
    memcpy(&k, key, 4);
    unsigned r = 8 * (unsigned) (offset & 3);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return r ? (k >> r) | (k << (32 - r)) : k;
#else
    return r ? (k << r) | (k >> (32 - r)) : k;
#endif
}

void
weir_ws_mask(uint8_t *p, size_t n, const uint8_t key[4], uint64_t offset)
{
    weir_ws_mask_copy(p, p, n, key, offset);
}

void
weir_ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4], uint64_t offset)
{
    uint32_t k32 = weir_key_at(key, offset);
    uint64_t k64 = (uint64_t) k32 | ((uint64_t) k32 << 32);
    size_t i = 0;
    /* 32, 16 and eight bytes at a time keep the key phase: multiples of 4 */
#ifdef __SSE2__
    __m128i k128 = _mm_set1_epi64x((long long) k64);
    for (; i + 32 <= n; i += 32) {
        __m128i a = _mm_loadu_si128((const __m128i *) (const void *) (src + i));
        __m128i b = _mm_loadu_si128((const __m128i *) (const void *) (src + i + 16));
        _mm_storeu_si128((__m128i *) (void *) (dst + i), _mm_xor_si128(a, k128));
        _mm_storeu_si128((__m128i *) (void *) (dst + i + 16), _mm_xor_si128(b, k128));
    }
    for (; i + 16 <= n; i += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *) (const void *) (src + i));
        _mm_storeu_si128((__m128i *) (void *) (dst + i), _mm_xor_si128(a, k128));
    }
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= k64;
        memcpy(dst + i, &v, 8);
    }
    uint8_t k[4];
    memcpy(k, &k32, 4);
    for (; i < n; i++) dst[i] = src[i] ^ k[i & 3];
}

/*
 * UTF-8 validation as a small state machine over the states below; it
 * rejects overlong forms, surrogates and code points above U+10FFFF, and
 * carries its state across fragments and reads.
 */
enum {
    U_ACCEPT = WEIR_UTF8_ACCEPT,
    U_REJECT = WEIR_UTF8_REJECT,
    U_NEED1,        /* one continuation byte 80..BF */
    U_NEED2,
    U_NEED3,
    U_E0,           /* after E0: A0..BF */
    U_ED,           /* after ED: 80..9F (no surrogates) */
    U_F0,           /* after F0: 90..BF */
    U_F4,           /* after F4: 80..8F (<= U+10FFFF) */
};

uint32_t
weir_utf8_step(uint32_t state, const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (state == U_ACCEPT) {
            /* ASCII fast path, 32 then eight bytes at a time */
            while (i + 32 <= n) {
                uint64_t v[4];
                memcpy(v, p + i, 32);
                if ((v[0] | v[1] | v[2] | v[3]) & 0x8080808080808080ULL) break;
                i += 32;
            }
            while (i + 8 <= n) {
                uint64_t v;
                memcpy(&v, p + i, 8);
                if (v & 0x8080808080808080ULL) break;
                i += 8;
            }
            if (i == n) break;
            uint8_t c = p[i++];
            if (c < 0x80) continue;
            if (c >= 0xc2 && c <= 0xdf) state = U_NEED1;
            else if (c == 0xe0) state = U_E0;
            else if (c == 0xed) state = U_ED;
            else if (c >= 0xe1 && c <= 0xef) state = U_NEED2;
            else if (c == 0xf0) state = U_F0;
            else if (c >= 0xf1 && c <= 0xf3) state = U_NEED3;
            else if (c == 0xf4) state = U_F4;
            else return U_REJECT;
            continue;
        }
        uint8_t c = p[i++];
        switch (state) {
        case U_NEED1: if ((c & 0xc0) != 0x80) return U_REJECT; state = U_ACCEPT; break;
        case U_NEED2: if ((c & 0xc0) != 0x80) return U_REJECT; state = U_NEED1; break;
        case U_NEED3: if ((c & 0xc0) != 0x80) return U_REJECT; state = U_NEED2; break;
        case U_E0:    if (c < 0xa0 || c > 0xbf) return U_REJECT; state = U_NEED1; break;
        case U_ED:    if (c < 0x80 || c > 0x9f) return U_REJECT; state = U_NEED1; break;
        case U_F0:    if (c < 0x90 || c > 0xbf) return U_REJECT; state = U_NEED2; break;
        case U_F4:    if (c < 0x80 || c > 0x8f) return U_REJECT; state = U_NEED2; break;
        default:      return U_REJECT;
        }
    }
    return state;
}

void
weir_ws_remask(uint8_t *p, size_t n, const uint8_t in[4], const uint8_t out[4], uint64_t offset)
{
    uint32_t ki, ko;                    /* combined as words (see weir_key_at) */
    memcpy(&ki, in, 4);
    memcpy(&ko, out, 4);
    ki ^= ko;
    weir_ws_mask_copy(p, p, n, (const uint8_t *) &ki, offset);
}

uint32_t
weir_ws_remask_text(uint8_t *p, size_t n, const uint8_t in[4], const uint8_t out[4], uint64_t offset,
                    uint32_t state)
{
    size_t i = 0;
    if (state == WEIR_UTF8_ACCEPT) {
        /* ASCII is valid whatever follows: unmask to look, re-mask in the
         * same pass (one XOR with both keys), until the first word that is
         * not; eight-byte steps keep the key phase */
        uint32_t ki32 = weir_key_at(in, offset), kx32 = ki32 ^ weir_key_at(out, offset);
        uint64_t ki64 = (uint64_t) ki32 | ((uint64_t) ki32 << 32);
        uint64_t kx64 = (uint64_t) kx32 | ((uint64_t) kx32 << 32);
#ifdef __SSE2__
        __m128i ki128 = _mm_set1_epi64x((long long) ki64), kx128 = _mm_set1_epi64x((long long) kx64);
        for (; i + 16 <= n; i += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *) (const void *) (p + i));
            if (_mm_movemask_epi8(_mm_xor_si128(v, ki128)) != 0) break;
            _mm_storeu_si128((__m128i *) (void *) (p + i), _mm_xor_si128(v, kx128));
        }
#endif
        for (; i + 8 <= n; i += 8) {
            uint64_t v;
            memcpy(&v, p + i, 8);
            if ((v ^ ki64) & 0x8080808080808080ULL) break;
            v ^= kx64;
            memcpy(p + i, &v, 8);
        }
        if (i + 8 > n) {
            uint8_t ki[4], kx[4];
            memcpy(ki, &ki32, 4);
            memcpy(kx, &kx32, 4);
            for (; i < n && !((p[i] ^ ki[i & 3]) & 0x80); i++) p[i] ^= kx[i & 3];
            if (i == n) return WEIR_UTF8_ACCEPT;
        }
    }
    /* the rest, from the first byte that may not be ASCII: three passes */
    weir_ws_mask(p + i, n - i, in, offset + i);
    state = weir_utf8_step(state, p + i, n - i);
    if (state != WEIR_UTF8_REJECT) weir_ws_mask(p + i, n - i, out, offset + i);
    return state;
}

int
weir_ws_close_code_valid(unsigned code)
{
    if (code >= 3000 && code <= 4999) return 1;
    if (code >= 1000 && code <= 1003) return 1;
    if (code >= 1007 && code <= 1014) return 1;
    return 0;
}

void
weir_ws_accept(const char *key, size_t key_len, char *out)
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    /* fetched once, context reused: OpenSSL 3 would otherwise look the
     * digest up and allocate a context on every handshake (one thread) */
    static EVP_MD *sha1;
    static EVP_MD_CTX *c;
    unsigned char md[SHA_DIGEST_LENGTH];
    if (sha1 == NULL && (sha1 = EVP_MD_fetch(NULL, "SHA1", NULL)) == NULL) abort();
    if (c == NULL && (c = EVP_MD_CTX_new()) == NULL) abort();
    EVP_DigestInit_ex2(c, sha1, NULL);
    EVP_DigestUpdate(c, key, key_len);
    EVP_DigestUpdate(c, guid, sizeof(guid) - 1);
    EVP_DigestFinal_ex(c, md, NULL);
    EVP_EncodeBlock((unsigned char *) out, md, SHA_DIGEST_LENGTH);
    out[WEIR_WS_ACCEPT_LEN] = '\0';
}

int
weir_ws_key_valid(const char *key, size_t key_len)
{
    unsigned char raw[24];
    if (key_len != 24 || key[22] != '=' || key[23] != '=') return 0;
    for (size_t i = 0; i < 22; i++) {
        char c = key[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
              || c == '+' || c == '/'))
            return 0;
    }
    return EVP_DecodeBlock(raw, (const unsigned char *) key, 24) == 18;
}

/*
 * Masking keys come from a pool refilled from OpenSSL's DRBG (RAND_bytes:
 * ChaCha/CTR in user space, reseeded across fork) 4 KiB at a time: glibc's
 * arc4random makes a getrandom() system call per call, which per frame
 * cost as much as the frame's own send().
 */
static uint8_t weir_pool[4096];
static size_t  weir_pool_left;

void
weir_ws_random_reset(void)
{
    weir_pool_left = 0;
}

void
weir_ws_random(uint8_t *out, size_t n)
{
    if (n > sizeof(weir_pool)) {
        if (RAND_bytes(out, (int) n) != 1) arc4random_buf(out, n);
        return;
    }
    if (n > weir_pool_left) {
        if (RAND_bytes(weir_pool, (int) sizeof(weir_pool)) != 1) arc4random_buf(weir_pool, sizeof(weir_pool));
        weir_pool_left = sizeof(weir_pool);
    }
    memcpy(out, weir_pool + sizeof(weir_pool) - weir_pool_left, n);
    weir_pool_left -= n;
}
