/* `luaproxy routes -c FILE [--no-overlay]`: the route table a load of FILE builds (the admin
 * API's overlay applied, by the load's own code: config.c, rtable.h), printed as JSON for
 * `luaproxy explain` (lua/luaproxy/tools/explain.lua), so that explain routes as the proxy
 * would without a second merge. */
#ifndef LP_ROUTESCMD_H
#define LP_ROUTESCMD_H

/* argv[0] is "routes". Prints {"config": FILE, "overlay": {"file", "present", "applied",
 * "error"}, "routes": [GET /routes' entries]} and returns 0; 1 (with {"error": ...}) when
 * the config does not load, 2 on bad usage. An overlay that does not load or apply is
 * reported in overlay.error (the routes are then the config's), not an error. */
int lp_routescmd_main(int argc, char **argv);

#endif
