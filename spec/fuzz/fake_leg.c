/*
 * fake_leg.c — core/leg.c's functions for the frame harnesses (see
 * fake_leg.h): no sockets and no loop, just buffers and flags, so that
 * core/relay.c can be run on bytes alone.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_leg.h"
#include "limit_sync.h"
#include "log.h"

fz_fake_t fz;

static uv_loop_t      fz_loop;
static weir_conf_t    fz_conf;
static weir_worker_t  fz_worker;
static weir_policy_ops_t fz_ops;
static const uint8_t  fz_mask[4] = { 0x5a, 0xa5, 0x0f, 0xf0 };

static void
fz_out(weir_leg_t *l, const uint8_t *p, size_t n)
{
    int i = l->is_backend;
    if (fz.out_len[i] + n > fz.out_cap[i]) {
        size_t cap = fz.out_cap[i] * 2 + n + 256;
        uint8_t *nb = realloc(fz.out[i], cap);
        if (nb == NULL) abort();
        fz.out[i] = nb;
        fz.out_cap[i] = cap;
    }
    if (n > 0) memcpy(fz.out[i] + fz.out_len[i], p, n);
    fz.out_len[i] += n;
}

/* A frame of weir's own to L, masked towards a backend, as leg.c frames it. */
static void
fz_frame(weir_leg_t *l, int opcode, const uint8_t *p, size_t n)
{
    uint8_t hdr[WEIR_WS_MAX_HDR];
    size_t hl = weir_ws_build_hdr(hdr, 1, opcode, n, l->is_backend ? fz_mask : NULL);
    fz_out(l, hdr, hl);
    size_t at = fz.out_len[l->is_backend];
    fz_out(l, p, n);
    if (l->is_backend) weir_ws_mask(fz.out[1] + at, n, fz_mask, 0);
}

/* ---- the policy engine ------------------------------------------------- */

static const char fz_replacement[] = "replaced";

static int
fz_frame_hook(weir_session_t *s, int dir, int opcode, size_t len, weir_verdict_t *v)
{
    (void) s, (void) dir, (void) opcode;
    unsigned kind = fz.hook == FZ_HOOK_VARY ? (unsigned) ((fz.hook_calls + len) % FZ_HOOK_VARY) : fz.hook;
    fz.hook_calls++;
    memset(v, 0, sizeof(*v));
    switch (kind) {
    case FZ_HOOK_DROP:    v->kind = WEIR_V_DROP; break;
    case FZ_HOOK_REPLACE: v->kind = WEIR_V_REPLACE; v->payload = fz_replacement; v->len = 8; break;
    case FZ_HOOK_REPLY:   v->kind = WEIR_V_REPLY; v->code = WEIR_WS_TEXT; v->payload = fz_replacement; v->len = 8; break;
    case FZ_HOOK_ERROR:   v->kind = WEIR_V_ERROR; v->code = 1008; v->reason = "policy"; v->payload = "{}"; v->len = 2; break;
    default:              v->kind = WEIR_V_PASS; break;
    }
    return WEIR_OK;
}

static int
fz_intercept(weir_session_t *s, size_t len, weir_verdict_t *v)
{
    return fz_frame_hook(s, 0, WEIR_WS_TEXT, len, v);
}

/* ---- the session ------------------------------------------------------- */

void
fz_session_free(void)
{
    weir_session_t *s = fz.s;
    if (s != NULL) {
        weir_leg_t *legs[2] = { &s->client, &s->backend };
        for (int i = 0; i < 2; i++) {
            weir_relay_msg_free(legs[i]);
            free(legs[i]->stash);
            free(legs[i]->held);
            free(legs[i]->inject);
        }
        weir_relay_throttle_free(s);
        free(s->needle);
        free(s);
    }
    free(fz.out[0]);
    free(fz.out[1]);
    free(fz.cut[0]);
    free(fz.cut[1]);
    memset(&fz, 0, sizeof(fz));
}

void
fz_session(uint64_t max_msg, int assemble, const char *needle)
{
    fz_session_free();
    if (fz_worker.loop == NULL) {
        weir_log_level = WEIR_LOG_ERROR + 1;       /* protocol violations are logged at info: silence */
        uv_loop_init(&fz_loop);
        fz_ops.frame = fz_frame_hook;
        fz_ops.intercept = fz_intercept;
        fz_worker.loop = &fz_loop;
        fz_worker.conf = &fz_conf;
        fz_worker.policy = &fz_ops;
    }
    fz_conf.limits.max_message_size = max_msg;
    fz_conf.limits.buffer_size = 1 << 20;
    fz_conf.limits.close_timeout_ms = 1000;

    weir_session_t *s = calloc(1, sizeof(*s));
    if (s == NULL) abort();
    s->w = &fz_worker;
    s->conf = &fz_conf;
    s->state = WEIR_S_OPEN;
    s->client.s = s;
    s->backend.s = s;
    s->client.fd = s->backend.fd = -1;
    s->backend.is_backend = 1;
    s->client.assemble_next = s->backend.assemble_next = (unsigned) (assemble != 0);
    if (needle != NULL) s->needle = strdup(needle);
    fz.s = s;
}

/* Relay B[0..TOTAL) read by L, CUT_OK as weir_relay_read sets it; keep what it leaves cut. */
static void
fz_process(weir_leg_t *l, uint8_t *b, size_t total, int cut_ok)
{
    int i = l->is_backend;
    l->cut_ok = (uint8_t) cut_ok;
    weir_relay_process(l, b, total);
    l->cut_ok = 0;
    if (l->cut > 0) {
        if (!cut_ok || l->cut > total || l->nstash > 0) {
            fprintf(stderr, "fake_leg: a cut of %u bytes left by a read of %zu (allowed: %d, stash %u)\n",
                    (unsigned) l->cut, total, cut_ok, (unsigned) l->nstash);
            abort();
        }
        fz.ncut[i] = l->cut;
        if ((fz.cut[i] = malloc(fz.ncut[i])) == NULL) abort();
        memcpy(fz.cut[i], b + total - fz.ncut[i], fz.ncut[i]);
        l->cut = 0;
    }
}

void
fz_feed(weir_leg_t *l, const uint8_t *buf, size_t n)
{
    int i = l->is_backend;
    size_t before = fz.ncut[i] > 0 ? fz.ncut[i] : l->nstash;
    size_t total = before + n;
    uint8_t *b = malloc(total ? total : 1);
    if (b == NULL) abort();
    if (fz.ncut[i] > 0) {
        memcpy(b, fz.cut[i], before);
        free(fz.cut[i]);
        fz.cut[i] = NULL;
        fz.ncut[i] = 0;
    } else if (l->nstash > 0) {
        memcpy(b, l->stash, l->nstash);
    }
    if (n > 0) memcpy(b + before, buf, n);
    free(l->stash);                     /* as weir_relay_read: held only while it holds bytes */
    l->stash = NULL;
    l->nstash = 0;
    fz_process(l, b, total, fz.cut_ok);
    free(b);
}

void
fz_feed_end(weir_leg_t *l)
{
    int i = l->is_backend;
    if (fz.ncut[i] == 0) return;
    uint8_t *b = fz.cut[i];
    size_t total = fz.ncut[i];
    fz.cut[i] = NULL;
    fz.ncut[i] = 0;
    if (!l->done) fz_process(l, b, total, 0);
    free(b);
}

/* ---- leg.c, as far as relay.c calls it --------------------------------- */

ssize_t
weir_leg_recv(weir_leg_t *l, uint8_t *buf, size_t n)
{
    (void) l, (void) buf, (void) n;
    return WEIR_AGAIN;
}

int
weir_leg_write(weir_leg_t *l, const uint8_t *buf, size_t n)
{
    if (l->done) return WEIR_ERROR;
    fz_out(l, buf, n);
    return WEIR_OK;
}

void weir_leg_flush(weir_leg_t *l) { (void) l; }
void weir_ready_add(weir_leg_t *l) { (void) l; }
void weir_leg_pause(weir_leg_t *l, unsigned why) { l->paused |= why; }
void weir_leg_resume(weir_leg_t *l, unsigned why) { l->paused &= ~why; }
void weir_linger_read(weir_leg_t *l) { (void) l; }
int  weir_ping_matches(const weir_leg_t *l, const uint8_t *payload) { (void) l, (void) payload; return 0; }
void weir_leg_finish(weir_leg_t *l) { l->finish = 1; }
void weir_leg_flush_inject(weir_leg_t *l) { (void) l; }

void
weir_note_close(weir_session_t *s, unsigned code, char side)
{
    if (s->close_code == 0) {
        s->close_code = (uint16_t) code;
        s->close_side = side;
    }
}

void
weir_leg_message(weir_leg_t *dst, int opcode, const uint8_t *p, size_t n)
{
    if (dst->done || dst->close_sent) return;
    fz_frame(dst, opcode, p, n);
}

void
weir_leg_message_own(weir_leg_t *dst, int opcode, uint8_t *p, size_t n, const uint8_t *key)
{
    if (p != NULL) memset(p - WEIR_WS_MAX_HDR, 0xA5, WEIR_WS_MAX_HDR);     /* the room is weir's to write */
    if (key != NULL) weir_ws_mask(p, n, key, 0);
    weir_leg_message(dst, opcode, p, n);
}

int
weir_leg_send_control(weir_leg_t *l, int opcode, const uint8_t *payload, size_t n)
{
    if (l->done) return WEIR_ERROR;
    fz_frame(l, opcode, payload, n > WEIR_WS_MAX_CONTROL ? WEIR_WS_MAX_CONTROL : n);
    return WEIR_OK;
}

void
weir_leg_close_with(weir_leg_t *l, unsigned code, const char *reason, const char *json, size_t jl)
{
    (void) reason, (void) json, (void) jl;
    if (l->done || l->close_sent) return;
    l->close_sent = 1;
    fz.close_code[l->is_backend] = code ? code : 1005;
}

void
weir_leg_send_close(weir_leg_t *l, unsigned code, const char *reason, const char *problem)
{
    (void) problem;
    weir_leg_close_with(l, code, reason, NULL, 0);
}

void
weir_leg_fail(weir_leg_t *l)
{
    if (l->done || l->close_sent) return;
    weir_leg_close_with(l, l->fail_code, l->fail_reason, NULL, 0);
    l->done = 1;
}

void
weir_leg_gone(weir_leg_t *l, const char *why)
{
    (void) why;
    l->done = 1;
}

/* core/limit_sync.c's side of shared limits: the harnesses set no limits
 * and have no Redis */
void weir_sync_hold(weir_limit_ref_t *ref, const char *key, size_t len) { (void) ref, (void) key, (void) len; }
void weir_sync_release(const weir_limit_ref_t *ref) { (void) ref; }

/* core/analytics.c: the harnesses turn no analytics on (s->an stays NULL) */
void weir_analytics_policy_error(weir_session_t *s, const weir_verdict_t *v) { (void) s, (void) v; }
