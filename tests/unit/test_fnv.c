/* engine/fnv.h: FNV-1a 64 against the published test vectors of its authors, and a hash
 * continued over parts equal to the hash of the whole (the callers hash in parts). */
#include <stdint.h>
#include <string.h>
#include "fnv.h"
#include "lp_test.h"

static uint64_t of(const char *s, size_t n)
{
    return lp_fnv1a64(LP_FNV1A64_INIT, s, n);
}

static void test_known_vectors(void)
{
    CHECK(of("", 0) == 0xcbf29ce484222325ULL);
    CHECK(of("a", 1) == 0xaf63dc4c8601ec8cULL);
    CHECK(of("foobar", 6) == 0x85944171f73967e8ULL);
    CHECK(of("\0", 1) == 0xaf63bd4c8601b7dfULL);
    CHECK(of("chongo was here!\n", 17) == 0x46810940eff5f915ULL);
}

static void test_parts(void)
{
    uint64_t h = lp_fnv1a64(lp_fnv1a64(LP_FNV1A64_INIT, "foo", 3), "bar", 3);
    CHECK(h == of("foobar", 6));
    CHECK(lp_fnv1a64(h, "", 0) == h);
    /* bytes >= 0x80 are taken unsigned */
    CHECK(of("\xff", 1) == ((LP_FNV1A64_INIT ^ 0xffu) * 0x100000001b3ULL));
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_known_vectors),
    LP_TEST_ENTRY(test_parts),
};

LP_TEST_MAIN(tests)
