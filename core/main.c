/*
 * main.c — the command line: checks a configuration (-t, -T), signals a
 * running weir (-s, through ctl.c), hands the admin API's commands (weir
 * status, weir connections, ...) over to lua/weir/cli.lua, or starts one:
 * loads the configuration, opens the log, the listeners and the pid file,
 * then hands over to the master process (master.c). Fatal start-up errors
 * are said on stderr as well as logged, so that they are seen even with
 * log.file set.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <systemd/sd-daemon.h>

#include "conf.h"
#include "ctl.h"
#include "limit.h"
#include "log.h"
#include "master.h"
#include "registry.h"
#include "stats.h"
#include "shm.h"
#include "weir.h"

#ifndef WEIR_CONF_DEFAULT
#define WEIR_CONF_DEFAULT "/etc/weir/weir.conf.lua"
#endif

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
            "       weir [-c FILE] COMMAND [ARGS] [--json]\n"
            "                                         ask the running weir through its admin API\n"
            "       weir -v | -h\n\n"
            "  -c FILE     the configuration (a Lua file returning a table); the installed one is\n"
            "              %s (the default of the commands below)\n"
            "  -t          check the configuration, the files it names and every policy it uses:\n"
            "              exit 0 when valid, 1 with every problem otherwise; warnings (a pid or log\n"
            "              file this user cannot write, policies with the same priority) do not fail it\n"
            "  -T          as -t, and fail unless weir could start now as this user: the pid and log\n"
            "              files can be written and every listen address can be bound\n"
            "  -s SIGNAL   reload  check the configuration, have the running weir apply it and print\n"
            "                      what it applied and what needs a restart (exit 0: all of it,\n"
            "                      3: not all of it, 1: none of it)\n"
            "              stop    drain the connections (close 1001) and stop; waits until weir has exited\n"
            "              drain   as stop, the clients closed 1012 (restarting: reconnect elsewhere)\n"
            "              reopen  reopen the log file (after logrotate moved it)\n"
            "  --no-wait   with -s: return once the signal is sent\n"
            "  -v          print the version and exit\n"
            "  -h          print this help and exit\n\n"
            "commands (the admin API at admin.address:admin.port, its token read from admin.token_file;\n"
            "--json prints the API's answer as it is; weir COMMAND -h tells more):\n"
            "  status                                the gateway's status, its workers, the last reload\n"
            "  connections [FILTERS] [--limit N] [--offset N]\n"
            "                                        the host's live connections (FILTERS: --api A --version V\n"
            "                                        --application X --subscriber S --client IP --key-type T\n"
            "                                        --tier T, all of them to match)\n"
            "  kick ID | FILTERS | --all [--code N] [--message M]\n"
            "                                        close a connection, or every one matching\n"
            "  push ID | FILTERS | --all (--text T | --binary-file F) [--to backend]\n"
            "                                        send a message to a connection's client (or backend)\n"
            "  reload                                as weir -s reload, through the API (exit 0, 3 or 1)\n"
            "  app create NAME --owner O [--description D] [--tier T] [--scopes a,b]\n"
            "  app list [--owner O] | app show APP | app delete APP\n"
            "  app keys APP [--generate [--sandbox]]  list an application's keys, or make one (its secret is\n"
            "                                        shown only then)\n"
            "  subscribe APP API VERSION --tier T | unsubscribe ID | subscriptions [--application A] [--api A]\n"
            "  token CONSUMER_KEY [--scope \"a b\"]    an access token from weir's first listener (the secret\n"
            "                                        from WEIR_CLIENT_SECRET or one line of standard input)\n"
            "  revoke app APP | revoke key CONSUMER_KEY | revoke token TOKEN_OR_JTI\n\n"
            "signals to the master: HUP reload, TERM or INT drain and stop, USR2 drain (1012) and stop,\n"
            "                       USR1 reopen the log file\n"
            "environment: WEIR_LUA_DIR  weir's Lua runtime (default: ../share/weir/lua from the binary,\n"
            "                           else ../lua: the build tree)\n"
            "             WEIR_POLICY_DIR  the stock policies (default: ../policies from the Lua runtime)\n"
            "             WEIR_CLIENT_SECRET  the client secret of weir token\n"
            "exit status: 0 done, 1 failed, 2 usage, 3 a reload applied only in part, 7 weir is not\n"
            "             running (-s) or its admin API cannot be reached (commands)\n"
            "see weir(8)\n",
            WEIR_VERSION, WEIR_CONF_DEFAULT);
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

/* Open listener L: a non-blocking socket bound and listening, with
 * SO_REUSEPORT when REUSEPORT. Returns the fd, or -1 with ERR saying why. */
static int
weir_listen_open(const weir_listen_t *l, int reuseport, char *err, size_t len)
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
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        goto failed;
    }
    if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    /* the connections accepted from it inherit it: no setsockopt per accept */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
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
        int fd = weir_listen_open(&conf->listen[i], 0, why, sizeof(why));
        if (fd >= 0) {
            close(fd);
            continue;
        }
        fprintf(stderr, "weir: %s: listen: cannot listen on %s: %s\n", conf->file,
                weir_conf_listen_name(&conf->listen[i], name, sizeof(name)), why);
        errors++;
    }
    return errors;
}

/* ---- starting ---------------------------------------------------------- */

/*
 * Listener L's sockets, one per worker, all bound with SO_REUSEPORT: the
 * kernel spreads new connections evenly over them, where workers sharing
 * one socket would race for each (the one whose loop wakes first takes
 * most). A socket outlives a worker that dies (the master holds it): what
 * arrives meanwhile waits for its successor. The address is first bound
 * alone, without SO_REUSEPORT, so that a port already taken (by another
 * weir too, which would otherwise share it silently) fails the start.
 * Returns WEIR_OK, or WEIR_ERROR with ERR.
 */
static int
weir_listen_open_all(weir_listen_t *l, int workers, char *err, size_t len)
{
    int probe = weir_listen_open(l, 0, err, len);
    if (probe < 0) return WEIR_ERROR;
    close(probe);
    l->fds = malloc((size_t) workers * sizeof(int));
    if (l->fds == NULL) {
        snprintf(err, len, "out of memory");
        return WEIR_ERROR;
    }
    for (l->nfds = 0; l->nfds < workers; l->nfds++) {
        l->fds[l->nfds] = weir_listen_open(l, 1, err, len);
        if (l->fds[l->nfds] < 0) return WEIR_ERROR;
    }
    l->fd = l->fds[0];
    return WEIR_OK;
}

/* Open every listener; on failure log it, say it on stderr and return WEIR_ERROR. */
static int
weir_open_listeners(weir_conf_t *conf)
{
    char err[256], name[128];

    for (size_t i = 0; i < conf->nlisten; i++) {
        weir_listen_t *l = &conf->listen[i];
        if (weir_listen_open_all(l, conf->workers, err, sizeof(err)) != WEIR_OK) {
            char a[128], e[512];
            weir_log(WEIR_LOG_ERROR, "cannot listen", "\"address\":\"%s\",\"port\":%u,\"error\":\"%s\"",
                     weir_log_str(a, sizeof(a), l->address), l->port, weir_log_str(e, sizeof(e), err));
            if (weir_log_file() != NULL)
                fprintf(stderr, "weir: cannot listen on %s: %s\n", weir_conf_listen_name(l, name, sizeof(name)), err);
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
        if (weir_log_file() != NULL) fprintf(stderr, "weir: cannot write the pid file %s: %s\n", file, strerror(err));
        return WEIR_ERROR;
    }
    fprintf(f, "%d\n", (int) getpid());
    fclose(f);
    return WEIR_OK;
}

/* ---- the admin API's commands ------------------------------------------ */

/* The first words that make weir a client of a running weir's admin API
 * (lua/weir/cli.lua does the rest). */
static const char *const weir_cli_commands[] = {
    "status", "connections", "kick", "push", "reload", "app", "subscribe", "unsubscribe",
    "subscriptions", "token", "revoke", NULL,
};

/*
 * Whether ARGV names an admin command: its first word that is neither an
 * option nor an option's value (-c FILE, -s SIGNAL) is one of
 * weir_cli_commands. Returns 1 if so.
 */
static int
weir_cli_wanted(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (strcmp(a, "--") == 0) return 0;
        if (a[0] == '-' && a[1] != '\0') {
            if (a[1] != '-') {                  /* -tc FILE, -cFILE */
                for (const char *p = a + 1; *p != '\0'; p++) {
                    if (*p == 'c' || *p == 's') {
                        if (p[1] == '\0') i++;
                        break;
                    }
                }
            }
            continue;
        }
        for (int k = 0; weir_cli_commands[k] != NULL; k++) {
            if (strcmp(a, weir_cli_commands[k]) == 0) return 1;
        }
        return 0;
    }
    return 0;
}

/* Message handler for lua_pcall: the error with a traceback. */
static int
weir_cli_traceback(lua_State *L)
{
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

/*
 * Run require("weir.cli").main(args, env) in a fresh LuaJIT state: ARGS is
 * argv without the program name; ENV tells the Lua side the default
 * configuration and the version. Returns the exit code main returned
 * (WEIR_EXIT_FAILURE when it failed to run).
 */
static int
weir_cli_run(int argc, char **argv)
{
    char        why[PATH_MAX * 3];
    const char *dir = weir_conf_lua_dir(why, sizeof(why));
    lua_State  *L;
    int         rc = WEIR_EXIT_FAILURE, handler;

    if (dir == NULL) {
        fprintf(stderr, "weir: %s\n", why);
        return WEIR_EXIT_FAILURE;
    }
    signal(SIGPIPE, SIG_IGN);       /* a peer that hangs up is an error returned, not a death */
    L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, "weir: out of memory\n");
        return WEIR_EXIT_FAILURE;
    }
    luaL_openlibs(L);
    lua_getglobal(L, "package");                /* weir's own Lua tree first, as conf.c does */
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua", dir, dir);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);

    lua_pushcfunction(L, weir_cli_traceback);
    handler = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "weir.cli");
    if (lua_pcall(L, 1, 1, handler) != 0) {
        fprintf(stderr, "weir: cannot load weir.cli from %s: %s\n", dir, lua_tostring(L, -1));
        goto done;
    }
    lua_getfield(L, -1, "main");
    lua_createtable(L, argc, 0);
    for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, WEIR_CONF_DEFAULT);
    lua_setfield(L, -2, "conf_default");
    lua_pushliteral(L, WEIR_VERSION);
    lua_setfield(L, -2, "version");
    if (lua_pcall(L, 2, 1, handler) != 0) {
        fprintf(stderr, "weir: internal error in weir.cli: %s\n", lua_tostring(L, -1));
        goto done;
    }
    rc = lua_isnumber(L, -1) ? (int) lua_tointeger(L, -1) : WEIR_EXIT_FAILURE;

done:
    fflush(stdout);
    lua_close(L);
    return rc;
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

    if (weir_cli_wanted(argc, argv)) return weir_cli_run(argc, argv);
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
    weir_master_log_warnings(conf);
    int started = weir_open_listeners(conf) == WEIR_OK;
    uint64_t share = (conf->limits.max_connections + (uint64_t) conf->workers - 1) / (uint64_t) conf->workers;
    if (started && (weir_shm_init() != WEIR_OK || weir_limits_init(0, 0, conf->workers) != WEIR_OK
                    || weir_registry_init(conf->workers, (uint32_t) WEIR_MIN(share + 1, (uint64_t) UINT32_MAX))
                       != WEIR_OK
                    || weir_stats_init(conf->workers, (uint32_t) conf->metrics.max_series,
                                       (uint32_t) conf->metrics.max_applications,
                                       (uint32_t) conf->metrics.max_usage_keys) != WEIR_OK)) {
        if (weir_log_file() != NULL) fprintf(stderr, "weir: cannot map shared memory (the log says why)\n");
        started = 0;
    }
    if (!started || (conf->pid_file && weir_write_pid(conf->pid_file) != WEIR_OK)) {
        sd_notifyf(0, "STATUS=failed to start (see the log)\nERRNO=%d", EINVAL);
        weir_conf_free(conf);
        return WEIR_EXIT_FAILURE;
    }
    int rc = weir_master_run(&conf);
    weir_conf_free(conf);
    return rc;
}
