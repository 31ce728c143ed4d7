/* engine/waf_transform.c: each transformation on the cases ModSecurity's reference manual
 * describes, and on the inputs where the Lua twins (luaproxy/waf/transforms.lua) do
 * something particular (passes over the previous pass's output, greedy runs, invalid
 * escapes kept). spec/luaproxy/waf_transform_spec.lua compares the two over the corpora. */
#include <string.h>

#include "lp_test.h"
#include "waf_transform.h"

/* step over in[0..n): expect (m bytes); "unchanged" expected as the input itself */
static void check_step(int line, const char *name, const char *in, size_t n, const char *want,
                       size_t m)
{
    int step = lp_waf_transform_id(name);
    if (step < 0) {
        lp_test_fail(__FILE__, line, "no step %s", name);
        return;
    }
    char out[1024];
    if (lp_waf_transform_bound(step, n) > sizeof out) {
        lp_test_fail(__FILE__, line, "input too long");
        return;
    }
    long r = lp_waf_transform(step, in, n, out);
    const char *got = r < 0 ? in : out;
    size_t len = r < 0 ? n : (size_t)r;
    if (len != m || memcmp(got, want, m) != 0)
        lp_test_fail(__FILE__, line, "%s(\"%.*s\"): got \"%.*s\" (%zu bytes), expected \"%.*s\"",
                     name, (int)n, in, (int)len, got, len, (int)m, want);
}

#define T(name, in, want) check_step(__LINE__, name, in, sizeof in - 1, want, sizeof want - 1)

static void test_names(void)
{
    CHECK(lp_waf_transform_id("urldecode") == LP_WAF_T_URLDECODE);
    CHECK(lp_waf_transform_id("escape_seq_decode") == -1);
    CHECK(lp_waf_transform_id("") == -1);
    char out[8];
    CHECK(lp_waf_transform(0, "a", 1, out) == -1);
    CHECK(lp_waf_transform(LP_WAF_T_COUNT, "a", 1, out) == -1);
}

static void test_urldecode(void)
{
    T("urldecode", "a+b%20c%3d", "a b c=");
    T("urldecode", "%zz%4", "%zz%4");                   /* invalid escapes stay */
    T("urldecode", "%u0041%uFF21%u00e9", "AA\xc3\xa9"); /* IIS %u, full-width A */
    T("urldecode", "%ud800", "\xef\xbf\xbd");           /* a surrogate */
    T("urldecode", "%u002541", "A");                    /* %u then %XX over its output */
    T("urldecode", "%%41", "%A");
    T("urldecode", "%00x", "\0x");
    T("urldecode", "plain", "plain");
}

static void test_html_decode(void)
{
    T("html_decode", "&lt;script&GT;", "<script>");
    T("html_decode", "&#60;&#x3c;&#X3C", "<<<");
    T("html_decode", "&#x110000;&#1114112;&#x123456789;", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    T("html_decode", "&#x26;lt;", "<"); /* each pass over the last one's output */
    T("html_decode", "&nosuch;&amp", "&nosuch;&");
    T("html_decode", "&#0;", "\0");
    T("html_decode", "a & b", "a & b");
}

static void test_js_css(void)
{
    T("js_decode", "\\x41\\u0042\\103\\n\\q", "ABC\nq");
    T("js_decode", "\\uff21\\u1234", "A\x34");
    T("js_decode", "\\\\x41", "A"); /* \x41 decoded first, then "\\" + "A" */
    T("js_decode", "end\\", "end\\");
    T("css_decode", "\\3c script\\3E", "<script>");
    T("css_decode", "a\\\nb\\zc", "abzc");
    T("css_decode", "\\0000410", "A0"); /* six hex digits at most */
}

static void test_cmdline(void)
{
    T("cmdline_modsec", "C^a\\t  \"/etc/passwd\"", "cat/etc/passwd");
    T("cmdline_modsec", "ls,-la;id", "ls -la id");
    T("cmdline_modsec", "echo\t\t(x)", "echo(x)");
    T("cmdline_modsec", "UPPER", "upper");
}

static void test_whitespace_and_nulls(void)
{
    T("compress_ws", "a \t\n b\0\0c", "a b c");
    T("compress_ws", "a b", "a b");
    T("remove_ws", " a \tb\0", "ab");
    T("remove_nulls", "a\0b\0", "ab");
    T("trim", "\0 \ta b \n", "a b");
    T("lowercase", "MiXeD\xc3\x89", "mixed\xc3\x89");
}

static void test_comments(void)
{
    T("replace_comments", "select/* x */1/**/from", "select 1 from");
    T("replace_comments", "a/* open", "a ");
    T("replace_comments", "a/*/b", "a ");
    T("replace_comments", "a/ *b", "a/ *b");
}

static void test_paths(void)
{
    T("normalize_path_posix", "/var/www/../../../etc/./passwd", "/etc/passwd");
    T("normalize_path_posix", "a//b/", "a/b/");
    T("normalize_path_posix", "../x/../..", "../..");
    T("normalize_path_posix", "a\\..\\b", "a\\..\\b"); /* backslashes are not separators */
    T("normalize_path", "c:\\a\\..\\b", "c:/b");
    T("normalize_path", "\\a\\b", "/a/b"); /* converted even when nothing else changes */
    T("normalize_path", "/./", "/");
}

static void test_encodings(void)
{
    T("utf8_to_unicode", "caf\xc3\xa9 \xe2\x82\xac", "caf%u00e9 %u20ac");
    T("utf8_to_unicode", "\xf0\x9f\x98\x80", "%u1f600");
    T("utf8_to_unicode", "\xc3\xa9\xa9 \x80",
      "\xc3\xa9\xa9 \x80"); /* runs of the wrong length stay */
    T("base64_decode", "aGVsbG8gd29ybGQ=", "hello world");
    T("base64_decode", "aGVsbG8_", "hello?");
    T("base64_decode", "short", "short");
    T("base64_decode", "not base64!", "not base64!");
    T("length", "abcde", "5");
    T("length", "", "0");
    T("hex_encode", "a\x00\xff", "6100ff");
    T("sha1", "abc",
      "\xa9\x99\x3e\x36\x47\x06\x81\x6a\xba\x3e\x25\x71\x78\x50\xc2\x6c\x9c\xd0\xd8\x9d");
    T("uppercase", "abC1", "ABC1");
    T("replace_nulls", "a\0b", "a b");
    T("trim_left", " a ", "a ");
    T("trim_right", " a\0", " a");
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_names),       LP_TEST_ENTRY(test_urldecode),
    LP_TEST_ENTRY(test_html_decode), LP_TEST_ENTRY(test_js_css),
    LP_TEST_ENTRY(test_cmdline),     LP_TEST_ENTRY(test_whitespace_and_nulls),
    LP_TEST_ENTRY(test_comments),    LP_TEST_ENTRY(test_paths),
    LP_TEST_ENTRY(test_encodings),
};

LP_TEST_MAIN(tests)
