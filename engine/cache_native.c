/* The cache plugin's common miss, run by the engine (cache_native.h). Every decision stays
 * the plugin's (plugins/cache.lua, lua/luaproxy/cache/policy.lua): the engine only replays
 * one the plugin made before, per worker VM and route.
 *
 * Request phase: a GET carrying none of the fields the policy reads (Cache-Control, Pragma,
 * the conditionals, Range, If-Range, Authorization, Content-Length, Transfer-Encoding) has
 * the policy's default request directives, the default key, and no decision to make before
 * its lookup: on a miss whose fill lock it takes, what the plugin does is count the miss and
 * let it go upstream, which the engine does here. Anything else (an entry, a lock another
 * request holds) runs the plugin, which gets the entry looked up here as its own first
 * lookup (no second one).
 *
 * Response phase: for a response with none of Pragma, Expires, Age, Vary, Set-Cookie,
 * Connection and Cache-Status, and at most one Cache-Control line, the policy's storability,
 * lifetime, revalidation flags and stale windows depend on its status, on whether it has a
 * validator (ETag, Last-Modified), on that Cache-Control value, and on the route's options
 * only; its meta adds the Date (parsed by the plugin), ETag and
 * Last-Modified values and the request and response times. The plugin, when it ran such a
 * response of a request started here, told the engine what it decided
 * (lp_ffi_cache_native_learn: storable or not, TTL and its source, the revalidation flags,
 * the stale windows; a decision storing fewer than all fields is not kept) and which number
 * the Date it saw parses to. A later response of that status, shape and Cache-Control value,
 * with that Date (or none), is stored here as the plugin would store it: the same meta lines
 * (the plugin's encode_meta), the same age (RFC 9111 §4.2.3 with no Age field: the larger
 * of the apparent age and the response delay), the same keep time and Cache-Status. Any other
 * response runs the plugin (which learns from it). A change to what the policy reads must
 * change SHAPE_OTHER below. */
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cache_fields.h"
#include "cache_key.h"
#include "cache_native.h"
#include "cache_req.h"
#include "cache_room.h"
#include "cache_store.h"
#include "cache_store_int.h"
#include "http1.h"
#include "lua_api.h"
#include "lua_vm_int.h"
#include "worker.h"

#define F_BIT(i)        (1 << (i)) /* lp_ffi_cache_fields' bit of field i (LP_CF_*) */
#define F_CACHE_CONTROL F_BIT(LP_CF_CACHE_CONTROL)
#define F_PRAGMA        F_BIT(LP_CF_PRAGMA)
#define F_EXPIRES       F_BIT(LP_CF_EXPIRES)
#define F_DATE          F_BIT(LP_CF_DATE)
#define F_AGE           F_BIT(LP_CF_AGE)
#define F_ETAG          F_BIT(LP_CF_ETAG)
#define F_LAST_MODIFIED F_BIT(LP_CF_LAST_MODIFIED)
#define F_VARY          F_BIT(LP_CF_VARY)
#define F_SET_COOKIE    F_BIT(LP_CF_SET_COOKIE)
#define F_CONNECTION    F_BIT(LP_CF_CONNECTION)
#define F_CACHE_STATUS  F_BIT(LP_CF_CACHE_STATUS)
/* A response with any of these takes the plugin's path every time. */
#define SHAPE_OTHER                                                                                \
    (F_PRAGMA | F_EXPIRES | F_AGE | F_VARY | F_SET_COOKIE | F_CONNECTION | F_CACHE_STATUS)

/* One decision of the plugin, for responses of a status and shape. */
#define LINES_ROOM 176
#define TAIL_ROOM  96

typedef struct {
    int status;         /* 0: unused */
    uint8_t validators; /* with an ETag or a Last-Modified */
    uint8_t storable;
    uint8_t must_revalidate, no_cache; /* meta's flags */
    double ttl;                        /* the freshness lifetime (meta.ttl) */
    double stale;                      /* keep_for's stale window (seconds kept beyond freshness) */
    double swr, sie;                   /* meta.stale_while_revalidate, _if_error; < 0: none */
    char source[24];                   /* meta.ttl_source */
    size_t source_len;
    char cc[64]; /* the response's Cache-Control value (one line) */
    size_t cc_len;
    uint8_t has_cc;
    /* The meta's lines that depend on the decision only, written when it is learned (a miss
     * then copies them): `lines` from the status to the flags, `tail` the stale windows.
     * rendered 0: they did not fit, or a number is not one num() writes in decimal: such a
     * response is left to the plugin. Both in `text`, `tail` right after `lines` (a
     * response without date, etag or last_modified copies them as one piece). */
    char text[LINES_ROOM + TAIL_ROOM];
    uint8_t lines_len, tail_len, rendered;
    /* The last Cache-Status line written for it (lp__cache_miss_status_line), and what it
     * was written for: whether stored and floor(ttl) (the TTL left moves once a second). */
    char status_line[LP_CACHE_MISS_LINE];
    uint8_t status_len, status_stored;
    double status_floor;
} learned_t;

#define NLEARNED 8

struct lp_cache_native_s {
    lp_cache_zone_t *zone; /* borrowed: the generation's config holds the zone */
    double lock_timeout;   /* seconds; < 0: no coalescing (the plugin's lock = false) */
    /* Both tables are made on the first decision or hit the plugin reports: a route no
     * request reaches (thousands of them, per worker VM) costs only this struct. */
    learned_t *learned; /* owned: NLEARNED slots, NULL until the first decision */
    learned_t *mru;     /* borrowed from `learned`: the slot learned_find found last, or NULL */
    unsigned next;      /* the slot a new decision replaces when all are used */
    char date[40];      /* the last Date value the plugin parsed */
    size_t date_len;    /* 0: none yet */
    double date_value;  /* what it parsed to */
    uint8_t date_valid; /* 0: it did not parse (the meta has no date) */
};
/* What every cache-only route costs a worker VM before its first request. */
_Static_assert(sizeof(lp_cache_native_t) <= 128, "a route's native cache stays small until used");

/* floor() without its call (libm's, on baseline x86-64, costs more than the rest of a
 * number's handling here): the numbers floored below are finite and far below 2^52 (times,
 * ages and TTLs); any other goes to floor(). */
static inline double floor_of(double x)
{
    if (!(x > -4503599627370496.0 && x < 4503599627370496.0))
        return floor(x);
    double t = (double)(int64_t)x;
    return t > x ? t - 1 : t;
}

lp_cache_native_t **lp_cache_native_load(lua_State *L, int state_idx, size_t nroutes)
{
    lp_cache_native_t **all = NULL;
    lua_getfield(L, state_idx, "routes");
    for (size_t i = 0; lua_istable(L, -1) && i < nroutes; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        if (lua_istable(L, -1)) {
            lua_getfield(L, -1, "native");
            if (lua_istable(L, -1)) {
                lua_getfield(L, -1, "zone");
                lua_getfield(L, -2, "lock_timeout");
                size_t nlen = 0;
                const char *name = lua_tolstring(L, -2, &nlen);
                lp_cache_zone_t *z = name ? lp_cache_zone_find(name, nlen) : NULL;
                if (z && !all)
                    all = calloc(nroutes, sizeof(*all));
                if (z && all)
                    all[i] = calloc(1, sizeof(*all[i]));
                if (z && all && all[i]) {
                    all[i]->zone = z;
                    all[i]->lock_timeout = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : -1;
                }
                lua_pop(L, 2);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return all;
}

void lp_cache_native_free(lp_cache_native_t **all, size_t nroutes)
{
    if (!all)
        return;
    for (size_t i = 0; i < nroutes; i++) {
        if (all[i])
            free(all[i]->learned);
        free(all[i]);
    }
    free(all);
}

static lp_cache_native_t *native_of(const lp_req_t *r)
{
    const lp_lua_t *vm = r->g ? r->g->lua : NULL;
    if (!vm || !vm->cache_native || r->route_index < 0 || (size_t)r->route_index >= vm->nroutes)
        return NULL;
    return vm->cache_native[r->route_index];
}

/* Fields a hit never repeats as stored: plugins/cache.lua's NOT_SERVED (keep them alike). */
static int not_served(lp_str_t name)
{
    return LP_STR_IEQ(name, "content-length") || LP_STR_IEQ(name, "transfer-encoding") ||
           LP_STR_IEQ(name, "age") || LP_STR_IEQ(name, "cache-status") ||
           LP_STR_IEQ(name, "connection") || LP_STR_IEQ(name, "keep-alive");
}

/* A decimal number as put_uint writes it (digits only, below 2^53); -1 for anything else. */
static double uint_of(lp_str_t v)
{
    if (!v.len || v.len > 15)
        return -1;
    uint64_t x = 0;
    for (size_t i = 0; i < v.len; i++) {
        if (v.base[i] < '0' || v.base[i] > '9')
            return -1;
        x = x * 10 + (uint64_t)(v.base[i] - '0');
    }
    return (double)x;
}

static double time_at(const char *p)
{
    uint64_t u;
    memcpy(&u, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    u = __builtin_bswap64(u);
#endif
    double t;
    memcpy(&t, &u, 8);
    return t;
}

#define PLAIN_HEAD_ROOM   4096
#define PLAIN_HEAD_FIELDS 256

/* The name a hit serves for every stored line of names[first]'s name, as the plugin's decode
 * keeps it (its `case` map): the last of their spellings with a capital; {NULL, 0} when none
 * has one (the lower-case name is served). */
static lp_str_t served_case(const lp_str_t *names, size_t count, size_t first)
{
    lp_str_t out = {NULL, 0};
    for (size_t j = first; j < count; j++) {
        if (names[j].len != names[first].len ||
            !lp_str_ieq(names[j], names[first].base, names[first].len))
            continue;
        for (size_t i = 0; i < names[j].len; i++)
            if (names[j].base[i] >= 'A' && names[j].base[i] <= 'Z') {
                out = names[j];
                break;
            }
    }
    return out;
}

/* The memo of a head the engine rendered (lp_cache_entry_t.plain_head), published on e: what
 * the plugin's first plain hit on it would teach (lp_ffi_cache_native_hit), read from the
 * head, so that entry's first hit is the engine's too. Its status and TTL lines, its two
 * times and the Date it parsed give the age at the response time as policy.current_age
 * does; its fields as stored, less NOT_SERVED, are the served lines, grouped and cased as
 * the plugin's served_list has them. NULL (the plugin serves it, and this head is not read
 * again) when the head is not one, holds anything the engine does not write, is larger than
 * PLAIN_HEAD_ROOM, or the entry is no longer fresh at `now`. */
static const lp_cache_served_t *learn_plain(lp_cache_native_t *n, lp_cache_entry_t *e, double now)
{
    char head[PLAIN_HEAD_ROOM];
    uint64_t serial;
    size_t hlen = lp_cache_entry_plain_head(n->zone, e, head, sizeof head, &serial);
    if (!hlen)
        return NULL;
    lp_cache_served_t *m = NULL;
    lp_str_t names[PLAIN_HEAD_FIELDS], values[PLAIN_HEAD_FIELDS];
    size_t count = 0;
    if (hlen > sizeof head || hlen < LP_CACHE_HEAD_PREFIX ||
        memcmp(head, LP_CACHE_HEAD_MAGIC, 2) != 0 || head[LP_CACHE_HEAD_PREFIX - 1] != '\n')
        goto refuse;
    double t_req = time_at(head + 2), t_resp = time_at(head + 10);
    double status = -1, ttl = -1, date = -1, age_value = 0;
    const char *p = head + LP_CACHE_HEAD_PREFIX, *end = head + hlen;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *tab = nl ? memchr(p, '\t', (size_t)(nl - p)) : NULL;
        if (!tab || tab - p < 3 || p[1] != ' ')
            goto refuse;
        lp_str_t name = {p + 2, (size_t)(tab - p - 2)}, v = {tab + 1, (size_t)(nl - tab - 1)};
        if (p[0] == 'h') {
            if (count == PLAIN_HEAD_FIELDS)
                goto refuse;
            names[count] = name;
            values[count++] = v;
        } else if (p[0] == 'n') {
            if (LP_STR_IEQ(name, "status"))
                status = uint_of(v);
            else if (LP_STR_IEQ(name, "ttl"))
                ttl = uint_of(v);
            else if (LP_STR_IEQ(name, "date"))
                date = uint_of(v);
            else if (LP_STR_IEQ(name, "age_value") && (age_value = uint_of(v)) < 0)
                goto refuse;
        } else if (p[0] == 'b') {
            if (LP_STR_IEQ(name, "no_cache") && !LP_STR_IEQ(v, "0"))
                goto refuse; /* every hit revalidates: policy.fresh_plain is never true */
        } else if (p[0] != 's') {
            goto refuse;
        }
        p = nl + 1;
    }
    if (status < 200 || status > 999 || ttl < 0 || !(t_resp > 0) || !(t_req <= t_resp))
        goto refuse;
    double apparent = date >= 0 && t_resp > date ? t_resp - date : 0;
    double corrected = age_value + (t_resp - t_req);
    double age0 = apparent > corrected ? apparent : corrected;
    if (!(ttl - (age0 + (now > t_resp ? now - t_resp : 0)) > 0))
        goto refuse; /* stale already: the plugin's to revalidate (and a new head to come) */
    /* "h NAME\tVALUE\n" and "NAME: VALUE\r\n" have the same length: the head bounds them. */
    m = malloc(sizeof(*m) + hlen);
    if (!m)
        return NULL;
    char *w = m->wire;
    uint8_t done[PLAIN_HEAD_FIELDS] = {0};
    for (size_t i = 0; i < count; i++) {
        if (done[i] || not_served(names[i]))
            continue;
        lp_str_t out = served_case(names, count, i);
        for (size_t j = i; j < count; j++) {
            if (done[j] || names[j].len != names[i].len ||
                !lp_str_ieq(names[j], names[i].base, names[i].len))
                continue;
            done[j] = 1;
            for (size_t k = 0; k < names[i].len; k++) /* the lower-case name, or `out` */
                w[k] =
                    out.base
                        ? out.base[k]
                        : (char)(names[i].base[k] |
                                 (names[i].base[k] >= 'A' && names[i].base[k] <= 'Z' ? 0x20 : 0));
            w += names[i].len;
            *w++ = ':';
            *w++ = ' ';
            memcpy(w, values[j].base, values[j].len);
            w += values[j].len;
            *w++ = '\r';
            *w++ = '\n';
        }
    }
    size_t wlen = (size_t)(w - m->wire);
    if (lp__wire_valid(m->wire, wlen))
        goto refuse;
    lp_cache_served_t *fit = realloc(m, sizeof(*m) + (wlen ? wlen : 1));
    if (fit)
        m = fit;
    *m = (lp_cache_served_t){NULL, serial, (int)status, age0, t_resp, ttl, wlen};
    if (lp_cache_entry_served_set(n->zone, e, m))
        /* refused (memos others may read fill the list): not read again for each hit */
        __atomic_store_n(&e->plain_head, 0, __ATOMIC_RELAXED);
    return lp_cache_entry_served(e);
refuse:
    /* Not again for this head: the plugin's first hit teaches it (a new head clears it too). */
    __atomic_store_n(&e->plain_head, 0, __ATOMIC_RELAXED);
    free(m);
    return NULL;
}

/* A plain hit on e served as the plugin served it before: its serve() with policy.current_age
 * and age_header, and the Cache-Status of a hit (`luaproxy; hit; ttl=N`). 0 when answered. */
static int native_hit(lp_req_t *r, lp_cache_native_t *n, lp_cache_entry_t *e, double now)
{
    const lp_cache_served_t *h = lp_cache_entry_served(e);
    uint64_t serial = lp_cache_entry_serial(e);
    if ((!h || h->serial != serial) && __atomic_load_n(&e->plain_head, __ATOMIC_RELAXED))
        h = learn_plain(n, e, now); /* the first hit on a head the engine stored */
    if (!h || h->serial != serial || !lp_cache_entry_resident(e))
        return 1;
    double age = h->age0 + (now > h->response_time ? now - h->response_time : 0);
    double left = h->ttl - age;
    if (!(left > 0) || left > 1e15)
        return 1; /* stale (or absurd): the plugin decides */
    if (age > 2147483648.0)
        age = 2147483648.0;
    /* shown as serve() does: the lifetime less Age's whole seconds */
    left = h->ttl - floor_of(age);
    char more[96], *p = more;
    memcpy(p, "Age: ", 5);
    p += 5;
    p += lp_u64_to_str((uint64_t)(age > 0 ? floor_of(age) : 0), 10, p);
    static const char cs[] = "\r\nCache-Status: luaproxy; hit; ttl=";
    memcpy(p, cs, sizeof cs - 1);
    p += sizeof cs - 1;
    p += lp_u64_to_str((uint64_t)floor_of(left), 10, p);
    *p++ = '\r';
    *p++ = '\n';
    lp_req_cache_t *rc = &r->cache;
    rc->hit = e;
    rc->hit_zone = n->zone;
    if (lp__cache_answer(r, h->status, h->wire, h->wire_len, 1, more, (size_t)(p - more), -1, -1)) {
        rc->hit = NULL; /* the caller still holds e: the plugin answers */
        rc->hit_zone = NULL;
        lp__resp_begin(r);
        return 1;
    }
    lp__cache_count(n->zone, LP_CACHE_C_HIT);
    lp__cache_count(n->zone, LP_CACHE_C_NATIVE_HIT);
    r->flags |= LP_RF_NO_LUA_RESP; /* the plugin has nothing to do for its own answer */
    return 0;
}

int lp_cache_native_request(lp_req_t *r)
{
    lp_cache_native_t *n = native_of(r);
    lp_req_cache_t *rc = &r->cache;
    if (!n || r->method != HTTP_GET || (r->flags & LP_RF_HEAD) || rc->fill || rc->hit ||
        fields_mask(r, 0) != 0)
        return 1;
    /* The key on the stack (inline: no call), or the thread's scratch when it is long. */
    char kbuf[512];
    lp_str_t key = {kbuf, lp__cache_key_len(r)};
    if (key.len <= sizeof kbuf)
        lp__cache_key_put(r, kbuf);
    else if (lp_ffi_cache_key(r, &key))
        return 1;
    /* The loop's time (read once per turn, as nginx's cached time): no clock read here. */
    double now = lp_worker_wall(r->w, uv_now(&r->w->loop) * 1000000u);
    /* The lookup and, on a miss, the key's fill lock (when the plugin coalesces) at once.
     * rc->fill is NULL here (a request holding one returned above): the call sets it. */
    int busy;
    lp_cache_entry_t *e =
        lp_cache_get_or_lock(n->zone, key.base, key.len, now, n->lock_timeout, &rc->fill, &busy);
    if (e && !native_hit(r, n, e, now))
        return 2;
    if (e) {
        rc->hit = e; /* the plugin's first lookup (lp_ffi_cache_get) */
        rc->hit_zone = n->zone;
        rc->native_kept = 1;
        return 1;
    }
    if (n->lock_timeout >= 0 && !rc->fill)
        return 1; /* another request fills it (or no memory): the plugin waits for it */
    lp__cache_count(n->zone, LP_CACHE_C_MISS);
    lp__cache_count(n->zone, LP_CACHE_C_NATIVE_MISS);
    rc->native = n;
    rc->native_t0 = now;
    return 0;
}

static inline __attribute__((always_inline)) int learned_is(const learned_t *d, int status,
                                                            int validators, const lp_str_t *cc)
{
    return d->status == status && d->validators == validators && d->has_cc == (cc != NULL) &&
           (!cc || (d->cc_len == cc->len && memcmp(d->cc, cc->base, cc->len) == 0));
}

static inline __attribute__((always_inline)) learned_t *
learned_find(lp_cache_native_t *n, int status, int validators, const lp_str_t *cc)
{
    /* The last one found first: most responses of a route take one decision. */
    if (n->mru && learned_is(n->mru, status, validators, cc))
        return n->mru;
    for (int i = 0; n->learned && i < NLEARNED; i++) {
        learned_t *d = &n->learned[i];
        if (learned_is(d, status, validators, cc))
            return n->mru = d;
    }
    return NULL;
}

/* The meta's lines are made without printf (its floating-point conversions cost more than
 * the rest of a miss): the same text as the plugin's encode_meta, numbers as its num()
 * writes them (integral ones in decimal); the two times are the head's binary prefix
 * (cache_room.h: LP_CACHE_HEAD_MAGIC). */
typedef struct {
    char *p, *end;
    int over; /* something did not fit */
} out_t;

static void put(out_t *o, const char *s, size_t n)
{
    if ((size_t)(o->end - o->p) < n) {
        o->over = 1;
        return;
    }
    memcpy(o->p, s, n);
    o->p += n;
}
#define PUT_LIT(o, s) put(o, s, sizeof(s) - 1)

/* A number >= 0 that is integral and below 2^53, as the plugin's num(); others: 1 (the
 * caller leaves such a response to the plugin). */
static int put_uint(out_t *o, double v)
{
    if (!(v >= 0 && v < 9007199254740992.0 && v == floor_of(v)))
        return 1;
    char b[24];
    put(o, b, lp_u64_to_str((uint64_t)v, 10, b));
    return 0;
}

/* A piece of the meta into buf (room bytes): its length, or -1 (did not fit, or a bad
 * number). */
typedef int (*piece_fn)(out_t *o, const learned_t *d);

static int piece(char *buf, size_t room, uint8_t *len, piece_fn fn, const learned_t *d)
{
    out_t o = {buf, buf + room, 0};
    int bad = fn(&o, d);
    if (bad || o.over || (size_t)(o.p - buf) > 255)
        return -1;
    *len = (uint8_t)(o.p - buf);
    return 0;
}

/* The plugin's encode_meta, in its order: the prefix with both times, lines, then the
 * response's date, etag and last_modified, then tail. */
static int piece_lines(out_t *o, const learned_t *d)
{
    char sb[8];
    PUT_LIT(o, "n status\t");
    put(o, sb, lp_u64_to_str((uint64_t)d->status, 10, sb));
    PUT_LIT(o, "\nn age_value\t0\nn ttl\t");
    int bad = put_uint(o, d->ttl);
    PUT_LIT(o, "\ns ttl_source\t");
    put(o, d->source, d->source_len);
    PUT_LIT(o, "\nb must_revalidate\t");
    put(o, d->must_revalidate ? "1" : "0", 1);
    PUT_LIT(o, "\nb no_cache\t");
    put(o, d->no_cache ? "1" : "0", 1);
    PUT_LIT(o, "\n");
    return bad;
}

static int piece_tail(out_t *o, const learned_t *d)
{
    int bad = 0;
    if (d->swr >= 0) {
        PUT_LIT(o, "n stale_while_revalidate\t");
        bad |= put_uint(o, d->swr);
        PUT_LIT(o, "\n");
    }
    if (d->sie >= 0) {
        PUT_LIT(o, "n stale_if_error\t");
        bad |= put_uint(o, d->sie);
        PUT_LIT(o, "\n");
    }
    return bad;
}

static void render(learned_t *d)
{
    d->rendered = piece(d->text, LINES_ROOM, &d->lines_len, piece_lines, d) == 0 &&
                  piece(d->text + d->lines_len, TAIL_ROOM, &d->tail_len, piece_tail, d) == 0;
}

/* The Cache-Status of a miss the engine decided on (stored or not): 0 whatever it returns.
 * The decision is applied: running the plugin now would apply it a second time (a second
 * fill, a second Cache-Status). Without room for the line (a full head arena), the response
 * goes without it: the answer and the entry are the plugin's, only that line is missing. */
static inline __attribute__((always_inline)) int miss_status(lp_req_t *r, learned_t *d, int stored,
                                                             double ttl)
{
    double f = stored ? floor_of(ttl) : 0;
    if (!d->status_len || d->status_stored != stored || !(d->status_floor == f)) {
        size_t len = lp__cache_miss_status_line(d->status_line, d->status, stored, ttl);
        d->status_len = (uint8_t)len; /* 0: out of range (and written again next time) */
        d->status_stored = (uint8_t)stored;
        d->status_floor = f;
    }
    int rc = d->status_len
                 ? lp__resp_add_line(r, d->status_line, d->status_len, LP_CACHE_STATUS_NAME_LEN)
                 : LP_FFI_EINVAL;
    if (rc)
        lp_cache_room_no_status(rc);
    return 0;
}

int lp_cache_native_response(lp_req_t *r)
{
    lp_req_cache_t *rc = &r->cache;
    lp_cache_native_t *n = rc->native;
    int status = r->resp.status;
    /* Only an upstream's own answer: the plugin tells a failed try's 502/504 apart. */
    if (!n || (r->flags & (LP_RF_LOCAL | LP_RF_HEAD)) || !r->upstream || r->try.target < 0 ||
        status == 502 || status == 504 || !r->t_upstream_head)
        return 1;
    /* One walk of the response's fields: its shape, the values read below, and the size of
     * their lines in the entry. */
    lp_str_t first[LP_CF_N];
    int ncc;
    lp_cache_fields_size_t size;
    int mask = fields_walk(r, 1, first, &ncc, &size);
    if ((mask & SHAPE_OTHER) || ncc > 1)
        return 1; /* several Cache-Control lines: the plugin's path (their parse is not kept) */
    learned_t *d = learned_find(n, status, (mask & (F_ETAG | F_LAST_MODIFIED)) != 0,
                                ncc ? &first[LP_CF_CACHE_CONTROL] : NULL);
    if (!d)
        return 1;
    if (!d->storable)
        return miss_status(r, d, 0, 0);
    /* Over max_object_size by its Content-Length: the plugin's path, whose Cache-Status says
     * why it is not stored. */
    const lp_h1_t *h1 = r->try.peer ? &r->try.peer->h1 : NULL;
    if (h1 && (h1->flags & LP_H1F_LENGTH) && h1->content_length > lp__cache_max_object(n->zone))
        return 1;
    const lp_str_t *date = mask & F_DATE ? &first[LP_CF_DATE] : NULL;
    if (date && (date->len != n->date_len || memcmp(date->base, n->date, date->len) != 0))
        return 1; /* a Date the plugin has not parsed yet */
    lp_str_t etag = mask & F_ETAG ? first[LP_CF_ETAG] : (lp_str_t){0};
    lp_str_t lm = mask & F_LAST_MODIFIED ? first[LP_CF_LAST_MODIFIED] : (lp_str_t){0};
    int dated = date && n->date_valid;
    /* When its head arrived (read then), as the plugin's proxy.now() in its response phase. */
    double now = lp_worker_wall(r->w, r->t_upstream_head), t0 = rc->native_t0;
    /* RFC 9111 §4.2.3 at the response time, as the plugin's policy.current_age: no Age field
     * (age_value 0), so the corrected age is the response delay. */
    double apparent = dated && now > n->date_value ? now - n->date_value : 0;
    double delay = now > t0 ? now - t0 : 0;
    double age = apparent > delay ? apparent : delay;
    double left = d->ttl - age;
    double keep = (left > 0 ? left : 0) + d->stale + 1;
    /* The plugin's encode_meta, in pieces written straight into the entry's head: the ones
     * the decision rendered, the two times, and the response's date, etag, last_modified. */
    if (!d->rendered)
        return 1;
    lp_str_t meta[12];
    size_t nm = 0;
    char prefix[LP_CACHE_HEAD_PREFIX];
    lp_cache_head_prefix(prefix, t0, now);
    meta[nm++] = (lp_str_t){prefix, sizeof prefix};
    char dline[8 + 24];
    if (!dated && !etag.base && !lm.base) {
        meta[nm++] = (lp_str_t){d->text, (size_t)d->lines_len + d->tail_len};
    } else {
        meta[nm++] = (lp_str_t){d->text, d->lines_len};
        if (dated) {
            out_t o = {dline, dline + sizeof dline, 0};
            PUT_LIT(&o, "n date\t");
            if (put_uint(&o, n->date_value))
                return 1;
            PUT_LIT(&o, "\n");
            meta[nm++] = (lp_str_t){dline, (size_t)(o.p - dline)};
        }
        if (etag.base) {
            meta[nm++] = LP_STR("s etag\t");
            meta[nm++] = etag;
            meta[nm++] = LP_STR("\n");
        }
        if (lm.base) {
            meta[nm++] = LP_STR("s last_modified\t");
            meta[nm++] = lm;
            meta[nm++] = LP_STR("\n");
        }
        meta[nm++] = (lp_str_t){d->text + d->lines_len, d->tail_len};
    }
    /* The key, as the plugin's default_key: the one the request phase locked (made there),
     * else made again (in the thread's scratch, which nothing else uses meanwhile). */
    lp_str_t k;
    if (!rc->fill || lp__cache_fill_key(rc->fill, &k.base, &k.len)) {
        if (lp_ffi_cache_key(r, &k))
            return 1;
    }
    int stored = lp__cache_store_fields(r, n->zone, k.base, k.len, "", 0, meta, nm, 0, now + keep,
                                        &size) == 0;
    if (stored) {
        lp__cache_count(n->zone, LP_CACHE_C_NATIVE_STORED);
        /* Its first plain hit may learn from the head (learn_plain): not linked yet, but its
         * fill's readers (fill streams) may hold it: an atomic store. */
        if (!d->no_cache)
            __atomic_store_n(&r->cache.fill->e->plain_head, 1, __ATOMIC_RELAXED); /* published */
    }
    /* `stored` only when the body's length is known, as the plugin's */
    stored = stored && lp__cache_body_sized(r);
    return miss_status(r, d, stored, d->ttl - floor_of(age)); /* whole seconds, as the plugin's */
}

int lp_ffi_cache_native_learn(void *rp, int status, int storable, double ttl, const char *source,
                              size_t slen, double stale, double date, int flags, double swr,
                              double sie)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    lp_cache_native_t *n = r->cache.native;
    if (!n)
        return 0;
    /* The response path's walk (lp_cache_native_response): the values learned here are the
     * ones it compares. */
    lp_str_t first[LP_CF_N];
    int ncc;
    int mask = fields_walk(r, 1, first, &ncc, NULL);
    lp_str_t cc = ncc ? first[LP_CF_CACHE_CONTROL] : (lp_str_t){0};
    if ((mask & SHAPE_OTHER) || ncc > 1 || (ncc && cc.len > sizeof(((learned_t *)0)->cc)) ||
        status < 100 || status > 999 || slen >= sizeof(((learned_t *)0)->source) ||
        !(ttl >= 0 && ttl < 1e15) || !(stale >= 0 && stale < 1e15) || !(swr < 1e15) ||
        !(sie < 1e15) || (storable && !(flags & LP_FFI_CACHE_LEARN_ALL_FIELDS)))
        return 0;
    if (storable && (mask & F_DATE)) {
        lp_str_t v = first[LP_CF_DATE];
        if (v.len == 0 || v.len > sizeof n->date)
            return 0;
        memcpy(n->date, v.base, v.len);
        n->date_len = v.len;
        n->date_valid = (uint8_t)(isnan(date) == 0);
        n->date_value = n->date_valid ? date : 0;
    }
    int validators = (mask & (F_ETAG | F_LAST_MODIFIED)) != 0;
    if (!n->learned && !(n->learned = calloc(NLEARNED, sizeof(*n->learned))))
        return 0;
    learned_t *d = learned_find(n, status, validators, ncc ? &cc : NULL);
    if (!d) {
        d = &n->learned[n->next];
        n->next = (n->next + 1) % NLEARNED;
    }
    d->status = status;
    d->validators = (uint8_t)validators;
    d->storable = (uint8_t)(storable != 0);
    d->must_revalidate = (uint8_t)((flags & LP_FFI_CACHE_LEARN_MUST_REVALIDATE) != 0);
    d->no_cache = (uint8_t)((flags & LP_FFI_CACHE_LEARN_NO_CACHE) != 0);
    d->ttl = ttl;
    d->stale = stale;
    d->swr = swr >= 0 ? swr : -1;
    d->sie = sie >= 0 ? sie : -1;
    memcpy(d->source, source, slen);
    d->source_len = slen;
    d->has_cc = (uint8_t)(ncc != 0);
    d->cc_len = ncc ? cc.len : 0;
    if (ncc)
        memcpy(d->cc, cc.base, cc.len);
    render(d);
    d->status_len = 0; /* its Cache-Status line is written again */
    return 0;
}

int lp_ffi_cache_native_hit(void *rp, int status, const char *wire, size_t wlen, double age0,
                            double response_time, double ttl)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    lp_cache_native_t *n = native_of(r);
    lp_cache_entry_t *e = r->cache.hit;
    if (!n || !e || r->cache.hit_zone != n->zone || status < 200 || status > 999 ||
        !(age0 >= 0 && age0 < 1e15) || !(ttl >= 0 && ttl < 1e15) || !(response_time > 0) ||
        lp__wire_valid(wire, wlen))
        return 0;
    uint64_t serial = lp_cache_entry_serial(e);
    const lp_cache_served_t *have = lp_cache_entry_served(e);
    if (have && have->serial == serial)
        return 0; /* learned already (by this worker or another) */
    lp_cache_served_t *h = malloc(sizeof(*h) + (wlen ? wlen : 1));
    if (!h)
        return 0;
    *h = (lp_cache_served_t){NULL, serial, status, age0, response_time, ttl, wlen};
    memcpy(h->wire, wire, wlen);
    lp_cache_entry_served_set(n->zone, e, h);
    return 0;
}

double lp_ffi_cache_native_t0(void *rp)
{
    const lp_req_t *r = rp;
    return r->cache.native ? r->cache.native_t0 : -1;
}
