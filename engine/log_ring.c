/* See log_ring.h. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "log_ring.h"

typedef struct {
    double at;
    lp_log_level_t level;
    size_t len;
    char line[LP_LOG_RING_LINE];
} ring_line_t;

/* Shared by every thread that logs and the main thread that reads: guarded by `lock`. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static ring_line_t ring[LP_LOG_RING];
static uint64_t total; /* lines ever kept; the newest is ring[(total - 1) % LP_LOG_RING] */

void lp_log_ring_add(lp_log_level_t level, double at, const char *line, size_t len)
{
    if (level > LP_LOG_WARN)
        return;
    /* The time, pid and level are kept apart (the pid is this process's): the message starts
     * after "] " ("w0: ..."). */
    const char *m = memchr(line, ']', len);
    if (m && (size_t)(m - line) + 2 <= len) {
        len -= (size_t)(m + 2 - line);
        line = m + 2;
    }
    if (len > LP_LOG_RING_LINE)
        len = LP_LOG_RING_LINE;
    pthread_mutex_lock(&lock);
    ring_line_t *r = &ring[total % LP_LOG_RING];
    r->at = at;
    r->level = level;
    r->len = len;
    memcpy(r->line, line, len);
    total++;
    pthread_mutex_unlock(&lock);
}

/* A JSON string of the bytes; jansson takes UTF-8 only, so others become '?'. */
static json_t *bytes_json(const char *s, size_t len)
{
    json_t *j = json_stringn(s, len);
    if (j)
        return j;
    char tmp[LP_LOG_RING_LINE];
    for (size_t i = 0; i < len; i++)
        tmp[i] = (unsigned char)s[i] < 0x80 ? s[i] : '?';
    return json_stringn(tmp, len);
}

json_t *lp_log_ring_json(void)
{
    /* Copied out under the lock, encoded after it: a logging worker never waits for JSON. */
    static ring_line_t copy[LP_LOG_RING]; /* the main thread's (the admin API) */
    static pthread_mutex_t copy_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&copy_lock);
    pthread_mutex_lock(&lock);
    uint64_t n = total < LP_LOG_RING ? total : LP_LOG_RING, all = total;
    for (uint64_t i = 0; i < n; i++)
        copy[i] = ring[(all - 1 - i) % LP_LOG_RING];
    pthread_mutex_unlock(&lock);
    json_t *list = json_array();
    for (uint64_t i = 0; list && i < n; i++) {
        const ring_line_t *r = &copy[i];
        char when[40];
        time_t s = (time_t)r->at;
        struct tm tm;
        gmtime_r(&s, &tm);
        size_t k = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(when + k, sizeof(when) - k, ".%03dZ", (int)((r->at - (double)s) * 1000.0));
        json_t *o = json_pack("{s:s,s:s,s:o}", "time", when, "level",
                              r->level == LP_LOG_ERROR ? "error" : "warn", "message",
                              bytes_json(r->line, r->len));
        if (!o || json_array_append_new(list, o)) { /* the append took o, even failing */
            json_decref(list);
            list = NULL;
        }
    }
    pthread_mutex_unlock(&copy_lock);
    if (!list)
        return NULL;
    return json_pack("{s:I,s:o}", "total", (json_int_t)all, "errors", list);
}
