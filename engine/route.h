/* Routing: which of the config's routes a request head matches. Today the routes are tried
 * in order, first match wins (host pattern and path prefix); issue #22 replaces this with a
 * matcher compiled once per generation. */
#ifndef LP_ROUTE_H
#define LP_ROUTE_H

#include "config.h"
#include "http1.h"

/* The first route whose prefix and host pattern match h (port and trailing dot ignored,
 * case-insensitive hosts; `OPTIONS *` matches a route with prefix "/" only); NULL: none. */
const lp_route_conf_t *lp_route_find(const lp_config_t *cfg, const lp_h1_t *h);

#endif
