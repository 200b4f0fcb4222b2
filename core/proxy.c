/*
 * proxy.c — sessions: the client and backend handshakes, the frame relay,
 * backpressure, the close handshake on both legs, keep-alive and timeouts.
 *
 * Life of a session: accept → (TLS) → read the request head → route →
 * connect the backend → (TLS) → send weir's request → read the backend's
 * 101 → send the client's 101 → relay → close handshakes → lingering close
 * of each socket → both poll handles closed → the session is freed (and its
 * access line logged). Nothing is freed while a libuv handle may still call
 * back: a leg is "done" when its socket is closed and "freed" when its
 * handle's close callback has run; the session goes when both are freed.
 *
 * The relay is cut-through: a frame's header is validated and forwarded
 * as soon as it is read, its payload streamed as it arrives. Client frames
 * are unmasked (to validate text), then re-masked in place with a fresh key
 * for the backend; the frame keeps its length, so what was read is written
 * as one contiguous range, minus frames weir consumes (its own pongs).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "http.h"
#include "lua_bridge.h"
#include "log.h"
#include "proxy.h"
#include "session_int.h"
#include "tls.h"
#include "worker.h"

static void weir_client_read_request(weir_session_t *s);
static void weir_handshake_proceed(weir_session_t *s);
static void weir_handshake_verdict(weir_session_t *s, const weir_verdict_t *v);

/* ---- closing -------------------------------------------------------------- */

void
weir_session_free(weir_session_t *s)
{
    weir_worker_t *w = s->w;
    if (s->prev) s->prev->next = s->next;
    else w->sessions = s->next;
    if (s->next) s->next->prev = s->prev;
    w->nsessions--;

    if (weir_log_enabled(WEIR_LOG_INFO)) {
        char api[256], ver[128];
        weir_log(WEIR_LOG_INFO, "access",
                 "\"conn\":%llu,\"api\":%s%s%s,\"version\":%s%s%s,\"client\":\"%s\",\"status\":%d,"
                 "\"duration_ms\":%llu,\"frames_in\":%llu,\"bytes_in\":%llu,\"frames_out\":%llu,"
                 "\"bytes_out\":%llu,\"close_code\":%u,\"close_side\":\"%s\"",
                 (unsigned long long) s->id,
                 s->route.api ? "\"" : "", s->route.api ? weir_log_str(api, sizeof(api), s->route.api->name) : "null",
                 s->route.api ? "\"" : "",
                 s->route.version ? "\"" : "",
                 s->route.version ? weir_log_str(ver, sizeof(ver), s->route.version->version) : "null",
                 s->route.version ? "\"" : "",
                 s->peer, s->http_status,
                 (unsigned long long) (uv_now(w->loop) - s->started),
                 (unsigned long long) s->client.frames, (unsigned long long) s->client.bytes,
                 (unsigned long long) s->backend.frames, (unsigned long long) s->backend.bytes,
                 s->close_code,
                 s->close_side == 'c' ? "client" : s->close_side == 'b' ? "backend"
                     : s->close_side == 'w' ? "weir" : "none");
    }
    weir_lua_close(s);
    weir_leg_t *legs[2] = { &s->client, &s->backend };
    for (int i = 0; i < 2; i++) {
        free(legs[i]->msg);
        free(legs[i]->held);
        free(legs[i]->inject);
    }
    free(s->hs);
    free(s->bhs);
    weir_conf_release(w, s->conf);
    free(s);
    if (w->draining && w->nsessions == 0) uv_stop(w->loop);
}

/* ---- HTTP answers and the handshakes --------------------------------------- */

static void
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

/* The first subprotocol the client offered, or NULL (re-parses the head). */
static size_t
weir_first_protocol(weir_session_t *s, char *out, size_t len)
{
    weir_http_msg_t m;
    if (s->hs == NULL || weir_http_parse(s->hs, s->hs_len, 1, &m) <= 0) return 0;
    const weir_http_header_t *h = weir_http_find(&m, "Sec-WebSocket-Protocol");
    if (h == NULL) return 0;
    size_t i = 0;
    while (i < h->value_len && (h->value[i] == ' ' || h->value[i] == ',')) i++;
    size_t j = i;
    while (j < h->value_len && h->value[j] != ',' && h->value[j] != ' ') j++;
    if (j - i == 0 || j - i >= len) return 0;
    memcpy(out, h->value + i, j - i);
    out[j - i] = '\0';
    return j - i;
}

static void
weir_client_101(weir_session_t *s, const char *protocol, size_t plen)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n%s%.*s%s\r\n",
                     s->accept, plen ? "Sec-WebSocket-Protocol: " : "", (int) plen,
                     plen ? protocol : "", plen ? "\r\n" : "");
    s->http_status = 101;
    weir_leg_write(&s->client, (uint8_t *) buf, (size_t) n);
}

static void
weir_handshake_done(weir_session_t *s)
{
    free(s->hs);
    s->hs = NULL;
    free(s->bhs);
    s->bhs = NULL;
    s->hs_len = s->hs_cap = s->bhs_len = s->bhs_cap = 0;
}

void
weir_bad_gateway(weir_session_t *s, const char *why)
{
    char u[256];
    weir_log(WEIR_LOG_WARN, "backend unavailable", "\"conn\":%llu,\"url\":\"%s\",\"why\":\"%s\"",
             (unsigned long long) s->id, s->ep ? weir_log_str(u, sizeof(u), s->ep->url) : "", why);
    weir_leg_close_fd(&s->backend);
    weir_leg_t *c = &s->client;
    if (c->done) return;
    if (s->state < WEIR_S_OPEN) {
        char proto[128];
        size_t pl = weir_first_protocol(s, proto, sizeof(proto));
        weir_client_101(s, proto, pl);
        weir_handshake_done(s);
        s->state = WEIR_S_OPEN;
        c->paused &= ~WEIR_PAUSE_HANDSHAKE;
        c->last_rx = weir_now(s);
    }
    weir_leg_send_close(c, 1014, "backend unavailable", "/problems/bad-gateway");
}

static int
weir_hop_by_hop(const weir_http_header_t *h, const weir_http_header_t *conn)
{
    static const char *skip[] = {
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
        "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
        "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Accept",
        "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", NULL,
    };
    for (int i = 0; skip[i]; i++)
        if (weir_http_name_eq(h->name, h->name_len, skip[i])) return 1;
    if (conn != NULL) {
        char name[128];
        if (h->name_len < sizeof(name)) {
            memcpy(name, h->name, h->name_len);
            name[h->name_len] = '\0';
            if (weir_http_has_token(conn->value, conn->value_len, name)) return 1;
        }
    }
    return 0;
}

/* Build weir's request to the backend into the backend's output queue,
 * from the client's request head (kept in s->hs until the 101). */
static int
weir_backend_request(weir_session_t *s)
{
    weir_endpoint_t *ep = s->ep;
    weir_http_msg_t mm, *m = &mm;
    if (weir_http_parse(s->hs, s->hs_len, 1, m) <= 0) return WEIR_ERROR;
    size_t cap = s->hs_head + strlen(ep->path) + (ep->query ? strlen(ep->query) : 0)
                 + strlen(ep->host_header) + 1024;
    char *buf = malloc(cap);
    if (buf == NULL) return WEIR_ERROR;

    uint8_t rawkey[16];
    char key[32];
    weir_ws_random(rawkey, sizeof(rawkey));
    EVP_EncodeBlock((unsigned char *) key, rawkey, sizeof(rawkey));
    weir_ws_accept(key, 24, s->expect);

    size_t o = (size_t) snprintf(buf, cap, "GET ");
    size_t tl = weir_route_target(ep, &s->route, buf + o, cap - o);
    if (tl == 0) goto failed;
    o += tl;
    o += (size_t) snprintf(buf + o, cap - o,
                           " HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
                           ep->host_header, key);

    const weir_http_header_t *conn = weir_http_find(m, "Connection");
    const weir_http_header_t *xff = NULL, *host = weir_http_find(m, "Host");
    for (size_t i = 0; i < m->nheaders; i++) {
        const weir_http_header_t *h = &m->headers[i];
        if (weir_http_name_eq(h->name, h->name_len, "X-Forwarded-For") && xff == NULL) xff = h;
        if (weir_hop_by_hop(h, conn)) continue;
        o += (size_t) snprintf(buf + o, cap - o, "%.*s: %.*s\r\n", (int) h->name_len, h->name,
                               (int) h->value_len, h->value);
    }
    o += (size_t) snprintf(buf + o, cap - o, "X-Forwarded-For: %.*s%s%s\r\nX-Forwarded-Proto: %s\r\n",
                           xff ? (int) xff->value_len : 0, xff ? xff->value : "", xff ? ", " : "",
                           s->peer_ip, s->listen_tls ? "https" : "http");
    if (host) o += (size_t) snprintf(buf + o, cap - o, "X-Forwarded-Host: %.*s\r\n",
                                     (int) host->value_len, host->value);
    o += (size_t) snprintf(buf + o, cap - o, "\r\n");
    if (o >= cap) goto failed;
    weir_leg_queue(&s->backend, (uint8_t *) buf, o);
    free(buf);
    return WEIR_OK;

failed:
    free(buf);
    return WEIR_ERROR;
}

static void
weir_backend_connect(weir_session_t *s)
{
    weir_endpoint_t *ep = s->ep;
    weir_leg_t *b = &s->backend;
    int fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        weir_bad_gateway(s, strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    s->state = WEIR_S_CONNECT;
    weir_leg_open(b, fd);
    if (connect(fd, (struct sockaddr *) &ep->addr, ep->addrlen) < 0 && errno != EINPROGRESS) {
        weir_bad_gateway(s, strerror(errno));
        return;
    }
    weir_leg_update(b);
}

/* The request head is complete: answer it or start the backend leg. */
static void
weir_client_request(weir_session_t *s, const weir_http_msg_t *m)
{
    weir_worker_t *w = s->w;
    const weir_http_header_t *h;

    if (m->target_len >= 8 && memcmp(m->target, "/healthz", 8) == 0
        && (m->target_len == 8 || m->target[8] == '?')) {
        static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 "Content-Length: 15\r\nConnection: close\r\n\r\n{\"status\":\"ok\"}";
        s->http_status = 200;
        s->state = WEIR_S_CLOSED;
        if (weir_leg_write(&s->client, (const uint8_t *) ok, sizeof(ok) - 1) == WEIR_OK)
            weir_leg_finish(&s->client);
        return;
    }
    if (weir_route(s->conf, m->target, m->target_len, &s->route) != WEIR_OK) {
        weir_session_http(s, 404, "/problems/not-found", "No API matches the requested path", NULL);
        return;
    }
    h = weir_http_find(m, "Upgrade");
    if (h == NULL || !weir_http_has_token(h->value, h->value_len, "websocket")) {
        weir_session_http(s, 426, "/problems/upgrade-required", "This API is served over WebSocket only",
                          "Upgrade: websocket\r\n");
        return;
    }
    const weir_http_header_t *key = weir_http_find(m, "Sec-WebSocket-Key");
    h = weir_http_find(m, "Connection");
    if (!weir_http_name_eq(m->method, m->method_len, "GET") || m->minor < 1 || h == NULL
        || !weir_http_has_token(h->value, h->value_len, "upgrade") || key == NULL
        || !weir_ws_key_valid(key->value, key->value_len) || weir_http_find(m, "Host") == NULL) {
        weir_session_http(s, 400, "/problems/bad-request", "Malformed WebSocket handshake", NULL);
        return;
    }
    h = weir_http_find(m, "Sec-WebSocket-Version");
    if (h == NULL || h->value_len != 2 || memcmp(h->value, "13", 2) != 0) {
        weir_session_http(s, 426, "/problems/upgrade-required", "Unsupported WebSocket version",
                          "Sec-WebSocket-Version: 13\r\n");
        return;
    }
    if (w->nsessions > w->max_sessions) {
        weir_session_http(s, 503, "/problems/reach-maximum-connections",
                          "Maximum number of connections reached", NULL);
        return;
    }
    weir_ws_accept(key->value, key->value_len, s->accept);
    s->ep = s->route.version->production;
    s->hooks = s->route.version->hooks;
    if (s->hooks != 0 && weir_lua_open(s) != WEIR_OK) {
        weir_session_http(s, 500, "/problems/internal-error", "Internal error", NULL);
        return;
    }
    s->client.assemble = s->client.assemble_next = (s->hooks & WEIR_HOOK_FRAME_IN) != 0;
    s->backend.assemble = s->backend.assemble_next = (s->hooks & WEIR_HOOK_FRAME_OUT) != 0;
    weir_leg_pause(&s->client, WEIR_PAUSE_HANDSHAKE);
    if (s->hooks & WEIR_HOOK_HANDSHAKE) {
        weir_verdict_t v;
        s->state = WEIR_S_POLICY;
        if (weir_lua_handshake(s, &v) == WEIR_AGAIN) return;
        if (s->state == WEIR_S_POLICY) weir_handshake_verdict(s, &v);
        return;
    }
    weir_handshake_proceed(s);
}

/* The handshake may go on to the backend. */
static void
weir_handshake_proceed(weir_session_t *s)
{
    if (weir_backend_request(s) != WEIR_OK) {
        weir_session_http(s, 400, "/problems/bad-request", "Request target too long", NULL);
        return;
    }
    weir_backend_connect(s);
}

/* Apply on_handshake's verdict. */
static void
weir_handshake_verdict(weir_session_t *s, const weir_verdict_t *v)
{
    char buf[4096];
    switch (v->kind) {
    case WEIR_V_ERROR: {
        int status = v->code >= 400 && v->code <= 599 ? v->code : 403;
        size_t n = weir_http_json(buf, sizeof(buf), status, v->payload, v->len, NULL);
        s->http_status = status;
        s->state = WEIR_S_CLOSED;
        if (weir_leg_write(&s->client, (uint8_t *) buf, n) == WEIR_OK) weir_leg_finish(&s->client);
        return;
    }
    case WEIR_V_FAIL:
        weir_log_policy_failure(s, v);
        weir_session_http(s, 500, "/problems/internal-error", "Internal error", NULL);
        return;
    default:
        if (v->sandbox) {
            if (s->route.version->sandbox == NULL) {
                weir_session_http(s, 403, "/problems/forbidden", "No sandbox endpoint for this API", NULL);
                return;
            }
            s->ep = s->route.version->sandbox;
        }
        weir_handshake_proceed(s);
    }
}

/*
 * Make room to read more of a handshake head into *BUF (LEN bytes used):
 * heads start in 2 KiB and grow up to MAX (most fit the first size).
 * Returns WEIR_OK, WEIR_DECLINED when the head already has MAX bytes, or
 * WEIR_ERROR when out of memory.
 */
static int
weir_hs_room(char **buf, size_t *cap, size_t len, size_t max)
{
    if (*buf != NULL && len < *cap) return WEIR_OK;
    if (len >= max) return WEIR_DECLINED;
    size_t ncap = *cap ? WEIR_MIN(*cap * 2, max) : WEIR_MIN((size_t) 2048, max);
    char *nb = realloc(*buf, ncap);
    if (nb == NULL) return WEIR_ERROR;
    *buf = nb;
    *cap = ncap;
    return WEIR_OK;
}

static void
weir_client_read_request(weir_session_t *s)
{
    weir_leg_t *c = &s->client;
    size_t cap = (size_t) weir_limits(s)->max_header_size;
    weir_http_msg_t m;

    for (;;) {
        int g = weir_hs_room(&s->hs, &s->hs_cap, s->hs_len, cap);
        if (g == WEIR_DECLINED) {
            weir_session_http(s, 431, "/problems/request-header-too-large",
                              "Request header fields too large", NULL);
            return;
        }
        if (g != WEIR_OK) {
            weir_leg_close_fd(c);
            return;
        }
        ssize_t n = weir_leg_recv(c, (uint8_t *) s->hs + s->hs_len, s->hs_cap - s->hs_len);
        if (n == WEIR_AGAIN) return;
        if (n <= 0) {
            weir_leg_close_fd(c);
            return;
        }
        s->hs_len += (size_t) n;
        int r = weir_http_parse(s->hs, s->hs_len, 1, &m);
        if (r == 0) continue;
        if (r == WEIR_HTTP_TOO_MANY) {
            weir_session_http(s, 431, "/problems/request-header-too-large", "Too many header fields", NULL);
            return;
        }
        if (r < 0) {
            weir_session_http(s, 400, "/problems/bad-request", "Malformed HTTP request", NULL);
            return;
        }
        s->hs_head = (size_t) r;
        weir_client_request(s, &m);
        return;
    }
}

/* Does the client's request offer subprotocol P? */
static int
weir_protocol_offered(weir_session_t *s, const char *p, size_t len)
{
    weir_http_msg_t m;
    char tok[256];
    if (len >= sizeof(tok) || weir_http_parse(s->hs, s->hs_len, 1, &m) <= 0) return 0;
    memcpy(tok, p, len);
    tok[len] = '\0';
    for (size_t i = 0; i < m.nheaders; i++) {
        const weir_http_header_t *h = &m.headers[i];
        if (weir_http_name_eq(h->name, h->name_len, "Sec-WebSocket-Protocol")
            && weir_http_has_token(h->value, h->value_len, tok))
            return 1;
    }
    return 0;
}

static void
weir_backend_read_response(weir_session_t *s)
{
    weir_leg_t *b = &s->backend, *c = &s->client;
    size_t cap = (size_t) weir_limits(s)->max_header_size;
    weir_http_msg_t m;
    int r;

    for (;;) {
        int g = weir_hs_room(&s->bhs, &s->bhs_cap, s->bhs_len, cap);
        if (g != WEIR_OK) {
            weir_bad_gateway(s, g == WEIR_DECLINED ? "response head too large" : "out of memory");
            return;
        }
        ssize_t n = weir_leg_recv(b, (uint8_t *) s->bhs + s->bhs_len, s->bhs_cap - s->bhs_len);
        if (n == WEIR_AGAIN) return;
        if (n <= 0) {
            weir_bad_gateway(s, n == 0 ? "connection closed during handshake" : "read error during handshake");
            return;
        }
        s->bhs_len += (size_t) n;
        r = weir_http_parse(s->bhs, s->bhs_len, 0, &m);
        if (r != 0) break;
    }
    if (r < 0) {
        weir_bad_gateway(s, "malformed response");
        return;
    }
    const weir_http_header_t *up = weir_http_find(&m, "Upgrade");
    const weir_http_header_t *co = weir_http_find(&m, "Connection");
    const weir_http_header_t *ac = weir_http_find(&m, "Sec-WebSocket-Accept");
    const weir_http_header_t *pr = weir_http_find(&m, "Sec-WebSocket-Protocol");
    char why[96];
    if (m.status != 101) {
        snprintf(why, sizeof(why), "backend answered %d", m.status);
        weir_bad_gateway(s, why);
        return;
    }
    if (up == NULL || !weir_http_has_token(up->value, up->value_len, "websocket") || co == NULL
        || !weir_http_has_token(co->value, co->value_len, "upgrade") || ac == NULL
        || ac->value_len != WEIR_WS_ACCEPT_LEN || memcmp(ac->value, s->expect, WEIR_WS_ACCEPT_LEN) != 0
        || weir_http_find(&m, "Sec-WebSocket-Extensions") != NULL
        || (pr != NULL && !weir_protocol_offered(s, pr->value, pr->value_len))) {
        weir_bad_gateway(s, "invalid 101 response");
        return;
    }

    weir_client_101(s, pr ? pr->value : NULL, pr ? pr->value_len : 0);
    s->state = WEIR_S_OPEN;
    weir_leg_flush_inject(c);
    s->last_data = weir_now(s);
    b->last_rx = c->last_rx = s->last_data;
    c->paused &= ~WEIR_PAUSE_HANDSHAKE;

    /* frames that came with the heads */
    if (s->bhs_len > (size_t) r) weir_relay_process(b, (uint8_t *) s->bhs + r, s->bhs_len - (size_t) r);
    if (s->hs_len > s->hs_head && !c->done)
        weir_relay_process(c, (uint8_t *) s->hs + s->hs_head, s->hs_len - s->hs_head);
    weir_handshake_done(s);
    weir_leg_update(b);
    weir_leg_update(c);
}

static void
weir_tls_step(weir_leg_t *l)
{
    weir_session_t *s = l->s;
    ERR_clear_error();
    int r = SSL_do_handshake(l->ssl);
    if (r == 1) {
        l->ssl_hs = 0;
        l->ssl_want_write = 0;
        if (l->is_backend) {
            weir_leg_flush(l);
            weir_leg_update(l);
        } else {
            s->state = WEIR_S_REQUEST;
            weir_leg_update(l);
            weir_client_read_request(s);
        }
        return;
    }
    int e = SSL_get_error(l->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        l->ssl_want_write = e == SSL_ERROR_WANT_WRITE;
        weir_leg_update(l);
        return;
    }
    const char *err = weir_tls_error();
    if (l->is_backend) {
        char why[400];
        long vr = SSL_get_verify_result(l->ssl);
        snprintf(why, sizeof(why), "TLS handshake failed: %s%s%s", err, vr != X509_V_OK ? ": " : "",
                 vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "");
        weir_bad_gateway(s, why);
    } else {
        weir_log(WEIR_LOG_DEBUG, "client TLS handshake failed", "\"conn\":%llu", (unsigned long long) s->id);
        weir_leg_close_fd(l);
    }
}

static void
weir_backend_connected(weir_session_t *s)
{
    weir_leg_t *b = &s->backend;
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(b->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err != 0) {
        weir_bad_gateway(s, strerror(err));
        return;
    }
    s->state = WEIR_S_BACKEND;
    if (s->ep->tls) {
        b->ssl = SSL_new(s->ep->tls_ctx);
        if (b->ssl == NULL || SSL_set_fd(b->ssl, b->fd) != 1 || weir_tls_client_setup(b->ssl, s->ep) != WEIR_OK) {
            weir_bad_gateway(s, "cannot set up TLS");
            return;
        }
        SSL_set_connect_state(b->ssl);
        b->ssl_hs = 1;
        weir_tls_step(b);
        return;
    }
    weir_leg_flush(b);
    weir_leg_update(b);
}

/* ---- the relay -------------------------------------------------------------- */

static void
weir_leg_on_readable(weir_leg_t *l)
{
    weir_session_t *s = l->s;
    if (l->ssl_hs) {
        weir_tls_step(l);
        return;
    }
    if (l->ssl_want_read) {
        l->ssl_want_read = 0;
        weir_leg_flush(l);
        if (l->done) return;
    }
    if (l->lingering) {
        weir_linger_read(l);
        return;
    }
    if (!l->is_backend && s->state == WEIR_S_REQUEST) weir_client_read_request(s);
    else if (l->is_backend && s->state == WEIR_S_BACKEND) weir_backend_read_response(s);
    else if (s->state >= WEIR_S_OPEN) weir_relay_read(l);
}

static void
weir_leg_on_writable(weir_leg_t *l)
{
    weir_session_t *s = l->s;
    if (l->is_backend && s->state == WEIR_S_CONNECT) {
        weir_backend_connected(s);
        return;
    }
    if (l->ssl_hs) {
        weir_tls_step(l);
        return;
    }
    if (l->ssl_want_write) {
        l->ssl_want_write = 0;
        weir_leg_on_readable(l);
        if (l->done) return;
    }
    weir_leg_flush(l);
}

void
weir_leg_poll_cb(uv_poll_t *h, int status, int events)
{
    weir_leg_t *l = h->data;
    if (l->done) return;
    if (status < 0) {
        if (l->s->state == WEIR_S_CONNECT && l->is_backend) weir_backend_connected(l->s);
        else weir_leg_gone(l, uv_strerror(status));
        return;
    }
    int want = weir_leg_want(l);
    if (events & ~want & (UV_READABLE | UV_WRITABLE)) {
        /* an event nobody waits for any more: stop polling for it now */
        l->events = want;
        if (want == 0) uv_poll_stop(&l->poll);
        else uv_poll_start(&l->poll, want, weir_leg_poll_cb);
        events &= want;
    }
    if (events & UV_WRITABLE) weir_leg_on_writable(l);
    if (!l->done && (events & UV_READABLE)) weir_leg_on_readable(l);
}

/* ---- the worker's entry points ------------------------------------------- */

void
weir_session_accept(weir_worker_t *w, int fd, size_t li, const struct sockaddr *sa)
{
    weir_session_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        close(fd);
        return;
    }
    s->w = w;
    s->conf = w->conf;
    w->conf->refs++;
    s->id = ((uint64_t) w->id << 40) | ++w->next_id;
    s->started = uv_now(w->loop);
    s->client.s = s;
    s->backend.s = s;
    s->backend.is_backend = 1;
    s->backend.fd = -1;
    s->backend.done = 1;
    s->backend.freed = 1;
    s->listen_tls = w->listen_tls[li] != NULL;

    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *) sa;
        inet_ntop(AF_INET6, &a->sin6_addr, s->peer_ip, sizeof(s->peer_ip));
        snprintf(s->peer, sizeof(s->peer), "[%s]:%u", s->peer_ip, ntohs(a->sin6_port));
        s->peer_port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *) sa;
        inet_ntop(AF_INET, &a->sin_addr, s->peer_ip, sizeof(s->peer_ip));
        snprintf(s->peer, sizeof(s->peer), "%s:%u", s->peer_ip, ntohs(a->sin_port));
        s->peer_port = ntohs(a->sin_port);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    s->next = w->sessions;
    if (w->sessions) w->sessions->prev = s;
    w->sessions = s;
    w->nsessions++;

    weir_leg_open(&s->client, fd);
    if (s->listen_tls) {
        s->client.ssl = SSL_new(w->listen_tls[li]);
        if (s->client.ssl == NULL || SSL_set_fd(s->client.ssl, fd) != 1) {
            weir_leg_close_fd(&s->client);
            return;
        }
        SSL_set_accept_state(s->client.ssl);
        s->client.ssl_hs = 1;
        s->state = WEIR_S_TLS;
    } else {
        s->state = WEIR_S_REQUEST;
    }
    weir_leg_update(&s->client);
}

static void
weir_tick_leg(weir_leg_t *l, uint64_t now)
{
    weir_session_t *s = l->s;
    const weir_limits_t *lim = weir_limits(s);
    if (l->done || !l->opened) return;
    if (l->deadline && now >= l->deadline) {
        if (l->lingering) weir_leg_close_fd(l);
        else weir_leg_gone(l, "close handshake timed out");
        return;
    }
    if (s->state != WEIR_S_OPEN || l->close_sent || l->close_rcvd || lim->ping_interval_ms == 0) return;
    if (l->ping_sent) {
        if (now - l->ping_sent >= lim->ping_timeout_ms) {
            weir_log(WEIR_LOG_INFO, "keepalive timeout", "\"conn\":%llu,\"side\":\"%s\"",
                     (unsigned long long) s->id, l->is_backend ? "backend" : "client");
            weir_leg_gone(l, "keepalive timeout");
        }
        return;
    }
    if (!l->paused && now - l->last_rx >= lim->ping_interval_ms && !weir_other(l)->emitted_mid) {
        char token[WEIR_PING_TOKEN_LEN + 1];
        l->ping_token = (now * 0x9e3779b97f4a7c15ULL) ^ s->id;
        l->ping_sent = now ? now : 1;
        weir_ping_token(l, token);
        weir_leg_send_control(l, WEIR_WS_PING, (const uint8_t *) token, WEIR_PING_TOKEN_LEN);
    }
}

void
weir_proxy_tick(weir_worker_t *w)
{
    uint64_t now = uv_now(w->loop);
    const weir_limits_t *lim = &w->conf->limits;
    for (weir_session_t *s = w->sessions, *next; s != NULL; s = next) {
        next = s->next;
        if (s->state < WEIR_S_OPEN && now - s->started >= lim->handshake_timeout_ms) {
            if (s->state == WEIR_S_POLICY) {
                weir_session_http(s, 504, "/problems/gateway-timeout",
                                  "A policy did not decide in time", NULL);
            } else if (s->state <= WEIR_S_REQUEST) {
                if (s->state == WEIR_S_REQUEST)
                    weir_session_http(s, 408, "/problems/request-timeout", "Handshake not completed in time", NULL);
                else
                    weir_leg_close_fd(&s->client);
            } else {
                weir_bad_gateway(s, "backend handshake timed out");
            }
            continue;
        }
        weir_tick_leg(&s->client, now);
        weir_tick_leg(&s->backend, now);
        if (s->state == WEIR_S_OPEN && lim->idle_timeout_ms && now - s->last_data >= lim->idle_timeout_ms
            && !s->client.close_sent && !s->client.close_rcvd && !s->client.done) {
            weir_note_close(s, 1001, 'w');
            weir_leg_send_close(&s->client, 1001, "idle timeout", "/problems/idle-timeout");
            weir_leg_send_close(&s->backend, 1001, "idle timeout", NULL);
        }
    }
}

void
weir_proxy_shutdown(weir_worker_t *w)
{
    for (weir_session_t *s = w->sessions; s != NULL; s = s->next) {
        if (s->state == WEIR_S_OPEN) {
            weir_leg_send_close(&s->client, 1001, "server shutting down", "/problems/going-away");
            weir_leg_send_close(&s->backend, 1001, "server shutting down", NULL);
        } else if (s->state != WEIR_S_CLOSED) {
            weir_leg_close_fd(&s->backend);
            weir_leg_close_fd(&s->client);
        }
    }
}

void
weir_proxy_run_ready(weir_worker_t *w)
{
    weir_leg_t *l = w->ready;
    w->ready = NULL;
    while (l != NULL) {
        weir_leg_t *next = l->ready_next;
        l->in_ready = 0;
        l->ready_next = NULL;
        if (!l->done) weir_leg_on_readable(l);
        l = next;
    }
}

void
weir_proxy_abort_all(weir_worker_t *w)
{
    for (weir_session_t *s = w->sessions; s != NULL; s = s->next) {
        weir_leg_close_fd(&s->backend);
        weir_leg_close_fd(&s->client);
    }
}

/* ---- whole messages: frame hooks, policies' own messages ---------------------- */

void
weir_proxy_resolved(weir_session_t *s, int hook, const weir_verdict_t *v)
{
    if (hook == WEIR_HOOK_HANDSHAKE) {
        if (s->state == WEIR_S_POLICY && !s->client.done) weir_handshake_verdict(s, v);
        return;
    }
    weir_leg_t *l = hook == WEIR_HOOK_FRAME_IN ? &s->client : &s->backend;
    if (!l->waiting || l->done) return;
    l->waiting = 0;
    weir_apply_frame_verdict(l, v);

    /* what arrived behind the message, in order, then read again */
    uint8_t *h = l->held;
    size_t n = l->held_len;
    l->held = NULL;
    l->held_len = 0;
    if (h != NULL) {
        if (!l->done) weir_relay_process(l, h, n);
        free(h);
    }
    if (!l->waiting && !l->done) weir_leg_resume(l, WEIR_PAUSE_POLICY);
}

const uint8_t *
weir_proxy_payload(weir_session_t *s, int dir, size_t *len)
{
    weir_leg_t *l = dir ? &s->backend : &s->client;
    if (l->view != NULL) {
        *len = l->view_len;
        return l->view;
    }
    *len = l->msg_fill;
    return l->msg;
}

int
weir_proxy_send(weir_session_t *s, int opcode, const uint8_t *p, size_t n)
{
    weir_leg_t *c = &s->client;
    if (c->done || c->close_sent || s->state == WEIR_S_CLOSED) return WEIR_ERROR;
    if (c->out_len + c->inject_len + n > weir_limits(s)->buffer_size) return WEIR_ERROR;
    weir_leg_message(c, opcode == WEIR_WS_BINARY ? WEIR_WS_BINARY : WEIR_WS_TEXT, p, n);
    return WEIR_OK;
}

void
weir_proxy_close(weir_session_t *s, int code, const char *reason, const char *problem, const char *message)
{
    char json[1024];
    size_t jl = 0;
    if (s->state < WEIR_S_OPEN) {
        /* still in the handshake: refuse it; the JSON carries the HTTP status */
        char buf[2048];
        weir_leg_close_fd(&s->backend);
        if (problem == NULL) {
            problem = "/problems/forbidden";
            message = "Connection refused by policy";
        }
        jl = weir_error_json(json, sizeof(json), problem, 403, message ? message : "");
        size_t n = weir_http_json(buf, sizeof(buf), 403, json, jl, NULL);
        s->http_status = 403;
        s->state = WEIR_S_CLOSED;
        if (weir_leg_write(&s->client, (uint8_t *) buf, n) == WEIR_OK) weir_leg_finish(&s->client);
        return;
    }
    if (code < 1000 || code > 4999 || !weir_ws_close_code_valid((unsigned) code)) code = 1008;
    if (problem != NULL) jl = weir_error_json(json, sizeof(json), problem, code, message ? message : "");
    weir_note_close(s, (unsigned) code, 'w');
    weir_leg_close_with(&s->client, (unsigned) code, reason, problem ? json : NULL, jl);
    weir_leg_send_close(&s->backend, 1001, "client closed by policy", NULL);
}

/* ---- reload ----------------------------------------------------------------------- */

static weir_version_t *
weir_find_version(weir_conf_t *conf, const char *api, const char *version)
{
    for (size_t a = 0; a < conf->napis; a++) {
        if (strcmp(conf->apis[a].name, api) != 0) continue;
        for (size_t v = 0; v < conf->apis[a].nversions; v++)
            if (strcmp(conf->apis[a].versions[v].version, version) == 0) return &conf->apis[a].versions[v];
    }
    return NULL;
}

void
weir_proxy_reloaded(weir_worker_t *w, weir_conf_t *conf)
{
    for (weir_session_t *s = w->sessions; s != NULL; s = s->next) {
        if (s->route.version == NULL || s->state == WEIR_S_CLOSED) continue;
        weir_version_t *v = weir_find_version(conf, s->route.api->name, s->route.version->version);
        if (v == NULL) {
            if (s->state < WEIR_S_OPEN) {
                weir_leg_close_fd(&s->backend);
                weir_session_http(s, 503, "/problems/api-removed", "The API was removed", NULL);
            } else {
                weir_note_close(s, 1012, 'w');
                weir_leg_send_close(&s->client, 1012, "API removed", "/problems/api-removed");
                weir_leg_send_close(&s->backend, 1001, "API removed", NULL);
            }
            continue;
        }
        if (s->has_ctx) {
            /* its ctx follows the new chain (the runtime switched it); the core
             * follows the chain's frame hooks from the next message on */
            s->hooks = v->hooks;
            s->client.assemble_next = (v->hooks & WEIR_HOOK_FRAME_IN) != 0;
            s->backend.assemble_next = (v->hooks & WEIR_HOOK_FRAME_OUT) != 0;
        }
    }
}
