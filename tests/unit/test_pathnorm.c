/* engine/pathnorm.c: what a request path becomes before routing. */
#include <stdlib.h>
#include <string.h>
#include "lp_test.h"
#include "pathnorm.h"

#define N LP_PATHN_NORMALIZE
#define M LP_PATHN_MERGE

/* Normalises `in` with flags and compares with `want` (NULL: expect the error `err`). Also
 * checks that the one-scan test agrees: no change means no normalisation needed. */
static void norm(const char *in, unsigned flags, const char *want, long err, int line)
{
    size_t len = strlen(in);
    char *buf = malloc(len + 1);
    memcpy(buf, in, len + 1);
    long n = lp_path_normalize(buf, len, flags);
    if (!want) {
        if (n != err)
            lp_test_fail(__FILE__, line, "%s: got %ld, want error %ld", in, n, err);
    } else if (n < 0 || (size_t)n != strlen(want) || memcmp(buf, want, (size_t)n)) {
        lp_test_fail(__FILE__, line, "%s: got %.*s (%ld), want %s", in, n < 0 ? 0 : (int)n, buf, n,
                     want);
    } else if (!lp_path_needs_norm(in, len, flags) && strcmp(in, want)) {
        lp_test_fail(__FILE__, line, "%s: changes to %s but the scan says no", in, want);
    }
    free(buf);
}
#define OK(in, want)     norm(in, N, want, 0, __LINE__)
#define OKF(in, f, want) norm(in, f, want, 0, __LINE__)
#define ERR(in, e)       norm(in, N, NULL, e, __LINE__)

/* RFC 3986 5.4.1 and 5.4.2 with base http://a/b/c/d;p?q: the merged paths whose dot segments
 * 5.2.4 removes (the reference "../../../g" climbs above the root: refused, as nginx does). */
static void test_rfc3986_examples(void)
{
    OK("/b/c/g", "/b/c/g");
    OK("/b/c/./g", "/b/c/g");
    OK("/b/c/g/", "/b/c/g/");
    OK("/b/c/.", "/b/c/");
    OK("/b/c/./", "/b/c/");
    OK("/b/c/..", "/b/");
    OK("/b/c/../", "/b/");
    OK("/b/c/../g", "/b/g");
    OK("/b/c/../..", "/");
    OK("/b/c/../../", "/");
    OK("/b/c/../../g", "/g");
    ERR("/b/c/../../../g", LP_PATHN_ABOVE_ROOT);
    ERR("/b/c/../../../../g", LP_PATHN_ABOVE_ROOT);
    OK("/./g", "/g");
    ERR("/../g", LP_PATHN_ABOVE_ROOT);
    OK("/b/c/g.", "/b/c/g.");
    OK("/b/c/.g", "/b/c/.g");
    OK("/b/c/g..", "/b/c/g..");
    OK("/b/c/..g", "/b/c/..g");
    OK("/b/c/./../g", "/b/g");
    OK("/b/c/./g/.", "/b/c/g/");
    OK("/b/c/g/./h", "/b/c/g/h");
    OK("/b/c/g/../h", "/b/c/h");
    OK("/b/c/g;x=1/./y", "/b/c/g;x=1/y");
    OK("/b/c/g;x=1/../y", "/b/c/y");
    /* 5.2.4's own walk-through */
    OK("/a/b/c/./../../g", "/a/g");
}

static void test_escapes(void)
{
    OK("/api/%2e%2e/h/x", "/h/x");
    OK("/api/%2E%2E/h/x", "/h/x");
    OK("/api/.%2e/h/x", "/h/x");
    OK("/api/%2e./h/x", "/h/x");
    OK("/a/%2e/b", "/a/b");
    OK("/%7Euser/%41%62c%2D%5f%30", "/~user/Abc-_0");
    /* reserved and other characters stay escaped, as sent: decoding %2F changes the path */
    OK("/a%2Fb/%2f..", "/a%2Fb/%2f..");
    OK("/a/%2e%2e%2fb", "/a/..%2fb");
    OK("/a%20b/%3F/%25", "/a%20b/%3F/%25");
    OK("/a/%25%32%65%25%32%65/x", "/a/%252e%252e/x"); /* decoded once, not twice */
    ERR("/a%zz", LP_PATHN_BAD_ESCAPE);
    ERR("/a%2", LP_PATHN_BAD_ESCAPE);
    ERR("/a%", LP_PATHN_BAD_ESCAPE);
    ERR("/a%g0", LP_PATHN_BAD_ESCAPE);
    ERR("/%2e%2e/x", LP_PATHN_ABOVE_ROOT);
    ERR("/a/../%2E./x", LP_PATHN_ABOVE_ROOT);
}

static void test_query_and_slashes(void)
{
    OK("/a/../b?x=/../%2e%zz", "/b?x=/../%2e%zz");
    OK("/a/..?q", "/?q");
    OK("/?q=%zz", "/?q=%zz");
    OK("/", "/");
    OK("/.", "/");
    OK("/..x", "/..x");
    OK("/.well-known/x", "/.well-known/x");
    /* "//" kept unless merge_slashes */
    OK("//a//b/", "//a//b/");
    OK("/a//../b", "/a/b");
    OKF("//a//b//", N | M, "/a/b/");
    OKF("//a//./..//b", N | M, "/b");
    OKF("//a/../b?x=//", M, "/a/../b?x=//"); /* merge alone leaves dots */
    OKF("/a/%2e%2e//b", M, "/a/%2e%2e/b");
    OKF("/a/../b", 0, "/a/../b");
}

static void test_scan(void)
{
    CHECK(!lp_path_needs_norm("/api/v1/users?x=/../", 20, N));
    CHECK(!lp_path_needs_norm("/.well-known/acme", 17, N));
    CHECK(lp_path_needs_norm("/a/.", 4, N));
    CHECK(lp_path_needs_norm("/a/..?", 6, N));
    CHECK(lp_path_needs_norm("/a%41", 5, N));
    CHECK(!lp_path_needs_norm("/a//b", 5, N));
    CHECK(lp_path_needs_norm("/a//b", 5, N | M));
    CHECK(!lp_path_needs_norm("/a/b?//", 7, M));
}

static void test_long(void)
{
    /* 64 KiB of "/x/.." pairs and escapes: linear work, ends at the root */
    size_t reps = 13000, len = reps * 5 + 2;
    char *p = malloc(len + 1);
    for (size_t i = 0; i < reps; i++)
        memcpy(p + i * 5, i % 2 ? "/%2e." : "/abcd", 5);
    memcpy(p + reps * 5, "/z", 3);
    long n = lp_path_normalize(p, len, N);
    CHECK(n == 2 && !memcmp(p, "/z", 2));
    /* deep path kept whole */
    for (size_t i = 0; i < len; i++)
        p[i] = i % 2 ? 'a' : '/';
    CHECK(lp_path_normalize(p, len, N | M) == (long)len);
    free(p);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_rfc3986_examples),
    LP_TEST_ENTRY(test_escapes),
    LP_TEST_ENTRY(test_query_and_slashes),
    LP_TEST_ENTRY(test_scan),
    LP_TEST_ENTRY(test_long),
};

LP_TEST_MAIN(tests)
