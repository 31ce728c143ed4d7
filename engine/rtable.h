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
    struct lp_mblock_s **mblocks; /* owned array of nown, NULL until lp_rtable_meter (or
                                     with metrics off): admin route j's metrics block, borrowed
                                     from the registry (which keeps blocks until exit) */
    unsigned next_admin;          /* the N of the next admin route's default name admin#N: the count
                                     of routes the admin API gave since the config's, so the overlay's
                                     replay at a load gives each the name it had */
} lp_rtable_t;

#define LP_RTABLE_FP_LEN 17 /* a fingerprint: 16 hex digits and a NUL */

/* The table of cfg's routes as loaded (cfg->router); NULL when out of memory. */
lp_rtable_t *lp_rtable_from_config(const lp_config_t *cfg);
void lp_rtable_ref(lp_rtable_t *t);
void lp_rtable_unref(lp_rtable_t *t);

/* A new table: `base` with the operations of `ops` (a JSON array, applied in order; indexes
 * 1-based, as routes[i]) -- {"op": "add", "at": i (default: the end), "route": R},
 * {"op": "replace", "index": i, "route": R}, {"op": "remove", "index": i}; R is {"name":
 * NAME, "match": {...the config's match keys...}, "upstream": NAME, "strip_prefix": bool},
 * checked by the config schema's rules. NULL with err when an operation or a route is
 * invalid (nothing changes). When `warnings` is an array, a sentence is appended to it for
 * each replace that drops a config route's plugins, handler or error pages. */
lp_rtable_t *lp_rtable_apply(const lp_rtable_t *base, const lp_config_t *cfg, json_t *ops,
                             json_t *warnings, char *err, size_t errlen);

/* Route i of t as GET /routes shows it: {"index", "name", "config_route" (null: an admin
 * route), "match", "upstream" (null: Lua chooses), "strip_prefix"}. NULL when out of memory. */
json_t *lp_rtable_route_json(const lp_rtable_t *t, const lp_config_t *cfg, size_t i);

/* The metrics blocks of t's admin routes, by name (route="NAME", or admin#N), made when
 * cfg has metrics on and t has none yet. Main thread (the registry's), before t is handed to
 * the workers. 0, or -1 when out of memory. */
int lp_rtable_meter(lp_rtable_t *t, const lp_config_t *cfg);
/* Worker `wk` (0-based)'s cells for the admin route rc of t; NULL when rc is not one of t's
 * admin routes or t is not metered. */
uint64_t *lp_rtable_cells(const lp_rtable_t *t, const lp_route_conf_t *rc, unsigned wk);

/* A fingerprint of cfg's routes (names, conditions, upstreams, strip_prefix, whether Lua
 * parts are given): the overlay records the one it was made against. */
void lp_rtable_fingerprint(const lp_config_t *cfg, char out[LP_RTABLE_FP_LEN]);

/* The overlay file of a config (its path + ".routes.json"): {"config_routes": the
 * fingerprint of the config routes it was made against, "ops": the operations applied
 * through the admin API since}, replayed at every load. Appends ops to it (written to a
 * temporary file and renamed). 0, or -1 with err. */
int lp_rtable_persist(const char *config_path, const lp_config_t *cfg, json_t *ops, char *err,
                      size_t errlen);
/* Loads the overlay of config_path into *ops (NULL: no file). 0, or -1 with err -- also when
 * it was made against other routes than cfg's (its positions would mean other routes; both
 * take cfg->routes_fp, set at load). */
int lp_rtable_overlay(const char *config_path, const lp_config_t *cfg, json_t **ops, char *err,
                      size_t errlen);

#endif
