/* Streaming response compression (gzip through zlib, brotli through libbrotli), for the
 * `compression` plugin's req:compress(). A compressor belongs to one response: conn.c
 * creates it when the head goes out, feeds it the body as it is sent (after the
 * response_body filters) and finishes it at the end; lp_req_end frees it whatever
 * happened (an abort mid-body included).
 *
 * Output goes into pooled blocks (buf.h) and is handed out as slices pinned to them, so
 * it takes the same write batches and backpressure as a proxied body: nothing holds the
 * whole body. */
#ifndef LP_COMPRESS_H
#define LP_COMPRESS_H

#include "buf.h"

enum { LP_ZIP_NONE = 0, LP_ZIP_GZIP = 1, LP_ZIP_BR = 2 };

/* Level ranges: gzip 1-9 (zlib), brotli 0-11 (quality). */
#define LP_ZIP_GZIP_MAX 9
#define LP_ZIP_BR_MAX   11

typedef struct lp_zip_s lp_zip_t;

/* Finished gzip compressors kept per worker for the next response (deflateReset instead
 * of deflateInit2/deflateEnd): zlib's state is five allocations of up to 64 KiB each, and
 * making and freeing them per response cost more than compressing a 16 KiB body (bench/:
 * glibc gives the top of the heap back and faults it in again). Brotli has no reset: its
 * encoders are not kept. A zeroed pool is empty and valid. One worker's, one thread. */
typedef struct lp_zippool_s {
    lp_zip_t *free; /* owned: kept gzip compressors (reset), linked by their `next` */
    unsigned nfree;
    unsigned low; /* the fewest free since the last trim: that many went unused */
} lp_zippool_t;

/* Most gzip compressors a worker keeps (about 270 KiB each). */
#define LP_ZIPPOOL_MAX 16

/* Receives compressed bytes [at, at + len), inside `pin`; take a reference to keep them. */
typedef int (*lp_zip_out_fn)(void *arg, const char *at, size_t len, lp_buf_t *pin);

/* A compressor for `coding` at `level` (clamped to the coding's range), taking its output
 * blocks from `bufs` and, for gzip, a kept compressor from `pool` (both borrowed: they
 * must outlive it; pool may be NULL). NULL: out of memory or an unknown coding. */
lp_zip_t *lp_zip_new(int coding, int level, lp_bufpool_t *bufs, lp_zippool_t *pool);
/* Compresses len bytes; with `finish`, ends the stream (trailer included). Output is
 * handed to `out` as it is made (zlib and brotli keep small inputs until they have a
 * block's worth, so most calls hand out nothing). 0, or -1 (the compressor failed, or
 * `out` returned non-zero: the stream is broken and can only be freed). */
int lp_zip_feed(lp_zip_t *z, const char *in, size_t len, int finish, lp_zip_out_fn out, void *arg);
/* Bytes taken in and handed out so far (tests, logs). */
uint64_t lp_zip_in(const lp_zip_t *z);
uint64_t lp_zip_out(const lp_zip_t *z);
/* Ends a compressor, finished or not: a gzip one goes back to its pool when there is
 * room, anything else is freed. NULL is ignored. */
void lp_zip_free(lp_zip_t *z);
/* Frees the kept compressors that went unused since the last trim; returns the bytes
 * (about) freed. */
size_t lp_zippool_trim(lp_zippool_t *p);
void lp_zippool_destroy(lp_zippool_t *p);

#endif
