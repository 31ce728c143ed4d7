/* What the HTTP/2 server side (h2.c) and client side (h2_up.c) both do with nghttp2:
 * moving a session's output into an endpoint's write batches, and building header lists
 * (lower-cased names, trailers from "name: value\r\n" text). */
#ifndef LP_H2_UTIL_H
#define LP_H2_UTIL_H

#include <nghttp2/nghttp2.h>
#include "endpoint.h"

/* One batch of the session's output into ep's write batches, while ep holds less than the
 * high watermark. Returns the bytes queued; sets *fatal when the session failed or memory
 * ran out (the connection cannot go on). */
size_t lp_h2_fill(nghttp2_session *s, lp_endpoint_t *ep, uint8_t *fatal);

/* A header list being built: the names and values are copied (names lower-cased), so the
 * sources may go once added. Pointers are made by lp_h2_nvs_done. */
typedef struct {
    nghttp2_nv *nv; /* owned: n entries (capacity cap); offsets into mem until done */
    size_t n, cap;
    char *mem; /* owned: the bytes */
    size_t mlen, mcap;
    int oom; /* an addition failed: the list is incomplete */
} lp_h2_nvs_t;

void lp_h2_nvs_add(lp_h2_nvs_t *l, const char *name, size_t nlen, const char *value, size_t vlen);
/* Room for n more fields of `bytes` names and values in all: adding them then allocates
 * nothing (a list grown field by field reallocates as it doubles). */
void lp_h2_nvs_reserve(lp_h2_nvs_t *l, size_t n, size_t bytes);
/* Adds the fields of trailer text ("name: value\r\n" lines), HTTP/2's connection-specific
 * ones left out. */
/* A field that must not travel in trailers (either direction): dropped. */
int lp_h2_trailer_forbidden(const char *name, size_t nlen);
void lp_h2_nvs_add_text(lp_h2_nvs_t *l, const char *text, size_t len);
/* The list, ready for nghttp2 (valid until lp_h2_nvs_free); NULL when an addition failed. */
nghttp2_nv *lp_h2_nvs_done(lp_h2_nvs_t *l);
void lp_h2_nvs_free(lp_h2_nvs_t *l);

/* A field HTTP/2 forbids (RFC 9113 8.2.2): connection, keep-alive, proxy-connection,
 * transfer-encoding, upgrade, and te other than "trailers". */
int lp_h2_conn_specific(const char *name, size_t nlen, const char *value, size_t vlen);

/* Appends "name: value\r\n" to *text (realloc'd, owned by the caller). -1 when out of
 * memory. */
int lp_h2_text_add(char **text, size_t *len, const char *name, size_t nlen, const char *value,
                   size_t vlen);

#endif
