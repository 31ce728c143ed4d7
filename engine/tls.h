/* TLS with OpenSSL over libuv streams: per-listener server contexts (SNI, ALPN, mTLS,
 * resumption), per-upstream client contexts (verification, SNI), and per-connection
 * sessions that encrypt and decrypt through our own BIO over pooled blocks.
 *
 * Threads: contexts (lp_tls_server_t, lp_tls_client_t) are built when a config is
 * materialised (lp_config_materialise: the main thread at start-up, a libuv threadpool
 * thread at a reload; one thread per config, never a serving loop) and then shared
 * read-only by every worker and the health checker; their reference counts are atomic. A
 * connection's lp_tls_t belongs to its loop's thread (a worker's, or the main thread's for
 * health probes). The session-ticket key ring is the one process-wide mutable state
 * (tls.c, guarded by its mutex); the process-wide set-up runs once (uv_once). */
#ifndef LP_TLS_H
#define LP_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "buf.h"

typedef struct lp_tls_server_s lp_tls_server_t;
typedef struct lp_tls_client_s lp_tls_client_t;
typedef struct lp_tls_s lp_tls_t;

/* ---- contexts (config time) ---- */

typedef struct {
    char *cert, *key; /* owned paths */
    char **names;     /* owned, optional: SNI names served (default: the certificate's) */
    size_t nnames;
} lp_tls_cert_conf_t;

enum { LP_TLS_VERIFY_OFF, LP_TLS_VERIFY_OPTIONAL, LP_TLS_VERIFY_REQUIRED };

typedef struct {
    lp_tls_cert_conf_t *certs; /* owned; the first is the default for unknown/missing SNI */
    size_t ncerts;
    char *client_ca; /* owned: verify client certificates against it (mTLS) */
    int verify_client;
    char *ciphers;      /* owned: TLS 1.2 cipher list; NULL: Mozilla intermediate */
    char *ciphersuites; /* owned: TLS 1.3 suites; NULL: OpenSSL's defaults */
    int min_version;    /* TLS1_2_VERSION or TLS1_3_VERSION */
    int session_tickets;
    unsigned session_cache; /* sessions kept per listener; 0: no server-side cache */
    uint64_t session_timeout_s;
    uint64_t handshake_timeout; /* ms */
    char **ticket_key_files;    /* owned: 80-byte key files (nginx's format); [0] encrypts */
    size_t nticket_key_files;   /* 0: the process-wide rotating ring */
    int alpn_h2;                /* ALPN offers h2 before http/1.1 (listen[].http2) */
} lp_tls_server_conf_t;

typedef struct {
    int verify;      /* verify the server's certificate and name */
    char *ca;        /* owned: CA file; NULL: the system store */
    char *sni;       /* owned: server name to send and verify; NULL: the target's host */
    char *cert;      /* owned: client certificate (optional) */
    char *key;       /* owned */
    char *ciphers;   /* owned, NULL: Mozilla intermediate */
    int min_version; /* TLS1_2_VERSION default */
    int alpn_h2;     /* ALPN offers only h2 (upstreams.NAME.protocol = "h2") */
} lp_tls_client_conf_t;

void lp_tls_server_conf_free(lp_tls_server_conf_t *c);
void lp_tls_client_conf_free(lp_tls_client_conf_t *c);

/* Builds a server context; on failure returns NULL with "what: problem" in err (the file
 * is named). */
lp_tls_server_t *lp_tls_server_new(const lp_tls_server_conf_t *conf, char *err, size_t errlen);
lp_tls_server_t *lp_tls_server_ref(lp_tls_server_t *s);
void lp_tls_server_unref(lp_tls_server_t *s);
uint64_t lp_tls_server_handshake_timeout(const lp_tls_server_t *s);

lp_tls_client_t *lp_tls_client_new(const lp_tls_client_conf_t *conf, char *err, size_t errlen);
void lp_tls_client_unref(lp_tls_client_t *c);
lp_tls_client_t *lp_tls_client_ref(lp_tls_client_t *c);
/* The name sent as SNI and checked against the certificate (NULL: use the target host). */
const char *lp_tls_client_sni(const lp_tls_client_t *c);
/* The settings as one string: equal keys make interchangeable connections. */
const char *lp_tls_client_key(const lp_tls_client_t *c);
/* The name a connection to addr ("host:port", "[v6]:port") sends as SNI and verifies:
 * the configured sni, else the DNS name the address was resolved from (NULL when none),
 * else the address's host. Owned by the caller (free); NULL when out of memory. Upstream
 * pools and active health checks both use it. */
char *lp_tls_peer_name(const lp_tls_client_t *c, const char *addr, const char *dns_name);

/* A bare OpenSSL session of cli's context for a peer named host (SNI and verification as
 * lp_tls_connect sets them), for a caller doing its own I/O on a socket (SSL_set_fd: the
 * etcd client, etcd_http.c). The caller owns it (SSL_free); NULL when out of memory. */
struct ssl_st *lp_tls_client_ssl(lp_tls_client_t *cli, const char *host);

/* Process-wide set-up (the BIO method, the ticket key ring), done once by the first
 * context built; 0 or -1. */
int lp_tls_global_init(void);

/* ---- one connection ---- */

/* The session cache of a client context lives in the caller (per pool, worker-local):
 * `session` points at its slot; the connection stores new sessions there. */
lp_tls_t *lp_tls_accept(lp_tls_server_t *srv, lp_bufpool_t *pool);
lp_tls_t *lp_tls_connect(lp_tls_client_t *cli, const char *host, void **session,
                         lp_bufpool_t *pool);
void lp_tls_free(lp_tls_t *t);
/* Frees a session stored by lp_tls_connect (NULL is fine). */
void lp_tls_session_free(void *session);

/* Ciphertext in: space to read into (len 0 when the input buffer is full), then commit. */
uv_buf_t lp_tls_in_space(lp_tls_t *t);
void lp_tls_in_commit(lp_tls_t *t, size_t n);
/* The socket reached EOF: no more ciphertext will come. */
void lp_tls_in_eof(lp_tls_t *t);
int lp_tls_in_full(const lp_tls_t *t);
/* Returns the input block once everything in it is consumed (idle connections hold none). */
void lp_tls_in_trim(lp_tls_t *t);
/* The first byte received, or -1 before any: tells a TLS hello from plain HTTP. */
int lp_tls_first_byte(const lp_tls_t *t);

/* LP_OK when established, LP_AGAIN while in progress, LP_ERROR (see lp_tls_error). */
int lp_tls_handshake(lp_tls_t *t);
int lp_tls_established(const lp_tls_t *t);
/* The handshake resumed a session (ticket or cache). */
int lp_tls_resumed(const lp_tls_t *t);
/* The peer's first handshake message was processed (a ClientHello answered, say). */
int lp_tls_started(const lp_tls_t *t);

/* Decrypts into out: bytes (> 0), 0 when more ciphertext is needed, LP_TLS_EOF at the
 * peer's close_notify or the socket's EOF, LP_TLS_ERROR on a protocol error. */
#define LP_TLS_EOF   (-301) /* a range of its own: never an lp_rc_t */
#define LP_TLS_ERROR (-302)
long lp_tls_read(lp_tls_t *t, char *out, size_t cap);

/* Encrypts every byte of the batch (the caller then releases it). 0 or LP_ERROR. */
int lp_tls_write(lp_tls_t *t, const lp_wbatch_t *plain);
/* Queues a close_notify alert (once the handshake completed). */
void lp_tls_close_notify(lp_tls_t *t);
/* Ciphertext waiting to be sent, one batch at a time (NULL when none). */
lp_wbatch_t *lp_tls_out(lp_tls_t *t, lp_wbpool_t *pool);

/* Why the last call failed (OpenSSL's reason, or ours). */
const char *lp_tls_error(const lp_tls_t *t);

/* One fact about an established session, for Lua and the access log: a string of *len
 * bytes (not always NUL-terminated: ALPN), or NULL when unknown or not established. buf
 * (n bytes) holds the ones formatted here (the client subject). */
enum {
    LP_TLS_F_PROTOCOL = 1,    /* "TLSv1.3" */
    LP_TLS_F_CIPHER,          /* "TLS_AES_256_GCM_SHA384" */
    LP_TLS_F_SNI,             /* the server name the client asked for */
    LP_TLS_F_ALPN,            /* "http/1.1" */
    LP_TLS_F_RESUMED,         /* "1" or "0" */
    LP_TLS_F_CLIENT_VERIFIED, /* "1" or "0": a client certificate, verified */
    LP_TLS_F_CLIENT_SUBJECT,  /* RFC 2253 ("CN=alice,O=Example"), only when verified */
};
const char *lp_tls_fact(const lp_tls_t *t, int what, char *buf, size_t n, size_t *len);

#endif
