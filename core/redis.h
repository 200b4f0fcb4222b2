/*
 * redis.h — a worker's one connection to Redis (state.redis), for every
 * subsystem that shares state with other hosts: the shared limits
 * (limit_sync.c) today, the admin API's state later.
 *
 * hiredis 0.14, asynchronous, on the worker's libuv loop. Nothing ever
 * waits on Redis: a command is written and its callback runs when the
 * answer comes, or runs with no reply as soon as it is known that none
 * will come (not connected, too many commands out, the connection lost,
 * no answer within state.timeout). hiredis 0.14 has neither timeouts nor
 * TLS: the timeouts are uv timers here; there is no TLS.
 */
#ifndef WEIR_REDIS_H
#define WEIR_REDIS_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "conf.h"

#define WEIR_REDIS_MAX_OUT      20000   /* commands written and not answered, at most */
#define WEIR_REDIS_MAX_ARGS     16      /* arguments of one command */
#define WEIR_REDIS_BACKOFF_MIN  100     /* ms before connecting again after a failure, doubling */
#define WEIR_REDIS_BACKOFF_MAX  2000

/*
 * The answer to a command: REPLY is NULL when there is none (the command
 * failed without an answer), else it is Redis's reply (perhaps an error
 * reply, type REDIS_REPLY_ERROR), owned by hiredis and freed when the
 * callback returns. DATA is the caller's. The callback may send commands.
 */
typedef void (*weir_redis_cb)(void *data, redisReply *reply);

/* A Lua script run with EVALSHA: SRC is the script, SHA its SHA-1 in hex,
 * filled by weir_redis_script. Loaded on every connection. */
typedef struct {
    const char *src;
    char        sha[41];
} weir_redis_script_t;

typedef struct {
    int      configured;   /* state.redis is set */
    int      ready;        /* connected, authenticated, scripts loaded */
    int      down;         /* failed since it was last ready (or never ready and failed) */
    uint64_t connects;     /* connections made ready */
    uint64_t failures;     /* connections lost, refused or timed out (attempts included) */
    uint64_t commands;     /* commands written */
    uint64_t unanswered;   /* commands whose callback got no reply */
    uint64_t timeouts;     /* connections dropped because an answer was late */
    uint64_t declined;     /* commands refused at once (not ready, too many out) */
} weir_redis_stats_t;

/*
 * Connect to CONF's state.redis, if set, from LOOP (asynchronously: this
 * returns at once). The settings are copied. Returns WEIR_OK (also when no
 * Redis is configured) or WEIR_ERROR (out of memory).
 */
int  weir_redis_init(uv_loop_t *loop, const weir_state_conf_t *conf);

/* Drop the connection: every command out gets its callback with no reply
 * first. Before the loop's handles close. */
void weir_redis_cleanup(void);

/* Whether commands may be sent now. */
int  weir_redis_ready(void);

/* Register S (computing its SHA-1): loaded on every connection from now
 * on. At most 8 scripts. Returns WEIR_OK or WEIR_ERROR. */
int  weir_redis_script(weir_redis_script_t *s);

/*
 * Send a command of ARGC arguments (ARGV[i], LENS[i] bytes; copied).
 * Returns WEIR_OK: CB will be called exactly once, later; or
 * WEIR_DECLINED: not sent (not ready, too many out), CB will not be called.
 */
int  weir_redis_command(weir_redis_cb cb, void *data, int argc, const char **argv, const size_t *lens);

/* EVALSHA of script S with NKEYS keys then the other arguments in ARGV
 * (ARGC in all); as weir_redis_command. A NOSCRIPT answer (Redis lost its
 * scripts) has the scripts loaded again, and reaches CB as the error. */
int  weir_redis_eval(const weir_redis_script_t *s, weir_redis_cb cb, void *data, int nkeys, int argc,
                     const char **argv, const size_t *lens);

/* FN(ready) is called on every change: 1 when ready, 0 when it fails. At
 * most 4 watchers. */
void weir_redis_watch(void (*fn)(int ready));

void weir_redis_stats(weir_redis_stats_t *st);

#endif
