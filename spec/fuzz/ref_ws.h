/*
 * ref_ws.h — a straightforward RFC 6455 decoder for the frame harnesses,
 * written apart from core/ws.c and core/relay.c (and sharing no code with
 * them) so that the two can be compared on the same bytes.
 */
#ifndef WEIR_REF_WS_H
#define WEIR_REF_WS_H

#include <stddef.h>
#include <stdint.h>

#define REF_MAX_FRAMES 4096

typedef struct {
    int       opcode, fin;
    int       complete;          /* all of its payload was there */
    uint8_t  *payload;           /* unmasked, malloc'd (NULL when empty) */
    size_t    len;               /* bytes of payload there */
    uint64_t  wire_len;          /* its length field */
} ref_frame_t;

typedef struct {
    ref_frame_t frames[REF_MAX_FRAMES];
    size_t      n;
    size_t      nvalid;          /* the first frames that are valid: all but a text frame with bad UTF-8 */
    unsigned    error;           /* 0, or the close code a peer breaking the protocol is failed with */
    int         closed;          /* ended with a valid close frame */
    size_t      used;            /* bytes up to the end of the last whole frame */
} ref_result_t;

/*
 * Decode P[0..N) as sent by a client (MASKED 1) or a server (MASKED 0),
 * with messages of at most MAX_MSG bytes, up to the first close frame or
 * protocol error. A frame cut short at the end is the last frame, not
 * complete: its payload is what arrived (validated as far as it goes).
 */
void ref_decode(const uint8_t *p, size_t n, int masked, uint64_t max_msg, ref_result_t *r);

void ref_free(ref_result_t *r);

/* 1 when P[0..N) is valid UTF-8 (RFC 3629): no overlong form, no
 * surrogate, nothing above U+10FFFF. *PARTIAL (when not NULL) gets 1 when
 * it is valid except for a sequence cut short at its end, which then does
 * not count as invalid. */
int ref_utf8(const uint8_t *p, size_t n, int *partial);

/* 1 when CODE may be sent in a close frame (RFC 6455 7.4.1 and the IANA
 * registry: 1000-1003, 1007-1014, 3000-4999). */
int ref_close_code_ok(unsigned code);

#endif

/*
 * The messages of R's first NFRAMES frames in a canonical form, for
 * comparing streams however they were framed: *DATA gets each whole data
 * message (opcode, length, payload of its frames joined), *CTL each
 * control frame, in order; what is cut short or unfinished is left out.
 * Both are malloc'd (free them).
 */
void ref_messages(const ref_result_t *r, size_t nframes, uint8_t **data, size_t *dlen, uint8_t **ctl, size_t *clen);
