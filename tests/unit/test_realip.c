/* Unit tests for engine/realip.c: addresses, CIDRs, and the X-Forwarded-For and Forwarded
 * walks over trusted hops, including what a spoofer or garbage sends. */
#include "lp_test.h"
#include "realip.h"

static lp_cidr_t cidr(const char *s)
{
    lp_cidr_t c;
    memset(&c, 0, sizeof(c));
    if (lp_cidr_parse(s, strlen(s), &c))
        lp_test_fail(__FILE__, __LINE__, "cidr %s does not parse", s);
    return c;
}

/* Trusted in these tests: 10.0.0.0/8, 192.168.1.1 and 2001:db8::/32. */
static lp_cidr_t trusted[3];
static void setup(void)
{
    trusted[0] = cidr("10.0.0.0/8");
    trusted[1] = cidr("192.168.1.1");
    trusted[2] = cidr("2001:db8::/32");
}

/* The walk over one header line: the client's text, or "" when it gives none. */
static const char *walk(lp_realip_kind_t kind, const char *v)
{
    static char text[46];
    lp_str_t s = {v, strlen(v)};
    lp_ip_t ip;
    setup();
    if (!lp_realip_walk(kind, &s, 1, trusted, 3, &ip))
        return "";
    lp_ip_text(&ip, text);
    return text;
}

static const char *xff(const char *v)
{
    return walk(LP_REALIP_XFF, v);
}

static const char *fwd(const char *v)
{
    return walk(LP_REALIP_FORWARDED, v);
}

static void test_ip_parse(void)
{
    lp_ip_t ip;
    CHECK_EQ_INT(lp_ip_parse("1.2.3.4", 7, &ip), 0);
    CHECK_EQ_INT(ip.v6, 0);
    CHECK_EQ_INT(ip.addr[3], 4);
    CHECK_EQ_INT(lp_ip_parse("::1", 3, &ip), 0);
    CHECK_EQ_INT(ip.v6, 1);
    CHECK_EQ_INT(ip.addr[15], 1);
    const char *bad[] = {"",      "1.2.3", "1.2.3.256", "01.2.3.4",  "1.2.3.4 ",  "fe80::1%eth0",
                         "[::1]", "::g",   "1.2.3.4.5", "localhost", "1.2.3.4/8", "0x01.2.3.4"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (!CHECK(lp_ip_parse(bad[i], strlen(bad[i]), &ip) != 0))
            fprintf(stderr, "    accepted %s\n", bad[i]);
    char longer[200];
    memset(longer, '1', sizeof(longer));
    CHECK(lp_ip_parse(longer, sizeof(longer), &ip) != 0);
}

static void test_cidr(void)
{
    lp_cidr_t c;
    CHECK_EQ_INT(lp_cidr_parse("10.0.0.0/8", 10, &c), 0);
    CHECK_EQ_INT(c.bits, 8);
    CHECK_EQ_INT(lp_cidr_parse("::1", 3, &c), 0);
    CHECK_EQ_INT(c.bits, 128);
    CHECK_EQ_INT(lp_cidr_parse("0.0.0.0/0", 9, &c), 0);
    CHECK_EQ_INT(lp_cidr_parse("10.1.0.0/8", 10, &c), LP_CIDR_EHOSTBITS);
    CHECK_EQ_INT(lp_cidr_parse("10.0.0.0/33", 11, &c), -1);
    CHECK_EQ_INT(lp_cidr_parse("10.0.0.0/", 9, &c), -1);
    CHECK_EQ_INT(lp_cidr_parse("10.0.0.0/a", 10, &c), -1);
    CHECK_EQ_INT(lp_cidr_parse("::/129", 6, &c), -1);
    CHECK_EQ_INT(lp_cidr_parse("2001:db8::/32", 13, &c), 0);

    setup();
    lp_ip_t ip;
    lp_ip_parse("10.200.3.4", 10, &ip);
    CHECK(lp_cidr_match(trusted, 3, &ip));
    lp_ip_parse("11.0.0.1", 8, &ip);
    CHECK(!lp_cidr_match(trusted, 3, &ip));
    lp_ip_parse("192.168.1.1", 11, &ip);
    CHECK(lp_cidr_match(trusted, 3, &ip));
    lp_ip_parse("192.168.1.2", 11, &ip);
    CHECK(!lp_cidr_match(trusted, 3, &ip));
    lp_ip_parse("2001:db8:1::5", 13, &ip);
    CHECK(lp_cidr_match(trusted, 3, &ip));
    lp_ip_parse("2001:db9::5", 11, &ip);
    CHECK(!lp_cidr_match(trusted, 3, &ip));
    /* an IPv4-mapped IPv6 peer (a dual-stack socket) matches the IPv4 networks */
    lp_ip_parse("::ffff:10.1.2.3", 15, &ip);
    CHECK(lp_cidr_match(trusted, 3, &ip));
    lp_ip_parse("::ffff:11.1.2.3", 15, &ip);
    CHECK(!lp_cidr_match(trusted, 3, &ip));
    /* odd prefix lengths */
    lp_cidr_t odd = cidr("172.16.0.0/12");
    lp_ip_parse("172.31.255.255", 14, &ip);
    CHECK(lp_cidr_match(&odd, 1, &ip));
    lp_ip_parse("172.32.0.0", 10, &ip);
    CHECK(!lp_cidr_match(&odd, 1, &ip));
    lp_cidr_t all = cidr("0.0.0.0/0");
    CHECK(lp_cidr_match(&all, 1, &ip));
    lp_ip_parse("::1", 3, &ip);
    CHECK(!lp_cidr_match(&all, 1, &ip)); /* /0 of IPv4 is not every IPv6 address */
}

static void test_xff_walk(void)
{
    CHECK_STR(xff("1.1.1.1"), "1.1.1.1");
    /* right-most untrusted hop, walking left over trusted ones */
    CHECK_STR(xff("1.1.1.1, 10.0.0.2"), "1.1.1.1");
    CHECK_STR(xff("9.9.9.9, 1.1.1.1, 10.0.0.2, 192.168.1.1"), "1.1.1.1");
    /* a spoofed left part is never reached */
    CHECK_STR(xff("6.6.6.6, 7.7.7.7,1.1.1.1"), "1.1.1.1");
    /* every hop trusted: the left-most */
    CHECK_STR(xff("10.0.0.5, 10.0.0.2"), "10.0.0.5");
    CHECK_STR(xff("  2001:db8::1 ,\t3.3.3.3  "), "3.3.3.3");
    CHECK_STR(xff("2001:db8::1, 2a00::7"), "2a00::7");
    /* ports and brackets, as some balancers write them */
    CHECK_STR(xff("1.1.1.1:5678"), "1.1.1.1");
    CHECK_STR(xff("[2a00::7]:443"), "2a00::7");
    CHECK_STR(xff("[2a00::7]"), "2a00::7");
    /* garbage where the walk reaches it: no address (the caller keeps the peer's) */
    CHECK_STR(xff(""), "");
    CHECK_STR(xff("   "), "");
    CHECK_STR(xff("unknown"), "");
    CHECK_STR(xff("1.1.1.1, "), "");
    CHECK_STR(xff("1.1.1.1,,10.0.0.1"), "");
    CHECK_STR(xff("fe80::1%eth0"), "");
    CHECK_STR(xff("1.1.1.1, 10.0.0.1%x"), "");
    CHECK_STR(xff("<script>"), "");
    CHECK_STR(xff("1.1.1.1:99999"), "");
    CHECK_STR(xff("[2a00::7"), "");
    CHECK_STR(xff("[1.2.3.4]"), "");
    CHECK_STR(xff("1.2.3.4:5:6"), "");
    /* garbage left of the client does not matter */
    CHECK_STR(xff("garbage, 1.1.1.1, 10.0.0.1"), "1.1.1.1");
}

static void test_xff_lines_and_length(void)
{
    setup();
    lp_ip_t ip;
    char text[46];
    /* two header lines are one list, in order */
    lp_str_t two[2] = {{"1.1.1.1, 2.2.2.2", 16}, {"10.0.0.1", 8}};
    REQUIRE(lp_realip_walk(LP_REALIP_XFF, two, 2, trusted, 3, &ip));
    lp_ip_text(&ip, text);
    CHECK_STR(text, "2.2.2.2");
    /* a very long list: the walk still stops at the first untrusted hop from the right */
    static char big[20000];
    size_t n = 0;
    for (int i = 0; i < 1000; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, "6.6.6.%d, ", i % 250);
    n += (size_t)snprintf(big + n, sizeof(big) - n, "4.4.4.4, 10.0.0.9");
    lp_str_t one = {big, n};
    REQUIRE(lp_realip_walk(LP_REALIP_XFF, &one, 1, trusted, 3, &ip));
    lp_ip_text(&ip, text);
    CHECK_STR(text, "4.4.4.4");
    /* more trusted hops than the walk keeps, and more to the left: no address */
    n = 0;
    n += (size_t)snprintf(big + n, sizeof(big) - n, "4.4.4.4");
    for (int i = 0; i < LP_REALIP_MAX_HOPS + 5; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, ", 10.0.0.%d", i + 1);
    one.len = n;
    CHECK(!lp_realip_walk(LP_REALIP_XFF, &one, 1, trusted, 3, &ip));
    /* exactly as many as it keeps: all trusted, the left-most */
    n = 0;
    for (int i = 0; i < LP_REALIP_MAX_HOPS; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, "%s10.0.0.%d", i ? ", " : "", i + 1);
    one.len = n;
    REQUIRE(lp_realip_walk(LP_REALIP_XFF, &one, 1, trusted, 3, &ip));
    lp_ip_text(&ip, text);
    CHECK_STR(text, "10.0.0.1");
    /* no lines at all */
    CHECK(!lp_realip_walk(LP_REALIP_XFF, NULL, 0, trusted, 3, &ip));
}

static void test_forwarded(void)
{
    CHECK_STR(fwd("for=1.1.1.1"), "1.1.1.1");
    CHECK_STR(fwd("For=\"1.1.1.1\""), "1.1.1.1");
    CHECK_STR(fwd("for=192.0.2.60;proto=http;by=203.0.113.43"), "192.0.2.60");
    CHECK_STR(fwd("for=1.1.1.1, for=10.0.0.3"), "1.1.1.1");
    CHECK_STR(fwd("for=\"[2001:db8:cafe::17]:4711\""), "2001:db8:cafe::17");
    /* trusted v6 hop walked over */
    CHECK_STR(fwd("for=\"[2a00::1]\", for=\"[2001:db8::2]\""), "2a00::1");
    CHECK_STR(fwd("for=\"192.0.2.43:47011\";proto=https"), "192.0.2.43");
    CHECK_STR(fwd("proto=https;for=3.3.3.3 ; host=x"), "3.3.3.3");
    CHECK_STR(fwd("for=10.0.0.1;by=10.0.0.2"), "10.0.0.1"); /* all trusted: left-most */
    /* obfuscated and unknown identifiers are not addresses, and are not walked past */
    CHECK_STR(fwd("for=_hidden"), "");
    CHECK_STR(fwd("for=1.1.1.1, for=_hidden"), "");
    CHECK_STR(fwd("for=1.1.1.1, for=unknown"), "");
    CHECK_STR(fwd("for=\"_x:_p\""), "");
    /* an element without for= says nothing about the client */
    CHECK_STR(fwd("for=1.1.1.1, proto=https"), "");
    /* IPv6 must be quoted and bracketed */
    CHECK_STR(fwd("for=\"2a00::1\""), "");
    /* malformed lines */
    CHECK_STR(fwd("for=\"1.1.1.1"), "");
    CHECK_STR(fwd("for=1.1.1.1;for=2.2.2.2"), "");
    CHECK_STR(fwd("for"), "");
    CHECK_STR(fwd("=1.1.1.1"), "");
    CHECK_STR(fwd("for=\"1.1\\.1.1\""), "");
    CHECK_STR(fwd("for=1.1.1.1 x"), "");
    CHECK_STR(fwd("for=[2a00::1]"), "");          /* brackets are not token characters */
    CHECK_STR(fwd("for=1.1.1.1;pr\x80to=x"), ""); /* nor bytes above 127 */
    CHECK_STR(fwd(""), "");
    /* empty elements and pairs are allowed by the list syntax */
    CHECK_STR(fwd(", for=4.4.4.4 ,"), "4.4.4.4");
    CHECK_STR(fwd("for=4.4.4.4;;proto=http"), "4.4.4.4");
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_ip_parse),  LP_TEST_ENTRY(test_cidr),
    LP_TEST_ENTRY(test_xff_walk),  LP_TEST_ENTRY(test_xff_lines_and_length),
    LP_TEST_ENTRY(test_forwarded),
};

LP_TEST_MAIN(tests)
