/* Unit tests for engine/common.c: lp_grow. */
#include <stdint.h>
#include "lp_test.h"
#include "common.h"

static void test_grow(void)
{
    char *p = NULL;
    size_t cap = 0;
    /* From nothing: the first capacity, then doubling past what is needed. */
    REQUIRE(lp_grow((void **)&p, &cap, 10, 1, 16) == 0);
    CHECK(p && cap == 16);
    memcpy(p, "0123456789", 10);
    REQUIRE(lp_grow((void **)&p, &cap, 16, 1, 16) == 0); /* holds it already: no change */
    CHECK(cap == 16);
    REQUIRE(lp_grow((void **)&p, &cap, 70, 1, 16) == 0);
    CHECK(cap == 128);
    CHECK(memcmp(p, "0123456789", 10) == 0); /* kept */
    free(p);
    /* Elements of several bytes; no first size: starts at one. */
    uint64_t *v = NULL;
    cap = 0;
    REQUIRE(lp_grow((void **)&v, &cap, 3, sizeof(*v), 0) == 0);
    CHECK(cap == 4);
    v[3] = 7;
    /* A size past SIZE_MAX fails and leaves the array as it was. */
    uint64_t *before = v;
    CHECK(lp_grow((void **)&v, &cap, SIZE_MAX / 4, sizeof(*v), 0) == -1);
    CHECK(v == before && cap == 4 && v[3] == 7);
    free(v);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_grow),
};

LP_TEST_MAIN(tests)
