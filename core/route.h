/*
 * route.h — maps a request target to an API version and the path the
 * backend is asked for.
 */
#ifndef WEIR_ROUTE_H
#define WEIR_ROUTE_H

#include "conf.h"

typedef struct {
    weir_api_t     *api;
    weir_version_t *version;
    const char     *rest;       /* path after context[/version], may be "" */
    size_t          rest_len;
    const char     *query;      /* after '?', NULL when none */
    size_t          query_len;
} weir_route_t;

/*
 * Route TARGET (origin-form, "/ctx/ver/rest?query"). Returns WEIR_OK and
 * fills R, or WEIR_DECLINED when no API (or no default version) matches,
 * or when the API refuses an unknown version (unknown_version = "404") and
 * the first segment after its context is shaped like one.
 */
int weir_route(const weir_conf_t *conf, const char *target, size_t len, weir_route_t *r);

/*
 * Remove the dot segments of TARGET's path in place (RFC 3986 5.2.4: "."
 * and "..", also written with %2e), the query moving along unchanged, and
 * set *LEN to the new length. *LOW gets the shortest length a ".." cut the
 * path back to (SIZE_MAX when none did): the path climbed out of a route
 * whose context (and version) is longer than that. Returns WEIR_OK, or
 * WEIR_ERROR when a ".." climbs above the root, or a segment holds a ".."
 * between encoded slashes (%2f), which a backend decoding them first would
 * climb with. A target that is not a path ("*", absolute-form) is left as is.
 */
int weir_route_normalize(char *target, size_t *len, size_t *low);

/*
 * Write the backend request target for R on endpoint EP into BUF: the
 * endpoint's path, then the rest, then both queries joined with '&'.
 * Returns its length, or 0 when it does not fit.
 */
size_t weir_route_target(const weir_endpoint_t *ep, const weir_route_t *r, char *buf, size_t len);

#endif
