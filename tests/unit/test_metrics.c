/* Unit tests for engine/metrics.c: blocks found again by key (what keeps counters monotonic
 * across reloads), the sum over workers' cells, histogram bucketing, and the text
 * exposition (escaping, counter naming in OpenMetrics, cumulative buckets, # EOF). */
#include <math.h>
#include "lp_test.h"
#include "metrics.h"

static void test_blocks_and_merge(void)
{
    lp_metrics_t m;
    lp_metrics_init(&m, 3);
    char key[64];
    size_t kl = lp_metrics_key(key, sizeof(key), "route", "api", NULL, NULL);
    CHECK_EQ_INT(kl, 10); /* "route\0api\0" */
    lp_mblock_t *b = lp_metrics_block(&m, key, kl, 8);
    REQUIRE(b != NULL);
    /* Each worker adds to its own cells; the scrape sums them. */
    LP_M_ADD(&b->cells[0][2], 5);
    LP_M_ADD(&b->cells[1][2], 7);
    LP_M_ADD(&b->cells[2][2], 1);
    LP_M_ADD(&b->cells[2][2], 1);
    CHECK_EQ_INT(lp_metrics_sum(&m, b, 2), 14);
    CHECK_EQ_INT(lp_metrics_sum(&m, b, 3), 0);
    CHECK_EQ_INT(lp_metrics_sum(&m, b, 99), 0); /* out of range: nothing */
    /* The same key (a reload keeping the route name) finds the same cells. */
    CHECK(lp_metrics_block(&m, key, kl, 8) == b);
    /* Another name, another block; a prefix of a name is not the name. */
    size_t kl2 = lp_metrics_key(key, sizeof(key), "route", "ap", NULL, NULL);
    lp_mblock_t *b2 = lp_metrics_block(&m, key, kl2, 8);
    REQUIRE(b2 != NULL);
    CHECK(b2 != b);
    CHECK_EQ_INT(lp_metrics_sum(&m, b2, 2), 0);
    /* Keys that do not fit are refused, not cut. */
    CHECK_EQ_INT(lp_metrics_key(key, 8, "upstream", "x", NULL, NULL), 0);
    lp_metrics_free(&m);
}

static void test_bounds_and_buckets(void)
{
    lp_metrics_t m;
    lp_metrics_init(&m, 1);
    const double b[] = {0.005, 0.01, 1};
    CHECK_EQ_INT(lp_metrics_set_bounds(&m, b, 3), 0);
    CHECK_EQ_INT(m.bounds_ns[0], 5000000);
    CHECK_EQ_INT(m.bounds_ns[2], 1000000000);
    CHECK_EQ_INT(lp_metrics_set_bounds(&m, b, 3), 0); /* the same again */
    const double other[] = {0.005, 0.02, 1};
    CHECK_EQ_INT(lp_metrics_set_bounds(&m, other, 3), 1); /* differs: kept */
    CHECK(m.bounds[1] == 0.01);
    CHECK_EQ_INT(lp_metrics_set_bounds(&m, b, 2), 1);
    /* le semantics: a value equal to a bound is in that bound's bucket. */
    CHECK_EQ_INT(lp_metrics_bucket_ns(m.bounds_ns, 3, 0), 0);
    CHECK_EQ_INT(lp_metrics_bucket_ns(m.bounds_ns, 3, 5000000), 0);
    CHECK_EQ_INT(lp_metrics_bucket_ns(m.bounds_ns, 3, 5000001), 1);
    CHECK_EQ_INT(lp_metrics_bucket_ns(m.bounds_ns, 3, 1000000000), 2);
    CHECK_EQ_INT(lp_metrics_bucket_ns(m.bounds_ns, 3, 1000000001), 3); /* +Inf */
    CHECK_EQ_INT(lp_metrics_bucket(b, 3, 0.01), 1);
    CHECK_EQ_INT(lp_metrics_bucket(b, 3, 7), 3);
    CHECK_EQ_INT(lp_metrics_bucket(b, 3, NAN), 3); /* NaN is in no finite bucket */
    lp_metrics_free(&m);
}

static void test_text_prometheus(void)
{
    lp_mtext_t t;
    lp_mtext_init(&t, 0);
    lp_mtext_family(&t, "x_total", "counter", "Help with \\ and\nnewline and \"quotes\".");
    const char *l[] = {"route", "a\"b\\c\nd", "code", "2xx"};
    lp_mtext_sample(&t, "x_total", "", l, 2, 42);
    lp_mtext_sample(&t, "g", "", NULL, 0, 0.25);
    lp_mtext_sample(&t, "g", "", NULL, 0, 1.0 / 3.0);
    lp_mtext_sample(&t, "g", "", NULL, 0, INFINITY);
    lp_mtext_end(&t);
    REQUIRE(t.buf != NULL && !t.oom);
    CHECK_STR(t.buf, "# HELP x_total Help with \\\\ and\\nnewline and \"quotes\".\n"
                     "# TYPE x_total counter\n"
                     "x_total{route=\"a\\\"b\\\\c\\nd\",code=\"2xx\"} 42\n"
                     "g 0.25\n"
                     "g 0.33333333333333331\n" /* the shortest that reads back the same */
                     "g +Inf\n");
    lp_mtext_free(&t);
}

static void test_text_openmetrics_histogram(void)
{
    lp_mtext_t t;
    lp_mtext_init(&t, 1);
    lp_mtext_family(&t, "req_total", "counter", "Requests.");
    lp_mtext_family(&t, "lat_seconds", "histogram", "Latency.");
    const double bounds[] = {0.1, 1, 2.5};
    const uint64_t counts[] = {2, 3, 0, 1}; /* per bucket, the last +Inf */
    const char *l[] = {"route", "r"};
    lp_mtext_histogram(&t, "lat_seconds", l, 1, bounds, 3, counts, 4.5);
    lp_mtext_end(&t);
    REQUIRE(t.buf != NULL);
    CHECK_STR(t.buf, "# HELP req Requests.\n"
                     "# TYPE req counter\n"
                     "# HELP lat_seconds Latency.\n"
                     "# TYPE lat_seconds histogram\n"
                     "lat_seconds_bucket{route=\"r\",le=\"0.1\"} 2\n"
                     "lat_seconds_bucket{route=\"r\",le=\"1.0\"} 5\n"
                     "lat_seconds_bucket{route=\"r\",le=\"2.5\"} 5\n"
                     "lat_seconds_bucket{route=\"r\",le=\"+Inf\"} 6\n"
                     "lat_seconds_sum{route=\"r\"} 4.5\n"
                     "lat_seconds_count{route=\"r\"} 6\n"
                     "# EOF\n");
    lp_mtext_free(&t);
}

static void test_accept_and_names(void)
{
    const char *a = "application/openmetrics-text; version=1.0.0,text/plain;q=0.5";
    CHECK(lp_metrics_wants_om(a, strlen(a)));
    const char *b = "Application/OpenMetrics-Text";
    CHECK(lp_metrics_wants_om(b, strlen(b)));
    const char *c = "text/plain;version=0.0.4";
    CHECK(!lp_metrics_wants_om(c, strlen(c)));
    CHECK(!lp_metrics_wants_om("", 0));
    CHECK(lp_metrics_valid_name("a_b:c9"));
    CHECK(!lp_metrics_valid_name("9a"));
    CHECK(!lp_metrics_valid_name("a-b"));
    CHECK(!lp_metrics_valid_name(""));
    CHECK(lp_metrics_valid_label("route"));
    CHECK(!lp_metrics_valid_label("a:b"));
    CHECK(!lp_metrics_valid_label("__name__"));
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_blocks_and_merge), LP_TEST_ENTRY(test_bounds_and_buckets),
    LP_TEST_ENTRY(test_text_prometheus),  LP_TEST_ENTRY(test_text_openmetrics_histogram),
    LP_TEST_ENTRY(test_accept_and_names),
};

LP_TEST_MAIN(tests)
