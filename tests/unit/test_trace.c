/* Unit tests for engine/trace.c: traceparent parsing (every invalid form the W3C Trace
 * Context level 1 spec names) and formatting, tracestate combining, checking and
 * truncation, and the id generator. */
#include <jansson.h>
#include "lp_test.h"
#include "trace.h"

#define TID "4bf92f3577b34da6a3ce929d0e0e4736"
#define PID "00f067aa0ba902b7"

static int parse(const char *s, uint8_t *flags)
{
    uint8_t t[16], p[8], f = 0xee;
    int rc = lp_traceparent_parse(s, strlen(s), t, p, &f);
    if (flags)
        *flags = f;
    return rc;
}

static void test_traceparent_valid(void)
{
    uint8_t t[16], p[8], f = 0;
    const char *s = "00-" TID "-" PID "-01";
    REQUIRE_EQ_INT(lp_traceparent_parse(s, strlen(s), t, p, &f), 0);
    CHECK_EQ_INT(f, 1);
    CHECK_EQ_INT(t[0], 0x4b);
    CHECK_EQ_INT(t[15], 0x36);
    CHECK_EQ_INT(p[0], 0x00);
    CHECK_EQ_INT(p[7], 0xb7);
    char out[LP_TRACEPARENT_LEN + 1] = {0};
    lp_traceparent_format(out, t, p, f);
    CHECK_STR(out, s);
    CHECK_EQ_INT(parse("00-" TID "-" PID "-00", &f), 0);
    CHECK_EQ_INT(f, 0);
    /* Unknown flags are kept by the parser (the proxy sends only the sampled bit on). */
    CHECK_EQ_INT(parse("00-" TID "-" PID "-09", &f), 0);
    CHECK_EQ_INT(f, 9);
    /* Spaces and tabs around the value (OWS). */
    CHECK_EQ_INT(parse(" \t00-" TID "-" PID "-01 \t", NULL), 0);
    /* Future versions: at least 55 characters, the flags followed by '-' or the end. */
    CHECK_EQ_INT(parse("cc-" TID "-" PID "-01", NULL), 0);
    CHECK_EQ_INT(parse("cc-" TID "-" PID "-01-what-the-future-will-be-like", NULL), 0);
    CHECK_EQ_INT(parse("01-" TID "-" PID "-01-", NULL), 0);
    CHECK_EQ_INT(parse("fe-" TID "-" PID "-01", NULL), 0);
}

static void test_traceparent_invalid(void)
{
    static const char *const bad[] = {
        "",
        "00",
        "00-" TID "-" PID "-0",                           /* 54 characters */
        "00-" TID "-" PID "-01-",                         /* version 00 is exactly 55 */
        "00-" TID "-" PID "-01.",                         /* ... */
        "00-" TID "-" PID "-01-what-the-future",          /* ... even with a '-' */
        "ff-" TID "-" PID "-01",                          /* version ff is invalid */
        "0g-" TID "-" PID "-01",                          /* version not hex */
        "0A-" TID "-" PID "-01",                          /* upper-case version */
        "-0-" TID "-" PID "-01",                          /* ... */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-" PID "-01", /* upper-case trace id */
        "00-" TID "-00F067AA0BA902B7-01",                 /* upper-case parent id */
        "00-" TID "-" PID "-0A",                          /* upper-case flags */
        "00-" TID "-" PID "-0x",                          /* flags not hex */
        "00-4bf92f3577b34da6a3ce929d0e0e473g-" PID "-01", /* trace id not hex */
        "00-" TID "-00f067aa0ba902bz-01",                 /* parent id not hex */
        "00-00000000000000000000000000000000-" PID "-01", /* all-zero trace id */
        "00-" TID "-0000000000000000-01",                 /* all-zero parent id */
        "00_" TID "-" PID "-01",                          /* separators */
        "00-" TID "_" PID "-01",
        "00-" TID "-" PID "_01",
        "00-" TID "0-" PID "-01",                         /* a trace id one digit long */
        "00-4bf92f3577b34da6a3ce929d0e0e473-" PID "0-01", /* ... one short */
        "00-" TID "-" PID "0-1",                          /* a parent id one digit long */
        "00-" TID " -" PID "-01",                         /* spaces inside */
        "00 -" TID "-" PID "-01",
        "cc-" TID "-" PID "-01.what-the-future", /* a future version: '-' after flags */
        "cc-" TID "-" PID "-0",                  /* ... and at least 55 characters */
        "ff-" TID "-" PID "-01-what-the-future", /* ff even with more */
        "00-" TID "-" PID "-01\n",               /* not OWS */
    };
    for (size_t i = 0; i < LP_ARRAY_LEN(bad); i++)
        if (!CHECK_EQ_INT(parse(bad[i], NULL), -1))
            fprintf(stderr, "    accepted: \"%s\"\n", bad[i]);
    /* A NUL inside is not the end. */
    char nul[LP_TRACEPARENT_LEN + 1];
    memcpy(nul, "00-" TID "-" PID "-01", LP_TRACEPARENT_LEN);
    nul[40] = 0;
    uint8_t t[16], p[8], f;
    CHECK_EQ_INT(lp_traceparent_parse(nul, LP_TRACEPARENT_LEN, t, p, &f), -1);
}

/* Combines the NULL-ended values; returns the length and the text in out. */
static int ts(char *out, size_t cap, const char *v0, const char *v1, const char *v2)
{
    lp_str_t v[3];
    size_t n = 0;
    const char *in[3] = {v0, v1, v2};
    for (int i = 0; i < 3 && in[i]; i++)
        v[n++] = (lp_str_t){in[i], strlen(in[i])};
    int rc = lp_tracestate_combine(v, n, out, cap);
    if (rc >= 0)
        out[rc] = 0;
    return rc;
}

static void check_ts(const char *v0, const char *v1, const char *want)
{
    char out[LP_TRACESTATE_MAX + 1];
    int rc = ts(out, LP_TRACESTATE_MAX, v0, v1, NULL);
    if (!want) {
        if (!CHECK_EQ_INT(rc, -1))
            fprintf(stderr, "    accepted: \"%s\" \"%s\"\n", v0, v1 ? v1 : "");
        return;
    }
    if (CHECK_EQ_INT(rc, (int)strlen(want)))
        CHECK_STR(out, want);
    else
        fprintf(stderr, "    for \"%s\" \"%s\"\n", v0, v1 ? v1 : "");
}

static void test_tracestate(void)
{
    check_ts("rojo=00f067aa0ba902b7", NULL, "rojo=00f067aa0ba902b7");
    check_ts("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", NULL,
             "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    /* Several headers are one list; OWS and empty members go. */
    check_ts("a=1 ,\t b=2", "c=3", "a=1,b=2,c=3");
    check_ts(",,a=1,, ,", " ", "a=1");
    check_ts("", NULL, "");
    check_ts("a=1", "", "a=1");
    /* Keys. */
    check_ts("a_b-c*d/e9=1", NULL, "a_b-c*d/e9=1");
    check_ts("1tenant@sys=1", NULL, "1tenant@sys=1");
    check_ts("t@s_y-s*/9=1", NULL, "t@s_y-s*/9=1");
    check_ts("Rojo=1", NULL, NULL); /* upper case */
    check_ts("1abc=1", NULL, NULL); /* a simple key starts with a letter */
    check_ts("_abc=1", NULL, NULL);
    check_ts("t@1sys=1", NULL, NULL); /* a system id starts with a letter */
    check_ts("t@=1", NULL, NULL);
    check_ts("@s=1", NULL, NULL);
    check_ts("t@s@x=1", NULL, NULL);
    check_ts("a.b=1", NULL, NULL);
    check_ts("t@abcdefghijklmn=1", NULL, "t@abcdefghijklmn=1"); /* system id of 14 */
    check_ts("t@abcdefghijklmno=1", NULL, NULL);                /* ... 15 */
    check_ts("=1", NULL, NULL);
    check_ts("a", NULL, NULL); /* no '=' */
    /* Values. */
    check_ts("a=x y", NULL, "a=x y");
    check_ts("a= x", NULL, "a= x"); /* a value may start with a space (chr) */
    check_ts("a=", NULL, NULL);
    check_ts("a=b=c", NULL, NULL);
    check_ts("a=\x7f", NULL, NULL);
    check_ts("a=x\ty", NULL, NULL);
    check_ts("a=\xc3\xa9", NULL, NULL);
    check_ts("a=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~", NULL, "a=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~");
    /* A key twice: the header is invalid. */
    check_ts("a=1,b=2,a=3", NULL, NULL);
    check_ts("a=1", "a=1", NULL);
}

static void test_tracestate_limits(void)
{
    char in[4096], out[4096], want[4096];
    /* 32 members are fine, 33 are not. */
    size_t n = 0;
    for (int i = 0; i < 33; i++)
        n += (size_t)snprintf(in + n, sizeof(in) - n, "%sk%d=v", i ? "," : "", i);
    char *last = strrchr(in, ',');
    *last = 0;
    CHECK(ts(out, sizeof(out), in, NULL, NULL) > 0);
    *last = ',';
    CHECK_EQ_INT(ts(out, sizeof(out), in, NULL, NULL), -1);
    /* Key and value lengths: 256 characters each at most. */
    char key[300], val[300];
    memset(key, 'k', 256);
    key[256] = 0;
    snprintf(in, sizeof(in), "%s=1", key);
    CHECK_EQ_INT(ts(out, sizeof(out), in, NULL, NULL), 258);
    memset(key, 'k', 257);
    key[257] = 0;
    snprintf(in, sizeof(in), "%s=1", key);
    CHECK_EQ_INT(ts(out, sizeof(out), in, NULL, NULL), -1);
    memset(val, 'v', 256);
    val[256] = 0;
    snprintf(in, sizeof(in), "a=%s", val);
    CHECK_EQ_INT(ts(out, sizeof(out), in, NULL, NULL), 258);
    memset(val, 'v', 257);
    val[257] = 0;
    snprintf(in, sizeof(in), "a=%s", val);
    CHECK_EQ_INT(ts(out, sizeof(out), in, NULL, NULL), -1);
    /* Over 512 characters: members over 128 go first, then members from the end. */
    memset(val, 'v', 200);
    val[200] = 0;
    char mid[100];
    memset(mid, 'm', 98);
    mid[98] = 0;
    /* "a=<100>,big=<200>,b..f=<100 each>" */
    snprintf(in, sizeof(in), "a=%s,big=%s,b=%s,c=%s,d=%s,e=%s,f=%s", mid, val, mid, mid, mid, mid,
             mid);
    int rc = ts(out, 512, in, NULL, NULL);
    snprintf(want, sizeof(want), "a=%s,b=%s,c=%s,d=%s,e=%s", mid, mid, mid, mid, mid);
    CHECK_EQ_INT(rc, (int)strlen(want)); /* 5 x 100 + 4 commas = 504: f went too */
    if (rc > 0)
        CHECK_STR(out, want);
    /* Exactly 512 stays whole. */
    n = 0;
    for (int i = 0; i < 4; i++)
        n += (size_t)snprintf(in + n, sizeof(in) - n, "%s%c=%s", i ? "," : "", 'a' + i, mid);
    /* 4 x 100 + 3 = 403; ",z=" and 106 more make 512 */
    char tail[120];
    memset(tail, 't', 106);
    tail[106] = 0;
    snprintf(in + n, sizeof(in) - n, ",z=%s", tail);
    CHECK_EQ_INT((int)strlen(in), 512);
    CHECK_EQ_INT(ts(out, 512, in, NULL, NULL), 512);
}

static void test_ids(void)
{
    uint8_t a[16], b[16];
    lp_trace_random_id(a, 16);
    lp_trace_random_id(b, 16);
    CHECK(memcmp(a, b, 16) != 0);
    static const uint8_t zero[16] = {0};
    CHECK(memcmp(a, zero, 16) != 0);
    uint8_t s[8];
    lp_trace_random_id(s, 8);
    CHECK(memcmp(s, zero, 8) != 0);
    char hex[33] = {0};
    static const uint8_t id[16] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
                                   0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10};
    lp_trace_hex(hex, id, 16);
    CHECK_STR(hex, "0123456789abcdeffedcba9876543210");
    /* The ratio draw is in [0, 1) and not stuck. */
    double lo = 1, hi = 0;
    for (int i = 0; i < 1000; i++) {
        double u = lp_trace_random_unit();
        CHECK(u >= 0 && u < 1);
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
    }
    CHECK(lo < 0.1 && hi > 0.9);
}

/* A request's spans as OTLP JSON: within lp_trace_otlp_bound() even when every byte needs
 * the longest escape, valid JSON inside the prefix and suffix, the ids and links right. */
static void test_otlp_spans(void)
{
    static lp_req_t req; /* large: not on the stack */
    memset(&req, 0, sizeof(req));
    char path[300], host[100];
    for (size_t i = 0; i < sizeof(path); i++)
        path[i] = (char)(i % 3 == 0 ? 0x01 : i % 3 == 1 ? 0xff : '"');
    memset(host, 0x02, sizeof(host));
    req.h1.path = (lp_str_t){path, sizeof(path)};
    req.h1.host = (lp_str_t){host, sizeof(host)};
    req.flags = LP_RF_PARSED;
    req.method = HTTP_GET;
    req.minor = 1;
    req.route_index = 2;
    req.resp.sent_status = 502;
    req.t_start = 1000;
    memcpy(req.client_ip, "192.0.2.1", 10);
    lp_trace_t *t = &req.trace;
    t->on = t->sampled = t->recorded = 1;
    lp_trace_random_id(t->trace_id, 16);
    lp_trace_random_id(t->span_id, 8);
    lp_trace_random_id(t->parent_id, 8);
    memset(t->tracestate, 0x7f, LP_TRACESTATE_MAX); /* not valid, but the worst to escape */
    t->tracestate_len = LP_TRACESTATE_MAX;
    t->ntries = LP_TRACE_TRIES;
    for (int i = 0; i < LP_TRACE_TRIES; i++) {
        lp_trace_try_t *tr = &t->tries[i];
        lp_trace_random_id(tr->span_id, 8);
        tr->start = 2000 + (uint64_t)i;
        tr->end = i == LP_TRACE_TRIES - 1 ? 0 : 3000;
        tr->failed = 1;
        tr->fail_kind = 2;
        tr->status = 503;
        snprintf(tr->addr, sizeof(tr->addr), "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff%d]:65535", i);
    }
    size_t bound = lp_trace_otlp_bound(&req);
    char *buf = malloc(bound + 4096);
    REQUIRE(buf != NULL);
    size_t plen = 0;
    char *prefix = lp_trace_otlp_prefix("svc \"x\"", &plen);
    REQUIRE(prefix != NULL);
    memcpy(buf, prefix, plen);
    size_t n = lp_trace_otlp_spans(buf + plen, &req, 1700000000000000000ULL, 5000);
    CHECK(n <= bound);
    memcpy(buf + plen + n, LP_TRACE_OTLP_SUFFIX, sizeof(LP_TRACE_OTLP_SUFFIX) - 1);
    json_error_t err;
    json_t *doc = json_loadb(buf, plen + n + sizeof(LP_TRACE_OTLP_SUFFIX) - 1, 0, &err);
    if (!CHECK(doc != NULL))
        fprintf(stderr, "    %s at %d\n", err.text, err.position);
    json_t *rs = json_array_get(json_object_get(doc, "resourceSpans"), 0);
    json_t *svc = json_array_get(json_object_get(json_object_get(rs, "resource"), "attributes"), 0);
    CHECK_STR(json_string_value(json_object_get(json_object_get(svc, "value"), "stringValue")),
              "svc \"x\"");
    json_t *spans = json_object_get(json_array_get(json_object_get(rs, "scopeSpans"), 0), "spans");
    CHECK_EQ_INT(json_array_size(spans), 1 + LP_TRACE_TRIES);
    char tid[33] = {0}, sid[17] = {0}, pid[17] = {0};
    lp_trace_hex(tid, t->trace_id, 16);
    lp_trace_hex(sid, t->span_id, 8);
    lp_trace_hex(pid, t->parent_id, 8);
    json_t *server = json_array_get(spans, 0);
    CHECK_STR(json_string_value(json_object_get(server, "traceId")), tid);
    CHECK_STR(json_string_value(json_object_get(server, "spanId")), sid);
    CHECK_STR(json_string_value(json_object_get(server, "parentSpanId")), pid);
    CHECK_EQ_INT(json_integer_value(json_object_get(server, "kind")), 2);
    CHECK_STR(json_string_value(json_object_get(server, "startTimeUnixNano")),
              "1700000000000001000");
    CHECK_STR(json_string_value(json_object_get(server, "endTimeUnixNano")), "1700000000000005000");
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(server, "status"), "code")), 2);
    json_t *kid = json_array_get(spans, LP_TRACE_TRIES);
    CHECK_EQ_INT(json_integer_value(json_object_get(kid, "kind")), 3);
    CHECK_STR(json_string_value(json_object_get(kid, "parentSpanId")), sid);
    CHECK_STR(json_string_value(json_object_get(kid, "endTimeUnixNano")), "1700000000000005000");
    json_t *a;
    size_t i;
    int port = 0, resend = -1;
    json_array_foreach(json_object_get(kid, "attributes"), i, a)
    {
        const char *k = json_string_value(json_object_get(a, "key"));
        const char *v = json_string_value(json_object_get(json_object_get(a, "value"), "intValue"));
        if (strcmp(k, "server.port") == 0)
            port = atoi(v);
        if (strcmp(k, "http.request.resend_count") == 0)
            resend = atoi(v);
        if (strcmp(k, "server.address") == 0)
            CHECK_STR(
                json_string_value(json_object_get(json_object_get(a, "value"), "stringValue")),
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff7");
    }
    CHECK_EQ_INT(port, 65535);
    CHECK_EQ_INT(resend, LP_TRACE_TRIES - 1);
    json_decref(doc);
    free(prefix);
    free(buf);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_traceparent_valid),
    LP_TEST_ENTRY(test_traceparent_invalid),
    LP_TEST_ENTRY(test_tracestate),
    LP_TEST_ENTRY(test_tracestate_limits),
    LP_TEST_ENTRY(test_ids),
    LP_TEST_ENTRY(test_otlp_spans),
};

LP_TEST_MAIN(tests)
