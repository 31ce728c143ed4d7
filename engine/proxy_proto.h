/* The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) that an L4
 * balancer sends before the client's bytes to say whose connection this is. A pure parser
 * over bytes: conn.c reads the header first on a listener with `proxy_protocol = true`
 * (before TLS on a TLS listener) and closes the connection when it is missing or malformed
 * (tests/unit/test_proxy_proto.c). */
#ifndef LP_PROXY_PROTO_H
#define LP_PROXY_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "realip.h"

/* A v1 line is at most 107 bytes, CRLF included (the spec's bound). */
#define LP_PP_V1_MAX 107
/* A v2 header (16 bytes and the address block) longer than this is refused: balancers send
 * a few hundred bytes at most, and the header must fit in one read block. */
#define LP_PP_V2_MAX (16 + 16384)

typedef struct {
    uint8_t version; /* 1 or 2 */
    /* 1: src/dst hold the addresses the header carries (TCP over IPv4 or IPv6); 0: the
     * header says to use the connection's own (v1 UNKNOWN, v2 LOCAL, v2 UNSPEC, UDP or a
     * UNIX socket: nothing an HTTP listener can use). */
    uint8_t has_addr;
    lp_ip_t src, dst;
    uint16_t src_port, dst_port;
} lp_pp_t;

/* Parses the header at the start of p[0..n). > 0: its length (the bytes to skip; the
 * client's own bytes follow); 0: incomplete, wait for more (it can still be a header);
 * -1: not a PROXY header, or a malformed one. Never reads past n. */
ssize_t lp_pp_parse(const uint8_t *p, size_t n, lp_pp_t *out);

#endif
