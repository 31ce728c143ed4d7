/* A YAML config file turned into a Lua table in one pass over libyaml's events
 * (lua/luaproxy/config_data.lua, docs/config-formats.md). lyaml built the table in Lua and
 * the duplicate-key check parsed the file a second time: 15 s of CPU for 100,000 routes.
 *
 * What it does, as the Lua path did: unquoted scalars by YAML 1.2's core schema (null,
 * booleans, integers in decimal, 0o octal and 0x hex, floats, .inf, .nan), anything else a
 * string; anchors and aliases (an alias is the same value, a mapping the same table);
 * merge keys (`<<: *defaults`, or a list of them: explicit keys win, then earlier merges);
 * a duplicate key in a mapping refused with its position and the first one's line; a null
 * in a mapping is an absent key, a null in a sequence an error with its key path; one
 * document only.
 *
 * luaproxy.yaml_native.load(src, null) returns the first document's value, or nil and a
 * problem: ("syntax", message, line, col), ("dup", key, line, col, first_line, key_path),
 * ("null", key_path), ("docs", count). `null` is the value a null becomes while the table
 * is built (the caller's sentinel); it never stays in a mapping. */
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "yaml_load.h"

#define MAX_DEPTH 200
#define LINE_BITS 67108864.0 /* 2^26: seen-key stamps are map serial * 2^26 + line */

/* Stack slots the loader keeps below the values it builds. */
enum { S_SRC = 1, S_NULL, S_ANCHORS, S_SEEN, S_PARSER, S_BASE = S_PARSER };

/* The parser, its current event and the open collections' anchors, freed by the userdata's
 * __gc as well when a Lua error (out of memory) leaves the loader half way: the frames live
 * on the C stack, which such an error unwinds. */
typedef struct {
    yaml_parser_t parser;
    yaml_event_t ev;
    int have_parser;             /* parser initialised */
    int have_ev;                 /* ev holds an event not deleted yet */
    char *anchor[MAX_DEPTH + 1]; /* owned: the anchor of the open collection at each depth */
} ystate_t;

typedef struct {
    int map;       /* a mapping, else a sequence */
    int tab;       /* stack slot of its table */
    int want_key;  /* mapping: the next value is a key */
    int merge;     /* mapping: the pending key is a merge key (`<<`) */
    int has_null;  /* mapping: a null value was stored (removed at its end) */
    double serial; /* mapping: stamps its keys in the seen table of its depth */
    lua_Integer n; /* sequence: items so far */
} frame_t;

typedef struct {
    lua_State *L;
    ystate_t *s; /* borrowed: the userdata on the loader's stack (anchors by depth) */
    frame_t f[MAX_DEPTH + 1];
    int depth;
    double serials;
    int docs;
    int skip; /* past the first document: counted, not built */
} yload_t;

static int ystate_gc(lua_State *L)
{
    ystate_t *s = lua_touserdata(L, 1);
    if (s->have_ev)
        yaml_event_delete(&s->ev);
    if (s->have_parser)
        yaml_parser_delete(&s->parser);
    s->have_ev = s->have_parser = 0;
    for (size_t i = 0; i <= MAX_DEPTH; i++) {
        free(s->anchor[i]);
        s->anchor[i] = NULL;
    }
    return 0;
}

/* ---- scalars ---- */

static int all_digits(const char *s, size_t n, int (*ok)(int))
{
    if (!n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!ok((unsigned char)s[i]))
            return 0;
    return 1;
}

static int is_dec(int c)
{
    return c >= '0' && c <= '9';
}
static int is_oct(int c)
{
    return c >= '0' && c <= '7';
}
static int is_hex(int c)
{
    return is_dec(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

/* [-+]?\.?D D* \.? D* [eE]? [-+]? D*  (the Lua path's float pattern) */
static int float_shape(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        i++;
    if (i < n && s[i] == '.')
        i++;
    if (i >= n || !is_dec((unsigned char)s[i]))
        return 0;
    while (i < n && is_dec((unsigned char)s[i]))
        i++;
    if (i < n && s[i] == '.')
        i++;
    while (i < n && is_dec((unsigned char)s[i]))
        i++;
    if (i < n && (s[i] == 'e' || s[i] == 'E'))
        i++;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        i++;
    while (i < n && is_dec((unsigned char)s[i]))
        i++;
    return i == n;
}

/* The whole text as a number (strtod), as Lua's tonumber would read it. */
static int whole_number(const char *s, size_t n, double *out)
{
    char buf[128];
    if (n >= sizeof(buf))
        return 0;
    memcpy(buf, s, n);
    buf[n] = 0;
    char *end;
    errno = 0;
    *out = strtod(buf, &end);
    return end != buf && *end == 0;
}

static int is_one(const char *s, size_t n, const char *const *words)
{
    for (; *words; words++)
        if (strlen(*words) == n && memcmp(*words, s, n) == 0)
            return 1;
    return 0;
}

static const char *const NULLS[] = {"~", "null", "Null", "NULL", NULL};
static const char *const TRUES[] = {"true", "True", "TRUE", NULL};
static const char *const FALSES[] = {"false", "False", "FALSE", NULL};

/* Pushes a plain scalar read by the core schema. */
static void push_core(lua_State *L, const char *s, size_t n)
{
    double d;
    if (n == 0 || is_one(s, n, NULLS)) {
        lua_pushvalue(L, S_NULL);
    } else if (is_one(s, n, TRUES)) {
        lua_pushboolean(L, 1);
    } else if (is_one(s, n, FALSES)) {
        lua_pushboolean(L, 0);
    } else if (n > 2 && s[0] == '0' && s[1] == 'o' && all_digits(s + 2, n - 2, is_oct)) {
        lua_pushnumber(L, (double)strtoull(s + 2, NULL, 8));
    } else if (n > 2 && s[0] == '0' && s[1] == 'x' && all_digits(s + 2, n - 2, is_hex)) {
        lua_pushnumber(L, (double)strtoull(s + 2, NULL, 16));
    } else if (float_shape(s, n) && whole_number(s, n, &d)) {
        lua_pushnumber(L, d); /* integers too: [-+]?D+ has the float shape */
    } else if (n == 4 &&
               (!memcmp(s, ".inf", 4) || !memcmp(s, ".Inf", 4) || !memcmp(s, ".INF", 4))) {
        lua_pushnumber(L, HUGE_VAL);
    } else if (n == 5 && !memcmp(s, "+.inf", 5)) {
        lua_pushnumber(L, HUGE_VAL);
    } else if (n == 5 &&
               (!memcmp(s, "-.inf", 5) || !memcmp(s, "-.Inf", 5) || !memcmp(s, "-.INF", 5))) {
        lua_pushnumber(L, -HUGE_VAL);
    } else if (n == 4 &&
               (!memcmp(s, ".nan", 4) || !memcmp(s, ".NaN", 4) || !memcmp(s, ".NAN", 4))) {
        lua_pushnumber(L, NAN);
    } else {
        lua_pushlstring(L, s, n);
    }
}

#define TAG "tag:yaml.org,2002:"

/* Pushes a scalar event's value. Returns 1 when it is a plain, untagged scalar (a key that
 * compares by its core-schema value, and `<<` a merge key). */
static int push_scalar(lua_State *L, const yaml_event_t *ev)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    double d;
    if (!tag) {
        if (ev->data.scalar.plain_implicit) {
            push_core(L, s, n);
            return 1;
        }
        lua_pushlstring(L, s, n);
    } else if (!strcmp(tag, TAG "null")) {
        lua_pushvalue(L, S_NULL);
    } else if (!strcmp(tag, TAG "bool") && (is_one(s, n, TRUES) || is_one(s, n, FALSES))) {
        lua_pushboolean(L, is_one(s, n, TRUES));
    } else if ((!strcmp(tag, TAG "int") || !strcmp(tag, TAG "float")) && whole_number(s, n, &d)) {
        lua_pushnumber(L, d);
    } else {
        lua_pushlstring(L, s, n);
    }
    return 0;
}

/* ---- building ---- */

/* "routes[1].match": the key path down to frame `upto` (its current key or item). */
static void push_path(yload_t *y, int upto)
{
    lua_State *L = y->L;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= upto; i++) {
        frame_t *f = &y->f[i];
        char num[48];
        if (!f->map) {
            snprintf(num, sizeof(num), "[%lld", (long long)f->n + 1);
            luaL_addstring(&b, num);
            luaL_addchar(&b, ']');
            continue;
        }
        int kt = lua_type(L, f->tab + 1);
        if (kt == LUA_TNUMBER) {
            lua_Number k = lua_tonumber(L, f->tab + 1);
            if (k == floor(k) && fabs(k) < 1e15)
                snprintf(num, sizeof(num), "[%lld]", (long long)k);
            else
                snprintf(num, sizeof(num), "[%.14g]", (double)k);
            luaL_addstring(&b, num);
            continue;
        }
        if (i > 1)
            luaL_addchar(&b, '.');
        if (kt == LUA_TSTRING) {
            size_t kl;
            const char *k = lua_tolstring(L, f->tab + 1, &kl);
            luaL_addlstring(&b, k, kl);
        } else if (kt == LUA_TBOOLEAN) {
            luaL_addstring(&b, lua_toboolean(L, f->tab + 1) ? "true" : "false");
        } else {
            luaL_addchar(&b, '?');
        }
    }
    luaL_pushresult(&b);
}

/* Merges the table at the top (a mapping, or a list of them) into mapping frame f: keys it
 * does not have yet. */
static void merge_into(lua_State *L, frame_t *f)
{
    int src = lua_gettop(L);
    if (lua_type(L, src) != LUA_TTABLE)
        return;
    lua_Integer n = (lua_Integer)lua_objlen(L, src);
    for (lua_Integer i = n ? 1 : 0; i <= n; i++) {
        int from = src;
        if (n) {
            lua_rawgeti(L, src, (int)i);
            from = lua_gettop(L);
            if (lua_type(L, from) != LUA_TTABLE) {
                lua_pop(L, 1);
                continue;
            }
        }
        lua_pushnil(L);
        while (lua_next(L, from)) {
            lua_pushvalue(L, -2);
            lua_rawget(L, f->tab);
            int absent = lua_isnil(L, -1);
            lua_pop(L, 1);
            if (absent) {
                lua_pushvalue(L, -2);
                lua_insert(L, -2);
                lua_rawset(L, f->tab);
            } else {
                lua_pop(L, 1);
            }
        }
        if (from != src)
            lua_pop(L, 1);
    }
}

/* The value at the top of the stack is complete: it goes into the open collection (or is
 * the document). Returns 0, or pushes (what, ...) and returns their count. */
static int add_value(yload_t *y, int plain, const yaml_mark_t *mark)
{
    lua_State *L = y->L;
    if (y->depth == 0)
        return 0; /* the document: left on the stack */
    frame_t *f = &y->f[y->depth];
    if (!f->map) {
        if (lua_rawequal(L, -1, S_NULL)) {
            lua_pop(L, 1);
            lua_pushnil(L);
            lua_pushliteral(L, "null");
            push_path(y, y->depth);
            return 3;
        }
        lua_rawseti(L, f->tab, (int)++f->n);
        return 0;
    }
    if (f->want_key) {
        f->want_key = 0;
        f->merge = 0;
        int kt = lua_type(L, -1);
        if (plain && kt == LUA_TSTRING && lua_objlen(L, -1) == 2 &&
            !memcmp(lua_tostring(L, -1), "<<", 2)) {
            f->merge = 1;
            return 0;
        }
        if (kt == LUA_TNUMBER && lua_tonumber(L, -1) != lua_tonumber(L, -1)) {
            lua_pushnil(L);
            lua_pushliteral(L, "syntax");
            lua_pushliteral(L, "a key may not be .nan");
            lua_pushinteger(L, (lua_Integer)mark->line + 1);
            lua_pushinteger(L, (lua_Integer)mark->column + 1);
            return 5;
        }
        if (kt == LUA_TTABLE || lua_rawequal(L, -1, S_NULL))
            return 0; /* collections, aliases to them and null are not compared */
        /* seen[depth][key] = serial * 2^26 + line of the key's last occurrence */
        lua_rawgeti(L, S_SEEN, y->depth);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_newtable(L);
            lua_pushvalue(L, -1);
            lua_rawseti(L, S_SEEN, y->depth);
        }
        lua_pushvalue(L, -2);
        lua_rawget(L, -2);
        double stamp = lua_tonumber(L, -1);
        lua_pop(L, 1);
        if (stamp > 0 && floor(stamp / LINE_BITS) == f->serial) {
            lua_pop(L, 1);
            int key = lua_gettop(L);
            lua_pushnil(L);
            lua_pushliteral(L, "dup");
            lua_pushvalue(L, key);
            lua_pushinteger(L, (lua_Integer)mark->line + 1);
            lua_pushinteger(L, (lua_Integer)mark->column + 1);
            lua_pushnumber(L, stamp - f->serial * LINE_BITS);
            push_path(y, y->depth - 1);
            return 7;
        }
        lua_pushvalue(L, -2);
        lua_pushnumber(L, f->serial * LINE_BITS + (double)(mark->line + 1));
        lua_rawset(L, -3);
        lua_pop(L, 1);
        return 0;
    }
    f->want_key = 1;
    if (f->merge) {
        merge_into(L, f);
        lua_pop(L, 2); /* the value and the `<<` key */
        return 0;
    }
    if (lua_rawequal(L, -1, S_NULL))
        f->has_null = 1;
    lua_rawset(L, f->tab);
    return 0;
}

/* A collection begins: its table is pushed, its frame opened. */
static int open_frame(yload_t *y, int map, const yaml_char_t *anchor, const yaml_mark_t *mark)
{
    lua_State *L = y->L;
    if (y->depth >= MAX_DEPTH || !lua_checkstack(L, 8)) {
        lua_pushnil(L);
        lua_pushliteral(L, "syntax");
        lua_pushliteral(L, "nested too deeply");
        lua_pushinteger(L, (lua_Integer)mark->line + 1);
        lua_pushinteger(L, (lua_Integer)mark->column + 1);
        return 5;
    }
    lua_newtable(L);
    frame_t *f = &y->f[++y->depth];
    memset(f, 0, sizeof(*f));
    f->map = map;
    f->tab = lua_gettop(L);
    f->want_key = 1;
    f->serial = ++y->serials;
    if (anchor && !(y->s->anchor[y->depth] = strdup((const char *)anchor)))
        return luaL_error(L, "yaml: out of memory");
    return 0;
}

/* A collection ends: nulls leave a mapping, its anchor is registered; it becomes a value. */
static int close_frame(yload_t *y, const yaml_mark_t *mark)
{
    lua_State *L = y->L;
    frame_t *f = &y->f[y->depth];
    if (f->map && f->has_null) {
        lua_pushnil(L);
        while (lua_next(L, f->tab)) {
            int isnull = lua_rawequal(L, -1, S_NULL);
            lua_pop(L, 1);
            if (isnull) {
                lua_pushvalue(L, -1);
                lua_pushnil(L);
                lua_rawset(L, f->tab);
            }
        }
    }
    char **anchor = &y->s->anchor[y->depth];
    if (*anchor) {
        lua_pushvalue(L, f->tab);
        lua_setfield(L, S_ANCHORS, *anchor);
        free(*anchor);
        *anchor = NULL;
    }
    y->depth--;
    return add_value(y, 0, mark);
}

/* A parse error, placed as lyaml placed it (the messages and the IPv6 hint of
 * config_data.lua were written against it): the line, and the 0-based column, where the last
 * event parsed ended (which reads as the 1-based column of the last good character: the `[`
 * of an unquoted IPv6 address). */
static int syntax(lua_State *L, const yaml_parser_t *p, const yaml_mark_t *last)
{
    lua_pushnil(L);
    lua_pushliteral(L, "syntax");
    lua_pushstring(L, p->problem ? p->problem : "cannot parse");
    lua_pushinteger(L, (lua_Integer)last->line + 1);
    lua_pushinteger(L, (lua_Integer)last->column);
    return 5;
}

static int l_load(lua_State *L)
{
    size_t len;
    const char *src = luaL_checklstring(L, 1, &len);
    luaL_checkany(L, 2);
    lua_settop(L, 2);
    lua_newtable(L); /* S_ANCHORS */
    lua_newtable(L); /* S_SEEN */
    ystate_t *s = lua_newuserdata(L, sizeof(*s));
    memset(s, 0, sizeof(*s));
    lua_newtable(L);
    lua_pushcfunction(L, ystate_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    if (!yaml_parser_initialize(&s->parser))
        return luaL_error(L, "yaml: out of memory");
    s->have_parser = 1;
    yaml_parser_set_input_string(&s->parser, (const unsigned char *)src, len);
    yload_t yl, *y = &yl; /* on the C stack: 10 KB of frames */
    memset(y, 0, sizeof(*y));
    y->L = L;
    y->s = s;
    int nret = 0, done = 0;
    yaml_mark_t last = {0, 0, 0};
    while (!done && !nret) {
        if (!yaml_parser_parse(&s->parser, &s->ev)) {
            nret = syntax(L, &s->parser, &last);
            break;
        }
        last = s->ev.end_mark;
        s->have_ev = 1;
        yaml_event_t *ev = &s->ev;
        const yaml_mark_t *mark = &ev->start_mark;
        switch (ev->type) {
        case YAML_STREAM_END_EVENT:
            done = 1;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++y->docs > 1)
                y->skip = 1;
            break;
        case YAML_SCALAR_EVENT:
            if (y->skip)
                break;
            {
                int plain = push_scalar(L, ev);
                if (ev->data.scalar.anchor) {
                    lua_pushvalue(L, -1);
                    lua_setfield(L, S_ANCHORS, (const char *)ev->data.scalar.anchor);
                }
                nret = add_value(y, plain, mark);
            }
            break;
        case YAML_ALIAS_EVENT:
            if (y->skip)
                break;
            lua_getfield(L, S_ANCHORS, (const char *)ev->data.alias.anchor);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                lua_pushnil(L);
                lua_pushliteral(L, "syntax");
                lua_pushfstring(L, "invalid reference: %s", (const char *)ev->data.alias.anchor);
                lua_pushinteger(L, (lua_Integer)mark->line + 1);
                lua_pushinteger(L, (lua_Integer)mark->column + 1);
                nret = 5;
            } else {
                nret = add_value(y, 0, mark);
            }
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            if (y->skip)
                break;
            nret = open_frame(y, ev->type == YAML_MAPPING_START_EVENT,
                              ev->type == YAML_MAPPING_START_EVENT ? ev->data.mapping_start.anchor
                                                                   : ev->data.sequence_start.anchor,
                              mark);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (y->skip)
                break;
            nret = close_frame(y, mark);
            break;
        default:
            break;
        }
        yaml_event_delete(&s->ev);
        s->have_ev = 0;
    }
    for (int i = 1; i <= y->depth; i++) {
        free(s->anchor[i]);
        s->anchor[i] = NULL;
    }
    yaml_parser_delete(&s->parser);
    s->have_parser = 0;
    if (nret)
        return nret;
    if (y->docs != 1) {
        lua_pushnil(L);
        lua_pushliteral(L, "docs");
        lua_pushinteger(L, y->docs);
        return 3;
    }
    /* The document is the first value above S_PARSER (a document always has one node). */
    if (lua_gettop(L) <= S_PARSER)
        lua_pushvalue(L, S_NULL);
    else
        lua_settop(L, S_PARSER + 1);
    return 1;
}

int luaopen_luaproxy_yaml_native(lua_State *L)
{
    lua_newtable(L);
    lua_pushcfunction(L, l_load);
    lua_setfield(L, -2, "load");
    return 1;
}
