/* engine/ipset.c: longest-prefix match over IPv4 and IPv6 CIDRs, nested and overlapping
 * prefixes, edges of the address space, bad input, and random tables checked against a
 * naive matcher (every prefix tried, the longest containing one wins). */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "ipset.h"
#include "lp_test.h"

#define S(x) (x), strlen(x)

static lp_ipset_t *make(const char *const *cidrs, const int *values, int n)
{
    lp_ipset_t *s = lp_ipset_new();
    for (int i = 0; i < n; i++)
        CHECK_EQ_INT(lp_ipset_add(s, S(cidrs[i]), values[i]), 0);
    CHECK_EQ_INT(lp_ipset_build(s), 0);
    return s;
}

static void nested_prefixes_most_specific_wins(void)
{
    const char *c[] = {"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3", "192.168.1.0/24"};
    int v[] = {1, 2, 3, 4, 5};
    lp_ipset_t *s = make(c, v, 5);
    CHECK_EQ_INT(lp_ipset_find(s, S("10.9.9.9")), 1);
    CHECK_EQ_INT(lp_ipset_find(s, S("10.1.9.9")), 2);
    CHECK_EQ_INT(lp_ipset_find(s, S("10.1.2.9")), 3);
    CHECK_EQ_INT(lp_ipset_find(s, S("10.1.2.3")), 4);
    CHECK_EQ_INT(lp_ipset_find(s, S("10.1.2.4")), 3);
    CHECK_EQ_INT(lp_ipset_find(s, S("10.1.3.0")), 2);
    CHECK_EQ_INT(lp_ipset_find(s, S("10.2.0.0")), 1);
    CHECK_EQ_INT(lp_ipset_find(s, S("11.0.0.0")), -1);
    CHECK_EQ_INT(lp_ipset_find(s, S("9.255.255.255")), -1);
    CHECK_EQ_INT(lp_ipset_find(s, S("192.168.1.255")), 5);
    CHECK_EQ_INT(lp_ipset_find(s, S("192.168.2.0")), -1);
    /* An IPv4-mapped IPv6 address is the IPv4 address. */
    CHECK_EQ_INT(lp_ipset_find(s, S("::ffff:10.1.2.3")), 4);
    CHECK_EQ_INT(lp_ipset_find(s, S("2001:db8::1")), -1);
    CHECK_EQ_INT((int)lp_ipset_count(s), 5);
    lp_ipset_free(s);
}

static void ipv6_zones_edges_and_duplicates(void)
{
    const char *c[] = {"::/0",           "2001:db8::/32",
                       "fe80::/10",      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                       "2001:db8::/32",  "0.0.0.0/0",
                       "255.255.255.255"};
    int v[] = {1, 2, 3, 4, 7, 5, 6};
    lp_ipset_t *s = make(c, v, 7);
    CHECK_EQ_INT(lp_ipset_find(s, S("::1")), 1);
    CHECK_EQ_INT(lp_ipset_find(s, S("2001:db8:1::5")), 7); /* the same prefix twice: larger */
    CHECK_EQ_INT(lp_ipset_find(s, S("fe80::1%eth0")), 3);  /* the zone is ignored */
    CHECK_EQ_INT(lp_ipset_find(s, S("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")), 4);
    CHECK_EQ_INT(lp_ipset_find(s, S("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")), 1);
    CHECK_EQ_INT(lp_ipset_find(s, S("1.2.3.4")), 5);
    CHECK_EQ_INT(lp_ipset_find(s, S("255.255.255.255")), 6);
    lp_ipset_free(s);
}

static void bad_input(void)
{
    lp_ipset_t *s = lp_ipset_new();
    CHECK_EQ_INT(lp_ipset_add(s, S("10.0.0.0/33"), 1), LP_IPSET_EINVAL);
    CHECK_EQ_INT(lp_ipset_add(s, S("::/129"), 1), LP_IPSET_EINVAL);
    CHECK_EQ_INT(lp_ipset_add(s, S("10.0.0.0/"), 1), LP_IPSET_EINVAL);
    CHECK_EQ_INT(lp_ipset_add(s, S("10.0.0.0/8x"), 1), LP_IPSET_EINVAL);
    CHECK_EQ_INT(lp_ipset_add(s, S("10.0.0"), 1), LP_IPSET_EINVAL);
    CHECK_EQ_INT(lp_ipset_add(s, S("example.com"), 1), LP_IPSET_EINVAL);
    CHECK_EQ_INT(lp_ipset_add(s, S(""), 1), LP_IPSET_EINVAL);
    CHECK_EQ_INT(lp_ipset_add(s, S("10.1.2.3/8"), 1), LP_IPSET_EHOSTBITS); /* a typo */
    CHECK_EQ_INT(lp_ipset_add(s, S("10.0.0.0/8"), 1), 0);
    CHECK_EQ_INT(lp_ipset_add(s, S("10.0.0.0/8"), -1), LP_IPSET_EINVAL);
    CHECK_EQ_INT(lp_ipset_build(s), 0);
    CHECK_EQ_INT(lp_ipset_add(s, S("10.0.0.0/8"), 1), LP_IPSET_EBUILT);
    CHECK_EQ_INT(lp_ipset_find(s, S("10.200.0.1")), 1);
    CHECK_EQ_INT(lp_ipset_find(s, S("not an ip")), LP_IPSET_EINVAL);
    CHECK_EQ_INT(lp_ipset_find(s, S("1.2.3.4, 5.6.7.8")), LP_IPSET_EINVAL);
    char big[200];
    memset(big, '1', sizeof(big));
    CHECK_EQ_INT(lp_ipset_find(s, big, sizeof(big)), LP_IPSET_EINVAL);
    lp_ipset_free(s);
    /* An empty set matches nothing. */
    s = lp_ipset_new();
    CHECK_EQ_INT(lp_ipset_build(s), 0);
    CHECK_EQ_INT(lp_ipset_find(s, S("1.1.1.1")), -1);
    lp_ipset_free(s);
}

/* ---- random tables against the naive matcher (IPv4 only: the space is the same) ---- */

static uint64_t rng = 88172645463325252ull;
static uint32_t next32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

typedef struct {
    uint32_t addr;
    int len, value;
} naive_t;

static int naive_find(const naive_t *t, int n, uint32_t a)
{
    int best = -1, best_len = -1;
    for (int i = 0; i < n; i++) {
        uint32_t mask = t[i].len == 0 ? 0 : 0xffffffffu << (32 - t[i].len);
        if ((a & mask) == (t[i].addr & mask) &&
            (t[i].len > best_len || (t[i].len == best_len && t[i].value > best))) {
            best = t[i].value;
            best_len = t[i].len;
        }
    }
    return best;
}

static void random_tables_agree_with_naive(void)
{
    for (int round = 0; round < 200; round++) {
        naive_t t[64];
        int n = 1 + (int)(next32() % 64);
        lp_ipset_t *s = lp_ipset_new();
        /* Addresses from a small space so that prefixes nest and overlap often. */
        for (int i = 0; i < n; i++) {
            t[i].addr = (next32() & 0x0f0f0f0fu) | 0x0a000000u;
            t[i].len = (int)(next32() % 33);
            t[i].addr &= t[i].len == 0 ? 0 : 0xffffffffu << (32 - t[i].len); /* a network */
            t[i].value = (int)(next32() % 4);
            char text[40];
            uint32_t a = t[i].addr;
            snprintf(text, sizeof(text), "%u.%u.%u.%u/%d", a >> 24, (a >> 16) & 255, (a >> 8) & 255,
                     a & 255, t[i].len);
            REQUIRE_EQ_INT(lp_ipset_add(s, S(text), t[i].value), 0);
        }
        REQUIRE_EQ_INT(lp_ipset_build(s), 0);
        for (int q = 0; q < 300; q++) {
            uint32_t a = q % 3 ? ((next32() & 0x0f0f0f0fu) | 0x0a000000u) : next32();
            if (q % 7 == 0)
                a = t[q % n].addr + (uint32_t)(q % 2 ? 0 : -1); /* next to a boundary */
            char text[20];
            snprintf(text, sizeof(text), "%u.%u.%u.%u", a >> 24, (a >> 16) & 255, (a >> 8) & 255,
                     a & 255);
            int want = naive_find(t, n, a), got = lp_ipset_find(s, S(text));
            if (want != got) {
                CHECK_EQ_INT(got, want);
                fprintf(stderr, "  round %d, address %s\n", round, text);
                lp_ipset_free(s);
                return;
            }
        }
        lp_ipset_free(s);
    }
}

static const lp_test_case_t tests[] = {
    {"nested_prefixes_most_specific_wins", nested_prefixes_most_specific_wins},
    {"ipv6_zones_edges_and_duplicates", ipv6_zones_edges_and_duplicates},
    {"bad_input", bad_input},
    {"random_tables_agree_with_naive", random_tables_agree_with_naive},
};

LP_TEST_MAIN(tests)
