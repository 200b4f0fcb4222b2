/*
 * conf.c — loading the configuration into weir_conf_t.
 *
 * Validation lives in Lua (lua/weir/conf.lua): it runs the operator's file in
 * a sandbox, checks every field against its schema and returns a normalised
 * table, or the list of errors. This file only drives it and then does what
 * Lua cannot: it copies the table into C structures, resolves backend host
 * names, and loads every certificate, key and CA file once into a throwaway
 * OpenSSL context so that a bad file is reported at load time, with the line
 * it was configured on, rather than on the first connection.
 *
 * Errors go to stderr, one line each, "weir: FILE:LINE: FIELD: message".
 * All of them are reported, not only the first.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "conf.h"
#include "log.h"

#define WEIR_CONF_FIELD_MAX  512         /* longest field path kept for a message */
#define WEIR_CONF_MAX_WORKERS 1024       /* as in weir.conf's schema */

typedef struct {
    lua_State   *L;
    const char  *file;       /* as the operator named it: messages say it so */
    int          nerrors;    /* problems reported by the checks done in C */
} weir_conf_ctx_t;

/*
 * Report a problem with the configuration: "weir: FILE:LINE: FIELD: what".
 * LINE 0 (unknown) and an empty FIELD are left out. Counts the error.
 */
void (*weir_conf_sink)(const char *line);

/* Say one line about the configuration: to the sink when one is set (a
 * reload logs them), else to stderr prefixed "weir: ". */
static void __attribute__((format(printf, 1, 2)))
weir_conf_say(const char *fmt, ...)
{
    char     buf[2048];
    va_list  ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (weir_conf_sink != NULL) {
        weir_conf_sink(buf);
    } else {
        fprintf(stderr, "weir: %s\n", buf);
    }
}

static void __attribute__((format(printf, 4, 5)))
weir_conf_error(weir_conf_ctx_t *ctx, int line, const char *field, const char *fmt, ...)
{
    char     what[1536], where[64] = "";
    va_list  ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (line > 0) {
        snprintf(where, sizeof(where), ":%d", line);
    }
    weir_conf_say("%s%s: %s%s%s", ctx->file, where, field != NULL ? field : "",
                  field != NULL && field[0] != '\0' ? ": " : "", what);
    ctx->nerrors++;
}

/*
 * Report that the normalised table does not have the shape weir.conf
 * promises (a bug in weir, not in the operator's file). Always returns
 * WEIR_ERROR so callers can "return weir_conf_internal(...)".
 */
static int
weir_conf_internal(weir_conf_ctx_t *ctx, const char *key, const char *what)
{
    weir_conf_say("%s: internal error: normalised field \"%s\" %s", ctx->file, key, what);
    ctx->nerrors++;
    return WEIR_ERROR;
}

static int
weir_conf_oom(weir_conf_ctx_t *ctx)
{
    weir_conf_say("%s: out of memory", ctx->file);
    ctx->nerrors++;
    return WEIR_ERROR;
}

/*
 * Where field KEY of the record at stack index IDX was written, read from
 * the record's _src table (weir.conf adds one to every record whose fields
 * the C side checks). Writes the line (0 when unknown) and the field path
 * (KEY when unknown) into *LINE and FIELD.
 */
static void
weir_conf_where(lua_State *L, int idx, const char *key, int *line, char *field, size_t len)
{
    *line = 0;
    snprintf(field, len, "%s", key);

    lua_getfield(L, idx, "_src");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, key);
        if (lua_istable(L, -1)) {
            lua_getfield(L, -1, "line");
            *line = (int) lua_tointeger(L, -1);
            lua_pop(L, 1);
            lua_getfield(L, -1, "field");
            if (lua_type(L, -1) == LUA_TSTRING) {
                snprintf(field, len, "%s", lua_tostring(L, -1));
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/*
 * Copy the string field KEY of the table at IDX into *OUT (malloc'd, the
 * caller frees it). A missing field leaves *OUT NULL, which is an internal
 * error when REQUIRED. Returns WEIR_OK or WEIR_ERROR (reported).
 */
static int
weir_conf_string(weir_conf_ctx_t *ctx, int idx, const char *key, int required, char **out)
{
    lua_State  *L = ctx->L;
    int         rc = WEIR_OK;

    *out = NULL;
    lua_getfield(L, idx, key);
    if (lua_isnil(L, -1)) {
        if (required) {
            rc = weir_conf_internal(ctx, key, "is missing");
        }
    } else if (lua_type(L, -1) != LUA_TSTRING) {
        rc = weir_conf_internal(ctx, key, "is not a string");
    } else if ((*out = strdup(lua_tostring(L, -1))) == NULL) {
        rc = weir_conf_oom(ctx);
    }
    lua_pop(L, 1);
    return rc;
}

/*
 * Read the number field KEY of the table at IDX into *OUT; it must be an
 * integer between MIN and MAX. Returns WEIR_OK or WEIR_ERROR (reported).
 */
static int
weir_conf_number(weir_conf_ctx_t *ctx, int idx, const char *key, double min, double max,
                 uint64_t *out)
{
    lua_State  *L = ctx->L;
    double      n;
    int         rc = WEIR_OK;

    lua_getfield(L, idx, key);
    if (lua_type(L, -1) != LUA_TNUMBER) {
        rc = weir_conf_internal(ctx, key, "is not a number");
    } else {
        n = lua_tonumber(L, -1);
        if (n < min || n > max || n != (double) (uint64_t) n) {
            rc = weir_conf_internal(ctx, key, "is out of range");
        } else {
            *out = (uint64_t) n;
        }
    }
    lua_pop(L, 1);
    return rc;
}

/* Read the boolean field KEY of the table at IDX into *OUT (0 or 1). */
static int
weir_conf_bool(weir_conf_ctx_t *ctx, int idx, const char *key, int *out)
{
    lua_State  *L = ctx->L;
    int         rc = WEIR_OK;

    lua_getfield(L, idx, key);
    if (lua_type(L, -1) != LUA_TBOOLEAN) {
        rc = weir_conf_internal(ctx, key, "is not a boolean");
    } else {
        *out = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    return rc;
}

/*
 * Push the table field KEY of the table at IDX and return its stack index,
 * or 0 (nothing pushed) when it is nil. Not a table: internal error, -1.
 */
static int
weir_conf_table(weir_conf_ctx_t *ctx, int idx, const char *key)
{
    lua_State  *L = ctx->L;

    lua_getfield(L, idx, key);
    if (lua_istable(L, -1)) {
        return lua_gettop(L);
    }
    if (!lua_isnil(L, -1)) {
        lua_pop(L, 1);
        weir_conf_internal(ctx, key, "is not a table");
        return -1;
    }
    lua_pop(L, 1);
    return 0;
}

/* ---- certificates and keys --------------------------------------------- */

/* Passphrase callback that supplies none: an encrypted key fails to load
 * instead of prompting on the terminal. */
static int
weir_conf_no_passphrase(char *buf, int size, int rwflag, void *data)
{
    WEIR_UNUSED(buf);
    WEIR_UNUSED(size);
    WEIR_UNUSED(rwflag);
    WEIR_UNUSED(data);
    return 0;
}

/* The reason for the first error in OpenSSL's queue (the root cause; later
 * ones are the callers' "PEM lib"), and clear the queue. */
static const char *
weir_conf_ssl_reason(void)
{
    const char     *reason;
    unsigned long   e = ERR_peek_error();

    reason = e != 0 ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return reason != NULL ? reason : "unknown error";
}

/*
 * Check that PATH can be opened for reading. Returns 0, or the errno.
 * Done before handing the file to OpenSSL so that "No such file or
 * directory" reads as that, not as a PEM parsing failure.
 */
static int
weir_conf_readable(const char *path)
{
    FILE  *f = fopen(path, "r");

    if (f == NULL) {
        return errno;
    }
    fclose(f);
    return 0;
}

/*
 * Load a listener's certificate chain and key (the "tls" record at IDX)
 * into a throwaway server context: both must be readable PEM, the key not
 * encrypted, and the key must match the certificate. Problems are reported
 * with the line of "cert" or "key"; returns WEIR_ERROR only when OpenSSL
 * itself fails.
 */
static int
weir_conf_check_tls_pair(weir_conf_ctx_t *ctx, int idx, const char *cert, const char *key)
{
    SSL_CTX    *ssl = NULL;
    EVP_PKEY   *pkey = NULL;
    FILE       *f = NULL;
    char        field[WEIR_CONF_FIELD_MAX];
    int         line, err, cert_ok = 0, rc = WEIR_OK;

    ssl = SSL_CTX_new(TLS_server_method());
    if (ssl == NULL) {
        weir_conf_say("%s: cannot create a TLS context: %s",
                ctx->file, weir_conf_ssl_reason());
        ctx->nerrors++;
        rc = WEIR_ERROR;
        goto done;
    }

    weir_conf_where(ctx->L, idx, "cert", &line, field, sizeof(field));
    if ((err = weir_conf_readable(cert)) != 0) {
        weir_conf_error(ctx, line, field, "cannot read \"%s\": %s", cert, strerror(err));
    } else if (SSL_CTX_use_certificate_chain_file(ssl, cert) != 1) {
        weir_conf_error(ctx, line, field, "\"%s\" is not a usable PEM certificate chain (%s)",
                        cert, weir_conf_ssl_reason());
    } else {
        cert_ok = 1;
    }

    weir_conf_where(ctx->L, idx, "key", &line, field, sizeof(field));
    f = fopen(key, "r");
    if (f == NULL) {
        weir_conf_error(ctx, line, field, "cannot read \"%s\": %s", key, strerror(errno));
        goto done;
    }
    pkey = PEM_read_PrivateKey(f, NULL, weir_conf_no_passphrase, NULL);
    if (pkey == NULL) {
        weir_conf_error(ctx, line, field,
                        "\"%s\" is not a PEM private key, or it is encrypted (%s)",
                        key, weir_conf_ssl_reason());
        goto done;
    }
    if (cert_ok
        && (SSL_CTX_use_PrivateKey(ssl, pkey) != 1 || SSL_CTX_check_private_key(ssl) != 1))
    {
        ERR_clear_error();
        weir_conf_error(ctx, line, field, "the key in \"%s\" does not match the certificate in \"%s\"",
                        key, cert);
    }

done:
    if (f != NULL) {
        fclose(f);
    }
    EVP_PKEY_free(pkey);
    SSL_CTX_free(ssl);
    return rc;
}

/*
 * Load an endpoint's CA file (field "ca" of the endpoint record at IDX)
 * into a throwaway client context: it must be readable and hold at least
 * one PEM certificate. Problems are reported; returns WEIR_ERROR only when
 * OpenSSL itself fails.
 */
static int
weir_conf_check_ca(weir_conf_ctx_t *ctx, int idx, const char *ca)
{
    SSL_CTX  *ssl;
    char      field[WEIR_CONF_FIELD_MAX];
    int       line, err;

    weir_conf_where(ctx->L, idx, "ca", &line, field, sizeof(field));
    if ((err = weir_conf_readable(ca)) != 0) {
        weir_conf_error(ctx, line, field, "cannot read \"%s\": %s", ca, strerror(err));
        return WEIR_OK;
    }
    ssl = SSL_CTX_new(TLS_client_method());
    if (ssl == NULL) {
        weir_conf_say("%s: cannot create a TLS context: %s",
                ctx->file, weir_conf_ssl_reason());
        ctx->nerrors++;
        return WEIR_ERROR;
    }
    if (SSL_CTX_load_verify_locations(ssl, ca, NULL) != 1) {
        weir_conf_error(ctx, line, field, "\"%s\" holds no usable PEM certificate (%s)",
                        ca, weir_conf_ssl_reason());
    }
    SSL_CTX_free(ssl);
    return WEIR_OK;
}

/* ---- copying the normalised table -------------------------------------- */

/*
 * Resolve HOST:PORT (getaddrinfo, the first address it returns) into ADDR
 * and ADDRLEN. A failure is reported with the line of field KEY of the
 * record at IDX.
 */
static void
weir_conf_resolve_host(weir_conf_ctx_t *ctx, int idx, const char *key, const char *host, uint16_t port,
                       struct sockaddr_storage *addr, socklen_t *addrlen)
{
    struct addrinfo   hints, *res = NULL;
    char              serv[8], field[WEIR_CONF_FIELD_MAX];
    int               line, rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(serv, sizeof(serv), "%u", (unsigned) port);

    rc = getaddrinfo(host, serv, &hints, &res);
    if (rc != 0 || res == NULL) {
        weir_conf_where(ctx->L, idx, key, &line, field, sizeof(field));
        weir_conf_error(ctx, line, field, "cannot resolve host \"%s\": %s", host,
                        rc == EAI_SYSTEM ? strerror(errno)
                        : rc != 0 ? gai_strerror(rc) : "no address");
    } else {
        memcpy(addr, res->ai_addr, res->ai_addrlen);
        *addrlen = res->ai_addrlen;
    }
    if (res != NULL) {
        freeaddrinfo(res);
    }
}

/* Resolve EP's host into EP->addr; a failure names the endpoint's URL. */
static void
weir_conf_resolve(weir_conf_ctx_t *ctx, int idx, weir_endpoint_t *ep)
{
    weir_conf_resolve_host(ctx, idx, "url", ep->host, ep->port, &ep->addr, &ep->addrlen);
}

static void
weir_conf_free_endpoint(weir_endpoint_t *ep)
{
    if (ep == NULL) {
        return;
    }
    free(ep->url);
    free(ep->host);
    free(ep->path);
    free(ep->query);
    free(ep->host_header);
    free(ep->ca_file);
    free(ep->server_name);
    SSL_CTX_free(ep->tls_ctx);
    free(ep);
}

/*
 * Copy the endpoint field KEY of the table at IDX into *OUT (NULL when the
 * field is absent), resolve its host and check its CA file. *OUT is set as
 * soon as it is allocated, so the caller frees it on any failure.
 * Returns WEIR_ERROR only for internal failures; the checks' problems are
 * counted in ctx->nerrors.
 */
static int
weir_conf_copy_endpoint(weir_conf_ctx_t *ctx, int idx, const char *key, weir_endpoint_t **out)
{
    weir_endpoint_t  *ep;
    uint64_t          port;
    int               e;

    *out = NULL;
    if ((e = weir_conf_table(ctx, idx, key)) <= 0) {
        return e;
    }
    if ((ep = calloc(1, sizeof(*ep))) == NULL) {
        return weir_conf_oom(ctx);
    }
    *out = ep;

    if (weir_conf_string(ctx, e, "url", 1, &ep->url) != WEIR_OK
        || weir_conf_bool(ctx, e, "tls", &ep->tls) != WEIR_OK
        || weir_conf_string(ctx, e, "host", 1, &ep->host) != WEIR_OK
        || weir_conf_number(ctx, e, "port", 1, 65535, &port) != WEIR_OK
        || weir_conf_string(ctx, e, "path", 1, &ep->path) != WEIR_OK
        || weir_conf_string(ctx, e, "query", 0, &ep->query) != WEIR_OK
        || weir_conf_string(ctx, e, "host_header", 1, &ep->host_header) != WEIR_OK
        || weir_conf_string(ctx, e, "ca", 0, &ep->ca_file) != WEIR_OK
        || weir_conf_bool(ctx, e, "verify", &ep->verify) != WEIR_OK
        || weir_conf_string(ctx, e, "server_name", 0, &ep->server_name) != WEIR_OK)
    {
        return WEIR_ERROR;
    }
    ep->port = (uint16_t) port;

    weir_conf_resolve(ctx, e, ep);
    if (ep->ca_file != NULL && weir_conf_check_ca(ctx, e, ep->ca_file) != WEIR_OK) {
        return WEIR_ERROR;
    }
    lua_pop(ctx->L, 1);
    return WEIR_OK;
}

/* Copy the version record at IDX into V (zeroed by the caller). */
static int
weir_conf_copy_version(weir_conf_ctx_t *ctx, int idx, weir_version_t *v)
{
    int  e;

    if (weir_conf_string(ctx, idx, "version", 1, &v->version) != WEIR_OK
        || weir_conf_bool(ctx, idx, "default", &v->is_default) != WEIR_OK)
    {
        return WEIR_ERROR;
    }
    if ((e = weir_conf_table(ctx, idx, "endpoints")) <= 0) {
        return e < 0 ? WEIR_ERROR : weir_conf_internal(ctx, "endpoints", "is missing");
    }
    if (weir_conf_copy_endpoint(ctx, e, "production", &v->production) != WEIR_OK
        || weir_conf_copy_endpoint(ctx, e, "sandbox", &v->sandbox) != WEIR_OK)
    {
        return WEIR_ERROR;
    }
    if (v->production == NULL) {
        return weir_conf_internal(ctx, "production", "is missing");
    }
    lua_pop(ctx->L, 1);
    return WEIR_OK;
}

/* Copy the listen record at IDX into LS (zeroed by the caller), and load
 * its certificate and key if it has a "tls" record. */
static int
weir_conf_copy_listen(weir_conf_ctx_t *ctx, int idx, weir_listen_t *ls)
{
    struct in6_addr   a6;
    uint64_t          port;
    char              field[WEIR_CONF_FIELD_MAX];
    int               tls, line;

    ls->fd = -1;
    if (weir_conf_string(ctx, idx, "address", 1, &ls->address) != WEIR_OK
        || weir_conf_number(ctx, idx, "port", 1, 65535, &port) != WEIR_OK)
    {
        return WEIR_ERROR;
    }
    ls->port = (uint16_t) port;

    /* weir.conf accepts only address literals; make sure libc agrees. */
    if (inet_pton(AF_INET, ls->address, &a6) != 1 && inet_pton(AF_INET6, ls->address, &a6) != 1) {
        weir_conf_where(ctx->L, idx, "address", &line, field, sizeof(field));
        weir_conf_error(ctx, line, field, "\"%s\" is not an IPv4 or IPv6 address", ls->address);
    }

    if ((tls = weir_conf_table(ctx, idx, "tls")) < 0) {
        return WEIR_ERROR;
    }
    if (tls > 0) {
        if (weir_conf_string(ctx, tls, "cert", 1, &ls->tls_cert) != WEIR_OK
            || weir_conf_string(ctx, tls, "key", 1, &ls->tls_key) != WEIR_OK
            || weir_conf_check_tls_pair(ctx, tls, ls->tls_cert, ls->tls_key) != WEIR_OK)
        {
            return WEIR_ERROR;
        }
        lua_pop(ctx->L, 1);
    }
    return WEIR_OK;
}

/* The admin record, when there is one: its listener goes last in the list
 * of listeners, and only the SHA-256 of its token is kept. */
static int
weir_conf_copy_admin(weir_conf_ctx_t *ctx, int idx, weir_conf_t *conf)
{
    char *token = NULL;
    int   a, rc = WEIR_ERROR;

    if ((a = weir_conf_table(ctx, idx, "admin")) <= 0) {
        return a < 0 ? WEIR_ERROR : WEIR_OK;
    }
    weir_listen_t *nl = realloc(conf->listen, (conf->nlisten + 1) * sizeof(*nl));
    if (nl == NULL) {
        weir_conf_internal(ctx, "admin", "out of memory");
        goto done;
    }
    conf->listen = nl;
    memset(&nl[conf->nlisten], 0, sizeof(*nl));
    nl[conf->nlisten].admin = 1;
    conf->nlisten++;
    if (weir_conf_copy_listen(ctx, a, &nl[conf->nlisten - 1]) != WEIR_OK
        || weir_conf_number(ctx, a, "max_body", 1, 1ULL << 40, &conf->admin.max_body) != WEIR_OK
        || weir_conf_string(ctx, a, "token", 1, &token) != WEIR_OK)
    {
        goto done;
    }
    if (EVP_Digest(token, strlen(token), conf->admin.token_hash, NULL, EVP_sha256(), NULL) != 1) {
        weir_conf_internal(ctx, "admin", "cannot hash the token");
        goto done;
    }
    conf->admin.on = 1;
    rc = WEIR_OK;
    lua_pop(ctx->L, 1);

done:
    if (token != NULL) {
        OPENSSL_cleanse(token, strlen(token));
        free(token);
    }
    return rc;
}

/* The limits, declaratively: field of weir.conf's "limits" → member. */
static const struct {
    const char  *name;
    size_t       offset;
} weir_conf_limits[] = {
    { "max_connections",   offsetof(weir_limits_t, max_connections) },
    { "max_message_size",  offsetof(weir_limits_t, max_message_size) },
    { "buffer_size",       offsetof(weir_limits_t, buffer_size) },
    { "max_header_size",   offsetof(weir_limits_t, max_header_size) },
    { "handshake_timeout", offsetof(weir_limits_t, handshake_timeout_ms) },
    { "idle_timeout",      offsetof(weir_limits_t, idle_timeout_ms) },
    { "ping_interval",     offsetof(weir_limits_t, ping_interval_ms) },
    { "ping_timeout",      offsetof(weir_limits_t, ping_timeout_ms) },
    { "close_timeout",     offsetof(weir_limits_t, close_timeout_ms) },
    { "send_timeout",      offsetof(weir_limits_t, send_timeout_ms) },
    { "drain_timeout",     offsetof(weir_limits_t, drain_timeout_ms) },
    { "drain_rate",        offsetof(weir_limits_t, drain_rate) },
    { "policy_budget",     offsetof(weir_limits_t, policy_budget_ms) },
};

/* metrics.*: field -> member */
static const struct {
    const char  *name;
    size_t       offset;
} weir_conf_metrics[] = {
    { "max_applications", offsetof(weir_metrics_conf_t, max_applications) },
    { "max_series",       offsetof(weir_metrics_conf_t, max_series) },
    { "max_usage_keys",   offsetof(weir_metrics_conf_t, max_usage_keys) },
};

static const struct {
    const char  *name;
    int          level;
} weir_conf_levels[] = {
    { "debug", WEIR_LOG_DEBUG },
    { "info",  WEIR_LOG_INFO },
    { "warn",  WEIR_LOG_WARN },
    { "error", WEIR_LOG_ERROR },
};

/*
 * Copy the list field KEY of the table at IDX: allocate *ITEMS (N entries
 * of SIZE bytes, zeroed; *N set at once so that a partial copy is freed
 * whole) and call COPY on each entry.
 */
static int
weir_conf_copy_list(weir_conf_ctx_t *ctx, int idx, const char *key, size_t size,
                    void **items, size_t *n, int (*copy)(weir_conf_ctx_t *, int, void *))
{
    lua_State  *L = ctx->L;
    size_t      i, count;
    int         list;

    if ((list = weir_conf_table(ctx, idx, key)) <= 0) {
        return list < 0 ? WEIR_ERROR : weir_conf_internal(ctx, key, "is missing");
    }
    count = lua_objlen(L, list);
    if (count == 0) {
        return weir_conf_internal(ctx, key, "is empty");
    }
    if ((*items = calloc(count, size)) == NULL) {
        return weir_conf_oom(ctx);
    }
    *n = count;
    for (i = 0; i < count; i++) {
        lua_rawgeti(L, list, (int) i + 1);
        if (!lua_istable(L, -1)) {
            return weir_conf_internal(ctx, key, "has an entry that is not a table");
        }
        if (copy(ctx, lua_gettop(L), (char *) *items + i * size) != WEIR_OK) {
            return WEIR_ERROR;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return WEIR_OK;
}

static int
weir_conf_copy_version_item(weir_conf_ctx_t *ctx, int idx, void *item)
{
    return weir_conf_copy_version(ctx, idx, item);
}

/* Copy the API record at IDX into API (zeroed by the caller). */
static int
weir_conf_copy_api(weir_conf_ctx_t *ctx, int idx, weir_api_t *api)
{
    size_t  i;
    char   *unknown = NULL;
    int     rc;

    rc = weir_conf_string(ctx, idx, "unknown_version", 1, &unknown);
    if (rc == WEIR_OK && strcmp(unknown, "404") != 0 && strcmp(unknown, "default") != 0) {
        rc = weir_conf_internal(ctx, "unknown_version", "is neither \"404\" nor \"default\"");
    }
    api->unknown_version_404 = rc == WEIR_OK && strcmp(unknown, "404") == 0;
    free(unknown);
    if (rc != WEIR_OK
        || weir_conf_string(ctx, idx, "name", 1, &api->name) != WEIR_OK
        || weir_conf_string(ctx, idx, "context", 1, &api->context) != WEIR_OK
        || weir_conf_copy_list(ctx, idx, "versions", sizeof(weir_version_t),
                               (void **) &api->versions, &api->nversions,
                               weir_conf_copy_version_item) != WEIR_OK)
    {
        return WEIR_ERROR;
    }
    api->context_len = strlen(api->context);
    for (i = 0; i < api->nversions; i++) {
        if (api->versions[i].is_default) {
            api->default_version = &api->versions[i];
        }
    }
    return WEIR_OK;
}

static int
weir_conf_copy_listen_item(weir_conf_ctx_t *ctx, int idx, void *item)
{
    return weir_conf_copy_listen(ctx, idx, item);
}

static int
weir_conf_copy_api_item(weir_conf_ctx_t *ctx, int idx, void *item)
{
    return weir_conf_copy_api(ctx, idx, item);
}

/*
 * Copy the "state" record at IDX into ST (zeroed by the caller) and resolve
 * the Redis host: a failure is reported with the line of state.redis.
 */
static int
weir_conf_copy_state(weir_conf_ctx_t *ctx, int idx, weir_state_conf_t *st)
{
    lua_State  *L = ctx->L;
    char       *host = NULL;
    uint64_t    port = 0, db = 0;
    int         r, rc = WEIR_ERROR;

    if (weir_conf_number(ctx, idx, "timeout", 1, 3600000, &st->timeout_ms) != WEIR_OK
        || weir_conf_number(ctx, idx, "sync_interval", 1, 3600000, &st->sync_interval_ms) != WEIR_OK
        || weir_conf_string(ctx, idx, "key_prefix", 1, &st->key_prefix) != WEIR_OK
        || weir_conf_string(ctx, idx, "host", 0, &st->host) != WEIR_OK)
    {
        return WEIR_ERROR;
    }
    if ((r = weir_conf_table(ctx, idx, "redis")) <= 0) {
        return r < 0 ? WEIR_ERROR : WEIR_OK;
    }
    if (weir_conf_string(ctx, r, "url", 1, &st->redis_url) != WEIR_OK
        || weir_conf_string(ctx, r, "name", 1, &st->redis_name) != WEIR_OK
        || weir_conf_string(ctx, r, "host", 1, &host) != WEIR_OK
        || weir_conf_number(ctx, r, "port", 1, 65535, &port) != WEIR_OK
        || weir_conf_number(ctx, r, "db", 0, 2147483647, &db) != WEIR_OK
        || weir_conf_string(ctx, r, "user", 0, &st->redis_user) != WEIR_OK
        || weir_conf_string(ctx, r, "password", 0, &st->redis_password) != WEIR_OK)
    {
        goto done;
    }
    st->redis_db = (uint32_t) db;
    lua_pop(L, 1);
    weir_conf_resolve_host(ctx, idx, "redis", host, (uint16_t) port, &st->redis_addr, &st->redis_addrlen);
    rc = WEIR_OK;

done:
    free(host);
    return rc;
}

/* Copy the normalised table's "warnings" (a list of strings, maybe empty
 * or absent) into CONF. */
static int
weir_conf_copy_warnings(weir_conf_ctx_t *ctx, int idx, weir_conf_t *conf)
{
    lua_State  *L = ctx->L;
    size_t      i, n;
    int         t;

    if ((t = weir_conf_table(ctx, idx, "warnings")) <= 0) {
        return t < 0 ? WEIR_ERROR : WEIR_OK;
    }
    n = lua_objlen(L, t);
    if (n > 0 && (conf->warnings = calloc(n, sizeof(char *))) == NULL) {
        return weir_conf_oom(ctx);
    }
    for (i = 0; i < n; i++) {
        lua_rawgeti(L, t, (int) i + 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            return weir_conf_internal(ctx, "warnings", "has an entry that is not a string");
        }
        if ((conf->warnings[i] = strdup(lua_tostring(L, -1))) == NULL) {
            return weir_conf_oom(ctx);
        }
        conf->nwarnings = i + 1;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return WEIR_OK;
}

/*
 * Copy the normalised configuration at stack index IDX into CONF (zeroed
 * by the caller). Returns WEIR_ERROR on an internal failure, after which the
 * Lua stack is unbalanced and the state must only be closed; problems found
 * by the checks are counted in ctx->nerrors and do not stop the copy.
 */
static int
weir_conf_copy(weir_conf_ctx_t *ctx, int idx, weir_conf_t *conf)
{
    lua_State  *L = ctx->L;
    uint64_t    workers;
    char       *level = NULL;
    size_t      i;
    int         t, rc = WEIR_ERROR;

    if (weir_conf_string(ctx, idx, "file", 1, &conf->file) != WEIR_OK
        || weir_conf_number(ctx, idx, "workers", 1, WEIR_CONF_MAX_WORKERS, &workers) != WEIR_OK
        || weir_conf_string(ctx, idx, "pid_file", 0, &conf->pid_file) != WEIR_OK)
    {
        goto done;
    }
    conf->workers = (int) workers;

    if ((t = weir_conf_table(ctx, idx, "log")) <= 0) {
        if (t == 0) {
            weir_conf_internal(ctx, "log", "is missing");
        }
        goto done;
    }
    if (weir_conf_string(ctx, t, "file", 0, &conf->log_file) != WEIR_OK
        || weir_conf_string(ctx, t, "level", 1, &level) != WEIR_OK)
    {
        goto done;
    }
    conf->log_level = -1;
    for (i = 0; i < sizeof(weir_conf_levels) / sizeof(weir_conf_levels[0]); i++) {
        if (strcmp(level, weir_conf_levels[i].name) == 0) {
            conf->log_level = weir_conf_levels[i].level;
        }
    }
    if (conf->log_level < 0) {
        weir_conf_internal(ctx, "log.level", "is not a known level");
        goto done;
    }
    lua_pop(L, 1);

    if ((t = weir_conf_table(ctx, idx, "limits")) <= 0) {
        if (t == 0) {
            weir_conf_internal(ctx, "limits", "is missing");
        }
        goto done;
    }
    for (i = 0; i < sizeof(weir_conf_limits) / sizeof(weir_conf_limits[0]); i++) {
        if (weir_conf_number(ctx, t, weir_conf_limits[i].name, 0, 9007199254740992.0,
                             (uint64_t *) ((char *) &conf->limits + weir_conf_limits[i].offset))
            != WEIR_OK)
        {
            goto done;
        }
    }
    lua_pop(L, 1);

    if ((t = weir_conf_table(ctx, idx, "metrics")) <= 0) {
        if (t == 0) {
            weir_conf_internal(ctx, "metrics", "is missing");
        }
        goto done;
    }
    for (i = 0; i < sizeof(weir_conf_metrics) / sizeof(weir_conf_metrics[0]); i++) {
        if (weir_conf_number(ctx, t, weir_conf_metrics[i].name, 0, 1048576.0,
                             (uint64_t *) ((char *) &conf->metrics + weir_conf_metrics[i].offset))
            != WEIR_OK)
        {
            goto done;
        }
    }
    lua_pop(L, 1);

    if ((t = weir_conf_table(ctx, idx, "state")) <= 0) {
        if (t == 0) {
            weir_conf_internal(ctx, "state", "is missing");
        }
        goto done;
    }
    if (weir_conf_copy_state(ctx, t, &conf->state) != WEIR_OK) {
        goto done;
    }
    lua_pop(L, 1);

    if (weir_conf_copy_list(ctx, idx, "listen", sizeof(weir_listen_t), (void **) &conf->listen,
                            &conf->nlisten, weir_conf_copy_listen_item) != WEIR_OK
        || weir_conf_copy_list(ctx, idx, "apis", sizeof(weir_api_t), (void **) &conf->apis,
                               &conf->napis, weir_conf_copy_api_item) != WEIR_OK)
    {
        goto done;
    }
    if (weir_conf_copy_admin(ctx, idx, conf) != WEIR_OK || weir_conf_copy_warnings(ctx, idx, conf) != WEIR_OK) {
        goto done;
    }
    if ((t = weir_conf_table(ctx, idx, "key_manager")) < 0) {
        goto done;
    }
    if (t > 0) {
        conf->key_manager = 1;
        lua_pop(L, 1);
    }
    rc = WEIR_OK;

done:
    free(level);
    return rc;
}

/* ---- finding the Lua runtime -------------------------------------------- */

static char weir_conf_lua[PATH_MAX];     /* found once, inherited by the workers */

/* Whether DIR holds weir's Lua runtime; if so, its absolute form goes into
 * weir_conf_lua. */
static int
weir_conf_take_lua_dir(const char *dir)
{
    char  probe[PATH_MAX + 32], real[PATH_MAX];

    snprintf(probe, sizeof(probe), "%s/weir/conf.lua", dir);
    if (access(probe, R_OK) != 0 || realpath(dir, real) == NULL) {
        return 0;
    }
    snprintf(weir_conf_lua, sizeof(weir_conf_lua), "%s", real);
    return 1;
}

const char *
weir_conf_lua_dir(char *err, size_t len)
{
    const char  *env;
    char         exe[PATH_MAX], installed[PATH_MAX + 32], tree[PATH_MAX + 32], *slash;
    ssize_t      n;

    if (weir_conf_lua[0] != '\0') {
        return weir_conf_lua;
    }
    env = getenv("WEIR_LUA_DIR");
    if (env != NULL && env[0] != '\0') {
        if (weir_conf_take_lua_dir(env)) {
            return weir_conf_lua;
        }
        if (err != NULL) {
            snprintf(err, len, "WEIR_LUA_DIR is %s, which holds no weir/conf.lua: it must name "
                     "the directory of weir's Lua runtime (or be unset)", env);
        }
        return NULL;
    }

    /* BINDIR/../share/weir/lua, then BINDIR/../lua, BINDIR's parent
     * written out (not "..") so that messages read well */
    n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) {
        if (err != NULL) {
            snprintf(err, len, "cannot find weir's own binary (/proc/self/exe: %s): set WEIR_LUA_DIR "
                     "to the directory holding weir/conf.lua", strerror(errno));
        }
        return NULL;
    }
    exe[n] = '\0';
    for (int up = 0; up < 2; up++) {        /* the binary's directory, then its parent */
        slash = strrchr(exe, '/');
        if (slash == NULL) {
            break;
        }
        *slash = '\0';
    }
    snprintf(installed, sizeof(installed), "%s/share/weir/lua", exe);
    snprintf(tree, sizeof(tree), "%s/lua", exe);
    if (weir_conf_take_lua_dir(installed) || weir_conf_take_lua_dir(tree)) {
        return weir_conf_lua;
    }
    if (err != NULL) {
        snprintf(err, len, "cannot find weir's Lua runtime (weir/conf.lua) in %s or %s: install weir "
                 "with its runtime (make install), or set WEIR_LUA_DIR to the directory holding "
                 "weir/conf.lua", installed, tree);
    }
    return NULL;
}

/* ---- running weir.conf ------------------------------------------------- */

/* Message handler for lua_pcall: the error with a traceback. */
static int
weir_conf_traceback(lua_State *L)
{
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

/*
 * Run require("weir.conf").load(file, { cwd =, cpus = }) in ctx->L. On
 * success returns WEIR_OK with the normalised table on top of the stack.
 * Otherwise prints weir.conf's errors (or why it could not run) and returns
 * WEIR_ERROR.
 */
static int
weir_conf_run(weir_conf_ctx_t *ctx)
{
    lua_State   *L = ctx->L;
    const char  *dir;
    char         cwd[PATH_MAX], why[PATH_MAX * 3];
    long         cpus;
    size_t       i, n;
    int          handler;

    dir = weir_conf_lua_dir(why, sizeof(why));
    if (dir == NULL) {
        weir_conf_say("%s", why);
        return WEIR_ERROR;
    }

    /* weir's own Lua tree first; C modules (cjson) from the system's paths */
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua", dir, dir);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);

    lua_pushcfunction(L, weir_conf_traceback);
    handler = lua_gettop(L);

    lua_getglobal(L, "require");
    lua_pushliteral(L, "weir.conf");
    if (lua_pcall(L, 1, 1, 0) != 0) {
        weir_conf_say("cannot load weir.conf from %s: %s", dir, lua_tostring(L, -1));
        return WEIR_ERROR;
    }
    lua_getfield(L, -1, "load");
    lua_pushstring(L, ctx->file);
    lua_createtable(L, 0, 2);
    if (getcwd(cwd, sizeof(cwd)) != NULL) {
        lua_pushstring(L, cwd);
        lua_setfield(L, -2, "cwd");
    }
    cpus = sysconf(_SC_NPROCESSORS_ONLN);
    lua_pushinteger(L, cpus > 0 ? WEIR_MIN(cpus, WEIR_CONF_MAX_WORKERS) : 1);
    lua_setfield(L, -2, "cpus");

    if (lua_pcall(L, 2, 2, handler) != 0) {
        weir_conf_say("%s: internal error in weir.conf: %s",
                ctx->file, lua_tostring(L, -1));
        return WEIR_ERROR;
    }
    if (lua_istable(L, -2)) {
        lua_pop(L, 1);
        return WEIR_OK;
    }
    if (!lua_istable(L, -1)) {
        weir_conf_say("%s: internal error: weir.conf returned no configuration and no errors",
                      ctx->file);
        return WEIR_ERROR;
    }
    n = lua_objlen(L, -1);
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (int) i);
        weir_conf_say("%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
        lua_pop(L, 1);
    }
    return WEIR_ERROR;
}

int
weir_conf_load(const char *file, weir_conf_t **out)
{
    weir_conf_ctx_t   ctx;
    weir_conf_t      *conf = NULL;

    *out = NULL;
    ctx.file = file;
    ctx.nerrors = 0;
    ctx.L = luaL_newstate();
    if (ctx.L == NULL) {
        weir_conf_oom(&ctx);
        goto failed;
    }
    luaL_openlibs(ctx.L);

    if (weir_conf_run(&ctx) != WEIR_OK) {
        goto failed;
    }
    if ((conf = calloc(1, sizeof(*conf))) == NULL) {
        weir_conf_oom(&ctx);
        goto failed;
    }
    if (weir_conf_copy(&ctx, lua_gettop(ctx.L), conf) != WEIR_OK || ctx.nerrors > 0) {
        goto failed;
    }

    lua_close(ctx.L);
    *out = conf;
    return WEIR_OK;

failed:
    if (ctx.L != NULL) {
        lua_close(ctx.L);
    }
    weir_conf_free(conf);
    return WEIR_ERROR;
}

void
weir_conf_free(weir_conf_t *conf)
{
    size_t  i, j;

    if (conf == NULL) {
        return;
    }
    for (i = 0; conf->apis != NULL && i < conf->napis; i++) {
        weir_api_t  *api = &conf->apis[i];

        for (j = 0; api->versions != NULL && j < api->nversions; j++) {
            free(api->versions[j].version);
            weir_conf_free_endpoint(api->versions[j].production);
            weir_conf_free_endpoint(api->versions[j].sandbox);
        }
        free(api->versions);
        free(api->name);
        free(api->context);
    }
    free(conf->apis);
    for (i = 0; conf->listen != NULL && i < conf->nlisten; i++) {
        free(conf->listen[i].address);
        free(conf->listen[i].tls_cert);
        free(conf->listen[i].tls_key);
        free(conf->listen[i].fds);
    }
    free(conf->listen);
    for (i = 0; conf->warnings != NULL && i < conf->nwarnings; i++) {
        free(conf->warnings[i]);
    }
    free(conf->warnings);
    free(conf->state.redis_url);
    free(conf->state.redis_name);
    free(conf->state.redis_user);
    if (conf->state.redis_password != NULL) {
        OPENSSL_cleanse(conf->state.redis_password, strlen(conf->state.redis_password));
        free(conf->state.redis_password);
    }
    free(conf->state.key_prefix);
    free(conf->state.host);
    free(conf->file);
    free(conf->pid_file);
    free(conf->log_file);
    free(conf);
}

const char *
weir_conf_listen_name(const weir_listen_t *l, char *buf, size_t len)
{
    int  v6 = strchr(l->address, ':') != NULL;

    snprintf(buf, len, "%s%s%s:%u%s", v6 ? "[" : "", l->address, v6 ? "]" : "", l->port,
             l->tls_cert ? " (TLS)" : "");
    return buf;
}

void
weir_conf_swap_listen(weir_conf_t *a, weir_conf_t *b)
{
    weir_listen_t *l = a->listen;
    size_t         n = a->nlisten;

    a->listen = b->listen;
    a->nlisten = b->nlisten;
    b->listen = l;
    b->nlisten = n;
}

void
weir_conf_swap_state(weir_conf_t *a, weir_conf_t *b)
{
    weir_state_conf_t st = a->state;

    a->state = b->state;
    b->state = st;
}
