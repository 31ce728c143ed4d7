/* engine/etcd_http.c's name resolution with a deadline (a resolver that hangs does not hold
 * the etcd thread past its timeout, and the abandoned lookup frees itself when it ends), and
 * engine/etcd_routes.c's admin batch applied to a document from etcd. */
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>
#include "etcd.h"
#include "lp_test.h"

static atomic_int slow_done; /* the slow resolver returned */

/* getaddrinfo as a resolver that waits on an unanswering DNS server would: 600 ms. */
static int slow_resolver(const char *host, const char *port, const struct addrinfo *hints,
                         struct addrinfo **res)
{
    (void)host;
    poll(NULL, 0, 600);
    int rc = getaddrinfo("127.0.0.1", port, hints, res);
    atomic_store(&slow_done, 1);
    return rc;
}

static void resolution_bounded_by_timeout(void)
{
    lp_etcd_resolver = slow_resolver;
    struct addrinfo *res = NULL;
    char err[256] = "";
    uint64_t t0 = uv_hrtime();
    int rc = lp_etcd_resolve("etcd.example", "2379", 100, -1, &res, err, sizeof(err));
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    CHECK(rc != 0);
    CHECK(res == NULL);
    CHECK_CONTAINS(err, "name resolution timed out after 100 ms");
    CHECK(ms < 500); /* the resolver takes 600 */
    /* The abandoned lookup ends on its own thread and frees what it holds (ASan checks). */
    for (int i = 0; i < 300 && !atomic_load(&slow_done); i++)
        poll(NULL, 0, 10);
    CHECK(atomic_load(&slow_done));
    poll(NULL, 0, 20); /* let it release after setting the flag */
    /* Within the deadline the answer is taken. */
    atomic_store(&slow_done, 0);
    rc = lp_etcd_resolve("etcd.example", "2379", 3000, -1, &res, err, sizeof(err));
    CHECK_EQ_INT(rc, 0);
    CHECK(res != NULL);
    if (res)
        freeaddrinfo(res);
    lp_etcd_resolver = getaddrinfo;
}

static void resolution_ends_when_woken(void)
{
    lp_etcd_resolver = slow_resolver;
    atomic_store(&slow_done, 0);
    int p[2];
    REQUIRE(pipe(p) == 0);
    REQUIRE(write(p[1], "x", 1) == 1);
    struct addrinfo *res = NULL;
    char err[256] = "";
    uint64_t t0 = uv_hrtime();
    int rc = lp_etcd_resolve("etcd.example", "2379", 5000, p[0], &res, err, sizeof(err));
    CHECK(rc != 0);
    CHECK_STR(err, "woken");
    CHECK((uv_hrtime() - t0) / 1000000 < 500);
    for (int i = 0; i < 300 && !atomic_load(&slow_done); i++)
        poll(NULL, 0, 10);
    poll(NULL, 0, 20);
    close(p[0]);
    close(p[1]);
    lp_etcd_resolver = getaddrinfo;
}

static void numeric_addresses_need_no_thread(void)
{
    lp_etcd_resolver = NULL; /* would crash if called */
    struct addrinfo *res = NULL;
    char err[256] = "";
    CHECK_EQ_INT(lp_etcd_resolve("127.0.0.1", "2379", 10, -1, &res, err, sizeof(err)), 0);
    CHECK(res != NULL);
    if (res)
        freeaddrinfo(res);
    CHECK_EQ_INT(lp_etcd_resolve("::1", "2379", 10, -1, &res, err, sizeof(err)), 0);
    if (res)
        freeaddrinfo(res);
    lp_etcd_resolver = getaddrinfo;
}

static void routes_batch_applied_to_the_document(void)
{
    const char *doc = "{\"upstreams\":{\"o\":{\"targets\":[\"h:1\"]}},\"routes\":["
                      "{\"match\":{\"host\":\"a\"},\"upstream\":\"o\"},"
                      "{\"match\":{\"host\":\"b\"},\"upstream\":\"o\"}]}";
    json_t *ops = json_loads("[{\"op\":\"add\",\"at\":1,\"route\":{\"name\":\"n\",\"match\":"
                             "{\"host\":\"n\"},\"upstream\":\"o\"}},"
                             "{\"op\":\"remove\",\"index\":3},"
                             "{\"op\":\"replace\",\"index\":2,\"route\":{\"match\":{\"host\":"
                             "\"r\"},\"upstream\":\"o\"}},"
                             "{\"op\":\"add\",\"route\":{\"match\":{\"host\":\"z\"},"
                             "\"upstream\":\"o\"}}]",
                             0, NULL);
    REQUIRE(ops != NULL);
    char *out = NULL, err[256] = "";
    CHECK_EQ_INT(lp_etcd_routes_doc(doc, ops, &out, err, sizeof(err)), 0);
    json_t *d = out ? json_loads(out, 0, NULL) : NULL;
    json_t *r = json_object_get(d, "routes");
    CHECK_EQ_INT((int)json_array_size(r), 3);
    const char *hosts[] = {"n", "r", "z"};
    for (size_t i = 0; i < 3 && i < json_array_size(r); i++)
        CHECK_STR(json_string_value(
                      json_object_get(json_object_get(json_array_get(r, i), "match"), "host")),
                  hosts[i]);
    CHECK(json_object_get(d, "upstreams") != NULL); /* the rest as it was */
    json_decref(d);
    free(out);
    json_decref(ops);
    /* No document yet: one is made. A position past the end is refused. */
    ops = json_loads("[{\"op\":\"add\",\"route\":{\"match\":{\"host\":\"a\"}}}]", 0, NULL);
    CHECK_EQ_INT(lp_etcd_routes_doc(NULL, ops, &out, err, sizeof(err)), 0);
    CHECK_CONTAINS(out, "\"routes\":[{\"match\":{\"host\":\"a\"}}]");
    free(out);
    json_decref(ops);
    ops = json_loads("[{\"op\":\"remove\",\"index\":3}]", 0, NULL);
    CHECK(lp_etcd_routes_doc(doc, ops, &out, err, sizeof(err)) != 0);
    CHECK_CONTAINS(err, "ops[1]: does not apply to the document's 2 routes");
    CHECK(out == NULL);
    json_decref(ops);
    CHECK(lp_etcd_routes_doc("[1]", NULL, &out, err, sizeof(err)) != 0);
    CHECK_CONTAINS(err, "not a JSON object");
}

static const lp_test_case_t tests[] = {
    {"resolution_bounded_by_timeout", resolution_bounded_by_timeout},
    {"resolution_ends_when_woken", resolution_ends_when_woken},
    {"numeric_addresses_need_no_thread", numeric_addresses_need_no_thread},
    {"routes_batch_applied_to_the_document", routes_batch_applied_to_the_document},
};

LP_TEST_MAIN(tests)
