/*
 * session_int.h — what the rooms of a session share and nothing outside
 * them sees: leg.c (bytes on a socket), relay.c (frames between the
 * legs), service.c (weir's own HTTP answers and services), handshake.c
 * (both handshakes) and session.c (a session's life). The worker sees
 * proxy.h, the policy engine conn.h.
 *
 * A session is one allocation holding both legs. Each leg owns a socket (and
 * an SSL when it is TLS), its entry in the worker's epoll set (io.h), a small stash for a frame header or
 * a control frame split across reads, and an output queue: the last two
 * exist only while they hold bytes. Reads go into the worker's one shared
 * buffer, frames are validated and re-masked there in place, and the bytes
 * are written to the other leg with one write per read in the common case.
 *
 * stats_session.c reads a session's counters for the metrics (stats.h).
 *
 * The rooms call one way: leg.c calls no other room, relay.c calls leg.c,
 * service.c both, handshake.c those three, session.c all four; their
 * functions are declared below in that order. A function that "may close" a leg can leave it done
 * (l->done): re-check after it. None frees a session: that happens only in
 * a libuv close callback, so a session stays valid until the callback
 * running returns.
 */
#ifndef WEIR_SESSION_INT_H
#define WEIR_SESSION_INT_H

#include <openssl/ssl.h>
#include <uv.h>

#include "http.h"
#include "io.h"
#include "proxy.h"
#include "route.h"
#include "ws.h"

#define WEIR_SNIFF_MAX  (64 * 1024)      /* larger messages are not offered to the interceptor */
#define WEIR_SERVICE_TIMEOUT_MS 60000    /* an admin or key-manager request's answer, at most */

typedef struct weir_upstream_s weir_upstream_t;
typedef struct weir_analytics_conn_s weir_analytics_conn_t;   /* analytics.c */

/* A session's counters as last flushed into the metrics store, and its
 * series (stats_session.c). */
typedef struct {
    uint64_t  messages[2], bytes[2], frames[2], over[2];   /* [0]: the client's ("in"), [1]: the backend's ("out") */
    uint32_t  traffic;                 /* its traffic series (stats.h), 0: not resolved yet */
    uint32_t  usage;                   /* its usage key, 0: not resolved yet */
} weir_stats_snap_t;

/* why a leg is not being read: bits, cleared independently */
enum {
    WEIR_PAUSE_PEER_FULL = 1,   /* the other leg's output queue is full */
    WEIR_PAUSE_HANDSHAKE = 2,   /* waiting for the other leg's handshake */
    WEIR_PAUSE_POLICY    = 4,   /* a frame hook of this direction waits on I/O */
    WEIR_PAUSE_THROTTLE  = 8,   /* over a rate limit whose action is delay: until it allows the message */
};

/* A session's rate limits (ctx:limit), allocated at the first one: plain
 * sessions carry only a NULL pointer. Defined in relay.c. */
typedef struct weir_throttle_s weir_throttle_t;

struct weir_leg_s {
    weir_session_t *s;
    int             fd;                 /* -1 when never opened */
    SSL            *ssl;                /* NULL for plain TCP */
    weir_io_t       io;                 /* its socket in the worker's epoll set (io.h) */
    int             events;             /* poll mask currently armed */
    unsigned        is_backend:1;
    unsigned        opened:1;           /* io initialised: must be weir_io_close'd */
    unsigned        done:1;             /* fd closed (or never opened) */
    unsigned        freed:1;            /* io closed: no event can name the leg any more */
    unsigned        close_sent:1;       /* a close frame is queued to this peer */
    unsigned        close_rcvd:1;       /* this peer sent a close frame */
    unsigned        discard:1;          /* weir closed it: read only for its close */
    unsigned        lingering:1;        /* write side shut, reading until EOF */
    unsigned        ssl_hs:1;           /* TLS handshake in progress */
    unsigned        ssl_want_write:1;   /* SSL_read needs the socket writable */
    unsigned        ssl_want_read:1;    /* SSL_write needs the socket readable */
    unsigned        in_ready:1;         /* queued on the worker's ready list */
    unsigned        finish:1;           /* shut down once the output queue drains */
    /* the relay's per-frame and per-message state: whole bytes, not bit-fields
     * (each frame writes some and reads others: a wide read of bits just
     * written a byte at a time waits for the stores) */
    uint8_t         fwd_frame;          /* the frame being streamed is forwarded */
    uint8_t         frame_fin;          /* FIN bit of that frame */
    uint8_t         emitted_mid;        /* the other leg's output ends inside our frame */
    uint8_t         msg_out_open;       /* frames of our open message went to the other leg */
    uint8_t         assemble;           /* a frame hook wants this direction's whole messages */
    uint8_t         assemble_next;      /* assemble from the next message on (set by reloads) */
    uint8_t         sniff;              /* the current message is read whole for ctx:intercept */
    uint8_t         inspect;            /* the current message is read whole for the session's inspector */
    uint8_t         collect;            /* the current message is being assembled in msg */
    uint8_t         waiting;            /* the frame hook for msg waits on I/O */
    uint8_t         msg_masked;         /* msg holds the payload masked with msg_key (weir_msg_plain) */
    uint8_t         unsent;             /* bytes queued in a relay batch, not yet written */
    uint8_t         throttled;          /* the current message is dropped: over a rate limit */
    uint8_t         delayed;            /* held until a rate limit allows its next message */
    uint8_t         held_over;          /* the message being decided was delayed already (counted once) */
    uint8_t         cut_ok;             /* this read may leave a cut message for the next (weir_relay_read) */
    unsigned        paused;             /* WEIR_PAUSE_* bits */
    uint16_t        fail_code;          /* this peer broke the protocol: the close it is failed with, 0: it did not */
    const char     *fail_reason;        /* that close's reason (a string literal) */

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
    uint8_t        *stash;              /* WEIR_STASH_SIZE bytes while NSTASH > 0, else NULL */
    uint32_t        cut;                /* bytes at the end of the read left for the next one (CUT_OK) */

    /* messages assembled for frame hooks, and input held while a hook waits */
    uint8_t        *msg;                /* the message's payload, unmasked; WEIR_WS_MAX_HDR
                                           bytes of room before it (weir_leg_message_own) */
    size_t          msg_fill, msg_cap;
    uint8_t         msg_op;             /* its opcode */
    uint8_t         msg_key[4];         /* a client's binary message: the key msg is masked with */
    weir_msg_ref_t *view;               /* or: the message where it lies in the read buffer */
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
    uint64_t        last_tx;            /* loop time (ms) the output queue last began or took bytes */

    /* counters for the access log, metrics and analytics */
    uint64_t        frames, bytes;      /* data frames and payload bytes received */
    uint64_t        messages, binary;   /* data messages begun, and how many of them were binary */
    uint64_t        over_limit;         /* messages over a rate limit (delayed, dropped or refused) */

    weir_leg_t     *ready_next;
};

enum {
    WEIR_S_TLS = 0,         /* client TLS handshake */
    WEIR_S_REQUEST,         /* reading the client's request head */
    WEIR_S_BODY,            /* reading the body of a request to one of weir's services */
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
    uint64_t         id;                /* the engine's handle (conn.h) */
    char             name[32];          /* "w<worker>-<n>": the conn of log records, ctx.id */
    uint64_t         started;           /* loop time, ms */
    uint64_t         t0_ns;             /* uv_hrtime() at the accept: handshake durations */
    uint64_t         last_data;         /* loop time of the last data frame either way */
    int              state;             /* WEIR_S_* */
    int              listen_tls;        /* client came over wss:// */
    unsigned         hooks;             /* WEIR_HOOK_* of its version's chain */
    unsigned         has_ctx:1;         /* the Lua runtime holds a ctx for it */
    unsigned         ticket_req:1;      /* a POST <path>/ticket, answered without an upgrade */
    unsigned         admin:1;           /* accepted on the admin listener */
    unsigned         service:1;         /* a request to one of weir's services (service.c) */
    unsigned         local:1;           /* a WebSocket weir serves itself (the dashboard's): no backend leg */
    int32_t          reg;               /* its slot in the host's registry, -1: none */
    char            *body;              /* a service request's body, BODY_WANT bytes when complete */
    size_t           body_len, body_want;
    weir_upstream_t *up;                /* policies' changes to the backend's request, until the 101 */
    weir_throttle_t *thr;               /* rate limits, NULL: none */
    weir_analytics_conn_t *an;          /* analytics events (ctx:analytics), NULL: off */
    char            *needle;            /* weir_conn_intercept: client text messages holding it go to the engine */
    weir_inspector_t *inspect;          /* weir_conn_inspect: checks of the client's messages, NULL: none */
    char            *consumer[WEIR_CONSUMER_FIELDS];  /* weir_conn_consumer, for the access record; NULL: unknown */
    uint16_t         peer_port;
    uint16_t         inspect_owner;     /* who attached inspect: the engine's number for it, 0: none */
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
    weir_stats_snap_t st;               /* what the metrics got of its counters (stats_session.c) */
};

/* The other leg of L's session. */
static inline weir_leg_t *
weir_other(weir_leg_t *l)
{
    return l->is_backend ? &l->s->client : &l->s->backend;
}

/* The loop's time, in ms. */
static inline uint64_t
weir_now(weir_session_t *s)
{
    return uv_now(s->w->loop);
}

/* The limits in force: the worker's current configuration's (a reload
 * applies them to open sessions too). */
static inline const weir_limits_t *
weir_limits(weir_session_t *s)
{
    return &s->w->conf->limits;
}

/* weir's keep-alive ping payload: "weir-" and 16 hex digits */
#define WEIR_PING_TOKEN_LEN 21

/* ---- leg.c ----------------------------------------------------------------- */

/*
 * What leg.c cannot decide, since it calls no other room, it asks of the
 * legs' owner: session.c, which registers itself once per worker.
 */
typedef struct {
    weir_io_cb   poll;                      /* every leg's poll callback */
    void       (*readable)(weir_leg_t *l);  /* a leg of the ready list can be read */
    void       (*freed)(weir_session_t *s); /* both legs' handles are closed: free S */
    void       (*backend_lost)(weir_session_t *s, const char *why);  /* the backend went before the 101 */
} weir_leg_owner_t;

/* Register OWNER, before any leg is opened. */
void weir_leg_init(const weir_leg_owner_t *owner);

/* The poll events L waits for now (UV_READABLE, UV_WRITABLE), from its
 * session's state, its pauses, its TLS layer and its output queue. */
int weir_leg_want(const weir_leg_t *l);

/* Arm L's entry in the epoll set for what it waits for now (weir_leg_want). No-op on
 * a leg never opened or already done. */
void weir_leg_update(weir_leg_t *l);

/* L takes the socket FD: its io is initialised (armed by the next
 * weir_leg_update). From then on only weir_leg_close_fd closes FD. */
void weir_leg_open(weir_leg_t *l, int fd);

/* Read at most N bytes from L (through TLS when it has it) into BUF.
 * Returns the bytes read (> 0), 0 at the peer's end of stream, WEIR_AGAIN
 * when nothing is there yet, WEIR_ERROR on failure. Never closes L. */
ssize_t weir_leg_recv(weir_leg_t *l, uint8_t *buf, size_t n);

/* Append BUF[0..N) to L's output queue without trying to write (the
 * caller flushes). Bounded by buffer_size; out of memory aborts. */
void weir_leg_queue(weir_leg_t *l, const uint8_t *buf, size_t n);

/* Write BUF[0..N) to L, queueing what the socket does not take (all of it
 * while a relay batch is open). Returns WEIR_OK, or WEIR_ERROR when L is
 * done or failed: a failure was handled as gone (weir_leg_gone, which may
 * close the other leg too), and the caller must re-check its state. */
int weir_leg_write(weir_leg_t *l, const uint8_t *buf, size_t n);

/* Write what is queued for L. When the queue falls to half of buffer_size
 * the other leg is read again; a finishing leg whose queue is empty is shut
 * down. A write failure handles L as gone. */
void weir_leg_flush(weir_leg_t *l);

/* L's TLS layer holds decrypted bytes no poll event will announce: read L
 * again from the worker's idle handle. */
void weir_ready_add(weir_leg_t *l);

/* Stop reading L for reason WHY (WEIR_PAUSE_* bits). */
void weir_leg_pause(weir_leg_t *l, unsigned why);

/* Clear reason WHY; L is read again once no reason is left (at once, from
 * the ready list, when its TLS layer holds bytes). */
void weir_leg_resume(weir_leg_t *l, unsigned why);

/* Read and drop what a lingering (or closing) L still sends; its socket is
 * closed at end of stream or on an error. */
void weir_linger_read(weir_leg_t *l);

/* The payload of L's keep-alive ping into OUT: WEIR_PING_TOKEN_LEN
 * characters and a NUL. */
void weir_ping_token(const weir_leg_t *l, char *out);

/* 1 when PAYLOAD (WEIR_PING_TOKEN_LEN bytes) answers L's ping. */
int weir_ping_matches(const weir_leg_t *l, const uint8_t *payload);

/* Close L's socket now (its TLS and queue go with it). Safe to call twice.
 * The session may be freed on a later loop iteration, never during this call. */
void weir_leg_close_fd(weir_leg_t *l);

/* Close L once its output queue has drained: shut down its write side and
 * read until the peer's end of stream. */
void weir_leg_finish(weir_leg_t *l);

/* Record the first close of S, for the access log and on_close: CODE and
 * SIDE ('c'lient, 'b'ackend: its close frame, or 1006 when it vanished;
 * 'w'eir: weir closed on its own decision, CODE being what the client
 * gets). Later ones are ignored. */
void weir_note_close(weir_session_t *s, unsigned code, char side);

/* Send a control frame with PAYLOAD[0..N) (cut to 125 bytes), masked
 * towards a backend. Returns as weir_leg_write. */
int weir_leg_send_control(weir_leg_t *l, int opcode, const uint8_t *payload, size_t n);

/* Send one whole message of weir's own to DST: at once when its stream is
 * between messages (into the open relay batch, if any), else kept in
 * DST's inject queue until it is. Nothing goes to a leg done or closing. */
void weir_leg_message(weir_leg_t *dst, int opcode, const uint8_t *p, size_t n);

/* The same for a message P[0..N) that weir may overwrite, with
 * WEIR_WS_MAX_HDR writable bytes before P (or P NULL and N 0), masked with
 * KEY (NULL: not masked): a big one (over WEIR_BATCH_COPY) that can go at
 * once is framed where it lies (the header in the room before it; masked
 * in place for a backend, unless KEY is given and DST is the backend: sent
 * as it is, KEY in its header) and written with no copy. */
void weir_leg_message_own(weir_leg_t *dst, int opcode, uint8_t *p, size_t n, const uint8_t *key);

/* Message M where it lies unmasked, if it was masked (M->masked, its key
 * in the 4 bytes before it): before anything reads its bytes. */
static inline void
weir_ref_plain(weir_msg_ref_t *m)
{
    if (m->masked) {
        weir_ws_mask((uint8_t *) m->p, m->len, m->p - 4, 0);
        m->masked = 0;
    }
}

/* L's message buffer unmasked, if it was masked (msg_masked): before
 * anything reads its bytes. */
static inline void
weir_msg_plain(weir_leg_t *l)
{
    if (l->msg_masked) {
        weir_ws_mask(l->msg, l->msg_fill, l->msg_key, 0);
        l->msg_masked = 0;
    }
}

/* Write L's inject queue, now that its stream is between messages. No-op
 * before the upgrade or on a leg done. */
void weir_leg_flush_inject(weir_leg_t *l);

/* weir closes leg L: an error JSON text frame first when JSON is given
 * (client leg only), then a close frame with CODE (0: empty) and REASON.
 * L then only waits for its peer's close. When L's output stream is in the
 * middle of a frame relayed from the other side, no close frame can be
 * framed: the socket is closed instead. May handle L as gone. */
void weir_leg_close_with(weir_leg_t *l, unsigned code, const char *reason, const char *json, size_t jl);

/* As weir_leg_close_with, the error JSON built from PROBLEM (NULL: none),
 * CODE and REASON. */
void weir_leg_send_close(weir_leg_t *l, unsigned code, const char *reason, const char *problem);

/* Fail L, whose peer broke the protocol (l->fail_code, set by the relay,
 * which reads nothing more from it): the close with that code and reason,
 * the error JSON only for 1009 (a message too big, which a well-behaved
 * client can send; 1002 and 1007 get the close alone, RFC 6455 7.1.7), then
 * L is shut down. No-op once L got a close or is done. May handle L as gone. */
void weir_leg_fail(weir_leg_t *l);

/* Leg L ended without a completed close handshake (EOF, error, timeout) or
 * ended cleanly: close it, and settle the other leg: fail it when it broke
 * the protocol and waited for L's close (weir_leg_fail), answer a close it is
 * waiting for, or close it (1001 to a backend whose client is gone; the
 * bad-gateway JSON and 1014 to a client whose backend is gone; before the
 * upgrade, a bad gateway when the backend went, the backend's socket
 * closed when the client did). */
void weir_leg_gone(weir_leg_t *l, const char *why);

/* ---- relay.c --------------------------------------------------------------- */

/* Relay BUF[0..LEN) read from L (validated and re-masked in place) as one
 * batch: messages weir writes itself meanwhile (frame hooks' verdicts,
 * replies, policies' sends) are queued, and each leg is written once at
 * the end, so a read of sixteen small messages still costs one send().
 * May close either leg. */
void weir_relay_process(weir_leg_t *l, uint8_t *buf, size_t len);

/*
 * While a frame hook runs on a message of SRC: the bytes of SRC's read
 * before that message, passed and not yet written to the other leg
 * [FROM, TO), and, for a row of messages (weir_relay_batch), the row
 * (ROW, HDR: each message's header; N of them) and how many of it were
 * written (DONE). Whatever weir writes to the other leg meanwhile (a
 * hook's close, its message, an error) writes them first
 * (weir_relay_pend_flush, from weir_leg_write), so the peer gets them in
 * the order they came and never after a close. SRC is NULL between hooks.
 */
typedef struct {
    weir_leg_t            *src;
    const uint8_t         *from, *to;
    const weir_msg_ref_t  *row;
    uint8_t *const        *hdr;
    int                    n, done;
} weir_pend_t;

extern weir_pend_t weir_pend;

/* Write what weir_pend holds to the other leg of weir_pend.src, which is
 * then between messages of src (the hook's message is whole). */
void weir_relay_pend_flush(void);

/* Before weir writes to DST: what passed ahead of a running hook's message
 * goes first. */
static inline void
weir_pend_before(weir_leg_t *dst)
{
    if (__builtin_expect(weir_pend.src != NULL, 0) && weir_pend.src == weir_other(dst)) weir_relay_pend_flush();
}

/* Free L's message buffer (l->msg and the room before it). */
void weir_relay_msg_free(weir_leg_t *l);

/* Read from L and relay it to the other leg, pausing L when the other
 * leg's queue nears buffer_size. May close either leg. */
void weir_relay_read(weir_leg_t *l);

/* Log the failure of a policy (a WEIR_V_FAIL verdict V) on S. */
void weir_log_policy_failure(weir_session_t *s, const weir_verdict_t *v);

/* The frame hook of L's message, which had waited, decided V: apply it,
 * relay what arrived behind the message, in order, and read L again. May
 * close both legs. */
void weir_relay_resolved(weir_leg_t *l, const weir_verdict_t *v);

/* Add a rate limit to S (weir_conn_limit: KEY NULL for one of its own, LEN
 * bytes), enforced on every data message from then on; ACTION_IN and
 * ACTION_OUT (WEIR_THROTTLE_*, 0: the default) say what happens to a
 * client's and a backend's message over it, the strictest of all its limits
 * deciding. Returns WEIR_OK, or WEIR_ERROR with ERR filled. */
int  weir_relay_limit(weir_session_t *s, const char *key, size_t len, const weir_limit_spec_t *spec, int action_in,
                      int action_out, char *err, size_t errlen);

/* Forget S's rate limits (at the free). */
void weir_relay_throttle_free(weir_session_t *s);

/* ---- service.c ------------------------------------------------------------- */

/* Answer S's request with HTTP STATUS and the error JSON of TYPE and MSG
 * (EXTRA: more header lines, or NULL), then close the client leg once it
 * is out. S is then WEIR_S_CLOSED. */
void weir_session_http(weir_session_t *s, int status, const char *type, const char *msg, const char *extra);

/* Is M a request for the key manager's public endpoints (and is it on)? */
int  weir_service_public(const weir_session_t *s, const weir_http_msg_t *m);

/* Take the request M (its head in s->hs) to one of weir's services:
 * check it, read its body, hand it to the engine. */
void weir_service_request(weir_session_t *s, const weir_http_msg_t *m);

/* More of the body of a service request can be read. */
void weir_service_read_body(weir_session_t *s);

/* Answer a service request with the engine's verdict V: for a WebSocket
 * weir serves itself (s->local), a pass completes the upgrade and opens a
 * session with no backend leg, whose client messages go to the engine's
 * frame call and which the engine writes to with weir_conn_send. */
void weir_service_answer(weir_session_t *s, const weir_verdict_t *v);

/* ---- handshake.c ----------------------------------------------------------- */

/* The backend cannot be used: close it, complete the client's upgrade so a
 * browser can read the reason, and close the client with the bad-gateway
 * JSON and 1014. Logs "backend unavailable" with WHY. */
void weir_bad_gateway(weir_session_t *s, const char *why);

/* Apply on_handshake's verdict V: refuse the request (the policy's error
 * JSON, 500 when it failed) or go on to the backend (the sandbox endpoint
 * for a sandbox key). */
void weir_handshake_verdict(weir_session_t *s, const weir_verdict_t *v);

/* Forget S's changes to the backend's request (after the 101, or at the free). */
void weir_upstream_free(weir_session_t *s);

/* Read the client's request head (up to max_header_size). Once complete it
 * is routed and checked, then answered, or handed to on_handshake and the
 * backend. */
void weir_client_read_request(weir_session_t *s);

/* Read the backend's response head. A valid 101 sends the client's 101 and
 * opens the relay (relaying frames that came with the heads); anything
 * else is a bad gateway. */
void weir_backend_read_response(weir_session_t *s);

/* Advance L's TLS handshake. Done: the client's request is read next, or
 * weir's request goes to the backend. Failed: the client leg is closed, a
 * backend is a bad gateway. */
void weir_tls_step(weir_leg_t *l);

/* The backend's connect completed (or failed: a bad gateway): start TLS,
 * or send weir's request. */
void weir_backend_connected(weir_session_t *s);

#endif
