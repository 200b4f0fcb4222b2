/*
 * handshake.c — both handshakes of a session: the client's TLS and request
 * head (routing, the checks of RFC 6455, /healthz), the on_handshake
 * verdict, the backend's connect, TLS, weir's request and the backend's
 * 101, then the client's 101; and the HTTP answers weir gives instead.
 *
 * weir defers the client's 101 until the backend's: a client is told it is
 * connected only once weir knows it can be. A failure after the request
 * was accepted still completes the upgrade, then closes with the
 * bad-gateway JSON and 1014, since a browser cannot read an HTTP error body
 * on a failed WebSocket handshake.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "analytics.h"
#include "http.h"
#include "log.h"
#include "registry.h"
#include "session_int.h"
#include "stats_session.h"
#include "tls.h"

static void weir_handshake_proceed(weir_session_t *s);

/* ---- policies' changes to the backend's request --------------------------- */

struct weir_upstream_s {
    char   *query;          /* replaces the client's query when query_set */
    size_t  query_len;
    int     query_set;
    char   *del;            /* lower-case header names to drop, "\n"-separated */
    size_t  del_len;
    char   *add;            /* header lines to add */
    size_t  add_len;
    char   *proto;          /* the subprotocols the backend is offered, when proto_set */
    size_t  proto_len;
    int     proto_set;
};

void
weir_upstream_free(weir_session_t *s)
{
    weir_upstream_t *u = s->up;
    if (u == NULL) return;
    free(u->query);
    free(u->del);
    free(u->add);
    free(u->proto);
    free(u);
    s->up = NULL;
}

/* Does the policies' list of dropped headers name header NAME? */
static int
weir_upstream_drops(const weir_upstream_t *u, const char *name, size_t len)
{
    if (u == NULL || u->del_len == 0) return 0;
    const char *p = u->del, *end = u->del + u->del_len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t) (end - p));
        size_t n = (size_t) ((nl ? nl : end) - p);
        if (n == len && strncasecmp(p, name, len) == 0) return 1;
        p += n + 1;
    }
    return 0;
}

static char *
weir_dup(const char *p, size_t n)
{
    char *d = malloc(n + 1);
    if (d == NULL) return NULL;
    if (n) memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

int
weir_conn_upstream(weir_session_t *s, const char *query, size_t qlen, const char *del, size_t dlen,
                   const char *add, size_t alen, const char *proto, size_t plen, int proto_set)
{
    if (s->state >= WEIR_S_CONNECT || s->hs == NULL) return WEIR_ERROR;
    weir_upstream_free(s);
    weir_upstream_t *u = calloc(1, sizeof(*u));
    if (u == NULL) return WEIR_ERROR;
    s->up = u;
    u->query_set = query != NULL;
    u->proto_set = proto_set;
    if ((query && (u->query = weir_dup(query, qlen)) == NULL) || (u->del = weir_dup(del ? del : "", dlen)) == NULL
        || (u->add = weir_dup(add ? add : "", alen)) == NULL
        || (proto_set && (u->proto = weir_dup(proto ? proto : "", plen)) == NULL)) {
        weir_upstream_free(s);
        return WEIR_ERROR;
    }
    u->query_len = query ? qlen : 0;
    u->del_len = dlen;
    u->add_len = alen;
    u->proto_len = proto_set ? plen : 0;
    return WEIR_OK;
}

/* The first subprotocol the client offered, or NULL (re-parses the head). */
static size_t
weir_first_protocol(weir_session_t *s, char *out, size_t len)
{
    weir_http_msg_t m;
    const char *v;
    size_t vlen;
    if (s->up != NULL && s->up->proto_set) {             /* a policy hid some of them */
        v = s->up->proto;
        vlen = s->up->proto_len;
    } else {
        if (s->hs == NULL || weir_http_parse(s->hs, s->hs_len, 1, &m) <= 0) return 0;
        const weir_http_header_t *h = weir_http_find(&m, "Sec-WebSocket-Protocol");
        if (h == NULL) return 0;
        v = h->value;
        vlen = h->value_len;
    }
    size_t i = 0;
    while (i < vlen && (v[i] == ' ' || v[i] == ',')) i++;
    size_t j = i;
    while (j < vlen && v[j] != ',' && v[j] != ' ') j++;
    if (j - i == 0 || j - i >= len) return 0;
    memcpy(out, v + i, j - i);
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

/* S is open: list it in the host's registry (the admin API's connections). */
static void
weir_session_listed(weir_session_t *s)
{
    weir_worker_t *w = s->w;
    s->reg = weir_registry_open(w->id, s->id & ((1ULL << 40) - 1),
                                s->route.api->name, s->route.version->version, s->peer_ip, s->peer_port,
                                s->listen_tls);
    if (s->reg < 0) {
        static int told;
        if (!told++)
            weir_log(WEIR_LOG_WARN, "connection registry full: some connections are not listed",
                     "\"worker\":%d,\"slots\":%u", w->id, weir_registry_per_worker());
        return;
    }
    if (w->listed != NULL) w->listed[s->reg] = s;
    weir_registry_consumer(w->id, s->reg, s->consumer[WEIR_CONSUMER_APPLICATION],
                           s->consumer[WEIR_CONSUMER_SUBSCRIBER], s->consumer[WEIR_CONSUMER_KEY_TYPE],
                           s->consumer[WEIR_CONSUMER_TIER]);
}

static void
weir_handshake_done(weir_session_t *s)
{
    free(s->hs);
    s->hs = NULL;
    free(s->bhs);
    s->bhs = NULL;
    s->hs_len = s->hs_cap = s->bhs_len = s->bhs_cap = 0;
    weir_upstream_free(s);
}

/* Complete the client's upgrade without a backend (its socket is closed),
 * so that a browser can read why it is closed next. WEIR_ERROR when the
 * client is gone. */
static int
weir_upgrade_alone(weir_session_t *s)
{
    weir_leg_t *c = &s->client;
    weir_leg_close_fd(&s->backend);
    if (c->done) return WEIR_ERROR;
    if (s->state < WEIR_S_OPEN) {
        char proto[128];
        size_t pl = weir_first_protocol(s, proto, sizeof(proto));
        weir_client_101(s, proto, pl);
        weir_handshake_done(s);
        s->state = WEIR_S_OPEN;
        c->paused &= ~WEIR_PAUSE_HANDSHAKE;
        c->last_rx = weir_now(s);
    }
    return WEIR_OK;
}

void
weir_bad_gateway(weir_session_t *s, const char *why)
{
    char u[256], y[512];
    weir_log(WEIR_LOG_WARN, "backend unavailable", "\"conn\":\"%s\",\"url\":\"%s\",\"why\":\"%s\"", s->name,
             s->ep ? weir_log_str(u, sizeof(u), s->ep->url) : "", weir_log_str(y, sizeof(y), why));
    weir_leg_t *c = &s->client;
    weir_stats_backend_failed(s);
    if (weir_upgrade_alone(s) != WEIR_OK) return;
    weir_leg_send_close(c, 1014, "backend unavailable", "/problems/bad-gateway");
}

/* ---- weir's request to the backend -------------------------------------- */

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
    weir_upstream_t *up = s->up;
    size_t cap = s->hs_head + strlen(ep->path) + (ep->query ? strlen(ep->query) : 0)
                 + strlen(ep->host_header) + 1024 + (up ? up->add_len + up->proto_len + 32 : 0);
    char *buf = malloc(cap);
    if (buf == NULL) return WEIR_ERROR;

    uint8_t rawkey[16];
    char key[32];
    weir_ws_random(rawkey, sizeof(rawkey));
    EVP_EncodeBlock((unsigned char *) key, rawkey, sizeof(rawkey));
    weir_ws_accept(key, 24, s->expect);

    size_t o = (size_t) snprintf(buf, cap, "GET ");
    weir_route_t r = s->route;
    if (up != NULL && up->query_set) {              /* credentials hidden from the backend */
        r.query = up->query_len ? up->query : NULL;
        r.query_len = up->query_len;
    }
    size_t tl = weir_route_target(ep, &r, buf + o, cap - o);
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
        if (weir_hop_by_hop(h, conn) || weir_upstream_drops(up, h->name, h->name_len)) continue;
        if (up != NULL && up->proto_set && weir_http_name_eq(h->name, h->name_len, "Sec-WebSocket-Protocol"))
            continue;
        o += (size_t) snprintf(buf + o, cap - o, "%.*s: %.*s\r\n", (int) h->name_len, h->name,
                               (int) h->value_len, h->value);
    }
    if (up != NULL) {
        if (up->proto_set && up->proto_len > 0)
            o += (size_t) snprintf(buf + o, cap - o, "Sec-WebSocket-Protocol: %.*s\r\n", (int) up->proto_len,
                                   up->proto);
        o += (size_t) snprintf(buf + o, cap - o, "%.*s", (int) up->add_len, up->add);
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
    if (!ep->tls) {
        /* A local backend's connection is nearly always made by now: the
         * kernel runs the three-way handshake over loopback before connect()
         * returns. So send the request at once: it saves a turn of the loop
         * and an epoll_ctl (HAProxy 2.6 adds the socket for writing and sends
         * when epoll says it is writable). A connection still on its way
         * refuses with EAGAIN and is waited for as before; one that failed
         * gives its error here (a refusal, say). */
        ssize_t w = send(fd, b->out + b->out_off, b->out_len, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            weir_bad_gateway(s, strerror(errno));
            return;
        }
        if (w >= 0) {
            s->state = WEIR_S_BACKEND;
            b->last_tx = weir_now(s);
            b->out_off += (size_t) w;
            b->out_len -= (size_t) w;
            weir_leg_flush(b);          /* what is left, and the leg armed for the answer */
            return;
        }
    }
    weir_leg_update(b);
}

/* ---- the client's request ----------------------------------------------- */

/* Give S a ctx in the policy engine (its version has a chain). */
static int
weir_policy_open(weir_session_t *s)
{
    weir_conn_info_t info = {
        .api = s->route.api->name, .version = s->route.version->version, .context = s->route.api->context,
        .head = s->hs, .head_len = s->hs_head, .peer_ip = s->peer_ip, .peer_port = s->peer_port,
        .tls = s->listen_tls, .ticket = s->ticket_req,
    };
    if (s->w->policy->open(s, &info) != WEIR_OK) return WEIR_ERROR;
    s->has_ctx = 1;
    return WEIR_OK;
}

/* Is M's method METHOD? Methods are case-sensitive (RFC 9110 9.1): "get" is not GET. */
static int
weir_method_is(const weir_http_msg_t *m, const char *method)
{
    return m->method_len == strlen(method) && memcmp(m->method, method, m->method_len) == 0;
}

/* CORS headers for a ticket answer: the browser page of ORIGIN may read it. */
static void
weir_ticket_cors(const weir_http_msg_t *m, char *out, size_t len)
{
    const weir_http_header_t *o = weir_http_find(m, "Origin");
    out[0] = '\0';
    if (o == NULL || o->value_len == 0 || o->value_len > 512) return;
    snprintf(out, len, "Access-Control-Allow-Origin: %.*s\r\nVary: Origin\r\nCache-Control: no-store\r\n",
             (int) o->value_len, o->value);
}

/*
 * POST <context>[/<version>][/path]/ticket trades a bearer token for a
 * one-time ticket (the version's on_handshake chain authenticates it, and
 * the engine answers); OPTIONS is its CORS preflight. Returns WEIR_DECLINED
 * when M is not such a request, else WEIR_OK (answered or under way).
 */
static int
weir_ticket_request(weir_session_t *s, const weir_http_msg_t *m)
{
    static const char path[] = "/ticket";      /* the end of any path of the API version */
    size_t pl = sizeof(path) - 1;
    if (s->route.rest_len < pl || memcmp(s->route.rest + s->route.rest_len - pl, path, pl) != 0)
        return WEIR_DECLINED;
    int post = weir_method_is(m, "POST");
    if (!post && !weir_method_is(m, "OPTIONS")) return WEIR_DECLINED;
    char cors[700];
    weir_ticket_cors(m, cors, sizeof(cors));
    if (!(s->route.version->hooks & WEIR_HOOK_HANDSHAKE)) {
        weir_session_http(s, 404, "/problems/not-found", "No policy of this API issues tickets", cors);
        return WEIR_OK;
    }
    if (!post) {
        char buf[1024];
        int n = snprintf(buf, sizeof(buf),
                         "HTTP/1.1 204 No Content\r\n%sAccess-Control-Allow-Methods: POST\r\n"
                         "Access-Control-Allow-Headers: Authorization\r\nAccess-Control-Max-Age: 600\r\n"
                         "Content-Length: 0\r\nConnection: close\r\n\r\n", cors);
        s->http_status = 204;
        s->state = WEIR_S_CLOSED;
        if (weir_leg_write(&s->client, (uint8_t *) buf, (size_t) n) == WEIR_OK) weir_leg_finish(&s->client);
        return WEIR_OK;
    }
    const weir_http_header_t *cl = weir_http_find(m, "Content-Length");
    if (weir_http_find(m, "Transfer-Encoding") != NULL
        || (cl != NULL && !(cl->value_len == 1 && cl->value[0] == '0'))) {
        weir_session_http(s, 400, "/problems/bad-request", "A ticket request has no body", cors);
        return WEIR_OK;
    }
    s->ticket_req = 1;
    s->hooks = s->route.version->hooks;
    if (weir_policy_open(s) != WEIR_OK) {
        weir_session_http(s, 500, "/problems/internal-error", "Internal error", cors);
        return WEIR_OK;
    }
    weir_leg_pause(&s->client, WEIR_PAUSE_HANDSHAKE);
    weir_verdict_t v;
    s->state = WEIR_S_POLICY;
    if (s->w->policy->handshake(s, &v) == WEIR_AGAIN) return WEIR_OK;
    if (s->state == WEIR_S_POLICY) weir_handshake_verdict(s, &v);
    return WEIR_OK;
}

/* The request head is complete, its target without dot segments (LOW: the
 * shortest length a ".." cut its path back to, SIZE_MAX: none did): answer
 * it or start the backend leg. */
static void
weir_client_request(weir_session_t *s, const weir_http_msg_t *m, size_t low)
{
    weir_worker_t *w = s->w;
    const weir_http_header_t *h;

    if (weir_http_count(m, "Host") > 1) {               /* which one names the host? (RFC 9112 3.2) */
        weir_session_http(s, 400, "/problems/bad-request", "More than one Host header", NULL);
        return;
    }
    if (s->admin || weir_service_public(s, m)) {
        weir_service_request(s, m);
        return;
    }
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
    int routed = weir_route(s->conf, m->target, m->target_len, &s->route);
    if (low != SIZE_MAX && (routed != WEIR_OK || low < (size_t) (s->route.rest - m->target))) {
        /* a ".." took the path out of the context (or version) it is routed to, or of any */
        weir_session_http(s, 400, "/problems/bad-request", "The request target climbs above its API", NULL);
        return;
    }
    if (routed != WEIR_OK) {
        weir_session_http(s, 404, "/problems/not-found", "No API matches the requested path", NULL);
        return;
    }
    if (weir_ticket_request(s, m) != WEIR_DECLINED) return;
    h = weir_http_find(m, "Upgrade");
    if (h == NULL || !weir_http_has_token(h->value, h->value_len, "websocket")) {
        weir_session_http(s, 426, "/problems/upgrade-required", "This API is served over WebSocket only",
                          "Upgrade: websocket\r\n");
        return;
    }
    const weir_http_header_t *key = weir_http_find(m, "Sec-WebSocket-Key");
    h = weir_http_find(m, "Connection");
    if (!weir_method_is(m, "GET") || m->minor < 1 || h == NULL
        || !weir_http_has_token(h->value, h->value_len, "upgrade") || key == NULL
        || !weir_ws_key_valid(key->value, key->value_len) || weir_http_count(m, "Sec-WebSocket-Key") > 1
        || weir_http_find(m, "Host") == NULL) {
        weir_session_http(s, 400, "/problems/bad-request", "Malformed WebSocket handshake", NULL);
        return;
    }
    if (weir_http_find(m, "Content-Length") != NULL || weir_http_find(m, "Transfer-Encoding") != NULL) {
        /* where would a body end, and what would the bytes after the head be? */
        weir_session_http(s, 400, "/problems/bad-request", "A WebSocket upgrade has no body", NULL);
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
    if (s->hooks != 0 && weir_policy_open(s) != WEIR_OK) {
        weir_session_http(s, 500, "/problems/internal-error", "Internal error", NULL);
        return;
    }
    s->client.assemble = s->client.assemble_next = (s->hooks & WEIR_HOOK_FRAME_IN) != 0;
    s->backend.assemble = s->backend.assemble_next = (s->hooks & WEIR_HOOK_FRAME_OUT) != 0;
    weir_leg_pause(&s->client, WEIR_PAUSE_HANDSHAKE);
    if (s->hooks & WEIR_HOOK_HANDSHAKE) {
        weir_verdict_t v;
        s->state = WEIR_S_POLICY;
        if (s->w->policy->handshake(s, &v) == WEIR_AGAIN) return;
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
void
weir_handshake_verdict(weir_session_t *s, const weir_verdict_t *v)
{
    char buf[4096], cors[700] = "";
    if (s->ticket_req) {
        weir_http_msg_t m;
        if (weir_http_parse(s->hs, s->hs_len, 1, &m) > 0) weir_ticket_cors(&m, cors, sizeof(cors));
    }
    switch (v->kind) {
    case WEIR_V_ERROR:
        if (v->code >= 1000 && v->code <= 4999 && !s->ticket_req) {
            /* a WebSocket close code: upgrade, then the JSON and that close */
            if (weir_upgrade_alone(s) != WEIR_OK) return;
            s->http_status = 101;
            weir_note_close(s, (unsigned) v->code, 'w');
            weir_leg_close_with(&s->client, (unsigned) v->code, v->reason, v->payload, v->len);
            return;
        }
        /* fall through */
    case WEIR_V_RESPOND: {
        int status = v->kind == WEIR_V_RESPOND ? (v->code >= 200 && v->code <= 599 ? v->code : 200)
                     : v->code >= 400 && v->code <= 599 ? v->code : 403;
        /* a refusal for too many connections says when to try again */
        const char *extra = s->ticket_req ? cors : status == 429 ? "Retry-After: 1\r\n" : NULL;
        if (v->kind == WEIR_V_ERROR) {
            /* the status the client gets decides, for metrics and analytics alike */
            weir_stats_refused(s, status, v->payload, v->len);
            if (s->an) weir_analytics_refused(s, status, v->payload, v->len, v->reason);
        }
        size_t n = weir_http_json(buf, sizeof(buf), status, v->payload, v->len, extra);
        s->http_status = status;
        s->state = WEIR_S_CLOSED;
        if (weir_leg_write(&s->client, (uint8_t *) buf, n) == WEIR_OK) weir_leg_finish(&s->client);
        return;
    }
    case WEIR_V_FAIL:
        weir_log_policy_failure(s, v);
        weir_session_http(s, 500, "/problems/internal-error", "Internal error", s->ticket_req ? cors : NULL);
        return;
    default:
        if (s->ticket_req) {             /* the engine answers every ticket request */
            weir_session_http(s, 500, "/problems/internal-error", "Internal error", cors);
            return;
        }
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
 * Remove the dot segments of the request target M parsed in S's head, in
 * place: the rest of the head (and the frames after it) moves up, and M is
 * parsed again. *LOW as weir_route_normalize. WEIR_ERROR: the target climbs
 * above the root.
 */
static int
weir_request_normalize(weir_session_t *s, weir_http_msg_t *m, size_t *low)
{
    char *t = s->hs + (m->target - s->hs), *after = t + m->target_len;     /* M's target lies in s->hs */
    size_t len = m->target_len;
    if (weir_route_normalize(t, &len, low) != WEIR_OK) return WEIR_ERROR;
    if (len == m->target_len) return WEIR_OK;          /* no dot segment */
    memmove(t + len, after, s->hs_len - (size_t) (after - s->hs));
    s->hs_len -= m->target_len - len;
    s->hs_head -= m->target_len - len;
    return weir_http_parse(s->hs, s->hs_len, 1, m) > 0 ? WEIR_OK : WEIR_ERROR;
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

void
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
        size_t low;
        if (weir_request_normalize(s, &m, &low) != WEIR_OK) {
            weir_session_http(s, 400, "/problems/bad-request", "The request target climbs above its API", NULL);
            return;
        }
        weir_client_request(s, &m, low);
        return;
    }
}

/* ---- the backend's response --------------------------------------------- */

/* Does the client's request offer subprotocol P? */
static int
weir_protocol_offered(weir_session_t *s, const char *p, size_t len)
{
    weir_http_msg_t m;
    char tok[256];
    if (len >= sizeof(tok)) return 0;
    memcpy(tok, p, len);
    tok[len] = '\0';
    if (s->up != NULL && s->up->proto_set)               /* only what the backend was offered */
        return weir_http_has_token(s->up->proto, s->up->proto_len, tok);
    if (weir_http_parse(s->hs, s->hs_len, 1, &m) <= 0) return 0;
    for (size_t i = 0; i < m.nheaders; i++) {
        const weir_http_header_t *h = &m.headers[i];
        if (weir_http_name_eq(h->name, h->name_len, "Sec-WebSocket-Protocol")
            && weir_http_has_token(h->value, h->value_len, tok))
            return 1;
    }
    return 0;
}

void
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
    if (s->an) weir_analytics_connect(s);
    weir_session_listed(s);
    weir_stats_opened(s);
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

/* ---- TLS and the backend's connect -------------------------------------- */

void
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
        char e[400];
        weir_log(WEIR_LOG_DEBUG, "client TLS handshake failed", "\"conn\":\"%s\",\"error\":\"%s\"", s->name,
                 weir_log_str(e, sizeof(e), err));
        weir_leg_close_fd(l);
    }
}

void
weir_backend_connected(weir_session_t *s)
{
    weir_leg_t *b = &s->backend;
    int err = 0;
    socklen_t len = sizeof(err);
    /* a connect that failed is reported with an error or hang-up: only
     * then is there an error to fetch */
    if (b->io.err && getsockopt(b->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
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
