/* Unit tests for engine/buf.c: pooled reference-counted blocks and write batches. */
#include "lp_test.h"
#include "buf.h"

static void test_pool_recycles(void)
{
    lp_bufpool_t p;
    lp_bufpool_init(&p, 4);
    lp_buf_t *a = lp_buf_get(&p, LP_BUF_SMALL + 1);
    REQUIRE(a != NULL);
    CHECK_EQ_INT(a->cap, LP_BUF_SIZE);
    CHECK_EQ_INT(a->refs, 1);
    CHECK(a->pool == &p);
    CHECK_EQ_INT(p.outstanding, 1);
    memset(a->data, 'x', LP_BUF_SIZE); /* the whole capacity is usable (ASan checks) */

    lp_buf_unref(a);
    CHECK_EQ_INT(p.outstanding, 0);
    CHECK_EQ_INT(p.nfree, 1);

    lp_buf_t *b = lp_buf_get(&p, LP_BUF_SIZE / 2);
    CHECK(b == a); /* the same block comes back */
    CHECK_EQ_INT(b->refs, 1);
    CHECK_EQ_INT(p.nfree, 0);
    CHECK_EQ_INT(p.outstanding, 1);

    /* Exactly LP_BUF_SIZE still comes from the pool. */
    lp_buf_unref(b);
    lp_buf_t *c = lp_buf_get(&p, LP_BUF_SIZE);
    CHECK(c == a);
    CHECK(c->pool == &p);
    lp_buf_unref(c);
    lp_bufpool_destroy(&p);
    CHECK_EQ_INT(p.nfree, 0);
    CHECK(p.free == NULL);
}

static void test_small_blocks(void)
{
    /* Heads and arenas use small blocks, recycled on their own list. */
    lp_bufpool_t p;
    lp_bufpool_init(&p, 4);
    lp_buf_t *a = lp_buf_get(&p, 0);
    REQUIRE(a != NULL);
    CHECK_EQ_INT(a->cap, LP_BUF_SMALL);
    memset(a->data, 'y', LP_BUF_SMALL);
    lp_buf_unref(a);
    CHECK_EQ_INT(p.nfree_small, 1);
    CHECK_EQ_INT(p.nfree, 0);
    lp_buf_t *b = lp_buf_get(&p, LP_BUF_SMALL);
    CHECK(b == a);
    lp_buf_t *c = lp_buf_get(&p, LP_BUF_SMALL + 1);
    CHECK(c != a);
    CHECK_EQ_INT(c->cap, LP_BUF_SIZE);
    lp_buf_unref(b);
    lp_buf_unref(c);
    CHECK_EQ_INT(p.outstanding, 0);
    lp_bufpool_destroy(&p);
}

static void test_refcounts(void)
{
    lp_bufpool_t p;
    lp_bufpool_init(&p, 4);
    lp_buf_t *a = lp_buf_get(&p, LP_BUF_SIZE);
    REQUIRE(a != NULL);
    CHECK(lp_buf_ref(a) == a);
    lp_buf_ref(a);
    CHECK_EQ_INT(a->refs, 3);
    lp_buf_unref(a);
    lp_buf_unref(a);
    CHECK_EQ_INT(a->refs, 1);
    CHECK_EQ_INT(p.nfree, 0); /* still held */
    CHECK_EQ_INT(p.outstanding, 1);
    lp_buf_unref(a);
    CHECK_EQ_INT(p.nfree, 1);
    CHECK_EQ_INT(p.outstanding, 0);
    lp_bufpool_destroy(&p);
}

static void test_pool_max_free(void)
{
    lp_bufpool_t p;
    lp_bufpool_init(&p, 2);
    lp_buf_t *b[3];
    for (int i = 0; i < 3; i++) {
        b[i] = lp_buf_get(&p, LP_BUF_SIZE);
        REQUIRE(b[i] != NULL);
    }
    CHECK(b[0] != b[1] && b[1] != b[2] && b[0] != b[2]);
    CHECK_EQ_INT(p.outstanding, 3);
    for (int i = 0; i < 3; i++)
        lp_buf_unref(b[i]);
    /* The third is freed, not kept (ASan would report it leaked otherwise). */
    CHECK_EQ_INT(p.nfree, 2);
    CHECK_EQ_INT(p.outstanding, 0);
    lp_bufpool_destroy(&p);
}

static void test_oversized(void)
{
    lp_bufpool_t p;
    lp_bufpool_init(&p, 4);
    size_t big = LP_BUF_SIZE + 1;
    lp_buf_t *a = lp_buf_get(&p, big);
    REQUIRE(a != NULL);
    CHECK_EQ_INT(a->cap, big);
    CHECK(a->pool == NULL);
    CHECK_EQ_INT(a->refs, 1);
    memset(a->data, 'y', big);
    lp_buf_ref(a);
    lp_buf_unref(a);
    lp_buf_unref(a); /* freed here, never pooled */
    CHECK_EQ_INT(p.nfree, 0);
    /* An oversized block is counted out and back like a pooled one. */
    CHECK_EQ_INT(p.outstanding, 0);

    /* A pooled block does not satisfy an oversized request. */
    lp_buf_t *small = lp_buf_get(&p, LP_BUF_SIZE);
    lp_buf_unref(small);
    CHECK_EQ_INT(p.nfree, 1);
    lp_buf_t *big2 = lp_buf_get(&p, 3 * LP_BUF_SIZE);
    REQUIRE(big2 != NULL);
    CHECK(big2 != small);
    CHECK_EQ_INT(big2->cap, 3 * LP_BUF_SIZE);
    CHECK_EQ_INT(p.nfree, 1);
    lp_buf_unref(big2);
    lp_bufpool_destroy(&p);
}

static void test_wbatch_copy_merges(void)
{
    lp_wbpool_t wp = {0};
    lp_wbatch_t *wb = lp_wbatch_get(&wp);
    REQUIRE(wb != NULL);
    CHECK_EQ_INT(wb->n, 0);
    CHECK_EQ_INT(wb->bytes, 0);

    lp_wbatch_add_copy(wb, "ab", 2);
    lp_wbatch_add_copy(wb, "cd", 2);
    CHECK_EQ_INT(wb->n, 1); /* adjacent scratch bytes merge */
    CHECK_EQ_INT(wb->bufs[0].len, 4);
    CHECK(memcmp(wb->bufs[0].base, "abcd", 4) == 0);
    CHECK_EQ_INT(wb->bytes, 4);
    CHECK_EQ_INT(wb->scratch_used, 4);

    /* Caller bytes between two copies: the second copy starts a new iovec. */
    static const char ext[] = "external";
    lp_wbatch_add(wb, ext, 8, NULL);
    lp_wbatch_add_copy(wb, "ef", 2);
    CHECK_EQ_INT(wb->n, 3);
    CHECK(wb->bufs[1].base == ext);
    CHECK_EQ_INT(wb->bufs[2].len, 2);
    CHECK(memcmp(wb->bufs[2].base, "ef", 2) == 0);
    CHECK(wb->bufs[2].base == wb->scratch + 4); /* the scratch area is shared */
    CHECK_EQ_INT(wb->bytes, 14);

    /* The copy owns its bytes: changing the source afterwards changes nothing. */
    char src[3] = "gh";
    lp_wbatch_add_copy(wb, src, 2);
    src[0] = 'X';
    CHECK_EQ_INT(wb->n, 3);
    CHECK(memcmp(wb->bufs[2].base, "efgh", 4) == 0);
    CHECK_EQ_INT(wb->bytes, 16);

    lp_wbatch_put(&wp, wb);
    lp_wbpool_destroy(&wp);
}

static void test_wbatch_pins(void)
{
    lp_bufpool_t p;
    lp_bufpool_init(&p, 4);
    lp_wbpool_t wp = {0};
    lp_wbatch_t *wb = lp_wbatch_get(&wp);
    lp_buf_t *b = lp_buf_get(&p, LP_BUF_SIZE);
    REQUIRE(wb && b);
    memcpy(b->data, "body", 4);

    lp_wbatch_add_copy(wb, "4\r\n", 3);
    lp_wbatch_add(wb, b->data, 4, b);
    CHECK_EQ_INT(b->refs, 2);
    CHECK(wb->pins[1] == b);
    CHECK(wb->pins[0] == NULL);
    /* A copy after a pinned iovec never merges into it, even if adjacent. */
    lp_wbatch_add_copy(wb, "\r\n", 2);
    CHECK_EQ_INT(wb->n, 3);
    CHECK_EQ_INT(wb->bytes, 9);

    lp_buf_unref(b); /* the reader is done with it; the batch still pins it */
    CHECK_EQ_INT(b->refs, 1);
    CHECK_EQ_INT(p.nfree, 0);

    lp_wbatch_release(wb);
    CHECK_EQ_INT(wb->n, 0);
    CHECK_EQ_INT(wb->bytes, 0);
    CHECK_EQ_INT(wb->scratch_used, 0);
    CHECK_EQ_INT(p.nfree, 1); /* the last reference went with the batch */
    CHECK_EQ_INT(p.outstanding, 0);

    /* put/get recycles the batch. */
    lp_wbatch_put(&wp, wb);
    CHECK_EQ_INT(wp.nfree, 1);
    lp_wbatch_t *again = lp_wbatch_get(&wp);
    CHECK(again == wb);
    CHECK_EQ_INT(again->n, 0);
    CHECK(again->cb == NULL && again->owner == NULL);
    lp_wbatch_put(&wp, again);
    lp_wbpool_destroy(&wp);
    CHECK_EQ_INT(wp.nfree, 0);
    lp_bufpool_destroy(&p);
}

static void test_wbatch_room(void)
{
    lp_wbpool_t wp = {0};
    lp_wbatch_t *wb = lp_wbatch_get(&wp);
    REQUIRE(wb != NULL);
    CHECK(lp_wbatch_room(wb, LP_WBATCH_MAX, LP_WBATCH_SCRATCH));
    CHECK(!lp_wbatch_room(wb, LP_WBATCH_MAX + 1, 0));
    CHECK(!lp_wbatch_room(wb, 0, LP_WBATCH_SCRATCH + 1));

    static const char x[1] = {'x'};
    for (unsigned i = 0; i < LP_WBATCH_MAX - 1; i++)
        lp_wbatch_add(wb, x, 1, NULL);
    CHECK(lp_wbatch_room(wb, 1, 0));
    CHECK(!lp_wbatch_room(wb, 2, 0));
    lp_wbatch_add(wb, x, 1, NULL);
    CHECK(!lp_wbatch_room(wb, 1, 0));
    CHECK(lp_wbatch_room(wb, 0, 0));
    CHECK_EQ_INT(wb->bytes, LP_WBATCH_MAX);
    lp_wbatch_release(wb);

    /* Scratch limit: copies merge into one iovec, so only the bytes run out. */
    char chunk[100];
    memset(chunk, 'c', sizeof(chunk));
    for (int i = 0; i < 10; i++)
        lp_wbatch_add_copy(wb, chunk, 100);
    CHECK_EQ_INT(wb->n, 1);
    CHECK_EQ_INT(wb->scratch_used, 1000);
    CHECK(lp_wbatch_room(wb, 1, LP_WBATCH_SCRATCH - 1000));
    CHECK(!lp_wbatch_room(wb, 1, LP_WBATCH_SCRATCH - 1000 + 1));
    lp_wbatch_add_copy(wb, chunk, LP_WBATCH_SCRATCH - 1000); /* fills it exactly */
    CHECK_EQ_INT(wb->scratch_used, LP_WBATCH_SCRATCH);
    CHECK(!lp_wbatch_room(wb, 0, 1));
    CHECK_EQ_INT(wb->bytes, LP_WBATCH_SCRATCH);
    lp_wbatch_put(&wp, wb);
    lp_wbpool_destroy(&wp);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_pool_recycles), LP_TEST_ENTRY(test_small_blocks),
    LP_TEST_ENTRY(test_refcounts),     LP_TEST_ENTRY(test_pool_max_free),
    LP_TEST_ENTRY(test_oversized),     LP_TEST_ENTRY(test_wbatch_copy_merges),
    LP_TEST_ENTRY(test_wbatch_pins),   LP_TEST_ENTRY(test_wbatch_room),
};

LP_TEST_MAIN(tests)
