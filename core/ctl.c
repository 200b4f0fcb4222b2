/*
 * ctl.c — `weir -s reload|stop|drain|reopen`, and the two small ends of it that
 * run inside weir.
 *
 * The command line finds the master by the configuration's pid file, makes
 * sure that process is still a weir (a pid file left by a weir that was
 * killed may name any process by now), and signals it. For a reload it
 * waits for the master's report: before signalling it listens on an
 * abstract Unix socket named after its own pid ("\0weir-ctl-PID"), and
 * sends SIGHUP with sigqueue and the value WEIR_CTL_MAGIC, so that the
 * master knows whom to answer (a plain kill -HUP asks for no report). It
 * accepts only a connection whose peer is the master's pid. For a stop it
 * waits until the master has exited.
 *
 * SIGHUP does not queue: sent while a reload runs, two more requests merge
 * into one, and the sigqueue value of only one of them arrives. So the
 * master reports to every `weir -s reload` waiting when a reload starts
 * (those listening on a "weir-ctl-PID" socket, from /proc/net/unix): each
 * of them had checked, hence finished writing, its configuration before it
 * listened, so that reload has read it.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"

#define WEIR_CTL_REPORT_WAIT_MS  60000    /* the master waits at most 15 s for its workers */
#define WEIR_CTL_REPORT_MAX      65536

pid_t weir_ctl_master;

static uint64_t
weir_ctl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

socklen_t
weir_ctl_addr(struct sockaddr_un *a, pid_t pid)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "weir-ctl-%d", (int) pid);
    return (socklen_t) (offsetof(struct sockaddr_un, sun_path) + 1 + (size_t) n);
}

/*
 * Read /proc/PID/stat: its state letter and start time (clock ticks since
 * boot). Returns 0, or -1 when there is no such process.
 */
static int
weir_ctl_stat(pid_t pid, char *state, unsigned long long *start)
{
    char   path[64], buf[1024], *p;
    FILE  *f;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
    if ((f = fopen(path, "r")) == NULL) return -1;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    if ((p = strrchr(buf, ')')) == NULL) return -1;
    /* after ")": state is field 3, starttime field 22 */
    if (sscanf(p + 1, " %c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
               state, start) != 2)
        return -1;
    return 0;
}

/* Whether the process PID that started at START still runs (a zombie has
 * exited). */
static int
weir_ctl_alive(pid_t pid, unsigned long long start)
{
    char               state;
    unsigned long long s;

    return weir_ctl_stat(pid, &state, &s) == 0 && s == start && state != 'Z' && state != 'X';
}

/*
 * The program process PID runs (PID "self": this one), into BUF: the name
 * of its executable file (" (deleted)" dropped: a weir whose binary was
 * upgraded under it is still weir), or, when that cannot be read (another
 * user's process), its comm, which the kernel cuts to 15 bytes: then
 * returns 1, else 0.
 */
static int
weir_ctl_program(const char *pid, char *buf, size_t len)
{
    char     path[64], exe[PATH_MAX];
    ssize_t  n;
    FILE    *f;

    buf[0] = '\0';
    snprintf(path, sizeof(path), "/proc/%s/exe", pid);
    n = readlink(path, exe, sizeof(exe) - 1);
    if (n > 0) {
        exe[n] = '\0';
        size_t l = strlen(exe);
        if (l > 10 && strcmp(exe + l - 10, " (deleted)") == 0) exe[l - 10] = '\0';
        const char *base = strrchr(exe, '/');
        snprintf(buf, len, "%s", base != NULL ? base + 1 : exe);
        return 0;
    }
    snprintf(path, sizeof(path), "/proc/%s/comm", pid);
    if ((f = fopen(path, "r")) == NULL) return 1;
    if (fgets(buf, (int) len, f) == NULL) buf[0] = '\0';
    fclose(f);
    buf[strcspn(buf, "\n")] = '\0';
    return 1;
}

/*
 * Find CONF's running master: its pid and start time. Returns WEIR_EXIT_OK,
 * or the exit code after saying why on stderr.
 */
static int
weir_ctl_find(const weir_conf_t *conf, pid_t *pid, unsigned long long *start)
{
    char   state, comm[NAME_MAX + 1], mine[NAME_MAX + 1], num[32];
    long   v;
    FILE  *f;

    if (conf->pid_file == NULL) {
        fprintf(stderr, "weir: %s sets no pid_file, so weir -s cannot find the running weir: set "
                "pid_file, or signal its master process yourself (kill -HUP PID)\n", conf->file);
        return WEIR_EXIT_FAILURE;
    }
    if ((f = fopen(conf->pid_file, "r")) == NULL) {
        if (errno == ENOENT) {
            fprintf(stderr, "weir: weir is not running: there is no pid file %s (weir writes it when "
                    "it starts and removes it when it stops)\n", conf->pid_file);
            return WEIR_EXIT_NOT_RUNNING;
        }
        fprintf(stderr, "weir: cannot read the pid file %s: %s\n", conf->pid_file, strerror(errno));
        return WEIR_EXIT_FAILURE;
    }
    if (fscanf(f, "%ld", &v) != 1 || v <= 1 || v > INT_MAX) {
        fclose(f);
        fprintf(stderr, "weir: the pid file %s does not hold a process id\n", conf->pid_file);
        return WEIR_EXIT_FAILURE;
    }
    fclose(f);
    *pid = (pid_t) v;
    if (weir_ctl_stat(*pid, &state, start) != 0 || state == 'Z' || state == 'X') {
        fprintf(stderr, "weir: weir is not running: process %ld, named by %s, does not exist (a pid "
                "file left by a weir that did not stop cleanly)\n", v, conf->pid_file);
        return WEIR_EXIT_NOT_RUNNING;
    }
    snprintf(num, sizeof(num), "%ld", v);
    int cut = weir_ctl_program(num, comm, sizeof(comm));
    weir_ctl_program("self", mine, sizeof(mine));
    if (comm[0] != '\0' && mine[0] != '\0' && strncmp(comm, mine, cut ? 15 : sizeof(mine)) != 0) {
        fprintf(stderr, "weir: weir is not running: process %ld, named by %s, is \"%s\", not %s (a pid "
                "file left by a weir that did not stop cleanly)\n", v, conf->pid_file, comm, mine);
        return WEIR_EXIT_NOT_RUNNING;
    }
    return WEIR_EXIT_OK;
}

/* Say why signalling PID failed; returns the exit code. */
static int
weir_ctl_signal_failed(pid_t pid)
{
    if (errno == ESRCH) {
        fprintf(stderr, "weir: weir (pid %d) exited just now\n", (int) pid);
        return WEIR_EXIT_NOT_RUNNING;
    }
    fprintf(stderr, "weir: cannot signal weir (pid %d): %s%s\n", (int) pid, strerror(errno),
            errno == EPERM ? " (run this as the user weir runs as, or as root)" : "");
    return WEIR_EXIT_FAILURE;
}

/*
 * Read the report from the connection FD until the master closes it (5 s at
 * most) into BUF (LEN bytes, NUL-terminated). Returns its length.
 */
static size_t
weir_ctl_read_report(int fd, char *buf, size_t len)
{
    size_t   n = 0;
    uint64_t deadline = weir_ctl_now_ms() + 5000;

    while (n + 1 < len) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        uint64_t now = weir_ctl_now_ms();
        if (now >= deadline || poll(&p, 1, (int) (deadline - now)) <= 0) break;
        ssize_t r = read(fd, buf + n, len - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += (size_t) r;
    }
    buf[n] = '\0';
    return n;
}

/*
 * Print the master's report and return the exit code it means: "applied"
 * 0, "partial" 3, anything else 1. Its lines go to stdout, or to stderr
 * when nothing was applied.
 */
static int
weir_ctl_show_report(pid_t pid, const char *report)
{
    size_t      first = strcspn(report, "\n");
    const char *rest = report[first] == '\n' ? report + first + 1 : report + first;
    int         code;
    FILE       *out = stdout;

    if (first == 7 && memcmp(report, "applied", 7) == 0) {
        code = WEIR_EXIT_OK;
    } else if (first == 7 && memcmp(report, "partial", 7) == 0) {
        code = WEIR_EXIT_PARTIAL;
    } else {
        code = WEIR_EXIT_FAILURE;
        out = stderr;
        if (!(first == 7 && memcmp(report, "refused", 7) == 0)) {
            fprintf(stderr, "weir: weir (pid %d) sent a report weir -s does not understand:\n", (int) pid);
        }
    }
    fputs(rest, out);
    if (rest[0] != '\0' && rest[strlen(rest) - 1] != '\n') fputc('\n', out);
    return code;
}

static int
weir_ctl_reload(pid_t pid, unsigned long long start, int wait)
{
    struct sockaddr_un  a;
    socklen_t           alen = weir_ctl_addr(&a, getpid());
    union sigval        v = { .sival_int = WEIR_CTL_MAGIC };
    uint64_t            deadline;
    int                 s, code = WEIR_EXIT_FAILURE;
    char               *report = NULL;

    if (!wait) {
        if (kill(pid, SIGHUP) != 0) return weir_ctl_signal_failed(pid);
        printf("weir: asked weir (pid %d) to reload; its log says how it went\n", (int) pid);
        return WEIR_EXIT_OK;
    }
    s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || bind(s, (struct sockaddr *) &a, alen) != 0 || listen(s, 4) != 0) {
        fprintf(stderr, "weir: cannot open a socket for weir's report: %s\n", strerror(errno));
        goto done;
    }
    if (sigqueue(pid, SIGHUP, v) != 0) {
        code = weir_ctl_signal_failed(pid);
        goto done;
    }
    deadline = weir_ctl_now_ms() + WEIR_CTL_REPORT_WAIT_MS;
    for (;;) {
        struct pollfd p = { .fd = s, .events = POLLIN };
        int r = poll(&p, 1, 250);
        if (r < 0 && errno != EINTR) {
            fprintf(stderr, "weir: waiting for weir's report: %s\n", strerror(errno));
            goto done;
        }
        if (r > 0) {
            struct ucred cred;
            socklen_t    clen = sizeof(cred);
            int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
            if (c < 0) continue;
            if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 || cred.pid != pid) {
                close(c);                   /* not the master: not its report */
                continue;
            }
            if ((report = malloc(WEIR_CTL_REPORT_MAX)) == NULL) {
                close(c);
                fprintf(stderr, "weir: out of memory\n");
                goto done;
            }
            weir_ctl_read_report(c, report, WEIR_CTL_REPORT_MAX);
            close(c);
            code = weir_ctl_show_report(pid, report);
            goto done;
        }
        if (!weir_ctl_alive(pid, start)) {
            fprintf(stderr, "weir: weir (pid %d) exited during the reload; its log says why\n", (int) pid);
            goto done;
        }
        if (weir_ctl_now_ms() >= deadline) {
            fprintf(stderr, "weir: weir (pid %d) sent no report within %d s (it may still apply the "
                    "configuration): its log says how the reload went\n", (int) pid,
                    WEIR_CTL_REPORT_WAIT_MS / 1000);
            goto done;
        }
    }

done:
    free(report);
    if (s >= 0) close(s);
    return code;
}

/* weir -s stop (SIG: SIGTERM) or drain (SIGUSR2: clients closed 1012). */
static int
weir_ctl_stop(const weir_conf_t *conf, pid_t pid, unsigned long long start, int sig, int wait)
{
    /* the master drains for drain_timeout, then kills what is left 5 s later */
    uint64_t limit = conf->limits.drain_timeout_ms + 15000;
    uint64_t deadline = weir_ctl_now_ms() + limit;

    if (kill(pid, sig) != 0) return weir_ctl_signal_failed(pid);
    if (!wait) {
        printf("weir: asked weir (pid %d) to %s\n", (int) pid, sig == SIGUSR2 ? "drain and stop" : "stop");
        return WEIR_EXIT_OK;
    }
    while (weir_ctl_alive(pid, start)) {
        if (weir_ctl_now_ms() >= deadline) {
            fprintf(stderr, "weir: weir (pid %d) is still running %llu s after it was asked to stop\n",
                    (int) pid, (unsigned long long) (limit / 1000));
            return WEIR_EXIT_FAILURE;
        }
        struct timespec ts = { 0, 50 * 1000000L };
        nanosleep(&ts, NULL);
    }
    printf("weir: weir (pid %d) stopped\n", (int) pid);
    return WEIR_EXIT_OK;
}

int
weir_ctl_run(const weir_conf_t *conf, const char *what, int wait)
{
    pid_t              pid;
    unsigned long long start;
    int                rc;

    if (strcmp(what, "reload") != 0 && strcmp(what, "stop") != 0 && strcmp(what, "drain") != 0
        && strcmp(what, "reopen") != 0) {
        fprintf(stderr, "weir: -s takes reload, stop, drain or reopen, not \"%s\"\n", what);
        return WEIR_EXIT_USAGE;
    }
    if ((rc = weir_ctl_find(conf, &pid, &start)) != WEIR_EXIT_OK) return rc;
    if (strcmp(what, "reload") == 0) return weir_ctl_reload(pid, start, wait);
    if (strcmp(what, "stop") == 0) return weir_ctl_stop(conf, pid, start, SIGTERM, wait);
    if (strcmp(what, "drain") == 0) return weir_ctl_stop(conf, pid, start, SIGUSR2, wait);
    if (kill(pid, SIGUSR1) != 0) return weir_ctl_signal_failed(pid);
    printf("weir: asked weir (pid %d) to reopen its log file\n", (int) pid);
    return WEIR_EXIT_OK;
}

pid_t
weir_ctl_requester(const siginfo_t *si)
{
    if (si->si_code == SI_QUEUE && si->si_value.sival_int == WEIR_CTL_MAGIC && si->si_pid > 0)
        return si->si_pid;
    return 0;
}

int
weir_ctl_waiting(pid_t *out, int max)
{
    static const char   name[] = " @weir-ctl-";
    char                line[512], *at, *end;
    unsigned long       flags;
    long                pid;
    FILE               *f;
    int                 n = 0;

    if ((f = fopen("/proc/net/unix", "r")) == NULL) return 0;
    while (n < max && fgets(line, sizeof(line), f) != NULL) {
        /* "Num: RefCount Protocol Flags Type St Inode Path"; a listening
         * socket has __SO_ACCEPTCON (0x10000) in Flags */
        if ((at = strstr(line, name)) == NULL) continue;
        if (sscanf(line, "%*s %*s %*s %lx", &flags) != 1 || !(flags & 0x10000)) continue;
        pid = strtol(at + sizeof(name) - 1, &end, 10);
        if (pid <= 0 || pid > INT_MAX || (*end != '\n' && *end != '\0')) continue;
        int seen = 0;
        for (int i = 0; i < n; i++) seen |= out[i] == (pid_t) pid;
        if (!seen) out[n++] = (pid_t) pid;
    }
    fclose(f);
    return n;
}

int
weir_ctl_send_report(pid_t to, const char *report, size_t len)
{
    struct sockaddr_un  a;
    socklen_t           alen = weir_ctl_addr(&a, to);
    struct ucred        cred;
    socklen_t           clen = sizeof(cred);
    size_t              off = 0;
    int                 s, e;

    s = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0) return WEIR_ERROR;
    if (connect(s, (struct sockaddr *) &a, alen) != 0) goto failed;
    /* only to a listener of this user or root: a report may quote the
     * configuration */
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0) goto failed;
    if (cred.uid != getuid() && cred.uid != 0) {
        errno = EPERM;
        goto failed;
    }
    while (off < len) {
        ssize_t n = send(s, report + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) goto failed;            /* a full buffer too: the report is never waited on */
        off += (size_t) n;
    }
    close(s);
    return WEIR_OK;

failed:
    e = errno;
    close(s);
    errno = e;
    return WEIR_ERROR;
}

void
weir_ctl_reloaded(int applied)
{
    union sigval v = { .sival_int = applied ? 1 : 0 };

    /* a master that died leaves its workers to another parent: say nothing */
    if (weir_ctl_master > 0 && getppid() == weir_ctl_master)
        sigqueue(weir_ctl_master, WEIR_CTL_SIG_RELOADED, v);
}
