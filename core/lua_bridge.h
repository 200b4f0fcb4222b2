/*
 * lua_bridge.h — the worker's LuaJIT VM and the four policy hooks.
 *
 * One VM per worker runs lua/weir/runtime.lua. The sessions make one call
 * per event into it through weir_lua_policy (open, handshake, frame,
 * close); I/O done and timers come from the loop. The runtime walks the
 * chain in Lua and returns one verdict. Data goes the other way through FFI
 * functions (weir_ffi_*), never by building tables in C; the bridge sees a
 * connection only through conn.h.
 */
#ifndef WEIR_LUA_BRIDGE_H
#define WEIR_LUA_BRIDGE_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "conf.h"
#include "conn.h"

#define WEIR_FFI_ABI 9            /* lua/weir/runtime.lua checks it (9: weir_ffi_batch_at) */

/* The bridge as the sessions' policy engine (conn.h). */
extern const weir_policy_ops_t weir_lua_policy;

/* Cancel every I/O call policies started (before the loop's handles close). */
void weir_lua_cancel_io(void);

/* Start the VM on LOOP and load the chains of CONF (hooks of every version
 * are set). Returns WEIR_OK or WEIR_ERROR (logged). */
int  weir_lua_init(uv_loop_t *loop, weir_conf_t *conf);
void weir_lua_cleanup(void);

/* Reload the chains from CONF's file into the running VM and set CONF's
 * versions' hooks; CONF's limits apply from then on. Returns WEIR_OK, or
 * WEIR_ERROR with nothing changed. */
int  weir_lua_reload(weir_conf_t *conf);

/* Tell the runtime of event NAME ("recheck": another worker asks every
 * connection's policies to check it again). Never from inside a call into Lua. */
void weir_lua_event(const char *name);

/* The loop the VM runs on. */
uv_loop_t *weir_lua_loop_of(void);

/* A fresh I/O token: a waiting Lua coroutine is resumed by
 * weir_lua_io_result with it. */
uint64_t weir_lua_token(void);

/* I/O TOKEN ended: resume whoever waits on it with VALUE and ERR (NULL: none). */
void weir_lua_io_result(uint64_t token, double value, const char *err);

/* Policy failures counted by this worker. */
uint64_t weir_lua_failures(void);

#endif
