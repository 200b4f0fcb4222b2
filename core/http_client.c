/*
 * http_client.c — owns outgoing HTTP/1.1 calls made on a worker's loop on
 * behalf of policies: one libcurl multi handle per loop (its keep-alive
 * pool and DNS cache), the libuv handles that drive it, and the check of
 * each request and response against weir's bounds.
 *
 * The loop drives curl through the multi-socket interface: curl says which
 * sockets to watch (weir_http_socket_cb: one uv_poll_t per socket) and when
 * to be woken (weir_http_timer_cb: the loop's one uv_timer_t); the poll and
 * timer callbacks hand what happened to curl_multi_socket_action, then
 * collect the finished transfers (weir_http_collect). Callers' callbacks run
 * only from there, never from inside a curl callback, so they may start and
 * cancel calls freely.
 *
 * Life of a call: check the request (URL, method, header lines, CA file)
 * → an easy handle with weir's options (HTTP/1.1, http and https only, no
 * proxy, no redirects, no signals, the timeout, TLS verification) → added
 * to the loop's multi handle → curl resolves (in its resolver thread),
 * connects or takes an idle pooled connection, does TLS, sends, receives:
 * weir_http_header_cb checks and normalises the head, weir_http_write_cb
 * collects the body, both within max_response → weir_http_finish: the easy
 * handle leaves the multi (its connection goes back to the pool, unless
 * curl closed it), the callback runs, the call is freed.
 *
 * Ending: a call ends exactly once, in weir_http_finish or weir_http_cancel;
 * both take the easy handle out of the multi before anything else. Handles:
 * a socket's poll handle and the loop's timer are freed from their close
 * callbacks; a loop's state goes when it was cleaned up and the last of its
 * handles closed (weir_http_client_cleanup).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "http_client.h"
#include "log.h"
#include "weir.h"

#define WEIR_HTTP_MAX_URL   8192    /* bytes of a URL */

typedef struct weir_http_loop_s weir_http_loop_t;
typedef struct weir_http_sock_s weir_http_sock_t;

/* One loop's client: its multi handle, timer, calls and watched sockets. */
struct weir_http_loop_s {
    weir_http_loop_t   *next;           /* every loop with a client, in this process */
    uv_loop_t          *loop;
    CURLM              *multi;          /* NULL once cleaned up */
    uv_timer_t          timer;          /* curl's one timeout (CURLMOPT_TIMERFUNCTION) */
    weir_http_call_t   *calls;          /* calls running, doubly linked */
    weir_http_sock_t   *socks;          /* sockets watched and not closing, doubly linked */
    unsigned            nhandles;       /* handles whose close callback has not run */
    unsigned            dead:1;         /* cleaned up: curl's callbacks touch no handle; freed
                                         * when NHANDLES drops to 0 */
};

/* A socket curl asked to watch (curl_multi_assign keeps it with the fd). */
struct weir_http_sock_s {
    weir_http_sock_t   *prev, *next;
    weir_http_loop_t   *hl;
    curl_socket_t       fd;
    int                 events;         /* UV_READABLE | UV_WRITABLE, as curl asked */
    unsigned            closing:1;      /* uv_close called: freed from its close callback */
    uv_poll_t           poll;
};

struct weir_http_call_s {
    weir_http_call_t   *prev, *next;    /* in HL->calls */
    weir_http_loop_t   *hl;
    CURL               *easy;
    struct curl_slist  *out_headers;    /* what curl sends besides its own, and what it must not */
    weir_http_cb        cb;
    void               *data;
    char               *host;           /* for the log and the name-mismatch message */
    uint16_t            port;
    unsigned            tls:1;
    unsigned            is_ip:1;        /* the host is an IP literal */
    unsigned            head_only:1;    /* HEAD: no body in the response */
    unsigned            in_cb:1;        /* the callback runs: cancel is ignored */

    /* the response, as the callbacks see it */
    unsigned            in_head:1;      /* a status line was read, its empty line not yet */
    unsigned            head_done:1;    /* the final head ended: later header lines are trailers */
    int                 status;         /* of the last status line */
    size_t              head_bytes;     /* bytes of every head (1xx included), bound WEIR_HTTP_MAX_HEAD */
    size_t              trailer_bytes;  /* bound WEIR_HTTP_MAX_HEAD */
    size_t              resp_bytes;     /* head bytes + body bytes, bound MAX_RESPONSE */
    size_t              max_response;
    uint64_t            cl;             /* Content-Length of the final head, UINT64_MAX: none */
    unsigned            te:1;           /* the final head has Transfer-Encoding */
    char               *hdrs;           /* normalised header lines of the final head */
    size_t              hdrs_len;
    size_t              hdrs_cap;
    char               *body;
    size_t              body_len;
    size_t              body_cap;

    const char         *error;          /* set by weir_http_fail: a literal or ERRBUF */
    char                errbuf[256];
    char                cerr[CURL_ERROR_SIZE];  /* curl's own message (CURLOPT_ERRORBUFFER) */
};

static weir_http_loop_t *weir_http_loops;
static int               weir_http_curl_ready;     /* curl_global_init ran */

/* CA files found loadable, so that each is read once per process here */
typedef struct weir_http_ca_s {
    struct weir_http_ca_s *next;
    char                  *path;
} weir_http_ca_t;

static weir_http_ca_t *weir_http_cas;

/* ---- small helpers --------------------------------------------------------- */

static int
weir_http_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
           || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
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

/* Record why C failed (the first reason wins); curl is told to stop by the
 * callback that returns an error. */
static void
weir_http_fail(weir_http_call_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
weir_http_fail(weir_http_call_t *c, const char *fmt, ...)
{
    if (c->error != NULL) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errbuf, sizeof(c->errbuf), fmt, ap);
    va_end(ap);
    c->error = c->errbuf;
}

/* ---- the request ------------------------------------------------------------ */

typedef struct {
    int         tls;
    const char *host;           /* into the URL, HOST_LEN bytes, no brackets */
    size_t      host_len;
    int         bracketed;
    uint16_t    port;
} weir_http_url_t;

/* Check and split URL; returns WEIR_OK or WEIR_ERROR with ERR. Pointers go into URL. */
static int
weir_http_parse_url(const char *url, weir_http_url_t *u, char *err, size_t errlen)
{
    const char *p, *auth, *auth_end;
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
    }

    /* what weir accepts, curl must accept too: refuse it now rather than in the callback */
    CURLU *cu = curl_url();
    if (cu == NULL) {
        weir_http_err(err, errlen, "out of memory");
        return WEIR_ERROR;
    }
    CURLUcode r = curl_url_set(cu, CURLUPART_URL, url, CURLU_PATH_AS_IS);
    curl_url_cleanup(cu);
    if (r != CURLUE_OK) {
        weir_http_err(err, errlen, "bad URL: %s", curl_url_strerror(r));
        return WEIR_ERROR;
    }
    return WEIR_OK;
}

/* Append LINE (NUL-terminated) to *LIST. WEIR_OK or WEIR_ERROR (out of memory). */
static int
weir_http_slist_add(struct curl_slist **list, const char *line)
{
    struct curl_slist *n = curl_slist_append(*list, line);
    if (n == NULL) return WEIR_ERROR;
    *list = n;
    return WEIR_OK;
}

/*
 * Check the caller's header lines (each "Name: value\r\n", no CR or LF
 * inside, no framing header) and turn them into curl's list in C: an empty
 * value becomes "Name;" (curl's way to send a header empty). Headers curl
 * would add on its own and weir does not send (Accept, Expect, the form
 * Content-Type of a POST) are disabled unless the caller gives them.
 */
static int
weir_http_headers(weir_http_call_t *c, const char *h, char *err, size_t errlen)
{
    int has_accept = 0, has_expect = 0, has_ctype = 0;
    char *line = NULL;

    while (h != NULL && *h != '\0') {
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
            unsigned char ch = (unsigned char) *p;
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
                weir_http_err(err, errlen, "bad header line: control character in %.*s", (int) WEIR_MIN(nl, 64), h);
                return WEIR_ERROR;
            }
        }
        if (weir_http_eq(h, nl, "Content-Length") || weir_http_eq(h, nl, "Transfer-Encoding")
            || weir_http_eq(h, nl, "Connection")) {
            weir_http_err(err, errlen, "bad header line: %.*s is set by the client", (int) nl, h);
            return WEIR_ERROR;
        }
        has_accept |= weir_http_eq(h, nl, "Accept");
        has_expect |= weir_http_eq(h, nl, "Expect");
        has_ctype |= weir_http_eq(h, nl, "Content-Type");

        const char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t')) v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        line = malloc(nl + (size_t) (ve - v) + 3);
        if (line == NULL) goto nomem;
        if (ve == v) snprintf(line, nl + 2, "%.*s;", (int) nl, h);
        else sprintf(line, "%.*s: %.*s", (int) nl, h, (int) (ve - v), v);
        if (weir_http_slist_add(&c->out_headers, line) != WEIR_OK) goto nomem;
        free(line);
        line = NULL;
        h = eol + 2;
    }
    if ((!has_accept && weir_http_slist_add(&c->out_headers, "Accept:") != WEIR_OK)
        || (!has_expect && weir_http_slist_add(&c->out_headers, "Expect:") != WEIR_OK)
        || (!has_ctype && weir_http_slist_add(&c->out_headers, "Content-Type:") != WEIR_OK))
        goto nomem;
    return WEIR_OK;

nomem:
    free(line);
    weir_http_err(err, errlen, "out of memory");
    return WEIR_ERROR;
}

/*
 * Whether PATH is a CA file with at least one certificate, checked once
 * per path per process. WEIR_OK, or WEIR_ERROR with ERR.
 */
static int
weir_http_ca_check(const char *path, char *err, size_t errlen)
{
    weir_http_ca_t *e;
    for (e = weir_http_cas; e != NULL; e = e->next)
        if (strcmp(e->path, path) == 0) return WEIR_OK;

    X509_STORE *st = X509_STORE_new();
    int ok = st != NULL && X509_STORE_load_file(st, path) == 1;
    X509_STORE_free(st);
    if (!ok) {
        weir_http_err(err, errlen, "cannot load CA file %s", path);
        return WEIR_ERROR;
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL || (e->path = strdup(path)) == NULL) {
        free(e);
        weir_http_err(err, errlen, "out of memory");
        return WEIR_ERROR;
    }
    e->next = weir_http_cas;
    weir_http_cas = e;
    return WEIR_OK;
}

/* ---- the response (curl's callbacks) -------------------------------------------- */

/* Append N bytes at P to C's header lines. WEIR_OK or WEIR_ERROR (C failed). */
static int
weir_http_hdrs_put(weir_http_call_t *c, const char *p, size_t n)
{
    if (c->hdrs_len + n + 1 > c->hdrs_cap) {
        size_t cap = WEIR_MAX(c->hdrs_cap * 2, (size_t) 1024);
        cap = WEIR_MAX(cap, c->hdrs_len + n + 1);
        char *nb = realloc(c->hdrs, cap);
        if (nb == NULL) {
            weir_http_fail(c, "out of memory");
            return WEIR_ERROR;
        }
        c->hdrs = nb;
        c->hdrs_cap = cap;
    }
    memcpy(c->hdrs + c->hdrs_len, p, n);
    c->hdrs_len += n;
    c->hdrs[c->hdrs_len] = '\0';
    return WEIR_OK;
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

/* A status line, LL bytes at P without its line end. WEIR_OK or WEIR_ERROR (C failed). */
static int
weir_http_status_line(weir_http_call_t *c, const char *p, size_t ll)
{
    /* HTTP/1.x SP 3DIGIT [SP reason] */
    if (ll < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[7] < '0' || p[7] > '9' || p[8] != ' '
        || p[9] < '1' || p[9] > '9' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9'
        || (ll > 12 && p[12] != ' '))
        goto malformed;
    for (size_t i = 12; i < ll; i++)
        if (p[i] == '\r' || (p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f) goto malformed;
    c->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (c->status == 101) {
        weir_http_fail(c, "malformed response: unexpected 101");
        return WEIR_ERROR;
    }
    c->in_head = 1;
    c->hdrs_len = 0;
    c->cl = UINT64_MAX;
    c->te = 0;
    return WEIR_OK;

malformed:
    weir_http_fail(c, "malformed response: bad status line");
    return WEIR_ERROR;
}

/* A header line (LL bytes at LINE, no line end) of the head being read. */
static int
weir_http_header_line(weir_http_call_t *c, const char *line, size_t ll)
{
    const char *v, *ve = line + ll;

    for (size_t i = 0; i < ll; i++) {
        unsigned char ch = (unsigned char) line[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) goto malformed;
    }
    if (c->status < 200) return WEIR_OK;        /* an interim head: checked, not kept */

    if (line[0] == ' ' || line[0] == '\t') {
        /* obs-fold: the line continues the previous value */
        if (c->hdrs_len == 0) goto malformed;
        for (v = line; v < ve && (*v == ' ' || *v == '\t'); v++) {}
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        c->hdrs_len -= 2;
        if (ve > v && (weir_http_hdrs_put(c, " ", 1) != WEIR_OK
                       || weir_http_hdrs_put(c, v, (size_t) (ve - v)) != WEIR_OK))
            return WEIR_ERROR;
        return weir_http_hdrs_put(c, "\r\n", 2);
    }
    const char *colon = memchr(line, ':', ll);
    if (colon == NULL || colon == line) goto malformed;
    for (const char *q = line; q < colon; q++)
        if (!weir_http_tchar((unsigned char) *q)) goto malformed;
    size_t nl = (size_t) (colon - line);
    for (v = colon + 1; v < ve && (*v == ' ' || *v == '\t'); v++) {}
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
    size_t vl = (size_t) (ve - v);

    if (weir_http_hdrs_put(c, line, nl) != WEIR_OK || weir_http_hdrs_put(c, ": ", 2) != WEIR_OK
        || weir_http_hdrs_put(c, v, vl) != WEIR_OK || weir_http_hdrs_put(c, "\r\n", 2) != WEIR_OK)
        return WEIR_ERROR;
    if (weir_http_eq(line, nl, "Content-Length") && weir_http_content_length(v, vl, &c->cl) != WEIR_OK) {
        weir_http_fail(c, "malformed response: bad Content-Length");
        return WEIR_ERROR;
    }
    if (weir_http_eq(line, nl, "Transfer-Encoding")) c->te = 1;
    return WEIR_OK;

malformed:
    weir_http_fail(c, "malformed response: bad header line");
    return WEIR_ERROR;
}

/* The empty line after a head. A final head decides the body's bound. */
static int
weir_http_head_end(weir_http_call_t *c)
{
    c->in_head = 0;
    if (c->status < 200) return WEIR_OK;        /* an interim response: the final one follows */
    c->head_done = 1;
    if (c->head_only || c->status == 204 || c->status == 304 || c->te || c->cl == UINT64_MAX || c->cl == 0)
        return WEIR_OK;
    if (c->cl > (uint64_t) (c->max_response - c->resp_bytes)) {
        weir_http_fail(c, "response too large");
        return WEIR_ERROR;
    }
    c->body = malloc((size_t) c->cl);
    if (c->body == NULL) {
        weir_http_fail(c, "out of memory");
        return WEIR_ERROR;
    }
    c->body_cap = (size_t) c->cl;
    return WEIR_OK;
}

/*
 * CURLOPT_HEADERFUNCTION: one line of a head (status line, header line or
 * the empty line; interim heads included) or of the trailers, with its line
 * end. Returning anything but N makes curl abort the transfer.
 */
static size_t
weir_http_header_cb(char *p, size_t size, size_t n, void *ud)
{
    weir_http_call_t *c = ud;
    WEIR_UNUSED(size);      /* always 1 */

    if (c->error != NULL) return 0;
    if (c->head_done) {
        /* trailer fields are read and dropped */
        c->trailer_bytes += n;
        if (c->trailer_bytes > WEIR_HTTP_MAX_HEAD) {
            weir_http_fail(c, "response head too large");
            return 0;
        }
        return n;
    }
    c->resp_bytes += n;
    c->head_bytes += n;
    if (c->resp_bytes > c->max_response) {
        weir_http_fail(c, "response too large");
        return 0;
    }
    if (c->head_bytes > WEIR_HTTP_MAX_HEAD) {
        weir_http_fail(c, "response head too large");
        return 0;
    }
    size_t ll = n;
    if (ll > 0 && p[ll - 1] == '\n') ll--;
    if (ll > 0 && p[ll - 1] == '\r') ll--;

    int r;
    if (!c->in_head) r = weir_http_status_line(c, p, ll);
    else if (ll == 0) r = weir_http_head_end(c);
    else r = weir_http_header_line(c, p, ll);
    return r == WEIR_OK ? n : 0;
}

/* CURLOPT_WRITEFUNCTION: body bytes (de-chunked), kept within max_response. */
static size_t
weir_http_write_cb(char *p, size_t size, size_t n, void *ud)
{
    weir_http_call_t *c = ud;
    WEIR_UNUSED(size);      /* always 1 */

    if (c->error != NULL) return 0;
    if (n == 0) return 0;
    size_t allowed = c->max_response - c->resp_bytes;
    if (n > allowed) {
        weir_http_fail(c, "response too large");
        return 0;
    }
    if (c->body_len + n > c->body_cap) {
        size_t limit = c->body_len + allowed;       /* the most the body may ever hold */
        size_t cap = WEIR_MAX(c->body_cap * 2, (size_t) 16384);
        cap = WEIR_MAX(cap, c->body_len + n);
        cap = WEIR_MIN(cap, limit);
        char *nb = realloc(c->body, cap);
        if (nb == NULL) {
            weir_http_fail(c, "out of memory");
            return 0;
        }
        c->body = nb;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, p, n);
    c->body_len += n;
    c->resp_bytes += n;
    return n;
}

/* ---- ending a call ------------------------------------------------------------ */

/*
 * The errno behind curl's message for C, or 0. CURLINFO_OS_ERRNO may be
 * left over from an earlier step (a refused first address, a failed
 * close_notify), so it counts only when the message names it; else the
 * message is matched against the errors weir names itself.
 */
static int
weir_http_cerr_errno(weir_http_call_t *c)
{
    static const int known[] = { ECONNRESET, ECONNREFUSED, EHOSTUNREACH, ENETUNREACH };
    long e = 0;
    char num[32];

    curl_easy_getinfo(c->easy, CURLINFO_OS_ERRNO, &e);
    if (e > 0) {
        snprintf(num, sizeof(num), "errno %ld", e);
        if (strstr(c->cerr, strerror((int) e)) != NULL || strstr(c->cerr, num) != NULL) return (int) e;
    }
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strstr(c->cerr, strerror(known[i])) != NULL) return known[i];
    return 0;
}

/* OpenSSL's reason in curl's message for C ("OpenSSL/3.0.x: error:0A00010B:SSL
 * routines::wrong version number" → "wrong version number"), else the message. */
static const char *
weir_http_tls_reason(weir_http_call_t *c)
{
    const char *p = c->cerr;
    if (strncmp(p, "OpenSSL/", 8) == 0 && strstr(p, ": ") != NULL) p = strstr(p, ": ") + 2;
    if (strncmp(p, "error:", 6) == 0) {
        const char *q = p;
        for (int i = 0; i < 4 && q != NULL; i++) {
            q = strchr(q, ':');
            if (q != NULL) q++;
        }
        if (q != NULL && *q != '\0') p = q;
    }
    return p;
}

/* The message for a call curl ended with RC (C->error, when set, wins). */
static const char *
weir_http_error(weir_http_call_t *c, CURLcode rc)
{
    long oserr = 0, vr = 0;
    int e;
    char tmp[128];
    const char *why;

    if (c->error != NULL) return c->error;
    if (c->cerr[0] == '\0') snprintf(c->cerr, sizeof(c->cerr), "%s", curl_easy_strerror(rc));
    why = c->cerr;
    switch (rc) {
    case CURLE_OK:              /* the connection closed inside a head */
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        return "connection closed before the response was complete";
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_RESOLVE_HOST:
        weir_http_fail(c, "DNS: %s", why);
        break;
    case CURLE_COULDNT_CONNECT:
        curl_easy_getinfo(c->easy, CURLINFO_OS_ERRNO, &oserr);
        if (oserr > 0) weir_http_fail(c, "%s", weir_http_errno_msg("connect", (int) oserr, tmp, sizeof(tmp)));
        else weir_http_fail(c, "connect: %s", why);
        break;
    case CURLE_PEER_FAILED_VERIFICATION:
        /* OpenSSL verified the chain (its result, when it failed); curl checks the
         * name or IP itself, and reports that as "unspecified" */
        curl_easy_getinfo(c->easy, CURLINFO_SSL_VERIFYRESULT, &vr);
        if ((vr == X509_V_OK || vr == X509_V_ERR_UNSPECIFIED) && strstr(why, "name") != NULL)
            vr = c->is_ip ? X509_V_ERR_IP_ADDRESS_MISMATCH : X509_V_ERR_HOSTNAME_MISMATCH;
        if (vr == X509_V_OK || vr == X509_V_ERR_UNSPECIFIED)
            weir_http_fail(c, "TLS: certificate verify failed: %s", why);
        else
            weir_http_fail(c, "TLS: certificate verify failed: %s", X509_verify_cert_error_string(vr));
        break;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
        if (strstr(why, "chunked") != NULL) return "malformed response: bad chunk";
        if ((e = weir_http_cerr_errno(c)) != 0)
            weir_http_fail(c, "%s", weir_http_errno_msg(rc == CURLE_SEND_ERROR ? "send" : "recv", e, tmp, sizeof(tmp)));
        else if (c->tls) weir_http_fail(c, "TLS: %s", weir_http_tls_reason(c));
        else weir_http_fail(c, "%s: %s", rc == CURLE_SEND_ERROR ? "send" : "recv", why);
        break;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_UNSUPPORTED_PROTOCOL:    /* the URL's scheme was checked: this is the reply */
        weir_http_fail(c, "malformed response: %s", why);
        break;
    case CURLE_FILESIZE_EXCEEDED:
        return "response too large";
    case CURLE_OUT_OF_MEMORY:
        return "out of memory";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_SSL_ENGINE_INITFAILED:
        if ((e = weir_http_cerr_errno(c)) != 0)
            weir_http_fail(c, "TLS: %s", weir_http_errno_msg("handshake", e, tmp, sizeof(tmp)));
        else
            weir_http_fail(c, "TLS: %s", weir_http_tls_reason(c));
        break;
    default:
        weir_http_fail(c, "%s", why);
        break;
    }
    return c->error;
}

static void
weir_http_unlink(weir_http_call_t *c)
{
    weir_http_loop_t *hl = c->hl;
    if (c->prev) c->prev->next = c->next;
    else hl->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void
weir_http_call_free(weir_http_call_t *c)
{
    if (c->easy != NULL) curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->out_headers);
    free(c->host);
    free(c->hdrs);
    free(c->body);
    free(c);
}

/* Curl ended C's transfer with RC: run the callback (unless C fails
 * otherwise) and free C. Only from weir_http_collect. */
static void
weir_http_finish(weir_http_call_t *c, CURLcode rc)
{
    weir_http_res_t res;

    weir_http_unlink(c);
    curl_multi_remove_handle(c->hl->multi, c->easy);
    memset(&res, 0, sizeof(res));
    if (rc == CURLE_OK && c->error == NULL && c->head_done) {
        res.status = c->status;
        res.headers = c->hdrs ? c->hdrs : "";
        res.headers_len = c->hdrs_len;
        res.body = c->body ? c->body : "";
        res.body_len = c->body_len;
    } else {
        res.error = weir_http_error(c, rc);
        if (res.error == NULL) res.error = "unknown error";
        if (weir_log_enabled(WEIR_LOG_DEBUG)) {
            char h[300], e[300], ce[600];
            weir_log(WEIR_LOG_DEBUG, "http call failed", "\"host\":\"%s\",\"port\":%u,\"error\":\"%s\",\"curl\":\"%s\"",
                     weir_log_str(h, sizeof(h), c->host), (unsigned) c->port, weir_log_str(e, sizeof(e), res.error),
                     weir_log_str(ce, sizeof(ce), c->cerr[0] ? c->cerr : curl_easy_strerror(rc)));
        }
    }
    c->in_cb = 1;
    c->cb(c, &res, c->data);
    weir_http_call_free(c);
}

/* Run the callbacks of every transfer of HL that curl finished. */
static void
weir_http_collect(weir_http_loop_t *hl)
{
    CURLMsg *m;
    int left;

    while (!hl->dead && (m = curl_multi_info_read(hl->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) continue;
        weir_http_call_t *c = NULL;
        CURLcode rc = m->data.result;       /* M is gone once the handle leaves the multi */
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &c);
        if (c != NULL) weir_http_finish(c, rc);
    }
}

void
weir_http_cancel(weir_http_call_t *c)
{
    if (c == NULL || c->in_cb) return;
    weir_http_unlink(c);
    curl_multi_remove_handle(c->hl->multi, c->easy);
    weir_http_call_free(c);
}

/* ---- the loop side: sockets and the timer ---------------------------------------- */

/* One of HL's handles has closed; HL goes with its last one once cleaned up. */
static void
weir_http_loop_release(weir_http_loop_t *hl)
{
    if (--hl->nhandles == 0 && hl->dead) free(hl);
}

static void
weir_http_sock_closed(uv_handle_t *h)
{
    weir_http_sock_t *s = h->data;
    weir_http_loop_t *hl = s->hl;
    free(s);
    weir_http_loop_release(hl);
}

static void
weir_http_timer_closed(uv_handle_t *h)
{
    weir_http_loop_release(h->data);
}

/* Close H, whose close callback CB frees it. A handle someone else closed
 * already (uv_walk at a worker's exit, the loop then run to its end) gets
 * CB now: libuv is done with it. Each handle comes here once. */
static void
weir_http_handle_close(uv_handle_t *h, uv_close_cb cb)
{
    if (uv_is_closing(h)) cb(h);
    else uv_close(h, cb);
}

/* Stop watching S: the poll handle is closed before curl closes the fd, so a
 * new socket given the same number is never confused with this one. */
static void
weir_http_sock_close(weir_http_sock_t *s)
{
    weir_http_loop_t *hl = s->hl;
    if (s->prev) s->prev->next = s->next;
    else hl->socks = s->next;
    if (s->next) s->next->prev = s->prev;
    s->closing = 1;
    weir_http_handle_close((uv_handle_t *) &s->poll, weir_http_sock_closed);
}

static void
weir_http_poll_cb(uv_poll_t *h, int status, int events)
{
    weir_http_sock_t *s = h->data;
    weir_http_loop_t *hl = s->hl;
    int flags = 0, running;

    if (s->closing || hl->dead) return;
    if (status < 0) {
        /* libuv stopped the handle on POLLERR: curl finds the socket's error */
        flags = CURL_CSELECT_ERR;
        events = s->events;
    }
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(hl->multi, s->fd, flags, &running);
    /* S is still allocated (freed from a close callback); curl may still want it */
    if (status < 0 && !s->closing && !hl->dead) uv_poll_start(&s->poll, s->events, weir_http_poll_cb);
    weir_http_collect(hl);
}

/* CURLMOPT_SOCKETFUNCTION: watch FD for WHAT, or stop watching it. */
static int
weir_http_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    weir_http_loop_t *hl = userp;
    weir_http_sock_t *s = socketp;
    WEIR_UNUSED(easy);

    if (what == CURL_POLL_REMOVE) {
        if (s != NULL && !s->closing) weir_http_sock_close(s);
        return 0;
    }
    if (hl->dead) return 0;
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL) {
            weir_log(WEIR_LOG_ERROR, "http client: out of memory", NULL);
            return -1;
        }
        int r = uv_poll_init_socket(hl->loop, &s->poll, fd);
        if (r < 0) {
            weir_log(WEIR_LOG_ERROR, "http client: cannot watch a socket", "\"error\":\"%s\"", uv_strerror(r));
            free(s);
            return -1;
        }
        s->poll.data = s;
        s->hl = hl;
        s->fd = fd;
        s->next = hl->socks;
        if (hl->socks) hl->socks->prev = s;
        hl->socks = s;
        hl->nhandles++;
        curl_multi_assign(hl->multi, fd, s);
    }
    s->events = (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0);
    int r = uv_poll_start(&s->poll, s->events, weir_http_poll_cb);
    if (r < 0) weir_log(WEIR_LOG_ERROR, "http client: cannot watch a socket", "\"error\":\"%s\"", uv_strerror(r));
    return 0;
}

static void
weir_http_timeout_cb(uv_timer_t *t)
{
    weir_http_loop_t *hl = t->data;
    int running;
    if (hl->dead) return;
    curl_multi_socket_action(hl->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    weir_http_collect(hl);
}

/* CURLMOPT_TIMERFUNCTION: wake curl in MS ms (-1: never). Never calls curl
 * from here: a 0 fires from the loop. */
static int
weir_http_timer_cb(CURLM *multi, long ms, void *userp)
{
    weir_http_loop_t *hl = userp;
    WEIR_UNUSED(multi);
    if (hl->dead) return 0;
    if (ms < 0) uv_timer_stop(&hl->timer);
    else uv_timer_start(&hl->timer, weir_http_timeout_cb, (uint64_t) ms, 0);
    return 0;
}

/* LOOP's client, made on first use. NULL with ERR when that fails. */
static weir_http_loop_t *
weir_http_loop_get(uv_loop_t *loop, char *err, size_t errlen)
{
    weir_http_loop_t *hl;

    for (hl = weir_http_loops; hl != NULL; hl = hl->next)
        if (hl->loop == loop) return hl;
    if (!weir_http_curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            weir_http_err(err, errlen, "cannot initialise libcurl");
            return NULL;
        }
        weir_http_curl_ready = 1;
    }
    hl = calloc(1, sizeof(*hl));
    if (hl == NULL || (hl->multi = curl_multi_init()) == NULL) {
        free(hl);
        weir_http_err(err, errlen, "out of memory");
        return NULL;
    }
    curl_multi_setopt(hl->multi, CURLMOPT_SOCKETFUNCTION, weir_http_socket_cb);
    curl_multi_setopt(hl->multi, CURLMOPT_SOCKETDATA, hl);
    curl_multi_setopt(hl->multi, CURLMOPT_TIMERFUNCTION, weir_http_timer_cb);
    curl_multi_setopt(hl->multi, CURLMOPT_TIMERDATA, hl);
    curl_multi_setopt(hl->multi, CURLMOPT_MAXCONNECTS, (long) WEIR_HTTP_POOL);
    hl->loop = loop;
    uv_timer_init(loop, &hl->timer);
    hl->timer.data = hl;
    hl->nhandles = 1;
    hl->next = weir_http_loops;
    weir_http_loops = hl;
    return hl;
}

void
weir_http_client_cleanup(void)
{
    while (weir_http_loops != NULL) {
        weir_http_loop_t *hl = weir_http_loops;
        weir_http_loops = hl->next;
        hl->dead = 1;
        while (hl->calls != NULL) {
            weir_http_call_t *c = hl->calls;
            weir_http_unlink(c);
            curl_multi_remove_handle(hl->multi, c->easy);
            weir_http_call_free(c);
        }
        curl_multi_cleanup(hl->multi);      /* closes the pooled connections */
        hl->multi = NULL;
        while (hl->socks != NULL) weir_http_sock_close(hl->socks);
        weir_http_handle_close((uv_handle_t *) &hl->timer, weir_http_timer_closed);   /* may free HL */
    }
    while (weir_http_cas != NULL) {
        weir_http_ca_t *e = weir_http_cas;
        weir_http_cas = e->next;
        free(e->path);
        free(e);
    }
    if (weir_http_curl_ready) curl_global_cleanup();
    weir_http_curl_ready = 0;
}

/* ---- the entry point ------------------------------------------------------------------ */

#define WEIR_HTTP_SET(opt, val) \
    do { if (rc == CURLE_OK) rc = curl_easy_setopt(c->easy, opt, val); } while (0)

weir_http_call_t *
weir_http_request(uv_loop_t *loop, const weir_http_req_t *req, weir_http_cb cb, void *data, char *err,
                  size_t errlen)
{
    weir_http_call_t *c = NULL;
    weir_http_loop_t *hl;
    weir_http_url_t u;
    const char *method;
    unsigned char tmp[sizeof(struct in6_addr)];
    CURLcode rc = CURLE_OK;

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
    if (u.tls && req->verify && req->ca_file != NULL && weir_http_ca_check(req->ca_file, err, errlen) != WEIR_OK)
        goto failed;

    c = calloc(1, sizeof(*c));
    if (c == NULL || (c->host = strndup(u.host, u.host_len)) == NULL) {
        weir_http_err(err, errlen, "out of memory");
        goto failed;
    }
    c->cb = cb;
    c->data = data;
    c->port = u.port;
    c->tls = u.tls != 0;
    c->is_ip = u.bracketed || inet_pton(AF_INET, c->host, tmp) == 1;
    c->head_only = strcmp(method, "HEAD") == 0;
    c->max_response = req->max_response ? req->max_response : WEIR_HTTP_DEFAULT_MAX;
    c->cl = UINT64_MAX;
    if (weir_http_headers(c, req->headers, err, errlen) != WEIR_OK) goto failed;
    if ((hl = weir_http_loop_get(loop, err, errlen)) == NULL) goto failed;
    c->hl = hl;
    if ((c->easy = curl_easy_init()) == NULL) {
        weir_http_err(err, errlen, "out of memory");
        goto failed;
    }

    WEIR_HTTP_SET(CURLOPT_PRIVATE, c);
    WEIR_HTTP_SET(CURLOPT_URL, req->url);
    WEIR_HTTP_SET(CURLOPT_PATH_AS_IS, 1L);                  /* the path as given: no dot-segment removal */
    WEIR_HTTP_SET(CURLOPT_PROTOCOLS_STR, "http,https");
    WEIR_HTTP_SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    WEIR_HTTP_SET(CURLOPT_FOLLOWLOCATION, 0L);
    WEIR_HTTP_SET(CURLOPT_PROXY, "");                       /* never a proxy from the environment */
    WEIR_HTTP_SET(CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1);
    WEIR_HTTP_SET(CURLOPT_NOSIGNAL, 1L);
    WEIR_HTTP_SET(CURLOPT_QUICK_EXIT, 1L);                  /* removing a handle never waits for its DNS thread */
    uint64_t timeout = req->timeout_ms ? req->timeout_ms : WEIR_HTTP_DEFAULT_TIMEOUT;
    WEIR_HTTP_SET(CURLOPT_TIMEOUT_MS, (long) WEIR_MIN(timeout, (uint64_t) LONG_MAX));
    WEIR_HTTP_SET(CURLOPT_USERAGENT, "weir/" WEIR_VERSION);
    WEIR_HTTP_SET(CURLOPT_HTTPHEADER, c->out_headers);
    WEIR_HTTP_SET(CURLOPT_HEADERFUNCTION, weir_http_header_cb);
    WEIR_HTTP_SET(CURLOPT_HEADERDATA, c);
    WEIR_HTTP_SET(CURLOPT_WRITEFUNCTION, weir_http_write_cb);
    WEIR_HTTP_SET(CURLOPT_WRITEDATA, c);
    WEIR_HTTP_SET(CURLOPT_ERRORBUFFER, c->cerr);
    if (c->tls) {
        WEIR_HTTP_SET(CURLOPT_SSLVERSION, (long) CURL_SSLVERSION_TLSv1_2);
        WEIR_HTTP_SET(CURLOPT_SSL_VERIFYPEER, req->verify ? 1L : 0L);
        WEIR_HTTP_SET(CURLOPT_SSL_VERIFYHOST, req->verify ? 2L : 0L);
        if (req->verify && req->ca_file != NULL) WEIR_HTTP_SET(CURLOPT_CAINFO, req->ca_file);
    }
    if (c->head_only) {
        WEIR_HTTP_SET(CURLOPT_NOBODY, 1L);
    } else {
        int with_body = req->body != NULL || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0
                        || strcmp(method, "PATCH") == 0;
        if (with_body) {
            /* sent with Content-Length, even 0 */
            WEIR_HTTP_SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_len);
            WEIR_HTTP_SET(CURLOPT_COPYPOSTFIELDS, req->body_len > 0 ? req->body : "");
        }
        if (strcmp(method, with_body ? "POST" : "GET") != 0) WEIR_HTTP_SET(CURLOPT_CUSTOMREQUEST, method);
    }
    if (rc != CURLE_OK) {
        weir_http_err(err, errlen, "%s", rc == CURLE_OUT_OF_MEMORY ? "out of memory" : curl_easy_strerror(rc));
        goto failed;
    }

    /* curl starts the transfer from the timer it sets now, never from here */
    CURLMcode mr = curl_multi_add_handle(hl->multi, c->easy);
    if (mr != CURLM_OK) {
        weir_http_err(err, errlen, "%s", curl_multi_strerror(mr));
        goto failed;
    }
    c->next = hl->calls;
    if (hl->calls) hl->calls->prev = c;
    hl->calls = c;
    return c;

failed:
    if (c != NULL) weir_http_call_free(c);
    return NULL;
}
