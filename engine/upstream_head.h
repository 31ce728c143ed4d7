/* What a request carries to its upstream, decided once for every protocol: the method, the
 * path (the route's prefix stripped), the authority and the fields in order (the client's
 * end-to-end fields, X-Forwarded-*, trace context, framing). upstream.c writes it as
 * HTTP/1.1 text, h2_up.c as HTTP/2 fields; neither adds or drops a field of its own.
 * Worker thread; a head lives on its builder's stack while it is written out. */
#ifndef LP_UPSTREAM_HEAD_H
#define LP_UPSTREAM_HEAD_H

#include "proxy-t.h"

#define LP_UPHEAD_FIELDS 40  /* fields held without an allocation */
#define LP_UPHEAD_TEXT   256 /* bytes of made values held without an allocation */

/* The protocol the head is for: what differs is framing only (HTTP/1.1: Transfer-Encoding
 * and an Upgrade's Connection; HTTP/2: "te: trailers", which gRPC servers require). */
enum { LP_UPHEAD_H1, LP_UPHEAD_H2 };

typedef struct {
    const char *method;  /* static: the method's name */
    lp_str_t path;       /* borrowed: the request's path, or a made one in `text` */
    lp_str_t authority;  /* borrowed: the request's Host, or the target's address */
    lp_header_t *fields; /* `fixed`, or owned when the head has more fields */
    unsigned n;
    char *text; /* made values (joined X-Forwarded-For, ...): `tbuf`, or owned */
    lp_header_t fixed[LP_UPHEAD_FIELDS];
    char tbuf[LP_UPHEAD_TEXT];
} lp_uphead_t;

/* The head of req's current try to pool t. Slices point into the request (valid while it
 * is unchanged) and into u. LP_ENOMEM: nothing to free. */
int lp_uphead_build(lp_uphead_t *u, lp_req_t *req, const lp_pool_t *t, int proto);
void lp_uphead_free(lp_uphead_t *u);

#endif
