/* HTTP/2 body queues (h2_bodyq.h). */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "h2_bodyq.h"
#include "h2_util.h"

/* A piece: the header at the start of its block's data, its bytes after it. */
struct lp_h2_seg_s {
    lp_h2_seg_t *next; /* owned: the next piece */
    lp_buf_t *b;       /* owned reference: the block this header is in */
    size_t off, len;   /* b->data[off, len) is waiting; len up to b->cap */
};

_Static_assert(offsetof(lp_buf_t, data) % _Alignof(lp_h2_seg_t) == 0,
               "a block's data can hold a piece's header");

/* A block for the next n bytes: small when they fit one (most responses), else large. */
static lp_h2_seg_t *seg_new(lp_bufpool_t *bufs, size_t n)
{
    size_t want = sizeof(lp_h2_seg_t) + n;
    lp_buf_t *b = lp_buf_get(bufs, want <= LP_BUF_SMALL ? LP_BUF_SMALL : LP_BUF_SIZE);
    if (!b)
        return NULL;
    lp_h2_seg_t *g = (lp_h2_seg_t *)(void *)b->data;
    *g = (lp_h2_seg_t){NULL, b, sizeof(*g), sizeof(*g)};
    return g;
}

int lp_h2_bodyq_add(lp_h2_bodyq_t *q, lp_bufpool_t *bufs, const char *at, size_t len)
{
    while (len) {
        lp_h2_seg_t *t = q->tail;
        if (!t || t->len == t->b->cap) {
            lp_h2_seg_t *g = seg_new(bufs, len);
            if (!g)
                return -1;
            if (t)
                t->next = g;
            else
                q->head = g;
            q->tail = t = g;
        }
        size_t k = t->b->cap - t->len < len ? t->b->cap - t->len : len;
        memcpy(t->b->data + t->len, at, k);
        t->len += k;
        q->bytes += k;
        at += k;
        len -= k;
    }
    return 0;
}

/* Drops the first piece. */
static void seg_pop(lp_h2_bodyq_t *q)
{
    lp_h2_seg_t *g = q->head;
    q->head = g->next;
    if (!q->head)
        q->tail = NULL;
    q->bytes -= g->len - g->off;
    lp_buf_unref(g->b); /* g with it */
}

const char *lp_h2_bodyq_shift(lp_h2_bodyq_t *q, size_t *len, lp_buf_t **block)
{
    lp_h2_seg_t *g = q->head;
    const char *at = g->b->data + g->off;
    *len = g->len - g->off;
    *block = lp_buf_ref(g->b);
    seg_pop(q);
    return at;
}

/* Moves up to room bytes from the front into out; returns how many. */
static size_t take(lp_h2_bodyq_t *q, uint8_t *out, size_t room)
{
    size_t n = 0;
    while (q->head && n < room) {
        lp_h2_seg_t *g = q->head;
        size_t k = g->len - g->off;
        if (k > room - n)
            k = room - n;
        memcpy(out + n, g->b->data + g->off, k);
        n += k;
        if (g->off + k == g->len) {
            seg_pop(q);
        } else {
            g->off += k;
            q->bytes -= k;
        }
    }
    return n;
}

void lp_h2_bodyq_copy(const lp_h2_bodyq_t *q, char *dst)
{
    for (const lp_h2_seg_t *g = q->head; g; g = g->next) {
        memcpy(dst, g->b->data + g->off, g->len - g->off);
        dst += g->len - g->off;
    }
}

int lp_h2_bodyq_end(lp_h2_bodyq_t *q, const char *trailers, size_t len)
{
    q->eof = 1;
    if (!trailers || q->trailers)
        return 0;
    if (!(q->trailers = malloc(len + 1)))
        return -1;
    memcpy(q->trailers, trailers, len);
    q->trailers[len] = 0;
    q->trailers_len = len;
    return 0;
}

ssize_t lp_h2_bodyq_source(lp_h2_bodyq_t *q, nghttp2_session *s, int32_t id, uint8_t *buf,
                           size_t length, uint32_t *flags)
{
    size_t n = take(q, buf, length);
    if (!q->head && q->eof) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (q->trailers) {
            /* The trailers end the stream instead (gRPC's grpc-status). */
            lp_h2_nvs_t l = {0};
            lp_h2_nvs_add_text(&l, q->trailers, q->trailers_len);
            nghttp2_nv *nv = lp_h2_nvs_done(&l);
            if (nv && l.n && !nghttp2_submit_trailer(s, id, nv, l.n))
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            lp_h2_nvs_free(&l);
            free(q->trailers);
            q->trailers = NULL;
            q->trailers_len = 0;
        }
    } else if (!n) {
        q->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

void lp_h2_bodyq_wake(lp_h2_bodyq_t *q, nghttp2_session *s, int32_t id)
{
    if (!q->deferred)
        return;
    q->deferred = 0;
    nghttp2_session_resume_data(s, id);
}

void lp_h2_bodyq_free(lp_h2_bodyq_t *q)
{
    while (q->head)
        seg_pop(q);
    free(q->trailers);
    memset(q, 0, sizeof(*q));
}
