/* Downstream connections: accept, parse requests, answer in order, relay responses. */
#ifndef LP_CONN_H
#define LP_CONN_H

#include "proxy-t.h"

/* listener's connection callback */
void lp_conn_on_connection(uv_stream_t *server, int status);
void lp_conn_close(lp_conn_t *c);
/* Graceful shutdown: idle connections close now, busy ones after their response. */
void lp_conn_drain(lp_conn_t *c);

/* Called by the upstream side for the request it serves. */
void lp_conn_upstream_ready(lp_req_t *req);
void lp_conn_upstream_failed(lp_req_t *req, int status, const char *why);
int lp_conn_response_head(lp_req_t *req, lp_h1_t *rh);
/* Response body bytes for the client; -1 when a body filter failed (close both sides). */
int lp_conn_response_body(lp_req_t *req, const char *at, size_t len, lp_buf_t *pin);
void lp_conn_response_done(lp_req_t *req);
void lp_conn_flush(lp_conn_t *c);
void lp_conn_resume_body(lp_req_t *req); /* upstream drained below the low watermark */
/* Tunnel (after 101): raw bytes from the upstream to the client. */
void lp_conn_tunnel_start(lp_req_t *req);
void lp_conn_tunnel_data(lp_conn_t *c, const char *at, size_t len, lp_buf_t *pin);
void lp_conn_tunnel_resume(lp_conn_t *c);
/* The upstream side of the tunnel ended: close once everything is written. */
void lp_conn_tunnel_end(lp_conn_t *c);

/* Moves the request's (resp 0) or response's (resp 1) head into a larger arena holding at
 * least `need` bytes, fixing every slice. 0, or -1 past the head limits. */
int lp_req_grow(lp_req_t *req, int resp, size_t need);
/* req:body(max): LP_OK when the body is complete (or empty), LP_AGAIN while it is being
 * gathered (lp_lua_wake follows), LP_ERROR when it is larger than max. */
int lp_conn_read_body(lp_req_t *req, uint64_t max);
/* Parses what is pending (after a Lua phase yielded waiting for the body). */
void lp_conn_kick(lp_conn_t *c);
/* The body gathered for req:body() (NULL when none). */
void lp_conn_take_body(lp_req_t *req, lp_buf_t **buf, size_t *len);
/* A suspended Lua phase of req finished with rc (lua_vm.c calls this). */
void lp_conn_lua_resumed(lp_req_t *req, int phase, lp_rc_t rc);

#endif
