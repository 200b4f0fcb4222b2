/*
 * admin.h — the core's side of the admin API (lua/weir/admin.lua) that is
 * neither the registry (registry.h) nor the bus (bus.h): a reload asked for
 * through the API.
 */
#ifndef WEIR_ADMIN_H
#define WEIR_ADMIN_H

#include <stdint.h>

/* Ask the master for a reload, as `weir -s reload` does. Returns an I/O
 * token: the report (value 1 and its text) or a failure (value -1 and why)
 * arrives through weir_lua_io_result. 0: it could not be asked. */
uint64_t weir_ffi_reload(void);

/* weir's version, "0.1.0". */
const char *weir_ffi_version(void);

/* The worker exits: drop a reload still waiting (its handles close with the loop's). */
void weir_admin_cleanup(void);

#endif
