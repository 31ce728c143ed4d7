/* Downstream connections: accept, parse requests, answer in order, relay responses. */
#ifndef LP_CONN_H
#define LP_CONN_H

#include "proxy-t.h"
#include "request.h"

/* The seam between the request pipeline (conn.c: real_ip, route, Lua phases, the upstream
 * try, local answers, the log) and the protocol that carries the request to the client:
 * HTTP/1.1 (conn.c, one request at a time on the connection) or an HTTP/2 stream (h2.c).
 * The pipeline calls these for the request's response; each side frames it its own way. */
typedef struct lp_down_ops_s {
    /* Queue the response head as it stands in req->resp (status, end-to-end headers);
     * the framing decisions are made: no_body, and the length when has_length. -1 when
     * out of memory. */
    int (*head)(lp_req_t *req, const lp_h1_t *rh, int no_body, int has_length, uint64_t length);
    /* Queue body bytes as they go on the wire (after filters and compression); pin, when
     * not NULL, keeps them alive until written. */
    void (*body)(lp_req_t *req, const char *at, size_t len, lp_buf_t *pin);
    /* The body is complete (HTTP/1.1: the last chunk; HTTP/2: END_STREAM). */
    void (*end)(lp_req_t *req);
    /* The client side holds the high watermark: the upstream stops reading until `more`. */
    int (*full)(const lp_req_t *req);
    /* Hands what is queued to the socket. */
    void (*flush)(lp_req_t *req);
    /* The response cannot go on (cut mid-response, out of memory): HTTP/1.1 closes the
     * connection, HTTP/2 resets the stream. The request has ended on return. */
    void (*abort)(lp_req_t *req);
    /* After the log line: HTTP/1.1 reads the next request or closes; HTTP/2 lets the
     * stream finish sending. The request has ended or detached. */
    void (*finished)(lp_req_t *req, lp_conn_t *c, int keep);
    /* The request body may move on: the upstream is ready or drained, or req:body()
     * waits for it. */
    void (*pump)(lp_req_t *req);
} lp_down_ops_t;

/* The client side of req holds the high watermark (upstream.c pauses its read). */
int lp_conn_req_full(const lp_req_t *req);
/* lp_conn_kick for the request's own downstream (an HTTP/2 stream's body). */
void lp_conn_kick_req(lp_req_t *req);

/* For h2.c: the pipeline's entry points for a request whose head arrived on a stream. */
/* The head is parsed into req->h1: limits, route, the request phase. LP_GONE: ended. */
int lp_conn_req_head(lp_req_t *req);
/* Request body bytes (de-framed): 0 to go on, LP_H1_CB_PAUSE when req:body() gathered its
 * limit, 413 past the body limit, -1 out of memory. */
int lp_conn_req_body(lp_req_t *req, const char *at, size_t len, lp_buf_t *pin);
/* The request body ended. LP_GONE when the request ended. */
int lp_conn_req_body_end(lp_req_t *req);
/* The request's client went away (reset, connection closed): 499, log line, log phase. */
void lp_conn_req_cut(lp_req_t *req);
/* Close c once what is queued is written (a graceful end). */
void lp_conn_close_after_write(lp_conn_t *c);

/* listener's connection callback */
void lp_conn_on_connection(uv_stream_t *server, int status);
void lp_conn_close(lp_conn_t *c);
/* Graceful shutdown: idle connections close now, busy ones after their response. */
void lp_conn_drain(lp_conn_t *c);
/* The client's address as text into out ("" when unknown); its length. */
size_t lp_conn_ip_text(const lp_conn_t *c, char out[LP_IP_TEXT]);
/* The TCP peer's address as text: the balancer's when a PROXY header named the client. */
size_t lp_conn_peer_text(const lp_conn_t *c, char out[LP_IP_TEXT]);

/* Called by the upstream side for the request it serves. Those returning int return
 * LP_GONE when the request ended in the call (request.h): the caller must not use it
 * beyond its own hold. */
int lp_conn_upstream_ready(lp_req_t *req);
int lp_conn_upstream_failed(lp_req_t *req, int status, const char *why);
/* 0: the head is queued; LP_AGAIN: the response phase waits; LP_GONE: the request ended;
 * else the status to fail with (500: the response phase failed). */
int lp_conn_response_head(lp_req_t *req, lp_h1_t *rh);
/* Response body bytes for the client; -1 when a body filter failed (close both sides). */
int lp_conn_response_body(lp_req_t *req, const char *at, size_t len, lp_buf_t *pin);
int lp_conn_response_done(lp_req_t *req);
void lp_conn_flush(lp_conn_t *c);
void lp_conn_resume_body(lp_req_t *req); /* upstream drained below the low watermark */
/* A cache hit's body may go on: a streamed hit's read ended (cache_disk_hit.c), or an HTTP/2
 * stream drained below the low watermark (h2.c). Its next bytes go out, or the answer is
 * cut short when the file failed. */
void lp_conn_cache_resume(lp_req_t *req);
/* Tunnel (after 101): raw bytes from the upstream to the client. */
void lp_conn_tunnel_start(lp_req_t *req);
/* What `from` (the upstream) read goes to the client as it is. */
void lp_conn_tunnel_from(lp_conn_t *c, lp_endpoint_t *from);
void lp_conn_tunnel_resume(lp_conn_t *c);
/* The upstream side of the tunnel ended: close once everything is written. */
void lp_conn_tunnel_end(lp_conn_t *c);

/* req:body(max): LP_OK when the body is complete (or empty), LP_AGAIN while it is being
 * gathered (lp_lua_wake follows), LP_ERROR when it is larger than max. */
int lp_conn_read_body(lp_req_t *req, uint64_t max);
/* Parses what is pending (after a Lua phase yielded waiting for the body). */
void lp_conn_kick(lp_conn_t *c);
/* The body gathered for req:body() (NULL when none); a try sends it first. The request
 * keeps it (the next try sends it again). */
void lp_conn_take_body(lp_req_t *req, lp_buf_t **buf, size_t *len);
/* A failed try hands back the body it took, whole (what was gathered, then what streamed
 * to it): it becomes the gathered body, which the next try sends first. b's reference goes
 * with it. */
void lp_conn_give_body_back(lp_req_t *req, lp_buf_t *b, size_t len);
/* A suspended Lua phase of req finished with rc (lua_vm.c calls this). LP_GONE when the
 * request ended. */
int lp_conn_lua_resumed(lp_req_t *req, int phase, lp_rc_t rc);

/* Whether req came over TLS (its scheme is https): its connection's, or, detached from it,
 * what it kept (LP_RF_TLS). */
static inline int lp_req_over_tls(const lp_req_t *r)
{
    return (r->conn && r->conn->ep.tls) || (r->flags & LP_RF_TLS);
}

#endif
