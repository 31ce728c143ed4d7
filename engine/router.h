/* The compiled router (docs/routing.md): a table of routes built once (per config
 * generation, per proxy.router.new() call, per admin change) into an index whose lookup
 * cost does not grow with the number of routes: a hash of exact hosts, hashes of wildcard
 * host suffixes (`*.example.com`) and host prefixes (`api.*`), one host-less bucket, and in
 * each bucket a byte radix tree of paths (exact, prefix, `:param` segments, a `*rest` tail,
 * and the literal head of anchored regexes). Semantics: first match in table order; the
 * index only narrows the candidates, their remaining conditions decide.
 *
 * A built router is immutable and may be shared by threads (a derived router shares parts of
 * it: lp_router_derive); a lookup allocates nothing
 * (each thread keeps one PCRE2 match block, grown when a router needs more groups). */
#ifndef LP_ROUTER_H
#define LP_ROUTER_H

#include <stddef.h>
#include <stdint.h>
#include "common.h"

/* lp_rbuild_add: kind of a condition. */
enum {
    LP_RK_HOST = 1,  /* "a.example.com", "*.example.com" or "api.*" (one per route) */
    LP_RK_PATH,      /* the whole path: literal bytes, `:name` segments, a final `*name` */
    LP_RK_PREFIX,    /* a literal byte prefix of the path */
    LP_RK_REGEX,     /* a PCRE2 regex the path must match; named groups are captured */
    LP_RK_METHOD,    /* one of the methods (repeat for several) */
    LP_RK_HEADER,    /* name, mode and value */
    LP_RK_QUERY,     /* name, mode and (decoded) value */
    LP_RK_CIDR,      /* "10.0.0.0/8", "::1" (repeat: any of them) */
    LP_RK_SNI,       /* exact or *.example.com; requests without SNI never match */
    LP_RK_PREDICATE, /* a Lua function decides after the rest matched (the caller runs it) */
};

/* lp_rbuild_add: mode of a header or query condition. */
enum { LP_RM_PRESENT = 0, LP_RM_EQUAL = 1, LP_RM_REGEX = 2 };

typedef struct lp_router_s lp_router_t;
typedef struct lp_rbuild_s lp_rbuild_t;

lp_rbuild_t *lp_rbuild_new(void);
/* Starts the next route (index 0, 1, ...); returns its index, or -1 when out of memory. */
int lp_rbuild_route(lp_rbuild_t *b);
/* Adds a condition to the current route. 0, or -1 with a message in err (a bad pattern, a
 * second path kind, out of memory). */
int lp_rbuild_add(lp_rbuild_t *b, int kind, int mode, const char *name, size_t nlen,
                  const char *value, size_t vlen, char *err, size_t errlen);
/* Adds route idx of r (all its conditions) to b's current route: a route compiled again
 * from its conditions (the tests' rebuilt tables; an admin change derives its router
 * instead, lp_router_derive). 0, or -1 with err. */
int lp_rbuild_copy(lp_rbuild_t *b, const lp_router_t *r, size_t idx, char *err, size_t errlen);
/* Calls fn for each condition of route idx of r, in the form lp_rbuild_add takes them (name
 * NULL but for headers and query arguments, value NULL for LP_RM_PRESENT and predicates), in
 * a fixed order: host, path kind, methods, headers and query, cidrs, sni, predicate. Stops at
 * fn's first non-zero return, which it returns; 0 otherwise. */
typedef int (*lp_router_cond_fn)(void *ud, int kind, int mode, const char *name, const char *value);
int lp_router_conditions(const lp_router_t *r, size_t idx, lp_router_cond_fn fn, void *ud);
/* Compiles the routes and frees b (always). NULL with a message in err on failure. */
lp_router_t *lp_rbuild_finish(lp_rbuild_t *b, char *err, size_t errlen);
void lp_rbuild_free(lp_rbuild_t *b);
/* A router of n routes made from base: route i is base's route at position src[i] when
 * src[i] >= 0, else the next of b's routes (b holds the new routes, in order). Costs what
 * changed, not the table: it shares base's compiled routes and every index node off the
 * paths of the routes added and removed (reference-counted, atomic: base may be in use by
 * other threads, and freed before or after). Frees b (always). NULL with err on failure. */
lp_router_t *lp_router_derive(const lp_router_t *base, const long *src, size_t n, lp_rbuild_t *b,
                              char *err, size_t errlen);
void lp_router_free(lp_router_t *r);
size_t lp_router_count(const lp_router_t *r);
/* The router's regex prefilter chunks (docs/routing.md), and in *ready (may be NULL) how many
 * of them have their database compiled; for tests and the benchmark. */
size_t lp_router_rx_sets(const lp_router_t *r, size_t *ready);

/* What a lookup reads from a request. Headers and query arguments come either from the
 * arrays (one value per name of lp_router_name(r, kind, i), base NULL when absent; the FFI)
 * or from the callbacks (the engine). */
typedef struct {
    lp_str_t method;
    lp_str_t host; /* as sent: a port, a trailing dot and case are ignored */
    lp_str_t path; /* without the query; "*" is `OPTIONS *` (only a prefix "/" matches it) */
    lp_str_t sni;  /* base NULL: none */
    int family;    /* 4 or 6: addr holds the client address (network order); 0: unknown */
    uint8_t addr[16];
    const lp_str_t *hvals; /* borrowed: header values by slot, or NULL to call header() */
    const lp_str_t *qvals; /* borrowed: decoded query values by slot, or NULL for query() */
    /* A header's value (base NULL: absent). */
    lp_str_t (*header)(const void *ctx, const char *name, size_t nlen);
    /* A query argument's decoded value into buf (cap bytes); base NULL: absent. */
    lp_str_t (*query)(const void *ctx, const char *name, size_t nlen, char *buf, size_t cap);
    const void *ctx; /* borrowed: for the callbacks */
} lp_route_in_t;

#define LP_ROUTE_MAX_CAPS 16

typedef struct {
    const char *name; /* borrowed from the router */
    lp_str_t value;   /* borrowed from the input path */
} lp_route_cap_t;

typedef struct {
    int index;      /* the route, or -1: none */
    int predicate;  /* the route has a predicate: the caller runs it, and on false looks up
                       again from index + 1 */
    unsigned ncaps; /* :params, *rest and named regex groups */
    lp_route_cap_t caps[LP_ROUTE_MAX_CAPS];
} lp_route_out_t;

/* The first route at or after `from` whose conditions (but its predicate) hold. Returns
 * out->index. */
int lp_router_match(const lp_router_t *r, const lp_route_in_t *in, int from, lp_route_out_t *out);

/* The header (LP_RK_HEADER) or query (LP_RK_QUERY) names the routes read, for
 * lp_route_in_t's arrays: their count, and the i-th (lower case for headers). */
size_t lp_router_nnames(const lp_router_t *r, int kind);
const char *lp_router_name(const lp_router_t *r, int kind, size_t i);

/* Routes that can never match because an earlier one takes every request they would:
 * calls warn(ud, shadowed, by) for each (detected when the earlier route has only a host
 * and a path or prefix, and these cover the later route's). Returns how many. */
size_t lp_router_shadows(const lp_router_t *r, void (*warn)(void *ud, size_t route, size_t by),
                         void *ud);

/* The one wording of a shadow, for `-t` and every load, POST /routes and `explain`:
 * "routes[8] (me) can never match: routes[7] (user) before it takes all its requests".
 * route and by are 0-based positions; a name is shown unless it is NULL or the default
 * "route#N" of that position. Returns what snprintf returns. */
int lp_router_shadow_text(char *out, size_t n, size_t route, const char *name, size_t by,
                          const char *by_name);

#endif
