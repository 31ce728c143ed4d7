/* round_robin: smooth weighted round robin (nginx's algorithm). Each pick adds every eligible
 * target's weight to its `current`, takes the largest and subtracts the eligible total from
 * it: over a cycle of sum(weights) picks each target gets exactly its weight, interleaved
 * ({5,1,1} gives a a b a c a a, not a a a a a b c). Down and tried targets sit out. */
#include <stdlib.h>
#include "common.h"
#include "balancer.h"

typedef struct {
    int64_t current;
    unsigned weight; /* the weight `current` was built with: a change restarts the cycle */
} rr_peer_t;

typedef struct {
    rr_peer_t *peers; /* owned, n entries */
    size_t n;
} rr_state_t;

static void rr_destroy(lp_balancer_t *b)
{
    rr_state_t *st = b->state;
    if (st)
        free(st->peers);
    free(st);
    b->state = NULL;
}

static int rr_init(lp_balancer_t *b)
{
    rr_state_t *st = calloc(1, sizeof(*st));
    if (!st || !(st->peers = calloc(b->n ? b->n : 1, sizeof(*st->peers)))) {
        free(st);
        return LP_ENOMEM;
    }
    st->n = b->n;
    for (size_t i = 0; i < b->n; i++)
        st->peers[i].weight = lp__balancer_weight(&b->targets[i]);
    b->state = st;
    return 0;
}

static int rr_update(lp_balancer_t *b)
{
    rr_state_t *st = b->state;
    int same = st && st->n == b->n;
    for (size_t i = 0; same && i < b->n; i++)
        same = st->peers[i].weight == lp__balancer_weight(&b->targets[i]);
    if (same)
        return 0;
    /* A new set or new weights: start a fresh cycle, as nginx does on reload. */
    rr_destroy(b);
    return rr_init(b);
}

static int rr_select(lp_balancer_t *b, const void *key, size_t keylen, const uint64_t *tried,
                     uint64_t now_ns)
{
    rr_state_t *st = b->state;
    if (!st)
        return -1;
    int best = -1;
    int64_t total = 0;
    for (size_t i = 0; i < st->n; i++) {
        if (!lp__balancer_eligible(b, tried, i))
            continue;
        rr_peer_t *p = &st->peers[i];
        p->current += p->weight;
        total += p->weight;
        if (best < 0 || p->current > st->peers[best].current)
            best = (int)i;
    }
    if (best >= 0)
        st->peers[best].current -= total;
    return best;
}

const lp_balancer_ops_t lp_balancer_round_robin = {
    .name = "round_robin",
    .init = rr_init,
    .select = rr_select,
    .report = NULL,
    .update = rr_update,
    .destroy = rr_destroy,
};
