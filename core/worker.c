/*
 * worker.c — a worker's loop: accepting on the shared listeners, the
 * periodic tick (timeouts, keep-alive), TLS contexts, reloads (SIGHUP),
 * reopening the log file (SIGUSR1), and the graceful shutdown on
 * SIGTERM/SIGINT (clients closed 1001) or SIGUSR2 (1012), paced at
 * limits.drain_rate.
 */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "admin.h"
#include "analytics.h"
#include "bus.h"
#include "io.h"
#include "ctl.h"
#include "limit.h"
#include "limit_sync.h"
#include "log.h"
#include "lua_bridge.h"
#include "proxy.h"
#include "registry.h"
#include "stats.h"
#include "tls.h"
#include "worker.h"
#include "ws.h"

#define WEIR_WORKER_TRIM     (16 * 1024 * 1024)   /* bytes free at the heap's top kept, not trimmed */
#define WEIR_WORKER_TOP_PAD  (1024 * 1024)        /* bytes the heap grows by at least */

static weir_worker_t weir_worker;

static void weir_worker_accept_cb(weir_io_t *io, int events);

static void
weir_worker_listen(weir_worker_t *w, int on)
{
    for (size_t i = 0; i < w->conf->nlisten; i++)
        weir_io_start(&w->listeners[i], on ? UV_READABLE : 0, weir_worker_accept_cb);
}

static uv_timer_t weir_accept_retry;

static void
weir_worker_accept_retry_cb(uv_timer_t *t)
{
    weir_worker_t *w = t->data;
    if (!w->draining) weir_worker_listen(w, 1);
}

static void
weir_worker_accept_cb(weir_io_t *io, int events)
{
    weir_worker_t *w = &weir_worker;
    size_t li = (size_t) (uintptr_t) io->data;
    WEIR_UNUSED(events);
    if (w->draining) return;

    /* a bounded batch, so that one busy listener does not starve the loop */
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage sa;
        socklen_t len = sizeof(sa);
        int fd = accept4(w->conf->listen[li].fd, (struct sockaddr *) &sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                weir_log(WEIR_LOG_ERROR, "cannot accept", "\"error\":\"%s\"", strerror(errno));
                weir_worker_listen(w, 0);
                uv_timer_start(&weir_accept_retry, weir_worker_accept_retry_cb, 100, 0);
            }
            return;
        }
        weir_session_accept(w, fd, li, (struct sockaddr *) &sa);
    }
}

static void
weir_worker_tick_cb(uv_timer_t *t)
{
    weir_proxy_tick(t->data);
}

static void
weir_worker_drain_cb(uv_timer_t *t)
{
    weir_worker_t *w = t->data;
    weir_log(WEIR_LOG_WARN, "drain timeout: closing remaining connections",
             "\"connections\":%llu", (unsigned long long) w->nsessions);
    weir_io_stop(w->loop);
}

/*
 * A drain paced at limits.drain_rate (this worker's share): closes are
 * spread out so that the clients do not all reconnect at the same moment.
 * Credit accrues with the time that passed, so the rate holds whatever the
 * jitter of the timer; whatever is left close_timeout (at most half of
 * drain_timeout) before the drain timeout is closed at once, so that it
 * too gets its close frame before the worker stops.
 */
static struct {
    uv_timer_t  timer;
    unsigned    code;           /* 1001 (SIGTERM, SIGINT) or 1012 (SIGUSR2: weir -s drain) */
    double      per_ms;         /* connections per millisecond */
    double      credit;         /* closes due and not yet made */
    uint64_t    last;           /* loop time credit was last added */
    uint64_t    all_at;         /* loop time from which everything left is closed */
} weir_drain;

static void
weir_worker_pace_cb(uv_timer_t *t)
{
    weir_worker_t *w = t->data;
    uint64_t now = uv_now(w->loop);
    weir_drain.credit += (double) (now - weir_drain.last) * weir_drain.per_ms;
    weir_drain.last = now;
    size_t n = now >= weir_drain.all_at ? SIZE_MAX : (size_t) weir_drain.credit;
    if (n != SIZE_MAX) weir_drain.credit -= (double) n;
    if (weir_proxy_shutdown(w, weir_drain.code, n) == 0) return;
    /* the next step after a jittered interval: half to one and a half of the mean */
    uint32_t r;
    weir_ws_random((uint8_t *) &r, sizeof(r));
    double mean = WEIR_MAX(1.0 / weir_drain.per_ms, 10.0);
    uint64_t next = (uint64_t) (mean * (0.5 + (double) r / 4294967296.0));
    next = WEIR_MAX(WEIR_MIN(next, weir_drain.all_at - now), (uint64_t) 1);
    uv_timer_start(t, weir_worker_pace_cb, next, 0);
}

static void
weir_worker_signal_cb(uv_signal_t *sig, int signum)
{
    weir_worker_t *w = sig->data;
    const weir_limits_t *lim = &w->conf->limits;
    if (w->draining) return;
    w->draining = 1;
    weir_drain.code = signum == SIGUSR2 ? 1012 : 1001;
    weir_log(WEIR_LOG_INFO, "worker draining", "\"signal\":%d,\"connections\":%llu,\"close_code\":%u,"
             "\"drain_rate\":%llu", signum, (unsigned long long) w->nsessions, weir_drain.code,
             (unsigned long long) lim->drain_rate);
    weir_worker_listen(w, 0);
    uv_timer_stop(&weir_accept_retry);
    if (lim->drain_rate == 0) {
        weir_proxy_shutdown(w, weir_drain.code, SIZE_MAX);
    } else if (weir_proxy_shutdown(w, weir_drain.code, 0) > 0) {
        uint64_t now = uv_now(w->loop);
        weir_drain.per_ms = (double) lim->drain_rate / (double) w->conf->workers / 1000.0;
        weir_drain.credit = 1.0;        /* the first close goes now */
        weir_drain.last = now;
        weir_drain.all_at = now + lim->drain_timeout_ms - WEIR_MIN(lim->close_timeout_ms, lim->drain_timeout_ms / 2);
        weir_worker_pace_cb(&weir_drain.timer);
    }
    if (w->nsessions == 0) {
        weir_io_stop(w->loop);
        return;
    }
    uv_timer_start(&w->drain, weir_worker_drain_cb, lim->drain_timeout_ms, 0);
}

/* Make the TLS contexts CONF's wss:// endpoints need. */
static int
weir_worker_conf_tls(weir_conf_t *conf)
{
    for (size_t a = 0; a < conf->napis; a++) {
        for (size_t v = 0; v < conf->apis[a].nversions; v++) {
            weir_version_t *ver = &conf->apis[a].versions[v];
            weir_endpoint_t *eps[2] = { ver->production, ver->sandbox };
            for (int e = 0; e < 2; e++)
                if (eps[e] && eps[e]->tls && (eps[e]->tls_ctx = weir_tls_client_ctx(eps[e])) == NULL)
                    return WEIR_ERROR;
        }
    }
    return WEIR_OK;
}

static void
weir_worker_log_conf_line(const char *line)
{
    char e[2048];
    weir_log(WEIR_LOG_ERROR, "configuration error", "\"error\":\"%s\"", weir_log_str(e, sizeof(e), line));
}

/*
 * SIGHUP (sent by the master once it validated the new configuration):
 * load it, its TLS contexts and its chains; on any failure keep everything
 * as it was. Listeners stay as they are (changing them needs a restart).
 */
static void
weir_worker_reload(weir_worker_t *w)
{
    weir_conf_t *nc = NULL;
    weir_conf_sink = weir_worker_log_conf_line;
    int rc = weir_conf_load(w->conf->file, &nc);
    weir_conf_sink = NULL;
    if (rc != WEIR_OK) {
        weir_log(WEIR_LOG_ERROR, "reload failed: the running configuration stays", NULL);
        weir_ctl_reloaded(0);
        return;
    }
    nc->workers = w->conf->workers;
    weir_conf_swap_listen(nc, w->conf);
    weir_conf_swap_state(nc, w->conf);      /* the Redis connection stays: Lua is given its state */
    if (weir_worker_conf_tls(nc) != WEIR_OK || weir_lua_reload(nc) != WEIR_OK) {
        weir_conf_swap_state(nc, w->conf);
        weir_conf_swap_listen(nc, w->conf);
        weir_conf_free(nc);
        weir_log(WEIR_LOG_ERROR, "reload failed: the running configuration stays", NULL);
        weir_ctl_reloaded(0);
        return;
    }
    weir_conf_t *old = w->conf;
    w->conf = nc;
    w->max_sessions = (nc->limits.max_connections + (uint64_t) nc->workers - 1) / (uint64_t) nc->workers;
    weir_proxy_reloaded(w, nc);
    if (old->refs == 0) weir_conf_free(old);
    weir_log_open(nc->log_file, nc->log_level);
    weir_log(WEIR_LOG_INFO, "worker reloaded", "\"worker\":%d,\"connections\":%llu", w->id,
             (unsigned long long) w->nsessions);
    weir_ctl_reloaded(1);
}

static void
weir_worker_hup_cb(uv_signal_t *sig, int signum)
{
    WEIR_UNUSED(signum);
    weir_worker_t *w = sig->data;
    if (!w->draining) weir_worker_reload(w);
}

/* SIGUSR1 (sent by the master): open the log file and the analytics files
 * again (logrotate). */
static uv_signal_t weir_sig_usr1;

/* SIGUSR2 (sent by the master, for weir -s drain): drain as on SIGTERM, the
 * clients closed 1012 (restarting: reconnect) instead of 1001. */
static uv_signal_t weir_sig_usr2;

static void
weir_worker_usr1_cb(uv_signal_t *sig, int signum)
{
    WEIR_UNUSED(sig);
    WEIR_UNUSED(signum);
    weir_log_reopen();
    weir_lua_event("reopen");            /* the analytics file sinks */
}

static void
weir_worker_close_handle(uv_handle_t *h, void *arg)
{
    WEIR_UNUSED(arg);
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Release everything the worker holds, so that a sanitizer build reports
 * only real leaks. Sessions still open (drain timeout) are cut. */
static void
weir_worker_cleanup(weir_worker_t *w)
{
    weir_proxy_abort_all(w);
    weir_lua_cancel_io();
    weir_admin_cleanup();
    weir_sync_cleanup();
    w->draining = 0;
    weir_io_flush_closed();
    uv_walk(w->loop, weir_worker_close_handle, NULL);
    uv_run(w->loop, UV_RUN_DEFAULT);
    weir_io_flush_closed();
    uv_loop_close(w->loop);
    weir_io_loop_close();
    weir_analytics_cleanup();
    weir_lua_cleanup();
    weir_bus_cleanup();
    free(w->listed);
    for (size_t i = 0; w->listen_tls != NULL && i < w->conf->nlisten; i++) SSL_CTX_free(w->listen_tls[i]);
    weir_conf_free(w->conf);
    w->conf = NULL;
    free(w->listen_tls);
    free(w->listeners);
    free(w->rbuf);
    free(w->sbuf);
}

static uint64_t
weir_tick_interval(const weir_limits_t *l)
{
    uint64_t v[] = { l->ping_interval_ms, l->ping_timeout_ms, l->idle_timeout_ms, l->handshake_timeout_ms,
                     l->close_timeout_ms, l->send_timeout_ms };
    uint64_t m = 4000;
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        if (v[i] > 0 && v[i] < m) m = v[i];
    m /= 4;
    return WEIR_MAX(m, (uint64_t) 10);
}

int
weir_worker_run(weir_conf_t *conf, int id)
{
    weir_worker_t *w = &weir_worker;
    uv_loop_t loop;

    signal(SIGPIPE, SIG_IGN);
    /* sessions come and go by the thousand: keep freed memory at the top
     * of the heap rather than give it back (brk) and fault it in again on
     * the next handshakes; glibc's default trims above 128 KiB */
    mallopt(M_TRIM_THRESHOLD, WEIR_WORKER_TRIM);
    mallopt(M_TOP_PAD, WEIR_WORKER_TOP_PAD);
    weir_ws_random_reset();
    memset(w, 0, sizeof(*w));
    if (uv_loop_init(&loop) != 0) return 1;
    if (weir_io_loop_init(&loop) != WEIR_OK) {
        uv_loop_close(&loop);
        return 1;
    }
    w->loop = &loop;
    w->conf = conf;
    w->id = id;
    weir_limits_worker(id);
    w->max_sessions = (conf->limits.max_connections + (uint64_t) conf->workers - 1) / (uint64_t) conf->workers;
    w->rbuf = malloc(WEIR_RBUF_ALLOC);
    w->sbuf = malloc(WEIR_SBUF_SIZE);
    w->listen_tls = calloc(conf->nlisten, sizeof(SSL_CTX *));
    w->listeners = calloc(conf->nlisten, sizeof(weir_io_t));
    if (w->rbuf == NULL || w->sbuf == NULL || w->listen_tls == NULL || w->listeners == NULL) goto fail;

    for (size_t i = 0; i < conf->nlisten; i++) {
        weir_listen_t *ls = &conf->listen[i];
        /* this worker's own socket; the others' are closed here (the master
         * holds them for their workers) */
        if (ls->nfds > 0) {
            for (int k = 0; k < ls->nfds; k++)
                if (k != id % ls->nfds) close(ls->fds[k]);
            ls->fd = ls->fds[id % ls->nfds];
            ls->nfds = 0;
        }
        if (ls->tls_cert && (w->listen_tls[i] = weir_tls_server_ctx(ls->tls_cert, ls->tls_key)) == NULL)
            goto fail;
        weir_io_init(&w->listeners[i], ls->fd, (void *) (uintptr_t) i);
    }
    if (weir_worker_conf_tls(conf) != WEIR_OK) goto fail;

    weir_registry_attach(id);
    weir_stats_attach(id);
    weir_bus_init(w);                   /* before the runtime starts: it asks which worker this is */
    if (weir_lua_init(&loop, conf) != WEIR_OK) goto fail;
    weir_proxy_init(w, &weir_lua_policy);
    weir_analytics_init(&loop, weir_lua_event);
    if (weir_sync_init(&loop, conf) != WEIR_OK) goto fail;

    uv_timer_init(&loop, &weir_accept_retry);
    weir_accept_retry.data = w;
    uv_timer_init(&loop, &w->tick);
    w->tick.data = w;
    w->tick_ms = weir_tick_interval(&conf->limits);
    uv_timer_start(&w->tick, weir_worker_tick_cb, w->tick_ms, w->tick_ms);
    uv_timer_init(&loop, &w->drain);
    w->drain.data = w;
    uv_timer_init(&loop, &weir_drain.timer);
    weir_drain.timer.data = w;
    uv_idle_init(&loop, &w->idle);
    w->idle.data = w;
    uv_signal_init(&loop, &w->sig_term);
    w->sig_term.data = w;
    uv_signal_start(&w->sig_term, weir_worker_signal_cb, SIGTERM);
    uv_signal_init(&loop, &w->sig_int);
    w->sig_int.data = w;
    uv_signal_start(&w->sig_int, weir_worker_signal_cb, SIGINT);
    uv_signal_init(&loop, &w->sig_hup);
    w->sig_hup.data = w;
    uv_signal_start(&w->sig_hup, weir_worker_hup_cb, SIGHUP);
    uv_signal_init(&loop, &weir_sig_usr1);
    uv_signal_start(&weir_sig_usr1, weir_worker_usr1_cb, SIGUSR1);
    uv_signal_init(&loop, &weir_sig_usr2);
    weir_sig_usr2.data = w;
    uv_signal_start(&weir_sig_usr2, weir_worker_signal_cb, SIGUSR2);
    sigset_t handled;        /* blocked by the master until now (weir_spawn) */
    sigemptyset(&handled);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGINT);
    sigaddset(&handled, SIGHUP);
    sigaddset(&handled, SIGUSR1);
    sigaddset(&handled, SIGUSR2);
    sigprocmask(SIG_UNBLOCK, &handled, NULL);

    weir_worker_listen(w, 1);
    weir_log(WEIR_LOG_INFO, "worker started", "\"worker\":%d", id);
    weir_io_run(&loop);
    weir_log(WEIR_LOG_INFO, "worker stopped", "\"worker\":%d,\"connections\":%llu", id,
             (unsigned long long) w->nsessions);
    weir_worker_cleanup(w);
    return 0;

fail:
    /* what start-up made so far is released as on a stop (a sanitizer
     * build reports only real leaks); the master logs the exit */
    weir_worker_cleanup(w);
    return 1;
}
