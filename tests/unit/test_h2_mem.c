/* Unit tests for engine/h2_mem.c: nghttp2's allocations from per-worker free lists. */
#include <string.h>
#include "lp_test.h"
#include "h2_mem.h"

static void test_recycles_by_class(void)
{
    lp_h2_mem_t *m = lp_h2_mem_new();
    REQUIRE(m != NULL);
    nghttp2_mem *a = lp_h2_mem_of(m);
    REQUIRE(a != NULL);
    void *p = a->malloc(100, a->mem_user_data);
    REQUIRE(p != NULL);
    memset(p, 'x', 128); /* the whole class is usable (ASan checks) */
    a->free(p, a->mem_user_data);
    void *q = a->malloc(120, a->mem_user_data); /* same class (65-128): the same block */
    CHECK(q == p);
    void *r = a->malloc(200, a->mem_user_data); /* another class */
    CHECK(r != q);
    a->free(q, a->mem_user_data);
    a->free(r, a->mem_user_data);
    a->free(NULL, a->mem_user_data);
    /* The lists were empty at some point since the start: the first trim frees nothing and
     * marks what they hold now; untouched until the next, that goes then. */
    CHECK(lp_h2_mem_trim(m) == 0);
    CHECK(lp_h2_mem_trim(m) > 0);
    CHECK(lp_h2_mem_trim(m) == 0);
    lp_h2_mem_free(m);
}

static void test_calloc_realloc(void)
{
    lp_h2_mem_t *m = lp_h2_mem_new();
    REQUIRE(m != NULL);
    nghttp2_mem *a = lp_h2_mem_of(m);
    void *ud = a->mem_user_data;
    /* A recycled block comes back zeroed from calloc. */
    unsigned char *p = a->malloc(64, ud);
    REQUIRE(p != NULL);
    memset(p, 0xff, 64);
    a->free(p, ud);
    unsigned char *z = a->calloc(8, 8, ud);
    REQUIRE(z != NULL);
    int zero = 1;
    for (int i = 0; i < 64; i++)
        zero &= z[i] == 0;
    CHECK(zero);
    /* Growing through classes and into a plain block keeps the contents. */
    for (int i = 0; i < 64; i++)
        z[i] = (unsigned char)i;
    unsigned char *g = a->realloc(z, 1000, ud);
    REQUIRE(g != NULL);
    unsigned char *h = a->realloc(g, 100000, ud);
    REQUIRE(h != NULL);
    int same = 1;
    for (int i = 0; i < 64; i++)
        same &= h[i] == i;
    CHECK(same);
    memset(h, 1, 100000);
    /* And shrinking back into a class. */
    unsigned char *s = a->realloc(h, 10, ud);
    REQUIRE(s != NULL);
    CHECK_EQ_INT(s[9], 1);
    a->free(s, ud);
    CHECK(a->calloc((size_t)-1, 2, ud) == NULL); /* overflow */
    lp_h2_mem_free(m);                           /* frees what the lists hold (ASan: no leak) */
}

static void test_session_uses_it(void)
{
    /* A real session over the lists: created, a request submitted, deleted. */
    lp_h2_mem_t *m = lp_h2_mem_new();
    REQUIRE(m != NULL);
    nghttp2_session_callbacks *cb;
    REQUIRE(nghttp2_session_callbacks_new(&cb) == 0);
    nghttp2_session *s;
    REQUIRE(nghttp2_session_client_new3(&s, cb, NULL, NULL, lp_h2_mem_of(m)) == 0);
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)"GET", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":path", (uint8_t *)"/", 5, 1, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":authority", (uint8_t *)"a", 10, 1, NGHTTP2_NV_FLAG_NONE},
    };
    CHECK(nghttp2_submit_request(s, NULL, nv, 4, NULL, NULL) > 0);
    const uint8_t *out;
    CHECK(nghttp2_session_mem_send(s, &out) > 0);
    nghttp2_session_del(s);
    nghttp2_session_callbacks_del(cb);
    lp_h2_mem_free(m);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_recycles_by_class),
    LP_TEST_ENTRY(test_calloc_realloc),
    LP_TEST_ENTRY(test_session_uses_it),
};

LP_TEST_MAIN(tests)
