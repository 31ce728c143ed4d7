/* Target selection for one upstream. Per worker: no locking. */
#ifndef LP_BALANCER_H
#define LP_BALANCER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    unsigned weight;
    int64_t current; /* smooth weighted round robin state */
} lp_rr_peer_t;

typedef struct {
    lp_rr_peer_t *peers; /* owned */
    size_t n;
    int64_t total;
} lp_rr_t;

int lp_rr_init(lp_rr_t *rr, const unsigned *weights, size_t n);
void lp_rr_destroy(lp_rr_t *rr);
/* Smooth weighted round robin (each target gets weight/total of picks, interleaved).
 * `tried` is a bitmap of targets to skip (NULL: none), for retries. Returns the index,
 * or -1 when every target was tried. */
int lp_rr_select(lp_rr_t *rr, const uint64_t *tried);

#endif
