/*
 * conn.h — a connection as the policy engine sees it, and the engine as
 * the sessions see it: all the two sides know of each other.
 *
 * The sessions tell the engine of each event with one call through the
 * weir_policy_ops_t their worker was given (core/lua_bridge.c's is the
 * only one); a hook that waits on I/O answers WEIR_AGAIN and delivers its
 * verdict later through weir_conn_resolved(). In return the engine may do
 * to a connection what the weir_conn_* calls below allow, and nothing else:
 * a session is opaque here.
 */
#ifndef WEIR_CONN_H
#define WEIR_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "inspect.h"
#include "limit.h"
#include "weir.h"

typedef struct weir_session_s weir_session_t;

/* The hooks a version's chain implements (weir_version_t.hooks); the
 * sessions call the engine only for these. */
enum {
    WEIR_HOOK_HANDSHAKE = 1,
    WEIR_HOOK_FRAME_IN  = 2,
    WEIR_HOOK_FRAME_OUT = 4,
    WEIR_HOOK_CLOSE     = 8,
};

enum {                            /* lua/weir/chain.lua */
    WEIR_V_PASS = 0, WEIR_V_REPLACE, WEIR_V_DROP, WEIR_V_REPLY, WEIR_V_ERROR, WEIR_V_FAIL,
    WEIR_V_RESPOND,               /* on_handshake: an HTTP answer (payload, status in code), no upgrade */
};

/* A hook's verdict. Its strings belong to the engine and stay valid until
 * the next call into it. */
typedef struct weir_verdict_s {
    int          kind;            /* WEIR_V_* */
    const char  *payload;         /* REPLACE/REPLY: the message; ERROR: the error JSON; FAIL: the error */
    size_t       len;
    int          code;            /* REPLY: opcode; ERROR: HTTP status or close code, 0 for none */
    const char  *reason;          /* ERROR: the message; FAIL: the policy's name */
    const char  *hook;            /* FAIL: the hook that failed ("on_handshake", ...) */
    int          sandbox;         /* handshake PASS: the consumer's key is a sandbox key */
} weir_verdict_t;

/* What the engine learns of a connection when it opens (borrowed for the
 * call). */
typedef struct {
    const char  *api, *version;   /* the API and version it was routed to */
    const char  *context;         /* the API's context path */
    const char  *head;            /* the client's request head, HEAD_LEN bytes */
    size_t       head_len;
    const char  *peer_ip;
    uint16_t     peer_port;
    int          tls;             /* 1: the client came over wss:// */
    int          ticket;          /* 1: a POST <path>/ticket, answered without an upgrade */
} weir_conn_info_t;

/* How a connection ended. */
typedef struct {
    unsigned     code;            /* the first close code seen, 0: none (1006: a peer vanished) */
    const char  *side;            /* who closed first: "client", "backend", "weir" (on its own
                                   * decision, even about a peer's fault) or "none" */
    uint64_t     duration_ms;
    uint64_t     frames_in, bytes_in;     /* data frames and payload bytes from the client */
    uint64_t     frames_out, bytes_out;   /* from the backend */
} weir_conn_end_t;

/* A request to one of weir's own services (core/service.c), borrowed for
 * the call. */
typedef struct {
    const char  *service;         /* "admin": the admin listener; "public": the key manager's endpoints */
    const char  *method, *target;
    size_t       method_len, target_len;
    const char  *head;            /* the request head, HEAD_LEN bytes */
    size_t       head_len;
    const char  *body;            /* BODY_LEN bytes */
    size_t       body_len;
    const char  *peer_ip;
    uint16_t     peer_port;
    int          tls;
} weir_request_info_t;

/*
 * The engine, one call per event. OPEN gives S a ctx (its version has a
 * chain): WEIR_OK, or WEIR_ERROR when it cannot (the client gets a 500).
 * HANDSHAKE and FRAME (DIR 0: from the client; the message is read with
 * weir_conn_payload) return WEIR_OK with V filled in, or WEIR_AGAIN when
 * the hook waits. CLOSE runs on_close and forgets S: the engine must not
 * name S after it. Only a connection the engine opened is closed.
 */
/* One whole single-frame message of a read, where it lies: unmasked, or
 * (MASKED: a client's binary message, which nothing checks) already masked
 * for the backend with the key in the 4 bytes before P, and unmasked only
 * when something reads it (weir_conn_payload). */
typedef struct {
    const uint8_t *p;
    size_t         len;
    int            opcode;
    int            masked;
} weir_msg_ref_t;

typedef struct {
    int  (*open)(weir_session_t *s, const weir_conn_info_t *info);
    int  (*handshake)(weir_session_t *s, weir_verdict_t *v);
    int  (*frame)(weir_session_t *s, int dir, int opcode, size_t len, weir_verdict_t *v);
    /* FRAME for the messages M[0..N) of one read, in order, in one call,
     * until one's verdict is not a plain pass: *K is the number that
     * passed. WEIR_OK: all passed (*K == N); or V is message *K's verdict
     * (a pass: messages *K and after were not run); WEIR_AGAIN: message *K
     * waits (as FRAME's AGAIN; those after it were not run). The engine
     * shows message i to weir_conn_payload with weir_conn_view. */
    int  (*frames)(weir_session_t *s, int dir, weir_msg_ref_t *m, int n, int *k, weir_verdict_t *v);
    /* the ctx's interceptor (weir_conn_intercept) on the client's text message of LEN bytes */
    int  (*intercept)(weir_session_t *s, size_t len, weir_verdict_t *v);
    void (*close)(weir_session_t *s, const weir_conn_end_t *end);
    /* a service request: V is WEIR_V_RESPOND (status in code, extra header lines in
     * reason, the body in payload) or WEIR_V_FAIL; or WEIR_AGAIN, the answer coming
     * through weir_conn_resolved (WEIR_HOOK_HANDSHAKE). S has a ctx from then on
     * (close is called). */
    int  (*request)(weir_session_t *s, const weir_request_info_t *info, weir_verdict_t *v);
} weir_policy_ops_t;

/* S's handle for the engine: never 0, and no other open connection of the
 * instance has it. */
uint64_t weir_conn_id(const weir_session_t *s);

/* S's name, the `conn` of every log record about it and its ctx.id: "w",
 * its worker's index, "-", and that worker's count of connections accepted
 * so far ("w0-17"). A restarted worker counts from 1 again. */
const char *weir_conn_name(const weir_session_t *s);

/* The message of direction DIR (0: from the client) that a frame hook is
 * deciding on: borrowed until the hook returns. */
const uint8_t *weir_conn_payload(weir_session_t *s, int dir, size_t *len);

/* The message weir_conn_payload gives for DIR from now on: M (one of a
 * batch, frames; unmasked where it lies if it is MASKED and read, M then
 * marked so), or M NULL: the leg's own copy again. */
void weir_conn_view(weir_session_t *s, int dir, weir_msg_ref_t *m);

/* Send a message of weir's own (OPCODE: text, or binary) to the client as
 * soon as its stream is between messages (and the 101 is out). WEIR_ERROR
 * when the client is gone, closing or refused, or when the message would
 * take the bytes waiting for it past buffer_size. */
int  weir_conn_send(weir_session_t *s, int opcode, const uint8_t *p, size_t n);

/* Send a message of weir's own to the client (TO_BACKEND 0, as
 * weir_conn_send) or to the backend (1). WEIR_ERROR as weir_conn_send. */
int  weir_conn_send_to(weir_session_t *s, int to_backend, int opcode, const uint8_t *p, size_t n);

/* Close S on a policy's request: the error JSON of PROBLEM and MESSAGE (when
 * PROBLEM is not NULL) and CODE to the client, 1001 to the backend; before
 * the upgrade, a 403 with that JSON. */
void weir_conn_close(weir_session_t *s, int code, const char *reason, const char *problem, const char *message);

/* Policies' changes to the request the backend receives (ctx:set_backend_header,
 * ctx:hide_query_arg, ctx:hide_subprotocol): QUERY replaces the client's query
 * (when QUERY is not NULL), DEL lists lower-case header names to drop, one per
 * line, ADD holds header lines to add, PROTO (when PROTO_SET) replaces the
 * offered subprotocols. Copied. WEIR_ERROR once the backend is being reached. */
int  weir_conn_upstream(weir_session_t *s, const char *query, size_t qlen, const char *del, size_t dlen,
                        const char *add, size_t alen, const char *proto, size_t plen, int proto_set);

/* Hand the client's text messages (one frame, at most WEIR_SNIFF_MAX bytes,
 * or any whole message when a frame hook assembles them) that contain
 * NEEDLE to the engine's intercept call (ctx:intercept); NULL stops it.
 * Copied. */
int  weir_conn_intercept(weir_session_t *s, const char *needle);

/* Run IN (a reference is taken) on each of the client's messages from the
 * next one on, before the frame hooks; NULL stops it (core/inspect.h).
 * OWNER is the engine's number for whoever attached it (kept, not read). */
void weir_conn_inspect(weir_session_t *s, weir_inspector_t *in, unsigned owner);

/* The OWNER S's inspector was attached with, 0 when it has none. */
unsigned weir_conn_inspect_owner(const weir_session_t *s);

/* What happens to a message over a rate limit (weir_conn_limit). */
enum {
    WEIR_THROTTLE_DELAY = 1,      /* stop reading its sender until the limit allows it: nothing lost */
    WEIR_THROTTLE_DROP  = 2,      /* not forwarded; the client is told (/problems/throttled) at most once a second */
    WEIR_THROTTLE_CLOSE = 3,      /* not forwarded; the client gets the JSON and close 1008 */
};

/*
 * Enforce a rate limit on S's data messages from now on, in C, without a
 * call into the engine: KEY[0..LEN) names a bucket shared by every
 * connection of the host limited by the same key and limit (KEY NULL: S's
 * own). SPEC says what it counts and in which direction. ACTION_IN applies
 * to the client's messages, ACTION_OUT to the backend's (WEIR_THROTTLE_*; 0:
 * drop and delay); with several limits the strictest action of a direction
 * applies. Returns WEIR_OK, or WEIR_ERROR with a message in ERR.
 */
int  weir_conn_limit(weir_session_t *s, const char *key, size_t len, const weir_limit_spec_t *spec, int action_in,
                     int action_out, char *err, size_t errlen);

/* What the access record says of the consumer policies identified. */
enum { WEIR_CONSUMER_APPLICATION, WEIR_CONSUMER_SUBSCRIBER, WEIR_CONSUMER_KEY_TYPE, WEIR_CONSUMER_TIER,
       WEIR_CONSUMER_FIELDS };

/* The consumer policies identified on S (ctx.consumer): FIELDS indexed by
 * WEIR_CONSUMER_*, each NULL when not known, copied (at most 255 bytes
 * each) for S's access record, replacing what was given before. Never a
 * secret: the access record writes them as they are. Returns WEIR_OK, or
 * WEIR_ERROR when out of memory (then nothing is known). */
int  weir_conn_consumer(weir_session_t *s, const char *const fields[WEIR_CONSUMER_FIELDS]);

/* Turn on the analytics events of S (docs/analytics.md), their lines
 * going to sink set SET (1..63, numbered by lua/weir/analytics.lua);
 * CLIENT: the client's address as the policy resolved it (X-Forwarded-For
 * of a trusted proxy), NULL: the peer's. The User-Agent is read from the
 * request head (call it before the 101). Called again, it changes the set
 * and the client. WEIR_ERROR: bad set, or out of memory. */
int  weir_conn_analytics(weir_session_t *s, int set, const char *client);

/* The verdict V of HOOK (WEIR_HOOK_*), which had waited, for S. */
void weir_conn_resolved(weir_session_t *s, int hook, const weir_verdict_t *v);

#endif
