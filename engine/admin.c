/* The admin API: a small HTTP/1.1 server on the main loop (never on a public listener).
 * One request per connection; JSON in and out through jansson (never by hand). Also
 * `luaproxy -s` and the pid file.
 *
 * Bounds (a local client must not be able to wear the main loop down): at most
 * ADMIN_MAX_CONNS connections (more get 503 at once), ADMIN_TIMEOUT for the whole request to
 * arrive (408) and again for the answer to leave, request heads of ADMIN_MAX_HEAD (431;
 * 414 for the target) and bodies of ADMIN_MAX_BODY (413). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lualib.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include "h2_stats.h"
#include "health.h"
#include "http1.h"
#include "log.h"
#include "logw.h"
#include "log_ring.h"
#include "lua_vm.h"
#include "metrics_scrape.h"
#include "reload_history.h"
#include "server.h"
#include "trace.h"
#include "upgrade.h"
#include "worker.h"
#include "shdict.h"
#include "cache_admin.h"
#include "etcd.h"
#include "route.h"
#include "rtable.h"
#include "admin_explain.h"

#define ADMIN_MAX_HEAD  8192  /* header section; the request line has ADMIN_MAX_URI */
#define ADMIN_MAX_URI   2048  /* request target */
#define ADMIN_MAX_BODY  8192  /* request body (JSON) */
#define ADMIN_MAX_CONNS 64    /* connections at once, lingering ones included */
#define ADMIN_TIMEOUT   10000 /* ms for the request to arrive, then for the answer to leave */
#define ADMIN_LINGER    2000  /* ms to drain what the client still sends after the answer */

struct lp_admin_s {
    uv_tcp_t tcp;
    lp_server_t *server;
    char *addr;             /* owned: the address it listens on, as configured */
    char bound[64];         /* the same with port 0 resolved */
    unsigned refs;          /* the listener and every connection: freed at 0 */
    unsigned nconns;        /* connections counted against ADMIN_MAX_CONNS */
    uint64_t refused;       /* connections refused by the cap since the last log line */
    uint64_t refuse_log_at; /* uv_now() of that line */
};

/* What a connection reads into; not allocated for connections refused by the cap. */
typedef struct {
    lp_h1_t h1;
    char in[4096]; /* one read; the parser copies what it keeps */
    char arena[ADMIN_MAX_HEAD + ADMIN_MAX_URI];
    lp_header_t headers[64];
    char body[ADMIN_MAX_BODY];
    size_t body_len;
    int body_too_large; /* the body callback refused more bytes */
} admin_req_t;

typedef struct {
    uv_tcp_t tcp;
    uv_timer_t timer; /* ADMIN_TIMEOUT, then ADMIN_LINGER */
    uv_write_t wreq;
    uv_shutdown_t sreq;
    lp_admin_t *admin;  /* reference */
    admin_req_t *r;     /* owned; NULL for a refused connection */
    char *out;          /* owned: the answer being written */
    int handles;        /* open handles (tcp, timer) and a reload's answer due: freed at 0 */
    uint64_t reload_t0; /* uv_hrtime() when its POST /reload began */
    int answered;       /* an answer is queued: nothing more is parsed */
    int closing;        /* conn_close() ran: the handles are closing */
    json_t *warnings;   /* owned: a POST /routes batch's warnings while etcd answers it;
                           NULL: none */
} admin_conn_t;

static char discard[4096]; /* lingering reads land here (main thread only) */

static void admin_unref(lp_admin_t *a)
{
    if (--a->refs)
        return;
    free(a->addr);
    free(a);
}

/* ---- JSON ---- */

/* A JSON string of s. jansson takes UTF-8 only: bytes that are not (a path or a Lua error
 * can hold anything) become '?' rather than losing the message. */
static json_t *jstr(const char *s)
{
    json_t *j = json_string(s ? s : "");
    if (j || !s)
        return j;
    char *copy = strdup(s);
    if (!copy)
        return NULL;
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

static json_t *jint(uint64_t v)
{
    return json_integer((json_int_t)v);
}

/* ---- connections ---- */

/* Drops one of c->handles; the last frees it. */
static void conn_release(admin_conn_t *c)
{
    if (--c->handles)
        return;
    if (c->r)
        c->admin->nconns--;
    admin_unref(c->admin);
    json_decref(c->warnings);
    free(c->r);
    free(c->out);
    free(c);
}

static void on_conn_handle_close(uv_handle_t *h)
{
    conn_release(h->data);
}

static void conn_close(admin_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_close);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_close);
}

static void on_conn_timer(uv_timer_t *t);

static void conn_timer(admin_conn_t *c, uint64_t ms)
{
    /* Parts of a reload (load, build) run synchronously on this loop: the time may be old. */
    uv_update_time(c->tcp.loop);
    uv_timer_start(&c->timer, on_conn_timer, ms, 0);
}

static void on_discard_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    *buf = uv_buf_init(discard, sizeof(discard));
}

static void on_linger_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    if (nread < 0)
        conn_close(st->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    admin_conn_t *c = req->data;
    if (status < 0 && !c->closing)
        conn_close(c);
}

static void on_written(uv_write_t *wr, int status)
{
    admin_conn_t *c = wr->data;
    free(c->out);
    c->out = NULL;
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    /* Lingering close: the client sees the answer and an EOF, not a reset over bytes it
     * is still sending (a body we refused, a pipelined request). */
    c->sreq.data = c;
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) ||
        uv_read_start((uv_stream_t *)&c->tcp, on_discard_alloc, on_linger_read)) {
        conn_close(c);
        return;
    }
    conn_timer(c, ADMIN_LINGER);
}

/* Queues the answer: status, a Content-Type, extra header lines (each ending in CRLF, or
 * ""), and len bytes of body. */
static void respond_full(admin_conn_t *c, int status, const char *ctype, const char *extra,
                         const char *body, size_t len)
{
    if (c->answered || c->closing)
        return;
    int head = c->r && lp_h1_method(&c->r->h1) == HTTP_HEAD;
    c->answered = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
    size_t cap = len + strlen(extra) + 256;
    c->out = malloc(cap);
    if (!c->out) {
        conn_close(c);
        return;
    }
    int n = snprintf(c->out, cap,
                     "HTTP/1.1 %d %s\r\nServer: luaproxy\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\nCache-Control: no-store\r\n"
                     "X-Content-Type-Options: nosniff\r\n%sConnection: close\r\n\r\n",
                     status, lp_h1_status_text(status), ctype, len, extra);
    if (n < 0 || (size_t)n + len > cap) {
        conn_close(c);
        return;
    }
    if (!head) {
        memcpy(c->out + n, body, len);
        n += (int)len;
    }
    uv_buf_t buf = uv_buf_init(c->out, (unsigned)n);
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &buf, 1, on_written)) {
        conn_close(c);
        return;
    }
    conn_timer(c, ADMIN_TIMEOUT);
}

/* A JSON answer: the text and a newline. */
static void respond_json_extra(admin_conn_t *c, int status, const char *extra, const char *json)
{
    size_t len = strlen(json);
    char *body = malloc(len + 1);
    if (!body) {
        conn_close(c);
        return;
    }
    memcpy(body, json, len);
    body[len] = '\n';
    respond_full(c, status, "application/json", extra, body, len + 1);
    free(body);
}

static void respond_text(admin_conn_t *c, int status, const char *json)
{
    respond_json_extra(c, status, "", json);
}

/* Answers with body (len bytes) of content type ctype, as it is. */
static void respond_raw(admin_conn_t *c, int status, const char *ctype, const char *body,
                        size_t len)
{
    respond_full(c, status, ctype, "", body, len);
}

/* Answers with the encoding of j (a reference taken over: NULL means it could not be
 * built, which answers 500). */
static void respond(admin_conn_t *c, int status, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(j);
    if (!text) {
        lp_log_error("admin: cannot encode an answer as JSON (out of memory?)");
        respond_text(c, 500, "{\"ok\":false,\"error\":\"the answer could not be encoded\"}");
        return;
    }
    respond_text(c, status, text);
    free(text);
}

static void respond_error(admin_conn_t *c, int status, const char *msg)
{
    respond(c, status, json_pack("{s:b,s:o}", "ok", 0, "error", jstr(msg)));
}

static void on_conn_timer(uv_timer_t *t)
{
    admin_conn_t *c = t->data;
    if (c->answered)
        conn_close(c); /* the answer did not leave in time, or the linger is over */
    else
        respond_error(c, 408, "the request did not arrive in time");
}

/* ---- endpoints ---- */

static void iso_time(double t, char *out, size_t n)
{
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* "shared": each dict of the current config: its capacity, bytes used, keys, evictions. */
static json_t *shared_status(const lp_config_t *cfg)
{
    json_t *o = json_object();
    for (size_t i = 0; o && i < cfg->nshdicts; i++) {
        lp_shdict_stats_t st;
        lp_shdict_stats(cfg->shdicts[i], &st);
        json_object_set_new(o, lp_shdict_name(cfg->shdicts[i]),
                            json_pack("{s:o,s:o,s:o,s:o}", "capacity", jint(st.capacity), "used",
                                      jint(st.used), "entries", jint(st.entries), "evictions",
                                      jint(st.evictions)));
    }
    return o ? o : json_object();
}

/* GET /status `tracing`: span export counters summed over workers (trace.h). */
static json_t *tracing_status(const lp_server_t *s, const lp_config_t *cfg)
{
    lp_trace_counts_t t;
    lp_trace_totals(s->workers, s->nworkers, &t);
    return json_pack("{s:b,s:b,s:o,s:o,s:o,s:o,s:o}", "enabled", cfg->tracing.enabled, "export",
                     cfg->tracing.enabled && cfg->tracing.export_on, "exported", jint(t.exported),
                     "dropped", jint(t.dropped), "queued", jint(t.queued), "batches",
                     jint(t.batches), "failures", jint(t.failures));
}

static void handle_status(admin_conn_t *c)
{
    lp_server_t *s = c->admin->server;
    uint64_t conns, reqs;
    lp_workers_stats(s->workers, s->nworkers, &conns, &reqs);
    char loaded[32], started[32];
    iso_time(lp_gen_current->loaded_at, loaded, sizeof(loaded));
    iso_time(s->started_at, started, sizeof(started));
    double uptime = (double)time(NULL) - s->started_at;
    json_t *listen = json_array();
    for (size_t i = 0; listen && i < lp_gen_current->config->nlisten; i++)
        json_array_append_new(listen, jstr(lp_gen_current->bound[i].text));
    uint64_t lua[3];
    lp_workers_lua_stats(s->workers, s->nworkers, lua);
    json_t *st =
        json_pack("{s:b,s:s,s:i,s:s,s:I,s:o,s:s,s:i,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "ok", 1,
                  "version", LP_VERSION, "pid", (int)getpid(), "started_at", started, "uptime",
                  (json_int_t)(uptime > 0 ? uptime + 0.5 : 0), "generation",
                  jint(lp_gen_current->id), "loaded_at", loaded, "workers", (int)s->nworkers,
                  "connections", jint(conns), "requests", jint(reqs), "reloads", jint(s->reloads),
                  "reloads_failed", jint(s->reloads_failed), "config", jstr(s->config_path),
                  "listen", listen ? listen : json_array(), "admin", jstr(c->admin->bound));
    if (st) {
        json_object_set_new(st, "lua",
                            json_pack("{s:o,s:o,s:o}", "timers_pending", jint(lua[0]),
                                      "timers_running", jint(lua[1]), "timers_refused",
                                      jint(lua[2])));
        json_object_set_new(st, "shared", shared_status(lp_gen_current->config));
        json_object_set_new(st, "cache", lp_cache_admin_status(lp_gen_current->config));
        /* Log lines dropped (the writer fell behind its output, or an output failed),
         * summed over workers and both logs; metrics: luaproxy_log_lines_dropped_total. */
        json_object_set_new(st, "log",
                            json_pack("{s:o}", "lines_dropped", jint(lp_logw_lines_dropped())));
        json_object_set_new(st, "tracing", tracing_status(s, lp_gen_current->config));
        json_object_set_new(st, "http2", lp_h2_status(s)); /* #17: h2_stats.c */
        json_t *etcd = lp_etcd_status(s);
        if (etcd)
            json_object_set_new(st, "etcd", etcd);
    }
    respond(c, 200, st);
}

/* GET /ready, for an L4 balancer's health check: 200 while serving, 503 while draining or
 * while a config from etcd has not come yet (docs/fleet.md). */
static void handle_ready(admin_conn_t *c)
{
    const lp_server_t *s = c->admin->server;
    const char *why = s->stopping              ? "draining"
                      : !lp_etcd_has_config(s) ? "waiting for the first config from etcd"
                                               : NULL;
    if (why)
        respond(c, 503, json_pack("{s:b,s:s}", "ready", 0, "reason", why));
    else
        respond(c, 200,
                json_pack("{s:b,s:I}", "ready", 1, "generation", (json_int_t)lp_gen_current->id));
}

/* GET /metrics: Prometheus text 0.0.4, or OpenMetrics 1.0 when Accept asks for it
 * (docs/metrics.md). */
static const lp_rtable_t *routes_current(void);

static void handle_metrics(admin_conn_t *c)
{
    const lp_header_t *acc = lp_h1_find(&c->r->h1, "accept", 6);
    int om = acc && lp_metrics_wants_om(acc->value.base, acc->value.len);
    size_t len = 0;
    char *text = lp_metrics_scrape(c->admin->server, routes_current(), om, &len);
    if (!text) {
        respond_error(c, 500, "out of memory");
        return;
    }
    respond_raw(c, 200, om ? LP_M_CT_OM : LP_M_CT_PROM, text, len);
    free(text);
}

static void on_reloaded(void *data, int rc, const char *err, uint64_t generation)
{
    admin_conn_t *c = data;
    if (rc) {
        respond(c, 500,
                json_pack("{s:b,s:o,s:o}", "ok", 0, "generation", jint(generation), "error",
                          jstr(err)));
    } else {
        /* Milliseconds to the microsecond: 5.312, not 5.3119999999999994. */
        double ms = (double)((uv_hrtime() - c->reload_t0) / 1000) / 1000.0;
        respond(c, 200,
                json_pack("{s:b,s:o,s:f}", "ok", 1, "generation", jint(generation), "took_ms", ms));
    }
    conn_release(c); /* the hold handle_reload took (respond does nothing once closing) */
}

/* The answer comes when the reload is over: part of it runs on the threadpool while this
 * loop goes on (main.c). The connection stays allocated until then. */
static void handle_reload(admin_conn_t *c)
{
    c->reload_t0 = uv_hrtime();
    c->handles++;
    uv_read_stop((uv_stream_t *)&c->tcp);
    /* The reload history names the client: "admin 127.0.0.1:51234". */
    char who[96] = "admin", peer[64];
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen) == 0) {
        lp_sockaddr_text(&ss, peer, sizeof(peer));
        snprintf(who, sizeof(who), "admin %s", peer);
    }
    lp_server_reload_by(c->admin->server, who, on_reloaded, c);
}

/* GET /reloads: the last reloads, newest first (reload_history.h). */
static void handle_reloads(admin_conn_t *c)
{
    respond(c, 200,
            json_pack("{s:b,s:I,s:o}", "ok", 1, "generation", (json_int_t)lp_gen_current->id,
                      "reloads", lp_reload_history_json()));
}

/* GET /errors: the last error and warning lines of the error log, newest first. */
static void handle_errors(admin_conn_t *c)
{
    json_t *ring = lp_log_ring_json();
    json_t *j = ring ? json_pack("{s:b,s:O,s:O}", "ok", 1, "total", json_object_get(ring, "total"),
                                 "errors", json_object_get(ring, "errors"))
                     : NULL;
    json_decref(ring);
    respond(c, 200, j);
}

/* ---- the status page ----
 * Static files from the runtime directory's status/ (lua_vm.h: the source tree, the install
 * prefix or LUAPROXY_HOME), read at each request (small; an upgrade shows at once). Only
 * the names below are served: no path from the request reaches the file system. They hold
 * no data, so they are served without the token: the page asks for it and sends it on its
 * own requests (docs/admin-api.md, "Authentication"). */

static const struct {
    const char *path; /* as requested */
    const char *file; /* under status/ */
    const char *ctype;
} page_files[] = {
    {"/", "index.html", "text/html; charset=utf-8"},
    {"/ui/status.css", "status.css", "text/css; charset=utf-8"},
    {"/ui/status.js", "status.js", "text/javascript; charset=utf-8"},
};

#define PAGE_MAX (1 << 20) /* bytes: a page file larger than this is refused */

/* What the page may do: its own scripts and styles, requests to this origin, nothing else;
 * and no other site may frame it. */
#define PAGE_HEADERS                                                                               \
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "           \
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "              \
    "frame-ancestors 'none'\r\nReferrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n"

/* 1 when the path is one of the page's files (answered here), 0 otherwise. */
static int serve_page(admin_conn_t *c, lp_str_t path, int get)
{
    size_t i = 0;
    while (i < LP_ARRAY_LEN(page_files) &&
           !lp_str_ieq(path, page_files[i].path, strlen(page_files[i].path)))
        i++;
    if (i == LP_ARRAY_LEN(page_files))
        return 0;
    if (!get) {
        respond_error(c, 405, "use GET");
        return 1;
    }
    char file[4200];
    snprintf(file, sizeof(file), "%s/status/%s", lp_lua_engine_root(), page_files[i].file);
    FILE *f = fopen(file, "rb");
    char *body = f ? malloc(PAGE_MAX) : NULL;
    size_t n = body ? fread(body, 1, PAGE_MAX, f) : 0;
    int err = !f ? errno : 0;
    if (f)
        fclose(f);
    if (!body || n == PAGE_MAX) {
        free(body);
        char msg[4400];
        snprintf(msg, sizeof(msg), "the status page file %s cannot be read: %s", file,
                 !f              ? strerror(err)
                 : n == PAGE_MAX ? "too large"
                                 : "out of memory");
        lp_log_error("admin: %s", msg);
        respond_error(c, 500, msg);
        return 1;
    }
    respond_full(c, 200, page_files[i].ctype, PAGE_HEADERS, body, n);
    free(body);
    return 1;
}

/* ---- authentication ---- */

/* Constant time in the token's content and length: both sides are hashed first, so the
 * comparison always covers 32 bytes whatever was sent. */
static int token_matches(const char *want, const char *got, size_t got_len)
{
    unsigned char a[EVP_MAX_MD_SIZE], b[EVP_MAX_MD_SIZE];
    unsigned alen = 0, blen = 0;
    if (!EVP_Digest(want, strlen(want), a, &alen, EVP_sha256(), NULL) ||
        !EVP_Digest(got, got_len, b, &blen, EVP_sha256(), NULL) || alen != blen)
        return 0;
    return CRYPTO_memcmp(a, b, alen) == 0;
}

/* 1 when the request may go on: no token is configured, or it carries
 * `Authorization: Bearer <the token>`; else answers 401 and returns 0. */
static int authorized(admin_conn_t *c)
{
    const char *want = lp_gen_current->config->admin_token;
    if (!want)
        return 1;
    const lp_header_t *h = lp_h1_find(&c->r->h1, "authorization", 13);
    if (!h) {
        respond_json_extra(c, 401, "WWW-Authenticate: Bearer realm=\"luaproxy admin\"\r\n",
                           "{\"ok\":false,\"error\":\"this admin API needs a token: "
                           "Authorization: Bearer TOKEN\"}");
        return 0;
    }
    lp_str_t v = h->value;
    int ok = v.len > 7 && lp_str_ieq((lp_str_t){v.base, 7}, "bearer ", 7);
    if (ok) {
        size_t k = 7;
        while (k < v.len && v.base[k] == ' ')
            k++;
        ok = token_matches(want, v.base + k, v.len - k);
    }
    if (!ok) {
        respond_json_extra(c, 401,
                           "WWW-Authenticate: Bearer realm=\"luaproxy admin\", "
                           "error=\"invalid_token\"\r\n",
                           "{\"ok\":false,\"error\":\"the token is not valid\"}");
        return 0;
    }
    return 1;
}

/* A browser sends Origin with every cross-site POST: a page on another site must not be
 * able to make a visitor's browser reload or stop this proxy (the API answers no CORS
 * preflight, but a simple POST needs none). 1 when the request may go on, else 403. */
static int same_origin(admin_conn_t *c)
{
    const lp_header_t *o = lp_h1_find(&c->r->h1, "origin", 6);
    if (!o)
        return 1;
    const lp_header_t *host = lp_h1_find(&c->r->h1, "host", 4);
    lp_str_t v = o->value;
    if (host && v.len > 7 && lp_str_ieq((lp_str_t){v.base, 7}, "http://", 7) &&
        v.len - 7 == host->value.len &&
        lp_str_ieq((lp_str_t){v.base + 7, v.len - 7}, host->value.base, host->value.len))
        return 1;
    respond_error(c, 403, "a request from another origin (a web page elsewhere) is refused");
    return 0;
}

/* POST /stop: a graceful stop, as SIGTERM (for `luaproxy -s stop` without a pid file). The
 * answer is queued first; the main loop finishes it while the workers drain. */
static void handle_stop(admin_conn_t *c)
{
    lp_log_notice("admin: stop requested");
    respond(c, 200, json_pack("{s:b,s:b}", "ok", 1, "stopping", 1));
    lp_server_stop(c->admin->server, "POST /stop");
}

/* ---- routes changed without a reload (rtable.h, docs/admin-api.md) ---- */

/* The table POST /routes last built, for the generation it was built on: the next change
 * starts from it (main thread only). A reload starts again from the new config's table,
 * which has the overlay applied. */
static lp_rtable_t *routes_latest; /* reference; NULL: none yet */
static uint64_t routes_gen;        /* the id of routes_latest's generation (an id, not a
                                      pointer: a freed generation's address may come back) */

static const lp_rtable_t *routes_current(void)
{
    if (routes_latest && routes_gen == lp_gen_current->id)
        return routes_latest;
    return lp_gen_current->config->rtable;
}

static void handle_routes_get(admin_conn_t *c)
{
    const lp_rtable_t *t = routes_current();
    json_t *list = json_array();
    for (size_t i = 0; i < t->nroutes && list; i++)
        json_array_append_new(list, lp_rtable_route_json(t, lp_gen_current->config, i));
    respond(c, 200,
            json_pack("{s:i,s:i,s:o}", "routes", (json_int_t)t->nroutes, "admin_routes",
                      (json_int_t)t->nown, "table", list ? list : json_null()));
}

/* The answer of a change written to etcd (lp_etcd_routes_change). */
static void on_routes_etcd(void *data, int status, const char *msg, int64_t revision)
{
    admin_conn_t *c = data;
    if (status == 200) {
        json_t *ans = json_pack("{s:b,s:s,s:I}", "ok", 1, "persisted", "etcd", "etcd_revision",
                                (json_int_t)revision);
        if (ans && json_array_size(c->warnings))
            json_object_set(ans, "warnings", c->warnings);
        respond(c, 200, ans);
    } else
        respond(c, status, json_pack("{s:b,s:b,s:o}", "ok", 0, "persisted", 0, "error", jstr(msg)));
    conn_release(c); /* the hold handle_routes_post took (respond does nothing once closing) */
}

/* POST /routes {"ops": [...]}: one batch, applied atomically (rtable.h: lp_rtable_apply),
 * handed to every worker, then persisted to the overlay file. With the config from etcd the
 * batch, once checked here, goes to etcd instead (PREFIX config, compare-and-swap on its
 * mod_revision: etcd.c), and every instance, this one included, applies it from there. */
static void handle_routes_post(admin_conn_t *c)
{
    uint64_t t0 = uv_hrtime();
    json_error_t je;
    json_t *doc = json_loadb(c->r->body, c->r->body_len, 0, &je);
    json_t *ops = json_is_object(doc) ? json_object_get(doc, "ops") : doc;
    char err[512] = "out of memory";
    json_t *warnings = json_array();
    lp_rtable_t *t = ops && warnings ? lp_rtable_apply(routes_current(), lp_gen_current->config,
                                                       ops, warnings, err, sizeof(err))
                                     : NULL;
    if (!doc)
        snprintf(err, sizeof(err), "body: %s", je.text);
    if (!t) {
        json_decref(doc);
        json_decref(warnings);
        respond_error(c, 400, err);
        return;
    }
    lp_server_t *es = c->admin->server;
    if (lp_etcd_active(es)) {
        /* Routes the batch leaves unreachable, as -t and every load say them (route.c). */
        lp_route_shadows_json(lp_gen_current->config, t, warnings);
        lp_rtable_unref(t);
        json_decref(c->warnings);
        c->warnings = warnings; /* answered with etcd's answer */
        int rc = lp_etcd_routes_change(es, ops, on_routes_etcd, c);
        json_decref(doc);
        if (rc) {
            respond_error(c, 500, "out of memory");
            return;
        }
        c->handles++; /* the answer comes from the etcd thread's round trip */
        uv_read_stop((uv_stream_t *)&c->tcp);
        return;
    }
    if (lp_rtable_meter(t, lp_gen_current->config)) {
        lp_rtable_unref(t);
        json_decref(doc);
        json_decref(warnings);
        respond_error(c, 500, "out of memory");
        return;
    }
    uint64_t t1 = uv_hrtime();
    lp_server_t *s = c->admin->server;
    lp_workers_set_routes(s->workers, s->nworkers, t);
    uint64_t t2 = uv_hrtime();
    lp_rtable_unref(routes_latest);
    routes_latest = t; /* our reference */
    routes_gen = lp_gen_current->id;
    /* Routes the batch leaves unreachable, as -t and every load say them (route.c): after
     * the switch, which it would delay (some 50 ms for 100,000 routes); the table is
     * immutable and ours. */
    lp_route_shadows_json(lp_gen_current->config, t, warnings);
    int persisted = lp_rtable_persist(lp_gen_current->config->path, lp_gen_current->config, ops,
                                      err, sizeof(err)) == 0;
    if (!persisted)
        lp_log_error("admin: routes changed but not persisted: %s", err);
    json_decref(doc);
    lp_log_notice("admin: routes changed (%zu routes; built in %.1f ms, switched in %.1f ms)",
                  t->nroutes, (double)(t1 - t0) / 1e6, (double)(t2 - t1) / 1e6);
    json_t *ans =
        json_pack("{s:b,s:i,s:f,s:f,s:b}", "ok", persisted, "routes", (json_int_t)t->nroutes,
                  "build_ms", (double)((t1 - t0) / 1000) / 1000.0, "switch_ms",
                  (double)((t2 - t1) / 1000) / 1000.0, "persisted", persisted);
    if (ans && !persisted)
        json_object_set_new(ans, "error", json_string(err));
    if (ans && json_array_size(warnings))
        json_object_set(ans, "warnings", warnings);
    json_decref(warnings);
    respond(c, persisted ? 200 : 500, ans);
}

void lp_admin_snapshot(lp_server_t *s)
{
    /* The config as JSON, secrets redacted (lua/luaproxy/admin.lua), made when the config
     * loaded and taken right after its generation went live: GET /config shows what
     * serves, not what the file says now. */
    const char *json = lp_gen_current ? lp_gen_current->config->json : NULL;
    free(s->config_json);
    s->config_json = json ? strdup(json) : NULL;
}

static void handle_config(admin_conn_t *c)
{
    const char *json = c->admin->server->config_json;
    if (json)
        respond_text(c, 200, json); /* already encoded, by lua-cjson */
    else
        respond_error(c, 500, "the config could not be encoded as JSON");
}

static json_t *target_json(const lp_upstream_conf_t *u, size_t j, lp_health_t *h, uint64_t now)
{
    json_t *t = json_pack(
        "{s:o,s:i,s:s,s:I,s:o,s:o,s:I}", "address", jstr(h->addr), "weight",
        (int)u->targets[j].weight, "state", lp_health_state(h, now), "consecutive_failures",
        (json_int_t)__atomic_load_n(&h->consecutive_failures, __ATOMIC_RELAXED), "failures",
        jint(__atomic_load_n(&h->failures, __ATOMIC_RELAXED)), "successes",
        jint(__atomic_load_n(&h->successes, __ATOMIC_RELAXED)), "ejections",
        (json_int_t)__atomic_load_n(&h->ejections, __ATOMIC_RELAXED));
    if (t && u->targets[j].host)
        json_object_set_new(t, "name", jstr(u->targets[j].addr.text));
    return t;
}

static void handle_upstreams(admin_conn_t *c)
{
    const lp_config_t *cfg = lp_gen_current->config;
    uint64_t now = lp_health_now();
    json_t *list = json_array();
    for (size_t i = 0; list && i < cfg->nupstreams; i++) {
        const lp_upstream_conf_t *u = &cfg->upstreams[i];
        json_t *targets = json_array();
        for (size_t j = 0; targets && j < u->ntargets; j++) {
            /* A DNS target lists the addresses its name had when the config was loaded. */
            size_t na;
            const lp_addr_t *addrs = lp_target_addrs(&u->targets[j], &na);
            for (size_t k = 0; k < na; k++) {
                lp_health_t *h = lp_health_get(addrs[k].text);
                if (h && json_array_append_new(targets, target_json(u, j, h, now))) {
                    json_decref(targets);
                    targets = NULL;
                    break;
                }
            }
        }
        if (json_array_append_new(list, json_pack("{s:o,s:s,s:b,s:o}", "name", jstr(u->name),
                                                  "balance", u->balance, "active_checks",
                                                  u->health.active, "targets", targets))) {
            json_decref(list);
            list = NULL;
        }
    }
    respond(c, 200, json_pack("{s:b,s:o}", "ok", 1, "upstreams", list));
}

/* The state asked for: ?state= in the query, else {"state": ...} in a JSON body. 0 with
 * want set, or -1 after answering 400. */
static int wanted_state(admin_conn_t *c, lp_str_t query, char *want, size_t n)
{
    lp_str_t q = lp_kv_find(query, '&', "state", 5);
    if (q.base) {
        snprintf(want, n, "%.*s", (int)q.len, q.base);
        return 0;
    }
    want[0] = 0;
    if (!c->r->body_len)
        return 0;
    json_error_t jerr;
    json_t *j =
        json_loadb(c->r->body, c->r->body_len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        char msg[256];
        snprintf(msg, sizeof(msg), "the body is not valid JSON: %s (at byte %d)", jerr.text,
                 jerr.position);
        respond_error(c, 400, msg);
        return -1;
    }
    json_t *st = json_is_object(j) ? json_object_get(j, "state") : NULL;
    if (!json_is_string(st)) {
        json_decref(j);
        respond_error(c, 400, "the body must be a JSON object with a string \"state\"");
        return -1;
    }
    snprintf(want, n, "%s", json_string_value(st));
    json_decref(j);
    return 0;
}

/* POST /upstreams/NAME/targets/ADDR with "drain", "disable" or "enable" as ?state= or in a
 * JSON body {"state": ...}. */
static void handle_target_state(admin_conn_t *c, lp_str_t rest, lp_str_t query)
{
    const lp_config_t *cfg = lp_gen_current->config;
    const char *slash = memchr(rest.base, '/', rest.len);
    if (!slash) {
        respond_error(c, 404, "use POST /upstreams/NAME/targets/ADDRESS");
        return;
    }
    lp_str_t name = {rest.base, (size_t)(slash - rest.base)};
    lp_str_t tail = {slash + 1, rest.len - name.len - 1};
    if (tail.len <= 8 || memcmp(tail.base, "targets/", 8) != 0) {
        respond_error(c, 404, "use POST /upstreams/NAME/targets/ADDRESS");
        return;
    }
    lp_str_t addr = {tail.base + 8, tail.len - 8};
    const lp_upstream_conf_t *u = NULL;
    for (size_t i = 0; i < cfg->nupstreams; i++)
        if (strlen(cfg->upstreams[i].name) == name.len &&
            memcmp(cfg->upstreams[i].name, name.base, name.len) == 0)
            u = &cfg->upstreams[i];
    const lp_addr_t *t = NULL;
    for (size_t j = 0; u && j < u->ntargets; j++) {
        size_t na;
        const lp_addr_t *addrs = lp_target_addrs(&u->targets[j], &na);
        for (size_t k = 0; k < na; k++)
            if (strlen(addrs[k].text) == addr.len &&
                memcmp(addrs[k].text, addr.base, addr.len) == 0)
                t = &addrs[k];
    }
    if (!t) {
        respond_error(c, 404, u ? "no such target in that upstream" : "no such upstream");
        return;
    }
    char want[32];
    if (wanted_state(c, query, want, sizeof(want)))
        return;
    int state = strcmp(want, "drain") == 0     ? LP_TARGET_DRAINED
                : strcmp(want, "disable") == 0 ? LP_TARGET_DISABLED
                : strcmp(want, "enable") == 0  ? LP_TARGET_ENABLED
                                               : -1;
    if (state < 0) {
        respond_error(c, 400, "say drain, disable or enable (body {\"state\": ...} or ?state=)");
        return;
    }
    lp_health_t *h = lp_health_get(t->text);
    if (!h) {
        respond_error(c, 500, "out of memory");
        return;
    }
    __atomic_store_n(&h->admin_state, state, __ATOMIC_RELAXED);
    if (state == LP_TARGET_ENABLED) {
        /* Re-enabling also forgives a passive ejection. */
        __atomic_store_n(&h->ejected_until, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&h->ejections, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&h->consecutive_failures, 0, __ATOMIC_RELAXED);
    }
    lp_log_notice("admin: upstream %s target %s: %s", u->name, h->addr, want);
    respond(c, 200,
            json_pack("{s:b,s:o,s:s}", "ok", 1, "address", jstr(h->addr), "state",
                      lp_health_state(h, lp_health_now())));
}

/* POST /explain (#21): the answer comes when the child explain process is done
 * (admin_explain.c); the connection is held until then, as for a reload. */
static void on_explained(void *data, int status, const char *body, size_t len)
{
    admin_conn_t *c = data;
    respond_raw(c, status, "application/json", body, len);
    conn_release(c); /* the hold handle_explain took (respond does nothing once closing) */
}

static void handle_explain(admin_conn_t *c)
{
    c->handles++;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (lp_admin_explain(c->tcp.loop, lp_gen_current->config->path, c->r->body, c->r->body_len,
                         on_explained, c)) {
        respond_error(c, 500, "out of memory");
        conn_release(c);
    }
}

static void dispatch(admin_conn_t *c)
{
    lp_str_t path = c->r->h1.path, query = {"", 0};
    const char *q = memchr(path.base, '?', path.len);
    if (q) {
        query = (lp_str_t){q + 1, path.len - (size_t)(q + 1 - path.base)};
        path.len = (size_t)(q - path.base);
    }
    uint8_t m = lp_h1_method(&c->r->h1);
    int get = m == HTTP_GET || m == HTTP_HEAD;
    if (c->admin->server->stopping) {
        /* Draining: the workers stop meanwhile, on another thread, and their generation
         * may be gone: nothing here may touch them. A health check learns it is time to
         * go elsewhere; everything else is told the same. */
        if (LP_STR_IEQ(path, "/ready"))
            respond(c, 503, json_pack("{s:b,s:s}", "ready", 0, "reason", "draining"));
        else
            respond_error(c, 503, "draining: this process is stopping");
        return;
    }
    if (!same_origin(c) || serve_page(c, path, get) || !authorized(c))
        return;
    if (path.len > 11 && memcmp(path.base, "/upstreams/", 11) == 0) {
        if (m != HTTP_POST)
            respond_error(c, 405, "use POST /upstreams/NAME/targets/ADDRESS");
        else
            handle_target_state(c, (lp_str_t){path.base + 11, path.len - 11}, query);
    } else if (path.len > 7 && memcmp(path.base, "/cache/", 7) == 0) {
        if (m != HTTP_DELETE) {
            respond_error(c, 405, "use DELETE /cache/NAME[?key=K|?prefix=P]");
        } else {
            int status;
            json_t *j = lp_cache_admin_purge(
                lp_gen_current->config, (lp_str_t){path.base + 7, path.len - 7}, query, &status);
            respond(c, status, j);
        }
    } else if (LP_STR_IEQ(path, "/upstreams")) {
        if (!get)
            respond_error(c, 405, "use GET /upstreams");
        else
            handle_upstreams(c);
    } else if (LP_STR_IEQ(path, "/status")) {
        if (!get)
            respond_error(c, 405, "use GET /status");
        else
            handle_status(c);
    } else if (LP_STR_IEQ(path, "/ready")) {
        if (!get)
            respond_error(c, 405, "use GET /ready");
        else
            handle_ready(c);
    } else if (LP_STR_IEQ(path, "/metrics")) {
        if (!get)
            respond_error(c, 405, "use GET /metrics");
        else
            handle_metrics(c);
    } else if (LP_STR_IEQ(path, "/reload")) {
        if (m != HTTP_POST)
            respond_error(c, 405, "use POST /reload");
        else
            handle_reload(c);
    } else if (LP_STR_IEQ(path, "/stop")) {
        if (m != HTTP_POST)
            respond_error(c, 405, "use POST /stop");
        else
            handle_stop(c);
    } else if (LP_STR_IEQ(path, "/routes")) {
        if (get)
            handle_routes_get(c);
        else if (m == HTTP_POST)
            handle_routes_post(c);
        else
            respond_error(c, 405, "use GET or POST /routes");
    } else if (LP_STR_IEQ(path, "/config")) {
        if (!get)
            respond_error(c, 405, "use GET /config");
        else
            handle_config(c);
    } else if (LP_STR_IEQ(path, "/reloads")) {
        if (!get)
            respond_error(c, 405, "use GET /reloads");
        else
            handle_reloads(c);
    } else if (LP_STR_IEQ(path, "/explain")) {
        if (m != HTTP_POST)
            respond_error(c, 405, "use POST /explain");
        else
            handle_explain(c);
    } else if (LP_STR_IEQ(path, "/errors")) {
        if (!get)
            respond_error(c, 405, "use GET /errors");
        else
            handle_errors(c);
    } else {
        respond_error(
            c, 404,
            "no such endpoint (GET /, GET /status, GET /ready, GET /metrics, POST /reload, "
            "POST /stop, GET /config, GET /upstreams, "
            "POST /upstreams/NAME/targets/ADDRESS, GET /reloads, GET /errors, "
            "GET/POST /routes, POST /explain, DELETE /cache/NAME)");
    }
}

/* ---- reading a request ---- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    admin_conn_t *c = h->data;
    *buf = uv_buf_init(c->r->in, sizeof(c->r->in));
}

static int on_admin_body(lp_h1_t *h, const char *at, size_t len)
{
    admin_req_t *r = h->ud;
    if (len > sizeof(r->body) - r->body_len) {
        r->body_too_large = 1;
        return -1;
    }
    memcpy(r->body + r->body_len, at, len);
    r->body_len += len;
    return 0;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    admin_conn_t *c = st->data;
    if (nread < 0) {
        conn_close(c); /* gone before a complete request: nobody to answer */
        return;
    }
    if (c->answered)
        return;
    admin_req_t *r = c->r;
    const char *p = r->in;
    size_t left = (size_t)nread, used = 0;
    while (!c->answered) {
        lp_h1_event_t ev = lp_h1_execute(&r->h1, p, left, &used);
        p += used;
        left -= used;
        if (ev == LP_H1_HEAD) {
            if ((r->h1.flags & LP_H1F_LENGTH) && r->h1.content_length > sizeof(r->body)) {
                respond_error(c, 413, "request body too large");
                return;
            }
            if (r->h1.flags & LP_H1F_EXPECT_100) {
                /* curl asks before bodies over 1 KiB. 25 bytes on a connection that has sent
                 * nothing yet: written whole, or (EAGAIN) the client sends after its wait. */
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                uv_buf_t b = uv_buf_init((char *)cont, sizeof(cont) - 1);
                int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
                if (n > 0 && (size_t)n < b.len) {
                    conn_close(c); /* half an interim answer cannot be completed */
                    return;
                }
            }
            lp_h1_resume(&r->h1);
            continue; /* read the (small) body too, then answer */
        }
        if (ev == LP_H1_DONE || ev == LP_H1_UPGRADE) {
            dispatch(c);
        } else if (ev == LP_H1_ERROR) {
            if (r->body_too_large)
                respond_error(c, 413, "request body too large");
            else
                respond_error(c, r->h1.err_status ? r->h1.err_status : 400,
                              r->h1.err_reason ? r->h1.err_reason : "bad request");
        }
        break; /* LP_H1_NEED_MORE: everything was consumed (heads are copied) */
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    lp_admin_t *a = server->data;
    if (status < 0)
        return;
    admin_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->admin = a;
    a->refs++;
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    if (uv_accept(server, (uv_stream_t *)&c->tcp)) {
        conn_close(c);
        return;
    }
    if (a->nconns >= ADMIN_MAX_CONNS) {
        /* Accepted only to be told: a connection left in the backlog would wait in
         * silence. Logged at most once a second. */
        a->refused++;
        uint64_t now = uv_now(server->loop);
        if (!a->refuse_log_at || now - a->refuse_log_at >= 1000) {
            lp_log_warn("admin API: too many connections (%d open): refused %llu with 503",
                        ADMIN_MAX_CONNS, (unsigned long long)a->refused);
            a->refused = 0;
            a->refuse_log_at = now;
        }
        respond_error(c, 503, "too many admin connections; try again later");
        return;
    }
    admin_req_t *r = calloc(1, sizeof(*r));
    if (!r) {
        conn_close(c);
        return;
    }
    c->r = r;
    a->nconns++;
    lp_h1_init(&r->h1, HTTP_REQUEST, r, on_admin_body);
    r->h1.max_header_size = ADMIN_MAX_HEAD;
    r->h1.max_uri_size = ADMIN_MAX_URI;
    lp_h1_set_storage(&r->h1, r->arena, sizeof(r->arena), r->headers,
                      sizeof(r->headers) / sizeof(r->headers[0]));
    conn_timer(c, ADMIN_TIMEOUT);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read))
        conn_close(c);
}

static void on_admin_close(uv_handle_t *h)
{
    admin_unref(h->data);
}

void lp_admin_stop(lp_server_t *s)
{
    lp_rtable_unref(routes_latest);
    routes_latest = NULL;
    if (!s->admin)
        return;
    uv_close((uv_handle_t *)&s->admin->tcp, on_admin_close);
    s->admin = NULL;
}

int lp_admin_update(lp_server_t *s)
{
    const lp_addr_t *want = &lp_gen_current->config->admin;
    if (s->admin && want->text &&
        (strcmp(s->admin->addr, want->text) == 0 || strcmp(s->admin->bound, want->text) == 0))
        return 0;
    if (!want->text) {
        lp_admin_stop(s);
        return 0;
    }
    lp_admin_t *a = calloc(1, sizeof(*a));
    if (!a || !(a->addr = strdup(want->text))) {
        free(a);
        return -1;
    }
    a->server = s;
    a->refs = 1; /* the listener */
    uv_tcp_init(s->loop, &a->tcp);
    a->tcp.data = a;
    /* After an upgrade the old process's socket, if it had this address: bound already,
     * with its queue (a bind would fail while the old process holds the port). */
    int inherited = -1, rc;
    if (lp_upgrade_take('A', want->text, &inherited, 1)) {
        if ((rc = uv_tcp_open(&a->tcp, inherited)))
            close(inherited); /* not the handle's */
    } else {
        rc = uv_tcp_bind(&a->tcp, (const struct sockaddr *)&want->addr, 0);
    }
    if (!rc)
        /* Room beyond the cap: connections over it are accepted and told (503), in order,
         * rather than dropped by a full accept queue and retried a second later. */
        rc = uv_listen((uv_stream_t *)&a->tcp, 2 * ADMIN_MAX_CONNS, on_connection);
    if (rc) {
        lp_log_error("admin API on %s: %s", want->text, uv_strerror(rc));
        uv_close((uv_handle_t *)&a->tcp, on_admin_close);
        return -1; /* at start-up: fatal; after a reload the old listener stays */
    }
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (uv_tcp_getsockname(&a->tcp, (struct sockaddr *)&ss, &sslen) == 0)
        lp_sockaddr_text(&ss, a->bound, sizeof(a->bound));
    else
        snprintf(a->bound, sizeof(a->bound), "%s", want->text);
    lp_admin_stop(s);
    s->admin = a;
    lp_log_notice("admin API on http://%s", a->bound);
    return 0;
}

int lp_admin_listen_fd(const lp_server_t *s, const char **conf, const char **bound)
{
    uv_os_fd_t fd;
    if (!s->admin || uv_fileno((const uv_handle_t *)&s->admin->tcp, &fd))
        return -1;
    *conf = s->admin->addr;
    *bound = s->admin->bound;
    return fd;
}

/* ---- luaproxy -s ---- */

static int admin_request(const lp_addr_t *addr, const char *req, char *out, size_t outlen)
{
    int fd = socket(addr->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (const struct sockaddr *)&addr->addr, addr->addrlen) < 0 ||
        write(fd, req, strlen(req)) < 0) {
        close(fd);
        return -1;
    }
    size_t len = 0;
    ssize_t n;
    while (len < outlen - 1 && (n = read(fd, out + len, outlen - 1 - len)) > 0)
        len += (size_t)n;
    out[len] = 0;
    close(fd);
    return (int)len;
}

static int addr_port(const lp_addr_t *a)
{
    if (a->addr.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->addr)->sin6_port);
    return ntohs(((const struct sockaddr_in *)&a->addr)->sin_port);
}

long lp_read_pid_file(const char *path)
{
    FILE *f = fopen(path, "r");
    long pid = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    fclose(f);
    return pid;
}

int lp_admin_signal(const lp_config_t *cfg, const char *name)
{
    int reload = strcmp(name, "reload") == 0, stop = strcmp(name, "stop") == 0;
    if (strcmp(name, "upgrade") == 0) {
        /* The process to upgrade is the one in pid_file: the admin API would answer from
         * whichever process holds its socket (two do during an upgrade). */
        long pid = cfg->pid_file ? lp_read_pid_file(cfg->pid_file) : 0;
        if (!cfg->pid_file) {
            fprintf(stderr, "luaproxy: -s upgrade needs pid_file in the config (it signals "
                            "the process named there)\n");
            return 1;
        }
        if (pid <= 0 || kill((pid_t)pid, SIGUSR2) < 0) {
            fprintf(stderr, "luaproxy: no running instance in %s%s%s\n", cfg->pid_file,
                    pid > 0 ? ": " : "", pid > 0 ? strerror(errno) : "");
            return 1;
        }
        printf("sent SIGUSR2 to %ld: it starts a new process and hands over once that one "
               "serves (the outcome is in the log; %s names the new pid then)\n",
               pid, cfg->pid_file);
        return 0;
    }
    if (!reload && !stop) {
        fprintf(stderr, "luaproxy: -s takes reload, stop or upgrade\n");
        return 2;
    }
    /* Port 0 is chosen when the instance starts: the config cannot say where it is. */
    int admin_known = cfg->admin.text && addr_port(&cfg->admin) != 0;
    if (admin_known) {
        char resp[8192], req[LP_ADMIN_TOKEN_MAX + 256];
        snprintf(req, sizeof(req),
                 "POST /%s HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n%s%s%s"
                 "Connection: close\r\n\r\n",
                 reload ? "reload" : "stop", cfg->admin_token ? "Authorization: Bearer " : "",
                 cfg->admin_token ? cfg->admin_token : "", cfg->admin_token ? "\r\n" : "");
        int n = admin_request(&cfg->admin, req, resp, sizeof(resp));
        OPENSSL_cleanse(req, sizeof(req));
        if (n <= 0) {
            fprintf(stderr, "luaproxy: cannot reach the admin API on %s: %s\n", cfg->admin.text,
                    strerror(errno));
            return 1;
        }
        const char *body = strstr(resp, "\r\n\r\n");
        printf("%s", body ? body + 4 : resp);
        return strncmp(resp, "HTTP/1.1 200", 12) == 0 ? 0 : 1;
    }
    if (!cfg->pid_file) {
        if (cfg->admin.text)
            fprintf(stderr,
                    "luaproxy: admin.address %s has port 0 (chosen at start-up) and the "
                    "config has no pid_file: no way to find the running instance; give "
                    "admin.address a port or set pid_file\n",
                    cfg->admin.text);
        else
            fprintf(stderr, "luaproxy: the config has neither admin.address nor pid_file: no "
                            "way to find the running instance\n");
        return 1;
    }
    long pid = lp_read_pid_file(cfg->pid_file);
    if (pid <= 0 || kill((pid_t)pid, reload ? SIGHUP : SIGTERM) < 0) {
        fprintf(stderr, "luaproxy: no running instance in %s%s%s\n", cfg->pid_file,
                pid > 0 ? ": " : "", pid > 0 ? strerror(errno) : "");
        return 1;
    }
    printf("sent %s to %ld (the outcome is in its log)\n", reload ? "SIGHUP" : "SIGTERM", pid);
    return 0;
}

void lp_pidfile_write(const lp_config_t *cfg)
{
    /* Renamed over: whoever reads it (luaproxy -s, a test waiting for an upgrade) sees
     * the old pid or the new one, never an empty file. */
    if (cfg->pid_file)
        lp_upgrade_write_pid(cfg->pid_file, (long)getpid());
}

void lp_pidfile_remove(const lp_config_t *cfg)
{
    if (cfg->pid_file && lp_read_pid_file(cfg->pid_file) == (long)getpid())
        unlink(cfg->pid_file);
}
