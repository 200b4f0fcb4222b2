/*
 * relay.c — the frame relay between the legs once both are upgraded:
 * frames are validated, re-masked and streamed on, whole messages are
 * given to frame hooks and their verdicts applied, and a leg's input is
 * held while its hook waits.
 *
 * The relay is cut-through: a frame's header is validated and forwarded
 * as soon as it is read, its payload streamed as it arrives. Client frames
 * are unmasked (to validate text), then re-masked in place with a fresh key
 * for the backend; the frame keeps its length, so what was read is written
 * as one contiguous range, minus frames weir consumes (its own pongs).
 * A direction with a frame hook gets whole messages instead: one read whole
 * in the buffer is checked and shown to the hook where it lies (and left in
 * the range on a pass); others are assembled in the leg's msg buffer. A
 * client's binary message, which nothing checks, is masked for the backend
 * as it is read either way, and unmasked only if a hook reads it.
 *
 * Rate limits (ctx:limit) are decided at a data message's first frame,
 * without a call into the engine: the message passes whole, is dropped
 * whole, or is held with everything read behind it until its limit allows
 * it (delay). Its continuation frames always pass and their bytes are
 * charged as they come (what a bucket cannot take is owed and charged with
 * that direction's next message), so a message is never cut.
 *
 * A session weir serves itself (s->local: the dashboard's feed) has no
 * backend leg: every message of its client goes to the frame hook, and
 * its client's pings are answered here.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/ssl.h>

#include "analytics.h"
#include "http.h"
#include "limit.h"
#include "limit_sync.h"
#include "log.h"
#include "session_int.h"
#include "stats_session.h"

static int  weir_relay_message(weir_leg_t *l);
static void weir_apply_frame_verdict(weir_leg_t *l, const weir_verdict_t *v);
static int  weir_throttle_check(weir_leg_t *l, const weir_ws_hdr_t *h, uint8_t *frame, uint8_t *end, uint8_t **from);
static void weir_throttle_more(weir_leg_t *l, uint64_t bytes);

/* The time rate limits judge the frames of the current read by (0: not
 * read yet): one clock read per read, not per frame. */
static uint64_t weir_throttle_now_us;

/* ---- frames ------------------------------------------------------------- */

/* Write [FROM, TO) of L's input to the other leg. */
static inline void
weir_emit(weir_leg_t *l, const uint8_t *from, const uint8_t *to)
{
    if (to > from) weir_leg_write(weir_other(l), from, (size_t) (to - from));
}

/* May frames from L go to the other leg? */
static inline int
weir_forwarding(weir_leg_t *l)
{
    weir_leg_t *o = weir_other(l);
    return !l->discard && !l->close_rcvd && !o->done && !o->close_sent;
}

/* Is L the client of a session weir serves itself (no backend leg), and
 * not closing? Out of line: proxied sessions never get here open. */
static __attribute__((noinline, cold)) int
weir_local_open(const weir_leg_t *l)
{
    return l->s->local && !l->discard && !l->close_rcvd && !l->close_sent;
}

/* May L's messages go to a frame hook? When forwarding, or in a session
 * weir serves itself. */
static inline int
weir_hooked(weir_leg_t *l)
{
    return __builtin_expect(weir_forwarding(l), 1) || weir_local_open(l);
}

/*
 * L broke the protocol (or went over max_message_size: 1009): fail it with
 * CODE and REASON (RFC 6455 7.1.7). Nothing more of its input is processed.
 * The other leg is closed first (1001 to a backend, the bad-gateway JSON and
 * 1014 to a client) and, until its close comes back (or it goes), what it
 * sends still reaches L: its answers to the frames L sent before the
 * violation. Then L gets its close (weir_leg_fail). MID says whether the
 * other leg's output stream ends inside one of L's frames, OPEN whether
 * inside one of its messages.
 */
static void
weir_relay_fail(weir_leg_t *l, unsigned code, const char *reason, int mid, int open)
{
    weir_session_t *s = l->s;
    weir_leg_t *o = weir_other(l);

    l->emitted_mid = (unsigned) mid;
    l->msg_out_open = (unsigned) open;
    l->remaining = 0;
    if (l->close_sent) {                       /* weir already closed it: no second close */
        weir_leg_gone(l, reason);
        return;
    }
    weir_log(WEIR_LOG_INFO, "protocol violation", "\"conn\":\"%s\",\"side\":\"%s\",\"code\":%u,\"why\":\"%s\"",
             s->name, l->is_backend ? "backend" : "client", code, reason);
    /* weir closes, with the code the client gets */
    weir_note_close(s, l->is_backend ? 1014 : code, 'w');
    l->fail_code = (uint16_t) code;
    l->fail_reason = reason;
    l->discard = 1;
    int drain = !o->done && !o->close_sent;
    if (l->is_backend) weir_leg_send_close(o, 1014, "backend broke the WebSocket protocol", "/problems/bad-gateway");
    else weir_leg_send_close(o, 1001, "client gone", NULL);
    if (drain && !o->done && o->close_sent && !l->done) {
        o->discard = 0;                        /* its frames go on to L until its close */
        return;
    }
    weir_leg_fail(l);
}

/* L sent a valid close frame; PL is its (unmasked) payload. Returns 1 when
 * the frame is to be forwarded as part of the range. */
static int
weir_relay_close(weir_leg_t *l, const uint8_t *pl, size_t n)
{
    weir_session_t *s = l->s;
    weir_leg_t *o = weir_other(l);
    unsigned code = n >= 2 ? ((unsigned) pl[0] << 8) | pl[1] : 0;
    int fwd = weir_forwarding(l) && !o->fail_code;      /* a failed leg gets its own close */

    weir_note_close(s, code, l->is_backend ? 'b' : 'c');
    l->close_rcvd = 1;
    l->rcvd_code = (uint16_t) code;
    if (fwd) {
        o->close_sent = 1;
        if (!o->close_rcvd) o->deadline = weir_now(s) + weir_limits(s)->close_timeout_ms;
    }
    return fwd;
}

/* A client frame's payload PL (N bytes, unmasked) masked again for the
 * backend with a fresh key, written over the one that ends its header. */
static inline void
weir_mask_anew(uint8_t *pl, size_t n)
{
    uint8_t *mk = pl - 4;
    weir_ws_random(mk, 4);
    weir_ws_mask(pl, n, mk, 0);
}

/* A client frame's payload PL (N bytes, still masked with IN, a copy of
 * its key) masked for the backend in one pass: a fresh key written over
 * the one that ends its header. */
static inline void
weir_remask_anew(uint8_t *pl, size_t n, const uint8_t in[4])
{
    weir_ws_random(pl - 4, 4);
    weir_ws_remask(pl, n, in, pl - 4, 0);
}

/* A whole message's payload PL (N bytes, OPCODE; a client's masked with
 * MASK, a copy of its key) made ready where it lies, as M: a text checked
 * and unmasked, in one pass while it is ASCII; a client's binary message
 * masked anew for the backend in one pass (M->masked: unmasked only if
 * something reads it, weir_conn_payload). Returns 0, or 1007 when
 * the text is not UTF-8 (the payload is then unmasked all the same). */
static inline unsigned
weir_open_whole(const weir_leg_t *l, uint8_t *pl, size_t n, unsigned opcode, const uint8_t mask[4],
                weir_msg_ref_t *m)
{
    static const uint8_t none[4];
    m->p = pl;
    m->len = n;
    m->opcode = (int) opcode;
    m->masked = 0;
    if (opcode != WEIR_WS_TEXT) {
        if (!l->is_backend) {
            weir_remask_anew(pl, n, mask);
            m->masked = 1;
        }
        return 0;
    }
    uint32_t st = l->is_backend ? weir_utf8_step(WEIR_UTF8_ACCEPT, pl, n)
                                : weir_ws_remask_text(pl, n, mask, none, 0, WEIR_UTF8_ACCEPT);
    return st == WEIR_UTF8_ACCEPT ? 0 : 1007;
}

/* Message M of a client, forwarded where it lies after its hooks passed
 * it: masked anew for the backend unless it still is (M->masked). */
static inline void
weir_ref_forward(const weir_leg_t *l, const weir_msg_ref_t *m)
{
    if (!l->is_backend && !m->masked) weir_mask_anew((uint8_t *) m->p, m->len);
}

/* Unmask, validate and re-mask one chunk of the current data frame's payload.
 * Returns 0, or 1007 when the text is not UTF-8. */
static unsigned
weir_relay_payload(weir_leg_t *l, uint8_t *p, size_t n)
{
    int text = l->msg_opcode == WEIR_WS_TEXT;
    if (!l->is_backend) {
        if (text) {
            l->utf8 = weir_ws_remask_text(p, n, l->in_mask, l->out_mask, l->frame_off, l->utf8);
            if (l->utf8 == WEIR_UTF8_REJECT) return 1007;
        } else {
            weir_ws_remask(p, n, l->in_mask, l->out_mask, l->frame_off);
        }
    } else if (text) {
        l->utf8 = weir_utf8_step(l->utf8, p, n);
        if (l->utf8 == WEIR_UTF8_REJECT) return 1007;
    }
    return 0;
}

/* Room for NEED bytes in L's message buffer (what it holds is kept). */
static void
weir_msg_room(weir_leg_t *l, size_t need)
{
    if (need <= l->msg_cap) return;
    size_t cap = WEIR_MAX(WEIR_MAX(l->msg_cap * 2, need), (size_t) 4096);
    uint8_t *nb = realloc(l->msg != NULL ? l->msg - WEIR_WS_MAX_HDR : NULL, WEIR_WS_MAX_HDR + cap);
    if (nb == NULL) abort();                 /* bounded by max_message_size */
    l->msg = nb + WEIR_WS_MAX_HDR;
    l->msg_cap = cap;
}

void
weir_relay_msg_free(weir_leg_t *l)
{
    if (l->msg != NULL) free(l->msg - WEIR_WS_MAX_HDR);
    l->msg = NULL;
    l->msg_cap = 0;
}

/* Append a chunk of the current message to L's assembly buffer: unmasked
 * (a client's binary message: masked with msg_key instead), text validated.
 * Returns 0, or 1007 when the text is not UTF-8. */
static unsigned
weir_relay_collect(weir_leg_t *l, const uint8_t *p, size_t n)
{
    weir_msg_room(l, l->msg_fill + n);
    uint8_t *d = l->msg + l->msg_fill;
    if (l->msg_masked) {
        /* a client's binary message: masked anew as copied, in one pass as
         * the plain relay does; unmasked only if something reads it */
        uint8_t k[4];
        for (int i = 0; i < 4; i++)
            k[i] = l->in_mask[(l->frame_off + (uint64_t) i) & 3] ^ l->msg_key[(l->msg_fill + i) & 3];
        weir_ws_mask_copy(d, p, n, k, 0);
    } else if (!l->is_backend) {
        weir_ws_mask_copy(d, p, n, l->in_mask, l->frame_off);     /* unmasked as copied */
    } else {
        memcpy(d, p, n);
    }
    if (l->msg_opcode == WEIR_WS_TEXT) {
        l->utf8 = weir_utf8_step(l->utf8, d, n);
        if (l->utf8 == WEIR_UTF8_REJECT) return 1007;
    }
    l->msg_fill += n;
    return 0;
}

/* A frame hook waits: keep what was read behind its message (in order) and
 * stop reading L until the verdict comes (weir_relay_resolved). */
static void
weir_relay_hold(weir_leg_t *l, const uint8_t *p, size_t rest, unsigned why)
{
    if (rest > 0) {
        l->held = malloc(rest);
        if (l->held == NULL) abort();
        memcpy(l->held, p, rest);
        l->held_len = rest;
    }
    weir_leg_pause(l, why);
}

/* Run what L held (weir_relay_hold) through the relay again, in order; it
 * may be held once more. The caller reads L again when it is not. */
static void
weir_relay_replay(weir_leg_t *l)
{
    uint8_t *h = l->held;
    size_t n = l->held_len;
    l->held = NULL;
    l->held_len = 0;
    if (h != NULL) {
        if (!l->done) weir_relay_process(l, h, n);
        free(h);
    }
}

/* Keep a copy of message M in L's assembly buffer (masked as M is). */
static void
weir_msg_copy(weir_leg_t *l, const weir_msg_ref_t *m)
{
    weir_msg_room(l, m->len);
    memcpy(l->msg, m->p, m->len);
    l->msg_masked = (uint8_t) (m->masked != 0);
    if (m->masked) memcpy(l->msg_key, m->p - 4, 4);
    l->msg_fill = m->len;
}

/*
 * Run the session's inspector on the client's message P[0..N): 1 when it
 * passes, otherwise 0 and V is the refusal (the inspector's error JSON,
 * the message dropped or the connection closed).
 */
static int
weir_relay_inspect(weir_leg_t *l, const uint8_t *p, size_t n, weir_verdict_t *v)
{
    static char json[1024];             /* the verdict's: valid until the next one */
    const weir_inspector_t *in = l->s->inspect;
    int field = -1;
    int rule = weir_inspector_check(in, l->msg_op, p, n, &field);
    if (rule == WEIR_INSPECT_PASS) return 1;
    int code = weir_inspector_close_code(in);
    const char *msg = weir_inspector_text(in, rule, field);
    memset(v, 0, sizeof(*v));
    v->kind = WEIR_V_ERROR;
    v->len = weir_error_json(json, sizeof(json), weir_inspector_problem(in), code ? code : 1008, msg);
    v->payload = json;
    v->code = code;
    v->reason = msg;
    return 0;
}

/*
 * Run what wants L's whole message (in l->view or l->msg): the interceptor
 * first when the client's text holds the session's needle (what it takes,
 * nothing else sees), then the session's inspector (what it refuses, frame
 * hooks never see), then the frame hooks when they assemble this
 * direction; a message read only for the interceptor or the inspector
 * that they pass goes on with no call into the engine.
 */
static int
weir_relay_hook(weir_leg_t *l, weir_verdict_t *v)
{
    weir_session_t *s = l->s;
    /* the message may be masked (l->msg_masked, l->view->masked), but only
     * a binary one: the needle is looked for in text, and the inspector
     * reads no byte of a binary message; the hooks read it through
     * weir_conn_payload */
    const uint8_t *p = l->view != NULL ? l->view->p : l->msg;
    size_t n = l->view != NULL ? l->view->len : l->msg_fill;
    if (!l->is_backend && s->needle != NULL && l->msg_op == WEIR_WS_TEXT && n > 0 && n <= WEIR_SNIFF_MAX
        && weir_find(p, n, (const uint8_t *) s->needle, strlen(s->needle)) != NULL) {
        int rc = s->w->policy->intercept(s, n, v);
        if (rc == WEIR_AGAIN || v->kind != WEIR_V_PASS) return rc;
    }
    if (l->inspect && s->inspect != NULL && !weir_relay_inspect(l, p, n, v)) return WEIR_OK;
    if (l->assemble) return s->w->policy->frame(s, l->is_backend ? 1 : 0, l->msg_op, n, v);
    memset(v, 0, sizeof(*v));
    v->kind = WEIR_V_PASS;
    return WEIR_OK;
}

weir_pend_t weir_pend;

void
weir_relay_pend_flush(void)
{
    weir_pend_t *pd = &weir_pend;
    weir_leg_t *l = pd->src;
    const uint8_t *to = pd->to;
    pd->src = NULL;                     /* the write below does not come back here */
    if (pd->row != NULL) {
        /* the row's messages before the one being run passed as they were
         * (the row stops at any other verdict): masked again for the backend */
        int j = pd->done;
        while (j < pd->n && &pd->row[j] != l->view) j++;
        if (j == pd->n) j = pd->done;   /* no message of the row is being run */
        for (int i = pd->done; i < j; i++)
            weir_ref_forward(l, &pd->row[i]);
        if (j > 0) to = pd->hdr[j];
        pd->done = j;
    }
    weir_leg_t *o = weir_other(l);
    if (to > pd->from && !o->done && !o->close_sent) {
        weir_emit(l, pd->from, to);
        pd->from = to;
    }
    /* the message being run is whole: what went before it is too */
    l->emitted_mid = 0;
    l->msg_out_open = 0;
    pd->src = l;
}

/*
 * A frame hook's message that is one whole frame at FRAME (header length
 * HL) in the read buffer: make it ready in place (weir_open_whole), let the
 * hook read it there, and on a pass leave the frame (masked for the backend) in
 * the range being forwarded; otherwise cut it out of the range (*FROM) and
 * apply the verdict. Returns WEIR_OK, WEIR_AGAIN (the hook waits: the
 * message was copied out, the caller holds the rest) or WEIR_ERROR (L
 * failed and was closed).
 */
static int
weir_relay_inline(weir_leg_t *l, const weir_ws_hdr_t *h, uint8_t *frame, size_t hl, uint8_t **from)
{
    weir_session_t *s = l->s;
    uint8_t *pl = frame + hl;
    size_t n = (size_t) h->len;
    weir_verdict_t v;
    weir_msg_ref_t m;

    l->frames++;
    l->bytes += n;
    s->last_data = uv_now(s->w->loop);
    if (weir_open_whole(l, pl, n, h->opcode, h->mask, &m) != 0) {
        weir_emit(l, *from, frame);
        weir_relay_fail(l, 1007, "invalid UTF-8 in text message", 0, 0);
        return WEIR_ERROR;
    }
    l->msg_op = (uint8_t) h->opcode;
    l->view = &m;
    weir_pend = (weir_pend_t) { .src = l, .from = *from, .to = frame };
    int rc = weir_relay_hook(l, &v);
    *from = (uint8_t *) weir_pend.from;     /* moved on when the hook wrote to the other leg */
    weir_pend.src = NULL;
    l->view = NULL;
    if (rc == WEIR_AGAIN) {
        weir_msg_copy(l, &m);
        l->waiting = 1;
        weir_emit(l, *from, frame);
        *from = pl + n;
        return WEIR_AGAIN;
    }
    if (v.kind == WEIR_V_PASS && weir_forwarding(l)) {
        weir_ref_forward(l, &m);
        return WEIR_OK;
    }
    weir_emit(l, *from, frame);
    *from = pl + n;
    l->emitted_mid = 0;                 /* what went before the message is whole: a close may go */
    l->msg_out_open = 0;
    if (v.kind != WEIR_V_PASS) weir_apply_frame_verdict(l, &v);
    return WEIR_OK;
}

#define WEIR_BATCH_MAX 64       /* messages of one read run by one call into the engine */

/*
 * Frame hooks on a row of L's messages in one call into the engine: the
 * message at FRAME (header H, HL bytes; whole in the buffer) and the whole
 * single-frame data messages after it up to END, at most WEIR_BATCH_MAX,
 * each made ready in place (weir_open_whole). Those that pass stay in the
 * range being forwarded (masked for the backend); the first that does not
 * is cut out of it (*FROM) and its verdict applied; the messages after it
 * are masked back, with the key in their header, for the caller's loop to
 * read again.
 * Returns the end of the last message run; *RC is WEIR_OK, WEIR_AGAIN
 * (its hook waits: the message was copied out, the caller holds the rest)
 * or WEIR_ERROR (L failed and was closed).
 */
static uint8_t *
weir_relay_batch(weir_leg_t *l, const weir_ws_hdr_t *h, uint8_t *frame, size_t hl, uint8_t *end,
                 uint8_t **from, int *rc)
{
    weir_session_t *s = l->s;
    uint64_t max_msg = weir_limits(s)->max_message_size;
    weir_msg_ref_t m[WEIR_BATCH_MAX];
    uint8_t *hdr[WEIR_BATCH_MAX];           /* each message's frame header */
    weir_ws_hdr_t hh = *h;
    uint8_t *q = frame;
    int n = 0;

    for (;;) {
        uint8_t *pl = q + hl;
        size_t len = (size_t) hh.len;
        if (weir_open_whole(l, pl, len, hh.opcode, hh.mask, &m[n]) != 0) {
            if (n == 0) {
                l->frames++;
                l->bytes += len;
                weir_emit(l, *from, frame);
                weir_relay_fail(l, 1007, "invalid UTF-8 in text message", 0, 0);
                *rc = WEIR_ERROR;
                return pl + len;
            }
            if (!l->is_backend) weir_ws_mask(pl, len, hh.mask, 0);     /* read again, and failed, by the loop */
            break;
        }
        hdr[n] = q;
        n++;
        q = pl + len;
        if (n == WEIR_BATCH_MAX || q >= end) break;
        int r = weir_ws_parse_hdr(q, (size_t) (end - q), &hh);
        if (r <= 0 || hh.rsv || hh.masked == l->is_backend || !hh.fin
            || (hh.opcode != WEIR_WS_TEXT && hh.opcode != WEIR_WS_BINARY) || hh.len > max_msg
            || (uint64_t) (end - q) < (uint64_t) r + hh.len)
            break;
        hl = (size_t) r;
    }

    int k = 0;
    weir_verdict_t v;
    weir_pend = (weir_pend_t) { .src = l, .from = *from, .to = frame, .row = m, .hdr = hdr, .n = n };
    *rc = s->w->policy->frames(s, l->is_backend ? 1 : 0, m, n, &k, &v);
    *from = (uint8_t *) weir_pend.from;     /* moved on when a hook wrote to the other leg */
    int done = weir_pend.done;              /* the messages written then, masked again */
    weir_pend.src = NULL;
    l->view = NULL;
    int stopped = *rc == WEIR_OK && k < n && v.kind == WEIR_V_PASS;     /* k and after not run */
    int ran = k < n && !stopped ? k + 1 : k;  /* the messages whose hooks ran */
    for (int i = 0; i < ran; i++) {
        if (i > 0) {                        /* the first was counted as its header was read */
            l->messages++;
            l->binary += m[i].opcode == WEIR_WS_BINARY;
        }
        l->frames++;
        l->bytes += m[i].len;
    }
    s->last_data = uv_now(s->w->loop);
    for (int i = ran; i < n; i++)             /* its key is before it (binary: its new one) */
        if (!l->is_backend && !m[i].masked) weir_ws_mask((uint8_t *) m[i].p, m[i].len, m[i].p - 4, 0);
    uint8_t *last = (uint8_t *) m[ran - 1].p + m[ran - 1].len;

    if (!weir_forwarding(l)) {
        /* a hook closed the connection: nothing of the row goes on */
        weir_emit(l, *from, frame);
        *from = last;
        if (*rc == WEIR_AGAIN) {
            weir_msg_copy(l, &m[k]);
            l->msg_op = (uint8_t) m[k].opcode;
            l->waiting = 1;
        } else if (k < n && !stopped) {
            l->msg_op = (uint8_t) m[k].opcode;
            weir_apply_frame_verdict(l, &v);
        }
        return last;
    }
    for (int i = done; i < k; i++)
        weir_ref_forward(l, &m[i]);
    if (k == n || stopped) return last;
    weir_emit(l, *from, hdr[k]);
    *from = last;
    l->msg_op = (uint8_t) m[k].opcode;
    if (*rc == WEIR_AGAIN) {
        weir_msg_copy(l, &m[k]);
        l->waiting = 1;
        return last;
    }
    weir_apply_frame_verdict(l, &v);
    return last;
}

/*
 * The common case of a direction that no hook, rate limit or inspection
 * reads, between messages: a row of whole data messages of one frame each,
 * all in the buffer from P. Each is checked (text: UTF-8) and, from a
 * client, masked anew where it lies; the row stays in the range being
 * forwarded. Returns where the row ends (at the first frame it leaves to
 * the general loop: any other frame, or one cut by the read), or NULL when
 * a text was not UTF-8: L failed, with what came before that message
 * written (FROM is the start of the range). NOW is the loop's time.
 */
static uint8_t *
weir_relay_plain_row(weir_leg_t *l, uint8_t *p, uint8_t *end, const uint8_t *from, uint64_t max_msg,
                     uint64_t now)
{
    uint64_t frames = 0, bytes = 0, binary = 0, last = 0;
    int bad = 0;
    while (p < end) {
        weir_ws_hdr_t h;
        int hl = weir_ws_parse_hdr(p, (size_t) (end - p), &h);
        if (hl <= 0 || !h.fin || h.rsv || h.masked == l->is_backend
            || (h.opcode != WEIR_WS_TEXT && h.opcode != WEIR_WS_BINARY) || h.len > max_msg
            || (uint64_t) (end - p) - (uint64_t) hl < h.len)
            break;
        uint8_t *pl = p + hl;
        size_t n = (size_t) h.len;
        int text = h.opcode == WEIR_WS_TEXT;
        if (!l->is_backend && !text) {
            weir_remask_anew(pl, n, h.mask);
        } else if (!l->is_backend) {
            weir_ws_random(pl - 4, 4);      /* the new key over the header's: h has its copy */
            bad = weir_ws_remask_text(pl, n, h.mask, pl - 4, 0, WEIR_UTF8_ACCEPT) != WEIR_UTF8_ACCEPT;
        } else if (text) {
            bad = weir_utf8_step(WEIR_UTF8_ACCEPT, pl, n) != WEIR_UTF8_ACCEPT;
        }
        frames++;
        bytes += n;
        binary += !text;
        last = n;
        if (bad) {
            end = p;                    /* what went before it is whole */
            break;
        }
        p = pl + n;
    }
    if (frames > 0) {
        /* the state the general loop leaves after such a message */
        l->frames += frames;
        l->messages += frames;
        l->bytes += bytes;
        l->binary += binary;
        l->s->last_data = now;
        l->assemble = l->sniff = l->inspect = l->throttled = l->collect = 0;
        l->fwd_frame = l->frame_fin = 1;
        l->msg_frames = 1;
        l->msg_len = 0;
        l->frame_off = last;
        l->utf8 = WEIR_UTF8_ACCEPT;
    }
    if (bad) {
        weir_emit(l, from, end);
        weir_relay_fail(l, 1007, "invalid UTF-8 in text message", 0, 0);
        return NULL;
    }
    return p;
}

/*
 * Relay the bytes BUF[0..LEN) read from L (writable: validated and
 * re-masked in place). Whole frames and the streamed part of the current
 * one go to the other leg as one write; an incomplete header or control
 * frame at the end is kept in L's stash for the next read.
 */
static void
weir_relay_frames(weir_leg_t *l, uint8_t *buf, size_t len)
{
    weir_session_t *s = l->s;
    weir_leg_t *o = weir_other(l);
    uint64_t max_msg = weir_limits(s)->max_message_size;
    uint8_t *p = buf, *end = buf + len, *from = buf;
    uint8_t *frame = NULL;          /* header of the current frame, when in BUF */
    weir_ws_hdr_t h;
    uint64_t now = uv_now(s->w->loop);      /* the loop's time: the same for every frame of the read */

    /* nothing reads this direction's messages: rows of them take the short way */
    int plain = s->thr == NULL && !l->assemble_next && (l->is_backend || (s->needle == NULL && s->inspect == NULL));

    weir_throttle_now_us = 0;       /* the frames of one read share one time: read once, if needed */
    while (p < end) {
        if (plain && l->remaining == 0 && l->msg_opcode == 0 && weir_forwarding(l)) {
            p = weir_relay_plain_row(l, p, end, from, max_msg, now);
            if (p == NULL) return;
            if (p == end) break;
        }
        if (l->remaining > 0) {
            size_t take = (size_t) WEIR_MIN(l->remaining, (uint64_t) (end - p));
            if (l->collect) {
                if (weir_relay_collect(l, p, take) != 0) {
                    weir_emit(l, from, frame ? frame : from);
                    weir_relay_fail(l, 1007, "invalid UTF-8 in text message", 0, 0);
                    return;
                }
            } else if (l->fwd_frame) {
                if (weir_relay_payload(l, p, take) != 0) {
                    weir_emit(l, from, frame ? frame : from);
                    weir_relay_fail(l, 1007, "invalid UTF-8 in text message", frame == NULL && l->emitted_mid,
                                    frame == NULL || l->msg_frames > 1);
                    return;
                }
            }
            p += take;
            l->remaining -= take;
            l->frame_off += take;
            if (!l->fwd_frame) from = p;
            if (l->remaining > 0) break;
            goto frame_end;
        }

        frame = p;
        int hl = weir_ws_parse_hdr(p, (size_t) (end - p), &h);
        if (hl == 0) break;
        const char *bad = NULL;
        unsigned code = 1002;
        if (hl < 0) bad = "invalid payload length";
        else if (h.rsv) bad = "reserved bits set";
        else if (h.masked == l->is_backend) bad = l->is_backend ? "masked frame from backend" : "unmasked frame";
        else if ((h.opcode & 7) > 2) bad = "reserved opcode";
        else if ((h.opcode & 8) && (!h.fin || h.len > WEIR_WS_MAX_CONTROL)) bad = "invalid control frame";
        else if (h.opcode == WEIR_WS_CONT && l->msg_opcode == 0) bad = "continuation without a message";
        else if ((h.opcode == WEIR_WS_TEXT || h.opcode == WEIR_WS_BINARY) && l->msg_opcode != 0)
            bad = "new message inside a fragmented one";
        else if (!(h.opcode & 8) && h.len > max_msg - (h.opcode == WEIR_WS_CONT ? l->msg_len : 0)) {
            bad = "message too big";
            code = 1009;
        }
        if (bad != NULL) {
            weir_emit(l, from, frame);
            weir_relay_fail(l, code, bad, 0, l->msg_opcode != 0 && l->fwd_frame);
            return;
        }

        if (h.opcode & 8) {
            /* control frames are handled whole */
            if ((uint64_t) (end - p) < (uint64_t) hl + h.len) break;
            uint8_t *pl = p + hl;
            size_t n = (size_t) h.len;
            if (!l->is_backend) weir_ws_mask(pl, n, h.mask, 0);
            int fwd = weir_forwarding(l);
            if (h.opcode == WEIR_WS_CLOSE) {
                unsigned cc = n >= 2 ? ((unsigned) pl[0] << 8) | pl[1] : 0;
                if (n == 1 || (n >= 2 && !weir_ws_close_code_valid(cc))) bad = "invalid close code";
                else if (n > 2 && weir_utf8_step(WEIR_UTF8_ACCEPT, pl + 2, n - 2) != WEIR_UTF8_ACCEPT) {
                    bad = "invalid UTF-8 in close reason";
                    code = 1007;
                }
                if (bad != NULL) {
                    weir_emit(l, from, frame);
                    weir_relay_fail(l, code, bad, 0, l->msg_opcode != 0 && l->fwd_frame);
                    return;
                }
                fwd = weir_relay_close(l, pl, n);
            } else if (h.opcode == WEIR_WS_PONG && l->ping_sent && n == WEIR_PING_TOKEN_LEN
                       && weir_ping_matches(l, pl)) {
                l->ping_sent = 0;           /* the answer to weir's keep-alive */
                fwd = 0;
            } else if (h.opcode == WEIR_WS_PING && s->local && !l->close_sent) {
                weir_leg_send_control(l, WEIR_WS_PONG, pl, n);     /* no backend to answer it */
            }
            if (fwd && !l->is_backend) weir_mask_anew(pl, n);
            p += (size_t) hl + n;
            if (!fwd) {
                weir_emit(l, from, frame);
                from = p;
            }
            if (h.opcode == WEIR_WS_CLOSE) {
                /* nothing after a close frame counts; a close that answers
                 * O's is the last O gets: its FIN may go with it */
                if (fwd && o->close_rcvd && !o->done) o->finish = 1;
                weir_emit(l, from, p);
                from = p = end;
                weir_leg_fail(o);               /* when it broke the protocol and waited for this close */
                if (fwd && o->close_rcvd) weir_leg_finish(o);
                if (!fwd && !l->close_sent) weir_leg_send_close(l, l->rcvd_code, NULL, NULL);
                else if (l->close_sent) weir_leg_finish(l);
                break;
            }
            frame = NULL;
            continue;
        }

        /* a data frame: validate and forward its header, then stream its payload */
        int whole;      /* the message is read whole (assemble, sniff or inspect): a local,
                         * since a wide read of the flags just stored would stall */
        if (h.opcode != WEIR_WS_CONT) {
            uint8_t assemble = l->assemble_next;    /* a reload changes it between messages only */
            uint8_t sniff = !l->is_backend && !assemble && s->needle != NULL && h.opcode == WEIR_WS_TEXT
                            && h.fin && h.len <= WEIR_SNIFF_MAX;
            uint8_t inspect = !l->is_backend && s->inspect != NULL
                              && weir_inspector_wants(s->inspect, h.opcode, h.fin, h.len);
            whole = assemble || sniff || inspect;
            if (l->cut_ok && whole && h.fin && (uint64_t) (end - p) < (uint64_t) hl + h.len
                && (uint64_t) hl + h.len <= WEIR_RBUF_SIZE && weir_hooked(l)) {
                /* read whole, but cut by the read, and the socket not drained: it
                 * is left for the next read, which goes on behind it, so that it
                 * is read where it lies instead of assembled (weir_relay_read) */
                l->cut = (uint32_t) (end - p);
                end = p;
                break;
            }
            l->throttled = 0;
            if (s->thr != NULL && weir_forwarding(l)) {
                /* rate limits decide on a message's first frame, for the whole message */
                int rc = weir_throttle_check(l, &h, frame, end, &from);
                if (rc == WEIR_ERROR || l->done) return;
                if (rc == WEIR_AGAIN) {
                    l->emitted_mid = 0;
                    l->msg_out_open = 0;
                    if (!o->done && o->inject_len > 0) weir_leg_flush_inject(o);
                    return;
                }
            }
            l->assemble = assemble;
            l->sniff = sniff;
            l->inspect = inspect;
            l->msg_opcode = (uint8_t) h.opcode;
            l->messages++;
            l->binary += h.opcode == WEIR_WS_BINARY;
            l->msg_len = 0;
            l->msg_frames = 0;
            l->utf8 = WEIR_UTF8_ACCEPT;
        } else {
            if (s->thr != NULL && !l->throttled && weir_forwarding(l))
                weir_throttle_more(l, h.len);  /* a passed message's continuation: charged, never cut */
            whole = l->assemble || l->sniff || l->inspect;
        }
        l->msg_frames++;
        l->msg_len += h.len;
        if (h.fin && h.opcode != WEIR_WS_CONT && whole && weir_hooked(l)
            && !l->throttled
            && (uint64_t) (end - p) >= (uint64_t) hl + h.len) {
            /* the whole message is this one frame, all in this buffer: the
             * hook reads it where it is, and a pass forwards it in place;
             * with the messages after it in the buffer when only the frame
             * hooks want them */
            int rc;
            if (l->assemble && s->thr == NULL && (l->is_backend || (s->needle == NULL && s->inspect == NULL))
                && weir_forwarding(l) && s->w->policy->frames != NULL) {
                p = weir_relay_batch(l, &h, frame, (size_t) hl, end, &from, &rc);
            } else {
                rc = weir_relay_inline(l, &h, frame, (size_t) hl, &from);
                p += (size_t) hl + (size_t) h.len;
            }
            l->msg_opcode = 0;
            l->msg_len = 0;
            if (rc == WEIR_ERROR || l->done) return;
            if (rc == WEIR_AGAIN) {
                weir_relay_hold(l, p, (size_t) (end - p), WEIR_PAUSE_POLICY);
                return;
            }
            frame = NULL;
            continue;
        }
        l->fwd_frame = (unsigned) weir_forwarding(l) && !whole && !l->throttled;
        l->collect = whole && weir_hooked(l) && !l->throttled;
        if (l->collect && h.opcode != WEIR_WS_CONT) {
            l->msg_fill = 0;
            l->msg_op = (uint8_t) h.opcode;
            /* a client's binary message is kept masked for the backend: no
             * UTF-8 to check, and a hook may never read it (weir_msg_plain) */
            l->msg_masked = !l->is_backend && h.opcode == WEIR_WS_BINARY;
            if (l->msg_masked) weir_ws_random(l->msg_key, 4);
        }
        l->frame_fin = h.fin;
        l->remaining = h.len;
        l->frame_off = 0;
        l->frames++;
        l->bytes += h.len;
        s->last_data = now;
        if (!l->is_backend) {
            memcpy(l->in_mask, h.mask, 4);
            if (l->fwd_frame) {             /* only frames forwarded as read need a key */
                weir_ws_random(l->out_mask, 4);
                memcpy(p + hl - 4, l->out_mask, 4);
            }
        }
        p += hl;
        if (!l->fwd_frame) {
            weir_emit(l, from, frame);
            from = p;
        }
        if (h.len > 0) continue;

frame_end:
        if (l->frame_fin) {
            int bad_text = (l->fwd_frame || l->collect) && l->msg_opcode == WEIR_WS_TEXT
                           && l->utf8 != WEIR_UTF8_ACCEPT;
            l->msg_opcode = 0;
            l->msg_len = 0;
            if (bad_text) {
                weir_emit(l, from, frame ? frame : from);
                weir_relay_fail(l, 1007, "invalid UTF-8 in text message", frame == NULL && l->emitted_mid,
                                frame == NULL || l->msg_frames > 1);
                return;
            }
            if (l->collect) {
                /* a whole message for the frame hook: what came before it goes first */
                l->collect = 0;
                weir_emit(l, from, p);
                from = p;
                if (weir_relay_message(l) == WEIR_AGAIN) {
                    weir_relay_hold(l, p, (size_t) (end - p), WEIR_PAUSE_POLICY);
                    return;
                }
                if (l->done) return;
            }
        }
        frame = NULL;
    }

    weir_emit(l, from, p);
    l->emitted_mid = l->remaining > 0 && l->fwd_frame;
    l->msg_out_open = l->msg_opcode != 0 && l->fwd_frame;
    if (!o->done && o->inject_len > 0 && !l->emitted_mid && !l->msg_out_open) weir_leg_flush_inject(o);
    size_t left = (size_t) (end - p);
    if (left > 0) {
        /* an incomplete header or control frame: at most WEIR_STASH_SIZE by construction */
        if (l->stash == NULL && (l->stash = malloc(WEIR_STASH_SIZE)) == NULL) abort();
        memmove(l->stash, p, left);
        l->nstash = (uint8_t) left;
    }
}

void
weir_relay_process(weir_leg_t *l, uint8_t *buf, size_t len)
{
    weir_worker_t *w = l->s->w;
    weir_leg_t *o = weir_other(l);
    w->in_relay++;
    weir_relay_frames(l, buf, len);
    w->in_relay--;
    if (o->unsent) {
        o->unsent = 0;
        weir_leg_flush(o);
    }
    if (l->unsent) {
        l->unsent = 0;
        weir_leg_flush(l);
    }
}

/*
 * Read what L's peer sent, up to 16 reads, and relay it. A message a hook
 * or check reads whole that a read cuts (weir_relay_frames leaves it, when
 * CUT_OK: the socket may hold its rest) stays in the read buffer, and the
 * next read goes on behind it: read whole in one place, it is not copied
 * out and assembled. When the socket runs dry first, or the reads end
 * another way, the bytes left are relayed as any cut message is, into the
 * leg's message buffer.
 */
void
weir_relay_read(weir_leg_t *l)
{
    weir_session_t *s = l->s;
    weir_worker_t *w = s->w;
    weir_leg_t *o = weir_other(l);
    size_t ceiling = (size_t) weir_limits(s)->buffer_size;
    uint8_t *cut = NULL;            /* the message the last read cut, NCUT bytes of it */
    size_t ncut = 0;
    const char *gone = NULL;
    int round;

    for (round = 0; round < 16; round++) {
        if (l->done) return;
        if (l->lingering || l->fail_code) {
            /* a peer that broke the protocol is read only to drop what it sends */
            weir_linger_read(l);
            return;
        }
        if (l->paused) break;
        size_t room = WEIR_RBUF_SIZE;
        if (weir_forwarding(l)) {
            if (o->out_len + 1024 > ceiling) {
                weir_leg_pause(l, WEIR_PAUSE_PEER_FULL);
                break;
            }
            room = WEIR_MIN(room, ceiling - o->out_len);
        } else if (s->local && l->out_len + l->inject_len + 1024 > ceiling) {
            /* weir's own answers to a page that does not read them: no more
             * requests are read until its queue drains (weir_leg_flush) */
            weir_leg_pause(l, WEIR_PAUSE_PEER_FULL);
            break;
        }
        uint8_t *buf = w->rbuf;
        size_t before = l->nstash;
        if (ncut > 0) {
            /* behind the cut message; moved to the front when the read would not fit */
            if (cut + ncut + room > w->rbuf + WEIR_RBUF_ALLOC) memmove(w->rbuf, cut, ncut);
            else buf = cut;
            before = ncut;
        } else if (before > 0) {
            memcpy(buf, l->stash, before);
        }
        ssize_t n = weir_leg_recv(l, buf + before, room);
        if (n == WEIR_AGAIN) break;
        if (n <= 0) {
            gone = n == 0 ? "end of stream" : "read error";
            break;
        }
        l->last_rx = uv_now(w->loop);
        if (ncut == 0 && before > 0) {
            /* idle connections hold no stash: it is made again at the next split */
            free(l->stash);
            l->stash = NULL;
            l->nstash = 0;
        }
        ncut = 0;
        /* a plain socket that filled the read may hold more; TLS reads a record at a time */
        l->cut_ok = round < 15 && (l->ssl != NULL || (size_t) n == room);
        weir_relay_process(l, buf, before + (size_t) n);
        l->cut_ok = 0;
        if (l->cut > 0) {
            ncut = l->cut;
            cut = buf + before + (size_t) n - ncut;
            l->cut = 0;
        }
        if (l->done) return;
        if (!o->done && o->out_len + 1024 > ceiling && weir_forwarding(l)) {
            weir_leg_pause(l, WEIR_PAUSE_PEER_FULL);
            break;
        }
        if (l->ssl == NULL && (size_t) n < room) return;   /* the socket is drained (nothing was cut) */
    }
    if (ncut > 0) {
        weir_relay_process(l, cut, ncut);
        if (l->done) return;
    }
    if (gone != NULL) weir_leg_gone(l, gone);
    else if (round == 16 && l->ssl != NULL && SSL_pending(l->ssl) > 0) weir_ready_add(l);
}


/* ---- rate limits -------------------------------------------------------- */

struct weir_throttle_s {
    weir_session_t   *s;
    weir_limit_ref_t *refs;             /* n of them, charged by both legs */
    int               n;
    uint8_t           action[2];        /* [0] client's messages, [1] backend's: WEIR_THROTTLE_* */
    uint64_t          debt[2];          /* continuation bytes a bucket could not take, charged next */
    uint64_t          notice_us;        /* when the client was last told it is throttled, 0: never */
    uint64_t          due_ms;           /* a delayed leg is tried again then (loop time) */
    weir_throttle_t  *dprev, *dnext;    /* the worker's delayed sessions */
    unsigned          listed:1;         /* on that list */
};

static uint64_t
weir_throttle_now(void)
{
    if (weir_throttle_now_us == 0) weir_throttle_now_us = weir_limits_now_us();
    return weir_throttle_now_us;
}

/* The worker's sessions with a delayed leg, and the one timer that wakes them. */
static weir_throttle_t *weir_delayed;
static uv_timer_t       weir_delay_timer;
static uv_loop_t       *weir_delay_loop;

static void weir_throttle_wake(uv_timer_t *t);

/* Arm the delay timer for the earliest due session. */
static void
weir_throttle_arm(uv_loop_t *loop)
{
    uint64_t first = UINT64_MAX;
    if (weir_delay_loop == NULL) {
        uv_timer_init(loop, &weir_delay_timer);
        weir_delay_loop = loop;
    }
    for (weir_throttle_t *t = weir_delayed; t != NULL; t = t->dnext)
        if (t->due_ms < first) first = t->due_ms;
    if (first == UINT64_MAX) {
        uv_timer_stop(&weir_delay_timer);
        return;
    }
    uint64_t now = uv_now(loop);
    uv_timer_start(&weir_delay_timer, weir_throttle_wake, first > now ? first - now : 0, 0);
}

static void
weir_throttle_unlist(weir_throttle_t *t)
{
    if (!t->listed) return;
    if (t->dprev) t->dprev->dnext = t->dnext;
    else weir_delayed = t->dnext;
    if (t->dnext) t->dnext->dprev = t->dprev;
    t->dprev = t->dnext = NULL;
    t->listed = 0;
}

/* L's held input goes through the relay again: its first message is
 * decided anew (and may be held again). */
static void
weir_throttle_release(weir_leg_t *l)
{
    l->delayed = 0;
    weir_relay_replay(l);
    if (!l->delayed && !l->done) weir_leg_resume(l, WEIR_PAUSE_THROTTLE);
}

static void
weir_throttle_wake(uv_timer_t *timer)
{
    uint64_t now = uv_now(timer->loop);
    weir_throttle_t *due = NULL;
    /* take the due sessions off the list first: releasing one may list it again */
    for (weir_throttle_t *t = weir_delayed, *next; t != NULL; t = next) {
        next = t->dnext;
        if (t->due_ms > now) continue;
        weir_throttle_unlist(t);
        t->dnext = due;
        due = t;
    }
    while (due != NULL) {
        weir_throttle_t *t = due;
        due = t->dnext;
        t->dnext = NULL;
        weir_session_t *s = t->s;
        if (s->client.delayed) weir_throttle_release(&s->client);
        /* the session may be closing now, never freed during this callback */
        if (s->backend.delayed) weir_throttle_release(&s->backend);
    }
    weir_throttle_arm(timer->loop);
}

int
weir_relay_limit(weir_session_t *s, const char *key, size_t len, const weir_limit_spec_t *spec, int action_in,
                 int action_out, char *err, size_t errlen)
{
    weir_throttle_t *t = s->thr;
    if (t != NULL && t->n >= WEIR_LIMITS_MAX_REFS) {
        snprintf(err, errlen, "more than %d limits on one connection", WEIR_LIMITS_MAX_REFS);
        return WEIR_ERROR;
    }
    if (action_in < 0 || action_in > WEIR_THROTTLE_CLOSE || action_out < 0 || action_out > WEIR_THROTTLE_CLOSE) {
        snprintf(err, errlen, "unknown action");
        return WEIR_ERROR;
    }
    weir_limit_ref_t ref;
    if (weir_limit_resolve(&ref, key, len, spec, weir_limits_now_us(), err, errlen) != WEIR_OK) return WEIR_ERROR;
    weir_sync_hold(&ref, key, len);             /* released in weir_relay_throttle_free */
    if (t == NULL) {
        t = calloc(1, sizeof(*t));
        if (t == NULL) abort();
        t->s = s;
        s->thr = t;
    }
    weir_limit_ref_t *nr = realloc(t->refs, (size_t) (t->n + 1) * sizeof(*nr));
    if (nr == NULL) abort();
    t->refs = nr;
    t->refs[t->n++] = ref;
    /* the strictest action of a direction applies: close > drop > delay */
    int a[2] = { action_in ? action_in : WEIR_THROTTLE_DROP, action_out ? action_out : WEIR_THROTTLE_DELAY };
    for (int i = 0; i < 2; i++)
        if (a[i] > t->action[i]) t->action[i] = (uint8_t) a[i];
    return WEIR_OK;
}

void
weir_relay_throttle_free(weir_session_t *s)
{
    weir_throttle_t *t = s->thr;
    if (t == NULL) return;
    weir_throttle_unlist(t);
    for (int i = 0; i < t->n; i++) weir_sync_release(&t->refs[i]);
    free(t->refs);
    free(t);
    s->thr = NULL;
}

/* The throttled error JSON, with RETRY_US as "retry_after" (seconds, rounded
 * up to the millisecond) in the error object. */
static size_t
weir_throttle_json(char *buf, size_t cap, int code, uint64_t retry_us)
{
    char tmp[768];
    weir_error_json(tmp, sizeof(tmp), "/problems/throttled", code, "Message rate limit exceeded");
    const char *cut = strstr(tmp, "},\"timestamp\"");
    if (cut == NULL) return 0;
    uint64_t ms = (retry_us + 999) / 1000;
    int k = snprintf(buf, cap, "%.*s,\"retry_after\":%llu.%03llu%s", (int) (cut - tmp), tmp,
                     (unsigned long long) (ms / 1000), (unsigned long long) (ms % 1000), cut);
    return k < 0 || (size_t) k >= cap ? 0 : (size_t) k;
}

/* Bytes of a continuation frame of L's current (passed) message: charged
 * now, or owed when the bucket cannot take them. */
static void
weir_throttle_more(weir_leg_t *l, uint64_t bytes)
{
    weir_throttle_t *t = l->s->thr;
    int d = l->is_backend;
    if (bytes == 0) return;
    if (weir_limits_take(t->refs, t->n, d ? WEIR_LIMIT_OUT : WEIR_LIMIT_IN, 0, bytes, weir_throttle_now(), NULL)
        != WEIR_OK)
        t->debt[d] += bytes;
}

/*
 * The first frame of a data message from L (header H at FRAME, the rest of
 * the read up to END) meets S's rate limits. Returns WEIR_OK (it passes),
 * WEIR_DECLINED (it is dropped: l->throttled set), WEIR_AGAIN (L is delayed:
 * what was read from FRAME on is held, the caller stops) or WEIR_ERROR (L
 * failed and was closed: the caller stops). Bytes before FRAME are written
 * first whenever the frame does not pass.
 */
static int
weir_throttle_check(weir_leg_t *l, const weir_ws_hdr_t *h, uint8_t *frame, uint8_t *end, uint8_t **from)
{
    weir_session_t *s = l->s;
    weir_throttle_t *t = s->thr;
    int d = l->is_backend;
    uint64_t now = weir_throttle_now(), retry = 0;
    int dir = d ? WEIR_LIMIT_OUT : WEIR_LIMIT_IN;

    if (weir_limits_take(t->refs, t->n, dir, 1, h->len + t->debt[d], now, &retry) == WEIR_OK) {
        t->debt[d] = 0;
        l->held_over = 0;
        return WEIR_OK;
    }
    if (retry == WEIR_LIMIT_NEVER && t->debt[d] > 0) {
        /* what is owed and this message together exceed a burst: forgive the debt */
        t->debt[d] = 0;
        if (weir_limits_take(t->refs, t->n, dir, 1, h->len, now, &retry) == WEIR_OK) {
            l->held_over = 0;
            return WEIR_OK;
        }
    }
    /* over a limit: counted once, however often a delayed message is tried again */
    if (!l->held_over) l->over_limit++;
    l->held_over = 0;
    weir_emit(l, *from, frame);
    *from = frame;
    if (retry == WEIR_LIMIT_NEVER) {
        /* more than a burst: it would never pass */
        weir_relay_fail(l, 1009, "message larger than a rate limit's burst", 0, 0);
        return WEIR_ERROR;
    }
    if (t->action[d] == WEIR_THROTTLE_DELAY) {
        weir_relay_hold(l, frame, (size_t) (end - frame), WEIR_PAUSE_THROTTLE);
        l->delayed = 1;
        l->held_over = 1;
        t->due_ms = weir_now(s) + retry / 1000 + 1;
        if (!t->listed) {
            t->dnext = weir_delayed;
            if (weir_delayed) weir_delayed->dprev = t;
            weir_delayed = t;
            t->listed = 1;
        }
        weir_throttle_arm(s->w->loop);
        return WEIR_AGAIN;
    }
    l->throttled = 1;
    char json[1024];
    if (t->action[d] == WEIR_THROTTLE_CLOSE) {
        size_t jl = weir_throttle_json(json, sizeof(json), 1008, retry);
        weir_log(WEIR_LOG_INFO, "throttled", "\"conn\":\"%s\",\"side\":\"%s\",\"action\":\"close\"", s->name,
                 d ? "backend" : "client");
        weir_note_close(s, 1008, 'w');
        weir_leg_close_with(&s->client, 1008, "throttled", jl ? json : NULL, jl);
        weir_leg_send_close(&s->backend, 1001, "client closed: throttled", NULL);
        return WEIR_DECLINED;
    }
    if (t->notice_us == 0 || now - t->notice_us >= 1000000) {
        /* at most one a second: a flood must not become a reverse flood */
        t->notice_us = now;
        size_t jl = weir_throttle_json(json, sizeof(json), 429, retry);
        if (jl > 0 && !s->client.done && !s->client.close_sent)
            weir_leg_message(&s->client, WEIR_WS_TEXT, (const uint8_t *) json, jl);
    }
    return WEIR_DECLINED;
}

/* ---- whole messages for frame hooks, and their verdicts ----------------- */

void
weir_log_policy_failure(weir_session_t *s, const weir_verdict_t *v)
{
    char e[512], pn[128], h[64];
    weir_stats_policy_error(s, v->reason);
    weir_log(WEIR_LOG_ERROR, "policy failed", "\"conn\":\"%s\",\"policy\":\"%s\",\"hook\":%s,\"error\":\"%s\"",
             s->name, weir_log_str(pn, sizeof(pn), v->reason ? v->reason : "?"), weir_log_opt(h, sizeof(h), v->hook),
             weir_log_str(e, sizeof(e), v->payload ? v->payload : ""));
    if (s->an) weir_analytics_policy_error(s, v);
}

/* Apply a frame hook's verdict on L's assembled message. */
static void
weir_apply_frame_verdict(weir_leg_t *l, const weir_verdict_t *v)
{
    weir_session_t *s = l->s;
    weir_leg_t *o = weir_other(l), *c = &s->client;
    int fwd = !l->discard && !o->done && !o->close_sent;

    switch (v->kind) {
    case WEIR_V_PASS:
        /* not read again: framed where it lies */
        if (fwd) weir_leg_message_own(o, l->msg_op, l->msg, l->msg_fill, l->msg_masked ? l->msg_key : NULL);
        break;
    case WEIR_V_REPLACE:
        if (fwd) weir_leg_message(o, l->msg_op, (const uint8_t *) v->payload, v->len);
        break;
    case WEIR_V_REPLY:
        weir_leg_message(l, v->code == WEIR_WS_BINARY ? WEIR_WS_BINARY : WEIR_WS_TEXT,
                         (const uint8_t *) v->payload, v->len);
        break;
    case WEIR_V_ERROR:
        if (v->code) {
            weir_note_close(s, (unsigned) v->code, 'w');
            weir_leg_close_with(c, (unsigned) v->code, v->reason, v->payload, v->len);
            weir_leg_send_close(&s->backend, 1001, "client closed by policy", NULL);
        } else {
            weir_leg_message(c, WEIR_WS_TEXT, (const uint8_t *) v->payload, v->len);
        }
        break;
    case WEIR_V_FAIL:
        weir_log_policy_failure(s, v);
        weir_note_close(s, 1011, 'w');
        weir_leg_send_close(c, 1011, "internal error", "/problems/internal-error");
        weir_leg_send_close(&s->backend, 1001, "client closed: internal error", NULL);
        break;
    default:
        break;
    }
    l->msg_fill = 0;
    l->msg_masked = 0;
    if (l->msg_cap > 65536) weir_relay_msg_free(l);
}

/* L's message is complete: run the frame hook. WEIR_AGAIN when it waits. */
static int
weir_relay_message(weir_leg_t *l)
{
    weir_verdict_t v;
    if (weir_relay_hook(l, &v) == WEIR_AGAIN) {
        l->waiting = 1;
        return WEIR_AGAIN;
    }
    weir_apply_frame_verdict(l, &v);
    return WEIR_OK;
}

void
weir_relay_resolved(weir_leg_t *l, const weir_verdict_t *v)
{
    if (!l->waiting || l->done) return;
    l->waiting = 0;
    weir_apply_frame_verdict(l, v);

    /* what arrived behind the message, in order, then read again */
    weir_relay_replay(l);
    if (!l->waiting && !l->done) weir_leg_resume(l, WEIR_PAUSE_POLICY);
}
