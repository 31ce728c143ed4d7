/* Internal to the upstream side, between its three files: upstream.c (the HTTP exchange
 * over one connection), upstream_try.c (picking targets, retries, the queue) and pool.c
 * (idle connections). Not for the rest of the engine: upstream.h is. Functions returning
 * int return LP_GONE when the request ended in the call (request.h). */
#ifndef LP_UPSTREAM_TRY_H
#define LP_UPSTREAM_TRY_H

#include "proxy-t.h"

/* upstream_try.c */
/* The request can be sent again: an idempotent method whose body (none) is not used up. */
int lp__try_replayable(const lp_req_t *req);
/* Whether the request's total_timeout has run out. */
int lp__try_deadline_passed(const lp_req_t *req);
/* Another try is allowed: within `retries`, the retry budget and total_timeout. Counts it. */
int lp__try_may_retry(lp_req_t *req);
/* The one retry path (nginx's upstream_next), after the failed try ended: the Lua
 * upstream phase again (req:last_failure()), then a target not tried yet. */
int lp__try_next(lp_req_t *req);

/* pool.c */
/* The most recently used idle connection of the pool (marked reused), or NULL. */
lp_peer_t *lp__pool_take(lp_pool_t *t);

/* upstream.c */
/* The try goes out on the pooled connection p. */
int lp__peer_start(lp_peer_t *p, lp_req_t *req);
/* The try goes out on a new connection to the pool's address. */
int lp__peer_open(lp_req_t *req, lp_pool_t *t);

#endif
