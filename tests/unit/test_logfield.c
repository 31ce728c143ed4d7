/* engine/logfield.c: a request's log fields, and the JSON error line (engine/log.c). */
#include <stdio.h>
#include <string.h>
#include "lp_test.h"
#include "log.h"
#include "logfield.h"

static void test_set_get_replace_remove(void)
{
    lp_logfields_t f = {0};
    CHECK_EQ_INT(lp_logfields_set(&f, 4, "a", 1, LP_LOGF_STRING, "x", 1), 0);
    CHECK_EQ_INT(lp_logfields_set(&f, 4, "b", 1, LP_LOGF_NUMBER, "42", 2), 0);
    CHECK_EQ_INT(lp_logfields_set(&f, 4, "c", 1, LP_LOGF_BOOL, "true", 4), 0);
    /* Replacing keeps the place; a longer value moves what follows. */
    CHECK_EQ_INT(lp_logfields_set(&f, 4, "a", 1, LP_LOGF_STRING, "longer", 6), 0);
    lp_logfield_t e;
    size_t pos = lp_logfields_next(&f, 0, &e);
    CHECK_SLICE(e.name, "a");
    CHECK_SLICE(e.value, "longer");
    pos = lp_logfields_next(&f, pos, &e);
    CHECK_SLICE(e.name, "b");
    CHECK_EQ_INT(e.type, LP_LOGF_NUMBER);
    pos = lp_logfields_next(&f, pos, &e);
    CHECK_SLICE(e.value, "true");
    CHECK_EQ_INT((int)lp_logfields_next(&f, pos, &e), 0);
    CHECK_EQ_INT(lp_logfields_set(&f, 4, "b", 1, LP_LOGF_UNSET, NULL, 0), 0);
    CHECK(!lp_logfields_get(&f, "b", 1, &e));
    CHECK(lp_logfields_get(&f, "c", 1, &e));
    CHECK_EQ_INT(f.n, 2);
    /* Removing what is not there is fine. */
    CHECK_EQ_INT(lp_logfields_set(&f, 4, "zz", 2, LP_LOGF_UNSET, NULL, 0), 0);
    lp_logfields_clear(&f);
    CHECK_EQ_INT(f.n, 0);
}

static void test_limits(void)
{
    lp_logfields_t f = {0};
    CHECK_EQ_INT(lp_logfields_set(&f, 2, "", 0, LP_LOGF_STRING, "x", 1), LP_EINVAL);
    CHECK_EQ_INT(lp_logfields_set(&f, 2, "a b", 3, LP_LOGF_STRING, "x", 1), LP_EINVAL);
    CHECK_EQ_INT(lp_logfields_set(&f, 2, "a\"", 2, LP_LOGF_STRING, "x", 1), LP_EINVAL);
    CHECK_EQ_INT(lp_logfields_set(&f, 2, "a", 1, 9, "x", 1), LP_EINVAL);
    char name[LP_LOG_FIELD_NAME_MAX + 2];
    memset(name, 'n', sizeof(name));
    CHECK_EQ_INT(lp_logfields_set(&f, 2, name, LP_LOG_FIELD_NAME_MAX + 1, LP_LOGF_STRING, "", 0),
                 LP_EINVAL);
    CHECK_EQ_INT(lp_logfields_set(&f, 2, name, LP_LOG_FIELD_NAME_MAX, LP_LOGF_STRING, "", 0), 0);
    static char big[LP_LOG_FIELD_VALUE_MAX + 1];
    memset(big, 'v', sizeof(big));
    CHECK_EQ_INT(lp_logfields_set(&f, 2, "b", 1, LP_LOGF_STRING, big, sizeof(big)), LP_ELIMIT);
    CHECK_EQ_INT(lp_logfields_set(&f, 2, "b", 1, LP_LOGF_STRING, big, sizeof(big) - 1), 0);
    /* Two fields: a third is refused, replacing one still works. */
    CHECK_EQ_INT(lp_logfields_set(&f, 2, "c", 1, LP_LOGF_STRING, "x", 1), LP_ELIMIT);
    CHECK_EQ_INT(lp_logfields_set(&f, 2, "b", 1, LP_LOGF_STRING, "y", 1), 0);
    lp_logfields_clear(&f);
    /* The total is bounded too. */
    int ok = 0;
    for (int i = 0; i < 10; i++) {
        char n[8];
        int nl = snprintf(n, sizeof(n), "f%d", i);
        if (lp_logfields_set(&f, 64, n, (size_t)nl, LP_LOGF_STRING, big, 2000) == 0)
            ok++;
    }
    CHECK_EQ_INT(ok, 4); /* 4 x 2006 bytes fit in 8192, a fifth does not */
    lp_logfields_clear(&f);
}

static void test_json_error_line(void)
{
    char out[4096];
    struct timespec ts = {.tv_sec = 1764873265, .tv_nsec = 7000000};
    const char *members = ",\"client\":\"127.0.0.1\"";
    size_t n = lp__log_json_line(out, sizeof(out), &ts, LP_LOG_WARN, 4242, 2, "a \"b\"\n\xff", 7,
                                 members, strlen(members));
    out[n] = 0;
    CHECK_STR(out, "{\"time\":\"2025-12-04T18:34:25.007Z\",\"level\":\"warn\",\"pid\":4242,"
                   "\"worker\":2,"
                   "\"message\":\"a \\\"b\\\"\\n\\u00ff\",\"client\":\"127.0.0.1\"}\n");
    /* The main thread is worker 0. */
    n = lp__log_json_line(out, sizeof(out), &ts, LP_LOG_ERROR, 4242, -1, "x", 1, "", 0);
    out[n] = 0;
    CHECK_CONTAINS(out, "\"worker\":0,");
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_set_get_replace_remove),
    LP_TEST_ENTRY(test_limits),
    LP_TEST_ENTRY(test_json_error_line),
};

LP_TEST_MAIN(tests)
