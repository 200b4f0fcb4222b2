/*
 * log.c — JSON-lines logging. Owns the log stream (stderr or an append-mode
 * file shared by master and workers: each record is one write(2) of a whole
 * line, so lines from different processes never interleave). SIGUSR1
 * makes the master and every worker open the file again by its name
 * (weir_log_reopen), which is how logrotate hands over a new file.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "weir.h"

int weir_log_level = WEIR_LOG_INFO;
static int weir_log_fd = 2;
static char *weir_log_path;          /* NULL: stderr */

static const char *weir_log_names[] = { "debug", "info", "warn", "error" };

int
weir_log_open(const char *file, int level)
{
    weir_log_level = level;
    if (file == NULL) {
        if (weir_log_fd != 2) close(weir_log_fd);
        weir_log_fd = 2;
        free(weir_log_path);
        weir_log_path = NULL;
        return WEIR_OK;
    }
    char *path = strdup(file);          /* FILE may be weir_log_path itself */
    if (path == NULL) return WEIR_ERROR;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        free(path);
        errno = e;
        return WEIR_ERROR;
    }
    if (weir_log_fd != 2) close(weir_log_fd);
    weir_log_fd = fd;
    free(weir_log_path);
    weir_log_path = path;
    return WEIR_OK;
}

int
weir_log_reopen(void)
{
    if (weir_log_path == NULL) return WEIR_OK;
    return weir_log_open(weir_log_path, weir_log_level);
}

const char *
weir_log_file(void)
{
    return weir_log_path;
}

char *
weir_log_str(char *buf, size_t len, const char *s)
{
    size_t o = 0;
    if (len == 0) return buf;
    for (; s != NULL && *s != '\0' && o + 7 < len; s++) {
        unsigned char c = (unsigned char) *s;
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char) c;
        } else if (c < 0x20) {
            o += (size_t) snprintf(buf + o, len - o, "\\u%04x", c);
        } else {
            buf[o++] = (char) c;
        }
    }
    buf[o] = '\0';
    return buf;
}

char *
weir_log_opt(char *buf, size_t len, const char *s)
{
    if (len < 8) {
        if (len > 0) buf[0] = '\0';
        return buf;
    }
    if (s == NULL) {
        memcpy(buf, "null", 5);
        return buf;
    }
    buf[0] = '"';
    weir_log_str(buf + 1, len - 2, s);
    size_t n = strlen(buf);
    buf[n] = '"';
    buf[n + 1] = '\0';
    return buf;
}

void
weir_log(int level, const char *msg, const char *fields_fmt, ...)
{
    if (level < weir_log_level) return;

    char line[4096];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);

    char emsg[512];
    int n = snprintf(line, sizeof(line),
                     "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\",\"level\":\"%s\",\"pid\":%d,\"msg\":\"%s\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int) (tv.tv_usec / 1000), weir_log_names[level & 3],
                     (int) getpid(), weir_log_str(emsg, sizeof(emsg), msg));
    if (fields_fmt != NULL && n > 0 && (size_t) n < sizeof(line) - 2) {
        line[n++] = ',';
        va_list ap;
        va_start(ap, fields_fmt);
        int m = vsnprintf(line + n, sizeof(line) - (size_t) n, fields_fmt, ap);
        va_end(ap);
        if (m > 0) n = (size_t) (n + m) < sizeof(line) - 2 ? n + m : (int) sizeof(line) - 3;
        else n--;
    }
    if (n < 0) return;
    if ((size_t) n > sizeof(line) - 3) n = (int) sizeof(line) - 3;
    line[n++] = '}';
    line[n++] = '\n';
    ssize_t r = write(weir_log_fd, line, (size_t) n);
    WEIR_UNUSED(r);
}
