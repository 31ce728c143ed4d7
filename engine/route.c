#include "route.h"

#include <stdio.h>
#include <string.h>
#include <lauxlib.h>
#include "log.h"
#include "rtable.h"
#include "tchar.h"

static int add(lp_rbuild_t *b, int kind, int mode, const char *name, const char *v, char *err,
               size_t errlen)
{
    return lp_rbuild_add(b, kind, mode, name, name ? strlen(name) : 0, v, v ? strlen(v) : 0, err,
                         errlen);
}

/* A map of name -> value (mode equal), true (present) or regex (regex maps). */
static int read_map(lua_State *L, lp_rbuild_t *b, const char *field, int kind, int regex, char *err,
                    size_t errlen)
{
    int rc = 0;
    lua_getfield(L, -1, field);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (!rc && lua_next(L, -2)) {
            const char *name = lua_tostring(L, -2);
            if (lua_type(L, -1) == LUA_TSTRING)
                rc = add(b, kind, regex ? LP_RM_REGEX : LP_RM_EQUAL, name, lua_tostring(L, -1), err,
                         errlen);
            else if (lua_toboolean(L, -1))
                rc = add(b, kind, LP_RM_PRESENT, name, NULL, err, errlen);
            if (rc) {
                size_t n = strlen(err);
                snprintf(err + n, errlen - n, " (%s.%s)", field, name);
            }
            lua_pop(L, 1);
        }
        if (rc)
            lua_pop(L, 1); /* the key lua_next left */
    }
    lua_pop(L, 1);
    return rc;
}

/* A string, or an array of strings, each added as kind. */
static int read_list(lua_State *L, lp_rbuild_t *b, const char *field, int kind, char *err,
                     size_t errlen)
{
    int rc = 0;
    lua_getfield(L, -1, field);
    if (lua_type(L, -1) == LUA_TSTRING)
        rc = add(b, kind, 0, NULL, lua_tostring(L, -1), err, errlen);
    else if (lua_istable(L, -1))
        for (int i = 1; !rc && i <= (int)lua_objlen(L, -1); i++) {
            lua_rawgeti(L, -1, i);
            if (lua_type(L, -1) == LUA_TSTRING)
                rc = add(b, kind, 0, NULL, lua_tostring(L, -1), err, errlen);
            lua_pop(L, 1);
        }
    lua_pop(L, 1);
    return rc;
}

int lp_route_read_match(lua_State *L, lp_rbuild_t *b, char *err, size_t errlen)
{
    static const struct {
        const char *name;
        int kind;
    } strs[] = {{"host", LP_RK_HOST},   {"prefix", LP_RK_PREFIX}, {"path", LP_RK_PATH},
                {"regex", LP_RK_REGEX}, {"sni", LP_RK_SNI},       {"methods", LP_RK_METHOD},
                {"cidr", LP_RK_CIDR}};
    static const char *const maps[] = {"headers", "query", "header_regex", "query_regex",
                                       "predicate"};
    /* Which keys the match has, from one walk over it: a route has one or two of the twelve,
     * and a lookup by name costs a string interning (100k routes: 1.2M of them). The keys
     * are then read in the fixed order below, which the conditions' order follows. */
    unsigned have = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            continue;
        const char *k = lua_tostring(L, -1);
        for (size_t i = 0; i < LP_ARRAY_LEN(strs); i++)
            if (strcmp(k, strs[i].name) == 0)
                have |= 1u << i;
        for (size_t i = 0; i < LP_ARRAY_LEN(maps); i++)
            if (strcmp(k, maps[i]) == 0)
                have |= 1u << (LP_ARRAY_LEN(strs) + i);
    }
#define HAVE(i) (have & (1u << (i)))
    for (size_t i = 0; i < LP_ARRAY_LEN(strs); i++)
        if (HAVE(i) && read_list(L, b, strs[i].name, strs[i].kind, err, errlen)) {
            size_t n = strlen(err);
            snprintf(err + n, errlen - n, " (%s)", strs[i].name);
            return -1;
        }
    size_t m = LP_ARRAY_LEN(strs);
    if ((HAVE(m) && read_map(L, b, "headers", LP_RK_HEADER, 0, err, errlen)) ||
        (HAVE(m + 2) && read_map(L, b, "header_regex", LP_RK_HEADER, 1, err, errlen)) ||
        (HAVE(m + 1) && read_map(L, b, "query", LP_RK_QUERY, 0, err, errlen)) ||
        (HAVE(m + 3) && read_map(L, b, "query_regex", LP_RK_QUERY, 1, err, errlen)))
        return -1;
    if (!HAVE(m + 4))
        return 0;
#undef HAVE
    lua_getfield(L, -1, "predicate");
    int pred = lua_isfunction(L, -1);
    lua_pop(L, 1);
    return pred ? add(b, LP_RK_PREDICATE, 0, NULL, NULL, err, errlen) : 0;
}

static lp_str_t h1_header(const void *ctx, const char *name, size_t nlen)
{
    const lp_header_t *hd = lp_h1_find(ctx, name, nlen);
    return hd ? hd->value : (lp_str_t){NULL, 0};
}

/* A query argument of the request target, percent- and '+'-decoded into buf; a value
 * longer than buf counts as absent. */
static lp_str_t h1_query(const void *ctx, const char *name, size_t nlen, char *buf, size_t cap)
{
    const lp_h1_t *h = ctx;
    const char *q = memchr(h->path.base, '?', h->path.len);
    if (!q)
        return (lp_str_t){NULL, 0};
    q++;
    lp_str_t raw =
        lp_kv_find((lp_str_t){q, (size_t)(h->path.base + h->path.len - q)}, '&', name, nlen);
    if (!raw.base)
        return raw;
    size_t n = 0;
    for (size_t i = 0; i < raw.len; i++) {
        if (n == cap)
            return (lp_str_t){NULL, 0};
        char c = raw.base[i];
        int hi, lo;
        if (c == '+')
            c = ' ';
        else if (c == '%' && i + 2 < raw.len &&
                 (hi = lp_hexval((unsigned char)raw.base[i + 1])) >= 0 &&
                 (lo = lp_hexval((unsigned char)raw.base[i + 2])) >= 0) {
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        buf[n++] = c;
    }
    return (lp_str_t){buf, n};
}

void lp_route_input(lp_route_in_t *in, const lp_h1_t *h, int family, const uint8_t *addr,
                    lp_str_t sni)
{
    memset(in, 0, sizeof(*in));
    const char *m = llhttp_method_name((llhttp_method_t)lp_h1_method(h));
    in->method = (lp_str_t){m, strlen(m)};
    in->host = h->host.base ? h->host : (lp_str_t){"", 0};
    const char *q = memchr(h->path.base, '?', h->path.len);
    in->path = (lp_str_t){h->path.base, q ? (size_t)(q - h->path.base) : h->path.len};
    in->sni = sni;
    in->family = family;
    if (family)
        memcpy(in->addr, addr, family == 6 ? 16 : 4);
    in->header = h1_header;
    in->query = h1_query;
    in->ctx = h;
}

const lp_route_conf_t *lp_route_find(const lp_config_t *cfg, const lp_route_in_t *in,
                                     lp_route_out_t *out)
{
    if (!cfg->router)
        return NULL;
    int i = lp_router_match(cfg->router, in, 0, out);
    return i < 0 ? NULL : &cfg->routes[i];
}

/* The routes of t (the config's table when NULL) as the shadow sentence names them. */
typedef struct {
    const lp_config_t *cfg; /* borrowed */
    const lp_rtable_t *t;   /* borrowed; NULL: the config's own routes */
    json_t *warnings;       /* borrowed; NULL: log only */
    const char *who;        /* borrowed: the log line's start */
} shadow_ctx_t;

static const char *route_name_at(const shadow_ctx_t *x, size_t i)
{
    const lp_route_conf_t *rc = x->t && i < x->t->nroutes      ? x->t->routes[i]
                                : !x->t && i < x->cfg->nroutes ? &x->cfg->routes[i]
                                                               : NULL;
    return rc ? rc->name : NULL;
}

static void warn_one(void *ud, size_t route, size_t by)
{
    const shadow_ctx_t *x = ud;
    char msg[600];
    lp_router_shadow_text(msg, sizeof(msg), route, route_name_at(x, route), by,
                          route_name_at(x, by));
    lp_log_warn("%s: %s", x->who, msg);
    if (x->warnings)
        json_array_append_new(x->warnings, json_string(msg));
}

size_t lp_route_warn_shadows(const lp_config_t *cfg)
{
    shadow_ctx_t x = {cfg, cfg->rtable, NULL, cfg->path ? cfg->path : "config"};
    const lp_router_t *r = cfg->rtable ? cfg->rtable->router : cfg->router;
    return r ? lp_router_shadows(r, warn_one, &x) : 0;
}

size_t lp_route_shadows_json(const lp_config_t *cfg, const lp_rtable_t *t, json_t *warnings)
{
    shadow_ctx_t x = {cfg, t, warnings, "admin: POST /routes"};
    return t->router ? lp_router_shadows(t->router, warn_one, &x) : 0;
}
