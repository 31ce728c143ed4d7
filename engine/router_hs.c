/* The router's Hyperscan regex prefilter: see router_hs.h. */
#include "router_hs.h"

#include <stdlib.h>
#include <string.h>

#ifdef LP_HAVE_HS
#include <hs/hs.h>
#include <pthread.h>

struct lp_rxset_s {
    unsigned refs;     /* atomic: the index nodes holding it */
    hs_database_t *db; /* owned; NULL: Hyperscan compiled none of them */
    uint32_t *always;  /* owned array: ids of the regexes Hyperscan refused */
    size_t nalways;
    uint32_t *ids; /* owned array: every id of the set */
    size_t nids;
};

/* HS_FLAG_PREFILTER: Hyperscan approximates what it cannot match exactly (backreferences,
 * some lookarounds) by a pattern matching more, never less; PCRE2 decides. SINGLEMATCH: one
 * report per regex is all the router needs. ALLOWEMPTY: `^` or `x*` match every path. */
#define RX_FLAGS (HS_FLAG_PREFILTER | HS_FLAG_SINGLEMATCH | HS_FLAG_ALLOWEMPTY)

/* Scratch space: hs_alloc_scratch checks a scratch against a database at a cost that grows
 * with the database (too much for every request), so sets are fitted when they are built
 * instead. proto is grown (under proto_lock) by every set built, in any thread, to fit them
 * all; proto_gen counts its growths. Each thread scans with its own clone of proto, cloned
 * again when proto_gen moved on: a set is built (and proto grown for it) before any thread
 * can scan it. The thread's clone is freed when the thread exits. */
static pthread_mutex_t proto_lock = PTHREAD_MUTEX_INITIALIZER;
static hs_scratch_t *proto; /* owned, under proto_lock: fits every set built so far */
static unsigned proto_gen;  /* atomic: bumped under proto_lock each time proto grows */

typedef struct {
    hs_scratch_t *s; /* owned: a clone of proto of generation gen */
    unsigned gen;
} tscratch_t;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *p)
{
    tscratch_t *t = p;
    hs_free_scratch(t->s);
    free(t);
}

static void scratch_init(void)
{
    pthread_key_create(&scratch_key, scratch_free);
}

static int proto_fit(const hs_database_t *db)
{
    pthread_mutex_lock(&proto_lock);
    hs_scratch_t *was = proto;
    int ok = hs_alloc_scratch(db, &proto) == HS_SUCCESS;
    if (ok && proto != was)
        __atomic_add_fetch(&proto_gen, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&proto_lock);
    return ok;
}

/* The calling thread's scratch, fit for every set built so far; NULL when out of memory. */
static hs_scratch_t *thread_scratch(void)
{
    pthread_once(&scratch_once, scratch_init);
    tscratch_t *t = pthread_getspecific(scratch_key);
    unsigned gen = __atomic_load_n(&proto_gen, __ATOMIC_ACQUIRE);
    if (t && t->s && t->gen == gen)
        return t->s;
    if (!t) {
        if (!(t = calloc(1, sizeof(*t))))
            return NULL;
        pthread_setspecific(scratch_key, t);
    }
    hs_free_scratch(t->s);
    t->s = NULL;
    pthread_mutex_lock(&proto_lock);
    t->gen = __atomic_load_n(&proto_gen, __ATOMIC_RELAXED);
    if (proto && hs_clone_scratch(proto, &t->s) != HS_SUCCESS)
        t->s = NULL;
    pthread_mutex_unlock(&proto_lock);
    return t->s;
}

static hs_database_t *compile(const char *const *pats, const unsigned *flags, const unsigned *ids,
                              unsigned n, long *bad)
{
    hs_database_t *db = NULL;
    hs_compile_error_t *ce = NULL;
    *bad = -1;
    if (hs_compile_multi(pats, flags, ids, n, HS_MODE_BLOCK, NULL, &db, &ce) == HS_SUCCESS)
        return db;
    if (ce) {
        *bad = ce->expression; /* -1: not one pattern's fault */
        hs_free_compile_error(ce);
    }
    return NULL;
}

lp_rxset_t *lp_rxset_new(const char *const *pats, const size_t *lens, const uint32_t *ids, size_t n)
{
    size_t cap = n ? n : 1;
    lp_rxset_t *s = calloc(1, sizeof(*s));
    const char **p = malloc(cap * sizeof(*p));
    unsigned *fl = malloc(cap * sizeof(*fl));
    unsigned *id = malloc(cap * sizeof(*id));
    if (s) {
        s->always = malloc(cap * sizeof(*s->always));
        s->ids = malloc(cap * sizeof(*s->ids));
    }
    if (!s || !p || !fl || !id || !s->always || !s->ids || n > UINT32_MAX) {
        free(p);
        free(fl);
        free(id);
        if (s) {
            free(s->always);
            free(s->ids);
        }
        free(s);
        return NULL;
    }
    memcpy(s->ids, ids, n * sizeof(*ids));
    s->nids = n;
    s->refs = 1;
    unsigned m = 0;
    for (size_t i = 0; i < n; i++) {
        hs_expr_info_t *info = NULL;
        hs_compile_error_t *ce = NULL;
        /* A NUL inside a regex does not reach Hyperscan's C strings; a pattern it cannot
         * parse is set aside before the set is compiled (cheaper than failing the set). */
        int ok = strlen(pats[i]) == lens[i] &&
                 hs_expression_info(pats[i], RX_FLAGS, &info, &ce) == HS_SUCCESS;
        free(info);
        if (ce)
            hs_free_compile_error(ce);
        if (ok) {
            p[m] = pats[i];
            fl[m] = RX_FLAGS;
            id[m++] = ids[i];
        } else {
            s->always[s->nalways++] = ids[i];
        }
    }
    /* A pattern that parses can still fail to compile (too large, ...): it goes to the
     * fallbacks and the rest is compiled again. */
    while (m) {
        long bad;
        if ((s->db = compile(p, fl, id, m, &bad)))
            break;
        if (bad < 0 || (size_t)bad >= m) {
            for (unsigned i = 0; i < m; i++)
                s->always[s->nalways++] = id[i];
            break;
        }
        s->always[s->nalways++] = id[bad];
        memmove(p + bad, p + bad + 1, (m - (size_t)bad - 1) * sizeof(*p));
        memmove(id + bad, id + bad + 1, (m - (size_t)bad - 1) * sizeof(*id));
        m--;
    }
    free(p);
    free(fl);
    free(id);
    if (s->db && !proto_fit(s->db)) { /* no scratch to scan it with: all are candidates */
        hs_free_database(s->db);
        s->db = NULL;
        memcpy(s->always, s->ids, s->nids * sizeof(*s->ids));
        s->nalways = s->nids;
    }
    return s;
}

void lp_rxset_ref(lp_rxset_t *s)
{
    if (s)
        __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
}

void lp_rxset_unref(lp_rxset_t *s)
{
    if (!s || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    hs_free_database(s->db);
    free(s->always);
    free(s->ids);
    free(s);
}

size_t lp_rxset_fallbacks(const lp_rxset_t *set)
{
    return set ? set->nalways : 0;
}

const uint32_t *lp_rxset_ids(const lp_rxset_t *set, size_t *n)
{
    *n = set->nids;
    return set->ids;
}

typedef struct {
    uint32_t *cand; /* borrowed: the caller's array */
    unsigned n, cap;
    int more; /* more candidates than cap: the scan stopped, every regex must be tried */
} collect_t;

static int on_match(unsigned int id, unsigned long long from, unsigned long long to,
                    unsigned int flags, void *ctx)
{
    (void)from;
    (void)to;
    (void)flags;
    collect_t *c = ctx;
    if (c->n == c->cap) {
        c->more = 1;
        return 1; /* stop: the answer is "all of them" already */
    }
    c->cand[c->n++] = id;
    return 0;
}

int lp_rxset_scan(const lp_rxset_t *set, const char *s, size_t len, uint32_t *cand, unsigned cap)
{
    if (set->nalways > cap || len > UINT32_MAX)
        return -1;
    if (!set->db) {
        memcpy(cand, set->always, set->nalways * sizeof(*cand));
        return (int)set->nalways;
    }
    hs_scratch_t *scratch = thread_scratch();
    if (!scratch)
        return -1;
    collect_t c = {cand, 0, (unsigned)(cap - set->nalways), 0};
    hs_error_t rc = hs_scan(set->db, s ? s : "", (unsigned)len, 0, scratch, on_match, &c);
    if ((rc != HS_SUCCESS && rc != HS_SCAN_TERMINATED) || c.more)
        return -1;
    memcpy(cand + c.n, set->always, set->nalways * sizeof(*cand));
    return (int)(c.n + set->nalways);
}

#else /* no Hyperscan: no prefilter, every regex is tried */

lp_rxset_t *lp_rxset_new(const char *const *pats, const size_t *lens, const uint32_t *ids, size_t n)
{
    (void)pats;
    (void)lens;
    (void)ids;
    (void)n;
    return NULL;
}

void lp_rxset_ref(lp_rxset_t *s)
{
    (void)s;
}

void lp_rxset_unref(lp_rxset_t *s)
{
    (void)s;
}

int lp_rxset_scan(const lp_rxset_t *set, const char *s, size_t len, uint32_t *cand, unsigned cap)
{
    (void)set;
    (void)s;
    (void)len;
    (void)cand;
    (void)cap;
    return -1;
}

size_t lp_rxset_fallbacks(const lp_rxset_t *set)
{
    (void)set;
    return 0;
}

const uint32_t *lp_rxset_ids(const lp_rxset_t *set, size_t *n)
{
    (void)set;
    *n = 0;
    return NULL;
}

#endif
