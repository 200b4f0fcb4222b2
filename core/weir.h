/*
 * weir.h — definitions every subsystem of the core shares: the return-code
 * vocabulary, the version, and small helpers.
 *
 * The same return codes are mirrored on the Lua side (lua/weir/init.lua).
 */
#ifndef WEIR_H
#define WEIR_H

#include <stddef.h>
#include <stdint.h>

#define WEIR_VERSION "0.1.0"

#define WEIR_OK        0
#define WEIR_ERROR    -1
#define WEIR_AGAIN    -2   /* waiting on I/O */
#define WEIR_DONE     -4   /* the peer finished (EOF) */
#define WEIR_DECLINED -5

#define WEIR_UNUSED(x) ((void)(x))
#define WEIR_MIN(a, b) ((a) < (b) ? (a) : (b))
#define WEIR_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
