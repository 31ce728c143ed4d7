/* least_conn: the target with the fewest requests in flight relative to its weight
 * (active/weight, compared by cross-multiplication: a_i * w_j < a_j * w_i). Ties go to a
 * random one of the best, drawn in proportion to weight, so an idle upstream (every target
 * at 0) still shares picks by weight, and under load in-flight counts settle at the weights.
 * Stateless: `active` is the caller's. */
#include "common.h"
#include "balancer.h"

static int lc_init(lp_balancer_t *b)
{
    return 0;
}

static void lc_destroy(lp_balancer_t *b) {}

static int lc_select(lp_balancer_t *b, const void *key, size_t keylen, const uint64_t *tried,
                     uint64_t now_ns)
{
    int best = -1;
    uint64_t best_a = 0, best_w = 1, tie_w = 0;
    for (size_t i = 0; i < b->n; i++) {
        if (!lp__balancer_eligible(b, tried, i))
            continue;
        uint64_t a = b->targets[i].active, w = lp__balancer_weight(&b->targets[i]);
        /* Both sides fit in 64 bits: 32-bit counts times 32-bit weights. */
        uint64_t lhs = a * best_w, rhs = best_a * w;
        if (best < 0 || lhs < rhs) {
            best = (int)i;
            best_a = a;
            best_w = w;
            tie_w = w;
        } else if (lhs == rhs) {
            /* Weighted reservoir sampling: keep i with probability w / (weights so far). */
            tie_w += w;
            if (lp__balancer_rand(b) % tie_w < w) {
                best = (int)i;
                best_a = a;
                best_w = w;
            }
        }
    }
    return best;
}

const lp_balancer_ops_t lp_balancer_least_conn = {
    .name = "least_conn",
    .init = lc_init,
    .select = lc_select,
    .report = NULL,
    .update = NULL,
    .destroy = lc_destroy,
};
