#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include "conn.h"
#include "health.h"
#include "lazytimer.h"
#include "log.h"
#include "lua_vm.h"
#include "request.h"
#include "targets.h"
#include "tls.h"
#include "upstream.h"

/* What the upstream connection timer is timing. */
enum { PT_NONE, PT_CONNECT, PT_SEND, PT_READ, PT_IDLE, PT_BROKEN };

static void peer_close(lp_peer_t *p);
static int peer_start_request(lp_peer_t *p, lp_req_t *req);
static void peer_update_reading(lp_peer_t *p);
static void peer_process_pending(lp_peer_t *p);
static int on_resp_body(lp_h1_t *h, const char *at, size_t len);
static int peer_connect(lp_peer_t *p, lp_req_t *req);
static int peer_grow(lp_h1_t *h, size_t need);

static const lp_timeouts_t *T(lp_peer_t *p)
{
    return &p->w->config->timeouts;
}

static void on_peer_timer(uv_timer_t *t);

static void peer_timer(lp_peer_t *p, int mode, uint64_t ms)
{
    if (p->tmode == PT_BROKEN && mode != PT_BROKEN)
        return; /* the failure scheduled for a failed write comes first */
    p->tmode = (uint8_t)mode;
    if (mode == PT_NONE) {
        lp_lazy_cancel(&p->lazy);
        return;
    }
    if (mode != PT_IDLE && mode != PT_BROKEN && p->req && p->req->deadline) {
        /* total_timeout: no per-try timer runs past the request's deadline. */
        uint64_t now = uv_now(&p->w->loop);
        uint64_t left = p->req->deadline > now ? p->req->deadline - now : 0;
        if (left < ms)
            ms = left;
    }
    lp_lazy_set(&p->timer, &p->lazy, ms, on_peer_timer);
}

/* The name a TLS connection to addr sends as SNI and verifies: the configured one, the
 * DNS name the address came from, else the host part of "host:port" / "[v6]:port". */
static char *tls_name(const lp_addr_t *addr, lp_tls_client_t *tls, const char *name)
{
    if (!tls)
        return NULL;
    if (lp_tls_client_sni(tls))
        return strdup(lp_tls_client_sni(tls));
    if (name)
        return strdup(name);
    const char *t = addr->text, *end;
    if (t[0] == '[' && (end = strchr(t, ']')))
        return strndup(t + 1, (size_t)(end - t - 1));
    end = strrchr(t, ':');
    return strndup(t, end ? (size_t)(end - t) : strlen(t));
}

/* The worker's pool for an address and TLS settings, made on first use. */
lp_pool_t *lp__upstream_pool(lp_worker_t *w, const lp_addr_t *addr, uint64_t gen,
                             lp_tls_client_t *tls, const char *name)
{
    lp_pool_t *p;
    char *sni = tls_name(addr, tls, name);
    if (tls && !sni)
        return NULL;
    for (p = w->pools; p; p = p->next)
        if (p->addr.addrlen == addr->addrlen && strcmp(p->addr.text, addr->text) == 0 &&
            memcmp(&p->addr.addr, &addr->addr, addr->addrlen) == 0 && !p->tls == !tls &&
            (!tls || (strcmp(lp_tls_client_key(p->tls), lp_tls_client_key(tls)) == 0 &&
                      strcmp(p->sni, sni) == 0)))
            break;
    if (!p) {
        p = calloc(1, sizeof(*p));
        if (!p) {
            free(sni);
            return NULL;
        }
        p->addr = *addr;
        p->addr.text = strdup(addr->text);
        if (!p->addr.text) {
            free(sni);
            free(p);
            return NULL;
        }
        p->sni = sni;
        sni = NULL;
        lp_list_init(&p->idle);
        p->next = w->pools;
        w->pools = p;
    }
    free(sni);
    if (gen > p->gen) {
        p->gen = gen;
        /* New connections use the newest context; pooled ones keep the one they made. */
        if (tls && p->tls != tls) {
            lp_tls_client_unref(p->tls);
            p->tls = lp_tls_client_ref(tls);
        }
    }
    return p;
}

lp_upstream_rt_t *lp_upstream_rt_new(lp_worker_t *w, const lp_config_t *cfg)
{
    lp_upstream_rt_t *ups = calloc(cfg->nupstreams ? cfg->nupstreams : 1, sizeof(*ups));
    if (!ups)
        return NULL;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        /* Each worker seeds differently: random tie-breaks must not line up. */
        if (lp_targets_init(&ups[i], &cfg->upstreams[i],
                            uv_hrtime() ^ ((uint64_t)w->id << 32) ^ (uint64_t)i)) {
            lp_upstream_rt_free(ups, i + 1);
            return NULL;
        }
    }
    return ups;
}

int lp_upstream_rt_attach(lp_worker_t *w, lp_upstream_rt_t *ups, size_t n, uint64_t gen)
{
    for (size_t i = 0; i < n; i++)
        if (lp_targets_attach(&ups[i], w, gen))
            return LP_ENOMEM;
    return 0;
}

void lp_upstream_rt_free(lp_upstream_rt_t *ups, size_t n)
{
    if (!ups)
        return;
    for (size_t i = 0; i < n; i++)
        lp_targets_free(&ups[i]);
    free(ups);
}

/* A set_target() destination: a one-target upstream kept per worker (not per generation). */
typedef struct lp_dyn_upstream_s {
    lp_upstream_conf_t conf;
    lp_target_conf_t tconf;
    lp_upstream_rt_t rt;
    char name[80];
} lp_dyn_upstream_t;

#define LP_MAX_DYN_UPSTREAMS 1024

lp_upstream_rt_t *lp_upstream_dynamic(lp_worker_t *w, const struct sockaddr *sa, const char *text)
{
    for (size_t i = 0; i < w->ndyn; i++)
        if (strcmp(w->dyn[i]->name, text) == 0)
            return &w->dyn[i]->rt;
    if (w->ndyn >= LP_MAX_DYN_UPSTREAMS)
        return NULL;
    if (!w->dyn && !(w->dyn = calloc(LP_MAX_DYN_UPSTREAMS, sizeof(*w->dyn))))
        return NULL;
    lp_dyn_upstream_t *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    snprintf(d->name, sizeof(d->name), "%s", text);
    d->tconf.addr.text = d->name;
    memcpy(&d->tconf.addr.addr, sa,
           sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    d->tconf.addr.addrlen =
        sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    d->tconf.weight = 1;
    d->conf.name = d->name;
    d->conf.targets = &d->tconf;
    d->conf.ntargets = 1;
    d->conf.balance = (char *)"round_robin";
    d->conf.keepalive = 128;
    d->conf.keepalive_timeout = 60000;
    d->conf.keepalive_requests = 1000;
    d->conf.dns_ttl = 30000;
    if (lp_targets_init(&d->rt, &d->conf, 1) || lp_targets_attach(&d->rt, w, UINT64_MAX)) {
        lp_targets_free(&d->rt);
        free(d);
        return NULL;
    }
    w->dyn[w->ndyn++] = d;
    return &d->rt;
}

void lp_upstream_destroy_all(lp_worker_t *w)
{
    for (size_t i = 0; i < w->ndyn; i++) {
        lp_targets_free(&w->dyn[i]->rt);
        free(w->dyn[i]);
    }
    free(w->dyn);
    w->dyn = NULL;
    w->ndyn = 0;
    while (w->pools) {
        lp_pool_t *p = w->pools;
        w->pools = p->next;
        free(p->addr.text);
        free(p->sni);
        lp_tls_client_unref(p->tls);
        lp_tls_session_free(p->session);
        free(p);
    }
}

/* ---- lifetime ---- */

static void on_peer_handle_close(uv_handle_t *h)
{
    lp_peer_t *p = h->data;
    if (--p->handles)
        return;
    lp_list_remove(&p->all);
    free(p);
}

static void peer_close(lp_peer_t *p)
{
    if (p->flags & LP_PF_CLOSING)
        return;
    p->flags |= LP_PF_CLOSING;
    if (!lp_list_empty(&p->link)) {
        lp_list_remove(&p->link);
        p->pool->nidle--;
    }
    if (p->req) {
        p->req->peer = NULL;
        p->req = NULL;
        p->pool->active--;
    }
    if (p->rbuf) {
        lp_buf_unref(p->rbuf);
        p->rbuf = NULL;
    }
    if (p->outb) {
        lp_wbatch_put(&p->w->wbatches, p->outb);
        p->outb = NULL;
    }
    lp_tls_free(p->tls);
    p->tls = NULL;
    uv_close((uv_handle_t *)&p->tcp, on_peer_handle_close);
    uv_close((uv_handle_t *)&p->timer, on_peer_handle_close);
}

void lp_peer_abort(lp_peer_t *p)
{
    peer_close(p);
}

static lp_peer_t *peer_new(lp_worker_t *w, lp_upstream_rt_t *u, lp_pool_t *t)
{
    lp_peer_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->w = w;
    p->upstream = u;
    p->pool = t;
    lp_list_init(&p->link);
    lp_list_insert_tail(&w->peers, &p->all);
    uv_tcp_init(&w->loop, &p->tcp);
    uv_timer_init(&w->loop, &p->timer);
    p->tcp.data = p;
    p->timer.data = p;
    p->handles = 2;
    return p;
}

/* Returns a connection to its target's pool, or closes it. */
static void peer_release(lp_peer_t *p)
{
    lp_pool_t *t = p->pool;
    const lp_upstream_conf_t *uc = p->upstream->conf;
    if (p->req) {
        p->req->peer = NULL;
        p->req = NULL;
        t->active--;
    }
    int reusable = (p->flags & LP_PF_KEEPALIVE) && !(p->flags & LP_PF_CLOSING) &&
                   (!p->rbuf || p->rpos >= p->rlen) && !p->out_pending &&
                   t->nidle < uc->keepalive && p->nrequests < uc->keepalive_requests &&
                   !p->w->stopping;
    if (!reusable) {
        peer_close(p);
        return;
    }
    if (p->rbuf) {
        lp_buf_unref(p->rbuf);
        p->rbuf = NULL;
        p->rpos = p->rlen = 0;
    }
    p->flags &= ~(LP_PF_REUSED | LP_PF_RESP_BYTES | LP_PF_PAUSED | LP_PF_REQ_SENT);
    p->body_out = 0;
    p->upstream = NULL; /* a pool outlives generations: it keeps no generation's state */
    lp_list_insert_head(&t->idle, &p->link);
    t->nidle++;
    peer_timer(p, PT_IDLE, uc->keepalive_timeout);
    /* Keep reading while pooled: a close by the upstream takes it out of the pool. */
    peer_update_reading(p);
}

/* ---- failure handling ---- */

/* The connection failed before or during the response. A reused connection that the
 * upstream had closed is retried once on a fresh connection when nothing of the
 * request body was sent yet; otherwise the client gets `status`. */
/* The request can be sent again: an idempotent method whose body (none) is not consumed. */
static int replayable(const lp_req_t *req)
{
    switch (req->method) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_OPTIONS:
    case HTTP_PUT:
    case HTTP_DELETE:
    case HTTP_TRACE:
        break;
    default:
        return 0;
    }
    return req->body_in == 0 && req->state == LP_RS_DONE;
}

/* Whether the request's total_timeout has run out. */
static int deadline_passed(const lp_req_t *req)
{
    return req->deadline && uv_now(&req->w->loop) >= req->deadline;
}

/* `retries` further tries, within the retry budget (retries may be at most retry_budget of
 * the requests of the last 10 s, plus 3, so that retries cannot multiply an outage) and
 * before total_timeout. */
static int may_retry(lp_req_t *req)
{
    lp_upstream_rt_t *u = req->upstream;
    const lp_upstream_conf_t *uc = u->conf;
    if ((unsigned)req->tries > uc->retries || u->ntargets > LP_MAX_TRIED || deadline_passed(req))
        return 0;
    if ((double)u->budget_retries >= 3.0 + uc->retry_budget * (double)u->budget_requests) {
        lp_log_warn("upstream %s: retry budget spent (%u retries for %u requests)", uc->name,
                    u->budget_retries, u->budget_requests);
        return 0;
    }
    u->budget_retries++;
    return 1;
}

static void budget_count_request(lp_upstream_rt_t *u)
{
    uint64_t now = lp_health_now();
    if (now - u->budget_start > 10000) {
        u->budget_start = now;
        u->budget_requests = u->budget_retries = 0;
    }
    u->budget_requests++;
}

/* What the client gets when the last failed try is not retried. */
static int failure_status(const lp_req_t *req)
{
    switch (req->fail_kind) {
    case LP_FAIL_TIMEOUT:
        return 504;
    case LP_FAIL_STATUS:
        return req->fail_status;
    default:
        return 502;
    }
}

static int upstream_try(lp_req_t *req);

/* The one retry path (nginx's upstream_next), after may_retry() agreed and the failed try
 * ended (req->fail_kind says why): the Lua upstream phase runs again, seeing the failure
 * through req:last_failure() (it may change the upstream, pick a target or answer), then
 * the next try goes to a target not tried yet. */
static int upstream_next(lp_req_t *req)
{
    if (lp_lua_wants(req->g->lua, req->route_index, LP_PHASE_UPSTREAM)) {
        lp_rc_t rc = lp_lua_phase(req, LP_PHASE_UPSTREAM);
        /* Parked (LP_AGAIN): the engine resumes it; then, like now, lp_upstream_start(). */
        if (rc == LP_AGAIN)
            return LP_OK;
        return lp_conn_lua_resumed(req, LP_PHASE_UPSTREAM, rc == LP_DECLINED ? LP_OK : rc);
    }
    return upstream_try(req);
}

/* The connection failed: the try moves to a fresh connection, another target, or the
 * client gets `status`. p is closed. LP_GONE when the request ended. */
static int peer_fail(lp_peer_t *p, int kind, int status, const char *why)
{
    lp_req_t *req = p->req;
    if (!req) {
        peer_close(p);
        return LP_OK;
    }
    int retry = (p->flags & LP_PF_REUSED) && !(p->flags & LP_PF_RESP_BYTES) && p->body_out == 0 &&
                !(req->flags & LP_RF_RESP_STARTED) && !deadline_passed(req);
    /* Another target may take the request when nothing reached this one (connect failed or
     * timed out), or when it reset before any response byte and the request can be sent
     * again (idempotent, no body). */
    int elsewhere =
        !(req->flags & LP_RF_RESP_STARTED) && !retry &&
        (!(p->flags & LP_PF_CONNECTED) || (!(p->flags & LP_PF_RESP_BYTES) && replayable(req)));
    const char *addr = p->pool->addr.text; /* pools live as long as the worker */
    lp_pool_t *t = p->pool;
    peer_close(p);
    if (retry) {
        /* A pooled connection the target had closed: the same try goes on, on a fresh one. */
        lp_log_debug("upstream %s: pooled connection failed (%s); retrying on a new one", addr,
                     why);
        lp_peer_t *np = peer_new(req->w, req->upstream, t);
        if (np)
            return peer_connect(np, req);
    }
    lp_upstream_try_end(req, 1);
    req->fail_kind = (uint8_t)kind;
    req->fail_status = 0;
    if (elsewhere && may_retry(req)) {
        lp_log_warn("upstream %s: %s; retrying (try %d)", addr, why, req->tries + 1);
        return upstream_next(req);
    }
    lp_log_warn("upstream %s: %s (%s %.*s)", addr, why, llhttp_method_name(req->method),
                (int)req->h1.path.len, req->h1.path.base);
    return lp_conn_upstream_failed(req, status, why);
}

static void on_peer_timer(uv_timer_t *tm)
{
    lp_peer_t *p = tm->data;
    if (p->tmode == PT_NONE || !lp_lazy_due(tm, &p->lazy, on_peer_timer))
        return;
    if (p->tmode != PT_IDLE && p->tmode != PT_BROKEN && p->req && deadline_passed(p->req)) {
        p->flags &= ~LP_PF_REUSED;
        peer_fail(p, LP_FAIL_TIMEOUT, 504, "total_timeout reached"); /* no retry after it */
        return;
    }
    switch (p->tmode) {
    case PT_CONNECT:
        peer_fail(p, LP_FAIL_TIMEOUT, 504,
                  (p->flags & LP_PF_HANDSHAKE) ? "TLS handshake timed out" : "connect timed out");
        return;
    case PT_SEND:
        peer_fail(p, LP_FAIL_TIMEOUT, 504, "send timed out");
        return;
    case PT_READ:
        peer_fail(p, LP_FAIL_TIMEOUT, 504, "read timed out");
        return;
    case PT_BROKEN:
        peer_fail(p, LP_FAIL_RESET, 502, "write failed");
        return;
    default:
        peer_close(p); /* idle in the pool too long */
    }
}

/* ---- writing ---- */

static void on_peer_write(uv_write_t *wr, int status)
{
    lp_wbatch_t *wb = LP_CONTAINER_OF(wr, lp_wbatch_t, req);
    lp_peer_t *p = wb->owner;
    p->out_pending -= wb->bytes;
    lp_wbatch_put(&p->w->wbatches, wb);
    if (p->flags & LP_PF_CLOSING)
        return;
    if (status < 0) {
        peer_fail(p, LP_FAIL_RESET, 502, uv_strerror(status));
        return;
    }
    if (p->tmode == PT_SEND) {
        if (p->out_pending)
            peer_timer(p, PT_SEND, T(p)->send);
        else if (p->flags & LP_PF_REQ_SENT)
            peer_timer(p, PT_READ, T(p)->read);
        else
            peer_timer(p, PT_NONE, 0);
    }
    if (p->out_pending <= LP_LOW_WATERMARK && p->req) {
        if (p->flags & LP_PF_TUNNEL)
            lp_conn_tunnel_resume(p->req->conn);
        else
            lp_conn_resume_body(p->req);
    }
}

/* Hands one batch of wire bytes to libuv. -1 when the connection broke. */
static int peer_send(lp_peer_t *p, lp_wbatch_t *wb)
{
    wb->owner = p;
    if (lp_wbatch_send(wb, (uv_stream_t *)&p->tcp, &p->w->wbatches, &p->out_pending,
                       on_peer_write)) {
        /* Failed on the next loop turn: callers of a flush still hold the request. */
        peer_timer(p, PT_BROKEN, 0);
        return -1;
    }
    return 0;
}

/* TLS output (records, handshake messages, alerts). -1 when the connection broke. */
static int peer_tls_send(lp_peer_t *p)
{
    lp_wbatch_t *wb;
    while (p->tls && (wb = lp_tls_out(p->tls, &p->w->wbatches)))
        if (peer_send(p, wb))
            return -1;
    return 0;
}

void lp_peer_flush(lp_peer_t *p)
{
    lp_wbatch_t *wb = p->outb;
    if (!wb || !wb->n || !(p->flags & LP_PF_CONNECTED) || (p->flags & LP_PF_CLOSING) ||
        p->tmode == PT_BROKEN)
        return;
    p->outb = NULL;
    if (p->tls) {
        int rc = lp_tls_write(p->tls, wb);
        lp_wbatch_put(&p->w->wbatches, wb);
        if (rc) {
            peer_timer(p, PT_BROKEN, 0);
            return;
        }
        if (peer_tls_send(p))
            return;
    } else if (peer_send(p, wb)) {
        return;
    }
    if (p->tmode != PT_SEND && !(p->flags & LP_PF_TUNNEL) && p->out_pending)
        peer_timer(p, PT_SEND, T(p)->send);
}

static lp_wbatch_t *peer_outb(lp_peer_t *p, unsigned k, unsigned scratch)
{
    if (p->outb && !lp_wbatch_room(p->outb, k, scratch))
        lp_peer_flush(p);
    if (!p->outb)
        p->outb = lp_wbatch_get(&p->w->wbatches);
    return p->outb;
}

void lp_peer_body(lp_peer_t *p, const char *at, size_t len, lp_buf_t *pin, int chunked)
{
    if (!len || (p->flags & LP_PF_CLOSING))
        return;
    p->body_out += len;
    if (chunked) {
        /* Re-chunked: extensions and odd framing never reach the upstream. */
        char size[24];
        size_t n = lp_u64_to_str(len, 16, size);
        size[n++] = '\r';
        size[n++] = '\n';
        lp_wbatch_t *wb = peer_outb(p, 3, (unsigned)n);
        if (!wb)
            return;
        lp_wbatch_add_copy(wb, size, n);
        lp_wbatch_add(wb, at, len, pin);
        lp_wbatch_add(wb, "\r\n", 2, NULL);
    } else {
        lp_wbatch_t *wb = peer_outb(p, 1, 0);
        if (wb)
            lp_wbatch_add(wb, at, len, pin);
    }
}

void lp_peer_body_end(lp_peer_t *p, int chunked)
{
    if (p->flags & LP_PF_CLOSING)
        return;
    if (chunked) {
        lp_wbatch_t *wb = peer_outb(p, 1, 0);
        if (wb)
            lp_wbatch_add(wb, "0\r\n\r\n", 5, NULL);
    }
    p->flags |= LP_PF_REQ_SENT;
    if (p->tmode != PT_SEND)
        peer_timer(p, PT_READ, T(p)->read);
}

/* ---- the request head ---- */

static int is_replaced(lp_str_t n)
{
    return LP_STR_IEQ(n, "x-forwarded-for") || LP_STR_IEQ(n, "x-forwarded-proto") ||
           LP_STR_IEQ(n, "x-forwarded-host") || LP_STR_IEQ(n, "expect") || LP_STR_IEQ(n, "host");
}

static size_t build_request_head(lp_req_t *req, char *out, size_t cap)
{
    lp_h1_t *h = &req->h1;
    lp_wbuf_t w = {out, out + cap, 0};
    const lp_route_conf_t *r = req->route;
    const char *method = llhttp_method_name(req->method);
    lp_wbuf_cstr(&w, method);
    lp_wbuf_str(&w, " ", 1);
    lp_str_t path = h->path;
    if (r && r->strip_prefix && r->prefix_len > 1 && !(req->flags & LP_RF_PATH_SET) &&
        path.len >= r->prefix_len) {
        lp_str_t rest = {path.base + r->prefix_len, path.len - r->prefix_len};
        if (!rest.len || rest.base[0] != '/')
            lp_wbuf_str(&w, "/", 1);
        lp_wbuf_str(&w, rest.base, rest.len);
    } else {
        lp_wbuf_str(&w, path.base, path.len);
    }
    lp_wbuf_cstr(&w, " HTTP/1.1\r\nHost: ");
    if (h->host.base)
        lp_wbuf_str(&w, h->host.base, h->host.len);
    else
        lp_wbuf_cstr(&w, req->peer->pool->addr.text);
    lp_wbuf_str(&w, "\r\n", 2);
    int xff = 0;
    for (unsigned i = 0; i < h->nheaders; i++) {
        const lp_header_t *hd = &h->headers[i];
        if (LP_STR_IEQ(hd->name, "x-forwarded-for")) {
            /* Every X-Forwarded-For joined into one, then the client appended. */
            lp_wbuf_cstr(&w, xff ? ", " : "X-Forwarded-For: ");
            lp_wbuf_str(&w, hd->value.base, hd->value.len);
            xff = 1;
        }
    }
    lp_wbuf_cstr(&w, xff ? ", " : "X-Forwarded-For: ");
    lp_wbuf_cstr(&w, req->conn->client_ip);
    lp_wbuf_cstr(&w, req->conn->tls ? "\r\nX-Forwarded-Proto: https\r\n"
                                    : "\r\nX-Forwarded-Proto: http\r\n");
    if (h->host.base)
        lp_wbuf_header(&w, "X-Forwarded-Host", 16, h->host.base, h->host.len);
    for (unsigned i = 0; i < h->nheaders; i++) {
        const lp_header_t *hd = &h->headers[i];
        if (lp_h1_is_hop_by_hop(h, hd->name) || is_replaced(hd->name))
            continue;
        lp_wbuf_header(&w, hd->name.base, hd->name.len, hd->value.base, hd->value.len);
    }
    if (h->flags & LP_H1F_CHUNKED) {
        lp_wbuf_cstr(&w, "Transfer-Encoding: chunked\r\n");
    } else if (h->flags & LP_H1F_LENGTH) {
        lp_wbuf_cstr(&w, "Content-Length: ");
        lp_wbuf_u64(&w, h->content_length);
        lp_wbuf_str(&w, "\r\n", 2);
    }
    if (req->flags & LP_RF_UPGRADE_REQ) {
        const lp_header_t *u = lp_h1_find(h, "upgrade", 7);
        lp_wbuf_cstr(&w, "Connection: upgrade\r\n");
        if (u)
            lp_wbuf_header(&w, "Upgrade", 7, u->value.base, u->value.len);
    }
    lp_wbuf_str(&w, "\r\n", 2);
    return w.overflow ? 0 : (size_t)(w.p - out);
}

/* ---- starting a request ---- */

/* Binds req to the connected p and writes its head and what there is of its body.
 * LP_GONE when the request ended. */
static int peer_start_request(lp_peer_t *p, lp_req_t *req)
{
    lp_worker_t *w = p->w;
    p->req = req;
    req->peer = p;
    p->pool->active++;
    p->nrequests++;
    p->body_out = 0;
    p->flags &= ~(LP_PF_RESP_BYTES | LP_PF_REQ_SENT | LP_PF_KEEPALIVE | LP_PF_PAUSED);
    if (!req->resp_arena) {
        req->resp_arena = lp_buf_get(&w->bufs, LP_BUF_SMALL); /* grows: peer_grow */
        if (!req->resp_arena)
            return peer_fail(p, LP_FAIL_PROTOCOL, 502, "out of memory");
    }
    lp_h1_init(&p->h1, HTTP_RESPONSE, p, on_resp_body);
    p->h1.max_header_size = req->g->config->limits.max_header_size;
    if (p->h1.max_header_size > LP_BUF_SIZE - 1024)
        p->h1.max_header_size = LP_BUF_SIZE - 1024;
    lp_h1_set_storage(&p->h1, req->resp_arena->data, req->resp_arena->cap, req->resp_headers,
                      req->cap_headers);
    if (req->flags & LP_RF_HEAD)
        p->h1.flags |= LP_H1F_HEAD_REQ;
    p->h1.grow = peer_grow;

    lp_buf_t *hb = NULL;
    size_t n = 0;
    for (size_t cap = LP_BUF_SMALL; !n && cap <= 16 * LP_BUF_SIZE; cap *= 16) {
        if (hb)
            lp_buf_unref(hb);
        if (!(hb = lp_buf_get(&w->bufs, cap)))
            break;
        n = build_request_head(req, hb->data, hb->cap);
    }
    lp_wbatch_t *wb = n ? peer_outb(p, 1, 0) : NULL;
    if (!wb) {
        if (hb)
            lp_buf_unref(hb);
        return peer_fail(p, LP_FAIL_PROTOCOL, 502, "cannot build the request head");
    }
    lp_wbatch_add(wb, hb->data, n, hb);
    lp_buf_unref(hb);
    peer_timer(p, PT_NONE, 0);
    lp_buf_t *gathered;
    size_t glen;
    lp_conn_take_body(req, &gathered, &glen);
    if (gathered && glen)
        lp_peer_body(p, gathered->data, glen, gathered, (req->h1.flags & LP_H1F_CHUNKED) != 0);
    if (req->state == LP_RS_DONE)
        lp_peer_body_end(p, (req->h1.flags & LP_H1F_CHUNKED) != 0);
    peer_update_reading(p);
    /* The client side may finish the request right here (a bad body, say). */
    if (lp_conn_upstream_ready(req) == LP_GONE)
        return LP_GONE;
    if (req->peer == p)
        lp_peer_flush(p);
    return LP_OK;
}

/* Connected (and TLS established): the request bound while connecting goes out. */
static void peer_connected(lp_peer_t *p)
{
    p->flags |= LP_PF_CONNECTED;
    p->flags &= ~LP_PF_HANDSHAKE;
    lp_req_t *req = p->req;
    p->req = NULL;
    p->pool->active--;
    if (!req)
        return;
    req->peer = NULL;
    (void)peer_start_request(p, req);
}

static void on_connect(uv_connect_t *cr, int status)
{
    lp_peer_t *p = cr->data;
    if (p->flags & LP_PF_CLOSING)
        return;
    if (status < 0) {
        char why[128];
        snprintf(why, sizeof(why), "connect failed: %s", uv_strerror(status));
        /* Not a stale pooled connection: no retry, the target is down. */
        p->flags &= ~LP_PF_REUSED;
        peer_fail(p, LP_FAIL_CONNECT, 502, why);
        return;
    }
    uv_tcp_nodelay(&p->tcp, 1);
    if (p->pool->tls) {
        /* The connect timer keeps running through the handshake. */
        p->tls = lp_tls_connect(p->pool->tls, p->pool->sni, &p->pool->session, &p->w->bufs);
        if (!p->tls) {
            peer_fail(p, LP_FAIL_CONNECT, 502, "cannot start TLS");
            return;
        }
        p->flags |= LP_PF_HANDSHAKE;
        if (lp_tls_handshake(p->tls) == LP_ERROR) {
            char why[200];
            snprintf(why, sizeof(why), "TLS handshake failed: %s", lp_tls_error(p->tls));
            peer_fail(p, LP_FAIL_CONNECT, 502, why);
            return;
        }
        if (!peer_tls_send(p))
            peer_update_reading(p);
        return;
    }
    peer_connected(p);
}

/* Connects p for req. LP_GONE when the request ended (the connect failed at once). */
static int peer_connect(lp_peer_t *p, lp_req_t *req)
{
    /* Bound to the request while connecting so that either side can abort the other. */
    p->req = req;
    req->peer = p;
    p->pool->active++;
    p->connect_req.data = p;
    int rc = uv_tcp_connect(&p->connect_req, &p->tcp, (const struct sockaddr *)&p->pool->addr.addr,
                            on_connect);
    if (rc) {
        char why[128];
        snprintf(why, sizeof(why), "connect failed: %s", uv_strerror(rc));
        return peer_fail(p, LP_FAIL_CONNECT, 502, why);
    }
    peer_timer(p, PT_CONNECT, T(p)->connect);
    return LP_OK;
}

/* The hash policy's key: set from Lua, or what the upstream's hash_on names. */
static lp_str_t hash_key(lp_req_t *req)
{
    const lp_upstream_conf_t *uc = req->upstream->conf;
    lp_h1_t *h = &req->h1;
    if (req->hash_key.base)
        return req->hash_key;
    size_t n = uc->hash_name ? strlen(uc->hash_name) : 0;
    switch (uc->hash_on) {
    case LP_HASH_IP:
        return (lp_str_t){req->conn->client_ip, strlen(req->conn->client_ip)};
    case LP_HASH_PATH: {
        const char *q = memchr(h->path.base, '?', h->path.len);
        return (lp_str_t){h->path.base, q ? (size_t)(q - h->path.base) : h->path.len};
    }
    case LP_HASH_HEADER: {
        const lp_header_t *hd = lp_h1_find(h, uc->hash_name, n);
        return hd ? hd->value : (lp_str_t){NULL, 0};
    }
    case LP_HASH_COOKIE:
        for (unsigned i = 0; i < h->nheaders; i++) {
            if (!LP_STR_IEQ(h->headers[i].name, "cookie"))
                continue;
            lp_str_t v = lp_kv_find(h->headers[i].value, ';', uc->hash_name, n);
            if (v.base)
                return v;
        }
        return (lp_str_t){NULL, 0};
    case LP_HASH_QUERY: {
        const char *q = memchr(h->path.base, '?', h->path.len);
        if (!q)
            return (lp_str_t){NULL, 0};
        lp_str_t qs = {q + 1, h->path.len - (size_t)(q + 1 - h->path.base)};
        return lp_kv_find(qs, '&', uc->hash_name, n);
    }
    }
    return (lp_str_t){NULL, 0};
}

/* The tried bitmap follows the set: rebuilt from the tried targets' serials when the set
 * changed since the last pick (from Lua, or a DNS answer), reset for another upstream. */
static void tried_sync(lp_req_t *req, lp_upstream_rt_t *u)
{
    if (req->tried_up == u && req->tried_version == u->version)
        return;
    memset(req->tried, 0, sizeof(req->tried));
    if (req->tried_up != u)
        req->ntried = 0;
    for (unsigned k = 0; k < req->ntried; k++)
        for (size_t i = 0; i < u->ntargets && i < LP_MAX_TRIED; i++)
            if (u->targets[i]->serial == req->tried_serial[k])
                lp_balancer_mark_tried(req->tried, i);
    req->tried_up = u;
    req->tried_version = u->version;
}

/* Picks an untried target; counts it active until lp_upstream_try_end. -1: none left. */
static int pick_target(lp_req_t *req)
{
    lp_upstream_rt_t *u = req->upstream;
    lp_str_t key = u->conf->hash_name || u->conf->hash_on != LP_HASH_IP || req->hash_key.base
                       ? hash_key(req)
                       : (lp_str_t){req->conn->client_ip, strlen(req->conn->client_ip)};
    uint64_t now = uv_hrtime();
    /* Health is shared by the workers: read it as the pick needs it. */
    uint64_t now_ms = lp_health_now();
    int any = 0;
    for (size_t i = 0; i < u->ntargets; i++) {
        u->bt[i].available = lp_health_available(u->targets[i]->health, now_ms);
        any |= u->bt[i].available;
    }
    if (!any) {
        req->no_healthy = 1;
        return -1;
    }
    tried_sync(req, u);
    int idx = lp_balancer_select(&u->bal, key.base, key.len,
                                 u->ntargets <= LP_MAX_TRIED ? req->tried : NULL, now);
    if (idx < 0)
        return -1;
    lp_target_rt_t *t = u->targets[idx];
    if ((size_t)idx < LP_MAX_TRIED)
        lp_balancer_mark_tried(req->tried, (size_t)idx);
    if (req->ntried < LP_TRIED_SERIALS)
        req->tried_serial[req->ntried++] = t->serial;
    u->bt[idx].active++;
    u->in_flight++;
    lp_target_ref(t);
    req->tgt = t;
    req->target = idx;
    size_t n = strlen(t->addr.text);
    if (n >= sizeof(req->target_addr))
        n = sizeof(req->target_addr) - 1;
    memcpy(req->target_addr, t->addr.text, n);
    req->target_addr[n] = 0;
    req->tries++;
    req->try_open = 1;
    req->t_try = now;
    return idx;
}

/* ---- waiting for a connection slot (max_connections, max_pending) ---- */

static void queue_remove(lp_req_t *req)
{
    lp_list_remove(&req->qlink);
    req->queued = 0;
    req->upstream->npending--;
}

static void on_queue_timer(uv_timer_t *tm);

/* Arms the queue's timer for its head's deadline (0: now). */
static void queue_arm(lp_upstream_rt_t *u, uint64_t ms)
{
    if (u->aux)
        uv_timer_start(&u->aux->queue_timer, on_queue_timer, ms, 0);
}

static uint64_t queue_deadline(const lp_req_t *req)
{
    uint64_t d = req->queued_at + req->upstream->conf->pending_timeout;
    return req->deadline && req->deadline < d ? req->deadline : d;
}

/* A slot freed, or the head's wait ran out: requests leave the queue in order. */
static void on_queue_timer(uv_timer_t *tm)
{
    lp_upstream_aux_t *a = tm->data;
    lp_upstream_rt_t *u;
    /* A request that ends here may free the generation (and u): look again each time. */
    while ((u = a->u) && !lp_list_empty(&u->pending)) {
        lp_req_t *req = LP_CONTAINER_OF(u->pending.next, lp_req_t, qlink);
        uint64_t now = uv_now(tm->loop);
        if (u->in_flight < u->conf->max_connections) {
            queue_remove(req);
            upstream_try(req);
            continue;
        }
        uint64_t d = queue_deadline(req);
        if (now < d) {
            queue_arm(u, d - now);
            return;
        }
        queue_remove(req);
        if (deadline_passed(req)) {
            req->fail_kind = LP_FAIL_TIMEOUT;
            lp_conn_upstream_failed(req, 504, "total_timeout reached while waiting");
            continue;
        }
        lp_log_warn("upstream %s: a request waited %llu ms for one of max_connections (%u): 503",
                    u->conf->name, (unsigned long long)(now - req->queued_at),
                    u->conf->max_connections);
        lp_conn_upstream_failed(req, 503,
                                "no connection to the upstream freed up in time (pending_timeout)");
    }
}

void lp_upstream_try_end(lp_req_t *req, int failed)
{
    if (req->queued)
        queue_remove(req); /* the request is gone while waiting for a slot */
    if (!req->try_open || !req->upstream || !req->tgt)
        return;
    lp_upstream_rt_t *u = req->upstream;
    lp_target_rt_t *t = req->tgt;
    req->try_open = 0;
    req->tgt = NULL;
    u->in_flight--;
    if (u->npending && u->in_flight < u->conf->max_connections)
        queue_arm(u, 0); /* the next loop turn: not inside the caller's callback */
    uint64_t now = uv_hrtime();
    uint64_t until = !failed && req->t_upstream_head > req->t_try ? req->t_upstream_head : now;
    if (t->idx >= 0) {
        /* Still in the set (a target removed meanwhile has left the balancer). */
        u->bt[t->idx].active--;
        lp_balancer_report(&u->bal, t->idx, until - req->t_try, failed, now);
    }
    if (!failed && req->status && lp_status_in(&u->conf->health.passive_statuses, req->status))
        failed = 1; /* a status the passive check counts as a failure */
    lp_health_report(t->health, &u->conf->health, failed, lp_health_now());
    lp_target_unref(t);
}

/* One try: a target, then an idle pooled connection to it or a new one. */
/* LP_GONE when the request ended. */
static int upstream_try(lp_req_t *req)
{
    lp_upstream_rt_t *u = req->upstream;
    if (deadline_passed(req)) {
        req->fail_kind = LP_FAIL_TIMEOUT;
        return lp_conn_upstream_failed(req, 504, "total_timeout reached");
    }
    int idx = pick_target(req);
    if (idx < 0) {
        uint64_t now = lp_health_now();
        if (req->no_healthy && now - u->last_warned >= 1000) {
            u->last_warned = now; /* once a second per worker, not per request */
            lp_log_warn("upstream %s: no available target (down, ejected or drained)",
                        u->conf->name);
        }
        /* A retry that finds no other target answers what the last try failed with; a
         * first try with every target unavailable 503 at once, without waiting. */
        if (req->fail_kind)
            return lp_conn_upstream_failed(req, failure_status(req), "no other target to retry");
        return lp_conn_upstream_failed(req, req->no_healthy ? 503 : 502,
                                       "no available target (down, ejected or drained)");
    }
    if (req->tries == 1)
        req->t_upstream = uv_hrtime();
    lp_pool_t *t = u->targets[idx]->pool;
    if (!lp_list_empty(&t->idle)) {
        lp_peer_t *p = LP_CONTAINER_OF(t->idle.next, lp_peer_t, link);
        lp_list_remove(&p->link);
        t->nidle--;
        p->flags |= LP_PF_REUSED;
        p->upstream = u;
        return peer_start_request(p, req);
    }
    lp_peer_t *p = peer_new(req->w, u, t);
    if (!p)
        return lp_conn_upstream_failed(req, 502, "out of memory");
    return peer_connect(p, req);
}

int lp_upstream_start(lp_req_t *req)
{
    lp_upstream_rt_t *u = req->upstream;
    if (req->tries)
        return upstream_try(req); /* a retry, after the upstream phase ran again */
    /* The request's first try: per-request state (conn.c resets tries and tried). */
    req->tried_up = NULL;
    req->ntried = 0;
    req->fail_kind = LP_FAIL_NONE;
    req->fail_status = 0;
    req->tgt = NULL;
    req->queued = 0;
    uint64_t now = uv_now(&req->w->loop);
    req->deadline = u->conf->total_timeout ? now + u->conf->total_timeout : 0;
    budget_count_request(u);
    if (u->conf->max_connections && u->in_flight + u->npending >= u->conf->max_connections) {
        /* Circuit breaking: wait in a bounded queue for a slot, beyond it fail fast. */
        if (u->npending >= u->conf->max_pending || !u->aux) {
            uint64_t ms = lp_health_now();
            if (ms - u->last_warned >= 1000) {
                u->last_warned = ms;
                lp_log_warn("upstream %s: %u requests in flight (max_connections) and %u waiting "
                            "(max_pending): 503",
                            u->conf->name, u->in_flight, u->npending);
            }
            return lp_conn_upstream_failed(req, 503,
                                           "too many requests for the upstream (max_connections)");
        }
        req->queued = 1;
        req->queued_at = now;
        lp_list_insert_tail(&u->pending, &req->qlink);
        if (u->npending++ == 0)
            queue_arm(u, queue_deadline(req) - now);
        return LP_OK;
    }
    return upstream_try(req);
}

/* ---- reading the response ---- */

static int peer_grow(lp_h1_t *h, size_t need)
{
    lp_peer_t *p = h->ud;
    return p->req ? lp_req_grow(p->req, 1, need) : -1;
}

static int on_resp_body(lp_h1_t *h, const char *at, size_t len)
{
    lp_peer_t *p = h->ud;
    return p->req ? lp_conn_response_body(p->req, at, len, p->rbuf) : 0;
}

static void peer_response_done(lp_peer_t *p)
{
    lp_req_t *req = p->req;
    if (llhttp_should_keep_alive(&p->h1.parser) && (p->flags & LP_PF_REQ_SENT))
        p->flags |= LP_PF_KEEPALIVE;
    peer_timer(p, PT_NONE, 0);
    /* Detach and pool first: finishing the request must not abort this connection, and
     * may drop the last reference to the generation whose upstream settings it uses. */
    p->req = NULL;
    req->peer = NULL;
    p->pool->active--;
    peer_release(p);
    lp_upstream_try_end(req, 0);
    lp_conn_response_done(req);
}

/* retry_on: a status the upstream lists sends an idempotent, bodiless request to another
 * target before anything reaches the client. Returns 1 when it did (p is closed). */
static int retry_on_status(lp_peer_t *p)
{
    lp_req_t *req = p->req;
    lp_upstream_rt_t *u = req->upstream;
    int status = lp_h1_status(&p->h1);
    if (!lp_status_in(&u->conf->retry_on, status) || !replayable(req) ||
        (req->flags & LP_RF_RESP_STARTED))
        return 0;
    if (!may_retry(req))
        return 0;
    req->status = status; /* counted by passive checks when they name it */
    const char *addr = p->pool->addr.text;
    p->flags &= ~LP_PF_REUSED;
    peer_close(p); /* its body is unread: the connection cannot be reused */
    lp_upstream_try_end(req, 1);
    req->status = 0;
    req->fail_kind = LP_FAIL_STATUS;
    req->fail_status = status;
    lp_log_info("upstream %s: status %d, retrying (try %d)", addr, status, req->tries + 1);
    upstream_next(req);
    return 1;
}

static void peer_parse(lp_peer_t *p)
{
    /* After the head the parser runs once more even without input: a response without a
     * body (204, 304, HEAD, Content-Length: 0) completes only then. */
    while (p->req && ((p->rbuf && p->rpos < p->rlen) || p->h1.after_head) &&
           !(p->flags & (LP_PF_CLOSING | LP_PF_PAUSED | LP_PF_LUA))) {
        lp_req_t *req = p->req;
        size_t used = 0;
        lp_h1_event_t ev =
            p->rbuf ? lp_h1_execute(&p->h1, p->rbuf->data + p->rpos, p->rlen - p->rpos, &used)
                    : lp_h1_execute(&p->h1, "", 0, &used);
        p->rpos += (uint32_t)used;
        switch (ev) {
        case LP_H1_NEED_MORE:
            break;
        case LP_H1_HEAD:
            lp_h1_resume(&p->h1);
            if (retry_on_status(p))
                return;
            req->deadline = 0; /* total_timeout ends with the response head */
            int hr = lp_conn_response_head(req, &p->h1);
            if (hr == LP_GONE)
                return;
            if (hr == LP_AGAIN) {
                /* The response phase waits: so does the body. */
                p->flags |= LP_PF_LUA;
                peer_update_reading(p);
                return;
            }
            if (hr == 500) {
                lp_conn_lua_resumed(req, LP_PHASE_RESPONSE, LP_ERROR); /* closes p */
                return;
            }
            if (hr) {
                p->flags &= ~LP_PF_REUSED;
                peer_fail(p, LP_FAIL_PROTOCOL, hr,
                          hr == 500 ? "response phase failed" : "response head too large");
                return;
            }
            break;
        case LP_H1_DONE:
            lp_h1_resume(&p->h1);
            peer_response_done(p);
            return;
        case LP_H1_UPGRADE:
            p->flags |= LP_PF_TUNNEL;
            peer_timer(p, PT_NONE, 0);
            lp_conn_tunnel_start(req);
            if (p->rpos < p->rlen && p->req) {
                lp_conn_tunnel_data(req->conn, p->rbuf->data + p->rpos, p->rlen - p->rpos, p->rbuf);
                p->rpos = p->rlen;
            }
            return;
        case LP_H1_ERROR:
        default: {
            char why[160];
            snprintf(why, sizeof(why), "invalid response: %s",
                     p->h1.err_reason ? p->h1.err_reason : "parse error");
            p->flags &= ~LP_PF_REUSED; /* the upstream answered: never retry */
            peer_fail(p, LP_FAIL_PROTOCOL, 502, why);
            return;
        }
        }
        if (p->req &&
            p->req->conn->out_pending + (p->req->conn->outb ? p->req->conn->outb->bytes : 0) >
                LP_HIGH_WATERMARK) {
            lp_conn_flush(p->req->conn);
            p->flags |= LP_PF_PAUSED;
        }
    }
}

/* Room for more response input: a fresh block once the last one is consumed (len 0 while
 * unparsed input is left). */
static uv_buf_t peer_rbuf_space(lp_peer_t *p)
{
    if (p->rbuf && (p->rbuf->refs > 1 || p->rpos < p->rlen)) {
        if (p->rpos < p->rlen)
            return uv_buf_init(NULL, 0);
        lp_buf_unref(p->rbuf);
        p->rbuf = NULL;
    }
    if (!p->rbuf)
        p->rbuf = lp_buf_get(&p->w->bufs, LP_BUF_SIZE);
    if (!p->rbuf)
        return uv_buf_init(NULL, 0);
    p->rpos = p->rlen = 0;
    return uv_buf_init(p->rbuf->data, (unsigned)p->rbuf->cap); /* a read block: 64 KiB */
}

static void on_peer_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    lp_peer_t *p = h->data;
    *buf = p->tls ? lp_tls_in_space(p->tls) : peer_rbuf_space(p);
}

static void peer_eof(lp_peer_t *p, int err)
{
    lp_req_t *req = p->req;
    if (!req) {
        peer_close(p); /* closed while pooled */
        return;
    }
    if (p->flags & LP_PF_TUNNEL) {
        lp_conn_t *c = req->conn;
        peer_close(p);
        lp_conn_tunnel_end(c);
        return;
    }
    if (!err && (p->flags & LP_PF_RESP_BYTES) && (p->h1.flags & LP_H1F_EOF_BODY) &&
        (req->flags & LP_RF_RESP_STARTED)) {
        if (lp_h1_finish(&p->h1) == LP_H1_DONE) {
            p->flags &= ~LP_PF_KEEPALIVE;
            lp_peer_t *keep = p;
            peer_timer(p, PT_NONE, 0);
            p->req = NULL;
            req->peer = NULL;
            p->pool->active--;
            lp_conn_response_done(req);
            peer_close(keep);
            return;
        }
    }
    if (p->flags & LP_PF_RESP_BYTES)
        p->flags &= ~LP_PF_REUSED;
    peer_fail(p, LP_FAIL_RESET, 502,
              (req->flags & LP_RF_RESP_STARTED) ? "upstream closed mid-response"
              : err                             ? uv_strerror(err)
                                                : "upstream closed the connection");
}

/* New response bytes sit in rbuf (plain, or decrypted): parse them or relay them. */
static void peer_input(lp_peer_t *p)
{
    if (!p->req) {
        /* Bytes from an idle pooled connection: it is out of sync; drop it. */
        peer_close(p);
        return;
    }
    p->flags |= LP_PF_RESP_BYTES;
    if (p->flags & LP_PF_TUNNEL) {
        lp_conn_tunnel_data(p->req->conn, p->rbuf->data + p->rpos, p->rlen - p->rpos, p->rbuf);
        p->rpos = p->rlen;
        if (p->req && p->req->conn->out_pending > LP_HIGH_WATERMARK)
            p->flags |= LP_PF_PAUSED;
        peer_update_reading(p);
        return;
    }
    if (p->tmode == PT_READ)
        peer_timer(p, PT_READ, T(p)->read);
    lp_conn_t *c = p->req->conn;
    peer_parse(p);
    if (!(c->flags & LP_CF_CLOSING))
        lp_conn_flush(c);
    if (!(p->flags & LP_PF_CLOSING))
        peer_update_reading(p);
}

/* TLS: decrypts and processes buffered input until none is left or processing pauses. */
static void peer_tls_pump(lp_peer_t *p)
{
    while (p->tls && !(p->flags & (LP_PF_CLOSING | LP_PF_PAUSED | LP_PF_LUA)) &&
           !(p->rbuf && p->rpos < p->rlen)) {
        uv_buf_t room = peer_rbuf_space(p);
        if (!room.len)
            break;
        long n = lp_tls_read(p->tls, room.base, room.len);
        if (n == 0) {
            /* Nothing for the application (a session ticket, say): hold no block. */
            lp_buf_unref(p->rbuf);
            p->rbuf = NULL;
            p->rpos = p->rlen = 0;
            break;
        }
        if (n < 0) {
            if (n == LP_TLS_ERROR)
                lp_log_info("upstream %s: TLS error: %s", p->pool->addr.text, lp_tls_error(p->tls));
            peer_eof(p, n == LP_TLS_EOF ? 0 : UV_EPROTO);
            return;
        }
        p->rlen += (uint32_t)n;
        peer_input(p);
    }
    if (p->tls && !(p->flags & LP_PF_CLOSING) && !peer_tls_send(p))
        lp_tls_in_trim(p->tls);
}

/* Ciphertext arrived: the handshake, then decrypted input. */
static void peer_tls_input(lp_peer_t *p, size_t n)
{
    lp_tls_in_commit(p->tls, n);
    if (p->flags & LP_PF_HANDSHAKE) {
        int rc = lp_tls_handshake(p->tls);
        if (peer_tls_send(p))
            return;
        if (rc == LP_AGAIN)
            return;
        if (rc == LP_ERROR) {
            char why[200];
            snprintf(why, sizeof(why), "TLS handshake failed: %s", lp_tls_error(p->tls));
            peer_fail(p, LP_FAIL_CONNECT, 502, why);
            return;
        }
        peer_connected(p);
        if (p->flags & LP_PF_CLOSING)
            return;
    }
    peer_tls_pump(p);
}

static void on_peer_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    lp_peer_t *p = s->data;
    if (nread > 0 && p->tls) {
        peer_tls_input(p, (size_t)nread);
        return;
    }
    if (nread > 0) {
        p->rlen += (uint32_t)nread;
        peer_input(p);
        return;
    }
    if (nread == 0)
        return;
    if (nread == UV_ENOBUFS) {
        peer_update_reading(p);
        return;
    }
    if (p->tls && nread == UV_EOF && !(p->flags & LP_PF_HANDSHAKE)) {
        /* What is still buffered comes first; it may end in a close_notify. */
        lp_tls_in_eof(p->tls);
        peer_tls_pump(p);
        if ((p->flags & LP_PF_CLOSING) || !p->tls)
            return;
    }
    peer_eof(p, nread == UV_EOF ? 0 : (int)nread);
}

static void peer_update_reading(lp_peer_t *p)
{
    if (p->flags & LP_PF_CLOSING)
        return;
    int want = (p->flags & (LP_PF_CONNECTED | LP_PF_HANDSHAKE)) &&
               !(p->flags & (LP_PF_PAUSED | LP_PF_LUA)) && !(p->rbuf && p->rpos < p->rlen) &&
               !(p->tls && lp_tls_in_full(p->tls));
    if (want && !(p->flags & LP_PF_READING)) {
        if (uv_read_start((uv_stream_t *)&p->tcp, on_peer_alloc, on_peer_read) == 0)
            p->flags |= LP_PF_READING;
    } else if (!want && (p->flags & LP_PF_READING)) {
        uv_read_stop((uv_stream_t *)&p->tcp);
        p->flags &= ~LP_PF_READING;
    }
}

void lp_peer_resume(lp_peer_t *p)
{
    if (!(p->flags & LP_PF_PAUSED) || (p->flags & LP_PF_CLOSING))
        return;
    p->flags &= ~LP_PF_PAUSED;
    if (p->flags & LP_PF_TUNNEL) {
        peer_tls_pump(p);
        if (!(p->flags & LP_PF_CLOSING))
            peer_update_reading(p);
        return;
    }
    peer_process_pending(p);
}

/* Input held back by a pause or a suspended response phase. */
static void peer_process_pending(lp_peer_t *p)
{
    lp_conn_t *c = p->req ? p->req->conn : NULL;
    peer_parse(p);
    if (c && !(c->flags & LP_CF_CLOSING))
        lp_conn_flush(c);
    peer_tls_pump(p); /* and what TLS still holds */
    if (!(p->flags & LP_PF_CLOSING))
        peer_update_reading(p);
}

void lp_peer_continue(lp_peer_t *p)
{
    p->flags &= ~LP_PF_LUA;
    peer_process_pending(p);
}

/* ---- tunnel ---- */

void lp_peer_tunnel_data(lp_peer_t *p, const char *at, size_t len, lp_buf_t *pin)
{
    lp_wbatch_t *wb = peer_outb(p, 1, 0);
    if (wb)
        lp_wbatch_add(wb, at, len, pin);
    lp_peer_flush(p);
}

void lp_peer_tunnel_eof(lp_peer_t *p)
{
    /* The client is done: half-close towards the upstream is not worth the state;
     * finish both sides once the queued bytes are out. */
    lp_conn_t *c = p->req ? p->req->conn : NULL;
    peer_close(p);
    if (c)
        lp_conn_tunnel_end(c);
}

static void close_idle_of(lp_pool_t *t)
{
    while (!lp_list_empty(&t->idle))
        peer_close(LP_CONTAINER_OF(t->idle.next, lp_peer_t, link));
}

void lp_upstream_close_idle(lp_worker_t *w, uint64_t older_than)
{
    /* older_than 0: every pool (shutdown); else pools no generation since uses. */
    for (lp_pool_t *t = w->pools; t; t = t->next)
        if (!older_than || t->gen < older_than)
            close_idle_of(t);
}
