/* A minimal unit-test framework for the engine's C modules.
 *
 * A test is a `static void name(void)` listed in a `LP_TEST_LIST` table; `lp_test_main`
 * runs every test, prints each failed check with file:line, then "N passed, M failed"
 * (counted in tests) and returns non-zero when anything failed.
 *
 * CHECK* macros record a failure and let the test continue; REQUIRE* also return from
 * the test, for checks that later lines depend on (a NULL pointer, a failed parse). */
#ifndef LP_TEST_H
#define LP_TEST_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    void (*fn)(void);
} lp_test_case_t;

/* Failures recorded by the test that is running (reset per test). */
static int lp_test_failures;

static inline void lp_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static inline void lp_test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "  %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    lp_test_failures++;
}

/* Each macro evaluates to 1 when the check passed, 0 when it failed. */
#define CHECK(cond) ((cond) ? 1 : (lp_test_fail(__FILE__, __LINE__, "CHECK(%s) failed", #cond), 0))

#define CHECK_EQ_INT(a, b)                                                                         \
    lp_test_eq_int(__FILE__, __LINE__, #a, #b, (long long)(a), (long long)(b))

/* NUL-terminated strings; NULL compares equal only to NULL. */
#define CHECK_STR(a, b) lp_test_eq_str(__FILE__, __LINE__, #a, (a), (b))

/* A byte range (lp_str_t or anything with .base/.len) against a C string. */
#define CHECK_SLICE(s, lit) lp_test_eq_mem(__FILE__, __LINE__, #s, (s).base, (s).len, (lit))

/* `hay` (a C string) contains `needle`. */
#define CHECK_CONTAINS(hay, needle) lp_test_contains(__FILE__, __LINE__, #hay, (hay), (needle))

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!CHECK(cond))                                                                          \
            return;                                                                                \
    } while (0)

#define REQUIRE_EQ_INT(a, b)                                                                       \
    do {                                                                                           \
        if (!CHECK_EQ_INT(a, b))                                                                   \
            return;                                                                                \
    } while (0)

static inline int lp_test_eq_int(const char *file, int line, const char *ea, const char *eb,
                                 long long a, long long b)
{
    if (a == b)
        return 1;
    lp_test_fail(file, line, "%s == %s failed: %lld != %lld", ea, eb, a, b);
    return 0;
}

static inline int lp_test_eq_str(const char *file, int line, const char *ea, const char *a,
                                 const char *b)
{
    if ((!a && !b) || (a && b && strcmp(a, b) == 0))
        return 1;
    lp_test_fail(file, line, "%s: got \"%s\", expected \"%s\"", ea, a ? a : "(null)",
                 b ? b : "(null)");
    return 0;
}

static inline int lp_test_eq_mem(const char *file, int line, const char *ea, const char *base,
                                 size_t len, const char *want)
{
    size_t wlen = want ? strlen(want) : 0;
    if (!want && !base)
        return 1;
    if (base && want && len == wlen && memcmp(base, want, len) == 0)
        return 1;
    lp_test_fail(file, line, "%s: got \"%.*s\" (%zu bytes), expected \"%s\"", ea,
                 base ? (int)len : 6, base ? base : "(null)", len, want ? want : "(null)");
    return 0;
}

static inline int lp_test_contains(const char *file, int line, const char *ea, const char *hay,
                                   const char *needle)
{
    if (hay && strstr(hay, needle))
        return 1;
    lp_test_fail(file, line, "%s: \"%s\" does not contain \"%s\"", ea, hay ? hay : "(null)",
                 needle);
    return 0;
}

#define LP_TEST_ENTRY(fn)                                                                          \
    {                                                                                              \
#fn, fn                                                                                    \
    }

/* Runs every test (or only those whose name contains argv[1]). */
static inline int lp_test_run(const lp_test_case_t *tests, size_t n, int argc, char **argv)
{
    int passed = 0, failed = 0;
    const char *filter = argc > 1 ? argv[1] : NULL;
    for (size_t i = 0; i < n; i++) {
        if (filter && !strstr(tests[i].name, filter))
            continue;
        lp_test_failures = 0;
        tests[i].fn();
        if (lp_test_failures) {
            fprintf(stderr, "FAIL %s (%d failed checks)\n", tests[i].name, lp_test_failures);
            failed++;
        } else {
            printf("ok   %s\n", tests[i].name);
            passed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    fflush(stdout);
    return failed ? 1 : 0;
}

#define LP_TEST_MAIN(table)                                                                        \
    int main(int argc, char **argv)                                                                \
    {                                                                                              \
        return lp_test_run((table), sizeof(table) / sizeof((table)[0]), argc, argv);               \
    }

#endif
