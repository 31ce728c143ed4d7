/* The real client address: engine/realip.h. */
#include <arpa/inet.h>
#include <string.h>
#include <strings.h>
#include "realip.h"
#include "tchar.h"

int lp_ip_parse(const char *s, size_t n, lp_ip_t *out)
{
    char tmp[64]; /* INET6_ADDRSTRLEN is 46: anything longer is not an address */
    if (!n || n >= sizeof(tmp))
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    memset(out, 0, sizeof(*out));
    /* inet_pton takes exactly the dotted quad (no octal, no short forms, no leading
     * zeros) and IPv6 without a zone id: "fe80::1%eth0" fails, as it should. */
    if (memchr(tmp, ':', n)) {
        if (inet_pton(AF_INET6, tmp, out->addr) != 1)
            return -1;
        out->v6 = 1;
        return 0;
    }
    return inet_pton(AF_INET, tmp, out->addr) == 1 ? 0 : -1;
}

int lp_cidr_parse(const char *s, size_t n, lp_cidr_t *out)
{
    const char *slash = memchr(s, '/', n);
    size_t alen = slash ? (size_t)(slash - s) : n;
    if (lp_ip_parse(s, alen, &out->ip))
        return -1;
    unsigned max = out->ip.v6 ? 128 : 32, bits = max;
    if (slash) {
        const char *p = slash + 1, *e = s + n;
        if (p == e || e - p > 3)
            return -1;
        bits = 0;
        for (; p < e; p++) {
            if (*p < '0' || *p > '9')
                return -1;
            bits = bits * 10 + (unsigned)(*p - '0');
        }
        if (bits > max)
            return -1;
    }
    out->bits = (uint8_t)bits;
    /* Host bits set: "10.1.0.0/8" would silently mean 10.0.0.0/8, a typo that widens an
     * allow list. */
    for (unsigned b = bits; b < max; b++)
        if (out->ip.addr[b / 8] & (0x80u >> (b % 8)))
            return LP_CIDR_EHOSTBITS;
    return 0;
}

static int prefix_eq(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, b, bytes))
        return 0;
    if (!rest)
        return 1;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

int lp_cidr_match(const lp_cidr_t *set, size_t n, const lp_ip_t *ip)
{
    int mapped = ip->v6 && memcmp(ip->addr, v4_mapped, 12) == 0;
    for (size_t i = 0; i < n; i++) {
        const lp_cidr_t *c = &set[i];
        if (c->ip.v6 == ip->v6) {
            if (prefix_eq(c->ip.addr, ip->addr, c->bits))
                return 1;
        } else if (mapped && !c->ip.v6) {
            if (prefix_eq(c->ip.addr, ip->addr + 12, c->bits))
                return 1;
        }
    }
    return 0;
}

size_t lp_ip_text(const lp_ip_t *ip, char out[46])
{
    if (!inet_ntop(ip->v6 ? AF_INET6 : AF_INET, ip->addr, out, 46))
        out[0] = 0;
    return strlen(out);
}

/* ---- the walk ---- */

/* The last LP_REALIP_MAX_HOPS hops of the list (a ring), and how many there were: the walk
 * goes from the right and stops at the first untrusted hop, so hops further left than the
 * ring holds matter only when every hop in it was trusted. A hop with a NULL base is a
 * Forwarded element without for=. */
typedef struct {
    lp_str_t hop[LP_REALIP_MAX_HOPS];
    size_t n;
} hops_t;

static void hops_push(hops_t *h, const char *p, size_t len)
{
    h->hop[h->n % LP_REALIP_MAX_HOPS] = (lp_str_t){p, len};
    h->n++;
}

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static void xff_split(const char *s, size_t n, hops_t *h)
{
    size_t i = 0;
    for (;;) {
        const char *comma = memchr(s + i, ',', n - i);
        size_t end = comma ? (size_t)(comma - s) : n;
        size_t a = i, b = end;
        while (a < b && is_ows(s[a]))
            a++;
        while (b > a && is_ows(s[b - 1]))
            b--;
        hops_push(h, s + a, b - a); /* an empty hop stays: it is garbage if reached */
        if (!comma)
            return;
        i = end + 1;
    }
}

/* Forwarded = 1#forwarded-element; forwarded-element = [ pair ] *( ";" [ pair ] );
 * pair = token "=" ( token / quoted-string ). Pushes each element's for= value (base NULL
 * when it has none). -1 when the line does not parse: a quoted-pair (backslash) is refused
 * too, since no address needs one. */
static int fwd_split(const char *s, size_t n, hops_t *h)
{
    size_t i = 0;
    for (;;) {
        lp_str_t forv = {NULL, 0};
        int pairs = 0;
        for (;;) {
            while (i < n && is_ows(s[i]))
                i++;
            if (i == n || s[i] == ',')
                break;
            if (s[i] == ';') { /* an empty pair */
                i++;
                continue;
            }
            size_t ns = i;
            while (i < n && lp_is_tchar((unsigned char)s[i]))
                i++;
            if (i == ns || i == n || s[i] != '=')
                return -1;
            size_t nlen = i - ns;
            i++;
            lp_str_t val;
            if (i < n && s[i] == '"') {
                size_t vs = ++i;
                while (i < n && s[i] != '"') {
                    if (s[i] == '\\')
                        return -1;
                    i++;
                }
                if (i == n)
                    return -1;
                val = (lp_str_t){s + vs, i - vs};
                i++;
            } else {
                size_t vs = i;
                while (i < n && lp_is_tchar((unsigned char)s[i]))
                    i++;
                if (i == vs)
                    return -1;
                val = (lp_str_t){s + vs, i - vs};
            }
            pairs++;
            if (nlen == 3 && strncasecmp(s + ns, "for", 3) == 0) {
                if (forv.base)
                    return -1; /* two for= in one element: which one? */
                forv = val;
            }
            while (i < n && is_ows(s[i]))
                i++;
            if (i < n && s[i] == ';') {
                i++;
                continue;
            }
            if (i == n || s[i] == ',')
                break;
            return -1;
        }
        if (pairs)
            hops_push(h, forv.base, forv.len);
        if (i == n)
            return 0;
        i++; /* ',' */
    }
}

/* "1-5 digits, at most 65535". */
static int is_port(const char *p, size_t n)
{
    if (!n || n > 5)
        return 0;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    return v <= 65535;
}

/* A hop's address: "a.b.c.d", "a.b.c.d:port", "[v6]", "[v6]:port", and in
 * X-Forwarded-For also a bare IPv6 address. 1, or 0 when it holds no address. */
static int hop_addr(lp_str_t hop, int forwarded, lp_ip_t *out)
{
    const char *s = hop.base;
    size_t n = hop.len;
    if (!s || !n)
        return 0;
    if (forwarded && (s[0] == '_' || (n == 7 && strncasecmp(s, "unknown", 7) == 0)))
        return 0; /* obfuscated or unknown: not an address, and not to be walked past */
    if (s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return 0;
        size_t alen = (size_t)(close - s - 1);
        size_t rest = n - alen - 2;
        if (rest && (close[1] != ':' || !is_port(close + 2, rest - 1)))
            return 0;
        return lp_ip_parse(s + 1, alen, out) == 0 && out->v6;
    }
    const char *colon = memchr(s, ':', n);
    if (colon && !memchr(colon + 1, ':', n - (size_t)(colon + 1 - s))) {
        /* one colon: an IPv4 address with a port */
        size_t alen = (size_t)(colon - s);
        if (!is_port(colon + 1, n - alen - 1))
            return 0;
        return lp_ip_parse(s, alen, out) == 0 && !out->v6;
    }
    if (lp_ip_parse(s, n, out))
        return 0;
    return !forwarded || !out->v6; /* Forwarded quotes and brackets IPv6 (RFC 7239 6.1) */
}

int lp_realip_walk(lp_realip_kind_t kind, const lp_str_t *values, size_t nvalues,
                   const lp_cidr_t *trusted, size_t ntrusted, lp_ip_t *out)
{
    hops_t h;
    h.n = 0;
    int fwd = kind == LP_REALIP_FORWARDED;
    for (size_t v = 0; v < nvalues; v++) {
        if (!fwd)
            xff_split(values[v].base, values[v].len, &h);
        else if (fwd_split(values[v].base, values[v].len, &h))
            return 0;
    }
    if (!h.n)
        return 0;
    size_t keep = h.n < LP_REALIP_MAX_HOPS ? h.n : LP_REALIP_MAX_HOPS;
    lp_ip_t ip;
    for (size_t k = 0; k < keep; k++) {
        size_t idx = (h.n - 1 - k) % LP_REALIP_MAX_HOPS;
        if (!hop_addr(h.hop[idx], fwd, &ip))
            return 0;
        if (!lp_cidr_match(trusted, ntrusted, &ip)) {
            *out = ip;
            return 1;
        }
    }
    if (h.n > LP_REALIP_MAX_HOPS)
        return 0; /* all trusted as far as we kept, and more to the left: unknown */
    *out = ip;    /* every hop trusted: the left-most */
    return 1;
}
