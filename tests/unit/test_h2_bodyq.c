/* Unit tests for engine/h2_bodyq.c: bytes keep their order across blocks (small ones filled
 * before the next is taken), pieces taken off stay valid while their block is held, and as
 * a client session's data source the queue defers, sends the body, then ends the stream
 * with its trailers (or END_STREAM). */
#include <string.h>
#include "lp_test.h"
#include "h2_bodyq.h"

static void fill(char *p, size_t n, size_t from)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (char)((from + i) * 7 % 251);
}

static void test_order_across_blocks(void)
{
    lp_bufpool_t pool;
    lp_bufpool_init(&pool, 8);
    static char src[200000], got[200000];
    fill(src, sizeof(src), 0);
    lp_h2_bodyq_t q = {0};
    /* Small pieces share a block; a large one spans several. */
    REQUIRE_EQ_INT(lp_h2_bodyq_add(&q, &pool, src, 100), 0);
    REQUIRE_EQ_INT(lp_h2_bodyq_add(&q, &pool, src + 100, 100), 0);
    size_t len;
    lp_buf_t *b;
    const char *at = lp_h2_bodyq_shift(&q, &len, &b);
    CHECK_EQ_INT(len, 200);
    CHECK(!memcmp(at, src, 200));
    CHECK(q.head == NULL && q.tail == NULL && q.bytes == 0);
    REQUIRE_EQ_INT(lp_h2_bodyq_add(&q, &pool, src + 200, sizeof(src) - 200), 0);
    CHECK(!memcmp(at, src, 200)); /* the held block is not written again */
    lp_buf_unref(b);
    CHECK_EQ_INT(q.bytes, sizeof(src) - 200);
    CHECK(q.head != q.tail);
    lp_h2_bodyq_copy(&q, got);
    CHECK(!memcmp(got, src + 200, sizeof(src) - 200));
    size_t off = 200;
    while (q.head) {
        at = lp_h2_bodyq_shift(&q, &len, &b);
        CHECK(len > 0 && !memcmp(at, src + off, len));
        off += len;
        lp_buf_unref(b);
    }
    CHECK_EQ_INT(off, sizeof(src));
    CHECK_EQ_INT(q.bytes, 0);
    REQUIRE_EQ_INT(lp_h2_bodyq_add(&q, &pool, src, 5000), 0);
    REQUIRE_EQ_INT(lp_h2_bodyq_end(&q, "a: b\r\n", 6), 0);
    CHECK_STR(q.trailers, "a: b\r\n");
    lp_h2_bodyq_free(&q);
    CHECK(q.head == NULL && q.bytes == 0 && q.trailers == NULL && !q.eof);
    CHECK_EQ_INT(pool.outstanding, 0);
    lp_bufpool_destroy(&pool);
}

static ssize_t source(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                      nghttp2_data_source *src, void *ud)
{
    (void)ud;
    return lp_h2_bodyq_source(src->ptr, s, id, buf, length, flags);
}

/* What a client session sends for a request whose body comes from q: the DATA bytes, the
 * HEADERS frames, and whether the last frame ended the stream. */
typedef struct {
    size_t data, headers;
    int last_type, last_end;
} sent_t;

static void drain(nghttp2_session *s, sent_t *out)
{
    const uint8_t *p;
    ssize_t n;
    static uint8_t buf[1 << 20];
    size_t len = 0;
    while ((n = nghttp2_session_mem_send(s, &p)) > 0) {
        REQUIRE(len + (size_t)n <= sizeof(buf));
        memcpy(buf + len, p, (size_t)n);
        len += (size_t)n;
    }
    size_t i = 24; /* the connection preface */
    if (len < i || memcmp(buf, "PRI ", 4))
        i = 0;
    while (i + 9 <= len) {
        size_t flen = (size_t)buf[i] << 16 | (size_t)buf[i + 1] << 8 | buf[i + 2];
        int type = buf[i + 3], fl = buf[i + 4];
        uint32_t sid = ((uint32_t)buf[i + 5] & 0x7f) << 24 | (uint32_t)buf[i + 6] << 16 |
                       (uint32_t)buf[i + 7] << 8 | buf[i + 8];
        if (sid) {
            if (type == NGHTTP2_DATA)
                out->data += flen;
            if (type == NGHTTP2_HEADERS)
                out->headers++;
            out->last_type = type;
            out->last_end = (fl & NGHTTP2_FLAG_END_STREAM) != 0;
        }
        i += 9 + flen;
    }
}

static void send_one(const char *trailers, sent_t *out)
{
    lp_bufpool_t pool;
    lp_bufpool_init(&pool, 8);
    nghttp2_session_callbacks *cb;
    REQUIRE(nghttp2_session_callbacks_new(&cb) == 0);
    nghttp2_session *s;
    REQUIRE(nghttp2_session_client_new(&s, cb, NULL) == 0);
    nghttp2_session_callbacks_del(cb);
    lp_h2_bodyq_t q = {0};
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)"POST", 7, 4, 0},
        {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
        {(uint8_t *)":path", (uint8_t *)"/", 5, 1, 0},
        {(uint8_t *)":authority", (uint8_t *)"x", 10, 1, 0},
    };
    nghttp2_data_provider prd = {.source.ptr = &q, .read_callback = source};
    int32_t id = nghttp2_submit_request(s, NULL, nv, 4, &prd, NULL);
    REQUIRE(id > 0);
    drain(s, out); /* nothing yet: the source defers */
    CHECK(q.deferred);
    CHECK_EQ_INT(out->data, 0);
    static char body[30000];
    fill(body, sizeof(body), 0);
    REQUIRE_EQ_INT(lp_h2_bodyq_add(&q, &pool, body, sizeof(body)), 0);
    REQUIRE_EQ_INT(lp_h2_bodyq_end(&q, trailers, trailers ? strlen(trailers) : 0), 0);
    lp_h2_bodyq_wake(&q, s, id);
    CHECK(!q.deferred);
    drain(s, out);
    CHECK(q.trailers == NULL); /* sent */
    nghttp2_session_del(s);
    lp_h2_bodyq_free(&q);
    CHECK_EQ_INT(pool.outstanding, 0);
    lp_bufpool_destroy(&pool);
}

static void test_data_source(void)
{
    sent_t t = {0};
    send_one("grpc-status: 0\r\nconnection: x\r\n", &t);
    CHECK_EQ_INT(t.data, 30000);
    CHECK_EQ_INT(t.headers, 2); /* the request's, then the trailers, which end it */
    CHECK_EQ_INT(t.last_type, NGHTTP2_HEADERS);
    CHECK(t.last_end);
    sent_t n = {0};
    send_one(NULL, &n);
    CHECK_EQ_INT(n.data, 30000);
    CHECK_EQ_INT(n.headers, 1);
    CHECK_EQ_INT(n.last_type, NGHTTP2_DATA); /* the last DATA frame ends it */
    CHECK(n.last_end);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_order_across_blocks),
    LP_TEST_ENTRY(test_data_source),
};

LP_TEST_MAIN(tests)
