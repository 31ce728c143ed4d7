#include "ipset.h"
#include "realip.h"
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned __int128 u128;

typedef struct {
    u128 start, end; /* inclusive */
    int len;         /* prefix length in the 128-bit space */
    int value;
} prefix_t;

struct lp_ipset_s {
    prefix_t *prefixes; /* owned: what was added (freed by build) */
    size_t nprefixes, cap;
    size_t added;
    u128 *starts; /* owned: range starts, ascending (after build) */
    int *values;  /* owned: the value of the range beginning at starts[i] (-1: none) */
    size_t n;
    int built;
};

lp_ipset_t *lp_ipset_new(void)
{
    return calloc(1, sizeof(lp_ipset_t));
}

void lp_ipset_free(lp_ipset_t *s)
{
    if (!s)
        return;
    free(s->prefixes);
    free(s->starts);
    free(s->values);
    free(s);
}

static u128 from_bytes(const uint8_t b[16])
{
    u128 v = 0;
    for (int i = 0; i < 16; i++)
        v = (v << 8) | b[i];
    return v;
}

/* An address or network of realip.c's parser in the 128-bit space: IPv4 as ::ffff:a.b.c.d,
 * its prefix length moved up by 96 bits. One parser for every address the config and its
 * files name (real_ip, routes, IP sets), so they agree on what an address is. */
static u128 to_space(const lp_ip_t *ip)
{
    uint8_t b[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (ip->v6)
        memcpy(b, ip->addr, 16);
    else
        memcpy(b + 12, ip->addr, 4);
    return from_bytes(b);
}

static u128 host_mask(int len)
{
    /* The bits below a prefix of `len` bits. */
    return len >= 128 ? 0 : len <= 0 ? ~(u128)0 : (((u128)1 << (128 - len)) - 1);
}

int lp_ipset_add(lp_ipset_t *s, const char *text, size_t len, int value)
{
    if (s->built)
        return LP_IPSET_EBUILT;
    if (value < 0)
        return LP_IPSET_EINVAL;
    lp_cidr_t c;
    int rc = lp_cidr_parse(text, len, &c);
    if (rc)
        return rc == LP_CIDR_EHOSTBITS ? LP_IPSET_EHOSTBITS : LP_IPSET_EINVAL;
    int plen = c.bits + (c.ip.v6 ? 0 : 96);
    u128 a = to_space(&c.ip);
    if (s->nprefixes == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        prefix_t *np = realloc(s->prefixes, cap * sizeof(*np));
        if (!np)
            return LP_IPSET_ENOMEM;
        s->prefixes = np;
        s->cap = cap;
    }
    u128 m = host_mask(plen);
    s->prefixes[s->nprefixes++] = (prefix_t){a, a | m, plen, value};
    s->added++;
    return 0;
}

int lp_ipset_add_file(lp_ipset_t *s, const char *path, int value, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return LP_IPSET_EINVAL;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned lineno = 0;
    int rc = 0;
    while (!rc && (n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        char *p = line, *e = line + n;
        char *hash = memchr(p, '#', (size_t)n);
        if (hash)
            e = hash;
        while (p < e && (*p == ' ' || *p == '\t'))
            p++;
        while (e > p && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
            e--;
        if (p == e)
            continue;
        rc = lp_ipset_add(s, p, (size_t)(e - p), value);
        if (rc)
            snprintf(err, errlen, "%s:%u: \"%.*s\" %s", path, lineno,
                     (int)(e - p > 64 ? 64 : e - p), p,
                     rc == LP_IPSET_EHOSTBITS ? "has bits set past its prefix (did you mean the "
                                                "network address?)"
                                              : "is not an address or CIDR");
    }
    if (!rc && ferror(f)) {
        snprintf(err, errlen, "%s: read error", path);
        rc = LP_IPSET_EINVAL;
    }
    free(line);
    fclose(f);
    return rc;
}

static int cmp_prefix(const void *pa, const void *pb)
{
    const prefix_t *a = pa, *b = pb;
    if (a->start != b->start)
        return a->start < b->start ? -1 : 1;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1; /* the wider one first: it contains the other */
    return a->value < b->value ? -1 : a->value > b->value;
}

/* Appends a range start; a range with the value of the one before merges into it. */
static void emit(lp_ipset_t *s, u128 start, int value)
{
    if (s->n && s->values[s->n - 1] == value)
        return;
    if (s->n && s->starts[s->n - 1] == start) {
        s->values[s->n - 1] = value; /* an empty range before it: replace */
        if (s->n > 1 && s->values[s->n - 2] == value)
            s->n--;
        return;
    }
    s->starts[s->n] = start;
    s->values[s->n] = value;
    s->n++;
}

int lp_ipset_build(lp_ipset_t *s)
{
    if (s->built)
        return 0;
    size_t n = s->nprefixes;
    if (n)
        qsort(s->prefixes, n, sizeof(prefix_t), cmp_prefix);
    /* Every prefix opens a range at its start and, when it ends inside an outer one, the
     * outer one resumes after it: at most 2n + 1 boundaries. */
    s->starts = malloc((2 * n + 1) * sizeof(u128));
    s->values = malloc((2 * n + 1) * sizeof(int));
    prefix_t **stack = malloc((n + 1) * sizeof(prefix_t *));
    if (!s->starts || !s->values || !stack) {
        free(stack);
        return LP_IPSET_ENOMEM;
    }
    size_t depth = 0;
    emit(s, 0, -1);
    for (size_t i = 0; i < n; i++) {
        prefix_t *p = &s->prefixes[i];
        /* Close the prefixes that end before this one starts: what contained them resumes. */
        while (depth && stack[depth - 1]->end < p->start) {
            prefix_t *top = stack[--depth];
            if (top->end != ~(u128)0)
                emit(s, top->end + 1, depth ? stack[depth - 1]->value : -1);
        }
        if (depth && stack[depth - 1]->start == p->start && stack[depth - 1]->len == p->len) {
            /* The same prefix again: sorted by value, so this one is the larger. */
            stack[depth - 1] = p;
        } else {
            stack[depth++] = p;
        }
        emit(s, p->start, p->value);
    }
    while (depth) {
        prefix_t *top = stack[--depth];
        if (top->end != ~(u128)0)
            emit(s, top->end + 1, depth ? stack[depth - 1]->value : -1);
    }
    free(stack);
    free(s->prefixes);
    s->prefixes = NULL;
    s->nprefixes = s->cap = 0;
    s->built = 1;
    return 0;
}

int lp_ipset_find(const lp_ipset_t *s, const char *text, size_t len)
{
    /* fe80::1%eth0: the zone names an interface, not address bits. */
    const char *zone = memchr(text, '%', len);
    lp_ip_t ip;
    if (lp_ip_parse(text, zone ? (size_t)(zone - text) : len, &ip))
        return LP_IPSET_EINVAL;
    u128 a = to_space(&ip);
    if (!s->built || s->n == 0)
        return -1;
    /* The last start <= a (starts[0] is 0, so there is one). */
    size_t lo = 0, hi = s->n;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->starts[mid] <= a)
            lo = mid;
        else
            hi = mid;
    }
    return s->values[lo];
}

size_t lp_ipset_count(const lp_ipset_t *s)
{
    return s->added;
}

size_t lp_ipset_boundaries(const lp_ipset_t *s)
{
    return s->n;
}
