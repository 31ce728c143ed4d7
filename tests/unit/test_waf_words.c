/* engine/waf_words.c: a word set's answers (any ASCII case, exact length, values of a word
 * listed twice or'ed), and words it must not match (prefixes, longer words, the empty word,
 * bytes that lower-case to nothing in ASCII). */
#include <string.h>

#include "lp_test.h"
#include "waf_words.h"

static const lp_waf_word_t list[] = {
    {"select", 1}, {"style", 2}, {"style", 4}, {"by", 8}, {"xlink:href", 16},
};

static unsigned find(lp_waf_words_t *ws, const char *w)
{
    return lp__waf_words_find(ws, (const unsigned char *)w, strlen(w));
}

static void test_words(void)
{
    static lp_waf_words_t ws = LP_WAF_WORDS(list);
    lp__waf_words_build(&ws);
    CHECK_EQ_INT(find(&ws, "select"), 1);
    CHECK_EQ_INT(find(&ws, "SeLeCt"), 1);
    CHECK_EQ_INT(find(&ws, "style"), 6);
    CHECK_EQ_INT(find(&ws, "BY"), 8);
    CHECK_EQ_INT(find(&ws, "XLINK:HREF"), 16);
    CHECK_EQ_INT(find(&ws, "selec"), 0);
    CHECK_EQ_INT(find(&ws, "selects"), 0);
    CHECK_EQ_INT(find(&ws, ""), 0);
    CHECK_EQ_INT(find(&ws, "b"), 0);
    CHECK_EQ_INT(find(&ws, "sel\xc3\xa9"), 0);
    CHECK_EQ_INT(find(&ws, "averyveryverylongwordthatisnotlisted"), 0);
    /* a NUL inside the value's word is a byte like any other */
    CHECK_EQ_INT(lp__waf_words_find(&ws, (const unsigned char *)"by\0", 3), 0);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_words),
};

LP_TEST_MAIN(tests)
