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

/* Receives compressed bytes [at, at + len), inside `pin`; take a reference to keep them. */
typedef int (*lp_zip_out_fn)(void *arg, const char *at, size_t len, lp_buf_t *pin);

/* A compressor for `coding` at `level` (clamped to the coding's range), taking its output
 * blocks from `bufs` (borrowed: it must outlive the compressor). NULL: out of memory or
 * an unknown coding. */
lp_zip_t *lp_zip_new(int coding, int level, lp_bufpool_t *bufs);
/* Compresses len bytes; with `finish`, ends the stream (trailer included). Output is
 * handed to `out` as it is made (zlib and brotli keep small inputs until they have a
 * block's worth, so most calls hand out nothing). 0, or -1 (the compressor failed, or
 * `out` returned non-zero: the stream is broken and can only be freed). */
int lp_zip_feed(lp_zip_t *z, const char *in, size_t len, int finish, lp_zip_out_fn out, void *arg);
/* Bytes taken in and handed out so far (tests, logs). */
uint64_t lp_zip_in(const lp_zip_t *z);
uint64_t lp_zip_out(const lp_zip_t *z);
void lp_zip_free(lp_zip_t *z);

#endif
