/* A route table: the compiled router and, for each of its routes, the route's settings (the
 * config's route, or one added through the admin API). A generation starts with the one
 * its config loaded (overlay applied); POST /routes builds a new one on the main thread and
 * hands it to every worker (worker.c), which swaps it in for new requests. Shared across
 * threads, immutable once built, reference-counted (atomic): each worker's generation holds
 * one reference, and each request routed with it one more, so requests in flight finish on
 * the table they started with. */
#ifndef LP_RTABLE_H
#define LP_RTABLE_H

#include <jansson.h>
#include "config.h"
#include "router.h"

#define LP_ROUTES_OVERLAY_SUFFIX ".routes.json"

typedef struct lp_rtable_s {
    unsigned refs;                  /* atomic (__atomic builtins) */
    lp_router_t *router;            /* owned when router_owned, else borrowed from the config
                                       (the table of a config as loaded) */
    int router_owned;               /* the table frees router */
    const lp_route_conf_t **routes; /* owned array of nroutes: borrowed from the config, or
                                       from `own` */
    int *conf_index;                /* owned array of nroutes: the config route (its Lua
                                       plugins and handler), -1 for an admin route */
    lp_route_conf_t *own;           /* owned array of nown admin routes (their strings owned) */
    size_t nroutes, nown;
} lp_rtable_t;

/* The table of cfg's routes as loaded (cfg->router); NULL when out of memory. */
lp_rtable_t *lp_rtable_from_config(const lp_config_t *cfg);
void lp_rtable_ref(lp_rtable_t *t);
void lp_rtable_unref(lp_rtable_t *t);

/* A new table: `base` with the operations of `ops` (a JSON array, applied in order; indexes
 * 1-based, as routes[i]) -- {"op": "add", "at": i (default: the end), "route": R},
 * {"op": "replace", "index": i, "route": R}, {"op": "remove", "index": i}; R is {"match":
 * {...the config's match keys...}, "upstream": NAME, "strip_prefix": bool}. NULL with err
 * when an operation or a route is invalid (nothing changes). */
lp_rtable_t *lp_rtable_apply(const lp_rtable_t *base, const lp_config_t *cfg, json_t *ops,
                             char *err, size_t errlen);

/* The overlay file of a config (its path + ".routes.json"): the operations applied through
 * the admin API since, replayed at every load. Appends ops to it (written to a temporary
 * file and renamed). 0, or -1 with err. */
int lp_rtable_persist(const char *config_path, json_t *ops, char *err, size_t errlen);
/* Loads the overlay of config_path into *ops (NULL: no file). 0, or -1 with err. */
int lp_rtable_overlay(const char *config_path, json_t **ops, char *err, size_t errlen);

#endif
