/* Routing the config's routes: the match tables read into the compiled router
 * (router.h, built once per generation at load), and a request head looked up in it.
 * First match in order (docs/routing.md). */
#ifndef LP_ROUTE_H
#define LP_ROUTE_H

#include <jansson.h>
#include <lua.h>
#include "config.h"
#include "http1.h"
#include "router.h"

/* Adds the conditions of the route `match` table at the top of L's stack (validated by
 * the config schema: host, prefix, path, regex, methods, headers, header_regex, query,
 * query_regex, cidr, sni) to b's current route. 0, or -1 with a message in err. */
int lp_route_read_match(lua_State *L, lp_rbuild_t *b, char *err, size_t errlen);

/* What the router reads from a request head and its connection: client address (family 4
 * or 6, 0: unknown) and TLS server name (base NULL: none). */
void lp_route_input(lp_route_in_t *in, const lp_h1_t *h, int family, const uint8_t *addr,
                    lp_str_t sni);

/* The first config route matching in (NULL: none); its captures in out. */
const lp_route_conf_t *lp_route_find(const lp_config_t *cfg, const lp_route_in_t *in,
                                     lp_route_out_t *out);

/* Logs a warning for each route of cfg that can never match (-t and every load). */
size_t lp_route_warn_shadows(const lp_config_t *cfg);
/* The same for the table t (POST /routes builds one, rtable.h), each sentence
 * (lp_router_shadow_text) also appended to the JSON array `warnings`. */
struct lp_rtable_s;
size_t lp_route_shadows_json(const lp_config_t *cfg, const struct lp_rtable_s *t, json_t *warnings);

#endif
