/* Unit tests for engine/balancer.c: smooth weighted round robin with a "tried" bitmap. */
#include "lp_test.h"
#include "common.h"
#include "balancer.h"

static void test_proportional_counts(void)
{
    static const unsigned w[] = {1, 2, 5};
    lp_rr_t rr;
    REQUIRE_EQ_INT(lp_rr_init(&rr, w, 3), 0);
    CHECK_EQ_INT(rr.total, 8);
    int counts[3] = {0}, window[3] = {0};
    int last = -1, run = 0, max_run = 0, bad_windows = 0;
    for (int i = 0; i < 8000; i++) {
        int k = lp_rr_select(&rr, NULL);
        if (!CHECK(k >= 0 && k < 3))
            break;
        counts[k]++;
        window[k]++;
        run = k == last ? run + 1 : 1;
        last = k;
        if (run > max_run)
            max_run = run;
        /* Every period of `total` picks holds each target exactly `weight` times. */
        if (i % 8 == 7) {
            if (window[0] != 1 || window[1] != 2 || window[2] != 5)
                bad_windows++;
            window[0] = window[1] = window[2] = 0;
        }
    }
    CHECK_EQ_INT(counts[0], 1000);
    CHECK_EQ_INT(counts[1], 2000);
    CHECK_EQ_INT(counts[2], 5000);
    CHECK_EQ_INT(bad_windows, 0);
    /* Smooth: the weight-5 target never runs 5 in a row (the period is c b c a c c b c). */
    CHECK(max_run <= 2);
    lp_rr_destroy(&rr);
    CHECK(rr.peers == NULL);
}

static void test_interleaved_sequence(void)
{
    static const unsigned w[] = {5, 1, 1};
    lp_rr_t rr;
    REQUIRE_EQ_INT(lp_rr_init(&rr, w, 3), 0);
    char seq[3 * 7 + 1];
    for (int i = 0; i < 21; i++)
        seq[i] = (char)('a' + lp_rr_select(&rr, NULL));
    seq[21] = 0;
    /* The classic nginx sequence, repeating with period 7; not "aaaaabc". */
    CHECK_STR(seq, "aabacaaaabacaaaabacaa");
    lp_rr_destroy(&rr);
}

static void test_equal_weights_rotate(void)
{
    static const unsigned w[] = {1, 1, 1, 1};
    lp_rr_t rr;
    REQUIRE_EQ_INT(lp_rr_init(&rr, w, 4), 0);
    for (int i = 0; i < 12; i++)
        CHECK_EQ_INT(lp_rr_select(&rr, NULL), i % 4);
    lp_rr_destroy(&rr);
}

static void test_zero_weight_counts_as_one(void)
{
    static const unsigned w[] = {0, 1};
    lp_rr_t rr;
    REQUIRE_EQ_INT(lp_rr_init(&rr, w, 2), 0);
    CHECK_EQ_INT(rr.total, 2);
    int counts[2] = {0};
    for (int i = 0; i < 100; i++)
        counts[lp_rr_select(&rr, NULL)]++;
    CHECK_EQ_INT(counts[0], 50);
    CHECK_EQ_INT(counts[1], 50);
    lp_rr_destroy(&rr);
}

static void test_tried_bitmap(void)
{
    static const unsigned w[] = {1, 1, 1};
    lp_rr_t rr;
    REQUIRE_EQ_INT(lp_rr_init(&rr, w, 3), 0);
    uint64_t tried[1] = {1u << 0};
    int counts[3] = {0};
    for (int i = 0; i < 30; i++) {
        int k = lp_rr_select(&rr, tried);
        REQUIRE(k >= 0 && k < 3);
        counts[k]++;
    }
    CHECK_EQ_INT(counts[0], 0);
    CHECK_EQ_INT(counts[1], 15);
    CHECK_EQ_INT(counts[2], 15);

    tried[0] = (1u << 0) | (1u << 2);
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(lp_rr_select(&rr, tried), 1);

    tried[0] = 7;
    CHECK_EQ_INT(lp_rr_select(&rr, tried), -1);

    /* A retry sequence: mark each pick tried until none is left; each target once. */
    uint64_t seen[1] = {0};
    int picks = 0, k;
    while ((k = lp_rr_select(&rr, seen)) >= 0) {
        CHECK(!(seen[0] & (1u << k)));
        seen[0] |= 1u << k;
        if (!CHECK(++picks <= 3))
            break;
    }
    CHECK_EQ_INT(picks, 3);
    CHECK_EQ_INT(seen[0], 7);
    lp_rr_destroy(&rr);
}

static void test_tried_bitmap_beyond_64(void)
{
    unsigned w[70];
    for (int i = 0; i < 70; i++)
        w[i] = 1;
    lp_rr_t rr;
    REQUIRE_EQ_INT(lp_rr_init(&rr, w, 70), 0);
    uint64_t tried[2] = {~0ull, ~0ull & ~(1ull << (65 - 64))};
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(lp_rr_select(&rr, tried), 65);
    tried[1] = ~0ull;
    CHECK_EQ_INT(lp_rr_select(&rr, tried), -1);
    lp_rr_destroy(&rr);
}

static void test_single_target(void)
{
    static const unsigned w[] = {7};
    lp_rr_t rr;
    REQUIRE_EQ_INT(lp_rr_init(&rr, w, 1), 0);
    for (int i = 0; i < 10; i++)
        CHECK_EQ_INT(lp_rr_select(&rr, NULL), 0);
    uint64_t none[1] = {0}, all[1] = {1};
    CHECK_EQ_INT(lp_rr_select(&rr, none), 0);
    CHECK_EQ_INT(lp_rr_select(&rr, all), -1);
    lp_rr_destroy(&rr);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_proportional_counts),  LP_TEST_ENTRY(test_interleaved_sequence),
    LP_TEST_ENTRY(test_equal_weights_rotate), LP_TEST_ENTRY(test_zero_weight_counts_as_one),
    LP_TEST_ENTRY(test_tried_bitmap),         LP_TEST_ENTRY(test_tried_bitmap_beyond_64),
    LP_TEST_ENTRY(test_single_target),
};

LP_TEST_MAIN(tests)
