/* engine/waf_xss.c: @detectXSS's verdicts (where the markup starts; it runs to the value's
 * end) on attacks and on markup a comment form allows, on entity-encoded script URLs, on
 * the parser's edges (unterminated tags, quotes and comments, NUL and invalid UTF-8 bytes,
 * empty values) and on long values (bounded work: the 1 MiB cases finish at once). The
 * verdicts are those of the Lua detector this was ported from (the rules were tuned against
 * them); spec/luaproxy/waf_detect_spec.lua runs the corpora through it. */
#include <stdlib.h>
#include <string.h>

#include "lp_test.h"
struct lp_req_s;
#include "lua_api.h"

/* v (n bytes): markup from `from` to the end, or none (from 0) */
static void check(int line, const char *v, size_t n, unsigned from)
{
    lp_waf_detect_t d;
    memset(&d, 0, sizeof d);
    int got = lp_ffi_waf_xss(v, n, &d);
    unsigned want_to = from ? (unsigned)n : 0;
    if (got != (from != 0) || (got && (d.from != from || d.to != want_to)))
        lp_test_fail(__FILE__, line, "\"%.*s\": got %d %u..%u, expected %u..%u", (int)n, v, got,
                     d.from, d.to, from, want_to);
}

#define X(v, from) check(__LINE__, v, sizeof v - 1, from)

static void test_attacks(void)
{
    X("<script>alert(1)</script>", 1);
    X("<a href=\"javascript:alert(1)\">x</a>", 4);
    X("<img src=x onerror=alert(1)>", 12);
    X("\" onmouseover=\"alert(1)", 3);
    X("' autofocus onfocus='x", 13);
    X("javascript:alert(1)", 1);
    X("<div style=\"width:expression(alert(1))\">", 6);
    X("<div style=\"background:url('javascript:x')\">", 6);
    X("<svg:script>", 1);
    X("<!ENTITY x>", 1);
    X("<?xml version=1?>", 1);
    X("\"><iframe src=x>", 3);
    X("<a\tonclick=x>", 4);
    X("<a href=data:text/html,x>", 4);
    /* a '=' where a name starts is part of the name (HTML5), not the tag's end */
    X("<img src=x =y onerror=alert(1)>", 15);
    /* a backtick quotes nothing: the value ends at the space */
    X("<img src=`x onerror=alert(1)//`>", 13);
    /* comments end as HTML5 ends them */
    X("<!--><script>", 6);
    X("<!---><script>", 7);
    X("<!-- --!><script>", 10);
}

static void test_entities(void)
{
    X("<a href=\"jav&#x61;script:alert(1)\">", 4);
    X("<a href=\"&#106;avascript&colon;x\">", 4);
    X("<a href=\"&#x6a&#x61&#x76&#x61&#x73&#x63&#x72&#x69&#x70&#x74&#x3a;x\">", 4);
    /* a reference beyond ASCII is dropped, a huge one too */
    X("<a href=\"java&#x10000;script:x\">", 4);
    X("<a href=\"java&#99999999999999999999;script:x\">", 4);
    /* encoded markup is not markup (the rules decode before asking) */
    X("&#x3C;script&#x3E;", 0);
}

static void test_plain(void)
{
    X("<b>bold</b>", 0);
    X("<a href=\"https://example.com\">x</a>", 0);
    X("javascript: the good parts", 0);
    X("<!-- <script> -->", 0);
    X("<p>hi</p>", 0);
    X("a < b and c > d", 0);
    X("x=1&y=2", 0);
    /* an unquoted URL ends at white space */
    X("<a href=java\nscript:x>", 0);
    /* a '=' starting a name is part of it: "=onerror" is no handler */
    X("<x =onerror=1>", 0);
    X("<!-- a -- b --><b>", 0);
    X("<!-- -!> <script> -->", 0);
}

static void test_edges(void)
{
    X("", 0);
    X("<", 0);
    X("<a href=\"unterminated", 0);
    X("< / script>", 0);
    X("\0<script", 2);
    X("<scr\0ipt>", 0);
    X("\377<script>", 2);
    X("<!--", 0);
    X("<a b='", 0);
}

/* Long values: all of the value is parsed, each byte a bounded number of times (markup
 * after any padding is found). */
static void test_long(void)
{
    size_t n = 1 << 20;
    char *v = malloc(n);
    REQUIRE(v != NULL);
    lp_waf_detect_t d;
    static const char *const fills[] = {"<", "<a ", "<a b=",          "\"",  "' x", "&#x41;",
                                        "&", "<!",  "<a style='url(", "=(:", " "};
    for (size_t f = 0; f < sizeof fills / sizeof fills[0]; f++) {
        size_t m = strlen(fills[f]);
        for (size_t i = 0; i < n; i++)
            v[i] = fills[f][i % m];
        (void)lp_ffi_waf_xss(v, n, &d);
    }
    memset(v, 'a', n);
    CHECK(lp_ffi_waf_xss(v, n, &d) == 0);
    memcpy(v + n - 8, "<script>", 8);
    CHECK(lp_ffi_waf_xss(v, n, &d) == 1);
    CHECK_EQ_INT(d.from, n - 7);
    CHECK_EQ_INT(d.to, n);
    memset(v, ' ', n - 8);
    memcpy(v + 70000, "\"><img src=x onerror=alert(1)>", 30);
    CHECK(lp_ffi_waf_xss(v, n, &d) == 1);
    CHECK_EQ_INT(d.from, 70014);
    memcpy(v + 1000, "<script>", 8);
    CHECK(lp_ffi_waf_xss(v, n, &d) == 1);
    CHECK_EQ_INT(d.from, 1001);
    CHECK_EQ_INT(d.to, n);
    free(v);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_attacks), LP_TEST_ENTRY(test_entities), LP_TEST_ENTRY(test_plain),
    LP_TEST_ENTRY(test_edges),   LP_TEST_ENTRY(test_long),
};

LP_TEST_MAIN(tests)
