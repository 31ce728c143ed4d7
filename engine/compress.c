/* Streaming gzip/brotli for response bodies (compress.h). */
#include <brotli/encode.h>
#include <stdlib.h>
#include <zlib.h>

#include "compress.h"

/* zlib's defaults, which are nginx's `gzip_window` and `gzip_hash` defaults too: the same
 * settings give the same bytes, so the ratio matches nginx's at the same level. */
#define GZIP_WBITS    (15 + 16) /* 32 KiB window; +16: gzip header and trailer */
#define GZIP_MEMLEVEL 8
/* Brotli's window: 2^18 = 256 KiB. Its default (4 MiB) would let one response hold
 * megabytes of ring buffer; 256 KiB keeps nearly all the gain on web-sized bodies. */
#define BR_LGWIN 18

/* Roughly what zlib allocates at these settings (window, prev, head, pending buffer). */
#define GZIP_STATE_BYTES (270 * 1024)

struct lp_zip_s {
    int coding;         /* LP_ZIP_GZIP or LP_ZIP_BR */
    int level;          /* the level it runs at (set again when a kept one is reused) */
    int failed;         /* set once a call failed: the stream is broken */
    lp_zippool_t *pool; /* borrowed: where a gzip compressor goes back; NULL: freed */
    lp_zip_t *next;     /* the pool's free-list link while kept */
    lp_bufpool_t *bufs; /* borrowed: where output blocks come from */
    lp_buf_t *blk;      /* owned reference: the block being filled, NULL: none yet */
    size_t used;        /* bytes of blk written by the compressor */
    size_t emitted;     /* bytes of blk already handed out (<= used) */
    uint64_t in, out;   /* totals (lp_zip_in/out) */
    union {
        z_stream z;             /* gzip: owned (deflateEnd) */
        BrotliEncoderState *br; /* brotli: owned (BrotliEncoderDestroyInstance) */
    } u;
};

/* A kept gzip compressor, set to `level`; NULL when the pool has none. */
static lp_zip_t *zip_reuse(lp_zippool_t *pool, int level, lp_bufpool_t *bufs)
{
    lp_zip_t *z = pool ? pool->free : NULL;
    if (!z)
        return NULL;
    pool->free = z->next;
    pool->nfree--;
    if (pool->nfree < pool->low)
        pool->low = pool->nfree;
    /* It was reset when kept: a new stream with no input yet, so the level may change. */
    if (z->level != level && deflateParams(&z->u.z, level, Z_DEFAULT_STRATEGY) != Z_OK) {
        deflateEnd(&z->u.z);
        free(z);
        return NULL;
    }
    z->level = level;
    z->next = NULL;
    z->bufs = bufs;
    z->failed = 0;
    z->in = z->out = 0;
    return z;
}

lp_zip_t *lp_zip_new(int coding, int level, lp_bufpool_t *bufs, lp_zippool_t *pool)
{
    if (coding == LP_ZIP_GZIP) {
        if (level < 1)
            level = 1;
        if (level > LP_ZIP_GZIP_MAX)
            level = LP_ZIP_GZIP_MAX;
        lp_zip_t *kept = zip_reuse(pool, level, bufs);
        if (kept)
            return kept;
    } else if (coding == LP_ZIP_BR) {
        if (level < 0)
            level = 0;
        if (level > LP_ZIP_BR_MAX)
            level = LP_ZIP_BR_MAX;
    } else {
        return NULL;
    }
    lp_zip_t *z = calloc(1, sizeof(*z));
    if (!z)
        return NULL;
    z->coding = coding;
    z->level = level;
    z->bufs = bufs;
    if (coding == LP_ZIP_GZIP) {
        z->pool = pool;
        if (deflateInit2(&z->u.z, level, Z_DEFLATED, GZIP_WBITS, GZIP_MEMLEVEL,
                         Z_DEFAULT_STRATEGY) != Z_OK) {
            free(z);
            return NULL;
        }
        return z;
    }
    z->u.br = BrotliEncoderCreateInstance(NULL, NULL, NULL);
    if (!z->u.br || !BrotliEncoderSetParameter(z->u.br, BROTLI_PARAM_QUALITY, (uint32_t)level) ||
        !BrotliEncoderSetParameter(z->u.br, BROTLI_PARAM_LGWIN, BR_LGWIN)) {
        if (z->u.br)
            BrotliEncoderDestroyInstance(z->u.br);
        free(z);
        return NULL;
    }
    return z;
}

/* Hands out what was written since the last call. */
static int zip_emit(lp_zip_t *z, lp_zip_out_fn out, void *arg)
{
    if (!z->blk || z->used == z->emitted)
        return 0;
    size_t n = z->used - z->emitted;
    const char *at = z->blk->data + z->emitted;
    z->emitted = z->used;
    z->out += n;
    return out(arg, at, n, z->blk) ? -1 : 0;
}

/* Room to write into: the current block's rest, or a fresh block when it is full (its
 * bytes handed out first). */
static int zip_room(lp_zip_t *z, uint8_t **at, size_t *room, lp_zip_out_fn out, void *arg)
{
    if (z->blk && z->used == z->blk->cap) {
        if (zip_emit(z, out, arg))
            return -1;
        lp_buf_unref(z->blk); /* what was handed out is pinned by its readers */
        z->blk = NULL;
    }
    if (!z->blk) {
        z->blk = lp_buf_get(z->bufs, LP_BUF_SIZE);
        if (!z->blk)
            return -1;
        z->used = z->emitted = 0;
    }
    *at = (uint8_t *)z->blk->data + z->used;
    *room = z->blk->cap - z->used;
    return 0;
}

static int gzip_feed(lp_zip_t *z, const char *in, size_t len, int finish, lp_zip_out_fn out,
                     void *arg)
{
    z_stream *s = &z->u.z;
    s->next_in = (Bytef *)(uintptr_t)in;
    /* Bodies arrive in read-sized spans (64 KiB at most), far below uInt's range; a
     * larger caller is fed in slices all the same. */
    size_t left = len;
    for (;;) {
        uInt take = left > 0x40000000u ? 0x40000000u : (uInt)left;
        s->avail_in = take;
        int flush = finish && take == left ? Z_FINISH : Z_NO_FLUSH;
        for (;;) {
            uint8_t *at;
            size_t room;
            if (zip_room(z, &at, &room, out, arg))
                return -1;
            s->next_out = at;
            s->avail_out = (uInt)room;
            int rc = deflate(s, flush);
            z->used += room - s->avail_out;
            if (rc == Z_STREAM_ERROR)
                return -1;
            if (flush == Z_FINISH ? rc == Z_STREAM_END : s->avail_out != 0)
                break; /* all input taken and nothing more pending */
        }
        left -= take;
        if (!left)
            break;
    }
    return zip_emit(z, out, arg);
}

static int br_feed(lp_zip_t *z, const char *in, size_t len, int finish, lp_zip_out_fn out,
                   void *arg)
{
    const uint8_t *next_in = (const uint8_t *)in;
    size_t avail_in = len;
    BrotliEncoderOperation op = finish ? BROTLI_OPERATION_FINISH : BROTLI_OPERATION_PROCESS;
    for (;;) {
        uint8_t *at;
        size_t room;
        if (zip_room(z, &at, &room, out, arg))
            return -1;
        size_t avail_out = room;
        if (!BrotliEncoderCompressStream(z->u.br, op, &avail_in, &next_in, &avail_out, &at, NULL))
            return -1;
        z->used += room - avail_out;
        if (avail_in == 0 && !BrotliEncoderHasMoreOutput(z->u.br) &&
            (!finish || BrotliEncoderIsFinished(z->u.br)))
            break;
    }
    return zip_emit(z, out, arg);
}

int lp_zip_feed(lp_zip_t *z, const char *in, size_t len, int finish, lp_zip_out_fn out, void *arg)
{
    if (z->failed)
        return -1;
    z->in += len;
    int rc = z->coding == LP_ZIP_GZIP ? gzip_feed(z, in, len, finish, out, arg)
                                      : br_feed(z, in, len, finish, out, arg);
    if (rc)
        z->failed = 1;
    return rc;
}

uint64_t lp_zip_in(const lp_zip_t *z)
{
    return z->in;
}

uint64_t lp_zip_out(const lp_zip_t *z)
{
    return z->out;
}

void lp_zip_free(lp_zip_t *z)
{
    if (!z)
        return;
    if (z->blk)
        lp_buf_unref(z->blk);
    z->blk = NULL;
    lp_zippool_t *pool = z->pool;
    if (z->coding == LP_ZIP_GZIP && pool && pool->nfree < LP_ZIPPOOL_MAX &&
        deflateReset(&z->u.z) == Z_OK) {
        z->next = pool->free;
        pool->free = z;
        pool->nfree++;
        return;
    }
    if (z->coding == LP_ZIP_GZIP)
        deflateEnd(&z->u.z);
    else
        BrotliEncoderDestroyInstance(z->u.br);
    free(z);
}

size_t lp_zippool_trim(lp_zippool_t *p)
{
    size_t bytes = 0;
    for (unsigned k = p->low; k && p->free; k--) {
        lp_zip_t *z = p->free;
        p->free = z->next;
        p->nfree--;
        deflateEnd(&z->u.z);
        free(z);
        bytes += GZIP_STATE_BYTES;
    }
    p->low = p->nfree;
    return bytes;
}

void lp_zippool_destroy(lp_zippool_t *p)
{
    p->low = p->nfree;
    lp_zippool_trim(p);
}
