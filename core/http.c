/*
 * http.c — HTTP/1.1 heads for the WebSocket handshake on both legs, and the
 * standard error JSON (see http.h). Strict about syntax: the handshake is
 * where request smuggling and header games happen, so anything ambiguous is
 * refused rather than guessed.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "http.h"
#include "log.h"
#include "weir.h"

static int
weir_http_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
    return strchr("!#$%&'*+-.^_`|~", c) != NULL && c != '\0';
}

int
weir_http_parse(const char *buf, size_t len, int is_request, weir_http_msg_t *m)
{
    /* find the end of the head first: nothing is parsed from a partial head */
    const char *end = NULL;
    for (size_t i = 3; i < len; i++) {
        if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r') {
            end = buf + i + 1;
            break;
        }
    }
    if (end == NULL) return 0;

    const char *p = buf, *eol;
    m->nheaders = 0;
    eol = memchr(p, '\r', (size_t) (end - p));
    if (eol == NULL || eol[1] != '\n') return WEIR_ERROR;

    if (is_request) {
        const char *sp1 = memchr(p, ' ', (size_t) (eol - p));
        if (sp1 == NULL || sp1 == p) return WEIR_ERROR;
        for (const char *q = p; q < sp1; q++) if (!weir_http_tchar((unsigned char) *q)) return WEIR_ERROR;
        const char *sp2 = memchr(sp1 + 1, ' ', (size_t) (eol - sp1 - 1));
        if (sp2 == NULL || sp2 == sp1 + 1) return WEIR_ERROR;
        for (const char *q = sp1 + 1; q < sp2; q++)     /* a fragment is never sent (RFC 9112 3.2) */
            if ((unsigned char) *q <= 0x20 || *q == 0x7f || *q == '#') return WEIR_ERROR;
        if (eol - sp2 - 1 != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0) return WEIR_ERROR;
        if (sp2[8] < '0' || sp2[8] > '9') return WEIR_ERROR;
        m->method = p;
        m->method_len = (size_t) (sp1 - p);
        m->target = sp1 + 1;
        m->target_len = (size_t) (sp2 - sp1 - 1);
        m->minor = sp2[8] - '0';
        m->status = 0;
    } else {
        if (eol - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[7] < '0' || p[7] > '9' || p[8] != ' ')
            return WEIR_ERROR;
        m->minor = p[7] - '0';
        int st = 0;
        for (int i = 9; i < 12; i++) {
            if (p[i] < '0' || p[i] > '9') return WEIR_ERROR;
            st = st * 10 + (p[i] - '0');
        }
        if (eol - p > 12 && p[12] != ' ') return WEIR_ERROR;
        m->status = st;
        m->method = m->target = NULL;
        m->method_len = m->target_len = 0;
    }

    p = eol + 2;
    while (p < end - 2) {
        eol = memchr(p, '\r', (size_t) (end - p));
        if (eol == NULL || eol[1] != '\n') return WEIR_ERROR;
        const char *colon = memchr(p, ':', (size_t) (eol - p));
        if (colon == NULL || colon == p) return WEIR_ERROR;   /* also refuses obs-fold */
        for (const char *q = p; q < colon; q++) if (!weir_http_tchar((unsigned char) *q)) return WEIR_ERROR;
        const char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t')) v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        for (const char *q = v; q < ve; q++)
            if ((*q == '\0') || (*q == '\n')) return WEIR_ERROR;
        if (m->nheaders == WEIR_HTTP_MAX_HEADERS) return WEIR_HTTP_TOO_MANY;
        weir_http_header_t *h = &m->headers[m->nheaders++];
        h->name = p;
        h->name_len = (size_t) (colon - p);
        h->value = v;
        h->value_len = (size_t) (ve - v);
        p = eol + 2;
    }
    return (int) (end - buf);
}

int
weir_http_name_eq(const char *name, size_t len, const char *s)
{
    return strlen(s) == len && strncasecmp(name, s, len) == 0;
}

const weir_http_header_t *
weir_http_find(const weir_http_msg_t *m, const char *name)
{
    for (size_t i = 0; i < m->nheaders; i++)
        if (weir_http_name_eq(m->headers[i].name, m->headers[i].name_len, name)) return &m->headers[i];
    return NULL;
}

size_t
weir_http_count(const weir_http_msg_t *m, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < m->nheaders; i++)
        if (weir_http_name_eq(m->headers[i].name, m->headers[i].name_len, name)) n++;
    return n;
}

int
weir_http_has_token(const char *value, size_t len, const char *token)
{
    size_t tl = strlen(token);
    const char *p = value, *end = value + len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) p++;
        const char *s = p;
        while (p < end && *p != ',') p++;
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if ((size_t) (e - s) == tl && strncasecmp(s, token, tl) == 0) return 1;
    }
    return 0;
}

size_t
weir_error_json(char *buf, size_t len, const char *type, int code, const char *msg)
{
    char ts[32], etype[256], emsg[512];
    type = weir_log_str(etype, sizeof(etype), type);
    msg = weir_log_str(emsg, sizeof(emsg), msg);
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    int n = snprintf(buf, len,
                     "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"code\":%d,\"message\":\"%s\"},"
                     "\"timestamp\":\"%s\"}", type, code, msg, ts);
    if (n < 0) return 0;
    return (size_t) n < len ? (size_t) n : len - 1;
}

static const char *
weir_http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 426: return "Upgrade Required";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 429: return "Too Many Requests";
    case 502: return "Bad Gateway";
    case 504: return "Gateway Timeout";
    case 503: return "Service Unavailable";
    default:  return "Error";
    }
}

size_t
weir_http_json(char *buf, size_t len, int status, const char *body, size_t blen, const char *extra)
{
    int n = snprintf(buf, len,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n%s\r\n%.*s",
                     status, weir_http_reason(status), blen, extra ? extra : "", (int) blen, body);
    if (n < 0) return 0;
    return (size_t) n < len ? (size_t) n : len - 1;
}

size_t
weir_http_head(char *buf, size_t len, int status, size_t blen, const char *extra)
{
    int n = snprintf(buf, len, "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\nConnection: close\r\n%s\r\n",
                     status, weir_http_reason(status), blen, extra ? extra : "");
    if (n < 0) return 0;
    return (size_t) n < len ? (size_t) n : len - 1;
}

size_t
weir_http_error(char *buf, size_t len, int status, const char *type, const char *msg,
                const char *extra)
{
    char body[512];
    size_t bl = weir_error_json(body, sizeof(body), type, status, msg);
    return weir_http_json(buf, len, status, body, bl, extra);
}
