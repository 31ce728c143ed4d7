/* Unit tests for engine/balancer_hash.c: weighted Maglev consistent hashing. */
#include "lp_test.h"
#include "common.h"
#include "balancer.h"

#define NKEYS 100000

static lp_bal_target_t targets[16];
static char ids[16][24];

static void setup(size_t n, unsigned weight)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(ids[i], sizeof(ids[i]), "10.1.0.%zu:8080", i + 1);
        targets[i] = (lp_bal_target_t){.id = ids[i], .weight = weight, .available = 1};
    }
}

static int key_of(int i, char *buf, size_t size)
{
    /* Random-looking keys: client addresses. */
    uint64_t x = lp_balancer_hash64(&i, sizeof(i), 12345);
    return snprintf(buf, size, "%u.%u.%u.%u", (unsigned)(x & 255), (unsigned)(x >> 8 & 255),
                    (unsigned)(x >> 16 & 255), (unsigned)(x >> 24 & 255));
}

/* The target id for every key (the index is not stable across set changes; the id is). */
static void map_keys(lp_balancer_t *b, const char **out)
{
    char key[32];
    for (int i = 0; i < NKEYS; i++) {
        int len = key_of(i, key, sizeof(key));
        int k = lp_balancer_select(b, key, (size_t)len, NULL, 0);
        out[i] = k >= 0 ? b->targets[k].id : NULL;
    }
}

static const char *before[NKEYS], *after[NKEYS];

static double moved_share(void)
{
    int moved = 0;
    for (int i = 0; i < NKEYS; i++)
        moved += before[i] != after[i];
    return (double)moved / NKEYS;
}

static void test_same_key_same_target(void)
{
    setup(10, 1);
    lp_balancer_t a, c;
    REQUIRE_EQ_INT(lp_balancer_init(&a, &lp_balancer_hash, targets, 10, 1), 0);
    map_keys(&a, before);
    /* Another instance with another seed and the targets listed in reverse order (another
     * proxy, another config file, a DNS answer in another order): same key, same target. */
    static lp_bal_target_t rev[10];
    for (int i = 0; i < 10; i++)
        rev[i] = targets[9 - i];
    REQUIRE_EQ_INT(lp_balancer_init(&c, &lp_balancer_hash, rev, 10, 999), 0);
    map_keys(&c, after);
    int differ = 0;
    for (int i = 0; i < NKEYS; i++)
        differ += before[i] != after[i];
    CHECK_EQ_INT(differ, 0);
    /* And the same instance again. */
    map_keys(&a, after);
    CHECK(moved_share() == 0.0);
    lp_balancer_destroy(&a);
    lp_balancer_destroy(&c);
}

/* 100k random keys spread within 10% of each target's weight share. */
static void test_distribution(void)
{
    static const unsigned w[] = {1, 2, 3, 4};
    setup(4, 1);
    for (int i = 0; i < 4; i++)
        targets[i].weight = w[i];
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_hash, targets, 4, 1), 0);
    int counts[4] = {0};
    char key[32];
    for (int i = 0; i < NKEYS; i++) {
        int len = key_of(i, key, sizeof(key));
        counts[lp_balancer_select(&b, key, (size_t)len, NULL, 0)]++;
    }
    for (int i = 0; i < 4; i++) {
        double share = (double)counts[i] / NKEYS, want = w[i] / 10.0;
        if (!CHECK(share > want * 0.9 && share < want * 1.1))
            fprintf(stderr, "  target %d: %.4f, want %.2f\n", i, share, want);
    }
    lp_balancer_destroy(&b);

    /* Equal weights, 10 targets. */
    setup(10, 1);
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_hash, targets, 10, 1), 0);
    int c10[10] = {0};
    for (int i = 0; i < NKEYS; i++) {
        int len = key_of(i, key, sizeof(key));
        c10[lp_balancer_select(&b, key, (size_t)len, NULL, 0)]++;
    }
    for (int i = 0; i < 10; i++)
        CHECK(c10[i] > 9000 && c10[i] < 11000);
    lp_balancer_destroy(&b);
}

/* No key (the header or cookie is absent): a weighted random pick. */
static void test_no_key(void)
{
    setup(2, 1);
    targets[1].weight = 3;
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_hash, targets, 2, 5), 0);
    int counts[2] = {0};
    for (int i = 0; i < 10000; i++)
        counts[lp_balancer_select(&b, NULL, 0, NULL, 0)]++;
    CHECK(counts[1] > 7125 && counts[1] < 7875); /* 75% +-5% */
    lp_balancer_destroy(&b);
}

/* Removing one of 10 targets moves about 1/10 of keys: every key of the removed one and
 * few others. Adding an 11th moves about 1/11, nearly all to the new one. */
static void test_remap_on_set_change(void)
{
    setup(11, 1);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_hash, targets, 10, 1), 0);
    map_keys(&b, before);

    /* Remove 10.1.0.4: the caller compacts its array and calls update. */
    const char *gone = ids[3];
    for (int i = 3; i < 9; i++)
        targets[i] = targets[i + 1];
    b.n = 9;
    REQUIRE_EQ_INT(lp_balancer_update(&b), 0);
    map_keys(&b, after);
    double moved = moved_share();
    int collateral = 0;
    for (int i = 0; i < NKEYS; i++)
        collateral += before[i] != gone && before[i] != after[i];
    printf("  remove 1 of 10: %.2f%% of keys moved, %.2f%% not from the removed one\n", moved * 100,
           100.0 * collateral / NKEYS);
    CHECK(moved > 0.05 && moved < 0.15);
    CHECK((double)collateral / NKEYS < 0.02);

    /* Back to 10, then add an 11th. */
    setup(11, 1);
    b.n = 10;
    REQUIRE_EQ_INT(lp_balancer_update(&b), 0);
    map_keys(&b, before);
    b.n = 11;
    REQUIRE_EQ_INT(lp_balancer_update(&b), 0);
    map_keys(&b, after);
    moved = moved_share();
    int to_new = 0;
    for (int i = 0; i < NKEYS; i++)
        to_new += before[i] != after[i] && after[i] == ids[10];
    printf("  add an 11th: %.2f%% of keys moved, %.2f%% to the new one\n", moved * 100,
           100.0 * to_new / NKEYS);
    CHECK(moved > 0.05 && moved < 0.15);
    CHECK((double)to_new / NKEYS > 0.08);
    lp_balancer_destroy(&b);
}

/* A down target: exactly its keys move, spread over all the others; back up, they return. */
static void test_unavailable_walks_forward(void)
{
    setup(10, 1);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_hash, targets, 10, 1), 0);
    map_keys(&b, before);
    targets[6].available = 0;
    map_keys(&b, after);
    int moved = 0, wrong = 0, spread[10] = {0};
    for (int i = 0; i < NKEYS; i++) {
        if (before[i] == after[i])
            continue;
        moved++;
        wrong += before[i] != ids[6];
        for (int t = 0; t < 10; t++)
            spread[t] += after[i] == ids[t];
    }
    CHECK_EQ_INT(wrong, 0);
    CHECK(moved > 8000 && moved < 12000);
    CHECK_EQ_INT(spread[6], 0);
    for (int t = 0; t < 10; t++)
        if (t != 6 && !CHECK(spread[t] > moved / 9 / 2))
            fprintf(stderr, "  target %d took %d of %d\n", t, spread[t], moved);
    targets[6].available = 1;
    map_keys(&b, after);
    CHECK(moved_share() == 0.0);
    lp_balancer_destroy(&b);
}

/* Retries: the tried target is skipped, the next choice is the same every time for the
 * same key, and each target comes once before -1. */
static void test_retry(void)
{
    setup(5, 1);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_hash, targets, 5, 1), 0);
    static const char key[] = "session=abc123";
    int first = lp_balancer_select(&b, key, sizeof(key) - 1, NULL, 0);
    REQUIRE(first >= 0);
    uint64_t tried[1] = {0};
    lp_balancer_mark_tried(tried, (size_t)first);
    int second = lp_balancer_select(&b, key, sizeof(key) - 1, tried, 0);
    CHECK(second >= 0 && second != first);
    for (int i = 0; i < 10; i++)
        CHECK_EQ_INT(lp_balancer_select(&b, key, sizeof(key) - 1, tried, 0), second);
    /* The retry of a down target's key lands where its first try would go now. */
    targets[first].available = 0;
    CHECK_EQ_INT(lp_balancer_select(&b, key, sizeof(key) - 1, NULL, 0), second);
    targets[first].available = 1;
    int n = 1, k;
    while ((k = lp_balancer_select(&b, key, sizeof(key) - 1, tried, 0)) >= 0) {
        CHECK(!lp_balancer_tried(tried, (size_t)k));
        lp_balancer_mark_tried(tried, (size_t)k);
        if (!CHECK(++n <= 5))
            break;
    }
    CHECK_EQ_INT(n, 5);
    CHECK_EQ_INT(tried[0], 31);
    lp_balancer_destroy(&b);
}

/* A weight change rebuilds the table: doubling one target's weight doubles its share, and
 * the keys it gains come from the others (no churn between the others). */
static void test_weight_change(void)
{
    setup(4, 1);
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_hash, targets, 4, 1), 0);
    map_keys(&b, before);
    targets[0].weight = 2;
    REQUIRE_EQ_INT(lp_balancer_update(&b), 0);
    map_keys(&b, after);
    int on0 = 0, churn = 0;
    for (int i = 0; i < NKEYS; i++) {
        on0 += after[i] == ids[0];
        churn += before[i] != after[i] && after[i] != ids[0];
    }
    printf("  weight 1 -> 2 of 4: %.2f%% on it, %.2f%% churn elsewhere\n", 100.0 * on0 / NKEYS,
           100.0 * churn / NKEYS);
    CHECK(on0 > 36000 && on0 < 44000); /* 2/5 */
    CHECK((double)churn / NKEYS < 0.05);
    /* An update with nothing changed keeps the table (same answers, nothing rebuilt). */
    void *st = b.state;
    REQUIRE_EQ_INT(lp_balancer_update(&b), 0);
    CHECK(b.state == st);
    targets[2].available = 0; /* availability is not a reason to rebuild */
    REQUIRE_EQ_INT(lp_balancer_update(&b), 0);
    CHECK(b.state == st);
    lp_balancer_destroy(&b);
}

/* Without ids the index stands in: still deterministic and spread. */
static void test_no_ids(void)
{
    setup(4, 1);
    for (int i = 0; i < 4; i++)
        targets[i].id = NULL;
    lp_balancer_t b;
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_hash, targets, 4, 1), 0);
    int counts[4] = {0};
    char key[32];
    for (int i = 0; i < 10000; i++) {
        int len = key_of(i, key, sizeof(key));
        counts[lp_balancer_select(&b, key, (size_t)len, NULL, 0)]++;
    }
    for (int i = 0; i < 4; i++)
        CHECK(counts[i] > 2000 && counts[i] < 3000);
    lp_balancer_destroy(&b);
}

static void test_limits(void)
{
    static lp_bal_target_t many[65536];
    lp_balancer_t b;
    for (size_t i = 0; i < 65536; i++)
        many[i] = (lp_bal_target_t){.weight = 1, .available = 1};
    CHECK_EQ_INT(lp_balancer_init(&b, &lp_balancer_hash, many, 65536, 1), LP_ELIMIT);
    /* 1000 targets: the table grows past 65537 to keep >= 100 slots each. */
    REQUIRE_EQ_INT(lp_balancer_init(&b, &lp_balancer_hash, many, 1000, 1), 0);
    int counts[1000] = {0}, lo = NKEYS, hi = 0;
    char key[32];
    for (int i = 0; i < NKEYS; i++) {
        int len = key_of(i, key, sizeof(key));
        counts[lp_balancer_select(&b, key, (size_t)len, NULL, 0)]++;
    }
    for (int i = 0; i < 1000; i++) {
        lo = counts[i] < lo ? counts[i] : lo;
        hi = counts[i] > hi ? counts[i] : hi;
    }
    CHECK(lo > 40 && hi < 180); /* 100 keys each, +- Poisson noise */
    lp_balancer_destroy(&b);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_same_key_same_target),
    LP_TEST_ENTRY(test_distribution),
    LP_TEST_ENTRY(test_no_key),
    LP_TEST_ENTRY(test_remap_on_set_change),
    LP_TEST_ENTRY(test_unavailable_walks_forward),
    LP_TEST_ENTRY(test_retry),
    LP_TEST_ENTRY(test_weight_change),
    LP_TEST_ENTRY(test_no_ids),
    LP_TEST_ENTRY(test_limits),
};

LP_TEST_MAIN(tests)
