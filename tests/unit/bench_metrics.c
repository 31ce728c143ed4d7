/* Not a test: ns per request of what metrics add to a request's end (conn.c conn_metrics:
 * a clock read, the route's counters and duration histogram, the upstream's histogram),
 * with the default 11 bounds. Run `build/tests/unit/bench_metrics [iterations]`; compare
 * with the 0.3 us budget of issue #16. The clock read is measured on its own too: it is
 * most of the cost. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <uv.h>
#include "metrics.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); /* CPU time: the machine may be shared */
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 20000000;
    const double b[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
    lp_metrics_t m;
    lp_metrics_init(&m, 1);
    lp_metrics_set_bounds(&m, b, 11);
    char key[64];
    size_t kl = lp_metrics_key(key, sizeof(key), "route", "r", NULL, NULL);
    lp_mblock_t *rb = lp_metrics_block(&m, key, kl, LP_MR_BUCKETS + 12);
    kl = lp_metrics_key(key, sizeof(key), "upstream", "u", NULL, NULL);
    lp_mblock_t *ub = lp_metrics_block(&m, key, kl, LP_MU_BUCKETS + 12);
    if (!rb || !ub)
        return 1;
    uint64_t t_start = uv_hrtime();
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        uint64_t now = uv_hrtime();
        /* a latency of 0.1..1.6 ms: the bucket search walks a few bounds, as in a proxy */
        uint64_t ns = 100000 + (uint64_t)(i & 15) * 100000;
        lp_metrics_request(rb->cells[0], &m, 200, 0, 5, ns + (now - t_start) % 2);
        lp_metrics_upstream(ub->cells[0], &m, ns);
    }
    double full = (now_s() - t0) * 1e9 / (double)n;
    t0 = now_s();
    uint64_t sink = 0;
    for (long i = 0; i < n; i++)
        sink += uv_hrtime();
    double clock_ns = (now_s() - t0) * 1e9 / (double)n;
    printf("metrics per request: %.1f ns (of which the clock read: %.1f ns); count %llu%s\n", full,
           clock_ns, (unsigned long long)lp_metrics_sum(&m, rb, LP_MR_CLASS + 1),
           sink == 1 ? "!" : "");
    lp_metrics_free(&m);
    return 0;
}
