/* engine/waf_scan.c: a group's values through a transformation chain and scanned with a real
 * Hyperscan database in one call; the hits in order, the transformed texts kept per request
 * (a chain's prefix reused, an unchanged value given back as itself), a failed scan reported
 * per value, and the state reused over many requests and values. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct lp_req_s;
#include "lp_test.h"
#include "lua_api.h"
#include "waf_scan.h"
#include "waf_transform.h"

#ifdef LP_HAVE_HS
#include <hs/hs.h>

static hs_database_t *db;
static hs_scratch_t *scratch;

static int setup(void)
{
    const char *pats[] = {"abc", "<script", "x"};
    unsigned flags[] = {HS_FLAG_SINGLEMATCH, HS_FLAG_SINGLEMATCH | HS_FLAG_CASELESS,
                        HS_FLAG_SINGLEMATCH};
    unsigned ids[] = {1, 2, 3};
    hs_compile_error_t *err = NULL;
    if (hs_compile_multi(pats, flags, ids, 3, HS_MODE_BLOCK, NULL, &db, &err) != HS_SUCCESS) {
        hs_free_compile_error(err);
        return -1;
    }
    return hs_alloc_scratch(db, &scratch) == HS_SUCCESS ? 0 : -1;
}

/* chain 1: urldecode; 2: urldecode, lowercase; 3: lowercase */
static lp_waf_scan_t *state_of(lp_waf_hs_scan_fn scan)
{
    lp_waf_scan_t *ws = lp_ffi_waf_scan_new(scan, 3);
    if (!ws)
        return NULL;
    int u = lp_ffi_waf_transform_id("urldecode"), l = lp_ffi_waf_transform_id("lowercase");
    if (lp_ffi_waf_scan_chain(ws, 1, 0, u) || lp_ffi_waf_scan_chain(ws, 2, 1, l) ||
        lp_ffi_waf_scan_chain(ws, 3, 0, l))
        return lp_ffi_waf_scan_free(ws), NULL;
    return ws;
}

static lp_waf_scan_t *state(void)
{
    return state_of((lp_waf_hs_scan_fn)hs_scan);
}

static void test_hits_in_order(void)
{
    REQUIRE(setup() == 0);
    lp_waf_scan_t *ws = state();
    REQUIRE(ws != NULL);
    const char *vals[] = {"a%62c", "%3CSCRIPT%3e x", "plain"};
    size_t lens[] = {5, 14, 5};
    const unsigned *hits;
    long n = lp_ffi_waf_scan_values(ws, 2, db, scratch, vals, lens, 3, &hits);
    REQUIRE_EQ_INT(n, 3);
    CHECK_EQ_INT(hits[0], 1); /* abc in value 0 */
    CHECK_EQ_INT(hits[1], 0);
    /* value 1: "<script> x": <script ends before x */
    CHECK_EQ_INT(hits[2], 2);
    CHECK_EQ_INT(hits[3], 1);
    CHECK_EQ_INT(hits[4], 3);
    CHECK_EQ_INT(hits[5], 1);
    /* the raw values: no decoding, so only the x */
    n = lp_ffi_waf_scan_values(ws, 0, db, scratch, vals, lens, 3, &hits);
    REQUIRE_EQ_INT(n, 1);
    CHECK_EQ_INT(hits[0], 3);
    CHECK_EQ_INT(hits[1], 1);
    lp_ffi_waf_scan_free(ws);
}

/* a multiMatch path (before test_tables_shrink frees the database): each value through chains 0, 1
 * (urldecode), 2 (urldecode, lowercase) */
static void test_steps(void)
{
    lp_waf_scan_t *ws = state();
    REQUIRE(ws != NULL);
    const char *vals[] = {"%3CSCRIPT%3e", "plain", "x"};
    size_t lens[] = {12, 5, 1};
    const unsigned path[] = {0, 1, 2};
    const unsigned *hits;
    long n = lp_ffi_waf_scan_steps(ws, path, 3, db, scratch, vals, lens, 3, &hits);
    /* value 0: "<SCRIPT>" (1) and "<script>" (2) both hit the caseless <script; the raw text
     * does not. Value 1 hits nothing. Value 2: "x" once, its unchanged steps not scanned. */
    REQUIRE_EQ_INT(n, 3);
    CHECK_EQ_INT(hits[0], 2);
    CHECK_EQ_INT(hits[1], 0);
    CHECK_EQ_INT(hits[2], 2);
    CHECK_EQ_INT(hits[3], 0);
    CHECK_EQ_INT(hits[4], 3);
    CHECK_EQ_INT(hits[5], 2);
    const unsigned bad[] = {0, 9};
    CHECK(lp_ffi_waf_scan_steps(ws, bad, 2, db, scratch, vals, lens, 3, &hits) == -1);
    lp_ffi_waf_scan_free(ws);
}

static void test_values_kept(void)
{
    lp_waf_scan_t *ws = state();
    REQUIRE(ws != NULL);
    const char *v = "%3CSCRIPT";
    const char *a, *b, *c;
    size_t an, bn, cn;
    REQUIRE(lp_ffi_waf_scan_value(ws, 1, v, 9, &a, &an) == 0);
    CHECK(an == 7 && memcmp(a, "<SCRIPT", 7) == 0);
    REQUIRE(lp_ffi_waf_scan_value(ws, 2, v, 9, &b, &bn) == 0);
    CHECK(bn == 7 && memcmp(b, "<script", 7) == 0);
    REQUIRE(lp_ffi_waf_scan_value(ws, 1, v, 9, &c, &cn) == 0);
    CHECK(c == a); /* kept, not computed again */
    const char *plain = "plain";
    REQUIRE(lp_ffi_waf_scan_value(ws, 2, plain, 5, &c, &cn) == 0);
    CHECK(c == plain && cn == 5); /* no step changed it: the value itself */
    /* a chain with no step set cannot run here */
    lp_waf_scan_t *bare = lp_ffi_waf_scan_new((lp_waf_hs_scan_fn)hs_scan, 2);
    REQUIRE(bare != NULL);
    CHECK(lp_ffi_waf_scan_value(bare, 1, v, 9, &c, &cn) == -1);
    const unsigned *hits;
    CHECK(lp_ffi_waf_scan_values(bare, 2, db, scratch, &v, (size_t[]){9}, 1, &hits) == -1);
    CHECK(lp_ffi_waf_scan_chain(bare, 1, 1, 1) == -1); /* its own parent */
    CHECK(lp_ffi_waf_scan_chain(bare, 3, 0, 1) == -1); /* out of range */
    CHECK(lp_ffi_waf_scan_chain(bare, 1, 0, LP_WAF_T_COUNT) == -1);
    lp_ffi_waf_scan_free(bare);
    lp_ffi_waf_scan_free(ws);
}

/* A chain whose earlier steps leave the value as it was ends in its last step over the value:
 * the same text as that step alone (the caller's one-step chain, or the state's own when the
 * caller set none), computed once; a value an earlier step changes goes through the step. */
static void test_unchanged_prefix(void)
{
    int u = lp_ffi_waf_transform_id("urldecode"), l = lp_ffi_waf_transform_id("lowercase");
    /* 1: urldecode; 2: urldecode, lowercase; no one-step lowercase */
    lp_waf_scan_t *ws = lp_ffi_waf_scan_new((lp_waf_hs_scan_fn)hs_scan, 2);
    REQUIRE(ws != NULL);
    REQUIRE(lp_ffi_waf_scan_chain(ws, 1, 0, u) == 0 && lp_ffi_waf_scan_chain(ws, 2, 1, l) == 0);
    const char *t, *t2;
    size_t tn, tn2;
    REQUIRE(lp_ffi_waf_scan_value(ws, 2, "MiXeD", 5, &t, &tn) == 0);
    CHECK(tn == 5 && memcmp(t, "mixed", 5) == 0);
    REQUIRE(lp_ffi_waf_scan_value(ws, 2, "MiXeD", 5, &t2, &tn2) == 0);
    CHECK(t2 == t);
    REQUIRE(lp_ffi_waf_scan_value(ws, 2, "%41B", 4, &t, &tn) == 0);
    CHECK(tn == 2 && memcmp(t, "ab", 2) == 0);
    lp_ffi_waf_scan_free(ws);
    /* with the caller's one-step chain 3 (lowercase): chain 2 shares its text */
    ws = state();
    REQUIRE(ws != NULL);
    REQUIRE(lp_ffi_waf_scan_value(ws, 3, "MiXeD", 5, &t, &tn) == 0);
    REQUIRE(lp_ffi_waf_scan_value(ws, 2, "MiXeD", 5, &t2, &tn2) == 0);
    CHECK(t2 == t && tn2 == 5 && memcmp(t2, "mixed", 5) == 0);
    /* many values: the memo grows while texts are made for both chains */
    char vals[600][8];
    for (int i = 0; i < 600; i++) {
        snprintf(vals[i], sizeof vals[i], "V%d", i);
        size_t n = strlen(vals[i]);
        REQUIRE(lp_ffi_waf_scan_value(ws, 2, vals[i], n, &t, &tn) == 0);
        REQUIRE(lp_ffi_waf_scan_value(ws, 3, vals[i], n, &t2, &tn2) == 0);
        CHECK(t == t2 && tn == n && t[0] == 'v' && memcmp(t + 1, vals[i] + 1, n - 1) == 0);
    }
    lp_ffi_waf_scan_free(ws);
}

static void test_failed_scan(void)
{
    lp_waf_scan_t *ws = state();
    REQUIRE(ws != NULL);
    const char *vals[] = {"abc", "x"};
    size_t lens[] = {3, 1};
    const unsigned *hits;
    /* no scratch: Hyperscan refuses each scan */
    long n = lp_ffi_waf_scan_values(ws, 0, db, NULL, vals, lens, 2, &hits);
    REQUIRE_EQ_INT(n, 2);
    CHECK(hits[0] == 0xFFFFFFFFu && hits[1] == 0);
    CHECK(hits[2] == 0xFFFFFFFFu && hits[3] == 1);
    lp_ffi_waf_scan_free(ws);
}

/* Hyperscan's hs_scan, counted: which values the state scans and which it answers itself. */
static unsigned scans;
static int counted_scan(const void *d, const char *data, unsigned int length, unsigned int flags,
                        void *sc, lp_waf_hs_match_fn on_event, void *ctx)
{
    scans++;
    return hs_scan(d, data, length, flags, sc, (match_event_handler)on_event, ctx);
}

/* state()'s chains over counted_scan, with the tests' database registered. */
static lp_waf_scan_t *three_chains(void)
{
    lp_waf_scan_t *ws = state_of(counted_scan);
    if (ws && lp_ffi_waf_scan_db(ws, db) == 0)
        return ws;
    lp_ffi_waf_scan_free(ws);
    return NULL;
}

/* A value's hits are kept across requests, by its bytes (not its address), chain and
 * database; a failed scan's answer is not. */
static void test_results_kept(void)
{
    lp_waf_scan_t *ws = three_chains();
    REQUIRE(ws != NULL);
    char a[2][8], b[2][8];
    const unsigned *hits;
    scans = 0;
    for (int round = 0; round < 2; round++) {
        lp_ffi_waf_scan_reset(ws);
        memcpy(a[round], "A%62C", 6); /* a copy each round: another address, the same bytes */
        memcpy(b[round], "plain", 6);
        const char *vals[] = {b[round], a[round]};
        long n = lp_ffi_waf_scan_values(ws, 2, db, scratch, vals, (size_t[]){5, 5}, 2, &hits);
        REQUIRE_EQ_INT(n, 1);
        CHECK(hits[0] == 1 && hits[1] == 1);
        CHECK_EQ_INT(scans, 2); /* the second round scanned nothing */
    }
    /* the same bytes through another chain: "a%62c" holds no abc */
    const char *v[] = {a[1]};
    CHECK_EQ_INT(lp_ffi_waf_scan_values(ws, 3, db, scratch, v, (size_t[]){5}, 1, &hits), 0);
    CHECK_EQ_INT(scans, 3);
    /* a failed scan (no scratch) answers every condition, and is asked again next time */
    const char *w[] = {"xabc"};
    REQUIRE_EQ_INT(lp_ffi_waf_scan_values(ws, 0, db, NULL, w, (size_t[]){4}, 1, &hits), 1);
    CHECK(hits[0] == 0xFFFFFFFFu);
    lp_ffi_waf_scan_reset(ws);
    REQUIRE_EQ_INT(lp_ffi_waf_scan_values(ws, 0, db, scratch, w, (size_t[]){4}, 1, &hits), 2);
    CHECK(hits[0] == 3 && hits[2] == 1); /* x ends first */
    CHECK_EQ_INT(scans, 5);
    lp_ffi_waf_scan_free(ws);
}

/* A multiMatch path's hits are kept too (under its last chain, apart from that chain's own),
 * repeats included; a list of chains that is no path is scanned each time. */
static void test_path_results_kept(void)
{
    lp_waf_scan_t *ws = three_chains();
    REQUIRE(ws != NULL);
    const unsigned path[] = {0, 1, 2}, notpath[] = {0, 2}; /* 2's parent is 1 */
    const unsigned *hits;
    char v[2][16];
    scans = 0;
    for (int round = 0; round < 2; round++) {
        lp_ffi_waf_scan_reset(ws);
        memcpy(v[round], "%3CSCRIPT%3e", 13); /* another address, the same bytes */
        const char *vals[] = {v[round]};
        long n = lp_ffi_waf_scan_steps(ws, path, 3, db, scratch, vals, (size_t[]){12}, 1, &hits);
        REQUIRE_EQ_INT(n, 2); /* "<SCRIPT>" and "<script>": id 2 twice */
        CHECK(hits[0] == 2 && hits[1] == 0 && hits[2] == 2 && hits[3] == 0);
        CHECK_EQ_INT(scans, 3); /* its three texts; the second round scanned nothing */
    }
    /* chain 2 alone, on the same bytes: its own answer ("<script>" once), scanned */
    const char *one[] = {v[1]};
    CHECK_EQ_INT(lp_ffi_waf_scan_values(ws, 2, db, scratch, one, (size_t[]){12}, 1, &hits), 1);
    CHECK_EQ_INT(scans, 4);
    for (int round = 0; round < 2; round++) {
        lp_ffi_waf_scan_reset(ws);
        CHECK_EQ_INT(
            lp_ffi_waf_scan_steps(ws, notpath, 2, db, scratch, one, (size_t[]){12}, 1, &hits), 1);
    }
    CHECK_EQ_INT(scans, 8); /* each round: the raw text and "<script>" */
    lp_ffi_waf_scan_free(ws);
}

/* A thousand values kept (a quarter of the slots) are all answered the next time: with one slot
 * a value, ~100 pairs of them shared a slot and took it from each other (both scanned again at
 * every round); in sets of four, next to none. */
static void test_results_sets(void)
{
    lp_waf_scan_t *ws = lp_ffi_waf_scan_new(counted_scan, 0);
    REQUIRE(ws != NULL);
    enum { N = 1000 };
    static char buf[N][16];
    const char *vals[N];
    size_t lens[N];
    for (int i = 0; i < N; i++) {
        lens[i] = (size_t)snprintf(buf[i], sizeof buf[i], "value-%d", i);
        vals[i] = buf[i];
    }
    const unsigned *hits;
    REQUIRE(lp_ffi_waf_scan_db(ws, db) == 0);
    scans = 0;
    lp_ffi_waf_scan_reset(ws);
    REQUIRE(lp_ffi_waf_scan_values(ws, 0, db, scratch, vals, lens, N, &hits) == 0);
    REQUIRE_EQ_INT(scans, N);
    lp_ffi_waf_scan_reset(ws);
    REQUIRE(lp_ffi_waf_scan_values(ws, 0, db, scratch, vals, lens, N, &hits) == 0);
    CHECK(scans - N < 50);
    lp_ffi_waf_scan_free(ws);
}

/* A stand-in for hs_scan whose "database" is the id every value hits (a fake one can be
 * freed and another made at its address, which Hyperscan's allocator decides). */
static int id_scan(const void *d, const char *data, unsigned int length, unsigned int flags,
                   void *sc, lp_waf_hs_match_fn on_event, void *ctx)
{
    (void)data, (void)flags, (void)sc;
    scans++;
    on_event(*(const unsigned *)d, 0, length, 0, ctx);
    return 0;
}

/* Results are kept by the serial of the database's registration, not by its address: a
 * database at a freed one's address, registered, is scanned and answers its own hits; one
 * never registered is scanned each time. */
static void test_results_by_serial(void)
{
    lp_waf_scan_t *ws = lp_ffi_waf_scan_new(id_scan, 0);
    REQUIRE(ws != NULL);
    unsigned *fake = malloc(sizeof *fake), other = 9;
    REQUIRE(fake != NULL);
    *fake = 5;
    REQUIRE(lp_ffi_waf_scan_db(ws, fake) == 0);
    const char *v[] = {"value"};
    const unsigned *hits;
    scans = 0;
    for (int round = 0; round < 2; round++) {
        lp_ffi_waf_scan_reset(ws);
        REQUIRE_EQ_INT(lp_ffi_waf_scan_values(ws, 0, fake, NULL, v, (size_t[]){5}, 1, &hits), 1);
        CHECK_EQ_INT(hits[0], 5);
    }
    CHECK_EQ_INT(scans, 1);
    /* "freed", and another database made at the same address (a rule set's group took a new
     * one): registered again, it is scanned */
    *fake = 7;
    REQUIRE(lp_ffi_waf_scan_db(ws, fake) == 0);
    lp_ffi_waf_scan_reset(ws);
    REQUIRE_EQ_INT(lp_ffi_waf_scan_values(ws, 0, fake, NULL, v, (size_t[]){5}, 1, &hits), 1);
    CHECK_EQ_INT(hits[0], 7);
    CHECK_EQ_INT(scans, 2);
    /* not registered: scanned each time */
    for (int round = 0; round < 2; round++) {
        lp_ffi_waf_scan_reset(ws);
        REQUIRE_EQ_INT(lp_ffi_waf_scan_values(ws, 0, &other, NULL, v, (size_t[]){5}, 1, &hits), 1);
        CHECK_EQ_INT(hits[0], 9);
    }
    CHECK_EQ_INT(scans, 4);
    CHECK(lp_ffi_waf_scan_db(ws, NULL) == -1);
    free(fake);
    lp_ffi_waf_scan_free(ws);
}

/* What is kept across requests is bounded (the values' bytes) and ages out: requests that
 * ask for none of it free it all, tables included. */
static void test_kept_ages_out(void)
{
    lp_waf_scan_t *ws = lp_ffi_waf_scan_new(id_scan, 0);
    REQUIRE(ws != NULL);
    unsigned id = 3;
    REQUIRE(lp_ffi_waf_scan_db(ws, &id) == 0);
    enum { N = 2000, LEN = 400 };
    static char buf[N][LEN];
    static const char *vals[N];
    static size_t lens[N];
    for (int i = 0; i < N; i++) {
        memset(buf[i], 'a', LEN);
        snprintf(buf[i], LEN, "%d", i);
        vals[i] = buf[i];
        lens[i] = LEN;
    }
    const unsigned *hits;
    lp_ffi_waf_scan_reset(ws);
    REQUIRE_EQ_INT(lp_ffi_waf_scan_values(ws, 0, &id, NULL, vals, lens, N, &hits), N);
    size_t results, values, bytes;
    lp_waf_scan_kept(ws, &results, &values, &bytes);
    CHECK(values > 0 && results >= values);
    CHECK(bytes <= 256 * 1024 && values < N); /* 800 KB offered */
    for (int r = 0; r < 5000; r++)
        lp_ffi_waf_scan_reset(ws);
    lp_waf_scan_kept(ws, &results, &values, &bytes);
    CHECK_EQ_INT((long)results, 0);
    CHECK_EQ_INT((long)values, 0);
    CHECK_EQ_INT((long)bytes, 0);
    /* and it keeps again */
    scans = 0;
    for (int r = 0; r < 2; r++) {
        lp_ffi_waf_scan_reset(ws);
        REQUIRE_EQ_INT(lp_ffi_waf_scan_values(ws, 0, &id, NULL, vals, lens, 10, &hits), 10);
    }
    CHECK_EQ_INT(scans, 10);
    /* a value asked for at every request stays */
    for (int r = 0; r < 5000; r++) {
        lp_ffi_waf_scan_reset(ws);
        REQUIRE_EQ_INT(lp_ffi_waf_scan_values(ws, 0, &id, NULL, vals, lens, 1, &hits), 1);
    }
    lp_waf_scan_kept(ws, &results, &values, &bytes);
    CHECK_EQ_INT((long)results, 1);
    CHECK_EQ_INT((long)values, 1);
    CHECK_EQ_INT(scans, 10);
    lp_ffi_waf_scan_free(ws);
}

/* Each round's values sit at the same addresses with the same lengths as the last round's
 * (the memo's keys) but say something else: a memo kept over the reset answers stale. */
static void test_many_requests(void)
{
    lp_waf_scan_t *ws = state();
    REQUIRE(ws != NULL);
    enum { N = 3000 };
    static char bufs[N][40];
    static const char *vals[N];
    static size_t lens[N];
    for (int round = 0; round < 5; round++) {
        lp_ffi_waf_scan_reset(ws);
        int r = round % 7;
        for (int i = 0; i < N; i++) {
            /* every 7th value, from the round's own first, hides abc behind an escape */
            int len = snprintf(bufs[i], sizeof bufs[i], "r%d-%04d-%s", round, i,
                               i % 7 == r ? "A%62C%20wd" : "plain%20wd");
            vals[i] = bufs[i];
            lens[i] = (size_t)len;
        }
        const unsigned *hits;
        long n = lp_ffi_waf_scan_values(ws, 2, db, scratch, vals, lens, N, &hits);
        REQUIRE_EQ_INT(n, (N - r + 6) / 7);
        for (long j = 0; j < n; j++)
            if (!CHECK(hits[2 * j] == 1 && hits[2 * j + 1] == (unsigned)(r + 7 * j)))
                break;
        char want[40];
        const char *t;
        size_t tn;
        REQUIRE(lp_ffi_waf_scan_value(ws, 2, vals[r], lens[r], &t, &tn) == 0);
        int wn = snprintf(want, sizeof want, "r%d-%04d-abc wd", round, r);
        CHECK(tn == (size_t)wn && memcmp(t, want, tn) == 0);
        REQUIRE(lp_ffi_waf_scan_value(ws, 1, vals[r + 1], lens[r + 1], &t, &tn) == 0);
        wn = snprintf(want, sizeof want, "r%d-%04d-plain wd", round, r + 1);
        CHECK(tn == (size_t)wn && memcmp(t, want, tn) == 0);
        REQUIRE(lp_ffi_waf_scan_value(ws, 3, vals[r + 1], lens[r + 1], &t, &tn) == 0);
        CHECK(t == vals[r + 1]); /* lowercase alone changes nothing in it */
    }
    lp_ffi_waf_scan_free(ws);
}

/* A request with many values grows the memo and the hit array; the reset after a small
 * request gives them back, and the smaller tables still answer right. */
static void test_tables_shrink(void)
{
    lp_waf_scan_t *ws = state();
    REQUIRE(ws != NULL);
    size_t memo0, out0, memo, out;
    lp_waf_scan_capacity(ws, &memo0, &out0);
    enum { N = 20000 };
    static char bufs[N][24];
    static const char *vals[N];
    static size_t lens[N];
    for (int i = 0; i < N; i++) {
        lens[i] = (size_t)snprintf(bufs[i], sizeof bufs[i], "%d-a%%62c", i);
        vals[i] = bufs[i];
    }
    const unsigned *hits;
    lp_ffi_waf_scan_reset(ws);
    REQUIRE_EQ_INT(lp_ffi_waf_scan_values(ws, 2, db, scratch, vals, lens, N, &hits), N);
    lp_waf_scan_capacity(ws, &memo, &out);
    CHECK(memo >= 2 * N && out >= 2 * N); /* two chains kept a value; an (id, k) pair a hit */
    lp_ffi_waf_scan_reset(ws);            /* the large request's tables serve the next one */
    lp_waf_scan_capacity(ws, &memo, &out);
    CHECK(memo >= 2 * N && out >= 2 * N);
    const char *small[] = {"a%62c", "none"};
    REQUIRE_EQ_INT(lp_ffi_waf_scan_values(ws, 2, db, scratch, small, (size_t[]){5, 4}, 2, &hits),
                   1);
    lp_ffi_waf_scan_reset(ws); /* after a small one they shrink */
    lp_waf_scan_capacity(ws, &memo, &out);
    CHECK_EQ_INT((long)memo, (long)memo0);
    CHECK(out <= 256);
    for (int round = 0; round < 3; round++) {
        REQUIRE_EQ_INT(lp_ffi_waf_scan_values(ws, 2, db, scratch, vals, lens, 100, &hits), 100);
        CHECK(hits[0] == 1 && hits[1] == 0 && hits[198] == 1 && hits[199] == 99);
        const char *t;
        size_t tn;
        REQUIRE(lp_ffi_waf_scan_value(ws, 2, vals[99], lens[99], &t, &tn) == 0);
        CHECK(tn == 6 && memcmp(t, "99-abc", 6) == 0);
        lp_ffi_waf_scan_reset(ws);
    }
    lp_ffi_waf_scan_free(ws);
    hs_free_scratch(scratch);
    hs_free_database(db);
}

/* A value larger than the arena's chunks, then ordinary requests again. */
static void test_large_value(void)
{
    lp_waf_scan_t *ws = state();
    REQUIRE(ws != NULL);
    enum { N = 100000 };
    static char big[3 * N + 3];
    for (int i = 0; i < N; i++)
        memcpy(big + 3 * i, "%41", 3);
    memcpy(big + 3 * N, "abc", 3);
    const char *vals[] = {big};
    size_t lens[] = {sizeof big};
    const unsigned *hits;
    for (int round = 0; round < 3; round++) {
        lp_ffi_waf_scan_reset(ws);
        long n = lp_ffi_waf_scan_values(ws, 2, db, scratch, vals, lens, 1, &hits);
        REQUIRE_EQ_INT(n, 1);
        CHECK(hits[0] == 1 && hits[1] == 0);
        const char *t;
        size_t tn;
        REQUIRE(lp_ffi_waf_scan_value(ws, 2, big, sizeof big, &t, &tn) == 0);
        CHECK(tn == N + 3 && t[0] == 'a' && memcmp(t + N, "abc", 3) == 0);
        lp_ffi_waf_scan_reset(ws);
        const char *small[] = {"a%62c"};
        n = lp_ffi_waf_scan_values(ws, 2, db, scratch, small, (size_t[]){5}, 1, &hits);
        CHECK_EQ_INT(n, 1);
    }
    lp_ffi_waf_scan_free(ws);
}

/* A value matching more patterns than a value's hits hold: one hit for every condition. */
static void test_hits_capped(void)
{
    enum { P = 70 };
    static char texts[P][4];
    const char *pats[P];
    unsigned flags[P], ids[P];
    for (int i = 0; i < P; i++) {
        snprintf(texts[i], sizeof texts[i], "q%02d", i);
        pats[i] = texts[i];
        flags[i] = HS_FLAG_SINGLEMATCH;
        ids[i] = (unsigned)i + 1;
    }
    hs_database_t *many = NULL;
    hs_scratch_t *sc = NULL;
    hs_compile_error_t *err = NULL;
    if (hs_compile_multi(pats, flags, ids, P, HS_MODE_BLOCK, NULL, &many, &err) != HS_SUCCESS)
        hs_free_compile_error(err);
    REQUIRE(many != NULL);
    REQUIRE(hs_alloc_scratch(many, &sc) == HS_SUCCESS);
    static char all[3 * P + 1];
    for (int i = 0; i < P; i++)
        memcpy(all + 3 * i, texts[i], 3);
    lp_waf_scan_t *ws = state();
    REQUIRE(ws != NULL);
    const char *vals[] = {"q01 q02 q03", all};
    size_t lens[] = {11, 3 * P};
    const unsigned *hits;
    long n = lp_ffi_waf_scan_values(ws, 0, many, sc, vals, lens, 2, &hits);
    REQUIRE_EQ_INT(n, 4);
    CHECK(hits[0] == 2 && hits[2] == 3 && hits[4] == 4);
    CHECK(hits[1] == 0 && hits[3] == 0 && hits[5] == 0);
    CHECK(hits[6] == 0xFFFFFFFFu && hits[7] == 1);
    lp_ffi_waf_scan_free(ws);
    hs_free_scratch(sc);
    hs_free_database(many);
}

/* A segment as engine.lua fills it: values copied to fresh addresses (another request's
 * strings, the same bytes), n set, gen 0. */
struct seg_buf {
    lp_waf_seg_t seg;
    const char *vals[4];
    size_t lens[4];
    unsigned long long keys[4];
    char bytes[4][32];
};

static void seg_fill(struct seg_buf *b, const char *const *vals, unsigned n)
{
    for (unsigned k = 0; k < n; k++) {
        b->lens[k] = strlen(vals[k]);
        memcpy(b->bytes[k], vals[k], b->lens[k] + 1);
        b->vals[k] = b->bytes[k];
    }
    b->seg = (lp_waf_seg_t){.vals = b->vals, .lens = b->lens, .keys = b->keys, .n = n, .gen = 0};
}

/* Segments: hits as (id, segment, value), in order; each segment read by several scans of a
 * request (another chain, a multiMatch path); the next request's copies answered from what
 * was kept, without a scan (the values that hit nothing by their bits). */
static void test_segments(void)
{
    lp_waf_scan_t *ws = three_chains();
    REQUIRE(ws != NULL);
    static struct seg_buf a[2], b[2];
    const unsigned chain2[] = {2}, chain0[] = {0}, path[] = {0, 1, 2};
    const unsigned *hits;
    scans = 0;
    for (int round = 0; round < 2; round++) {
        lp_ffi_waf_scan_reset(ws);
        seg_fill(&a[round], (const char *[]){"a%62C", "plain", "%3CScript"}, 3);
        seg_fill(&b[round], (const char *[]){"zz", "XY"}, 2);
        lp_waf_seg_t *segs[] = {&a[round].seg, &b[round].seg};
        /* first with reads (id 1 reads segment 1 only, 2 segment 0, 3 neither): the hits
         * left out are kept all the same (the next call, unfiltered, is answered whole) */
        const unsigned long long reads[] = {0, 2, 1, 0};
        long n = lp_ffi_waf_scan_segs(ws, chain2, 1, db, scratch, segs, 2, reads, 4, &hits);
        REQUIRE_EQ_INT(n, 1);
        CHECK(hits[0] == 2 && hits[1] == 0 && hits[2] == 2);
        n = lp_ffi_waf_scan_segs(ws, chain2, 1, db, scratch, segs, 2, NULL, 0, &hits);
        REQUIRE_EQ_INT(n, 3);
        CHECK(hits[0] == 1 && hits[1] == 0 && hits[2] == 0); /* abc: value 0 of segment 0 */
        CHECK(hits[3] == 2 && hits[4] == 0 && hits[5] == 2); /* <script */
        CHECK(hits[6] == 3 && hits[7] == 1 && hits[8] == 1); /* x of "xy" in segment 1 */
        /* the raw values: nothing ("XY" is upper case) */
        CHECK_EQ_INT(lp_ffi_waf_scan_segs(ws, chain0, 1, db, scratch, segs, 2, NULL, 0, &hits), 0);
        /* segment 1 alone, through the path raw, urldecode, lowercase: "xy" */
        n = lp_ffi_waf_scan_segs(ws, path, 3, db, scratch, segs + 1, 1, NULL, 0, &hits);
        REQUIRE_EQ_INT(n, 1);
        CHECK(hits[0] == 3 && hits[1] == 0 && hits[2] == 1);
        /* round 0: 5 values through chain 2, 5 raw, then "zz" once (no step changes it)
         * and "XY" twice (raw, lower case); round 1: nothing scanned */
        CHECK_EQ_INT(scans, 13);
    }
    lp_ffi_waf_scan_free(ws);
}

/* A stand-in for hs_scan whose "database" names a byte and an id: the id hits a value holding
 * the byte, else nothing. */
struct byte_db {
    char c;
    unsigned id;
};
static int byte_scan(const void *d, const char *data, unsigned int length, unsigned int flags,
                     void *sc, lp_waf_hs_match_fn on_event, void *ctx)
{
    (void)flags, (void)sc;
    const struct byte_db *b = d;
    scans++;
    if (memchr(data, b->c, length))
        on_event(b->id, 0, length, 0, ctx);
    return 0;
}

/* "Nothing hit" is known per database serial and chain: another chain, or another database
 * (one at the same address registered again), scans; past the 64 bits a state gives out,
 * results are kept as before. */
static void test_none_bits(void)
{
    lp_waf_scan_t *ws = lp_ffi_waf_scan_new(byte_scan, 1);
    REQUIRE(ws != NULL);
    REQUIRE(lp_ffi_waf_scan_chain(ws, 1, 0, lp_ffi_waf_transform_id("lowercase")) == 0);
    enum { NDB = 70 };
    static struct byte_db dbs[NDB];
    for (int i = 0; i < NDB; i++) {
        dbs[i] = (struct byte_db){.c = 'q', .id = (unsigned)i + 1};
        REQUIRE(lp_ffi_waf_scan_db(ws, &dbs[i]) == 0);
    }
    const unsigned raw[] = {0}, low[] = {1};
    const unsigned *hits;
    static struct seg_buf s[3];
    scans = 0;
    for (int round = 0; round < 2; round++) {
        lp_ffi_waf_scan_reset(ws);
        seg_fill(&s[round], (const char *[]){"Q", "zz"}, 2);
        lp_waf_seg_t *segs[] = {&s[round].seg};
        for (int i = 0; i < NDB; i++)
            REQUIRE_EQ_INT(lp_ffi_waf_scan_segs(ws, raw, 1, &dbs[i], NULL, segs, 1, NULL, 0, &hits),
                           0);
        /* lower case: "q" hits */
        long n = lp_ffi_waf_scan_segs(ws, low, 1, &dbs[0], NULL, segs, 1, NULL, 0, &hits);
        REQUIRE_EQ_INT(n, 1);
        CHECK(hits[0] == 1 && hits[2] == 0);
    }
    CHECK_EQ_INT(scans, 2 * NDB + 2); /* all in the first round */
    /* the database at dbs[0]'s address changed and registered again: scanned, and it hits */
    dbs[0].c = 'z';
    REQUIRE(lp_ffi_waf_scan_db(ws, &dbs[0]) == 0);
    lp_ffi_waf_scan_reset(ws);
    seg_fill(&s[2], (const char *[]){"Q", "zz"}, 2);
    lp_waf_seg_t *segs[] = {&s[2].seg};
    REQUIRE_EQ_INT(lp_ffi_waf_scan_segs(ws, raw, 1, &dbs[0], NULL, segs, 1, NULL, 0, &hits), 1);
    CHECK(hits[0] == 1 && hits[1] == 0 && hits[2] == 1);
    CHECK_EQ_INT(scans, 2 * NDB + 4);
    lp_ffi_waf_scan_free(ws);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_hits_in_order),     LP_TEST_ENTRY(test_steps),
    LP_TEST_ENTRY(test_large_value),       LP_TEST_ENTRY(test_values_kept),
    LP_TEST_ENTRY(test_unchanged_prefix),  LP_TEST_ENTRY(test_failed_scan),
    LP_TEST_ENTRY(test_results_kept),      LP_TEST_ENTRY(test_hits_capped),
    LP_TEST_ENTRY(test_path_results_kept), LP_TEST_ENTRY(test_results_sets),
    LP_TEST_ENTRY(test_many_requests),     LP_TEST_ENTRY(test_results_by_serial),
    LP_TEST_ENTRY(test_kept_ages_out),     LP_TEST_ENTRY(test_segments),
    LP_TEST_ENTRY(test_none_bits),         LP_TEST_ENTRY(test_tables_shrink),
};
#else
static void test_without_hyperscan(void)
{
    /* the transformations still run through the state */
    lp_waf_scan_t *ws = lp_ffi_waf_scan_new(NULL, 1);
    REQUIRE(ws != NULL);
    REQUIRE(lp_ffi_waf_scan_chain(ws, 1, 0, lp_ffi_waf_transform_id("lowercase")) == 0);
    const char *t;
    size_t tn;
    REQUIRE(lp_ffi_waf_scan_value(ws, 1, "AB", 2, &t, &tn) == 0);
    CHECK(tn == 2 && memcmp(t, "ab", 2) == 0);
    lp_ffi_waf_scan_free(ws);
}
static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_without_hyperscan),
};
#endif

LP_TEST_MAIN(tests)
