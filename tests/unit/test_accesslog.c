/* Unit tests for engine/accesslog.c: template validation and opening. */
#include <unistd.h>
#include "lp_test.h"
#include "config.h"
#include "accesslog.h"

static void test_check_format_accepts(void)
{
    static const char *const ok[] = {
        LP_ACCESS_FORMAT_DEFAULT,
        "$remote_addr $http_user_agent",
        "$request_method $uri $status $body_bytes_sent $host",
        "$time_local $request_time $upstream_response_time $upstream_addr",
        "$method",
        "plain text, no variables",
        "",
        "[$status]$status$status",
        "$http_x_forwarded_for",
    };
    for (size_t i = 0; i < LP_ARRAY_LEN(ok); i++) {
        char err[256] = "";
        if (!CHECK_EQ_INT(lp_accesslog_check_format(ok[i], err, sizeof(err)), 0))
            fprintf(stderr, "  format \"%s\": %s\n", ok[i], err);
    }
}

static void test_check_format_rejects(void)
{
    static const char *const bad[][2] = {
        {"$nosuchvar", "$nosuchvar"},
        {"$remote_addr $nosuchvar tail", "$nosuchvar"},
        {"$status $statuses", "$statuses"},
        {"$http_", "$http_"}, /* a header variable needs a name */
    };
    for (size_t i = 0; i < LP_ARRAY_LEN(bad); i++) {
        char err[256] = "";
        if (!CHECK_EQ_INT(lp_accesslog_check_format(bad[i][0], err, sizeof(err)), LP_ECONFIG))
            fprintf(stderr, "  format \"%s\" was accepted\n", bad[i][0]);
        CHECK_CONTAINS(err, bad[i][1]);
        CHECK_CONTAINS(err, "unknown variable");
    }
}

static void test_open(void)
{
    char err[256] = "";
    /* No path: no log, and no error. */
    CHECK(lp_accesslog_open(NULL, LP_ACCESS_FORMAT_DEFAULT, err, sizeof(err)) == NULL);

    char path[] = "/tmp/lp_unit_access_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    lp_accesslog_t *log = lp_accesslog_open(path, LP_ACCESS_FORMAT_DEFAULT, err, sizeof(err));
    CHECK(log != NULL);
    if (log) {
        lp_accesslog_flush(log); /* nothing buffered: nothing written */
        lp_accesslog_close(log);
    }

    err[0] = 0;
    CHECK(lp_accesslog_open(path, "$bogus", err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "$bogus");
    unlink(path);

    err[0] = 0;
    CHECK(lp_accesslog_open("/nonexistent-dir/x/access.log", "$status", err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "/nonexistent-dir/x/access.log");
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_check_format_accepts),
    LP_TEST_ENTRY(test_check_format_rejects),
    LP_TEST_ENTRY(test_open),
};

LP_TEST_MAIN(tests)
