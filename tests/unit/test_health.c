/* Unit tests for engine/health.c: passive ejection, back-off, admin states. */
#include "lp_test.h"
#include "health.h"

static lp_health_conf_t conf(unsigned failures, uint64_t ejection_ms)
{
    lp_health_conf_t hc;
    memset(&hc, 0, sizeof(hc));
    hc.passive_failures = failures;
    hc.ejection = ejection_ms;
    return hc;
}

static void test_registry_is_by_address(void)
{
    lp_health_t *a = lp_health_get("10.0.0.1:80");
    lp_health_t *b = lp_health_get("10.0.0.1:80");
    lp_health_t *c = lp_health_get("10.0.0.2:80");
    REQUIRE(a && c);
    CHECK(a == b);
    CHECK(a != c);
    CHECK_STR(a->addr, "10.0.0.1:80");
}

static void test_passive_ejection_and_backoff(void)
{
    lp_health_t *h = lp_health_get("10.0.1.1:80");
    lp_health_conf_t hc = conf(3, 1000);
    uint64_t t = 1000000;
    CHECK(lp_health_available(h, t));
    lp_health_report(h, &hc, 1, t);
    lp_health_report(h, &hc, 1, t);
    CHECK(lp_health_available(h, t)); /* two failures: not yet */
    lp_health_report(h, &hc, 1, t);
    CHECK(!lp_health_available(h, t)); /* the third ejects */
    CHECK_STR(lp_health_state(h, t), "ejected");
    CHECK(!lp_health_available(h, t + 999));
    CHECK(lp_health_available(h, t + 1000)); /* back after the back-off */
    /* Ejected again: the back-off doubles. */
    for (int i = 0; i < 3; i++)
        lp_health_report(h, &hc, 1, t + 1000);
    CHECK(!lp_health_available(h, t + 1000 + 1999));
    CHECK(lp_health_available(h, t + 1000 + 2000));
    /* A success forgets the ejections: the next one is back to the base back-off. */
    lp_health_report(h, &hc, 0, t + 5000);
    CHECK_EQ_INT(h->ejections, 0);
    for (int i = 0; i < 3; i++)
        lp_health_report(h, &hc, 1, t + 6000);
    CHECK(lp_health_available(h, t + 7000));
}

static void test_success_resets_the_count(void)
{
    lp_health_t *h = lp_health_get("10.0.1.2:80");
    lp_health_conf_t hc = conf(2, 1000);
    lp_health_report(h, &hc, 1, 10);
    lp_health_report(h, &hc, 0, 10);
    lp_health_report(h, &hc, 1, 10);
    CHECK(lp_health_available(h, 10)); /* failures were not consecutive */
    CHECK_EQ_INT(h->failures, 2);
    CHECK_EQ_INT(h->successes, 1);
}

static void test_passive_off(void)
{
    lp_health_t *h = lp_health_get("10.0.1.3:80");
    lp_health_conf_t hc = conf(0, 1000);
    for (int i = 0; i < 100; i++)
        lp_health_report(h, &hc, 1, 10);
    CHECK(lp_health_available(h, 10));
}

static void test_backoff_is_capped(void)
{
    lp_health_t *h = lp_health_get("10.0.1.4:80");
    lp_health_conf_t hc = conf(1, 100);
    uint64_t t = 1000;
    for (int i = 0; i < 20; i++) {
        lp_health_report(h, &hc, 1, t);
        t = h->ejected_until;
    }
    /* 32 times the base at most. */
    lp_health_report(h, &hc, 1, t);
    CHECK(h->ejected_until - t <= 100 * 32);
}

static void test_admin_and_active_states(void)
{
    lp_health_t *h = lp_health_get("10.0.1.5:80");
    CHECK_STR(lp_health_state(h, 0), "up");
    h->admin_state = LP_TARGET_DRAINED;
    CHECK(!lp_health_available(h, 0));
    CHECK_STR(lp_health_state(h, 0), "drained");
    h->admin_state = LP_TARGET_DISABLED;
    CHECK_STR(lp_health_state(h, 0), "disabled");
    h->admin_state = LP_TARGET_ENABLED;
    h->down = 1;
    CHECK(!lp_health_available(h, 0));
    CHECK_STR(lp_health_state(h, 0), "down");
    h->down = 0;
    CHECK(lp_health_available(h, 0));
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_registry_is_by_address),   LP_TEST_ENTRY(test_passive_ejection_and_backoff),
    LP_TEST_ENTRY(test_success_resets_the_count), LP_TEST_ENTRY(test_passive_off),
    LP_TEST_ENTRY(test_backoff_is_capped),        LP_TEST_ENTRY(test_admin_and_active_states),
};

LP_TEST_MAIN(tests)
