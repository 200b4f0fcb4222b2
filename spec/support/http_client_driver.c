/*
 * http_client_driver.c — runs calls of core/http_client.c concurrently on
 * one libuv loop and prints one JSON line per event, for
 * spec/01-unit/http_client_spec.lua.
 *
 * Build (the spec does it):
 *   cc -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -Icore \
 *      spec/support/http_client_driver.c core/http_client.c core/log.c \
 *      $(pkg-config --cflags --libs libuv openssl libcurl)
 *
 * Usage: http_client_driver [CALL OPTIONS] URL [[CALL OPTIONS] URL ...]
 * Options apply to the next URL, which ends a call's description:
 *   -n NAME       name in the output (default: callN)
 *   -X METHOD     method (default: none given, i.e. GET)
 *   -H LINE       a header line; "\r\n" is appended (repeatable)
 *   -W RAW        the raw headers string, as given (no CRLF appended)
 *   -d TEXT       body
 *   -Z BYTES      body of BYTES bytes: byte i is i % 251
 *   -t MS         timeout_ms
 *   -m BYTES      max_response
 *   -v            verify=1
 *   -C FILE       ca_file
 *   -c MS         cancel the call MS ms after it started (0: right after
 *                 weir_http_request returned)
 *   -a NAME       start this call from the callback of call NAME
 *   -x NAME       from this call's callback, cancel call NAME
 *   -s            from this call's callback, cancel this very call (must be ignored)
 *   -R N          N copies of this call (names NAME.1 ... NAME.N)
 *
 * Output, one JSON object per line:
 *   {"name":…,"order":N,"status":N,"error":…|null,"elapsed_ms":N,"headers":"…",
 *    "body_len":N,"body_sha256":"…","body":"…"}      a callback (body only when ≤ 64 KiB;
 *                                                     bytes ≥ 0x80 as \u00XX)
 *   {"name":…,"order":N,"start_error":"…"}           weir_http_request returned NULL
 *   {"name":…,"cancelled":true,"elapsed_ms":N}       the driver cancelled the call
 *   {"name":…,"violation":"…"}                       a broken contract (callback after
 *                                                     cancel, callback inside request, twice)
 *   {"summary":true,"callbacks":N,"cancelled":N,"start_errors":N,"violations":N,
 *    "loop_close":N}                                  last line; loop_close 0 = no handle left
 * Exit status: 0 unless a violation was seen or the loop could not be closed.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <uv.h>

#include "http_client.h"

typedef enum { DRV_IDLE = 0, DRV_RUNNING, DRV_DONE, DRV_CANCELLED, DRV_FAILED } drv_state_e;

typedef struct {
    char               *name;
    weir_http_req_t     req;
    char               *headers;        /* owned */
    char               *body;           /* owned */
    long                cancel_after;   /* ms; -1: never */
    const char         *after;          /* start from this call's callback */
    const char         *cancel_other;   /* cancel this call from our callback */
    int                 cancel_self;
    drv_state_e         state;
    weir_http_call_t   *call;
    uv_timer_t          timer;          /* cancel_after */
    int                 timer_open;
    uint64_t            started;        /* uv_hrtime() */
    int                 callbacks;
} drv_call_t;

static uv_loop_t  *drv_loop;
static drv_call_t *drv_calls;
static size_t      drv_ncalls;
static int         drv_order;
static int         drv_in_request;
static int         drv_ncallbacks, drv_ncancelled, drv_nstart_errors, drv_nviolations;

static void drv_start(drv_call_t *d);

static void
drv_json_str(const char *s, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\r') fputs("\\r", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c < 0x20 || c >= 0x7f) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static double
drv_elapsed(drv_call_t *d)
{
    return (double) (uv_hrtime() - d->started) / 1e6;
}

static drv_call_t *
drv_find(const char *name)
{
    for (size_t i = 0; i < drv_ncalls; i++)
        if (strcmp(drv_calls[i].name, name) == 0) return &drv_calls[i];
    return NULL;
}

static void
drv_violation(drv_call_t *d, const char *what)
{
    drv_nviolations++;
    printf("{\"name\":");
    drv_json_str(d->name, strlen(d->name));
    printf(",\"violation\":\"%s\"}\n", what);
    fflush(stdout);
}

static void
drv_timer_closed(uv_handle_t *h)
{
    (void) h;       /* the timer lives in drv_calls, freed at exit */
}

static void
drv_stop_timer(drv_call_t *d)
{
    if (!d->timer_open) return;
    d->timer_open = 0;
    uv_close((uv_handle_t *) &d->timer, drv_timer_closed);
}

static void
drv_cancel(drv_call_t *d)
{
    if (d->state != DRV_RUNNING) return;
    weir_http_cancel(d->call);
    d->state = DRV_CANCELLED;
    d->call = NULL;
    drv_ncancelled++;
    drv_stop_timer(d);
    printf("{\"name\":");
    drv_json_str(d->name, strlen(d->name));
    printf(",\"cancelled\":true,\"elapsed_ms\":%.1f}\n", drv_elapsed(d));
    fflush(stdout);
}

static void
drv_cancel_timer_cb(uv_timer_t *t)
{
    drv_cancel(t->data);
}

static void
drv_cb(weir_http_call_t *call, const weir_http_res_t *res, void *data)
{
    drv_call_t *d = data;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    d->callbacks++;
    if (drv_in_request) drv_violation(d, "callback inside weir_http_request");
    if (d->state == DRV_CANCELLED) drv_violation(d, "callback after cancel");
    if (d->callbacks > 1) drv_violation(d, "second callback");
    if (call != d->call && d->state == DRV_RUNNING) drv_violation(d, "callback with another call");
    if ((res->error == NULL) != (res->status != 0)) drv_violation(d, "status and error disagree");
    d->state = DRV_DONE;
    d->call = NULL;
    drv_ncallbacks++;
    drv_stop_timer(d);

    printf("{\"name\":");
    drv_json_str(d->name, strlen(d->name));
    printf(",\"order\":%d,\"status\":%d,\"error\":", ++drv_order, res->status);
    if (res->error) drv_json_str(res->error, strlen(res->error));
    else fputs("null", stdout);
    printf(",\"elapsed_ms\":%.1f", drv_elapsed(d));
    if (res->error == NULL) {
        EVP_Digest(res->body, res->body_len, md, &mdlen, EVP_sha256(), NULL);
        fputs(",\"headers\":", stdout);
        drv_json_str(res->headers, res->headers_len);
        printf(",\"body_len\":%zu,\"body_sha256\":\"", res->body_len);
        for (unsigned i = 0; i < mdlen; i++) printf("%02x", md[i]);
        putchar('"');
        if (res->body_len <= 65536) {
            fputs(",\"body\":", stdout);
            drv_json_str(res->body, res->body_len);
        }
    }
    fputs("}\n", stdout);
    fflush(stdout);

    if (d->cancel_self) weir_http_cancel(call);
    if (d->cancel_other) {
        drv_call_t *o = drv_find(d->cancel_other);
        if (o != NULL) drv_cancel(o);
    }
    for (size_t i = 0; i < drv_ncalls; i++)
        if (drv_calls[i].after && strcmp(drv_calls[i].after, d->name) == 0) drv_start(&drv_calls[i]);
}

static void
drv_start(drv_call_t *d)
{
    char err[256];
    if (d->state != DRV_IDLE) return;
    d->started = uv_hrtime();
    drv_in_request = 1;
    d->call = weir_http_request(drv_loop, &d->req, drv_cb, d, err, sizeof(err));
    drv_in_request = 0;
    if (d->call == NULL) {
        d->state = DRV_FAILED;
        drv_nstart_errors++;
        printf("{\"name\":");
        drv_json_str(d->name, strlen(d->name));
        printf(",\"order\":%d,\"start_error\":", ++drv_order);
        drv_json_str(err, strlen(err));
        fputs("}\n", stdout);
        fflush(stdout);
        for (size_t i = 0; i < drv_ncalls; i++)
            if (drv_calls[i].after && strcmp(drv_calls[i].after, d->name) == 0) drv_start(&drv_calls[i]);
        return;
    }
    d->state = DRV_RUNNING;
    if (d->cancel_after == 0) {
        drv_cancel(d);
    } else if (d->cancel_after > 0) {
        uv_update_time(drv_loop);
        uv_timer_init(drv_loop, &d->timer);
        d->timer.data = d;
        d->timer_open = 1;
        uv_timer_start(&d->timer, drv_cancel_timer_cb, (uint64_t) d->cancel_after, 0);
    }
}

static char *
drv_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) goto failed;
    buf = malloc((size_t) n + 1);
    if (buf == NULL || fread(buf, 1, (size_t) n, f) != (size_t) n) goto failed;
    fclose(f);
    *len = (size_t) n;
    return buf;

failed:
    if (f) fclose(f);
    free(buf);
    fprintf(stderr, "cannot read %s\n", path);
    exit(2);
}

static void
drv_add_header(drv_call_t *d, const char *line, int raw)
{
    size_t old = d->headers ? strlen(d->headers) : 0, n = strlen(line);
    d->headers = realloc(d->headers, old + n + 3);
    if (d->headers == NULL) exit(2);
    memcpy(d->headers + old, line, n);
    memcpy(d->headers + old + n, raw ? "" : "\r\n", raw ? 1 : 3);
}

static void
drv_usage(const char *why)
{
    fprintf(stderr, "http_client_driver: %s (see the comment at the top of the source)\n", why);
    exit(2);
}

int
main(int argc, char **argv)
{
    drv_call_t cur;
    long repeat = 1;

    drv_calls = calloc((size_t) argc * 64, sizeof(*drv_calls));
    if (drv_calls == NULL) return 2;
    memset(&cur, 0, sizeof(cur));
    cur.cancel_after = -1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (a[0] == '-' && a[1] != '\0' && a[2] == '\0' && strchr("vs", a[1]) == NULL && v == NULL)
            drv_usage("option without a value");
        if (strcmp(a, "-n") == 0) cur.name = argv[++i];
        else if (strcmp(a, "-X") == 0) cur.req.method = argv[++i];
        else if (strcmp(a, "-H") == 0) drv_add_header(&cur, argv[++i], 0);
        else if (strcmp(a, "-W") == 0) drv_add_header(&cur, argv[++i], 1);
        else if (strcmp(a, "-d") == 0) {
            free(cur.body);
            cur.body = strdup(argv[++i]);
            cur.req.body_len = strlen(cur.body);
        } else if (strcmp(a, "-Z") == 0) {
            size_t n = strtoul(argv[++i], NULL, 10);
            free(cur.body);
            cur.body = malloc(n + 1);
            for (size_t k = 0; k < n; k++) cur.body[k] = (char) (k % 251);
            cur.req.body_len = n;
        } else if (strcmp(a, "-D") == 0) {
            free(cur.body);
            cur.body = drv_read_file(argv[++i], &cur.req.body_len);
        } else if (strcmp(a, "-t") == 0) cur.req.timeout_ms = strtoull(argv[++i], NULL, 10);
        else if (strcmp(a, "-m") == 0) cur.req.max_response = strtoul(argv[++i], NULL, 10);
        else if (strcmp(a, "-v") == 0) cur.req.verify = 1;
        else if (strcmp(a, "-C") == 0) cur.req.ca_file = argv[++i];
        else if (strcmp(a, "-c") == 0) cur.cancel_after = strtol(argv[++i], NULL, 10);
        else if (strcmp(a, "-a") == 0) cur.after = argv[++i];
        else if (strcmp(a, "-x") == 0) cur.cancel_other = argv[++i];
        else if (strcmp(a, "-s") == 0) cur.cancel_self = 1;
        else if (strcmp(a, "-R") == 0) repeat = strtol(argv[++i], NULL, 10);
        else if (a[0] == '-') drv_usage("unknown option");
        else {
            if (repeat < 1 || drv_ncalls + (size_t) repeat > (size_t) argc * 64) drv_usage("bad -R");
            cur.req.url = a;
            for (long r = 1; r <= repeat; r++) {
                drv_call_t *d = &drv_calls[drv_ncalls++];
                char name[256];
                *d = cur;
                if (cur.name && repeat > 1) snprintf(name, sizeof(name), "%s.%ld", cur.name, r);
                else if (cur.name) snprintf(name, sizeof(name), "%s", cur.name);
                else snprintf(name, sizeof(name), "call%zu", drv_ncalls);
                d->name = strdup(name);
                d->headers = cur.headers ? strdup(cur.headers) : NULL;
                d->req.headers = d->headers;
                if (cur.body) {
                    d->body = malloc(cur.req.body_len + 1);
                    memcpy(d->body, cur.body, cur.req.body_len);
                }
                d->req.body = d->body;
            }
            free(cur.headers);
            free(cur.body);
            memset(&cur, 0, sizeof(cur));
            cur.cancel_after = -1;
            repeat = 1;
        }
    }
    if (cur.name || cur.headers || cur.body || cur.req.method) {
        free(cur.headers);
        free(cur.body);
        drv_usage("options after the last URL");
    }
    if (drv_ncalls == 0) drv_usage("no URL");

    drv_loop = malloc(sizeof(*drv_loop));
    if (drv_loop == NULL || uv_loop_init(drv_loop) != 0) return 2;
    for (size_t i = 0; i < drv_ncalls; i++)
        if (drv_calls[i].after == NULL) drv_start(&drv_calls[i]);
    uv_run(drv_loop, UV_RUN_DEFAULT);

    /* the client's handles (its timer, its sockets' poll handles) close from the loop */
    weir_http_client_cleanup();
    uv_run(drv_loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(drv_loop);
    printf("{\"summary\":true,\"callbacks\":%d,\"cancelled\":%d,\"start_errors\":%d,\"violations\":%d,"
           "\"loop_close\":%d}\n",
           drv_ncallbacks, drv_ncancelled, drv_nstart_errors, drv_nviolations, rc);
    fflush(stdout);
    free(drv_loop);
    for (size_t i = 0; i < drv_ncalls; i++) {
        free(drv_calls[i].name);
        free(drv_calls[i].headers);
        free(drv_calls[i].body);
    }
    free(drv_calls);
    return drv_nviolations > 0 || rc != 0 ? 1 : 0;
}
