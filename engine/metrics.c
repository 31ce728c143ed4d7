/* Metrics storage (blocks of per-worker cells) and the text exposition; see metrics.h. */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"
#include "metrics.h"

lp_metrics_t lp_metrics;

void lp_metrics_init(lp_metrics_t *m, unsigned nworkers)
{
    memset(m, 0, sizeof(*m));
    m->nworkers = nworkers;
}

void lp_metrics_free(lp_metrics_t *m)
{
    while (m->blocks) {
        lp_mblock_t *b = m->blocks;
        m->blocks = b->next;
        for (unsigned w = 0; w < m->nworkers; w++)
            free(b->cells[w]);
        free(b->cells);
        free(b->key);
        free(b);
    }
    free(m->buckets);
    m->buckets = NULL;
    m->nbuckets = m->nblocks = 0;
}

lp_mblock_t *lp_metrics_find(const lp_metrics_t *m, const char *key, size_t keylen)
{
    if (!m->nbuckets)
        return NULL;
    for (lp_mblock_t *b = m->buckets[(size_t)lp_hash64(key, keylen) & (m->nbuckets - 1)]; b;
         b = b->hnext)
        if (b->keylen == keylen && memcmp(b->key, key, keylen) == 0)
            return b;
    return NULL;
}

/* Doubles the buckets when they are as many as the blocks; keeps the order of each chain
 * (newest first) by rehashing from the registry's list, oldest last. -1: out of memory. */
static int rehash(lp_metrics_t *m)
{
    size_t n = m->nbuckets ? m->nbuckets * 2 : 256;
    lp_mblock_t **v = calloc(n, sizeof(*v));
    if (!v)
        return -1;
    /* The list is newest first: appending each block to the tail of its chain keeps that. */
    lp_mblock_t **tail = calloc(n, sizeof(*tail));
    if (!tail) {
        free(v);
        return -1;
    }
    for (lp_mblock_t *b = m->blocks; b; b = b->next) {
        size_t i = (size_t)lp_hash64(b->key, b->keylen) & (n - 1);
        b->hnext = NULL;
        if (tail[i])
            tail[i]->hnext = b;
        else
            v[i] = b;
        tail[i] = b;
    }
    free(tail);
    free(m->buckets);
    m->buckets = v;
    m->nbuckets = n;
    return 0;
}

int lp_metrics_set_bounds(lp_metrics_t *m, const double *b, unsigned n)
{
    if (n > LP_M_MAX_BUCKETS)
        n = LP_M_MAX_BUCKETS;
    if (m->have_bounds) {
        if (n != m->nbounds)
            return 1;
        for (unsigned i = 0; i < n; i++)
            if (b[i] != m->bounds[i])
                return 1;
        return 0;
    }
    m->have_bounds = 1;
    m->nbounds = n;
    for (unsigned i = 0; i < n; i++) {
        m->bounds[i] = b[i];
        double ns = b[i] * 1e9;
        m->bounds_ns[i] = ns >= 1.8e19 ? UINT64_MAX : (uint64_t)ns;
    }
    return 0;
}

size_t lp_metrics_key(char *out, size_t cap, const char *family, const char *a, const char *b,
                      const char *c)
{
    const char *parts[4] = {family, a, b, c};
    size_t len = 0;
    for (int i = 0; i < 4 && parts[i]; i++) {
        size_t n = strlen(parts[i]);
        if (len + n + 1 > cap)
            return 0;
        memcpy(out + len, parts[i], n);
        len += n;
        out[len++] = 0;
    }
    return len;
}

lp_mblock_t *lp_metrics_block(lp_metrics_t *m, const char *key, size_t keylen, size_t ncells)
{
    for (lp_mblock_t *b =
             m->nbuckets ? m->buckets[(size_t)lp_hash64(key, keylen) & (m->nbuckets - 1)] : NULL;
         b; b = b->hnext)
        if (b->keylen == keylen && memcmp(b->key, key, keylen) == 0 && b->ncells >= ncells)
            return b;
    if (m->nblocks >= m->nbuckets && rehash(m))
        return NULL;
    lp_mblock_t *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->key = malloc(keylen ? keylen : 1);
    b->cells = calloc(m->nworkers ? m->nworkers : 1, sizeof(*b->cells));
    int ok = b->key && b->cells;
    for (unsigned w = 0; ok && w < m->nworkers; w++)
        ok = (b->cells[w] = calloc(ncells ? ncells : 1, sizeof(uint64_t))) != NULL;
    if (!ok) {
        for (unsigned w = 0; b->cells && w < m->nworkers; w++)
            free(b->cells[w]);
        free(b->cells);
        free(b->key);
        free(b);
        return NULL;
    }
    memcpy(b->key, key, keylen);
    b->keylen = keylen;
    b->ncells = ncells;
    b->next = m->blocks;
    m->blocks = b;
    size_t i = (size_t)lp_hash64(key, keylen) & (m->nbuckets - 1);
    b->hnext = m->buckets[i];
    m->buckets[i] = b;
    m->nblocks++;
    return b;
}

uint64_t lp_metrics_sum(const lp_metrics_t *m, const lp_mblock_t *b, size_t i)
{
    uint64_t s = 0;
    for (unsigned w = 0; w < m->nworkers && i < b->ncells; w++)
        s += LP_M_GET(&b->cells[w][i]);
    return s;
}

unsigned lp_metrics_bucket(const double *bounds, unsigned n, double v)
{
    unsigned i = 0;
    while (i < n && !(v <= bounds[i]))
        i++;
    return i;
}

/* ---- exposition ---- */

int lp_metrics_wants_om(const char *accept, size_t len)
{
    static const char want[] = "application/openmetrics-text";
    size_t n = sizeof(want) - 1;
    for (size_t i = 0; i + n <= len; i++) {
        size_t k = 0;
        while (k < n && tolower((unsigned char)accept[i + k]) == want[k])
            k++;
        if (k == n)
            return 1;
    }
    return 0;
}

void lp_mtext_init(lp_mtext_t *t, int om)
{
    memset(t, 0, sizeof(*t));
    t->om = om;
}

void lp_mtext_free(lp_mtext_t *t)
{
    free(t->buf);
    t->buf = NULL;
}

static int reserve(lp_mtext_t *t, size_t n)
{
    if (t->oom)
        return -1;
    if (lp_grow((void **)&t->buf, &t->cap, t->len + n + 1, 1, 4096)) {
        t->oom = 1;
        return -1;
    }
    return 0;
}

void lp_mtext_raw(lp_mtext_t *t, const char *s, size_t n)
{
    if (reserve(t, n))
        return;
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = 0;
}

static void puts_(lp_mtext_t *t, const char *s)
{
    lp_mtext_raw(t, s, strlen(s));
}

/* Escapes s for a label value (\\, \", \n) or, help, for HELP text: \\ and \n in the
 * Prometheus format (whose parsers refuse \" there), and \" too in OpenMetrics (its
 * grammar has no bare '"' in a HELP string). */
static void escaped(lp_mtext_t *t, const char *s, int help)
{
    for (const char *p = s; *p; p++) {
        const char *rep = NULL;
        if (*p == '\\')
            rep = "\\\\";
        else if (*p == '\n')
            rep = "\\n";
        else if (*p == '"' && (!help || t->om))
            rep = "\\\"";
        if (rep)
            puts_(t, rep);
        else
            lp_mtext_raw(t, p, 1);
    }
}

/* A sample value: integers as integers, others with enough digits to round-trip. */
static void value(lp_mtext_t *t, double v)
{
    char num[64];
    if (isnan(v))
        snprintf(num, sizeof(num), "NaN");
    else if (isinf(v))
        snprintf(num, sizeof(num), v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15)
        snprintf(num, sizeof(num), "%.0f", v);
    else {
        snprintf(num, sizeof(num), "%.15g", v); /* the shortest that reads back the same */
        if (strtod(num, NULL) != v)
            snprintf(num, sizeof(num), "%.17g", v);
    }
    puts_(t, num);
}

void lp_mtext_family(lp_mtext_t *t, const char *name, const char *type, const char *help)
{
    size_t n = strlen(name);
    if (t->om && strcmp(type, "counter") == 0 && n > 6 && strcmp(name + n - 6, "_total") == 0)
        n -= 6;
    puts_(t, "# HELP ");
    lp_mtext_raw(t, name, n);
    puts_(t, " ");
    escaped(t, help, 1);
    puts_(t, "\n# TYPE ");
    lp_mtext_raw(t, name, n);
    puts_(t, " ");
    puts_(t, type);
    puts_(t, "\n");
}

static void labels_(lp_mtext_t *t, const char *const *labels, unsigned nl, const char *le)
{
    if (!nl && !le)
        return;
    puts_(t, "{");
    for (unsigned i = 0; i < nl; i++) {
        if (i)
            puts_(t, ",");
        puts_(t, labels[2 * i]);
        puts_(t, "=\"");
        escaped(t, labels[2 * i + 1], 0);
        puts_(t, "\"");
    }
    if (le) {
        if (nl)
            puts_(t, ",");
        puts_(t, "le=\"");
        puts_(t, le);
        puts_(t, "\"");
    }
    puts_(t, "}");
}

void lp_mtext_sample(lp_mtext_t *t, const char *name, const char *suffix, const char *const *labels,
                     unsigned nl, double v)
{
    puts_(t, name);
    puts_(t, suffix);
    labels_(t, labels, nl, NULL);
    puts_(t, " ");
    value(t, v);
    puts_(t, "\n");
}

void lp_mtext_histogram(lp_mtext_t *t, const char *name, const char *const *labels, unsigned nl,
                        const double *bounds, unsigned nbounds, const uint64_t *counts, double sum)
{
    uint64_t cum = 0;
    char le[64];
    for (unsigned i = 0; i <= nbounds; i++) {
        cum += counts[i];
        if (i < nbounds) {
            /* OpenMetrics wants canonical floats ("1.0", not "1"); both parsers take them. */
            snprintf(le, sizeof(le), "%.17g", bounds[i]);
            if (!strpbrk(le, ".eEn"))
                strcat(le, ".0");
            char shorter[64];
            snprintf(shorter, sizeof(shorter), "%g", bounds[i]);
            if (strtod(shorter, NULL) == bounds[i]) {
                if (!strpbrk(shorter, ".eEn"))
                    strcat(shorter, ".0");
                memcpy(le, shorter, strlen(shorter) + 1);
            }
        } else {
            snprintf(le, sizeof(le), "+Inf");
        }
        puts_(t, name);
        puts_(t, "_bucket");
        labels_(t, labels, nl, le);
        puts_(t, " ");
        value(t, (double)cum);
        puts_(t, "\n");
    }
    lp_mtext_sample(t, name, "_sum", labels, nl, sum);
    lp_mtext_sample(t, name, "_count", labels, nl, (double)cum);
}

void lp_mtext_end(lp_mtext_t *t)
{
    if (t->om)
        puts_(t, "# EOF\n");
}

int lp_metrics_valid_name(const char *s)
{
    if (!s || !*s)
        return 0;
    for (const char *p = s; *p; p++) {
        char ch = *p;
        int alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' || ch == ':';
        if (!alpha && !(p > s && ch >= '0' && ch <= '9'))
            return 0;
    }
    return 1;
}

int lp_metrics_valid_label(const char *s)
{
    if (!lp_metrics_valid_name(s) || strchr(s, ':') || (s[0] == '_' && s[1] == '_'))
        return 0;
    return 1;
}
