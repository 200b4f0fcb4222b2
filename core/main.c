/*
 * main.c — the command line and the master process: checks or loads the
 * configuration, opens the listeners, forks the workers, restarts a worker
 * that dies, reloads on SIGHUP (and reports how it went to the `weir -s
 * reload` that asked), reopens the log file on SIGUSR1, and on SIGTERM/
 * SIGINT drains the workers and exits. Under systemd (Type=notify) it tells
 * the manager when it is ready, reloading and stopping. The master carries
 * no traffic.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "conf.h"
#include "ctl.h"
#include "log.h"
#include "shm.h"
#include "weir.h"
#include "worker.h"

#ifndef WEIR_CONF_DEFAULT
#define WEIR_CONF_DEFAULT "/etc/weir/weir.conf.lua"
#endif

#define WEIR_RELOAD_WAIT_MS 15000     /* how long the master waits for its workers' reloads */
#define WEIR_RELOAD_REPORTS_MAX 64    /* weir -s reload processes one reload reports to */

typedef struct {
    pid_t    pid;            /* 0 when not running */
    uint64_t started_ms;
    uint64_t respawn_at_ms;  /* 0, or when to start it again */
} weir_slot_t;

typedef struct {
    weir_conf_t  *conf;
    weir_slot_t  *slots;
    int           n;          /* slots: the worker count weir started with */
    int           running;
    int           stopping;
    sigset_t      set;        /* the signals the master waits for */
    sigset_t      old;        /* the mask workers start with */
} weir_master_t;

/* A reload report being written: text lines, truncated when too long. */
typedef struct {
    char    buf[16384];
    size_t  len;
} weir_report_t;

static weir_report_t *weir_reload_report;   /* where configuration errors go while reloading */

static uint64_t
weir_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static void __attribute__((format(printf, 2, 3)))
weir_report_add(weir_report_t *r, const char *fmt, ...)
{
    va_list ap;

    if (r->len >= sizeof(r->buf) - 1) return;
    va_start(ap, fmt);
    int n = vsnprintf(r->buf + r->len, sizeof(r->buf) - r->len, fmt, ap);
    va_end(ap);
    if (n > 0) r->len = WEIR_MIN(r->len + (size_t) n, sizeof(r->buf) - 1);
}

static void
weir_usage(FILE *f)
{
    fprintf(f,
            "weir %s — a Lua-scriptable WebSocket API gateway\n\n"
            "usage: weir -c FILE                      run in the foreground: a master and its workers\n"
            "       weir -t -c FILE                   check the configuration\n"
            "       weir -T -c FILE                   check it, and that weir could start now\n"
            "       weir -s SIGNAL [--no-wait] -c FILE\n"
            "                                         signal the running weir (found by pid_file)\n"
            "       weir -v | -h\n\n"
            "  -c FILE     the configuration (a Lua file returning a table); the installed one is\n"
            "              %s\n"
            "  -t          check the configuration, the files it names and every policy it uses:\n"
            "              exit 0 when valid, 1 with every problem otherwise; warnings (a pid or log\n"
            "              file this user cannot write, policies with the same priority) do not fail it\n"
            "  -T          as -t, and fail unless weir could start now as this user: the pid and log\n"
            "              files can be written and every listen address can be bound\n"
            "  -s SIGNAL   reload  check the configuration, have the running weir apply it and print\n"
            "                      what it applied and what needs a restart (exit 0: all of it,\n"
            "                      3: not all of it, 1: none of it)\n"
            "              stop    drain the connections and stop; waits until weir has exited\n"
            "              reopen  reopen the log file (after logrotate moved it)\n"
            "  --no-wait   with -s: return once the signal is sent\n"
            "  -v          print the version and exit\n"
            "  -h          print this help and exit\n\n"
            "signals to the master: HUP reload, TERM or INT drain and stop, USR1 reopen the log file\n"
            "environment: WEIR_LUA_DIR  weir's Lua runtime (default: ../share/weir/lua from the binary,\n"
            "                           else ../lua: the build tree)\n"
            "             WEIR_POLICY_DIR  the stock policies (default: ../policies from the Lua runtime)\n"
            "exit status: 0 done, 1 failed, 2 usage, 3 a reload applied only in part, 7 weir is not\n"
            "             running (-s)\n"
            "see weir(8)\n",
            WEIR_VERSION, WEIR_CONF_DEFAULT);
}

/* Whether records go to a file (then a fatal start-up error is also
 * printed on stderr, where the operator who started weir looks). */
static int
weir_log_is_file(void)
{
    return weir_log_file() != NULL;
}

/* ---- checking what a start needs ----------------------------------------- */

/*
 * Whether this user could create or append to PATH: "" when so, else why
 * (into WHY). Writes nothing.
 */
static const char *
weir_writable(const char *path, char *why, size_t len)
{
    char        dir[PATH_MAX];
    struct stat st;
    const char *slash = strrchr(path, '/');

    why[0] = '\0';
    if (access(path, F_OK) == 0) {
        if (access(path, W_OK) != 0) snprintf(why, len, "%s", strerror(errno));
        return why;
    }
    if (slash == NULL) snprintf(dir, sizeof(dir), ".");
    else if (slash == path) snprintf(dir, sizeof(dir), "/");
    else snprintf(dir, sizeof(dir), "%.*s", (int) (slash - path), path);
    if (stat(dir, &st) != 0) snprintf(why, len, "its directory %s does not exist", dir);
    else if (!S_ISDIR(st.st_mode)) snprintf(why, len, "%s is not a directory", dir);
    else if (access(dir, W_OK | X_OK) != 0) snprintf(why, len, "its directory %s is not writable (%s)", dir,
                                                     strerror(errno));
    return why;
}

/* Open listener L: a non-blocking socket bound and listening. Returns the
 * fd, or -1 with ERR saying why. */
static int
weir_listen_open(const weir_listen_t *l, char *err, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t slen;
    int one = 1, fd;

    memset(&ss, 0, sizeof(ss));
    if (strchr(l->address, ':') != NULL) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *) &ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(l->port);
        if (inet_pton(AF_INET6, l->address, &a->sin6_addr) != 1) goto bad_address;
        slen = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *) &ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(l->port);
        if (inet_pton(AF_INET, l->address, &a->sin_addr) != 1) goto bad_address;
        slen = sizeof(*a);
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) goto failed;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *) &ss, slen) < 0 || listen(fd, 4096) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        goto failed;
    }
    return fd;

failed:
    snprintf(err, len, "%s", strerror(errno));
    return -1;
bad_address:
    snprintf(err, len, "not an IP address");
    return -1;
}

/* "127.0.0.1:8080", "[::1]:8443 (TLS)" */
static const char *
weir_listen_name(const weir_listen_t *l, char *buf, size_t len)
{
    int v6 = strchr(l->address, ':') != NULL;
    snprintf(buf, len, "%s%s%s:%u%s", v6 ? "[" : "", l->address, v6 ? "]" : "", l->port,
             l->tls_cert ? " (TLS)" : "");
    return buf;
}

/*
 * weir -t / -T: what else the start would need. The pid file and log file
 * must be writable by this user; with STRICT they are errors and every
 * listener is bound once (and closed), else they are warnings. Returns the
 * number of errors.
 */
static int
weir_check_start(const weir_conf_t *conf, int strict)
{
    const char *files[2][2] = { { "pid_file", conf->pid_file }, { "log.file", conf->log_file } };
    const char *kind = strict ? "" : "warning: ";
    char        why[PATH_MAX + 128], name[128];
    int         errors = 0;

    for (int i = 0; i < 2; i++) {
        if (files[i][1] == NULL || weir_writable(files[i][1], why, sizeof(why))[0] == '\0') continue;
        fprintf(stderr, "weir: %s%s: %s: this user (uid %d) cannot write %s: %s\n", kind, conf->file,
                files[i][0], (int) getuid(), files[i][1], why);
        errors += strict;
    }
    for (size_t i = 0; strict && i < conf->nlisten; i++) {
        int fd = weir_listen_open(&conf->listen[i], why, sizeof(why));
        if (fd >= 0) {
            close(fd);
            continue;
        }
        fprintf(stderr, "weir: %s: listen: cannot listen on %s: %s\n", conf->file,
                weir_listen_name(&conf->listen[i], name, sizeof(name)), why);
        errors++;
    }
    return errors;
}

/* ---- starting ---------------------------------------------------------- */

/* Open every listener; on failure log it, say it on stderr and return WEIR_ERROR. */
static int
weir_open_listeners(weir_conf_t *conf)
{
    char err[256], name[128];

    for (size_t i = 0; i < conf->nlisten; i++) {
        weir_listen_t *l = &conf->listen[i];
        l->fd = weir_listen_open(l, err, sizeof(err));
        if (l->fd < 0) {
            weir_log(WEIR_LOG_ERROR, "cannot listen", "\"address\":\"%s\",\"port\":%u,\"error\":\"%s\"",
                     l->address, l->port, err);
            if (weir_log_is_file())
                fprintf(stderr, "weir: cannot listen on %s: %s\n", weir_listen_name(l, name, sizeof(name)), err);
            return WEIR_ERROR;
        }
        weir_log(WEIR_LOG_INFO, "listening", "\"address\":\"%s\",\"port\":%u,\"tls\":%s", l->address,
                 l->port, l->tls_cert ? "true" : "false");
    }
    return WEIR_OK;
}

static int
weir_write_pid(const char *file)
{
    char  e[PATH_MAX + 16];
    FILE *f = fopen(file, "w");

    if (f == NULL) {
        int err = errno;
        weir_log(WEIR_LOG_ERROR, "cannot write pid file", "\"file\":\"%s\",\"error\":\"%s\"",
                 weir_log_str(e, sizeof(e), file), strerror(err));
        if (weir_log_is_file()) fprintf(stderr, "weir: cannot write the pid file %s: %s\n", file, strerror(err));
        return WEIR_ERROR;
    }
    fprintf(f, "%d\n", (int) getpid());
    fclose(f);
    return WEIR_OK;
}

/* Remove the pid file FILE if it still names this process (another weir
 * started since may have written its own). */
static void
weir_remove_pid(const char *file)
{
    FILE *f;
    long  pid = 0;

    if (file == NULL || (f = fopen(file, "r")) == NULL) return;
    if (fscanf(f, "%ld", &pid) != 1) pid = 0;
    fclose(f);
    if (pid == (long) getpid()) unlink(file);
}

/* Log each of CONF's warnings (and say them on stderr when the log is a
 * file and TO_STDERR). */
static void
weir_log_warnings(const weir_conf_t *conf, int to_stderr, weir_report_t *r)
{
    char e[2048];

    for (size_t i = 0; i < conf->nwarnings; i++) {
        weir_log(WEIR_LOG_WARN, "configuration warning", "\"warning\":\"%s\"",
                 weir_log_str(e, sizeof(e), conf->warnings[i]));
        if (to_stderr && weir_log_is_file()) fprintf(stderr, "weir: warning: %s\n", conf->warnings[i]);
        if (r != NULL) weir_report_add(r, "  warning: %s\n", conf->warnings[i]);
    }
}

static pid_t
weir_spawn(weir_master_t *m, int id)
{
    pid_t pid = fork();
    if (pid == 0) {
        /* the worker unblocks these once its handlers are set: one sent
         * while it starts (a reload just after a start) waits for them
         * instead of killing it */
        sigset_t mask = m->old;
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGUSR1);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigprocmask(SIG_SETMASK, &mask, NULL);
        exit(weir_worker_run(m->conf, id));      /* the worker frees its configurations */
    }
    if (pid < 0) weir_log(WEIR_LOG_ERROR, "cannot fork a worker", "\"error\":\"%s\"", strerror(errno));
    return pid;
}

/* ---- the master: workers ------------------------------------------------- */

/* Reap the workers that exited; schedule their restart unless stopping. */
static void
weir_master_reap(weir_master_t *m)
{
    int   status;
    pid_t pid;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < m->n; i++) {
            weir_slot_t *s = &m->slots[i];
            if (s->pid != pid) continue;
            s->pid = 0;
            m->running--;
            if (m->stopping) break;
            if (WIFSIGNALED(status))
                weir_log(WEIR_LOG_ERROR, "worker died", "\"worker\":%d,\"worker_pid\":%d,\"signal\":%d",
                         i, (int) pid, WTERMSIG(status));
            else
                weir_log(WEIR_LOG_ERROR, "worker exited", "\"worker\":%d,\"worker_pid\":%d,\"status\":%d",
                         i, (int) pid, WEXITSTATUS(status));
            /* a worker that dies at once is not restarted in a tight loop */
            uint64_t t = weir_clock_ms();
            s->respawn_at_ms = t - s->started_ms < 1000 ? t + 1000 : t;
            if (s->respawn_at_ms == 0) s->respawn_at_ms = 1;
            break;
        }
    }
}

/* Signal every running worker. */
static void
weir_master_tell(weir_master_t *m, int sig)
{
    for (int i = 0; i < m->n; i++)
        if (m->slots[i].pid > 0) kill(m->slots[i].pid, sig);
}

/* ---- the master: reload -------------------------------------------------- */

static void
weir_master_log_conf_line(const char *line)
{
    char e[2048];
    weir_log(WEIR_LOG_ERROR, "configuration error", "\"error\":\"%s\"", weir_log_str(e, sizeof(e), line));
    if (weir_reload_report != NULL) weir_report_add(weir_reload_report, "  %s\n", line);
}

static int
weir_listen_same(const weir_conf_t *a, const weir_conf_t *b)
{
    if (a->nlisten != b->nlisten) return 0;
    for (size_t i = 0; i < a->nlisten; i++) {
        const weir_listen_t *x = &a->listen[i], *y = &b->listen[i];
        if (x->port != y->port || strcmp(x->address, y->address) != 0 || !x->tls_cert != !y->tls_cert
            || (x->tls_cert && (strcmp(x->tls_cert, y->tls_cert) != 0 || strcmp(x->tls_key, y->tls_key) != 0)))
            return 0;
    }
    return 1;
}

static void
weir_listen_list(weir_report_t *r, const weir_conf_t *c)
{
    char name[128];
    for (size_t i = 0; i < c->nlisten; i++)
        weir_report_add(r, "%s%s", i ? ", " : "", weir_listen_name(&c->listen[i], name, sizeof(name)));
}

static int
weir_str_same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/*
 * What changes between the running configuration OLD and NC that a reload
 * cannot apply: each is logged and added to R. Returns how many.
 */
static int
weir_reload_restart_needs(const weir_conf_t *old, const weir_conf_t *nc, weir_report_t *r)
{
    int needs = 0;

    if (!weir_listen_same(old, nc)) {
        weir_log(WEIR_LOG_WARN, "reload: listen changes need a restart; the listeners stay as they are", NULL);
        weir_report_add(r, "  needs a restart (not applied): listen: ");
        weir_listen_list(r, old);
        weir_report_add(r, " -> ");
        weir_listen_list(r, nc);
        weir_report_add(r, "; weir still listens on the first\n");
        needs++;
    }
    if (nc->workers != old->workers) {
        weir_log(WEIR_LOG_WARN, "reload: a new worker count needs a restart", NULL);
        weir_report_add(r, "  needs a restart (not applied): workers: %d -> %d; %d keep running\n", old->workers,
                        nc->workers, old->workers);
        needs++;
    }
    if (!weir_str_same(old->pid_file, nc->pid_file)) {
        weir_log(WEIR_LOG_WARN, "reload: a new pid_file needs a restart", NULL);
        weir_report_add(r, "  needs a restart (not applied): pid_file: %s -> %s\n",
                        old->pid_file ? old->pid_file : "(none)", nc->pid_file ? nc->pid_file : "(none)");
        needs++;
    }
    return needs;
}

/* The APIs of NC compared with OLD's, by name, for the report:
 * "  APIs: 3 (added: chat; removed: old)". */
static void
weir_reload_apis(const weir_conf_t *old, const weir_conf_t *nc, weir_report_t *r)
{
    int added = 0, removed = 0;

    weir_report_add(r, "  APIs: %zu", nc->napis);
    for (int pass = 0; pass < 2; pass++) {
        const weir_conf_t *a = pass == 0 ? nc : old, *b = pass == 0 ? old : nc;
        for (size_t i = 0; i < a->napis; i++) {
            size_t j;
            for (j = 0; j < b->napis && strcmp(a->apis[i].name, b->apis[j].name) != 0; j++) {}
            if (j < b->napis) continue;
            int *count = pass == 0 ? &added : &removed;
            weir_report_add(r, "%s%s", *count == 0 ? (pass == 0 ? " (added: " : added ? "; removed: "
                                                                      : " (removed: ") : ", ",
                            a->apis[i].name);
            (*count)++;
        }
    }
    weir_report_add(r, "%s\n", added + removed > 0 ? ")" : "");
}

/* How the workers asked to reload answered. */
typedef struct {
    int ok;          /* applied it */
    int failed;      /* could not, and keep the previous configuration */
    int died;        /* died meanwhile (restarted with the new one) */
    int silent;      /* no answer in time */
} weir_answers_t;

/*
 * Wait until every worker of ASKED (N pids, 0 for none) answered its reload
 * or died, at most WEIR_RELOAD_WAIT_MS. Other signals wait. Counts the
 * answers into A.
 */
static void
weir_master_await(weir_master_t *m, pid_t *asked, int n, weir_answers_t *a)
{
    sigset_t ws;
    uint64_t deadline = weir_clock_ms() + WEIR_RELOAD_WAIT_MS;
    int      pending = 0;

    memset(a, 0, sizeof(*a));
    for (int i = 0; i < n; i++) pending += asked[i] > 0;
    sigemptyset(&ws);
    sigaddset(&ws, SIGCHLD);
    sigaddset(&ws, WEIR_CTL_SIG_RELOADED);
    while (pending > 0) {
        uint64_t now = weir_clock_ms();
        if (now >= deadline) break;
        struct timespec ts = { (time_t) ((deadline - now) / 1000), (long) ((deadline - now) % 1000) * 1000000L };
        siginfo_t si;
        int sig = sigtimedwait(&ws, &si, &ts);
        if (sig == WEIR_CTL_SIG_RELOADED) {
            for (int i = 0; i < n; i++) {
                if (asked[i] != si.si_pid) continue;
                asked[i] = 0;
                pending--;
                if (si.si_value.sival_int) a->ok++;
                else a->failed++;
            }
        } else if (sig == SIGCHLD) {
            weir_master_reap(m);
            for (int i = 0; i < n; i++) {
                int alive = 0;
                for (int j = 0; j < m->n; j++) alive |= asked[i] > 0 && m->slots[j].pid == asked[i];
                if (asked[i] > 0 && !alive) {
                    asked[i] = 0;
                    pending--;
                    a->died++;
                }
            }
        }
    }
    a->silent = pending;
}

/*
 * SIGHUP: validate the configuration file and every policy it names. On any
 * error nothing changes (the errors are logged with file and line). On
 * success the master keeps the new configuration (for workers it starts
 * later), applies the log level and file, tells every worker to reload and
 * waits for their answers. A report of all that goes to REQUESTER (a
 * `weir -s reload`), when not 0, and to every other `weir -s reload` that
 * waits when it starts.
 */
static void
weir_master_reload(weir_master_t *m, pid_t requester)
{
    struct {
        weir_report_t out;      /* what is sent: the status line, then the rest */
        weir_report_t apis;     /* the APIs, compared with the running ones */
        weir_report_t body;     /* errors, or what needs a restart and warnings */
    }              *rep = calloc(1, sizeof(*rep));
    weir_conf_t    *conf = m->conf, *nc = NULL;
    pid_t           asked[m->n > 0 ? m->n : 1], to[WEIR_RELOAD_REPORTS_MAX];
    weir_answers_t  a;
    int             nasked = 0, needs, nto;
    char            e[PATH_MAX + 16];

    if (rep == NULL) return;
    /* whoever waits now gets this reload's report (see ctl.c) */
    nto = weir_ctl_waiting(to, WEIR_RELOAD_REPORTS_MAX - 1);
    int known = requester <= 0;
    for (int i = 0; i < nto; i++) known |= to[i] == requester;
    if (!known) to[nto++] = requester;
    sd_notify(0, "RELOADING=1\nSTATUS=reloading the configuration");
    weir_reload_report = &rep->body;
    weir_conf_sink = weir_master_log_conf_line;
    int rc = weir_conf_load(conf->file, &nc);
    weir_conf_sink = NULL;
    weir_reload_report = NULL;
    if (rc != WEIR_OK) {
        weir_log(WEIR_LOG_ERROR, "reload refused: the configuration has errors, nothing changed", NULL);
        weir_report_add(&rep->out, "refused\nweir: reload refused: %s has errors, nothing changed:\n%s",
                        conf->file, rep->body.buf);
        goto done;
    }

    needs = weir_reload_restart_needs(conf, nc, &rep->body);
    weir_reload_apis(conf, nc, &rep->apis);
    weir_log_warnings(nc, 0, &rep->body);
    if (!weir_str_same(nc->log_file, weir_log_file())) {
        if (weir_log_open(nc->log_file, nc->log_level) != WEIR_OK) {
            int err = errno;
            weir_log(WEIR_LOG_ERROR, "cannot open the log file", "\"file\":\"%s\",\"error\":\"%s\"",
                     weir_log_str(e, sizeof(e), nc->log_file), strerror(err));
            weir_report_add(&rep->body, "  not applied: log.file: cannot open %s: %s; weir logs where it did\n",
                            nc->log_file, strerror(err));
            needs++;
        } else {
            weir_report_add(&rep->body, "  applied: log.file: %s\n", nc->log_file ? nc->log_file : "standard error");
        }
    } else {
        weir_log_open(nc->log_file, nc->log_level);     /* the level; the same file */
    }
    nc->workers = conf->workers;
    weir_conf_swap_listen(nc, conf);
    weir_conf_free(conf);
    m->conf = conf = nc;

    weir_log(WEIR_LOG_INFO, "reloading", "\"workers\":%d", m->running);
    for (int i = 0; i < m->n; i++)
        if (m->slots[i].pid > 0 && kill(m->slots[i].pid, SIGHUP) == 0) asked[nasked++] = m->slots[i].pid;
    weir_master_await(m, asked, nasked, &a);
    if (a.failed > 0 || a.died > 0 || a.silent > 0) needs++;
    weir_log(needs ? WEIR_LOG_WARN : WEIR_LOG_INFO, "reload done",
             "\"complete\":%s,\"workers\":%d,\"workers_applied\":%d,\"workers_failed\":%d,"
             "\"workers_died\":%d,\"workers_silent\":%d", needs ? "false" : "true", nasked, a.ok, a.failed,
             a.died, a.silent);

    weir_report_add(&rep->out, "%s\nweir: reloaded %s: %s in %d of %d worker%s\n%s%s",
                    needs ? "partial" : "applied", conf->file, needs ? "applied in part" : "applied", a.ok,
                    nasked, nasked == 1 ? "" : "s", rep->apis.buf, rep->body.buf);
    if (a.failed > 0)
        weir_report_add(&rep->out, "  not applied: %d worker%s could not apply it and keep%s the previous "
                        "configuration (the log says why)\n", a.failed, a.failed == 1 ? "" : "s",
                        a.failed == 1 ? "s" : "");
    if (a.died > 0)
        weir_report_add(&rep->out, "  not applied: %d worker%s died while reloading (restarted with the new "
                        "configuration; the log says why)\n", a.died, a.died == 1 ? "" : "s");
    if (a.silent > 0)
        weir_report_add(&rep->out, "  not confirmed: %d worker%s did not answer within %d s\n", a.silent,
                        a.silent == 1 ? "" : "s", WEIR_RELOAD_WAIT_MS / 1000);

done:
    sd_notifyf(0, "READY=1\nSTATUS=serving with %d worker%s", m->running, m->running == 1 ? "" : "s");
    for (int i = 0; i < nto; i++)
        if (weir_ctl_send_report(to[i], rep->out.buf, rep->out.len) != WEIR_OK && to[i] == requester)
            weir_log(WEIR_LOG_WARN, "cannot send the reload report", "\"to_pid\":%d,\"error\":\"%s\"",
                     (int) requester, strerror(errno));
    free(rep);
}

/* SIGUSR1: open the log file again, and have every worker do the same. */
static void
weir_master_reopen(weir_master_t *m)
{
    char e[PATH_MAX + 16];

    if (weir_log_reopen() != WEIR_OK) {
        weir_log(WEIR_LOG_ERROR, "cannot reopen the log file", "\"file\":\"%s\",\"error\":\"%s\"",
                 weir_log_str(e, sizeof(e), weir_log_file()), strerror(errno));
    } else if (weir_log_file() != NULL) {
        weir_log(WEIR_LOG_INFO, "log file reopened", "\"file\":\"%s\"",
                 weir_log_str(e, sizeof(e), weir_log_file()));
    }
    weir_master_tell(m, SIGUSR1);
}

static int
weir_master(weir_conf_t **confp)
{
    weir_master_t m;

    memset(&m, 0, sizeof(m));
    m.conf = *confp;
    sigemptyset(&m.set);
    sigaddset(&m.set, SIGCHLD);
    sigaddset(&m.set, SIGTERM);
    sigaddset(&m.set, SIGINT);
    sigaddset(&m.set, SIGHUP);
    sigaddset(&m.set, SIGUSR1);
    sigaddset(&m.set, WEIR_CTL_SIG_RELOADED);
    sigprocmask(SIG_BLOCK, &m.set, &m.old);
    signal(SIGPIPE, SIG_IGN);
    weir_ctl_master = getpid();

    m.n = m.conf->workers;
    m.slots = calloc((size_t) m.n, sizeof(*m.slots));
    if (m.slots == NULL) return 1;
    weir_log(WEIR_LOG_INFO, "weir started", "\"version\":\"%s\",\"workers\":%d", WEIR_VERSION, m.n);
    for (int i = 0; i < m.n; i++) {
        m.slots[i].pid = weir_spawn(&m, i);
        m.slots[i].started_ms = weir_clock_ms();
        if (m.slots[i].pid > 0) m.running++;
    }
    sd_notifyf(0, "READY=1\nMAINPID=%lu\nSTATUS=serving with %d worker%s", (unsigned long) getpid(), m.running,
               m.running == 1 ? "" : "s");

    uint64_t kill_at = 0;
    for (;;) {
        if (m.stopping && m.running == 0) break;
        uint64_t now = weir_clock_ms(), wait_ms = 1000;
        if (kill_at) {
            if (now >= kill_at) {
                weir_master_tell(&m, SIGKILL);
                kill_at = 0;
            } else {
                wait_ms = WEIR_MIN(wait_ms, kill_at - now);
            }
        }
        for (int i = 0; i < m.n && !m.stopping; i++) {
            weir_slot_t *s = &m.slots[i];
            if (s->pid > 0 || s->respawn_at_ms == 0) continue;
            if (now >= s->respawn_at_ms) {
                s->respawn_at_ms = 0;
                s->pid = weir_spawn(&m, i);
                s->started_ms = now;
                if (s->pid > 0) {
                    m.running++;
                    weir_log(WEIR_LOG_INFO, "worker restarted", "\"worker\":%d,\"worker_pid\":%d", i, (int) s->pid);
                }
            } else {
                wait_ms = WEIR_MIN(wait_ms, s->respawn_at_ms - now);
            }
        }

        struct timespec ts = { (time_t) (wait_ms / 1000), (long) (wait_ms % 1000) * 1000000L };
        siginfo_t si;
        int sig = sigtimedwait(&m.set, &si, &ts);
        if (sig < 0) continue;

        if (sig == SIGCHLD) {
            weir_master_reap(&m);
        } else if (sig == SIGTERM || sig == SIGINT) {
            if (!m.stopping) {
                weir_log(WEIR_LOG_INFO, "weir stopping", "\"signal\":%d", sig);
                sd_notify(0, "STOPPING=1\nSTATUS=draining connections");
                m.stopping = 1;
                weir_master_tell(&m, SIGTERM);
                kill_at = weir_clock_ms() + m.conf->limits.drain_timeout_ms + 5000;
            }
        } else if (sig == SIGHUP) {
            pid_t requester = weir_ctl_requester(&si);
            if (!m.stopping) {
                weir_master_reload(&m, requester);
            } else if (requester > 0) {
                static const char busy[] = "refused\nweir: reload refused: weir is stopping\n";
                weir_ctl_send_report(requester, busy, sizeof(busy) - 1);
            }
        } else if (sig == SIGUSR1) {
            weir_master_reopen(&m);
        }
        /* WEIR_CTL_SIG_RELOADED outside a reload: a worker someone else sent SIGHUP; nothing to count */
    }
    free(m.slots);
    *confp = m.conf;
    weir_remove_pid(m.conf->pid_file);
    weir_log(WEIR_LOG_INFO, "weir stopped", NULL);
    return 0;
}

static const struct option weir_long_options[] = {
    { "no-wait", no_argument, NULL, 'W' },
    { "help",    no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'v' },
    { NULL,      0,           NULL, 0 },
};

int
main(int argc, char **argv)
{
    const char *file = NULL, *sigarg = NULL;
    int         test = 0, strict = 0, wait = 1, c;
    weir_conf_t *conf = NULL;
    char        why[PATH_MAX * 3];

    while ((c = getopt_long(argc, argv, "c:tTs:vh", weir_long_options, NULL)) != -1) {
        switch (c) {
        case 'c': file = optarg; break;
        case 's': sigarg = optarg; break;
        case 't': test = 1; break;
        case 'T': test = strict = 1; break;
        case 'W': wait = 0; break;
        case 'v': printf("weir %s\n", WEIR_VERSION); return WEIR_EXIT_OK;
        case 'h': weir_usage(stdout); return WEIR_EXIT_OK;
        default:  fprintf(stderr, "weir: weir -h lists the options\n"); return WEIR_EXIT_USAGE;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "weir: unexpected argument \"%s\" (weir -h lists the options)\n", argv[optind]);
        return WEIR_EXIT_USAGE;
    }
    if (file == NULL) {
        fprintf(stderr, "weir: -c FILE is missing: weir runs only the configuration it is given. The installed "
                "one is %s:\n  weir -c %s\n(weir -h lists the options)\n", WEIR_CONF_DEFAULT, WEIR_CONF_DEFAULT);
        return WEIR_EXIT_USAGE;
    }
    if (!wait && sigarg == NULL) {
        fprintf(stderr, "weir: --no-wait goes with -s\n");
        return WEIR_EXIT_USAGE;
    }
    if (weir_conf_lua_dir(why, sizeof(why)) == NULL) {
        fprintf(stderr, "weir: %s\n", why);
        return WEIR_EXIT_FAILURE;
    }
    if (weir_conf_load(file, &conf) != WEIR_OK) return WEIR_EXIT_FAILURE;
    if (sigarg != NULL) {
        if (!wait || strcmp(sigarg, "reload") != 0)      /* else the master's report has them */
            for (size_t i = 0; i < conf->nwarnings; i++) fprintf(stderr, "weir: warning: %s\n", conf->warnings[i]);
        int rc = weir_ctl_run(conf, sigarg, wait);
        weir_conf_free(conf);
        return rc;
    }
    if (test) {
        for (size_t i = 0; i < conf->nwarnings; i++) fprintf(stderr, "weir: warning: %s\n", conf->warnings[i]);
        int errors = weir_check_start(conf, strict);
        if (errors == 0)
            printf("weir: configuration %s is valid%s\n", file, strict ? ", and weir could start now" : "");
        weir_conf_free(conf);
        return errors == 0 ? WEIR_EXIT_OK : WEIR_EXIT_FAILURE;
    }
    if (weir_log_open(conf->log_file, conf->log_level) != WEIR_OK) {
        fprintf(stderr, "weir: cannot open the log file %s: %s\n", conf->log_file, strerror(errno));
        weir_conf_free(conf);
        return WEIR_EXIT_FAILURE;
    }
    weir_log_warnings(conf, 1, NULL);
    int started = weir_open_listeners(conf) == WEIR_OK;
    if (started && weir_shm_init() != WEIR_OK) {
        if (weir_log_is_file()) fprintf(stderr, "weir: cannot map shared memory (the log says why)\n");
        started = 0;
    }
    if (!started || (conf->pid_file && weir_write_pid(conf->pid_file) != WEIR_OK)) {
        sd_notifyf(0, "STATUS=failed to start (see the log)\nERRNO=%d", EINVAL);
        weir_conf_free(conf);
        return WEIR_EXIT_FAILURE;
    }
    int rc = weir_master(&conf);
    weir_conf_free(conf);
    return rc;
}
