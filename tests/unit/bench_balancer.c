/* Not a test: prints ns per select for each policy (no assertions on timing).
 * Usage: build-dir/tests/unit/bench_balancer [ntargets] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "common.h"
#include "balancer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    static const char *const names[] = {"round_robin", "least_conn", "p2c", "hash"};
    size_t n = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 10;
    if (n < 1 || n > 10000)
        n = 10;
    lp_bal_target_t *t = calloc(n, sizeof(*t));
    char(*ids)[32] = calloc(n, sizeof(*ids));
    if (!t || !ids)
        return 1;
    for (size_t i = 0; i < n; i++) {
        snprintf(ids[i], sizeof(ids[i]), "10.0.%zu.%zu:80", i / 256, i % 256);
        t[i] = (lp_bal_target_t){.id = ids[i], .weight = (unsigned)(1 + i % 3), .available = 1};
    }
    const int iters = 2000000;
    for (size_t p = 0; p < LP_ARRAY_LEN(names); p++) {
        lp_balancer_t b;
        double t0 = now_s();
        if (lp_balancer_init(&b, lp_balancer_find(names[p]), t, n, 1))
            return 1;
        double t1 = now_s();
        long sink = 0;
        char key[16];
        for (int i = 0; i < iters; i++) {
            int len = snprintf(key, sizeof(key), "%d", i & 4095);
            int k = lp_balancer_select(&b, key, (size_t)len, NULL, (uint64_t)i * 1000);
            lp_balancer_report(&b, k, 1000000 + (uint64_t)k * 1000, 0, (uint64_t)i * 1000);
            sink += k;
        }
        double t2 = now_s();
        printf("%-12s n=%zu: init %.1f us, select+report %.1f ns (%ld)\n", names[p], n,
               (t1 - t0) * 1e6, (t2 - t1) * 1e9 / iters, sink % 10);
        lp_balancer_destroy(&b);
    }
    free(t);
    free(ids);
    return 0;
}
