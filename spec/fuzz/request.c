/*
 * request.c — the client's request head as handshake.c takes it: parsed
 * (weir_http_parse), looked up (Host, Upgrade, Connection, the key), its
 * target's dot segments removed in place (weir_route_normalize), routed
 * against a fixed configuration (weir_route) and turned into the backend's
 * target (weir_route_target). Checks: normalising twice changes nothing; a
 * target routed and not refused for climbing reaches the backend under the
 * endpoint's path without any dot segment; every route field lies in the
 * target.
 */
#include <stdint.h>

#include "http_check.h"
#include "route.h"
#include "ws.h"

static weir_endpoint_t fz_ep_base = { .path = "/base/" };
static weir_endpoint_t fz_ep_root = { .path = "/", .query = "k=v" };
static weir_endpoint_t fz_ep_deep = { .path = "/x/y" };
static weir_version_t  fz_echo_versions[] = {
    { .version = "1.0", .is_default = 1, .production = &fz_ep_base },
    { .version = "2", .production = &fz_ep_deep },
};
static weir_version_t  fz_ab_versions[] = { { .version = "v1", .is_default = 1, .production = &fz_ep_root } };
static weir_version_t  fz_ctx_versions[] = { { .version = "1.0", .production = &fz_ep_deep } };
static weir_api_t      fz_apis[] = {
    { .name = "echo", .context = "/echo", .context_len = 5, .versions = fz_echo_versions, .nversions = 2,
      .default_version = &fz_echo_versions[0], .unknown_version_404 = 1 },
    { .name = "ab", .context = "/a/b", .context_len = 4, .versions = fz_ab_versions, .nversions = 1,
      .default_version = &fz_ab_versions[0] },
    { .name = "ctx", .context = "/ctx", .context_len = 4, .versions = fz_ctx_versions, .nversions = 1 },
};
static weir_conf_t     fz_conf = { .apis = fz_apis, .napis = 3 };

/* Does the path of T[0..LEN) (up to '?') hold a dot segment? */
static int
fz_has_dots(char *t, size_t len)
{
    char *copy = malloc(len ? len : 1);
    size_t l2 = len, low;
    if (copy == NULL) abort();
    memcpy(copy, t, len);
    int rc = weir_route_normalize(copy, &l2, &low);
    int dots = rc != WEIR_OK || l2 != len || low != SIZE_MAX || memcmp(copy, t, len) != 0;
    free(copy);
    return dots;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf;
    weir_http_msg_t m;
    int rc = fz_http_head(data, size, 1, &m, &buf);
    if (rc <= 0) {
        free(buf);
        return 0;
    }
    if (m.method < buf || m.target < buf || m.target + m.target_len > buf + rc || m.method_len == 0
        || m.target_len == 0)
        fz_http_fail("request line bounds");
    if (memchr(m.target, '#', m.target_len) != NULL) fz_http_fail("a fragment was accepted");
    (void) weir_http_count(&m, "Host");
    const weir_http_header_t *key = weir_http_find(&m, "Sec-WebSocket-Key");
    if (key != NULL && weir_ws_key_valid(key->value, key->value_len)) {
        char accept[WEIR_WS_ACCEPT_LEN + 1];
        weir_ws_accept(key->value, key->value_len, accept);
        if (strlen(accept) != WEIR_WS_ACCEPT_LEN) fz_http_fail("accept key");
    }

    /* the target, in place in the head as handshake.c does it */
    char *t = buf + (m.target - buf);
    size_t len = m.target_len, low;
    if (weir_route_normalize(t, &len, &low) == WEIR_OK) {
        if (len > m.target_len || (len == m.target_len && low != SIZE_MAX)) fz_http_fail("normalised length");
        if (fz_has_dots(t, len)) fz_http_fail("normalising twice changed the target");
        weir_route_t r;
        if (weir_route(&fz_conf, t, len, &r) == WEIR_OK) {
            if (r.api == NULL || r.version == NULL || r.rest < t || r.rest + r.rest_len > t + len)
                fz_http_fail("route bounds");
            if (r.query != NULL && (r.query < t || r.query + r.query_len > t + len)) fz_http_fail("query bounds");
            if (low == SIZE_MAX || low >= (size_t) (r.rest - t)) {
                /* accepted: what the backend is asked for */
                char out[8192];
                const weir_endpoint_t *ep = r.version->production;
                size_t ol = weir_route_target(ep, &r, out, sizeof(out));
                if (ol > 0) {
                    if (ol >= sizeof(out) || strlen(out) != ol) fz_http_fail("backend target length");
                    size_t pl = strlen(ep->path) - (ep->path[strlen(ep->path) - 1] == '/');
                    if (memcmp(out, ep->path, pl) != 0) fz_http_fail("backend target outside the endpoint");
                    if (fz_has_dots(out, ol)) fz_http_fail("dot segments reach the backend");
                }
            }
        }
    }
    free(buf);
    return 0;
}
