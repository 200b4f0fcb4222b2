/*
 * http_client.c — owns outgoing HTTP/1.1 calls made on a worker's loop on
 * behalf of policies, and the process-wide cache of their TLS contexts.
 *
 * Life of a call: parse and check the request → build the request bytes →
 * start the one timer → resolve (uv_getaddrinfo, skipped for IP literals)
 * → connect each address in turn until one accepts (non-blocking, uv_poll)
 * → TLS handshake (https) → write the request while reading → parse the
 * head (skipping 1xx) → read the body by Content-Length, chunked or until
 * EOF → the callback → release.
 *
 * Ending: whatever ends a call (success, failure, timeout, cancel) goes
 * through weir_http_finish(), which closes the socket first, then runs the
 * callback (unless cancelled), then frees the buffers and closes the timer.
 * The struct itself is freed only when no libuv handle of it is open and no
 * DNS lookup of it is pending (weir_http_maybe_free). A failure found while
 * weir_http_request() itself runs is delivered through the timer, fired at
 * once, so the callback never runs inside weir_http_request().
 *
 * Bounds: the request is built once (head + copied body); the response head
 * (and then the read buffer) is WEIR_HTTP_MAX_HEAD bytes; the body buffer
 * grows to at most max_response minus the head; a chunk-size line is at
 * most WEIR_HTTP_MAX_LINE bytes and the trailers WEIR_HTTP_MAX_HEAD.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "http_client.h"
#include "log.h"
#include "weir.h"

#define WEIR_HTTP_MAX_URL   8192    /* bytes of a URL */
#define WEIR_HTTP_MAX_LINE  4096    /* bytes of a chunk-size line */

typedef enum {
    WEIR_HC_RESOLVE = 0,            /* waiting for uv_getaddrinfo */
    WEIR_HC_CONNECT,                /* non-blocking connect in progress */
    WEIR_HC_TLS,                    /* TLS handshake */
    WEIR_HC_IO,                     /* writing the request, reading the response */
} weir_http_state_e;

typedef enum {
    WEIR_HB_NONE = 0,               /* HEAD, 204, 304: no body */
    WEIR_HB_LENGTH,                 /* Content-Length */
    WEIR_HB_CHUNKED,
    WEIR_HB_EOF,                    /* until the server closes */
} weir_http_body_e;

typedef enum {
    WEIR_HK_SIZE = 0,               /* hex digits of a chunk size */
    WEIR_HK_EXT,                    /* chunk extensions, up to LF */
    WEIR_HK_DATA,
    WEIR_HK_DATA_CR,                /* CRLF after chunk data */
    WEIR_HK_DATA_LF,
    WEIR_HK_TRAILER,                /* trailer lines, up to an empty one */
} weir_http_chunk_e;

struct weir_http_call_s {
    uv_loop_t          *loop;
    weir_http_cb        cb;
    void               *data;

    weir_http_state_e   state;
    unsigned            starting:1;     /* inside weir_http_request(): defer the callback */
    unsigned            finished:1;     /* weir_http_finish() ran: nothing more may happen */
    unsigned            cancelled:1;
    unsigned            gai_pending:1;  /* uv_getaddrinfo's callback has not run yet */
    unsigned            tls:1;
    unsigned            verify:1;
    unsigned            is_ip:1;        /* the host is an IP literal: no DNS, no SNI */
    unsigned            head_only:1;    /* HEAD request: no body in the response */
    unsigned            in_body:1;      /* the final head was parsed */
    unsigned            hs_want_write:1;/* the handshake waits for writability */
    unsigned            r_want_write:1; /* SSL_read waits for writability */
    unsigned            w_want_read:1;  /* SSL_write waits for readability */
    unsigned            send_failed:1;  /* writing failed: only the response may save the call */
    unsigned            nhandles;       /* libuv handles open (timer, polls closing) */

    uv_timer_t          timer;          /* the whole call's timeout; also fires deferred failures */
    uv_getaddrinfo_t    gai;
    struct addrinfo    *ai_list;        /* owned, from uv_getaddrinfo */
    struct addrinfo    *ai_next;        /* next address to try */
    struct sockaddr_storage lit;        /* the IP literal's address */
    socklen_t           lit_len;        /* 0 when not an IP literal or already tried */
    int                 conn_errno;     /* why the last connect failed */

    uv_poll_t          *poll;           /* on FD; closed and freed asynchronously */
    int                 fd;
    int                 events;         /* what POLL is armed for */
    SSL_CTX            *ctx;            /* referenced (https) */
    SSL                *ssl;

    char               *host;           /* no brackets; also SNI and name to verify */
    uint16_t            port;

    char               *out;            /* the request, head then body */
    size_t              out_len;
    size_t              out_off;        /* bytes already sent */

    char               *head;           /* response head, then the read buffer */
    size_t              head_len;
    size_t              scan;           /* where to resume looking for the head's end */
    size_t              head_cap;       /* min(WEIR_HTTP_MAX_HEAD, max_response) */
    size_t              resp_bytes;     /* head bytes (1xx included) + body bytes */
    size_t              max_response;

    int                 status;
    char               *hdrs;           /* normalised header lines of the final response */
    size_t              hdrs_len;

    weir_http_body_e    mode;
    uint64_t            remaining;      /* LENGTH: body bytes to come; chunked: of this chunk */
    weir_http_chunk_e   chunk;
    unsigned            chunk_digits;
    size_t              line_len;       /* chunk-size line or current trailer line */
    size_t              trailer_len;    /* all trailer bytes */
    char               *body;
    size_t              body_len;
    size_t              body_cap;

    const char         *error;          /* set by weir_http_fail: a literal or ERRBUF */
    char                errbuf[256];    /* the failure's message */
    char                ioerr[192];     /* why the last send or recv failed */
};

/* ---- the TLS context cache ---------------------------------------------- */

typedef struct weir_http_ctx_s {
    struct weir_http_ctx_s *next;
    int                     verify;
    char                   *ca_file;   /* NULL: system store */
    SSL_CTX                *ctx;
} weir_http_ctx_t;

static weir_http_ctx_t *weir_http_ctxs;

static const char *
weir_http_ssl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown error";
}

/*
 * The cached client context for (VERIFY, CA_FILE), made on first use.
 * Returns a new reference (free it with SSL_CTX_free), or NULL with ERR.
 */
static SSL_CTX *
weir_http_ctx_get(int verify, const char *ca_file, char *err, size_t errlen)
{
    weir_http_ctx_t *e;
    SSL_CTX *ctx = NULL;

    if (!verify) ca_file = NULL;
    for (e = weir_http_ctxs; e != NULL; e = e->next) {
        if (e->verify == verify
            && (e->ca_file == NULL ? ca_file == NULL : ca_file != NULL && strcmp(e->ca_file, ca_file) == 0)) {
            SSL_CTX_up_ref(e->ctx);
            return e->ctx;
        }
    }

    e = calloc(1, sizeof(*e));
    if (e == NULL) goto failed;
    if (ca_file != NULL && (e->ca_file = strdup(ca_file)) == NULL) goto failed;
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) goto failed;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                              | SSL_MODE_RELEASE_BUFFERS);
    /* many servers close without close_notify; bodies until EOF still end */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (ca_file != NULL ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1
                            : SSL_CTX_set_default_verify_paths(ctx) != 1)
            goto failed;
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    e->verify = verify;
    e->ctx = ctx;
    e->next = weir_http_ctxs;
    weir_http_ctxs = e;
    SSL_CTX_up_ref(ctx);
    return ctx;

failed:
    if (ca_file != NULL) snprintf(err, errlen, "cannot load CA file %s: %s", ca_file, weir_http_ssl_reason());
    else snprintf(err, errlen, "cannot set up TLS: %s", e ? weir_http_ssl_reason() : "out of memory");
    ERR_clear_error();
    SSL_CTX_free(ctx);
    if (e) free(e->ca_file);
    free(e);
    return NULL;
}

void
weir_http_client_cleanup(void)
{
    while (weir_http_ctxs != NULL) {
        weir_http_ctx_t *e = weir_http_ctxs;
        weir_http_ctxs = e->next;
        SSL_CTX_free(e->ctx);
        free(e->ca_file);
        free(e);
    }
}

/* ---- small helpers --------------------------------------------------------- */

static int
weir_http_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
           || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int
weir_http_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* NAME[0..LEN) equals the NUL-terminated S, ignoring case. */
static int
weir_http_eq(const char *name, size_t len, const char *s)
{
    return strlen(s) == len && strncasecmp(name, s, len) == 0;
}

static const char *
weir_http_errno_msg(const char *what, int e, char *buf, size_t len)
{
    switch (e) {
    case ECONNREFUSED: return "connection refused";
    case ECONNRESET:   return "connection reset";
    case EHOSTUNREACH: return "host unreachable";
    case ENETUNREACH:  return "network unreachable";
    default:
        snprintf(buf, len, "%s: %s", what, strerror(e));
        return buf;
    }
}

static void
weir_http_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
weir_http_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- the request ------------------------------------------------------------ */

typedef struct {
    int         tls;
    const char *host;           /* into the URL, HOST_LEN bytes, no brackets */
    size_t      host_len;
    int         bracketed;
    uint16_t    port;
    int         explicit_port;
    const char *target;         /* path and query, TARGET_LEN bytes; "" means "/" */
    size_t      target_len;
} weir_http_url_t;

/* Split URL; returns WEIR_OK or WEIR_ERROR with ERR. Pointers go into URL. */
static int
weir_http_parse_url(const char *url, weir_http_url_t *u, char *err, size_t errlen)
{
    const char *p, *auth, *auth_end, *end;
    size_t n = url ? strnlen(url, WEIR_HTTP_MAX_URL + 1) : 0;

    memset(u, 0, sizeof(*u));
    if (url == NULL || n == 0) {
        weir_http_err(err, errlen, "bad URL: empty");
        return WEIR_ERROR;
    }
    if (n > WEIR_HTTP_MAX_URL) {
        weir_http_err(err, errlen, "bad URL: longer than %d bytes", WEIR_HTTP_MAX_URL);
        return WEIR_ERROR;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) url[i];
        if (c <= 0x20 || c >= 0x7f) {
            weir_http_err(err, errlen, "bad URL: byte 0x%02x at %zu (percent-encode it)", c, i);
            return WEIR_ERROR;
        }
    }
    if (strncasecmp(url, "http://", 7) == 0) {
        auth = url + 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        auth = url + 8;
        u->tls = 1;
    } else {
        weir_http_err(err, errlen, "bad URL: not http:// or https://");
        return WEIR_ERROR;
    }
    end = url + n;
    auth_end = auth + strcspn(auth, "/?#");
    if (memchr(auth, '@', (size_t) (auth_end - auth)) != NULL) {
        weir_http_err(err, errlen, "bad URL: user info is not supported");
        return WEIR_ERROR;
    }

    const char *port = NULL;
    if (*auth == '[') {
        const char *rb = memchr(auth, ']', (size_t) (auth_end - auth));
        if (rb == NULL || (rb + 1 != auth_end && rb[1] != ':')) {
            weir_http_err(err, errlen, "bad URL: malformed IPv6 address");
            return WEIR_ERROR;
        }
        u->host = auth + 1;
        u->host_len = (size_t) (rb - auth - 1);
        u->bracketed = 1;
        if (rb + 1 != auth_end) port = rb + 2;
    } else {
        const char *colon = memchr(auth, ':', (size_t) (auth_end - auth));
        u->host = auth;
        u->host_len = (size_t) ((colon ? colon : auth_end) - auth);
        if (colon) port = colon + 1;
    }
    if (u->host_len == 0 || u->host_len > 255) {
        weir_http_err(err, errlen, "bad URL: %s host", u->host_len ? "too long a" : "no");
        return WEIR_ERROR;
    }
    for (size_t i = 0; i < u->host_len; i++) {
        unsigned char c = (unsigned char) u->host[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'
                 || c == '.' || c == '_' || (u->bracketed && c == ':');
        if (!ok) {
            weir_http_err(err, errlen, "bad URL: invalid character in host");
            return WEIR_ERROR;
        }
    }
    u->port = u->tls ? 443 : 80;
    if (port != NULL && port < auth_end) {
        unsigned long v = 0;
        for (p = port; p < auth_end; p++) {
            if (*p < '0' || *p > '9' || (v = v * 10 + (unsigned long) (*p - '0')) > 65535) {
                weir_http_err(err, errlen, "bad URL: invalid port");
                return WEIR_ERROR;
            }
        }
        if (v == 0) {
            weir_http_err(err, errlen, "bad URL: invalid port");
            return WEIR_ERROR;
        }
        u->port = (uint16_t) v;
        u->explicit_port = 1;
    }
    const char *frag = memchr(auth_end, '#', (size_t) (end - auth_end));
    u->target = auth_end;
    u->target_len = (size_t) ((frag ? frag : end) - auth_end);
    return WEIR_OK;
}

/*
 * Check the caller's header lines: each "Name: value\r\n", no CR or LF
 * inside. Sets *HAS_HOST / *HAS_UA when the caller gives its own.
 */
static int
weir_http_check_headers(const char *h, int *has_host, int *has_ua, char *err, size_t errlen)
{
    *has_host = *has_ua = 0;
    if (h == NULL) return WEIR_OK;
    while (*h != '\0') {
        const char *eol = strstr(h, "\r\n");
        const char *colon = strchr(h, ':');
        size_t nl;
        if (eol == NULL) {
            weir_http_err(err, errlen, "bad header line: does not end with CRLF");
            return WEIR_ERROR;
        }
        if (colon == NULL || colon > eol || colon == h) {
            weir_http_err(err, errlen, "bad header line: no \"Name:\"");
            return WEIR_ERROR;
        }
        nl = (size_t) (colon - h);
        for (const char *p = h; p < colon; p++) {
            if (!weir_http_tchar((unsigned char) *p)) {
                weir_http_err(err, errlen, "bad header line: invalid character in name");
                return WEIR_ERROR;
            }
        }
        for (const char *p = colon + 1; p < eol; p++) {
            unsigned char c = (unsigned char) *p;
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                weir_http_err(err, errlen, "bad header line: control character in %.*s", (int) WEIR_MIN(nl, 64), h);
                return WEIR_ERROR;
            }
        }
        if (weir_http_eq(h, nl, "Content-Length") || weir_http_eq(h, nl, "Transfer-Encoding")
            || weir_http_eq(h, nl, "Connection")) {
            weir_http_err(err, errlen, "bad header line: %.*s is set by the client", (int) nl, h);
            return WEIR_ERROR;
        }
        if (weir_http_eq(h, nl, "Host")) *has_host = 1;
        if (weir_http_eq(h, nl, "User-Agent")) *has_ua = 1;
        h = eol + 2;
    }
    return WEIR_OK;
}

/* Build the request into C->out. Returns WEIR_OK or WEIR_ERROR with ERR. */
static int
weir_http_build(weir_http_call_t *c, const weir_http_req_t *req, const weir_http_url_t *u, const char *method,
                char *err, size_t errlen)
{
    int has_host, has_ua;
    size_t hl = req->headers ? strlen(req->headers) : 0;

    if (weir_http_check_headers(req->headers, &has_host, &has_ua, err, errlen) != WEIR_OK) return WEIR_ERROR;
    int with_cl = req->body != NULL || req->body_len > 0 || strcmp(method, "POST") == 0
                  || strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0;
    size_t cap = strlen(method) + u->target_len + u->host_len + hl + 256;
    if (req->body_len > SIZE_MAX - cap) goto nomem;
    c->out = malloc(cap + req->body_len);
    if (c->out == NULL) goto nomem;

    int n = snprintf(c->out, cap, "%s %s%.*s HTTP/1.1\r\n", method,
                     u->target_len == 0 || u->target[0] == '?' ? "/" : "", (int) u->target_len, u->target);
    size_t o = (size_t) n;
    if (!has_host) {
        o += (size_t) snprintf(c->out + o, cap - o, "Host: %s%.*s%s", u->bracketed ? "[" : "",
                               (int) u->host_len, u->host, u->bracketed ? "]" : "");
        if (u->explicit_port && u->port != (u->tls ? 443 : 80))
            o += (size_t) snprintf(c->out + o, cap - o, ":%u", (unsigned) u->port);
        o += (size_t) snprintf(c->out + o, cap - o, "\r\n");
    }
    if (!has_ua) o += (size_t) snprintf(c->out + o, cap - o, "User-Agent: weir/" WEIR_VERSION "\r\n");
    if (with_cl) o += (size_t) snprintf(c->out + o, cap - o, "Content-Length: %zu\r\n", req->body_len);
    o += (size_t) snprintf(c->out + o, cap - o, "Connection: close\r\n");
    if (o + hl + 2 >= cap) goto nomem;      /* cannot happen: CAP counts every part */
    memcpy(c->out + o, req->headers ? req->headers : "", hl);
    o += hl;
    memcpy(c->out + o, "\r\n", 2);
    o += 2;
    if (req->body_len > 0) memcpy(c->out + o, req->body, req->body_len);
    c->out_len = o + req->body_len;
    return WEIR_OK;

nomem:
    weir_http_err(err, errlen, "out of memory");
    return WEIR_ERROR;
}

/* ---- ending a call ------------------------------------------------------------ */

static void weir_http_finish(weir_http_call_t *c, int ok);
static void weir_http_connect_next(weir_http_call_t *c);
static void weir_http_io(weir_http_call_t *c);

static void
weir_http_maybe_free(weir_http_call_t *c)
{
    if (c->nhandles == 0 && !c->gai_pending) free(c);
}

static void
weir_http_poll_closed(uv_handle_t *h)
{
    weir_http_call_t *c = h->data;
    free(h);
    c->nhandles--;
    weir_http_maybe_free(c);
}

static void
weir_http_timer_closed(uv_handle_t *h)
{
    weir_http_call_t *c = h->data;
    c->nhandles--;
    weir_http_maybe_free(c);
}

/* Close the socket (and its TLS and poll handle) now; the handle's memory
 * goes in its close callback. The poll handle is closed before the fd, so
 * a new socket reusing the number is never confused with this one. */
static void
weir_http_close_socket(weir_http_call_t *c)
{
    if (c->ssl != NULL) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->poll != NULL) {
        uv_close((uv_handle_t *) c->poll, weir_http_poll_closed);
        c->poll = NULL;
    }
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->events = 0;
    c->r_want_write = c->w_want_read = c->hs_want_write = 0;
}

/*
 * End C: on success (OK) with the parsed response, else with C->error.
 * Runs the callback unless cancelled. C's buffers are gone afterwards and C
 * itself is freed later, from a close callback: the caller must return
 * without touching anything but C->finished.
 */
static void
weir_http_finish(weir_http_call_t *c, int ok)
{
    if (c->finished) return;
    c->finished = 1;
    weir_http_close_socket(c);
    uv_timer_stop(&c->timer);
    if (c->gai_pending) uv_cancel((uv_req_t *) &c->gai);   /* its callback frees what it got */
    if (c->ai_list != NULL) uv_freeaddrinfo(c->ai_list);
    c->ai_list = c->ai_next = NULL;

    if (!c->cancelled) {
        weir_http_res_t res;
        memset(&res, 0, sizeof(res));
        if (ok) {
            res.status = c->status;
            res.headers = c->hdrs ? c->hdrs : "";
            res.headers_len = c->hdrs_len;
            res.body = c->body ? c->body : "";
            res.body_len = c->body_len;
        } else {
            res.error = c->error ? c->error : "unknown error";
            if (weir_log_enabled(WEIR_LOG_DEBUG)) {
                char h[300], e[300];
                weir_log(WEIR_LOG_DEBUG, "http call failed", "\"host\":\"%s\",\"port\":%u,\"error\":\"%s\"",
                         weir_log_str(h, sizeof(h), c->host), (unsigned) c->port,
                         weir_log_str(e, sizeof(e), res.error));
            }
        }
        c->cb(c, &res, c->data);
    }

    if (c->ctx != NULL) SSL_CTX_free(c->ctx);
    c->ctx = NULL;
    free(c->host);
    free(c->out);
    free(c->head);
    free(c->hdrs);
    free(c->body);
    c->host = c->out = c->head = c->hdrs = c->body = NULL;
    uv_close((uv_handle_t *) &c->timer, weir_http_timer_closed);
}

static void
weir_http_timer_cb(uv_timer_t *t)
{
    weir_http_call_t *c = t->data;
    if (c->error == NULL) c->error = "timeout";
    weir_http_finish(c, 0);
}

/*
 * Fail C with the printf-style message. Inside weir_http_request() the
 * failure is only recorded and the timer fired at once, so that the
 * callback runs from the loop.
 */
static void
weir_http_fail(weir_http_call_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
weir_http_fail(weir_http_call_t *c, const char *fmt, ...)
{
    if (c->finished) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errbuf, sizeof(c->errbuf), fmt, ap);
    va_end(ap);
    c->error = c->errbuf;
    if (c->starting) {
        weir_http_close_socket(c);
        uv_timer_stop(&c->timer);
        uv_timer_start(&c->timer, weir_http_timer_cb, 0, 0);
        return;
    }
    weir_http_finish(c, 0);
}

void
weir_http_cancel(weir_http_call_t *c)
{
    if (c == NULL || c->finished) return;
    c->cancelled = 1;
    weir_http_finish(c, 0);
}

/* ---- socket I/O ----------------------------------------------------------------- */

static void weir_http_poll_cb(uv_poll_t *h, int status, int events);

/* Arm the poll handle for what C waits for now. */
static void
weir_http_arm(weir_http_call_t *c)
{
    int ev;
    if (c->finished || c->poll == NULL) return;
    switch (c->state) {
    case WEIR_HC_CONNECT: ev = UV_WRITABLE; break;
    case WEIR_HC_TLS:     ev = c->hs_want_write ? UV_WRITABLE : UV_READABLE; break;
    default:
        ev = UV_READABLE;
        if ((c->out_off < c->out_len && !c->w_want_read) || c->r_want_write) ev |= UV_WRITABLE;
        break;
    }
    if (ev == c->events) return;
    int r = uv_poll_start(c->poll, ev, weir_http_poll_cb);
    if (r < 0) {
        weir_http_fail(c, "poll: %s", uv_strerror(r));
        return;
    }
    c->events = ev;
}

/* Receive into BUF: >0 bytes, 0 at the end of the stream, WEIR_AGAIN, or
 * WEIR_ERROR with C->ioerr set (C not failed yet). */
static ssize_t
weir_http_recv(weir_http_call_t *c, char *buf, size_t n)
{
    if (c->ssl != NULL) {
        c->r_want_write = 0;
        ERR_clear_error();
        errno = 0;      /* SSL_ERROR_SYSCALL is judged by it */
        int r = SSL_read(c->ssl, buf, (int) WEIR_MIN(n, (size_t) 1 << 30));
        if (r > 0) return r;
        int e = SSL_get_error(c->ssl, r);
        switch (e) {
        case SSL_ERROR_WANT_READ:   return WEIR_AGAIN;
        case SSL_ERROR_WANT_WRITE:  c->r_want_write = 1; return WEIR_AGAIN;
        case SSL_ERROR_ZERO_RETURN: return 0;
        case SSL_ERROR_SYSCALL:
            if (ERR_peek_error() == 0) {
                char tmp[128];
                if (errno == 0) return 0;
                snprintf(c->ioerr, sizeof(c->ioerr), "%s", weir_http_errno_msg("recv", errno, tmp, sizeof(tmp)));
                return WEIR_ERROR;
            }
            /* fall through */
        default:
            snprintf(c->ioerr, sizeof(c->ioerr), "TLS: %s", weir_http_ssl_reason());
            ERR_clear_error();
            return WEIR_ERROR;
        }
    }
    for (;;) {
        ssize_t r = recv(c->fd, buf, n, 0);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return WEIR_AGAIN;
        char tmp[128];
        snprintf(c->ioerr, sizeof(c->ioerr), "%s", weir_http_errno_msg("recv", errno, tmp, sizeof(tmp)));
        return WEIR_ERROR;
    }
}

/* Send from BUF: bytes written (maybe 0), or WEIR_ERROR with C->ioerr set. */
static ssize_t
weir_http_send(weir_http_call_t *c, const char *buf, size_t n)
{
    if (c->ssl != NULL) {
        c->w_want_read = 0;
        ERR_clear_error();
        errno = 0;
        int r = SSL_write(c->ssl, buf, (int) WEIR_MIN(n, (size_t) 1 << 30));
        if (r > 0) return r;
        switch (SSL_get_error(c->ssl, r)) {
        case SSL_ERROR_WANT_WRITE: return 0;
        case SSL_ERROR_WANT_READ:  c->w_want_read = 1; return 0;
        case SSL_ERROR_SYSCALL:
            if (ERR_peek_error() == 0 && errno != 0) {
                char tmp[128];
                snprintf(c->ioerr, sizeof(c->ioerr), "%s", weir_http_errno_msg("send", errno, tmp, sizeof(tmp)));
                return WEIR_ERROR;
            }
            /* fall through */
        default:
            snprintf(c->ioerr, sizeof(c->ioerr), "TLS: %s", weir_http_ssl_reason());
            ERR_clear_error();
            return WEIR_ERROR;
        }
    }
    for (;;) {
        ssize_t r = send(c->fd, buf, n, MSG_NOSIGNAL);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        char tmp[128];
        snprintf(c->ioerr, sizeof(c->ioerr), "%s", weir_http_errno_msg("send", errno, tmp, sizeof(tmp)));
        return WEIR_ERROR;
    }
}

/* ---- the response ------------------------------------------------------------------ */

/* Append to the body, within max_response. WEIR_OK, or WEIR_ERROR (C failed). */
static int
weir_http_append(weir_http_call_t *c, const char *p, size_t n)
{
    if (n == 0) return WEIR_OK;
    size_t allowed = c->max_response - c->resp_bytes;
    if (n > allowed) {
        weir_http_fail(c, "response too large");
        return WEIR_ERROR;
    }
    if (c->body_len + n > c->body_cap) {
        size_t limit = c->body_len + allowed;       /* the most the body may ever hold */
        size_t cap = WEIR_MAX(c->body_cap * 2, (size_t) 16384);
        cap = WEIR_MAX(cap, c->body_len + n);
        cap = WEIR_MIN(cap, limit);
        char *nb = realloc(c->body, cap);
        if (nb == NULL) {
            weir_http_fail(c, "out of memory");
            return WEIR_ERROR;
        }
        c->body = nb;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, p, n);
    c->body_len += n;
    c->resp_bytes += n;
    return WEIR_OK;
}

/*
 * Feed N body bytes at P to the decoder. Returns WEIR_AGAIN (more to come),
 * WEIR_DONE (the body is complete: bytes after it are ignored) or WEIR_ERROR
 * (C failed).
 */
static int
weir_http_body_feed(weir_http_call_t *c, const char *p, size_t n)
{
    const char *end = p + n;

    if (c->mode == WEIR_HB_EOF) return weir_http_append(c, p, n) == WEIR_OK ? WEIR_AGAIN : WEIR_ERROR;
    if (c->mode == WEIR_HB_LENGTH) {
        size_t take = (size_t) WEIR_MIN((uint64_t) n, c->remaining);
        if (weir_http_append(c, p, take) != WEIR_OK) return WEIR_ERROR;
        c->remaining -= take;
        return c->remaining == 0 ? WEIR_DONE : WEIR_AGAIN;
    }

    while (p < end) {
        unsigned char ch = (unsigned char) *p;
        switch (c->chunk) {
        case WEIR_HK_SIZE:
        case WEIR_HK_EXT:
            if (++c->line_len > WEIR_HTTP_MAX_LINE) goto malformed;
            p++;
            if (ch == '\n') {
                if (c->chunk_digits == 0) goto malformed;
                c->line_len = 0;
                if (c->remaining == 0) {
                    c->chunk = WEIR_HK_TRAILER;
                } else {
                    if (c->remaining > (uint64_t) (c->max_response - c->resp_bytes)) {
                        weir_http_fail(c, "response too large");
                        return WEIR_ERROR;
                    }
                    c->chunk = WEIR_HK_DATA;
                }
            } else if (c->chunk == WEIR_HK_EXT) {
                if (ch != '\t' && ch != '\r' && (ch < 0x20 || ch == 0x7f)) goto malformed;
            } else if (weir_http_hexval(ch) >= 0) {
                if (c->remaining > (UINT64_MAX >> 4)) goto malformed;
                c->remaining = (c->remaining << 4) | (uint64_t) weir_http_hexval(ch);
                c->chunk_digits++;
            } else if (ch == ';' || ch == ' ' || ch == '\t' || ch == '\r') {
                if (c->chunk_digits == 0) goto malformed;
                c->chunk = WEIR_HK_EXT;
            } else {
                goto malformed;
            }
            break;
        case WEIR_HK_DATA: {
            size_t take = (size_t) WEIR_MIN((uint64_t) (end - p), c->remaining);
            if (weir_http_append(c, p, take) != WEIR_OK) return WEIR_ERROR;
            p += take;
            c->remaining -= take;
            if (c->remaining == 0) c->chunk = WEIR_HK_DATA_CR;
            break;
        }
        case WEIR_HK_DATA_CR:
        case WEIR_HK_DATA_LF:
            p++;
            if (ch == '\r' && c->chunk == WEIR_HK_DATA_CR) {
                c->chunk = WEIR_HK_DATA_LF;
            } else if (ch == '\n') {
                c->chunk = WEIR_HK_SIZE;
                c->chunk_digits = 0;
                c->line_len = 0;
            } else {
                goto malformed;
            }
            break;
        case WEIR_HK_TRAILER:
            /* trailer fields are read and dropped */
            p++;
            if (++c->trailer_len > WEIR_HTTP_MAX_HEAD) {
                weir_http_fail(c, "response head too large");
                return WEIR_ERROR;
            }
            if (ch == '\n') {
                if (c->line_len == 0) return WEIR_DONE;
                c->line_len = 0;
            } else if (ch != '\r') {
                c->line_len++;
            }
            break;
        }
    }
    return WEIR_AGAIN;

malformed:
    weir_http_fail(c, "malformed response: bad chunk");
    return WEIR_ERROR;
}

/* Parse a Content-Length value (a list of equal numbers is one number) into
 * *CL, which holds the value of an earlier header or UINT64_MAX. */
static int
weir_http_content_length(const char *v, size_t len, uint64_t *cl)
{
    const char *p = v, *end = v + len;
    int any = 0;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) p++;
        if (p == end) break;
        uint64_t n = 0;
        const char *d = p;
        while (p < end && *p >= '0' && *p <= '9') {
            if (n > (UINT64_MAX - 9) / 10) return WEIR_ERROR;
            n = n * 10 + (uint64_t) (*p++ - '0');
        }
        if (p == d) return WEIR_ERROR;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        if (p < end && *p != ',') return WEIR_ERROR;
        if (*cl != UINT64_MAX && *cl != n) return WEIR_ERROR;
        *cl = n;
        any = 1;
    }
    return any ? WEIR_OK : WEIR_ERROR;
}

/* Whether the last transfer coding in V is "chunked". */
static int
weir_http_last_chunked(const char *v, size_t len)
{
    while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t' || v[len - 1] == ',')) len--;
    size_t i = len;
    while (i > 0 && v[i - 1] != ',' && v[i - 1] != ' ' && v[i - 1] != '\t') i--;
    return weir_http_eq(v + i, len - i, "chunked");
}

/*
 * Parse the response head HEAD[0..LEN) (LEN includes the empty line).
 * A 1xx head is only checked. A final head fills status, the normalised
 * header lines and the body mode. Returns WEIR_OK or WEIR_ERROR (C failed).
 */
static int
weir_http_parse_head(weir_http_call_t *c, const char *head, size_t len)
{
    const char *p = head, *end = head + len;
    const char *why = "bad status line";
    const char *line, *eol;
    size_t ll;
    uint64_t cl = UINT64_MAX;
    int te = 0, chunked = 0;

    /* status line: HTTP/1.x SP 3DIGIT [SP reason] */
    eol = memchr(p, '\n', len);
    ll = (size_t) (eol - p);
    if (ll > 0 && p[ll - 1] == '\r') ll--;
    if (ll < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[7] < '0' || p[7] > '9' || p[8] != ' '
        || p[9] < '1' || p[9] > '9' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9'
        || (ll > 12 && p[12] != ' '))
        goto malformed;
    c->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    for (size_t i = 12; i < ll; i++)
        if (p[i] == '\r' || (p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f) goto malformed;
    p = eol + 1;
    if (c->status >= 100 && c->status < 200 && c->status != 101) return WEIR_OK;

    free(c->hdrs);
    c->hdrs_len = 0;
    c->hdrs = malloc(2 * len + 1);     /* "n:v\n" grows at most by 2 per line */
    if (c->hdrs == NULL) {
        weir_http_fail(c, "out of memory");
        return WEIR_ERROR;
    }
    for (;;) {
        line = p;
        eol = memchr(p, '\n', (size_t) (end - p));
        ll = (size_t) (eol - line);
        p = eol + 1;
        if (ll > 0 && line[ll - 1] == '\r') ll--;
        if (ll == 0) break;

        why = "bad header line";
        for (size_t i = 0; i < ll; i++) {
            unsigned char ch = (unsigned char) line[i];
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f) goto malformed;
        }
        const char *v, *ve = line + ll;
        if (line[0] == ' ' || line[0] == '\t') {
            /* obs-fold: the line continues the previous value */
            if (c->hdrs_len == 0) goto malformed;
            for (v = line; v < ve && (*v == ' ' || *v == '\t'); v++) {}
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            c->hdrs_len -= 2;
            if (ve > v) {
                c->hdrs[c->hdrs_len++] = ' ';
                memcpy(c->hdrs + c->hdrs_len, v, (size_t) (ve - v));
                c->hdrs_len += (size_t) (ve - v);
            }
            memcpy(c->hdrs + c->hdrs_len, "\r\n", 2);
            c->hdrs_len += 2;
            continue;   /* framing headers are never folded by sane servers; not re-read */
        }
        const char *colon = memchr(line, ':', ll);
        if (colon == NULL || colon == line) goto malformed;
        for (const char *q = line; q < colon; q++)
            if (!weir_http_tchar((unsigned char) *q)) goto malformed;
        size_t nl = (size_t) (colon - line);
        for (v = colon + 1; v < ve && (*v == ' ' || *v == '\t'); v++) {}
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        size_t vl = (size_t) (ve - v);

        memcpy(c->hdrs + c->hdrs_len, line, nl);
        c->hdrs_len += nl;
        memcpy(c->hdrs + c->hdrs_len, ": ", 2);
        c->hdrs_len += 2;
        memcpy(c->hdrs + c->hdrs_len, v, vl);
        c->hdrs_len += vl;
        memcpy(c->hdrs + c->hdrs_len, "\r\n", 2);
        c->hdrs_len += 2;

        if (weir_http_eq(line, nl, "Content-Length")) {
            why = "bad Content-Length";
            if (weir_http_content_length(v, vl, &cl) != WEIR_OK) goto malformed;
        } else if (weir_http_eq(line, nl, "Transfer-Encoding")) {
            te = 1;
            chunked = weir_http_last_chunked(v, vl);
        }
    }
    c->hdrs[c->hdrs_len] = '\0';

    if (c->status == 101) {
        weir_http_fail(c, "malformed response: unexpected 101");
        return WEIR_ERROR;
    }
    if (c->head_only || c->status == 204 || c->status == 304) {
        c->mode = WEIR_HB_NONE;
    } else if (te) {
        c->mode = chunked ? WEIR_HB_CHUNKED : WEIR_HB_EOF;
    } else if (cl != UINT64_MAX) {
        if (cl > (uint64_t) (c->max_response - c->resp_bytes)) {
            weir_http_fail(c, "response too large");
            return WEIR_ERROR;
        }
        c->mode = cl == 0 ? WEIR_HB_NONE : WEIR_HB_LENGTH;
        c->remaining = cl;
        if (cl > 0 && (c->body = malloc((size_t) cl)) == NULL) {
            weir_http_fail(c, "out of memory");
            return WEIR_ERROR;
        }
        c->body_cap = (size_t) cl;
    } else {
        c->mode = WEIR_HB_EOF;
    }
    return WEIR_OK;

malformed:
    weir_http_fail(c, "malformed response: %s", why);
    return WEIR_ERROR;
}

/* Where the head in C->head ends (past its empty line), or 0. */
static size_t
weir_http_head_end(weir_http_call_t *c)
{
    size_t i = c->scan;
    for (; i < c->head_len; i++) {
        if (c->head[i] != '\n') continue;
        if (i + 1 < c->head_len && c->head[i + 1] == '\n') return i + 2;
        if (i + 2 < c->head_len && c->head[i + 1] == '\r' && c->head[i + 2] == '\n') return i + 3;
        if (i + 2 >= c->head_len) break;    /* maybe an empty line still arriving */
    }
    c->scan = i;
    return 0;
}

/*
 * New bytes arrived in C->head. Parse every complete head (1xx ones are
 * dropped), then feed what follows the final head to the body decoder.
 * Returns WEIR_AGAIN, WEIR_DONE (the response is complete) or WEIR_ERROR
 * (C failed).
 */
static int
weir_http_head_step(weir_http_call_t *c)
{
    for (;;) {
        size_t hl = weir_http_head_end(c);
        if (hl == 0) {
            if (c->head_len == c->head_cap) {
                weir_http_fail(c, "%s", c->resp_bytes + c->head_len >= c->max_response
                                            ? "response too large" : "response head too large");
                return WEIR_ERROR;
            }
            return WEIR_AGAIN;
        }
        c->resp_bytes += hl;
        if (c->resp_bytes > c->max_response) {
            weir_http_fail(c, "response too large");
            return WEIR_ERROR;
        }
        if (weir_http_parse_head(c, c->head, hl) != WEIR_OK) return WEIR_ERROR;
        size_t rest = c->head_len - hl;
        if (c->status < 200 && c->status != 101) {
            /* an interim response: the final one follows; the 16 KiB bound covers them all */
            memmove(c->head, c->head + hl, rest);
            c->head_len = rest;
            c->head_cap -= hl;
            c->scan = 0;
            continue;
        }
        c->in_body = 1;
        if (c->mode == WEIR_HB_NONE) return WEIR_DONE;
        if (rest == 0) return WEIR_AGAIN;
        return weir_http_body_feed(c, c->head + hl, rest);
    }
}

/* The server closed its side: the response ends here. Fails or finishes C. */
static void
weir_http_eof(weir_http_call_t *c)
{
    if (c->in_body && c->mode == WEIR_HB_EOF) {
        weir_http_finish(c, 1);
        return;
    }
    if (c->send_failed) {
        weir_http_fail(c, "%s", c->ioerr);
        return;
    }
    weir_http_fail(c, "connection closed before the response was complete");
}

/* Read all that is available and act on it. */
static void
weir_http_read(weir_http_call_t *c)
{
    for (;;) {
        char *buf;
        size_t room;
        if (!c->in_body) {
            buf = c->head + c->head_len;
            room = c->head_cap - c->head_len;
        } else {
            buf = c->head;      /* the head was copied out: its buffer reads the body */
            room = WEIR_HTTP_MAX_HEAD;
        }
        ssize_t n = weir_http_recv(c, buf, room);
        if (n == WEIR_AGAIN) return;
        if (n == 0) {
            weir_http_eof(c);
            return;
        }
        if (n < 0) {
            weir_http_fail(c, "%s", c->ioerr);
            return;
        }
        int r;
        if (!c->in_body) {
            c->head_len += (size_t) n;
            r = weir_http_head_step(c);
        } else {
            r = weir_http_body_feed(c, buf, (size_t) n);
        }
        if (r == WEIR_DONE) {
            weir_http_finish(c, 1);
            return;
        }
        if (r == WEIR_ERROR) return;
    }
}

/* Send what is left of the request. A failure is remembered, not fatal:
 * the server may have answered already (say, 413) and closed. */
static void
weir_http_flush(weir_http_call_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = weir_http_send(c, c->out + c->out_off, c->out_len - c->out_off);
        if (w == WEIR_ERROR) {
            c->send_failed = 1;
            c->out_off = c->out_len;
            break;
        }
        if (w == 0) return;
        c->out_off += (size_t) w;
    }
    free(c->out);
    c->out = NULL;
    c->out_off = c->out_len = 0;
}

/* The connection is up (and TLS done): write and read. */
static void
weir_http_io(weir_http_call_t *c)
{
    if (c->out_off < c->out_len) weir_http_flush(c);
    weir_http_read(c);
    if (!c->finished) weir_http_arm(c);
}

/* ---- connecting ---------------------------------------------------------------------- */

static void
weir_http_tls_step(weir_http_call_t *c)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->state = WEIR_HC_IO;
        c->hs_want_write = 0;
        weir_http_io(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        c->hs_want_write = e == SSL_ERROR_WANT_WRITE;
        weir_http_arm(c);
        return;
    }
    long vr = SSL_get_verify_result(c->ssl);
    if (c->verify && vr != X509_V_OK) {
        weir_http_fail(c, "TLS: certificate verify failed: %s", X509_verify_cert_error_string(vr));
    } else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        char tmp[128];
        weir_http_fail(c, "TLS: %s", errno == 0 ? "connection closed during the handshake"
                                                 : weir_http_errno_msg("handshake", errno, tmp, sizeof(tmp)));
    } else {
        weir_http_fail(c, "TLS: %s", weir_http_ssl_reason());
    }
    ERR_clear_error();
}

static int
weir_http_tls_start(weir_http_call_t *c)
{
    c->ssl = SSL_new(c->ctx);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) return WEIR_ERROR;
    if (!c->is_ip && SSL_set_tlsext_host_name(c->ssl, c->host) != 1) return WEIR_ERROR;
    if (c->verify) {
        if (c->is_ip) {
            if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), c->host) != 1) return WEIR_ERROR;
        } else {
            SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            if (SSL_set1_host(c->ssl, c->host) != 1) return WEIR_ERROR;
        }
    }
    SSL_set_connect_state(c->ssl);
    c->state = WEIR_HC_TLS;
    return WEIR_OK;
}

/* The non-blocking connect ended: go on, or try the next address. */
static void
weir_http_connected(weir_http_call_t *c)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err != 0) {
        c->conn_errno = err;
        weir_http_close_socket(c);
        weir_http_connect_next(c);
        return;
    }
    if (c->tls) {
        if (weir_http_tls_start(c) != WEIR_OK) {
            weir_http_fail(c, "TLS: cannot set up the connection: %s", weir_http_ssl_reason());
            ERR_clear_error();
            return;
        }
        weir_http_tls_step(c);
        return;
    }
    c->state = WEIR_HC_IO;
    weir_http_io(c);
}

/*
 * On POLLERR libuv stops the handle and reports UV_EBADF: the socket's own
 * error (SO_ERROR, or what recv/send say, such as a reset after the last
 * response bytes) tells more, so the state's handler runs anyway; the
 * poll error is reported only when that handler did not end the call.
 */
static void
weir_http_poll_cb(uv_poll_t *h, int status, int events)
{
    weir_http_call_t *c = h->data;
    WEIR_UNUSED(events);
    if (c->finished) return;
    if (status < 0) c->events = 0;      /* libuv stopped the handle */
    switch (c->state) {
    case WEIR_HC_CONNECT: weir_http_connected(c); return;
    case WEIR_HC_TLS:     weir_http_tls_step(c); break;
    case WEIR_HC_IO:      weir_http_io(c); break;
    default:              break;
    }
    if (status < 0 && !c->finished) weir_http_fail(c, "poll: %s", uv_strerror(status));
}

/* Start connecting to the next address; fail C when none is left. */
static void
weir_http_connect_next(weir_http_call_t *c)
{
    for (;;) {
        const struct sockaddr *sa;
        socklen_t salen;
        if (c->lit_len > 0) {
            sa = (const struct sockaddr *) &c->lit;
            salen = c->lit_len;
            c->lit_len = 0;
        } else if (c->ai_next != NULL) {
            sa = c->ai_next->ai_addr;
            salen = c->ai_next->ai_addrlen;
            c->ai_next = c->ai_next->ai_next;
            if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) continue;
        } else {
            char tmp[128];
            if (c->conn_errno == 0) weir_http_fail(c, "DNS: no address");
            else weir_http_fail(c, "%s", weir_http_errno_msg("connect", c->conn_errno, tmp, sizeof(tmp)));
            return;
        }

        int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            c->conn_errno = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, sa, salen) < 0 && errno != EINPROGRESS) {
            c->conn_errno = errno;
            close(fd);
            continue;
        }
        c->poll = malloc(sizeof(*c->poll));
        if (c->poll == NULL) {
            close(fd);
            weir_http_fail(c, "out of memory");
            return;
        }
        int r = uv_poll_init(c->loop, c->poll, fd);
        if (r < 0) {
            free(c->poll);
            c->poll = NULL;
            close(fd);
            weir_http_fail(c, "poll: %s", uv_strerror(r));
            return;
        }
        c->poll->data = c;
        c->nhandles++;
        c->fd = fd;
        c->events = 0;
        c->state = WEIR_HC_CONNECT;
        weir_http_arm(c);
        return;
    }
}

static void
weir_http_gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    weir_http_call_t *c = req->data;
    c->gai_pending = 0;
    if (c->finished) {
        uv_freeaddrinfo(res);
        weir_http_maybe_free(c);
        return;
    }
    if (status < 0) {
        weir_http_fail(c, "DNS: %s", uv_strerror(status));
        return;
    }
    c->ai_list = c->ai_next = res;
    weir_http_connect_next(c);
}

/* ---- the entry point ------------------------------------------------------------------ */

weir_http_call_t *
weir_http_request(uv_loop_t *loop, const weir_http_req_t *req, weir_http_cb cb, void *data, char *err,
                  size_t errlen)
{
    weir_http_call_t *c = NULL;
    weir_http_url_t u;
    const char *method;
    unsigned char tmp[sizeof(struct in6_addr)];

    if (err != NULL && errlen > 0) err[0] = '\0';
    if (loop == NULL || req == NULL || cb == NULL) {
        weir_http_err(err, errlen, "missing loop, request or callback");
        goto failed;
    }
    if (weir_http_parse_url(req->url, &u, err, errlen) != WEIR_OK) goto failed;
    method = req->method ? req->method : "GET";
    size_t ml = strnlen(method, 33);
    for (size_t i = 0; i < ml; i++) {
        if (!weir_http_tchar((unsigned char) method[i])) ml = 0;
    }
    if (ml == 0 || ml > 32) {
        weir_http_err(err, errlen, "bad method");
        goto failed;
    }
    if (req->body == NULL && req->body_len > 0) {
        weir_http_err(err, errlen, "body_len without a body");
        goto failed;
    }

    c = calloc(1, sizeof(*c));
    if (c == NULL || (c->host = strndup(u.host, u.host_len)) == NULL) {
        weir_http_err(err, errlen, "out of memory");
        goto failed;
    }
    c->loop = loop;
    c->cb = cb;
    c->data = data;
    c->fd = -1;
    c->tls = u.tls != 0;
    c->verify = req->verify != 0;
    c->port = u.port;
    c->head_only = strcmp(method, "HEAD") == 0;
    c->max_response = req->max_response ? req->max_response : WEIR_HTTP_DEFAULT_MAX;
    c->head_cap = WEIR_MIN(c->max_response, (size_t) WEIR_HTTP_MAX_HEAD);

    if (u.bracketed) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *) &c->lit;
        if (inet_pton(AF_INET6, c->host, &a->sin6_addr) != 1) {
            weir_http_err(err, errlen, "bad URL: malformed IPv6 address");
            goto failed;
        }
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(u.port);
        c->lit_len = sizeof(*a);
        c->is_ip = 1;
    } else if (inet_pton(AF_INET, c->host, tmp) == 1) {
        struct sockaddr_in *a = (struct sockaddr_in *) &c->lit;
        memcpy(&a->sin_addr, tmp, sizeof(a->sin_addr));
        a->sin_family = AF_INET;
        a->sin_port = htons(u.port);
        c->lit_len = sizeof(*a);
        c->is_ip = 1;
    }

    if (weir_http_build(c, req, &u, method, err, errlen) != WEIR_OK) goto failed;
    if (c->tls && (c->ctx = weir_http_ctx_get(c->verify, req->ca_file, err, errlen)) == NULL) goto failed;
    c->head = malloc(WEIR_HTTP_MAX_HEAD);
    if (c->head == NULL) {
        weir_http_err(err, errlen, "out of memory");
        goto failed;
    }

    /* from here on every failure is delivered through the callback */
    uv_update_time(loop);       /* the timeout counts from now, not from this iteration's start */
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->nhandles = 1;
    uv_timer_start(&c->timer, weir_http_timer_cb, req->timeout_ms ? req->timeout_ms : WEIR_HTTP_DEFAULT_TIMEOUT, 0);
    c->starting = 1;
    if (c->is_ip) {
        weir_http_connect_next(c);
    } else {
        struct addrinfo hints;
        char port[8];
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_NUMERICSERV;
        snprintf(port, sizeof(port), "%u", (unsigned) u.port);
        c->gai.data = c;
        int r = uv_getaddrinfo(loop, &c->gai, weir_http_gai_cb, c->host, port, &hints);
        if (r < 0) weir_http_fail(c, "DNS: %s", uv_strerror(r));
        else c->gai_pending = 1;
    }
    c->starting = 0;
    return c;

failed:
    if (c != NULL) {
        if (c->ctx != NULL) SSL_CTX_free(c->ctx);
        free(c->host);
        free(c->out);
        free(c->head);
        free(c);
    }
    return NULL;
}
