/* engine/waf_words.c: a word set's answers (any ASCII case, exact length, values of a word
 * listed twice or'ed), and words it must not match (prefixes, longer words, the empty word,
 * bytes that lower-case to nothing in ASCII). */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* Whether building a set over words (n of them) aborts: in a child, so the abort is seen. */
static int build_aborts(const lp_waf_word_t *words, size_t n)
{
    pid_t pid = fork();
    if (pid == 0) {
        static lp_waf_words_t ws;
        ws.words = words;
        ws.n = n;
        lp__waf_words_build(&ws);
        _exit(0);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
}

/* A word find could never match is a defect of the list: the build says so at once. */
static void test_bad_lists(void)
{
    static const lp_waf_word_t capital[] = {{"select", 1}, {"Style", 2}};
    static const lp_waf_word_t longw[] = {{"abcdefghijklmnopqrstuvwxyz012345", 1}};
    static const lp_waf_word_t empty[] = {{"", 1}};
    static const lp_waf_word_t ok31[] = {{"abcdefghijklmnopqrstuvwxyz01234", 1}};
    static lp_waf_word_t many[LP_WAF_WORDS_SLOTS / 2];
    static char names[LP_WAF_WORDS_SLOTS / 2][8];
    for (size_t i = 0; i < LP_WAF_WORDS_SLOTS / 2; i++) {
        snprintf(names[i], sizeof names[i], "w%zu", i);
        many[i].w = names[i];
        many[i].val = 1;
    }
    CHECK_EQ_INT(build_aborts(capital, 2), 1);
    CHECK_EQ_INT(build_aborts(longw, 1), 1);
    CHECK_EQ_INT(build_aborts(empty, 1), 1);
    CHECK_EQ_INT(build_aborts(many, LP_WAF_WORDS_SLOTS / 2), 1);
    CHECK_EQ_INT(build_aborts(ok31, 1), 0);
    static lp_waf_words_t ws = LP_WAF_WORDS(ok31);
    lp__waf_words_build(&ws);
    CHECK_EQ_INT(find(&ws, "ABCDEFGHIJKLMNOPQRSTUVWXYZ01234"), 1);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_words),
    LP_TEST_ENTRY(test_bad_lists),
};

LP_TEST_MAIN(tests)
