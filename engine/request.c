#include <stdio.h>
#include <stdlib.h>
#include "accesslog.h"
#include "compress.h"
#include "cache_req.h"
#include "cache_room.h"
#include "conn.h"
#include "h2.h"
#include "log.h"
#include "lua_vm.h"
#include "req_body.h"
#include "request.h"
#include "rtable.h"
#include "trace.h"
#include "upstream.h"
#include "worker.h"

/* Recycled requests kept per worker beyond which ended ones are freed. HTTP/2 keeps many
 * requests in flight per connection (50 connections of 10 streams: 500), and a pool
 * smaller than the requests that end together made every tenth request allocate and zero
 * its object and header arrays again; what a peak leaves unused goes back within a
 * second (lp_req_trim, from worker.c's house timer). */
#define LP_FREE_REQS_MAX 1024

static int req_grow(lp_h1_t *h, size_t need)
{
    return lp_req_grow(h->ud, 0, need);
}

/* No response yet. The headers array stays: it is sized with the request's. */
static void resp_reset(lp_resp_t *r)
{
    r->arena = NULL;
    r->nheaders = 0;
    r->arena_used = 0;
    r->status = 0;
    r->sent_status = 0;
    r->upgrade = (lp_str_t){NULL, 0};
    r->local_body = NULL;
    r->local_body_len = 0;
    r->trailers = NULL;
    r->trailers_len = 0;
    r->body_out = 0;
    r->zip = NULL;
    r->zip_coding = 0;
    r->zip_level = 0;
    r->win = 0;
    r->win_skip = r->win_len = 0;
}

static void req_destroy(lp_req_t *req)
{
    lp_logfields_clear(&req->log_fields);
    free(req->headers);
    free(req->resp.headers);
    free(req);
}

lp_req_t *lp_req_new(lp_worker_t *w, lp_conn_t *c)
{
    const lp_limits_t *lim = &w->config->limits;
    lp_req_t *req = w->free_reqs;
    if (req) {
        w->free_reqs = req->next_free;
        if (--w->nfree_reqs < w->nfree_reqs_low)
            w->nfree_reqs_low = w->nfree_reqs;
    } else {
        req = calloc(1, sizeof(*req));
        if (!req)
            return NULL;
    }
    /* Room for a cache hit on an entry stored with more fields than this config allows
     * (cache_room.c): usually just max_headers + LP_HEADERS_SPARE. A recycled request's
     * arrays of another size (a reload, or such entries gone since) are made again. */
    unsigned cap = lp_cache_room_cap(lim->max_headers + LP_HEADERS_SPARE);
    if (req->cap_headers != cap) {
        free(req->headers);
        free(req->resp.headers);
        req->headers = calloc(cap, sizeof(lp_header_t));
        req->resp.headers = calloc(cap, sizeof(lp_header_t));
        req->cap_headers = req->headers && req->resp.headers ? cap : 0;
        if (!req->cap_headers) {
            req_destroy(req);
            return NULL;
        }
    }
    req->arena = lp_buf_get(&w->bufs, LP_BUF_SMALL); /* grows with the head (req_grow) */
    if (!req->arena) {
        req_destroy(req);
        return NULL;
    }
    req->w = w;
    req->conn = c;
    req->h2s = NULL;
    req->refs = 1; /* the connection's */
    req->g = w->cur;
    req->g->refs++;
    req->next_free = NULL;
    lp_list_init(&req->dlink);
    lp_h1_init(&req->h1, HTTP_REQUEST, req, NULL);
    req->h1.max_header_size = lim->max_header_size;
    req->h1.max_uri_size = lim->max_uri_size;
    req->h1.path_norm = lim->path_norm;
    lp_h1_set_storage(&req->h1, req->arena->data, req->arena->cap, req->headers, lim->max_headers);
    req->h1.grow = req_grow;
    req->state = LP_RS_HEAD;
    req->flags = 0;
    req->method = 0;
    req->minor = 1;
    req->route = NULL;
    req->upstream = NULL;
    req->dyn = NULL;
    req->body_in = 0;
    req->client_ip[0] = 0;
    req->peer_ip[0] = 0;
    req->t_start = uv_hrtime();
    req->t_upstream = req->t_upstream_head = 0;
    req->hash_key = (lp_str_t){NULL, 0};
    req->lua = NULL;
    req->route_index = -1;
    req->nparams = 0;
    req->rtable = NULL;
    req->filter_cont = LP_FC_NONE;
    req->body_buf = NULL;
    req->body_len = 0;
    req->body_max = 0;
    lp_req_body_init(req);
    resp_reset(&req->resp);
    memset(&req->cache, 0, sizeof(req->cache));
    lp_upstream_try_reset(req);
    req->trace.on = req->trace.recorded = req->trace.ntries = req->trace.cur_try = 0;
    return req;
}

const char *lp_req_client_ip(lp_req_t *req)
{
    if (!req->client_ip[0] && req->conn)
        lp_conn_ip_text(req->conn, req->client_ip);
    return req->client_ip;
}

const char *lp_req_peer_ip(lp_req_t *req)
{
    if (!req->peer_ip[0] && req->conn)
        lp_conn_peer_text(req->conn, req->peer_ip);
    return req->peer_ip;
}

/* One "name":"value" member, the value cut to max bytes before escaping. */
static size_t log_member(char *out, const char *name, const char *v, size_t n, size_t max)
{
    size_t o = (size_t)sprintf(out, ",\"%s\":\"", name);
    o += lp__accesslog_json_escape(out + o, v, n < max ? n : max);
    out[o++] = '"';
    return o;
}

size_t lp_req_log_members(const void *r, char *out, size_t room)
{
    lp_req_t *req = (lp_req_t *)r; /* lp_req_client_ip caches the text */
    /* Five members of at most max bytes (512), 6 bytes each escaped, plus their names. */
    size_t max = room > 5 * 40 ? (room - 5 * 40) / (5 * 6) : 0, o = 0;
    if (max > 512)
        max = 512;
    if (lp_req_ended(req))
        return 0;
    const char *ip = lp_req_client_ip(req);
    if (ip[0])
        o += log_member(out + o, "client", ip, strlen(ip), max);
    if (req->flags & LP_RF_PARSED) {
        const char *m = llhttp_method_name(req->method);
        o += log_member(out + o, "method", m, strlen(m), max);
    }
    if (req->h1.path.base)
        o += log_member(out + o, "uri", req->h1.path.base, req->h1.path.len, max);
    if (req->h1.host.base)
        o += log_member(out + o, "host", req->h1.host.base, req->h1.host.len, max);
    const lp_header_t *id = lp_h1_find(&req->h1, "x-request-id", 12);
    if (id && id->value.base)
        o += log_member(out + o, "request_id", id->value.base, id->value.len, max);
    return o;
}

int lp_req_grow(lp_req_t *req, int resp, size_t need)
{
    lp_worker_t *w = req->w;
    const lp_limits_t *lim = &w->config->limits;
    lp_buf_t *old = resp ? req->resp.arena : req->arena;
    if (lp_req_ended(req) || !old)
        return -1;
    /* Bounded by the head limits, with room for what Lua adds. */
    size_t max = 2 * (lim->max_uri_size + lim->max_header_size) + LP_BUF_SIZE;
    if (need > max)
        return -1;
    size_t cap = old->cap;
    while (cap < need)
        cap *= 4;
    lp_buf_t *nb = lp_buf_get(&w->bufs, cap);
    if (!nb)
        return -1;
    if (!resp) {
        /* req:set_hash_key() copied its key into this arena too, and the route's captures
         * point into the path there (req:param()): they move with the head. */
        lp_str_rebase(&req->hash_key, old->data, req->h1.arena_len, nb->data);
        for (unsigned i = 0; i < req->nparams; i++)
            lp_str_rebase(&req->params[i].value, old->data, req->h1.arena_len, nb->data);
        lp_h1_rebase(&req->h1, nb->data, nb->cap);
        req->arena = nb;
    } else {
        lp_h1_t *ph =
            req->try.peer && req->try.peer->h1.arena == old->data ? &req->try.peer->h1 : NULL;
        size_t used = req->resp.arena_used;
        if (ph && ph->arena_len > used)
            used = ph->arena_len;
        memcpy(nb->data, old->data, used);
        if (ph)
            lp_h1_rebase(ph, nb->data, nb->cap);
        for (unsigned i = 0; i < req->resp.nheaders; i++) {
            lp_str_rebase(&req->resp.headers[i].name, old->data, used, nb->data);
            lp_str_rebase(&req->resp.headers[i].value, old->data, used, nb->data);
        }
        lp_str_rebase(&req->resp.upgrade, old->data, used, nb->data);
        req->resp.arena = nb;
    }
    lp_buf_unref(old);
    return 0;
}

void lp_req_detach(lp_req_t *req)
{
    lp_conn_t *c = req->conn;
    if (req->h2s)
        lp_h2_req_gone(req); /* the stream's reference becomes the detached list's */
    lp_req_client_ip(req);   /* formatted while the connection is there */
    lp_req_peer_ip(req);
    if (c->ep.tls)
        req->flags |= LP_RF_TLS;
    if (c->req == req)
        c->req = NULL;
    req->conn = NULL;
    req->flags |= LP_RF_DETACHED;
    lp_list_insert_tail(&req->w->detached, &req->dlink);
}

void lp_req_end_detached(lp_worker_t *w, int all)
{
    uint64_t now = uv_now(&w->loop);
    lp_list_t *it = w->detached.next;
    while (it != &w->detached) {
        lp_req_t *req = LP_CONTAINER_OF(it, lp_req_t, dlink);
        it = it->next;
        uint64_t drain = req->g->config->timeouts.drain;
        if (!all &&
            !(req->g != w->cur && now >= drain && lp_lua_ended_before(req->g->lua, now - drain)))
            continue;
        lp_log_warn("a log phase still waiting %s is stopped",
                    all ? "at the drain deadline"
                        : "after its generation ended (past timeouts.drain)");
        lp_req_end(req); /* unlinks it: `it` is already past it */
    }
}

void lp_req_end(lp_req_t *req)
{
    if (lp_req_ended(req))
        return;
    req->flags |= LP_RF_ENDED;
    if (req->flags & LP_RF_DETACHED)
        lp_list_remove(&req->dlink);
    lp_upstream_try_end(req, 0); /* a try cut short by the client, or a tunnel */
    lp_trace_finish(req);        /* its spans, while its head and address are there */
    lp_upstream_dyn_release(req);
    lp_lua_release(req); /* invalidates the Lua handle */
    if (req->body_buf)
        lp_buf_unref(req->body_buf);
    req->body_buf = NULL;
    req->body_len = 0;
    lp_req_body_release(req);
    req->log_fields.len = 0; /* its buffer stays for the next request on the free list */
    req->log_fields.n = 0;
    free(req->resp.local_body);
    req->resp.local_body = NULL;
    req->resp.local_body_len = 0;
    free(req->resp.trailers);
    req->resp.trailers = NULL;
    req->resp.trailers_len = 0;
    free(req->trailers);
    req->trailers = NULL;
    req->trailers_len = 0;
    lp_zip_free(req->resp.zip); /* a body cut short leaves its compressor here */
    req->resp.zip = NULL;
    lp_cache_req_end(req); /* a fill not committed is dropped, never linked */
    if (req->try.peer) {
        lp_peer_abort(req->try.peer);
        req->try.peer = NULL;
    }
    if (req->arena)
        lp_buf_unref(req->arena);
    if (req->resp.arena)
        lp_buf_unref(req->resp.arena);
    req->arena = req->resp.arena = NULL;
    if (req->h2s)
        lp_h2_req_gone(req);
    else if (req->conn && req->conn->req == req)
        req->conn->req = NULL;
    req->conn = NULL;
    lp_rtable_unref(req->rtable);
    req->rtable = NULL;
    req->route = NULL;
    lp_wgen_release(req->w, req->g);
    req->g = NULL;
    lp_req_drop(req); /* the connection's reference */
}

int lp_req_drop(lp_req_t *req)
{
    if (--req->refs)
        return 0;
    lp_worker_t *w = req->w;
    /* A request still running when its last holder lets go is a bug; end it anyway. */
    if (!lp_req_ended(req)) {
        req->refs = 1;
        lp_req_end(req);
        return 1;
    }
    if (w->nfree_reqs >= LP_FREE_REQS_MAX ||
        req->cap_headers != lp_cache_room_cap(w->config->limits.max_headers + LP_HEADERS_SPARE)) {
        req_destroy(req);
        return 1;
    }
    req->next_free = w->free_reqs; /* LP_RF_ENDED stays set while it waits */
    w->free_reqs = req;
    w->nfree_reqs++;
    return 1;
}

size_t lp_req_trim(lp_worker_t *w)
{
    size_t bytes = 0;
    for (size_t drop = w->nfree_reqs_low; drop && w->free_reqs; drop--) {
        lp_req_t *r = w->free_reqs;
        w->free_reqs = r->next_free;
        w->nfree_reqs--;
        bytes += sizeof(*r) + 2 * r->cap_headers * sizeof(lp_header_t);
        req_destroy(r);
    }
    w->nfree_reqs_low = w->nfree_reqs;
    return bytes;
}

void lp_req_free_all(lp_worker_t *w)
{
    while (w->free_reqs) {
        lp_req_t *r = w->free_reqs;
        w->free_reqs = r->next_free;
        req_destroy(r);
    }
    w->nfree_reqs = 0;
}
