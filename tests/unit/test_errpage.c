/* Unit tests for engine/errpage.c: the ${status}/${reason}/${detail} template, which page
 * answers (the route's over the config's, `false` for the built-in one), and the answers. */
#include "lp_test.h"
#include "errpage.h"

static const char *const VALS[3] = {"502", "Bad Gateway", "no target"};

static void check_template(const char *t, const char *want)
{
    char out[256];
    size_t n = lp_errpage_template(t, strlen(t), VALS, NULL);
    CHECK_EQ_INT(n, strlen(want));
    if (n >= sizeof(out))
        return;
    CHECK_EQ_INT(lp_errpage_template(t, strlen(t), VALS, out), n);
    out[n] = 0;
    CHECK_STR(out, want);
}

static void test_template(void)
{
    check_template("", "");
    check_template("plain", "plain");
    check_template("${status} ${reason}: ${detail}", "502 Bad Gateway: no target");
    check_template("$status-$reason.", "502-Bad Gateway.");
    check_template("$$status costs $$5", "$status costs $5");
    /* Unknown names, unclosed braces and a lone '$' stay as written (as text.lua does). */
    check_template("$statuses ${other} $1 $", "$statuses ${other} $1 $");
    check_template("${status", "${status");
    check_template("a$", "a$");
    check_template("$(document)", "$(document)");
}

static lp_error_page_t page(int status, int send, const char *body)
{
    return (lp_error_page_t){status,
                             send,
                             body == NULL,
                             body && strchr(body, '$') != NULL,
                             body ? "text/html" : NULL,
                             (char *)body,
                             body ? strlen(body) : 0};
}

static void test_find_and_answer(void)
{
    lp_error_page_t global[] = {page(502, 502, "global ${status}"), page(404, 200, "nf"),
                                page(503, 503, "busy")};
    lp_error_page_t own[] = {page(502, 502, "route"), page(503, 503, NULL)};
    lp_config_t c = {0};
    c.error_pages = (lp_error_pages_t){global, 3};
    lp_route_conf_t r = {0}, bare = {0};
    r.error_pages = (lp_error_pages_t){own, 2};

    CHECK(lp_errpage_find(&c, NULL, 502) == &global[0]);
    CHECK(lp_errpage_find(&c, &bare, 502) == &global[0]);
    CHECK(lp_errpage_find(&c, &r, 502) == &own[0]);
    CHECK(lp_errpage_find(&c, &r, 503) == NULL); /* the route's `false` */
    CHECK(lp_errpage_find(&c, &r, 404) == &global[1]);
    CHECK(lp_errpage_find(&c, &r, 504) == NULL);

    lp_error_answer_t a;
    REQUIRE_EQ_INT(lp_errpage_answer(&c, NULL, 502, "x", &a), 0);
    CHECK_EQ_INT(a.status, 502);
    CHECK_STR(a.content_type, "text/html");
    CHECK_EQ_INT(a.len, 10);
    CHECK(a.body && memcmp(a.body, "global 502", 10) == 0);
    free(a.body);

    REQUIRE_EQ_INT(lp_errpage_answer(&c, &r, 404, NULL, &a), 0);
    CHECK_EQ_INT(a.status, 200); /* `status =` */
    CHECK(a.body && a.len == 2 && memcmp(a.body, "nf", 2) == 0);
    free(a.body);

    REQUIRE_EQ_INT(lp_errpage_answer(&c, &r, 503, "queue full", &a), 0);
    CHECK_EQ_INT(a.status, 503);
    CHECK_STR(a.content_type, "text/plain");
    const char *want = "503 Service Unavailable: queue full\n";
    CHECK(a.body && a.len == strlen(want) && memcmp(a.body, want, a.len) == 0);
    free(a.body);

    lp_error_page_t empty[] = {page(502, 204, "gone"), page(504, 504, "${detail}")};
    c.error_pages = (lp_error_pages_t){empty, 2};
    REQUIRE_EQ_INT(lp_errpage_answer(&c, NULL, 502, NULL, &a), 0);
    CHECK_EQ_INT(a.status, 204); /* no body, no Content-Type */
    CHECK(a.body == NULL && a.len == 0 && a.content_type == NULL);
    REQUIRE_EQ_INT(lp_errpage_answer(&c, NULL, 504, NULL, &a), 0);
    CHECK(a.body == NULL && a.len == 0); /* rendered empty */
    CHECK_STR(a.content_type, "text/html");
}

static void test_grpc(void)
{
    CHECK_EQ_INT(lp_errpage_grpc_status(502), 14); /* UNAVAILABLE */
    CHECK_EQ_INT(lp_errpage_grpc_status(503), 14);
    CHECK_EQ_INT(lp_errpage_grpc_status(504), 4);  /* DEADLINE_EXCEEDED */
    CHECK_EQ_INT(lp_errpage_grpc_status(429), 8);  /* RESOURCE_EXHAUSTED */
    CHECK_EQ_INT(lp_errpage_grpc_status(404), 12); /* UNIMPLEMENTED */
    CHECK_EQ_INT(lp_errpage_grpc_status(500), 13); /* INTERNAL */
    CHECK_EQ_INT(lp_errpage_grpc_status(403), 7);
    CHECK_EQ_INT(lp_errpage_grpc_status(418), 2); /* UNKNOWN */
    char m[64];
    size_t n = lp_errpage_grpc_message(502, m, sizeof(m));
    CHECK_STR(m, "proxy: 502 Bad Gateway");
    CHECK_EQ_INT(n, strlen("proxy: 502 Bad Gateway"));
    n = lp_errpage_grpc_message(502, m, 10); /* cut, still terminated */
    CHECK(n < 10 && strlen(m) == n);
}

/* lp_errpage_grpc_fields's sink: "name=value;" into a string; fails on its `fail`th field. */
typedef struct {
    char text[256];
    int n, fail;
} fields_t;

static int fields_add(void *ud, const char *name, size_t nlen, const char *value, size_t vlen)
{
    fields_t *f = ud;
    if (++f->n == f->fail)
        return 1;
    size_t at = strlen(f->text);
    snprintf(f->text + at, sizeof(f->text) - at, "%.*s=%.*s;", (int)nlen, name, (int)vlen, value);
    return 0;
}

static void test_grpc_fields(void)
{
    fields_t f = {{0}, 0, 0};
    CHECK_EQ_INT(lp_errpage_grpc_fields(504, fields_add, &f), 0);
    CHECK_STR(f.text, "grpc-status=4;grpc-message=proxy: 504 Gateway Timeout;");
    fields_t g = {{0}, 0, 1}; /* the sink fails: said so, nothing more is added */
    CHECK_EQ_INT(lp_errpage_grpc_fields(502, fields_add, &g), -1);
    CHECK_EQ_INT(g.n, 1);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_template),
    LP_TEST_ENTRY(test_find_and_answer),
    LP_TEST_ENTRY(test_grpc),
    LP_TEST_ENTRY(test_grpc_fields),
};

LP_TEST_MAIN(tests)
