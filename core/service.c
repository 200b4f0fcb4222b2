/*
 * service.c — the HTTP answers weir gives itself (an error JSON instead of
 * an upgrade: weir_session_http), and requests to weir's own HTTP services rather than to an API:
 * the admin API (every request on the admin listener) and the key
 * manager's public endpoints (POST /oauth2/token, GET
 * /.well-known/jwks.json on the public listeners). A session room between
 * relay.c and handshake.c: it calls leg.c, and handshake.c hands it the
 * requests.
 *
 * The core checks what it can without Lua: the admin token (its SHA-256
 * compared in constant time with the configured one's; the token itself is
 * never kept or logged), the body's framing (Content-Length only, at most
 * admin.max_body), and GET /healthz, answered without a token. The body is
 * read whole, then the policy engine's request call answers (lua/weir/
 * admin.lua), at once or after waiting; the answer closes the connection.
 *
 * One admin request is a WebSocket weir serves itself: GET /dashboard/live,
 * the dashboard's feed (docs/dashboard.md). A browser cannot set headers on
 * a WebSocket, so its token may also come as the subprotocol
 * "weir-admin.<the token in base64url>" (checked as the bearer token is,
 * never named in the 101). The engine's pass upgrades it: the session then
 * has no backend leg, the relay hands its client's messages to the engine
 * (ping and close answered by the core) and the engine writes to it. The
 * dashboard's page (GET /dashboard and below) needs no token: the page
 * asks for it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "http.h"
#include "log.h"
#include "session_int.h"

#define WEIR_SERVICE_PUBLIC_MAX_BODY (16 * 1024)    /* a token request's form */
#define WEIR_LIVE_PATH      "/dashboard/live"
#define WEIR_LIVE_PROTOCOL  "weir-dashboard"       /* the subprotocol the 101 names, when offered */
#define WEIR_LIVE_TOKEN     "weir-admin."          /* and the admin token in base64url, unpadded */

void
weir_session_http(weir_session_t *s, int status, const char *type, const char *msg, const char *extra)
{
    char buf[1024];
    size_t n = weir_http_error(buf, sizeof(buf), status, type, msg, extra);
    s->http_status = status;
    s->state = WEIR_S_CLOSED;
    if (weir_leg_write(&s->client, (uint8_t *) buf, n) != WEIR_OK) return;
    weir_leg_finish(&s->client);
    weir_leg_update(&s->client);
}

static uint64_t
weir_service_max_body(const weir_session_t *s)
{
    return s->admin ? s->conf->admin.max_body : WEIR_SERVICE_PUBLIC_MAX_BODY;
}

/* Is M's target exactly PATH, with or without a query? */
static int
weir_target_is(const weir_http_msg_t *m, const char *path)
{
    size_t n = strlen(path);
    return m->target_len >= n && memcmp(m->target, path, n) == 0 && (m->target_len == n || m->target[n] == '?');
}

int
weir_service_public(const weir_session_t *s, const weir_http_msg_t *m)
{
    return s->conf->key_manager
           && (weir_target_is(m, "/oauth2/token") || weir_target_is(m, "/.well-known/jwks.json"));
}

/* Is T[0..N) the admin token? Its SHA-256 against the configured one's,
 * in constant time in the token's content. */
static int
weir_admin_token_is(const weir_session_t *s, const char *t, size_t n)
{
    uint8_t got[32];
    if (EVP_Digest(t, n, got, NULL, EVP_sha256(), NULL) != 1) return 0;
    return CRYPTO_memcmp(got, s->conf->admin.token_hash, sizeof(got)) == 0;
}

/* Is the subprotocol P[0..N) WEIR_LIVE_TOKEN and the admin token? */
static int
weir_live_token(const weir_session_t *s, const char *p, size_t n)
{
    size_t pl = sizeof(WEIR_LIVE_TOKEN) - 1, k = n - pl, pad;
    unsigned char in[700], out[528];        /* a token has at most 512 characters: 683 in base64 */
    if (n <= pl || memcmp(p, WEIR_LIVE_TOKEN, pl) != 0 || k > 684 || k % 4 == 1) return 0;
    for (size_t i = 0; i < k; i++) in[i] = p[pl + i] == '-' ? '+' : p[pl + i] == '_' ? '/' : (unsigned char) p[pl + i];
    pad = (4 - k % 4) % 4;
    memset(in + k, '=', pad);
    int r = EVP_DecodeBlock(out, in, (int) (k + pad));
    return r >= (int) pad && weir_admin_token_is(s, (const char *) out, (size_t) r - pad);
}

/* The subprotocols M offers: 1 when one is WEIR_LIVE_TOKEN and the admin
 * token (every offer is checked); *NAMED: whether WEIR_LIVE_PROTOCOL is
 * one of them. */
static int
weir_live_protocols(const weir_session_t *s, const weir_http_msg_t *m, int *named)
{
    int ok = 0;
    *named = 0;
    for (size_t i = 0; i < m->nheaders; i++) {
        const weir_http_header_t *h = &m->headers[i];
        if (!weir_http_name_eq(h->name, h->name_len, "Sec-WebSocket-Protocol")) continue;
        const char *p = h->value, *end = h->value + h->value_len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) p++;
            const char *q = p;
            while (q < end && *q != ' ' && *q != '\t' && *q != ',') q++;
            size_t n = (size_t) (q - p);
            if (n == sizeof(WEIR_LIVE_PROTOCOL) - 1 && memcmp(p, WEIR_LIVE_PROTOCOL, n) == 0) *named = 1;
            else ok |= weir_live_token(s, p, n);
            p = q;
        }
    }
    return ok;
}

/* Does M carry the admin token (as a bearer token, or a subprotocol of
 * the dashboard's feed)? */
static int
weir_service_authorized(const weir_session_t *s, const weir_http_msg_t *m)
{
    const weir_http_header_t *h = weir_http_find(m, "Authorization");
    int named;
    if (s->local && weir_live_protocols(s, m, &named)) return 1;
    if (h == NULL || weir_http_count(m, "Authorization") != 1 || h->value_len < 7
        || strncasecmp(h->value, "Bearer ", 7) != 0)
        return 0;
    const char *t = h->value + 7;
    size_t n = h->value_len - 7;
    while (n > 0 && *t == ' ') t++, n--;
    return weir_admin_token_is(s, t, n);
}

/* GET /dashboard and the files under it (not its feed): the page, which
 * asks for the token, needs none itself. */
static int
weir_service_page(const weir_http_msg_t *m)
{
    static const char d[] = "/dashboard";
    size_t n = sizeof(d) - 1, l = sizeof(WEIR_LIVE_PATH) - 1;
    if (m->method_len != 3 || memcmp(m->method, "GET", 3) != 0 || m->target_len < n || memcmp(m->target, d, n) != 0)
        return 0;
    if (m->target_len >= l && memcmp(m->target, WEIR_LIVE_PATH, l) == 0) return 0;
    return m->target_len == n || m->target[n] == '/' || m->target[n] == '?';
}

/* Check the dashboard feed's upgrade request M (RFC 6455 4.2.1): WEIR_OK
 * with s->accept made, or WEIR_ERROR when S was answered the error. */
static int
weir_live_check(weir_session_t *s, const weir_http_msg_t *m)
{
    const weir_http_header_t *up = weir_http_find(m, "Upgrade"), *co = weir_http_find(m, "Connection");
    const weir_http_header_t *key = weir_http_find(m, "Sec-WebSocket-Key");
    const weir_http_header_t *ver = weir_http_find(m, "Sec-WebSocket-Version");
    if (up == NULL || !weir_http_has_token(up->value, up->value_len, "websocket")) {
        weir_session_http(s, 426, "/problems/upgrade-required", "The dashboard's feed is a WebSocket",
                          "Upgrade: websocket\r\n");
        return WEIR_ERROR;
    }
    if (ver == NULL || ver->value_len != 2 || memcmp(ver->value, "13", 2) != 0) {
        weir_session_http(s, 426, "/problems/upgrade-required", "Unsupported WebSocket version",
                          "Sec-WebSocket-Version: 13\r\n");
        return WEIR_ERROR;
    }
    if (m->minor < 1 || co == NULL || !weir_http_has_token(co->value, co->value_len, "upgrade") || key == NULL
        || weir_http_count(m, "Sec-WebSocket-Key") != 1 || !weir_ws_key_valid(key->value, key->value_len)
        || weir_http_find(m, "Content-Length") != NULL || weir_http_find(m, "Transfer-Encoding") != NULL) {
        weir_session_http(s, 400, "/problems/bad-request", "Malformed WebSocket handshake", NULL);
        return WEIR_ERROR;
    }
    weir_ws_accept(key->value, key->value_len, s->accept);
    return WEIR_OK;
}

/* The engine took the dashboard's feed: the 101 (naming WEIR_LIVE_PROTOCOL
 * when offered, since a browser that offered subprotocols refuses a 101
 * naming none), then S is open, with no backend leg. */
static void
weir_live_open(weir_session_t *s)
{
    weir_leg_t *c = &s->client;
    weir_http_msg_t m;
    char buf[256];
    int named = 0;
    if (weir_http_parse(s->hs, s->hs_head, 1, &m) > 0) weir_live_protocols(s, &m, &named);
    int n = snprintf(buf, sizeof(buf), "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n", s->accept,
                     named ? "Sec-WebSocket-Protocol: " WEIR_LIVE_PROTOCOL "\r\n" : "");
    s->http_status = 101;
    s->state = WEIR_S_OPEN;
    free(s->hs);
    free(s->body);
    s->hs = s->body = NULL;
    s->hs_len = s->hs_cap = s->hs_head = s->body_len = s->body_want = 0;
    s->last_data = c->last_rx = weir_now(s);
    c->assemble = c->assemble_next = 1;         /* every message to the engine */
    if (weir_leg_write(c, (const uint8_t *) buf, (size_t) n) != WEIR_OK) return;
    weir_leg_flush_inject(c);                   /* what the engine sent already */
    weir_leg_resume(c, WEIR_PAUSE_HANDSHAKE);
}

/* The body is complete: hand the request to the engine. */
static void
weir_service_call(weir_session_t *s)
{
    weir_http_msg_t m;
    weir_verdict_t v;
    if (weir_http_parse(s->hs, s->hs_head, 1, &m) <= 0) {
        weir_session_http(s, 400, "/problems/bad-request", "Malformed HTTP request", NULL);
        return;
    }
    weir_request_info_t info = {
        .service = s->admin ? "admin" : "public",
        .method = m.method, .method_len = m.method_len, .target = m.target, .target_len = m.target_len,
        .head = s->hs, .head_len = s->hs_head, .body = s->body, .body_len = s->body_len,
        .peer_ip = s->peer_ip, .peer_port = s->peer_port, .tls = s->listen_tls,
    };
    weir_leg_pause(&s->client, WEIR_PAUSE_HANDSHAKE);
    s->state = WEIR_S_POLICY;
    s->has_ctx = 1;
    if (s->w->policy->request(s, &info, &v) == WEIR_AGAIN) return;
    if (s->state == WEIR_S_POLICY) weir_service_answer(s, &v);
}

void
weir_service_read_body(weir_session_t *s)
{
    weir_leg_t *c = &s->client;
    while (s->body_len < s->body_want) {
        ssize_t n = weir_leg_recv(c, (uint8_t *) s->body + s->body_len, s->body_want - s->body_len);
        if (n == WEIR_AGAIN) return;
        if (n <= 0) {
            weir_leg_close_fd(c);
            return;
        }
        s->body_len += (size_t) n;
    }
    weir_service_call(s);
}

void
weir_service_request(weir_session_t *s, const weir_http_msg_t *m)
{
    char path[256];
    s->service = 1;
    if (s->admin && weir_target_is(m, "/healthz")) {
        static const char ok[] = "{\"status\":\"ok\"}";
        char head[256];
        size_t n = weir_http_head(head, sizeof(head), 200, sizeof(ok) - 1, "Content-Type: application/json\r\n");
        s->http_status = 200;
        s->state = WEIR_S_CLOSED;
        if (weir_leg_write(&s->client, (const uint8_t *) head, n) == WEIR_OK
            && weir_leg_write(&s->client, (const uint8_t *) ok, sizeof(ok) - 1) == WEIR_OK)
            weir_leg_finish(&s->client);
        return;
    }
    s->local = s->admin && weir_target_is(m, WEIR_LIVE_PATH);
    if (s->admin && !weir_service_page(m) && !weir_service_authorized(s, m)) {
        size_t pl = m->target_len;
        const char *q = memchr(m->target, '?', m->target_len);
        if (q != NULL) pl = (size_t) (q - m->target);          /* the path alone: a query could hold anything */
        char raw[128], method[40], mraw[17];
        snprintf(raw, sizeof(raw), "%.*s", (int) WEIR_MIN(pl, sizeof(raw) - 1), m->target);
        snprintf(mraw, sizeof(mraw), "%.*s", (int) WEIR_MIN(m->method_len, sizeof(mraw) - 1), m->method);
        weir_log(WEIR_LOG_WARN, "admin request refused: no valid admin token",
                 "\"client\":\"%s\",\"method\":\"%s\",\"path\":\"%s\"", s->peer,
                 weir_log_str(method, sizeof(method), mraw), weir_log_str(path, sizeof(path), raw));
        weir_session_http(s, 401, "/problems/unauthorized", "A valid admin token is required",
                          "WWW-Authenticate: Bearer realm=\"weir-admin\"\r\n");
        return;
    }
    if (s->local && weir_live_check(s, m) != WEIR_OK) return;
    if (weir_http_find(m, "Transfer-Encoding") != NULL) {
        weir_session_http(s, 411, "/problems/length-required", "Send the body with a Content-Length", NULL);
        return;
    }
    const weir_http_header_t *cl = weir_http_find(m, "Content-Length");
    uint64_t want = 0;
    if (cl != NULL) {
        if (weir_http_count(m, "Content-Length") != 1 || cl->value_len == 0 || cl->value_len > 19) {
            weir_session_http(s, 400, "/problems/bad-request", "Malformed Content-Length", NULL);
            return;
        }
        for (size_t i = 0; i < cl->value_len; i++) {
            if (cl->value[i] < '0' || cl->value[i] > '9') {
                weir_session_http(s, 400, "/problems/bad-request", "Malformed Content-Length", NULL);
                return;
            }
            want = want * 10 + (uint64_t) (cl->value[i] - '0');
        }
    }
    if (want > weir_service_max_body(s)) {
        weir_session_http(s, 413, "/problems/payload-too-large", "The request body is too large", NULL);
        return;
    }
    s->body_want = (size_t) want;
    s->body = malloc(s->body_want + 1);
    if (s->body == NULL) {
        weir_session_http(s, 500, "/problems/internal-error", "Internal error", NULL);
        return;
    }
    /* what came with the head */
    size_t have = WEIR_MIN(s->hs_len - s->hs_head, s->body_want);
    memcpy(s->body, s->hs + s->hs_head, have);
    s->body_len = have;
    if (s->hs_len - s->hs_head > have) {
        weir_session_http(s, 400, "/problems/bad-request", "Bytes after the request body (no pipelining)", NULL);
        return;
    }
    if (s->body_len < s->body_want) {
        s->state = WEIR_S_BODY;
        weir_leg_update(&s->client);
        return;
    }
    weir_service_call(s);
}

void
weir_service_answer(weir_session_t *s, const weir_verdict_t *v)
{
    char head[2048];
    int status = v->code >= 200 && v->code <= 599 ? v->code : 500;
    if (v->kind == WEIR_V_FAIL) {
        weir_log_policy_failure(s, v);
        weir_session_http(s, 500, "/problems/internal-error", "Internal error", NULL);
        return;
    }
    if (s->local && v->kind == WEIR_V_PASS) {
        weir_live_open(s);
        return;
    }
    if (v->kind != WEIR_V_RESPOND) {
        weir_session_http(s, 500, "/problems/internal-error", "Internal error", NULL);
        return;
    }
    const char *extra = v->reason != NULL ? v->reason : "Content-Type: application/json\r\n";
    size_t n = weir_http_head(head, sizeof(head), status, v->len, extra);
    s->http_status = status;
    s->state = WEIR_S_CLOSED;
    if (weir_leg_write(&s->client, (const uint8_t *) head, n) != WEIR_OK) return;
    if (v->len > 0 && weir_leg_write(&s->client, (const uint8_t *) v->payload, v->len) != WEIR_OK) return;
    weir_leg_finish(&s->client);
    weir_leg_update(&s->client);
}
