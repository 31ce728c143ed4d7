/* RFC 9110 token characters (§5.6.2), for every parser of HTTP fields: the HTTP/1 parser's
 * checks (http1.h) and those that do not link it (realip.c, also in the native Lua module);
 * and the hex digit of a percent-escape (RFC 3986 §2.1), for every percent-decoder. */
#ifndef LP_TCHAR_H
#define LP_TCHAR_H

#include <stdint.h>

/* ALPHA, DIGIT and !#$%&'*+-.^_`|~, one bit per byte value. A table, not a search: every
 * header name of every request (and every name Lua sets) is checked. */
static const uint64_t lp_tchar_bits[4] = {0x3ff6cfa00000000ULL, 0x57ffffffc7fffffeULL, 0x0ULL,
                                          0x0ULL};

/* Whether c is a tchar. Inline: the cache's hit path checks every byte of its field names
 * (lp__resp_add_wire). */
static inline int lp_is_tchar(unsigned char c)
{
    return (int)((lp_tchar_bits[c >> 6] >> (c & 63)) & 1);
}

/* The value of hex digit c (either case), or -1. */
static inline int lp_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

#endif
