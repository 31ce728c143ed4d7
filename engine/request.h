/* A request's own lifetime, apart from the connection that carries it.
 *
 * A request is held by reference: the connection holds one while the request is its
 * current one, and every caller that may see the request end under it (a libuv callback,
 * a timer, a Lua resume) holds one more for the length of its call (lp_req_hold /
 * lp_req_drop). Ending a request (lp_req_end) releases everything it uses at once (the
 * upstream try, its Lua task, whose handle is invalidated, its buffers, its generation)
 * and sets LP_RF_ENDED; its memory is recycled only when the last reference goes, so a
 * holder can always read that flag. Functions that can end a request say so in their
 * return value (LP_GONE). */
#ifndef LP_REQUEST_H
#define LP_REQUEST_H

#include "proxy-t.h"

/* A new request for connection c, on the worker's current generation; one reference
 * (the connection's). NULL when out of memory. */
lp_req_t *lp_req_new(lp_worker_t *w, lp_conn_t *c);

static inline void lp_req_hold(lp_req_t *req)
{
    req->refs++;
}

/* Drops a reference; the last one recycles the request. 1 when it did. */
int lp_req_drop(lp_req_t *req);

static inline int lp_req_ended(const lp_req_t *req)
{
    return (req->flags & LP_RF_ENDED) != 0;
}

/* Drops the caller's hold: LP_GONE when the request ended meanwhile, else LP_OK. */
static inline int lp_req_let_go(lp_req_t *req)
{
    int rc = lp_req_ended(req) ? LP_GONE : LP_OK;
    lp_req_drop(req);
    return rc;
}

/* Ends the request: releases what it holds, detaches it from its connection and drops
 * the connection's reference. Idempotent. */
void lp_req_end(lp_req_t *req);

/* Its log phase waits on (I/O, a sleep) while the connection moves on: the request leaves
 * the connection (conn NULL; what Lua reads of the connection was kept: the client's
 * address, the scheme; TLS facts are gone) and joins w->detached with the connection's
 * reference, until lp_req_end when the phase is over, or a stopping worker's drain
 * deadline. */
void lp_req_detach(lp_req_t *req);
/* Ends the detached requests: all of them (`all`: a stopping worker past its drain
 * deadline), or those of generations that ended more than timeouts.drain ago (the
 * housekeeping pass, as for background tasks). */
void lp_req_end_detached(lp_worker_t *w, int all);

/* The client's address as text ("" when unknown): formatted from the connection's bytes
 * on first use, then kept with the request (log, X-Forwarded-For, hash key, Lua). */
const char *lp_req_client_ip(lp_req_t *req);
/* The TCP peer's address as text (the client's unless a PROXY header or real_ip said
 * otherwise), formatted on first use. */
const char *lp_req_peer_ip(lp_req_t *req);
/* The request's fields of a JSON error line (log.h lp_log_swap_request): ,"client":...,
 * "method", "uri", "host", "request_id" (its X-Request-Id) when known; returns their length. */
size_t lp_req_log_members(const void *req, char *out, size_t room);

/* Moves the request's (resp 0) or response's (resp 1) head into a larger arena holding at
 * least `need` bytes, fixing every slice. 0, or -1 past the head limits. */
int lp_req_grow(lp_req_t *req, int resp, size_t need);

/* Frees the recycled requests that went unused since the last trim (what a peak left
 * behind); returns the bytes freed. */
size_t lp_req_trim(lp_worker_t *w);
/* At worker exit: frees the recycled requests. */
void lp_req_free_all(lp_worker_t *w);

#endif
