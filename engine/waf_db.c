/* The waf plugin's compiled pattern databases, shared by every Lua VM of the process
 * (lua/luaproxy/waf/hs.lua). Compiling CRS's Hyperscan databases takes seconds of CPU; each
 * worker's VM compiling its own at every reload made CRS too slow to be the default. A
 * database is read-only once compiled and Hyperscan allows scanning one from many threads
 * at once (each with its own scratch space, which stays per VM), so the first VM that
 * needs a database compiles it and publishes it here under the key of what it was compiled
 * from; the others, and the next generation's VMs while the current one holds it, take a
 * reference instead of compiling.
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
 * asks for them with lp_ffi_waf_db_compile: one thread of this file (started on the first
 * job, living until exit) compiles each key once, finding Hyperscan's functions in the
 * executable (dlsym), and publishes the result; VMs poll with lp_ffi_waf_db_get and run
 * the group's rules through PCRE2 alone until it is there (same answers, slower). Such an
 * entry lives from the job until the last reference taken on it is given back, like any
 * other (one compiled for a generation that ended before taking it stays until exit). */
#include "request.h" /* lua_api.h names lp_req_s */
#include "lua_api.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

typedef struct waf_db {
    struct waf_db *next;   /* owned: the next entry of the list */
    char *key;             /* owned: what the database was compiled from, len bytes */
    size_t len;            /* bytes of key */
    void *db;              /* owned: the compiled database (read-only once published) */
    char *meta;            /* owned: the publisher's notes on the compile, meta_len bytes */
    size_t meta_len;       /* bytes of meta */
    lp_waf_db_free_fn fre; /* frees db when the last reference goes */
    long refs;             /* references held (one per VM using it), under db_lock */
    int state;             /* LP_WAF_DB_*, under db_lock */
    /* The job (state PENDING): owned, freed when it is done. */
    unsigned n;         /* patterns */
    char **exprs;       /* owned: n patterns */
    unsigned *flags;    /* owned: n Hyperscan flags */
    unsigned *ids;      /* owned: n ids */
    struct waf_db *job; /* borrowed: the next entry waiting for the thread */
} waf_db_t;

/* Guards db_list and every entry's refs. Held only for a list walk: never while compiling,
 * so two VMs compiling the same key race harmlessly (the second publish keeps the first). */
static pthread_mutex_t db_lock = PTHREAD_MUTEX_INITIALIZER;
static waf_db_t *db_list; /* owned: the entries (tens at most: one per transformation chain
                           * and rule set), newest first */

static waf_db_t *job_first, *job_last; /* borrowed: entries waiting for the thread, FIFO */
static pthread_cond_t job_cond = PTHREAD_COND_INITIALIZER; /* signalled when one is queued */
static int job_thread_on; /* flag: the compile thread was started */
static int job_busy;      /* flag: the thread is compiling a job, under db_lock */
static int job_exiting;   /* flag: the process exits: no job is started any more */
static pthread_cond_t job_done = PTHREAD_COND_INITIALIZER; /* signalled when a job ends */

static waf_db_t *find_key(const char *key, size_t len)
{
    for (waf_db_t *e = db_list; e; e = e->next)
        if (e->len == len && memcmp(e->key, key, len) == 0)
            return e;
    return NULL;
}

static void *take(waf_db_t *e, const char **meta, size_t *meta_len)
{
    e->refs++;
    if (meta)
        *meta = e->meta;
    if (meta_len)
        *meta_len = e->meta_len;
    return e->db;
}

void *lp_ffi_waf_db_acquire(const char *key, size_t len, const char **meta, size_t *meta_len)
{
    pthread_mutex_lock(&db_lock);
    waf_db_t *e = find_key(key, len);
    void *db = e && e->state == LP_WAF_DB_READY ? take(e, meta, meta_len) : NULL;
    pthread_mutex_unlock(&db_lock);
    return db;
}

int lp_ffi_waf_db_get(const char *key, size_t len, void **db, const char **meta, size_t *meta_len)
{
    pthread_mutex_lock(&db_lock);
    waf_db_t *e = find_key(key, len);
    int st = e ? e->state : LP_WAF_DB_NONE;
    if (db)
        *db = NULL;
    if (st == LP_WAF_DB_READY && db)
        *db = take(e, meta, meta_len);
    else if (st == LP_WAF_DB_FAILED) {
        *meta = e->meta;
        *meta_len = e->meta_len;
    }
    pthread_mutex_unlock(&db_lock);
    return st;
}

void *lp_ffi_waf_db_publish(const char *key, size_t len, void *db, lp_waf_db_free_fn fre,
                            const char *meta, size_t meta_len, const char **meta_out,
                            size_t *meta_out_len)
{
    pthread_mutex_lock(&db_lock);
    waf_db_t *e = find_key(key, len);
    if (e && e->state != LP_WAF_DB_READY) {
        /* The thread here is compiling it (or failed to): this VM's copy is its own. */
        pthread_mutex_unlock(&db_lock);
        return NULL;
    }
    if (e) {
        /* Another VM published the same key while this one compiled: keep the first. */
        void *got = take(e, meta_out, meta_out_len);
        pthread_mutex_unlock(&db_lock);
        fre(db);
        return got;
    }
    e = calloc(1, sizeof(*e));
    char *k = malloc(len ? len : 1);
    char *m = malloc(meta_len ? meta_len : 1);
    if (!e || !k || !m) {
        pthread_mutex_unlock(&db_lock);
        free(e);
        free(k);
        free(m);
        return NULL; /* the caller keeps db as its own */
    }
    memcpy(k, key, len);
    memcpy(m, meta, meta_len);
    e->key = k;
    e->len = len;
    e->db = db;
    e->meta = m;
    e->meta_len = meta_len;
    e->fre = fre;
    e->state = LP_WAF_DB_READY;
    e->next = db_list;
    db_list = e;
    void *got = take(e, meta_out, meta_out_len);
    pthread_mutex_unlock(&db_lock);
    return got;
}

void lp_ffi_waf_db_release(void *db)
{
    waf_db_t *gone = NULL;
    pthread_mutex_lock(&db_lock);
    for (waf_db_t **p = &db_list; *p; p = &(*p)->next) {
        if ((*p)->db == db) {
            if (--(*p)->refs == 0) {
                gone = *p;
                *p = gone->next;
            }
            break;
        }
    }
    pthread_mutex_unlock(&db_lock);
    if (gone) {
        gone->fre(gone->db);
        free(gone->key);
        free(gone->meta);
        free(gone);
    }
}

int lp_ffi_waf_db_count(void)
{
    int n = 0;
    pthread_mutex_lock(&db_lock);
    for (waf_db_t *e = db_list; e; e = e->next)
        n++;
    pthread_mutex_unlock(&db_lock);
    return n;
}

/* ---- the compile thread ---- */

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
} hsf; /* set before the thread starts, read-only after */

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
static void *compile_job(waf_db_t *e, text_t *notes)
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

static void *compile_thread(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "lp-waf-compile", 0, 0, 0); /* for top -H (docs/architecture.md) */
    pthread_mutex_lock(&db_lock);
    for (;;) {
        while (!job_first || job_exiting) {
            if (job_exiting) {
                pthread_mutex_unlock(&db_lock);
                return NULL;
            }
            pthread_cond_wait(&job_cond, &db_lock);
        }
        waf_db_t *e = job_first;
        job_busy = 1;
        job_first = e->job;
        if (!job_first)
            job_last = NULL;
        pthread_mutex_unlock(&db_lock);
        text_t notes = {0};
        void *db = compile_job(e, &notes);
        for (unsigned i = 0; i < e->n; i++)
            free(e->exprs[i]);
        free(e->exprs);
        free(e->flags);
        free(e->ids);
        e->exprs = NULL;
        e->flags = e->ids = NULL;
        pthread_mutex_lock(&db_lock);
        e->db = db;
        e->meta = notes.p ? notes.p : calloc(1, 1);
        e->meta_len = notes.p ? notes.n : 0;
        e->state = db ? LP_WAF_DB_READY : LP_WAF_DB_FAILED;
        job_busy = 0;
        pthread_cond_broadcast(&job_done);
    }
    return NULL;
}

/* At exit, the thread must not be inside Hyperscan while the C++ runtime's statics are
 * destroyed: the queue is dropped and the job being compiled awaited (`luaproxy -t` exits
 * right after init_worker queued the jobs). */
static void stop_jobs(void)
{
    pthread_mutex_lock(&db_lock);
    job_exiting = 1;
    pthread_cond_broadcast(&job_cond);
    while (job_busy)
        pthread_cond_wait(&job_done, &db_lock);
    pthread_mutex_unlock(&db_lock);
}

static int find_hs(void)
{
    if (hsf.multi)
        return 0;
    hsf.multi = (hs_compile_multi_fn)dlsym(RTLD_DEFAULT, "hs_compile_multi");
    hsf.one = (hs_compile_fn)dlsym(RTLD_DEFAULT, "hs_compile");
    hsf.free_error = (hs_free_error_fn)dlsym(RTLD_DEFAULT, "hs_free_compile_error");
    hsf.free_db = (lp_waf_db_free_fn)dlsym(RTLD_DEFAULT, "hs_free_database");
    if (!hsf.multi || !hsf.one || !hsf.free_error || !hsf.free_db) {
        hsf.multi = NULL;
        return -1;
    }
    return 0;
}

int lp_ffi_waf_db_compile(const char *key, size_t len, unsigned n, const char *const *exprs,
                          const unsigned *flags, const unsigned *ids)
{
    pthread_mutex_lock(&db_lock);
    waf_db_t *e = find_key(key, len);
    if (e) {
        int st = e->state;
        pthread_mutex_unlock(&db_lock);
        return st;
    }
    if (job_exiting || find_hs())
        goto fail;
    if (!job_thread_on) {
        pthread_t t;
        if (pthread_create(&t, NULL, compile_thread, NULL))
            goto fail;
        pthread_detach(t);
        job_thread_on = 1;
        atexit(stop_jobs);
    }
    e = calloc(1, sizeof(*e));
    if (!e)
        goto fail;
    e->key = malloc(len ? len : 1);
    e->exprs = calloc(n ? n : 1, sizeof(*e->exprs));
    e->flags = malloc((n ? n : 1) * sizeof(*e->flags));
    e->ids = malloc((n ? n : 1) * sizeof(*e->ids));
    int oom = !e->key || !e->exprs || !e->flags || !e->ids;
    for (unsigned i = 0; i < n && !oom; i++)
        oom = !(e->exprs[i] = strdup(exprs[i]));
    if (oom) {
        for (unsigned i = 0; e->exprs && i < n; i++)
            free(e->exprs[i]);
        free(e->exprs);
        free(e->flags);
        free(e->ids);
        free(e->key);
        free(e);
        goto fail;
    }
    memcpy(e->key, key, len);
    memcpy(e->flags, flags, n * sizeof(*flags));
    memcpy(e->ids, ids, n * sizeof(*ids));
    e->len = len;
    e->n = n;
    e->fre = hsf.free_db;
    e->state = LP_WAF_DB_PENDING;
    e->next = db_list;
    db_list = e;
    if (job_last)
        job_last->job = e;
    else
        job_first = e;
    job_last = e;
    pthread_cond_signal(&job_cond);
    pthread_mutex_unlock(&db_lock);
    return LP_WAF_DB_PENDING;
fail:
    pthread_mutex_unlock(&db_lock);
    return LP_WAF_DB_NONE; /* the caller compiles it itself */
}
