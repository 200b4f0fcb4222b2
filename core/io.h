/*
 * io.h — a worker's own epoll set for its sessions' sockets, with the
 * libuv loop nested in it.
 *
 * uv_poll costs a proxied handshake twelve epoll_ctl calls: libuv probes
 * every descriptor with an ADD and a DEL when its handle is made, removes
 * it (DEL) before every start, and a leg's interest changes by DEL and ADD.
 * Here a socket is added once, its interest changed with one MOD, and its
 * close() removes it: three calls a handshake at most, two when the backend's
 * connect() is made at once (a local backend: weir_backend_connect sends the
 * request straight away and arms the socket for its answer only).
 *
 * The worker's loop is weir_io_run: one epoll_wait on this set, which also
 * holds libuv's own epoll descriptor; libuv runs (uv_run, UV_RUN_NOWAIT)
 * only when its descriptor is ready, a timer is due, or it has work queued
 * (a handle started or closed), so a message relayed costs one epoll_wait,
 * as it did under uv_run. Level-triggered, like uv_poll: the callbacks see
 * the same events (UV_READABLE, UV_WRITABLE) uv_poll would give.
 *
 * One thread: every call is the worker's.
 */
#ifndef WEIR_IO_H
#define WEIR_IO_H

#include <uv.h>

typedef struct weir_io_s weir_io_t;
typedef void (*weir_io_cb)(weir_io_t *io, int events);

struct weir_io_s {
    int         fd;
    int         events;                 /* UV_READABLE | UV_WRITABLE armed, 0: not in the set */
    weir_io_cb  cb;
    void       *data;
    void      (*close_cb)(weir_io_t *io);
    weir_io_t  *next_closed;            /* the loop's list of closes to report */
    unsigned    closing:1;              /* weir_io_close was called: no more callbacks */
    unsigned    err:1;                  /* the event being reported came with EPOLLERR or EPOLLHUP */
};

/* Make LOOP's epoll set (holding libuv's own descriptor). WEIR_OK or WEIR_ERROR. */
int  weir_io_loop_init(uv_loop_t *loop);

/* Run LOOP until weir_io_stop. */
void weir_io_run(uv_loop_t *loop);

/* Make weir_io_run return after the current turn. */
void weir_io_stop(uv_loop_t *loop);

/* Release the set (after weir_io_run returned and every io was closed). */
void weir_io_loop_close(void);

/* IO watches FD (nothing is armed yet). */
void weir_io_init(weir_io_t *io, int fd, void *data);

/* Call CB with the events of EVENTS (UV_READABLE, UV_WRITABLE) FD is ready
 * for, as long as it is: 0 stops watching. */
void weir_io_start(weir_io_t *io, int events, weir_io_cb cb);

/* IO's socket is about to be closed: no callback from now on; CB(IO) runs
 * at the end of the loop's turn, when no event of this turn can name IO. */
void weir_io_close(weir_io_t *io, void (*cb)(weir_io_t *io));

/* Report every pending close now (the worker's cleanup, outside the loop). */
void weir_io_flush_closed(void);

#endif
