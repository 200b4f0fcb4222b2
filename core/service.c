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

/* Does M carry the admin token? Constant time in the token's content. */
static int
weir_service_authorized(const weir_session_t *s, const weir_http_msg_t *m)
{
    const weir_http_header_t *h = weir_http_find(m, "Authorization");
    uint8_t got[32];
    if (h == NULL || weir_http_count(m, "Authorization") != 1 || h->value_len < 7
        || strncasecmp(h->value, "Bearer ", 7) != 0)
        return 0;
    const char *t = h->value + 7;
    size_t n = h->value_len - 7;
    while (n > 0 && *t == ' ') t++, n--;
    if (EVP_Digest(t, n, got, NULL, EVP_sha256(), NULL) != 1) return 0;
    return CRYPTO_memcmp(got, s->conf->admin.token_hash, sizeof(got)) == 0;
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
    if (s->admin && !weir_service_authorized(s, m)) {
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
