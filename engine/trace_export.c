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
#include "accesslog.h"
#include "http1.h"
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
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *host, *path; /* owned copies of the config's */
    unsigned batch_size, max_queue;
    uint64_t interval, timeout;
    uint64_t clock_off; /* unix ns - uv_hrtime() ns, refreshed every tick */
    llhttp_settings_t settings;
};

static const char SUFFIX[] = "]}]}]}";

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
    if (status >= 200 && status < 300) {
        count(&x->w->trace_counts.exported, b->nspans);
        count(&x->w->trace_counts.batches, 1);
        x->queued -= b->nspans;
        set_queued(x);
        batch_free(b);
    } else {
        count(&x->w->trace_counts.failures, 1);
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

/* Sends the oldest full batch when nothing is in flight. */
static void kick(lp_trace_exp_t *x)
{
    if (x->inflight || !x->head || x->closed)
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

/* The JSON before the spans, for service name svc (owned; NULL when out of memory). */
static char *make_prefix(const char *svc, size_t *len)
{
    size_t sl = strlen(svc);
    char *esc = malloc(6 * sl + 1);
    if (!esc)
        return NULL;
    size_t el = lp__accesslog_json_escape(esc, svc, sl);
    size_t cap = el + 256;
    char *p = malloc(cap);
    int n = p ? snprintf(p, cap,
                         "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service."
                         "name\",\"value\":{\"stringValue\":\"%.*s\"}}]},\"scopeSpans\":[{"
                         "\"scope\":{\"name\":\"luaproxy\",\"version\":\"%s\"},\"spans\":[",
                         (int)el, esc, LP_VERSION)
              : -1;
    free(esc);
    if (n <= 0 || (size_t)n >= cap) {
        free(p);
        return NULL;
    }
    *len = (size_t)n;
    return p;
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
    char *prefix = on ? make_prefix(tc->service_name ? tc->service_name : "luaproxy", &plen) : NULL;
    /* The POST in flight writes from the old prefix: it goes before the prefix does. */
    if (x->inflight && (!prefix || plen != x->prefix_len || memcmp(prefix, x->prefix, plen)))
        post_failed(x, "the configuration changed");
    free(x->host);
    free(x->path);
    free(x->prefix);
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

/* ---- spans as OTLP JSON ---- */

static const char *const FAIL_NAMES[] = {"", "connect", "timeout", "reset", "status", "protocol"};

typedef struct {
    char *p;
} out_t;

static void lit(out_t *o, const char *s)
{
    size_t n = strlen(s);
    memcpy(o->p, s, n);
    o->p += n;
}

static void esc(out_t *o, const char *s, size_t n)
{
    o->p += lp__accesslog_json_escape(o->p, s, n);
}

static void u64s(out_t *o, uint64_t v)
{
    *o->p++ = '"';
    o->p += lp_u64_to_str(v, 10, o->p);
    *o->p++ = '"';
}

static void hexs(out_t *o, const uint8_t *id, size_t n)
{
    *o->p++ = '"';
    lp_trace_hex(o->p, id, n);
    o->p += 2 * n;
    *o->p++ = '"';
}

/* Attributes after the first get a leading comma. */
static void attr_str(out_t *o, int *first, const char *key, const char *v, size_t n)
{
    if (!*first)
        *o->p++ = ',';
    *first = 0;
    lit(o, "{\"key\":\"");
    lit(o, key);
    lit(o, "\",\"value\":{\"stringValue\":\"");
    esc(o, v, n);
    lit(o, "\"}}");
}

static void attr_int(out_t *o, int *first, const char *key, uint64_t v)
{
    if (!*first)
        *o->p++ = ',';
    *first = 0;
    lit(o, "{\"key\":\"");
    lit(o, key);
    lit(o, "\",\"value\":{\"intValue\":");
    u64s(o, v);
    lit(o, "}}");
}

/* The common head of a span object, up to the attributes' '['. */
static void span_head(out_t *o, const lp_trace_t *t, const uint8_t *span, const uint8_t *parent,
                      const char *name, int kind, uint64_t start, uint64_t end)
{
    lit(o, "{\"traceId\":");
    hexs(o, t->trace_id, 16);
    lit(o, ",\"spanId\":");
    hexs(o, span, 8);
    if (parent) {
        lit(o, ",\"parentSpanId\":");
        hexs(o, parent, 8);
    }
    if (t->tracestate_len) {
        lit(o, ",\"traceState\":\"");
        esc(o, t->tracestate, t->tracestate_len);
        *o->p++ = '"';
    }
    lit(o, ",\"name\":\"");
    lit(o, name);
    lit(o, kind == 2 ? "\",\"kind\":2" : "\",\"kind\":3");
    lit(o, ",\"startTimeUnixNano\":");
    u64s(o, start);
    lit(o, ",\"endTimeUnixNano\":");
    u64s(o, end);
    lit(o, ",\"attributes\":[");
}

static void span_tail(out_t *o, int error, const char *message)
{
    lit(o, "],\"status\":{");
    if (error) {
        lit(o, "\"code\":2");
        if (message) {
            lit(o, ",\"message\":\"");
            lit(o, message);
            *o->p++ = '"';
        }
    }
    lit(o, "}}");
}

/* "host" of a Host value without its port ("[v6]" kept whole). */
static lp_str_t host_only(lp_str_t h)
{
    if (!h.base)
        return (lp_str_t){"", 0};
    size_t n = h.len;
    if (n && h.base[0] == '[') {
        const char *e = memchr(h.base, ']', n);
        n = e ? (size_t)(e - h.base) + 1 : n;
    } else {
        const char *colon = memchr(h.base, ':', n);
        if (colon)
            n = (size_t)(colon - h.base);
    }
    return (lp_str_t){h.base, n};
}

/* Splits "ip:port" / "[ip6]:port". */
static void split_addr(const char *a, lp_str_t *ip, unsigned *port)
{
    const char *colon = strrchr(a, ':');
    *port = colon ? (unsigned)atoi(colon + 1) : 0;
    size_t n = colon ? (size_t)(colon - a) : strlen(a);
    if (n >= 2 && a[0] == '[' && a[n - 1] == ']')
        *ip = (lp_str_t){a + 1, n - 2};
    else
        *ip = (lp_str_t){a, n};
}

static int reserve(batch_t *b, size_t need)
{
    if (b->cap - b->len >= need)
        return 0;
    size_t cap = b->cap ? b->cap : 16384;
    while (cap - b->len < need)
        cap *= 2;
    char *nb = realloc(b->buf, cap);
    if (!nb)
        return -1;
    b->buf = nb;
    b->cap = cap;
    return 0;
}

void lp_trace_export_request(lp_worker_t *w, const lp_req_t *req)
{
    lp_trace_exp_t *x = w->trace_exp;
    const lp_trace_t *t = &req->trace;
    if (!x || !x->on || x->closed)
        return;
    unsigned nspans = 1u + t->ntries;
    if (x->queued + nspans > x->max_queue) {
        count(&w->trace_counts.dropped, nspans); /* overload, or the collector lags */
        return;
    }
    if (!x->open && !(x->open = calloc(1, sizeof(batch_t)))) {
        count(&w->trace_counts.dropped, nspans);
        return;
    }
    batch_t *b = x->open;
    const lp_h1_t *h = &req->h1;
    const char *q = h->path.base ? memchr(h->path.base, '?', h->path.len) : NULL;
    lp_str_t path = {h->path.base ? h->path.base : "",
                     q ? (size_t)(q - h->path.base) : (h->path.base ? h->path.len : 0)};
    lp_str_t host = host_only(h->host);
    const char *ip = req->client_ip[0] ? req->client_ip : "";
    const char *up = req->upstream ? req->upstream->conf->name : NULL;
    /* The worst case: every escaped byte six times over, plus the fixed text. */
    size_t need =
        1600 + 6 * (path.len + host.len + strlen(ip) + t->tracestate_len + (up ? strlen(up) : 0)) +
        t->ntries * (1100 + 6 * (sizeof(t->tries[0].addr) + t->tracestate_len));
    if (reserve(b, need)) {
        count(&w->trace_counts.dropped, nspans);
        return;
    }
    uint64_t now = uv_hrtime(), off = x->clock_off;
    const char *method = (req->flags & LP_RF_PARSED) ? llhttp_method_name(req->method) : "HTTP";
    out_t o = {b->buf + b->len};
    if (b->nspans)
        *o.p++ = ',';
    int status = req->resp.sent_status;
    static const uint8_t none[8] = {0};
    const uint8_t *parent = memcmp(t->parent_id, none, 8) ? t->parent_id : NULL;
    span_head(&o, t, t->span_id, parent, method, 2, req->t_start + off, now + off);
    int first = 1;
    attr_str(&o, &first, "http.request.method", method, strlen(method));
    attr_str(&o, &first, "url.path", path.base, path.len);
    int tls = (req->conn && req->conn->ep.tls) || (req->flags & LP_RF_TLS);
    attr_str(&o, &first, "url.scheme", tls ? "https" : "http", tls ? 5 : 4);
    if (host.len)
        attr_str(&o, &first, "server.address", host.base, host.len);
    if (ip[0]) {
        attr_str(&o, &first, "client.address", ip, strlen(ip));
        attr_str(&o, &first, "network.peer.address", ip, strlen(ip));
    }
    attr_str(&o, &first, "network.protocol.version", req->minor ? "1.1" : "1.0", 3);
    if (status > 0)
        attr_int(&o, &first, "http.response.status_code", (uint64_t)status);
    if (up)
        attr_str(&o, &first, "luaproxy.upstream", up, strlen(up));
    if (req->route_index >= 0)
        attr_int(&o, &first, "luaproxy.route", (uint64_t)req->route_index + 1);
    if (t->tries_lost)
        attr_int(&o, &first, "luaproxy.tries_without_span", t->tries_lost);
    span_tail(&o, status >= 500, NULL);
    for (unsigned i = 0; i < t->ntries; i++) {
        const lp_trace_try_t *tr = &t->tries[i];
        *o.p++ = ',';
        span_head(&o, t, tr->span_id, t->span_id, method, 3, tr->start + off,
                  (tr->end ? tr->end : now) + off);
        first = 1;
        lp_str_t tip;
        unsigned port;
        split_addr(tr->addr, &tip, &port);
        attr_str(&o, &first, "http.request.method", method, strlen(method));
        attr_str(&o, &first, "server.address", tip.base, tip.len);
        attr_int(&o, &first, "server.port", port);
        attr_str(&o, &first, "network.peer.address", tip.base, tip.len);
        attr_int(&o, &first, "network.peer.port", port);
        if (i)
            attr_int(&o, &first, "http.request.resend_count", i);
        if (tr->status)
            attr_int(&o, &first, "http.response.status_code", tr->status);
        const char *err = NULL;
        if (tr->failed)
            err = tr->fail_kind < LP_ARRAY_LEN(FAIL_NAMES) && tr->fail_kind
                      ? FAIL_NAMES[tr->fail_kind]
                      : "failed";
        if (err)
            attr_str(&o, &first, "error.type", err, strlen(err));
        span_tail(&o, tr->failed || tr->status >= 400, err);
    }
    b->len = (size_t)(o.p - b->buf);
    b->nspans += nspans;
    x->queued += nspans;
    set_queued(x);
    if (b->nspans >= x->batch_size) {
        seal(x);
        kick(x);
    }
}
