#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include "accesslog.h"
#include "common.h"
#include "log.h"
#include "logw.h"
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

/* ---- outputs and JSON lines ---- */

/* The configured output. `out_lock` guards the two (a reload swaps them while any thread
 * logs); a line takes a reference to the sink under it and writes without it. */
static uv_once_t out_once = UV_ONCE_INIT;
static uv_mutex_t out_lock;
static lp_logsink_t *out_sink; /* reference; NULL: stderr, written directly */
static int out_json;           /* lines are JSON objects */

/* The request the running code is about (a Lua phase): its fields go in JSON lines. */
static _Thread_local const void *cur_req;
static _Thread_local lp_log_req_fn cur_req_fn;

static void out_init(void)
{
    uv_mutex_init(&out_lock);
}

void lp_log_swap_request(const void **req, lp_log_req_fn *fn)
{
    const void *r = cur_req;
    lp_log_req_fn f = cur_req_fn;
    cur_req = *req;
    cur_req_fn = *fn;
    *req = r;
    *fn = f;
}

int lp_log_configure(const void *output, int json, char *err, size_t errlen)
{
    const lp_log_output_t *o = output;
    uv_once(&out_once, out_init);
    lp_logsink_t *sink = NULL;
    if (o->kind != LP_LOGOUT_STDERR || json) {
        char serr[300] = "";
        if (!(sink = lp_logsink_open(o, "error", serr, sizeof(serr)))) {
            snprintf(err, errlen, "error log %s", serr);
            return LP_EIO;
        }
    }
    uv_mutex_lock(&out_lock);
    lp_logsink_t *old = out_sink;
    out_sink = sink;
    out_json = json;
    uv_mutex_unlock(&out_lock);
    lp_logsink_unref(old);
    return 0;
}

void lp_log_reset(void)
{
    uv_once(&out_once, out_init);
    uv_mutex_lock(&out_lock);
    lp_logsink_t *old = out_sink;
    out_sink = NULL;
    out_json = 0;
    uv_mutex_unlock(&out_lock);
    lp_logsink_unref(old);
}

size_t lp__log_json_line(char *out, size_t cap, const struct timespec *ts, lp_log_level_t level,
                         long pid, int worker, const char *msg, size_t mlen,
                         const char *req_members, size_t rlen)
{
    /* The worst case of every part must fit: the caller's buffer is sized for it. */
    if (cap < 160 + mlen * 6 + rlen)
        mlen = cap > 160 + rlen ? (cap - 160 - rlen) / 6 : 0;
    struct tm tm;
    gmtime_r(&ts->tv_sec, &tm);
    size_t n = strftime(out, 32, "{\"time\":\"%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(out + n, 128,
                          ".%03ldZ\",\"level\":\"%s\",\"pid\":%ld,\"worker\":%d,\"message\":\"",
                          ts->tv_nsec / 1000000, level_names[level], pid, worker < 0 ? 0 : worker);
    n += lp__accesslog_json_escape(out + n, msg, mlen);
    out[n++] = '"';
    memcpy(out + n, req_members, rlen);
    n += rlen;
    out[n++] = '}';
    out[n++] = '\n';
    return n;
}

/* The line (or syslog record) to its output: through the writer from a worker thread while
 * it runs, else at once. */
static void emit(lp_logsink_t *sink, lp_log_level_t level, const char *line, size_t n)
{
    int syslog = lp_logsink_is_syslog(sink);
    lp_logchunk_t *c = lp_logchunk_new(sink, n + (syslog ? LP_SYSLOG_HEADER_MAX + 1 : 0));
    if (!c) {
        lp_logw_count_dropped(1);
        return;
    }
    if (syslog) {
        /* error log levels to syslog severities: err, warning, notice, info, debug */
        static const int severity[] = {3, 4, 5, 6, 7};
        c->len = lp_logsink_syslog_header(sink, severity[level], c->data);
        if (n && line[n - 1] == '\n')
            n--; /* a datagram is the record */
        memcpy(c->data + c->len, line, n);
        c->len += n;
        c->data[c->len++] = 0;
    } else {
        memcpy(c->data, line, n);
        c->len = n;
    }
    c->nlines = 1;
    if (thread_id >= 0)
        lp_logw_submit(c); /* dropped and counted when the writer is behind */
    else
        lp_logw_write_now(c);
}

void lp_log(lp_log_level_t level, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    uv_once(&out_once, out_init);
    uv_mutex_lock(&out_lock);
    lp_logsink_t *sink = lp_logsink_ref(out_sink);
    int json = out_json;
    uv_mutex_unlock(&out_lock);
    if (json) {
        /* Per thread, not on the stack: a line about a request may be some 30 KiB. */
        static _Thread_local char msg[2048], big[2048 * 6 + 16384 + 256], members[16384];
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        size_t mlen = k < 0 ? 0 : (size_t)k >= sizeof(msg) ? sizeof(msg) - 1 : (size_t)k;
        size_t rlen = cur_req && cur_req_fn ? cur_req_fn(cur_req, members, sizeof(members)) : 0;
        size_t n = lp__log_json_line(big, sizeof(big), &ts, level, (long)getpid(), thread_id, msg,
                                     mlen, members, rlen);
        emit(sink, level, big, n);
        lp_logsink_unref(sink);
        return;
    }
    size_t n = 0;
    if (!sink || !lp_logsink_is_syslog(sink)) {
        /* The time, then the pid: during a binary upgrade (docs/reload.md) two processes
         * write to the same log. A syslog header carries both already. */
        gmtime_r(&ts.tv_sec, &tm);
        n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ %ld ", ts.tv_nsec / 1000000,
                              (long)getpid());
    }
    int k;
    if (thread_id >= 0)
        k = snprintf(line + n, sizeof(line) - n, "[%s] w%d: ", level_names[level], thread_id);
    else
        k = snprintf(line + n, sizeof(line) - n, "[%s] main: ", level_names[level]);
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
    if (sink) {
        emit(sink, level, line, n);
        lp_logsink_unref(sink);
        return;
    }
    /* One write per line keeps lines from different threads whole. */
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}
