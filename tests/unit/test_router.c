/* The compiled router (engine/router.c) against a naive reference matcher kept here: every
 * match kind by example, then a property test over random tables and requests. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <arpa/inet.h>
#include <ctype.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "lp_test.h"
#include "router.h"
#include "hs_db.h"
#include "router_hs.h"

/* Hyperscan's compiles (C++ allocations) run about 15 times slower under AddressSanitizer:
 * there, fewer of the random tables wait for their databases (every table is still checked
 * before they are compiled) and the many-regexes test is smaller. */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifdef SANITIZED
enum { COMPILE_EVERY = 12, REGEX_MANY = 200 };
#else
enum { COMPILE_EVERY = 1, REGEX_MANY = 1000 };
#endif
/* The longest a test waits for the compile thread (a loaded machine, a sanitizer build). */
#define COMPILE_WAIT_MS 120000L

/* A route as the tests describe it (NULL / 0: no such condition). */
typedef struct {
    const char *host;
    int pkind; /* 0 any, 1 path pattern, 2 prefix, 3 regex */
    const char *path;
    const char *method;
    const char *hname, *hval; /* header; hval NULL: present */
    int hregex;               /* hval is a regex */
    const char *qname, *qval; /* query argument; qval NULL: present */
    const char *cidr;
    const char *sni;
    int predicate;
} troute_t;

typedef struct {
    const char *method, *host, *path, *sni;
    const char *hname, *hval; /* one header (NULL: none) */
    const char *query;        /* raw query, "q=1" (NULL: none) */
    const char *addr;         /* client address text (NULL: unknown) */
} treq_t;

/* ---- the request as the router reads it ---- */

static lp_str_t s_of(const char *s)
{
    return s ? (lp_str_t){s, strlen(s)} : (lp_str_t){NULL, 0};
}

static int hexv(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decoded value of query argument name in q into out (NULL: absent). */
static const char *query_arg(const char *q, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *p = q; p && *p;) {
        const char *end = strchr(p, '&');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > nl && p[nl] == '=' && memcmp(p, name, nl) == 0) {
            size_t n = 0;
            for (size_t i = nl + 1; i < len && n + 1 < cap; i++) {
                char c = p[i];
                if (c == '+')
                    c = ' ';
                else if (c == '%' && i + 2 < len && hexv(p[i + 1]) >= 0 && hexv(p[i + 2]) >= 0) {
                    c = (char)(hexv(p[i + 1]) * 16 + hexv(p[i + 2]));
                    i += 2;
                }
                out[n++] = c;
            }
            out[n] = 0;
            return out;
        }
        p = end ? end + 1 : NULL;
    }
    return NULL;
}

static lp_str_t cb_header(const void *ctx, const char *name, size_t nlen)
{
    const treq_t *q = ctx;
    if (q->hname && strlen(q->hname) == nlen && strncasecmp(q->hname, name, nlen) == 0)
        return s_of(q->hval);
    return (lp_str_t){NULL, 0};
}

static lp_str_t cb_query(const void *ctx, const char *name, size_t nlen, char *buf, size_t cap)
{
    const treq_t *q = ctx;
    char nm[64];
    snprintf(nm, sizeof(nm), "%.*s", (int)nlen, name);
    const char *v = query_arg(q->query, nm, buf, cap);
    return v ? (lp_str_t){v, strlen(v)} : (lp_str_t){NULL, 0};
}

static int parse_addr(const char *s, uint8_t *a)
{
    if (!s)
        return 0;
    if (inet_pton(AF_INET, s, a) == 1)
        return 4;
    if (inet_pton(AF_INET6, s, a) == 1)
        return 6;
    return 0;
}

/* Storage for the array form (the FFI's): one value per router name. */
typedef struct {
    lp_str_t h[8], q[8];
    char qbuf[8][128];
} arrays_t;

static void make_in(lp_route_in_t *in, const treq_t *q, const lp_router_t *r, arrays_t *arr)
{
    memset(in, 0, sizeof(*in));
    in->method = s_of(q->method);
    in->host = s_of(q->host);
    in->path = s_of(q->path);
    in->sni = s_of(q->sni);
    in->family = parse_addr(q->addr, in->addr);
    if (!arr) {
        in->header = cb_header;
        in->query = cb_query;
        in->ctx = q;
        return;
    }
    for (size_t i = 0; i < lp_router_nnames(r, LP_RK_HEADER) && i < 8; i++)
        arr->h[i] = cb_header(q, lp_router_name(r, LP_RK_HEADER, i),
                              strlen(lp_router_name(r, LP_RK_HEADER, i)));
    for (size_t i = 0; i < lp_router_nnames(r, LP_RK_QUERY) && i < 8; i++) {
        const char *v = query_arg(q->query, lp_router_name(r, LP_RK_QUERY, i), arr->qbuf[i], 128);
        arr->q[i] = s_of(v);
    }
    in->hvals = arr->h;
    in->qvals = arr->q;
}

static int add(lp_rbuild_t *b, size_t i, int kind, int mode, const char *name, const char *v)
{
    char err[256];
    int rc = lp_rbuild_add(b, kind, mode, name, name ? strlen(name) : 0, v, v ? strlen(v) : 0, err,
                           sizeof(err));
    if (rc)
        lp_test_fail(__FILE__, __LINE__, "route %zu: %s", i, err);
    return rc;
}

/* The conditions of x into b's current route (route i, for messages). */
static int add_route(lp_rbuild_t *b, size_t i, const troute_t *x)
{
    int rc = 0;
    {
        if (!rc && x->host)
            rc = add(b, i, LP_RK_HOST, 0, NULL, x->host);
        if (!rc && x->pkind)
            rc = add(b, i,
                     x->pkind == 1   ? LP_RK_PATH
                     : x->pkind == 2 ? LP_RK_PREFIX
                                     : LP_RK_REGEX,
                     0, NULL, x->path);
        if (!rc && x->method)
            rc = add(b, i, LP_RK_METHOD, 0, NULL, x->method);
        if (!rc && x->hname)
            rc = add(b, i, LP_RK_HEADER,
                     x->hregex ? LP_RM_REGEX
                     : x->hval ? LP_RM_EQUAL
                               : LP_RM_PRESENT,
                     x->hname, x->hval);
        if (!rc && x->qname)
            rc = add(b, i, LP_RK_QUERY, x->qval ? LP_RM_EQUAL : LP_RM_PRESENT, x->qname, x->qval);
        if (!rc && x->cidr)
            rc = add(b, i, LP_RK_CIDR, 0, NULL, x->cidr);
        if (!rc && x->sni)
            rc = add(b, i, LP_RK_SNI, 0, NULL, x->sni);
        if (!rc && x->predicate)
            rc = add(b, i, LP_RK_PREDICATE, 0, NULL, NULL);
    }
    return rc;
}

static lp_router_t *build(const troute_t *t, size_t n)
{
    lp_rbuild_t *b = lp_rbuild_new();
    char err[256];
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        rc = lp_rbuild_route(b) != (int)i;
        if (!rc)
            rc = add_route(b, i, &t[i]);
    }
    if (rc) {
        lp_rbuild_free(b);
        return NULL;
    }
    lp_router_t *r = lp_rbuild_finish(b, err, sizeof(err));
    if (!r)
        lp_test_fail(__FILE__, __LINE__, "build: %s", err);
    return r;
}

/* ---- the reference: every route in order, each condition as the docs say ---- */

typedef struct {
    char name[32];
    char value[256];
} rcap_t;

static void norm_name(const char *in, char *out, size_t cap)
{
    size_t n = 0;
    if (in && in[0] == '[') {
        const char *e = strchr(in, ']');
        n = e ? (size_t)(e - in) + 1 : strlen(in);
    } else if (in) {
        const char *c = strchr(in, ':');
        n = c ? (size_t)(c - in) : strlen(in);
    }
    while (n && in[n - 1] == '.')
        n--;
    if (n >= cap)
        n = 0;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)in[i]);
    out[n] = 0;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int ref_name(const char *pat, const char *name)
{
    char p[256];
    norm_name(pat, p, sizeof(p));
    if (p[0] == '*' && p[1] == '.')
        return strlen(name) > strlen(p + 1) && ends_with(name, p + 1);
    size_t pl = strlen(p);
    if (pl > 2 && p[pl - 1] == '*' && p[pl - 2] == '.')
        return strlen(name) > pl - 1 && strncmp(name, p, pl - 1) == 0;
    return strcmp(name, p) == 0;
}

static int ref_pattern(const char *pat, const char *path, rcap_t *caps, int *ncaps)
{
    size_t i = 0, j = 0, pl = strlen(pat), n = strlen(path);
    while (i < pl) {
        if ((pat[i] == ':' || pat[i] == '*') && i > 0 && pat[i - 1] == '/') {
            size_t e = i + 1;
            while (e < pl && pat[e] != '/')
                e++;
            size_t ve = j;
            if (pat[i] == '*')
                ve = n;
            else
                while (ve < n && path[ve] != '/')
                    ve++;
            if (pat[i] == ':' && ve == j)
                return 0;
            snprintf(caps[*ncaps].name, 32, "%.*s", (int)(e - i - 1), pat + i + 1);
            snprintf(caps[*ncaps].value, 256, "%.*s", (int)(ve - j), path + j);
            (*ncaps)++;
            i = e;
            j = ve;
            continue;
        }
        if (j >= n || pat[i] != path[j])
            return 0;
        i++;
        j++;
    }
    return j == n;
}

static int ref_cidr(const char *cidr, const char *addr)
{
    uint8_t a[16] = {0}, c[16] = {0};
    char buf[64];
    snprintf(buf, sizeof(buf), "%s", cidr);
    char *slash = strchr(buf, '/');
    if (slash)
        *slash = 0;
    int fc = parse_addr(buf, c), fa = parse_addr(addr, a);
    if (!fa || fa != fc)
        return 0;
    int bits = slash ? atoi(slash + 1) : (fc == 4 ? 32 : 128);
    for (int b = 0; b < bits; b++)
        if (((a[b / 8] ^ c[b / 8]) >> (7 - b % 8)) & 1)
            return 0;
    return 1;
}

/* The reference's regexes, compiled once each (the random tables draw from a few dozen;
 * compiling one per route and request made the property tests slow under ASan). Kept until
 * exit: reachable, not leaks. */
static struct {
    char *re;         /* owned copy of the pattern */
    pcre2_code *code; /* owned; NULL: it does not compile */
} ref_codes[64];

static pcre2_code *ref_code(const char *re, int *owned)
{
    size_t i = 0;
    *owned = 0;
    for (; i < LP_ARRAY_LEN(ref_codes) && ref_codes[i].re; i++)
        if (strcmp(ref_codes[i].re, re) == 0)
            return ref_codes[i].code;
    int ec;
    PCRE2_SIZE off;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED, 0, &ec, &off, NULL);
    if (i < LP_ARRAY_LEN(ref_codes) && (ref_codes[i].re = strdup(re)))
        ref_codes[i].code = code;
    else
        *owned = 1; /* the cache is full: the caller frees it */
    return code;
}

static int ref_regex(const char *re, const char *s, rcap_t *caps, int *ncaps)
{
    int owned;
    pcre2_code *code = ref_code(re, &owned);
    if (!code)
        return 0;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(code, NULL);
    int ok = pcre2_match(code, (PCRE2_SPTR)s, strlen(s), 0, 0, md, NULL) >= 0;
    if (ok && caps) {
        uint32_t nn = 0, esz = 0;
        PCRE2_SPTR table;
        pcre2_pattern_info(code, PCRE2_INFO_NAMECOUNT, &nn);
        pcre2_pattern_info(code, PCRE2_INFO_NAMEENTRYSIZE, &esz);
        pcre2_pattern_info(code, PCRE2_INFO_NAMETABLE, &table);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        for (uint32_t i = 0; i < nn; i++) {
            PCRE2_SPTR e = table + i * esz;
            uint32_t g = ((uint32_t)e[0] << 8) | e[1];
            if (ov[2 * g] == PCRE2_UNSET)
                continue;
            snprintf(caps[*ncaps].name, 32, "%s", (const char *)e + 2);
            snprintf(caps[*ncaps].value, 256, "%.*s", (int)(ov[2 * g + 1] - ov[2 * g]),
                     s + ov[2 * g]);
            (*ncaps)++;
        }
    }
    pcre2_match_data_free(md);
    if (owned)
        pcre2_code_free(code);
    return ok;
}

static int ref_match(const troute_t *t, size_t n, const treq_t *q, int from, rcap_t *caps,
                     int *ncaps)
{
    char host[256];
    norm_name(q->host, host, sizeof(host));
    int asterisk = strcmp(q->path, "*") == 0;
    for (size_t i = from < 0 ? 0 : (size_t)from; i < n; i++) {
        const troute_t *x = &t[i];
        *ncaps = 0;
        if (x->host && !(host[0] && ref_name(x->host, host)))
            continue;
        if (asterisk && !(x->pkind == 0 || (x->pkind == 2 && strcmp(x->path, "/") == 0)))
            continue;
        if (x->pkind == 1 && !ref_pattern(x->path, q->path, caps, ncaps))
            continue;
        if (x->pkind == 2 && strncmp(q->path, x->path, strlen(x->path)) != 0)
            continue;
        if (x->method && strcmp(x->method, q->method) != 0)
            continue;
        if (x->sni) {
            char sni[256];
            if (!q->sni)
                continue;
            norm_name(q->sni, sni, sizeof(sni));
            if (!ref_name(x->sni, sni))
                continue;
        }
        if (x->cidr && !(q->addr && ref_cidr(x->cidr, q->addr)))
            continue;
        if (x->hname) {
            if (!q->hname || strcasecmp(q->hname, x->hname) != 0)
                continue;
            if (x->hval && !x->hregex && strcmp(x->hval, q->hval) != 0)
                continue;
            if (x->hregex && !ref_regex(x->hval, q->hval, NULL, NULL))
                continue;
        }
        if (x->qname) {
            char v[128];
            const char *got = query_arg(q->query, x->qname, v, sizeof(v));
            if (!got || (x->qval && strcmp(got, x->qval) != 0))
                continue;
        }
        if (x->pkind == 3 && !ref_regex(x->path, q->path, caps, ncaps))
            continue;
        return (int)i;
    }
    *ncaps = 0;
    return -1;
}

/* The router's answer equals the reference's: route and captures. */
static int same(const troute_t *t, size_t n, const lp_router_t *r, const treq_t *q, int from,
                int arrays)
{
    rcap_t caps[LP_ROUTE_MAX_CAPS];
    int ncaps = 0;
    int want = ref_match(t, n, q, from, caps, &ncaps);
    lp_route_in_t in;
    arrays_t arr;
    make_in(&in, q, r, arrays ? &arr : NULL);
    lp_route_out_t out;
    int got = lp_router_match(r, &in, from, &out);
    int ok = got == want && (got < 0 || (int)out.ncaps == ncaps);
    for (int i = 0; ok && i < ncaps; i++)
        ok = strcmp(out.caps[i].name, caps[i].name) == 0 &&
             out.caps[i].value.len == strlen(caps[i].value) &&
             memcmp(out.caps[i].value.base, caps[i].value, out.caps[i].value.len) == 0;
    if (!ok)
        lp_test_fail(__FILE__, __LINE__,
                     "%s %s%s%s (host %s, from %d): router %d (%u caps), reference %d (%d caps)",
                     q->method, q->path, q->query ? "?" : "", q->query ? q->query : "",
                     q->host ? q->host : "-", from, got, out.ncaps, want, ncaps);
    return ok;
}

/* ---- examples ---- */

static lp_str_t cap(const lp_route_out_t *o, const char *name)
{
    for (unsigned i = 0; i < o->ncaps; i++)
        if (strcmp(o->caps[i].name, name) == 0)
            return o->caps[i].value;
    return (lp_str_t){NULL, 0};
}

static int one(const lp_router_t *r, const treq_t *q, lp_route_out_t *out)
{
    lp_route_in_t in;
    make_in(&in, q, r, NULL);
    return lp_router_match(r, &in, 0, out);
}

/* The tests run with the compile thread held (lp_hsdb_hold), so that a router is checked
 * in the state every router starts in: no database compiled, each regex tried by PCRE2.
 * This lets the thread compile what is queued (bounded) and holds it again: 1 when every
 * prefilter chunk of r is then compiled. */
static int compile_now(const lp_router_t *r)
{
    lp_hsdb_hold(0);
    int ok = lp_hsdb_wait_idle(COMPILE_WAIT_MS) == 0;
    lp_hsdb_hold(1);
    size_t ready, sets = lp_router_rx_sets(r, &ready);
    if (!ok || ready != sets)
        printf("compile_now: %s, %zu of %zu chunks ready\n", ok ? "idle" : "timed out", ready,
               sets);
    return ok && ready == sets;
}

static void test_hosts(void)
{
    static const troute_t t[] = {
        {.host = "a.example.com"},
        {.host = "*.example.com"},
        {.host = "api.*"},
        {.host = NULL},
    };
    lp_router_t *r = build(t, LP_ARRAY_LEN(t));
    REQUIRE(r);
    lp_route_out_t o;
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "A.Example.COM:8080", "/", NULL}, &o), 0);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "a.example.com.", "/", NULL}, &o), 0);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "x.y.example.com", "/", NULL}, &o), 1);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "example.com", "/", NULL}, &o), 3);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "api.internal", "/", NULL}, &o), 2);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "api", "/", NULL}, &o), 3);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", NULL, "/", NULL}, &o), 3);
    lp_router_free(r);
}

static void test_paths(void)
{
    static const troute_t t[] = {
        {.pkind = 1, .path = "/users/:id/orders/*rest"},
        {.pkind = 1, .path = "/users/:id"},
        {.pkind = 1, .path = "/users/me"}, /* after :id: never reached by /users/me */
        {.pkind = 2, .path = "/static/"},
        {.pkind = 3, .path = "^/v(?<ver>[0-9]+)/(?<thing>[a-z]+)$"},
        {.pkind = 1, .path = "/exact"},
        {.pkind = 2, .path = "/"},
    };
    lp_router_t *r = build(t, LP_ARRAY_LEN(t));
    REQUIRE(r);
    lp_route_out_t o;
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/users/42/orders/7/items", NULL}, &o), 0);
    CHECK_SLICE(cap(&o, "id"), "42");
    CHECK_SLICE(cap(&o, "rest"), "7/items");
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/users/42/orders/", NULL}, &o), 0);
    CHECK_SLICE(cap(&o, "rest"), "");
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/users/me", NULL}, &o), 1);
    CHECK_SLICE(cap(&o, "id"), "me");
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/users/", NULL}, &o), 6);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/static/a.css", NULL}, &o), 3);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/v2/cats", NULL}, &o), 4);
    CHECK_SLICE(cap(&o, "ver"), "2");
    CHECK_SLICE(cap(&o, "thing"), "cats");
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/v2/cats/1", NULL}, &o), 6);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/exact", NULL}, &o), 5);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/exact/", NULL}, &o), 6);
    CHECK_EQ_INT(one(r, &(treq_t){"OPTIONS", "h", "*", NULL}, &o), 6);
    lp_router_free(r);
}

static void test_conditions(void)
{
    static const troute_t t[] = {
        {.method = "POST"},
        {.hname = "X-Env", .hval = "prod"},
        {.hname = "x-debug"},
        {.hname = "user-agent", .hval = "^curl/", .hregex = 1},
        {.qname = "v", .qval = "a b"},
        {.qname = "flag"},
        {.cidr = "10.0.0.0/8"},
        {.cidr = "2001:db8::/32"},
        {.sni = "*.example.com"},
        {.predicate = 1},
        {.pkind = 2, .path = "/"},
    };
    lp_router_t *r = build(t, LP_ARRAY_LEN(t));
    REQUIRE(r);
    lp_route_out_t o;
    CHECK_EQ_INT(one(r, &(treq_t){"POST", "h", "/", NULL}, &o), 0);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/", NULL, "x-env", "prod"}, &o), 1);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/", NULL, "x-env", "dev"}, &o), 9);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/", NULL, "X-Debug", ""}, &o), 2);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/", NULL, "user-agent", "curl/8"}, &o), 3);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/", NULL, NULL, NULL, "x=1&v=a+b"}, &o), 4);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/", NULL, NULL, NULL, "v=a%20b"}, &o), 4);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/", NULL, NULL, NULL, "flag="}, &o), 5);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/", NULL, NULL, NULL, NULL, "10.1.2.3"}, &o), 6);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/", NULL, NULL, NULL, NULL, "11.1.2.3"}, &o), 9);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/", NULL, NULL, NULL, NULL, "2001:db8::1"}, &o), 7);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/", "www.example.com"}, &o), 8);
    /* The predicate's route comes back flagged; the caller runs it and, on false, asks
     * again from the next index. */
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/", "example.com"}, &o), 9);
    CHECK(o.predicate);
    lp_route_in_t in;
    make_in(&in, &(treq_t){"GET", "h", "/", NULL}, r, NULL);
    CHECK_EQ_INT(lp_router_match(r, &in, 10, &o), 10);
    CHECK(!o.predicate);
    lp_router_free(r);
}

static void test_bad_routes(void)
{
    char err[256];
    lp_rbuild_t *b = lp_rbuild_new();
    REQUIRE(lp_rbuild_route(b) == 0);
    CHECK(lp_rbuild_add(b, LP_RK_REGEX, 0, NULL, 0, "^(", 2, err, sizeof(err)) < 0);
    CHECK_CONTAINS(err, "bad regex");
    REQUIRE(lp_rbuild_route(b) == 1);
    CHECK(lp_rbuild_add(b, LP_RK_PATH, 0, NULL, 0, "/a/*r/b", 7, err, sizeof(err)) < 0);
    CHECK_CONTAINS(err, "last segment");
    lp_rbuild_free(b);
    b = lp_rbuild_new();
    REQUIRE(lp_rbuild_route(b) == 0);
    CHECK(lp_rbuild_add(b, LP_RK_PREFIX, 0, NULL, 0, "/a", 2, err, sizeof(err)) == 0);
    CHECK(lp_rbuild_add(b, LP_RK_PATH, 0, NULL, 0, "/a", 2, err, sizeof(err)) < 0);
    CHECK_CONTAINS(err, "one of path");
    CHECK(lp_rbuild_add(b, LP_RK_CIDR, 0, NULL, 0, "10.0.0.0/33", 11, err, sizeof(err)) < 0);
    CHECK(lp_rbuild_add(b, LP_RK_HOST, 0, NULL, 0, "a.*.com", 7, err, sizeof(err)) < 0);
    lp_rbuild_free(b);
}

static size_t shadowed[16], shadower[16], nshadow;

static void on_shadow(void *ud, size_t route, size_t by)
{
    (void)ud;
    if (nshadow < 16) {
        shadowed[nshadow] = route;
        shadower[nshadow] = by;
    }
    nshadow++;
}

static void test_shadows(void)
{
    static const troute_t t[] = {
        {.pkind = 2, .path = "/api"},                        /* 0 */
        {.pkind = 2, .path = "/api/v1"},                     /* 1: by 0 */
        {.host = "*.example.com", .pkind = 2, .path = "/"},  /* 2 */
        {.host = "a.example.com", .pkind = 1, .path = "/x"}, /* 3: by 2 */
        {.host = "b.example.com", .method = "GET"},          /* 4: by 2 */
        {.pkind = 1, .path = "/exact"},                      /* 5 */
        {.pkind = 1, .path = "/exact"},                      /* 6: by 5 */
        {.pkind = 1, .path = "/u/:id"},                      /* 7 */
        {.pkind = 1, .path = "/u/me"},                       /* 8: by 7 */
        {.method = "POST", .pkind = 2, .path = "/b"},        /* 9 */
        {.pkind = 2, .path = "/b/c"},                        /* 10: 9 has a method */
        {.host = "api.*", .pkind = 2, .path = "/"},          /* 11 */
        {.host = "api.v2.*"},                                /* 12: by 11 */
        {.pkind = 3, .path = "^/api/(?<x>.*)"},              /* 13: by 0 */
        {.pkind = 1, .path = "/u/:id"},                      /* 14: by 7 (the same) */
        {.pkind = 1, .path = "/u/:uid"},                     /* 15: by 7 (another name) */
        {.pkind = 1, .path = "/f/*rest"},                    /* 16 */
        {.pkind = 2, .path = "/f/"},                         /* 17: by 16 */
        {.pkind = 2, .path = "/f"},                          /* 18: /fx is not 16's */
        {.pkind = 1, .path = "/f/a/:x"},                     /* 19: by 16 */
        {.pkind = 2, .path = "/u/me"},                       /* 20: /u/me/x is not 7's */
        {.pkind = 1, .path = "/u/:id/x"},                    /* 21: 7 ends at :id */
        {.host = "*.ex.org", .pkind = 1, .path = "/h/:id"},  /* 22 */
        {.host = "b.ex.org", .pkind = 1, .path = "/h/7"},    /* 23: by 22 */
        {.host = "c.other.org", .pkind = 1, .path = "/h/7"}, /* 24: another host */
        {.pkind = 1, .path = "/u//x"},                       /* 25: :id takes no empty segment */
        {.pkind = 2, .path = "/"},                           /* 26 */
        {.pkind = 1, .path = "/*all"},                       /* 27: by 26 */
        {.pkind = 2, .path = "/"},                           /* 28: by 26 (27 leaves OPTIONS *) */
    };
    lp_router_t *r = build(t, LP_ARRAY_LEN(t));
    REQUIRE(r);
    nshadow = 0;
    static const size_t want[][2] = {{1, 0},   {3, 2},   {4, 2},   {6, 5},  {8, 7},
                                     {12, 11}, {13, 0},  {14, 7},  {15, 7}, {17, 16},
                                     {19, 16}, {23, 22}, {27, 26}, {28, 26}};
    CHECK_EQ_INT(lp_router_shadows(r, on_shadow, NULL), LP_ARRAY_LEN(want));
    for (size_t i = 0; i < LP_ARRAY_LEN(want) && i < nshadow; i++) {
        CHECK_EQ_INT(shadowed[i], want[i][0]);
        CHECK_EQ_INT(shadower[i], want[i][1]);
    }
    lp_router_free(r);
}

/* The one sentence -t, POST /routes and explain print: a default name is not repeated. */
static void test_shadow_text(void)
{
    char out[300];
    lp_router_shadow_text(out, sizeof(out), 7, "me", 6, "user");
    CHECK_STR(out, "routes[8] (me) can never match: routes[7] (user) before it takes all its "
                   "requests");
    lp_router_shadow_text(out, sizeof(out), 1, "route#2", 0, NULL);
    CHECK_STR(out, "routes[2] can never match: routes[1] before it takes all its requests");
    lp_router_shadow_text(out, sizeof(out), 2, "route#1", 0, "admin#1");
    CHECK_STR(out, "routes[3] (route#1) can never match: routes[1] (admin#1) before it takes "
                   "all its requests");
}

/* ---- the property test ---- */

static unsigned rnd_state = 12345;

static unsigned rnd(unsigned n)
{
    rnd_state = rnd_state * 1103515245u + 12345u;
    return (rnd_state >> 8) % n;
}

#define PICK(arr) (arr)[rnd(LP_ARRAY_LEN(arr))]

static const char *const SEGS[] = {"a", "b", "ab", "users", "1", "42"};

static void rand_path(char *out, size_t cap, int pattern)
{
    size_t n = 0;
    unsigned segs = 1 + rnd(3);
    int rest = 0;
    out[0] = 0;
    for (unsigned i = 0; i < segs; i++) {
        const char *s = PICK(SEGS);
        if (pattern && rnd(4) == 0)
            s = PICK(((const char *const[]){":p", ":q", ":id"}));
        if (pattern && i == segs - 1 && rnd(5) == 0) {
            s = "*rest";
            rest = 1;
        }
        n += (size_t)snprintf(out + n, cap - n, "/%s", s);
    }
    if (!rest && rnd(6) == 0)
        snprintf(out + n, cap - n, "/");
}

static const char *const HOSTS[] = {"a.com",     "b.a.com", "*.a.com", "x.*",
                                    "*.b.a.com", "api.*",   "x.y"};
static const char *const RHOSTS[] = {"a.com", "b.a.com",  "c.b.a.com", "x.a.com", "api.a.com",
                                     "x.y",   "A.COM:80", "b.a.com.",  "x.y.z",   ""};
/* Anchored and not, with and without a literal head, case-insensitive, and some Hyperscan
 * matches only approximately (HS_FLAG_PREFILTER: backreferences, lookarounds) or refuses
 * (a conditional group, \G): the regex routes without a head share one prefilter. */
static const char *const REGEXES[] = {"^/a/(?<n>[0-9]+)",
                                      "^/(?<first>[a-z]+)/1",
                                      "b$",
                                      "^/users/(?<u>[^/]+)$",
                                      "^/ab?/",
                                      "^/(a|b)/",
                                      "(?i)/A(?<x>B)?/",
                                      "/(?<s>[ab])/\\1",
                                      "(?<=/)1",
                                      "^/(?:a|b)(?=/a)",
                                      "(?<o>a)?(?(o)b|42)",
                                      "\\G/users",
                                      "/(?<d>\\d+)$",
                                      "[^/]b/",
                                      "(?i)^/USERS"};
static const char *const CIDRS[] = {"10.0.0.0/8", "10.1.0.0/16", "::1", "10.1.2.3"};
static const char *const ADDRS[] = {"10.1.2.3", "10.2.0.1", "192.168.0.1", "::1"};
static const char *const QUERIES[] = {"q=1", "q=%31", "q=2&r=", "r=1", "q"};

/* A random route into x, its path (when it has one of its own) into path. */
static void rand_route(troute_t *x, char *path, size_t cap)
{
    memset(x, 0, sizeof(*x));
    if (rnd(2))
        x->host = PICK(HOSTS);
    x->pkind = (int)rnd(4);
    if (x->pkind == 3)
        x->path = PICK(REGEXES);
    else if (x->pkind) {
        rand_path(path, cap, x->pkind == 1);
        if (x->pkind == 2 && rnd(3) == 0 && strlen(path) > 2)
            path[strlen(path) - 1] = 0; /* a prefix inside a segment */
        x->path = path;
    }
    if (rnd(5) == 0)
        x->method = rnd(2) ? "GET" : "POST";
    if (rnd(6) == 0) {
        x->hname = rnd(3) ? "x-h" : "x-other";
        unsigned m = rnd(3);
        x->hval = m == 0 ? NULL : m == 1 ? "1" : "^[12]$";
        x->hregex = m == 2;
    }
    if (rnd(6) == 0) {
        x->qname = rnd(2) ? "q" : "r";
        x->qval = rnd(2) ? "1" : NULL;
    }
    if (rnd(8) == 0)
        x->cidr = PICK(CIDRS);
    if (rnd(8) == 0)
        x->sni = rnd(2) ? "a.com" : "*.a.com";
}

/* n random requests compared between r and the reference over t; the count compared (less
 * than n after a difference). */
static int compare_random(const troute_t *t, size_t n, const lp_router_t *r, int reqs, int *matched)
{
    int compared = 0;
    for (int k = 0; k < reqs; k++) {
        char path[64];
        rand_path(path, sizeof(path), 0);
        treq_t q = {rnd(3) ? "GET" : "POST", PICK(RHOSTS), rnd(40) ? path : "*",
                    rnd(3) ? NULL : PICK(((const char *const[]){"a.com", "b.a.com"}))};
        if (rnd(2)) {
            q.hname = rnd(4) ? "X-H" : "x-other";
            q.hval = PICK(((const char *const[]){"1", "2", "3"}));
        }
        if (rnd(2))
            q.query = PICK(QUERIES);
        if (rnd(3))
            q.addr = PICK(ADDRS);
        int from = n && rnd(4) == 0 ? (int)rnd((unsigned)n) : 0;
        if (!same(t, n, r, &q, from, (int)rnd(2)))
            break;
        compared++;
        rcap_t caps[LP_ROUTE_MAX_CAPS];
        int nc;
        *matched += ref_match(t, n, &q, from, caps, &nc) >= 0;
    }
    return compared;
}

static void test_property(void)
{
    char paths[400][64];
    troute_t t[400];
    int compared = 0, matched = 0;
    size_t sets_pending = 0, sets_compiled = 0;
    lp_hsdb_hold(1);
    for (int round = 0; round < 300; round++) {
        size_t n = 1 + rnd(round < 100 ? 10 : 400);
        for (size_t i = 0; i < n; i++)
            rand_route(&t[i], paths[i], sizeof(paths[i]));
        lp_router_t *r0 = build(t, n);
        REQUIRE(r0);
        /* Every other round, the table as the admin API rebuilds it: each route copied. */
        lp_router_t *r = r0;
        if (round % 2) {
            lp_rbuild_t *b = lp_rbuild_new();
            char err[256];
            for (size_t i = 0; i < n; i++) {
                REQUIRE(lp_rbuild_route(b) == (int)i);
                CHECK(lp_rbuild_copy(b, r0, i, err, sizeof(err)) == 0);
            }
            REQUIRE((r = lp_rbuild_finish(b, err, sizeof(err))));
            lp_router_free(r0);
        }
        /* Before the compile thread made the prefilter's databases (PCRE2 alone), then
         * after (the prefilter narrowing): the same answers. */
        size_t ready, sets = lp_router_rx_sets(r, &ready);
        CHECK_EQ_INT((int)ready, 0);
        sets_pending += sets;
        compared += compare_random(t, n, r, 30, &matched);
        if (sets && round % COMPILE_EVERY == 0) {
            REQUIRE(compile_now(r));
            sets_compiled += sets;
        }
        compared += compare_random(t, n, r, 30, &matched);
        lp_router_free(r);
        if (lp_test_failures)
            break;
    }
    lp_hsdb_hold(0);
    printf("property: %d requests compared, %d matched a route; %zu prefilter chunks checked "
           "before compiling, %zu after\n",
           compared, matched, sets_pending, sets_compiled);
    CHECK(compared == 300 * 60);
    CHECK(matched > compared / 4);
    CHECK(sets_compiled > 10);
}

/* A table as the reference sees it: routes and their own paths, kept side by side. */
typedef struct {
    troute_t t[300];
    char paths[300][64];
    size_t n;
} rtab_t;

/* After a move, x->path points into the other slot's buffer: point it at its own again. */
static void repoint(rtab_t *tb, size_t i)
{
    if (tb->t[i].pkind == 1 || tb->t[i].pkind == 2)
        tb->t[i].path = tb->paths[i];
}

static size_t count_shadows(const lp_router_t *r)
{
    return lp_router_shadows(r, NULL, NULL);
}

/* Random batches of add / replace / remove applied to a table by lp_router_derive, each
 * router against the reference over the table it was made for -- the new one, and the one
 * it was derived from, still in use (immutable: what derive shares, it does not change) --
 * and the shadows it reports equal to a fresh build's. */
static void test_property_incremental(void)
{
    static rtab_t cur, prev;
    int compared = 0, matched = 0, changes = 0, fresh_checked = 0, compiled = 0;
    lp_hsdb_hold(1);
    for (int round = 0; round < 40 && !lp_test_failures; round++) {
        cur.n = 1 + rnd(round < 10 ? 8 : 250);
        for (size_t i = 0; i < cur.n; i++)
            rand_route(&cur.t[i], cur.paths[i], sizeof(cur.paths[i]));
        lp_router_t *r = build(cur.t, cur.n), *keep = NULL;
        REQUIRE(r);
        for (int step = 0; step < 40 && !lp_test_failures; step++) {
            prev = cur;
            for (size_t i = 0; i < prev.n; i++)
                repoint(&prev, i);
            /* src[i]: where route i of the new table comes from (-1: new). */
            long src[300];
            for (size_t i = 0; i < cur.n; i++)
                src[i] = (long)i;
            lp_rbuild_t *b = lp_rbuild_new();
            REQUIRE(b);
            unsigned nops = 1 + rnd(3);
            /* New routes go to b in table order: made first, numbered after. */
            troute_t made[300];
            char mpaths[300][64];
            int isnew[300] = {0};
            for (unsigned o = 0; o < nops; o++) {
                unsigned what = rnd(3);
                if (what == 0 && cur.n < 299) { /* add at */
                    size_t at = rnd((unsigned)cur.n + 1);
                    memmove(&cur.t[at + 1], &cur.t[at], (cur.n - at) * sizeof(cur.t[0]));
                    memmove(cur.paths[at + 1], cur.paths[at], (cur.n - at) * sizeof(cur.paths[0]));
                    memmove(&src[at + 1], &src[at], (cur.n - at) * sizeof(src[0]));
                    memmove(&isnew[at + 1], &isnew[at], (cur.n - at) * sizeof(isnew[0]));
                    cur.n++;
                    rand_route(&cur.t[at], cur.paths[at], sizeof(cur.paths[at]));
                    src[at] = -1;
                    isnew[at] = 1;
                } else if (what == 1 && cur.n) { /* replace */
                    size_t at = rnd((unsigned)cur.n);
                    rand_route(&cur.t[at], cur.paths[at], sizeof(cur.paths[at]));
                    src[at] = -1;
                    isnew[at] = 1;
                } else if (cur.n) { /* remove */
                    size_t at = rnd((unsigned)cur.n);
                    memmove(&cur.t[at], &cur.t[at + 1], (cur.n - at - 1) * sizeof(cur.t[0]));
                    memmove(cur.paths[at], cur.paths[at + 1],
                            (cur.n - at - 1) * sizeof(cur.paths[0]));
                    memmove(&src[at], &src[at + 1], (cur.n - at - 1) * sizeof(src[0]));
                    memmove(&isnew[at], &isnew[at + 1], (cur.n - at - 1) * sizeof(isnew[0]));
                    cur.n--;
                }
                for (size_t i = 0; i < cur.n; i++)
                    repoint(&cur, i);
            }
            size_t nmade = 0;
            for (size_t i = 0; i < cur.n; i++)
                if (isnew[i]) {
                    made[nmade] = cur.t[i];
                    if (made[nmade].pkind == 1 || made[nmade].pkind == 2) {
                        snprintf(mpaths[nmade], sizeof(mpaths[nmade]), "%s", cur.paths[i]);
                        made[nmade].path = mpaths[nmade];
                    }
                    REQUIRE(lp_rbuild_route(b) >= 0);
                    REQUIRE(add_route(b, i, &made[nmade]) == 0);
                    nmade++;
                }
            char err[256];
            lp_router_t *r2 = lp_router_derive(r, src, cur.n, b, err, sizeof(err));
            REQUIRE(r2);
            changes += (int)nops;
            REQUIRE(lp_router_count(r2) == cur.n);
            /* Chunks shared with r as compiled as they were there, the changed ones not
             * yet; every few steps, all compiled. */
            compared += compare_random(cur.t, cur.n, r2, 15, &matched);
            if (step % (4 * COMPILE_EVERY) == 1 && lp_router_rx_sets(r2, NULL)) {
                REQUIRE(compile_now(r2));
                compiled++;
            }
            compared += compare_random(cur.t, cur.n, r2, 15, &matched);
            /* The router it came from still answers for its own table. */
            compared += compare_random(prev.t, prev.n, r, 10, &matched);
            if (step % 5 == 0) {
                lp_router_t *f = build(cur.t, cur.n);
                REQUIRE(f);
                CHECK_EQ_INT(count_shadows(r2), count_shadows(f));
                lp_router_free(f);
                fresh_checked++;
            }
            /* The old router freed now, or one step later (after its successor derived a
             * router of its own): what they share outlives either. */
            lp_router_free(keep);
            keep = NULL;
            if (rnd(2))
                lp_router_free(r);
            else
                keep = r;
            r = r2;
        }
        lp_router_free(keep);
        keep = NULL;
        lp_router_free(r);
    }
    lp_hsdb_hold(0);
    printf("incremental: %d changes, %d requests compared, %d matched, %d shadow checks, %d "
           "compiled states\n",
           changes, compared, matched, fresh_checked, compiled);
    CHECK(compiled > 5);
    CHECK(compared == 40 * 40 * 40);
    CHECK(matched > compared / 5);
}

/* The prefilter alone: a pattern Hyperscan refuses is a candidate for every subject, the
 * others only where they (approximately) match. */
static void test_rxset_fallback(void)
{
    static const char *const pats[] = {"^/a",  "(x)\\1",     "(?<o>a)?(?(o)b|c)",
                                       "\\Gz", "(?i)^/case", "q(?=r)"};
    size_t lens[LP_ARRAY_LEN(pats)];
    uint32_t ids[LP_ARRAY_LEN(pats)];
    for (size_t i = 0; i < LP_ARRAY_LEN(pats); i++) {
        lens[i] = strlen(pats[i]);
        ids[i] = (uint32_t)(100 + i);
    }
    lp_hsdb_hold(1);
    lp_rxset_t *s = lp_rxset_new(pats, lens, ids, LP_ARRAY_LEN(pats));
    REQUIRE(s);
    uint32_t cand[16];
    /* Not compiled yet: every regex is a candidate. */
    CHECK(!lp_rxset_ready(s));
    CHECK_EQ_INT(lp_rxset_scan(s, "/CASE/x", 7, cand, 16), (int)LP_ARRAY_LEN(pats));
    CHECK_EQ_INT(lp_rxset_scan(s, "/CASE/x", 7, cand, 3), -1);
    unsigned long before = lp_hsdb_compiles();
    lp_hsdb_hold(0);
    REQUIRE(lp_hsdb_wait_idle(COMPILE_WAIT_MS) == 0);
    CHECK(lp_rxset_ready(s));
    CHECK(lp_hsdb_compiles() == before + 1);
    /* The same patterns known by other ids: the same database, nothing compiled again. */
    uint32_t ids2[LP_ARRAY_LEN(pats)];
    for (size_t i = 0; i < LP_ARRAY_LEN(pats); i++)
        ids2[i] = (uint32_t)(200 + i);
    lp_rxset_t *s2 = lp_rxset_new(pats, lens, ids2, LP_ARRAY_LEN(pats));
    REQUIRE(s2);
    CHECK(lp_rxset_ready(s2));
    size_t nfb = lp_rxset_fallbacks(s);
    printf("rxset: %zu of %zu patterns refused by Hyperscan\n", nfb, LP_ARRAY_LEN(pats));
    CHECK(nfb >= 1); /* \G */
    CHECK(nfb < LP_ARRAY_LEN(pats));
    int n = lp_rxset_scan(s, "/CASE/x", 7, cand, 16);
    REQUIRE(n >= 0);
    int has_case = 0, has_a = 0, has_cond = 0;
    for (int i = 0; i < n; i++) {
        has_case |= cand[i] == 104;
        has_a |= cand[i] == 100;
        has_cond |= cand[i] == 103;
    }
    CHECK(has_case);
    CHECK(!has_a);
    CHECK(has_cond); /* \G, refused: always a candidate */
    CHECK_EQ_INT(n, (int)(1 + nfb));
    /* More candidates than room: every regex must be tried. */
    CHECK_EQ_INT(lp_rxset_scan(s, "/a", 2, cand, (unsigned)nfb), -1);
    n = lp_rxset_scan(s2, "/CASE/x", 7, cand, 16);
    CHECK_EQ_INT(n, (int)(1 + nfb));
    int has_case2 = 0;
    for (int i = 0; i < n; i++)
        has_case2 |= cand[i] == 204;
    CHECK(has_case2);
    lp_rxset_unref(s);
    lp_rxset_unref(s2);
    CHECK(lp_hsdb_compiles() == before + 1);
    /* A set freed before the thread reached its job: the job is dropped, not compiled. */
    lp_hsdb_hold(1);
    static const char *const other[] = {"^/dropped", "x+y"};
    size_t olens[] = {9, 3};
    lp_rxset_t *s3 = lp_rxset_new(other, olens, ids, 2);
    REQUIRE(s3);
    lp_rxset_unref(s3);
    lp_hsdb_hold(0);
    REQUIRE(lp_hsdb_wait_idle(COMPILE_WAIT_MS) == 0);
    CHECK(lp_hsdb_compiles() == before + 1);
    CHECK_EQ_INT(lp_hsdb_count(LP_HSDB_KIND_ROUTER), 0);
}

/* REGEX_MANY regex routes without a literal head (one list, in chunks): the last one's
 * request gets it and its captures; an earlier route Hyperscan refuses still wins when it
 * matches -- before the chunks are compiled and after. The same table built again compiles
 * nothing (shared by pattern text); a derived router (one route replaced) compiles only the
 * changed chunk, asynchronously, answering meanwhile; its base keeps answering. */
static void check_many(const lp_router_t *r)
{
    enum { N = REGEX_MANY, A = N / 2, B = N * 3 / 5, C = N * 7 / 10 };
    lp_route_out_t o;
    char p[64];
    snprintf(p, sizeof(p), "/re%d/42", N - 1);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", p, NULL}, &o), N - 1);
    CHECK_SLICE(cap(&o, "n"), "42");
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/re0/7", NULL}, &o), 0);
    CHECK_SLICE(cap(&o, "n"), "7");
    snprintf(p, sizeof(p), "/x%d/9", A);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", p, NULL}, &o), A);
    CHECK_SLICE(cap(&o, "c"), "x");
    snprintf(p, sizeof(p), "/y%d/9", A);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", p, NULL}, &o), -1);
    snprintf(p, sizeof(p), "/x%d/9", B);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", p, NULL}, &o), B);
    snprintf(p, sizeof(p), "/y%d/9", B);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", p, NULL}, &o), B);
    snprintf(p, sizeof(p), "/x%dx/9", B);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", p, NULL}, &o), -1);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/ci/5", NULL}, &o), C);
    snprintf(p, sizeof(p), "/re%d/1", N);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", p, NULL}, &o), -1);
    snprintf(p, sizeof(p), "/re%d/x", N - 1);
    CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", p, NULL}, &o), -1);
}

static void test_regex_many(void)
{
    enum { N = REGEX_MANY, A = N / 2, B = N * 3 / 5, C = N * 7 / 10 };
    static char pats[N][64];
    static troute_t t[N];
    for (int i = 0; i < N; i++) {
        snprintf(pats[i], sizeof(pats[i]), "^/(?:re%d)/(?<n>\\d+)$", i);
        t[i] = (troute_t){.pkind = 3, .path = pats[i]};
    }
    /* \G (refused by Hyperscan: always a candidate) at A, a conditional group (matched
     * approximately) at B: */
    snprintf(pats[A], sizeof(pats[A]), "\\G/(?<c>x)%d/(?<n>\\d+)$", A);
    snprintf(pats[B], sizeof(pats[B]), "^/(?<c>x)?(?(c)%d|y%d)/(?<n>\\d+)$", B, B);
    snprintf(pats[C], sizeof(pats[C]), "(?i)^/(?:CI)/(?<n>\\d+)$");
    lp_hsdb_hold(1);
    unsigned long c0 = lp_hsdb_compiles();
    lp_router_t *r = build(t, N);
    REQUIRE(r);
    size_t ready, sets = lp_router_rx_sets(r, &ready);
    CHECK_EQ_INT((int)sets, (N + 127) / 128);
    CHECK_EQ_INT((int)ready, 0);
    check_many(r); /* PCRE2 alone */
    REQUIRE(compile_now(r));
    CHECK(lp_hsdb_compiles() == c0 + sets);
    check_many(r); /* the prefilter */
    /* A reload with the same routes: every chunk found compiled, nothing compiled again. */
    lp_router_t *again = build(t, N);
    REQUIRE(again);
    CHECK_EQ_INT((int)lp_router_rx_sets(again, &ready), (int)sets);
    CHECK_EQ_INT((int)ready, (int)sets);
    REQUIRE(compile_now(again));
    CHECK(lp_hsdb_compiles() == c0 + sets);
    lp_router_free(again);
    /* Route 3 replaced by one that takes /re<N-1>/...: derived, it now wins, before and after
     * its chunk (only that one) is compiled again. */
    static troute_t nt[1];
    static char npat[64];
    snprintf(npat, sizeof(npat), "^/re%d/(?<m>\\d+)", N - 1);
    nt[0] = (troute_t){.pkind = 3, .path = npat};
    long src[N];
    for (int i = 0; i < N; i++)
        src[i] = i == 3 ? -1 : i;
    lp_rbuild_t *b = lp_rbuild_new();
    REQUIRE(b);
    REQUIRE(lp_rbuild_route(b) == 0);
    REQUIRE(add_route(b, 0, &nt[0]) == 0);
    char err[256];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    lp_router_t *r2 = lp_router_derive(r, src, N, b, err, sizeof(err));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    REQUIRE(r2);
    printf("regex_many: one route replaced among %d regex routes: derived in %.1f ms\n", N,
           (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    CHECK_EQ_INT((int)lp_router_rx_sets(r2, &ready), (int)sets);
    CHECK_EQ_INT((int)ready, (int)sets - 1);
    lp_route_out_t o;
    char p[64];
    for (int state = 0; state < 2; state++) {
        snprintf(p, sizeof(p), "/re%d/42", N - 1);
        CHECK_EQ_INT(one(r2, &(treq_t){"GET", "h", p, NULL}, &o), 3);
        CHECK_SLICE(cap(&o, "m"), "42");
        CHECK_EQ_INT(one(r2, &(treq_t){"GET", "h", "/re3/1", NULL}, &o), -1);
        CHECK_EQ_INT(one(r2, &(treq_t){"GET", "h", "/re2/1", NULL}, &o), 2);
        CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", "/re3/1", NULL}, &o), 3);
        CHECK_EQ_INT(one(r, &(treq_t){"GET", "h", p, NULL}, &o), N - 1);
        if (state == 0) {
            REQUIRE(compile_now(r2));
            CHECK(lp_hsdb_compiles() == c0 + sets + 1);
        }
    }
    lp_router_free(r);
    snprintf(p, sizeof(p), "/re%d/1", N - 2);
    CHECK_EQ_INT(one(r2, &(treq_t){"GET", "h", p, NULL}, &o), N - 2);
    lp_router_free(r2);
    lp_hsdb_hold(0);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_rxset_fallback), LP_TEST_ENTRY(test_regex_many),
    LP_TEST_ENTRY(test_hosts),          LP_TEST_ENTRY(test_paths),
    LP_TEST_ENTRY(test_conditions),     LP_TEST_ENTRY(test_bad_routes),
    LP_TEST_ENTRY(test_shadows),        LP_TEST_ENTRY(test_shadow_text),
    LP_TEST_ENTRY(test_property),       LP_TEST_ENTRY(test_property_incremental),
};

LP_TEST_MAIN(tests)
