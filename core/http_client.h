/*
 * http_client.h — a non-blocking HTTP/1.1 client on a worker's libuv loop,
 * for what policies fetch while a hook waits (OAuth2 token introspection,
 * JWKS). libcurl's multi-socket interface does the protocol work; the loop
 * drives it. Each loop has one keep-alive pool: a call reuses an idle
 * connection an earlier call left to the same scheme, host and port with the
 * same TLS settings, so introspection on every new token does not pay for a
 * TCP and TLS handshake each time. At most WEIR_HTTP_POOL connections stay
 * open per loop after their calls ended. http:// and https:// only, no proxy,
 * no redirects followed; every stage (DNS, connect, TLS, request, response)
 * is bounded by one timeout and one response size limit.
 *
 * Error messages (weir_http_res_t.error) are short and stable at their
 * start, so callers may match prefixes:
 *   "timeout"                          the whole call took longer than timeout_ms
 *   "DNS: <why>"                       the host name did not resolve
 *   "connection refused", "connection reset", "host unreachable",
 *   "network unreachable", "connect: <why>", "send: <why>", "recv: <why>"
 *   "TLS: certificate verify failed: <why>"   (verify=1: chain, name or IP)
 *   "TLS: <why>"                       any other TLS failure
 *   "response too large"               head + body over max_response
 *   "response head too large"          status line and headers over 16 KiB
 *   "malformed response: <why>"
 *   "connection closed before the response was complete"
 *   "out of memory"
 */
#ifndef WEIR_HTTP_CLIENT_H
#define WEIR_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define WEIR_HTTP_MAX_HEAD        16384        /* bytes of a response head (and of its trailers) */
#define WEIR_HTTP_DEFAULT_TIMEOUT 10000        /* ms, when timeout_ms is 0 */
#define WEIR_HTTP_DEFAULT_MAX     (1 << 20)    /* bytes, when max_response is 0 */
#define WEIR_HTTP_POOL            16           /* connections a loop keeps open for reuse */

typedef struct weir_http_call_s weir_http_call_t;

typedef struct {
    const char *method;        /* a token: "GET", "POST", ...; NULL = "GET" */
    const char *url;           /* http://host[:port]/path?query or https://...; IPv6 as [::1];
                                * no user info; a #fragment is dropped */
    const char *headers;       /* extra header lines, each "Name: value\r\n", or NULL; Host and
                                * User-Agent here replace weir's; Content-Length,
                                * Transfer-Encoding and Connection are refused; an
                                * empty value is sent empty */
    const char *body;          /* may be NULL (then body_len must be 0); copied */
    size_t      body_len;
    uint64_t    timeout_ms;    /* whole call: DNS+connect+TLS+request+response; 0 = 10000 */
    size_t      max_response;  /* bytes of response head + body; 0 = 1 MiB */
    int         verify;        /* https: verify the certificate and the host name or IP */
    const char *ca_file;       /* https: PEM CA file; NULL = system store */
} weir_http_req_t;

/*
 * A result. Every pointer is owned by the call and valid only while the
 * callback runs: copy what must outlive it.
 */
typedef struct {
    int         status;        /* HTTP status of the final response, 0 on failure */
    const char *error;         /* NULL on success, else a short message (see above) */
    const char *headers;       /* the response's header lines (after the status line),
                                * "Name: value\r\n" each, values trimmed, obs-folds joined;
                                * "" when none; NULL on failure */
    size_t      headers_len;
    const char *body;          /* de-chunked; "" when empty; NULL on failure */
    size_t      body_len;
} weir_http_res_t;

typedef void (*weir_http_cb)(weir_http_call_t *call, const weir_http_res_t *res, void *data);

/*
 * Start a call on LOOP. Returns the call, whose CB runs exactly once, never
 * from inside this function (always from the loop), after which the call is
 * freed; or NULL with ERR filled (bad URL, method or header lines, CA file
 * that cannot be loaded, out of memory) and CB never runs. REQ and the
 * strings it points to are copied or used before this returns: the caller
 * may free them at once.
 *
 * The callback may start new calls and cancel other calls. Checking a CA
 * file the first time (it must hold at least one certificate) reads it:
 * a blocking step, once per file per process. libcurl reads the CA file
 * (or the system store) again for a new TLS connection unless the CA store
 * it built last came from the same file less than a day ago. A pooled
 * connection is reused only for calls with the same verify and ca_file.
 */
weir_http_call_t *weir_http_request(uv_loop_t *loop, const weir_http_req_t *req, weir_http_cb cb,
                                    void *data, char *err, size_t errlen);

/*
 * Abandon CALL: its callback will not run and its memory is released at
 * once. A connection in the middle of the call's exchange is closed (a
 * socket's poll handle is freed from its close callback, a loop iteration
 * later); a DNS lookup already running in libcurl's resolver thread is left
 * to finish on its own. Safe at any stage before the callback ran; ignored
 * when CALL is NULL or from inside CALL's own callback. Never pass a call
 * whose callback has returned: it is gone.
 */
void weir_http_cancel(weir_http_call_t *call);

/*
 * Release everything, at a worker's exit: every loop's calls still running
 * are cancelled (their callbacks never run; do not cancel them afterwards),
 * the pooled connections closed, the libcurl multi handles and libcurl's
 * global state released. Not from inside a callback. The libuv handles (a
 * timer per loop, a poll handle per socket) are closed with uv_close and
 * freed from their close callbacks, so run each loop once more before
 * uv_loop_close; handles that someone else closed already (uv_walk, with
 * the loop then run to its end, as a worker's exit does) are freed at
 * once. A later call starts afresh.
 */
void weir_http_client_cleanup(void);

#endif
