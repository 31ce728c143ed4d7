/* Span export: OTLP/HTTP JSON to one collector, per worker, on the worker's own loop.
 *
 * Why this shape (cost per request): a recorded request's spans are written as JSON text
 * straight into the worker's open batch when the request ends (one pass over a few hundred
 * bytes, about a microsecond, after its response went out), and a batch is POSTed whole
 * by a small HTTP/1.1 client on the same loop over one keep-alive connection. Nothing is
 * shared between threads (only the counters, read with relaxed atomics), nothing is
 * copied twice, and no Lua runs: a Lua timer posting through proxy.http would cost a
 * span record, a Lua string per span and a coroutine per batch for the same bytes.
 *
 * Bounds: at most max_queue spans wait (more are dropped and counted), one POST is in
 * flight at a time, a POST that takes longer than timeout is cut, and a failed batch is
 * dropped, never retried: a dead or slow collector costs the proxy a bounded amount of
 * memory and a connect attempt per interval, never a delayed response. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "log.h"
#include "request.h"
#include "trace.h"

/* Spans of one POST: span objects joined by ','. */
typedef struct batch_s {
    struct batch_s *next; /* the exporter's queue */
    char *buf;            /* owned */
    size_t len, cap;
    unsigned nspans;
} batch_t;

typedef struct lp_trace_exp_s lp_trace_exp_t;

/* One connection to the collector; freed in its close callback, so a callback that comes
 * after the exporter let go of it finds x NULL. */
typedef struct {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    llhttp_t parser;
    lp_trace_exp_t *x; /* borrowed; NULL once detached (closing) */
    int connected;     /* the connect completed */
    int complete;      /* the response to the POST in flight was read whole */
    int writing;       /* wreq is queued: libuv still reads the batch's bytes (on_written) */
    char rbuf[2048];
} xconn_t;

struct lp_trace_exp_s {
    lp_worker_t *w;       /* borrowed: its worker */
    uv_timer_t tick;      /* every interval: the open batch goes, and the queue moves */
    uv_timer_t deadline;  /* the POST in flight's timeout */
    xconn_t *conn;        /* owned handle (freed on close); NULL: not connected */
    batch_t *open;        /* owned: the batch being filled, NULL: none */
    batch_t *head, *tail; /* owned: full batches waiting, oldest first */
    batch_t *inflight;    /* owned: the batch being POSTed, NULL: none */
    char head_buf[512];   /* the POST's request head */
    size_t head_len;
    char *prefix; /* owned: the JSON before the spans (resource, scope) */
    size_t prefix_len;
    unsigned queued; /* spans in open, head..tail and inflight */
    int on;          /* tracing.export is configured */
    int closed;      /* the worker stopped: nothing more is queued */
    int wait_tick;   /* a POST failed: the next one waits for the next tick */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *host, *path; /* owned copies of the config's */
    unsigned batch_size, max_queue;
    uint64_t interval, timeout;
    uint64_t clock_off; /* unix ns - uv_hrtime() ns, refreshed every tick */
    llhttp_settings_t settings;
};

static const char SUFFIX[] = LP_TRACE_OTLP_SUFFIX;

static void count(uint64_t *c, uint64_t n)
{
    __atomic_add_fetch(c, n, __ATOMIC_RELAXED);
}

static void set_queued(lp_trace_exp_t *x)
{
    __atomic_store_n(&x->w->trace_counts.queued, (uint64_t)x->queued, __ATOMIC_RELAXED);
}

static void batch_free(batch_t *b)
{
    if (b) {
        free(b->buf);
        free(b);
    }
}

/* The batch's spans are lost (collector failure, shutdown). */
static void drop_batch(lp_trace_exp_t *x, batch_t *b)
{
    if (!b)
        return;
    count(&x->w->trace_counts.dropped, b->nspans);
    x->queued -= b->nspans;
    set_queued(x);
    batch_free(b);
}

static void refresh_clock(lp_trace_exp_t *x)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t real = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    x->clock_off = real - uv_hrtime();
}

/* ---- the connection ---- */

static void on_conn_closed(uv_handle_t *h)
{
    free(h->data);
}

/* Lets go of the connection (closed; its callbacks find x NULL). */
static void conn_drop(lp_trace_exp_t *x)
{
    xconn_t *c = x->conn;
    if (!c)
        return;
    x->conn = NULL;
    c->x = NULL;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

/* The POST in flight failed: its batch is dropped and the connection closed. The next
 * batch waits for the next tick (no reconnect storm against a dead collector). */
static void post_failed(lp_trace_exp_t *x, const char *why)
{
    uv_timer_stop(&x->deadline);
    conn_drop(x);
    if (x->inflight) {
        x->wait_tick = 1;
        count(&x->w->trace_counts.failures, 1);
        lp_log_info("tracing: export to %s failed (%s): %u spans dropped", x->host, why,
                    x->inflight->nspans);
        drop_batch(x, x->inflight);
        x->inflight = NULL;
    }
}

static void kick(lp_trace_exp_t *x);

static void post_done(lp_trace_exp_t *x, int status, int keep)
{
    uv_timer_stop(&x->deadline);
    batch_t *b = x->inflight;
    x->inflight = NULL;
    /* A collector that answered before reading the whole POST: the write is still queued
     * with this batch's bytes. The connection closes first (libuv writes nothing more
     * after uv_close; the write's callback comes cancelled), so the batch can go, and
     * wreq is never queued twice. */
    if (x->conn && x->conn->writing) {
        keep = 0;
        conn_drop(x);
    }
    if (status >= 200 && status < 300) {
        count(&x->w->trace_counts.exported, b->nspans);
        count(&x->w->trace_counts.batches, 1);
        x->queued -= b->nspans;
        set_queued(x);
        batch_free(b);
    } else {
        count(&x->w->trace_counts.failures, 1);
        x->wait_tick = 1; /* a refusing collector: no faster than the interval */
        lp_log_info("tracing: the collector at %s answered %d: %u spans dropped", x->host, status,
                    b->nspans);
        drop_batch(x, b);
    }
    if (!keep)
        conn_drop(x);
    kick(x);
}

static int on_message_complete(llhttp_t *p)
{
    xconn_t *c = p->data;
    c->complete = 1;
    return HPE_PAUSED;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    xconn_t *c = h->data;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    xconn_t *c = s->data;
    lp_trace_exp_t *x = c->x;
    if (!x || nread == 0)
        return;
    if (nread < 0 || !x->inflight) {
        /* The collector closed (between POSTs: fine, reconnect for the next) or sent
         * something unasked. */
        if (x->inflight)
            post_failed(x, nread < 0 ? uv_strerror((int)nread) : "unexpected bytes");
        else
            conn_drop(x);
        return;
    }
    llhttp_errno_t e = llhttp_execute(&c->parser, buf->base, (size_t)nread);
    if (c->complete) {
        post_done(x, c->parser.status_code, llhttp_should_keep_alive(&c->parser));
        return;
    }
    if (e != HPE_OK)
        post_failed(x, "invalid response");
}

static void on_written(uv_write_t *wr, int status)
{
    xconn_t *c = wr->data;
    c->writing = 0;
    if (status < 0 && c->x && c->x->inflight)
        post_failed(c->x, uv_strerror(status));
}

static void send_inflight(lp_trace_exp_t *x)
{
    xconn_t *c = x->conn;
    batch_t *b = x->inflight;
    llhttp_init(&c->parser, HTTP_RESPONSE, &x->settings);
    c->parser.data = c;
    c->complete = 0;
    uv_buf_t bufs[4] = {uv_buf_init(x->head_buf, (unsigned)x->head_len),
                        uv_buf_init(x->prefix, (unsigned)x->prefix_len),
                        uv_buf_init(b->buf, (unsigned)b->len),
                        uv_buf_init((char *)SUFFIX, sizeof(SUFFIX) - 1)};
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, 4, on_written);
    if (rc)
        post_failed(x, uv_strerror(rc));
    else
        c->writing = 1;
}

static void on_connected(uv_connect_t *cr, int status)
{
    xconn_t *c = cr->data;
    lp_trace_exp_t *x = c->x;
    if (!x)
        return;
    if (status < 0) {
        post_failed(x, uv_strerror(status));
        return;
    }
    c->connected = 1;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (x->inflight)
        send_inflight(x);
}

static int conn_open(lp_trace_exp_t *x)
{
    xconn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return -1;
    uv_tcp_init(&x->w->loop, &c->tcp);
    c->tcp.data = c;
    c->x = x;
    x->conn = c;
    uv_tcp_nodelay(&c->tcp, 1);
    uv_unref((uv_handle_t *)&c->tcp);
    c->creq.data = c;
    int rc = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&x->addr, on_connected);
    if (rc) {
        conn_drop(x);
        return -1;
    }
    return 0;
}

static void on_deadline(uv_timer_t *t)
{
    post_failed(t->data, "timed out");
}

/* Sends the oldest full batch when nothing is in flight (and no failure asks to wait). */
static void kick(lp_trace_exp_t *x)
{
    if (x->inflight || !x->head || x->closed || x->wait_tick)
        return;
    batch_t *b = x->head;
    x->head = b->next;
    if (!x->head)
        x->tail = NULL;
    x->inflight = b;
    size_t body = x->prefix_len + b->len + sizeof(SUFFIX) - 1;
    int n = snprintf(x->head_buf, sizeof(x->head_buf),
                     "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     x->path, x->host, body);
    x->head_len = n > 0 && (size_t)n < sizeof(x->head_buf) ? (size_t)n : 0;
    uv_timer_start(&x->deadline, on_deadline, x->timeout, 0);
    if (!x->head_len) {
        post_failed(x, "collector path too long");
        return;
    }
    if (!x->conn) {
        if (conn_open(x))
            post_failed(x, "cannot connect");
        return; /* sent once connected */
    }
    if (x->conn->connected)
        send_inflight(x);
}

/* The open batch joins the queue. */
static void seal(lp_trace_exp_t *x)
{
    batch_t *b = x->open;
    if (!b || !b->nspans)
        return;
    x->open = NULL;
    b->next = NULL;
    if (x->tail)
        x->tail->next = b;
    else
        x->head = b;
    x->tail = b;
}

static void on_tick(uv_timer_t *t)
{
    lp_trace_exp_t *x = t->data;
    refresh_clock(x);
    seal(x);
    x->wait_tick = 0;
    kick(x);
}

/* ---- life ---- */

int lp_trace_export_init(lp_worker_t *w)
{
    lp_trace_exp_t *x = calloc(1, sizeof(*x));
    if (!x)
        return LP_ENOMEM;
    x->w = w;
    uv_timer_init(&w->loop, &x->tick);
    x->tick.data = x;
    uv_unref((uv_handle_t *)&x->tick);
    uv_timer_init(&w->loop, &x->deadline);
    x->deadline.data = x;
    uv_unref((uv_handle_t *)&x->deadline);
    llhttp_settings_init(&x->settings);
    x->settings.on_message_complete = on_message_complete;
    refresh_clock(x);
    w->trace_exp = x;
    return 0;
}

static void drop_all(lp_trace_exp_t *x)
{
    drop_batch(x, x->open);
    x->open = NULL;
    while (x->head) {
        batch_t *b = x->head;
        x->head = b->next;
        drop_batch(x, b);
    }
    x->tail = NULL;
    uv_timer_stop(&x->deadline);
    drop_batch(x, x->inflight);
    x->inflight = NULL;
    conn_drop(x);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

void lp_trace_export_config(lp_worker_t *w, const lp_config_t *cfg)
{
    lp_trace_exp_t *x = w->trace_exp;
    if (!x || x->closed)
        return;
    const lp_trace_conf_t *tc = &cfg->tracing;
    int on = tc->enabled && tc->export_on;
    int same = on && x->on && x->addrlen == tc->collector.addrlen &&
               memcmp(&x->addr, &tc->collector.addr, tc->collector.addrlen) == 0 &&
               strcmp(x->path, tc->collector_path) == 0 && strcmp(x->host, tc->collector_host) == 0;
    if (!same)
        drop_all(x); /* another collector, or none: what waited for the old one goes */
    size_t plen = 0;
    char *prefix =
        on ? lp_trace_otlp_prefix(tc->service_name ? tc->service_name : "luaproxy", &plen) : NULL;
    if (prefix && x->prefix && plen == x->prefix_len && !memcmp(prefix, x->prefix, plen)) {
        /* The same bytes: keep the old copy, which a POST in flight may still be writing. */
        free(prefix);
        prefix = x->prefix;
    } else {
        /* The POST in flight writes from the old prefix: it goes before the prefix does. */
        if (x->inflight)
            post_failed(x, "the configuration changed");
        free(x->prefix);
    }
    free(x->host);
    free(x->path);
    x->host = x->path = NULL;
    x->prefix = prefix;
    x->prefix_len = plen;
    x->on = 0;
    uv_timer_stop(&x->tick);
    if (!on)
        return;
    x->addr = tc->collector.addr;
    x->addrlen = tc->collector.addrlen;
    x->host = dup_or_null(tc->collector_host);
    x->path = dup_or_null(tc->collector_path);
    x->batch_size = tc->batch_size;
    x->max_queue = tc->max_queue;
    x->interval = tc->interval;
    x->timeout = tc->timeout;
    if (!x->host || !x->path || !x->prefix) {
        drop_all(x);
        lp_log_error("tracing: out of memory: span export off in this worker");
        return;
    }
    x->on = 1;
    uv_timer_start(&x->tick, on_tick, x->interval, x->interval);
}

void lp_trace_export_close(lp_worker_t *w)
{
    lp_trace_exp_t *x = w->trace_exp;
    if (!x || x->closed)
        return;
    drop_all(x);
    x->closed = 1;
    x->on = 0;
    uv_close((uv_handle_t *)&x->tick, NULL);
    uv_close((uv_handle_t *)&x->deadline, NULL);
}

void lp_trace_export_free(lp_worker_t *w)
{
    lp_trace_exp_t *x = w->trace_exp;
    if (!x)
        return;
    w->trace_exp = NULL;
    free(x->host);
    free(x->path);
    free(x->prefix);
    free(x);
}

void lp_trace_totals(const lp_worker_t *ws, unsigned n, lp_trace_counts_t *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i < n; i++) {
        const lp_trace_counts_t *c = &ws[i].trace_counts;
        out->exported += __atomic_load_n(&c->exported, __ATOMIC_RELAXED);
        out->dropped += __atomic_load_n(&c->dropped, __ATOMIC_RELAXED);
        out->queued += __atomic_load_n(&c->queued, __ATOMIC_RELAXED);
        out->batches += __atomic_load_n(&c->batches, __ATOMIC_RELAXED);
        out->failures += __atomic_load_n(&c->failures, __ATOMIC_RELAXED);
    }
}

static int reserve(batch_t *b, size_t need)
{
    return lp_grow((void **)&b->buf, &b->cap, b->len + need, 1, 16384);
}

void lp_trace_export_request(lp_worker_t *w, const lp_req_t *req)
{
    lp_trace_exp_t *x = w->trace_exp;
    if (!x || !x->on || x->closed)
        return;
    unsigned nspans = 1u + req->trace.ntries;
    if (x->queued + nspans > x->max_queue) {
        count(&w->trace_counts.dropped, nspans); /* overload, or the collector lags */
        return;
    }
    if (!x->open && !(x->open = calloc(1, sizeof(batch_t)))) {
        count(&w->trace_counts.dropped, nspans);
        return;
    }
    batch_t *b = x->open;
    if (reserve(b, 1 + lp_trace_otlp_bound(req))) {
        count(&w->trace_counts.dropped, nspans);
        return;
    }
    if (b->nspans)
        b->buf[b->len++] = ',';
    b->len += lp_trace_otlp_spans(b->buf + b->len, req, x->clock_off, uv_hrtime());
    b->nspans += nspans;
    x->queued += nspans;
    set_queued(x);
    if (b->nspans >= x->batch_size) {
        seal(x);
        kick(x);
    }
}
