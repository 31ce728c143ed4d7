#include "routescmd.h"
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "config.h"
#include "log.h"
#include "rtable.h"

static int print_json(json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) {
        fprintf(stderr, "luaproxy routes: out of memory\n");
        return -1;
    }
    puts(s);
    free(s);
    return 0;
}

int lp_routescmd_main(int argc, char **argv)
{
    const char *path = NULL;
    int no_overlay = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-c") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "--no-overlay"))
            no_overlay = 1;
        else
            path = NULL, i = argc;
    }
    if (!path) {
        fprintf(stderr, "usage: luaproxy routes -c FILE [--no-overlay]\n");
        return 2;
    }
    /* As -t loads: nothing served, no cache files touched; the load's notices and warnings
     * (shadowed routes) are explain's to say, not this command's. */
    lp_config_admin_json = 0;
    lp_config_cache_disk = 0;
    lp_config_overlay = no_overlay ? LP_OVERLAY_SKIP : LP_OVERLAY_REPORT;
    atomic_store_explicit(&lp_log_level, LP_LOG_ERROR, memory_order_relaxed);
    char err[1024];
    lp_config_t *cfg;
    if (lp_config_load(path, &cfg, err, sizeof(err))) {
        print_json(json_pack("{s:s}", "error", err));
        return 1;
    }
    char overlay[4200];
    snprintf(overlay, sizeof(overlay), "%s" LP_ROUTES_OVERLAY_SUFFIX, path);
    const lp_rtable_t *t = cfg->rtable;
    json_t *list = json_array();
    for (size_t i = 0; i < t->nroutes && list; i++)
        json_array_append_new(list, lp_rtable_route_json(t, cfg, i));
    int present = access(overlay, F_OK) == 0;
    json_t *doc =
        json_pack("{s:s,s:{s:s,s:b,s:b,s:s?},s:o}", "config", path, "overlay", "file", overlay,
                  "present", present, "applied", present && !no_overlay && !cfg->overlay_error,
                  "error", cfg->overlay_error, "routes", list ? list : json_null());
    lp_config_free(cfg);
    return print_json(doc) ? 1 : 0;
}
