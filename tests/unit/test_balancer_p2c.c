/* Unit tests for engine/balancer_p2c.c: power of two choices on peak-EWMA latency. The
 * clock is simulated: select and report take now_ns from the test. */
#include "lp_test.h"
#include "common.h"
#include "balancer.h"

#define MS 1000000ull

static lp_bal_target_t targets[8];
static char ids[8][16];

static void setup(const unsigned *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(ids[i], sizeof(ids[i]), "10.0.0.%zu:80", i + 1);
        targets[i] = (lp_bal_target_t){.id = ids[i], .weight = w[i], .available = 1};
    }
}

static int share_ok(int got, int total, unsigned w, unsigned sum, double tol)
{
    double want = (double)w / sum, share = (double)got / total;
    if (share >= want * (1 - tol) && share <= want * (1 + tol))
        return 1;
    fprintf(stderr, "  share %.4f, want %.4f +-%.0f%%\n", share, want, tol * 100);
    return 0;
}

/* A closed loop: `conc` requests in flight; target i answers in lat[i]; each completion
 * reports and places the next request at that moment. Counts picks per target. */
static void closed_loop(lp_balancer_t *b, const uint64_t *lat, int conc, int steps, int *counts)
{
    int who[64];
    uint64_t end[64], now = 0;
    for (int i = 0; i < conc; i++) {
        who[i] = lp_balancer_select(b, NULL, 0, NULL, now);
        targets[who[i]].active++;
        end[i] = now + lat[who[i]];
    }
    for (int s = 0; s < steps; s++) {
        int first = 0;
        for (int i = 1; i < conc; i++)
            if (end[i] < end[first])
                first = i;
        now = end[first];
        targets[who[first]].active--;
        lp_balancer_report(b, who[first], lat[who[first]], 0, now);
        int k = lp_balancer_select(b, NULL, 0, NULL, now);
        if (k < 0)
            return;
        targets[k].active++;
        counts[k]++;
        who[first] = k;
        end[first] = now + lat[k];
    }
}

/* No latency known and nothing in flight: a weighted random pick. */
static void test_weights_without_signal(void)
{
    static const unsigned w[] = {2, 3, 5};
    setup(w, 3);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_p2c, targets, 3, 17), 0);
    int counts[3] = {0};
    for (int i = 0; i < 10000; i++)
        counts[lp_balancer_select(&b, NULL, 0, NULL, (uint64_t)i * MS)]++;
    for (int i = 0; i < 3; i++)
        CHECK(share_ok(counts[i], 10000, w[i], 10, 0.05));
    lp_balancer_destroy(&b);
}

/* Sequential requests, one every 10 ms: A answers in 1 ms, B in 20 ms. A gets nearly all;
 * B is still probed: unused, its estimate decays toward 0 (tau 10 s) and drops below A's
 * after about tau * ln(20) = 30 s, so it is tried about every 30 s: 3 times in the 100 s
 * simulated, plus its first try as an unmeasured target. */
static void test_prefers_fast_probes_slow(void)
{
    static const unsigned w[] = {1, 1};
    static const uint64_t lat[] = {1 * MS, 20 * MS};
    setup(w, 2);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_p2c, targets, 2, 19), 0);
    int counts[2] = {0}, first_b = -1, last_b = -1;
    for (int i = 0; i < 10000; i++) {
        uint64_t now = (uint64_t)i * 10 * MS;
        int k = lp_balancer_select(&b, NULL, 0, NULL, now);
        REQUIRE(k >= 0);
        counts[k]++;
        if (k == 1) {
            if (first_b < 0)
                first_b = i;
            last_b = i;
        }
        lp_balancer_report(&b, k, lat[k], 0, now + lat[k]);
    }
    CHECK(counts[0] >= 9950);
    CHECK(counts[1] >= 3 && counts[1] <= 10);
    /* Unmeasured, B is tried at once; and it is still probed late in the run. */
    CHECK(first_b >= 0 && first_b < 5);
    CHECK(last_b > 7000);
    lp_balancer_destroy(&b);
}

/* Under load (30 in flight, a closed loop): two 1 ms targets share the traffic evenly and
 * the 20 ms one gets a trickle, more than its probes (it takes a request when the fast
 * ones are busy enough) but well under 1%. */
static void test_under_load(void)
{
    static const unsigned w[] = {1, 1, 1};
    static const uint64_t lat[] = {1 * MS, 1 * MS, 20 * MS};
    setup(w, 3);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_p2c, targets, 3, 23), 0);
    int counts[3] = {0};
    closed_loop(&b, lat, 30, 20000, counts);
    CHECK(counts[2] > 0 && counts[2] < 200);
    int fast = counts[0] + counts[1];
    CHECK(share_ok(counts[0], fast, 1, 2, 0.05));
    CHECK(share_ok(counts[1], fast, 1, 2, 0.05));
    lp_balancer_destroy(&b);
}

/* Weight is capacity: cost divides by it. Under load with equal latencies, in-flight
 * counts and so picks settle at the weights (64 in flight: within 5%). */
static void test_weights_under_load(void)
{
    static const unsigned w[] = {2, 3, 5};
    static const uint64_t lat[] = {5 * MS, 5 * MS, 5 * MS};
    setup(w, 3);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_p2c, targets, 3, 29), 0);
    int counts[3] = {0};
    closed_loop(&b, lat, 64, 20000, counts);
    for (int i = 0; i < 3; i++)
        CHECK(share_ok(counts[i], 20000, w[i], 10, 0.05));
    lp_balancer_destroy(&b);
}

/* At low load with equal latencies the cheaper (heavier) target wins most pairs: the
 * heaviest gets more than its share, never less (docs/balancing.md has the numbers). */
static void test_weights_low_load(void)
{
    static const unsigned w[] = {2, 3, 5};
    setup(w, 3);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_p2c, targets, 3, 31), 0);
    int counts[3] = {0};
    for (int i = 0; i < 10000; i++) {
        uint64_t now = (uint64_t)i * 10 * MS;
        int k = lp_balancer_select(&b, NULL, 0, NULL, now);
        REQUIRE(k >= 0);
        counts[k]++;
        lp_balancer_report(&b, k, 5 * MS, 0, now + 5 * MS);
    }
    CHECK(counts[2] >= 5000);
    CHECK(counts[0] > 0 && counts[1] > 0);
    lp_balancer_destroy(&b);
}

/* In flight counts: with equal latencies the idle target wins. */
static void test_active_matters(void)
{
    static const unsigned w[] = {1, 1};
    setup(w, 2);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_p2c, targets, 2, 37), 0);
    lp_balancer_report(&b, 0, 5 * MS, 0, 1 * MS);
    lp_balancer_report(&b, 1, 5 * MS, 0, 1 * MS);
    targets[0].active = 10;
    for (int i = 0; i < 20; i++)
        CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, NULL, 2 * MS), 1);
    targets[0].active = 0;
    targets[1].active = 10;
    for (int i = 0; i < 20; i++)
        CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, NULL, 2 * MS), 0);
    lp_balancer_destroy(&b);
}

/* Peak: one slow answer takes effect at once; a fast one only decays in. */
static void test_peak(void)
{
    static const unsigned w[] = {1, 1};
    setup(w, 2);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_p2c, targets, 2, 41), 0);
    uint64_t now = 0;
    for (int i = 0; i < 100; i++, now += 10 * MS) {
        lp_balancer_report(&b, 0, 1 * MS, 0, now);
        lp_balancer_report(&b, 1, 2 * MS, 0, now);
    }
    CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, NULL, now), 0);
    lp_balancer_report(&b, 0, 50 * MS, 0, now);
    CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, NULL, now), 1);
    /* Fast answers again: a second later A is still estimated above B (50 ms decays in). */
    for (int i = 0; i < 100; i++, now += 10 * MS) {
        lp_balancer_report(&b, 0, 1 * MS, 0, now);
        lp_balancer_report(&b, 1, 2 * MS, 0, now);
    }
    CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, NULL, now), 1);
    /* A minute later it has decayed back below B. */
    for (int i = 0; i < 6000; i++, now += 10 * MS) {
        lp_balancer_report(&b, 0, 1 * MS, 0, now);
        lp_balancer_report(&b, 1, 2 * MS, 0, now);
    }
    CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, NULL, now), 0);
    lp_balancer_destroy(&b);
}

/* A target that fails fast must not look fast. */
static void test_failures_penalised(void)
{
    static const unsigned w[] = {1, 1};
    setup(w, 2);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_p2c, targets, 2, 43), 0);
    int counts[2] = {0};
    for (int i = 0; i < 10000; i++) {
        uint64_t now = (uint64_t)i * 10 * MS;
        int k = lp_balancer_select(&b, NULL, 0, NULL, now);
        REQUIRE(k >= 0);
        counts[k]++;
        if (k == 0)
            lp_balancer_report(&b, 0, MS / 10, 1, now + MS / 10); /* refused in 0.1 ms */
        else
            lp_balancer_report(&b, 1, 5 * MS, 0, now + 5 * MS);
    }
    CHECK(counts[1] >= 9900);
    CHECK(counts[0] > 0);
    lp_balancer_destroy(&b);
}

/* update(): a new target is tried at once (unmeasured and idle, it costs 0); what was
 * learnt follows the ids, even when the caller reorders the array. */
static void test_update_keeps_state(void)
{
    static const unsigned w[] = {1, 1, 1};
    setup(w, 3);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_p2c, targets, 2, 47), 0);
    lp_balancer_report(&b, 0, 1 * MS, 0, 1 * MS);  /* 10.0.0.1: fast */
    lp_balancer_report(&b, 1, 20 * MS, 0, 1 * MS); /* 10.0.0.2: slow */
    /* Add 10.0.0.3 and swap the first two. */
    lp_bal_target_t t0 = targets[0];
    targets[0] = targets[1];
    targets[1] = t0;
    b.n = 3;
    REQUIRE_EQ_INT(lp_balancer_update(&b), 0);
    int first_new = -1, slow = 0;
    for (int i = 0; i < 200; i++) {
        uint64_t now = 2 * MS + (uint64_t)i * MS;
        int k = lp_balancer_select(&b, NULL, 0, NULL, now);
        REQUIRE(k >= 0);
        if (k == 2 && first_new < 0)
            first_new = i;
        slow += k == 0;
        lp_balancer_report(&b, k, k == 0 ? 20 * MS : 1 * MS, 0, now);
    }
    CHECK(first_new >= 0 && first_new < 10);
    CHECK_EQ_INT(slow, 0);
    lp_balancer_destroy(&b);
}

/* A clock that goes backwards or stands still neither breaks nor poisons the estimates. */
static void test_clock_oddities(void)
{
    static const unsigned w[] = {1, 1};
    setup(w, 2);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_p2c, targets, 2, 53), 0);
    lp_balancer_report(&b, 0, 1 * MS, 0, 100 * MS);
    lp_balancer_report(&b, 0, 2 * MS, 0, 50 * MS);
    lp_balancer_report(&b, 0, 1 * MS, 0, 50 * MS);
    lp_balancer_report(&b, 1, 9 * MS, 0, 0);
    lp_balancer_report(&b, 1, 0, 0, 0);
    for (int i = 0; i < 10; i++)
        CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, NULL, 0), 0);
    lp_balancer_destroy(&b);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_weights_without_signal),
    LP_TEST_ENTRY(test_prefers_fast_probes_slow),
    LP_TEST_ENTRY(test_under_load),
    LP_TEST_ENTRY(test_weights_under_load),
    LP_TEST_ENTRY(test_weights_low_load),
    LP_TEST_ENTRY(test_active_matters),
    LP_TEST_ENTRY(test_peak),
    LP_TEST_ENTRY(test_failures_penalised),
    LP_TEST_ENTRY(test_update_keeps_state),
    LP_TEST_ENTRY(test_clock_oddities),
};

LP_TEST_MAIN(tests)
