/* Byte classes of the waf detectors in C (waf_sqli.c, waf_xss.c, waf_validate.c,
 * waf_words.c): Lua's %s, %d, %a, %w, %x in the C locale, as the Lua originals' patterns read
 * them, and ASCII case folding. Private to those files: short names, no prefix. */
#ifndef LP_WAF_CTYPE_H
#define LP_WAF_CTYPE_H

#include <stddef.h>
#include <string.h>

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static inline unsigned char low(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

static inline int is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static inline int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static inline int is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static inline int is_alnum(unsigned char c)
{
    return is_alpha(c) || is_digit(c);
}

static inline int is_xdigit(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* v[0..n) is word (lower case), ASCII case-insensitively */
static inline int eq_ci(const unsigned char *v, size_t n, const char *word)
{
    size_t m = strlen(word);
    if (n != m)
        return 0;
    for (size_t k = 0; k < m; k++)
        if (low(v[k]) != (unsigned char)word[k])
            return 0;
    return 1;
}

#endif
