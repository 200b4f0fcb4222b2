/*
 * conf.h — the configuration as the core sees it.
 *
 * conf.c owns loading: it runs lua/weir/conf.lua in a LuaJIT state, which
 * evaluates the operator's file, validates every field against a schema and
 * returns a normalised table; conf.c copies that table into the structures
 * below and closes the state. Everything here is immutable once loaded and is
 * inherited by the workers across fork().
 */
#ifndef WEIR_CONF_H
#define WEIR_CONF_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

#include "weir.h"

typedef struct {
    char                    *url;          /* as written: ws://host:port/path?q */
    int                      tls;          /* 1 for wss:// */
    char                    *host;         /* host part, no brackets */
    uint16_t                 port;         /* explicit or 80/443 */
    char                    *path;         /* always starts with '/' */
    char                    *query;        /* without '?', NULL when none */
    char                    *host_header;  /* "host[:port]" for the Host header */
    struct sockaddr_storage  addr;         /* resolved once, at load */
    socklen_t                addrlen;
    /* TLS towards the backend (wss:// only) */
    char                    *ca_file;      /* NULL: system default store */
    int                      verify;       /* verify certificate and host name */
    char                    *server_name;  /* SNI and name to verify; NULL: host */
    void                    *tls_ctx;      /* SSL_CTX, made by each worker; freed with the endpoint */
} weir_endpoint_t;

typedef struct {
    char            *version;              /* "1.0" */
    int              is_default;
    weir_endpoint_t *production;           /* never NULL */
    weir_endpoint_t *sandbox;              /* NULL when not configured */
    unsigned         hooks;                /* WEIR_HOOK_* its chain implements, set by the worker */
} weir_version_t;

typedef struct {
    char            *name;
    char            *context;              /* "/echo": leading '/', no trailing '/' */
    size_t           context_len;
    weir_version_t  *versions;
    size_t           nversions;
    weir_version_t  *default_version;      /* NULL when none is marked default */
    int              unknown_version_404;  /* a version-shaped segment naming no version: 404,
                                              not the default version (unknown_version) */
} weir_api_t;

typedef struct {
    char            *address;              /* "0.0.0.0", "127.0.0.1", "::1" */
    uint16_t         port;
    char            *tls_cert;             /* PEM chain; NULL for ws:// */
    char            *tls_key;
    int              fd;                   /* the socket this process accepts on: a worker's own
                                              (fds[worker]), the master's first; -1 before */
    int             *fds;                  /* one socket per worker, bound to the same address with
                                              SO_REUSEPORT by the master (the kernel spreads the
                                              connections over them); NULL before */
    int              nfds;
    int              admin;                /* the admin API's listener (admin.*), always the last */
} weir_listen_t;

/* the admin API (admin.*) */
typedef struct {
    int              on;                   /* 0: no admin API */
    uint8_t          token_hash[32];       /* SHA-256 of the admin token (the token is not kept) */
    uint64_t         max_body;             /* bytes of a request body */
} weir_admin_conf_t;

/* metrics and usage (metrics.*), sized at start (docs/metrics.md) */
typedef struct {
    uint64_t         max_applications;     /* application labels of the host; later ones are "other" */
    uint64_t         max_series;           /* series per worker */
    uint64_t         max_usage_keys;       /* usage keys per worker; later ones fold into "other" */
} weir_metrics_conf_t;

typedef struct {
    uint64_t         max_connections;      /* per weir instance */
    uint64_t         max_message_size;     /* bytes, across fragments */
    uint64_t         buffer_size;          /* bytes buffered per direction, ceiling */
    uint64_t         max_header_size;      /* bytes of handshake request/response */
    uint64_t         handshake_timeout_ms;
    uint64_t         idle_timeout_ms;      /* 0: never */
    uint64_t         ping_interval_ms;     /* 0: weir sends no keep-alive pings */
    uint64_t         ping_timeout_ms;      /* no pong within this: peer is dead */
    uint64_t         close_timeout_ms;     /* wait for the peer's close frame */
    uint64_t         send_timeout_ms;      /* 0: never; a peer that takes no byte of its queued output this long is dropped */
    uint64_t         drain_timeout_ms;     /* on SIGTERM */
    uint64_t         drain_rate;           /* connections closed per second while draining, 0: all at once */
    uint64_t         policy_budget_ms;     /* time a policy hook may run without waiting */
} weir_limits_t;

/* state shared with other hosts (state.*) */
typedef struct {
    char                    *redis_url;      /* as written: holds the password, never logged; NULL: no Redis */
    char                    *redis_name;     /* "host:port", for messages */
    char                    *redis_user;     /* NULL: AUTH with the password alone */
    char                    *redis_password; /* NULL: no AUTH */
    uint32_t                 redis_db;       /* SELECT it when not 0 */
    struct sockaddr_storage  redis_addr;     /* resolved once, at load */
    socklen_t                redis_addrlen;
    char                    *key_prefix;     /* of every key weir writes */
    char                    *host;           /* this instance's name among the hosts; NULL: the default */
    uint64_t                 timeout_ms;     /* connect and command timeout */
    uint64_t                 sync_interval_ms;
} weir_state_conf_t;

typedef struct {
    char            *file;                 /* the configuration file, absolute */
    int              workers;              /* resolved: "auto" → cores */
    char            *pid_file;             /* NULL: none */
    char            *log_file;             /* NULL: stderr */
    int              log_level;            /* weir_log_level_e */
    weir_listen_t   *listen;
    size_t           nlisten;
    weir_limits_t    limits;
    weir_metrics_conf_t metrics;
    weir_state_conf_t state;
    weir_admin_conf_t admin;
    int              key_manager;          /* key_manager.*: the token endpoint and JWKS are served */
    weir_api_t      *apis;
    size_t           napis;
    char           **warnings;             /* "FILE:LINE: FIELD: message", nothing refused */
    size_t           nwarnings;
    uint64_t         refs;                 /* sessions routed with it (worker-local) */
} weir_conf_t;

/*
 * The directory holding weir's Lua runtime (weir/conf.lua), absolute:
 * $WEIR_LUA_DIR when set, else found from the binary's own place,
 * BINDIR/../share/weir/lua (installed) then BINDIR/../lua (the build tree).
 * Found once and kept (workers inherit it). Returns NULL when there is none,
 * after writing into ERR (when not NULL) where it looked.
 */
const char *weir_conf_lua_dir(char *err, size_t len);

/*
 * Load and validate FILE. On success returns WEIR_OK and *out owns a new
 * configuration (free it with weir_conf_free). On failure returns WEIR_ERROR
 * and has written one line per error to stderr, each "file:line: field: what".
 * Warnings (a configuration weir accepts but that is probably not what was
 * meant) are not printed: they are kept in conf->warnings.
 */
int  weir_conf_load(const char *file, weir_conf_t **out);

/* Listener L for messages: "127.0.0.1:8080", "[::1]:8443 (TLS)". Returns BUF. */
const char *weir_conf_listen_name(const weir_listen_t *l, char *buf, size_t len);

/* Exchange the listeners of A and B (a reload keeps the running ones). */
void weir_conf_swap_listen(weir_conf_t *a, weir_conf_t *b);

/* Exchange the state (state.*) of A and B: a reload keeps the running one
 * (the Redis connection, its prefix, the host's name), in C and in Lua. */
void weir_conf_swap_state(weir_conf_t *a, weir_conf_t *b);

/* When set, each error line goes here instead of stderr (reloads log them). */
extern void (*weir_conf_sink)(const char *line);
void weir_conf_free(weir_conf_t *conf);

#endif
