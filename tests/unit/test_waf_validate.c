/* engine/waf_validate.c: @validateByteRange's bitmap, @validateUrlEncoding and
 * @validateUtf8Encoding, each at the value's edges (first and last byte, empty value,
 * truncated escapes and sequences). */
#include <string.h>

#include "lp_test.h"
struct lp_req_s;
#include "lua_api.h"

#define L(s) s, sizeof s - 1

static void test_byte_range(void)
{
    /* CRS 920270's ranges at PL1: 1-255 (NUL outside) */
    unsigned char bad[32];
    memset(bad, 0, sizeof bad);
    bad[0] = 1;
    CHECK_EQ_INT(lp_ffi_waf_byte_range(bad, L("abc")), 0);
    CHECK_EQ_INT(lp_ffi_waf_byte_range(bad, L("\0abc")), 1);
    CHECK_EQ_INT(lp_ffi_waf_byte_range(bad, L("ab\0")), 3);
    CHECK_EQ_INT(lp_ffi_waf_byte_range(bad, L("")), 0);
    /* 255 outside too */
    bad[31] = 0x80;
    CHECK_EQ_INT(lp_ffi_waf_byte_range(bad, L("ab\376\377")), 4);
    /* every byte allowed: never matches */
    memset(bad, 0, sizeof bad);
    CHECK_EQ_INT(lp_ffi_waf_byte_range(bad, L("\0\377")), 0);
}

static void test_urlenc(void)
{
    CHECK_EQ_INT(lp_ffi_waf_urlenc_invalid(L("a%20b%7e")), 0);
    CHECK_EQ_INT(lp_ffi_waf_urlenc_invalid(L("")), 0);
    CHECK_EQ_INT(lp_ffi_waf_urlenc_invalid(L("a%2")), 2);
    CHECK_EQ_INT(lp_ffi_waf_urlenc_invalid(L("%")), 1);
    CHECK_EQ_INT(lp_ffi_waf_urlenc_invalid(L("%41%g1")), 4);
    /* the escape's digits are not read as another escape */
    CHECK_EQ_INT(lp_ffi_waf_urlenc_invalid(L("%25%")), 4);
}

static void test_utf8(void)
{
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("plain")), 0);
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("")), 0);
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("caf\303\251 \342\202\254 \360\237\230\200")), 0);
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("a\300\200")), 2); /* overlong lead */
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("ab\303")), 3);    /* truncated at the end */
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("\342\202x")), 1); /* bad continuation */
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("\200")), 1);      /* lone continuation */
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("\365\200\200\200")), 1);
    /* RFC 3629's second bytes: overlong 3- and 4-byte forms, surrogates, past U+10FFFF */
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("a\340\200\257")), 2);    /* E0 80 AF: '/' */
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("\355\240\200")), 1);     /* ED A0 80: D800 */
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("\360\200\200\257")), 1); /* F0 80: overlong */
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("\364\220\200\200")), 1); /* F4 90: 110000 */
    /* the ranges' edges that are valid: U+0800, U+D7FF, U+E000, U+10000, U+10FFFF */
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("\340\240\200\355\237\277\356\200\200")), 0);
    CHECK_EQ_INT(lp_ffi_waf_utf8_invalid(L("\360\220\200\200\364\217\277\277")), 0);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_byte_range),
    LP_TEST_ENTRY(test_urlenc),
    LP_TEST_ENTRY(test_utf8),
};

LP_TEST_MAIN(tests)
