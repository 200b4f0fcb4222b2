/*
 * session.c — a session's life: accept, the poll events of its legs
 * dispatched by its state, the tick (handshake, close and idle timeouts,
 * keep-alive pings), shutdown, reload and the free; and what a policy may
 * do to a connection (the weir_conn_* calls of conn.h). It is the top room
 * of a session and the legs' owner: leg.c's poll callback, its ready list
 * and the close of its handles come back here.
 *
 * Life of a session: accept → (TLS) → read the request head → route →
 * connect the backend → (TLS) → send weir's request → read the backend's
 * 101 → send the client's 101 → relay → close handshakes → each socket
 * closed (at once after its close handshake, else after a lingering close)
 * → both legs' ios closed → the session is freed (and its
 * access line logged). Nothing is freed while an event already taken from
 * the epoll set may still name a leg: a leg is "done" when its socket is
 * closed and "freed" when weir_io_close reported it at the end of the
 * loop's turn; the session goes when both are freed.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "analytics.h"
#include "http.h"
#include "log.h"
#include "registry.h"
#include "session_int.h"
#include "stats_session.h"

/* ---- a session's life --------------------------------------------------- */

/* Drop a session's reference to CONF; the last one frees a configuration
 * that a reload replaced (the current one is the worker's). */
static void
weir_conf_release(weir_worker_t *w, weir_conf_t *conf)
{
    if (--conf->refs == 0 && conf != w->conf) weir_conf_free(conf);
}

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
    snprintf(s->name, sizeof(s->name), "w%d-%llu", w->id, (unsigned long long) w->next_id);
    s->started = uv_now(w->loop);
    s->t0_ns = uv_hrtime();
    s->client.s = s;
    s->backend.s = s;
    s->backend.is_backend = 1;
    s->backend.fd = -1;
    s->backend.done = 1;
    s->backend.freed = 1;
    s->listen_tls = w->listen_tls[li] != NULL;
    s->admin = w->conf->listen[li].admin;
    s->reg = -1;

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
    /* TCP_NODELAY: inherited from the listener (weir_listen_open) */

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
        /* the request is read after a turn of the loop, not at once: read
         * in the accept batch, each request buffer came between two
         * sessions and left a hole when freed (+0.3 KiB per idle
         * connection in the bench) */
        s->state = WEIR_S_REQUEST;
    }
    weir_leg_update(&s->client);
}

/* Who closed S first, for the access log and on_close. */
static const char *
weir_close_side(const weir_session_t *s)
{
    return s->close_side == 'c' ? "client" : s->close_side == 'b' ? "backend"
           : s->close_side == 'w' ? "weir" : "none";
}

/* Forget what S knows of its consumer. */
static void
weir_consumer_free(weir_session_t *s)
{
    for (int i = 0; i < WEIR_CONSUMER_FIELDS; i++) {
        free(s->consumer[i]);
        s->consumer[i] = NULL;
    }
}

/* The access record of S, which ended as END (docs/logging.md). */
static void
weir_session_log_access(const weir_session_t *s, const weir_conn_end_t *end)
{
    char api[256], ver[128], c[WEIR_CONSUMER_FIELDS][520];
    for (int i = 0; i < WEIR_CONSUMER_FIELDS; i++) weir_log_opt(c[i], sizeof(c[i]), s->consumer[i]);
    weir_log(WEIR_LOG_INFO, "access",
             "\"conn\":\"%s\",\"client\":\"%s\",\"api\":%s,\"version\":%s,\"application\":%s,"
             "\"subscriber\":%s,\"key_type\":%s,\"tier\":%s,\"status\":%d,\"duration_ms\":%llu,"
             "\"frames_in\":%llu,\"bytes_in\":%llu,\"frames_out\":%llu,\"bytes_out\":%llu,"
             "\"close_code\":%u,\"close_side\":\"%s\"",
             s->name, s->peer, weir_log_opt(api, sizeof(api), s->route.api ? s->route.api->name : NULL),
             weir_log_opt(ver, sizeof(ver), s->route.version ? s->route.version->version : NULL),
             c[WEIR_CONSUMER_APPLICATION], c[WEIR_CONSUMER_SUBSCRIBER], c[WEIR_CONSUMER_KEY_TYPE],
             c[WEIR_CONSUMER_TIER], s->http_status, (unsigned long long) end->duration_ms,
             (unsigned long long) end->frames_in, (unsigned long long) end->bytes_in,
             (unsigned long long) end->frames_out, (unsigned long long) end->bytes_out, end->code, end->side);
}

/* Both legs' handles are closed: the access line, on_close, and S goes. */
static void
weir_session_free(weir_session_t *s)
{
    weir_worker_t *w = s->w;
    weir_conn_end_t end = {
        .code = s->close_code, .side = weir_close_side(s), .duration_ms = uv_now(w->loop) - s->started,
        .frames_in = s->client.frames, .bytes_in = s->client.bytes,
        .frames_out = s->backend.frames, .bytes_out = s->backend.bytes,
    };
    if (s->prev) s->prev->next = s->next;
    else w->sessions = s->next;
    if (s->next) s->next->prev = s->prev;
    w->nsessions--;
    if (s->reg >= 0) {
        weir_registry_close(w->id, s->reg);
        if (w->listed != NULL) w->listed[s->reg] = NULL;
    }

    weir_stats_end(s);
    if (weir_log_enabled(WEIR_LOG_INFO)) weir_session_log_access(s, &end);
    if (s->an) weir_analytics_close(s, &end);
    if (s->has_ctx) {
        s->has_ctx = 0;
        w->policy->close(s, &end);
    }
    weir_leg_t *legs[2] = { &s->client, &s->backend };
    for (int i = 0; i < 2; i++) {
        weir_relay_msg_free(legs[i]);
        free(legs[i]->stash);
        free(legs[i]->held);
        free(legs[i]->inject);
    }
    free(s->hs);
    free(s->bhs);
    free(s->body);
    weir_upstream_free(s);
    weir_relay_throttle_free(s);
    free(s->needle);
    weir_inspector_unref(s->inspect);
    weir_consumer_free(s);
    weir_conf_release(w, s->conf);
    free(s);
    if (w->draining && w->nsessions == 0) weir_io_stop(w->loop);
}

/* ---- events ------------------------------------------------------------- */

/* L can be read: read it as S's state says. */
static void
weir_session_readable(weir_leg_t *l)
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
    else if (!l->is_backend && s->state == WEIR_S_BODY) weir_service_read_body(s);
    else if (l->is_backend && s->state == WEIR_S_BACKEND) weir_backend_read_response(s);
    else if (s->state >= WEIR_S_OPEN) weir_relay_read(l);
}

/* L can be written (or its backend's connect completed). */
static void
weir_session_writable(weir_leg_t *l)
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
        weir_session_readable(l);
        if (l->done) return;
    }
    weir_leg_flush(l);
}

/* The poll callback of every leg. */
static void
weir_session_poll_cb(weir_io_t *io, int events)
{
    weir_leg_t *l = io->data;
    if (l->done) return;
    int want = weir_leg_want(l);
    if (events & ~want & (UV_READABLE | UV_WRITABLE)) {
        /* an event nobody waits for any more: stop polling for it now */
        l->events = want;
        weir_io_start(&l->io, want, weir_session_poll_cb);
        events &= want;
    }
    if (events & UV_WRITABLE) weir_session_writable(l);
    if (!l->done && (events & UV_READABLE)) weir_session_readable(l);
}

/* What leg.c asks of the rooms above it (session_int.h). */
static const weir_leg_owner_t weir_session_legs = {
    .poll         = weir_session_poll_cb,
    .readable     = weir_session_readable,
    .freed        = weir_session_free,
    .backend_lost = weir_bad_gateway,
};

void
weir_proxy_init(weir_worker_t *w, const weir_policy_ops_t *policy)
{
    w->policy = policy;
    w->listed = calloc(WEIR_MAX(weir_registry_per_worker(), 1u), sizeof(*w->listed));
    weir_leg_init(&weir_session_legs);
}

/* ---- ticks -------------------------------------------------------------- */

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
    if (lim->send_timeout_ms && l->out_len > 0 && now - l->last_tx >= lim->send_timeout_ms
        && !(l->is_backend && s->state == WEIR_S_CONNECT)) {       /* a connect is handshake_timeout's */
        /* a peer that stopped reading: nothing of its queue went for
         * send_timeout (keep-alive cannot find it while its stream is inside
         * a frame, and its queue holds the other leg paused) */
        weir_log(WEIR_LOG_INFO, "send timeout", "\"conn\":\"%s\",\"side\":\"%s\",\"queued\":%zu",
                 s->name, l->is_backend ? "backend" : "client", l->out_len);
        weir_leg_gone(l, "send timeout");
        return;
    }
    if (s->state != WEIR_S_OPEN || l->close_sent || l->close_rcvd || l->fail_code || lim->ping_interval_ms == 0)
        return;
    if (l->ping_sent) {
        if (now - l->ping_sent >= lim->ping_timeout_ms) {
            weir_log(WEIR_LOG_INFO, "keepalive timeout", "\"conn\":\"%s\",\"side\":\"%s\"", s->name,
                     l->is_backend ? "backend" : "client");
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

/* Copy S's counters into its registry slot; WALL: the wall clock's ms at loop time NOW. */
static void
weir_tick_listed(weir_session_t *s, uint64_t now, uint64_t wall)
{
    uint64_t last = wall - (now - WEIR_MIN(s->last_data, now));
    weir_registry_counters(s->w->id, s->reg, last, s->client.frames, s->client.bytes, s->backend.frames,
                           s->backend.bytes);
}

void
weir_proxy_tick(weir_worker_t *w)
{
    uint64_t now = uv_now(w->loop);
    const weir_limits_t *lim = &w->conf->limits;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t wall = (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
    for (weir_session_t *s = w->sessions, *next; s != NULL; s = next) {
        next = s->next;
        if (s->reg >= 0) weir_tick_listed(s, now, wall);
        weir_stats_flush(s, wall);
        /* an admin request being answered (a reload: up to the master's 15 s) has a deadline of its own */
        uint64_t limit = s->service && s->state == WEIR_S_POLICY ? WEIR_SERVICE_TIMEOUT_MS : lim->handshake_timeout_ms;
        if (s->state < WEIR_S_OPEN && now - s->started >= limit) {
            if (s->state == WEIR_S_POLICY && s->service) {
                weir_session_http(s, 504, "/problems/gateway-timeout", "The request did not complete in time", NULL);
            } else if (s->state == WEIR_S_POLICY) {
                weir_session_http(s, 504, "/problems/gateway-timeout",
                                  "A policy did not decide in time", NULL);
            } else if (s->state <= WEIR_S_BODY) {
                if (s->state == WEIR_S_REQUEST || s->state == WEIR_S_BODY)
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
        /* a dashboard feed is idle by nature (the page only watches): keep-alive finds a dead one */
        if (s->state == WEIR_S_OPEN && lim->idle_timeout_ms && !s->local && now - s->last_data >= lim->idle_timeout_ms
            && !s->client.close_sent && !s->client.close_rcvd && !s->client.fail_code && !s->client.done) {
            weir_note_close(s, 1001, 'w');
            weir_leg_send_close(&s->client, 1001, "idle timeout", "/problems/idle-timeout");
            weir_leg_send_close(&s->backend, 1001, "idle timeout", NULL);
        }
    }
}

/* ---- shutdown and reload ------------------------------------------------ */

size_t
weir_proxy_shutdown(weir_worker_t *w, unsigned code, size_t max)
{
    const char *reason = code == 1012 ? "server restarting" : "server shutting down";
    size_t left = 0;
    for (weir_session_t *s = w->sessions; s != NULL; s = s->next) {
        if (s->state == WEIR_S_OPEN) {
            weir_leg_t *c = &s->client;
            if (c->done || c->close_sent || c->close_rcvd || c->fail_code) continue;    /* closing already */
            if (max == 0) {
                left++;
                continue;
            }
            max--;
            weir_leg_send_close(c, code, reason, "/problems/going-away");
            weir_leg_send_close(&s->backend, 1001, reason, NULL);
        } else if (s->state != WEIR_S_CLOSED) {
            weir_leg_close_fd(&s->backend);
            weir_leg_close_fd(&s->client);
        }
    }
    return left;
}

void
weir_proxy_abort_all(weir_worker_t *w)
{
    for (weir_session_t *s = w->sessions; s != NULL; s = s->next) {
        weir_leg_close_fd(&s->backend);
        weir_leg_close_fd(&s->client);
    }
}

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
        if (s->local && s->state == WEIR_S_OPEN && !s->client.close_sent && !s->client.close_rcvd
            && (!conf->admin.on || memcmp(s->conf->admin.token_hash, conf->admin.token_hash, 32) != 0)) {
            /* a dashboard feed authorised by an admin token the reload replaced */
            weir_note_close(s, 1008, 'w');
            weir_leg_send_close(&s->client, 1008, "admin token changed", "/problems/unauthorized");
            continue;
        }
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

/* ---- what policies may do ----------------------------------------------- */

uint64_t
weir_conn_id(const weir_session_t *s)
{
    return s->id;
}

const char *
weir_conn_name(const weir_session_t *s)
{
    return s->name;
}

void
weir_conn_resolved(weir_session_t *s, int hook, const weir_verdict_t *v)
{
    if (hook == WEIR_HOOK_HANDSHAKE) {
        if (s->state == WEIR_S_POLICY && !s->client.done) {
            if (s->service) weir_service_answer(s, v);
            else weir_handshake_verdict(s, v);
        }
        return;
    }
    weir_relay_resolved(hook == WEIR_HOOK_FRAME_IN ? &s->client : &s->backend, v);
}

const uint8_t *
weir_conn_payload(weir_session_t *s, int dir, size_t *len)
{
    weir_leg_t *l = dir ? &s->backend : &s->client;
    weir_msg_ref_t *m = l->view;
    if (m != NULL) {
        weir_ref_plain(m);
        *len = m->len;
        return m->p;
    }
    weir_msg_plain(l);
    *len = l->msg_fill;
    return l->msg;
}

void
weir_conn_view(weir_session_t *s, int dir, weir_msg_ref_t *m)
{
    weir_leg_t *l = dir ? &s->backend : &s->client;
    l->view = m;
}

int
weir_conn_send_to(weir_session_t *s, int to_backend, int opcode, const uint8_t *p, size_t n)
{
    if (!to_backend) return weir_conn_send(s, opcode, p, n);
    weir_leg_t *b = &s->backend;
    if (s->state != WEIR_S_OPEN || b->done || b->close_sent) return WEIR_ERROR;
    if (b->out_len + b->inject_len + n > weir_limits(s)->buffer_size) return WEIR_ERROR;
    weir_leg_message(b, opcode == WEIR_WS_BINARY ? WEIR_WS_BINARY : WEIR_WS_TEXT, p, n);
    return WEIR_OK;
}

weir_session_t *
weir_proxy_listed(weir_worker_t *w, int32_t slot, uint64_t n)
{
    if (w->listed == NULL || slot < 0 || (uint32_t) slot >= weir_registry_per_worker()) return NULL;
    weir_session_t *s = w->listed[slot];
    if (s == NULL || (s->id & ((1ULL << 40) - 1)) != n) return NULL;
    return s;
}

int
weir_conn_send(weir_session_t *s, int opcode, const uint8_t *p, size_t n)
{
    weir_leg_t *c = &s->client;
    if (c->done || c->close_sent || s->state == WEIR_S_CLOSED) return WEIR_ERROR;
    if (c->out_len + c->inject_len + n > weir_limits(s)->buffer_size) return WEIR_ERROR;
    weir_leg_message(c, opcode == WEIR_WS_BINARY ? WEIR_WS_BINARY : WEIR_WS_TEXT, p, n);
    return WEIR_OK;
}

int
weir_conn_limit(weir_session_t *s, const char *key, size_t len, const weir_limit_spec_t *spec, int action_in,
                int action_out, char *err, size_t errlen)
{
    return weir_relay_limit(s, key, len, spec, action_in, action_out, err, errlen);
}

int
weir_conn_consumer(weir_session_t *s, const char *const fields[WEIR_CONSUMER_FIELDS])
{
    weir_consumer_free(s);
    for (int i = 0; i < WEIR_CONSUMER_FIELDS; i++) {
        if (fields[i] == NULL) continue;
        s->consumer[i] = strndup(fields[i], 255);
        if (s->consumer[i] == NULL) {
            weir_consumer_free(s);
            return WEIR_ERROR;
        }
    }
    weir_stats_consumer(s);
    if (s->reg >= 0)
        weir_registry_consumer(s->w->id, s->reg, s->consumer[WEIR_CONSUMER_APPLICATION],
                               s->consumer[WEIR_CONSUMER_SUBSCRIBER], s->consumer[WEIR_CONSUMER_KEY_TYPE],
                               s->consumer[WEIR_CONSUMER_TIER]);
    return WEIR_OK;
}

void
weir_conn_inspect(weir_session_t *s, weir_inspector_t *in, unsigned owner)
{
    if (in != NULL) weir_inspector_ref(in);
    weir_inspector_unref(s->inspect);
    s->inspect = in;
    s->inspect_owner = in != NULL ? (uint16_t) owner : 0;
}

unsigned
weir_conn_inspect_owner(const weir_session_t *s)
{
    return s->inspect_owner;
}

int
weir_conn_intercept(weir_session_t *s, const char *needle)
{
    free(s->needle);
    s->needle = NULL;
    if (needle == NULL || *needle == '\0') return WEIR_OK;
    s->needle = strdup(needle);
    return s->needle ? WEIR_OK : WEIR_ERROR;
}

void
weir_conn_close(weir_session_t *s, int code, const char *reason, const char *problem, const char *message)
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
