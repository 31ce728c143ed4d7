/* The compiled router: see router.h and docs/routing.md. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "router.h"
#include "realip.h"
#include "router_hs.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { H_ANY = 0, H_EXACT, H_WILD, H_PFX };
enum { P_ANY = 0, P_EXACT, P_PREFIX, P_REGEX };

typedef struct {
    uint32_t slot; /* index into the router's header or query names */
    int query;     /* a query argument, else a header */
    int mode;      /* LP_RM_* */
    char *value;   /* owned: the value or regex source; NULL for LP_RM_PRESENT */
    size_t vlen;
    pcre2_code *re; /* owned: LP_RM_REGEX */
} cond_t;

/* A client network: realip.c's CIDRs and matching (one implementation for every short
 * list of networks: IPv4-mapped IPv6 clients match IPv4 networks there too). */
typedef struct {
    lp_cidr_t net;
    char text[64]; /* as given, for lp_rbuild_copy */
} cidr_t;

typedef struct {
    int hkind;
    char *host; /* owned: lower case; ".example.com" for H_WILD, "api" for H_PFX */
    int pkind;
    char *path; /* owned: the pattern, prefix or regex as given (NUL-terminated) */
    size_t plen;
    size_t lit_len; /* bytes of the path that are literal from its start (see tree_key) */
    int has_params; /* path has :name or *name */
    pcre2_code *re; /* owned: P_REGEX */
    uint32_t re_names, re_entry; /* named groups of re and the size of one name entry */
    PCRE2_SPTR re_table;         /* borrowed from re: its name table */
    char **pnames;               /* owned array of npnames owned names, in path order */
    unsigned npnames;
    char **methods; /* owned array of nmethods owned upper-case names */
    size_t nmethods;
    char *sni; /* owned: lower case; ".example.com" when sni_wild */
    int sni_wild;
    cond_t *conds; /* owned array */
    size_t nconds;
    cidr_t *cidrs; /* owned array */
    size_t ncidrs;
    int predicate; /* the caller runs a Lua predicate once the rest matched */
    unsigned refs; /* atomic: the routers holding it (a derived router shares the routes it
                      keeps with its base: lp_router_derive) */
} route_t;

typedef struct {
    uint32_t *v; /* owned: route indexes, ascending (routes are inserted in order) */
    uint32_t n, cap;
} ids_t;

/* Tree nodes are shared between a router and the routers derived from it
 * (lp_router_derive): a derived router copies the nodes on the paths it changes and holds a
 * reference to all the others. A node is changed in place only while one router holds it
 * (refs == 1: the router being built), so a router in use never sees a change. */
typedef struct rnode_s {
    unsigned refs; /* atomic: parents (or hash entries, or routers) holding it */
    char *label;   /* owned: the bytes of the edge into this node */
    size_t llen;
    struct rnode_s **kids; /* owned array of references, sorted by label[0] */
    uint32_t nkids;
    struct rnode_s *param; /* reference: the node after one `:name` segment; NULL: none */
    char *hkey;            /* owned: a bucket's root: its host key (the hash entry borrows it) */
    /* The lists hold route uids, in table order (by the router's pos[uid]). */
    ids_t exact;  /* routes whose whole path ends here */
    ids_t prefix; /* routes whose prefix ends here */
    ids_t rx;     /* regex routes whose literal head ends here */
    ids_t rest;   /* `*name` routes: the rest of the path, possibly empty */
    /* The Hyperscan prefilter over rx (router_hs.h) in chunks of at most RX_CHUNK regexes,
     * so that a change recompiles one chunk, not the list; each chunk is shared with the
     * copies of this node. */
    lp_rxset_t **rxs; /* owned array of nrxs references; none: every regex of rx is tried */
    uint32_t nrxs;
    int rx_dirty; /* rx changed in the router being built: rxs is brought up to date at its end */
} rnode_t;

typedef struct {
    const char *key; /* borrowed from root->hkey; NULL: free slot */
    size_t klen;
    rnode_t *root; /* reference */
} hent_t;

typedef struct {
    hent_t *v; /* owned array of cap (a power of two) */
    size_t cap, n;
} htab_t;

typedef struct {
    char **v; /* owned array of owned names */
    size_t n, cap;
} names_t;

/* Routes have a uid, their index in `routes`, fixed for the life of the route (shared by the
 * routers derived from one another), and a position in table order, which an insertion or a
 * removal before them changes: the index stores uids (sorted by position: a change keeps the
 * relative order of the other routes), the answer is a position. */
struct lp_router_s {
    route_t **routes; /* owned array of cap (by uid): references, NULL for a uid not used */
    uint32_t *pos;    /* owned array of nuids: the position of each uid (UINT32_MAX: unused) */
    uint32_t *at;     /* owned array of nroutes: the uid at each position */
    size_t nroutes, nuids, cap;
    rnode_t *any;            /* reference: routes without a host (NULL in a builder) */
    htab_t exact, wild, pfx; /* by host, by ".suffix", by "prefix" */
    names_t hnames, qnames;  /* header (lower case) and query names the routes read */
    uint32_t max_pairs;      /* the most ovector pairs a regex needs */
    rnode_t **dirty;         /* owned array of borrowed nodes whose rx changed (while building:
                                their prefilter is made at the end, once per node) */
    size_t ndirty, dcap;
};

struct lp_rbuild_s {
    lp_router_t r; /* the routes as given (uid = position); lp_rbuild_finish indexes them */
};

/* ---- small helpers ---- */

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

static void lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

static int ids_push(ids_t *l, uint32_t id)
{
    if (l->n == l->cap) {
        uint32_t cap = l->cap ? l->cap * 2 : 2;
        uint32_t *v = realloc(l->v, cap * sizeof(*v));
        if (!v)
            return -1;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = id;
    return 0;
}

/* Inserts uid in table order (pos: the positions by uid); appending is the common case. */
static int ids_insert(ids_t *l, uint32_t id, const uint32_t *pos)
{
    if (ids_push(l, id))
        return -1;
    uint32_t i = l->n - 1;
    if (!i || pos[l->v[i - 1]] < pos[id])
        return 0;
    uint32_t lo = 0, hi = i;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (pos[l->v[mid]] < pos[id])
            lo = mid + 1;
        else
            hi = mid;
    }
    memmove(l->v + lo + 1, l->v + lo, (i - lo) * sizeof(*l->v));
    l->v[lo] = id;
    return 0;
}

static void ids_remove(ids_t *l, uint32_t id)
{
    for (uint32_t i = 0; i < l->n; i++)
        if (l->v[i] == id) {
            memmove(l->v + i, l->v + i + 1, (l->n - i - 1) * sizeof(*l->v));
            l->n--;
            return;
        }
}

static int ids_copy(ids_t *d, const ids_t *s)
{
    *d = (ids_t){NULL, 0, 0};
    if (!s->n)
        return 0;
    if (!(d->v = malloc(s->n * sizeof(*d->v))))
        return -1;
    memcpy(d->v, s->v, s->n * sizeof(*d->v));
    d->n = d->cap = s->n;
    return 0;
}

static int fail(char *err, size_t errlen, const char *msg)
{
    snprintf(err, errlen, "%s", msg);
    return -1;
}

static hent_t *hslot(const htab_t *t, const char *k, size_t n)
{
    if (!t->n)
        return NULL;
    for (size_t i = lp_hash64(k, n) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        hent_t *e = &t->v[i];
        if (!e->key)
            return NULL;
        if (e->klen == n && memcmp(e->key, k, n) == 0)
            return e;
    }
}

static rnode_t *hget(const htab_t *t, const char *k, size_t n)
{
    if (!t->n)
        return NULL;
    for (size_t i = lp_hash64(k, n) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        const hent_t *e = &t->v[i];
        if (!e->key)
            return NULL;
        if (e->klen == n && memcmp(e->key, k, n) == 0)
            return e->root;
    }
}

static int hgrow(htab_t *t)
{
    size_t cap = t->cap ? t->cap * 2 : 16;
    hent_t *v = calloc(cap, sizeof(*v));
    if (!v)
        return -1;
    for (size_t j = 0; j < t->cap; j++) {
        hent_t *e = &t->v[j];
        if (!e->key)
            continue;
        size_t i = lp_hash64(e->key, e->klen) & (cap - 1);
        while (v[i].key)
            i = (i + 1) & (cap - 1);
        v[i] = *e;
    }
    free(t->v);
    t->v = v;
    t->cap = cap;
    return 0;
}

static void node_unref(rnode_t *n)
{
    if (!n || __atomic_sub_fetch(&n->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (uint32_t i = 0; i < n->nkids; i++)
        node_unref(n->kids[i]);
    free(n->kids);
    node_unref(n->param);
    free(n->label);
    free(n->hkey);
    free(n->exact.v);
    free(n->prefix.v);
    free(n->rx.v);
    free(n->rest.v);
    for (uint32_t i = 0; i < n->nrxs; i++)
        lp_rxset_unref(n->rxs[i]);
    free(n->rxs);
    free(n);
}

static rnode_t *node_new(void)
{
    rnode_t *n = calloc(1, sizeof(*n));
    if (n)
        n->refs = 1;
    return n;
}

/* *slot, made this router's own to change: itself when no other router holds it, else a
 * copy (its kids shared) that replaces it in *slot. NULL when out of memory. */
static rnode_t *own_node(rnode_t **slot)
{
    rnode_t *n = *slot;
    if (__atomic_load_n(&n->refs, __ATOMIC_ACQUIRE) == 1)
        return n;
    rnode_t *c = node_new();
    if (!c)
        return NULL;
    int ok = 1;
    if (n->llen)
        ok = (c->label = dupn(n->label, n->llen)) != NULL;
    c->llen = n->llen;
    if (ok && n->hkey)
        ok = (c->hkey = strdup(n->hkey)) != NULL;
    if (ok && n->nkids) {
        if ((c->kids = malloc(n->nkids * sizeof(*c->kids)))) {
            memcpy(c->kids, n->kids, n->nkids * sizeof(*c->kids));
            c->nkids = n->nkids;
            for (uint32_t i = 0; i < n->nkids; i++)
                __atomic_add_fetch(&n->kids[i]->refs, 1, __ATOMIC_RELAXED);
        } else {
            ok = 0;
        }
    }
    if (ok && n->param) {
        c->param = n->param;
        __atomic_add_fetch(&n->param->refs, 1, __ATOMIC_RELAXED);
    }
    if (ok)
        ok = !ids_copy(&c->exact, &n->exact) && !ids_copy(&c->prefix, &n->prefix) &&
             !ids_copy(&c->rx, &n->rx) && !ids_copy(&c->rest, &n->rest);
    if (ok && n->nrxs) { /* valid while rx is unchanged; index_route marks it otherwise */
        if ((c->rxs = malloc(n->nrxs * sizeof(*c->rxs)))) {
            memcpy(c->rxs, n->rxs, n->nrxs * sizeof(*c->rxs));
            c->nrxs = n->nrxs;
            for (uint32_t i = 0; i < n->nrxs; i++)
                lp_rxset_ref(n->rxs[i]);
        } else {
            ok = 0;
        }
    }
    if (!ok) {
        node_unref(c);
        return NULL;
    }
    node_unref(n); /* the slot's reference moves to the copy */
    *slot = c;
    return c;
}

/* The root for key, made this router's own (created when missing). */
static rnode_t *hput(htab_t *t, const char *k, size_t n)
{
    hent_t *e = hslot(t, k, n);
    if (e) {
        rnode_t *root = own_node(&e->root);
        if (root)
            e->key = root->hkey;
        return root;
    }
    if ((t->n + 1) * 2 > t->cap && hgrow(t))
        return NULL;
    size_t i = lp_hash64(k, n) & (t->cap - 1);
    while (t->v[i].key)
        i = (i + 1) & (t->cap - 1);
    rnode_t *root = node_new();
    if (!root || !(root->hkey = dupn(k, n))) {
        node_unref(root);
        return NULL;
    }
    t->v[i] = (hent_t){root->hkey, n, root};
    t->n++;
    return root;
}

static void htab_free(htab_t *t)
{
    for (size_t i = 0; i < t->cap; i++)
        if (t->v[i].key)
            node_unref(t->v[i].root);
    free(t->v);
}

/* A copy of t sharing its roots. -1: out of memory. */
static int htab_copy(htab_t *d, const htab_t *t)
{
    *d = *t;
    if (!t->cap)
        return 0;
    if (!(d->v = malloc(t->cap * sizeof(*d->v)))) {
        *d = (htab_t){NULL, 0, 0};
        return -1;
    }
    memcpy(d->v, t->v, t->cap * sizeof(*d->v));
    for (size_t i = 0; i < t->cap; i++)
        if (d->v[i].key)
            __atomic_add_fetch(&d->v[i].root->refs, 1, __ATOMIC_RELAXED);
    return 0;
}

static long name_slot(names_t *ns, const char *name, size_t n)
{
    for (size_t i = 0; i < ns->n; i++)
        if (strlen(ns->v[i]) == n && memcmp(ns->v[i], name, n) == 0)
            return (long)i;
    if (ns->n == ns->cap) {
        size_t cap = ns->cap ? ns->cap * 2 : 4;
        char **v = realloc(ns->v, cap * sizeof(*v));
        if (!v)
            return -1;
        ns->v = v;
        ns->cap = cap;
    }
    if (!(ns->v[ns->n] = dupn(name, n)))
        return -1;
    return (long)ns->n++;
}

/* ---- building ---- */

lp_rbuild_t *lp_rbuild_new(void)
{
    return calloc(1, sizeof(lp_rbuild_t));
}

int lp_rbuild_route(lp_rbuild_t *b)
{
    lp_router_t *r = &b->r;
    if (r->nroutes == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 8;
        route_t **v = realloc(r->routes, cap * sizeof(*v));
        if (!v)
            return -1;
        r->routes = v;
        r->cap = cap;
    }
    if (!(r->routes[r->nroutes] = calloc(1, sizeof(route_t))))
        return -1;
    r->routes[r->nroutes]->refs = 1;
    r->nuids = r->nroutes + 1;
    return (int)r->nroutes++;
}

static pcre2_code *re_compile(const char *s, size_t n, char *err, size_t errlen)
{
    int ec;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)s, n, 0, &ec, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        snprintf(err, errlen, "bad regex at offset %zu: %s", (size_t)off, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* no JIT (unsupported CPU): interpreted */
    return re;
}

/* The literal head of an anchored regex: the bytes after ^ up to the first one that is
 * not a plain character or is followed by a quantifier; 0 when the regex is not anchored
 * or has an alternation (which could escape the anchor). */
static size_t regex_literal(const char *s, size_t n)
{
    if (n < 2 || s[0] != '^' || memchr(s, '|', n))
        return 0;
    size_t i = 1;
    while (i < n && !strchr("\\^$.[]()?*+{}|", s[i]))
        i++;
    /* A quantifier applies to the byte before it. */
    if (i < n && strchr("?*{", s[i]) && i > 1)
        i--;
    return i - 1;
}

static int parse_cidr(const char *s, size_t n, cidr_t *c)
{
    if (n >= sizeof(c->text))
        return -1;
    memset(c, 0, sizeof(*c));
    memcpy(c->text, s, n);
    return lp_cidr_parse(s, n, &c->net);
}

/* "a.example.com", "*.example.com" or "api.*" into kind and key. */
static int parse_host(const char *s, size_t n, int *kind, char **key)
{
    if (n == 1 && s[0] == '*') {
        *kind = H_ANY;
        *key = NULL;
        return 0;
    }
    if (n > 2 && s[0] == '*' && s[1] == '.') {
        *kind = H_WILD;
        *key = dupn(s + 1, n - 1);
    } else if (n > 2 && s[n - 1] == '*' && s[n - 2] == '.') {
        *kind = H_PFX;
        *key = dupn(s, n - 2);
    } else {
        *kind = H_EXACT;
        while (n && s[n - 1] == '.')
            n--;
        *key = dupn(s, n);
    }
    if (!*key)
        return -1;
    lower(*key);
    if (memchr(*key, '*', strlen(*key)))
        return -2;
    return 0;
}

/* Checks a path pattern and records its parameter names. */
static int parse_pattern(route_t *rt, char *err, size_t errlen)
{
    const char *p = rt->path;
    size_t n = rt->plen, lit = n;
    for (size_t i = 0; i < n; i++) {
        if ((p[i] != ':' && p[i] != '*') || i == 0 || p[i - 1] != '/')
            continue;
        if (lit == n)
            lit = i;
        size_t e = i + 1;
        while (e < n && p[e] != '/')
            e++;
        if (e == i + 1)
            return fail(err, errlen, "a :param or *rest needs a name");
        if (p[i] == '*' && e != n)
            return fail(err, errlen, "*rest must be the last segment");
        if (rt->npnames >= LP_ROUTE_MAX_CAPS)
            return fail(err, errlen, "too many parameters");
        char **v = realloc(rt->pnames, (rt->npnames + 1) * sizeof(*v));
        if (!v || !(v[rt->npnames] = dupn(p + i + 1, e - i - 1))) {
            if (v)
                rt->pnames = v;
            return fail(err, errlen, "out of memory");
        }
        rt->pnames = v;
        rt->npnames++;
        rt->has_params = 1;
        i = e - 1;
    }
    rt->lit_len = lit;
    return 0;
}

int lp_rbuild_add(lp_rbuild_t *b, int kind, int mode, const char *name, size_t nlen,
                  const char *value, size_t vlen, char *err, size_t errlen)
{
    lp_router_t *r = &b->r;
    if (!r->nroutes)
        return fail(err, errlen, "no route started");
    route_t *rt = r->routes[r->nroutes - 1];
    switch (kind) {
    case LP_RK_HOST: {
        if (rt->host || rt->hkind)
            return fail(err, errlen, "one host per route");
        int rc = parse_host(value, vlen, &rt->hkind, &rt->host);
        if (rc)
            return fail(err, errlen,
                        rc == -2 ? "a host wildcard is *.suffix or prefix.*" : "out of memory");
        return 0;
    }
    case LP_RK_PATH:
    case LP_RK_PREFIX:
    case LP_RK_REGEX:
        if (rt->pkind)
            return fail(err, errlen, "use one of path, prefix and regex");
        if (kind != LP_RK_REGEX && (vlen == 0 || value[0] != '/'))
            return fail(err, errlen, "a path or prefix starts with /");
        if (!(rt->path = dupn(value, vlen)))
            return fail(err, errlen, "out of memory");
        rt->plen = vlen;
        rt->lit_len = vlen;
        if (kind == LP_RK_PATH) {
            rt->pkind = P_EXACT;
            return parse_pattern(rt, err, errlen);
        }
        if (kind == LP_RK_PREFIX) {
            rt->pkind = P_PREFIX;
            return 0;
        }
        rt->pkind = P_REGEX;
        if (!(rt->re = re_compile(value, vlen, err, errlen)))
            return -1;
        uint32_t ncap = 0;
        pcre2_pattern_info(rt->re, PCRE2_INFO_CAPTURECOUNT, &ncap);
        if (ncap + 1 > r->max_pairs)
            r->max_pairs = ncap + 1;
        pcre2_pattern_info(rt->re, PCRE2_INFO_NAMECOUNT, &rt->re_names);
        pcre2_pattern_info(rt->re, PCRE2_INFO_NAMEENTRYSIZE, &rt->re_entry);
        pcre2_pattern_info(rt->re, PCRE2_INFO_NAMETABLE, &rt->re_table);
        if (rt->re_names > LP_ROUTE_MAX_CAPS)
            return fail(err, errlen, "too many named groups");
        rt->lit_len = regex_literal(value, vlen);
        return 0;
    case LP_RK_METHOD: {
        char **v = realloc(rt->methods, (rt->nmethods + 1) * sizeof(*v));
        if (!v)
            return fail(err, errlen, "out of memory");
        rt->methods = v;
        if (!(v[rt->nmethods] = dupn(value, vlen)))
            return fail(err, errlen, "out of memory");
        for (char *m = v[rt->nmethods]; *m; m++)
            *m = (char)toupper((unsigned char)*m);
        rt->nmethods++;
        return 0;
    }
    case LP_RK_HEADER:
    case LP_RK_QUERY: {
        if (mode < LP_RM_PRESENT || mode > LP_RM_REGEX || !nlen)
            return fail(err, errlen, "bad header or query condition");
        cond_t *v = realloc(rt->conds, (rt->nconds + 1) * sizeof(*v));
        if (!v)
            return fail(err, errlen, "out of memory");
        rt->conds = v;
        cond_t *c = &v[rt->nconds];
        memset(c, 0, sizeof(*c));
        c->query = kind == LP_RK_QUERY;
        c->mode = mode;
        char *nm = dupn(name, nlen);
        if (!nm)
            return fail(err, errlen, "out of memory");
        if (!c->query)
            lower(nm);
        long slot = name_slot(c->query ? &r->qnames : &r->hnames, nm, nlen);
        free(nm);
        if (slot < 0)
            return fail(err, errlen, "out of memory");
        c->slot = (uint32_t)slot;
        /* The value is kept for regexes too: lp_rbuild_copy gives it again. */
        if (mode != LP_RM_PRESENT && !(c->value = dupn(value, vlen)))
            return fail(err, errlen, "out of memory");
        c->vlen = vlen;
        if (mode == LP_RM_REGEX) {
            if (!(c->re = re_compile(value, vlen, err, errlen)))
                return -1;
            uint32_t groups = 0;
            pcre2_pattern_info(c->re, PCRE2_INFO_CAPTURECOUNT, &groups);
            if (groups + 1 > r->max_pairs)
                r->max_pairs = groups + 1;
        }
        rt->nconds++;
        return 0;
    }
    case LP_RK_CIDR: {
        cidr_t c;
        if (parse_cidr(value, vlen, &c))
            return fail(
                err, errlen,
                "not an address or CIDR (10.0.0.0/8, ::1/128; no bits set past the prefix)");
        cidr_t *v = realloc(rt->cidrs, (rt->ncidrs + 1) * sizeof(*v));
        if (!v)
            return fail(err, errlen, "out of memory");
        v[rt->ncidrs++] = c;
        rt->cidrs = v;
        return 0;
    }
    case LP_RK_SNI:
        if (rt->sni)
            return fail(err, errlen, "one sni per route");
        rt->sni_wild = vlen > 2 && value[0] == '*' && value[1] == '.';
        if (!(rt->sni = rt->sni_wild ? dupn(value + 1, vlen - 1) : dupn(value, vlen)))
            return fail(err, errlen, "out of memory");
        lower(rt->sni);
        return 0;
    case LP_RK_PREDICATE:
        rt->predicate = 1;
        return 0;
    }
    return fail(err, errlen, "unknown condition");
}

static void route_unref(route_t *rt)
{
    if (!rt || __atomic_sub_fetch(&rt->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    free(rt->host);
    free(rt->path);
    pcre2_code_free(rt->re);
    for (unsigned i = 0; i < rt->npnames; i++)
        free(rt->pnames[i]);
    free(rt->pnames);
    for (size_t i = 0; i < rt->nmethods; i++)
        free(rt->methods[i]);
    free(rt->methods);
    free(rt->sni);
    for (size_t i = 0; i < rt->nconds; i++) {
        free(rt->conds[i].value);
        pcre2_code_free(rt->conds[i].re);
    }
    free(rt->conds);
    free(rt->cidrs);
    free(rt);
}

void lp_router_free(lp_router_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nuids; i++)
        route_unref(r->routes[i]);
    free(r->routes);
    free(r->pos);
    free(r->at);
    free(r->dirty);
    node_unref(r->any);
    htab_free(&r->exact);
    htab_free(&r->wild);
    htab_free(&r->pfx);
    for (size_t i = 0; i < r->hnames.n; i++)
        free(r->hnames.v[i]);
    free(r->hnames.v);
    for (size_t i = 0; i < r->qnames.n; i++)
        free(r->qnames.v[i]);
    free(r->qnames.v);
    free(r);
}

void lp_rbuild_free(lp_rbuild_t *b)
{
    lp_router_free((lp_router_t *)b); /* the builder is a router not indexed yet */
}

size_t lp_router_count(const lp_router_t *r)
{
    return r->nroutes;
}

static void rx_count(const rnode_t *n, size_t *sets, size_t *ready)
{
    if (!n)
        return;
    for (uint32_t i = 0; i < n->nrxs; i++) {
        (*sets)++;
        *ready += lp_rxset_ready(n->rxs[i]) != 0;
    }
    for (uint32_t i = 0; i < n->nkids; i++)
        rx_count(n->kids[i], sets, ready);
    rx_count(n->param, sets, ready);
}

static void rx_count_tab(const htab_t *t, size_t *sets, size_t *ready)
{
    for (size_t i = 0; i < t->cap; i++)
        if (t->v[i].key)
            rx_count(t->v[i].root, sets, ready);
}

size_t lp_router_rx_sets(const lp_router_t *r, size_t *ready)
{
    size_t sets = 0, rd = 0;
    rx_count(r->any, &sets, &rd);
    rx_count_tab(&r->exact, &sets, &rd);
    rx_count_tab(&r->wild, &sets, &rd);
    rx_count_tab(&r->pfx, &sets, &rd);
    if (ready)
        *ready = rd;
    return sets;
}

int lp_router_conditions(const lp_router_t *r, size_t idx, lp_router_cond_fn fn, void *ud)
{
    const route_t *rt = r->routes[r->at ? r->at[idx] : idx];
    char host[300];
    int rc = 0;
#define ADD(kind, mode, name, v)                                                                   \
    do {                                                                                           \
        if (!rc)                                                                                   \
            rc = fn(ud, kind, mode, (name), (v));                                                  \
    } while (0)
    if (rt->hkind != H_ANY) {
        snprintf(host, sizeof(host),
                 rt->hkind == H_WILD  ? "*%s"
                 : rt->hkind == H_PFX ? "%s.*"
                                      : "%s",
                 rt->host);
        ADD(LP_RK_HOST, 0, NULL, host);
    }
    if (rt->pkind != P_ANY)
        ADD(rt->pkind == P_EXACT    ? LP_RK_PATH
            : rt->pkind == P_PREFIX ? LP_RK_PREFIX
                                    : LP_RK_REGEX,
            0, NULL, rt->path);
    for (size_t i = 0; i < rt->nmethods; i++)
        ADD(LP_RK_METHOD, 0, NULL, rt->methods[i]);
    for (size_t i = 0; i < rt->nconds; i++) {
        const cond_t *c = &rt->conds[i];
        ADD(c->query ? LP_RK_QUERY : LP_RK_HEADER, c->mode,
            c->query ? r->qnames.v[c->slot] : r->hnames.v[c->slot], c->value);
    }
    for (size_t i = 0; i < rt->ncidrs; i++)
        ADD(LP_RK_CIDR, 0, NULL, rt->cidrs[i].text);
    if (rt->sni) {
        snprintf(host, sizeof(host), rt->sni_wild ? "*%s" : "%s", rt->sni);
        ADD(LP_RK_SNI, 0, NULL, host);
    }
    if (rt->predicate)
        ADD(LP_RK_PREDICATE, 0, NULL, NULL);
#undef ADD
    return rc;
}

typedef struct {
    lp_rbuild_t *b; /* borrowed: the route being built */
    char *err;      /* borrowed */
    size_t errlen;
} copy_t;

static int copy_one(void *ud, int kind, int mode, const char *name, const char *value)
{
    copy_t *c = ud;
    return lp_rbuild_add(c->b, kind, mode, name, name ? strlen(name) : 0, value,
                         value ? strlen(value) : 0, c->err, c->errlen);
}

int lp_rbuild_copy(lp_rbuild_t *b, const lp_router_t *r, size_t idx, char *err, size_t errlen)
{
    copy_t c = {b, err, errlen};
    return lp_router_conditions(r, idx, copy_one, &c);
}

static int kid_index(const rnode_t *n, unsigned char c, uint32_t *at)
{
    uint32_t lo = 0, hi = n->nkids;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        unsigned char k = (unsigned char)n->kids[mid]->label[0];
        if (k == c) {
            *at = mid;
            return 1;
        }
        if (k < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    *at = lo;
    return 0;
}

/* The node at the end of the literal bytes s below n, created (and edges split) as needed. */
static rnode_t *lit_insert(rnode_t *n, const char *s, size_t len)
{
    while (len) {
        uint32_t at;
        if (!kid_index(n, (unsigned char)s[0], &at)) {
            rnode_t *k = node_new();
            rnode_t **kids = realloc(n->kids, (n->nkids + 1) * sizeof(*kids));
            if (!k || !kids || !(k->label = dupn(s, len))) {
                node_unref(k);
                if (kids)
                    n->kids = kids;
                return NULL;
            }
            k->llen = len;
            memmove(kids + at + 1, kids + at, (n->nkids - at) * sizeof(*kids));
            kids[at] = k;
            n->kids = kids;
            n->nkids++;
            return k;
        }
        rnode_t *k = n->kids[at];
        size_t common = 0;
        while (common < k->llen && common < len && k->label[common] == s[common])
            common++;
        if (common == k->llen && !(k = own_node(&n->kids[at])))
            return NULL;
        if (common < k->llen) {
            /* Split: m takes the common head, k (shared, or ours) keeps its tail below m. A
             * shared k is not changed: m's kid is a copy of it with the shorter label. */
            if (__atomic_load_n(&k->refs, __ATOMIC_ACQUIRE) != 1 && !(k = own_node(&n->kids[at])))
                return NULL;
            rnode_t *m = node_new();
            char *head = dupn(k->label, common), *tail = dupn(k->label + common, k->llen - common);
            rnode_t **kids = malloc(sizeof(*kids));
            if (!m || !head || !tail || !kids) {
                node_unref(m);
                free(head);
                free(tail);
                free(kids);
                return NULL;
            }
            free(k->label);
            k->label = tail;
            k->llen -= common;
            m->label = head;
            m->llen = common;
            kids[0] = k;
            m->kids = kids;
            m->nkids = 1;
            n->kids[at] = m;
            k = m;
        }
        s += common;
        len -= common;
        n = k;
    }
    return n;
}

/* The root of rt's host bucket, made this router's own. */
static rnode_t *bucket_for(lp_router_t *r, const route_t *rt)
{
    switch (rt->hkind) {
    case H_EXACT:
        return hput(&r->exact, rt->host, strlen(rt->host));
    case H_WILD:
        return hput(&r->wild, rt->host, strlen(rt->host));
    case H_PFX:
        return hput(&r->pfx, rt->host, strlen(rt->host));
    }
    if (!r->any && !(r->any = node_new()))
        return NULL;
    return own_node(&r->any);
}

/* Puts uid into its list (in table order), or takes it out (remove), copying the nodes on
 * its way that other routers share. */
static int list_op(lp_router_t *r, ids_t *l, uint32_t id, int remove)
{
    if (remove) {
        ids_remove(l, id);
        return 0;
    }
    return ids_insert(l, id, r->pos);
}

static int index_route(lp_router_t *r, const route_t *rt, uint32_t id, int remove)
{
    rnode_t *n = bucket_for(r, rt);
    if (!n)
        return -1;
    switch (rt->pkind) {
    case P_ANY:
        n = lit_insert(n, "/", 1);
        return n ? list_op(r, &n->prefix, id, remove) : -1;
    case P_PREFIX:
        n = lit_insert(n, rt->path, rt->plen);
        return n ? list_op(r, &n->prefix, id, remove) : -1;
    case P_REGEX:
        n = lit_insert(n, rt->path + 1, rt->lit_len);
        if (!n || list_op(r, &n->rx, id, remove))
            return -1;
        if (!n->rx_dirty) {
            if (r->ndirty == r->dcap) {
                size_t cap = r->dcap ? r->dcap * 2 : 8;
                rnode_t **v = realloc(r->dirty, cap * sizeof(*v));
                if (!v)
                    return -1;
                r->dirty = v;
                r->dcap = cap;
            }
            r->dirty[r->ndirty++] = n;
            n->rx_dirty = 1;
        }
        return 0;
    }
    /* A path pattern: literal runs, :name segments, a final *name. */
    const char *p = rt->path;
    size_t i = 0, len = rt->plen;
    while (n) {
        size_t j = i;
        while (j < len && !((p[j] == ':' || p[j] == '*') && j > 0 && p[j - 1] == '/'))
            j++;
        if (j > i && !(n = lit_insert(n, p + i, j - i)))
            return -1;
        if (j == len)
            return list_op(r, &n->exact, id, remove);
        if (p[j] == '*')
            return list_op(r, &n->rest, id, remove);
        if (!n->param && !(n->param = node_new()))
            return -1;
        if (!(n = own_node(&n->param)))
            return -1;
        while (j < len && p[j] != '/')
            j++;
        i = j;
    }
    return -1;
}

/* Below this many regexes in one list, running them one by one costs less than a scan. */
#define RX_SET_MIN 4
/* Regexes per Hyperscan database: its compile time grows with the patterns (1 to 2 ms each
 * on a loaded 2-core machine), so a change recompiles one chunk; each chunk costs a scan. */
#define RX_CHUNK 128

static void rx_drop(rnode_t *n)
{
    for (uint32_t i = 0; i < n->nrxs; i++)
        lp_rxset_unref(n->rxs[i]);
    free(n->rxs);
    n->rxs = NULL;
    n->nrxs = 0;
}

/* The chunks of n brought up to date with its rx list: a chunk whose regexes are all still
 * in the list is kept, the others are compiled again with the new regexes, packed into
 * chunks together with the smallest kept one that is not full (so that routes added one at
 * a time do not leave a chunk each). mark: nuids bytes of zero, left zero. */
static void rx_update(lp_router_t *r, rnode_t *n, uint8_t *mark)
{
    if (n->rx.n < RX_SET_MIN) {
        rx_drop(n);
        return;
    }
    for (uint32_t k = 0; k < n->rx.n; k++)
        mark[n->rx.v[k]] = 1;
    uint32_t kept = 0;
    long small = -1; /* the smallest kept chunk that is not full, of small_n regexes */
    size_t small_n = RX_CHUNK;
    for (uint32_t c = 0; c < n->nrxs; c++) {
        size_t cn;
        const uint32_t *ids = lp_rxset_ids(n->rxs[c], &cn);
        size_t k = 0;
        while (k < cn && mark[ids[k]] == 1)
            k++;
        if (k < cn) {
            lp_rxset_unref(n->rxs[c]);
            continue;
        }
        n->rxs[kept] = n->rxs[c];
        if (cn < small_n) {
            small = kept;
            small_n = cn;
        }
        kept++;
    }
    n->nrxs = kept;
    for (uint32_t c = 0; c < n->nrxs; c++) {
        size_t cn;
        const uint32_t *ids = lp_rxset_ids(n->rxs[c], &cn);
        for (size_t k = 0; k < cn; k++)
            mark[ids[k]] = 2; /* covered */
    }
    uint32_t npend = 0;
    for (uint32_t k = 0; k < n->rx.n; k++)
        npend += mark[n->rx.v[k]] == 1;
    if (npend && small >= 0 && npend + small_n <= RX_CHUNK) { /* merged with the pending */
        size_t cn;
        const uint32_t *ids = lp_rxset_ids(n->rxs[small], &cn);
        for (size_t k = 0; k < cn; k++)
            mark[ids[k]] = 1;
        npend += (uint32_t)cn;
        lp_rxset_unref(n->rxs[small]);
        n->rxs[small] = n->rxs[--n->nrxs];
    }
    int ok;
    uint32_t need = n->nrxs + (npend + RX_CHUNK - 1) / RX_CHUNK;
    lp_rxset_t **v = need ? realloc(n->rxs, need * sizeof(*v)) : n->rxs;
    const char **pats = malloc(RX_CHUNK * sizeof(*pats));
    size_t *lens = malloc(RX_CHUNK * sizeof(*lens));
    uint32_t *ids = malloc(RX_CHUNK * sizeof(*ids));
    if (v)
        n->rxs = v;
    ok = (v || !need) && pats && lens && ids;
    uint32_t m = 0;
    for (uint32_t k = 0; ok && k <= n->rx.n; k++) {
        if (k < n->rx.n && mark[n->rx.v[k]] == 1) {
            const route_t *rt = r->routes[n->rx.v[k]];
            pats[m] = rt->path;
            lens[m] = rt->plen;
            ids[m++] = n->rx.v[k];
        }
        if (m == RX_CHUNK || (k == n->rx.n && m)) {
            lp_rxset_t *set = lp_rxset_new(pats, lens, ids, m);
            if (!set) { /* no Hyperscan (or memory): every regex is tried */
                ok = 0;
                break;
            }
            n->rxs[n->nrxs++] = set;
            m = 0;
        }
    }
    free(pats);
    free(lens);
    free(ids);
    for (uint32_t k = 0; k < n->rx.n; k++)
        mark[n->rx.v[k]] = 0;
    if (!ok)
        rx_drop(n);
}

/* The prefilters of every node whose regex list changed while r was built (the nodes are
 * r's own: no other router sees them yet). */
static int rx_sets(lp_router_t *r)
{
    uint8_t *mark = r->ndirty ? calloc(r->nuids ? r->nuids : 1, 1) : NULL;
    for (size_t i = 0; i < r->ndirty; i++) {
        rnode_t *n = r->dirty[i];
        n->rx_dirty = 0;
        if (mark)
            rx_update(r, n, mark);
        else
            rx_drop(n); /* out of memory: no prefilter, every regex is tried */
    }
    free(mark);
    free(r->dirty);
    r->dirty = NULL;
    r->ndirty = r->dcap = 0;
    return 0;
}

lp_router_t *lp_rbuild_finish(lp_rbuild_t *b, char *err, size_t errlen)
{
    lp_router_t *r = malloc(sizeof(*r));
    if (!r) {
        lp_rbuild_free(b);
        fail(err, errlen, "out of memory");
        return NULL;
    }
    *r = b->r;
    free(b);
    r->nuids = r->nroutes;
    r->pos = malloc((r->nroutes ? r->nroutes : 1) * sizeof(*r->pos));
    r->at = malloc((r->nroutes ? r->nroutes : 1) * sizeof(*r->at));
    if (!r->pos || !r->at || !(r->any = node_new())) {
        lp_router_free(r);
        fail(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < r->nroutes; i++)
        r->pos[i] = r->at[i] = (uint32_t)i;
    for (size_t i = 0; i < r->nroutes; i++)
        if (index_route(r, r->routes[i], (uint32_t)i, 0)) {
            lp_router_free(r);
            fail(err, errlen, "out of memory");
            return NULL;
        }
    if (rx_sets(r)) {
        lp_router_free(r);
        fail(err, errlen, "out of memory");
        return NULL;
    }
    return r;
}

static int names_copy(names_t *d, const names_t *s)
{
    *d = (names_t){NULL, 0, 0};
    if (!s->n)
        return 0;
    if (!(d->v = calloc(s->n, sizeof(*d->v))))
        return -1;
    d->cap = s->n;
    for (; d->n < s->n; d->n++)
        if (!(d->v[d->n] = strdup(s->v[d->n])))
            return -1;
    return 0;
}

/* The header and query names of b's routes as slots of r's (the base's, then new ones). */
static int remap_names(lp_router_t *r, const lp_router_t *b, route_t *rt)
{
    for (size_t i = 0; i < rt->nconds; i++) {
        cond_t *c = &rt->conds[i];
        const char *name = (c->query ? &b->qnames : &b->hnames)->v[c->slot];
        long slot = name_slot(c->query ? &r->qnames : &r->hnames, name, strlen(name));
        if (slot < 0)
            return -1;
        c->slot = (uint32_t)slot;
    }
    return 0;
}

lp_router_t *lp_router_derive(const lp_router_t *base, const long *src, size_t n, lp_rbuild_t *b,
                              char *err, size_t errlen)
{
    lp_router_t *nb = &b->r;
    size_t added = nb->nroutes;
    /* The uids of removed routes are not used again: once the unused ones outnumber the
     * routes, the derived router numbers its routes afresh and indexes them all (as a build
     * does, but sharing the compiled routes). */
    int fresh = base->nuids + added > 2 * n + 16;
    lp_router_t *r = calloc(1, sizeof(*r));
    int ok = r != NULL;
    if (ok) {
        r->nroutes = n;
        r->nuids = fresh ? n : base->nuids + added;
        r->cap = r->nuids ? r->nuids : 1;
        r->routes = calloc(r->cap, sizeof(*r->routes));
        r->pos = malloc(r->cap * sizeof(*r->pos));
        r->at = malloc((n ? n : 1) * sizeof(*r->at));
        ok = r->routes && r->pos && r->at && !names_copy(&r->hnames, &base->hnames) &&
             !names_copy(&r->qnames, &base->qnames);
    }
    if (ok) {
        memset(r->pos, 0xff, r->cap * sizeof(*r->pos));
        r->max_pairs = base->max_pairs > nb->max_pairs ? base->max_pairs : nb->max_pairs;
        for (size_t k = 0; ok && k < added; k++)
            ok = !remap_names(r, nb, nb->routes[k]);
    }
    size_t next_new = 0;
    uint32_t next_uid = fresh ? 0 : (uint32_t)base->nuids;
    for (size_t i = 0; ok && i < n; i++) {
        route_t *rt;
        uint32_t uid;
        if (src[i] >= 0 && (size_t)src[i] < base->nroutes) {
            uint32_t bu = base->at[src[i]];
            rt = base->routes[bu];
            __atomic_add_fetch(&rt->refs, 1, __ATOMIC_RELAXED);
            uid = fresh ? (uint32_t)i : bu;
        } else if (src[i] < 0 && next_new < added) {
            rt = nb->routes[next_new];
            nb->routes[next_new++] = NULL; /* moved */
            uid = fresh ? (uint32_t)i : next_uid++;
        } else {
            ok = 0;
            break;
        }
        r->routes[uid] = rt;
        r->pos[uid] = (uint32_t)i;
        r->at[i] = uid;
    }
    ok = ok && next_new == added;
    if (ok && fresh) {
        ok = (r->any = node_new()) != NULL;
        for (size_t i = 0; ok && i < n; i++)
            ok = !index_route(r, r->routes[i], (uint32_t)i, 0);
    } else if (ok) {
        ok = !htab_copy(&r->exact, &base->exact) && !htab_copy(&r->wild, &base->wild) &&
             !htab_copy(&r->pfx, &base->pfx);
        if (ok && (r->any = base->any))
            __atomic_add_fetch(&r->any->refs, 1, __ATOMIC_RELAXED);
        /* Out first, so that the lists hold only routes with a position when new ones go
         * into them in table order. */
        for (size_t u = 0; ok && u < base->nuids; u++)
            if (base->routes[u] && r->pos[u] == UINT32_MAX)
                ok = !index_route(r, base->routes[u], (uint32_t)u, 1);
        for (size_t u = base->nuids; ok && u < r->nuids; u++)
            ok = !index_route(r, r->routes[u], (uint32_t)u, 0);
    }
    ok = ok && !rx_sets(r);
    lp_rbuild_free(b);
    if (!ok) {
        lp_router_free(r);
        fail(err, errlen, "out of memory");
        return NULL;
    }
    return r;
}

size_t lp_router_nnames(const lp_router_t *r, int kind)
{
    return kind == LP_RK_QUERY ? r->qnames.n : r->hnames.n;
}

const char *lp_router_name(const lp_router_t *r, int kind, size_t i)
{
    const names_t *ns = kind == LP_RK_QUERY ? &r->qnames : &r->hnames;
    return i < ns->n ? ns->v[i] : NULL;
}

/* ---- matching ---- */

/* One PCRE2 match block per thread, grown to the largest router's need; freed when the
 * thread exits. */
static pthread_key_t md_key;
static pthread_once_t md_once = PTHREAD_ONCE_INIT;

static void md_free(void *md)
{
    pcre2_match_data_free(md);
}

static void md_init(void)
{
    pthread_key_create(&md_key, md_free);
}

static pcre2_match_data *match_data(uint32_t pairs)
{
    pthread_once(&md_once, md_init);
    pcre2_match_data *md = pthread_getspecific(md_key);
    if (md && pcre2_get_ovector_count(md) >= pairs)
        return md;
    pcre2_match_data *nmd = pcre2_match_data_create(pairs < 16 ? 16 : pairs, NULL);
    if (!nmd)
        return NULL;
    pcre2_match_data_free(md);
    pthread_setspecific(md_key, nmd);
    return nmd;
}

typedef struct {
    const lp_router_t *r;
    const lp_route_in_t *in;
    lp_route_out_t *out;
    uint32_t from;
    uint32_t best; /* the best route so far (UINT32_MAX: none) */
    lp_str_t path;
    int asterisk; /* `OPTIONS *` */
    pcre2_match_data *md;
    unsigned depth; /* parameters captured on the way down */
    lp_str_t stack[LP_ROUTE_MAX_CAPS + 1];
} mstate_t;

static int name_match(const char *pat, int wild, lp_str_t v)
{
    size_t plen = strlen(pat);
    while (v.len && v.base[v.len - 1] == '.')
        v.len--;
    if (wild)
        return v.len > plen && lp_str_ieq((lp_str_t){v.base + v.len - plen, plen}, pat, plen);
    return lp_str_ieq(v, pat, plen);
}

static int re_ok(pcre2_code *re, lp_str_t v, pcre2_match_data *md)
{
    if (!md)
        return 0;
    return pcre2_match(re, (PCRE2_SPTR)(v.base ? v.base : ""), v.len, 0, 0, md, NULL) >= 0;
}

static int conds_ok(mstate_t *ms, const route_t *rt)
{
    const lp_route_in_t *in = ms->in;
    if (rt->nmethods) {
        size_t i = 0;
        while (i < rt->nmethods && !(strlen(rt->methods[i]) == in->method.len &&
                                     memcmp(rt->methods[i], in->method.base, in->method.len) == 0))
            i++;
        if (i == rt->nmethods)
            return 0;
    }
    if (rt->sni && (!in->sni.base || !name_match(rt->sni, rt->sni_wild, in->sni)))
        return 0;
    if (rt->ncidrs) {
        if (!in->family)
            return 0;
        lp_ip_t ip;
        memset(&ip, 0, sizeof(ip));
        memcpy(ip.addr, in->addr, in->family == 6 ? 16 : 4);
        ip.v6 = in->family == 6;
        size_t i = 0;
        while (i < rt->ncidrs && !lp_cidr_match(&rt->cidrs[i].net, 1, &ip))
            i++;
        if (i == rt->ncidrs)
            return 0;
    }
    for (size_t i = 0; i < rt->nconds; i++) {
        const cond_t *c = &rt->conds[i];
        char buf[2048];
        lp_str_t v;
        if (c->query) {
            const char *name = ms->r->qnames.v[c->slot];
            v = in->qvals   ? in->qvals[c->slot]
                : in->query ? in->query(in->ctx, name, strlen(name), buf, sizeof(buf))
                            : (lp_str_t){NULL, 0};
        } else {
            const char *name = ms->r->hnames.v[c->slot];
            v = in->hvals    ? in->hvals[c->slot]
                : in->header ? in->header(in->ctx, name, strlen(name))
                             : (lp_str_t){NULL, 0};
        }
        if (!v.base)
            return 0;
        if (c->mode == LP_RM_EQUAL && (v.len != c->vlen || memcmp(v.base, c->value, v.len) != 0))
            return 0;
        if (c->mode == LP_RM_REGEX && !re_ok(c->re, v, ms->md))
            return 0;
    }
    /* Last: the path regex, whose groups the answer takes. */
    if (rt->re && (ms->asterisk || !re_ok(rt->re, ms->path, ms->md)))
        return 0;
    return 1;
}

static void accept_route(mstate_t *ms, uint32_t id, uint32_t pos)
{
    const route_t *rt = ms->r->routes[id];
    lp_route_out_t *out = ms->out;
    ms->best = pos;
    out->index = (int)pos;
    out->predicate = rt->predicate;
    out->ncaps = 0;
    for (unsigned i = 0; i < rt->npnames && i < ms->depth; i++)
        out->caps[out->ncaps++] = (lp_route_cap_t){rt->pnames[i], ms->stack[i]};
    if (rt->re && rt->re_names) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(ms->md);
        uint32_t nov = pcre2_get_ovector_count(ms->md);
        for (uint32_t i = 0; i < rt->re_names && out->ncaps < LP_ROUTE_MAX_CAPS; i++) {
            PCRE2_SPTR e = rt->re_table + i * rt->re_entry;
            uint32_t g = ((uint32_t)e[0] << 8) | e[1];
            if (g >= nov || ov[2 * g] == PCRE2_UNSET)
                continue;
            out->caps[out->ncaps++] = (lp_route_cap_t){
                (const char *)e + 2, {ms->path.base + ov[2 * g], ov[2 * g + 1] - ov[2 * g]}};
        }
    }
}

static void consider(mstate_t *ms, const ids_t *l, int prefix_list)
{
    for (uint32_t i = 0; i < l->n; i++) {
        uint32_t id = l->v[i], pos = ms->r->pos[id];
        if (pos >= ms->best)
            return;
        if (pos < ms->from)
            continue;
        const route_t *rt = ms->r->routes[id];
        if (ms->asterisk && !(prefix_list && (rt->pkind == P_ANY || rt->plen == 1)))
            continue;
        if (conds_ok(ms, rt))
            accept_route(ms, id, pos);
    }
}

/* The candidates the prefilter leaves (uids into positions), in table order. */
static void consider_rx(mstate_t *ms, const rnode_t *n)
{
    uint32_t cand[2 * RX_CHUNK]; /* room for a chunk not compiled yet (all candidates) */
    int nc = 0;
    for (uint32_t c = 0; c < n->nrxs && !ms->asterisk; c++) {
        int k = lp_rxset_scan(n->rxs[c], ms->path.base, ms->path.len, cand + nc,
                              (unsigned)(LP_ARRAY_LEN(cand) - (size_t)nc));
        if (k < 0) { /* too many candidates to sort: the whole list, in order */
            consider(ms, &n->rx, 0);
            return;
        }
        nc += k;
    }
    for (int i = 0; i < nc; i++) {
        uint32_t p = ms->r->pos[cand[i]];
        int j = i;
        for (; j > 0 && cand[j - 1] > p; j--)
            cand[j] = cand[j - 1];
        cand[j] = p;
    }
    for (int i = 0; i < nc; i++) {
        uint32_t pos = cand[i];
        if (pos >= ms->best)
            return;
        if (pos < ms->from)
            continue;
        uint32_t id = ms->r->at[pos];
        if (conds_ok(ms, ms->r->routes[id]))
            accept_route(ms, id, pos);
    }
}

static void walk(mstate_t *ms, const rnode_t *n, size_t pos)
{
    const lp_str_t p = ms->path;
    if (n->prefix.n)
        consider(ms, &n->prefix, 1);
    if (n->nrxs)
        consider_rx(ms, n);
    else if (n->rx.n)
        consider(ms, &n->rx, 0);
    if (n->rest.n && ms->depth <= LP_ROUTE_MAX_CAPS) {
        ms->stack[ms->depth++] = (lp_str_t){p.base + pos, p.len - pos};
        consider(ms, &n->rest, 0);
        ms->depth--;
    }
    if (pos == p.len) {
        if (n->exact.n)
            consider(ms, &n->exact, 0);
        return;
    }
    if (n->param && p.base[pos] != '/' && ms->depth < LP_ROUTE_MAX_CAPS) {
        size_t e = pos;
        while (e < p.len && p.base[e] != '/')
            e++;
        ms->stack[ms->depth++] = (lp_str_t){p.base + pos, e - pos};
        walk(ms, n->param, e);
        ms->depth--;
    }
    uint32_t at;
    if (n->nkids && kid_index(n, (unsigned char)p.base[pos], &at)) {
        const rnode_t *k = n->kids[at];
        if (k->llen <= p.len - pos && memcmp(k->label, p.base + pos, k->llen) == 0)
            walk(ms, k, pos + k->llen);
    }
}

int lp_router_match(const lp_router_t *r, const lp_route_in_t *in, int from, lp_route_out_t *out)
{
    mstate_t ms;
    ms.r = r;
    ms.in = in;
    ms.out = out;
    ms.from = from < 0 ? 0 : (uint32_t)from;
    ms.best = UINT32_MAX;
    ms.path = in->path.base ? in->path : (lp_str_t){"", 0};
    ms.asterisk = ms.path.len == 1 && ms.path.base[0] == '*';
    if (ms.asterisk)
        ms.path = (lp_str_t){"/", 1};
    ms.md = r->max_pairs ? match_data(r->max_pairs) : NULL;
    ms.depth = 0;
    out->index = -1;
    out->predicate = 0;
    out->ncaps = 0;
    if (r->any)
        walk(&ms, r->any, 0);
    if (!r->exact.n && !r->wild.n && !r->pfx.n)
        return out->index;
    /* The host: no port, no trailing dot, lower case. */
    char host[256];
    size_t n = in->host.base ? in->host.len : 0;
    const char *h = in->host.base;
    if (n && h[0] == '[') {
        const char *e = memchr(h, ']', n);
        n = e ? (size_t)(e - h) + 1 : n;
    } else if (n) {
        const char *colon = memchr(h, ':', n);
        if (colon)
            n = (size_t)(colon - h);
    }
    while (n && h[n - 1] == '.')
        n--;
    if (!n || n >= sizeof(host))
        return out->index;
    for (size_t i = 0; i < n; i++)
        host[i] = (char)tolower((unsigned char)h[i]);
    const rnode_t *root = hget(&r->exact, host, n);
    if (root)
        walk(&ms, root, 0);
    for (size_t i = 1; i < n; i++) {
        if (host[i] != '.')
            continue;
        if ((root = hget(&r->wild, host + i, n - i)))
            walk(&ms, root, 0);
        if ((root = hget(&r->pfx, host, i)))
            walk(&ms, root, 0);
    }
    return out->index;
}

/* ---- shadows ---- */

static int unconditional(const route_t *rt)
{
    return !rt->nmethods && !rt->sni && !rt->nconds && !rt->ncidrs && !rt->predicate &&
           (rt->pkind == P_ANY || rt->pkind == P_PREFIX ||
            (rt->pkind == P_EXACT && !rt->has_params));
}

/* A path pattern route with no conditions but host and path. */
static int unconditional_pattern(const route_t *rt)
{
    return !rt->nmethods && !rt->sni && !rt->nconds && !rt->ncidrs && !rt->predicate &&
           rt->pkind == P_EXACT;
}

/* The earliest unconditional route before `before` in this tree whose prefix (or, for
 * exact, its whole path) covers every path starting with lit (exact: equal to lit). */
static uint32_t shadow_in(const lp_router_t *r, const rnode_t *n, const char *lit, size_t len,
                          int exact, uint32_t before)
{
    uint32_t best = UINT32_MAX;
    size_t pos = 0;
    for (;;) {
        for (uint32_t i = 0; i < n->prefix.n && r->pos[n->prefix.v[i]] < before; i++)
            if (unconditional(r->routes[n->prefix.v[i]])) {
                if (r->pos[n->prefix.v[i]] < best)
                    best = r->pos[n->prefix.v[i]];
                break;
            }
        if (pos == len) {
            if (exact)
                for (uint32_t i = 0; i < n->exact.n && r->pos[n->exact.v[i]] < before; i++)
                    if (unconditional(r->routes[n->exact.v[i]])) {
                        if (r->pos[n->exact.v[i]] < best)
                            best = r->pos[n->exact.v[i]];
                        break;
                    }
            return best;
        }
        uint32_t at;
        if (!kid_index(n, (unsigned char)lit[pos], &at))
            return best;
        const rnode_t *k = n->kids[at];
        if (k->llen > len - pos || memcmp(k->label, lit + pos, k->llen) != 0)
            return best;
        pos += k->llen;
        n = k;
    }
}

/* Path patterns (`:name` segments, a `*name` tail) covering a later route's path. The later
 * path B is seen as tokens: literal bytes, a parameter (a non-empty segment), a rest (any
 * tail), or for a prefix, any tail after its literal bytes. A tree walk with B finds the
 * earlier pattern routes of that tree (their exact and rest lists) that match every path B
 * does: a pattern's literal bytes must be B's, its parameter takes one of B's parameters or
 * one whole non-empty literal segment, and its rest takes whatever is left. */
typedef struct {
    const lp_router_t *r; /* borrowed */
    const char *p;        /* borrowed: B's path */
    size_t len;
    int pattern;  /* B's `:`/`*` after a `/` are parameters (else all literal) */
    int any_tail; /* B is a prefix: any bytes may follow */
    uint32_t before, best;
} pwalk_t;

static int is_param_at(const pwalk_t *w, size_t j)
{
    return w->pattern && j < w->len && j > 0 && w->p[j - 1] == '/' &&
           (w->p[j] == ':' || w->p[j] == '*');
}

static void pw_take(pwalk_t *w, const ids_t *l)
{
    const uint32_t *pos = w->r->pos;
    for (uint32_t i = 0; i < l->n && pos[l->v[i]] < w->before && pos[l->v[i]] < w->best; i++)
        if (unconditional_pattern(w->r->routes[l->v[i]])) {
            w->best = pos[l->v[i]];
            break;
        }
}

static void pw_walk(pwalk_t *w, const rnode_t *n, size_t j)
{
    pw_take(w, &n->rest); /* a rest here takes anything B has left */
    if (j == w->len) {
        if (!w->any_tail)
            pw_take(w, &n->exact);
        return;
    }
    if (is_param_at(w, j)) {
        if (w->p[j] == '*')
            return; /* only a rest covers a rest */
        size_t e = j;
        while (e < w->len && w->p[e] != '/')
            e++;
        if (n->param)
            pw_walk(w, n->param, e);
        return;
    }
    /* A parameter of the earlier route takes one whole literal segment of B. */
    if (n->param && j > 0 && w->p[j - 1] == '/') {
        size_t e = j;
        while (e < w->len && w->p[e] != '/')
            e++;
        if (e > j && !(e == w->len && w->any_tail))
            pw_walk(w, n->param, e);
    }
    uint32_t at;
    if (!kid_index(n, (unsigned char)w->p[j], &at))
        return;
    const rnode_t *k = n->kids[at];
    for (size_t i = 0; i < k->llen; i++)
        if (j + i >= w->len || is_param_at(w, j + i) || w->p[j + i] != k->label[i])
            return;
    pw_walk(w, k, j + k->llen);
}

size_t lp_router_shadows(const lp_router_t *r, void (*warn)(void *ud, size_t route, size_t by),
                         void *ud)
{
    size_t found = 0;
    for (size_t j = 0; j < r->nroutes; j++) {
        const route_t *rt = r->routes[r->at[j]];
        const char *lit = rt->pkind == P_ANY ? "/" : rt->pkind == P_REGEX ? rt->path + 1 : rt->path;
        size_t len = rt->pkind == P_ANY ? 1 : rt->lit_len;
        if (rt->pkind == P_REGEX && !len) {
            lit = "/";
            len = 1;
        }
        int exact = rt->pkind == P_EXACT && !rt->has_params;
        uint32_t by = r->any ? shadow_in(r, r->any, lit, len, exact, (uint32_t)j) : UINT32_MAX;
        /* Pattern routes before it (regexes and routes without a path are not compared). */
        pwalk_t pw = {r, NULL, 0, rt->pkind == P_EXACT, rt->pkind == P_PREFIX, (uint32_t)j, by};
        /* (A prefix "/" also takes `OPTIONS *`, which no pattern matches.) */
        if (rt->pkind == P_EXACT || (rt->pkind == P_PREFIX && rt->plen > 1)) {
            pw.p = rt->path;
            pw.len = rt->plen;
            if (r->any)
                pw_walk(&pw, r->any, 0);
            by = pw.best;
        }
        const rnode_t *root;
        const char *h = rt->host;
        size_t n = h ? strlen(h) : 0;
#define TRY(tab, k, kl)                                                                            \
    do {                                                                                           \
        if ((root = hget((tab), (k), (kl)))) {                                                     \
            uint32_t b = shadow_in(r, root, lit, len, exact, (uint32_t)j);                         \
            if (b < by)                                                                            \
                by = b;                                                                            \
            if (pw.p) {                                                                            \
                pw.best = by;                                                                      \
                pw_walk(&pw, root, 0);                                                             \
                by = pw.best;                                                                      \
            }                                                                                      \
        }                                                                                          \
    } while (0)
        if (rt->hkind == H_EXACT) {
            TRY(&r->exact, h, n);
            for (size_t i = 1; i < n; i++)
                if (h[i] == '.') {
                    TRY(&r->wild, h + i, n - i);
                    TRY(&r->pfx, h, i);
                }
        } else if (rt->hkind == H_WILD) {
            for (size_t i = 0; i < n; i++)
                if (h[i] == '.')
                    TRY(&r->wild, h + i, n - i);
        } else if (rt->hkind == H_PFX) {
            TRY(&r->pfx, h, n);
            for (size_t i = 1; i < n; i++)
                if (h[i] == '.')
                    TRY(&r->pfx, h, i);
        }
#undef TRY
        if (by != UINT32_MAX) {
            found++;
            if (warn)
                warn(ud, j, by);
        }
    }
    return found;
}

/* "routes[3]", or "routes[3] (api)" when the route has a name of its own (not route#3). */
static int route_ref(char *out, size_t n, size_t i, const char *name)
{
    char auto_name[32];
    snprintf(auto_name, sizeof(auto_name), "route#%zu", i + 1);
    if (name && *name && strcmp(name, auto_name) != 0)
        return snprintf(out, n, "routes[%zu] (%s)", i + 1, name);
    return snprintf(out, n, "routes[%zu]", i + 1);
}

int lp_router_shadow_text(char *out, size_t n, size_t route, const char *name, size_t by,
                          const char *by_name)
{
    char a[200], b[200];
    route_ref(a, sizeof(a), route, name);
    route_ref(b, sizeof(b), by, by_name);
    return snprintf(out, n, "%s can never match: %s before it takes all its requests", a, b);
}
