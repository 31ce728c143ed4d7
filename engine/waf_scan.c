/* The waf plugin's per-value pipeline (lua/luaproxy/waf/engine.lua's group_hits): the values
 * a Hyperscan group reads, each through the group's transformation chain and scanned, in one
 * FFI call per group, so that Lua loops neither over values nor over a chain's steps.
 *
 * Chains form a tree (a chain is its parent plus one step); each transformed value is kept
 * for the request, keyed by the value's address and the chain, so a chain whose prefix
 * another group used starts from that result. The keys are Lua strings, which LuaJIT
 * interns: one address per text, alive while the request's collections hold them (the
 * caller resets the state before another request's values come).
 *
 * A chain whose steps before the last all left the value as it was ends in the last step over
 * the value itself: the one-step chain of that step computes it, once per value, for every
 * chain so ending (most of a request's values pass most steps unchanged, and CRS's ~50 chains
 * use ~15 steps). The state keeps such a one-step chain for each step (root[step]: a caller's
 * own when it set one, else one of its own beyond the caller's ids).
 *
 * A scan's hits are a pure function of the database, the chain (or a multiMatch condition's
 * path of chains, each text along it scanned) and the value's bytes, and most of a request's
 * values are the last requests' (a client's headers and cookies): the state
 * keeps them across requests, keyed by the value's id (struct value: its bytes hashed and
 * compared once a request, where keying each result by the bytes hashed a browser GET's ~40
 * values again for each of the ~500 (value, chain) pairs, ~90k instructions) and the chain
 * (struct result, a table of LP_WAF_SCAN_RESULTS slots in sets of
 * LP_WAF_SCAN_RESULT_WAYS; a value whose set is full takes the slot used longest ago: with
 * one slot a value, two of a browser GET's ~500 (value, chain) pairs sharing a slot took it
 * from each other at every request), so a value seen before costs a hash and a
 * comparison instead of its transformations and a Hyperscan scan (~1k instructions each on a
 * short value, most of it Hyperscan's fixed cost per scan). A failed scan is not kept. What
 * one request sent shows in another only as time: a value seen on this worker (the exact
 * bytes) is inspected a microsecond sooner.
 *
 * Most (value, group) pairs of a request hit nothing: a value kept says so itself, one bit per
 * (database, chain) its scans have used (struct value's none, the bit from the state's table
 * of such keys, LP_WAF_SCAN_BITS of them), so such a pair costs a bit test instead of a
 * look-up in the results (a browser GET: ~330 of its ~430 pairs, ~60 instructions each).
 *
 * Values come in a flat list (lp_ffi_waf_scan_values) or as segments (lp_ffi_waf_scan_segs):
 * one collection's values, filled by the caller once a request and read by every group that
 * scans that collection, each value's id found once a request and kept in the segment (a
 * browser GET's ~430 pairs are ~45 values).
 *
 * A result names its database by a serial, not by its address: the caller registers each
 * database it scans with (lp_ffi_waf_scan_db), and each registration takes a serial no
 * other took in this state, so a database freed and another allocated at its address (a
 * group whose database changed) never finds the first one's hits; a database not
 * registered is scanned each time. What is kept is bounded (LP_WAF_SCAN_RESULTS slots,
 * LP_WAF_SCAN_VALUE_BYTES of values) and ages out: each reset sweeps a few slots and frees
 * what no request asked for in the last LP_WAF_SCAN_AGE requests, and frees both tables
 * once they hold nothing; the state (a rule set's, freed with it) frees what is left. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct lp_req_s; /* lua_api.h names it; nothing here uses it */
#include "lua_api.h"
#include "waf_scan.h"
#include "waf_transform.h"

/* A hit's id when the scan of its value failed or matched more patterns than
 * LP_WAF_SCAN_VALUE_HITS: every condition tests the value (as when hs.lua's hits overflow).
 * The cap bounds the hit array by the values, not by what an attacker's value matches. */
#define LP_WAF_SCAN_ALL        0xFFFFFFFFu
#define LP_WAF_SCAN_VALUE_HITS 64
/* Arena kept from one request to the next (bytes): one chunk of the usual size. */
#define LP_WAF_SCAN_KEEP  65536
#define LP_WAF_SCAN_CHUNK 65536
/* Memo slots and hit words a state starts with, and above which a reset shrinks a table the
 * last request used less than an eighth of: one request with thousands of values would
 * otherwise leave its tables (40 B a slot) to the worker's life. */
#define LP_WAF_SCAN_MEMO0  256
#define LP_WAF_SCAN_OUT0   256
#define LP_WAF_SCAN_SHRINK 4096
/* Results kept across requests: slots (a power of two), the longest value kept, and the most
 * hits kept for one (a value with more is scanned each time; the cap keeps a slot small, 88
 * bytes: with 4, a browser GET's request line, URI and four of its headers, named by 5 to 7 of
 * CRS's broad phase-1 patterns such as 920420's ^[^;\s]+, were scanned again at every
 * request, ~70k instructions). */
#define LP_WAF_SCAN_RESULTS     4096
#define LP_WAF_SCAN_RESULT_WAYS 4
#define LP_WAF_SCAN_RESULT_MAX  512
#define LP_WAF_SCAN_RESULT_IDS  12
/* Values kept (struct value), in sets of LP_WAF_SCAN_RESULT_WAYS; a memo entry of this chain
 * holds a value's id for the request (in len). */
#define LP_WAF_SCAN_VALUES   4096
#define LP_WAF_SCAN_VID_MEMO 0xFFFFFFFFu
/* Most bytes of values kept (a value longer than the room left is not kept); requests
 * (resets) after which an entry no request asked for is freed, and slots of each table each
 * reset looks at for that (the whole table every LP_WAF_SCAN_RESULTS / 16 requests). */
#define LP_WAF_SCAN_VALUE_BYTES (256u * 1024)
#define LP_WAF_SCAN_AGE         4096u
#define LP_WAF_SCAN_SWEEP       16u
/* Databases registered (slots of an open-addressed table, a power of two; at most 3/4 used). */
#define LP_WAF_SCAN_DBS 256
/* (database serial, result key) pairs with a bit in struct value's none (a state's first 64),
 * and the slots of their open-addressed table (a power of two, at most half used). */
#define LP_WAF_SCAN_BITS      64
#define LP_WAF_SCAN_BIT_SLOTS 128
/* A segment's entry whose value has not been looked up yet this request (lp_waf_seg_t). */
#define LP_WAF_SCAN_UNKNOWN UINT64_MAX

struct chain {
    unsigned parent;
    int step; /* 0: not set (the chain cannot run here) */
};

struct memo {
    const char *key; /* borrowed: the caller's value (a Lua string), alive until the reset */
    size_t klen;
    const char *p; /* borrowed: the result, in the arena or the key itself */
    size_t len;
    unsigned chain;
    unsigned gen; /* valid when it is the state's gen */
};

struct result {
    uint32_t db;    /* the serial of the database's registration (struct scan_db); 0: free */
    uint32_t vid;   /* the value's id (struct value) */
    unsigned chain; /* result_key's: a chain, or a path of chains */
    unsigned used;  /* the state's gen when it was last kept or asked for */
    unsigned n;     /* ids[0..n) */
    unsigned ids[LP_WAF_SCAN_RESULT_IDS];
};

/* A value's bytes kept across requests, named by an id no other bytes ever had (ids are
 * not reused: a result naming an evicted value's id is never asked for again), so that a
 * value is hashed and compared once a request, not once for each group reading it. */
struct value {
    char *key; /* owned: the bytes (room for cap); NULL: a free slot */
    uint64_t hash;
    uint64_t none; /* bit b: scanned under the state's key b (struct key_bit), nothing hit */
    uint32_t len, cap;
    uint32_t id;
    unsigned used; /* the state's gen when it was last asked for */
};

/* A (database serial, result key) pair with a bit in struct value's none; db 0: a free slot. */
struct key_bit {
    uint32_t db;
    unsigned key;
};

/* A registered database: its address and the serial its last registration took. */
struct scan_db {
    const void *db; /* borrowed, only compared: never dereferenced here; NULL: a free slot */
    uint32_t serial;
};

struct chunk {
    struct chunk *next; /* owned: the chunk allocated before this one */
    size_t cap, used;
    char data[];
};

struct lp_waf_scan {
    lp_waf_hs_scan_fn scan;        /* borrowed: Hyperscan's hs_scan */
    struct chain *chains;          /* owned: nchains + LP_WAF_T_COUNT (the caller's, then root's) */
    unsigned nchains;              /* the caller's ids are below it */
    unsigned root[LP_WAF_T_COUNT]; /* the one-step chain of each step (index 0 unused) */
    struct memo *memo;             /* owned: mcap slots, open addressing */
    size_t mcap, mused;
    unsigned gen;
    unsigned grows;      /* memo_grow calls: a slot pointer taken before a growth is stale */
    struct chunk *arena; /* owned: the newest chunk first */
    unsigned *out;       /* owned: (id, value index) pairs of the last scan_values */
    size_t out_n, out_cap;
    size_t out_peak;                      /* the most out_n reached since the reset */
    unsigned ids[LP_WAF_SCAN_VALUE_HITS]; /* one value's scan (lp_ffi_waf_hs_collect) */
    struct result *results;               /* owned: LP_WAF_SCAN_RESULTS slots, on first use */
    struct value *values;                 /* owned: LP_WAF_SCAN_VALUES slots, on first use */
    uint32_t next_vid;                    /* the id the next value kept takes (0: none left) */
    size_t value_bytes;                   /* bytes the values' keys hold (their cap) */
    size_t nresults, nvalues;             /* slots in use */
    size_t sweep;                         /* the next slot the reset's sweep looks at */
    struct scan_db *dbs;                  /* owned: LP_WAF_SCAN_DBS slots, on first register */
    size_t ndbs;                          /* slots in use */
    uint32_t next_db;                     /* the serial the next registration takes (0: none) */
    struct key_bit bits[LP_WAF_SCAN_BIT_SLOTS]; /* a slot's bit: its index in bit_of */
    unsigned char bit_of[LP_WAF_SCAN_BIT_SLOTS];
    unsigned nbits; /* bits given out (never taken back: ids and serials are not reused) */
    unsigned out_w; /* words a hit takes in out: 2 (id, value) or 3 (id, segment, value) */
    const unsigned long long *reads; /* borrowed, this call's: NULL, or by pattern id below
                                        nreads the segments its condition reads (bit j: segs[j]) */
    unsigned nreads;
};

lp_waf_scan_t *lp_ffi_waf_scan_new(lp_waf_hs_scan_fn scan, unsigned nchains)
{
    lp_waf_scan_t *ws = calloc(1, sizeof *ws);
    if (!ws)
        return NULL;
    ws->scan = scan;
    ws->nchains = nchains + 1;
    ws->chains = calloc((size_t)ws->nchains + LP_WAF_T_COUNT, sizeof *ws->chains);
    ws->mcap = LP_WAF_SCAN_MEMO0;
    ws->memo = calloc(ws->mcap, sizeof *ws->memo);
    ws->gen = 1;
    ws->next_vid = 1;
    ws->next_db = 1;
    if (!ws->chains || !ws->memo) {
        lp_ffi_waf_scan_free(ws);
        return NULL;
    }
    for (int step = 1; step < LP_WAF_T_COUNT; step++) {
        ws->root[step] = ws->nchains + (unsigned)step;
        ws->chains[ws->root[step]].step = step;
    }
    return ws;
}

int lp_ffi_waf_scan_chain(lp_waf_scan_t *ws, unsigned id, unsigned parent, int step)
{
    if (id == 0 || id >= ws->nchains || parent >= id || step <= 0 || step >= LP_WAF_T_COUNT)
        return -1;
    ws->chains[id].parent = parent;
    ws->chains[id].step = step;
    if (parent == 0)
        ws->root[step] = id;
    return 0;
}

static void free_chunks(struct chunk *c)
{
    while (c) {
        struct chunk *next = c->next;
        free(c);
        c = next;
    }
}

/* The smallest power of two from min holding n at a quarter of it (below the memo's half
 * load, so the next request like the last one does not grow it again). */
static size_t cap_for(size_t n, size_t min)
{
    size_t cap = min;
    while (cap / 4 < n)
        cap *= 2;
    return cap;
}

/* A table above LP_WAF_SCAN_SHRINK the last request used less than an eighth of. */
static int oversized(size_t cap, size_t used)
{
    return cap > LP_WAF_SCAN_SHRINK && used < cap / 8;
}

static void shrink(lp_waf_scan_t *ws)
{
    if (oversized(ws->mcap, ws->mused)) {
        size_t cap = cap_for(ws->mused, LP_WAF_SCAN_MEMO0);
        struct memo *m = calloc(cap, sizeof *m); /* all free: gen 0 is never the state's */
        if (m) {                                 /* else the large one serves on */
            free(ws->memo);
            ws->memo = m;
            ws->mcap = cap;
        }
    }
    if (oversized(ws->out_cap, ws->out_peak)) {
        size_t cap = cap_for(ws->out_peak, LP_WAF_SCAN_OUT0);
        unsigned *o = realloc(ws->out, cap * sizeof *o);
        if (o) {
            ws->out = o;
            ws->out_cap = cap;
        }
    }
    ws->out_peak = 0;
}

/* Frees the results and values kept that no request asked for in the last LP_WAF_SCAN_AGE
 * requests (LP_WAF_SCAN_SWEEP slots of each table a reset), and a table once it holds none:
 * what a burst of distinct values filled goes back, an unused rule set holds nothing. */
static void age_out(lp_waf_scan_t *ws)
{
    if (!ws->results && !ws->values)
        return;
    for (unsigned k = 0; k < LP_WAF_SCAN_SWEEP; k++, ws->sweep++) {
        struct result *r = ws->results ? &ws->results[ws->sweep & (LP_WAF_SCAN_RESULTS - 1)] : NULL;
        if (r && r->db && ws->gen - r->used > LP_WAF_SCAN_AGE) {
            r->db = 0;
            ws->nresults--;
        }
        struct value *v = ws->values ? &ws->values[ws->sweep & (LP_WAF_SCAN_VALUES - 1)] : NULL;
        if (v && v->key && ws->gen - v->used > LP_WAF_SCAN_AGE) {
            free(v->key);
            v->key = NULL;
            ws->value_bytes -= v->cap;
            ws->nvalues--;
        }
    }
    if (ws->results && ws->nresults == 0) {
        free(ws->results);
        ws->results = NULL;
    }
    if (ws->values && ws->nvalues == 0) { /* ids are not reused: old results stay unasked */
        free(ws->values);
        ws->values = NULL;
    }
}

void lp_ffi_waf_scan_reset(lp_waf_scan_t *ws)
{
    shrink(ws);
    age_out(ws);
    ws->gen++;
    if (ws->gen == 0) { /* wrapped: old entries would look valid again */
        memset(ws->memo, 0, ws->mcap * sizeof *ws->memo);
        ws->gen = 1;
    }
    ws->mused = 0;
    /* the newest chunk stays for the next request, unless a large value made it large */
    if (ws->arena && ws->arena->cap <= LP_WAF_SCAN_KEEP) {
        free_chunks(ws->arena->next);
        ws->arena->next = NULL;
        ws->arena->used = 0;
    } else {
        free_chunks(ws->arena);
        ws->arena = NULL;
    }
}

void lp_ffi_waf_scan_free(lp_waf_scan_t *ws)
{
    if (!ws)
        return;
    free(ws->chains);
    free(ws->memo);
    free(ws->out);
    free_chunks(ws->arena);
    if (ws->values)
        for (size_t i = 0; i < LP_WAF_SCAN_VALUES; i++)
            free(ws->values[i].key);
    free(ws->values);
    free(ws->results);
    free(ws->dbs);
    free(ws);
}

static char *arena_alloc(lp_waf_scan_t *ws, size_t n)
{
    struct chunk *c = ws->arena;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > LP_WAF_SCAN_CHUNK ? n : LP_WAF_SCAN_CHUNK;
        struct chunk *nc = malloc(sizeof *nc + cap);
        if (!nc)
            return NULL;
        nc->next = c;
        nc->cap = cap;
        nc->used = 0;
        ws->arena = c = nc;
    }
    char *p = c->data + c->used;
    c->used += n;
    return p;
}

/* Gives back the end of the newest allocation (n bytes of it unused). */
static void arena_unalloc(lp_waf_scan_t *ws, size_t n)
{
    ws->arena->used -= n;
}

static size_t slot_of(const lp_waf_scan_t *ws, const char *key, unsigned chain)
{
    uint64_t h =
        (uint64_t)(uintptr_t)key * 0x9E3779B97F4A7C15ull ^ (uint64_t)chain * 0xC2B2AE3D27D4EB4Full;
    return (size_t)(h >> 20) & (ws->mcap - 1);
}

static struct memo *memo_find(lp_waf_scan_t *ws, const char *key, size_t klen, unsigned chain)
{
    for (size_t i = slot_of(ws, key, chain);; i = (i + 1) & (ws->mcap - 1)) {
        struct memo *m = &ws->memo[i];
        if (m->gen != ws->gen)
            return m; /* free: the caller may fill it */
        if (m->key == key && m->klen == klen && m->chain == chain)
            return m;
    }
}

static int memo_grow(lp_waf_scan_t *ws)
{
    size_t ocap = ws->mcap;
    struct memo *old = ws->memo;
    struct memo *nm = calloc(ocap * 2, sizeof *nm);
    if (!nm)
        return -1;
    ws->memo = nm;
    ws->mcap = ocap * 2;
    ws->grows++;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].gen == ws->gen)
            *memo_find(ws, old[i].key, old[i].klen, old[i].chain) = old[i];
    free(old);
    return 0;
}

/* Value v (n bytes) through chain: its text in *out, *olen. 0, or -1 when out of memory. */
static int transformed(lp_waf_scan_t *ws, const char *v, size_t n, unsigned chain, const char **out,
                       size_t *olen)
{
    if (chain == 0) {
        *out = v;
        *olen = n;
        return 0;
    }
    struct memo *m = memo_find(ws, v, n, chain);
    unsigned grows = ws->grows;
    if (m->gen == ws->gen) {
        *out = m->p;
        *olen = m->len;
        return 0;
    }
    const char *in;
    size_t in_n;
    unsigned parent = ws->chains[chain].parent;
    if (transformed(ws, v, n, parent, &in, &in_n) < 0)
        return -1;
    int step = ws->chains[chain].step;
    if (parent != 0 && in == v && in_n == n) {
        /* the steps before left v as it was: the one-step chain's text (file comment) */
        if (transformed(ws, v, n, ws->root[step], out, olen) < 0)
            return -1;
    } else {
        size_t room = lp_waf_transform_bound(step, in_n);
        char *buf = arena_alloc(ws, room);
        if (!buf)
            return -1;
        long r = lp_waf_transform(step, in, in_n, buf);
        if (r < 0) { /* unchanged: the input is the result */
            arena_unalloc(ws, room);
            *out = in;
            *olen = in_n;
        } else {
            arena_unalloc(ws, room - (size_t)r);
            *out = buf;
            *olen = (size_t)r;
        }
    }
    if (ws->mused + 1 > ws->mcap / 2 && memo_grow(ws) < 0)
        return 0; /* not kept: computed again when asked again */
    /* m is still this key's slot unless the entries made since (the parent's, the one-step
     * chain's) took it or a growth moved everything: entries are never removed within a
     * request, so a probe sequence's first free slot stays its first free slot */
    if (ws->grows != grows || m->gen == ws->gen)
        m = memo_find(ws, v, n, chain);
    *m =
        (struct memo){.key = v, .klen = n, .p = *out, .len = *olen, .chain = chain, .gen = ws->gen};
    ws->mused++;
    return 0;
}

/* Pushes a hit of pattern id on value k (of segment seg: with out_w 3), unless the call's
 * reads leave it out (LP_WAF_SCAN_ALL is never below nreads). */
static int push_hit(lp_waf_scan_t *ws, unsigned id, unsigned seg, unsigned k)
{
    const unsigned long long *reads = ws->reads;
    if (reads && id < ws->nreads && seg < 64 && !(reads[id] >> seg & 1))
        return 0; /* its condition does not read this segment: nothing to the caller */
    if (ws->out_n + 3 > ws->out_cap) {
        size_t cap = ws->out_cap ? ws->out_cap * 2 : LP_WAF_SCAN_OUT0;
        unsigned *o = realloc(ws->out, cap * sizeof *o);
        if (!o)
            return -1;
        ws->out = o;
        ws->out_cap = cap;
    }
    ws->out[ws->out_n++] = id;
    if (ws->out_w == 3)
        ws->out[ws->out_n++] = seg;
    ws->out[ws->out_n++] = k;
    if (ws->out_n > ws->out_peak)
        ws->out_peak = ws->out_n;
    return 0;
}

/* Scans text t (tn bytes) with db: the count of its hits' ids, in ws->ids; -1 when the scan
 * failed, -2 when it matched more than LP_WAF_SCAN_VALUE_HITS patterns. */
static long scan_text(lp_waf_scan_t *ws, const void *db, void *scratch, const char *t, size_t tn)
{
    lp_waf_hits_t h = {.n = 0, .cap = LP_WAF_SCAN_VALUE_HITS, .more = 0, .ids = ws->ids};
    int rc =
        tn > UINT32_MAX ? -1 : ws->scan(db, t, (unsigned)tn, 0, scratch, lp_ffi_waf_hs_collect, &h);
    if (rc != 0)
        return -1;
    return h.more ? -2 : (long)h.n;
}

static uint64_t hash_value(const char *p, size_t n, const void *db, unsigned chain)
{
    uint64_t h = (uint64_t)(uintptr_t)db * 0x9E3779B97F4A7C15ull ^ (uint64_t)chain << 32 ^ n;
    uint64_t w;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
    }
    w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    return h ^ h >> 29;
}

/* Keeps the memo entry m (found for key, klen, chain), unless the memo must grow and cannot.
 * grows: ws->grows when m was found (file comment of transformed on why m may be stale). */
static void memo_put(lp_waf_scan_t *ws, struct memo *m, unsigned grows, struct memo e)
{
    if (ws->mused + 1 > ws->mcap / 2 && memo_grow(ws) < 0)
        return; /* not kept: computed again when asked again */
    if (ws->grows != grows || m->gen == ws->gen)
        m = memo_find(ws, e.key, e.klen, e.chain);
    e.gen = ws->gen;
    *m = e;
    ws->mused++;
}

/* The id of value v's bytes (n of them) across requests, and its record in *rec; 0 (and NULL)
 * when it is not kept (too long, out of memory, no ids left). Asked once a request for each
 * value (by address, in the memo: the record's address in p, the values table moves only at a
 * reset; another value may take the record later in the request, but never its id: check
 * rec->id before reading it). */
static uint32_t value_id(lp_waf_scan_t *ws, const char *v, size_t n, struct value **rec)
{
    *rec = NULL;
    if (n > LP_WAF_SCAN_RESULT_MAX)
        return 0;
    struct memo *m = memo_find(ws, v, n, LP_WAF_SCAN_VID_MEMO);
    if (m->gen == ws->gen) {
        *rec = (struct value *)(uintptr_t)m->p;
        return (uint32_t)m->len;
    }
    unsigned grows = ws->grows;
    if (!ws->values && !(ws->values = calloc(LP_WAF_SCAN_VALUES, sizeof *ws->values)))
        return 0;
    uint64_t hash = hash_value(v, n, NULL, 0);
    size_t sets = LP_WAF_SCAN_VALUES / LP_WAF_SCAN_RESULT_WAYS;
    struct value *set = &ws->values[((size_t)(hash >> 40) & (sets - 1)) * LP_WAF_SCAN_RESULT_WAYS];
    struct value *x = NULL, *victim = set;
    for (unsigned w = 0; w < LP_WAF_SCAN_RESULT_WAYS && !x; w++) {
        struct value *r = &set[w];
        if (r->key && r->hash == hash && r->len == n && memcmp(r->key, v, n) == 0)
            x = r;
        else if (victim->key && (!r->key || r->used < victim->used))
            victim = r;
    }
    if (!x) {
        if (ws->next_vid == 0)
            return 0;
        x = victim;
        if (!x->key || x->cap < n) {
            size_t old = x->key ? x->cap : 0, cap = n ? n : 1;
            if (ws->value_bytes - old + cap > LP_WAF_SCAN_VALUE_BYTES)
                return 0; /* full: scanned each time until some age out */
            char *key = malloc(cap);
            if (!key)
                return 0;
            if (!x->key)
                ws->nvalues++;
            free(x->key);
            x->key = key;
            x->cap = (uint32_t)cap;
            ws->value_bytes += cap - old;
        }
        memcpy(x->key, v, n);
        x->hash = hash;
        x->len = (uint32_t)n;
        x->id = ws->next_vid++;
        x->none = 0;
    }
    x->used = ws->gen;
    memo_put(ws, m, grows,
             (struct memo){.key = v,
                           .klen = n,
                           .p = (const char *)(uintptr_t)x,
                           .len = x->id,
                           .chain = LP_WAF_SCAN_VID_MEMO});
    *rec = x;
    return x->id;
}

static int result_is(const struct result *r, uint32_t db, unsigned chain, uint32_t vid)
{
    return r->vid == vid && r->chain == chain && r->db == db;
}

static size_t db_slot(const void *db)
{
    return (size_t)(((uint64_t)(uintptr_t)db * 0x9E3779B97F4A7C15ull) >> 40) &
           (LP_WAF_SCAN_DBS - 1);
}

int lp_ffi_waf_scan_db(lp_waf_scan_t *ws, const void *db)
{
    if (!db || (!ws->dbs && !(ws->dbs = calloc(LP_WAF_SCAN_DBS, sizeof *ws->dbs))))
        return -1;
    for (size_t i = db_slot(db);; i = (i + 1) & (LP_WAF_SCAN_DBS - 1)) {
        struct scan_db *d = &ws->dbs[i];
        if (!d->db) {
            if (ws->ndbs + 1 > LP_WAF_SCAN_DBS / 4 * 3)
                return -1; /* not registered: scanned each time */
            d->db = db;
            ws->ndbs++;
        } else if (d->db != db) {
            continue;
        }
        d->serial = ws->next_db; /* 0 once every serial was taken: never kept again */
        if (ws->next_db)
            ws->next_db++;
        return d->serial ? 0 : -1;
    }
}

/* The serial of db's last registration; 0 when it has none (its results are not kept). */
static uint32_t db_serial(const lp_waf_scan_t *ws, const void *db)
{
    if (!ws->dbs)
        return 0;
    for (size_t i = db_slot(db);; i = (i + 1) & (LP_WAF_SCAN_DBS - 1))
        if (ws->dbs[i].db == db || !ws->dbs[i].db)
            return ws->dbs[i].serial;
}

/* The slot keeping value vid through chain with db, else the one of its set to keep it in (a
 * free one, else the one used longest ago). NULL when there is no table. */
static struct result *result_slot(lp_waf_scan_t *ws, uint32_t db, unsigned chain, uint32_t vid)
{
    if (!ws->results && !(ws->results = calloc(LP_WAF_SCAN_RESULTS, sizeof *ws->results)))
        return NULL;
    uint64_t h = ((uint64_t)vid * 0x9E3779B97F4A7C15ull ^ (uint64_t)chain * 0xC2B2AE3D27D4EB4Full ^
                  (uint64_t)db << 40) *
                 0xFF51AFD7ED558CCDull;
    size_t sets = LP_WAF_SCAN_RESULTS / LP_WAF_SCAN_RESULT_WAYS;
    struct result *set = &ws->results[((size_t)(h >> 40) & (sets - 1)) * LP_WAF_SCAN_RESULT_WAYS];
    struct result *victim = set;
    for (unsigned w = 0; w < LP_WAF_SCAN_RESULT_WAYS; w++) {
        struct result *r = &set[w];
        if (result_is(r, db, chain, vid)) {
            r->used = ws->gen;
            return r;
        }
        if (victim->db && (!r->db || r->used < victim->used))
            victim = r;
    }
    return victim;
}

/* Keeps ids[0..cnt), the hits of value vid, in slot r (they are nothing else's). */
static void result_keep(lp_waf_scan_t *ws, struct result *r, uint32_t db, unsigned chain,
                        uint32_t vid, const unsigned *ids, size_t cnt)
{
    if (!r->db)
        ws->nresults++;
    r->db = db;
    r->vid = vid;
    r->chain = chain;
    r->used = ws->gen;
    r->n = (unsigned)cnt;
    memcpy(r->ids, ids, cnt * sizeof *ids);
}

static int chain_ok(const lp_waf_scan_t *ws, unsigned chain)
{
    return chain < ws->nchains && (chain == 0 || ws->chains[chain].step != 0);
}

long lp_ffi_waf_scan_values(lp_waf_scan_t *ws, unsigned chain, const void *db, void *scratch,
                            const char *const *vals, const size_t *lens, unsigned n,
                            const unsigned **hits)
{
    return lp_ffi_waf_scan_steps(ws, &chain, 1, db, scratch, vals, lens, n, hits);
}

/* The key the hits of a value through chains[0..nch) are kept under, in *key: one chain's id;
 * for a multiMatch condition's steps (its chain's path: no step, then each prefix in turn, the
 * only list of several chains engine.lua passes) the last chain's id with the top bit set,
 * since the path follows from it. 0 when the list is no such path (its hits are not kept). */
#define LP_WAF_SCAN_PATH_KEY 0x80000000u
static int result_key(const lp_waf_scan_t *ws, const unsigned *chains, unsigned nch, unsigned *key)
{
    if (nch == 1) {
        *key = chains[0];
        return 1;
    }
    if (nch == 0 || chains[0] != 0 || chains[nch - 1] >= LP_WAF_SCAN_PATH_KEY)
        return 0;
    for (unsigned c = 1; c < nch; c++)
        if (chains[c] == 0 || ws->chains[chains[c]].parent != chains[c - 1])
            return 0;
    *key = chains[nch - 1] | LP_WAF_SCAN_PATH_KEY;
    return 1;
}

/* The bit of (db serial ds, result key key) in struct value's none, made on first use; -1 when
 * the state has given out all of them (its pairs are then looked up in the results). */
static int key_bit(lp_waf_scan_t *ws, uint32_t ds, unsigned key)
{
    uint64_t h = ((uint64_t)ds * 0x9E3779B97F4A7C15ull ^ key) * 0xFF51AFD7ED558CCDull;
    for (size_t i = (size_t)(h >> 40) & (LP_WAF_SCAN_BIT_SLOTS - 1);;
         i = (i + 1) & (LP_WAF_SCAN_BIT_SLOTS - 1)) {
        struct key_bit *b = &ws->bits[i];
        if (b->db == ds && b->key == key)
            return ws->bit_of[i];
        if (b->db == 0) {
            if (ws->nbits >= LP_WAF_SCAN_BITS)
                return -1;
            b->db = ds;
            b->key = key;
            ws->bit_of[i] = (unsigned char)ws->nbits;
            return (int)ws->nbits++;
        }
    }
}

/* One call's scan: the chains each value goes through, the database, and how its results
 * are kept (keep: under key and the db's serial ds, bit: key_bit's or -1). */
struct scan_call {
    const unsigned *chains;
    unsigned nch;
    const void *db;
    void *scratch;
    int keep;
    unsigned key;
    uint32_t ds;
    int bit;
};

static int call_init(lp_waf_scan_t *ws, struct scan_call *sc, const unsigned *chains, unsigned nch,
                     const void *db, void *scratch, unsigned out_w, const unsigned long long *reads,
                     unsigned nreads)
{
    ws->out_n = 0;
    ws->out_w = out_w;
    ws->reads = reads;
    ws->nreads = nreads;
    for (unsigned c = 0; c < nch; c++)
        if (!chain_ok(ws, chains[c]))
            return -1;
    *sc = (struct scan_call){.chains = chains, .nch = nch, .db = db, .scratch = scratch, .bit = -1};
    sc->keep = result_key(ws, chains, nch, &sc->key) && (sc->ds = db_serial(ws, db)) != 0;
    if (sc->keep)
        sc->bit = key_bit(ws, sc->ds, sc->key);
    return 0;
}

/* Does record rec (of value id vid, or NULL) say the call's scan of it hits nothing? (The
 * callers' fast path: most pairs, so inline.) */
static inline int known_none(const struct scan_call *sc, const struct value *rec, uint32_t vid)
{
    return rec && rec->id == vid && sc->bit >= 0 && (rec->none >> sc->bit & 1);
}

/* Value v (n bytes; its id vid and record rec, 0 and NULL when not kept) through the call's
 * chains, each text a step changed scanned; hits pushed as value k of segment seg. 0, or -1
 * when out of memory. */
static int scan_kept(lp_waf_scan_t *ws, const struct scan_call *sc, const char *v, size_t n,
                     uint32_t vid, struct value *rec, unsigned seg, unsigned k)
{
    if (rec && rec->id != vid)
        rec = NULL; /* another value took the record since: its id still names v's bytes */
    struct result *r = NULL;
    if (vid && (r = result_slot(ws, sc->ds, sc->key, vid)) && result_is(r, sc->ds, sc->key, vid)) {
        for (unsigned j = 0; j < r->n; j++)
            if (push_hit(ws, r->ids[j], seg, k) < 0)
                return -1;
        return 0;
    }
    const char *prev = NULL;
    size_t prev_n = 0;
    /* the ids the value's texts hit, in order (pushed filtered, kept whole: more than a
     * result holds are not kept) */
    unsigned raw[LP_WAF_SCAN_RESULT_IDS];
    size_t nraw = 0;
    for (unsigned c = 0; c < sc->nch; c++) {
        const char *t;
        size_t tn;
        if (transformed(ws, v, n, sc->chains[c], &t, &tn) < 0)
            return -1;
        /* a step that left the text as it was (given back as its input): scanned already */
        if (c > 0 && t == prev && tn == prev_n)
            continue;
        prev = t;
        prev_n = tn;
        long got = scan_text(ws, sc->db, sc->scratch, t, tn);
        const unsigned all = LP_WAF_SCAN_ALL, *ids = ws->ids;
        if (got == -1)
            r = NULL; /* failed: its answer is not the value's to keep */
        if (got < 0) {
            ids = &all; /* as the Lua scan: the ids before do not count */
            got = 1;
        }
        for (long j = 0; j < got; j++) {
            if (push_hit(ws, ids[j], seg, k) < 0)
                return -1;
            if (nraw < LP_WAF_SCAN_RESULT_IDS)
                raw[nraw] = ids[j];
            nraw++;
        }
    }
    if (r) {
        if (nraw <= LP_WAF_SCAN_RESULT_IDS)
            result_keep(ws, r, sc->ds, sc->key, vid, raw, nraw);
        if (nraw == 0 && rec && sc->bit >= 0)
            rec->none |= 1ull << sc->bit;
    }
    return 0;
}

long lp_ffi_waf_scan_steps(lp_waf_scan_t *ws, const unsigned *chains, unsigned nch, const void *db,
                           void *scratch, const char *const *vals, const size_t *lens, unsigned n,
                           const unsigned **hits)
{
    struct scan_call sc;
    if (call_init(ws, &sc, chains, nch, db, scratch, 2, NULL, 0) < 0)
        return -1;
    for (unsigned k = 0; k < n; k++) {
        struct value *rec = NULL;
        uint32_t vid = sc.keep ? value_id(ws, vals[k], lens[k], &rec) : 0;
        if (!known_none(&sc, rec, vid) && scan_kept(ws, &sc, vals[k], lens[k], vid, rec, 0, k) < 0)
            return -1;
    }
    *hits = ws->out;
    return (long)(ws->out_n / 2);
}

long lp_ffi_waf_scan_segs(lp_waf_scan_t *ws, const unsigned *chains, unsigned nch, const void *db,
                          void *scratch, lp_waf_seg_t *const *segs, unsigned nseg,
                          const unsigned long long *reads, unsigned nreads, const unsigned **hits)
{
    struct scan_call sc;
    if (call_init(ws, &sc, chains, nch, db, scratch, 3, reads, nreads) < 0)
        return -1;
    for (unsigned j = 0; j < nseg; j++) {
        lp_waf_seg_t *sg = segs[j];
        if (sg->gen != ws->gen) {
            for (unsigned k = 0; k < sg->n; k++)
                sg->keys[k] = LP_WAF_SCAN_UNKNOWN;
            sg->gen = ws->gen;
        }
        for (unsigned k = 0; k < sg->n; k++) {
            struct value *rec = NULL;
            uint32_t vid = 0;
            if (sc.keep) {
                uint64_t key = sg->keys[k];
                if (key == LP_WAF_SCAN_UNKNOWN) {
                    vid = value_id(ws, sg->vals[k], sg->lens[k], &rec);
                    /* the record's slot + 1 above its id (the values table stays until the
                     * reset; scan_kept checks the slot still holds that id) */
                    sg->keys[k] = rec ? (uint64_t)(rec - ws->values + 1) << 32 | vid : vid;
                } else {
                    vid = (uint32_t)key;
                    if (key >> 32)
                        rec = &ws->values[(key >> 32) - 1];
                }
            }
            if (!known_none(&sc, rec, vid) &&
                scan_kept(ws, &sc, sg->vals[k], sg->lens[k], vid, rec, j, k) < 0)
                return -1;
        }
    }
    *hits = ws->out;
    return (long)(ws->out_n / 3);
}

int lp_ffi_waf_scan_value(lp_waf_scan_t *ws, unsigned chain, const char *v, size_t n,
                          const char **out, size_t *olen)
{
    if (chain >= ws->nchains || (chain > 0 && ws->chains[chain].step == 0))
        return -1;
    return transformed(ws, v, n, chain, out, olen);
}

void lp_waf_scan_capacity(const lp_waf_scan_t *ws, size_t *memo_slots, size_t *hit_words)
{
    *memo_slots = ws->mcap;
    *hit_words = ws->out_cap;
}

void lp_waf_scan_kept(const lp_waf_scan_t *ws, size_t *results, size_t *values, size_t *bytes)
{
    *results = ws->results ? ws->nresults : 0;
    *values = ws->values ? ws->nvalues : 0;
    *bytes = ws->value_bytes;
}

int lp_ffi_waf_transform_id(const char *name)
{
    return lp_waf_transform_id(name);
}

size_t lp_ffi_waf_transform_bound(int step, size_t n)
{
    return lp_waf_transform_bound(step, n);
}

long lp_ffi_waf_transform(int step, const char *in, size_t n, char *out)
{
    return lp_waf_transform(step, in, n, out);
}
