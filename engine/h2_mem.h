/* nghttp2's allocations from per-worker free lists (nghttp2_mem). A session allocates and
 * frees several small blocks per stream (the stream, its outbound items, the copied header
 * list, header buffers); recycling them by size class costs a list push and pop instead of
 * malloc and free. The worker's thread only: every session using a worker's lists is
 * created and deleted on that worker's loop. */
#ifndef LP_H2_MEM_H
#define LP_H2_MEM_H

#include <stddef.h>
#include <nghttp2/nghttp2.h>

typedef struct lp_h2_mem_s lp_h2_mem_t;

/* A worker's lists (NULL: out of memory; the sessions then use nghttp2's default). */
lp_h2_mem_t *lp_h2_mem_new(void);
/* The allocator for nghttp2_session_server_new3 (m may be NULL: NULL, the default). */
nghttp2_mem *lp_h2_mem_of(lp_h2_mem_t *m);
/* Gives back the blocks no session took since the last call (the house timer). Returns
 * the bytes freed. */
size_t lp_h2_mem_trim(lp_h2_mem_t *m);
/* Frees the lists and their blocks, once no session uses them (worker teardown). */
void lp_h2_mem_free(lp_h2_mem_t *m);

#endif
