/*
 * http_check.h — what every head weir_http_parse accepts must satisfy,
 * shared by the request and response harnesses.
 */
#ifndef WEIR_HTTP_CHECK_H
#define WEIR_HTTP_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "weir.h"

static void
fz_http_fail(const char *what)
{
    fprintf(stderr, "http: %s\n", what);
    abort();
}

/* BUF[0..LEN) parsed into M, RC bytes of head: every field lies in it, names
 * are tokens, values are trimmed and hold no NUL or LF, and the head ends
 * with the first blank line. A head cut one byte short needs more bytes. */
static void
fz_http_check(const char *buf, size_t len, int rc, int is_request, const weir_http_msg_t *m)
{
    weir_http_msg_t m2;
    if ((size_t) rc > len || rc < 4 || memcmp(buf + rc - 4, "\r\n\r\n", 4) != 0) fz_http_fail("head end");
    if (memmem(buf, (size_t) rc - 2, "\r\n\r\n", 4) != NULL) fz_http_fail("not the first blank line");
    if (weir_http_parse(buf, (size_t) rc - 1, is_request, &m2) != 0) fz_http_fail("a partial head was parsed");
    if (m->nheaders > WEIR_HTTP_MAX_HEADERS) fz_http_fail("header count");
    for (size_t i = 0; i < m->nheaders; i++) {
        const weir_http_header_t *h = &m->headers[i];
        if (h->name < buf || h->name + h->name_len > buf + rc || h->name_len == 0) fz_http_fail("name bounds");
        if (h->value < buf || h->value + h->value_len > buf + rc) fz_http_fail("value bounds");
        for (size_t k = 0; k < h->name_len; k++)
            if ((unsigned char) h->name[k] <= ' ' || h->name[k] == ':' || (unsigned char) h->name[k] >= 0x7f)
                fz_http_fail("name not a token");
        if (h->value_len > 0 && (h->value[0] == ' ' || h->value[0] == '\t' || h->value[h->value_len - 1] == ' '
                                 || h->value[h->value_len - 1] == '\t'))
            fz_http_fail("value not trimmed");
        if (memchr(h->value, '\0', h->value_len) || memchr(h->value, '\n', h->value_len))
            fz_http_fail("NUL or LF in a value");
        /* lookups find it, case-insensitively */
        char name[256];
        if (h->name_len < sizeof(name)) {
            memcpy(name, h->name, h->name_len);
            name[h->name_len] = '\0';
            if (weir_http_find(m, name) == NULL || weir_http_count(m, name) == 0) fz_http_fail("lookup");
        }
        (void) weir_http_has_token(h->value, h->value_len, "websocket");
        (void) weir_http_has_token(h->value, h->value_len, "upgrade");
    }
    if (m->minor < 0 || m->minor > 9) fz_http_fail("minor version");
}

/* Parse DATA[0..SIZE) as a request (IS_REQUEST) or response head from a
 * buffer of exactly that size (*BUF, the caller frees it), as weir reads
 * heads, and check what it returns. Returns weir_http_parse's answer. */
static int
fz_http_head(const uint8_t *data, size_t size, int is_request, weir_http_msg_t *m, char **buf)
{
    *buf = malloc(size ? size : 1);
    if (*buf == NULL) abort();
    memcpy(*buf, data, size);
    int rc = weir_http_parse(*buf, size, is_request, m);
    if (rc > 0) fz_http_check(*buf, size, rc, is_request, m);
    else if (rc != 0 && rc != WEIR_ERROR && rc != WEIR_HTTP_TOO_MANY) fz_http_fail("return code");
    return rc;
}

#endif
