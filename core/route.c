/*
 * route.c — request routing: /<context>/<version>/rest → that version,
 * /<context>/rest → the default version. Contexts match whole segments.
 * A first segment shaped like a version ("2", "1.0", "v9") that names none
 * of the API's versions is not handed to the default version when the API
 * says unknown_version = "404": the client asked for a version that does
 * not exist, and gets a 404 rather than another version.
 */
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "route.h"

/* Whether SEG (LEN bytes) is shaped like a version name: an optional 'v'
 * or 'V', then digits, then any number of '.' and digits ("2", "1.0.3",
 * "v9"). */
static int
weir_route_version_shaped(const char *seg, size_t len)
{
    size_t  i = 0;
    int     digits = 0;

    if (len > 0 && (seg[0] == 'v' || seg[0] == 'V')) {
        i = 1;
    }
    for (; i < len; i++) {
        if (seg[i] >= '0' && seg[i] <= '9') {
            digits++;
        } else if (seg[i] == '.' && digits > 0) {
            digits = 0;
        } else {
            return 0;
        }
    }
    return digits > 0;
}

int
weir_route(const weir_conf_t *conf, const char *target, size_t len, weir_route_t *r)
{
    const char *q = memchr(target, '?', len);
    size_t plen = q ? (size_t) (q - target) : len;

    memset(r, 0, sizeof(*r));
    if (plen == 0 || target[0] != '/') return WEIR_DECLINED;
    if (q) {
        r->query = q + 1;
        r->query_len = len - plen - 1;
    }
    for (size_t i = 0; i < conf->napis; i++) {
        weir_api_t *api = &conf->apis[i];
        size_t cl = api->context_len;
        if (plen < cl || memcmp(target, api->context, cl) != 0) continue;
        if (plen > cl && target[cl] != '/') continue;

        const char *rest = target + cl;
        size_t rest_len = plen - cl;
        r->api = api;
        if (rest_len > 1) {
            const char *seg = rest + 1;
            const char *e = memchr(seg, '/', rest_len - 1);
            size_t sl = e ? (size_t) (e - seg) : rest_len - 1;
            for (size_t v = 0; v < api->nversions; v++) {
                const char *ver = api->versions[v].version;
                if (strlen(ver) == sl && memcmp(ver, seg, sl) == 0) {
                    r->version = &api->versions[v];
                    r->rest = seg + sl;
                    r->rest_len = rest_len - 1 - sl;
                    return WEIR_OK;
                }
            }
            if (api->unknown_version_404 && weir_route_version_shaped(seg, sl)) return WEIR_DECLINED;
        }
        if (api->default_version == NULL) return WEIR_DECLINED;
        r->version = api->default_version;
        r->rest = rest;
        r->rest_len = rest_len;
        return WEIR_OK;
    }
    return WEIR_DECLINED;
}

size_t
weir_route_target(const weir_endpoint_t *ep, const weir_route_t *r, char *buf, size_t len)
{
    size_t o = 0, pl = strlen(ep->path);
    const char *rest = r->rest;
    size_t rl = r->rest_len;

    if (pl > 0 && ep->path[pl - 1] == '/' && rl > 0 && rest[0] == '/') pl--;
    if (pl + rl + r->query_len + (ep->query ? strlen(ep->query) : 0) + 4 > len) return 0;
    memcpy(buf, ep->path, pl);
    o = pl;
    memcpy(buf + o, rest, rl);
    o += rl;
    if (o == 0) buf[o++] = '/';
    if (ep->query) {
        buf[o++] = '?';
        size_t ql = strlen(ep->query);
        memcpy(buf + o, ep->query, ql);
        o += ql;
    }
    if (r->query) {
        buf[o++] = ep->query ? '&' : '?';
        memcpy(buf + o, r->query, r->query_len);
        o += r->query_len;
    }
    buf[o] = '\0';
    return o;
}

/* How many dots SEG (LEN bytes) is made of, each written "." or "%2e": 1 or
 * 2 for a dot segment, 0 for any other. */
static int
weir_route_dots(const char *seg, size_t len)
{
    int dots = 0;
    for (size_t i = 0; i < len; dots++) {
        if (seg[i] == '.') i++;
        else if (len - i >= 3 && strncasecmp(seg + i, "%2e", 3) == 0) i += 3;
        else return 0;
    }
    return dots <= 2 ? dots : 0;
}

/* Does SEG (LEN bytes) hold a ".." between encoded slashes ("..%2fx",
 * "a%2F%2e%2e")? Without an encoded slash it is one segment, never such. */
static int
weir_route_slashed_dots(const char *seg, size_t len)
{
    const char *p = seg, *end = seg + len;
    int slashed = 0;
    for (const char *q = seg; q + 3 <= end; q++)
        if (strncasecmp(q, "%2f", 3) == 0) slashed = 1;
    if (!slashed) return 0;
    while (p <= end) {
        const char *q = p;
        while (q < end && !(end - q >= 3 && strncasecmp(q, "%2f", 3) == 0)) q++;
        if (weir_route_dots(p, (size_t) (q - p)) == 2) return 1;
        p = q + 3;
    }
    return 0;
}

int
weir_route_normalize(char *target, size_t *len, size_t *low)
{
    char *q = memchr(target, '?', *len);
    size_t plen = q ? (size_t) (q - target) : *len;
    size_t in = 0, out = 0;

    *low = SIZE_MAX;
    if (plen == 0 || target[0] != '/') return WEIR_OK;
    /* the output is never longer than what was read: it is written in place */
    while (in < plen) {
        size_t seg = in + 1, end = seg;
        while (end < plen && target[end] != '/') end++;
        if (weir_route_slashed_dots(target + seg, end - seg)) return WEIR_ERROR;
        int dots = weir_route_dots(target + seg, end - seg);
        if (dots == 2) {
            if (out == 0) return WEIR_ERROR;            /* above the root */
            while (target[--out] != '/') {}              /* the last segment goes, with its '/' */
            if (out < *low) *low = out;
        }
        if (dots > 0) {
            if (end == plen) target[out++] = '/';        /* "/a/.." is "/", a directory */
        } else {
            memmove(target + out, target + in, end - in);
            out += end - in;
        }
        in = end;
    }
    memmove(target + out, target + plen, *len - plen);
    *len = out + (*len - plen);
    return WEIR_OK;
}
