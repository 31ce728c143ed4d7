/* The real client address behind trusted proxies (docs/real-ip.md): IP addresses and
 * CIDRs, and the walk over X-Forwarded-For (or a named header of the same shape) and
 * Forwarded (RFC 7239) from the right, over trusted hops, to the first untrusted one.
 * Pure functions over bytes: no allocation, no state; conn.c applies them per request
 * (tests/unit/test_realip.c). */
#ifndef LP_REALIP_H
#define LP_REALIP_H

#include <stddef.h>
#include <stdint.h>
#include "common.h"

/* An address: IPv4 in addr[0..3] (v6 = 0), or IPv6 (v6 = 1). */
typedef struct {
    uint8_t addr[16];
    uint8_t v6; /* 1: IPv6 (16 bytes), 0: IPv4 (the first 4) */
} lp_ip_t;

/* A network: the address's first `bits` bits. */
typedef struct {
    lp_ip_t ip;
    uint8_t bits; /* 0..32 (IPv4) or 0..128 (IPv6) */
} lp_cidr_t;

/* Where the client address comes from when the peer is trusted. */
typedef enum {
    LP_REALIP_XFF = 0,   /* X-Forwarded-For, or a named header holding a list of addresses */
    LP_REALIP_FORWARDED, /* Forwarded (RFC 7239): for= of each element */
} lp_realip_kind_t;

/* At most this many hops are walked; a longer list gives no address (the peer is used):
 * a header built to make the walk expensive ends it rather than the worker's time. */
#define LP_REALIP_MAX_HOPS 64

/* s[0..n) as an IPv4 dotted quad or an IPv6 address (no brackets, no zone id: "fe80::1%eth0"
 * is refused). 0, or -1 when it is not an address. */
int lp_ip_parse(const char *s, size_t n, lp_ip_t *out);
/* "10.0.0.0/8", "2001:db8::/32", or a bare address (all its bits). 0, -1 when it is not one,
 * or LP_CIDR_EHOSTBITS: bits beyond the prefix must be 0 ("10.1.0.0/8" is refused: it does
 * not mean what it says). */
#define LP_CIDR_EHOSTBITS (-2)
int lp_cidr_parse(const char *s, size_t n, lp_cidr_t *out);
/* 1 when ip is in one of the n networks. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is
 * matched as the IPv4 address it carries. */
int lp_cidr_match(const lp_cidr_t *set, size_t n, const lp_ip_t *ip);
/* The address as text (inet_ntop's form); its length. */
size_t lp_ip_text(const lp_ip_t *ip, char out[46]);

/* The walk, for a peer already known to be trusted. `values`: the header's lines in the
 * order received (several lines count as one list, joined in order). From the right-most
 * hop leftwards, trusted hops are skipped; the first untrusted one is the client. When
 * every hop is trusted, the left-most one is. 1 with *out set; 0 when the header gives
 * no address to use (absent, empty, a hop that is not an address, a Forwarded element
 * whose for= is missing, "unknown" or an obfuscated identifier, more than
 * LP_REALIP_MAX_HOPS hops): the caller keeps the peer's address. */
int lp_realip_walk(lp_realip_kind_t kind, const lp_str_t *values, size_t nvalues,
                   const lp_cidr_t *trusted, size_t ntrusted, lp_ip_t *out);

#endif
