/* Not a test: CPU ns per request of the trace context's request-path work, measured with
 * the thread's CPU clock (so a loaded machine's waits do not count): lp_trace_start on a
 * typical head (with and without an incoming traceparent), the upstream header lines, and
 * the OTLP JSON of a request's SERVER span and one CLIENT span (what export adds per
 * sampled request, before batching and the POST). No assertions on timing.
 * Usage: build-dir/tests/unit/bench_trace [iterations] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "trace.h"

static double cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static lp_header_t H(const char *n, const char *v)
{
    return (lp_header_t){{n, strlen(n)}, {v, strlen(v)}};
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? strtol(argv[1], NULL, 10) : 1000000;
    if (iters < 1)
        iters = 1000000;
    static lp_req_t req;
    static lp_config_t cfg;
    static lp_wgen_t g;
    cfg.tracing.enabled = cfg.tracing.accept = 1;
    cfg.tracing.sample = 1;
    cfg.tracing.export_on = 1;
    g.config = &cfg;
    req.g = &g;
    lp_header_t with[] = {
        H("Host", "shop.example.com"),
        H("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
        H("Accept", "text/html,application/xhtml+xml"),
        H("Accept-Language", "en-GB,en;q=0.9"),
        H("Accept-Encoding", "gzip, deflate, br"),
        H("Cookie", "session=8c1f0b2a9e; theme=dark"),
        H("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        H("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    };
    req.h1.headers = with;
    req.h1.path = (lp_str_t){"/cart/items?id=42", 17};
    req.h1.host = (lp_str_t){"shop.example.com", 16};
    req.flags = LP_RF_PARSED;
    req.method = HTTP_GET;
    req.minor = 1;
    req.route_index = 0;
    req.resp.sent_status = 200;
    memcpy(req.client_ip, "192.0.2.1", 10);
    char out[LP_TRACEPARENT_LEN];
    long sink = 0;

    static const struct {
        const char *what;
        unsigned nheaders;
    } starts[] = {{"lp_trace_start, 6 headers, no traceparent", 6},
                  {"lp_trace_start, 8 headers, traceparent + tracestate", 8}};
    for (size_t k = 0; k < LP_ARRAY_LEN(starts); k++) {
        req.h1.nheaders = starts[k].nheaders;
        double t0 = cpu_ns();
        for (long i = 0; i < iters; i++) {
            lp_trace_start(&req);
            sink += req.trace.span_id[0];
        }
        printf("%-55s %7.1f ns\n", starts[k].what, (cpu_ns() - t0) / (double)iters);
    }
    double t0 = cpu_ns();
    for (long i = 0; i < iters; i++)
        sink += (long)lp_trace_upstream_fields(&req, out).len + out[3];
    printf("%-55s %7.1f ns\n", "lp_trace_upstream_fields (traceparent + tracestate)",
           (cpu_ns() - t0) / (double)iters);

    lp_trace_t *t = &req.trace;
    t->ntries = 1;
    lp_trace_random_id(t->tries[0].span_id, 8);
    t->tries[0].start = 100;
    t->tries[0].end = 200;
    t->tries[0].status = 200;
    memcpy(t->tries[0].addr, "10.0.0.5:9001", 14);
    char *buf = malloc(lp_trace_otlp_bound(&req));
    if (!buf)
        return 1;
    size_t n = 0;
    t0 = cpu_ns();
    for (long i = 0; i < iters; i++) {
        size_t bound = lp_trace_otlp_bound(&req);
        n = lp_trace_otlp_spans(buf, &req, 1700000000000000000ULL, 300);
        sink += (long)(n + bound);
    }
    printf("%-55s %7.1f ns (%zu bytes)\n", "OTLP JSON, SERVER + 1 CLIENT span",
           (cpu_ns() - t0) / (double)iters, n);
    free(buf);
    return sink == 42; /* keeps the loops */
}
