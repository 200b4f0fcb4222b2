/*
 * proxy.h — a worker's sessions as the worker sees them: the state it
 * shares with them and what it asks of them (accept, tick, shutdown,
 * reload, abort).
 *
 * A session is one client leg and one backend leg, the handshake on both
 * and the frame relay between them: leg.c, handshake.c, relay.c and
 * session.c, which share session_int.h. The policy engine sees a session
 * through conn.h.
 */
#ifndef WEIR_PROXY_H
#define WEIR_PROXY_H

#include <openssl/ssl.h>
#include <uv.h>

#include "conf.h"
#include "conn.h"
#include "io.h"
#include "ws.h"

#define WEIR_RBUF_SIZE  (128 * 1024)     /* bytes read per call */
#define WEIR_STASH_SIZE (WEIR_WS_MAX_HDR + WEIR_WS_MAX_CONTROL + 1)
/* the read buffer: a stash and a read, or a message cut by a read and the read behind it */
#define WEIR_RBUF_ALLOC (WEIR_STASH_SIZE + 2 * WEIR_RBUF_SIZE)
#define WEIR_SBUF_SIZE  (WEIR_WS_MAX_HDR + WEIR_RBUF_SIZE)    /* a message of weir's, framed */
#define WEIR_BATCH_COPY (16 * 1024)      /* a message of weir's up to this size waits for the read's one write */

typedef struct weir_worker_s  weir_worker_t;
typedef struct weir_leg_s     weir_leg_t;

struct weir_worker_s {
    uv_loop_t       *loop;
    weir_conf_t     *conf;
    int              id;
    SSL_CTX        **listen_tls;        /* per listener, NULL for ws:// */
    weir_io_t       *listeners;         /* in the worker's epoll set (io.c), like the sessions' sockets */
    uint8_t         *rbuf;              /* WEIR_RBUF_ALLOC */
    uint8_t         *sbuf;              /* WEIR_SBUF_SIZE: scratch for framing messages */
    weir_session_t  *sessions;          /* doubly linked */
    uint64_t         nsessions;
    uint64_t         max_sessions;      /* this worker's share */
    uint64_t         next_id;
    uv_timer_t       tick;
    uint64_t         tick_ms;
    uv_timer_t       drain;
    uv_idle_t        idle;              /* runs while the ready list is not empty (data: the worker) */
    weir_leg_t      *ready;             /* TLS legs with decrypted bytes pending */
    uv_signal_t      sig_term, sig_int, sig_hup;
    int              draining;
    int              in_relay;          /* depth of weir_relay_process: batch writes */
    const weir_policy_ops_t *policy;    /* the policy engine of its sessions */
    weir_session_t **listed;            /* sessions by registry slot (registry.h), NULL where none */
};

/* Make W's sessions ready to be served, POLICY deciding for their hooks. */
void weir_proxy_init(weir_worker_t *w, const weir_policy_ops_t *policy);

/* Take a freshly accepted socket FD from listener LI. */
void weir_session_accept(weir_worker_t *w, int fd, size_t li, const struct sockaddr *sa);

/* Periodic work: timeouts, keep-alive pings. */
void weir_proxy_tick(weir_worker_t *w);

/*
 * Drain W's sessions: those still in their handshake are closed now; then
 * at most MAX open sessions that weir has not closed yet get the going-away
 * error JSON and close CODE (1001: shutting down, 1012: restarting), their
 * backends 1001. Returns how many open sessions are left for a later call.
 */
size_t weir_proxy_shutdown(weir_worker_t *w, unsigned code, size_t max);

/* A reload installed CONF as the worker's configuration: sessions whose API
 * version is gone are closed 1012, the others follow their chain's hooks. */
void weir_proxy_reloaded(weir_worker_t *w, weir_conf_t *conf);

/* The open session of W in registry slot SLOT whose connection number is
 * N, or NULL (gone, or another one took the slot since). */
weir_session_t *weir_proxy_listed(weir_worker_t *w, int32_t slot, uint64_t n);

/* Close every socket of every session now (the worker is exiting). */
void weir_proxy_abort_all(weir_worker_t *w);

#endif
