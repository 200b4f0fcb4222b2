/*
 * bus.c — commands between the workers of one host (see bus.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "bus.h"
#include "conn.h"
#include "log.h"
#include "lua_bridge.h"
#include "registry.h"
#include "ws.h"

#define WEIR_BUS_MAGIC 0x77627573u    /* "wbus" */
#define WEIR_BUS_REPLY 0x100

typedef struct {
    uint32_t magic;
    uint16_t kind;                /* WEIR_BUS_* or WEIR_BUS_REPLY */
    uint16_t from;                /* the sender's worker index */
    uint64_t token;
    uint32_t count;               /* targets that follow (a reply: connections reached) */
    uint16_t code;
    uint8_t  opcode;
    uint8_t  pad;
    uint32_t len;                 /* payload bytes after the targets */
    uint32_t pad2;
} weir_bus_head_t;

typedef struct {
    uint64_t n;
    uint32_t slot;
    uint32_t pad;
} weir_bus_target_t;

typedef struct weir_bus_wait_s weir_bus_wait_t;
struct weir_bus_wait_s {
    uint64_t         token;
    uint64_t         deadline;    /* loop time */
    weir_bus_wait_t *next;
};

static weir_worker_t   *weir_bus_w;
static int              weir_bus_fd = -1;
static uv_poll_t        weir_bus_poll;
static uv_timer_t       weir_bus_timer;
static weir_bus_wait_t *weir_bus_waits;
static uint8_t         *weir_bus_buf;

/* The abstract address of WORKER's command socket, from the registry
 * (each worker that starts binds a random name and publishes it there, so
 * that no process can take the name before it). Returns its length, 0 when
 * WORKER has none. */
static socklen_t
weir_bus_addr(struct sockaddr_un *a, int worker)
{
    char name[WEIR_REG_BUS_NAME];
    if (weir_registry_bus(worker, name, sizeof(name)) != WEIR_OK) return 0;
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "%s", name);
    return (socklen_t) (offsetof(struct sockaddr_un, sun_path) + 1 + (size_t) n);
}

/* Is PID a worker of this weir (run by the same user, checked by the caller)? */
static int
weir_bus_sibling(pid_t pid)
{
    weir_reg_status_t st;
    weir_registry_status(&st);
    for (int i = 0; i < st.nworkers; i++)
        if (pid > 0 && weir_registry_pid(i) == pid) return 1;
    return 0;
}

/* Do ACTION to the targets T (COUNT of them) held by this worker. */
static uint32_t
weir_bus_apply(int action, const weir_bus_target_t *t, uint32_t count, int code, int opcode, const char *p,
               size_t len)
{
    uint32_t done = 0;
    const char *problem = NULL, *message = NULL;
    if (action == WEIR_BUS_RECHECK) {
        weir_lua_event("recheck");
        return 0;
    }
    if (action == WEIR_BUS_CLOSE) {
        const char *nul = memchr(p, '\0', len);
        if (nul == NULL || memchr(nul + 1, '\0', len - (size_t) (nul + 1 - p)) == NULL) return 0;
        problem = p;
        message = nul + 1;
    }
    for (uint32_t i = 0; i < count; i++) {
        weir_session_t *s = weir_proxy_listed(weir_bus_w, (int32_t) t[i].slot, t[i].n);
        if (s == NULL) continue;
        if (action == WEIR_BUS_CLOSE) {
            weir_conn_close(s, code, message, *problem ? problem : NULL, message);
            done++;
        } else if (weir_conn_send_to(s, action == WEIR_BUS_SEND_BACKEND, opcode, (const uint8_t *) p, len)
                   == WEIR_OK) {
            done++;
        }
    }
    return done;
}

static void
weir_bus_reply(int to, uint64_t token, uint32_t count)
{
    struct sockaddr_un a;
    socklen_t al = weir_bus_addr(&a, to);
    weir_bus_head_t h = { .magic = WEIR_BUS_MAGIC, .kind = WEIR_BUS_REPLY, .from = (uint16_t) weir_bus_w->id,
                          .token = token, .count = count };
    if (al == 0 || sendto(weir_bus_fd, &h, sizeof(h), MSG_DONTWAIT, (struct sockaddr *) &a, al) < 0)
        weir_log(WEIR_LOG_WARN, "cannot answer another worker", "\"worker\":%d,\"error\":\"%s\"", to,
                 strerror(errno));
}

static void
weir_bus_answered(uint64_t token, uint32_t count)
{
    for (weir_bus_wait_t **pp = &weir_bus_waits; *pp != NULL; pp = &(*pp)->next) {
        weir_bus_wait_t *wt = *pp;
        if (wt->token != token) continue;
        *pp = wt->next;
        free(wt);
        weir_lua_io_result(token, (double) count, NULL);
        return;
    }
}

static void
weir_bus_read_cb(uv_poll_t *h, int status, int events)
{
    WEIR_UNUSED(h);
    WEIR_UNUSED(events);
    if (status < 0) return;
    for (int k = 0; k < 64; k++) {
        struct iovec iov = { weir_bus_buf, WEIR_BUS_MAX };
        union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(struct ucred))]; } cm;
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &cm, .msg_controllen = sizeof(cm) };
        ssize_t n = recvmsg(weir_bus_fd, &msg, MSG_DONTWAIT);
        if (n < 0) return;
        struct ucred *cred = NULL;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) cred = (struct ucred *) CMSG_DATA(c);
        if (cred == NULL || cred->uid != geteuid() || !weir_bus_sibling(cred->pid)) {
            weir_log(WEIR_LOG_WARN, "command from a process that is no worker of this weir ignored",
                     "\"pid\":%d", cred ? (int) cred->pid : 0);
            continue;
        }
        weir_bus_head_t hd;
        if ((size_t) n < sizeof(hd)) continue;
        memcpy(&hd, weir_bus_buf, sizeof(hd));
        if (hd.magic != WEIR_BUS_MAGIC) continue;
        if (hd.kind == WEIR_BUS_REPLY) {
            weir_bus_answered(hd.token, hd.count);
            continue;
        }
        size_t tl = (size_t) hd.count * sizeof(weir_bus_target_t);
        if ((size_t) n != sizeof(hd) + tl + hd.len) continue;
        weir_bus_target_t *t = malloc(tl ? tl : 1);
        if (t == NULL) continue;
        memcpy(t, weir_bus_buf + sizeof(hd), tl);
        uint32_t done = weir_bus_apply(hd.kind, t, hd.count, hd.code, hd.opcode,
                                       (const char *) weir_bus_buf + sizeof(hd) + tl, hd.len);
        free(t);
        weir_bus_reply(hd.from, hd.token, done);
    }
}

static void
weir_bus_timer_cb(uv_timer_t *t)
{
    uint64_t now = uv_now(t->loop);
    for (weir_bus_wait_t **pp = &weir_bus_waits; *pp != NULL;) {
        weir_bus_wait_t *wt = *pp;
        if (wt->deadline > now) {
            pp = &wt->next;
            continue;
        }
        *pp = wt->next;
        uint64_t token = wt->token;
        free(wt);
        weir_lua_io_result(token, -1, "the worker holding the connection did not answer");
        pp = &weir_bus_waits;          /* the list may have changed meanwhile */
    }
    if (weir_bus_waits == NULL) uv_timer_stop(&weir_bus_timer);
}

int
weir_bus_init(weir_worker_t *w)
{
    struct sockaddr_un a;
    int one = 1, size = 4 * 1024 * 1024;

    weir_bus_w = w;
    weir_bus_buf = malloc(WEIR_BUS_MAX);
    weir_bus_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (weir_bus_buf == NULL || weir_bus_fd < 0) goto failed;
    uint8_t rnd[12];
    char name[WEIR_REG_BUS_NAME];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) goto failed;
    int nl = snprintf(name, sizeof(name), "weir-bus-%d-", w->id);
    for (size_t i = 0; i < sizeof(rnd); i++) nl += snprintf(name + nl, sizeof(name) - (size_t) nl, "%02x", rnd[i]);
    memset(&a, 0, sizeof(a));
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path + 1, name, (size_t) nl);
    socklen_t al = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + 1 + (size_t) nl);
    setsockopt(weir_bus_fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one));
    if (setsockopt(weir_bus_fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) != 0)
        setsockopt(weir_bus_fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    if (setsockopt(weir_bus_fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) != 0)
        setsockopt(weir_bus_fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    if (bind(weir_bus_fd, (struct sockaddr *) &a, al) != 0) goto failed;
    weir_registry_set_bus(w->id, name);
    uv_poll_init(w->loop, &weir_bus_poll, weir_bus_fd);
    uv_poll_start(&weir_bus_poll, UV_READABLE, weir_bus_read_cb);
    uv_timer_init(w->loop, &weir_bus_timer);
    return WEIR_OK;

failed:
    weir_log(WEIR_LOG_ERROR, "cannot open the channel to the other workers", "\"worker\":%d,\"error\":\"%s\"",
             w->id, strerror(errno));
    if (weir_bus_fd >= 0) close(weir_bus_fd);
    weir_bus_fd = -1;
    return WEIR_ERROR;
}

void
weir_bus_cleanup(void)
{
    while (weir_bus_waits != NULL) {
        weir_bus_wait_t *wt = weir_bus_waits;
        weir_bus_waits = wt->next;
        free(wt);
    }
    if (weir_bus_fd >= 0) close(weir_bus_fd);      /* its handles were closed with the loop's */
    weir_bus_fd = -1;
    free(weir_bus_buf);
    weir_bus_buf = NULL;
}

int
weir_ffi_worker(void)
{
    return weir_bus_w ? weir_bus_w->id : -1;
}

double
weir_ffi_conn_act(int worker, int action, const uint64_t *ns, const uint32_t *slots, uint32_t count, int code,
                  int opcode, const char *p, size_t len, uint64_t *token)
{
    size_t tl = (size_t) count * sizeof(weir_bus_target_t);
    if (weir_bus_w == NULL || action < WEIR_BUS_SEND_CLIENT || action > WEIR_BUS_RECHECK) return -1;
    if (sizeof(weir_bus_head_t) + tl + len > WEIR_BUS_MAX) return -1;
    weir_bus_target_t *t = calloc(count ? count : 1, sizeof(*t));
    if (t == NULL) return -1;
    for (uint32_t i = 0; i < count; i++) {
        t[i].n = ns[i];
        t[i].slot = slots[i];
    }
    opcode = opcode == WEIR_WS_BINARY ? WEIR_WS_BINARY : WEIR_WS_TEXT;
    if (worker == weir_bus_w->id) {
        if (action == WEIR_BUS_RECHECK) {             /* never back into the engine from an FFI call */
            free(t);
            return -1;
        }
        uint32_t done = weir_bus_apply(action, t, count, code, opcode, p, len);
        free(t);
        return done;
    }
    weir_bus_head_t h = { .magic = WEIR_BUS_MAGIC, .kind = (uint16_t) action, .from = (uint16_t) weir_bus_w->id,
                          .token = weir_lua_token(), .count = count, .code = (uint16_t) code,
                          .opcode = (uint8_t) opcode, .len = (uint32_t) len };
    struct sockaddr_un a;
    socklen_t al = weir_bus_addr(&a, worker);
    struct iovec iov[3] = { { &h, sizeof(h) }, { t, tl }, { (void *) p, len } };
    struct msghdr msg = { .msg_name = &a, .msg_namelen = al, .msg_iov = iov, .msg_iovlen = 3 };
    ssize_t n = weir_bus_fd >= 0 && al > 0 ? sendmsg(weir_bus_fd, &msg, MSG_DONTWAIT) : -1;
    free(t);
    if (n < 0) return -1;
    weir_bus_wait_t *wt = calloc(1, sizeof(*wt));
    if (wt == NULL) return -1;
    wt->token = h.token;
    wt->deadline = uv_now(weir_bus_w->loop) + WEIR_BUS_TIMEOUT_MS;
    wt->next = weir_bus_waits;
    weir_bus_waits = wt;
    if (!uv_is_active((uv_handle_t *) &weir_bus_timer)) uv_timer_start(&weir_bus_timer, weir_bus_timer_cb, 100, 100);
    *token = h.token;
    return -2;
}
