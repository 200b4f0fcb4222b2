/*
 * wsecho — the benchmark's WebSocket echo backend.
 *
 * Accepts RFC 6455 upgrades on one address, then echoes every data frame
 * back with the same opcode, FIN bit and payload (unmasked, as a server
 * must), answers pings with pongs, ignores pongs, and answers a close with a
 * close carrying the same payload before closing the TCP connection itself.
 * A client frame that is not masked, or has RSV bits set, is answered with
 * close 1002.
 *
 * One epoll loop per thread; with -t N each thread has its own listening
 * socket bound with SO_REUSEPORT, so the kernel spreads connections.
 * A connection that does not read its echoes stops being read once
 * WSECHO_OUT_HIGH bytes are queued for it, and is read again below
 * WSECHO_OUT_LOW: memory stays bounded.
 *
 * Usage: wsecho [-a ADDR] [-p PORT] [-t THREADS] [-m MAX_FRAME] [-q]
 */
#include "wsbench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define WSECHO_MAX_HEAD   16384          /* bytes of handshake request */
#define WSECHO_READ_MIN   16384          /* free bytes offered to each read() */
#define WSECHO_OUT_HIGH   (4u << 20)     /* stop reading above this backlog */
#define WSECHO_OUT_LOW    (1u << 20)     /* resume below it */
#define WSECHO_EVENTS     256

enum { ST_HANDSHAKE, ST_OPEN, ST_CLOSING };

typedef struct {
    int       fd;
    int       state;                     /* ST_* */
    uint32_t  events;                    /* epoll mask currently registered */
    int       upgraded;                  /* 101 queued: free the buffers once sent */
    wb_buf_t  in;                        /* received, not yet processed */
    wb_buf_t  out;                       /* queued for write() */
} wsecho_conn_t;

typedef struct {
    pthread_t tid;
    int       ep;                        /* epoll fd */
    int       lfd;                       /* listening socket */
} wsecho_worker_t;

static const char *opt_addr = "127.0.0.1";
static int         opt_port = 9000;
static int         opt_threads = 1;
static uint64_t    opt_max_frame = 64u << 20;
static int         opt_quiet = 0;

static int wsecho_listen(void)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)opt_port);
    if (inet_pton(AF_INET, opt_addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "wsecho: bad address %s\n", opt_addr);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0
        || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0
        || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0
        || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0
        || listen(fd, 4096) < 0) {
        fprintf(stderr, "wsecho: listen %s:%d: %s\n", opt_addr, opt_port,
                strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void wsecho_set_events(wsecho_worker_t *w, wsecho_conn_t *c, uint32_t ev)
{
    if (ev == c->events)
        return;
    struct epoll_event e = { .events = ev, .data.ptr = c };
    epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

static void wsecho_free(wsecho_conn_t *c)
{
    close(c->fd);                        /* also removes it from epoll */
    wb_buf_free(&c->in);
    wb_buf_free(&c->out);
    free(c);
}

/* Queue a frame (server side, unmasked). Returns 0, or -1 when out of memory. */
static int wsecho_queue(wsecho_conn_t *c, int fin, int opcode,
                        const unsigned char *payload, uint64_t len)
{
    unsigned char *p = wb_buf_reserve(&c->out, WB_FRAME_HDR_MAX + len);
    if (p == NULL)
        return -1;
    size_t hl = wb_frame_header(p, fin, opcode, len, NULL);
    if (len)
        memcpy(p + hl, payload, len);
    c->out.len += hl + len;
    return 0;
}

static void wsecho_queue_close(wsecho_conn_t *c, unsigned code)
{
    unsigned char b[2] = { (unsigned char)(code >> 8), (unsigned char)code };
    wsecho_queue(c, 1, WB_OP_CLOSE, b, 2);
    c->state = ST_CLOSING;
}

/*
 * Answer the upgrade request at the front of c->in. Returns 1 when done
 * (101 queued, request consumed), 0 when the request is incomplete, -1 when
 * the connection must be dropped (an HTTP error has been queued, state is
 * ST_CLOSING).
 */
static int wsecho_handshake(wsecho_conn_t *c)
{
    const char *head = (const char *)c->in.data + c->in.off;
    const char *end = memmem(head, c->in.len, "\r\n\r\n", 4);
    if (end == NULL) {
        if (c->in.len > WSECHO_MAX_HEAD)
            goto bad;
        return 0;
    }
    size_t hlen = (size_t)(end - head) + 4;
    size_t klen;
    const char *key = wb_http_header(head, hlen, "Sec-WebSocket-Key", &klen);
    if (key == NULL || klen == 0 || strncmp(head, "GET ", 4) != 0)
        goto bad;
    char accept[29];
    wb_accept_key(key, klen, accept);
    char resp[192];
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    unsigned char *p = wb_buf_reserve(&c->out, (size_t)n);
    if (p == NULL)
        return -1;
    memcpy(p, resp, (size_t)n);
    c->out.len += (size_t)n;
    wb_buf_consume(&c->in, hlen);
    c->state = ST_OPEN;
    c->upgraded = 1;
    return 1;

bad:;
    static const char r400[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                               "Connection: close\r\n\r\n";
    p = wb_buf_reserve(&c->out, sizeof(r400) - 1);
    if (p != NULL) {
        memcpy(p, r400, sizeof(r400) - 1);
        c->out.len += sizeof(r400) - 1;
    }
    c->state = ST_CLOSING;
    return -1;
}

/*
 * Echo every complete frame at the front of c->in. Stops at the first
 * incomplete frame (reserving room for it) or when the connection starts
 * closing.
 */
static void wsecho_frames(wsecho_conn_t *c)
{
    while (c->state == ST_OPEN && c->in.len > 0) {
        unsigned char *p = c->in.data + c->in.off;
        wb_frame_t f;
        int hl = wb_frame_parse(p, c->in.len, &f);
        if (hl == 0)
            return;
        if (hl < 0 || !f.masked || f.rsv || (f.opcode & 7) > 2) {
            wsecho_queue_close(c, 1002);
            return;
        }
        if (f.len > opt_max_frame) {
            wsecho_queue_close(c, 1009);
            return;
        }
        size_t need = (size_t)hl + (size_t)f.len;
        if (c->in.len < need) {
            wb_buf_reserve(&c->in, need - c->in.len);
            return;
        }
        unsigned char *pl = p + hl;
        wb_mask(pl, pl, (size_t)f.len, f.mask, 0);
        switch (f.opcode) {
        case WB_OP_CONT:
        case WB_OP_TEXT:
        case WB_OP_BINARY:
            wsecho_queue(c, f.fin, f.opcode, pl, f.len);
            break;
        case WB_OP_PING:
            wsecho_queue(c, 1, WB_OP_PONG, pl, f.len);
            break;
        case WB_OP_PONG:
            break;
        case WB_OP_CLOSE:
            wsecho_queue(c, 1, WB_OP_CLOSE, pl, f.len);
            c->state = ST_CLOSING;
            break;
        default:
            wsecho_queue_close(c, 1002);
            break;
        }
        wb_buf_consume(&c->in, need);
    }
}

/* Write what is queued. Returns 0, or -1 when the connection is gone. */
static int wsecho_flush(wsecho_worker_t *w, wsecho_conn_t *c)
{
    while (c->out.len > 0) {
        ssize_t n = write(c->fd, c->out.data + c->out.off, c->out.len);
        if (n > 0) {
            wb_buf_consume(&c->out, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        return -1;
    }
    if (c->out.len == 0 && c->state == ST_CLOSING)
        return -1;                        /* all said: close the TCP connection */
    if (c->upgraded && c->out.len == 0) {
        /* an idle connection should cost little: drop the handshake's buffers */
        c->upgraded = 0;
        wb_buf_free(&c->out);
        if (c->in.len == 0)
            wb_buf_free(&c->in);
    }
    uint32_t ev = c->events;
    if (c->out.len > 0)
        ev |= EPOLLOUT;
    else
        ev &= ~(uint32_t)EPOLLOUT;
    if (c->out.len > WSECHO_OUT_HIGH)
        ev &= ~(uint32_t)EPOLLIN;
    else if (c->out.len < WSECHO_OUT_LOW && c->state != ST_CLOSING)
        ev |= EPOLLIN;
    wsecho_set_events(w, c, ev);
    return 0;
}

/* Read and process. Returns 0, or -1 when the connection is gone. */
static int wsecho_read(wsecho_conn_t *c)
{
    unsigned char *p = wb_buf_reserve(&c->in, WSECHO_READ_MIN);
    if (p == NULL)
        return -1;
    size_t room = c->in.cap - c->in.off - c->in.len;
    ssize_t n = read(c->fd, p, room);
    if (n == 0)
        return -1;
    if (n < 0)
        return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
    c->in.len += (size_t)n;
    if (c->state == ST_HANDSHAKE && wsecho_handshake(c) <= 0)
        return 0;
    wsecho_frames(c);
    return 0;
}

static void wsecho_accept(wsecho_worker_t *w)
{
    for (int i = 0; i < 64; i++) {
        int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        wsecho_conn_t *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            return;
        }
        c->fd = fd;
        c->state = ST_HANDSHAKE;
        c->events = EPOLLIN;
        struct epoll_event e = { .events = EPOLLIN, .data.ptr = c };
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &e) < 0) {
            close(fd);
            free(c);
        }
    }
}

static void *wsecho_run(void *arg)
{
    wsecho_worker_t *w = arg;
    struct epoll_event ev[WSECHO_EVENTS];
    for (;;) {
        int n = epoll_wait(w->ep, ev, WSECHO_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            wsecho_conn_t *c = ev[i].data.ptr;
            if (c == NULL) {
                wsecho_accept(w);
                continue;
            }
            int gone = 0;
            if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                gone = wsecho_read(c) < 0;
            if (!gone)
                gone = wsecho_flush(w, c) < 0;
            if (gone)
                wsecho_free(c);
        }
    }
    return NULL;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: wsecho [-a ADDR] [-p PORT] [-t THREADS] [-m MAX_FRAME] [-q]\n"
            "  -a ADDR      IPv4 address to listen on (127.0.0.1)\n"
            "  -p PORT      port (9000)\n"
            "  -t THREADS   event loops, each with its own SO_REUSEPORT socket (1)\n"
            "  -m BYTES     largest frame accepted, else close 1009 (64 MiB)\n"
            "  -q           quiet\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "a:p:t:m:qh")) != -1) {
        switch (opt) {
        case 'a': opt_addr = optarg; break;
        case 'p': opt_port = atoi(optarg); break;
        case 't': opt_threads = atoi(optarg); break;
        case 'm': opt_max_frame = strtoull(optarg, NULL, 10); break;
        case 'q': opt_quiet = 1; break;
        default: usage();
        }
    }
    if (opt_port <= 0 || opt_port > 65535 || opt_threads < 1 || opt_threads > 64)
        usage();
    signal(SIGPIPE, SIG_IGN);

    wsecho_worker_t *ws = calloc((size_t)opt_threads, sizeof(*ws));
    for (int i = 0; i < opt_threads; i++) {
        ws[i].lfd = wsecho_listen();
        ws[i].ep = epoll_create1(EPOLL_CLOEXEC);
        if (ws[i].lfd < 0 || ws[i].ep < 0)
            return 1;
        struct epoll_event e = { .events = EPOLLIN, .data.ptr = NULL };
        epoll_ctl(ws[i].ep, EPOLL_CTL_ADD, ws[i].lfd, &e);
    }
    if (!opt_quiet)
        fprintf(stderr, "wsecho: listening on %s:%d, %d thread(s), pid %d\n",
                opt_addr, opt_port, opt_threads, (int)getpid());
    for (int i = 1; i < opt_threads; i++)
        pthread_create(&ws[i].tid, NULL, wsecho_run, &ws[i]);
    wsecho_run(&ws[0]);
    return 0;
}
