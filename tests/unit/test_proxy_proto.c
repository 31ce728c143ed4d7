/* Unit tests for engine/proxy_proto.c: PROXY protocol v1 lines and v2 headers, whole,
 * truncated at every byte, and malformed. */
#include "lp_test.h"
#include "proxy_proto.h"

static ssize_t parse(const void *p, size_t n, lp_pp_t *out)
{
    return lp_pp_parse(p, n, out);
}

/* Every proper prefix of a valid header is "incomplete" (0), never an error or a success. */
static void check_prefixes(const uint8_t *p, size_t n, int line)
{
    lp_pp_t pp;
    for (size_t k = 0; k < n; k++) {
        ssize_t rc = parse(p, k, &pp);
        if (rc != 0)
            lp_test_fail(__FILE__, line, "prefix of %zu bytes gave %zd", k, rc);
    }
}

static const char *src_text(const lp_pp_t *pp)
{
    static char t[46];
    lp_ip_text(&pp->src, t);
    return t;
}

static void test_v1(void)
{
    lp_pp_t pp;
    const char *l4 = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
    size_t hl = strlen("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
    CHECK_EQ_INT(parse(l4, strlen(l4), &pp), (long long)hl);
    CHECK_EQ_INT(pp.version, 1);
    CHECK_EQ_INT(pp.has_addr, 1);
    CHECK_STR(src_text(&pp), "192.168.0.1");
    CHECK_EQ_INT(pp.src_port, 56324);
    CHECK_EQ_INT(pp.dst_port, 443);
    check_prefixes((const uint8_t *)l4, hl, __LINE__);

    const char *l6 = "PROXY TCP6 2001:db8::1 ::1 1 65535\r\n";
    CHECK_EQ_INT(parse(l6, strlen(l6), &pp), (long long)strlen(l6));
    CHECK_EQ_INT(pp.src.v6, 1);
    CHECK_STR(src_text(&pp), "2001:db8::1");
    CHECK_EQ_INT(pp.dst_port, 65535);

    const char *u = "PROXY UNKNOWN\r\n";
    CHECK_EQ_INT(parse(u, strlen(u), &pp), (long long)strlen(u));
    CHECK_EQ_INT(pp.has_addr, 0);
    const char *u2 = "PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 65535 65535\r\n";
    CHECK_EQ_INT(parse(u2, strlen(u2), &pp), (long long)strlen(u2));
    CHECK_EQ_INT(pp.has_addr, 0);

    /* the longest line the spec allows: 107 bytes */
    const char *lmax = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                       "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    CHECK_EQ_INT((long long)strlen(lmax), 104);
    CHECK_EQ_INT(parse(lmax, strlen(lmax), &pp), 104);
}

static void test_v1_malformed(void)
{
    lp_pp_t pp;
    const char *bad[] = {
        "GET / HTTP/1.1\r\n",                     /* no header at all */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",       /* LF without CR */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",       /* a field missing */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",   /* a field too many */
        "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",    /* two spaces */
        "PROXY TCP4 ::1 ::1 1 2\r\n",             /* family mismatch */
        "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",     /* family mismatch */
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", /* port range */
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",    /* leading zero */
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",    /* sign */
        "PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",   /* address */
        "PROXY TCP4 fe80::1%eth0 ::1 1 2\r\n",    /* zone id */
        "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",     /* protocol */
        "PROXY \r\n",                             /* empty */
        "PROXY UNKNOWNX\r\n",                     /* not UNKNOWN */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",   /* CR not before LF */
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",     /* case */
        "PROXY TCP4 1.2.3.4\x01 5.6.7.8 1 2\r\n", /* control byte */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (!CHECK(parse(bad[i], strlen(bad[i]), &pp) == -1))
            fprintf(stderr, "    accepted: %s\n", bad[i]);
    /* no CRLF within 107 bytes */
    char longline[300];
    memset(longline, 'A', sizeof(longline));
    memcpy(longline, "PROXY UNKNOWN ", 14);
    CHECK_EQ_INT(parse(longline, 106, &pp), 0);
    CHECK_EQ_INT(parse(longline, 107, &pp), -1);
    CHECK_EQ_INT(parse(longline, sizeof(longline), &pp), -1);
    /* a TLS ClientHello where the header should be */
    const uint8_t hello[] = {0x16, 0x03, 0x01, 0x00, 0xa5, 0x01};
    CHECK_EQ_INT(parse(hello, sizeof(hello), &pp), -1);
    CHECK_EQ_INT(parse("P", 1, &pp), 0);
    CHECK_EQ_INT(parse("PX", 2, &pp), -1);
    CHECK_EQ_INT(parse("", 0, &pp), 0);
}

static const uint8_t sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

/* A v2 header: ver_cmd, fam, then `len` bytes of body. */
static size_t v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const uint8_t *body, size_t len)
{
    memcpy(out, sig, 12);
    out[12] = ver_cmd;
    out[13] = fam;
    out[14] = (uint8_t)(len >> 8);
    out[15] = (uint8_t)len;
    if (len)
        memcpy(out + 16, body, len);
    return 16 + len;
}

static void test_v2(void)
{
    lp_pp_t pp;
    uint8_t h[600];
    /* PROXY TCP4 10.1.2.3:1000 -> 10.9.9.9:443 with two TLVs (ALPN "h2", an AWS one) */
    uint8_t b4[] = {10,   1,    2,    3,   10,  9,    9,    9,    0x03, 0xe8, 0x01, 0xbb,
                    0x01, 0x00, 0x02, 'h', '2', 0xea, 0x00, 0x03, 1,    2,    3};
    size_t n = v2(h, 0x21, 0x11, b4, sizeof(b4));
    h[n] = 'G'; /* the client's first byte follows */
    CHECK_EQ_INT(parse(h, n + 1, &pp), (long long)n);
    CHECK_EQ_INT(pp.version, 2);
    CHECK_EQ_INT(pp.has_addr, 1);
    CHECK_STR(src_text(&pp), "10.1.2.3");
    CHECK_EQ_INT(pp.src_port, 1000);
    CHECK_EQ_INT(pp.dst_port, 443);
    check_prefixes(h, n, __LINE__);

    /* PROXY TCP6 */
    uint8_t b6[36] = {0x20, 0x01, 0x0d, 0xb8};
    b6[15] = 7;
    b6[31] = 1;
    b6[32] = 0x12;
    b6[33] = 0x34;
    n = v2(h, 0x21, 0x21, b6, sizeof(b6));
    CHECK_EQ_INT(parse(h, n, &pp), (long long)n);
    CHECK_STR(src_text(&pp), "2001:db8::7");
    CHECK_EQ_INT(pp.src_port, 0x1234);

    /* LOCAL (a health check): the connection's own addresses, whatever the block holds */
    n = v2(h, 0x20, 0x00, NULL, 0);
    CHECK_EQ_INT(parse(h, n, &pp), 16);
    CHECK_EQ_INT(pp.has_addr, 0);
    n = v2(h, 0x20, 0x11, b4, 12);
    CHECK_EQ_INT(parse(h, n, &pp), 28);
    CHECK_EQ_INT(pp.has_addr, 0);
    /* UNSPEC with PROXY, and UDP: no address an HTTP listener can use */
    n = v2(h, 0x21, 0x00, b4, 5);
    CHECK_EQ_INT(parse(h, n, &pp), 21);
    CHECK_EQ_INT(pp.has_addr, 0);
    n = v2(h, 0x21, 0x12, b4, 12);
    CHECK_EQ_INT(parse(h, n, &pp), 28);
    CHECK_EQ_INT(pp.has_addr, 0);
    /* UNIX stream: 216 bytes of paths */
    uint8_t bu[216] = {'/'};
    n = v2(h, 0x21, 0x31, bu, sizeof(bu));
    CHECK_EQ_INT(parse(h, n, &pp), (long long)n);
    CHECK_EQ_INT(pp.has_addr, 0);
}

static void test_v2_malformed(void)
{
    lp_pp_t pp;
    static uint8_t h[LP_PP_V2_MAX + 64];
    uint8_t b4[12] = {10, 1, 2, 3, 10, 9, 9, 9, 0, 1, 0, 2};
    size_t n = v2(h, 0x11, 0x11, b4, 12); /* version 1 in a v2 header */
    CHECK_EQ_INT(parse(h, n, &pp), -1);
    n = v2(h, 0x22, 0x11, b4, 12); /* command 2 */
    CHECK_EQ_INT(parse(h, n, &pp), -1);
    n = v2(h, 0x21, 0x41, b4, 12); /* family 4 */
    CHECK_EQ_INT(parse(h, n, &pp), -1);
    n = v2(h, 0x21, 0x13, b4, 12); /* protocol 3 */
    CHECK_EQ_INT(parse(h, n, &pp), -1);
    n = v2(h, 0x21, 0x11, b4, 8); /* TCP4 with a short address block */
    CHECK_EQ_INT(parse(h, n, &pp), -1);
    uint8_t b6[20] = {0};
    n = v2(h, 0x21, 0x21, b6, sizeof(b6)); /* TCP6 with a short block */
    CHECK_EQ_INT(parse(h, n, &pp), -1);
    /* a TLV running past the header */
    uint8_t bt[] = {10, 1, 2, 3, 10, 9, 9, 9, 0, 1, 0, 2, 0x01, 0x00, 0x09, 'h', '2'};
    n = v2(h, 0x21, 0x11, bt, sizeof(bt));
    CHECK_EQ_INT(parse(h, n, &pp), -1);
    /* a TLV cut in its own header */
    uint8_t bt2[] = {10, 1, 2, 3, 10, 9, 9, 9, 0, 1, 0, 2, 0x01, 0x00};
    n = v2(h, 0x21, 0x11, bt2, sizeof(bt2));
    CHECK_EQ_INT(parse(h, n, &pp), -1);
    /* a broken signature at any byte */
    for (int i = 0; i < 12; i++) {
        n = v2(h, 0x21, 0x11, b4, 12);
        h[i] ^= 0x40;
        if (i == 0)
            continue; /* no longer starts like v2: judged as v1, also -1 below */
        CHECK_EQ_INT(parse(h, n, &pp), -1);
        CHECK_EQ_INT(parse(h, (size_t)i + 1, &pp), -1); /* known bad as soon as it arrives */
    }
    h[0] ^= 0x40;
    CHECK_EQ_INT(parse(h, 16, &pp), -1);
    /* longer than the bound: refused at once, without waiting for the body */
    memcpy(h, sig, 12);
    h[12] = 0x21;
    h[13] = 0x11;
    h[14] = 0xff;
    h[15] = 0xff;
    CHECK_EQ_INT(parse(h, 16, &pp), -1);
    /* exactly at the bound: accepted (four TLVs of 3 + 4090 bytes after the addresses) */
    size_t body = LP_PP_V2_MAX - 16;
    CHECK_EQ_INT(body - 12, 4 * (3 + 4090));
    memset(h + 16, 0, body);
    memcpy(h + 16, b4, 12);
    for (int k = 0; k < 4; k++) {
        uint8_t *t = h + 28 + k * (3 + 4090);
        t[0] = 0xe0;
        t[1] = 4090 >> 8;
        t[2] = 4090 & 0xff;
    }
    h[14] = (uint8_t)(body >> 8);
    h[15] = (uint8_t)body;
    CHECK_EQ_INT(parse(h, LP_PP_V2_MAX, &pp), LP_PP_V2_MAX);
    CHECK_EQ_INT(parse(h, LP_PP_V2_MAX - 1, &pp), 0);
    /* one byte more: refused */
    h[15] = (uint8_t)(body + 1);
    CHECK_EQ_INT(parse(h, 16, &pp), -1);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_v1),
    LP_TEST_ENTRY(test_v1_malformed),
    LP_TEST_ENTRY(test_v2),
    LP_TEST_ENTRY(test_v2_malformed),
};

LP_TEST_MAIN(tests)
