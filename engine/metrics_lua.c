/* proxy.metrics: plugins' own counters, gauges and histograms (docs/metrics.md).
 *
 * A plugin declares a metric in init_worker (the engine's own Lua metrics are declared on
 * first use): lp_ffi_metric_new finds it by name or makes it, so that a reload declaring it
 * again keeps its values. Each worker then has, for every metric, its own cells (doubles:
 * per series the value, or a histogram's buckets and sum) that its Lua updates through a
 * cdata pointer (a JIT-compiled load and store; the worker is the only writer), and its own
 * table of series (label values), appended to by the worker when a label set is seen for
 * the first time (lp_ffi_metric_series, on a miss of the VM's cache) and published with a
 * release store of the count. The main thread reads both at scrape time, and sums the
 * series of every worker with the same label values.
 *
 * Shared between threads: the metric table below. Entries are made under `make_lock` (any
 * thread; rare) and never change or move afterwards; `nmetrics` is published with a release
 * store. A worker's side of a metric is allocated by that worker on its first update and
 * published with a release store of its pointer. Metrics live until the process exits. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "metrics_scrape.h"
#include "lua_api.h"

int lp__lua_worker_id(void); /* lua_vm.c: the running VM's worker, 0: none */

#define LP_PM_MAX     1024 /* metrics declared by plugins, in all */
#define LP_PM_WORKERS 257  /* worker ids 1..256 (the config's maximum) */

enum { PM_COUNTER = 0, PM_GAUGE, PM_HISTOGRAM };

/* One worker's side of a metric. */
typedef struct {
    double *cells;    /* owned: (max_series + 1) * cps, then the count of overflowed updates */
    char **labels;    /* owned array of max_series owned label sets (values joined by NUL) */
    size_t *lens;     /* their lengths */
    unsigned nseries; /* atomic (release/acquire): entries of labels in use */
} pm_worker_t;

typedef struct {
    char *name, *help; /* owned */
    int type;          /* PM_* */
    char *label_names; /* owned: NUL-joined, nlabels of them */
    size_t label_names_len;
    int nlabels;
    double *bounds; /* owned: a histogram's bounds, increasing */
    unsigned nbounds;
    unsigned max_series;           /* series per worker; updates beyond go to the overflow series */
    unsigned cps;                  /* cells per series: 1, or nbounds + 2 for a histogram */
    pm_worker_t *w[LP_PM_WORKERS]; /* owned, atomic: each worker's, made on its first update */
} pmetric_t;

static pmetric_t *metrics[LP_PM_MAX]; /* owned entries (see above) */
static unsigned nmetrics;             /* atomic: entries made (release store) */
static pthread_mutex_t make_lock = PTHREAD_MUTEX_INITIALIZER; /* makes entries */

static const char *const type_names[] = {"counter", "gauge", "histogram"};

static int fail(char *err, size_t errlen, const char *fmt, const char *a)
{
    snprintf(err, errlen, fmt, a);
    return LP_FFI_EINVAL;
}

static void pm_worker_free(pm_worker_t *pw)
{
    for (unsigned i = 0; pw->labels && i < pw->nseries; i++)
        free(pw->labels[i]);
    free(pw->labels);
    free(pw->lens);
    free(pw->cells);
    free(pw);
}

static void pmetric_free(pmetric_t *m)
{
    free(m->name);
    free(m->help);
    free(m->label_names);
    free(m->bounds);
    free(m);
}

static int metric_make(int type, const char *name, const char *help, const char *labels,
                       size_t labels_len, int nlabels, const double *bounds, int nbounds,
                       int max_series, char *err, size_t errlen);

int lp_ffi_metric_new(int type, const char *name, const char *help, const char *labels,
                      size_t labels_len, int nlabels, const double *bounds, int nbounds,
                      int max_series, char *err, size_t errlen)
{
    if (type < PM_COUNTER || type > PM_HISTOGRAM || nlabels < 0 || nbounds < 0 ||
        nbounds > LP_M_MAX_BUCKETS || max_series < 1)
        return fail(err, errlen, "%s: invalid arguments", name);
    pthread_mutex_lock(&make_lock);
    int rc = metric_make(type, name, help, labels, labels_len, nlabels, bounds, nbounds, max_series,
                         err, errlen);
    pthread_mutex_unlock(&make_lock);
    return rc;
}

/* lp_ffi_metric_new under make_lock. */
static int metric_make(int type, const char *name, const char *help, const char *labels,
                       size_t labels_len, int nlabels, const double *bounds, int nbounds,
                       int max_series, char *err, size_t errlen)
{
    unsigned n = nmetrics;
    for (unsigned i = 0; i < n; i++) {
        pmetric_t *m = metrics[i];
        if (strcmp(m->name, name) != 0)
            continue;
        /* Declared again (another worker's VM, or a reload): the same metric, or an error. */
        int same = m->type == type && m->nlabels == nlabels && m->label_names_len == labels_len &&
                   memcmp(m->label_names, labels, labels_len) == 0 &&
                   m->nbounds == (unsigned)nbounds &&
                   (!nbounds || memcmp(m->bounds, bounds, (size_t)nbounds * sizeof(double)) == 0);
        if (!same)
            return fail(err, errlen,
                        "metric %s is already declared with another type, labels or buckets "
                        "(a metric keeps its declaration until a restart)",
                        name);
        return (int)i;
    }
    if (n >= LP_PM_MAX)
        return fail(err, errlen, "%s: too many metrics (1024 in all)", name);
    pmetric_t *m = calloc(1, sizeof(*m));
    if (!m)
        return LP_FFI_ENOSPACE;
    m->type = type;
    m->nlabels = nlabels;
    m->nbounds = (unsigned)nbounds;
    m->max_series = nlabels ? (unsigned)max_series : 1;
    m->cps = type == PM_HISTOGRAM ? (unsigned)nbounds + 2 : 1;
    m->name = strdup(name);
    m->help = strdup(help);
    m->label_names = malloc(labels_len + 1);
    m->label_names_len = labels_len;
    m->bounds = calloc((size_t)nbounds + 1, sizeof(double));
    if (!m->name || !m->help || !m->label_names || !m->bounds) {
        pmetric_free(m);
        return LP_FFI_ENOSPACE;
    }
    memcpy(m->label_names, labels, labels_len);
    m->label_names[labels_len] = 0;
    if (nbounds)
        memcpy(m->bounds, bounds, (size_t)nbounds * sizeof(double));
    metrics[n] = m;
    __atomic_store_n(&nmetrics, n + 1, __ATOMIC_RELEASE);
    return (int)n;
}

/* The running worker's side of metric id, made on first use; NULL outside a worker or out
 * of memory. */
static pm_worker_t *worker_side(int id, pmetric_t **mp)
{
    unsigned n = __atomic_load_n(&nmetrics, __ATOMIC_ACQUIRE);
    int k = lp__lua_worker_id();
    if (id < 0 || (unsigned)id >= n || k <= 0 || k >= LP_PM_WORKERS)
        return NULL;
    pmetric_t *m = metrics[id];
    *mp = m;
    pm_worker_t *pw = m->w[k]; /* this thread is its only writer */
    if (pw)
        return pw;
    pw = calloc(1, sizeof(*pw));
    if (!pw)
        return NULL;
    pw->cells = calloc((size_t)(m->max_series + 1) * m->cps + 1, sizeof(double));
    pw->labels = calloc(m->max_series, sizeof(char *));
    pw->lens = calloc(m->max_series, sizeof(size_t));
    if (!pw->cells || !pw->labels || !pw->lens) {
        pm_worker_free(pw);
        return NULL;
    }
    __atomic_store_n(&m->w[k], pw, __ATOMIC_RELEASE);
    return pw;
}

/* Worker k's side of m for a scrape; NULL when it never updated m. */
static const pm_worker_t *side(const pmetric_t *m, unsigned k)
{
    return __atomic_load_n(&m->w[k], __ATOMIC_ACQUIRE);
}

double *lp_ffi_metric_cells(int id)
{
    pmetric_t *m;
    pm_worker_t *pw = worker_side(id, &m);
    return pw ? pw->cells : NULL;
}

int lp_ffi_metric_series(int id, const char *labels, size_t len)
{
    pmetric_t *m;
    pm_worker_t *pw = worker_side(id, &m);
    if (!pw)
        return LP_FFI_EINVAL;
    unsigned n = pw->nseries; /* this thread is the only writer */
    for (unsigned i = 0; i < n; i++)
        if (pw->lens[i] == len && memcmp(pw->labels[i], labels, len) == 0)
            return (int)i;
    if (n >= m->max_series)
        return (int)m->max_series; /* the overflow series */
    char *copy = malloc(len + 1);
    if (!copy)
        return LP_FFI_ENOSPACE;
    memcpy(copy, labels, len);
    copy[len] = 0;
    pw->labels[n] = copy;
    pw->lens[n] = len;
    __atomic_store_n(&pw->nseries, n + 1, __ATOMIC_RELEASE);
    return (int)n;
}

/* ---- scrape (main thread) ---- */

static double cell(const double *p)
{
    double v;
    __atomic_load(p, &v, __ATOMIC_RELAXED);
    return v;
}

/* The (name, value) pairs of a series: names from m, values from the NUL-joined set (NULL:
 * the overflow series). */
static unsigned label_pairs(const pmetric_t *m, const char *set, size_t setlen, const char **out)
{
    const char *name = m->label_names, *v = set;
    for (int i = 0; i < m->nlabels; i++) {
        out[2 * i] = name;
        out[2 * i + 1] = set ? v : "__overflow__";
        name += strlen(name) + 1;
        if (set && v < set + setlen)
            v += strlen(v) + 1;
    }
    return (unsigned)m->nlabels;
}

/* Sums the series of every worker whose label set is (set, len) into sum (cps cells),
 * marking them in seen. */
static void merge(const pmetric_t *m, const char *set, size_t len, unsigned k0, unsigned i0,
                  double *sum, unsigned char **seen)
{
    for (unsigned k = k0; k < LP_PM_WORKERS; k++) {
        const pm_worker_t *pw = seen[k] ? side(m, k) : NULL; /* NULL: new since the start */
        if (!pw)
            continue;
        unsigned n = __atomic_load_n(&pw->nseries, __ATOMIC_ACQUIRE);
        for (unsigned i = k == k0 ? i0 : 0; i < n; i++) {
            if (seen[k][i] || pw->lens[i] != len || memcmp(pw->labels[i], set, len) != 0)
                continue;
            seen[k][i] = 1;
            for (unsigned c = 0; c < m->cps; c++)
                sum[c] += cell(&pw->cells[(size_t)i * m->cps + c]);
            break;
        }
    }
}

static void emit(lp_mtext_t *t, const pmetric_t *m, const char *set, size_t len, const double *sum)
{
    const char *l[2 * 64];
    unsigned nl = label_pairs(m, set, len, l);
    if (m->type != PM_HISTOGRAM) {
        lp_mtext_sample(t, m->name, "", l, nl, sum[0]);
        return;
    }
    uint64_t counts[LP_M_MAX_BUCKETS + 1];
    for (unsigned b = 0; b <= m->nbounds; b++)
        counts[b] = (uint64_t)sum[b];
    lp_mtext_histogram(t, m->name, l, nl, m->bounds, m->nbounds, counts, sum[m->nbounds + 1]);
}

void lp_metrics_scrape_plugins(lp_mtext_t *t, const lp_server_t *s)
{
    LP_UNUSED(s);
    unsigned n = __atomic_load_n(&nmetrics, __ATOMIC_ACQUIRE);
    if (!n)
        return;
    lp_mtext_family(t, "luaproxy_metrics_overflow_total", "counter",
                    "Updates of a plugin metric that went to its overflow series "
                    "(metrics.max_series label sets reached).");
    for (unsigned id = 0; id < n; id++) {
        const pmetric_t *m = metrics[id];
        double ovf = 0;
        for (unsigned k = 0; k < LP_PM_WORKERS; k++)
            if (side(m, k))
                ovf += cell(&side(m, k)->cells[(size_t)(m->max_series + 1) * m->cps]);
        const char *l[] = {"metric", m->name};
        lp_mtext_sample(t, "luaproxy_metrics_overflow_total", "", l, 1, ovf);
    }
    double sum[LP_M_MAX_BUCKETS + 2];
    for (unsigned id = 0; id < n; id++) {
        const pmetric_t *m = metrics[id];
        lp_mtext_family(t, m->name, type_names[m->type], m->help);
        unsigned char **seen = calloc(LP_PM_WORKERS, sizeof(*seen));
        for (unsigned k = 0; seen && k < LP_PM_WORKERS; k++)
            if (side(m, k) && !(seen[k] = calloc(m->max_series, 1)))
                t->oom = 1;
        if (!seen) {
            t->oom = 1;
            return;
        }
        for (unsigned k = 0; !t->oom && k < LP_PM_WORKERS; k++) {
            const pm_worker_t *pw = seen[k] ? side(m, k) : NULL;
            if (!pw)
                continue;
            unsigned ns = __atomic_load_n(&pw->nseries, __ATOMIC_ACQUIRE);
            for (unsigned i = 0; i < ns; i++) {
                if (seen[k][i])
                    continue;
                memset(sum, 0, sizeof(sum));
                merge(m, pw->labels[i], pw->lens[i], k, i, sum, seen);
                emit(t, m, pw->labels[i], pw->lens[i], sum);
            }
        }
        /* A metric without labels shows 0 before its first update. */
        int none = 1;
        for (unsigned k = 0; k < LP_PM_WORKERS; k++)
            none &= !side(m, k) || __atomic_load_n(&side(m, k)->nseries, __ATOMIC_ACQUIRE) == 0;
        if (none && !m->nlabels) {
            memset(sum, 0, sizeof(sum));
            emit(t, m, "", 0, sum);
        }
        /* The overflow series, once something went there. */
        memset(sum, 0, sizeof(sum));
        double any = 0;
        for (unsigned k = 0; k < LP_PM_WORKERS; k++) {
            if (!side(m, k))
                continue;
            const double *ov = &side(m, k)->cells[(size_t)m->max_series * m->cps];
            for (unsigned c = 0; c < m->cps; c++)
                sum[c] += cell(&ov[c]);
            any += cell(&ov[m->cps]);
        }
        if (any > 0 && m->nlabels)
            emit(t, m, NULL, 0, sum);
        for (unsigned k = 0; k < LP_PM_WORKERS; k++)
            free(seen[k]);
        free(seen);
    }
}
