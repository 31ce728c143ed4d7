/* The waf plugin's @validateByteRange, @validateUrlEncoding and @validateUtf8Encoding
 * (lua/luaproxy/waf/engine.lua's sec_test calls them through the FFI): one pass over the
 * value in C each, no Lua pattern or loop per byte. */
#include <stddef.h>

struct lp_req_s; /* lua_api.h names it; nothing here uses it */
#include "lua_api.h"
#include "waf_ctype.h"

size_t lp_ffi_waf_byte_range(const unsigned char *bad, const char *s, size_t n)
{
    const unsigned char *v = (const unsigned char *)s;
    for (size_t i = 0; i < n; i++)
        if (bad[v[i] >> 3] & (1u << (v[i] & 7)))
            return i + 1;
    return 0;
}

size_t lp_ffi_waf_urlenc_invalid(const char *s, size_t n)
{
    const unsigned char *v = (const unsigned char *)s;
    for (size_t i = 0; i < n; i++) {
        if (v[i] != '%')
            continue;
        if (i + 2 >= n || !is_xdigit(v[i + 1]) || !is_xdigit(v[i + 2]))
            return i + 1;
        i += 2;
    }
    return 0;
}

size_t lp_ffi_waf_utf8_invalid(const char *s, size_t n)
{
    const unsigned char *v = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned char b = v[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        /* the sequence's length by its lead byte (no overlong 2-byte leads, nothing past
         * U+10FFFF's lead); every continuation byte 10xxxxxx */
        size_t len = b >= 0xC2 && b <= 0xDF   ? 2
                     : b >= 0xE0 && b <= 0xEF ? 3
                     : b >= 0xF0 && b <= 0xF4 ? 4
                                              : 0;
        if (len == 0)
            return i + 1;
        /* RFC 3629's second-byte ranges: no overlong 3- or 4-byte forms (E0, F0), no
         * surrogates (ED), nothing past U+10FFFF (F4) */
        unsigned char lo = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80;
        unsigned char hi = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
        if (i + 1 < n && (v[i + 1] < lo || v[i + 1] > hi))
            return i + 1;
        for (size_t k = 1; k < len; k++)
            if (i + k >= n || v[i + k] < 0x80 || v[i + k] > 0xBF)
                return i + 1;
        i += len;
    }
    return 0;
}
