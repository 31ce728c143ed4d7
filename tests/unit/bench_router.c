/* Not a test: the compiled router's costs in CPU time (clock_gettime(CLOCK_PROCESS_CPUTIME_ID),
 * so a loaded machine slows the figures less than wall time would):
 *   - build time and heap per route for N prefix routes, N = 1, 1k, 10k, 100k;
 *   - ns per lookup of the first and the last route;
 *   - 10,000 hosts x 10 routes, random host and path, against a single route;
 *   - 1,000 regex routes, the request matching the last (anchored, and without literal head);
 *   - admin changes among 100k routes (lp_rtable_apply: each derived from the table before,
 *     lp_router_derive), and freeing the table a change replaced.
 * Usage: bench_router [N_max] */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "rtable.h"
#include "router.h"

static int dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t heap_used(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

static void add(lp_rbuild_t *b, int kind, const char *v)
{
    char err[256];
    if (lp_rbuild_add(b, kind, 0, NULL, 0, v, strlen(v), err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
}

static lp_router_t *finish(lp_rbuild_t *b)
{
    char err[256];
    lp_router_t *r = lp_rbuild_finish(b, err, sizeof(err));
    if (!r) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    return r;
}

static lp_router_t *prefix_routes(int n)
{
    lp_rbuild_t *b = lp_rbuild_new();
    char p[32];
    for (int i = 1; i <= n; i++) {
        lp_rbuild_route(b);
        snprintf(p, sizeof(p), "/r%d/", i);
        add(b, LP_RK_PREFIX, p);
    }
    return finish(b);
}

/* ns per lookup of path (median of 5 runs of `iters`). */
static double lookup_ns(const lp_router_t *r, const char *host, const char *path, int want)
{
    lp_route_in_t in;
    memset(&in, 0, sizeof(in));
    in.method = (lp_str_t){"GET", 3};
    in.host = (lp_str_t){host, strlen(host)};
    in.path = (lp_str_t){path, strlen(path)};
    lp_route_out_t out;
    double runs[5];
    const int iters = 200000;
    for (int k = 0; k < 5; k++) {
        double t0 = cpu_now();
        for (int i = 0; i < iters; i++)
            if (lp_router_match(r, &in, 0, &out) != want) {
                fprintf(stderr, "%s: got %d, want %d\n", path, out.index, want);
                exit(1);
            }
        runs[k] = (cpu_now() - t0) / iters * 1e9;
    }
    for (int a = 0; a < 5; a++)
        for (int b = a + 1; b < 5; b++)
            if (runs[b] < runs[a]) {
                double t = runs[a];
                runs[a] = runs[b];
                runs[b] = t;
            }
    return runs[2];
}

int main(int argc, char **argv)
{
    int nmax = argc > 1 ? atoi(argv[1]) : 100000;
    double first1 = 0;
    printf(
        "prefix routes: N, build ms (CPU), heap bytes/route, ns first, ns last, last/first(N=1)\n");
    for (int n = 1; n <= nmax; n = n == 1 ? 1000 : n * 10) {
        size_t h0 = heap_used();
        double t0 = cpu_now();
        lp_router_t *r = prefix_routes(n);
        double build = (cpu_now() - t0) * 1e3;
        size_t h1 = heap_used();
        char last[32];
        snprintf(last, sizeof(last), "/r%d/", n);
        double f = lookup_ns(r, "h", "/r1/", 0), l = lookup_ns(r, "h", last, n - 1);
        if (n == 1)
            first1 = f;
        printf("  %6d  %8.1f  %6.0f  %6.1f  %6.1f  %5.2f\n", n, build, (double)(h1 - h0) / n, f, l,
               l / first1);
        lp_router_free(r);
    }

    /* 10k hosts x 10 routes: random host and path (the lookups cycle through 4096 pairs
     * chosen up front). */
    {
        lp_rbuild_t *b = lp_rbuild_new();
        char v[64];
        for (int h = 1; h <= 10000; h++)
            for (int p = 1; p <= 10; p++) {
                lp_rbuild_route(b);
                snprintf(v, sizeof(v), "h%d.test", h);
                add(b, LP_RK_HOST, v);
                snprintf(v, sizeof(v), "/p%d/", p);
                add(b, LP_RK_PREFIX, v);
            }
        lp_router_t *r = finish(b);
        static char hosts[4096][24], paths[4096][16];
        static int want[4096];
        srand(7);
        for (int i = 0; i < 4096; i++) {
            int h = 1 + rand() % 10000, p = 1 + rand() % 10;
            snprintf(hosts[i], sizeof(hosts[i]), "h%d.test", h);
            snprintf(paths[i], sizeof(paths[i]), "/p%d/", p);
            want[i] = (h - 1) * 10 + p - 1;
        }
        lp_route_in_t in;
        memset(&in, 0, sizeof(in));
        in.method = (lp_str_t){"GET", 3};
        lp_route_out_t out;
        const int iters = 1000000;
        double t0 = cpu_now();
        for (int i = 0; i < iters; i++) {
            int k = i & 4095;
            in.host = (lp_str_t){hosts[k], strlen(hosts[k])};
            in.path = (lp_str_t){paths[k], strlen(paths[k])};
            if (lp_router_match(r, &in, 0, &out) != want[k]) {
                fprintf(stderr, "hosts: wrong route\n");
                return 1;
            }
        }
        double ns = (cpu_now() - t0) / iters * 1e9;
        printf("10k hosts x 10 routes, random: %.1f ns/lookup (%.2f x the single route)\n", ns,
               ns / first1);
        lp_router_free(r);
    }

    /* 1,000 regex routes, the last matching. */
    for (int anchored = 1; anchored >= 0; anchored--) {
        lp_rbuild_t *b = lp_rbuild_new();
        char v[64];
        for (int i = 1; i < 1000; i++) {
            lp_rbuild_route(b);
            snprintf(v, sizeof(v), anchored ? "^/re%d/\\d+$" : "/re%d/\\d+$", i);
            add(b, LP_RK_REGEX, v);
        }
        lp_rbuild_route(b);
        add(b, LP_RK_REGEX, "^/fixed$");
        lp_router_t *r = finish(b);
        printf("1000 regex routes (%s), the last: %.1f ns/lookup\n",
               anchored ? "anchored: literal heads in the tree" : "unanchored: all run",
               lookup_ns(r, "h", "/fixed", 999));
        lp_router_free(r);
    }

    /* One admin change among nmax routes. */
    {
        lp_config_t cfg;
        memset(&cfg, 0, sizeof(cfg));
        lp_upstream_conf_t up;
        memset(&up, 0, sizeof(up));
        up.name = "app";
        cfg.upstreams = &up;
        cfg.nupstreams = 1;
        cfg.routes = calloc((size_t)nmax, sizeof(*cfg.routes));
        cfg.nroutes = (size_t)nmax;
        cfg.router = prefix_routes(nmax);
        lp_rtable_t *t = lp_rtable_from_config(&cfg);
        char err[256];
        enum { CHANGES = 21 };
        double ms[CHANGES], free_ms[CHANGES];
        for (int k = 0; k < CHANGES; k++) {
            char body[256];
            snprintf(body, sizeof(body),
                     "[{\"op\": \"replace\", \"index\": %d, \"route\": {\"match\": "
                     "{\"prefix\": \"/changed%d/\"}, \"upstream\": \"app\"}}]",
                     nmax - k, k);
            json_error_t je;
            json_t *ops = json_loads(body, 0, &je);
            double t0 = cpu_now();
            lp_rtable_t *t2 = lp_rtable_apply(t, &cfg, ops, NULL, err, sizeof(err));
            ms[k] = (cpu_now() - t0) * 1e3;
            json_decref(ops);
            if (!t2) {
                fprintf(stderr, "apply: %s\n", err);
                return 1;
            }
            t0 = cpu_now();
            lp_rtable_unref(t); /* what a worker does when its last request on it ends */
            free_ms[k] = (cpu_now() - t0) * 1e3;
            t = t2;
        }
        double first = ms[0], ffirst = free_ms[0];
        qsort(ms, CHANGES, sizeof(ms[0]), dbl_cmp);
        qsort(free_ms, CHANGES, sizeof(free_ms[0]), dbl_cmp);
        printf("admin changes among %d routes (each from the last): first %.2f ms CPU, median "
               "%.2f, max %.2f; freeing the replaced table: first %.2f ms, median %.2f\n",
               nmax, first, ms[CHANGES / 2], ms[CHANGES - 1], ffirst, free_ms[CHANGES / 2]);
        lp_rtable_unref(t);
        lp_router_free(cfg.router);
        free(cfg.routes);
    }
    return 0;
}
