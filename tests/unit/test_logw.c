/* engine/logw.c: RFC 5424 headers, file output through the writer thread, drops counted
 * when the queue is full. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <uv.h>
#include "lp_test.h"
#include "logw.h"

static void test_syslog_header(void)
{
    char out[LP_SYSLOG_HEADER_MAX];
    struct timespec ts = {.tv_sec = 1764873265, .tv_nsec = 123456789}; /* 2025-12-04T18:34:25 */
    size_t n = lp__syslog_header(out, 23 * 8 + 6, &ts, "web-1", "luaproxy", 4242, "access");
    out[n] = 0;
    CHECK_STR(out, "<190>1 2025-12-04T18:34:25.123Z web-1 luaproxy 4242 access - ");

    /* Empty fields are "-"; bytes outside 33-126 become '_'; lengths are RFC 5424's. */
    char host[300];
    memset(host, 'h', sizeof(host) - 1);
    host[sizeof(host) - 1] = 0;
    n = lp__syslog_header(out, 0, &ts, host, "my app\x01", 1, "");
    out[n] = 0;
    char want[LP_SYSLOG_HEADER_MAX];
    snprintf(want, sizeof(want), "<0>1 2025-12-04T18:34:25.123Z %.255s my_app_ 1 - - ", host);
    CHECK_STR(out, want);

    char app[60];
    memset(app, 'a', sizeof(app) - 1);
    app[sizeof(app) - 1] = 0;
    n = lp__syslog_header(out, 191, &ts, NULL, app, 7, "0123456789012345678901234567890123");
    out[n] = 0;
    snprintf(want, sizeof(want), "<191>1 2025-12-04T18:34:25.123Z - %.48s 7 %.32s - ", app,
             "0123456789012345678901234567890123");
    CHECK_STR(out, want);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static lp_logchunk_t *chunk_of(lp_logsink_t *s, const char *text, uint32_t lines)
{
    lp_logchunk_t *c = lp_logchunk_new(s, strlen(text));
    memcpy(c->data, text, strlen(text));
    c->len = strlen(text);
    c->nlines = lines;
    return c;
}

static void test_file_through_writer(void)
{
    char path[] = "/tmp/lp_unit_logw_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    char err[256] = "";
    lp_log_output_t o = {.kind = LP_LOGOUT_FILE, .target = path, .facility = 23, .severity = 6};
    lp_logsink_t *s = lp_logsink_open(&o, "access", err, sizeof(err));
    REQUIRE(s != NULL);
    CHECK(!lp_logsink_is_syslog(s));
    /* Without the writer: written by the caller at once. */
    CHECK_EQ_INT(lp_logw_submit(chunk_of(s, "one\n", 1)), 0);
    REQUIRE_EQ_INT(lp_logw_start(1 << 20), 0);
    CHECK(lp_logw_running());
    CHECK_EQ_INT(lp_logw_submit(chunk_of(s, "two\nthree\n", 2)), 0);
    lp_logsink_unref(s); /* the queued chunk keeps the file open */
    lp_logw_stop(1000);
    CHECK(!lp_logw_running());
    char *text = slurp(path);
    CHECK_STR(text, "one\ntwo\nthree\n");
    free(text);
    unlink(path);
}

static void test_full_queue_drops(void)
{
    /* A FIFO whose reader never reads: the writer waits on it (poll), the queue fills, and
     * later chunks are dropped and counted. */
    char dir[] = "/tmp/lp_unit_fifo_XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    char fifo[128];
    snprintf(fifo, sizeof(fifo), "%s/f", dir);
    REQUIRE(mkfifo(fifo, 0600) == 0);
    int rd = open(fifo, O_RDONLY | O_NONBLOCK);
    REQUIRE(rd >= 0);
    char err[256] = "";
    lp_log_output_t o = {.kind = LP_LOGOUT_FILE, .target = fifo};
    lp_logsink_t *s = lp_logsink_open(&o, "access", err, sizeof(err));
    unlink(fifo);
    rmdir(dir);
    REQUIRE(s != NULL);
    signal(SIGPIPE, SIG_IGN); /* as the proxy: a write to the FIFO once its reader closed */
    REQUIRE_EQ_INT(lp_logw_start(256 * 1024), 0);
    uint64_t before = lp_logw_lines_dropped();
    char *big = malloc(64 * 1024 + 1);
    memset(big, 'x', 64 * 1024);
    big[64 * 1024 - 1] = '\n';
    big[64 * 1024] = 0;
    int refused = 0;
    for (int i = 0; i < 64; i++) {
        lp_logchunk_t *c = chunk_of(s, big, 1);
        if (lp_logw_submit(c) != 0) {
            refused++;
            lp_logchunk_free(c);
        }
    }
    CHECK(refused > 0);
    CHECK(lp_logw_lines_dropped() - before >= (uint64_t)refused);
    lp_logsink_unref(s);
    uint64_t t0 = uv_hrtime();
    lp_logw_stop(300); /* gives the stalled output up, and the rest of the queue at once */
    CHECK(uv_hrtime() - t0 < 1500000000ull);
    CHECK(!lp_logw_running());
    free(big);
    close(rd);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_syslog_header),
    LP_TEST_ENTRY(test_file_through_writer),
    LP_TEST_ENTRY(test_full_queue_drops),
};

LP_TEST_MAIN(tests)
