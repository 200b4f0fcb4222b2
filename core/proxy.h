/*
 * proxy.h — a worker's sessions: one client leg and one backend leg, the
 * handshake on both, and the frame relay between them.
 *
 * A session is one allocation holding both legs. Each leg owns a socket (and
 * an SSL when it is TLS), a poll handle, a small stash for a frame header or
 * a control frame split across reads, and an output queue that exists only
 * while the peer is not keeping up. Reads go into the worker's one shared
 * buffer, frames are validated and re-masked there in place, and the bytes
 * are written to the other leg with one write per read in the common case.
 */
#ifndef WEIR_PROXY_H
#define WEIR_PROXY_H

#include <openssl/ssl.h>
#include <uv.h>

#include "conf.h"
#include "conn.h"
#include "route.h"
#include "ws.h"

#define WEIR_RBUF_SIZE  (64 * 1024)      /* bytes read per call */
#define WEIR_STASH_SIZE (WEIR_WS_MAX_HDR + WEIR_WS_MAX_CONTROL + 1)

typedef struct weir_worker_s  weir_worker_t;
typedef struct weir_leg_s     weir_leg_t;

/* why a leg is not being read: bits, cleared independently */
enum {
    WEIR_PAUSE_PEER_FULL = 1,   /* the other leg's output queue is full */
    WEIR_PAUSE_HANDSHAKE = 2,   /* waiting for the other leg's handshake */
    WEIR_PAUSE_POLICY    = 4,   /* a frame hook of this direction waits on I/O */
};

struct weir_leg_s {
    weir_session_t *s;
    int             fd;                 /* -1 when never opened */
    SSL            *ssl;                /* NULL for plain TCP */
    uv_poll_t       poll;
    int             events;             /* poll mask currently armed */
    unsigned        is_backend:1;
    unsigned        opened:1;           /* poll initialised: must be uv_close'd */
    unsigned        done:1;             /* fd closed (or never opened) */
    unsigned        freed:1;            /* poll handle closed */
    unsigned        close_sent:1;       /* a close frame is queued to this peer */
    unsigned        close_rcvd:1;       /* this peer sent a close frame */
    unsigned        discard:1;          /* weir closed it: read only for its close */
    unsigned        lingering:1;        /* write side shut, reading until EOF */
    unsigned        ssl_hs:1;           /* TLS handshake in progress */
    unsigned        ssl_want_write:1;   /* SSL_read needs the socket writable */
    unsigned        ssl_want_read:1;    /* SSL_write needs the socket readable */
    unsigned        fwd_frame:1;        /* the frame being streamed is forwarded */
    unsigned        frame_fin:1;        /* FIN bit of that frame */
    unsigned        in_ready:1;         /* queued on the worker's ready list */
    unsigned        finish:1;           /* shut down once the output queue drains */
    unsigned        emitted_mid:1;      /* the other leg's output ends inside our frame */
    unsigned        msg_out_open:1;     /* frames of our open message went to the other leg */
    unsigned        assemble:1;         /* a frame hook wants this direction's whole messages */
    unsigned        assemble_next:1;    /* assemble from the next message on (set by reloads) */
    unsigned        collect:1;          /* the current message is being assembled in msg */
    unsigned        waiting:1;          /* the frame hook for msg waits on I/O */
    unsigned        unsent:1;           /* bytes queued in a relay batch, not yet written */
    unsigned        paused;             /* WEIR_PAUSE_* bits */

    /* reading: frames from this peer */
    uint64_t        remaining;          /* payload bytes still to come, current data frame */
    uint64_t        frame_off;          /* payload offset, for the mask phase */
    uint64_t        msg_len;            /* bytes of the current message so far */
    uint32_t        msg_frames;         /* frames of the current message so far */
    uint8_t         in_mask[4];         /* this frame's mask (client leg) */
    uint8_t         out_mask[4];        /* fresh mask towards the backend */
    uint8_t         msg_opcode;         /* 0, or TEXT/BINARY of the message in progress */
    uint8_t         nstash;
    uint16_t        rcvd_code;          /* code of the close this peer sent, 0: none */
    uint32_t        utf8;               /* validator state of the current text message */
    uint8_t         stash[WEIR_STASH_SIZE];

    /* messages assembled for frame hooks, and input held while a hook waits */
    uint8_t        *msg;                /* the message's payload, unmasked */
    size_t          msg_fill, msg_cap;
    uint8_t         msg_op;             /* its opcode */
    const uint8_t  *view;               /* or: the message where it lies in the read buffer */
    size_t          view_len;
    uint8_t        *held;
    size_t          held_len;

    /* messages weir adds to this peer's stream, held until it is between messages */
    uint8_t        *inject;
    size_t          inject_len;

    /* writing: bytes queued for this peer */
    uint8_t        *out;                /* NULL while nothing waits */
    size_t          out_off, out_len, out_cap;

    /* liveness */
    uint64_t        last_rx;            /* loop time (ms) of the last read */
    uint64_t        ping_sent;          /* 0, or when weir's keep-alive ping went */
    uint64_t        ping_token;         /* payload of that ping */
    uint64_t        deadline;           /* 0, or when a close/linger gives up */

    /* counters for the access log */
    uint64_t        frames, bytes;      /* data frames and payload bytes received */

    weir_leg_t     *ready_next;
};

enum {
    WEIR_S_TLS = 0,         /* client TLS handshake */
    WEIR_S_REQUEST,         /* reading the client's request head */
    WEIR_S_POLICY,          /* on_handshake waits on I/O */
    WEIR_S_CONNECT,         /* connecting to the backend */
    WEIR_S_BACKEND,         /* backend handshake (TLS, request, response) */
    WEIR_S_OPEN,            /* relaying */
    WEIR_S_CLOSED,          /* an HTTP answer or a close is on its way out */
};

struct weir_session_s {
    weir_leg_t       client;
    weir_leg_t       backend;
    weir_worker_t   *w;
    weir_conf_t     *conf;              /* the configuration it was routed with (a reference) */
    weir_session_t  *prev, *next;       /* the worker's list */
    uint64_t         id;
    uint64_t         started;           /* loop time, ms */
    uint64_t         last_data;         /* loop time of the last data frame either way */
    int              state;             /* WEIR_S_* */
    int              listen_tls;        /* client came over wss:// */
    unsigned         hooks;             /* WEIR_HOOK_* of its version's chain */
    unsigned         has_ctx:1;         /* the Lua runtime holds a ctx for it */
    uint16_t         peer_port;
    weir_route_t     route;
    weir_endpoint_t *ep;
    char            *hs;                /* client request head, until the 101 */
    size_t           hs_len, hs_cap, hs_head;
    char            *bhs;               /* backend response head */
    size_t           bhs_len, bhs_cap;
    const char      *protocols;         /* client's Sec-WebSocket-Protocol (in hs) */
    size_t           protocols_len;
    char             accept[WEIR_WS_ACCEPT_LEN + 1];   /* for the client */
    char             expect[WEIR_WS_ACCEPT_LEN + 1];   /* from the backend */
    int              http_status;       /* answer to the client's request, for the log */
    uint16_t         close_code;        /* first close code seen, for the log */
    char             close_side;        /* 'c'lient, 'b'ackend, 'w'eir */
    char             peer[64];          /* client address "ip:port" */
    char             peer_ip[48];
};

struct weir_worker_s {
    uv_loop_t       *loop;
    weir_conf_t     *conf;
    int              id;
    SSL_CTX        **listen_tls;        /* per listener, NULL for ws:// */
    uv_poll_t       *listeners;
    uint8_t         *rbuf;              /* WEIR_STASH_SIZE + WEIR_RBUF_SIZE */
    uint8_t         *sbuf;              /* WEIR_RBUF_SIZE: scratch for masking messages */
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
};

/* Make W's sessions ready to be served, POLICY deciding for their hooks. */
void weir_proxy_init(weir_worker_t *w, const weir_policy_ops_t *policy);

/* Take a freshly accepted socket FD from listener LI. */
void weir_session_accept(weir_worker_t *w, int fd, size_t li, const struct sockaddr *sa);

/* Periodic work: timeouts, keep-alive pings. */
void weir_proxy_tick(weir_worker_t *w);

/* Begin a graceful shutdown of every session (close 1001). */
void weir_proxy_shutdown(weir_worker_t *w);

/* A reload installed NEW as the worker's configuration: sessions whose API
 * version is gone are closed 1012, the others follow their chain's hooks. */
void weir_proxy_reloaded(weir_worker_t *w, weir_conf_t *conf);

/* Close every socket of every session now (the worker is exiting). */
void weir_proxy_abort_all(weir_worker_t *w);

#endif
