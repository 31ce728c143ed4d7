/* The default cache key (the plugin's default_key: method, scheme, authority with its port,
 * target), built in place: inline in the engine's own request path (cache_native.c) and in
 * lp_ffi_cache_key (cache_ffi.c); and the short copies it and the stored miss's head make. */
#ifndef LP_CACHE_KEY_H
#define LP_CACHE_KEY_H

#include <stdint.h>
#include <string.h>

#include "common.h"
#include "conn.h"
#include "proxy-t.h"

/* n bytes of a field's name or value at p: most are short, and a call to memcpy costs more
 * than their copy (overlapping words from both ends, or bytes). The end. */
static inline char *put_short(char *p, const char *s, size_t n)
{
    if (n > 32) {
        memcpy(p, s, n);
    } else if (n > 16) {
        uint64_t a, b, c, d;
        memcpy(&a, s, 8);
        memcpy(&b, s + 8, 8);
        memcpy(&c, s + n - 16, 8);
        memcpy(&d, s + n - 8, 8);
        memcpy(p, &a, 8);
        memcpy(p + 8, &b, 8);
        memcpy(p + n - 16, &c, 8);
        memcpy(p + n - 8, &d, 8);
    } else if (n >= 8) {
        uint64_t a, b;
        memcpy(&a, s, 8);
        memcpy(&b, s + n - 8, 8);
        memcpy(p, &a, 8);
        memcpy(p + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        memcpy(p, &a, 4);
        memcpy(p + n - 4, &b, 4);
    } else if (n) {
        /* 1 to 3 bytes: the first, middle and last (the same byte twice when fewer) */
        char a = s[0], b = s[n / 2], c = s[n - 1];
        p[0] = a;
        p[n / 2] = b;
        p[n - 1] = c;
    }
    return p + n;
}

/* The key's authority: Host as sent (or the absolute-form target's), with its port, which
 * is part of the target URI (RFC 9111 2, RFC 9110 4.2.3): hosts on two ports are two
 * origins, and a key without the port let `Host: a:9999`'s answer be served to `Host: a`.
 * The scheme's default port and an empty one are dropped, as policy.lua's norm_authority
 * does for invalidation. */
static inline lp_str_t key_authority(const lp_req_t *r, int tls)
{
    lp_str_t h = r->h1.host.base ? r->h1.host : LP_STR("");
    /* Only an empty port or the default one is dropped: the host's end is compared with ":",
     * ":80" or ":443" (no scan of a port's digits, which a key of any other port keeps). */
    size_t n = h.len, plen = 0;
    const char *e = h.base + n;
    if (n >= 1 && e[-1] == ':')
        plen = 0;
    else if (!tls && n >= 3 && e[-3] == ':' && e[-2] == '8' && e[-1] == '0')
        plen = 2;
    else if (tls && n >= 4 && e[-4] == ':' && e[-3] == '4' && e[-2] == '4' && e[-1] == '3')
        plen = 3;
    else
        return h;
    n -= plen;                          /* h.base[n - 1] is the ':' */
    if (n == 1 || h.base[n - 2] != ':') /* not inside [v6] */
        h.len = n - 1;
    return h;
}

/* w with its ASCII capitals lowered. Per byte b <= 0x7f: b is in 'A'..'Z' when b + (0x80 -
 * 'A') reaches 0x80 and b + (0x80 - 'Z' - 1) does not (no carry leaves a byte); bytes >= 0x80
 * are masked out. A capital's 0x80 mark, shifted to 0x20, is the bit that lowers it. */
static inline uint64_t word_lower(uint64_t w)
{
    const uint64_t lo7 = 0x7f7f7f7f7f7f7f7full, hi = 0x8080808080808080ull;
    uint64_t t = w & lo7;
    return w | (((t + 0x3f3f3f3f3f3f3f3full) & ~(t + 0x2525252525252525ull) & ~w & hi) >> 2);
}

/* n bytes of s copied lowered to p (req:host()'s lower()), eight at a time: the last bytes of
 * a host of 8 or more are the word ending with it (overlapping the one before, written again
 * with the same bytes): no byte loop. The end. */
static inline char *put_lower(char *p, const char *s, size_t n)
{
    if (n < 8) {
        for (size_t i = 0; i < n; i++)
            p[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]);
        return p + n;
    }
    uint64_t w;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        memcpy(&w, s + i, 8);
        w = word_lower(w);
        memcpy(p + i, &w, 8);
    }
    memcpy(&w, s + n - 8, 8);
    w = word_lower(w);
    memcpy(p + n - 8, &w, 8);
    return p + n;
}

/* The default key's bytes. */
static inline size_t lp__cache_key_len(const lp_req_t *r)
{
    int tls = lp_req_over_tls(r);
    return (tls ? sizeof "GET https://" : sizeof "GET http://") - 1 + key_authority(r, tls).len +
           r->h1.path.len;
}

/* The default key written at p (lp__cache_key_len bytes). The request's scheme and target as
 * lp_ffi_req_get gives them (LP_FFI_SCHEME, _URI), read without its dispatch. */
static inline void lp__cache_key_put(const lp_req_t *r, char *p)
{
    int tls = lp_req_over_tls(r);
    lp_str_t start = tls ? LP_STR("GET https://") : LP_STR("GET http://");
    lp_str_t host = key_authority(r, tls);
    p = put_short(p, start.base, start.len);
    p = put_lower(p, host.base, host.len);
    put_short(p, r->h1.path.base, r->h1.path.len);
}

#endif
