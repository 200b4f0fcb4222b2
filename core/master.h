/*
 * master.h — the master process, once the command line has loaded the
 * configuration and opened the log, the listeners and the pid file.
 */
#ifndef WEIR_MASTER_H
#define WEIR_MASTER_H

#include "conf.h"

/*
 * Run the master on *CONFP until it is told to stop: start the workers,
 * supervise them, reload, reopen the log, drain. *CONFP is the
 * configuration in force when it returns (reloads replace it); the caller
 * frees it. Returns the exit code.
 */
int  weir_master_run(weir_conf_t **confp);

/* Log CONF's warnings ("configuration warning"), and say them on stderr
 * when the log is a file (at start). */
void weir_master_log_warnings(const weir_conf_t *conf);

#endif
