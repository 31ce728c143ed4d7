/* A fixed ring of the last LP_RELOAD_HISTORY reloads (see reload_history.h). */
#include <stdio.h>
#include <time.h>
#include "reload_history.h"

typedef struct {
    double at; /* seconds since the epoch, when it ended */
    uint64_t generation;
    double took_ms;
    int ok; /* 1: the generation went live; 0: refused, the old one kept serving */
    char who[256];
    char err[1024];
} entry_t;

static entry_t ring[LP_RELOAD_HISTORY];
static uint64_t count; /* entries ever added; the newest is ring[(count - 1) % N] */

void lp_reload_history_add(const char *who, int ok, uint64_t generation, const char *err,
                           double took_ms)
{
    entry_t *e = &ring[count % LP_RELOAD_HISTORY];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    e->at = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    e->generation = generation;
    e->took_ms = took_ms;
    e->ok = ok;
    snprintf(e->who, sizeof(e->who), "%s", who ? who : "");
    snprintf(e->err, sizeof(e->err), "%s", err && !ok ? err : "");
    count++;
}

/* jansson takes UTF-8 only: an error text can hold any byte (a file name, a Lua message). */
static json_t *str_or_ascii(const char *s)
{
    json_t *j = json_string(s);
    if (j)
        return j;
    char tmp[1024];
    size_t i = 0;
    for (; s[i] && i < sizeof(tmp) - 1; i++)
        tmp[i] = (unsigned char)s[i] < 0x80 ? s[i] : '?';
    tmp[i] = 0;
    return json_string(tmp);
}

json_t *lp_reload_history_json(void)
{
    json_t *list = json_array();
    uint64_t n = count < LP_RELOAD_HISTORY ? count : LP_RELOAD_HISTORY;
    for (uint64_t i = 0; list && i < n; i++) {
        const entry_t *e = &ring[(count - 1 - i) % LP_RELOAD_HISTORY];
        char when[40];
        time_t s = (time_t)e->at;
        struct tm tm;
        gmtime_r(&s, &tm);
        size_t k = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(when + k, sizeof(when) - k, ".%03dZ", (int)((e->at - (double)s) * 1000.0));
        json_t *o = json_pack("{s:I,s:s,s:o,s:b,s:f}", "generation", (json_int_t)e->generation,
                              "time", when, "by", str_or_ascii(e->who), "ok", e->ok, "took_ms",
                              (double)(int64_t)(e->took_ms * 1000.0) / 1000.0);
        if (o && !e->ok)
            json_object_set_new(o, "error", str_or_ascii(e->err));
        if (!o || json_array_append_new(list, o)) {
            json_decref(list);
            return NULL;
        }
    }
    return list;
}
