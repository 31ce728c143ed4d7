/* The router's Hyperscan regex prefilter: see router_hs.h. */
#include "router_hs.h"

#include <stdlib.h>
#include <string.h>

#ifdef LP_HAVE_HS
#include "hs_db.h"

#include <hs/hs.h>
#include <pthread.h>

/* A chunk of regexes. Its database is compiled on the compile thread of hs_db.c, shared by
 * pattern text with every set of the same regexes (a reload, a derived router); until it is
 * ready, every regex of the set is a candidate. */
struct lp_rxset_s {
    unsigned refs;    /* atomic: the index nodes holding it */
    lp_hsdb_t *entry; /* reference; NULL: no database will come (no thread, no memory) */
    uint32_t *ids;    /* owned array: every id of the set, in the order of its patterns */
    size_t nids;
};

/* What the compile thread makes of a set's patterns: the database (NULL: Hyperscan compiled
 * none of them) and the patterns it refused, always candidates. Ids in both are indexes
 * into the set's patterns (the database is shared by sets whose ids differ). */
typedef struct {
    hs_database_t *db; /* owned */
    uint32_t nalways;
    uint32_t always[]; /* indexes of the refused patterns */
} rxdb_t;

/* A compile job: copies of the patterns (NUL-terminated, lens[i] bytes each). */
typedef struct {
    size_t n;
    char **pats;  /* owned: n owned patterns */
    size_t *lens; /* owned: n */
} rxjob_t;

/* HS_FLAG_PREFILTER: Hyperscan approximates what it cannot match exactly (backreferences,
 * some lookarounds) by a pattern matching more, never less; PCRE2 decides. SINGLEMATCH: one
 * report per regex is all the router needs. ALLOWEMPTY: `^` or `x*` match every path. */
#define RX_FLAGS (HS_FLAG_PREFILTER | HS_FLAG_SINGLEMATCH | HS_FLAG_ALLOWEMPTY)

/* Scratch space: hs_alloc_scratch checks a scratch against a database at a cost that grows
 * with the database (too much for every request), so sets are fitted when they are built
 * instead. proto is grown (under proto_lock) by every set built, in any thread, to fit them
 * all; proto_gen counts its growths. Each thread scans with its own clone of proto, cloned
 * again when proto_gen moved on: the compile thread grows proto for a database before it
 * publishes it (release), and a scanning thread loads the database (acquire) before
 * proto_gen, so it sees the growth. The thread's clone is freed when the thread exits. */
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

static void rxjob_free(void *p)
{
    rxjob_t *j = p;
    for (size_t i = 0; j->pats && i < j->n; i++)
        free(j->pats[i]);
    free(j->pats);
    free(j->lens);
    free(j);
}

static int rxdb_free(void *p)
{
    rxdb_t *d = p;
    hs_free_database(d->db);
    free(d);
    return 0;
}

/* On the compile thread: the patterns Hyperscan takes in one database, the others set aside
 * (always candidates); the scratch prototype grown to fit it before it is published. NULL
 * when out of memory (the set's regexes then stay candidates for every path). */
static void *rxjob_compile(void *p, char **notes, size_t *notes_len)
{
    rxjob_t *j = p;
    size_t n = j->n, cap = n ? n : 1;
    (void)notes;
    (void)notes_len;
    rxdb_t *d = calloc(1, sizeof(*d) + cap * sizeof(d->always[0]));
    const char **pp = malloc(cap * sizeof(*pp));
    unsigned *fl = malloc(cap * sizeof(*fl));
    unsigned *id = malloc(cap * sizeof(*id));
    if (!d || !pp || !fl || !id) {
        free(d);
        free(pp);
        free(fl);
        free(id);
        return NULL;
    }
    unsigned m = 0;
    for (size_t i = 0; i < n; i++) {
        hs_expr_info_t *info = NULL;
        hs_compile_error_t *ce = NULL;
        /* A NUL inside a regex does not reach Hyperscan's C strings; a pattern it cannot
         * parse is set aside before the set is compiled (cheaper than failing the set). */
        int ok = strlen(j->pats[i]) == j->lens[i] &&
                 hs_expression_info(j->pats[i], RX_FLAGS, &info, &ce) == HS_SUCCESS;
        free(info);
        if (ce)
            hs_free_compile_error(ce);
        if (ok) {
            pp[m] = j->pats[i];
            fl[m] = RX_FLAGS;
            id[m++] = (unsigned)i;
        } else {
            d->always[d->nalways++] = (uint32_t)i;
        }
    }
    /* A pattern that parses can still fail to compile (too large, ...): it goes to the
     * fallbacks and the rest is compiled again. */
    while (m) {
        long bad;
        if ((d->db = compile(pp, fl, id, m, &bad)))
            break;
        if (bad < 0 || (size_t)bad >= m) {
            for (unsigned i = 0; i < m; i++)
                d->always[d->nalways++] = id[i];
            break;
        }
        d->always[d->nalways++] = id[bad];
        memmove(pp + bad, pp + bad + 1, (m - (size_t)bad - 1) * sizeof(*pp));
        memmove(id + bad, id + bad + 1, (m - (size_t)bad - 1) * sizeof(*id));
        m--;
    }
    free(pp);
    free(fl);
    free(id);
    if (d->db && !proto_fit(d->db)) { /* no scratch to scan it with: all are candidates */
        hs_free_database(d->db);
        d->db = NULL;
        d->nalways = 0;
        for (size_t i = 0; i < n; i++)
            d->always[d->nalways++] = (uint32_t)i;
    }
    return d;
}

static const lp_hsdb_ops_t rx_ops = {rxjob_compile, rxjob_free, rxdb_free, LP_HSDB_KIND_ROUTER};

/* The cache key of n patterns: a tag naming this file's flags, then each pattern's length
 * (4 bytes) and bytes. malloc'ed, *klen bytes; NULL when out of memory. */
static char *rx_key(const char *const *pats, const size_t *lens, size_t n, size_t *klen)
{
    static const char tag[] = "\0router-rx-1"; /* bump when RX_FLAGS or the job change */
    size_t len = sizeof(tag);
    for (size_t i = 0; i < n; i++)
        len += 4 + lens[i];
    char *k = malloc(len);
    if (!k)
        return NULL;
    memcpy(k, tag, sizeof(tag));
    size_t o = sizeof(tag);
    for (size_t i = 0; i < n; i++) {
        uint32_t l = (uint32_t)lens[i];
        memcpy(k + o, &l, 4);
        memcpy(k + o + 4, pats[i], lens[i]);
        o += 4 + lens[i];
    }
    *klen = len;
    return k;
}

static rxjob_t *rxjob_new(const char *const *pats, const size_t *lens, size_t n)
{
    rxjob_t *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    j->n = n;
    j->pats = calloc(n ? n : 1, sizeof(*j->pats));
    j->lens = malloc((n ? n : 1) * sizeof(*j->lens));
    int ok = j->pats && j->lens;
    for (size_t i = 0; ok && i < n; i++) {
        if ((j->pats[i] = malloc(lens[i] + 1))) {
            memcpy(j->pats[i], pats[i], lens[i]);
            j->pats[i][lens[i]] = 0;
            j->lens[i] = lens[i];
        } else {
            ok = 0;
        }
    }
    if (!ok) {
        rxjob_free(j);
        return NULL;
    }
    return j;
}

lp_rxset_t *lp_rxset_new(const char *const *pats, const size_t *lens, const uint32_t *ids, size_t n)
{
    if (n > UINT32_MAX)
        return NULL;
    lp_rxset_t *s = calloc(1, sizeof(*s));
    size_t klen = 0;
    char *key = rx_key(pats, lens, n, &klen);
    rxjob_t *job = key ? rxjob_new(pats, lens, n) : NULL;
    if (s)
        s->ids = malloc((n ? n : 1) * sizeof(*s->ids));
    if (!s || !s->ids || !job) {
        if (job)
            rxjob_free(job);
        free(key);
        if (s)
            free(s->ids);
        free(s);
        return NULL;
    }
    memcpy(s->ids, ids, n * sizeof(*ids));
    s->nids = n;
    s->refs = 1;
    /* Known key: a reference to the same database (the job is dropped); else queued. NULL
     * (no thread): no database, every regex stays a candidate. */
    s->entry = lp_hsdb_submit(key, klen, job, &rx_ops);
    free(key);
    return s;
}

int lp_rxset_ready(const lp_rxset_t *set)
{
    return set && set->entry && lp_hsdb_ready(set->entry);
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
    lp_hsdb_put(s->entry); /* the compile may still run: the cache's entry outlives the set */
    free(s->ids);
    free(s);
}

size_t lp_rxset_fallbacks(const lp_rxset_t *set)
{
    const rxdb_t *d = set && set->entry ? lp_hsdb_ready(set->entry) : NULL;
    return d ? d->nalways : 0;
}

const uint32_t *lp_rxset_ids(const lp_rxset_t *set, size_t *n)
{
    *n = set->nids;
    return set->ids;
}

typedef struct {
    uint32_t *cand;      /* borrowed: the caller's array */
    const uint32_t *ids; /* borrowed: the set's ids, by pattern index */
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
    c->cand[c->n++] = c->ids[id];
    return 0;
}

int lp_rxset_scan(const lp_rxset_t *set, const char *s, size_t len, uint32_t *cand, unsigned cap)
{
    const rxdb_t *d = set->entry ? lp_hsdb_ready(set->entry) : NULL;
    if (!d) { /* not compiled (yet): every regex of the set is a candidate */
        if (set->nids > cap)
            return -1;
        memcpy(cand, set->ids, set->nids * sizeof(*cand));
        return (int)set->nids;
    }
    if (d->nalways > cap || len > UINT32_MAX)
        return -1;
    unsigned n = 0;
    if (d->db) {
        hs_scratch_t *scratch = thread_scratch();
        if (!scratch)
            return -1;
        collect_t c = {cand, set->ids, 0, (unsigned)(cap - d->nalways), 0};
        hs_error_t rc = hs_scan(d->db, s ? s : "", (unsigned)len, 0, scratch, on_match, &c);
        if ((rc != HS_SUCCESS && rc != HS_SCAN_TERMINATED) || c.more)
            return -1;
        n = c.n;
    }
    for (uint32_t i = 0; i < d->nalways; i++)
        cand[n++] = set->ids[d->always[i]];
    return (int)n;
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

int lp_rxset_ready(const lp_rxset_t *set)
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
