/* Unit tests for engine/conn.c: the client's address as text (kept as bytes, formatted when
 * a log line, X-Forwarded-For or Lua wants it), and the idle connection's size. */
#include <arpa/inet.h>
#include "lp_test.h"
#include "conn.h"

static void check_ip(int family, const char *text, const char *want)
{
    lp_conn_t c;
    memset(&c, 0, sizeof(c));
    if (text) {
        REQUIRE_EQ_INT(inet_pton(family, text, c.client_addr), 1);
        c.flags = family == AF_INET6 ? LP_CF_V6 : 0;
    }
    char out[LP_IP_TEXT];
    memset(out, 'x', sizeof(out));
    size_t n = lp_conn_ip_text(&c, out);
    CHECK_STR(out, want);
    CHECK_EQ_INT(n, strlen(want));
}

static void test_ip_text(void)
{
    check_ip(AF_INET, "127.0.0.1", "127.0.0.1");
    check_ip(AF_INET, "10.0.0.7", "10.0.0.7");
    check_ip(AF_INET, "1.20.100.255", "1.20.100.255");
    check_ip(AF_INET, "255.255.255.255", "255.255.255.255");
    check_ip(AF_INET, "0.0.0.9", "0.0.0.9");
    check_ip(AF_INET, NULL, ""); /* getpeername failed: unknown */
    check_ip(AF_INET6, "::1", "::1");
    check_ip(AF_INET6, "2001:db8::8:800:200c:417a", "2001:db8::8:800:200c:417a");
    check_ip(AF_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
             "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    check_ip(AF_INET6, "::ffff:192.0.2.1", "::ffff:192.0.2.1");
}

/* Idle keep-alive connections are most of a busy proxy's: one must stay within glibc's
 * 384-byte chunk (size + 8, rounded up to 16), so that it costs under 0.5 KiB of RSS. */
static void test_idle_size(void)
{
#if UINTPTR_MAX == 0xffffffffffffffffu
    CHECK_EQ_INT(sizeof(lp_conn_t) <= 376, 1);
#endif
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_ip_text),
    LP_TEST_ENTRY(test_idle_size),
};

LP_TEST_MAIN(tests)
