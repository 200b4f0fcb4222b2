/*
 * response.c — the backend's response head (weir_http_parse for a
 * response), and what handshake.c reads of it: the status, Upgrade,
 * Connection, Sec-WebSocket-Accept and Sec-WebSocket-Protocol. The input
 * is the bytes a backend sends, in a buffer of exactly their size.
 */
#include "http_check.h"
#include "ws.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf;
    weir_http_msg_t m;
    if (fz_http_head(data, size, 0, &m, &buf) > 0) {
        if (m.status < 0 || m.status > 999) fz_http_fail("status");
        if (m.method != NULL || m.target != NULL) fz_http_fail("a response with a target");
        const weir_http_header_t *h = weir_http_find(&m, "Sec-WebSocket-Accept");
        char accept[WEIR_WS_ACCEPT_LEN + 1];
        weir_ws_accept("dGhlIHNhbXBsZSBub25jZQ==", 24, accept);
        if (h != NULL && h->value_len == WEIR_WS_ACCEPT_LEN) (void) memcmp(h->value, accept, WEIR_WS_ACCEPT_LEN);
        (void) weir_http_find(&m, "Sec-WebSocket-Protocol");
    }
    free(buf);
    return 0;
}
