/* POST /explain: runs `/proc/self/exe explain -c CONFIG --json LINE [-H h]...` with its
 * output collected (bounded), a deadline, and the answer handed to the admin connection.
 * The main thread's loop; one child per request (the admin API's connection cap bounds
 * them). */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "admin_explain.h"
#include "common.h"

#define EXPLAIN_MAX_OUT  (1u << 20) /* bytes of report kept; more fails the request */
#define EXPLAIN_DEADLINE 10000      /* ms before the child is killed */
#define EXPLAIN_MAX_ARGS 72         /* argv entries: 64 headers and the fixed ones */

typedef struct {
    uv_process_t proc;
    uv_pipe_t out, err;
    uv_timer_t timer;
    lp_explain_cb cb;
    void *data;    /* the caller's */
    char *buf[2];  /* owned: stdout, stderr so far */
    size_t len[2]; /* their lengths */
    int too_long;  /* output past EXPLAIN_MAX_OUT: dropped, answered 500 */
    int timed_out; /* the deadline killed it */
    int exited;    /* exit_cb ran: exit_status is valid */
    int eof[2];    /* stdout, stderr reached their end (or failed) */
    int64_t exit_status;
    int open; /* handles not closed yet: freed at 0 */
} explain_t;

static void answer(void *data, lp_explain_cb cb, int status, const char *msg)
{
    json_t *j = json_pack("{s:s}", "error", msg);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    cb(data, status, s ? s : "{\"error\":\"out of memory\"}", s ? strlen(s) : 26);
    free(s);
    json_decref(j);
}

static void finish(explain_t *x)
{
    if (x->timed_out)
        answer(x->data, x->cb, 500, "explain did not finish within 10 s");
    else if (x->too_long)
        answer(x->data, x->cb, 500, "explain's report is larger than 1 MiB");
    else if (x->exited && x->exit_status == 0 && x->len[0])
        x->cb(x->data, 200, x->buf[0], x->len[0]);
    else {
        /* explain's own message (a bad URL, a config that does not load): stderr. */
        char msg[2048];
        size_t n = x->len[1] < sizeof(msg) - 1 ? x->len[1] : sizeof(msg) - 1;
        memcpy(msg, x->buf[1] ? x->buf[1] : "", n);
        msg[n] = 0;
        while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
            msg[--n] = 0;
        answer(x->data, x->cb, x->exit_status == 1 || x->exit_status == 2 ? 400 : 500,
               n ? msg : "explain failed");
    }
    free(x->buf[0]);
    free(x->buf[1]);
    free(x);
}

static void on_close(uv_handle_t *h)
{
    explain_t *x = h->data;
    if (--x->open == 0)
        finish(x);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    static char scratch[16384]; /* main thread only: copied out in on_read */
    LP_UNUSED(h);
    LP_UNUSED(hint);
    *buf = uv_buf_init(scratch, sizeof(scratch));
}

static void close_all(explain_t *x)
{
    uv_close((uv_handle_t *)&x->timer, on_close);
    uv_close((uv_handle_t *)&x->out, on_close);
    uv_close((uv_handle_t *)&x->err, on_close);
    uv_close((uv_handle_t *)&x->proc, on_close);
}

/* The exit and the ends of both pipes come in any order: all three, then the answer. */
static void maybe_done(explain_t *x)
{
    if (x->exited && x->eof[0] && x->eof[1])
        close_all(x);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    explain_t *x = st->data;
    int k = st == (uv_stream_t *)&x->out ? 0 : 1;
    if (nread < 0) {
        uv_read_stop(st);
        x->eof[k] = 1;
        maybe_done(x);
        return;
    }
    if (nread == 0 || x->too_long)
        return;
    size_t n = (size_t)nread;
    if (x->len[k] + n > EXPLAIN_MAX_OUT) {
        x->too_long = 1;
        uv_process_kill(&x->proc, SIGKILL);
        return;
    }
    char *p = realloc(x->buf[k], x->len[k] + n + 1);
    if (!p) {
        x->too_long = 1;
        return;
    }
    memcpy(p + x->len[k], buf->base, n);
    x->len[k] += n;
    p[x->len[k]] = 0;
    x->buf[k] = p;
}

static void on_exit_cb(uv_process_t *p, int64_t status, int signo)
{
    explain_t *x = p->data;
    x->exited = 1;
    x->exit_status = signo ? -1 : status;
    maybe_done(x);
}

static void on_deadline(uv_timer_t *t)
{
    explain_t *x = t->data;
    x->timed_out = 1;
    uv_process_kill(&x->proc, SIGKILL);
}

int lp_admin_explain(uv_loop_t *loop, const char *config_path, const char *body, size_t len,
                     lp_explain_cb cb, void *data)
{
    json_error_t je;
    json_t *doc = json_loadb(body, len, 0, &je);
    const char *line = json_string_value(json_object_get(doc, "request"));
    json_t *hs = json_object_get(doc, "headers");
    json_t *ip = json_object_get(doc, "client_ip");
    char msg[512];
    /* A request line starting with '-' would be read as an option of the child's command
     * line: it is no request line anyway. */
    if (!doc || !line || line[0] == '-' || (hs && !json_is_array(hs)) ||
        (ip && !json_is_string(ip)) || json_array_size(hs) > 64) {
        snprintf(msg, sizeof(msg), "%s",
                 !doc ? je.text
                      : "expected {\"request\": \"METHOD URL\", \"headers\": [\"Name: value\", "
                        "...] (at most 64), \"client_ip\": \"IP\"}");
        json_decref(doc);
        answer(data, cb, 400, msg);
        return 0;
    }
    char *args[EXPLAIN_MAX_ARGS + 1];
    int n = 0;
    args[n++] = "/proc/self/exe";
    args[n++] = "explain";
    args[n++] = "-c";
    args[n++] = (char *)config_path;
    args[n++] = "--json";
    if (ip) {
        args[n++] = "--client-ip";
        args[n++] = (char *)json_string_value(ip);
    }
    for (size_t i = 0; i < json_array_size(hs); i++) {
        const char *h = json_string_value(json_array_get(hs, i));
        if (!h) {
            json_decref(doc);
            answer(data, cb, 400, "headers: expected strings \"Name: value\"");
            return 0;
        }
        args[n++] = "-H";
        args[n++] = (char *)h;
    }
    args[n++] = (char *)line;
    args[n] = NULL;

    explain_t *x = calloc(1, sizeof(*x));
    if (!x) {
        json_decref(doc);
        return -1;
    }
    x->cb = cb;
    x->data = data;
    uv_pipe_init(loop, &x->out, 0);
    uv_pipe_init(loop, &x->err, 0);
    uv_timer_init(loop, &x->timer);
    x->out.data = x->err.data = x->timer.data = x->proc.data = x;
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_IGNORE},
        {.flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE),
         .data.stream = (uv_stream_t *)&x->out},
        {.flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE),
         .data.stream = (uv_stream_t *)&x->err},
    };
    uv_process_options_t o = {
        .file = args[0], .args = args, .exit_cb = on_exit_cb, .stdio_count = 3, .stdio = stdio};
    int rc = uv_spawn(loop, &x->proc, &o);
    json_decref(doc); /* args point into it: uv_spawn has copied them into the child */
    if (rc) {
        /* Nothing started: the handles close (the process handle too, as libuv asks), then
         * the caller hears why. */
        snprintf(msg, sizeof(msg), "cannot run luaproxy explain: %s", uv_strerror(rc));
        x->buf[1] = strdup(msg);
        x->len[1] = x->buf[1] ? strlen(msg) : 0;
        x->exited = 1;
        x->exit_status = 3;
        x->open = 4;
        close_all(x);
        return 0;
    }
    x->open = 4;
    uv_read_start((uv_stream_t *)&x->out, on_alloc, on_read);
    uv_read_start((uv_stream_t *)&x->err, on_alloc, on_read);
    uv_timer_start(&x->timer, on_deadline, EXPLAIN_DEADLINE, 0);
    return 0;
}
