/* Password checks off the worker's thread (basic_auth): bcrypt and SHA-crypt are slow by
 * design (tens of milliseconds), and a worker runs every connection of its own on one
 * thread, so a check done in place would stall them all. A job copies the password and
 * the hash, runs lp_ffi_passwd_verify on libuv's thread pool and wakes the parked Lua task
 * on the worker's loop when done. Only the copies cross threads; Lua is touched on the
 * worker's thread only (the wake-up, in after_work).
 *
 * Lifetimes: a job is freed by whichever comes last of Lua dropping it (its ffi.gc
 * finaliser) and the thread pool finishing it. The task that waits may end first (its
 * client went away): the job is then released from the task's owned list and its waiter is
 * never used again. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <uv.h>
#include "proxy-t.h"
#include "lua_api.h"
#include "lua_vm.h"

/* Jobs queued or running in the whole process. The thread pool is shared and first in,
 * first out (DNS look-ups, reload materialisation): password checks queued there beyond its
 * threads would make every look-up wait behind them. So they may hold all its threads but
 * two (lp_pwjob_limit), and no more wait in its queue; over the bound a check is refused
 * (LP_FFI_ENOSPACE: basic_auth answers 503). main.c sizes the pool (UV_THREADPOOL_SIZE). */
static atomic_int pwjobs_inflight; /* shared by the workers: a counter only */

static int lp_pwjob_limit(void)
{
    static atomic_int limit; /* 0: not read yet; the environment is set before workers run */
    int n = atomic_load_explicit(&limit, memory_order_relaxed);
    if (!n) {
        const char *v = getenv("UV_THREADPOOL_SIZE");
        int threads = v ? atoi(v) : 4; /* libuv's default */
        n = threads > 3 ? threads - 2 : 1;
        atomic_store_explicit(&limit, n, memory_order_relaxed);
    }
    return n;
}

typedef struct {
    uv_work_t work;         /* on the worker loop's thread pool; work.data is the job */
    lp_lua_owned_t owned;   /* in the waiting task's owned list while it waits */
    lp_lua_waiter_t waiter; /* the parked task (valid while `owned` is linked) */
    int running;            /* flag: queued or running on the pool (the pool owns the job) */
    int lua_dropped;        /* flag: Lua's finaliser ran; whoever finishes last frees */
    int result;             /* lp_ffi_passwd_verify's answer once done */
    char *pw;               /* owns: copy of the password (cleansed before free) */
    size_t pwlen;
    char *hash; /* owns: copy of the hash */
    size_t hlen;
} lp_pwjob_t;

static void job_free(lp_pwjob_t *j)
{
    if (j->pw)
        OPENSSL_cleanse(j->pw, j->pwlen);
    free(j->pw);
    free(j->hash);
    free(j);
}

static void on_work(uv_work_t *w)
{
    lp_pwjob_t *j = w->data;
    j->result = lp_ffi_passwd_verify(j->pw, j->pwlen, j->hash, j->hlen);
}

static void on_done(uv_work_t *w, int status)
{
    lp_pwjob_t *j = w->data;
    atomic_fetch_sub(&pwjobs_inflight, 1);
    j->running = 0;
    if (status != 0)
        j->result = LP_FFI_EOTHER; /* cancelled: the loop is closing */
    if (j->lua_dropped) {
        lp_lua_disown(&j->owned);
        job_free(j);
        return;
    }
    /* The task still waits (its owned list holds the job): wake it. */
    if (!lp_list_empty(&j->owned.link)) {
        lp_lua_disown(&j->owned);
        lp_lua_unpark(j->waiter);
    }
}

/* The waiting task ended: forget it (the job finishes and waits for Lua's finaliser). */
static void on_release(lp_lua_owned_t *o)
{
    (void)o;
}

int lp_ffi_passwd_job(const char *pw, size_t pwlen, const char *hash, size_t hlen, void **job)
{
    lp_worker_t *io = lp_lua_io();
    *job = NULL;
    if (!io || !lp_lua_running())
        return LP_FFI_EPHASE;
    if (atomic_fetch_add(&pwjobs_inflight, 1) >= lp_pwjob_limit()) {
        atomic_fetch_sub(&pwjobs_inflight, 1);
        return LP_FFI_ENOSPACE;
    }
    lp_pwjob_t *j = calloc(1, sizeof(*j));
    if (j) {
        j->pw = malloc(pwlen + 1);
        j->hash = malloc(hlen + 1);
    }
    if (!j || !j->pw || !j->hash) {
        if (j)
            job_free(j);
        atomic_fetch_sub(&pwjobs_inflight, 1);
        return LP_FFI_ENOSPACE;
    }
    memcpy(j->pw, pw, pwlen);
    j->pwlen = pwlen;
    memcpy(j->hash, hash, hlen);
    j->hlen = hlen;
    j->owned.release = on_release;
    lp_list_init(&j->owned.link);
    j->work.data = j;
    if (uv_queue_work(&io->loop, &j->work, on_work, on_done) != 0) {
        job_free(j);
        atomic_fetch_sub(&pwjobs_inflight, 1);
        return LP_FFI_ENOSPACE;
    }
    j->running = 1;
    *job = j;
    return 0;
}

int lp_ffi_passwd_job_wait(void *p, int *result)
{
    lp_pwjob_t *j = p;
    if (!j->running) {
        *result = j->result;
        return 0;
    }
    /* Parked anew on every call: a task woken by something else calls again. */
    lp_lua_disown(&j->owned);
    int rc = lp_lua_park(&j->waiter);
    if (rc != 0)
        return rc;
    lp_lua_own(&j->owned);
    return 1;
}

void lp_ffi_passwd_job_free(void *p)
{
    lp_pwjob_t *j = p;
    if (!j)
        return;
    lp_lua_disown(&j->owned);
    if (j->running) {
        j->lua_dropped = 1; /* on_done frees it */
        return;
    }
    job_free(j);
}
