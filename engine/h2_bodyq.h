/* The body bytes of an HTTP/2 stream waiting to go, on both sides: a client's request body
 * and its response (h2.c), a request to an upstream's stream and the response coming back
 * (h2_up.c). Bytes are copied into pooled blocks (buf.h), each filled before the next is
 * taken; a block carries its piece's header in its first bytes, so a piece costs no
 * allocation of its own, and a piece's block can be pinned by a write (lp_h2_bodyq_shift
 * hands it out with a reference).
 *
 * As the data source of a stream we send on, the queue also ends the stream: with the
 * trailers it was given (a copy of the request's or the response's, whose forbidden fields
 * were dropped when they came: lp_h2_trailer_forbidden), or with END_STREAM. A zeroed
 * queue is empty. The worker's thread only. */
#ifndef LP_H2_BODYQ_H
#define LP_H2_BODYQ_H

#include <nghttp2/nghttp2.h>
#include "buf.h"

typedef struct lp_h2_seg_s lp_h2_seg_t;

typedef struct {
    lp_h2_seg_t *head, *tail; /* owned: the pieces, first to last */
    size_t bytes;             /* waiting in them */
    char *trailers;           /* owned, NULL: none; they end the stream after the last byte */
    size_t trailers_len;
    uint8_t eof;      /* nothing more comes (lp_h2_bodyq_end) */
    uint8_t deferred; /* the data source said DEFERRED: lp_h2_bodyq_wake resumes it */
} lp_h2_bodyq_t;

/* Appends a copy of len bytes. -1 when out of memory (what fitted stays). */
int lp_h2_bodyq_add(lp_h2_bodyq_t *q, lp_bufpool_t *bufs, const char *at, size_t len);
/* Takes the first piece off (the queue must not be empty): its bytes, *len of them, stay
 * valid while *block, a reference the caller drops, is held (a write may pin it). */
const char *lp_h2_bodyq_shift(lp_h2_bodyq_t *q, size_t *len, lp_buf_t **block);
/* Copies every byte, in order, into dst (room for q->bytes); the queue keeps them. */
void lp_h2_bodyq_copy(const lp_h2_bodyq_t *q, char *dst);
/* Nothing more comes; trailers ("name: value\r\n" text, len bytes; NULL: none) are copied
 * to end the stream. -1 when out of memory for the copy: the body ends without them. */
int lp_h2_bodyq_end(lp_h2_bodyq_t *q, const char *trailers, size_t len);
/* nghttp2's read callback over q for stream id: up to length bytes into buf; after the last
 * one, EOF, with the trailers submitted to end the stream (then freed). DEFERRED when there
 * is nothing yet (lp_h2_bodyq_wake when bytes or the end come). */
ssize_t lp_h2_bodyq_source(lp_h2_bodyq_t *q, nghttp2_session *s, int32_t id, uint8_t *buf,
                           size_t length, uint32_t *flags);
/* Bytes or the end came: a deferred data source of stream id goes on. */
void lp_h2_bodyq_wake(lp_h2_bodyq_t *q, nghttp2_session *s, int32_t id);
/* Frees every piece and the trailers: the queue is empty again. */
void lp_h2_bodyq_free(lp_h2_bodyq_t *q);

#endif
