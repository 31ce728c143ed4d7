#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "conn.h"
#include "health.h"
#include "log.h"
#include "lua_vm.h"
#include "relay.h"
#include "req_body.h"
#include "request.h"
#include "trace.h"
#include "targets.h"
#include "tls.h"
#include "upstream.h"
#include "upstream_head.h"
#include "upstream_try.h"
#include "h2_up.h"
#include "h2_util.h"

/* What the upstream connection timer is timing (after the endpoint's own modes). */
enum {
    PT_NONE = LP_EP_TM_NONE,
    PT_BROKEN = LP_EP_TM_BROKEN,
    PT_CONNECT = LP_EP_TM_OWNER,
    PT_SEND,
    PT_READ,
    PT_IDLE
};

static void peer_close(lp_peer_t *p);
static int peer_start_request(lp_peer_t *p, lp_req_t *req);
static void peer_update_reading(lp_peer_t *p);
static void peer_process_pending(lp_peer_t *p);
static int on_resp_body(lp_h1_t *h, const char *at, size_t len);
static int peer_connect(lp_peer_t *p, lp_req_t *req);
static int peer_grow(lp_h1_t *h, size_t need);

static const lp_timeouts_t *T(lp_peer_t *p)
{
    return &lp_ep_worker(&p->ep)->config->timeouts;
}

static lp_peer_t *peer_of(lp_endpoint_t *ep)
{
    return LP_CONTAINER_OF(ep, lp_peer_t, ep);
}

static void peer_timer(lp_peer_t *p, int mode, uint64_t ms)
{
    if (mode != PT_NONE && mode != PT_IDLE && mode != PT_BROKEN && p->req && p->req->try.deadline) {
        /* total_timeout: no per-try timer runs past the request's deadline. */
        uint64_t now = uv_now(p->ep.env->loop);
        uint64_t left = p->req->try.deadline > now ? p->req->try.deadline - now : 0;
        if (left < ms)
            ms = left;
    }
    lp_ep_timer(&p->ep, mode, ms);
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

/* ---- lifetime ---- */

static void peer_on_closed(lp_endpoint_t *ep)
{
    lp_peer_t *p = peer_of(ep);
    lp_list_remove(&p->all);
    free(p);
}

static void peer_close(lp_peer_t *p)
{
    if (p->ep.flags & LP_EPF_CLOSING)
        return;
    if (!lp_list_empty(&p->link)) {
        lp_list_remove(&p->link);
        p->pool->nidle--;
    }
    if (p->req) {
        p->req->try.peer = NULL;
        p->req = NULL;
        p->pool->active--;
    }
    lp_ep_close(&p->ep);
}

void lp_peer_abort(lp_peer_t *p)
{
    if (p->flags & LP_PF_H2) {
        lp_h2u_abort(p);
        return;
    }
    peer_close(p);
}

int lp_peer_full(const lp_peer_t *p)
{
    return (p->flags & LP_PF_H2) ? lp_h2u_full(p) : lp_relay_full(&p->ep);
}

static const lp_endpoint_ops_t peer_ops;

static lp_peer_t *peer_new(lp_worker_t *w, lp_upstream_rt_t *u, lp_pool_t *t)
{
    lp_peer_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    lp_ep_init(&p->ep, &w->ep_env, &peer_ops);
    p->upstream = u;
    p->pool = t;
    lp_list_init(&p->link);
    lp_list_insert_tail(&w->peers, &p->all);
    return p;
}

/* Returns a connection to its target's pool, or closes it. */
static void peer_release(lp_peer_t *p)
{
    lp_pool_t *t = p->pool;
    const lp_upstream_conf_t *uc = p->upstream->conf;
    if (p->req) {
        p->req->try.peer = NULL;
        p->req = NULL;
        t->active--;
    }
    int reusable = (p->flags & LP_PF_KEEPALIVE) && !(p->ep.flags & LP_EPF_CLOSING) &&
                   (!p->ep.rbuf || p->ep.rpos >= p->ep.rlen) && !p->ep.out_pending &&
                   t->nidle < uc->keepalive && p->nrequests < uc->keepalive_requests &&
                   !lp_ep_worker(&p->ep)->stopping;
    if (!reusable) {
        peer_close(p);
        return;
    }
    if (p->ep.rbuf) {
        lp_buf_unref(p->ep.rbuf);
        p->ep.rbuf = NULL;
        p->ep.rpos = p->ep.rlen = 0;
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

/* The connection failed: the try moves to a fresh connection, another target, or the
 * client gets `status`. p is closed. LP_GONE when the request ended. */
static int peer_fail(lp_peer_t *p, int kind, int status, const char *why)
{
    lp_req_t *req = p->req;
    if (!req) {
        peer_close(p);
        return LP_OK;
    }
    /* A req:set_body() replacement is held whole: it can go again, as a bodiless request. */
    int retry = (p->flags & LP_PF_REUSED) && !(p->flags & LP_PF_RESP_BYTES) &&
                (p->body_out == 0 || lp_req_body_replaced(req)) &&
                !(req->flags & LP_RF_RESP_STARTED) && !lp__try_deadline_passed(req);
    /* Another target may take the request when nothing reached this one (connect failed or
     * timed out), or when it reset before any response byte and the request can be sent
     * again (idempotent, no body). */
    int elsewhere = !(req->flags & LP_RF_RESP_STARTED) && !retry &&
                    (!(p->flags & LP_PF_CONNECTED) ||
                     (!(p->flags & LP_PF_RESP_BYTES) && lp__try_replayable(req)));
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
    req->try.fail_kind = (uint8_t)kind;
    req->try.fail_status = 0;
    if (elsewhere && lp__try_may_retry(req)) {
        lp_log_warn("upstream %s: %s; retrying (try %d)%s", addr, why, req->try.tries + 1,
                    lp_trace_tag(req));
        return lp__try_next(req);
    }
    lp_log_warn("upstream %s: %s (%s %.*s)%s", addr, why, llhttp_method_name(req->method),
                (int)req->h1.path.len, req->h1.path.base, lp_trace_tag(req));
    return lp_conn_upstream_failed(req, status, why);
}

static void peer_on_timeout(lp_endpoint_t *ep, int mode)
{
    lp_peer_t *p = peer_of(ep);
    if (mode != PT_IDLE && mode != PT_BROKEN && p->req && lp__try_deadline_passed(p->req)) {
        p->flags &= ~LP_PF_REUSED;
        peer_fail(p, LP_FAIL_TIMEOUT, 504, "total_timeout reached"); /* no retry after it */
        return;
    }
    switch (mode) {
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

static void peer_on_written(lp_endpoint_t *ep, int status)
{
    lp_peer_t *p = peer_of(ep);
    if (status < 0) {
        peer_fail(p, LP_FAIL_RESET, 502, uv_strerror(status));
        return;
    }
    if (p->ep.tmode == PT_SEND) {
        if (p->ep.out_pending)
            peer_timer(p, PT_SEND, T(p)->send);
        else if ((p->flags & LP_PF_REQ_SENT) && !(p->flags & LP_PF_TUNNEL))
            peer_timer(p, PT_READ, T(p)->read); /* a tunnel may stay idle */
        else
            peer_timer(p, PT_NONE, 0);
    }
    if (lp_relay_drained(&p->ep) && p->req) {
        if (p->flags & LP_PF_TUNNEL)
            lp_conn_tunnel_resume(p->req->conn);
        else
            lp_conn_resume_body(p->req);
    }
}

void lp_peer_flush(lp_peer_t *p)
{
    if (p->flags & LP_PF_H2) {
        lp_h2u_flush(p);
        return;
    }
    /* Before the connection (and its TLS handshake) is up, the request waits in outb. */
    if (lp_ep_flush(&p->ep))
        return;
    /* In a tunnel only once the relay is full, as on the client side: the client stops
     * being read then, and would never be heard of again if the upstream never read. */
    if (p->ep.tmode != PT_SEND && p->ep.out_pending &&
        (!(p->flags & LP_PF_TUNNEL) || lp_relay_full(&p->ep)))
        peer_timer(p, PT_SEND, T(p)->send);
}

void lp_peer_body(lp_peer_t *p, const char *at, size_t len, lp_buf_t *pin, int chunked)
{
    if (p->flags & LP_PF_H2) {
        lp_h2u_body(p, at, len);
        return;
    }
    if (!len || (p->ep.flags & LP_EPF_CLOSING))
        return;
    p->body_out += len;
    /* Re-chunked: extensions and odd framing never reach the upstream. */
    lp_relay_body(&p->ep, at, len, pin, chunked);
}

void lp_peer_body_end(lp_peer_t *p, int chunked)
{
    if (p->flags & LP_PF_H2) {
        lp_h2u_body_end(p);
        return;
    }
    if (p->ep.flags & LP_EPF_CLOSING)
        return;
    if (chunked) {
        lp_wbatch_t *wb = lp_ep_outb(&p->ep, 1, 0);
        lp_req_t *req = p->req;
        lp_buf_t *b =
            wb && req && req->trailers ? lp_buf_get(&req->w->bufs, req->trailers_len + 5) : NULL;
        if (b) {
            /* The client's HTTP/2 trailers, as chunked trailers. */
            memcpy(b->data, "0\r\n", 3);
            memcpy(b->data + 3, req->trailers, req->trailers_len);
            memcpy(b->data + 3 + req->trailers_len, "\r\n", 2);
            lp_wbatch_add(wb, b->data, req->trailers_len + 5, b);
            lp_buf_unref(b);
        } else if (wb) {
            lp_wbatch_add(wb, "0\r\n\r\n", 5, NULL);
        }
    }
    p->flags |= LP_PF_REQ_SENT;
    if (p->ep.tmode != PT_SEND)
        peer_timer(p, PT_READ, T(p)->read);
}

/* ---- the request head ---- */

/* The head (upstream_head.h) as HTTP/1.1 text; 0 when it does not fit in cap. Sized
 * first, then copied without a check per piece: every request's head goes through here. */
static size_t build_request_head(const lp_uphead_t *u, char *out, size_t cap)
{
    static const char version[] = " HTTP/1.1\r\nHost: ";
    size_t mlen = strlen(u->method);
    size_t need = mlen + 1 + u->path.len + sizeof(version) - 1 + u->authority.len + 4;
    for (unsigned i = 0; i < u->n; i++)
        need += u->fields[i].name.len + u->fields[i].value.len + 4;
    if (need > cap)
        return 0;
    char *o = out;
    memcpy(o, u->method, mlen);
    o += mlen;
    *o++ = ' ';
    memcpy(o, u->path.base, u->path.len);
    o += u->path.len;
    memcpy(o, version, sizeof(version) - 1);
    o += sizeof(version) - 1;
    memcpy(o, u->authority.base, u->authority.len);
    o += u->authority.len;
    for (unsigned i = 0; i < u->n; i++) {
        const lp_header_t *hd = &u->fields[i];
        memcpy(o, "\r\n", 2);
        memcpy(o + 2, hd->name.base, hd->name.len);
        o += 2 + hd->name.len;
        memcpy(o, ": ", 2);
        memcpy(o + 2, hd->value.base, hd->value.len);
        o += 2 + hd->value.len;
    }
    memcpy(o, "\r\n\r\n", 4);
    return (size_t)(o + 4 - out);
}

/* ---- starting a request ---- */

/* Binds req to the connected p and writes its head and what there is of its body.
 * LP_GONE when the request ended. */
static int peer_start_request(lp_peer_t *p, lp_req_t *req)
{
    lp_worker_t *w = lp_ep_worker(&p->ep);
    p->req = req;
    req->try.peer = p;
    p->pool->active++;
    p->nrequests++;
    p->body_out = 0;
    p->flags &= ~(LP_PF_RESP_BYTES | LP_PF_REQ_SENT | LP_PF_KEEPALIVE | LP_PF_PAUSED);
    if (!req->resp.arena) {
        req->resp.arena = lp_buf_get(&w->bufs, LP_BUF_SMALL); /* grows: peer_grow */
        if (!req->resp.arena)
            return peer_fail(p, LP_FAIL_PROTOCOL, 502, "out of memory");
    }
    lp_peer_resp_init(p, req, on_resp_body);

    lp_buf_t *hb = NULL;
    size_t n = 0;
    lp_uphead_t u;
    if (!lp_uphead_build(&u, req, p->pool, LP_UPHEAD_H1)) {
        for (size_t cap = LP_BUF_SMALL; !n && cap <= 16 * LP_BUF_SIZE; cap *= 16) {
            if (hb)
                lp_buf_unref(hb);
            if (!(hb = lp_buf_get(&w->bufs, cap)))
                break;
            n = build_request_head(&u, hb->data, hb->cap);
        }
        lp_uphead_free(&u);
    }
    lp_wbatch_t *wb = n ? lp_ep_outb(&p->ep, 1, 0) : NULL;
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
    if (lp_req_body_replaced(req)) {
        /* req:set_body(): the whole replacement now; the client's body is read and dropped
         * (conn.c), and the request is sent whatever of it is still to come. */
        lp_peer_body(p, req->new_body->data, req->new_body_len, req->new_body, 0);
        lp_peer_body_end(p, 0);
    } else {
        lp_conn_take_body(req, &gathered, &glen);
        if (gathered && glen)
            lp_peer_body(p, gathered->data, glen, gathered, (req->h1.flags & LP_H1F_CHUNKED) != 0);
        if (req->state == LP_RS_DONE)
            lp_peer_body_end(p, (req->h1.flags & LP_H1F_CHUNKED) != 0);
    }
    peer_update_reading(p);
    /* The client side may finish the request right here (a bad body, say). */
    if (lp_conn_upstream_ready(req) == LP_GONE)
        return LP_GONE;
    if (req->try.peer == p)
        lp_peer_flush(p);
    return LP_OK;
}

/* Connected (and TLS established): the request bound while connecting goes out. */
static void peer_connected(lp_peer_t *p)
{
    p->flags |= LP_PF_CONNECTED;
    p->ep.flags |= LP_EPF_WRITABLE;
    p->flags &= ~LP_PF_HANDSHAKE;
    lp_req_t *req = p->req;
    p->req = NULL;
    p->pool->active--;
    if (!req)
        return;
    req->try.peer = NULL;
    (void)peer_start_request(p, req);
}

static void on_connect(uv_connect_t *cr, int status)
{
    lp_peer_t *p = cr->data;
    if (p->ep.flags & LP_EPF_CLOSING)
        return;
    if (status < 0) {
        char why[128];
        snprintf(why, sizeof(why), "connect failed: %s", uv_strerror(status));
        /* Not a stale pooled connection: no retry, the target is down. */
        p->flags &= ~LP_PF_REUSED;
        peer_fail(p, LP_FAIL_CONNECT, 502, why);
        return;
    }
    uv_tcp_nodelay(&p->ep.tcp, 1);
    if (p->pool->tls) {
        /* The connect timer keeps running through the handshake. */
        int rc = lp_ep_tls_connect(&p->ep, p->pool->tls, p->pool->sni, &p->pool->session);
        if (rc == LP_ENOMEM) {
            peer_fail(p, LP_FAIL_CONNECT, 502, "cannot start TLS");
            return;
        }
        p->flags |= LP_PF_HANDSHAKE;
        if (rc == LP_ERROR) {
            char why[200];
            snprintf(why, sizeof(why), "TLS handshake failed: %s", lp_tls_error(p->ep.tls));
            peer_fail(p, LP_FAIL_CONNECT, 502, why);
            return;
        }
        if (!(p->ep.flags & LP_EPF_BROKEN))
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
    req->try.peer = p;
    p->pool->active++;
    p->connect_req.data = p;
    int rc = uv_tcp_connect(&p->connect_req, &p->ep.tcp,
                            (const struct sockaddr *)&p->pool->addr.addr, on_connect);
    if (rc) {
        char why[128];
        snprintf(why, sizeof(why), "connect failed: %s", uv_strerror(rc));
        return peer_fail(p, LP_FAIL_CONNECT, 502, why);
    }
    peer_timer(p, PT_CONNECT, T(p)->connect);
    return LP_OK;
}

int lp__peer_start(lp_peer_t *p, lp_req_t *req)
{
    p->upstream = req->upstream;
    return peer_start_request(p, req);
}

int lp__peer_open(lp_req_t *req, lp_pool_t *t)
{
    lp_peer_t *p = peer_new(req->w, req->upstream, t);
    if (!p)
        return lp_conn_upstream_failed(req, 502, "out of memory");
    return peer_connect(p, req);
}

/* ---- waiting for a connection slot (max_connections, max_pending) ---- */

/* ---- reading the response ---- */

static int peer_grow(lp_h1_t *h, size_t need)
{
    lp_peer_t *p = h->ud;
    return p->req ? lp_req_grow(p->req, 1, need) : -1;
}

void lp_peer_resp_init(lp_peer_t *p, lp_req_t *req, lp_h1_body_cb on_body)
{
    const lp_limits_t *lim = &req->g->config->limits;
    lp_h1_init(&p->h1, HTTP_RESPONSE, p, on_body);
    p->h1.max_header_size = lim->max_header_size;
    if (p->h1.max_header_size > LP_BUF_SIZE - 1024)
        p->h1.max_header_size = LP_BUF_SIZE - 1024;
    lp_h1_set_storage(&p->h1, req->resp.arena->data, req->resp.arena->cap, req->resp.headers,
                      lim->max_headers);
    if (req->flags & LP_RF_HEAD)
        p->h1.flags |= LP_H1F_HEAD_REQ;
    p->h1.grow = peer_grow;
}

/* The response phase or a response_body filter waits: the response is held (no reading,
 * no parsing) and its read timeout stops, since the upstream is not the one late; it runs
 * again in lp_peer_continue. */
static void peer_lua_wait(lp_peer_t *p)
{
    p->flags |= LP_PF_LUA;
    if (p->ep.tmode == PT_READ)
        peer_timer(p, PT_NONE, 0);
}

static int on_resp_body(lp_h1_t *h, const char *at, size_t len)
{
    lp_peer_t *p = h->ud;
    int rc = p->req ? lp_conn_response_body(p->req, at, len, p->ep.rbuf) : LP_OK;
    if (rc == LP_OK)
        return 0;
    if (rc == LP_AGAIN) {
        /* A response_body filter waits: no more of the body until it is done
         * (lp_peer_continue), and no reading meanwhile (backpressure, not buffering). */
        peer_lua_wait(p);
        return LP_H1_CB_PAUSE;
    }
    p->flags |= LP_PF_FILTER_FAILED; /* the proxy's Lua failed, not the upstream */
    return -1;
}

/* A chunked response's trailers (parsed after its head's fields) go with the response. */
static void peer_trailers(lp_peer_t *p, lp_req_t *req)
{
    if (!(p->h1.flags & LP_H1F_CHUNKED) || p->h1.nheaders <= p->head_fields)
        return;
    char *text = NULL;
    size_t len = 0;
    for (unsigned i = p->head_fields; i < p->h1.nheaders; i++) {
        const lp_header_t *hd = &p->h1.headers[i];
        if (lp_h1_is_hop_by_hop(&p->h1, hd->name) ||
            lp_h2_trailer_forbidden(hd->name.base, hd->name.len))
            continue;
        if (lp_h2_text_add(&text, &len, hd->name.base, hd->name.len, hd->value.base,
                           hd->value.len)) {
            free(text);
            return; /* out of memory: dropped, as before trailers were passed on */
        }
    }
    free(req->resp.trailers);
    req->resp.trailers = text;
    req->resp.trailers_len = len;
}

static void peer_response_done(lp_peer_t *p)
{
    lp_req_t *req = p->req;
    peer_trailers(p, req);
    if (llhttp_should_keep_alive(&p->h1.parser) && (p->flags & LP_PF_REQ_SENT))
        p->flags |= LP_PF_KEEPALIVE;
    peer_timer(p, PT_NONE, 0);
    /* Detach and pool first: finishing the request must not abort this connection, and
     * may drop the last reference to the generation whose upstream settings it uses. */
    p->req = NULL;
    req->try.peer = NULL;
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
    if (!lp_status_in(&u->conf->retry_on, status) || !lp__try_replayable(req) ||
        (req->flags & LP_RF_RESP_STARTED))
        return 0;
    if (!lp__try_may_retry(req))
        return 0;
    req->resp.sent_status = status; /* counted by passive checks when they name it */
    const char *addr = p->pool->addr.text;
    p->flags &= ~LP_PF_REUSED;
    peer_close(p); /* its body is unread: the connection cannot be reused */
    lp_upstream_try_end(req, 1);
    req->resp.sent_status = 0;
    req->try.fail_kind = LP_FAIL_STATUS;
    req->try.fail_status = status;
    lp_log_info("upstream %s: status %d, retrying (try %d)%s", addr, status, req->try.tries + 1,
                lp_trace_tag(req));
    lp__try_next(req);
    return 1;
}

static void peer_parse(lp_peer_t *p)
{
    /* After the head the parser runs once more even without input: a response without a
     * body (204, 304, HEAD, Content-Length: 0) completes only then. */
    while (p->req && ((p->ep.rbuf && p->ep.rpos < p->ep.rlen) || p->h1.after_head) &&
           !(p->ep.flags & LP_EPF_CLOSING) && !(p->flags & (LP_PF_PAUSED | LP_PF_LUA))) {
        lp_req_t *req = p->req;
        size_t used = 0;
        lp_h1_event_t ev = p->ep.rbuf ? lp_h1_execute(&p->h1, p->ep.rbuf->data + p->ep.rpos,
                                                      p->ep.rlen - p->ep.rpos, &used)
                                      : lp_h1_execute(&p->h1, "", 0, &used);
        p->ep.rpos += (uint32_t)used;
        switch (ev) {
        case LP_H1_NEED_MORE:
            break;
        case LP_H1_HEAD:
            lp_h1_resume(&p->h1);
            p->head_fields = p->h1.nheaders;
            if (retry_on_status(p))
                return;
            req->try.deadline = 0; /* total_timeout ends with the response head */
            int hr = lp_conn_response_head(req, &p->h1);
            if (hr == LP_GONE)
                return;
            if (hr == LP_AGAIN) {
                /* The response phase waits: so does the body. */
                peer_lua_wait(p);
                peer_update_reading(p);
                return;
            }
            if (hr == 500) {
                lp_conn_lua_resumed(req, LP_PHASE_RESPONSE, LP_ERROR); /* closes p */
                return;
            }
            if (hr) {
                p->flags &= ~LP_PF_REUSED;
                peer_fail(p, LP_FAIL_PROTOCOL, hr, "response head too large");
                return;
            }
            break;
        case LP_H1_DONE:
            lp_h1_resume(&p->h1);
            peer_response_done(p);
            return;
        case LP_H1_PAUSED:
            /* A body filter waits (on_resp_body set LP_PF_LUA). */
            lp_h1_resume(&p->h1);
            if (!(p->ep.flags & LP_EPF_CLOSING))
                peer_update_reading(p);
            return;
        case LP_H1_UPGRADE:
            p->flags |= LP_PF_TUNNEL;
            peer_timer(p, PT_NONE, 0);
            lp_conn_tunnel_start(req);
            if (p->ep.rpos < p->ep.rlen && p->req)
                lp_conn_tunnel_from(req->conn, &p->ep);
            return;
        case LP_H1_ERROR:
        default: {
            if (p->flags & LP_PF_FILTER_FAILED) {
                /* A response_body filter failed: the upstream did nothing wrong, so neither
                 * its health nor the balancer hears of a failure. The client's answer is
                 * cut (closed): the head may already be on its way. */
                lp_upstream_try_end(req, 0);
                peer_close(p); /* its body is unread: the connection cannot be reused */
                (void)lp_conn_upstream_failed(req, 500, "response_body filter failed");
                return;
            }
            char why[160];
            snprintf(why, sizeof(why), "invalid response: %s",
                     p->h1.err_reason ? p->h1.err_reason : "parse error");
            p->flags &= ~LP_PF_REUSED; /* the upstream answered: never retry */
            peer_fail(p, LP_FAIL_PROTOCOL, 502, why);
            return;
        }
        }
        if (p->req && lp_conn_req_full(p->req)) {
            lp_conn_flush(p->req->conn);
            p->flags |= LP_PF_PAUSED;
        }
    }
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
            req->try.peer = NULL;
            p->pool->active--;
            lp_upstream_try_end(req, 0); /* before the log phase, which may wait */
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
        lp_conn_tunnel_from(p->req->conn, &p->ep);
        if (p->req && lp_relay_full(&p->req->conn->ep))
            p->flags |= LP_PF_PAUSED;
        peer_update_reading(p);
        return;
    }
    if (p->ep.tmode == PT_READ)
        peer_timer(p, PT_READ, T(p)->read);
    lp_conn_t *c = p->req->conn;
    peer_parse(p);
    if (!(c->ep.flags & LP_EPF_CLOSING))
        lp_conn_flush(c);
    if (!(p->ep.flags & LP_EPF_CLOSING))
        peer_update_reading(p);
}

/* TLS: decrypts and processes buffered input until none is left or processing pauses. */
static void peer_tls_pump(lp_peer_t *p)
{
    while (p->ep.tls && !(p->ep.flags & LP_EPF_CLOSING) &&
           !(p->flags & (LP_PF_PAUSED | LP_PF_LUA)) && !(p->ep.rbuf && p->ep.rpos < p->ep.rlen)) {
        int err;
        int rc = lp_ep_tls_fill(&p->ep, &err);
        if (rc == 0)
            break;
        if (rc < 0) {
            if (err)
                lp_log_info("upstream %s: TLS error: %s", p->pool->addr.text,
                            lp_tls_error(p->ep.tls));
            peer_eof(p, err);
            return;
        }
        peer_input(p);
    }
    if (p->ep.tls && !(p->ep.flags & LP_EPF_CLOSING) && !lp_ep_flush_tls(&p->ep))
        lp_tls_in_trim(p->ep.tls);
}

/* Ciphertext arrived (the endpoint gave it to the session): the handshake, then
 * decrypted input. */
static void peer_tls_input(lp_peer_t *p)
{
    if (p->flags & LP_PF_HANDSHAKE) {
        int rc = lp_ep_tls_handshake(&p->ep);
        if (rc == LP_AGAIN)
            return;
        if (rc == LP_ERROR) {
            char why[200];
            snprintf(why, sizeof(why), "TLS handshake failed: %s", lp_tls_error(p->ep.tls));
            peer_fail(p, LP_FAIL_CONNECT, 502, why);
            return;
        }
        peer_connected(p);
        if (p->ep.flags & LP_EPF_CLOSING)
            return;
    }
    peer_tls_pump(p);
}

static void peer_on_input(lp_endpoint_t *ep, ssize_t nread)
{
    lp_peer_t *p = peer_of(ep);
    if (nread > 0) {
        if (p->ep.tls)
            peer_tls_input(p);
        else
            peer_input(p);
        return;
    }
    if (p->ep.tls && nread == UV_EOF && !(p->flags & LP_PF_HANDSHAKE)) {
        /* What is still buffered comes first; it may end in a close_notify. */
        lp_tls_in_eof(p->ep.tls);
        peer_tls_pump(p);
        if ((p->ep.flags & LP_EPF_CLOSING) || !p->ep.tls)
            return;
    }
    peer_eof(p, nread == UV_EOF ? 0 : (int)nread);
}

static void peer_update_reading(lp_peer_t *p)
{
    int want = (p->flags & (LP_PF_CONNECTED | LP_PF_HANDSHAKE)) &&
               !(p->flags & (LP_PF_PAUSED | LP_PF_LUA)) && !(p->ep.rbuf && p->ep.rpos < p->ep.rlen);
    lp_ep_reading(&p->ep, want);
}

static const lp_endpoint_ops_t peer_ops = {
    .input = peer_on_input,
    .written = peer_on_written,
    .timeout = peer_on_timeout,
    .closed = peer_on_closed,
};

void lp_peer_resume(lp_peer_t *p)
{
    if (p->flags & LP_PF_H2) {
        lp_h2u_resume(p);
        return;
    }
    if (!(p->flags & LP_PF_PAUSED) || (p->ep.flags & LP_EPF_CLOSING))
        return;
    p->flags &= ~LP_PF_PAUSED;
    if (p->flags & LP_PF_TUNNEL) {
        peer_tls_pump(p);
        if (!(p->ep.flags & LP_EPF_CLOSING))
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
    if (c && !(c->ep.flags & LP_EPF_CLOSING))
        lp_conn_flush(c);
    peer_tls_pump(p); /* and what TLS still holds */
    if (!(p->ep.flags & LP_EPF_CLOSING))
        peer_update_reading(p);
}

void lp_peer_continue(lp_peer_t *p)
{
    if (p->flags & LP_PF_H2) {
        lp_h2u_continue(p);
        return;
    }
    p->flags &= ~LP_PF_LUA;
    if (p->ep.tmode == PT_NONE && !(p->ep.flags & LP_EPF_CLOSING))
        peer_timer(p, PT_READ, T(p)->read); /* the wait is over: reading is timed again */
    peer_process_pending(p);
}

/* ---- tunnel ---- */

void lp_peer_tunnel_eof(lp_peer_t *p)
{
    if (p->flags & LP_PF_H2) {
        lp_h2u_abort(p); /* never a tunnel: an upgrade is refused before (h2_up.c) */
        return;
    }
    /* The client is done: half-close towards the upstream is not worth the state;
     * finish both sides once the queued bytes are out. */
    lp_conn_t *c = p->req ? p->req->conn : NULL;
    peer_close(p);
    if (c)
        lp_conn_tunnel_end(c);
}
