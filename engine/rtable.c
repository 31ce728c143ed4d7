#include "rtable.h"

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
    for (size_t i = 0; i < t->nown; i++)
        free(t->own[i].prefix);
    free(t->own);
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
        } else if (keys[i].list && json_is_array(v)) {
            size_t j;
            json_t *x;
            json_array_foreach(v, j, x)
            {
                if (!json_is_string(x))
                    return jerr(err, errlen, "match.%s: expected strings", k);
                if ((rc = add_str(b, keys[i].kind, 0, NULL, x, err, errlen)))
                    return rc;
            }
        } else if (json_is_string(v)) {
            rc = add_str(b, keys[i].kind, 0, NULL, v, err, errlen);
        } else {
            return jerr(err, errlen, "match.%s: expected a string", k);
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* A JSON route into b (conditions) and rc (settings). */
static int read_route(json_t *r, const lp_config_t *cfg, lp_rbuild_t *b, lp_route_conf_t *rc,
                      char *err, size_t errlen)
{
    if (!json_is_object(r))
        return jerr(err, errlen, "%s", "route: expected an object");
    const char *k;
    json_t *v;
    json_object_foreach(r, k, v)
    {
        if (strcmp(k, "match") && strcmp(k, "upstream") && strcmp(k, "strip_prefix"))
            return jerr(err, errlen,
                        "route.%s: unknown key (an admin route has match, upstream and "
                        "strip_prefix; plugins and handlers come with the config)",
                        k);
    }
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
    memset(rc, 0, sizeof(*rc));
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
} slot_t;

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

lp_rtable_t *lp_rtable_apply(const lp_rtable_t *base, const lp_config_t *cfg, json_t *ops,
                             char *err, size_t errlen)
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
        s[i] = (slot_t){(long)i, NULL};
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
                s[at] = (slot_t){-1, route};
                n++;
            }
        } else if (what && strcmp(what, "replace") == 0 && route) {
            if ((at = op_index(op, "index", n, 0, msg, sizeof(msg))) >= 0)
                s[at] = (slot_t){-1, route};
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
    lp_rbuild_t *b = lp_rbuild_new();
    int rc = !t || !b ? jerr(msg, sizeof(msg), "%s", "out of memory") : 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if (lp_rbuild_route(b) < 0) {
            rc = jerr(msg, sizeof(msg), "%s", "out of memory");
            break;
        }
        if (s[i].src >= 0) {
            rc = lp_rbuild_copy(b, base->router, (size_t)s[i].src, msg, sizeof(msg));
            int ci = base->conf_index[s[i].src];
            t->conf_index[i] = ci;
            if (ci >= 0) {
                t->routes[i] = base->routes[s[i].src];
            } else {
                lp_route_conf_t *o = &t->own[t->nown++];
                *o = *base->routes[s[i].src];
                o->prefix = o->prefix ? strdup(o->prefix) : NULL;
                t->routes[i] = o;
            }
        } else {
            lp_route_conf_t *o = &t->own[t->nown];
            rc = read_route(s[i].json, cfg, b, o, msg, sizeof(msg));
            t->nown++; /* its prefix is freed with the table, even on failure */
            t->conf_index[i] = -1;
            t->routes[i] = o;
        }
        if (rc) {
            char m2[300];
            snprintf(m2, sizeof(m2), "routes[%zu]: %s", i + 1, msg);
            snprintf(msg, sizeof(msg), "%s", m2);
        }
    }
    t ? (void)(t->nroutes = n) : (void)0;
    free(s);
    if (!rc && !(t->router = lp_rbuild_finish(b, msg, sizeof(msg))))
        rc = -1;
    else if (rc)
        lp_rbuild_free(b);
    b = NULL;
    if (rc) {
        snprintf(err, errlen, "%s", msg);
        if (t)
            table_free(t);
        return NULL;
    }
    t->router_owned = 1;
    return t;
}

/* ---- the overlay file ---- */

static void overlay_path(const char *config_path, char *out, size_t n)
{
    snprintf(out, n, "%s" LP_ROUTES_OVERLAY_SUFFIX, config_path);
}

int lp_rtable_overlay(const char *config_path, json_t **ops, char *err, size_t errlen)
{
    char path[4096];
    overlay_path(config_path, path, sizeof(path));
    *ops = NULL;
    if (access(path, F_OK) != 0)
        return 0;
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    json_t *o = doc ? json_object_get(doc, "ops") : NULL;
    if (!json_is_array(o)) {
        snprintf(err, errlen, "%s: %s", path, doc ? "expected {\"ops\": [...]}" : je.text);
        json_decref(doc);
        return -1;
    }
    *ops = json_incref(o);
    json_decref(doc);
    return 0;
}

int lp_rtable_persist(const char *config_path, json_t *ops, char *err, size_t errlen)
{
    json_t *all = NULL;
    if (lp_rtable_overlay(config_path, &all, err, errlen))
        return -1;
    if (!all && !(all = json_array()))
        return jerr(err, errlen, "%s", "out of memory");
    json_array_extend(all, ops);
    json_t *doc = json_pack("{s:o}", "ops", all);
    char path[4096], tmp[4200];
    overlay_path(config_path, path, sizeof(path));
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int rc = doc ? json_dump_file(doc, tmp, JSON_INDENT(1)) : -1;
    json_decref(doc);
    if (rc || rename(tmp, path)) {
        unlink(tmp);
        return jerr(err, errlen, "cannot write %s", path);
    }
    return 0;
}
