/* Unit tests for engine/balancer_least_conn.c: fewest in flight per weight, weighted random
 * among ties. */
#include "lp_test.h"
#include "common.h"
#include "balancer.h"

static lp_bal_target_t targets[8];

static void setup(const unsigned *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        targets[i] = (lp_bal_target_t){.weight = w[i], .available = 1};
}

/* |got/total - w/sum| within `tol` of w/sum (relative). */
static int share_ok(int got, int total, unsigned w, unsigned sum, double tol)
{
    double want = (double)w / sum, share = (double)got / total;
    if (share >= want * (1 - tol) && share <= want * (1 + tol))
        return 1;
    fprintf(stderr, "  share %.4f, want %.4f +-%.0f%%\n", share, want, tol * 100);
    return 0;
}

static void test_prefers_least_loaded(void)
{
    static const unsigned w[] = {1, 1, 1};
    setup(w, 3);
    targets[0].active = 5;
    targets[1].active = 1;
    targets[2].active = 3;
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_least_conn, targets, 3, 1), 0);
    for (int i = 0; i < 50; i++)
        CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, NULL, 0), 1);
    /* Tried or down: the next least loaded. */
    uint64_t tried[1] = {1u << 1};
    CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, tried, 0), 2);
    targets[2].available = 0;
    CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, tried, 0), 0);
    lp_balancer_destroy(&b);
}

/* active/weight, by cross-multiplication. */
static void test_weighted_load(void)
{
    static const unsigned w[] = {8, 1};
    setup(w, 2);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_least_conn, targets, 2, 1), 0);
    targets[0].active = 4; /* 0.5 */
    targets[1].active = 1; /* 1 */
    CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, NULL, 0), 0);
    targets[0].active = 9; /* 1.125 */
    CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, NULL, 0), 1);
    /* Large counts do not overflow the comparison. */
    targets[0].weight = 4000000000u;
    targets[0].active = 3999999999u;
    targets[1].weight = 1;
    targets[1].active = 1;
    CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, NULL, 0), 0);
    lp_balancer_destroy(&b);
}

/* Ties: a random one of the best, never one of the others. */
static void test_ties_random(void)
{
    static const unsigned w[] = {1, 1, 1, 1};
    setup(w, 4);
    targets[0].active = 2;
    targets[3].active = 2;
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_least_conn, targets, 4, 5), 0);
    int counts[4] = {0};
    for (int i = 0; i < 10000; i++)
        counts[lp_balancer_select(&b, NULL, 0, NULL, 0)]++;
    CHECK_EQ_INT(counts[0], 0);
    CHECK_EQ_INT(counts[3], 0);
    CHECK(share_ok(counts[1], 10000, 1, 2, 0.05));
    CHECK(share_ok(counts[2], 10000, 1, 2, 0.05));
    lp_balancer_destroy(&b);
}

/* Idle (every target at 0 in flight): picks follow the weights. */
static void test_weights_idle(void)
{
    static const unsigned w[] = {2, 3, 5};
    setup(w, 3);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_least_conn, targets, 3, 11), 0);
    int counts[3] = {0};
    for (int i = 0; i < 10000; i++)
        counts[lp_balancer_select(&b, NULL, 0, NULL, 0)]++;
    for (int i = 0; i < 3; i++)
        CHECK(share_ok(counts[i], 10000, w[i], 10, 0.05));
    lp_balancer_destroy(&b);
}

/* Under load: a closed loop with 100 requests in flight, where each step one random
 * request completes and a new one is placed. In-flight counts settle in proportion to
 * weight, so throughput does too. */
static void test_weights_under_load(void)
{
    static const unsigned w[] = {2, 3, 5};
    setup(w, 3);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_least_conn, targets, 3, 13), 0);
    int inflight[100];
    for (int i = 0; i < 100; i++) {
        inflight[i] = lp_balancer_select(&b, NULL, 0, NULL, 0);
        targets[inflight[i]].active++;
    }
    int counts[3] = {0};
    for (int i = 0; i < 10000; i++) {
        uint32_t done = lp__balancer_rand_below(&b, 100);
        targets[inflight[done]].active--;
        int k = lp_balancer_select(&b, NULL, 0, NULL, 0);
        REQUIRE(k >= 0);
        targets[k].active++;
        inflight[done] = k;
        counts[k]++;
    }
    for (int i = 0; i < 3; i++)
        CHECK(share_ok(counts[i], 10000, w[i], 10, 0.05));
    /* And the in-flight split is the weights' (20/30/50, +-1 for the last placement). */
    CHECK(targets[0].active >= 19 && targets[0].active <= 21);
    CHECK(targets[1].active >= 29 && targets[1].active <= 31);
    CHECK(targets[2].active >= 49 && targets[2].active <= 51);
    lp_balancer_destroy(&b);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_prefers_least_loaded), LP_TEST_ENTRY(test_weighted_load),
    LP_TEST_ENTRY(test_ties_random),          LP_TEST_ENTRY(test_weights_idle),
    LP_TEST_ENTRY(test_weights_under_load),
};

LP_TEST_MAIN(tests)
