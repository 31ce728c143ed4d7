/* The targets of one upstream in one worker's generation: the set made from the config and
 * changed at run time, from Lua (add, remove, weight) and by DNS answers, with the
 * balancer's view rebuilt on every change; and the re-resolution of DNS targets on the
 * worker's loop (uv_getaddrinfo runs on libuv's threadpool).
 *
 * Worker-local: nothing here is shared or locked. Changes made in one worker stay in it,
 * and a reload builds every set from the config again. */
#ifndef LP_TARGETS_H
#define LP_TARGETS_H

#include "proxy-t.h"

/* The timers and DNS queries of one upstream runtime. Allocated on its own because libuv
 * handles are freed only in their close callbacks and a query's callback always runs: it
 * goes once its handles are closed and its queries answered. */
typedef struct lp_upstream_aux_s {
    uv_timer_t dns_timer;   /* the next round of resolutions */
    uv_timer_t queue_timer; /* upstream.c: the pending queue's head times out, or moves */
    lp_upstream_rt_t *u;    /* NULL once the upstream runtime is freed */
    unsigned refs;          /* open handles + queries in flight */
    unsigned resolving;     /* queries of the current round not answered yet */
    int failed;             /* a name of the current round has no address */
} lp_upstream_aux_t;

/* Builds u's set from uc (IP targets, and the addresses DNS targets had at load) and its
 * balancer. Any thread: touches no loop and no pool (see lp_targets_attach). 0 or LP_E*. */
int lp_targets_init(lp_upstream_rt_t *u, const lp_upstream_conf_t *uc, uint64_t seed);
/* On the worker's thread, before the generation serves: pools for every target, and the
 * timers when a target is a DNS name (re-resolution) or requests may wait (max_pending). */
int lp_targets_attach(lp_upstream_rt_t *u, lp_worker_t *w, uint64_t gen);
/* Drops the set and the balancer (tries in flight keep their targets until they end). */
void lp_targets_free(lp_upstream_rt_t *u);

/* Adds addr (an IP address and port; text "ip:port") with weight. origin: the config
 * target whose name resolved to it, -1 for none. 0: added; 1: it was there already (its
 * weight is set); LP_ENOMEM; LP_ELIMIT beyond the policy's limit. */
int lp_targets_add(lp_upstream_rt_t *u, const lp_addr_t *addr, unsigned weight, int origin);
/* 0, or LP_EINVAL when text is not in the set. */
int lp_targets_remove(lp_upstream_rt_t *u, const char *text);
/* 0, or LP_EINVAL when text is not in the set. */
int lp_targets_set_weight(lp_upstream_rt_t *u, const char *text, unsigned weight);
/* The index of the target whose address text is `text` (n bytes), or -1. */
int lp_targets_find(const lp_upstream_rt_t *u, const char *text, size_t n);
/* The DNS answer for config target `origin`: its addresses become exactly `addrs`. */
void lp_targets_resolved(lp_upstream_rt_t *u, int origin, const lp_addr_t *addrs, size_t n);

static inline void lp_target_ref(lp_target_rt_t *t)
{
    t->refs++;
}
void lp_target_unref(lp_target_rt_t *t);

#endif
