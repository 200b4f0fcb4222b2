/*
 * log.h — JSON-lines logging to stderr or a file.
 *
 * One line per event: {"ts":"…","level":"info","pid":N,"msg":"…", …fields}.
 * Fields are given as a printf-like format of JSON members so that the hot
 * path builds nothing when the level is filtered out.
 */
#ifndef WEIR_LOG_H
#define WEIR_LOG_H

#include <stddef.h>

typedef enum {
    WEIR_LOG_DEBUG = 0,
    WEIR_LOG_INFO  = 1,
    WEIR_LOG_WARN  = 2,
    WEIR_LOG_ERROR = 3,
} weir_log_level_e;

extern int weir_log_level;

/*
 * Log to FILE, appending (NULL: stderr), from now on, at LEVEL and above.
 * Returns WEIR_OK, or WEIR_ERROR with errno set when FILE cannot be opened:
 * then the level is set but records keep going where they went before.
 * Prints nothing: the caller says what failed.
 */
int  weir_log_open(const char *file, int level);

/*
 * Open the log file again by its name (after logrotate moved it away), so
 * that records go to a file of that name again. Nothing to do when logging
 * to stderr. Returns WEIR_OK, or WEIR_ERROR with errno set (the old file
 * stays in use).
 */
int  weir_log_reopen(void);

/* The log file's name, or NULL when logging to stderr. */
const char *weir_log_file(void);

/*
 * Log MSG at LEVEL. FIELDS_FMT, when not NULL, is a printf format producing
 * JSON members without braces or leading comma, e.g. "\"conn\":%llu".
 * Use weir_log_str() to escape strings into those members.
 */
void weir_log(int level, const char *msg, const char *fields_fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Escape S as a JSON string body (no quotes) into BUF; returns BUF. */
char *weir_log_str(char *buf, size_t len, const char *s);

/* S as a whole JSON value into BUF: quoted and escaped, or null when S is
 * NULL (for members written with %s, no quotes around). Returns BUF. */
char *weir_log_opt(char *buf, size_t len, const char *s);

#define weir_log_enabled(level) ((level) >= weir_log_level)

#endif
