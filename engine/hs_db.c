/* The cache of compiled Hyperscan databases and its compile thread: see hs_db.h. */
#include "hs_db.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

struct lp_hsdb_s {
    lp_hsdb_t *next; /* owned: the next entry of the list */
    char *key;       /* owned: what the database was compiled from, len bytes */
    size_t len;      /* bytes of key */
    void *db;        /* owned, under db_lock: the compiled database (read-only once set) */
    /* Borrowed (db's pointer): the same database for lock-free readers (NULL until compiled).
     * Memory order: the compile thread stores it with release after the database is complete and
     * after the job's own publication steps (the router's scratch prototype grown for it:
     * router_hs.c), readers load it with acquire, so a reader that sees it sees all of that. Set
     * once, never cleared while the entry lives (a reader holds a reference). */
    void *ready;
    char *meta;        /* owned: notes on the compile, meta_len bytes */
    size_t meta_len;   /* bytes of meta */
    lp_hsdb_ops_t ops; /* how to compile and free it */
    long refs;         /* references held, under db_lock */
    int state;         /* LP_HSDB_*, under db_lock */
    int thread_ref;    /* flag: the compile thread holds one of refs (queued by lp_hsdb_submit,
                          until its compile ends) */
    void *job;         /* owned: the job while PENDING, freed by ops.job_free */
    lp_hsdb_t *qnext;  /* borrowed: the next entry waiting for the thread */
};

/* Guards db_list, the queue and every entry's fields but `ready`. Held only for list walks,
 * never while compiling, so two VMs compiling the same key themselves race harmlessly (the
 * second publish keeps the first). */
static pthread_mutex_t db_lock = PTHREAD_MUTEX_INITIALIZER;
static lp_hsdb_t *db_list; /* owned: the entries, newest first (tens for CRS, one per 128
                              regex routes of one index list) */

static lp_hsdb_t *job_first, *job_last; /* borrowed: entries waiting for the thread, FIFO */
static pthread_cond_t job_cond = PTHREAD_COND_INITIALIZER; /* signalled when one is queued */
static int job_thread_on;    /* flag: the compile thread was started */
static pthread_t job_thread; /* the compile thread (joined at exit), valid while job_thread_on */
static int job_busy;         /* flag: the thread is compiling a job, under db_lock */
static int job_exiting;      /* flag: the process exits: no job is started any more */
static int job_hold;         /* flag (tests): the thread starts no job */
static unsigned long job_compiles;                         /* compiles run, under db_lock */
static pthread_cond_t job_done = PTHREAD_COND_INITIALIZER; /* signalled when a job ends */

static lp_hsdb_t *find_key(const char *key, size_t len)
{
    for (lp_hsdb_t *e = db_list; e; e = e->next)
        if (e->len == len && memcmp(e->key, key, len) == 0)
            return e;
    return NULL;
}

static void *take(lp_hsdb_t *e, const char **meta, size_t *meta_len)
{
    e->refs++;
    if (meta)
        *meta = e->meta;
    if (meta_len)
        *meta_len = e->meta_len;
    return e->db;
}

static void unlink_entry(lp_hsdb_t *e)
{
    for (lp_hsdb_t **p = &db_list; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            return;
        }
}

/* Frees an entry out of the list (not under db_lock: fre may take time). */
static void free_entry(lp_hsdb_t *e)
{
    if (e->db)
        e->ops.fre(e->db);
    if (e->job)
        e->ops.job_free(e->job);
    free(e->key);
    free(e->meta);
    free(e);
}

void *lp_hsdb_acquire(const char *key, size_t len, const char **meta, size_t *meta_len)
{
    pthread_mutex_lock(&db_lock);
    lp_hsdb_t *e = find_key(key, len);
    void *db = e && e->state == LP_HSDB_READY ? take(e, meta, meta_len) : NULL;
    pthread_mutex_unlock(&db_lock);
    return db;
}

int lp_hsdb_get(const char *key, size_t len, void **db, const char **meta, size_t *meta_len)
{
    pthread_mutex_lock(&db_lock);
    lp_hsdb_t *e = find_key(key, len);
    int st = e ? e->state : LP_HSDB_NONE;
    if (db)
        *db = NULL;
    if (st == LP_HSDB_READY && db)
        *db = take(e, meta, meta_len);
    else if (st == LP_HSDB_FAILED && meta && meta_len) { /* the WAF asks for the state only */
        *meta = e->meta;
        *meta_len = e->meta_len;
    }
    pthread_mutex_unlock(&db_lock);
    return st;
}

void *lp_hsdb_publish(const char *key, size_t len, void *db, lp_hsdb_free_fn fre, const char *meta,
                      size_t meta_len, const char **meta_out, size_t *meta_out_len)
{
    pthread_mutex_lock(&db_lock);
    lp_hsdb_t *e = find_key(key, len);
    if (e && e->state != LP_HSDB_READY) {
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
    __atomic_store_n(&e->ready, db, __ATOMIC_RELEASE);
    e->meta = m;
    e->meta_len = meta_len;
    e->ops = (lp_hsdb_ops_t){NULL, NULL, fre, LP_HSDB_KIND_WAF};
    e->state = LP_HSDB_READY;
    e->next = db_list;
    db_list = e;
    void *got = take(e, meta_out, meta_out_len);
    pthread_mutex_unlock(&db_lock);
    return got;
}

void lp_hsdb_release_db(void *db)
{
    lp_hsdb_t *gone = NULL;
    pthread_mutex_lock(&db_lock);
    for (lp_hsdb_t **p = &db_list; *p; p = &(*p)->next) {
        if ((*p)->db == db) {
            if (--(*p)->refs == 0) {
                gone = *p;
                *p = gone->next;
            }
            break;
        }
    }
    pthread_mutex_unlock(&db_lock);
    if (gone)
        free_entry(gone);
}

void lp_hsdb_put(lp_hsdb_t *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&db_lock);
    int last = --e->refs == 0; /* never while queued: the thread holds one */
    if (last)
        unlink_entry(e);
    pthread_mutex_unlock(&db_lock);
    if (last)
        free_entry(e);
}

void *lp_hsdb_ready(const lp_hsdb_t *e)
{
    return __atomic_load_n(&e->ready, __ATOMIC_ACQUIRE);
}

int lp_hsdb_count(int kind)
{
    int n = 0;
    pthread_mutex_lock(&db_lock);
    for (lp_hsdb_t *e = db_list; e; e = e->next)
        n += e->ops.kind == kind;
    pthread_mutex_unlock(&db_lock);
    return n;
}

/* ---- the compile thread ---- */

static void *compile_thread(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "lp-hs-compile", 0, 0, 0); /* for top -H (docs/architecture.md) */
    pthread_mutex_lock(&db_lock);
    for (;;) {
        while (!job_first || job_hold || job_exiting) {
            if (job_exiting) {
                pthread_mutex_unlock(&db_lock);
                return NULL;
            }
            pthread_cond_wait(&job_cond, &db_lock);
        }
        lp_hsdb_t *e = job_first;
        job_first = e->qnext;
        if (!job_first)
            job_last = NULL;
        if (e->thread_ref && e->refs == 1) {
            /* Every user is gone (a router replaced before its chunk came up): dropped. */
            unlink_entry(e);
            pthread_mutex_unlock(&db_lock);
            free_entry(e);
            pthread_mutex_lock(&db_lock);
            pthread_cond_broadcast(&job_done);
            continue;
        }
        job_busy = 1;
        void *job = e->job;
        e->job = NULL;
        pthread_mutex_unlock(&db_lock);
        char *notes = NULL;
        size_t notes_len = 0;
        void *db = e->ops.compile(job, &notes, &notes_len);
        e->ops.job_free(job);
        pthread_mutex_lock(&db_lock);
        e->db = db;
        e->meta = notes ? notes : calloc(1, 1);
        e->meta_len = notes ? notes_len : 0;
        e->state = db ? LP_HSDB_READY : LP_HSDB_FAILED;
        if (db)
            __atomic_store_n(&e->ready, db, __ATOMIC_RELEASE);
        job_busy = 0;
        job_compiles++;
        lp_hsdb_t *gone = NULL;
        if (e->thread_ref) {
            e->thread_ref = 0;
            if (--e->refs == 0) {
                unlink_entry(e);
                gone = e;
            }
        }
        pthread_cond_broadcast(&job_done);
        if (gone) {
            pthread_mutex_unlock(&db_lock);
            free_entry(gone);
            pthread_mutex_lock(&db_lock);
        }
    }
    return NULL;
}

/* At exit, the thread must not be inside Hyperscan while the C++ runtime's statics are
 * destroyed (`luaproxy -t` exits right after loading queued the jobs), nor run this file's
 * code after a module holding it (the native library of the proxy.test double) is
 * unloaded: the queue is dropped and the thread joined, after the job it is compiling. */
static void stop_jobs(void)
{
    pthread_mutex_lock(&db_lock);
    job_exiting = 1;
    pthread_cond_broadcast(&job_cond);
    int on = job_thread_on;
    job_thread_on = 0;
    pthread_mutex_unlock(&db_lock);
    if (on)
        pthread_join(job_thread, NULL);
}

/* Queues a new entry for key (under db_lock); NULL when the thread cannot take it. */
static lp_hsdb_t *enqueue(const char *key, size_t len, void *job, const lp_hsdb_ops_t *ops)
{
    if (job_exiting)
        return NULL;
    if (!job_thread_on) {
        if (pthread_create(&job_thread, NULL, compile_thread, NULL))
            return NULL;
        job_thread_on = 1;
        atexit(stop_jobs);
    }
    lp_hsdb_t *e = calloc(1, sizeof(*e));
    char *k = malloc(len ? len : 1);
    if (!e || !k) {
        free(e);
        free(k);
        return NULL;
    }
    memcpy(k, key, len);
    e->key = k;
    e->len = len;
    e->ops = *ops;
    e->job = job;
    e->state = LP_HSDB_PENDING;
    e->next = db_list;
    db_list = e;
    if (job_last)
        job_last->qnext = e;
    else
        job_first = e;
    job_last = e;
    pthread_cond_signal(&job_cond);
    return e;
}

lp_hsdb_t *lp_hsdb_submit(const char *key, size_t len, void *job, const lp_hsdb_ops_t *ops)
{
    pthread_mutex_lock(&db_lock);
    lp_hsdb_t *e = find_key(key, len);
    if (e) {
        e->refs++;
        pthread_mutex_unlock(&db_lock);
        ops->job_free(job);
        return e;
    }
    if ((e = enqueue(key, len, job, ops))) {
        e->refs = 2; /* the caller's and the thread's */
        e->thread_ref = 1;
    }
    pthread_mutex_unlock(&db_lock);
    if (!e)
        ops->job_free(job);
    return e;
}

int lp_hsdb_queue(const char *key, size_t len, void *job, const lp_hsdb_ops_t *ops)
{
    pthread_mutex_lock(&db_lock);
    lp_hsdb_t *e = find_key(key, len);
    int st = e ? e->state : enqueue(key, len, job, ops) ? LP_HSDB_PENDING : LP_HSDB_NONE;
    pthread_mutex_unlock(&db_lock);
    if (e || st == LP_HSDB_NONE)
        ops->job_free(job);
    return st;
}

void lp_hsdb_hold(int on)
{
    pthread_mutex_lock(&db_lock);
    job_hold = on;
    pthread_cond_broadcast(&job_cond);
    pthread_mutex_unlock(&db_lock);
}

int lp_hsdb_wait_idle(long ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    int rc = 0;
    pthread_mutex_lock(&db_lock);
    while ((job_first && !job_hold && job_thread_on) || job_busy) {
        if (pthread_cond_timedwait(&job_done, &db_lock, &until) == ETIMEDOUT) {
            rc = (job_first && !job_hold && job_thread_on) || job_busy ? -1 : 0;
            break;
        }
    }
    pthread_mutex_unlock(&db_lock);
    return rc;
}

unsigned long lp_hsdb_compiles(void)
{
    pthread_mutex_lock(&db_lock);
    unsigned long n = job_compiles;
    pthread_mutex_unlock(&db_lock);
    return n;
}
