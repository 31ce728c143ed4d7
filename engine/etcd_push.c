/* `luaproxy push -c FILE --etcd URL [--prefix P]` (docs/fleet.md): FILE is checked as `-t`
 * checks it (loaded, materialised, its plugins and handlers loaded in a worker VM with
 * init_worker run), then written to etcd as the JSON document PREFIX config, which every
 * instance watching the prefix applies. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>
#include <lualib.h>
#include "accesslog.h"
#include "config.h"
#include "etcd.h"
#include "lua_vm.h"
#include "worker.h"

static void push_usage(FILE *out)
{
    fprintf(out, "usage: luaproxy push -c FILE --etcd http://HOST:PORT [--prefix /luaproxy/]\n"
                 "  checks FILE as -t does, then writes it (as JSON) to PREFIX config\n");
}

/* FILE as JSON (lua/luaproxy/config_source.lua encode_file): malloc'ed, or NULL with err. */
static char *encode(const char *path, char *err, size_t errlen)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    luaL_openlibs(L);
    lp_lua_set_paths(L, path);
    char *out = NULL;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "luaproxy.config_source");
    if (lua_pcall(L, 1, 1, 0) == 0) {
        lua_getfield(L, -1, "encode_file");
        lua_pushstring(L, path);
        if (lua_pcall(L, 1, 2, 0) == 0 && lua_type(L, -2) == LUA_TSTRING)
            out = strdup(lua_tostring(L, -2));
    }
    if (!out)
        snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "out of memory");
    lua_close(L);
    return out;
}

static int check(const char *path, char *err, size_t errlen)
{
    lp_config_t *cfg;
    lp_config_admin_json = 0;
    int rc = lp_config_load(path, &cfg, err, errlen);
    if (rc) {
        /* The shared config needs a listen only to pass the check: say so. */
        size_t n = strlen(err);
        if (strstr(err, ": listen: required field missing") && n + 80 < errlen)
            snprintf(err + n, errlen - n,
                     " (push checks a complete config: add one; each instance keeps its own)");
        return rc;
    }
    if (cfg->config_source) {
        snprintf(err, errlen, "%s: a bootstrap file (config_source): push the config itself", path);
        rc = LP_ECONFIG;
    }
    if (!rc)
        rc = lp_config_materialise(cfg, err, errlen);
    char ferr[512];
    if (!rc && lp_accesslog_check_format(&cfg->access_format, ferr, sizeof(ferr))) {
        snprintf(err, errlen, "%s: %s", path, ferr);
        rc = LP_ECONFIG;
    }
    if (!rc)
        rc = lp_workers_check(cfg, err, errlen);
    lp_config_free(cfg);
    return rc;
}

int lp_etcd_push_main(int argc, char **argv)
{
    static const struct option longopts[] = {{"etcd", required_argument, NULL, 'e'},
                                             {"prefix", required_argument, NULL, 'p'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *path = NULL, *url = NULL, *prefix = "/luaproxy/";
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 'e':
            url = optarg;
            break;
        case 'p':
            prefix = optarg;
            break;
        case 'h':
            push_usage(stdout);
            return 0;
        default:
            push_usage(stderr);
            return 2;
        }
    }
    size_t pl = strlen(prefix);
    if (!path || !url || optind < argc || pl == 0 || pl > 200 || prefix[0] != '/' ||
        prefix[pl - 1] != '/') {
        push_usage(stderr);
        return 2;
    }
    char err[1024];
    lp_etcd_ep_t ep;
    if (lp_etcd_ep_parse(url, &ep, err, sizeof(err))) {
        fprintf(stderr, "luaproxy push: %s\n", err);
        return 2;
    }
    if (check(path, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char *doc = encode(path, err, sizeof(err));
    if (!doc) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char key[300];
    int kn = snprintf(key, sizeof(key), "%sconfig", prefix);
    char *k64 = lp_etcd_b64(key, (size_t)kn), *v64 = lp_etcd_b64(doc, strlen(doc));
    free(doc);
    json_t *req = json_pack("{ssss}", "key", k64 ? k64 : "", "value", v64 ? v64 : ""), *res;
    free(k64);
    free(v64);
    int rc = lp_etcd_call(&ep, "/v3/kv/put", NULL, req, 5000, &res, err, sizeof(err));
    json_decref(req);
    if (rc) {
        fprintf(stderr, "luaproxy push: %s\n", err);
        return 1;
    }
    json_t *rev = json_object_get(json_object_get(res, "header"), "revision");
    printf("%s: pushed to %s%s at revision %s\n", path, url, key,
           json_is_string(rev) ? json_string_value(rev) : "?");
    json_decref(res);
    return 0;
}
