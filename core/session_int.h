/*
 * session_int.h — what the rooms of a session share and nothing outside
 * them sees: leg.c (bytes on a socket), handshake.c (both handshakes),
 * relay.c (frames between the legs) and session.c (a session's life). The
 * face the worker sees is proxy.h.
 *
 * A function that "may close" a leg can leave it done (l->done): re-check
 * after it. None frees a session: that happens only in a libuv close
 * callback, so a session stays valid until the callback running returns.
 */
#ifndef WEIR_SESSION_INT_H
#define WEIR_SESSION_INT_H

#include "proxy.h"

static inline weir_leg_t *
weir_other(weir_leg_t *l)
{
    return l->is_backend ? &l->s->client : &l->s->backend;
}

static inline uint64_t
weir_now(weir_session_t *s)
{
    return uv_now(s->w->loop);
}

static inline const weir_limits_t *
weir_limits(weir_session_t *s)
{
    return &s->w->conf->limits;
}

/* weir's keep-alive ping payload: "weir-" and 16 hex digits */
#define WEIR_PING_TOKEN_LEN 21

/* ---- leg.c ----------------------------------------------------------------- */

/* The poll events L waits for now (UV_READABLE, UV_WRITABLE), from its
 * session's state, its pauses, its TLS layer and its output queue. */
int weir_leg_want(const weir_leg_t *l);

/* Arm L's poll handle for what it waits for now (weir_leg_want). No-op on
 * a leg never opened or already done. */
void weir_leg_update(weir_leg_t *l);

/* L takes the socket FD: its poll handle is initialised (armed by the next
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
 * SIDE ('c'lient, 'b'ackend, 'w'eir). Later ones are ignored. */
void weir_note_close(weir_session_t *s, unsigned code, char side);

/* Send a control frame with PAYLOAD[0..N) (cut to 125 bytes), masked
 * towards a backend. Returns as weir_leg_write. */
int weir_leg_send_control(weir_leg_t *l, int opcode, const uint8_t *payload, size_t n);

/* Send one whole message of weir's own to DST: at once when its stream is
 * between messages (into the open relay batch, if any), else kept in
 * DST's inject queue until it is. Nothing goes to a leg done or closing. */
void weir_leg_message(weir_leg_t *dst, int opcode, const uint8_t *p, size_t n);

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

/* Leg L ended without a completed close handshake (EOF, error, timeout) or
 * ended cleanly: close it, and settle the other leg: answer a close it is
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

/* Read from L and relay it to the other leg, pausing L when the other
 * leg's queue nears buffer_size. May close either leg. */
void weir_relay_read(weir_leg_t *l);

/* Log the failure of a policy (a WEIR_V_FAIL verdict V) on S. */
void weir_log_policy_failure(weir_session_t *s, const weir_verdict_t *v);

/* The frame hook of L's message, which had waited, decided V: apply it,
 * relay what arrived behind the message, in order, and read L again. May
 * close both legs. */
void weir_relay_resolved(weir_leg_t *l, const weir_verdict_t *v);

/* ---- handshake.c ----------------------------------------------------------- */

/* Answer S's request with HTTP STATUS and the error JSON of TYPE and MSG
 * (EXTRA: more header lines, or NULL), then close the client leg once it
 * is out. S is then WEIR_S_CLOSED. */
void weir_session_http(weir_session_t *s, int status, const char *type, const char *msg, const char *extra);

/* The backend cannot be used: close it, complete the client's upgrade so a
 * browser can read the reason, and close the client with the bad-gateway
 * JSON and 1014. Logs "backend unavailable" with WHY. */
void weir_bad_gateway(weir_session_t *s, const char *why);

/* Apply on_handshake's verdict V: refuse the request (the policy's error
 * JSON, 500 when it failed) or go on to the backend (the sandbox endpoint
 * for a sandbox key). */
void weir_handshake_verdict(weir_session_t *s, const weir_verdict_t *v);

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

/* ---- session.c ------------------------------------------------------------- */

/* Free S, both legs' handles being closed: the access line, on_close, the
 * buffers and its configuration's reference. */
void weir_session_free(weir_session_t *s);

/* The poll callback of every leg: dispatches by the session's state. */
void weir_leg_poll_cb(uv_poll_t *h, int status, int events);

/* L can be read: read it as its session's state says. */
void weir_leg_on_readable(weir_leg_t *l);

#endif
