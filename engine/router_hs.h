/* The router's regex prefilter (docs/routing.md): the regex routes of one index list compiled
 * into one Hyperscan database, so that one scan of the path names the few routes whose
 * regex may match, instead of running every PCRE2 regex in turn. Hyperscan only narrows:
 * each candidate is still confirmed by its PCRE2 regex (which also gives the captures), so
 * patterns are compiled with HS_FLAG_PREFILTER (a superset of the matches, never fewer), and
 * a pattern Hyperscan refuses is a candidate for every path.
 *
 * A set is immutable once built and shared by the routers that share its index node
 * (reference-counted); a scan uses the calling thread's own scratch space. Building a set
 * compiles nothing: its database is compiled on the process's compile thread (hs_db.h),
 * once per pattern text (a reload or a derived router with the same chunk shares it), and
 * until it is published every regex of the set is a candidate (PCRE2 alone decides, the
 * same answers, slower). Built without Hyperscan, lp_rxset_new returns NULL and the router
 * runs every regex. */
#ifndef LP_ROUTER_HS_H
#define LP_ROUTER_HS_H

#include <stddef.h>
#include <stdint.h>

typedef struct lp_rxset_s lp_rxset_t;

/* A set over n regexes: pats[i] (NUL-terminated, lens[i] bytes) known by ids[i], its
 * database asked of the compile thread (not waited for). NULL without Hyperscan or memory:
 * the caller then tries them all. */
lp_rxset_t *lp_rxset_new(const char *const *pats, const size_t *lens, const uint32_t *ids,
                         size_t n);
void lp_rxset_ref(lp_rxset_t *s);
void lp_rxset_unref(lp_rxset_t *s);
/* The ids of the regexes that may match s (in no order) into cand (at most cap): their
 * count, or -1 when every regex of the set must be tried (more than cap candidates, or the
 * scan failed). Allocates only when a set built since the thread last scanned grew the
 * scratch space every thread clones (see router_hs.c). */
int lp_rxset_scan(const lp_rxset_t *set, const char *s, size_t len, uint32_t *cand, unsigned cap);
/* Every id of the set (n of them). */
const uint32_t *lp_rxset_ids(const lp_rxset_t *set, size_t *n);
/* How many of the set's regexes Hyperscan refused (always candidates), once compiled; for
 * tests. */
size_t lp_rxset_fallbacks(const lp_rxset_t *set);
/* 1 when the set's database is compiled and used by scans; 0 while every regex of the set
 * is a candidate (not compiled yet, or never: no Hyperscan, out of memory). */
int lp_rxset_ready(const lp_rxset_t *set);

#endif
