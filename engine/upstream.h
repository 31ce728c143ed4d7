/* Upstream connections: pools per target, connect, write requests, parse responses. */
#ifndef LP_UPSTREAM_H
#define LP_UPSTREAM_H

#include "proxy-t.h"

/* One generation's upstreams in worker w (targets and balancer state; pools are the
 * worker's, shared by generations). Made on any thread (the main thread builds it before
 * the generation's init_worker runs, which may change it), then attached on the worker's
 * thread before it serves: pools and timers. */
lp_upstream_rt_t *lp_upstream_rt_new(lp_worker_t *w, const lp_config_t *cfg);
int lp_upstream_rt_attach(lp_worker_t *w, lp_upstream_rt_t *ups, size_t n, uint64_t gen);
void lp_upstream_rt_free(lp_upstream_rt_t *ups, size_t n);
/* The worker's connection pool to addr, made on first use; gen: the newest generation that
 * uses it. With TLS, `name` (NULL: addr's host) is sent as SNI and verified, unless the
 * upstream's tls.sni overrides it. h2: HTTP/2 connections (a pool of its own). Worker
 * thread. */
lp_pool_t *lp__upstream_pool(lp_worker_t *w, const lp_addr_t *addr, uint64_t gen,
                             struct lp_tls_client_s *tls, const char *name, int h2);
/* At worker exit: the pools and set_target() upstreams. */
void lp_upstream_destroy_all(lp_worker_t *w);

/* Picks a target and an idle or new connection for req, then writes the head.
 * lp_conn_upstream_ready() or lp_conn_upstream_failed() follows, maybe synchronously:
 * LP_GONE when the request ended in the call. */
int lp_upstream_start(lp_req_t *req);
/* Resets req->try to "no try yet": a new request, and its first lp_upstream_start(). The
 * only place the try state is reset; it holds nothing then (no target reference, not
 * queued, no connection). */
void lp_upstream_try_reset(lp_req_t *req);
/* The current try of req ended (the balancer learns its outcome and latency). */
void lp_upstream_try_end(lp_req_t *req, int failed);
/* Request body bytes (raw or re-chunked), and the end of the body. */
void lp_peer_body(lp_peer_t *p, const char *at, size_t len, lp_buf_t *pin, int chunked);
void lp_peer_body_end(lp_peer_t *p, int chunked);
void lp_peer_flush(lp_peer_t *p);
/* The response phase finished: go on with the body. */
void lp_peer_continue(lp_peer_t *p);
/* The client drained: resume reading the response. */
void lp_peer_resume(lp_peer_t *p);
/* The request is gone (client closed or error): close this connection. */
void lp_peer_abort(lp_peer_t *p);
/* The client ended the tunnel. */
void lp_peer_tunnel_eof(lp_peer_t *p);

/* p's response parser for req's answer (HTTP/1.1 text, or HTTP/2 fields: h2_up.c): the
 * head's limits, the response arena (grown through the request), HEAD's bodiless answer. */
void lp_peer_resp_init(lp_peer_t *p, lp_req_t *req, lp_h1_body_cb on_body);
/* The upstream side of p holds the high watermark of request body: stop feeding it. */
int lp_peer_full(const lp_peer_t *p);
/* req:set_target(): req goes to a one-target upstream for `text` ("ip:port"), kept per
 * worker so its connections pool; req holds a reference until it ends. LP_ELIMIT when the
 * table is full of destinations in use. */
int lp_upstream_set_dynamic(lp_req_t *req, const struct sockaddr *sa, const char *text);
/* Drops req's reference to its set_target() upstream (lp_req_end). */
void lp_upstream_dyn_release(lp_req_t *req);
/* Closes idle pooled connections: all (older_than 0), or those of pools that no
 * generation from older_than on uses (after a reload). */
void lp_upstream_close_idle(lp_worker_t *w, uint64_t older_than);

#endif
