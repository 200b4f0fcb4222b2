/*
 * main.c — the command line and the master process: checks or loads the
 * configuration, opens the listeners, forks the workers, restarts a worker
 * that dies, and on SIGTERM/SIGINT drains the workers and exits.
 * The master carries no traffic.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "limit.h"
#include "log.h"
#include "shm.h"
#include "weir.h"
#include "worker.h"

typedef struct {
    pid_t    pid;            /* 0 when not running */
    uint64_t started_ms;
    uint64_t respawn_at_ms;  /* 0, or when to start it again */
} weir_slot_t;

static uint64_t
weir_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static void
weir_usage(FILE *f)
{
    fprintf(f,
            "weir %s — a Lua-scriptable WebSocket API gateway\n\n"
            "usage: weir [-t] -c FILE\n"
            "       weir -s reload|stop -c FILE\n"
            "       weir -v | -h\n\n"
            "  -c FILE   the configuration file (a Lua file returning a table)\n"
            "  -t        check the configuration and exit (0: valid)\n"
            "  -s SIGNAL reload: check the configuration, then have the running weir\n"
            "            (found by the configuration's pid_file) reload it; stop: drain and stop\n"
            "  -v        print the version and exit\n"
            "  -h        print this help and exit\n\n"
            "signals to the master: HUP reloads, TERM or INT drain and stop\n",
            WEIR_VERSION);
}

/* Open every listener; on failure log it and return WEIR_ERROR. */
static int
weir_open_listeners(weir_conf_t *conf)
{
    for (size_t i = 0; i < conf->nlisten; i++) {
        weir_listen_t *l = &conf->listen[i];
        struct sockaddr_storage ss;
        socklen_t len;
        memset(&ss, 0, sizeof(ss));
        if (strchr(l->address, ':') != NULL) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *) &ss;
            a->sin6_family = AF_INET6;
            a->sin6_port = htons(l->port);
            if (inet_pton(AF_INET6, l->address, &a->sin6_addr) != 1) goto bad_address;
            len = sizeof(*a);
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *) &ss;
            a->sin_family = AF_INET;
            a->sin_port = htons(l->port);
            if (inet_pton(AF_INET, l->address, &a->sin_addr) != 1) goto bad_address;
            len = sizeof(*a);
        }
        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd < 0) goto failed;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *) &ss, len) < 0 || listen(fd, 4096) < 0) {
            close(fd);
            goto failed;
        }
        l->fd = fd;
        weir_log(WEIR_LOG_INFO, "listening", "\"address\":\"%s\",\"port\":%u,\"tls\":%s", l->address,
                 l->port, l->tls_cert ? "true" : "false");
        continue;

    failed:
        weir_log(WEIR_LOG_ERROR, "cannot listen", "\"address\":\"%s\",\"port\":%u,\"error\":\"%s\"",
                 l->address, l->port, strerror(errno));
        return WEIR_ERROR;
    bad_address:
        weir_log(WEIR_LOG_ERROR, "invalid listen address", "\"address\":\"%s\"", l->address);
        return WEIR_ERROR;
    }
    return WEIR_OK;
}

static pid_t
weir_spawn(weir_conf_t *conf, int id, const sigset_t *old)
{
    pid_t pid = fork();
    if (pid == 0) {
        sigprocmask(SIG_SETMASK, old, NULL);
        exit(weir_worker_run(conf, id));      /* the worker frees its configurations */
    }
    if (pid < 0) weir_log(WEIR_LOG_ERROR, "cannot fork a worker", "\"error\":\"%s\"", strerror(errno));
    return pid;
}

static void
weir_master_log_conf_line(const char *line)
{
    char e[2048];
    weir_log(WEIR_LOG_ERROR, "configuration error", "\"error\":\"%s\"", weir_log_str(e, sizeof(e), line));
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

/*
 * SIGHUP: validate the configuration file and every policy it names. On any
 * error nothing changes (the errors are logged with file and line). On
 * success the master keeps the new configuration (for workers it starts
 * later) and tells every worker to reload. Returns the configuration now
 * in force.
 */
static weir_conf_t *
weir_master_reload(weir_conf_t *conf, weir_slot_t *slots, int n)
{
    weir_conf_t *nc = NULL;
    weir_conf_sink = weir_master_log_conf_line;
    int rc = weir_conf_load(conf->file, &nc);
    weir_conf_sink = NULL;
    if (rc != WEIR_OK) {
        weir_log(WEIR_LOG_ERROR, "reload refused: the configuration has errors, nothing changed", NULL);
        return conf;
    }
    if (!weir_listen_same(conf, nc))
        weir_log(WEIR_LOG_WARN, "reload: listen changes need a restart; the listeners stay as they are", NULL);
    if (nc->workers != conf->workers)
        weir_log(WEIR_LOG_WARN, "reload: a new worker count needs a restart", NULL);
    nc->workers = conf->workers;
    weir_conf_swap_listen(nc, conf);
    weir_conf_free(conf);
    weir_log(WEIR_LOG_INFO, "reloading", "\"workers\":%d", n);
    for (int i = 0; i < n; i++)
        if (slots[i].pid > 0) kill(slots[i].pid, SIGHUP);
    return nc;
}

static int
weir_master(weir_conf_t **confp)
{
    weir_conf_t *conf = *confp;
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, &old);
    signal(SIGPIPE, SIG_IGN);

    int n = conf->workers;
    weir_slot_t *slots = calloc((size_t) n, sizeof(*slots));
    if (slots == NULL) return 1;
    weir_log(WEIR_LOG_INFO, "weir started", "\"version\":\"%s\",\"workers\":%d", WEIR_VERSION, n);
    for (int i = 0; i < n; i++) {
        slots[i].pid = weir_spawn(conf, i, &old);
        slots[i].started_ms = weir_clock_ms();
    }

    int stopping = 0, running = n;
    uint64_t kill_at = 0;
    for (;;) {
        if (stopping && running == 0) break;
        uint64_t now = weir_clock_ms(), wait_ms = 1000;
        if (kill_at) {
            if (now >= kill_at) {
                for (int i = 0; i < n; i++)
                    if (slots[i].pid > 0) kill(slots[i].pid, SIGKILL);
                kill_at = 0;
            } else {
                wait_ms = WEIR_MIN(wait_ms, kill_at - now);
            }
        }
        for (int i = 0; i < n && !stopping; i++) {
            if (slots[i].pid > 0 || slots[i].respawn_at_ms == 0) continue;
            if (now >= slots[i].respawn_at_ms) {
                slots[i].respawn_at_ms = 0;
                slots[i].pid = weir_spawn(conf, i, &old);
                slots[i].started_ms = now;
                if (slots[i].pid > 0) {
                    running++;
                    weir_log(WEIR_LOG_INFO, "worker restarted", "\"worker\":%d,\"worker_pid\":%d", i,
                             (int) slots[i].pid);
                }
            } else {
                wait_ms = WEIR_MIN(wait_ms, slots[i].respawn_at_ms - now);
            }
        }

        struct timespec ts = { (time_t) (wait_ms / 1000), (long) (wait_ms % 1000) * 1000000L };
        siginfo_t si;
        int sig = sigtimedwait(&set, &si, &ts);
        if (sig < 0) continue;

        if (sig == SIGCHLD) {
            int status;
            pid_t pid;
            while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
                for (int i = 0; i < n; i++) {
                    if (slots[i].pid != pid) continue;
                    slots[i].pid = 0;
                    running--;
                    if (stopping) break;
                    if (WIFSIGNALED(status))
                        weir_log(WEIR_LOG_ERROR, "worker died", "\"worker\":%d,\"worker_pid\":%d,\"signal\":%d",
                                 i, (int) pid, WTERMSIG(status));
                    else
                        weir_log(WEIR_LOG_ERROR, "worker exited", "\"worker\":%d,\"worker_pid\":%d,\"status\":%d",
                                 i, (int) pid, WEXITSTATUS(status));
                    /* a worker that dies at once is not restarted in a tight loop */
                    uint64_t t = weir_clock_ms();
                    slots[i].respawn_at_ms = t - slots[i].started_ms < 1000 ? t + 1000 : t;
                    if (slots[i].respawn_at_ms == 0) slots[i].respawn_at_ms = 1;
                    break;
                }
            }
        } else if (sig == SIGTERM || sig == SIGINT) {
            if (!stopping) {
                weir_log(WEIR_LOG_INFO, "weir stopping", "\"signal\":%d", sig);
                stopping = 1;
                for (int i = 0; i < n; i++)
                    if (slots[i].pid > 0) kill(slots[i].pid, SIGTERM);
                kill_at = weir_clock_ms() + conf->limits.drain_timeout_ms + 5000;
            }
        } else if (sig == SIGHUP && !stopping) {
            conf = *confp = weir_master_reload(conf, slots, n);
        }
    }
    free(slots);
    if (conf->pid_file) unlink(conf->pid_file);
    weir_log(WEIR_LOG_INFO, "weir stopped", NULL);
    return 0;
}

static int
weir_write_pid(const char *file)
{
    FILE *f = fopen(file, "w");
    if (f == NULL) {
        weir_log(WEIR_LOG_ERROR, "cannot write pid file", "\"error\":\"%s\"", strerror(errno));
        return WEIR_ERROR;
    }
    fprintf(f, "%d\n", (int) getpid());
    fclose(f);
    return WEIR_OK;
}

/* weir -s reload|stop: signal the running master named by the pid file. */
static int
weir_signal_master(const weir_conf_t *conf, const char *what)
{
    int sig = strcmp(what, "reload") == 0 ? SIGHUP : strcmp(what, "stop") == 0 ? SIGTERM : 0;
    if (sig == 0) {
        fprintf(stderr, "weir: -s takes reload or stop, not \"%s\"\n", what);
        return 2;
    }
    if (conf->pid_file == NULL) {
        fprintf(stderr, "weir: %s has no pid_file: cannot find the running master\n", conf->file);
        return 1;
    }
    FILE *f = fopen(conf->pid_file, "r");
    int pid = 0;
    if (f == NULL || fscanf(f, "%d", &pid) != 1 || pid <= 1) {
        fprintf(stderr, "weir: cannot read a process id from %s\n", conf->pid_file);
        if (f) fclose(f);
        return 1;
    }
    fclose(f);
    if (kill(pid, sig) != 0) {
        fprintf(stderr, "weir: cannot signal process %d: %s\n", pid, strerror(errno));
        return 1;
    }
    return 0;
}

int
main(int argc, char **argv)
{
    const char *file = NULL;
    int test = 0, c;
    weir_conf_t *conf = NULL;

    const char *sigarg = NULL;
    while ((c = getopt(argc, argv, "c:ts:vh")) != -1) {
        switch (c) {
        case 'c': file = optarg; break;
        case 's': sigarg = optarg; break;
        case 't': test = 1; break;
        case 'v': printf("weir %s\n", WEIR_VERSION); return 0;
        case 'h': weir_usage(stdout); return 0;
        default:  weir_usage(stderr); return 2;
        }
    }
    if (file == NULL || optind != argc) {
        weir_usage(stderr);
        return 2;
    }
    if (weir_conf_load(file, &conf) != WEIR_OK) return 1;
    if (sigarg != NULL) {
        int rc = weir_signal_master(conf, sigarg);
        weir_conf_free(conf);
        return rc;
    }
    if (test) {
        printf("weir: configuration %s is valid\n", file);
        weir_conf_free(conf);
        return 0;
    }
    if (weir_log_open(conf->log_file, conf->log_level) != WEIR_OK) return 1;
    if (weir_open_listeners(conf) != WEIR_OK) return 1;
    if (weir_shm_init() != WEIR_OK) return 1;
    if (weir_limits_init(0, 0) != WEIR_OK) return 1;
    if (conf->pid_file && weir_write_pid(conf->pid_file) != WEIR_OK) return 1;
    int rc = weir_master(&conf);
    weir_conf_free(conf);
    return rc;
}
