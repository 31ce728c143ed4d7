/* engine/waf_sqli.c: @detectSQLi's verdicts (where the injection starts and ends, its
 * fingerprint) on attacks and prose, on the tokenizer's edges (unterminated literals and
 * comments, NUL and invalid UTF-8 bytes, empty values), and on long values (bounded work:
 * the 1 MiB cases finish at once). The verdicts are those of the Lua detector this was
 * ported from (the rules were tuned against them), plus the numeric tautologies libinjection
 * flags (issue #20); spec/luaproxy/waf_detect_spec.lua runs the corpora through it. */
#include <stdlib.h>
#include <string.h>

#include "lp_test.h"
struct lp_req_s;
#include "lua_api.h"

/* v (n bytes): an attack from..to with fingerprint fp, or none (fp NULL) */
static void check(int line, const char *v, size_t n, unsigned from, unsigned to, const char *fp)
{
    lp_waf_detect_t d;
    memset(&d, 0, sizeof d);
    int got = lp_ffi_waf_sqli(v, n, &d);
    if (!fp) {
        if (got)
            lp_test_fail(__FILE__, line, "\"%.*s\": SQLi at %u..%u (%s), expected none", (int)n, v,
                         d.from, d.to, d.fp);
        return;
    }
    if (!got || d.from != from || d.to != to || strcmp(d.fp, fp) != 0)
        lp_test_fail(__FILE__, line, "\"%.*s\": got %d %u..%u \"%s\", expected %u..%u \"%s\"",
                     (int)n, v, got, d.from, d.to, got ? d.fp : "", from, to, fp);
}

#define S(v, from, to, fp) check(__LINE__, v, sizeof v - 1, from, to, fp)

static void test_attacks(void)
{
    S("1 AND 1=1", 3, 9, "&non");
    S("1' OR '1'='1", 4, 12, "&sos");
    S("admin'--", 7, 8, "c");
    S("' UNION SELECT password FROM users--", 3, 36, "Ukbkbc");
    S("1 union all select 1,2", 3, 22, "Ukkn,n");
    S("1;DROP TABLE users", 2, 18, ";kkb");
    S("sleep(5)", 1, 8, "f(n)");
    S("SELECT * FROM t", 1, 15, "kokb");
    S("(select 1)", 1, 10, "(kn)");
    S("1 order by 3", 3, 12, "kkn");
    S("'; exec xp_cmdshell 'dir'", 2, 25, ";kbs");
    S("char(49,50)", 1, 11, "f(n,n)");
    S("1) or sleep(5)#", 7, 15, "f(n)c");
    S("' having 1=1--", 3, 14, "knono");
    S("1.5e+3 or 2>1", 8, 13, "&non");
    S("'/*!50000union*/ select 1", 10, 25, "Ukn");
    S("waitfor delay '0:0:5'", 1, 21, "kks");
    S("1;update users set x=1", 2, 22, ";kbkbo");
    S("0x41 or 1=1", 6, 11, "&non");
    /* UNION DISTINCT SELECT, as UNION ALL SELECT */
    S("1 union distinct select 1,2", 3, 27, "Ubkn,n");
    S("1 union distinct select password from users", 3, 43, "Ubkbkb");
    /* 0xA0 separates words wherever it is (MySQL reads it as a space) */
    S("1\240union\240select\2401,2", 3, 18, "Ukn,n");
    /* a comment between a function's name and its '(' */
    S("1 and sleep/**/(5)", 7, 18, "fc(n)");
    /* a tautology after the application's parentheses close and reopen, a signed number, an
     * operand: what libinjection (ModSecurity's @detectSQLi, CRS 942100) flags */
    S("1) or (1=1", 4, 10, "&(non");
    S("1)) or ((1=1", 5, 12, "&((non");
    S("-1 or 1=1", 4, 9, "&non");
    S("+1 or 1=1", 4, 9, "&non");
    S("((-1 and 1=1", 6, 12, "&non");
    S("((((a or 1=1 or 1=1", 7, 19, "&non&n");
    S("1/**/or/**/(1=1", 6, 15, "&c(non");
    S("x' or (('a'='a", 8, 14, "(sos");
}

static void test_prose(void)
{
    S("It's great -- I'd buy it again", 0, 0, NULL);
    S("count(3) apples", 0, 0, NULL);
    S("O'Neil", 0, 0, NULL);
    S("SELECT is a keyword", 0, 0, NULL);
    S("a' AND 'b", 0, 0, NULL);
    /* @@variables alone are not flagged (as the Lua original did not) */
    S("@@version", 0, 0, NULL);
    /* numbers and parentheses without a comparison after AND/OR, or without AND/OR */
    S("pages 1 or 2", 0, 0, NULL);
    S("1 or 2 days", 0, 0, NULL);
    S("(1 = 1)", 0, 0, NULL);
    S("size (1) or (2)", 0, 0, NULL);
    S("(2 and 3)", 0, 0, NULL);
    S("-1", 0, 0, NULL);
    S("(a or b=c)", 0, 0, NULL);
    /* a tautology's shape away from the value's start: arithmetic in prose */
    S("It's 5 or 6 = 11", 0, 0, NULL);
    S("I'd rate it 4 or 5 > 3", 0, 0, NULL);
    S("(see p. 3) or 4=4", 0, 0, NULL);
    S("version 2) or (3 < 4", 0, 0, NULL);
}

static void test_edges(void)
{
    /* empty, one byte, quotes that never close */
    S("", 0, 0, NULL);
    S("x", 0, 0, NULL);
    S("'", 0, 0, NULL);
    S("\"", 0, 0, NULL);
    S("'\"", 0, 0, NULL);
    S("'abc", 0, 0, NULL);
    /* an unterminated comment runs to the end */
    S("x' /* unterminated", 4, 18, "c");
    /* NUL bytes are white space to the tokenizer; invalid UTF-8 is word bytes */
    S("\0\0", 0, 0, NULL);
    S("a\0' OR 1=1--", 5, 12, "&nono");
    S("\377\376' or 1=1 #", 5, 12, "&nonc");
    /* an empty value pointer with no bytes */
    lp_waf_detect_t d;
    CHECK(lp_ffi_waf_sqli("", 0, &d) == 0);
}

/* Long values: all of the value is tokenized, through a window of tokens; every byte is
 * looked at a bounded number of times (a 1 MiB value of the worst kinds). */
static void test_long(void)
{
    size_t n = 1 << 20;
    char *v = malloc(n);
    REQUIRE(v != NULL);
    lp_waf_detect_t d;
    static const char *const fills[] = {"'", "(", "a ", "' or ", "/*", "\"''", "1-", "@@x.", " "};
    for (size_t f = 0; f < sizeof fills / sizeof fills[0]; f++) {
        size_t m = strlen(fills[f]);
        for (size_t i = 0; i < n; i++)
            v[i] = fills[f][i % m];
        (void)lp_ffi_waf_sqli(v, n, &d);
    }
    /* an attack after padding: bytes (spaces, one word) or many tokens */
    memset(v, ' ', 4096);
    memcpy(v + 4096, "' or 1=1--", 10);
    CHECK(lp_ffi_waf_sqli(v, 4096 + 10, &d) == 1);
    CHECK_EQ_INT(d.from, 4099);
    CHECK_STR(d.fp, "&nono");
    memset(v, 'a', n);
    memcpy(v + 8192, " 1 union select 1,2 ", 20);
    CHECK(lp_ffi_waf_sqli(v, 8192 + 20, &d) == 1);
    CHECK_EQ_INT(d.from, 8196);
    for (size_t i = 0; i < 1000; i++)
        memcpy(v + 2 * i, "a ", 2);
    memcpy(v + 2000, "1 union select 1,2", 18);
    CHECK(lp_ffi_waf_sqli(v, 2018, &d) == 1);
    CHECK_EQ_INT(d.from, 2003);
    CHECK_STR(d.fp, "Ukn,n");
    /* a tautology after more than a window's worth of opening parentheses (4 KB): they
     * count as one */
    memset(v, '(', 2000);
    for (size_t i = 0; i < 125; i++)
        memcpy(v + 2000 + 16 * i, "a or 1=1 or 1=1 ", 16);
    CHECK(lp_ffi_waf_sqli(v, 4000, &d) == 1);
    CHECK_EQ_INT(d.from, 2003);
    CHECK_STR(d.fp, "&non&n");
    for (size_t i = 0; i < 47; i++)
        v[i] = '(';
    memcpy(v + 47, "a or 1=1", 8);
    for (size_t i = 0; i < 20; i++)
        memcpy(v + 55 + 2 * i, " x", 2);
    CHECK(lp_ffi_waf_sqli(v, 95, &d) == 1);
    CHECK_EQ_INT(d.from, 50);
    CHECK_STR(d.fp, "&nonbb");
    /* a 1 MiB value is read to its end */
    memset(v, 'a', n);
    memcpy(v + 100, " 1 union select 1,2 ", 20);
    CHECK(lp_ffi_waf_sqli(v, n, &d) == 1);
    CHECK_EQ_INT(d.from, 104);
    CHECK_EQ_INT(d.to, n);
    CHECK_STR(d.fp, "Ukn,nb");
    free(v);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_attacks),
    LP_TEST_ENTRY(test_prose),
    LP_TEST_ENTRY(test_edges),
    LP_TEST_ENTRY(test_long),
};

LP_TEST_MAIN(tests)
