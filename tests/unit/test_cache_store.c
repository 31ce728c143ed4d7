/* engine/cache_store.c: lookups, fills streamed in pieces, the object limit, partial fills
 * never linked, references outliving purge and eviction, LRU under the byte budget, Vary
 * variants bounded, key locks (coalescing) and their timeout, purge by key, prefix and all,
 * and counts under threads. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cache_req.h"
#include "cache_room.h"
#include "cache_store.h"
#include "cache_store_int.h"
#include "lua_api.h"
#include "worker.h"
#include "lp_test.h"

#define K(s) (s), strlen(s)
#define NOW  1000.0

static lp_cache_zone_t *zone(const char *name, size_t mem, size_t maxobj)
{
    lp_cache_zone_t *z = lp_cache_zone_acquire(name, mem, maxobj);
    lp_cache_purge(z, LP_CACHE_PURGE_ALL, NULL, 0);
    return z;
}

/* Stores key/sec with body `body` in pieces of `piece` bytes; returns the commit's result. */
static int put(lp_cache_zone_t *z, const char *key, const char *sec, const char *body, size_t piece)
{
    lp_cache_fill_t *f = lp_cache_fill_start(z, NULL, K(key), K(sec), K("head"), NOW + 60, 0);
    if (!f)
        return -2;
    size_t n = strlen(body);
    for (size_t off = 0; off < n; off += piece)
        lp_cache_fill_append(f, body + off, n - off < piece ? n - off : piece);
    return lp_cache_fill_commit(f);
}

static size_t body_of(const lp_cache_entry_t *e, char *out, size_t room)
{
    size_t n = 0;
    for (const lp_cache_chunk_t *c = lp_cache_entry_chunks(e); c; c = c->next) {
        if (n + c->len > room)
            return (size_t)-1;
        memcpy(out + n, c->data, c->len);
        n += c->len;
    }
    return n;
}

static void store_and_get(void)
{
    lp_cache_zone_t *z = zone("t1", 1 << 20, 1 << 16);
    REQUIRE(z);
    CHECK(!lp_cache_get(z, K("k"), K(""), NOW));
    CHECK_EQ_INT(put(z, "k", "", "hello world", 3), 0);
    lp_cache_entry_t *e = lp_cache_get(z, K("k"), K(""), NOW);
    REQUIRE(e);
    char buf[64];
    size_t n = body_of(e, buf, sizeof(buf));
    CHECK_EQ_INT((int)n, 11);
    CHECK(memcmp(buf, "hello world", 11) == 0);
    CHECK_EQ_INT((int)lp_cache_entry_body_len(e), 11);
    CHECK_EQ_INT((int)lp_cache_entry_head(z, e, buf, sizeof(buf)), 4);
    CHECK(memcmp(buf, "head", 4) == 0);
    /* Past keep_until: gone. */
    CHECK(!lp_cache_get(z, K("k"), K(""), NOW + 61));
    lp_cache_entry_unref(e); /* the reader's reference outlived the unlink */
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.entries, 0);
    CHECK_EQ_INT((int)st.bytes, 0);
    lp_cache_zone_release(z);
}

static void large_body_many_chunks(void)
{
    lp_cache_zone_t *z = zone("t2", 8 << 20, 4 << 20);
    static char big[1 << 20];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char)('a' + i % 26);
    lp_cache_fill_t *f = lp_cache_fill_start(z, NULL, K("big"), K(""), K("h"), NOW + 60, 0);
    REQUIRE(f);
    for (size_t off = 0; off < sizeof(big); off += 1000)
        CHECK_EQ_INT(
            lp_cache_fill_append(f, big + off, sizeof(big) - off < 1000 ? sizeof(big) - off : 1000),
            0);
    CHECK_EQ_INT(lp_cache_fill_commit(f), 0);
    lp_cache_entry_t *e = lp_cache_get(z, K("big"), K(""), NOW);
    REQUIRE(e);
    static char out[1 << 20];
    CHECK(body_of(e, out, sizeof(out)) == sizeof(big));
    CHECK(memcmp(out, big, sizeof(big)) == 0);
    int chunks = 0;
    for (const lp_cache_chunk_t *c = lp_cache_entry_chunks(e); c; c = c->next)
        chunks++;
    CHECK(chunks <= (int)(sizeof(big) / LP_CACHE_CHUNK) + 1); /* 4 KiB first, then full */
    lp_cache_entry_unref(e);
    lp_cache_zone_release(z);
}

static void object_limit_and_partial(void)
{
    lp_cache_zone_t *z = zone("t3", 1 << 20, 100);
    /* Over max_object_size: the fill dies, nothing is linked. */
    char body[200];
    memset(body, 'x', sizeof(body));
    body[199] = 0;
    CHECK_EQ_INT(put(z, "big", "", body, 50), -1);
    CHECK(!lp_cache_get(z, K("big"), K(""), NOW));
    /* A hint over the limit refuses at once. */
    CHECK(!lp_cache_fill_start(z, NULL, K("x"), K(""), K("h"), NOW + 60, 101));
    /* Abandoned mid-body (an upstream error): never served. */
    lp_cache_fill_t *f = lp_cache_fill_start(z, NULL, K("p"), K(""), K("h"), NOW + 60, 0);
    REQUIRE(f);
    lp_cache_fill_append(f, "part", 4);
    lp_cache_fill_abandon(f);
    CHECK(!lp_cache_get(z, K("p"), K(""), NOW));
    /* A key too long is not cached. */
    static char longkey[LP_CACHE_MAX_KEY + 2];
    memset(longkey, 'k', sizeof(longkey) - 1);
    CHECK(!lp_cache_fill_start(z, NULL, K(longkey), K(""), K("h"), NOW + 60, 0));
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.entries, 0);
    CHECK_EQ_INT((int)st.bytes, 0);
    CHECK(st.counts[LP_CACHE_C_ABANDONED] >= 2);
    lp_cache_zone_release(z);
}

static void replace_keeps_readers(void)
{
    lp_cache_zone_t *z = zone("t4", 1 << 20, 1 << 16);
    CHECK_EQ_INT(put(z, "k", "", "one", 10), 0);
    lp_cache_entry_t *old = lp_cache_get(z, K("k"), K(""), NOW);
    REQUIRE(old);
    CHECK_EQ_INT(put(z, "k", "", "two!", 10), 0);
    CHECK_EQ_INT(lp_cache_purge(z, LP_CACHE_PURGE_ALL, NULL, 0) >= 1, 1);
    char buf[16];
    CHECK_EQ_INT((int)body_of(old, buf, sizeof(buf)), 3); /* still readable */
    CHECK(memcmp(buf, "one", 3) == 0);
    lp_cache_entry_unref(old);
    lp_cache_zone_release(z);
}

static void lru_under_budget(void)
{
    size_t one = lp_cache_entry_cost(2, 0, 4, sizeof(lp_cache_chunk_t) + 4096);
    size_t index = 64 * sizeof(void *); /* the zone's first bucket array, in its budget */
    lp_cache_zone_t *z = zone("t5", one * 3 + index, 1 << 16);
    CHECK_EQ_INT(put(z, "k1", "", "a", 1), 0);
    CHECK_EQ_INT(put(z, "k2", "", "b", 1), 0);
    CHECK_EQ_INT(put(z, "k3", "", "c", 1), 0);
    lp_cache_entry_t *e = lp_cache_get(z, K("k1"), K(""), NOW); /* k1 now most recent */
    REQUIRE(e);
    lp_cache_entry_unref(e);
    CHECK_EQ_INT(put(z, "k4", "", "d", 1), 0);
    CHECK(!lp_cache_get(z, K("k2"), K(""), NOW)); /* the least recently used went */
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.entries, 3);
    CHECK((size_t)st.bytes == one * 3);
    CHECK_EQ_INT((int)st.counts[LP_CACHE_C_EVICTED], 1);
    /* A smaller budget evicts down to it. */
    lp_cache_zone_resize(z, one + index, 1 << 16);
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.entries, 1);
    lp_cache_zone_release(z);
}

/* The key index (its bucket array, which grows with the keys) is charged to the budget too:
 * a zone filled with many small entries holds bytes + index_bytes within its capacity. */
static void index_in_budget(void)
{
    size_t cap = 8u << 20; /* about 1900 entries (a body of unknown length takes 4 KiB) */
    lp_cache_zone_t *z = zone("t_index", cap, 1 << 16);
    lp_cache_stats_t st;
    char key[32];
    size_t most = 0;
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        CHECK_EQ_INT(put(z, key, "", "x", 1), 0);
        lp_cache_zone_stats(z, &st);
        if (st.bytes + st.index_bytes > cap) {
            CHECK(st.bytes + st.index_bytes <= cap);
            break;
        }
        if (st.entries > most)
            most = st.entries;
    }
    CHECK(st.index_bytes > 64 * sizeof(void *)); /* the table grew, and is counted */
    CHECK(most > 1000);                          /* still holds many */
    CHECK(st.counts[LP_CACHE_C_EVICTED] > 0);
    lp_cache_zone_release(z);
}

static void variants(void)
{
    lp_cache_zone_t *z = zone("t6", 4 << 20, 1 << 16);
    CHECK_EQ_INT(put(z, "k", "gzip", "zipped", 10), 0);
    CHECK_EQ_INT(put(z, "k", "br", "brotli", 10), 0);
    CHECK_EQ_INT(put(z, "other", "gzip", "x", 10), 0);
    lp_cache_entry_t *e = lp_cache_get(z, K("k"), K("gzip"), NOW);
    REQUIRE(e);
    CHECK_EQ_INT((int)lp_cache_entry_body_len(e), 6);
    lp_cache_entry_unref(e);
    CHECK(!lp_cache_get(z, K("k"), K("identity"), NOW));
    /* Fan-out is bounded: the least recently used variants go, not the oldest. gzip, stored
     * first but hit between the new variants, stays; br, never hit, goes first. */
    char sec[16];
    for (int i = 0; i < LP_CACHE_MAX_VARIANTS + 5; i++) {
        snprintf(sec, sizeof(sec), "v%d", i);
        CHECK_EQ_INT(put(z, "k", sec, "b", 1), 0);
        e = lp_cache_get(z, K("k"), K("gzip"), NOW);
        CHECK(e != NULL);
        lp_cache_entry_unref(e);
    }
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.entries, LP_CACHE_MAX_VARIANTS + 1); /* + "other" */
    /* gzip, br and v0..v36: 39 variants, 7 dropped (br and v0..v5), each counted. */
    CHECK_EQ_INT((int)st.counts[LP_CACHE_C_VARIANTS_DROPPED], 7);
    CHECK(!lp_cache_get(z, K("k"), K("br"), NOW));
    CHECK(!lp_cache_get(z, K("k"), K("v5"), NOW));
    e = lp_cache_get(z, K("k"), K("v6"), NOW);
    CHECK(e != NULL);
    lp_cache_entry_unref(e);
    e = lp_cache_get(z, K("k"), K("gzip"), NOW);
    CHECK(e != NULL);
    lp_cache_entry_unref(e);
    /* Purge by key takes every variant, and only that key's. */
    CHECK_EQ_INT((int)lp_cache_purge(z, LP_CACHE_PURGE_KEY, K("k")), LP_CACHE_MAX_VARIANTS);
    e = lp_cache_get(z, K("other"), K("gzip"), NOW);
    CHECK(e != NULL);
    lp_cache_entry_unref(e);
    lp_cache_zone_release(z);
}

/* A purge counts responses: a varying key's Vary marker (the plugin's "V ..." head without a
 * secondary key) and an empty marker go too, uncounted. */
static void purge_counts_responses(void)
{
    lp_cache_zone_t *z = zone("t7m", 4 << 20, 1 << 16);
    lp_cache_fill_t *f = lp_cache_fill_start(z, NULL, K("k"), K(""), K("V accept"), NOW + 60, 0);
    REQUIRE(f);
    CHECK_EQ_INT(lp_cache_fill_commit(f), 0);
    put(z, "k", "accept:4:text", "1", 1);
    put(z, "k", "accept:4:json", "2", 1);
    f = lp_cache_fill_start(z, NULL, K("k"), "\0refreshing", 11, "", 0, NOW + 60, 0);
    REQUIRE(f);
    CHECK_EQ_INT(lp_cache_fill_commit(f), 0);
    /* `entries` and `stored` count responses too (GET /status says so): 2 of 4 commits. */
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.entries, 2);
    CHECK_EQ_INT((int)st.counts[LP_CACHE_C_STORED], 2);
    /* The refresh marker put again already expired (the plugin's end of a refresh) goes at
     * once, rather than staying linked, stored, until a lookup meets it. */
    uint64_t bytes = st.bytes;
    CHECK_EQ_INT(lp_ffi_cache_put(z, K("k"), "\0refreshing", 11, "", 0, "", 0, -1), 0);
    lp_cache_zone_stats(z, &st);
    CHECK(st.bytes < bytes);
    CHECK_EQ_INT((int)st.entries, 2);
    CHECK_EQ_INT((int)st.counts[LP_CACHE_C_STORED], 2);
    CHECK_EQ_INT((int)lp_cache_purge(z, LP_CACHE_PURGE_KEY, K("k")), 2);
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.entries, 0);
    /* A head "V ..." under a secondary key is a response's (the plugin's heads start "L2"). */
    put(z, "v", "", "1", 1);
    f = lp_cache_fill_start(z, NULL, K("v"), K("s"), K("V x"), NOW + 60, 0);
    REQUIRE(f);
    CHECK_EQ_INT(lp_cache_fill_commit(f), 0);
    CHECK_EQ_INT((int)lp_cache_purge(z, LP_CACHE_PURGE_PREFIX, K("v")), 2);
    lp_cache_zone_release(z);
}

static void purge_prefix(void)
{
    lp_cache_zone_t *z = zone("t7", 4 << 20, 1 << 16);
    put(z, "GET http://a/x/1", "", "1", 1);
    put(z, "GET http://a/x/2", "", "2", 1);
    put(z, "GET http://a/y/1", "", "3", 1);
    CHECK_EQ_INT((int)lp_cache_purge(z, LP_CACHE_PURGE_PREFIX, K("GET http://a/x/")), 2);
    lp_cache_entry_t *e = lp_cache_get(z, K("GET http://a/y/1"), K(""), NOW);
    CHECK(e != NULL);
    lp_cache_entry_unref(e);
    CHECK_EQ_INT((int)lp_cache_purge(z, LP_CACHE_PURGE_ALL, NULL, 0), 1);
    lp_cache_zone_release(z);
}

static int notified;
static void count_notify(lp_cache_waiter_t *w)
{
    (void)w;
    notified++;
}

static void locks(void)
{
    lp_cache_zone_t *z = zone("t8", 4 << 20, 1 << 16);
    int busy;
    lp_cache_fill_t *a = lp_cache_lock(z, K("k"), 5, NOW, &busy);
    REQUIRE(a);
    CHECK(lp_cache_locked(z, K("k")));
    CHECK(!lp_cache_lock(z, K("k"), 5, NOW + 1, &busy));
    CHECK_EQ_INT(busy, 1);
    /* Only a lock: commit links nothing and releases it. */
    CHECK(!lp_cache_fill_active(a));
    a = lp_cache_fill_start(z, a, K("k"), K(""), K("h"), NOW + 60, 0);
    REQUIRE(a);
    lp_cache_fill_append(a, "body", 4);
    CHECK(lp_cache_locked(z, K("k"))); /* held until commit */
    CHECK_EQ_INT(lp_cache_fill_commit(a), 0);
    CHECK(!lp_cache_locked(z, K("k")));
    /* A lock past its timeout is taken over; the old holder still cleans up safely. */
    lp_cache_fill_t *old = lp_cache_lock(z, K("j"), 5, NOW, &busy);
    REQUIRE(old);
    lp_cache_fill_t *newer = lp_cache_lock(z, K("j"), 5, NOW + 6, &busy);
    REQUIRE(newer);
    lp_cache_fill_abandon(old);
    CHECK(lp_cache_locked(z, K("j")));
    lp_cache_fill_abandon(newer);
    CHECK(!lp_cache_locked(z, K("j")));
    /* One past its timeout that made progress within it (a slow body still coming) is not:
     * the bound counts from the last progress. Its waiter's bound is renewed the same way. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    lp_cache_fill_t *slow = lp_cache_lock(z, K("s"), 5, NOW, &busy);
    REQUIRE(slow);
    lp__cache_fill_progress(slow, ms);
    CHECK(!lp_cache_lock(z, K("s"), 5, NOW + 6, &busy));
    CHECK_EQ_INT(busy, 1);
    lp_cache_waiter_t w = {.notify = count_notify};
    notified = 0;
    CHECK_EQ_INT(lp_cache_wait(z, K("s"), &w), 1);
    CHECK_EQ_INT((int)lp_cache_wait_quiet(z, &w, ms + 1000, 5000), 4000); /* 4 s to go */
    CHECK(w.holder == slow);
    CHECK_EQ_INT((int)lp_cache_wait_quiet(z, &w, ms + 5000, 5000), 0); /* quiet: out */
    CHECK(!w.holder);
    CHECK_EQ_INT((int)lp_cache_wait_quiet(z, &w, ms + 5000, 5000), -1);
    lp_cache_fill_abandon(slow);
    CHECK_EQ_INT(notified, 0); /* taken out: no notify */
    /* A fill that dies (too large) lets its waiters go at once. */
    lp_cache_zone_resize(z, 4 << 20, 10);
    lp_cache_fill_t *d = lp_cache_lock(z, K("d"), 5, NOW, &busy);
    d = lp_cache_fill_start(z, d, K("d"), K(""), K("h"), NOW + 60, 0);
    REQUIRE(d);
    CHECK_EQ_INT(lp_cache_fill_append(d, "0123456789abc", 13), -1);
    CHECK(!lp_cache_locked(z, K("d")));
    CHECK_EQ_INT(lp_cache_fill_commit(d), -1);
    lp_cache_zone_release(z);
}

/* A disk read-back's lock: read-backs of a key wait for each other, never for (nor take over)
 * a fill going upstream; a fill waits for a read-back. */
static void readback_locks(void)
{
    lp_cache_zone_t *z = zone("t8r", 4 << 20, 1 << 16);
    int busy = 7;
    lp_cache_fill_t *fill = lp_cache_lock(z, K("k"), 30, NOW, &busy);
    REQUIRE(fill);
    CHECK(!lp_cache_lock_readback(z, K("k"), 10, NOW + 1, &busy));
    CHECK_EQ_INT(busy, 0); /* reads back without the lock */
    CHECK(!lp_cache_lock_readback(z, K("k"), 10, NOW + 20, &busy));
    CHECK_EQ_INT(busy, 0);             /* and never takes the fill's lock over */
    CHECK(lp_cache_locked(z, K("k"))); /* still the fill's */
    lp_cache_fill_abandon(fill);
    lp_cache_fill_t *rb = lp_cache_lock_readback(z, K("k"), 10, NOW, &busy);
    REQUIRE(rb);
    CHECK(!lp_cache_lock_readback(z, K("k"), 10, NOW + 1, &busy));
    CHECK_EQ_INT(busy, 1); /* another read-back: wait for it */
    CHECK(!lp_cache_lock(z, K("k"), 30, NOW + 1, &busy));
    CHECK_EQ_INT(busy, 1); /* a fill waits too */
    lp_cache_fill_abandon(rb);
    CHECK(!lp_cache_locked(z, K("k")));
    lp_cache_zone_release(z);
}

static void waiters(void)
{
    lp_cache_zone_t *z = zone("t11", 4 << 20, 1 << 16);
    lp_cache_waiter_t a = {.notify = count_notify}, b = {.notify = count_notify};
    notified = 0;
    CHECK_EQ_INT(lp_cache_wait(z, K("k"), &a), 0); /* nothing fills k */
    int busy;
    lp_cache_fill_t *f = lp_cache_lock(z, K("k"), 5, NOW, &busy);
    REQUIRE(f);
    CHECK_EQ_INT(lp_cache_wait(z, K("k"), &a), 1);
    CHECK_EQ_INT(lp_cache_wait(z, K("k"), &b), 1);
    CHECK_EQ_INT(lp_cache_wait_cancel(z, &b), 1); /* b leaves: never notified */
    f = lp_cache_fill_start(z, f, K("k"), K(""), K("h"), NOW + 60, 0);
    REQUIRE(f);
    CHECK_EQ_INT(notified, 0);
    CHECK_EQ_INT(lp_cache_fill_commit(f), 0);
    CHECK_EQ_INT(notified, 1); /* a, once */
    CHECK_EQ_INT(lp_cache_wait_cancel(z, &a), 0);
    /* A takeover and an abandon notify too. */
    lp_cache_fill_t *old = lp_cache_lock(z, K("j"), 5, NOW, &busy);
    CHECK_EQ_INT(lp_cache_wait(z, K("j"), &a), 1);
    lp_cache_fill_t *newer = lp_cache_lock(z, K("j"), 5, NOW + 10, &busy);
    CHECK_EQ_INT(notified, 2);
    CHECK_EQ_INT(lp_cache_wait(z, K("j"), &b), 1);
    lp_cache_fill_abandon(old);
    CHECK_EQ_INT(notified, 2); /* the old fill holds no lock any more */
    lp_cache_fill_abandon(newer);
    CHECK_EQ_INT(notified, 3);
    lp_cache_zone_release(z);
}

/* ---- reading an entry as it fills ---- */

/* Reads what is there of e into out at *at: the last lp_cache_fill_read's result. */
static int read_some(const lp_cache_entry_t *e, lp_cache_fill_cursor_t *cur, char *out, size_t room,
                     size_t *at)
{
    for (;;) {
        const char *p;
        size_t n;
        int r = lp_cache_fill_read(e, cur, &p, &n);
        if (r != 1)
            return r;
        if (*at + n > room)
            return -2;
        memcpy(out + *at, p, n);
        *at += n;
    }
}

/* Early waiters hear of the head; the entry is looked up through the lock, read as it
 * fills, readers woken once per wait by appends and by the commit, which completes it. */
static void fill_stream(void)
{
    lp_cache_zone_t *z = zone("t20", 4 << 20, 1 << 20);
    int busy;
    lp_cache_fill_t *f = lp_cache_lock(z, K("k"), 5, NOW, &busy);
    REQUIRE(f);
    notified = 0;
    lp_cache_waiter_t early = {.notify = count_notify, .early = 1};
    lp_cache_waiter_t late = {.notify = count_notify};
    CHECK_EQ_INT(lp_cache_wait(z, K("k"), &early), 1);
    CHECK_EQ_INT(lp_cache_wait(z, K("k"), &late), 1);
    uint64_t hint = 1;
    CHECK(!lp_cache_get_filling(z, K("k"), K(""), &hint)); /* nothing ready */
    f = lp_cache_fill_start(z, f, K("k"), K(""), K("head"), NOW + 60, 0);
    REQUIRE(f);
    CHECK(!lp_cache_get_filling(z, K("k"), K(""), &hint)); /* started, head not told */
    lp_cache_fill_ready(f);
    CHECK_EQ_INT(notified, 1); /* the early one only */
    CHECK_EQ_INT(lp_cache_wait_cancel(z, &early), 0);
    lp_cache_waiter_t again = {.notify = count_notify, .early = 1};
    CHECK_EQ_INT(lp_cache_wait(z, K("k"), &again), 2);        /* ready: not registered */
    CHECK(!lp_cache_get_filling(z, K("k"), K("v=1"), &hint)); /* another variant */
    lp_cache_entry_t *e = lp_cache_get_filling(z, K("k"), K(""), &hint);
    REQUIRE(e);
    CHECK_EQ_INT((int)hint, 0);
    char head[16];
    CHECK_EQ_INT((int)lp_cache_entry_head(z, e, head, sizeof head), 4);
    lp_cache_fill_cursor_t cur = {0};
    char out[256];
    size_t at = 0;
    CHECK_EQ_INT(read_some(e, &cur, out, sizeof out, &at), 0);
    lp_cache_waiter_t r = {.notify = count_notify};
    CHECK_EQ_INT(lp_cache_fill_watch(z, e, &r), 1);
    CHECK_EQ_INT(lp_cache_fill_append(f, K("hello ")), 0);
    CHECK_EQ_INT(notified, 2);
    CHECK(!r.holder);
    CHECK_EQ_INT(lp_cache_fill_append(f, K("world")), 0);
    CHECK_EQ_INT(notified, 2); /* once per wait */
    CHECK_EQ_INT(read_some(e, &cur, out, sizeof out, &at), 0);
    CHECK_EQ_INT((int)at, 11);
    CHECK(memcmp(out, "hello world", 11) == 0);
    /* A watch cancelled is never notified. */
    CHECK_EQ_INT(lp_cache_fill_watch(z, e, &r), 1);
    CHECK_EQ_INT(lp_cache_wait_cancel(z, &r), 1);
    /* Bodies over a chunk: the chunks come linked as they fill. */
    static char big[3 * LP_CACHE_CHUNK];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)('a' + i % 26);
    CHECK_EQ_INT(lp_cache_fill_append(f, big, sizeof big), 0);
    CHECK_EQ_INT(notified, 2);
    static char all[11 + sizeof big];
    memcpy(all, out, 11);
    size_t got = 11;
    CHECK_EQ_INT(read_some(e, &cur, all, sizeof all, &got), 0);
    CHECK_EQ_INT((int)got, (int)sizeof all);
    CHECK(memcmp(all + 11, big, sizeof big) == 0);
    CHECK_EQ_INT(lp_cache_fill_watch(z, e, &r), 1);
    CHECK_EQ_INT(lp_cache_fill_commit(f), 0);
    CHECK_EQ_INT(notified, 4); /* the reader and the late waiter */
    CHECK(!late.holder);
    CHECK_EQ_INT(read_some(e, &cur, all, sizeof all, &got), 2);
    CHECK_EQ_INT(lp_cache_fill_watch(z, e, &r), 0); /* ended */
    lp_cache_entry_t *linked = lp_cache_get(z, K("k"), K(""), NOW);
    CHECK(linked == e); /* the same entry, linked by the commit */
    lp_cache_entry_unref(linked);
    CHECK(!lp_cache_get_filling(z, K("k"), K(""), &hint));
    /* A reader that starts after the commit reads it whole. */
    lp_cache_fill_cursor_t c2 = {0};
    got = 0;
    CHECK_EQ_INT(read_some(e, &c2, all, sizeof all, &got), 2);
    CHECK_EQ_INT((int)got, (int)sizeof all);
    lp_cache_entry_unref(e);
    lp_cache_zone_release(z);
}

/* Key "k" of z locked, its fill started and made ready: the filling entry with a reader's
 * reference (*hint its expected length), *f its fill; NULL when a step failed. */
static lp_cache_entry_t *filling(lp_cache_zone_t *z, lp_cache_fill_t **f, uint64_t *hint)
{
    int busy;
    *f = lp_cache_lock(z, K("k"), 5, NOW, &busy);
    *f = *f ? lp_cache_fill_start(z, *f, K("k"), K(""), K("h"), NOW + 60, 0) : NULL;
    if (!*f)
        return NULL;
    lp_cache_fill_ready(*f);
    return lp_cache_get_filling(z, K("k"), K(""), hint);
}

/* A fill killed over max_object_size, or abandoned, fails its readers (their answers are cut
 * short), whose references keep its bytes; the key is free for the next fill. A small body
 * of a known length (in the entry's block) streams too. */
static void fill_stream_fails(void)
{
    lp_cache_zone_t *z = zone("t21", 4 << 20, 100);
    int busy;
    notified = 0;
    lp_cache_fill_t *f = NULL;
    uint64_t hint;
    lp_cache_entry_t *e = filling(z, &f, &hint);
    REQUIRE(e);
    CHECK_EQ_INT(lp_cache_fill_append(f, K("0123456789")), 0);
    lp_cache_fill_cursor_t cur = {0};
    char out[256];
    size_t at = 0;
    CHECK_EQ_INT(read_some(e, &cur, out, sizeof out, &at), 0);
    lp_cache_waiter_t r = {.notify = count_notify};
    CHECK_EQ_INT(lp_cache_fill_watch(z, e, &r), 1);
    char over[200] = {0};
    CHECK_EQ_INT(lp_cache_fill_append(f, over, sizeof over), -1); /* over 100: killed */
    CHECK_EQ_INT(notified, 1);
    CHECK_EQ_INT(read_some(e, &cur, out, sizeof out, &at), -1);
    CHECK_EQ_INT(lp_cache_fill_watch(z, e, &r), 0);
    CHECK(!lp_cache_locked(z, K("k")));
    CHECK_EQ_INT(lp_cache_fill_commit(f), -1);
    CHECK(!lp_cache_get(z, K("k"), K(""), NOW));
    lp_cache_entry_unref(e); /* the last reference: its bytes go */

    /* Abandoned (an origin error mid-body) with a reader on a small known-length body. */
    f = lp_cache_lock(z, K("k"), 5, NOW, &busy);
    REQUIRE(f);
    f = lp_cache_fill_start(z, f, K("k"), K(""), K("h"), NOW + 60, 10);
    REQUIRE(f);
    lp_cache_fill_ready(f);
    e = lp_cache_get_filling(z, K("k"), K(""), &hint);
    REQUIRE(e);
    CHECK_EQ_INT((int)hint, 10);
    char *to = lp__cache_fill_room(f, 4);
    REQUIRE(to);
    memcpy(to, "abcd", 4);
    lp__cache_fill_wrote(f, 4);
    lp_cache_fill_cursor_t c2 = {0};
    at = 0;
    CHECK_EQ_INT(read_some(e, &c2, out, sizeof out, &at), 0);
    CHECK_EQ_INT((int)at, 4);
    CHECK(memcmp(out, "abcd", 4) == 0);
    CHECK_EQ_INT(lp_cache_fill_watch(z, e, &r), 1);
    lp_cache_fill_abandon(f);
    CHECK_EQ_INT(notified, 2);
    CHECK_EQ_INT(read_some(e, &c2, out, sizeof out, &at), -1);
    lp_cache_entry_unref(e);
    /* An abandoned fill nobody read: nothing changes for it. */
    f = lp_cache_fill_start(z, NULL, K("j"), K(""), K("h"), NOW + 60, 0);
    REQUIRE(f);
    lp_cache_fill_append(f, K("x"));
    lp_cache_fill_abandon(f);
    lp_cache_zone_release(z);
}

/* A filler and a reader on two threads: the reader sleeps on a condition until notified,
 * and reads every byte, in order, once the commit completes the entry. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int woken;
} wake = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

static void cond_notify(lp_cache_waiter_t *w)
{
    (void)w;
    pthread_mutex_lock(&wake.mu);
    wake.woken = 1;
    pthread_cond_signal(&wake.cv);
    pthread_mutex_unlock(&wake.mu);
}

#define STREAM_PIECES 2000
#define STREAM_PIECE  97

static void *stream_filler(void *arg)
{
    lp_cache_fill_t *f = arg;
    char piece[STREAM_PIECE];
    for (int i = 0; i < STREAM_PIECES; i++) {
        for (int j = 0; j < STREAM_PIECE; j++)
            piece[j] = (char)(i * 7 + j);
        lp_cache_fill_append(f, piece, sizeof piece);
    }
    lp_cache_fill_commit(f);
    return NULL;
}

static void fill_stream_threads(void)
{
    lp_cache_zone_t *z = zone("t22", 16 << 20, 4 << 20);
    lp_cache_fill_t *f = NULL;
    uint64_t hint;
    lp_cache_entry_t *e = filling(z, &f, &hint);
    REQUIRE(e);
    pthread_t t;
    pthread_create(&t, NULL, stream_filler, f);
    lp_cache_fill_cursor_t cur = {0};
    size_t got = 0;
    int bad = 0, r;
    lp_cache_waiter_t w = {.notify = cond_notify};
    for (;;) {
        const char *p;
        size_t n;
        r = lp_cache_fill_read(e, &cur, &p, &n);
        if (r == 1) {
            for (size_t i = 0; i < n; i++, got++)
                bad += p[i] != (char)((got / STREAM_PIECE) * 7 + got % STREAM_PIECE);
            continue;
        }
        if (r != 0)
            break;
        pthread_mutex_lock(&wake.mu);
        wake.woken = 0;
        pthread_mutex_unlock(&wake.mu);
        if (!lp_cache_fill_watch(z, e, &w))
            continue; /* ended: read again */
        /* Registered: bytes that came meanwhile are read before sleeping (the watch is
         * taken out; one notified already is simply not waited for). */
        if (lp_cache_fill_read(e, &(lp_cache_fill_cursor_t){cur.c, cur.off}, &p, &n) != 0) {
            lp_cache_wait_cancel(z, &w);
            continue;
        }
        pthread_mutex_lock(&wake.mu);
        while (!wake.woken)
            pthread_cond_wait(&wake.cv, &wake.mu);
        pthread_mutex_unlock(&wake.mu);
    }
    pthread_join(t, NULL);
    CHECK_EQ_INT(r, 2);
    CHECK_EQ_INT((int)got, STREAM_PIECES * STREAM_PIECE);
    CHECK_EQ_INT(bad, 0);
    lp_cache_entry_unref(e);
    lp_cache_zone_release(z);
}

static void set_head(void)
{
    lp_cache_zone_t *z = zone("t9", 4 << 20, 1 << 16);
    put(z, "k", "", "b", 1);
    lp_cache_entry_t *e = lp_cache_get(z, K("k"), K(""), NOW);
    REQUIRE(e);
    CHECK_EQ_INT(lp_cache_entry_set_head(z, e, K("a longer head"), 0, NOW + 120), 0);
    lp_cache_entry_unref(e);
    e = lp_cache_get(z, K("k"), K(""), NOW + 100);
    REQUIRE(e);
    char buf[32];
    CHECK_EQ_INT((int)lp_cache_entry_head(z, e, buf, sizeof(buf)), 13);
    CHECK(memcmp(buf, "a longer head", 13) == 0);
    CHECK_EQ_INT((int)lp_cache_entry_head(z, e, buf, 3), 13); /* too small: the size */
    lp_cache_entry_unref(e);
    lp_cache_zone_release(z);
}

static lp_cache_zone_t *tz;
static void *worker(void *arg)
{
    char key[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof(key), "k%d", i % 500);
        lp_cache_entry_t *e = lp_cache_get(tz, K(key), K(""), NOW);
        if (e) {
            lp_cache_entry_unref(e);
            lp_cache_count(tz, LP_CACHE_C_HIT);
        } else {
            int busy;
            lp_cache_fill_t *f = lp_cache_lock(tz, K(key), 5, NOW, &busy);
            if (f && (f = lp_cache_fill_start(tz, f, K(key), K(""), K("h"), NOW + 60, 0))) {
                lp_cache_fill_append(f, key, strlen(key));
                lp_cache_fill_commit(f);
            }
            if ((i & 63) == 0)
                lp_cache_purge(tz, LP_CACHE_PURGE_KEY, K(key));
        }
    }
    (void)arg;
    return NULL;
}

static void threads(void)
{
    tz = zone("t10", 1 << 20, 1 << 16); /* under what 500 keys take: eviction runs too */
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    lp_cache_stats_t st;
    lp_cache_zone_stats(tz, &st);
    CHECK(st.bytes <= st.capacity);
    CHECK(st.counts[LP_CACHE_C_HIT] > 0);
    lp_cache_purge(tz, LP_CACHE_PURGE_ALL, NULL, 0);
    lp_cache_zone_stats(tz, &st);
    CHECK_EQ_INT((int)st.bytes, 0);
    lp_cache_zone_release(tz);
}

static void registry(void)
{
    lp_cache_zone_t *a = lp_cache_zone_acquire("reg", 1 << 20, 100);
    lp_cache_zone_t *b = lp_cache_zone_acquire("reg", 2 << 20, 100);
    CHECK(a == b);
    CHECK(lp_cache_zone_find(K("reg")) == a);
    put(a, "k", "", "v", 1);
    lp_cache_zone_release(a);
    lp_cache_entry_t *e = lp_cache_get(b, K("k"), K(""), NOW); /* kept: one reference left */
    CHECK(e != NULL);
    lp_cache_entry_unref(e);
    lp_cache_zone_release(b);
    CHECK(!lp_cache_zone_find(K("reg")));
}

/* Fills count against the budget while they gather: three concurrent fills of 400 KiB in
 * a 1 MiB zone cannot all grow (before, they held 1.2 MiB beside the stored entries), and
 * older entries are evicted to make room for one. */
static void fills_charged(void)
{
    lp_cache_zone_t *z = zone("fc", 1 << 20, 1 << 20);
    REQUIRE(z);
    static char piece[4096];
    memset(piece, 'x', sizeof(piece));
    CHECK_EQ_INT(put(z, "old", "", "an older entry", 4), 0);
    lp_cache_fill_t *f[3];
    int ok[3] = {1, 1, 1};
    for (int i = 0; i < 3; i++) {
        char key[8] = {'f', (char)('0' + i), 0};
        f[i] = lp_cache_fill_start(z, NULL, K(key), K(""), K("h"), NOW + 60, 0);
        REQUIRE(f[i]);
    }
    for (int round = 0; round < 100; round++) /* 100 x 4 KiB each */
        for (int i = 0; i < 3; i++)
            if (ok[i] && lp_cache_fill_append(f[i], piece, sizeof(piece)))
                ok[i] = 0;
    CHECK(!(ok[0] && ok[1] && ok[2]));             /* one at least was stopped */
    CHECK(ok[0] || ok[1]);                         /* and the first ones went on */
    CHECK(!lp_cache_get(z, K("old"), K(""), NOW)); /* evicted to make room */
    for (int i = 0; i < 3; i++)
        if (ok[i])
            CHECK_EQ_INT(lp_cache_fill_commit(f[i]), 0);
        else
            lp_cache_fill_abandon(f[i]);
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    CHECK(st.bytes <= st.capacity);
    /* Everything given back: a new fill of the whole budget's half fits after a purge. */
    lp_cache_purge(z, LP_CACHE_PURGE_ALL, NULL, 0);
    lp_cache_fill_t *g = lp_cache_fill_start(z, NULL, K("g"), K(""), K("h"), NOW + 60, 0);
    REQUIRE(g);
    int grew = 1;
    for (int round = 0; round < 120 && grew; round++)
        grew = !lp_cache_fill_append(g, piece, sizeof(piece));
    CHECK(grew);
    CHECK_EQ_INT(lp_cache_fill_commit(g), 0);
    lp_cache_zone_release(z);
}

/* Small bodies (in their entry's block) count against the budget from their fill's start:
 * fills in flight cannot hold more than the zone's capacity, older entries make room for
 * them, and what they held is given back when they end (abandoned or committed). */
static void small_fills_charged(void)
{
    enum { CAP = 64 << 10, NF = 200 };
    lp_cache_zone_t *z = zone("sfc", CAP, 1 << 10);
    REQUIRE(z);
    CHECK_EQ_INT(put(z, "old", "", "an older entry", 4), 0);
    static lp_cache_fill_t *f[NF];
    int started = 0;
    for (int i = 0; i < NF; i++) {
        char key[8] = {'s', (char)('0' + i / 100), (char)('0' + i / 10 % 10), (char)('0' + i % 10),
                       0};
        f[i] = lp_cache_fill_start(z, NULL, K(key), K(""), K("h"), NOW + 60, 1024);
        started += f[i] != NULL;
    }
    CHECK(started > 0);
    CHECK(started < NF);                           /* the budget stopped them */
    CHECK((size_t)started * 1024 <= CAP);          /* each was counted */
    CHECK(!lp_cache_get(z, K("old"), K(""), NOW)); /* evicted to make room */
    static char body[1024];
    memset(body, 'b', sizeof(body));
    int kept = 0; /* the first 4 are stored, once the others are abandoned */
    for (int i = 0; i < NF; i++)
        if (f[i] && kept++ >= 4) {
            lp_cache_fill_abandon(f[i]);
            f[i] = NULL;
        }
    kept = 0;
    for (int i = 0; i < NF; i++)
        if (f[i] && lp_cache_fill_append(f[i], body, sizeof(body)))
            lp_cache_fill_abandon(f[i]);
        else if (f[i])
            kept += lp_cache_fill_commit(f[i]) == 0;
    CHECK_EQ_INT(kept, 4);
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.entries, 4);
    CHECK(st.bytes + st.index_bytes <= st.capacity);
    /* Given back: as many fills start again beside the 4 stored, less what those hold. */
    int again = 0;
    for (int i = 0; i < NF; i++) {
        char key[8] = {'t', (char)('0' + i / 100), (char)('0' + i / 10 % 10), (char)('0' + i % 10),
                       0};
        f[i] = lp_cache_fill_start(z, NULL, K(key), K(""), K("h"), NOW + 60, 1024);
        again += f[i] != NULL;
    }
    CHECK(again >= started - 6);
    for (int i = 0; i < NF; i++)
        lp_cache_fill_abandon(f[i]);
    lp_cache_zone_release(z);
}

/* The same through the locks a miss takes (lp_cache_get_or_lock): a lock sets its small
 * body's room aside while the zone has it free (lock_reserve), so that fills started on the
 * locks stay within the budget either way, and abandoning them gives it all back. */
static void locked_fills_reserved(void)
{
    enum { CAP = 64 << 10, NF = 200 };
    lp_cache_zone_t *z = zone("lfr", CAP, 1 << 10);
    REQUIRE(z);
    static lp_cache_fill_t *f[NF];
    int round[2] = {0, 0};
    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < NF; i++) {
            char key[8] = {(char)('a' + r), (char)('0' + i / 100), (char)('0' + i / 10 % 10),
                           (char)('0' + i % 10), 0};
            lp_cache_fill_t *lock = NULL;
            int busy = 0;
            CHECK(!lp_cache_get_or_lock(z, K(key), NOW, 5, &lock, &busy));
            REQUIRE(lock);
            f[i] = lp_cache_fill_start(z, lock, K(key), K(""), K("h"), NOW + 60, 1024);
            round[r] += f[i] != NULL;
        }
        CHECK(round[r] > 0);
        CHECK(round[r] < NF);                  /* the budget stopped them */
        CHECK((size_t)round[r] * 1024 <= CAP); /* each was counted */
        for (int i = 0; i < NF; i++)
            lp_cache_fill_abandon(f[i]);
    }
    CHECK_EQ_INT(round[1], round[0]); /* all given back */
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.entries, 0);
    lp_cache_zone_release(z);
}

/* A disk-only entry's memory in the index is true when its head is replaced: its first head
 * stays in its block beside the new one (before, the first head's bytes were taken off),
 * and the index comes back to its table alone once it goes. */
static void stub_set_head(void)
{
    lp_cache_zone_t *z = zone("t_stub", 1 << 20, 1 << 16);
    REQUIRE(z);
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    size_t table = st.index_bytes;
    lp_cache_entry_t *s = lp__cache_entry_new("k", 1, "", 0, "head", 4, 100, NOW + 60, NULL);
    REQUIRE(s);
    CHECK(!lp_cache_entry_resident(s));
    lp_cache_entry_ref(s); /* ours; the zone's is the first */
    lp_mutex_lock(&z->lock);
    lp__cache_link(z, s);
    lp_mutex_unlock(&z->lock);
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.stubs, 1);
    size_t block = st.index_bytes - table;
    CHECK_EQ_INT((int)block, (int)lp_cache_entry_cost(1, 0, 4, 0));
    CHECK_EQ_INT(lp_cache_entry_set_head(z, s, K("a longer head"), 0, NOW + 60), 0);
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)(st.index_bytes - table), (int)(block + 13));
    CHECK_EQ_INT(lp_cache_entry_set_head(z, s, K("x"), 0, NOW + 60), 0); /* frees the 13 */
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)(st.index_bytes - table), (int)(block + 1));
    CHECK_EQ_INT((int)lp_cache_purge(z, LP_CACHE_PURGE_ALL, NULL, 0), 1);
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.stubs, 0);
    CHECK_EQ_INT((int)st.index_bytes, (int)table);
    lp_cache_entry_unref(s);
    lp_cache_zone_release(z);
}

/* lp_ffi_cache_fields' bits are the order of LP_FFI_CACHE_FIELDS, which ffi.lua repeats
 * (check_ffi_decls.lua compares the two lists). */
static void field_bits(void)
{
    static const char *const names[] = {LP_FFI_CACHE_FIELDS};
    size_t n = sizeof(names) / sizeof(names[0]);
    CHECK(n <= 31);
    for (size_t i = 0; i < n; i++) {
        lp_str_t s = {names[i], strlen(names[i])};
        CHECK_EQ_INT(lp__cache_field_index(s), (int)i);
        char up[32];
        for (size_t k = 0; k <= s.len && k < sizeof(up); k++)
            up[k] =
                (char)((names[i][k] >= 'a' && names[i][k] <= 'z') ? names[i][k] - 32 : names[i][k]);
        CHECK_EQ_INT(lp__cache_field_index((lp_str_t){up, s.len}), (int)i);
    }
    CHECK_EQ_INT(lp__cache_field_index(LP_STR("host")), -1);
    CHECK_EQ_INT(lp__cache_field_index(LP_STR("content-type")), -1);
    CHECK_EQ_INT(lp__cache_field_index(LP_STR("")), -1);
}

/* A body of a length known at the start (at most LP_CACHE_INLINE_BODY) comes with its entry,
 * and more bytes than said go on in chunks of their own; the first head lives with the entry
 * too and is replaced (twice: the second frees the first replacement); a fill's lock hands
 * its key back; lookup and lock at once (lp_cache_get_or_lock); a head the caller writes in
 * place (lp_cache_fill_head). ASan checks the frees. */
static void small_body_in_entry(void)
{
    lp_cache_zone_t *z = zone("t_inline", 1 << 20, 1 << 16);
    REQUIRE(z);
    lp_cache_fill_t *f = lp_cache_fill_start(z, NULL, K("s"), K(""), K("head"), NOW + 60, 5);
    REQUIRE(f);
    CHECK_EQ_INT(lp_cache_fill_append(f, "hel", 3), 0);
    CHECK_EQ_INT(lp_cache_fill_append(f, "lo", 2), 0);
    CHECK_EQ_INT(lp_cache_fill_commit(f), 0);
    lp_cache_entry_t *e = lp_cache_get(z, K("s"), K(""), NOW);
    REQUIRE(e);
    char buf[64];
    CHECK_EQ_INT((int)body_of(e, buf, sizeof(buf)), 5);
    CHECK(memcmp(buf, "hello", 5) == 0);
    CHECK(lp_cache_entry_chunks(e) && !lp_cache_entry_chunks(e)->next);
    CHECK_EQ_INT(lp_cache_entry_set_head(z, e, K("second head"), 0, NOW + 60), 0);
    CHECK_EQ_INT(lp_cache_entry_set_head(z, e, K("third"), 0, NOW + 60), 0);
    CHECK_EQ_INT((int)lp_cache_entry_head(z, e, buf, sizeof(buf)), 5);
    CHECK(memcmp(buf, "third", 5) == 0);
    lp_cache_entry_unref(e);

    /* Said 5, sent 9: the rest in a chunk of its own. */
    f = lp_cache_fill_start(z, NULL, K("o"), K(""), K("h"), NOW + 60, 5);
    REQUIRE(f);
    CHECK_EQ_INT(lp_cache_fill_append(f, "012345678", 9), 0);
    CHECK_EQ_INT(lp_cache_fill_commit(f), 0);
    e = lp_cache_get(z, K("o"), K(""), NOW);
    REQUIRE(e);
    CHECK_EQ_INT((int)body_of(e, buf, sizeof(buf)), 9);
    CHECK(memcmp(buf, "012345678", 9) == 0);
    CHECK(lp_cache_entry_chunks(e)->next != NULL);
    lp_cache_entry_unref(e);

    /* A miss takes the lock; a second finds it busy; the fill's key is the locked one. */
    lp_cache_fill_t *lock = NULL, *other = NULL;
    int busy = 0;
    CHECK(!lp_cache_get_or_lock(z, K("m"), NOW, 5, &lock, &busy));
    REQUIRE(lock);
    CHECK_EQ_INT(busy, 0);
    CHECK(!lp_cache_get_or_lock(z, K("m"), NOW, 5, &other, &busy));
    CHECK(!other);
    CHECK_EQ_INT(busy, 1);
    const char *key = NULL;
    size_t klen = 0;
    CHECK_EQ_INT(lp_cache_fill_key(lock, &key, &klen), 0);
    CHECK(klen == 1 && key && key[0] == 'm');
    /* Its head written by the caller, in place (head NULL). */
    f = lp_cache_fill_start(z, lock, key, klen, K(""), NULL, 4, NOW + 60, 2);
    REQUIRE(f);
    REQUIRE(lp_cache_fill_head(f));
    memcpy(lp_cache_fill_head(f), "mine", 4);
    CHECK_EQ_INT(lp_cache_fill_append(f, "ok", 2), 0);
    CHECK_EQ_INT(lp_cache_fill_commit(f), 0);
    e = lp_cache_get_or_lock(z, K("m"), NOW, 5, &other, &busy);
    REQUIRE(e);
    CHECK(!other);
    CHECK_EQ_INT(busy, 0);
    CHECK_EQ_INT((int)body_of(e, buf, sizeof(buf)), 2);
    CHECK_EQ_INT((int)lp_cache_entry_head(z, e, buf, sizeof(buf)), 4);
    CHECK(memcmp(buf, "mine", 4) == 0);
    lp_cache_entry_unref(e);
    /* Without coalescing (lock_timeout < 0) a miss takes no lock. */
    CHECK(!lp_cache_get_or_lock(z, K("n"), NOW, -1, &other, &busy));
    CHECK(!other);
    lp_cache_zone_release(z);
}

/* Entry blocks (cache_blocks.c): a freed block serves the next of its class, a block too
 * large or past the slab limit is NULL (malloc's then), and an orphaned store lives until its
 * last block comes back (ASan's leak check says it went). */
static void blocks(void)
{
    lp_cache_blocks_t *b = lp_cache_blocks_new(64 * 1024);
    REQUIRE(b);
    uint8_t c1 = 99, c2 = 99, c3 = 99;
    char *p1 = lp_cache_blocks_alloc(b, 100, &c1);
    char *p2 = lp_cache_blocks_alloc(b, 128, &c2);
    REQUIRE(p1 && p2);
    CHECK_EQ_INT(c1, 1); /* 65..128 bytes */
    CHECK_EQ_INT(c2, 1);
    CHECK(p2 >= p1 + 128 || p1 >= p2 + 128); /* no overlap */
    CHECK_EQ_INT(((uintptr_t)p1 & 15), 0);
    memset(p1, 'a', 100);
    memset(p2, 'b', 128);
    lp_cache_blocks_free(b, p1, c1);
    CHECK(lp_cache_blocks_alloc(b, 70, &c3) == p1); /* its class's freed block first */
    CHECK_EQ_INT(c3, 1);
    CHECK(!lp_cache_blocks_alloc(b, LP_CACHE_BLOCK_MAX + 1, &c3));
    size_t slab_bytes = 0, live = 0;
    lp_cache_blocks_stats(b, &slab_bytes, &live);
    CHECK_EQ_INT(slab_bytes, 64 * 1024);
    CHECK_EQ_INT(live, 2);
    /* The limit allows one slab: past its bytes, NULL. */
    char *full[40];
    int got = 0;
    while (got < 40 && (full[got] = lp_cache_blocks_alloc(b, LP_CACHE_BLOCK_MAX, &c3)))
        got++;
    CHECK(got >= 30 && got < 32);
    lp_cache_blocks_stats(b, &slab_bytes, &live);
    CHECK_EQ_INT(slab_bytes, 64 * 1024);
    /* Orphaned with blocks out: still usable by them, freed with the last. */
    lp_cache_blocks_orphan(b);
    for (int i = 0; i < got; i++)
        lp_cache_blocks_free(b, full[i], c3);
    lp_cache_blocks_free(b, p2, c2);
    memset(p1, 'c', 70);
    lp_cache_blocks_free(b, p1, c1);
}

/* A lowered limit retires the slabs: each goes once its own blocks have come back (those
 * with none at once), so one entry that stays (a hot one in a busy zone) keeps its slab
 * only, where it once kept every slab and the store handed out nothing until the last
 * block of all came back. Fresh slabs are made within the limit, retired ones counted. */
static void blocks_limit_lowered(void)
{
    enum { PER_SLAB = 31 }; /* blocks of LP_CACHE_BLOCK_MAX in a 64 KiB slab */
    lp_cache_blocks_t *b = lp_cache_blocks_new(4 * 64 * 1024);
    REQUIRE(b);
    uint8_t c = 0;
    char *p[4 * PER_SLAB];
    int n = 0;
    while (n < 4 * PER_SLAB && (p[n] = lp_cache_blocks_alloc(b, LP_CACHE_BLOCK_MAX, &c)))
        n++;
    REQUIRE(n == 4 * PER_SLAB);
    CHECK(!lp_cache_blocks_alloc(b, LP_CACHE_BLOCK_MAX, &c)); /* the four slabs are full */
    size_t slab_bytes = 0, live = 0;
    lp_cache_blocks_stats(b, &slab_bytes, &live);
    CHECK_EQ_INT(slab_bytes, 4 * 64 * 1024);
    /* Every block of the first slab goes, and all but one of each other slab's. */
    for (int i = 0; i < n; i++)
        if (i < PER_SLAB || i % PER_SLAB)
            lp_cache_blocks_free(b, p[i], c);
    lp_cache_blocks_limit(b, 2 * 64 * 1024);
    lp_cache_blocks_stats(b, &slab_bytes, &live);
    CHECK_EQ_INT(live, 3);
    CHECK_EQ_INT(slab_bytes, 3 * 64 * 1024); /* the empty one went at once */
    uint8_t c2 = 0;
    CHECK(!lp_cache_blocks_alloc(b, 64, &c2)); /* retired ones over the limit: malloc's */
    lp_cache_blocks_free(b, p[PER_SLAB], c);   /* the second slab's last block */
    lp_cache_blocks_stats(b, &slab_bytes, &live);
    CHECK_EQ_INT(slab_bytes, 2 * 64 * 1024);
    CHECK(!lp_cache_blocks_alloc(b, 64, &c2)); /* at the limit still */
    lp_cache_blocks_free(b, p[2 * PER_SLAB], c);
    lp_cache_blocks_stats(b, &slab_bytes, &live);
    CHECK_EQ_INT(slab_bytes, 64 * 1024); /* one retired slab left: its entry stays hot */
    /* A fresh slab within the limit, beside it (a retired slab's freed blocks are never
     * handed out again). */
    char *q = lp_cache_blocks_alloc(b, 64, &c2);
    REQUIRE(q);
    lp_cache_blocks_stats(b, &slab_bytes, &live);
    CHECK_EQ_INT(slab_bytes, 2 * 64 * 1024);
    CHECK_EQ_INT(live, 2);
    uintptr_t slab_mask = ~(uintptr_t)(64 * 1024 - 1);
    CHECK(((uintptr_t)q & slab_mask) != ((uintptr_t)p[3 * PER_SLAB] & slab_mask));
    /* raised again: fresh slabs up to the new limit, the retired one still goes with its
     * block */
    lp_cache_blocks_limit(b, 4 * 64 * 1024);
    char *r[4 * PER_SLAB];
    int m = 0;
    while (m < 4 * PER_SLAB && (r[m] = lp_cache_blocks_alloc(b, LP_CACHE_BLOCK_MAX, &c)))
        m++;
    CHECK_EQ_INT(m, 3 * PER_SLAB); /* q's slab and two more, beside the retired one */
    lp_cache_blocks_stats(b, &slab_bytes, &live);
    CHECK_EQ_INT(slab_bytes, 4 * 64 * 1024);
    lp_cache_blocks_free(b, p[3 * PER_SLAB], c);
    lp_cache_blocks_stats(b, &slab_bytes, &live);
    CHECK_EQ_INT(slab_bytes, 3 * 64 * 1024);
    for (int i = 0; i < m; i++)
        lp_cache_blocks_free(b, r[i], c);
    lp_cache_blocks_free(b, q, c2);
    lp_cache_blocks_stats(b, &slab_bytes, &live);
    CHECK_EQ_INT(live, 0);
    CHECK_EQ_INT(slab_bytes, 3 * 64 * 1024); /* not retired: kept for the next entries */
    /* lowered with no block out: the slabs go at once */
    lp_cache_blocks_limit(b, 0);
    lp_cache_blocks_stats(b, &slab_bytes, &live);
    CHECK_EQ_INT(slab_bytes, 0);
    lp_cache_blocks_orphan(b);
}

/* Stores key with a head of nfields fields (as the cache plugin's writer tells them). */
static int put_fields(lp_cache_zone_t *z, const char *key, size_t nfields)
{
    lp_cache_fill_t *f = lp_cache_fill_start(z, NULL, K(key), K(""), K("head"), NOW + 60, 0);
    if (!f)
        return -2;
    lp_cache_fill_fields(f, nfields);
    lp_cache_fill_append(f, "b", 1);
    return lp_cache_fill_commit(f);
}

/* What requests make room for (cache_room.c, lp_cache_room_cap) follows the widest entry
 * the zones hold: up with its link, down again once it goes (purged, replaced, its zone let
 * go) and the recount ran. It once only grew: after a reload lowered max_headers, every
 * request kept arrays for entries long gone. */
static void room_follows_entries(void)
{
    const unsigned cap = 40 + 16; /* limits.max_headers 40 */
    lp_cache_room_recount();
    CHECK_EQ_INT(lp_cache_room_cap(cap), cap);
    lp_cache_zone_t *a = zone("room_a", 1 << 20, 1 << 16);
    lp_cache_zone_t *b = zone("room_b", 1 << 20, 1 << 16);
    REQUIRE(a && b);
    CHECK_EQ_INT(put_fields(a, "wide", 100), 0);
    CHECK_EQ_INT(lp_cache_room_cap(cap), 100 + LP_CACHE_HIT_FIELDS);
    CHECK_EQ_INT(put_fields(b, "mid", 80), 0);
    CHECK_EQ_INT(put_fields(a, "narrow", 10), 0);
    CHECK_EQ_INT(lp_cache_room_cap(cap), 100 + LP_CACHE_HIT_FIELDS);
    /* purged: counted again at once */
    CHECK_EQ_INT((int)lp_cache_purge(a, LP_CACHE_PURGE_KEY, K("wide")), 1);
    CHECK_EQ_INT(lp_cache_room_cap(cap), 80 + LP_CACHE_HIT_FIELDS);
    /* replaced by a narrower head: at the next recount (a worker's house timer) */
    CHECK_EQ_INT(put_fields(b, "mid", 20), 0);
    CHECK_EQ_INT(lp_cache_room_cap(cap), 80 + LP_CACHE_HIT_FIELDS);
    lp_cache_room_recount();
    CHECK_EQ_INT(lp_cache_room_cap(cap), cap);
    /* a linked entry's head refreshed wider: up at once */
    lp_cache_entry_t *e = lp_cache_get(a, K("narrow"), K(""), NOW);
    REQUIRE(e);
    CHECK_EQ_INT(lp_cache_entry_set_head(a, e, K("h"), 90, NOW + 60), 0);
    lp_cache_entry_unref(e);
    CHECK_EQ_INT(lp_cache_room_cap(cap), 90 + LP_CACHE_HIT_FIELDS);
    /* a head wider than any request can be: no request makes room for it */
    CHECK_EQ_INT(put_fields(b, "bogus", LP_CACHE_ROOM_MAX + 1), 0);
    CHECK_EQ_INT(lp_cache_room_cap(cap), 90 + LP_CACHE_HIT_FIELDS);
    /* the zone let go (a reload dropped it): its entries' widths go with it */
    lp_cache_zone_release(a);
    lp_cache_room_recount();
    CHECK_EQ_INT(lp_cache_room_cap(cap), cap);
    lp_cache_zone_release(b);
}

/* The key table is sized for the budget at the start and counts in it: a reload lowering
 * `memory` to a small fraction of the start's makes it smaller, so entries still fit. */
static void table_follows_lowered_budget(void)
{
    lp_cache_zone_t *z = zone("t_shrink", (size_t)1 << 30, 1 << 16);
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    CHECK(st.index_bytes >= ((size_t)1 << 30) / (16 * 1024) * sizeof(void *));
    REQUIRE_EQ_INT(put(z, "before", "", "a", 1), 0);
    lp_cache_zone_resize(z, 256 * 1024, 1 << 16);
    lp_cache_zone_stats(z, &st);
    CHECK(st.index_bytes <= 64 * sizeof(void *) + 1024);
    CHECK_EQ_INT(put(z, "k", "", "hello", 5), 0);
    lp_cache_entry_t *e = lp_cache_get(z, K("k"), K(""), NOW);
    CHECK(e != NULL);
    if (e)
        lp_cache_entry_unref(e);
    e = lp_cache_get(z, K("before"), K(""), NOW); /* not evicted for the old table's sake */
    CHECK(e != NULL);
    if (e)
        lp_cache_entry_unref(e);
    lp_cache_zone_release(z);
}

/* A zone's entries come from its blocks; one read after the zone is gone is still whole, and
 * its block goes back to the orphaned store (ASan's leak check: nothing left). */
static void entry_outlives_zone(void)
{
    lp_cache_zone_t *z = zone("blocks-gone", 1 << 20, 1 << 20);
    REQUIRE_EQ_INT(put(z, "k", "", "body", 4), 0);
    lp_cache_entry_t *e = lp_cache_get(z, K("k"), K(""), NOW);
    REQUIRE(e);
    CHECK(e->blocks != NULL);
    lp_cache_zone_release(z); /* its last reference: the zone goes, e stays */
    char buf[16];
    CHECK_EQ_INT((int)body_of(e, buf, sizeof(buf)), 4);
    CHECK(memcmp(buf, "body", 4) == 0);
    lp_cache_entry_unref(e);
}

/* The worker's wall clock at a monotonic stamp (the engine's cache times: cache_native.c)
 * is the wall clock: the loop's ms and a fresh hrtime both land within a few ms of
 * lp_ffi_now, and a stamp a second later a second later. */
static void worker_wall(void)
{
    static lp_worker_t w; /* large: not on the stack */
    lp_worker_wall_sync(&w);
    uint64_t mono = uv_hrtime();
    double now = lp_ffi_now();
    double wall = lp_worker_wall(&w, mono);
    CHECK(wall > now - 0.05 && wall < now + 0.05);
    CHECK(lp_worker_wall(&w, mono + 1000000000u) - wall > 0.999);
    CHECK(lp_worker_wall(&w, mono + 1000000000u) - wall < 1.001);
    /* in ms, as uv_now gives them */
    CHECK(lp_worker_wall(&w, mono / 1000000u * 1000000u) <= wall);
    CHECK(lp_worker_wall(&w, mono / 1000000u * 1000000u) > wall - 0.002);
}

/* How plain hits are served is kept with the entry (cache_native.c): one memo per head,
 * published lock-free, at most LP_CACHE_SERVED_MAX, all freed with the entry (ASan: no leak,
 * and none freed while the entry lives). */
static lp_cache_served_t *served(uint64_t serial)
{
    lp_cache_served_t *s = malloc(sizeof(*s) + 2);
    if (!s)
        abort();
    *s = (lp_cache_served_t){NULL, serial, 200, 0, NOW, 60, 2};
    memcpy(s->wire, "\r\n", 2);
    return s;
}

static void served_memo(void)
{
    lp_cache_zone_t *z = zone("t_served", 1 << 20, 1 << 16);
    REQUIRE(z);
    lp_cache_fill_t *f = lp_cache_fill_start(z, NULL, K("m"), K(""), K("head"), NOW + 60, 0);
    REQUIRE(f);
    CHECK_EQ_INT(lp_cache_fill_commit(f), 0);
    lp_cache_entry_t *e = lp_cache_get(z, K("m"), K(""), NOW);
    REQUIRE(e);
    CHECK(lp_cache_entry_served(e) == NULL);
    uint64_t serial = lp_cache_entry_serial(e);
    const uint64_t memo = sizeof(lp_cache_served_t) + 2;
    lp_cache_stats_t st0, st1;
    lp_cache_zone_stats(z, &st0);
    CHECK_EQ_INT(lp_cache_entry_served_set(z, e, served(serial)), 0);
    lp_cache_zone_stats(z, &st1); /* charged to the zone with the entry */
    CHECK(st1.bytes == st0.bytes + memo);
    const lp_cache_served_t *first = lp_cache_entry_served(e);
    CHECK(first && first->serial == serial);
    /* the same head again: refused, the first stays */
    CHECK_EQ_INT(lp_cache_entry_served_set(z, e, served(serial)), -1);
    CHECK(lp_cache_entry_served(e) == first);
    /* Another holder (a reader on another worker may be reading a memo): a new head keeps
     * the old memos, newest first, up to LP_CACHE_SERVED_MAX; a new head is the plugin's (a
     * revalidation's), never read as the engine's own. */
    lp_cache_entry_t *other = lp_cache_entry_ref(e);
    char hb[16];
    uint64_t hs = 0;
    e->plain_head = 1;
    CHECK_EQ_INT((int)lp_cache_entry_plain_head(z, e, hb, sizeof hb, &hs), 4);
    CHECK(hs == serial && memcmp(hb, "head", 4) == 0);
    CHECK_EQ_INT(lp_cache_entry_set_head(z, e, K("second"), 0, NOW + 60), 0);
    CHECK_EQ_INT((int)lp_cache_entry_plain_head(z, e, hb, sizeof hb, &hs), 0);
    CHECK(lp_cache_entry_served(e) == first); /* kept: `other` may read it */
    CHECK(lp_cache_entry_serial(e) != serial);
    CHECK_EQ_INT(lp_cache_entry_served_set(z, e, served(lp_cache_entry_serial(e))), 0);
    CHECK(lp_cache_entry_served(e)->older == first);
    CHECK_EQ_INT(lp_cache_entry_served_set(z, e, served(serial + 1000)), 0);
    CHECK_EQ_INT(lp_cache_entry_served_set(z, e, served(serial + 1001)), 0);
    CHECK_EQ_INT(lp_cache_entry_served_set(z, e, served(serial + 1002)), -1); /* full */
    CHECK(lp_cache_entry_served(e)->serial == serial + 1001);
    lp_cache_zone_stats(z, &st1);
    CHECK(st1.bytes == st0.bytes + 4 * memo + (sizeof "second" - 1));
    /* Alone again (only this caller holds it): a new memo frees the older ones at once. */
    lp_cache_entry_unref(other);
    CHECK_EQ_INT(lp_cache_entry_served_set(z, e, served(serial + 1003)), 0);
    CHECK(lp_cache_entry_served(e)->older == NULL);
    lp_cache_zone_stats(z, &st1);
    CHECK(st1.bytes == st0.bytes + memo + (sizeof "second" - 1));
    /* and a new head frees them all */
    CHECK_EQ_INT(lp_cache_entry_set_head(z, e, K("third"), 0, NOW + 60), 0);
    CHECK(lp_cache_entry_served(e) == NULL);
    lp_cache_zone_stats(z, &st1);
    CHECK(st1.bytes == st0.bytes + (sizeof "third" - 1));
    lp_cache_entry_unref(e);
    CHECK_EQ_INT(lp_cache_purge(z, LP_CACHE_PURGE_ALL, NULL, 0) >= 1, 1);
    lp_cache_zone_stats(z, &st1); /* taken back with it */
    CHECK(st1.bytes == 0);
    lp_cache_zone_release(z);
}

static const lp_test_case_t tests[] = {
    {"blocks", blocks},
    {"blocks_limit_lowered", blocks_limit_lowered},
    {"room_follows_entries", room_follows_entries},
    {"table_follows_lowered_budget", table_follows_lowered_budget},
    {"entry_outlives_zone", entry_outlives_zone},
    {"small_body_in_entry", small_body_in_entry},
    {"served_memo", served_memo},
    {"field_bits", field_bits},
    {"worker_wall", worker_wall},
    {"store_and_get", store_and_get},
    {"large_body_many_chunks", large_body_many_chunks},
    {"object_limit_and_partial", object_limit_and_partial},
    {"replace_keeps_readers", replace_keeps_readers},
    {"lru_under_budget", lru_under_budget},
    {"index_in_budget", index_in_budget},
    {"variants", variants},
    {"purge_prefix", purge_prefix},
    {"purge_counts_responses", purge_counts_responses},
    {"locks", locks},
    {"readback_locks", readback_locks},
    {"set_head", set_head},
    {"stub_set_head", stub_set_head},
    {"waiters", waiters},
    {"fill_stream", fill_stream},
    {"fill_stream_fails", fill_stream_fails},
    {"fill_stream_threads", fill_stream_threads},
    {"threads", threads},
    {"registry", registry},
    {"fills_charged", fills_charged},
    {"small_fills_charged", small_fills_charged},
    {"locked_fills_reserved", locked_fills_reserved},
};

LP_TEST_MAIN(tests)
