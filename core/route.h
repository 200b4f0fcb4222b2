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
 * Write the backend request target for R on endpoint EP into BUF: the
 * endpoint's path, then the rest, then both queries joined with '&'.
 * Returns its length, or 0 when it does not fit.
 */
size_t weir_route_target(const weir_endpoint_t *ep, const weir_route_t *r, char *buf, size_t len);

#endif
