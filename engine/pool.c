#include <stdio.h>
#include <stdlib.h>
#include "log.h"
#include "request.h"
#include "targets.h"
#include "tls.h"
#include "upstream.h"
#include "upstream_try.h"
#include "h2_up.h"

/* A worker's upstream connection pools (per address and TLS settings, outliving config
 * generations) and its table of req:set_target() destinations. */

/* The worker's pool for an address and TLS settings, made on first use. */
lp_pool_t *lp__upstream_pool(lp_worker_t *w, const lp_addr_t *addr, uint64_t gen,
                             lp_tls_client_t *tls, const char *name, int h2)
{
    lp_pool_t *p;
    char *sni = tls ? lp_tls_peer_name(tls, addr->text, name) : NULL;
    if (tls && !sni)
        return NULL;
    for (p = w->pools; p; p = p->next)
        if (p->addr.addrlen == addr->addrlen && strcmp(p->addr.text, addr->text) == 0 &&
            memcmp(&p->addr.addr, &addr->addr, addr->addrlen) == 0 && !p->tls == !tls &&
            p->h2 == h2 &&
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
        lp_list_init(&p->h2conns);
        p->h2 = h2;
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

/* A set_target() destination: a one-target upstream kept per worker (not per generation),
 * so that its connections pool. Requests that chose it hold a reference (req->dyn); when
 * the table is full, the least recently used entry that no request holds makes room. */
typedef struct lp_dyn_upstream_s {
    lp_upstream_conf_t conf;
    lp_target_conf_t tconf;
    lp_upstream_rt_t rt;
    char name[80];
    unsigned refs;      /* requests that chose it */
    uint64_t last_used; /* uv_now() ms of the last set_target() to it */
} lp_dyn_upstream_t;

#define LP_MAX_DYN_UPSTREAMS 1024

static void dyn_free(lp_dyn_upstream_t *d)
{
    lp_targets_free(&d->rt);
    free(d);
}

/* The slot of the least recently used entry nobody holds, freed; -1 when all are held. */
static int dyn_evict(lp_worker_t *w)
{
    int best = -1;
    for (size_t i = 0; i < w->ndyn; i++) {
        lp_dyn_upstream_t *d = w->dyn[i];
        if (d->refs || d->rt.in_flight || d->rt.npending)
            continue;
        if (best < 0 || d->last_used < w->dyn[best]->last_used)
            best = (int)i;
    }
    if (best >= 0) {
        dyn_free(w->dyn[best]);
        w->dyn[best] = w->dyn[--w->ndyn];
    }
    return best;
}

void lp_upstream_dyn_release(lp_req_t *req)
{
    if (req->dyn) {
        req->dyn->refs--;
        req->dyn = NULL;
    }
}

static lp_dyn_upstream_t *dyn_find(lp_worker_t *w, const struct sockaddr *sa, const char *text)
{
    for (size_t i = 0; i < w->ndyn; i++)
        if (strcmp(w->dyn[i]->name, text) == 0)
            return w->dyn[i];
    if (w->ndyn >= LP_MAX_DYN_UPSTREAMS && dyn_evict(w) < 0) {
        lp_log_warn("req:set_target(): %d destinations in use at once in this worker: refused",
                    LP_MAX_DYN_UPSTREAMS);
        return NULL;
    }
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
        dyn_free(d);
        return NULL;
    }
    w->dyn[w->ndyn++] = d;
    return d;
}

int lp_upstream_set_dynamic(lp_req_t *req, const struct sockaddr *sa, const char *text)
{
    lp_dyn_upstream_t *d = dyn_find(req->w, sa, text);
    if (!d)
        return LP_ELIMIT;
    d->refs++;
    d->last_used = uv_now(&req->w->loop);
    lp_upstream_dyn_release(req);
    req->dyn = d;
    req->upstream = &d->rt;
    return 0;
}

void lp_upstream_destroy_all(lp_worker_t *w)
{
    for (size_t i = 0; i < w->ndyn; i++)
        dyn_free(w->dyn[i]);
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

static void close_idle_of(lp_pool_t *t)
{
    while (!lp_list_empty(&t->idle))
        lp_peer_abort(LP_CONTAINER_OF(t->idle.next, lp_peer_t, link));
    lp_h2u_close_idle(t);
}

lp_peer_t *lp__pool_take(lp_pool_t *t)
{
    if (lp_list_empty(&t->idle))
        return NULL;
    lp_peer_t *p = LP_CONTAINER_OF(t->idle.next, lp_peer_t, link); /* most recently used */
    lp_list_remove(&p->link);
    t->nidle--;
    p->flags |= LP_PF_REUSED;
    return p;
}

void lp_upstream_close_idle(lp_worker_t *w, uint64_t older_than)
{
    /* older_than 0: every pool (shutdown); else pools no generation since uses. */
    for (lp_pool_t *t = w->pools; t; t = t->next)
        if (!older_than || t->gen < older_than)
            close_idle_of(t);
}
