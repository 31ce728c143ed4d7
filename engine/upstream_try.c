#include <stdio.h>
#include <stdlib.h>
#include "conn.h"
#include "health.h"
#include "log.h"
#include "lua_vm.h"
#include "request.h"
#include "targets.h"
#include "upstream.h"
#include "trace.h"
#include "upstream_try.h"

/* A request's tries at its upstream (nginx's upstream_next, as one unit): picking a
 * target through the balancer, the retry decision and budget, total_timeout, and the
 * bounded queue behind max_connections. The HTTP exchange of each try is upstream.c's. */

/* The request can be sent again: an idempotent method whose body (none) is not consumed. */
int lp__try_replayable(const lp_req_t *req)
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
int lp__try_deadline_passed(const lp_req_t *req)
{
    return req->try.deadline && uv_now(&req->w->loop) >= req->try.deadline;
}

/* `retries` further tries, within the retry budget (retries may be at most retry_budget of
 * the requests of the last 10 s, plus 3, so that retries cannot multiply an outage) and
 * before total_timeout. */
int lp__try_may_retry(lp_req_t *req)
{
    lp_upstream_rt_t *u = req->upstream;
    const lp_upstream_conf_t *uc = u->conf;
    if ((unsigned)req->try.tries > uc->retries || u->ntargets > LP_MAX_TRIED ||
        lp__try_deadline_passed(req))
        return 0;
    if ((double)u->budget_retries >= 3.0 + uc->retry_budget * (double)u->budget_requests) {
        lp_log_warn("upstream %s: retry budget spent (%u retries for %u requests)", uc->name,
                    u->budget_retries, u->budget_requests);
        return 0;
    }
    u->budget_retries++;
    if (u->m)
        LP_M_ADD(&u->m[LP_MU_RETRIES], 1);
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
    switch (req->try.fail_kind) {
    case LP_FAIL_TIMEOUT:
        return 504;
    case LP_FAIL_STATUS:
        return req->try.fail_status;
    default:
        return 502;
    }
}

static int upstream_try(lp_req_t *req);

/* The one retry path (nginx's upstream_next), after lp__try_may_retry() agreed and the failed try
 * ended (req->try.fail_kind says why): the Lua upstream phase runs again, seeing the failure
 * through req:last_failure() (it may change the upstream, pick a target or answer), then
 * the next try goes to a target not tried yet. */
int lp__try_next(lp_req_t *req)
{
    if (lp_lua_wants(req->g->lua, req->route_index, LP_PHASE_UPSTREAM)) {
        lp_rc_t rc = lp_lua_phase(req, LP_PHASE_UPSTREAM);
        /* Parked (LP_AGAIN): the engine resumes it; then, like now, lp_upstream_start(). */
        if (rc == LP_AGAIN)
            return LP_OK;
        if (rc == LP_GONE)
            return rc;
        return lp_conn_lua_resumed(req, LP_PHASE_UPSTREAM, rc == LP_DECLINED ? LP_OK : rc);
    }
    return upstream_try(req);
}

static lp_str_t client_ip(lp_req_t *req)
{
    const char *ip = lp_req_client_ip(req);
    return (lp_str_t){ip, strlen(ip)};
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
        return client_ip(req);
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
    if (req->try.tried_up == u && req->try.tried_version == u->version)
        return;
    memset(req->try.tried, 0, sizeof(req->try.tried));
    if (req->try.tried_up != u)
        req->try.ntried = 0;
    for (unsigned k = 0; k < req->try.ntried; k++)
        for (size_t i = 0; i < u->ntargets && i < LP_MAX_TRIED; i++)
            if (u->targets[i]->serial == req->try.tried_serial[k])
                lp_balancer_mark_tried(req->try.tried, i);
    req->try.tried_up = u;
    req->try.tried_version = u->version;
}

/* Picks an untried target; counts it active until lp_upstream_try_end. -1: none left. */
static int pick_target(lp_req_t *req)
{
    lp_upstream_rt_t *u = req->upstream;
    lp_str_t key = u->conf->hash_name || u->conf->hash_on != LP_HASH_IP || req->hash_key.base
                       ? hash_key(req)
                       : client_ip(req);
    uint64_t now = uv_hrtime();
    /* Health is shared by the workers: read it as the pick needs it. */
    uint64_t now_ms = lp_health_now();
    int any = 0;
    for (size_t i = 0; i < u->ntargets; i++) {
        u->bt[i].available = lp_health_available(u->targets[i]->health, now_ms);
        any |= u->bt[i].available;
    }
    if (!any) {
        /* Panic, as Envoy does below its panic threshold and nginx does with its only server:
         * when every target left is only passively ejected, a failure streak is the only
         * evidence against them, and refusing every request would make it permanent for
         * an upstream with one target. Try them; a success ends their ejection. Targets
         * the active check found down, and drained or disabled ones, stay out. */
        for (size_t i = 0; i < u->ntargets; i++) {
            u->bt[i].available = lp_health_ejected_only(u->targets[i]->health, now_ms);
            any |= u->bt[i].available;
        }
        if (!any) {
            req->try.no_healthy = 1;
            return -1;
        }
    }
    tried_sync(req, u);
    int idx = lp_balancer_select(&u->bal, key.base, key.len,
                                 u->ntargets <= LP_MAX_TRIED ? req->try.tried : NULL, now);
    if (idx < 0)
        return -1;
    lp_target_rt_t *t = u->targets[idx];
    if ((size_t)idx < LP_MAX_TRIED)
        lp_balancer_mark_tried(req->try.tried, (size_t)idx);
    if (req->try.ntried < LP_TRIED_SERIALS)
        req->try.tried_serial[req->try.ntried++] = t->serial;
    u->bt[idx].active++;
    u->in_flight++;
    if (t->m)
        LP_M_ADD(&t->m[LP_MT_STARTED], 1);
    lp_target_ref(t);
    req->try.tgt = t;
    req->try.target = idx;
    size_t n = strlen(t->addr.text);
    if (n >= sizeof(req->try.target_addr))
        n = sizeof(req->try.target_addr) - 1;
    memcpy(req->try.target_addr, t->addr.text, n);
    req->try.target_addr[n] = 0;
    req->try.tries++;
    req->try.open = 1;
    req->try.t_try = now;
    lp_trace_try_begin(req);
    return idx;
}

static void queue_remove(lp_req_t *req)
{
    lp_list_remove(&req->try.qlink);
    req->try.queued = 0;
    req->upstream->npending--;
    if (req->upstream->m)
        LP_M_SET(&req->upstream->m[LP_MU_QUEUE], req->upstream->npending);
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
    uint64_t d = req->try.queued_at + req->upstream->conf->pending_timeout;
    return req->try.deadline && req->try.deadline < d ? req->try.deadline : d;
}

/* A slot freed, or the head's wait ran out: requests leave the queue in order. */
static void on_queue_timer(uv_timer_t *tm)
{
    lp_upstream_aux_t *a = tm->data;
    lp_upstream_rt_t *u;
    /* A request that ends here may free the generation (and u): look again each time. */
    while ((u = a->u) && !lp_list_empty(&u->pending)) {
        lp_req_t *req = LP_CONTAINER_OF(u->pending.next, lp_req_t, try.qlink);
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
        if (lp__try_deadline_passed(req)) {
            req->try.fail_kind = LP_FAIL_TIMEOUT;
            lp_conn_upstream_failed(req, 504, "total_timeout reached while waiting");
            continue;
        }
        lp_log_warn("upstream %s: a request waited %llu ms for one of max_connections (%u): 503%s",
                    u->conf->name, (unsigned long long)(now - req->try.queued_at),
                    u->conf->max_connections, lp_trace_tag(req));
        lp_conn_upstream_failed(req, 503,
                                "no connection to the upstream freed up in time (pending_timeout)");
    }
}

void lp_upstream_try_reset(lp_req_t *req)
{
    lp_try_state_t *t = &req->try;
    t->peer = NULL;
    t->tgt = NULL;
    t->target = -1;
    t->tries = 0;
    t->open = 0;
    t->no_healthy = 0;
    t->queued = 0;
    t->fail_kind = LP_FAIL_NONE;
    t->fail_status = 0;
    t->t_try = 0;
    t->deadline = 0;
    t->queued_at = 0;
    lp_list_init(&t->qlink);
    t->tried_up = NULL;
    t->tried_version = 0;
    t->ntried = 0;
    memset(t->tried, 0, sizeof(t->tried));
    t->target_addr[0] = 0;
}

void lp_upstream_try_end(lp_req_t *req, int failed)
{
    if (req->try.queued)
        queue_remove(req); /* the request is gone while waiting for a slot */
    if (!req->try.open || !req->upstream || !req->try.tgt)
        return;
    lp_upstream_rt_t *u = req->upstream;
    lp_target_rt_t *t = req->try.tgt;
    req->try.open = 0;
    req->try.tgt = NULL;
    lp_trace_try_end(req, failed);
    u->in_flight--;
    if (t->m)
        LP_M_ADD(&t->m[LP_MT_ENDED], 1);
    if (u->npending && u->in_flight < u->conf->max_connections)
        queue_arm(u, 0); /* the next loop turn: not inside the caller's callback */
    uint64_t now = uv_hrtime();
    uint64_t until = !failed && req->t_upstream_head > req->try.t_try ? req->t_upstream_head : now;
    if (t->idx >= 0) {
        /* Still in the set (a target removed meanwhile has left the balancer). */
        u->bt[t->idx].active--;
        lp_balancer_report(&u->bal, t->idx, until - req->try.t_try, failed, now);
        if (t->m && u->bal.ops->ewma)
            LP_M_SET(&t->m[LP_MT_EWMA_NS], (uint64_t)u->bal.ops->ewma(&u->bal, t->idx));
    }
    if (!failed && req->resp.sent_status &&
        lp_status_in(&u->conf->health.passive_statuses, req->resp.sent_status))
        failed = 1; /* a status the passive check counts as a failure */
    if (lp_health_report(t->health, &u->conf->health, failed, lp_health_now()) && u->m)
        LP_M_ADD(&u->m[LP_MU_EJECTIONS], 1);
    lp_target_unref(t);
}

/* One try: a target, then an idle pooled connection to it or a new one. */
/* LP_GONE when the request ended. */
static int upstream_try(lp_req_t *req)
{
    lp_upstream_rt_t *u = req->upstream;
    if (lp__try_deadline_passed(req)) {
        req->try.fail_kind = LP_FAIL_TIMEOUT;
        return lp_conn_upstream_failed(req, 504, "total_timeout reached");
    }
    int idx = pick_target(req);
    if (idx < 0) {
        uint64_t now = lp_health_now();
        if (req->try.no_healthy && now - u->last_warned >= 1000) {
            u->last_warned = now; /* once a second per worker, not per request */
            lp_log_warn("upstream %s: no available target (down, drained or disabled)",
                        u->conf->name);
        }
        /* A retry that finds no other target answers what the last try failed with; a
         * first try with every target unavailable 503 at once, without waiting. */
        if (req->try.fail_kind)
            return lp_conn_upstream_failed(req, failure_status(req), "no other target to retry");
        return lp_conn_upstream_failed(req, req->try.no_healthy ? 503 : 502,
                                       "no available target (down, drained or disabled)");
    }
    if (req->try.tries == 1)
        req->t_upstream = uv_hrtime();
    lp_pool_t *t = u->targets[idx]->pool;
    lp_peer_t *p = lp__pool_take(t);
    if (p)
        return lp__peer_start(p, req);
    return lp__peer_open(req, t);
}

int lp_upstream_start(lp_req_t *req)
{
    lp_upstream_rt_t *u = req->upstream;
    if (req->try.tries)
        return upstream_try(req); /* a retry, after the upstream phase ran again */
    /* The request's first try: nothing from before it counts (Lua may have run the upstream
     * phase, but no try started). */
    lp_upstream_try_reset(req);
    uint64_t now = uv_now(&req->w->loop);
    req->try.deadline = u->conf->total_timeout ? now + u->conf->total_timeout : 0;
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
        req->try.queued = 1;
        req->try.queued_at = now;
        lp_list_insert_tail(&u->pending, &req->try.qlink);
        if (u->npending++ == 0)
            queue_arm(u, queue_deadline(req) - now);
        if (u->m)
            LP_M_SET(&u->m[LP_MU_QUEUE], u->npending);
        return LP_OK;
    }
    return upstream_try(req);
}
