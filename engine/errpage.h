/* Custom error pages (the config's `error_pages`): the page in place of one of the proxy's
 * own answers, and its body with ${status}, ${reason} and ${detail} rendered. Pages are read
 * when the config loads (config.c) and shared read-only by the workers. */
#ifndef LP_ERRPAGE_H
#define LP_ERRPAGE_H

#include <stddef.h>
#include "config.h"

/* The proxy's own answer, as conn.c sends it. */
typedef struct {
    int status;               /* the status sent (a page's `status =`, else the answer's) */
    const char *content_type; /* NULL when the status has no body (204, 304) */
    char *body;               /* owned by the caller (malloc'd); NULL when empty */
    size_t len;
} lp_error_answer_t;

/* The answer of `status` to a request of route r (NULL: none matched), with `detail` (NULL:
 * none; engine text, never the client's): the page lp_errpage_find() gives, rendered, else
 * the built-in "502 Bad Gateway\n" (with ": detail" when given), text/plain. 0, or
 * LP_ENOMEM. */
int lp_errpage_answer(const lp_config_t *c, const lp_route_conf_t *r, int status,
                      const char *detail, lp_error_answer_t *out);

/* The page for an answer of `status` to a request of route r (NULL: none matched): the
 * route's when it has one for the status, else the config's. NULL when neither has one or
 * the one found is the built-in answer. */
const lp_error_page_t *lp_errpage_find(const lp_config_t *c, const lp_route_conf_t *r, int status);

/* p's body for an answer of `status` (the status the page replaces) with `detail` (NULL:
 * none) into *body, malloc'd, *len bytes, owned by the caller (NULL when empty). 0, or
 * LP_ENOMEM. */
int lp_errpage_render(const lp_error_page_t *p, int status, const char *detail, char **body,
                      size_t *len);

/* Renders template t (n bytes) into out (NULL: only counts): `$name` and `${name}` for the
 * names status, reason and detail (values vals[0..2]), "$$" for "$"; anything else stays as
 * written, as in lua/luaproxy/text.lua. Returns the rendered length. */
size_t lp_errpage_template(const char *t, size_t n, const char *const vals[3], char *out);

/* gRPC (a request with content-type application/grpc): the proxy's own answer of HTTP
 * `status` is an HTTP 200 trailers-only response carrying this grpc-status instead of a
 * page (conn.c): UNAVAILABLE (14) for 502 and 503, DEADLINE_EXCEEDED (4) for 504 and 408,
 * RESOURCE_EXHAUSTED (8) for 429 and 413, UNIMPLEMENTED (12) for 404 and 405, INTERNAL (13)
 * for 500 and 400, UNAUTHENTICATED (16) for 401, PERMISSION_DENIED (7) for 403, else
 * UNKNOWN (2). */
int lp_errpage_grpc_status(int status);

/* Its grpc-message into out (percent-encoded as gRPC asks: "proxy: 502 Bad Gateway"); the
 * length. */
size_t lp_errpage_grpc_message(int status, char *out, size_t room);

/* Where a gRPC answer's fields go (a response head, trailer text): 0, or non-zero when it
 * could not take the field. */
typedef int (*lp_errpage_field_fn)(void *ud, const char *name, size_t nlen, const char *value,
                                   size_t vlen);
/* The fields of the answer of `status`, grpc-status then grpc-message, each given to
 * add(ud, ...). -1 as soon as add fails. */
int lp_errpage_grpc_fields(int status, lp_errpage_field_fn add, void *ud);

#endif
