#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "log.h"
#include "log_ring.h"

_Atomic lp_log_level_t lp_log_level = LP_LOG_INFO;
static _Thread_local int thread_id = -1;
static const char *const level_names[] = {"error", "warn", "notice", "info", "debug"};

void lp_log_set_thread_id(int id)
{
    thread_id = id;
}

int lp_log_level_parse(const char *name, lp_log_level_t *out)
{
    for (unsigned i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (lp_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

void lp_log(lp_log_level_t level, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    int k;
    if (thread_id >= 0)
        k = snprintf(line + n, sizeof(line) - n, ".%03ldZ [%s] w%d: ", ts.tv_nsec / 1000000,
                     level_names[level], thread_id);
    else
        k = snprintf(line + n, sizeof(line) - n, ".%03ldZ [%s] main: ", ts.tv_nsec / 1000000,
                     level_names[level]);
    n += (size_t)k;
    va_list ap;
    va_start(ap, fmt);
    k = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    if (k < 0)
        k = 0;
    n += (size_t)k;
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2;
    lp_log_ring_add(level, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9, line, n);
    line[n++] = '\n';
    /* One write per line keeps lines from different threads whole. */
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}
