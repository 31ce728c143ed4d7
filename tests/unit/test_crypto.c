/* engine/crypto.c: base64 and base64url edge cases, digests and HMAC against published
 * vectors (FIPS 180, RFC 4231), password hashes made by other implementations (openssl
 * passwd, OpenBSD's bcrypt vector), Ed25519 against RFC 8032, and keys that must be refused
 * (an EC point off its curve, a tiny RSA modulus, junk PEM). */
#include <stdio.h>
#include <string.h>
#include "lp_test.h"
#include "proxy-t.h"
#include "lua_api.h"

#define S(x) (x), strlen(x)

static size_t unhex(const char *hex, char *out)
{
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned int v = 0;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (char)v;
    }
    return n;
}

static void base64_edges(void)
{
    char out[64];
    CHECK_EQ_INT(lp_ffi_b64_decode(S("YWxhZGRpbjpvcGVuc2VzYW1l"), 0, out, sizeof(out)), 18);
    CHECK(memcmp(out, "aladdin:opensesame", 18) == 0);
    CHECK_EQ_INT(lp_ffi_b64_decode(S("YQ=="), 0, out, sizeof(out)), 1);
    CHECK_EQ_INT(lp_ffi_b64_decode(S("YQ"), 0, out, sizeof(out)), 1);
    CHECK_EQ_INT(lp_ffi_b64_decode(S("YWI="), 0, out, sizeof(out)), 2);
    CHECK_EQ_INT(lp_ffi_b64_decode(S(""), 0, out, sizeof(out)), 0);
    CHECK_EQ_INT(lp_ffi_b64_decode(S("Y"), 0, out, sizeof(out)), LP_FFI_EINVAL);
    CHECK_EQ_INT(lp_ffi_b64_decode(S("YR=="), 0, out, sizeof(out)), LP_FFI_EINVAL); /* bits left */
    CHECK_EQ_INT(lp_ffi_b64_decode(S("Y Q=="), 0, out, sizeof(out)), LP_FFI_EINVAL);
    CHECK_EQ_INT(lp_ffi_b64_decode(S("-_8"), 0, out, sizeof(out)), LP_FFI_EINVAL);
    /* base64url: its alphabet, no padding */
    CHECK_EQ_INT(lp_ffi_b64_decode(S("-_8"), 1, out, sizeof(out)), 2);
    CHECK_EQ_INT((unsigned char)out[0], 0xfb);
    CHECK_EQ_INT((unsigned char)out[1], 0xff);
    CHECK_EQ_INT(lp_ffi_b64_decode(S("YQ=="), 1, out, sizeof(out)), LP_FFI_EINVAL);
    CHECK_EQ_INT(lp_ffi_b64_decode(S("+/8"), 1, out, sizeof(out)), LP_FFI_EINVAL);
    CHECK_EQ_INT(lp_ffi_b64_decode(S("YWxhZGRpbg"), 1, out, 5), LP_FFI_ENOSPACE);
}

static void digests_and_hmac(void)
{
    char d[64], want[64];
    CHECK_EQ_INT(lp_ffi_digest(256, S("abc"), d), 32);
    unhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", want);
    CHECK(memcmp(d, want, 32) == 0);
    CHECK_EQ_INT(lp_ffi_digest(7, S("abc"), d), LP_FFI_EINVAL);
    /* RFC 4231, test case 2 */
    void *h = lp_ffi_hmac_new(256, S("Jefe"));
    REQUIRE(h != NULL);
    size_t n = unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", want);
    CHECK_EQ_INT(lp_ffi_hmac_verify(h, S("what do ya want for nothing?"), want, n), 1);
    /* the same context again (re-initialised with its key), then wrong data, short MAC */
    CHECK_EQ_INT(lp_ffi_hmac_verify(h, S("what do ya want for nothing?"), want, n), 1);
    CHECK_EQ_INT(lp_ffi_hmac_verify(h, S("what do ya want for nothing!"), want, n), 0);
    CHECK_EQ_INT(lp_ffi_hmac_verify(h, S("what do ya want for nothing?"), want, n - 1), 0);
    lp_ffi_hmac_free(h);
    CHECK(lp_ffi_hmac_new(1, S("k")) == NULL);
    h = lp_ffi_hmac_new(512, "", 0); /* an empty key is legal HMAC */
    CHECK(h != NULL);
    lp_ffi_hmac_free(h);
    CHECK_EQ_INT(lp_ffi_ct_equal(S("same"), S("same")), 1);
    CHECK_EQ_INT(lp_ffi_ct_equal(S("same"), S("sane")), 0);
    CHECK_EQ_INT(lp_ffi_ct_equal(S("same"), S("same!")), 0);
    CHECK_EQ_INT(lp_ffi_ct_equal("", 0, "", 0), 1);
}

static void password_hashes(void)
{
    static const struct {
        const char *pw, *hash;
    } good[] = {
        {"pa:ss w\xc3\xb6rd", "$apr1$abcdefgh$heejsnde5T6g6eroYlT2k/"}, /* openssl passwd -apr1 */
        {"password", "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"},             /* openssl passwd -1 */
        {"Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"},
        {"Hello world!", "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI"
                         "68u4OTLiBFdcbYEdFCoEOfaS35inz1"},
        {"U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"}, /* OpenBSD */
        {"hello", "{SHA}qvTGHdzF6KLavt4PO0gs2a6pQ00="},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (lp_ffi_passwd_verify(S(good[i].pw), S(good[i].hash)) != 1)
            CHECK_STR(good[i].hash, "(verified)");
        char wrong[64];
        snprintf(wrong, sizeof(wrong), "%sx", good[i].pw);
        CHECK_EQ_INT(lp_ffi_passwd_verify(S(wrong), S(good[i].hash)), 0);
    }
    CHECK_EQ_INT(lp_ffi_passwd_verify(S("x"), S("plain")), LP_FFI_EINVAL);
    CHECK_EQ_INT(lp_ffi_passwd_verify(S("x"), S("$2b$05$short")), LP_FFI_EINVAL);
    /* A NUL in the password never matches a crypt hash. */
    CHECK_EQ_INT(
        lp_ffi_passwd_verify("U*U\0x", 5,
                             S("$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW")),
        0);
    /* A truncated apr1 hash does not match. */
    CHECK_EQ_INT(lp_ffi_passwd_verify(S("pa:ss w\xc3\xb6rd"), S("$apr1$abcdefgh$heejsnde5T6g6e")),
                 0);
}

static void ed25519_rfc8032(void)
{
    char pub[32], sig[64];
    unhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", pub);
    unhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
          "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
          sig);
    void *k = lp_ffi_pkey_ed25519(pub, 32);
    REQUIRE(k != NULL);
    CHECK_EQ_INT(lp_ffi_pkey_kind(k), LP_FFI_PKEY_ED25519);
    CHECK_EQ_INT(lp_ffi_pkey_verify(k, 0, 0, "", 0, sig, 64), 1);
    sig[0] ^= 1;
    CHECK_EQ_INT(lp_ffi_pkey_verify(k, 0, 0, "", 0, sig, 64), 0);
    CHECK_EQ_INT(lp_ffi_pkey_verify(k, 0, 0, "", 0, sig, 63), 0);
    lp_ffi_pkey_free(k);
    CHECK(lp_ffi_pkey_ed25519(pub, 31) == NULL);
}

static void bad_keys(void)
{
    char zero[48] = {0}, err[256] = "";
    CHECK(lp_ffi_pkey_ec(256, zero, 32, zero, 32) == NULL); /* not on the curve */
    CHECK(lp_ffi_pkey_ec(256, zero, 31, zero, 32) == NULL);
    CHECK(lp_ffi_pkey_ec(521, zero, 48, zero, 48) == NULL);
    CHECK(lp_ffi_pkey_rsa("\x01", 1, "\x01\x00\x01", 3) == NULL);
    CHECK(lp_ffi_pkey_pem(S("junk"), err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "no PEM public key");
}

static const lp_test_case_t tests[] = {
    {"base64_edges", base64_edges},
    {"digests_and_hmac", digests_and_hmac},
    {"password_hashes", password_hashes},
    {"ed25519_rfc8032", ed25519_rfc8032},
    {"bad_keys", bad_keys},
};

LP_TEST_MAIN(tests)
