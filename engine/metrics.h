/* Metrics storage and the Prometheus / OpenMetrics text exposition (docs/metrics.md).
 *
 * Storage: a series (a route's counters, an upstream's, a plugin metric's) is a block of
 * cells, one array of cells per worker. A worker is the only writer of its array: it adds
 * with a relaxed atomic load and a relaxed atomic store (LP_M_ADD: plain moves on x86-64
 * and arm64, no lock, no read-modify-write instruction), and the main thread reads every
 * worker's array with relaxed loads at scrape time and sums them. A count read mid-update is
 * the count before or after it, never torn.
 *
 * Blocks are found by key (the family and the label values, e.g. "route\0api"), made by the
 * main thread when a generation is built and kept for the life of the process, so that a
 * reload that keeps a route name keeps counting in the same cells (counters stay
 * monotonic). Their number is bounded by the names configs ever declared. The registry is
 * the main thread's; workers see only the cell pointers handed to them with a generation
 * (that handover is the mailbox's mutex and semaphore, which order the calloc before any
 * use). */
#ifndef LP_METRICS_H
#define LP_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define LP_M_MAX_BUCKETS 64 /* histogram bounds (metrics.buckets), +Inf excluded */

/* One worker adds v to its own cell. Relaxed load + relaxed store: the worker is the only
 * writer, the main thread reads. */
#define LP_M_ADD(cell, v)                                                                          \
    __atomic_store_n((cell), __atomic_load_n((cell), __ATOMIC_RELAXED) + (v), __ATOMIC_RELAXED)
#define LP_M_SET(cell, v) __atomic_store_n((cell), (v), __ATOMIC_RELAXED)
#define LP_M_GET(cell)    __atomic_load_n((cell), __ATOMIC_RELAXED)

typedef struct lp_mblock_s {
    char *key; /* owned: family, NUL, label values joined by NUL; keylen bytes */
    size_t keylen;
    uint64_t **cells; /* owned: one owned array of ncells per worker (zeroed at birth) */
    size_t ncells;
    struct lp_mblock_s *next;  /* the registry's list (owned by it) */
    struct lp_mblock_s *hnext; /* borrowed: the next block of its hash bucket */
} lp_mblock_t;

/* The registry: blocks by key, and the histogram bounds, fixed for the life of the process
 * (a reload that changes metrics.buckets keeps the first ones and says so: counts bucketed
 * by other bounds cannot be added up). Main thread only. */
typedef struct {
    unsigned nworkers;
    lp_mblock_t *blocks;   /* owned list */
    lp_mblock_t **buckets; /* owned array of nbuckets (a power of two): blocks
                              by key hash, newest first (a table of 100k routes
                              has 100k blocks: a list walk per block was
                              quadratic) */
    size_t nbuckets, nblocks;
    double bounds[LP_M_MAX_BUCKETS];      /* seconds, increasing */
    uint64_t bounds_ns[LP_M_MAX_BUCKETS]; /* the same in ns: what workers compare with */
    unsigned nbounds;
    int have_bounds; /* bounds were set (by the first config) */
} lp_metrics_t;

/* The process's registry (main thread; workers read bounds_ns, fixed before they run). */
extern lp_metrics_t lp_metrics;

void lp_metrics_init(lp_metrics_t *m, unsigned nworkers);
void lp_metrics_free(lp_metrics_t *m);
/* Sets the bounds the first time; later: 0 when they are the same, 1 when they differ
 * (kept as they were). */
int lp_metrics_set_bounds(lp_metrics_t *m, const double *b, unsigned n);
/* The newest block of key (keylen bytes), NULL when none. */
lp_mblock_t *lp_metrics_find(const lp_metrics_t *m, const char *key, size_t keylen);
/* The block of key (keylen bytes), made with ncells cells per worker when new; NULL when out
 * of memory. A family's ncells never changes (it depends on the bounds, which are fixed), so
 * a key found again has the cells asked for. */
lp_mblock_t *lp_metrics_block(lp_metrics_t *m, const char *key, size_t keylen, size_t ncells);
/* A key: family and up to 3 label values, joined by NUL into out (NUL-free parts). Returns
 * its length, or 0 when it does not fit. */
size_t lp_metrics_key(char *out, size_t cap, const char *family, const char *a, const char *b,
                      const char *c);
/* The sum of cell i of b over the workers (relaxed loads). */
uint64_t lp_metrics_sum(const lp_metrics_t *m, const lp_mblock_t *b, size_t i);

/* The bucket of an observation of ns: the first bound >= ns, nbounds for +Inf. */
static inline unsigned lp_metrics_bucket_ns(const uint64_t *bounds_ns, unsigned n, uint64_t ns)
{
    unsigned i = 0;
    while (i < n && ns > bounds_ns[i])
        i++;
    return i;
}
/* The same for a double (plugin histograms). */
unsigned lp_metrics_bucket(const double *bounds, unsigned n, double v);

/* The cells of a route's block: requests by status class, body bytes, the duration
 * histogram (sum in ns, then nbounds + 1 non-cumulative buckets). */
enum {
    LP_MR_CLASS = 0, /* 1xx..5xx: 5 cells */
    LP_MR_BYTES_IN = 5,
    LP_MR_BYTES_OUT,
    LP_MR_SUM_NS,
    LP_MR_BUCKETS,
};
/* The cells of an upstream's block. */
enum {
    LP_MU_RETRIES = 0,
    LP_MU_EJECTIONS,
    LP_MU_DNS,
    LP_MU_QUEUE, /* a gauge: this worker's queue length */
    LP_MU_SUM_NS,
    LP_MU_BUCKETS,
};
/* The cells of a target's block: tries started and ended (in flight: the difference of
 * the sums, whichever worker or generation ended them). */
enum {
    LP_MT_STARTED = 0,
    LP_MT_ENDED,
    LP_MT_EWMA_NS, /* a gauge: this worker's balancer EWMA (p2c), 0: none */
    LP_MT_N,
};
/* A worker's own cells (lp_worker_t.m_cells). */
enum {
    LP_WM_ACCEPTED = 0,
    LP_WM_TLS_HANDSHAKES,
    LP_WM_TLS_RESUMED,
    LP_WM_LUA_MEM, /* a gauge: bytes of its Lua VMs, updated once a second */
    /* #17 HTTP/2 downstream (h2.c counts, h2_stats.c reports): open = started - closed. */
    LP_WM_H2_CONNS,          /* connections that became HTTP/2 */
    LP_WM_H2_CONNS_CLOSED,   /* ... whose session went */
    LP_WM_H2_STREAMS,        /* streams the client opened */
    LP_WM_H2_STREAMS_CLOSED, /* ... that nghttp2 closed */
    LP_WM_H2_RST_RECV,       /* RST_STREAM frames received */
    LP_WM_H2_RST_SENT,       /* RST_STREAM frames sent */
    LP_WM_H2_GOAWAY_SENT,    /* GOAWAY frames sent */
    LP_WM_H2_FLOOD_RESET,    /* connections closed: rapid reset (http2.max_resets) */
    LP_WM_H2_FLOOD_CONTROL,  /* ... control frame floods (http2.max_control_frames) */
    LP_WM_H2_FLOOD_CONT,     /* ... CONTINUATION floods (http2.max_continuations) */
    LP_WM_H2_FLOOD_HEADERS,  /* streams reset: header list over http2.max_header_list_size */
    LP_WM_H2_STALL_STREAM,   /* streams reset: the client's stream window stayed shut */
    LP_WM_H2_STALL_CONN,     /* connections closed: the client's connection window stayed shut */
    /* #17 HTTP/2 upstream connections (h2_up.c counts, h2_stats.c reports). */
    LP_WM_H2U_CONNS,          /* connections made to h2 upstreams */
    LP_WM_H2U_CONNS_CLOSED,   /* ... that went */
    LP_WM_H2U_STREAMS,        /* streams started on them */
    LP_WM_H2U_STREAMS_CLOSED, /* ... closed (by nghttp2, or with their connection) */
    LP_WM_H2U_GOAWAY_RECV,    /* GOAWAY frames the upstreams sent */
    LP_WM_H2U_RST_RECV,       /* RST_STREAM frames the upstreams sent */
    LP_WM_H2U_RST_SENT,       /* RST_STREAM frames we sent them */
    LP_WM_H2U_RETRY_REFUSED,  /* streams sent again: refused (GOAWAY, REFUSED_STREAM) */
    LP_WM_H2U_RETRY_STALE,    /* ... a reused connection failed before any answer */
    LP_WM_N,
};

/* One request into a route's cells (c: this worker's): its status class, body bytes and
 * duration. What conn.c does per request (bench_metrics measures it). */
static inline void lp_metrics_request(uint64_t *c, const lp_metrics_t *m, int status,
                                      uint64_t bytes_in, uint64_t bytes_out, uint64_t ns)
{
    if (status >= 100 && status < 600)
        LP_M_ADD(&c[LP_MR_CLASS + status / 100 - 1], 1);
    LP_M_ADD(&c[LP_MR_BYTES_IN], bytes_in);
    LP_M_ADD(&c[LP_MR_BYTES_OUT], bytes_out);
    LP_M_ADD(&c[LP_MR_SUM_NS], ns);
    LP_M_ADD(&c[LP_MR_BUCKETS + lp_metrics_bucket_ns(m->bounds_ns, m->nbounds, ns)], 1);
}

/* An upstream's response time into its cells. */
static inline void lp_metrics_upstream(uint64_t *c, const lp_metrics_t *m, uint64_t ns)
{
    LP_M_ADD(&c[LP_MU_SUM_NS], ns);
    LP_M_ADD(&c[LP_MU_BUCKETS + lp_metrics_bucket_ns(m->bounds_ns, m->nbounds, ns)], 1);
}

/* ---- exposition ---- */

typedef struct {
    char *buf; /* owned */
    size_t len, cap;
    int om;  /* OpenMetrics 1.0 rather than Prometheus text 0.0.4 */
    int oom; /* an allocation failed: the text is incomplete */
} lp_mtext_t;

#define LP_M_CT_PROM "text/plain; version=0.0.4; charset=utf-8"
#define LP_M_CT_OM   "application/openmetrics-text; version=1.0.0; charset=utf-8"

/* 1 when an Accept header value asks for OpenMetrics. */
int lp_metrics_wants_om(const char *accept, size_t len);

void lp_mtext_init(lp_mtext_t *t, int om);
void lp_mtext_free(lp_mtext_t *t);
void lp_mtext_raw(lp_mtext_t *t, const char *s, size_t n);
/* "# HELP" and "# TYPE" of a family. type: "counter", "gauge", "histogram". name is the
 * sample name: a counter's ends in "_total", which OpenMetrics leaves out of the family. */
void lp_mtext_family(lp_mtext_t *t, const char *name, const char *type, const char *help);
/* One sample: name, suffix ("", "_bucket", "_sum", "_count"), labels as nl (name, value)
 * pairs (values escaped here), and the value. */
void lp_mtext_sample(lp_mtext_t *t, const char *name, const char *suffix, const char *const *labels,
                     unsigned nl, double v);
/* A histogram's samples from non-cumulative bucket counts (nbounds + 1, the last +Inf) and
 * the sum in its unit. */
void lp_mtext_histogram(lp_mtext_t *t, const char *name, const char *const *labels, unsigned nl,
                        const double *bounds, unsigned nbounds, const uint64_t *counts, double sum);
/* "# EOF" for OpenMetrics; nothing for Prometheus text. */
void lp_mtext_end(lp_mtext_t *t);

/* Prometheus naming: [a-zA-Z_:][a-zA-Z0-9_:]* for metrics, no ':' and no leading "__" for
 * labels. */
int lp_metrics_valid_name(const char *s);
int lp_metrics_valid_label(const char *s);

#endif
