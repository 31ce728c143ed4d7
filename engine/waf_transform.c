/* The waf plugin's transformations in C: see waf_transform.h. Several Lua twins are a series
 * of gsub passes, each over the previous pass's output (so "%u0025" + "41" decodes twice, to
 * "A"); they are written here as the same passes, in place over out, because every pass
 * writes at most what it reads. Character classes are Lua's in the C locale: %s is
 * " \t\n\v\f\r", %z NUL, %x %d %a %w ASCII only. */
#include "waf_transform.h"

#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef unsigned char uc;

static int is_space(uc c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}
static int is_ws0(uc c)
{
    return c == 0 || is_space(c);
}
static int is_digit(uc c)
{
    return c >= '0' && c <= '9';
}
static int is_alpha(uc c)
{
    return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}
static int is_hex(uc c)
{
    return is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}
static unsigned hexval(uc c)
{
    return is_digit(c) ? (unsigned)(c - '0') : (unsigned)((c | 0x20) - 'a' + 10);
}
static uc lower(uc c)
{
    return c >= 'A' && c <= 'Z' ? (uc)(c + 32) : c;
}

static const char *find_byte(const char *s, size_t n, int c)
{
    return memchr(s, c, n);
}

/* Code point to UTF-8 (over 0x10FFFF and surrogates: U+FFFD); returns bytes written. */
static size_t put_utf8(uc *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (uc)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uc)(0xC0 | (cp >> 6));
        o[1] = (uc)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        cp = 0xFFFD;
    if (cp < 0x10000) {
        o[0] = (uc)(0xE0 | (cp >> 12));
        o[1] = (uc)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uc)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uc)(0xF0 | (cp >> 18));
    o[1] = (uc)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uc)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uc)(0x80 | (cp & 0x3F));
    return 4;
}

static uint32_t hexn(const uc *p, size_t k)
{
    uint32_t v = 0;
    for (size_t i = 0; i < k; i++)
        v = (v << 4) | hexval(p[i]);
    return v;
}

/* IIS's and ModSecurity's full-width forms of ASCII (U+FF01..U+FF5E) decode to ASCII. */
static int fullwidth(uint32_t cp)
{
    return cp >= 0xFF01 && cp <= 0xFF5E;
}

static long urldecode(const uc *in, size_t n, uc *o)
{
    if (!find_byte((const char *)in, n, '%') && !find_byte((const char *)in, n, '+'))
        return -1;
    int pct = 0;
    for (size_t i = 0; i < n; i++) {
        o[i] = in[i] == '+' ? ' ' : in[i];
        pct |= in[i] == '%';
    }
    if (!pct)
        return (long)n;
    size_t w = 0, r = 0;
    while (r < n) { /* %uXXXX */
        if (o[r] == '%' && r + 5 < n && (o[r + 1] | 0x20) == 'u' && is_hex(o[r + 2]) &&
            is_hex(o[r + 3]) && is_hex(o[r + 4]) && is_hex(o[r + 5])) {
            uint32_t cp = hexn(o + r + 2, 4);
            r += 6;
            if (fullwidth(cp))
                o[w++] = (uc)(cp - 0xFEE0);
            else
                w += put_utf8(o + w, cp);
        } else {
            o[w++] = o[r++];
        }
    }
    n = w;
    w = r = 0;
    while (r < n) { /* %XX */
        if (o[r] == '%' && r + 2 < n && is_hex(o[r + 1]) && is_hex(o[r + 2])) {
            o[w++] = (uc)hexn(o + r + 1, 2);
            r += 3;
        } else {
            o[w++] = o[r++];
        }
    }
    return (long)w;
}

static const struct {
    const char *name;
    char value;
} ENTITIES[] = {
    {"lt", '<'},     {"gt", '>'},    {"amp", '&'},    {"quot", '"'},     {"apos", '\''},
    {"nbsp", ' '},   {"colon", ':'}, {"tab", '\t'},   {"newline", '\n'}, {"lpar", '('},
    {"rpar", ')'},   {"sol", '/'},   {"bsol", '\\'},  {"semi", ';'},     {"comma", ','},
    {"period", '.'}, {"excl", '!'},  {"num", '#'},    {"equals", '='},   {"grave", '`'},
    {"plus", '+'},   {"lsqb", '['},  {"rsqb", ']'},   {"lcub", '{'},     {"rcub", '}'},
    {"vert", '|'},   {"ast", '*'},   {"percnt", '%'},
};

static int entity(const uc *name, size_t len)
{
    if (len > 7)
        return -1;
    char low[8];
    for (size_t i = 0; i < len; i++)
        low[i] = (char)lower(name[i]);
    for (size_t i = 0; i < sizeof ENTITIES / sizeof ENTITIES[0]; i++)
        if (strlen(ENTITIES[i].name) == len && memcmp(ENTITIES[i].name, low, len) == 0)
            return (uc)ENTITIES[i].value;
    return -1;
}

static long html_decode(const uc *in, size_t n, uc *o)
{
    if (!find_byte((const char *)in, n, '&'))
        return -1;
    memcpy(o, in, n);
    size_t w = 0, r = 0;
    while (r < n) { /* &#xHH;? */
        if (o[r] == '&' && r + 3 < n && o[r + 1] == '#' && (o[r + 2] | 0x20) == 'x' &&
            is_hex(o[r + 3])) {
            size_t d = r + 3, e = d;
            while (e < n && is_hex(o[e]))
                e++;
            uint32_t cp = e - d > 8 ? 0xFFFD : hexn(o + d, e - d);
            r = e < n && o[e] == ';' ? e + 1 : e;
            w += put_utf8(o + w, cp > 0x10FFFF ? 0xFFFD : cp);
        } else {
            o[w++] = o[r++];
        }
    }
    n = w;
    w = r = 0;
    while (r < n) { /* &#DD;? */
        if (o[r] == '&' && r + 2 < n && o[r + 1] == '#' && is_digit(o[r + 2])) {
            size_t e = r + 2;
            uint32_t cp = 0;
            while (e < n && is_digit(o[e])) {
                if (cp <= 0x10FFFF)
                    cp = cp * 10 + (uint32_t)(o[e] - '0');
                e++;
            }
            r = e < n && o[e] == ';' ? e + 1 : e;
            w += put_utf8(o + w, cp > 0x10FFFF ? 0xFFFD : cp);
        } else {
            o[w++] = o[r++];
        }
    }
    n = w;
    w = r = 0;
    while (r < n) { /* &name;? (unknown names stay) */
        if (o[r] == '&' && r + 1 < n && is_alpha(o[r + 1])) {
            size_t e = r + 1;
            while (e < n && is_alpha(o[e]))
                e++;
            int v = entity(o + r + 1, e - r - 1);
            size_t end = e < n && o[e] == ';' ? e + 1 : e;
            if (v >= 0) {
                o[w++] = (uc)v;
            } else {
                memmove(o + w, o + r, end - r);
                w += end - r;
            }
            r = end;
        } else {
            o[w++] = o[r++];
        }
    }
    return (long)w;
}

/* One in-place pass of a backslash decoder over o[0..n): where esc finds an escape at a
 * backslash (s, left bytes from it) it gives the byte in *b and the escape's length, else 0
 * and the byte is copied. Inlined with esc known, so it costs what the loop written out did. */
typedef size_t (*escape_fn)(const uc *s, size_t left, uc *b);

static inline size_t backslash_pass(uc *o, size_t n, escape_fn esc)
{
    size_t w = 0, r = 0;
    while (r < n) {
        uc b;
        size_t k = o[r] == '\\' ? esc(o + r, n - r, &b) : 0;
        if (k > 0) {
            o[w++] = b;
            r += k;
        } else {
            o[w++] = o[r++];
        }
    }
    return w;
}

/* A code point as one byte: the low byte, or a full-width form's ASCII. */
static uc low_byte(uint32_t cp)
{
    return (uc)(fullwidth(cp) ? cp - 0xFEE0 : cp & 0xFF);
}

static size_t js_unicode(const uc *s, size_t left, uc *b) /* \uHHHH */
{
    if (left < 6 || (s[1] | 0x20) != 'u' || !is_hex(s[2]) || !is_hex(s[3]) || !is_hex(s[4]) ||
        !is_hex(s[5]))
        return 0;
    *b = low_byte(hexn(s + 2, 4));
    return 6;
}

static size_t js_hex(const uc *s, size_t left, uc *b) /* \xHH */
{
    if (left < 4 || (s[1] | 0x20) != 'x' || !is_hex(s[2]) || !is_hex(s[3]))
        return 0;
    *b = (uc)hexn(s + 2, 2);
    return 4;
}

static size_t js_octal(const uc *s, size_t left, uc *b) /* \OOO (one to three octal digits) */
{
    size_t e = 1;
    unsigned v = 0;
    while (e < left && e < 4 && s[e] >= '0' && s[e] <= '7')
        v = v * 8 + (unsigned)(s[e++] - '0');
    *b = (uc)(v & 0xFF);
    return e > 1 ? e : 0;
}

static size_t js_char(const uc *s, size_t left, uc *b) /* \c: its control character, or c */
{
    if (left < 2)
        return 0;
    switch (s[1]) {
    case 'a':
        *b = '\a';
        break;
    case 'b':
        *b = '\b';
        break;
    case 'f':
        *b = '\f';
        break;
    case 'n':
        *b = '\n';
        break;
    case 'r':
        *b = '\r';
        break;
    case 't':
        *b = '\t';
        break;
    case 'v':
        *b = '\v';
        break;
    default:
        *b = s[1];
        break;
    }
    return 2;
}

static long js_decode(const uc *in, size_t n, uc *o)
{
    if (!find_byte((const char *)in, n, '\\'))
        return -1;
    memcpy(o, in, n);
    n = backslash_pass(o, n, js_unicode);
    n = backslash_pass(o, n, js_hex);
    n = backslash_pass(o, n, js_octal);
    return (long)backslash_pass(o, n, js_char);
}

static size_t css_hex(const uc *s, size_t left, uc *b) /* \H{1,6} and one optional space */
{
    size_t e = 1;
    while (e < left && e < 7 && is_hex(s[e]))
        e++;
    if (e == 1)
        return 0;
    *b = low_byte(hexn(s + 1, e - 1));
    return e < left && s[e] == ' ' ? e + 1 : e;
}

static size_t css_char(const uc *s, size_t left, uc *b) /* \c: c */
{
    if (left < 2)
        return 0;
    *b = s[1];
    return 2;
}

static long css_decode(const uc *in, size_t n, uc *o)
{
    if (!find_byte((const char *)in, n, '\\'))
        return -1;
    memcpy(o, in, n);
    n = backslash_pass(o, n, css_hex);
    size_t w = 0, r = 0;
    while (r < n) { /* a backslash before a newline goes with it */
        if (o[r] == '\\' && r + 1 < n && o[r + 1] == '\n')
            r += 2;
        else
            o[w++] = o[r++];
    }
    return (long)backslash_pass(o, w, css_char);
}

static long cmdline_modsec(const uc *in, size_t n, uc *o)
{
    size_t w = 0;
    int any = 0;
    for (size_t i = 0; i < n; i++) {
        uc c = in[i];
        if (c == '\\' || c == '"' || c == '\'' || c == '^' || c == ',' || c == ';' || is_space(c)) {
            any = 1;
            break;
        }
    }
    if (!any)
        return lp_waf_transform(LP_WAF_T_LOWERCASE, (const char *)in, n, (char *)o);
    for (size_t i = 0; i < n; i++) { /* drop \ " ' ^; , and ; become spaces */
        uc c = in[i];
        if (c == '\\' || c == '"' || c == '\'' || c == '^')
            continue;
        o[w++] = c == ',' || c == ';' ? ' ' : c;
    }
    n = w;
    w = 0;
    for (size_t r = 0; r < n;) { /* whitespace runs: one space */
        if (is_space(o[r])) {
            while (r < n && is_space(o[r]))
                r++;
            o[w++] = ' ';
        } else {
            o[w++] = o[r++];
        }
    }
    n = w;
    w = 0;
    for (size_t r = 0; r < n;) { /* no space before / or ( */
        if (o[r] == ' ' && r + 1 < n && (o[r + 1] == '/' || o[r + 1] == '(')) {
            o[w++] = o[r + 1];
            r += 2;
        } else {
            o[w++] = o[r++];
        }
    }
    for (size_t i = 0; i < w; i++)
        o[i] = lower(o[i]);
    return (long)w;
}

static long compress_ws(const uc *in, size_t n, uc *o)
{
    size_t w = 0;
    int changed = 0;
    for (size_t r = 0; r < n;) {
        if (is_ws0(in[r])) {
            size_t s = r;
            while (r < n && is_ws0(in[r]))
                r++;
            changed |= r - s > 1 || in[s] != ' ';
            o[w++] = ' ';
        } else {
            o[w++] = in[r++];
        }
    }
    return changed ? (long)w : -1;
}

static long drop_bytes(const uc *in, size_t n, uc *o, int ws)
{
    size_t w = 0;
    for (size_t r = 0; r < n; r++)
        if (ws ? !is_ws0(in[r]) : in[r] != 0)
            o[w++] = in[r];
    return w == n ? -1 : (long)w;
}

static long trim(const uc *in, size_t n, uc *o, int left, int right)
{
    size_t a = 0, b = n;
    while (left && a < b && is_ws0(in[a]))
        a++;
    while (right && b > a && is_ws0(in[b - 1]))
        b--;
    if (a == 0 && b == n)
        return -1;
    memcpy(o, in + a, b - a);
    return (long)(b - a);
}

static long replace_comments(const uc *in, size_t n, uc *o)
{
    int has = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (in[i] == '/' && in[i + 1] == '*') {
            has = 1;
            break;
        }
    if (!has)
        return -1;
    size_t w = 0, r = 0;
    /* once a comment finds no end, no later one can: the rest is copied */
    int open = 1;
    while (r < n) { /* each closed comment: one space */
        if (open && in[r] == '/' && r + 1 < n && in[r + 1] == '*') {
            size_t q = r + 2;
            while (q + 1 < n && !(in[q] == '*' && in[q + 1] == '/'))
                q++;
            if (q + 1 < n) {
                o[w++] = ' ';
                r = q + 2;
                continue;
            }
            open = 0;
        }
        o[w++] = in[r++];
    }
    n = w;
    for (size_t i = 0; i + 1 < n; i++) /* an unclosed one: a space to the end */
        if (o[i] == '/' && o[i + 1] == '*') {
            o[i] = ' ';
            return (long)(i + 1);
        }
    return (long)n;
}

/* normalizePath over buf (n bytes, '/' the only separator): as transforms.lua's
 * normalize_path after its backslash step. Writes to o (not overlapping buf). */
static size_t norm_segments(const uc *s, size_t n, uc *o)
{
    int abs = n > 0 && s[0] == '/';
    int trailing = n > 0 && s[n - 1] == '/';
    /* the kept segments are written to o as they come; a pop moves the end back */
    size_t w = abs ? 1 : 0, cnt = 0;
    if (abs)
        o[0] = '/';
    size_t base = w;
    for (size_t r = 0; r < n;) {
        if (s[r] == '/') {
            r++;
            continue;
        }
        size_t a = r;
        while (r < n && s[r] != '/')
            r++;
        size_t len = r - a;
        if (len == 1 && s[a] == '.')
            continue;
        if (len == 2 && s[a] == '.' && s[a + 1] == '.') {
            /* the last kept segment: from after the previous slash (or base) to w */
            size_t ls = w;
            while (ls > base && o[ls - 1] != '/')
                ls--;
            int last_dotdot = cnt > 0 && w - ls == 2 && o[ls] == '.' && o[ls + 1] == '.';
            if (cnt > 0 && !last_dotdot) {
                w = ls > base ? ls - 1 : base;
                cnt--;
                continue;
            }
            if (abs)
                continue;
        }
        if (cnt > 0)
            o[w++] = '/';
        memcpy(o + w, s + a, len);
        w += len;
        cnt++;
    }
    if (trailing && cnt > 0)
        o[w++] = '/';
    return w;
}

static long normalize_path(const uc *in, size_t n, uc *o, int win)
{
    int sep = 0, bs = 0;
    for (size_t i = 0; i < n; i++) {
        sep |= in[i] == '/' || (win && in[i] == '\\');
        bs |= in[i] == '\\';
    }
    /* posix with a backslash: transforms.lua swaps backslashes for \1 and back, which turns
     * any \1 of the value into a backslash too */
    int swap = !win && bs;
    if (!sep) {
        if (!swap)
            return -1;
        for (size_t i = 0; i < n; i++)
            o[i] = in[i] == 1 ? '\\' : in[i];
        return (long)n;
    }
    /* the value with '/' as the only separator, in o's upper half of the room */
    uc *s = o + n;
    for (size_t i = 0; i < n; i++)
        s[i] = win && in[i] == '\\' ? '/' : (swap && in[i] == '\\' ? 1 : in[i]);
    int work = n > 0 && s[0] == '.';
    for (size_t i = 0; !work && i + 1 < n; i++)
        work = s[i] == '/' && (s[i + 1] == '/' || s[i + 1] == '.');
    size_t w;
    if (work) {
        w = norm_segments(s, n, o);
    } else {
        memmove(o, s, n);
        w = n;
    }
    if (swap)
        for (size_t i = 0; i < w; i++)
            if (o[i] == 1)
                o[i] = '\\';
    return (long)w;
}

static long utf8_to_unicode(const uc *in, size_t n, uc *o)
{
    size_t r = 0, w = 0;
    while (r < n && in[r] < 0x80)
        r++;
    if (r == n)
        return -1;
    r = 0;
    while (r < n) {
        uc b1 = in[r];
        if (b1 >= 0xC0 && b1 <= 0xF7 && r + 1 < n && in[r + 1] >= 0x80 && in[r + 1] <= 0xBF) {
            size_t e = r + 1;
            while (e < n && in[e] >= 0x80 && in[e] <= 0xBF)
                e++;
            size_t m = e - r;
            const uc *q = in + r;
            uint32_t cp;
            int ok = 1;
            if (b1 < 0xE0 && m == 2)
                cp = (uint32_t)(b1 & 0x1F) * 64 + (q[1] & 0x3F);
            else if (b1 >= 0xE0 && b1 < 0xF0 && m == 3)
                cp = (uint32_t)(b1 & 0x0F) * 4096 + (uint32_t)(q[1] & 0x3F) * 64 + (q[2] & 0x3F);
            else if (b1 >= 0xF0 && m == 4)
                cp = (uint32_t)(b1 & 0x07) * 262144 + (uint32_t)(q[1] & 0x3F) * 4096 +
                     (uint32_t)(q[2] & 0x3F) * 64 + (q[3] & 0x3F);
            else
                ok = 0, cp = 0;
            if (ok) {
                char tmp[16];
                int k = snprintf(tmp, sizeof tmp, "%%u%04x", cp);
                memcpy(o + w, tmp, (size_t)k);
                w += (size_t)k;
            } else {
                memcpy(o + w, q, m);
                w += m;
            }
            r = e;
        } else {
            o[w++] = in[r++];
        }
    }
    return (long)w;
}

static int b64(uc c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (is_digit(c))
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1; /* '=' or not base64 */
}

static long base64_decode(const uc *in, size_t n, uc *o)
{
    if (n < 8)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (in[i] != '=' && b64(in[i]) < 0)
            return -1;
    uint32_t acc = 0;
    int bits = 0;
    size_t w = 0;
    for (size_t i = 0; i < n && in[i] != '='; i++) {
        acc = ((acc & 0xFFFF) << 6) | (uint32_t)b64(in[i]);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[w++] = (uc)((acc >> bits) & 0xFF);
        }
    }
    return (long)w;
}

static const char *const NAMES[LP_WAF_T_COUNT] = {
    [LP_WAF_T_LOWERCASE] = "lowercase",
    [LP_WAF_T_URLDECODE] = "urldecode",
    [LP_WAF_T_HTML_DECODE] = "html_decode",
    [LP_WAF_T_JS_DECODE] = "js_decode",
    [LP_WAF_T_CSS_DECODE] = "css_decode",
    [LP_WAF_T_CMDLINE_MODSEC] = "cmdline_modsec",
    [LP_WAF_T_COMPRESS_WS] = "compress_ws",
    [LP_WAF_T_REMOVE_WS] = "remove_ws",
    [LP_WAF_T_REMOVE_NULLS] = "remove_nulls",
    [LP_WAF_T_REPLACE_COMMENTS] = "replace_comments",
    [LP_WAF_T_NORMALIZE_PATH] = "normalize_path",
    [LP_WAF_T_NORMALIZE_PATH_POSIX] = "normalize_path_posix",
    [LP_WAF_T_UTF8_TO_UNICODE] = "utf8_to_unicode",
    [LP_WAF_T_BASE64_DECODE] = "base64_decode",
    [LP_WAF_T_LENGTH] = "length",
    [LP_WAF_T_TRIM] = "trim",
    [LP_WAF_T_TRIM_LEFT] = "trim_left",
    [LP_WAF_T_TRIM_RIGHT] = "trim_right",
    [LP_WAF_T_UPPERCASE] = "uppercase",
    [LP_WAF_T_REPLACE_NULLS] = "replace_nulls",
    [LP_WAF_T_HEX_ENCODE] = "hex_encode",
    [LP_WAF_T_SHA1] = "sha1",
};

int lp_waf_transform_id(const char *name)
{
    for (int i = 1; i < LP_WAF_T_COUNT; i++)
        if (strcmp(NAMES[i], name) == 0)
            return i;
    return -1;
}

size_t lp_waf_transform_bound(int step, size_t n)
{
    switch (step) {
    case LP_WAF_T_UTF8_TO_UNICODE:
        return 3 * n + 1; /* 2 bytes -> %uHHHH */
    case LP_WAF_T_NORMALIZE_PATH:
    case LP_WAF_T_NORMALIZE_PATH_POSIX:
        return 2 * n + 1; /* a working copy beside */
    case LP_WAF_T_LENGTH:
        return 24;
    case LP_WAF_T_HEX_ENCODE:
        return 2 * n + 1;
    case LP_WAF_T_SHA1:
        return EVP_MAX_MD_SIZE;
    default:
        return n + 1;
    }
}

long lp_waf_transform(int step, const char *in_, size_t n, char *out)
{
    const uc *in = (const uc *)in_;
    uc *o = (uc *)out;
    switch (step) {
    case LP_WAF_T_LOWERCASE: {
        size_t i = 0;
        while (i < n && !(in[i] >= 'A' && in[i] <= 'Z'))
            i++;
        if (i == n)
            return -1;
        for (i = 0; i < n; i++)
            o[i] = lower(in[i]);
        return (long)n;
    }
    case LP_WAF_T_URLDECODE:
        return urldecode(in, n, o);
    case LP_WAF_T_HTML_DECODE:
        return html_decode(in, n, o);
    case LP_WAF_T_JS_DECODE:
        return js_decode(in, n, o);
    case LP_WAF_T_CSS_DECODE:
        return css_decode(in, n, o);
    case LP_WAF_T_CMDLINE_MODSEC:
        return cmdline_modsec(in, n, o);
    case LP_WAF_T_COMPRESS_WS:
        return compress_ws(in, n, o);
    case LP_WAF_T_REMOVE_WS:
        return drop_bytes(in, n, o, 1);
    case LP_WAF_T_REMOVE_NULLS:
        return drop_bytes(in, n, o, 0);
    case LP_WAF_T_REPLACE_COMMENTS:
        return replace_comments(in, n, o);
    case LP_WAF_T_NORMALIZE_PATH:
        return normalize_path(in, n, o, 1);
    case LP_WAF_T_NORMALIZE_PATH_POSIX:
        return normalize_path(in, n, o, 0);
    case LP_WAF_T_UTF8_TO_UNICODE:
        return utf8_to_unicode(in, n, o);
    case LP_WAF_T_BASE64_DECODE:
        return base64_decode(in, n, o);
    case LP_WAF_T_LENGTH:
        return snprintf(out, 24, "%zu", n);
    case LP_WAF_T_TRIM:
        return trim(in, n, o, 1, 1);
    case LP_WAF_T_TRIM_LEFT:
        return trim(in, n, o, 1, 0);
    case LP_WAF_T_TRIM_RIGHT:
        return trim(in, n, o, 0, 1);
    case LP_WAF_T_UPPERCASE: {
        size_t i = 0;
        while (i < n && !(in[i] >= 'a' && in[i] <= 'z'))
            i++;
        if (i == n)
            return -1;
        for (i = 0; i < n; i++)
            o[i] = in[i] >= 'a' && in[i] <= 'z' ? (uc)(in[i] - 32) : in[i];
        return (long)n;
    }
    case LP_WAF_T_REPLACE_NULLS:
        if (!memchr(in, 0, n))
            return -1;
        for (size_t i = 0; i < n; i++)
            o[i] = in[i] ? in[i] : ' ';
        return (long)n;
    case LP_WAF_T_HEX_ENCODE: {
        static const char hex[] = "0123456789abcdef";
        for (size_t i = 0; i < n; i++) {
            o[2 * i] = (uc)hex[in[i] >> 4];
            o[2 * i + 1] = (uc)hex[in[i] & 15];
        }
        return (long)(2 * n);
    }
    case LP_WAF_T_SHA1: {
        unsigned len = 0;
        if (!EVP_Digest(in, n, o, &len, EVP_sha1(), NULL))
            return -1; /* as the Lua twin without libcrypto: the value as it is */
        return (long)len;
    }
    default:
        return -1;
    }
}
