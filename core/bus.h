/*
 * bus.h — commands between the workers of one host: the admin API of any
 * worker pushes a message to, or closes, a connection another worker holds.
 *
 * Each worker that starts binds an abstract Unix datagram socket under a
 * random name and publishes the name in the registry (so that no other
 * process can take it in advance; the others look it up there). A command names its connections by their
 * registry slot and number (registry.h), carries the message or the close,
 * and is answered with how many connections it reached. A datagram is
 * accepted only from a process of the same user that the registry lists as
 * a worker of this weir (its pid, from the kernel's credentials). No worker
 * ever waits on another: the answer comes back on the loop, and a worker
 * that does not answer within WEIR_BUS_TIMEOUT_MS counts as reaching none.
 */
#ifndef WEIR_BUS_H
#define WEIR_BUS_H

#include <stddef.h>
#include <stdint.h>

#include "proxy.h"

#define WEIR_BUS_TIMEOUT_MS 2000
#define WEIR_BUS_MAX        (192 * 1024)      /* bytes of one command */

enum {
    WEIR_BUS_SEND_CLIENT = 1,     /* a message to the client (opcode: text or binary) */
    WEIR_BUS_SEND_BACKEND = 2,    /* a message to the backend */
    WEIR_BUS_CLOSE = 3,           /* close 'code' with the error JSON: payload "problem\0message" */
    WEIR_BUS_RECHECK = 4,         /* no targets: run every connection's recheck (a revocation) */
};

/* Bind worker W's socket on its loop. Returns WEIR_OK or WEIR_ERROR (logged:
 * the admin API then reaches only this worker's connections). */
int  weir_bus_init(weir_worker_t *w);
void weir_bus_cleanup(void);

/*
 * Do ACTION to the COUNT connections of worker WORKER named by NS and SLOTS:
 * CODE is the close code (WEIR_BUS_CLOSE), OPCODE the message's (sends),
 * P[0..LEN) the message or "problem\0message"; WEIR_BUS_RECHECK only to
 * another worker (the engine rechecks its own without the bus). For this worker it is done
 * at once: returns how many were reached. For another one, returns -2 and
 * *TOKEN: the count arrives through weir_lua_io_result (-1: no answer).
 * Returns -1 when it cannot be sent.
 */
double weir_ffi_conn_act(int worker, int action, const uint64_t *ns, const uint32_t *slots, uint32_t count,
                         int code, int opcode, const char *p, size_t len, uint64_t *token);

/* This worker's index. */
int  weir_ffi_worker(void);

#endif
