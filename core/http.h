/*
 * http.h — the HTTP/1.1 needed around a WebSocket upgrade: parsing a request
 * head (client) and a response head (backend), header lookup, and the
 * standard error JSON. Parsers borrow the caller's buffer: every pointer in a
 * weir_http_msg_t points into it.
 */
#ifndef WEIR_HTTP_H
#define WEIR_HTTP_H

#include <stddef.h>

#define WEIR_HTTP_MAX_HEADERS 128

typedef struct {
    const char *name;
    size_t      name_len;
    const char *value;          /* leading/trailing whitespace trimmed */
    size_t      value_len;
} weir_http_header_t;

typedef struct {
    const char         *method;      /* requests */
    size_t              method_len;
    const char         *target;      /* requests: the request target */
    size_t              target_len;
    int                 status;      /* responses */
    int                 minor;       /* HTTP/1.<minor> */
    weir_http_header_t  headers[WEIR_HTTP_MAX_HEADERS];
    size_t              nheaders;
} weir_http_msg_t;

#define WEIR_HTTP_TOO_MANY  -10    /* more than WEIR_HTTP_MAX_HEADERS */

/*
 * Parse a request (IS_REQUEST) or response head from BUF[0..LEN); a request
 * target holding a fragment ('#') is malformed.
 * Returns the length of the head including the blank line when complete,
 * 0 when more bytes are needed, WEIR_ERROR when malformed,
 * WEIR_HTTP_TOO_MANY when it has too many header fields.
 */
int weir_http_parse(const char *buf, size_t len, int is_request, weir_http_msg_t *m);

/* The first header named NAME (case-insensitive), or NULL. */
const weir_http_header_t *weir_http_find(const weir_http_msg_t *m, const char *name);

/* How many header fields named NAME (case-insensitive) M has. */
size_t weir_http_count(const weir_http_msg_t *m, const char *name);

/* 1 when the comma-separated VALUE contains TOKEN (case-insensitive). */
int weir_http_has_token(const char *value, size_t len, const char *token);

/* 1 when NAME[0..LEN) equals the NUL-terminated S ignoring case. */
int weir_http_name_eq(const char *name, size_t len, const char *s);

/*
 * Write the standard error JSON into BUF:
 * {"type":"error","error":{"type":TYPE,"code":CODE,"message":MSG},"timestamp":"…Z"}
 * TYPE and MSG are escaped (and cut at 255 and 511 bytes). Returns its length.
 */
size_t weir_error_json(char *buf, size_t len, const char *type, int code, const char *msg);

/*
 * Write a complete HTTP error response (status line, JSON headers,
 * Connection: close, EXTRA header lines if not NULL, error JSON body).
 * Returns its length (truncated to LEN).
 */
size_t weir_http_error(char *buf, size_t len, int status, const char *type, const char *msg,
                       const char *extra);

/* Write the head of a response with a body of BLEN bytes: status line,
 * Content-Length, Connection: close and EXTRA header lines (each ending in
 * CRLF; they name the Content-Type). Returns its length (truncated to LEN). */
size_t weir_http_head(char *buf, size_t len, int status, size_t blen, const char *extra);

/* Write a complete HTTP response with a JSON BODY (as weir_http_error). */
size_t weir_http_json(char *buf, size_t len, int status, const char *body, size_t blen, const char *extra);

#endif
