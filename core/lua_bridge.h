/*
 * lua_bridge.h — the worker's LuaJIT VM and the four policy hooks.
 *
 * One VM per worker runs lua/weir/runtime.lua. The core makes one call per
 * event into it (open, handshake, frame, close, I/O done, timers); the
 * runtime walks the chain in Lua and returns one verdict. Data goes the
 * other way through FFI functions (weir_ffi_*), never by building tables
 * in C. Strings in a verdict stay valid until the next call into the bridge.
 */
#ifndef WEIR_LUA_BRIDGE_H
#define WEIR_LUA_BRIDGE_H

#include <stddef.h>
#include <stdint.h>

#include "proxy.h"

#define WEIR_FFI_ABI 3            /* lua/weir/runtime.lua checks it */

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

struct weir_verdict_s {
    int          kind;            /* WEIR_V_* */
    const char  *payload;         /* REPLACE/REPLY: the message; ERROR: the error JSON; FAIL: the error */
    size_t       len;
    int          code;            /* REPLY: opcode; ERROR: HTTP status or close code, 0 for none */
    const char  *reason;          /* ERROR: the message; FAIL: the policy's name */
    int          sandbox;         /* handshake PASS: the consumer's key is a sandbox key */
};

/* Cancel every I/O call policies started (before the loop's handles close). */
void weir_lua_cancel_io(void);

/* Start the VM and load the chains of W's configuration (hooks of every
 * version are set). Returns WEIR_OK or WEIR_ERROR (logged). */
int  weir_lua_init(weir_worker_t *w);
void weir_lua_cleanup(weir_worker_t *w);

/* Reload the chains from CONF's file into the running VM and set CONF's
 * versions' hooks. Returns WEIR_OK, or WEIR_ERROR with nothing changed. */
int  weir_lua_reload(weir_worker_t *w, weir_conf_t *conf);

/* Give session S a ctx (its version has a chain). */
int  weir_lua_open(weir_session_t *s);

/* Run a hook. WEIR_OK: V holds the verdict. WEIR_AGAIN: the hook waits; the
 * verdict comes later through weir_proxy_resolved(). */
int  weir_lua_handshake(weir_session_t *s, weir_verdict_t *v);
int  weir_lua_frame(weir_session_t *s, int dir, int opcode, size_t len, weir_verdict_t *v);

/* Run the ctx's interceptor (ctx:intercept) on the client's text message of
 * LEN bytes (read with weir_proxy_payload, direction 0). As weir_lua_frame. */
int  weir_lua_intercept(weir_session_t *s, size_t len, weir_verdict_t *v);

/* S is gone: on_close, and the ctx is dropped (pending I/O cancelled). */
void weir_lua_close(weir_session_t *s);

/* Policy failures counted by this worker. */
uint64_t weir_lua_failures(void);

#endif
