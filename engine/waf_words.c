/* Word sets for the waf detectors (waf_words.h). */
#include <stdio.h>
#include <stdlib.h>

#include "waf_ctype.h"
#include "waf_words.h"

/* FNV-1a over the lower-cased bytes */
static unsigned hash(const unsigned char *w, size_t n)
{
    unsigned h = 2166136261u;
    for (size_t k = 0; k < n; k++)
        h = (h ^ low(w[k])) * 16777619u;
    return h;
}

/* A list find could never answer right: a defect in the program, not in a request; a WAF
 * that silently misses words is worse than one that does not start. */
static void words_bad(const unsigned char *w, const char *why)
{
    fprintf(stderr, "waf word list: \"%s\" %s\n", (const char *)w, why);
    abort();
}

void lp__waf_words_build(lp_waf_words_t *ws)
{
    /* open addressing probes forever in a full table; LP_WAF_WORDS asserts the lists' sizes */
    if (ws->n >= LP_WAF_WORDS_SLOTS / 2)
        words_bad((const unsigned char *)"", "(the list) has too many words");
    for (size_t i = 0; i < ws->n; i++) {
        const unsigned char *w = (const unsigned char *)ws->words[i].w;
        size_t n = 0;
        while (w[n]) {
            /* find lower-cases the value's bytes only: a listed capital never matches */
            if (w[n] >= 'A' && w[n] <= 'Z')
                words_bad(w, "has a capital");
            n++;
        }
        /* find answers 0 for lengths outside 1..31 at once */
        if (n == 0 || n >= 32)
            words_bad(w, "is empty or 32 bytes or longer");
        ws->first[n] |= 1u << (w[0] & 31);
        unsigned h = hash(w, n) & (LP_WAF_WORDS_SLOTS - 1);
        for (;;) {
            if (ws->slot[h] == 0) {
                ws->slot[h] = (unsigned short)(i + 1);
                ws->val[h] = ws->words[i].val;
                break;
            }
            const char *o = ws->words[ws->slot[h] - 1].w;
            size_t k = 0;
            while (k < n && (unsigned char)o[k] == w[k])
                k++;
            if (k == n && o[n] == '\0') { /* listed twice: one slot, both values */
                ws->val[h] |= ws->words[i].val;
                break;
            }
            h = (h + 1) & (LP_WAF_WORDS_SLOTS - 1);
        }
    }
}

unsigned lp__waf_words_find(const lp_waf_words_t *ws, const unsigned char *w, size_t n)
{
    if (n == 0 || n >= 32 || !(ws->first[n] & (1u << (low(w[0]) & 31))))
        return 0;
    unsigned h = hash(w, n) & (LP_WAF_WORDS_SLOTS - 1);
    while (ws->slot[h]) {
        const char *o = ws->words[ws->slot[h] - 1].w;
        size_t k = 0;
        while (k < n && (unsigned char)o[k] == low(w[k]))
            k++;
        if (k == n && o[n] == '\0')
            return ws->val[h];
        h = (h + 1) & (LP_WAF_WORDS_SLOTS - 1);
    }
    return 0;
}
