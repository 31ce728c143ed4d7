/* `luaproxy push -c FILE --etcd URL [--prefix P]` (docs/fleet.md): FILE is checked as `-t`
 * checks it (loaded, materialised, its plugins and handlers loaded in a worker VM with
 * init_worker run), then written to etcd as the JSON document PREFIX config, which every
 * instance watching the prefix applies. `--plugin NAME=FILE` writes a plugin's Lua source
 * to PREFIX plugins/NAME (its syntax checked first). etcd auth (--user, the password never
 * on the command line) and TLS (https://, tls.c's client context) as the instances have. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>
#include <lualib.h>
#include "accesslog.h"
#include "config.h"
#include "etcd.h"
#include "lua_vm.h"
#include "tls.h"
#include "worker.h"

static void push_usage(FILE *out)
{
    fprintf(
        out,
        "usage: luaproxy push [-c FILE] [--plugin NAME=FILE]... --etcd URL [options]\n"
        "  -c FILE             check FILE as -t does, then write it (as JSON) to PREFIX config\n"
        "  --plugin NAME=FILE  check FILE's Lua syntax, then write it to PREFIX plugins/NAME\n"
        "  --etcd URL          http://HOST:PORT or https://HOST:PORT\n"
        "  --prefix P          key prefix (default /luaproxy/)\n"
        "  --user USER         etcd user; the password from $LUAPROXY_ETCD_PASSWORD or\n"
        "                      --password-file FILE (never the command line)\n"
        "  --cacert FILE --cert FILE --key FILE --server-name NAME --insecure  TLS\n");
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

/* The password: the file's first line, else $LUAPROXY_ETCD_PASSWORD (not argv: other users
 * of the machine can read a process's command line). */
static int read_password(const char *file, char *out, size_t n, char *err, size_t errlen)
{
    if (!file) {
        const char *env = getenv("LUAPROXY_ETCD_PASSWORD");
        if (!env) {
            snprintf(err, errlen,
                     "--user needs a password: set LUAPROXY_ETCD_PASSWORD or "
                     "give --password-file FILE");
            return -1;
        }
        snprintf(out, n, "%s", env);
        return 0;
    }
    FILE *f = fopen(file, "r");
    if (!f || !fgets(out, (int)n, f)) {
        snprintf(err, errlen, "%s: %s", file, f ? "empty" : strerror(errno));
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    out[strcspn(out, "\r\n")] = 0;
    return 0;
}

/* One key written; prints the revision. 0 or 1. */
static int put(const lp_etcd_ep_t *ep, const char *token, const char *key, const char *val,
               const char *what, const char *url)
{
    char err[1024];
    char *k64 = lp_etcd_b64(key, strlen(key)), *v64 = lp_etcd_b64(val, strlen(val));
    json_t *req = json_pack("{ssss}", "key", k64 ? k64 : "", "value", v64 ? v64 : ""), *res;
    free(k64);
    free(v64);
    int rc = lp_etcd_call(ep, "/v3/kv/put", token, req, 5000, -1, &res, err, sizeof(err));
    json_decref(req);
    if (rc) {
        fprintf(stderr, "luaproxy push: %s\n", err);
        return 1;
    }
    json_t *rev = json_object_get(json_object_get(res, "header"), "revision");
    printf("%s: pushed to %s%s at revision %s\n", what, url, key,
           json_is_string(rev) ? json_string_value(rev) : "?");
    json_decref(res);
    return 0;
}

/* A plugin's source, its syntax checked with the name instances will report errors under
 * ("etcd:PREFIX plugins/NAME:LINE: ..."). malloc'ed, or NULL (printed). */
static char *plugin_source(const char *name, const char *file, const char *key)
{
    for (const char *p = name; *p; p++) {
        if (!(*p == '_' || *p == '-' || *p == '.' || (*p >= '0' && *p <= '9') ||
              (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))) {
            fprintf(stderr,
                    "luaproxy push: --plugin %s: a plugin name is letters, digits, "
                    "'_', '-' and '.'\n",
                    name);
            return NULL;
        }
    }
    FILE *f = fopen(file, "rb");
    char *src = NULL;
    size_t n = 0, cap = 0;
    if (f) {
        char buf[16384];
        size_t r;
        while ((r = fread(buf, 1, sizeof(buf), f)) > 0) {
            if (n + r + 1 > cap) {
                cap = (n + r + 1) * 2;
                char *q = realloc(src, cap);
                if (!q)
                    break;
                src = q;
            }
            memcpy(src + n, buf, r);
            n += r;
        }
        fclose(f);
    }
    if (!src) {
        fprintf(stderr, "luaproxy push: %s: %s\n", file, f ? "empty" : strerror(errno));
        return NULL;
    }
    src[n] = 0;
    lua_State *L = luaL_newstate();
    char chunk[400];
    snprintf(chunk, sizeof(chunk), "@etcd:%s", key);
    if (L && luaL_loadbuffer(L, src, n, chunk)) {
        fprintf(stderr, "%s (from %s)\n", lua_tostring(L, -1), file);
        free(src);
        src = NULL;
    }
    if (L)
        lua_close(L);
    return src;
}

/* The plugin sources under PREFIX plugins/ in etcd, {NAME: source} (the caller's), or NULL
 * with err. */
static json_t *fleet_plugins(const lp_etcd_ep_t *ep, const char *token, const char *prefix,
                             char *err, size_t errlen)
{
    char key[300], end[300];
    int kn = snprintf(key, sizeof(key), "%splugins/", prefix);
    memcpy(end, key, (size_t)kn + 1);
    end[kn - 1]++; /* '/' + 1: every key under the folder */
    char *k64 = lp_etcd_b64(key, (size_t)kn), *e64 = lp_etcd_b64(end, (size_t)kn);
    json_t *req = json_pack("{ssss}", "key", k64 ? k64 : "", "range_end", e64 ? e64 : ""), *res;
    free(k64);
    free(e64);
    int rc = lp_etcd_call(ep, "/v3/kv/range", token, req, 5000, -1, &res, err, errlen);
    json_decref(req);
    if (rc)
        return NULL;
    json_t *out = json_object(), *kv;
    size_t i;
    json_array_foreach(json_object_get(res, "kvs"), i, kv)
    {
        size_t n = 0, vn = 0;
        json_t *jk = json_object_get(kv, "key"), *jv = json_object_get(kv, "value");
        char *k = json_is_string(jk) ? lp_etcd_unb64(json_string_value(jk), &n) : NULL;
        char *v = json_is_string(jv) ? lp_etcd_unb64(json_string_value(jv), &vn) : NULL;
        if (k && v && n > (size_t)kn)
            json_object_set_new(out, k + kn, json_stringn(v, vn));
        free(k);
        free(v);
    }
    json_decref(res);
    return out;
}

int lp_etcd_push_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"etcd", required_argument, NULL, 'e'},   {"prefix", required_argument, NULL, 'p'},
        {"user", required_argument, NULL, 'u'},   {"password-file", required_argument, NULL, 'P'},
        {"cacert", required_argument, NULL, 'A'}, {"cert", required_argument, NULL, 'C'},
        {"key", required_argument, NULL, 'K'},    {"server-name", required_argument, NULL, 'S'},
        {"insecure", no_argument, NULL, 'I'},     {"plugin", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    const char *path = NULL, *url = NULL, *prefix = "/luaproxy/", *user = NULL, *pwfile = NULL;
    lp_tls_client_conf_t tc = {.verify = 1};
    const char *plugins[32];
    int nplugins = 0, opt, bad = 0;
    /* TLS writes go through OpenSSL's socket BIO (write(2), no MSG_NOSIGNAL): etcd closing
     * on a refused client certificate must be an error, not SIGPIPE (main.c ignores it
     * the same way, after this command has branched off). */
    signal(SIGPIPE, SIG_IGN);
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
        case 'u':
            user = optarg;
            break;
        case 'P':
            pwfile = optarg;
            break;
        case 'A':
            free(tc.ca);
            tc.ca = strdup(optarg);
            break;
        case 'C':
            free(tc.cert);
            tc.cert = strdup(optarg);
            break;
        case 'K':
            free(tc.key);
            tc.key = strdup(optarg);
            break;
        case 'S':
            free(tc.sni);
            tc.sni = strdup(optarg);
            break;
        case 'I':
            tc.verify = 0;
            break;
        case 'L':
            if (nplugins < (int)(sizeof(plugins) / sizeof(plugins[0])) && strchr(optarg, '='))
                plugins[nplugins++] = optarg;
            else
                bad = 1;
            break;
        case 'h':
            push_usage(stdout);
            lp_tls_client_conf_free(&tc);
            return 0;
        default:
            bad = 1;
        }
    }
    size_t pl = strlen(prefix);
    if (bad || (!path && !nplugins) || !url || optind < argc || pl == 0 || pl > 200 ||
        prefix[0] != '/' || prefix[pl - 1] != '/' || (!tc.cert != !tc.key)) {
        push_usage(stderr);
        lp_tls_client_conf_free(&tc);
        return 2;
    }
    char err[1024];
    lp_etcd_ep_t ep;
    if (lp_etcd_ep_parse(url, &ep, err, sizeof(err))) {
        fprintf(stderr, "luaproxy push: %s\n", err);
        lp_tls_client_conf_free(&tc);
        return 2;
    }
    lp_tls_client_t *tls = NULL; /* owned: the context ep borrows */
    if (ep.https && !(tls = lp_tls_client_new(&tc, err, sizeof(err)))) {
        fprintf(stderr, "luaproxy push: TLS: %s\n", err);
        lp_tls_client_conf_free(&tc);
        return 2;
    }
    lp_tls_client_conf_free(&tc);
    ep.tls = tls;
    int rc = 0;
    char *doc = NULL, *srcs[32] = {0};
    /* Everything is checked before anything is written. */
    char keys[32][300];
    for (int i = 0; i < nplugins && !rc; i++) {
        const char *eq = strchr(plugins[i], '=');
        snprintf(keys[i], sizeof(keys[i]), "%splugins/%.*s", prefix, (int)(eq - plugins[i]),
                 plugins[i]);
        char name[256];
        snprintf(name, sizeof(name), "%.*s", (int)(eq - plugins[i]), plugins[i]);
        if (!name[0] || !(srcs[i] = plugin_source(name, eq + 1, keys[i])))
            rc = 1;
    }
    char *token = NULL; /* owned */
    if (!rc && user) {
        char pw[512];
        json_t *res = NULL;
        if (read_password(pwfile, pw, sizeof(pw), err, sizeof(err))) {
            fprintf(stderr, "luaproxy push: %s\n", err);
            rc = 2;
        } else {
            json_t *req = json_pack("{ssss}", "name", user, "password", pw);
            memset(pw, 0, sizeof(pw));
            if (lp_etcd_call(&ep, "/v3/auth/authenticate", NULL, req, 5000, -1, &res, err,
                             sizeof(err))) {
                fprintf(stderr, "luaproxy push: %s\n", err);
                rc = 1;
            }
            json_decref(req);
            json_t *t = json_object_get(res, "token");
            if (!rc && !(token = json_is_string(t) ? strdup(json_string_value(t)) : NULL)) {
                fprintf(stderr, "luaproxy push: etcd authentication: no token\n");
                rc = 1;
            }
            json_decref(res);
        }
    }
    /* The config is checked with the plugins the instances will have: those in etcd,
     * and the ones this push writes. */
    char *pj = NULL; /* owned: what lp_lua_push_plugins borrows */
    if (!rc && path) {
        json_t *sources = fleet_plugins(&ep, token, prefix, err, sizeof(err));
        if (!sources) {
            fprintf(stderr, "luaproxy push: %s\n", err);
            rc = 1;
        }
        for (int i = 0; i < nplugins && !rc; i++)
            json_object_set_new(sources, keys[i] + pl + strlen("plugins/"), json_string(srcs[i]));
        char pprefix[300];
        snprintf(pprefix, sizeof(pprefix), "%splugins/", prefix);
        json_t *o = sources ? json_pack("{s:s,s:o}", "prefix", pprefix, "sources", sources) : NULL;
        pj = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        lp_lua_push_plugins = pj;
    }
    if (!rc && path && check(path, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        rc = 1;
    }
    lp_lua_push_plugins = NULL;
    free(pj);
    if (!rc && path && !(doc = encode(path, err, sizeof(err)))) {
        fprintf(stderr, "%s\n", err);
        rc = 1;
    }
    /* Plugins first: a config naming a new plugin finds its source there. */
    for (int i = 0; i < nplugins && !rc; i++)
        rc = put(&ep, token, keys[i], srcs[i], strchr(plugins[i], '=') + 1, url);
    if (!rc && doc) {
        char key[300];
        snprintf(key, sizeof(key), "%sconfig", prefix);
        rc = put(&ep, token, key, doc, path, url);
    }
    for (int i = 0; i < nplugins; i++)
        free(srcs[i]);
    free(doc);
    free(token);
    lp_tls_client_unref(tls);
    return rc;
}
