/*
 * analytics.c — the analytics events of a worker (analytics.h): the
 * connections that turned analytics on, their counters as last reported,
 * one bounded buffer of NDJSON lines per sink set, the interval timer that
 * turns the counters' differences into `messages`/`throttled` events and
 * hands the buffers to Lua, and the small file helpers the JSON-lines sink
 * writes with (one write(2) per batch on an O_APPEND descriptor, so the
 * workers' batches never interleave inside a line).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "analytics.h"
#include "session_int.h"

#define WEIR_AN_STR_MAX    255            /* bytes of a string field written (consumer, api, ...) */
#define WEIR_AN_UA_MAX     256            /* bytes of a user agent kept */
#define WEIR_AN_STRINGS    15             /* string members of one event, at most (policy_error has 12) */
#define WEIR_AN_NUMBERS    1024           /* its names, numbers and punctuation: generously */
/* Room reserved per event: every string byte is written as at most 6
 * (\u00XX), plus its quotes. Every write is bounded by the buffer's
 * capacity all the same: an event that would not fit is not written and
 * is counted lost (an_end), so this reserve is a sizing, not a safety. */
#define WEIR_AN_EVENT_MAX  (WEIR_AN_STRINGS * (6 * WEIR_AN_UA_MAX + 2) + WEIR_AN_NUMBERS)

_Static_assert(WEIR_AN_EVENT_MAX < WEIR_ANALYTICS_BUF_MAX, "an event fits a set's batch");

/* counters of one leg, as in weir_leg_t */
enum { AN_FRAMES, AN_BYTES, AN_MESSAGES, AN_BINARY, AN_OVER, AN_N };

struct weir_analytics_conn_s {
    weir_session_t        *s;
    weir_analytics_conn_t *prev, *next;  /* the worker's list */
    int                    set;          /* the sink set its events go to (1..WEIR_ANALYTICS_SETS-1) */
    char                  *client;       /* the client's address as the policy resolved it, NULL: unknown */
    char                  *ua;           /* its User-Agent, NULL: none */
    uint64_t               seen[2][AN_N];   /* counters at the last messages event: [0] client leg, [1] backend */
    uint64_t               seen_ms;      /* loop time of that event (or of the 101) */
};

typedef struct {
    char     *p;
    size_t    len, cap;
    uint64_t  count;                     /* events in p */
    uint64_t  lost;                      /* events not written: the buffer was full (cumulative) */
    size_t    start;                     /* where the event being written starts */
    int       over;                      /* the event being written did not fit: an_end discards it */
} weir_an_buf_t;

static uv_loop_t             *an_loop;
static void                 (*an_tell)(const char *event);
static uv_timer_t             an_timer;
static int                    an_timer_on;
static uint64_t               an_interval_ms;
static weir_analytics_conn_t *an_conns;
static weir_an_buf_t          an_sets[WEIR_ANALYTICS_SETS];
static int                    an_delivering;

/* ---- writing lines --------------------------------------------------------- */

/* Room for one more event in B: WEIR_OK, or WEIR_ERROR when the set's
 * batch is full (the event is counted lost). */
static int
an_reserve(weir_an_buf_t *b)
{
    b->start = b->len;
    b->over = 0;
    if (b->len + WEIR_AN_EVENT_MAX <= b->cap) return WEIR_OK;
    if (b->len + WEIR_AN_EVENT_MAX > WEIR_ANALYTICS_BUF_MAX) {
        b->lost++;
        return WEIR_ERROR;
    }
    size_t ncap = b->cap ? b->cap * 2 : 65536;
    while (ncap < b->len + WEIR_AN_EVENT_MAX) ncap *= 2;
    char *np = realloc(b->p, ncap);
    if (np == NULL) {
        b->lost++;
        return WEIR_ERROR;
    }
    b->p = np;
    b->cap = ncap;
    return WEIR_OK;
}

/* Every write below stops at the buffer's capacity (keeping one byte for
 * a NUL): what does not fit sets b->over, and the event is discarded. */
static void
an_raw(weir_an_buf_t *b, const char *s, size_t n)
{
    if (b->over || n >= b->cap - b->len) {
        b->over = 1;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

#define an_lit(b, s) an_raw((b), (s), sizeof(s) - 1)

static void
an_fmt(weir_an_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
an_fmt(weir_an_buf_t *b, const char *fmt, ...)
{
    if (b->over) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t) n >= b->cap - b->len) b->over = 1;
    else b->len += (size_t) n;
}

/* The length of the UTF-8 character at S[0..N) (N >= 1): 1 to 4, 0 when
 * it is cut short by N, or -1 when S[0] does not begin a valid one
 * (an overlong form, a surrogate, beyond U+10FFFF, a bad continuation). */
static int
an_utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    int len;
    unsigned char lo = 0x80, hi = 0xbf;          /* the second byte's range */
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else {
        return -1;
    }
    for (int i = 1; i < len; i++) {
        if ((size_t) i >= n) return 0;
        unsigned char lo_i = i == 1 ? lo : 0x80, hi_i = i == 1 ? hi : 0xbf;
        if (s[i] < lo_i || s[i] > hi_i) return -1;
    }
    return len;
}

/* S (at most MAX bytes of it) as a JSON value: a quoted string, or null.
 * Valid UTF-8 goes through as it is; control characters (below 0x20, and
 * DEL) are written \u00XX; a byte that does not begin a valid UTF-8
 * character (or begins one S ends inside) becomes U+FFFD; a character
 * cut by MAX is left out whole (S was cut at MAX bytes by its copy, or is
 * longer). So a line is always valid JSON whatever a client sent. */
static void
an_str(weir_an_buf_t *b, const char *s, size_t max)
{
    static const char hex[] = "0123456789abcdef";
    if (s == NULL) {
        an_lit(b, "null");
        return;
    }
    const unsigned char *u = (const unsigned char *) s;
    size_t n = strnlen(s, max);
    an_lit(b, "\"");
    for (size_t i = 0; i < n && !b->over;) {
        unsigned char c = u[i];
        if (c == '"' || c == '\\') {
            char e[2] = { '\\', (char) c };
            an_raw(b, e, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
            an_raw(b, e, 6);
            i++;
        } else {
            int len = an_utf8_len(u + i, n - i);
            if (len == 0 && n == max) break;           /* cut by MAX: left out whole */
            if (len <= 0) {
                an_raw(b, "\xef\xbf\xbd", 3);           /* U+FFFD for the byte */
                i++;
            } else {
                an_raw(b, s + i, (size_t) len);
                i += (size_t) len;
            }
        }
    }
    an_lit(b, "\"");
}

/* ,"NAME":VALUE with VALUE a string (at most MAX bytes) or null; MEMBER
 * is the literal ",\"NAME\":". */
#define an_member(b, member, value, max) (an_lit((b), member), an_str((b), (value), (max)))

/* The members every event starts with. */
static void
an_head(weir_an_buf_t *b, const char *event, weir_session_t *s, const weir_analytics_conn_t *a)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    an_fmt(b, "{\"event\":\"%s\",\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\",\"conn\":", event,
           tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
           (int) (tv.tv_usec / 1000));
    an_str(b, s->name, WEIR_AN_STR_MAX);
    an_member(b, ",\"api\":", s->route.api ? s->route.api->name : NULL, WEIR_AN_STR_MAX);
    an_member(b, ",\"version\":", s->route.version ? s->route.version->version : NULL, WEIR_AN_STR_MAX);
    an_member(b, ",\"application\":", s->consumer[WEIR_CONSUMER_APPLICATION], WEIR_AN_STR_MAX);
    an_member(b, ",\"subscriber\":", s->consumer[WEIR_CONSUMER_SUBSCRIBER], WEIR_AN_STR_MAX);
    an_member(b, ",\"tier\":", s->consumer[WEIR_CONSUMER_TIER], WEIR_AN_STR_MAX);
    an_member(b, ",\"key_type\":", s->consumer[WEIR_CONSUMER_KEY_TYPE], WEIR_AN_STR_MAX);
    an_member(b, ",\"client\":", a->client ? a->client : s->peer_ip, WEIR_AN_STR_MAX);
    an_member(b, ",\"user_agent\":", a->ua, WEIR_AN_UA_MAX);
}

/* The event begun at an_reserve ends: counted, or, when it did not fit
 * (b->over), taken back and counted lost. */
static void
an_end(weir_an_buf_t *b)
{
    an_lit(b, "}\n");
    if (b->over) {
        b->len = b->start;
        b->over = 0;
        b->lost++;
        return;
    }
    b->count++;
}

/* The counters of S's legs now. */
static void
an_counters(const weir_session_t *s, uint64_t c[2][AN_N])
{
    const weir_leg_t *legs[2] = { &s->client, &s->backend };
    for (int i = 0; i < 2; i++) {
        c[i][AN_FRAMES] = legs[i]->frames;
        c[i][AN_BYTES] = legs[i]->bytes;
        c[i][AN_MESSAGES] = legs[i]->messages;
        c[i][AN_BINARY] = legs[i]->binary;
        c[i][AN_OVER] = legs[i]->over_limit;
    }
}

/* A's `messages` and `throttled` events for what moved since the last
 * ones, and the counters remembered as reported. */
static void
an_moved(weir_analytics_conn_t *a, uint64_t now_ms)
{
    weir_session_t *s = a->s;
    uint64_t c[2][AN_N], d[2][AN_N];
    an_counters(s, c);
    int moved = 0, over = 0;
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < AN_N; k++) {
            d[i][k] = c[i][k] - a->seen[i][k];
            if (d[i][k] == 0) continue;
            if (k == AN_OVER) over = 1;
            else moved = 1;
        }
    if (!moved && !over) return;
    weir_an_buf_t *b = &an_sets[a->set];
    uint64_t ms = now_ms - WEIR_MIN(a->seen_ms, now_ms);
    if (moved && an_reserve(b) == WEIR_OK) {
        an_head(b, "messages", s, a);
        an_fmt(b, ",\"interval_ms\":%llu", (unsigned long long) ms);
        static const char *dir[2] = { "in", "out" };
        for (int i = 0; i < 2; i++)
            an_fmt(b, ",\"frames_%s\":%llu,\"bytes_%s\":%llu,\"messages_%s\":%llu,\"text_%s\":%llu,"
                   "\"binary_%s\":%llu", dir[i], (unsigned long long) d[i][AN_FRAMES], dir[i],
                   (unsigned long long) d[i][AN_BYTES], dir[i], (unsigned long long) d[i][AN_MESSAGES], dir[i],
                   (unsigned long long) (d[i][AN_MESSAGES] - WEIR_MIN(d[i][AN_BINARY], d[i][AN_MESSAGES])),
                   dir[i], (unsigned long long) d[i][AN_BINARY]);
        an_end(b);
    }
    if (over && an_reserve(b) == WEIR_OK) {
        an_head(b, "throttled", s, a);
        an_fmt(b, ",\"interval_ms\":%llu,\"throttled_in\":%llu,\"throttled_out\":%llu", (unsigned long long) ms,
               (unsigned long long) d[0][AN_OVER], (unsigned long long) d[1][AN_OVER]);
        an_end(b);
    }
    memcpy(a->seen, c, sizeof(c));
    a->seen_ms = now_ms;
}

/* ---- the interval --------------------------------------------------------- */

/* Hand every set's batch to Lua (TELL(EVENT)), then empty them. */
static void
an_deliver(const char *event)
{
    if (an_tell == NULL) return;
    an_delivering = 1;
    an_tell(event);
    an_delivering = 0;
    for (int i = 0; i < WEIR_ANALYTICS_SETS; i++) {
        weir_an_buf_t *b = &an_sets[i];
        b->len = b->count = 0;
        if (b->cap > 1024 * 1024) {          /* a burst's buffer is not kept */
            free(b->p);
            b->p = NULL;
            b->cap = 0;
        }
    }
}

static void
an_timer_cb(uv_timer_t *t)
{
    WEIR_UNUSED(t);
    uint64_t now = uv_now(an_loop);
    for (weir_analytics_conn_t *a = an_conns; a != NULL; a = a->next)
        if (a->s->state == WEIR_S_OPEN) an_moved(a, now);
    an_deliver("analytics");
}

void
weir_analytics_init(uv_loop_t *loop, void (*tell)(const char *event))
{
    an_loop = loop;
    an_tell = tell;
    uv_timer_init(loop, &an_timer);
    uv_unref((uv_handle_t *) &an_timer);
    an_timer_on = 1;
    if (an_interval_ms > 0) uv_timer_start(&an_timer, an_timer_cb, an_interval_ms, an_interval_ms);
}

void
weir_analytics_cleanup(void)
{
    an_timer_on = 0;                 /* the loop (and the timer with it) is closed */
    an_deliver("analytics-final");
    while (an_conns != NULL) {
        weir_analytics_conn_t *a = an_conns;
        an_conns = a->next;
        a->s->an = NULL;
        free(a->client);
        free(a->ua);
        free(a);
    }
    for (int i = 0; i < WEIR_ANALYTICS_SETS; i++) {
        free(an_sets[i].p);
        memset(&an_sets[i], 0, sizeof(an_sets[i]));
    }
    an_tell = NULL;
}

/* ---- events ---------------------------------------------------------------- */

/* S's User-Agent header, copied (at most WEIR_AN_UA_MAX bytes), or NULL. */
static char *
an_user_agent(const weir_session_t *s)
{
    weir_http_msg_t m;
    if (s->hs == NULL || weir_http_parse(s->hs, s->hs_len, 1, &m) <= 0) return NULL;
    const weir_http_header_t *h = weir_http_find(&m, "User-Agent");
    if (h == NULL) return NULL;
    return strndup(h->value, WEIR_MIN(h->value_len, (size_t) WEIR_AN_UA_MAX));
}

int
weir_conn_analytics(weir_session_t *s, int set, const char *client)
{
    if (set <= 0 || set >= WEIR_ANALYTICS_SETS) return WEIR_ERROR;
    weir_analytics_conn_t *a = s->an;
    if (a == NULL) {
        a = calloc(1, sizeof(*a));
        if (a == NULL) return WEIR_ERROR;
        a->s = s;
        a->ua = an_user_agent(s);
        a->next = an_conns;
        if (an_conns) an_conns->prev = a;
        an_conns = a;
        s->an = a;
        an_counters(s, a->seen);
        a->seen_ms = uv_now(s->w->loop);
    }
    a->set = set;
    free(a->client);
    a->client = client != NULL && *client != '\0' ? strndup(client, WEIR_AN_STR_MAX) : NULL;
    return WEIR_OK;
}

void
weir_analytics_connect(weir_session_t *s)
{
    weir_analytics_conn_t *a = s->an;
    weir_an_buf_t *b = &an_sets[a->set];
    an_counters(s, a->seen);
    a->seen_ms = uv_now(s->w->loop);
    if (an_reserve(b) != WEIR_OK) return;
    an_head(b, "connect", s, a);
    an_fmt(b, ",\"handshake_ms\":%.3f,\"tls\":%s", (double) (uv_hrtime() - s->t0_ns) / 1e6,
           s->listen_tls ? "true" : "false");
    an_end(b);
}

/* The problem type of the error JSON J[0..LEN) ("/problems/..."), copied into OUT. */
static const char *
an_problem(const char *j, size_t len, char *out, size_t cap)
{
    static const char key[] = "\"error\":{\"type\":\"";
    out[0] = '\0';
    if (j == NULL) return out;
    const char *p = memmem(j, len, key, sizeof(key) - 1);
    if (p == NULL) return out;
    p += sizeof(key) - 1;
    size_t n = 0;
    while (p + n < j + len && p[n] != '"' && n + 1 < cap) n++;
    memcpy(out, p, n);
    out[n] = '\0';
    return out;
}

void
weir_analytics_refused(weir_session_t *s, int status, const char *json, size_t len, const char *message)
{
    weir_analytics_conn_t *a = s->an;
    weir_an_buf_t *b = &an_sets[a->set];
    char problem[128];
    if (status != 401 && status != 403) return;
    if (an_reserve(b) != WEIR_OK) return;
    an_head(b, "auth_failure", s, a);
    an_fmt(b, ",\"status\":%d,\"problem\":", status);
    an_str(b, an_problem(json, len, problem, sizeof(problem)), WEIR_AN_STR_MAX);
    an_member(b, ",\"message\":", message, WEIR_AN_STR_MAX);
    an_end(b);
}

void
weir_analytics_policy_error(weir_session_t *s, const weir_verdict_t *v)
{
    weir_analytics_conn_t *a = s->an;
    weir_an_buf_t *b = &an_sets[a->set];
    char err[WEIR_AN_STR_MAX + 1];
    if (an_reserve(b) != WEIR_OK) return;
    snprintf(err, sizeof(err), "%.*s", (int) WEIR_MIN(v->len, (size_t) WEIR_AN_STR_MAX),
             v->payload ? v->payload : "");
    an_head(b, "policy_error", s, a);
    an_member(b, ",\"policy\":", v->reason, WEIR_AN_STR_MAX);
    an_member(b, ",\"hook\":", v->hook, WEIR_AN_STR_MAX);
    an_member(b, ",\"error\":", err, WEIR_AN_STR_MAX);
    an_end(b);
}

void
weir_analytics_close(weir_session_t *s, const weir_conn_end_t *end)
{
    weir_analytics_conn_t *a = s->an;
    if (a == NULL) return;
    uint64_t now = uv_now(s->w->loop);
    if (s->http_status == 101) an_moved(a, now);
    weir_an_buf_t *b = &an_sets[a->set];
    if (an_reserve(b) == WEIR_OK) {
        const weir_leg_t *c = &s->client, *k = &s->backend;
        an_head(b, "close", s, a);
        an_fmt(b, ",\"status\":%d,\"code\":%u,\"side\":\"%s\",\"duration_ms\":%llu,"
               "\"frames_in\":%llu,\"bytes_in\":%llu,\"messages_in\":%llu,\"binary_in\":%llu,\"throttled_in\":%llu,"
               "\"frames_out\":%llu,\"bytes_out\":%llu,\"messages_out\":%llu,\"binary_out\":%llu,"
               "\"throttled_out\":%llu",
               s->http_status, end->code, end->side, (unsigned long long) end->duration_ms,
               (unsigned long long) c->frames, (unsigned long long) c->bytes, (unsigned long long) c->messages,
               (unsigned long long) c->binary, (unsigned long long) c->over_limit,
               (unsigned long long) k->frames, (unsigned long long) k->bytes, (unsigned long long) k->messages,
               (unsigned long long) k->binary, (unsigned long long) k->over_limit);
        an_end(b);
    }
    if (a->prev) a->prev->next = a->next;
    else an_conns = a->next;
    if (a->next) a->next->prev = a->prev;
    free(a->client);
    free(a->ua);
    free(a);
    s->an = NULL;
}

/* ---- FFI: what lua/weir/analytics.lua calls -------------------------------- */

/* Hand the batches over every MS milliseconds (0: stop). */
void
weir_ffi_analytics_interval(double ms)
{
    an_interval_ms = ms > 0 ? (uint64_t) ms : 0;
    if (!an_timer_on) return;
    uv_timer_stop(&an_timer);
    if (an_interval_ms > 0) uv_timer_start(&an_timer, an_timer_cb, an_interval_ms, an_interval_ms);
}

/* Set SET's batch of *COUNT events, *LEN bytes: borrowed until the call
 * that handed it over returns (NULL outside one); *LOST: events of the set
 * lost so far, its batch being full (cumulative). */
const char *
weir_ffi_analytics_batch(int set, size_t *len, uint64_t *count, uint64_t *lost)
{
    *len = 0;
    *count = *lost = 0;
    if (set <= 0 || set >= WEIR_ANALYTICS_SETS) return NULL;
    *lost = an_sets[set].lost;
    if (!an_delivering) return NULL;
    *len = an_sets[set].len;
    *count = an_sets[set].count;
    return an_sets[set].p;
}

/* USED[0..WEIR_ANALYTICS_SETS): 1 for a set an open connection reports to,
 * or whose batch holds events not handed over yet (a reload keeps those
 * ids), else 0. */
void
weir_ffi_analytics_sets_used(unsigned char *used)
{
    memset(used, 0, WEIR_ANALYTICS_SETS);
    for (weir_analytics_conn_t *a = an_conns; a != NULL; a = a->next) used[a->set] = 1;
    for (int i = 0; i < WEIR_ANALYTICS_SETS; i++)
        if (an_sets[i].count > 0) used[i] = 1;
}

/* Open PATH for appending: a descriptor, or -1 with ERR filled. */
int
weir_ffi_analytics_open(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) snprintf(err, errlen, "%s", strerror(errno));
    return fd;
}

/* Append P[0..N) to FD in one write (what a regular file takes whole):
 * N, or with ERR filled -1 (nothing of it is in the file: a partial write
 * was cut off again with ftruncate) or -2 (a partial line stays at the
 * end of the file: it grew since, or could not be cut; the next batch
 * must begin with a newline). */
long
weir_ffi_analytics_write(int fd, const char *p, size_t n, char *err, size_t errlen)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, p + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            snprintf(err, errlen, "%s", w < 0 ? strerror(errno) : "short write");
            break;
        }
        done += (size_t) w;
    }
    if (done == n) return (long) n;
    if (done == 0) return -1;
    /* O_APPEND: our bytes end at the offset; cut them off unless another
     * writer appended after them */
    struct stat st;
    off_t end = lseek(fd, 0, SEEK_CUR);
    if (end >= (off_t) done && fstat(fd, &st) == 0 && st.st_size == end && ftruncate(fd, end - (off_t) done) == 0)
        return -1;
    return -2;
}

void
weir_ffi_analytics_close(int fd)
{
    if (fd >= 0) close(fd);
}
