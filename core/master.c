/*
 * master.c — the master process: forks the workers and restarts one that
 * dies, reloads on SIGHUP (and reports how it went to the `weir -s reload`
 * processes waiting), reopens the log file on SIGUSR1, and on SIGTERM/
 * SIGINT (or SIGUSR2: weir -s drain, clients closed 1012) drains the
 * workers and exits. It waits for its signals with
 * sigtimedwait (all blocked, none handled asynchronously). Under systemd
 * (Type=notify) it tells the manager when it is ready, reloading and
 * stopping. It carries no traffic.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "ctl.h"
#include "limit.h"
#include "log.h"
#include "master.h"
#include "registry.h"
#include "stats.h"
#include "weir.h"
#include "worker.h"

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

/* Log each of CONF's warnings, add them to R when not NULL, and say them
 * on stderr when TO_STDERR and the log is a file. */
static void
weir_master_warnings(const weir_conf_t *conf, int to_stderr, weir_report_t *r)
{
    char e[2048];

    for (size_t i = 0; i < conf->nwarnings; i++) {
        weir_log(WEIR_LOG_WARN, "configuration warning", "\"warning\":\"%s\"",
                 weir_log_str(e, sizeof(e), conf->warnings[i]));
        if (to_stderr && weir_log_file() != NULL) fprintf(stderr, "weir: warning: %s\n", conf->warnings[i]);
        if (r != NULL) weir_report_add(r, "  warning: %s\n", conf->warnings[i]);
    }
}

void
weir_master_log_warnings(const weir_conf_t *conf)
{
    weir_master_warnings(conf, 1, NULL);
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
        sigaddset(&mask, SIGUSR2);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigprocmask(SIG_SETMASK, &mask, NULL);
        exit(weir_worker_run(m->conf, id));      /* the worker frees its configurations */
    }
    if (pid < 0) weir_log(WEIR_LOG_ERROR, "cannot fork a worker", "\"error\":\"%s\"", strerror(errno));
    else weir_registry_worker(id, pid);
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
            weir_registry_worker(i, 0);          /* its connections are gone */
            /* its sessions never released their connection counts */
            uint64_t given = weir_limits_reclaim(i);
            if (given > 0)
                weir_log(WEIR_LOG_INFO, "connection counts of a gone worker given back",
                         "\"worker\":%d,\"worker_pid\":%d,\"counts\":%llu", i, (int) pid,
                         (unsigned long long) given);
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
        weir_report_add(r, "%s%s", i ? ", " : "", weir_conf_listen_name(&c->listen[i], name, sizeof(name)));
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
    const weir_state_conf_t *os = &old->state, *ns = &nc->state;
    char changed[64] = "";
    if (!weir_str_same(os->redis_url, ns->redis_url)) strcat(changed, ", redis");
    if (!weir_str_same(os->key_prefix, ns->key_prefix)) strcat(changed, ", key_prefix");
    if (!weir_str_same(os->host, ns->host)) strcat(changed, ", host");
    if (os->timeout_ms != ns->timeout_ms) strcat(changed, ", timeout");
    if (os->sync_interval_ms != ns->sync_interval_ms) strcat(changed, ", sync_interval");
    if (changed[0] != '\0') {
        /* the workers keep the connection they made at start, and their Lua
         * runtime the state it started with (runtime.load); the URL may hold
         * a password: not shown */
        weir_log(WEIR_LOG_WARN, "reload: state changes need a restart; the workers keep their Redis settings", NULL);
        weir_report_add(r, "  needs a restart (not applied): state (%s): %s -> %s\n", changed + 2,
                        os->redis_name ? os->redis_name : "(no redis)", ns->redis_name ? ns->redis_name : "(no redis)");
        needs++;
    }
    if (memcmp(&old->metrics, &nc->metrics, sizeof(nc->metrics)) != 0) {
        weir_log(WEIR_LOG_WARN, "reload: metrics sizes need a restart", NULL);
        weir_report_add(r, "  needs a restart (not applied): metrics: the store is sized at start\n");
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
    weir_master_warnings(nc, 0, &rep->body);
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
    nc->metrics = conf->metrics;                /* the store keeps its size */
    weir_conf_swap_listen(nc, conf);
    weir_conf_swap_state(nc, conf);             /* a worker started later keeps the running state too */
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
    {
        const char *nl = memchr(rep->out.buf, '\n', rep->out.len);
        char result[16];
        size_t rl = nl ? (size_t) (nl - rep->out.buf) : rep->out.len;
        snprintf(result, sizeof(result), "%.*s", (int) WEIR_MIN(rl, sizeof(result) - 1), rep->out.buf);
        if (nl != NULL) weir_stats_reload(result);
        if (nl != NULL) weir_registry_reloaded(result, nl + 1, rep->out.len - (size_t) (nl + 1 - rep->out.buf));
    }
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

int
weir_master_run(weir_conf_t **confp)
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
    sigaddset(&m.set, SIGUSR2);
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
        } else if (sig == SIGTERM || sig == SIGINT || sig == SIGUSR2) {
            if (!m.stopping) {
                weir_log(WEIR_LOG_INFO, "weir stopping", "\"signal\":%d", sig);
                sd_notify(0, "STOPPING=1\nSTATUS=draining connections");
                m.stopping = 1;
                /* SIGUSR2 (weir -s drain): the workers close their clients 1012 */
                weir_master_tell(&m, sig == SIGUSR2 ? SIGUSR2 : SIGTERM);
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
