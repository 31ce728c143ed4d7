/* Unit tests for engine/compress.c: streaming gzip and brotli over pooled blocks, checked
 * by decompressing with zlib and libbrotli's decoder. */
#include <brotli/decode.h>
#include <zlib.h>
#include "lp_test.h"
#include "compress.h"

/* Collects the output slices as the connection would: a reference per slice (the write
 * batch's pin), the bytes copied out for checking. */
typedef struct {
    char *data;
    size_t len, cap;
    unsigned slices;
    lp_buf_t *pins[256];
    unsigned npins;
    int fail_after; /* >0: the nth call fails (an output error) */
} sink_t;

static int sink_out(void *arg, const char *at, size_t len, lp_buf_t *pin)
{
    sink_t *s = arg;
    s->slices++;
    if (s->fail_after && (int)s->slices >= s->fail_after)
        return -1;
    if (s->len + len > s->cap) {
        s->cap = (s->len + len) * 2;
        s->data = realloc(s->data, s->cap);
    }
    memcpy(s->data + s->len, at, len);
    s->len += len;
    if (s->npins < 256)
        s->pins[s->npins++] = lp_buf_ref(pin);
    return 0;
}

static void sink_done(sink_t *s)
{
    for (unsigned i = 0; i < s->npins; i++)
        lp_buf_unref(s->pins[i]);
    free(s->data);
}

/* Text that compresses like a JSON API answer, deterministic. */
static char *sample(size_t n)
{
    char *b = malloc(n);
    unsigned x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        static const char words[] = "{\"id\":1234,\"name\":\"alpha\",\"tags\":[\"x\",\"y\"]},";
        b[i] = (x >> 24) % 7 == 0 ? (char)('a' + (x >> 16) % 26) : words[i % (sizeof(words) - 1)];
    }
    return b;
}

static size_t gunzip(const char *in, size_t len, char *out, size_t cap)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, 15 + 16) != Z_OK)
        return (size_t)-1;
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)cap;
    int rc = inflate(&z, Z_FINISH);
    size_t n = cap - z.avail_out;
    int trailing = z.avail_in != 0;
    inflateEnd(&z);
    return rc == Z_STREAM_END && !trailing ? n : (size_t)-1;
}

static size_t unbrotli(const char *in, size_t len, char *out, size_t cap)
{
    size_t n = cap;
    if (BrotliDecoderDecompress(len, (const uint8_t *)in, &n, (uint8_t *)out) !=
        BROTLI_DECODER_RESULT_SUCCESS)
        return (size_t)-1;
    return n;
}

/* Feeds `n` bytes in spans of `step` (0: one call with finish), then finishes; checks the
 * round trip. */
static void roundtrip(int coding, int level, size_t n, size_t step)
{
    lp_bufpool_t pool;
    lp_bufpool_init(&pool, 8);
    char *in = sample(n);
    sink_t s = {0};
    lp_zip_t *z = lp_zip_new(coding, level, &pool, NULL);
    REQUIRE(z != NULL);
    if (!step) {
        CHECK_EQ_INT(lp_zip_feed(z, in, n, 1, sink_out, &s), 0);
    } else {
        for (size_t off = 0; off < n; off += step) {
            size_t k = n - off < step ? n - off : step;
            CHECK_EQ_INT(lp_zip_feed(z, in + off, k, 0, sink_out, &s), 0);
        }
        CHECK_EQ_INT(lp_zip_feed(z, "", 0, 1, sink_out, &s), 0);
    }
    CHECK_EQ_INT(lp_zip_in(z), n);
    CHECK_EQ_INT(lp_zip_out(z), s.len);
    lp_zip_free(z);
    char *back = malloc(n + 16);
    size_t m = coding == LP_ZIP_GZIP ? gunzip(s.data, s.len, back, n + 16)
                                     : unbrotli(s.data, s.len, back, n + 16);
    CHECK_EQ_INT(m, n);
    CHECK(m == n && memcmp(back, in, n) == 0);
    if (n > 4096)
        CHECK(s.len < n / 2); /* it did compress */
    free(back);
    free(in);
    sink_done(&s);
    /* Every block went back once its readers let go. */
    CHECK_EQ_INT(pool.outstanding, 0);
    lp_bufpool_destroy(&pool);
}

static void test_gzip_small_and_empty(void)
{
    roundtrip(LP_ZIP_GZIP, 6, 0, 0);
    roundtrip(LP_ZIP_GZIP, 1, 10, 0);
    roundtrip(LP_ZIP_GZIP, 9, 1000, 7);
}

static void test_gzip_streams_large(void)
{
    /* 3 MiB in 16 KiB spans: output crosses many 64 KiB blocks. */
    roundtrip(LP_ZIP_GZIP, 6, 3u << 20, 16384);
    roundtrip(LP_ZIP_GZIP, 1, 1u << 20, 65536);
}

static void test_brotli_small_and_empty(void)
{
    roundtrip(LP_ZIP_BR, 4, 0, 0);
    roundtrip(LP_ZIP_BR, 0, 10, 0);
    roundtrip(LP_ZIP_BR, 11, 5000, 100);
}

static void test_brotli_streams_large(void)
{
    roundtrip(LP_ZIP_BR, 4, 3u << 20, 16384);
    roundtrip(LP_ZIP_BR, 5, 1u << 20, 65536);
}

/* Incompressible input grows a little: output spans several blocks, and goes out before
 * the end (zlib holds little; brotli holds up to about twice its 256 KiB window). */
static void test_incompressible(void)
{
    lp_bufpool_t pool;
    lp_bufpool_init(&pool, 8);
    size_t n = 1u << 20;
    unsigned char *in = malloc(n);
    unsigned x = 7;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        in[i] = (unsigned char)(x >> 24);
    }
    for (int coding = LP_ZIP_GZIP; coding <= LP_ZIP_BR; coding++) {
        sink_t s = {0};
        lp_zip_t *z = lp_zip_new(coding, coding == LP_ZIP_GZIP ? 6 : 4, &pool, NULL);
        REQUIRE(z != NULL);
        CHECK_EQ_INT(lp_zip_feed(z, (const char *)in, n, 0, sink_out, &s), 0);
        CHECK(s.len >= n / 2); /* most of it went out before the end */
        CHECK_EQ_INT(lp_zip_feed(z, "", 0, 1, sink_out, &s), 0);
        CHECK(s.slices >= 16); /* > 16 blocks of 64 KiB */
        lp_zip_free(z);
        char *back = malloc(n + 16);
        size_t m = coding == LP_ZIP_GZIP ? gunzip(s.data, s.len, back, n + 16)
                                         : unbrotli(s.data, s.len, back, n + 16);
        CHECK_EQ_INT(m, n);
        CHECK(m == n && memcmp(back, in, n) == 0);
        free(back);
        sink_done(&s);
    }
    free(in);
    CHECK_EQ_INT(pool.outstanding, 0);
    lp_bufpool_destroy(&pool);
}

/* Freed mid-stream (a request aborted mid-body): nothing leaks (ASan), blocks go back. */
static void test_free_mid_stream(void)
{
    lp_bufpool_t pool;
    lp_bufpool_init(&pool, 8);
    char *in = sample(200000);
    for (int coding = LP_ZIP_GZIP; coding <= LP_ZIP_BR; coding++) {
        sink_t s = {0};
        lp_zip_t *z = lp_zip_new(coding, 5, &pool, NULL);
        REQUIRE(z != NULL);
        CHECK_EQ_INT(lp_zip_feed(z, in, 200000, 0, sink_out, &s), 0);
        lp_zip_free(z);
        sink_done(&s);
    }
    free(in);
    CHECK_EQ_INT(pool.outstanding, 0);
    lp_bufpool_destroy(&pool);
}

/* An output error breaks the stream: every later call fails. */
static void test_output_error(void)
{
    lp_bufpool_t pool;
    lp_bufpool_init(&pool, 8);
    char *in = sample(100);
    sink_t s = {.fail_after = 1};
    lp_zip_t *z = lp_zip_new(LP_ZIP_GZIP, 6, &pool, NULL);
    REQUIRE(z != NULL);
    CHECK_EQ_INT(lp_zip_feed(z, in, 100, 1, sink_out, &s), -1);
    CHECK_EQ_INT(lp_zip_feed(z, in, 100, 1, sink_out, &s), -1);
    lp_zip_free(z);
    free(in);
    sink_done(&s);
    CHECK_EQ_INT(pool.outstanding, 0);
    lp_bufpool_destroy(&pool);
}

static void test_levels_clamped_and_unknown_coding(void)
{
    lp_bufpool_t pool;
    lp_bufpool_init(&pool, 8);
    CHECK(lp_zip_new(3, 5, &pool, NULL) == NULL);
    CHECK(lp_zip_new(LP_ZIP_NONE, 5, &pool, NULL) == NULL);
    lp_zip_free(NULL);
    roundtrip(LP_ZIP_GZIP, 99, 5000, 0); /* clamped to 9 */
    roundtrip(LP_ZIP_BR, -3, 5000, 0);   /* clamped to 0 */
    lp_bufpool_destroy(&pool);
}

/* Kept gzip compressors: one freed mid-stream or at another level comes back as a fresh
 * stream at the level asked for; brotli ones are not kept; trim frees the unused ones. */
static void test_pool_reuse(void)
{
    lp_bufpool_t bufs;
    lp_bufpool_init(&bufs, 8);
    lp_zippool_t zp = {0};
    char *in = sample(50000);
    lp_zip_t *z = lp_zip_new(LP_ZIP_GZIP, 9, &bufs, &zp);
    REQUIRE(z != NULL);
    sink_t s0 = {0};
    CHECK_EQ_INT(lp_zip_feed(z, in, 30000, 0, sink_out, &s0), 0); /* cut mid-stream */
    lp_zip_free(z);
    sink_done(&s0);
    CHECK_EQ_INT(zp.nfree, 1);
    for (int level = 1; level <= 9; level += 4) {
        lp_zip_t *again = lp_zip_new(LP_ZIP_GZIP, level, &bufs, &zp);
        REQUIRE(again == z); /* the kept one */
        CHECK_EQ_INT(zp.nfree, 0);
        sink_t s = {0};
        CHECK_EQ_INT(lp_zip_feed(again, in, 50000, 1, sink_out, &s), 0);
        CHECK_EQ_INT(lp_zip_in(again), 50000);
        char *back = malloc(50016);
        CHECK_EQ_INT(gunzip(s.data, s.len, back, 50016), 50000);
        CHECK(memcmp(back, in, 50000) == 0);
        free(back);
        sink_done(&s);
        lp_zip_free(again);
        CHECK_EQ_INT(zp.nfree, 1);
    }
    lp_zip_t *br = lp_zip_new(LP_ZIP_BR, 4, &bufs, &zp);
    REQUIRE(br != NULL);
    CHECK_EQ_INT(zp.nfree, 1); /* brotli took nothing from the pool */
    lp_zip_free(br);
    CHECK_EQ_INT(zp.nfree, 1); /* nor gave anything back */
    /* The pool is bounded. */
    lp_zip_t *many[LP_ZIPPOOL_MAX + 2];
    for (int i = 0; i < LP_ZIPPOOL_MAX + 2; i++)
        REQUIRE((many[i] = lp_zip_new(LP_ZIP_GZIP, 5, &bufs, &zp)) != NULL);
    for (int i = 0; i < LP_ZIPPOOL_MAX + 2; i++)
        lp_zip_free(many[i]);
    CHECK_EQ_INT(zp.nfree, LP_ZIPPOOL_MAX);
    /* Unused for a whole period: trimmed (the first trim sees them used). */
    lp_zippool_trim(&zp);
    CHECK(lp_zippool_trim(&zp) > 0);
    CHECK_EQ_INT(zp.nfree, 0);
    CHECK(zp.free == NULL);
    lp_zippool_destroy(&zp);
    free(in);
    CHECK_EQ_INT(bufs.outstanding, 0);
    lp_bufpool_destroy(&bufs);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_pool_reuse),
    LP_TEST_ENTRY(test_gzip_small_and_empty),
    LP_TEST_ENTRY(test_gzip_streams_large),
    LP_TEST_ENTRY(test_brotli_small_and_empty),
    LP_TEST_ENTRY(test_brotli_streams_large),
    LP_TEST_ENTRY(test_incompressible),
    LP_TEST_ENTRY(test_free_mid_stream),
    LP_TEST_ENTRY(test_output_error),
    LP_TEST_ENTRY(test_levels_clamped_and_unknown_coding),
};

LP_TEST_MAIN(tests)
