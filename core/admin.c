/*
 * admin.c — what the admin API (lua/weir/admin.lua) asks of the core beyond
 * the registry and the bus: a reload through the master, as `weir -s
 * reload` does it, without blocking the worker's loop.
 *
 * The worker listens on the abstract socket a `weir -s reload` of its own
 * pid would (ctl.c), sends SIGHUP with the ctl value to the master, and
 * reads the report the master sends when the reload is done; every admin
 * request waiting for a reload in this worker gets that same report. Only
 * a connection from the master (its pid, from SO_PEERCRED) is read.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <uv.h>

#include "admin.h"
#include "ctl.h"
#include "log.h"
#include "lua_bridge.h"

#define WEIR_ADMIN_REPORT_MAX 65536
#define WEIR_ADMIN_RELOAD_WAIT_MS 30000

typedef struct {
    uv_loop_t  *loop;
    int         lfd, cfd;             /* listening socket, the master's connection */
    uv_poll_t   lpoll, cpoll;
    uv_timer_t  timer;
    int         lpoll_on, cpoll_on, timer_on;
    char       *buf;
    size_t      len;
    uint64_t   *tokens;               /* admin requests waiting for this reload */
    size_t      ntokens;
} weir_admin_reload_t;

static weir_admin_reload_t *weir_reload;

static void
weir_admin_handle_freed(uv_handle_t *h)
{
    weir_admin_reload_t *r = h->data;
    if (--r->len > 0) return;              /* len counts the handles still closing */
    free(r);
}

/* The reload is over: REPORT (NULL: none came) to every waiting request. */
static void
weir_admin_reload_end(weir_admin_reload_t *r, const char *report)
{
    weir_reload = NULL;
    for (size_t i = 0; i < r->ntokens; i++)
        weir_lua_io_result(r->tokens[i], report != NULL ? 1 : -1,
                           report != NULL ? report : "the master sent no report in time");
    free(r->tokens);
    free(r->buf);
    if (r->lfd >= 0) close(r->lfd);
    if (r->cfd >= 0) close(r->cfd);
    r->len = 0;
    uv_handle_t *hs[3] = { r->lpoll_on ? (uv_handle_t *) &r->lpoll : NULL,
                           r->cpoll_on ? (uv_handle_t *) &r->cpoll : NULL,
                           r->timer_on ? (uv_handle_t *) &r->timer : NULL };
    for (int i = 0; i < 3; i++) if (hs[i] != NULL) r->len++;
    if (r->len == 0) {
        free(r);
        return;
    }
    for (int i = 0; i < 3; i++) {
        if (hs[i] == NULL) continue;
        hs[i]->data = r;
        uv_close(hs[i], weir_admin_handle_freed);
    }
}

static void
weir_admin_read_cb(uv_poll_t *h, int status, int events)
{
    weir_admin_reload_t *r = h->data;
    WEIR_UNUSED(events);
    if (status < 0) {
        weir_admin_reload_end(r, NULL);
        return;
    }
    for (;;) {
        if (r->len + 1 >= WEIR_ADMIN_REPORT_MAX) break;
        ssize_t n = read(r->cfd, r->buf + r->len, WEIR_ADMIN_REPORT_MAX - 1 - r->len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) break;
        r->len += (size_t) n;
    }
    r->buf[r->len] = '\0';
    weir_admin_reload_end(r, r->buf);
}

static void
weir_admin_accept_cb(uv_poll_t *h, int status, int events)
{
    weir_admin_reload_t *r = h->data;
    WEIR_UNUSED(events);
    if (status < 0 || r->cfd >= 0) return;
    int c = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c < 0) return;
    struct ucred cred;
    socklen_t cl = sizeof(cred);
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 || cred.pid != getppid()) {
        close(c);                           /* not the master */
        return;
    }
    r->cfd = c;
    uv_poll_init(r->loop, &r->cpoll, c);
    r->cpoll.data = r;
    r->cpoll_on = 1;
    uv_poll_start(&r->cpoll, UV_READABLE, weir_admin_read_cb);
}

static void
weir_admin_timeout_cb(uv_timer_t *t)
{
    weir_admin_reload_end(t->data, NULL);
}

const char *
weir_ffi_version(void)
{
    return WEIR_VERSION;
}

void
weir_admin_cleanup(void)
{
    if (weir_reload == NULL) return;
    weir_reload->ntokens = 0;              /* the worker exits: nobody is told */
    weir_admin_reload_end(weir_reload, NULL);
}

uint64_t
weir_ffi_reload(void)
{
    weir_admin_reload_t *r = weir_reload;
    uint64_t token = weir_lua_token();
    if (r == NULL) {
        struct sockaddr_un a;
        socklen_t al = weir_ctl_addr(&a, getpid());
        union sigval v = { .sival_int = WEIR_CTL_MAGIC };
        r = calloc(1, sizeof(*r));
        if (r == NULL) return 0;
        r->loop = weir_lua_loop_of();
        r->cfd = -1;
        r->buf = malloc(WEIR_ADMIN_REPORT_MAX);
        r->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (r->buf == NULL || r->lfd < 0 || bind(r->lfd, (struct sockaddr *) &a, al) != 0 || listen(r->lfd, 4) != 0
            || sigqueue(getppid(), SIGHUP, v) != 0) {
            weir_log(WEIR_LOG_ERROR, "cannot ask the master for a reload", "\"error\":\"%s\"", strerror(errno));
            if (r->lfd >= 0) close(r->lfd);
            free(r->buf);
            free(r);
            return 0;
        }
        uv_poll_init(r->loop, &r->lpoll, r->lfd);
        r->lpoll.data = r;
        r->lpoll_on = 1;
        uv_poll_start(&r->lpoll, UV_READABLE, weir_admin_accept_cb);
        uv_timer_init(r->loop, &r->timer);
        r->timer.data = r;
        r->timer_on = 1;
        uv_timer_start(&r->timer, weir_admin_timeout_cb, WEIR_ADMIN_RELOAD_WAIT_MS, 0);
        weir_reload = r;
    }
    uint64_t *t = realloc(r->tokens, (r->ntokens + 1) * sizeof(*t));
    if (t == NULL) return 0;
    r->tokens = t;
    r->tokens[r->ntokens++] = token;
    return token;
}
