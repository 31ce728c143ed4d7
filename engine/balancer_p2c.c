/* p2c: the power of two random choices on peak-EWMA latency (Finagle's PeakEwma, as in
 * Linkerd, Envoy and Kong). Two distinct eligible targets are drawn at random, each draw in
 * proportion to weight, and the cheaper one is taken:
 *
 *     cost = latency estimate * (active + 1) / weight
 *
 * The estimate is a time-decayed EWMA of the latencies report() gives, with a peak rule: a
 * sample above the estimate replaces it at once (a target that slows down loses traffic now),
 * lower samples blend in with weight 1 - exp(-dt/tau). Read at select time the estimate also
 * decays toward 0 with the time since its last sample, as if an idle target had reported 0:
 * a target shunned for being slow looks cheap again after a few tau and gets probed; its next
 * sample puts it back where it belongs.
 *
 * A target never measured (new, or carried over without an id) costs 0 while it has nothing
 * in flight, so it is tried as soon as it is drawn; while its first requests are in flight it
 * is estimated at the upstream's neutral latency (an EWMA of every successful sample), so it
 * is not flooded before its first answer. A failed try counts as a sample of at least
 * LP_P2C_FAIL_FACTOR times the neutral latency (and at least LP_P2C_FAIL_MIN_NS): a target
 * that fails fast must not look fast.
 *
 * Clock: select and report take `now_ns` from the caller (any monotonic clock in ns, e.g.
 * uv_now() * 1000000); nothing here reads a clock. */
#include <math.h>
#include <stdlib.h>
#include "common.h"
#include "balancer.h"

#define LP_P2C_TAU_NS       10e9 /* EWMA time constant: 10 s, as Finagle and Linkerd */
#define LP_P2C_FAIL_FACTOR  10.0
#define LP_P2C_FAIL_MIN_NS  10e6 /* 10 ms */
#define LP_P2C_REJECT_TRIES 16   /* rejection-sampling draws before the exact O(n) draw */

typedef struct {
    double ewma_ns;    /* peak EWMA at stamp_ns; meaningful when `measured` */
    uint64_t stamp_ns; /* time of the last sample */
    uint64_t id_hash;  /* the target's id: state follows it across set changes */
    int measured;
} p2c_peer_t;

typedef struct {
    p2c_peer_t *peers; /* owned, n entries */
    size_t n;
    unsigned max_weight; /* for rejection sampling */
    double neutral_ns;   /* EWMA of every successful sample, any target (0: none yet) */
    uint64_t neutral_stamp_ns;
} p2c_state_t;

static uint64_t id_hash(const lp_bal_target_t *t, size_t i)
{
    if (t->id)
        return lp_balancer_hash64(t->id, strlen(t->id), 0x70326321ull);
    /* No id: the index is the identity (state stays with the position). */
    return ~(uint64_t)i;
}

/* exp(-dt/tau) for the time from `then` to `now` (1 if the clock went backwards). Under load
 * a target's events are microseconds apart (x below 1e-3): there the Taylor polynomial is
 * exact to 2e-10 and costs a few cycles, where exp() was half of a pick's time. */
static double decay(uint64_t then, uint64_t now)
{
    if (now <= then)
        return 1.0;
    double x = (double)(now - then) * (1.0 / LP_P2C_TAU_NS);
    return x < 1e-3 ? 1.0 - x + 0.5 * x * x : exp(-x);
}

static double estimate(const p2c_state_t *st, const p2c_peer_t *p, unsigned active, uint64_t now)
{
    if (p->measured)
        return p->ewma_ns * decay(p->stamp_ns, now);
    if (!active)
        return 0;
    return st->neutral_ns > 0 ? st->neutral_ns : 1.0;
}

static double cost(lp_balancer_t *b, size_t i, uint64_t now)
{
    p2c_state_t *st = b->state;
    const lp_bal_target_t *t = &b->targets[i];
    return estimate(st, &st->peers[i], t->active, now) * ((double)t->active + 1.0) /
           (double)lp__balancer_weight(t);
}

/* Builds the state for the current set, keeping what `old` knew about targets with the same
 * id (a reload or a DNS change does not forget the latencies). */
static int build(lp_balancer_t *b, const p2c_state_t *old)
{
    p2c_state_t *st = calloc(1, sizeof(*st));
    if (!st || !(st->peers = calloc(b->n ? b->n : 1, sizeof(*st->peers)))) {
        free(st);
        return LP_ENOMEM;
    }
    st->n = b->n;
    st->max_weight = 1;
    for (size_t i = 0; i < b->n; i++) {
        p2c_peer_t *p = &st->peers[i];
        p->id_hash = id_hash(&b->targets[i], i);
        unsigned w = lp__balancer_weight(&b->targets[i]);
        if (w > st->max_weight)
            st->max_weight = w;
        if (!old)
            continue;
        /* The same position first (the common case: nothing moved), then a search. */
        if (i < old->n && old->peers[i].id_hash == p->id_hash) {
            *p = old->peers[i];
            continue;
        }
        for (size_t j = 0; j < old->n; j++)
            if (old->peers[j].id_hash == p->id_hash) {
                *p = old->peers[j];
                break;
            }
    }
    if (old) {
        st->neutral_ns = old->neutral_ns;
        st->neutral_stamp_ns = old->neutral_stamp_ns;
    }
    b->state = st;
    return 0;
}

static void free_state(p2c_state_t *st)
{
    if (st)
        free(st->peers);
    free(st);
}

static int p2c_init(lp_balancer_t *b)
{
    return build(b, NULL);
}

static int p2c_update(lp_balancer_t *b)
{
    p2c_state_t *old = b->state;
    b->state = NULL;
    int rc = build(b, old);
    free_state(old);
    return rc;
}

static void p2c_destroy(lp_balancer_t *b)
{
    free_state(b->state);
    b->state = NULL;
}

/* A random eligible target other than `except`, drawn in proportion to weight; -1 if none. */
static int draw(lp_balancer_t *b, const uint64_t *tried, int except)
{
    p2c_state_t *st = b->state;
    size_t n = st->n < b->n ? st->n : b->n;
    if (!n)
        return -1;
    /* Rejection sampling: O(1) when most targets are eligible. Accepting i with probability
     * weight/max_weight after a uniform index draw is exactly a weighted draw. */
    for (int k = 0; k < LP_P2C_REJECT_TRIES; k++) {
        size_t i = lp__balancer_rand_below(b, (uint32_t)n);
        if ((int)i == except || !lp__balancer_eligible(b, tried, i))
            continue;
        if (lp__balancer_rand_below(b, st->max_weight) < lp__balancer_weight(&b->targets[i]))
            return (int)i;
    }
    /* Most are down or tried: the exact draw (the same distribution). */
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        if ((int)i != except && lp__balancer_eligible(b, tried, i))
            total += lp__balancer_weight(&b->targets[i]);
    if (!total)
        return -1;
    uint64_t r = lp__balancer_rand(b) % total;
    for (size_t i = 0; i < n; i++) {
        if ((int)i == except || !lp__balancer_eligible(b, tried, i))
            continue;
        uint64_t w = lp__balancer_weight(&b->targets[i]);
        if (r < w)
            return (int)i;
        r -= w;
    }
    return -1; /* not reached */
}

static int p2c_select(lp_balancer_t *b, const void *key, size_t keylen, const uint64_t *tried,
                      uint64_t now_ns)
{
    if (!b->state)
        return -1;
    int x = draw(b, tried, -1);
    if (x < 0)
        return -1;
    int y = draw(b, tried, x);
    if (y < 0)
        return x;
    /* Equal costs (both unmeasured and idle) keep the first draw: a weighted random pick. */
    return cost(b, (size_t)y, now_ns) < cost(b, (size_t)x, now_ns) ? y : x;
}

static void p2c_report(lp_balancer_t *b, int idx, uint64_t latency_ns, int failed, uint64_t now_ns)
{
    p2c_state_t *st = b->state;
    if (!st || (size_t)idx >= st->n)
        return;
    double sample = (double)latency_ns;
    if (failed) {
        double least = st->neutral_ns * LP_P2C_FAIL_FACTOR;
        if (least < LP_P2C_FAIL_MIN_NS)
            least = LP_P2C_FAIL_MIN_NS;
        if (sample < least)
            sample = least;
    } else if (st->neutral_ns <= 0) {
        st->neutral_ns = sample;
        st->neutral_stamp_ns = now_ns;
    } else {
        double w = decay(st->neutral_stamp_ns, now_ns);
        st->neutral_ns = st->neutral_ns * w + sample * (1.0 - w);
        if (now_ns > st->neutral_stamp_ns)
            st->neutral_stamp_ns = now_ns;
    }
    p2c_peer_t *p = &st->peers[idx];
    if (!p->measured) {
        p->ewma_ns = sample;
        p->stamp_ns = now_ns;
        p->measured = 1;
        return;
    }
    double w = decay(p->stamp_ns, now_ns);
    double cur = p->ewma_ns * w;
    /* Peak: a slower sample takes over at once; faster ones decay in. */
    p->ewma_ns = sample > cur ? sample : cur + sample * (1.0 - w);
    if (now_ns > p->stamp_ns)
        p->stamp_ns = now_ns;
}

static double p2c_ewma(const lp_balancer_t *b, int idx)
{
    const p2c_state_t *st = b->state;
    if (!st || idx < 0 || (size_t)idx >= st->n || !st->peers[idx].measured)
        return 0;
    return st->peers[idx].ewma_ns;
}

const lp_balancer_ops_t lp_balancer_p2c = {
    .name = "p2c",
    .ewma = p2c_ewma,
    .init = p2c_init,
    .select = p2c_select,
    .report = p2c_report,
    .update = p2c_update,
    .destroy = p2c_destroy,
};
