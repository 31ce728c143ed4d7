#include <stdlib.h>
#include "balancer.h"

int lp_rr_init(lp_rr_t *rr, const unsigned *weights, size_t n)
{
    rr->peers = calloc(n ? n : 1, sizeof(*rr->peers));
    if (!rr->peers)
        return -1;
    rr->n = n;
    rr->total = 0;
    for (size_t i = 0; i < n; i++) {
        rr->peers[i].weight = weights[i] ? weights[i] : 1;
        rr->total += rr->peers[i].weight;
    }
    return 0;
}

void lp_rr_destroy(lp_rr_t *rr)
{
    free(rr->peers);
    rr->peers = NULL;
    rr->n = 0;
}

int lp_rr_select(lp_rr_t *rr, const uint64_t *tried)
{
    int best = -1;
    int64_t total = 0;
    if (rr->n == 1)
        return tried && (tried[0] & 1) ? -1 : 0;
    for (size_t i = 0; i < rr->n; i++) {
        if (tried && (tried[i / 64] >> (i % 64)) & 1)
            continue;
        lp_rr_peer_t *p = &rr->peers[i];
        p->current += p->weight;
        total += p->weight;
        if (best < 0 || p->current > rr->peers[best].current)
            best = (int)i;
    }
    if (best >= 0)
        rr->peers[best].current -= total;
    return best;
}
