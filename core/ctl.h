/*
 * ctl.h — `weir -s`: the command line's side of signalling a running weir
 * (find its master by the pid file, signal it, wait for its reload report or
 * its exit), and the two small ends the running weir uses: the master sends
 * a reload report to the `weir -s` that asked, a worker tells the master how
 * its reload went.
 */
#ifndef WEIR_CTL_H
#define WEIR_CTL_H

#include <signal.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "conf.h"

/* sigqueue value that marks a SIGHUP sent by `weir -s reload`: its sender
 * waits for a report */
#define WEIR_CTL_MAGIC        0x77656972

/* signal a worker sends its master after a reload; value 1: applied, 0: not */
#define WEIR_CTL_SIG_RELOADED SIGRTMIN

/* exit codes of weir -s (and of weir as a whole) */
#define WEIR_EXIT_OK          0
#define WEIR_EXIT_FAILURE     1
#define WEIR_EXIT_USAGE       2
#define WEIR_EXIT_PARTIAL     3       /* a reload applied only in part */
#define WEIR_EXIT_NOT_RUNNING 7       /* as LSB init scripts say it */

/* The master's pid, set by the master before it starts workers. */
extern pid_t weir_ctl_master;

/*
 * weir -s WHAT (reload, stop, drain, reopen) for CONF's running weir. With
 * WAIT, reload waits for the master's report and prints it; stop and drain
 * (a stop whose clients are closed 1012, restarting) wait until the master
 * has exited. Returns the exit code; messages go to stdout/stderr.
 */
int   weir_ctl_run(const weir_conf_t *conf, const char *what, int wait);

/* The master: the pid of the `weir -s` that sent the signal SI describes and
 * waits for a report, or 0 (a plain kill). */
pid_t weir_ctl_requester(const siginfo_t *si);

/*
 * The master: the pids of the `weir -s reload` processes waiting for a
 * report now (listening on their sockets). Writes at most MAX into OUT;
 * returns how many.
 */
int   weir_ctl_waiting(pid_t *out, int max);

/*
 * The master: send REPORT (its first line "applied", "partial" or
 * "refused", then lines to show) to the `weir -s` with pid TO, when it
 * runs as this user or as root. Never waits on it. Returns WEIR_OK, or
 * WEIR_ERROR with errno set.
 */
int   weir_ctl_send_report(pid_t to, const char *report, size_t len);

/* The abstract address a `weir -s reload` with pid PID (or a worker asking
 * for a reload through the admin API) waits for its report on. Returns its
 * length. */
struct sockaddr_un;
socklen_t weir_ctl_addr(struct sockaddr_un *a, pid_t pid);

/* A worker: tell the master whether the reload it was asked for applied. */
void  weir_ctl_reloaded(int applied);

#endif
