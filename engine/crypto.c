/* Cryptography for the authentication plugins (basic_auth, jwt; docs/plugins/): base64,
 * digests, constant-time comparison, password hashes (bcrypt and SHA-crypt through
 * libxcrypt, apr1/MD5-crypt and {SHA} written here over OpenSSL), HMAC and public-key
 * signature checks (RSA PKCS#1 v1.5 and PSS, ECDSA P-256/P-384, Ed25519) through OpenSSL.
 *
 * Why C and not FFI straight to libcrypto: OpenSSL 3's prototypes use opaque types, macros
 * and OSSL_PARAM arrays that are awkward and easy to get wrong from LuaJIT; a JWS ECDSA
 * signature must be rebuilt as DER; and every failure path must leave the thread's OpenSSL
 * error queue empty, or the engine's TLS code on the same thread would read a stale error.
 * Here each call does one whole job and returns a plain number.
 *
 * Nothing here keeps state between calls but the objects Lua owns (a keyed HMAC, a public
 * key), each used by one VM (one thread) only. */
#include <crypt.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
struct lp_req_s; /* named by lua_api.h; this file needs nothing else of the engine */
#include "lua_api.h"

/* ---- base64 ---- */

static const char B64_STD[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* One table for both alphabets: '+' '/' and '-' '_' all decode; the caller's alphabet is
 * checked apart (a token mixing them is refused). 64: not a base64 character. */
static unsigned char b64_value(unsigned char c, int url)
{
    if (c >= 'A' && c <= 'Z')
        return (unsigned char)(c - 'A');
    if (c >= 'a' && c <= 'z')
        return (unsigned char)(c - 'a' + 26);
    if (c >= '0' && c <= '9')
        return (unsigned char)(c - '0' + 52);
    if (url ? c == '-' : c == '+')
        return 62;
    if (url ? c == '_' : c == '/')
        return 63;
    return 64;
}

long lp_ffi_b64_decode(const char *in, size_t len, int url, char *out, size_t outlen)
{
    const unsigned char *s = (const unsigned char *)in;
    if (!url) {
        /* Standard base64 with its padding (RFC 4648 section 4); padding may be missing. */
        if (len % 4 == 0 && len >= 1 && s[len - 1] == '=')
            len--;
        if (len % 4 == 3 && len >= 1 && s[len - 1] == '=')
            len--;
    }
    /* base64url in JWS has no padding (RFC 7515 section 2): a '=' is refused below. */
    if (len % 4 == 1)
        return LP_FFI_EINVAL;
    size_t need = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
    if (need > outlen)
        return LP_FFI_ENOSPACE;
    size_t o = 0;
    unsigned int acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char v = b64_value(s[i], url);
        if (v == 64)
            return LP_FFI_EINVAL;
        acc = (acc << 6) | v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    /* Bits left over must be zero: otherwise two encodings would decode the same. */
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
        return LP_FFI_EINVAL;
    return (long)o;
}

static size_t b64_encode_std(const unsigned char *in, size_t len, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        unsigned int v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = B64_STD[v >> 18];
        out[o++] = B64_STD[(v >> 12) & 63];
        out[o++] = B64_STD[(v >> 6) & 63];
        out[o++] = B64_STD[v & 63];
    }
    if (i < len) {
        unsigned int v = (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0);
        out[o++] = B64_STD[v >> 18];
        out[o++] = B64_STD[(v >> 12) & 63];
        out[o++] = i + 1 < len ? B64_STD[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    return o;
}

/* ---- digests and comparison ---- */

/* Digests fetched once for the process (OpenSSL 3 looks an algorithm up at every use of
 * EVP_sha256() & co.: a few microseconds per signature check). Shared by every thread:
 * written once under pthread_once, then only read (an EVP_MD is safe to share). */
static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static EVP_MD *md_fetched[5]; /* owns one reference each, for the process's life */

static void md_fetch(void)
{
    static const char *const names[5] = {"SHA1", "SHA256", "SHA384", "SHA512", "MD5"};
    for (int i = 0; i < 5; i++)
        md_fetched[i] = EVP_MD_fetch(NULL, names[i], NULL);
    ERR_clear_error();
}

static const EVP_MD *md_of(int md)
{
    /* 5: MD5, for MD5-crypt only (never a JWS or HMAC digest: callers check md). */
    int i = md == 1 ? 0 : md == 256 ? 1 : md == 384 ? 2 : md == 512 ? 3 : md == 5 ? 4 : -1;
    if (i < 0)
        return NULL;
    pthread_once(&md_once, md_fetch);
    return md_fetched[i];
}

int lp_ffi_digest(int md, const char *data, size_t len, char *out)
{
    if (md == 5)
        return LP_FFI_EINVAL; /* MD5 is MD5-crypt's alone */
    const EVP_MD *m = md_of(md);
    unsigned int n = 0;
    if (!m || !EVP_Digest(data, len, (unsigned char *)out, &n, m, NULL)) {
        ERR_clear_error();
        return LP_FFI_EINVAL;
    }
    return (int)n;
}

int lp_ffi_ct_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    /* Compares digests, so the time depends on neither the position of the first difference
     * nor on whether the lengths differ (only on the lengths themselves, which hashing
     * reads). */
    unsigned char da[32], db[32];
    if (lp_ffi_digest(256, a, alen, (char *)da) != 32 ||
        lp_ffi_digest(256, b, blen, (char *)db) != 32)
        return 0;
    return CRYPTO_memcmp(da, db, sizeof(da)) == 0 && alen == blen;
}

/* ---- password hashes ---- */

static const char ITOA64[] = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static size_t to64(char *out, unsigned long v, int n)
{
    size_t o = 0;
    while (n-- > 0) {
        out[o++] = ITOA64[v & 0x3f];
        v >>= 6;
    }
    return o;
}

static int md5_update(EVP_MD_CTX *c, const void *p, size_t n)
{
    return EVP_DigestUpdate(c, p, n);
}

/* MD5-crypt (Poul-Henning Kamp's algorithm, FreeBSD "$1$", Apache "$apr1$": the same steps,
 * another magic string), written from its description. Fills out (at least 64 bytes) with
 * the whole hash string for the salt taken from `setting`; returns its length, 0 on error. */
static size_t md5_crypt(const char *pw, size_t pwlen, const char *magic, const char *setting,
                        size_t slen, char *out)
{
    size_t mlen = strlen(magic);
    const char *salt = setting + mlen;
    size_t saltlen = 0;
    while (saltlen < 8 && mlen + saltlen < slen && salt[saltlen] != '$')
        saltlen++;
    unsigned char fin[16];
    unsigned int n = 0;
    size_t o = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new(), *alt = EVP_MD_CTX_new();
    int ok = c && alt;
    /* The alternate sum: pw, salt, pw. */
    ok = ok && EVP_DigestInit_ex(alt, md_of(5), NULL) && md5_update(alt, pw, pwlen) &&
         md5_update(alt, salt, saltlen) && md5_update(alt, pw, pwlen) &&
         EVP_DigestFinal_ex(alt, fin, &n);
    ok = ok && EVP_DigestInit_ex(c, md_of(5), NULL) && md5_update(c, pw, pwlen) &&
         md5_update(c, magic, mlen) && md5_update(c, salt, saltlen);
    for (size_t pl = pwlen; ok && pl > 0; pl -= pl > 16 ? 16 : pl)
        ok = md5_update(c, fin, pl > 16 ? 16 : pl);
    memset(fin, 0, sizeof(fin));
    /* One byte per bit of the length: a zero byte for a set bit, the first character of the
     * password for a clear one (the original's quirk, kept for compatibility). */
    for (size_t i = pwlen; ok && i; i >>= 1)
        ok = (i & 1) ? md5_update(c, fin, 1) : md5_update(c, pwlen ? pw : "", 1);
    ok = ok && EVP_DigestFinal_ex(c, fin, &n);
    /* 1000 rounds, to slow guessing down. */
    for (int i = 0; ok && i < 1000; i++) {
        ok = EVP_DigestInit_ex(c, md_of(5), NULL);
        ok = ok && ((i & 1) ? md5_update(c, pw, pwlen) : md5_update(c, fin, 16));
        if (ok && i % 3)
            ok = md5_update(c, salt, saltlen);
        if (ok && i % 7)
            ok = md5_update(c, pw, pwlen);
        ok = ok && ((i & 1) ? md5_update(c, fin, 16) : md5_update(c, pw, pwlen));
        ok = ok && EVP_DigestFinal_ex(c, fin, &n);
    }
    EVP_MD_CTX_free(c);
    EVP_MD_CTX_free(alt);
    if (!ok) {
        ERR_clear_error();
        return 0;
    }
    memcpy(out, magic, mlen);
    o = mlen;
    memcpy(out + o, salt, saltlen);
    o += saltlen;
    out[o++] = '$';
    o += to64(out + o, (unsigned long)fin[0] << 16 | (unsigned long)fin[6] << 8 | fin[12], 4);
    o += to64(out + o, (unsigned long)fin[1] << 16 | (unsigned long)fin[7] << 8 | fin[13], 4);
    o += to64(out + o, (unsigned long)fin[2] << 16 | (unsigned long)fin[8] << 8 | fin[14], 4);
    o += to64(out + o, (unsigned long)fin[3] << 16 | (unsigned long)fin[9] << 8 | fin[15], 4);
    o += to64(out + o, (unsigned long)fin[4] << 16 | (unsigned long)fin[10] << 8 | fin[5], 4);
    o += to64(out + o, fin[11], 2);
    out[o] = '\0';
    return o;
}

static int has_prefix(const char *s, size_t len, const char *p)
{
    size_t n = strlen(p);
    return len >= n && memcmp(s, p, n) == 0;
}

int lp_ffi_passwd_verify(const char *pw, size_t pwlen, const char *hash, size_t hlen)
{
    if (has_prefix(hash, hlen, "$apr1$") || has_prefix(hash, hlen, "$1$")) {
        char out[64];
        const char *magic = hash[1] == 'a' ? "$apr1$" : "$1$";
        size_t n = md5_crypt(pw, pwlen, magic, hash, hlen, out);
        return n > 0 && n == hlen && CRYPTO_memcmp(out, hash, n) == 0;
    }
    if (has_prefix(hash, hlen, "{SHA}")) {
        unsigned char d[20];
        char enc[32];
        if (lp_ffi_digest(1, pw, pwlen, (char *)d) != 20)
            return LP_FFI_EINVAL;
        size_t n = b64_encode_std(d, sizeof(d), enc);
        return n == hlen - 5 && CRYPTO_memcmp(enc, hash + 5, n) == 0;
    }
    if (has_prefix(hash, hlen, "$2y$") || has_prefix(hash, hlen, "$2b$") ||
        has_prefix(hash, hlen, "$2a$") || has_prefix(hash, hlen, "$5$") ||
        has_prefix(hash, hlen, "$6$")) {
        /* crypt_rn wants C strings: a password with a NUL byte cannot match any hash. */
        if (memchr(pw, 0, pwlen) || hlen >= CRYPT_OUTPUT_SIZE)
            return 0;
        struct crypt_data *cd = calloc(1, sizeof(*cd)); /* ~32 KiB: not on the stack */
        char *p = malloc(pwlen + 1), *h = malloc(hlen + 1);
        int rc = LP_FFI_ENOSPACE;
        if (cd && p && h) {
            memcpy(p, pw, pwlen);
            p[pwlen] = '\0';
            memcpy(h, hash, hlen);
            h[hlen] = '\0';
            const char *out = crypt_rn(p, h, cd, (int)sizeof(*cd));
            /* NULL or a "*0"-style failure token: the hash is malformed. */
            if (!out || out[0] == '*')
                rc = LP_FFI_EINVAL;
            else
                rc = strlen(out) == hlen && CRYPTO_memcmp(out, hash, hlen) == 0;
            OPENSSL_cleanse(p, pwlen);
        }
        free(cd);
        free(p);
        free(h);
        return rc;
    }
    return LP_FFI_EINVAL;
}

/* ---- HMAC ---- */

/* A keyed HMAC, made once per key (a config load, a JWKS refresh) and used for every token. */
typedef struct {
    EVP_MAC_CTX *ctx; /* owns; keyed: each use re-initialises it with the key it holds */
    size_t outlen;    /* bytes of the MAC (32, 48 or 64) */
} lp_hmac_t;

void *lp_ffi_hmac_new(int md, const char *key, size_t klen)
{
    const EVP_MD *m = md_of(md);
    if (!m || md == 1 || md == 5)
        return NULL;
    lp_hmac_t *h = calloc(1, sizeof(*h));
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (h && mac)
        h->ctx = EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac); /* the context holds its own reference */
    if (!h || !h->ctx) {
        free(h);
        ERR_clear_error();
        return NULL;
    }
    OSSL_PARAM params[2] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)EVP_MD_get0_name(m), 0),
        OSSL_PARAM_construct_end(),
    };
    /* An empty key is legal HMAC but OpenSSL wants a pointer: give it one. */
    static const unsigned char empty[1] = {0};
    if (!EVP_MAC_init(h->ctx, klen ? (const unsigned char *)key : empty, klen, params)) {
        EVP_MAC_CTX_free(h->ctx);
        free(h);
        ERR_clear_error();
        return NULL;
    }
    h->outlen = EVP_MAC_CTX_get_mac_size(h->ctx);
    return h;
}

void lp_ffi_hmac_free(void *p)
{
    lp_hmac_t *h = p;
    if (!h)
        return;
    EVP_MAC_CTX_free(h->ctx);
    free(h);
}

int lp_ffi_hmac_verify(void *p, const char *data, size_t dlen, const char *sig, size_t siglen)
{
    lp_hmac_t *h = p;
    unsigned char out[EVP_MAX_MD_SIZE];
    size_t n = 0;
    /* A NULL key re-initialises with the key already set (OpenSSL 3 HMAC). */
    if (!EVP_MAC_init(h->ctx, NULL, 0, NULL) ||
        !EVP_MAC_update(h->ctx, (const unsigned char *)data, dlen) ||
        !EVP_MAC_final(h->ctx, out, &n, sizeof(out))) {
        ERR_clear_error();
        return LP_FFI_EINVAL;
    }
    return siglen == n && n == h->outlen && CRYPTO_memcmp(out, sig, n) == 0;
}

/* ---- public keys ---- */

static void set_err(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    if (!err || !errlen)
        return;
    if (e) {
        char buf[160];
        ERR_error_string_n(e, buf, sizeof(buf));
        snprintf(err, errlen, "%s (%s)", what, buf);
    } else {
        snprintf(err, errlen, "%s", what);
    }
    ERR_clear_error();
}

void *lp_ffi_pkey_pem(const char *pem, size_t len, char *err, size_t errlen)
{
    EVP_PKEY *k = NULL;
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    if (b)
        k = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    if (b && !k) {
        /* A certificate: its public key. */
        ERR_clear_error();
        (void)BIO_reset(b);
        X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
        if (x) {
            k = X509_get_pubkey(x);
            X509_free(x);
        }
    }
    if (b && !k) {
        /* A private key (a test setup, or the signer's own file): verification needs only
         * its public half. No passphrase callback: an encrypted key fails here. */
        ERR_clear_error();
        (void)BIO_reset(b);
        k = PEM_read_bio_PrivateKey(b, NULL, NULL, (void *)"");
    }
    BIO_free(b);
    if (!k)
        set_err(err, errlen, "no PEM public key, certificate or private key");
    ERR_clear_error();
    return k;
}

static EVP_PKEY *from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    EVP_PKEY *k = NULL;
    OSSL_PARAM *params = bld ? OSSL_PARAM_BLD_to_param(bld) : NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &k, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        k = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    if (k) {
        /* Refuse what is not a valid public key (an EC point off its curve). */
        EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, k, NULL);
        if (!c || EVP_PKEY_public_check(c) != 1) {
            EVP_PKEY_free(k);
            k = NULL;
        }
        EVP_PKEY_CTX_free(c);
    }
    ERR_clear_error();
    return k;
}

void *lp_ffi_pkey_rsa(const char *n, size_t nlen, const char *e, size_t elen)
{
    BIGNUM *bn = BN_bin2bn((const unsigned char *)n, (int)nlen, NULL);
    BIGNUM *be = BN_bin2bn((const unsigned char *)e, (int)elen, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    EVP_PKEY *k = NULL;
    if (bn && be && bld && nlen >= 64 && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
        k = from_params("RSA", bld);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    ERR_clear_error();
    return k;
}

void *lp_ffi_pkey_ec(int bits, const char *x, size_t xlen, const char *y, size_t ylen)
{
    size_t sz = bits == 256 ? 32 : bits == 384 ? 48 : 0;
    if (!sz || xlen != sz || ylen != sz)
        return NULL;
    unsigned char pt[1 + 2 * 48];
    pt[0] = 0x04; /* uncompressed point */
    memcpy(pt + 1, x, sz);
    memcpy(pt + 1 + sz, y, sz);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    EVP_PKEY *k = NULL;
    if (bld &&
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME,
                                        bits == 256 ? "prime256v1" : "secp384r1", 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, 1 + 2 * sz))
        k = from_params("EC", bld);
    OSSL_PARAM_BLD_free(bld);
    return k;
}

void *lp_ffi_pkey_ed25519(const char *x, size_t xlen)
{
    if (xlen != 32)
        return NULL;
    EVP_PKEY *k =
        EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, (const unsigned char *)x, xlen);
    ERR_clear_error();
    return k;
}

void lp_ffi_pkey_free(void *k)
{
    EVP_PKEY_free(k);
}

int lp_ffi_pkey_kind(void *p)
{
    EVP_PKEY *k = p;
    switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_RSA:
        return EVP_PKEY_get_bits(k) >= 1024 ? LP_FFI_PKEY_RSA : 0;
    case EVP_PKEY_EC: {
        char name[64];
        size_t n = 0;
        if (!EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof(name),
                                            &n)) {
            ERR_clear_error();
            return 0;
        }
        if (strcmp(name, "prime256v1") == 0 || strcmp(name, "P-256") == 0)
            return LP_FFI_PKEY_P256;
        if (strcmp(name, "secp384r1") == 0 || strcmp(name, "P-384") == 0)
            return LP_FFI_PKEY_P384;
        return 0;
    }
    case EVP_PKEY_ED25519:
        return LP_FFI_PKEY_ED25519;
    default:
        return 0;
    }
}

/* A JWS ECDSA signature is r || s, each the curve's size (RFC 7518 section 3.4); OpenSSL
 * wants DER. Returns the DER length in der (at least 2 * sz + 16 bytes), 0 on error. */
static int ec_raw_to_der(const unsigned char *sig, size_t sz, unsigned char *der)
{
    ECDSA_SIG *s = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)sz, NULL), *ss = BN_bin2bn(sig + sz, (int)sz, NULL);
    int n = 0;
    if (s && r && ss && ECDSA_SIG_set0(s, r, ss)) {
        r = ss = NULL; /* owned by s now */
        unsigned char *p = der;
        n = i2d_ECDSA_SIG(s, &p);
    }
    BN_free(r);
    BN_free(ss);
    ECDSA_SIG_free(s);
    return n > 0 ? n : 0;
}

int lp_ffi_pkey_verify(void *p, int md, int pss, const char *data, size_t dlen, const char *sig,
                       size_t siglen)
{
    EVP_PKEY *k = p;
    int kind = lp_ffi_pkey_kind(k);
    const EVP_MD *m = kind == LP_FFI_PKEY_ED25519 ? NULL : md_of(md);
    if (kind != LP_FFI_PKEY_ED25519 && (!m || md == 1 || md == 5))
        return LP_FFI_EINVAL;
    unsigned char der[2 * 48 + 16];
    const unsigned char *s = (const unsigned char *)sig;
    if (kind == LP_FFI_PKEY_P256 || kind == LP_FFI_PKEY_P384) {
        size_t sz = kind == LP_FFI_PKEY_P256 ? 32 : 48;
        if (siglen != 2 * sz)
            return 0;
        int n = ec_raw_to_der(s, sz, der);
        if (!n) {
            ERR_clear_error();
            return 0;
        }
        s = der;
        siglen = (size_t)n;
    }
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int rc = 0;
    if (c && EVP_DigestVerifyInit(c, &pctx, m, NULL, k) == 1) {
        int ok = 1;
        if (pss && kind == LP_FFI_PKEY_RSA)
            ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
                 EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0;
        rc = ok && EVP_DigestVerify(c, s, siglen, (const unsigned char *)data, dlen) == 1;
    }
    EVP_MD_CTX_free(c);
    ERR_clear_error();
    return rc;
}
