/* Word sets for the waf plugin's detectors in C (engine/waf_sqli.c, waf_xss.c): is this word
 * of the value (any case, ASCII) one of a static list, and what does the list say of it? A
 * hash table built on first use, so that a value's every word costs a few compares, not a
 * walk of the list. */
#ifndef LP_WAF_WORDS_H
#define LP_WAF_WORDS_H

#include <stddef.h>

typedef struct {
    const char *w; /* borrowed: a static lower-case word */
    unsigned val;  /* what the list says of it (not 0); a word listed twice: the values or'ed */
} lp_waf_word_t;

#define LP_WAF_WORDS_SLOTS 512 /* a power of two, over twice the longest list */

typedef struct {
    const lp_waf_word_t *words; /* borrowed: the static list */
    size_t n;                   /* its length */
    unsigned first[32];         /* bit c & 31 of first[k]: a listed word of k bytes (k < 32)
                                 * begins with c (lower case); a cheap no for most words */
    unsigned short slot[LP_WAF_WORDS_SLOTS]; /* index + 1 into words; 0: empty */
    unsigned val[LP_WAF_WORDS_SLOTS];        /* the slot's word's value, or'ed */
} lp_waf_words_t;

/* A set over a static list (a static lp_waf_word_t array), of fewer than half the slots
 * (asserted at compile time: a fuller table would probe long, a full one forever). */
#define LP_WAF_WORDS(list)                                                                         \
    {                                                                                              \
        .words = (list), .n = LP_WAF_WORDS_COUNT(list)                                             \
    }
#define LP_WAF_WORDS_COUNT(list)                                                                   \
    (sizeof(list) / sizeof((list)[0]) +                                                            \
     0 * sizeof(struct {                                                                           \
         _Static_assert(sizeof(list) / sizeof((list)[0]) < LP_WAF_WORDS_SLOTS / 2,                 \
                        "a word list of half the slots or more");                                  \
         int lp_unused;                                                                            \
     }))

/* Builds ws's table: once, before any lp__waf_words_find (the caller's pthread_once). */
void lp__waf_words_build(lp_waf_words_t *ws);

/* The value of word w[0..n) in ws (built), or 0. */
unsigned lp__waf_words_find(const lp_waf_words_t *ws, const unsigned char *w, size_t n);

#endif
