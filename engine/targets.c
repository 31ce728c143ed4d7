#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include "health.h"
#include "log.h"
#include "targets.h"
#include "upstream.h"

void lp_target_unref(lp_target_rt_t *t)
{
    if (--t->refs)
        return;
    free(t->addr.text);
    free(t);
}

/* The balancer's array follows the set: same order, in-flight counts carried over by each
 * target's old position. Then the policy rebuilds its state (round robin restarts its
 * cycle, p2c keeps latencies by id, hash refills its table: about 1/N of keys move when one
 * of N targets goes). */
static int rebuild(lp_upstream_rt_t *u)
{
    lp_bal_target_t *bt = calloc(u->cap ? u->cap : 1, sizeof(*bt));
    if (!bt)
        return LP_ENOMEM;
    for (size_t i = 0; i < u->ntargets; i++) {
        lp_target_rt_t *t = u->targets[i];
        bt[i].id = t->addr.text;
        bt[i].weight = t->weight;
        bt[i].active = t->idx >= 0 ? u->bt[t->idx].active : 0;
        bt[i].available = 1; /* health decides at every pick */
        t->idx = (int)i;
    }
    free(u->bt);
    u->bt = bt;
    u->bal.targets = bt;
    u->bal.n = u->ntargets;
    u->version++;
    return lp_balancer_update(&u->bal);
}

/* A target's pool; a TLS one resolved from a name sends and verifies that name. */
static lp_pool_t *target_pool(lp_upstream_rt_t *u, const lp_target_rt_t *t)
{
    const char *name = t->origin >= 0 && (size_t)t->origin < u->conf->ntargets
                           ? u->conf->targets[t->origin].host
                           : NULL;
    return lp__upstream_pool(u->w, &t->addr, u->gen, u->conf->tls, name, u->conf->h2);
}

static lp_target_rt_t *target_new(lp_upstream_rt_t *u, const lp_addr_t *addr, unsigned weight,
                                  int origin)
{
    lp_target_rt_t *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->addr = *addr;
    t->addr.text = strdup(addr->text);
    t->health = lp_health_get(addr->text);
    if (!t->addr.text || !t->health) {
        free(t->addr.text);
        free(t);
        return NULL;
    }
    t->weight = weight ? weight : 1;
    t->idx = -1;
    t->refs = 1;
    t->serial = ++u->next_serial;
    t->origin = origin;
    if (u->w)
        t->pool = target_pool(u, t);
    if (u->w && !t->pool) {
        lp_target_unref(t);
        return NULL;
    }
    return t;
}

/* Appends without rebuilding (the caller rebuilds once). */
static int set_append(lp_upstream_rt_t *u, const lp_addr_t *addr, unsigned weight, int origin)
{
    if (u->ntargets == u->cap) {
        size_t cap = u->cap ? u->cap * 2 : 4;
        lp_target_rt_t **v = realloc(u->targets, cap * sizeof(*v));
        if (!v)
            return LP_ENOMEM;
        u->targets = v;
        /* The balancer's array keeps the capacity of the set. */
        lp_bal_target_t *bt = realloc(u->bt, cap * sizeof(*bt));
        if (!bt)
            return LP_ENOMEM;
        u->bt = bt;
        u->bal.targets = bt;
        u->cap = cap;
    }
    lp_target_rt_t *t = target_new(u, addr, weight, origin);
    if (!t)
        return LP_ENOMEM;
    u->targets[u->ntargets++] = t;
    return 0;
}

/* Takes target i out of the set without rebuilding. */
static void set_drop(lp_upstream_rt_t *u, size_t i)
{
    lp_target_rt_t *t = u->targets[i];
    /* Its old position still holds its in-flight count for the rebuild of the others;
     * its own tries end without touching the balancer (idx -1). */
    memmove(&u->targets[i], &u->targets[i + 1], (u->ntargets - i - 1) * sizeof(*u->targets));
    u->ntargets--;
    t->idx = -1;
    lp_target_unref(t);
}

int lp_targets_init(lp_upstream_rt_t *u, const lp_upstream_conf_t *uc, uint64_t seed)
{
    u->conf = uc;
    lp_list_init(&u->pending);
    int rc = 0;
    for (size_t i = 0; i < uc->ntargets && !rc; i++) {
        size_t n;
        const lp_addr_t *a = lp_target_addrs(&uc->targets[i], &n);
        for (size_t j = 0; j < n && !rc; j++)
            if (lp_targets_find(u, a[j].text, strlen(a[j].text)) < 0)
                rc = set_append(u, &a[j], uc->targets[i].weight, uc->targets[i].host ? (int)i : -1);
    }
    if (!rc && !u->bt && !(u->bt = calloc(1, sizeof(*u->bt))))
        rc = LP_ENOMEM;
    for (size_t i = 0; !rc && i < u->ntargets; i++) {
        lp_target_rt_t *t = u->targets[i];
        u->bt[i] = (lp_bal_target_t){t->addr.text, t->weight, 0, 1};
        t->idx = (int)i;
    }
    if (!rc)
        rc = lp_balancer_init(&u->bal, lp_balancer_find(uc->balance), u->bt, u->ntargets, seed);
    return rc;
}

static void on_aux_close(uv_handle_t *h)
{
    lp_upstream_aux_t *a = h->data;
    if (--a->refs == 0)
        free(a);
}

void lp_targets_free(lp_upstream_rt_t *u)
{
    if (u->bal.ops)
        lp_balancer_destroy(&u->bal);
    u->bal.ops = NULL;
    for (size_t i = 0; i < u->ntargets; i++) {
        u->targets[i]->idx = -1;
        lp_target_unref(u->targets[i]);
    }
    free(u->targets);
    free(u->bt);
    u->targets = NULL;
    u->bt = NULL;
    u->ntargets = u->cap = 0;
    if (u->aux) {
        lp_upstream_aux_t *a = u->aux;
        a->u = NULL;
        u->aux = NULL;
        uv_close((uv_handle_t *)&a->dns_timer, on_aux_close);
        uv_close((uv_handle_t *)&a->queue_timer, on_aux_close);
    }
}

int lp_targets_find(const lp_upstream_rt_t *u, const char *text, size_t n)
{
    for (size_t i = 0; i < u->ntargets; i++) {
        const char *a = u->targets[i]->addr.text;
        if (strncmp(a, text, n) == 0 && a[n] == 0)
            return (int)i;
    }
    return -1;
}

int lp_targets_add(lp_upstream_rt_t *u, const lp_addr_t *addr, unsigned weight, int origin)
{
    if (lp_targets_find(u, addr->text, strlen(addr->text)) >= 0)
        return lp_targets_set_weight(u, addr->text, weight) ? LP_EINVAL : 1;
    int rc = set_append(u, addr, weight, origin);
    return rc ? rc : rebuild(u);
}

int lp_targets_remove(lp_upstream_rt_t *u, const char *text)
{
    int i = lp_targets_find(u, text, strlen(text));
    if (i < 0)
        return LP_EINVAL;
    set_drop(u, (size_t)i);
    return rebuild(u);
}

int lp_targets_set_weight(lp_upstream_rt_t *u, const char *text, unsigned weight)
{
    int i = lp_targets_find(u, text, strlen(text));
    if (i < 0)
        return LP_EINVAL;
    if (!weight)
        weight = 1;
    if (u->targets[i]->weight == weight)
        return 0;
    u->targets[i]->weight = weight;
    return rebuild(u);
}

void lp_targets_resolved(lp_upstream_rt_t *u, int origin, const lp_addr_t *addrs, size_t n)
{
    const lp_target_conf_t *tc = &u->conf->targets[origin];
    int changed = 0;
    for (size_t i = u->ntargets; i-- > 0;) {
        lp_target_rt_t *t = u->targets[i];
        int keep = t->origin != origin;
        for (size_t j = 0; j < n && !keep; j++)
            keep = strcmp(addrs[j].text, t->addr.text) == 0;
        if (!keep) {
            set_drop(u, i);
            changed = 1;
        }
    }
    for (size_t j = 0; j < n; j++) {
        /* An address already there (from another name, or added from Lua) stays as is. */
        if (lp_targets_find(u, addrs[j].text, strlen(addrs[j].text)) >= 0)
            continue;
        if (set_append(u, &addrs[j], tc->weight, origin) == 0)
            changed = 1;
    }
    if (!changed)
        return;
    char list[512];
    size_t len = 0;
    list[0] = 0;
    for (size_t j = 0; j < n && len < sizeof(list) - 1; j++) {
        int k = snprintf(list + len, sizeof(list) - len, "%s%s", j ? " " : "", addrs[j].text);
        len += k > 0 ? (size_t)k : 0;
    }
    lp_log_info("upstream %s: %s resolves to %zu address%s: %s", u->conf->name, tc->addr.text, n,
                n == 1 ? "" : "es", list);
    if (rebuild(u))
        lp_log_error("upstream %s: cannot rebuild the balancer (out of memory)", u->conf->name);
}

/* ---- DNS re-resolution ---- */

typedef struct {
    uv_getaddrinfo_t req;
    lp_upstream_aux_t *aux;
    int origin;
} dns_query_t;

static void dns_round(uv_timer_t *t);

static void dns_next_round(lp_upstream_aux_t *a)
{
    /* A name without any address is asked again sooner than the TTL. */
    uint64_t ttl = a->u->conf->dns_ttl;
    uv_timer_start(&a->dns_timer, dns_round, a->failed && ttl > 5000 ? 5000 : ttl, 0);
}

static void on_resolved(uv_getaddrinfo_t *r, int status, struct addrinfo *res)
{
    dns_query_t *q = r->data;
    lp_upstream_aux_t *a = q->aux;
    lp_upstream_rt_t *u = a->u;
    if (u) {
        const lp_target_conf_t *tc = &u->conf->targets[q->origin];
        lp_addr_t addrs[LP_DNS_MAX_ADDRS];
        size_t n = status == 0 ? lp_addr_from_ai(res, tc->port, addrs, LP_ARRAY_LEN(addrs)) : 0;
        if (u->m)
            LP_M_ADD(&u->m[LP_MU_DNS], 1);
        if (n) {
            lp_targets_resolved(u, q->origin, addrs, n);
        } else {
            /* The last good answer stays: an outage of DNS must not empty the upstream. */
            size_t kept = 0;
            for (size_t i = 0; i < u->ntargets; i++)
                kept += u->targets[i]->origin == q->origin;
            lp_log_warn("upstream %s: cannot resolve %s (%s): keeping %zu address%s", u->conf->name,
                        tc->addr.text, status ? uv_strerror(status) : "no address", kept,
                        kept == 1 ? "" : "es");
            if (!kept)
                a->failed = 1;
        }
        for (size_t i = 0; i < n; i++)
            free(addrs[i].text);
        if (--a->resolving == 0)
            dns_next_round(a);
    }
    uv_freeaddrinfo(res);
    free(q);
    if (--a->refs == 0)
        free(a);
}

static void dns_round(uv_timer_t *t)
{
    lp_upstream_aux_t *a = t->data;
    lp_upstream_rt_t *u = a->u;
    if (!u)
        return;
    const lp_upstream_conf_t *uc = u->conf;
    struct addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    a->failed = 0;
    for (size_t i = 0; i < uc->ntargets; i++) {
        if (!uc->targets[i].host)
            continue;
        dns_query_t *q = calloc(1, sizeof(*q));
        if (!q)
            continue;
        q->aux = a;
        q->origin = (int)i;
        q->req.data = q;
        a->refs++;
        a->resolving++;
        int rc = uv_getaddrinfo(t->loop, &q->req, on_resolved, uc->targets[i].host, NULL, &hints);
        if (rc) {
            lp_log_warn("upstream %s: cannot resolve %s: %s", uc->name, uc->targets[i].addr.text,
                        uv_strerror(rc));
            a->refs--;
            a->resolving--;
            free(q);
        }
    }
    if (!a->resolving)
        dns_next_round(a);
}

int lp_targets_attach(lp_upstream_rt_t *u, lp_worker_t *w, uint64_t gen)
{
    u->w = w;
    u->gen = gen;
    for (size_t i = 0; i < u->ntargets; i++)
        if (!(u->targets[i]->pool = target_pool(u, u->targets[i])))
            return LP_ENOMEM;
    int names = 0;
    for (size_t i = 0; i < u->conf->ntargets; i++)
        names |= u->conf->targets[i].host != NULL;
    /* Timers only where needed: DNS names, or a pending queue. */
    if (!names && !(u->conf->max_connections && u->conf->max_pending))
        return 0;
    lp_upstream_aux_t *a = calloc(1, sizeof(*a));
    if (!a)
        return LP_ENOMEM;
    a->u = u;
    a->refs = 2;
    uv_timer_init(&w->loop, &a->dns_timer);
    uv_timer_init(&w->loop, &a->queue_timer);
    a->dns_timer.data = a->queue_timer.data = a;
    /* Neither keeps a stopping worker's loop alive. */
    uv_unref((uv_handle_t *)&a->dns_timer);
    uv_unref((uv_handle_t *)&a->queue_timer);
    u->aux = a;
    for (size_t i = 0; i < u->conf->ntargets; i++)
        a->failed |= u->conf->targets[i].host && u->conf->targets[i].nresolved == 0;
    if (names)
        dns_next_round(a);
    return 0;
}
