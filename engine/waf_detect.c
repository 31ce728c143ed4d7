/* The waf plugin's @detectSQLi, its first question in C (lua/luaproxy/waf/detect.lua's
 * written_may): may the value, as written, start SQL? Asked of every argument, header and
 * cookie after each transformation step; the Lua twin lowered a copy of the value (up to
 * 4 KiB) for three look-ups. Same answers (spec/luaproxy/waf_detect_spec.lua). */
#include <stddef.h>
#include <string.h>

struct lp_req_s; /* lua_api.h names it; nothing here uses it */
#include "lua_api.h"

static unsigned char low(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* needle (lower case) in v, ASCII case-insensitively */
static int has_ci(const unsigned char *v, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++) {
        size_t k = 0;
        while (k < m && low(v[i + k]) == (unsigned char)needle[k])
            k++;
        if (k == m)
            return 1;
    }
    return 0;
}

static int word_byte(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           c == '$' || c >= 128;
}

int lp_ffi_waf_sql_written_may(const char *s, size_t n)
{
    const unsigned char *v = (const unsigned char *)s;
    if (memchr(v, '(', n) || memchr(v, ';', n) || memchr(v, '@', n))
        return 1;
    if (has_ci(v, n, "union") || has_ci(v, n, "select") || has_ci(v, n, "waitfor"))
        return 1;
    size_t i = 0;
    while (i < n && (v[i] <= 32 || v[i] == 0xA0))
        i++;
    if (i == n)
        return 0;
    unsigned char c = v[i];
    /* a digit, . ' " / *: a number, a literal or a comment marker may come first */
    if ((c >= '0' && c <= '9') || c == '.' || c == '\'' || c == '"' || c == '/' || c == '*')
        return 1;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c >= 128) {
        /* a word: a number only when it is NULL, TRUE or FALSE */
        size_t e = i;
        while (e < n && word_byte(v[e]))
            e++;
        static const char *const nstart[] = {"null", "true", "false"};
        for (size_t k = 0; k < 3; k++) {
            size_t m = strlen(nstart[k]);
            if (e - i != m)
                continue;
            size_t j = 0;
            while (j < m && low(v[i + j]) == (unsigned char)nstart[k][j])
                j++;
            if (j == m)
                return 1;
        }
    }
    return 0;
}
