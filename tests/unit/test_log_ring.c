/* engine/log_ring.c and engine/reload_history.c: the two rings behind GET /errors and
 * GET /reloads (what they keep, in what order, and how they wrap). */
#include <pthread.h>
#include "log_ring.h"
#include "reload_history.h"
#include "lp_test.h"

static const char *msg_at(json_t *j, size_t i)
{
    return json_string_value(
        json_object_get(json_array_get(json_object_get(j, "errors"), i), "message"));
}

static void test_keeps_warn_and_error_only(void)
{
    json_t *j = lp_log_ring_json();
    REQUIRE(j != NULL);
    json_int_t before = json_integer_value(json_object_get(j, "total"));
    json_decref(j);
    static const char info[] = "2026-01-01T00:00:00.000Z [info] main: listening";
    lp_log_ring_add(LP_LOG_INFO, 1.0, info, sizeof(info) - 1);
    /* As lp_log writes them: the time, the pid, the level (the pid is not kept). */
    static const char warn[] = "2026-01-01T00:00:00.000Z 4242 [warn] w1: a warning";
    lp_log_ring_add(LP_LOG_WARN, 2.5, warn, sizeof(warn) - 1);
    static const char err[] = "2026-01-01T00:00:00.000Z 4242 [error] main: an \xff error";
    lp_log_ring_add(LP_LOG_ERROR, 3.0, err, sizeof(err) - 1);
    j = lp_log_ring_json();
    REQUIRE(j != NULL);
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "total")), before + 2);
    /* Newest first; the time and level are apart; bytes that are not UTF-8 are '?'. */
    CHECK_STR(msg_at(j, 0), "main: an ? error");
    CHECK_STR(msg_at(j, 1), "w1: a warning");
    json_t *e = json_array_get(json_object_get(j, "errors"), 1);
    CHECK_STR(json_string_value(json_object_get(e, "level")), "warn");
    CHECK_STR(json_string_value(json_object_get(e, "time")), "1970-01-01T00:00:02.500Z");
    json_decref(j);
}

static void test_wraps_at_capacity(void)
{
    char line[64];
    for (int i = 0; i < LP_LOG_RING + 7; i++) {
        int n = snprintf(line, sizeof(line), "T [error] main: line %d", i);
        lp_log_ring_add(LP_LOG_ERROR, 10.0, line, (size_t)n);
    }
    json_t *j = lp_log_ring_json();
    REQUIRE(j != NULL);
    CHECK_EQ_INT(json_array_size(json_object_get(j, "errors")), LP_LOG_RING);
    snprintf(line, sizeof(line), "main: line %d", LP_LOG_RING + 6);
    CHECK_STR(msg_at(j, 0), line);
    CHECK_STR(msg_at(j, LP_LOG_RING - 1), "main: line 7");
    json_decref(j);
}

static void test_long_line_cut(void)
{
    static char big[3000];
    memcpy(big, "T [warn] ", 9);
    memset(big + 9, 'x', sizeof(big) - 9);
    lp_log_ring_add(LP_LOG_WARN, 1.0, big, sizeof(big));
    json_t *j = lp_log_ring_json();
    REQUIRE(j != NULL);
    CHECK_EQ_INT(strlen(msg_at(j, 0)), LP_LOG_RING_LINE);
    json_decref(j);
}

static void *writer(void *arg)
{
    char line[64];
    for (int i = 0; i < 2000; i++) {
        int n = snprintf(line, sizeof(line), "T [warn] w%d: %d", (int)(intptr_t)arg, i);
        lp_log_ring_add(LP_LOG_WARN, 1.0, line, (size_t)n);
    }
    return NULL;
}

static void test_threads(void)
{
    /* Writers on four threads while the ring is read: every line kept is one of the lines
     * written, whole (none torn by a concurrent copy). */
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, writer, (void *)(intptr_t)i);
    for (int k = 0; k < 20; k++)
        json_decref(lp_log_ring_json());
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    json_t *j = lp_log_ring_json();
    REQUIRE(j != NULL);
    json_t *list = json_object_get(j, "errors");
    for (size_t i = 0; i < json_array_size(list); i++) {
        int w = -1, n = -1;
        CHECK(sscanf(msg_at(j, i), "w%d: %d", &w, &n) == 2 && w >= 0 && w < 4 && n >= 0 &&
              n < 2000);
    }
    json_decref(j);
}

static void test_reload_history(void)
{
    lp_reload_history_add("startup", 1, 1, NULL, 12.3456);
    lp_reload_history_add("admin 127.0.0.1:5000", 0, 1, "proxy.lua:3: oops", 1.0);
    lp_reload_history_add("SIGHUP", 1, 2, "ignored on success", 2.0);
    json_t *l = lp_reload_history_json();
    REQUIRE(l != NULL);
    REQUIRE_EQ_INT(json_array_size(l), 3);
    json_t *e = json_array_get(l, 0);
    CHECK_STR(json_string_value(json_object_get(e, "by")), "SIGHUP");
    CHECK(json_is_true(json_object_get(e, "ok")));
    CHECK(json_object_get(e, "error") == NULL);
    CHECK_EQ_INT(json_integer_value(json_object_get(e, "generation")), 2);
    e = json_array_get(l, 1);
    CHECK(json_is_false(json_object_get(e, "ok")));
    CHECK_STR(json_string_value(json_object_get(e, "error")), "proxy.lua:3: oops");
    e = json_array_get(l, 2);
    CHECK_STR(json_string_value(json_object_get(e, "by")), "startup");
    CHECK(json_real_value(json_object_get(e, "took_ms")) == 12.345);
    json_decref(l);
    for (int i = 0; i < LP_RELOAD_HISTORY + 5; i++)
        lp_reload_history_add("watch", 1, (uint64_t)(10 + i), NULL, 1.0);
    l = lp_reload_history_json();
    REQUIRE(l != NULL);
    CHECK_EQ_INT(json_array_size(l), LP_RELOAD_HISTORY);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_array_get(l, 0), "generation")),
                 10 + LP_RELOAD_HISTORY + 4);
    json_decref(l);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_keeps_warn_and_error_only),
    LP_TEST_ENTRY(test_wraps_at_capacity),
    LP_TEST_ENTRY(test_long_line_cut),
    LP_TEST_ENTRY(test_threads),
    LP_TEST_ENTRY(test_reload_history),
};

LP_TEST_MAIN(tests)
