/*
 * io.c — a worker's own epoll set for its sessions' sockets, libuv nested
 * in it (see io.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "io.h"
#include "log.h"
#include "weir.h"

#define WEIR_IO_BATCH 256                /* events taken from the set per epoll_wait */

static int        weir_io_fd = -1;       /* the set */
static int        weir_io_stopping;
static char       weir_io_uv_mark;       /* the data of libuv's descriptor in the set */
static weir_io_t *weir_io_closed;        /* closes to report at the end of the turn */

int
weir_io_loop_init(uv_loop_t *loop)
{
    weir_io_fd = epoll_create1(EPOLL_CLOEXEC);
    if (weir_io_fd < 0) return WEIR_ERROR;
    struct epoll_event e = { .events = EPOLLIN, .data.ptr = &weir_io_uv_mark };
    if (epoll_ctl(weir_io_fd, EPOLL_CTL_ADD, uv_backend_fd(loop), &e) != 0) {
        close(weir_io_fd);
        weir_io_fd = -1;
        return WEIR_ERROR;
    }
    weir_io_stopping = 0;
    return WEIR_OK;
}

void
weir_io_loop_close(void)
{
    if (weir_io_fd >= 0) close(weir_io_fd);
    weir_io_fd = -1;
}

void
weir_io_stop(uv_loop_t *loop)
{
    /* not uv_stop: a stop flag left set would make the cleanup's uv_run
     * return before the handles it closes are closed (uv_loop_close then
     * fails and the loop leaks); a uv_run of ours returns after its one turn */
    WEIR_UNUSED(loop);
    weir_io_stopping = 1;
}

void
weir_io_init(weir_io_t *io, int fd, void *data)
{
    io->fd = fd;
    io->events = 0;
    io->cb = NULL;
    io->data = data;
    io->close_cb = NULL;
    io->next_closed = NULL;
    io->closing = 0;
    io->err = 0;
}

static uint32_t
weir_io_mask(int events)
{
    return ((events & UV_READABLE) ? EPOLLIN : 0) | ((events & UV_WRITABLE) ? EPOLLOUT : 0);
}

void
weir_io_start(weir_io_t *io, int events, weir_io_cb cb)
{
    events &= UV_READABLE | UV_WRITABLE;
    io->cb = cb;
    if (io->closing || events == io->events) return;
    /* a descriptor with no interest leaves the set: the kernel would still
     * report its hang-up and error, again and again */
    struct epoll_event e = { .events = weir_io_mask(events), .data.ptr = io };
    int op = events == 0 ? EPOLL_CTL_DEL : io->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (epoll_ctl(weir_io_fd, op, io->fd, &e) != 0) {
        weir_log(WEIR_LOG_ERROR, "epoll_ctl failed", "\"fd\":%d,\"op\":%d,\"errno\":%d", io->fd, op, errno);
        return;
    }
    io->events = events;
}

void
weir_io_close(weir_io_t *io, void (*cb)(weir_io_t *io))
{
    /* the socket's close() takes it out of the set */
    io->closing = 1;
    io->close_cb = cb;
    io->next_closed = weir_io_closed;
    weir_io_closed = io;
}

void
weir_io_flush_closed(void)
{
    while (weir_io_closed != NULL) {
        weir_io_t *io = weir_io_closed;
        weir_io_closed = io->next_closed;
        io->next_closed = NULL;
        if (io->close_cb) io->close_cb(io);
    }
}

/* Has LOOP work queued that its next uv_run would do without a ready
 * descriptor: a handle started or stopped (the watcher queue, applied at
 * its next poll), a close, a pending callback, an idle handle, a due timer? */
static int
weir_io_uv_due(uv_loop_t *loop)
{
    if (loop->watcher_queue[0] != (void *) &loop->watcher_queue) return 1;
    return uv_backend_timeout(loop) == 0;
}

void
weir_io_run(uv_loop_t *loop)
{
    struct epoll_event ev[WEIR_IO_BATCH];

    uv_run(loop, UV_RUN_NOWAIT);        /* what was started before the loop */
    while (!weir_io_stopping) {
        int timeout = weir_io_uv_due(loop) ? 0 : uv_backend_timeout(loop);
        int n = epoll_wait(weir_io_fd, ev, WEIR_IO_BATCH, timeout);
        if (n < 0) {
            if (errno != EINTR) {
                weir_log(WEIR_LOG_ERROR, "epoll_wait failed", "\"errno\":%d", errno);
                break;
            }
            n = 0;
        }
        uv_update_time(loop);
        int uv_ready = 0;
        for (int i = 0; i < n; i++) {
            if (ev[i].data.ptr == &weir_io_uv_mark) {
                uv_ready = 1;
                continue;
            }
            weir_io_t *io = ev[i].data.ptr;
            if (io->closing || io->events == 0) continue;
            uint32_t e = ev[i].events;
            int events = ((e & EPOLLIN) ? UV_READABLE : 0) | ((e & EPOLLOUT) ? UV_WRITABLE : 0);
            io->err = (e & (EPOLLERR | EPOLLHUP)) != 0;
            if (io->err) events |= io->events;    /* what it waits for will tell */
            events &= io->events;
            if (events != 0) io->cb(io, events);
        }
        weir_io_flush_closed();
        if (uv_ready || weir_io_uv_due(loop)) uv_run(loop, UV_RUN_NOWAIT);
        weir_io_flush_closed();
    }
    weir_io_stopping = 0;
}
