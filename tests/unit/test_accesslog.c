/* Unit tests for engine/accesslog.c: template validation and opening, both escapers, and
 * whole lines (text and JSON) written for requests built here. */
#include <unistd.h>
#include "lp_test.h"
#include "config.h"
#include "accesslog.h"

static lp_log_format_t text_format(const char *t)
{
    return (lp_log_format_t){.text = (char *)t};
}

static void test_check_format_accepts(void)
{
    static const char *const ok[] = {
        LP_ACCESS_FORMAT_DEFAULT,
        "$remote_addr $http_user_agent",
        "$request_method $uri $status $body_bytes_sent $host",
        "$time_local $request_time $upstream_response_time $upstream_addr",
        "$method",
        "plain text, no variables",
        "",
        "[$status]$status$status",
        "$http_x_forwarded_for",
    };
    for (size_t i = 0; i < LP_ARRAY_LEN(ok); i++) {
        char err[256] = "";
        lp_log_format_t f = text_format(ok[i]);
        if (!CHECK_EQ_INT(lp_accesslog_check_format(&f, err, sizeof(err)), 0))
            fprintf(stderr, "  format \"%s\": %s\n", ok[i], err);
    }
}

static void test_check_format_rejects(void)
{
    static const char *const bad[][2] = {
        {"$nosuchvar", "$nosuchvar"},
        {"$remote_addr $nosuchvar tail", "$nosuchvar"},
        {"$status $statuses", "$statuses"},
        {"$http_", "$http_"}, /* a header variable needs a name */
    };
    for (size_t i = 0; i < LP_ARRAY_LEN(bad); i++) {
        char err[256] = "";
        lp_log_format_t f = text_format(bad[i][0]);
        if (!CHECK_EQ_INT(lp_accesslog_check_format(&f, err, sizeof(err)), LP_ECONFIG))
            fprintf(stderr, "  format \"%s\" was accepted\n", bad[i][0]);
        CHECK_CONTAINS(err, bad[i][1]);
        CHECK_CONTAINS(err, "unknown variable");
        CHECK_CONTAINS(err, "log.format");
    }
}

static void test_check_json_format(void)
{
    lp_log_field_t ok[] = {
        {"status", "$status"}, {"x", "literal"}, {"mixed", "$uri?$status"}, {"e", ""}};
    lp_log_format_t f = {.json = ok, .njson = LP_ARRAY_LEN(ok)};
    char err[256] = "";
    CHECK_EQ_INT(lp_accesslog_check_format(&f, err, sizeof(err)), 0);

    lp_log_field_t bad[] = {{"status", "$status"}, {"ua", "agent $http_ $status"}};
    f = (lp_log_format_t){.json = bad, .njson = LP_ARRAY_LEN(bad)};
    CHECK_EQ_INT(lp_accesslog_check_format(&f, err, sizeof(err)), LP_ECONFIG);
    CHECK_CONTAINS(err, "log.json.ua: unknown variable $http_");

    lp_log_field_t alone[] = {{"t", "$bogus"}};
    f = (lp_log_format_t){.json = alone, .njson = 1};
    CHECK_EQ_INT(lp_accesslog_check_format(&f, err, sizeof(err)), LP_ECONFIG);
    CHECK_CONTAINS(err, "log.json.t: unknown variable $bogus");
}

static void test_open(void)
{
    char err[256] = "";
    lp_log_format_t def = text_format(LP_ACCESS_FORMAT_DEFAULT);
    /* No path: no log, and no error. */
    CHECK(lp_accesslog_open(NULL, &def, err, sizeof(err)) == NULL);

    char path[] = "/tmp/lp_unit_access_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    lp_accesslog_t *log = lp_accesslog_open(path, &def, err, sizeof(err));
    CHECK(log != NULL);
    if (log) {
        lp_accesslog_flush(log); /* nothing buffered: nothing written */
        lp_accesslog_close(log);
    }

    err[0] = 0;
    lp_log_format_t bogus = text_format("$bogus");
    CHECK(lp_accesslog_open(path, &bogus, err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "$bogus");
    unlink(path);

    err[0] = 0;
    lp_log_format_t status = text_format("$status");
    CHECK(lp_accesslog_open("/nonexistent-dir/x/access.log", &status, err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "/nonexistent-dir/x/access.log");
}

/* ---------------------------------------------------------------------------- escapers */

static const char *json_esc(const char *s, size_t n)
{
    static char out[4096];
    size_t len = lp__accesslog_json_escape(out, s, n);
    CHECK(len <= 6 * n);
    out[len] = 0;
    return out;
}

static const char *text_esc(const char *s, size_t n)
{
    static char out[4096];
    size_t len = lp__accesslog_text_escape(out, s, n);
    CHECK(len <= 4 * n);
    out[len] = 0;
    return out;
}

#define JSON_ESC(lit) json_esc((lit), sizeof(lit) - 1)
#define TEXT_ESC(lit) text_esc((lit), sizeof(lit) - 1)

static void test_json_escape(void)
{
    CHECK_STR(JSON_ESC(""), "");
    CHECK_STR(JSON_ESC("plain /path?a=1&b=2 ~!@#$%^*()"), "plain /path?a=1&b=2 ~!@#$%^*()");
    CHECK_STR(JSON_ESC("a\"b\\c"), "a\\\"b\\\\c");
    CHECK_STR(JSON_ESC("\b\f\n\r\t"), "\\b\\f\\n\\r\\t");
    CHECK_STR(JSON_ESC("\x00\x01\x1b\x1f\x7f"), "\\u0000\\u0001\\u001b\\u001f\\u007f");
    CHECK_STR(JSON_ESC("</script>"), "</script>"); /* '/' needs no escape */
}

static void test_json_escape_utf8(void)
{
    /* Well-formed characters of every length pass as they are, including the edges. */
    CHECK_STR(JSON_ESC("\xc2\x80 \xc3\xa9 \xdf\xbf"), "\xc2\x80 \xc3\xa9 \xdf\xbf");
    CHECK_STR(JSON_ESC("\xe0\xa0\x80 \xe2\x82\xac \xed\x9f\xbf \xee\x80\x80 \xef\xbf\xbf"),
              "\xe0\xa0\x80 \xe2\x82\xac \xed\x9f\xbf \xee\x80\x80 \xef\xbf\xbf");
    CHECK_STR(JSON_ESC("\xf0\x90\x80\x80 \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf"),
              "\xf0\x90\x80\x80 \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf");
    /* Every byte that is not part of a well-formed character becomes \u00xx of itself. */
    CHECK_STR(JSON_ESC("\xff"), "\\u00ff");
    CHECK_STR(JSON_ESC("\x80"), "\\u0080");                       /* a lone continuation byte */
    CHECK_STR(JSON_ESC("\xc0\xaf"), "\\u00c0\\u00af");            /* overlong '/' */
    CHECK_STR(JSON_ESC("\xc1\xbf"), "\\u00c1\\u00bf");            /* overlong */
    CHECK_STR(JSON_ESC("\xe0\x80\xaf"), "\\u00e0\\u0080\\u00af"); /* overlong */
    CHECK_STR(JSON_ESC("\xf0\x80\x80\xaf"), "\\u00f0\\u0080\\u0080\\u00af"); /* overlong */
    CHECK_STR(JSON_ESC("\xed\xa0\x80"), "\\u00ed\\u00a0\\u0080");            /* U+D800 */
    CHECK_STR(JSON_ESC("\xed\xbf\xbf"), "\\u00ed\\u00bf\\u00bf");            /* U+DFFF */
    CHECK_STR(JSON_ESC("\xf4\x90\x80\x80"), "\\u00f4\\u0090\\u0080\\u0080"); /* > U+10FFFF */
    CHECK_STR(JSON_ESC("\xf5\x80\x80\x80"), "\\u00f5\\u0080\\u0080\\u0080");
    /* Cut short: at the end of the value, or by an ASCII byte. */
    CHECK_STR(JSON_ESC("a\xc3"), "a\\u00c3");
    CHECK_STR(JSON_ESC("\xe2\x82"), "\\u00e2\\u0082");
    CHECK_STR(JSON_ESC("\xf0\x9f\x98"), "\\u00f0\\u009f\\u0098");
    CHECK_STR(JSON_ESC("\xe2\x82\"x"), "\\u00e2\\u0082\\\"x");
    /* A bad byte does not swallow the good character after it. */
    CHECK_STR(JSON_ESC("\xff\xc3\xa9"), "\\u00ff\xc3\xa9");
    CHECK_STR(JSON_ESC("\xc3\xc3\xa9"), "\\u00c3\xc3\xa9");
    /* The worst case is 6 bytes out per byte in. */
    char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    json_esc(all, sizeof(all));
}

static void test_text_escape(void)
{
    CHECK_STR(TEXT_ESC("GET /a?b=c HTTP/1.1"), "GET /a?b=c HTTP/1.1");
    CHECK_STR(TEXT_ESC("a\"b\\c"), "a\\x22b\\x5Cc");
    CHECK_STR(TEXT_ESC("\n\x01\x7f\x80\xc3\xa9\xff"), "\\x0A\\x01\\x7F\\x80\\xC3\\xA9\\xFF");
}

/* ---------------------------------------------------------------------------- lines */

typedef struct {
    lp_req_t req;
    lp_conn_t conn;
    lp_header_t headers[8];
    char path[64];
} fake_t;

static lp_upstream_rt_t fake_upstream;

static void str_set(lp_str_t *s, const char *p, size_t n)
{
    s->base = p;
    s->len = n;
}

/* A finished request: GET of url/path with the given headers, answered 200 with 1234 body
 * bytes by 127.0.0.1:8080, not through TLS. */
static void fake_init(fake_t *f, const char *url, size_t ulen, const char *const *hdrs, size_t n)
{
    memset(f, 0, sizeof(*f));
    f->req.conn = &f->conn;
    snprintf(f->req.client_ip, sizeof(f->req.client_ip), "10.0.0.7");
    f->req.method = HTTP_GET;
    f->req.flags = LP_RF_PARSED;
    f->req.minor = 1;
    f->req.resp.sent_status = 200;
    f->req.resp.body_out = 1234;
    f->req.upstream = &fake_upstream;
    f->req.try.target = 0;
    snprintf(f->req.try.target_addr, sizeof(f->req.try.target_addr), "127.0.0.1:8080");
    f->req.t_start = uv_hrtime();
    str_set(&f->req.h1.url, url, ulen);
    size_t plen = 0;
    while (plen < ulen && url[plen] != '?')
        plen++;
    str_set(&f->req.h1.path, url, plen);
    str_set(&f->req.h1.host, "a.test", 6);
    f->req.h1.headers = f->headers;
    for (size_t i = 0; i + 1 < 2 * n; i += 2) {
        lp_header_t *h = &f->headers[f->req.h1.nheaders++];
        str_set(&h->name, hdrs[i], strlen(hdrs[i]));
        /* Values may hold NUL bytes: a length-prefixed form "\x05abcde" is used for them. */
        str_set(&h->value, hdrs[i + 1] + 1, (size_t)(unsigned char)hdrs[i + 1][0]);
    }
}

typedef struct {
    char path[64];
    lp_accesslog_t *log;
} tlog_t;

static int tlog_open(tlog_t *t, const lp_log_format_t *f)
{
    snprintf(t->path, sizeof(t->path), "/tmp/lp_unit_access_XXXXXX");
    int fd = mkstemp(t->path);
    if (fd < 0)
        return -1;
    close(fd);
    char err[256] = "";
    t->log = lp_accesslog_open(t->path, f, err, sizeof(err));
    if (!t->log)
        fprintf(stderr, "  open: %s\n", err);
    return t->log ? 0 : -1;
}

/* Flushes, closes and returns the file's contents (malloc'd, NUL-terminated). */
static char *tlog_read(tlog_t *t, size_t *len)
{
    lp_accesslog_close(t->log);
    t->log = NULL;
    FILE *fp = fopen(t->path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    if (fp) {
        for (;;) {
            if (n + 65536 + 1 > cap) {
                cap = (cap + 65536) * 2;
                buf = realloc(buf, cap);
            }
            size_t r = fread(buf + n, 1, 65536, fp);
            if (!r)
                break;
            n += r;
        }
        fclose(fp);
    }
    unlink(t->path);
    if (buf)
        buf[n] = 0;
    if (len)
        *len = n;
    return buf;
}

#define LIT(s) (s), sizeof(s) - 1

static void test_text_line(void)
{
    /* A length byte (octal: a hex escape would swallow the letter after it), then the value. */
    static const char *const hdrs[] = {"User-Agent", "\011a\"b\\c\n\xc3\xa9!", "X-Empty", "\x00"};
    fake_t f;
    fake_init(&f, LIT("/p\"q?x=\x01"), hdrs, 2);
    lp_log_format_t fmt = text_format("$remote_addr \"$request\" $status $body_bytes_sent "
                                      "$uri $host \"$http_user_agent\" $http_referer "
                                      "[$http_x_empty] $upstream_addr $upstream_response_time "
                                      "$scheme $ssl_protocol");
    tlog_t t;
    REQUIRE(tlog_open(&t, &fmt) == 0);
    lp_accesslog_write(t.log, &f.req);
    char *out = tlog_read(&t, NULL);
    REQUIRE(out != NULL);
    CHECK_STR(out, "10.0.0.7 \"GET /p\\x22q?x=\\x01 HTTP/1.1\" 200 1234 /p\\x22q a.test "
                   "\"a\\x22b\\x5Cc\\x0A\\xC3\\xA9!\" - [-] 127.0.0.1:8080 - http -\n");
    free(out);
}

static void test_json_line(void)
{
    static const char *const hdrs[] = {
        "User-Agent",
        "\015a\"b\\c\x00\x1b\n\xff\xc3\xa9\t/", /* length, then NUL, ESC, bad byte */
        "X-Empty",
        "\x00",
    };
    fake_t f;
    fake_init(&f, LIT("/p\"\\\xc0?x=\x7f"), hdrs, 2);
    /* In the order given: the config sorts them by name. */
    lp_log_field_t m[] = {
        {"addr", "$remote_addr"},
        {"bytes", "$body_bytes_sent"},
        {"empty", "$http_x_empty"},
        {"lit", "say \"hi\"\n"},
        {"mixed", "$request_method $uri ($status, $upstream_response_time$http_referer)"},
        {"na\"me\x01", "$host"},
        {"referer", "$http_referer"},
        {"request", "$request"},
        {"status", "$status"},
        {"tls", "$ssl_protocol"},
        {"ua", "$http_user_agent"},
        {"upstream", "$upstream_addr"},
        {"urt", "$upstream_response_time"},
    };
    lp_log_format_t fmt = {.json = m, .njson = LP_ARRAY_LEN(m)};
    tlog_t t;
    REQUIRE(tlog_open(&t, &fmt) == 0);
    lp_accesslog_write(t.log, &f.req);
    f.req.resp.sent_status = 502;
    f.req.upstream = NULL;
    f.req.resp.body_out = 0;
    lp_accesslog_write(t.log, &f.req);
    char *out = tlog_read(&t, NULL);
    REQUIRE(out != NULL);
    CHECK_STR(out,
              "{\"addr\":\"10.0.0.7\",\"bytes\":1234,\"empty\":\"\",\"lit\":\"say \\\"hi\\\"\\n\","
              "\"mixed\":\"GET /p\\\"\\\\\\u00c0 (200, )\",\"na\\\"me\\u0001\":\"a.test\","
              "\"referer\":null,\"request\":\"GET /p\\\"\\\\\\u00c0?x=\\u007f HTTP/1.1\","
              "\"status\":200,\"tls\":null,"
              "\"ua\":\"a\\\"b\\\\c\\u0000\\u001b\\n\\u00ff\xc3\xa9\\t/\","
              "\"upstream\":\"127.0.0.1:8080\",\"urt\":null}\n"
              "{\"addr\":\"10.0.0.7\",\"bytes\":0,\"empty\":\"\",\"lit\":\"say \\\"hi\\\"\\n\","
              "\"mixed\":\"GET /p\\\"\\\\\\u00c0 (502, )\",\"na\\\"me\\u0001\":\"a.test\","
              "\"referer\":null,\"request\":\"GET /p\\\"\\\\\\u00c0?x=\\u007f HTTP/1.1\","
              "\"status\":502,\"tls\":null,"
              "\"ua\":\"a\\\"b\\\\c\\u0000\\u001b\\n\\u00ff\xc3\xa9\\t/\","
              "\"upstream\":null,\"urt\":null}\n");
    free(out);
}

/* A head refused before it parsed: no method (req->method 0 would read DELETE), no
 * request line; what was read of the target still shows in $uri. */
static void test_unparsed_head(void)
{
    fake_t f;
    fake_init(&f, LIT("/bad\x01"), NULL, 0);
    f.req.flags = 0;
    f.req.method = 0;
    f.req.resp.sent_status = 400;
    f.req.upstream = NULL;
    lp_log_field_t m[] = {
        {"m", "$request_method"}, {"r", "$request"}, {"s", "$status"}, {"u", "$uri"}};
    lp_log_format_t jf = {.json = m, .njson = LP_ARRAY_LEN(m)};
    lp_log_format_t tf = text_format("$request_method \"$request\" $status $uri");
    tlog_t t;
    REQUIRE(tlog_open(&t, &jf) == 0);
    lp_accesslog_write(t.log, &f.req);
    char *out = tlog_read(&t, NULL);
    CHECK_STR(out, "{\"m\":null,\"r\":null,\"s\":400,\"u\":\"/bad\\u0001\"}\n");
    free(out);
    REQUIRE(tlog_open(&t, &tf) == 0);
    lp_accesslog_write(t.log, &f.req);
    out = tlog_read(&t, NULL);
    CHECK_STR(out, "- \"-\" 400 /bad\\x01\n");
    free(out);
}

static void test_json_times_are_numbers(void)
{
    fake_t f;
    fake_init(&f, LIT("/"), NULL, 0);
    f.req.t_start -= 1500000000ull; /* 1.5 s ago */
    f.req.t_upstream = f.req.t_start + 250000000ull;
    f.req.t_upstream_head = f.req.t_upstream + 1;
    lp_log_field_t m[] = {
        {"rt", "$request_time"}, {"t", "$time_iso8601"}, {"urt", "$upstream_response_time"}};
    lp_log_format_t fmt = {.json = m, .njson = LP_ARRAY_LEN(m)};
    tlog_t t;
    REQUIRE(tlog_open(&t, &fmt) == 0);
    lp_accesslog_write(t.log, &f.req);
    char *out = tlog_read(&t, NULL);
    REQUIRE(out != NULL);
    double rt = 0, urt = 0;
    char when[40] = "";
    int n = sscanf(out, "{\"rt\":%lf,\"t\":\"%39[^\"]\",\"urt\":%lf}\n", &rt, when, &urt);
    if (!CHECK_EQ_INT(n, 3))
        fprintf(stderr, "  line: %s", out);
    CHECK(rt >= 1.5 && rt < 60);
    CHECK(urt >= 1.25 && urt < 60);
    CHECK_EQ_INT(strlen(when), 25); /* 2026-01-02T03:04:05+00:00 */
    free(out);
}

/* Lines longer than the buffer are written whole; a line over the limit is dropped, not
 * cut (a cut JSON line would not parse), and the lines around it are kept. */
static void test_long_lines(void)
{
    size_t big = 300 * 1024; /* 1.8 MiB escaped: past the 64 KiB buffer */
    char *ua = malloc(big + 1);
    REQUIRE(ua != NULL);
    memset(ua, '\x01', big);
    lp_header_t h = {.name = {"User-Agent", 10}, .value = {ua, big}};
    lp_log_field_t m[] = {{"s", "$status"}, {"ua", "$http_user_agent"}};
    lp_log_format_t fmt = {.json = m, .njson = LP_ARRAY_LEN(m)};
    tlog_t t;
    REQUIRE(tlog_open(&t, &fmt) == 0);
    fake_t f;
    fake_init(&f, LIT("/"), NULL, 0);
    f.req.h1.headers = &h;
    for (int i = 0; i < 100; i++) { /* fills the buffer mid-line many times */
        f.req.resp.sent_status = 200 + i;
        f.req.h1.nheaders = i % 10 == 5;
        lp_accesslog_write(t.log, &f.req);
    }
    /* Over 16 MiB escaped: dropped. */
    char *huge = realloc(ua, 3 * 1024 * 1024);
    REQUIRE(huge != NULL);
    ua = huge;
    memset(ua, '\x01', 3 * 1024 * 1024);
    h.value = (lp_str_t){ua, 3 * 1024 * 1024};
    f.req.h1.nheaders = 1;
    f.req.resp.sent_status = 999;
    lp_accesslog_write(t.log, &f.req);
    f.req.h1.nheaders = 0;
    f.req.resp.sent_status = 300;
    lp_accesslog_write(t.log, &f.req);
    size_t len = 0;
    char *out = tlog_read(&t, &len);
    free(ua);
    REQUIRE(out != NULL);
    int lines = 0, bad = 0, big_lines = 0;
    for (char *p = out, *nl; p < out + len; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(out + len - p));
        if (!nl) {
            bad++;
            break;
        }
        int status = 0;
        if (sscanf(p, "{\"s\":%d,\"ua\":", &status) != 1 ||
            status != (lines < 100 ? 200 + lines : 300))
            bad++;
        if ((size_t)(nl - p) == strlen("{\"s\":200,\"ua\":\"\"}") + 6 * big)
            big_lines++;
        lines++;
    }
    CHECK_EQ_INT(lines, 101);
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(big_lines, 10);
    free(out);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_check_format_accepts),
    LP_TEST_ENTRY(test_check_format_rejects),
    LP_TEST_ENTRY(test_check_json_format),
    LP_TEST_ENTRY(test_open),
    LP_TEST_ENTRY(test_json_escape),
    LP_TEST_ENTRY(test_json_escape_utf8),
    LP_TEST_ENTRY(test_text_escape),
    LP_TEST_ENTRY(test_text_line),
    LP_TEST_ENTRY(test_json_line),
    LP_TEST_ENTRY(test_unparsed_head),
    LP_TEST_ENTRY(test_json_times_are_numbers),
    LP_TEST_ENTRY(test_long_lines),
};

LP_TEST_MAIN(tests)
