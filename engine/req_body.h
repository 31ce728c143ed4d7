/* A request body's copy and replacement, apart from the streaming in conn.c/upstream.c.
 *
 * Copy (req:tee_body, the mirror plugin): every body span the client sends is also
 * appended to a buffer the request owns, up to a limit, while the body itself goes upstream
 * at its own pace (no waiting for the whole body, unlike req:body()). The log phase copies
 * it out into a Lua string, which then lives as long as the Lua that holds it.
 *
 * Replacement (req:set_body, the transform plugin): a body the request owns is sent
 * upstream right after the head, with its Content-Length; the client's own body bytes are
 * still read (the request's body limit applies) and dropped. */
#ifndef LP_REQ_BODY_H
#define LP_REQ_BODY_H

#include "proxy-t.h"

/* A new (or recycled) request: no copy, no replacement. */
void lp_req_body_init(lp_req_t *req);
/* The request ends: frees both. */
void lp_req_body_release(lp_req_t *req);
/* A body span as parsed (de-chunked): kept in the copy when one is asked. */
void lp_req_body_tee(lp_req_t *req, const char *at, size_t len);

static inline int lp_req_body_replaced(const lp_req_t *req)
{
    return req->new_body != NULL;
}

#endif
