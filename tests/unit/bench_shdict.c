/* Not a test: what one shared-dict operation costs, alone and with threads (no assertions
 * on timing). Each thread runs `iters` incr (or get) calls, on its own key ("distinct": the
 * keys fall in different stripes) or all on one key ("hot": every call takes the same
 * lock), or each on a dict of its own ("own dict": nothing shared, the machine's own
 * parallelism, the bound for "distinct"). Prints ns per operation per thread and the total
 * throughput.
 * Usage: build-dir/tests/unit/bench_shdict [threads] [iters] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "shdict.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct {
    lp_shdict_t *d;
    char key[32];
    long iters;
    int get; /* 1: get, 0: incr */
    double secs;
} job_t;

static void *run(void *arg)
{
    job_t *j = arg;
    size_t klen = strlen(j->key);
    lp_shdict_val_t out;
    double t0 = now_s();
    for (long i = 0; i < j->iters; i++) {
        if (j->get)
            lp_shdict_get(j->d, j->key, klen, 0, &out);
        else
            lp_shdict_incr(j->d, j->key, klen, 1, 1, 0, 0, &out);
    }
    j->secs = now_s() - t0;
    return NULL;
}

/* mode: 0 distinct keys, 1 one hot key, 2 a dict per thread. */
static void bench(lp_shdict_t *d, const char *what, int nthreads, int mode, int get, long iters)
{
    job_t jobs[64];
    pthread_t t[64];
    lp_shdict_t *own[64] = {0};
    int hot = mode == 1;
    for (int i = 0; i < nthreads; i++) {
        if (mode == 2 && !(own[i] = lp_shdict_new("own", 1024 * 1024)))
            return;
        jobs[i] = (job_t){.d = mode == 2 ? own[i] : d, .iters = iters, .get = get};
        snprintf(jobs[i].key, sizeof(jobs[i].key), hot ? "hot-key" : "distinct-key-%d", i);
        lp_shdict_val_t out;
        lp_shdict_incr(jobs[i].d, jobs[i].key, strlen(jobs[i].key), 0, 1, 0, 0, &out);
    }
    double t0 = now_s();
    for (int i = 0; i < nthreads; i++)
        pthread_create(&t[i], NULL, run, &jobs[i]);
    double per = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(t[i], NULL);
        per += jobs[i].secs * 1e9 / (double)iters;
    }
    double wall = now_s() - t0;
    static const char *const modes[] = {"distinct", "hot key", "own dict"};
    printf("%-4s %d thread%s %-8s: %6.1f ns/op per thread, %6.2f Mops/s total\n", what, nthreads,
           nthreads > 1 ? "s" : " ", modes[mode], per / nthreads,
           (double)nthreads * (double)iters / wall / 1e6);
    for (int i = 0; i < nthreads; i++)
        lp_shdict_free(own[i]);
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    long iters = argc > 2 ? atol(argv[2]) : 2000000;
    if (threads < 1 || threads > 64 || iters < 1)
        return 2;
    lp_shdict_t *d = lp_shdict_new("bench", 64 * 1024 * 1024);
    if (!d)
        return 1;
    for (int get = 0; get <= 1; get++) {
        const char *what = get ? "get" : "incr";
        bench(d, what, 1, 0, get, iters);
        bench(d, what, threads, 2, get, iters);
        bench(d, what, threads, 0, get, iters);
        bench(d, what, threads, 1, get, iters);
    }
    lp_shdict_free(d);
    return 0;
}
