/* nghttp2's memory for one session, through hooks that know its output frame buffer, so
 * that an idle HTTP/2 connection gives that buffer's pages back to the kernel.
 *
 * nghttp2 allocates the buffer its frames are serialized into (a 16 KiB frame plus its
 * header) when the session is made and keeps it until the session ends: on an idle
 * connection it is most of the session's memory. Once the session has nothing to send, the
 * buffer holds no live byte (every frame was copied out to the endpoint by lp_h2_fill), so
 * its whole pages can be dropped (MADV_DONTNEED): they read back as zeros and are faulted
 * in again when the next frame is written. nginx likewise frees an idle HTTP/2
 * connection's buffers. */
#ifndef LP_H2_MEM_H
#define LP_H2_MEM_H

#include <stddef.h>
#include <stdint.h>
#include <nghttp2/nghttp2.h>

typedef struct lp_h2_mem_s {
    nghttp2_mem mem; /* the hooks nghttp2 copies; their user data is this struct */
    void *framebuf;  /* borrowed (nghttp2 owns it): the output frame buffer; NULL: not known */
    size_t framebuf_len;
    /* borrowed (nghttp2 owns it): the stream map's table, a page of its own; NULL: not
     * known. All zero when no stream is in it, and then dropped too (it reads back the
     * same). */
    void *map;
    /* Set while the session is being made: the large block allocated then is the frame
     * buffer (nghttp2 makes no other block that large at that time). */
    uint8_t capturing;
} lp_h2_mem_t;

/* Hooks for a session about to be made (nghttp2_session_*_new3 with &m->mem; set
 * m->capturing around that call). The struct must stay where it is while the session
 * lives. */
void lp_h2_mem_init(lp_h2_mem_t *m);
/* Gives the frame buffer's whole pages back to the kernel, and the stream map's page when
 * it is all zero. Only when the session has nothing to send (nghttp2_session_want_write()
 * is 0, so its buffer holds no frame). Returns the bytes given back. */
size_t lp_h2_mem_trim(lp_h2_mem_t *m);

#endif
