/* Unit tests for engine/balancer.c: the contract every policy keeps (availability, the
 * "tried" bitmap, -1 when exhausted, determinism), the policy table, the hash and the rng.
 * Each policy's own behaviour is in test_balancer_<policy>.c. */
#include "lp_test.h"
#include "common.h"
#include "balancer.h"

#define NT 70 /* more than one bitmap word */

static const char *const policy_names[] = {"round_robin", "least_conn", "p2c", "hash"};

static lp_bal_target_t targets[NT];
static char ids[NT][32];

static void make_targets(size_t n, unsigned weight)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(ids[i], sizeof(ids[i]), "10.0.%zu.%zu:80", i / 256, i % 256);
        targets[i] = (lp_bal_target_t){.id = ids[i], .weight = weight, .available = 1};
    }
}

static void test_find(void)
{
    for (size_t i = 0; i < LP_ARRAY_LEN(policy_names); i++) {
        const lp_balancer_ops_t *ops = lp_balancer_find(policy_names[i]);
        if (CHECK(ops != NULL))
            CHECK_STR(ops->name, policy_names[i]);
    }
    CHECK(lp_balancer_find("round_robin") == &lp_balancer_round_robin);
    CHECK(lp_balancer_find("hash") == &lp_balancer_hash);
    CHECK(lp_balancer_find("random") == NULL);
    CHECK(lp_balancer_find("") == NULL);
    CHECK(lp_balancer_find(NULL) == NULL);
}

/* Every policy: down and tried targets are never picked, retries visit each remaining
 * target once, -1 when none is left (also with no targets at all). */
static void test_contract_tried_and_available(void)
{
    static const char key[] = "client-1";
    for (size_t p = 0; p < LP_ARRAY_LEN(policy_names); p++) {
        const char *name = policy_names[p];
        make_targets(NT, 1);
        for (size_t i = 0; i < NT; i += 3)
            targets[i].available = 0;
        lp_balancer_t b;
        REQUIRE_EQ_INT(lp_balancer_init(&b, lp_balancer_find(name), targets, NT, 42), 0);
        for (int r = 0; r < 200; r++) {
            uint64_t tried[LP_BALANCER_TRIED_WORDS(NT)] = {0};
            int left = 0;
            for (size_t i = 0; i < NT; i++)
                left += targets[i].available;
            int picks = 0, k;
            while ((k = lp_balancer_select(&b, key, (size_t)(r % 2 ? 0 : sizeof(key) - 1), tried,
                                           (uint64_t)r * 1000000)) >= 0) {
                if (!CHECK(k < NT) || !CHECK(targets[k].available) ||
                    !CHECK(!lp_balancer_tried(tried, (size_t)k))) {
                    fprintf(stderr, "  policy %s picked %d\n", name, k);
                    break;
                }
                lp_balancer_mark_tried(tried, (size_t)k);
                lp_balancer_report(&b, k, 1000000, 1, (uint64_t)r * 1000000);
                if (!CHECK(++picks <= left))
                    break;
            }
            if (!CHECK_EQ_INT(picks, left))
                fprintf(stderr, "  policy %s\n", name);
        }
        /* Everything down: -1 without a tried bitmap too. */
        for (size_t i = 0; i < NT; i++)
            targets[i].available = 0;
        CHECK_EQ_INT(lp_balancer_select(&b, key, sizeof(key) - 1, NULL, 0), -1);
        CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, NULL, 0), -1);
        /* One back up: the only answer, for any key. */
        targets[65].available = 1;
        for (int r = 0; r < 20; r++) {
            char k2[16];
            int len = snprintf(k2, sizeof(k2), "k%d", r);
            CHECK_EQ_INT(lp_balancer_select(&b, k2, (size_t)len, NULL, 0), 65);
        }
        uint64_t tried[LP_BALANCER_TRIED_WORDS(NT)] = {0};
        lp_balancer_mark_tried(tried, 65);
        CHECK_EQ_INT(lp_balancer_select(&b, key, sizeof(key) - 1, tried, 0), -1);
        lp_balancer_destroy(&b);
        CHECK(b.state == NULL);

        /* No targets at all. */
        REQUIRE_EQ_INT(lp_balancer_init(&b, lp_balancer_find(name), NULL, 0, 1), 0);
        CHECK_EQ_INT(lp_balancer_select(&b, key, sizeof(key) - 1, NULL, 0), -1);
        CHECK_EQ_INT(lp_balancer_update(&b), 0);
        CHECK_EQ_INT(lp_balancer_select(&b, NULL, 0, NULL, 0), -1);
        lp_balancer_destroy(&b);
    }
}

/* Every policy: the same seed and the same inputs give the same sequence. */
static void test_contract_deterministic(void)
{
    for (size_t p = 0; p < LP_ARRAY_LEN(policy_names); p++) {
        make_targets(8, 1);
        for (size_t i = 0; i < 8; i++)
            targets[i].weight = (unsigned)i + 1;
        int seq[2][500];
        for (int run = 0; run < 2; run++) {
            lp_balancer_t b;
            REQUIRE_EQ_INT(lp_balancer_init(&b, lp_balancer_find(policy_names[p]), targets, 8, 7),
                           0);
            for (int i = 0; i < 500; i++) {
                char key[16];
                int len = snprintf(key, sizeof(key), "u%d", i % 37);
                seq[run][i] = lp_balancer_select(&b, key, i % 5 ? (size_t)len : 0, NULL,
                                                 (uint64_t)i * 1000000);
                lp_balancer_report(&b, seq[run][i], (uint64_t)(seq[run][i] + 1) * 1000000, 0,
                                   (uint64_t)i * 1000000);
            }
            lp_balancer_destroy(&b);
        }
        int same = memcmp(seq[0], seq[1], sizeof(seq[0])) == 0;
        if (!CHECK(same))
            fprintf(stderr, "  policy %s\n", policy_names[p]);
    }
}

/* Every policy picks every available target at least once when all are equal: nothing is
 * starved by construction. */
static void test_contract_no_starvation(void)
{
    for (size_t p = 0; p < LP_ARRAY_LEN(policy_names); p++) {
        make_targets(NT, 1);
        lp_balancer_t b;
        REQUIRE_EQ_INT(lp_balancer_init(&b, lp_balancer_find(policy_names[p]), targets, NT, 3), 0);
        int seen[NT] = {0};
        for (int i = 0; i < 20000; i++) {
            char key[16];
            int len = snprintf(key, sizeof(key), "%d", i);
            int k = lp_balancer_select(&b, key, (size_t)len, NULL, (uint64_t)i * 1000000);
            REQUIRE(k >= 0 && k < NT);
            seen[k]++;
            lp_balancer_report(&b, k, 1000000, 0, (uint64_t)i * 1000000);
        }
        int missing = 0;
        for (int i = 0; i < NT; i++)
            missing += !seen[i];
        if (!CHECK_EQ_INT(missing, 0))
            fprintf(stderr, "  policy %s\n", policy_names[p]);
        lp_balancer_destroy(&b);
    }
}

static void test_init_errors(void)
{
    lp_balancer_t b;
    CHECK_EQ_INT(lp_balancer_init(&b, NULL, targets, 1, 1), LP_EINVAL);
    CHECK_EQ_INT(lp_balancer_init(&b, &lp_balancer_hash, NULL, 3, 1), LP_EINVAL);
}

static void test_rng(void)
{
    lp_balancer_t a = {.rng = 99}, c = {.rng = 99}, z = {.rng = 0};
    int differ = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t x = lp__balancer_rand(&a);
        CHECK(x == lp__balancer_rand(&c));
        differ += x != 0;
        CHECK(lp__balancer_rand_below(&a, 7) < 7);
        lp__balancer_rand_below(&c, 7);
    }
    CHECK_EQ_INT(differ, 100);
    /* lp_balancer_init replaces a zero seed, which xorshift would never leave. */
    make_targets(2, 1);
    REQUIRE_EQ_INT(lp_balancer_init(&z, &lp_balancer_least_conn, targets, 2, 0), 0);
    CHECK(z.rng != 0);
    lp_balancer_destroy(&z);
}

static int popcount64(uint64_t x)
{
    int c = 0;
    for (; x; x &= x - 1)
        c++;
    return c;
}

static void test_hash64(void)
{
    static const char s[] = "127.0.0.1:9001";
    uint64_t h = lp_balancer_hash64(s, sizeof(s) - 1, 0);
    CHECK(h == lp_balancer_hash64(s, sizeof(s) - 1, 0));
    CHECK(h != lp_balancer_hash64(s, sizeof(s) - 1, 1));
    CHECK(h != lp_balancer_hash64(s, sizeof(s) - 2, 0));
    CHECK(lp_balancer_hash64("", 0, 0) != lp_balancer_hash64("", 0, 1));
    /* Pinned values: the hash decides which target a key lands on, so a change would move
     * every client on every proxy at the next upgrade. Change these only on purpose. */
    CHECK(lp_balancer_hash64("", 0, 0) == 0x9353dfc8a195f3e2ull);
    CHECK(lp_balancer_hash64(s, sizeof(s) - 1, 0) == 0xcb9fd6935fc8e504ull);
    CHECK(lp_balancer_hash64("abcdefghijklmnopqrstuvwxyz", 26, 7) == 0x7424b31f7b7d93b9ull);
    /* Avalanche: flipping one input bit flips about half of the output bits, for every
     * length class (the 8-byte lanes, the 4-byte tail, the byte tail). */
    for (size_t len = 1; len <= 24; len++) {
        unsigned char buf[24];
        long flips = 0, trials = 0;
        for (int t = 0; t < 40; t++) {
            for (size_t i = 0; i < len; i++)
                buf[i] = (unsigned char)(t * 31 + i * 7 + len);
            uint64_t base = lp_balancer_hash64(buf, len, 0);
            for (size_t bit = 0; bit < len * 8; bit++) {
                buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
                flips += popcount64(base ^ lp_balancer_hash64(buf, len, 0));
                buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
                trials++;
            }
        }
        double avg = (double)flips / (double)trials;
        if (!CHECK(avg > 30.0 && avg < 34.0))
            fprintf(stderr, "  len %zu: %.2f bits flip on average\n", len, avg);
    }
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_find),
    LP_TEST_ENTRY(test_contract_tried_and_available),
    LP_TEST_ENTRY(test_contract_deterministic),
    LP_TEST_ENTRY(test_contract_no_starvation),
    LP_TEST_ENTRY(test_init_errors),
    LP_TEST_ENTRY(test_rng),
    LP_TEST_ENTRY(test_hash64),
};

LP_TEST_MAIN(tests)
