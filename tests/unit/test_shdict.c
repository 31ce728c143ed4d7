/* engine/shdict.c: OpenResty's ngx.shared.DICT semantics, TTLs on an injected clock, LRU
 * eviction and forcible, safe_* never evicting, lists, exact byte accounting, resize, the
 * registry, and exact counts under two threads. */
#include <pthread.h>
#include <string.h>
#include "lp_test.h"
#include "shdict.h"

static double fake_now = 1000.0;
static double fake_clock(void)
{
    return fake_now;
}

#define K(s) (s), strlen(s)

static lp_shdict_val_t vstr(const char *s)
{
    return (lp_shdict_val_t){.type = LP_SHDICT_TSTR, .str = s, .len = strlen(s)};
}

static lp_shdict_val_t vnum(double n)
{
    return (lp_shdict_val_t){.type = LP_SHDICT_TNUM, .num = n};
}

static int set(lp_shdict_t *d, int op, const char *k, lp_shdict_val_t v, double exptime)
{
    return lp_shdict_store(d, op, k, strlen(k), &v, exptime);
}

static int get_str(lp_shdict_t *d, const char *k, char *out, size_t outlen)
{
    lp_shdict_val_t v;
    int rc = lp_shdict_get(d, k, strlen(k), 0, &v);
    if (rc)
        return rc;
    snprintf(out, outlen, "%.*s", (int)v.len, v.str ? v.str : "");
    return v.type;
}

static size_t charge(const char *k, size_t vlen)
{
    return LP_SHDICT_ENTRY_OVERHEAD + strlen(k) + vlen;
}

static void get_set_types_and_flags(void)
{
    lp_shdict_t *d = lp_shdict_new("t", 65536);
    REQUIRE(d);
    lp_shdict_val_t v = vstr("hello");
    v.flags = 7;
    CHECK_EQ_INT(lp_shdict_store(d, LP_SHDICT_SET, K("s"), &v, 0), 0);
    CHECK_EQ_INT(set(d, LP_SHDICT_SET, "n", vnum(3.5), 0), 0);
    CHECK_EQ_INT(
        set(d, LP_SHDICT_SET, "b", (lp_shdict_val_t){.type = LP_SHDICT_TBOOL, .num = 1}, 0), 0);
    lp_shdict_val_t out;
    CHECK_EQ_INT(lp_shdict_get(d, K("s"), 0, &out), 0);
    CHECK_EQ_INT(out.type, LP_SHDICT_TSTR);
    CHECK_EQ_INT(out.flags, 7);
    CHECK(out.len == 5 && memcmp(out.str, "hello", 5) == 0);
    CHECK_EQ_INT(lp_shdict_get(d, K("n"), 0, &out), 0);
    CHECK(out.type == LP_SHDICT_TNUM && out.num == 3.5 && out.flags == 0);
    CHECK_EQ_INT(lp_shdict_get(d, K("b"), 0, &out), 0);
    CHECK(out.type == LP_SHDICT_TBOOL && out.num == 1);
    CHECK_EQ_INT(lp_shdict_get(d, K("none"), 0, &out), LP_SHDICT_ENOTFOUND);
    /* An empty string is a value. */
    CHECK_EQ_INT(set(d, LP_SHDICT_SET, "e", vstr(""), 0), 0);
    CHECK_EQ_INT(lp_shdict_get(d, K("e"), 0, &out), 0);
    CHECK(out.type == LP_SHDICT_TSTR && out.len == 0);
    /* A nil value deletes. */
    CHECK_EQ_INT(set(d, LP_SHDICT_SET, "s", (lp_shdict_val_t){.type = LP_SHDICT_TNIL}, 0), 0);
    CHECK_EQ_INT(lp_shdict_get(d, K("s"), 0, &out), LP_SHDICT_ENOTFOUND);
    /* Keys: empty and too long are refused. */
    CHECK_EQ_INT(lp_shdict_store(d, LP_SHDICT_SET, "", 0, &v, 0), LP_SHDICT_EINVAL);
    CHECK_EQ_INT(lp_shdict_get(d, "x", LP_SHDICT_KEY_MAX + 1, 0, &out), LP_SHDICT_EINVAL);
    lp_shdict_free(d);
}

static void add_replace(void)
{
    lp_shdict_t *d = lp_shdict_new("t", 65536);
    REQUIRE(d);
    CHECK_EQ_INT(set(d, LP_SHDICT_REPLACE, "k", vstr("a"), 0), LP_SHDICT_ENOTFOUND);
    CHECK_EQ_INT(set(d, LP_SHDICT_ADD, "k", vstr("a"), 0), 0);
    CHECK_EQ_INT(set(d, LP_SHDICT_ADD, "k", vstr("b"), 0), LP_SHDICT_EEXISTS);
    CHECK_EQ_INT(set(d, LP_SHDICT_REPLACE, "k", vstr("cc"), 0), 0);
    char buf[16];
    CHECK_EQ_INT(get_str(d, "k", buf, sizeof(buf)), LP_SHDICT_TSTR);
    CHECK_STR(buf, "cc");
    lp_shdict_free(d);
}

static void ttl_on_injected_clock(void)
{
    lp_shdict_set_clock(fake_clock);
    fake_now = 1000.0;
    lp_shdict_t *d = lp_shdict_new("t", 65536);
    REQUIRE(d);
    CHECK_EQ_INT(set(d, LP_SHDICT_SET, "k", vstr("v"), 10), 0);
    double ttl = -1;
    CHECK_EQ_INT(lp_shdict_ttl(d, K("k"), &ttl), 0);
    CHECK(ttl == 10);
    fake_now += 4;
    CHECK_EQ_INT(lp_shdict_ttl(d, K("k"), &ttl), 0);
    CHECK(ttl == 6);
    fake_now += 6;
    lp_shdict_val_t out;
    CHECK_EQ_INT(lp_shdict_get(d, K("k"), 0, &out), LP_SHDICT_ENOTFOUND);
    CHECK_EQ_INT(lp_shdict_ttl(d, K("k"), &ttl), LP_SHDICT_ENOTFOUND);
    /* get_stale sees it until it is freed. */
    CHECK_EQ_INT(lp_shdict_get(d, K("k"), 1, &out), 0);
    CHECK(out.stale == 1 && out.len == 1);
    /* add treats an expired key as absent; replace as not found. */
    CHECK_EQ_INT(set(d, LP_SHDICT_REPLACE, "k", vstr("w"), 0), LP_SHDICT_ENOTFOUND);
    CHECK_EQ_INT(set(d, LP_SHDICT_ADD, "k", vstr("w"), 0), 0);
    CHECK_EQ_INT(lp_shdict_ttl(d, K("k"), &ttl), 0);
    CHECK(ttl == 0);
    /* expire: sets, then 0 clears. */
    CHECK_EQ_INT(lp_shdict_expire(d, K("k"), 5), 0);
    CHECK_EQ_INT(lp_shdict_ttl(d, K("k"), &ttl), 0);
    CHECK(ttl == 5);
    CHECK_EQ_INT(lp_shdict_expire(d, K("k"), 0), 0);
    fake_now += 100;
    CHECK_EQ_INT(lp_shdict_get(d, K("k"), 0, &out), 0);
    CHECK_EQ_INT(lp_shdict_expire(d, K("nope"), 1), LP_SHDICT_ENOTFOUND);
    /* flush_expired frees only the expired ones, at most max. */
    for (int i = 0; i < 5; i++) {
        char k[8];
        snprintf(k, sizeof(k), "e%d", i);
        CHECK_EQ_INT(set(d, LP_SHDICT_SET, k, vnum(i), 1), 0);
    }
    fake_now += 2;
    lp_shdict_stats_t st;
    lp_shdict_stats(d, &st);
    CHECK_EQ_INT(st.entries, 6);
    CHECK_EQ_INT(lp_shdict_flush_expired(d, 2), 2);
    CHECK_EQ_INT(lp_shdict_flush_expired(d, 0), 3);
    lp_shdict_stats(d, &st);
    CHECK_EQ_INT(st.entries, 1);
    CHECK_EQ_INT(st.used, charge("k", 1));
    /* flush_all marks everything expired. */
    lp_shdict_flush_all(d);
    CHECK_EQ_INT(lp_shdict_get(d, K("k"), 0, &out), LP_SHDICT_ENOTFOUND);
    CHECK_EQ_INT(lp_shdict_flush_expired(d, 0), 1);
    lp_shdict_free(d);
    lp_shdict_set_clock(NULL);
}

static void incr_semantics(void)
{
    lp_shdict_set_clock(fake_clock);
    fake_now = 1000.0;
    lp_shdict_t *d = lp_shdict_new("t", 65536);
    REQUIRE(d);
    lp_shdict_val_t out;
    CHECK_EQ_INT(lp_shdict_incr(d, K("c"), 1, 0, 0, 0, &out), LP_SHDICT_ENOTFOUND);
    CHECK_EQ_INT(lp_shdict_incr(d, K("c"), 1, 1, 10, 5, &out), 0);
    CHECK(out.num == 11 && out.forcible == 0);
    CHECK_EQ_INT(lp_shdict_incr(d, K("c"), -2.5, 1, 10, 5, &out), 0);
    CHECK(out.num == 8.5);
    double ttl;
    CHECK_EQ_INT(lp_shdict_ttl(d, K("c"), &ttl), 0);
    CHECK(ttl == 5); /* init_ttl applies only to a new key; incr keeps the ttl */
    fake_now += 5;
    CHECK_EQ_INT(lp_shdict_incr(d, K("c"), 1, 0, 0, 0, &out), LP_SHDICT_ENOTFOUND);
    CHECK_EQ_INT(lp_shdict_incr(d, K("c"), 1, 1, 0, 0, &out), 0);
    CHECK(out.num == 1);
    CHECK_EQ_INT(set(d, LP_SHDICT_SET, "s", vstr("x"), 0), 0);
    CHECK_EQ_INT(lp_shdict_incr(d, K("s"), 1, 1, 0, 0, &out), LP_SHDICT_ENOTNUM);
    lp_shdict_free(d);
    lp_shdict_set_clock(NULL);
}

static void exact_accounting_and_lru(void)
{
    /* One stripe (small dict): an exact LRU over the whole capacity. */
    size_t one = charge("k00", 100);
    size_t cap = 8 * one + 10;
    lp_shdict_t *d = lp_shdict_new("t", cap);
    REQUIRE(d);
    char big[101];
    memset(big, 'x', 100);
    big[100] = 0;
    for (int i = 0; i < 8; i++) {
        char k[8];
        snprintf(k, sizeof(k), "k%02d", i);
        lp_shdict_val_t v = vstr(big);
        CHECK_EQ_INT(lp_shdict_store(d, LP_SHDICT_SET, K(k), &v, 0), 0);
        CHECK_EQ_INT(v.forcible, 0);
    }
    CHECK_EQ_INT(lp_shdict_free_space(d), 10);
    lp_shdict_stats_t st;
    lp_shdict_stats(d, &st);
    CHECK_EQ_INT(st.used, 8 * one);
    CHECK_EQ_INT(st.entries, 8);
    /* k00 becomes the most recently used; the next set evicts k01, the least. */
    lp_shdict_val_t out;
    CHECK_EQ_INT(lp_shdict_get(d, K("k00"), 0, &out), 0);
    lp_shdict_val_t v = vstr(big);
    CHECK_EQ_INT(lp_shdict_store(d, LP_SHDICT_SAFE, K("k08"), &v, 0), LP_SHDICT_ENOMEM);
    CHECK_EQ_INT(v.forcible, 0);
    v = vstr(big);
    CHECK_EQ_INT(lp_shdict_store(d, LP_SHDICT_ADD | LP_SHDICT_SAFE, K("k08"), &v, 0),
                 LP_SHDICT_ENOMEM);
    v = vstr(big);
    CHECK_EQ_INT(lp_shdict_store(d, LP_SHDICT_SET, K("k08"), &v, 0), 0);
    CHECK_EQ_INT(v.forcible, 1);
    CHECK_EQ_INT(lp_shdict_get(d, K("k01"), 0, &out), LP_SHDICT_ENOTFOUND);
    CHECK_EQ_INT(lp_shdict_get(d, K("k00"), 0, &out), 0);
    lp_shdict_stats(d, &st);
    CHECK_EQ_INT(st.evictions, 1);
    CHECK_EQ_INT(st.used, 8 * one);
    /* A value larger than the dict never fits. */
    char *huge = malloc(cap + 1);
    REQUIRE(huge);
    memset(huge, 'y', cap);
    huge[cap] = 0;
    v = vstr(huge);
    CHECK_EQ_INT(lp_shdict_store(d, LP_SHDICT_SET, K("h"), &v, 0), LP_SHDICT_ENOMEM);
    free(huge);
    /* A safe_set replacing a key with a longer value keeps the old one when it fails. */
    char longer[160];
    memset(longer, 'z', 159);
    longer[159] = 0;
    v = vstr(longer);
    CHECK_EQ_INT(lp_shdict_store(d, LP_SHDICT_SET | LP_SHDICT_SAFE, K("k00"), &v, 0),
                 LP_SHDICT_ENOMEM);
    CHECK_EQ_INT(lp_shdict_get(d, K("k00"), 0, &out), 0);
    CHECK_EQ_INT(out.len, 100);
    /* Expired entries go before valid ones, and without forcible. */
    lp_shdict_set_clock(fake_clock);
    fake_now = 50;
    v = vstr(big);
    CHECK_EQ_INT(lp_shdict_store(d, LP_SHDICT_SET, K("k02"), &v, 1), 0); /* k02 expires */
    lp_shdict_get(d, K("k03"), 0, &out);
    lp_shdict_get(d, K("k04"), 0, &out);
    lp_shdict_get(d, K("k05"), 0, &out);
    lp_shdict_get(d, K("k06"), 0, &out);
    lp_shdict_get(d, K("k07"), 0, &out);
    lp_shdict_get(d, K("k08"), 0, &out);
    lp_shdict_get(d, K("k00"), 0, &out);
    fake_now = 52;
    /* The LRU tail is k02 (set before the gets), expired: a safe_set may reuse it. */
    v = vstr(big);
    CHECK_EQ_INT(lp_shdict_store(d, LP_SHDICT_SET | LP_SHDICT_SAFE, K("k09"), &v, 0), 0);
    CHECK_EQ_INT(v.forcible, 0);
    lp_shdict_stats(d, &st);
    CHECK_EQ_INT(st.used, 8 * one);
    CHECK_EQ_INT(st.evictions, 1);
    /* Deleting gives back exactly the charge. */
    CHECK_EQ_INT(set(d, LP_SHDICT_SET, "k09", (lp_shdict_val_t){.type = LP_SHDICT_TNIL}, 0), 0);
    CHECK_EQ_INT(lp_shdict_free_space(d), 10 + one);
    /* Numbers are charged overhead and key only. */
    CHECK_EQ_INT(set(d, LP_SHDICT_SET, "num", vnum(1), 0), 0);
    CHECK_EQ_INT(lp_shdict_free_space(d), 10 + one - charge("num", 0));
    lp_shdict_free(d);
    lp_shdict_set_clock(NULL);
}

static void incr_evicts_with_forcible(void)
{
    size_t cap = 4 * charge("a", 0);
    lp_shdict_t *d = lp_shdict_new("t", LP_SHDICT_MIN_SIZE);
    REQUIRE(d);
    lp_shdict_resize(d, cap);
    lp_shdict_val_t out;
    const char *keys[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(lp_shdict_incr(d, keys[i], 1, 1, 1, 0, 0, &out), 0);
        CHECK_EQ_INT(out.forcible, 0);
    }
    CHECK_EQ_INT(lp_shdict_free_space(d), 0);
    CHECK_EQ_INT(lp_shdict_incr(d, K("e"), 1, 1, 0, 0, &out), 0);
    CHECK_EQ_INT(out.forcible, 1);
    CHECK_EQ_INT(lp_shdict_incr(d, K("a"), 1, 0, 0, 0, &out), LP_SHDICT_ENOTFOUND);
    lp_shdict_free(d);
}

static void lists(void)
{
    lp_shdict_t *d = lp_shdict_new("t", 65536);
    REQUIRE(d);
    lp_shdict_val_t v = vstr("one");
    CHECK_EQ_INT(lp_shdict_push(d, K("l"), 0, &v), 1);
    v = vnum(2);
    CHECK_EQ_INT(lp_shdict_push(d, K("l"), 0, &v), 2);
    v = vstr("zero");
    CHECK_EQ_INT(lp_shdict_push(d, K("l"), 1, &v), 3);
    CHECK_EQ_INT(lp_shdict_llen(d, K("l")), 3);
    lp_shdict_stats_t st;
    lp_shdict_stats(d, &st);
    CHECK_EQ_INT(st.used, charge("l", 0) + 3 * LP_SHDICT_ITEM_OVERHEAD + 3 + 4);
    lp_shdict_val_t out;
    CHECK_EQ_INT(lp_shdict_get(d, K("l"), 0, &out), LP_SHDICT_EISLIST);
    CHECK_EQ_INT(lp_shdict_pop(d, K("l"), 1, &out), 0);
    CHECK(out.type == LP_SHDICT_TSTR && out.len == 4 && memcmp(out.str, "zero", 4) == 0);
    CHECK_EQ_INT(lp_shdict_pop(d, K("l"), 0, &out), 0);
    CHECK(out.type == LP_SHDICT_TNUM && out.num == 2);
    CHECK_EQ_INT(lp_shdict_pop(d, K("l"), 0, &out), 0);
    CHECK(out.len == 3 && memcmp(out.str, "one", 3) == 0);
    /* Empty: the key is gone. */
    CHECK_EQ_INT(lp_shdict_pop(d, K("l"), 0, &out), LP_SHDICT_ENOTFOUND);
    CHECK_EQ_INT(lp_shdict_llen(d, K("l")), 0);
    lp_shdict_stats(d, &st);
    CHECK_EQ_INT(st.used, 0);
    CHECK_EQ_INT(st.entries, 0);
    /* Not a list. */
    CHECK_EQ_INT(set(d, LP_SHDICT_SET, "s", vstr("x"), 0), 0);
    v = vstr("y");
    CHECK_EQ_INT(lp_shdict_push(d, K("s"), 1, &v), LP_SHDICT_ENOTLIST);
    CHECK_EQ_INT(lp_shdict_pop(d, K("s"), 1, &out), LP_SHDICT_ENOTLIST);
    CHECK_EQ_INT(lp_shdict_llen(d, K("s")), LP_SHDICT_ENOTLIST);
    /* set over a list replaces it and gives its items' bytes back. */
    v = vstr("y");
    CHECK_EQ_INT(lp_shdict_push(d, K("l2"), 1, &v), 1);
    CHECK_EQ_INT(set(d, LP_SHDICT_SET, "l2", vnum(1), 0), 0);
    lp_shdict_stats(d, &st);
    CHECK_EQ_INT(st.used, charge("s", 1) + charge("l2", 0));
    lp_shdict_free(d);
}

static void keys_listing(void)
{
    lp_shdict_t *d = lp_shdict_new("t", 8 * 1024 * 1024); /* several stripes */
    REQUIRE(d);
    for (int i = 0; i < 300; i++) {
        char k[16];
        snprintf(k, sizeof(k), "key%d", i);
        CHECK_EQ_INT(set(d, LP_SHDICT_SET, k, vnum(i), 0), 0);
    }
    void *arr;
    CHECK_EQ_INT(lp_shdict_keys(d, 0, &arr), 300);
    struct {
        const char *base;
        size_t len;
    } *ks = arr;
    int seen = 0;
    for (int i = 0; i < 300; i++)
        if (ks[i].len >= 4 && memcmp(ks[i].base, "key", 3) == 0)
            seen++;
    CHECK_EQ_INT(seen, 300);
    CHECK_EQ_INT(lp_shdict_keys(d, 10, &arr), 10);
    lp_shdict_stats_t st;
    lp_shdict_stats(d, &st);
    CHECK_EQ_INT(st.entries, 300);
    CHECK_EQ_INT(st.capacity, 8 * 1024 * 1024);
    lp_shdict_free(d);
}

static void resize_keeps_what_fits(void)
{
    size_t one = charge("k0", 0);
    lp_shdict_t *d = lp_shdict_new("t", LP_SHDICT_MIN_SIZE);
    REQUIRE(d);
    for (int i = 0; i < 10; i++) {
        char k[8];
        snprintf(k, sizeof(k), "k%d", i);
        CHECK_EQ_INT(set(d, LP_SHDICT_SET, k, vnum(i), 0), 0);
    }
    lp_shdict_resize(d, 4 * one);
    lp_shdict_stats_t st;
    lp_shdict_stats(d, &st);
    CHECK_EQ_INT(st.entries, 4);
    CHECK_EQ_INT(st.evictions, 6);
    CHECK_EQ_INT(st.capacity, 4 * one);
    lp_shdict_val_t out;
    CHECK_EQ_INT(lp_shdict_get(d, K("k9"), 0, &out), 0); /* the most recent stay */
    CHECK_EQ_INT(lp_shdict_get(d, K("k6"), 0, &out), 0);
    CHECK_EQ_INT(lp_shdict_get(d, K("k5"), 0, &out), LP_SHDICT_ENOTFOUND);
    lp_shdict_resize(d, 100 * one);
    CHECK_EQ_INT(lp_shdict_free_space(d), 96 * one);
    lp_shdict_free(d);
}

static void registry(void)
{
    lp_shdict_t *a = lp_shdict_acquire("reg", 65536);
    REQUIRE(a);
    lp_shdict_t *b = lp_shdict_acquire("reg", 131072);
    CHECK(a == b);
    CHECK_EQ_INT(lp_shdict_capacity(a), 65536); /* resized only when told */
    CHECK(lp_shdict_lookup("reg", 3) == a);
    CHECK(lp_shdict_lookup("re", 2) == NULL);
    lp_shdict_release(b);
    CHECK(lp_shdict_lookup("reg", 3) == a);
    lp_shdict_release(a);
    CHECK(lp_shdict_lookup("reg", 3) == NULL);
}

static lp_shdict_t *shared_d;

static void *incr_thread(void *arg)
{
    const char *key = arg;
    lp_shdict_val_t out;
    for (int i = 0; i < 100000; i++)
        lp_shdict_incr(shared_d, key, strlen(key), 1, 1, 0, 0, &out);
    return NULL;
}

static void threads_count_exactly(void)
{
    shared_d = lp_shdict_new("t", 16 * 1024 * 1024);
    REQUIRE(shared_d);
    pthread_t t[4];
    static char *keys[4] = {"hot", "hot", "hot", "hot"};
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, incr_thread, keys[i]);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    lp_shdict_val_t out;
    CHECK_EQ_INT(lp_shdict_get(shared_d, K("hot"), 0, &out), 0);
    CHECK(out.num == 400000);
    lp_shdict_free(shared_d);
}

static const lp_test_case_t tests[] = {
    {"get_set_types_and_flags", get_set_types_and_flags},
    {"add_replace", add_replace},
    {"ttl_on_injected_clock", ttl_on_injected_clock},
    {"incr_semantics", incr_semantics},
    {"exact_accounting_and_lru", exact_accounting_and_lru},
    {"incr_evicts_with_forcible", incr_evicts_with_forcible},
    {"lists", lists},
    {"keys_listing", keys_listing},
    {"resize_keeps_what_fits", resize_keeps_what_fits},
    {"registry", registry},
    {"threads_count_exactly", threads_count_exactly},
};

LP_TEST_MAIN(tests)
