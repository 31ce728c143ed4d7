/* engine/waf_scan.c's internals (its FFI functions are in lua_api.h). */
#ifndef LP_WAF_SCAN_H
#define LP_WAF_SCAN_H
#include <stddef.h>

struct lp_waf_scan;

/* Internal, for tests: the memo's slots and the hit array's room (unsigned words) now, so a
 * test can see a reset give back what a large request grew. */
void lp_waf_scan_capacity(const struct lp_waf_scan *ws, size_t *memo_slots, size_t *hit_words);
/* Internal, for tests: the results and values kept across requests, and the values' bytes. */
void lp_waf_scan_kept(const struct lp_waf_scan *ws, size_t *results, size_t *values, size_t *bytes);

#endif
