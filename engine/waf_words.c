/* Word sets for the waf detectors (waf_words.h). */
#include "waf_words.h"

static unsigned char low(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* FNV-1a over the lower-cased bytes */
static unsigned hash(const unsigned char *w, size_t n)
{
    unsigned h = 2166136261u;
    for (size_t k = 0; k < n; k++)
        h = (h ^ low(w[k])) * 16777619u;
    return h;
}

void lp__waf_words_build(lp_waf_words_t *ws)
{
    for (size_t i = 0; i < ws->n; i++) {
        const unsigned char *w = (const unsigned char *)ws->words[i].w;
        size_t n = 0;
        while (w[n])
            n++;
        if (n > 0 && n < 32)
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
