#include "rtable.h"
#include "fnv.h"
#include "metrics.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static lp_rtable_t *alloc_table(size_t n, size_t nown)
{
    lp_rtable_t *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->refs = 1;
    t->routes = calloc(n ? n : 1, sizeof(*t->routes));
    t->conf_index = calloc(n ? n : 1, sizeof(*t->conf_index));
    t->own = calloc(nown ? nown : 1, sizeof(*t->own));
    if (!t->routes || !t->conf_index || !t->own) {
        free(t->routes);
        free(t->conf_index);
        free(t->own);
        free(t);
        return NULL;
    }
    return t;
}

static void table_free(lp_rtable_t *t)
{
    if (t->router_owned)
        lp_router_free(t->router);
    for (size_t i = 0; i < t->nown; i++) {
        free(t->own[i].prefix);
        free(t->own[i].name);
    }
    free(t->own);
    free(t->mblocks);
    free(t->routes);
    free(t->conf_index);
    free(t);
}

void lp_rtable_ref(lp_rtable_t *t)
{
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
}

void lp_rtable_unref(lp_rtable_t *t)
{
    if (t && __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        table_free(t);
}

lp_rtable_t *lp_rtable_from_config(const lp_config_t *cfg)
{
    lp_rtable_t *t = alloc_table(cfg->nroutes, 0);
    if (!t)
        return NULL;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        t->routes[i] = &cfg->routes[i];
        t->conf_index[i] = (int)i;
    }
    t->nroutes = cfg->nroutes;
    t->router = cfg->router;
    t->next_admin = 1;
    return t;
}

/* ---- a route given as JSON ---- */

static int jerr(char *err, size_t errlen, const char *fmt, const char *a)
{
    snprintf(err, errlen, fmt, a);
    return -1;
}

static int add_str(lp_rbuild_t *b, int kind, int mode, const char *name, json_t *v, char *err,
                   size_t errlen)
{
    const char *s = json_string_value(v);
    return lp_rbuild_add(b, kind, mode, name, name ? strlen(name) : 0, s, s ? strlen(s) : 0, err,
                         errlen);
}

/* The config schema's rules (lua/luaproxy/config_schema.lua) for what the router itself
 * would take more loosely (it also serves proxy.router.new): the admin API refuses what the
 * config refuses. */
static int host_ok(const char *h)
{
    size_t n = strlen(h);
    const char *rest = h;
    size_t rn = n;
    if (n && h[0] == '*') {
        rest = n >= 3 && h[1] == '.' ? h + 2 : "";
        rn = n >= 3 && h[1] == '.' ? n - 2 : 0;
    } else if (n && h[n - 1] == '*') {
        rn = n >= 3 && h[n - 2] == '.' ? n - 2 : 0;
    }
    if (!rn)
        return 0;
    for (size_t i = 0; i < rn; i++)
        if (!isalnum((unsigned char)rest[i]) && !strchr("-._", rest[i]))
            return 0;
    return 1;
}

static int token_ok(const char *s, const char *extra)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr(extra, *s))
            return 0;
    return 1;
}

static int check_value(int kind, const char *k, const char *v, char *err, size_t errlen)
{
    char m[160];
    if ((kind == LP_RK_HOST || kind == LP_RK_SNI) && !host_ok(v))
        snprintf(m, sizeof(m),
                 "match.%s: \"%.60s\" is not a host name, *.suffix or prefix.* "
                 "wildcard",
                 k, v);
    else if ((kind == LP_RK_PREFIX || kind == LP_RK_PATH) && v[0] != '/')
        snprintf(m, sizeof(m), "match.%s: must start with \"/\"", k);
    else if (kind == LP_RK_METHOD && !token_ok(v, ""))
        snprintf(m, sizeof(m), "match.%s: \"%.60s\" is not a method", k, v);
    else
        return 0;
    return jerr(err, errlen, "%s", m);
}

/* The conditions of a JSON match object into b's current route. */
static int read_match(json_t *m, lp_rbuild_t *b, char *err, size_t errlen)
{
    static const struct {
        const char *key;
        int kind;
        int list; /* a string or an array of strings */
        int map;  /* 1: name -> value or true; 2: name -> regex */
    } keys[] = {{"host", LP_RK_HOST, 0, 0},        {"prefix", LP_RK_PREFIX, 0, 0},
                {"path", LP_RK_PATH, 0, 0},        {"regex", LP_RK_REGEX, 0, 0},
                {"sni", LP_RK_SNI, 0, 0},          {"methods", LP_RK_METHOD, 1, 0},
                {"cidr", LP_RK_CIDR, 1, 0},        {"headers", LP_RK_HEADER, 0, 1},
                {"query", LP_RK_QUERY, 0, 1},      {"header_regex", LP_RK_HEADER, 0, 2},
                {"query_regex", LP_RK_QUERY, 0, 2}};
    if (!json_is_object(m))
        return jerr(err, errlen, "%s", "match: expected an object");
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v)
    {
        size_t i = 0;
        while (i < LP_ARRAY_LEN(keys) && strcmp(keys[i].key, k) != 0)
            i++;
        if (i == LP_ARRAY_LEN(keys))
            return jerr(err, errlen, "match.%s: unknown key", k);
        int rc = 0;
        if (keys[i].map) {
            if (!json_is_object(v))
                return jerr(err, errlen, "match.%s: expected an object", k);
            const char *name;
            json_t *x;
            json_object_foreach(v, name, x)
            {
                if (keys[i].kind == LP_RK_HEADER && !token_ok(name, "!#$%&'*+-.^_`|~"))
                    return jerr(err, errlen,
                                "match.%s: a header name has a character HTTP "
                                "does not allow",
                                k);
                if (json_is_string(x))
                    rc = add_str(b, keys[i].kind, keys[i].map == 2 ? LP_RM_REGEX : LP_RM_EQUAL,
                                 name, x, err, errlen);
                else if (json_is_true(x) && keys[i].map == 1)
                    rc = lp_rbuild_add(b, keys[i].kind, LP_RM_PRESENT, name, strlen(name), NULL, 0,
                                       err, errlen);
                else
                    return jerr(err, errlen, "match.%s: expected string values", k);
                if (rc)
                    return rc;
            }
        } else if (keys[i].list) {
            /* An array, as the config's schema wants it (a lone string is refused there). */
            if (!json_is_array(v))
                return jerr(err, errlen, "match.%s: expected an array of strings", k);
            size_t j;
            json_t *x;
            json_array_foreach(v, j, x)
            {
                if (!json_is_string(x))
                    return jerr(err, errlen, "match.%s: expected strings", k);
                if (check_value(keys[i].kind, k, json_string_value(x), err, errlen) ||
                    (rc = add_str(b, keys[i].kind, 0, NULL, x, err, errlen)))
                    return -1;
            }
        } else if (json_is_string(v)) {
            if (check_value(keys[i].kind, k, json_string_value(v), err, errlen))
                return -1;
            rc = add_str(b, keys[i].kind, 0, NULL, v, err, errlen);
        } else {
            return jerr(err, errlen, "match.%s: expected a string", k);
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* A JSON route into b (conditions) and rc (settings); rc->name is its `name`, or admin#N
 * (N: `seq`, the how-many-th route the admin API gave since the config's). */
static int read_route(json_t *r, const lp_config_t *cfg, lp_rbuild_t *b, lp_route_conf_t *rc,
                      unsigned seq, char *err, size_t errlen)
{
    memset(rc, 0, sizeof(*rc));
    if (!json_is_object(r))
        return jerr(err, errlen, "%s", "route: expected an object");
    const char *k;
    json_t *v;
    json_object_foreach(r, k, v)
    {
        if (strcmp(k, "match") && strcmp(k, "upstream") && strcmp(k, "strip_prefix") &&
            strcmp(k, "name"))
            return jerr(err, errlen,
                        "route.%s: unknown key (an admin route has name, match, upstream and "
                        "strip_prefix; plugins and handlers come with the config)",
                        k);
    }
    json_t *nm = json_object_get(r, "name");
    if (nm && (!json_is_string(nm) || !token_ok(json_string_value(nm), "_.:-")))
        return jerr(err, errlen, "%s",
                    "route.name: expected a string of letters, digits and _ . : -");
    char dflt[32];
    snprintf(dflt, sizeof(dflt), "admin#%u", seq);
    if (!(rc->name = strdup(nm ? json_string_value(nm) : dflt)))
        return jerr(err, errlen, "%s", "out of memory");
    json_t *m = json_object_get(r, "match");
    if (m && read_match(m, b, err, errlen))
        return -1;
    const char *up = json_string_value(json_object_get(r, "upstream"));
    if (!up)
        return jerr(err, errlen, "%s", "route.upstream: required (an upstream name)");
    size_t i = 0;
    while (i < cfg->nupstreams && strcmp(cfg->upstreams[i].name, up) != 0)
        i++;
    if (i == cfg->nupstreams)
        return jerr(err, errlen, "route.upstream: no upstream named \"%s\"", up);
    rc->has_upstream = 1;
    rc->upstream = i;
    json_t *strip = json_object_get(r, "strip_prefix");
    if (strip && !json_is_boolean(strip))
        return jerr(err, errlen, "%s", "route.strip_prefix: expected a boolean");
    rc->strip_prefix = json_is_true(strip);
    const char *prefix = m ? json_string_value(json_object_get(m, "prefix")) : NULL;
    if (rc->strip_prefix && !prefix)
        return jerr(err, errlen, "%s", "route.strip_prefix: needs match.prefix");
    if (prefix && !(rc->prefix = strdup(prefix)))
        return jerr(err, errlen, "%s", "out of memory");
    rc->prefix_len = prefix ? strlen(prefix) : 0;
    return 0;
}

/* ---- applying operations ---- */

typedef struct {
    long src;     /* index in the base table, or -1: a new route */
    json_t *json; /* borrowed: the new route */
    unsigned seq; /* a new route: its admin#N */
} slot_t;

/* What a replace drops of route `at` (0-based) of base: a config route's plugins, handler
 * and error pages, which the admin API cannot give. Appended to warnings as a sentence. */
static void warn_dropped(json_t *warnings, const lp_rtable_t *base, const slot_t *sl, long at)
{
    if (!warnings || sl->src < 0)
        return;
    const lp_route_conf_t *rc = base->routes[sl->src];
    char what[96] = "";
    if (rc->lua_parts & LP_ROUTE_PLUGINS)
        strcat(what, ", plugins");
    if (rc->lua_parts & LP_ROUTE_HANDLER)
        strcat(what, ", a handler");
    if (rc->error_pages.npages)
        strcat(what, ", error pages");
    if (!what[0])
        return;
    char m[400];
    snprintf(m, sizeof(m),
             "replace routes[%ld] (%s) dropped what an admin route cannot have: %s (give them "
             "back in the config)",
             at + 1, rc->name ? rc->name : "?", what + 2);
    json_array_append_new(warnings, json_string(m));
}

static long op_index(json_t *op, const char *key, size_t n, int allow_end, char *err, size_t errlen)
{
    json_t *v = json_object_get(op, key);
    if (!v && allow_end)
        return (long)n;
    if (!json_is_integer(v) || json_integer_value(v) < 1 ||
        json_integer_value(v) > (json_int_t)n + (allow_end ? 1 : 0)) {
        jerr(err, errlen, "%s: expected a route number within the table", key);
        return -1;
    }
    return (long)json_integer_value(v) - 1;
}

/* An admin route's name is unique in the table, as a config route's is in the config (it
 * labels the route's metrics): checked against the routes kept from base and the new ones
 * before it (routes are read in order, so later ones check against this one). */
static int name_unique(const slot_t *s, size_t n, size_t i, const lp_rtable_t *base,
                       const lp_rtable_t *t, const char *name, char *err, size_t errlen)
{
    for (size_t k = 0; k < n; k++) {
        const char *other = k < i                    ? t->routes[k]->name
                            : k > i && s[k].src >= 0 ? base->routes[s[k].src]->name
                                                     : NULL;
        if (other && strcmp(other, name) == 0) {
            snprintf(err, errlen, "route.name: \"%.100s\" is routes[%zu]'s name already", name,
                     k + 1);
            return -1;
        }
    }
    return 0;
}

lp_rtable_t *lp_rtable_apply(const lp_rtable_t *base, const lp_config_t *cfg, json_t *ops,
                             json_t *warnings, char *err, size_t errlen)
{
    if (!json_is_array(ops) || !json_array_size(ops)) {
        jerr(err, errlen, "%s", "ops: expected a non-empty array");
        return NULL;
    }
    size_t n = base->nroutes, cap = n + json_array_size(ops) + 1;
    slot_t *s = malloc(cap * sizeof(*s));
    if (!s) {
        jerr(err, errlen, "%s", "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        s[i] = (slot_t){(long)i, NULL, 0};
    unsigned seq = base->next_admin;
    size_t j;
    json_t *op;
    char msg[256];
    json_array_foreach(ops, j, op)
    {
        const char *what = json_string_value(json_object_get(op, "op"));
        json_t *route = json_object_get(op, "route");
        long at = -1;
        msg[0] = 0;
        if (what && strcmp(what, "add") == 0 && route) {
            if ((at = op_index(op, "at", n, 1, msg, sizeof(msg))) >= 0) {
                memmove(s + at + 1, s + at, (n - (size_t)at) * sizeof(*s));
                s[at] = (slot_t){-1, route, seq++};
                n++;
            }
        } else if (what && strcmp(what, "replace") == 0 && route) {
            if ((at = op_index(op, "index", n, 0, msg, sizeof(msg))) >= 0) {
                warn_dropped(warnings, base, &s[at], at);
                s[at] = (slot_t){-1, route, seq++};
            }
        } else if (what && strcmp(what, "remove") == 0) {
            if ((at = op_index(op, "index", n, 0, msg, sizeof(msg))) >= 0) {
                memmove(s + at, s + at + 1, (n - (size_t)at - 1) * sizeof(*s));
                n--;
            }
        } else {
            snprintf(msg, sizeof(msg), "expected {op = add|replace|remove, index/at, route}");
        }
        if (at < 0) {
            snprintf(err, errlen, "ops[%zu]: %s", j + 1, msg);
            free(s);
            return NULL;
        }
    }
    size_t nown = 0;
    for (size_t i = 0; i < n; i++)
        nown += s[i].src < 0 || base->conf_index[s[i].src] < 0;
    lp_rtable_t *t = alloc_table(n, nown);
    /* b gets the new routes only: the router is derived from base's, sharing what it keeps
     * (a change costs what changed, not the table). */
    lp_rbuild_t *b = lp_rbuild_new();
    long *src = malloc((n ? n : 1) * sizeof(*src));
    int rc = !t || !b || !src ? jerr(msg, sizeof(msg), "%s", "out of memory") : 0;
    for (size_t i = 0; i < n && !rc; i++) {
        src[i] = s[i].src;
        if (s[i].src < 0 && lp_rbuild_route(b) < 0) {
            rc = jerr(msg, sizeof(msg), "%s", "out of memory");
            break;
        }
        if (s[i].src >= 0) {
            int ci = base->conf_index[s[i].src];
            t->conf_index[i] = ci;
            if (ci >= 0) {
                t->routes[i] = base->routes[s[i].src];
            } else {
                lp_route_conf_t *o = &t->own[t->nown++];
                *o = *base->routes[s[i].src];
                o->prefix = o->prefix ? strdup(o->prefix) : NULL;
                o->name = o->name ? strdup(o->name) : NULL;
                t->routes[i] = o;
            }
        } else {
            lp_route_conf_t *o = &t->own[t->nown];
            rc = read_route(s[i].json, cfg, b, o, s[i].seq, msg, sizeof(msg));
            t->nown++; /* its strings are freed with the table, even on failure */
            if (!rc)
                rc = name_unique(s, n, i, base, t, o->name, msg, sizeof(msg));
            t->conf_index[i] = -1;
            t->routes[i] = o;
        }
        if (rc) {
            char m2[300];
            snprintf(m2, sizeof(m2), "routes[%zu]: %s", i + 1, msg);
            snprintf(msg, sizeof(msg), "%s", m2);
        }
    }
    if (t) {
        t->nroutes = n;
        t->next_admin = seq;
    }
    free(s);
    if (!rc && base->router)
        t->router = lp_router_derive(base->router, src, n, b, msg, sizeof(msg));
    else if (!rc)
        t->router = lp_rbuild_finish(b, msg, sizeof(msg)); /* (no routes before) */
    else
        lp_rbuild_free(b);
    if (!rc && !t->router)
        rc = -1;
    b = NULL;
    free(src);
    if (rc) {
        snprintf(err, errlen, "%s", msg);
        if (t)
            table_free(t);
        return NULL;
    }
    t->router_owned = 1;
    return t;
}

/* ---- a route as JSON; the config routes' fingerprint ---- */

static int cond_json(void *ud, int kind, int mode, const char *name, const char *value)
{
    json_t *m = ud;
    static const char *const single[] = {[LP_RK_HOST] = "host",
                                         [LP_RK_PATH] = "path",
                                         [LP_RK_PREFIX] = "prefix",
                                         [LP_RK_REGEX] = "regex",
                                         [LP_RK_SNI] = "sni"};
    if (kind == LP_RK_METHOD || kind == LP_RK_CIDR) {
        const char *k = kind == LP_RK_METHOD ? "methods" : "cidr";
        json_t *l = json_object_get(m, k);
        if (!l)
            json_object_set_new(m, k, l = json_array());
        return json_array_append_new(l, json_string(value));
    }
    if (kind == LP_RK_HEADER || kind == LP_RK_QUERY) {
        const char *k = mode == LP_RM_REGEX
                            ? (kind == LP_RK_HEADER ? "header_regex" : "query_regex")
                            : (kind == LP_RK_HEADER ? "headers" : "query");
        json_t *o = json_object_get(m, k);
        if (!o)
            json_object_set_new(m, k, o = json_object());
        return json_object_set_new(o, name,
                                   mode == LP_RM_PRESENT ? json_true() : json_string(value));
    }
    if (kind == LP_RK_PREDICATE)
        return json_object_set_new(m, "predicate", json_true());
    return json_object_set_new(m, single[kind], json_string(value));
}

json_t *lp_rtable_route_json(const lp_rtable_t *t, const lp_config_t *cfg, size_t i)
{
    const lp_route_conf_t *rc = t->routes[i];
    json_t *m = json_object();
    if (m && t->router)
        lp_router_conditions(t->router, i, cond_json, m);
    int ci = t->conf_index[i];
    return json_pack("{s:I,s:s?,s:o,s:o,s:s?,s:b}", "index", (json_int_t)i + 1, "name", rc->name,
                     "config_route", ci >= 0 ? json_integer(ci + 1) : json_null(), "match",
                     m ? m : json_null(), "upstream",
                     rc->has_upstream ? cfg->upstreams[rc->upstream].name : NULL, "strip_prefix",
                     rc->strip_prefix);
}

typedef struct {
    uint64_t h; /* FNV-1a 64 */
} fp_t;

static void fp_add(fp_t *f, const void *p, size_t n)
{
    f->h = lp_fnv1a64(f->h, p, n);
}

static void fp_str(fp_t *f, const char *s)
{
    if (s)
        fp_add(f, s, strlen(s) + 1); /* the NUL separates */
    else
        fp_add(f, "\xff", 1);
}

static int cond_fp(void *ud, int kind, int mode, const char *name, const char *value)
{
    int km[2] = {kind, mode};
    fp_add(ud, km, sizeof(km));
    fp_str(ud, name);
    fp_str(ud, value);
    return 0;
}

void lp_rtable_fingerprint(const lp_config_t *cfg, char out[LP_RTABLE_FP_LEN])
{
    fp_t f = {LP_FNV1A64_INIT};
    uint64_t n = cfg->nroutes;
    fp_add(&f, &n, sizeof(n));
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const lp_route_conf_t *rc = &cfg->routes[i];
        int v[3] = {rc->strip_prefix, rc->lua_parts, rc->has_upstream};
        fp_str(&f, rc->name);
        fp_add(&f, v, sizeof(v));
        fp_str(&f, rc->has_upstream ? cfg->upstreams[rc->upstream].name : NULL);
        if (cfg->router)
            lp_router_conditions(cfg->router, i, cond_fp, &f);
        fp_add(&f, "\n", 1);
    }
    snprintf(out, LP_RTABLE_FP_LEN, "%016llx", (unsigned long long)f.h);
}

/* ---- metrics of admin routes ---- */

int lp_rtable_meter(lp_rtable_t *t, const lp_config_t *cfg)
{
    if (!cfg->metrics.enabled || t->mblocks || !t->nown)
        return 0;
    lp_mblock_t **m = calloc(t->nown, sizeof(*m));
    if (!m)
        return -1;
    char key[512];
    for (size_t j = 0; j < t->nown; j++) {
        size_t kl = lp_metrics_key(key, sizeof(key), "route", t->own[j].name, NULL, NULL);
        if (!kl || !(m[j] = lp_metrics_block(&lp_metrics, key, kl,
                                             LP_MR_BUCKETS + lp_metrics.nbounds + 1))) {
            free(m);
            return -1;
        }
    }
    t->mblocks = m;
    return 0;
}

uint64_t *lp_rtable_cells(const lp_rtable_t *t, const lp_route_conf_t *rc, unsigned wk)
{
    if (!t || !t->mblocks || rc < t->own || rc >= t->own + t->nown)
        return NULL;
    return t->mblocks[rc - t->own]->cells[wk];
}

/* ---- the overlay file ---- */

static void overlay_path(const char *config_path, char *out, size_t n)
{
    snprintf(out, n, "%s" LP_ROUTES_OVERLAY_SUFFIX, config_path);
}

int lp_rtable_overlay(const char *config_path, const lp_config_t *cfg, json_t **ops, char *err,
                      size_t errlen)
{
    char path[4096];
    overlay_path(config_path, path, sizeof(path));
    *ops = NULL;
    if (access(path, F_OK) != 0)
        return 0;
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    json_t *o = doc ? json_object_get(doc, "ops") : NULL;
    if (!doc) {
        /* file:line:column, as an editor takes it */
        snprintf(err, errlen, "%s:%d:%d: %s", path, je.line, je.column, je.text);
        return -1;
    }
    if (!json_is_array(o)) {
        snprintf(err, errlen, "%s: expected {\"config_routes\": \"...\", \"ops\": [...]}", path);
        json_decref(doc);
        return -1;
    }
    /* Its operations name routes by position: applied to other config routes than those
     * they were made against, they would change other routes, silently. */
    const char *fp = cfg->routes_fp; /* made at load: lp_rtable_fingerprint */
    const char *had = json_string_value(json_object_get(doc, "config_routes"));
    if (!had || strcmp(had, fp) != 0) {
        snprintf(err, errlen,
                 "%s: %s; its changes name routes by position and would apply to other routes. "
                 "Put the changes you still want into the config (or make them again through "
                 "the admin API once it runs without this file), then delete %s",
                 path,
                 had ? "was made against other config routes than the config has now (the "
                       "routes were edited since)"
                     : "has no \"config_routes\" fingerprint of the config routes it was made "
                       "against",
                 path);
        json_decref(doc);
        return -1;
    }
    *ops = json_incref(o);
    json_decref(doc);
    return 0;
}

int lp_rtable_persist(const char *config_path, const lp_config_t *cfg, json_t *ops, char *err,
                      size_t errlen)
{
    json_t *all = NULL;
    if (lp_rtable_overlay(config_path, cfg, &all, err, errlen))
        return -1;
    if (!all && !(all = json_array()))
        return jerr(err, errlen, "%s", "out of memory");
    json_array_extend(all, ops);
    json_t *doc = json_pack("{s:s,s:o}", "config_routes", cfg->routes_fp, "ops", all);
    char path[4096], tmp[4200];
    overlay_path(config_path, path, sizeof(path));
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int rc = doc ? json_dump_file(doc, tmp, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : -1;
    json_decref(doc);
    if (rc || rename(tmp, path)) {
        unlink(tmp);
        return jerr(err, errlen, "cannot write %s", path);
    }
    return 0;
}
