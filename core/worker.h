/*
 * worker.h — a worker process: one libuv loop serving the listeners it
 * inherited from the master, until SIGTERM/SIGINT drains it.
 */
#ifndef WEIR_WORKER_H
#define WEIR_WORKER_H

#include "conf.h"

/* Run worker number ID on CONF (listeners already open). Returns the exit code. */
int  weir_worker_run(weir_conf_t *conf, int id);

#endif
