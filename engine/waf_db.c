/* The waf plugin's compiled pattern databases, shared by every Lua VM of the process
 * (lua/luaproxy/waf/hs.lua); they are kept in the process's cache of Hyperscan databases
 * (engine/hs_db.c, shared with the router's regex prefilter): this file is the plugin's front.
 * Compiling CRS's Hyperscan databases takes seconds of CPU; each worker's VM compiling its own at
 * every reload made CRS too slow to be the default. A database is read-only once compiled and
 * Hyperscan allows scanning one from many threads at once (each with its own scratch space, which
 * stays per VM), so the first VM that needs a database compiles it and publishes it here under the
 * key of what it was compiled from; the others, and the next generation's VMs while the current one
 * holds it, take a reference instead of compiling.
 *
 * Sharing rule: an entry lives while a reference is held. Every reference belongs to one VM
 * (a generation's worker VM, the config check's VM) and is given back by a finalizer when
 * that VM closes, so an entry lives as long as the last generation that uses it; a reload
 * whose rules did not change finds every database here, because the new generation's VMs
 * take their references before the old generation drains. The engine itself does not link
 * Hyperscan: the publisher hands in the function that frees its database.
 *
 * Compiling: CRS's databases take seconds of CPU, longer than lua.phase_timeout (time
 * without a yield) and, on a loaded machine, lua.init_timeout allow a worker's Lua. So a VM
 * asks for them with lp_ffi_waf_db_compile: the process's compile thread (engine/hs_db.c,
 * shared with the router's regex prefilter) compiles each key once with the functions of
 * this file, which find Hyperscan's in the executable (dlsym), and publishes the result; VMs
 * poll with lp_ffi_waf_db_get and run the group's rules through PCRE2 alone until it is there (same
 * answers, slower). Such an entry lives from the job until the last reference taken on it is given
 * back, like any other (one compiled for a generation that ended before taking it stays until
 * exit). */
#include "request.h" /* lua_api.h names lp_req_s */
#include "hs_db.h"
#include "lua_api.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *lp_ffi_waf_db_acquire(const char *key, size_t len, const char **meta, size_t *meta_len)
{
    return lp_hsdb_acquire(key, len, meta, meta_len);
}

int lp_ffi_waf_db_get(const char *key, size_t len, void **db, const char **meta, size_t *meta_len)
{
    return lp_hsdb_get(key, len, db, meta, meta_len);
}

void *lp_ffi_waf_db_publish(const char *key, size_t len, void *db, lp_waf_db_free_fn fre,
                            const char *meta, size_t meta_len, const char **meta_out,
                            size_t *meta_out_len)
{
    return lp_hsdb_publish(key, len, db, fre, meta, meta_len, meta_out, meta_out_len);
}

void lp_ffi_waf_db_release(void *db)
{
    lp_hsdb_release_db(db);
}

int lp_ffi_waf_db_count(void)
{
    return lp_hsdb_count(LP_HSDB_KIND_WAF);
}

/* ---- compiling on the cache's thread ---- */

/* A group to compile: owned copies of what the VM gave. */
typedef struct {
    unsigned n;      /* patterns */
    char **exprs;    /* owned: n patterns */
    unsigned *flags; /* owned: n Hyperscan flags */
    unsigned *ids;   /* owned: n ids */
} waf_job_t;

/* Hyperscan's API, found in the executable at run time (CMakeLists.txt links libhs when it
 * is installed); the values are hs_compile.h's and hs_common.h's. */
typedef struct hs_err {
    char *message;
    int expression;
} hs_err_t;
typedef int (*hs_compile_multi_fn)(const char *const *, const unsigned *, const unsigned *,
                                   unsigned, unsigned, const void *, void **, hs_err_t **);
typedef int (*hs_compile_fn)(const char *, unsigned, unsigned, const void *, void **, hs_err_t **);
typedef int (*hs_free_error_fn)(hs_err_t *);
enum { HS_MODE_BLOCK = 1, HS_FLAG_PREFILTER = 128 };

static struct {
    hs_compile_multi_fn multi;
    hs_compile_fn one;
    hs_free_error_fn free_error;
    lp_waf_db_free_fn free_db;
} hsf; /* set once by find_hs, before any job that uses it is queued; read-only after */

/* Appends to a growing text; out of memory drops the text (the job then fails). */
typedef struct {
    char *p;
    size_t n, cap;
} text_t;

static void text_add(text_t *t, const char *s, size_t n)
{
    if (!t->p && t->cap)
        return; /* failed already */
    if (t->n + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        while (cap < t->n + n + 1)
            cap *= 2;
        char *q = realloc(t->p, cap);
        if (!q) {
            free(t->p);
            t->p = NULL;
            t->cap = 1;
            return;
        }
        t->p = q;
        t->cap = cap;
    }
    memcpy(t->p + t->n, s, n);
    t->n += n;
    t->p[t->n] = 0;
}

/* Compiles a job: the group at once; a pattern Hyperscan refuses (the error names it) goes
 * in as a prefilter when it compiles so alone (PCRE2 confirms every hit anyway), else the
 * patterns of its condition (same id) are left out for PCRE2 to run. The notes say what
 * changed, as luaproxy/waf/engine.lua's compile_group reads them: "K index flags" per
 * pattern kept (1-based), "D id why" per condition left out; none when all went in as
 * given. Returns the database or NULL (notes: why). */
static void *compile_job(waf_job_t *e, text_t *notes)
{
    unsigned n = e->n, m = n;
    unsigned *kept = malloc((n ? n : 1) * sizeof(*kept));
    const char **ex = malloc((n ? n : 1) * sizeof(*ex));
    unsigned *fl = malloc((n ? n : 1) * sizeof(*fl));
    unsigned *id = malloc((n ? n : 1) * sizeof(*id));
    text_t drops = {0};
    void *db = NULL;
    int changed = 0;
    char line[640];
    if (!kept || !ex || !fl || !id) {
        text_add(notes, "out of memory", 13);
        goto out;
    }
    for (unsigned i = 0; i < n; i++)
        kept[i] = i;
    for (unsigned round = 0; round <= n + 1 && m > 0; round++) {
        for (unsigned i = 0; i < m; i++) {
            ex[i] = e->exprs[kept[i]];
            fl[i] = e->flags[kept[i]];
            id[i] = e->ids[kept[i]];
        }
        hs_err_t *err = NULL;
        if (hsf.multi(ex, fl, id, m, HS_MODE_BLOCK, NULL, &db, &err) == 0)
            break;
        db = NULL;
        int bad = err ? err->expression : -1;
        snprintf(line, sizeof(line), "%s", err && err->message ? err->message : "refused");
        if (err)
            hsf.free_error(err);
        for (char *c = line; *c; c++)
            if (*c == '\n')
                *c = ' ';
        if (bad < 0 || (unsigned)bad >= m) {
            notes->n = 0;
            text_add(notes, line, strlen(line));
            goto out;
        }
        unsigned k = kept[bad];
        changed = 1;
        void *one = NULL;
        hs_err_t *err1 = NULL;
        if (!(e->flags[k] & HS_FLAG_PREFILTER) &&
            hsf.one(e->exprs[k], e->flags[k] | HS_FLAG_PREFILTER, HS_MODE_BLOCK, NULL, &one,
                    &err1) == 0) {
            hsf.free_db(one);
            e->flags[k] |= HS_FLAG_PREFILTER;
            continue;
        }
        if (err1)
            hsf.free_error(err1);
        unsigned cid = e->ids[k], w = 0;
        for (unsigned i = 0; i < m; i++)
            if (e->ids[kept[i]] != cid)
                kept[w++] = kept[i];
        m = w;
        char d[720];
        int dn = snprintf(d, sizeof(d), "D %u %s\n", cid, line);
        text_add(&drops, d, dn > 0 ? (size_t)dn : 0);
    }
    if (!db) {
        notes->n = 0;
        text_add(notes, m ? "refused" : "none", m ? 7 : 4);
        if (notes->p && !m && drops.p) {
            /* every pattern left out: say which, the VM runs them through PCRE2 */
            notes->n = 0;
            text_add(notes, "none\n", 5);
            text_add(notes, drops.p, drops.n);
        }
        goto out;
    }
    if (changed) {
        for (unsigned i = 0; i < m; i++) {
            int ln = snprintf(line, sizeof(line), "K %u %u\n", kept[i] + 1, e->flags[kept[i]]);
            text_add(notes, line, ln > 0 ? (size_t)ln : 0);
        }
        if (drops.p)
            text_add(notes, drops.p, drops.n);
        if (!notes->p) {
            hsf.free_db(db);
            db = NULL;
        }
    }
out:
    free(kept);
    free(ex);
    free(fl);
    free(id);
    free(drops.p);
    return db;
}

static void *run_job(void *job, char **notes, size_t *notes_len)
{
    text_t t = {0};
    void *db = compile_job(job, &t);
    *notes = t.p;
    *notes_len = t.p ? t.n : 0;
    return db;
}

static void free_job(void *job)
{
    waf_job_t *j = job;
    for (unsigned i = 0; j->exprs && i < j->n; i++)
        free(j->exprs[i]);
    free(j->exprs);
    free(j->flags);
    free(j->ids);
    free(j);
}

/* Looks Hyperscan's functions up once (pthread_once: VMs of several workers may ask at once);
 * hsf stays all NULL when one is missing. */
static void find_hs_once(void)
{
    hsf.multi = (hs_compile_multi_fn)dlsym(RTLD_DEFAULT, "hs_compile_multi");
    hsf.one = (hs_compile_fn)dlsym(RTLD_DEFAULT, "hs_compile");
    hsf.free_error = (hs_free_error_fn)dlsym(RTLD_DEFAULT, "hs_free_compile_error");
    hsf.free_db = (lp_waf_db_free_fn)dlsym(RTLD_DEFAULT, "hs_free_database");
    if (!hsf.multi || !hsf.one || !hsf.free_error || !hsf.free_db)
        hsf.multi = NULL;
}

static int find_hs(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, find_hs_once);
    return hsf.multi ? 0 : -1;
}

int lp_ffi_waf_db_compile(const char *key, size_t len, unsigned n, const char *const *exprs,
                          const unsigned *flags, const unsigned *ids)
{
    int st = lp_hsdb_get(key, len, NULL, NULL, NULL);
    if (st != LP_HSDB_NONE)
        return st;
    if (find_hs())
        return LP_WAF_DB_NONE; /* the caller compiles it itself */
    waf_job_t *j = calloc(1, sizeof(*j));
    if (!j)
        return LP_WAF_DB_NONE;
    j->exprs = calloc(n ? n : 1, sizeof(*j->exprs));
    j->flags = malloc((n ? n : 1) * sizeof(*j->flags));
    j->ids = malloc((n ? n : 1) * sizeof(*j->ids));
    j->n = n;
    int oom = !j->exprs || !j->flags || !j->ids;
    for (unsigned i = 0; i < n && !oom; i++)
        oom = !(j->exprs[i] = strdup(exprs[i]));
    if (oom) {
        free_job(j);
        return LP_WAF_DB_NONE;
    }
    memcpy(j->flags, flags, n * sizeof(*flags));
    memcpy(j->ids, ids, n * sizeof(*ids));
    lp_hsdb_ops_t ops = {run_job, free_job, hsf.free_db, LP_HSDB_KIND_WAF};
    return lp_hsdb_queue(key, len, j, &ops);
}
