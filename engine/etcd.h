/* Config from etcd (issue #18, docs/fleet.md): a thread of its own talks to etcd's v3 JSON
 * gateway with blocking sockets (etcd_http.c) and hands documents to the main loop, which
 * applies each one as a reload (main.c's path) and reports the outcome back. */
#ifndef LP_ETCD_H
#define LP_ETCD_H

#include <stddef.h>
#include <stdint.h>
#include <netdb.h>
#include <jansson.h>
#include "server.h"

/* ---- etcd_http.c: one HTTP/1.1 request over a blocking TCP socket ---- */

/* "http://host:port" or "https://host:port" split; 0 or -1 (err says why). */
typedef struct {
    char host[256];
    char port[16];
    int https;                   /* https://: TLS with `tls` */
    struct lp_tls_client_s *tls; /* borrowed: the TLS settings of the etcd client (held by
                                    lp_etcd_t or push), set by the caller after the parse;
                                    NULL for http:// */
} lp_etcd_ep_t;
int lp_etcd_ep_parse(const char *url, lp_etcd_ep_t *ep, char *err, size_t errlen);

/* Body bytes as they arrive (chunked encoding undone); non-zero stops the request. */
typedef int (*lp_etcd_body_cb)(void *data, const char *p, size_t n);

/* Resolves host:port (a name or an address) for a stream socket, waiting at most
 * timeout_ms, or until wake_fd is readable (err "woken"). 0 with *out (the caller's:
 * freeaddrinfo), or LP_EIO with err ("...: name resolution timed out after N ms"). A name is
 * resolved on a detached thread: a timed-out lookup finishes there and frees itself. */
int lp_etcd_resolve(const char *host, const char *port, int timeout_ms, int wake_fd,
                    struct addrinfo **out, char *err, size_t errlen);
/* The resolver lp_etcd_resolve calls (getaddrinfo; a test sets a slow one). */
typedef int (*lp_etcd_resolver_fn)(const char *, const char *, const struct addrinfo *,
                                   struct addrinfo **);
extern lp_etcd_resolver_fn lp_etcd_resolver;

/* POST path with a JSON body; the response body goes to cb. timeout_ms bounds the connect
 * and each wait for bytes (-1: none once connected, for a watch). wake_fd (-1: none) ends
 * the wait when readable: the result is then 0 (never an HTTP status). Returns the HTTP status, or
 * an LP_E* code with err set. token: the etcd auth token sent as Authorization (NULL: none). */
int lp_etcd_post(const lp_etcd_ep_t *ep, const char *path, const char *token, const char *body,
                 int timeout_ms, int wake_fd, lp_etcd_body_cb cb, void *data, char *err,
                 size_t errlen);

/* The same, the body collected and parsed: *out the JSON (the caller's), status 200 only.
 * wake_fd (-1: none) readable ends it as a failure (err "woken"). */
int lp_etcd_call(const lp_etcd_ep_t *ep, const char *path, const char *token, json_t *req,
                 int timeout_ms, int wake_fd, json_t **out, char *err, size_t errlen);

/* Base64 (etcd's JSON gateway encodes keys and values): malloc'ed, NUL-terminated. */
char *lp_etcd_b64(const char *p, size_t n);
char *lp_etcd_unb64(const char *s, size_t *n);

/* ---- etcd.c: the watch and its hand-over to the main loop ---- */

typedef struct lp_etcd_s lp_etcd_t;

/* From the start-up config's config_source (NULL when it has none: nothing happens).
 * bootstrap: the absolute bootstrap path (the state file's default directory). Starts the
 * thread; the first document is applied as a reload when it differs from the last good
 * copy the instance started with. */
int lp_etcd_start(lp_server_t *s, const lp_config_t *cfg, char *err, size_t errlen);
void lp_etcd_stop(lp_server_t *s);
/* For GET /status: {"revision", "pending", "connected", "instance", "last_error"}; NULL when
 * off. The caller owns the reference. Main thread. */
json_t *lp_etcd_status(const lp_server_t *s);
/* 1 when the instance has a config from etcd (the last good copy counts), or no etcd. */
int lp_etcd_has_config(const lp_server_t *s);

/* ---- POST /routes with the config from etcd (etcd_routes.c, etcd.c) ---- */

/* The document text doc (NULL or "": none yet, "{}") with the admin batch `ops` applied to
 * its `routes` array (rtable.h's operations, positions 1-based): *out malloc'ed. 0, or an
 * LP_E* code with err (an operation that does not apply). */
int lp_etcd_routes_doc(const char *doc, json_t *ops, char **out, char *err, size_t errlen);

/* The answer to a change: status 200 (written: revision is etcd's after the write), 409 (the
 * document in etcd is not the one this instance runs: a push or another instance's change
 * came first), 502 (etcd failed) or 503 (stopping); msg says why when not 200. Main loop. */
typedef void (*lp_etcd_routes_cb)(void *data, int status, const char *msg, int64_t revision);
/* 1 when the config comes from etcd (POST /routes goes there, not to the overlay file). */
int lp_etcd_active(const lp_server_t *s);
/* Queues ops (the caller's; a copy is kept) for the etcd thread, which applies them to
 * PREFIX config and writes it back if its mod_revision is still the one this instance
 * runs; cb is called once, later, on the main loop. 0, or LP_ENOMEM (cb not called). */
int lp_etcd_routes_change(lp_server_t *s, json_t *ops, lp_etcd_routes_cb cb, void *data);

/* `luaproxy push -c FILE --etcd URL [--prefix P]`: exit code. */
int lp_etcd_push_main(int argc, char **argv);

#endif
