/*
 * ffi-stubs.c — the core's weir_ffi_* functions as no-ops, so that
 * lua/weir/runtime.lua runs in a plain LuaJIT (LD_PRELOAD) for
 * microbenchmarks of the Lua side (bench/jwt-cold.lua). Nothing here is
 * used by weir itself; every function does the least a caller needs.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define ABI 9   /* WEIR_FFI_ABI in core/lua_bridge.h */

int weir_ffi_abi(void) { return ABI; }

const char *
weir_ffi_payload(uint64_t id, int dir, size_t *len)
{
    (void) id; (void) dir;
    *len = 0;
    return "";
}

int weir_ffi_send(uint64_t id, int opcode, const char *p, size_t n) { (void) id; (void) opcode; (void) p; (void) n; return 0; }

int
weir_ffi_close(uint64_t id, int code, const char *reason, const char *problem, const char *message)
{
    (void) id; (void) code; (void) reason; (void) problem; (void) message;
    return 0;
}

/* log lines go to stderr: a harness that logs per handshake shows it */
void
weir_ffi_log(int level, const char *msg, const char *fields)
{
    fprintf(stderr, "log %d %s %s\n", level, msg, fields ? fields : "");
}

int weir_ffi_log_level(void) { return 2; }   /* warn, as in the bench's configuration */

/* the consumer's fields are read (strlen) as the core copies them */
size_t weir_stub_sink;

int
weir_ffi_consumer(uint64_t id, const char *application, const char *subscriber, const char *key_type,
                  const char *tier)
{
    (void) id;
    weir_stub_sink += (application ? strlen(application) : 0) + (subscriber ? strlen(subscriber) : 0)
                      + (key_type ? strlen(key_type) : 0) + (tier ? strlen(tier) : 0);
    return 0;
}

void weir_ffi_timer(double ms) { (void) ms; }
void weir_ffi_policy_failed(void) { fprintf(stderr, "policy failed\n"); }
void weir_ffi_budget_reset(void) {}
void weir_ffi_budget_service(int on) { (void) on; }

uint64_t
weir_ffi_http(const char *method, const char *url, const char *headers, const char *body, size_t blen,
              double timeout_ms, int verify, const char *ca, char *err, size_t errlen)
{
    (void) method; (void) url; (void) headers; (void) body; (void) blen; (void) timeout_ms;
    (void) verify; (void) ca;
    snprintf(err, errlen, "no HTTP in the stub");
    return 0;
}

void weir_ffi_http_cancel(uint64_t token) { (void) token; }

int
weir_ffi_upstream(uint64_t id, const char *query, size_t qlen, const char *del, size_t dlen, const char *add,
                  size_t alen, const char *proto, size_t plen, int proto_set)
{
    (void) id; (void) query; (void) qlen; (void) del; (void) dlen; (void) add; (void) alen; (void) proto;
    (void) plen; (void) proto_set;
    return 0;
}

int weir_ffi_intercept(uint64_t id, const char *needle) { (void) id; (void) needle; return 0; }
int weir_ffi_inspect(uint64_t id, void *in, int owner) { (void) id; (void) in; (void) owner; return 0; }
int weir_ffi_inspect_owner(uint64_t id) { (void) id; return 0; }

int
weir_ffi_ticket_put(const unsigned char *hash, const unsigned char *scope, const char *data, size_t len,
                    double ttl_ms)
{
    (void) hash; (void) scope; (void) data; (void) len; (void) ttl_ms;
    return -1;
}

int
weir_ffi_ticket_take(const unsigned char *hash, const unsigned char *scope, char *out, size_t cap)
{
    (void) hash; (void) scope; (void) out; (void) cap;
    return -1;
}

int
weir_ffi_limit(uint64_t id, const char *key, size_t len, uint64_t count, uint64_t period_us, uint64_t burst,
               int unit, int dirs, int action_in, int action_out, int share, char *err, size_t errlen)
{
    (void) id; (void) key; (void) len; (void) count; (void) period_us; (void) burst; (void) unit; (void) dirs;
    (void) action_in; (void) action_out; (void) share; (void) err; (void) errlen;
    return 0;
}

/* analytics: no sinks in the harness's configuration (weir.analytics.loaded
 * asks which sets are in use) */
void weir_ffi_analytics_sets_used(unsigned char *used) { (void) used; }
void weir_ffi_analytics_interval(double ms) { (void) ms; }

/* A row of messages (bench/frame-hook.lua -w): each a 64 B text message. */
int
weir_ffi_batch_at(int i, size_t *len)
{
    (void) i;
    *len = 64;
    return 1;
}
