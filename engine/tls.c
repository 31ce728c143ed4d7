#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>
#include <arpa/inet.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "common.h"
#include "log.h"
#include "tls.h"

/* Mozilla's "intermediate" profile (v5.7) for TLS 1.2; TLS 1.3 keeps OpenSSL's suites. */
#define LP_TLS_CIPHERS                                                                             \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"       \
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
#define LP_TLS_GROUPS "X25519:prime256v1:secp384r1"

/* ---- the session-ticket key ring ----
 * Shared by every worker and every generation, so a ticket issued before a reload, or by
 * another worker, still resumes. The newest key encrypts; older ones only decrypt (every
 * resumption is given a fresh ticket anyway). Listeners with session_ticket_keys files use
 * those instead. Guarded by `lock`: taken once per ticket issued or checked, never while
 * holding another lock. bio_method and ex_index below are written once (uv_once) before
 * any connection exists. */
#define TICKET_KEYS     3
#define TICKET_ROTATE_S 3600

typedef struct {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    uint64_t created; /* seconds */
} ticket_key_t;

static struct {
    uv_mutex_t lock;
    ticket_key_t keys[TICKET_KEYS]; /* keys[0] is the newest */
    int n;
} ticket_ring;

static BIO_METHOD *bio_method;
static int ex_index = -1; /* SSL ex_data slot: the lp_tls_t */

static uint64_t now_s(void)
{
    return (uint64_t)time(NULL);
}

/* Under ticket_ring.lock. */
static int ticket_rotate(void)
{
    ticket_key_t k;
    if (RAND_bytes(k.name, sizeof(k.name)) != 1 || RAND_bytes(k.aes, sizeof(k.aes)) != 1 ||
        RAND_bytes(k.hmac, sizeof(k.hmac)) != 1)
        return -1;
    k.created = now_s();
    memmove(&ticket_ring.keys[1], &ticket_ring.keys[0], sizeof(ticket_key_t) * (TICKET_KEYS - 1));
    ticket_ring.keys[0] = k;
    if (ticket_ring.n < TICKET_KEYS)
        ticket_ring.n++;
    return 0;
}

/* ---- contexts ---- */

typedef struct {
    char *name; /* lower case; "*.example.com" for a wildcard */
    SSL_CTX *ctx;
} sni_entry_t;

struct lp_tls_server_s {
    int refs;       /* atomic: the config, and every connection accepted with it */
    SSL_CTX **ctxs; /* ctxs[0] is the default */
    size_t nctxs;
    sni_entry_t *names;
    size_t nnames;
    uint64_t handshake_timeout;
    int alpn_h2;               /* h2 is selected when the client offers it (listen[].http2) */
    ticket_key_t *ticket_keys; /* owned: from session_ticket_keys files; [0] encrypts */
    size_t nticket_keys;
};

struct lp_tls_client_s {
    int refs; /* atomic */
    SSL_CTX *ctx;
    char *sni;
    char *key; /* the settings as a string: pools keep apart what was set up differently */
    int verify;
};

struct lp_tls_s {
    SSL *ssl;
    BIO *bio;
    lp_bufpool_t *pool;
    lp_tls_server_t *srv; /* reference (server side) */
    lp_tls_client_t *cli; /* reference (client side) */
    void **session;       /* client side: the caller's slot for a resumable session */
    lp_buf_t *in;         /* ciphertext received, [ipos, ilen) not yet consumed */
    uint32_t ipos, ilen;
    lp_buf_t *out; /* ciphertext produced; [ostart, olen) not yet handed out */
    uint32_t ostart, olen;
    struct {
        lp_buf_t *b;
        uint32_t off, len;
    } * full; /* filled blocks waiting to be handed out (each holds a reference) */
    unsigned nfull, capfull;
    int16_t first_byte; /* the first byte received, -1: none yet */
    uint8_t eof;
    uint8_t established;
    uint8_t closed; /* close_notify queued */
    uint8_t failed; /* set_error was called */
    /* owned: why it failed (lp_tls_error), NULL: it did not. Made when it happens: an idle
     * connection keeps this struct, and most never fail. */
    char *err;
};

/* The key for a new ticket (enc) or the one named by a ticket, from the listener's own
 * keys when it has key files, else from the process-wide ring. 0 when none. */
static int ticket_key(SSL *ssl, const unsigned char name[16], int enc, ticket_key_t *k)
{
    const lp_tls_t *t = SSL_get_ex_data(ssl, ex_index);
    const lp_tls_server_t *srv = t ? t->srv : NULL;
    if (srv && srv->nticket_keys) {
        for (size_t i = 0; i < srv->nticket_keys; i++)
            if (enc || memcmp(name, srv->ticket_keys[i].name, 16) == 0) {
                *k = srv->ticket_keys[i];
                return 1;
            }
        return 0;
    }
    int found = 0;
    uv_mutex_lock(&ticket_ring.lock);
    if (enc) {
        if (!ticket_ring.n || now_s() - ticket_ring.keys[0].created >= TICKET_ROTATE_S)
            ticket_rotate();
        if ((found = ticket_ring.n > 0))
            *k = ticket_ring.keys[0];
    } else {
        for (int i = 0; i < ticket_ring.n && !found; i++)
            if (memcmp(name, ticket_ring.keys[i].name, 16) == 0) {
                *k = ticket_ring.keys[i];
                found = 1;
            }
    }
    uv_mutex_unlock(&ticket_ring.lock);
    return found;
}

static int ticket_cb(SSL *ssl, unsigned char name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                     EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    ticket_key_t k;
    if (!ticket_key(ssl, name, enc, &k))
        return enc ? -1 : 0; /* 0: unknown key, fall back to a full handshake */
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof(k.hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (enc) {
        memcpy(name, k.name, 16);
        if (RAND_bytes(iv, 16) != 1 ||
            EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) != 1)
            return -1;
    } else if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) != 1) {
        return -1;
    }
    if (EVP_MAC_CTX_set_params(hctx, params) != 1)
        return -1;
    /* 2 on decryption: accept and issue a fresh ticket. Always: a ticket used once is not
     * offered again (RFC 8446 C.4), and the ticket written right after the client's
     * Finished acknowledges it, so a client's request is not held by Nagle for our
     * delayed ACK (40 ms per resumed connection). */
    return enc ? 1 : 2;
}

static void set_error(lp_tls_t *t, const char *fallback)
{
    char err[160];
    unsigned long e = ERR_get_error();
    if (e) {
        ERR_error_string_n(e, err, sizeof(err));
        /* Keep the reason only: "error:0A000086:SSL routines::certificate verify failed". */
        const char *r = strstr(err, "::");
        if (r)
            memmove(err, r + 2, strlen(r + 2) + 1);
    } else {
        snprintf(err, sizeof(err), "%s", fallback);
    }
    if (t->ssl && SSL_get_verify_result(t->ssl) != X509_V_OK && !SSL_is_server(t->ssl)) {
        long v = SSL_get_verify_result(t->ssl);
        snprintf(err, sizeof(err), "certificate verify failed: %s",
                 X509_verify_cert_error_string(v));
    }
    ERR_clear_error();
    free(t->err);
    /* Out of memory: "failed" still shows (t->failed), with lp_tls_error's fallback text. */
    t->err = strdup(err);
    t->failed = 1;
}

static void ctx_error(char *err, size_t errlen, const char *what, const char *file)
{
    char reason[160] = "";
    unsigned long e = ERR_peek_last_error();
    if (e) {
        ERR_error_string_n(e, reason, sizeof(reason));
        const char *r = strstr(reason, "::");
        if (r)
            memmove(reason, r + 2, strlen(r + 2) + 1);
    }
    ERR_clear_error();
    if (file)
        snprintf(err, errlen, "%s \"%s\": %s", what, file, reason[0] ? reason : "failed");
    else
        snprintf(err, errlen, "%s: %s", what, reason[0] ? reason : "failed");
}

/* A certificate chain and its key into ctx (beside one of another key type, if any). A key
 * that does not match is reported naming both files, whether OpenSSL notices it as the key
 * loads (same type) or only in the check. */
static int load_cert_key(SSL_CTX *ctx, const char *cert, const char *key, char *err, size_t errlen)
{
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        ctx_error(err, errlen, "cannot load certificate", cert);
        return -1;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ERR_peek_last_error();
        if (ERR_GET_LIB(e) != ERR_LIB_X509 || ERR_GET_REASON(e) != X509_R_KEY_VALUES_MISMATCH) {
            ctx_error(err, errlen, "cannot load key", key);
            return -1;
        }
    } else if (SSL_CTX_check_private_key(ctx) == 1) {
        return 0;
    }
    ERR_clear_error();
    snprintf(err, errlen, "key \"%s\" does not match certificate \"%s\"", key, cert);
    return -1;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg)
{
    /* h2 when the listener serves it and the client offers it, else http/1.1; a client
     * that offers ALPN without either gets no_application_protocol (RFC 7301 3.2), as nginx
     * does. */
    const lp_tls_server_t *s = arg;
    for (unsigned i = 0; s && s->alpn_h2 && i < inlen;) {
        unsigned n = in[i];
        if (i + 1 + n > inlen)
            break;
        if (n == 2 && memcmp(in + i + 1, "h2", 2) == 0) {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + n;
    }
    for (unsigned i = 0; i < inlen;) {
        unsigned n = in[i];
        if (i + 1 + n > inlen)
            break;
        if (n == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + n;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static SSL_CTX *sni_lookup(const lp_tls_server_t *s, const char *name)
{
    char lower[256];
    size_t n = strlen(name);
    if (n == 0 || n >= sizeof(lower))
        return NULL;
    for (size_t i = 0; i <= n; i++)
        lower[i] = (char)tolower((unsigned char)name[i]);
    for (size_t i = 0; i < s->nnames; i++)
        if (strcmp(s->names[i].name, lower) == 0)
            return s->names[i].ctx;
    /* A wildcard covers exactly one label: "*.example.com" serves "a.example.com". */
    const char *dot = strchr(lower, '.');
    if (!dot || dot == lower)
        return NULL;
    for (size_t i = 0; i < s->nnames; i++)
        if (s->names[i].name[0] == '*' && strcmp(s->names[i].name + 1, dot) == 0)
            return s->names[i].ctx;
    return NULL;
}

static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    lp_tls_server_t *s = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name)
        return SSL_TLSEXT_ERR_OK; /* no SNI: the default certificate */
    SSL_CTX *ctx = sni_lookup(s, name);
    if (ctx && ctx != SSL_get_SSL_CTX(ssl))
        SSL_set_SSL_CTX(ssl, ctx);
    return SSL_TLSEXT_ERR_OK;
}

static int server_ctx_setup(SSL_CTX *ctx, const lp_tls_server_conf_t *conf, lp_tls_server_t *s,
                            char *err, size_t errlen)
{
    SSL_CTX_set_min_proto_version(ctx, conf->min_version ? conf->min_version : TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, 0);
    /* OpenSSL 3 refuses client-initiated renegotiation unless asked; we also refuse it
     * server-initiated and from the peer. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1);
    if (!SSL_CTX_set_cipher_list(ctx, conf->ciphers ? conf->ciphers : LP_TLS_CIPHERS)) {
        ctx_error(err, errlen, "ciphers", NULL);
        return -1;
    }
    if (conf->ciphersuites && !SSL_CTX_set_ciphersuites(ctx, conf->ciphersuites)) {
        ctx_error(err, errlen, "ciphersuites", NULL);
        return -1;
    }
    if (!SSL_CTX_set1_groups_list(ctx, LP_TLS_GROUPS)) {
        ctx_error(err, errlen, "groups", NULL);
        return -1;
    }
    SSL_CTX_set_dh_auto(ctx, 1);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, s);
    SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, s);
    static const unsigned char sid_ctx[] = "luaproxy";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
    if (conf->session_cache) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(ctx, conf->session_cache);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    SSL_CTX_set_timeout(ctx, (long)conf->session_timeout_s);
    if (conf->session_tickets) {
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    } else {
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx, conf->session_cache ? 1 : 0);
    }
    if (conf->client_ca) {
        if (SSL_CTX_load_verify_locations(ctx, conf->client_ca, NULL) != 1) {
            ctx_error(err, errlen, "client_ca", conf->client_ca);
            return -1;
        }
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(conf->client_ca);
        if (!names) {
            ctx_error(err, errlen, "client_ca", conf->client_ca);
            return -1;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        int mode = SSL_VERIFY_PEER;
        if (conf->verify_client == LP_TLS_VERIFY_REQUIRED)
            mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(ctx, mode, NULL);
        SSL_CTX_set_verify_depth(ctx, 4);
    }
    return 0;
}

/* The DNS names a certificate serves: its subjectAltName DNS entries, else its CN. */
static int cert_names(X509 *x, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int count = gens ? sk_GENERAL_NAME_num(gens) : 0;
    char **names = calloc((size_t)count + 1, sizeof(char *));
    if (!names) {
        GENERAL_NAMES_free(gens);
        return -1;
    }
    for (int i = 0; i < count; i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type != GEN_DNS)
            continue;
        const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
        int len = ASN1_STRING_length(g->d.dNSName);
        if (len <= 0 || memchr(d, 0, (size_t)len))
            continue;
        names[*n] = strndup((const char *)d, (size_t)len);
        if (names[*n])
            (*n)++;
    }
    GENERAL_NAMES_free(gens);
    if (*n == 0) {
        char cn[256];
        if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof(cn)) >
                0 &&
            (names[0] = strdup(cn)))
            *n = 1;
    }
    *out = names;
    return 0;
}

static X509 *read_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    return x;
}

static int add_name(lp_tls_server_t *s, const char *name, SSL_CTX *ctx)
{
    char lower[256];
    size_t n = strlen(name);
    if (n == 0 || n >= sizeof(lower))
        return 0;
    for (size_t i = 0; i <= n; i++)
        lower[i] = (char)tolower((unsigned char)name[i]);
    for (size_t i = 0; i < s->nnames; i++)
        if (strcmp(s->names[i].name, lower) == 0)
            return 0; /* the first certificate listed for a name wins */
    sni_entry_t *a = realloc(s->names, (s->nnames + 1) * sizeof(*a));
    if (!a)
        return -1;
    s->names = a;
    a[s->nnames].name = strdup(lower);
    a[s->nnames].ctx = ctx;
    if (!a[s->nnames].name)
        return -1;
    s->nnames++;
    return 0;
}

static int same_names(char **a, size_t na, char **b, size_t nb)
{
    if (na != nb)
        return 0;
    for (size_t i = 0; i < na; i++) {
        int found = 0;
        for (size_t j = 0; j < nb && !found; j++)
            found = strcasecmp(a[i], b[j]) == 0;
        if (!found)
            return 0;
    }
    return 1;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* Session-ticket keys shared with other instances (or nginx): 80-byte files holding a
 * 16-byte name, a 32-byte HMAC-SHA256 key and a 32-byte AES-256 key, nginx's layout. */
static int load_ticket_keys(lp_tls_server_t *s, char **files, size_t n, char *err, size_t errlen)
{
    if (!(s->ticket_keys = calloc(n, sizeof(*s->ticket_keys)))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char buf[81];
        FILE *f = fopen(files[i], "rb");
        size_t got = f ? fread(buf, 1, sizeof(buf), f) : 0;
        if (f)
            fclose(f);
        if (got != 80) {
            snprintf(err, errlen, "session ticket key \"%s\": %s", files[i],
                     f ? "must be exactly 80 bytes (openssl rand 80 > file)" : strerror(errno));
            OPENSSL_cleanse(buf, sizeof(buf));
            return -1;
        }
        ticket_key_t *k = &s->ticket_keys[s->nticket_keys++];
        memcpy(k->name, buf, 16);
        memcpy(k->hmac, buf + 16, 32);
        memcpy(k->aes, buf + 48, 32);
        OPENSSL_cleanse(buf, sizeof(buf));
    }
    return 0;
}

lp_tls_server_t *lp_tls_server_new(const lp_tls_server_conf_t *conf, char *err, size_t errlen)
{
    if (lp_tls_global_init()) {
        snprintf(err, errlen, "TLS initialisation failed");
        return NULL;
    }
    lp_tls_server_t *s = calloc(1, sizeof(*s));
    size_t nc = conf->ncerts;
    char ***names = calloc(nc ? nc : 1, sizeof(char **));
    size_t *nnames = calloc(nc ? nc : 1, sizeof(size_t));
    size_t *group = calloc(nc ? nc : 1, sizeof(size_t)); /* certificate -> ctx index */
    if (s)
        s->ctxs = calloc(nc ? nc : 1, sizeof(SSL_CTX *));
    if (!s || !names || !nnames || !group || !s->ctxs) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    s->refs = 1;
    s->handshake_timeout = conf->handshake_timeout;
    s->alpn_h2 = conf->alpn_h2;
    if (conf->nticket_key_files &&
        load_ticket_keys(s, conf->ticket_key_files, conf->nticket_key_files, err, errlen))
        goto fail;
    ERR_clear_error();
    for (size_t i = 0; i < nc; i++) {
        const lp_tls_cert_conf_t *cc = &conf->certs[i];
        X509 *x = read_cert(cc->cert);
        if (!x) {
            ctx_error(err, errlen, "cannot read certificate", cc->cert);
            goto fail;
        }
        int rc = 0;
        if (cc->nnames) {
            names[i] = calloc(cc->nnames, sizeof(char *));
            for (size_t j = 0; names[i] && j < cc->nnames; j++)
                if ((names[i][j] = strdup(cc->names[j])))
                    nnames[i]++;
            rc = names[i] ? 0 : -1;
        } else {
            rc = cert_names(x, &names[i], &nnames[i]);
        }
        X509_free(x);
        if (rc) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        /* Certificates for the same names share a context: an RSA and an ECDSA one side
         * by side, OpenSSL picking by what the client supports. */
        size_t g = s->nctxs;
        for (size_t j = 0; j < i && g == s->nctxs; j++)
            if (same_names(names[i], nnames[i], names[j], nnames[j]))
                g = group[j];
        group[i] = g;
        if (g == s->nctxs) {
            SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
            if (!ctx) {
                ctx_error(err, errlen, "SSL_CTX_new", NULL);
                goto fail;
            }
            s->ctxs[s->nctxs++] = ctx;
            if (server_ctx_setup(ctx, conf, s, err, errlen))
                goto fail;
        }
        SSL_CTX *ctx = s->ctxs[g];
        if (load_cert_key(ctx, cc->cert, cc->key, err, errlen))
            goto fail;
        for (size_t j = 0; j < nnames[i]; j++)
            if (add_name(s, names[i][j], ctx)) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
    }
    for (size_t i = 0; i < nc; i++)
        free_names(names[i], nnames[i]);
    free(names);
    free(nnames);
    free(group);
    return s;
fail:
    for (size_t i = 0; names && i < nc; i++)
        free_names(names[i], nnames[i]);
    free(names);
    free(nnames);
    free(group);
    if (s) {
        s->refs = 1;
        lp_tls_server_unref(s);
    }
    return NULL;
}

lp_tls_server_t *lp_tls_server_ref(lp_tls_server_t *s)
{
    __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
    return s;
}

void lp_tls_server_unref(lp_tls_server_t *s)
{
    if (!s || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL))
        return;
    for (size_t i = 0; i < s->nctxs; i++)
        SSL_CTX_free(s->ctxs[i]);
    free(s->ctxs);
    for (size_t i = 0; i < s->nnames; i++)
        free(s->names[i].name);
    free(s->names);
    if (s->ticket_keys)
        OPENSSL_cleanse(s->ticket_keys, s->nticket_keys * sizeof(*s->ticket_keys));
    free(s->ticket_keys);
    free(s);
}

uint64_t lp_tls_server_handshake_timeout(const lp_tls_server_t *s)
{
    return s->handshake_timeout;
}

void lp_tls_server_conf_free(lp_tls_server_conf_t *c)
{
    for (size_t i = 0; i < c->ncerts; i++) {
        free(c->certs[i].cert);
        free(c->certs[i].key);
        free_names(c->certs[i].names, c->certs[i].nnames);
    }
    free(c->certs);
    free(c->client_ca);
    free(c->ciphers);
    free(c->ciphersuites);
    free_names(c->ticket_key_files, c->nticket_key_files);
    memset(c, 0, sizeof(*c));
}

void lp_tls_client_conf_free(lp_tls_client_conf_t *c)
{
    free(c->ca);
    free(c->sni);
    free(c->cert);
    free(c->key);
    free(c->ciphers);
    memset(c, 0, sizeof(*c));
}

static int client_new_session(SSL *ssl, SSL_SESSION *sess)
{
    lp_tls_t *t = SSL_get_ex_data(ssl, ex_index);
    if (!t || !t->session)
        return 0;
    if (*t->session)
        SSL_SESSION_free(*t->session);
    *t->session = sess;
    return 1; /* we keep the reference */
}

lp_tls_client_t *lp_tls_client_new(const lp_tls_client_conf_t *conf, char *err, size_t errlen)
{
    if (lp_tls_global_init()) {
        snprintf(err, errlen, "TLS initialisation failed");
        return NULL;
    }
    lp_tls_client_t *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->refs = 1;
    c->verify = conf->verify;
    size_t klen = 64;
    const char *parts[] = {conf->ca, conf->sni, conf->cert, conf->key, conf->ciphers};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        klen += parts[i] ? strlen(parts[i]) : 0;
    if ((c->key = malloc(klen)))
        snprintf(c->key, klen, "%d|%d|%d|%s|%s|%s|%s|%s", conf->verify, conf->min_version,
                 conf->alpn_h2, conf->ca ? conf->ca : "", conf->sni ? conf->sni : "",
                 conf->cert ? conf->cert : "", conf->key ? conf->key : "",
                 conf->ciphers ? conf->ciphers : "");
    ERR_clear_error();
    SSL_CTX *ctx = c->ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || !c->key || (conf->sni && !(c->sni = strdup(conf->sni)))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(ctx, conf->min_version ? conf->min_version : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1);
    if (!SSL_CTX_set_cipher_list(ctx, conf->ciphers ? conf->ciphers : LP_TLS_CIPHERS)) {
        ctx_error(err, errlen, "ciphers", NULL);
        goto fail;
    }
    static const unsigned char alpn[] = "\x08http/1.1", alpn_h2[] = "\x02h2";
    if (conf->alpn_h2)
        SSL_CTX_set_alpn_protos(ctx, alpn_h2, sizeof(alpn_h2) - 1);
    else
        SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, client_new_session);
    if (conf->verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        int ok = conf->ca ? SSL_CTX_load_verify_locations(ctx, conf->ca, NULL)
                          : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1) {
            ctx_error(err, errlen, "cannot load CA", conf->ca ? conf->ca : "(system store)");
            goto fail;
        }
    }
    if (conf->cert && load_cert_key(ctx, conf->cert, conf->key, err, errlen))
        goto fail;
    return c;
fail:
    lp_tls_client_unref(c);
    return NULL;
}

lp_tls_client_t *lp_tls_client_ref(lp_tls_client_t *c)
{
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
    return c;
}

void lp_tls_client_unref(lp_tls_client_t *c)
{
    if (!c || __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL))
        return;
    SSL_CTX_free(c->ctx);
    free(c->sni);
    free(c->key);
    free(c);
}

const char *lp_tls_client_sni(const lp_tls_client_t *c)
{
    return c->sni;
}

const char *lp_tls_client_key(const lp_tls_client_t *c)
{
    return c->key;
}

char *lp_tls_peer_name(const lp_tls_client_t *c, const char *addr, const char *dns_name)
{
    if (c->sni)
        return strdup(c->sni);
    if (dns_name)
        return strdup(dns_name);
    const char *end;
    if (addr[0] == '[' && (end = strchr(addr, ']')))
        return strndup(addr + 1, (size_t)(end - addr - 1));
    end = strrchr(addr, ':');
    return strndup(addr, end ? (size_t)(end - addr) : strlen(addr));
}

/* ---- our BIO: ciphertext straight from and to pooled blocks ---- */

static int bio_read(BIO *b, char *out, int len)
{
    lp_tls_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    uint32_t avail = t->in ? t->ilen - t->ipos : 0;
    if (!avail) {
        if (t->eof)
            return 0;
        BIO_set_retry_read(b);
        return -1;
    }
    uint32_t n = (uint32_t)len < avail ? (uint32_t)len : avail;
    memcpy(out, t->in->data + t->ipos, n);
    t->ipos += n;
    return (int)n;
}

/* Hands the filled part of the output block to the queue of full blocks. */
static int out_seal_block(lp_tls_t *t)
{
    if (t->nfull == t->capfull) {
        unsigned cap = t->capfull ? t->capfull * 2 : 4;
        void *a = realloc(t->full, cap * sizeof(*t->full));
        if (!a)
            return -1;
        t->full = a;
        t->capfull = cap;
    }
    t->full[t->nfull].b = t->out; /* our reference moves to the queue */
    t->full[t->nfull].off = t->ostart;
    t->full[t->nfull].len = t->olen - t->ostart;
    t->nfull++;
    t->out = NULL;
    return 0;
}

static int bio_write(BIO *b, const char *in, int len)
{
    lp_tls_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t left = (size_t)len;
    while (left) {
        if (t->out && t->olen == t->out->cap && out_seal_block(t))
            return -1;
        if (!t->out) {
            t->out = lp_buf_get(t->pool, LP_BUF_SIZE);
            if (!t->out)
                return -1;
            t->ostart = t->olen = 0;
        }
        size_t room = t->out->cap - t->olen;
        size_t n = left < room ? left : room;
        memcpy(t->out->data + t->olen, in, n);
        t->olen += (uint32_t)n;
        in += n;
        left -= n;
    }
    return len;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    default:
        return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static int global_rc = -1;

static void global_init_once(void)
{
    if (uv_mutex_init(&ticket_ring.lock))
        return;
    bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "luaproxy");
    if (!bio_method || !BIO_meth_set_read(bio_method, bio_read) ||
        !BIO_meth_set_write(bio_method, bio_write) || !BIO_meth_set_ctrl(bio_method, bio_ctrl) ||
        !BIO_meth_set_create(bio_method, bio_create))
        return;
    ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    if (ex_index < 0)
        return;
    uv_mutex_lock(&ticket_ring.lock);
    global_rc = ticket_rotate();
    uv_mutex_unlock(&ticket_ring.lock);
}

int lp_tls_global_init(void)
{
    static uv_once_t once = UV_ONCE_INIT;
    uv_once(&once, global_init_once);
    return global_rc;
}

/* ---- one connection ---- */

static lp_tls_t *tls_new(SSL_CTX *ctx, lp_bufpool_t *pool)
{
    lp_tls_t *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->pool = pool;
    t->first_byte = -1;
    t->ssl = SSL_new(ctx);
    t->bio = BIO_new(bio_method);
    if (!t->ssl || !t->bio) {
        ERR_clear_error();
        SSL_free(t->ssl);
        BIO_free(t->bio);
        free(t);
        return NULL;
    }
    BIO_set_data(t->bio, t);
    SSL_set_bio(t->ssl, t->bio, t->bio); /* the SSL takes our one reference */
    SSL_set_ex_data(t->ssl, ex_index, t);
    return t;
}

lp_tls_t *lp_tls_accept(lp_tls_server_t *srv, lp_bufpool_t *pool)
{
    lp_tls_t *t = tls_new(srv->ctxs[0], pool);
    if (!t)
        return NULL;
    t->srv = lp_tls_server_ref(srv);
    SSL_set_accept_state(t->ssl);
    return t;
}

/* A client session's peer: the name sent as SNI (not an IP literal: RFC 6066) and, when
 * verifying, the name or address the certificate must show. 0, or -1 (out of memory). */
static int set_peer(SSL *ssl, const lp_tls_client_t *cli, const char *host)
{
    SSL_set_connect_state(ssl);
    const char *name = cli->sni ? cli->sni : host;
    struct in6_addr a6;
    int is_ip = inet_pton(AF_INET, name, &a6) == 1 || inet_pton(AF_INET6, name, &a6) == 1;
    if (!is_ip)
        SSL_set_tlsext_host_name(ssl, name);
    if (cli->verify && (is_ip ? !X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name)
                              : !SSL_set1_host(ssl, name))) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

struct ssl_st *lp_tls_client_ssl(lp_tls_client_t *cli, const char *host)
{
    SSL *ssl = SSL_new(cli->ctx);
    if (ssl && set_peer(ssl, cli, host)) {
        SSL_free(ssl);
        ssl = NULL;
    }
    return ssl;
}

lp_tls_t *lp_tls_connect(lp_tls_client_t *cli, const char *host, void **session, lp_bufpool_t *pool)
{
    lp_tls_t *t = tls_new(cli->ctx, pool);
    if (!t)
        return NULL;
    t->cli = lp_tls_client_ref(cli);
    t->session = session;
    if (set_peer(t->ssl, cli, host)) {
        lp_tls_free(t);
        return NULL;
    }
    if (session && *session)
        SSL_set_session(t->ssl, *session);
    return t;
}

void lp_tls_free(lp_tls_t *t)
{
    if (!t)
        return;
    SSL_set_ex_data(t->ssl, ex_index, NULL);
    if (t->established && !t->failed) {
        /* A session freed without a shutdown cannot be resumed: mark it done quietly (the
         * close_notify, when due, was sent by lp_tls_close_notify). */
        SSL_set_quiet_shutdown(t->ssl, 1);
        SSL_shutdown(t->ssl);
    }
    ERR_clear_error();
    SSL_free(t->ssl); /* frees the BIO */
    if (t->in)
        lp_buf_unref(t->in);
    if (t->out)
        lp_buf_unref(t->out);
    for (unsigned i = 0; i < t->nfull; i++)
        lp_buf_unref(t->full[i].b);
    free(t->full);
    free(t->err);
    lp_tls_server_unref(t->srv);
    lp_tls_client_unref(t->cli);
    free(t);
}

void lp_tls_session_free(void *session)
{
    SSL_SESSION_free(session);
}

uv_buf_t lp_tls_in_space(lp_tls_t *t)
{
    if (!t->in) {
        t->in = lp_buf_get(t->pool, LP_BUF_SIZE);
        if (!t->in)
            return uv_buf_init(NULL, 0);
        t->ipos = t->ilen = 0;
    } else if (t->ipos == t->ilen) {
        t->ipos = t->ilen = 0;
    } else if (t->in->cap - t->ilen < 4096 && t->ipos) {
        memmove(t->in->data, t->in->data + t->ipos, t->ilen - t->ipos);
        t->ilen -= t->ipos;
        t->ipos = 0;
    }
    return uv_buf_init(t->in->data + t->ilen, (unsigned)(t->in->cap - t->ilen));
}

void lp_tls_in_commit(lp_tls_t *t, size_t n)
{
    if (t->first_byte < 0 && n)
        t->first_byte = (unsigned char)t->in->data[t->ilen];
    t->ilen += (uint32_t)n;
}

void lp_tls_in_eof(lp_tls_t *t)
{
    t->eof = 1;
}

int lp_tls_in_full(const lp_tls_t *t)
{
    return t->in && t->ipos == 0 && t->ilen == t->in->cap;
}

void lp_tls_in_trim(lp_tls_t *t)
{
    if (t->in && t->ipos == t->ilen) {
        lp_buf_unref(t->in);
        t->in = NULL;
        t->ipos = t->ilen = 0;
    }
}

int lp_tls_first_byte(const lp_tls_t *t)
{
    return t->first_byte;
}

int lp_tls_handshake(lp_tls_t *t)
{
    if (t->established)
        return LP_OK;
    int rc = SSL_do_handshake(t->ssl);
    if (rc == 1) {
        t->established = 1;
        return LP_OK;
    }
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ)
        return LP_AGAIN;
    set_error(t, t->eof ? "connection closed during the handshake" : "handshake failed");
    return LP_ERROR;
}

int lp_tls_established(const lp_tls_t *t)
{
    return t->established;
}

int lp_tls_resumed(const lp_tls_t *t)
{
    return SSL_session_reused(t->ssl);
}

int lp_tls_started(const lp_tls_t *t)
{
    return t->established || SSL_get_state(t->ssl) != TLS_ST_BEFORE;
}

long lp_tls_read(lp_tls_t *t, char *out, size_t cap)
{
    /* Nothing new to decrypt: skip the SSL_read that would only say so. */
    if (!t->eof && !(t->in && t->ipos < t->ilen) && !SSL_has_pending(t->ssl))
        return 0;
    int n = SSL_read(t->ssl, out, cap > INT_MAX ? INT_MAX : (int)cap);
    if (n > 0)
        return n;
    switch (SSL_get_error(t->ssl, n)) {
    case SSL_ERROR_WANT_READ:
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        return LP_TLS_EOF;
    case SSL_ERROR_SYSCALL:
        if (t->eof) {
            /* EOF without close_notify: HTTP framing tells a truncated message. */
            ERR_clear_error();
            return LP_TLS_EOF;
        }
        /* fall through */
    default:
        set_error(t, "read failed");
        return LP_TLS_ERROR;
    }
}

int lp_tls_write(lp_tls_t *t, const lp_wbatch_t *plain)
{
    if (t->closed)
        return LP_ERROR;
    /* Small pieces (a head, a chunk size line) are gathered so that one record carries
     * them: a record per iovec would cost a MAC and a header each. */
    char stage[16384];
    size_t staged = 0;
    for (unsigned i = 0; i <= plain->n; i++) {
        const char *p = i < plain->n ? plain->bufs[i].base : NULL;
        size_t len = i < plain->n ? plain->bufs[i].len : 0;
        int direct = i == plain->n || len > sizeof(stage) - staged;
        if (direct && staged) {
            if (SSL_write(t->ssl, stage, (int)staged) <= 0)
                goto fail;
            staged = 0;
        }
        if (i == plain->n)
            break;
        if (len <= sizeof(stage) - staged) {
            memcpy(stage + staged, p, len);
            staged += len;
            continue;
        }
        while (len) {
            int n = len > INT_MAX / 2 ? INT_MAX / 2 : (int)len;
            if (SSL_write(t->ssl, p, n) <= 0)
                goto fail;
            p += n;
            len -= (size_t)n;
        }
    }
    return 0;
fail:
    set_error(t, "write failed");
    return LP_ERROR;
}

void lp_tls_close_notify(lp_tls_t *t)
{
    if (t->closed || !t->established)
        return;
    t->closed = 1;
    if (SSL_shutdown(t->ssl) < 0)
        ERR_clear_error();
}

lp_wbatch_t *lp_tls_out(lp_tls_t *t, lp_wbpool_t *pool)
{
    int partial = t->out && t->olen > t->ostart;
    if (!t->nfull && !partial)
        return NULL;
    lp_wbatch_t *wb = lp_wbatch_get(pool);
    if (!wb)
        return NULL;
    unsigned i = 0;
    for (; i < t->nfull && lp_wbatch_room(wb, 1, 0); i++) {
        lp_wbatch_add(wb, t->full[i].b->data + t->full[i].off, t->full[i].len, t->full[i].b);
        lp_buf_unref(t->full[i].b);
    }
    if (i) { /* t->full is NULL until a block was sealed: no arithmetic on it before */
        memmove(t->full, t->full + i, (t->nfull - i) * sizeof(*t->full));
        t->nfull -= i;
    }
    if (!t->nfull && partial && lp_wbatch_room(wb, 1, 0)) {
        lp_wbatch_add(wb, t->out->data + t->ostart, t->olen - t->ostart, t->out);
        t->ostart = t->olen;
        /* The batch pins the block now; keeping it would hold 64 KiB per idle connection. */
        lp_buf_unref(t->out);
        t->out = NULL;
    }
    return wb;
}

const char *lp_tls_error(const lp_tls_t *t)
{
    return t->err ? t->err : "unknown error";
}

static int client_verified(const lp_tls_t *t)
{
    return SSL_get0_peer_certificate(t->ssl) && SSL_get_verify_result(t->ssl) == X509_V_OK;
}

/* The verified client certificate's subject, RFC 2253 ("CN=alice,O=Example"), into buf. */
static size_t client_subject(const lp_tls_t *t, char *buf, size_t n)
{
    X509 *peer = SSL_get0_peer_certificate(t->ssl);
    if (!n || !peer || SSL_get_verify_result(t->ssl) != X509_V_OK)
        return 0;
    BIO *m = BIO_new(BIO_s_mem());
    if (!m)
        return 0;
    X509_NAME_print_ex(m, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253);
    int len = BIO_read(m, buf, (int)(n - 1));
    BIO_free(m);
    if (len <= 0)
        return 0;
    buf[len] = 0;
    return (size_t)len;
}

const char *lp_tls_fact(const lp_tls_t *t, int what, char *buf, size_t n, size_t *len)
{
    const char *v = NULL;
    *len = 0;
    if (!t->established)
        return NULL;
    switch (what) {
    case LP_TLS_F_PROTOCOL:
        v = SSL_get_version(t->ssl);
        break;
    case LP_TLS_F_CIPHER:
        v = SSL_get_cipher_name(t->ssl);
        break;
    case LP_TLS_F_SNI:
        v = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
        break;
    case LP_TLS_F_ALPN: {
        const unsigned char *alpn = NULL;
        unsigned alen = 0;
        SSL_get0_alpn_selected(t->ssl, &alpn, &alen);
        *len = alen;
        return alen ? (const char *)alpn : NULL; /* not NUL-terminated */
    }
    case LP_TLS_F_RESUMED:
        v = SSL_session_reused(t->ssl) ? "1" : "0";
        break;
    case LP_TLS_F_CLIENT_VERIFIED:
        v = client_verified(t) ? "1" : "0";
        break;
    case LP_TLS_F_CLIENT_SUBJECT:
        return (*len = client_subject(t, buf, n)) ? buf : NULL;
    }
    *len = v ? strlen(v) : 0;
    return v;
}
