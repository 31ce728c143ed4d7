#include <stdlib.h>
#include "lua_vm.h"
#include "request.h"
#include "upstream.h"
#include "worker.h"

/* Recycled requests kept per worker beyond which ended ones are freed. */
#define LP_FREE_REQS_MAX 256

static int req_grow(lp_h1_t *h, size_t need)
{
    return lp_req_grow(h->ud, 0, need);
}

static void req_destroy(lp_req_t *req)
{
    free(req->headers);
    free(req->resp_headers);
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
    if (req->cap_headers < lim->max_headers) {
        free(req->headers);
        free(req->resp_headers);
        req->headers = calloc(lim->max_headers, sizeof(lp_header_t));
        req->resp_headers = calloc(lim->max_headers, sizeof(lp_header_t));
        req->cap_headers = req->headers && req->resp_headers ? lim->max_headers : 0;
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
    req->refs = 1; /* the connection's */
    req->g = w->cur;
    req->g->refs++;
    req->next_free = NULL;
    lp_h1_init(&req->h1, HTTP_REQUEST, req, NULL);
    req->h1.max_header_size = lim->max_header_size;
    req->h1.max_uri_size = lim->max_uri_size;
    lp_h1_set_storage(&req->h1, req->arena->data, req->arena->cap, req->headers, lim->max_headers);
    req->h1.grow = req_grow;
    req->resp_arena = NULL;
    req->state = LP_RS_HEAD;
    req->flags = 0;
    req->method = 0;
    req->minor = 1;
    req->status = 0;
    req->route = NULL;
    req->upstream = NULL;
    req->dyn = NULL;
    req->target = -1;
    req->peer = NULL;
    req->body_in = req->resp_body_out = 0;
    req->t_start = uv_hrtime();
    req->t_upstream = req->t_upstream_head = 0;
    req->tries = 0;
    memset(req->tried, 0, sizeof(req->tried));
    req->try_open = 0;
    req->no_healthy = 0;
    req->hash_key = (lp_str_t){NULL, 0};
    req->lua = NULL;
    req->route_index = -1;
    req->resp_nheaders = 0;
    req->resp_arena_used = 0;
    req->resp_status = 0;
    req->local_body = NULL;
    req->local_body_len = 0;
    req->filter_cont = LP_FC_NONE;
    req->body_buf = NULL;
    req->body_len = 0;
    req->body_max = 0;
    /* The try state upstream_try.c starts from (lp_upstream_start resets it again). */
    req->resp_upgrade = (lp_str_t){NULL, 0};
    req->deadline = 0;
    req->fail_kind = LP_FAIL_NONE;
    req->fail_status = 0;
    req->queued = 0;
    req->tgt = NULL;
    req->tried_up = NULL;
    req->ntried = 0;
    req->target_addr[0] = 0;
    return req;
}

int lp_req_grow(lp_req_t *req, int resp, size_t need)
{
    lp_worker_t *w = req->w;
    const lp_limits_t *lim = &w->config->limits;
    lp_buf_t *old = resp ? req->resp_arena : req->arena;
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
        lp_h1_rebase(&req->h1, nb->data, nb->cap);
        req->arena = nb;
    } else {
        lp_h1_t *ph = req->peer && req->peer->h1.arena == old->data ? &req->peer->h1 : NULL;
        size_t used = req->resp_arena_used;
        if (ph && ph->arena_len > used)
            used = ph->arena_len;
        memcpy(nb->data, old->data, used);
        if (ph)
            lp_h1_rebase(ph, nb->data, nb->cap);
        for (unsigned i = 0; i < req->resp_nheaders; i++) {
            lp_str_rebase(&req->resp_headers[i].name, old->data, used, nb->data);
            lp_str_rebase(&req->resp_headers[i].value, old->data, used, nb->data);
        }
        lp_str_rebase(&req->resp_upgrade, old->data, used, nb->data);
        req->resp_arena = nb;
    }
    lp_buf_unref(old);
    return 0;
}

void lp_req_end(lp_req_t *req)
{
    if (lp_req_ended(req))
        return;
    req->flags |= LP_RF_ENDED;
    lp_upstream_try_end(req, 0); /* a try cut short by the client, or a tunnel */
    lp_upstream_dyn_release(req);
    lp_lua_release(req); /* invalidates the Lua handle */
    if (req->body_buf)
        lp_buf_unref(req->body_buf);
    req->body_buf = NULL;
    req->body_len = 0;
    free(req->local_body);
    req->local_body = NULL;
    req->local_body_len = 0;
    if (req->peer) {
        lp_peer_abort(req->peer);
        req->peer = NULL;
    }
    if (req->arena)
        lp_buf_unref(req->arena);
    if (req->resp_arena)
        lp_buf_unref(req->resp_arena);
    req->arena = req->resp_arena = NULL;
    if (req->conn && req->conn->req == req)
        req->conn->req = NULL;
    req->conn = NULL;
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
    if (w->nfree_reqs >= LP_FREE_REQS_MAX || req->cap_headers < w->config->limits.max_headers) {
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
