/* The PROXY protocol header: engine/proxy_proto.h. */
#include <string.h>
#include "proxy_proto.h"

static const uint8_t v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                   0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
static const char v1_sig[] = "PROXY ";

/* "TCP4 a.b.c.d a.b.c.d sport dport" or "TCP6 ..." or "UNKNOWN ..." (line without CRLF). */
static int v1_fields(const char *s, size_t n, lp_pp_t *out)
{
    if (n >= 7 && memcmp(s, "UNKNOWN", 7) == 0 && (n == 7 || s[7] == ' '))
        return 0; /* the rest is to be ignored, says the spec */
    if (n < 5 || memcmp(s, "TCP", 3) != 0 || (s[3] != '4' && s[3] != '6') || s[4] != ' ')
        return -1;
    int v6 = s[3] == '6';
    const char *f[4];
    size_t fl[4];
    size_t i = 5;
    for (int k = 0; k < 4; k++) {
        size_t st = i;
        while (i < n && s[i] != ' ')
            i++;
        if (i == st)
            return -1; /* empty field, or two spaces */
        f[k] = s + st;
        fl[k] = i - st;
        if (k < 3) {
            if (i == n)
                return -1;
            i++;
        }
    }
    if (i != n)
        return -1;
    if (lp_ip_parse(f[0], fl[0], &out->src) || lp_ip_parse(f[1], fl[1], &out->dst) ||
        out->src.v6 != v6 || out->dst.v6 != v6)
        return -1;
    uint16_t *ports[2] = {&out->src_port, &out->dst_port};
    for (int k = 0; k < 2; k++) {
        const char *p = f[2 + k];
        size_t len = fl[2 + k];
        if (len > 5 || (len > 1 && p[0] == '0'))
            return -1;
        unsigned v = 0;
        for (size_t j = 0; j < len; j++) {
            if (p[j] < '0' || p[j] > '9')
                return -1;
            v = v * 10 + (unsigned)(p[j] - '0');
        }
        if (v > 65535)
            return -1;
        *ports[k] = (uint16_t)v;
    }
    out->has_addr = 1;
    return 0;
}

static ssize_t parse_v1(const uint8_t *p, size_t n, lp_pp_t *out)
{
    size_t lim = n < LP_PP_V1_MAX ? n : LP_PP_V1_MAX;
    for (size_t i = 0; i < lim; i++) {
        if (p[i] == '\n') {
            if (i == 0 || p[i - 1] != '\r')
                return -1;
            out->version = 1;
            if (v1_fields((const char *)p + 6, i - 1 - 6, out))
                return -1;
            return (ssize_t)(i + 1);
        }
        if (p[i] == '\r' && i + 1 < lim && p[i + 1] != '\n')
            return -1;
        if (p[i] < 0x20 && p[i] != '\r')
            return -1; /* control bytes: this is not a PROXY line */
    }
    return n >= LP_PP_V1_MAX ? -1 : 0;
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

/* The TLVs after the addresses: each type (1), length (2), value. None is needed here, so
 * they are skipped, but one running past the header makes the header malformed. */
static int tlvs_ok(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (n - i < 3)
            return 0;
        size_t len = be16(p + i + 1);
        if (len > n - i - 3)
            return 0;
        i += 3 + len;
    }
    return 1;
}

static ssize_t parse_v2(const uint8_t *p, size_t n, lp_pp_t *out)
{
    if (n < 16)
        return 0;
    uint8_t ver = p[12] >> 4, cmd = p[12] & 0x0f;
    uint8_t fam = p[13] >> 4, proto = p[13] & 0x0f;
    size_t len = be16(p + 14);
    if (ver != 2 || cmd > 1 || fam > 3 || proto > 2)
        return -1;
    if (16 + len > LP_PP_V2_MAX)
        return -1;
    if (n < 16 + len)
        return 0;
    out->version = 2;
    const uint8_t *a = p + 16;
    size_t alen = 0;
    if (cmd == 1 && proto == 1 && fam == 1) { /* PROXY, TCP over IPv4 */
        alen = 12;
        if (len < alen)
            return -1;
        memcpy(out->src.addr, a, 4);
        memcpy(out->dst.addr, a + 4, 4);
        out->src_port = be16(a + 8);
        out->dst_port = be16(a + 10);
        out->has_addr = 1;
    } else if (cmd == 1 && proto == 1 && fam == 2) { /* PROXY, TCP over IPv6 */
        alen = 36;
        if (len < alen)
            return -1;
        memcpy(out->src.addr, a, 16);
        memcpy(out->dst.addr, a + 16, 16);
        out->src.v6 = out->dst.v6 = 1;
        out->src_port = be16(a + 32);
        out->dst_port = be16(a + 34);
        out->has_addr = 1;
    } else {
        /* LOCAL (the balancer's own health check), UNSPEC, UDP, UNIX: the connection's own
         * addresses stand. Their address blocks have known sizes; TLVs follow them. */
        static const size_t fam_len[4] = {0, 12, 36, 216};
        alen = fam_len[fam];
        if (len < alen)
            alen = len; /* LOCAL may carry no addresses at all; nothing to check then */
        if (cmd == 0 || fam == 0 || proto == 0)
            return 16 + (ssize_t)len; /* the spec: skip the block without looking */
    }
    if (!tlvs_ok(a + alen, len - alen))
        return -1;
    return 16 + (ssize_t)len;
}

ssize_t lp_pp_parse(const uint8_t *p, size_t n, lp_pp_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!n)
        return 0;
    if (p[0] == v2_sig[0]) {
        size_t k = n < sizeof(v2_sig) ? n : sizeof(v2_sig);
        if (memcmp(p, v2_sig, k))
            return -1;
        return k < sizeof(v2_sig) ? 0 : parse_v2(p, n, out);
    }
    size_t k = n < sizeof(v1_sig) - 1 ? n : sizeof(v1_sig) - 1;
    if (memcmp(p, v1_sig, k))
        return -1;
    return k < sizeof(v1_sig) - 1 ? 0 : parse_v1(p, n, out);
}
