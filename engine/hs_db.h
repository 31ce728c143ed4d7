/* The process's cache of compiled Hyperscan databases and the one thread that compiles them
 * (`lp-hs-compile`), shared by the waf plugin (engine/waf_db.c, its Lua front) and the
 * router's regex prefilter (engine/router_hs.c). Compiling a database takes milliseconds to
 * seconds of CPU, too long for a loading or a serving thread; a database is read-only once
 * compiled and Hyperscan scans one from many threads at once (each with its own scratch), so
 * each is compiled once, off those threads, and shared under the key of what it was
 * compiled from (the caller's text of its patterns and flags): by the workers of a
 * generation, by the next generation when its patterns did not change, by a router and the
 * routers derived from it.
 *
 * An entry lives while a reference is held on it. Who holds one: each user (a VM, a router's
 * chunk of regexes) from the time it asked until it is freed, and, for entries queued with
 * lp_hsdb_submit, the compile thread from the queueing until the compile ends -- so the
 * thread never writes into a freed entry, and a job whose every user is gone before the
 * thread reaches it is dropped without being compiled. The engine does not link Hyperscan
 * for this file: each job brings the functions that compile and free its database.
 *
 * Thread safety: one mutex guards the list, every entry's refs, state, db and meta, and the
 * queue; it is never held while compiling. A user polls with lp_hsdb_ready, one atomic load
 * (see the field `ready` in hs_db.c), safe from any thread without the lock. */
#ifndef LP_HS_DB_H
#define LP_HS_DB_H

#include <stddef.h>

typedef struct lp_hsdb_s lp_hsdb_t;

/* An entry's state; the same numbers as lua_api.h's LP_WAF_DB_*. */
enum {
    LP_HSDB_NONE = 0,    /* unknown (or the compile thread could not take it) */
    LP_HSDB_PENDING = 1, /* queued or being compiled */
    LP_HSDB_READY = 2,   /* compiled: lp_hsdb_ready gives the database */
    LP_HSDB_FAILED = 3   /* the job gave no database: its notes say why */
};

/* Frees a database (Hyperscan's hs_free_database, or a wrapper of the job's own). */
typedef int (*lp_hsdb_free_fn)(void *db);
/* Compiles job on the compile thread: the database, or NULL. *notes (malloc'ed, *notes_len
 * bytes; may stay NULL) says what the compile changed or why it failed. */
typedef void *(*lp_hsdb_compile_fn)(void *job, char **notes, size_t *notes_len);
/* Frees a job once compiled (or dropped). */
typedef void (*lp_hsdb_job_free_fn)(void *job);

/* A job for the thread: compile(job) frees with job_free(job) afterwards, its database freed
 * with fre. kind: the front that asked (LP_HSDB_KIND_*; lp_hsdb_count counts one kind). */
typedef struct {
    lp_hsdb_compile_fn compile;
    lp_hsdb_job_free_fn job_free;
    lp_hsdb_free_fn fre;
    int kind;
} lp_hsdb_ops_t;

enum { LP_HSDB_KIND_WAF = 1, LP_HSDB_KIND_ROUTER = 2 };

/* The entry of key (len bytes) with a reference taken for the caller: the existing one
 * (job is then freed at once with ops->job_free), or a new one whose job is queued (ownership
 * of job passes here). NULL when the thread cannot take jobs (out of memory, the process
 * exits): job is freed, the caller does without a database. */
lp_hsdb_t *lp_hsdb_submit(const char *key, size_t len, void *job, const lp_hsdb_ops_t *ops);
/* The compiled database, or NULL while it is not (yet) compiled. Lock-free: any thread. */
void *lp_hsdb_ready(const lp_hsdb_t *e);
/* Gives back the caller's reference; the last one frees the entry and its database. */
void lp_hsdb_put(lp_hsdb_t *e);

/* ---- the waf plugin's registry operations (engine/waf_db.c: see lua_api.h) ---- */
/* The READY database of key with a reference taken, and its notes; NULL if none. */
void *lp_hsdb_acquire(const char *key, size_t len, const char **meta, size_t *meta_len);
/* The key's state; READY and db: *db with a reference; FAILED: *meta says why. */
int lp_hsdb_get(const char *key, size_t len, void **db, const char **meta, size_t *meta_len);
/* Publishes db compiled by the caller (see lp_ffi_waf_db_publish). */
void *lp_hsdb_publish(const char *key, size_t len, void *db, lp_hsdb_free_fn fre, const char *meta,
                      size_t meta_len, const char **meta_out, size_t *meta_out_len);
/* Gives back a reference taken by acquire, get or publish, found by its database. */
void lp_hsdb_release_db(void *db);
/* Queues job under key unless the key is known, without a reference for the caller (the
 * waf plugin takes one with lp_hsdb_get once READY); returns the key's state (NONE: the
 * thread cannot take it, job freed). */
int lp_hsdb_queue(const char *key, size_t len, void *job, const lp_hsdb_ops_t *ops);
/* Entries of one kind in the cache. */
int lp_hsdb_count(int kind);

/* ---- for tests ---- */
/* on: the thread starts no job (they wait in the queue); off: it goes on. */
void lp_hsdb_hold(int on);
/* Waits (at most ms) until no job is queued (or all wait on a hold) nor being compiled:
 * 0, or -1 on time out. */
int lp_hsdb_wait_idle(long ms);
/* Compiles run since start (dropped jobs not counted). */
unsigned long lp_hsdb_compiles(void);

#endif
