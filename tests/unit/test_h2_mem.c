/* Unit tests for engine/h2_mem.c: the worker's free lists recycle nghttp2's blocks by size
 * class; a server session made with the hooks finds its frame buffer and stream map, gives
 * their pages back when idle, and works on as before: a client session (nghttp2's own
 * memory) exchanges requests with it across trims, with and without the free lists. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "lp_test.h"
#include "h2_mem.h"

static void test_recycles_by_class(void)
{
    lp_h2_pool_t *m = lp_h2_pool_new();
    REQUIRE(m != NULL);
    lp_h2_mem_t hooks;
    lp_h2_mem_init(&hooks, m);
    nghttp2_mem *a = &hooks.mem;
    void *p = a->malloc(100, a->mem_user_data);
    REQUIRE(p != NULL);
    memset(p, 'x', 128); /* the whole class is usable (ASan checks) */
    a->free(p, a->mem_user_data);
    void *q = a->malloc(120, a->mem_user_data); /* same class (65-128): the same block */
    CHECK(q == p);
    void *r = a->malloc(200, a->mem_user_data); /* another class */
    CHECK(r != q);
    a->free(q, a->mem_user_data);
    a->free(r, a->mem_user_data);
    a->free(NULL, a->mem_user_data);
    /* The lists were empty at some point since the start: the first trim frees nothing and
     * marks what they hold now; untouched until the next, that goes then. */
    CHECK(lp_h2_pool_trim(m) == 0);
    CHECK(lp_h2_pool_trim(m) > 0);
    CHECK(lp_h2_pool_trim(m) == 0);
    lp_h2_pool_free(m);
}

static void test_calloc_realloc(void)
{
    lp_h2_pool_t *m = lp_h2_pool_new();
    REQUIRE(m != NULL);
    lp_h2_mem_t hooks;
    lp_h2_mem_init(&hooks, m);
    nghttp2_mem *a = &hooks.mem;
    void *ud = a->mem_user_data;
    /* A recycled block comes back zeroed from calloc. */
    unsigned char *p = a->malloc(64, ud);
    REQUIRE(p != NULL);
    memset(p, 0xff, 64);
    a->free(p, ud);
    unsigned char *z = a->calloc(8, 8, ud);
    REQUIRE(z != NULL);
    int zero = 1;
    for (int i = 0; i < 64; i++)
        zero &= z[i] == 0;
    CHECK(zero);
    /* Growing through classes and into a plain block keeps the contents. */
    for (int i = 0; i < 64; i++)
        z[i] = (unsigned char)i;
    unsigned char *g = a->realloc(z, 1000, ud);
    REQUIRE(g != NULL);
    unsigned char *h = a->realloc(g, 100000, ud);
    REQUIRE(h != NULL);
    int same = 1;
    for (int i = 0; i < 64; i++)
        same &= h[i] == i;
    CHECK(same);
    memset(h, 1, 100000);
    /* And shrinking back into a class. */
    unsigned char *s = a->realloc(h, 10, ud);
    REQUIRE(s != NULL);
    CHECK_EQ_INT(s[9], 1);
    a->free(s, ud);
    CHECK(a->calloc((size_t)-1, 2, ud) == NULL); /* overflow */
    lp_h2_pool_free(m);                          /* frees what the lists hold (ASan: no leak) */
}

static void test_session_uses_it(void)
{
    /* A real session over the lists: created, a request submitted, deleted. */
    lp_h2_pool_t *m = lp_h2_pool_new();
    REQUIRE(m != NULL);
    lp_h2_mem_t hooks;
    lp_h2_mem_init(&hooks, m);
    nghttp2_session_callbacks *cb;
    REQUIRE(nghttp2_session_callbacks_new(&cb) == 0);
    nghttp2_session *s;
    REQUIRE(nghttp2_session_client_new3(&s, cb, NULL, NULL, &hooks.mem) == 0);
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)"GET", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":path", (uint8_t *)"/", 5, 1, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":authority", (uint8_t *)"a", 10, 1, NGHTTP2_NV_FLAG_NONE},
    };
    CHECK(nghttp2_submit_request(s, NULL, nv, 4, NULL, NULL) > 0);
    const uint8_t *out;
    CHECK(nghttp2_session_mem_send(s, &out) > 0);
    nghttp2_session_del(s);
    nghttp2_session_callbacks_del(cb);
    lp_h2_pool_free(m);
}

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

/* hot: the session struct and the inflater's ring on the hot page, parked after each
 * trim and woken before the session is used again. */
static void trim_and_go_on(lp_h2_pool_t *pool, int hot)
{
    nreq = 0;
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
    lp_h2_mem_init(m, pool);
    m->deflate_page = 1; /* nghttp2's default deflater has a table, but holds no entry here */
    m->hot_page = (uint8_t)hot;
    m->capturing = 1;
    nghttp2_session *srv;
    REQUIRE(nghttp2_session_server_new3(&srv, cb, NULL, opt, &m->mem) == 0);
    m->capturing = 0;
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    CHECK(m->framebuf != NULL);
    CHECK(m->framebuf_len >= 16384);
    CHECK(m->map != NULL);
    CHECK(m->ring != NULL);
    if (hot) {
        /* The session struct at the page's start (its first block), the inflater's ring
         * after it: the second ring, not the deflater's. */
        REQUIRE(m->hot != NULL);
        CHECK(m->sess_live);
        CHECK((void *)m->hot == (void *)srv);
        CHECK(m->iring_off >= m->sess_len && m->iring_off % 64 == 0);
        CHECK(m->hot + m->iring_off != (uint8_t *)m->ring);
        CHECK(m->hot_used <= 4096);
    } else {
        CHECK(m->hot == NULL);
    }

    REQUIRE(nghttp2_submit_settings(cli, NGHTTP2_FLAG_NONE, NULL, 0) == 0);
    REQUIRE(nghttp2_submit_settings(srv, NGHTTP2_FLAG_NONE, NULL, 0) == 0);
    for (int i = 0; i < 3; i++) {
        request(cli);
        pump(cli, srv);
        CHECK_EQ_INT(cs.responses, i + 1);
        CHECK_EQ_INT(cs.status200, i + 1);
        CHECK_EQ_INT(cs.data, (int)sizeof(body) * (i + 1));
        /* Idle: the frame buffer's 5 pages (16,394 bytes), the empty map and the deflater's ring
         * go (":status 200" is in the static table: no entry). The client's encoder
         * indexed its fields: the next requests refer to those entries, and decode only if
         * the inflater's ring was kept (told from the deflater's). */
        CHECK(!nghttp2_session_want_write(srv));
        CHECK(nghttp2_session_get_hd_inflate_dynamic_table_size(srv) > 0);
        CHECK_EQ_INT(nghttp2_session_get_hd_deflate_dynamic_table_size(srv), 0);
        CHECK_EQ_INT(lp_h2_mem_trim(m, srv), 5 * 4096 + 4096 + 4096);
        CHECK_EQ_INT(lp_h2_mem_trim(m, srv), 5 * 4096 + 4096 + 4096); /* again: harmless */
        CHECK_EQ_INT(lp_h2_mem_trim(m, NULL), 5 * 4096 + 4096);       /* no session: no ring */
        if (hot) {
            /* Parked: the page goes back, its words kept aside (far less than a page). */
            CHECK_EQ_INT(lp_h2_mem_park(m), 4096);
            REQUIRE(m->parked != NULL);
            CHECK_EQ_INT(lp_h2_mem_park(m), 0); /* already */
            /* The client's next request refers to the entries it indexed: it decodes only
             * if the ring and the session came back where nghttp2 keeps pointers to them. */
            lp_h2_mem_wake(m);
            CHECK(m->parked == NULL);
            lp_h2_mem_wake(m); /* awake: nothing to do */
        } else {
            CHECK_EQ_INT(lp_h2_mem_park(m), 0); /* no hot page */
        }
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

    if (hot) { /* and once more, parked with nothing trimmed first, then deleted */
        CHECK_EQ_INT(lp_h2_mem_park(m), 4096);
        lp_h2_mem_wake(m);
    }
    nghttp2_session_del(srv);
    CHECK(m->hot == NULL); /* both blocks freed: the page is unmapped */
    CHECK(!m->sess_live && !m->iring_off);
    CHECK(m->framebuf == NULL); /* freed by nghttp2 through the hooks */
    CHECK(m->map == NULL);
    CHECK(m->ring == NULL);
    CHECK_EQ_INT(lp_h2_mem_trim(m, NULL), 0);
    nghttp2_session_del(cli);
    free(m);
}

static void test_trim_and_go_on(void)
{
    trim_and_go_on(NULL, 0);
}

static void test_park_and_wake(void)
{
    trim_and_go_on(NULL, 1);
}

static void test_park_and_wake_pooled(void)
{
    lp_h2_pool_t *pool = lp_h2_pool_new();
    REQUIRE(pool != NULL);
    trim_and_go_on(pool, 1);
    lp_h2_pool_free(pool);
}

static void test_trim_and_go_on_pooled(void)
{
    lp_h2_pool_t *pool = lp_h2_pool_new();
    REQUIRE(pool != NULL);
    trim_and_go_on(pool, 0);
    CHECK(lp_h2_pool_trim(pool) == 0); /* marks what the lists hold */
    lp_h2_pool_free(pool);             /* and frees it (ASan: no leak) */
}

static void test_map_kept_while_not_empty(void)
{
    lp_h2_mem_t m;
    lp_h2_mem_init(&m, NULL);
    m.capturing = 1;
    uint8_t *map = m.mem.calloc(256, 16, &m);
    void *buf = m.mem.realloc(NULL, 16394, &m);
    m.capturing = 0;
    REQUIRE(map && buf);
    CHECK(m.map == map && m.framebuf == buf);
    CHECK_EQ_INT((uintptr_t)buf % 4096, 0);
    map[100] = 7; /* a stream in the map: its page stays */
    memset(buf, 'x', 16394);
    CHECK_EQ_INT(lp_h2_mem_trim(&m, NULL), 5 * 4096); /* its own pages, the partial last too */
    CHECK_EQ_INT(map[100], 7);
    CHECK_EQ_INT(((uint8_t *)buf)[0], 0); /* given back: reads as zero */
    CHECK_EQ_INT(((uint8_t *)buf)[16393], 0);
    /* Grown (nghttp2 does for frames past 16 KiB): still known, contents kept. */
    memset(buf, 'y', 16394);
    buf = m.mem.realloc(buf, 40000, &m);
    REQUIRE(buf != NULL);
    CHECK(m.framebuf == buf);
    CHECK_EQ_INT(((uint8_t *)buf)[16393], 'y');
    memset(buf, 'z', 40000);
    CHECK_EQ_INT(lp_h2_mem_trim(&m, NULL), 10 * 4096);
    void *small = m.mem.malloc(100, &m); /* not while capturing: plain */
    CHECK(small != NULL);
    m.mem.free(small, &m);
    m.mem.free(map, &m);
    m.mem.free(buf, &m);
    CHECK(m.map == NULL && m.framebuf == NULL);
}

/* The packed form keeps any words: zeros in runs longer than a record, words with their
 * top byte set, the page's own address, pointers into it and near it, small counters; and
 * a page with too few zeros to gain is not parked. */
static void test_park_packs_any_words(void)
{
    lp_h2_mem_t m;
    lp_h2_mem_init(&m, NULL);
    m.hot_page = 1;
    m.capturing = 1;
    uint64_t *w = m.mem.calloc(1, 3000, &m); /* the first block: on the hot page */
    m.capturing = 0;
    REQUIRE(w != NULL);
    REQUIRE(m.hot == (uint8_t *)w && m.sess_live);
    uint64_t base = (uintptr_t)w;
    w[0] = base;              /* the page itself: XORs to 0 */
    w[1] = base + 128;        /* into it */
    w[2] = base + 0x12345678; /* near it */
    w[3] = 0xff00000000000001ull;
    w[4] = 0xffffffffffffffffull;
    w[5] = 1;
    w[6] = 0x0000010000000000ull;
    w[300] = 65535; /* after a run of 293 zeros */
    w[374] = (uint64_t)base ^ 0x7f;
    uint64_t copy[375];
    memcpy(copy, w, sizeof(copy));
    CHECK_EQ_INT(lp_h2_mem_park(&m), 4096);
    REQUIRE(m.parked != NULL);
    lp_h2_mem_wake(&m);
    CHECK(m.parked == NULL);
    CHECK(!memcmp(copy, w, sizeof(copy)));
    /* No zero to fold: it stays awake. */
    for (int i = 0; i < 375; i++)
        w[i] = 0x0101010101010101ull * (uint64_t)(i % 200 + 1);
    CHECK_EQ_INT(lp_h2_mem_park(&m), 0);
    CHECK(m.parked == NULL);
    m.mem.free(w, &m);
    CHECK(m.hot == NULL); /* its only block went: unmapped */
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_recycles_by_class),    LP_TEST_ENTRY(test_calloc_realloc),
    LP_TEST_ENTRY(test_session_uses_it),      LP_TEST_ENTRY(test_trim_and_go_on_pooled),
    LP_TEST_ENTRY(test_trim_and_go_on),       LP_TEST_ENTRY(test_map_kept_while_not_empty),
    LP_TEST_ENTRY(test_park_and_wake),        LP_TEST_ENTRY(test_park_and_wake_pooled),
    LP_TEST_ENTRY(test_park_packs_any_words),
};

LP_TEST_MAIN(tests)
