/* HTTP/2 to upstreams (upstreams.NAME.protocol = "h2"): requests go as streams over pooled
 * connections to each target, many at once on one connection (h2c with prior knowledge, or
 * TLS with ALPN h2). Each try's stream embeds the lp_peer_t that req->try.peer points at
 * (LP_PF_H2), so the pipeline (conn.c) and the retry logic (upstream_try.c) see a peer as
 * with HTTP/1.1; upstream.c's lp_peer_* hand such peers over here. Worker thread only. */
#ifndef LP_H2_UP_H
#define LP_H2_UP_H

#include "proxy-t.h"

/* The try of req goes out as a stream on a connection of pool t with room, or on a new
 * one. LP_GONE when the request ended in the call. */
int lp_h2u_start(lp_req_t *req, lp_pool_t *t);
/* lp_peer_* for a stream's peer (upstream.h says what each does). */
void lp_h2u_body(lp_peer_t *p, const char *at, size_t len);
void lp_h2u_body_end(lp_peer_t *p);
void lp_h2u_flush(lp_peer_t *p);
int lp_h2u_full(const lp_peer_t *p);
void lp_h2u_resume(lp_peer_t *p);
void lp_h2u_continue(lp_peer_t *p);
/* The request let go of its stream: the stream is reset (unless it ended) and forgotten. */
void lp_h2u_abort(lp_peer_t *p);
/* Closes the pool's connections that carry no stream (reload, shutdown). */
void lp_h2u_close_idle(lp_pool_t *t);

#endif
