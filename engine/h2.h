/* HTTP/2 on a client connection (RFC 9113) through libnghttp2's server session: many
 * streams over one endpoint, each stream an lp_req_t that goes through the same pipeline
 * as an HTTP/1.1 request (conn.c) and is proxied to the same HTTP/1.1 upstream pools.
 *
 * The connection (lp_conn_t, LP_CF_H2) owns the session (`c->h2`), and the session owns
 * its streams. A stream holds a reference to its request while the request runs (as an
 * HTTP/1.1 connection holds its current request); the request ending or detaching clears
 * both links (lp_h2_req_gone), and the stream stays until nghttp2 closes it (its queued
 * response bytes are the stream's, not the request's). The worker's thread only. */
#ifndef LP_H2_H
#define LP_H2_H

#include "conn.h"

/* The client's first bytes are the HTTP/2 connection preface (h2c by prior knowledge):
 * 1 yes, 0 no, -1 not enough bytes to tell yet. */
int lp_h2_is_preface(const char *p, size_t len);

/* Turns c into an HTTP/2 connection (ALPN said h2, or the h2c preface came): sets
 * LP_CF_H2 and c->h2, queues our SETTINGS. -1 when out of memory. */
int lp_h2_start(lp_conn_t *c);
/* New input: plain bytes in c->ep.rbuf, or ciphertext in the TLS session. */
void lp_h2_input(lp_conn_t *c);
void lp_h2_written(lp_conn_t *c);
void lp_h2_timeout(lp_conn_t *c, int mode);
/* Hands what the session has to send to the endpoint (bounded by the high watermark): at
 * the end of the loop turn (lp_h2_flush_turn), or at once when the connection is to close
 * after its writes (LP_CF_CLOSE_AFTER: its caller looks at what is pending). */
void lp_h2_flush(lp_conn_t *c);
/* The end of a loop turn (the worker's prepare): the sessions lp_h2_flush deferred send. */
void lp_h2_flush_turn(lp_worker_t *w);
/* The connection is closing: every stream's request is cut (499, log line, log phase). */
void lp_h2_close(lp_conn_t *c);
/* The connection's memory goes (ops->closed): the session and the streams. */
void lp_h2_free(lp_conn_t *c);
/* Graceful shutdown: GOAWAY with the last stream id; open streams finish, then it closes. */
void lp_h2_drain(lp_conn_t *c);

/* A new generation is the worker's (worker.c): each HTTP/2 connection gets GOAWAY with its
 * last stream id (lp_h2_drain); its open streams finish on their generation, and the client
 * opens a new connection, which the new listener settings and `http2` limits apply to. */
void lp_h2_reloaded(lp_worker_t *w);

/* The downstream side of a request on a stream (conn.c's lp_down_ops_t for HTTP/2). */
extern const struct lp_down_ops_s lp_h2_down_ops;
/* The request ended or detached: the stream lets go of it (request.c). */
void lp_h2_req_gone(lp_req_t *req);

#endif
