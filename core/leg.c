/*
 * leg.c — one side of a session as bytes on a socket: reads and writes
 * (through TLS when the leg has it), the output queue, the poll interest,
 * pauses and the ready list, the messages weir adds to a leg's stream
 * (control frames, its own messages, the error JSON and the close frame),
 * and the end of a leg: the close after a close handshake, the lingering
 * shutdown otherwise, the socket's close, and
 * what the other leg is told when one goes.
 *
 * leg.c calls no other room of a session; what it cannot decide itself it
 * asks of the legs' owner (weir_leg_owner_t, in session_int.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "http.h"
#include "log.h"
#include "session_int.h"

static const weir_leg_owner_t *weir_owner;     /* session.c's, set by weir_leg_init */

static void weir_leg_shutdown(weir_leg_t *l);

void
weir_leg_init(const weir_leg_owner_t *owner)
{
    weir_owner = owner;
}

/* ---- poll and socket I/O ------------------------------------------------ */

int
weir_leg_want(const weir_leg_t *l)
{
    const weir_session_t *s = l->s;
    int ev = 0;

    if (l->ssl_hs) return l->ssl_want_write ? UV_WRITABLE : UV_READABLE;
    int reading;
    if (l->lingering || l->discard) reading = 1;
    else if (l->is_backend) reading = s->state >= WEIR_S_BACKEND && !l->paused;
    else reading = (s->state == WEIR_S_REQUEST || s->state == WEIR_S_BODY || s->state >= WEIR_S_OPEN) && !l->paused;
    if (reading || l->ssl_want_read) ev |= UV_READABLE;
    if (l->out_len > 0 || l->ssl_want_write || (l->is_backend && s->state == WEIR_S_CONNECT))
        ev |= UV_WRITABLE;
    return ev;
}

/*
 * Arm the poll handle for what the leg needs now. Interest in reading is
 * dropped lazily: it stays armed until an event comes that nobody wants
 * (see weir_session_poll_cb), since pauses are short and most end before the
 * peer sends anything; each change is an epoll_ctl. Interest in writing is
 * exact: a socket is nearly always writable.
 */
void
weir_leg_update(weir_leg_t *l)
{
    if (!l->opened || l->done) return;
    int ev = weir_leg_want(l) | (l->events & UV_READABLE);
    if (ev == l->events) return;
    l->events = ev;
    weir_io_start(&l->io, ev, weir_owner->poll);
}

void
weir_leg_open(weir_leg_t *l, int fd)
{
    l->fd = fd;
    l->done = 0;
    l->freed = 0;
    l->opened = 1;
    l->events = 0;
    l->last_rx = weir_now(l->s);
    weir_io_init(&l->io, fd, l);
}

ssize_t
weir_leg_recv(weir_leg_t *l, uint8_t *buf, size_t n)
{
    if (l->ssl != NULL) {
        ERR_clear_error();
        int r = SSL_read(l->ssl, buf, (int) n);
        if (r > 0) return r;
        switch (SSL_get_error(l->ssl, r)) {
        case SSL_ERROR_WANT_READ:   return WEIR_AGAIN;
        case SSL_ERROR_WANT_WRITE:  l->ssl_want_write = 1; weir_leg_update(l); return WEIR_AGAIN;
        case SSL_ERROR_ZERO_RETURN: return 0;
        default:                    return WEIR_ERROR;
        }
    }
    for (;;) {
        ssize_t r = recv(l->fd, buf, n, 0);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return WEIR_AGAIN;
        return WEIR_ERROR;
    }
}

/* Send from BUF: bytes written (maybe 0), or WEIR_ERROR. */
static ssize_t
weir_leg_send(weir_leg_t *l, const uint8_t *buf, size_t n)
{
    if (l->ssl != NULL) {
        ERR_clear_error();
        int r = SSL_write(l->ssl, buf, (int) WEIR_MIN(n, (size_t) 1 << 30));
        if (r > 0) return r;
        switch (SSL_get_error(l->ssl, r)) {
        case SSL_ERROR_WANT_WRITE: return 0;
        case SSL_ERROR_WANT_READ:  l->ssl_want_read = 1; return 0;
        default:                   return WEIR_ERROR;
        }
    }
    /* once the leg is finishing, what is written is the last of it: held
     * back (MSG_MORE) so that the FIN of the shutdown or close goes in the
     * same segment, not in one of its own */
    int flags = MSG_NOSIGNAL | (l->finish ? MSG_MORE : 0);
    for (;;) {
        ssize_t r = send(l->fd, buf, n, flags);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        return WEIR_ERROR;
    }
}

void
weir_leg_queue(weir_leg_t *l, const uint8_t *buf, size_t n)
{
    if (n == 0) return;
    if (l->out_len == 0) l->last_tx = weir_now(l->s);      /* send_timeout counts from here */
    if (l->out_off + l->out_len + n > l->out_cap) {
        if (l->out_len + n <= l->out_cap) {
            memmove(l->out, l->out + l->out_off, l->out_len);
        } else {
            size_t cap = WEIR_MAX(l->out_cap * 2, l->out_len + n);
            cap = WEIR_MAX(cap, (size_t) 16384);
            uint8_t *nb = malloc(cap);
            if (nb == NULL) abort();   /* bounded by buffer_size: out of memory is fatal */
            if (l->out_len) memcpy(nb, l->out + l->out_off, l->out_len);
            free(l->out);
            l->out = nb;
            l->out_cap = cap;
        }
        l->out_off = 0;
    }
    memcpy(l->out + l->out_off + l->out_len, buf, n);
    l->out_len += n;
}

int
weir_leg_write(weir_leg_t *l, const uint8_t *buf, size_t n)
{
    if (l->done) return WEIR_ERROR;
    weir_pend_before(l);
    if (l->done) return WEIR_ERROR;
    if (l->unsent) {                    /* a batch is open: weir_relay_process writes it */
        weir_leg_queue(l, buf, n);
        return WEIR_OK;
    }
    if (l->out_len == 0 && !l->ssl_hs && !(l->is_backend && l->s->state == WEIR_S_CONNECT)) {
        ssize_t w = weir_leg_send(l, buf, n);
        if (w == WEIR_ERROR) {
            weir_leg_gone(l, "write failed");
            return WEIR_ERROR;
        }
        buf += w;
        n -= (size_t) w;
        if (n == 0) return WEIR_OK;
    }
    weir_leg_queue(l, buf, n);
    weir_leg_update(l);
    return WEIR_OK;
}

void
weir_leg_flush(weir_leg_t *l)
{
    while (l->out_len > 0 && !l->done) {
        ssize_t w = weir_leg_send(l, l->out + l->out_off, l->out_len);
        if (w == WEIR_ERROR) {
            weir_leg_gone(l, "write failed");
            return;
        }
        if (w == 0) break;
        l->last_tx = weir_now(l->s);
        l->out_off += (size_t) w;
        l->out_len -= (size_t) w;
    }
    if (l->done) return;
    if (l->out_len == 0 && l->out != NULL) {
        free(l->out);
        l->out = NULL;
        l->out_off = l->out_cap = 0;
    }
    weir_leg_t *o = weir_other(l);
    if ((o->paused & WEIR_PAUSE_PEER_FULL) && l->out_len <= weir_limits(l->s)->buffer_size / 2)
        weir_leg_resume(o, WEIR_PAUSE_PEER_FULL);
    /* a page of weir's own feed (no other leg) waits on its own queue */
    if (l->s->local && (l->paused & WEIR_PAUSE_PEER_FULL) && l->out_len <= weir_limits(l->s)->buffer_size / 2)
        weir_leg_resume(l, WEIR_PAUSE_PEER_FULL);
    if (l->finish && l->out_len == 0) weir_leg_shutdown(l);
    weir_leg_update(l);
}

/* The worker's idle handle, while the ready list is not empty: read its
 * legs (those made ready meanwhile wait for the next turn of the loop). */
static void
weir_leg_ready_cb(uv_idle_t *h)
{
    weir_worker_t *w = h->data;
    weir_leg_t *l = w->ready;
    w->ready = NULL;
    while (l != NULL) {
        weir_leg_t *next = l->ready_next;
        l->in_ready = 0;
        l->ready_next = NULL;
        if (!l->done) weir_owner->readable(l);
        l = next;
    }
    if (w->ready == NULL) uv_idle_stop(h);
}

void
weir_ready_add(weir_leg_t *l)
{
    weir_worker_t *w = l->s->w;
    if (l->in_ready || l->done) return;
    l->in_ready = 1;
    l->ready_next = w->ready;
    w->ready = l;
    if (!uv_is_active((uv_handle_t *) &w->idle)) uv_idle_start(&w->idle, weir_leg_ready_cb);
}

void
weir_leg_pause(weir_leg_t *l, unsigned why)
{
    l->paused |= why;
    weir_leg_update(l);
}

void
weir_leg_resume(weir_leg_t *l, unsigned why)
{
    if (!(l->paused & why)) return;
    l->paused &= ~why;
    weir_leg_update(l);
    if (l->paused == 0 && l->ssl != NULL && SSL_pending(l->ssl) > 0) weir_ready_add(l);
}

void
weir_linger_read(weir_leg_t *l)
{
    uint8_t *buf = l->s->w->rbuf;
    for (int i = 0; i < 4; i++) {
        ssize_t n = weir_leg_recv(l, buf, WEIR_RBUF_SIZE);
        if (n == WEIR_AGAIN) return;
        if (n <= 0) {
            weir_leg_close_fd(l);
            return;
        }
    }
}

/* ---- keep-alive --------------------------------------------------------- */

void
weir_ping_token(const weir_leg_t *l, char *out)
{
    snprintf(out, WEIR_PING_TOKEN_LEN + 1, "weir-%016llx", (unsigned long long) l->ping_token);
}

int
weir_ping_matches(const weir_leg_t *l, const uint8_t *payload)
{
    char token[WEIR_PING_TOKEN_LEN + 1];
    weir_ping_token(l, token);
    return memcmp(payload, token, WEIR_PING_TOKEN_LEN) == 0;
}

/* ---- closing ------------------------------------------------------------ */

static void
weir_leg_closed_cb(weir_io_t *io)
{
    weir_leg_t *l = io->data;
    weir_session_t *s = l->s;
    l->freed = 1;
    if (s->client.freed && s->backend.freed) weir_owner->freed(s);
}

void
weir_leg_close_fd(weir_leg_t *l)
{
    if (l->done) return;
    l->done = 1;
    if (l->ssl) {
        SSL_free(l->ssl);
        l->ssl = NULL;
    }
    free(l->out);
    l->out = NULL;
    l->out_len = l->out_off = l->out_cap = 0;
    if (l->opened) {
        weir_io_close(&l->io, weir_leg_closed_cb);     /* stops polling too */
    } else {
        l->freed = 1;
    }
    if (l->fd >= 0) close(l->fd);
    l->fd = -1;
}

/* Everything queued is written: stop writing (FIN). When the leg's close
 * handshake is complete (its peer's close frame read, weir's sent), the
 * peer has nothing more to send (RFC 6455 5.5.1), so the socket is closed
 * at once, its FIN after the last frame. Otherwise weir reads until the
 * peer's EOF (or close_timeout), so the last frames are not destroyed by a
 * reset answering what the peer still sends. */
static void
weir_leg_shutdown(weir_leg_t *l)
{
    if (l->done || l->lingering) return;
    l->lingering = 1;
    if (l->ssl) {
        ERR_clear_error();
        (void) SSL_shutdown(l->ssl);
    }
    if (l->close_rcvd && l->close_sent) {
        weir_leg_close_fd(l);
        return;
    }
    shutdown(l->fd, SHUT_WR);
    l->deadline = weir_now(l->s) + weir_limits(l->s)->close_timeout_ms;
    weir_leg_update(l);
}

void
weir_leg_finish(weir_leg_t *l)
{
    if (l->done) return;
    l->finish = 1;
    if (l->out_len == 0) weir_leg_shutdown(l);
}

void
weir_note_close(weir_session_t *s, unsigned code, char side)
{
    if (s->close_side) return;
    s->close_code = (uint16_t) code;
    s->close_side = side;
}

/* ---- messages of weir's own: control frames, closes, injected messages --- */

/* Frame P[0..N) as one message into OUT (header, payload masked towards a
 * backend). OUT has room for WEIR_WS_MAX_HDR + N bytes. Returns its length. */
static size_t
weir_frame_message(weir_leg_t *dst, uint8_t *out, int opcode, const uint8_t *p, size_t n)
{
    uint8_t mask[4];
    size_t hl;
    if (dst->is_backend) {
        weir_ws_random(mask, 4);
        hl = weir_ws_build_hdr(out, 1, opcode, n, mask);
        weir_ws_mask_copy(out + hl, p, n, mask, 0);
    } else {
        hl = weir_ws_build_hdr(out, 1, opcode, n, NULL);
        memcpy(out + hl, p, n);
    }
    return hl + n;
}

int
weir_leg_send_control(weir_leg_t *l, int opcode, const uint8_t *payload, size_t n)
{
    uint8_t frame[WEIR_WS_MAX_HDR + WEIR_WS_MAX_CONTROL];
    if (n > WEIR_WS_MAX_CONTROL) n = WEIR_WS_MAX_CONTROL;
    return weir_leg_write(l, frame, weir_frame_message(l, frame, opcode, payload, n));
}

/* DST's outgoing stream is between messages (a message of weir's may go). */
static int
weir_leg_between(weir_leg_t *dst)
{
    weir_leg_t *src = weir_other(dst);
    return dst->s->state >= WEIR_S_OPEN && !src->emitted_mid && !src->msg_out_open && dst->inject_len == 0;
}

void
weir_leg_message(weir_leg_t *dst, int opcode, const uint8_t *p, size_t n)
{
    if (dst->done || dst->close_sent) return;
    weir_pend_before(dst);              /* and then dst is between messages */
    if (weir_leg_between(dst) && n + WEIR_WS_MAX_HDR <= WEIR_SBUF_SIZE) {
        size_t fl = weir_frame_message(dst, dst->s->w->sbuf, opcode, p, n);
        /* small messages of one read go out in its one write (weir_relay_process);
         * a big one is written now, not copied into the queue first */
        if (dst->s->w->in_relay && n <= WEIR_BATCH_COPY) dst->unsent = 1;
        weir_leg_write(dst, dst->s->w->sbuf, fl);
        return;
    }
    uint8_t *nb = realloc(dst->inject, dst->inject_len + WEIR_WS_MAX_HDR + n);
    if (nb == NULL) abort();
    dst->inject = nb;
    dst->inject_len += weir_frame_message(dst, nb + dst->inject_len, opcode, p, n);
}

void
weir_leg_message_own(weir_leg_t *dst, int opcode, uint8_t *p, size_t n, const uint8_t *key)
{
    if (dst->done || dst->close_sent) return;
    weir_pend_before(dst);
    if (n <= WEIR_BATCH_COPY || !weir_leg_between(dst) || (key != NULL && !dst->is_backend)) {
        /* small ones may wait for the read's write */
        if (key != NULL) weir_ws_mask(p, n, key, 0);
        weir_leg_message(dst, opcode, p, n);
        return;
    }
    uint8_t hdr[WEIR_WS_MAX_HDR], mask[4];
    size_t hl;
    if (dst->is_backend) {
        if (key != NULL) {
            memcpy(mask, key, 4);           /* masked already, with a key weir drew */
        } else {
            weir_ws_random(mask, 4);
            weir_ws_mask(p, n, mask, 0);
        }
        hl = weir_ws_build_hdr(hdr, 1, opcode, n, mask);
    } else {
        hl = weir_ws_build_hdr(hdr, 1, opcode, n, NULL);
    }
    memcpy(p - hl, hdr, hl);
    weir_leg_write(dst, p - hl, hl + n);
}

void
weir_leg_flush_inject(weir_leg_t *l)
{
    if (l->inject_len == 0 || l->done || l->s->state < WEIR_S_OPEN) return;
    uint8_t *b = l->inject;
    size_t n = l->inject_len;
    l->inject = NULL;
    l->inject_len = 0;
    weir_leg_write(l, b, n);
    free(b);
}

void
weir_leg_close_with(weir_leg_t *l, unsigned code, const char *reason, const char *json, size_t jl)
{
    if (l->done || l->close_sent) return;
    weir_pend_before(l);                        /* and then l is between messages */
    if (l->done) return;
    weir_session_t *s = l->s;
    weir_note_close(s, code, 'w');              /* unless a peer closed first */
    if (weir_other(l)->emitted_mid) {
        weir_leg_close_fd(l);
        return;
    }
    /* weir's messages waiting for the client's stream to be between messages
     * go first, then the error JSON, a message of its own: neither can start
     * inside an open fragmented message towards the client (RFC 6455 5.4),
     * then only the close goes */
    weir_leg_t *o = weir_other(l);
    if (!l->is_backend && !o->msg_out_open && !o->emitted_mid) {
        weir_leg_flush_inject(l);
        if (l->done) return;
        if (json != NULL) {
            uint8_t hdr[WEIR_WS_MAX_HDR];
            size_t hl = weir_ws_build_hdr(hdr, 1, WEIR_WS_TEXT, jl, NULL);
            if (weir_leg_write(l, hdr, hl) != WEIR_OK) return;
            if (weir_leg_write(l, (const uint8_t *) json, jl) != WEIR_OK) return;
        }
    }
    uint8_t payload[WEIR_WS_MAX_CONTROL];
    size_t n = 0;
    if (code != 0) {
        payload[0] = (uint8_t) (code >> 8);
        payload[1] = (uint8_t) code;
        size_t rl = reason ? WEIR_MIN(strlen(reason), (size_t) WEIR_WS_MAX_CONTROL - 2) : 0;
        if (rl > 0) memcpy(payload + 2, reason, rl);
        n = 2 + rl;
    }
    l->close_sent = 1;
    l->discard = 1;
    l->deadline = weir_now(s) + weir_limits(s)->close_timeout_ms;
    if (weir_leg_send_control(l, WEIR_WS_CLOSE, payload, n) != WEIR_OK) return;
    if (l->close_rcvd) weir_leg_finish(l);
    weir_leg_update(l);
}

void
weir_leg_send_close(weir_leg_t *l, unsigned code, const char *reason, const char *problem)
{
    char json[512];
    size_t jl = 0;
    if (problem != NULL) jl = weir_error_json(json, sizeof(json), problem, (int) code, reason);
    weir_leg_close_with(l, code, reason, problem ? json : NULL, jl);
}

void
weir_leg_fail(weir_leg_t *l)
{
    if (l->done || l->close_sent || l->fail_code == 0) return;
    weir_leg_send_close(l, l->fail_code, l->fail_reason, l->fail_code == 1009 ? "/problems/message-too-big" : NULL);
    weir_leg_finish(l);
}

void
weir_leg_gone(weir_leg_t *l, const char *why)
{
    if (l->done) return;
    weir_session_t *s = l->s;
    int clean = l->close_sent && l->close_rcvd;
    weir_leg_close_fd(l);

    weir_leg_t *o = weir_other(l);
    if (!clean) {
        char y[256];
        weir_log(WEIR_LOG_DEBUG, "peer gone", "\"conn\":\"%s\",\"side\":\"%s\",\"why\":\"%s\"", s->name,
                 l->is_backend ? "backend" : "client", weir_log_str(y, sizeof(y), why));
        if (s->state >= WEIR_S_OPEN) weir_note_close(s, 1006, l->is_backend ? 'b' : 'c');
    }
    if (o->done) return;
    if (s->state < WEIR_S_OPEN) {
        if (l->is_backend) weir_owner->backend_lost(s, why);
        else weir_leg_close_fd(o);
        return;
    }
    if (o->fail_code) {                         /* it broke the protocol and waited for l's close */
        weir_leg_fail(o);
        return;
    }
    if (o->close_sent) return;                  /* already closing: let it finish */
    if (o->close_rcvd) {                        /* it waits for an answer l will never give */
        weir_leg_send_close(o, o->rcvd_code, NULL, NULL);
        return;
    }
    if (l->is_backend) weir_leg_send_close(o, 1014, "backend connection lost", "/problems/bad-gateway");
    else weir_leg_send_close(o, 1001, "client gone", NULL);
}
