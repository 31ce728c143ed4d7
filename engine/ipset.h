/* IP sets: CIDR prefixes (IPv4 and IPv6) with a value each, matched by longest prefix, as a
 * routing table would (the most specific entry wins: `allow 10.1.2.0/24` inside `deny
 * 10.0.0.0/8`). Built once (add, then build), then read-only: any thread may look up.
 *
 * Representation: IPv4 addresses live in the IPv4-mapped IPv6 range (::ffff:0:0/96), so one
 * table serves both. At build, the prefixes become disjoint address ranges, each labelled
 * with the value of the most specific prefix covering it, and only the range starts are
 * kept (sorted, with their value; -1 for gaps). A lookup is one binary search: 17 steps for
 * 100,000 prefixes, over two flat arrays (24 bytes per boundary), which is smaller and
 * faster to build than a pointer trie and just as fast to search at these sizes. */
#ifndef LP_IPSET_H
#define LP_IPSET_H

#include <stddef.h>

typedef struct lp_ipset_s lp_ipset_t;

enum {
    LP_IPSET_EINVAL = -401, /* not an address or a prefix (or a prefix length out of range) */
    LP_IPSET_ENOMEM = -402,
    LP_IPSET_EBUILT = -403,    /* add after build */
    LP_IPSET_EHOSTBITS = -404, /* a prefix with bits set past its length ("10.1.0.0/8") */
};

lp_ipset_t *lp_ipset_new(void);
void lp_ipset_free(lp_ipset_t *s);
/* Adds "192.0.2.0/24", "2001:db8::/32" or a single address ("192.0.2.7", "::1": a host
 * prefix) with `value` (>= 0). The same prefix added twice keeps the larger value (a
 * caller that numbers deny above allow makes deny win). Bits beyond the prefix length are
 * refused ("10.1.2.3/8": LP_IPSET_EHOSTBITS). 0 or LP_IPSET_E*. */
int lp_ipset_add(lp_ipset_t *s, const char *text, size_t len, int value);
/* Adds every line of a file: a CIDR or address per line, `#` comments and blank lines
 * ignored. 0, or LP_IPSET_E* with err set to "PATH:LINE: \"TEXT\" is not an address or
 * CIDR" (or the reason the file could not be read). Reading 100,000 lines in C rather
 * than Lua keeps a large list's load within the config's load time limit. */
int lp_ipset_add_file(lp_ipset_t *s, const char *path, int value, char *err, size_t errlen);
/* Sorts and flattens what was added; the set is read-only afterwards. 0 or ENOMEM. */
int lp_ipset_build(lp_ipset_t *s);
/* The value of the most specific prefix containing the address (text, IPv4 or IPv6; an
 * IPv6 zone id "%eth0" is ignored), -1 when none does, LP_IPSET_EINVAL when the text is not
 * an address. */
int lp_ipset_find(const lp_ipset_t *s, const char *text, size_t len);
/* Prefixes added, and boundaries after build (memory: 24 bytes each). */
size_t lp_ipset_count(const lp_ipset_t *s);
size_t lp_ipset_boundaries(const lp_ipset_t *s);

#endif
