/* The waf plugin's @detectXSS (lua/luaproxy/waf/detect.lua calls it through the FFI): our
 * own detector (nothing here is taken from libinjection). Docs: docs/plugins/waf.md,
 * "detectSQLi and detectXSS".
 *
 * The value is parsed as HTML as written and as if it started inside an attribute value
 * ("...", '...'). It is XSS when it makes a tag of the dangerous kinds (script, iframe,
 * object, embed, svg, base, ...), an event handler attribute (on...), an attribute whose URL
 * is javascript:/vbscript:/data:text/html, a style with expression() or a javascript: url(),
 * or when the whole value is a javascript: URL. Plain markup a comment form allows (<b>, <i>,
 * <a href="https://...">, <p>) is not.
 *
 * Work is linear in the value, all of it read (markup after padding is markup): each byte
 * is read a bounded number of times, entity decoding of a URL or a style included. */
#include <stdlib.h>
#include <pthread.h>
#include <string.h>

struct lp_req_s; /* lua_api.h names it; nothing here uses it */
#include "lua_api.h"
#include "waf_ctype.h"
#include "waf_words.h"

static int hexval(unsigned char c)
{
    if (is_digit(c))
        return c - '0';
    c = low(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* v[0..n) starts with p (lower case), ASCII case-insensitively */
static int prefix_ci(const unsigned char *v, size_t n, const char *p)
{
    size_t m = strlen(p);
    return n >= m && eq_ci(v, m, p);
}

#define W_BAD_TAG  1 /* a tag that runs or loads code, or changes the page's base */
#define W_URL_ATTR 2 /* an attribute holding a URL */
#define W_STYLE    4

static const lp_waf_word_t xss_word_list[] = {
    {"script", W_BAD_TAG},      {"iframe", W_BAD_TAG},    {"frame", W_BAD_TAG},
    {"frameset", W_BAD_TAG},    {"object", W_BAD_TAG},    {"embed", W_BAD_TAG},
    {"applet", W_BAD_TAG},      {"base", W_BAD_TAG},      {"svg", W_BAD_TAG},
    {"math", W_BAD_TAG},        {"meta", W_BAD_TAG},      {"link", W_BAD_TAG},
    {"style", W_BAD_TAG},       {"xml", W_BAD_TAG},       {"xss", W_BAD_TAG},
    {"import", W_BAD_TAG},      {"isindex", W_BAD_TAG},   {"template", W_BAD_TAG},
    {"portal", W_BAD_TAG},      {"animate", W_BAD_TAG},   {"set", W_BAD_TAG},
    {"handler", W_BAD_TAG},     {"listener", W_BAD_TAG},  {"vmlframe", W_BAD_TAG},
    {"href", W_URL_ATTR},       {"src", W_URL_ATTR},      {"action", W_URL_ATTR},
    {"formaction", W_URL_ATTR}, {"data", W_URL_ATTR},     {"xlink:href", W_URL_ATTR},
    {"background", W_URL_ATTR}, {"lowsrc", W_URL_ATTR},   {"dynsrc", W_URL_ATTR},
    {"poster", W_URL_ATTR},     {"codebase", W_URL_ATTR}, {"srcdoc", W_URL_ATTR},
    {"from", W_URL_ATTR},       {"to", W_URL_ATTR},       {"values", W_URL_ATTR},
    {"by", W_URL_ATTR},         {"style", W_STYLE},
};

static lp_waf_words_t xss_words = LP_WAF_WORDS(xss_word_list);
static pthread_once_t xss_words_once = PTHREAD_ONCE_INIT;

static void xss_words_init(void)
{
    lp__waf_words_build(&xss_words);
}

/* One parse: the value and a scratch buffer for decoded attribute values. */
typedef struct {
    const unsigned char *v; /* borrowed: the value */
    size_t n;
    unsigned char *buf; /* owned: n bytes for decode(), allocated on first use; NULL before */
    int oom;            /* flag: buf could not be allocated */
} xss_t;

/* "&#x41;", "&#65;" (the ; optional) then "&colon;", "&tab;", "&newline;", each pass over the
 * previous one's output, as the Lua original's five gsubs did; a numeric reference beyond
 * ASCII is dropped. In place: no pass makes the text longer. Returns the new length. */
static size_t decode_pass_num(unsigned char *s, size_t n, int hex)
{
    size_t w = 0, r = 0;
    while (r < n) {
        size_t k = r + 2 + (hex ? 1 : 0);
        int head = s[r] == '&' && r + 1 < n && s[r + 1] == '#' &&
                   (!hex || (r + 2 < n && (s[r + 2] == 'x' || s[r + 2] == 'X')));
        if (!head || k >= n || (hex ? hexval(s[k]) < 0 : !is_digit(s[k]))) {
            s[w++] = s[r++];
            continue;
        }
        unsigned val = 0; /* saturates: only < 128 matters */
        while (k < n && (hex ? hexval(s[k]) >= 0 : is_digit(s[k]))) {
            unsigned d = (unsigned)(hex ? hexval(s[k]) : s[k] - '0');
            val = val > 1000 ? val : val * (hex ? 16u : 10u) + d;
            k++;
        }
        if (k < n && s[k] == ';')
            k++;
        if (val < 128)
            s[w++] = (unsigned char)val;
        r = k;
    }
    return w;
}

static size_t decode_pass_name(unsigned char *s, size_t n, const char *name, int to)
{
    size_t m = strlen(name), w = 0, r = 0;
    while (r < n) {
        if (s[r] == '&' && prefix_ci(s + r, n - r, name)) {
            if (to)
                s[w++] = (unsigned char)to;
            r += m;
        } else {
            s[w++] = s[r++];
        }
    }
    return w;
}

/* val (inside x->v, or x->v itself) with its entities decoded: a pointer to x->buf, or to
 * val when it has no '&'; NULL when out of memory */
static const unsigned char *decode(xss_t *x, const unsigned char *val, size_t *n)
{
    if (!memchr(val, '&', *n))
        return val;
    if (!x->buf) {
        x->buf = malloc(x->n ? x->n : 1);
        if (!x->buf) {
            x->oom = 1;
            return NULL;
        }
    }
    memcpy(x->buf, val, *n);
    size_t len = decode_pass_num(x->buf, *n, 1);
    len = decode_pass_num(x->buf, len, 0);
    len = decode_pass_name(x->buf, len, "&colon;", ':');
    len = decode_pass_name(x->buf, len, "&tab;", 0);
    len = decode_pass_name(x->buf, len, "&newline;", 0);
    *n = len;
    return x->buf;
}

/* A URL that runs script: its scheme, once entities are decoded and bytes up to the space
 * are dropped. Out of memory: yes (a WAF fails closed). */
static int bad_url(xss_t *x, const unsigned char *val, size_t n)
{
    const unsigned char *u = decode(x, val, &n);
    if (!u)
        return 1;
    unsigned char head[16];
    size_t h = 0;
    for (size_t i = 0; i < n && h < sizeof head; i++)
        if (u[i] > 32)
            head[h++] = low(u[i]);
    return prefix_ci(head, h, "javascript:") || prefix_ci(head, h, "vbscript:") ||
           prefix_ci(head, h, "data:text/html") || prefix_ci(head, h, "data:image/svg") ||
           prefix_ci(head, h, "livescript:");
}

static size_t skip_space(const unsigned char *s, size_t n, size_t i)
{
    while (i < n && is_space(s[i]))
        i++;
    return i;
}

/* A style that runs script: expression(, url( [quote] javascript:, behavior: */
static int bad_style(xss_t *x, const unsigned char *val, size_t n)
{
    const unsigned char *s = decode(x, val, &n);
    if (!s)
        return 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = low(s[i]);
        if (c == 'e' && prefix_ci(s + i, n - i, "expression")) {
            size_t k = skip_space(s, n, i + 10);
            if (k < n && s[k] == '(')
                return 1;
        } else if (c == 'u' && prefix_ci(s + i, n - i, "url")) {
            size_t k = skip_space(s, n, i + 3);
            if (k < n && s[k] == '(') {
                k = skip_space(s, n, k + 1);
                if (k < n && (s[k] == '\'' || s[k] == '"'))
                    k = skip_space(s, n, k + 1);
                if (prefix_ci(s + k, n - k, "javascript:"))
                    return 1;
            }
        } else if (c == 'b' && prefix_ci(s + i, n - i, "behavior")) {
            size_t k = skip_space(s, n, i + 8);
            if (k < n && s[k] == ':')
                return 1;
        }
    }
    return 0;
}

/* the bytes that end an attribute's name: [%s/>=] */
static const unsigned char name_stop[256] = {
    [' '] = 1,  ['\t'] = 1, ['\n'] = 1, ['\v'] = 1, ['\f'] = 1,
    ['\r'] = 1, ['/'] = 1,  ['>'] = 1,  ['='] = 1,
};

/* Scans attributes from i (inside a tag): the position of a dangerous one, or -1 with *next
 * where the scan stopped (after the tag's '>', or past the end). */
static long bad_attrs(xss_t *x, size_t i, size_t *next)
{
    const unsigned char *v = x->v;
    size_t n = x->n;
    while (i < n) {
        unsigned char c = v[i];
        if (c == '>') {
            *next = i + 1;
            return -1;
        }
        if (c <= 32 || c == '/' || c == '"' || c == '\'') {
            i++;
            continue;
        }
        /* a '=' where a name starts is the name's first byte (HTML5): "<img src=x =y
         * onerror=...>" has the attributes "=y" and "onerror" */
        size_t a = i, b = v[i] == '=' ? i + 1 : i;
        while (b < n && !name_stop[v[b]])
            b++;
        i = b;
        const unsigned char *val = v + i;
        size_t vn = 0;
        size_t k = skip_space(v, n, i);
        int eq = k < n && v[k] == '=';
        if (eq) {
            i = skip_space(v, n, k + 1);
            /* a backtick quotes nothing in HTML5: it starts an unquoted value */
            if (i < n && (v[i] == '"' || v[i] == '\'')) {
                const unsigned char *close = memchr(v + i + 1, v[i], n - i - 1);
                size_t ci = close ? (size_t)(close - v) : n;
                val = v + i + 1;
                vn = ci - i - 1;
                i = ci < n ? ci + 1 : n;
            } else {
                size_t e = i;
                while (e < n && !is_space(v[e]) && v[e] != '>')
                    e++;
                val = v + i;
                vn = e - i;
                i = e;
            }
        }
        size_t nl = b - a;
        if (eq && nl > 2 && low(v[a]) == 'o' && low(v[a + 1]) == 'n')
            return (long)a;
        unsigned kind = lp__waf_words_find(&xss_words, v + a, nl);
        if ((kind & W_URL_ATTR) && bad_url(x, val, vn))
            return (long)a;
        if ((kind & W_STYLE) && bad_style(x, val, vn))
            return (long)a;
    }
    *next = i;
    return -1;
}

/* Where the text after a comment's "<!--" (at i) resumes, as HTML5 ends comments: at once
 * on ">" or "->" (abrupt closing), else at the first "-->" or "--!>"; the end if none. */
static size_t comment_end(const unsigned char *v, size_t n, size_t i)
{
    if (i < n && v[i] == '>')
        return i + 1;
    if (i + 1 < n && v[i] == '-' && v[i + 1] == '>')
        return i + 2;
    for (size_t k = i; k + 2 < n; k++) {
        const unsigned char *d = memchr(v + k, '-', n - k - 2);
        if (!d)
            break;
        k = (size_t)(d - v);
        if (v[k + 1] != '-')
            continue;
        if (v[k + 2] == '>')
            return k + 3;
        if (k + 3 < n && v[k + 2] == '!' && v[k + 3] == '>')
            return k + 4;
    }
    return n;
}

/* Parses the value as HTML text from i: the position of the markup, or -1. */
static long html_scan(xss_t *x, size_t i)
{
    const unsigned char *v = x->v;
    size_t n = x->n;
    while (i < n) {
        const unsigned char *p = memchr(v + i, '<', n - i);
        if (!p)
            return -1;
        size_t lt = (size_t)(p - v);
        /* <, space, an optional /, space, a tag name [%a][%w:-]* */
        size_t k = skip_space(v, n, lt + 1);
        int slash = k < n && v[k] == '/';
        if (slash)
            k = skip_space(v, n, k + 1);
        if (k < n && is_alpha(v[k])) {
            size_t ts = k;
            while (k < n && (is_alnum(v[k]) || v[k] == ':' || v[k] == '-'))
                k++;
            if (!slash) {
                /* the name, and the part after its last ':' (svg:script) */
                size_t ls = ts;
                for (size_t m = ts; m < k; m++)
                    if (v[m] == ':')
                        ls = m + 1;
                if ((lp__waf_words_find(&xss_words, v + ts, k - ts) & W_BAD_TAG) ||
                    (lp__waf_words_find(&xss_words, v + ls, k - ls) & W_BAD_TAG))
                    return (long)lt;
            }
            size_t nx;
            long bad = bad_attrs(x, k, &nx);
            if (bad >= 0)
                return bad;
            i = nx;
        } else if (prefix_ci(v + lt, n - lt, "<!--")) {
            i = comment_end(v, n, lt + 4);
        } else if (lt + 1 < n && (v[lt + 1] == '!' || v[lt + 1] == '?')) {
            /* <!ENTITY, <?xml: markup no comment form needs */
            if (prefix_ci(v + lt, n - lt, "<!entity") || prefix_ci(v + lt, n - lt, "<?xml"))
                return (long)lt;
            const unsigned char *e = memchr(v + lt, '>', n - lt);
            i = e ? (size_t)(e - v) + 1 : n;
        } else {
            i = lt + 1;
        }
    }
    return -1;
}

#define B_CALL  1 /* ( ` = : a script URL's code */
#define B_COLON 2 /* : & its scheme, written or as an entity */
#define B_MARK  4 /* < " ' = markup or an attribute */

static const unsigned char byte_kind[256] = {
    ['('] = B_CALL,  ['`'] = B_CALL, ['='] = B_CALL | B_MARK, [':'] = B_COLON,
    ['&'] = B_COLON, ['<'] = B_MARK, ['"'] = B_MARK,          ['\''] = B_MARK,
};

/* which of the kinds of byte above v has (one pass) */
static unsigned byte_kinds(const unsigned char *v, size_t n)
{
    unsigned m = 0;
    for (size_t i = 0; i < n; i++)
        m |= byte_kind[v[i]];
    return m;
}

static long xss_at(xss_t *x)
{
    const unsigned char *v = x->v;
    size_t n = x->n;
    /* The whole value a script URL, with code after the scheme ("javascript: the good parts"
     * is a book title) and a ":", written or as an entity ("&colon;", "&#58;") */
    unsigned kinds = byte_kinds(v, n);
    if ((kinds & B_CALL) && (kinds & B_COLON) && bad_url(x, v, n))
        return 0;
    if (!(kinds & B_MARK))
        return -1;
    long at = html_scan(x, 0);
    if (at >= 0)
        return at;
    /* As if the value started inside an attribute value of the application's tag. */
    static const unsigned char quotes[] = {'"', '\''};
    for (size_t q = 0; q < COUNT(quotes); q++) {
        const unsigned char *close = memchr(v, quotes[q], n);
        if (!close)
            continue;
        size_t nx;
        at = bad_attrs(x, (size_t)(close - v) + 1, &nx);
        if (at >= 0)
            return at;
        at = html_scan(x, nx);
        if (at >= 0)
            return at;
    }
    return -1;
}

int lp_ffi_waf_xss(const char *str, size_t n, lp_waf_detect_t *out)
{
    pthread_once(&xss_words_once, xss_words_init);
    xss_t x = {(const unsigned char *)str, n, NULL, 0};
    long at = xss_at(&x);
    free(x.buf);
    if (at < 0)
        return 0;
    out->from = (unsigned)at + 1;
    out->to = (unsigned)x.n;
    out->fp[0] = '\0';
    return 1;
}
