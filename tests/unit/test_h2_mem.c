/* Unit tests for engine/h2_mem.c: a server session made with the hooks finds its frame
 * buffer and stream map, gives their pages back when idle, and works on as before: a client
 * session (nghttp2's own memory) exchanges requests with it across trims. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "lp_test.h"
#include "h2_mem.h"

typedef struct {
    int responses; /* response HEADERS the client got */
    int status200; /* ... with :status 200 */
    int data;      /* DATA bytes the client got */
} client_t;

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    (void)s, (void)f, (void)flags;
    client_t *c = ud;
    if (nlen == 7 && !memcmp(name, ":status", 7) && vlen == 3 && !memcmp(value, "200", 3))
        c->status200++;
    return 0;
}

static int on_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)s;
    client_t *c = ud;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_RESPONSE)
        c->responses++;
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *d, size_t len,
                   void *ud)
{
    (void)s, (void)flags, (void)id, (void)d;
    ((client_t *)ud)->data += (int)len;
    return 0;
}

/* The server answers each request with 200 and a 3000-byte body (so DATA goes through the
 * frame buffer's later pages). */
static char body[3000];

static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud)
{
    (void)s, (void)id, (void)ud;
    size_t *left = src->ptr;
    size_t n = *left < len ? *left : len;
    memcpy(buf, body + (sizeof(body) - *left), n);
    *left -= n;
    if (!*left)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static size_t lefts[8];
static int nreq;

static int srv_on_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE}};
    lefts[nreq % 8] = sizeof(body);
    nghttp2_data_provider dp = {.source.ptr = &lefts[nreq % 8], .read_callback = read_body};
    nreq++;
    return nghttp2_submit_response(s, f->hd.stream_id, nv, 1, &dp);
}

/* Moves bytes both ways until neither side has anything to send. */
static void pump(nghttp2_session *cli, nghttp2_session *srv)
{
    for (int round = 0; round < 100; round++) {
        int moved = 0;
        const uint8_t *d;
        ssize_t n;
        while ((n = nghttp2_session_mem_send(cli, &d)) > 0) {
            REQUIRE(nghttp2_session_mem_recv(srv, d, (size_t)n) == n);
            moved = 1;
        }
        while ((n = nghttp2_session_mem_send(srv, &d)) > 0) {
            REQUIRE(nghttp2_session_mem_recv(cli, d, (size_t)n) == n);
            moved = 1;
        }
        if (!moved)
            return;
    }
    lp_test_fail(__FILE__, __LINE__, "the sessions kept talking");
}

static void request(nghttp2_session *cli)
{
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)"GET", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":scheme", (uint8_t *)"https", 7, 5, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":path", (uint8_t *)"/x", 5, 2, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":authority", (uint8_t *)"a.test", 10, 6, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"user-agent", (uint8_t *)"test-h2-mem", 10, 11, NGHTTP2_NV_FLAG_NONE},
    };
    CHECK(nghttp2_submit_request(cli, NULL, nv, 5, NULL, NULL) > 0);
}

static void test_trim_and_go_on(void)
{
    memset(body, 'b', sizeof(body));
    client_t cs = {0};
    nghttp2_session_callbacks *cb;
    REQUIRE(nghttp2_session_callbacks_new(&cb) == 0);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session *cli;
    REQUIRE(nghttp2_session_client_new(&cli, cb, &cs) == 0);
    nghttp2_session_callbacks_del(cb);

    REQUIRE(nghttp2_session_callbacks_new(&cb) == 0);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, srv_on_frame);
    nghttp2_option *opt;
    REQUIRE(nghttp2_option_new(&opt) == 0);
    nghttp2_option_set_no_closed_streams(opt, 1);
    lp_h2_mem_t *m = malloc(sizeof(*m));
    REQUIRE(m);
    lp_h2_mem_init(m);
    m->capturing = 1;
    nghttp2_session *srv;
    REQUIRE(nghttp2_session_server_new3(&srv, cb, NULL, opt, &m->mem) == 0);
    m->capturing = 0;
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    CHECK(m->framebuf != NULL);
    CHECK(m->framebuf_len >= 16384);
    CHECK(m->map != NULL);

    REQUIRE(nghttp2_submit_settings(cli, NGHTTP2_FLAG_NONE, NULL, 0) == 0);
    REQUIRE(nghttp2_submit_settings(srv, NGHTTP2_FLAG_NONE, NULL, 0) == 0);
    for (int i = 0; i < 3; i++) {
        request(cli);
        pump(cli, srv);
        CHECK_EQ_INT(cs.responses, i + 1);
        CHECK_EQ_INT(cs.status200, i + 1);
        CHECK_EQ_INT(cs.data, (int)sizeof(body) * (i + 1));
        /* Idle: both blocks go (4 whole pages of the frame buffer, and the empty map). */
        CHECK(!nghttp2_session_want_write(srv));
        CHECK_EQ_INT(lp_h2_mem_trim(m), 4 * 4096 + 4096);
        CHECK_EQ_INT(lp_h2_mem_trim(m), 4 * 4096 + 4096); /* again: harmless */
    }
    /* After the trims, two streams at once still go through. */
    request(cli);
    request(cli);
    const uint8_t *d;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(cli, &d)) > 0)
        REQUIRE(nghttp2_session_mem_recv(srv, d, (size_t)n) == n);
    pump(cli, srv);
    CHECK_EQ_INT(cs.responses, 5);
    CHECK_EQ_INT(cs.data, (int)sizeof(body) * 5);

    nghttp2_session_del(srv);
    CHECK(m->framebuf == NULL); /* freed by nghttp2 through the hooks */
    CHECK(m->map == NULL);
    CHECK_EQ_INT(lp_h2_mem_trim(m), 0);
    nghttp2_session_del(cli);
    free(m);
}

static void test_map_kept_while_not_empty(void)
{
    lp_h2_mem_t m;
    lp_h2_mem_init(&m);
    m.capturing = 1;
    uint8_t *map = m.mem.calloc(256, 16, &m);
    void *buf = m.mem.realloc(NULL, 16394, &m);
    m.capturing = 0;
    REQUIRE(map && buf);
    CHECK(m.map == map && m.framebuf == buf);
    CHECK_EQ_INT((uintptr_t)buf % 4096, 0);
    map[100] = 7; /* a stream in the map: its page stays */
    memset(buf, 'x', 16394);
    CHECK_EQ_INT(lp_h2_mem_trim(&m), 4 * 4096);
    CHECK_EQ_INT(map[100], 7);
    CHECK_EQ_INT(((uint8_t *)buf)[0], 0);       /* given back: reads as zero */
    CHECK_EQ_INT(((uint8_t *)buf)[16393], 'x'); /* the partial last page is kept */
    void *small = m.mem.malloc(100, &m);        /* not while capturing: plain */
    CHECK(small != NULL);
    m.mem.free(small, &m);
    m.mem.free(map, &m);
    m.mem.free(buf, &m);
    CHECK(m.map == NULL && m.framebuf == NULL);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_trim_and_go_on),
    LP_TEST_ENTRY(test_map_kept_while_not_empty),
};

LP_TEST_MAIN(tests)
