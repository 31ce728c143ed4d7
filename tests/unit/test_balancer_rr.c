/* Unit tests for engine/balancer_rr.c: smooth weighted round robin behind lp_balancer_t. */
#include "lp_test.h"
#include "common.h"
#include "balancer.h"

static lp_bal_target_t targets[8];

static void setup(const unsigned *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        targets[i] = (lp_bal_target_t){.id = NULL, .weight = w[i], .available = 1};
}

static void test_weights_exact(void)
{
    static const unsigned w[] = {2, 3, 5};
    setup(w, 3);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_round_robin, targets, 3, 1), 0);
    int counts[3] = {0}, window[3] = {0}, bad_windows = 0;
    for (int i = 0; i < 10000; i++) {
        int k = lp_balancer_select(&b, NULL, 0, NULL, 0);
        REQUIRE(k >= 0 && k < 3);
        counts[k]++;
        window[k]++;
        /* Every cycle of sum(weights) picks holds each target exactly weight times. */
        if (i % 10 == 9) {
            bad_windows += window[0] != 2 || window[1] != 3 || window[2] != 5;
            window[0] = window[1] = window[2] = 0;
        }
    }
    CHECK_EQ_INT(counts[0], 2000);
    CHECK_EQ_INT(counts[1], 3000);
    CHECK_EQ_INT(counts[2], 5000);
    CHECK_EQ_INT(bad_windows, 0);
    lp_balancer_destroy(&b);
}

static void test_interleaved(void)
{
    static const unsigned w[] = {5, 1, 1};
    setup(w, 3);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_round_robin, targets, 3, 1), 0);
    char seq[22];
    for (int i = 0; i < 21; i++)
        seq[i] = (char)('a' + lp_balancer_select(&b, NULL, 0, NULL, 0));
    seq[21] = 0;
    CHECK_STR(seq, "aabacaaaabacaaaabacaa");
    lp_balancer_destroy(&b);
}

/* A down target sits out; the others keep their ratio; back up, it rejoins. */
static void test_unavailable(void)
{
    static const unsigned w[] = {1, 2, 3};
    setup(w, 3);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_round_robin, targets, 3, 1), 0);
    targets[2].available = 0;
    int counts[3] = {0};
    for (int i = 0; i < 300; i++)
        counts[lp_balancer_select(&b, NULL, 0, NULL, 0)]++;
    CHECK_EQ_INT(counts[0], 100);
    CHECK_EQ_INT(counts[1], 200);
    CHECK_EQ_INT(counts[2], 0);
    targets[2].available = 1;
    counts[0] = counts[1] = counts[2] = 0;
    for (int i = 0; i < 600; i++)
        counts[lp_balancer_select(&b, NULL, 0, NULL, 0)]++;
    CHECK(counts[0] >= 99 && counts[0] <= 101);
    CHECK(counts[1] >= 199 && counts[1] <= 201);
    CHECK(counts[2] >= 299 && counts[2] <= 301);
    lp_balancer_destroy(&b);
}

/* update(): new weights take effect; a grown set includes the new target. */
static void test_update(void)
{
    static const unsigned w[] = {1, 1};
    setup(w, 2);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_round_robin, targets, 2, 1), 0);
    targets[1].weight = 3;
    REQUIRE_EQ_INT(lp_balancer_update(&b), 0);
    int counts[3] = {0};
    for (int i = 0; i < 400; i++)
        counts[lp_balancer_select(&b, NULL, 0, NULL, 0)]++;
    CHECK_EQ_INT(counts[0], 100);
    CHECK_EQ_INT(counts[1], 300);
    targets[2] = (lp_bal_target_t){.weight = 4, .available = 1};
    b.n = 3;
    REQUIRE_EQ_INT(lp_balancer_update(&b), 0);
    counts[0] = counts[1] = counts[2] = 0;
    for (int i = 0; i < 800; i++)
        counts[lp_balancer_select(&b, NULL, 0, NULL, 0)]++;
    CHECK_EQ_INT(counts[0], 100);
    CHECK_EQ_INT(counts[1], 300);
    CHECK_EQ_INT(counts[2], 400);
    /* Availability alone is not a change: update keeps the cycle (no reset). */
    CHECK_EQ_INT(lp_balancer_update(&b), 0);
    lp_balancer_destroy(&b);
}

/* Retries go round the remaining targets in the same smooth order. */
static void test_retry_order(void)
{
    static const unsigned w[] = {1, 1, 1, 1};
    setup(w, 4);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_round_robin, targets, 4, 1), 0);
    uint64_t tried[1] = {0};
    for (int i = 0; i < 4; i++) {
        int k = lp_balancer_select(&b, NULL, 0, tried, 0);
        CHECK_EQ_INT(k, i);
        lp_balancer_mark_tried(tried, (size_t)k);
    }
    CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, tried, 0), -1);
    lp_balancer_destroy(&b);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_weights_exact), LP_TEST_ENTRY(test_interleaved),
    LP_TEST_ENTRY(test_unavailable),   LP_TEST_ENTRY(test_update),
    LP_TEST_ENTRY(test_retry_order),
};

LP_TEST_MAIN(tests)
