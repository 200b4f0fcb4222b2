/*
 * stats_session.c — a session's counts into the host's metrics and usage
 * store (see stats_session.h, stats.h). The per-message counts are the legs'
 * own counters (session_int.h), flushed as differences against the
 * session's snapshot at each worker tick and at its free.
 */
#include <string.h>
#include <time.h>

#include "session_int.h"
#include "stats.h"
#include "stats_session.h"
#include "weir.h"

/* handshake durations (ns), from the accept to the client's 101: a plain
 * backend on the same host answers in well under a millisecond, a policy
 * asking an identity provider or Redis adds milliseconds to tens of them, a
 * TLS backend far away a round trip or three; handshake_timeout (10 s by
 * default) ends the rest */
static const uint64_t weir_hs_bounds[] = {
    500000, 1000000, 2500000, 5000000, 10000000, 25000000, 50000000, 100000000, 250000000, 500000000,
    1000000000, 2500000000ULL, 10000000000ULL,
};

/* session durations (ms): from polling clients that reconnect every few
 * seconds to streams held open for days */
static const uint64_t weir_session_bounds[] = {
    1000, 5000, 30000, 60000, 300000, 900000, 1800000, 3600000, 7200000, 21600000, 43200000, 86400000,
    604800000,
};

#define WEIR_NBOUNDS(a) ((int) (sizeof(a) / sizeof((a)[0])))

static uint64_t
weir_wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

/* Is S a connection to an API that was upgraded (and so counted)? */
static int
weir_stats_counted(const weir_session_t *s)
{
    return s->http_status == 101 && s->route.api != NULL && s->route.version != NULL && !s->admin && !s->service;
}

static const char *
weir_api_of(const weir_session_t *s)
{
    return s->route.api ? s->route.api->name : "";
}

static const char *
weir_version_of(const weir_session_t *s)
{
    return s->route.version ? s->route.version->version : "";
}

/* S's series of family KIND labelled with its API and version. */
static uint32_t
weir_stats_api_series(const weir_session_t *s, int kind)
{
    const char *v[2] = { weir_api_of(s), weir_version_of(s) };
    return weir_stats_series(kind, v, 2);
}

/* Resolve S's traffic series and usage key (when not yet). */
static void
weir_stats_resolve(weir_session_t *s)
{
    const char *app = s->consumer[WEIR_CONSUMER_APPLICATION];
    if (s->st.traffic == 0) {
        const char *v[3] = { weir_api_of(s), weir_version_of(s), weir_stats_application(app) };
        s->st.traffic = weir_stats_series(WEIR_ST_TRAFFIC, v, 3);
    }
    if (s->st.usage == 0)
        s->st.usage = weir_stats_usage_key(weir_api_of(s), weir_version_of(s), app,
                                           s->consumer[WEIR_CONSUMER_SUBSCRIBER]);
}

void
weir_stats_opened(weir_session_t *s)
{
    if (!weir_stats_counted(s)) return;
    weir_stats_observe(weir_stats_api_series(s, WEIR_ST_HANDSHAKE), weir_hs_bounds, WEIR_NBOUNDS(weir_hs_bounds),
                       uv_hrtime() - s->t0_ns);
    weir_stats_resolve(s);
    uint64_t d[WEIR_U_VALUES] = { [WEIR_U_CONNECTIONS] = 1 };
    weir_stats_usage_add(s->st.usage, weir_wall_now() / 1000, d, 0);
}

void
weir_stats_flush(weir_session_t *s, uint64_t wall)
{
    weir_stats_snap_t *st = &s->st;
    const weir_leg_t *legs[2] = { &s->client, &s->backend };
    int moved = 0;
    for (int i = 0; i < 2; i++)
        moved |= legs[i]->frames != st->frames[i] || legs[i]->messages != st->messages[i]
                 || legs[i]->over_limit != st->over[i];
    if (!moved || !weir_stats_counted(s)) return;
    weir_stats_resolve(s);
    uint64_t dm[2], db[2], df[2], dt[2];
    for (int i = 0; i < 2; i++) {
        dm[i] = legs[i]->messages - st->messages[i];
        db[i] = legs[i]->bytes - st->bytes[i];
        df[i] = legs[i]->frames - st->frames[i];
        dt[i] = legs[i]->over_limit - st->over[i];
        st->messages[i] = legs[i]->messages;
        st->bytes[i] = legs[i]->bytes;
        st->frames[i] = legs[i]->frames;
        st->over[i] = legs[i]->over_limit;
    }
    uint64_t now = weir_now(s);
    uint64_t last = df[0] + df[1] ? wall - (now - WEIR_MIN(s->last_data, now)) : 0;
    uint32_t h = st->traffic;
    weir_stats_add(h, WEIR_TR_MSG_IN, dm[0]);
    weir_stats_add(h, WEIR_TR_MSG_OUT, dm[1]);
    weir_stats_add(h, WEIR_TR_BYTES_IN, db[0]);
    weir_stats_add(h, WEIR_TR_BYTES_OUT, db[1]);
    weir_stats_add(h, WEIR_TR_FRAMES_IN, df[0]);
    weir_stats_add(h, WEIR_TR_FRAMES_OUT, df[1]);
    weir_stats_add(h, WEIR_TR_THR_IN, dt[0]);
    weir_stats_add(h, WEIR_TR_THR_OUT, dt[1]);
    if (last) weir_stats_max(h, WEIR_TR_LAST_MS, last);
    uint64_t d[WEIR_U_VALUES] = {
        [WEIR_U_MSG_IN] = dm[0], [WEIR_U_MSG_OUT] = dm[1], [WEIR_U_BYTES_IN] = db[0], [WEIR_U_BYTES_OUT] = db[1],
        [WEIR_U_THROTTLED] = dt[0] + dt[1],
    };
    weir_stats_usage_add(st->usage, wall / 1000, d, last);
}

/* A close code as a label: the codes of RFC 6455 and its registry (1000 to
 * 1015) as they are, the application ranges by their class. */
static const char *
weir_code_label(unsigned code, char *buf, size_t len)
{
    if (code == 0) return "none";
    if (code >= 1000 && code <= 1015) {
        snprintf(buf, len, "%u", code);
        return buf;
    }
    return code >= 3000 && code <= 3999 ? "3xxx" : code >= 4000 && code <= 4999 ? "4xxx" : "other";
}

void
weir_stats_end(weir_session_t *s)
{
    if (s->admin || s->service || s->ticket_req) return;
    if (weir_stats_counted(s)) {
        weir_stats_flush(s, weir_wall_now());
        char code[16];
        const char *side = s->close_side == 'c' ? "client" : s->close_side == 'b' ? "backend"
                           : s->close_side == 'w' ? "weir" : "none";
        const char *v[4] = { weir_api_of(s), weir_version_of(s), weir_code_label(s->close_code, code, sizeof(code)),
                             side };
        weir_stats_add(weir_stats_series(WEIR_ST_CLOSED, v, 4), 0, 1);
        weir_stats_observe(weir_stats_api_series(s, WEIR_ST_SESSION), weir_session_bounds,
                           WEIR_NBOUNDS(weir_session_bounds), weir_now(s) - s->started);
    } else if (s->http_status >= 400 && s->http_status <= 599) {
        char status[8];
        snprintf(status, sizeof(status), "%d", s->http_status);
        const char *v[1] = { status };
        weir_stats_add(weir_stats_series(WEIR_ST_REFUSED, v, 1), 0, 1);
    }
}

void
weir_stats_refused(weir_session_t *s, int status, const char *p, size_t len)
{
    static const char prefix[] = "\"/problems/";
    if ((status != 401 && status != 403) || s->ticket_req) return;
    char reason[64] = "unknown";
    const char *t = p ? memmem(p, len, prefix, sizeof(prefix) - 1) : NULL;
    if (t != NULL) {
        t += sizeof(prefix) - 1;
        size_t n = 0;
        /* a problem type is a path: letters, digits, '-', '_', '/' */
        while (t + n < p + len && n < sizeof(reason) - 1
               && (((t[n] | 0x20) >= 'a' && (t[n] | 0x20) <= 'z') || (t[n] >= '0' && t[n] <= '9') || t[n] == '-'
                   || t[n] == '_' || t[n] == '/'))
            n++;
        if (n > 0 && t + n < p + len && t[n] == '"') {
            memcpy(reason, t, n);
            reason[n] = '\0';
        }
    }
    const char *v[2] = { weir_api_of(s), reason };
    weir_stats_add(weir_stats_series(WEIR_ST_AUTH, v, 2), 0, 1);
}

void
weir_stats_backend_failed(weir_session_t *s)
{
    if (s->admin || s->service || s->route.api == NULL) return;
    weir_stats_add(weir_stats_api_series(s, WEIR_ST_BACKEND), 0, 1);
}

void
weir_stats_policy_error(weir_session_t *s, const char *policy)
{
    if (s->admin || s->service) return;
    weir_stats_policy_failed(policy);
}

void
weir_stats_consumer(weir_session_t *s)
{
    s->st.traffic = 0;
    s->st.usage = 0;
}
